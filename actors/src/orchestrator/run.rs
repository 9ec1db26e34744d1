//! One run from Idle back to Idle: the steps in order (`steps`), the run record, and the
//! fault path that every failed step ends in.
//!
//! Cleanup is split by what it undoes. A step owns the values it creates (the armed
//! acquisition's channels, the recording, the pipeline handle) and hands them to the next
//! step, so on failure they are dropped with the step: the channels close and the
//! recording is left unfinished. What lives outside the process (an armed detector, a
//! running scan, a pipeline thread) is registered in [`RunContext`] as it starts, and
//! [`Instrument::recover`] undoes it in reverse arm order whichever step failed.

use super::record::{ExitStatus, RunError, RunFailure, RunRecord};
use super::request::AcquisitionRequest;
use super::{CALL_MARGIN, Instrument, RunContext, now_rfc3339};
use crate::detector::DetectorMsg;
use crate::scan::ScanMsg;
use crate::supervisor::{ChildRefs, Role};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use stemflow_core::state::{AcqEvent, Health};

impl Instrument {
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
        let result = self.run_steps(&req, &mut ctx).await;
        // A cancel request is consumed by the run it ended (or that failed meanwhile).
        self.user_cancel.store(false, Ordering::SeqCst);
        match result {
            Ok(status) => {
                let mut record = ctx.record(start_time, started);
                record.exit_status = status;
                Ok(record)
            }
            Err(error) => {
                let died = died_actor(&error, &refs_at_start);
                self.recover(&mut ctx, died, &error).await;
                // After recovery: the counts of a salvaged run are final only now.
                let mut record = ctx.record(start_time, started);
                record.exit_status = ExitStatus::Fault;
                record.error = Some(error.to_string());
                Err(RunFailure {
                    error,
                    record: Box::new(record),
                })
            }
        }
    }

    /// The steps of one run, in order; the first that fails ends the run (the caller then
    /// recovers). Every step reads the same actor refs, taken once here.
    async fn run_steps(
        &mut self,
        req: &AcquisitionRequest,
        ctx: &mut RunContext,
    ) -> Result<ExitStatus, RunError> {
        let refs = self.refs();
        ctx.expected = req.detector.nav_shape.len() as u64;
        if self.user_cancel.load(Ordering::SeqCst) {
            // Cancelled before anything moved: nothing to stop, nothing recorded.
            return Ok(ExitStatus::Cancelled);
        }
        self.configure(req, &refs, ctx).await?;
        let armed = self.arm(req, &refs, ctx).await?;
        ctx.armed_at = Some(Instant::now());
        let started = self.start_processing(req, &refs, ctx, armed).await?;
        let mut done = started.pipeline.done;
        let snapshots = started.pipeline.snapshots;
        let running = match self.trigger(req, &refs, ctx).await {
            Ok(()) => self.monitor(req, &refs, ctx, &mut done, snapshots).await,
            Err(e) => Err(e),
        };
        let output = match running {
            Ok(output) => output,
            Err(e) => {
                // The pipeline still holds the recording and the results so far: the
                // fault path finishes them (see `salvage`). A pipeline error has consumed
                // the pipeline's result already: nothing is left to wait for.
                if !matches!(e, RunError::Pipeline(_)) {
                    ctx.salvage = Some(super::Salvage {
                        done,
                        end: started.end,
                    });
                }
                return Err(e);
            }
        };
        let end = self.reconcile_end(ctx, &output, started.end).await?;
        self.finish(&refs, ctx, output, end).await
    }

    /// Stops the scan and disarms the detector (reverse arm order), each only if this run
    /// started it. Used by a cancel (before the end is collected) and by `finish`.
    pub(super) async fn stop_devices(&mut self, ctx: &mut RunContext) -> Result<(), RunError> {
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
    ///
    /// The scan is stopped and the detector disarmed whether or not this run got as far as
    /// starting or arming them: a failed or timed-out call may have reached the device.
    async fn recover(
        &mut self,
        ctx: &mut RunContext,
        died: Option<(Role, ractor::ActorId)>,
        error: &RunError,
    ) {
        if let Some(c) = &ctx.cancel {
            c.store(true, Ordering::SeqCst);
        }
        let refs = self.refs();
        if let Some(scan_ref) = &refs.scan {
            let _ = scan_ref
                .call(ScanMsg::Stop, Some(Duration::from_secs(5)))
                .await;
        }
        // Abort, not disarm: the reception ends at once even if the stream never goes
        // quiet, so the salvage below gets the acquisition's end.
        let _ = refs
            .detector
            .call(DetectorMsg::Abort, Some(Duration::from_secs(5)))
            .await;
        // A pipeline that died with the processing actor has no results to wait for.
        let pipeline_died = died.is_some_and(|(role, _)| role == Role::Processing)
            || matches!(error, RunError::Pipeline(e) if e.starts_with(crate::processing::PIPELINE_PANICKED));
        if let Some(s) = ctx.salvage.take()
            && !pipeline_died
        {
            self.salvage(ctx, s, error).await;
        }
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
}

impl Instrument {
    /// Finishes a failed run's recording with what it got: the cancelled pipeline's results
    /// so far, the detector's end recounted with them (the positions never processed are
    /// lost or not acquired), the metadata, and the run record with the error — so that
    /// `frames_expected = received + lost + damaged + not_acquired` holds in run.json and in
    /// the file alike. Best effort with deadlines: a pipeline that does not return within
    /// [`SALVAGE_DEADLINE`] (a panic, a stuck sink) leaves the file as the recorder's drop
    /// closes it, marked incomplete.
    async fn salvage(&mut self, ctx: &mut RunContext, s: super::Salvage, error: &RunError) {
        let Ok(Ok(Ok(mut output))) = tokio::time::timeout(SALVAGE_DEADLINE, s.done).await else {
            tracing::warn!(
                "the failed run's pipeline returned no results: recording left unfinished"
            );
            return;
        };
        let end_rx = s.end;
        let end = tokio::task::spawn_blocking(move || end_rx.recv_timeout(SALVAGE_DEADLINE))
            .await
            .ok()
            .and_then(|r| r.ok());
        // The run stopped: whatever was not processed is not in the file.
        output.cancelled = true;
        let n = ctx.expected as usize;
        let mut end = end.unwrap_or_else(|| {
            // No end from the receiver: what the pipeline processed is what was received.
            let mut validity = stemflow_core::validity::FrameValidity::new(n);
            let upto = output.unprocessed_from.unwrap_or(output.frames_processed) as usize;
            validity.mark_range_received(0, upto.min(n));
            stemflow_core::detector::AcquisitionEnd {
                expected: n as u64,
                received: upto.min(n) as u64,
                lost: n.saturating_sub(upto) as u64,
                damaged: 0,
                validity,
                reason: "Failed".into(),
                error: None,
            }
        });
        super::accounting::fit_to_scan(&mut end, n);
        ctx.not_acquired = super::accounting::recount(&mut end, &output);
        end.error.get_or_insert_with(|| error.to_string());
        ctx.frames_processed = output.frames_processed;
        ctx.metadata.stop_time = now_rfc3339();
        if let Some(recording) = output.recording.take() {
            let mut run_record =
                super::steps::stored_run_record(ctx, ExitStatus::Fault, &end, &output);
            run_record["error"] = serde_json::Value::String(error.to_string());
            let args = crate::recorder::FinishArgs {
                recording,
                results: output.results.clone(),
                validity: end.validity.clone(),
                metadata: ctx.metadata.clone(),
                run_record,
            };
            let refs = self.refs();
            match refs
                .recorder
                .call(
                    |r| crate::recorder::RecorderMsg::Finish(Box::new(args), r),
                    Some(SALVAGE_DEADLINE),
                )
                .await
            {
                Ok(ractor::rpc::CallResult::Success(Ok(path))) => ctx.output_file = Some(path),
                other => tracing::warn!("finishing the failed run's recording: {other:?}"),
            }
        }
        ctx.results = output.results;
        ctx.end = Some(end);
    }
}

/// How long the fault path waits for a failed run's pipeline and detector end, and for
/// the recorder to finish its file.
const SALVAGE_DEADLINE: Duration = Duration::from_secs(15);

/// The actor a failed run lost, as it was when the run started: recovery waits until the
/// supervisor has replaced it, so the next run does not call a dead actor.
fn died_actor(error: &RunError, refs_at_start: &ChildRefs) -> Option<(Role, ractor::ActorId)> {
    match error {
        RunError::ActorFailed { actor, .. } => refs_at_start.id_of(*actor).map(|id| (*actor, id)),
        // A pipeline panic fails the processing actor too (see `processing`).
        RunError::Pipeline(e) if e.starts_with(crate::processing::PIPELINE_PANICKED) => {
            refs_at_start
                .id_of(Role::Processing)
                .map(|id| (Role::Processing, id))
        }
        _ => None,
    }
}

impl RunContext {
    /// The run record as far as the run got; the caller sets the exit status (and, for a
    /// failed run, the error and the stop time after recovery).
    fn record(&self, start_time: String, started: Instant) -> RunRecord {
        RunRecord {
            start_time,
            stop_time: now_rfc3339(),
            duration_s: started.elapsed().as_secs_f64(),
            acquisition_s: self.armed_at.map_or(0.0, |t| t.elapsed().as_secs_f64()),
            exit_status: ExitStatus::Completed,
            // The detector error that ended the acquisition early, if one did (the frames
            // after it are counted lost): run.json says what the file's record says.
            error: self.end.as_ref().and_then(|e| e.error.clone()),
            frames_expected: self.expected,
            frames_received: self.end.as_ref().map_or(0, |e| e.received),
            frames_lost: self.end.as_ref().map_or(0, |e| e.lost),
            // No end: the run stopped before the detector delivered anything (a failed
            // configure or arm, a cancel before the start), so no frame was acquired.
            frames_not_acquired: if self.end.is_some() {
                self.not_acquired
            } else {
                self.expected
            },
            frames_damaged: self.end.as_ref().map_or(0, |e| e.damaged),
            frames_processed: self.frames_processed,
            bytes_processed: self.frames_processed * self.bytes_per_frame,
            end_reason: self
                .end
                .as_ref()
                .map(|e| e.reason.clone())
                .unwrap_or_default(),
            metadata: self.metadata.clone(),
            output_file: self.output_file.clone(),
        }
    }
}
