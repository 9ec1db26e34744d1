//! ASI Timepix3 (CheeTah) — the sparse event stream (protocols.md §3): electron events
//! binned per scan position into CSR rows, sent in `ArrayChunk`s over TCP (port 8283), and
//! Serval's REST API for active control (§3.6).
//!
//! - [`wire`]: the five 32-byte headers, parsed and written (pure).
//! - [`receiver`]: [`Tpx3Receiver`], the CSR data-port receiver on the receiver core:
//!   whole chunks in pooled stacks, one scan per acquisition.
//! - [`file`]: [`TpxFile`], a recorded stream (`.tpx`) as a sparse data set.
//! - [`serval`]: [`ServalClient`], Serval's REST API (§3.6).
//! - [`detector`]: [`Tpx3Detector`], the camera as the orchestrator's `Detector`, passive
//!   and active (Serval).
pub mod detector;
pub mod file;
pub mod receiver;
pub mod serval;
pub mod wire;

pub use detector::{Tpx3Detector, Tpx3DetectorConfig};
pub use file::TpxFile;
pub use receiver::{
    AcquisitionSummary, CsrChunks, EndReason, ReceiverEvent, ScanHeader, Tpx3Error, Tpx3Protocol,
    Tpx3Receiver, Tpx3ReceiverConfig,
};
pub use serval::{ServalClient, ServalError};
pub use wire::{AcquisitionStart, ArrayChunk, FormatType, Header, WireError};
