//! Core types shared by every stemflow crate. Nothing here does I/O (the [`dataset`] trait
//! only describes how file readers hand their frames over).
//!
//! # Layout
//! - [`shape`]: navigation (scan) and signal (detector) shapes, in pixels.
//! - [`dtype`]: pixel data types and their sizes in bytes.
//! - [`element`]: [`element::ElementType`], the pixel type stored in a file, and
//!   [`element::ByteOrder`].
//! - [`dataset`]: the [`dataset::DataSet`] trait every offline reader implements (the
//!   processing crate's `.npy`, raw and HDF5 readers, the drivers' Merlin and DECTRIS
//!   recordings), and [`dataset::IoError`].
//! - [`csr`]: sparse frames — CSR chunks as an event detector sends them ([`csr::CsrStack`]),
//!   normalised rows for the UDFs ([`csr::CsrRows`]), and [`csr::Stack`], dense or sparse.
//! - [`frame`]: raw frame stacks as received, decoded tiles, the [`frame::FrameDecoder`] trait
//!   that turns one received frame into native pixels.
//! - [`pool`]: bounded pools of preallocated buffers (the data path's backpressure).
//! - [`state`]: the two state machines (device health; acquisition), pure transition functions.
//! - [`validity`]: the per-frame validity map (received / lost / damaged) and its counters.
//! - [`detector`]: the [`detector::Detector`] trait the orchestrator drives (configure, arm, disarm).
//! - [`devices`]: the traits real and simulated scan engines and microscopes implement, the
//!   modelled trigger line, and [`devices::DeviceError`].
//! - [`metadata`]: the read-back instrument state stored with every acquisition.
//! - [`result`]: UDF result buffers (nav / sig / single) as merged, for views and recorders.
//! - [`sink`]: the [`sink::TileSink`] trait through which decoded tiles reach a recorder.

pub mod codec;
pub mod csr;
pub mod dataset;
pub mod detector;
pub mod devices;
pub mod dtype;
pub mod element;
pub mod frame;
pub mod mem;
pub mod metadata;
pub mod pool;
pub mod result;
pub mod shape;
pub mod sink;
pub mod state;
pub mod validity;

pub use dataset::{DataSet, IoError};
pub use dtype::DType;
pub use shape::{NavShape, SigShape};

/// The stemflow version string stored in every recording's metadata.
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");
