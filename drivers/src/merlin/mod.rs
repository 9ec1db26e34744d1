//! Quantum Detectors Merlin (MerlinEM, Medipix3; single chip and 2×2 quad), protocols.md §1.
//!
//! The Merlin PC is a TCP server with a control port (6341, request/response) and a data
//! port (6342, a one-way stream); both use MPX framing. Bottom to top:
//!
//! - [`mpx`]: the `MPX,<10 digits>,` framing of both ports (§1.2).
//! - [`hdr`]: [`MerlinHeader`], the acquisition header sent on arm (§1.5).
//! - [`mq1`]: [`Mq1Header`], the per-frame header (§1.6).
//! - [`decode`]: [`MerlinDecoder`], payload → pixels, incl. raw and quad assembly (§1.7).
//! - [`file`](mod@file): [`MibFile`], offline reading of `.hdr` + `.mib` recordings.
//! - [`dataset`]: [`MibDataSet`], a recording as a `stemflow_core` data set (what the
//!   processing engine runs on).
//! - [`settings`]: [`MerlinSettings`] and [`MerlinTrigger`], the acquisition variables (§1.3).
//! - [`control`]: [`MerlinControl`], the control-port client with deadlines (§1.3).
//! - [`error`]: [`MerlinError`], errors of the data channel.
//! - `stream`: exact socket reads with deadlines and a stop flag (private).
//! - [`receiver`]: [`MerlinReceiver`], the data-port receiver thread (§1.4, §1.8).

pub mod control;
pub mod dataset;
pub mod decode;
pub mod detector;
pub mod error;
pub mod file;
pub mod hdr;
pub mod mpx;
pub mod mq1;
pub mod receiver;
pub mod settings;
pub(crate) mod stream;

pub use control::{ControlError, MerlinControl};
pub use dataset::MibDataSet;
pub use decode::{DecoderError, MerlinDecoder};
pub use detector::{MerlinDetector, MerlinDetectorConfig};
pub use error::MerlinError;
pub use file::{MibFile, MibFileError};
pub use hdr::{HdrError, MerlinHeader};
pub use mpx::{MpxError, MpxPrefix};
pub use mq1::{Layout, Mq1Error, Mq1Header, PixelFormat};
pub use receiver::{
    AcquisitionSummary, EndReason, MerlinReceiver, MerlinReceiverConfig, ReceiverEvent,
};
pub use settings::{MerlinSettings, MerlinTrigger, SettingsError};
