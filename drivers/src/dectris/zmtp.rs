//! A minimal ZeroMQ transport for the DECTRIS stream: ZMTP 3.x over TCP with the `NULL`
//! security mechanism, the `PULL` side we use against the detector control unit (which
//! binds a `PUSH` socket, protocols.md §2.1), and a `PUSH` side for tests and simulators.
//!
//! Why our own instead of a ZeroMQ library: see `docs/decisions/0003-dectris-transport.md`.
//! In short, a PULL peer of one PUSH socket needs only the greeting, the `READY` handshake
//! and the frame grammar (the ZMTP 3.0/3.1 specifications, RFC 23 and RFC 37 of the ZeroMQ
//! RFC collection), and owning it gives blocking reads with deadlines and a stop flag, and
//! lets the receiver read a compressed frame straight into a pooled stack buffer.
//!
//! Wire facts used here:
//! - greeting, 64 bytes each way: `FF 00×8 7F`, version `03 01`, mechanism `NULL` padded
//!   with zeros to 20 bytes, `as-server` (1 byte), 31 bytes of filler;
//! - a frame: flags (bit 0 MORE, bit 1 LONG, bit 2 COMMAND), then the size in 1 byte
//!   (short) or 8 bytes big-endian (long), then the body;
//! - `READY` command body: name length (1 byte), `READY`, then properties, each a 1-byte
//!   name length, the name, a 4-byte big-endian value length and the value; we send
//!   `Socket-Type` and check the peer's;
//! - ZMTP 3.1 `PING` (TTL, 2 bytes, then a context) is answered with `PONG` + the context;
//!   `ERROR` (1-byte reason length, reason) ends the connection.

use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often blocking reads wake up to look at the stop flag and their deadline.
pub const POLL: Duration = Duration::from_millis(10);

/// Largest message part accepted, bytes (a 4-Mpixel 32-bit frame is 16 MiB uncompressed).
pub const MAX_PART_LEN: u64 = 1 << 30;

const FLAG_MORE: u8 = 0x01;
const FLAG_LONG: u8 = 0x02;
const FLAG_COMMAND: u8 = 0x04;
const GREETING_LEN: usize = 64;

/// Errors of the ZMTP transport; each names the peer (`host:port`) and what was under way.
#[derive(Debug, thiserror::Error)]
pub enum ZmtpError {
    /// The TCP connection was not accepted within the deadline.
    #[error("{peer}: cannot connect within {timeout_s:.3} s: {source}")]
    Connect {
        /// The peer address.
        peer: String,
        /// The deadline, s.
        timeout_s: f64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A socket operation failed.
    #[error("{peer}: I/O error during {during}: {source}")]
    Io {
        /// The peer address.
        peer: String,
        /// The operation under way.
        during: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The greeting or the `READY` handshake was not what ZMTP 3 requires.
    #[error("{peer}: ZMTP handshake: expected {expected}, observed {observed}")]
    Handshake {
        /// The peer address.
        peer: String,
        /// What the specification requires.
        expected: String,
        /// What arrived.
        observed: String,
    },
    /// The peer closed the connection inside a frame or the handshake.
    #[error("{peer}: connection closed during {during} after {got} of {want} bytes")]
    Closed {
        /// The peer address.
        peer: String,
        /// What was being read.
        during: &'static str,
        /// Bytes read of it.
        got: u64,
        /// Bytes it has.
        want: u64,
    },
    /// The peer stopped sending inside a frame or the handshake for longer than the stall
    /// deadline.
    #[error("{peer}: stalled during {during}: {got} of {want} bytes, nothing for {waited_s:.3} s")]
    Stalled {
        /// The peer address.
        peer: String,
        /// What was being read.
        during: &'static str,
        /// Bytes read of it.
        got: u64,
        /// Bytes it has.
        want: u64,
        /// How long nothing arrived, s.
        waited_s: f64,
    },
    /// A frame announced more bytes than [`MAX_PART_LEN`].
    #[error("{peer}: message part of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The peer address.
        peer: String,
        /// Announced length, bytes.
        len: u64,
        /// The limit, bytes.
        max: u64,
    },
    /// The peer sent a ZMTP `ERROR` command.
    #[error("{peer}: the peer reported a ZMTP error: {reason}")]
    PeerError {
        /// The peer address.
        peer: String,
        /// The reason it gave.
        reason: String,
    },
}

/// The header of one message part (ZMTP frame) that has been announced but whose body has
/// not been read yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartHead {
    /// Body length, bytes.
    pub len: usize,
    /// True when more parts of the same multipart message follow.
    pub more: bool,
}

/// Outcome of a wait that may end without data (the receiver core's, so that the stream
/// receiver hands it on unchanged; `Closed`: the peer closed at a part boundary).
pub use crate::receiver::Wait;

/// Result of filling a buffer from the socket.
enum Fill {
    Done,
    Stopped,
    TimedOut(usize),
    Eof(usize),
}

/// The greeting we send: ZMTP 3.1, `NULL` mechanism.
fn greeting(as_server: bool) -> [u8; GREETING_LEN] {
    let mut g = [0u8; GREETING_LEN];
    g[0] = 0xFF;
    g[9] = 0x7F;
    g[10] = 3;
    g[11] = 1;
    g[12..16].copy_from_slice(b"NULL");
    g[32] = u8::from(as_server);
    g
}

/// A command frame (`READY`, `PONG`, …) with `body` after the name.
fn command_frame(name: &str, body: &[u8]) -> Vec<u8> {
    let len = 1 + name.len() + body.len();
    let mut f = Vec::with_capacity(len + 9);
    if len < 256 {
        f.push(FLAG_COMMAND);
        f.push(len as u8);
    } else {
        f.push(FLAG_COMMAND | FLAG_LONG);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    f.push(name.len() as u8);
    f.extend_from_slice(name.as_bytes());
    f.extend_from_slice(body);
    f
}

/// `READY` with the `Socket-Type` property.
fn ready_frame(socket_type: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.push(11);
    body.extend_from_slice(b"Socket-Type");
    body.extend_from_slice(&(socket_type.len() as u32).to_be_bytes());
    body.extend_from_slice(socket_type.as_bytes());
    command_frame("READY", &body)
}

/// Splits a command body into its name and the rest; `None` when malformed.
fn split_command(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let n = *body.first()? as usize;
    let name = body.get(1..1 + n)?;
    Some((name, &body[1 + n..]))
}

/// The `Socket-Type` property of a `READY` body (after the name); `None` when absent or
/// malformed.
fn socket_type_of(mut props: &[u8]) -> Option<String> {
    while !props.is_empty() {
        let n = props[0] as usize;
        let name = props.get(1..1 + n)?;
        let len_at = 1 + n;
        let vlen = u32::from_be_bytes(props.get(len_at..len_at + 4)?.try_into().ok()?) as usize;
        let value = props.get(len_at + 4..len_at + 4 + vlen)?;
        if name.eq_ignore_ascii_case(b"Socket-Type") {
            return Some(String::from_utf8_lossy(value).into_owned());
        }
        props = &props[len_at + 4 + vlen..];
    }
    None
}

/// Checks a peer's 64-byte greeting: the signature `FF … 7F`, ZMTP version 3 or newer and
/// the `NULL` security mechanism (RFC 23 "Greeting"; protocols.md §2.1).
///
/// # Errors
/// [`ZmtpError::Handshake`] naming what was expected and the bytes observed; a greeting
/// shorter than 64 bytes is one too.
pub fn check_greeting(peer: &str, g: &[u8]) -> Result<(), ZmtpError> {
    let hs = |expected: &str, observed: String| ZmtpError::Handshake {
        peer: peer.to_string(),
        expected: expected.to_string(),
        observed,
    };
    if g.len() < GREETING_LEN {
        return Err(hs("a greeting of 64 bytes", format!("{} bytes", g.len())));
    }
    if g[0] != 0xFF || g[9] & 1 != 1 {
        return Err(hs(
            "a ZMTP signature (FF … 7F)",
            format!("bytes {:02x?}", &g[..10]),
        ));
    }
    if g[10] < 3 {
        return Err(hs(
            "ZMTP version 3 or newer",
            format!("version {}.{}", g[10], g[11]),
        ));
    }
    let mech_end = g[12..32].iter().position(|&b| b == 0).unwrap_or(20);
    let mech = String::from_utf8_lossy(&g[12..12 + mech_end]).into_owned();
    if mech != "NULL" {
        return Err(hs("security mechanism NULL", format!("`{mech}`")));
    }
    Ok(())
}

/// A ZMTP frame header: what follows the flags byte and the size field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHead {
    /// Body length, bytes (at most [`MAX_PART_LEN`]).
    pub len: usize,
    /// More parts of the same message follow (flag bit 0).
    pub more: bool,
    /// A command (flag bit 2), not a message part.
    pub command: bool,
}

impl FrameHead {
    /// Bytes of the size field after `flags`: 8 (big-endian) for a long frame (bit 1), else 1.
    pub fn size_len(flags: u8) -> usize {
        if flags & FLAG_LONG != 0 { 8 } else { 1 }
    }

    /// Decodes a frame header from its flags byte and its size field
    /// ([`size_len`](Self::size_len) bytes).
    ///
    /// # Errors
    /// [`ZmtpError::TooLarge`] for a body over [`MAX_PART_LEN`] (checked before anything
    /// is allocated for it); [`ZmtpError::Handshake`] for a size field of the wrong length.
    pub fn decode(peer: &str, flags: u8, size: &[u8]) -> Result<Self, ZmtpError> {
        let len = match (Self::size_len(flags), size) {
            (8, &[a, b, c, d, e, f, g, h]) => u64::from_be_bytes([a, b, c, d, e, f, g, h]),
            (1, &[a]) => u64::from(a),
            (want, got) => {
                return Err(ZmtpError::Handshake {
                    peer: peer.to_string(),
                    expected: format!("a frame size field of {want} bytes"),
                    observed: format!("{} bytes", got.len()),
                });
            }
        };
        if len > MAX_PART_LEN {
            return Err(ZmtpError::TooLarge {
                peer: peer.to_string(),
                len,
                max: MAX_PART_LEN,
            });
        }
        Ok(Self {
            len: len as usize,
            more: flags & FLAG_MORE != 0,
            command: flags & FLAG_COMMAND != 0,
        })
    }
}

/// A ZMTP command a `PULL` peer acts on (RFC 23 "Commands", RFC 37 `PING`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// `READY` with its `Socket-Type` property (`None`: absent or malformed).
    Ready {
        /// The peer's socket type.
        socket_type: Option<String>,
    },
    /// `PING`: answered with `PONG` and `context` (after the 2-byte TTL).
    Ping {
        /// The ping context, echoed.
        context: &'a [u8],
    },
    /// `ERROR` with its reason: the peer ends the connection.
    Error {
        /// The reason the peer gave.
        reason: String,
    },
    /// Any other command (ignored).
    Other {
        /// Its name.
        name: &'a [u8],
    },
}

/// Parses a command body (name length, name, data); `None` when malformed.
pub fn parse_command(body: &[u8]) -> Option<Command<'_>> {
    let (name, rest) = split_command(body)?;
    Some(match name {
        b"READY" => Command::Ready {
            socket_type: socket_type_of(rest),
        },
        b"PING" => Command::Ping {
            context: rest.get(2..).unwrap_or_default(),
        },
        b"ERROR" => Command::Error {
            reason: String::from_utf8_lossy(rest.get(1..).unwrap_or_default()).into_owned(),
        },
        name => Command::Other { name },
    })
}

/// A connected ZMTP stream (either side), reading through a buffer with deadlines.
#[derive(Debug)]
struct Conn {
    peer: String,
    rd: BufReader<TcpStream>,
    wr: TcpStream,
    stop: Arc<AtomicBool>,
    last_activity: Instant,
}

impl Conn {
    fn new(stream: TcpStream, peer: String, stop: Arc<AtomicBool>) -> Result<Self, ZmtpError> {
        let io_err = |source| ZmtpError::Io {
            peer: peer.clone(),
            during: "setting up the socket",
            source,
        };
        stream.set_nodelay(true).map_err(io_err)?;
        stream.set_read_timeout(Some(POLL)).map_err(io_err)?;
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .map_err(io_err)?;
        let wr = stream.try_clone().map_err(io_err)?;
        Ok(Self {
            rd: BufReader::with_capacity(256 * 1024, stream),
            wr,
            peer,
            stop,
            last_activity: Instant::now(),
        })
    }

    fn io(&self, during: &'static str) -> impl FnOnce(io::Error) -> ZmtpError + '_ {
        move |source| ZmtpError::Io {
            peer: self.peer.clone(),
            during,
            source,
        }
    }

    /// Fills `buf`: while nothing has arrived, until `first` (None: forever, until stop);
    /// after that, until `stall` passes without progress.
    fn fill(
        &mut self,
        buf: &mut [u8],
        first: Option<Instant>,
        stall: Duration,
        during: &'static str,
    ) -> Result<Fill, ZmtpError> {
        let mut filled = 0;
        let mut progress = Instant::now();
        while filled < buf.len() {
            match self.rd.read(&mut buf[filled..]) {
                Ok(0) => return Ok(Fill::Eof(filled)),
                Ok(n) => {
                    filled += n;
                    progress = Instant::now();
                    self.last_activity = progress;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if self.stop.load(Ordering::Relaxed) {
                        return Ok(Fill::Stopped);
                    }
                    let now = Instant::now();
                    let late = if filled == 0 {
                        first.is_some_and(|d| now >= d)
                    } else {
                        now.duration_since(progress) >= stall
                    };
                    if late {
                        return Ok(Fill::TimedOut(filled));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(during)(e)),
            }
        }
        Ok(Fill::Done)
    }

    /// Fills `buf` completely inside a frame: EOF and stalls are errors.
    fn fill_inside(
        &mut self,
        buf: &mut [u8],
        stall: Duration,
        during: &'static str,
    ) -> Result<Wait<()>, ZmtpError> {
        let want = buf.len() as u64;
        match self.fill(buf, Some(Instant::now() + stall), stall, during)? {
            Fill::Done => Ok(Wait::Ready(())),
            Fill::Stopped => Ok(Wait::Stopped),
            Fill::Eof(n) => Err(ZmtpError::Closed {
                peer: self.peer.clone(),
                during,
                got: n as u64,
                want,
            }),
            Fill::TimedOut(n) => Err(ZmtpError::Stalled {
                peer: self.peer.clone(),
                during,
                got: n as u64,
                want,
                waited_s: stall.as_secs_f64(),
            }),
        }
    }

    /// Exchanges greetings and `READY` commands within `timeout`; checks that the peer's
    /// socket type is `peer_type`.
    fn handshake(
        &mut self,
        own_type: &str,
        peer_type: &str,
        as_server: bool,
        timeout: Duration,
    ) -> Result<Wait<()>, ZmtpError> {
        self.wr
            .write_all(&greeting(as_server))
            .map_err(self.io("sending the greeting"))?;
        let mut g = [0u8; GREETING_LEN];
        if let Wait::Stopped = self.fill_inside(&mut g, timeout, "the greeting")? {
            return Ok(Wait::Stopped);
        }
        let peer = self.peer.clone();
        let hs = |expected: &str, observed: String| ZmtpError::Handshake {
            peer: peer.clone(),
            expected: expected.to_string(),
            observed,
        };
        check_greeting(&peer, &g)?;
        self.wr
            .write_all(&ready_frame(own_type))
            .map_err(self.io("sending READY"))?;
        let mut flags = [0u8; 1];
        if let Wait::Stopped = self.fill_inside(&mut flags, timeout, "the READY command")? {
            return Ok(Wait::Stopped);
        }
        if flags[0] & FLAG_COMMAND == 0 {
            return Err(hs(
                "a READY command",
                format!("a message frame (flags {:#04x})", flags[0]),
            ));
        }
        let mut size = [0u8; 8];
        let size = &mut size[..FrameHead::size_len(flags[0])];
        if let Wait::Stopped = self.fill_inside(size, timeout, "the READY command")? {
            return Ok(Wait::Stopped);
        }
        let head = FrameHead::decode(&peer, flags[0], size)?;
        if head.len > 65536 {
            return Err(hs(
                "a READY command of at most 64 KiB",
                format!("{} bytes", head.len),
            ));
        }
        let mut body = vec![0u8; head.len];
        if let Wait::Stopped = self.fill_inside(&mut body, timeout, "the READY command")? {
            return Ok(Wait::Stopped);
        }
        match parse_command(&body) {
            Some(Command::Ready { socket_type: st }) => {
                if st
                    .as_deref()
                    .is_some_and(|t| t.eq_ignore_ascii_case(peer_type))
                {
                    Ok(Wait::Ready(()))
                } else {
                    Err(hs(
                        &format!("peer socket type {peer_type}"),
                        format!("{st:?}"),
                    ))
                }
            }
            Some(Command::Error { reason }) => Err(ZmtpError::PeerError {
                peer: peer.clone(),
                reason,
            }),
            Some(Command::Ping { .. }) => Err(hs("a READY command", "command `PING`".into())),
            Some(Command::Other { name }) => Err(hs(
                "a READY command",
                format!("command `{}`", String::from_utf8_lossy(name)),
            )),
            None => Err(hs(
                "a READY command",
                format!("{} malformed bytes", body.len()),
            )),
        }
    }
}

/// The `PULL` end of a DECTRIS data stream: connects to the detector's `PUSH` socket and
/// reads message parts one at a time, each with a deadline (protocols.md §2.1, §2.4).
///
/// Reads go through a 256 KiB buffer; large bodies are read straight into the caller's
/// buffer ([`read_body`](Self::read_body)). Commands from the peer (`PING`) are handled
/// inside [`next_part`](Self::next_part).
#[derive(Debug)]
pub struct ZmtpPull {
    conn: Conn,
    stall: Duration,
}

impl ZmtpPull {
    /// Connects to `addr` and performs the handshake, all within `timeout`. `stall` is the
    /// longest pause allowed inside a part once it has started. `stop` ends every wait
    /// within [`POLL`].
    ///
    /// # Errors
    /// [`ZmtpError::Connect`] when the port does not accept in time;
    /// [`ZmtpError::Handshake`]/[`ZmtpError::PeerError`] when the peer is not a ZMTP 3
    /// `PUSH` socket with `NULL` security; transport errors as [`ZmtpError::Io`],
    /// [`ZmtpError::Closed`], [`ZmtpError::Stalled`]. A stop during the handshake is
    /// reported as [`ZmtpError::Io`] with kind `Interrupted`.
    pub fn connect(
        addr: SocketAddr,
        timeout: Duration,
        stall: Duration,
        stop: Arc<AtomicBool>,
    ) -> Result<Self, ZmtpError> {
        let peer = addr.to_string();
        let stream = TcpStream::connect_timeout(&addr, timeout.max(Duration::from_millis(1)))
            .map_err(|source| ZmtpError::Connect {
                peer: peer.clone(),
                timeout_s: timeout.as_secs_f64(),
                source,
            })?;
        let mut conn = Conn::new(stream, peer, stop)?;
        match conn.handshake("PULL", "PUSH", false, timeout)? {
            Wait::Ready(()) => Ok(Self { conn, stall }),
            _ => Err(ZmtpError::Io {
                peer: conn.peer.clone(),
                during: "the handshake",
                source: io::Error::new(io::ErrorKind::Interrupted, "stopped"),
            }),
        }
    }

    /// The peer address (`host:port`).
    pub fn peer(&self) -> &str {
        &self.conn.peer
    }

    /// When a byte last arrived.
    pub fn last_activity(&self) -> Instant {
        self.conn.last_activity
    }

    /// Bytes received and not yet consumed (buffered here or waiting in the socket);
    /// `None` when the socket cannot tell.
    pub fn pending(&self) -> Option<usize> {
        let buffered = self.conn.rd.buffer().len();
        crate::net::pending_bytes(self.conn.rd.get_ref()).map(|n| n + buffered)
    }

    /// True once the stop flag is raised.
    pub fn stopped(&self) -> bool {
        self.conn.stop.load(Ordering::Relaxed)
    }

    /// Waits until `deadline` (None: until stop or close) for the next message part and
    /// returns its header; its body must then be consumed with [`read_body`](Self::read_body),
    /// [`read_body_vec`](Self::read_body_vec) or [`skip_body`](Self::skip_body).
    ///
    /// # Errors
    /// [`ZmtpError::TooLarge`] for a part over [`MAX_PART_LEN`]; [`ZmtpError::PeerError`]
    /// for an `ERROR` command; transport errors.
    pub fn next_part(&mut self, deadline: Option<Instant>) -> Result<Wait<PartHead>, ZmtpError> {
        loop {
            let mut flags = [0u8; 1];
            match self
                .conn
                .fill(&mut flags, deadline, self.stall, "a frame header")?
            {
                Fill::Done => {}
                Fill::Stopped => return Ok(Wait::Stopped),
                Fill::TimedOut(_) => return Ok(Wait::TimedOut),
                Fill::Eof(_) => return Ok(Wait::Closed),
            }
            let flags = flags[0];
            let mut size = [0u8; 8];
            let size = &mut size[..FrameHead::size_len(flags)];
            if let Wait::Stopped = self.conn.fill_inside(size, self.stall, "a frame size")? {
                return Ok(Wait::Stopped);
            }
            let head = FrameHead::decode(&self.conn.peer, flags, size)?;
            let len = head.len;
            if !head.command {
                return Ok(Wait::Ready(PartHead {
                    len,
                    more: head.more,
                }));
            }
            let mut body = vec![0u8; len.min(65536)];
            if len > body.len() {
                // Commands are small; a huge one is skipped rather than buffered.
                if let Wait::Stopped = self.skip_body(len)? {
                    return Ok(Wait::Stopped);
                }
                continue;
            }
            if let Wait::Stopped = self.conn.fill_inside(&mut body, self.stall, "a command")? {
                return Ok(Wait::Stopped);
            }
            match parse_command(&body) {
                Some(Command::Ping { context }) => {
                    let pong = command_frame("PONG", context);
                    self.conn
                        .wr
                        .write_all(&pong)
                        .map_err(self.conn.io("answering PING"))?;
                }
                Some(Command::Error { reason }) => {
                    return Err(ZmtpError::PeerError {
                        peer: self.conn.peer.clone(),
                        reason,
                    });
                }
                _ => {}
            }
        }
    }

    /// Reads the announced body into `out` (exactly its length).
    ///
    /// # Errors
    /// [`ZmtpError::Closed`]/[`ZmtpError::Stalled`] when it is cut short.
    pub fn read_body(&mut self, out: &mut [u8]) -> Result<Wait<()>, ZmtpError> {
        self.conn.fill_inside(out, self.stall, "a message part")
    }

    /// Reads a body of `len` bytes into `out` (cleared first; its allocation is reused).
    ///
    /// # Errors
    /// As [`read_body`](Self::read_body).
    pub fn read_body_vec(&mut self, len: usize, out: &mut Vec<u8>) -> Result<Wait<()>, ZmtpError> {
        out.clear();
        out.resize(len, 0);
        self.read_body(out)
    }

    /// Reads and discards a body of `len` bytes.
    ///
    /// # Errors
    /// As [`read_body`](Self::read_body).
    pub fn skip_body(&mut self, mut len: usize) -> Result<Wait<()>, ZmtpError> {
        let mut scratch = [0u8; 8192];
        while len > 0 {
            let n = len.min(scratch.len());
            if let Wait::Stopped = self.read_body(&mut scratch[..n])? {
                return Ok(Wait::Stopped);
            }
            len -= n;
        }
        Ok(Wait::Ready(()))
    }
}

/// The `PUSH` end, bound by a detector simulator or a test: listens on a TCP port, accepts
/// one `PULL` peer, and sends multipart messages to it.
#[derive(Debug)]
pub struct ZmtpPushListener {
    listener: TcpListener,
}

impl ZmtpPushListener {
    /// Binds `addr` (use port 0 for an ephemeral port).
    ///
    /// # Errors
    /// [`ZmtpError::Io`] when the address cannot be bound.
    pub fn bind(addr: SocketAddr) -> Result<Self, ZmtpError> {
        let listener = TcpListener::bind(addr).map_err(|source| ZmtpError::Io {
            peer: addr.to_string(),
            during: "binding the PUSH socket",
            source,
        })?;
        Ok(Self { listener })
    }

    /// The bound address.
    ///
    /// # Errors
    /// [`ZmtpError::Io`] when the socket cannot tell.
    pub fn local_addr(&self) -> Result<SocketAddr, ZmtpError> {
        self.listener.local_addr().map_err(|source| ZmtpError::Io {
            peer: "listener".into(),
            during: "reading the bound address",
            source,
        })
    }

    /// Accepts one `PULL` peer and performs the handshake, within `timeout`.
    ///
    /// # Errors
    /// [`ZmtpError::Io`] with kind `TimedOut` when nobody connects in time; handshake and
    /// transport errors as in [`ZmtpPull::connect`].
    pub fn accept(&self, timeout: Duration) -> Result<ZmtpPush, ZmtpError> {
        let io_err = |during, source| ZmtpError::Io {
            peer: "listener".into(),
            during,
            source,
        };
        self.listener
            .set_nonblocking(true)
            .map_err(|e| io_err("accepting", e))?;
        let deadline = Instant::now() + timeout;
        let (stream, addr) = loop {
            match self.listener.accept() {
                Ok(s) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(io_err(
                            "accepting",
                            io::Error::new(io::ErrorKind::TimedOut, "no PULL peer connected"),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(io_err("accepting", e)),
            }
        };
        stream
            .set_nonblocking(false)
            .map_err(|e| io_err("accepting", e))?;
        let mut conn = Conn::new(stream, addr.to_string(), Arc::new(AtomicBool::new(false)))?;
        conn.handshake("PUSH", "PULL", true, timeout)?;
        Ok(ZmtpPush { conn })
    }
}

/// A connected `PUSH` end (see [`ZmtpPushListener`]).
#[derive(Debug)]
pub struct ZmtpPush {
    conn: Conn,
}

impl ZmtpPush {
    /// Sends one message made of `parts` (a multipart message when more than one). Writes
    /// block at most 5 s each.
    ///
    /// # Errors
    /// [`ZmtpError::Io`] when the peer is gone or stopped reading.
    pub fn send(&mut self, parts: &[&[u8]]) -> Result<(), ZmtpError> {
        for (i, p) in parts.iter().enumerate() {
            self.send_part(p, i + 1 < parts.len())?;
        }
        Ok(())
    }

    /// Sends one part; `more` marks that further parts of the same message follow.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub fn send_part(&mut self, part: &[u8], more: bool) -> Result<(), ZmtpError> {
        let mut head = [0u8; 9];
        let more_flag = if more { FLAG_MORE } else { 0 };
        let n = if part.len() < 256 {
            head[0] = more_flag;
            head[1] = part.len() as u8;
            2
        } else {
            head[0] = more_flag | FLAG_LONG;
            head[1..9].copy_from_slice(&(part.len() as u64).to_be_bytes());
            9
        };
        self.conn
            .wr
            .write_all(&head[..n])
            .and_then(|()| self.conn.wr.write_all(part))
            .map_err(self.conn.io("sending a message part"))
    }

    /// Sends a raw byte sequence as is (tests of malformed framing).
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ZmtpError> {
        self.conn
            .wr
            .write_all(bytes)
            .map_err(self.conn.io("sending raw bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn pair() -> (ZmtpPush, ZmtpPull) {
        let l =
            ZmtpPushListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)).unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || l.accept(Duration::from_secs(2)).unwrap());
        let pull = ZmtpPull::connect(
            addr,
            Duration::from_secs(2),
            Duration::from_millis(500),
            Arc::new(AtomicBool::new(false)),
        )
        .unwrap();
        (t.join().unwrap(), pull)
    }

    #[test]
    fn short_and_long_parts_with_more_flags_round_trip() {
        let (mut push, mut pull) = pair();
        let big = vec![7u8; 70_000];
        push.send(&[b"first", &big, b""]).unwrap();
        let d = Some(Instant::now() + Duration::from_secs(2));
        let Wait::Ready(h) = pull.next_part(d).unwrap() else {
            panic!("no part")
        };
        assert_eq!(h, PartHead { len: 5, more: true });
        let mut v = Vec::new();
        pull.read_body_vec(h.len, &mut v).unwrap();
        assert_eq!(v, b"first");
        let Wait::Ready(h) = pull.next_part(d).unwrap() else {
            panic!("no part")
        };
        assert_eq!(
            h,
            PartHead {
                len: 70_000,
                more: true
            }
        );
        let mut out = vec![0u8; h.len];
        pull.read_body(&mut out).unwrap();
        assert_eq!(out, big);
        let Wait::Ready(h) = pull.next_part(d).unwrap() else {
            panic!("no part")
        };
        assert_eq!(
            h,
            PartHead {
                len: 0,
                more: false
            }
        );
        let t0 = Instant::now();
        let w = pull
            .next_part(Some(Instant::now() + Duration::from_millis(50)))
            .unwrap();
        assert_eq!(w, Wait::TimedOut);
        assert!(t0.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn ping_is_answered_and_skipped_and_close_is_reported() {
        let (mut push, mut pull) = pair();
        let mut ping = vec![0u8; 2];
        ping.extend_from_slice(b"ctx");
        push.send_raw(&command_frame("PING", &ping)).unwrap();
        push.send(&[b"after ping"]).unwrap();
        let d = Some(Instant::now() + Duration::from_secs(2));
        let Wait::Ready(h) = pull.next_part(d).unwrap() else {
            panic!("no part")
        };
        assert_eq!(h.len, 10);
        pull.skip_body(h.len).unwrap();
        // The PONG reached the PUSH side: read it there.
        let mut pong = [0u8; 2 + 5 + 3];
        push.conn
            .rd
            .get_mut()
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        push.conn.rd.read_exact(&mut pong).unwrap();
        assert_eq!(&pong[..], &command_frame("PONG", b"ctx")[..]);
        drop(push);
        assert_eq!(pull.next_part(d).unwrap(), Wait::Closed);
    }

    #[test]
    fn a_cut_part_is_an_error_naming_the_byte_counts() {
        let (mut push, mut pull) = pair();
        push.send_raw(&[0, 10, 1, 2, 3]).unwrap();
        drop(push);
        let d = Some(Instant::now() + Duration::from_secs(2));
        let Wait::Ready(h) = pull.next_part(d).unwrap() else {
            panic!("no part")
        };
        let mut out = vec![0u8; h.len];
        let e = pull.read_body(&mut out).unwrap_err();
        assert!(e.to_string().contains("3 of 10 bytes"), "{e}");
    }

    #[test]
    fn a_non_zmtp_peer_fails_the_handshake() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.write_all(&[b'H'; 64]).unwrap();
            std::thread::sleep(Duration::from_millis(200));
        });
        let e = ZmtpPull::connect(
            addr,
            Duration::from_secs(2),
            Duration::from_millis(500),
            Arc::new(AtomicBool::new(false)),
        )
        .unwrap_err();
        assert!(e.to_string().contains("ZMTP signature"), "{e}");
        t.join().unwrap();
    }
}
