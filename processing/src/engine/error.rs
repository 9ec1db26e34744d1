//! [`ProcessingError`]: what stops a run.

use crate::sink::SinkError;
#[cfg(doc)]
use crate::udf::Udf;
use stemflow_core::{DType, NavShape, SigShape};

/// The error type of tile sources (a reader's error, boxed: each source has its own).
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Errors that stop a run.
#[derive(Debug, thiserror::Error)]
pub enum ProcessingError {
    /// A UDF's parameters do not fit the data set.
    #[error("UDF `{udf}`: {detail}")]
    Udf {
        /// The UDF's name.
        udf: String,
        /// What is wrong, from [`Udf::check`].
        detail: String,
    },
    /// Two UDFs share a name.
    #[error("two UDFs are named `{name}`; UDF names must be unique within a run")]
    DuplicateUdf {
        /// The repeated name.
        name: String,
    },
    /// A stack's decoder or a tile does not produce what the run was configured for.
    #[error(
        "{source_kind} at frame {first_frame}: {observed_dtype} frames of {observed_sig} pixels, expected {expected_dtype} frames of {expected_sig} pixels"
    )]
    Mismatch {
        /// `stack decoder` or `tile`.
        source_kind: &'static str,
        /// First frame of the offending stack or tile.
        first_frame: u64,
        /// Configured frame shape.
        expected_sig: SigShape,
        /// Configured pixel type.
        expected_dtype: DType,
        /// Frame shape found.
        observed_sig: SigShape,
        /// Pixel type found.
        observed_dtype: DType,
    },
    /// A tile's pixel buffer does not hold `n_frames × sig_shape` pixels.
    #[error(
        "tile at frame {first_frame}: {n_frames} frames need {expected} pixels, the buffer holds {observed}"
    )]
    TileLength {
        /// First frame of the tile.
        first_frame: u64,
        /// Frames the tile claims.
        n_frames: usize,
        /// Pixels expected.
        expected: usize,
        /// Pixels present.
        observed: usize,
    },
    /// The tile sink failed; the run stopped.
    #[error("sink `{sink}` failed after {frames_processed} frames: {source}")]
    Sink {
        /// The sink's name.
        sink: String,
        /// Frames processed before the failure.
        frames_processed: u64,
        /// The sink's error.
        #[source]
        source: SinkError,
    },
    /// The offline tile reader failed; the run stopped.
    #[error("tile source failed after {frames_processed} frames: {source}")]
    Source {
        /// Frames processed before the failure.
        frames_processed: u64,
        /// The reader's error.
        #[source]
        source: BoxError,
    },
    /// The region of interest is defined on another scan grid.
    #[error("the region of interest covers a {roi_nav} scan, the run scans {run_nav}")]
    RoiShape {
        /// The ROI's scan grid.
        roi_nav: NavShape,
        /// The run's scan grid.
        run_nav: NavShape,
    },
    /// The worker threads could not be started.
    #[error("cannot start {threads} processing threads: {detail}")]
    Threads {
        /// Threads asked for.
        threads: usize,
        /// The operating system's reason.
        detail: String,
    },
}
