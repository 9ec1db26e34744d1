//! `stemflow bench dectris`: the DECTRIS data path measured end to end, and the codec per
//! core. Our DECTRIS simulator sends synthetic specimen frames, bitshuffle-LZ4 compressed
//! (as a detector control unit does), over the ZeroMQ stream as fast as the client takes
//! them; stemflow's DECTRIS driver (REST configure and arm, stream receiver into pooled
//! stacks) hands the compressed blobs to the processing engine, whose workers decompress
//! them and run sum, sum over signal, virtual BF, ADF and CoM on all cores. Prints frames/s,
//! GB/s of decoded data, lost and damaged frames per configuration, the single-core decode
//! throughput, and one JSON line with every figure.

use super::{RecordMode, ScratchRecording, best_per_mode, off_rate, ratio_text, record_name};
use crate::options::BenchDectrisOptions;
use crate::reductions::{Geometry, udfs};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};
use stemflow_core::detector::{ArmMode, Detector, DetectorSettings, DetectorTrigger};
use stemflow_core::{NavShape, SigShape};
use stemflow_drivers::dectris::codec::Kernel;
use stemflow_drivers::dectris::codec::bench::run_synthetic;
use stemflow_drivers::dectris::detector::{DectrisDetector, DectrisDetectorConfig};
use stemflow_processing::RunConfig;
use stemflow_simulators::dectris::{DectrisSim, DectrisSimConfig, DectrisSource, Pacing};
use stemflow_simulators::specimen::Specimen;

/// One measured configuration.
#[derive(serde::Serialize)]
struct Figure {
    nav_shape: String,
    sig_shape: String,
    dtype: String,
    /// `off`, or the recording's compression.
    record: String,
    /// The recording's size, bytes (0 without one).
    file_bytes: u64,
    frames: u64,
    seconds: f64,
    frames_per_s: f64,
    gb_per_s_decoded: f64,
    compressed_mb_per_s: f64,
    frames_lost: u64,
    frames_damaged: u64,
}

fn one_run(nav: NavShape, sig: SigShape, bits: u32, record: RecordMode) -> Result<Figure> {
    let mut cfg = DectrisSimConfig::new(DectrisSource::Synthetic {
        specimen: Specimen::builder()
            .disk_radius_px(sig.rows.min(sig.cols) as f64 / 10.0)
            .build(),
        nav_shape: nav,
        sig_shape: sig,
        bit_depth: bits,
        seed: 3,
    });
    cfg.pacing = Pacing::AsFastAsPossible;
    let sim = DectrisSim::start(cfg).context("starting the DECTRIS simulator")?;
    let mut dcfg =
        DectrisDetectorConfig::new("127.0.0.1", sim.api_addr().port(), sim.stream_addr());
    dcfg.first_frame_timeout = Duration::from_secs(60);
    dcfg.frames_per_stack = 64;
    dcfg.pool_stacks = 32;
    let mut det = DectrisDetector::connect(dcfg)?;
    det.configure(&DetectorSettings {
        nav_shape: nav,
        // 100 kHz: the simulator paces as fast as the client takes frames anyway.
        exposure_s: 1e-5,
        frame_time_s: 1e-5,
        trigger: DetectorTrigger::Soft,
        frames_per_trigger: nav.len() as u64,
        counter_depth: None,
        extra: BTreeMap::new(),
    })?;
    let armed = det.arm(ArmMode::Active, Duration::from_secs(10))?;
    let dtype = armed.dtype;
    let run_cfg = RunConfig::new(nav, armed.sig_shape, dtype);
    let cancel = AtomicBool::new(false);
    let u = udfs(&Geometry::centred(armed.sig_shape));
    let (stacks, end_rx) = (armed.stacks.clone(), armed.end.clone());
    let mut scratch = ScratchRecording::open(record, nav, armed.sig_shape, dtype)?;
    let sent_before = sim.stats().bytes_sent;
    let t0 = Instant::now();
    det.soft_trigger()?;
    let sink = scratch
        .as_mut()
        .and_then(|s| s.rec.as_mut())
        .map(|r| r as &mut dyn stemflow_core::sink::TileSink);
    let summary = stemflow_processing::run_live(stacks, &u, &run_cfg, sink, &mut |_| {}, &cancel)?;
    let file_bytes = match scratch.as_mut() {
        Some(s) => s.finish(nav)?,
        None => 0,
    };
    let secs = t0.elapsed().as_secs_f64();
    let end = end_rx
        .recv_timeout(Duration::from_secs(10))
        .context("the receiver did not report the end of the series")?;
    let compressed = sim.stats().bytes_sent - sent_before;
    let _ = det.disarm();
    drop(det);
    sim.stop();
    let bytes = summary.frames_processed as f64 * (armed.sig_shape.len() * dtype.size()) as f64;
    Ok(Figure {
        nav_shape: nav.to_string(),
        sig_shape: armed.sig_shape.to_string(),
        dtype: dtype.to_string(),
        record: record_name(record),
        file_bytes,
        frames: summary.frames_processed,
        seconds: secs,
        frames_per_s: summary.frames_processed as f64 / secs,
        gb_per_s_decoded: bytes / secs / 1e9,
        compressed_mb_per_s: compressed as f64 / secs / 1e6,
        frames_lost: end.lost,
        frames_damaged: end.damaged + summary.damaged.len() as u64,
    })
}

/// Runs the benchmark.
///
/// # Errors
/// A simulator, driver or processing failure.
pub fn bench_dectris(a: &BenchDectrisOptions) -> Result<()> {
    let configs = [
        (SigShape::new(256, 256), 16u32),
        (SigShape::new(192, 192), 32u32),
    ];
    let mut figures = Vec::new();
    for (sig, bits) in configs {
        let key = |f: &Figure| (f.frames_per_s, f.record.clone());
        let best = best_per_mode(
            &a.record,
            a.repeat,
            |mode| one_run(a.nav_shape, sig, bits, mode),
            key,
        )?;
        let off = off_rate(&best, key);
        for f in best {
            let ratio = ratio_text(off, f.frames_per_s, &f.record, f.file_bytes);
            println!(
                "dectris end to end: {} × {} {} frames (bslz4), recording {}: {:.0} frames/s, {:.2} GB/s decoded, {:.0} MB/s compressed, {} lost, {} damaged{ratio}",
                f.nav_shape,
                f.sig_shape,
                f.dtype,
                f.record,
                f.frames_per_s,
                f.gb_per_s_decoded,
                f.compressed_mb_per_s,
                f.frames_lost,
                f.frames_damaged
            );
            figures.push(f);
        }
    }
    let cases = run_synthetic(Duration::from_millis(500), Kernel::Auto)
        .map_err(|e| anyhow::anyhow!("codec benchmark: {e}"))?;
    let mut codec = Vec::new();
    for c in &cases {
        let t = &c.throughput;
        let fps = t.frames as f64 / t.seconds;
        println!(
            "dectris codec, one core ({:?}): {} bslz4 decode {:.2} GB/s decoded, {fps:.0} frames/s, encode {:.2} GB/s (compression {:.1}:1)",
            c.kernel,
            c.name,
            t.gb_per_s(),
            c.encode.gb_per_s(),
            c.compression_ratio
        );
        codec.push(serde_json::json!({
            "frames": c.name,
            "kernel": format!("{:?}", c.kernel),
            "gb_per_s_decoded": t.gb_per_s(),
            "gb_per_s_encoded": c.encode.gb_per_s(),
            "frames_per_s": fps,
            "compression_ratio": c.compression_ratio,
        }));
    }
    let json = serde_json::json!({
        "bench": "dectris",
        "end_to_end": figures,
        "codec_single_core": codec,
    });
    println!("{json}");
    Ok(())
}
