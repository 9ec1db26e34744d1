//! [`SimplonClient`]: the DECTRIS SIMPLON REST API client (API version 1.8.0,
//! protocols.md §2.2–§2.3), blocking, every call with a deadline.
//!
//! URLs are `http://<host>:<port>/<module>/api/<version>/<task>/<param>`. Config values go
//! out as `{"value": …}` with `Content-Type: application/json`, and every PUT of a config
//! value is followed by a GET that must read the value back (the DCU may round or refuse
//! silently; the PUT's own reply body is not relied on, §2.2). Commands are PUTs with an
//! empty body (or `{"value": …}` for `trigger` in `inte` mode); `arm`, `disarm`, `abort` and
//! `cancel` answer `{"sequence id": <int>}`.
//!
//! Errors name the device, the method and endpoint, and for non-2xx answers the HTTP status
//! and the body (cut to 500 characters). HTTP/1.1 through `ureq` without TLS (the DCU speaks
//! plain HTTP; docs/decisions/0003-dectris-transport.md).

use serde_json::Value;
use std::fmt;
use std::time::Duration;

/// The SIMPLON API version whose paths we use (§2.2).
pub const API_VERSION: &str = "1.8.0";

pub use crate::http::RestError;
use crate::http::cut;

/// A SIMPLON API module (§2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Module {
    /// `detector`: acquisition settings, commands, status.
    Detector,
    /// `stream`: the ZeroMQ stream interface.
    Stream,
    /// `filewriter`: DCU-side HDF5 writing.
    Filewriter,
    /// `monitor`.
    Monitor,
    /// `system`.
    System,
}

impl Module {
    /// The path segment.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Detector => "detector",
            Self::Stream => "stream",
            Self::Filewriter => "filewriter",
            Self::Monitor => "monitor",
            Self::System => "system",
        }
    }
}

/// Detector commands (`PUT /detector/api/1.8.0/command/<name>`, §2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Arm: the DCU sends the global header on the stream; returns the series id.
    Arm,
    /// Software trigger (`ints`, `inte`).
    Trigger,
    /// End the series after the current image; returns the series id.
    Disarm,
    /// Stop at once; returns the series id.
    Abort,
    /// Stop after the current trigger; returns the series id.
    Cancel,
    /// Initialise the detector.
    Initialize,
    /// Reset the high voltage.
    HvReset,
}

impl Command {
    /// The path segment.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Arm => "arm",
            Self::Trigger => "trigger",
            Self::Disarm => "disarm",
            Self::Abort => "abort",
            Self::Cancel => "cancel",
            Self::Initialize => "initialize",
            Self::HvReset => "hv_reset",
        }
    }
}

/// Detector states (`status/state`, §2.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DetectorState {
    /// `na`: not available (not initialised).
    NotAvailable,
    /// `idle`.
    Idle,
    /// `ready`: armed.
    Ready,
    /// `acquire`.
    Acquire,
    /// `configure`.
    Configure,
    /// `initialize`.
    Initialize,
    /// `test`.
    Test,
    /// `error`.
    Error,
    /// Any other value, as sent.
    Other(String),
}

impl DetectorState {
    fn parse(s: &str) -> Self {
        match s {
            "na" => Self::NotAvailable,
            "idle" => Self::Idle,
            "ready" => Self::Ready,
            "acquire" => Self::Acquire,
            "configure" => Self::Configure,
            "initialize" => Self::Initialize,
            "test" => Self::Test,
            "error" => Self::Error,
            other => Self::Other(other.to_string()),
        }
    }
}

impl fmt::Display for DetectorState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::NotAvailable => "na",
            Self::Idle => "idle",
            Self::Ready => "ready",
            Self::Acquire => "acquire",
            Self::Configure => "configure",
            Self::Initialize => "initialize",
            Self::Test => "test",
            Self::Error => "error",
            Self::Other(s) => s,
        };
        f.write_str(s)
    }
}

/// The stream format (`stream/config/format`, §2.3, §2.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamFormat {
    /// Stream v1, JSON + binary (`legacy`; port 9999).
    Legacy,
    /// Stream v2, CBOR (`cbor`; port 31001; firmware ≥ 2022.1).
    Cbor,
}

impl StreamFormat {
    /// The REST spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Legacy => "legacy",
            Self::Cbor => "cbor",
        }
    }
}

/// Whether two JSON values are the same setting: numbers equal within a relative 1e-6
/// (the DCU stores floats; 0.001 may come back as 0.0010000000474974513), everything else
/// exactly.
pub fn same_value(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-6 * x.abs().max(y.abs()) + 1e-12,
        _ => a == b,
    }
}

/// A SIMPLON REST client for one DCU. Cheap to clone (shares the connection pool).
#[derive(Clone)]
pub struct SimplonClient {
    device: String,
    base: String,
    agent: ureq::Agent,
    timeout: Duration,
    arm_timeout: Duration,
}

impl fmt::Debug for SimplonClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimplonClient")
            .field("device", &self.device)
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl SimplonClient {
    /// A client for the DCU at `host:port` (DCU: port 80; LiberTEM's simulator: 8910).
    /// `timeout` bounds every call (connect, send, answer); `arm` gets its own, longer
    /// deadline ([`with_arm_timeout`](Self::with_arm_timeout); default 60 s) because a
    /// real DCU can take seconds to arm (§2.2). Errors name `dectris @ host:port`.
    pub fn new(host: &str, port: u16, timeout: Duration) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Self {
            device: format!("dectris @ {host}:{port}"),
            base: format!("http://{host}:{port}"),
            agent,
            timeout,
            arm_timeout: Duration::from_secs(60).max(timeout),
        }
    }

    /// Sets the deadline of `arm`.
    pub fn with_arm_timeout(mut self, t: Duration) -> Self {
        self.arm_timeout = t;
        self
    }

    /// The device name used in errors.
    pub fn device(&self) -> &str {
        &self.device
    }

    fn path(module: Module, task: &str, param: &str) -> String {
        format!("/{}/api/{API_VERSION}/{task}/{param}", module.as_str())
    }

    /// One request: `body` None → GET, Some → PUT with that body (empty string: no body).
    fn request(
        &self,
        method: &'static str,
        endpoint: &str,
        body: Option<&str>,
        timeout: Duration,
    ) -> Result<String, RestError> {
        crate::http::request(
            &self.agent,
            &self.device,
            &self.base,
            method,
            endpoint,
            body,
            timeout,
        )
    }

    fn reply_err(
        &self,
        method: &'static str,
        endpoint: &str,
        expected: &str,
        body: &str,
    ) -> RestError {
        RestError::Reply {
            device: self.device.clone(),
            method,
            endpoint: endpoint.to_string(),
            expected: expected.to_string(),
            body: cut(body),
        }
    }

    /// `GET /detector/api/version/` → the API version string (e.g. `1.8.0`).
    ///
    /// # Errors
    /// [`RestError`] naming the endpoint; [`RestError::Reply`] when there is no `value`.
    pub fn version(&self) -> Result<String, RestError> {
        let ep = "/detector/api/version/";
        let text = self.request("GET", ep, None, self.timeout)?;
        serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("value").and_then(Value::as_str).map(str::to_string))
            .ok_or_else(|| self.reply_err("GET", ep, "a JSON object with a string `value`", &text))
    }

    /// GETs `<module>/…/<task>/<param>` and returns its `value` (any JSON type).
    ///
    /// # Errors
    /// [`RestError`] naming the endpoint; [`RestError::Reply`] when the body is not a JSON
    /// object with `value`.
    pub fn get(&self, module: Module, task: &str, param: &str) -> Result<Value, RestError> {
        let ep = Self::path(module, task, param);
        let text = self.request("GET", &ep, None, self.timeout)?;
        serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|mut v| v.get_mut("value").map(Value::take))
            .ok_or_else(|| self.reply_err("GET", &ep, "a JSON object with `value`", &text))
    }

    /// GETs a config parameter's `value` (`<module>/api/1.8.0/config/<param>`).
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn get_config(&self, module: Module, param: &str) -> Result<Value, RestError> {
        self.get(module, "config", param)
    }

    /// PUTs `{"value": value}` to a config parameter, then GETs it and checks it reads back
    /// (numbers within a relative 1e-6, [`same_value`]). Returns the value read back.
    ///
    /// # Errors
    /// [`RestError`] of the PUT or the GET (naming its endpoint);
    /// [`RestError::Mismatch`] with both values when the read-back differs.
    pub fn put_config(
        &self,
        module: Module,
        param: &str,
        value: impl Into<Value>,
    ) -> Result<Value, RestError> {
        let value = value.into();
        let ep = Self::path(module, "config", param);
        let body = serde_json::json!({ "value": value }).to_string();
        self.request("PUT", &ep, Some(&body), self.timeout)?;
        let back = self.get_config(module, param)?;
        if !same_value(&value, &back) {
            return Err(RestError::Mismatch {
                device: self.device.clone(),
                endpoint: ep,
                requested: value.to_string(),
                read_back: back.to_string(),
            });
        }
        Ok(back)
    }

    /// `GET /detector/…/config/<param>`.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn detector_config(&self, param: &str) -> Result<Value, RestError> {
        self.get_config(Module::Detector, param)
    }

    /// `PUT /detector/…/config/<param>` with read-back (e.g. `trigger_mode` = `"exte"`,
    /// `ntrigger` = 256, `count_time` = 0.001 s).
    ///
    /// # Errors
    /// As [`put_config`](Self::put_config).
    pub fn set_detector_config(
        &self,
        param: &str,
        value: impl Into<Value>,
    ) -> Result<Value, RestError> {
        self.put_config(Module::Detector, param, value)
    }

    /// Sends a detector command; returns the `sequence id` if the reply has one (`arm`,
    /// `disarm`, `abort`, `cancel` do, §2.2). `value` is sent as `{"value": …}` (the
    /// exposure time in s for `trigger` in `inte` mode), otherwise the body is empty.
    ///
    /// # Errors
    /// [`RestError`] naming the command's endpoint.
    pub fn command(&self, cmd: Command, value: Option<Value>) -> Result<Option<u64>, RestError> {
        let ep = Self::path(Module::Detector, "command", cmd.as_str());
        let body = value.map_or(String::new(), |v| {
            serde_json::json!({ "value": v }).to_string()
        });
        let timeout = if cmd == Command::Arm {
            self.arm_timeout
        } else {
            self.timeout
        };
        let text = self.request("PUT", &ep, Some(&body), timeout)?;
        Ok(serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("sequence id").and_then(Value::as_u64)))
    }

    /// Arms: the DCU sends the global header (v1 `dheader-1.0`, v2 `start`) and returns
    /// the series id it will carry.
    ///
    /// # Errors
    /// [`RestError`] of the command; [`RestError::Reply`] when the reply has no
    /// `sequence id`.
    pub fn arm(&self) -> Result<u64, RestError> {
        self.arm_within(self.arm_timeout)
    }

    /// [`arm`](Self::arm) with its answer awaited at most `timeout` (the caller's arm
    /// deadline, so that a DCU that never answers fails the arm when the caller said).
    ///
    /// # Errors
    /// As [`arm`](Self::arm); [`RestError::Timeout`] naming `timeout`.
    pub fn arm_within(&self, timeout: Duration) -> Result<u64, RestError> {
        let ep = Self::path(Module::Detector, "command", "arm");
        let text = self.request("PUT", &ep, Some(""), timeout)?;
        serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("sequence id").and_then(Value::as_u64))
            .ok_or_else(|| {
                self.reply_err(
                    "PUT",
                    &ep,
                    "a JSON object with an integer `sequence id`",
                    "(none)",
                )
            })
    }

    /// Software trigger; `count_time_s` is the exposure for `inte` mode (else `None`).
    ///
    /// # Errors
    /// [`RestError`] of the command.
    pub fn trigger(&self, count_time_s: Option<f64>) -> Result<(), RestError> {
        self.command(Command::Trigger, count_time_s.map(Value::from))
            .map(|_| ())
    }

    /// Ends the armed series (the DCU sends the end of series).
    ///
    /// # Errors
    /// [`RestError`] of the command.
    pub fn disarm(&self) -> Result<Option<u64>, RestError> {
        self.command(Command::Disarm, None)
    }

    /// Stops the series at once.
    ///
    /// # Errors
    /// [`RestError`] of the command.
    pub fn abort(&self) -> Result<Option<u64>, RestError> {
        self.command(Command::Abort, None)
    }

    /// Stops the series after the current trigger.
    ///
    /// # Errors
    /// [`RestError`] of the command.
    pub fn cancel(&self) -> Result<Option<u64>, RestError> {
        self.command(Command::Cancel, None)
    }

    /// `GET /detector/…/status/state`.
    ///
    /// # Errors
    /// As [`get`](Self::get); [`RestError::Reply`] when `value` is not a string.
    pub fn state(&self) -> Result<DetectorState, RestError> {
        let v = self.get(Module::Detector, "status", "state")?;
        v.as_str().map(DetectorState::parse).ok_or_else(|| {
            self.reply_err(
                "GET",
                &Self::path(Module::Detector, "status", "state"),
                "a string `value`",
                &v.to_string(),
            )
        })
    }

    /// `GET /detector/…/status/error`: the DCU's list of error messages (empty when none).
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn errors(&self) -> Result<Vec<String>, RestError> {
        let v = self.get(Module::Detector, "status", "error")?;
        Ok(match v {
            Value::Array(a) => a
                .into_iter()
                .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_string))
                .collect(),
            Value::Null => Vec::new(),
            Value::String(s) if s.is_empty() => Vec::new(),
            other => vec![
                other
                    .as_str()
                    .map_or_else(|| other.to_string(), str::to_string),
            ],
        })
    }

    /// Enables or disables the stream (`stream/config/mode` = `enabled`/`disabled`).
    ///
    /// # Errors
    /// As [`put_config`](Self::put_config).
    pub fn set_stream_enabled(&self, enabled: bool) -> Result<(), RestError> {
        let v = if enabled { "enabled" } else { "disabled" };
        self.put_config(Module::Stream, "mode", v).map(|_| ())
    }

    /// Sets `stream/config/header_detail` (`all`, `basic`, `none`).
    ///
    /// # Errors
    /// As [`put_config`](Self::put_config).
    pub fn set_header_detail(&self, detail: super::stream::HeaderDetail) -> Result<(), RestError> {
        self.put_config(Module::Stream, "header_detail", detail.as_str())
            .map(|_| ())
    }

    /// Sets `stream/config/format` (`legacy` = v1, `cbor` = v2).
    ///
    /// # Errors
    /// As [`put_config`](Self::put_config).
    pub fn set_stream_format(&self, format: StreamFormat) -> Result<(), RestError> {
        self.put_config(Module::Stream, "format", format.as_str())
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_compare_with_float_tolerance() {
        assert!(same_value(
            &Value::from(0.001),
            &Value::from(0.0010000000474974513)
        ));
        assert!(!same_value(&Value::from(0.001), &Value::from(0.002)));
        assert!(same_value(&Value::from(256), &Value::from(256.0)));
        assert!(same_value(&Value::from("exte"), &Value::from("exte")));
        assert!(!same_value(&Value::from("exte"), &Value::from("exts")));
        assert!(same_value(&Value::from(0), &Value::from(0)));
    }
}
