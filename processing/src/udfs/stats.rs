//! [`StatsUdf`]: per-pixel statistics over all frames — mean, variance, standard
//! deviation, minimum, maximum.

use crate::pixel::{FloatPixel, Pixel};
use crate::result::ResultBuffer;
use crate::udf::{BufferDecl, PartitionTask, ResultDType, TileView, Udf, UdfMeta};
use crate::with_pixel_type;
use std::ops::Range;
use stemflow_core::frame::PixelsRef;

/// Per-pixel statistics over the processed frames.
///
/// No parameters besides the name ([`Udf::params`] is `null`). Output sig buffers, shape
/// `[sig_rows, sig_cols]`:
/// * `mean` (counts), `var` (population variance, ddof = 0; counts²), `std` (counts),
///   dtype float64;
/// * `min`, `max` (counts; dtype u64 for integer frames, float64 for float frames);
/// * `sum` (counts; u64 for integer frames, float64 for float frames) and the single
///   buffer `frames` (shape `[]`, dtype u64, the frame count n).
///
/// All are NaN before the first frame.
///
/// # Method, integer frames
/// Tasks accumulate Σx and Σx² per pixel as exact integers (u64 and u128) and merge them
/// by adding; the variance is then `(n·Σx² − (Σx)²) / n²` evaluated in 128-bit integer
/// arithmetic, one rounding at the final division. This is mergeable in any order and has
/// none of the cancellation of the textbook float formula — the property Welford's and
/// Chan's updates buy for float data — and it is bit-identical whatever the partitioning.
/// The merged Σx² is held in two `f64` buffers as `hi · 2^52 + lo`, each part an exact
/// integer, so it stays exact up to 2^105 (e.g. 2^41 full-scale u32 frames) and merging
/// stays independent of the order; Σx is exact up to 2^53 (2 million full-scale u32
/// frames). Beyond those the result is correct to `f64` precision.
///
/// # Method, float frames (f32, f64)
/// Σx² cannot be held exactly for floats, and the one-pass `Σx²/n − mean²` loses every
/// digit when the mean is large beside the spread (1e8 ± 1: the two terms agree in all 16
/// digits). Instead each task keeps, per pixel in `f64`, the count n, the running mean
/// and M2 = Σ(x − mean)², updated per frame by Welford's recurrence on the values minus
/// the task's first value of the pixel (so that the updates round at the scale of the
/// spread, not of the offset); tasks merge into the global (n, mean, M2) with Chan et
/// al.'s pairwise formula (δ = mean_b − mean_a; mean = mean_a + δ·n_b/n;
/// M2 = M2_a + M2_b + δ²·n_a·n_b/n), the merged mean also kept relative to a per-pixel
/// shift (the first merged task's). `var = M2/n`, `std = √var`; `sum` is a plain `f64`
/// sum. The results agree with a two-pass computation (the mean, then Σ(x − mean)²) to
/// about 1e-12 relative for the mean and the variance in tests of tens to hundreds of
/// frames, also at 1e8 ± 1; their last bits depend on the order of merges (threads,
/// partitions). Merged buffers (internal): `sum`, `m2`, `min`, `max`, `frames`,
/// `running_mean`, `shift`.
///
/// NaN and infinities follow NumPy (`np.mean`, `np.var`, `np.min`, `np.max`): a NaN pixel
/// in any frame makes that pixel's mean, var, std, sum, min and max NaN (min/max
/// propagate NaN, unlike `np.nanmin`); a ±∞ pixel gives ±∞ for the sum and the mean (NaN
/// where +∞ and −∞ both occur), ±∞ for the min or max, and NaN for var and std.
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
/// Float frames: the slot of M2 = Σ(x − mean)² (where integers keep Σx²).
const M2: usize = 1;
/// Float frames: the slot of the running mean minus [`SHIFT`] (where integers keep Σx²'s
/// high part).
const MEAN: usize = 5;
/// Float frames: the slot of the per-pixel shift of the merged mean (the shift of the
/// first task merged), so that merges round at the scale of the spread too.
const SHIFT: usize = 6;

/// The merged Σx² of pixel `i`, exact.
fn sum_sq(merged: &[ResultBuffer], i: usize) -> u128 {
    ((merged[SUM_SQ_HI].data[i] as u128) << LO_BITS) + merged[SUM_SQ].data[i] as u128
}

impl Udf for StatsUdf {
    fn name(&self) -> &str {
        &self.name
    }
    fn buffers(&self, meta: &UdfMeta) -> Vec<BufferDecl> {
        if meta.dtype.is_float() {
            // Same slots as the integer layout for sum, min, max and frames.
            return vec![
                BufferDecl::sig("sum", "counts"),
                BufferDecl::sig("m2", "counts^2"),
                BufferDecl::sig("min", "counts"),
                BufferDecl::sig("max", "counts"),
                BufferDecl::single("frames", vec![], "frames").with_dtype(ResultDType::U64),
                BufferDecl::sig("running_mean", "counts"),
                BufferDecl::sig("shift", "counts"),
            ];
        }
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
            hits: Vec::new(),
            _p: std::marker::PhantomData,
        }), F => Box::new(FloatStatsTask::<F> {
            sum: vec![0.0; n],
            shift: vec![0.0; n],
            mean: vec![0.0; n],
            m2: vec![0.0; n],
            min: vec![f64::INFINITY; n],
            max: vec![f64::NEG_INFINITY; n],
            frames: 0,
            _p: std::marker::PhantomData,
        }))
    }
    fn get_results(&self, meta: &UdfMeta, merged: &[ResultBuffer]) -> Vec<ResultBuffer> {
        if meta.dtype.is_float() {
            return float_results(merged);
        }
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
    /// Sparse rows: per pixel, the frames with an entry there (the others hold 0 at that
    /// pixel, which the minimum takes at the merge); empty until the first sparse row.
    hits: Vec<u64>,
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
    /// Sparse rows: sums, squares and the maximum from the events; a pixel's minimum is 0
    /// unless every frame has an entry there (counted in `hits`, resolved at the merge).
    /// Indices must be unique within a row (as CSR producers send them).
    fn process_csr(
        &mut self,
        rows: &stemflow_core::csr::CsrRows,
        frames: Range<usize>,
        _nav: &mut [f64],
    ) -> bool {
        // Not on the engine's probe (no frames): a dense run keeps no hit counts.
        if !frames.is_empty() && self.hits.len() != self.sum.len() {
            self.hits = vec![0; self.sum.len()];
        }
        for f in frames {
            let (idx, val) = rows.row(f);
            for (&i, &v) in idx.iter().zip(val) {
                let (i, v) = (i as usize, u64::from(v));
                if i >= self.sum.len() {
                    continue;
                }
                self.sum[i] = self.sum[i].wrapping_add(v);
                self.sum_sq[i] = self.sum_sq[i].wrapping_add(u128::from(v) * u128::from(v));
                self.min[i] = self.min[i].min(v);
                self.max[i] = self.max[i].max(v);
                self.hits[i] += 1;
            }
            self.frames += 1;
        }
        true
    }
    fn merge_into(&mut self, global: &mut [ResultBuffer]) {
        if self.frames == 0 {
            return;
        }
        if !self.hits.is_empty() {
            // Pixels without an entry in some frame had a 0 there.
            for (m, &h) in self.min.iter_mut().zip(&self.hits) {
                if h < self.frames {
                    *m = 0;
                }
            }
            self.hits.fill(0);
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

/// The shown buffers of float frames from the merged (n, mean, M2) layout.
fn float_results(merged: &[ResultBuffer]) -> Vec<ResultBuffer> {
    let n = merged[FRAMES].data[0];
    let like = |name: &str, unit: &str, data: Vec<f64>| ResultBuffer {
        name: name.into(),
        kind: merged[SUM].kind,
        shape: merged[SUM].shape.clone(),
        data,
        unit: unit.into(),
        dtype: ResultDType::F64,
    };
    let len = merged[SUM].data.len();
    let (mean, var): (Vec<f64>, Vec<f64>) = if n > 0.0 {
        (
            // Where an infinity entered, Welford's mean is NaN (∞ − ∞ in an update) while
            // NumPy's is ±∞ (NaN only for +∞ and −∞ together): the sum's mean says that.
            merged[SHIFT]
                .data
                .iter()
                .zip(&merged[MEAN].data)
                .zip(&merged[SUM].data)
                .map(|((&k, &m), &s)| if s.is_finite() { k + m } else { s / n })
                .collect(),
            merged[M2].data.iter().map(|&m2| m2 / n).collect(),
        )
    } else {
        (vec![f64::NAN; len], vec![f64::NAN; len])
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

/// The smaller of `m` and `x`, NaN when either is NaN (`np.minimum`); a select the
/// compiler vectorises, unlike `f64::min`, which ignores NaN.
#[inline]
fn min_nan(m: f64, x: f64) -> f64 {
    if x < m || x.is_nan() { x } else { m }
}

/// The larger of `m` and `x`, NaN when either is NaN (`np.maximum`).
#[inline]
fn max_nan(m: f64, x: f64) -> f64 {
    if x > m || x.is_nan() { x } else { m }
}

/// Per-worker statistics of float frames: per pixel, Welford's running mean and M2 (of the
/// values shifted by the task's first value) over the `frames` frames since the last
/// merge, a plain `f64` sum, and NaN-propagating min/max.
struct FloatStatsTask<F: FloatPixel> {
    sum: Vec<f64>,
    /// Per pixel, the value of the task's first frame since the last merge (0 where that
    /// is not finite): the running mean and M2 are kept of `x − shift`, whose magnitude is
    /// that of the spread, not of the offset, so each update rounds at the spread's scale.
    shift: Vec<f64>,
    /// Running mean of `x − shift`.
    mean: Vec<f64>,
    m2: Vec<f64>,
    min: Vec<f64>,
    max: Vec<f64>,
    frames: u64,
    _p: std::marker::PhantomData<F>,
}

impl<F: FloatPixel> PartitionTask for FloatStatsTask<F> {
    fn process_tile(&mut self, tile: &TileView<'_>, _nav: &mut [f64]) {
        let Some(px) = F::slice(tile.pixels) else {
            return;
        };
        let n = self.sum.len().max(1);
        for frame in px.chunks_exact(n) {
            if self.frames == 0 {
                for (k, &v) in self.shift.iter_mut().zip(frame) {
                    let x = v.to_f64();
                    *k = if x.is_finite() { x } else { 0.0 };
                }
            }
            self.frames += 1;
            let k = self.frames as f64;
            let acc = self
                .sum
                .iter_mut()
                .zip(self.shift.iter())
                .zip(self.mean.iter_mut())
                .zip(self.m2.iter_mut())
                .zip(self.min.iter_mut())
                .zip(self.max.iter_mut());
            for ((((((s, &shift), mean), m2), mn), mx), &v) in acc.zip(frame) {
                let x = v.to_f64();
                *s += x;
                // Welford on y = x − shift.
                let y = x - shift;
                let d = y - *mean;
                *mean += d / k;
                *m2 += d * (y - *mean);
                *mn = min_nan(*mn, x);
                *mx = max_nan(*mx, x);
            }
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
        let (m2, rest) = rest.split_at_mut(1);
        let (mn, rest) = rest.split_at_mut(1);
        let (mx, rest) = rest.split_at_mut(1);
        let (frames, rest) = rest.split_at_mut(1);
        let (mean, shift) = rest.split_at_mut(1);
        let na = frames[0].data[0];
        let nb = self.frames as f64;
        let n = na + nb;
        // Chan et al.: weights of the pairwise combination, the same for every pixel.
        let (wb, wab) = (nb / n, na * nb / n);
        for i in 0..self.sum.len() {
            sum[0].data[i] += self.sum[i];
            if na == 0.0 {
                shift[0].data[i] = self.shift[i];
                mean[0].data[i] = self.mean[i];
                m2[0].data[i] = self.m2[i];
            } else {
                // δ = mean_b − mean_a; the shifts' difference first: both lie within the
                // data's range, so it is small and (nearly) exact.
                let d = (self.shift[i] - shift[0].data[i]) + (self.mean[i] - mean[0].data[i]);
                mean[0].data[i] += d * wb;
                m2[0].data[i] += self.m2[i] + d * d * wab;
            }
            mn[0].data[i] = min_nan(mn[0].data[i], self.min[i]);
            mx[0].data[i] = max_nan(mx[0].data[i], self.max[i]);
        }
        frames[0].data[0] = n;
        self.sum.fill(0.0);
        self.mean.fill(0.0);
        self.m2.fill(0.0);
        self.min.fill(f64::INFINITY);
        self.max.fill(f64::NEG_INFINITY);
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
