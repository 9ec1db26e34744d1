//! A simulated electron microscope column: holds the optical settings stored with every
//! acquisition, validates requests against the ranges of a typical (S)TEM, reads every setting
//! back, and can inject a setting that "does not take".

use stemflow_core::devices::{DeviceError, Microscope, MicroscopeSettings};
use stemflow_core::metadata::MicroscopeState;

/// One optical setting of the column (names used in errors and faults).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MicroscopeSetting {
    /// High tension, V.
    HighTension,
    /// Camera length, m.
    CameraLength,
    /// Convergence semi-angle, rad.
    ConvergenceAngle,
    /// STEM magnification.
    Magnification,
    /// Defocus, m.
    Defocus,
    /// Beam blanker.
    BeamBlanked,
}

impl MicroscopeSetting {
    /// The field name as in [`MicroscopeSettings`] (`high_tension_v`, …).
    pub const fn field(self) -> &'static str {
        match self {
            MicroscopeSetting::HighTension => "high_tension_v",
            MicroscopeSetting::CameraLength => "camera_length_m",
            MicroscopeSetting::ConvergenceAngle => "convergence_angle_rad",
            MicroscopeSetting::Magnification => "magnification",
            MicroscopeSetting::Defocus => "defocus_m",
            MicroscopeSetting::BeamBlanked => "beam_blanked",
        }
    }

    /// Accepted range (inclusive) of the numeric settings, in their units; `None` for the
    /// blanker. HT 20–300 kV, camera length 10 mm–10 m, convergence 0.1–100 mrad,
    /// magnification 10×–100 M×, defocus ±100 µm.
    pub const fn range(self) -> Option<(f64, f64)> {
        match self {
            MicroscopeSetting::HighTension => Some((20e3, 300e3)),
            MicroscopeSetting::CameraLength => Some((0.01, 10.0)),
            MicroscopeSetting::ConvergenceAngle => Some((0.1e-3, 100e-3)),
            MicroscopeSetting::Magnification => Some((10.0, 1e8)),
            MicroscopeSetting::Defocus => Some((-100e-6, 100e-6)),
            MicroscopeSetting::BeamBlanked => None,
        }
    }
}

/// Faults the simulated microscope can inject.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MicroscopeFaults {
    /// This setting accepts requests but never changes (the read-back keeps the old value),
    /// so [`Microscope::apply`] reports the mismatch as [`DeviceError::Rejected`].
    pub stuck: Option<MicroscopeSetting>,
}

/// The display width the simulated column's magnification refers to, m: its full scan
/// field of view is this over the magnification (32 nm at 2 000 000×, the embedded
/// profile's 64 positions of 0.5 nm).
pub const DISPLAY_WIDTH_M: f64 = 0.064;

/// A simulated microscope implementing [`Microscope`].
#[derive(Clone, Debug)]
pub struct MicroscopeSim {
    name: String,
    state: MicroscopeState,
    faults: MicroscopeFaults,
}

impl Default for MicroscopeSim {
    /// `microscope-sim` at 200 kV, 0.15 m camera length, 10 mrad, 100 000×, in focus, beam
    /// not blanked, no faults.
    fn default() -> Self {
        Self::new(
            MicroscopeState {
                high_tension_v: 200e3,
                camera_length_m: 0.15,
                convergence_angle_rad: 10e-3,
                magnification: 100e3,
                defocus_m: 0.0,
                beam_blanked: false,
                field_of_view_m: None,
            },
            MicroscopeFaults::default(),
        )
    }
}

impl MicroscopeSim {
    /// A microscope named `microscope-sim` starting in `state` (not validated: it models
    /// whatever the column was left at).
    pub fn new(state: MicroscopeState, faults: MicroscopeFaults) -> Self {
        Self {
            name: "microscope-sim".to_string(),
            state,
            faults,
        }
    }

    /// Renames the microscope (the name appears in every error).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The state as read back: with the full scan field of view the column reports at its
    /// magnification, [`DISPLAY_WIDTH_M`] / magnification.
    fn observed(&self) -> MicroscopeState {
        let mut s = self.state.clone();
        s.field_of_view_m = (s.magnification > 0.0).then(|| DISPLAY_WIDTH_M / s.magnification);
        s
    }

    fn check(&self, which: MicroscopeSetting, v: Option<f64>) -> Result<(), DeviceError> {
        let (Some(v), Some((lo, hi))) = (v, which.range()) else {
            return Ok(());
        };
        if v.is_finite() && (lo..=hi).contains(&v) {
            Ok(())
        } else {
            Err(DeviceError::Rejected {
                device: self.name.clone(),
                setting: which.field().to_string(),
                requested: format!("{v}"),
                actual: format!("out of range {lo} to {hi}; kept {}", self.value(which)),
            })
        }
    }

    fn value(&self, which: MicroscopeSetting) -> String {
        let s = &self.state;
        match which {
            MicroscopeSetting::HighTension => s.high_tension_v.to_string(),
            MicroscopeSetting::CameraLength => s.camera_length_m.to_string(),
            MicroscopeSetting::ConvergenceAngle => s.convergence_angle_rad.to_string(),
            MicroscopeSetting::Magnification => s.magnification.to_string(),
            MicroscopeSetting::Defocus => s.defocus_m.to_string(),
            MicroscopeSetting::BeamBlanked => s.beam_blanked.to_string(),
        }
    }
}

impl Microscope for MicroscopeSim {
    fn name(&self) -> &str {
        &self.name
    }

    fn read_state(&mut self) -> Result<MicroscopeState, DeviceError> {
        Ok(self.observed())
    }

    /// Validates every requested setting first (nothing changes if one is out of range), then
    /// applies them and reads back.
    ///
    /// # Errors
    /// [`DeviceError::Rejected`] for a value outside [`MicroscopeSetting::range`] or not
    /// finite (nothing applied), or for a setting whose read-back differs from the request
    /// (the `stuck` fault); the others are applied.
    fn apply(&mut self, settings: &MicroscopeSettings) -> Result<MicroscopeState, DeviceError> {
        use MicroscopeSetting as S;
        let numeric = [
            (S::HighTension, settings.high_tension_v),
            (S::CameraLength, settings.camera_length_m),
            (S::ConvergenceAngle, settings.convergence_angle_rad),
            (S::Magnification, settings.magnification),
            (S::Defocus, settings.defocus_m),
        ];
        for (which, v) in numeric {
            self.check(which, v)?;
        }
        let stuck = self.faults.stuck;
        let mut next = self.state.clone();
        for (which, v) in numeric {
            let Some(v) = v else { continue };
            if stuck == Some(which) {
                continue;
            }
            match which {
                S::HighTension => next.high_tension_v = v,
                S::CameraLength => next.camera_length_m = v,
                S::ConvergenceAngle => next.convergence_angle_rad = v,
                S::Magnification => next.magnification = v,
                S::Defocus => next.defocus_m = v,
                S::BeamBlanked => {}
            }
        }
        if let Some(b) = settings.beam_blanked
            && stuck != Some(S::BeamBlanked)
        {
            next.beam_blanked = b;
        }
        self.state = next;
        // Compare what was asked with what reads back, as a careful driver would.
        if let Some(which) = stuck {
            let requested = match which {
                S::HighTension => settings.high_tension_v.map(|v| v.to_string()),
                S::CameraLength => settings.camera_length_m.map(|v| v.to_string()),
                S::ConvergenceAngle => settings.convergence_angle_rad.map(|v| v.to_string()),
                S::Magnification => settings.magnification.map(|v| v.to_string()),
                S::Defocus => settings.defocus_m.map(|v| v.to_string()),
                S::BeamBlanked => settings.beam_blanked.map(|v| v.to_string()),
            };
            if let Some(requested) = requested {
                let actual = self.value(which);
                if requested != actual {
                    return Err(DeviceError::Rejected {
                        device: self.name.clone(),
                        setting: which.field().to_string(),
                        requested,
                        actual: format!("{actual} (read back)"),
                    });
                }
            }
        }
        Ok(self.observed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_and_reads_back() {
        let mut m = MicroscopeSim::default();
        let s = m
            .apply(&MicroscopeSettings {
                high_tension_v: Some(300e3),
                defocus_m: Some(-50e-9),
                beam_blanked: Some(true),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(s.high_tension_v, 300e3);
        assert_eq!(s.defocus_m, -50e-9);
        assert!(s.beam_blanked);
        assert_eq!(
            s.camera_length_m, 0.15,
            "untouched settings keep their value"
        );
        assert_eq!(m.read_state().unwrap(), s);
    }

    #[test]
    fn out_of_range_is_rejected_and_nothing_changes() {
        let mut m = MicroscopeSim::default();
        let before = m.read_state().unwrap();
        let err = m
            .apply(&MicroscopeSettings {
                camera_length_m: Some(0.3),
                high_tension_v: Some(10e3),
                ..Default::default()
            })
            .unwrap_err();
        match err {
            DeviceError::Rejected { setting, .. } => assert_eq!(setting, "high_tension_v"),
            e => panic!("{e}"),
        }
        assert!(
            m.apply(&MicroscopeSettings {
                defocus_m: Some(f64::NAN),
                ..Default::default()
            })
            .is_err()
        );
        assert_eq!(m.read_state().unwrap(), before);
    }

    #[test]
    fn stuck_setting_reports_the_mismatch() {
        let mut m = MicroscopeSim::new(
            MicroscopeSim::default().read_state().unwrap(),
            MicroscopeFaults {
                stuck: Some(MicroscopeSetting::CameraLength),
            },
        );
        let err = m
            .apply(&MicroscopeSettings {
                camera_length_m: Some(0.3),
                magnification: Some(2e5),
                ..Default::default()
            })
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("camera_length_m") && text.contains("0.15"),
            "{text}"
        );
        let s = m.read_state().unwrap();
        assert_eq!(s.camera_length_m, 0.15);
        assert_eq!(s.magnification, 2e5, "the other settings were applied");
        // Requesting the value it already has is not a mismatch.
        assert!(
            m.apply(&MicroscopeSettings {
                camera_length_m: Some(0.15),
                ..Default::default()
            })
            .is_ok()
        );
    }
}
