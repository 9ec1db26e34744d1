//! `stemflow bench merlin`: the live data path measured end to end. The Merlin simulator
//! streams as fast as the socket takes it over loopback; stemflow's Merlin driver receives
//! into pooled stacks; the processing engine decodes and runs sum + sum over signal +
//! virtual BF + ADF + CoM on all cores. Prints frames/s, GB/s of decoded data and lost
//! frames per configuration, then one JSON line with every figure.
//!
//! `stemflow bench all`: every figure of the processing issue in one run (under two
//! minutes): the machine's ceilings (memory read bandwidth, loopback TCP), in-memory
//! processing (sum alone; sum + sum over signal + 4 masks + CoM) and end to end from the
//! Merlin simulator for 256 × 256 and 512 × 512 frames of u8, u16 and u32, each as a
//! fraction of its ceiling, and the latency from a frame's arrival to its snapshot.

pub mod dectris;
pub mod tpx3;

use crate::options::{BenchAllOptions, BenchMerlinOptions};
use crate::reductions::{Geometry, udfs};
use crate::registry::merlin_dtype_for_depth as dtype_for_depth;
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};
use stemflow_core::detector::{ArmMode, Detector, DetectorSettings, DetectorTrigger};
use stemflow_core::{DType, NavShape, SigShape};
use stemflow_drivers::merlin::{MerlinDetector, MerlinDetectorConfig};
use stemflow_processing::udf::Udf;
use stemflow_processing::{
    BenchConfig, LatencyProbe, RunConfig, SumUdf, bench_in_memory, bench_udfs, full_set,
    memory_read_bandwidth, partition_frames,
};
use stemflow_simulators::merlin::{MerlinSim, MerlinSimConfig, MerlinSource, Pacing};
use stemflow_simulators::specimen::Specimen;

/// How a benchmark run records: `None` not at all, else into a scratch HDF5 file with this
/// compression (raw frames on, as `stemflow acquire` records them).
pub type RecordMode = Option<stemflow_recording::hdf5::Compression>;

/// The name of a [`RecordMode`] in the output: `off`, `none`, `deflate`, `bslz4`.
pub fn record_name(m: RecordMode) -> String {
    m.map_or_else(|| "off".to_string(), |c| c.name())
}

/// A scratch recording for one benchmark run in the system's temporary folder, removed
/// when dropped.
pub(crate) struct ScratchRecording {
    path: std::path::PathBuf,
    pub(crate) rec: Option<stemflow_recording::Hdf5Recorder>,
}

impl ScratchRecording {
    /// `None` for [`RecordMode`] `None`.
    pub(crate) fn open(
        mode: RecordMode,
        nav: NavShape,
        sig: SigShape,
        dtype: DType,
    ) -> Result<Option<Self>> {
        let Some(c) = mode else { return Ok(None) };
        let path = std::env::temp_dir().join(format!(
            "stemflow-bench-{}-{}.hspy",
            std::process::id(),
            c.name().replace(':', "")
        ));
        let mut spec = stemflow_recording::RecordingSpec::new(nav, sig, dtype);
        spec.compression = c;
        let rec = stemflow_recording::Hdf5Recorder::create(&path, spec)
            .with_context(|| format!("creating the benchmark's recording {}", path.display()))?;
        Ok(Some(Self {
            path,
            rec: Some(rec),
        }))
    }

    /// Finishes the file (its last chunks, validity and metadata written): part of the
    /// measured time. Returns the file's size in bytes.
    pub(crate) fn finish(&mut self, nav: NavShape) -> Result<u64> {
        if let Some(rec) = self.rec.take() {
            let mut validity = stemflow_core::validity::FrameValidity::new(nav.len());
            validity.mark_range_received(0, nav.len());
            rec.finish(
                &[],
                &validity,
                &stemflow_core::metadata::RunMetadata::default(),
                None,
            )?;
        }
        Ok(std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0))
    }
}

impl Drop for ScratchRecording {
    fn drop(&mut self) {
        drop(self.rec.take());
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Runs every recording mode of `modes` `repeat` times, interleaved (off, deflate, …, off,
/// deflate, …) so that a moment of another tenant's load does not fall on one mode only,
/// and keeps each mode's fastest run; `key` gives a figure's frames/s and mode name.
pub(crate) fn best_per_mode<F>(
    modes: &[RecordMode],
    repeat: usize,
    mut run: impl FnMut(RecordMode) -> Result<F>,
    key: impl Fn(&F) -> (f64, String),
) -> Result<Vec<F>> {
    let mut best: Vec<Option<F>> = modes.iter().map(|_| None).collect();
    for _ in 0..repeat.max(1) {
        for (i, &mode) in modes.iter().enumerate() {
            let g = run(mode)?;
            if best[i].as_ref().is_none_or(|f| key(&g).0 > key(f).0) {
                best[i] = Some(g);
            }
        }
    }
    Ok(best.into_iter().flatten().collect())
}

/// The frames/s of the run without recording among `figures`, if measured.
pub(crate) fn off_rate<F>(figures: &[F], key: impl Fn(&F) -> (f64, String)) -> Option<f64> {
    figures
        .iter()
        .map(key)
        .find(|(_, mode)| mode == "off")
        .map(|(rate, _)| rate)
}

/// `", N % of the rate without recording, file X MB"` for a recording run, else empty.
pub(crate) fn ratio_text(off: Option<f64>, rate: f64, mode: &str, file_bytes: u64) -> String {
    match off {
        Some(o) if mode != "off" => format!(
            ", {:.0} % of the rate without recording, file {:.1} MB",
            100.0 * rate / o,
            file_bytes as f64 / 1e6
        ),
        _ => String::new(),
    }
}

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
    gib_per_s_decoded: f64,
    frames_lost: u64,
    frames_damaged: u64,
}

fn one_run(a: &BenchMerlinOptions, depth: u32, record: RecordMode) -> Result<Figure> {
    one_run_with(a, depth, udfs(&Geometry::centred(a.sig_shape)), record)
}

/// One end-to-end run of `u` on `a.nav_shape` frames of `a.sig_shape` at `depth` bits,
/// recording as `record` says.
fn one_run_with(
    a: &BenchMerlinOptions,
    depth: u32,
    u: Vec<Box<dyn Udf>>,
    record: RecordMode,
) -> Result<Figure> {
    let nav = a.nav_shape;
    let sig = a.sig_shape;
    let mut cfg = MerlinSimConfig::new(MerlinSource::Synthetic {
        specimen: Specimen::builder().build(),
        nav_shape: nav,
        sig_shape: sig,
        seed: 3,
    });
    cfg.pacing = Pacing::AsFastAsPossible;
    let sim = MerlinSim::start(cfg).context("starting the Merlin simulator")?;
    let mut dcfg = MerlinDetectorConfig::new(sim.control_addr(), sim.data_addr());
    dcfg.first_frame_timeout = Duration::from_secs(60);
    let mut det = MerlinDetector::connect(dcfg)?;
    let frames = nav.len() as u64;
    det.configure(&DetectorSettings {
        nav_shape: nav,
        exposure_s: 1e-6,
        frame_time_s: 1e-6,
        trigger: DetectorTrigger::Soft,
        frames_per_trigger: frames,
        counter_depth: Some(depth),
        extra: BTreeMap::new(),
    })?;
    let armed = det.arm(ArmMode::Active, Duration::from_secs(10))?;
    let dtype = dtype_for_depth(depth);
    let run_cfg = RunConfig::new(nav, sig, dtype);
    let cancel = AtomicBool::new(false);
    let stacks = armed.stacks.clone();
    let end_rx = armed.end.clone();
    let mut scratch = ScratchRecording::open(record, nav, sig, dtype)?;
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
        .context("the receiver did not report the end of the acquisition")?;
    let _ = det.disarm();
    drop(det);
    sim.stop();
    let bytes = summary.frames_processed as f64 * (sig.len() * dtype.size()) as f64;
    Ok(Figure {
        nav_shape: nav.to_string(),
        sig_shape: sig.to_string(),
        dtype: dtype.to_string(),
        record: record_name(record),
        file_bytes,
        frames: summary.frames_processed,
        seconds: secs,
        frames_per_s: summary.frames_processed as f64 / secs,
        gb_per_s_decoded: bytes / secs / 1e9,
        gib_per_s_decoded: bytes / secs / (1u64 << 30) as f64,
        frames_lost: end.lost,
        frames_damaged: end.damaged + summary.damaged.len() as u64,
    })
}

/// Runs the benchmark.
pub fn bench_merlin(a: &BenchMerlinOptions) -> Result<()> {
    if a.repeat == 0 {
        bail!("--repeat must be ≥ 1");
    }
    let mut all = Vec::new();
    for &depth in &a.counter_depth {
        let best = best_per_mode(
            &a.record,
            a.repeat,
            |mode| one_run(a, depth, mode),
            |f| (f.frames_per_s, f.record.clone()),
        )?;
        let off = off_rate(&best, |f| (f.frames_per_s, f.record.clone()));
        for f in best {
            let ratio = ratio_text(off, f.frames_per_s, &f.record, f.file_bytes);
            println!(
                "merlin end to end: {} × {} {} frames, recording {}: {:.0} frames/s, {:.2} GB/s ({:.2} GiB/s) decoded, {} lost, {} damaged{ratio}",
                f.nav_shape,
                f.sig_shape,
                f.dtype,
                f.record,
                f.frames_per_s,
                f.gb_per_s_decoded,
                f.gib_per_s_decoded,
                f.frames_lost,
                f.frames_damaged
            );
            all.push(f);
        }
    }
    let mem = bench_in_memory(&BenchConfig {
        sig_shape: a.sig_shape,
        ..BenchConfig::default()
    })?;
    println!("in memory (no network): {mem}");
    let json = serde_json::json!({
        "bench": "merlin",
        "end_to_end": all,
        "in_memory_u16": {
            "frames_per_s": mem.frames_per_s,
            "gb_per_s": mem.gb_per_s,
            "threads": mem.threads,
        },
    });
    println!("{json}");
    Ok(())
}

/// Loopback TCP throughput, GB/s: one thread writes `bytes` in 4 MiB writes to a socket on
/// 127.0.0.1, another reads them into a reused 4 MiB buffer (the receiver's pattern).
fn loopback_tcp(bytes: u64) -> Result<f64> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut s = std::net::TcpStream::connect(addr)?;
        let buf = vec![0x5au8; 4 << 20];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            s.write_all(&buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    });
    let (mut conn, _) = listener.accept()?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = vec![0u8; 4 << 20];
    let t0 = Instant::now();
    let mut got = 0u64;
    while got < bytes {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let secs = t0.elapsed().as_secs_f64();
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("loopback writer thread panicked"))??;
    if got < bytes {
        bail!("loopback: {got} of {bytes} bytes arrived");
    }
    Ok(got as f64 / secs / 1e9)
}

/// One in-memory figure.
#[derive(serde::Serialize)]
struct MemFigure {
    sig_shape: String,
    dtype: String,
    set: &'static str,
    frames: u64,
    gb_per_s: f64,
    /// The ceiling the fraction is taken of: the highest measured so far in the run.
    memory_read_gb_per_s: f64,
    fraction_of_memory_bandwidth: f64,
    /// The figure over the sum alone's in the same configuration (1 for the sum): a ratio
    /// that other tenants' load, which moves the ceiling, moves far less.
    fraction_of_sum: f64,
}

/// One end-to-end figure.
#[derive(serde::Serialize)]
struct E2eFigure {
    #[serde(flatten)]
    run: Figure,
    fraction_of_loopback: f64,
}

fn depth_of(dtype: DType) -> u32 {
    match dtype {
        DType::U8 => 6,
        DType::U16 => 12,
        _ => 24,
    }
}

/// Scan shape with about `bytes` of frames of `sig` and `dtype` (64 columns).
fn nav_for(bytes: u64, sig: SigShape, dtype: DType) -> NavShape {
    let frame = (sig.len() * dtype.size()) as u64;
    let frames = (bytes / frame).max(64) as usize;
    NavShape::new(frames.div_ceil(64), 64)
}

/// Latency: the Merlin simulator paced at `rate_hz` (frame time), 256 × 256 u16, the full
/// set, snapshots at `interval`; a frame's arrival = when the receiver had read the first
/// frame of its stack completely.
fn latency_run(frames: usize, rate_hz: f64, interval: Duration) -> Result<(f64, f64, f64, usize)> {
    let sig = SigShape::new(256, 256);
    let nav = NavShape::new(frames.div_ceil(64), 64);
    let mut cfg = MerlinSimConfig::new(MerlinSource::Synthetic {
        specimen: Specimen::builder().build(),
        nav_shape: nav,
        sig_shape: sig,
        seed: 5,
    });
    cfg.pacing = Pacing::FrameTime;
    let sim = MerlinSim::start(cfg).context("starting the Merlin simulator")?;
    let mut dcfg = MerlinDetectorConfig::new(sim.control_addr(), sim.data_addr());
    dcfg.first_frame_timeout = Duration::from_secs(30);
    let mut det = MerlinDetector::connect(dcfg)?;
    det.configure(&DetectorSettings {
        nav_shape: nav,
        exposure_s: 0.5 / rate_hz,
        frame_time_s: 1.0 / rate_hz,
        trigger: DetectorTrigger::Internal,
        frames_per_trigger: nav.len() as u64,
        counter_depth: Some(12),
        extra: BTreeMap::new(),
    })?;
    let armed = det.arm(ArmMode::Active, Duration::from_secs(10))?;
    let mut run_cfg = RunConfig::new(nav, sig, DType::U16);
    run_cfg.snapshot_interval = interval;
    let u = full_set(sig);
    let probe = LatencyProbe::new(nav.len(), "sum_sig", "intensity");
    let (tx, rx) = crossbeam_channel::bounded(64);
    let stacks = armed.stacks.clone();
    let summary = std::thread::scope(|s| {
        let probe = &probe;
        s.spawn(move || {
            while let Ok(st) = stacks.recv_timeout(Duration::from_secs(30)) {
                probe.arrived_at(st.first_frame(), st.len(), st.first_received());
                if tx.send(st).is_err() {
                    break;
                }
            }
        });
        stemflow_processing::run_live(
            rx,
            &u,
            &run_cfg,
            None,
            &mut |snap| probe.observe(snap),
            &AtomicBool::new(false),
        )
    })?;
    let _ = det.disarm();
    drop(det);
    sim.stop();
    let f = probe.figures();
    if summary.frames_processed == 0 {
        bail!("latency run: no frames processed");
    }
    Ok((f.median_ms, f.p99_ms, f.max_ms, f.samples))
}

/// `stemflow bench all`.
pub fn bench_all(a: &BenchAllOptions) -> Result<()> {
    let t_start = Instant::now();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Ceilings.
    let mem_bw = memory_read_bandwidth(512 << 20, None, 3);
    let mem_bw_1 = memory_read_bandwidth(512 << 20, Some(1), 2);
    // Best of three 1 GiB transfers: the loopback figure suffers most from other load.
    let mut tcp = 0f64;
    for _ in 0..3 {
        tcp = tcp.max(loopback_tcp(1 << 30)?);
    }
    println!(
        "ceilings on {cores} cores: memory read {mem_bw:.2} GB/s ({mem_bw_1:.2} GB/s on one thread), loopback TCP {tcp:.2} GB/s"
    );
    let sigs = [SigShape::new(256, 256), SigShape::new(512, 512)];
    let dtypes = [DType::U8, DType::U16, DType::U32];
    // In memory. The ceiling is measured again before each configuration and every
    // fraction is taken of the highest ceiling measured so far, never of a dip (other
    // tenants of the host can take some of its bandwidth for a while).
    let mut mem = Vec::new();
    let mut ceiling = mem_bw;
    for &sig in &sigs {
        for &dtype in &dtypes {
            ceiling = ceiling.max(memory_read_bandwidth(512 << 20, None, 2));
            let nav = nav_for(a.mem_mib << 20, sig, dtype);
            let cfg = BenchConfig {
                nav_shape: nav,
                sig_shape: sig,
                dtype,
                frames_per_tile: partition_frames(sig, dtype, cores, nav.len()),
                threads: None,
                passes: 3,
                fused: true,
            };
            // The full set again with the engine's fused pass off, where it applies (u16
            // frames), so that the figure the pass adds is visible.
            let mut sets: Vec<(&'static str, bool)> =
                vec![("sum", true), ("sum+sum_sig+4 masks+com", true)];
            if dtype == DType::U16 {
                sets.push(("sum+sum_sig+4 masks+com, fused pass off", false));
            }
            let mut sum_gb_per_s = f64::NAN;
            for (name, fused) in sets {
                let udfs: Vec<Box<dyn Udf>> = if name == "sum" {
                    vec![Box::new(SumUdf::new())]
                } else {
                    full_set(sig)
                };
                let f = bench_udfs(&udfs, &BenchConfig { fused, ..cfg })?;
                if name == "sum" {
                    sum_gb_per_s = f.gb_per_s;
                }
                let of_sum = if name == "sum" {
                    String::new()
                } else {
                    format!(
                        ", {:.0} % of the sum alone",
                        100.0 * f.gb_per_s / sum_gb_per_s
                    )
                };
                println!(
                    "in memory {sig} {dtype} {name}: {:.2} GB/s = {:.0} % of memory bandwidth ({ceiling:.1} GB/s){of_sum} ({:.0} frames/s)",
                    f.gb_per_s,
                    100.0 * f.gb_per_s / ceiling,
                    f.frames_per_s
                );
                mem.push(MemFigure {
                    sig_shape: sig.to_string(),
                    dtype: dtype.to_string(),
                    set: name,
                    frames: f.frames,
                    gb_per_s: f.gb_per_s,
                    memory_read_gb_per_s: ceiling,
                    fraction_of_memory_bandwidth: f.gb_per_s / ceiling,
                    fraction_of_sum: f.gb_per_s / sum_gb_per_s,
                });
            }
        }
    }
    // End to end.
    let mut e2e = Vec::new();
    if !a.skip_e2e {
        for &sig in &sigs {
            for &dtype in &dtypes {
                let args = BenchMerlinOptions {
                    nav_shape: nav_for(a.e2e_mib << 20, sig, dtype),
                    sig_shape: sig,
                    counter_depth: vec![depth_of(dtype)],
                    repeat: 1,
                    record: vec![None],
                };
                let mut f = one_run_with(&args, depth_of(dtype), full_set(sig), None)?;
                for _ in 1..a.e2e_repeat.max(1) {
                    let g = one_run_with(&args, depth_of(dtype), full_set(sig), None)?;
                    if g.frames_per_s > f.frames_per_s {
                        f = g;
                    }
                }
                let gb = f.gb_per_s_decoded;
                println!(
                    "end to end {sig} {dtype}: {:.2} GB/s ({:.2} GiB/s) = {:.0} % of loopback TCP, {:.0} frames/s, {} lost",
                    gb,
                    f.gib_per_s_decoded,
                    100.0 * gb / tcp,
                    f.frames_per_s,
                    f.frames_lost
                );
                e2e.push(E2eFigure {
                    run: f,
                    fraction_of_loopback: gb / tcp,
                });
            }
        }
    }
    // Latency at the default snapshot interval and at 50 ms.
    let mut latency = Vec::new();
    for interval_ms in [100u64, 50] {
        let (median, p99, max, samples) = latency_run(
            a.latency_frames,
            a.latency_rate_hz,
            Duration::from_millis(interval_ms),
        )?;
        println!(
            "latency, frame arrival to snapshot (256 × 256 u16 at {:.0} Hz, full set, snapshots every {interval_ms} ms, {samples} frames): median {median:.1} ms, p99 {p99:.1} ms, max {max:.1} ms",
            a.latency_rate_hz
        );
        latency.push(serde_json::json!({"median": median, "p99": p99, "max": max,
            "samples": samples, "rate_hz": a.latency_rate_hz,
            "snapshot_interval_ms": interval_ms}));
    }
    let total_s = t_start.elapsed().as_secs_f64();
    println!("bench all took {total_s:.1} s");
    let json = serde_json::json!({
        "bench": "all",
        "cores": cores,
        "ceilings": {
            "memory_read_gb_per_s": mem_bw,
            "memory_read_one_thread_gb_per_s": mem_bw_1,
            "loopback_tcp_gb_per_s": tcp,
        },
        "in_memory": mem,
        "end_to_end": e2e,
        "latency_ms": latency,
        "seconds": total_s,
    });
    println!("{json}");
    Ok(())
}
