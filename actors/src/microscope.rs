//! The microscope actor: owns one [`Microscope`] driver (real or simulated).

use crate::blocking::DeviceHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::Arc;
use std::time::Duration;
use stemflow_core::devices::{DeviceError, Microscope, MicroscopeSettings};
use stemflow_core::metadata::MicroscopeState;

/// Control messages to the microscope actor.
pub enum MicroscopeMsg {
    /// Apply settings; replies with the state read back.
    Apply(
        MicroscopeSettings,
        RpcReplyPort<Result<MicroscopeState, DeviceError>>,
    ),
    /// Read the state back.
    Read(RpcReplyPort<Result<MicroscopeState, DeviceError>>),
    /// Fault injection for supervision tests: the handler panics with this text.
    InjectPanic(String),
}

/// Builds a fresh, connected microscope driver; called at start and on every restart.
pub type MicroscopeFactory =
    Arc<dyn Fn() -> Result<Box<dyn Microscope>, DeviceError> + Send + Sync>;

/// The microscope actor.
pub struct MicroscopeActor;

/// The microscope actor's state.
pub type MicroscopeActorState = DeviceHandle<Box<dyn Microscope>>;

const DEADLINE: Duration = Duration::from_secs(10);

impl Actor for MicroscopeActor {
    type Msg = MicroscopeMsg;
    type State = MicroscopeActorState;
    type Arguments = MicroscopeFactory;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        factory: MicroscopeFactory,
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
            MicroscopeMsg::Apply(s, reply) => {
                let r = st
                    .call("apply settings", DEADLINE, move |d| d.apply(&s))
                    .await;
                let _ = reply.send(r);
            }
            MicroscopeMsg::Read(reply) => {
                let r = st.call("read state", DEADLINE, |d| d.read_state()).await;
                let _ = reply.send(r);
            }
            MicroscopeMsg::InjectPanic(text) => panic!("{text}"),
        }
        Ok(())
    }
}
