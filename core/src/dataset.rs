//! [`DataSet`]: a recorded file (or set of files) of frames that an engine reads tile by
//! tile, and [`IoError`], what reading one can fail with.
//!
//! The trait lives here so that every reader implements the same one, whichever crate
//! knows its format: the processing crate's `.npy`, raw binary and HDF5 readers, and the
//! detector drivers' Merlin `.mib` and DECTRIS master-file readers. Nothing here reads a
//! file; the trait only says how a reader hands its frames over.

use crate::csr::CsrRows;
use crate::element::ElementType;
use crate::frame::{Tile, TileData};
use crate::{DType, NavShape, SigShape};
use std::path::{Path, PathBuf};

/// Errors reading a data set.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The operating system refused a read.
    #[error("{path}: {during}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        during: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file's content is not what its format or the given parameters say.
    #[error("{path}: {detail}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What was expected and what was found.
        detail: String,
    },
    /// The file is shorter than the frames asked for.
    #[error("{path}: frames {first}..{end} need bytes up to {needed}, the file has {size}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// First frame asked for.
        first: u64,
        /// One past the last frame asked for.
        end: u64,
        /// File size needed, bytes.
        needed: u64,
        /// File size, bytes.
        size: u64,
    },
    /// Frames beyond the data set were asked for.
    #[error("{path}: frames {first}..{end} asked for, the data set holds {frames}")]
    Range {
        /// The file.
        path: PathBuf,
        /// First frame asked for.
        first: u64,
        /// One past the last frame asked for.
        end: u64,
        /// Frames in the data set.
        frames: u64,
    },
    /// A format reader with errors of its own (e.g. the Merlin driver's `.mib` reader) failed.
    #[error("{path}: {source}")]
    Reader {
        /// The file.
        path: PathBuf,
        /// The reader's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// libhdf5 failed.
    #[error("{path}: HDF5 {object}: {detail}")]
    Hdf5 {
        /// The file.
        path: PathBuf,
        /// The dataset or group.
        object: String,
        /// libhdf5's message.
        detail: String,
    },
    /// An int64 pixel beyond ±2^53, which no float64 holds exactly (int64 files are read
    /// as float64).
    #[error(
        "{path}: frame {frame}, pixel {pixel}: int64 value {value} lies beyond ±2^53 and has no exact float64; int64 files are read as float64 only when every value lies within ±9007199254740992"
    )]
    Inexact {
        /// The file.
        path: PathBuf,
        /// The frame (index in the file).
        frame: u64,
        /// The pixel, row-major index within the frame.
        pixel: usize,
        /// The value stored.
        value: i64,
    },
}

impl IoError {
    /// An [`IoError::Io`] for `path`, failed while `during` (e.g. `reading frames 0..32`).
    pub fn io(path: &Path, during: &str, source: std::io::Error) -> Self {
        IoError::Io {
            path: path.to_path_buf(),
            during: during.to_string(),
            source,
        }
    }
}

/// A file of frames that the engine can read tile by tile.
///
/// Frames are numbered `0..frames()` in acquisition order; frame `i` lies at scan position
/// `(i / nav_shape().cols, i % nav_shape().cols)`. A reader is moved to the thread that
/// runs the engine, hence `Send`.
pub trait DataSet: Send {
    /// The file, for messages and metadata.
    fn path(&self) -> &Path;
    /// Scan grid as stored (or as given for raw files); `1 × frames` when unknown.
    fn nav_shape(&self) -> NavShape;
    /// Frame shape, pixels.
    fn sig_shape(&self) -> SigShape;
    /// Pixel type of the decoded frames.
    fn dtype(&self) -> DType;
    /// Pixel type stored in the file, before conversion (e.g. int16 for frames of float32;
    /// see [`ElementType`]); by default the frames' own type.
    fn element(&self) -> ElementType {
        self.dtype().into()
    }
    /// Frames in the file.
    fn frames(&self) -> u64;
    /// Reads frames `first..first + n` into `out` (resized; its allocation reused when it
    /// has the data set's dtype).
    ///
    /// # Errors
    /// [`IoError`] naming the file and the frames.
    fn read_tile(&mut self, first: u64, n: usize, out: &mut Tile) -> Result<(), IoError>;

    /// True when the frames are stored sparse (CSR, decision 0010): engines then read them
    /// with [`read_csr`](Self::read_csr) and keep them sparse. Default: false.
    fn is_sparse(&self) -> bool {
        false
    }

    /// Reads frames `first..first + n` as CSR rows into `out` (cleared first, allocations
    /// reused); only for a sparse data set ([`is_sparse`](Self::is_sparse)), whose dtype is
    /// `u32`. The default reads dense frames and keeps their nonzero pixels.
    ///
    /// # Errors
    /// As [`read_tile`](Self::read_tile).
    fn read_csr(&mut self, first: u64, n: usize, out: &mut CsrRows) -> Result<(), IoError> {
        let mut tile = Tile::zeros(first, 0, self.sig_shape(), self.dtype());
        self.read_tile(first, n, &mut tile)?;
        out.clear(first, self.sig_shape());
        for i in 0..tile.n_frames {
            out.push_dense(tile.frame(i));
        }
        Ok(())
    }
}

/// Prepares `out` for `n` frames of `sig` pixels of `dtype` starting at frame `first`:
/// sets its frame range and shape and resizes its pixels to `n × sig.len()`, reusing the
/// allocation when it already holds `dtype` (the pixel values are then unspecified, to be
/// overwritten by the reader).
pub fn shape_tile(out: &mut Tile, first: u64, n: usize, sig: SigShape, dtype: DType) {
    if out.data.dtype() != dtype {
        out.data = TileData::zeros(dtype, 0);
    }
    out.data.resize(n * sig.len());
    out.first_frame = first;
    out.n_frames = n;
    out.sig_shape = sig;
}
