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
    /// Scan step, nm per scan position (the scan axes' calibration); absent: uncalibrated
    /// (axes in positions) unless given on the command line.
    #[serde(default)]
    pub step_nm: Option<f64>,
    /// Scan rotation, degrees.
    #[serde(default)]
    pub rotation_deg: f64,
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
    /// Physical pixel pitch, µm; absent: the detector's read-back value or its model's.
    #[serde(default)]
    pub pixel_pitch_um: Option<f64>,
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

/// `[reductions]`: the default set's virtual detector geometry, radii as multiples of the BF
/// disk radius, and optionally a reduction spec file choosing other UDFs (`spec`).
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
    /// A reduction spec file (TOML: `[[udf]]` entries and an optional `[roi]`, see
    /// `stemflow_processing::spec`) whose UDFs the live runs compute instead of the
    /// geometry above. A relative path is relative to the profile's folder once loaded
    /// with [`Profile::load`] (to the working directory for embedded profile text).
    #[serde(default)]
    pub spec: Option<std::path::PathBuf>,
}

/// `[devices.detector]`: where a real detector is. Absent: the detector is simulated
/// in-process (kind from `[detector]`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DetectorDevice {
    /// Host: the Merlin PC, or the DECTRIS detector control unit.
    pub address: String,
    /// Merlin control port (default 6341).
    #[serde(default = "default_control_port")]
    pub control_port: u16,
    /// Merlin data port (default 6342).
    #[serde(default = "default_data_port")]
    pub data_port: u16,
    /// DECTRIS REST API port (default 80).
    #[serde(default = "default_api_port")]
    pub api_port: u16,
    /// DECTRIS stream port (default 9999, stream v1).
    #[serde(default = "default_stream_port")]
    pub stream_port: u16,
}

fn default_control_port() -> u16 {
    6341
}
fn default_data_port() -> u16 {
    6342
}
fn default_api_port() -> u16 {
    80
}
fn default_stream_port() -> u16 {
    9999
}
fn default_channel() -> u8 {
    1
}
fn default_settle_s() -> f64 {
    0.1
}
fn default_timeout_s() -> f64 {
    2.0
}

/// `[devices.scan_engine]`: what moves the probe and triggers the detector.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScanEngineDevice {
    /// `simulated` (in-process scan engine), `pixel-clock` (a burst waveform generator over
    /// SCPI) or `command-map` (a scan generator driven through `commands`).
    pub kind: String,
    /// `HOST:PORT` or `serial:PATH[@BAUD]`; absent with `simulated = true`.
    #[serde(default)]
    pub address: Option<String>,
    /// Start this device's simulator in-process and drive it over TCP with the real driver.
    #[serde(default)]
    pub simulated: bool,
    /// Response deadline, s.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// Pixel clock: output channel.
    #[serde(default = "default_channel")]
    pub channel: u8,
    /// Pixel clock: what starts the burst, `bus` (stemflow) or `external`.
    #[serde(default)]
    pub start: Option<String>,
    /// Command map: `raster` or `serpentine`.
    #[serde(default)]
    pub pattern: Option<String>,
    /// Command map: overrides of the default commands, operation → template.
    #[serde(default)]
    pub commands: std::collections::BTreeMap<String, String>,
}

/// `[devices.microscope]`: the column.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MicroscopeDevice {
    /// `simulated` (in-process) or `command-map` (driven through `commands`).
    pub kind: String,
    /// `HOST:PORT` or `serial:PATH[@BAUD]`; absent with `simulated = true`.
    #[serde(default)]
    pub address: Option<String>,
    /// Start this device's simulator in-process and drive it over TCP with the real driver.
    #[serde(default)]
    pub simulated: bool,
    /// Response deadline, s.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// Wait after applying settings before reading them back, s.
    #[serde(default = "default_settle_s")]
    pub settle_s: f64,
    /// Overrides of the default commands, operation → template.
    #[serde(default)]
    pub commands: std::collections::BTreeMap<String, String>,
}

/// `[devices]`: the physical devices; every part absent is simulated in-process.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DevicesSection {
    /// A real detector.
    #[serde(default)]
    pub detector: Option<DetectorDevice>,
    /// The scan engine or pixel clock.
    #[serde(default)]
    pub scan_engine: Option<ScanEngineDevice>,
    /// The microscope column.
    #[serde(default)]
    pub microscope: Option<MicroscopeDevice>,
}

/// `HOST:PORT` or `serial:PATH[@BAUD]`, checked for shape (the driver resolves it).
fn address_problem(a: &str) -> Option<String> {
    if let Some(rest) = a.strip_prefix("serial:") {
        let (path, baud) = rest.rsplit_once('@').unwrap_or((rest, "9600"));
        if path.is_empty() || baud.parse::<u32>().is_err() {
            return Some(format!("`{a}`: expected serial:PATH[@BAUD]"));
        }
        return None;
    }
    match a.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => None,
        _ => Some(format!("`{a}`: expected HOST:PORT or serial:PATH[@BAUD]")),
    }
}

/// Address, `simulated` and deadline of a device section.
fn check_device(
    bad: &dyn Fn(&str, String) -> ConfigError,
    section: &str,
    kind: &str,
    address: Option<&str>,
    simulated: bool,
    timeout_s: f64,
) -> Result<(), ConfigError> {
    match (kind, address, simulated) {
        ("simulated", Some(_), _) => Err(bad(
            &format!("{section}.address"),
            "a simulated device has no address".into(),
        )),
        ("simulated", None, _) => Ok(()),
        (_, Some(_), true) => Err(bad(
            &format!("{section}.address"),
            "give either an address or `simulated = true`, not both".into(),
        )),
        (_, None, false) => Err(bad(
            &format!("{section}.address"),
            "missing (or set `simulated = true`)".into(),
        )),
        (_, Some(a), false) => match address_problem(a) {
            Some(p) => Err(bad(&format!("{section}.address"), p)),
            None => Ok(()),
        },
        (_, None, true) => Ok(()),
    }?;
    if !(timeout_s > 0.0 && timeout_s <= 600.0) {
        return Err(bad(
            &format!("{section}.timeout_s"),
            format!("{timeout_s} s: must be within 0–600 s"),
        ));
    }
    Ok(())
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
    /// Physical devices (absent: everything simulated in-process).
    #[serde(default)]
    pub devices: DevicesSection,
    /// How recordings are written (absent: the defaults).
    #[serde(default)]
    pub recording: RecordingSection,
}

/// `[recording]`: how the raw frames are stored.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RecordingSection {
    /// Frame compression: `none`, `deflate`, `deflate:1` … `deflate:9` or `bslz4`
    /// (checked by the application, which knows the recorder's names); absent: deflate.
    #[serde(default)]
    pub compression: Option<String>,
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
        let mut profile = Self::from_toml(&text, &file)?;
        if let Some(spec) = profile.reductions.spec.as_mut()
            && spec.is_relative()
        {
            let dir = path.parent().unwrap_or(Path::new(""));
            *spec = dir.join(&*spec);
        }
        Ok(profile)
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
        if let Some(step) = self.scan.step_nm
            && !(step.is_finite() && step > 0.0)
        {
            return Err(bad(
                "scan.step_nm",
                format!("{step} nm: must be a positive number"),
            ));
        }
        if let Some(p) = self.detector.pixel_pitch_um
            && !(p.is_finite() && p > 0.0)
        {
            return Err(bad(
                "detector.pixel_pitch_um",
                format!("{p} µm: must be a positive number"),
            ));
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
            // Timepix3 event counts per position and pixel: u32.
            "tpx3" => &[32],
            other => {
                return Err(bad(
                    "detector.kind",
                    format!("`{other}` not supported; supported: merlin, dectris, tpx3"),
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
        if let Some(spec) = &self.reductions.spec
            && spec.as_os_str().is_empty()
        {
            return Err(bad(
                "reductions.spec",
                "empty; expected the path of a reduction spec (.toml)".into(),
            ));
        }
        if let Some(d) = &self.devices.detector
            && d.address.trim().is_empty()
        {
            return Err(bad("devices.detector.address", "empty".into()));
        }
        if let Some(e) = &self.devices.scan_engine {
            if !["simulated", "pixel-clock", "command-map"].contains(&e.kind.as_str()) {
                return Err(bad(
                    "devices.scan_engine.kind",
                    format!(
                        "`{}`: supported: simulated, pixel-clock, command-map",
                        e.kind
                    ),
                ));
            }
            check_device(
                &bad,
                "devices.scan_engine",
                &e.kind,
                e.address.as_deref(),
                e.simulated,
                e.timeout_s,
            )?;
            if let Some(start) = &e.start
                && (e.kind != "pixel-clock" || !["bus", "external"].contains(&start.as_str()))
            {
                return Err(bad(
                    "devices.scan_engine.start",
                    format!("`{start}`: only for kind = \"pixel-clock\", `bus` or `external`"),
                ));
            }
            if let Some(p) = &e.pattern
                && (e.kind != "command-map" || !["raster", "serpentine"].contains(&p.as_str()))
            {
                return Err(bad(
                    "devices.scan_engine.pattern",
                    format!("`{p}`: only for kind = \"command-map\", `raster` or `serpentine`"),
                ));
            }
            if !e.commands.is_empty() && e.kind != "command-map" {
                return Err(bad(
                    "devices.scan_engine.commands",
                    "only for kind = \"command-map\"".into(),
                ));
            }
        }
        if let Some(m) = &self.devices.microscope {
            if !["simulated", "command-map"].contains(&m.kind.as_str()) {
                return Err(bad(
                    "devices.microscope.kind",
                    format!("`{}`: supported: simulated, command-map", m.kind),
                ));
            }
            check_device(
                &bad,
                "devices.microscope",
                &m.kind,
                m.address.as_deref(),
                m.simulated,
                m.timeout_s,
            )?;
            if !(0.0..=60.0).contains(&m.settle_s) {
                return Err(bad(
                    "devices.microscope.settle_s",
                    format!("{} s: must be within 0–60 s", m.settle_s),
                ));
            }
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

    #[test]
    fn every_shipped_profile_is_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("profiles folder") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                Profile::load(&path).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 6, "{n} profiles");
    }

    #[test]
    fn reduction_spec_path_is_relative_to_the_profile() {
        assert_eq!(Profile::simulated().reductions.spec, None);
        let dir = std::env::temp_dir().join(format!("stemflow-config-spec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let text = SIMULATED_PROFILE.replace(
            "[reductions]\n",
            "[reductions]\nspec = \"reductions/mine.toml\"\n",
        );
        let file = dir.join("p.toml");
        std::fs::write(&file, &text).expect("write profile");
        let p = Profile::load(&file).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.reductions.spec, Some(dir.join("reductions/mine.toml")));
        let abs =
            SIMULATED_PROFILE.replace("[reductions]\n", "[reductions]\nspec = \"/abs/r.toml\"\n");
        std::fs::write(&file, &abs).expect("write profile");
        let p = Profile::load(&file).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            p.reductions.spec,
            Some(std::path::PathBuf::from("/abs/r.toml"))
        );
        let empty = SIMULATED_PROFILE.replace("[reductions]\n", "[reductions]\nspec = \"\"\n");
        let e = Profile::from_toml(&empty, "e.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("e.toml") && e.contains("reductions.spec"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn device_sections_are_validated_with_file_and_key() {
        let with = |extra: &str| SIMULATED_PROFILE.to_string() + "\n" + extra;
        let cases = [
            (
                "[devices.scan_engine]\nkind = \"laser\"\n",
                "devices.scan_engine.kind",
            ),
            (
                "[devices.scan_engine]\nkind = \"pixel-clock\"\n",
                "devices.scan_engine.address",
            ),
            (
                "[devices.scan_engine]\nkind = \"pixel-clock\"\naddress = \"awg\"\n",
                "devices.scan_engine.address",
            ),
            (
                "[devices.scan_engine]\nkind = \"pixel-clock\"\nsimulated = true\npattern = \"raster\"\n",
                "devices.scan_engine.pattern",
            ),
            (
                "[devices.microscope]\nkind = \"command-map\"\naddress = \"serial:@fast\"\n",
                "devices.microscope.address",
            ),
            (
                "[devices.microscope]\nkind = \"simulated\"\nsettle_s = 100.0\n",
                "devices.microscope.settle_s",
            ),
        ];
        for (extra, key) in cases {
            let e = Profile::from_toml(&with(extra), "dev.toml")
                .expect_err(extra)
                .to_string();
            assert!(e.contains("dev.toml") && e.contains(key), "{extra}: {e}");
        }
        let e = Profile::from_toml(
            &with("[devices.scan_engine]\nkind = \"simulated\"\nspeed = 3\n"),
            "u.toml",
        )
        .expect_err("unknown key")
        .to_string();
        assert!(e.contains("u.toml") && e.contains("speed"), "{e}");
    }
}
