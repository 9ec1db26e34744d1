//! The detector actor: owns one [`Detector`] driver and runs its calls with deadlines.

use crate::blocking::DeviceHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use stemflow_core::detector::{ArmMode, ArmedAcquisition, Detector, DetectorSettings};
use stemflow_core::devices::DeviceError;

/// Control messages to the detector actor. Frames never come through here: `Arm` returns
/// the channel the detector's receiver fills.
pub enum DetectorMsg {
    /// Apply settings; replies with the settings read back.
    Configure(
        DetectorSettings,
        RpcReplyPort<Result<BTreeMap<String, String>, DeviceError>>,
    ),
    /// Arm (active) or wait to be armed (passive) until the deadline.
    Arm(
        ArmMode,
        Duration,
        RpcReplyPort<Result<ArmedAcquisition, DeviceError>>,
    ),
    /// The driver's device name (e.g. `merlin @ 10.0.0.2:6341`), for errors and metadata.
    Name(RpcReplyPort<String>),
    /// Send a software trigger.
    SoftTrigger(RpcReplyPort<Result<(), DeviceError>>),
    /// Disarm (idempotent).
    Disarm(RpcReplyPort<Result<(), DeviceError>>),
    /// [`Detector::abort`](stemflow_core::detector::Detector::abort): the fault path's
    /// disarm, ending the reception at once.
    Abort(RpcReplyPort<Result<(), DeviceError>>),
    /// Fault injection for supervision tests: the handler panics with this text.
    InjectPanic(String),
}

/// Builds a fresh, connected driver; called at start and on every restart (resync).
pub type DetectorFactory = Arc<dyn Fn() -> Result<Box<dyn Detector>, DeviceError> + Send + Sync>;

/// The detector actor (stateless handler; the driver lives in the state).
pub struct DetectorActor;

/// The detector actor's state.
pub type DetectorState = DeviceHandle<Box<dyn Detector>>;

/// Deadline for configure / disarm / trigger calls: generous for real control links.
const CONTROL_DEADLINE: Duration = Duration::from_secs(10);

impl Actor for DetectorActor {
    type Msg = DetectorMsg;
    type State = DetectorState;
    type Arguments = DetectorFactory;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        factory: DetectorFactory,
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
            DetectorMsg::Configure(settings, reply) => {
                let r = st
                    .call("configure", CONTROL_DEADLINE, move |d| {
                        d.configure(&settings)
                    })
                    .await;
                let _ = reply.send(r);
            }
            DetectorMsg::Arm(mode, deadline, reply) => {
                // The driver enforces `deadline` itself; the margin covers thread hand-off.
                let r = st
                    .call(
                        "arm confirmation",
                        deadline + Duration::from_secs(2),
                        move |d| d.arm(mode, deadline),
                    )
                    .await;
                let _ = reply.send(r);
            }
            DetectorMsg::SoftTrigger(reply) => {
                let r = st
                    .call("soft trigger", CONTROL_DEADLINE, |d| d.soft_trigger())
                    .await;
                let _ = reply.send(r);
            }
            DetectorMsg::Disarm(reply) => {
                let r = st.call("disarm", CONTROL_DEADLINE, |d| d.disarm()).await;
                let _ = reply.send(r);
            }
            DetectorMsg::Abort(reply) => {
                let r = st.call("abort", CONTROL_DEADLINE, |d| d.abort()).await;
                let _ = reply.send(r);
            }
            DetectorMsg::Name(reply) => {
                let _ = reply.send(st.name().to_string());
            }
            DetectorMsg::InjectPanic(text) => panic!("{text}"),
        }
        Ok(())
    }
}
