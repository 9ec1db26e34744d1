//! [`ServalClient`]: Serval's HTTP REST API, the detector server of ASI Timepix3 cameras
//! (protocols.md §3.6; Serval 3.x–4.1 field names as read from EPICS ADTimePix3 and
//! LiberTEM-rs `serval-client`). JSON bodies; every call has a deadline; errors name the
//! device (`serval @ host:port`), the method, the endpoint and the server's answer.
//!
//! `/detector/config` is PUT whole: the client reads the object, changes the given keys,
//! PUTs it back and reads it again, failing when a changed value did not take.

pub use crate::http::RestError;
use crate::http::cut;
use serde_json::{Map, Value};
use std::fmt;
use std::time::Duration;

/// Errors of the Serval client: the REST error of every detector API (names the device
/// `serval @ host:port`, the method, the endpoint; HTTP status and body for a refusal).
pub type ServalError = RestError;

/// Whether two JSON values are the same setting (numbers within 1e-9 relative, as Serval
/// may print floats differently).
fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1e-12),
        _ => a == b,
    }
}

/// A Serval REST client. Cheap to clone.
#[derive(Clone)]
pub struct ServalClient {
    device: String,
    base: String,
    agent: ureq::Agent,
    timeout: Duration,
}

impl fmt::Debug for ServalClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServalClient")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ServalClient {
    /// A client for Serval at `host:port` (default port 8080); `timeout` bounds every call.
    pub fn new(host: &str, port: u16, timeout: Duration) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Self {
            device: format!("serval @ {host}:{port}"),
            base: format!("http://{host}:{port}"),
            agent,
            timeout,
        }
    }

    /// The device name used in errors.
    pub fn device(&self) -> &str {
        &self.device
    }

    fn request(
        &self,
        method: &'static str,
        endpoint: &str,
        body: Option<&Value>,
    ) -> Result<String, ServalError> {
        let body = body.map(Value::to_string);
        crate::http::request(
            &self.agent,
            &self.device,
            &self.base,
            method,
            endpoint,
            body.as_deref(),
            self.timeout,
        )
    }

    fn get_json(&self, endpoint: &str) -> Result<Value, ServalError> {
        let text = self.request("GET", endpoint, None)?;
        serde_json::from_str(&text).map_err(|_| ServalError::Reply {
            device: self.device.clone(),
            method: "GET",
            endpoint: endpoint.to_string(),
            expected: "a JSON document".into(),
            body: cut(&text),
        })
    }

    /// `GET /dashboard`: server build, disk space, detector type; a liveness check.
    ///
    /// # Errors
    /// [`ServalError`] (timeout, refused, non-2xx, not JSON).
    pub fn dashboard(&self) -> Result<Value, ServalError> {
        self.get_json("/dashboard")
    }

    /// `GET /detector/info`: chips, pixel count, `MpxType` (TPX3 = 6), timer limits.
    ///
    /// # Errors
    /// As [`dashboard`](Self::dashboard).
    pub fn detector_info(&self) -> Result<Value, ServalError> {
        self.get_json("/detector/info")
    }

    /// `GET /detector/layout`: the assembled frame's `Width` and `Height` (pixels).
    ///
    /// # Errors
    /// As [`dashboard`](Self::dashboard).
    pub fn detector_layout(&self) -> Result<Value, ServalError> {
        self.get_json("/detector/layout")
    }

    /// `GET /detector/config`.
    ///
    /// # Errors
    /// As [`dashboard`](Self::dashboard).
    pub fn detector_config(&self) -> Result<Value, ServalError> {
        self.get_json("/detector/config")
    }

    /// Changes `changes` in `/detector/config` (read whole, change, PUT whole, read back)
    /// and returns the configuration read back.
    ///
    /// # Errors
    /// [`ServalError::Mismatch`] when a changed key reads back otherwise; a non-object
    /// configuration as [`ServalError::Reply`]; others as [`dashboard`](Self::dashboard).
    pub fn set_detector_config(&self, changes: &Map<String, Value>) -> Result<Value, ServalError> {
        self.put_whole("/detector/config", changes)
    }

    /// `GET /measurement/config` (Serval 4.1: `Stem.Scan` and `Stem.VirtualDetector`).
    ///
    /// # Errors
    /// As [`dashboard`](Self::dashboard); HTTP 404 on servers without it.
    pub fn measurement_config(&self) -> Result<Value, ServalError> {
        self.get_json("/measurement/config")
    }

    /// PUTs `config` to `/measurement/config` and reads it back.
    ///
    /// # Errors
    /// As [`dashboard`](Self::dashboard).
    pub fn set_measurement_config(&self, config: &Value) -> Result<Value, ServalError> {
        self.request("PUT", "/measurement/config", Some(config))?;
        self.measurement_config()
    }

    /// `GET /measurement/start`: starts a measurement with the detector configuration.
    ///
    /// # Errors
    /// As [`dashboard`](Self::dashboard) (the server's refusal as [`ServalError::Status`]).
    pub fn start(&self) -> Result<(), ServalError> {
        self.request("GET", "/measurement/start", None).map(|_| ())
    }

    /// `GET /measurement/stop`.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn stop(&self) -> Result<(), ServalError> {
        self.request("GET", "/measurement/stop", None).map(|_| ())
    }

    /// `GET /measurement`: status (`Status` such as `DA_IDLE`, `DA_RECORDING`), frame and
    /// dropped-frame counts, event rate, elapsed time.
    ///
    /// # Errors
    /// As [`dashboard`](Self::dashboard).
    pub fn measurement(&self) -> Result<Value, ServalError> {
        self.get_json("/measurement")
    }

    fn put_whole(
        &self,
        endpoint: &str,
        changes: &Map<String, Value>,
    ) -> Result<Value, ServalError> {
        let mut cfg = self.get_json(endpoint)?;
        let Some(obj) = cfg.as_object_mut() else {
            return Err(ServalError::Reply {
                device: self.device.clone(),
                method: "GET",
                endpoint: endpoint.to_string(),
                expected: "a JSON object".into(),
                body: cut(&cfg.to_string()),
            });
        };
        for (k, v) in changes {
            obj.insert(k.clone(), v.clone());
        }
        self.request("PUT", endpoint, Some(&cfg))?;
        let back = self.get_json(endpoint)?;
        for (k, v) in changes {
            let got = back.get(k).cloned().unwrap_or(Value::Null);
            if !same(v, &got) {
                return Err(ServalError::Mismatch {
                    device: self.device.clone(),
                    endpoint: format!("{endpoint} {k}"),
                    requested: v.to_string(),
                    read_back: got.to_string(),
                });
            }
        }
        Ok(back)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_compare_with_tolerance() {
        assert!(same(&Value::from(0.001), &serde_json::json!(1e-3)));
        assert!(same(&Value::from(5), &Value::from(5.0)));
        assert!(!same(
            &Value::from("PEXSTART_NEXSTOP"),
            &Value::from("CONTINUOUS")
        ));
    }
}
