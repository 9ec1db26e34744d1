//! The processing actor: runs one reduction pipeline per acquisition on its own thread and
//! watches it. A panic in the pipeline (e.g. in a UDF) fails this actor, so the supervisor
//! sees it, the acquisition ends in Fault naming `processing`, and the actor is restarted.
//!
//! The pipeline itself (receiver stacks → decode → UDFs → recorder) is built by the
//! orchestrator as a [`PipelineJob`]; frames flow through the job's channels, never through
//! this actor's mailbox.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use stemflow_core::result::UdfResults;
use tokio::sync::{oneshot, watch};

/// What a pipeline produces at the end of a run.
pub struct PipelineOutput {
    /// Final merged results.
    pub results: Vec<UdfResults>,
    /// Frames processed.
    pub frames_processed: u64,
    /// Acquisition indices of frames that could not be decoded.
    pub damaged: Vec<u64>,
    /// True when the run was cancelled before the stream ended.
    pub cancelled: bool,
    /// After a cancel: the frame index from which no frame was processed (just after the
    /// last frame the pipeline took; frames still queued or arriving later were dropped);
    /// the orchestrator then counts no frame from there on as received. `None` when every
    /// frame received was processed (a completed run, or a pipeline that drained its
    /// stream).
    pub unprocessed_from: Option<u64>,
    /// The recording the pipeline wrote raw frames into, to be finished by the recorder.
    pub recording: Option<Box<dyn crate::recorder::Recording>>,
}

/// A live view of the results while a run goes on.
#[derive(Clone, Debug, Default)]
pub struct LiveSnapshot {
    /// Frames processed so far.
    pub frames_processed: u64,
    /// Merged results so far (nav positions not yet seen are NaN).
    pub results: Vec<UdfResults>,
}

/// A pipeline to run: gets the cancel flag and the snapshot publisher.
pub type PipelineJob = Box<
    dyn FnOnce(Arc<AtomicBool>, watch::Sender<Arc<LiveSnapshot>>) -> Result<PipelineOutput, String>
        + Send,
>;

/// Handle to a running pipeline, returned by [`ProcessingMsg::Start`].
pub struct PipelineHandle {
    /// Resolves when the pipeline ends (Err: the pipeline's error).
    pub done: oneshot::Receiver<Result<PipelineOutput, String>>,
    /// Latest snapshot (for progress and live view).
    pub snapshots: watch::Receiver<Arc<LiveSnapshot>>,
    /// Set to cancel the run.
    pub cancel: Arc<AtomicBool>,
}

/// Control messages to the processing actor.
pub enum ProcessingMsg {
    /// Start a pipeline on a new thread; replies with its handle at once.
    Start(PipelineJob, RpcReplyPort<PipelineHandle>),
    /// Cancel the running pipeline, if any.
    Cancel,
    /// Sent by the watcher when the pipeline thread panicked: fails the actor.
    PipelinePanicked(String),
    /// Fault injection for supervision tests: the handler panics with this text.
    InjectPanic(String),
}

/// The processing actor.
pub struct ProcessingActor;

/// The processing actor's state: the cancel flag of the running pipeline.
#[derive(Default)]
pub struct ProcessingState {
    cancel: Option<Arc<AtomicBool>>,
}

impl Actor for ProcessingActor {
    type Msg = ProcessingMsg;
    type State = ProcessingState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(ProcessingState::default())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A restarted actor must not leave a pipeline running behind it.
        if let Some(c) = st.cancel.take() {
            c.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ProcessingMsg::Start(job, reply) => {
                if let Some(old) = st.cancel.take() {
                    old.store(true, Ordering::SeqCst);
                }
                let cancel = Arc::new(AtomicBool::new(false));
                st.cancel = Some(Arc::clone(&cancel));
                let (snap_tx, snap_rx) = watch::channel(Arc::new(LiveSnapshot::default()));
                let (done_tx, done_rx) = oneshot::channel();
                let c2 = Arc::clone(&cancel);
                let me = myself.clone();
                std::thread::Builder::new()
                    .name("stemflow-pipeline".into())
                    .spawn(move || {
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            job(c2, snap_tx)
                        }));
                        match r {
                            Ok(out) => {
                                let _ = done_tx.send(out);
                            }
                            Err(payload) => {
                                let text = panic_text(&payload);
                                let _ = done_tx.send(Err(format!("{PIPELINE_PANICKED}: {text}")));
                                let _ = me.cast(ProcessingMsg::PipelinePanicked(text));
                            }
                        }
                    })?;
                let _ = reply.send(PipelineHandle {
                    done: done_rx,
                    snapshots: snap_rx,
                    cancel,
                });
            }
            ProcessingMsg::Cancel => {
                if let Some(c) = &st.cancel {
                    c.store(true, Ordering::SeqCst);
                }
            }
            ProcessingMsg::PipelinePanicked(text) => {
                return Err(format!("pipeline thread panicked: {text}").into());
            }
            ProcessingMsg::InjectPanic(text) => panic!("{text}"),
        }
        Ok(())
    }
}

/// How a pipeline error that was a panic begins: the processing actor fails and is
/// restarted, and the orchestrator waits for the new actor before the next run.
pub const PIPELINE_PANICKED: &str = "pipeline panicked";

/// The message of a panic payload (`&str` or `String`), or a placeholder.
pub fn panic_text(payload: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-text panic payload".to_string()
    }
}
