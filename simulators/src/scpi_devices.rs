//! A STEM scan generator and a microscope column speaking the default command maps of
//! `stemflow_drivers::scpi::scan_engine` and `stemflow_drivers::scpi::microscope`, over TCP
//! and a pseudo-terminal (the serial-port case).
//!
//! The scan generator walks its grid (or a custom position list) at the dwell time (plus flyback at each line end) on a
//! thread of its own and fires the trigger line per pixel or per line; `SCAN:STATUS?`
//! reports `RUNNING|IDLE,<positions>`. The column holds high tension, magnification, camera
//! length, convergence angle, defocus, blanker and beam current. Both keep an SCPI error
//! queue (`SYST:ERR?`, standard codes -113, -104, -222, -224) and can inject faults: a
//! scan generator that stops answering mid-scan, a column setting that does not take.

use crate::SimError;
use crate::scpi_server::{POLL, ScpiServer};
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use stemflow_core::devices::TriggerSender;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An SCPI error queue (SCPI-99 §21.8: oldest first, at most 20, overflow marked -350).
#[derive(Default)]
struct ErrorQueue(Mutex<VecDeque<(i32, &'static str)>>);

impl ErrorQueue {
    fn push(&self, code: i32, text: &'static str) {
        let mut q = lock(&self.0);
        if q.len() >= 20 {
            q.pop_back();
            q.push_back((-350, "Queue overflow"));
        } else {
            q.push_back((code, text));
        }
    }
    fn pop(&self) -> String {
        match lock(&self.0).pop_front() {
            Some((c, t)) => format!("{c:+},\"{t}\""),
            None => "+0,\"No error\"".into(),
        }
    }
    fn clear(&self) {
        lock(&self.0).clear();
    }
}

/// Splits a line into `(HEADER, argument, is_query)` units.
fn units(line: &str) -> Vec<(String, String, bool)> {
    line.split(';')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            let (h, a) = u.split_once(char::is_whitespace).unwrap_or((u, ""));
            let h = h.trim_start_matches(':').to_uppercase();
            let q = h.ends_with('?');
            (h.trim_end_matches('?').to_string(), a.trim().to_string(), q)
        })
        .collect()
}

fn number(arg: &str) -> Option<f64> {
    arg.parse::<f64>().ok().filter(|v| v.is_finite())
}

// ---------------------------------------------------------------------------------------
// Scan generator

/// Scan generator faults.
#[derive(Clone, Debug, Default)]
pub struct ScanGeneratorFaults {
    /// Stop answering (and stop scanning) once this many positions are done: the scan
    /// generator that hangs mid-scan.
    pub hang_after_positions: Option<u64>,
}

/// Scan generator simulator settings.
#[derive(Clone, Debug)]
pub struct ScanGeneratorSimConfig {
    /// Address to bind (loopback by default); port 0 = ephemeral.
    pub host: IpAddr,
    /// TCP port.
    pub port: u16,
    /// Also serve a pseudo-terminal.
    pub pty: bool,
    /// The trigger output (cable to the detector's trigger input).
    pub output: Option<TriggerSender>,
    /// Injected faults.
    pub faults: ScanGeneratorFaults,
}

impl Default for ScanGeneratorSimConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            pty: false,
            output: None,
            faults: ScanGeneratorFaults::default(),
        }
    }
}

#[derive(Clone, Debug)]
struct ScanState {
    rows: u64,
    cols: u64,
    dwell_s: f64,
    flyback_s: f64,
    pattern: String,
    region: (u64, u64),
    trigger: String,
    /// A custom path (row, col), replacing the grid walk when not empty.
    positions: Vec<(u64, u64)>,
}

struct ScanShared {
    state: Mutex<ScanState>,
    errors: ErrorQueue,
    output: Mutex<Option<TriggerSender>>,
    running: AtomicBool,
    hung: AtomicBool,
    positions: AtomicU64,
    pulses: AtomicU64,
    epoch: AtomicU64,
    stop: AtomicBool,
    faults: ScanGeneratorFaults,
}

/// A running scan generator simulator; dropping it stops it.
pub struct ScanGeneratorSim {
    shared: Arc<ScanShared>,
    server: ScpiServer,
}

impl std::fmt::Debug for ScanGeneratorSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanGeneratorSim")
            .field("addr", &self.server.addr)
            .finish_non_exhaustive()
    }
}

impl ScanGeneratorSim {
    /// Starts serving.
    ///
    /// # Errors
    /// [`SimError::Io`] when the port or pseudo-terminal cannot be opened.
    pub fn start(cfg: ScanGeneratorSimConfig) -> Result<Self, SimError> {
        let shared = Arc::new(ScanShared {
            state: Mutex::new(ScanState {
                rows: 1,
                cols: 1,
                dwell_s: 1e-6,
                flyback_s: 0.0,
                pattern: "RASTER".into(),
                region: (0, 0),
                trigger: "PIXEL".into(),
                positions: Vec::new(),
            }),
            errors: ErrorQueue::default(),
            output: Mutex::new(cfg.output),
            running: AtomicBool::new(false),
            hung: AtomicBool::new(false),
            positions: AtomicU64::new(0),
            pulses: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            faults: cfg.faults,
        });
        let s = shared.clone();
        let server = ScpiServer::start(
            "scan-generator-sim",
            cfg.host,
            cfg.port,
            cfg.pty,
            Arc::new(move |line: &str| scan_line(line, &s)),
        )?;
        Ok(Self { shared, server })
    }

    /// The bound TCP address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// The pseudo-terminal path, when started with `pty: true`.
    pub fn pty_path(&self) -> Option<&str> {
        self.server.pty_path.as_deref()
    }

    /// Positions scanned in the current or last scan.
    pub fn positions(&self) -> u64 {
        self.shared.positions.load(Ordering::SeqCst)
    }

    /// Pulses fired on the trigger line so far.
    pub fn pulses(&self) -> u64 {
        self.shared.pulses.load(Ordering::SeqCst)
    }

    /// Stops serving and scanning.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        self.server.shutdown();
    }
}

impl Drop for ScanGeneratorSim {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn scan_line(line: &str, sh: &Arc<ScanShared>) -> Vec<String> {
    if sh.hung.load(Ordering::SeqCst) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (h, arg, query) in units(line) {
        let mut st = lock(&sh.state);
        let reply = match (h.as_str(), query) {
            ("*IDN", true) => Some("stemflow,Simulated Scan Generator,SIM0002,1.0".to_string()),
            ("*OPC", true) => Some("1".into()),
            ("*CLS", false) => {
                sh.errors.clear();
                None
            }
            ("SYST:ERR", true) => Some(sh.errors.pop()),
            ("SCAN:SHAPE", true) => Some(format!("{},{}", st.rows, st.cols)),
            ("SCAN:SHAPE", false) => {
                let v: Vec<Option<f64>> = arg.split(',').map(|x| number(x.trim())).collect();
                match v[..] {
                    [Some(r), Some(c)]
                        if r >= 1.0 && c >= 1.0 && r.fract() == 0.0 && c.fract() == 0.0 =>
                    {
                        (st.rows, st.cols) = (r as u64, c as u64);
                    }
                    [Some(_), Some(_)] => sh.errors.push(-222, "Data out of range"),
                    _ => sh.errors.push(-104, "Data type error"),
                }
                None
            }
            ("SCAN:DWELL", true) => Some(format!("{:.9}", st.dwell_s)),
            ("SCAN:FLYBACK", true) => Some(format!("{:.9}", st.flyback_s)),
            ("SCAN:DWELL", false) | ("SCAN:FLYBACK", false) => {
                match number(&arg) {
                    None => sh.errors.push(-104, "Data type error"),
                    Some(v) if !(0.0..=10.0).contains(&v) => {
                        sh.errors.push(-222, "Data out of range")
                    }
                    Some(v) if h.ends_with("DWELL") && v > 0.0 => st.dwell_s = v,
                    Some(v) if h.ends_with("FLYBACK") => st.flyback_s = v,
                    Some(_) => sh.errors.push(-222, "Data out of range"),
                }
                None
            }
            ("SCAN:PATTERN", true) => Some(st.pattern.clone()),
            ("SCAN:PATTERN", false) => {
                match arg.to_uppercase().as_str() {
                    p @ ("RASTER" | "SERPENTINE") => st.pattern = p.into(),
                    _ => sh.errors.push(-224, "Illegal parameter value"),
                }
                None
            }
            ("SCAN:REGION", true) => Some(format!("{},{}", st.region.0, st.region.1)),
            ("SCAN:REGION", false) => {
                let v: Vec<Option<f64>> = arg.split(',').map(|x| number(x.trim())).collect();
                match v[..] {
                    [Some(r), Some(c)] if r >= 0.0 && c >= 0.0 => st.region = (r as u64, c as u64),
                    _ => sh.errors.push(-104, "Data type error"),
                }
                None
            }
            ("SCAN:POSITIONS:CLEAR", false) => {
                st.positions.clear();
                None
            }
            ("SCAN:POSITIONS:ADD", false) => {
                let v: Vec<Option<f64>> = arg.split(',').map(|x| number(x.trim())).collect();
                match v[..] {
                    [Some(r), Some(c)] if r >= 0.0 && c >= 0.0 && st.positions.len() < 1 << 24 => {
                        st.positions.push((r as u64, c as u64))
                    }
                    _ => sh.errors.push(-104, "Data type error"),
                }
                None
            }
            ("SCAN:POSITIONS:COUNT", true) => Some(st.positions.len().to_string()),
            ("SCAN:TRIGGER", true) => Some(st.trigger.clone()),
            ("SCAN:TRIGGER", false) => {
                match arg.to_uppercase().as_str() {
                    t @ ("PIXEL" | "LINE") => st.trigger = t.into(),
                    _ => sh.errors.push(-224, "Illegal parameter value"),
                }
                None
            }
            ("SCAN:START", false) => {
                let cfg = st.clone();
                drop(st);
                start_scan(sh, cfg);
                None
            }
            ("SCAN:STOP", false) | ("SCAN:ABORT", false) => {
                sh.epoch.fetch_add(1, Ordering::SeqCst);
                sh.running.store(false, Ordering::SeqCst);
                None
            }
            ("SCAN:STATUS", true) => Some(format!(
                "{},{}",
                if sh.running.load(Ordering::SeqCst) {
                    "RUNNING"
                } else {
                    "IDLE"
                },
                sh.positions.load(Ordering::SeqCst)
            )),
            _ => {
                sh.errors.push(-113, "Undefined header");
                None
            }
        };
        out.extend(reply);
    }
    out
}

fn start_scan(sh: &Arc<ScanShared>, cfg: ScanState) {
    let epoch = sh.epoch.fetch_add(1, Ordering::SeqCst) + 1;
    sh.positions.store(0, Ordering::SeqCst);
    sh.running.store(true, Ordering::SeqCst);
    let s = sh.clone();
    let spawned = std::thread::Builder::new()
        .name("scan-generator".into())
        .spawn(move || {
            let t0 = Instant::now();
            if !cfg.positions.is_empty() {
                // A custom path: one position per dwell, a pulse at each.
                for i in 0..cfg.positions.len() {
                    let due = t0 + Duration::from_secs_f64(i as f64 * cfg.dwell_s);
                    loop {
                        if s.epoch.load(Ordering::SeqCst) != epoch || s.stop.load(Ordering::SeqCst)
                        {
                            return;
                        }
                        let now = Instant::now();
                        if now >= due {
                            break;
                        }
                        std::thread::sleep((due - now).min(POLL));
                    }
                    if let Some(out) = lock(&s.output).as_mut() {
                        out.fire();
                    }
                    s.pulses.fetch_add(1, Ordering::SeqCst);
                    s.positions.fetch_add(1, Ordering::SeqCst);
                }
                if s.epoch.load(Ordering::SeqCst) == epoch {
                    s.running.store(false, Ordering::SeqCst);
                }
                return;
            }
            let line_s = cfg.cols as f64 * cfg.dwell_s + cfg.flyback_s;
            'scan: for r in 0..cfg.rows {
                for c in 0..cfg.cols {
                    let due =
                        t0 + Duration::from_secs_f64(r as f64 * line_s + c as f64 * cfg.dwell_s);
                    loop {
                        if s.epoch.load(Ordering::SeqCst) != epoch || s.stop.load(Ordering::SeqCst)
                        {
                            break 'scan;
                        }
                        let now = Instant::now();
                        if now >= due {
                            break;
                        }
                        std::thread::sleep((due - now).min(POLL));
                    }
                    let fire = cfg.trigger == "PIXEL" || c == 0;
                    if fire {
                        if let Some(out) = lock(&s.output).as_mut() {
                            out.fire();
                        }
                        s.pulses.fetch_add(1, Ordering::SeqCst);
                    }
                    let done = s.positions.fetch_add(1, Ordering::SeqCst) + 1;
                    if s.faults.hang_after_positions.is_some_and(|n| done >= n) {
                        s.hung.store(true, Ordering::SeqCst);
                        return; // stays "running" forever, answers nothing
                    }
                }
            }
            if s.epoch.load(Ordering::SeqCst) == epoch {
                s.running.store(false, Ordering::SeqCst);
            }
        });
    if spawned.is_err() {
        sh.running.store(false, Ordering::SeqCst);
        sh.errors.push(-300, "Device-specific error");
    }
}

// ---------------------------------------------------------------------------------------
// Microscope column

/// Column faults.
#[derive(Clone, Debug, Default)]
pub struct ColumnFaults {
    /// A setting (`HT`, `MAG`, `CL`, `CONV`, `DEF`, `BLANK`) that is accepted without error
    /// but does not take.
    pub setting_does_not_take: Option<String>,
}

/// Column simulator settings.
#[derive(Clone, Debug)]
pub struct ColumnSimConfig {
    /// Address to bind (loopback by default); port 0 = ephemeral.
    pub host: IpAddr,
    /// TCP port.
    pub port: u16,
    /// Also serve a pseudo-terminal.
    pub pty: bool,
    /// Beam current, A.
    pub beam_current_a: f64,
    /// Injected faults.
    pub faults: ColumnFaults,
}

impl Default for ColumnSimConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            pty: false,
            beam_current_a: 50e-12,
            faults: ColumnFaults::default(),
        }
    }
}

struct ColumnShared {
    /// HT (V), MAG, CL (m), CONV (rad), DEF (m), BLANK (0/1), CURR (A).
    values: Mutex<Vec<(&'static str, f64, f64, f64)>>,
    errors: ErrorQueue,
    faults: ColumnFaults,
}

/// A running column simulator; dropping it stops it.
pub struct ColumnSim {
    shared: Arc<ColumnShared>,
    server: ScpiServer,
}

impl std::fmt::Debug for ColumnSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColumnSim")
            .field("addr", &self.server.addr)
            .finish_non_exhaustive()
    }
}

impl ColumnSim {
    /// Starts serving: 200 kV, ×1 000 000, 0.1 m camera length, 10 mrad, focus, beam on.
    ///
    /// # Errors
    /// [`SimError::Io`] when the port or pseudo-terminal cannot be opened.
    pub fn start(cfg: ColumnSimConfig) -> Result<Self, SimError> {
        // (name, value, min, max)
        let values = vec![
            ("HT", 200e3, 1e3, 400e3),
            ("MAG", 1e6, 10.0, 1e9),
            ("CL", 0.1, 0.001, 10.0),
            ("CONV", 10e-3, 0.0, 0.1),
            ("DEF", 0.0, -1e-3, 1e-3),
            ("BLANK", 0.0, 0.0, 1.0),
            ("CURR", cfg.beam_current_a, 0.0, 1.0),
        ];
        let shared = Arc::new(ColumnShared {
            values: Mutex::new(values),
            errors: ErrorQueue::default(),
            faults: cfg.faults,
        });
        let s = shared.clone();
        let server = ScpiServer::start(
            "column-sim",
            cfg.host,
            cfg.port,
            cfg.pty,
            Arc::new(move |line: &str| column_line(line, &s)),
        )?;
        Ok(Self { shared, server })
    }

    /// The bound TCP address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// The pseudo-terminal path, when started with `pty: true`.
    pub fn pty_path(&self) -> Option<&str> {
        self.server.pty_path.as_deref()
    }

    /// Sets the beam current, A (e.g. to exercise a suspender).
    pub fn set_beam_current(&self, amps: f64) {
        for v in lock(&self.shared.values).iter_mut() {
            if v.0 == "CURR" {
                v.1 = amps;
            }
        }
    }
}

fn column_line(line: &str, sh: &Arc<ColumnShared>) -> Vec<String> {
    let mut out = Vec::new();
    for (h, arg, query) in units(line) {
        match (h.as_str(), query) {
            ("*IDN", true) => out.push("stemflow,Simulated STEM Column,SIM0003,1.0".into()),
            ("*OPC", true) => out.push("1".into()),
            ("*CLS", false) => sh.errors.clear(),
            ("SYST:ERR", true) => out.push(sh.errors.pop()),
            _ => {
                let Some(name) = h.strip_prefix("COL:") else {
                    sh.errors.push(-113, "Undefined header");
                    continue;
                };
                let mut values = lock(&sh.values);
                if name == "FOV" {
                    // The full scan field of view, m, read-only: as the in-process column
                    // (crate::microscope::DISPLAY_WIDTH_M over the magnification).
                    match (query, values.iter().find(|v| v.0 == "MAG")) {
                        (true, Some(mag)) if mag.1 > 0.0 => {
                            out.push(format!("{:e}", crate::microscope::DISPLAY_WIDTH_M / mag.1))
                        }
                        _ => sh.errors.push(-113, "Undefined header"),
                    }
                    continue;
                }
                let Some(slot) = values.iter_mut().find(|v| v.0 == name) else {
                    sh.errors.push(-113, "Undefined header");
                    continue;
                };
                if query {
                    out.push(format!("{:e}", slot.1));
                    continue;
                }
                if name == "CURR" {
                    sh.errors.push(-113, "Undefined header"); // read-only
                    continue;
                }
                match number(&arg) {
                    None => sh.errors.push(-104, "Data type error"),
                    Some(v) if !(slot.2..=slot.3).contains(&v) => {
                        sh.errors.push(-222, "Data out of range")
                    }
                    Some(_) if sh.faults.setting_does_not_take.as_deref() == Some(name) => {}
                    Some(v) => slot.1 = v,
                }
            }
        }
    }
    out
}
