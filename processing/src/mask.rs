//! Binary detector masks (virtual detectors) and their compact span form.
//!
//! # Pixel convention
//! Pixel `(x, y)` (column `x`, row `y`, row 0 first as stored) covers the square
//! `[x, x+1) × [y, y+1)` in detector coordinates, in pixels; its centre is at
//! `(x + 0.5, y + 0.5)`. So the centre of a 256 × 256 frame is `(128.0, 128.0)`. A mask
//! contains a pixel when the pixel's *centre* lies inside the shape:
//! * `Disk { cx, cy, r }`: `d ≤ r`,
//! * `Ring { cx, cy, r_inner, r_outer }`: `r_inner < d ≤ r_outer`,
//! * `Rectangle { x, y, width, height }`: `x ≤ centre x < x + width` and
//!   `y ≤ centre y < y + height`,
//! * `Polygon { vertices }`: the centre lies inside the closed polygon (even-odd rule),
//! * `Custom(mask)`: the pixel is set in a boolean mask of the frame's shape (e.g. loaded
//!   from a `.npy` file with [`CustomMask::from_npy`]),
//!
//! where `d` is the distance from `(cx, cy)` to the pixel centre. A disk of radius `a` and a
//! ring `a..b` about the same centre are disjoint and together make the disk of radius `b`.
//!
//! Masks are stored as spans (per row, runs of consecutive contained pixels) — the sparse
//! form that pays off for every contiguous shape: a BF disk or an ADF ring covers a small
//! part of a 256 × 256 frame in a few hundred spans, pixels outside the mask are never read,
//! and summing contiguous runs is what the processor does fastest.
//!
//! # Serialised form
//! [`Mask`] (de)serialises with serde, tagged by `shape`: `{"shape": "disk", "cx": 128.0,
//! "cy": 128.0, "r": 20.0}`, `"ring"`, `"rectangle"`, `"polygon"` (`"vertices": [[x, y],
//! …]`) and `"custom"`, whose pixels are written as row runs (`{"shape": "custom",
//! "sig_shape": {"rows": …, "cols": …}, "pixel_count": …, "runs": [[row, start, end], …]}`,
//! columns `start..end`), so a custom mask round-trips exactly without its file.
//! [`MasksParams`] lists the named masks of a [`crate::MasksUdf`].

use crate::pixel::Pixel;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use stemflow_core::SigShape;

/// A boolean mask of one frame's shape, for [`Mask::Custom`]. Read from a `.npy` file
/// with [`CustomMask::from_npy`], which lives with the file formats in [`crate::io`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomMask {
    /// Frame shape the mask is defined on, pixels.
    pub sig_shape: SigShape,
    /// One entry per pixel, row-major; `true` = in the mask.
    pub pixels: Vec<bool>,
}

/// A virtual detector's shape, in detector pixels (see the module doc for the convention
/// and the serialised form). Masks are binary: a pixel is in or out, with weight 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "shape", rename_all = "snake_case")]
pub enum Mask {
    /// Bright field: pixels whose centre is within `r` of `(cx, cy)`.
    Disk {
        /// Centre x (column direction), pixels.
        cx: f64,
        /// Centre y (row direction), pixels.
        cy: f64,
        /// Radius, pixels, ≥ 0.
        r: f64,
    },
    /// Annular dark field: pixels whose centre is farther than `r_inner` but within
    /// `r_outer` of `(cx, cy)`.
    Ring {
        /// Centre x (column direction), pixels.
        cx: f64,
        /// Centre y (row direction), pixels.
        cy: f64,
        /// Inner radius (excluded), pixels, ≥ 0.
        r_inner: f64,
        /// Outer radius (included), pixels, ≥ `r_inner`.
        r_outer: f64,
    },
    /// Pixels whose centre lies in `[x, x + width) × [y, y + height)`.
    Rectangle {
        /// Left edge (column direction), pixels.
        x: f64,
        /// Top edge (row direction, row 0 first), pixels.
        y: f64,
        /// Width, pixels, ≥ 0.
        width: f64,
        /// Height, pixels, ≥ 0.
        height: f64,
    },
    /// Pixels whose centre lies inside the closed polygon through `vertices` `(x, y)`
    /// (pixels; even-odd rule, so self-intersecting outlines make holes). ≥ 3 vertices.
    Polygon {
        /// Corner points `(x, y)` in pixels, in order; the last connects to the first.
        vertices: Vec<(f64, f64)>,
    },
    /// A boolean mask given pixel by pixel; its shape must equal the frame shape.
    /// Serialised as row runs (module doc).
    #[serde(with = "custom_runs")]
    Custom(Arc<CustomMask>),
}

/// The serialised form of [`Mask::Custom`]: the mask's set pixels as row runs, so that a
/// mask from a file (or built in memory) round-trips exactly and compactly.
mod custom_runs {
    use super::CustomMask;
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::sync::Arc;
    use stemflow_core::SigShape;

    /// Largest custom mask accepted when deserialising, pixels: the span form addresses
    /// columns and rows with `u32`, and a bigger mask would be a corrupt document.
    const MAX_PIXELS: usize = u32::MAX as usize;

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Runs {
        /// Frame shape of the mask, pixels.
        sig_shape: SigShape,
        /// Pixels in the mask (a check on `runs`).
        pixel_count: usize,
        /// `[row, start, end]`: columns `start..end` of `row` are in the mask.
        runs: Vec<[usize; 3]>,
    }

    pub fn serialize<S: Serializer>(m: &Arc<CustomMask>, s: S) -> Result<S::Ok, S::Error> {
        let cols = m.sig_shape.cols;
        let mut runs = Vec::new();
        for (row, line) in m.pixels.chunks(cols.max(1)).enumerate() {
            let mut start = None;
            for (x, &on) in line.iter().chain([&false]).enumerate() {
                match (on, start) {
                    (true, None) => start = Some(x),
                    (false, Some(a)) => {
                        runs.push([row, a, x]);
                        start = None;
                    }
                    _ => {}
                }
            }
        }
        Runs {
            sig_shape: m.sig_shape,
            pixel_count: m.pixels.iter().filter(|&&p| p).count(),
            runs,
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<CustomMask>, D::Error> {
        let r = Runs::deserialize(d)?;
        let sig = r.sig_shape;
        let n = sig
            .rows
            .checked_mul(sig.cols)
            .filter(|&n| n <= MAX_PIXELS)
            .ok_or_else(|| {
                D::Error::custom(format!(
                    "custom mask of {sig} pixels exceeds the {MAX_PIXELS} pixels allowed"
                ))
            })?;
        let mut pixels = vec![false; n];
        for &[row, start, end] in &r.runs {
            if row >= sig.rows || start >= end || end > sig.cols {
                return Err(D::Error::custom(format!(
                    "custom mask run [{row}, {start}, {end}] is not a non-empty run of columns inside a {sig} frame"
                )));
            }
            pixels[row * sig.cols + start..row * sig.cols + end].fill(true);
        }
        let count = pixels.iter().filter(|&&p| p).count();
        if count != r.pixel_count {
            return Err(D::Error::custom(format!(
                "custom mask declares {} pixels but its runs cover {count}",
                r.pixel_count
            )));
        }
        Ok(Arc::new(CustomMask {
            sig_shape: sig,
            pixels,
        }))
    }
}

/// The parameters of [`crate::MasksUdf`]: its virtual detectors, one nav buffer each, in
/// buffer order. Serialised as `{"masks": [{"name": "bf", "mask": {"shape": "disk", …},
/// "source": null}, …]}` (see the module doc for the masks' form).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasksParams {
    /// The masks with their buffer names; names unique, at least one.
    pub masks: Vec<NamedMask>,
}

/// One virtual detector of [`MasksParams`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedMask {
    /// Buffer name of the mask's sums (e.g. `bf`, `adf`).
    pub name: String,
    /// The mask's geometry, pixels; a custom mask with all its pixels.
    pub mask: Mask,
    /// For a [`Mask::Custom`] read from a file, that file (`.npy`): a record of where the
    /// mask came from. `mask` holds the pixels actually used, which are not read again from
    /// it. `None` for masks given by geometry or built in memory.
    #[serde(default)]
    pub source: Option<PathBuf>,
}

impl Mask {
    /// True when pixel `(x, y)` (column, row) belongs to the mask.
    pub fn contains(&self, x: usize, y: usize) -> bool {
        let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
        match self {
            Mask::Disk { .. } | Mask::Ring { .. } => {
                let (cx, cy, lo2, hi2, inclusive_lo) = self.bounds2();
                let dx = px - cx;
                let dy = py - cy;
                let d2 = dx * dx + dy * dy;
                let above = if inclusive_lo { d2 >= lo2 } else { d2 > lo2 };
                above && d2 <= hi2
            }
            Mask::Rectangle {
                x: x0,
                y: y0,
                width,
                height,
            } => px >= *x0 && px < x0 + width && py >= *y0 && py < y0 + height,
            Mask::Polygon { vertices } => {
                let mut inside = false;
                let n = vertices.len();
                for i in 0..n {
                    let (xi, yi) = vertices[i];
                    let (xj, yj) = vertices[(i + n - 1) % n];
                    if (yi > py) != (yj > py) && px < (xj - xi) * (py - yi) / (yj - yi) + xi {
                        inside = !inside;
                    }
                }
                inside
            }
            Mask::Custom(m) => {
                x < m.sig_shape.cols && y < m.sig_shape.rows && m.pixels[y * m.sig_shape.cols + x]
            }
        }
    }

    /// `(cx, cy, lower d², upper d², lower bound inclusive)` of a disk or ring.
    fn bounds2(&self) -> (f64, f64, f64, f64, bool) {
        match *self {
            Mask::Disk { cx, cy, r } => (cx, cy, 0.0, r * r, true),
            Mask::Ring {
                cx,
                cy,
                r_inner,
                r_outer,
            } => (cx, cy, r_inner * r_inner, r_outer * r_outer, false),
            _ => (0.0, 0.0, 0.0, 0.0, true),
        }
    }

    /// Bounding box `(x_min, y_min, x_max, y_max)` in pixels (conservative).
    fn bbox(&self) -> (f64, f64, f64, f64) {
        match self {
            Mask::Disk { cx, cy, r } => (cx - r, cy - r, cx + r, cy + r),
            Mask::Ring {
                cx, cy, r_outer, ..
            } => (cx - r_outer, cy - r_outer, cx + r_outer, cy + r_outer),
            Mask::Rectangle {
                x,
                y,
                width,
                height,
            } => (*x, *y, x + width, y + height),
            Mask::Polygon { vertices } => vertices.iter().fold(
                (f64::MAX, f64::MAX, f64::MIN, f64::MIN),
                |(a, b, c, d), &(x, y)| (a.min(x), b.min(y), c.max(x), d.max(y)),
            ),
            Mask::Custom(m) => (0.0, 0.0, m.sig_shape.cols as f64, m.sig_shape.rows as f64),
        }
    }

    /// Checks the parameters against a frame of `sig` (a custom mask must have its shape).
    ///
    /// # Errors
    /// As [`Mask::check`], plus a custom mask of another shape.
    pub fn check_for(&self, sig: SigShape) -> Result<(), String> {
        self.check()?;
        match self {
            Mask::Custom(m) if m.sig_shape != sig => Err(format!(
                "custom mask of {} pixels does not fit frames of {} pixels",
                m.sig_shape, sig
            )),
            _ => Ok(()),
        }
    }

    /// Checks the parameters.
    ///
    /// # Errors
    /// A sentence naming the bad parameter and its value: non-finite numbers, negative
    /// radii or sizes, `r_inner > r_outer`, a polygon of fewer than 3 vertices, a custom
    /// mask whose pixel count does not match its shape.
    pub fn check(&self) -> Result<(), String> {
        let rect;
        let poly: Vec<(String, f64)>;
        let params: &[(&str, f64)] = match self {
            Mask::Rectangle {
                x,
                y,
                width,
                height,
            } => {
                if !(*width >= 0.0 && *height >= 0.0) {
                    return Err(format!(
                        "rectangle width and height must be ≥ 0 pixels, got {width} × {height}"
                    ));
                }
                rect = [("x", *x), ("y", *y), ("width", *width), ("height", *height)];
                &rect
            }
            Mask::Polygon { vertices } => {
                if vertices.len() < 3 {
                    return Err(format!(
                        "a polygon needs at least 3 vertices, got {}",
                        vertices.len()
                    ));
                }
                poly = vertices
                    .iter()
                    .enumerate()
                    .flat_map(|(i, &(x, y))| [(format!("x{i}"), x), (format!("y{i}"), y)])
                    .collect();
                if let Some((name, v)) = poly.iter().find(|(_, v)| !v.is_finite()) {
                    return Err(format!("polygon vertex {name} must be finite, got {v}"));
                }
                &[]
            }
            Mask::Custom(m) => {
                if m.pixels.len() != m.sig_shape.len() {
                    return Err(format!(
                        "custom mask of shape {} holds {} pixels, expected {}",
                        m.sig_shape,
                        m.pixels.len(),
                        m.sig_shape.len()
                    ));
                }
                &[]
            }
            Mask::Disk { cx, cy, r } => &[("cx", *cx), ("cy", *cy), ("r", *r)],
            Mask::Ring {
                cx,
                cy,
                r_inner,
                r_outer,
            } => &[
                ("cx", *cx),
                ("cy", *cy),
                ("r_inner", *r_inner),
                ("r_outer", *r_outer),
            ],
        };
        for &(name, v) in params {
            if !v.is_finite() {
                return Err(format!("mask parameter {name} must be finite, got {v}"));
            }
        }
        match *self {
            Mask::Disk { r, .. } if r < 0.0 => {
                Err(format!("disk radius r must be ≥ 0 pixels, got {r}"))
            }
            Mask::Ring {
                r_inner, r_outer, ..
            } if r_inner < 0.0 || r_outer < r_inner => Err(format!(
                "ring radii must satisfy 0 ≤ r_inner ≤ r_outer, got r_inner = {r_inner}, r_outer = {r_outer} pixels"
            )),
            _ => Ok(()),
        }
    }

    /// The mask on a frame of `sig`, as spans (empty for parameters that fail
    /// [`Mask::check`]).
    pub fn spans(&self, sig: SigShape) -> SpanMask {
        let mut spans = Vec::new();
        if self.check().is_ok() {
            let (x0, y0, x1, y1) = self.bbox();
            // Conservative bounding box; the predicate decides each pixel inside it.
            let clip = |lo: f64, hi: f64, n: usize| {
                let lo = (lo.floor().max(0.0) as usize).min(n);
                let hi = (hi.ceil().max(0.0) as usize).min(n);
                lo..hi
            };
            let rows = clip(y0 - 1.0, y1 + 1.0, sig.rows);
            let cols = clip(x0 - 1.0, x1 + 1.0, sig.cols);
            for y in rows {
                let mut run_start = None;
                for x in cols.clone() {
                    match (self.contains(x, y), run_start) {
                        (true, None) => run_start = Some(x),
                        (false, Some(s)) => {
                            spans.push(Span::new(y, s, x));
                            run_start = None;
                        }
                        _ => {}
                    }
                }
                if let Some(s) = run_start {
                    spans.push(Span::new(y, s, cols.end));
                }
            }
        }
        SpanMask { sig, spans }
    }
}

/// A run of consecutive mask pixels in one row: columns `start..end` of row `row`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Row (y), pixels.
    pub row: u32,
    /// First column (x) in the run.
    pub start: u32,
    /// One past the last column in the run.
    pub end: u32,
}

impl Span {
    fn new(row: usize, start: usize, end: usize) -> Self {
        // Shapes beyond 2^32 pixels per side do not exist; saturate rather than wrap.
        let c = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        Self {
            row: c(row),
            start: c(start),
            end: c(end),
        }
    }
    /// Pixels in the run.
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }
    /// True for an empty run (never produced by [`Mask::spans`]).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
    /// Element range of the run in a row-major frame with `cols` columns.
    #[inline]
    pub fn range(&self, cols: usize) -> std::ops::Range<usize> {
        let base = self.row as usize * cols;
        base + self.start as usize..base + self.end as usize
    }
}

/// The fraction (0–1) of a frame's 64-byte cache lines that hold at least one pixel of
/// `spans` (of any of several masks), for a frame of `sig` pixels of `elem_bytes` bytes
/// each starting on a line: how much of a frame a task reading only those pixels touches.
pub fn line_fraction<'a>(
    spans: impl IntoIterator<Item = &'a Span>,
    sig: SigShape,
    elem_bytes: usize,
) -> f64 {
    let bytes = sig.len() * elem_bytes;
    let lines = bytes.div_ceil(64);
    if lines == 0 {
        return 0.0;
    }
    let mut hit = vec![false; lines];
    for s in spans {
        let r = s.range(sig.cols);
        if r.is_empty() {
            continue;
        }
        let first = (r.start * elem_bytes / 64).min(lines - 1);
        let last = ((r.end * elem_bytes - 1) / 64).min(lines - 1);
        hit[first..=last].fill(true);
    }
    hit.iter().filter(|&&h| h).count() as f64 / lines as f64
}

/// A binary mask on a frame of a given shape, as row spans, ordered by row then column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanMask {
    sig: SigShape,
    spans: Vec<Span>,
}

impl SpanMask {
    /// The mask made of `spans` (by row, then column) on frames of `sig`.
    pub(crate) fn from_spans(sig: SigShape, spans: Vec<Span>) -> Self {
        Self { sig, spans }
    }
    /// The spans, by row then column.
    pub fn spans(&self) -> &[Span] {
        &self.spans
    }
    /// Frame shape the mask was made for.
    pub fn sig_shape(&self) -> SigShape {
        self.sig
    }
    /// Number of pixels in the mask.
    pub fn pixel_count(&self) -> usize {
        self.spans.iter().map(Span::len).sum()
    }
    /// Columns `min start..max end` over all spans (empty range for an empty mask).
    pub fn col_range(&self) -> std::ops::Range<usize> {
        let lo = self.spans.iter().map(|s| s.start).min().unwrap_or(0) as usize;
        let hi = self.spans.iter().map(|s| s.end).max().unwrap_or(0) as usize;
        lo..hi.max(lo)
    }
    /// The spans in rows `rows` (a row band), by row then column.
    #[inline]
    pub fn spans_in_rows(&self, rows: std::ops::Range<usize>) -> &[Span] {
        let a = self
            .spans
            .partition_point(|s| (s.row as usize) < rows.start);
        let b = a + self.spans[a..].partition_point(|s| (s.row as usize) < rows.end);
        &self.spans[a..b]
    }
    /// Exact sum of `frame`'s pixels under the mask (`frame` has `sig_shape().len()`
    /// elements).
    #[inline]
    pub fn sum<P: Pixel>(&self, frame: &[P]) -> u64 {
        P::spans_sum(frame, &self.spans, self.sig.cols)
    }
    /// [`SpanMask::sum`] over the spans in rows `rows` only (a row band).
    #[inline]
    pub fn sum_rows<P: Pixel>(&self, frame: &[P], rows: std::ops::Range<usize>) -> u64 {
        let a = self
            .spans
            .partition_point(|s| (s.row as usize) < rows.start);
        let b = a + self.spans[a..].partition_point(|s| (s.row as usize) < rows.end);
        P::spans_sum(frame, &self.spans[a..b], self.sig.cols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pixels(m: &SpanMask) -> Vec<(usize, usize)> {
        m.spans()
            .iter()
            .flat_map(|s| (s.start..s.end).map(move |x| (x as usize, s.row as usize)))
            .collect()
    }

    #[test]
    fn pixel_centres_decide_membership() {
        let sig = SigShape::new(4, 4);
        // Centre (2, 2) is the corner shared by pixels (1,1), (2,1), (1,2), (2,2); their
        // centres are √0.5 ≈ 0.707 away, the next ring of centres √2.5 ≈ 1.58 away.
        let small = Mask::Disk {
            cx: 2.0,
            cy: 2.0,
            r: 1.0,
        }
        .spans(sig);
        assert_eq!(pixels(&small), vec![(1, 1), (2, 1), (1, 2), (2, 2)]);
        let bigger = Mask::Disk {
            cx: 2.0,
            cy: 2.0,
            r: 1.6,
        }
        .spans(sig);
        assert_eq!(bigger.pixel_count(), 12);
        // Centred on pixel (1, 1)'s centre, radius 0.5 reaches exactly the 4 neighbours'
        // edges but not their centres (1.0 away): only the pixel itself; radius 1.0
        // includes the 4 neighbours (d = 1 ≤ r).
        let one = Mask::Disk {
            cx: 1.5,
            cy: 1.5,
            r: 0.5,
        }
        .spans(sig);
        assert_eq!(pixels(&one), vec![(1, 1)]);
        let plus = Mask::Disk {
            cx: 1.5,
            cy: 1.5,
            r: 1.0,
        }
        .spans(sig);
        assert_eq!(pixels(&plus), vec![(1, 0), (0, 1), (1, 1), (2, 1), (1, 2)]);
        // The ring excludes its inner radius: the centre pixel (d = 0) is out, the four
        // neighbours (d = 1) are in.
        let ring = Mask::Ring {
            cx: 1.5,
            cy: 1.5,
            r_inner: 0.5,
            r_outer: 1.0,
        }
        .spans(sig);
        assert_eq!(pixels(&ring), vec![(1, 0), (0, 1), (2, 1), (1, 2)]);
    }

    #[test]
    fn disk_and_ring_partition_the_outer_disk() {
        let sig = SigShape::new(64, 80);
        let (cx, cy) = (37.3, 30.9);
        let inner = Mask::Disk { cx, cy, r: 9.0 }.spans(sig);
        let ring = Mask::Ring {
            cx,
            cy,
            r_inner: 9.0,
            r_outer: 21.5,
        }
        .spans(sig);
        let outer = Mask::Disk { cx, cy, r: 21.5 }.spans(sig);
        let mut union = pixels(&inner);
        union.extend(pixels(&ring));
        union.sort_by_key(|&(x, y)| (y, x));
        assert_eq!(union, pixels(&outer));
        assert_eq!(
            inner.pixel_count() + ring.pixel_count(),
            outer.pixel_count()
        );
    }

    #[test]
    fn spans_match_the_predicate_and_clip_at_edges() {
        let sig = SigShape::new(20, 30);
        let m = Mask::Ring {
            cx: 2.0,
            cy: 18.5,
            r_inner: 3.0,
            r_outer: 12.2,
        };
        let s = m.spans(sig);
        let mut naive = Vec::new();
        for y in 0..20 {
            for x in 0..30 {
                let d = ((x as f64 + 0.5 - 2.0).powi(2) + (y as f64 + 0.5 - 18.5).powi(2)).sqrt();
                if d > 3.0 && d <= 12.2 {
                    naive.push((x, y));
                }
            }
        }
        assert_eq!(pixels(&s), naive);
        let frame: Vec<u16> = (0..600).map(|i| (i * 7 % 101) as u16).collect();
        let want: u64 = naive.iter().map(|&(x, y)| frame[y * 30 + x] as u64).sum();
        assert_eq!(s.sum(&frame), want);
        // Wholly outside the frame: no spans, no panic.
        assert_eq!(
            Mask::Disk {
                cx: -50.0,
                cy: 5.0,
                r: 3.0
            }
            .spans(sig)
            .pixel_count(),
            0
        );
    }

    #[test]
    fn bad_parameters_are_reported() {
        assert!(
            Mask::Disk {
                cx: 1.0,
                cy: 1.0,
                r: -1.0
            }
            .check()
            .unwrap_err()
            .contains("r must be")
        );
        let e = Mask::Ring {
            cx: 1.0,
            cy: 1.0,
            r_inner: 5.0,
            r_outer: 2.0,
        }
        .check()
        .unwrap_err();
        assert!(e.contains("r_inner = 5"), "{e}");
        assert!(
            Mask::Disk {
                cx: f64::NAN,
                cy: 1.0,
                r: 1.0
            }
            .check()
            .unwrap_err()
            .contains("cx")
        );
        assert!(
            Mask::Disk {
                cx: f64::NAN,
                cy: 1.0,
                r: 1.0
            }
            .spans(SigShape::new(4, 4))
            .spans()
            .is_empty()
        );
    }
}

#[cfg(test)]
mod polygon_tests {
    use super::*;

    #[test]
    fn triangle_pixels_match_a_sign_test() {
        // Vertices off the half-pixel grid: no pixel centre lies on an edge, where
        // conventions differ.
        let tri = vec![(2.1, 2.3), (15.2, 4.1), (6.3, 13.9)];
        let sig = SigShape::new(17, 19);
        let m = Mask::Polygon {
            vertices: tri.clone(),
        };
        let spans = m.spans(sig);
        let mut got = Vec::new();
        for s in spans.spans() {
            for x in s.start..s.end {
                got.push((x as usize, s.row as usize));
            }
        }
        let mut want = Vec::new();
        for y in 0..17 {
            for x in 0..19 {
                let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
                let s = |(ax, ay): (f64, f64), (bx, by): (f64, f64)| {
                    (bx - ax) * (py - ay) - (by - ay) * (px - ax)
                };
                let (a, b, c) = (s(tri[0], tri[1]), s(tri[1], tri[2]), s(tri[2], tri[0]));
                if (a > 0.0 && b > 0.0 && c > 0.0) || (a < 0.0 && b < 0.0 && c < 0.0) {
                    want.push((x, y));
                }
            }
        }
        assert_eq!(got, want);
    }
}

#[cfg(test)]
mod serde_tests {
    use super::*;

    fn round_trip(m: &Mask) -> Mask {
        let v = serde_json::to_value(m).unwrap();
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn masks_round_trip_through_json() {
        let disk = Mask::Disk {
            cx: 12.25,
            cy: 7.5,
            r: 3.0,
        };
        assert_eq!(
            serde_json::to_value(&disk).unwrap(),
            serde_json::json!({"shape": "disk", "cx": 12.25, "cy": 7.5, "r": 3.0})
        );
        let ring = Mask::Ring {
            cx: 1.0,
            cy: 2.0,
            r_inner: 3.0,
            r_outer: 4.5,
        };
        let rect = Mask::Rectangle {
            x: 0.5,
            y: 1.5,
            width: 4.0,
            height: 2.0,
        };
        let poly = Mask::Polygon {
            vertices: vec![(0.0, 0.0), (5.5, 1.0), (2.0, 6.25)],
        };
        assert_eq!(
            serde_json::to_value(&poly).unwrap()["vertices"],
            serde_json::json!([[0.0, 0.0], [5.5, 1.0], [2.0, 6.25]])
        );
        // Runs that end at a row's last column and start at its first.
        let sig = SigShape::new(3, 5);
        let pixels = [
            1, 1, 0, 1, 1, //
            0, 0, 0, 0, 0, //
            1, 1, 1, 1, 1,
        ]
        .iter()
        .map(|&p| p == 1)
        .collect();
        let custom = Mask::Custom(Arc::new(CustomMask {
            sig_shape: sig,
            pixels,
        }));
        let v = serde_json::to_value(&custom).unwrap();
        assert_eq!(v["pixel_count"], 9);
        assert_eq!(
            v["runs"],
            serde_json::json!([[0, 0, 2], [0, 3, 5], [2, 0, 5]])
        );
        for m in [disk, ring, rect, poly, custom] {
            assert_eq!(round_trip(&m), m);
        }
    }

    #[test]
    fn corrupt_custom_masks_are_refused() {
        let bad = [
            // A run past the row's end.
            serde_json::json!({"shape": "custom", "sig_shape": {"rows": 2, "cols": 3},
                "pixel_count": 4, "runs": [[0, 0, 4]]}),
            // A count that does not match the runs.
            serde_json::json!({"shape": "custom", "sig_shape": {"rows": 2, "cols": 3},
                "pixel_count": 5, "runs": [[0, 0, 3]]}),
            // A row outside the frame.
            serde_json::json!({"shape": "custom", "sig_shape": {"rows": 2, "cols": 3},
                "pixel_count": 1, "runs": [[2, 0, 1]]}),
            // A frame too large to allocate.
            serde_json::json!({"shape": "custom",
                "sig_shape": {"rows": 1u64 << 40, "cols": 1u64 << 40},
                "pixel_count": 0, "runs": []}),
            serde_json::json!({"shape": "star", "r": 1.0}),
        ];
        for v in bad {
            assert!(serde_json::from_value::<Mask>(v.clone()).is_err(), "{v}");
        }
    }
}
