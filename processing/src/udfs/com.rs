//! [`ComUdf`]: centre of mass of each frame inside a disk (differential phase contrast).

use crate::mask::{Mask, Span, SpanMask, line_fraction};
use crate::pixel::{Accum, FloatPixel, Pixel};
use crate::result::ResultBuffer;
use crate::udf::{
    BandRead, BufferDecl, Fusable, LinearTerms, PartitionTask, TileView, Udf, UdfMeta, Weight,
    band_read_of_lines,
};
use crate::with_pixel_type;
use serde::{Deserialize, Serialize};
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
/// NaN for a frame whose masked sum is zero.
///
/// * Integer pixels (u8–u64): the moments Σ I, Σ I·x, Σ I·y are exact integers; only the
///   final division is floating point, so a frame's values never depend on how frames
///   were split into tiles.
/// * Float pixels (f32, f64): the moments accumulate in `f64` (each mask span in 8 lanes,
///   the spans in row order, the same whether a frame is fed whole or in row bands), then
///   go through the same division, flip and rotation as for integers: integer values
///   stored as floats give the integer path's results bit for bit (below 2^53). Negative
///   pixels are signed weights: the result is Σ I·x / Σ I with I of either sign, which can
///   lie outside the disk, and is NaN when Σ I is exactly 0 (and huge when it nearly
///   cancels). A NaN pixel inside the disk makes that frame's shift NaN (pixels outside
///   the disk are never read).
#[derive(Clone, Debug)]
pub struct ComUdf {
    name: String,
    cx: f64,
    cy: f64,
    mask_radius: f64,
    rotation_deg: f64,
    flip_y: bool,
}

/// The parameters of [`ComUdf`], in detector pixels and degrees; serialised as
/// `{"cx": …, "cy": …, "mask_radius": …, "scan_rotation_deg": …, "flip_y": …}`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// The parameters, every one resolved (no rotation: 0 degrees).
    pub fn to_params(&self) -> ComParams {
        ComParams {
            cx: self.cx,
            cy: self.cy,
            mask_radius: self.mask_radius,
            scan_rotation_deg: self.rotation_deg,
            flip_y: self.flip_y,
        }
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
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(self.to_params()).unwrap_or(serde_json::Value::Null)
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
        // Integer column sums take at most one pixel per row per frame. Float moments
        // accumulate in f64: no integer lanes to overflow, so no limit on the rows.
        let headroom: Option<u64> = with_pixel_type!(
            meta.dtype,
            P => Some(P::ACC_HEADROOM),
            F => {
                debug_assert!(F::DTYPE.is_float());
                None
            }
        );
        if let Some(headroom) = headroom
            && meta.sig_shape.rows as u64 > headroom
        {
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
        let shift = Shift {
            x0: cols.start,
            y0: mask.spans().first().map_or(0, |s| s.row as u64),
            cx: self.cx,
            cy: self.cy,
            rotation: (self.rotation_deg != 0.0).then_some((cos, sin)),
            flip_y: self.flip_y,
        };
        with_pixel_type!(meta.dtype, P => Box::new(ComTask::<P> {
            meta: *meta,
            read,
            spans: mask.spans().to_vec(),
            x0: cols.start,
            colsum: vec![Default::default(); cols.len()],
            shift,
            band: BandSums::default(),
        }), F => Box::new(FloatComTask::<F> {
            meta: *meta,
            read,
            spans: mask.spans().to_vec(),
            xs: (0..cols.len()).map(|k| k as f64).collect(),
            shift,
            band: Vec::new(),
            _pixel: std::marker::PhantomData,
        }))
    }
}

/// The post-step both pixel paths share: from a frame's moments to the shift vector.
#[derive(Clone, Copy, Debug)]
struct Shift {
    /// First column of the mask's bounding box: x moments are taken from it.
    x0: usize,
    /// Row of the mask's first span: y moments are taken from it.
    y0: u64,
    cx: f64,
    cy: f64,
    /// `(cos θ, sin θ)` of the scan rotation, `None` for none.
    rotation: Option<(f64, f64)>,
    flip_y: bool,
}

impl Shift {
    /// `(x, y, magnitude)` from the total `t` and the moments `mx` = Σ I·(x − x0),
    /// `my` = Σ I·(y − y0) (pixel indices); NaN for `t == 0`.
    #[inline]
    fn of(&self, t: f64, mx: f64, my: f64) -> [f64; 3] {
        if t == 0.0 {
            return [f64::NAN; 3];
        }
        let mut dx = self.x0 as f64 + 0.5 + mx / t - self.cx;
        let mut dy = self.y0 as f64 + 0.5 + my / t - self.cy;
        if self.flip_y {
            dy = -dy;
        }
        if let Some((cos, sin)) = self.rotation {
            (dx, dy) = (dx * cos - dy * sin, dx * sin + dy * cos);
        }
        [dx, dy, dx.hypot(dy)]
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
    /// Reference position, flip and rotation.
    shift: Shift,
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
        self.shift.y0
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
        self.shift
            .of(total as f64, moment_x as f64, moment_y as f64)
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

    fn fusable(&self) -> Option<Fusable> {
        Some(Fusable::Linear(vec![LinearTerms {
            support: Some(SpanMask::from_spans(
                self.meta.sig_shape,
                self.spans.clone(),
            )),
            weights: vec![Weight::One, Weight::Column, Weight::Row],
        }]))
    }

    fn take_linear(&mut self, _tile: &TileView<'_>, sums: &[u64], nav: &mut [f64]) {
        let (x0, y0) = (self.x0 as u128, self.y0() as u128);
        for (out, s) in nav.chunks_exact_mut(3).zip(sums.chunks_exact(3)) {
            let total = s[0] as u128;
            // Every masked pixel lies at or right of x0 and at or below y0: the moments
            // from (x0, y0) are the same integers the band path sums.
            let mx = (s[1] as u128).wrapping_sub(x0 * total);
            let my = (s[2] as u128).wrapping_sub(y0 * total);
            out.copy_from_slice(&self.shift.of(total as f64, mx as f64, my as f64));
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

/// CoM on float pixels: per frame the moments `(Σ I, Σ I·(x − x0), Σ I·(y − y0))` in `f64`.
struct FloatComTask<F: FloatPixel> {
    meta: UdfMeta,
    /// From the share of cache lines the mask touches.
    read: BandRead,
    spans: Vec<Span>,
    /// `xs[k] = k`: the x weight of column `x0 + k`.
    xs: Vec<f64>,
    shift: Shift,
    /// Per frame of the chunk fed in row bands: its moments so far.
    band: Vec<[f64; 3]>,
    _pixel: std::marker::PhantomData<F>,
}

/// `(Σ v, Σ v·x)` of a run of pixels `v` with x weights `xs` (`xs.len() == v.len()`), in
/// eight `f64` lanes (vectorises), then the lanes in order, then the remainder.
#[inline]
fn run_moments<F: FloatPixel>(v: &[F], xs: &[f64]) -> (f64, f64) {
    let mut s = [0f64; 8];
    let mut m = [0f64; 8];
    let mut vc = v.chunks_exact(8);
    let mut xc = xs.chunks_exact(8);
    for (a, b) in (&mut vc).zip(&mut xc) {
        for i in 0..8 {
            let f = a[i].to_f64();
            s[i] += f;
            m[i] += f * b[i];
        }
    }
    let (mut ts, mut tm) = (0.0, 0.0);
    for i in 0..8 {
        ts += s[i];
        tm += m[i];
    }
    for (&a, &b) in vc.remainder().iter().zip(xc.remainder()) {
        let f = a.to_f64();
        ts += f;
        tm += f * b;
    }
    (ts, tm)
}

impl<F: FloatPixel> FloatComTask<F> {
    /// Adds the moments of `frame` (a frame of `cols` columns) under `spans` to `acc`, span
    /// after span: the same additions in the same order whether the spans come all at
    /// once or band by band.
    #[inline]
    fn accumulate(&self, acc: &mut [f64; 3], frame: &[F], spans: &[Span], cols: usize) {
        let (x0, y0) = (self.shift.x0, self.shift.y0);
        for s in spans {
            let k = s.start as usize - x0..s.end as usize - x0;
            let (t, mx) = run_moments(&frame[s.range(cols)], &self.xs[k]);
            acc[0] += t;
            acc[1] += mx;
            acc[2] += (s.row as u64 - y0) as f64 * t;
        }
    }
}

impl<F: FloatPixel> PartitionTask for FloatComTask<F> {
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
        let Some(px) = F::slice(tile.pixels) else {
            return;
        };
        let n = tile.sig_shape.len().max(1);
        let cols = tile.sig_shape.cols;
        let frames = tile.n_frames.min(px.len() / n);
        let mut band = std::mem::take(&mut self.band);
        if rows.start == 0 {
            band.clear();
            band.resize(frames, [0.0; 3]);
        }
        let a = self
            .spans
            .partition_point(|s| (s.row as usize) < rows.start);
        let b = a + self.spans[a..].partition_point(|s| (s.row as usize) < rows.end);
        let spans = &self.spans[a..b];
        if !spans.is_empty() {
            for (acc, frame) in band.iter_mut().zip(px.chunks_exact(n)) {
                self.accumulate(acc, frame, spans, cols);
            }
        }
        self.band = band;
    }

    fn finish_bands(&mut self, _tile: &TileView<'_>, nav: &mut [f64]) {
        for (out, &[t, mx, my]) in nav.chunks_exact_mut(3).zip(&self.band) {
            out.copy_from_slice(&self.shift.of(t, mx, my));
        }
    }

    fn process_tile(&mut self, tile: &TileView<'_>, nav: &mut [f64]) {
        let Some(px) = F::slice(tile.pixels) else {
            return;
        };
        let n = tile.sig_shape.len().max(1);
        let cols = tile.sig_shape.cols;
        for (out, frame) in nav.chunks_exact_mut(3).zip(px.chunks_exact(n)) {
            let mut acc = [0.0; 3];
            self.accumulate(&mut acc, frame, &self.spans, cols);
            let [t, mx, my] = acc;
            out.copy_from_slice(&self.shift.of(t, mx, my));
        }
    }
}
