//! The read-back instrument state stored with every acquisition.

use crate::devices::ScanSettings;
use crate::{DType, NavShape, SigShape};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The microscope's state as read back from it. Units: V, m, rad.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MicroscopeState {
    /// High tension (accelerating voltage), V.
    pub high_tension_v: f64,
    /// Camera length, m.
    pub camera_length_m: f64,
    /// Convergence semi-angle, rad.
    pub convergence_angle_rad: f64,
    /// STEM magnification (dimensionless).
    pub magnification: f64,
    /// Defocus, m (negative = underfocus).
    pub defocus_m: f64,
    /// Beam blanked.
    pub beam_blanked: bool,
}

/// Everything known about one acquisition, as observed (read back), not as commanded.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunMetadata {
    /// Detector name (e.g. `merlin @ 127.0.0.1:6341`).
    pub detector: String,
    /// The detector's acquisition header as sent (Merlin: the HDR text), if any.
    pub detector_header: Option<String>,
    /// Detector settings read back after configuration (name → value as reported).
    pub detector_settings: BTreeMap<String, String>,
    /// Microscope state read back before the acquisition.
    pub microscope: Option<MicroscopeState>,
    /// Scan settings read back from the scan engine.
    pub scan: Option<ScanSettings>,
    /// Scan grid.
    pub nav_shape: Option<NavShape>,
    /// Frame shape.
    pub sig_shape: Option<SigShape>,
    /// Decoded pixel type.
    pub dtype: Option<DType>,
    /// Acquisition mode (`active`, `passive`, `simulated`, `offline`).
    pub mode: String,
    /// stemflow version.
    pub software_version: String,
    /// Start time, RFC 3339 UTC.
    pub start_time: String,
    /// Stop time, RFC 3339 UTC.
    pub stop_time: String,
}
