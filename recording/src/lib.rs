//! stemflow recording: one acquisition's raw frames, UDF results, per-frame validity map and
//! read-back metadata in one HDF5 file that h5py, HyperSpy (NeXus reader), py4DSTEM and
//! LiberTEM can open; and 8-bit PNG images of 2-D result maps.
//!
//! The file layout (every group, dataset, dtype, attribute and unit) is specified in
//! `docs/formats.md`; in short:
//!
//! ```text
//! /entry                         NXentry; @recording_complete (0 until finish), @stemflow_layout_version
//!   data/frames                  (nav_rows, nav_cols, sig_rows, sig_cols) native uint, chunked
//!   data/validity                (nav_rows, nav_cols) uint8: 0 lost, 1 received, 2 damaged; counts as attributes
//!   instrument/detector/...      name, header (Merlin HDR text), settings (one attribute each)
//!   instrument/microscope/...    high_tension [V], camera_length [m], ... (`units` attributes)
//!   instrument/scan/...          nav_shape, dwell_time [s], flyback_time [s], trigger
//!   results/<udf>/<buffer>       float64, @kind (nav|sig|single), @unit
//!   software_version, start_time, stop_time, mode, run_metadata_json, run_record_json
//! ```
//!
//! # Layout
//! - [`error`]: [`RecordingError`], the crate's one error type; messages name the file,
//!   the HDF5 object and the numbers.
//! - [`layout`]: object paths, the chunk shape, and the pure arithmetic that splits a run
//!   of frames into hyperslabs of the 4-D frames dataset (unit-tested).
//! - [`hdf5`]: [`Hdf5Recorder`], the [`TileSink`](stemflow_core::sink::TileSink) that
//!   writes frames (on its own writer thread by default) and, at `finish`, the results,
//!   validity and metadata.
//! - [`reader`]: [`open_recording`] / [`RecordingReader`], reading our recordings back
//!   (tiles for offline processing, validity, results, metadata).
//! - [`png`]: [`write_png_image`], greyscale PNGs of 2-D maps with robust (percentile) or
//!   diverging (signed) scaling.

pub mod bslz4;
pub mod chunk;
pub mod csr;
pub mod error;
pub mod hdf5;
pub mod layout;
pub mod png;
pub mod reader;
pub mod views;

pub use crate::error::RecordingError;
pub use crate::hdf5::{Hdf5Recorder, RecordingSpec, RecordingSummary};
pub use crate::png::{GreyRange, Scaling, to_grey8, write_png_image};
pub use crate::reader::{RecordingReader, open_recording};
