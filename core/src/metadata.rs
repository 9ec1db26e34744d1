//! The read-back instrument state stored with every acquisition.

use crate::devices::ScanSettings;
use crate::{DType, NavShape, SigShape};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The recording's file name in a run's output folder, for every command (`stemflow`,
/// `acquire`, `process`, and each acquisition of `run` and `queue` in its own folder).
/// `.hspy` is the one extension HyperSpy reads with its own format's reader without being
/// told (`.h5` and `.hdf5` are claimed by several readers and refused as ambiguous);
/// [`EMD_ALIAS`] names the same file for py4DSTEM, which picks its reader by extension
/// and does not know `.hspy`.
pub const RECORDING_FILE: &str = "recording.hspy";
/// A symbolic link to [`RECORDING_FILE`] beside it, for `py4DSTEM.read` (EMD 1.0).
pub const EMD_ALIAS: &str = "recording.emd";

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
    /// The full scan field of view at this magnification, m: the width a scan spans when
    /// it covers the whole field (TEM scripting reports it as
    /// `Illumination.StemFullScanFieldOfView`). `None` when the microscope does not
    /// report it. The scan step is this over the scan's columns when no step is given.
    #[serde(default)]
    pub field_of_view_m: Option<f64>,
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
    /// Real- and reciprocal-space calibration derived from the read-back state and the
    /// user's inputs ([`Calibration::derive`]); `None` for runs that predate it.
    #[serde(default)]
    pub calibration: Option<Calibration>,
}

/// What the user (profile or command line) tells about the calibration; everything else
/// is read back from the instruments.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CalibrationInputs {
    /// Distance between neighbouring scan positions, nm (`None`: uncalibrated scan).
    pub scan_step_nm: Option<f64>,
    /// Scan rotation, degrees (the scan's fast axis relative to the detector's columns).
    pub scan_rotation_deg: f64,
    /// Physical pixel pitch of the detector, µm; `None`: from the detector's read-back
    /// settings (DECTRIS `x_pixel_size`) or its model ([`pixel_pitch_um_for_model`]).
    pub pixel_pitch_um: Option<f64>,
}

/// The calibration stored with a recording (HDF5 views for HyperSpy and py4DSTEM, NeXus,
/// `run.json`). Every field is `None` when its inputs are unknown.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Real-space step between neighbouring scan positions, nm.
    pub scan_step_nm: Option<f64>,
    /// Scan rotation, degrees.
    pub scan_rotation_deg: f64,
    /// Detector pixel pitch, µm.
    pub pixel_pitch_um: Option<f64>,
    /// Camera length (read back), m.
    pub camera_length_m: Option<f64>,
    /// Beam energy (from the read-back high tension), keV.
    pub beam_energy_kev: Option<f64>,
    /// Relativistic electron wavelength at that energy, Å.
    pub wavelength_angstrom: Option<f64>,
    /// Scattering angle per detector pixel: pixel pitch / camera length, mrad.
    pub mrad_per_pixel: Option<f64>,
    /// Spatial frequency per detector pixel: angle / wavelength, 1/Å.
    pub inv_angstrom_per_pixel: Option<f64>,
    /// Convergence semi-angle (read back), mrad.
    pub convergence_semi_angle_mrad: Option<f64>,
    /// Dwell time per scan position (read back from the scan engine), s.
    pub dwell_time_s: Option<f64>,
}

/// Relativistic de Broglie wavelength of electrons accelerated through `kev` kilovolts, Å:
/// `λ = h / sqrt(2 m₀ e V (1 + e V / (2 m₀ c²)))` (CODATA 2018 constants; 200 kV → 0.02508 Å).
pub fn electron_wavelength_angstrom(kev: f64) -> f64 {
    const H: f64 = 6.626_070_15e-34; // J s
    const M0: f64 = 9.109_383_701_5e-31; // kg
    const E: f64 = 1.602_176_634e-19; // C
    const C: f64 = 299_792_458.0; // m/s
    let v = kev * 1e3;
    let p = (2.0 * M0 * E * v * (1.0 + E * v / (2.0 * M0 * C * C))).sqrt();
    H / p * 1e10
}

/// The physical pixel pitch of a detector model, µm, from the vendors' data sheets:
/// Medipix3 / Merlin 55, Timepix3 55, DECTRIS ARINA 100, DECTRIS QUADRO 75. Matched
/// case-insensitively anywhere in `model` (a detector name or description).
pub fn pixel_pitch_um_for_model(model: &str) -> Option<f64> {
    let m = model.to_ascii_lowercase();
    [
        ("arina", 100.0),
        ("quadro", 75.0),
        ("merlin", 55.0),
        ("medipix", 55.0),
        ("timepix", 55.0),
        ("tpx3", 55.0),
        ("cheetah", 55.0),
    ]
    .iter()
    .find(|(k, _)| m.contains(k))
    .map(|&(_, v)| v)
}

impl Calibration {
    /// Derives the calibration from the read-back metadata and the user's inputs. The
    /// pixel pitch is the input's, else the detector's read-back `x_pixel_size` (m, as
    /// DECTRIS reports it), else the model's ([`pixel_pitch_um_for_model`] on the detector
    /// name and its `description` setting).
    pub fn derive(md: &RunMetadata, inputs: &CalibrationInputs) -> Self {
        let positive = |v: f64| (v.is_finite() && v > 0.0).then_some(v);
        let pitch = inputs
            .pixel_pitch_um
            .and_then(positive)
            .or_else(|| {
                md.detector_settings
                    .get("x_pixel_size")
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .and_then(positive)
                    .map(|m| m * 1e6)
            })
            .or_else(|| pixel_pitch_um_for_model(&md.detector))
            .or_else(|| {
                md.detector_settings
                    .get("description")
                    .and_then(|d| pixel_pitch_um_for_model(d))
            });
        let m = md.microscope.as_ref();
        let camera_length_m = m.map(|m| m.camera_length_m).and_then(positive);
        let beam_energy_kev = m.map(|m| m.high_tension_v / 1e3).and_then(positive);
        let wavelength_angstrom = beam_energy_kev.map(electron_wavelength_angstrom);
        let mrad_per_pixel = match (pitch, camera_length_m) {
            (Some(p), Some(l)) => Some(p * 1e-6 / l * 1e3),
            _ => None,
        };
        let inv_angstrom_per_pixel = match (mrad_per_pixel, wavelength_angstrom) {
            (Some(a), Some(w)) => Some(a * 1e-3 / w),
            _ => None,
        };
        // Without a given step: the microscope's full scan field of view over the scan's
        // columns, for a scan of the whole field (a sub-region's field is unknown).
        let step_from_fov = m
            .and_then(|m| m.field_of_view_m)
            .and_then(positive)
            .zip(md.nav_shape.filter(|n| n.cols > 0))
            .filter(|_| md.scan.as_ref().is_none_or(|s| s.region_origin.is_none()))
            .map(|(fov, nav)| fov * 1e9 / nav.cols as f64);
        Self {
            scan_step_nm: inputs.scan_step_nm.and_then(positive).or(step_from_fov),
            scan_rotation_deg: inputs.scan_rotation_deg,
            pixel_pitch_um: pitch,
            camera_length_m,
            beam_energy_kev,
            wavelength_angstrom,
            mrad_per_pixel,
            inv_angstrom_per_pixel,
            convergence_semi_angle_mrad: m
                .map(|m| m.convergence_angle_rad * 1e3)
                .and_then(positive),
            dwell_time_s: md.scan.as_ref().map(|s| s.dwell_time_s).and_then(positive),
        }
    }

    /// The detector axes' step and unit, best first: 1/Å per pixel, mrad per pixel, or 1
    /// pixel.
    pub fn reciprocal_axis(&self) -> (f64, &'static str) {
        match (self.inv_angstrom_per_pixel, self.mrad_per_pixel) {
            (Some(k), _) => (k, "1/Å"),
            (None, Some(a)) => (a, "mrad"),
            _ => (1.0, "px"),
        }
    }

    /// The scan axes' step and unit: nm per position, or 1 position.
    pub fn real_axis(&self) -> (f64, &'static str) {
        match self.scan_step_nm {
            Some(s) => (s, "nm"),
            None => (1.0, "px"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wavelength_matches_the_textbook_values() {
        // 200 kV: 2.5079 pm; 300 kV: 1.9687 pm; 80 kV: 4.1757 pm.
        for (kev, pm) in [(200.0, 2.5079), (300.0, 1.9687), (80.0, 4.1757)] {
            let l = electron_wavelength_angstrom(kev) * 100.0;
            assert!((l - pm).abs() < 2e-4, "{kev} keV: {l} pm, expected {pm}");
        }
    }

    #[test]
    fn calibration_from_read_back_state() {
        let md = RunMetadata {
            detector: "merlin @ 127.0.0.1:6341".into(),
            microscope: Some(MicroscopeState {
                high_tension_v: 200e3,
                camera_length_m: 0.1,
                convergence_angle_rad: 0.01,
                magnification: 1e6,
                defocus_m: 0.0,
                beam_blanked: false,
                field_of_view_m: None,
            }),
            ..RunMetadata::default()
        };
        let c = Calibration::derive(
            &md,
            &CalibrationInputs {
                scan_step_nm: Some(1.5),
                scan_rotation_deg: 3.0,
                pixel_pitch_um: None,
            },
        );
        assert_eq!(c.pixel_pitch_um, Some(55.0));
        // 55 µm / 0.1 m = 0.55 mrad per pixel; / 0.025079 Å = 0.02193 1/Å.
        assert!((c.mrad_per_pixel.unwrap() - 0.55).abs() < 1e-12);
        assert!((c.inv_angstrom_per_pixel.unwrap() - 0.55e-3 / 0.025079).abs() < 1e-5);
        assert_eq!(c.reciprocal_axis().1, "1/Å");
        assert_eq!(c.real_axis(), (1.5, "nm"));
        assert_eq!(c.convergence_semi_angle_mrad, Some(10.0));
        assert_eq!(c.beam_energy_kev, Some(200.0));
        // DECTRIS reports its pitch (m) and wins over the name; an input wins over both.
        let mut d = md.clone();
        d.detector = "dectris @ 127.0.0.1".into();
        d.detector_settings
            .insert("x_pixel_size".into(), "0.000075".into());
        let c = Calibration::derive(&d, &CalibrationInputs::default());
        assert!((c.pixel_pitch_um.unwrap() - 75.0).abs() < 1e-9);
        assert_eq!(c.scan_step_nm, None);
        assert_eq!(c.real_axis(), (1.0, "px"));
        let c = Calibration::derive(
            &d,
            &CalibrationInputs {
                pixel_pitch_um: Some(100.0),
                ..Default::default()
            },
        );
        assert_eq!(c.pixel_pitch_um, Some(100.0));
        // Nothing known: pixels.
        let c = Calibration::derive(&RunMetadata::default(), &CalibrationInputs::default());
        assert_eq!(c.reciprocal_axis(), (1.0, "px"));
    }

    #[test]
    fn the_scan_step_comes_from_the_field_of_view_unless_given() {
        let mut md = RunMetadata {
            nav_shape: Some(NavShape::new(32, 64)),
            microscope: Some(MicroscopeState {
                high_tension_v: 200e3,
                camera_length_m: 0.1,
                convergence_angle_rad: 0.01,
                magnification: 1e5,
                defocus_m: 0.0,
                beam_blanked: false,
                field_of_view_m: Some(1e-6),
            }),
            ..RunMetadata::default()
        };
        // 1 µm over 64 columns.
        let c = Calibration::derive(&md, &CalibrationInputs::default());
        assert!((c.scan_step_nm.unwrap() - 15.625).abs() < 1e-9);
        // A step given wins.
        let given = CalibrationInputs {
            scan_step_nm: Some(0.5),
            ..Default::default()
        };
        assert_eq!(Calibration::derive(&md, &given).scan_step_nm, Some(0.5));
        // A sub-region of the field: its own width is unknown.
        md.scan = Some(ScanSettings {
            nav_shape: NavShape::new(32, 64),
            dwell_time_s: 1e-3,
            flyback_s: 0.0,
            trigger: crate::devices::TriggerOutput::Pixel,
            region_origin: Some((8, 8)),
        });
        assert_eq!(
            Calibration::derive(&md, &CalibrationInputs::default()).scan_step_nm,
            None
        );
    }
}
