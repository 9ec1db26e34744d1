//! The steps of one run, one method each, in the order `Instrument::run_steps` calls
//! them:
//!
//! | step               | state after     | hands on                                |
//! |--------------------|-----------------|-----------------------------------------|
//! | `configure`        | Configuring     | read-back metadata in the context       |
//! | `arm`              | Armed           | [`ArmedRun`]: the channels, the shape   |
//! | `start_processing` | Armed           | [`StartedRun`]: pipeline, end channel   |
//! | `trigger`          | Running         | `scan_started` in the context           |
//! | `monitor`          | Running         | the pipeline's output                   |
//! | `reconcile_end`    | Running         | the recounted [`AcquisitionEnd`]        |
//! | `finish`           | Idle            | the exit status                         |
//!
//! A step that fails returns its error at once: what it owns is dropped with it, and the
//! caller's fault path (`recover`) undoes what the context says was started.

use super::accounting;
use super::record::{ExitStatus, RunError};
use super::request::{AcquisitionRequest, PipelineInputs};
use super::{CALL_MARGIN, Instrument, RunContext, now_rfc3339};
use crate::detector::DetectorMsg;
use crate::microscope::MicroscopeMsg;
use crate::processing::{LiveSnapshot, PipelineHandle, PipelineOutput, ProcessingMsg};
use crate::recorder::{FinishArgs, RecorderMsg, RecordingRequest};
use crate::scan::ScanMsg;
use crate::supervisor::{ChildRefs, Role, SupervisorReport};
use crossbeam_channel::Receiver;
use ractor::ActorRef;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use stemflow_core::NavShape;
use stemflow_core::detector::{AcquisitionEnd, ArmMode, ArmedAcquisition, DetectorTrigger};
use stemflow_core::devices::ScanSettings;
use stemflow_core::metadata::{MicroscopeState, RunMetadata};
use stemflow_core::state::AcqEvent;
use tokio::sync::watch;

/// What `arm` hands to `start_processing`: the confirmed acquisition and the scan shape
/// the run will use (the detector's, when the request takes it from there).
pub(super) struct ArmedRun {
    /// The armed acquisition: its frame-stack and end channels.
    acquisition: ArmedAcquisition,
    /// The scan shape after reconciling the request with the detector.
    nav: NavShape,
}

/// What `start_processing` hands on: the running pipeline (to `monitor`) and the channel
/// the detector's receiver reports the end of the acquisition on (to `reconcile_end`).
pub(super) struct StartedRun {
    /// The running pipeline.
    pub(super) pipeline: PipelineHandle,
    /// Receives the detector side's [`AcquisitionEnd`] once its stack channel is closed.
    pub(super) end: Receiver<AcquisitionEnd>,
}

/// How often the monitor looks at the pipeline's progress, the deadline and the cancel
/// flag; a user cancel is seen within this time.
const MONITOR_TICK: Duration = Duration::from_millis(100);
/// How often a running scan engine is asked for its status: one that stops answering
/// mid-scan is a fault, not a hang.
const SCAN_POLL: Duration = Duration::from_millis(500);
/// How long to wait for the detector's receiver to report the end once the pipeline is
/// done: the receiver ends the acquisition on the last frame or on its own deadline.
const END_REPORT_DEADLINE: Duration = Duration::from_secs(10);

/// The monitor's clock: when the run started running, its deadline, the last scan poll.
struct MonitorClock {
    /// When monitoring began: the run's deadline counts from here.
    started: Instant,
    /// The run's deadline ([`run_deadline`]).
    deadline: Duration,
    /// When the scan engine was last asked for its status.
    last_scan_poll: Instant,
    /// When the pipeline's processed count last grew, and that count.
    last_progress: Instant,
    last_count: u64,
    /// How long a run past its deadline may go without progress before it fails.
    stall: Duration,
}

/// The shortest stall accepted past the deadline, whatever the request's margin.
const MIN_STALL: Duration = Duration::from_secs(1);

impl Instrument {
    /// Idle → Configuring: asks the detector's name, then applies and reads back the
    /// microscope, the scan engine and (active mode) the detector, in that order, into the
    /// run's metadata.
    ///
    /// On failure nothing has been started; the fault path disarms anyway, as a configure
    /// call that timed out may have reached the detector.
    pub(super) async fn configure(
        &mut self,
        req: &AcquisitionRequest,
        refs: &ChildRefs,
        ctx: &mut RunContext,
    ) -> Result<(), RunError> {
        ctx.metadata = RunMetadata {
            mode: req.label.clone(),
            nav_shape: Some(req.detector.nav_shape),
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
            ctx.metadata.microscope = Some(self.configure_microscope(req, m).await?);
        }
        if let (Some(scan_ref), Some(scan)) = (&refs.scan, &req.scan) {
            ctx.metadata.scan = Some(self.configure_scan(scan_ref, scan).await?);
        }
        ctx.trigger_source = self.trigger_source(req);
        if req.mode == ArmMode::Active {
            ctx.metadata.detector_settings = self.configure_detector(req, refs).await?;
        }
        ctx.metadata.calibration = Some(stemflow_core::metadata::Calibration::derive(
            &ctx.metadata,
            &req.calibration,
        ));
        Ok(())
    }

    /// Applies the requested microscope settings, or only reads the state back when none
    /// are requested: the metadata records the microscope either way.
    async fn configure_microscope(
        &mut self,
        req: &AcquisitionRequest,
        m: &ActorRef<MicroscopeMsg>,
    ) -> Result<MicroscopeState, RunError> {
        match &req.microscope {
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
        })
    }

    /// Configures the scan engine and asks its name (for the trigger source); returns the
    /// settings read back.
    async fn configure_scan(
        &mut self,
        scan_ref: &ActorRef<ScanMsg>,
        scan: &ScanSettings,
    ) -> Result<ScanSettings, RunError> {
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
        Ok(readback)
    }

    /// What triggers the detector, in words, for errors about frames that did not come.
    fn trigger_source(&self, req: &AcquisitionRequest) -> String {
        match (&req.scan, req.detector.trigger) {
            (Some(_), DetectorTrigger::ExternalRising) => format!(
                "scan engine `{}` (trigger line)",
                self.scan_name.as_deref().unwrap_or("scan engine")
            ),
            (_, t) => format!("{t:?}").to_lowercase(),
        }
    }

    /// Configures the detector (active mode); returns its settings read back.
    async fn configure_detector(
        &mut self,
        req: &AcquisitionRequest,
        refs: &ChildRefs,
    ) -> Result<BTreeMap<String, String>, RunError> {
        let s = req.detector.clone();
        self.call(
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
        })
    }

    /// Configuring → Armed: arms the detector (or waits for someone else to, in passive
    /// mode) until it confirms, reconciles the scan shape with what it announces, and
    /// resets the observers' progress for the new run.
    ///
    /// The arm call waits the request's arm deadline plus [`CALL_MARGIN`]. Once it
    /// returns, `ctx.armed` is set, so every later exit disarms. On failure after that
    /// (no scan shape for a continuous acquisition) the armed acquisition's channels are
    /// dropped here.
    pub(super) async fn arm(
        &mut self,
        req: &AcquisitionRequest,
        refs: &ChildRefs,
        ctx: &mut RunContext,
    ) -> Result<ArmedRun, RunError> {
        let mode = req.mode;
        let arm_deadline = req.arm_deadline;
        if mode == ArmMode::Passive {
            // The receiver is connected (since the instrument started) and keeps what
            // arrives: the hook may start the acquisition before the arm waits for it.
            call_ready_hook(req, req.detector.nav_shape).await?;
        }
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
        let nav = self.reconcile_scan_shape(req, ctx, &armed)?;
        ctx.bytes_per_frame = (armed.sig_shape.len() * armed.dtype.size()) as u64;
        self.status.send_modify(|s| {
            s.frames_expected = ctx.expected;
            s.frames_processed = 0;
            s.bytes_per_frame = ctx.bytes_per_frame;
            s.frames_lost = 0;
            s.snapshot = Arc::new(LiveSnapshot::default());
        });
        self.transition(AcqEvent::ArmConfirmed)?;
        Ok(ArmedRun {
            acquisition: armed,
            nav,
        })
    }

    /// The scan shape of the run. Passive runs without a given shape take the detector's
    /// (its announced nav shape, else 1 × its frame count) and expect that many frames;
    /// otherwise the request's shape stands and a detector that announces another frame
    /// count is only warned about.
    fn reconcile_scan_shape(
        &self,
        req: &AcquisitionRequest,
        ctx: &mut RunContext,
        armed: &ArmedAcquisition,
    ) -> Result<NavShape, RunError> {
        if !req.nav_from_detector {
            if armed.expected_frames != 0 && armed.expected_frames != ctx.expected {
                tracing::warn!(
                    "detector announces {} frames, scan has {}; using the detector's count",
                    armed.expected_frames,
                    ctx.expected
                );
            }
            return Ok(req.detector.nav_shape);
        }
        let nav = match armed.nav_shape {
            Some(n) => n,
            None if armed.expected_frames > 0 => NavShape::new(1, armed.expected_frames as usize),
            None => {
                return Err(RunError::Detector {
                    detector: self.detector_name.clone(),
                    trigger_source: ctx.trigger_source.clone(),
                    error: "continuous acquisition (0 frames) needs an explicit scan shape".into(),
                    expected: 0,
                    received: 0,
                });
            }
        };
        ctx.expected = nav.len() as u64;
        ctx.metadata.nav_shape = Some(nav);
        Ok(nav)
    }

    /// Armed, before the first trigger: opens the recording (if the request records) and
    /// starts the pipeline on the armed acquisition's frame stacks, so that no frame
    /// arrives before something consumes it.
    ///
    /// Once the pipeline runs, its cancel flag is in `ctx.cancel` for a user cancel and
    /// the fault path. On failure the recording, unfinished, and the channels are dropped
    /// here.
    pub(super) async fn start_processing(
        &mut self,
        req: &AcquisitionRequest,
        refs: &ChildRefs,
        ctx: &mut RunContext,
        armed: ArmedRun,
    ) -> Result<StartedRun, RunError> {
        let ArmedRun {
            acquisition: armed,
            nav,
        } = armed;
        let recording = match &req.output {
            Some(path) => {
                let rr = RecordingRequest {
                    path: path.clone(),
                    nav_shape: nav,
                    sig_shape: armed.sig_shape,
                    dtype: armed.dtype,
                    metadata: ctx.metadata.clone(),
                };
                let rec = self
                    .call(
                        Role::Recorder,
                        &refs.recorder,
                        "open recording",
                        CALL_MARGIN,
                        |r| RecorderMsg::Open(Box::new(rr), r),
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
        let end = armed.end.clone();
        // From here the pipeline holds the only receiver of the stacks: when it stops
        // taking them (a cancel), the detector's receiver sees that at once.
        drop(armed);
        Ok(StartedRun {
            pipeline: handle,
            end,
        })
    }

    /// Armed → Running: starts the trigger source, the scan engine when the run drives
    /// one, else a soft trigger when an active detector is soft-triggered (an internal or
    /// external trigger needs nothing from us).
    ///
    /// `ctx.scan_started` is set once the scan engine has started, so every later exit
    /// stops it.
    pub(super) async fn trigger(
        &mut self,
        req: &AcquisitionRequest,
        refs: &ChildRefs,
        ctx: &mut RunContext,
    ) -> Result<(), RunError> {
        if req.mode == ArmMode::Active {
            let nav = ctx.metadata.nav_shape.unwrap_or(req.detector.nav_shape);
            call_ready_hook(req, nav).await?;
        }
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
        } else if req.detector.trigger == DetectorTrigger::Soft && req.mode == ArmMode::Active {
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
        Ok(())
    }

    /// Running: waits for the pipeline to drain the acquisition and returns its output.
    /// Meanwhile, every [`MONITOR_TICK`], it publishes progress, passes a user cancel on
    /// to the pipeline, enforces the run's deadline ([`run_deadline`]) and polls a running
    /// scan engine; a failure the supervisor reports ends the run at once.
    pub(super) async fn monitor(
        &mut self,
        req: &AcquisitionRequest,
        refs: &ChildRefs,
        ctx: &mut RunContext,
        done: &mut tokio::sync::oneshot::Receiver<Result<PipelineOutput, String>>,
        snapshots: watch::Receiver<Arc<LiveSnapshot>>,
    ) -> Result<PipelineOutput, RunError> {
        let mut clock = MonitorClock {
            deadline: run_deadline(req, ctx.expected),
            started: Instant::now(),
            last_scan_poll: Instant::now(),
            last_progress: Instant::now(),
            last_count: 0,
            stall: req.deadline_margin.max(MIN_STALL),
        };
        let mut tick = tokio::time::interval(MONITOR_TICK);
        let output = loop {
            tokio::select! {
                out = &mut *done => {
                    break out.map_err(|_| RunError::Pipeline("pipeline ended without a result".into()))?;
                }
                report = self.reports.recv() => {
                    if let Some(SupervisorReport::Failed { role, error }) = report {
                        return Err(RunError::ActorFailed { actor: role, step: "running".into(), error });
                    }
                }
                _ = tick.tick() => {
                    self.monitor_tick(refs, ctx, &snapshots, &mut clock).await?;
                }
            }
        };
        let output = output.map_err(RunError::Pipeline)?;
        ctx.frames_processed = output.frames_processed;
        self.status
            .send_modify(|s| s.frames_processed = output.frames_processed);
        Ok(output)
    }

    /// One look of the monitor: cancel, progress, deadline, scan engine.
    async fn monitor_tick(
        &mut self,
        refs: &ChildRefs,
        ctx: &mut RunContext,
        snapshots: &watch::Receiver<Arc<LiveSnapshot>>,
        clock: &mut MonitorClock,
    ) -> Result<(), RunError> {
        // A user cancel: the pipeline stops within its poll period and returns the results
        // so far; the devices are stopped in `reconcile_end`.
        if self.user_cancel.load(Ordering::SeqCst)
            && let Some(c) = &ctx.cancel
        {
            c.store(true, Ordering::SeqCst);
        }
        let snap = snapshots.borrow().clone();
        ctx.frames_processed = snap.frames_processed;
        if snap.frames_processed > clock.last_count {
            clock.last_count = snap.frames_processed;
            clock.last_progress = Instant::now();
        }
        self.status.send_modify(|s| {
            s.frames_processed = snap.frames_processed;
            s.snapshot = snap;
        });
        // Past the deadline a run still making progress goes on: a slow consumer (the
        // processing or the disk falling behind, backpressure) finishes late, it is not a
        // detector fault. A detector that goes quiet ends the acquisition through the
        // receiver's own inactivity deadline; here the run fails once nothing has been
        // processed for `stall` after the deadline.
        if clock.started.elapsed() > clock.deadline && clock.last_progress.elapsed() > clock.stall {
            return Err(RunError::Deadline {
                detector: self.detector_name.clone(),
                trigger_source: ctx.trigger_source.clone(),
                expected: ctx.expected,
                received: ctx.frames_processed,
                waited_s: clock.started.elapsed().as_secs_f64(),
            });
        }
        // A scan engine that stops answering mid-scan is a fault, not a hang.
        if ctx.scan_started && clock.last_scan_poll.elapsed() > SCAN_POLL {
            clock.last_scan_poll = Instant::now();
            if let Some(scan_ref) = &refs.scan {
                self.call(
                    Role::ScanEngine,
                    scan_ref,
                    "scan status",
                    CALL_MARGIN,
                    ScanMsg::Status,
                )
                .await?
                .map_err(|source| RunError::Device {
                    step: "scan status".into(),
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// Running, the pipeline done: collects the detector side's end of the acquisition
    /// and recounts it with what the pipeline saw (see `accounting`); the record and the
    /// observers get the final counts.
    ///
    /// After a cancel the scan is stopped and the detector disarmed first: the receiver
    /// ends the acquisition only once the frames stop. The end must come within
    /// [`END_REPORT_DEADLINE`].
    pub(super) async fn reconcile_end(
        &mut self,
        ctx: &mut RunContext,
        output: &PipelineOutput,
        end: Receiver<AcquisitionEnd>,
    ) -> Result<AcquisitionEnd, RunError> {
        if output.cancelled {
            // Reverse arm order, then collect the end.
            self.stop_devices(ctx).await?;
        }
        let end = tokio::task::spawn_blocking(move || end.recv_timeout(END_REPORT_DEADLINE))
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
        accounting::fit_to_scan(&mut end, ctx.expected as usize);
        ctx.not_acquired = accounting::recount(&mut end, output);
        ctx.end = Some(end.clone());
        let lost_now = end.lost + end.damaged;
        self.status.send_modify(|s| s.frames_lost = lost_now);
        Ok(end)
    }

    /// Running → Finishing → Idle: stops the scan and disarms the detector (reverse arm
    /// order), finishes the recording with the run record, publishes the final results,
    /// then applies the end-of-run fault rules ([`Instrument::check_end`]).
    ///
    /// Returns the exit status: Cancelled, CompletedWithLoss (frames lost or damaged) or
    /// Completed.
    pub(super) async fn finish(
        &mut self,
        refs: &ChildRefs,
        ctx: &mut RunContext,
        mut output: PipelineOutput,
        end: AcquisitionEnd,
    ) -> Result<ExitStatus, RunError> {
        if output.cancelled {
            self.transition(AcqEvent::Stop)?;
        } else {
            self.transition(AcqEvent::Complete)?;
        }
        self.stop_devices(ctx).await?;
        ctx.metadata.stop_time = now_rfc3339();
        // The fault rules decide before the file is finished, so that its run record says
        // what run.json will say (a fault, with the same error).
        let verdict = self.check_end(ctx, &end, output.cancelled);
        let status = if verdict.is_err() {
            ExitStatus::Fault
        } else if output.cancelled {
            ExitStatus::Cancelled
        } else if end.lost + end.damaged > 0 {
            ExitStatus::CompletedWithLoss
        } else {
            ExitStatus::Completed
        };
        if let Some(recording) = output.recording.take() {
            let mut run_record = stored_run_record(ctx, status, &end, &output);
            if let Err(e) = &verdict {
                run_record["error"] = serde_json::Value::String(e.to_string());
            }
            let args = FinishArgs {
                recording,
                results: output.results.clone(),
                validity: end.validity.clone(),
                metadata: ctx.metadata.clone(),
                run_record,
            };
            ctx.output_file = Some(self.finish_recording(refs, args).await?);
        }
        ctx.results = output.results;
        // The final merged results, not whichever live snapshot arrived last.
        let final_snapshot = Arc::new(LiveSnapshot {
            frames_processed: output.frames_processed,
            results: ctx.results.clone(),
        });
        self.status.send_modify(|s| s.snapshot = final_snapshot);
        verdict?;
        self.transition(AcqEvent::Finished)?;
        Ok(status)
    }

    /// Finishes the recording (results, validity, metadata, run record); returns its path.
    async fn finish_recording(
        &mut self,
        refs: &ChildRefs,
        args: FinishArgs,
    ) -> Result<PathBuf, RunError> {
        self.call(
            Role::Recorder,
            &refs.recorder,
            "finish recording",
            CALL_MARGIN,
            |r| RecorderMsg::Finish(Box::new(args), r),
        )
        .await?
        .map_err(RunError::Recording)
    }

    /// The end-of-run fault rules, applied once the frames are recorded and counted: an
    /// acquisition that expected frames and got none is a fault whatever ended it (e.g. a
    /// trigger cable that is not connected), unless cancelled; a detector error is a fault
    /// in a continuous acquisition (0 frames expected) and only a warning otherwise, since
    /// the losses are counted.
    fn check_end(
        &self,
        ctx: &RunContext,
        end: &AcquisitionEnd,
        cancelled: bool,
    ) -> Result<(), RunError> {
        if !cancelled && ctx.expected > 0 && end.received == 0 {
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
        Ok(())
    }
}

/// The deadline of the Running step: twice the expected acquisition time (the scan's
/// duration, else frames × frame time) plus the request's margin.
fn run_deadline(req: &AcquisitionRequest, expected: u64) -> Duration {
    let expected_s = req
        .scan
        .as_ref()
        .map(|s| s.duration_s())
        .unwrap_or(expected as f64 * req.detector.frame_time_s);
    Duration::from_secs_f64(expected_s * 2.0) + req.deadline_margin
}

/// The run record stored in the recording, beside the data.
pub(super) fn stored_run_record(
    ctx: &RunContext,
    status: ExitStatus,
    end: &AcquisitionEnd,
    output: &PipelineOutput,
) -> serde_json::Value {
    serde_json::json!({
        "exit_status": status,
        "frames_expected": ctx.expected,
        "frames_received": end.received,
        "frames_lost": end.lost,
        "frames_not_acquired": ctx.not_acquired,
        "frames_damaged": end.damaged,
        "frames_processed": output.frames_processed,
        "end_reason": end.reason,
        "error": end.error,
    })
}

/// Runs the request's ready-for-data hook, if any, on a blocking thread.
async fn call_ready_hook(req: &AcquisitionRequest, nav: NavShape) -> Result<(), RunError> {
    let Some(hook) = &req.ready_hook else {
        return Ok(());
    };
    let hook = Arc::clone(hook);
    tokio::task::spawn_blocking(move || hook(nav))
        .await
        .map_err(|e| RunError::Hook(format!("the hook did not finish: {e}")))?
        .map_err(RunError::Hook)
}
