//! [`RadialProfileUdf`]: the azimuthal average of each frame around a centre.

use crate::pixel::{FloatPixel, Pixel};
use crate::result::ResultBuffer;
use crate::udf::{BufferDecl, PartitionTask, TileView, Udf, UdfMeta};
use crate::with_pixel_type;
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::sync::Arc;
use stemflow_core::SigShape;
use stemflow_core::frame::PixelsRef;

/// Parameters of [`RadialProfileUdf`], in detector pixels (pixel convention of
/// [`crate::mask`]: pixel `(x, y)` has its centre at `(x + 0.5, y + 0.5)`); serialised as
/// `{"cx": …, "cy": …, "bin_width": …, "n_bins": …}`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RadialProfileParams {
    /// Centre x (column direction), pixels.
    pub cx: f64,
    /// Centre y (row direction), pixels.
    pub cy: f64,
    /// Width of each radial bin, pixels, > 0.
    pub bin_width: f64,
    /// Number of bins, ≥ 1; bin `k` takes pixels whose centre lies at a distance `d` with
    /// `k·bin_width ≤ d < (k+1)·bin_width`.
    pub n_bins: usize,
}

/// The azimuthal (radial) average of each frame.
///
/// Output:
/// * nav `profile`, shape `[nav_rows, nav_cols, n_bins]`, unit `counts/pixel`: the mean of
///   the pixels in each bin (NaN for a bin without pixels, e.g. beyond the frame);
/// * single `radius`, shape `[n_bins]`, pixels: each bin's centre radius;
/// * single `pixels`, shape `[n_bins]`: the number of detector pixels in each bin.
///
/// * Integer pixels (u8–u64): bin sums are exact integers; the mean is one division.
/// * Float pixels (f32, f64): bin sums accumulate in `f64`, pixel by pixel in row-major
///   order (the same bins as for integers), then one division; negative values are
///   averaged as they are. A NaN pixel makes its own bin's mean NaN for that frame, and no
///   other bin (pixels in no bin are never added).
#[derive(Clone, Debug)]
pub struct RadialProfileUdf {
    name: String,
    p: RadialProfileParams,
}

impl RadialProfileUdf {
    /// A radial profile named `radial`.
    pub fn new(p: RadialProfileParams) -> Self {
        Self {
            name: "radial".into(),
            p,
        }
    }
    /// A radial profile named `radial` (the same as [`RadialProfileUdf::new`]).
    pub fn from_params(p: RadialProfileParams) -> Self {
        Self::new(p)
    }
    /// The parameters.
    pub fn to_params(&self) -> RadialProfileParams {
        self.p
    }
    /// The same UDF under another name (names are unique within a run).
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }
    /// Bin of every pixel (`u32::MAX`: none) and pixels per bin.
    fn bins(&self, sig: SigShape) -> (Vec<u32>, Vec<u64>) {
        let mut counts = vec![0u64; self.p.n_bins];
        let idx = (0..sig.len())
            .map(|i| {
                let (x, y) = ((i % sig.cols) as f64 + 0.5, (i / sig.cols) as f64 + 0.5);
                let k = ((x - self.p.cx).hypot(y - self.p.cy) / self.p.bin_width).floor();
                if k < self.p.n_bins as f64 {
                    counts[k as usize] += 1;
                    k as u32
                } else {
                    u32::MAX
                }
            })
            .collect();
        (idx, counts)
    }
}

/// Largest `profile` buffer a run may declare (bytes): 8 GiB.
const MAX_PROFILE_BYTES: u128 = 8 << 30;

impl Udf for RadialProfileUdf {
    fn name(&self) -> &str {
        &self.name
    }
    fn buffers(&self, _meta: &UdfMeta) -> Vec<BufferDecl> {
        vec![
            BufferDecl::nav("profile", "counts/pixel").with_extra_shape(vec![self.p.n_bins]),
            BufferDecl::single("radius", vec![self.p.n_bins], "pixels"),
            BufferDecl::single("pixels", vec![self.p.n_bins], "pixels"),
        ]
    }
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(self.p).unwrap_or(serde_json::Value::Null)
    }
    fn check(&self, meta: &UdfMeta) -> Result<(), String> {
        let p = &self.p;
        if !(p.cx.is_finite() && p.cy.is_finite()) {
            return Err(format!("centre must be finite, got ({}, {})", p.cx, p.cy));
        }
        if !(p.bin_width > 0.0 && p.bin_width.is_finite()) {
            return Err(format!("bin_width must be > 0 pixels, got {}", p.bin_width));
        }
        if p.n_bins == 0 || p.n_bins >= u32::MAX as usize {
            return Err(format!("n_bins must be ≥ 1, got {}", p.n_bins));
        }
        // More bins than pixels leaves most of them empty, and the profile buffer
        // (`n_bins` f64 per scan position) would outgrow the machine.
        let pixels = meta.sig_shape.len().max(1);
        if p.n_bins > pixels {
            return Err(format!(
                "n_bins = {} exceeds the frame's {pixels} pixels (bin_width {} px): give fewer bins or a larger bin_width",
                p.n_bins, p.bin_width
            ));
        }
        let bytes = (meta.nav_shape.len() as u128) * p.n_bins as u128 * 8;
        if bytes > MAX_PROFILE_BYTES {
            return Err(format!(
                "the profile buffer would take {:.1} GiB ({} scan positions × {} bins × 8 bytes), more than the {} GiB allowed: give fewer bins",
                bytes as f64 / (1u64 << 30) as f64,
                meta.nav_shape.len(),
                p.n_bins,
                MAX_PROFILE_BYTES >> 30
            ));
        }
        Ok(())
    }
    fn preprocess(&self, meta: &UdfMeta, global: &mut [ResultBuffer]) -> Result<(), String> {
        let (_, counts) = self.bins(meta.sig_shape);
        for (k, r) in global[1].data.iter_mut().enumerate() {
            *r = (k as f64 + 0.5) * self.p.bin_width;
        }
        for (g, c) in global[2].data.iter_mut().zip(counts) {
            *g = c as f64;
        }
        Ok(())
    }
    fn new_partition(&self, meta: &UdfMeta) -> Box<dyn PartitionTask> {
        let (idx, counts) = self.bins(meta.sig_shape);
        let idx: Arc<[u32]> = idx.into();
        with_pixel_type!(meta.dtype, P => Box::new(RadialTask::<P> {
            idx: Arc::clone(&idx),
            counts: counts.clone(),
            sums: vec![0; counts.len()],
            _p: std::marker::PhantomData,
        }), F => Box::new(FloatRadialTask::<F> {
            idx: Arc::clone(&idx),
            counts: counts.clone(),
            sums: vec![0.0; counts.len()],
            _p: std::marker::PhantomData,
        }))
    }
}

/// The radial profile on float pixels: `f64` bin sums.
struct FloatRadialTask<F: FloatPixel> {
    idx: Arc<[u32]>,
    counts: Vec<u64>,
    sums: Vec<f64>,
    _p: std::marker::PhantomData<F>,
}

impl<F: FloatPixel> PartitionTask for FloatRadialTask<F> {
    fn process_frame(&mut self, frame: u64, pixels: PixelsRef<'_>, nav: &mut [f64]) {
        let sig = SigShape::new(1, self.idx.len());
        self.process_tile(&TileView::single(frame, sig, pixels), nav);
    }
    fn process_tile(&mut self, tile: &TileView<'_>, nav: &mut [f64]) {
        let Some(px) = F::slice(tile.pixels) else {
            return;
        };
        let n = self.idx.len().max(1);
        let bins = self.sums.len().max(1);
        for (out, frame) in nav.chunks_exact_mut(bins).zip(px.chunks_exact(n)) {
            self.sums.fill(0.0);
            for (&k, &v) in self.idx.iter().zip(frame) {
                if let Some(s) = self.sums.get_mut(k as usize) {
                    *s += v.to_f64();
                }
            }
            for ((o, &s), &c) in out.iter_mut().zip(&self.sums).zip(&self.counts) {
                *o = if c == 0 { f64::NAN } else { s / c as f64 };
            }
        }
    }
}

struct RadialTask<P: Pixel> {
    idx: Arc<[u32]>,
    counts: Vec<u64>,
    sums: Vec<u64>,
    _p: std::marker::PhantomData<P>,
}

impl<P: Pixel> PartitionTask for RadialTask<P> {
    fn process_frame(&mut self, frame: u64, pixels: PixelsRef<'_>, nav: &mut [f64]) {
        let sig = SigShape::new(1, self.idx.len());
        self.process_tile(&TileView::single(frame, sig, pixels), nav);
    }
    fn process_tile(&mut self, tile: &TileView<'_>, nav: &mut [f64]) {
        let Some(px) = P::slice(tile.pixels) else {
            return;
        };
        let n = self.idx.len().max(1);
        let bins = self.sums.len().max(1);
        for (out, frame) in nav.chunks_exact_mut(bins).zip(px.chunks_exact(n)) {
            self.sums.fill(0);
            for (&k, &v) in self.idx.iter().zip(frame) {
                if let Some(s) = self.sums.get_mut(k as usize) {
                    // Per-frame bin sums of ≤ 2^32 pixels of < 2^32 stay below 2^64.
                    *s = s.wrapping_add(v.widen());
                }
            }
            self.finish_frame(out);
        }
    }
    /// Sparse rows: the bin sums of each row's events, the same integers as the dense
    /// frame's.
    fn process_csr(
        &mut self,
        rows: &stemflow_core::csr::CsrRows,
        frames: Range<usize>,
        nav: &mut [f64],
    ) -> bool {
        let bins = self.sums.len().max(1);
        for (out, f) in nav.chunks_exact_mut(bins).zip(frames) {
            self.sums.fill(0);
            let (idx, val) = rows.row(f);
            for (&i, &v) in idx.iter().zip(val) {
                let k = self.idx.get(i as usize).copied().unwrap_or(u32::MAX);
                if let Some(s) = self.sums.get_mut(k as usize) {
                    *s = s.wrapping_add(u64::from(v));
                }
            }
            self.finish_frame(out);
        }
        true
    }
}

impl<P: Pixel> RadialTask<P> {
    /// The frame's profile from its bin sums: the mean per pixel of each bin (NaN for a
    /// bin without pixels).
    fn finish_frame(&self, out: &mut [f64]) {
        for ((o, &s), &c) in out.iter_mut().zip(&self.sums).zip(&self.counts) {
            *o = if c == 0 {
                f64::NAN
            } else {
                s as f64 / c as f64
            };
        }
    }
}
