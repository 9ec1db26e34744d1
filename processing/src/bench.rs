//! In-memory throughput of the UDF engine on all cores, with frames preallocated in memory:
//! [`bench_in_memory`] runs the offline engine on decoded tiles, [`bench_live_in_memory`]
//! the live engine on raw big-endian stacks (decoding included). [`memory_read_bandwidth`]
//! measures the machine's ceiling in the same run, [`LatencyProbe`] the time from a frame's
//! arrival to its appearance in a snapshot. The CLI's `bench` command and
//! `cargo run --release -p stemflow-processing --example bench_in_memory` print them.

use crate::engine::{ProcessingError, RunConfig, Snapshot, run_live, run_tile_refs};
use crate::mask::Mask;
use crate::udf::Udf;
use crate::udfs::{ComUdf, MasksUdf, SumSigUdf, SumUdf, standard_udfs};
use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use stemflow_core::frame::{
    DecodeError, FrameDecoder, PixelsMut, RawFrameRef, RawStack, Tile, TileData,
};
use stemflow_core::pool::Pool;
use stemflow_core::{DType, NavShape, SigShape};

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchConfig {
    /// Scan grid: `nav_shape.len()` frames are held in memory (default 64 × 64 = 4096
    /// frames, 512 MiB of 256 × 256 u16 — far larger than the caches, so the figure is a
    /// memory-speed figure, and long enough that starting the pool does not count).
    pub nav_shape: NavShape,
    /// Frame shape (default 256 × 256).
    pub sig_shape: SigShape,
    /// Pixel type (default u16).
    pub dtype: DType,
    /// Frames per tile (default 16).
    pub frames_per_tile: usize,
    /// Worker threads; `None`: all cores.
    pub threads: Option<usize>,
    /// Passes over the frames; the fastest counts (default 3).
    pub passes: usize,
    /// Whether the engine may run its fused pass ([`crate::fused`]; default true); false
    /// measures the band path ([`RunConfig::fused`]).
    pub fused: bool,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            nav_shape: NavShape::new(64, 64),
            sig_shape: SigShape::new(256, 256),
            dtype: DType::U16,
            frames_per_tile: 16,
            threads: None,
            passes: 3,
            fused: true,
        }
    }
}

/// Measured throughput of one configuration (the fastest pass).
#[derive(Clone, Debug, PartialEq)]
pub struct BenchFigures {
    /// Names of the UDFs run together.
    pub udfs: Vec<String>,
    /// Worker threads used.
    pub threads: usize,
    /// Frames per pass.
    pub frames: u64,
    /// Bytes per frame.
    pub frame_bytes: usize,
    /// Wall time of the fastest pass, s.
    pub seconds: f64,
    /// Frames per second.
    pub frames_per_s: f64,
    /// Pixel data processed per second, GB/s (10^9 bytes).
    pub gb_per_s: f64,
    /// `gb_per_s / threads`, GB/s.
    pub gb_per_s_per_thread: f64,
}

impl fmt::Display for BenchFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} frames of {} bytes in {:.3} s on {} threads: {:.0} frames/s, {:.2} GB/s ({:.2} GB/s per thread)",
            self.udfs.join("+"),
            self.frames,
            self.frame_bytes,
            self.seconds,
            self.threads,
            self.frames_per_s,
            self.gb_per_s,
            self.gb_per_s_per_thread
        )
    }
}

fn bench_set(sig: SigShape) -> Vec<Box<dyn Udf>> {
    let r = sig.rows.min(sig.cols) as f64 / 8.0;
    standard_udfs(sig.cols as f64 / 2.0, sig.rows as f64 / 2.0, r)
}

/// The full benchmark set for frames of `sig`: `sum`, `sum_sig`, `virtual` with
/// four masks (BF disk of radius r = 1/8 of the smaller side, ADF ring 1.5–3 r, a
/// rectangle of 2r × r beside the disk, an outer ring 3–3.8 r), and `com` inside 1.25 r;
/// all centred.
pub fn full_set(sig: SigShape) -> Vec<Box<dyn Udf>> {
    let r = sig.rows.min(sig.cols) as f64 / 8.0;
    let (cx, cy) = (sig.cols as f64 / 2.0, sig.rows as f64 / 2.0);
    vec![
        Box::new(SumUdf::new()),
        Box::new(SumSigUdf::new()),
        Box::new(
            MasksUdf::new([
                ("bf", Mask::Disk { cx, cy, r }),
                (
                    "adf",
                    Mask::Ring {
                        cx,
                        cy,
                        r_inner: 1.5 * r,
                        r_outer: 3.0 * r,
                    },
                ),
                (
                    "rect",
                    Mask::Rectangle {
                        x: cx + 1.2 * r,
                        y: cy - 0.5 * r,
                        width: 2.0 * r,
                        height: r,
                    },
                ),
                (
                    "outer",
                    Mask::Ring {
                        cx,
                        cy,
                        r_inner: 3.0 * r,
                        r_outer: 3.8 * r,
                    },
                ),
            ])
            .named("virtual"),
        ),
        Box::new(ComUdf::new(cx, cy, 1.25 * r)),
    ]
}

/// The machine's memory read bandwidth, GB/s (10^9 bytes): `threads` threads (`None`: all
/// cores) each sum their share of a `bytes`-byte buffer of u64 words (written once first,
/// so the pages exist), all at once; the fastest of `passes` passes and of three read
/// kernels. Take `bytes` far above the caches (≥ 256 MiB) for a memory figure.
///
/// Each pass starts the threads together at a barrier and counts from the first thread's
/// start to the last thread's end: the aggregate rate of all threads reading at the same
/// time. (Timing each thread's own kernel instead let one thread's fast kernel run while
/// the other was still in a slow one that barely loads memory, so the figure read up to
/// 1.6 times too high, and varied by as much from run to run; decision 0009.)
pub fn memory_read_bandwidth(bytes: usize, threads: Option<usize>, passes: usize) -> f64 {
    let threads = threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    // Allocated as tiles are (huge pages advised), so both figures see the same pages.
    let mut words: Vec<u64> = Vec::with_capacity(bytes / 8);
    stemflow_core::mem::advise_huge_pages(words.as_ptr().cast(), words.capacity() * 8);
    words.extend((0..bytes / 8).map(|i| i as u64));
    let share = words.len().div_ceil(threads).max(1);
    // Three kernels, the fastest counts: how well a loop vectorises depends on the target
    // features, and the ceiling must not.
    let kernels: [fn(&[u64]) -> u64; 3] = [
        // A plain reduction, which the compiler unrolls and vectorises.
        |part| {
            std::hint::black_box(part)
                .iter()
                .fold(0u64, |a, &w| a.wrapping_add(w))
        },
        // Eight independent lanes: the adds keep pace with the loads.
        |part| {
            let mut lanes = [0u64; 8];
            for c in part.chunks_exact(8) {
                for (l, &w) in lanes.iter_mut().zip(c) {
                    *l = l.wrapping_add(w);
                }
            }
            lanes.iter().fold(0u64, |a, &l| a.wrapping_add(l))
        },
        // Four 64-byte lines per step into four sets of lanes: more loads in flight.
        |part| {
            let mut lanes = [[0u64; 8]; 4];
            for c in part.chunks_exact(32) {
                for (set, line) in lanes.iter_mut().zip(c.chunks_exact(8)) {
                    for (l, &w) in set.iter_mut().zip(line) {
                        *l = l.wrapping_add(w);
                    }
                }
            }
            lanes.iter().flatten().fold(0u64, |a, &l| a.wrapping_add(l))
        },
    ];
    let mut best = f64::INFINITY;
    let mut check = 0u64;
    for kernel in kernels {
        for _ in 0..passes.max(1) {
            let barrier = Barrier::new(words.chunks(share).len());
            let spans: Vec<(u64, Instant, Instant)> = std::thread::scope(|s| {
                let parts: Vec<_> = words
                    .chunks(share)
                    .map(|part| {
                        let barrier = &barrier;
                        s.spawn(move || {
                            barrier.wait();
                            let t0 = Instant::now();
                            let sum = kernel(part);
                            (sum, t0, Instant::now())
                        })
                    })
                    .collect();
                parts.into_iter().filter_map(|h| h.join().ok()).collect()
            });
            let (Some(start), Some(end)) = (
                spans.iter().map(|s| s.1).min(),
                spans.iter().map(|s| s.2).max(),
            ) else {
                continue;
            };
            best = best.min(end.duration_since(start).as_secs_f64());
            check = spans.iter().fold(check, |c, s| c.wrapping_add(s.0));
        }
    }
    // Keeps the sums observable so the reads cannot be optimised away.
    std::hint::black_box(check);
    (words.len() * 8) as f64 / best / 1e9
}

/// Latency from a frame's arrival to its first appearance in a snapshot.
///
/// The data path calls [`LatencyProbe::arrived`] when frames arrive (e.g. when the
/// receiver hands over a stack); the snapshot callback calls [`LatencyProbe::observe`],
/// which finds the nav positions of one nav buffer that turned from NaN to a value since
/// the last snapshot and records `now − arrival` for each. Shareable between threads.
pub struct LatencyProbe {
    t0: Instant,
    /// Per frame: arrival, ns after `t0`, plus 1 (0: not yet arrived).
    arrival: Vec<std::sync::atomic::AtomicU64>,
    seen: std::sync::Mutex<(Vec<bool>, Vec<f64>)>,
    udf: String,
    buffer: String,
}

/// Latency percentiles, ms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencyFigures {
    /// Frames measured.
    pub samples: usize,
    /// Median, ms.
    pub median_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Largest, ms.
    pub max_ms: f64,
}

impl LatencyProbe {
    /// A probe for `frames` frames, watching nav buffer `buffer` of UDF `udf` (e.g.
    /// `sum_sig` / `intensity`, which is a number for every processed frame).
    pub fn new(frames: usize, udf: &str, buffer: &str) -> Self {
        Self {
            t0: Instant::now(),
            arrival: (0..frames)
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
            seen: std::sync::Mutex::new((vec![false; frames], Vec::new())),
            udf: udf.to_string(),
            buffer: buffer.to_string(),
        }
    }

    /// Frames `first..first + n` arrived now.
    pub fn arrived(&self, first: u64, n: usize) {
        self.arrived_at(first, n, Instant::now());
    }

    /// Frames `first..first + n` arrived at `at` (e.g. [`RawStack::first_received`]: the
    /// stack's first frame; the others came later, so their latency is overstated, never
    /// understated). Times before the probe was made count from its making.
    pub fn arrived_at(&self, first: u64, n: usize, at: Instant) {
        let t = at.saturating_duration_since(self.t0).as_nanos() as u64 + 1;
        for a in self.arrival.iter().skip(first as usize).take(n) {
            a.store(t, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Records the frames that `snap` shows for the first time.
    pub fn observe(&self, snap: &Snapshot) {
        let now = self.t0.elapsed().as_nanos() as u64 + 1;
        let Some(buf) = snap
            .results
            .iter()
            .find(|r| r.udf == self.udf)
            .and_then(|r| r.buffer(&self.buffer))
        else {
            return;
        };
        let mut g = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (seen, lat) = &mut *g;
        for ((s, v), a) in seen.iter_mut().zip(&buf.data).zip(&self.arrival) {
            if !*s && !v.is_nan() {
                *s = true;
                let at = a.load(std::sync::atomic::Ordering::Relaxed);
                if at > 0 {
                    lat.push(now.saturating_sub(at) as f64 / 1e6);
                }
            }
        }
    }

    /// The percentiles so far (NaN with no samples).
    pub fn figures(&self) -> LatencyFigures {
        let g = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut l = g.1.clone();
        l.sort_by(f64::total_cmp);
        let pick = |q: f64| {
            if l.is_empty() {
                f64::NAN
            } else {
                l[((l.len() - 1) as f64 * q).round() as usize]
            }
        };
        LatencyFigures {
            samples: l.len(),
            median_ms: pick(0.5),
            p99_ms: pick(0.99),
            max_ms: pick(1.0),
        }
    }
}

/// Throughput of the standard live-view set ([`standard_udfs`]: sum, sum over signal,
/// virtual BF + ADF, CoM; BF radius = 1/8 of the smaller frame side, centred) on frames
/// of `cfg.dtype` held in memory.
///
/// # Errors
/// Those of [`crate::engine::run_tiles`] (in practice only [`ProcessingError::Threads`]).
pub fn bench_in_memory(cfg: &BenchConfig) -> Result<BenchFigures, ProcessingError> {
    bench_udfs(&bench_set(cfg.sig_shape), cfg)
}

/// Throughput of `udfs` on frames of `cfg.dtype` held in memory (see [`bench_in_memory`]).
///
/// # Errors
/// Those of [`crate::engine::run_tiles`].
pub fn bench_udfs(
    udfs: &[Box<dyn Udf>],
    cfg: &BenchConfig,
) -> Result<BenchFigures, ProcessingError> {
    let tiles = synthetic_tiles(cfg);
    let mut run = RunConfig::new(cfg.nav_shape, cfg.sig_shape, cfg.dtype);
    run.threads = cfg.threads;
    run.fused = cfg.fused;
    let cancel = AtomicBool::new(false);
    let mut best = f64::INFINITY;
    for _ in 0..cfg.passes.max(1) {
        let t0 = Instant::now();
        run_tile_refs(tiles.iter(), udfs, &run, None, &mut |_| {}, &cancel)?;
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok(figures(udfs, &run, cfg.nav_shape.len() as u64, best))
}

fn figures(udfs: &[Box<dyn Udf>], run: &RunConfig, frames: u64, seconds: f64) -> BenchFigures {
    let frame_bytes = run.sig_shape.len() * run.dtype.size();
    let threads = run.worker_threads();
    let gb_per_s = frames as f64 * frame_bytes as f64 / seconds / 1e9;
    BenchFigures {
        udfs: udfs.iter().map(|u| u.name().to_string()).collect(),
        threads,
        frames,
        frame_bytes,
        seconds,
        frames_per_s: frames as f64 / seconds,
        gb_per_s,
        gb_per_s_per_thread: gb_per_s / threads as f64,
    }
}

/// Throughput of the live path — raw stacks of big-endian u16 frames (Merlin's 12-bit
/// layout) fed through a channel, decoded by the workers into pooled tiles, then the
/// standard set as in [`bench_in_memory`]. Whole stacks of `frames_per_tile` frames only
/// (a remainder of the scan is left out). The stacks' buffers come from a
/// [`Pool`] filled once, as a receiver's would.
///
/// # Errors
/// Those of [`run_live`].
pub fn bench_live_in_memory(cfg: &BenchConfig) -> Result<BenchFigures, ProcessingError> {
    let udfs = bench_set(cfg.sig_shape);
    let sig = cfg.sig_shape;
    let per = cfg.frames_per_tile.max(1);
    let n_stacks = cfg.nav_shape.len() / per;
    let frame_bytes = sig.len() * 2;
    let u16_cfg = BenchConfig {
        dtype: DType::U16,
        ..*cfg
    };
    let mut encoded = synthetic_tiles(&u16_cfg)
        .into_iter()
        .filter(|t| t.n_frames == per)
        .map(|t| {
            let TileData::U16(px) = t.data else {
                return Vec::new();
            };
            px.iter().flat_map(|v| v.to_be_bytes()).collect::<Vec<u8>>()
        });
    let pool = Pool::new("bench stacks", n_stacks, || {
        encoded.next().unwrap_or_default()
    });
    let decoder: Arc<dyn FrameDecoder> = Arc::new(BigEndianU16 { sig });
    let mut run = RunConfig::new(cfg.nav_shape, sig, DType::U16);
    run.threads = cfg.threads;
    run.fused = cfg.fused;
    let cancel = AtomicBool::new(false);
    let mut best = f64::INFINITY;
    for _ in 0..cfg.passes.max(1) {
        let (tx, rx) = crossbeam_channel::bounded(4);
        let t0 = Instant::now();
        std::thread::scope(|s| {
            let (pool, decoder) = (&pool, &decoder);
            // `move`: the feeder owns `tx`, so the stream ends when it returns.
            let feeder = s.spawn(move || {
                for k in 0..n_stacks {
                    // Every buffer comes back once the workers decoded it.
                    let Ok(buf) = pool.take(Duration::from_secs(10)) else {
                        return;
                    };
                    let frames = (0..per)
                        .map(|i| RawFrameRef {
                            offset: i * frame_bytes,
                            len: frame_bytes,
                        })
                        .collect();
                    let stack = RawStack {
                        first_frame: (k * per) as u64,
                        frames,
                        buf,
                        decoder: Arc::clone(decoder),
                        first_received: Instant::now(),
                    };
                    if tx.send(stack.into()).is_err() {
                        return;
                    }
                }
            });
            let r = run_live(rx, &udfs, &run, None, &mut |_| {}, &cancel);
            let _ = feeder.join();
            r
        })?;
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok(figures(&udfs, &run, (n_stacks * per) as u64, best))
}

/// Big-endian u16 frames of a fixed shape (the bench's wire format).
#[derive(Debug)]
struct BigEndianU16 {
    sig: SigShape,
}

impl FrameDecoder for BigEndianU16 {
    fn sig_shape(&self) -> SigShape {
        self.sig
    }
    fn dtype(&self) -> DType {
        DType::U16
    }
    fn decode_into(&self, payload: &[u8], out: PixelsMut<'_>) -> Result<(), DecodeError> {
        let n = self.sig.len();
        match out {
            PixelsMut::U16(out) if out.len() == n && payload.len() == 2 * n => {
                for (o, b) in out.iter_mut().zip(payload.chunks_exact(2)) {
                    *o = u16::from_be_bytes([b[0], b[1]]);
                }
                Ok(())
            }
            PixelsMut::U16(out) if out.len() == n => Err(DecodeError::PayloadSize {
                device: "bench".into(),
                expected: 2 * n,
                observed: payload.len(),
            }),
            other => Err(DecodeError::Target {
                expected_dtype: DType::U16,
                expected_len: n,
                observed_dtype: other.dtype(),
                observed_len: other.len(),
            }),
        }
    }
}

/// Distinct frames generated for a benchmark; longer scans repeat them (copied, so every
/// frame has its own memory), which keeps a 1 GiB data set quick to build.
const UNIQUE_FRAMES: usize = 256;

/// Diffraction-like frames of `cfg.dtype`: a bright disk (200) on a noisy background
/// (1 + xorshift noise in 0..8, so nothing is constant and no work can be skipped); the
/// first [`UNIQUE_FRAMES`] frames are distinct, later ones repeat them.
fn synthetic_tiles(cfg: &BenchConfig) -> Vec<Tile> {
    let sig = cfg.sig_shape;
    let (cx, cy, r) = (
        sig.cols as f64 / 2.0,
        sig.rows as f64 / 2.0,
        sig.rows.min(sig.cols) as f64 / 8.0,
    );
    let pattern: Vec<u16> = (0..sig.len())
        .map(|i| {
            let (x, y) = ((i % sig.cols) as f64 + 0.5, (i / sig.cols) as f64 + 0.5);
            if (x - cx).hypot(y - cy) <= r { 200 } else { 1 }
        })
        .collect();
    let per_tile = cfg.frames_per_tile.max(1);
    let total = cfg.nav_shape.len();
    let unique = total.clamp(1, UNIQUE_FRAMES);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut values = Vec::with_capacity(unique * sig.len());
    for _ in 0..unique {
        for &p in &pattern {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            values.push(p + (state & 7) as u16);
        }
    }
    let frame = |f: usize| &values[(f % unique) * sig.len()..(f % unique + 1) * sig.len()];
    (0..total)
        .step_by(per_tile)
        .map(|first| {
            let n = per_tile.min(total - first);
            // Allocated as the live path allocates its tiles (huge pages advised).
            let mut data = TileData::zeros(cfg.dtype, n * sig.len());
            for k in 0..n {
                let src = frame(first + k);
                match data.pixels_mut(k * sig.len()..(k + 1) * sig.len()) {
                    PixelsMut::U8(d) => d.iter_mut().zip(src).for_each(|(d, &v)| *d = v as u8),
                    PixelsMut::U16(d) => d.copy_from_slice(src),
                    PixelsMut::U32(d) => d.iter_mut().zip(src).for_each(|(d, &v)| *d = v as u32),
                    PixelsMut::U64(d) => d.iter_mut().zip(src).for_each(|(d, &v)| *d = v as u64),
                    PixelsMut::F32(d) => d.iter_mut().zip(src).for_each(|(d, &v)| *d = v as f32),
                    PixelsMut::F64(d) => d.iter_mut().zip(src).for_each(|(d, &v)| *d = v as f64),
                }
            }
            Tile {
                first_frame: first as u64,
                n_frames: n,
                sig_shape: sig,
                data,
            }
        })
        .collect()
}
