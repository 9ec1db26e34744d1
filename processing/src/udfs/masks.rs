//! [`MasksUdf`]: virtual detectors — several binary masks applied to each frame in one pass.

use crate::mask::{Mask, MasksParams, NamedMask, Span, SpanMask, line_fraction};
use crate::pixel::{FloatPixel, Pixel};
use crate::udf::{
    BandRead, BufferDecl, Fusable, LinearTerms, PartitionTask, ResultDType, TileView, Udf, UdfMeta,
    Weight, band_read_of_lines,
};
use crate::windows::WindowMask;
use crate::with_pixel_type;
use std::marker::PhantomData;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use stemflow_core::frame::PixelsRef;

/// Virtual detectors: for each frame, the sum of the pixels under each mask (e.g. a
/// [`Mask::Disk`] for bright field, a [`Mask::Ring`] for annular dark field), all masks in
/// one pass over the frame.
///
/// Parameters: `(buffer name, mask)` pairs — any number of [`Mask::Disk`],
/// [`Mask::Ring`], [`Mask::Rectangle`], [`Mask::Polygon`] and [`Mask::Custom`] (e.g. from a
/// `.npy` file, [`crate::mask::CustomMask::from_npy`]); names unique.
///
/// All at once, serialisable: [`MasksParams`] ([`MasksUdf::from_params`],
/// [`Udf::params`]).
///
/// Output: one nav buffer per mask, named by the mask (e.g. `bf`, `adf`), shape
/// `[nav_rows, nav_cols]`, unit `counts`. Geometry and pixel convention: [`crate::mask`].
/// Masks are binary (every pixel in a mask weighs 1) and held as row spans (run-length,
/// sparse): only pixels under some mask are read, every mask while the frame is in cache.
///
/// * Integer pixels (u8–u64): dtype u64 — the exact integer sum under the mask as `f64`.
/// * Float pixels (f32, f64): dtype float64 — the sum in `f64` (each span in 8 lanes, the
///   spans in row order), negative values included. Not exact: it differs from a plain
///   f64 sum by rounding only (its last bits; the tests allow 1e-12 of the sum of the
///   magnitudes), and is the same for a frame whether it was fed whole or in row bands. A NaN pixel makes the sum of every mask containing it NaN
///   (as NumPy); masks not containing it are unaffected.
#[derive(Clone, Debug)]
pub struct MasksUdf {
    name: String,
    masks: Vec<(String, Mask)>,
    /// Per mask: the file a custom mask was read from, for [`Udf::params`].
    sources: Vec<Option<PathBuf>>,
}

impl MasksUdf {
    /// Virtual detectors named `masks`, one per `(buffer name, mask)`.
    pub fn new<S: Into<String>>(masks: impl IntoIterator<Item = (S, Mask)>) -> Self {
        let masks: Vec<(String, Mask)> = masks.into_iter().map(|(n, m)| (n.into(), m)).collect();
        Self {
            name: "masks".into(),
            sources: vec![None; masks.len()],
            masks,
        }
    }
    /// Virtual detectors named `masks` from their parameters (each mask's `source` kept
    /// for [`Udf::params`]). Checked, like [`MasksUdf::new`], when a run starts.
    pub fn from_params(p: MasksParams) -> Self {
        let (masks, sources) = p
            .masks
            .into_iter()
            .map(|m| ((m.name, m.mask), m.source))
            .unzip();
        Self {
            name: "masks".into(),
            masks,
            sources,
        }
    }
    /// Records that the mask named `mask_name` (a [`Mask::Custom`]) was read from `path`,
    /// so that [`Udf::params`] names the file; no effect when no mask has that name.
    pub fn with_source(mut self, mask_name: &str, path: impl Into<PathBuf>) -> Self {
        if let Some(i) = self.masks.iter().position(|(n, _)| n == mask_name) {
            self.sources[i] = Some(path.into());
        }
        self
    }
    /// The parameters: every mask with its name and source, in buffer order.
    pub fn to_params(&self) -> MasksParams {
        MasksParams {
            masks: self
                .masks
                .iter()
                .zip(&self.sources)
                .map(|((name, mask), source)| NamedMask {
                    name: name.clone(),
                    mask: mask.clone(),
                    source: source.clone(),
                })
                .collect(),
        }
    }
    /// The same UDF under another name (names are unique within a run).
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }
    /// The masks, with their buffer names, in buffer order.
    pub fn masks(&self) -> &[(String, Mask)] {
        &self.masks
    }
}

impl Udf for MasksUdf {
    fn name(&self) -> &str {
        &self.name
    }
    fn buffers(&self, meta: &UdfMeta) -> Vec<BufferDecl> {
        let dtype = if meta.dtype.is_float() {
            ResultDType::F64
        } else {
            ResultDType::U64
        };
        self.masks
            .iter()
            .map(|(n, _)| BufferDecl::nav(n, "counts").with_dtype(dtype))
            .collect()
    }
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(self.to_params()).unwrap_or(serde_json::Value::Null)
    }
    fn check(&self, meta: &UdfMeta) -> Result<(), String> {
        if self.masks.is_empty() {
            return Err("no masks given; at least one (name, mask) is needed".into());
        }
        for (i, (name, mask)) in self.masks.iter().enumerate() {
            if self.masks[..i].iter().any(|(n, _)| n == name) {
                return Err(format!(
                    "mask name `{name}` is used twice; names must be unique"
                ));
            }
            mask.check_for(meta.sig_shape)
                .map_err(|e| format!("mask `{name}`: {e}"))?;
        }
        Ok(())
    }
    fn new_partition(&self, meta: &UdfMeta) -> Box<dyn PartitionTask> {
        let spans: Arc<[SpanMask]> = self
            .masks
            .iter()
            .map(|(_, m)| m.spans(meta.sig_shape))
            .collect();
        let windows: Arc<[Option<WindowMask>]> = spans
            .iter()
            .map(|s| WindowMask::new(s, meta.dtype))
            .collect();
        let read = band_read_of_lines(line_fraction(
            spans.iter().flat_map(|m| m.spans()),
            meta.sig_shape,
            meta.dtype.size(),
        ));
        with_pixel_type!(meta.dtype, P => Box::new(MasksTask::<P> {
            meta: *meta,
            read,
            spans: Arc::clone(&spans),
            windows: Arc::clone(&windows),
            _pixel: PhantomData,
        }), F => Box::new(FloatMasksTask::<F> {
            meta: *meta,
            read,
            spans: Arc::clone(&spans),
            _pixel: PhantomData,
        }))
    }
}

/// The virtual detectors on float pixels: f64 sums over each mask's spans.
struct FloatMasksTask<F: FloatPixel> {
    meta: UdfMeta,
    /// From the share of cache lines the masks touch.
    read: BandRead,
    spans: Arc<[SpanMask]>,
    _pixel: PhantomData<F>,
}

/// Adds the sums of `frame`'s pixels under `spans` (a frame of `cols` columns) to `acc`,
/// one span after another in order: the same additions, in the same order, whether the
/// spans come all at once or band by band, so a frame's sum does not depend on the bands.
#[inline]
fn add_spans<F: FloatPixel>(acc: &mut f64, frame: &[F], spans: &[Span], cols: usize) {
    for s in spans {
        *acc += F::sum(&frame[s.range(cols)]);
    }
}

impl<F: FloatPixel> PartitionTask for FloatMasksTask<F> {
    fn process_frame(&mut self, frame: u64, pixels: PixelsRef<'_>, nav: &mut [f64]) {
        self.process_tile(&TileView::single(frame, self.meta.sig_shape, pixels), nav);
    }

    fn bands(&self) -> bool {
        true
    }

    fn band_read(&self) -> BandRead {
        self.read
    }

    fn process_band(&mut self, tile: &TileView<'_>, rows: Range<usize>, nav: &mut [f64]) {
        let Some(px) = F::slice(tile.pixels) else {
            return;
        };
        let n = tile.sig_shape.len().max(1);
        let cols = tile.sig_shape.cols;
        let width = self.spans.len().max(1);
        for (out, frame) in nav.chunks_exact_mut(width).zip(px.chunks_exact(n)) {
            for (o, mask) in out.iter_mut().zip(self.spans.iter()) {
                add_spans(o, frame, mask.spans_in_rows(rows.clone()), cols);
            }
        }
    }

    fn process_tile(&mut self, tile: &TileView<'_>, nav: &mut [f64]) {
        let Some(px) = F::slice(tile.pixels) else {
            return;
        };
        let n = tile.sig_shape.len().max(1);
        let cols = tile.sig_shape.cols;
        let width = self.spans.len().max(1);
        for (out, frame) in nav.chunks_exact_mut(width).zip(px.chunks_exact(n)) {
            for (o, mask) in out.iter_mut().zip(self.spans.iter()) {
                *o = 0.0;
                add_spans(o, frame, mask.spans(), cols);
            }
        }
    }
}

struct MasksTask<P: Pixel> {
    meta: UdfMeta,
    /// From the share of cache lines the masks touch.
    read: BandRead,
    spans: Arc<[SpanMask]>,
    /// The same masks as vector windows, where this build has a kernel for `P`.
    windows: Arc<[Option<WindowMask>]>,
    _pixel: PhantomData<P>,
}

impl<P: Pixel> PartitionTask for MasksTask<P> {
    fn process_frame(&mut self, frame: u64, pixels: PixelsRef<'_>, nav: &mut [f64]) {
        self.process_tile(&TileView::single(frame, self.meta.sig_shape, pixels), nav);
    }

    fn bands(&self) -> bool {
        true
    }

    fn band_read(&self) -> BandRead {
        self.read
    }

    fn process_band(&mut self, tile: &TileView<'_>, rows: Range<usize>, nav: &mut [f64]) {
        let Some(px) = P::slice(tile.pixels) else {
            return;
        };
        let n = tile.sig_shape.len().max(1);
        let width = self.spans.len().max(1);
        for (out, frame) in nav.chunks_exact_mut(width).zip(px.chunks_exact(n)) {
            for ((o, mask), win) in out
                .iter_mut()
                .zip(self.spans.iter())
                .zip(self.windows.iter())
            {
                let sum = win.as_ref().and_then(|w| w.sum_rows(frame, rows.clone()));
                *o += sum.unwrap_or_else(|| mask.sum_rows(frame, rows.clone())) as f64;
            }
        }
    }

    fn process_tile(&mut self, tile: &TileView<'_>, nav: &mut [f64]) {
        let Some(px) = P::slice(tile.pixels) else {
            return;
        };
        let n = tile.sig_shape.len().max(1);
        let width = self.spans.len().max(1);
        for (out, frame) in nav.chunks_exact_mut(width).zip(px.chunks_exact(n)) {
            for ((o, mask), win) in out
                .iter_mut()
                .zip(self.spans.iter())
                .zip(self.windows.iter())
            {
                let sum = win.as_ref().and_then(|w| w.sum(frame));
                *o = sum.unwrap_or_else(|| mask.sum(frame)) as f64;
            }
        }
    }

    fn fusable(&self) -> Option<Fusable> {
        let terms = self
            .spans
            .iter()
            .map(|m| LinearTerms {
                support: Some(m.clone()),
                weights: vec![Weight::One],
            })
            .collect();
        Some(Fusable::Linear(terms))
    }

    fn take_linear(&mut self, _tile: &TileView<'_>, sums: &[u64], nav: &mut [f64]) {
        // One exact sum per mask, as the band path's `as f64` of the same integer.
        for (out, &s) in nav.iter_mut().zip(sums) {
            *out = s as f64;
        }
    }
}
