//! [`MerlinControl`]: the client of the Merlin control port, TCP 6341 (protocols.md §1.3).
//!
//! Request/response, both MPX-framed (§1.2): `SET,<VAR>,<value>` → `SET,<VAR>,<status>`,
//! `GET,<VAR>` → `GET,<VAR>,<value>,<status>`, `CMD,<CMD>` → `CMD,<CMD>,<status>`. Every
//! reply is awaited with a deadline; a non-zero status is an error naming the device, the
//! request, the code and its meaning. We omit LiberTEM's dummy `,0` on GET and CMD.
//!
//! The LiberTEM simulator's replies announce a length one byte short (it does not count the
//! comma, §1.2, §4.1). A real reply's last field is the status, so after reading `length - 1`
//! payload bytes a real reply is complete, while the simulator's stops right after the comma
//! before its status: only then do we read the one byte more. No reply ever waits for bytes
//! that are not coming.

use super::mpx::{self, MPX_PREFIX_LEN, MpxError, MpxPrefix};
use super::settings::{MerlinSettings, SettingsError};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Largest control reply accepted, bytes (replies are tens of bytes; a GET of a long path
/// is still far below this).
const MAX_REPLY_LENGTH: u64 = 1 << 20;

/// Commands (`CMD,<name>`) stemflow uses (§1.3).
pub mod commands {
    /// Arm: the HDR is sent on the data port at this point.
    pub const START_ACQUISITION: &str = "STARTACQUISITION";
    /// Software trigger (with `TRIGGERSTART` 5).
    pub const SOFT_TRIGGER: &str = "SOFTTRIGGER";
    /// Stop a running acquisition.
    pub const STOP_ACQUISITION: &str = "STOPACQUISITION";
    /// Abort (reported as needed to reset before the next acquisition on some versions).
    pub const ABORT: &str = "ABORT";
}

/// Meaning of a reply status code (§1.3; sources disagree on 1).
pub fn status_meaning(code: u32) -> &'static str {
    match code {
        0 => "OK",
        1 => "busy (LiberTEM) / unknown error (ADMerlin)",
        2 => "unrecognised command or variable",
        3 => "parameter out of range",
        4 => "busy (ADMerlin)",
        _ => "unknown status code",
    }
}

/// Errors on the control channel. Every variant names the device; those about a request
/// name it as sent (`SET,COUNTERDEPTH,7`).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The TCP connection could not be made within the deadline.
    #[error("{device}: cannot connect to control port {addr} within {timeout_s:.3} s: {source}")]
    Connect {
        /// Device name.
        device: String,
        /// Address tried.
        addr: SocketAddr,
        /// Deadline, s.
        timeout_s: f64,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Sending or receiving failed.
    #[error("{device}: I/O error during `{request}`: {source}")]
    Io {
        /// Device name.
        device: String,
        /// The request.
        request: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No complete reply within the deadline.
    #[error("{device}: no reply to `{request}` within {waited_s:.3} s ({received} bytes received)")]
    Timeout {
        /// Device name.
        device: String,
        /// The request.
        request: String,
        /// How long we waited, s.
        waited_s: f64,
        /// Reply bytes that did arrive.
        received: usize,
    },
    /// The peer closed the connection before the reply was complete.
    #[error(
        "{device}: connection closed while waiting for the reply to `{request}` ({received} bytes received)"
    )]
    Closed {
        /// Device name.
        device: String,
        /// The request.
        request: String,
        /// Reply bytes that did arrive.
        received: usize,
    },
    /// The reply's MPX prefix is malformed.
    #[error("{device}: reply to `{request}`: {source}")]
    Mpx {
        /// Device name.
        device: String,
        /// The request.
        request: String,
        /// The cause.
        #[source]
        source: MpxError,
    },
    /// The reply does not have the shape the request calls for.
    #[error("{device}: reply to `{request}`: expected {expected}, observed `{observed}`")]
    Reply {
        /// Device name.
        device: String,
        /// The request.
        request: String,
        /// The reply shape required.
        expected: String,
        /// The reply payload, escaped.
        observed: String,
    },
    /// The device refused the request (non-zero status).
    #[error("{device}: `{request}` refused with status {code} ({meaning})")]
    Status {
        /// Device name.
        device: String,
        /// The request.
        request: String,
        /// Status code.
        code: u32,
        /// Its meaning (§1.3).
        meaning: &'static str,
    },
    /// A setting read back differs from what was set.
    #[error("{device}: `{setting}` read back as `{actual}`, requested `{requested}`")]
    Mismatch {
        /// Device name.
        device: String,
        /// The variable.
        setting: String,
        /// Value sent.
        requested: String,
        /// Value read back.
        actual: String,
    },
    /// The settings are invalid; nothing was sent.
    #[error("{device}: {source}")]
    Settings {
        /// Device name.
        device: String,
        /// The cause.
        #[source]
        source: SettingsError,
    },
}

/// A parsed control reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// `GET`, `SET` or `CMD`.
    pub kind: String,
    /// The variable or command name.
    pub name: String,
    /// The value (GET only).
    pub value: Option<String>,
    /// The status code (0 = OK).
    pub status: u32,
}

/// Parses a reply payload (after the MPX prefix) to a request of `kind` (`GET`, `SET`,
/// `CMD`) for `name`. A GET value may itself contain commas.
///
/// # Errors
/// A description of the expected shape when the payload does not match.
pub fn parse_reply(payload: &str, kind: &str, name: &str) -> Result<Reply, String> {
    let fields: Vec<&str> = payload
        .trim_end_matches(['\0', '\r', '\n'])
        .split(',')
        .collect();
    let min = if kind == "GET" { 4 } else { 3 };
    let shape = || {
        if kind == "GET" {
            format!("`GET,{name},<value>,<status>`")
        } else {
            format!("`{kind},{name},<status>`")
        }
    };
    if fields.len() < min || fields[0].trim() != kind || fields[1].trim() != name {
        return Err(shape());
    }
    if kind != "GET" && fields.len() != 3 {
        return Err(shape());
    }
    let status = fields[fields.len() - 1]
        .trim()
        .parse::<u32>()
        .map_err(|_| format!("{} with a numeric status", shape()))?;
    let value = (kind == "GET").then(|| fields[2..fields.len() - 1].join(",").trim().to_string());
    Ok(Reply {
        kind: kind.to_string(),
        name: name.to_string(),
        value,
        status,
    })
}

/// A connection to a Merlin control port. Lifecycle: `connect` once (Connecting), then
/// `configure_acquisition` (Configuring), `cmd(STARTACQUISITION)` (arm), `cmd(SOFTTRIGGER)`
/// when soft-triggered, `cmd(STOPACQUISITION)` on disarm. Requests are sequential.
#[derive(Debug)]
pub struct MerlinControl {
    device: String,
    stream: TcpStream,
    reply_timeout: Duration,
}

impl MerlinControl {
    /// Connects to `addr` within `connect_timeout`; every later reply is awaited at most
    /// `reply_timeout`. The device is named `merlin @ <addr>`.
    ///
    /// # Errors
    /// [`ControlError::Connect`] when the port does not accept in time.
    pub fn connect(
        addr: SocketAddr,
        connect_timeout: Duration,
        reply_timeout: Duration,
    ) -> Result<Self, ControlError> {
        let device = format!("merlin @ {addr}");
        let connect_err = |source| ControlError::Connect {
            device: device.clone(),
            addr,
            timeout_s: connect_timeout.as_secs_f64(),
            source,
        };
        let stream =
            TcpStream::connect_timeout(&addr, connect_timeout.max(Duration::from_millis(1)))
                .map_err(connect_err)?;
        // Requests are tiny and latency-bound.
        stream.set_nodelay(true).map_err(connect_err)?;
        Ok(Self {
            device,
            stream,
            reply_timeout,
        })
    }

    /// Renames the device in errors (e.g. `merlin-quad @ 10.0.0.2:6341`).
    pub fn with_device(mut self, device: impl Into<String>) -> Self {
        self.device = device.into();
        self
    }

    /// The device name used in errors.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Changes the reply deadline (e.g. longer for a command that takes a while).
    pub fn set_reply_timeout(&mut self, timeout: Duration) {
        self.reply_timeout = timeout;
    }

    /// `SET,<name>,<value>`.
    ///
    /// # Errors
    /// [`ControlError::Status`] for a non-zero status; transport, deadline and reply-shape
    /// errors.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), ControlError> {
        self.request("SET", name, Some(value)).map(|_| ())
    }

    /// `GET,<name>` → the value as reported.
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub fn get(&mut self, name: &str) -> Result<String, ControlError> {
        self.request("GET", name, None)
            .map(|r| r.value.unwrap_or_default())
    }

    /// `CMD,<name>` (see [`commands`]).
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub fn cmd(&mut self, name: &str) -> Result<(), ControlError> {
        self.request("CMD", name, None).map(|_| ())
    }

    /// Sends every setting of `settings` (SET, in [`MerlinSettings::to_variables`] order),
    /// then reads each back (GET) and returns variable → value as reported. Frame counts,
    /// counter depth and trigger codes must read back numerically equal; times may differ
    /// (Merlin lengthens the period to fit the readout) and are returned as read.
    ///
    /// # Errors
    /// [`ControlError::Settings`] before anything is sent for invalid settings;
    /// [`ControlError::Mismatch`] naming the variable, requested and actual values; any
    /// request error.
    pub fn configure_acquisition(
        &mut self,
        settings: &MerlinSettings,
    ) -> Result<BTreeMap<String, String>, ControlError> {
        settings
            .validate()
            .map_err(|source| ControlError::Settings {
                device: self.device.clone(),
                source,
            })?;
        let vars = settings.to_variables();
        for (name, value) in &vars {
            self.set(name, value)?;
        }
        let mut read_back = BTreeMap::new();
        for (name, requested) in &vars {
            let actual = self.get(name)?;
            let exact = matches!(
                *name,
                "NUMFRAMESTOACQUIRE"
                    | "NUMFRAMESPERTRIGGER"
                    | "COUNTERDEPTH"
                    | "TRIGGERSTART"
                    | "TRIGGERSTOP"
            );
            if exact && !numerically_equal(requested, &actual) {
                return Err(ControlError::Mismatch {
                    device: self.device.clone(),
                    setting: name.to_string(),
                    requested: requested.clone(),
                    actual,
                });
            }
            read_back.insert(name.to_string(), actual);
        }
        Ok(read_back)
    }

    /// Sends `<kind>,<name>[,<value>]` and awaits the matching reply.
    fn request(
        &mut self,
        kind: &str,
        name: &str,
        value: Option<&str>,
    ) -> Result<Reply, ControlError> {
        let request = match value {
            Some(v) => format!("{kind},{name},{v}"),
            None => format!("{kind},{name}"),
        };
        self.discard_stale();
        let message =
            mpx::encode_message(request.as_bytes()).map_err(|source| ControlError::Mpx {
                device: self.device.clone(),
                request: request.clone(),
                source,
            })?;
        self.stream
            .write_all(&message)
            .map_err(|source| ControlError::Io {
                device: self.device.clone(),
                request: request.clone(),
                source,
            })?;
        let payload = self.read_reply(&request)?;
        let text: String = payload.iter().map(|b| char::from(*b)).collect();
        let reply = parse_reply(&text, kind, name).map_err(|expected| ControlError::Reply {
            device: self.device.clone(),
            request: request.clone(),
            expected,
            observed: mpx::escape_bytes(&payload),
        })?;
        if reply.status != 0 {
            return Err(ControlError::Status {
                device: self.device.clone(),
                request,
                code: reply.status,
                meaning: status_meaning(reply.status),
            });
        }
        Ok(reply)
    }

    /// Drops bytes already waiting on the socket (a late reply to a request that timed out)
    /// so they are not taken for the next reply.
    fn discard_stale(&mut self) {
        if self.stream.set_nonblocking(true).is_err() {
            return;
        }
        let mut scratch = [0u8; 256];
        while let Ok(n) = self.stream.read(&mut scratch) {
            if n == 0 {
                break;
            }
            tracing::warn!(device = %self.device, bytes = n, "discarded stale control reply bytes");
        }
        let _ = self.stream.set_nonblocking(false);
    }

    /// Reads one reply payload (after the 15-byte prefix) within the reply deadline.
    fn read_reply(&mut self, request: &str) -> Result<Vec<u8>, ControlError> {
        let deadline = Instant::now() + self.reply_timeout;
        let mut prefix = [0u8; MPX_PREFIX_LEN];
        self.read_exact_by(&mut prefix, deadline, request, 0)?;
        let p =
            MpxPrefix::parse(&prefix, MAX_REPLY_LENGTH).map_err(|source| ControlError::Mpx {
                device: self.device.clone(),
                request: request.to_string(),
                source,
            })?;
        let mut payload = vec![0u8; p.payload_len()];
        self.read_exact_by(&mut payload, deadline, request, MPX_PREFIX_LEN)?;
        if payload.last().is_none_or(|b| *b == b',') {
            // The LiberTEM simulator's length does not count the comma: its status byte is
            // still to come (§1.2 quirk). A real reply never ends with a comma.
            let mut one = [0u8; 1];
            self.read_exact_by(&mut one, deadline, request, MPX_PREFIX_LEN + payload.len())?;
            payload.push(one[0]);
        }
        Ok(payload)
    }

    /// Fills `buf` or fails at `deadline`; `before` counts reply bytes already read (for
    /// the error message).
    fn read_exact_by(
        &mut self,
        buf: &mut [u8],
        deadline: Instant,
        request: &str,
        before: usize,
    ) -> Result<(), ControlError> {
        let started = deadline - self.reply_timeout;
        let mut got = 0;
        while got < buf.len() {
            let now = Instant::now();
            if now >= deadline {
                return Err(ControlError::Timeout {
                    device: self.device.clone(),
                    request: request.to_string(),
                    waited_s: now.duration_since(started).as_secs_f64(),
                    received: before + got,
                });
            }
            let io_err = |source| ControlError::Io {
                device: self.device.clone(),
                request: request.to_string(),
                source,
            };
            self.stream
                .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))
                .map_err(io_err)?;
            match self.stream.read(&mut buf[got..]) {
                Ok(0) => {
                    return Err(ControlError::Closed {
                        device: self.device.clone(),
                        request: request.to_string(),
                        received: before + got,
                    });
                }
                Ok(n) => got += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        Ok(())
    }
}

/// True when both parse as numbers and are equal (`"12"` = `"12.0"`), or are the same text.
fn numerically_equal(a: &str, b: &str) -> bool {
    match (a.trim().parse::<f64>(), b.trim().parse::<f64>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a.trim() == b.trim(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_reply_shapes() {
        assert_eq!(
            parse_reply("GET,IMAGEX,256,0", "GET", "IMAGEX").unwrap(),
            Reply {
                kind: "GET".into(),
                name: "IMAGEX".into(),
                value: Some("256".into()),
                status: 0
            }
        );
        let r = parse_reply("GET,FILEDIRECTORY,C:\\a,b,0", "GET", "FILEDIRECTORY").unwrap();
        assert_eq!(r.value.as_deref(), Some("C:\\a,b"));
        assert_eq!(
            parse_reply("SET,COUNTERDEPTH,3", "SET", "COUNTERDEPTH")
                .unwrap()
                .status,
            3
        );
        assert_eq!(
            parse_reply("CMD,SOFTTRIGGER,0\r\n", "CMD", "SOFTTRIGGER")
                .unwrap()
                .status,
            0
        );
        assert!(parse_reply("SET,OTHER,0", "SET", "COUNTERDEPTH").is_err());
        assert!(parse_reply("SET,COUNTERDEPTH,", "SET", "COUNTERDEPTH").is_err());
        assert!(parse_reply("GET,IMAGEX,0", "GET", "IMAGEX").is_err());
    }

    #[test]
    fn status_table_and_numeric_compare() {
        assert_eq!(status_meaning(3), "parameter out of range");
        assert_eq!(status_meaning(9), "unknown status code");
        assert!(numerically_equal("12", "12.000"));
        assert!(!numerically_equal("12", "6"));
        assert!(!numerically_equal("12", "undef"));
    }
}
