//! [`Hdf5DataSet`]: frames from any 3-D or 4-D HDF5 dataset of integers or floats.

use super::{DataSet, ElementType, F64_EXACT_INT, IoError, shape_tile};
use hdf5::types::{FloatSize, IntSize, TypeDescriptor};
use hdf5::{Dataset, H5Type};
use ndarray::{Ix3, Ix4};
use std::path::{Path, PathBuf};
use stemflow_core::frame::{Tile, TileData};
use stemflow_core::{DType, NavShape, SigShape};

/// Dataset paths tried, in order, when none is given: our recordings' frames, then the
/// NeXus/DECTRIS `entry/data/data`.
pub const DEFAULT_DATASETS: [&str; 2] = ["/entry/data/frames", "/entry/data/data"];

/// Frames in an HDF5 dataset of shape `(frames, sig_rows, sig_cols)` or
/// `(nav_rows, nav_cols, sig_rows, sig_cols)`, of any byte order, and of type
///
/// | dataset | frames |
/// |---|---|
/// | uint8, uint16, uint32, uint64 | the same |
/// | float32, float64 (e.g. our recordings of float frames) | the same |
/// | int8, int16 | float32, converted exactly by libhdf5 as it reads |
/// | int32 | float64, converted exactly by libhdf5 as it reads |
/// | int64 | float64; a value beyond ±2^53 is [`IoError::Inexact`] when its frame is read |
///
/// Compressed datasets read through libhdf5's filters (a filter plugin must be installed
/// for filters libhdf5 does not ship, e.g. bitshuffle).
pub struct Hdf5DataSet {
    path: PathBuf,
    name: String,
    // Keeps the file open while `data` is used.
    _file: hdf5::File,
    data: Dataset,
    /// `None` for a 3-D dataset.
    nav_dims: Option<NavShape>,
    nav_shape: NavShape,
    sig_shape: SigShape,
    dtype: DType,
    element: ElementType,
    /// Reused block of int64 pixels, checked before they become float64.
    scratch: Vec<i64>,
}

impl Hdf5DataSet {
    /// Opens dataset `dataset` of the HDF5 file `path` (`None`: the first of
    /// [`DEFAULT_DATASETS`] that exists).
    ///
    /// # Errors
    /// [`IoError::Hdf5`] when the file or dataset cannot be opened; [`IoError::Format`] for
    /// a dataset that is not 3-D or 4-D or not of one of the types above (the message
    /// names the dataset, the type found and the types supported).
    pub fn open(path: &Path, dataset: Option<&str>) -> Result<Self, IoError> {
        let h5 = |object: &str, e: hdf5::Error| IoError::Hdf5 {
            path: path.to_path_buf(),
            object: object.to_string(),
            detail: e.to_string(),
        };
        let file = hdf5::File::with_options()
            .with_fapl(|p| p.file_locking(false))
            .open(path)
            .map_err(|e| h5("/", e))?;
        let name = match dataset {
            Some(d) => d.to_string(),
            None => DEFAULT_DATASETS
                .iter()
                .find(|d| file.link_exists(d))
                .map(|d| d.to_string())
                .ok_or_else(|| IoError::Format {
                    path: path.to_path_buf(),
                    detail: format!(
                        "none of the default datasets {DEFAULT_DATASETS:?} exists; name one"
                    ),
                })?,
        };
        let data = file.dataset(&name).map_err(|e| h5(&name, e))?;
        let descr = data
            .dtype()
            .and_then(|t| t.to_descriptor())
            .map_err(|e| h5(&name, e))?;
        let element = match descr {
            TypeDescriptor::Unsigned(IntSize::U1) => ElementType::U8,
            TypeDescriptor::Unsigned(IntSize::U2) => ElementType::U16,
            TypeDescriptor::Unsigned(IntSize::U4) => ElementType::U32,
            TypeDescriptor::Unsigned(IntSize::U8) => ElementType::U64,
            TypeDescriptor::Integer(IntSize::U1) => ElementType::I8,
            TypeDescriptor::Integer(IntSize::U2) => ElementType::I16,
            TypeDescriptor::Integer(IntSize::U4) => ElementType::I32,
            TypeDescriptor::Integer(IntSize::U8) => ElementType::I64,
            TypeDescriptor::Float(FloatSize::U4) => ElementType::F32,
            TypeDescriptor::Float(FloatSize::U8) => ElementType::F64,
            other => {
                return Err(IoError::Format {
                    path: path.to_path_buf(),
                    detail: format!(
                        "dataset {name}: pixel type {other} cannot be read as frames; supported: uint8, uint16, uint32, uint64, float32, float64, int8, int16 (read as float32), int32, int64 (read as float64)"
                    ),
                });
            }
        };
        let dtype = element.memory_dtype();
        let shape = data.shape();
        let (nav_dims, nav_shape, sig_shape) = match shape[..] {
            [f, r, c] => (None, NavShape::new(1, f), SigShape::new(r, c)),
            [nr, nc, r, c] => (
                Some(NavShape::new(nr, nc)),
                NavShape::new(nr, nc),
                SigShape::new(r, c),
            ),
            _ => {
                return Err(IoError::Format {
                    path: path.to_path_buf(),
                    detail: format!(
                        "dataset {name}: expected 3 or 4 dimensions, found shape {shape:?}"
                    ),
                });
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            name,
            _file: file,
            data,
            nav_dims,
            nav_shape,
            sig_shape,
            dtype,
            element,
            scratch: Vec::new(),
        })
    }

    /// The pixel type stored in the dataset.
    pub fn element(&self) -> ElementType {
        self.element
    }

    /// The dataset path inside the file.
    pub fn dataset_name(&self) -> &str {
        &self.name
    }
}

fn read_3d<T: H5Type + Copy>(
    d: &Dataset,
    out: &mut [T],
    first: usize,
    n: usize,
) -> hdf5::Result<()> {
    let arr = d.read_slice::<T, _, Ix3>((first..first + n, .., ..))?;
    match arr.as_slice() {
        Some(src) => out.copy_from_slice(src),
        None => out.iter_mut().zip(arr.iter()).for_each(|(o, s)| *o = *s),
    }
    Ok(())
}

/// Reads frames `first..first + n` of a 4-D dataset with `cols` scan columns, one
/// hyperslab per scan row touched.
fn read_4d<T: H5Type + Copy>(
    d: &Dataset,
    out: &mut [T],
    first: usize,
    n: usize,
    cols: usize,
    frame_len: usize,
) -> hdf5::Result<()> {
    let mut done = 0;
    while done < n {
        let f = first + done;
        let (row, col) = (f / cols, f % cols);
        let m = (cols - col).min(n - done);
        let arr = d.read_slice::<T, _, Ix4>((row..row + 1, col..col + m, .., ..))?;
        let dst = &mut out[done * frame_len..(done + m) * frame_len];
        match arr.as_slice() {
            Some(src) => dst.copy_from_slice(src),
            None => dst.iter_mut().zip(arr.iter()).for_each(|(o, s)| *o = *s),
        }
        done += m;
    }
    Ok(())
}

impl DataSet for Hdf5DataSet {
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
        self.dtype
    }
    fn element(&self) -> ElementType {
        self.element
    }
    fn frames(&self) -> u64 {
        self.nav_shape.len() as u64
    }
    fn read_tile(&mut self, first: u64, n: usize, out: &mut Tile) -> Result<(), IoError> {
        let end = first + n as u64;
        if end > self.frames() {
            return Err(IoError::Range {
                path: self.path.clone(),
                first,
                end,
                frames: self.frames(),
            });
        }
        shape_tile(out, first, n, self.sig_shape, self.dtype);
        let f = first as usize;
        let frame_len = self.sig_shape.len();
        let d = &self.data;
        let hdf5_err = |e: hdf5::Error| IoError::Hdf5 {
            path: self.path.clone(),
            object: self.name.clone(),
            detail: format!("reading frames {first}..{end}: {e}"),
        };
        if self.element == ElementType::I64 {
            // libhdf5 would round int64 → float64 silently: read the integers, check them.
            let v = &mut self.scratch;
            v.clear();
            v.resize(n * frame_len, 0);
            match self.nav_dims {
                None => read_3d(d, v, f, n),
                Some(nav) => read_4d(d, v, f, n, nav.cols, frame_len),
            }
            .map_err(hdf5_err)?;
            let TileData::F64(dst) = &mut out.data else {
                // shape_tile gave the tile the dataset's dtype, float64.
                return Err(IoError::Format {
                    path: self.path.clone(),
                    detail: format!("dataset {}: int64 frames need a float64 tile", self.name),
                });
            };
            for (i, (o, &x)) in dst.iter_mut().zip(v.iter()).enumerate() {
                if x.unsigned_abs() > F64_EXACT_INT {
                    let frame_len = frame_len.max(1);
                    return Err(IoError::Inexact {
                        path: self.path.clone(),
                        frame: first + (i / frame_len) as u64,
                        pixel: i % frame_len,
                        value: x,
                    });
                }
                *o = x as f64;
            }
            return Ok(());
        }
        // libhdf5 converts int8/int16 → float32 and int32 → float64 (exactly) as it reads.
        let r = match (self.nav_dims, &mut out.data) {
            (None, TileData::U8(v)) => read_3d(d, v, f, n),
            (None, TileData::U16(v)) => read_3d(d, v, f, n),
            (None, TileData::U32(v)) => read_3d(d, v, f, n),
            (None, TileData::U64(v)) => read_3d(d, v, f, n),
            (Some(nav), TileData::U8(v)) => read_4d(d, v, f, n, nav.cols, frame_len),
            (Some(nav), TileData::U16(v)) => read_4d(d, v, f, n, nav.cols, frame_len),
            (Some(nav), TileData::U32(v)) => read_4d(d, v, f, n, nav.cols, frame_len),
            (Some(nav), TileData::U64(v)) => read_4d(d, v, f, n, nav.cols, frame_len),
            (None, TileData::F32(v)) => read_3d(d, v, f, n),
            (None, TileData::F64(v)) => read_3d(d, v, f, n),
            (Some(nav), TileData::F32(v)) => read_4d(d, v, f, n, nav.cols, frame_len),
            (Some(nav), TileData::F64(v)) => read_4d(d, v, f, n, nav.cols, frame_len),
        };
        r.map_err(hdf5_err)
    }
}
