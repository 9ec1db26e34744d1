//! [`Tpx3Detector`]: an ASI Timepix3 camera as the orchestrator's [`Detector`]: the CSR
//! stream receiver (protocols.md §3.1–§3.4) and, for active mode, Serval's REST API
//! (§3.6).
//!
//! The data connection is opened when the detector connects and kept across scans; it is
//! re-opened when the receiver has failed (a stream joined mid-way, §3.2, ends the first
//! connection — the next arm connects again, before the next acquisition starts).
//!
//! **Passive mode** (LiberTEM-live's only mode for this camera): someone else starts the
//! measurement; `arm` waits, with the caller's deadline, for the next `ScanStart`, and the
//! scan shape comes from its `AcquisitionStart` (or the configured override).
//!
//! **Active mode** (Serval): `configure` sets, in `/detector/config`, `nTriggers` = scan
//! positions, `TriggerMode`, `ExposureTime` and `TriggerPeriod` (s) — each read back — and,
//! where the server has it (Serval 4.1), the scan in `/measurement/config` (`Stem.Scan`
//! width, height, dwell time); `arm` starts the measurement (`/measurement/start`) and
//! returns once its `ScanStart` has arrived on the stream; the server's dashboard, the
//! detector's info and the measurement status are read back with the configuration and
//! stored in the run's metadata; `disarm` stops it
//! (`/measurement/stop`) and ends the scan once the stream is quiet.
//!
//! Trigger → `TriggerMode` (§3.5–§3.6):
//!
//! | trigger | `TriggerMode` |
//! |---|---|
//! | external rising edge (the scan engine's pixel clock) | `PEXSTART_NEXSTOP` (exposure from the rising to the falling edge) |
//! | internal (detector timer), soft | `AUTOTRIGSTART_TIMERSTOP` (frames every `TriggerPeriod` once started) |
//!
//! `extra["TriggerMode"]` forces a mode; every other `extra` key is set in
//! `/detector/config` as given (a JSON value if it parses as one, else a string).

use super::receiver::{ReceiverEvent, ScanHeader, Tpx3Receiver, Tpx3ReceiverConfig};
use super::serval::{ServalClient, ServalError};
use crossbeam_channel::{RecvTimeoutError, bounded};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use stemflow_core::detector::{
    ArmMode, ArmedAcquisition, Detector, DetectorSettings, DetectorTrigger,
};
use stemflow_core::devices::DeviceError;
use stemflow_core::{DType, NavShape, SigShape};

/// The trigger modes Serval accepts (§3.5).
pub const TRIGGER_MODES: [&str; 8] = [
    "PEXSTART_NEXSTOP",
    "NEXSTART_PEXSTOP",
    "PEXSTART_TIMERSTOP",
    "NEXSTART_TIMERSTOP",
    "AUTOTRIGSTART_TIMERSTOP",
    "CONTINUOUS",
    "SOFTWARESTART_TIMERSTOP",
    "SOFTWARESTART_SOFTWARESTOP",
];

/// Where and how to reach an ASI Timepix3 camera.
#[derive(Clone, Debug)]
pub struct Tpx3DetectorConfig {
    /// The CSR stream (default port 8283).
    pub data: SocketAddr,
    /// Serval's REST API `(host, port)` (default port 8080); `None`: passive only.
    pub serval: Option<(String, u16)>,
    /// Deadline of each REST call.
    pub request_timeout: Duration,
    /// Deadline to connect the stream.
    pub connect_timeout: Duration,
    /// Inactivity deadline between chunks (then the rest are counted lost).
    pub frame_timeout: Duration,
    /// Deadline from the `ScanStart` to the first chunk.
    pub first_frame_timeout: Duration,
    /// Scan shape to report, overriding `AcquisitionStart`'s.
    pub nav_shape: Option<NavShape>,
    /// Chunks per stack; 0: automatic.
    pub frames_per_stack: usize,
    /// Stack buffers.
    pub pool_stacks: usize,
    /// Largest chunk payload accepted, bytes.
    pub max_chunk_bytes: u64,
}

impl Tpx3DetectorConfig {
    /// Defaults: REST calls 5 s, connect 2 s, chunks 2 s apart at most, first chunk 10 s,
    /// automatic stacks, 16 stacks, chunks up to 256 MiB.
    pub fn new(data: SocketAddr, serval: Option<(String, u16)>) -> Self {
        Self {
            data,
            serval,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            frame_timeout: Duration::from_secs(2),
            first_frame_timeout: Duration::from_secs(10),
            nav_shape: None,
            frames_per_stack: 0,
            pool_stacks: 16,
            max_chunk_bytes: super::receiver::DEFAULT_MAX_CHUNK_BYTES,
        }
    }
}

/// A connected Timepix3 camera (stream receiver, and Serval when given).
pub struct Tpx3Detector {
    cfg: Tpx3DetectorConfig,
    name: String,
    serval: Option<ServalClient>,
    receiver: Option<Tpx3Receiver>,
    nav_shape: Option<NavShape>,
    mode: ArmMode,
    started: bool,
    /// Frame shape read from Serval's layout in `configure`.
    sig_shape: Option<SigShape>,
}

impl std::fmt::Debug for Tpx3Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tpx3Detector")
            .field("name", &self.name)
            .field("data", &self.cfg.data)
            .finish()
    }
}

/// A Serval failure as the device error of step `what`.
fn rest_err(device: &str, what: &str, e: ServalError) -> DeviceError {
    e.into_device_error(device, what)
}

/// The scan header as text for the run record: the `AcquisitionStart` fields, the scan
/// number and the metadata.
fn header_text(h: &ScanHeader) -> String {
    let a = &h.acquisition;
    json!({
        "AcquisitionStart": {
            "version": a.version,
            "format_type": format!("{:?}", a.format_type),
            "nav_shape": [a.nav_shape.0, a.nav_shape.1],
            "sig_shape": [a.sig_shape.0, a.sig_shape.1],
            "indptr_dtype": a.indptr.to_string(),
            "indices_dtype": a.indices.to_string(),
            "sequence": a.sequence,
        },
        "ScanStart": {"sequence": h.scan},
        "metadata": String::from_utf8_lossy(&h.metadata),
    })
    .to_string()
}

impl Tpx3Detector {
    /// Checks Serval (when configured: `GET /dashboard`) and opens the stream connection.
    ///
    /// # Errors
    /// [`DeviceError`] naming `tpx3 @ addr`: Serval not answering or refusing, the stream
    /// port not accepting within the connect deadline.
    pub fn connect(cfg: Tpx3DetectorConfig) -> Result<Self, DeviceError> {
        let name = format!("tpx3 @ {}", cfg.data);
        let serval = cfg
            .serval
            .as_ref()
            .map(|(h, p)| ServalClient::new(h, *p, cfg.request_timeout));
        if let Some(s) = &serval {
            s.dashboard()
                .map_err(|e| rest_err(&name, "checking the server (dashboard)", e))?;
        }
        let mut d = Self {
            name,
            serval,
            receiver: None,
            nav_shape: cfg.nav_shape,
            mode: ArmMode::Passive,
            started: false,
            sig_shape: None,
            cfg,
        };
        d.ensure_receiver()?;
        Ok(d)
    }

    /// The Serval client, when configured.
    pub fn serval(&self) -> Option<&ServalClient> {
        self.serval.as_ref()
    }

    fn ensure_receiver(&mut self) -> Result<(), DeviceError> {
        let dead = match &self.receiver {
            None => true,
            Some(r) => !r.is_running() && r.events().is_empty(),
        };
        if dead {
            self.receiver = None;
            let mut rc = Tpx3ReceiverConfig::new(self.cfg.data);
            rc.device = self.name.clone();
            rc.connect_timeout = self.cfg.connect_timeout;
            rc.frame_timeout = self.cfg.frame_timeout;
            rc.first_frame_timeout = self.cfg.first_frame_timeout;
            // arm() applies the caller's deadline itself; the receiver waits until stop.
            rc.header_timeout = Duration::from_secs(365 * 24 * 3600);
            rc.frames_per_stack = self.cfg.frames_per_stack;
            rc.pool_stacks = self.cfg.pool_stacks;
            rc.expected_frames = self.cfg.nav_shape.map(|n| n.len() as u64);
            rc.max_chunk_bytes = self.cfg.max_chunk_bytes;
            let r = Tpx3Receiver::start(rc).map_err(|e| DeviceError::Protocol {
                device: self.name.clone(),
                expected: format!("a TPX3 CSR stream at {}", self.cfg.data),
                observed: e.to_string(),
            })?;
            self.receiver = Some(r);
        }
        Ok(())
    }

    fn serval_or_err(&self, action: &str) -> Result<&ServalClient, DeviceError> {
        self.serval.as_ref().ok_or_else(|| DeviceError::State {
            device: self.name.clone(),
            action: action.to_string(),
            state: "without Serval's REST API (passive only: give its host and port)".into(),
        })
    }
}

fn flat(readback: &mut BTreeMap<String, String>, prefix: &str, v: &Value) {
    if let Some(o) = v.as_object() {
        for (k, v) in o {
            let key = format!("{prefix}{k}");
            match v {
                Value::Object(_) => flat(readback, &format!("{key}."), v),
                Value::String(s) => {
                    readback.insert(key, s.clone());
                }
                other => {
                    readback.insert(key, other.to_string());
                }
            }
        }
    }
}

impl Detector for Tpx3Detector {
    fn name(&self) -> &str {
        &self.name
    }

    fn configure(&mut self, s: &DetectorSettings) -> Result<BTreeMap<String, String>, DeviceError> {
        self.nav_shape = self.cfg.nav_shape.or(Some(s.nav_shape));
        let mut readback = BTreeMap::new();
        readback.insert("device".into(), self.name.clone());
        let Some(serval) = self.serval.clone() else {
            // Passive only: nothing to set; the stream announces the scan.
            readback.insert("control".into(), "none (passive)".into());
            return Ok(readback);
        };
        let n = s.nav_shape.len() as u64;
        let mode = match s.extra.get("TriggerMode") {
            Some(m) if TRIGGER_MODES.contains(&m.as_str()) => m.clone(),
            Some(m) => {
                return Err(DeviceError::Rejected {
                    device: self.name.clone(),
                    setting: "TriggerMode".into(),
                    requested: m.clone(),
                    actual: format!("not one of {}", TRIGGER_MODES.join(", ")),
                });
            }
            None => match s.trigger {
                DetectorTrigger::ExternalRising => "PEXSTART_NEXSTOP".into(),
                DetectorTrigger::Internal | DetectorTrigger::Soft => {
                    "AUTOTRIGSTART_TIMERSTOP".into()
                }
            },
        };
        let mut changes = Map::new();
        for (k, v) in s.extra.iter().filter(|(k, _)| k.as_str() != "TriggerMode") {
            changes.insert(k.clone(), crate::http::json_value(v));
        }
        changes.insert("nTriggers".into(), Value::from(n));
        changes.insert("TriggerMode".into(), Value::from(mode));
        changes.insert("ExposureTime".into(), Value::from(s.exposure_s));
        changes.insert(
            "TriggerPeriod".into(),
            Value::from(s.frame_time_s.max(s.exposure_s)),
        );
        let back = serval
            .set_detector_config(&changes)
            .map_err(|e| rest_err(&self.name, "setting the detector configuration", e))?;
        flat(&mut readback, "detector.config.", &back);
        // The scan, where the server knows one (Serval 4.1); older servers answer 404.
        let scan = json!({"Stem": {"Scan": {
            "Width": s.nav_shape.cols, "Height": s.nav_shape.rows, "DwellTime": s.frame_time_s,
        }}});
        match serval.set_measurement_config(&scan) {
            Ok(back) => flat(&mut readback, "measurement.config.", &back),
            Err(e) if e.status() == Some(404) => {
                readback.insert("measurement.config".into(), "not supported".into());
            }
            Err(e) => return Err(rest_err(&self.name, "setting the scan", e)),
        }
        // What the server and the detector say about themselves, for the run record.
        for (prefix, v) in [
            ("dashboard.", serval.dashboard()),
            ("detector.info.", serval.detector_info()),
            ("measurement.", serval.measurement()),
        ] {
            match v {
                Ok(v) => flat(&mut readback, prefix, &v),
                Err(e) => {
                    readback.insert(format!("{prefix}error"), e.to_string());
                }
            }
        }
        let layout = serval
            .detector_layout()
            .map_err(|e| rest_err(&self.name, "reading the layout", e))?;
        let dim = |k: &str| {
            layout
                .pointer(&format!("/Original/{k}"))
                .or_else(|| layout.get(k))
                .and_then(Value::as_u64)
        };
        if let (Some(w), Some(h)) = (dim("Width"), dim("Height")) {
            self.sig_shape = Some(SigShape::new(h as usize, w as usize));
            readback.insert("layout.width".into(), w.to_string());
            readback.insert("layout.height".into(), h.to_string());
        }
        Ok(readback)
    }

    fn arm(&mut self, mode: ArmMode, deadline: Duration) -> Result<ArmedAcquisition, DeviceError> {
        let until = Instant::now() + deadline;
        self.mode = mode;
        if mode == ArmMode::Active {
            // Anything reported before our start belongs to an earlier measurement.
            if let Some(r) = &self.receiver {
                r.events().try_iter().for_each(drop);
            }
        }
        self.ensure_receiver()?;
        let events = match &self.receiver {
            Some(r) => r.events().clone(),
            None => {
                return Err(DeviceError::State {
                    device: self.name.clone(),
                    action: "arm".into(),
                    state: "without a stream connection".into(),
                });
            }
        };
        if mode == ArmMode::Active {
            self.serval_or_err("arm in active mode")?
                .start()
                .map_err(|e| rest_err(&self.name, "starting the measurement", e))?;
            self.started = true;
        }
        let (header, stacks) = loop {
            match events.recv_deadline(until) {
                Ok(ReceiverEvent::Armed { header, stacks, .. }) => break (header, stacks),
                Ok(ReceiverEvent::Error { error, .. }) => {
                    return Err(DeviceError::Protocol {
                        device: self.name.clone(),
                        expected: "a ScanStart on the stream (arm confirmation)".into(),
                        observed: error.to_string(),
                    });
                }
                Ok(_) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(DeviceError::Protocol {
                        device: self.name.clone(),
                        expected: "a ScanStart on the stream (arm confirmation)".into(),
                        observed: "the stream receiver ended (connection closed)".into(),
                    });
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(DeviceError::Timeout {
                        device: self.name.clone(),
                        what: match mode {
                            ArmMode::Active => {
                                format!("a ScanStart on {} (measurement started)", self.cfg.data)
                            }
                            ArmMode::Passive => format!(
                                "a ScanStart on {} (measurement started by someone else)",
                                self.cfg.data
                            ),
                        },
                        waited_s: deadline.as_secs_f64(),
                    });
                }
            }
        };
        let a = header.acquisition;
        let sig_shape = SigShape::new(a.sig_shape.0 as usize, a.sig_shape.1 as usize);
        if let Some(s) = self.sig_shape.filter(|s| *s != sig_shape) {
            tracing::warn!(
                "{}: stream announces {sig_shape}, Serval's layout {s}",
                self.name
            );
        }
        let announced = NavShape::new(a.nav_shape.0 as usize, a.nav_shape.1 as usize);
        let nav_shape = match (self.cfg.nav_shape, mode) {
            (Some(n), _) => n,
            (None, ArmMode::Active) => self.nav_shape.unwrap_or(announced),
            (None, ArmMode::Passive) => announced,
        };
        if mode == ArmMode::Active && nav_shape.len() != announced.len() {
            tracing::warn!(
                "{}: the stream announces a {announced} scan, configured {nav_shape}",
                self.name
            );
        }
        let expected_frames = self.cfg.nav_shape.map_or(a.frames(), |n| n.len() as u64);
        let (end_tx, end_rx) = bounded(1);
        let name = self.name.clone();
        std::thread::Builder::new()
            .name("tpx3-acq-end".into())
            .spawn(move || {
                let end = loop {
                    match events.recv() {
                        Ok(ReceiverEvent::Finished { summary, .. }) => {
                            break summary.to_acquisition_end(None);
                        }
                        Ok(ReceiverEvent::Error { error, summary }) => {
                            let msg = error.to_string();
                            break match summary {
                                Some(s) => s.to_acquisition_end(Some(msg)),
                                None => crate::receiver::failed_end("failed", msg),
                            };
                        }
                        Ok(_) => continue,
                        Err(_) => {
                            break crate::receiver::failed_end(
                                "disconnected",
                                format!("{name}: receiver thread ended"),
                            );
                        }
                    }
                };
                let _ = end_tx.send(end);
            })
            .map_err(|e| DeviceError::Io {
                device: self.name.clone(),
                during: "starting the end-of-scan watcher".into(),
                source: e,
            })?;
        Ok(ArmedAcquisition {
            header: Some(header_text(&header)),
            expected_frames,
            nav_shape: Some(nav_shape),
            sig_shape,
            dtype: DType::U32,
            stacks,
            end: end_rx,
        })
    }

    fn soft_trigger(&mut self) -> Result<(), DeviceError> {
        // The measurement started at arm runs on the detector's timer
        // (AUTOTRIGSTART_TIMERSTOP); a separate software start does not exist in the REST
        // API we speak (§3.6).
        Ok(())
    }

    fn disarm(&mut self) -> Result<(), DeviceError> {
        if let Some(r) = &self.receiver {
            r.end_acquisition();
        }
        if self.mode == ArmMode::Passive || !std::mem::take(&mut self.started) {
            return Ok(());
        }
        self.serval_or_err("disarm")?
            .stop()
            .map_err(|e| rest_err(&self.name, "stopping the measurement", e))
    }
}
