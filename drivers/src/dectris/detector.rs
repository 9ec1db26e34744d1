//! [`DectrisDetector`]: a DECTRIS SIMPLON detector (ARINA, QUADRO) as the orchestrator's
//! [`Detector`], on top of the REST client and the stream receiver (protocols.md §2).
//!
//! The stream connection is opened when the detector connects (before any arm, so the
//! global header is never missed) and kept across series; it is re-opened when the
//! receiver has failed. Active mode configures the trigger mode, counts and times over
//! REST (each value read back), arms (`arm` returns the series id), and returns only once
//! the header of that series has arrived on the stream: armed, confirmed. With the
//! internal trigger (`ints`) it then sends `trigger` itself; otherwise the scan engine (or
//! the orchestrator's soft trigger) starts the frames. Passive mode waits, with the
//! caller's deadline, for the header of a series armed by someone else.
//!
//! Settings → SIMPLON (§2.3, "Trigger modes and frame count"), N = nav_shape.len():
//!
//! | trigger | mode | ntrigger | nimages |
//! |---|---|---|---|
//! | internal (detector timer) | `ints`, and we send `trigger` after arming | 1 | N |
//! | soft (one `trigger` starts the series) | `ints` | 1 | N |
//! | external rising, 1 frame per trigger | `exte` (exposure = pulse) | N | 1 |
//! | external rising, k frames per trigger | `exts` | N / k | k |
//!
//! `extra["trigger_mode"]` forces a mode (`inte`: N software triggers of one frame each,
//! exposure sent with each `trigger`); every other `extra` entry is PUT verbatim as a
//! detector config value (a JSON value if it parses as one, else a string), `roi_*` keys
//! first because they reset other settings (§2.3 ROI notes). `count_time` (the exposure)
//! is set before `frame_time`.

use super::receiver::{
    AcquisitionSummary, DectrisReceiver, DectrisReceiverConfig, LossPolicy, ReceiverEvent,
    SeriesFilter,
};
use super::rest::{RestError, SimplonClient, StreamFormat};
use super::stream::{HeaderDetail, TriggerMode};
use crossbeam_channel::{RecvTimeoutError, bounded};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use stemflow_core::detector::{
    AcquisitionEnd, ArmMode, ArmedAcquisition, Detector, DetectorSettings, DetectorTrigger,
};
use stemflow_core::devices::DeviceError;
use stemflow_core::{DType, NavShape, SigShape};

/// Where and how to reach a DECTRIS detector control unit (DCU).
#[derive(Clone, Debug)]
pub struct DectrisDetectorConfig {
    /// Host of the REST API (the DCU; LiberTEM's simulator: `127.0.0.1`).
    pub rest_host: String,
    /// Port of the REST API (DCU: 80; LiberTEM's simulator: 8910).
    pub rest_port: u16,
    /// Stream endpoint (v1: `<dcu>:9999`; v2: `<dcu>:31001`).
    pub stream: SocketAddr,
    /// Stream v1 (`legacy`) or v2 (`cbor`).
    pub format: StreamFormat,
    /// Header detail to request in active mode (default `basic`, as LiberTEM).
    pub header_detail: HeaderDetail,
    /// Active mode: PUT the stream config (mode `enabled`, `header_detail`, and `format`
    /// for v2) in [`configure`](Detector::configure). Default true.
    pub configure_stream: bool,
    /// Also PUT `format` = `legacy` for v1 (off by default: older firmware and LiberTEM's
    /// simulator do not have the parameter).
    pub put_legacy_format: bool,
    /// Deadline of each REST call.
    pub request_timeout: Duration,
    /// Deadline of the REST `arm` (a real DCU can take seconds).
    pub arm_timeout: Duration,
    /// Deadline to connect the stream.
    pub connect_timeout: Duration,
    /// Inactivity deadline between frames (then the rest are counted lost).
    pub frame_timeout: Duration,
    /// Deadline from the header to the first frame.
    pub first_frame_timeout: Duration,
    /// Scan shape to report, overriding the one from [`configure`](Detector::configure)
    /// (passive mode: the DCU does not know the scan).
    pub nav_shape: Option<NavShape>,
    /// Passive mode: the scan shape from the announced image count and this hint, when
    /// [`nav_shape`](Self::nav_shape) is not given.
    pub nav_hint: Option<crate::nav_hint::NavHint>,
    /// Lost frames: continue and report (default) or abort the series.
    pub on_lost: LossPolicy,
    /// Frames per raw stack (a live partition); 0 (the default): automatic, about 4 MiB
    /// ([`crate::stack_frames`]).
    pub frames_per_stack: usize,
    /// Raw stack buffers.
    pub pool_stacks: usize,
}

impl DectrisDetectorConfig {
    /// Defaults: stream v1, `basic` header, stream config on, REST calls 5 s, arm 60 s,
    /// connect 2 s, frames 2 s apart at most, first frame 10 s, continue on loss, 32 frames
    /// per stack, 16 stacks.
    pub fn new(rest_host: &str, rest_port: u16, stream: SocketAddr) -> Self {
        Self {
            rest_host: rest_host.to_string(),
            rest_port,
            stream,
            format: StreamFormat::Legacy,
            header_detail: HeaderDetail::Basic,
            configure_stream: true,
            put_legacy_format: false,
            request_timeout: Duration::from_secs(5),
            arm_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(2),
            frame_timeout: Duration::from_secs(2),
            first_frame_timeout: Duration::from_secs(10),
            nav_shape: None,
            nav_hint: None,
            on_lost: LossPolicy::Continue,
            frames_per_stack: 0,
            pool_stacks: 16,
        }
    }
}

/// What [`configure`](Detector::configure) established.
#[derive(Clone, Copy, Debug)]
struct Configured {
    sig_shape: SigShape,
    dtype: DType,
    mode: TriggerMode,
    /// Send `trigger` right after the arm is confirmed (internal trigger).
    auto_trigger: bool,
    exposure_s: f64,
}

/// A connected DECTRIS detector (REST client + stream receiver).
pub struct DectrisDetector {
    cfg: DectrisDetectorConfig,
    name: String,
    rest: SimplonClient,
    receiver: Option<DectrisReceiver>,
    configured: Option<Configured>,
    nav_shape: Option<NavShape>,
    mode: ArmMode,
    /// Passive mode: `Armed` events that were waiting when `arm` was called.
    pending_armed: Vec<ReceiverEvent>,
}

impl std::fmt::Debug for DectrisDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DectrisDetector")
            .field("name", &self.name)
            .field("stream", &self.cfg.stream)
            .finish()
    }
}

/// A REST failure as the device error of the step `what`.
fn rest_err(device: &str, what: &str, e: RestError) -> DeviceError {
    e.into_device_error(device, what)
}

fn end_of(summary: &AcquisitionSummary, error: Option<String>) -> AcquisitionEnd {
    summary.to_acquisition_end(error)
}

impl DectrisDetector {
    /// Checks that the REST API answers (`GET /detector/api/version/`) and opens the
    /// stream connection.
    ///
    /// # Errors
    /// [`DeviceError`] naming `dectris @ host:port`: a REST timeout as
    /// [`DeviceError::Timeout`], a non-2xx answer as [`DeviceError::Rejected`] (with the
    /// HTTP status and body), other REST failures and a stream that does not accept within
    /// the connect deadline as [`DeviceError::Protocol`].
    pub fn connect(cfg: DectrisDetectorConfig) -> Result<Self, DeviceError> {
        let rest = SimplonClient::new(&cfg.rest_host, cfg.rest_port, cfg.request_timeout)
            .with_arm_timeout(cfg.arm_timeout);
        let name = rest.device().to_string();
        let version = rest
            .version()
            .map_err(|e| rest_err(&name, "reading the API version", e))?;
        if version != super::rest::API_VERSION {
            tracing::warn!(device = %name, %version, "SIMPLON API version differs from the 1.8.0 we speak");
        }
        let mut d = Self {
            name,
            rest,
            receiver: None,
            configured: None,
            nav_shape: cfg.nav_shape,
            mode: ArmMode::Active,
            pending_armed: Vec::new(),
            cfg,
        };
        d.ensure_receiver()?;
        Ok(d)
    }

    /// The REST client (for settings this interface does not cover).
    pub fn rest(&self) -> &SimplonClient {
        &self.rest
    }

    fn receiver_config(&self) -> DectrisReceiverConfig {
        let mut rc = DectrisReceiverConfig::new(self.cfg.stream, self.cfg.format);
        rc.device = format!("{} stream {}", self.name, self.cfg.stream);
        rc.connect_timeout = self.cfg.connect_timeout;
        rc.frame_timeout = self.cfg.frame_timeout;
        rc.first_frame_timeout = self.cfg.first_frame_timeout;
        // arm() applies the caller's deadline itself.
        rc.header_timeout = None;
        rc.on_lost = self.cfg.on_lost;
        rc.frames_per_stack = self.cfg.frames_per_stack;
        rc.pool_stacks = self.cfg.pool_stacks;
        rc.series = SeriesFilter::Pending;
        rc
    }

    fn ensure_receiver(&mut self) -> Result<(), DeviceError> {
        let dead = match &self.receiver {
            None => true,
            // Dead: its thread has ended and every event it sent has been read. (Never probe
            // the channel with a receive: that would swallow a header that just arrived.)
            Some(r) => !r.is_running() && r.events().is_empty(),
        };
        if dead {
            self.receiver = None;
            let r = DectrisReceiver::start(self.receiver_config()).map_err(|e| {
                DeviceError::Protocol {
                    device: self.name.clone(),
                    expected: format!("a ZeroMQ PUSH stream at {}", self.cfg.stream),
                    observed: e.to_string(),
                }
            })?;
            self.receiver = Some(r);
        }
        Ok(())
    }

    fn put(
        &self,
        readback: &mut BTreeMap<String, String>,
        param: &str,
        value: Value,
    ) -> Result<(), DeviceError> {
        let back = self
            .rest
            .set_detector_config(param, value)
            .map_err(|e| rest_err(&self.name, &format!("setting {param}"), e))?;
        readback.insert(
            param.to_string(),
            back.as_str()
                .map_or_else(|| back.to_string(), str::to_string),
        );
        Ok(())
    }

    /// The exposure (`count_time`) for settings `s`: the one asked for, unless it leaves no
    /// time in the frame period for the readout — a detector needs `count_time ≤
    /// frame_time − detector_readout_time` (SIMPLON, protocols.md §2.3; the DCU would
    /// otherwise move one of them) — then the frame period minus the readout time read
    /// back from the detector, which goes into `readback`.
    ///
    /// # Errors
    /// [`DeviceError::Rejected`] when the frame period is not longer than the readout time.
    /// A detector that does not report its readout time gets the count time asked for.
    fn count_time_for(
        &self,
        s: &DetectorSettings,
        readback: &mut BTreeMap<String, String>,
    ) -> Result<f64, DeviceError> {
        // A detector that does not offer the key (older firmware, a minimal DCU) is taken
        // at its word: the settings go as asked and its own consequences are read back.
        let readout = match self.rest.detector_config("detector_readout_time") {
            Ok(v) => v.as_f64().filter(|r| *r >= 0.0),
            Err(e) => {
                tracing::warn!("{}: detector_readout_time not readable: {e}", self.name);
                None
            }
        };
        let Some(readout) = readout else {
            readback.insert("detector_readout_time".into(), "unknown".into());
            return Ok(s.exposure_s);
        };
        readback.insert("detector_readout_time".into(), readout.to_string());
        if s.exposure_s + readout <= s.frame_time_s {
            return Ok(s.exposure_s);
        }
        let count = s.frame_time_s - readout;
        if count <= 0.0 {
            return Err(DeviceError::Rejected {
                device: self.name.clone(),
                setting: "frame_time".into(),
                requested: format!("{} s", s.frame_time_s),
                actual: format!("not longer than the detector's readout time, {readout} s"),
            });
        }
        tracing::info!(
            "{}: count_time {count} s (frame_time {} s minus the readout time {readout} s; {} s asked for)",
            self.name,
            s.frame_time_s,
            s.exposure_s
        );
        Ok(count)
    }

    fn get_u64(&self, param: &str) -> Result<u64, DeviceError> {
        let v = self
            .rest
            .detector_config(param)
            .map_err(|e| rest_err(&self.name, &format!("reading {param}"), e))?;
        v.as_u64()
            .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .ok_or_else(|| DeviceError::Protocol {
                device: self.name.clone(),
                expected: format!("{param} as a non-negative integer"),
                observed: v.to_string(),
            })
    }

    /// Frame shape and pixel type read from the DCU (`x/y_pixels_in_detector`,
    /// `bit_depth_image`).
    fn read_format(&self) -> Result<(SigShape, DType), DeviceError> {
        let x = self.get_u64("x_pixels_in_detector")?;
        let y = self.get_u64("y_pixels_in_detector")?;
        let bits = self.get_u64("bit_depth_image")?;
        let dtype = match bits {
            8 => DType::U8,
            16 => DType::U16,
            32 => DType::U32,
            other => {
                return Err(DeviceError::Protocol {
                    device: self.name.clone(),
                    expected: "bit_depth_image 8, 16 or 32".into(),
                    observed: other.to_string(),
                });
            }
        };
        Ok((SigShape::new(y as usize, x as usize), dtype))
    }
}

impl Detector for DectrisDetector {
    fn name(&self) -> &str {
        &self.name
    }

    fn configure(&mut self, s: &DetectorSettings) -> Result<BTreeMap<String, String>, DeviceError> {
        let n = s.nav_shape.len() as u64;
        let fpt = s.frames_per_trigger.max(1);
        let forced = s.extra.get("trigger_mode");
        let mode = match forced {
            Some(m) => TriggerMode::parse(m).map_err(|e| DeviceError::Rejected {
                device: self.name.clone(),
                setting: "trigger_mode".into(),
                requested: format!("`{m}`"),
                actual: e.to_string(),
            })?,
            None => match s.trigger {
                DetectorTrigger::Internal | DetectorTrigger::Soft => TriggerMode::Ints,
                DetectorTrigger::ExternalRising if fpt > 1 => TriggerMode::Exts,
                DetectorTrigger::ExternalRising => TriggerMode::Exte,
            },
        };
        let (ntrigger, nimages) = match mode {
            TriggerMode::Exte | TriggerMode::Inte => (n, 1),
            TriggerMode::Ints => (1, n),
            TriggerMode::Exts => {
                if !n.is_multiple_of(fpt) {
                    return Err(DeviceError::Rejected {
                        device: self.name.clone(),
                        setting: "frames_per_trigger".into(),
                        requested: format!("{fpt} frames per trigger"),
                        actual: format!("{n} scan positions are not a multiple of {fpt}"),
                    });
                }
                (n / fpt, fpt)
            }
        };
        let mut readback = BTreeMap::new();
        let mut extras: Vec<(&String, &String)> = s
            .extra
            .iter()
            .filter(|(k, _)| k.as_str() != "trigger_mode")
            .collect();
        extras.sort_by_key(|(k, _)| !k.starts_with("roi_"));
        for (k, v) in extras {
            self.put(&mut readback, k, crate::http::json_value(v))?;
        }
        self.put(&mut readback, "trigger_mode", Value::from(mode.as_str()))?;
        self.put(&mut readback, "ntrigger", Value::from(ntrigger))?;
        self.put(&mut readback, "nimages", Value::from(nimages))?;
        let count_time = self.count_time_for(s, &mut readback)?;
        self.put(&mut readback, "count_time", Value::from(count_time))?;
        self.put(&mut readback, "frame_time", Value::from(s.frame_time_s))?;
        if self.cfg.configure_stream {
            let what = |w: &str| format!("configuring the stream ({w})");
            self.rest
                .set_stream_enabled(true)
                .map_err(|e| rest_err(&self.name, &what("mode"), e))?;
            self.rest
                .set_header_detail(self.cfg.header_detail)
                .map_err(|e| rest_err(&self.name, &what("header_detail"), e))?;
            if self.cfg.format == StreamFormat::Cbor || self.cfg.put_legacy_format {
                self.rest
                    .set_stream_format(self.cfg.format)
                    .map_err(|e| rest_err(&self.name, &what("format"), e))?;
            }
            readback.insert(
                "stream.header_detail".into(),
                self.cfg.header_detail.as_str().into(),
            );
        }
        let (sig_shape, dtype) = self.read_format()?;
        readback.insert("x_pixels_in_detector".into(), sig_shape.cols.to_string());
        readback.insert("y_pixels_in_detector".into(), sig_shape.rows.to_string());
        readback.insert("bit_depth_image".into(), (dtype.size() * 8).to_string());
        readback.insert("device".into(), self.name.clone());
        self.configured = Some(Configured {
            sig_shape,
            dtype,
            mode,
            auto_trigger: forced.is_none() && s.trigger == DetectorTrigger::Internal,
            exposure_s: s.exposure_s,
        });
        self.nav_shape = self.cfg.nav_shape.or(Some(s.nav_shape));
        Ok(readback)
    }

    fn arm(&mut self, mode: ArmMode, deadline: Duration) -> Result<ArmedAcquisition, DeviceError> {
        let until = Instant::now() + deadline;
        self.mode = mode;
        if let Some(r) = self.receiver.as_ref() {
            // In active mode anything reported before our arm belongs to an earlier
            // series; in passive mode only an `Armed` still waiting may be ours. Stale
            // errors go either way, so a receiver that has failed is seen as dead below.
            let keep: Vec<ReceiverEvent> = r
                .events()
                .try_iter()
                .filter(|ev| mode == ArmMode::Passive && matches!(ev, ReceiverEvent::Armed { .. }))
                .collect();
            if !keep.is_empty() {
                self.pending_armed = keep;
            } else {
                self.pending_armed.clear();
            }
        }
        self.ensure_receiver()?;
        let Some(receiver) = self.receiver.as_ref() else {
            return Err(DeviceError::State {
                device: self.name.clone(),
                action: "arm".into(),
                state: "without a stream connection".into(),
            });
        };
        let events = receiver.events().clone();
        let series = match mode {
            ArmMode::Active => {
                receiver.set_series_filter(SeriesFilter::Pending);
                // The caller's deadline bounds the REST answer too, not only the header.
                match self
                    .rest
                    .arm_within(until.saturating_duration_since(Instant::now()))
                {
                    Ok(id) => {
                        receiver.set_series_filter(SeriesFilter::Series(id));
                        Some(id)
                    }
                    Err(e) => {
                        receiver.set_series_filter(SeriesFilter::Pending);
                        return Err(rest_err(&self.name, "arm", e));
                    }
                }
            }
            ArmMode::Passive => {
                receiver.set_series_filter(SeriesFilter::Any);
                None
            }
        };
        let mut held = std::mem::take(&mut self.pending_armed).into_iter();
        let (header, stacks) = loop {
            let next = match held.next() {
                Some(ev) => Ok(ev),
                None => events.recv_deadline(until),
            };
            match next {
                Ok(ReceiverEvent::Armed { header, stacks, .. }) => break (header, stacks),
                Ok(ReceiverEvent::Error { error, .. }) => {
                    return Err(DeviceError::Protocol {
                        device: self.name.clone(),
                        expected: "a series header on the stream (arm confirmation)".into(),
                        observed: error.to_string(),
                    });
                }
                Ok(_) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(DeviceError::Protocol {
                        device: self.name.clone(),
                        expected: "a series header on the stream (arm confirmation)".into(),
                        observed: format!(
                            "the stream receiver for {} ended (connection closed)",
                            self.cfg.stream
                        ),
                    });
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(DeviceError::Timeout {
                        device: self.name.clone(),
                        what: match series {
                            Some(id) => format!(
                                "the header of series {id} on stream {} (arm sent)",
                                self.cfg.stream
                            ),
                            None => format!(
                                "a series header on stream {} (armed by someone else)",
                                self.cfg.stream
                            ),
                        },
                        waited_s: deadline.as_secs_f64(),
                    });
                }
            }
        };
        let (sig_shape, dtype) = match (header.sig_shape, header.dtype, self.configured) {
            (Some(s), Some(d), _) => (s, d),
            (_, _, Some(c)) if mode == ArmMode::Active => (c.sig_shape, c.dtype),
            _ => self.read_format()?,
        };
        if let Some(c) = self.configured.filter(|_| mode == ArmMode::Active)
            && (c.sig_shape, c.dtype) != (sig_shape, dtype)
        {
            tracing::warn!(
                "{}: header announces {sig_shape} {dtype}, configured {} {}",
                self.name,
                c.sig_shape,
                c.dtype
            );
        }
        if mode == ArmMode::Active && self.configured.is_some_and(|c| c.auto_trigger) {
            self.rest
                .trigger(None)
                .map_err(|e| rest_err(&self.name, "trigger (internal trigger)", e))?;
        }
        let (end_tx, end_rx) = bounded(1);
        let name = self.name.clone();
        std::thread::Builder::new()
            .name("dectris-acq-end".into())
            .spawn(move || {
                let end = loop {
                    match events.recv() {
                        Ok(ReceiverEvent::FirstFrame {
                            sig_shape: s,
                            dtype: d,
                            ..
                        }) => {
                            if (s, d) != (sig_shape, dtype) {
                                tracing::warn!(
                                    "{name}: frames are {s} {d}, expected {sig_shape} {dtype}"
                                );
                            }
                        }
                        Ok(ReceiverEvent::Finished { summary, .. }) => {
                            break end_of(&summary, None);
                        }
                        Ok(ReceiverEvent::Error { error, summary }) => {
                            let msg = error.to_string();
                            break match summary {
                                Some(s) => end_of(&s, Some(msg)),
                                None => crate::receiver::failed_end("failed", msg),
                            };
                        }
                        Ok(ReceiverEvent::Armed { .. }) => continue,
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
                during: "starting the end-of-series watcher".into(),
                source: e,
            })?;
        let nav_shape = match (self.cfg.nav_shape, self.cfg.nav_hint) {
            (Some(n), _) => Some(n),
            (None, Some(hint)) if self.mode == ArmMode::Passive => Some(
                hint.resolve(header.expected_frames)
                    .map_err(|e| DeviceError::Protocol {
                        device: self.name.clone(),
                        expected: format!("a series that fits the scan-shape hint {hint}"),
                        observed: e.to_string(),
                    })?,
            ),
            _ => self.nav_shape,
        };
        Ok(ArmedAcquisition {
            header: Some(header.raw.clone()),
            expected_frames: header.expected_frames,
            nav_shape,
            sig_shape,
            dtype,
            stacks,
            end: end_rx,
        })
    }

    fn soft_trigger(&mut self) -> Result<(), DeviceError> {
        let count_time = self
            .configured
            .filter(|c| c.mode == TriggerMode::Inte)
            .map(|c| c.exposure_s);
        self.rest
            .trigger(count_time)
            .map_err(|e| rest_err(&self.name, "trigger", e))
    }

    fn disarm(&mut self) -> Result<(), DeviceError> {
        if self.mode == ArmMode::Passive {
            // Someone else owns the series; we only stop listening to it.
            return Ok(());
        }
        self.rest
            .disarm()
            .map(|_| ())
            .map_err(|e| rest_err(&self.name, "disarm", e))
    }
}
