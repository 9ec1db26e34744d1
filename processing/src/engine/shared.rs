//! What the workers and the coordinator share for one run ([`Shared`]): the per-worker
//! partitions, the global results, and how a tile's frames reach a worker's tasks; and
//! [`prepare`], which checks the UDFs and builds all of it with the thread pool.

use super::config::RunConfig;
use super::error::ProcessingError;
use super::summary::Snapshot;
use super::worker::{UdfLayout, Worker};
use crate::udf::{Granularity, PartitionTask, TileView, Udf, new_results};
use std::sync::{Mutex, MutexGuard};
use stemflow_core::csr::CsrRows;

/// Pixel bytes all UDFs process before moving on: small enough to stay in a core's L2
/// cache (≥ 1 MiB on our machines) beside the UDFs' accumulators, so a frame is read from
/// memory once however many UDFs run; large enough to hold four 256 × 256 u16 frames, which
/// the sum reads in lockstep (measured: 512 KiB runs the standard set about twice as fast
/// as 256 KiB).
pub(super) const CHUNK_BYTES: usize = 512 * 1024;
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
/// What the workers and the coordinator share for one run.
pub(super) struct Shared {
    /// The run's settings.
    pub(super) cfg: RunConfig,
    /// Per UDF: where its nav values sit in a staged frame, and what it is fed.
    pub(super) layouts: Vec<UdfLayout>,
    /// One per pool thread, plus one for work run outside the pool.
    pub(super) workers: Vec<Mutex<Worker>>,
    /// The merged results (nav values of merged frames, merged sig and single buffers).
    pub(super) global: Mutex<Snapshot>,
    /// Frames of a chunk all UDFs read while it is in cache.
    pub(super) chunk_frames: usize,
    /// True when a UDF of the run takes whole partitions ([`Granularity::Partition`]): a
    /// live stack then reaches the UDFs whole instead of chunk by chunk.
    pub(super) whole_stacks: bool,
    /// The HDF5 filter whose chunks the sink stores as they came
    /// ([`TileSink::takes_raw`](stemflow_core::sink::TileSink::takes_raw)): a live stack
    /// whose decoder reports it is kept until its tile reaches the sink.
    pub(super) raw_filter: Option<u32>,
    /// The sink's frame encoder ([`TileSink::frame_encoder`](stemflow_core::sink::TileSink::frame_encoder)):
    /// workers encode each tile's frames for it.
    pub(super) encoder: Option<std::sync::Arc<dyn stemflow_core::sink::FrameEncoder>>,
}

/// A lock that survives a panic elsewhere: the run ends with that panic anyway.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Runs every UDF on `view` except the frames at `damaged` (indices within the view,
    /// ascending) and those outside the ROI, on the calling worker's partition; returns the
    /// number of frames outside the ROI (damaged ones not counted).
    pub(super) fn process(&self, view: &TileView<'_>, damaged: &[usize]) -> u64 {
        let mut w = self.worker();
        let outside = if self.cfg.roi.is_none() && damaged.is_empty() {
            w.process(view, &self.layouts, self.chunk_frames);
            0
        } else {
            self.runs(view.first_frame, view.n_frames, damaged, |r| {
                w.process(&view.frames(r), &self.layouts, self.chunk_frames);
            })
        };
        self.self_merge(w);
        outside
    }

    /// As [`Shared::process`] for sparse rows: every UDF on `rows` except the rows at
    /// `damaged` (indices within `rows`, ascending) and those outside the ROI.
    pub(super) fn process_csr(&self, rows: &CsrRows, damaged: &[usize]) -> u64 {
        let mut w = self.worker();
        let outside = self.runs(rows.first_frame, rows.n_frames(), damaged, |r| {
            w.process_csr(rows, r, &self.layouts, self.chunk_frames);
        });
        self.self_merge(w);
        outside
    }

    /// The calling worker's partition, locked.
    fn worker(&self) -> MutexGuard<'_, Worker> {
        let spare = self.workers.len() - 1;
        let idx = rayon::current_thread_index()
            .filter(|&i| i < spare)
            .unwrap_or(spare);
        lock(&self.workers[idx])
    }

    /// Merges the worker's partition once it has staged enough frames.
    fn self_merge(&self, mut w: MutexGuard<'_, Worker>) {
        if w.frames >= SELF_MERGE_FRAMES {
            w.merge(&mut lock(&self.global), &self.layouts);
        }
    }

    /// Calls `take` for each run of consecutive frames among the `n` frames from `first`
    /// that are neither `damaged` (indices within them, ascending) nor outside the ROI;
    /// returns the number outside the ROI (damaged ones not counted).
    fn runs(
        &self,
        first: u64,
        n: usize,
        damaged: &[usize],
        mut take: impl FnMut(std::ops::Range<usize>),
    ) -> u64 {
        let roi = self.cfg.roi.as_deref();
        let mut outside = 0;
        let mut d = damaged.iter().peekable();
        let mut run_start = None;
        for i in 0..=n {
            let keep = i < n && {
                let is_damaged = d.next_if_eq(&&i).is_some();
                let inside = roi.is_none_or(|r| r.contains(first + i as u64));
                if !inside && !is_damaged {
                    outside += 1;
                }
                inside && !is_damaged
            };
            match (keep, run_start) {
                (true, None) => run_start = Some(i),
                (false, Some(s)) => {
                    take(s..i);
                    run_start = None;
                }
                _ => {}
            }
        }
        outside
    }

    /// Merges every worker's partition into the global results (worker lock, then global
    /// lock: the same order as a worker's own merge).
    pub(super) fn merge_all(&self) {
        for w in &self.workers {
            let mut w = lock(w);
            if w.frames > 0 {
                w.merge(&mut lock(&self.global), &self.layouts);
            }
        }
    }
}

/// Checks the UDFs and builds the pool and the per-worker partitions.
pub(super) fn prepare(
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
            Mutex::new(Worker::new(
                &meta,
                tasks,
                &layouts,
                cfg.fused,
                band_rows,
                tile_frames,
            ))
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
            raw_filter: None,
            encoder: None,
        },
    ))
}
