//! Running UDFs on a live stream of raw frame stacks ([`run_live`]), on a file
//! ([`run_dataset`]) or on decoded tiles from any reader ([`run_tiles`]), in parallel on a
//! rayon pool.
//!
//! # How a run works
//! The calling thread coordinates: it takes work (a [`Stack`] from the receiver, dense or sparse, or a
//! [`Tile`] from the reader), hands it to a worker, passes finished tiles to the
//! [`TileSink`], and delivers [`Snapshot`]s. At most `2 × threads` tiles are in flight; when
//! all are busy the coordinator stops taking stacks, the stacks channel fills, and the
//! receiver blocks on it — that is the backpressure.
//!
//! Each worker thread owns one [`PartitionTask`](crate::udf::PartitionTask) per UDF (made
//! once, reused all run) and a staging area for nav values. A live worker decodes the stack into a tile from the
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
//! [`partition_frames`] frames ([`run_dataset`]); UDFs with
//! [`crate::udf::Granularity::Partition`] see each one whole (split where frames are
//! skipped), the others see it in cache-sized chunks.
//!
//! # Lost, damaged and unexpected frames
//! A frame that fails to decode is counted as damaged ([`RunSummary::damaged`]), its pixels
//! are zeroed, the UDFs skip it (its nav positions stay NaN) and the run goes on. Frames
//! whose index lies beyond the scan are dropped and counted
//! ([`RunSummary::out_of_range`]). Frames that never arrive are the receiver's to count.
//!
//! # Layout
//! One coordinator loop serves every source; the three entry points only choose the source.
//! - `config`: [`RunConfig`] and [`partition_frames`].
//! - `summary`: [`Snapshot`], [`Outcome`], [`RunSummary`].
//! - `error`: [`ProcessingError`].
//! - `source`: where work comes from — live stacks, a [`DataSet`] read into reused tiles,
//!   tiles from an iterator.
//! - `coordinator`: the calling thread's loop — taking work, spawning jobs, the sink, the
//!   free list, snapshots, cancel, the end of the run.
//! - `job`: one partition's work on a worker (decoding a stack, running the UDFs on a tile)
//!   and its report.
//! - `shared`: what workers and coordinator share — the per-worker partitions, the global
//!   results — and the preparation of a run.
//! - `worker`: a worker's partition — its tasks, staged nav values, chunks and row bands.
//! - `fused_tasks`: the tasks the fused pass ([`crate::fused`]) takes.

mod config;
mod coordinator;
mod error;
mod fused_tasks;
mod job;
mod shared;
mod source;
mod sparse;
mod summary;
mod worker;

pub use config::{RunConfig, partition_frames};
pub use error::ProcessingError;
pub use summary::{Outcome, RunSummary, Snapshot};

use crate::sink::TileSink;
use crate::udf::Udf;
use coordinator::drive;
use crossbeam_channel::Receiver;
use job::Slot;
use source::{Reader, Stacks, Tiles};
use std::sync::atomic::AtomicBool;
use stemflow_core::csr::Stack;
use stemflow_core::dataset::DataSet;
use stemflow_core::frame::Tile;

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
    stacks: Receiver<Stack>,
    udfs: &[Box<dyn Udf>],
    cfg: &RunConfig,
    sink: Option<&mut dyn TileSink>,
    on_snapshot: &mut dyn FnMut(&Snapshot),
    cancel: &AtomicBool,
) -> Result<RunSummary, ProcessingError> {
    drive(Stacks::new(stacks), udfs, cfg, sink, on_snapshot, cancel)
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
    drive(Tiles(slots), udfs, cfg, sink, on_snapshot, cancel)
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
    let slots = tiles.map(|t| Ok(Slot::Borrowed(t)));
    drive(Tiles(slots), udfs, cfg, sink, on_snapshot, cancel)
}

/// Runs `udfs` over every frame of `data` (frames beyond `cfg.nav_shape` are counted in
/// [`RunSummary::out_of_range`]), reading partitions of [`RunConfig::partition_frames`]
/// frames into tiles allocated once and reused, with the sink, snapshots and cancellation
/// of [`run_tiles`].
///
/// Also reachable as `stemflow_processing::io::run_dataset`, beside the readers.
///
/// # Errors
/// [`ProcessingError::Source`] wrapping the [`IoError`](stemflow_core::dataset::IoError)
/// of a failed read; otherwise as [`run_tiles`].
pub fn run_dataset(
    data: &mut dyn DataSet,
    udfs: &[Box<dyn Udf>],
    cfg: &RunConfig,
    sink: Option<&mut dyn TileSink>,
    on_snapshot: &mut dyn FnMut(&Snapshot),
    cancel: &AtomicBool,
) -> Result<RunSummary, ProcessingError> {
    let reader = Reader::new(data, cfg.partition_frames());
    drive(reader, udfs, cfg, sink, on_snapshot, cancel)
}

/// As [`run_dataset`] over frames `frames` of `data` only (clipped to its frames): one
/// part of a data set split across processes or machines (e.g. Dask workers), each
/// reading its own byte range of the file. Frames keep their scan positions: nav values
/// of the other frames stay NaN, sig and single buffers hold this part's contribution.
///
/// # Errors
/// As [`run_dataset`].
pub fn run_dataset_range(
    data: &mut dyn DataSet,
    frames: std::ops::Range<u64>,
    udfs: &[Box<dyn Udf>],
    cfg: &RunConfig,
    sink: Option<&mut dyn TileSink>,
    on_snapshot: &mut dyn FnMut(&Snapshot),
    cancel: &AtomicBool,
) -> Result<RunSummary, ProcessingError> {
    let reader = Reader::range(data, cfg.partition_frames(), frames);
    drive(reader, udfs, cfg, sink, on_snapshot, cancel)
}

#[cfg(test)]
mod tests;
