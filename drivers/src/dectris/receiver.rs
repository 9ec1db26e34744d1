//! [`DectrisReceiver`]: the DECTRIS stream receiver, a ZeroMQ PULL connection to the DCU
//! served by one thread (protocols.md §2.1, §2.4, §2.6, §2.7).
//!
//! Per series the stream carries a global header (v1 `dheader-1.0` + config; v2 `start`),
//! the frames, and an end (v1 `dseries_end-1.0`; v2 `end`). The receiver:
//!
//! 1. connects (retrying until the connect deadline: the DCU may bind late);
//! 2. waits for a global header whose series passes the [`SeriesFilter`] — everything else
//!    (frames, ends and headers of earlier series) is drained and discarded — and reports
//!    [`ReceiverEvent::Armed`]: this is how "armed" is confirmed. In active mode the
//!    detector sets the filter to [`SeriesFilter::Pending`] before `arm` and to the series
//!    id `arm` returned after it, so a header that overtakes the REST reply is held, not
//!    lost;
//! 3. on the first frame fixes shape, pixel type and encoding, builds the
//!    [`DectrisDecoder`], sizes the buffer pool and reports [`ReceiverEvent::FirstFrame`];
//! 4. reads every frame's compressed blob straight from the socket into a pooled stack
//!    buffer (one copy; decompression happens in the processing workers), checking on every
//!    frame the series id, the frame id (consecutive from 0), the shape/type/encoding
//!    against the first frame's, the blob size against `dimage_d`'s `size`, and the blob's
//!    bitshuffle framing ([`check_framing`]). A frame failing a check is counted damaged and
//!    left out of the stacks; a gap in frame ids closes the open stack and counts the
//!    skipped frames lost, then continues or aborts ([`LossPolicy`]);
//! 5. ends the series after its last frame, at the end-of-series message (early if frames
//!    are missing), at the inactivity deadline, on a new header, on stop or on disconnect;
//!    closes its stacks channel and reports [`ReceiverEvent::Finished`]; then goes back
//!    to 2.
//!
//! Backpressure: when every stack buffer is with the consumer the receiver stops reading
//! (the DCU's PUSH queue fills, §2.7) for at most the frame timeout, then fails naming the
//! pool.

use super::codec::Encoding;
use super::decode::{DectrisDecoder, check_framing};
use super::rest::StreamFormat;
use super::stream::{
    self, DetectorConfig, GlobalHeader, HeaderDetail, StreamError, V1Part, V2Message, V2Start,
};
use super::zmtp::{POLL, PartHead, Wait, ZmtpError, ZmtpPull};
use crossbeam_channel::{Receiver, SendTimeoutError, Sender, bounded, unbounded};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use stemflow_core::detector::AcquisitionEnd;
use stemflow_core::frame::{FrameDecoder, RawFrameRef, RawStack};
use stemflow_core::pool::{Pool, PoolError, Pooled};
use stemflow_core::validity::{FrameStatus, FrameValidity};
use stemflow_core::{DType, SigShape};

/// Most frames one series may announce (its validity map takes a byte per frame).
pub const MAX_FRAMES_PER_SERIES: u64 = 1 << 30;

/// Which series the receiver accepts (§2.7: active mode drains until the header of the
/// series `arm` returned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeriesFilter {
    /// The next header, whatever its series (passive mode).
    Any,
    /// An `arm` is under way: hold the next header until the series id is known (at most
    /// the first-frame timeout, then accept it).
    Pending,
    /// Only this series id; headers of other series are drained with their frames.
    Series(u64),
}

/// What a gap in frame ids (lost frames) does to the series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LossPolicy {
    /// Count the lost frames, mark them in the validity map, go on (default).
    #[default]
    Continue,
    /// End the series with [`DectrisError::FramesLost`].
    Abort,
}

/// Settings of one receiver connection. Times are deadlines.
#[derive(Clone, Debug)]
pub struct DectrisReceiverConfig {
    /// Device name used in every error and log line (e.g. `dectris @ 10.0.0.2:9999`).
    pub device: String,
    /// The DCU's stream endpoint (v1: TCP 9999; v2: TCP 31001).
    pub stream_addr: SocketAddr,
    /// Stream v1 (legacy JSON + binary) or v2 (CBOR).
    pub format: StreamFormat,
    /// Deadline for connecting (retried while refused) and the ZMTP handshake.
    pub connect_timeout: Duration,
    /// Deadline for the first series header after [`DectrisReceiver::start`]; `None`
    /// waits until stop. Later series wait until stop.
    pub header_timeout: Option<Duration>,
    /// Deadline from the header to the first frame (the trigger wait).
    pub first_frame_timeout: Duration,
    /// Inactivity deadline between frames and inside a message; also the longest wait for
    /// a free stack buffer or a consumer.
    pub frame_timeout: Duration,
    /// Frames per [`RawStack`] (a live partition); 0 (the default): automatic, about
    /// 4 MiB of the largest possible blobs ([`crate::stack_frames`]).
    pub frames_per_stack: usize,
    /// Stack buffers in the pool, each frames per stack × the largest possible blob of
    /// the first frame's size (uncompressed size + 1/128 + 4 KiB).
    pub pool_stacks: usize,
    /// Frames per series, overriding the header (e.g. from the scan's nav shape; needed
    /// with `header_detail` `none`); `Some(0)` = until the end-of-series message.
    pub expected_frames: Option<u64>,
    /// The initial series filter (see [`DectrisReceiver::set_series_filter`]).
    pub series: SeriesFilter,
    /// Lost frames: continue (default) or abort the series.
    pub on_lost: LossPolicy,
    /// Stream v2: the threshold channel to take (`None`: the first in each message).
    pub channel: Option<String>,
}

impl DectrisReceiverConfig {
    /// Defaults for `stream_addr`: device `dectris @ <addr>`, connect 2 s, first header
    /// 10 s, first frame 10 s, frame 1 s, 32 frames per stack, 16 stacks, frame count from
    /// the header, any series, continue on loss, first v2 channel.
    pub fn new(stream_addr: SocketAddr, format: StreamFormat) -> Self {
        Self {
            device: format!("dectris @ {stream_addr}"),
            stream_addr,
            format,
            connect_timeout: Duration::from_secs(2),
            header_timeout: Some(Duration::from_secs(10)),
            first_frame_timeout: Duration::from_secs(10),
            frame_timeout: Duration::from_secs(1),
            frames_per_stack: 0,
            pool_stacks: 16,
            expected_frames: None,
            series: SeriesFilter::Any,
            on_lost: LossPolicy::Continue,
            channel: None,
        }
    }
}

/// Errors of the stream receiver; each names the device.
#[derive(Debug, thiserror::Error)]
pub enum DectrisError {
    /// The ZeroMQ connection failed.
    #[error("{device}: stream: {source}")]
    Transport {
        /// Device name.
        device: String,
        /// The transport error (names the peer and the byte counts).
        #[source]
        source: ZmtpError,
    },
    /// A message part is malformed (the source names the part).
    #[error("{device}: series {series}: {source}")]
    Message {
        /// Device name.
        device: String,
        /// The series it belongs to (0 before a header).
        series: u64,
        /// What was wrong.
        #[source]
        source: Box<StreamError>,
    },
    /// A frame id that is not the next one (repeated, backwards, or past the end).
    #[error(
        "{device}: series {series}: expected frame {expected}, observed frame {observed} ({detail})"
    )]
    FrameId {
        /// Device name.
        device: String,
        /// Series id.
        series: u64,
        /// The frame id expected next.
        expected: u64,
        /// The frame id received.
        observed: u64,
        /// Why it is wrong.
        detail: String,
    },
    /// A frame of another series inside a series.
    #[error(
        "{device}: expected frames of series {expected}, observed series {observed} (frame {frame})"
    )]
    Series {
        /// Device name.
        device: String,
        /// The series under way.
        expected: u64,
        /// The series in the frame.
        observed: u64,
        /// The frame id.
        frame: u64,
    },
    /// Frames were lost and [`LossPolicy::Abort`] is set.
    #[error("{device}: series {series}: frames {from}..{to} lost ({} frames); the loss policy is abort", to - from)]
    FramesLost {
        /// Device name.
        device: String,
        /// Series id.
        series: u64,
        /// First lost frame.
        from: u64,
        /// One past the last lost frame.
        to: u64,
    },
    /// No free stack buffer, or the consumer took no stack, within the frame timeout.
    #[error("{device}: {source}")]
    Pool {
        /// Device name.
        device: String,
        /// The pool error.
        #[source]
        source: PoolError,
    },
    /// A series announced more frames than [`MAX_FRAMES_PER_SERIES`].
    #[error("{device}: series {series} announces {frames} frames, more than the limit of {max}")]
    TooManyFrames {
        /// Device name.
        device: String,
        /// Series id.
        series: u64,
        /// Frames announced.
        frames: u64,
        /// The limit.
        max: u64,
    },
    /// No series header within the header deadline.
    #[error("{device}: no series header on {addr} within {waited_s:.3} s")]
    HeaderTimeout {
        /// Device name.
        device: String,
        /// The stream endpoint.
        addr: SocketAddr,
        /// How long we waited, s.
        waited_s: f64,
    },
    /// The receiver thread could not be started.
    #[error("{device}: cannot start the receiver thread: {source}")]
    Spawn {
        /// Device name.
        device: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Why a series ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// Every expected frame arrived.
    AllFrames,
    /// The end-of-series message arrived (before all expected frames when some are lost:
    /// a disarmed, aborted or cancelled series, §2.4).
    SeriesEnd,
    /// No frame within the frame (or first-frame) timeout; the frames still expected are
    /// lost.
    InactivityDeadline,
    /// A new series header arrived.
    NewSeries,
    /// [`DectrisReceiver::stop`] was called.
    Stopped,
    /// The DCU closed the connection.
    Disconnected,
    /// A fatal error ended it (reported in [`ReceiverEvent::Error`]).
    Failed,
}

impl EndReason {
    /// A short description (`all frames`, `end of series`, …) for run records.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AllFrames => "all frames",
            Self::SeriesEnd => "end of series",
            Self::InactivityDeadline => "inactivity deadline",
            Self::NewSeries => "new series header",
            Self::Stopped => "stopped",
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

/// Frame accounting of one series.
#[derive(Clone, Debug, PartialEq)]
pub struct AcquisitionSummary {
    /// Series id.
    pub series: u64,
    /// Frames expected (0 = unknown, until the end of series).
    pub expected: u64,
    /// Frames received intact (delivered in stacks).
    pub received: u64,
    /// Frames never received (gaps, and frames after the last one received), and frames
    /// read after the consumer had dropped its stacks channel (they were discarded).
    pub lost: u64,
    /// Frames received but unusable (bad `dimage_d`, size or framing).
    pub damaged: u64,
    /// Per-frame status; its length is `expected`, or when unknown the frames up to the
    /// last frame id seen.
    pub validity: FrameValidity,
    /// Why the series ended.
    pub end: EndReason,
}

impl AcquisitionSummary {
    /// The detector-independent end record ([`AcquisitionEnd`]); `error` is the message
    /// of the [`ReceiverEvent::Error`] that ended it, if one did.
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

/// A series header as received (v1 `dheader-1.0` + config, v2 `start`).
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesHeader {
    /// Series id.
    pub series: u64,
    /// Stream format it came on.
    pub format: StreamFormat,
    /// v1: the header detail.
    pub header_detail: Option<HeaderDetail>,
    /// v1 `basic`/`all`: the detector configuration part.
    pub config: Option<DetectorConfig>,
    /// v2: the start message.
    pub start: Option<V2Start>,
    /// Frames expected (settings override, else from the header; 0 = unknown).
    pub expected_frames: u64,
    /// Frame shape, if the header gives it.
    pub sig_shape: Option<SigShape>,
    /// Pixel type, if the header gives it.
    pub dtype: Option<DType>,
    /// The header as text (v1: the JSON parts joined by a newline).
    pub raw: String,
}

/// What the receiver reports, in order: per series `Armed`, `FirstFrame` (unless no frame
/// came), then `Finished` or `Error`. The channel disconnects when the thread ends.
#[derive(Debug)]
pub enum ReceiverEvent {
    /// A series header passed the filter: the detector is armed. `stacks` yields the
    /// series' frames in order and is closed after its last stack.
    Armed {
        /// Series number on this connection, from 0.
        acquisition: u64,
        /// The header.
        header: Box<SeriesHeader>,
        /// Raw frame stacks (compressed blobs).
        stacks: Receiver<RawStack>,
    },
    /// First frame seen: shape, pixel type and encoding known.
    FirstFrame {
        /// Series number on this connection.
        acquisition: u64,
        /// Frame shape, pixels.
        sig_shape: SigShape,
        /// Pixel type.
        dtype: DType,
        /// The decoder every stack of this series carries.
        decoder: Arc<DectrisDecoder>,
    },
    /// Series over; sent after its stacks channel has been closed.
    Finished {
        /// Series number on this connection.
        acquisition: u64,
        /// Counts, validity and reason.
        summary: AcquisitionSummary,
    },
    /// A fatal error: the thread ends; the summary of the series under way, if any (its
    /// stacks channel is closed first; stacks sent before stay valid).
    Error {
        /// What went wrong.
        error: DectrisError,
        /// The series under way (`end` = [`EndReason::Failed`]).
        summary: Option<AcquisitionSummary>,
    },
}

/// The shared series filter with a condition variable for [`SeriesFilter::Pending`].
#[derive(Debug)]
struct Expect {
    filter: Mutex<SeriesFilter>,
    changed: Condvar,
}

/// A running receiver: one ZeroMQ PULL connection served by one thread. Start it before
/// arming (so no header is missed), read [`events`](Self::events), and [`stop`](Self::stop)
/// on disconnect; dropping it stops and joins.
#[derive(Debug)]
pub struct DectrisReceiver {
    device: String,
    events: Receiver<ReceiverEvent>,
    stop: Arc<AtomicBool>,
    expect: Arc<Expect>,
    thread: Option<JoinHandle<()>>,
}

impl DectrisReceiver {
    /// Connects to `cfg.stream_addr` (retrying while refused, within
    /// `cfg.connect_timeout`) and starts the thread.
    ///
    /// # Errors
    /// [`DectrisError::Transport`] when no ZMTP PUSH peer accepts in time;
    /// [`DectrisError::Spawn`] when the thread cannot be started.
    pub fn start(cfg: DectrisReceiverConfig) -> Result<Self, DectrisError> {
        let device = cfg.device.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + cfg.connect_timeout;
        let conn = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match ZmtpPull::connect(cfg.stream_addr, left, cfg.frame_timeout, Arc::clone(&stop)) {
                Ok(c) => break c,
                Err(ZmtpError::Connect { source, .. })
                    if source.kind() == std::io::ErrorKind::ConnectionRefused
                        && Instant::now() + Duration::from_millis(50) < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(source) => {
                    return Err(DectrisError::Transport {
                        device: device.clone(),
                        source,
                    });
                }
            }
        };
        let expect = Arc::new(Expect {
            filter: Mutex::new(cfg.series),
            changed: Condvar::new(),
        });
        let (tx, events) = unbounded();
        let worker = Worker {
            conn,
            events: tx,
            expect: Arc::clone(&expect),
            pool: None,
            acquisitions: 0,
            part: Vec::with_capacity(64 * 1024),
            held: None,
            cfg,
        };
        let thread = std::thread::Builder::new()
            .name("dectris-rx".into())
            .spawn(move || worker.run())
            .map_err(|source| DectrisError::Spawn {
                device: device.clone(),
                source,
            })?;
        Ok(Self {
            device,
            events,
            stop,
            expect,
            thread: Some(thread),
        })
    }

    /// The device name.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Whether the receive thread still runs (it ends after [`stop`](Self::stop), a
    /// disconnect or a fatal error, each reported on [`events`](Self::events) first).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// The event channel (see [`ReceiverEvent`] for the order).
    pub fn events(&self) -> &Receiver<ReceiverEvent> {
        &self.events
    }

    /// Sets which series the next header must belong to (takes effect for the next header;
    /// a held [`SeriesFilter::Pending`] header is released).
    pub fn set_series_filter(&self, filter: SeriesFilter) {
        let mut f = self.expect.filter.lock().unwrap_or_else(|e| e.into_inner());
        *f = filter;
        self.expect.changed.notify_all();
    }

    /// Ends the current series (reported with [`EndReason::Stopped`]) and the connection
    /// within about 10 ms plus the time to hand over what was received.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.expect.changed.notify_all();
    }

    /// Waits for the thread to end (after stop, disconnect or a fatal error).
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

impl Drop for DectrisReceiver {
    fn drop(&mut self) {
        self.stop();
        self.join_thread();
    }
}

/// The pool of a connection and the slot size (largest blob) it was sized for.
struct StackPool {
    pool: Pool<Vec<u8>>,
    slot: usize,
    /// Slots of `slot` bytes per buffer.
    frames: usize,
}

/// Frame format of a series, fixed by its first frame.
struct Format {
    sig_shape: SigShape,
    dtype: DType,
    encoding: Encoding,
    big_endian: bool,
    frame_bytes: usize,
    decoder: Arc<DectrisDecoder>,
}

/// What one frame message says about its blob.
#[derive(Clone, Copy, Debug, PartialEq)]
struct FrameMeta {
    sig_shape: SigShape,
    dtype: DType,
    encoding: Encoding,
    big_endian: bool,
    size: Option<u64>,
}

/// Where a frame's blob is: still on the socket (v1 part 3) or in memory (v2).
enum Blob<'a> {
    Wire(PartHead),
    Mem(&'a [u8]),
}

impl Blob<'_> {
    fn len(&self) -> usize {
        match self {
            Blob::Wire(h) => h.len,
            Blob::Mem(b) => b.len(),
        }
    }
}

/// A stack being filled.
struct OpenStack {
    first_frame: u64,
    frames: Vec<RawFrameRef>,
    used: usize,
    buf: Pooled<Vec<u8>>,
    /// When its first frame had been read completely.
    first_received: Instant,
}

/// State of the series under way.
struct Acquisition {
    id: u64,
    series: u64,
    expected: u64,
    stacks: Option<Sender<RawStack>>,
    format: Option<Format>,
    stack: Option<OpenStack>,
    next_frame: u64,
    /// Per-frame codes (0 missing, 1 received, 2 damaged), grown as frames arrive.
    codes: Vec<u8>,
    received: u64,
    damaged: u64,
    /// First frame of the first stack the consumer did not take (it had dropped its
    /// receiver, e.g. a cancelled pipeline): this frame and every later one were read and
    /// discarded, so none counts as received.
    discarded_from: Option<u64>,
}

impl Acquisition {
    fn set(&mut self, frame: u64, status: FrameStatus) {
        let i = frame as usize;
        if self.codes.len() <= i {
            self.codes.resize(i + 1, 0);
        }
        self.codes[i] = status as u8;
        match status {
            FrameStatus::Received => self.received += 1,
            FrameStatus::Damaged => self.damaged += 1,
            FrameStatus::Missing | FrameStatus::NotAcquired => {}
        }
    }

    /// Builds the summary; consumes the acquisition so its stacks channel closes first.
    fn into_summary(self, end: EndReason) -> AcquisitionSummary {
        let total = if self.expected > 0 {
            self.expected.max(self.codes.len() as u64)
        } else {
            self.codes.len() as u64
        };
        let mut validity = FrameValidity::new(total as usize);
        let discarded_from = self.discarded_from.unwrap_or(u64::MAX);
        for (i, &c) in self.codes.iter().enumerate() {
            match c {
                1 if (i as u64) < discarded_from => validity.mark(i as u64, FrameStatus::Received),
                2 => validity.mark(i as u64, FrameStatus::Damaged),
                _ => true,
            };
        }
        let (received, damaged) = (validity.received() as u64, validity.damaged() as u64);
        AcquisitionSummary {
            series: self.series,
            expected: self.expected,
            received,
            lost: total - received - damaged,
            damaged,
            validity,
            end,
        }
    }
}

/// What follows a series.
enum Next {
    /// Wait for the next header.
    Wait,
    /// A header arrived that starts the next series (already accepted by the filter or to
    /// be checked).
    Header(Box<SeriesHeader>),
    /// Stop or disconnect: end the thread.
    Exit,
}

/// A fatal error with the summary of the series under way.
struct Fatal {
    error: DectrisError,
    summary: Option<AcquisitionSummary>,
}

impl From<DectrisError> for Box<Fatal> {
    fn from(error: DectrisError) -> Self {
        Box::new(Fatal {
            error,
            summary: None,
        })
    }
}

/// A message of either stream format, as the series loop sees it.
enum Msg {
    /// A series header.
    Header(Box<SeriesHeader>),
    /// A frame: its series and id, its metadata (or why it is unusable), its blob.
    Frame {
        series: u64,
        frame: u64,
        meta: Result<FrameMeta, StreamError>,
        blob: Option<Vec<u8>>,
        wire: Option<PartHead>,
    },
    /// The end of a series.
    End { series: u64 },
    /// Anything else (ignored).
    Skip,
}

struct Worker {
    cfg: DectrisReceiverConfig,
    conn: ZmtpPull,
    events: Sender<ReceiverEvent>,
    expect: Arc<Expect>,
    pool: Option<StackPool>,
    acquisitions: u64,
    /// Scratch for JSON parts and CBOR messages.
    part: Vec<u8>,
    /// A JSON part read ahead (v1) that the series loop must look at next.
    held: Option<Vec<u8>>,
}

impl Worker {
    fn emit(&self, ev: ReceiverEvent) {
        let _ = self.events.send(ev);
    }

    fn transport(&self, source: ZmtpError) -> DectrisError {
        DectrisError::Transport {
            device: self.cfg.device.clone(),
            source,
        }
    }

    fn run(mut self) {
        let mut header_deadline = self.cfg.header_timeout.map(|t| Instant::now() + t);
        let mut next: Option<Box<SeriesHeader>> = None;
        loop {
            let header = match next.take() {
                Some(h) => h,
                None => match self.wait_header(header_deadline) {
                    Ok(Some(h)) => h,
                    Ok(None) => return,
                    Err(f) => {
                        self.emit(ReceiverEvent::Error {
                            error: f.error,
                            summary: f.summary,
                        });
                        return;
                    }
                },
            };
            header_deadline = None;
            match self.series(*header) {
                Ok(Next::Wait) => {}
                Ok(Next::Header(h)) => {
                    // A header inside a series starts the next one if the filter takes it.
                    if self.accepts(h.series) {
                        next = Some(h);
                    }
                }
                Ok(Next::Exit) => return,
                Err(f) => {
                    self.emit(ReceiverEvent::Error {
                        error: f.error,
                        summary: f.summary,
                    });
                    return;
                }
            }
        }
    }

    /// Whether the filter takes `series`; holds while it is pending (at most the
    /// first-frame timeout, then takes it).
    fn accepts(&self, series: u64) -> bool {
        let until = Instant::now() + self.cfg.first_frame_timeout;
        let mut f = self.expect.filter.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match *f {
                SeriesFilter::Any => return true,
                SeriesFilter::Series(s) => return s == series,
                SeriesFilter::Pending => {
                    let now = Instant::now();
                    if now >= until || self.conn.stopped() {
                        tracing::warn!(device = %self.cfg.device, series, "series id of the arm still unknown; taking the header");
                        return true;
                    }
                    f = self
                        .expect
                        .changed
                        .wait_timeout(f, (until - now).min(POLL * 10))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }

    /// Reads the next message; `deadline` None waits until stop.
    fn next_msg(&mut self, deadline: Option<Instant>) -> Result<Wait<Msg>, DectrisError> {
        match self.cfg.format {
            StreamFormat::Legacy => self.next_v1(deadline),
            StreamFormat::Cbor => self.next_v2(deadline),
        }
    }

    /// Reads one part into `self.part` (or takes the held one).
    fn read_part(&mut self, deadline: Option<Instant>) -> Result<Wait<()>, DectrisError> {
        if let Some(h) = self.held.take() {
            self.part = h;
            return Ok(Wait::Ready(()));
        }
        let head = match self
            .conn
            .next_part(deadline)
            .map_err(|e| self.transport(e))?
        {
            Wait::Ready(h) => h,
            Wait::TimedOut => return Ok(Wait::TimedOut),
            Wait::Stopped => return Ok(Wait::Stopped),
            Wait::Closed => return Ok(Wait::Closed),
        };
        let mut buf = std::mem::take(&mut self.part);
        let r = self.conn.read_body_vec(head.len, &mut buf);
        self.part = buf;
        match r.map_err(|e| self.transport(e))? {
            Wait::Stopped => Ok(Wait::Stopped),
            _ => Ok(Wait::Ready(())),
        }
    }

    fn msg_err(&self, series: u64, source: StreamError) -> DectrisError {
        DectrisError::Message {
            device: self.cfg.device.clone(),
            series,
            source: Box::new(source),
        }
    }

    /// Stream v1: reads one message (part by part, §2.4).
    fn next_v1(&mut self, deadline: Option<Instant>) -> Result<Wait<Msg>, DectrisError> {
        macro_rules! ready {
            ($e:expr) => {
                match $e? {
                    Wait::Ready(v) => v,
                    Wait::TimedOut => return Ok(Wait::TimedOut),
                    Wait::Stopped => return Ok(Wait::Stopped),
                    Wait::Closed => return Ok(Wait::Closed),
                }
            };
        }
        ready!(self.read_part(deadline));
        if stream::htype_of(&self.part).is_none() {
            return Ok(Wait::Ready(Msg::Skip));
        }
        let frame_timeout = self.cfg.frame_timeout;
        let inner = move || Some(Instant::now() + frame_timeout);
        match stream::parse_v1_part(&self.part).map_err(|e| self.msg_err(0, e))? {
            V1Part::Header(h) => {
                let raw_header = String::from_utf8_lossy(&self.part).into_owned();
                let mut config = None;
                let mut raw = raw_header;
                if h.header_detail != HeaderDetail::None {
                    ready!(self.read_part(inner()));
                    let c = stream::parse_detector_config(&self.part)
                        .map_err(|e| self.msg_err(h.series, e))?;
                    raw.push('\n');
                    raw.push_str(&String::from_utf8_lossy(&self.part));
                    config = Some(c);
                }
                Ok(Wait::Ready(Msg::Header(Box::new(
                    self.v1_header(h, config, raw),
                ))))
            }
            V1Part::Image(ih) => {
                ready!(self.read_part(inner()));
                let meta = match stream::parse_image_data(&self.part) {
                    Ok(d) => Ok(FrameMeta {
                        sig_shape: d.sig_shape,
                        dtype: d.dtype,
                        encoding: d.encoding.codec(d.dtype),
                        big_endian: d.encoding.big_endian,
                        size: d.size,
                    }),
                    Err(e) => {
                        // A part that starts another message means part 2 is missing:
                        // keep it for the series loop and report this frame unusable.
                        if matches!(
                            stream::htype_of(&self.part).as_deref(),
                            Some("dimage-1.0" | "dheader-1.0" | "dseries_end-1.0")
                        ) {
                            self.held = Some(std::mem::take(&mut self.part));
                            return Ok(Wait::Ready(Msg::Frame {
                                series: ih.series,
                                frame: ih.frame,
                                meta: Err(e),
                                blob: None,
                                wire: None,
                            }));
                        }
                        Err(e)
                    }
                };
                let head = match self
                    .conn
                    .next_part(inner())
                    .map_err(|e| self.transport(e))?
                {
                    Wait::Ready(h) => h,
                    Wait::TimedOut => {
                        return Err(self.transport(ZmtpError::Stalled {
                            peer: self.conn.peer().to_string(),
                            during: "waiting for the image blob (part 3)",
                            got: 0,
                            want: 1,
                            waited_s: self.cfg.frame_timeout.as_secs_f64(),
                        }));
                    }
                    Wait::Stopped => return Ok(Wait::Stopped),
                    Wait::Closed => return Ok(Wait::Closed),
                };
                Ok(Wait::Ready(Msg::Frame {
                    series: ih.series,
                    frame: ih.frame,
                    meta,
                    blob: None,
                    wire: Some(head),
                }))
            }
            V1Part::SeriesEnd(e) => Ok(Wait::Ready(Msg::End { series: e.series })),
            V1Part::Array(a) => {
                // `all` header: a binary part follows each array header.
                tracing::debug!(device = %self.cfg.device, htype = %a.htype, "skipping header array");
                ready!(self.read_part(inner()));
                Ok(Wait::Ready(Msg::Skip))
            }
            V1Part::ImageData(_) | V1Part::ImageTimes(_) | V1Part::Other(_) => {
                Ok(Wait::Ready(Msg::Skip))
            }
        }
    }

    /// Reads part 4 (`dconfig-1.0`) of a v1 image message; a part that starts another
    /// message is held for the series loop.
    fn v1_tail(&mut self) -> Result<Wait<()>, DectrisError> {
        let deadline = Some(Instant::now() + self.cfg.frame_timeout);
        match self.read_part(deadline)? {
            Wait::Ready(()) => {}
            Wait::TimedOut => {
                tracing::warn!(device = %self.cfg.device, "image message without dconfig-1.0 part");
                return Ok(Wait::Ready(()));
            }
            other => return Ok(other),
        }
        if stream::parse_image_times(&self.part).is_err() {
            if stream::htype_of(&self.part).is_some() {
                self.held = Some(std::mem::take(&mut self.part));
            }
            tracing::warn!(device = %self.cfg.device, "image message without dconfig-1.0 part");
        }
        Ok(Wait::Ready(()))
    }

    fn v1_header(
        &self,
        h: GlobalHeader,
        config: Option<DetectorConfig>,
        raw: String,
    ) -> SeriesHeader {
        let from_config = config.as_ref().and_then(|c| match c.expected_images() {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(device = %self.cfg.device, "frame count unknown from the header: {e}");
                None
            }
        });
        SeriesHeader {
            series: h.series,
            format: StreamFormat::Legacy,
            header_detail: Some(h.header_detail),
            sig_shape: config.as_ref().and_then(DetectorConfig::sig_shape),
            dtype: config.as_ref().and_then(DetectorConfig::dtype),
            config,
            start: None,
            expected_frames: self.cfg.expected_frames.or(from_config).unwrap_or(0),
            raw,
        }
    }

    /// Stream v2: one CBOR message per part (§2.6).
    fn next_v2(&mut self, deadline: Option<Instant>) -> Result<Wait<Msg>, DectrisError> {
        match self.read_part(deadline)? {
            Wait::Ready(()) => {}
            Wait::TimedOut => return Ok(Wait::TimedOut),
            Wait::Stopped => return Ok(Wait::Stopped),
            Wait::Closed => return Ok(Wait::Closed),
        }
        let msg = stream::parse_v2_message(&self.part).map_err(|e| self.msg_err(0, e))?;
        Ok(Wait::Ready(match msg {
            V2Message::Start(s) => {
                let raw = format!("{s:?}");
                Msg::Header(Box::new(SeriesHeader {
                    series: s.series_id,
                    format: StreamFormat::Cbor,
                    header_detail: None,
                    config: None,
                    expected_frames: self.cfg.expected_frames.or(s.number_of_images).unwrap_or(0),
                    sig_shape: s.sig_shape(),
                    dtype: s.dtype,
                    start: Some(s),
                    raw,
                }))
            }
            V2Message::Image(img) => {
                let want = self.cfg.channel.as_deref();
                let pick = match want {
                    Some(name) => img.channels.into_iter().find(|(n, _)| n == name),
                    None => img.channels.into_iter().next(),
                };
                match pick {
                    Some((_, a)) => Msg::Frame {
                        series: img.series_id,
                        frame: img.image_id,
                        meta: Ok(FrameMeta {
                            sig_shape: a.sig_shape,
                            dtype: a.dtype,
                            encoding: a.encoding,
                            big_endian: a.big_endian,
                            size: None,
                        }),
                        blob: Some(a.data),
                        wire: None,
                    },
                    None => Msg::Frame {
                        series: img.series_id,
                        frame: img.image_id,
                        meta: Err(StreamError::Cbor {
                            part: "CBOR image".into(),
                            detail: format!("no channel `{}`", want.unwrap_or_default()),
                        }),
                        blob: None,
                        wire: None,
                    },
                }
            }
            V2Message::End { series_id } => Msg::End { series: series_id },
            V2Message::Other(_) => Msg::Skip,
        }))
    }

    /// Waits for a header that passes the filter, draining everything else.
    fn wait_header(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<Box<SeriesHeader>>, Box<Fatal>> {
        let started = Instant::now();
        let mut drained = 0u64;
        loop {
            let msg = match self.next_msg(deadline) {
                Ok(Wait::Ready(m)) => m,
                Ok(Wait::TimedOut) => {
                    return Err(DectrisError::HeaderTimeout {
                        device: self.cfg.device.clone(),
                        addr: self.cfg.stream_addr,
                        waited_s: started.elapsed().as_secs_f64(),
                    }
                    .into());
                }
                Ok(Wait::Stopped | Wait::Closed) => return Ok(None),
                Err(DectrisError::Message { series, source, .. })
                    if series != 0 && self.accepts(series) =>
                {
                    // Our series' header, but its configuration part is malformed.
                    return Err(self.msg_err(series, *source).into());
                }
                Err(e @ DectrisError::Message { .. }) => {
                    // Leftovers of an earlier series may be anything; only a valid header
                    // starts ours.
                    tracing::debug!(device = %self.cfg.device, "drained a malformed message: {e}");
                    drained += 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            match msg {
                Msg::Header(h) => {
                    if self.accepts(h.series) {
                        if drained > 0 {
                            tracing::info!(device = %self.cfg.device, drained, series = h.series, "drained stale messages before the header");
                        }
                        return Ok(Some(h));
                    }
                    tracing::info!(device = %self.cfg.device, series = h.series, "draining a series we did not arm");
                    drained += 1;
                }
                Msg::Frame { wire, .. } => {
                    if let Some(head) = wire {
                        match self.conn.skip_body(head.len) {
                            Ok(Wait::Stopped) => return Ok(None),
                            Ok(_) => {}
                            Err(e) => return Err(self.transport(e).into()),
                        }
                        if self.cfg.format == StreamFormat::Legacy {
                            match self.v1_tail() {
                                Ok(Wait::Stopped | Wait::Closed) => return Ok(None),
                                Ok(_) => {}
                                Err(e) => return Err(e.into()),
                            }
                        }
                    }
                    drained += 1;
                }
                Msg::End { .. } | Msg::Skip => drained += 1,
            }
        }
    }

    /// Receives one series after its header.
    fn series(&mut self, header: SeriesHeader) -> Result<Next, Box<Fatal>> {
        let id = self.acquisitions;
        self.acquisitions += 1;
        let expected = header.expected_frames;
        if expected > MAX_FRAMES_PER_SERIES {
            return Err(DectrisError::TooManyFrames {
                device: self.cfg.device.clone(),
                series: header.series,
                frames: expected,
                max: MAX_FRAMES_PER_SERIES,
            }
            .into());
        }
        let (tx, rx) = bounded(self.cfg.pool_stacks.max(1));
        let series = header.series;
        self.emit(ReceiverEvent::Armed {
            acquisition: id,
            header: Box::new(header),
            stacks: rx,
        });
        let mut acq = Acquisition {
            id,
            series,
            expected,
            stacks: Some(tx),
            format: None,
            stack: None,
            next_frame: 0,
            codes: Vec::with_capacity(expected.min(1 << 24) as usize),
            received: 0,
            damaged: 0,
            discarded_from: None,
        };
        let first_deadline = Instant::now() + self.cfg.first_frame_timeout;
        loop {
            let deadline = if acq.next_frame == 0 && acq.codes.is_empty() {
                first_deadline
            } else {
                self.conn.last_activity() + self.cfg.frame_timeout
            };
            let consumer_idle = self
                .pool
                .as_ref()
                .is_some_and(|sp| sp.pool.free() + 1 >= sp.pool.capacity());
            if acq.stack.is_some()
                && self.held.is_none()
                && consumer_idle
                && self.conn.pending() == Some(0)
            {
                // The consumer has finished every stack sent to it and the next message is
                // not here yet: hand the frames over now, not when the stack fills many frame
                // times later at slow rates. While the consumer is busy, stacks fill, which
                // keeps their number in bounds at high rates.
                if let Err(e) = self.flush(&mut acq) {
                    return Err(self.fail(acq, e));
                }
            }
            let msg = match self.next_msg(Some(deadline)) {
                Ok(Wait::Ready(m)) => m,
                Ok(Wait::TimedOut) => {
                    return Ok(self.finish(acq, EndReason::InactivityDeadline, Next::Wait));
                }
                Ok(Wait::Stopped) => return Ok(self.finish(acq, EndReason::Stopped, Next::Exit)),
                Ok(Wait::Closed) => {
                    return Ok(self.finish(acq, EndReason::Disconnected, Next::Exit));
                }
                Err(DectrisError::Message { source, .. }) => {
                    return Err(self.fail(acq, self.msg_err(series, *source)));
                }
                Err(e) => return Err(self.fail(acq, e)),
            };
            match msg {
                Msg::Header(h) => {
                    return Ok(self.finish(acq, EndReason::NewSeries, Next::Header(h)));
                }
                Msg::End { series: s } if s == series => {
                    let end = if acq.expected > 0 && acq.next_frame >= acq.expected {
                        EndReason::AllFrames
                    } else {
                        EndReason::SeriesEnd
                    };
                    return Ok(self.finish(acq, end, Next::Wait));
                }
                Msg::End { series: s } => {
                    tracing::warn!(device = %self.cfg.device, series, observed = s, "ignoring the end of another series");
                }
                Msg::Skip => {}
                Msg::Frame {
                    series: s,
                    frame,
                    meta,
                    blob,
                    wire,
                } => {
                    if s != series {
                        let e = DectrisError::Series {
                            device: self.cfg.device.clone(),
                            expected: series,
                            observed: s,
                            frame,
                        };
                        return Err(self.fail(acq, e));
                    }
                    if let Err(e) = self.check_frame_id(&mut acq, frame) {
                        return Err(self.fail(acq, e));
                    }
                    let src = match (&blob, wire) {
                        (Some(b), _) => Some(Blob::Mem(b)),
                        (None, Some(h)) => Some(Blob::Wire(h)),
                        (None, None) => None,
                    };
                    match self.frame(&mut acq, frame, meta, src) {
                        Ok(true) => {}
                        Ok(false) => return Ok(self.finish(acq, EndReason::Stopped, Next::Exit)),
                        Err(e) => return Err(self.fail(acq, e)),
                    }
                    if wire.is_some() && self.cfg.format == StreamFormat::Legacy {
                        match self.v1_tail() {
                            Ok(Wait::Stopped) => {
                                return Ok(self.finish(acq, EndReason::Stopped, Next::Exit));
                            }
                            Ok(Wait::Closed) => {
                                return Ok(self.finish(acq, EndReason::Disconnected, Next::Exit));
                            }
                            Ok(_) => {}
                            Err(e) => return Err(self.fail(acq, e)),
                        }
                    }
                    if acq.expected > 0 && acq.next_frame >= acq.expected {
                        return Ok(self.finish(acq, EndReason::AllFrames, Next::Wait));
                    }
                }
            }
        }
    }

    /// Accepts `frame` as the next frame id: a forward gap closes the open stack and counts
    /// the skipped frames lost (or aborts, per policy); repeats, backward ids and ids past
    /// the end are errors.
    fn check_frame_id(&mut self, acq: &mut Acquisition, frame: u64) -> Result<(), DectrisError> {
        let err = |detail: String| DectrisError::FrameId {
            device: self.cfg.device.clone(),
            series: acq.series,
            expected: acq.next_frame,
            observed: frame,
            detail,
        };
        if frame < acq.next_frame {
            return Err(err("repeated or went backwards".into()));
        }
        if acq.expected > 0 && frame >= acq.expected {
            return Err(err(format!(
                "past the end of a series of {} frames",
                acq.expected
            )));
        }
        if frame > acq.next_frame {
            let (from, to) = (acq.next_frame, frame);
            tracing::warn!(device = %self.cfg.device, series = acq.series, from, to, "frames lost (frame id gap)");
            self.flush(acq)?;
            if self.cfg.on_lost == LossPolicy::Abort {
                return Err(DectrisError::FramesLost {
                    device: self.cfg.device.clone(),
                    series: acq.series,
                    from,
                    to,
                });
            }
            acq.next_frame = frame;
        }
        Ok(())
    }

    /// Takes one frame whose id has been accepted: checks its metadata against the
    /// series format (the first frame sets it), reads its blob into the open stack and
    /// checks the blob's framing. Unusable frames are counted damaged (their blob read and
    /// dropped). Returns false on stop.
    fn frame(
        &mut self,
        acq: &mut Acquisition,
        frame: u64,
        meta: Result<FrameMeta, StreamError>,
        blob: Option<Blob<'_>>,
    ) -> Result<bool, DectrisError> {
        acq.next_frame = frame + 1;
        let problem = match &meta {
            Err(e) => Some(e.to_string()),
            Ok(m) => {
                if acq.format.is_none() {
                    self.first_frame(acq, m);
                }
                let f = acq.format.as_ref();
                match f {
                    Some(f)
                        if (f.sig_shape, f.dtype, f.encoding, f.big_endian)
                            != (m.sig_shape, m.dtype, m.encoding, m.big_endian) =>
                    {
                        Some(format!(
                            "frame is {} {} {:?}, the series started with {} {} {:?}",
                            m.sig_shape, m.dtype, m.encoding, f.sig_shape, f.dtype, f.encoding
                        ))
                    }
                    _ => match (m.size, &blob) {
                        (Some(size), Some(b)) if size != b.len() as u64 => Some(format!(
                            "dimage_d announces {size} bytes, the blob has {} bytes",
                            b.len()
                        )),
                        _ => None,
                    },
                }
            }
        };
        let Some(blob) = blob else {
            self.damaged(acq, frame, problem.as_deref().unwrap_or("no blob"))?;
            return Ok(true);
        };
        if let Some(p) = problem {
            if let Blob::Wire(h) = blob
                && let Wait::Stopped = self.conn.skip_body(h.len).map_err(|e| self.transport(e))?
            {
                return Ok(false);
            }
            self.damaged(acq, frame, &p)?;
            return Ok(true);
        }
        let (frame_bytes, encoding) = match acq.format.as_ref() {
            Some(f) => (f.frame_bytes, f.encoding),
            None => return Ok(true),
        };
        let slot = self.pool.as_ref().map_or(0, |p| p.slot);
        let len = blob.len();
        if len > slot {
            if let Blob::Wire(h) = blob
                && let Wait::Stopped = self.conn.skip_body(h.len).map_err(|e| self.transport(e))?
            {
                return Ok(false);
            }
            self.damaged(
                acq,
                frame,
                &format!("blob of {len} bytes exceeds the largest possible {slot} bytes"),
            )?;
            return Ok(true);
        }
        if acq
            .stack
            .as_ref()
            .is_some_and(|s| s.buf.len() - s.used < len)
        {
            self.flush(acq)?;
        }
        if acq.stack.is_none() {
            let Some(buf) = self.take_buffer()? else {
                return Ok(false);
            };
            acq.stack = Some(OpenStack {
                first_frame: frame,
                frames: Vec::with_capacity(self.stack_len()),
                used: 0,
                buf,
                first_received: Instant::now(),
            });
        }
        let Some(open) = acq.stack.as_mut() else {
            return Ok(true);
        };
        let at = open.used;
        let dst = &mut open.buf[at..at + len];
        match blob {
            Blob::Mem(b) => dst.copy_from_slice(b),
            Blob::Wire(_) => {
                if let Wait::Stopped =
                    self.conn
                        .read_body(dst)
                        .map_err(|e| DectrisError::Transport {
                            device: self.cfg.device.clone(),
                            source: e,
                        })?
                {
                    return Ok(false);
                }
            }
        }
        if let Err(why) = check_framing(&encoding, &open.buf[at..at + len], frame_bytes) {
            // The frame stays out of the stack; a stack holds consecutive frames only.
            self.damaged(acq, frame, &why)?;
            return Ok(true);
        }
        if open.frames.is_empty() {
            open.first_received = Instant::now();
        }
        open.frames.push(RawFrameRef { offset: at, len });
        open.used += len;
        let full = open.frames.len() >= self.stack_len();
        acq.set(frame, FrameStatus::Received);
        if full {
            self.flush(acq)?;
        }
        Ok(true)
    }

    /// Counts `frame` damaged and closes the open stack (stacks hold consecutive frames).
    fn damaged(
        &mut self,
        acq: &mut Acquisition,
        frame: u64,
        why: &str,
    ) -> Result<(), DectrisError> {
        tracing::warn!(device = %self.cfg.device, series = acq.series, frame, "damaged frame: {why}");
        self.flush(acq)?;
        acq.set(frame, FrameStatus::Damaged);
        Ok(())
    }

    /// Fixes the series format from its first frame, builds the decoder and the pool.
    fn first_frame(&mut self, acq: &mut Acquisition, m: &FrameMeta) {
        let decoder = Arc::new(DectrisDecoder::new(
            self.cfg.device.clone(),
            m.sig_shape,
            m.dtype,
            m.encoding,
            m.big_endian,
        ));
        let frame_bytes = decoder.frame_bytes();
        self.ensure_pool(frame_bytes + frame_bytes / 128 + 4096);
        acq.format = Some(Format {
            sig_shape: m.sig_shape,
            dtype: m.dtype,
            encoding: m.encoding,
            big_endian: m.big_endian,
            frame_bytes,
            decoder: Arc::clone(&decoder),
        });
        self.emit(ReceiverEvent::FirstFrame {
            acquisition: acq.id,
            sig_shape: decoder.sig_shape(),
            dtype: decoder.dtype(),
            decoder,
        });
    }

    /// Frames per stack: as many slots as a pool buffer holds (a pool kept from larger
    /// frames holds at least as many of smaller ones).
    fn stack_len(&self) -> usize {
        self.pool.as_ref().map_or(1, |p| p.frames.max(1))
    }

    /// (Re)allocates the pool unless its slots already fit `slot` bytes.
    fn ensure_pool(&mut self, slot: usize) {
        if self.pool.as_ref().is_some_and(|p| p.slot >= slot) {
            return;
        }
        let frames = crate::stack_frames(self.cfg.frames_per_stack, slot);
        let bytes = frames * slot;
        let pool = Pool::new(
            &format!("{} frame stacks", self.cfg.device),
            self.cfg.pool_stacks.max(1),
            || stemflow_core::mem::prefaulted_bytes(bytes),
        );
        self.pool = Some(StackPool { pool, slot, frames });
    }

    /// A free stack buffer within the frame timeout; `None` on stop.
    fn take_buffer(&self) -> Result<Option<Pooled<Vec<u8>>>, DectrisError> {
        let Some(sp) = &self.pool else {
            return Ok(None);
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
                return Err(DectrisError::Pool {
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

    /// Sends the open stack to the consumer (waiting at most the frame timeout).
    fn flush(&mut self, acq: &mut Acquisition) -> Result<(), DectrisError> {
        let Some(open) = acq.stack.take() else {
            return Ok(());
        };
        if open.frames.is_empty() {
            return Ok(());
        }
        let Some(decoder) = acq.format.as_ref().map(|f| Arc::clone(&f.decoder)) else {
            return Ok(());
        };
        let Some(tx) = &acq.stacks else {
            return Ok(());
        };
        let first = open.first_frame;
        let mut stack = RawStack {
            first_frame: open.first_frame,
            frames: open.frames,
            buf: open.buf,
            decoder: decoder as Arc<dyn FrameDecoder>,
            first_received: open.first_received,
        };
        let started = Instant::now();
        loop {
            match tx.send_timeout(stack, POLL) {
                Ok(()) => return Ok(()),
                Err(SendTimeoutError::Disconnected(_)) => {
                    tracing::debug!(device = %self.cfg.device, "stack consumer gone; discarding frames");
                    acq.stacks = None;
                    acq.discarded_from = Some(first);
                    return Ok(());
                }
                Err(SendTimeoutError::Timeout(s)) => {
                    if self.conn.stopped() {
                        return Ok(());
                    }
                    if started.elapsed() >= self.cfg.frame_timeout {
                        return Err(DectrisError::Pool {
                            device: self.cfg.device.clone(),
                            source: PoolError::Exhausted {
                                pool: format!(
                                    "{} stack channel (consumer stalled)",
                                    self.cfg.device
                                ),
                                capacity: self.cfg.pool_stacks.max(1),
                                waited_s: started.elapsed().as_secs_f64(),
                            },
                        });
                    }
                    stack = s;
                }
            }
        }
    }

    /// Flushes, closes the stacks channel and reports `Finished`.
    fn finish(&mut self, mut acq: Acquisition, end: EndReason, next: Next) -> Next {
        if let Err(e) = self.flush(&mut acq) {
            tracing::warn!(device = %self.cfg.device, "last stack not delivered: {e}");
        }
        let id = acq.id;
        acq.stacks = None;
        let summary = acq.into_summary(end);
        if summary.lost > 0 || summary.damaged > 0 {
            tracing::warn!(device = %self.cfg.device, series = summary.series, lost = summary.lost, damaged = summary.damaged, %end, "series ended with frames missing");
        }
        self.emit(ReceiverEvent::Finished {
            acquisition: id,
            summary,
        });
        next
    }

    /// Flushes what was received and wraps `error` with the summary.
    fn fail(&mut self, mut acq: Acquisition, error: DectrisError) -> Box<Fatal> {
        let _ = self.flush(&mut acq);
        acq.stacks = None;
        Box::new(Fatal {
            error,
            summary: Some(acq.into_summary(EndReason::Failed)),
        })
    }
}
