//! The orchestrator: runs acquisitions on the common acquisition state machine, in the arm
//! order of vision.md §3, with a deadline on every wait and cleanup on every exit path.
//!
//! ```text
//! Idle → Configuring: microscope apply + read back; scan engine configure; detector
//!        configure (read back)
//!      → Armed: detector confirms armed (header seen); recorder opens; pipeline starts
//!      → Running: scan engine starts (it is the trigger source) or a soft trigger
//!      → Finishing: all frames in, or the detector's deadline passed (losses counted);
//!        scan stopped, detector disarmed (reverse order); recording finished
//!      → Idle, with a RunRecord.
//! Any failure: cancel pipeline, stop scan, disarm detector → Fault → Resetting (wait for
//! the supervisor to restart a failed actor) → Idle; the error names the device or actor.
//! A user cancel (CancelHandle, e.g. Ctrl-C): cancel pipeline (results so far kept), stop
//! scan, disarm detector → Finishing: recording finished → Idle, exit status Cancelled.
//! ```
//!
//! # Layout
//! - this file: [`Instrument`] (starts the supervision tree, owns the acquisition state,
//!   publishes status and state changes), [`CancelHandle`], and the per-run state the steps
//!   share (`RunContext`).
//! - `request`: [`AcquisitionRequest`], [`PipelineBuilder`], [`PipelineInputs`]: what a
//!   front end asks for.
//! - `record`: [`RunRecord`], [`ExitStatus`], [`RunError`], [`RunFailure`]: how it ended.
//! - `run`: [`Instrument::run_acquisition`]: the steps in order, the run record, and the
//!   fault path (`recover`) that every failed step ends in.
//! - `steps`: one method per step of a run, in the order they run: `configure` →
//!   `arm` → `start_processing` → `trigger` → `monitor` → `reconcile_end` → `finish`.
//! - `accounting`: the end-of-run recount of received, lost, damaged and not acquired
//!   frames (decision 0008); pure, so it is tested without actors.
//!
//! `docs/runtime.md` describes the threads, channels, deadlines and failure paths of a run.

mod accounting;
mod record;
mod request;
mod run;
mod steps;

pub use record::{ExitStatus, RunError, RunFailure, RunRecord};
pub use request::{AcquisitionRequest, PipelineBuilder, PipelineInputs, ReadyHook};

use crate::processing::LiveSnapshot;
use crate::supervisor::{
    ChildRefs, InstrumentSpec, InstrumentSupervisor, Role, SharedChildren, SupervisorArgs,
    SupervisorMsg, SupervisorReport, spawn_children,
};
use ractor::{Actor, ActorRef, RpcReplyPort};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use stemflow_core::detector::AcquisitionEnd;
use stemflow_core::devices::DeviceError;
use stemflow_core::metadata::RunMetadata;
use stemflow_core::result::UdfResults;
use stemflow_core::state::{AcqEvent, AcqState, Health, IllegalTransition};
use tokio::sync::{broadcast, mpsc, watch};

/// What observers see (CLI progress bar, live view).
#[derive(Clone, Debug)]
pub struct InstrumentStatus {
    /// Acquisition state.
    pub state: AcqState,
    /// Frames expected in the current run.
    pub frames_expected: u64,
    /// Frames processed in the current run.
    pub frames_processed: u64,
    /// Decoded bytes per frame.
    pub bytes_per_frame: u64,
    /// Frames lost or damaged in the current run, as far as known (final at the end).
    pub frames_lost: u64,
    /// Latest result snapshot.
    pub snapshot: Arc<LiveSnapshot>,
}

/// An observable state change.
#[derive(Clone, Debug)]
pub struct StateChange {
    /// Before.
    pub from: AcqState,
    /// Event.
    pub event: AcqEvent,
    /// After.
    pub to: AcqState,
}

/// A supervised instrument: the actors, their supervisor, and the acquisition state.
pub struct Instrument {
    /// The supervisor: restarts a failed child; stopping it stops every child.
    supervisor: ActorRef<SupervisorMsg>,
    /// Current child refs and health, written by the supervisor on a restart: a run reads
    /// the refs afresh instead of keeping a ref to an actor that may have died.
    shared: Arc<SharedChildren>,
    /// Failures and restarts from the supervisor: how a run learns that an actor died
    /// while it was not calling it.
    reports: mpsc::UnboundedReceiver<SupervisorReport>,
    /// The acquisition state; only [`Instrument::transition`] changes it.
    state: AcqState,
    /// Latest status for observers (a watch: a slow observer skips values, never blocks a
    /// run).
    status: watch::Sender<InstrumentStatus>,
    /// Every state change, in order, for observers that must not miss one.
    changes: broadcast::Sender<StateChange>,
    /// The detector's own name, asked at the start of every run (errors, metadata).
    detector_name: String,
    /// The scan engine's own name, asked when a run configures it (trigger source).
    scan_name: Option<String>,
    /// Set by a [`CancelHandle`]: the running (or next) acquisition ends as cancelled.
    user_cancel: Arc<AtomicBool>,
    /// The refs the children started with: what [`Instrument::refs`] gives should the
    /// shared copy ever be missing.
    started_refs: ChildRefs,
}

/// Cancels an [`Instrument`]'s acquisition from anywhere (another task or thread, a
/// Ctrl-C handler): the running acquisition, or the next one if none runs, ends with
/// [`ExitStatus::Cancelled`] — pipeline cancelled (the frames so far are kept), scan
/// stopped, detector disarmed, recording finished. The request is consumed by that run, so
/// the instrument stays usable for the next.
#[derive(Clone, Debug)]
pub struct CancelHandle {
    flag: Arc<AtomicBool>,
}

impl CancelHandle {
    /// Asks the running (or next) acquisition to end as cancelled; returns at once.
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }
    /// True while a cancel is requested and not yet consumed by a run.
    pub fn is_requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

/// How long the orchestrator waits for an actor's reply: longer than the deadline the actor
/// puts on the device call itself (5 s scan engine, 10 s detector and microscope), so that
/// a slow device is reported by the actor, naming it, and only a stuck actor times out here.
const CALL_MARGIN: Duration = Duration::from_secs(15);

impl Instrument {
    /// Starts the supervisor and every actor (connecting every device).
    ///
    /// # Errors
    /// A message naming the actor that failed to start.
    pub async fn start(spec: InstrumentSpec) -> Result<Self, String> {
        let shared = Arc::new(SharedChildren {
            refs: RwLock::new(None),
            health: RwLock::new(BTreeMap::new()),
        });
        let (tx, reports) = mpsc::unbounded_channel();
        let (supervisor, _) = Actor::spawn(
            None,
            InstrumentSupervisor,
            SupervisorArgs {
                spec: spec.clone(),
                shared: Arc::clone(&shared),
                reports: tx,
            },
        )
        .await
        .map_err(|e| format!("supervisor failed to start: {e}"))?;
        let refs = match spawn_children(&spec, supervisor.get_cell()).await {
            Ok(r) => r,
            Err(e) => {
                supervisor.stop(None);
                return Err(e.to_string());
            }
        };
        if let Ok(mut h) = shared.health.write() {
            h.insert(Role::Detector, Health::Ready);
            h.insert(Role::Processing, Health::Ready);
            h.insert(Role::Recorder, Health::Ready);
            if refs.scan.is_some() {
                h.insert(Role::ScanEngine, Health::Ready);
            }
            if refs.microscope.is_some() {
                h.insert(Role::Microscope, Health::Ready);
            }
        }
        let started_refs = refs.clone();
        match shared.refs.write() {
            Ok(mut w) => *w = Some(refs),
            Err(poisoned) => *poisoned.into_inner() = Some(refs),
        }
        let (status, _) = watch::channel(InstrumentStatus {
            state: AcqState::Idle,
            frames_expected: 0,
            frames_processed: 0,
            bytes_per_frame: 0,
            frames_lost: 0,
            snapshot: Arc::new(LiveSnapshot::default()),
        });
        let (changes, _) = broadcast::channel(256);
        Ok(Self {
            supervisor,
            shared,
            reports,
            state: AcqState::Idle,
            status,
            changes,
            detector_name: "detector".into(),
            scan_name: None,
            user_cancel: Arc::new(AtomicBool::new(false)),
            started_refs,
        })
    }

    /// A handle that cancels this instrument's running (or next) acquisition.
    pub fn cancel_handle(&self) -> CancelHandle {
        CancelHandle {
            flag: Arc::clone(&self.user_cancel),
        }
    }

    /// The current actor refs (they change when an actor is restarted).
    pub fn refs(&self) -> ChildRefs {
        // A panic elsewhere while the lock was held leaves the refs themselves intact.
        let current = match self.shared.refs.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        current.unwrap_or_else(|| self.started_refs.clone())
    }

    /// Health of every actor.
    pub fn health(&self) -> BTreeMap<Role, Health> {
        self.shared
            .health
            .read()
            .map(|h| h.clone())
            .unwrap_or_default()
    }

    /// The acquisition state.
    pub fn state(&self) -> AcqState {
        self.state
    }

    /// Subscribes to status updates (state, progress, latest results).
    pub fn status(&self) -> watch::Receiver<InstrumentStatus> {
        self.status.subscribe()
    }

    /// Subscribes to state changes.
    pub fn state_changes(&self) -> broadcast::Receiver<StateChange> {
        self.changes.subscribe()
    }

    /// Stops every actor.
    pub async fn shutdown(self) {
        let _ = self
            .supervisor
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await;
    }

    /// Moves the acquisition state by `event` and tells observers: the broadcast first
    /// (every change, in order), then the status watch.
    fn transition(&mut self, event: AcqEvent) -> Result<(), IllegalTransition> {
        let to = self.state.next(event)?;
        let from = self.state;
        self.state = to;
        tracing::info!("acquisition state {from} --{event:?}--> {to}");
        let _ = self.changes.send(StateChange { from, event, to });
        self.status.send_modify(|s| s.state = to);
        Ok(())
    }

    /// Takes any failure reported by the supervisor since the last look.
    fn take_failure(&mut self) -> Option<(Role, String)> {
        while let Ok(r) = self.reports.try_recv() {
            if let SupervisorReport::Failed { role, error } = r {
                return Some((role, error));
            }
        }
        None
    }

    /// Maps a failed actor call: when the actor died, name it and its panic.
    async fn call_failed(&mut self, role: Role, step: &str, err: String) -> RunError {
        // The supervision event may trail the closed reply port by a moment.
        let deadline = Instant::now() + Duration::from_millis(500);
        loop {
            if let Some((r, e)) = self.take_failure() {
                return RunError::ActorFailed {
                    actor: r,
                    step: step.into(),
                    error: e,
                };
            }
            if Instant::now() >= deadline {
                return RunError::ActorFailed {
                    actor: role,
                    step: step.into(),
                    error: err,
                };
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Calls `actor` and waits at most `timeout` for its reply: a timeout becomes
    /// [`RunError::Device`] naming `role` and `step`; a dead actor becomes
    /// [`RunError::ActorFailed`] with its panic.
    async fn call<M, T>(
        &mut self,
        role: Role,
        actor: &ActorRef<M>,
        step: &str,
        timeout: Duration,
        make: impl FnOnce(RpcReplyPort<T>) -> M,
    ) -> Result<T, RunError>
    where
        M: ractor::Message,
        T: Send + 'static,
    {
        match actor.call(make, Some(timeout)).await {
            Ok(ractor::rpc::CallResult::Success(v)) => Ok(v),
            Ok(ractor::rpc::CallResult::Timeout) => Err(RunError::Device {
                step: step.into(),
                source: DeviceError::Timeout {
                    device: role.name().into(),
                    what: step.into(),
                    waited_s: timeout.as_secs_f64(),
                },
            }),
            Ok(ractor::rpc::CallResult::SenderError) => {
                Err(self.call_failed(role, step, "reply dropped".into()).await)
            }
            Err(e) => Err(self.call_failed(role, step, e.to_string()).await),
        }
    }

    /// The results of the last completed run (empty before the first).
    pub fn last_results(&self) -> Arc<LiveSnapshot> {
        self.status.borrow().snapshot.clone()
    }
}

/// The state one run's steps share. It outlives the steps: whatever a failed step had
/// reached is what the run record reports, and the flags tell the fault path what to undo.
#[derive(Default)]
struct RunContext {
    /// Frames expected: the requested scan's size, or the detector's once the scan shape
    /// is taken from it.
    expected: u64,
    /// Frames the pipeline processed: its live count while running, its final count after.
    frames_processed: u64,
    /// Decoded bytes per frame, known once armed; `bytes_processed` in the record.
    bytes_per_frame: u64,
    /// The detector was armed by this run and not yet disarmed.
    armed: bool,
    /// The scan engine was started by this run and not yet stopped.
    scan_started: bool,
    /// The running pipeline's cancel flag (a user cancel and the fault path set it).
    cancel: Option<Arc<AtomicBool>>,
    /// The detector's end of the acquisition, recounted with the pipeline's view.
    end: Option<AcquisitionEnd>,
    /// Cancelled runs: positions after the last frame that arrived.
    not_acquired: u64,
    /// Read-back metadata, filled step by step.
    metadata: RunMetadata,
    /// The recording written, once finished.
    output_file: Option<PathBuf>,
    /// The final merged results.
    results: Vec<UdfResults>,
    /// What triggers the detector (scan engine name, `soft`, `internal`…), for errors.
    trigger_source: String,
    /// When the detector was armed (passive mode: when the acquisition was announced):
    /// the data-taking time counts from here, not from the run's start.
    armed_at: Option<std::time::Instant>,
    /// A run that failed while running: its pipeline's result and the detector's end, for
    /// the fault path to finish the recording with the frames so far (see `salvage`).
    salvage: Option<Salvage>,
}

/// What the fault path needs to finish a failed run's recording.
struct Salvage {
    /// The pipeline's result (it was cancelled when the run failed).
    done: tokio::sync::oneshot::Receiver<Result<crate::processing::PipelineOutput, String>>,
    /// The detector side's end of the acquisition.
    end: crossbeam_channel::Receiver<stemflow_core::detector::AcquisitionEnd>,
}

/// Now, RFC 3339 UTC with microseconds.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}
