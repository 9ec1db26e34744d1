//! DECTRIS SIMPLON detectors (ARINA, QUADRO, EIGER2-based; protocols.md §2).
//!
//! - [`codec`]: the frame codecs — bitshuffle + LZ4 (`bs8/bs16/bs32-lz4<`), plain LZ4, and
//!   uncompressed — decoding and encoding (§2.5).
//! - [`dataset`]: [`DectrisDataSet`], a master set as a `stemflow_core` data set (what the
//!   processing engine runs on).
//! - [`decode`]: [`decode::DectrisDecoder`], the `FrameDecoder` of stream frames (runs the codec
//!   in the processing workers).
//! - [`rest`]: the SIMPLON REST API client (§2.2, §2.3).
//! - [`stream`]: stream v1 (JSON + binary, §2.4) and v2 (CBOR, §2.6) message parsing.
//! - [`zmtp`]: the ZeroMQ transport (ZMTP 3, NULL security): a PULL client and a PUSH end.
//! - [`receiver`]: the ZeroMQ PULL receiver filling pooled raw frame stacks.
//! - [`detector`]: [`DectrisDetector`], the core `Detector` on REST + stream (active and
//!   passive mode).
//! - [`master`]: offline DECTRIS HDF5 master/data sets, raw chunks decoded with [`codec`].

/// The frame codecs live in the core crate (the recorder writes bitshuffle-LZ4 chunks too);
/// re-exported here under their historical path.
pub use stemflow_core::codec;
pub mod dataset;
pub mod decode;
pub mod detector;
pub mod master;
pub mod receiver;
pub mod rest;
pub mod stream;
pub mod zmtp;

pub use dataset::DectrisDataSet;
pub use decode::DectrisDecoder;
pub use detector::{DectrisDetector, DectrisDetectorConfig};
pub use receiver::{
    AcquisitionSummary, DectrisError, DectrisReceiver, DectrisReceiverConfig, EndReason,
    LossPolicy, ReceiverEvent, SeriesFilter, SeriesHeader,
};
pub use rest::{RestError, SimplonClient, StreamFormat};
