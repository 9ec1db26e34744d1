//! The recorder actor: opens a recording for an acquisition and finishes it (results,
//! validity, metadata) after the pipeline has written the raw frames into it.
//!
//! Raw frames go from the pipeline straight into the [`Recording`] (a
//! [`TileSink`]); the actor only opens and closes it.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::path::PathBuf;
use std::sync::Arc;
use stemflow_core::metadata::RunMetadata;
use stemflow_core::result::UdfResults;
use stemflow_core::sink::TileSink;
use stemflow_core::validity::FrameValidity;
use stemflow_core::{DType, NavShape, SigShape};

/// A recording being written: takes tiles as a [`TileSink`], then is finished once.
pub trait Recording: TileSink {
    /// Writes results, validity and metadata, flushes and closes; returns the file path.
    ///
    /// # Errors
    /// A message naming the file and what failed.
    fn finish(
        self: Box<Self>,
        results: &[UdfResults],
        validity: &FrameValidity,
        metadata: &RunMetadata,
        run_record: &serde_json::Value,
    ) -> Result<PathBuf, String>;
}

/// What to record.
#[derive(Clone, Debug)]
pub struct RecordingRequest {
    /// Output file.
    pub path: PathBuf,
    /// Scan grid.
    pub nav_shape: NavShape,
    /// Frame shape.
    pub sig_shape: SigShape,
    /// Pixel type.
    pub dtype: DType,
    /// What is known when the recording opens (the detector's header and read-back
    /// settings, the microscope, the scan), written at once so that a recording cut short
    /// by a killed process still says what it holds.
    pub metadata: RunMetadata,
}

/// Opens a recording (e.g. an HDF5 file).
pub type RecordingFactory =
    Arc<dyn Fn(&RecordingRequest) -> Result<Box<dyn Recording>, String> + Send + Sync>;

/// Control messages to the recorder actor.
pub enum RecorderMsg {
    /// Open a recording.
    Open(
        Box<RecordingRequest>,
        RpcReplyPort<Result<Box<dyn Recording>, String>>,
    ),
    /// Finish a recording.
    Finish(Box<FinishArgs>, RpcReplyPort<Result<PathBuf, String>>),
    /// Fault injection for supervision tests: the handler panics with this text.
    InjectPanic(String),
}

/// Arguments of [`RecorderMsg::Finish`].
pub struct FinishArgs {
    /// The recording to finish.
    pub recording: Box<dyn Recording>,
    /// Final results.
    pub results: Vec<UdfResults>,
    /// Per-frame validity.
    pub validity: FrameValidity,
    /// Read-back metadata.
    pub metadata: RunMetadata,
    /// The run record (JSON) stored beside the data.
    pub run_record: serde_json::Value,
}

/// The recorder actor.
pub struct RecorderActor;

impl Actor for RecorderActor {
    type Msg = RecorderMsg;
    type State = RecordingFactory;
    type Arguments = RecordingFactory;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        factory: RecordingFactory,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(factory)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        factory: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RecorderMsg::Open(req, reply) => {
                let f = Arc::clone(factory);
                let r = tokio::task::spawn_blocking(move || f(&req))
                    .await
                    .unwrap_or_else(|e| Err(format!("recorder open panicked: {e}")));
                let _ = reply.send(r);
            }
            RecorderMsg::Finish(args, reply) => {
                let r = tokio::task::spawn_blocking(move || {
                    let a = *args;
                    a.recording
                        .finish(&a.results, &a.validity, &a.metadata, &a.run_record)
                })
                .await
                .unwrap_or_else(|e| Err(format!("recorder finish panicked: {e}")));
                let _ = reply.send(r);
            }
            RecorderMsg::InjectPanic(text) => panic!("{text}"),
        }
        Ok(())
    }
}
