//! Figures of results for people to look at: a scan map enlarged to a viewable size in a
//! perceptually uniform colour map with a colour bar (tick values and unit), a title and,
//! when the scan is calibrated, a scale bar; a line plot for an unshaped scan (one value per
//! frame); the mean diffraction pattern on a log scale; and an overview that tiles them.
//!
//! Colour maps come from `colorous` (d3-scale-chromatic's): viridis for intensities,
//! blue–white–red (ColorBrewer RdBu, reversed so that negative is blue) for signed maps
//! centred on zero, inferno for the log-scaled diffraction pattern. Text is the 8 × 8
//! bitmap font of `font8x8`; pictures are drawn on our [`canvas::Canvas`] and written with
//! the `png` crate (decision 0020).
//!
//! - `canvas`: the RGB picture, text, PNG encoding.
//! - `ticks`: tick values and labels, scale-bar lengths.

pub mod canvas;
mod ticks;

use canvas::{BLACK, Canvas, GLYPH, NAN_GREY, Rect, Rgb, WHITE, text_width};
use std::borrow::Cow;

/// Colour of the line of a line plot.
const LINE: Rgb = [31, 119, 180];
/// Colour of the zero line of a signed line plot.
const ZERO_LINE: Rgb = [170, 170, 170];

/// How values become colours: the colour map and the values at its two ends. Values beyond
/// the ends take the end colours; NaN is grey ([`canvas::NAN_GREY`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ColourScale {
    /// viridis, linear: `lo` → its dark end, `hi` → its bright end. `lo == hi` (a constant
    /// map): every value is the middle colour.
    Sequential {
        /// Value shown as the dark end.
        lo: f64,
        /// Value shown as the bright end.
        hi: f64,
    },
    /// Blue–white–red (RdBu reversed), linear and symmetric about zero: `-limit` → blue,
    /// 0 → the map's centre, `+limit` → red.
    Diverging {
        /// Value shown as the red end (its negative as the blue end); > 0.
        limit: f64,
    },
    /// inferno on `log10(value)`: `lo` (> 0) → dark, `hi` → bright; zero and negative
    /// values → dark.
    Log {
        /// Value shown as the dark end, > 0.
        lo: f64,
        /// Value shown as the bright end, ≥ `lo`.
        hi: f64,
    },
}

impl ColourScale {
    /// The scale of a scan map, with the same limits as its grey PNG and the live view
    /// ([`crate::output::scaling_for`]): diverging about zero at the 99th percentile of
    /// `|value|` when any value is negative, else viridis between the 0.5th and 99.5th
    /// percentiles.
    pub fn for_map(data: &[f64]) -> Self {
        use stemflow_recording::png::{Scaling, to_grey8};
        let scaling = crate::output::scaling_for(data);
        let (_, range) = to_grey8(data, scaling);
        match scaling {
            Scaling::Diverging { .. } => Self::Diverging {
                limit: range.white.abs().max(range.black.abs()),
            },
            Scaling::Percentile { .. } => Self::Sequential {
                lo: range.black,
                hi: range.white,
            },
        }
    }

    /// The log scale of a diffraction pattern: from its largest value down to its 0.5th
    /// percentile of positive values, at most 5 decades. A pattern without a positive
    /// value (a dark recording) gets a constant [`ColourScale::Sequential`].
    pub fn for_pattern(data: &[f64]) -> Self {
        let mut positive: Vec<f64> = data
            .iter()
            .copied()
            .filter(|v| v.is_finite() && *v > 0.0)
            .collect();
        positive.sort_unstable_by(f64::total_cmp);
        let Some(&hi) = positive.last() else {
            return Self::Sequential { lo: 0.0, hi: 0.0 };
        };
        let rank = ((positive.len() - 1) as f64 * 0.005).round() as usize;
        let lo = positive[rank].max(hi * 1e-5);
        Self::Log { lo, hi }
    }

    /// Where `v` lies on the colour map, 0 (first colour) to 1 (last); `None` for NaN and
    /// ±inf.
    pub fn position(&self, v: f64) -> Option<f64> {
        if !v.is_finite() {
            return None;
        }
        let t = match *self {
            Self::Sequential { lo, hi } if hi > lo => (v - lo) / (hi - lo),
            Self::Sequential { .. } => 0.5,
            Self::Diverging { limit } if limit > 0.0 => 0.5 + v / (2.0 * limit),
            Self::Diverging { .. } => 0.5,
            Self::Log { lo, hi } if hi > lo && lo > 0.0 => {
                if v <= 0.0 {
                    0.0
                } else {
                    (v / lo).log10() / (hi / lo).log10()
                }
            }
            Self::Log { .. } => 0.5,
        };
        Some(t.clamp(0.0, 1.0))
    }

    /// The colour at position `t` (0–1) of this scale's colour map.
    pub fn colour_at(&self, t: f64) -> Rgb {
        let t = t.clamp(0.0, 1.0);
        match self {
            Self::Sequential { .. } => colorous::VIRIDIS.eval_continuous(t),
            // RdBu runs red → blue; reversed, negative values are blue.
            Self::Diverging { .. } => colorous::RED_BLUE.eval_continuous(1.0 - t),
            Self::Log { .. } => colorous::INFERNO.eval_continuous(t),
        }
        .into_array()
    }

    /// The colour of value `v` ([`canvas::NAN_GREY`] for NaN and ±inf).
    pub fn colour(&self, v: f64) -> Rgb {
        self.position(v).map_or(NAN_GREY, |t| self.colour_at(t))
    }

    /// About `n` labelled ticks of the colour bar: (position 0–1, label), at round values;
    /// on a log scale decades when three or more are in range, else 1, 2 and 5 × 10^k,
    /// else (less than a factor of 5) round values placed on the log scale.
    pub fn ticks(&self, n: usize) -> Vec<(f64, String)> {
        let linear = |lo: f64, hi: f64| -> Vec<(f64, String)> {
            if hi > lo {
                let (values, step) = ticks::nice_ticks(lo, hi, n);
                values
                    .into_iter()
                    .map(|v| ((v - lo) / (hi - lo), ticks::label(v, step)))
                    .collect()
            } else {
                vec![(0.5, ticks::plain(lo))]
            }
        };
        match *self {
            Self::Sequential { lo, hi } => linear(lo, hi),
            Self::Diverging { limit } if limit > 0.0 => linear(-limit, limit)
                .into_iter()
                .map(|(t, l)| (t.clamp(0.0, 1.0), l))
                .collect(),
            Self::Diverging { .. } => vec![(0.5, "0".into())],
            Self::Log { lo, hi } if hi > lo && lo > 0.0 => log_ticks(lo, hi, n),
            Self::Log { lo, .. } => linear(lo, lo),
        }
    }

    /// The values at the two ends of the scale (for a line plot's axis).
    fn value_range(&self) -> (f64, f64) {
        match *self {
            Self::Sequential { lo, hi } | Self::Log { lo, hi } => (lo, hi),
            Self::Diverging { limit } => (-limit, limit),
        }
    }
}

/// About `n` ticks of a log scale from `lo` to `hi` (0 < `lo` < `hi`): (position, label).
fn log_ticks(lo: f64, hi: f64, n: usize) -> Vec<(f64, String)> {
    let (a, b) = (lo.log10(), hi.log10());
    let at = |v: f64| (v.log10() - a) / (b - a);
    let (k0, k1) = ((a - 1e-9).floor() as i32, (b + 1e-9).ceil() as i32);
    let inside = |v: &f64| *v >= lo * (1.0 - 1e-9) && *v <= hi * (1.0 + 1e-9);
    let decades: Vec<i32> = (k0..=k1).filter(|&k| inside(&10f64.powi(k))).collect();
    if decades.len() >= 3 {
        let every = decades.len().div_ceil(n.max(1)).max(1);
        return decades
            .into_iter()
            .step_by(every)
            .map(|k| (at(10f64.powi(k)).clamp(0.0, 1.0), decade_label(k)))
            .collect();
    }
    let steps: Vec<f64> = (k0..=k1)
        .flat_map(|k| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(k)))
        .filter(inside)
        .collect();
    if steps.len() >= 2 {
        let every = steps.len().div_ceil(n.max(1)).max(1);
        return steps
            .into_iter()
            .step_by(every)
            .map(|v| (at(v).clamp(0.0, 1.0), ticks::plain(v)))
            .collect();
    }
    let (values, _) = ticks::nice_ticks(lo, hi, n);
    values
        .into_iter()
        .filter(|v| *v > 0.0)
        .map(|v| (at(v).clamp(0.0, 1.0), ticks::plain(v)))
        .collect()
}

/// `10^k` as a colour-bar label: `0.001` … `10000`, else `1e-5`, `1e6`.
fn decade_label(k: i32) -> String {
    match k {
        0..=4 => format!("1{}", "0".repeat(k.unsigned_abs() as usize)),
        -3..=-1 => format!("0.{}1", "0".repeat(k.unsigned_abs() as usize - 1)),
        _ => format!("1e{k}"),
    }
}

/// How large a figure is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    /// A map whose longest side has fewer positions is enlarged by the smallest whole
    /// factor (each position a square of pixels) that makes that side at least this many
    /// pixels. Also the plot height of a line plot is half of it, its width twice.
    pub min_side: usize,
    /// A map whose longest side has more positions is reduced by the smallest whole factor
    /// (blocks of positions averaged) that makes that side at most this many pixels.
    pub max_side: usize,
    /// Scale of all text: 1 is the font's 8 pixels.
    pub text: usize,
}

/// The size of the figure files: maps at least 512 pixels on their longest side.
pub const FULL: Size = Size {
    min_side: 512,
    max_side: 2048,
    text: 2,
};

/// The size of a figure in the overview: maps about 256 pixels on their longest side.
pub const TILE: Size = Size {
    min_side: 256,
    max_side: 256,
    text: 1,
};

/// The whole-number zoom of a map drawn at a [`Size`]: blocks of `down` × `down` positions
/// are averaged, then each becomes `up` × `up` pixels (one of the two is 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Zoom {
    /// Pixels per position, across and down.
    pub up: usize,
    /// Positions per pixel, across and down.
    pub down: usize,
}

/// The zoom of a `rows` × `cols` map at `size`.
pub fn zoom(rows: usize, cols: usize, size: Size) -> Zoom {
    let long = rows.max(cols).max(1);
    if long > size.max_side {
        Zoom {
            up: 1,
            down: long.div_ceil(size.max_side.max(1)),
        }
    } else {
        Zoom {
            up: size.min_side.div_ceil(long).max(1),
            down: 1,
        }
    }
}

/// Whether a `rows` × `cols` map is drawn as a line plot of its values in frame order
/// rather than as a picture: when one side is at least 16 times the other, as for an
/// unshaped file (`1 × N` frames), where a picture would be a strip one position high.
pub fn is_profile(rows: usize, cols: usize) -> bool {
    let (short, long) = (rows.min(cols), rows.max(cols));
    short >= 1 && long >= 16 * short
}

/// The scale bar of a map `cols` positions wide with `step` (> 0) units per position,
/// drawn at `px_per_position` pixels per position: a round length (1, 2 or 5 × 10^k units)
/// of at most a quarter of the map's width, and its length in pixels. `None` for a step
/// that is not a positive number or a bar under 2 pixels.
pub fn scale_bar(step: f64, cols: usize, px_per_position: f64) -> Option<(f64, usize)> {
    if !(step.is_finite() && step > 0.0) {
        return None;
    }
    let length = ticks::nice_below(step * cols as f64 / 4.0);
    let px = (length / step * px_per_position).round();
    (length > 0.0 && px >= 2.0).then_some((length, px as usize))
}

/// A figure and where its parts are.
#[derive(Clone, Debug)]
pub struct Figure {
    /// The picture.
    pub canvas: Canvas,
    /// The map's pixels (a line plot: its plot area).
    pub image: Rect,
    /// The colour bar's colours (none for a line plot).
    pub colour_bar: Option<Rect>,
    /// The scale bar (only with a calibrated scan).
    pub scale_bar: Option<Rect>,
}

/// A 2-D map to draw.
#[derive(Clone, Copy, Debug)]
pub struct Map<'a> {
    /// Above the map, e.g. `virtual: bf (64 × 64)`.
    pub title: &'a str,
    /// Values, row-major, `rows × cols` of them.
    pub data: &'a [f64],
    /// Rows of the map.
    pub rows: usize,
    /// Columns of the map.
    pub cols: usize,
    /// Unit of the values, under the colour bar (`counts`, `px`); may be empty.
    pub unit: &'a str,
    /// How values become colours.
    pub scale: ColourScale,
    /// Size of one position (the distance between neighbouring columns) and its unit,
    /// e.g. `(2.5, "nm")`: a scale bar under the map. `None`: uncalibrated, no scale bar.
    pub step: Option<(f64, &'a str)>,
}

/// `data` (`rows × cols`) averaged over blocks of `down` × `down` (NaN where a block has
/// no finite value), and the new shape.
fn reduce_blocks(
    data: &[f64],
    rows: usize,
    cols: usize,
    down: usize,
) -> (Cow<'_, [f64]>, usize, usize) {
    if down <= 1 {
        return (Cow::Borrowed(data), rows, cols);
    }
    let (r2, c2) = (rows.div_ceil(down), cols.div_ceil(down));
    let mut sum = vec![0.0; r2 * c2];
    let mut n = vec![0u32; r2 * c2];
    for (i, row) in data.chunks_exact(cols).enumerate().take(rows) {
        for (j, &v) in row.iter().enumerate() {
            if v.is_finite() {
                let k = (i / down) * c2 + j / down;
                sum[k] += v;
                n[k] += 1;
            }
        }
    }
    let mean = sum
        .iter()
        .zip(&n)
        .map(|(&s, &n)| if n > 0 { s / f64::from(n) } else { f64::NAN })
        .collect();
    (Cow::Owned(mean), r2, c2)
}

/// Draws a map at `size`: the title, the map enlarged (or reduced) by a whole factor
/// ([`zoom`]) with a frame, a colour bar with about five labelled ticks and the unit under
/// it, and a scale bar under the map when `m.step` is given.
pub fn render_map(m: &Map<'_>, size: Size) -> Figure {
    let t = size.text.max(1);
    let (pad, line) = (6 * t, GLYPH * t);
    let z = zoom(m.rows, m.cols, size);
    let (values, r2, c2) = reduce_blocks(m.data, m.rows, m.cols, z.down);
    let image = Rect {
        x: pad + 1,
        y: pad + line + 4 * t + 1,
        w: c2 * z.up,
        h: r2 * z.up,
    };
    let bar = Rect {
        x: image.right() + 1 + 8 * t,
        y: image.y,
        w: 10 * t,
        h: image.h.max(80 * t),
    };
    let ticks = m.scale.ticks(5);
    let tick_len = 3 * t;
    let labels_x = bar.right() + 1 + tick_len + 2 * t;
    let labels_w = ticks
        .iter()
        .map(|(_, l)| text_width(l, t))
        .max()
        .unwrap_or(0);
    let px_per_position = z.up as f64 / z.down as f64;
    let scale = m.step.and_then(|(step, unit)| {
        scale_bar(step, m.cols, px_per_position)
            .map(|(len, px)| (px, format!("{} {unit}", ticks::length_label(len))))
    });
    let scale_y = image.bottom() + 1 + 4 * t;
    let scale_right = scale
        .as_ref()
        .map_or(0, |(px, label)| image.x + px + 4 * t + text_width(label, t));
    let width = [
        labels_x + labels_w,
        bar.x + text_width(m.unit, t),
        pad + text_width(m.title, t),
        scale_right,
    ]
    .into_iter()
    .max()
    .unwrap_or(0)
        + pad;
    let unit_y = bar.bottom() + 1 + 4 * t;
    let height = [
        image.bottom() + 1 + if scale.is_some() { 4 * t + line } else { 0 },
        if m.unit.is_empty() {
            bar.bottom() + 1 + line / 2
        } else {
            unit_y + line
        },
    ]
    .into_iter()
    .max()
    .unwrap_or(0)
        + pad;
    let mut c = Canvas::new(width, height, WHITE);
    c.text(pad, pad, m.title, t, BLACK);
    for (i, row) in values.chunks_exact(c2.max(1)).enumerate().take(r2) {
        for (j, &v) in row.iter().enumerate() {
            let cell = Rect {
                x: image.x + j * z.up,
                y: image.y + i * z.up,
                w: z.up,
                h: z.up,
            };
            c.fill(cell, m.scale.colour(v));
        }
    }
    c.frame(image, BLACK);
    draw_colour_bar(&mut c, bar, &m.scale, &ticks, t);
    if !m.unit.is_empty() {
        c.text(bar.x, unit_y, m.unit, t, BLACK);
    }
    let scale_bar = scale.map(|(px, label)| {
        let thick = 3 * t;
        let r = Rect {
            x: image.x,
            y: scale_y + (line - thick) / 2,
            w: px,
            h: thick,
        };
        c.fill(r, BLACK);
        c.text(image.x + px + 4 * t, scale_y, &label, t, BLACK);
        r
    });
    Figure {
        canvas: c,
        image,
        colour_bar: Some(bar),
        scale_bar,
    }
}

/// The colour bar: the scale's colours from the last (top) to the first (bottom), framed,
/// with `ticks` marked and labelled on its right.
fn draw_colour_bar(
    c: &mut Canvas,
    bar: Rect,
    scale: &ColourScale,
    ticks: &[(f64, String)],
    t: usize,
) {
    let span = bar.h.saturating_sub(1).max(1) as f64;
    for y in 0..bar.h {
        let pos = 1.0 - y as f64 / span;
        c.fill(
            Rect {
                x: bar.x,
                y: bar.y + y,
                w: bar.w,
                h: 1,
            },
            scale.colour_at(pos),
        );
    }
    c.frame(bar, BLACK);
    let (line, tick_len) = (GLYPH * t, 3 * t);
    for (pos, label) in ticks {
        let y = bar.y + ((1.0 - pos.clamp(0.0, 1.0)) * span).round() as usize;
        c.fill(
            Rect {
                x: bar.right() + 1,
                y,
                w: tick_len,
                h: t.div_ceil(2),
            },
            BLACK,
        );
        c.text(
            bar.right() + 1 + tick_len + 2 * t,
            y.saturating_sub(line / 2),
            label,
            t,
            BLACK,
        );
    }
}

/// Draws values in frame order as a line plot at `size`: the title, the unit over a value
/// axis with round ticks, a frame axis, the zero line of a signed scale, and per pixel
/// column the range of the values of the frames in it (so a single outlying frame among
/// thousands still shows). Values are clipped to `scale`'s range, as in the maps.
pub fn render_profile(
    title: &str,
    data: &[f64],
    unit: &str,
    scale: ColourScale,
    size: Size,
) -> Figure {
    let t = size.text.max(1);
    let (pad, line, tick_len) = (6 * t, GLYPH * t, 3 * t);
    let (mut lo, mut hi) = scale.value_range();
    if hi <= lo {
        let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo, hi) = (lo - d, hi + d);
    }
    let (yticks, ystep) = ticks::nice_ticks(lo, hi, 5);
    let ylabels: Vec<String> = yticks.iter().map(|&v| ticks::label(v, ystep)).collect();
    let ylabels_w = ylabels.iter().map(|l| text_width(l, t)).max().unwrap_or(0);
    let n = data.len().max(1);
    let plot = Rect {
        x: pad + ylabels_w + 2 * t + tick_len + 1,
        y: pad + 2 * line + 8 * t + 1,
        w: 2 * size.min_side,
        h: (size.min_side / 2).max(2),
    };
    let last = (n - 1) as f64;
    let (xticks, xstep) = if n > 1 {
        ticks::nice_ticks(0.0, last, 6)
    } else {
        (vec![0.0], 1.0)
    };
    let xlabels_y = plot.bottom() + 1 + tick_len + 2 * t;
    let width = (plot.right() + 1 + pad + line * 2).max(2 * pad + text_width(title, t));
    let height = xlabels_y + 2 * line + 2 * t + pad;
    let mut c = Canvas::new(width, height, WHITE);
    c.text(pad, pad, title, t, BLACK);
    c.text(pad, plot.y - 1 - line - 4 * t, unit, t, BLACK);
    let y_of = |v: f64| -> usize {
        let f = (hi - v.clamp(lo, hi)) / (hi - lo);
        plot.y + (f * (plot.h - 1) as f64).round() as usize
    };
    if lo < 0.0 && hi > 0.0 {
        c.fill(
            Rect {
                x: plot.x,
                y: y_of(0.0),
                w: plot.w,
                h: 1,
            },
            ZERO_LINE,
        );
    }
    let mut previous: Option<f64> = None;
    for px in 0..plot.w {
        let f0 = px * n / plot.w;
        let f1 = ((px + 1) * n / plot.w).max(f0 + 1).min(n);
        let finite = data
            .get(f0..f1)
            .unwrap_or(&[])
            .iter()
            .copied()
            .filter(|v| v.is_finite());
        let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
        let mut last_value = None;
        for v in finite {
            (min, max) = (min.min(v), max.max(v));
            last_value = Some(v);
        }
        let Some(lv) = last_value else {
            previous = None;
            continue;
        };
        if let Some(p) = previous {
            (min, max) = (min.min(p), max.max(p));
        }
        previous = Some(lv);
        let (top, bottom) = (y_of(max), y_of(min));
        c.fill(
            Rect {
                x: plot.x + px,
                y: top,
                w: 1,
                h: bottom + 1 - top,
            },
            LINE,
        );
    }
    c.frame(plot, BLACK);
    for (&v, label) in yticks.iter().zip(&ylabels) {
        let y = y_of(v);
        c.fill(
            Rect {
                x: plot.x - 1 - tick_len,
                y,
                w: tick_len,
                h: t.div_ceil(2),
            },
            BLACK,
        );
        let w = text_width(label, t);
        c.text(
            plot.x - 1 - tick_len - 2 * t - w,
            y.saturating_sub(line / 2),
            label,
            t,
            BLACK,
        );
    }
    for &v in &xticks {
        let x = plot.x
            + if n > 1 {
                (v / last * (plot.w - 1) as f64).round() as usize
            } else {
                0
            };
        c.fill(
            Rect {
                x,
                y: plot.bottom() + 1,
                w: t.div_ceil(2),
                h: tick_len,
            },
            BLACK,
        );
        let label = ticks::label(v, xstep);
        let w = text_width(&label, t);
        c.text(x.saturating_sub(w / 2), xlabels_y, &label, t, BLACK);
    }
    let axis = "frame";
    c.text(
        plot.x + plot.w / 2 - text_width(axis, t) / 2,
        xlabels_y + line + 2 * t,
        axis,
        t,
        BLACK,
    );
    Figure {
        canvas: c,
        image: plot,
        colour_bar: None,
        scale_bar: None,
    }
}

/// One picture of `tiles` (figures drawn at [`TILE`] size) on a grid of at most four
/// columns, left to right then top to bottom, under `header`.
pub fn overview(header: &str, tiles: &[Canvas]) -> Canvas {
    let t = 2;
    let (pad, gap, line) = (8, 12, GLYPH * t);
    let n = tiles.len().max(1);
    let cols = ((n as f64).sqrt().ceil() as usize).clamp(1, 4);
    let rows = n.div_ceil(cols);
    let mut col_w = vec![0usize; cols];
    let mut row_h = vec![0usize; rows];
    for (i, tile) in tiles.iter().enumerate() {
        col_w[i % cols] = col_w[i % cols].max(tile.width());
        row_h[i / cols] = row_h[i / cols].max(tile.height());
    }
    let top = pad + line + gap;
    let grid_w: usize = col_w.iter().sum::<usize>() + gap * (cols - 1);
    let grid_h: usize = row_h.iter().sum::<usize>() + gap * (rows - 1);
    let width = (2 * pad + grid_w).max(2 * pad + text_width(header, t));
    let mut c = Canvas::new(width, top + grid_h + pad, WHITE);
    c.text(pad, pad, header, t, BLACK);
    let mut y = top;
    for (r, &h) in row_h.iter().enumerate() {
        let mut x = pad;
        for (k, &w) in col_w.iter().enumerate() {
            if let Some(tile) = tiles.get(r * cols + k) {
                c.paste(tile, x, y);
            }
            x += w + gap;
        }
        y += h + gap;
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map<'a>(data: &'a [f64], rows: usize, cols: usize) -> Map<'a> {
        Map {
            title: "virtual: bf (64 × 64)",
            data,
            rows,
            cols,
            unit: "counts",
            scale: ColourScale::for_map(data),
            step: None,
        }
    }

    #[test]
    fn a_64x64_map_is_drawn_at_512_pixels_with_a_colour_bar_of_viridis_ends() {
        let mut data: Vec<f64> = (0..64 * 64).map(f64::from).collect();
        data[1] = 3000.0;
        let f = render_map(&map(&data, 64, 64), FULL);
        assert_eq!((f.image.w, f.image.h), (512, 512));
        assert!(f.canvas.width() > 512 && f.canvas.height() > 512);
        // Each position is an 8 × 8 square: the first row's first two positions.
        let px = |x, y| f.canvas.pixel(x, y).unwrap();
        let s = ColourScale::for_map(&data);
        assert_eq!(px(f.image.x, f.image.y), s.colour(0.0));
        assert_eq!(px(f.image.x + 7, f.image.y + 7), s.colour(0.0));
        assert_eq!(px(f.image.x + 8, f.image.y), s.colour(3000.0));
        assert_ne!(s.colour(3000.0), s.colour(0.0));
        // The colour bar runs from viridis's bright end at the top to its dark end.
        let bar = f.colour_bar.unwrap();
        assert_eq!(
            px(bar.x, bar.y),
            colorous::VIRIDIS.eval_continuous(1.0).into_array()
        );
        assert_eq!(
            px(bar.x + bar.w - 1, bar.bottom() - 1),
            colorous::VIRIDIS.eval_continuous(0.0).into_array()
        );
        // The brightest position takes the bright end (it lies above the 99.5th percentile).
        assert_eq!(
            px(f.image.right() - 1, f.image.bottom() - 1),
            colorous::VIRIDIS.eval_continuous(1.0).into_array()
        );
        assert!(f.scale_bar.is_none());
    }

    #[test]
    fn a_signed_maps_zero_is_the_diverging_maps_centre_and_nan_is_grey() {
        let mut data: Vec<f64> = (0..16).map(|i| f64::from(i) - 8.0).collect();
        data[15] = f64::NAN;
        let s = ColourScale::for_map(&data);
        assert!(matches!(s, ColourScale::Diverging { .. }), "{s:?}");
        let f = render_map(&map(&data, 4, 4), FULL);
        assert_eq!((f.image.w, f.image.h), (512, 512));
        let centre = colorous::RED_BLUE.eval_continuous(0.5).into_array();
        // Value 0 is at row 2, column 0: one position is 128 pixels.
        let at = |i: usize, j: usize| {
            f.canvas
                .pixel(f.image.x + j * 128 + 64, f.image.y + i * 128 + 64)
                .unwrap()
        };
        assert_eq!(at(2, 0), centre);
        assert_eq!(at(3, 3), NAN_GREY);
        // Negative is blue, positive red.
        let (neg, pos) = (at(0, 0), at(3, 2));
        assert!(neg[2] > neg[0] && pos[0] > pos[2], "{neg:?} {pos:?}");
        assert_eq!(s.position(0.0), Some(0.5));
        assert!(s.ticks(5).iter().any(|(t, l)| *t == 0.5 && l == "0"));
    }

    #[test]
    fn a_calibrated_map_has_a_round_scale_bar() {
        let data = vec![1.0; 64 * 64];
        let mut m = map(&data, 64, 64);
        m.step = Some((2.0, "nm"));
        // 128 nm wide: a quarter is 32 nm, the bar 20 nm = 10 positions = 80 pixels.
        assert_eq!(scale_bar(2.0, 64, 8.0), Some((20.0, 80)));
        let f = render_map(&m, FULL);
        let bar = f.scale_bar.unwrap();
        assert_eq!((bar.x, bar.w), (f.image.x, 80));
        assert_eq!(f.canvas.pixel(bar.x + 79, bar.y), Some(BLACK));
        assert_eq!(f.canvas.pixel(bar.x + 80, bar.y), Some(WHITE));
        assert_eq!(scale_bar(f64::NAN, 64, 8.0), None);
    }

    #[test]
    fn zoom_enlarges_small_maps_and_reduces_large_ones() {
        assert_eq!(zoom(64, 64, FULL), Zoom { up: 8, down: 1 });
        assert_eq!(zoom(100, 30, FULL), Zoom { up: 6, down: 1 });
        assert_eq!(zoom(1024, 1024, FULL), Zoom { up: 1, down: 1 });
        assert_eq!(zoom(4096, 100, FULL), Zoom { up: 1, down: 2 });
        assert_eq!(zoom(64, 64, TILE), Zoom { up: 4, down: 1 });
        let data: Vec<f64> = vec![1.0, 3.0, f64::NAN, f64::NAN];
        let (v, r, c) = reduce_blocks(&data, 2, 2, 2);
        assert_eq!((r, c, v[0]), (1, 1, 2.0));
        assert!(is_profile(1, 16384) && is_profile(16384, 1) && is_profile(2, 32));
        assert!(!is_profile(64, 64) && !is_profile(1, 9) && !is_profile(1, 1));
    }

    #[test]
    fn an_unshaped_scan_is_a_line_plot() {
        let data: Vec<f64> = (0..16384).map(|i| f64::from(i % 10)).collect();
        let f = render_profile(
            "sum_sig: intensity",
            &data,
            "counts",
            ColourScale::for_map(&data),
            FULL,
        );
        assert_eq!((f.image.w, f.image.h), (1024, 256));
        assert!(f.colour_bar.is_none());
        // Every column holds a sawtooth's full range: the line reaches top and bottom.
        let col = f.image.x + 500;
        assert_eq!(f.canvas.pixel(col, f.image.y), Some(LINE));
        assert_eq!(f.canvas.pixel(col, f.image.bottom() - 1), Some(LINE));
    }

    #[test]
    fn log_scale_ticks_are_decades() {
        let s = ColourScale::Log { lo: 1e-3, hi: 50.0 };
        let labels: Vec<String> = s.ticks(6).into_iter().map(|(_, l)| l).collect();
        assert_eq!(labels, ["0.001", "0.01", "0.1", "1", "10"]);
        // Within about a decade: 1, 2, 5 × 10^k.
        let labels: Vec<String> = ColourScale::Log { lo: 4.9, hi: 50.0 }
            .ticks(6)
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        assert_eq!(labels, ["5", "10", "20", "50"]);
        let ticks = ColourScale::Log { lo: 1.1, hi: 1.9 }.ticks(5);
        assert!(ticks.len() >= 2, "{ticks:?}");
        assert!(
            ticks.iter().all(|(t, _)| (0.0..=1.0).contains(t)),
            "{ticks:?}"
        );
        assert_eq!(s.position(0.0), Some(0.0));
        assert_eq!(s.position(50.0), Some(1.0));
        assert_eq!(
            s.colour_at(0.0),
            colorous::INFERNO.eval_continuous(0.0).into_array()
        );
        let p = ColourScale::for_pattern(&[0.0, 0.0, 2.0, 20.0, 200.0]);
        assert_eq!(p, ColourScale::Log { lo: 2.0, hi: 200.0 });
        let dark = ColourScale::for_pattern(&[0.0; 4]);
        assert!(matches!(dark, ColourScale::Sequential { .. }));
    }

    #[test]
    fn the_overview_tiles_left_to_right() {
        let tiles: Vec<Canvas> = (0..5)
            .map(|i| Canvas::new(100, 50 + i, [i as u8, 0, 0]))
            .collect();
        let c = overview("results", &tiles);
        // 3 columns, 2 rows.
        assert_eq!(c.width(), 2 * 8 + 3 * 100 + 2 * 12);
        let top = 8 + 16 + 12;
        assert_eq!(c.pixel(8, top), Some([0, 0, 0]));
        assert_eq!(c.pixel(8 + 112, top), Some([1, 0, 0]));
        assert_eq!(c.pixel(8, top + 52 + 12), Some([3, 0, 0]));
    }
}
