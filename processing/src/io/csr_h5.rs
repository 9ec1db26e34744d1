//! [`CsrHdf5DataSet`]: sparse frames recorded as CSR in a stemflow recording
//! (`/entry/data/csr/{indptr, indices, values}`, `docs/formats.md` layout 2, sparse
//! frames), read as CSR rows so offline processing stays sparse (decision 0010).

use super::{DataSet, IoError};
use hdf5::Dataset;
use std::path::{Path, PathBuf};
use stemflow_core::csr::CsrRows;
use stemflow_core::frame::Tile;
use stemflow_core::{DType, NavShape, SigShape};

/// The CSR group of a recording of sparse frames.
pub const CSR_GROUP: &str = "/entry/data/csr";

/// A stemflow recording of sparse frames.
pub struct CsrHdf5DataSet {
    path: PathBuf,
    _file: hdf5::File,
    indices: Dataset,
    values: Dataset,
    /// Every row pointer (`frames + 1`), read at open.
    indptr: Vec<u64>,
    nav_shape: NavShape,
    sig_shape: SigShape,
}

impl CsrHdf5DataSet {
    /// True when `path` is an HDF5 file holding [`CSR_GROUP`].
    pub fn is_csr(path: &Path) -> bool {
        hdf5::File::with_options()
            .with_fapl(|p| p.file_locking(false))
            .open(path)
            .is_ok_and(|f| f.link_exists(CSR_GROUP))
    }

    /// Opens the CSR frames of the recording `path`: the scan from the validity map, the
    /// frame shape from `/entry/data/sig_shape`.
    ///
    /// # Errors
    /// [`IoError::Hdf5`] naming the object that cannot be read; [`IoError::Format`] when
    /// the row pointers do not match the scan or are not monotonic up to the entries.
    pub fn open(path: &Path) -> Result<Self, IoError> {
        let h5 = |object: &str, e: hdf5::Error| IoError::Hdf5 {
            path: path.to_path_buf(),
            object: object.to_string(),
            detail: e.to_string(),
        };
        let fmt = |detail: String| IoError::Format {
            path: path.to_path_buf(),
            detail,
        };
        let file = hdf5::File::with_options()
            .with_fapl(|p| p.file_locking(false))
            .open(path)
            .map_err(|e| h5("/", e))?;
        let validity = "/entry/data/validity";
        let v = file.dataset(validity).map_err(|e| h5(validity, e))?;
        let [nr, nc] = v.shape()[..] else {
            return Err(fmt(format!("{validity} is not 2-D: {:?}", v.shape())));
        };
        let sig_path = "/entry/data/sig_shape";
        let sig = file
            .dataset(sig_path)
            .and_then(|d| d.read_raw::<u64>())
            .map_err(|e| h5(sig_path, e))?;
        let [sr, sc] = sig[..] else {
            return Err(fmt(format!("{sig_path} holds {sig:?}, expected 2 values")));
        };
        let name = |n: &str| format!("{CSR_GROUP}/{n}");
        let indptr = file
            .dataset(&name("indptr"))
            .and_then(|d| d.read_raw::<u64>())
            .map_err(|e| h5(&name("indptr"), e))?;
        let indices = file
            .dataset(&name("indices"))
            .map_err(|e| h5(&name("indices"), e))?;
        let values = file
            .dataset(&name("values"))
            .map_err(|e| h5(&name("values"), e))?;
        let nav_shape = NavShape::new(nr, nc);
        let nnz = indices.size() as u64;
        if indptr.len() != nav_shape.len() + 1
            || indptr.first() != Some(&0)
            || indptr.windows(2).any(|w| w[1] < w[0])
            || indptr.last().copied().unwrap_or(0) > nnz
            || values.size() as u64 != nnz
        {
            return Err(fmt(format!(
                "{CSR_GROUP}: {} row pointers for {} frames (need frames + 1, from 0, never decreasing, up to the {nnz} indices; {} values)",
                indptr.len(),
                nav_shape.len(),
                values.size()
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
            _file: file,
            indices,
            values,
            indptr,
            nav_shape,
            sig_shape: SigShape::new(sr as usize, sc as usize),
        })
    }
}

impl DataSet for CsrHdf5DataSet {
    fn path(&self) -> &Path {
        &self.path
    }
    fn nav_shape(&self) -> NavShape {
        self.nav_shape
    }
    fn sig_shape(&self) -> SigShape {
        self.sig_shape
    }
    fn dtype(&self) -> DType {
        DType::U32
    }
    fn frames(&self) -> u64 {
        self.nav_shape.len() as u64
    }
    fn is_sparse(&self) -> bool {
        true
    }
    fn read_csr(&mut self, first: u64, n: usize, out: &mut CsrRows) -> Result<(), IoError> {
        let end = first + n as u64;
        if end > self.frames() {
            return Err(IoError::Range {
                path: self.path.clone(),
                first,
                end,
                frames: self.frames(),
            });
        }
        out.clear(first, self.sig_shape);
        let (a, b) = (
            self.indptr[first as usize] as usize,
            self.indptr[end as usize] as usize,
        );
        let h5 = |object: &str, e: hdf5::Error| IoError::Hdf5 {
            path: self.path.clone(),
            object: format!("{CSR_GROUP}/{object}"),
            detail: e.to_string(),
        };
        if b > a {
            let idx = self
                .indices
                .read_slice_1d::<u32, _>(a..b)
                .map_err(|e| h5("indices", e))?;
            let val = self
                .values
                .read_slice_1d::<u32, _>(a..b)
                .map_err(|e| h5("values", e))?;
            if let Some(&bad) = idx.iter().find(|&&i| i as usize >= self.sig_shape.len()) {
                return Err(IoError::Format {
                    path: self.path.clone(),
                    detail: format!(
                        "{CSR_GROUP}/indices: index {bad} outside the {}-pixel frame",
                        self.sig_shape.len()
                    ),
                });
            }
            out.indices.extend(idx.iter());
            out.values.extend(val.iter());
        }
        out.indptr.pop();
        out.indptr.extend(
            self.indptr[first as usize..=end as usize]
                .iter()
                .map(|&p| p - a as u64),
        );
        Ok(())
    }
    fn read_tile(&mut self, first: u64, n: usize, out: &mut Tile) -> Result<(), IoError> {
        let mut rows = CsrRows::default();
        self.read_csr(first, n, &mut rows)?;
        rows.densify_into(0..rows.n_frames(), out);
        Ok(())
    }
}
