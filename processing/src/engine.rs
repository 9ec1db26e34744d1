//! Running UDFs on a live stream of raw frame stacks ([`run_live`]) or on decoded tiles
//! from a file ([`run_tiles`]), in parallel on a rayon pool.
//!
//! # How a run works
//! The calling thread coordinates: it takes work (a [`RawStack`] from the receiver, or a
//! [`Tile`] from the reader), hands it to a worker, passes finished tiles to the
//! [`TileSink`], and delivers [`Snapshot`]s. At most `2 × threads` tiles are in flight; when
//! all are busy the coordinator stops taking stacks, the stacks channel fills, and the
//! receiver blocks on it — that is the backpressure.
//!
//! Each worker thread owns one [`PartitionTask`] per UDF (made once, reused all run) and a
//! staging area for nav values. A live worker decodes the stack into a tile from the
//! coordinator's free list (allocated once, reused), runs every UDF over it — in chunks of
//! ~512 KiB so that all UDFs read a chunk while it is still in cache — and sends the tile
//! back. Partition results reach the global results when the coordinator merges (before
//! each snapshot and at the end) or when a worker has staged 4096 frames.
//!
//! # Determinism
//! Nav values are computed per frame and assigned to the frame's position; the built-ins
//! accumulate sig and single buffers as exact integers. So results are bit-identical
//! whatever the split into tiles, the number of threads, and the order tiles complete in:
//! a live run and an offline run over the same frames agree exactly.
//!
//! # Regions of interest and partitions
//! With [`RunConfig::roi`] set, frames outside the ROI are decoded and passed to the sink
//! but not to the UDFs (counted in [`RunSummary::outside_roi`]); their nav values stay NaN.
//! A partition is the unit of work one worker takes — a live stack, or a file tile of
//! [`partition_frames`] frames ([`crate::io::run_dataset`]); UDFs with
//! [`crate::udf::Granularity::Partition`] see each one whole (split where frames are
//! skipped), the others see it in cache-sized chunks.
//!
//! # Lost, damaged and unexpected frames
//! A frame that fails to decode is counted as damaged ([`RunSummary::damaged`]), its pixels
//! are zeroed, the UDFs skip it (its nav positions stay NaN) and the run goes on. Frames
//! whose index lies beyond the scan are dropped and counted
//! ([`RunSummary::out_of_range`]). Frames that never arrive are the receiver's to count.

use crate::fused::{Fusable, FusedPlan, LinearTerms, Scratch};
use crate::result::UdfResults;
use crate::roi::Roi;
use crate::sink::{SinkError, TileSink};
use crate::udf::{
    BandRead, BufferDecl, Granularity, MAX_BAND_FRAMES, PartitionTask, TileView, Udf, UdfMeta,
    new_results,
};
use crossbeam_channel::{Receiver, Sender, select, unbounded};
use std::any::Any;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use stemflow_core::frame::{PixelsMut, PixelsRef, RawStack, Tile, TileData};
use stemflow_core::result::BufferKind;
use stemflow_core::{DType, NavShape, SigShape};

/// Pixel bytes all UDFs process before moving on: small enough to stay in a core's L2
/// cache (≥ 1 MiB on our machines) beside the UDFs' accumulators, so a frame is read from
/// memory once however many UDFs run; large enough to hold four 256 × 256 u16 frames, which
/// the sum reads in lockstep (measured: 512 KiB runs the standard set about twice as fast
/// as 256 KiB).
const CHUNK_BYTES: usize = 512 * 1024;
/// Pixel bytes of one row band over all frames of a chunk ([`PartitionTask::bands`]).
/// Measured on 256 × 256 u16, full benchmark set, 2 cores: 128 KiB bands (32 rows of 4
/// frames) beat whole chunks by about 7 %; bands that fit L1 (16–32 KiB) lose 20–35 %,
/// because each band of each frame is then a fresh 4 KiB page for the hardware prefetcher.
const BAND_BYTES: usize = 128 * 1024;
/// Fewest frames in a chunk fed in bands: the sum adds four frames in lockstep, so each
/// accumulator row crosses the cache once per four frames.
const BAND_MIN_FRAMES: usize = 4;
/// A worker merges by itself once it has staged this many frames, bounding its memory.
const SELF_MERGE_FRAMES: u64 = 4096;
/// How often the coordinator looks at the cancel flag while waiting.
const CANCEL_POLL: Duration = Duration::from_millis(10);
/// How long the coordinator waits for in-flight work before logging that it still waits.
const DRAIN_WARN: Duration = Duration::from_secs(5);

/// Bytes of pixels an offline partition aims at ([`partition_frames`]): large enough that
/// handing it to a worker costs nothing by comparison, small enough that two per worker
/// stay far below the memory of any machine and give a snapshot every few milliseconds.
const PARTITION_BYTES: usize = 4 << 20;

/// Frames per partition (the unit of work one worker takes) for `total_frames` frames of
/// `sig_shape` pixels of `dtype` on `threads` workers: about 4 MiB of pixels, but small
/// enough that every worker gets at least four partitions. ≥ 1.
///
/// E.g. 256 × 256 u16 frames (128 KiB): 32 frames; 512 × 512 u32 (1 MiB): 4 frames.
pub fn partition_frames(
    sig_shape: SigShape,
    dtype: DType,
    threads: usize,
    total_frames: usize,
) -> usize {
    let frame_bytes = (sig_shape.len() * dtype.size()).max(1);
    let by_size = (PARTITION_BYTES / frame_bytes).max(1);
    let by_cores = total_frames.div_ceil(4 * threads.max(1)).max(1);
    by_size.min(by_cores)
}

/// Settings of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct RunConfig {
    /// Scan grid; frame `i` is at position `(i / cols, i % cols)`, frames `≥ len()` are
    /// dropped (counted in [`RunSummary::out_of_range`]).
    pub nav_shape: NavShape,
    /// Frame shape in pixels; every stack's decoder and every tile must have it.
    pub sig_shape: SigShape,
    /// Decoded pixel type; every stack's decoder and every tile must have it.
    pub dtype: DType,
    /// Time between two snapshots (default 100 ms), on a fixed cadence from the start of
    /// the run (a snapshot that came late does not delay the later ones); none while nothing
    /// changed; the final snapshot always comes. `Duration::MAX`: the final one only.
    pub snapshot_interval: Duration,
    /// Worker threads; `None`: one per available core.
    pub threads: Option<usize>,
    /// Region of interest: only frames inside it are given to the UDFs (the sink still
    /// gets every frame); `None`: the whole scan. Must be defined on `nav_shape`.
    pub roi: Option<Arc<Roi>>,
    /// Whether the engine may run its fused pass ([`crate::fused`]) where it applies
    /// (default true); false feeds every band-capable task its bands. The results are the
    /// same bit for bit; false is for comparing and measuring the two.
    pub fused: bool,
}

impl RunConfig {
    /// A run over `nav_shape` frames of `sig_shape` pixels of `dtype`, snapshots every
    /// 100 ms, one worker per core.
    pub fn new(nav_shape: NavShape, sig_shape: SigShape, dtype: DType) -> Self {
        Self {
            nav_shape,
            sig_shape,
            dtype,
            snapshot_interval: Duration::from_millis(100),
            threads: None,
            roi: None,
            fused: true,
        }
    }
    /// The same configuration with a region of interest.
    pub fn with_roi(mut self, roi: Roi) -> Self {
        self.roi = Some(Arc::new(roi));
        self
    }
    /// Frames per partition for this run's frames and workers ([`partition_frames`]).
    pub fn partition_frames(&self) -> usize {
        partition_frames(
            self.sig_shape,
            self.dtype,
            self.worker_threads(),
            self.nav_shape.len(),
        )
    }
    /// What the UDFs are told about the data set.
    pub fn meta(&self) -> UdfMeta {
        UdfMeta {
            nav_shape: self.nav_shape,
            sig_shape: self.sig_shape,
            dtype: self.dtype,
        }
    }
    /// The worker count this configuration runs with (≥ 1).
    pub fn worker_threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }
}

/// The merged results at one moment of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// Frames merged into `results` so far.
    pub frames_processed: u64,
    /// One entry per UDF, in the order the UDFs were given; nav positions not yet processed
    /// are NaN.
    pub results: Vec<UdfResults>,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The stream ended (stacks channel disconnected, or the tile reader was exhausted).
    Completed,
    /// The cancel flag was set; frames still queued were not processed.
    Cancelled,
}

/// What a run did.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSummary {
    /// Frames decoded and processed by every UDF.
    pub frames_processed: u64,
    /// Acquisition indices of frames that failed to decode, ascending.
    pub damaged: Vec<u64>,
    /// Frames dropped because their index lies beyond `nav_shape` (decoded, not processed,
    /// not passed to the sink).
    pub out_of_range: u64,
    /// Frames inside the scan but outside the region of interest (decoded and passed to
    /// the sink, not processed).
    pub outside_roi: u64,
    /// Completed or cancelled.
    pub outcome: Outcome,
    /// After a cancelled live run ([`run_live`]): the acquisition index just after the last
    /// frame of the stacks the run took (stacks arrive in order, and every stack taken is
    /// processed to its end). Frames from there on (still queued, in flight, or sent after
    /// the cancel) are in no result and were not passed to the sink, so the caller must not
    /// count them as received. `None` for completed runs and offline runs.
    pub unprocessed_from: Option<u64>,
    /// Final results (after [`Udf::postprocess`] and [`Udf::get_results`]), one entry per
    /// UDF in the order given.
    pub results: Vec<UdfResults>,
}

/// Errors that stop a run.
#[derive(Debug, thiserror::Error)]
pub enum ProcessingError {
    /// A UDF's parameters do not fit the data set.
    #[error("UDF `{udf}`: {detail}")]
    Udf {
        /// The UDF's name.
        udf: String,
        /// What is wrong, from [`Udf::check`].
        detail: String,
    },
    /// Two UDFs share a name.
    #[error("two UDFs are named `{name}`; UDF names must be unique within a run")]
    DuplicateUdf {
        /// The repeated name.
        name: String,
    },
    /// A stack's decoder or a tile does not produce what the run was configured for.
    #[error(
        "{source_kind} at frame {first_frame}: {observed_dtype} frames of {observed_sig} pixels, expected {expected_dtype} frames of {expected_sig} pixels"
    )]
    Mismatch {
        /// `stack decoder` or `tile`.
        source_kind: &'static str,
        /// First frame of the offending stack or tile.
        first_frame: u64,
        /// Configured frame shape.
        expected_sig: SigShape,
        /// Configured pixel type.
        expected_dtype: DType,
        /// Frame shape found.
        observed_sig: SigShape,
        /// Pixel type found.
        observed_dtype: DType,
    },
    /// A tile's pixel buffer does not hold `n_frames × sig_shape` pixels.
    #[error(
        "tile at frame {first_frame}: {n_frames} frames need {expected} pixels, the buffer holds {observed}"
    )]
    TileLength {
        /// First frame of the tile.
        first_frame: u64,
        /// Frames the tile claims.
        n_frames: usize,
        /// Pixels expected.
        expected: usize,
        /// Pixels present.
        observed: usize,
    },
    /// The tile sink failed; the run stopped.
    #[error("sink `{sink}` failed after {frames_processed} frames: {source}")]
    Sink {
        /// The sink's name.
        sink: String,
        /// Frames processed before the failure.
        frames_processed: u64,
        /// The sink's error.
        #[source]
        source: SinkError,
    },
    /// The offline tile reader failed; the run stopped.
    #[error("tile source failed after {frames_processed} frames: {source}")]
    Source {
        /// Frames processed before the failure.
        frames_processed: u64,
        /// The reader's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The region of interest is defined on another scan grid.
    #[error("the region of interest covers a {roi_nav} scan, the run scans {run_nav}")]
    RoiShape {
        /// The ROI's scan grid.
        roi_nav: NavShape,
        /// The run's scan grid.
        run_nav: NavShape,
    },
    /// The worker threads could not be started.
    #[error("cannot start {threads} processing threads: {detail}")]
    Threads {
        /// Threads asked for.
        threads: usize,
        /// The operating system's reason.
        detail: String,
    },
}

/// Runs `udfs` on a live stream of raw frame stacks until the stream ends (the receiver
/// side disconnects the channel at the end of the acquisition) or `cancel` is set.
///
/// Each stack is decoded by a worker into a reused tile, processed by every UDF, passed to
/// `sink` (on this thread) and recycled. `on_snapshot` gets the merged results at most every
/// `cfg.snapshot_interval`, and always once at the end (also after a cancel). The calling
/// thread coordinates; `cfg.threads` workers do the work.
///
/// # Errors
/// [`ProcessingError::Udf`] / [`ProcessingError::DuplicateUdf`] before anything runs;
/// [`ProcessingError::Mismatch`] when a stack's decoder does not produce `cfg.dtype`
/// frames of `cfg.sig_shape`; [`ProcessingError::Sink`] when the sink fails;
/// [`ProcessingError::Threads`]. Frames that fail to decode are no error: they are counted
/// in [`RunSummary::damaged`]. A panic in a UDF resumes on this thread once the in-flight
/// work has finished.
pub fn run_live(
    stacks: Receiver<RawStack>,
    udfs: &[Box<dyn Udf>],
    cfg: &RunConfig,
    sink: Option<&mut dyn TileSink>,
    on_snapshot: &mut dyn FnMut(&Snapshot),
    cancel: &AtomicBool,
) -> Result<RunSummary, ProcessingError> {
    let (pool, shared) = prepare(udfs, cfg)?;
    let sink = sink.map(|s| s as &mut dyn TileSink);
    let mut co = Coordinator::new(&shared, udfs, sink, on_snapshot);
    let cap = co.capacity;
    co.free = (0..cap)
        .map(|_| Tile::zeros(0, 0, cfg.sig_shape, cfg.dtype))
        .collect();
    // Acquisition index after the last frame of the stacks taken so far.
    let mut taken_until = 0u64;
    let done_rx = co.done_rx.clone();
    let outcome = pool.in_place_scope(|s| {
        let mut disconnected = false;
        let outcome = loop {
            if cancel.load(Ordering::Relaxed) {
                break Outcome::Cancelled;
            }
            if co.stopped() {
                break Outcome::Completed;
            }
            let wait = co.tick();
            if !disconnected && !co.free.is_empty() {
                select! {
                    recv(stacks) -> msg => match msg {
                        Ok(raw) => {
                            taken_until = taken_until.max(raw.first_frame + raw.len() as u64);
                            let tile = co.free.pop().unwrap_or_else(|| {
                                Tile::zeros(0, 0, cfg.sig_shape, cfg.dtype)
                            });
                            co.in_flight += 1;
                            let tx = co.done_tx.clone();
                            let sh = &shared;
                            s.spawn(move |_| {
                                let done = catch_unwind(AssertUnwindSafe(|| live_job(sh, raw, tile)))
                                    .unwrap_or_else(Done::panicked);
                                let _ = tx.send(done);
                            });
                        }
                        Err(_) => disconnected = true,
                    },
                    recv(done_rx) -> done => {
                        if let Ok(done) = done {
                            co.handle(done);
                        }
                    },
                    default(wait) => {}
                }
            } else if co.in_flight > 0 {
                co.wait_one(wait);
            } else {
                break Outcome::Completed;
            }
        };
        co.drain();
        outcome
    });
    let unprocessed_from = match outcome {
        Outcome::Cancelled => {
            // Dropping the queued stacks returns their buffers to the receiver's pool at once.
            stacks.try_iter().for_each(drop);
            Some(taken_until)
        }
        Outcome::Completed => None,
    };
    let tally = co.finish();
    let mut summary = summarize(shared, tally, outcome)?;
    summary.unprocessed_from = unprocessed_from;
    Ok(summary)
}

/// Runs `udfs` on decoded tiles (e.g. read from a file), processing tiles in parallel, with
/// the same sink, snapshots, cancellation and results as [`run_live`]. Tiles are taken from
/// the iterator on the calling thread, at most `2 × threads` ahead of the workers, and
/// dropped after the sink saw them. Tiles of ~1–8 MiB keep all workers busy; a tile is
/// processed by one worker.
///
/// # Errors
/// As [`run_live`], plus [`ProcessingError::Source`] when the iterator yields an error,
/// [`ProcessingError::Mismatch`] / [`ProcessingError::TileLength`] for a tile that does not
/// fit `cfg`.
pub fn run_tiles<E>(
    tiles: impl Iterator<Item = Result<Tile, E>>,
    udfs: &[Box<dyn Udf>],
    cfg: &RunConfig,
    sink: Option<&mut dyn TileSink>,
    on_snapshot: &mut dyn FnMut(&Snapshot),
    cancel: &AtomicBool,
) -> Result<RunSummary, ProcessingError>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let slots = tiles.map(|t| t.map(Slot::Owned).map_err(Into::into));
    run_offline(slots, udfs, cfg, sink, on_snapshot, cancel)
}

/// [`run_tiles`] over borrowed tiles, which stay with the caller (benchmarks, tests).
/// Frames beyond the scan are skipped by the UDFs but a borrowed tile reaches the sink whole.
pub(crate) fn run_tile_refs<'a>(
    tiles: impl Iterator<Item = &'a Tile>,
    udfs: &[Box<dyn Udf>],
    cfg: &RunConfig,
    sink: Option<&mut dyn TileSink>,
    on_snapshot: &mut dyn FnMut(&Snapshot),
    cancel: &AtomicBool,
) -> Result<RunSummary, ProcessingError> {
    run_offline(
        tiles.map(|t| Ok(Slot::Borrowed(t))),
        udfs,
        cfg,
        sink,
        on_snapshot,
        cancel,
    )
}

/// The error type of tile sources.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// [`run_tiles`] over tiles that `fill` reads into buffers the engine owns and reuses: the
/// coordinator keeps `2 × threads` tiles, hands a free one to `fill` (which resizes it and
/// returns `Ok(false)` when there is nothing more to read), and takes it back once the UDFs
/// and the sink are done with it. Reading a file into reused memory is several times
/// faster than into fresh allocations.
pub(crate) fn run_reader(
    mut fill: impl FnMut(&mut Tile) -> Result<bool, BoxError>,
    udfs: &[Box<dyn Udf>],
    cfg: &RunConfig,
    sink: Option<&mut dyn TileSink>,
    on_snapshot: &mut dyn FnMut(&Snapshot),
    cancel: &AtomicBool,
) -> Result<RunSummary, ProcessingError> {
    let (pool, shared) = prepare(udfs, cfg)?;
    let sink = sink.map(|s| s as &mut dyn TileSink);
    let mut co = Coordinator::new(&shared, udfs, sink, on_snapshot);
    co.free = (0..co.capacity)
        .map(|_| Tile::zeros(0, 0, cfg.sig_shape, cfg.dtype))
        .collect();
    let outcome = pool.in_place_scope(|s| {
        let mut exhausted = false;
        let outcome = loop {
            while let Ok(done) = co.done_rx.try_recv() {
                co.handle(done);
            }
            if cancel.load(Ordering::Relaxed) {
                break Outcome::Cancelled;
            }
            if co.stopped() {
                break Outcome::Completed;
            }
            let wait = co.tick();
            if exhausted || co.free.is_empty() {
                if co.in_flight == 0 {
                    break Outcome::Completed;
                }
                co.wait_one(wait);
                continue;
            }
            let mut tile = co
                .free
                .pop()
                .unwrap_or_else(|| Tile::zeros(0, 0, cfg.sig_shape, cfg.dtype));
            match fill(&mut tile) {
                Ok(false) => {
                    co.free.push(tile);
                    exhausted = true;
                }
                Err(source) => {
                    co.free.push(tile);
                    co.failure = Some(ProcessingError::Source {
                        frames_processed: co.frames_done,
                        source,
                    });
                }
                Ok(true) => match admit(Slot::Pooled(tile), cfg) {
                    Err(e) => co.failure = Some(e),
                    Ok((mut slot, keep, dropped)) => {
                        if let Slot::Pooled(t) = &mut slot {
                            truncate(t, keep);
                        }
                        co.out_of_range += dropped;
                        co.in_flight += 1;
                        let tx = co.done_tx.clone();
                        let sh = &shared;
                        s.spawn(move |_| {
                            let done =
                                catch_unwind(AssertUnwindSafe(|| offline_job(sh, slot, keep)))
                                    .unwrap_or_else(Done::panicked);
                            let _ = tx.send(done);
                        });
                    }
                },
            }
        };
        co.drain();
        outcome
    });
    let tally = co.finish();
    summarize(shared, tally, outcome)
}

fn run_offline<'a>(
    mut tiles: impl Iterator<Item = Result<Slot<'a>, BoxError>>,
    udfs: &[Box<dyn Udf>],
    cfg: &RunConfig,
    sink: Option<&mut dyn TileSink>,
    on_snapshot: &mut dyn FnMut(&Snapshot),
    cancel: &AtomicBool,
) -> Result<RunSummary, ProcessingError> {
    let (pool, shared) = prepare(udfs, cfg)?;
    let sink = sink.map(|s| s as &mut dyn TileSink);
    let mut co = Coordinator::new(&shared, udfs, sink, on_snapshot);
    let outcome = pool.in_place_scope(|s| {
        let mut exhausted = false;
        let outcome = loop {
            while let Ok(done) = co.done_rx.try_recv() {
                co.handle(done);
            }
            if cancel.load(Ordering::Relaxed) {
                break Outcome::Cancelled;
            }
            if co.stopped() {
                break Outcome::Completed;
            }
            let wait = co.tick();
            if exhausted || co.in_flight >= co.capacity {
                if co.in_flight == 0 {
                    break Outcome::Completed;
                }
                co.wait_one(wait);
                continue;
            }
            match tiles.next() {
                None => exhausted = true,
                Some(Err(source)) => {
                    co.failure = Some(ProcessingError::Source {
                        frames_processed: co.frames_done,
                        source,
                    });
                }
                Some(Ok(slot)) => match admit(slot, cfg) {
                    Err(e) => co.failure = Some(e),
                    Ok((slot, keep, dropped)) => {
                        co.out_of_range += dropped;
                        co.in_flight += 1;
                        let tx = co.done_tx.clone();
                        let sh = &shared;
                        s.spawn(move |_| {
                            let done =
                                catch_unwind(AssertUnwindSafe(|| offline_job(sh, slot, keep)))
                                    .unwrap_or_else(Done::panicked);
                            let _ = tx.send(done);
                        });
                    }
                },
            }
        };
        co.drain();
        outcome
    });
    let tally = co.finish();
    summarize(shared, tally, outcome)
}

/// Where a nav buffer's values sit in a frame's staged row.
#[derive(Debug)]
struct NavSlot {
    /// Index of the buffer in the UDF's declaration order.
    buffer: usize,
    /// Offset of its first value in the frame's row.
    offset: usize,
    /// Values per frame (product of its extra shape).
    width: usize,
}

/// The nav layout of one UDF.
#[derive(Debug)]
struct UdfLayout {
    slots: Vec<NavSlot>,
    /// Staged values per frame.
    width: usize,
    /// What its task is fed.
    granularity: Granularity,
}

impl UdfLayout {
    fn new(decls: &[BufferDecl], granularity: Granularity) -> Self {
        let mut slots = Vec::new();
        let mut offset = 0;
        for (buffer, d) in decls.iter().enumerate() {
            if d.kind == BufferKind::Nav {
                let width = d.extra_len();
                slots.push(NavSlot {
                    buffer,
                    offset,
                    width,
                });
                offset += width;
            }
        }
        Self {
            slots,
            width: offset,
            granularity,
        }
    }
}

/// One worker thread's partition: a task per UDF and the nav values staged since the last
/// merge.
struct Worker {
    tasks: Vec<Box<dyn PartitionTask>>,
    /// Per UDF: fed in row bands ([`PartitionTask::bands`], tile granularity).
    banded: Vec<bool>,
    /// The banded tasks the fused pass does not take, in the order each band goes
    /// through them: the best reader ([`PartitionTask::band_read`]) first, so it pulls the
    /// band in from memory.
    band_order: Vec<usize>,
    /// As `band_order`, for all banded tasks: a chunk the fused pass could not take.
    band_order_all: Vec<usize>,
    /// The fused pass over u16 chunks, when the run has fusable tasks ([`crate::fused`]).
    fused: Option<FusedTasks>,
    /// True when the best reader among the banded tasks of `band_order` is
    /// [`BandRead::Scattered`]: the engine then reads each band once itself before them
    /// ([`touch`]).
    touch_bands: bool,
    /// As `touch_bands`, for `band_order_all`.
    touch_bands_all: bool,
    /// Rows per band (≥ 1).
    band_rows: usize,
    /// Frames per `process_tile` call for tasks not fed in bands: ~[`CHUNK_BYTES`].
    tile_frames: usize,
    /// `(first_frame, n_frames)` of every run of frames processed since the last merge.
    runs: Vec<(u64, usize)>,
    /// Per UDF: staged nav values, `layout.width` per frame, frames in `runs` order.
    values: Vec<Vec<f64>>,
    /// Scratch: per UDF, where the current tile's values start in `values`.
    starts: Vec<usize>,
    /// Frames processed since the last merge.
    frames: u64,
}

impl Worker {
    fn process(&mut self, view: &TileView<'_>, layouts: &[UdfLayout], chunk_frames: usize) {
        let n = view.n_frames;
        if n == 0 {
            return;
        }
        self.runs.push((view.first_frame, n));
        self.starts.clear();
        for (vals, layout) in self.values.iter_mut().zip(layouts) {
            self.starts.push(vals.len());
            vals.resize(vals.len() + n * layout.width, f64::NAN);
        }
        for (u, task) in self.tasks.iter_mut().enumerate() {
            if layouts[u].granularity == Granularity::Partition {
                let w = layouts[u].width;
                let base = self.starts[u];
                task.process_partition(view, &mut self.values[u][base..base + n * w]);
            }
        }
        let mut f = 0;
        while f < n {
            let m = chunk_frames.min(n - f);
            let chunk = view.frames(f..f + m);
            let in_bands = m <= MAX_BAND_FRAMES;
            if in_bands {
                self.bands(view, f, &chunk, layouts);
            }
            // The other tile tasks take cache-sized pieces of the chunk.
            let mut g = 0;
            while g < m {
                let k = self.tile_frames.min(m - g);
                let piece = chunk.frames(g..g + k);
                for (u, task) in self.tasks.iter_mut().enumerate() {
                    if (in_bands && self.banded[u]) || layouts[u].granularity != Granularity::Tile {
                        continue;
                    }
                    let w = layouts[u].width;
                    let base = self.starts[u] + (f + g) * w;
                    task.process_tile(&piece, &mut self.values[u][base..base + k * w]);
                }
                g += k;
            }
            f += m;
        }
        self.frames += n as u64;
    }

    /// Feeds the band-capable tasks `chunk` (frames `f..` of the current view) band by
    /// band: every such task reads a band while it is in L1, and the rows after it stream
    /// in meanwhile.
    /// `chunk` is frames `f..` of `view`; the fused pass, if any, takes its tasks first
    /// (and prefetches from the frames of `view` after the chunk).
    fn bands(
        &mut self,
        view: &TileView<'_>,
        f: usize,
        chunk: &TileView<'_>,
        layouts: &[UdfLayout],
    ) {
        if !self.banded.iter().any(|&b| b) {
            return;
        }
        let m = chunk.n_frames;
        let slots = |u: usize, starts: &[usize]| {
            let w = layouts[u].width;
            let base = starts[u] + f * w;
            base..base + m * w
        };
        for u in 0..self.tasks.len() {
            if self.banded[u] {
                self.values[u][slots(u, &self.starts)].fill(0.0);
            }
        }
        let fused = match &mut self.fused {
            Some(fz) => fz.run(
                view,
                f,
                chunk,
                &mut self.tasks,
                &mut self.values,
                &self.starts,
                layouts,
            ),
            None => false,
        };
        let (order, touch_bands) = if fused {
            (&self.band_order, self.touch_bands)
        } else {
            (&self.band_order_all, self.touch_bands_all)
        };
        let rows = chunk.sig_shape.rows;
        let mut r = 0;
        while r < rows {
            let r1 = (r + self.band_rows).min(rows);
            if touch_bands {
                touch(chunk, r..r1);
            }
            for &u in order {
                let nav = &mut self.values[u][slots(u, &self.starts)];
                self.tasks[u].process_band(chunk, r..r1, nav);
            }
            r = r1;
        }
        for &u in order {
            self.tasks[u].finish_bands(chunk, &mut self.values[u][slots(u, &self.starts)]);
        }
    }

    fn merge(&mut self, global: &mut Snapshot, layouts: &[UdfLayout]) {
        for (((task, vals), layout), res) in self
            .tasks
            .iter_mut()
            .zip(&mut self.values)
            .zip(layouts)
            .zip(&mut global.results)
        {
            let bufs = &mut res.buffers;
            let mut pos = 0;
            for &(first, n) in &self.runs {
                for i in 0..n {
                    let frame = (first + i as u64) as usize;
                    for slot in &layout.slots {
                        let src = &vals[pos + slot.offset..pos + slot.offset + slot.width];
                        let at = frame * slot.width;
                        bufs[slot.buffer].data[at..at + slot.width].copy_from_slice(src);
                    }
                    pos += layout.width;
                }
            }
            task.merge_into(bufs);
            vals.clear();
        }
        self.runs.clear();
        global.frames_processed += self.frames;
        self.frames = 0;
    }
}

/// The tasks of a worker that the fused pass takes ([`crate::fused`]), its plan and buffers.
struct FusedTasks {
    plan: FusedPlan,
    /// The [`Fusable::SigSum`] task (the first, if several) whose accumulator the pass adds into.
    sum: Option<usize>,
    /// Each [`Fusable::Linear`] task and the range of its sums among the plan's terms.
    linear: Vec<(usize, Range<usize>)>,
    scratch: Scratch,
    /// The pass's sums, frame-major.
    sums: Vec<u64>,
    /// One task's sums, frame-major.
    task_sums: Vec<u64>,
}

impl FusedTasks {
    /// The fused pass for `tasks` (`banded[u]`: task `u` is fed in bands), or `None` when
    /// no banded task is [`Fusable::Linear`] or [`FusedPlan::new`] declines the shape,
    /// dtype or build.
    fn new(meta: &UdfMeta, tasks: &[Box<dyn PartitionTask>], banded: &[bool]) -> Option<Self> {
        let mut sum = None;
        let mut linear = Vec::new();
        let mut terms: Vec<LinearTerms> = Vec::new();
        for (u, task) in tasks.iter().enumerate() {
            if !banded[u] {
                continue;
            }
            match task.fusable() {
                Some(Fusable::SigSum) if sum.is_none() => sum = Some(u),
                Some(Fusable::Linear(t)) => {
                    let a: usize = terms.iter().map(|t| t.weights.len()).sum();
                    let k: usize = t.iter().map(|t| t.weights.len()).sum();
                    linear.push((u, a..a + k));
                    terms.extend(t);
                }
                _ => {}
            }
        }
        // The sum alone streams as fast in bands (measured); the pass pays off when
        // there is more to do per pixel.
        if linear.is_empty() {
            return None;
        }
        let refs: Vec<&LinearTerms> = terms.iter().collect();
        let plan = FusedPlan::new(meta.sig_shape, meta.dtype, &refs)?;
        Some(Self {
            plan,
            sum,
            linear,
            scratch: Scratch::default(),
            sums: Vec::new(),
            task_sums: Vec::new(),
        })
    }

    /// True for each task the pass takes.
    fn takes(&self, tasks: usize) -> Vec<bool> {
        let mut t = vec![false; tasks];
        for u in self
            .sum
            .iter()
            .copied()
            .chain(self.linear.iter().map(|l| l.0))
        {
            t[u] = true;
        }
        t
    }

    /// Runs the pass on `chunk` (frames `f..` of `view`) and hands each fused task its
    /// results; false, having handed nothing, when the chunk is not u16 or the sum task
    /// gave no accumulator (its tasks then take the chunk in bands).
    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        view: &TileView<'_>,
        f: usize,
        chunk: &TileView<'_>,
        tasks: &mut [Box<dyn PartitionTask>],
        values: &mut [Vec<f64>],
        starts: &[usize],
        layouts: &[UdfLayout],
    ) -> bool {
        let n = view.sig_shape.len();
        let m = chunk.n_frames;
        let PixelsRef::U16(all) = view.pixels else {
            return false;
        };
        let Some(px) = all.get(f * n..) else {
            return false;
        };
        let nt = self.plan.n_terms();
        self.sums.clear();
        self.sums.resize(m * nt, 0);
        let acc = match self.sum {
            Some(u) => match tasks[u].fused_sum(m) {
                Some(acc) => Some(acc),
                None => return false,
            },
            None => None,
        };
        if !self.plan.run(px, m, acc, &mut self.scratch, &mut self.sums) {
            return false;
        }
        for (u, terms) in &self.linear {
            self.task_sums.clear();
            for fr in 0..m {
                self.task_sums
                    .extend_from_slice(&self.sums[fr * nt + terms.start..fr * nt + terms.end]);
            }
            let w = layouts[*u].width;
            let base = starts[*u] + f * w;
            tasks[*u].take_linear(chunk, &self.task_sums, &mut values[*u][base..base + m * w]);
        }
        true
    }
}

/// The order in which each band goes through the banded tasks (`reads[u]` is `Some` for
/// a banded task `u`): best reader first, ties in the caller's order; and whether the
/// engine reads each band itself first (the best reader is [`BandRead::Scattered`]).
fn band_plan(reads: &[Option<BandRead>]) -> (Vec<usize>, bool) {
    let mut order: Vec<usize> = (0..reads.len()).filter(|&u| reads[u].is_some()).collect();
    // Stable: tasks that read alike keep the caller's order.
    order.sort_by_key(|&u| std::cmp::Reverse(reads[u]));
    let touch = order
        .first()
        .is_some_and(|&u| reads[u] == Some(BandRead::Scattered));
    (order, touch)
}

/// Reads every cache line of rows `rows` of every frame of `chunk`, frame after frame, so
/// that band-capable tasks which skip lines (the virtual detectors' windows) find the band
/// in cache: the hardware prefetcher follows this plain stream at memory speed, but not
/// theirs. One load per 64-byte line; the loads are independent, so many are in flight.
fn touch(chunk: &TileView<'_>, rows: Range<usize>) {
    fn lines<P: Copy>(
        px: &[P],
        chunk: &TileView<'_>,
        rows: &Range<usize>,
        bits: fn(P) -> u64,
    ) -> u64 {
        let n = chunk.sig_shape.len();
        let cols = chunk.sig_shape.cols;
        let step = (64 / std::mem::size_of::<P>()).max(1);
        let mut acc = 0u64;
        for f in 0..chunk.n_frames {
            let band = &px[f * n + rows.start * cols..f * n + rows.end * cols];
            for &v in band.iter().step_by(step) {
                acc = acc.wrapping_add(bits(v));
            }
        }
        acc
    }
    let acc = match chunk.pixels {
        PixelsRef::U8(px) => lines(px, chunk, &rows, u64::from),
        PixelsRef::U16(px) => lines(px, chunk, &rows, u64::from),
        PixelsRef::U32(px) => lines(px, chunk, &rows, u64::from),
        PixelsRef::U64(px) => lines(px, chunk, &rows, |v| v),
        PixelsRef::F32(px) => lines(px, chunk, &rows, |v| v.to_bits() as u64),
        PixelsRef::F64(px) => lines(px, chunk, &rows, f64::to_bits),
    };
    // Keeps the loads: their only purpose is their effect on the cache.
    std::hint::black_box(acc);
}

/// What the workers and the coordinator share for one run.
struct Shared {
    cfg: RunConfig,
    layouts: Vec<UdfLayout>,
    /// One per pool thread, plus one for work run outside the pool.
    workers: Vec<Mutex<Worker>>,
    global: Mutex<Snapshot>,
    chunk_frames: usize,
    /// True when a UDF of the run takes whole partitions ([`Granularity::Partition`]): a
    /// live stack then reaches the UDFs whole instead of chunk by chunk.
    whole_stacks: bool,
}

/// A lock that survives a panic elsewhere: the run ends with that panic anyway.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Runs every UDF on `view` except the frames at `damaged` (indices within the view,
    /// ascending) and those outside the ROI, on the calling worker's partition; returns the
    /// number of frames outside the ROI (damaged ones not counted).
    fn process(&self, view: &TileView<'_>, damaged: &[usize]) -> u64 {
        let spare = self.workers.len() - 1;
        let idx = rayon::current_thread_index()
            .filter(|&i| i < spare)
            .unwrap_or(spare);
        let mut w = lock(&self.workers[idx]);
        let mut outside = 0;
        let roi = self.cfg.roi.as_deref();
        if roi.is_none() && damaged.is_empty() {
            w.process(view, &self.layouts, self.chunk_frames);
        } else {
            let mut d = damaged.iter().peekable();
            let mut run_start = None;
            for i in 0..=view.n_frames {
                let take = i < view.n_frames && {
                    let is_damaged = d.next_if_eq(&&i).is_some();
                    let inside = roi.is_none_or(|r| r.contains(view.first_frame + i as u64));
                    if !inside && !is_damaged {
                        outside += 1;
                    }
                    inside && !is_damaged
                };
                match (take, run_start) {
                    (true, None) => run_start = Some(i),
                    (false, Some(s)) => {
                        w.process(&view.frames(s..i), &self.layouts, self.chunk_frames);
                        run_start = None;
                    }
                    _ => {}
                }
            }
        }
        if w.frames >= SELF_MERGE_FRAMES {
            w.merge(&mut lock(&self.global), &self.layouts);
        }
        outside
    }

    /// Merges every worker's partition into the global results (worker lock, then global
    /// lock: the same order as a worker's own merge).
    fn merge_all(&self) {
        for w in &self.workers {
            let mut w = lock(w);
            if w.frames > 0 {
                w.merge(&mut lock(&self.global), &self.layouts);
            }
        }
    }
}

/// Checks the UDFs and builds the pool and the per-worker partitions.
fn prepare(
    udfs: &[Box<dyn Udf>],
    cfg: &RunConfig,
) -> Result<(rayon::ThreadPool, Shared), ProcessingError> {
    let meta = cfg.meta();
    if let Some(roi) = &cfg.roi
        && roi.nav_shape() != cfg.nav_shape
    {
        return Err(ProcessingError::RoiShape {
            roi_nav: roi.nav_shape(),
            run_nav: cfg.nav_shape,
        });
    }
    for (i, u) in udfs.iter().enumerate() {
        if udfs[..i].iter().any(|o| o.name() == u.name()) {
            return Err(ProcessingError::DuplicateUdf {
                name: u.name().to_string(),
            });
        }
        u.check(&meta).map_err(|detail| ProcessingError::Udf {
            udf: u.name().to_string(),
            detail,
        })?;
    }
    let threads = cfg.worker_threads();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("stemflow-udf-{i}"))
        .build()
        .map_err(|e| ProcessingError::Threads {
            threads,
            detail: e.to_string(),
        })?;
    let layouts: Vec<UdfLayout> = udfs
        .iter()
        .map(|u| UdfLayout::new(&u.buffers(&meta), u.granularity(&meta)))
        .collect();
    let mut global = Snapshot {
        frames_processed: 0,
        results: udfs
            .iter()
            .map(|u| new_results(u.as_ref(), &meta))
            .collect(),
    };
    for (u, r) in udfs.iter().zip(&mut global.results) {
        u.preprocess(&meta, &mut r.buffers)
            .map_err(|detail| ProcessingError::Udf {
                udf: u.name().to_string(),
                detail: format!("preprocess: {detail}"),
            })?;
    }
    // After preprocess: a task may use what it prepared (e.g. a file it created).
    let frame_bytes = (cfg.sig_shape.len() * cfg.dtype.size()).max(1);
    let tile_frames = (CHUNK_BYTES / frame_bytes).max(1);
    // Bands keep the working set small whatever the chunk's size, so a chunk holds at
    // least BAND_MIN_FRAMES frames (the sum adds four frames in lockstep).
    let chunk_frames = tile_frames.max(BAND_MIN_FRAMES);
    // Rows per band: a band of every frame of a chunk fills about BAND_BYTES.
    let row_bytes = (cfg.sig_shape.cols * cfg.dtype.size()).max(1);
    let band_rows = (BAND_BYTES / (chunk_frames * row_bytes)).max(1);
    let workers = (0..=threads)
        .map(|_| {
            let tasks: Vec<Box<dyn PartitionTask>> =
                udfs.iter().map(|u| u.new_partition(&meta)).collect();
            let banded: Vec<bool> = tasks
                .iter()
                .zip(&layouts)
                .map(|(t, l)| l.granularity == Granularity::Tile && t.bands())
                .collect();
            let reads: Vec<Option<BandRead>> = tasks
                .iter()
                .zip(&banded)
                .map(|(t, &b)| b.then(|| t.band_read()))
                .collect();
            let (band_order_all, touch_bands_all) = band_plan(&reads);
            let fused = if cfg.fused {
                FusedTasks::new(&meta, &tasks, &banded)
            } else {
                None
            };
            let (band_order, touch_bands) = match &fused {
                Some(fz) => {
                    let takes = fz.takes(tasks.len());
                    let rest: Vec<Option<BandRead>> = reads
                        .iter()
                        .zip(&takes)
                        .map(|(r, &t)| if t { None } else { *r })
                        .collect();
                    band_plan(&rest)
                }
                None => (band_order_all.clone(), touch_bands_all),
            };
            Mutex::new(Worker {
                tasks,
                banded,
                band_order,
                band_order_all,
                fused,
                touch_bands,
                touch_bands_all,
                band_rows,
                tile_frames,
                runs: Vec::new(),
                values: vec![Vec::new(); udfs.len()],
                starts: Vec::with_capacity(udfs.len()),
                frames: 0,
            })
        })
        .collect();
    let whole_stacks = layouts
        .iter()
        .any(|l| l.granularity == Granularity::Partition);
    Ok((
        pool,
        Shared {
            cfg: cfg.clone(),
            layouts,
            workers,
            global: Mutex::new(global),
            chunk_frames,
            whole_stacks,
        },
    ))
}

/// A tile as it travels to a worker and back.
enum Slot<'a> {
    /// From the coordinator's free list; goes back to it.
    Pooled(Tile),
    /// Given by a reader; dropped after the sink.
    Owned(Tile),
    /// Lent by the caller.
    Borrowed(&'a Tile),
}

impl Slot<'_> {
    fn tile(&self) -> &Tile {
        match self {
            Slot::Pooled(t) | Slot::Owned(t) => t,
            Slot::Borrowed(t) => t,
        }
    }
}

/// A worker's report on one stack or tile.
#[derive(Default)]
struct Done<'a> {
    slot: Option<Slot<'a>>,
    /// Whether the tile holds frames for the sink.
    to_sink: bool,
    /// Frames processed.
    frames: u64,
    /// Acquisition indices of damaged frames.
    damaged: Vec<u64>,
    /// Frames beyond the scan.
    out_of_range: u64,
    /// Frames outside the ROI.
    outside_roi: u64,
    error: Option<ProcessingError>,
    panic: Option<Box<dyn Any + Send>>,
}

impl Done<'_> {
    fn panicked(payload: Box<dyn Any + Send>) -> Self {
        Self {
            panic: Some(payload),
            ..Self::default()
        }
    }
}

/// Frames of a tile at `first` with `n` frames that lie inside a scan of `nav_len`.
fn frames_in_scan(first: u64, n: usize, nav_len: usize) -> usize {
    let room = (nav_len as u64).saturating_sub(first);
    (n as u64).min(room) as usize
}

/// Shrinks `tile` to its first `keep` frames, keeping the allocation.
fn truncate(tile: &mut Tile, keep: usize) {
    if keep < tile.n_frames {
        tile.n_frames = keep;
        tile.data.resize(keep * tile.sig_shape.len());
    }
}

fn zero(p: PixelsMut<'_>) {
    match p {
        PixelsMut::U8(s) => s.fill(0),
        PixelsMut::U16(s) => s.fill(0),
        PixelsMut::U32(s) => s.fill(0),
        PixelsMut::U64(s) => s.fill(0),
        PixelsMut::F32(s) => s.fill(0.0),
        PixelsMut::F64(s) => s.fill(0.0),
    }
}

/// Decodes `raw` into `tile`; returns the indices (within the stack) of frames that failed
/// to decode, whose pixels are zeroed.
/// Decodes the stack chunk by chunk into `tile` (resized to the stack's frames inside the
/// scan), each chunk processed by the UDFs right after it is decoded, while it is still in
/// cache: the decoded frames are written once and never read back from memory. A frame
/// that fails to decode (or lies beyond the stack's buffer) is zeroed and reported
/// damaged; the others go on.
fn live_job(shared: &Shared, raw: RawStack, mut tile: Tile) -> Done<'static> {
    let mut done = Done::default();
    let cfg = &shared.cfg;
    let dec = &raw.decoder;
    if dec.sig_shape() != cfg.sig_shape || dec.dtype() != cfg.dtype {
        done.error = Some(ProcessingError::Mismatch {
            source_kind: "stack decoder",
            first_frame: raw.first_frame,
            expected_sig: cfg.sig_shape,
            expected_dtype: cfg.dtype,
            observed_sig: dec.sig_shape(),
            observed_dtype: dec.dtype(),
        });
        done.slot = Some(Slot::Pooled(tile));
        return done;
    }
    let keep = frames_in_scan(raw.first_frame, raw.len(), cfg.nav_shape.len());
    done.out_of_range = (raw.len() - keep) as u64;
    let n = cfg.sig_shape.len();
    tile.first_frame = raw.first_frame;
    tile.n_frames = keep;
    tile.sig_shape = cfg.sig_shape;
    if tile.data.dtype() == cfg.dtype {
        tile.data.resize(keep * n);
    } else {
        tile.data = TileData::zeros(cfg.dtype, keep * n);
    }
    let buf_len = raw.buf.len();
    let mut damaged = Vec::new();
    let mut first_error = None;
    // Decoded and reduced chunk by chunk, so decoded frames are still in cache when the
    // UDFs read them; with a partition UDF in the run, the stack is its partition and goes
    // to the UDFs whole once decoded.
    let step = if shared.whole_stacks {
        keep
    } else {
        shared.chunk_frames
    };
    let mut f = 0;
    while f < keep {
        let m = step.min(keep - f);
        let chunk_damaged = damaged.len();
        for i in f..f + m {
            let r = &raw.frames[i];
            let out = tile.data.pixels_mut(i * n..(i + 1) * n);
            let result = match r.offset.checked_add(r.len) {
                Some(end) if end <= buf_len => dec.decode_into(&raw.buf[r.offset..end], out),
                _ => Err(stemflow_core::frame::DecodeError::Malformed {
                    device: format!("{dec:?}"),
                    detail: format!(
                        "frame payload at bytes {}..+{} lies beyond the {buf_len}-byte stack buffer",
                        r.offset, r.len
                    ),
                }),
            };
            if let Err(e) = result {
                zero(tile.data.pixels_mut(i * n..(i + 1) * n));
                damaged.push(i);
                first_error.get_or_insert(e);
            }
        }
        let view = TileView::of(&tile).frames(f..f + m);
        let local: Vec<usize> = damaged[chunk_damaged..].iter().map(|&i| i - f).collect();
        done.outside_roi += shared.process(&view, &local);
        f += m;
    }
    if let Some(e) = first_error {
        tracing::warn!(
            first_frame = raw.first_frame,
            damaged = damaged.len(),
            "damaged frames in stack: {e}"
        );
    }
    drop(raw);
    done.frames = (keep - damaged.len()) as u64 - done.outside_roi;
    done.damaged = damaged
        .iter()
        .map(|&i| tile.first_frame + i as u64)
        .collect();
    done.to_sink = keep > 0;
    done.slot = Some(Slot::Pooled(tile));
    done
}

/// Checks an offline tile against `cfg`, truncates an owned one to the scan; returns it, the
/// number of its frames inside the scan, and the number beyond it.
fn admit<'a>(
    mut slot: Slot<'a>,
    cfg: &RunConfig,
) -> Result<(Slot<'a>, usize, u64), ProcessingError> {
    let t = slot.tile();
    if t.sig_shape != cfg.sig_shape || t.data.dtype() != cfg.dtype {
        return Err(ProcessingError::Mismatch {
            source_kind: "tile",
            first_frame: t.first_frame,
            expected_sig: cfg.sig_shape,
            expected_dtype: cfg.dtype,
            observed_sig: t.sig_shape,
            observed_dtype: t.data.dtype(),
        });
    }
    let expected = t.n_frames * t.sig_shape.len();
    if t.data.len() != expected {
        return Err(ProcessingError::TileLength {
            first_frame: t.first_frame,
            n_frames: t.n_frames,
            expected,
            observed: t.data.len(),
        });
    }
    let keep = frames_in_scan(t.first_frame, t.n_frames, cfg.nav_shape.len());
    let dropped = (t.n_frames - keep) as u64;
    if let Slot::Owned(t) = &mut slot {
        truncate(t, keep);
    }
    Ok((slot, keep, dropped))
}

fn offline_job<'a>(shared: &Shared, slot: Slot<'a>, keep: usize) -> Done<'a> {
    let outside_roi = shared.process(&TileView::of(slot.tile()).frames(0..keep), &[]);
    Done {
        to_sink: keep > 0,
        frames: keep as u64 - outside_roi,
        outside_roi,
        slot: Some(slot),
        ..Done::default()
    }
}

/// Counters a run hands to its summary.
struct Tally {
    damaged: Vec<u64>,
    out_of_range: u64,
    outside_roi: u64,
    /// The final results as delivered.
    results: Vec<UdfResults>,
}

/// The coordinating thread's state.
struct Coordinator<'c, 'a> {
    shared: &'c Shared,
    udfs: &'c [Box<dyn Udf>],
    sink: Option<&'c mut dyn TileSink>,
    on_snapshot: &'c mut dyn FnMut(&Snapshot),
    /// Tiles (or stacks) that may be at the workers at once.
    capacity: usize,
    in_flight: usize,
    /// Live runs: decoded tiles not in use.
    free: Vec<Tile>,
    done_tx: Sender<Done<'a>>,
    done_rx: Receiver<Done<'a>>,
    damaged: Vec<u64>,
    out_of_range: u64,
    outside_roi: u64,
    /// Final results, set by the final snapshot.
    final_results: Option<Vec<UdfResults>>,
    /// Frames processed by finished jobs (for error messages).
    frames_done: u64,
    failure: Option<ProcessingError>,
    panic: Option<Box<dyn Any + Send>>,
    next_snapshot: Option<Instant>,
    delivered: Option<u64>,
}

impl<'c, 'a> Coordinator<'c, 'a> {
    fn new(
        shared: &'c Shared,
        udfs: &'c [Box<dyn Udf>],
        sink: Option<&'c mut dyn TileSink>,
        on_snapshot: &'c mut dyn FnMut(&Snapshot),
    ) -> Self {
        // Unbounded is safe: at most `capacity` reports exist at once.
        let (done_tx, done_rx) = unbounded();
        Self {
            shared,
            udfs,
            sink,
            on_snapshot,
            capacity: 2 * (shared.workers.len() - 1).max(1),
            in_flight: 0,
            free: Vec::new(),
            done_tx,
            done_rx,
            damaged: Vec::new(),
            out_of_range: 0,
            outside_roi: 0,
            final_results: None,
            frames_done: 0,
            failure: None,
            panic: None,
            next_snapshot: Instant::now().checked_add(shared.cfg.snapshot_interval),
            // Nothing processed is nothing changed: no empty snapshot before the first frame.
            delivered: Some(0),
        }
    }

    /// True once the run must end (an error or a panic).
    fn stopped(&self) -> bool {
        self.failure.is_some() || self.panic.is_some()
    }

    fn handle(&mut self, done: Done<'a>) {
        self.in_flight -= 1;
        self.frames_done += done.frames;
        self.damaged.extend(done.damaged);
        self.out_of_range += done.out_of_range;
        self.outside_roi += done.outside_roi;
        if let Some(p) = done.panic {
            self.panic.get_or_insert(p);
        }
        if let Some(e) = done.error {
            self.failure.get_or_insert(e);
        }
        let Some(slot) = done.slot else {
            return;
        };
        if done.to_sink
            && !self.stopped()
            && let Some(sink) = self.sink.as_mut()
            && let Err(source) = sink.write_tile(slot.tile())
        {
            self.failure = Some(ProcessingError::Sink {
                sink: sink.name().to_string(),
                frames_processed: self.frames_done,
                source,
            });
        }
        if let Slot::Pooled(tile) = slot {
            self.free.push(tile);
        }
    }

    /// Waits up to `wait` for one job to finish and handles it.
    fn wait_one(&mut self, wait: Duration) {
        if let Ok(done) = self.done_rx.recv_timeout(wait) {
            self.handle(done);
        }
    }

    /// Delivers a snapshot when one is due; returns how long to wait for work before the
    /// next look at the clock and the cancel flag.
    fn tick(&mut self) -> Duration {
        let now = Instant::now();
        if let Some(due) = self.next_snapshot
            && now >= due
        {
            self.snapshot(false);
            // A fixed cadence: a late look at the clock does not push every later
            // snapshot back (what a frame waits for its snapshot is at most one interval
            // plus its processing).
            let interval = self.shared.cfg.snapshot_interval;
            self.next_snapshot = due
                .checked_add(interval)
                .filter(|&next| next > now)
                .or_else(|| now.checked_add(interval));
        }
        let until = self
            .next_snapshot
            .map_or(CANCEL_POLL, |t| t.saturating_duration_since(now));
        until.clamp(Duration::from_millis(1), CANCEL_POLL)
    }

    /// Merges all partitions and hands the global results to `on_snapshot` (unless nothing
    /// changed since the last one and this is not the final one).
    fn snapshot(&mut self, final_one: bool) {
        self.shared.merge_all();
        let meta = self.shared.cfg.meta();
        let mut g = lock(&self.shared.global);
        if final_one {
            for (u, r) in self.udfs.iter().zip(&mut g.results) {
                if let Err(detail) = u.postprocess(&meta, &mut r.buffers) {
                    self.failure.get_or_insert(ProcessingError::Udf {
                        udf: u.name().to_string(),
                        detail: format!("postprocess: {detail}"),
                    });
                }
            }
        }
        if final_one || self.delivered != Some(g.frames_processed) {
            let shown = Snapshot {
                frames_processed: g.frames_processed,
                results: self
                    .udfs
                    .iter()
                    .zip(&g.results)
                    .map(|(u, r)| UdfResults {
                        udf: r.udf.clone(),
                        buffers: u.get_results(&meta, &r.buffers),
                        params: r.params.clone(),
                    })
                    .collect(),
            };
            drop(g);
            (self.on_snapshot)(&shown);
            self.delivered = Some(shown.frames_processed);
            if final_one {
                self.final_results = Some(shown.results);
            }
        }
    }

    /// Waits for every in-flight job (bounded: at most `capacity` tiles of work).
    fn drain(&mut self) {
        let mut waited = Duration::ZERO;
        while self.in_flight > 0 {
            match self.done_rx.recv_timeout(DRAIN_WARN) {
                Ok(done) => self.handle(done),
                Err(_) => {
                    waited += DRAIN_WARN;
                    tracing::warn!(
                        in_flight = self.in_flight,
                        waited_s = waited.as_secs_f64(),
                        "processing: still waiting for UDF work to finish"
                    );
                }
            }
        }
    }

    /// Ends the run: resumes a worker's panic, returns the first error, or the counters.
    fn finish(mut self) -> Result<Tally, ProcessingError> {
        if let Some(p) = self.panic.take() {
            resume_unwind(p);
        }
        if let Some(e) = self.failure.take() {
            return Err(e);
        }
        self.snapshot(true);
        if let Some(e) = self.failure.take() {
            return Err(e);
        }
        self.damaged.sort_unstable();
        Ok(Tally {
            damaged: std::mem::take(&mut self.damaged),
            out_of_range: self.out_of_range,
            outside_roi: self.outside_roi,
            results: self.final_results.take().unwrap_or_default(),
        })
    }
}

fn summarize(
    shared: Shared,
    tally: Result<Tally, ProcessingError>,
    outcome: Outcome,
) -> Result<RunSummary, ProcessingError> {
    let tally = tally?;
    let global = shared
        .global
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    Ok(RunSummary {
        frames_processed: global.frames_processed,
        damaged: tally.damaged,
        out_of_range: tally.out_of_range,
        outside_roi: tally.outside_roi,
        outcome,
        unprocessed_from: None,
        results: tally.results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_band_reader_goes_first_and_the_engine_reads_for_scattered_ones() {
        use BandRead::*;
        // Not banded (None) stays out; ties keep the caller's order.
        let (order, touch) = band_plan(&[Some(Scattered), None, Some(Part), Some(Lockstep)]);
        assert_eq!(order, vec![3, 0, 2]);
        assert!(!touch, "the sum pulls the bands in");
        let (order, touch) = band_plan(&[Some(Part), Some(Scattered), Some(Scattered)]);
        assert_eq!(order, vec![1, 2, 0]);
        assert!(touch, "only scattered readers: the engine reads first");
        let (order, touch) = band_plan(&[Some(Part), Some(Part)]);
        assert_eq!(order, vec![0, 1]);
        assert!(
            !touch,
            "parts read little: reading the whole band would cost more"
        );
        let (order, touch) = band_plan(&[Some(Stream), Some(Lockstep), Some(Stream)]);
        assert_eq!(order, vec![1, 0, 2]);
        assert!(!touch);
        assert_eq!(band_plan(&[None, None]), (vec![], false));
    }
}
