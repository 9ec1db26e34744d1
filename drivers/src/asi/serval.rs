//! [`ServalClient`]: Serval's HTTP REST API, the detector server of ASI Timepix3 cameras
//! (protocols.md §3.6; Serval 3.x–4.1 field names as read from EPICS ADTimePix3 and
//! LiberTEM-rs `serval-client`). JSON bodies; every call has a deadline; errors name the
//! device (`serval @ host:port`), the method, the endpoint and the server's answer.
//!
//! `/detector/config` is PUT whole: the client reads the object, changes the given keys,
//! PUTs it back and reads it again, failing when a changed value did not take.

use serde_json::{Map, Value};
use std::fmt;
use std::time::Duration;

/// Longest reply body kept in an error message, characters.
const BODY_IN_ERROR: usize = 500;

/// Errors of the Serval client; each names the device, method and endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ServalError {
    /// No answer within the deadline.
    #[error("{device}: {method} {endpoint}: no answer within {timeout_s:.3} s")]
    Timeout {
        /// Device name.
        device: String,
        /// HTTP method.
        method: &'static str,
        /// Endpoint path.
        endpoint: String,
        /// The deadline, s.
        timeout_s: f64,
    },
    /// The request could not be made (refused, reset, malformed HTTP).
    #[error("{device}: {method} {endpoint}: {detail}")]
    Transport {
        /// Device name.
        device: String,
        /// HTTP method.
        method: &'static str,
        /// Endpoint path.
        endpoint: String,
        /// What failed.
        detail: String,
    },
    /// A non-2xx answer.
    #[error("{device}: {method} {endpoint}: HTTP status {status}, expected 2xx; body: {body}")]
    Status {
        /// Device name.
        device: String,
        /// HTTP method.
        method: &'static str,
        /// Endpoint path.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// The body (cut to 500 characters).
        body: String,
    },
    /// A 2xx answer that is not the JSON the API documents.
    #[error("{device}: {method} {endpoint}: expected {expected}; body: {body}")]
    Reply {
        /// Device name.
        device: String,
        /// HTTP method.
        method: &'static str,
        /// Endpoint path.
        endpoint: String,
        /// What was expected.
        expected: String,
        /// The body (cut).
        body: String,
    },
    /// A value read back after a PUT differs from the one put.
    #[error("{device}: PUT {endpoint}: {key} requested {requested}, read back {read_back}")]
    Mismatch {
        /// Device name.
        device: String,
        /// Endpoint path.
        endpoint: String,
        /// The key.
        key: String,
        /// Value put (JSON).
        requested: String,
        /// Value read back (JSON).
        read_back: String,
    },
}

impl ServalError {
    /// The HTTP status of a [`ServalError::Status`].
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

fn cut(s: &str) -> String {
    if s.chars().count() <= BODY_IN_ERROR {
        return s.to_string();
    }
    let mut c: String = s.chars().take(BODY_IN_ERROR).collect();
    c.push('…');
    c
}

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
        let url = format!("{}{endpoint}", self.base);
        let result = match body {
            None => self.agent.get(&url).call(),
            Some(b) => self
                .agent
                .put(&url)
                .header("Content-Type", "application/json")
                .send(b.to_string()),
        };
        let transport = |e: ureq::Error| match e {
            ureq::Error::Timeout(_) => ServalError::Timeout {
                device: self.device.clone(),
                method,
                endpoint: endpoint.to_string(),
                timeout_s: self.timeout.as_secs_f64(),
            },
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                ServalError::Timeout {
                    device: self.device.clone(),
                    method,
                    endpoint: endpoint.to_string(),
                    timeout_s: self.timeout.as_secs_f64(),
                }
            }
            other => ServalError::Transport {
                device: self.device.clone(),
                method,
                endpoint: endpoint.to_string(),
                detail: other.to_string(),
            },
        };
        let mut resp = result.map_err(transport)?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(16 << 20)
            .read_to_string()
            .map_err(transport)?;
        if !(200..300).contains(&status) {
            return Err(ServalError::Status {
                device: self.device.clone(),
                method,
                endpoint: endpoint.to_string(),
                status,
                body: cut(&text),
            });
        }
        Ok(text)
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
                    endpoint: endpoint.to_string(),
                    key: k.clone(),
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
    fn numbers_compare_with_tolerance_and_long_bodies_are_cut() {
        assert!(same(&Value::from(0.001), &serde_json::json!(1e-3)));
        assert!(same(&Value::from(5), &Value::from(5.0)));
        assert!(!same(
            &Value::from("PEXSTART_NEXSTOP"),
            &Value::from("CONTINUOUS")
        ));
        assert_eq!(cut(&"x".repeat(600)).chars().count(), 501);
    }
}
