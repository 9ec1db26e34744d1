//! A STEM scan generator driven through a [`CommandMap`] over SCPI-style text (TCP or a
//! serial port): scan shape, dwell time, flyback, raster or serpentine pattern, an optional
//! sub-region, pixel or line trigger output; start, stop, abort, status. Every setting is
//! followed by the error-queue query (when the map has one) and shape, dwell time and
//! flyback are read back before the scan may start.
//!
//! The default map ([`SCAN_ENGINE_DEFAULT_MAP`]) is what `stemflow`'s scan generator
//! simulator speaks; a site whose scan generator uses other commands overrides entries in
//! its device config file.

use super::command_map::{CommandMap, connect_mapped, map_err};
use super::{ScpiAddress, ScpiClient, ScpiError};
use std::collections::BTreeMap;
use std::time::Duration;
use stemflow_core::NavShape;
use stemflow_core::devices::{DeviceError, ScanEngine, ScanSettings, ScanStatus, TriggerOutput};

/// Operations of a scan generator and their default commands. Times in seconds; `pattern`
/// is `RASTER` or `SERPENTINE`, `trigger` is `PIXEL` or `LINE`, `state` in the status reply
/// is `RUNNING` while scanning. An empty template disables an optional operation
/// (`set_region`, `abort`, `errors`).
pub const SCAN_ENGINE_DEFAULT_MAP: &[(&str, &str)] = &[
    ("identify", "*IDN?"),
    ("errors", "SYST:ERR?"),
    ("set_pattern", "SCAN:PATTERN {pattern}"),
    ("set_region", "SCAN:REGION {row0},{col0}"),
    ("clear_positions", "SCAN:POSITIONS:CLEAR"),
    ("add_position", "SCAN:POSITIONS:ADD {row},{col}"),
    ("set_shape", "SCAN:SHAPE {rows},{cols}"),
    ("get_shape", "SCAN:SHAPE?"),
    ("get_shape.reply", "{rows},{cols}"),
    ("set_dwell", "SCAN:DWELL {dwell_s}"),
    ("get_dwell", "SCAN:DWELL?"),
    ("set_flyback", "SCAN:FLYBACK {flyback_s}"),
    ("get_flyback", "SCAN:FLYBACK?"),
    ("set_trigger", "SCAN:TRIGGER {trigger}"),
    ("start", "SCAN:START"),
    ("stop", "SCAN:STOP"),
    ("abort", "SCAN:ABORT"),
    ("status", "SCAN:STATUS?"),
    ("status.reply", "{state},{positions}"),
];

/// The path of the probe over the scan grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScanPattern {
    /// Every line left to right.
    Raster,
    /// Alternate lines right to left (no flyback across the field).
    Serpentine,
}

/// Where the scan generator is and how to talk to it.
#[derive(Clone, Debug)]
pub struct MappedScanEngineConfig {
    /// Name in errors and metadata.
    pub name: String,
    /// TCP or serial address.
    pub address: ScpiAddress,
    /// Deadline for connecting and for every response.
    pub timeout: Duration,
    /// Overrides of [`SCAN_ENGINE_DEFAULT_MAP`] (from the device config file).
    pub commands: BTreeMap<String, String>,
    /// Scan pattern.
    pub pattern: ScanPattern,
    /// Top-left corner (row, column) of a sub-region in the full field, pixels; `None` scans
    /// the field from its origin.
    pub region_origin: Option<(usize, usize)>,
    /// A custom path: the (row, column) positions to visit, in order, instead of the grid
    /// walk; their number must equal the scan's positions (rows × cols of the nav shape,
    /// which then only shapes the data).
    pub positions: Option<Vec<(usize, usize)>>,
}

impl MappedScanEngineConfig {
    /// Default map, raster, 2 s deadline, no sub-region.
    pub fn new(address: ScpiAddress) -> Self {
        Self {
            name: "scan engine".into(),
            address,
            timeout: Duration::from_secs(2),
            commands: BTreeMap::new(),
            pattern: ScanPattern::Raster,
            region_origin: None,
            positions: None,
        }
    }
}

/// A scan generator behind a command map.
#[derive(Debug)]
pub struct MappedScanEngine {
    client: ScpiClient,
    map: CommandMap,
    cfg: MappedScanEngineConfig,
    identity: String,
}

/// Seconds as the device reads them: plain decimal with enough digits for ns.
fn secs(v: f64) -> String {
    format!("{v:.9}")
}

impl MappedScanEngine {
    /// Validates the map, connects and identifies the device.
    ///
    /// # Errors
    /// [`DeviceError`] naming the scan engine (a bad map is a protocol error naming the key).
    pub fn connect(cfg: MappedScanEngineConfig) -> Result<Self, DeviceError> {
        let (client, map, identity) = connect_mapped(
            &cfg.name,
            &cfg.address,
            cfg.timeout,
            SCAN_ENGINE_DEFAULT_MAP,
            &cfg.commands,
        )?;
        Ok(Self {
            client,
            map,
            cfg,
            identity,
        })
    }

    /// The identification string the device returned (empty without `identify`).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn run(&mut self, op: &str, fields: &[(&str, String)]) -> Result<(), DeviceError> {
        let cmd = self
            .map
            .command(op, fields)
            .map_err(|e| map_err(self.client.device(), e))?;
        self.client.set(&cmd).map_err(ScpiError::into_device_error)
    }

    fn ask(&mut self, op: &str) -> Result<String, DeviceError> {
        let q = self
            .map
            .command(op, &[])
            .map_err(|e| map_err(self.client.device(), e))?;
        self.client.query(&q).map_err(ScpiError::into_device_error)
    }

    fn ask_f64(&mut self, op: &str, field: &str) -> Result<f64, DeviceError> {
        let r = self.ask(op)?;
        self.map
            .parse_f64(op, &r, field)
            .map_err(|e| map_err(self.client.device(), e))
    }

    /// Stops the scan at once, wherever the probe is (`abort`; `stop` when the map has no
    /// abort).
    ///
    /// # Errors
    /// [`DeviceError`] naming the scan engine.
    pub fn abort(&mut self) -> Result<(), DeviceError> {
        if self.map.has("abort") {
            self.run("abort", &[])
        } else {
            self.run("stop", &[])
        }
    }

    fn mismatch(&self, setting: &str, requested: String, actual: String) -> DeviceError {
        DeviceError::Rejected {
            device: self.client.device().to_string(),
            setting: setting.into(),
            requested,
            actual: format!("{actual} read back"),
        }
    }
}

impl ScanEngine for MappedScanEngine {
    fn name(&self) -> &str {
        self.client.device()
    }

    fn configure(&mut self, s: &ScanSettings) -> Result<ScanSettings, DeviceError> {
        let nav = s.nav_shape;
        let pattern = match self.cfg.pattern {
            ScanPattern::Raster => "RASTER",
            ScanPattern::Serpentine => "SERPENTINE",
        };
        if self.map.has("set_pattern") {
            self.run("set_pattern", &[("pattern", pattern.into())])?;
        }
        // The acquisition's region (a sub-region rescan) wins over the configured one.
        if let Some((r0, c0)) = s.region_origin.or(self.cfg.region_origin) {
            if !self.map.has("set_region") {
                return Err(self.mismatch(
                    "sub-region",
                    format!("origin ({r0}, {c0})"),
                    "no `set_region` command in the map:".into(),
                ));
            }
            self.run(
                "set_region",
                &[("row0", r0.to_string()), ("col0", c0.to_string())],
            )?;
        }
        self.run(
            "set_shape",
            &[
                ("rows", nav.rows.to_string()),
                ("cols", nav.cols.to_string()),
            ],
        )?;
        if let Some(list) = self.cfg.positions.clone() {
            if list.len() != nav.len() {
                return Err(self.mismatch(
                    "custom positions",
                    format!("{} positions for a {nav} scan", nav.len()),
                    format!("{} in the list:", list.len()),
                ));
            }
            self.run("clear_positions", &[])?;
            for (r, c) in list {
                self.run(
                    "add_position",
                    &[("row", r.to_string()), ("col", c.to_string())],
                )?;
            }
        }
        self.run("set_dwell", &[("dwell_s", secs(s.dwell_time_s))])?;
        self.run("set_flyback", &[("flyback_s", secs(s.flyback_s))])?;
        let trigger = match s.trigger {
            TriggerOutput::Pixel => "PIXEL",
            TriggerOutput::Line => "LINE",
        };
        self.run("set_trigger", &[("trigger", trigger.into())])?;

        let rows = self.ask_f64("get_shape", "rows")?;
        let cols = self.ask_f64("get_shape", "cols")?;
        if rows as usize != nav.rows || cols as usize != nav.cols {
            return Err(self.mismatch("scan shape", nav.to_string(), format!("{rows}x{cols}")));
        }
        let dwell = self.ask_f64("get_dwell", "value")?;
        if (dwell - s.dwell_time_s).abs() > 1e-9_f64.max(s.dwell_time_s * 1e-6) {
            return Err(self.mismatch(
                "dwell time",
                format!("{} s", s.dwell_time_s),
                format!("{dwell} s"),
            ));
        }
        let flyback = self.ask_f64("get_flyback", "value")?;
        if (flyback - s.flyback_s).abs() > 1e-9_f64.max(s.flyback_s * 1e-6) {
            return Err(self.mismatch(
                "flyback",
                format!("{} s", s.flyback_s),
                format!("{flyback} s"),
            ));
        }
        Ok(ScanSettings {
            nav_shape: NavShape::new(rows as usize, cols as usize),
            dwell_time_s: dwell,
            flyback_s: flyback,
            trigger: s.trigger,
            region_origin: s.region_origin.or(self.cfg.region_origin),
        })
    }

    fn start(&mut self) -> Result<(), DeviceError> {
        self.run("start", &[])
    }

    fn stop(&mut self) -> Result<(), DeviceError> {
        self.run("stop", &[])
    }

    fn status(&mut self) -> Result<ScanStatus, DeviceError> {
        let r = self.ask("status")?;
        let f = self
            .map
            .parse("status", &r)
            .map_err(|e| map_err(self.client.device(), e))?;
        let state = f.get("state").map(|s| s.to_uppercase()).unwrap_or_default();
        let positions = f
            .get("positions")
            .and_then(|p| p.trim_start_matches('+').parse::<f64>().ok())
            .unwrap_or(0.0);
        Ok(ScanStatus {
            running: matches!(state.as_str(), "RUNNING" | "RUN" | "BUSY" | "1"),
            positions_done: positions as u64,
        })
    }
}
