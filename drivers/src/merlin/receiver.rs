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
use super::stream::{DataStream, Fill, POLL};
use crossbeam_channel::{Receiver, SendTimeoutError, Sender, bounded, unbounded};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use stemflow_core::detector::AcquisitionEnd;
use stemflow_core::frame::{FrameDecoder, RawFrameRef, RawStack};
use stemflow_core::pool::{Pool, PoolError, Pooled};
use stemflow_core::validity::{FrameStatus, FrameValidity};
use stemflow_core::{DType, SigShape};

/// Bytes read at the start of every message: the MPX prefix and the 4-byte payload tag
/// (`HDR,` or `MQ1,`), which tells the message type.
const START_LEN: usize = MPX_PREFIX_LEN + 4;

/// Most frames one acquisition may announce: its validity map takes a byte per frame, and a
/// larger count (a 32768 × 32768 scan) means a corrupt header or setting.
pub const MAX_FRAMES_PER_ACQUISITION: u64 = 1 << 30;

/// Largest acquisition header accepted, bytes (real ones are about 2 KiB).
const MAX_HEADER_LEN: u64 = 1 << 20;

/// Silence that ends the drain of stale bytes after connecting (LiberTEM's value, §1.4).
const DRAIN_SILENCE: Duration = Duration::from_millis(100);

/// Silence after [`MerlinReceiver::end_acquisition`] (and after the last byte) that ends
/// the acquisition. The stream has no end marker (protocols.md §1.4), so a frame still on its way when
/// the detector acknowledged `STOPACQUISITION` is waited for this long; one that comes
/// later is skipped as stale before the next `HDR`.
const END_QUIET: Duration = Duration::from_millis(100);

/// Longest wait for a message start before the receiver looks at an end request again.
const END_POLL: Duration = Duration::from_millis(20);

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

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Frame accounting of one acquisition.
#[derive(Clone, Debug, PartialEq)]
pub struct AcquisitionSummary {
    /// Frames expected (0 = continuous).
    pub expected: u64,
    /// Frames received intact (delivered in stacks).
    pub received: u64,
    /// Frames never received (sequence gaps, and for a finite acquisition every frame after
    /// the last one received), and frames read after the consumer had dropped its stacks
    /// channel (they were discarded).
    pub lost: u64,
    /// Frames partly received (cut by a truncated or stalled stream, or of the wrong size).
    pub damaged: u64,
    /// Per-frame status; its length is `expected`, or for a continuous acquisition the
    /// frames up to the last sequence number seen.
    pub validity: FrameValidity,
    /// Why the acquisition ended.
    pub end: EndReason,
}

impl AcquisitionSummary {
    /// The detector-independent end record the orchestrator stores
    /// ([`stemflow_core::detector::AcquisitionEnd`]); `error` is the message of the
    /// [`ReceiverEvent::Error`] that ended it, if one did.
    pub fn to_acquisition_end(&self, error: Option<String>) -> AcquisitionEnd {
        AcquisitionEnd {
            expected: self.expected,
            received: self.received,
            lost: self.lost,
            damaged: self.damaged,
            validity: self.validity.clone(),
            reason: self.end.as_str().to_string(),
            error,
        }
    }
}

/// What the receiver reports, in order: per acquisition `Armed`, `FirstFrame` (unless no
/// frame came), then `Finished` or `Error`. The channel disconnects when the connection
/// thread ends.
#[derive(Debug)]
pub enum ReceiverEvent {
    /// HDR received: the detector is armed (this is how "armed" is confirmed). `stacks`
    /// yields the acquisition's frames and is closed after its last stack.
    Armed {
        /// Acquisition number on this connection, from 0.
        acquisition: u64,
        /// The acquisition header.
        header: MerlinHeader,
        /// Raw frame stacks of this acquisition, in frame order.
        stacks: Receiver<RawStack>,
    },
    /// First frame header seen: shape and dtype known.
    FirstFrame {
        /// Acquisition number.
        acquisition: u64,
        /// Decoded frame shape, pixels.
        sig_shape: SigShape,
        /// Decoded pixel type.
        dtype: DType,
        /// The decoder every stack of this acquisition carries.
        decoder: Arc<MerlinDecoder>,
    },
    /// Acquisition over (all expected frames, or ended early by deadline / new HDR / stop /
    /// disconnect). Sent after the stacks channel of that acquisition has been closed (all
    /// stacks sent).
    Finished {
        /// Acquisition number.
        acquisition: u64,
        /// Counts, validity and reason.
        summary: AcquisitionSummary,
    },
    /// A fatal error: the connection is closed; summary of the acquisition in progress if
    /// any (its stacks channel is closed first; stacks sent before the error stay valid).
    Error {
        /// What went wrong.
        error: MerlinError,
        /// The acquisition in progress, if any (`end` = [`EndReason::Failed`]).
        summary: Option<AcquisitionSummary>,
    },
}

/// A running receiver: one connection to the data port served by one thread.
/// Lifecycle: [`start`](Self::start) when the detector actor connects (before arming, so
/// the HDR is not missed), read [`events`](Self::events), [`stop`](Self::stop) and
/// [`join`](Self::join) on disconnect. Dropping it stops and joins.
#[derive(Debug)]
pub struct MerlinReceiver {
    device: String,
    events: Receiver<ReceiverEvent>,
    stop: Arc<AtomicBool>,
    end: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
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
        let (tx, events) = unbounded();
        let end = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            cfg,
            conn,
            end: Arc::clone(&end),
            events: tx,
            pool: None,
            acquisitions: 0,
            head: Vec::new(),
            scratch: vec![0u8; 64 * 1024],
        };
        let thread = std::thread::Builder::new()
            .name("merlin-rx".into())
            .spawn(move || worker.run())
            .map_err(io_err("spawning the receiver thread"))?;
        Ok(Self {
            device,
            events,
            stop,
            end,
            thread: Some(thread),
        })
    }

    /// The device name.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The event channel (see [`ReceiverEvent`] for the order of events). Unbounded: a few
    /// events per acquisition; frames travel in the stacks channels.
    pub fn events(&self) -> &Receiver<ReceiverEvent> {
        &self.events
    }

    /// Whether the connection thread still runs (it ends after [`stop`](Self::stop), a
    /// disconnect or a fatal error, each reported on [`events`](Self::events) first).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Ends the current acquisition (reported `Finished` with [`EndReason::Stopped`]) and
    /// the connection, within about 10 ms of polling plus the time to send what was
    /// received.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
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
        self.end.store(true, Ordering::SeqCst);
    }

    /// Waits for the connection thread to end (after [`stop`](Self::stop), a disconnect or
    /// a fatal error; without them it runs as long as the connection lasts).
    pub fn join(mut self) {
        self.join_thread();
    }

    fn join_thread(&mut self) {
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!(device = %self.device, "receiver thread panicked");
        }
    }
}

impl Drop for MerlinReceiver {
    fn drop(&mut self) {
        self.stop();
        self.join_thread();
    }
}

/// The buffer pool of a connection and the payload size it was sized for.
struct StackPool {
    pool: Pool<Vec<u8>>,
    payload_len: usize,
    /// Frames of `payload_len` bytes per buffer.
    frames: usize,
}

/// Frame format of an acquisition, fixed by its first frame.
struct Format {
    mpx_length: u64,
    data_offset: usize,
    payload_len: usize,
    decoder: Arc<MerlinDecoder>,
}

/// A stack being filled.
struct OpenStack {
    first_frame: u64,
    frames: Vec<RawFrameRef>,
    buf: Pooled<Vec<u8>>,
    /// When its first frame had been read completely.
    first_received: Instant,
}

/// State of the acquisition under way.
struct Acquisition {
    id: u64,
    header: MerlinHeader,
    expected: u64,
    /// `None` once the consumer dropped its receiver (frames are then read and discarded).
    stacks: Option<Sender<RawStack>>,
    format: Option<Format>,
    stack: Option<OpenStack>,
    /// Sequence number expected next (frames `1..next_seq` are accounted for).
    next_seq: u64,
    /// Lost frame index ranges `[from, to)` from sequence gaps, in order.
    gaps: Vec<(u64, u64)>,
    /// Indices of damaged frames.
    damaged: Vec<u64>,
    /// First frame of the first stack the consumer did not take (it had dropped its
    /// receiver, e.g. a cancelled pipeline): this frame and every later one were read and
    /// discarded, so none counts as received.
    discarded_from: Option<u64>,
}

impl Acquisition {
    /// Builds the summary; consumes the acquisition so its stacks channel is closed first.
    fn into_summary(self, end: EndReason) -> AcquisitionSummary {
        let seen = self.next_seq - 1;
        let mut total = if self.expected > 0 {
            self.expected
        } else {
            seen
        };
        if let Some(d) = self.damaged.iter().max() {
            total = total.max(d + 1);
        }
        let mut validity = FrameValidity::new(usize::try_from(total).unwrap_or(usize::MAX));
        let mut pos = 0u64;
        for &(from, to) in &self.gaps {
            validity.mark_range_received(pos, (from - pos) as usize);
            pos = to;
        }
        validity.mark_range_received(pos, seen.saturating_sub(pos) as usize);
        for &d in &self.damaged {
            validity.mark(d, FrameStatus::Damaged);
        }
        if let Some(from) = self.discarded_from {
            for i in from..seen {
                if validity.status(i as usize) == FrameStatus::Received {
                    validity.mark(i, FrameStatus::Missing);
                }
            }
        }
        AcquisitionSummary {
            expected: self.expected,
            received: validity.received() as u64,
            lost: validity.missing() as u64,
            damaged: validity.damaged() as u64,
            validity,
            end,
        }
    }
}

/// How an acquisition handed control back.
enum Next {
    /// Wait for the next HDR.
    Wait,
    /// This HDR arrived and starts the next acquisition.
    Header(MerlinHeader),
    /// The connection is over (stop or disconnect).
    Exit,
}

/// How reading a message body ended, when it did not fail.
/// "frame N" in error messages, formatted only when an error is built.
struct FrameName(u64);

impl std::fmt::Display for FrameName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "frame {}", self.0)
    }
}

enum Body {
    Complete,
    Stopped,
}

/// A fatal error and the summary of the acquisition it ended.
struct Fatal {
    error: MerlinError,
    summary: Option<AcquisitionSummary>,
}

impl From<MerlinError> for Box<Fatal> {
    fn from(error: MerlinError) -> Self {
        Box::new(Fatal {
            error,
            summary: None,
        })
    }
}

/// The connection thread's state.
struct Worker {
    cfg: MerlinReceiverConfig,
    conn: DataStream,
    /// Set by [`MerlinReceiver::end_acquisition`]; cleared when an acquisition starts.
    end: Arc<AtomicBool>,
    events: Sender<ReceiverEvent>,
    pool: Option<StackPool>,
    acquisitions: u64,
    /// Frame header scratch (grown to the data offset); pixel payloads never pass here.
    head: Vec<u8>,
    /// Scratch for discarded bytes (stale frames).
    scratch: Vec<u8>,
}

impl Worker {
    fn run(mut self) {
        if let Err(f) = self.serve() {
            // A detector that closes the connection between acquisitions (e.g. shutting
            // down) loses no frame; everything else is worth a warning.
            if matches!(f.error, MerlinError::Closed { .. }) && f.summary.is_none() {
                tracing::info!(device = %self.cfg.device, "data connection closed between acquisitions");
            } else {
                tracing::warn!(device = %self.cfg.device, error = %f.error, "merlin receiver failed");
            }
            self.emit(ReceiverEvent::Error {
                error: f.error,
                summary: f.summary,
            });
        }
    }

    fn emit(&self, event: ReceiverEvent) {
        // Nobody listening is not an error: the receiver is being dropped.
        let _ = self.events.send(event);
    }

    fn serve(&mut self) -> Result<(), Box<Fatal>> {
        if self.cfg.drain {
            self.drain()?;
        }
        let mut header_deadline = Some(Instant::now() + self.cfg.header_timeout);
        let mut pending = None;
        loop {
            let header = match pending.take() {
                Some(h) => h,
                None => match self.wait_header(header_deadline.take())? {
                    Some(h) => h,
                    None => return Ok(()),
                },
            };
            match self.acquisition(header)? {
                Next::Wait => {}
                Next::Header(h) => pending = Some(h),
                Next::Exit => return Ok(()),
            }
        }
    }

    fn io_error(&self, during: &'static str) -> impl FnOnce(std::io::Error) -> MerlinError + use<> {
        let device = self.cfg.device.clone();
        move |source| MerlinError::Io {
            device,
            during,
            source,
        }
    }

    fn drain(&mut self) -> Result<(), Box<Fatal>> {
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
            }
            .into());
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
    fn wait_header(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<MerlinHeader>, Box<Fatal>> {
        let waited_from = Instant::now();
        let mut stale = 0u64;
        loop {
            let (start, prefix) = match self.read_start(deadline)? {
                Ok(s) => s,
                Err(Fill::TimedOut(_)) => {
                    return Err(MerlinError::HeaderTimeout {
                        device: self.cfg.device.clone(),
                        waited_s: waited_from.elapsed().as_secs_f64(),
                    }
                    .into());
                }
                Err(Fill::Eof(_)) => {
                    return Err(MerlinError::Closed {
                        device: self.cfg.device.clone(),
                    }
                    .into());
                }
                Err(_) => return Ok(None),
            };
            match &start[MPX_PREFIX_LEN..] {
                b"HDR," => {
                    if stale > 0 {
                        tracing::warn!(device = %self.cfg.device, stale, "skipped stale frames before the acquisition header");
                    }
                    return Ok(self.read_header(&start, prefix)?);
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
                            return Err(self
                                .truncated("a stale frame", total, (START_LEN + n) as u64)
                                .into());
                        }
                        (Fill::TimedOut(_), n) => {
                            return Err(self
                                .stalled("a stale frame", total, (START_LEN + n) as u64)
                                .into());
                        }
                    }
                }
                _ => {
                    return Err(self
                        .unexpected("an acquisition header (HDR)", &start, prefix)
                        .into());
                }
            }
        }
    }

    /// Flushes the open stack and builds the fatal error report.
    fn fail(&mut self, mut acq: Acquisition, error: MerlinError) -> Box<Fatal> {
        if let Err(e) = self.flush(&mut acq) {
            tracing::warn!(device = %self.cfg.device, error = %e, "could not deliver the last stack");
        }
        Box::new(Fatal {
            error,
            summary: Some(acq.into_summary(EndReason::Failed)),
        })
    }

    /// Flushes the open stack, closes the stacks channel, reports `Finished`.
    fn finish(&mut self, mut acq: Acquisition, end: EndReason) {
        if let Err(e) = self.flush(&mut acq) {
            tracing::warn!(device = %self.cfg.device, error = %e, "could not deliver the last stack");
        }
        let acquisition = acq.id;
        let summary = acq.into_summary(end);
        if summary.lost > 0 || summary.damaged > 0 {
            tracing::warn!(
                device = %self.cfg.device, acquisition, lost = summary.lost,
                damaged = summary.damaged, end = ?end, "acquisition ended with missing frames"
            );
        }
        self.emit(ReceiverEvent::Finished {
            acquisition,
            summary,
        });
    }

    /// Sends the open stack, if it holds frames.
    fn flush(&mut self, acq: &mut Acquisition) -> Result<(), MerlinError> {
        let (Some(open), Some(format)) = (acq.stack.take(), acq.format.as_ref()) else {
            return Ok(());
        };
        if open.frames.is_empty() {
            return Ok(());
        }
        let Some(tx) = &acq.stacks else {
            return Ok(());
        };
        let decoder: Arc<dyn FrameDecoder> = Arc::clone(&format.decoder) as Arc<dyn FrameDecoder>;
        let first = open.first_frame;
        let stack = RawStack {
            first_frame: open.first_frame,
            frames: open.frames,
            buf: open.buf,
            decoder,
            first_received: open.first_received,
        };
        match tx.send_timeout(stack, self.cfg.frame_timeout) {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Disconnected(_)) => {
                tracing::warn!(device = %self.cfg.device, acquisition = acq.id, "consumer dropped the stacks channel; frames are discarded");
                acq.stacks = None;
                acq.discarded_from = Some(first);
                Ok(())
            }
            Err(SendTimeoutError::Timeout(_)) => Err(MerlinError::Pool {
                device: self.cfg.device.clone(),
                source: PoolError::Exhausted {
                    pool: format!("{} stacks channel", self.cfg.device),
                    capacity: self.cfg.pool_stacks,
                    waited_s: self.cfg.frame_timeout.as_secs_f64(),
                },
            }),
        }
    }

    /// True when every stack buffer but the open stack's is back in the pool: the consumer
    /// has finished every stack sent to it.
    fn consumer_idle(&self) -> bool {
        self.pool
            .as_ref()
            .is_some_and(|sp| sp.pool.free() + 1 >= sp.pool.capacity())
    }

    /// Allocates (and touches) the connection's stack buffers unless they already fit
    /// `payload_len`.
    fn ensure_pool(&mut self, payload_len: usize) {
        if self
            .pool
            .as_ref()
            .is_some_and(|p| p.payload_len >= payload_len)
        {
            return;
        }
        let frames = crate::stack_frames(self.cfg.frames_per_stack, payload_len);
        let bytes = frames * payload_len;
        let pool = Pool::new(
            &format!("{} frame stacks", self.cfg.device),
            self.cfg.pool_stacks.max(1),
            || stemflow_core::mem::prefaulted_bytes(bytes),
        );
        self.pool = Some(StackPool {
            pool,
            payload_len,
            frames,
        });
    }

    /// A free stack buffer, waiting at most the frame timeout; `None` on stop.
    fn take_buffer(&self) -> Result<Option<Pooled<Vec<u8>>>, MerlinError> {
        let Some(sp) = &self.pool else {
            return Err(MerlinError::Io {
                device: self.cfg.device.clone(),
                during: "taking a stack buffer",
                source: std::io::Error::other("no buffer pool (no first frame)"),
            });
        };
        let started = Instant::now();
        loop {
            if self.conn.stopped() {
                return Ok(None);
            }
            if let Ok(buf) = sp.pool.take(POLL) {
                return Ok(Some(buf));
            }
            if started.elapsed() >= self.cfg.frame_timeout {
                return Err(MerlinError::Pool {
                    device: self.cfg.device.clone(),
                    source: PoolError::Exhausted {
                        pool: format!("{} frame stacks", self.cfg.device),
                        capacity: sp.pool.capacity(),
                        waited_s: started.elapsed().as_secs_f64(),
                    },
                });
            }
        }
    }

    /// Receives one acquisition after its `HDR`.
    fn acquisition(&mut self, header: MerlinHeader) -> Result<Next, Box<Fatal>> {
        let id = self.acquisitions;
        self.acquisitions += 1;
        let expected = self
            .cfg
            .expected_frames
            .unwrap_or(header.frames_in_acquisition());
        if expected > MAX_FRAMES_PER_ACQUISITION {
            return Err(MerlinError::TooManyFrames {
                device: self.cfg.device.clone(),
                frames: expected,
                max: MAX_FRAMES_PER_ACQUISITION,
            }
            .into());
        }
        let (tx, rx) = bounded(self.cfg.pool_stacks.max(1));
        // Before `Armed`: a detector disarms only after its arm saw `Armed`, so an end
        // request from an earlier acquisition lapses here and a new one is never missed.
        self.end.store(false, Ordering::SeqCst);
        let mut end_requested: Option<Instant> = None;
        self.emit(ReceiverEvent::Armed {
            acquisition: id,
            header: header.clone(),
            stacks: rx,
        });
        let mut acq = Acquisition {
            id,
            header,
            expected,
            stacks: Some(tx),
            format: None,
            stack: None,
            next_seq: 1,
            gaps: Vec::new(),
            damaged: Vec::new(),
            discarded_from: None,
        };
        let first_deadline = Instant::now() + self.cfg.first_frame_timeout;
        loop {
            let deadline = match acq.format {
                None => first_deadline,
                Some(_) => self.conn.last_activity() + self.cfg.frame_timeout,
            };
            // Waits in slices, so that an end request is seen while the stream is quiet.
            let slice = deadline.min(Instant::now() + END_POLL);
            let (start, prefix) = match self.read_start(Some(slice)) {
                Ok(Ok(s)) => s,
                Ok(Err(Fill::Stopped(_))) => {
                    self.finish(acq, EndReason::Stopped);
                    return Ok(Next::Exit);
                }
                Ok(Err(Fill::TimedOut(_))) => {
                    let now = Instant::now();
                    if now >= deadline {
                        self.finish(acq, EndReason::InactivityDeadline);
                        return Ok(Next::Wait);
                    }
                    if end_requested.is_none() && self.end.load(Ordering::SeqCst) {
                        end_requested = Some(now);
                    }
                    if let Some(at) = end_requested
                        && now >= at.max(self.conn.last_activity()) + END_QUIET
                    {
                        self.end.store(false, Ordering::SeqCst);
                        self.finish(acq, EndReason::Disarmed);
                        return Ok(Next::Wait);
                    }
                    continue;
                }
                Ok(Err(_)) => {
                    self.finish(acq, EndReason::Disconnected);
                    return Ok(Next::Exit);
                }
                Err(e) => return Err(self.fail(acq, e)),
            };
            match &start[MPX_PREFIX_LEN..] {
                b"MQ1," => {}
                b"HDR," => {
                    return match self.read_header(&start, prefix) {
                        Ok(Some(next)) => {
                            self.finish(acq, EndReason::NewHeader);
                            Ok(Next::Header(next))
                        }
                        Ok(None) => {
                            self.finish(acq, EndReason::Stopped);
                            Ok(Next::Exit)
                        }
                        Err(e) => Err(self.fail(acq, e)),
                    };
                }
                _ => {
                    let e = self.unexpected(
                        "a frame (MQ1) or an acquisition header (HDR)",
                        &start,
                        prefix,
                    );
                    return Err(self.fail(acq, e));
                }
            }
            match self.frame(&mut acq, prefix) {
                Ok(Some(seq)) => {
                    if acq.expected > 0 && seq == acq.expected {
                        self.finish(acq, EndReason::AllFrames);
                        return Ok(Next::Wait);
                    }
                }
                Ok(None) => {
                    self.finish(acq, EndReason::Stopped);
                    return Ok(Next::Exit);
                }
                Err(e) => return Err(self.fail(acq, e)),
            }
        }
    }

    /// Reads the rest of one MQ1 frame (its tag is read) into the open stack. Returns its
    /// sequence number, or `None` on stop. Damaged frames are recorded in `acq`.
    fn frame(
        &mut self,
        acq: &mut Acquisition,
        prefix: MpxPrefix,
    ) -> Result<Option<u64>, MerlinError> {
        let device = self.cfg.device.clone();
        let message = prefix.payload_len();
        let seq = if acq.format.is_none() {
            match self.first_frame(acq, prefix)? {
                Some(seq) => seq,
                None => return Ok(None),
            }
        } else {
            let Some(f) = acq.format.as_ref() else {
                return Ok(None);
            };
            let (data_offset, mpx_length) = (f.data_offset, f.mpx_length);
            if prefix.length != mpx_length {
                // Assumed to be the frame expected next: it arrived, but unusable.
                acq.damaged.push(acq.next_seq - 1);
                return Err(MerlinError::FrameSize {
                    device,
                    sequence: acq.next_seq,
                    expected: mpx_length - 1,
                    observed: message as u64,
                });
            }
            let mut head = std::mem::take(&mut self.head);
            head.resize(data_offset, 0);
            head[..4].copy_from_slice(mq1::MQ1_MAGIC);
            let total = (MPX_PREFIX_LEN + message) as u64;
            // Named lazily: this runs once per frame and must not allocate.
            let what = FrameName(acq.next_seq);
            let body = self.read_body(&mut head[4..], &what, START_LEN as u64, total);
            let parsed = match body {
                Ok(Body::Complete) => mq1::quick_parse(&head),
                Ok(Body::Stopped) => {
                    self.head = head;
                    return Ok(None);
                }
                Err(e) => {
                    self.head = head;
                    acq.damaged.push(acq.next_seq - 1);
                    return Err(e);
                }
            };
            self.head = head;
            let (seq, offset) = parsed.map_err(|source| MerlinError::FrameHeader {
                device: device.clone(),
                sequence: acq.next_seq,
                source,
            })?;
            if offset != data_offset {
                return Err(MerlinError::DataOffset {
                    device,
                    sequence: seq,
                    expected: data_offset,
                    observed: offset,
                });
            }
            seq
        };
        self.check_sequence(acq, seq)?;

        let (payload_len, frames_per_stack) = match acq.format.as_ref() {
            // A pool kept from a larger format holds at least as many frames of this one.
            Some(f) => (
                f.payload_len,
                self.pool.as_ref().map_or(1, |p| p.frames.max(1)),
            ),
            None => return Ok(None),
        };
        if acq.stack.is_none() {
            let Some(buf) = self.take_buffer()? else {
                return Ok(None);
            };
            acq.stack = Some(OpenStack {
                first_frame: seq - 1,
                frames: Vec::with_capacity(frames_per_stack),
                buf,
                first_received: Instant::now(),
            });
        }
        let Some(open) = acq.stack.as_mut() else {
            return Ok(None);
        };
        let offset = open.frames.len() * payload_len;
        let what = FrameName(seq);
        let total = (MPX_PREFIX_LEN + message) as u64;
        let before = total - payload_len as u64;
        let fill = self
            .conn
            .fill_more(
                &mut open.buf[offset..offset + payload_len],
                self.cfg.frame_timeout,
            )
            .map_err(self.io_error("reading a frame payload"))?;
        match fill {
            Fill::Done => {}
            Fill::Stopped(_) => return Ok(None),
            Fill::Eof(n) => {
                acq.damaged.push(seq - 1);
                return Err(self.truncated(&what, total, before + n as u64));
            }
            Fill::TimedOut(n) => {
                acq.damaged.push(seq - 1);
                return Err(self.stalled(&what, total, before + n as u64));
            }
        }
        if open.frames.is_empty() {
            open.first_received = Instant::now();
        }
        open.frames.push(RawFrameRef {
            offset,
            len: payload_len,
        });
        acq.next_seq = seq + 1;
        let full = open.frames.len() >= frames_per_stack;
        if full || (self.consumer_idle() && self.conn.pending() == Some(0)) {
            // Full, or the consumer has nothing left to do and the next frame is not here
            // yet: at slow frame rates a stack would otherwise fill many frame times after
            // its first frame arrived. While the consumer is busy, stacks fill, which keeps
            // their number (and the work per stack) in bounds at high rates.
            self.flush(acq)?;
        }
        Ok(Some(seq))
    }

    /// Reads and parses the first frame header of an acquisition, builds the decoder and
    /// the pool, reports `FirstFrame`. Returns the frame's sequence number.
    fn first_frame(
        &mut self,
        acq: &mut Acquisition,
        prefix: MpxPrefix,
    ) -> Result<Option<u64>, MerlinError> {
        let device = self.cfg.device.clone();
        let message = prefix.payload_len();
        let mut head = std::mem::take(&mut self.head);
        let result = self.read_first_header(&mut head, acq.next_seq, message);
        self.head = head;
        let first = match result {
            Ok(Some(first)) => first,
            Ok(None) => return Ok(None),
            Err(e) => {
                if matches!(
                    e,
                    MerlinError::Truncated { .. } | MerlinError::Stalled { .. }
                ) {
                    acq.damaged.push(acq.next_seq - 1);
                }
                return Err(e);
            }
        };
        let decoder = MerlinDecoder::new(&first, Some(&acq.header))
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
        self.ensure_pool(payload_len);
        let decoder = Arc::new(decoder);
        acq.format = Some(Format {
            mpx_length: prefix.length,
            data_offset: first.data_offset,
            payload_len,
            decoder: Arc::clone(&decoder),
        });
        self.emit(ReceiverEvent::FirstFrame {
            acquisition: acq.id,
            sig_shape: decoder.sig_shape(),
            dtype: decoder.dtype(),
            decoder,
        });
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

    /// Accepts `seq` as the next frame: a forward gap closes the open stack and marks the
    /// skipped frames lost; 0, backwards and past-the-end sequence numbers are errors.
    fn check_sequence(&mut self, acq: &mut Acquisition, seq: u64) -> Result<(), MerlinError> {
        let err = |detail: String| MerlinError::Sequence {
            device: self.cfg.device.clone(),
            expected: acq.next_seq,
            observed: seq,
            detail,
        };
        if seq == 0 {
            return Err(err("sequence numbers start at 1".into()));
        }
        if seq < acq.next_seq {
            return Err(err("went backwards".into()));
        }
        if acq.expected > 0 && seq > acq.expected {
            return Err(err(format!(
                "past the end of an acquisition of {} frames",
                acq.expected
            )));
        }
        if seq > acq.next_seq {
            let (from, to) = (acq.next_seq - 1, seq - 1);
            tracing::warn!(device = %self.cfg.device, acquisition = acq.id, from, to, "frames lost (sequence gap)");
            self.flush(acq)?;
            acq.gaps.push((from, to));
            acq.next_seq = seq;
        }
        Ok(())
    }
}
