//! The execution engine: runs plan steps on an [`Executor`] with a checkpoint before every
//! device call (pause, resume, stop, abort honoured there), suspenders that hold the
//! sequence while a monitored condition holds, hooks, and cleanup on every exit path.

use crate::plan::{PlanAcquisition, PlanError, PlanStep};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use stemflow_core::NavShape;
use stemflow_core::devices::MicroscopeSettings;
use stemflow_core::metadata::MicroscopeState;

/// The outcome of one acquisition, as journalled: start, stop, exit status, frame counts,
/// lost frames, read-back metadata and the output file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunOutcome {
    /// The acquisition's label (`scan`, `dark`, `defocus -50.0 nm`, …).
    pub label: String,
    /// Start time, RFC 3339 UTC.
    pub start_time: String,
    /// Stop time, RFC 3339 UTC.
    pub stop_time: String,
    /// `completed`, `completed_with_loss`, `cancelled` or `fault`.
    pub exit_status: String,
    /// The error, if it failed.
    pub error: Option<String>,
    /// Frames expected.
    pub frames_expected: u64,
    /// Frames received intact.
    pub frames_received: u64,
    /// Frames lost.
    pub frames_lost: u64,
    /// Frames damaged.
    pub frames_damaged: u64,
    /// The recording written, if any.
    pub output_file: Option<PathBuf>,
    /// Read-back metadata (detector, microscope, scan), as JSON.
    pub metadata: serde_json::Value,
}

/// Errors an [`Executor`] reports.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// A device call failed (the message names the device, the setting, requested and
    /// actual values where it has them).
    #[error("{operation}: {message}")]
    Device {
        /// What was attempted (`set microscope`, `read monitor beam_current_na`, …).
        operation: String,
        /// The device's error.
        message: String,
    },
    /// An acquisition failed; its outcome (exit status `fault`) is kept for the journal.
    #[error("acquisition `{}`: {message}", outcome.label)]
    Acquisition {
        /// The error.
        message: String,
        /// What was recorded of the run.
        outcome: Box<RunOutcome>,
    },
}

/// The instrument as the engine sees it. The binary implements it over the orchestrator;
/// tests implement it with fakes. Every method blocks until the device has answered or its
/// own deadline has passed.
pub trait Executor: Send {
    /// Runs one acquisition (configure scan engine and detector, arm, scan, read out,
    /// disarm). Returns the outcome also when frames were lost (`completed_with_loss`).
    ///
    /// # Errors
    /// [`ExecError::Acquisition`] with the run's outcome when it failed.
    fn acquire(&mut self, acq: &PlanAcquisition) -> Result<RunOutcome, ExecError>;
    /// Applies microscope settings and returns the state read back.
    ///
    /// # Errors
    /// [`ExecError::Device`] when a setting is rejected or does not take (naming the
    /// setting, the requested and the actual value).
    fn set_microscope(
        &mut self,
        settings: &MicroscopeSettings,
    ) -> Result<MicroscopeState, ExecError>;
    /// Reads the microscope state.
    ///
    /// # Errors
    /// [`ExecError::Device`].
    fn read_microscope(&mut self) -> Result<MicroscopeState, ExecError>;
    /// Scalar summaries of the last acquisition's results, e.g. `virtual.bf.mean`,
    /// `virtual.bf.contrast` (std / mean over the scan), `com.x.mean`.
    fn last_results(&self) -> BTreeMap<String, f64>;
    /// Reads a monitor (e.g. `beam_current_na`), in its unit.
    ///
    /// # Errors
    /// [`ExecError::Device`] for an unknown monitor or a failed read.
    fn read_monitor(&mut self, name: &str) -> Result<f64, ExecError>;
    /// Brings the instrument to a safe state: detector disarmed, scan stopped, and the beam
    /// blanked when `blank_beam`. Idempotent; called on every exit path of a sequence.
    ///
    /// # Errors
    /// [`ExecError::Device`].
    fn cleanup(&mut self, blank_beam: bool) -> Result<(), ExecError>;
}

/// Errors of a sequence.
#[derive(Debug, thiserror::Error)]
pub enum SequenceError {
    /// A plan's parameters are invalid.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The instrument failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// Stopped by the user at a checkpoint (after the current step).
    #[error("stopped by request at a checkpoint")]
    Stopped,
    /// Aborted by the user at a checkpoint.
    #[error("aborted by request at a checkpoint")]
    Aborted,
    /// A suspender held the sequence longer than its limit.
    #[error(
        "suspended for {waited_s:.1} s (limit {limit_s:.1} s) while {condition}; last value {value}"
    )]
    SuspendedTooLong {
        /// The condition, e.g. `beam_current_na < 0.5`.
        condition: String,
        /// Its last reading.
        value: f64,
        /// Seconds suspended.
        waited_s: f64,
        /// The limit, s.
        limit_s: f64,
    },
    /// The sequence (a queue unit, a script) ran past its time limit.
    #[error("ran past its time limit of {limit_s:.1} s (after {elapsed_s:.1} s)")]
    TimeLimit {
        /// The limit, s.
        limit_s: f64,
        /// Seconds since the sequence started.
        elapsed_s: f64,
    },
    /// A wait for a condition passed its deadline.
    #[error("waited {waited_s:.1} s for {what}: deadline passed")]
    Deadline {
        /// What was awaited.
        what: String,
        /// Seconds waited.
        waited_s: f64,
    },
    /// A sequence script failed.
    #[error("script {file}: {message}")]
    Script {
        /// The script file.
        file: String,
        /// The error, with its line and position where known.
        message: String,
    },
}

/// Commands to a running sequence, honoured at its next checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlState {
    /// Run.
    Run,
    /// Hold at the next checkpoint until resumed.
    Pause,
    /// End after the current step (cleanup runs).
    Stop,
    /// End at the next checkpoint (cleanup runs).
    Abort,
}

/// A handle to pause, resume, stop or abort a sequence from another thread.
#[derive(Clone, Debug)]
pub struct Control {
    inner: Arc<(Mutex<ControlState>, Condvar)>,
}

impl Default for Control {
    fn default() -> Self {
        Self {
            inner: Arc::new((Mutex::new(ControlState::Run), Condvar::new())),
        }
    }
}

impl Control {
    fn set(&self, s: ControlState) {
        let (m, cv) = &*self.inner;
        if let Ok(mut g) = m.lock() {
            // Abort overrides everything; stop is not undone by a resume.
            if *g != ControlState::Abort && !(*g == ControlState::Stop && s != ControlState::Abort)
            {
                *g = s;
            }
        }
        cv.notify_all();
    }

    /// Holds the sequence at its next checkpoint.
    pub fn pause(&self) {
        self.set(ControlState::Pause);
    }

    /// Lets a paused sequence go on.
    pub fn resume(&self) {
        self.set(ControlState::Run);
    }

    /// Ends the sequence at its next checkpoint (cleanup runs).
    pub fn stop(&self) {
        self.set(ControlState::Stop);
    }

    /// Ends the sequence at its next checkpoint, reported as aborted (cleanup runs).
    pub fn abort(&self) {
        self.set(ControlState::Abort);
    }

    /// The current command.
    pub fn state(&self) -> ControlState {
        self.inner
            .0
            .lock()
            .map(|g| *g)
            .unwrap_or(ControlState::Abort)
    }

    /// Waits while paused; returns the error for stop or abort.
    ///
    /// # Errors
    /// [`SequenceError::Stopped`] or [`SequenceError::Aborted`].
    pub fn checkpoint(&self) -> Result<(), SequenceError> {
        let (m, cv) = &*self.inner;
        let mut g = m.lock().map_err(|_| SequenceError::Aborted)?;
        loop {
            match *g {
                ControlState::Run => return Ok(()),
                ControlState::Stop => return Err(SequenceError::Stopped),
                ControlState::Abort => return Err(SequenceError::Aborted),
                // Paused by the user: no deadline on the user, but wake regularly.
                ControlState::Pause => {
                    g = cv
                        .wait_timeout(g, Duration::from_millis(100))
                        .map_err(|_| SequenceError::Aborted)?
                        .0;
                }
            }
        }
    }
}

/// Watches a control file and applies its word to `control`: `pause`, `resume` (or
/// `run`), `stop`, `abort` (whitespace and case ignored; other text is ignored). Lets an
/// operator steer an unattended queue from another shell (`echo pause > out/control`).
/// Polls every `period`; the watcher ends when the returned guard is dropped.
pub fn watch_control_file(path: PathBuf, control: Control, period: Duration) -> ControlFileWatch {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d2 = done.clone();
    let thread = std::thread::Builder::new()
        .name("control-file".into())
        .spawn(move || {
            let mut last = String::new();
            while !d2.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(text) = std::fs::read_to_string(&path) {
                    let word = text.trim().to_ascii_lowercase();
                    if word != last {
                        match word.as_str() {
                            "pause" => control.pause(),
                            "resume" | "run" => control.resume(),
                            "stop" => control.stop(),
                            "abort" => control.abort(),
                            _ => {}
                        }
                        last = word;
                    }
                }
                std::thread::sleep(period);
            }
        })
        .ok();
    ControlFileWatch { done, thread }
}

/// Ends the control-file watcher when dropped.
pub struct ControlFileWatch {
    done: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ControlFileWatch {
    fn drop(&mut self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Holds the sequence at its checkpoints while a monitor is below (or above) a threshold,
/// e.g. the beam current after a gun flash; resumes when it clears.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suspender {
    /// The monitor, as [`Executor::read_monitor`] knows it (e.g. `beam_current_na`).
    pub monitor: String,
    /// Suspend while the value is below this.
    pub below: Option<f64>,
    /// Suspend while the value is above this.
    pub above: Option<f64>,
    /// Give up (error) after this long suspended, s.
    #[serde(default = "default_max_suspend")]
    pub max_suspend_s: f64,
    /// Poll period while suspended, s.
    #[serde(default = "default_poll")]
    pub poll_s: f64,
}

fn default_max_suspend() -> f64 {
    3600.0
}

fn default_poll() -> f64 {
    1.0
}

impl Suspender {
    fn holds(&self, v: f64) -> bool {
        self.below.is_some_and(|b| v < b) || self.above.is_some_and(|a| v > a) || v.is_nan()
    }

    /// The condition as text (`beam_current_na < 0.5`).
    pub fn condition(&self) -> String {
        let mut c = Vec::new();
        if let Some(b) = self.below {
            c.push(format!("{} < {b}", self.monitor));
        }
        if let Some(a) = self.above {
            c.push(format!("{} > {a}", self.monitor));
        }
        c.join(" or ")
    }
}

/// Called for events the user may want to see (log lines).
pub type LogFn = Box<dyn Fn(&str) + Send>;

/// Called around acquisitions of a plan (the script hooks).
pub trait Hooks {
    /// Before an acquisition, once the settings are known; may change the scan grid
    /// (frames follow). Default: unchanged.
    ///
    /// # Errors
    /// Any [`SequenceError`] ends the plan.
    fn on_determine_nav_shape(&mut self, nav: NavShape) -> Result<NavShape, SequenceError> {
        Ok(nav)
    }
    /// Just before the acquisition is armed.
    ///
    /// # Errors
    /// Any [`SequenceError`] ends the plan.
    fn on_ready_for_data(&mut self, _acq: &PlanAcquisition) -> Result<(), SequenceError> {
        Ok(())
    }
    /// After an acquisition completed.
    ///
    /// # Errors
    /// Any [`SequenceError`] ends the plan.
    fn on_acquisition_done(&mut self, _outcome: &RunOutcome) -> Result<(), SequenceError> {
        Ok(())
    }
}

/// No hooks.
pub struct NoHooks;
impl Hooks for NoHooks {}

/// One device operation of a plan, as [`drive_steps`] hands it out.
#[derive(Clone, Debug, PartialEq)]
pub enum StepOp {
    /// Apply microscope settings.
    Microscope(MicroscopeSettings),
    /// Wait, s.
    Wait(f64),
    /// Run an acquisition.
    Acquire(PlanAcquisition),
}

/// Walks plan steps, calling `hooks` around each acquisition and `perform` for each device
/// operation. `perform` is called with no hook running, so a hook may itself use the
/// instrument (scripts: a hook that changes the defocus).
///
/// # Errors
/// The first error of a hook or of `perform`.
pub fn drive_steps(
    steps: &[PlanStep],
    hooks: &mut dyn Hooks,
    perform: &mut dyn FnMut(StepOp) -> Result<Option<RunOutcome>, SequenceError>,
) -> Result<Vec<RunOutcome>, SequenceError> {
    let mut scan = None;
    let mut det = None;
    let mut out = Vec::new();
    for step in steps {
        match step {
            PlanStep::ApplyMicroscope(m) => {
                perform(StepOp::Microscope(m.clone()))?;
            }
            PlanStep::ConfigureScan(s) => scan = Some(s.clone()),
            PlanStep::ConfigureDetector(d) => det = Some(d.clone()),
            PlanStep::Wait { seconds } => {
                perform(StepOp::Wait(*seconds))?;
            }
            PlanStep::Acquire { label, .. } => {
                let Some(mut detector) = det.clone() else {
                    return Err(PlanError::Parameter {
                        plan: "?",
                        param: "steps",
                        value: label.clone(),
                        problem: "acquire before the detector is configured".into(),
                    }
                    .into());
                };
                let mut scan = scan.clone();
                let nav = hooks.on_determine_nav_shape(detector.nav_shape)?;
                if nav.is_empty() {
                    return Err(PlanError::Parameter {
                        plan: "?",
                        param: "nav_shape",
                        value: nav.to_string(),
                        problem: "on_determine_nav_shape returned an empty grid".into(),
                    }
                    .into());
                }
                detector.nav_shape = nav;
                if let Some(s) = scan.as_mut() {
                    s.nav_shape = nav;
                }
                let acq = PlanAcquisition {
                    label: label.clone(),
                    scan,
                    detector,
                    output: None,
                };
                hooks.on_ready_for_data(&acq)?;
                if let Some(o) = perform(StepOp::Acquire(acq))? {
                    hooks.on_acquisition_done(&o)?;
                    out.push(o);
                }
            }
        }
    }
    Ok(out)
}

/// A sequence's view of the instrument: the executor, the control handle, the suspenders,
/// the output folder and a log. One per sequence; single-threaded (scripts run their
/// session on their own thread).
pub struct Session {
    exec: Box<dyn Executor>,
    control: Control,
    suspenders: Vec<Suspender>,
    output_dir: Option<PathBuf>,
    acquisitions: u64,
    outcomes: Vec<RunOutcome>,
    log: LogFn,
    /// Blank the beam in [`cleanup`](Self::cleanup).
    pub blank_beam_on_cleanup: bool,
    /// When the running sequence started and how long it may take
    /// ([`Session::set_time_limit`]).
    time_limit: Option<TimeLimit>,
}

/// A sequence's time limit: when it started and how long it may run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimeLimit {
    /// When the sequence started.
    pub started: Instant,
    /// How long it may run.
    pub limit: Duration,
}

impl TimeLimit {
    /// A limit of `limit` from now.
    pub fn from_now(limit: Duration) -> Self {
        Self {
            started: Instant::now(),
            limit,
        }
    }

    /// [`SequenceError::TimeLimit`] once the limit has passed.
    ///
    /// # Errors
    /// [`SequenceError::TimeLimit`] with the limit and the time elapsed.
    pub fn check(&self) -> Result<(), SequenceError> {
        let elapsed = self.started.elapsed();
        if elapsed >= self.limit {
            return Err(SequenceError::TimeLimit {
                limit_s: self.limit.as_secs_f64(),
                elapsed_s: elapsed.as_secs_f64(),
            });
        }
        Ok(())
    }
}

impl Session {
    /// A session over `exec`, writing recordings into `output_dir` (none: not recorded).
    pub fn new(exec: Box<dyn Executor>, control: Control, output_dir: Option<PathBuf>) -> Self {
        Self {
            exec,
            control,
            suspenders: Vec::new(),
            output_dir,
            acquisitions: 0,
            outcomes: Vec::new(),
            log: Box::new(|m| tracing::info!("{m}")),
            blank_beam_on_cleanup: false,
            time_limit: None,
        }
    }

    /// Limits what runs from now on (a queue unit, a script) to `limit`: every checkpoint
    /// and every sleep after it fails with [`SequenceError::TimeLimit`], and a script's
    /// busy loop is interrupted. `None` lifts the limit.
    pub fn set_time_limit(&mut self, limit: Option<Duration>) {
        self.time_limit = limit.map(TimeLimit::from_now);
    }

    /// The running sequence's time limit, if any.
    pub fn time_limit(&self) -> Option<TimeLimit> {
        self.time_limit
    }

    /// Sets where log lines go.
    pub fn set_log(&mut self, log: LogFn) {
        self.log = log;
    }

    /// Writes a log line.
    pub fn log(&self, msg: &str) {
        (self.log)(msg);
    }

    /// Adds a suspender, checked at every checkpoint.
    pub fn add_suspender(&mut self, s: Suspender) {
        self.suspenders.push(s);
    }

    /// Sets the output folder of the next acquisitions (numbered from 000 again).
    pub fn set_output_dir(&mut self, dir: Option<PathBuf>) {
        self.output_dir = dir;
        self.acquisitions = 0;
    }

    /// The control handle.
    pub fn control(&self) -> &Control {
        &self.control
    }

    /// The executor.
    pub fn executor(&mut self) -> &mut dyn Executor {
        self.exec.as_mut()
    }

    /// Gives the executor back.
    pub fn into_executor(self) -> Box<dyn Executor> {
        self.exec
    }

    /// Takes the outcomes of the acquisitions run since the last call.
    pub fn take_outcomes(&mut self) -> Vec<RunOutcome> {
        std::mem::take(&mut self.outcomes)
    }

    /// Puts outcomes back (a script thread took them for its result).
    pub fn restore_outcomes(&mut self, outs: Vec<RunOutcome>) {
        self.outcomes.extend(outs);
    }

    /// A checkpoint: honours pause/stop/abort, then holds while a suspender's condition
    /// holds.
    ///
    /// # Errors
    /// [`SequenceError::Stopped`], [`SequenceError::Aborted`],
    /// [`SequenceError::SuspendedTooLong`], or a failed monitor read.
    pub fn checkpoint(&mut self) -> Result<(), SequenceError> {
        self.control.checkpoint()?;
        if let Some(t) = &self.time_limit {
            t.check()?;
        }
        for i in 0..self.suspenders.len() {
            let s = self.suspenders[i].clone();
            let started = Instant::now();
            let mut announced = false;
            loop {
                let v = self.exec.read_monitor(&s.monitor)?;
                if !s.holds(v) {
                    if announced {
                        self.log(&format!(
                            "resumed: {} cleared ({} = {v}) after {:.1} s",
                            s.condition(),
                            s.monitor,
                            started.elapsed().as_secs_f64()
                        ));
                    }
                    break;
                }
                if !announced {
                    self.log(&format!(
                        "suspended while {} ({} = {v})",
                        s.condition(),
                        s.monitor
                    ));
                    announced = true;
                }
                let waited = started.elapsed().as_secs_f64();
                if waited >= s.max_suspend_s {
                    return Err(SequenceError::SuspendedTooLong {
                        condition: s.condition(),
                        value: v,
                        waited_s: waited,
                        limit_s: s.max_suspend_s,
                    });
                }
                self.sleep(s.poll_s.clamp(0.001, 60.0))?;
            }
        }
        Ok(())
    }

    /// Sleeps `seconds`, honouring stop/abort every 50 ms (pause extends the wait).
    ///
    /// # Errors
    /// [`SequenceError::Stopped`] or [`SequenceError::Aborted`].
    pub fn sleep(&mut self, seconds: f64) -> Result<(), SequenceError> {
        let end = Instant::now() + Duration::from_secs_f64(seconds.clamp(0.0, 1e6));
        loop {
            self.control.checkpoint()?;
            if let Some(t) = &self.time_limit {
                t.check()?;
            }
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            std::thread::sleep((end - now).min(Duration::from_millis(50)));
        }
    }

    /// Applies microscope settings after a checkpoint.
    ///
    /// # Errors
    /// Checkpoint errors or [`ExecError::Device`].
    pub fn set_microscope(
        &mut self,
        s: &MicroscopeSettings,
    ) -> Result<MicroscopeState, SequenceError> {
        self.checkpoint()?;
        Ok(self.exec.set_microscope(s)?)
    }

    /// Runs one acquisition after a checkpoint, recording into its own folder `NNN_label/`
    /// of the output folder (`recording.hspy`, with run.json and the images beside it, as
    /// every command writes them); the outcome is kept for
    /// [`take_outcomes`](Self::take_outcomes).
    ///
    /// # Errors
    /// Checkpoint errors, [`ExecError::Acquisition`] (its outcome is kept too), or
    /// [`SequenceError::Aborted`] when the acquisition ended cancelled (its outcome is kept).
    pub fn acquire(&mut self, mut acq: PlanAcquisition) -> Result<RunOutcome, SequenceError> {
        self.checkpoint()?;
        if acq.output.is_none()
            && let Some(dir) = &self.output_dir
        {
            let name: String = acq
                .label
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            acq.output = Some(
                dir.join(format!("{:03}_{name}", self.acquisitions))
                    .join(stemflow_core::metadata::RECORDING_FILE),
            );
        }
        self.acquisitions += 1;
        self.log(&format!(
            "acquire `{}`: {} frames{}",
            acq.label,
            acq.detector.nav_shape.len(),
            acq.output
                .as_ref()
                .map(|p| format!(" → {}", p.display()))
                .unwrap_or_default()
        ));
        match self.exec.acquire(&acq) {
            Ok(o) => {
                self.outcomes.push(o.clone());
                if o.exit_status == "cancelled" {
                    // The user cancelled it (Ctrl-C): the sequence must not go on as if it
                    // had completed; a queue would journal the unit done and skip it on
                    // resume.
                    return Err(SequenceError::Aborted);
                }
                Ok(o)
            }
            Err(e) => {
                if let ExecError::Acquisition { outcome, .. } = &e {
                    self.outcomes.push((**outcome).clone());
                }
                Err(e.into())
            }
        }
    }

    /// Runs plan steps in order, a checkpoint before each device call, calling `hooks`
    /// around each acquisition.
    ///
    /// # Errors
    /// The first failing step's error.
    pub fn run_steps(
        &mut self,
        steps: &[PlanStep],
        hooks: &mut dyn Hooks,
    ) -> Result<Vec<RunOutcome>, SequenceError> {
        drive_steps(steps, hooks, &mut |op| self.perform(op))
    }

    /// Performs one operation of [`drive_steps`].
    ///
    /// # Errors
    /// As [`set_microscope`](Self::set_microscope), [`sleep`](Self::sleep),
    /// [`acquire`](Self::acquire).
    pub fn perform(&mut self, op: StepOp) -> Result<Option<RunOutcome>, SequenceError> {
        match op {
            StepOp::Microscope(m) => {
                self.log(&format!(
                    "microscope: {}",
                    crate::plan::describe_microscope(&m)
                ));
                self.set_microscope(&m).map(|_| None)
            }
            StepOp::Wait(s) => {
                self.checkpoint()?;
                self.sleep(s).map(|_| None)
            }
            StepOp::Acquire(a) => self.acquire(a).map(Some),
        }
    }

    /// Brings the instrument to a safe state (see [`Executor::cleanup`]); errors are logged,
    /// not returned, because cleanup runs on paths that already have an error.
    pub fn cleanup(&mut self) {
        let blank = self.blank_beam_on_cleanup;
        if let Err(e) = self.exec.cleanup(blank) {
            self.log(&format!("cleanup failed: {e}"));
        }
    }
}

/// A fake instrument for tests: records every call, fails on request, serves monitors from
/// scripted sequences of values.
#[derive(Clone)]
pub struct FakeExecutor {
    /// What happened, in order (`microscope …`, `acquire …`, `cleanup blank=…`).
    pub calls: Arc<Mutex<Vec<String>>>,
    /// Acquisition labels that fail.
    pub fail_labels: Vec<String>,
    /// Fail this many acquisitions (counting down), then succeed.
    pub fail_first: Arc<Mutex<u32>>,
    /// A microscope setting that does not take: (field, value it keeps).
    pub stuck_defocus: Option<f64>,
    /// Values a monitor returns, one per read (the last one repeats).
    pub monitors: Arc<Mutex<BTreeMap<String, Vec<f64>>>>,
    /// Results returned by `last_results`, keyed by acquisition count.
    pub results: BTreeMap<String, f64>,
    /// The microscope state.
    pub state: Arc<Mutex<MicroscopeState>>,
    /// Seconds each acquisition takes.
    pub acquire_s: f64,
    /// Acquisition labels that end cancelled (as after a user's Ctrl-C): half the frames.
    pub cancel_labels: Vec<String>,
}

impl Default for FakeExecutor {
    /// In focus at 200 kV, beam on, no faults, instant acquisitions.
    fn default() -> Self {
        Self {
            calls: Arc::default(),
            fail_labels: Vec::new(),
            fail_first: Arc::default(),
            stuck_defocus: None,
            monitors: Arc::default(),
            results: BTreeMap::new(),
            state: Arc::new(Mutex::new(MicroscopeState {
                high_tension_v: 200e3,
                camera_length_m: 0.15,
                convergence_angle_rad: 10e-3,
                magnification: 100e3,
                defocus_m: 0.0,
                beam_blanked: false,
                field_of_view_m: None,
            })),
            acquire_s: 0.0,
            cancel_labels: Vec::new(),
        }
    }
}

impl FakeExecutor {
    fn note(&self, s: String) {
        if let Ok(mut c) = self.calls.lock() {
            c.push(s);
        }
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl Executor for FakeExecutor {
    fn acquire(&mut self, acq: &PlanAcquisition) -> Result<RunOutcome, ExecError> {
        self.note(format!("acquire {} {}", acq.label, acq.detector.nav_shape));
        std::thread::sleep(Duration::from_secs_f64(self.acquire_s));
        let frames = acq.detector.nav_shape.len() as u64;
        let mut o = RunOutcome {
            label: acq.label.clone(),
            exit_status: "completed".into(),
            frames_expected: frames,
            frames_received: frames,
            output_file: acq.output.clone(),
            ..Default::default()
        };
        let forced = self.fail_first.lock().map(|mut n| {
            let f = *n > 0;
            *n = n.saturating_sub(1);
            f
        });
        if self.cancel_labels.contains(&acq.label) {
            o.exit_status = "cancelled".into();
            o.frames_received = frames / 2;
            return Ok(o);
        }
        if self.fail_labels.contains(&acq.label) || forced.unwrap_or(false) {
            o.exit_status = "fault".into();
            o.frames_received = 0;
            o.frames_lost = frames;
            return Err(ExecError::Acquisition {
                message: "fake detector failure".into(),
                outcome: Box::new(o),
            });
        }
        Ok(o)
    }

    fn set_microscope(&mut self, s: &MicroscopeSettings) -> Result<MicroscopeState, ExecError> {
        self.note(format!(
            "microscope {}",
            crate::plan::describe_microscope(s)
        ));
        let mut st = self.state.lock().map_err(|_| ExecError::Device {
            operation: "set microscope".into(),
            message: "poisoned".into(),
        })?;
        if let Some(d) = s.defocus_m {
            if let Some(kept) = self.stuck_defocus {
                return Err(ExecError::Device {
                    operation: "set microscope".into(),
                    message: format!(
                        "fake: `defocus_m` rejected: requested {d}, device reports {kept} (read back)"
                    ),
                });
            }
            st.defocus_m = d;
        }
        if let Some(b) = s.beam_blanked {
            st.beam_blanked = b;
        }
        Ok(st.clone())
    }

    fn read_microscope(&mut self) -> Result<MicroscopeState, ExecError> {
        self.state
            .lock()
            .map(|s| s.clone())
            .map_err(|_| ExecError::Device {
                operation: "read microscope".into(),
                message: "poisoned".into(),
            })
    }

    fn last_results(&self) -> BTreeMap<String, f64> {
        let mut r = self.results.clone();
        let df = self.state.lock().map(|s| s.defocus_m).unwrap_or(0.0);
        // A contrast that peaks in focus, for refocus scripts.
        r.insert(
            "virtual.bf.contrast".into(),
            1.0 / (1.0 + (df * 1e8).powi(2)),
        );
        r
    }

    fn read_monitor(&mut self, name: &str) -> Result<f64, ExecError> {
        let mut m = self.monitors.lock().map_err(|_| ExecError::Device {
            operation: "read monitor".into(),
            message: "poisoned".into(),
        })?;
        match m.get_mut(name) {
            Some(v) if v.len() > 1 => Ok(v.remove(0)),
            Some(v) if v.len() == 1 => Ok(v[0]),
            _ => Err(ExecError::Device {
                operation: format!("read monitor `{name}`"),
                message: "no such monitor".into(),
            }),
        }
    }

    fn cleanup(&mut self, blank_beam: bool) -> Result<(), ExecError> {
        self.note(format!("cleanup blank={blank_beam}"));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{DefocusSeriesPlan, Plan, Stem4dScanPlan};
    use stemflow_core::{DType, SigShape};

    fn scan() -> Stem4dScanPlan {
        Stem4dScanPlan {
            nav_shape: NavShape::new(4, 4),
            sig_shape: SigShape::new(8, 8),
            dtype: DType::U16,
            dwell_time_s: 1e-3,
            flyback_s: 0.0,
            exposure_s: 1e-3,
            counter_depth: Some(12),
            microscope: None,
        }
    }

    #[test]
    fn runs_a_defocus_series_in_order() {
        let fake = FakeExecutor::default();
        let mut s = Session::new(
            Box::new(fake.clone()),
            Control::default(),
            Some("/o".into()),
        );
        let p = Plan::DefocusSeries(DefocusSeriesPlan {
            scan: scan(),
            defocus_m: vec![-1e-8, 1e-8],
        });
        let out = s.run_steps(&p.steps().unwrap(), &mut NoHooks).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[1].output_file,
            Some("/o/001_defocus_10.0_nm/recording.hspy".into())
        );
        assert_eq!(
            fake.calls(),
            vec![
                "microscope defocus -10.0 nm",
                "acquire defocus -10.0 nm 4x4",
                "microscope defocus 10.0 nm",
                "acquire defocus 10.0 nm 4x4"
            ]
        );
    }

    #[test]
    fn a_cancelled_acquisition_aborts_the_sequence_and_keeps_its_outcome() {
        let p = Plan::DefocusSeries(DefocusSeriesPlan {
            scan: scan(),
            defocus_m: vec![-1e-8, 1e-8],
        });
        let fake = FakeExecutor {
            cancel_labels: vec!["defocus -10.0 nm".into()],
            ..Default::default()
        };
        let mut s = Session::new(Box::new(fake.clone()), Control::default(), None);
        let e = s.run_steps(&p.steps().unwrap(), &mut NoHooks).unwrap_err();
        assert!(matches!(e, SequenceError::Aborted), "{e}");
        // The second defocus never ran; the cancelled run's outcome is kept.
        assert_eq!(
            fake.calls(),
            vec![
                "microscope defocus -10.0 nm",
                "acquire defocus -10.0 nm 4x4"
            ]
        );
        let outs = s.take_outcomes();
        assert_eq!(outs.len(), 1);
        assert_eq!(outs[0].exit_status, "cancelled");
        assert_eq!(outs[0].frames_received, 8);
    }

    #[test]
    fn stop_at_checkpoint_and_pause_holds() {
        let fake = FakeExecutor::default();
        let control = Control::default();
        let mut s = Session::new(Box::new(fake.clone()), control.clone(), None);
        control.pause();
        let c2 = control.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            c2.resume();
        });
        let started = Instant::now();
        s.checkpoint().unwrap();
        assert!(started.elapsed() >= Duration::from_millis(150));
        t.join().unwrap();
        control.stop();
        control.resume(); // a resume does not undo a stop
        let e = s.run_steps(&Plan::Stem4dScan(scan()).steps().unwrap(), &mut NoHooks);
        assert!(matches!(e, Err(SequenceError::Stopped)));
        assert!(fake.calls().is_empty(), "nothing ran after the stop");
    }

    #[test]
    fn a_control_file_pauses_resumes_and_stops() {
        let dir = std::env::temp_dir().join(format!("stemflow-ctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("control");
        let c = Control::default();
        let w = watch_control_file(f.clone(), c.clone(), Duration::from_millis(5));
        let wait_for = |want: ControlState| {
            let end = Instant::now() + Duration::from_secs(5);
            while c.state() != want && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(c.state(), want);
        };
        std::fs::write(&f, "pause\n").unwrap();
        wait_for(ControlState::Pause);
        std::fs::write(&f, " Resume").unwrap();
        wait_for(ControlState::Run);
        std::fs::write(&f, "stop").unwrap();
        wait_for(ControlState::Stop);
        drop(w);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn suspender_holds_until_the_beam_returns() {
        let fake = FakeExecutor::default();
        fake.monitors
            .lock()
            .unwrap()
            .insert("beam_current_na".into(), vec![1.0, 0.1, 0.1, 0.2, 1.0]);
        let mut s = Session::new(Box::new(fake.clone()), Control::default(), None);
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = lines.clone();
        s.set_log(Box::new(move |m| l2.lock().unwrap().push(m.to_string())));
        s.add_suspender(Suspender {
            monitor: "beam_current_na".into(),
            below: Some(0.5),
            above: None,
            max_suspend_s: 5.0,
            poll_s: 0.01,
        });
        s.checkpoint().unwrap(); // 1.0: clear
        s.checkpoint().unwrap(); // 0.1, 0.1, 0.2 suspended, then 1.0
        let lines = lines.lock().unwrap().join("\n");
        assert!(
            lines.contains("suspended while beam_current_na < 0.5"),
            "{lines}"
        );
        assert!(lines.contains("resumed"), "{lines}");
        // A beam that never returns: error after the limit.
        fake.monitors
            .lock()
            .unwrap()
            .insert("beam_current_na".into(), vec![0.0]);
        s.suspenders[0].max_suspend_s = 0.05;
        let e = s.checkpoint().unwrap_err().to_string();
        assert!(
            e.contains("beam_current_na < 0.5") && e.contains("limit"),
            "{e}"
        );
    }

    #[test]
    fn hooks_can_change_the_nav_shape() {
        struct Half;
        impl Hooks for Half {
            fn on_determine_nav_shape(&mut self, n: NavShape) -> Result<NavShape, SequenceError> {
                Ok(NavShape::new(n.rows / 2, n.cols))
            }
        }
        let fake = FakeExecutor::default();
        let mut s = Session::new(Box::new(fake.clone()), Control::default(), None);
        let out = s
            .run_steps(&Plan::Stem4dScan(scan()).steps().unwrap(), &mut Half)
            .unwrap();
        assert_eq!(out[0].frames_expected, 8);
    }
}
