//! A burst waveform generator used as a scan's pixel clock, speaking SCPI over TCP or a
//! pseudo-terminal (the serial port case), and firing the modelled trigger line
//! ([`stemflow_core::devices::trigger_line`]) one pulse per period when its burst runs.
//!
//! It implements the command subset documented in
//! `stemflow_drivers::scpi::pixel_clock` (Keysight 33500B-style `SOURce:FUNCtion:PULSe`,
//! `SOURce:BURSt`, `TRIGger`, `OUTPut`, `SYSTem:ERRor?` and the IEEE 488.2 common commands
//! `*IDN?`, `*RST`, `*CLS`, `*OPC?`, `*TRG`), in short or long form, several per line
//! separated by `;`, with the SCPI-99 standard error codes in its error queue (-113
//! undefined header, -104 data type error, -222 data out of range, -221 settings conflict,
//! -211 trigger ignored, -114 header suffix out of range).
//!
//! Faults: a period setting that does not take (the read-back keeps the old value), and an
//! instrument that stops answering after a number of queries.

use crate::SimError;
use crate::scpi_server::{POLL, ScpiServer};
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use stemflow_core::devices::TriggerSender;

/// The simulator's name in errors.
const DEVICE: &str = "pixel-clock-sim";

/// Injected faults.
#[derive(Clone, Debug, Default)]
pub struct PixelClockFaults {
    /// `FUNC:PULS:PER` is accepted without error but does not take.
    pub period_does_not_take: bool,
    /// Stop answering queries after this many (the instrument hangs).
    pub silent_after_queries: Option<u64>,
}

/// Simulator settings.
#[derive(Clone, Debug)]
pub struct PixelClockSimConfig {
    /// Address to bind for TCP (loopback by default).
    pub host: IpAddr,
    /// TCP port (0 = ephemeral).
    pub port: u16,
    /// Also serve a pseudo-terminal (the serial-port case); its path is
    /// [`PixelClockSim::pty_path`].
    pub pty: bool,
    /// The trigger line the output drives (the cable to the detector's trigger input).
    pub output: Option<TriggerSender>,
    /// The `*IDN?` response.
    pub identity: String,
    /// Injected faults.
    pub faults: PixelClockFaults,
}

impl Default for PixelClockSimConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            pty: false,
            output: None,
            identity: "stemflow,Simulated Pulse Generator,SIM0001,1.0".into(),
            faults: PixelClockFaults::default(),
        }
    }
}

/// Counters of a running simulator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PixelClockStats {
    /// Program messages (commands and queries) handled.
    pub messages: u64,
    /// Errors pushed to the error queue.
    pub errors: u64,
    /// Bursts started.
    pub bursts: u64,
    /// Pulses fired on the trigger line.
    pub pulses: u64,
}

/// The generator's settings (channel 1).
#[derive(Clone, Debug)]
struct Settings {
    func: String,
    period_s: f64,
    width_s: f64,
    low_v: f64,
    high_v: f64,
    burst_mode: String,
    burst_count: u64,
    burst_on: bool,
    trigger_source: String,
    output_on: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            func: "SIN".into(),
            period_s: 1e-3,
            width_s: 1e-4,
            low_v: -0.05,
            high_v: 0.05,
            burst_mode: "TRIG".into(),
            burst_count: 1,
            burst_on: false,
            trigger_source: "IMM".into(),
            output_on: false,
        }
    }
}

struct Shared {
    settings: Mutex<Settings>,
    errors: Mutex<VecDeque<(i32, &'static str)>>,
    output: Mutex<Option<TriggerSender>>,
    /// Bumped to cancel a running burst (output off, *RST, new burst).
    burst_epoch: AtomicU64,
    stop: AtomicBool,
    messages: AtomicU64,
    queries: AtomicU64,
    error_count: AtomicU64,
    bursts: AtomicU64,
    pulses: AtomicU64,
    identity: String,
    faults: PixelClockFaults,
}

impl Shared {
    fn new(identity: String, faults: PixelClockFaults, output: Option<TriggerSender>) -> Self {
        Self {
            settings: Mutex::new(Settings::default()),
            errors: Mutex::new(VecDeque::new()),
            output: Mutex::new(output),
            burst_epoch: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            messages: AtomicU64::new(0),
            queries: AtomicU64::new(0),
            error_count: AtomicU64::new(0),
            bursts: AtomicU64::new(0),
            pulses: AtomicU64::new(0),
            identity,
            faults,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running simulator; dropping it stops it.
pub struct PixelClockSim {
    shared: Arc<Shared>,
    server: ScpiServer,
}

impl std::fmt::Debug for PixelClockSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PixelClockSim")
            .field("addr", &self.server.addr)
            .field("pty_path", &self.server.pty_path)
            .finish_non_exhaustive()
    }
}

impl PixelClockSim {
    /// Binds the TCP port (and opens the pseudo-terminal if asked) and starts serving.
    ///
    /// # Errors
    /// [`SimError::Bind`] when the port cannot be bound; [`SimError::Io`] when the
    /// pseudo-terminal cannot be opened.
    pub fn start(cfg: PixelClockSimConfig) -> Result<Self, SimError> {
        let shared = Arc::new(Shared::new(cfg.identity, cfg.faults, cfg.output));
        let s = shared.clone();
        let server = ScpiServer::start(
            DEVICE,
            cfg.host,
            cfg.port,
            cfg.pty,
            Arc::new(move |line: &str| handle_line(line, &s)),
        )?;
        Ok(Self { shared, server })
    }

    /// The bound TCP address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// The pseudo-terminal's device path (when started with `pty: true`).
    pub fn pty_path(&self) -> Option<&str> {
        self.server.pty_path.as_deref()
    }

    /// An edge on the generator's trigger input (starts the burst when the trigger source
    /// is `EXT`).
    pub fn external_trigger(&self) {
        let source = lock(&self.shared.settings).trigger_source.clone();
        if source == "EXT" {
            start_burst(&self.shared);
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> PixelClockStats {
        let s = &self.shared;
        PixelClockStats {
            messages: s.messages.load(Ordering::Relaxed),
            errors: s.error_count.load(Ordering::Relaxed),
            bursts: s.bursts.load(Ordering::Relaxed),
            pulses: s.pulses.load(Ordering::Relaxed),
        }
    }

    /// Stops serving and firing; joins the threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.burst_epoch.fetch_add(1, Ordering::SeqCst);
        self.server.shutdown();
    }
}

impl Drop for PixelClockSim {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Long mnemonic → short form (SCPI-99 vol. 1 §6.2.1: the short form is the upper-case part).
fn short(node: &str) -> &str {
    match node {
        "SOURCE" => "SOUR",
        "FUNCTION" => "FUNC",
        "PULSE" => "PULS",
        "PERIOD" => "PER",
        "WIDTH" => "WIDT",
        "VOLTAGE" => "VOLT",
        "BURST" => "BURS",
        "NCYCLES" => "NCYC",
        "STATE" => "STAT",
        "TRIGGER" => "TRIG",
        "OUTPUT" => "OUTP",
        "SYSTEM" => "SYST",
        "ERROR" => "ERR",
        "MODE" => "MODE",
        "HIGH" => "HIGH",
        "LOW" => "LOW",
        other => other,
    }
}

fn push_error(shared: &Shared, code: i32, text: &'static str) {
    shared.error_count.fetch_add(1, Ordering::Relaxed);
    let mut q = lock(&shared.errors);
    // SCPI-99: a full queue replaces its last entry with -350 "Queue overflow".
    if q.len() >= 20 {
        q.pop_back();
        q.push_back((-350, "Queue overflow"));
    } else {
        q.push_back((code, text));
    }
}

/// Handles one program message line (several `;`-separated units); returns the responses.
fn handle_line(line: &str, shared: &Arc<Shared>) -> Vec<String> {
    let mut out = Vec::new();
    for unit in line.split(';').map(str::trim).filter(|u| !u.is_empty()) {
        shared.messages.fetch_add(1, Ordering::Relaxed);
        let (header, arg) = match unit.split_once(char::is_whitespace) {
            Some((h, a)) => (h.to_uppercase(), a.trim().to_string()),
            None => (unit.to_uppercase(), String::new()),
        };
        let query = header.ends_with('?');
        if query {
            let n = shared.queries.fetch_add(1, Ordering::Relaxed) + 1;
            if shared.faults.silent_after_queries.is_some_and(|m| n > m) {
                continue;
            }
        }
        if let Some(reply) = handle_unit(header.trim_end_matches('?'), query, &arg, shared) {
            out.push(reply);
        }
    }
    out
}

fn handle_unit(header: &str, query: bool, arg: &str, shared: &Arc<Shared>) -> Option<String> {
    if header.starts_with('*') {
        return common(header, query, shared);
    }
    // Nodes in short form, channel suffixes checked (channel 1 only), SOUR prefix optional.
    let mut nodes = Vec::new();
    for raw in header.trim_start_matches(':').split(':') {
        let name = raw.trim_end_matches(|c: char| c.is_ascii_digit());
        let suffix = &raw[name.len()..];
        if !suffix.is_empty() && suffix != "1" {
            push_error(shared, -114, "Header suffix out of range");
            return None;
        }
        nodes.push(short(name));
    }
    if nodes.first() == Some(&"SOUR") {
        nodes.remove(0);
    }
    let path = nodes.join(":");
    let mut s = lock(&shared.settings);
    let num = |arg: &str| -> Option<f64> { arg.parse::<f64>().ok().filter(|v| v.is_finite()) };
    let on_off = |arg: &str| match arg.to_uppercase().as_str() {
        "ON" | "1" => Some(true),
        "OFF" | "0" => Some(false),
        _ => None,
    };
    let fmt = |v: f64| format!("{v:+.15E}");
    match (path.as_str(), query) {
        ("SYST:ERR", true) => {
            drop(s);
            let e = lock(&shared.errors).pop_front();
            Some(match e {
                Some((code, text)) => format!("{code:+},\"{text}\""),
                None => "+0,\"No error\"".into(),
            })
        }
        ("FUNC", true) => Some(s.func.clone()),
        ("FUNC", false) => {
            let f = arg.to_uppercase();
            let f = match f.as_str() {
                "PULSE" => "PULS".to_string(),
                "SQUARE" => "SQU".to_string(),
                "SINUSOID" => "SIN".to_string(),
                _ => f,
            };
            if ["PULS", "SQU", "SIN"].contains(&f.as_str()) {
                s.func = f;
            } else {
                push_error(shared, -224, "Illegal parameter value");
            }
            None
        }
        ("FUNC:PULS:PER", true) => Some(fmt(s.period_s)),
        ("FUNC:PULS:PER", false) => {
            match num(arg) {
                None => push_error(shared, -104, "Data type error"),
                Some(v) if !(20e-9..=1e6).contains(&v) => {
                    push_error(shared, -222, "Data out of range")
                }
                Some(_) if shared.faults.period_does_not_take => {}
                Some(v) => {
                    s.period_s = v;
                    s.width_s = s.width_s.min(v / 2.0);
                }
            }
            None
        }
        ("FUNC:PULS:WIDT", true) => Some(fmt(s.width_s)),
        ("FUNC:PULS:WIDT", false) => {
            match num(arg) {
                None => push_error(shared, -104, "Data type error"),
                Some(v) if v <= 0.0 || v >= s.period_s => {
                    push_error(shared, -221, "Settings conflict")
                }
                Some(v) => s.width_s = v,
            }
            None
        }
        ("VOLT:LOW", true) => Some(fmt(s.low_v)),
        ("VOLT:HIGH", true) => Some(fmt(s.high_v)),
        ("VOLT:LOW", false) | ("VOLT:HIGH", false) => {
            match num(arg) {
                None => push_error(shared, -104, "Data type error"),
                Some(v) if !(-10.0..=10.0).contains(&v) => {
                    push_error(shared, -222, "Data out of range")
                }
                Some(v) if path.ends_with("LOW") => s.low_v = v,
                Some(v) => s.high_v = v,
            }
            None
        }
        ("BURS:MODE", true) => Some(s.burst_mode.clone()),
        ("BURS:MODE", false) => {
            let m = arg.to_uppercase();
            match m.as_str() {
                "TRIG" | "TRIGGERED" => s.burst_mode = "TRIG".into(),
                "GAT" | "GATED" => s.burst_mode = "GAT".into(),
                _ => push_error(shared, -224, "Illegal parameter value"),
            }
            None
        }
        ("BURS:NCYC", true) => Some(fmt(s.burst_count as f64)),
        ("BURS:NCYC", false) => {
            match num(arg) {
                None => push_error(shared, -104, "Data type error"),
                Some(v) if !(1.0..=1e8).contains(&v) || v.fract() != 0.0 => {
                    push_error(shared, -222, "Data out of range")
                }
                Some(v) => s.burst_count = v as u64,
            }
            None
        }
        ("BURS:STAT", true) => Some(if s.burst_on { "1" } else { "0" }.into()),
        ("BURS:STAT", false) => {
            match on_off(arg) {
                Some(b) => s.burst_on = b,
                None => push_error(shared, -224, "Illegal parameter value"),
            }
            None
        }
        ("TRIG:SOUR", true) => Some(s.trigger_source.clone()),
        ("TRIG:SOUR", false) => {
            let t = arg.to_uppercase();
            let t = match t.as_str() {
                "IMMEDIATE" => "IMM".to_string(),
                "EXTERNAL" => "EXT".to_string(),
                _ => t,
            };
            if ["IMM", "EXT", "BUS"].contains(&t.as_str()) {
                s.trigger_source = t;
            } else {
                push_error(shared, -224, "Illegal parameter value");
            }
            None
        }
        ("OUTP", true) => Some(if s.output_on { "1" } else { "0" }.into()),
        ("OUTP", false) => {
            match on_off(arg) {
                Some(b) => {
                    s.output_on = b;
                    if !b {
                        shared.burst_epoch.fetch_add(1, Ordering::SeqCst);
                    }
                }
                None => push_error(shared, -224, "Illegal parameter value"),
            }
            None
        }
        _ => {
            push_error(shared, -113, "Undefined header");
            None
        }
    }
}

fn common(header: &str, query: bool, shared: &Arc<Shared>) -> Option<String> {
    match (header, query) {
        ("*IDN", true) => Some(shared.identity.clone()),
        ("*OPC", true) => Some("1".into()),
        ("*OPC", false) => None,
        ("*RST", false) => {
            shared.burst_epoch.fetch_add(1, Ordering::SeqCst);
            *lock(&shared.settings) = Settings::default();
            None
        }
        ("*CLS", false) => {
            lock(&shared.errors).clear();
            None
        }
        ("*TRG", false) => {
            if lock(&shared.settings).trigger_source == "BUS" {
                start_burst(shared);
            } else {
                push_error(shared, -211, "Trigger ignored");
            }
            None
        }
        _ => {
            push_error(shared, -113, "Undefined header");
            None
        }
    }
}

/// Starts the configured burst on its own thread, if output and burst mode are on.
fn start_burst(shared: &Arc<Shared>) {
    let s = lock(&shared.settings).clone();
    if !(s.output_on && s.burst_on && s.burst_mode == "TRIG") {
        push_error(shared, -211, "Trigger ignored");
        return;
    }
    let epoch = shared.burst_epoch.fetch_add(1, Ordering::SeqCst) + 1;
    shared.bursts.fetch_add(1, Ordering::Relaxed);
    let sh = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("pixel-clock-burst".into())
        .spawn(move || {
            let t0 = Instant::now();
            for i in 0..s.burst_count {
                // Drift-free: each pulse at its own deadline from the start.
                let due = t0 + Duration::from_secs_f64(i as f64 * s.period_s);
                loop {
                    if sh.burst_epoch.load(Ordering::SeqCst) != epoch
                        || sh.stop.load(Ordering::SeqCst)
                    {
                        return;
                    }
                    let now = Instant::now();
                    if now >= due {
                        break;
                    }
                    std::thread::sleep((due - now).min(POLL));
                }
                if let Some(out) = lock(&sh.output).as_mut() {
                    out.fire();
                }
                sh.pulses.fetch_add(1, Ordering::Relaxed);
            }
        });
    if spawned.is_err() {
        push_error(shared, -300, "Device-specific error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim() -> Arc<Shared> {
        Arc::new(Shared::new(
            String::new(),
            PixelClockFaults::default(),
            None,
        ))
    }

    #[test]
    fn long_and_short_forms_set_the_same_value() {
        let s = sim();
        handle_line("SOURce1:FUNCtion:PULSe:PERiod 2.5e-4", &s);
        assert_eq!(
            handle_line("SOUR1:FUNC:PULS:PER?", &s),
            ["+2.500000000000000E-4"]
        );
        handle_line("burs:ncyc 64; :BURSt:STATe ON", &s);
        assert_eq!(
            handle_line("BURS:NCYC?;BURS:STAT?", &s),
            ["+6.400000000000000E1", "1"]
        );
        assert_eq!(handle_line("SYST:ERR?", &s), ["+0,\"No error\""]);
    }

    #[test]
    fn bad_input_goes_to_the_error_queue_in_order() {
        let s = sim();
        handle_line("SOUR1:BOGUS 3", &s);
        handle_line("SOUR1:FUNC:PULS:PER fast", &s);
        handle_line("SOUR1:FUNC:PULS:PER 1e9", &s);
        handle_line("SOUR2:FUNC PULS", &s);
        handle_line("*TRG", &s);
        let errs: Vec<String> = (0..6).flat_map(|_| handle_line("SYST:ERR?", &s)).collect();
        assert_eq!(
            errs,
            [
                "-113,\"Undefined header\"",
                "-104,\"Data type error\"",
                "-222,\"Data out of range\"",
                "-114,\"Header suffix out of range\"",
                "-211,\"Trigger ignored\"",
                "+0,\"No error\""
            ]
        );
    }
}
