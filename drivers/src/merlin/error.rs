//! [`MerlinError`]: what can go wrong on the Merlin data channel (protocols.md §1.4–§1.8).
//! Every variant names the device; byte counts and frame numbers are given where they
//! matter.

use super::decode::DecoderError;
use super::hdr::HdrError;
use super::mpx::MpxError;
use super::mq1::Mq1Error;
use std::io;
use std::net::SocketAddr;
use stemflow_core::pool::PoolError;

/// Errors of the Merlin data-port receiver. Each ends the connection (the receiver reports
/// it as [`ReceiverEvent::Error`](super::receiver::ReceiverEvent::Error)).
#[derive(Debug, thiserror::Error)]
pub enum MerlinError {
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
        source: io::Error,
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
        source: io::Error,
    },
    /// A malformed MPX prefix (bad magic: stale bytes or a lost stream position).
    #[error("{device}: {source}")]
    Mpx {
        /// Device name.
        device: String,
        /// The cause.
        #[source]
        source: MpxError,
    },
    /// A malformed acquisition header.
    #[error("{device}: {source}")]
    Header {
        /// Device name.
        device: String,
        /// The cause.
        #[source]
        source: HdrError,
    },
    /// A malformed frame header.
    #[error("{device}: frame {sequence}: {source}")]
    FrameHeader {
        /// Device name.
        device: String,
        /// Sequence number expected for this frame.
        sequence: u64,
        /// The cause.
        #[source]
        source: Mq1Error,
    },
    /// The first frame's format cannot be decoded.
    #[error("{device}: {source}")]
    Decoder {
        /// Device name.
        device: String,
        /// The cause.
        #[source]
        source: DecoderError,
    },
    /// A message that is neither `HDR` nor `MQ1`, or the wrong one for the moment.
    #[error(
        "{device}: expected {expected}, observed a message starting `{observed}` ({length} bytes)"
    )]
    UnexpectedMessage {
        /// Device name.
        device: String,
        /// What the receiver was waiting for.
        expected: &'static str,
        /// The first payload bytes, escaped.
        observed: String,
        /// The MPX length of the message, bytes.
        length: u64,
    },
    /// The first frame's size, from its MQ1 header, does not fit the receive memory
    /// budget (checked before any buffer is allocated).
    #[error("{device}: {source}")]
    Budget {
        /// Device name.
        device: String,
        /// The frame size, the smallest pool for it and the budget.
        #[source]
        source: crate::receiver::CoreError,
    },
    /// The acquisition's first frame has another shape or pixel type than the detector
    /// was configured for (counter depth and ROI read back at configure; §1.6 MQ1 header).
    #[error("{device}: {source}")]
    Format {
        /// Device name.
        device: String,
        /// The configured and the observed shape and type.
        #[source]
        source: crate::receiver::CoreError,
    },
    /// A frame whose size differs from the acquisition's first frame (or from what its
    /// header's dimensions call for).
    #[error(
        "{device}: frame {sequence} is {observed} bytes (header + pixels), expected {expected} bytes"
    )]
    FrameSize {
        /// Device name.
        device: String,
        /// Sequence number expected for this frame.
        sequence: u64,
        /// Bytes expected.
        expected: u64,
        /// Bytes announced.
        observed: u64,
    },
    /// A frame header whose data offset differs from the first frame's.
    #[error(
        "{device}: frame {sequence} has a data offset of {observed} bytes, expected {expected}"
    )]
    DataOffset {
        /// Device name.
        device: String,
        /// The frame's sequence number.
        sequence: u64,
        /// The first frame's data offset, bytes.
        expected: usize,
        /// This frame's, bytes.
        observed: usize,
    },
    /// A sequence number that is 0, goes backwards, or lies past the acquisition's end.
    #[error("{device}: frame sequence number {observed}, expected {expected} ({detail})")]
    Sequence {
        /// Device name.
        device: String,
        /// The sequence number expected next.
        expected: u64,
        /// The one received.
        observed: u64,
        /// Why it is invalid.
        detail: String,
    },
    /// The peer closed the connection inside a message.
    #[error(
        "{device}: stream truncated inside {what}: {received} of {expected} bytes received before the connection closed"
    )]
    Truncated {
        /// Device name.
        device: String,
        /// The message (`frame 12`, `acquisition header`, `MPX prefix`).
        what: String,
        /// Bytes the message needs.
        expected: u64,
        /// Bytes that arrived.
        received: u64,
    },
    /// The stream stopped inside a message for longer than the inactivity deadline.
    #[error(
        "{device}: stream stalled inside {what}: {received} of {expected} bytes received, nothing more for {waited_s:.3} s"
    )]
    Stalled {
        /// Device name.
        device: String,
        /// The message.
        what: String,
        /// Bytes the message needs.
        expected: u64,
        /// Bytes that arrived.
        received: u64,
        /// The inactivity deadline, s.
        waited_s: f64,
    },
    /// No acquisition header arrived after the receiver started.
    #[error(
        "{device}: no acquisition header (HDR) within {waited_s:.3} s of connecting (detector not armed?)"
    )]
    HeaderTimeout {
        /// Device name.
        device: String,
        /// The deadline, s.
        waited_s: f64,
    },
    /// Draining stale bytes never reached 100 ms of silence (the detector is sending).
    #[error(
        "{device}: stale data kept arriving for {waited_s:.3} s after connecting ({drained} bytes drained); is an acquisition running?"
    )]
    DrainTimeout {
        /// Device name.
        device: String,
        /// How long we drained, s.
        waited_s: f64,
        /// Bytes discarded.
        drained: u64,
    },
    /// The consumer did not return frame-stack buffers in time (stalled processing).
    #[error("{device}: {source}")]
    Pool {
        /// Device name.
        device: String,
        /// The cause (names the pool, its capacity and the wait).
        #[source]
        source: PoolError,
    },
    /// The acquisition announces more frames than a receiver accepts (corrupt header or
    /// setting).
    #[error("{device}: acquisition of {frames} frames exceeds the maximum of {max} frames")]
    TooManyFrames {
        /// Device name.
        device: String,
        /// Frames announced (HDR or configuration).
        frames: u64,
        /// The maximum.
        max: u64,
    },
    /// The peer closed the connection while no acquisition was under way.
    #[error("{device}: data connection closed by the detector")]
    Closed {
        /// Device name.
        device: String,
    },
}
