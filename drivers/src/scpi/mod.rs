//! SCPI instruments (waveform generators, scan controllers, …) over TCP or a serial port.
//!
//! - [`ScpiClient`]: IEEE 488.2 message exchange with a deadline on every reply: program
//!   messages terminated by a newline, response messages read up to their newline
//!   terminator (IEEE 488.2 §7.5, §8.5), definite-length arbitrary blocks (`#<n><len><bytes>`,
//!   §8.7.9), the common commands `*IDN?`, `*RST`, `*CLS`, `*OPC?`, `*TRG`, and the error queue
//!   (`SYSTem:ERRor?`, SCPI-99 vol. 2 §21.8) read after every setting, so a setting the
//!   instrument refused is an error naming the command, the code and the instrument's text.
//! - [`ScpiAddress`]: `HOST:PORT` (raw socket, conventionally port 5025) or
//!   `serial:PATH[@BAUD]` (8 data bits, no parity, one stop bit).
//! - [`pixel_clock`]: a waveform generator as the pixel clock of a scan, implementing the
//!   core [`ScanEngine`](stemflow_core::devices::ScanEngine) trait.
//! - [`command_map`]: operation → command templates from a device's config file.
//! - [`scan_engine`], [`microscope`]: STEM scan generators and microscope columns driven
//!   through a command map, implementing the core `ScanEngine` and `Microscope` traits.

pub mod command_map;
pub mod microscope;
pub mod pixel_clock;
pub mod scan_engine;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::str::FromStr;
use std::time::{Duration, Instant};
use stemflow_core::devices::DeviceError;

pub use command_map::{CommandMap, MapError};
pub use microscope::{MappedMicroscope, MappedMicroscopeConfig};
pub use pixel_clock::{PixelClock, PixelClockConfig, PixelClockTrigger};
pub use scan_engine::{MappedScanEngine, MappedScanEngineConfig, ScanPattern};

/// Where an SCPI instrument is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScpiAddress {
    /// A raw TCP socket (`HOST:PORT`; instruments conventionally listen on 5025).
    Tcp(String),
    /// A serial port: device path and baud rate (8N1, no flow control).
    Serial {
        /// Device path, e.g. `/dev/ttyUSB0`.
        path: String,
        /// Baud rate, symbols/s.
        baud: u32,
    },
}

impl FromStr for ScpiAddress {
    type Err = String;

    /// `serial:/dev/ttyUSB0@115200` (baud defaults to 9600), otherwise `HOST:PORT`.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("serial:") {
            let (path, baud) = match rest.rsplit_once('@') {
                Some((p, b)) => (
                    p,
                    b.parse()
                        .map_err(|_| format!("`{s}`: baud rate `{b}` is not a number"))?,
                ),
                None => (rest, 9600),
            };
            if path.is_empty() {
                return Err(format!("`{s}`: no serial device path"));
            }
            return Ok(Self::Serial {
                path: path.to_string(),
                baud,
            });
        }
        if !s.contains(':') {
            return Err(format!("`{s}`: expected HOST:PORT or serial:PATH[@BAUD]"));
        }
        Ok(Self::Tcp(s.to_string()))
    }
}

impl std::fmt::Display for ScpiAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "{a}"),
            Self::Serial { path, baud } => write!(f, "serial:{path}@{baud}"),
        }
    }
}

/// SCPI errors. Every variant names the instrument (`<name> @ <address>`).
#[derive(Debug, thiserror::Error)]
pub enum ScpiError {
    /// The instrument could not be reached.
    #[error("{device}: cannot connect within {timeout_s:.1} s: {source}")]
    Connect {
        /// Instrument name.
        device: String,
        /// The deadline, s.
        timeout_s: f64,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Sending or receiving failed.
    #[error("{device}: I/O error during `{message}`: {source}")]
    Io {
        /// Instrument name.
        device: String,
        /// The program message under way.
        message: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No complete response within the deadline.
    #[error(
        "{device}: no response to `{query}` within {waited_s:.3} s ({received} bytes received)"
    )]
    Timeout {
        /// Instrument name.
        device: String,
        /// The query.
        query: String,
        /// How long we waited, s.
        waited_s: f64,
        /// Bytes of a partial response.
        received: usize,
    },
    /// The connection closed before the response was complete.
    #[error("{device}: connection closed while waiting for the response to `{query}`")]
    Closed {
        /// Instrument name.
        device: String,
        /// The query.
        query: String,
    },
    /// A response that does not have the form the query calls for.
    #[error("{device}: response to `{query}`: expected {expected}, observed `{observed}`")]
    Reply {
        /// Instrument name.
        device: String,
        /// The query.
        query: String,
        /// The form required.
        expected: String,
        /// The response (escaped).
        observed: String,
    },
    /// The instrument's error queue held errors after a program message.
    #[error(
        "{device}: `{command}` refused: error {code} \"{message}\"{}",
        if *more > 0 { format!(" (and {more} more)") } else { String::new() }
    )]
    Refused {
        /// Instrument name.
        device: String,
        /// The program message.
        command: String,
        /// The first error code (SCPI-99: negative standard codes, positive device codes).
        code: i32,
        /// The instrument's text for it.
        message: String,
        /// Further errors in the queue.
        more: usize,
    },
}

impl ScpiError {
    /// As the core device error (the orchestrator's view), keeping every number.
    pub fn into_device_error(self) -> DeviceError {
        match self {
            ScpiError::Timeout {
                device,
                query,
                waited_s,
                ..
            } => DeviceError::Timeout {
                device,
                what: format!("the response to `{query}`"),
                waited_s,
            },
            ScpiError::Refused {
                device,
                command,
                code,
                message,
                ..
            } => DeviceError::Rejected {
                device,
                setting: command,
                requested: "no error".into(),
                actual: format!("error {code} \"{message}\""),
            },
            ScpiError::Connect { device, source, .. } => DeviceError::Io {
                device,
                during: "connect".into(),
                source,
            },
            ScpiError::Io {
                device,
                message,
                source,
            } => DeviceError::Io {
                device,
                during: format!("`{message}`"),
                source,
            },
            other => {
                let device = match &other {
                    ScpiError::Closed { device, .. } | ScpiError::Reply { device, .. } => {
                        device.clone()
                    }
                    _ => String::new(),
                };
                DeviceError::Protocol {
                    device,
                    expected: "a complete SCPI response".into(),
                    observed: other.to_string(),
                }
            }
        }
    }
}

/// `*IDN?` fields (IEEE 488.2 §10.14).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Manufacturer.
    pub manufacturer: String,
    /// Model.
    pub model: String,
    /// Serial number (`0` when not reported).
    pub serial: String,
    /// Firmware revision.
    pub firmware: String,
}

/// A byte stream to an instrument with a settable read deadline.
trait Link: Read + Write + Send {
    fn set_read_deadline(&mut self, timeout: Duration) -> io::Result<()>;
}

impl Link for TcpStream {
    fn set_read_deadline(&mut self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
    }
}

/// A serial port as a [`Link`].
struct SerialLink(Box<dyn serialport::SerialPort>);

impl Read for SerialLink {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for SerialLink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl Link for SerialLink {
    fn set_read_deadline(&mut self, timeout: Duration) -> io::Result<()> {
        self.0
            .set_timeout(timeout.max(Duration::from_millis(1)))
            .map_err(io::Error::other)
    }
}

/// Errors the queue is read for at most, so an instrument that never reports `0` cannot
/// keep us reading.
const MAX_QUEUED_ERRORS: usize = 32;

/// A connected SCPI instrument.
pub struct ScpiClient {
    device: String,
    link: Box<dyn Link>,
    timeout: Duration,
    /// The error-queue query (`SYST:ERR?`), or none for devices without an error queue.
    error_query: Option<String>,
    /// Bytes received after the last response terminator.
    pending: Vec<u8>,
}

impl std::fmt::Debug for ScpiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScpiClient")
            .field("device", &self.device)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ScpiClient {
    /// Connects to `addr`; the instrument is named `<name> @ <addr>` in errors. `timeout` is
    /// the deadline for connecting and for every response.
    ///
    /// # Errors
    /// [`ScpiError::Connect`].
    pub fn connect(name: &str, addr: &ScpiAddress, timeout: Duration) -> Result<Self, ScpiError> {
        let device = format!("{name} @ {addr}");
        let connect_err = |source| ScpiError::Connect {
            device: device.clone(),
            timeout_s: timeout.as_secs_f64(),
            source,
        };
        let link: Box<dyn Link> = match addr {
            ScpiAddress::Tcp(a) => {
                let sa: SocketAddr = a
                    .to_socket_addrs()
                    .map_err(connect_err)?
                    .next()
                    .ok_or_else(|| {
                        connect_err(io::Error::new(
                            io::ErrorKind::NotFound,
                            format!("`{a}` resolves to no address"),
                        ))
                    })?;
                let s = TcpStream::connect_timeout(&sa, timeout.max(Duration::from_millis(1)))
                    .map_err(connect_err)?;
                s.set_nodelay(true).map_err(connect_err)?;
                Box::new(s)
            }
            ScpiAddress::Serial { path, baud } => {
                let port = serialport::new(path, *baud)
                    .data_bits(serialport::DataBits::Eight)
                    .parity(serialport::Parity::None)
                    .stop_bits(serialport::StopBits::One)
                    .flow_control(serialport::FlowControl::None)
                    .timeout(timeout)
                    .open()
                    .map_err(|e| connect_err(io::Error::other(e)))?;
                Box::new(SerialLink(port))
            }
        };
        Ok(Self {
            device,
            link,
            timeout,
            error_query: Some("SYST:ERR?".into()),
            pending: Vec::new(),
        })
    }

    /// The instrument's name in errors (`<name> @ <address>`).
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Changes the response deadline.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Changes the error-queue query (default `SYST:ERR?`); `None` for a device without an
    /// error queue, whose settings are then checked by read-back only.
    pub fn set_error_query(&mut self, query: Option<String>) {
        self.error_query = query.filter(|q| !q.is_empty());
    }

    /// Sends one program message (a newline is appended).
    ///
    /// # Errors
    /// [`ScpiError::Io`].
    pub fn send(&mut self, message: &str) -> Result<(), ScpiError> {
        let mut line = Vec::with_capacity(message.len() + 1);
        line.extend_from_slice(message.as_bytes());
        line.push(b'\n');
        self.link
            .write_all(&line)
            .and_then(|()| self.link.flush())
            .map_err(|source| ScpiError::Io {
                device: self.device.clone(),
                message: message.to_string(),
                source,
            })
    }

    /// Sends a query and returns its response without the terminator (and without
    /// surrounding whitespace).
    ///
    /// # Errors
    /// [`ScpiError::Timeout`] past the deadline, [`ScpiError::Closed`], [`ScpiError::Io`].
    pub fn query(&mut self, query: &str) -> Result<String, ScpiError> {
        self.send(query)?;
        let line = self.read_line(query)?;
        Ok(String::from_utf8_lossy(&line).trim().to_string())
    }

    /// Sends a query whose response is a definite-length arbitrary block
    /// (`#<n><len><bytes>`, IEEE 488.2 §8.7.9) and returns the bytes.
    ///
    /// # Errors
    /// As [`query`](Self::query); [`ScpiError::Reply`] for a malformed block header.
    pub fn query_block(&mut self, query: &str) -> Result<Vec<u8>, ScpiError> {
        self.send(query)?;
        let deadline = Instant::now() + self.timeout;
        let head = self.read_exact_until(query, 2, deadline)?;
        let device = self.device.clone();
        let reply_err = |observed: &[u8]| ScpiError::Reply {
            device: device.clone(),
            query: query.to_string(),
            expected: "a definite-length block `#<n><len>…`".into(),
            observed: String::from_utf8_lossy(observed).escape_debug().to_string(),
        };
        if head[0] != b'#' || !head[1].is_ascii_digit() || head[1] == b'0' {
            return Err(reply_err(&head));
        }
        let digits = usize::from(head[1] - b'0');
        let len_text = self.read_exact_until(query, digits, deadline)?;
        let len: usize = std::str::from_utf8(&len_text)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| reply_err(&len_text))?;
        let data = self.read_exact_until(query, len, deadline)?;
        // The response message terminator follows the block.
        let _ = self.read_line(query)?;
        Ok(data)
    }

    /// `*IDN?`.
    ///
    /// # Errors
    /// As [`query`](Self::query); [`ScpiError::Reply`] when there are not four fields.
    pub fn identify(&mut self) -> Result<Identity, ScpiError> {
        let r = self.query("*IDN?")?;
        let f: Vec<&str> = r.split(',').map(str::trim).collect();
        if f.len() != 4 {
            return Err(ScpiError::Reply {
                device: self.device.clone(),
                query: "*IDN?".into(),
                expected: "four comma-separated fields".into(),
                observed: r.escape_debug().to_string(),
            });
        }
        Ok(Identity {
            manufacturer: f[0].into(),
            model: f[1].into(),
            serial: f[2].into(),
            firmware: f[3].into(),
        })
    }

    /// `*OPC?`: waits (within the deadline) until every pending operation is complete.
    ///
    /// # Errors
    /// As [`query`](Self::query); [`ScpiError::Reply`] for anything but `1`.
    pub fn wait_complete(&mut self) -> Result<(), ScpiError> {
        let r = self.query("*OPC?")?;
        if r.trim_start_matches('+') == "1" {
            Ok(())
        } else {
            Err(ScpiError::Reply {
                device: self.device.clone(),
                query: "*OPC?".into(),
                expected: "`1`".into(),
                observed: r,
            })
        }
    }

    /// Reads the error queue until it reports no error: `(code, message)` pairs, oldest
    /// first (at most 32).
    ///
    /// # Errors
    /// As [`query`](Self::query); [`ScpiError::Reply`] for a response that is not
    /// `<code>,"<message>"`.
    pub fn errors(&mut self) -> Result<Vec<(i32, String)>, ScpiError> {
        let mut out = Vec::new();
        let Some(error_query) = self.error_query.clone() else {
            return Ok(out);
        };
        for _ in 0..MAX_QUEUED_ERRORS {
            let r = self.query(&error_query)?;
            let parsed = r.split_once(',').and_then(|(c, m)| {
                Some((
                    c.trim().trim_start_matches('+').parse::<i32>().ok()?,
                    m.trim().trim_matches('"').to_string(),
                ))
            });
            let Some((code, message)) = parsed else {
                return Err(ScpiError::Reply {
                    device: self.device.clone(),
                    query: error_query,
                    expected: "`<code>,\"<message>\"`".into(),
                    observed: r.escape_debug().to_string(),
                });
            };
            if code == 0 {
                break;
            }
            out.push((code, message));
        }
        Ok(out)
    }

    /// Sends a setting, then reads the error queue: a refused setting is an error, not a
    /// silent no-op.
    ///
    /// # Errors
    /// [`ScpiError::Refused`] naming the command and the first queued error; transport
    /// errors.
    pub fn set(&mut self, command: &str) -> Result<(), ScpiError> {
        self.send(command)?;
        let errors = self.errors()?;
        match errors.first() {
            None => Ok(()),
            Some((code, message)) => Err(ScpiError::Refused {
                device: self.device.clone(),
                command: command.to_string(),
                code: *code,
                message: message.clone(),
                more: errors.len() - 1,
            }),
        }
    }

    /// `*RST` then `*CLS`, then `*OPC?`: the instrument in its default state with an empty
    /// error queue.
    ///
    /// # Errors
    /// As [`query`](Self::query).
    pub fn reset(&mut self) -> Result<(), ScpiError> {
        self.send("*RST")?;
        self.send("*CLS")?;
        self.wait_complete()
    }

    /// Reads a response up to its newline terminator (the terminator is dropped).
    fn read_line(&mut self, query: &str) -> Result<Vec<u8>, ScpiError> {
        let start = Instant::now();
        let deadline = start + self.timeout;
        loop {
            if let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.pending.drain(..=i).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            self.fill(query, start, deadline)?;
        }
    }

    /// Reads exactly `n` bytes (from what is pending, then the link).
    fn read_exact_until(
        &mut self,
        query: &str,
        n: usize,
        deadline: Instant,
    ) -> Result<Vec<u8>, ScpiError> {
        let start = Instant::now();
        while self.pending.len() < n {
            self.fill(query, start, deadline)?;
        }
        Ok(self.pending.drain(..n).collect())
    }

    /// Appends whatever arrives before `deadline` to `pending`.
    fn fill(&mut self, query: &str, start: Instant, deadline: Instant) -> Result<(), ScpiError> {
        let timeout_err = |received| ScpiError::Timeout {
            device: self.device.clone(),
            query: query.to_string(),
            waited_s: start.elapsed().as_secs_f64(),
            received,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timeout_err(self.pending.len()));
        }
        self.link
            .set_read_deadline(left)
            .map_err(|source| ScpiError::Io {
                device: self.device.clone(),
                message: query.to_string(),
                source,
            })?;
        let mut buf = [0u8; 4096];
        match self.link.read(&mut buf) {
            Ok(0) => Err(ScpiError::Closed {
                device: self.device.clone(),
                query: query.to_string(),
            }),
            Ok(n) => {
                self.pending.extend_from_slice(&buf[..n]);
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(timeout_err(self.pending.len()))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(source) => Err(ScpiError::Io {
                device: self.device.clone(),
                message: query.to_string(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!(
            "10.0.0.5:5025".parse::<ScpiAddress>(),
            Ok(ScpiAddress::Tcp("10.0.0.5:5025".into()))
        );
        assert_eq!(
            "serial:/dev/ttyUSB0@115200".parse::<ScpiAddress>(),
            Ok(ScpiAddress::Serial {
                path: "/dev/ttyUSB0".into(),
                baud: 115_200
            })
        );
        assert_eq!(
            "serial:/dev/ttyS1".parse::<ScpiAddress>(),
            Ok(ScpiAddress::Serial {
                path: "/dev/ttyS1".into(),
                baud: 9600
            })
        );
        assert!("serial:@9600".parse::<ScpiAddress>().is_err());
        assert!("serial:/dev/x@fast".parse::<ScpiAddress>().is_err());
        assert!("localhost".parse::<ScpiAddress>().is_err());
    }
}
