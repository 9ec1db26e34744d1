//! Experiment sequences: plans written in Rust with typed parameters, an execution engine
//! with checkpoints, suspenders and guaranteed cleanup, sequence scripts in an embedded,
//! sandboxed language (Rhai), and an unattended TOML queue with a crash-safe run journal.
//!
//! # Layout
//! - [`plan`]: [`PlanStep`], the plans ([`Stem4dScanPlan`], [`DarkReferencePlan`],
//!   [`DefocusSeriesPlan`], [`RepeatedScanPlan`], [`SubRegionRescanPlan`]), [`Plan`],
//!   [`PlanSpec`] (TOML form) and [`PlanSummary`] (dry-run cost).
//! - [`engine`]: the [`Executor`] trait the instrument implements, [`Session`] (checkpoints,
//!   [`Suspender`]s, output naming, cleanup), [`Control`] (pause/resume/stop/abort),
//!   [`Hooks`], and [`FakeExecutor`] for tests.
//! - [`script`]: Rhai sequence scripts ([`script::run_script`]); docs/decisions/0004.
//! - [`queue`]: the TOML queue ([`queue::Queue`], [`queue::run_queue`]) with sweeps and
//!   per-item error policy; [`journal`]: the fsync'd JSON-lines run journal and resume;
//!   [`notify`]: log file and webhook.
//!
//! The engine never touches a device: it drives an [`Executor`] that the binary implements
//! over the orchestrator (docs/decisions/0002-crate-split.md).

pub mod engine;
pub mod journal;
pub mod notify;
pub mod plan;
pub mod queue;
pub mod script;

pub use engine::{
    Control, ControlState, ExecError, Executor, FakeExecutor, Hooks, NoHooks, RunOutcome,
    SequenceError, Session, StepOp, Suspender, drive_steps, watch_control_file,
};
pub use plan::{
    DarkReferencePlan, DefocusSeriesPlan, Plan, PlanAcquisition, PlanError, PlanSpec, PlanStep,
    PlanSummary, Region, RepeatedScanPlan, ScanDefaults, Stem4dScanPlan, SubRegionRescanPlan,
};
pub use queue::{Queue, QueueError, QueueOptions, QueueReport, run_queue};
pub use script::{ScriptSource, run_script};
