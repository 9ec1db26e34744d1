//! Frame picking and monitors: [`PickUdf`] (one frame by scan position),
//! [`SignalMonitorUdf`] (the latest frame), [`PartitionMonitorUdf`] (the sum of the latest
//! partition).

use crate::pixel::{AnyPixel, FloatPixel, Pixel};
use crate::result::ResultBuffer;
use crate::udf::{BufferDecl, PartitionTask, ResultDType, TileView, Udf, UdfMeta};
use crate::with_pixel_type;
use stemflow_core::SigShape;
use stemflow_core::frame::PixelsRef;

/// The dtype of the frame buffers of the pick and monitor UDFs for frames of `dtype`:
/// u64 for integer frames (every value exact in the merged `f64`), float64 for float
/// frames (every f32 and f64 value exact).
fn frame_dtype(dtype: stemflow_core::DType) -> ResultDType {
    if dtype.is_float() {
        ResultDType::F64
    } else {
        ResultDType::U64
    }
}

/// The parameters of [`PickUdf`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PickParams {
    /// Scan row of the frame, from 0 (`< nav_rows`).
    pub row: usize,
    /// Scan column of the frame, from 0 (`< nav_cols`); the frame index is
    /// `row · nav_cols + col`.
    pub col: usize,
}

/// Copies the frame at one scan position.
///
/// Parameters: [`PickParams`] — `row`, `col`, the scan position (frame index
/// `row · nav_cols + col`); [`Udf::params`] gives them as `{"row": …, "col": …}`.
///
/// Output: sig `intensity`, shape `[sig_rows, sig_cols]`, unit `counts` — the frame's
/// pixels (0 until it was processed), dtype u64 for integer frames, float64 for float
/// frames (f32 and f64 values copied exactly, NaN and negative values included); single
/// `picked`, shape `[]`, dtype u8: 1 once the frame was processed, 0 otherwise (e.g.
/// outside the ROI, lost, damaged).
#[derive(Clone, Debug)]
pub struct PickUdf {
    name: String,
    row: usize,
    col: usize,
}

impl PickUdf {
    /// Picks the frame at scan position (`row`, `col`); named `pick`.
    pub fn new(row: usize, col: usize) -> Self {
        Self {
            name: "pick".into(),
            row,
            col,
        }
    }
    /// Picks the frame at the scan position of `p`; named `pick`.
    pub fn from_params(p: PickParams) -> Self {
        Self::new(p.row, p.col)
    }
    /// The same UDF under another name (names are unique within a run).
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }
}

impl Udf for PickUdf {
    fn name(&self) -> &str {
        &self.name
    }
    fn params(&self) -> serde_json::Value {
        let p = PickParams {
            row: self.row,
            col: self.col,
        };
        serde_json::to_value(&p).unwrap_or(serde_json::Value::Null)
    }
    fn buffers(&self, meta: &UdfMeta) -> Vec<BufferDecl> {
        vec![
            BufferDecl::sig("intensity", "counts").with_dtype(frame_dtype(meta.dtype)),
            BufferDecl::single("picked", vec![], "frames").with_dtype(ResultDType::U8),
        ]
    }
    fn check(&self, meta: &UdfMeta) -> Result<(), String> {
        let nav = meta.nav_shape;
        if self.row >= nav.rows || self.col >= nav.cols {
            return Err(format!(
                "scan position (row {}, col {}) lies outside the {} scan",
                self.row, self.col, nav
            ));
        }
        Ok(())
    }
    fn new_partition(&self, meta: &UdfMeta) -> Box<dyn PartitionTask> {
        let target = (self.row * meta.nav_shape.cols + self.col) as u64;
        with_pixel_type!(meta.dtype, P => Box::new(FrameKeeper::<P>::fresh(meta, Rule::Exactly(target))),
            F => Box::new(FrameKeeper::<F>::fresh(meta, Rule::Exactly(target))))
    }
}

/// Which frame a [`FrameKeeper`] keeps.
#[derive(Clone, Copy, Debug)]
enum Rule {
    /// The frame with this index.
    Exactly(u64),
    /// The frame with the highest index.
    Latest,
}

impl Rule {
    /// The index within `tile` of the frame to keep, if `tile` has one this rule wants
    /// over the frame `kept` (acquisition index) kept so far.
    fn pick(self, kept: Option<u64>, tile: &TileView<'_>) -> Option<usize> {
        if tile.n_frames == 0 {
            return None;
        }
        let i = match self {
            Rule::Exactly(t) if t >= tile.first_frame => t - tile.first_frame,
            Rule::Exactly(_) => return None,
            Rule::Latest => {
                let last = tile.first_frame + tile.n_frames as u64 - 1;
                if kept.is_some_and(|k| k >= last) {
                    return None;
                }
                last - tile.first_frame
            }
        };
        usize::try_from(i).ok().filter(|&i| i < tile.n_frames)
    }

    /// At a merge of the kept frame `index`: whether it replaces the frame shown, updating
    /// `flag` (the `picked` flag, or the shown index for [`Rule::Latest`], NaN when none).
    fn claim(self, index: u64, flag: &mut ResultBuffer) -> bool {
        if let Rule::Latest = self {
            if flag.data[0] >= index as f64 {
                return false;
            }
            flag.data[0] = index as f64;
        } else {
            flag.data[0] = 1.0;
        }
        true
    }
}

/// Keeps one frame's pixels as `f64` (exact for every pixel type but u64 above 2^53, which
/// the merged results hold as `f64` anyway); merges by assigning.
struct FrameKeeper<P: AnyPixel> {
    frame: Vec<f64>,
    index: Option<u64>,
    rule: Rule,
    _p: std::marker::PhantomData<P>,
}

impl<P: AnyPixel> FrameKeeper<P> {
    fn fresh(meta: &UdfMeta, rule: Rule) -> Self {
        Self {
            frame: vec![0.0; meta.sig_shape.len()],
            index: None,
            rule,
            _p: std::marker::PhantomData,
        }
    }
}

impl<P: AnyPixel> PartitionTask for FrameKeeper<P> {
    fn process_frame(&mut self, frame: u64, pixels: PixelsRef<'_>, nav: &mut [f64]) {
        let sig = SigShape::new(1, self.frame.len());
        self.process_tile(&TileView::single(frame, sig, pixels), nav);
    }
    fn process_tile(&mut self, tile: &TileView<'_>, _nav: &mut [f64]) {
        let Some(i) = self.rule.pick(self.index, tile) else {
            return;
        };
        let n = self.frame.len();
        let Some(src) = P::any_slice(tile.pixels).and_then(|px| px.get(i * n..(i + 1) * n)) else {
            return;
        };
        for (d, &v) in self.frame.iter_mut().zip(src) {
            *d = v.any_f64();
        }
        self.index = Some(tile.first_frame + i as u64);
    }
    fn merge_into(&mut self, global: &mut [ResultBuffer]) {
        let Some(index) = self.index.take() else {
            return;
        };
        let (img, flag) = global.split_at_mut(1);
        if self.rule.claim(index, &mut flag[0]) {
            img[0].data.copy_from_slice(&self.frame);
        }
    }
}

/// The most recent frame: the one with the highest acquisition index processed so far.
///
/// No parameters besides the name ([`Udf::params`] is `null`). Output: sig `latest`, shape
/// `[sig_rows, sig_cols]`, unit `counts`, dtype u64 for integer frames and float64 for
/// float frames (values copied exactly, NaN included); single `frame`, shape `[]`, dtype
/// u64: its acquisition index (NaN before the first). Costs one frame copy per tile; for
/// the live view.
#[derive(Clone, Debug)]
pub struct SignalMonitorUdf {
    name: String,
}

impl SignalMonitorUdf {
    /// A signal monitor named `monitor`.
    pub fn new() -> Self {
        Self {
            name: "monitor".into(),
        }
    }
    /// The same UDF under another name (names are unique within a run).
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }
}

impl Default for SignalMonitorUdf {
    fn default() -> Self {
        Self::new()
    }
}

impl Udf for SignalMonitorUdf {
    fn name(&self) -> &str {
        &self.name
    }
    fn buffers(&self, meta: &UdfMeta) -> Vec<BufferDecl> {
        vec![
            BufferDecl::sig("latest", "counts").with_dtype(frame_dtype(meta.dtype)),
            BufferDecl::single("frame", vec![], "frame index").with_dtype(ResultDType::U64),
        ]
    }
    fn preprocess(&self, _meta: &UdfMeta, global: &mut [ResultBuffer]) -> Result<(), String> {
        global[1].data[0] = f64::NAN;
        Ok(())
    }
    fn new_partition(&self, meta: &UdfMeta) -> Box<dyn PartitionTask> {
        with_pixel_type!(meta.dtype, P => Box::new(FrameKeeper::<P>::fresh(meta, Rule::Latest)),
            F => Box::new(FrameKeeper::<F>::fresh(meta, Rule::Latest)))
    }
}

/// The sum of the frames of the partition merged most recently (a worker's frames since
/// its previous merge: at most a snapshot interval's worth) — shows what arrives now.
///
/// No parameters besides the name ([`Udf::params`] is `null`). Output: sig `intensity`,
/// shape `[sig_rows, sig_cols]`, unit `counts`; single `frames`, shape `[]`, dtype u64:
/// frames in that partition. Which partition is the latest depends on timing; for the live
/// view, not for analysis.
///
/// Integer frames: exact sums, dtype u64. Float frames: `f64` sums in frame order, dtype
/// float64 (not exact; a NaN pixel makes its sum NaN, negative values are summed as they
/// are).
#[derive(Clone, Debug)]
pub struct PartitionMonitorUdf {
    name: String,
}

impl PartitionMonitorUdf {
    /// A partition monitor named `partition_monitor`.
    pub fn new() -> Self {
        Self {
            name: "partition_monitor".into(),
        }
    }
    /// The same UDF under another name (names are unique within a run).
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }
}

impl Default for PartitionMonitorUdf {
    fn default() -> Self {
        Self::new()
    }
}

impl Udf for PartitionMonitorUdf {
    fn name(&self) -> &str {
        &self.name
    }
    fn buffers(&self, meta: &UdfMeta) -> Vec<BufferDecl> {
        vec![
            BufferDecl::sig("intensity", "counts").with_dtype(frame_dtype(meta.dtype)),
            BufferDecl::single("frames", vec![], "frames").with_dtype(ResultDType::U64),
        ]
    }
    fn new_partition(&self, meta: &UdfMeta) -> Box<dyn PartitionTask> {
        with_pixel_type!(meta.dtype, P => Box::new(PartitionSum::<P> {
            acc: vec![0; meta.sig_shape.len()],
            frames: 0,
            _p: std::marker::PhantomData,
        }), F => Box::new(FloatPartitionSum::<F> {
            acc: vec![0.0; meta.sig_shape.len()],
            frames: 0,
            _p: std::marker::PhantomData,
        }))
    }
}

struct PartitionSum<P: Pixel> {
    acc: Vec<u64>,
    frames: u64,
    _p: std::marker::PhantomData<P>,
}

impl<P: Pixel> PartitionTask for PartitionSum<P> {
    fn process_frame(&mut self, frame: u64, pixels: PixelsRef<'_>, nav: &mut [f64]) {
        let sig = SigShape::new(1, self.acc.len());
        self.process_tile(&TileView::single(frame, sig, pixels), nav);
    }
    fn process_tile(&mut self, tile: &TileView<'_>, _nav: &mut [f64]) {
        let Some(px) = P::slice(tile.pixels) else {
            return;
        };
        let n = self.acc.len().max(1);
        for frame in px.chunks_exact(n) {
            for (a, &v) in self.acc.iter_mut().zip(frame) {
                *a = a.wrapping_add(v.widen());
            }
            self.frames += 1;
        }
    }
    fn merge_into(&mut self, global: &mut [ResultBuffer]) {
        if self.frames == 0 {
            return;
        }
        for (g, a) in global[0].data.iter_mut().zip(self.acc.iter_mut()) {
            *g = *a as f64;
            *a = 0;
        }
        global[1].data[0] = self.frames as f64;
        self.frames = 0;
    }
}

/// [`PartitionSum`] for float frames, in `f64`.
struct FloatPartitionSum<F: FloatPixel> {
    acc: Vec<f64>,
    frames: u64,
    _p: std::marker::PhantomData<F>,
}

impl<F: FloatPixel> PartitionTask for FloatPartitionSum<F> {
    fn process_frame(&mut self, frame: u64, pixels: PixelsRef<'_>, nav: &mut [f64]) {
        let sig = SigShape::new(1, self.acc.len());
        self.process_tile(&TileView::single(frame, sig, pixels), nav);
    }
    fn process_tile(&mut self, tile: &TileView<'_>, _nav: &mut [f64]) {
        let Some(px) = F::slice(tile.pixels) else {
            return;
        };
        let n = self.acc.len().max(1);
        for frame in px.chunks_exact(n) {
            F::add_into(&mut self.acc, frame);
            self.frames += 1;
        }
    }
    fn merge_into(&mut self, global: &mut [ResultBuffer]) {
        if self.frames == 0 {
            return;
        }
        for (g, a) in global[0].data.iter_mut().zip(self.acc.iter_mut()) {
            *g = *a;
            *a = 0.0;
        }
        global[1].data[0] = self.frames as f64;
        self.frames = 0;
    }
}
