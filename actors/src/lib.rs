//! stemflow actors: the supervised actors of an instrument and the orchestrator that runs
//! acquisitions on the common state machine.
//!
//! # Layout
//! - [`supervisor`]: the supervision tree; restarts failed actors and reports failures.
//! - [`orchestrator`]: [`orchestrator::Instrument`]: starts the tree, runs acquisitions in
//!   the arm order (configure → confirmed armed → pipeline ready → scan start → frames →
//!   finish), with deadlines and cleanup on every exit path, and writes the run record.
//! - [`detector`], [`scan`], [`microscope`]: device actors wrapping blocking drivers.
//! - [`processing`]: runs one reduction pipeline per acquisition and watches it.
//! - [`recorder`]: opens and finishes recordings.
//! - [`blocking`]: device calls on blocking threads with deadlines.
//!
//! Actors exchange control messages only; frames move through the bounded channels and
//! pools of the data path (see `docs/runtime.md`).

pub mod blocking;
pub mod detector;
pub mod microscope;
pub mod orchestrator;
pub mod processing;
pub mod recorder;
pub mod scan;
pub mod supervisor;
