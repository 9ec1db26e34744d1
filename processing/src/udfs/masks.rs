//! [`MasksUdf`]: virtual detectors — several binary masks applied to each frame in one pass.

use crate::mask::{Mask, SpanMask, line_fraction};
use crate::pixel::Pixel;
use crate::udf::{
    BandRead, BufferDecl, PartitionTask, ResultDType, TileView, Udf, UdfMeta, band_read_of_lines,
};
use crate::windows::WindowMask;
use crate::with_pixel_type;
use std::marker::PhantomData;
use std::ops::Range;
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
/// Output: one nav buffer per mask, named by the mask (e.g. `bf`, `adf`), shape
/// `[nav_rows, nav_cols]`, unit `counts`, dtype u64 — the exact integer sum under the mask
/// as `f64`. Geometry and pixel convention: [`crate::mask`]. Masks are held as row spans
/// (run-length, sparse): only pixels under some mask are read, every mask while the frame
/// is in cache.
#[derive(Clone, Debug)]
pub struct MasksUdf {
    name: String,
    masks: Vec<(String, Mask)>,
}

impl MasksUdf {
    /// Virtual detectors named `masks`, one per `(buffer name, mask)`.
    pub fn new<S: Into<String>>(masks: impl IntoIterator<Item = (S, Mask)>) -> Self {
        Self {
            name: "masks".into(),
            masks: masks.into_iter().map(|(n, m)| (n.into(), m)).collect(),
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
    fn buffers(&self, _meta: &UdfMeta) -> Vec<BufferDecl> {
        self.masks
            .iter()
            .map(|(n, _)| BufferDecl::nav(n, "counts").with_dtype(ResultDType::U64))
            .collect()
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
        }))
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
}
