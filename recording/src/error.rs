//! The one error type of this crate: every message names the file, the HDF5 object (or the
//! image) and the numbers that matter.

use std::path::PathBuf;
use stemflow_core::{DType, SigShape};

/// Failures creating, writing, finishing or reading a recording, or writing a PNG image.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// The HDF5 library refused an operation.
    #[error("{path}: {object}: {during}: {source}")]
    Hdf5 {
        /// The file.
        path: PathBuf,
        /// The HDF5 object (group, dataset or attribute path) concerned.
        object: String,
        /// What we were doing, with the numbers (e.g. `writing frames 32..48`).
        during: String,
        /// The library's error stack, as reported.
        #[source]
        source: hdf5::Error,
    },
    /// The recording spec cannot be recorded (zero-sized shape, bad compression level, …).
    #[error("{path}: invalid recording spec: {detail}")]
    Spec {
        /// The file that was to be created.
        path: PathBuf,
        /// What is wrong, with the numbers.
        detail: String,
    },
    /// A tile's frame shape differs from the recording's.
    #[error(
        "{path}: tile at frame {first_frame} has frames of {observed} pixels, the recording has {expected}"
    )]
    TileShape {
        /// The file.
        path: PathBuf,
        /// Acquisition index of the tile's first frame.
        first_frame: u64,
        /// The recording's `sig_shape`.
        expected: SigShape,
        /// The tile's `sig_shape`.
        observed: SigShape,
    },
    /// A tile's pixel type differs from the recording's.
    #[error(
        "{path}: tile at frame {first_frame} holds {observed} pixels, the recording is {expected}"
    )]
    TileDtype {
        /// The file.
        path: PathBuf,
        /// Acquisition index of the tile's first frame.
        first_frame: u64,
        /// The recording's dtype.
        expected: DType,
        /// The tile's dtype.
        observed: DType,
    },
    /// A tile's pixel buffer does not hold `n_frames × sig_shape` elements.
    #[error(
        "{path}: tile at frame {first_frame} has {observed} pixels, expected {expected} ({n_frames} frames)"
    )]
    TileLength {
        /// The file.
        path: PathBuf,
        /// Acquisition index of the tile's first frame.
        first_frame: u64,
        /// Frames the tile claims.
        n_frames: usize,
        /// `n_frames × sig_shape.len()`.
        expected: usize,
        /// Elements in the buffer.
        observed: usize,
    },
    /// Frames outside the acquisition were written or read.
    #[error("{path}: frames {first}..{end} requested, the recording has frames 0..{frames}")]
    FrameRange {
        /// The file.
        path: PathBuf,
        /// First frame asked for.
        first: u64,
        /// One past the last frame asked for.
        end: u64,
        /// Frames in the recording (`nav_shape.len()`).
        frames: u64,
    },
    /// The writer thread did not take a tile within the deadline (disk too slow or stuck).
    #[error(
        "{path}: the writer thread took no tile for {waited_s:.1} s with {in_flight} tiles in flight (disk stalled?)"
    )]
    WriterStalled {
        /// The file.
        path: PathBuf,
        /// How long we waited, s.
        waited_s: f64,
        /// Tiles queued to the writer and not yet written.
        in_flight: usize,
    },
    /// The writer thread ended without reporting an error (it panicked).
    #[error("{path}: the writer thread died: {detail}")]
    WriterDied {
        /// The file.
        path: PathBuf,
        /// The panic message, where there is one.
        detail: String,
    },
    /// A value handed to `finish` does not fit the recording.
    #[error("{path}: {object}: {detail}")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// The HDF5 object it was to be stored as.
        object: String,
        /// Expected and observed, with the numbers.
        detail: String,
    },
    /// A file does not have the layout this crate writes (formats.md).
    #[error("{path}: {object}: not a stemflow recording: {detail}")]
    Layout {
        /// The file.
        path: PathBuf,
        /// The object that is missing or has the wrong shape or type.
        object: String,
        /// Expected and observed.
        detail: String,
    },
    /// Metadata could not be turned into JSON or back.
    #[error("{path}: {object}: JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The object holding (or meant to hold) the JSON text.
        object: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// File-system failure outside HDF5 (creating a PNG file, …).
    #[error("{path}: I/O error while {during}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What we were doing.
        during: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The PNG encoder failed.
    #[error("{path}: PNG encoding: {source}")]
    Png {
        /// The image file.
        path: PathBuf,
        /// The encoder's error.
        #[source]
        source: png::EncodingError,
    },
    /// An image's data does not match its shape.
    #[error("{path}: image of {rows}x{cols} pixels needs {expected} values, got {observed}")]
    ImageShape {
        /// The image file.
        path: PathBuf,
        /// Rows requested.
        rows: usize,
        /// Columns requested.
        cols: usize,
        /// `rows × cols` (0 rows or columns are refused too).
        expected: usize,
        /// Values given.
        observed: usize,
    },
}
