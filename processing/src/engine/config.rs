//! The settings of one run ([`RunConfig`]) and the size of an offline partition
//! ([`partition_frames`]).

use crate::roi::Roi;
use crate::udf::UdfMeta;
use std::sync::Arc;
use std::time::Duration;
use stemflow_core::{DType, NavShape, SigShape};

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
    /// dropped (counted in [`super::RunSummary::out_of_range`]).
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
