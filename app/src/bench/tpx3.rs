//! `stemflow bench tpx3`: the ASI TPX3 sparse data path, in memory and end to end.
//!
//! - **In memory**: CSR stacks of a scan's events (chunks of u32 arrays, as the camera's
//!   server sends them) go straight into the processing engine, which runs sum, sum over
//!   signal, virtual BF and ADF and CoM on the events (decision 0010) on all cores. Prints
//!   events/s and frames/s.
//! - **End to end**: our TPX3 simulator streams the same kind of scan (Poisson electrons
//!   from the specimen model) over loopback as fast as the client takes it; stemflow's
//!   receiver (chunks into pooled stacks) hands them to the engine. Prints events/s,
//!   frames/s, lost and damaged frames.
//!
//! The default scan is LiberTEM-live's benchmark case: 128 × 128 positions of 512 × 512
//! pixels with about 410 events each. One JSON line with every figure ends the output.

use crate::options::BenchTpx3Options;
use crate::reductions::{Geometry, udfs};
use anyhow::{Context, Result};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};
use stemflow_core::csr::{CsrChunkRef, CsrDType, CsrFormat, CsrStack, Stack};
use stemflow_core::pool::Pooled;
use stemflow_core::{DType, NavShape, SigShape};
use stemflow_processing::RunConfig;

/// One measured configuration.
#[derive(serde::Serialize)]
struct Figure {
    path: &'static str,
    nav_shape: String,
    sig_shape: String,
    frames: u64,
    events: u64,
    seconds: f64,
    frames_per_s: f64,
    events_per_s: f64,
    frames_lost: u64,
    frames_damaged: u64,
}

/// Deterministic xorshift64 numbers for the in-memory events.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Sparse stacks of `nav` frames of `sig` with about `mean` events each (two thirds in a
/// bright-field disk of radius sig/10 at the centre, the rest anywhere), in chunks of
/// `per_chunk` rows of u32 arrays, `per_stack` rows per stack; and the number of events.
fn stacks(
    nav: NavShape,
    sig: SigShape,
    mean: u64,
    per_chunk: usize,
    per_stack: usize,
) -> (Vec<CsrStack>, u64) {
    let format = Arc::new(CsrFormat {
        sig_shape: sig,
        indptr: CsrDType::U32,
        indices: CsrDType::U32,
    });
    let mut rng = Rng(0x5eed_1234_abcd);
    let (cy, cx) = (sig.rows as u64 / 2, sig.cols as u64 / 2);
    let r = (sig.rows.min(sig.cols) as u64 / 10).max(1);
    let mut events = 0u64;
    let mut out = Vec::new();
    let n = nav.len();
    let mut first = 0;
    while first < n {
        let rows = per_stack.min(n - first);
        let mut buf = Vec::new();
        let mut chunks = Vec::new();
        let mut c0 = 0;
        while c0 < rows {
            let k = per_chunk.min(rows - c0);
            let mut ptr = vec![0u32];
            let (mut ind, mut val) = (Vec::new(), Vec::new());
            for _ in 0..k {
                let e = mean / 2 + rng.below(mean + 1);
                let mut row: Vec<u32> = (0..e)
                    .map(|_| {
                        let (y, x) = if rng.below(3) == 0 {
                            (rng.below(sig.rows as u64), rng.below(sig.cols as u64))
                        } else {
                            (cy + rng.below(2 * r) - r, cx + rng.below(2 * r) - r)
                        };
                        (y * sig.cols as u64 + x) as u32
                    })
                    .collect();
                row.sort_unstable();
                let start = ind.len();
                for i in row {
                    if ind.len() > start && ind.last() == Some(&i) {
                        if let Some(v) = val.last_mut() {
                            *v += 1;
                        }
                    } else {
                        ind.push(i);
                        val.push(1u32);
                    }
                }
                events += (ind.len() - start) as u64;
                ptr.push(ind.len() as u32);
            }
            let offset = buf.len().next_multiple_of(8);
            buf.resize(offset, 0);
            let io = ((k + 1) * 4) as u32;
            let vo = io + (ind.len() * 4) as u32;
            for v in ptr.iter().chain(&ind).chain(&val) {
                buf.extend_from_slice(&v.to_le_bytes());
            }
            chunks.push(CsrChunkRef {
                offset,
                len: buf.len() - offset,
                first_frame: (first + c0) as u64,
                frames: k as u32,
                nnz: ind.len() as u32,
                indices_offset: io,
                values_offset: vo,
                values: CsrDType::U32,
            });
            c0 += k;
        }
        out.push(CsrStack {
            first_frame: first as u64,
            frames: rows as u64,
            chunks,
            buf: Pooled::unpooled(buf),
            format: Arc::clone(&format),
            first_received: Instant::now(),
        });
        first += rows;
    }
    (out, events)
}

/// The engine on in-memory sparse stacks: the best of `repeat` runs.
fn in_memory(nav: NavShape, sig: SigShape, mean: u64, repeat: usize) -> Result<Figure> {
    let (template, events) = stacks(nav, sig, mean, 16, 512);
    let u = udfs(&Geometry::centred(sig));
    let cfg = RunConfig::new(nav, sig, DType::U32);
    let mut best = f64::INFINITY;
    let mut frames = 0;
    for _ in 0..repeat.max(1) {
        // Fresh copies outside the timing: the engine consumes the stacks.
        let copies: Vec<Stack> = template
            .iter()
            .map(|s| {
                Stack::Csr(CsrStack {
                    first_frame: s.first_frame,
                    frames: s.frames,
                    chunks: s.chunks.clone(),
                    buf: Pooled::unpooled(s.buf.to_vec()),
                    format: Arc::clone(&s.format),
                    first_received: Instant::now(),
                })
            })
            .collect();
        let (tx, rx) = crossbeam_channel::unbounded();
        for s in copies {
            let _ = tx.send(s);
        }
        drop(tx);
        let cancel = AtomicBool::new(false);
        let t0 = Instant::now();
        let summary = stemflow_processing::run_live(rx, &u, &cfg, None, &mut |_| {}, &cancel)?;
        best = best.min(t0.elapsed().as_secs_f64());
        frames = summary.frames_processed;
    }
    Ok(Figure {
        path: "in memory",
        nav_shape: nav.to_string(),
        sig_shape: sig.to_string(),
        frames,
        events,
        seconds: best,
        frames_per_s: frames as f64 / best,
        events_per_s: events as f64 / best,
        frames_lost: 0,
        frames_damaged: 0,
    })
}

fn print(f: &Figure) {
    println!(
        "tpx3 {}: {} × {} frames, {:.0} events/frame: {:.1} M events/s, {:.0} frames/s, {} lost, {} damaged ({:.3} s)",
        f.path,
        f.nav_shape,
        f.sig_shape,
        f.events as f64 / f.frames.max(1) as f64,
        f.events_per_s / 1e6,
        f.frames_per_s,
        f.frames_lost,
        f.frames_damaged,
        f.seconds
    );
}

/// Runs the benchmark.
///
/// # Errors
/// A simulator, driver or processing failure.
pub fn bench_tpx3(a: &BenchTpx3Options) -> Result<()> {
    let mut figures = Vec::new();
    let f = in_memory(a.nav_shape, a.sig_shape, a.events_per_frame, a.repeat)
        .context("in-memory sparse reductions")?;
    print(&f);
    figures.push(f);
    for _ in 0..a.repeat.max(1) {
        let f = end_to_end(a.nav_shape, a.sig_shape, a.events_per_frame)
            .context("end to end through the TPX3 simulator")?;
        print(&f);
        figures.push(f);
    }
    let json = serde_json::json!({"bench": "tpx3", "figures": figures});
    println!("{json}");
    Ok(())
}

/// Our simulator streaming a synthetic scan as fast as the client reads, stemflow's
/// receiver (passive) and the engine: one run.
fn end_to_end(nav: NavShape, sig: SigShape, mean: u64) -> Result<Figure> {
    use stemflow_core::detector::{ArmMode, Detector};
    use stemflow_drivers::asi::{Tpx3Detector, Tpx3DetectorConfig};
    use stemflow_simulators::specimen::Specimen;
    use stemflow_simulators::tpx3::{Tpx3Sim, Tpx3SimConfig, Tpx3Source};
    let mut cfg = Tpx3SimConfig::new(Tpx3Source::Synthetic {
        specimen: Specimen::builder()
            .disk_radius_px(sig.rows.min(sig.cols) as f64 / 10.0)
            .build(),
        nav_shape: nav,
        sig_shape: sig,
        mean_events: mean as f64,
        seed: 3,
    });
    cfg.rows_per_chunk = 64;
    let sim = Tpx3Sim::start(cfg).context("starting the TPX3 simulator")?;
    let mut dcfg = Tpx3DetectorConfig::new(sim.data_addr(), None);
    dcfg.first_frame_timeout = Duration::from_secs(60);
    let mut det = Tpx3Detector::connect(dcfg)?;
    let t0 = Instant::now();
    let armed = det.arm(ArmMode::Passive, Duration::from_secs(60))?;
    let run_cfg = RunConfig::new(nav, armed.sig_shape, armed.dtype);
    let u = udfs(&Geometry::centred(armed.sig_shape));
    let cancel = AtomicBool::new(false);
    let summary = stemflow_processing::run_live(
        armed.stacks.clone(),
        &u,
        &run_cfg,
        None,
        &mut |_| {},
        &cancel,
    )?;
    let secs = t0.elapsed().as_secs_f64();
    let end = end_within(&armed.end, Duration::from_secs(10))?;
    let events = sim.stats().events_sent;
    drop(det);
    sim.stop();
    Ok(Figure {
        path: "end to end",
        nav_shape: nav.to_string(),
        sig_shape: sig.to_string(),
        frames: summary.frames_processed,
        events,
        seconds: secs,
        frames_per_s: summary.frames_processed as f64 / secs,
        events_per_s: events as f64 / secs,
        frames_lost: end.lost,
        frames_damaged: end.damaged + summary.damaged.len() as u64,
    })
}

/// Waits for `rx`'s end report within `t`.
fn end_within(
    rx: &crossbeam_channel::Receiver<stemflow_core::detector::AcquisitionEnd>,
    t: Duration,
) -> Result<stemflow_core::detector::AcquisitionEnd> {
    rx.recv_timeout(t)
        .context("the receiver did not report the end of the scan")
}
