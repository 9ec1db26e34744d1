//! Custom masks from `.npy` files: the file-format side of [`CustomMask`], kept out of
//! [`crate::mask`] so that mask geometry does not depend on file formats.

use super::IoError;
use super::npy;
use crate::mask::CustomMask;
use std::path::Path;
use stemflow_core::SigShape;

impl CustomMask {
    /// Loads a 2-D `.npy` array (any integer, float or bool dtype, either byte order);
    /// nonzero entries are in the mask.
    ///
    /// # Errors
    /// [`IoError`] when the file cannot be read, is not a 2-D `.npy` array, or
    /// has a dtype other than bool, integers or floats.
    pub fn from_npy(path: &Path) -> Result<Self, IoError> {
        let (shape, values) = npy::read_nonzero(path)?;
        let [rows, cols] = shape[..] else {
            return Err(IoError::Format {
                path: path.to_path_buf(),
                detail: format!("a custom mask must be a 2-D array, found shape {shape:?}"),
            });
        };
        Ok(Self {
            sig_shape: SigShape::new(rows, cols),
            pixels: values,
        })
    }
}
