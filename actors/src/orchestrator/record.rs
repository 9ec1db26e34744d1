//! How a run ended: its [`RunRecord`], and the [`RunError`] of a failed one.

use crate::supervisor::Role;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use stemflow_core::devices::DeviceError;
use stemflow_core::metadata::RunMetadata;
use stemflow_core::state::IllegalTransition;

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// Every expected frame was received.
    Completed,
    /// The run ended with lost or damaged frames (counted in the record).
    CompletedWithLoss,
    /// The run was cancelled.
    Cancelled,
    /// The run failed; the record's `error` says why.
    Fault,
}

/// The record of one run, stored in the recording and printed at the end.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    /// Start time, RFC 3339 UTC.
    pub start_time: String,
    /// Stop time, RFC 3339 UTC.
    pub stop_time: String,
    /// Wall time, s.
    pub duration_s: f64,
    /// Time from the detector being armed (passive mode: the acquisition announced by
    /// whoever armed it) to the end, s; 0 when it was never armed. The frame rate counts
    /// over this time: a passive run's wait for someone to arm is not acquiring.
    #[serde(default)]
    pub acquisition_s: f64,
    /// How it ended.
    pub exit_status: ExitStatus,
    /// The error, if it failed.
    pub error: Option<String>,
    /// Frames expected.
    pub frames_expected: u64,
    /// Frames received intact.
    pub frames_received: u64,
    /// Frames lost: never received, though the detector produced them (or, in a
    /// cancelled run, missing before the last frame that arrived).
    pub frames_lost: u64,
    /// In a cancelled run: scan positions after the last frame that arrived, never
    /// acquired because the run was stopped (not lost; validity code 3).
    #[serde(default)]
    pub frames_not_acquired: u64,
    /// Frames damaged.
    pub frames_damaged: u64,
    /// Frames processed by the pipeline.
    pub frames_processed: u64,
    /// Bytes of decoded frame data processed.
    pub bytes_processed: u64,
    /// Why the detector side ended.
    pub end_reason: String,
    /// Read-back metadata.
    pub metadata: RunMetadata,
    /// The recording written, if any.
    pub output_file: Option<PathBuf>,
}

/// Errors of a run; each names the device or actor, what was expected and what was observed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A device call failed.
    #[error("{step}: {source}")]
    Device {
        /// The step (e.g. `configure detector`).
        step: String,
        /// The device's error.
        #[source]
        source: DeviceError,
    },
    /// A supervised actor failed during the run.
    #[error("actor `{actor}` failed during {step}: {error}")]
    ActorFailed {
        /// The actor.
        actor: Role,
        /// The step under way.
        step: String,
        /// Its panic message or error.
        error: String,
    },
    /// Frames did not arrive in time.
    #[error(
        "deadline of {waited_s:.1} s passed: detector `{detector}` received {received} of {expected} frames triggered by `{trigger_source}`"
    )]
    Deadline {
        /// Detector name.
        detector: String,
        /// What triggers it (scan engine name, `soft trigger`, `internal`).
        trigger_source: String,
        /// Frames expected.
        expected: u64,
        /// Frames received.
        received: u64,
        /// Seconds waited.
        waited_s: f64,
    },
    /// The detector side ended the acquisition with an error.
    #[error(
        "detector `{detector}`: {error} ({received} of {expected} frames received, triggered by `{trigger_source}`)"
    )]
    Detector {
        /// Detector name.
        detector: String,
        /// What triggers it.
        trigger_source: String,
        /// The receiver's error.
        error: String,
        /// Frames expected.
        expected: u64,
        /// Frames received.
        received: u64,
    },
    /// The pipeline failed.
    #[error("processing pipeline: {0}")]
    Pipeline(String),
    /// The front end's ready-for-data hook failed (its message).
    #[error("ready-for-data hook: {0}")]
    Hook(String),
    /// The recording failed.
    #[error("recording: {0}")]
    Recording(String),
    /// The state machine refused a transition.
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
}

/// A failed run: the error and the record written for it.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct RunFailure {
    /// What went wrong.
    #[source]
    pub error: RunError,
    /// The run's record (exit status Fault).
    pub record: Box<RunRecord>,
}
