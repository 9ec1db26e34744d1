//! [`MerlinDetector`]: the Merlin as the orchestrator's [`Detector`], on top of the protocol
//! driver (control client + data receiver, protocols.md §1).
//!
//! The data connection is opened when the detector connects (before any arm, so the HDR is
//! never missed) and kept across acquisitions (§1.8 step 7); it is re-opened when the
//! receiver has failed. Active mode configures over the control port (every SET read back),
//! sends `STARTACQUISITION` and returns only when the HDR has arrived: armed, confirmed.
//! Passive mode only waits for the HDR of an acquisition armed by someone else.

use crate::merlin::{
    AcquisitionSummary, ControlError, Layout, MerlinControl, MerlinHeader, MerlinReceiver,
    MerlinReceiverConfig, MerlinSettings, MerlinTrigger, ReceiverEvent,
};
use crossbeam_channel::bounded;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use stemflow_core::detector::{
    AcquisitionEnd, ArmMode, ArmedAcquisition, Detector, DetectorSettings, DetectorTrigger,
};
use stemflow_core::devices::DeviceError;
use stemflow_core::{DType, NavShape, SigShape};

/// Where and how to reach a Merlin.
#[derive(Clone, Debug)]
pub struct MerlinDetectorConfig {
    /// Control port address (Merlin: 6341).
    pub control: SocketAddr,
    /// Data port address (Merlin: 6342).
    pub data: SocketAddr,
    /// Deadline to connect either port.
    pub connect_timeout: Duration,
    /// Deadline for each control reply.
    pub reply_timeout: Duration,
    /// Inactivity deadline between frames (then the rest are counted lost).
    pub frame_timeout: Duration,
    /// Deadline from the HDR to the first frame (a detector that never triggers).
    pub first_frame_timeout: Duration,
    /// Scan shape to report, overriding the HDR's.
    pub nav_shape: Option<NavShape>,
    /// Passive mode: the scan shape from the announced frame count and this hint, when
    /// [`nav_shape`](Self::nav_shape) is not given.
    pub nav_hint: Option<crate::nav_hint::NavHint>,
    /// Active mode: ask for raw frames (`FILEFORMAT` 2, R64 on the wire; protocols.md §1.7),
    /// as the detector sends at the highest frame rates.
    pub raw_format: bool,
}

impl MerlinDetectorConfig {
    /// Defaults: connect 2 s, replies 5 s, frames 2 s apart at most, first frame 10 s.
    pub fn new(control: SocketAddr, data: SocketAddr) -> Self {
        Self {
            control,
            data,
            connect_timeout: Duration::from_secs(2),
            reply_timeout: Duration::from_secs(5),
            frame_timeout: Duration::from_secs(2),
            first_frame_timeout: Duration::from_secs(10),
            nav_shape: None,
            nav_hint: None,
            raw_format: false,
        }
    }
}

/// A connected Merlin.
pub struct MerlinDetector {
    cfg: MerlinDetectorConfig,
    name: String,
    receiver: Option<MerlinReceiver>,
    control: Option<MerlinControl>,
    /// Frame shape and dtype learned from the control port (active mode).
    configured: Option<(SigShape, DType)>,
    mode: ArmMode,
}

/// A control-port failure as the device error of the step `what`; the details (request,
/// status code and meaning, values) come from the driver's error, stated once.
fn control_err(device: &str, what: &str, e: ControlError) -> DeviceError {
    match e {
        ControlError::Timeout {
            request, waited_s, ..
        } => DeviceError::Timeout {
            device: device.to_string(),
            what: format!("the reply to `{request}` ({what})"),
            waited_s,
        },
        ControlError::Status {
            request,
            code,
            meaning,
            ..
        } => DeviceError::Rejected {
            device: device.to_string(),
            setting: request,
            requested: "status 0 (accepted)".into(),
            actual: format!("status {code} ({meaning})"),
        },
        ControlError::Mismatch {
            setting,
            requested,
            actual,
            ..
        } => DeviceError::Rejected {
            device: device.to_string(),
            setting,
            requested,
            actual: format!("`{actual}` read back"),
        },
        other => DeviceError::Protocol {
            device: device.to_string(),
            expected: format!("a valid reply during {what}"),
            observed: other.to_string(),
        },
    }
}

impl MerlinDetector {
    /// Opens the data connection (and checks the control port answers).
    ///
    /// # Errors
    /// [`DeviceError::Io`]/[`DeviceError::Protocol`] naming `merlin @ <addr>`.
    pub fn connect(cfg: MerlinDetectorConfig) -> Result<Self, DeviceError> {
        let name = format!("merlin @ {}", cfg.control);
        let mut d = Self {
            name,
            receiver: None,
            control: None,
            configured: None,
            mode: ArmMode::Active,
            cfg,
        };
        d.ensure_receiver()?;
        Ok(d)
    }

    fn receiver_config(&self) -> MerlinReceiverConfig {
        let mut rc = MerlinReceiverConfig::new(self.cfg.data);
        rc.connect_timeout = self.cfg.connect_timeout;
        rc.frame_timeout = self.cfg.frame_timeout;
        rc.first_frame_timeout = self.cfg.first_frame_timeout;
        // Acquisitions after the first wait for their HDR until stopped; arm() applies the
        // caller's deadline itself.
        rc.header_timeout = Duration::from_secs(24 * 3600);
        rc
    }

    fn ensure_receiver(&mut self) -> Result<(), DeviceError> {
        let dead = match &self.receiver {
            None => true,
            // Dead: its thread has ended and every event it sent has been read. (Never probe
            // the channel with a receive: that would swallow an HDR that just arrived.)
            Some(r) => !r.is_running() && r.events().is_empty(),
        };
        if dead {
            if let Some(old) = self.receiver.take() {
                old.stop();
            }
            let r = MerlinReceiver::start(self.receiver_config()).map_err(|e| {
                DeviceError::Protocol {
                    device: self.name.clone(),
                    expected: format!("a data connection to {}", self.cfg.data),
                    observed: e.to_string(),
                }
            })?;
            self.receiver = Some(r);
        }
        Ok(())
    }

    fn control(&mut self) -> Result<&mut MerlinControl, DeviceError> {
        if self.control.is_none() {
            let c = MerlinControl::connect(
                self.cfg.control,
                self.cfg.connect_timeout,
                self.cfg.reply_timeout,
            )
            .map_err(|e| control_err(&self.name, "connect control port", e))?;
            self.control = Some(c);
        }
        match self.control.as_mut() {
            Some(c) => Ok(c),
            None => Err(DeviceError::State {
                device: self.name.clone(),
                action: "send a control request".into(),
                state: "the control port is not connected".into(),
            }),
        }
    }

    /// Runs a control request; a failed connection is dropped so the next call reconnects.
    fn with_control<T>(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut MerlinControl) -> Result<T, ControlError>,
    ) -> Result<T, DeviceError> {
        let name = self.name.clone();
        let c = self.control()?;
        match f(c) {
            Ok(v) => Ok(v),
            Err(e) => {
                if !matches!(
                    e,
                    ControlError::Status { .. } | ControlError::Mismatch { .. }
                ) {
                    self.control = None;
                }
                Err(control_err(&name, what, e))
            }
        }
    }
}

fn dtype_for_depth(depth: u32) -> DType {
    match depth {
        1 | 6 => DType::U8,
        12 => DType::U16,
        _ => DType::U32,
    }
}

fn shape_from_header(h: &MerlinHeader) -> SigShape {
    match h.layout() {
        Some(Layout::Quad) => SigShape::new(512, 512),
        Some(Layout::QuadWithGap) => SigShape::new(514, 514),
        _ => SigShape::new(256, 256),
    }
}

fn end_of(summary: AcquisitionSummary, error: Option<String>) -> AcquisitionEnd {
    AcquisitionEnd {
        expected: summary.expected,
        received: summary.received,
        lost: summary.lost,
        damaged: summary.damaged,
        reason: format!("{:?}", summary.end),
        validity: summary.validity,
        error,
    }
}

impl Detector for MerlinDetector {
    fn name(&self) -> &str {
        &self.name
    }

    fn configure(&mut self, s: &DetectorSettings) -> Result<BTreeMap<String, String>, DeviceError> {
        let depth = s.counter_depth.unwrap_or(12);
        let trigger = match s.trigger {
            DetectorTrigger::Internal => MerlinTrigger::Internal,
            DetectorTrigger::Soft => MerlinTrigger::Soft,
            DetectorTrigger::ExternalRising => MerlinTrigger::RisingEdgeTtl,
        };
        let settings = MerlinSettings {
            frames: s.nav_shape.len() as u64,
            frames_per_trigger: s.frames_per_trigger.max(1),
            counter_depth: depth,
            exposure_s: s.exposure_s,
            frame_period_s: s.frame_time_s,
            trigger_start: trigger,
            trigger_stop: MerlinTrigger::Internal,
            continuous_rw: true,
            raw_format: self.cfg.raw_format,
            run_headless: true,
        };
        let mut readback = self.with_control("configure acquisition", |c| {
            c.configure_acquisition(&settings)
        })?;
        let x = self.with_control("GET IMAGEX", |c| c.get("IMAGEX"))?;
        let y = self.with_control("GET IMAGEY", |c| c.get("IMAGEY"))?;
        let parse = |v: &str, what: &str| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| DeviceError::Protocol {
                    device: self.name.clone(),
                    expected: format!("{what} as a pixel count"),
                    observed: format!("`{v}`"),
                })
        };
        let sig = SigShape::new(parse(&y, "IMAGEY")?, parse(&x, "IMAGEX")?);
        readback.insert("IMAGEX".into(), x);
        readback.insert("IMAGEY".into(), y);
        readback.insert("device".into(), self.name.clone());
        self.configured = Some((sig, dtype_for_depth(depth)));
        Ok(readback)
    }

    fn arm(&mut self, mode: ArmMode, deadline: Duration) -> Result<ArmedAcquisition, DeviceError> {
        self.mode = mode;
        self.ensure_receiver()?;
        // In active mode anything queued before our STARTACQUISITION belongs to an earlier
        // acquisition; in passive mode an HDR may already be waiting and is ours.
        if let (ArmMode::Active, Some(r)) = (mode, &self.receiver) {
            while let Ok(ev) = r.events().try_recv() {
                tracing::debug!("{}: discarding stale receiver event {ev:?}", self.name);
            }
        }
        if let Some(r) = &self.receiver {
            // Active: the frames must be as configured (a detector whose setting did not
            // take effect is a protocol error for the acquisition, not a pipeline fault).
            r.expect_format(match mode {
                ArmMode::Active => self.configured,
                ArmMode::Passive => None,
            });
        }
        if mode == ArmMode::Active {
            self.with_control("CMD STARTACQUISITION", |c| c.cmd("STARTACQUISITION"))?;
        }
        let Some(receiver) = self.receiver.as_ref() else {
            // `ensure_receiver` either connected one or returned its error above.
            return Err(DeviceError::State {
                device: self.name.clone(),
                action: "arm".into(),
                state: "the data port is not connected".into(),
            });
        };
        let events = receiver.events().clone();
        let until = Instant::now() + deadline;
        let (header, stacks) = loop {
            match events.recv_deadline(until) {
                Ok(ReceiverEvent::Armed { header, stacks, .. }) => break (header, stacks),
                Ok(ReceiverEvent::Error { error, .. }) => {
                    return Err(DeviceError::Protocol {
                        device: self.name.clone(),
                        expected: "an HDR on the data port (arm confirmation)".into(),
                        observed: error.to_string(),
                    });
                }
                Ok(_) => continue,
                // The receiver thread ended: the data port closed before any HDR came. Said
                // at once, not as a timeout of the whole arm deadline.
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return Err(DeviceError::Protocol {
                        device: self.name.clone(),
                        expected: format!(
                            "an HDR on data port {} (arm confirmation)",
                            self.cfg.data
                        ),
                        observed: "the data connection closed before any HDR arrived".into(),
                    });
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    return Err(DeviceError::Timeout {
                        device: self.name.clone(),
                        what: format!(
                            "the acquisition header (HDR) on data port {} confirming {}",
                            self.cfg.data,
                            match mode {
                                ArmMode::Active => "the arm (STARTACQUISITION sent)",
                                ArmMode::Passive => "an acquisition armed by someone else",
                            }
                        ),
                        waited_s: deadline.as_secs_f64(),
                    });
                }
            }
        };
        // The frame shape: as configured (active mode), else from the first frame's own
        // header — the HDR tells only the chip layout, and a Merlin reading a region of
        // its chips sends smaller frames (passive mode, LiberTEM-live-style hooks). The
        // events read meanwhile go on to the end-of-acquisition thread.
        let mut early = Vec::new();
        let (sig_shape, dtype) = match (mode, self.configured) {
            (ArmMode::Active, Some(c)) => c,
            _ => {
                let from_header = (
                    shape_from_header(&header),
                    dtype_for_depth(header.counter_depth().unwrap_or(12)),
                );
                loop {
                    match events.recv_deadline(until) {
                        Ok(ReceiverEvent::FirstFrame {
                            sig_shape: s,
                            dtype: d,
                            ..
                        }) => break (s, d),
                        Ok(ev @ (ReceiverEvent::Finished { .. } | ReceiverEvent::Error { .. })) => {
                            early.push(ev);
                            break from_header;
                        }
                        Ok(_) => continue,
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                            return Err(DeviceError::Timeout {
                                device: self.name.clone(),
                                what: format!(
                                    "the first frame on data port {} after the acquisition \
                                     header (its shape sets the pipeline's)",
                                    self.cfg.data
                                ),
                                waited_s: deadline.as_secs_f64(),
                            });
                        }
                        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                            break from_header;
                        }
                    }
                }
            }
        };
        let (end_tx, end_rx) = bounded(1);
        let name = self.name.clone();
        std::thread::Builder::new()
            .name("merlin-acq-end".into())
            .spawn(move || {
                let mut early = early.into_iter();
                let end = loop {
                    let next = match early.next() {
                        Some(ev) => Ok(ev),
                        None => events.recv(),
                    };
                    match next {
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
                        Ok(ReceiverEvent::Finished { summary, .. }) => break end_of(summary, None),
                        Ok(ReceiverEvent::Error { error, summary }) => {
                            let msg = error.to_string();
                            break match summary {
                                Some(s) => end_of(s, Some(msg)),
                                None => AcquisitionEnd {
                                    expected: 0,
                                    received: 0,
                                    lost: 0,
                                    damaged: 0,
                                    validity: stemflow_core::validity::FrameValidity::new(0),
                                    reason: "Failed".into(),
                                    error: Some(msg),
                                },
                            };
                        }
                        Ok(ReceiverEvent::Armed { .. }) => continue,
                        Err(_) => {
                            break AcquisitionEnd {
                                expected: 0,
                                received: 0,
                                lost: 0,
                                damaged: 0,
                                validity: stemflow_core::validity::FrameValidity::new(0),
                                reason: "Disconnected".into(),
                                error: Some(format!("{name}: receiver thread ended")),
                            };
                        }
                    }
                };
                let _ = end_tx.send(end);
            })
            .map_err(|e| DeviceError::Io {
                device: self.name.clone(),
                during: "starting the end-of-acquisition watcher".into(),
                source: e,
            })?;
        let nav_shape = match (self.cfg.nav_shape, self.cfg.nav_hint) {
            (Some(n), _) => Some(n),
            (None, Some(hint)) => {
                Some(hint.resolve(header.frames_in_acquisition()).map_err(|e| {
                    DeviceError::Protocol {
                        device: self.name.clone(),
                        expected: format!("an acquisition that fits the scan-shape hint {hint}"),
                        observed: e.to_string(),
                    }
                })?)
            }
            (None, None) => header.nav_shape(),
        };
        Ok(ArmedAcquisition {
            header: Some(header.raw().to_string()),
            expected_frames: header.frames_in_acquisition(),
            nav_shape,
            sig_shape,
            dtype,
            stacks,
            end: end_rx,
        })
    }

    fn soft_trigger(&mut self) -> Result<(), DeviceError> {
        self.with_control("CMD SOFTTRIGGER", |c| c.cmd("SOFTTRIGGER"))
    }

    fn abort(&mut self) -> Result<(), DeviceError> {
        let disarmed = self.disarm();
        // Ends the acquisition under way now (its end reported with what was received)
        // and the data connection. The receiver is let go at once — its thread ends within
        // a poll, joined apart from this actor — so the next arm connects afresh instead of
        // finding a connection that is closing.
        if let Some(r) = self.receiver.take() {
            r.stop();
            let _ = std::thread::Builder::new()
                .name("merlin-rx-retire".into())
                .spawn(move || r.join());
        }
        disarmed
    }

    fn disarm(&mut self) -> Result<(), DeviceError> {
        if self.mode == ArmMode::Passive {
            // Someone else owns the detector's acquisition; we only stop listening to it.
            return Ok(());
        }
        match self.with_control("CMD STOPACQUISITION", |c| c.cmd("STOPACQUISITION")) {
            // A detector that is already idle may refuse the stop; that is what we wanted.
            Ok(()) | Err(DeviceError::Rejected { .. }) => {
                // No frame follows the stop, and the stream has no end marker: the receiver
                // ends the acquisition once it is quiet, not at its inactivity deadline.
                if let Some(r) = &self.receiver {
                    r.end_acquisition();
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}
