//! A microscope column driven through a [`CommandMap`] over SCPI-style text (TCP or a serial
//! port): high tension, magnification, camera length, convergence angle, defocus, beam
//! blank, beam current. Every requested setting is sent, the column is given its settle
//! time, and every setting is read back and compared with its tolerance before an
//! acquisition may start: a setting that did not take is an error naming the setting, the
//! requested and the actual value. The read-back state is the metadata stored with the data.
//!
//! Units on the wire (default map, [`MICROSCOPE_DEFAULT_MAP`]): V, m, rad, dimensionless
//! magnification, A for the beam current, `1`/`0` for the blanker.

use super::command_map::{CommandMap, connect_mapped, map_err};
use super::{ScpiAddress, ScpiClient, ScpiError};
use std::collections::BTreeMap;
use std::time::Duration;
use stemflow_core::devices::{DeviceError, Microscope, MicroscopeSettings};
use stemflow_core::metadata::MicroscopeState;

/// Operations of a microscope column and their default commands.
pub const MICROSCOPE_DEFAULT_MAP: &[(&str, &str)] = &[
    ("identify", "*IDN?"),
    ("errors", "SYST:ERR?"),
    ("get_high_tension", "COL:HT?"),
    ("set_high_tension", "COL:HT {value}"),
    ("get_magnification", "COL:MAG?"),
    ("set_magnification", "COL:MAG {value}"),
    ("get_camera_length", "COL:CL?"),
    ("set_camera_length", "COL:CL {value}"),
    ("get_convergence_angle", "COL:CONV?"),
    ("set_convergence_angle", "COL:CONV {value}"),
    ("get_defocus", "COL:DEF?"),
    ("set_defocus", "COL:DEF {value}"),
    ("get_beam_blank", "COL:BLANK?"),
    ("set_beam_blank", "COL:BLANK {value}"),
    ("get_beam_current", "COL:CURR?"),
    // The full scan field of view, m (e.g. `COL:FOV?`); optional, disabled by default:
    // set it in the profile's map where the column reports one.
    ("get_field_of_view", ""),
];

/// Tolerances of the read-back comparison: a setting took when
/// `|actual − requested| ≤ max(absolute, relative × |requested|)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// Relative tolerance (dimensionless).
    pub relative: f64,
    /// Absolute tolerance, in the setting's unit.
    pub absolute: f64,
}

impl Tolerance {
    fn accepts(&self, requested: f64, actual: f64) -> bool {
        (actual - requested).abs() <= self.absolute.max(self.relative * requested.abs())
    }
}

/// Where the column is and how to talk to it.
#[derive(Clone, Debug)]
pub struct MappedMicroscopeConfig {
    /// Name in errors and metadata.
    pub name: String,
    /// TCP or serial address.
    pub address: ScpiAddress,
    /// Deadline for connecting and for every response.
    pub timeout: Duration,
    /// Overrides of [`MICROSCOPE_DEFAULT_MAP`].
    pub commands: BTreeMap<String, String>,
    /// Wait after the settings are sent, before reading back (lenses and high tension
    /// settle), s.
    pub settle: Duration,
    /// Per-setting tolerances by operation stem (`high_tension`, `defocus`, …); the default
    /// is 0.1 % relative, with 1 nm absolute for defocus.
    pub tolerances: BTreeMap<String, Tolerance>,
}

impl MappedMicroscopeConfig {
    /// Default map, 2 s deadline, 100 ms settle time, default tolerances.
    pub fn new(address: ScpiAddress) -> Self {
        Self {
            name: "microscope".into(),
            address,
            timeout: Duration::from_secs(2),
            commands: BTreeMap::new(),
            settle: Duration::from_millis(100),
            tolerances: BTreeMap::new(),
        }
    }

    fn tolerance(&self, setting: &str) -> Tolerance {
        self.tolerances
            .get(setting)
            .copied()
            .unwrap_or(match setting {
                "defocus" => Tolerance {
                    relative: 1e-3,
                    absolute: 1e-9,
                },
                _ => Tolerance {
                    relative: 1e-3,
                    absolute: 0.0,
                },
            })
    }
}

/// A microscope column behind a command map.
#[derive(Debug)]
pub struct MappedMicroscope {
    client: ScpiClient,
    map: CommandMap,
    cfg: MappedMicroscopeConfig,
}

impl MappedMicroscope {
    /// Validates the map, connects and identifies the column.
    ///
    /// # Errors
    /// [`DeviceError`] naming the microscope.
    pub fn connect(cfg: MappedMicroscopeConfig) -> Result<Self, DeviceError> {
        let (client, map, _identity) = connect_mapped(
            &cfg.name,
            &cfg.address,
            cfg.timeout,
            MICROSCOPE_DEFAULT_MAP,
            &cfg.commands,
        )?;
        Ok(Self { client, map, cfg })
    }

    fn get(&mut self, what: &str) -> Result<f64, DeviceError> {
        let op = format!("get_{what}");
        let q = self
            .map
            .command(&op, &[])
            .map_err(|e| map_err(self.client.device(), e))?;
        let r = self
            .client
            .query(&q)
            .map_err(ScpiError::into_device_error)?;
        self.map
            .parse_f64(&op, &r, "value")
            .map_err(|e| map_err(self.client.device(), e))
    }

    fn put(&mut self, what: &str, value: String) -> Result<(), DeviceError> {
        let cmd = self
            .map
            .command(&format!("set_{what}"), &[("value", value)])
            .map_err(|e| map_err(self.client.device(), e))?;
        self.client.set(&cmd).map_err(ScpiError::into_device_error)
    }

    /// The beam current, A (when the map has `get_beam_current`), e.g. for a suspender that
    /// pauses a queue while the current is low.
    ///
    /// # Errors
    /// [`DeviceError`] naming the microscope.
    pub fn beam_current_a(&mut self) -> Result<Option<f64>, DeviceError> {
        if self.map.has("get_beam_current") {
            self.get("beam_current").map(Some)
        } else {
            Ok(None)
        }
    }
}

impl Microscope for MappedMicroscope {
    fn name(&self) -> &str {
        self.client.device()
    }

    fn read_state(&mut self) -> Result<MicroscopeState, DeviceError> {
        Ok(MicroscopeState {
            high_tension_v: self.get("high_tension")?,
            camera_length_m: self.get("camera_length")?,
            convergence_angle_rad: self.get("convergence_angle")?,
            magnification: self.get("magnification")?,
            defocus_m: self.get("defocus")?,
            beam_blanked: self.get("beam_blank")? != 0.0,
            field_of_view_m: if self.map.has("get_field_of_view") {
                Some(self.get("field_of_view")?)
            } else {
                None
            },
        })
    }

    fn apply(&mut self, s: &MicroscopeSettings) -> Result<MicroscopeState, DeviceError> {
        let numeric = [
            ("high_tension", s.high_tension_v),
            ("camera_length", s.camera_length_m),
            ("convergence_angle", s.convergence_angle_rad),
            ("magnification", s.magnification),
            ("defocus", s.defocus_m),
        ];
        for (what, v) in numeric {
            if let Some(v) = v {
                self.put(what, format!("{v:e}"))?;
            }
        }
        if let Some(b) = s.beam_blanked {
            self.put("beam_blank", if b { "1" } else { "0" }.into())?;
        }
        std::thread::sleep(self.cfg.settle);
        let state = self.read_state()?;
        let actual = [
            state.high_tension_v,
            state.camera_length_m,
            state.convergence_angle_rad,
            state.magnification,
            state.defocus_m,
        ];
        for ((what, requested), actual) in numeric.into_iter().zip(actual) {
            if let Some(requested) = requested
                && !self.cfg.tolerance(what).accepts(requested, actual)
            {
                return Err(DeviceError::Rejected {
                    device: self.client.device().to_string(),
                    setting: what.replace('_', " "),
                    requested: format!("{requested:e}"),
                    actual: format!("{actual:e} read back after {:?}", self.cfg.settle),
                });
            }
        }
        if let Some(b) = s.beam_blanked
            && state.beam_blanked != b
        {
            return Err(DeviceError::Rejected {
                device: self.client.device().to_string(),
                setting: "beam blank".into(),
                requested: b.to_string(),
                actual: format!("{} read back", state.beam_blanked),
            });
        }
        Ok(state)
    }
}
