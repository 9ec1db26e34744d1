//! [`MerlinReceiver`]: the Merlin data-port (TCP 6342) receiver, one thread per connection
//! (protocols.md §1.4–§1.8).
//!
//! Per acquisition the stream is `HDR MQ1#1 MQ1#2 … MQ1#N`, with no end marker, and one
//! connection carries many acquisitions. The receiver:
//!
//! 1. connects (deadline), optionally drains stale bytes until 100 ms of silence;
//! 2. waits for an `HDR` (the deadline `header_timeout` applies to the first one after
//!    [`start`](MerlinReceiver::start); between acquisitions it waits until stop or
//!    disconnect) and reports [`ReceiverEvent::Armed`] — how "armed" is confirmed;
//! 3. parses the first `MQ1` header, builds the [`MerlinDecoder`], sizes the buffer pool
//!    (once per connection, again only if the frame size changes) and reports
//!    [`ReceiverEvent::FirstFrame`];
//! 4. reads every frame header into a small scratch buffer and its payload straight into a
//!    pooled stack buffer (one copy, socket → stack), checking on every frame the MPX magic,
//!    the MPX length against the first frame's, the MQ1 magic, the data offset and the
//!    sequence number;
//! 5. ends the acquisition after the expected frame count, at the inactivity deadline, on a
//!    new `HDR`, once the stream is quiet after [`end_acquisition`](MerlinReceiver::end_acquisition)
//!    (the detector was told to stop), on stop, or on disconnect, closes its stack channel
//!    and reports [`ReceiverEvent::Finished`] with counts and the validity map; then goes
//!    back to 2.
//!
//! A sequence gap closes the current stack (stacks hold consecutive frames) and marks the
//! skipped frames lost. Any protocol violation ends the connection with
//! [`ReceiverEvent::Error`]. The buffer pool is the backpressure: when every buffer is with
//! the consumer the receiver stops reading (TCP pushes back on the detector) for at most the
//! frame timeout, then fails naming the pool.

use super::decode::MerlinDecoder;
use super::error::MerlinError;
use super::hdr::MerlinHeader;
use super::mpx::{self, DEFAULT_MAX_MPX_LENGTH, MPX_PREFIX_LEN, MpxPrefix};
use super::mq1::{self, MQ1_MIN_LEN, Mq1Header};
use super::stream::{DataStream, Fill};
use crate::receiver::{
    self, Begin, Connection, CoreError, DenseFrames, Flow, Message, OrderError, Protocol, Settings,
    Sink, Wait,
};
use crossbeam_channel::Receiver;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};
use stemflow_core::frame::FrameDecoder;
#[cfg(doc)]
use stemflow_core::frame::RawStack;
use stemflow_core::{DType, SigShape};

/// Bytes read at the start of every message: the MPX prefix and the 4-byte payload tag
/// (`HDR,` or `MQ1,`), which tells the message type.
const START_LEN: usize = MPX_PREFIX_LEN + 4;

/// Most frames one acquisition may announce (the core's limit,
/// [`receiver::MAX_FRAMES_PER_ACQUISITION`]): its validity map takes a byte per frame, and a
/// larger count (a 32768 × 32768 scan) means a corrupt header or setting.
pub const MAX_FRAMES_PER_ACQUISITION: u64 = receiver::MAX_FRAMES_PER_ACQUISITION;

/// Largest acquisition header accepted, bytes (real ones are about 2 KiB).
const MAX_HEADER_LEN: u64 = 1 << 20;

/// Silence that ends the drain of stale bytes after connecting (LiberTEM's value, §1.4).
const DRAIN_SILENCE: Duration = Duration::from_millis(100);

/// Settings of one receiver connection. Times are deadlines; see each field.
#[derive(Clone, Debug)]
pub struct MerlinReceiverConfig {
    /// Device name used in every error and log line (e.g. `merlin @ 127.0.0.1:6342`).
    pub device: String,
    /// The data port (Merlin: TCP 6342).
    pub data_addr: SocketAddr,
    /// Deadline for the TCP connection.
    pub connect_timeout: Duration,
    /// Deadline for the first `HDR` after [`MerlinReceiver::start`] (after the drain).
    /// Later acquisitions on the same connection wait for their `HDR` until stop.
    pub header_timeout: Duration,
    /// Deadline from an `HDR` to the first frame (the trigger wait). When it passes the
    /// acquisition ends with [`EndReason::InactivityDeadline`], every frame lost.
    pub first_frame_timeout: Duration,
    /// Inactivity deadline between frames, and inside a message; also the longest wait for a
    /// free stack buffer (a stalled consumer).
    pub frame_timeout: Duration,
    /// Frames per [`RawStack`] (a live partition); 0 (the default): automatic, about
    /// 4 MiB of frames ([`crate::stack_frames`]).
    pub frames_per_stack: usize,
    /// Stack buffers in the pool, allocated once per connection from the first frame's
    /// size: `pool_stacks × frames per stack × payload bytes` (e.g. 16).
    pub pool_stacks: usize,
    /// Frames per acquisition, overriding the HDR's `Frames in Acquisition` (e.g. from the
    /// scan's nav shape); `Some(0)` = continuous.
    pub expected_frames: Option<u64>,
    /// Drain stale bytes after connecting, until 100 ms of silence (old Merlin software
    /// left stale data; only safe when the detector is not sending).
    pub drain: bool,
    /// Most bytes of receive buffers, whatever the frame header says
    /// ([`receiver::DEFAULT_MEMORY_BUDGET`]).
    pub memory_budget: usize,
}

impl MerlinReceiverConfig {
    /// Defaults for `data_addr`: device `merlin @ <addr>`, connect 2 s, header 10 s, first
    /// frame 10 s, frame 1 s, automatic frames per stack (~4 MiB), 16 stacks, HDR frame
    /// count, no drain.
    pub fn new(data_addr: SocketAddr) -> Self {
        Self {
            device: format!("merlin @ {data_addr}"),
            data_addr,
            connect_timeout: Duration::from_secs(2),
            header_timeout: Duration::from_secs(10),
            first_frame_timeout: Duration::from_secs(10),
            frame_timeout: Duration::from_secs(1),
            frames_per_stack: 0,
            pool_stacks: 16,
            expected_frames: None,
            drain: false,
            memory_budget: receiver::DEFAULT_MEMORY_BUDGET,
        }
    }
}

/// Why an acquisition ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// Every expected frame arrived (the last sequence number was seen).
    AllFrames,
    /// No frame arrived within the frame timeout (or the first-frame timeout); the frames
    /// still expected are lost. Merlin sends no end marker, so this is how a stopped or
    /// aborted acquisition shows (§1.4).
    InactivityDeadline,
    /// A new `HDR` arrived while frames were still expected: the previous acquisition was
    /// aborted and a new one armed.
    NewHeader,
    /// [`MerlinReceiver::stop`] was called.
    Stopped,
    /// [`MerlinReceiver::end_acquisition`] was called (the detector was disarmed) and the
    /// stream then stayed quiet; frames not received are lost.
    Disarmed,
    /// The detector closed the connection between frames.
    Disconnected,
    /// A fatal error ended it (reported in [`ReceiverEvent::Error`]).
    Failed,
}

impl EndReason {
    /// A short description (`all frames`, `inactivity deadline`, …) for run records.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AllFrames => "all frames",
            Self::InactivityDeadline => "inactivity deadline",
            Self::NewHeader => "new acquisition header",
            Self::Stopped => "stopped",
            Self::Disarmed => "disarmed",
            Self::Disconnected => "disconnected",
            Self::Failed => "failed",
        }
    }
}

// The Merlin stream has no end marker (§1.4): a disarm ends by silence.
receiver::end_reasons!(EndReason {
    all_frames: AllFrames,
    inactivity_deadline: InactivityDeadline,
    new_header: NewHeader,
    stopped: Stopped,
    disconnected: Disconnected,
    failed: Failed,
    disarmed: Some(Self::Disarmed),
});

/// Frame accounting of one acquisition ([`receiver::AcquisitionSummary`] with Merlin's end
/// reasons; Merlin acquisitions have no series id, so `series` is `()`, §1.4).
pub type AcquisitionSummary = receiver::AcquisitionSummary<EndReason>;

/// What the receiver reports ([`receiver::ReceiverEvent`] of [`MerlinProtocol`]), in
/// order: per acquisition `Armed` (on the `HDR`, with a [`MerlinHeader`]), `FirstFrame`
/// (with the [`MerlinDecoder`]; unless no frame came), then `Finished` or `Error` (a
/// [`MerlinError`]). The channel disconnects when the connection thread ends.
pub type ReceiverEvent = receiver::ReceiverEvent<MerlinProtocol>;

/// A running receiver: one connection to the data port served by one thread.
/// Lifecycle: [`start`](Self::start) when the detector actor connects (before arming, so
/// the HDR is not missed), read [`events`](Self::events), [`stop`](Self::stop) and
/// [`join`](Self::join) on disconnect. Dropping it stops and joins.
#[derive(Debug)]
pub struct MerlinReceiver {
    conn: Connection<MerlinProtocol>,
}

impl MerlinReceiver {
    /// Connects to `cfg.data_addr` within `cfg.connect_timeout` and starts the connection
    /// thread.
    ///
    /// # Errors
    /// [`MerlinError::Connect`] when the port does not accept in time;
    /// [`MerlinError::Io`] when the socket cannot be set up or the thread not spawned.
    pub fn start(cfg: MerlinReceiverConfig) -> Result<Self, MerlinError> {
        let device = cfg.device.clone();
        let stream = TcpStream::connect_timeout(
            &cfg.data_addr,
            cfg.connect_timeout.max(Duration::from_millis(1)),
        )
        .map_err(|source| MerlinError::Connect {
            device: device.clone(),
            addr: cfg.data_addr,
            timeout_s: cfg.connect_timeout.as_secs_f64(),
            source,
        })?;
        let io_err = |during| {
            let device = device.clone();
            move |source| MerlinError::Io {
                device,
                during,
                source,
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let conn = DataStream::new(stream, Arc::clone(&stop))
            .map_err(io_err("setting up the data socket"))?;
        let settings = Settings {
            device: cfg.device.clone(),
            header_timeout: Some(cfg.header_timeout),
            first_frame_timeout: cfg.first_frame_timeout,
            frame_timeout: cfg.frame_timeout,
            frames_per_stack: cfg.frames_per_stack,
            pool_stacks: cfg.pool_stacks,
            memory_budget: cfg.memory_budget,
        };
        let protocol = MerlinProtocol {
            cfg,
            conn,
            header: None,
            format: None,
            head: Vec::new(),
            scratch: vec![0u8; 64 * 1024],
        };
        let conn = Connection::spawn(settings, protocol, stop, "merlin-rx")
            .map_err(io_err("spawning the receiver thread"))?;
        Ok(Self { conn })
    }

    /// The device name.
    pub fn device(&self) -> &str {
        self.conn.device()
    }

    /// The event channel (see [`ReceiverEvent`] for the order of events). Unbounded: a few
    /// events per acquisition; frames travel in the stacks channels.
    pub fn events(&self) -> &Receiver<ReceiverEvent> {
        self.conn.events()
    }

    /// Whether the connection thread still runs (it ends after [`stop`](Self::stop), a
    /// disconnect or a fatal error, each reported on [`events`](Self::events) first).
    pub fn is_running(&self) -> bool {
        self.conn.is_running()
    }

    /// Ends the current acquisition (reported `Finished` with [`EndReason::Stopped`]) and
    /// the connection, within about 10 ms of polling plus the time to send what was
    /// received.
    pub fn stop(&self) {
        self.conn.stop();
    }

    /// The frame shape and pixel type the next acquisitions must have (an active arm's
    /// configured counter depth and ROI), or `None` to take them from each acquisition's
    /// first MQ1 header (passive mode). A first frame that differs ends its acquisition
    /// with [`MerlinError::Format`]: that frame damaged, the rest lost.
    pub fn expect_format(&self, format: Option<(SigShape, DType)>) {
        self.conn.expect_format(format);
    }

    /// Ends the acquisition in progress once the stream has been quiet for 100 ms (counted
    /// from this call and from the last byte), reported `Finished`
    /// with [`EndReason::Disarmed`]; the connection stays open for the next acquisition.
    /// For the detector actor after `STOPACQUISITION`: the data stream has no end marker
    /// (protocols.md §0 and §1.4), so without this call a stopped acquisition ends only at the
    /// inactivity deadline (`frame_timeout`). Frames that arrive before the silence are
    /// kept; later ones are skipped as stale before the next `HDR`. A request made while no
    /// acquisition runs lapses when the next one starts (its `HDR` arrives).
    pub fn end_acquisition(&self) {
        self.conn.end_acquisition();
    }

    /// Waits for the connection thread to end (after [`stop`](Self::stop), a disconnect or
    /// a fatal error; without them it runs as long as the connection lasts).
    pub fn join(self) {
        self.conn.join();
    }
}

/// Frame format of an acquisition, fixed by its first frame.
#[derive(Clone, Copy, Debug)]
struct Format {
    mpx_length: u64,
    data_offset: usize,
    payload_len: usize,
}

/// "frame N" in error messages, formatted only when an error is built.
struct FrameName(u64);

impl std::fmt::Display for FrameName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "frame {}", self.0)
    }
}

/// How reading a message body ended, when it did not fail.
enum Body {
    Complete,
    Stopped,
}

/// The Merlin data port as a receiver [`Protocol`] (§1.2, §1.4–§1.6): MPX-framed `HDR`
/// and `MQ1` messages on one TCP connection. Built by [`MerlinReceiver::start`]; it owns
/// the socket, the frame-header scratch and the format of the acquisition under way.
#[derive(Debug)]
pub struct MerlinProtocol {
    cfg: MerlinReceiverConfig,
    conn: DataStream,
    /// The acquisition header under way (the decoder is built from it and the first MQ1).
    header: Option<MerlinHeader>,
    /// The acquisition's frame format, from its first frame.
    format: Option<Format>,
    /// Frame header scratch (grown to the data offset); pixel payloads never pass here.
    head: Vec<u8>,
    /// Scratch for discarded bytes (stale frames).
    scratch: Vec<u8>,
}

impl Protocol for MerlinProtocol {
    type Header = MerlinHeader;
    /// The MPX prefix of an `MQ1` message whose tag has been read.
    type Frames = MpxPrefix;
    type Error = MerlinError;
    type End = EndReason;
    type Series = ();
    type Layout = DenseFrames<MerlinDecoder>;

    fn last_activity(&self) -> Instant {
        self.conn.last_activity()
    }

    fn pending(&self) -> Option<usize> {
        self.conn.pending()
    }

    fn stopped(&self) -> bool {
        self.conn.stopped()
    }

    fn prepare(&mut self) -> Result<(), MerlinError> {
        if self.cfg.drain {
            self.drain()?;
        }
        Ok(())
    }

    fn wait_header(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<MerlinHeader>, MerlinError> {
        self.await_header(deadline)
    }

    fn begin(&mut self, header: &MerlinHeader) -> Result<Begin<()>, MerlinError> {
        self.format = None;
        self.header = Some(header.clone());
        let expected = self
            .cfg
            .expected_frames
            .unwrap_or(header.frames_in_acquisition());
        Ok(Begin {
            expected,
            series: (),
        })
    }

    fn next(&mut self, deadline: Instant) -> Result<Wait<Message<Self>>, MerlinError> {
        let (start, prefix) = match self.read_start(Some(deadline))? {
            Ok(s) => s,
            Err(Fill::Stopped(_)) => return Ok(Wait::Stopped),
            Err(Fill::TimedOut(_)) => return Ok(Wait::TimedOut),
            Err(_) => return Ok(Wait::Closed),
        };
        match &start[MPX_PREFIX_LEN..] {
            b"MQ1," => Ok(Wait::Ready(Message::Frames(prefix))),
            b"HDR," => Ok(match self.read_header(&start, prefix)? {
                Some(h) => Wait::Ready(Message::Header(h)),
                None => Wait::Stopped,
            }),
            _ => Err(self.unexpected(
                "a frame (MQ1) or an acquisition header (HDR)",
                &start,
                prefix,
            )),
        }
    }

    fn frames(
        &mut self,
        prefix: MpxPrefix,
        sink: &mut Sink<'_, Self>,
    ) -> Result<Flow, MerlinError> {
        let seq = match self.frame_header(prefix, sink)? {
            Head::Frame(seq) => seq,
            Head::Skipped => return Ok(Flow::Continue),
            Head::Stopped => return Ok(Flow::Stopped),
        };
        if seq == 0 {
            return Err(MerlinError::Sequence {
                device: self.cfg.device.clone(),
                expected: sink.next_frame() + 1,
                observed: seq,
                detail: "sequence numbers start at 1".into(),
            });
        }
        let index = seq - 1;
        sink.accept(index, 1).map_err(|e| self.core_error(e))?;
        let Some(format) = self.format else {
            return Ok(Flow::Stopped);
        };
        let payload_len = format.payload_len;
        let Some(dst) = sink
            .reserve(index, payload_len)
            .map_err(|e| self.core_error(e))?
        else {
            return Ok(Flow::Stopped);
        };
        let fill = self
            .conn
            .fill_more(dst, self.cfg.frame_timeout)
            .map_err(self.io_error("reading a frame payload"))?;
        let total = (MPX_PREFIX_LEN + prefix.payload_len()) as u64;
        let before = total - payload_len as u64;
        match fill {
            Fill::Done => {}
            Fill::Stopped(_) => return Ok(Flow::Stopped),
            Fill::Eof(n) => {
                sink.damaged(index, 1);
                return Err(self.truncated(&FrameName(seq), total, before + n as u64));
            }
            Fill::TimedOut(n) => {
                sink.damaged(index, 1);
                return Err(self.stalled(&FrameName(seq), total, before + n as u64));
            }
        }
        sink.commit(index, 1).map_err(|e| self.core_error(e))?;
        Ok(Flow::Continue)
    }

    fn core_error(&self, error: CoreError) -> MerlinError {
        let device = self.cfg.device.clone();
        match error {
            CoreError::Pool { source } => MerlinError::Pool { device, source },
            CoreError::TooManyFrames { frames, max } => MerlinError::TooManyFrames {
                device,
                frames,
                max,
            },
            // Merlin numbers frames from 1 (§1.6).
            CoreError::Order {
                expected,
                observed,
                kind,
            } => MerlinError::Sequence {
                device,
                expected: expected + 1,
                observed: observed + 1,
                detail: match kind {
                    OrderError::Backwards => "went backwards".into(),
                    OrderError::PastEnd { expected_frames } => {
                        format!("past the end of an acquisition of {expected_frames} frames")
                    }
                    OrderError::PastLimit { max } => {
                        format!("beyond the limit of {max} frames per acquisition")
                    }
                },
            },
            e @ CoreError::Budget { .. } => MerlinError::Budget { device, source: e },
            e @ CoreError::Format { .. } => MerlinError::Format { device, source: e },
            e @ (CoreError::Slot { .. } | CoreError::Misuse(_)) => MerlinError::Io {
                device,
                during: "writing a frame into its stack",
                source: std::io::Error::other(e.to_string()),
            },
        }
    }

    fn is_quiet_close(&self, error: &MerlinError) -> bool {
        // A detector that closes the connection between acquisitions (e.g. shutting
        // down) loses no frame.
        matches!(error, MerlinError::Closed { .. })
    }
}

impl MerlinProtocol {
    fn io_error(&self, during: &'static str) -> impl FnOnce(std::io::Error) -> MerlinError + use<> {
        let device = self.cfg.device.clone();
        move |source| MerlinError::Io {
            device,
            during,
            source,
        }
    }

    fn drain(&mut self) -> Result<(), MerlinError> {
        let started = Instant::now();
        let (drained, quiet) = self
            .conn
            .drain(DRAIN_SILENCE, started + self.cfg.header_timeout)
            .map_err(self.io_error("draining stale data"))?;
        if !quiet {
            return Err(MerlinError::DrainTimeout {
                device: self.cfg.device.clone(),
                waited_s: started.elapsed().as_secs_f64(),
                drained,
            });
        }
        if drained > 0 {
            tracing::info!(device = %self.cfg.device, drained, "drained stale bytes after connecting");
        }
        Ok(())
    }
    /// Reads the MPX prefix and tag of the next message. `Ok(Err(fill))` reports a fill that
    /// ended with no byte at all (timeout, EOF or stop) for the caller to interpret.
    fn read_start(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Result<([u8; START_LEN], MpxPrefix), Fill>, MerlinError> {
        let mut start = [0u8; START_LEN];
        let fill = self
            .conn
            .fill(&mut start, deadline, self.cfg.frame_timeout)
            .map_err(self.io_error("reading a message start"))?;
        match fill {
            Fill::Done => {}
            Fill::Stopped(_) | Fill::Eof(0) | Fill::TimedOut(0) => return Ok(Err(fill)),
            Fill::Eof(n) => {
                return Err(self.truncated("an MPX prefix", START_LEN as u64, n as u64));
            }
            Fill::TimedOut(n) => {
                return Err(self.stalled("an MPX prefix", START_LEN as u64, n as u64));
            }
        }
        let prefix = MpxPrefix::parse(&start, DEFAULT_MAX_MPX_LENGTH).map_err(|source| {
            MerlinError::Mpx {
                device: self.cfg.device.clone(),
                source,
            }
        })?;
        if prefix.payload_len() < 4 {
            return Err(self.unexpected("a message with a payload (HDR or MQ1)", &start, prefix));
        }
        Ok(Ok((start, prefix)))
    }

    fn truncated(
        &self,
        what: &(impl std::fmt::Display + ?Sized),
        expected: u64,
        received: u64,
    ) -> MerlinError {
        MerlinError::Truncated {
            device: self.cfg.device.clone(),
            what: what.to_string(),
            expected,
            received,
        }
    }

    fn stalled(
        &self,
        what: &(impl std::fmt::Display + ?Sized),
        expected: u64,
        received: u64,
    ) -> MerlinError {
        MerlinError::Stalled {
            device: self.cfg.device.clone(),
            what: what.to_string(),
            expected,
            received,
            waited_s: self.cfg.frame_timeout.as_secs_f64(),
        }
    }

    fn unexpected(&self, expected: &'static str, start: &[u8], prefix: MpxPrefix) -> MerlinError {
        MerlinError::UnexpectedMessage {
            device: self.cfg.device.clone(),
            expected,
            observed: mpx::escape_bytes(&start[MPX_PREFIX_LEN..]),
            length: prefix.length,
        }
    }

    /// Fills `buf`, the rest of a message of which `before` bytes (counting from the MPX
    /// prefix) were read; `total` is the message's full size for error messages.
    fn read_body(
        &mut self,
        buf: &mut [u8],
        what: &(impl std::fmt::Display + ?Sized),
        before: u64,
        total: u64,
    ) -> Result<Body, MerlinError> {
        let fill = self
            .conn
            .fill_more(buf, self.cfg.frame_timeout)
            .map_err(self.io_error("reading a message body"))?;
        match fill {
            Fill::Done => Ok(Body::Complete),
            Fill::Stopped(_) => Ok(Body::Stopped),
            Fill::Eof(n) => Err(self.truncated(what, total, before + n as u64)),
            Fill::TimedOut(n) => Err(self.stalled(what, total, before + n as u64)),
        }
    }

    /// Reads the rest of an `HDR` message whose start is `start`; `None` on stop.
    fn read_header(
        &mut self,
        start: &[u8; START_LEN],
        prefix: MpxPrefix,
    ) -> Result<Option<MerlinHeader>, MerlinError> {
        if prefix.length > MAX_HEADER_LEN {
            return Err(MerlinError::Mpx {
                device: self.cfg.device.clone(),
                source: mpx::MpxError::TooLong {
                    length: prefix.length,
                    max: MAX_HEADER_LEN,
                },
            });
        }
        let mut payload = vec![0u8; prefix.payload_len()];
        payload[..4].copy_from_slice(&start[MPX_PREFIX_LEN..]);
        let total = (MPX_PREFIX_LEN + payload.len()) as u64;
        match self.read_body(
            &mut payload[4..],
            "the acquisition header",
            START_LEN as u64,
            total,
        )? {
            Body::Stopped => return Ok(None),
            Body::Complete => {}
        }
        let header = MerlinHeader::parse(&payload).map_err(|source| MerlinError::Header {
            device: self.cfg.device.clone(),
            source,
        })?;
        for w in header.warnings() {
            tracing::warn!(device = %self.cfg.device, "{w}");
        }
        Ok(Some(header))
    }

    /// Waits for the next `HDR`; frames of a finished acquisition that arrive meanwhile are
    /// skipped (stale). `None`: stopped.
    fn await_header(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<MerlinHeader>, MerlinError> {
        let waited_from = Instant::now();
        let mut stale = 0u64;
        loop {
            let (start, prefix) = match self.read_start(deadline)? {
                Ok(s) => s,
                Err(Fill::TimedOut(_)) => {
                    return Err(MerlinError::HeaderTimeout {
                        device: self.cfg.device.clone(),
                        waited_s: waited_from.elapsed().as_secs_f64(),
                    });
                }
                Err(Fill::Eof(_)) => {
                    return Err(MerlinError::Closed {
                        device: self.cfg.device.clone(),
                    });
                }
                Err(_) => return Ok(None),
            };
            match &start[MPX_PREFIX_LEN..] {
                b"HDR," => {
                    if stale > 0 {
                        tracing::warn!(device = %self.cfg.device, stale, "skipped stale frames before the acquisition header");
                    }
                    return self.read_header(&start, prefix);
                }
                b"MQ1," => {
                    let rest = prefix.payload_len() - 4;
                    let mut scratch = std::mem::take(&mut self.scratch);
                    let skipped = self.conn.skip(rest, &mut scratch, self.cfg.frame_timeout);
                    self.scratch = scratch;
                    let total = (START_LEN + rest) as u64;
                    match skipped.map_err(self.io_error("skipping a stale frame"))? {
                        (Fill::Done, _) => stale += 1,
                        (Fill::Stopped(_), _) => return Ok(None),
                        (Fill::Eof(_), n) => {
                            return Err(self.truncated(
                                "a stale frame",
                                total,
                                (START_LEN + n) as u64,
                            ));
                        }
                        (Fill::TimedOut(_), n) => {
                            return Err(self.stalled(
                                "a stale frame",
                                total,
                                (START_LEN + n) as u64,
                            ));
                        }
                    }
                }
                _ => {
                    return Err(self.unexpected("an acquisition header (HDR)", &start, prefix));
                }
            }
        }
    }

    /// Reads the rest of one MQ1 frame header (its tag is read) and checks it against the
    /// acquisition's format; the first frame of an acquisition sets the format (decoder,
    /// pool, `FirstFrame`). Returns its sequence number, [`Head::Skipped`] for a frame of
    /// the wrong size that was skipped, or [`Head::Stopped`]. A frame that arrived unusable
    /// is counted damaged before the error.
    fn frame_header(
        &mut self,
        prefix: MpxPrefix,
        sink: &mut Sink<'_, Self>,
    ) -> Result<Head, MerlinError> {
        let Some(f) = self.format else {
            return Ok(match self.first_frame(prefix, sink)? {
                Some(seq) => Head::Frame(seq),
                None => Head::Stopped,
            });
        };
        let device = self.cfg.device.clone();
        let message = prefix.payload_len();
        // Assumed to be the frame expected next (its header says otherwise only once read).
        let next_seq = sink.next_frame() + 1;
        if prefix.length != f.mpx_length {
            // It arrived, but unusable.
            sink.damaged(next_seq - 1, 1);
            let error = MerlinError::FrameSize {
                device,
                sequence: next_seq,
                expected: f.mpx_length - 1,
                observed: message as u64,
            };
            // The MPX framing says where this message ends: skip it and go on with the
            // next frame (one damaged frame, as a DECTRIS image that fails to decode),
            // unless its length is implausible (then the stream is not trusted further).
            if prefix.length > 2 * f.mpx_length {
                return Err(error);
            }
            tracing::warn!("{error}; frame counted damaged, the stream goes on");
            let rest = message - 4;
            let mut scratch = std::mem::take(&mut self.scratch);
            let skipped = self.conn.skip(rest, &mut scratch, self.cfg.frame_timeout);
            self.scratch = scratch;
            let total = (START_LEN + rest) as u64;
            let what = FrameName(next_seq);
            return match skipped.map_err(self.io_error("skipping a frame of the wrong size"))? {
                (Fill::Done, _) => Ok(Head::Skipped),
                (Fill::Stopped(_), _) => Ok(Head::Stopped),
                (Fill::Eof(_), n) => Err(self.truncated(&what, total, (START_LEN + n) as u64)),
                (Fill::TimedOut(_), n) => Err(self.stalled(&what, total, (START_LEN + n) as u64)),
            };
        }
        let mut head = std::mem::take(&mut self.head);
        head.resize(f.data_offset, 0);
        head[..4].copy_from_slice(mq1::MQ1_MAGIC);
        let total = (MPX_PREFIX_LEN + message) as u64;
        // Named lazily: this runs once per frame and must not allocate.
        let what = FrameName(next_seq);
        let body = self.read_body(&mut head[4..], &what, START_LEN as u64, total);
        let parsed = match body {
            Ok(Body::Complete) => mq1::quick_parse(&head),
            Ok(Body::Stopped) => {
                self.head = head;
                return Ok(Head::Stopped);
            }
            Err(e) => {
                self.head = head;
                sink.damaged(next_seq - 1, 1);
                return Err(e);
            }
        };
        self.head = head;
        let (seq, offset) = parsed.map_err(|source| MerlinError::FrameHeader {
            device: device.clone(),
            sequence: next_seq,
            source,
        })?;
        if offset != f.data_offset {
            return Err(MerlinError::DataOffset {
                device,
                sequence: seq,
                expected: f.data_offset,
                observed: offset,
            });
        }
        Ok(Head::Frame(seq))
    }

    /// Reads and parses the first frame header of an acquisition, builds the decoder and
    /// the pool, reports `FirstFrame`. Returns the frame's sequence number.
    fn first_frame(
        &mut self,
        prefix: MpxPrefix,
        sink: &mut Sink<'_, Self>,
    ) -> Result<Option<u64>, MerlinError> {
        let device = self.cfg.device.clone();
        let message = prefix.payload_len();
        let mut head = std::mem::take(&mut self.head);
        let next_seq = sink.next_frame() + 1;
        let result = self.read_first_header(&mut head, next_seq, message);
        self.head = head;
        let first = match result {
            Ok(Some(first)) => first,
            Ok(None) => return Ok(None),
            Err(e) => {
                if matches!(
                    e,
                    MerlinError::Truncated { .. } | MerlinError::Stalled { .. }
                ) {
                    sink.damaged(next_seq - 1, 1);
                }
                return Err(e);
            }
        };
        let decoder = MerlinDecoder::new(&first, self.header.as_ref())
            .map_err(|source| MerlinError::Decoder {
                device: device.clone(),
                source,
            })?
            .with_device(device.clone());
        let payload_len = message - first.data_offset;
        if decoder.payload_len() != payload_len {
            return Err(MerlinError::FrameSize {
                device,
                sequence: first.sequence,
                expected: (first.data_offset + decoder.payload_len()) as u64,
                observed: message as u64,
            });
        }
        self.format = Some(Format {
            mpx_length: prefix.length,
            data_offset: first.data_offset,
            payload_len,
        });
        let (sig_shape, dtype) = (decoder.sig_shape(), decoder.dtype());
        if let Err(e) = sink.set_format(Arc::new(decoder), sig_shape, dtype, payload_len) {
            if matches!(e, CoreError::Format { .. }) {
                // It arrived, but not as configured: counted damaged, the rest lost.
                sink.damaged(next_seq - 1, 1);
            }
            return Err(self.core_error(e));
        }
        Ok(Some(first.sequence))
    }

    /// Reads the first frame header (its tag is read) into `head`: up to the data offset
    /// field, then up to the data offset. `None` on stop.
    fn read_first_header(
        &mut self,
        head: &mut Vec<u8>,
        sequence: u64,
        message: usize,
    ) -> Result<Option<Mq1Header>, MerlinError> {
        let header_err = |source| MerlinError::FrameHeader {
            device: self.cfg.device.clone(),
            sequence,
            source,
        };
        if message < MQ1_MIN_LEN {
            return Err(header_err(mq1::Mq1Error::Short {
                expected: MQ1_MIN_LEN,
                observed: message,
            }));
        }
        head.clear();
        head.extend_from_slice(mq1::MQ1_MAGIC);
        head.resize(MQ1_MIN_LEN, 0);
        let what = format!("frame {sequence}");
        let total = (MPX_PREFIX_LEN + message) as u64;
        if let Body::Stopped = self.read_body(&mut head[4..], &what, START_LEN as u64, total)? {
            return Ok(None);
        }
        let header_err = |source| MerlinError::FrameHeader {
            device: self.cfg.device.clone(),
            sequence,
            source,
        };
        let data_offset = mq1::peek_data_offset(head).map_err(header_err)?;
        if data_offset > message {
            return Err(header_err(mq1::Mq1Error::Short {
                expected: data_offset,
                observed: message,
            }));
        }
        head.resize(data_offset, 0);
        let before = (MPX_PREFIX_LEN + MQ1_MIN_LEN) as u64;
        if let Body::Stopped = self.read_body(&mut head[MQ1_MIN_LEN..], &what, before, total)? {
            return Ok(None);
        }
        Mq1Header::parse(head)
            .map(Some)
            .map_err(|source| MerlinError::FrameHeader {
                device: self.cfg.device.clone(),
                sequence,
                source,
            })
    }
}

/// What reading a frame header gave.
enum Head {
    /// A frame of the acquisition's format, with its sequence number (from 1).
    Frame(u64),
    /// A frame of another size, counted damaged and skipped.
    Skipped,
    /// The receiver was stopped.
    Stopped,
}
