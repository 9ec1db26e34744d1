//! Scan-shape hints for passive mode: the detector announces how many frames an acquisition
//! has (Merlin HDR `Frames in Acquisition`, DECTRIS `nimages × ntrigger`), but not always
//! how they fold into a scan. A hint fixes one side and leaves the other (`?`) to be derived
//! from the frame count, as a user who knows the scan width but not the number of lines
//! would give it.

use std::str::FromStr;
use stemflow_core::NavShape;

/// `rows x cols`, either side may be `?` (derived), e.g. `?x256`, `128x?`, `64x64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NavHint {
    /// Scan lines, or `None` to derive.
    pub rows: Option<usize>,
    /// Positions per line, or `None` to derive.
    pub cols: Option<usize>,
}

/// A hint that does not parse or does not fit the announced frame count.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NavHintError {
    /// The text is not `ROWSxCOLS` with numbers or `?`.
    #[error("scan-shape hint `{0}`: expected ROWSxCOLS, either side a number or `?` (e.g. ?x256)")]
    Syntax(String),
    /// The frames do not fold into the hint.
    #[error("scan-shape hint {hint}: {frames} frames announced do not fold into it")]
    Mismatch {
        /// The hint as written.
        hint: String,
        /// Frames the detector announced.
        frames: u64,
    },
}

impl std::fmt::Display for NavHint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let side = |v: Option<usize>| v.map_or("?".to_string(), |n| n.to_string());
        write!(f, "{}x{}", side(self.rows), side(self.cols))
    }
}

impl FromStr for NavHint {
    type Err = NavHintError;

    fn from_str(s: &str) -> Result<Self, NavHintError> {
        let bad = || NavHintError::Syntax(s.to_string());
        let (r, c) = s.split_once(['x', 'X', ',']).ok_or_else(bad)?;
        let side = |t: &str| -> Result<Option<usize>, NavHintError> {
            match t.trim() {
                "?" | "-1" => Ok(None),
                n => n
                    .parse::<usize>()
                    .ok()
                    .filter(|&v| v > 0)
                    .map(Some)
                    .ok_or_else(bad),
            }
        };
        Ok(Self {
            rows: side(r)?,
            cols: side(c)?,
        })
    }
}

impl NavHint {
    /// The scan shape for `frames` announced frames.
    ///
    /// # Errors
    /// [`NavHintError::Mismatch`] when `frames` is not a multiple of the fixed side (or not
    /// equal to rows × cols when both are fixed, or both are `?`).
    pub fn resolve(&self, frames: u64) -> Result<NavShape, NavHintError> {
        let mismatch = || NavHintError::Mismatch {
            hint: self.to_string(),
            frames,
        };
        let n = usize::try_from(frames).map_err(|_| mismatch())?;
        match (self.rows, self.cols) {
            (Some(r), Some(c)) if r * c == n => Ok(NavShape::new(r, c)),
            (None, Some(c)) if n > 0 && n % c == 0 => Ok(NavShape::new(n / c, c)),
            (Some(r), None) if n > 0 && n % r == 0 => Ok(NavShape::new(r, n / r)),
            _ => Err(mismatch()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_parse_and_resolve() {
        let h: NavHint = "?x256".parse().expect("hint");
        assert_eq!(h.resolve(65_536), Ok(NavShape::new(256, 256)));
        assert_eq!(h.resolve(512), Ok(NavShape::new(2, 256)));
        assert!(matches!(
            h.resolve(500),
            Err(NavHintError::Mismatch { frames: 500, .. })
        ));
        let h: NavHint = "16x?".parse().expect("hint");
        assert_eq!(h.resolve(256), Ok(NavShape::new(16, 16)));
        let h: NavHint = "4x4".parse().expect("hint");
        assert_eq!(h.resolve(16), Ok(NavShape::new(4, 4)));
        assert!(h.resolve(17).is_err());
        assert!("?x?".parse::<NavHint>().expect("hint").resolve(16).is_err());
        for bad in ["256", "ax4", "0x4", "4x"] {
            assert!(bad.parse::<NavHint>().is_err(), "{bad}");
        }
        assert_eq!(
            "-1,128".parse::<NavHint>().expect("hint").to_string(),
            "?x128"
        );
    }
}
