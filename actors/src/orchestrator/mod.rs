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

use crate::detector::DetectorMsg;
use crate::microscope::MicroscopeMsg;
use crate::processing::{LiveSnapshot, PipelineHandle, PipelineJob, ProcessingMsg};
use crate::recorder::{FinishArgs, RecorderMsg, Recording, RecordingRequest};
use crate::scan::ScanMsg;
use crate::supervisor::{
    ChildRefs, InstrumentSpec, InstrumentSupervisor, Role, SharedChildren, SupervisorArgs,
    SupervisorMsg, SupervisorReport, spawn_children,
};
use crossbeam_channel::Receiver;
use ractor::{Actor, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use stemflow_core::detector::{AcquisitionEnd, ArmMode, ArmedAcquisition, DetectorSettings};
use stemflow_core::devices::{DeviceError, MicroscopeSettings, ScanSettings};
use stemflow_core::frame::RawStack;
use stemflow_core::metadata::RunMetadata;
use stemflow_core::state::{AcqEvent, AcqState, Health, IllegalTransition};
use stemflow_core::validity::FrameStatus;
use stemflow_core::{DType, NavShape, SigShape};
use tokio::sync::{broadcast, mpsc, watch};

/// What a pipeline builder gets for one acquisition.
pub struct PipelineInputs {
    /// Raw stacks from the detector's receiver (closed after the last frame).
    pub stacks: Receiver<RawStack>,
    /// Scan grid.
    pub nav_shape: NavShape,
    /// Frame shape.
    pub sig_shape: SigShape,
    /// Pixel type.
    pub dtype: DType,
    /// The recording to write raw frames into, if recording.
    pub recording: Option<Box<dyn Recording>>,
}

/// Builds the processing pipeline for an acquisition (which UDFs, which sink).
pub type PipelineBuilder = Arc<dyn Fn(PipelineInputs) -> PipelineJob + Send + Sync>;

/// One acquisition to run.
#[derive(Clone)]
pub struct AcquisitionRequest {
    /// Active (we arm) or passive (someone else arms).
    pub mode: ArmMode,
    /// Detector settings (frames = nav_shape.len()).
    pub detector: DetectorSettings,
    /// Scan to run on our scan engine, if we drive one (the trigger source).
    pub scan: Option<ScanSettings>,
    /// Microscope settings to apply first, if any.
    pub microscope: Option<MicroscopeSettings>,
    /// How long to wait for the detector to confirm it is armed.
    pub arm_deadline: Duration,
    /// Margin added to the expected acquisition time for the overall deadline.
    pub deadline_margin: Duration,
    /// HDF5 file to record into, if any.
    pub output: Option<PathBuf>,
    /// Builds the processing pipeline.
    pub pipeline: PipelineBuilder,
    /// Acquisition mode label stored in the metadata (`simulated`, `active`, `passive`).
    pub label: String,
    /// Take the scan shape from the detector once armed (passive mode without a given
    /// shape): the announced nav shape, else 1 × frames.
    pub nav_from_detector: bool,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// Every expected frame was received.
    Completed,
    /// The run ended with lost or damaged frames (counted in the record).
    CompletedWithLoss,
    /// The run was cancelled.
    Cancelled,
    /// The run failed; the record's `error` says why.
    Fault,
}

/// The record of one run, stored in the recording and printed at the end.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    /// Start time, RFC 3339 UTC.
    pub start_time: String,
    /// Stop time, RFC 3339 UTC.
    pub stop_time: String,
    /// Wall time, s.
    pub duration_s: f64,
    /// How it ended.
    pub exit_status: ExitStatus,
    /// The error, if it failed.
    pub error: Option<String>,
    /// Frames expected.
    pub frames_expected: u64,
    /// Frames received intact.
    pub frames_received: u64,
    /// Frames lost: never received, though the detector produced them (or, in a
    /// cancelled run, missing before the last frame that arrived).
    pub frames_lost: u64,
    /// In a cancelled run: scan positions after the last frame that arrived, never
    /// acquired because the run was stopped (not lost; validity code 3).
    #[serde(default)]
    pub frames_not_acquired: u64,
    /// Frames damaged.
    pub frames_damaged: u64,
    /// Frames processed by the pipeline.
    pub frames_processed: u64,
    /// Bytes of decoded frame data processed.
    pub bytes_processed: u64,
    /// Why the detector side ended.
    pub end_reason: String,
    /// Read-back metadata.
    pub metadata: RunMetadata,
    /// The recording written, if any.
    pub output_file: Option<PathBuf>,
}

/// Errors of a run; each names the device or actor, what was expected and what was observed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A device call failed.
    #[error("{step}: {source}")]
    Device {
        /// The step (e.g. `configure detector`).
        step: String,
        /// The device's error.
        #[source]
        source: DeviceError,
    },
    /// A supervised actor failed during the run.
    #[error("actor `{actor}` failed during {step}: {error}")]
    ActorFailed {
        /// The actor.
        actor: Role,
        /// The step under way.
        step: String,
        /// Its panic message or error.
        error: String,
    },
    /// Frames did not arrive in time.
    #[error(
        "deadline of {waited_s:.1} s passed: detector `{detector}` received {received} of {expected} frames triggered by `{trigger_source}`"
    )]
    Deadline {
        /// Detector name.
        detector: String,
        /// What triggers it (scan engine name, `soft trigger`, `internal`).
        trigger_source: String,
        /// Frames expected.
        expected: u64,
        /// Frames received.
        received: u64,
        /// Seconds waited.
        waited_s: f64,
    },
    /// The detector side ended the acquisition with an error.
    #[error(
        "detector `{detector}`: {error} ({received} of {expected} frames received, triggered by `{trigger_source}`)"
    )]
    Detector {
        /// Detector name.
        detector: String,
        /// What triggers it.
        trigger_source: String,
        /// The receiver's error.
        error: String,
        /// Frames expected.
        expected: u64,
        /// Frames received.
        received: u64,
    },
    /// The pipeline failed.
    #[error("processing pipeline: {0}")]
    Pipeline(String),
    /// The recording failed.
    #[error("recording: {0}")]
    Recording(String),
    /// The state machine refused a transition.
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
}

/// A failed run: the error and the record written for it.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct RunFailure {
    /// What went wrong.
    #[source]
    pub error: RunError,
    /// The run's record (exit status Fault).
    pub record: Box<RunRecord>,
}

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
    supervisor: ActorRef<SupervisorMsg>,
    shared: Arc<SharedChildren>,
    reports: mpsc::UnboundedReceiver<SupervisorReport>,
    state: AcqState,
    status: watch::Sender<InstrumentStatus>,
    changes: broadcast::Sender<StateChange>,
    detector_name: String,
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

    /// Runs one acquisition from Idle back to Idle.
    ///
    /// # Errors
    /// [`RunFailure`] with the error (naming device/actor, expected and observed) and the
    /// run's record; the instrument is back in Idle (after Fault → Resetting) either way.
    pub async fn run_acquisition(
        &mut self,
        req: AcquisitionRequest,
    ) -> Result<RunRecord, RunFailure> {
        let started = Instant::now();
        let start_time = now_rfc3339();
        let mut ctx = RunContext::default();
        // Stale reports from between runs (e.g. a restart finished) are not this run's.
        while self.reports.try_recv().is_ok() {}
        // The actors this run starts with: one that dies is replaced by a new one.
        let refs_at_start = self.refs();
        let result = self.run_inner(&req, &mut ctx).await;
        // A cancel request is consumed by the run it ended (or that failed meanwhile).
        self.user_cancel.store(false, Ordering::SeqCst);
        let mut record = RunRecord {
            start_time,
            stop_time: now_rfc3339(),
            duration_s: started.elapsed().as_secs_f64(),
            exit_status: ExitStatus::Completed,
            error: None,
            frames_expected: ctx.expected,
            frames_received: ctx.end.as_ref().map_or(0, |e| e.received),
            frames_lost: ctx.end.as_ref().map_or(0, |e| e.lost),
            frames_not_acquired: ctx.not_acquired,
            frames_damaged: ctx.end.as_ref().map_or(0, |e| e.damaged),
            frames_processed: ctx.frames_processed,
            bytes_processed: ctx.frames_processed * ctx.bytes_per_frame,
            end_reason: ctx
                .end
                .as_ref()
                .map(|e| e.reason.clone())
                .unwrap_or_default(),
            metadata: ctx.metadata.clone(),
            output_file: ctx.output_file.clone(),
        };
        match result {
            Ok(status) => {
                record.exit_status = status;
                Ok(record)
            }
            Err(error) => {
                // An actor that died must be back (a new actor) before the next run.
                let died = match &error {
                    RunError::ActorFailed { actor, .. } => {
                        refs_at_start.id_of(*actor).map(|id| (*actor, id))
                    }
                    RunError::Pipeline(e)
                        if e.starts_with(crate::processing::PIPELINE_PANICKED) =>
                    {
                        refs_at_start
                            .id_of(Role::Processing)
                            .map(|id| (Role::Processing, id))
                    }
                    _ => None,
                };
                self.recover(&mut ctx, died).await;
                record.exit_status = ExitStatus::Fault;
                record.error = Some(error.to_string());
                record.stop_time = now_rfc3339();
                record.duration_s = started.elapsed().as_secs_f64();
                Err(RunFailure {
                    error,
                    record: Box::new(record),
                })
            }
        }
    }

    async fn run_inner(
        &mut self,
        req: &AcquisitionRequest,
        ctx: &mut RunContext,
    ) -> Result<ExitStatus, RunError> {
        let refs = self.refs();
        let mut nav = req.detector.nav_shape;
        ctx.expected = nav.len() as u64;
        if self.user_cancel.load(Ordering::SeqCst) {
            // Cancelled before anything moved: nothing to stop, nothing recorded.
            return Ok(ExitStatus::Cancelled);
        }
        ctx.metadata = RunMetadata {
            mode: req.label.clone(),
            nav_shape: Some(nav),
            software_version: stemflow_core::SOFTWARE_VERSION.to_string(),
            start_time: now_rfc3339(),
            ..RunMetadata::default()
        };
        self.transition(AcqEvent::Configure)?;
        // The detector's own name, in every error and in the metadata (passive mode never
        // configures it).
        self.detector_name = self
            .call(
                Role::Detector,
                &refs.detector,
                "detector name",
                CALL_MARGIN,
                DetectorMsg::Name,
            )
            .await?;
        ctx.metadata.detector = self.detector_name.clone();

        // Configuring: microscope → scan engine → detector, each read back.
        if let Some(m) = &refs.microscope {
            let state = match &req.microscope {
                Some(s) => {
                    let s = s.clone();
                    self.call(
                        Role::Microscope,
                        m,
                        "apply microscope settings",
                        CALL_MARGIN,
                        |r| MicroscopeMsg::Apply(s, r),
                    )
                    .await?
                }
                None => {
                    self.call(
                        Role::Microscope,
                        m,
                        "read microscope state",
                        CALL_MARGIN,
                        MicroscopeMsg::Read,
                    )
                    .await?
                }
            }
            .map_err(|source| RunError::Device {
                step: "microscope".into(),
                source,
            })?;
            ctx.metadata.microscope = Some(state);
        }
        if let (Some(scan_ref), Some(scan)) = (&refs.scan, &req.scan) {
            let s = scan.clone();
            let readback = self
                .call(
                    Role::ScanEngine,
                    scan_ref,
                    "configure scan engine",
                    CALL_MARGIN,
                    |r| ScanMsg::Configure(s, r),
                )
                .await?
                .map_err(|source| RunError::Device {
                    step: "configure scan engine".into(),
                    source,
                })?;
            let name = self
                .call(
                    Role::ScanEngine,
                    scan_ref,
                    "scan engine name",
                    CALL_MARGIN,
                    ScanMsg::Name,
                )
                .await?;
            self.scan_name = Some(name);
            ctx.metadata.scan = Some(readback);
        }
        let trigger_source = match (&req.scan, req.detector.trigger) {
            (Some(_), stemflow_core::detector::DetectorTrigger::ExternalRising) => format!(
                "scan engine `{}` (trigger line)",
                self.scan_name.as_deref().unwrap_or("scan engine")
            ),
            (_, t) => format!("{t:?}").to_lowercase(),
        };
        ctx.trigger_source = trigger_source.clone();
        if req.mode == ArmMode::Active {
            let s = req.detector.clone();
            let readback = self
                .call(
                    Role::Detector,
                    &refs.detector,
                    "configure detector",
                    CALL_MARGIN,
                    |r| DetectorMsg::Configure(s, r),
                )
                .await?
                .map_err(|source| RunError::Device {
                    step: "configure detector".into(),
                    source,
                })?;
            ctx.metadata.detector_settings = readback;
        }

        // Arm, confirmed by the detector.
        let mode = req.mode;
        let arm_deadline = req.arm_deadline;
        let armed: ArmedAcquisition = self
            .call(
                Role::Detector,
                &refs.detector,
                "arm detector",
                arm_deadline + CALL_MARGIN,
                |r| DetectorMsg::Arm(mode, arm_deadline, r),
            )
            .await?
            .map_err(|source| RunError::Device {
                step: "arm detector".into(),
                source,
            })?;
        ctx.armed = true;
        ctx.metadata.detector_header = armed.header.clone();
        ctx.metadata.sig_shape = Some(armed.sig_shape);
        ctx.metadata.dtype = Some(armed.dtype);
        if req.nav_from_detector {
            nav = match armed.nav_shape {
                Some(n) => n,
                None if armed.expected_frames > 0 => {
                    NavShape::new(1, armed.expected_frames as usize)
                }
                None => {
                    return Err(RunError::Detector {
                        detector: self.detector_name.clone(),
                        trigger_source: ctx.trigger_source.clone(),
                        error: "continuous acquisition (0 frames) needs an explicit scan shape"
                            .into(),
                        expected: 0,
                        received: 0,
                    });
                }
            };
            ctx.expected = nav.len() as u64;
            ctx.metadata.nav_shape = Some(nav);
        } else if armed.expected_frames != 0 && armed.expected_frames != ctx.expected {
            tracing::warn!(
                "detector announces {} frames, scan has {}; using the detector's count",
                armed.expected_frames,
                ctx.expected
            );
        }
        ctx.bytes_per_frame = (armed.sig_shape.len() * armed.dtype.size()) as u64;
        self.status.send_modify(|s| {
            s.frames_expected = ctx.expected;
            s.frames_processed = 0;
            s.bytes_per_frame = ctx.bytes_per_frame;
            s.frames_lost = 0;
            s.snapshot = Arc::new(LiveSnapshot::default());
        });
        self.transition(AcqEvent::ArmConfirmed)?;

        // Recorder and pipeline ready before the first trigger.
        let recording = match &req.output {
            Some(path) => {
                let rr = RecordingRequest {
                    path: path.clone(),
                    nav_shape: nav,
                    sig_shape: armed.sig_shape,
                    dtype: armed.dtype,
                };
                let rec = self
                    .call(
                        Role::Recorder,
                        &refs.recorder,
                        "open recording",
                        CALL_MARGIN,
                        |r| RecorderMsg::Open(rr, r),
                    )
                    .await?
                    .map_err(RunError::Recording)?;
                Some(rec)
            }
            None => None,
        };
        let job = (req.pipeline)(PipelineInputs {
            stacks: armed.stacks.clone(),
            nav_shape: nav,
            sig_shape: armed.sig_shape,
            dtype: armed.dtype,
            recording,
        });
        let handle: PipelineHandle = self
            .call(
                Role::Processing,
                &refs.processing,
                "start processing",
                CALL_MARGIN,
                |r| ProcessingMsg::Start(job, r),
            )
            .await?;
        ctx.cancel = Some(Arc::clone(&handle.cancel));
        let end_rx = armed.end.clone();
        drop(armed);

        // Running: start the trigger source.
        if let (Some(scan_ref), Some(_)) = (&refs.scan, &req.scan) {
            self.call(
                Role::ScanEngine,
                scan_ref,
                "start scan",
                CALL_MARGIN,
                ScanMsg::Start,
            )
            .await?
            .map_err(|source| RunError::Device {
                step: "start scan".into(),
                source,
            })?;
            ctx.scan_started = true;
        } else if req.detector.trigger == stemflow_core::detector::DetectorTrigger::Soft
            && req.mode == ArmMode::Active
        {
            self.call(
                Role::Detector,
                &refs.detector,
                "soft trigger",
                CALL_MARGIN,
                DetectorMsg::SoftTrigger,
            )
            .await?
            .map_err(|source| RunError::Device {
                step: "soft trigger".into(),
                source,
            })?;
        }
        self.transition(AcqEvent::Start)?;

        // Wait for the pipeline to drain the acquisition, watching for failures.
        let expected_s = req
            .scan
            .as_ref()
            .map(|s| s.duration_s())
            .unwrap_or(ctx.expected as f64 * req.detector.frame_time_s);
        let deadline = Duration::from_secs_f64(expected_s * 2.0) + req.deadline_margin;
        let t0 = Instant::now();
        let mut done = handle.done;
        let snapshots = handle.snapshots;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut last_scan_poll = Instant::now();
        let output = loop {
            tokio::select! {
                out = &mut done => {
                    break out.map_err(|_| RunError::Pipeline("pipeline ended without a result".into()))?;
                }
                report = self.reports.recv() => {
                    if let Some(SupervisorReport::Failed { role, error }) = report {
                        return Err(RunError::ActorFailed { actor: role, step: "running".into(), error });
                    }
                }
                _ = tick.tick() => {
                    // A user cancel: the pipeline stops within its poll period and returns
                    // the results so far; the devices are stopped below.
                    if self.user_cancel.load(Ordering::SeqCst)
                        && let Some(c) = &ctx.cancel
                    {
                        c.store(true, Ordering::SeqCst);
                    }
                    let snap = snapshots.borrow().clone();
                    ctx.frames_processed = snap.frames_processed;
                    self.status.send_modify(|s| {
                        s.frames_processed = snap.frames_processed;
                        s.snapshot = snap;
                    });
                    if t0.elapsed() > deadline {
                        return Err(RunError::Deadline {
                            detector: self.detector_name.clone(),
                            trigger_source: ctx.trigger_source.clone(),
                            expected: ctx.expected,
                            received: ctx.frames_processed,
                            waited_s: t0.elapsed().as_secs_f64(),
                        });
                    }
                    // A scan engine that stops answering mid-scan is a fault, not a hang.
                    if ctx.scan_started && last_scan_poll.elapsed() > Duration::from_millis(500) {
                        last_scan_poll = Instant::now();
                        if let Some(scan_ref) = &refs.scan {
                            self.call(Role::ScanEngine, scan_ref, "scan status", CALL_MARGIN, ScanMsg::Status)
                                .await?
                                .map_err(|source| RunError::Device { step: "scan status".into(), source })?;
                        }
                    }
                }
            }
        };
        let output = output.map_err(RunError::Pipeline)?;
        ctx.frames_processed = output.frames_processed;
        self.status
            .send_modify(|s| s.frames_processed = output.frames_processed);
        if output.cancelled {
            // The receiver ends the acquisition only once the frames stop: stop the scan and
            // disarm the detector first (reverse arm order), then collect its end.
            self.stop_devices(ctx).await?;
        }
        let end = tokio::task::spawn_blocking(move || end_rx.recv_timeout(Duration::from_secs(10)))
            .await
            .ok()
            .and_then(|r| r.ok());
        let Some(mut end) = end else {
            return Err(RunError::Detector {
                detector: self.detector_name.clone(),
                trigger_source: ctx.trigger_source.clone(),
                error: "receiver did not report the end of the acquisition within 10 s".into(),
                expected: ctx.expected,
                received: output.frames_processed,
            });
        };
        for &i in &output.damaged {
            if end.validity.status(i as usize) == FrameStatus::Received {
                end.received = end.received.saturating_sub(1);
                end.damaged += 1;
            }
            end.validity.mark(i, FrameStatus::Damaged);
        }
        if output.cancelled {
            // Frames received but dropped unprocessed by the cancelled pipeline are in no
            // result and not recorded: not received.
            if let Some(from) = output.unprocessed_from {
                for i in from..end.validity.len() as u64 {
                    if end.validity.status(i as usize) == FrameStatus::Received {
                        end.validity.mark(i, FrameStatus::Missing);
                        end.received = end.received.saturating_sub(1);
                        end.lost += 1;
                    }
                }
            }
            // Stopped before the scan ended: the positions after the last frame that arrived
            // were never acquired, so they are not lost; gaps before it are.
            ctx.not_acquired = end.validity.mark_not_acquired_after_last() as u64;
            end.lost = end.lost.saturating_sub(ctx.not_acquired);
        }
        ctx.end = Some(end.clone());
        let lost_now = end.lost + end.damaged;
        self.status.send_modify(|s| s.frames_lost = lost_now);

        // Finishing: reverse order.
        if output.cancelled {
            self.transition(AcqEvent::Stop)?;
        } else {
            self.transition(AcqEvent::Complete)?;
        }
        self.stop_devices(ctx).await?;
        ctx.metadata.stop_time = now_rfc3339();
        let status = if output.cancelled {
            ExitStatus::Cancelled
        } else if end.lost + end.damaged > 0 {
            ExitStatus::CompletedWithLoss
        } else {
            ExitStatus::Completed
        };
        if let Some(rec) = output.recording {
            let run_record = serde_json::json!({
                "exit_status": status,
                "frames_expected": ctx.expected,
                "frames_received": end.received,
                "frames_lost": end.lost,
                "frames_not_acquired": ctx.not_acquired,
                "frames_damaged": end.damaged,
                "frames_processed": output.frames_processed,
                "end_reason": end.reason,
                "error": end.error,
            });
            let args = FinishArgs {
                recording: rec,
                results: output.results.clone(),
                validity: end.validity.clone(),
                metadata: ctx.metadata.clone(),
                run_record,
            };
            let path = self
                .call(
                    Role::Recorder,
                    &refs.recorder,
                    "finish recording",
                    CALL_MARGIN,
                    |r| RecorderMsg::Finish(Box::new(args), r),
                )
                .await?
                .map_err(RunError::Recording)?;
            ctx.output_file = Some(path);
        }
        ctx.results = output.results;
        // The final merged results, not whichever live snapshot arrived last.
        let final_snapshot = Arc::new(LiveSnapshot {
            frames_processed: output.frames_processed,
            results: ctx.results.clone(),
        });
        self.status.send_modify(|s| s.snapshot = final_snapshot);
        // Frames were recorded and counted; an acquisition without a single frame is still a
        // fault (e.g. a trigger cable that is not connected), whatever ended it.
        if !output.cancelled && ctx.expected > 0 && end.received == 0 {
            let error = end.error.clone().unwrap_or_else(|| {
                format!(
                    "no frame arrived before the receiver's deadline (ended by {}); is the \
                     trigger reaching the detector?",
                    end.reason
                )
            });
            return Err(RunError::Detector {
                detector: self.detector_name.clone(),
                trigger_source: ctx.trigger_source.clone(),
                error,
                expected: ctx.expected,
                received: end.received,
            });
        }
        if let Some(err) = &end.error {
            if ctx.expected == 0 {
                return Err(RunError::Detector {
                    detector: self.detector_name.clone(),
                    trigger_source: ctx.trigger_source.clone(),
                    error: err.clone(),
                    expected: ctx.expected,
                    received: end.received,
                });
            }
            tracing::warn!("acquisition ended early: {err}");
        }
        self.transition(AcqEvent::Finished)?;
        Ok(status)
    }

    /// Stops the scan and disarms the detector (reverse arm order).
    async fn stop_devices(&mut self, ctx: &mut RunContext) -> Result<(), RunError> {
        let refs = self.refs();
        if ctx.scan_started {
            if let Some(scan_ref) = &refs.scan {
                self.call(
                    Role::ScanEngine,
                    scan_ref,
                    "stop scan",
                    CALL_MARGIN,
                    ScanMsg::Stop,
                )
                .await?
                .map_err(|source| RunError::Device {
                    step: "stop scan".into(),
                    source,
                })?;
            }
            ctx.scan_started = false;
        }
        if ctx.armed {
            self.call(
                Role::Detector,
                &refs.detector,
                "disarm detector",
                CALL_MARGIN,
                DetectorMsg::Disarm,
            )
            .await?
            .map_err(|source| RunError::Device {
                step: "disarm detector".into(),
                source,
            })?;
            ctx.armed = false;
        }
        Ok(())
    }

    /// After a failure: cancel, stop, disarm (best effort), then Fault → Resetting → Idle,
    /// waiting for the supervisor to restart a failed actor.
    async fn recover(&mut self, ctx: &mut RunContext, died: Option<(Role, ractor::ActorId)>) {
        if let Some(c) = &ctx.cancel {
            c.store(true, Ordering::SeqCst);
        }
        let refs = self.refs();
        if let Some(scan_ref) = &refs.scan {
            let _ = scan_ref
                .call(ScanMsg::Stop, Some(Duration::from_secs(5)))
                .await;
        }
        let _ = refs
            .detector
            .call(DetectorMsg::Disarm, Some(Duration::from_secs(5)))
            .await;
        let _ = self.transition(AcqEvent::Failed);
        let _ = self.transition(AcqEvent::Reset);
        // Wait until every actor is healthy again (a restart in flight), with a deadline.
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let unhealthy = self
                .health()
                .values()
                .any(|h| !matches!(h, Health::Ready | Health::Busy));
            // The supervisor may not have seen the death yet when the run learns of it.
            let not_restarted =
                died.is_some_and(|(role, old)| self.refs().id_of(role) == Some(old));
            if !unhealthy && !not_restarted {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        while self.reports.try_recv().is_ok() {}
        let _ = self.transition(AcqEvent::ResetDone);
    }

    /// The results of the last completed run (empty before the first).
    pub fn last_results(&self) -> Arc<LiveSnapshot> {
        self.status.borrow().snapshot.clone()
    }
}

#[derive(Default)]
struct RunContext {
    expected: u64,
    frames_processed: u64,
    bytes_per_frame: u64,
    armed: bool,
    scan_started: bool,
    cancel: Option<Arc<std::sync::atomic::AtomicBool>>,
    end: Option<AcquisitionEnd>,
    /// Cancelled runs: positions after the last frame that arrived.
    not_acquired: u64,
    metadata: RunMetadata,
    output_file: Option<PathBuf>,
    results: Vec<stemflow_core::result::UdfResults>,
    trigger_source: String,
}

/// Now, RFC 3339 UTC with microseconds.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}
