//! Regions of interest over the scan: which frames the UDFs process.
//!
//! A [`Roi`] is a boolean mask over the scan grid (`nav_rows × nav_cols`, row-major, frame
//! `i` at `(i / cols, i % cols)`), built from a mask or from a list of scan coordinates.
//! Frames outside it are not given to the UDFs (the tile sink still gets them: a recording
//! keeps every frame). Nav buffers hold NaN outside the ROI — for integer buffers the fill
//! value [`crate::udf::ResultDType::int_fill`] once converted — and [`Roi::compact`] gives the
//! raw, ROI-only form: the values of the positions inside, in scan order.

use crate::result::{BufferKind, ResultBuffer};
use stemflow_core::NavShape;

/// Errors building a ROI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoiError {
    /// The mask does not have one entry per scan position.
    #[error("ROI mask has {observed} entries, the {nav_shape} scan has {expected} positions")]
    MaskLength {
        /// The scan grid.
        nav_shape: NavShape,
        /// Positions in the scan.
        expected: usize,
        /// Entries in the mask.
        observed: usize,
    },
    /// A coordinate lies outside the scan.
    #[error("ROI coordinate (row {row}, col {col}) lies outside the {nav_shape} scan")]
    Coordinate {
        /// The scan grid.
        nav_shape: NavShape,
        /// Row given.
        row: usize,
        /// Column given.
        col: usize,
    },
}

/// A region of interest: a boolean per scan position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Roi {
    nav_shape: NavShape,
    mask: Vec<bool>,
    count: usize,
}

impl Roi {
    /// A ROI from a mask with one entry per scan position, row-major.
    ///
    /// # Errors
    /// [`RoiError::MaskLength`] when `mask.len() != nav_shape.len()`.
    pub fn from_mask(nav_shape: NavShape, mask: Vec<bool>) -> Result<Self, RoiError> {
        if mask.len() != nav_shape.len() {
            return Err(RoiError::MaskLength {
                nav_shape,
                expected: nav_shape.len(),
                observed: mask.len(),
            });
        }
        let count = mask.iter().filter(|&&b| b).count();
        Ok(Self {
            nav_shape,
            mask,
            count,
        })
    }

    /// A ROI of the scan positions `(row, col)` listed (duplicates allowed).
    ///
    /// # Errors
    /// [`RoiError::Coordinate`] for a position outside the scan.
    pub fn from_coords(nav_shape: NavShape, coords: &[(usize, usize)]) -> Result<Self, RoiError> {
        let mut mask = vec![false; nav_shape.len()];
        for &(row, col) in coords {
            if row >= nav_shape.rows || col >= nav_shape.cols {
                return Err(RoiError::Coordinate {
                    nav_shape,
                    row,
                    col,
                });
            }
            mask[row * nav_shape.cols + col] = true;
        }
        Self::from_mask(nav_shape, mask)
    }

    /// The scan grid the ROI is defined on.
    pub fn nav_shape(&self) -> NavShape {
        self.nav_shape
    }

    /// True when frame `frame` (acquisition index) is inside; frames beyond the scan are
    /// outside.
    #[inline]
    pub fn contains(&self, frame: u64) -> bool {
        usize::try_from(frame)
            .ok()
            .and_then(|i| self.mask.get(i))
            .copied()
            .unwrap_or(false)
    }

    /// Positions inside the ROI.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The mask, one entry per scan position, row-major.
    pub fn mask(&self) -> &[bool] {
        &self.mask
    }

    /// The raw, ROI-only form of a nav buffer: shape `[count, extra…]`, the values of the
    /// positions inside the ROI in scan order. Sig and single buffers, and buffers of
    /// another scan shape, come back unchanged.
    pub fn compact(&self, buffer: &ResultBuffer) -> ResultBuffer {
        let nav = [self.nav_shape.rows, self.nav_shape.cols];
        if buffer.kind != BufferKind::Nav || buffer.shape.len() < 2 || buffer.shape[..2] != nav {
            return buffer.clone();
        }
        let width: usize = buffer.shape[2..].iter().product();
        let mut data = Vec::with_capacity(self.count * width);
        for (i, _) in self.mask.iter().enumerate().filter(|(_, b)| **b) {
            data.extend_from_slice(&buffer.data[i * width..(i + 1) * width]);
        }
        let mut shape = vec![self.count];
        shape.extend_from_slice(&buffer.shape[2..]);
        ResultBuffer {
            name: buffer.name.clone(),
            kind: buffer.kind,
            shape,
            data,
            unit: buffer.unit.clone(),
            dtype: buffer.dtype,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinates_and_masks_agree_and_compact_keeps_scan_order() {
        let nav = NavShape::new(2, 3);
        let a = Roi::from_coords(nav, &[(1, 2), (0, 1), (0, 1)]).unwrap();
        let b = Roi::from_mask(nav, vec![false, true, false, false, false, true]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.count(), 2);
        assert!(a.contains(5) && !a.contains(0) && !a.contains(99));
        let buf = ResultBuffer {
            name: "v".into(),
            kind: BufferKind::Nav,
            shape: vec![2, 3, 2],
            data: (0..12).map(f64::from).collect(),
            unit: "counts".into(),
            dtype: Default::default(),
        };
        let c = a.compact(&buf);
        assert_eq!(c.shape, vec![2, 2]);
        assert_eq!(c.data, vec![2.0, 3.0, 10.0, 11.0]);
        assert!(matches!(
            Roi::from_coords(nav, &[(2, 0)]),
            Err(RoiError::Coordinate { row: 2, .. })
        ));
        assert!(Roi::from_mask(nav, vec![true]).is_err());
    }
}
