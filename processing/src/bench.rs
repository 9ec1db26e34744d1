//! In-memory throughput of the UDF engine on all cores, with frames preallocated in memory:
//! [`bench_in_memory`] runs the offline engine on decoded tiles, [`bench_live_in_memory`]
//! the live engine on raw big-endian stacks (decoding included). The CLI's `bench` command
//! and `cargo run --release -p stemflow-processing --example bench_in_memory` print them.

use crate::engine::{ProcessingError, RunConfig, run_live, run_tile_refs};
use crate::udf::Udf;
use crate::udfs::standard_udfs;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
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
    /// Frame shape (default 256 × 256); pixels are u16.
    pub sig_shape: SigShape,
    /// Frames per tile (default 16).
    pub frames_per_tile: usize,
    /// Worker threads; `None`: all cores.
    pub threads: Option<usize>,
    /// Passes over the frames; the fastest counts (default 3).
    pub passes: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            nav_shape: NavShape::new(64, 64),
            sig_shape: SigShape::new(256, 256),
            frames_per_tile: 16,
            threads: None,
            passes: 3,
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
    /// Bytes per frame (u16 pixels).
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

/// Throughput of the standard live-view set ([`standard_udfs`]: sum, sum over signal,
/// virtual BF + ADF, CoM; BF radius = 1/8 of the smaller frame side, centred) on u16
/// frames held in memory.
///
/// # Errors
/// Those of [`crate::engine::run_tiles`] (in practice only [`ProcessingError::Threads`]).
pub fn bench_in_memory(cfg: &BenchConfig) -> Result<BenchFigures, ProcessingError> {
    bench_udfs(&bench_set(cfg.sig_shape), cfg)
}

/// Throughput of `udfs` on u16 frames held in memory (see [`bench_in_memory`]).
///
/// # Errors
/// Those of [`crate::engine::run_tiles`].
pub fn bench_udfs(
    udfs: &[Box<dyn Udf>],
    cfg: &BenchConfig,
) -> Result<BenchFigures, ProcessingError> {
    let tiles = synthetic_tiles(cfg);
    let mut run = RunConfig::new(cfg.nav_shape, cfg.sig_shape, DType::U16);
    run.threads = cfg.threads;
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
    let mut encoded = synthetic_tiles(cfg)
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
    let cancel = AtomicBool::new(false);
    let mut best = f64::INFINITY;
    for _ in 0..cfg.passes.max(1) {
        let (tx, rx) = crossbeam_channel::bounded(4);
        let t0 = Instant::now();
        std::thread::scope(|s| {
            let feeder = s.spawn(|| {
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
                        decoder: Arc::clone(&decoder),
                    };
                    if tx.send(stack).is_err() {
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

/// Diffraction-like u16 frames: a bright disk on a noisy background (xorshift noise, so
/// nothing is constant and no work can be skipped).
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
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..total)
        .step_by(per_tile)
        .map(|first| {
            let n = per_tile.min(total - first);
            let mut data = Vec::with_capacity(n * sig.len());
            for _ in 0..n {
                for &p in &pattern {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    data.push(p + (state & 7) as u16);
                }
            }
            Tile {
                first_frame: first as u64,
                n_frames: n,
                sig_shape: sig,
                data: TileData::U16(data),
            }
        })
        .collect()
}
