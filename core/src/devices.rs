//! Device traits for the instrument around the detector, implemented by real drivers and by
//! simulators alike, and the modelled trigger line that connects a scan engine's trigger
//! output to a detector's trigger input.

use crate::NavShape;
use crate::metadata::MicroscopeState;
use crossbeam_channel::{Receiver, Sender, unbounded};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Errors any device (detector, scan engine, microscope, trigger source) reports.
/// Every variant names the device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A reply or event did not arrive within its deadline.
    #[error("{device}: timed out after {waited_s:.3} s waiting for {what}")]
    Timeout {
        /// Device name.
        device: String,
        /// What we were waiting for.
        what: String,
        /// How long we waited, in seconds.
        waited_s: f64,
    },
    /// The device answered, but not as the protocol says it must.
    #[error("{device}: protocol error: expected {expected}, observed {observed}")]
    Protocol {
        /// Device name.
        device: String,
        /// What the protocol requires.
        expected: String,
        /// What arrived.
        observed: String,
    },
    /// The device refused a setting or command (non-zero status, out of range, …).
    #[error("{device}: `{setting}` rejected: requested {requested}, device reports {actual}")]
    Rejected {
        /// Device name.
        device: String,
        /// The setting or command.
        setting: String,
        /// What we asked for.
        requested: String,
        /// What the device reported (status code or read-back value).
        actual: String,
    },
    /// The request is not valid in the device's current state.
    #[error("{device}: cannot {action} while {state}")]
    State {
        /// Device name.
        device: String,
        /// What was attempted.
        action: String,
        /// The device's state.
        state: String,
    },
    /// Transport failure (connection refused, reset, …).
    #[error("{device}: I/O error during {during}: {source}")]
    Io {
        /// Device name.
        device: String,
        /// The operation under way.
        during: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Which trigger a scan engine emits on its trigger output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TriggerOutput {
    /// One rising edge per scan position (pixel clock).
    Pixel,
    /// One rising edge at the start of each scan line.
    Line,
}

impl std::fmt::Display for TriggerOutput {
    /// `pixel` or `line`, as a person reads it in a plan or a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pixel => "pixel",
            Self::Line => "line",
        })
    }
}

/// A scan: grid, timing and trigger output. Times in seconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScanSettings {
    /// Scan grid, rows × cols.
    pub nav_shape: NavShape,
    /// Dwell time per scan position, s.
    pub dwell_time_s: f64,
    /// Flyback time at the end of each line, s.
    pub flyback_s: f64,
    /// What the trigger output emits.
    pub trigger: TriggerOutput,
    /// Top-left corner (row, column) of a sub-region of the full field, in scan positions
    /// (a sub-region rescan); `None` scans from the field's origin.
    #[serde(default)]
    pub region_origin: Option<(usize, usize)>,
}

impl ScanSettings {
    /// Total scan duration in seconds: positions × dwell + rows × flyback.
    pub fn duration_s(&self) -> f64 {
        self.nav_shape.len() as f64 * self.dwell_time_s
            + self.nav_shape.rows as f64 * self.flyback_s
    }
}

/// What a scan engine reports about its scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanStatus {
    /// True while the probe is scanning.
    pub running: bool,
    /// Scan positions visited (trigger edges emitted in pixel mode).
    pub positions_done: u64,
}

/// A STEM scan generator: moves the probe and emits a trigger per pixel or line.
///
/// Lifecycle: the orchestrator calls [`configure`](ScanEngine::configure) during
/// Configuring, [`start`](ScanEngine::start) once the detector has confirmed it is armed,
/// [`status`](ScanEngine::status) while Running, and [`stop`](ScanEngine::stop) on every
/// exit path (idempotent).
pub trait ScanEngine: Send {
    /// Device name used in errors and metadata.
    fn name(&self) -> &str;
    /// Applies `settings` and returns the settings read back from the device.
    ///
    /// # Errors
    /// [`DeviceError`] naming the scan engine.
    fn configure(&mut self, settings: &ScanSettings) -> Result<ScanSettings, DeviceError>;
    /// Starts the configured scan (the trigger output starts firing).
    ///
    /// # Errors
    /// [`DeviceError`] naming the scan engine.
    fn start(&mut self) -> Result<(), DeviceError>;
    /// Stops the scan now; a no-op when not running.
    ///
    /// # Errors
    /// [`DeviceError`] naming the scan engine.
    fn stop(&mut self) -> Result<(), DeviceError>;
    /// Current status.
    ///
    /// # Errors
    /// [`DeviceError`] naming the scan engine.
    fn status(&mut self) -> Result<ScanStatus, DeviceError>;
}

/// Optical settings requested from a microscope; `None` leaves a setting unchanged.
/// Units: V, m, rad.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MicroscopeSettings {
    /// High tension (accelerating voltage), V.
    pub high_tension_v: Option<f64>,
    /// Camera length, m.
    pub camera_length_m: Option<f64>,
    /// Convergence semi-angle, rad.
    pub convergence_angle_rad: Option<f64>,
    /// STEM magnification (dimensionless).
    pub magnification: Option<f64>,
    /// Defocus, m (negative = underfocus).
    pub defocus_m: Option<f64>,
    /// Beam blanked.
    pub beam_blanked: Option<bool>,
}

/// The electron microscope's column.
///
/// Lifecycle: [`apply`](Microscope::apply) during Configuring (settings read back),
/// [`read_state`](Microscope::read_state) for the metadata snapshot stored with the data.
pub trait Microscope: Send {
    /// Device name used in errors and metadata.
    fn name(&self) -> &str;
    /// Reads every setting back from the microscope.
    ///
    /// # Errors
    /// [`DeviceError`] naming the microscope.
    fn read_state(&mut self) -> Result<MicroscopeState, DeviceError>;
    /// Applies the given settings and returns the state read back afterwards.
    ///
    /// # Errors
    /// [`DeviceError::Rejected`] when a setting did not take.
    fn apply(&mut self, settings: &MicroscopeSettings) -> Result<MicroscopeState, DeviceError>;
}

/// One rising edge on a trigger line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TriggerPulse {
    /// Edges fired on this line before this one (0-based).
    pub index: u64,
}

/// Creates a modelled trigger line (a cable from a scan engine's trigger output to a
/// detector's trigger input). Edges are never lost: a detector that is not listening yet
/// sees them queued, as a latched input would.
pub fn trigger_line() -> (TriggerSender, TriggerReceiver) {
    let (tx, rx) = unbounded();
    (TriggerSender { tx, fired: 0 }, TriggerReceiver { rx })
}

/// The driving end of a trigger line (scan engine output).
#[derive(Debug, Clone)]
pub struct TriggerSender {
    tx: Sender<TriggerPulse>,
    fired: u64,
}

impl TriggerSender {
    /// Fires one rising edge. Returns `false` when nothing is connected any more.
    pub fn fire(&mut self) -> bool {
        let ok = self.tx.send(TriggerPulse { index: self.fired }).is_ok();
        self.fired += 1;
        ok
    }
    /// Edges fired so far.
    pub fn fired(&self) -> u64 {
        self.fired
    }
}

/// The receiving end of a trigger line (detector input).
#[derive(Debug, Clone)]
pub struct TriggerReceiver {
    rx: Receiver<TriggerPulse>,
}

impl TriggerReceiver {
    /// Waits for the next edge until `deadline`; `None` when none came (or the line was
    /// unplugged).
    pub fn wait_until(&self, deadline: Instant) -> Option<TriggerPulse> {
        self.rx.recv_deadline(deadline).ok()
    }
    /// Waits for the next edge for at most `timeout`.
    pub fn wait(&self, timeout: Duration) -> Option<TriggerPulse> {
        self.rx.recv_timeout(timeout).ok()
    }
    /// Discards queued edges (e.g. when a new acquisition is armed); returns how many.
    pub fn clear(&self) -> usize {
        self.rx.try_iter().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_line_delivers_edges_in_order() {
        let (mut tx, rx) = trigger_line();
        assert!(rx.wait(Duration::from_millis(1)).is_none());
        tx.fire();
        tx.fire();
        assert_eq!(rx.wait(Duration::from_millis(10)).unwrap().index, 0);
        assert_eq!(rx.wait(Duration::from_millis(10)).unwrap().index, 1);
        tx.fire();
        assert_eq!(rx.clear(), 1);
        assert_eq!(tx.fired(), 3);
    }

    #[test]
    fn scan_duration_counts_flyback() {
        let s = ScanSettings {
            nav_shape: NavShape::new(2, 4),
            dwell_time_s: 1e-3,
            flyback_s: 0.5e-3,
            trigger: TriggerOutput::Pixel,
            region_origin: None,
        };
        assert!((s.duration_s() - 9e-3).abs() < 1e-12);
    }
}
