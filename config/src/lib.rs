//! Device profiles: TOML files describing an instrument (scan, detector, microscope,
//! specimen for simulations, reductions). The simulated instrument's profile is embedded
//! (`profiles/simulated.toml`) and is the default of the `stemflow` command.
//!
//! # Layout
//! - [`Profile`] and its sections; [`Profile::from_toml`] parses and validates;
//!   [`ConfigError`] names the file, the key and the problem.

use serde::Deserialize;
use std::path::Path;
use stemflow_core::detector::DetectorTrigger;
use stemflow_core::{NavShape, SigShape};

/// The embedded simulated-instrument profile.
pub const SIMULATED_PROFILE: &str = include_str!("../profiles/simulated.toml");

/// The simulated instrument with a DECTRIS (ARINA-like) detector instead of the Merlin.
pub const SIMULATED_DECTRIS_PROFILE: &str = include_str!("../profiles/simulated-dectris.toml");

/// Errors loading a profile; each names the file, the key and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed or a key has the wrong type / is unknown.
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// The parser's message (it names the key and the line).
        message: String,
    },
    /// A value is out of range.
    #[error("{file}: key `{key}`: {problem}")]
    Invalid {
        /// The file.
        file: String,
        /// The dotted key (e.g. `scan.dwell_time_s`).
        key: String,
        /// What is wrong, with the value and the allowed range.
        problem: String,
    },
}

/// `[scan]`: the scan grid and timing.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScanSection {
    /// Scan rows, cols.
    pub nav_shape: [usize; 2],
    /// Dwell time per scan position, s (0 = as fast as possible).
    pub dwell_time_s: f64,
    /// Flyback time per line, s.
    #[serde(default)]
    pub flyback_s: f64,
}

/// `[detector]`: which detector and its acquisition settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DetectorSection {
    /// Detector family: `merlin` (Quantum Detectors Merlin) or `dectris` (a SIMPLON detector
    /// such as ARINA).
    pub kind: String,
    /// Frame rows, cols in pixels (simulated detectors only; real ones report theirs).
    pub sig_shape: [usize; 2],
    /// Counter depth in bits: Merlin 1, 6, 12 or 24 (→ u8, u8, u16, u32 frames); DECTRIS
    /// 8, 16 or 32 (the image bit depth).
    pub counter_depth: u32,
    /// Exposure per frame, s.
    pub exposure_s: f64,
    /// Trigger: `internal`, `soft` or `external-rising`.
    pub trigger: DetectorTrigger,
}

/// `[microscope]`: optical settings applied and read back before the scan. Units: V, m, rad.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MicroscopeSection {
    /// High tension, V.
    pub high_tension_v: f64,
    /// Camera length, m.
    pub camera_length_m: f64,
    /// Convergence semi-angle, rad.
    pub convergence_angle_rad: f64,
    /// STEM magnification.
    pub magnification: f64,
    /// Defocus, m.
    #[serde(default)]
    pub defocus_m: f64,
}

/// `[specimen]`: the synthetic specimen of the simulated instrument.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpecimenSection {
    /// Random seed (same seed, same specimen and noise).
    pub seed: u64,
    /// Number of particles on the support.
    pub particles: usize,
    /// Mean electrons per frame.
    pub dose_electrons_per_frame: f64,
}

/// `[reductions]`: virtual detector geometry, radii as multiples of the BF disk radius.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReductionsSection {
    /// Bright-field disk radius.
    pub bf_radius: f64,
    /// ADF ring inner radius.
    pub adf_inner: f64,
    /// ADF ring outer radius.
    pub adf_outer: f64,
    /// CoM mask radius.
    pub com_radius: f64,
}

/// A whole instrument profile.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Scan.
    pub scan: ScanSection,
    /// Detector.
    pub detector: DetectorSection,
    /// Microscope.
    pub microscope: MicroscopeSection,
    /// Specimen (simulated instrument).
    pub specimen: SpecimenSection,
    /// Reductions.
    pub reductions: ReductionsSection,
}

impl Profile {
    /// The embedded simulated instrument.
    pub fn simulated() -> Self {
        Self::from_toml(SIMULATED_PROFILE, "<embedded simulated.toml>")
            .expect("the embedded profile is valid (tested)")
    }

    /// Reads and validates a profile file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, key and problem.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Self::from_toml(&text, &file)
    }

    /// Parses and validates profile text; `file` names it in errors.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, key and problem.
    pub fn from_toml(text: &str, file: &str) -> Result<Self, ConfigError> {
        let p: Profile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_string(),
            message: e.to_string().trim().to_string(),
        })?;
        p.validate(file)?;
        Ok(p)
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, problem: String| ConfigError::Invalid {
            file: file.to_string(),
            key: key.to_string(),
            problem,
        };
        let [r, c] = self.scan.nav_shape;
        if r == 0 || c == 0 {
            return Err(bad("scan.nav_shape", format!("{r}x{c}: both must be ≥ 1")));
        }
        if !(0.0..=10.0).contains(&self.scan.dwell_time_s) {
            return Err(bad(
                "scan.dwell_time_s",
                format!("{} s: must be within 0–10 s", self.scan.dwell_time_s),
            ));
        }
        let depths: &[u32] = match self.detector.kind.as_str() {
            "merlin" => &[1, 6, 12, 24],
            "dectris" => &[8, 16, 32],
            other => {
                return Err(bad(
                    "detector.kind",
                    format!("`{other}` not supported; supported: merlin, dectris"),
                ));
            }
        };
        if !depths.contains(&self.detector.counter_depth) {
            return Err(bad(
                "detector.counter_depth",
                format!(
                    "{} bits: supported for {}: {depths:?}",
                    self.detector.counter_depth, self.detector.kind
                ),
            ));
        }
        let [sr, sc] = self.detector.sig_shape;
        if sr < 8 || sc < 8 || sr > 4096 || sc > 4096 {
            return Err(bad(
                "detector.sig_shape",
                format!("{sr}x{sc}: each must be 8–4096"),
            ));
        }
        if !(20e3..=300e3).contains(&self.microscope.high_tension_v) {
            return Err(bad(
                "microscope.high_tension_v",
                format!(
                    "{} V: must be within 20–300 kV",
                    self.microscope.high_tension_v
                ),
            ));
        }
        let red = &self.reductions;
        if red.adf_inner >= red.adf_outer
            || red.adf_inner.is_nan()
            || red.bf_radius <= 0.0
            || red.com_radius <= 0.0
        {
            return Err(bad(
                "reductions",
                format!(
                    "radii must be > 0 with adf_inner < adf_outer (got bf {}, adf {}–{}, com {})",
                    red.bf_radius, red.adf_inner, red.adf_outer, red.com_radius
                ),
            ));
        }
        Ok(())
    }

    /// Scan grid.
    pub fn nav_shape(&self) -> NavShape {
        NavShape::new(self.scan.nav_shape[0], self.scan.nav_shape[1])
    }

    /// Frame shape.
    pub fn sig_shape(&self) -> SigShape {
        SigShape::new(self.detector.sig_shape[0], self.detector.sig_shape[1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_profile_is_valid() {
        let p = Profile::simulated();
        assert_eq!(p.nav_shape(), NavShape::new(64, 64));
        assert_eq!(p.sig_shape(), SigShape::new(256, 256));
        assert_eq!(p.detector.trigger, DetectorTrigger::ExternalRising);
    }

    #[test]
    fn errors_name_file_key_and_problem() {
        let t = SIMULATED_PROFILE.replace("counter_depth = 12", "counter_depth = 7");
        let e = Profile::from_toml(&t, "x.toml").unwrap_err().to_string();
        assert!(
            e.contains("x.toml") && e.contains("detector.counter_depth") && e.contains("7 bits"),
            "{e}"
        );
        let t = SIMULATED_PROFILE.replace("dwell_time_s = 0.0005", "dwell_time = 0.0005");
        let e = Profile::from_toml(&t, "y.toml").unwrap_err().to_string();
        assert!(e.contains("y.toml") && e.contains("dwell_time"), "{e}");
        let t = SIMULATED_PROFILE.replace("kind = \"merlin\"", "kind = \"arina\"");
        let e = Profile::from_toml(&t, "z.toml").unwrap_err().to_string();
        assert!(e.contains("supported: merlin, dectris"), "{e}");
        let t = SIMULATED_PROFILE.replace("kind = \"merlin\"", "kind = \"dectris\"");
        let e = Profile::from_toml(&t, "d.toml").unwrap_err().to_string();
        assert!(
            e.contains("detector.counter_depth") && e.contains("dectris"),
            "{e}"
        );
        let p = Profile::from_toml(SIMULATED_DECTRIS_PROFILE, "simulated-dectris.toml")
            .expect("the DECTRIS profile is valid");
        assert_eq!(
            (p.detector.kind.as_str(), p.detector.counter_depth),
            ("dectris", 16)
        );
    }
}
