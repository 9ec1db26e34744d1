//! The SIMPLON REST API (protocols.md §2.2, §2.3): `/<module>/api/<version>/<task>/<param>`
//! with module ∈ {detector, stream, filewriter, monitor, system}, task ∈ {config, status,
//! command}, version 1.8.0, plus `GET /<module>/api/version/`.
//!
//! Requests are answered by [`handle`], a plain function (run on tokio's blocking pool by the
//! axum glue in `mod.rs`), so the parameter store sits behind an ordinary mutex. Answers are
//! JSON (`application/json`); errors are 400 (refused value, wrong state) or 404 (unknown
//! path, version or parameter) with a plain-text reason. Nothing a client sends can panic
//! the simulator.

use super::engine::{Armed, DetState, Event, Plan, Shared, StopKind, TriggerMode};
use super::settings::{Params, PutError};
use super::source::Prepared;
use super::wire::{self, HeaderArrays, HeaderDetail};
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc::UnboundedSender;

/// The API version served (§2.2).
pub const API_VERSION: &str = "1.8.0";

/// Everything the REST API can change.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) detector: Params,
    pub(crate) stream: Params,
    pub(crate) filewriter: Params,
    pub(crate) monitor: Params,
    pub(crate) source: Prepared,
    pub(crate) arrays: HeaderArrays,
    pub(crate) next_series: u64,
    pub(crate) last_series: u64,
}

/// What the handler needs.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) config: Mutex<Config>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) events: UnboundedSender<Event>,
}

impl Ctx {
    fn config(&self) -> MutexGuard<'_, Config> {
        self.config.lock().unwrap_or_else(|e| e.into_inner())
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
fn missing(msg: impl Into<String>) -> Reply {
    Reply::Text(404, msg.into())
}

/// Answers one request. `body` is the raw request body (`{"value": …}` for PUTs of
/// parameters; empty or `{"value": …}` for commands).
pub(crate) fn handle(ctx: &Ctx, method: &str, path: &str, body: &[u8]) -> Reply {
    let seg: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let module = seg.first().copied().unwrap_or("");
    if !matches!(
        module,
        "detector" | "stream" | "filewriter" | "monitor" | "system"
    ) {
        return missing(format!("no module `{module}` (path {path})"));
    }
    if seg.get(1) != Some(&"api") {
        return missing(format!("expected /{module}/api/..., got {path}"));
    }
    if seg.get(2) == Some(&"version") && seg.len() == 3 {
        return match method {
            "GET" => Reply::Json(200, json!({"value": API_VERSION, "value_type": "string"})),
            _ => Reply::Text(405, format!("{method} not allowed on {path}")),
        };
    }
    match seg.get(2) {
        Some(&API_VERSION) => {}
        Some(v) => {
            return missing(format!(
                "API version {v} not served; this detector has {API_VERSION}"
            ));
        }
        None => return missing(format!("no API version in {path}")),
    }
    let task = seg.get(3).copied().unwrap_or("");
    let param = seg[4.min(seg.len())..].join("/");
    let value = parse_value(body);
    match (method, task) {
        ("GET", "config") => get_config(ctx, module, &param),
        ("PUT", "config") => match value {
            Ok(Some(v)) => put_config(ctx, module, &param, &v),
            Ok(None) => bad(format!("PUT {path} needs a body {{\"value\": ...}}")),
            Err(e) => bad(e),
        },
        ("GET", "status") => get_status(ctx, module, &param),
        ("GET", "command") if param == "keys" => Reply::Json(200, command_keys(module)),
        ("PUT", "command") => match value {
            Ok(v) => command(ctx, module, &param, v),
            Err(e) => bad(e),
        },
        ("GET" | "PUT", _) => missing(format!("no {task} task `{param}` in module {module}")),
        _ => Reply::Text(405, format!("{method} not allowed on {path}")),
    }
}

/// `{"value": v}` → `Some(v)`; an empty body → `None`.
fn parse_value(body: &[u8]) -> Result<Option<Value>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut m)) => Ok(m.remove("value")),
        Ok(other) => Err(format!(
            "body must be a JSON object {{\"value\": ...}}, got {other}"
        )),
        Err(e) => Err(format!("body is not JSON: {e}")),
    }
}

fn params<'a>(cfg: &'a mut Config, module: &str) -> Option<&'a mut Params> {
    match module {
        "detector" => Some(&mut cfg.detector),
        "stream" => Some(&mut cfg.stream),
        "filewriter" => Some(&mut cfg.filewriter),
        "monitor" => Some(&mut cfg.monitor),
        _ => None,
    }
}

fn get_config(ctx: &Ctx, module: &str, param: &str) -> Reply {
    let mut cfg = ctx.config();
    if module == "detector" && (param == "pixel_mask" || param == "flatfield") {
        let a = &cfg.arrays;
        let (data, ty) = if param == "pixel_mask" {
            (&a.pixel_mask, "<u4")
        } else {
            (&a.flatfield, "<f4")
        };
        return Reply::Json(
            200,
            json!({
                "value": {
                    "__darray__": [1, 0, 0],
                    "data": wire::base64(data),
                    "filters": ["base64"],
                    "shape": a.shape,
                    "type": ty,
                },
                "value_type": "darray",
                "access_mode": "rw",
            }),
        );
    }
    let Some(p) = params(&mut cfg, module) else {
        return missing(format!("module {module} has no config"));
    };
    if param.is_empty() || param == "keys" {
        return Reply::Json(200, p.keys());
    }
    match p.get(param) {
        Some(x) => Reply::Json(200, x.describe()),
        None => missing(format!("{module} has no config parameter `{param}`")),
    }
}

fn put_config(ctx: &Ctx, module: &str, param: &str, v: &Value) -> Reply {
    if module == "detector" && ctx.shared.status().armed.is_some() {
        return bad(format!(
            "detector is armed: disarm before changing `{param}`"
        ));
    }
    let mut cfg = ctx.config();
    let Some(p) = params(&mut cfg, module) else {
        return missing(format!("module {module} has no config"));
    };
    match p.put(param, v) {
        Ok(changed) => Reply::Json(200, json!(changed)),
        Err(PutError::Unknown(m)) => missing(format!("{module}: {m}")),
        Err(PutError::Refused(m)) => bad(format!("{module}: {m}")),
    }
}

fn get_status(ctx: &Ctx, module: &str, param: &str) -> Reply {
    let string = |v: &str| json!({"value": v, "value_type": "string", "access_mode": "r"});
    match (module, param) {
        ("detector", "state") => Reply::Json(200, string(ctx.shared.status().state.as_str())),
        ("detector", "error") => Reply::Json(
            200,
            json!({"value": [], "value_type": "list", "access_mode": "r"}),
        ),
        ("detector", "time") => Reply::Json(200, string(&now_iso())),
        ("detector", "series_unique_id") => {
            let s = ctx.config().last_series;
            Reply::Json(200, string(&format!("stemflow-sim-series-{s}")))
        }
        ("detector", "keys") => {
            Reply::Json(200, json!(["state", "error", "time", "series_unique_id"]))
        }
        ("stream", "state") | ("filewriter", "state") | ("monitor", "state") => {
            Reply::Json(200, string("ready"))
        }
        ("stream", "dropped") => {
            let c = &ctx.shared.counters;
            let n = c.frames_dropped.load(Ordering::Relaxed)
                + c.frames_discarded.load(Ordering::Relaxed);
            Reply::Json(
                200,
                json!({"value": n, "value_type": "uint", "access_mode": "r"}),
            )
        }
        ("stream", "keys") => Reply::Json(200, json!(["state", "dropped"])),
        _ => missing(format!("{module} has no status parameter `{param}`")),
    }
}

fn command_keys(module: &str) -> Value {
    match module {
        "detector" => json!([
            "initialize",
            "arm",
            "trigger",
            "disarm",
            "abort",
            "cancel",
            "hv_reset",
            "status_update"
        ]),
        "system" => json!(["restart"]),
        "filewriter" => json!(["clear"]),
        "monitor" => json!(["clear"]),
        _ => json!([]),
    }
}

fn command(ctx: &Ctx, module: &str, cmd: &str, value: Option<Value>) -> Reply {
    match (module, cmd) {
        ("detector", "arm") => arm(ctx),
        ("detector", "trigger") => trigger(ctx, value),
        ("detector", "disarm") => stop(ctx, StopKind::Disarm),
        ("detector", "abort") => stop(ctx, StopKind::Abort),
        ("detector", "cancel") => stop(ctx, StopKind::Cancel),
        ("detector", "initialize") | ("detector", "hv_reset") | ("detector", "status_update") => {
            if ctx.shared.status().armed.is_some() {
                return bad(format!("detector is armed: disarm before `{cmd}`"));
            }
            Reply::Json(200, json!([]))
        }
        ("system", "restart") | ("filewriter", "clear") | ("monitor", "clear") => {
            Reply::Json(200, json!([]))
        }
        _ => missing(format!("{module} has no command `{cmd}`")),
    }
}

fn now_iso() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3f+00:00")
        .to_string()
}

/// `arm` (§2.3): fixes the series (its frames encoded for the current compression), sends
/// the global header, answers `{"sequence id": N}`; series ids count up from the source's.
fn arm(ctx: &Ctx) -> Reply {
    if let Some(a) = ctx.shared.status().armed {
        return bad(format!("detector already armed (series {})", a.series));
    }
    let mut cfg = ctx.config();
    let d = &cfg.detector;
    let Some(mode) = TriggerMode::parse(d.str("trigger_mode")) else {
        return bad(format!("trigger_mode `{}` unknown", d.str("trigger_mode")));
    };
    let (nimages, ntrigger) = (d.u64("nimages"), d.u64("ntrigger"));
    if nimages == 0 || ntrigger == 0 {
        return bad(format!(
            "cannot arm: nimages {nimages} × ntrigger {ntrigger} is no image"
        ));
    }
    let (count_time, frame_time) = (d.f64("count_time"), d.f64("frame_time"));
    let compression = d.str("compression").to_string();
    let frames = match cfg.source.frames_for(&compression) {
        Ok(f) => Arc::new(f.clone()),
        Err(e) => return bad(format!("cannot arm: {e}")),
    };
    cfg.detector
        .force_value("data_collection_date", Value::String(now_iso()));
    let detail =
        HeaderDetail::parse(cfg.stream.str("header_detail")).unwrap_or(HeaderDetail::Basic);
    let series = cfg.next_series;
    let header = wire::global_header(
        series,
        detail,
        &cfg.detector.header_config(),
        &cfg.arrays,
        cfg.stream.str("header_appendix"),
    );
    let plan = Plan {
        series,
        mode,
        nimages,
        ntrigger,
        count_time,
        frame_time,
        header,
        frames,
        stream_enabled: cfg.stream.str("mode") == "enabled",
        image_appendix: cfg.stream.str("image_appendix").to_string(),
    };
    {
        let mut st = ctx.shared.status();
        if let Some(a) = st.armed {
            return bad(format!("detector already armed (series {})", a.series));
        }
        st.armed = Some(Armed {
            series,
            mode,
            triggers_left: ntrigger,
        });
        st.state = DetState::Ready;
    }
    if ctx.events.send(Event::Arm(Box::new(plan))).is_err() {
        let mut st = ctx.shared.status();
        st.armed = None;
        st.state = DetState::Idle;
        return Reply::Text(503, "detector engine stopped".into());
    }
    cfg.next_series += 1;
    cfg.last_series = series;
    Reply::Json(200, json!({"sequence id": series}))
}

/// `trigger` (§2.3): only in `ints`/`inte`, at most `ntrigger` times per series; for `inte`
/// the body's value is the exposure time, s.
fn trigger(ctx: &Ctx, value: Option<Value>) -> Reply {
    let exposure_s = match &value {
        None => None,
        Some(v) => match v.as_f64() {
            Some(x) if x.is_finite() && x > 0.0 && x <= super::settings::MAX_TIME_S => Some(x),
            _ => {
                return bad(format!(
                    "trigger value must be an exposure time in s, got {v}"
                ));
            }
        },
    };
    let mode = {
        let mut st = ctx.shared.status();
        let Some(a) = st.armed.as_mut() else {
            return bad("trigger: detector is not armed");
        };
        if a.mode.external() {
            return bad(format!(
                "trigger: series {} uses an external trigger mode ({:?})",
                a.series, a.mode
            ));
        }
        if a.triggers_left == 0 {
            return bad(format!(
                "trigger: series {} already received all its triggers",
                a.series
            ));
        }
        a.triggers_left -= 1;
        let mode = a.mode;
        st.state = DetState::Acquire;
        mode
    };
    // Only `inte` takes its exposure from the trigger; `ints` uses count_time.
    let exposure_s = exposure_s.filter(|_| mode == TriggerMode::Inte);
    if ctx.events.send(Event::Trigger { exposure_s }).is_err() {
        return Reply::Text(503, "detector engine stopped".into());
    }
    Reply::Json(200, json!([]))
}

/// `disarm` / `abort` / `cancel`: ends the series at once (the engine sends `dseries_end`,
/// §2.4) and answers the series id.
fn stop(ctx: &Ctx, kind: StopKind) -> Reply {
    ctx.shared.stop_requested.store(true, Ordering::Release);
    {
        let mut st = ctx.shared.status();
        st.armed = None;
        st.state = DetState::Idle;
    }
    if ctx.events.send(Event::Stop(kind)).is_err() {
        return Reply::Text(503, "detector engine stopped".into());
    }
    Reply::Json(200, json!({"sequence id": ctx.config().last_series}))
}
