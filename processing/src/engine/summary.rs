//! What a run hands back: [`Snapshot`]s while it goes on, and a [`RunSummary`] with its
//! [`Outcome`] at the end.

use crate::result::UdfResults;
#[cfg(doc)]
use crate::udf::Udf;

/// The merged results at one moment of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// Frames merged into `results` so far.
    pub frames_processed: u64,
    /// One entry per UDF, in the order the UDFs were given; nav positions not yet processed
    /// are NaN.
    pub results: Vec<UdfResults>,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The stream ended (stacks channel disconnected, or the tile reader was exhausted).
    Completed,
    /// The cancel flag was set; frames still queued were not processed.
    Cancelled,
}

/// What a run did.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSummary {
    /// Frames decoded and processed by every UDF.
    pub frames_processed: u64,
    /// Acquisition indices of frames that failed to decode, ascending.
    pub damaged: Vec<u64>,
    /// Frames dropped because their index lies beyond `nav_shape` (decoded, not processed,
    /// not passed to the sink).
    pub out_of_range: u64,
    /// Frames inside the scan but outside the region of interest (decoded and passed to
    /// the sink, not processed).
    pub outside_roi: u64,
    /// Completed or cancelled.
    pub outcome: Outcome,
    /// After a cancelled live run ([`super::run_live`]): the acquisition index just after
    /// the last frame of the stacks the run took (stacks arrive in order, and every stack
    /// taken is processed to its end). Frames from there on (still queued, in flight, or sent after
    /// the cancel) are in no result and were not passed to the sink, so the caller must not
    /// count them as received. `None` for completed runs and offline runs.
    pub unprocessed_from: Option<u64>,
    /// Final results (after [`Udf::postprocess`] and [`Udf::get_results`]), one entry per
    /// UDF in the order given.
    pub results: Vec<UdfResults>,
}
