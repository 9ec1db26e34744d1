//! The receiver core: everything a detector's data receiver does that does not depend on
//! its wire protocol — one thread per connection, pooled stack writing (socket → stack
//! buffer, one copy), per-acquisition frame accounting and the validity map, end reasons,
//! events and deadlines. A detector plugs in its framing, header parsing and per-frame
//! checks by implementing [`Protocol`]; see `docs/adding-a-detector.md` and
//! `docs/decisions/0010-receiver-core-and-sparse-data.md`.
//!
//! # Layout
//! - [`protocol`]: [`Protocol`], what a detector implements, and the values it hands the
//!   core ([`Message`], [`Flow`], [`Begin`], [`EndReasons`], [`CoreError`]).
//! - [`stack`]: [`StackLayout`], how written payloads become the stacks sent to the
//!   consumer — [`DenseFrames`] (one payload per frame, [`RawStack`]) or a protocol's own
//!   layout for chunks of many frames (the sparse CSR chunks of protocols.md §3.4); the pool
//!   of stack buffers and the stack being filled (private).
//! - [`accounting`]: [`AcquisitionSummary`], the per-frame tally behind it, and gaps.
//! - [`worker`]: [`ReceiverEvent`], [`Connection`] (the thread handle), [`Sink`] (what a
//!   protocol writes frames into), and the acquisition loop (private).
//!
//! # Lifecycle, per connection
//! 1. [`Protocol::prepare`] once (e.g. Merlin's drain of stale bytes, protocols.md §1.4);
//! 2. [`Protocol::wait_header`] until an acquisition header (the first one within
//!    [`Settings::header_timeout`]); [`Protocol::begin`] gives the frame count; the core
//!    reports [`ReceiverEvent::Armed`] with the acquisition's stacks channel;
//! 3. [`Protocol::next`] per message within the deadline (first-frame timeout until the
//!    first frame, then the frame timeout since the last byte); frame messages go to
//!    [`Protocol::frames`], which checks them and writes their payloads through the
//!    [`Sink`]; the first one sets the format ([`ReceiverEvent::FirstFrame`]);
//! 4. the acquisition ends on all frames, the protocol's end marker, a new header, the
//!    inactivity deadline, a disarm request followed by silence, stop, disconnect or a fatal
//!    error: the core closes the stacks channel and reports [`ReceiverEvent::Finished`] (or
//!    [`ReceiverEvent::Error`]) with an [`AcquisitionSummary`]; back to 2.
//!
//! [`RawStack`]: stemflow_core::frame::RawStack

pub mod accounting;
pub mod protocol;
pub mod stack;
pub mod worker;

pub use accounting::{AcquisitionSummary, Gap};
pub(crate) use protocol::end_reasons;
pub use protocol::{Begin, CoreError, EndReasons, Flow, Message, OrderError, Protocol};
pub use stack::{DenseFrames, FilledStack, StackLayout};
pub use worker::{Connection, ReceiverEvent, Sink};

use std::time::Duration;

/// Most frames one acquisition may announce or reach: 2^26, an 8192 × 8192 scan. Its
/// validity map takes a byte per frame and a few copies of it exist along the path
/// (receiver, recorder, pipeline), so a forged count stays within a few hundred MB; a larger
/// count means a corrupt header or setting (4D-STEM scans are far smaller: 8192² frames of
/// 256 × 256 u16 would be 8.8 TB).
pub const MAX_FRAMES_PER_ACQUISITION: u64 = 1 << 26;

/// Default receive memory budget, bytes: the most the stack pool of one connection may
/// hold (512 MiB). Sizes come from the first frame's header, which a faulty or forged
/// stream can set to anything (a 16384 × 16000 u32 frame is 1 GB); a pool that would not
/// fit is shrunk (fewer frames per stack, then fewer stacks, down to two of one frame),
/// and a frame too large even for that ends the acquisition with [`CoreError::Budget`].
pub const DEFAULT_MEMORY_BUDGET: usize = 512 << 20;

/// How often waits for a pool buffer or a consumer look at the stop flag.
pub(crate) const POLL: Duration = Duration::from_millis(10);

/// Silence after a disarm request (and after the last byte) that ends the acquisition
/// ([`EndReasons::DISARMED`]). For streams without an end marker (Merlin, protocols.md
/// §1.4): a frame still on its way when the detector acknowledged the stop is waited for
/// this long; see `docs/decisions/0008-cancel-and-frame-accounting.md`.
pub const END_QUIET: Duration = Duration::from_millis(100);

/// Longest wait for a message before the core looks at a disarm request again (only for
/// protocols with [`EndReasons::DISARMED`]).
pub const END_POLL: Duration = Duration::from_millis(20);

/// Outcome of a wait that may end without data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait<T> {
    /// The thing waited for.
    Ready(T),
    /// The deadline passed with nothing (nothing consumed).
    TimedOut,
    /// The stop flag was raised.
    Stopped,
    /// The peer closed the connection at a message boundary.
    Closed,
}

/// The protocol-independent settings of one receiver connection, taken from the
/// detector's receiver config. Times are deadlines.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Device name used in every error and log line (e.g. `merlin @ 127.0.0.1:6342`).
    pub device: String,
    /// Deadline for the first acquisition header after the start; `None` waits until
    /// stop. Later acquisitions wait for their header until stop.
    pub header_timeout: Option<Duration>,
    /// Deadline from the header to the first frame (the trigger wait).
    pub first_frame_timeout: Duration,
    /// Inactivity deadline between frames (and, in the protocols, inside a message); also
    /// the longest wait for a free stack buffer or for the consumer to take a stack.
    pub frame_timeout: Duration,
    /// Writes per stack (frames, or chunks for a chunked layout); 0: automatic, about
    /// 4 MiB of payload slots ([`crate::stack_frames`]).
    pub frames_per_stack: usize,
    /// Stack buffers in the pool (and the bound of each acquisition's stacks channel).
    pub pool_stacks: usize,
    /// Most bytes the stack pool may hold ([`DEFAULT_MEMORY_BUDGET`]).
    pub memory_budget: usize,
}

/// The end of an acquisition that failed before the receiver could count anything (its
/// thread gone, no summary): no frames, `reason`, and the error.
pub(crate) fn failed_end(reason: &str, error: String) -> stemflow_core::detector::AcquisitionEnd {
    stemflow_core::detector::AcquisitionEnd {
        expected: 0,
        received: 0,
        lost: 0,
        damaged: 0,
        validity: stemflow_core::validity::FrameValidity::new(0),
        reason: reason.to_string(),
        error: Some(error),
    }
}

#[cfg(test)]
mod tests;
