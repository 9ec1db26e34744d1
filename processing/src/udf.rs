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
//! Merged results are held as `f64` ([`ResultBuffer`]); a buffer declares the numeric type
//! its values mean ([`BufferDecl::dtype`], default `f64`) and [`typed_values`] converts them
//! (every integer below 2^53 and every `f32` is exact in `f64`). Nav positions not yet
//! processed, or outside the region of interest, are NaN — for integer buffers the
//! documented fill value [`ResultDType::int_fill`] after conversion.
//!
//! # The life of a UDF in a run
//! 1. [`Udf::check`] and [`Udf::preprocess`] (once, before any frame; preprocess may set the
//!    initial merged buffers, e.g. `+∞` for a minimum, or prepare an output file);
//! 2. [`Udf::new_partition`] per worker; the task is fed frames with
//!    [`PartitionTask::process_frame`], [`PartitionTask::process_tile`] or
//!    [`PartitionTask::process_partition`], as [`Udf::granularity`] says;
//! 3. [`PartitionTask::merge_into`] (sig and single buffers; nav values are assigned by the
//!    engine) before every snapshot and at the end;
//! 4. [`Udf::get_results`] on the merged buffers for every snapshot and the final results
//!    (derived buffers, e.g. divergence from a shift field);
//! 5. [`Udf::postprocess`] once on the final merged buffers, before the last `get_results`.

pub use crate::fused::{Fusable, LinearTerms, Weight};
use crate::result::{BufferKind, ResultBuffer, UdfResults};
use std::ops::Range;
use stemflow_core::frame::{PixelsRef, Tile};
pub use stemflow_core::result::{ResultDType, TypedValues, typed_values};
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
    /// The numeric type the values stand for (default [`ResultDType::F64`]); the merged
    /// values are `f64` either way, see [`typed_values`].
    pub dtype: ResultDType,
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
    /// The same buffer with values of type `dtype`.
    pub fn with_dtype(mut self, dtype: ResultDType) -> Self {
        self.dtype = dtype;
        self
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
            dtype: ResultDType::F64,
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
            dtype: self.dtype,
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
        params: params_text(udf),
    }
}

/// [`Udf::params`] as JSON text; empty for `null` (no parameters).
pub fn params_text(udf: &dyn Udf) -> String {
    match udf.params() {
        serde_json::Value::Null => String::new(),
        v => v.to_string(),
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
    /// The UDF's parameters, its typed params struct serialised to JSON (e.g.
    /// `{"cx": 128.0, "cy": 128.0, "mask_radius": 40.0, …}`), with every default resolved:
    /// recorded beside its results (`run.json` → `udfs`) so a result can be traced to the
    /// settings that produced it. Default: `null`, for a UDF without parameters.
    fn params(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Which method of the task the engine feeds for a data set of `meta` (default
    /// [`Granularity::Tile`]).
    fn granularity(&self, meta: &UdfMeta) -> Granularity {
        let _ = meta;
        Granularity::Tile
    }

    /// Runs once before any frame is processed, on the coordinating thread, with the
    /// initial merged buffers (nav NaN, sig and single 0) in declaration order; may change
    /// them (e.g. `+∞` where a minimum is merged) or prepare resources (an output file).
    ///
    /// # Errors
    /// A sentence saying what could not be prepared; the run does not start.
    fn preprocess(&self, meta: &UdfMeta, global: &mut [ResultBuffer]) -> Result<(), String> {
        let _ = (meta, global);
        Ok(())
    }

    /// Runs once on the final merged buffers (after the last merge, before the final
    /// [`Udf::get_results`]), e.g. to normalise or to close a file.
    ///
    /// # Errors
    /// A sentence saying what failed; the run ends with [`crate::ProcessingError::Udf`].
    fn postprocess(&self, meta: &UdfMeta, global: &mut [ResultBuffer]) -> Result<(), String> {
        let _ = (meta, global);
        Ok(())
    }

    /// The buffers a snapshot and the final results show, from the merged buffers
    /// `merged` (declaration order). The default shows the merged buffers as they are;
    /// override to add derived buffers (e.g. divergence and curl of a shift field) or to
    /// hide internal ones. Called for every snapshot (≤ 10 per second by default), so it
    /// should cost about as much as copying the buffers.
    fn get_results(&self, meta: &UdfMeta, merged: &[ResultBuffer]) -> Vec<ResultBuffer> {
        let _ = meta;
        merged.to_vec()
    }
}

/// Most frames the engine passes through [`PartitionTask::process_band`] at once: a
/// band-capable task may count on at most this many additions per pixel between two calls
/// that start at row 0 (u16 pixels sum exactly into `u32` lanes for 65 537 frames).
pub const MAX_BAND_FRAMES: usize = 4096;

/// What a UDF's task is fed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Granularity {
    /// [`PartitionTask::process_tile`] on cache-sized runs of consecutive frames (~512 KiB;
    /// every UDF of the run reads a run while it is in cache). The default
    /// `process_tile` calls `process_frame` per frame, so a UDF that implements only
    /// `process_frame` is fed frame by frame.
    #[default]
    Tile,
    /// [`PartitionTask::process_partition`] once per unit of work a worker takes: a whole
    /// live stack or file tile (a partition of consecutive frames, sized by
    /// [`crate::engine::partition_frames`] offline), minus frames outside the ROI or damaged.
    Partition,
}

/// How a band-capable task reads a band of frames ([`PartitionTask::band_read`]), ordered
/// from the worst to the best at pulling a band in from memory: the engine lets the best
/// reader of a run take each band first, and when the best is [`BandRead::Scattered`] it
/// reads the band once itself, in address order, before the tasks. Measured on 256 × 256
/// u16, 2 cores (decision 0006): with the virtual detectors pulling the bands, the full
/// benchmark set ran at 16 GB/s instead of 31; four masks alone at 20 GB/s, 26–34 with the
/// engine's read first; CoM in a small disk alone at 55–58 GB/s reading only its rows,
/// about a third less with the whole band read first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum BandRead {
    /// Reads a small part of each band's cache lines (under half): left to read them
    /// itself, since reading the whole band first would cost more than it saves.
    #[default]
    Part,
    /// Reads most of each band's cache lines, but skips some or computes much per pixel
    /// (the virtual detectors' windows), so the hardware prefetcher does not keep up.
    Scattered,
    /// Reads every cache line in address order with little work per pixel (sum over
    /// signal).
    Stream,
    /// As [`BandRead::Stream`], with several frames' streams in lockstep (the sum).
    Lockstep,
}

/// Whether a task that reads the fraction `lines` (0–1) of each band's cache lines is
/// [`BandRead::Scattered`] (at least half) or [`BandRead::Part`].
pub fn band_read_of_lines(lines: f64) -> BandRead {
    if lines >= 0.5 {
        BandRead::Scattered
    } else {
        BandRead::Part
    }
}

/// The per-worker state of a UDF: processes the frames a worker is given and hands what it
/// accumulated to the global results when the engine merges (at each snapshot, at the end,
/// and when a worker has staged many nav values). Between two merges a task sees any number
/// of tiles, in any order of `first_frame`.
pub trait PartitionTask: Send {
    /// Processes frame `frame` (acquisition index) with `pixels` (`sig_shape.len()`
    /// elements of the run's dtype). `nav` holds this frame's nav values, one slot per value
    /// of each nav buffer in declaration order ([`nav_width`] slots), preset to NaN.
    /// The default does nothing: a task implements the method that fits its work
    /// (frame, tile or partition).
    fn process_frame(&mut self, frame: u64, pixels: PixelsRef<'_>, nav: &mut [f64]) {
        let _ = (frame, pixels, nav);
    }

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

    /// Processes a whole partition (consecutive frames a worker took as one unit of work)
    /// when the UDF's [`Udf::granularity`] is [`Granularity::Partition`]; `nav` as in
    /// [`PartitionTask::process_tile`]. The default calls `process_tile` on all of it.
    fn process_partition(&mut self, partition: &TileView<'_>, nav: &mut [f64]) {
        self.process_tile(partition, nav);
    }

    /// True when the task can take frames in row bands ([`PartitionTask::process_band`]).
    /// The engine then feeds every band-capable task of a run one band (the same rows of
    /// every frame of a cache-sized run, ~128 KiB) after another: all those tasks read a
    /// band while it is in the core's nearest caches, and the run's working set (pixels and
    /// accumulators) stays well inside L2 — one pass over memory for all of them, like
    /// LiberTEM's tiles over the signal dimension. Default: false, and the task gets whole
    /// frames through [`PartitionTask::process_tile`].
    fn bands(&self) -> bool {
        false
    }

    /// How [`PartitionTask::process_band`] reads a band, for the engine's choice of which
    /// band-capable task reads each band first and so pulls it in from memory (the others
    /// then find it in cache; results do not depend on the order). Default:
    /// [`BandRead::Part`].
    fn band_read(&self) -> BandRead {
        BandRead::Part
    }

    /// Rows `rows` of every frame of `tile` (`tile.pixels` holds the whole frames): adds this
    /// band's contribution to `nav` (`tile.n_frames * nav_width` slots as in
    /// [`PartitionTask::process_tile`], set to 0.0 by the engine before the first band).
    /// The engine calls it for consecutive, disjoint bands starting at row 0 and covering
    /// every row, then [`PartitionTask::finish_bands`]; a run has at most
    /// [`MAX_BAND_FRAMES`] frames. Called only when [`PartitionTask::bands`] is true.
    fn process_band(&mut self, tile: &TileView<'_>, rows: Range<usize>, nav: &mut [f64]) {
        let _ = (tile, rows, nav);
    }

    /// After the last band of `tile`: turns what the bands accumulated into the frames'
    /// final nav values. The default keeps `nav` as the bands left it (sums).
    fn finish_bands(&mut self, tile: &TileView<'_>, nav: &mut [f64]) {
        let _ = (tile, nav);
    }

    /// What of this task's band work the engine may do for it in its fused pass
    /// ([`crate::fused`]): one walk over the rows of each chunk for the sum and every
    /// exact weighted pixel sum of the run, with the rows ahead prefetched. The engine
    /// fuses only tasks fed in bands ([`PartitionTask::bands`]), only for u16 frames whose
    /// rows are a multiple of 32 pixels, in builds with AVX-512 BW and VNNI, and only
    /// when at least one task is [`Fusable::Linear`]; otherwise the task gets its bands.
    /// A fused task gets no `process_band`/`finish_bands` for that chunk: the engine calls
    /// [`PartitionTask::fused_sum`] ([`Fusable::SigSum`]) or
    /// [`PartitionTask::take_linear`] ([`Fusable::Linear`]) instead. Default: `None`.
    fn fusable(&self) -> Option<Fusable> {
        None
    }

    /// For a [`Fusable::SigSum`] task: makes room for `frames` more frames (at most
    /// [`MAX_BAND_FRAMES`]) in the task's per-pixel accumulator, counts them, and returns
    /// it: `sig_shape.len()` `u32` lanes the engine adds the frames' u16 pixels into.
    /// `None` (the default) makes the engine feed the chunk to the task in bands instead.
    fn fused_sum(&mut self, frames: usize) -> Option<&mut [u32]> {
        let _ = frames;
        None
    }

    /// For a [`Fusable::Linear`] task: the fused pass's sums for the frames of `tile`,
    /// `sums[f * k + i]` for frame `f` and the task's `i`-th sum of `k` (its terms'
    /// weights in order) — exact, in counts (× pixels for column and row weights).
    /// Sets the frames' nav values (`nav` as in [`PartitionTask::process_band`], zeroed).
    fn take_linear(&mut self, tile: &TileView<'_>, sums: &[u64], nav: &mut [f64]) {
        let _ = (tile, sums, nav);
    }

    /// For sparse frames (CSR rows, decisions 0010 and 0022): processes rows `frames` of
    /// `rows` (each row a frame: flat signal indices `< sig_shape.len()`, pixels, and
    /// counts; indices sorted and unique within a row as CSR producers send them), setting
    /// their nav values in `nav` (`frames.len() × nav_width` slots, zeroed) and adding to
    /// the task's sig and single accumulators exactly as the same frames, dense, would;
    /// returns true. Called with empty rows and no frames to ask whether the task can.
    /// The default returns false: the engine then feeds the task dense frames (unless it
    /// is [`Fusable::Linear`], whose sums the engine computes from the events itself and
    /// hands over in [`PartitionTask::take_linear`]).
    fn process_csr(
        &mut self,
        rows: &stemflow_core::csr::CsrRows,
        frames: Range<usize>,
        nav: &mut [f64],
    ) -> bool {
        let _ = (rows, frames, nav);
        false
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
