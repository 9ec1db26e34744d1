//! stemflow's application layer: what every front end (the `stemflow` command line, the
//! Python package, a long-running service) calls, so that none of them holds logic the
//! others would need.
//!
//! - [`registry`]: the detector kinds and how each is built — connected to real hardware,
//!   started as an in-process simulator on the scan engine's trigger line, or served
//!   standalone ([`sim`]).
//! - [`instrument`]: an instrument profile (TOML) assembled into the actors' instrument
//!   spec (detector, scan engine, microscope, recording) with its default scan, geometry and
//!   reductions.
//! - [`reductions`]: which UDFs a run computes and over which scan positions, from a
//!   reduction spec, a ROI and the profile — and the live pipeline that runs them.
//! - [`acquisition`]: one acquisition through the orchestrator (simulated or from a real
//!   detector); [`offline`]: the same reductions on a file; [`sequences`]: plans, scripts
//!   and unattended queues through the executor that connects the sequence engine to the
//!   orchestrator.
//! - [`output`]: run records (run.json), the HDF5 recording adapter, PNG images;
//!   [`figure`]: the figures in those images (colour maps, colour and scale bars, plots);
//!   [`live_view`]: partial results over HTTP; [`progress`]: the terminal's progress view
//!   and Ctrl-C handling.
//! - [`bench`]: the throughput and latency benchmarks.
//!
//! Each job takes plain option values ([`options`]) whose defaults are the command line's,
//! so a Rust caller writes, e.g.
//!
//! ```no_run
//! use stemflow_app::options::{DataSetOptions, ProcessOptions, ReductionChoice};
//! let opts = ProcessOptions {
//!     data: DataSetOptions::new("scan.hdr"),
//!     out: "out".into(),
//!     no_raw: true,
//!     reductions: ReductionChoice::default(),
//! };
//! stemflow_app::offline::process(&opts)?;
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! Errors are [`anyhow::Error`] chains whose messages name the file, device or setting;
//! a run the user cancelled ends in [`progress::Cancelled`], after its outputs are written.

pub mod acquisition;
pub mod bench;
pub mod figure;
pub mod instrument;
pub mod live_view;
pub mod memory;
pub mod offline;
pub mod options;
pub mod output;
pub mod progress;
pub mod reductions;
pub mod registry;
pub mod sequences;
pub mod sim;

pub use progress::{CANCELLED_EXIT_CODE, Cancelled};
