//! The UDF interface: what a user-defined function declares, how it processes frames, and
//! how partition results merge into the global results.
//!
//! A [`Udf`] is a factory, shared by every worker thread: it names itself, declares its
//! result buffers for a data set ([`Udf::buffers`]) and makes one [`PartitionTask`] per
//! worker ([`Udf::new_partition`]). A task keeps its own typed state — any accumulator type
//! it likes, allocated once and reused for the whole run — and sees consecutive frames as
//! [`TileView`]s.
//!
//! Buffer kinds and who merges them (LiberTEM's model):
//! * **nav** — one value (or an `extra_shape` array) per scan position. A task writes the
//!   values of each frame into the `nav` slice it is handed; the engine assigns them to the
//!   frame's position in the global buffer. Values are computed per frame, so they do not
//!   depend on how frames were split into tiles or partitions.
//! * **sig** and **single** — the task accumulates them privately and adds them into the
//!   global buffers in [`PartitionTask::merge_into`]. Accumulate exactly (integers) when the
//!   result must not depend on the order in which partitions are merged.
//!
//! Merged results are `f64` ([`ResultBuffer`]); nav positions not yet processed are NaN.

use crate::result::{BufferKind, ResultBuffer, UdfResults};
use std::ops::Range;
use stemflow_core::frame::{PixelsRef, Tile};
use stemflow_core::{DType, NavShape, SigShape};

/// What a UDF knows about the data set it runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdfMeta {
    /// Scan grid; frame `i` sits at position `(i / cols, i % cols)`.
    pub nav_shape: NavShape,
    /// Detector frame shape in pixels.
    pub sig_shape: SigShape,
    /// Decoded pixel type; every tile the UDF sees has it.
    pub dtype: DType,
}

/// One result buffer a UDF declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferDecl {
    /// Name, unique within the UDF (e.g. `intensity`, `x`).
    pub name: String,
    /// Kind: nav, sig or single.
    pub kind: BufferKind,
    /// Shape per nav position (nav), per detector pixel (sig), or the whole shape
    /// (single); empty for one scalar.
    pub extra_shape: Vec<usize>,
    /// Physical unit of the values (`counts`, `pixels`, …).
    pub unit: String,
}

impl BufferDecl {
    /// A nav buffer: one scalar per scan position.
    pub fn nav(name: &str, unit: &str) -> Self {
        Self::new(name, BufferKind::Nav, Vec::new(), unit)
    }
    /// A sig buffer: one scalar per detector pixel.
    pub fn sig(name: &str, unit: &str) -> Self {
        Self::new(name, BufferKind::Sig, Vec::new(), unit)
    }
    /// A single buffer of `shape` (empty: one scalar).
    pub fn single(name: &str, shape: Vec<usize>, unit: &str) -> Self {
        Self::new(name, BufferKind::Single, shape, unit)
    }
    /// The same buffer with `extra_shape` per nav position or detector pixel.
    pub fn with_extra_shape(mut self, extra_shape: Vec<usize>) -> Self {
        self.extra_shape = extra_shape;
        self
    }
    fn new(name: &str, kind: BufferKind, extra_shape: Vec<usize>, unit: &str) -> Self {
        Self {
            name: name.to_string(),
            kind,
            extra_shape,
            unit: unit.to_string(),
        }
    }
    /// Values per nav position / detector pixel (product of `extra_shape`, 1 when empty);
    /// for single buffers, the whole buffer's length.
    pub fn extra_len(&self) -> usize {
        self.extra_shape.iter().product()
    }
    /// The full shape of the merged buffer: `[nav_rows, nav_cols, extra…]`,
    /// `[sig_rows, sig_cols, extra…]`, or `extra_shape` for single buffers.
    pub fn shape(&self, meta: &UdfMeta) -> Vec<usize> {
        let mut shape = match self.kind {
            BufferKind::Nav => vec![meta.nav_shape.rows, meta.nav_shape.cols],
            BufferKind::Sig => vec![meta.sig_shape.rows, meta.sig_shape.cols],
            BufferKind::Single => Vec::new(),
        };
        shape.extend_from_slice(&self.extra_shape);
        shape
    }
    /// The initial merged buffer: NaN for nav (nothing processed yet), 0 otherwise.
    pub fn new_buffer(&self, meta: &UdfMeta) -> ResultBuffer {
        let shape = self.shape(meta);
        let len = shape.iter().product();
        let fill = if self.kind == BufferKind::Nav {
            f64::NAN
        } else {
            0.0
        };
        ResultBuffer {
            name: self.name.clone(),
            kind: self.kind,
            shape,
            data: vec![fill; len],
            unit: self.unit.clone(),
        }
    }
}

/// Values per frame that a task writes for `decls`: the sum of the nav buffers'
/// [`BufferDecl::extra_len`], in declaration order.
pub fn nav_width(decls: &[BufferDecl]) -> usize {
    decls
        .iter()
        .filter(|d| d.kind == BufferKind::Nav)
        .map(BufferDecl::extra_len)
        .sum()
}

/// The initial merged results of `udf` on `meta` (nav NaN, sig and single 0).
pub fn new_results(udf: &dyn Udf, meta: &UdfMeta) -> UdfResults {
    UdfResults {
        udf: udf.name().to_string(),
        buffers: udf
            .buffers(meta)
            .iter()
            .map(|d| d.new_buffer(meta))
            .collect(),
    }
}

/// Consecutive decoded frames, borrowed: a whole [`Tile`] or part of one.
#[derive(Clone, Copy, Debug)]
pub struct TileView<'a> {
    /// Acquisition index (0-based) of the first frame.
    pub first_frame: u64,
    /// Number of frames.
    pub n_frames: usize,
    /// Shape of each frame in pixels.
    pub sig_shape: SigShape,
    /// `n_frames * sig_shape.len()` pixels, frame-major, row-major within a frame.
    pub pixels: PixelsRef<'a>,
}

impl<'a> TileView<'a> {
    /// A view of all frames of `tile`.
    pub fn of(tile: &'a Tile) -> Self {
        Self {
            first_frame: tile.first_frame,
            n_frames: tile.n_frames,
            sig_shape: tile.sig_shape,
            pixels: tile.data.view(),
        }
    }
    /// A view of one frame's pixels, as frame `frame` of an acquisition.
    pub fn single(frame: u64, sig_shape: SigShape, pixels: PixelsRef<'a>) -> Self {
        Self {
            first_frame: frame,
            n_frames: 1,
            sig_shape,
            pixels,
        }
    }
    /// Pixels of frame `i` of the view (`0 <= i < n_frames`).
    pub fn frame(&self, i: usize) -> PixelsRef<'a> {
        let n = self.sig_shape.len();
        self.pixels.slice(i * n..(i + 1) * n)
    }
    /// The frames `range` (indices within the view) as a view.
    pub fn frames(&self, range: Range<usize>) -> TileView<'a> {
        let n = self.sig_shape.len();
        TileView {
            first_frame: self.first_frame + range.start as u64,
            n_frames: range.len(),
            sig_shape: self.sig_shape,
            pixels: self.pixels.slice(range.start * n..range.end * n),
        }
    }
}

/// A user-defined function: declares its result buffers and makes the per-worker tasks that
/// do the work. Shared by all worker threads (hence `Sync`); it holds parameters only.
pub trait Udf: Send + Sync {
    /// Name, unique within a run (e.g. `sum`, `virtual`, `com`); labels its [`UdfResults`].
    fn name(&self) -> &str;
    /// The result buffers for a data set of `meta`, in a fixed order: the order of
    /// [`UdfResults::buffers`] and of the global buffers handed to
    /// [`PartitionTask::merge_into`].
    fn buffers(&self, meta: &UdfMeta) -> Vec<BufferDecl>;
    /// Checks the parameters against `meta` before a run starts.
    ///
    /// # Errors
    /// A sentence saying which parameter is wrong, what is allowed and what was given.
    fn check(&self, meta: &UdfMeta) -> Result<(), String> {
        let _ = meta;
        Ok(())
    }
    /// A fresh task for one worker thread (called once per worker per run; allocate the
    /// task's buffers here, not while processing).
    fn new_partition(&self, meta: &UdfMeta) -> Box<dyn PartitionTask>;
}

/// The per-worker state of a UDF: processes the frames a worker is given and hands what it
/// accumulated to the global results when the engine merges (at each snapshot, at the end,
/// and when a worker has staged many nav values). Between two merges a task sees any number
/// of tiles, in any order of `first_frame`.
pub trait PartitionTask: Send {
    /// Processes frame `frame` (acquisition index) with `pixels` (`sig_shape.len()`
    /// elements of the run's dtype). `nav` holds this frame's nav values, one slot per value
    /// of each nav buffer in declaration order ([`nav_width`] slots), preset to NaN.
    fn process_frame(&mut self, frame: u64, pixels: PixelsRef<'_>, nav: &mut [f64]);

    /// Processes the frames of `tile`. `nav` holds `tile.n_frames * nav_width` slots, frame
    /// after frame, preset to NaN. The default calls [`PartitionTask::process_frame`] per
    /// frame; built-ins override it to pick the pixel type once per tile.
    fn process_tile(&mut self, tile: &TileView<'_>, nav: &mut [f64]) {
        let width = nav.len().checked_div(tile.n_frames).unwrap_or(0);
        for i in 0..tile.n_frames {
            let slots = &mut nav[i * width..(i + 1) * width];
            self.process_frame(tile.first_frame + i as u64, tile.frame(i), slots);
        }
    }

    /// Adds what the task accumulated for its sig and single buffers since the last merge
    /// into `global` (all of the UDF's merged buffers, in declaration order) and resets the
    /// accumulators. Nav buffers are merged by the engine (each frame's values assigned to
    /// its position); the default does nothing, right for UDFs with nav buffers only.
    fn merge_into(&mut self, global: &mut [ResultBuffer]) {
        let _ = global;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_shapes_and_initial_values() {
        let meta = UdfMeta {
            nav_shape: NavShape::new(3, 4),
            sig_shape: SigShape::new(5, 6),
            dtype: DType::U16,
        };
        let nav = BufferDecl::nav("x", "pixels").with_extra_shape(vec![2]);
        assert_eq!(nav.shape(&meta), vec![3, 4, 2]);
        let b = nav.new_buffer(&meta);
        assert_eq!(b.data.len(), 24);
        assert!(b.data.iter().all(|v| v.is_nan()));
        let sig = BufferDecl::sig("intensity", "counts").new_buffer(&meta);
        assert_eq!((sig.shape.clone(), sig.data.len()), (vec![5, 6], 30));
        assert!(sig.data.iter().all(|&v| v == 0.0));
        let single = BufferDecl::single("hist", vec![8], "frames");
        assert_eq!(single.shape(&meta), vec![8]);
        let decls = [
            nav,
            BufferDecl::sig("s", "counts"),
            BufferDecl::nav("m", "counts"),
        ];
        assert_eq!(nav_width(&decls), 3);
    }

    #[test]
    fn views_slice_frames() {
        let tile = Tile {
            first_frame: 10,
            n_frames: 3,
            sig_shape: SigShape::new(1, 2),
            data: stemflow_core::frame::TileData::U8(vec![1, 2, 3, 4, 5, 6]),
        };
        let v = TileView::of(&tile);
        let sub = v.frames(1..3);
        assert_eq!(sub.first_frame, 11);
        assert_eq!(sub.n_frames, 2);
        assert_eq!(sub.frame(1).get_f64(0), 5.0);
    }
}
