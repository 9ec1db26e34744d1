//! The Serval REST API (protocols.md §3.5–§3.6; Serval 3.x/4.1 field names as read from
//! EPICS ADTimePix3 and LiberTEM-rs `serval-client`).
//!
//! Requests are answered by [`handle`], a plain function (run on tokio's blocking pool by the
//! axum glue in `mod.rs`), so the state sits behind an ordinary mutex. Paths match with or
//! without a trailing slash. Answers are JSON; errors are plain text: 400 for a refused value
//! (naming the field, the value and the rule), 404 for an unknown path, 405 for a method the
//! path does not take, 409 for a request the measurement state forbids, 503 when the engine
//! is gone. Nothing a client sends can panic the simulator.

use super::engine::{DaState, Event, Plan, Shared, Timing};
use super::source::Encoded;
use crossbeam_channel::{Sender, bounded};
use serde_json::{Map, Value, json};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use stemflow_core::SigShape;

/// Longest and shortest timer values accepted (`ExposureTime`, `TriggerPeriod`,
/// `TriggerDelay`), s; also reported as `TimerMaxVal` / `TimerMinVal` [?].
pub const TIMER_MAX_S: f64 = 3600.0;
/// Timer resolution reported as `TimerStep` and `TimerMinVal`, s (Timepix3 40 MHz clock / 64
/// [?]).
pub const TIMER_STEP_S: f64 = 1.5625e-9;
/// How long a start or stop waits for the engine.
const ENGINE_DEADLINE: Duration = Duration::from_secs(10);

/// `TriggerMode` values (protocols.md §3.5), with whether the trigger line paces them.
pub(crate) const TRIGGER_MODES: [(&str, bool); 8] = [
    ("PEXSTART_NEXSTOP", true),
    ("NEXSTART_PEXSTOP", true),
    ("PEXSTART_TIMERSTOP", true),
    ("NEXSTART_TIMERSTOP", true),
    ("AUTOTRIGSTART_TIMERSTOP", false),
    ("CONTINUOUS", false),
    ("SOFTWARESTART_TIMERSTOP", false),
    ("SOFTWARESTART_SOFTWARESTOP", false),
];

const POLARITIES: [&str; 2] = ["Positive", "Negative"];
const CHAIN_MODES: [&str; 3] = ["NONE", "LEADER", "FOLLOWER"];
const TDC_MODES: [&str; 6] = ["P0123", "N0123", "PN0123", "P0", "N0", "PN0"];
const DEST_FORMATS: [&str; 5] = ["tiff", "pgm", "png", "jsonimage", "jsonhisto"];
const DEST_MODES: [&str; 5] = ["count", "tot", "toa", "tof", "count_fb"];
const DEST_SCHEMES: [&str; 3] = ["file:", "http://", "tcp://"];

/// Everything the REST API can change.
#[derive(Debug)]
pub(crate) struct RestState {
    /// `/detector/config`, always valid.
    pub(crate) detector: Map<String, Value>,
    /// `/server/destination`, once set.
    pub(crate) destination: Option<Value>,
    /// `/measurement/config`.
    pub(crate) measurement: Value,
    /// Dataset the next measurement sends.
    pub(crate) next_dataset: usize,
    /// Sequence of the next measurement's acquisition.
    pub(crate) next_sequence: u32,
}

/// What the handler needs.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) state: Mutex<RestState>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) events: Sender<Event>,
    pub(crate) datasets: Vec<Arc<Encoded>>,
    pub(crate) free_running: bool,
    /// Frame shape of the (first) dataset: the detector geometry reported.
    pub(crate) sig: SigShape,
    /// When the simulator started (`ElapsedTime` of passive streams).
    pub(crate) t0: Instant,
}

impl Ctx {
    fn state(&self) -> MutexGuard<'_, RestState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An answer: HTTP status and either a JSON value or a plain-text reason.
#[derive(Debug, PartialEq)]
pub(crate) enum Reply {
    Json(u16, Value),
    Text(u16, String),
}

fn bad(msg: impl Into<String>) -> Reply {
    Reply::Text(400, msg.into())
}

/// The initial detector configuration (Serval field names, §3.6): external-trigger-ready
/// values with `nTriggers` = the first dataset's frame count.
pub(crate) fn initial_detector(n_triggers: u64) -> Map<String, Value> {
    let v = json!({
        "BiasVoltage": 100.0,
        "BiasEnabled": false,
        "nTriggers": n_triggers,
        "ExposureTime": 0.001,
        "TriggerPeriod": 0.001,
        "TriggerMode": "AUTOTRIGSTART_TIMERSTOP",
        "TriggerIn": 0,
        "TriggerOut": 0,
        "TriggerDelay": 0.0,
        "Polarity": "Positive",
        "ChainMode": "NONE",
        "Tdc": ["P0", "P0"],
        "PeriphClk80": false,
        "ExternalReferenceClock": false,
        "LogLevel": 1,
        "GlobalTimestampInterval": 0.0,
        "Fan1PWM": 100,
        "Fan2PWM": 100,
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// The initial measurement configuration (Serval 4.1 `Stem`, §3.6).
pub(crate) fn initial_measurement(width: usize, height: usize) -> Value {
    json!({
        "Stem": {
            "Scan": {"Width": width, "Height": height, "DwellTime": 0.001},
            "VirtualDetector": {"RadiusInner": 0, "RadiusOuter": 0},
        }
    })
}

/// Answers one request. `query` is the URI query (without `?`), `body` the raw body.
pub(crate) fn handle(ctx: &Ctx, method: &str, path: &str, query: &str, body: &[u8]) -> Reply {
    let path = path.trim_end_matches('/');
    let get = method == "GET";
    let put = method == "PUT";
    let not_allowed = || Reply::Text(405, format!("{method} not allowed on {path}"));
    match path {
        "/dashboard" if get => dashboard(ctx),
        "/detector" if get => Reply::Json(
            200,
            json!({
                "Info": detector_info(ctx),
                "Config": Value::Object(ctx.state().detector.clone()),
                "Layout": detector_layout(ctx.sig),
                "Health": health(),
            }),
        ),
        "/detector/info" if get => Reply::Json(200, detector_info(ctx)),
        "/detector/layout" if get => Reply::Json(200, detector_layout(ctx.sig)),
        "/detector/health" if get => Reply::Json(200, health()),
        "/detector/config" if get => Reply::Json(200, Value::Object(ctx.state().detector.clone())),
        "/detector/config" if put => put_detector_config(ctx, body),
        "/server/destination" if get => match &ctx.state().destination {
            Some(d) => Reply::Json(200, d.clone()),
            None => Reply::Text(404, "Destination is not set".into()),
        },
        "/server/destination" if put => put_destination(ctx, body),
        "/measurement/config" if get => Reply::Json(200, ctx.state().measurement.clone()),
        "/measurement/config" if put => put_measurement_config(ctx, body),
        "/measurement" if get => Reply::Json(200, measurement(ctx)),
        "/measurement/start" if matches!(method, "GET" | "PUT" | "POST") => start(ctx),
        "/measurement/stop" if matches!(method, "GET" | "PUT" | "POST") => stop(ctx),
        "/config/load" if get => config_load(query),
        "/dashboard"
        | "/detector"
        | "/detector/info"
        | "/detector/layout"
        | "/detector/health"
        | "/detector/config"
        | "/server/destination"
        | "/measurement/config"
        | "/measurement"
        | "/measurement/start"
        | "/measurement/stop"
        | "/config/load" => not_allowed(),
        _ => Reply::Text(404, format!("no resource {path}")),
    }
}

fn software_version() -> String {
    format!("stemflow-tpx3-sim {}", env!("CARGO_PKG_VERSION"))
}

fn dashboard(ctx: &Ctx) -> Reply {
    let m = measurement(ctx);
    Reply::Json(
        200,
        json!({
            "Server": {
                "SoftwareVersion": software_version(),
                "SoftwareBuild": software_version(),
                "SoftwareTimestamp": "2025-01-01T00:00:00Z",
                "DiskSpace": [{
                    "Path": "/tmp",
                    "FreeSpace": 1u64 << 40,
                    "WriteSpeed": 1.0e9,
                    "LowerLimit": 1u64 << 30,
                    "DiskLimitReached": false,
                }],
                "Notifications": [],
            },
            "Detector": {"DetectorType": "Tpx3"},
            "Measurement": m,
        }),
    )
}

/// Chip geometry of a frame: chip edge (256 when both sides are multiples of 256, else the
/// greatest common divisor of the sides), chips per row, chip rows.
fn chips(sig: SigShape) -> (usize, usize, usize) {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    let g = gcd(sig.rows, sig.cols).max(1);
    let edge = if g.is_multiple_of(256) { 256 } else { g };
    (edge, sig.cols / edge, sig.rows / edge)
}

fn detector_info(ctx: &Ctx) -> Value {
    let (edge, per_row, chip_rows) = chips(ctx.sig);
    let n = per_row * chip_rows;
    let chips: Vec<Value> = (0..n)
        .map(|i| json!({"Index": i, "Id": 0x1000 + i, "Name": format!("W0000_SIM{i:02}")}))
        .collect();
    json!({
        "IfaceName": "sim0",
        "SW_version": software_version(),
        "FW_version": "sim",
        "PixCount": ctx.sig.len(),
        "RowLen": per_row,
        "NumberOfChips": n,
        "NumberOfRows": ctx.sig.rows,
        "MpxType": 6,
        "ChipEdge": edge,
        "Boards": [{
            "ChipboardId": "SIM0001",
            "IpAddress": "127.0.0.1",
            "FirmwareVersion": "sim",
            "Chips": chips,
        }],
        "SuppAcqModes": 7,
        "ClockReadout": 40.0,
        "MaxPulseCount": 0,
        "MaxPulseHeight": 0.0,
        "MaxPulsePeriod": 0.0,
        "TimerMaxVal": TIMER_MAX_S,
        "TimerMinVal": TIMER_STEP_S,
        "TimerStep": TIMER_STEP_S,
        "ClockTimepix": 40.0,
    })
}

fn detector_layout(sig: SigShape) -> Value {
    let (edge, per_row, chip_rows) = chips(sig);
    let list: Vec<Value> = (0..per_row * chip_rows)
        .map(|i| {
            json!({
                "Chip": i,
                "X": (i % per_row.max(1)) * edge,
                "Y": (i / per_row.max(1)) * edge,
                "Orientation": "LtRBtT",
            })
        })
        .collect();
    let grid = json!({"Width": sig.cols, "Height": sig.rows, "Chips": list});
    json!({"Orientation": "Normal", "Original": grid.clone(), "Rotated": grid})
}

fn health() -> Value {
    json!({
        "LocalTemperature": 35.0,
        "FPGATemperature": 45.0,
        "ChipTemperatures": [40.0],
        "Fan1Speed": 5000,
        "Fan2Speed": 5000,
        "BiasVoltage": 0.0,
        "Humidity": 20,
        "VDD": [1.5],
        "AVDD": [1.5],
    })
}

/// How one configuration key is checked.
enum Rule {
    Bool,
    /// Integer in `min..=max`.
    Int(i64, i64),
    /// Finite number in `min..=max` (`min` exclusive when the flag is set).
    Num(f64, f64, bool),
    Choice(&'static [&'static str]),
    Tdc,
}

fn detector_rule(key: &str) -> Option<Rule> {
    Some(match key {
        "BiasVoltage" => Rule::Num(-1000.0, 1000.0, false),
        "BiasEnabled" | "PeriphClk80" | "ExternalReferenceClock" => Rule::Bool,
        "nTriggers" => Rule::Int(1, i64::from(u32::MAX)),
        "ExposureTime" => Rule::Num(0.0, TIMER_MAX_S, true),
        "TriggerPeriod" | "TriggerDelay" | "GlobalTimestampInterval" => {
            Rule::Num(0.0, TIMER_MAX_S, false)
        }
        "TriggerMode" => return None,
        "TriggerIn" | "TriggerOut" => Rule::Int(0, 255),
        "Polarity" => Rule::Choice(&POLARITIES),
        "ChainMode" => Rule::Choice(&CHAIN_MODES),
        "Tdc" => Rule::Tdc,
        "LogLevel" => Rule::Int(0, 5),
        "Fan1PWM" | "Fan2PWM" => Rule::Int(0, 100),
        _ => return None,
    })
}

fn check(key: &str, v: &Value, rule: &Rule) -> Result<(), String> {
    let ok = match rule {
        Rule::Bool => v.is_boolean(),
        Rule::Int(lo, hi) => v.as_i64().is_some_and(|x| (*lo..=*hi).contains(&x)),
        Rule::Num(lo, hi, excl) => v
            .as_f64()
            .is_some_and(|x| x.is_finite() && x <= *hi && if *excl { x > *lo } else { x >= *lo }),
        Rule::Choice(list) => v.as_str().is_some_and(|s| list.contains(&s)),
        Rule::Tdc => v.as_array().is_some_and(|a| {
            a.len() == 2
                && a.iter()
                    .all(|x| x.as_str().is_some_and(|s| TDC_MODES.contains(&s)))
        }),
    };
    if ok {
        return Ok(());
    }
    let want = match rule {
        Rule::Bool => "true or false".to_string(),
        Rule::Int(lo, hi) => format!("an integer from {lo} to {hi}"),
        Rule::Num(lo, hi, true) => format!("a number > {lo} and ≤ {hi}"),
        Rule::Num(lo, hi, false) => format!("a number from {lo} to {hi}"),
        Rule::Choice(list) => format!("one of {}", list.join(", ")),
        Rule::Tdc => format!("two of {}", TDC_MODES.join(", ")),
    };
    let unit = match key {
        "ExposureTime" | "TriggerPeriod" | "TriggerDelay" | "GlobalTimestampInterval" => " (s)",
        "BiasVoltage" => " (V)",
        _ => "",
    };
    Err(format!("{key} must be {want}{unit}, got {v}"))
}

/// The configuration `body` makes of `current`: every key of the body is checked and set
/// (keys it leaves out keep their values), then the cross-field rules.
pub(crate) fn apply_detector(
    current: &Map<String, Value>,
    body: &Value,
) -> Result<Map<String, Value>, String> {
    let Value::Object(m) = body else {
        return Err(format!(
            "detector config must be a JSON object (PUT the object GET returns), got {body}"
        ));
    };
    let mut next = current.clone();
    for (k, v) in m {
        if k == "TriggerMode" {
            let known = v
                .as_str()
                .is_some_and(|s| TRIGGER_MODES.iter().any(|(n, _)| *n == s));
            if !known {
                let names: Vec<&str> = TRIGGER_MODES.iter().map(|(n, _)| *n).collect();
                return Err(format!(
                    "TriggerMode {v} is unknown; known: {}",
                    names.join(", ")
                ));
            }
        } else {
            let Some(rule) = detector_rule(k) else {
                let keys: Vec<&String> = current.keys().collect();
                return Err(format!(
                    "unknown detector config field `{k}`; fields: {}",
                    keys.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            };
            check(k, v, &rule)?;
        }
        next.insert(k.clone(), v.clone());
    }
    let num = |k: &str| next.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let (exposure, period) = (num("ExposureTime"), num("TriggerPeriod"));
    if period != 0.0 && period < exposure {
        return Err(format!(
            "TriggerPeriod {period} s is shorter than ExposureTime {exposure} s (it must be ≥ ExposureTime, or 0 for as fast as possible)"
        ));
    }
    Ok(next)
}

fn parse_body(body: &[u8]) -> Result<Value, Reply> {
    serde_json::from_slice(body).map_err(|e| bad(format!("body is not JSON: {e}")))
}

fn recording(ctx: &Ctx) -> bool {
    ctx.shared.status().state == DaState::Recording
}

fn put_detector_config(ctx: &Ctx, body: &[u8]) -> Reply {
    let v = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if recording(ctx) {
        return Reply::Text(
            409,
            "a measurement is recording: stop it before changing the detector config".into(),
        );
    }
    let mut st = ctx.state();
    match apply_detector(&st.detector, &v) {
        Ok(next) => {
            st.detector = next;
            Reply::Json(200, Value::Object(st.detector.clone()))
        }
        Err(e) => bad(e),
    }
}

fn check_channel(where_: &str, ch: &Value, image: bool) -> Result<(), String> {
    let Value::Object(m) = ch else {
        return Err(format!("{where_} must be an object, got {ch}"));
    };
    match m.get("Base").and_then(Value::as_str) {
        Some(b) if DEST_SCHEMES.iter().any(|s| b.starts_with(s)) => {}
        Some(b) => {
            return Err(format!(
                "{where_}.Base `{b}` must start with one of {}",
                DEST_SCHEMES.join(", ")
            ));
        }
        None => return Err(format!("{where_} needs a string `Base`")),
    }
    if image {
        if let Some(f) = m.get("Format")
            && !f.as_str().is_some_and(|s| DEST_FORMATS.contains(&s))
        {
            return Err(format!(
                "{where_}.Format {f} must be one of {}",
                DEST_FORMATS.join(", ")
            ));
        }
        if let Some(f) = m.get("Mode")
            && !f.as_str().is_some_and(|s| DEST_MODES.contains(&s))
        {
            return Err(format!(
                "{where_}.Mode {f} must be one of {}",
                DEST_MODES.join(", ")
            ));
        }
    }
    Ok(())
}

/// Checks a `/server/destination` object (§3.6): `Raw` and `Image` lists of channels,
/// `Preview` an object whose `ImageChannels` are image channels.
pub(crate) fn check_destination(v: &Value) -> Result<(), String> {
    let Value::Object(m) = v else {
        return Err(format!("destination must be a JSON object, got {v}"));
    };
    if m.is_empty() {
        return Err("destination names no channel (Raw, Image, Preview)".into());
    }
    for (k, x) in m {
        match k.as_str() {
            "Raw" | "Image" => {
                let Value::Array(list) = x else {
                    return Err(format!("{k} must be a list of channels, got {x}"));
                };
                for (i, ch) in list.iter().enumerate() {
                    check_channel(&format!("{k}[{i}]"), ch, k == "Image")?;
                }
            }
            "Preview" => {
                let Value::Object(p) = x else {
                    return Err(format!("Preview must be an object, got {x}"));
                };
                if let Some(chs) = p.get("ImageChannels") {
                    let Value::Array(list) = chs else {
                        return Err(format!("Preview.ImageChannels must be a list, got {chs}"));
                    };
                    for (i, ch) in list.iter().enumerate() {
                        check_channel(&format!("Preview.ImageChannels[{i}]"), ch, true)?;
                    }
                }
            }
            other => {
                return Err(format!(
                    "unknown destination channel `{other}` (Raw, Image, Preview)"
                ));
            }
        }
    }
    Ok(())
}

fn put_destination(ctx: &Ctx, body: &[u8]) -> Reply {
    let v = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Err(e) = check_destination(&v) {
        return bad(e);
    }
    if recording(ctx) {
        return Reply::Text(409, "a measurement is recording: stop it first".into());
    }
    ctx.state().destination = Some(v.clone());
    Reply::Json(200, v)
}

/// Checks a `/measurement/config` object: `Stem.Scan` `Width`/`Height` 1–65535,
/// `DwellTime` above 0 (s [?]); `Stem.VirtualDetector` radii ≥ 0 with inner ≤ outer. Other
/// sections are kept as sent.
pub(crate) fn check_measurement(v: &Value) -> Result<(), String> {
    let Value::Object(m) = v else {
        return Err(format!("measurement config must be a JSON object, got {v}"));
    };
    let Some(stem) = m.get("Stem") else {
        return Ok(());
    };
    let Value::Object(stem) = stem else {
        return Err(format!("Stem must be an object, got {stem}"));
    };
    if let Some(scan) = stem.get("Scan") {
        let Value::Object(scan) = scan else {
            return Err(format!("Stem.Scan must be an object, got {scan}"));
        };
        for k in ["Width", "Height"] {
            if let Some(x) = scan.get(k) {
                check(&format!("Stem.Scan.{k}"), x, &Rule::Int(1, 65535))?;
            }
        }
        if let Some(x) = scan.get("DwellTime") {
            check("Stem.Scan.DwellTime", x, &Rule::Num(0.0, TIMER_MAX_S, true))?;
        }
    }
    if let Some(vd) = stem.get("VirtualDetector") {
        let Value::Object(vd) = vd else {
            return Err(format!("Stem.VirtualDetector must be an object, got {vd}"));
        };
        for k in ["RadiusInner", "RadiusOuter"] {
            if let Some(x) = vd.get(k) {
                check(
                    &format!("Stem.VirtualDetector.{k}"),
                    x,
                    &Rule::Int(0, 65535),
                )?;
            }
        }
        let r = |k: &str| vd.get(k).and_then(Value::as_i64).unwrap_or(0);
        if r("RadiusInner") > r("RadiusOuter") {
            return Err(format!(
                "Stem.VirtualDetector.RadiusInner {} exceeds RadiusOuter {}",
                r("RadiusInner"),
                r("RadiusOuter")
            ));
        }
    }
    Ok(())
}

fn put_measurement_config(ctx: &Ctx, body: &[u8]) -> Reply {
    let v = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Err(e) = check_measurement(&v) {
        return bad(e);
    }
    if recording(ctx) {
        return Reply::Text(409, "a measurement is recording: stop it first".into());
    }
    ctx.state().measurement = v.clone();
    Reply::Json(200, v)
}

fn measurement(ctx: &Ctx) -> Value {
    if ctx.free_running {
        let c = &ctx.shared.counters;
        let streaming = ctx.shared.passive_streams.load(Ordering::Relaxed) > 0;
        let elapsed = ctx.t0.elapsed().as_secs_f64();
        let events = c.events_sent.load(Ordering::Relaxed);
        let info = json!({
            "Status": if streaming { "DA_RECORDING" } else { "DA_IDLE" },
            "FrameCount": c.frames_sent.load(Ordering::Relaxed),
            "DroppedFrames": 0,
            "PixelEventRate": if elapsed > 0.0 { (events as f64 / elapsed) as u64 } else { 0 },
            "TdcEventRate": 0,
            "ElapsedTime": elapsed,
            "TimeLeft": 0.0,
            "StartDateTime": 0,
        });
        return json!({"Info": info, "Status": info["Status"].clone()});
    }
    let st = ctx.shared.status().clone();
    let now = Instant::now();
    let elapsed = match (st.started, st.ended) {
        (Some(s), Some(e)) => e.saturating_duration_since(s).as_secs_f64(),
        (Some(s), None) => now.saturating_duration_since(s).as_secs_f64(),
        _ => 0.0,
    };
    let left = if st.state == DaState::Recording {
        st.total.saturating_sub(st.frames) as f64 * st.period_s
    } else {
        0.0
    };
    let info = json!({
        "Status": st.state.as_str(),
        "FrameCount": st.frames,
        "DroppedFrames": st.dropped,
        "PixelEventRate": if elapsed > 0.0 { (st.events as f64 / elapsed) as u64 } else { 0 },
        "TdcEventRate": 0,
        "ElapsedTime": elapsed,
        "TimeLeft": left,
        "StartDateTime": st.started_epoch_ms,
    });
    json!({"Info": info, "Status": st.state.as_str()})
}

/// `measurement/start`: one acquisition of `nTriggers` frames (must equal the dataset's scan
/// positions), paced by `TriggerMode`.
fn start(ctx: &Ctx) -> Reply {
    if ctx.free_running {
        return Reply::Text(
            409,
            "the simulator is free-running: every data client gets the acquisition on connect (start it with free_running false for measurement/start)".into(),
        );
    }
    if recording(ctx) {
        return Reply::Text(409, "a measurement is already recording".into());
    }
    let plan = {
        let mut st = ctx.state();
        let n = ctx.datasets.len().max(1);
        let Some(enc) = ctx.datasets.get(st.next_dataset % n).cloned() else {
            return Reply::Text(503, "no dataset to send".into());
        };
        let d = &st.detector;
        let num = |k: &str| d.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        let n_triggers = d.get("nTriggers").and_then(Value::as_u64).unwrap_or(0);
        let frames = enc.dataset.frames();
        if n_triggers != frames {
            return bad(format!(
                "nTriggers {n_triggers} does not match the {frames} frames of the source's scan ({} × {}): set nTriggers to {frames}",
                enc.dataset.nav.rows, enc.dataset.nav.cols
            ));
        }
        let mode = d.get("TriggerMode").and_then(Value::as_str).unwrap_or("");
        let Some(&(_, external)) = TRIGGER_MODES.iter().find(|(m, _)| *m == mode) else {
            return bad(format!("TriggerMode `{mode}` unknown"));
        };
        let secs =
            |s: f64| Duration::try_from_secs_f64(s.clamp(0.0, TIMER_MAX_S)).unwrap_or_default();
        let (exposure, period) = (num("ExposureTime"), num("TriggerPeriod"));
        let timing = if external {
            Timing::External {
                delay: secs(exposure + num("TriggerDelay")),
            }
        } else {
            Timing::Timer {
                period: secs(period),
                exposure: secs(exposure),
            }
        };
        let seq = st.next_sequence;
        st.next_sequence = st.next_sequence.wrapping_add(1);
        st.next_dataset = (st.next_dataset + 1) % n;
        Plan {
            enc,
            seq,
            timing,
            period_s: period,
        }
    };
    {
        let mut s = ctx.shared.status();
        s.state = DaState::Recording;
        s.frames = 0;
    }
    let (ack, done) = bounded(1);
    if ctx.events.send(Event::Start(Box::new(plan), ack)).is_err() {
        ctx.shared.status().state = DaState::Idle;
        return Reply::Text(503, "detector engine stopped".into());
    }
    match done.recv_timeout(ENGINE_DEADLINE) {
        Ok(()) => Reply::Json(200, json!({})),
        Err(_) => Reply::Text(503, "detector engine did not start the measurement".into()),
    }
}

/// `measurement/stop`: ends a recording measurement at once (AcquisitionEnd inside the scan).
fn stop(ctx: &Ctx) -> Reply {
    if ctx.free_running {
        return Reply::Text(
            409,
            "the simulator is free-running: there is no measurement to stop".into(),
        );
    }
    ctx.shared.stop_requested.store(true, Ordering::Release);
    let (ack, done) = bounded(1);
    if ctx.events.send(Event::Stop(ack)).is_err() {
        return Reply::Text(503, "detector engine stopped".into());
    }
    match done.recv_timeout(ENGINE_DEADLINE) {
        Ok(()) => Reply::Json(200, json!({})),
        Err(_) => Reply::Text(503, "detector engine did not stop the measurement".into()),
    }
}

/// `/config/load?format=pixelconfig|dacs&file=…`: accepted and ignored.
fn config_load(query: &str) -> Reply {
    let mut format = None;
    let mut file = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("format", v)) => format = Some(v),
            Some(("file", v)) if !v.is_empty() => file = Some(v),
            _ => {}
        }
    }
    match (format, file) {
        (Some("pixelconfig" | "dacs"), Some(_)) => Reply::Json(200, json!({})),
        _ => bad(format!(
            "config/load needs format=pixelconfig or format=dacs and a file=..., got `{query}`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detector_config_rules_name_the_field() {
        let cur = initial_detector(256);
        let e = |v: Value| apply_detector(&cur, &v).unwrap_err();
        assert!(
            e(json!({"TriggerMode": "SOMETIMES"})).contains("TriggerMode \"SOMETIMES\" is unknown")
        );
        assert!(e(json!({"ExposureTime": 0})).contains("ExposureTime must be a number > 0"));
        assert!(e(json!({"nTriggers": 0})).contains("nTriggers must be an integer from 1"));
        assert!(e(json!({"TriggerPeriod": 0.0005})).contains("shorter than ExposureTime"));
        assert!(e(json!({"Bogus": 1})).contains("unknown detector config field `Bogus`"));
        assert!(e(json!([1])).contains("must be a JSON object"));
        let ok = apply_detector(&cur, &json!({"TriggerPeriod": 0, "nTriggers": 5})).unwrap();
        assert_eq!(ok["nTriggers"], 5);
        assert_eq!(ok["Polarity"], "Positive");
    }

    #[test]
    fn chip_geometry_is_consistent() {
        assert_eq!(chips(SigShape::new(512, 512)), (256, 2, 2));
        assert_eq!(chips(SigShape::new(256, 1024)), (256, 4, 1));
        assert_eq!(chips(SigShape::new(32, 64)), (32, 2, 1));
    }
}
