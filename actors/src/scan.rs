//! The scan engine actor: owns one [`ScanEngine`] driver (real or simulated).

use crate::blocking::DeviceHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::Arc;
use std::time::Duration;
use stemflow_core::devices::{DeviceError, ScanEngine, ScanSettings, ScanStatus};

/// Control messages to the scan engine actor.
pub enum ScanMsg {
    /// Apply scan settings; replies with the settings read back.
    Configure(
        ScanSettings,
        RpcReplyPort<Result<ScanSettings, DeviceError>>,
    ),
    /// Start the scan (the trigger output starts firing).
    Start(RpcReplyPort<Result<(), DeviceError>>),
    /// Stop the scan (idempotent).
    Stop(RpcReplyPort<Result<(), DeviceError>>),
    /// Read the status.
    Status(RpcReplyPort<Result<ScanStatus, DeviceError>>),
    /// The driver's device name (e.g. `scan engine @ 10.0.0.3:7000`), for errors.
    Name(RpcReplyPort<String>),
    /// Fault injection for supervision tests: the handler panics with this text.
    InjectPanic(String),
}

/// Builds a fresh, connected scan engine driver; called at start and on every restart.
pub type ScanFactory = Arc<dyn Fn() -> Result<Box<dyn ScanEngine>, DeviceError> + Send + Sync>;

/// The scan engine actor.
pub struct ScanEngineActor;

/// The scan engine actor's state.
pub type ScanState = DeviceHandle<Box<dyn ScanEngine>>;

const DEADLINE: Duration = Duration::from_secs(5);

impl Actor for ScanEngineActor {
    type Msg = ScanMsg;
    type State = ScanState;
    type Arguments = ScanFactory;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        factory: ScanFactory,
    ) -> Result<Self::State, ActorProcessingErr> {
        DeviceHandle::open(move || factory(), |d| d.name()).await
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ScanMsg::Configure(s, reply) => {
                let r = st
                    .call("configure", DEADLINE, move |d| d.configure(&s))
                    .await;
                let _ = reply.send(r);
            }
            ScanMsg::Start(reply) => {
                let r = st.call("start", DEADLINE, |d| d.start()).await;
                let _ = reply.send(r);
            }
            ScanMsg::Stop(reply) => {
                let r = st.call("stop", DEADLINE, |d| d.stop()).await;
                let _ = reply.send(r);
            }
            ScanMsg::Status(reply) => {
                let r = st.call("status", DEADLINE, |d| d.status()).await;
                let _ = reply.send(r);
            }
            ScanMsg::Name(reply) => {
                let _ = reply.send(st.name().to_string());
            }
            ScanMsg::InjectPanic(text) => panic!("{text}"),
        }
        Ok(())
    }
}
