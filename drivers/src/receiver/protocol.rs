//! [`Protocol`]: what a detector implements to receive through the core — its framing,
//! header parsing and per-frame checks — and the values it exchanges with the core.
//!
//! The core owns the loop, the deadlines, the stack buffers and the accounting; a protocol
//! owns its socket and its wire format. Per acquisition the core calls [`Protocol::begin`]
//! once, then [`Protocol::next`] per message and [`Protocol::frames`] for each frame
//! message; inside `frames` the protocol reads its payload straight into the stack buffer
//! the [`Sink`] reserves, so pixels are copied once, socket → stack.

use super::Wait;
use super::stack::StackLayout;
use super::worker::Sink;
use std::fmt;
use std::time::Instant;
use stemflow_core::pool::PoolError;
use stemflow_core::{DType, SigShape};

/// The end reasons of a protocol: its own enum (Merlin's and DECTRIS's differ in the
/// reasons their wire formats allow, protocols.md §1.4 and §2.4), with the members the core
/// itself decides named here.
pub trait EndReasons: Copy + fmt::Debug + fmt::Display + PartialEq + Send + 'static {
    /// Every expected frame was accounted for.
    const ALL_FRAMES: Self;
    /// No message within the first-frame or the frame timeout.
    const INACTIVITY_DEADLINE: Self;
    /// A new acquisition header arrived while the acquisition ran.
    const NEW_HEADER: Self;
    /// The receiver was stopped.
    const STOPPED: Self;
    /// The peer closed the connection between messages.
    const DISCONNECTED: Self;
    /// A fatal error ended it.
    const FAILED: Self;
    /// A disarm request followed by [`END_QUIET`](super::END_QUIET) of silence ended it;
    /// `None` for protocols whose stream ends acquisitions itself (DECTRIS' end of series,
    /// protocols.md §2.4): the core then never slices its waits for disarm requests.
    const DISARMED: Option<Self>;

    /// A short description for run records (`all frames`, `inactivity deadline`, …).
    fn as_str(self) -> &'static str;
}

/// Implements [`fmt::Display`] (through the enum's own `as_str`) and [`EndReasons`] for a
/// protocol's end-reason enum, naming which of its members the core's reasons are:
///
/// ```ignore
/// end_reasons!(EndReason {
///     all_frames: AllFrames,
///     inactivity_deadline: InactivityDeadline,
///     new_header: NewHeader,
///     stopped: Stopped,
///     disconnected: Disconnected,
///     failed: Failed,
///     disarmed: Some(Disarmed),
/// });
/// ```
macro_rules! end_reasons {
    ($ty:ident {
        all_frames: $all:ident,
        inactivity_deadline: $idle:ident,
        new_header: $new:ident,
        stopped: $stopped:ident,
        disconnected: $disc:ident,
        failed: $failed:ident,
        disarmed: $disarmed:expr $(,)?
    }) => {
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl $crate::receiver::EndReasons for $ty {
            const ALL_FRAMES: Self = Self::$all;
            const INACTIVITY_DEADLINE: Self = Self::$idle;
            const NEW_HEADER: Self = Self::$new;
            const STOPPED: Self = Self::$stopped;
            const DISCONNECTED: Self = Self::$disc;
            const FAILED: Self = Self::$failed;
            const DISARMED: Option<Self> = $disarmed;

            fn as_str(self) -> &'static str {
                $ty::as_str(self)
            }
        }
    };
}
pub(crate) use end_reasons;

/// What [`Protocol::begin`] says about an acquisition whose header arrived.
#[derive(Clone, Debug, PartialEq)]
pub struct Begin<S> {
    /// Frames expected (0: continuous, or unknown until the protocol's end marker).
    pub expected: u64,
    /// The protocol's id of the acquisition, carried into its summary (DECTRIS: the series
    /// id, §2.4; `()` for Merlin, whose stream carries none, §1.4).
    pub series: S,
}

/// One message as the acquisition loop sees it ([`Protocol::next`]).
pub enum Message<P: Protocol> {
    /// An acquisition header: ends the acquisition under way with
    /// [`EndReasons::NEW_HEADER`]; the next one starts with it if
    /// [`Protocol::accepts`] takes it.
    Header(P::Header),
    /// A frame message (one frame, or a chunk of many) whose header has been read; its
    /// payload is still on the wire (or in the protocol's scratch) for
    /// [`Protocol::frames`].
    Frames(P::Frames),
    /// The protocol's end-of-acquisition marker: ends the acquisition with this reason,
    /// or [`EndReasons::ALL_FRAMES`] when every expected frame was accounted for.
    End(P::End),
    /// Anything else; the core waits for the next message.
    Skip,
}

/// How [`Protocol::frames`] left the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Go on with the next message.
    Continue,
    /// The stop flag was raised inside the message.
    Stopped,
    /// The peer closed the connection at a message boundary inside the message's parts.
    Closed,
}

/// What a frame index breaks in [`Sink::accept`](super::Sink::accept).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderError {
    /// Before the frame expected next: repeated or going backwards.
    Backwards,
    /// At or after the acquisition's expected frame count.
    PastEnd {
        /// Frames expected.
        expected_frames: u64,
    },
    /// A continuous acquisition reached [`MAX_FRAMES_PER_ACQUISITION`](super::MAX_FRAMES_PER_ACQUISITION)
    /// frames (its validity map takes a byte per frame).
    PastLimit {
        /// The limit.
        max: u64,
    },
}

/// Errors the core raises while it serves a protocol; [`Protocol::core_error`] turns them
/// into the protocol's own error, adding what only the protocol knows (the device name is
/// in each protocol's errors, DECTRIS adds the series id, Merlin numbers frames from 1).
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// No stack buffer came back, or the consumer took no stack, within the frame
    /// timeout.
    #[error("{source}")]
    Pool {
        /// The pool error (names the pool, its capacity and the wait).
        #[source]
        source: PoolError,
    },
    /// The header announces more frames than [`MAX_FRAMES_PER_ACQUISITION`](super::MAX_FRAMES_PER_ACQUISITION).
    #[error("acquisition of {frames} frames exceeds the maximum of {max} frames")]
    TooManyFrames {
        /// Frames announced.
        frames: u64,
        /// The limit.
        max: u64,
    },
    /// A frame index that is not the next one (0-based; a protocol numbering frames from 1
    /// adds 1 in its error).
    #[error("expected frame {expected}, observed frame {observed} ({kind:?})")]
    Order {
        /// The frame index expected next.
        expected: u64,
        /// The frame index received.
        observed: u64,
        /// What it breaks.
        kind: OrderError,
    },
    /// The first frame's size (from its header) does not fit the receive memory budget
    /// even in the smallest pool (two stacks of one frame).
    #[error(
        "a frame of {slot} bytes (from the frame header) needs at least {needed} bytes of \
         receive buffers, more than the memory budget of {budget} bytes"
    )]
    Budget {
        /// Bytes of one frame (or chunk) slot, as the header announced.
        slot: usize,
        /// The smallest pool for it, bytes.
        needed: u128,
        /// The budget, bytes.
        budget: usize,
    },
    /// The first frame's shape or pixel type differs from the format the detector was
    /// configured for ([`Connection::expect_format`](super::Connection::expect_format)): a
    /// protocol error for the acquisition, raised before any of its frames is stored.
    #[error(
        "the first frame is {observed_dtype} frames of {observed_sig} pixels, but the detector \
         was configured for {expected_dtype} frames of {expected_sig} pixels"
    )]
    Format {
        /// Frame shape configured (rows × columns, pixels).
        expected_sig: SigShape,
        /// Pixel type configured.
        expected_dtype: DType,
        /// Frame shape of the first frame, from its header.
        observed_sig: SigShape,
        /// Pixel type of the first frame, from its header.
        observed_dtype: DType,
    },
    /// A payload larger than a whole stack buffer (the slot the format announced).
    #[error("payload of {len} bytes exceeds the stack slot of {slot} bytes")]
    Slot {
        /// Payload bytes.
        len: usize,
        /// Slot bytes ([`Sink::slot`](super::Sink::slot)).
        slot: usize,
    },
    /// The protocol module used the [`Sink`] out of order (a payload before
    /// the format was set, a commit without a reservation): a bug, reported, never a panic.
    #[error("receiver protocol misuse: {0}")]
    Misuse(&'static str),
}

/// A detector's wire protocol as the receiver core drives it. One value per connection,
/// owning the socket; the core calls it from the connection thread only.
///
/// # Dense frames and chunks
/// A frame message carries one frame (Merlin MQ1, §1.6; DECTRIS image, §2.4/§2.6) or a
/// chunk of many consecutive frames (ASI TPX3 `ArrayChunk`, a CSR matrix of `nframes` rows,
/// §3.3–§3.4). [`Sink::accept`](super::Sink::accept), [`Sink::commit`](super::Sink::commit)
/// and [`Sink::damaged`](super::Sink::damaged) take a first frame and a frame count, so a
/// chunk is accounted per frame; [`Protocol::Layout`] says what one write becomes in the
/// stacks ([`DenseFrames`](super::DenseFrames): one [`RawFrameRef`] per frame).
///
/// [`RawFrameRef`]: stemflow_core::frame::RawFrameRef
pub trait Protocol: Sized + Send + 'static {
    /// The acquisition header, as [`ReceiverEvent::Armed`](super::ReceiverEvent::Armed)
    /// carries it.
    type Header: fmt::Debug + Send + 'static;
    /// A frame message whose header has been read ([`Message::Frames`]).
    type Frames;
    /// The protocol's errors; the core's own are converted by [`Self::core_error`].
    type Error: std::error::Error + Send + 'static;
    /// The protocol's end reasons.
    type End: EndReasons;
    /// The acquisition id carried into summaries ([`Begin::series`]).
    type Series: Clone + fmt::Debug + PartialEq + Send + 'static;
    /// What a write becomes in the stacks, and the decoder they carry.
    type Layout: StackLayout;

    /// When the last byte arrived: the inactivity deadline counts from it.
    fn last_activity(&self) -> Instant;

    /// Bytes received and not yet read (`Some(0)`: nothing waiting; `None`: unknown, or a
    /// message already read ahead). The core hands a partly filled stack over when the
    /// consumer is idle and nothing is waiting.
    fn pending(&self) -> Option<usize>;

    /// True once the receiver was asked to stop.
    fn stopped(&self) -> bool;

    /// Once per connection, before the first header (Merlin: drain stale bytes).
    ///
    /// # Errors
    /// The protocol's; ends the connection with [`ReceiverEvent::Error`](super::ReceiverEvent::Error).
    fn prepare(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Waits for the next acquisition header the receiver should take, discarding
    /// everything else (stale frames of an earlier acquisition); `deadline` `None` waits
    /// until stop. `Ok(None)`: stopped (or, where the protocol treats it so, closed).
    ///
    /// # Errors
    /// The protocol's (its header timeout, a malformed stream); end the connection.
    fn wait_header(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<Self::Header>, Self::Error>;

    /// Whether a header that arrived inside an acquisition starts the next one (DECTRIS:
    /// the series filter, §2.7); otherwise the core waits with [`Self::wait_header`].
    fn accepts(&mut self, _header: &Self::Header) -> bool {
        true
    }

    /// Starts an acquisition on `header` (reset per-acquisition state): frames expected
    /// and the acquisition's id.
    ///
    /// # Errors
    /// The protocol's; end the connection before `Armed` is reported.
    fn begin(&mut self, header: &Self::Header) -> Result<Begin<Self::Series>, Self::Error>;

    /// Reads the next message of the acquisition under way, waiting at most until
    /// `deadline` for its start (inside a message the protocol's own frame timeout
    /// applies). [`Wait::TimedOut`] must consume nothing.
    ///
    /// # Errors
    /// The protocol's; the acquisition ends with [`EndReasons::FAILED`].
    fn next(&mut self, deadline: Instant) -> Result<Wait<Message<Self>>, Self::Error>;

    /// Checks a frame message and writes its payload through `sink`: typically
    /// [`Sink::accept`](super::Sink::accept) its frame range, on the first frame
    /// [`Sink::set_format`](super::Sink::set_format), then
    /// [`Sink::reserve`](super::Sink::reserve) the payload's bytes, read the payload from
    /// the socket into them, and [`Sink::commit`](super::Sink::commit) (or
    /// [`Sink::damaged`](super::Sink::damaged) when a check fails).
    ///
    /// # Errors
    /// The protocol's (sink errors through [`Self::core_error`]); the acquisition ends
    /// with [`EndReasons::FAILED`].
    fn frames(
        &mut self,
        frames: Self::Frames,
        sink: &mut Sink<'_, Self>,
    ) -> Result<Flow, Self::Error>;

    /// The protocol's error for a core error (adds the device name, and the series or the
    /// protocol's frame numbering).
    fn core_error(&self, error: CoreError) -> Self::Error;

    /// True for an error that is an orderly close between acquisitions (logged as
    /// information, not as a failure).
    fn is_quiet_close(&self, _error: &Self::Error) -> bool {
        false
    }
}
