//! Navigation (scan) and signal (detector) shapes.
//!
//! Both are two-dimensional, row-major, in pixels: `(rows, cols)` = `(y, x)`. A 4D-STEM
//! data set has shape `nav_shape + sig_shape`; frame `i` of an acquisition sits at scan
//! position `(i / nav.cols, i % nav.cols)`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The scan grid: `rows` × `cols` scan positions (probe positions), row-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NavShape {
    /// Scan rows (y), ≥ 1.
    pub rows: usize,
    /// Scan positions per row (x), ≥ 1.
    pub cols: usize,
}

impl NavShape {
    /// A scan of `rows` × `cols` positions.
    pub const fn new(rows: usize, cols: usize) -> Self {
        Self { rows, cols }
    }
    /// Number of scan positions (= frames in one pass), `rows * cols`.
    pub const fn len(&self) -> usize {
        self.rows * self.cols
    }
    /// True when the scan has no positions.
    pub const fn is_empty(&self) -> bool {
        self.rows == 0 || self.cols == 0
    }
}

impl fmt::Display for NavShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.rows, self.cols)
    }
}

/// Error parsing a shape written as `ROWSxCOLS` (e.g. `64x64`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot parse shape `{text}`: expected ROWSxCOLS with both > 0, e.g. 64x64")]
pub struct ShapeParseError {
    /// The text that did not parse.
    pub text: String,
}

fn parse_pair(s: &str) -> Result<(usize, usize), ShapeParseError> {
    let err = || ShapeParseError {
        text: s.to_string(),
    };
    let (a, b) = s.split_once(['x', 'X', ',', '*']).ok_or_else(err)?;
    let r: usize = a.trim().parse().map_err(|_| err())?;
    let c: usize = b.trim().parse().map_err(|_| err())?;
    if r == 0 || c == 0 {
        return Err(err());
    }
    Ok((r, c))
}

impl FromStr for NavShape {
    type Err = ShapeParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_pair(s).map(|(r, c)| Self::new(r, c))
    }
}

/// The detector frame: `rows` × `cols` pixels, row-major, row 0 first as stored by the
/// detector (LiberTEM's convention; HyperSpy shows Merlin frames flipped vertically).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SigShape {
    /// Pixel rows (y).
    pub rows: usize,
    /// Pixels per row (x).
    pub cols: usize,
}

impl SigShape {
    /// A frame of `rows` × `cols` pixels.
    pub const fn new(rows: usize, cols: usize) -> Self {
        Self { rows, cols }
    }
    /// Pixels per frame, `rows * cols`.
    pub const fn len(&self) -> usize {
        self.rows * self.cols
    }
    /// True when the frame has no pixels.
    pub const fn is_empty(&self) -> bool {
        self.rows == 0 || self.cols == 0
    }
}

impl fmt::Display for SigShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.rows, self.cols)
    }
}

impl FromStr for SigShape {
    type Err = ShapeParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_pair(s).map(|(r, c)| Self::new(r, c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_shapes() {
        assert_eq!("64x32".parse::<NavShape>().unwrap(), NavShape::new(64, 32));
        assert_eq!("4,5".parse::<SigShape>().unwrap(), SigShape::new(4, 5));
        assert!("0x5".parse::<NavShape>().is_err());
        assert!("64".parse::<NavShape>().is_err());
        assert!("ax5".parse::<NavShape>().is_err());
        assert_eq!(NavShape::new(3, 7).len(), 21);
    }
}
