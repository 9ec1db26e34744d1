//! What a front end asks for: one acquisition ([`AcquisitionRequest`]) and how to build its
//! processing pipeline ([`PipelineBuilder`]).

use crate::processing::PipelineJob;
use crate::recorder::Recording;
use crossbeam_channel::Receiver;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use stemflow_core::csr::Stack;
use stemflow_core::detector::{ArmMode, DetectorSettings};
use stemflow_core::devices::{MicroscopeSettings, ScanSettings};
use stemflow_core::{DType, NavShape, SigShape};

/// What a pipeline builder gets for one acquisition.
pub struct PipelineInputs {
    /// Raw stacks from the detector's receiver (closed after the last frame).
    pub stacks: Receiver<Stack>,
    /// Scan grid.
    pub nav_shape: NavShape,
    /// Frame shape.
    pub sig_shape: SigShape,
    /// Pixel type.
    pub dtype: DType,
    /// The recording to write raw frames into, if recording.
    pub recording: Option<Box<dyn Recording>>,
}

/// Builds the processing pipeline for an acquisition (which UDFs, which sink).
pub type PipelineBuilder = Arc<dyn Fn(PipelineInputs) -> PipelineJob + Send + Sync>;

/// The front end's "ready for data" hook (e.g. a Python `Hooks.on_ready_for_data`), with
/// the scan shape. Active mode: called once the detector is armed and the pipeline is
/// ready, before stemflow triggers (the hook may start an external scan). Passive mode:
/// called before the arm waits for the acquisition, with the receiver connected — the
/// hook may start the acquisition itself (LiberTEM-live's hook-driven active mode). Runs
/// on a blocking thread; an error fails the run, which then disarms the detector.
pub type ReadyHook = Arc<dyn Fn(NavShape) -> Result<(), String> + Send + Sync>;

/// One acquisition to run.
#[derive(Clone)]
pub struct AcquisitionRequest {
    /// Active (we arm) or passive (someone else arms).
    pub mode: ArmMode,
    /// Detector settings (frames = nav_shape.len()).
    pub detector: DetectorSettings,
    /// Scan to run on our scan engine, if we drive one (the trigger source).
    pub scan: Option<ScanSettings>,
    /// Microscope settings to apply first, if any.
    pub microscope: Option<MicroscopeSettings>,
    /// How long to wait for the detector to confirm it is armed.
    pub arm_deadline: Duration,
    /// Margin added to the expected acquisition time for the overall deadline.
    pub deadline_margin: Duration,
    /// HDF5 file to record into, if any.
    pub output: Option<PathBuf>,
    /// Builds the processing pipeline.
    pub pipeline: PipelineBuilder,
    /// Acquisition mode label stored in the metadata (`simulated`, `active`, `passive`).
    pub label: String,
    /// Take the scan shape from the detector once armed (passive mode without a given
    /// shape): the announced nav shape, else 1 × frames.
    pub nav_from_detector: bool,
    /// Called once ready for data ([`ReadyHook`]).
    pub ready_hook: Option<ReadyHook>,
    /// What the user tells about the calibration (scan step, rotation, pixel pitch); the
    /// rest is read back. Stored as [`RunMetadata::calibration`](stemflow_core::metadata::RunMetadata).
    pub calibration: stemflow_core::metadata::CalibrationInputs,
}
