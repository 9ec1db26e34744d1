//! [`ComUdf`]: centre of mass of each frame inside a disk (differential phase contrast).

use crate::mask::{Mask, Span, line_fraction};
use crate::pixel::{Accum, Pixel};
use crate::result::ResultBuffer;
use crate::udf::{BandRead, BufferDecl, PartitionTask, TileView, Udf, UdfMeta, band_read_of_lines};
use crate::with_pixel_type;
use std::ops::Range;
use stemflow_core::frame::PixelsRef;

/// Centre of mass of the intensity inside a disk of `mask_radius` around a reference
/// centre `(cx, cy)`, relative to that centre.
///
/// Parameters, in detector pixels, with the pixel convention of [`crate::mask`] (pixel
/// `(x, y)` has its centre at `(x + 0.5, y + 0.5)`): `cx`, `cy` — the reference centre
/// (usually the unscattered beam's centre); `mask_radius` — the disk that is weighed
/// (pixels whose centre is within it); optionally a scan rotation in degrees
/// ([`ComUdf::with_scan_rotation`]) applied to the shift vector, and a flip of the
/// detector's y axis ([`ComUdf::with_flip_y`]) applied before the rotation. All at once:
/// [`ComParams`].
///
/// Output nav buffers, shape `[nav_rows, nav_cols]`:
/// * `x` — CoM x − `cx` (column direction), flipped and rotated; pixels;
/// * `y` — CoM y − `cy` (row direction, row 0 first), flipped and rotated; pixels;
/// * `magnitude` — `√(x² + y²)`; pixels;
/// * `divergence` — `∂x/∂col + ∂y/∂row` of the shift field over the scan; pixels per scan
///   step;
/// * `curl` — `∂y/∂col − ∂x/∂row`; pixels per scan step (near zero for a pure phase
///   object: a check of the scan rotation).
///
/// Derivatives are central differences inside the scan and one-sided at its edges (as
/// NumPy's `gradient`), 0 along a scan axis of length 1, NaN next to a NaN. The shift is
/// NaN for a frame whose masked sum is zero. The moments Σ I, Σ I·x, Σ I·y
/// are exact integers; only the final division is floating point, so a frame's values
/// never depend on how frames were split into tiles.
#[derive(Clone, Debug)]
pub struct ComUdf {
    name: String,
    cx: f64,
    cy: f64,
    mask_radius: f64,
    rotation_deg: f64,
    flip_y: bool,
}

/// The parameters of [`ComUdf`], in detector pixels and degrees.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ComParams {
    /// Reference position x (column direction; usually the unscattered beam's centre),
    /// pixels.
    pub cx: f64,
    /// Reference position y (row direction), pixels.
    pub cy: f64,
    /// Radius of the disk around the reference position that is weighed, pixels.
    pub mask_radius: f64,
    /// Rotation between scan and detector axes, degrees ([`ComUdf::with_scan_rotation`]).
    pub scan_rotation_deg: f64,
    /// Flip the detector's y axis before rotating.
    pub flip_y: bool,
}

impl ComUdf {
    /// CoM named `com` inside a disk of `mask_radius` pixels around `(cx, cy)` pixels.
    pub fn new(cx: f64, cy: f64, mask_radius: f64) -> Self {
        Self {
            name: "com".into(),
            cx,
            cy,
            mask_radius,
            rotation_deg: 0.0,
            flip_y: false,
        }
    }
    /// CoM named `com` with all parameters.
    pub fn from_params(p: ComParams) -> Self {
        Self::new(p.cx, p.cy, p.mask_radius)
            .with_scan_rotation(p.scan_rotation_deg)
            .with_flip_y(p.flip_y)
    }
    /// Negates the y component of the shift (detector mounted flipped relative to the
    /// scan) before the scan rotation is applied.
    pub fn with_flip_y(mut self, flip: bool) -> Self {
        self.flip_y = flip;
        self
    }
    /// The same UDF under another name (names are unique within a run).
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }
    /// Rotates the shift vector by `degrees` (counter-clockwise in a frame shown with x to
    /// the right and y up; clockwise as displayed with row 0 at the top):
    /// `x' = x cos θ − y sin θ`, `y' = x sin θ + y cos θ`. Compensates the rotation between
    /// scan and detector axes.
    pub fn with_scan_rotation(mut self, degrees: f64) -> Self {
        self.rotation_deg = degrees;
        self
    }
    fn mask(&self) -> Mask {
        Mask::Disk {
            cx: self.cx,
            cy: self.cy,
            r: self.mask_radius,
        }
    }
}

impl Udf for ComUdf {
    fn name(&self) -> &str {
        &self.name
    }
    fn buffers(&self, _meta: &UdfMeta) -> Vec<BufferDecl> {
        vec![
            BufferDecl::nav("x", "pixels"),
            BufferDecl::nav("y", "pixels"),
            BufferDecl::nav("magnitude", "pixels"),
        ]
    }
    fn get_results(&self, meta: &UdfMeta, merged: &[ResultBuffer]) -> Vec<ResultBuffer> {
        let (rows, cols) = (meta.nav_shape.rows, meta.nav_shape.cols);
        let (x, y) = (&merged[0].data, &merged[1].data);
        let dxc = gradient(x, rows, cols, false);
        let dxr = gradient(x, rows, cols, true);
        let dyc = gradient(y, rows, cols, false);
        let dyr = gradient(y, rows, cols, true);
        let mut out = merged.to_vec();
        let derived = |name: &str, data: Vec<f64>| ResultBuffer {
            name: name.into(),
            kind: merged[0].kind,
            shape: merged[0].shape.clone(),
            data,
            unit: "pixels/scan step".into(),
            dtype: Default::default(),
        };
        out.push(derived(
            "divergence",
            dxc.iter().zip(&dyr).map(|(a, b)| a + b).collect(),
        ));
        out.push(derived(
            "curl",
            dyc.iter().zip(&dxr).map(|(a, b)| a - b).collect(),
        ));
        out
    }
    fn check(&self, meta: &UdfMeta) -> Result<(), String> {
        self.mask().check().map_err(|e| format!("CoM mask: {e}"))?;
        if !self.rotation_deg.is_finite() {
            return Err(format!(
                "scan rotation must be finite, got {} degrees",
                self.rotation_deg
            ));
        }
        // Column sums take at most one pixel per row per frame.
        let headroom = with_pixel_type!(meta.dtype, P => P::ACC_HEADROOM);
        if meta.sig_shape.rows as u64 > headroom {
            return Err(format!(
                "frames of {} rows exceed the {} rows CoM can sum exactly for {}",
                meta.sig_shape.rows, headroom, meta.dtype
            ));
        }
        Ok(())
    }
    fn new_partition(&self, meta: &UdfMeta) -> Box<dyn PartitionTask> {
        let mask = self.mask().spans(meta.sig_shape);
        let cols = mask.col_range();
        let (sin, cos) = self.rotation_deg.to_radians().sin_cos();
        let read = band_read_of_lines(line_fraction(
            mask.spans(),
            meta.sig_shape,
            meta.dtype.size(),
        ));
        with_pixel_type!(meta.dtype, P => Box::new(ComTask::<P> {
            meta: *meta,
            read,
            spans: mask.spans().to_vec(),
            x0: cols.start,
            colsum: vec![Default::default(); cols.len()],
            cx: self.cx,
            cy: self.cy,
            rotation: (self.rotation_deg != 0.0).then_some((cos, sin)),
            flip_y: self.flip_y,
            band: BandSums::default(),
        }))
    }
}

struct ComTask<P: Pixel> {
    meta: UdfMeta,
    /// From the share of cache lines the mask touches.
    read: BandRead,
    spans: Vec<Span>,
    /// First column of the mask's bounding box; `colsum[k]` is column `x0 + k`.
    x0: usize,
    /// Masked column sums of the current frame.
    colsum: Vec<P::Acc>,
    cx: f64,
    cy: f64,
    /// `(cos θ, sin θ)` of the scan rotation, `None` for none.
    rotation: Option<(f64, f64)>,
    flip_y: bool,
    /// Per frame of the chunk fed in row bands: masked column sums, then `(total, y moment)`.
    band: BandSums<P>,
}

/// What row bands accumulate for the frames of one chunk.
struct BandSums<P: Pixel> {
    /// `colsum.len()` masked column sums per frame.
    colsums: Vec<P::Acc>,
    /// `(total, moment_y)` per frame.
    sums: Vec<(u64, u128)>,
}

impl<P: Pixel> Default for BandSums<P> {
    fn default() -> Self {
        Self {
            colsums: Vec::new(),
            sums: Vec::new(),
        }
    }
}

/// The derivative of a `rows × cols` field along rows (`along_rows`) or columns: central
/// differences inside, one-sided at the edges, 0 for an axis of length 1.
fn gradient(f: &[f64], rows: usize, cols: usize, along_rows: bool) -> Vec<f64> {
    let (n, step) = if along_rows { (rows, cols) } else { (cols, 1) };
    (0..rows * cols)
        .map(|i| {
            let k = if along_rows { i / cols } else { i % cols };
            if n < 2 {
                0.0
            } else if k == 0 {
                f[i + step] - f[i]
            } else if k == n - 1 {
                f[i] - f[i - step]
            } else {
                (f[i + step] - f[i - step]) / 2.0
            }
        })
        .collect()
}

impl<P: Pixel> ComTask<P> {
    /// Row of the mask's first span: moments along y are taken from it.
    fn y0(&self) -> u64 {
        self.spans.first().map_or(0, |s| s.row as u64)
    }

    /// Adds the mask's spans in `spans` of `frame` to the column sums `colsum`; returns
    /// `(total, moment_y)` of those spans.
    #[inline]
    fn accumulate(
        &self,
        colsum: &mut [P::Acc],
        frame: &[P],
        spans: &[Span],
        cols: usize,
    ) -> (u64, u128) {
        let y0 = self.y0();
        let mut total = 0u64;
        let mut moment_y = 0u128;
        for s in spans {
            let k = s.start as usize - self.x0..s.end as usize - self.x0;
            let row_sum = P::add_into_sum(&mut colsum[k], &frame[s.range(cols)]);
            total = total.wrapping_add(row_sum);
            moment_y += (s.row as u64 - y0) as u128 * row_sum as u128;
        }
        (total, moment_y)
    }

    /// `(x, y, magnitude)` from a frame's masked column sums, total and y moment.
    fn finish(&self, colsum: &[P::Acc], total: u64, moment_y: u128) -> [f64; 3] {
        if total == 0 {
            return [f64::NAN; 3];
        }
        let moment_x: u128 = colsum
            .iter()
            .enumerate()
            .map(|(k, c)| k as u128 * c.to_u64() as u128)
            .sum();
        let t = total as f64;
        let mut dx = self.x0 as f64 + 0.5 + moment_x as f64 / t - self.cx;
        let mut dy = self.y0() as f64 + 0.5 + moment_y as f64 / t - self.cy;
        if self.flip_y {
            dy = -dy;
        }
        if let Some((cos, sin)) = self.rotation {
            (dx, dy) = (dx * cos - dy * sin, dx * sin + dy * cos);
        }
        [dx, dy, dx.hypot(dy)]
    }

    /// `(x, y, magnitude)` of one frame.
    #[inline]
    fn frame_com(&mut self, frame: &[P], cols: usize) -> [f64; 3] {
        let mut colsum = std::mem::take(&mut self.colsum);
        colsum.fill(P::Acc::default());
        let (total, moment_y) = self.accumulate(&mut colsum, frame, &self.spans, cols);
        let out = self.finish(&colsum, total, moment_y);
        self.colsum = colsum;
        out
    }
}

impl<P: Pixel> PartitionTask for ComTask<P> {
    fn process_frame(&mut self, frame: u64, pixels: PixelsRef<'_>, nav: &mut [f64]) {
        self.process_tile(&TileView::single(frame, self.meta.sig_shape, pixels), nav);
    }

    fn bands(&self) -> bool {
        true
    }

    fn band_read(&self) -> BandRead {
        self.read
    }

    fn process_band(&mut self, tile: &TileView<'_>, rows: Range<usize>, _nav: &mut [f64]) {
        let Some(px) = P::slice(tile.pixels) else {
            return;
        };
        let n = tile.sig_shape.len().max(1);
        let cols = tile.sig_shape.cols;
        let w = self.colsum.len();
        let frames = tile.n_frames.min(px.len() / n);
        let mut band = std::mem::take(&mut self.band);
        if rows.start == 0 {
            band.colsums.clear();
            band.colsums.resize(frames * w, P::Acc::default());
            band.sums.clear();
            band.sums.resize(frames, (0, 0));
        }
        let a = self
            .spans
            .partition_point(|s| (s.row as usize) < rows.start);
        let b = a + self.spans[a..].partition_point(|s| (s.row as usize) < rows.end);
        let spans = &self.spans[a..b];
        if !spans.is_empty() {
            for (i, frame) in px.chunks_exact(n).take(frames).enumerate() {
                let colsum = &mut band.colsums[i * w..(i + 1) * w];
                let (t, my) = self.accumulate(colsum, frame, spans, cols);
                let s = &mut band.sums[i];
                *s = (s.0.wrapping_add(t), s.1 + my);
            }
        }
        self.band = band;
    }

    fn finish_bands(&mut self, _tile: &TileView<'_>, nav: &mut [f64]) {
        let w = self.colsum.len();
        for (i, (out, &(t, my))) in nav.chunks_exact_mut(3).zip(&self.band.sums).enumerate() {
            out.copy_from_slice(&self.finish(&self.band.colsums[i * w..(i + 1) * w], t, my));
        }
    }

    fn process_tile(&mut self, tile: &TileView<'_>, nav: &mut [f64]) {
        let Some(px) = P::slice(tile.pixels) else {
            return;
        };
        let n = tile.sig_shape.len().max(1);
        let cols = tile.sig_shape.cols;
        for (out, frame) in nav.chunks_exact_mut(3).zip(px.chunks_exact(n)) {
            out.copy_from_slice(&self.frame_com(frame, cols));
        }
    }
}
