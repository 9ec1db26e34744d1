//! [`Tpx3Receiver`]: the ASI TPX3 CSR stream receiver (TCP, default port 8283), one thread
//! per connection on the receiver core (decision 0010; protocols.md §3.1–§3.4).
//!
//! The stream is `AcquisitionStart (ScanStart [metadata] ArrayChunk* ScanEnd)*
//! AcquisitionEnd`, many acquisitions per connection. Each **scan** is one acquisition of
//! the receiver (`nav_shape.0 × nav_shape.1` frames, or the configured count): `Armed` on
//! its `ScanStart`, `Finished` on its `ScanEnd`. The receiver:
//!
//! 1. connects (deadline) and reads 32-byte headers. The first must be an
//!    `AcquisitionStart`: a stream joined mid-way cannot be resynchronised (chunk sizes
//!    depend on its dtypes, §3.2), so anything else ends the connection with
//!    [`Tpx3Error::MidStream`] — the detector actor reconnects;
//! 2. on a `ScanStart` reads (and keeps, up to [`MAX_METADATA_BYTES`]) the metadata bytes
//!    that follow it and reports [`ReceiverEvent::Armed`] with a [`ScanHeader`];
//! 3. writes each `ArrayChunk` — its 32-byte header, then its payload straight from the
//!    socket — into a pooled stack buffer at an 8-byte aligned offset (one copy); the
//!    chunk's rows are the next frames of the scan. Chunks are not decoded here: the
//!    processing workers check and normalise them ([`stemflow_core::csr::CsrRows::push_chunk`]),
//!    where a malformed chunk's frames count damaged;
//! 4. checks every chunk header before reading its payload: a payload larger than
//!    [`Tpx3ReceiverConfig::max_chunk_bytes`] ends the connection (nothing allocated from
//!    it); a chunk whose arrays do not fit its payload as its offsets say is read and
//!    discarded, its frames counted damaged; rows past the scan's frame count are a
//!    protocol error;
//! 5. ends the scan at its `ScanEnd` (every frame there: all frames; fewer: the rest
//!    lost), at an `AcquisitionEnd` inside it (cancelled, §3.2: the rest lost), at a new
//!    `ScanStart`, at the inactivity deadline, on a disarm followed by silence, stop or
//!    disconnect — and reports `Finished` with the counts and the validity map.
//!
//! An unknown tag (garbage) or a cut stream ends the connection with an error naming the
//! device, what was expected and what arrived.

use super::wire::{AcquisitionStart, ArrayChunk, HEADER_LEN, Header, WireError};
use crate::merlin::stream::{DataStream, Fill};
use crate::receiver::stack::{FilledStack, StackLayout};
use crate::receiver::{
    self, Begin, Connection, CoreError, Flow, Message, OrderError, Protocol, Settings, Sink, Wait,
};
use crossbeam_channel::Receiver;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};
use stemflow_core::DType;
use stemflow_core::csr::{CsrChunkRef, CsrDType, CsrFormat, CsrStack, Stack};

/// Most metadata bytes after a `ScanStart` that are kept (more are an error: the known
/// producers send none, §3.2).
pub const MAX_METADATA_BYTES: u64 = 1 << 20;

/// Default for [`Tpx3ReceiverConfig::max_chunk_bytes`]: 256 MiB, a chunk of about 16 M
/// events with u32 arrays.
pub const DEFAULT_MAX_CHUNK_BYTES: u64 = 256 << 20;

/// Smallest stack slot, bytes: small chunks share a stack buffer of at least this many
/// slots' worth ([`crate::stack_frames`]).
const MIN_SLOT: usize = 64 << 10;

/// Settings of one receiver connection. Times are deadlines.
#[derive(Clone, Debug)]
pub struct Tpx3ReceiverConfig {
    /// Device name in every error and log line (e.g. `tpx3 @ 127.0.0.1:8283`).
    pub device: String,
    /// The CSR data port (default 8283, §3.1).
    pub data_addr: SocketAddr,
    /// Deadline for the TCP connection.
    pub connect_timeout: Duration,
    /// Deadline for the first `ScanStart` after [`Tpx3Receiver::start`]; later scans on
    /// the same connection wait until stop.
    pub header_timeout: Duration,
    /// Deadline from a `ScanStart` to its first chunk (the trigger wait).
    pub first_frame_timeout: Duration,
    /// Inactivity deadline between chunks and inside one; also the longest wait for a free
    /// stack buffer.
    pub frame_timeout: Duration,
    /// Chunks per stack; 0 (the default): automatic, about 4 MiB of chunk slots.
    pub frames_per_stack: usize,
    /// Stack buffers in the pool.
    pub pool_stacks: usize,
    /// Frames per scan, overriding `AcquisitionStart`'s nav shape.
    pub expected_frames: Option<u64>,
    /// Largest chunk payload accepted, bytes ([`DEFAULT_MAX_CHUNK_BYTES`]).
    pub max_chunk_bytes: u64,
    /// Most bytes of receive buffers ([`receiver::DEFAULT_MEMORY_BUDGET`]).
    pub memory_budget: usize,
}

impl Tpx3ReceiverConfig {
    /// Defaults for `data_addr`: device `tpx3 @ <addr>`, connect 2 s, header 10 s, first
    /// frame 10 s, frame 1 s, automatic stacks, 16 stacks, the nav shape's frame count.
    pub fn new(data_addr: SocketAddr) -> Self {
        Self {
            device: format!("tpx3 @ {data_addr}"),
            data_addr,
            connect_timeout: Duration::from_secs(2),
            header_timeout: Duration::from_secs(10),
            first_frame_timeout: Duration::from_secs(10),
            frame_timeout: Duration::from_secs(1),
            frames_per_stack: 0,
            pool_stacks: 16,
            expected_frames: None,
            max_chunk_bytes: DEFAULT_MAX_CHUNK_BYTES,
            memory_budget: receiver::DEFAULT_MEMORY_BUDGET,
        }
    }
}

/// Errors of the TPX3 data connection; each names the device.
#[derive(Debug, thiserror::Error)]
pub enum Tpx3Error {
    /// The data port did not accept a connection in time.
    #[error("{device}: cannot connect to data port {addr} within {timeout_s:.3} s: {source}")]
    Connect {
        /// Device name.
        device: String,
        /// Address tried.
        addr: SocketAddr,
        /// Deadline, s.
        timeout_s: f64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A socket operation failed.
    #[error("{device}: I/O error during {during}: {source}")]
    Io {
        /// Device name.
        device: String,
        /// What was under way.
        during: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A header that cannot be parsed (garbage, or the position in the stream lost).
    #[error("{device}: {source}")]
    Wire {
        /// Device name.
        device: String,
        /// The cause.
        #[source]
        source: WireError,
    },
    /// The stream did not start with `AcquisitionStart`: joined mid-way, it cannot be
    /// resynchronised (§3.2).
    #[error(
        "{device}: the stream starts with {observed} instead of AcquisitionStart: joined mid-stream, chunk sizes cannot be known (protocols.md §3.2); reconnect before the next acquisition"
    )]
    MidStream {
        /// Device name.
        device: String,
        /// What arrived.
        observed: &'static str,
    },
    /// No `ScanStart` within the header timeout.
    #[error("{device}: no ScanStart within {waited_s:.3} s")]
    HeaderTimeout {
        /// Device name.
        device: String,
        /// How long it waited, s.
        waited_s: f64,
    },
    /// The connection ended inside a message.
    #[error("{device}: connection closed inside {what}: {received} of {expected} bytes")]
    Truncated {
        /// Device name.
        device: String,
        /// The message.
        what: String,
        /// Bytes it has.
        expected: u64,
        /// Bytes that arrived.
        received: u64,
    },
    /// The stream stalled inside a message.
    #[error(
        "{device}: stalled inside {what}: {received} of {expected} bytes, nothing for {idle_s:.3} s"
    )]
    Stalled {
        /// Device name.
        device: String,
        /// The message.
        what: String,
        /// Bytes it has.
        expected: u64,
        /// Bytes that arrived.
        received: u64,
        /// The inactivity deadline, s.
        idle_s: f64,
    },
    /// A chunk header announcing more bytes than allowed.
    #[error(
        "{device}: ArrayChunk of {frames} rows and {nnz} entries announces a {payload}-byte payload, more than the {max}-byte limit (max_chunk_bytes)"
    )]
    ChunkTooLarge {
        /// Device name.
        device: String,
        /// Rows in the chunk.
        frames: u32,
        /// Entries in the chunk.
        nnz: u32,
        /// Payload bytes from the header.
        payload: u64,
        /// The limit.
        max: u64,
    },
    /// Metadata after a `ScanStart` longer than [`MAX_METADATA_BYTES`].
    #[error("{device}: ScanStart announces {len} bytes of metadata, more than {max}")]
    Metadata {
        /// Device name.
        device: String,
        /// Bytes announced.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Rows out of order or past the scan's end.
    #[error("{device}: scan {scan}: {detail}")]
    Frames {
        /// Device name.
        device: String,
        /// Scan sequence number.
        scan: u32,
        /// Expected and observed rows.
        detail: String,
    },
    /// The stack pool gave no buffer in time (a stalled consumer), or the memory budget is
    /// too small.
    #[error("{device}: {source}")]
    Core {
        /// Device name.
        device: String,
        /// The core's error.
        #[source]
        source: CoreError,
    },
    /// The peer closed the connection between acquisitions.
    #[error("{device}: connection closed by the detector")]
    Closed {
        /// Device name.
        device: String,
    },
}

/// Why a scan ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// Every frame of the scan arrived (then `ScanEnd`).
    AllFrames,
    /// `ScanEnd` before every frame arrived: the rest are lost.
    ScanEnd,
    /// `AcquisitionEnd` inside the scan: the measurement was stopped (§3.2).
    Cancelled,
    /// Nothing within the first-frame or frame timeout.
    InactivityDeadline,
    /// A new `ScanStart` or `AcquisitionStart` inside the scan.
    NewHeader,
    /// [`Tpx3Receiver::stop`].
    Stopped,
    /// [`Tpx3Receiver::end_acquisition`] (the measurement was stopped) and then silence.
    Disarmed,
    /// The peer closed the connection.
    Disconnected,
    /// A fatal error (in [`ReceiverEvent::Error`]).
    Failed,
}

impl EndReason {
    /// A short description for run records.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AllFrames => "all frames",
            Self::ScanEnd => "scan end before all frames",
            Self::Cancelled => "acquisition end inside the scan (cancelled)",
            Self::InactivityDeadline => "inactivity deadline",
            Self::NewHeader => "new scan header",
            Self::Stopped => "stopped",
            Self::Disarmed => "disarmed",
            Self::Disconnected => "disconnected",
            Self::Failed => "failed",
        }
    }
}

receiver::end_reasons!(EndReason {
    all_frames: AllFrames,
    inactivity_deadline: InactivityDeadline,
    new_header: NewHeader,
    stopped: Stopped,
    disconnected: Disconnected,
    failed: Failed,
    disarmed: Some(Self::Disarmed),
});

/// A scan's header as the receiver reports it on `Armed`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanHeader {
    /// The acquisition the scan belongs to.
    pub acquisition: AcquisitionStart,
    /// Scan number within the acquisition.
    pub scan: u32,
    /// The metadata bytes after `ScanStart` (JSON, §3.3; usually empty).
    pub metadata: Vec<u8>,
}

/// Accounting of one scan; its series is `(acquisition sequence, scan sequence)`.
pub type AcquisitionSummary = receiver::AcquisitionSummary<EndReason, (u32, u32)>;

/// What the receiver reports, in order per scan: `Armed` (with a [`ScanHeader`]),
/// `FirstFrame` (with the [`CsrFormat`]), then `Finished` or `Error` (a [`Tpx3Error`]).
pub type ReceiverEvent = receiver::ReceiverEvent<Tpx3Protocol>;

/// Whole chunks, each stored as its 32-byte header followed by its payload, at 8-byte
/// aligned offsets; sent as [`Stack::Csr`].
pub struct CsrChunks;

impl StackLayout for CsrChunks {
    type Decoder = CsrFormat;
    type Entry = CsrChunkRef;
    type Stack = Stack;

    const ALIGN: usize = 8;

    fn entry(offset: usize, len: usize, first_frame: u64, frames: u32) -> CsrChunkRef {
        // The chunk header is parsed back in `stack`, where the buffer is at hand.
        CsrChunkRef {
            offset,
            len,
            first_frame,
            frames,
            nnz: 0,
            indices_offset: 0,
            values_offset: 0,
            values: CsrDType::U32,
        }
    }

    fn stack(filled: FilledStack<CsrChunkRef>, decoder: &Arc<CsrFormat>) -> Stack {
        let chunks = filled
            .entries
            .iter()
            .map(|e| {
                let mut h = [0u8; HEADER_LEN];
                if let Some(b) = filled.buf.get(e.offset..e.offset + HEADER_LEN) {
                    h.copy_from_slice(b);
                }
                match Header::parse(&h) {
                    Ok(Header::ArrayChunk(c)) => c.chunk_ref(e.offset + HEADER_LEN, e.first_frame),
                    // Cannot happen (the receiver wrote a checked header); an entry that
                    // cannot be read becomes a chunk whose layout check fails: damaged.
                    _ => CsrChunkRef {
                        offset: e.offset,
                        len: 0,
                        nnz: u32::MAX,
                        ..*e
                    },
                }
            })
            .collect();
        Stack::Csr(CsrStack {
            first_frame: filled.first_frame,
            frames: filled.frames,
            chunks,
            buf: filled.buf,
            format: Arc::clone(decoder),
            first_received: filled.first_received,
        })
    }
}

/// A running receiver: one connection to the CSR data port served by one thread.
/// Dropping it stops and joins.
#[derive(Debug)]
pub struct Tpx3Receiver {
    conn: Connection<Tpx3Protocol>,
}

impl Tpx3Receiver {
    /// Connects to `cfg.data_addr` within `cfg.connect_timeout` and starts the thread.
    ///
    /// # Errors
    /// [`Tpx3Error::Connect`] when the port does not accept in time; [`Tpx3Error::Io`]
    /// when the socket or thread cannot be set up.
    pub fn start(cfg: Tpx3ReceiverConfig) -> Result<Self, Tpx3Error> {
        let device = cfg.device.clone();
        let stream = TcpStream::connect_timeout(
            &cfg.data_addr,
            cfg.connect_timeout.max(Duration::from_millis(1)),
        )
        .map_err(|source| Tpx3Error::Connect {
            device: device.clone(),
            addr: cfg.data_addr,
            timeout_s: cfg.connect_timeout.as_secs_f64(),
            source,
        })?;
        let io = |during| {
            let device = device.clone();
            move |source| Tpx3Error::Io {
                device,
                during,
                source,
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let conn =
            DataStream::new(stream, Arc::clone(&stop)).map_err(io("setting up the data socket"))?;
        let settings = Settings {
            device: cfg.device.clone(),
            header_timeout: Some(cfg.header_timeout),
            first_frame_timeout: cfg.first_frame_timeout,
            frame_timeout: cfg.frame_timeout,
            frames_per_stack: cfg.frames_per_stack,
            pool_stacks: cfg.pool_stacks,
            memory_budget: cfg.memory_budget,
        };
        let protocol = Tpx3Protocol {
            cfg,
            conn,
            acquisition: None,
            scan: 0,
            scratch: vec![0u8; 64 * 1024],
        };
        let conn = Connection::spawn(settings, protocol, stop, "tpx3-rx")
            .map_err(io("spawning the receiver thread"))?;
        Ok(Self { conn })
    }

    /// The device name.
    pub fn device(&self) -> &str {
        self.conn.device()
    }

    /// The event channel (see [`ReceiverEvent`]).
    pub fn events(&self) -> &Receiver<ReceiverEvent> {
        self.conn.events()
    }

    /// Whether the connection thread still runs.
    pub fn is_running(&self) -> bool {
        self.conn.is_running()
    }

    /// Ends the scan under way (`Finished`, [`EndReason::Stopped`]) and the connection.
    pub fn stop(&self) {
        self.conn.stop();
    }

    /// Ends the scan under way once the stream is quiet for 100 ms ([`EndReason::Disarmed`]),
    /// after the measurement was stopped; the connection stays open.
    pub fn end_acquisition(&self) {
        self.conn.end_acquisition();
    }

    /// Waits for the connection thread to end.
    pub fn join(self) {
        self.conn.join();
    }
}

/// The TPX3 CSR stream as a receiver [`Protocol`] (§3.2–§3.4).
#[derive(Debug)]
pub struct Tpx3Protocol {
    cfg: Tpx3ReceiverConfig,
    conn: DataStream,
    /// The acquisition under way (its dtypes size every chunk), from its `AcquisitionStart`.
    acquisition: Option<AcquisitionStart>,
    /// The scan under way.
    scan: u32,
    /// Scratch for discarded payloads.
    scratch: Vec<u8>,
}

/// What a header read found, when it found nothing.
enum Nothing {
    TimedOut,
    Stopped,
    Closed,
}

impl Tpx3Protocol {
    fn io_error(&self, during: &'static str) -> impl FnOnce(std::io::Error) -> Tpx3Error + use<> {
        let device = self.cfg.device.clone();
        move |source| Tpx3Error::Io {
            device,
            during,
            source,
        }
    }

    /// Reads one 32-byte header, waiting until `deadline` for its first byte.
    fn read_header(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Result<Header, Nothing>, Tpx3Error> {
        let mut b = [0u8; HEADER_LEN];
        let fill = self
            .conn
            .fill(&mut b, deadline, self.cfg.frame_timeout)
            .map_err(self.io_error("reading a message header"))?;
        match fill {
            Fill::Done => {}
            Fill::TimedOut(0) => return Ok(Err(Nothing::TimedOut)),
            Fill::Stopped(_) => return Ok(Err(Nothing::Stopped)),
            Fill::Eof(0) => return Ok(Err(Nothing::Closed)),
            Fill::Eof(n) => return Err(self.truncated("a message header", 32, n as u64)),
            Fill::TimedOut(n) => return Err(self.stalled("a message header", 32, n as u64)),
        }
        Header::parse(&b).map(Ok).map_err(|source| Tpx3Error::Wire {
            device: self.cfg.device.clone(),
            source,
        })
    }

    fn truncated(&self, what: &str, expected: u64, received: u64) -> Tpx3Error {
        Tpx3Error::Truncated {
            device: self.cfg.device.clone(),
            what: what.to_string(),
            expected,
            received,
        }
    }

    fn stalled(&self, what: &str, expected: u64, received: u64) -> Tpx3Error {
        Tpx3Error::Stalled {
            device: self.cfg.device.clone(),
            what: what.to_string(),
            expected,
            received,
            idle_s: self.cfg.frame_timeout.as_secs_f64(),
        }
    }

    /// Reads and discards `n` bytes of the message under way; `Ok(false)` when stopped.
    fn skip(&mut self, n: u64, what: &str) -> Result<bool, Tpx3Error> {
        let mut left = n;
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut result = Ok(true);
        while left > 0 {
            let k = left.min(scratch.len() as u64) as usize;
            let r = self.conn.skip(k, &mut scratch, self.cfg.frame_timeout);
            match r {
                Ok((Fill::Done, _)) => left -= k as u64,
                Ok((Fill::Stopped(_), _)) => {
                    result = Ok(false);
                    break;
                }
                Ok((Fill::Eof(_), got)) => {
                    result = Err(self.truncated(what, n, n - left + got as u64));
                    break;
                }
                Ok((Fill::TimedOut(_), got)) => {
                    result = Err(self.stalled(what, n, n - left + got as u64));
                    break;
                }
                Err(e) => {
                    result = Err(self.io_error("discarding bytes")(e));
                    break;
                }
            }
        }
        self.scratch = scratch;
        result
    }

    /// Checks a chunk header's payload size against the limit.
    fn check_size(&self, c: &ArrayChunk) -> Result<u64, Tpx3Error> {
        let payload = c.payload_len();
        if payload > self.cfg.max_chunk_bytes {
            return Err(Tpx3Error::ChunkTooLarge {
                device: self.cfg.device.clone(),
                frames: c.frames,
                nnz: c.nnz,
                payload,
                max: self.cfg.max_chunk_bytes,
            });
        }
        Ok(payload)
    }

    /// Reads the metadata after a `ScanStart` of `len` bytes.
    fn read_metadata(&mut self, len: u64) -> Result<Option<Vec<u8>>, Tpx3Error> {
        if len > MAX_METADATA_BYTES {
            return Err(Tpx3Error::Metadata {
                device: self.cfg.device.clone(),
                len,
                max: MAX_METADATA_BYTES,
            });
        }
        let mut m = vec![0u8; len as usize];
        match self
            .conn
            .fill_more(&mut m, self.cfg.frame_timeout)
            .map_err(self.io_error("reading scan metadata"))?
        {
            Fill::Done => Ok(Some(m)),
            Fill::Stopped(_) => Ok(None),
            Fill::Eof(n) => Err(self.truncated("ScanStart metadata", len, n as u64)),
            Fill::TimedOut(n) => Err(self.stalled("ScanStart metadata", len, n as u64)),
        }
    }

    /// The scan header for `ScanStart` `seq` (metadata read), `None` when stopped.
    fn scan_header(
        &mut self,
        seq: u32,
        metadata_length: u64,
    ) -> Result<Option<ScanHeader>, Tpx3Error> {
        let Some(acquisition) = self.acquisition else {
            return Err(Tpx3Error::MidStream {
                device: self.cfg.device.clone(),
                observed: "ScanStart",
            });
        };
        let Some(metadata) = self.read_metadata(metadata_length)? else {
            return Ok(None);
        };
        Ok(Some(ScanHeader {
            acquisition,
            scan: seq,
            metadata,
        }))
    }
}

impl Protocol for Tpx3Protocol {
    type Header = ScanHeader;
    type Frames = ArrayChunk;
    type Error = Tpx3Error;
    type End = EndReason;
    type Series = (u32, u32);
    type Layout = CsrChunks;

    fn last_activity(&self) -> Instant {
        self.conn.last_activity()
    }

    fn pending(&self) -> Option<usize> {
        self.conn.pending()
    }

    fn stopped(&self) -> bool {
        self.conn.stopped()
    }

    fn wait_header(&mut self, deadline: Option<Instant>) -> Result<Option<ScanHeader>, Tpx3Error> {
        let waited_from = Instant::now();
        let mut stale = 0u64;
        loop {
            let h = match self.read_header(deadline)? {
                Ok(h) => h,
                Err(Nothing::TimedOut) => {
                    return Err(Tpx3Error::HeaderTimeout {
                        device: self.cfg.device.clone(),
                        waited_s: waited_from.elapsed().as_secs_f64(),
                    });
                }
                Err(Nothing::Closed) => {
                    return Err(Tpx3Error::Closed {
                        device: self.cfg.device.clone(),
                    });
                }
                Err(Nothing::Stopped) => return Ok(None),
            };
            let mid_stream = |observed| Tpx3Error::MidStream {
                device: self.cfg.device.clone(),
                observed,
            };
            match h {
                Header::AcquisitionStart(a) => self.acquisition = Some(a),
                Header::ScanStart(s) => {
                    if stale > 0 {
                        tracing::warn!(device = %self.cfg.device, stale, "skipped stale chunks before the scan");
                    }
                    return self.scan_header(s.sequence, s.metadata_length);
                }
                Header::ArrayChunk(c) => {
                    if self.acquisition.is_none() {
                        return Err(mid_stream("ArrayChunk"));
                    }
                    let n = self.check_size(&c)?;
                    if !self.skip(n, "a stale ArrayChunk")? {
                        return Ok(None);
                    }
                    stale += 1;
                }
                Header::ScanEnd(_) if self.acquisition.is_none() => {
                    return Err(mid_stream("ScanEnd"));
                }
                Header::ScanEnd(_) => {}
                Header::AcquisitionEnd(_) if self.acquisition.is_none() => {
                    return Err(mid_stream("AcquisitionEnd"));
                }
                Header::AcquisitionEnd(_) => self.acquisition = None,
            }
        }
    }

    fn begin(&mut self, header: &ScanHeader) -> Result<Begin<(u32, u32)>, Tpx3Error> {
        self.scan = header.scan;
        let expected = self
            .cfg
            .expected_frames
            .unwrap_or(header.acquisition.frames());
        Ok(Begin {
            expected,
            series: (header.acquisition.sequence, header.scan),
        })
    }

    fn next(&mut self, deadline: Instant) -> Result<Wait<Message<Self>>, Tpx3Error> {
        let h = match self.read_header(Some(deadline))? {
            Ok(h) => h,
            Err(Nothing::TimedOut) => return Ok(Wait::TimedOut),
            Err(Nothing::Stopped) => return Ok(Wait::Stopped),
            Err(Nothing::Closed) => return Ok(Wait::Closed),
        };
        Ok(match h {
            Header::ArrayChunk(c) => Wait::Ready(Message::Frames(c)),
            Header::ScanEnd(_) => Wait::Ready(Message::End(EndReason::ScanEnd)),
            Header::AcquisitionEnd(_) => {
                self.acquisition = None;
                Wait::Ready(Message::End(EndReason::Cancelled))
            }
            Header::ScanStart(s) => match self.scan_header(s.sequence, s.metadata_length)? {
                Some(h) => Wait::Ready(Message::Header(h)),
                None => Wait::Stopped,
            },
            Header::AcquisitionStart(a) => {
                self.acquisition = Some(a);
                Wait::Ready(Message::End(EndReason::NewHeader))
            }
        })
    }

    fn frames(&mut self, c: ArrayChunk, sink: &mut Sink<'_, Self>) -> Result<Flow, Tpx3Error> {
        let payload = self.check_size(&c)?;
        let Some(acq) = self.acquisition else {
            return Err(Tpx3Error::MidStream {
                device: self.cfg.device.clone(),
                observed: "ArrayChunk",
            });
        };
        let format = acq.format();
        let first = sink.next_frame();
        let n = u64::from(c.frames);
        if n == 0 {
            // No rows: nothing to account; its payload (a lone row pointer) is discarded.
            return Ok(if self.skip(payload, "an empty ArrayChunk")? {
                Flow::Continue
            } else {
                Flow::Stopped
            });
        }
        sink.accept(first, n).map_err(|e| self.core_error(e))?;
        if !sink.has_format() {
            let slot = (payload as usize + HEADER_LEN)
                .next_multiple_of(8)
                .max(MIN_SLOT);
            sink.set_format(Arc::new(format), format.sig_shape, DType::U32, slot)
                .map_err(|e| self.core_error(e))?;
        }
        if let Err(e) = c.chunk_ref(0, first).check_layout(&format) {
            tracing::warn!(device = %self.cfg.device, first_frame = first, frames = n, "damaged ArrayChunk: {e}");
            sink.damaged(first, n);
            return Ok(if self.skip(payload, "a damaged ArrayChunk")? {
                Flow::Continue
            } else {
                Flow::Stopped
            });
        }
        let len = HEADER_LEN + payload as usize;
        let Some(dst) = sink.reserve(first, len).map_err(|e| self.core_error(e))? else {
            return Ok(Flow::Stopped);
        };
        dst[..HEADER_LEN].copy_from_slice(&Header::ArrayChunk(c).to_bytes());
        let fill = self
            .conn
            .fill_more(&mut dst[HEADER_LEN..], self.cfg.frame_timeout)
            .map_err(self.io_error("reading a chunk payload"))?;
        let what = || {
            format!(
                "the payload of the ArrayChunk of frames {first}..{}",
                first + n
            )
        };
        match fill {
            Fill::Done => {}
            Fill::Stopped(_) => return Ok(Flow::Stopped),
            Fill::Eof(got) => {
                sink.damaged(first, n);
                return Err(self.truncated(&what(), payload, got as u64));
            }
            Fill::TimedOut(got) => {
                sink.damaged(first, n);
                return Err(self.stalled(&what(), payload, got as u64));
            }
        }
        sink.commit(first, c.frames)
            .map_err(|e| self.core_error(e))?;
        Ok(Flow::Continue)
    }

    fn core_error(&self, error: CoreError) -> Tpx3Error {
        let device = self.cfg.device.clone();
        match error {
            CoreError::Order {
                expected,
                observed,
                kind,
            } => Tpx3Error::Frames {
                device,
                scan: self.scan,
                detail: match kind {
                    OrderError::PastEnd { expected_frames } => format!(
                        "a chunk's rows run past the scan's {expected_frames} frames (next row {expected}, chunk from {observed})"
                    ),
                    OrderError::Backwards => {
                        format!("rows went backwards: expected {expected}, observed {observed}")
                    }
                    OrderError::PastLimit { max } => {
                        format!("more than the limit of {max} frames per scan")
                    }
                },
            },
            source => Tpx3Error::Core { device, source },
        }
    }

    fn is_quiet_close(&self, error: &Tpx3Error) -> bool {
        matches!(error, Tpx3Error::Closed { .. })
    }
}
