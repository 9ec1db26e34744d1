//! Plain HTTP/1.1 JSON requests for the detectors' REST APIs (DECTRIS SIMPLON, protocols.md
//! §2.2; ASI Serval, §3.6), through `ureq` without TLS (docs/decisions/0003): every call with
//! a deadline, and one error type naming the device, the method, the endpoint and, for a
//! non-2xx answer, the HTTP status and the body (cut to 500 characters).

use std::time::Duration;
use stemflow_core::devices::DeviceError;

/// Longest reply body kept in an error message, characters.
const BODY_IN_ERROR: usize = 500;

/// Errors of a REST client. Each names the device (`dectris @ host:port`, `serval @
/// host:port`), the method and the endpoint path.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// No complete answer within the deadline.
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
    /// The request could not be made (connection refused, reset, malformed HTTP).
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
    /// The server answered with a non-2xx status.
    #[error("{device}: {method} {endpoint}: HTTP status {status}, expected 2xx; body: {body}")]
    Status {
        /// Device name.
        device: String,
        /// HTTP method.
        method: &'static str,
        /// Endpoint path.
        endpoint: String,
        /// The HTTP status code.
        status: u16,
        /// The reply body (cut to 500 characters).
        body: String,
    },
    /// A 2xx reply whose body is not what the API documents.
    #[error("{device}: {method} {endpoint}: expected {expected}; body: {body}")]
    Reply {
        /// Device name.
        device: String,
        /// HTTP method.
        method: &'static str,
        /// Endpoint path.
        endpoint: String,
        /// What the body should have been.
        expected: String,
        /// The reply body (cut to 500 characters).
        body: String,
    },
    /// A config value read back after a PUT differs from the value put.
    #[error("{device}: PUT {endpoint}: requested {requested}, read back {read_back}")]
    Mismatch {
        /// Device name.
        device: String,
        /// Endpoint path.
        endpoint: String,
        /// The value put (JSON).
        requested: String,
        /// The value read back (JSON).
        read_back: String,
    },
}

impl RestError {
    /// The HTTP status of a [`RestError::Status`].
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl RestError {
    /// This failure as the device error of the step `what` (e.g. `arm`): a timeout as
    /// [`DeviceError::Timeout`], a refusal (non-2xx) or a value read back otherwise as
    /// [`DeviceError::Rejected`] with the HTTP status and body, anything else as
    /// [`DeviceError::Protocol`].
    pub(crate) fn into_device_error(self, device: &str, what: &str) -> DeviceError {
        match self {
            Self::Timeout {
                method,
                endpoint,
                timeout_s,
                ..
            } => DeviceError::Timeout {
                device: device.to_string(),
                what: format!("the answer to {method} {endpoint} ({what})"),
                waited_s: timeout_s,
            },
            Self::Status {
                method,
                endpoint,
                status,
                body,
                ..
            } => DeviceError::Rejected {
                device: device.to_string(),
                setting: format!("{method} {endpoint}"),
                requested: "HTTP 2xx".into(),
                actual: format!("HTTP status {status}, body: {body}"),
            },
            Self::Mismatch {
                endpoint,
                requested,
                read_back,
                ..
            } => DeviceError::Rejected {
                device: device.to_string(),
                setting: endpoint,
                requested,
                actual: format!("{read_back} read back"),
            },
            other => DeviceError::Protocol {
                device: device.to_string(),
                expected: format!("a valid REST answer during {what}"),
                observed: other.to_string(),
            },
        }
    }
}

/// A detector setting given as text (a profile's or the command line's `extra` entry) as
/// JSON: a number, bool, … if it parses as JSON, else a string.
pub(crate) fn json_value(v: &str) -> serde_json::Value {
    serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_string()))
}

/// `s` cut to [`BODY_IN_ERROR`] characters (an ellipsis marks the cut).
pub(crate) fn cut(s: &str) -> String {
    if s.chars().count() <= BODY_IN_ERROR {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(BODY_IN_ERROR).collect();
        t.push('…');
        t
    }
}

/// One request to `base` + `endpoint` within `timeout`: `body` None → GET, Some → PUT with
/// that JSON body (an empty string: no body). Returns the body of a 2xx answer (at most
/// 16 MiB).
///
/// # Errors
/// [`RestError::Timeout`], [`RestError::Transport`] (refused, reset, malformed HTTP),
/// [`RestError::Status`] for a non-2xx answer; each names `device`.
pub(crate) fn request(
    agent: &ureq::Agent,
    device: &str,
    base: &str,
    method: &'static str,
    endpoint: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<String, RestError> {
    let url = format!("{base}{endpoint}");
    let result = match body {
        None => agent
            .get(&url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .call(),
        Some("") => agent
            .put(&url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .send_empty(),
        Some(b) => agent
            .put(&url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .header("Content-Type", "application/json")
            .send(b),
    };
    let timed_out = || RestError::Timeout {
        device: device.to_string(),
        method,
        endpoint: endpoint.to_string(),
        timeout_s: timeout.as_secs_f64(),
    };
    let transport = |e: ureq::Error| match e {
        ureq::Error::Timeout(_) => timed_out(),
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => timed_out(),
        other => RestError::Transport {
            device: device.to_string(),
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
        return Err(RestError::Status {
            device: device.to_string(),
            method,
            endpoint: endpoint.to_string(),
            status,
            body: cut(&text),
        });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_bodies_are_cut() {
        let s = "x".repeat(2000);
        assert_eq!(cut(&s).chars().count(), BODY_IN_ERROR + 1);
        assert_eq!(cut("short"), "short");
    }
}
