//! The common state machine: device health (per actor) and acquisition (owned by the
//! orchestrator), as plain enums with pure transition functions, kept outside the actor
//! framework so it stays replaceable and testable.
//!
//! ```text
//! Health:       Disconnected ─Connect→ Connecting ─Connected→ Ready ⇄ Busy
//!               any ─Failed→ Fault ─Reset→ Connecting;  any ─Disconnect→ Disconnected
//!
//! Acquisition:  Idle ─Configure→ Configuring ─ArmConfirmed→ Armed ─Start→ Running
//!               Running ─Complete|Stop→ Finishing ─Finished→ Idle
//!               Running ─Pause→ Paused ─Resume→ Running;  Paused ─Stop→ Finishing
//!               Armed ─Stop→ Finishing (disarm without a scan)
//!               Configuring|Armed|Running|Paused|Finishing ─Abort→ Aborting ─Aborted→ Aborted ─Acknowledge→ Idle
//!               any ─Failed→ Fault ─Reset→ Resetting ─ResetDone→ Idle
//! ```
//! Every state has a way back to Idle. Any other pair is an [`IllegalTransition`] naming
//! the state and the event.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A transition that the state machine does not allow.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("{machine}: event {event} is not allowed in state {state}")]
pub struct IllegalTransition {
    /// Which machine (`health` or `acquisition`).
    pub machine: &'static str,
    /// The state at the time.
    pub state: String,
    /// The rejected event.
    pub event: String,
}

/// A device actor's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Health {
    /// No connection to the device.
    Disconnected,
    /// Connecting (or re-connecting after a reset).
    Connecting,
    /// Connected and idle.
    Ready,
    /// Connected and working on an acquisition.
    Busy,
    /// Failed; needs a reset.
    Fault,
}

/// Events that move a device's [`Health`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HealthEvent {
    /// Start connecting.
    Connect,
    /// The device answered.
    Connected,
    /// Work started (the device takes part in an acquisition).
    StartWork,
    /// Work finished.
    WorkDone,
    /// The device or its actor failed.
    Failed,
    /// Reset after a fault: reconnect.
    Reset,
    /// Drop the connection.
    Disconnect,
}

impl Health {
    /// All states, for exhaustive tests and documentation.
    pub const ALL: [Health; 5] = [
        Health::Disconnected,
        Health::Connecting,
        Health::Ready,
        Health::Busy,
        Health::Fault,
    ];

    /// The state after `event`, or an error naming state and event.
    ///
    /// # Errors
    /// [`IllegalTransition`] for any pair not in the diagram of the module doc.
    pub fn next(self, event: HealthEvent) -> Result<Health, IllegalTransition> {
        use Health::*;
        use HealthEvent::*;
        let next = match (self, event) {
            (_, Failed) => Fault,
            (_, Disconnect) => Disconnected,
            (Disconnected, Connect) => Connecting,
            (Connecting, Connected) => Ready,
            (Ready, StartWork) => Busy,
            (Busy, WorkDone) => Ready,
            (Fault, Reset) => Connecting,
            _ => {
                return Err(IllegalTransition {
                    machine: "health",
                    state: format!("{self:?}"),
                    event: format!("{event:?}"),
                });
            }
        };
        Ok(next)
    }
}

impl HealthEvent {
    /// All events, for exhaustive tests.
    pub const ALL: [HealthEvent; 7] = [
        HealthEvent::Connect,
        HealthEvent::Connected,
        HealthEvent::StartWork,
        HealthEvent::WorkDone,
        HealthEvent::Failed,
        HealthEvent::Reset,
        HealthEvent::Disconnect,
    ];
}

/// The acquisition's state, owned by the orchestrator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AcqState {
    /// Nothing under way.
    Idle,
    /// Devices are being configured.
    Configuring,
    /// The detector confirmed it is armed (header seen / status read back).
    Armed,
    /// The scan runs and frames flow.
    Running,
    /// Paused at a checkpoint.
    Paused,
    /// All frames are in (or stop requested): devices are disarmed, results finalised.
    Finishing,
    /// Abort requested: stopping everything now.
    Aborting,
    /// Aborted; acknowledged back to Idle.
    Aborted,
    /// A device or actor failed.
    Fault,
    /// Resetting faulted devices.
    Resetting,
}

/// Events that move the [`AcqState`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AcqEvent {
    /// Begin configuring for an acquisition.
    Configure,
    /// The detector confirmed it is armed.
    ArmConfirmed,
    /// The trigger source (scan engine) started.
    Start,
    /// Pause at the next checkpoint.
    Pause,
    /// Resume after a pause.
    Resume,
    /// Every expected frame arrived (or was accounted lost at the deadline).
    Complete,
    /// Stop cleanly (finish what was acquired).
    Stop,
    /// Finishing done.
    Finished,
    /// Abort now.
    Abort,
    /// Abort done.
    Aborted,
    /// Return from Aborted to Idle.
    Acknowledge,
    /// A device or actor failed.
    Failed,
    /// Start resetting after a fault.
    Reset,
    /// Reset done.
    ResetDone,
}

impl AcqEvent {
    /// All events, for exhaustive tests.
    pub const ALL: [AcqEvent; 14] = [
        AcqEvent::Configure,
        AcqEvent::ArmConfirmed,
        AcqEvent::Start,
        AcqEvent::Pause,
        AcqEvent::Resume,
        AcqEvent::Complete,
        AcqEvent::Stop,
        AcqEvent::Finished,
        AcqEvent::Abort,
        AcqEvent::Aborted,
        AcqEvent::Acknowledge,
        AcqEvent::Failed,
        AcqEvent::Reset,
        AcqEvent::ResetDone,
    ];
}

impl AcqState {
    /// All states, for exhaustive tests.
    pub const ALL: [AcqState; 10] = [
        AcqState::Idle,
        AcqState::Configuring,
        AcqState::Armed,
        AcqState::Running,
        AcqState::Paused,
        AcqState::Finishing,
        AcqState::Aborting,
        AcqState::Aborted,
        AcqState::Fault,
        AcqState::Resetting,
    ];

    /// The state after `event`, or an error naming state and event.
    ///
    /// # Errors
    /// [`IllegalTransition`] for any pair not in the diagram of the module doc.
    pub fn next(self, event: AcqEvent) -> Result<AcqState, IllegalTransition> {
        use AcqEvent as E;
        use AcqState::*;
        let next = match (self, event) {
            (_, E::Failed) => Fault,
            (Idle, E::Configure) => Configuring,
            (Configuring, E::ArmConfirmed) => Armed,
            (Armed, E::Start) => Running,
            (Running, E::Pause) => Paused,
            (Paused, E::Resume) => Running,
            (Running, E::Complete) => Finishing,
            (Running | Paused | Armed, E::Stop) => Finishing,
            (Finishing, E::Finished) => Idle,
            (Configuring | Armed | Running | Paused | Finishing, E::Abort) => Aborting,
            (Aborting, E::Aborted) => Aborted,
            (Aborted, E::Acknowledge) => Idle,
            (Fault, E::Reset) => Resetting,
            (Resetting, E::ResetDone) => Idle,
            _ => {
                return Err(IllegalTransition {
                    machine: "acquisition",
                    state: format!("{self:?}"),
                    event: format!("{event:?}"),
                });
            }
        };
        Ok(next)
    }

    /// True for the states in which an acquisition is under way (devices may be moving).
    pub fn is_active(self) -> bool {
        !matches!(self, AcqState::Idle | AcqState::Aborted | AcqState::Fault)
    }
}

impl fmt::Display for AcqState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Every (state, event) pair: the listed ones go where the table says, all others are
    /// errors that name the state and the event.
    #[test]
    fn health_every_state_event_pair() {
        use Health::*;
        use HealthEvent::*;
        let mut legal: HashMap<(Health, HealthEvent), Health> = HashMap::new();
        for s in Health::ALL {
            legal.insert((s, Failed), Fault);
            legal.insert((s, Disconnect), Disconnected);
        }
        legal.insert((Disconnected, Connect), Connecting);
        legal.insert((Connecting, Connected), Ready);
        legal.insert((Ready, StartWork), Busy);
        legal.insert((Busy, WorkDone), Ready);
        legal.insert((Fault, Reset), Connecting);
        let mut n = 0;
        for s in Health::ALL {
            for e in HealthEvent::ALL {
                n += 1;
                match (legal.get(&(s, e)), s.next(e)) {
                    (Some(want), Ok(got)) => assert_eq!(*want, got, "{s:?} + {e:?}"),
                    (None, Err(err)) => {
                        let msg = err.to_string();
                        assert!(
                            msg.contains(&format!("{s:?}")) && msg.contains(&format!("{e:?}")),
                            "{msg}"
                        );
                    }
                    (want, got) => panic!("{s:?} + {e:?}: expected {want:?}, got {got:?}"),
                }
            }
        }
        assert_eq!(n, 35);
    }

    #[test]
    fn acquisition_every_state_event_pair() {
        use AcqEvent as E;
        use AcqState::*;
        let mut legal: HashMap<(AcqState, AcqEvent), AcqState> = HashMap::new();
        for s in AcqState::ALL {
            legal.insert((s, E::Failed), Fault);
        }
        for (s, e, t) in [
            (Idle, E::Configure, Configuring),
            (Configuring, E::ArmConfirmed, Armed),
            (Armed, E::Start, Running),
            (Running, E::Pause, Paused),
            (Paused, E::Resume, Running),
            (Running, E::Complete, Finishing),
            (Running, E::Stop, Finishing),
            (Paused, E::Stop, Finishing),
            (Armed, E::Stop, Finishing),
            (Finishing, E::Finished, Idle),
            (Configuring, E::Abort, Aborting),
            (Armed, E::Abort, Aborting),
            (Running, E::Abort, Aborting),
            (Paused, E::Abort, Aborting),
            (Finishing, E::Abort, Aborting),
            (Aborting, E::Aborted, Aborted),
            (Aborted, E::Acknowledge, Idle),
            (Fault, E::Reset, Resetting),
            (Resetting, E::ResetDone, Idle),
        ] {
            legal.insert((s, e), t);
        }
        let mut n = 0;
        for s in AcqState::ALL {
            for e in AcqEvent::ALL {
                n += 1;
                match (legal.get(&(s, e)), s.next(e)) {
                    (Some(want), Ok(got)) => assert_eq!(*want, got, "{s:?} + {e:?}"),
                    (None, Err(err)) => {
                        let msg = err.to_string();
                        assert!(
                            msg.contains(&format!("{s:?}")) && msg.contains(&format!("{e:?}")),
                            "{msg}"
                        );
                    }
                    (want, got) => panic!("{s:?} + {e:?}: expected {want:?}, got {got:?}"),
                }
            }
        }
        assert_eq!(n, 140);
    }

    /// Every state has a path back to Idle.
    #[test]
    fn every_acquisition_state_reaches_idle() {
        for start in AcqState::ALL {
            let mut seen = vec![start];
            let mut frontier = vec![start];
            while let Some(s) = frontier.pop() {
                for e in AcqEvent::ALL {
                    if let Ok(t) = s.next(e)
                        && !seen.contains(&t)
                    {
                        seen.push(t);
                        frontier.push(t);
                    }
                }
            }
            assert!(
                seen.contains(&AcqState::Idle),
                "{start:?} cannot reach Idle"
            );
        }
    }
}
