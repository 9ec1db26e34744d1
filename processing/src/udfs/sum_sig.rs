//! [`SumSigUdf`]: the total intensity of each frame (sum over the signal dimensions).

use crate::pixel::AnyPixel;
use crate::udf::{
    BandRead, BufferDecl, Fusable, LinearTerms, PartitionTask, TileView, Udf, UdfMeta, Weight,
};
use crate::with_pixel_type;
use std::marker::PhantomData;
use std::ops::Range;
use stemflow_core::frame::PixelsRef;

/// Sums each frame over all its pixels.
///
/// No parameters besides the name ([`Udf::params`] is `null`).
///
/// Output: nav buffer `intensity`, shape `[nav_rows, nav_cols]`, unit `counts`, dtype
/// float64. Integer frames: the exact integer sum of the frame, as `f64` (exact below 2^53
/// counts). Float frames (f32, f64): the frame's sum in `f64`, not exact (eight lanes,
/// per row band when the engine feeds bands; within about 1e-12 of the sum of |x| of a plain
/// f64 sum for frames of up to millions of pixels); negative values are summed as they are,
/// a NaN pixel makes its frame's value NaN (as `numpy.sum`). Each value is computed from
/// one frame only, so it does not depend on threads or partitions, but may differ in the
/// last bits with the engine's band split.
#[derive(Clone, Debug)]
pub struct SumSigUdf {
    name: String,
}

impl SumSigUdf {
    /// A sum-over-signal UDF named `sum_sig`.
    pub fn new() -> Self {
        Self {
            name: "sum_sig".into(),
        }
    }
    /// The same UDF under another name (names are unique within a run).
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }
}

impl Default for SumSigUdf {
    fn default() -> Self {
        Self::new()
    }
}

impl Udf for SumSigUdf {
    fn name(&self) -> &str {
        &self.name
    }
    fn buffers(&self, _meta: &UdfMeta) -> Vec<BufferDecl> {
        vec![BufferDecl::nav("intensity", "counts")]
    }
    fn new_partition(&self, meta: &UdfMeta) -> Box<dyn PartitionTask> {
        with_pixel_type!(meta.dtype, P => Box::new(SumSigTask::<P> {
            meta: *meta,
            _pixel: PhantomData,
        }), F => Box::new(SumSigTask::<F> {
            meta: *meta,
            _pixel: PhantomData,
        }))
    }
}

/// Integer frames: exact sums converted once per frame; float frames: `f64` sums.
struct SumSigTask<P: AnyPixel> {
    meta: UdfMeta,
    _pixel: PhantomData<P>,
}

impl<P: AnyPixel> PartitionTask for SumSigTask<P> {
    fn process_frame(&mut self, frame: u64, pixels: PixelsRef<'_>, nav: &mut [f64]) {
        self.process_tile(&TileView::single(frame, self.meta.sig_shape, pixels), nav);
    }

    fn bands(&self) -> bool {
        true
    }

    fn band_read(&self) -> BandRead {
        BandRead::Stream
    }

    fn process_band(&mut self, tile: &TileView<'_>, rows: Range<usize>, nav: &mut [f64]) {
        let Some(px) = P::any_slice(tile.pixels) else {
            return;
        };
        let n = tile.sig_shape.len().max(1);
        let cols = tile.sig_shape.cols;
        let band = (rows.start * cols).min(n)..(rows.end * cols).min(n);
        for (out, frame) in nav.iter_mut().zip(px.chunks_exact(n)) {
            *out += P::any_total(&frame[band.clone()]);
        }
    }

    fn process_tile(&mut self, tile: &TileView<'_>, nav: &mut [f64]) {
        let Some(px) = P::any_slice(tile.pixels) else {
            return;
        };
        let n = tile.sig_shape.len().max(1);
        for (out, frame) in nav.iter_mut().zip(px.chunks_exact(n)) {
            *out = P::any_total(frame);
        }
    }

    /// The engine fuses only runs of u16 frames, whose totals are exact integers.
    fn fusable(&self) -> Option<Fusable> {
        Some(Fusable::Linear(vec![LinearTerms {
            support: None,
            weights: vec![Weight::One],
        }]))
    }

    fn take_linear(&mut self, _tile: &TileView<'_>, sums: &[u64], nav: &mut [f64]) {
        for (out, &s) in nav.iter_mut().zip(sums) {
            *out = s as f64;
        }
    }
}
