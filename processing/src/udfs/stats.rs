//! [`StatsUdf`]: per-pixel statistics over all frames — mean, variance, standard
//! deviation, minimum, maximum.

use crate::pixel::Pixel;
use crate::result::ResultBuffer;
use crate::udf::{BufferDecl, PartitionTask, ResultDType, TileView, Udf, UdfMeta};
use crate::with_pixel_type;
use stemflow_core::frame::PixelsRef;

/// Per-pixel statistics over the processed frames.
///
/// No parameters besides the name. Output sig buffers, shape `[sig_rows, sig_cols]`:
/// * `mean` (counts), `var` (population variance, ddof = 0; counts²), `std` (counts);
/// * `min`, `max` (counts, dtype u64);
/// * `sum` (counts, u64) and the single buffer `frames` (shape `[]`, the frame count n).
///
/// All are NaN before the first frame.
///
/// # Method
/// Tasks accumulate Σx and Σx² per pixel as exact integers (u64 and u128) and merge them
/// by adding; the variance is then `(n·Σx² − (Σx)²) / n²` evaluated in 128-bit integer
/// arithmetic, one rounding at the final division. This is mergeable in any order and has
/// none of the cancellation of the textbook float formula — the property Welford's and
/// Chan's updates buy for float data — and it is bit-identical whatever the partitioning.
/// The merged Σx² is held in two `f64` buffers as `hi · 2^52 + lo`, each part an exact
/// integer, so it stays exact up to 2^105 (e.g. 2^41 full-scale u32 frames) and merging
/// stays independent of the order; Σx is exact up to 2^53 (2 million full-scale u32
/// frames). Beyond those the result is correct to `f64` precision.
#[derive(Clone, Debug)]
pub struct StatsUdf {
    name: String,
}

impl StatsUdf {
    /// Statistics named `stats`.
    pub fn new() -> Self {
        Self {
            name: "stats".into(),
        }
    }
    /// The same UDF under another name (names are unique within a run).
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }
}

impl Default for StatsUdf {
    fn default() -> Self {
        Self::new()
    }
}

const SUM: usize = 0;
const SUM_SQ: usize = 1;
const MIN: usize = 2;
const MAX: usize = 3;
const FRAMES: usize = 4;
const SUM_SQ_HI: usize = 5;
/// Σx² is merged as `hi · 2^52 + lo`, both parts exact in `f64`.
const LO_BITS: u32 = 52;

/// The merged Σx² of pixel `i`, exact.
fn sum_sq(merged: &[ResultBuffer], i: usize) -> u128 {
    ((merged[SUM_SQ_HI].data[i] as u128) << LO_BITS) + merged[SUM_SQ].data[i] as u128
}

impl Udf for StatsUdf {
    fn name(&self) -> &str {
        &self.name
    }
    fn buffers(&self, _meta: &UdfMeta) -> Vec<BufferDecl> {
        vec![
            BufferDecl::sig("sum", "counts").with_dtype(ResultDType::U64),
            BufferDecl::sig("sum_sq", "counts^2 (low 52 bits)"),
            BufferDecl::sig("min", "counts").with_dtype(ResultDType::U64),
            BufferDecl::sig("max", "counts").with_dtype(ResultDType::U64),
            BufferDecl::single("frames", vec![], "frames").with_dtype(ResultDType::U64),
            BufferDecl::sig("sum_sq_hi", "counts^2 / 2^52"),
        ]
    }
    fn preprocess(&self, _meta: &UdfMeta, global: &mut [ResultBuffer]) -> Result<(), String> {
        global[MIN].data.fill(f64::INFINITY);
        global[MAX].data.fill(f64::NEG_INFINITY);
        Ok(())
    }
    fn new_partition(&self, meta: &UdfMeta) -> Box<dyn PartitionTask> {
        let n = meta.sig_shape.len();
        with_pixel_type!(meta.dtype, P => Box::new(StatsTask::<P> {
            sum: vec![0; n],
            sum_sq: vec![0; n],
            min: vec![u64::MAX; n],
            max: vec![0; n],
            frames: 0,
            _p: std::marker::PhantomData,
        }))
    }
    fn get_results(&self, _meta: &UdfMeta, merged: &[ResultBuffer]) -> Vec<ResultBuffer> {
        let n = merged[FRAMES].data[0];
        let like = |name: &str, unit: &str, data: Vec<f64>| ResultBuffer {
            name: name.into(),
            kind: merged[SUM].kind,
            shape: merged[SUM].shape.clone(),
            data,
            unit: unit.into(),
            dtype: ResultDType::F64,
        };
        let s1 = &merged[SUM].data;
        let (mean, var): (Vec<f64>, Vec<f64>) = if n > 0.0 {
            s1.iter()
                .enumerate()
                .map(|(i, &a)| (a / n, variance(n, a, sum_sq(merged, i))))
                .unzip()
        } else {
            (vec![f64::NAN; s1.len()], vec![f64::NAN; s1.len()])
        };
        let std = var.iter().map(|v| v.sqrt()).collect();
        let nan_if_empty = |b: &ResultBuffer| {
            let mut b = b.clone();
            if n == 0.0 {
                b.data.fill(f64::NAN);
            }
            b
        };
        vec![
            like("mean", "counts", mean),
            like("var", "counts^2", var),
            like("std", "counts", std),
            nan_if_empty(&merged[MIN]),
            nan_if_empty(&merged[MAX]),
            nan_if_empty(&merged[SUM]),
            merged[FRAMES].clone(),
        ]
    }
}

/// `(n·s2 − s1²) / n²` in 128-bit integers when the (integer-valued) inputs allow it.
fn variance(n: f64, s1: f64, s2: u128) -> f64 {
    let exact = (|| {
        let (n, s1) = (n as u128, s1 as u128);
        let num = n.checked_mul(s2)?.checked_sub(s1.checked_mul(s1)?)?;
        Some(num as f64 / n.checked_mul(n)? as f64)
    })();
    exact.unwrap_or_else(|| ((s2 as f64 / n) - (s1 / n) * (s1 / n)).max(0.0))
}

struct StatsTask<P: Pixel> {
    sum: Vec<u64>,
    sum_sq: Vec<u128>,
    min: Vec<u64>,
    max: Vec<u64>,
    frames: u64,
    _p: std::marker::PhantomData<P>,
}

impl<P: Pixel> PartitionTask for StatsTask<P> {
    fn process_tile(&mut self, tile: &TileView<'_>, _nav: &mut [f64]) {
        let Some(px) = P::slice(tile.pixels) else {
            return;
        };
        let n = self.sum.len().max(1);
        for frame in px.chunks_exact(n) {
            for (i, &v) in frame.iter().enumerate() {
                let v = v.widen();
                self.sum[i] = self.sum[i].wrapping_add(v);
                self.sum_sq[i] = self.sum_sq[i].wrapping_add(v as u128 * v as u128);
                self.min[i] = self.min[i].min(v);
                self.max[i] = self.max[i].max(v);
            }
            self.frames += 1;
        }
    }
    fn process_frame(&mut self, frame: u64, pixels: PixelsRef<'_>, nav: &mut [f64]) {
        let sig = stemflow_core::SigShape::new(1, self.sum.len());
        self.process_tile(&TileView::single(frame, sig, pixels), nav);
    }
    fn merge_into(&mut self, global: &mut [ResultBuffer]) {
        if self.frames == 0 {
            return;
        }
        let (sum, rest) = global.split_at_mut(1);
        let (sq, rest) = rest.split_at_mut(1);
        let (mn, rest) = rest.split_at_mut(1);
        let (mx, rest) = rest.split_at_mut(1);
        let (frames, hi) = rest.split_at_mut(1);
        for i in 0..self.sum.len() {
            sum[0].data[i] += self.sum[i] as f64;
            let total =
                ((hi[0].data[i] as u128) << LO_BITS) + sq[0].data[i] as u128 + self.sum_sq[i];
            sq[0].data[i] = (total & ((1 << LO_BITS) - 1)) as f64;
            hi[0].data[i] = (total >> LO_BITS) as f64;
            mn[0].data[i] = mn[0].data[i].min(self.min[i] as f64);
            mx[0].data[i] = mx[0].data[i].max(self.max[i] as f64);
        }
        frames[0].data[0] += self.frames as f64;
        self.sum.fill(0);
        self.sum_sq.fill(0);
        self.min.fill(u64::MAX);
        self.max.fill(0);
        self.frames = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::variance;

    #[test]
    fn variance_is_exact_where_floats_cancel() {
        // Values 1e7 + {0, 1, 2}: population variance 2/3; the float formula on these
        // sums (about 3e14) loses most digits.
        let xs = [1e7, 1e7 + 1.0, 1e7 + 2.0];
        let s1: f64 = xs.iter().sum();
        let s2: f64 = xs.iter().map(|x| x * x).sum();
        assert_eq!(variance(3.0, s1, s2 as u128), 2.0 / 3.0);
    }
}
