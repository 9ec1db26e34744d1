//! The detector interface the orchestrator drives, implemented per detector family on top of
//! its protocol driver (Merlin: control client + data receiver; DECTRIS: REST + stream).
//!
//! Calls are blocking and each has its own deadline; the detector actor runs them on a
//! blocking thread. Frames never pass through this interface's return values one by one:
//! [`ArmedAcquisition::stacks`] is the bounded channel the detector's receiver fills.

use crate::csr::Stack;
use crate::devices::DeviceError;
use crate::validity::FrameValidity;
use crate::{DType, NavShape, SigShape};
use crossbeam_channel::Receiver;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Who starts the acquisition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArmMode {
    /// stemflow configures and arms the detector over its control channel.
    Active,
    /// Someone else arms the detector; stemflow waits for the acquisition header.
    Passive,
}

/// What starts each frame (or burst of frames) on the detector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DetectorTrigger {
    /// The detector's own timer (frame period).
    Internal,
    /// A software trigger command over the control channel.
    Soft,
    /// A rising edge on the trigger input (the scan engine's pixel clock).
    ExternalRising,
}

impl std::fmt::Display for DetectorTrigger {
    /// `internal`, `software` or `external (rising edge)`, as a person reads it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Internal => "internal",
            Self::Soft => "software",
            Self::ExternalRising => "external (rising edge)",
        })
    }
}

/// Settings for one acquisition, in the detector-independent vocabulary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectorSettings {
    /// Scan grid; frames to acquire = `nav_shape.len()`.
    pub nav_shape: NavShape,
    /// Exposure per frame, s.
    pub exposure_s: f64,
    /// Frame period, s (≥ exposure; the detector may lengthen it).
    pub frame_time_s: f64,
    /// Trigger source.
    pub trigger: DetectorTrigger,
    /// Frames per trigger edge (1 = pixel trigger).
    pub frames_per_trigger: u64,
    /// Counter depth in bits where the detector has one (Merlin: 1, 6, 12, 24).
    pub counter_depth: Option<u32>,
    /// Detector-specific extra settings (name → value), passed through verbatim.
    pub extra: BTreeMap<String, String>,
}

/// How an acquisition ended on the detector side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AcquisitionEnd {
    /// Frames the acquisition should have had (0 = continuous).
    pub expected: u64,
    /// Frames received intact.
    pub received: u64,
    /// Frames never received.
    pub lost: u64,
    /// Frames received damaged.
    pub damaged: u64,
    /// Per-frame validity.
    pub validity: FrameValidity,
    /// Why it ended (`all frames`, `inactivity deadline`, …).
    pub reason: String,
    /// The error that ended it, if any (names the device, expectation and observation).
    pub error: Option<String>,
}

/// An acquisition the detector has confirmed as armed (header seen / status read back).
#[derive(Debug)]
pub struct ArmedAcquisition {
    /// The detector's acquisition header as sent (Merlin: HDR text), if it has one.
    pub header: Option<String>,
    /// Frames expected (0 = continuous).
    pub expected_frames: u64,
    /// Scan shape announced by the detector, if it announces one (Merlin: `ScanY` × `ScanX`
    /// in newer HDRs).
    pub nav_shape: Option<NavShape>,
    /// Frame shape in pixels, known before the first frame.
    pub sig_shape: SigShape,
    /// Decoded pixel type, known before the first frame.
    pub dtype: DType,
    /// Frame stacks (dense or CSR), closed by the receiver after the last frame of this
    /// acquisition.
    pub stacks: Receiver<Stack>,
    /// Receives exactly one [`AcquisitionEnd`] after `stacks` is closed.
    pub end: Receiver<AcquisitionEnd>,
}

/// A pixelated detector as the orchestrator sees it.
///
/// Lifecycle per acquisition: [`configure`](Detector::configure) (Configuring) →
/// [`arm`](Detector::arm) (returns once armed is confirmed) → optionally
/// [`soft_trigger`](Detector::soft_trigger) → frames flow → [`disarm`](Detector::disarm)
/// on every exit path.
pub trait Detector: Send {
    /// Device name for errors and metadata (e.g. `merlin @ 127.0.0.1:6341`).
    fn name(&self) -> &str;
    /// Applies `settings` and returns the settings read back (name → value as reported).
    ///
    /// # Errors
    /// [`DeviceError`] naming the detector and the setting.
    fn configure(
        &mut self,
        settings: &DetectorSettings,
    ) -> Result<BTreeMap<String, String>, DeviceError>;
    /// Arms (active) or waits to be armed (passive); returns when the detector has
    /// confirmed it, or fails at `deadline`.
    ///
    /// # Errors
    /// [`DeviceError::Timeout`] when no confirmation arrived in time.
    fn arm(&mut self, mode: ArmMode, deadline: Duration) -> Result<ArmedAcquisition, DeviceError>;
    /// Sends a software trigger.
    ///
    /// # Errors
    /// [`DeviceError`] naming the detector.
    fn soft_trigger(&mut self) -> Result<(), DeviceError>;
    /// Stops any acquisition; idempotent.
    ///
    /// # Errors
    /// [`DeviceError`] naming the detector.
    fn disarm(&mut self) -> Result<(), DeviceError>;
    /// The fault path's disarm: stops any acquisition and ends its reception at once,
    /// whatever the stream is doing (a detector that trickles bytes never goes quiet, so a
    /// disarm that waits for quiet would never end it). The acquisition's end is reported
    /// with what was received; later frames are lost. Defaults to
    /// [`disarm`](Self::disarm).
    ///
    /// # Errors
    /// [`DeviceError`] naming the detector.
    fn abort(&mut self) -> Result<(), DeviceError> {
        self.disarm()
    }
}
