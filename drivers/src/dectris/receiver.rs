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
//!
//! The loop, the stack buffers, the accounting, the deadlines and the events are the
//! receiver core's ([`crate::receiver`]); this file is the DECTRIS protocol on it
//! ([`DectrisProtocol`]): both stream formats' messages, the series filter and the
//! per-frame checks.

use super::codec::Encoding;
use super::decode::{DectrisDecoder, check_framing};
use super::rest::StreamFormat;
use super::stream::{
    self, DetectorConfig, GlobalHeader, HeaderDetail, StreamError, V1Part, V2Message, V2Start,
};
use super::zmtp::{POLL, PartHead, ZmtpError, ZmtpPull};
use crate::receiver::{
    self, Begin, Connection, CoreError, DenseFrames, Flow, Message, OrderError, Protocol, Settings,
    Sink, Wait,
};
use crossbeam_channel::Receiver;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
#[cfg(doc)]
use stemflow_core::frame::RawStack;
use stemflow_core::pool::PoolError;
use stemflow_core::{DType, SigShape};

/// Most frames one series may announce (the core's limit,
/// [`receiver::MAX_FRAMES_PER_ACQUISITION`]; its validity map takes a byte per frame).
pub const MAX_FRAMES_PER_SERIES: u64 = receiver::MAX_FRAMES_PER_ACQUISITION;

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
    /// Most bytes of receive buffers, whatever the image header says
    /// ([`receiver::DEFAULT_MEMORY_BUDGET`]).
    pub memory_budget: usize,
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
            memory_budget: receiver::DEFAULT_MEMORY_BUDGET,
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

// A series ends with its end-of-series message (§2.4), never by silence: no disarm
// reason.
receiver::end_reasons!(EndReason {
    all_frames: AllFrames,
    inactivity_deadline: InactivityDeadline,
    new_header: NewSeries,
    stopped: Stopped,
    disconnected: Disconnected,
    failed: Failed,
    disarmed: None,
});

/// Frame accounting of one series ([`receiver::AcquisitionSummary`] with DECTRIS' end
/// reasons; `series` is the series id, §2.4).
pub type AcquisitionSummary = receiver::AcquisitionSummary<EndReason, u64>;

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

/// What the receiver reports ([`receiver::ReceiverEvent`] of [`DectrisProtocol`]), in
/// order: per series `Armed` (with a boxed [`SeriesHeader`]), `FirstFrame` (with the
/// [`DectrisDecoder`]; unless no frame came), then `Finished` or `Error` (a
/// [`DectrisError`]). The channel disconnects when the thread ends.
pub type ReceiverEvent = receiver::ReceiverEvent<DectrisProtocol>;

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
    conn: Connection<DectrisProtocol>,
    expect: Arc<Expect>,
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
        let settings = Settings {
            device: cfg.device.clone(),
            header_timeout: cfg.header_timeout,
            first_frame_timeout: cfg.first_frame_timeout,
            frame_timeout: cfg.frame_timeout,
            frames_per_stack: cfg.frames_per_stack,
            pool_stacks: cfg.pool_stacks,
            memory_budget: cfg.memory_budget,
        };
        let protocol = DectrisProtocol {
            conn,
            expect: Arc::clone(&expect),
            part: Vec::with_capacity(64 * 1024),
            held: None,
            series: 0,
            format: None,
            cfg,
        };
        let wake = Arc::clone(&expect);
        let conn = Connection::spawn(settings, protocol, stop, "dectris-rx")
            .map_err(|source| DectrisError::Spawn {
                device: device.clone(),
                source,
            })?
            // A header held for a pending series filter waits on the condition variable.
            .on_stop(move || wake.changed.notify_all());
        Ok(Self { conn, expect })
    }

    /// The device name.
    pub fn device(&self) -> &str {
        self.conn.device()
    }

    /// Whether the receive thread still runs (it ends after [`stop`](Self::stop), a
    /// disconnect or a fatal error, each reported on [`events`](Self::events) first).
    pub fn is_running(&self) -> bool {
        self.conn.is_running()
    }

    /// The event channel (see [`ReceiverEvent`] for the order).
    pub fn events(&self) -> &Receiver<ReceiverEvent> {
        self.conn.events()
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
        self.conn.stop();
    }

    /// Waits for the thread to end (after stop, disconnect or a fatal error).
    pub fn join(self) {
        self.conn.join();
    }
}

/// Frame format of a series, fixed by its first frame.
#[derive(Clone, Copy, Debug)]
struct Format {
    sig_shape: SigShape,
    dtype: DType,
    encoding: Encoding,
    big_endian: bool,
    frame_bytes: usize,
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

/// A frame message as [`DectrisProtocol::frames`] takes it: its series and id, its
/// metadata (or why it is unusable), its blob in memory (v2) or still on the wire (v1
/// part 3).
#[derive(Debug)]
pub struct FrameMsg {
    series: u64,
    frame: u64,
    meta: Result<FrameMeta, StreamError>,
    blob: Option<Vec<u8>>,
    wire: Option<PartHead>,
}

/// The DECTRIS stream as a receiver [`Protocol`] (§2.4, §2.6, §2.7): v1 multipart JSON +
/// binary or v2 CBOR messages on one ZeroMQ PULL connection. Built by
/// [`DectrisReceiver::start`]; it owns the connection, the series filter, the part scratch
/// and the format of the series under way.
#[derive(Debug)]
pub struct DectrisProtocol {
    cfg: DectrisReceiverConfig,
    conn: ZmtpPull,
    expect: Arc<Expect>,
    /// Scratch for JSON parts and CBOR messages.
    part: Vec<u8>,
    /// A JSON part read ahead (v1) that the series loop must look at next.
    held: Option<Vec<u8>>,
    /// The series under way (0 before the first header).
    series: u64,
    /// The series' frame format, from its first frame.
    format: Option<Format>,
}

impl Protocol for DectrisProtocol {
    type Header = Box<SeriesHeader>;
    type Frames = FrameMsg;
    type Error = DectrisError;
    type End = EndReason;
    type Series = u64;
    type Layout = DenseFrames<DectrisDecoder>;

    fn last_activity(&self) -> Instant {
        self.conn.last_activity()
    }

    fn pending(&self) -> Option<usize> {
        // A part read ahead is a message waiting.
        match self.held {
            Some(_) => None,
            None => self.conn.pending(),
        }
    }

    fn stopped(&self) -> bool {
        self.conn.stopped()
    }

    fn wait_header(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<Box<SeriesHeader>>, DectrisError> {
        self.await_header(deadline)
    }

    fn accepts(&mut self, header: &Box<SeriesHeader>) -> bool {
        self.accepts_series(header.series)
    }

    fn begin(&mut self, header: &Box<SeriesHeader>) -> Result<Begin<u64>, DectrisError> {
        self.series = header.series;
        self.format = None;
        Ok(Begin {
            expected: header.expected_frames,
            series: header.series,
        })
    }

    fn next(&mut self, deadline: Instant) -> Result<Wait<Message<Self>>, DectrisError> {
        let series = self.series;
        let msg = match self.next_msg(Some(deadline)) {
            Ok(Wait::Ready(m)) => m,
            Ok(Wait::TimedOut) => return Ok(Wait::TimedOut),
            Ok(Wait::Stopped) => return Ok(Wait::Stopped),
            Ok(Wait::Closed) => return Ok(Wait::Closed),
            Err(DectrisError::Message { source, .. }) => {
                return Err(self.msg_err(series, *source));
            }
            Err(e) => return Err(e),
        };
        Ok(Wait::Ready(match msg {
            Msg::Header(h) => Message::Header(h),
            Msg::End { series: s } if s == series => Message::End(EndReason::SeriesEnd),
            Msg::End { series: s } => {
                tracing::warn!(device = %self.cfg.device, series, observed = s, "ignoring the end of another series");
                Message::Skip
            }
            Msg::Skip => Message::Skip,
            Msg::Frame {
                series,
                frame,
                meta,
                blob,
                wire,
            } => Message::Frames(FrameMsg {
                series,
                frame,
                meta,
                blob,
                wire,
            }),
        }))
    }

    fn frames(&mut self, msg: FrameMsg, sink: &mut Sink<'_, Self>) -> Result<Flow, DectrisError> {
        let FrameMsg {
            series,
            frame,
            meta,
            blob,
            wire,
        } = msg;
        if series != self.series {
            return Err(DectrisError::Series {
                device: self.cfg.device.clone(),
                expected: self.series,
                observed: series,
                frame,
            });
        }
        let gap = sink.accept(frame, 1).map_err(|e| self.core_error(e))?;
        if let Some(g) = gap
            && self.cfg.on_lost == LossPolicy::Abort
        {
            return Err(DectrisError::FramesLost {
                device: self.cfg.device.clone(),
                series,
                from: g.from,
                to: g.to,
            });
        }
        let src = match (&blob, wire) {
            (Some(b), _) => Some(Blob::Mem(b)),
            (None, Some(h)) => Some(Blob::Wire(h)),
            (None, None) => None,
        };
        if !self.frame(sink, frame, meta, src)? {
            return Ok(Flow::Stopped);
        }
        if wire.is_some() && self.cfg.format == StreamFormat::Legacy {
            match self.v1_tail()? {
                Wait::Stopped => return Ok(Flow::Stopped),
                Wait::Closed => return Ok(Flow::Closed),
                Wait::Ready(()) | Wait::TimedOut => {}
            }
        }
        Ok(Flow::Continue)
    }

    fn core_error(&self, error: CoreError) -> DectrisError {
        let device = self.cfg.device.clone();
        let series = self.series;
        match error {
            CoreError::Pool { source } => DectrisError::Pool { device, source },
            CoreError::TooManyFrames { frames, max } => DectrisError::TooManyFrames {
                device,
                series,
                frames,
                max,
            },
            CoreError::Order {
                expected,
                observed,
                kind,
            } => DectrisError::FrameId {
                device,
                series,
                expected,
                observed,
                detail: match kind {
                    OrderError::Backwards => "repeated or went backwards".into(),
                    OrderError::PastEnd { expected_frames } => {
                        format!("past the end of a series of {expected_frames} frames")
                    }
                    OrderError::PastLimit { max } => {
                        format!("beyond the limit of {max} frames per series")
                    }
                },
            },
            CoreError::Budget {
                slot,
                needed,
                budget,
            } => self.msg_err(
                series,
                StreamError::Field {
                    part: "image header".into(),
                    field: "shape and type".into(),
                    expected: format!(
                        "frames that fit the receive memory budget of {budget} bytes"
                    ),
                    observed: format!(
                        "{slot} bytes per frame (at least {needed} bytes of buffers)"
                    ),
                },
            ),
            e @ CoreError::Format { .. } => self.msg_err(
                series,
                StreamError::Field {
                    part: "image header".into(),
                    field: "shape and type".into(),
                    expected: "the configured frame format".into(),
                    observed: e.to_string(),
                },
            ),
            CoreError::Slot { len, slot } => self.msg_err(
                series,
                StreamError::Field {
                    part: "image blob".into(),
                    field: "size".into(),
                    expected: format!("at most {slot} bytes"),
                    observed: format!("{len} bytes"),
                },
            ),
            CoreError::Misuse(what) => self.msg_err(
                series,
                StreamError::Field {
                    part: "receiver".into(),
                    field: "stack".into(),
                    expected: "payloads in order".into(),
                    observed: what.into(),
                },
            ),
        }
    }
}

impl DectrisProtocol {
    fn transport(&self, source: ZmtpError) -> DectrisError {
        DectrisError::Transport {
            device: self.cfg.device.clone(),
            source,
        }
    }

    fn accepts_series(&self, series: u64) -> bool {
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
    fn await_header(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<Box<SeriesHeader>>, DectrisError> {
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
                    });
                }
                Ok(Wait::Stopped | Wait::Closed) => return Ok(None),
                Err(DectrisError::Message { series, source, .. })
                    if series != 0 && self.accepts_series(series) =>
                {
                    // Our series' header, but its configuration part is malformed.
                    return Err(self.msg_err(series, *source));
                }
                Err(e @ DectrisError::Message { .. }) => {
                    // Leftovers of an earlier series may be anything; only a valid header
                    // starts ours.
                    tracing::debug!(device = %self.cfg.device, "drained a malformed message: {e}");
                    drained += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match msg {
                Msg::Header(h) => {
                    if self.accepts_series(h.series) {
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
                            Err(e) => return Err(self.transport(e)),
                        }
                        if self.cfg.format == StreamFormat::Legacy {
                            match self.v1_tail() {
                                Ok(Wait::Stopped | Wait::Closed) => return Ok(None),
                                Ok(_) => {}
                                Err(e) => return Err(e),
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
    /// Takes one frame whose id has been accepted: checks its metadata against the
    /// series format (the first frame sets it), reads its blob into the open stack and
    /// checks the blob's framing. Unusable frames are counted damaged (their blob read and
    /// dropped). Returns false on stop.
    fn frame(
        &mut self,
        sink: &mut Sink<'_, Self>,
        frame: u64,
        meta: Result<FrameMeta, StreamError>,
        blob: Option<Blob<'_>>,
    ) -> Result<bool, DectrisError> {
        let problem = match &meta {
            Err(e) => Some(e.to_string()),
            Ok(m) => {
                if self.format.is_none() {
                    self.first_frame(sink, m)?;
                }
                match &self.format {
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
            self.damaged(sink, frame, problem.as_deref().unwrap_or("no blob"));
            return Ok(true);
        };
        if let Some(p) = problem {
            if let Blob::Wire(h) = blob
                && let Wait::Stopped = self.conn.skip_body(h.len).map_err(|e| self.transport(e))?
            {
                return Ok(false);
            }
            self.damaged(sink, frame, &p);
            return Ok(true);
        }
        let Some(Format {
            frame_bytes,
            encoding,
            ..
        }) = self.format
        else {
            return Ok(true);
        };
        let slot = sink.slot();
        let len = blob.len();
        if len > slot {
            if let Blob::Wire(h) = blob
                && let Wait::Stopped = self.conn.skip_body(h.len).map_err(|e| self.transport(e))?
            {
                return Ok(false);
            }
            self.damaged(
                sink,
                frame,
                &format!("blob of {len} bytes exceeds the largest possible {slot} bytes"),
            );
            return Ok(true);
        }
        let Some(dst) = sink.reserve(frame, len).map_err(|e| self.core_error(e))? else {
            return Ok(false);
        };
        match blob {
            Blob::Mem(b) => dst.copy_from_slice(b),
            Blob::Wire(_) => {
                if let Wait::Stopped = self.conn.read_body(dst).map_err(|e| self.transport(e))? {
                    return Ok(false);
                }
            }
        }
        if let Err(why) = check_framing(&encoding, dst, frame_bytes) {
            // The frame stays out of the stack; a stack holds consecutive frames only.
            self.damaged(sink, frame, &why);
            return Ok(true);
        }
        sink.commit(frame, 1).map_err(|e| self.core_error(e))?;
        Ok(true)
    }

    /// Counts `frame` damaged (the next frame starts a new stack: stacks hold consecutive
    /// frames).
    fn damaged(&self, sink: &mut Sink<'_, Self>, frame: u64, why: &str) {
        tracing::warn!(device = %self.cfg.device, series = self.series, frame, "damaged frame: {why}");
        sink.damaged(frame, 1);
    }

    /// Fixes the series format from its first frame: builds the decoder, sizes the pool
    /// for the largest possible blob (uncompressed size + 1/128 + 4 KiB), reports
    /// `FirstFrame`.
    ///
    /// # Errors
    /// The frame size does not fit the receive memory budget (nothing is allocated).
    fn first_frame(
        &mut self,
        sink: &mut Sink<'_, Self>,
        m: &FrameMeta,
    ) -> Result<(), DectrisError> {
        let decoder = DectrisDecoder::new(
            self.cfg.device.clone(),
            m.sig_shape,
            m.dtype,
            m.encoding,
            m.big_endian,
        );
        let frame_bytes = decoder.frame_bytes();
        self.format = Some(Format {
            sig_shape: m.sig_shape,
            dtype: m.dtype,
            encoding: m.encoding,
            big_endian: m.big_endian,
            frame_bytes,
        });
        sink.set_format(
            Arc::new(decoder),
            m.sig_shape,
            m.dtype,
            frame_bytes + frame_bytes / 128 + 4096,
        )
        .map_err(|e| self.core_error(e))
    }
}
