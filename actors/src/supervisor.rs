//! The instrument supervisor: spawns the device, processing and recorder actors linked to
//! itself, and restarts any of them that fails.
//!
//! ```text
//!                    InstrumentSupervisor
//!       ┌──────────┬──────────┼────────────┬────────────┐
//!   detector   scan_engine  microscope  processing   recorder
//! ```
//! When a child fails (a panic or an error in a handler) the supervisor reports
//! [`SupervisorReport::Failed`] naming it (the orchestrator then ends the acquisition in
//! Fault), builds a fresh child from the same factory (a new driver connection: resync), and
//! reports [`SupervisorReport::Restarted`]. Health per child follows
//! [`stemflow_core::state::Health`].

use crate::detector::{DetectorActor, DetectorFactory, DetectorMsg};
use crate::microscope::{MicroscopeActor, MicroscopeFactory, MicroscopeMsg};
use crate::processing::{ProcessingActor, ProcessingMsg};
use crate::recorder::{RecorderActor, RecorderMsg, RecordingFactory};
use crate::scan::{ScanEngineActor, ScanFactory, ScanMsg};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use stemflow_core::state::{Health, HealthEvent};
use tokio::sync::mpsc;

/// The supervised children, by role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// The detector actor.
    Detector,
    /// The scan engine actor.
    ScanEngine,
    /// The microscope actor.
    Microscope,
    /// The processing actor.
    Processing,
    /// The recorder actor.
    Recorder,
}

impl Role {
    /// The actor's name in errors and logs.
    pub fn name(self) -> &'static str {
        match self {
            Role::Detector => "detector",
            Role::ScanEngine => "scan_engine",
            Role::Microscope => "microscope",
            Role::Processing => "processing",
            Role::Recorder => "recorder",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How to build every child; kept by the supervisor to rebuild a failed one.
#[derive(Clone)]
pub struct InstrumentSpec {
    /// Builds the detector driver.
    pub detector: DetectorFactory,
    /// Builds the scan engine driver, if the instrument has one under our control.
    pub scan: Option<ScanFactory>,
    /// Builds the microscope driver, if any.
    pub microscope: Option<MicroscopeFactory>,
    /// Opens recordings.
    pub recording: RecordingFactory,
}

/// The current actor refs (they change when a child is restarted).
#[derive(Clone)]
pub struct ChildRefs {
    /// Detector actor.
    pub detector: ActorRef<DetectorMsg>,
    /// Scan engine actor.
    pub scan: Option<ActorRef<ScanMsg>>,
    /// Microscope actor.
    pub microscope: Option<ActorRef<MicroscopeMsg>>,
    /// Processing actor.
    pub processing: ActorRef<ProcessingMsg>,
    /// Recorder actor.
    pub recorder: ActorRef<RecorderMsg>,
}

impl ChildRefs {
    /// The current actor of `role` (`None` for an absent scan engine or microscope).
    pub fn id_of(&self, role: Role) -> Option<ractor::ActorId> {
        match role {
            Role::Detector => Some(self.detector.get_id()),
            Role::ScanEngine => self.scan.as_ref().map(|r| r.get_id()),
            Role::Microscope => self.microscope.as_ref().map(|r| r.get_id()),
            Role::Processing => Some(self.processing.get_id()),
            Role::Recorder => Some(self.recorder.get_id()),
        }
    }

    fn role_of(&self, cell: &ActorCell) -> Option<Role> {
        let id = cell.get_id();
        if self.detector.get_id() == id {
            Some(Role::Detector)
        } else if self.scan.as_ref().is_some_and(|a| a.get_id() == id) {
            Some(Role::ScanEngine)
        } else if self.microscope.as_ref().is_some_and(|a| a.get_id() == id) {
            Some(Role::Microscope)
        } else if self.processing.get_id() == id {
            Some(Role::Processing)
        } else if self.recorder.get_id() == id {
            Some(Role::Recorder)
        } else {
            None
        }
    }
}

/// What the supervisor tells the orchestrator.
#[derive(Clone, Debug, PartialEq)]
pub enum SupervisorReport {
    /// A child failed; it is being restarted.
    Failed {
        /// Which child.
        role: Role,
        /// Its panic message or error.
        error: String,
    },
    /// A child was rebuilt and is ready again.
    Restarted {
        /// Which child.
        role: Role,
    },
    /// A child could not be rebuilt (e.g. the device is unreachable); it stays in Fault.
    RestartFailed {
        /// Which child.
        role: Role,
        /// Why.
        error: String,
    },
}

/// State shared between the supervisor and the orchestrator.
pub struct SharedChildren {
    /// Current refs (`None` until the children have started).
    pub refs: RwLock<Option<ChildRefs>>,
    /// Health per child.
    pub health: RwLock<BTreeMap<Role, Health>>,
}

/// Messages to the supervisor (none needed beyond supervision events today).
pub enum SupervisorMsg {}

/// The supervisor actor.
pub struct InstrumentSupervisor;

/// Startup arguments of the supervisor.
pub struct SupervisorArgs {
    /// Child factories.
    pub spec: InstrumentSpec,
    /// Where refs and health are published.
    pub shared: Arc<SharedChildren>,
    /// Where reports go.
    pub reports: mpsc::UnboundedSender<SupervisorReport>,
}

/// The supervisor's state.
pub struct SupervisorState {
    spec: InstrumentSpec,
    shared: Arc<SharedChildren>,
    reports: mpsc::UnboundedSender<SupervisorReport>,
}

fn set_health(shared: &SharedChildren, role: Role, ev: HealthEvent) {
    if let Ok(mut h) = shared.health.write() {
        let cur = *h.get(&role).unwrap_or(&Health::Disconnected);
        // An illegal pair keeps the state: health is advisory, the acquisition machine rules.
        let next = cur.next(ev).unwrap_or(cur);
        h.insert(role, next);
    }
}

/// Spawns every child linked to `sup` and returns their refs.
///
/// # Errors
/// The first child that fails to start (e.g. its device is unreachable), naming it.
pub async fn spawn_children(
    spec: &InstrumentSpec,
    sup: ActorCell,
) -> Result<ChildRefs, ActorProcessingErr> {
    let (detector, _) =
        Actor::spawn_linked(None, DetectorActor, spec.detector.clone(), sup.clone())
            .await
            .map_err(|e| spawn_failure("detector", "start", e))?;
    let scan = match &spec.scan {
        Some(f) => Some(
            Actor::spawn_linked(None, ScanEngineActor, f.clone(), sup.clone())
                .await
                .map_err(|e| spawn_failure("scan_engine", "start", e))?
                .0,
        ),
        None => None,
    };
    let microscope = match &spec.microscope {
        Some(f) => Some(
            Actor::spawn_linked(None, MicroscopeActor, f.clone(), sup.clone())
                .await
                .map_err(|e| spawn_failure("microscope", "start", e))?
                .0,
        ),
        None => None,
    };
    let (processing, _) = Actor::spawn_linked(None, ProcessingActor, (), sup.clone())
        .await
        .map_err(|e| spawn_failure("processing", "start", e))?;
    let (recorder, _) = Actor::spawn_linked(None, RecorderActor, spec.recording.clone(), sup)
        .await
        .map_err(|e| spawn_failure("recorder", "start", e))?;
    Ok(ChildRefs {
        detector,
        scan,
        microscope,
        processing,
        recorder,
    })
}

/// `"{role} failed to {verb}: {cause}"` for an actor that did not start. The cause is the
/// actor's own startup error (e.g. the device's connection refused), not ractor's wrapper
/// text, which calls every startup error a panic.
fn spawn_failure(role: &str, verb: &str, e: ractor::SpawnErr) -> String {
    match e {
        ractor::SpawnErr::StartupFailed(cause) => format!("{role} failed to {verb}: {cause}"),
        other => format!("{role} failed to {verb}: {other}"),
    }
}

async fn respawn(
    spec: &InstrumentSpec,
    refs: &mut ChildRefs,
    role: Role,
    sup: ActorCell,
) -> Result<(), String> {
    let err = |e: ractor::SpawnErr| spawn_failure(&role.to_string(), "restart", e);
    match role {
        Role::Detector => {
            refs.detector = Actor::spawn_linked(None, DetectorActor, spec.detector.clone(), sup)
                .await
                .map_err(err)?
                .0
        }
        Role::ScanEngine => {
            if let Some(f) = &spec.scan {
                refs.scan = Some(
                    Actor::spawn_linked(None, ScanEngineActor, f.clone(), sup)
                        .await
                        .map_err(err)?
                        .0,
                )
            }
        }
        Role::Microscope => {
            if let Some(f) = &spec.microscope {
                refs.microscope = Some(
                    Actor::spawn_linked(None, MicroscopeActor, f.clone(), sup)
                        .await
                        .map_err(err)?
                        .0,
                )
            }
        }
        Role::Processing => {
            refs.processing = Actor::spawn_linked(None, ProcessingActor, (), sup)
                .await
                .map_err(err)?
                .0
        }
        Role::Recorder => {
            refs.recorder = Actor::spawn_linked(None, RecorderActor, spec.recording.clone(), sup)
                .await
                .map_err(err)?
                .0
        }
    }
    Ok(())
}

impl Actor for InstrumentSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SupervisorState {
            spec: args.spec,
            shared: args.shared,
            reports: args.reports,
        })
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisionEvent::ActorFailed(cell, err) = event else {
            return Ok(());
        };
        let refs: Option<ChildRefs> = match st.shared.refs.read() {
            Ok(r) => r.clone(),
            Err(_) => None,
        };
        let Some(mut refs) = refs else {
            return Err("child refs unavailable (lock poisoned or children not started)".into());
        };
        let Some(role) = refs.role_of(&cell) else {
            tracing::warn!("unknown child {:?} failed: {err}", cell.get_id());
            return Ok(());
        };
        tracing::error!(actor = role.name(), "actor failed: {err}");
        set_health(&st.shared, role, HealthEvent::Failed);
        let _ = st.reports.send(SupervisorReport::Failed {
            role,
            error: err.to_string(),
        });
        set_health(&st.shared, role, HealthEvent::Reset);
        match respawn(&st.spec, &mut refs, role, myself.get_cell()).await {
            Ok(()) => {
                if let Ok(mut w) = st.shared.refs.write() {
                    *w = Some(refs);
                }
                set_health(&st.shared, role, HealthEvent::Connected);
                let _ = st.reports.send(SupervisorReport::Restarted { role });
            }
            Err(e) => {
                set_health(&st.shared, role, HealthEvent::Failed);
                let _ = st
                    .reports
                    .send(SupervisorReport::RestartFailed { role, error: e });
            }
        }
        Ok(())
    }
}
