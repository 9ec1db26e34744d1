//! 8-bit greyscale PNG images of 2-D maps (virtual BF/ADF images, CoM x/y, sums), with
//! robust scaling so that a few hot or dead pixels do not wash the image out.

use crate::error::RecordingError;
use std::io::BufWriter;
use std::path::Path;

/// How values map to grey levels 0–255.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scaling {
    /// The `low` percentile of the finite values → 0, the `high` percentile → 255, linear
    /// between, clipped outside (percent, 0–100; nearest rank on the sorted values).
    Percentile {
        /// Lower percentile, %.
        low: f64,
        /// Upper percentile, %.
        high: f64,
    },
    /// For signed maps (CoM x/y): symmetric about zero. With `v` the `percentile` of the
    /// absolute finite values, `-v` → 0, `0` → 128, `+v` → 255, clipped outside.
    Diverging {
        /// Percentile of `|value|` mapped to full scale, %.
        percentile: f64,
    },
}

impl Default for Scaling {
    /// 0.5 % → 0, 99.5 % → 255.
    fn default() -> Self {
        Scaling::Percentile {
            low: 0.5,
            high: 99.5,
        }
    }
}

impl Scaling {
    /// Diverging about zero at the 99.5th percentile of `|value|`.
    pub fn diverging() -> Self {
        Scaling::Diverging { percentile: 99.5 }
    }
}

/// The values that ended up at grey 0 and grey 255 (for a legend or a colour bar).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GreyRange {
    /// Value shown as 0 (black).
    pub black: f64,
    /// Value shown as 255 (white).
    pub white: f64,
}

/// Maps `data` to grey levels with `scaling`.
///
/// Non-finite values (NaN: positions not processed; ±inf) become 0. When every finite value
/// is the same (or there is none), every finite value becomes 128 (mid grey). When the
/// percentiles coincide but the values do not (a nearly constant map), the full min–max
/// range of the finite values is used instead. Returns the pixels and the values mapped to
/// 0 and 255.
pub fn to_grey8(data: &[f64], scaling: Scaling) -> (Vec<u8>, GreyRange) {
    let mut finite: Vec<f64> = data.iter().copied().filter(|v| v.is_finite()).collect();
    finite.sort_unstable_by(f64::total_cmp);
    let (Some(&min), Some(&max)) = (finite.first(), finite.last()) else {
        return (
            vec![0; data.len()],
            GreyRange {
                black: 0.0,
                white: 0.0,
            },
        );
    };
    let (black, white) = match scaling {
        Scaling::Percentile { low, high } => {
            let (lo, hi) = (percentile(&finite, low), percentile(&finite, high));
            if hi > lo { (lo, hi) } else { (min, max) }
        }
        Scaling::Diverging { percentile: pct } => {
            let mut abs: Vec<f64> = finite.iter().map(|v| v.abs()).collect();
            abs.sort_unstable_by(f64::total_cmp);
            let v = percentile(&abs, pct);
            let v = if v > 0.0 { v } else { min.abs().max(max.abs()) };
            (-v, v)
        }
    };
    if white <= black {
        let grey = data
            .iter()
            .map(|v| if v.is_finite() { 128 } else { 0 })
            .collect();
        return (
            grey,
            GreyRange {
                black: min,
                white: max,
            },
        );
    }
    let scale = 255.0 / (white - black);
    let grey = data
        .iter()
        .map(|&v| {
            if v.is_finite() {
                ((v - black) * scale).round().clamp(0.0, 255.0) as u8
            } else {
                0
            }
        })
        .collect();
    (grey, GreyRange { black, white })
}

/// Nearest-rank percentile `pct` (0–100, clamped) of sorted, non-empty `sorted`.
fn percentile(sorted: &[f64], pct: f64) -> f64 {
    let p = if pct.is_nan() {
        50.0
    } else {
        pct.clamp(0.0, 100.0)
    };
    let idx = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Writes `data` (row-major, `shape = (rows, cols)`) as an 8-bit greyscale PNG at `path`,
/// scaled with `scaling` (see [`to_grey8`]). The mapping is stored in the image's text
/// chunks (`stemflow:black`, `stemflow:white`, `stemflow:scaling`) and returned.
///
/// # Errors
/// [`RecordingError::ImageShape`] when `data.len() != rows * cols` or a dimension is 0 or
/// above `u32::MAX`; [`RecordingError::Io`] when the file cannot be created;
/// [`RecordingError::Png`] when encoding fails.
pub fn write_png_image(
    path: impl AsRef<Path>,
    data: &[f64],
    shape: (usize, usize),
    scaling: Scaling,
) -> Result<GreyRange, RecordingError> {
    let path = path.as_ref();
    let (rows, cols) = shape;
    let too_big = u32::try_from(rows).is_err() || u32::try_from(cols).is_err();
    if rows == 0 || cols == 0 || too_big || data.len() != rows * cols {
        return Err(RecordingError::ImageShape {
            path: path.to_path_buf(),
            rows,
            cols,
            expected: rows.saturating_mul(cols),
            observed: data.len(),
        });
    }
    let (grey, range) = to_grey8(data, scaling);
    let file = std::fs::File::create(path).map_err(|source| RecordingError::Io {
        path: path.to_path_buf(),
        during: "creating the PNG file".into(),
        source,
    })?;
    let png_err = |source| RecordingError::Png {
        path: path.to_path_buf(),
        source,
    };
    let mut enc = png::Encoder::new(BufWriter::new(file), cols as u32, rows as u32);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    enc.add_text_chunk("stemflow:scaling".into(), format!("{scaling:?}"))
        .map_err(png_err)?;
    enc.add_text_chunk("stemflow:black".into(), range.black.to_string())
        .map_err(png_err)?;
    enc.add_text_chunk("stemflow:white".into(), range.white.to_string())
        .map_err(png_err)?;
    let mut writer = enc.write_header().map_err(png_err)?;
    writer.write_image_data(&grey).map_err(png_err)?;
    writer.finish().map_err(png_err)?;
    Ok(range)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_scaling_clips_outliers() {
        // 0..=999 plus one hot pixel: the 0.5/99.5 % range ignores it.
        let mut data: Vec<f64> = (0..1000).map(f64::from).collect();
        data.push(1e9);
        let (g, r) = to_grey8(&data, Scaling::default());
        assert_eq!(r.black, 5.0);
        assert_eq!(r.white, 995.0);
        assert_eq!(g[0], 0);
        assert_eq!(g[5], 0);
        assert_eq!(g[995], 255);
        assert_eq!(g[1000], 255);
        assert!((127..=128).contains(&g[500]));
    }

    #[test]
    fn nan_constant_and_diverging() {
        let (g, _) = to_grey8(&[3.0, f64::NAN, 3.0], Scaling::default());
        assert_eq!(g, vec![128, 0, 128]);
        let (g, _) = to_grey8(&[f64::NAN; 4], Scaling::default());
        assert_eq!(g, vec![0; 4]);
        // Nearly constant: percentiles coincide, min/max used.
        let mut d = vec![1.0; 1000];
        d[0] = 0.0;
        let (g, r) = to_grey8(&d, Scaling::default());
        assert_eq!((r.black, r.white), (0.0, 1.0));
        assert_eq!((g[0], g[1]), (0, 255));
        let (g, r) = to_grey8(
            &[-2.0, 0.0, 1.0, 2.0, f64::NAN],
            Scaling::Diverging { percentile: 100.0 },
        );
        assert_eq!((r.black, r.white), (-2.0, 2.0));
        assert_eq!(g, vec![0, 128, 191, 255, 0]);
    }
}
