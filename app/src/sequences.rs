//! `stemflow run` and `stemflow queue`: plans, sequence scripts and unattended queues
//! (stemflow-sequences) on the embedded simulated instrument, through the orchestrator.
//!
//! [`SimExecutor`] implements the sequences' `Executor` over the actors' `Instrument`:
//! acquisitions go through `Instrument::run_acquisition` (arm order, deadlines, cleanup,
//! run record), microscope settings through the supervised microscope actor (read back),
//! cleanup through the scan engine and detector actors.

use crate::instrument::{SimulatedInstrument, assemble_simulated, runtime};
use crate::options::{QueueRunOptions, ReductionChoice, RunOptions, SequenceOptions};
use crate::reductions::{self, Geometry, Reductions};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use stemflow_actors::detector::DetectorMsg;
use stemflow_actors::microscope::MicroscopeMsg;
use stemflow_actors::orchestrator::{AcquisitionRequest, Instrument, RunRecord};
use stemflow_actors::scan::ScanMsg;
use stemflow_config::Profile;
use stemflow_core::detector::ArmMode;
use stemflow_core::devices::MicroscopeSettings;
use stemflow_core::metadata::MicroscopeState;
use stemflow_core::result::BufferKind;
use stemflow_sequences::engine::{Control, ExecError, Executor, RunOutcome, Session};
use stemflow_sequences::plan::{PlanAcquisition, PlanSpec, ScanDefaults};
use stemflow_sequences::queue::{
    Action, Queue, QueueOptions, SCRIPT_TIME_LIMIT_S, default_time_limit, run_queue,
};
use stemflow_sequences::script::{ScriptSource, run_script};
use stemflow_simulators::microscope::{MicroscopeFaults, MicroscopeSetting};

/// Deadline for one control call to an actor (the actors' own device deadlines are 10 s).
const CALL_DEADLINE: Duration = Duration::from_secs(15);

/// The simulated beam (emission) current, nA, outside an injected dip.
const SIM_BEAM_CURRENT_NA: f64 = 1.0;

/// The simulated beam current during an injected dip (a gun flash), nA.
const SIM_DIP_CURRENT_NA: f64 = 0.1;

/// The embedded simulated instrument driven by the orchestrator, as a sequences executor.
pub struct SimExecutor {
    rt: tokio::runtime::Runtime,
    inst: Option<Instrument>,
    _sim: crate::instrument::SimDevices,
    geometry: Geometry,
    /// The profile's `[reductions] spec` (default: the live-view set on `geometry`).
    reductions: std::sync::Arc<Reductions>,
    record_raw: bool,
    /// The user's calibration inputs, for every acquisition.
    calibration: stemflow_core::metadata::CalibrationInputs,
    started: std::time::Instant,
    /// Injected beam-current dip: (start, duration) in s after the instrument started.
    beam_dip: Option<(f64, f64)>,
}

fn device(operation: &str, message: impl ToString) -> ExecError {
    ExecError::Device {
        operation: operation.into(),
        message: message.to_string(),
    }
}

impl SimExecutor {
    /// Starts the simulated instrument of `profile` (Merlin simulator, scan engine and
    /// microscope simulators, all actors) with `faults` in the microscope; returns it and
    /// the plan defaults of the profile.
    ///
    /// # Errors
    /// A simulator or an actor failed to start.
    pub fn start(
        profile: &Profile,
        faults: MicroscopeFaults,
        recording: crate::output::RecordingOutput,
        calibration: stemflow_core::metadata::CalibrationInputs,
    ) -> Result<(Self, ScanDefaults)> {
        let record_raw = recording.raw;
        let SimulatedInstrument {
            sim,
            spec,
            geometry,
            plan,
            reductions,
        } = assemble_simulated(profile, faults, recording)?;
        let rt = runtime()?;
        let inst = rt
            .block_on(Instrument::start(spec))
            .map_err(|e| anyhow::anyhow!(e))
            .context("starting the instrument")?;
        Ok((
            Self {
                rt,
                inst: Some(inst),
                _sim: sim,
                geometry,
                reductions: std::sync::Arc::new(reductions),
                record_raw,
                calibration,
                started: std::time::Instant::now(),
                beam_dip: None,
            },
            ScanDefaults { scan: plan },
        ))
    }

    fn inst(&mut self) -> Result<&mut Instrument, ExecError> {
        self.inst
            .as_mut()
            .ok_or_else(|| device("instrument", "already shut down"))
    }
}

impl Drop for SimExecutor {
    fn drop(&mut self) {
        if let Some(inst) = self.inst.take() {
            self.rt.block_on(inst.shutdown());
        }
    }
}

fn outcome(label: &str, r: &RunRecord) -> RunOutcome {
    RunOutcome {
        label: label.into(),
        start_time: r.start_time.clone(),
        stop_time: r.stop_time.clone(),
        exit_status: serde_json::to_value(r.exit_status)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        error: r.error.clone(),
        frames_expected: r.frames_expected,
        frames_received: r.frames_received,
        frames_lost: r.frames_lost,
        frames_damaged: r.frames_damaged,
        output_file: r.output_file.clone(),
        metadata: serde_json::to_value(&r.metadata).unwrap_or_default(),
    }
}

impl Executor for SimExecutor {
    fn acquire(&mut self, acq: &PlanAcquisition) -> Result<RunOutcome, ExecError> {
        if let Some(dir) = acq.output.as_ref().and_then(|p| p.parent()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| device(&format!("creating {}", dir.display()), e))?;
        }
        let req = AcquisitionRequest {
            mode: ArmMode::Active,
            detector: acq.detector.clone(),
            scan: acq.scan.clone(),
            microscope: None,
            arm_deadline: Duration::from_secs(5),
            deadline_margin: Duration::from_secs(10),
            output: acq.output.clone(),
            pipeline: reductions::builder_with(
                Some(self.geometry),
                std::sync::Arc::clone(&self.reductions),
                self.record_raw,
            ),
            label: "simulated".into(),
            nav_from_detector: false,
            ready_hook: None,
            calibration: self.calibration.clone(),
        };
        let rt = &self.rt;
        let inst = self
            .inst
            .as_mut()
            .ok_or_else(|| device("acquire", "instrument shut down"))?;
        // Progress on stderr while it runs: a bar, or without a terminal a line every 5 s.
        let view = {
            let _runtime = rt.enter();
            tokio::spawn(crate::progress::show_frames(inst.status()))
        };
        let r = rt.block_on(inst.run_acquisition(req));
        view.abort();
        let _ = rt.block_on(view);
        // Each acquisition's folder gets what a single run's gets: run.json and the images
        // beside the recording (the sequence goes on if they cannot be written; said).
        if let Some(dir) = acq.output.as_ref().and_then(|p| p.parent()) {
            let record = match &r {
                Ok(rec) => rec,
                Err(f) => &f.record,
            };
            let results = inst.last_results().results.clone();
            if let Err(e) = write_acquisition_outputs(dir, record, &results) {
                eprintln!("acquisition `{}`: {e:#}", acq.label);
            }
        }
        match r {
            Ok(r) => Ok(outcome(&acq.label, &r)),
            Err(f) => Err(ExecError::Acquisition {
                message: f.error.to_string(),
                outcome: Box::new(outcome(&acq.label, &f.record)),
            }),
        }
    }

    fn set_microscope(
        &mut self,
        settings: &MicroscopeSettings,
    ) -> Result<MicroscopeState, ExecError> {
        let op = "set microscope";
        let m = self
            .inst()?
            .refs()
            .microscope
            .ok_or_else(|| device(op, "the instrument has no microscope"))?;
        let s = settings.clone();
        self.rt
            .block_on(m.call(|r| MicroscopeMsg::Apply(s, r), Some(CALL_DEADLINE)))
            .map_err(|e| device(op, format!("microscope actor: {e}")))?
            .success_or_else(|| {
                device(
                    op,
                    format!("microscope actor: no reply within {CALL_DEADLINE:?}"),
                )
            })?
            .map_err(|e| device(op, e))
    }

    fn read_microscope(&mut self) -> Result<MicroscopeState, ExecError> {
        let op = "read microscope";
        let m = self
            .inst()?
            .refs()
            .microscope
            .ok_or_else(|| device(op, "the instrument has no microscope"))?;
        self.rt
            .block_on(m.call(MicroscopeMsg::Read, Some(CALL_DEADLINE)))
            .map_err(|e| device(op, format!("microscope actor: {e}")))?
            .success_or_else(|| {
                device(
                    op,
                    format!("microscope actor: no reply within {CALL_DEADLINE:?}"),
                )
            })?
            .map_err(|e| device(op, e))
    }

    fn last_results(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        let Some(inst) = &self.inst else { return out };
        for u in &inst.last_results().results {
            for b in u.buffers.iter().filter(|b| b.kind == BufferKind::Nav) {
                let v: Vec<f64> = b.data.iter().copied().filter(|x| x.is_finite()).collect();
                if v.is_empty() {
                    continue;
                }
                let n = v.len() as f64;
                let mean = v.iter().sum::<f64>() / n;
                let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
                let key = format!("{}.{}", u.udf, b.name);
                out.insert(format!("{key}.mean"), mean);
                out.insert(format!("{key}.std"), std);
                out.insert(
                    format!("{key}.min"),
                    v.iter().copied().fold(f64::INFINITY, f64::min),
                );
                out.insert(
                    format!("{key}.max"),
                    v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                );
                out.insert(
                    format!("{key}.contrast"),
                    if mean != 0.0 { std / mean.abs() } else { 0.0 },
                );
            }
        }
        out
    }

    fn read_monitor(&mut self, name: &str) -> Result<f64, ExecError> {
        match name {
            // Emission current, measured before the blanker: a dark reference does not
            // trip a beam-current suspender.
            "beam_current_na" => {
                let t = self.started.elapsed().as_secs_f64();
                Ok(match self.beam_dip {
                    Some((start, len)) if t >= start && t < start + len => SIM_DIP_CURRENT_NA,
                    _ => SIM_BEAM_CURRENT_NA,
                })
            }
            _ => Err(device(
                &format!("read monitor `{name}`"),
                "unknown monitor; the simulated instrument has `beam_current_na`",
            )),
        }
    }

    fn cleanup(&mut self, blank_beam: bool) -> Result<(), ExecError> {
        let refs = self.inst()?.refs();
        let mut errors = Vec::new();
        // Stop the trigger source first, then disarm (reverse of the arm order).
        if let Some(scan) = &refs.scan {
            let r = self
                .rt
                .block_on(scan.call(ScanMsg::Stop, Some(CALL_DEADLINE)));
            if let Some(e) = call_error(r.map(|c| c.success_or_else(|| ()))) {
                errors.push(format!("stop scan: {e}"));
            }
        }
        let r = self
            .rt
            .block_on(refs.detector.call(DetectorMsg::Disarm, Some(CALL_DEADLINE)));
        if let Some(e) = call_error(r.map(|c| c.success_or_else(|| ()))) {
            errors.push(format!("disarm detector: {e}"));
        }
        if blank_beam
            && let Err(e) = self.set_microscope(&MicroscopeSettings {
                beam_blanked: Some(true),
                ..Default::default()
            })
        {
            errors.push(format!("blank beam: {e}"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(device("cleanup", errors.join("; ")))
        }
    }
}

/// run.json and the PNG images of one acquisition of a sequence, in its folder `dir`.
///
/// # Errors
/// A file cannot be written (the error names it).
fn write_acquisition_outputs(
    dir: &Path,
    record: &RunRecord,
    results: &[stemflow_core::result::UdfResults],
) -> Result<()> {
    crate::output::write_run_record(dir, record, results)?;
    crate::output::write_images(
        dir,
        results,
        record.metadata.nav_shape,
        &crate::output::ImageOptions::for_record(record),
    )?;
    Ok(())
}

/// The error of an actor call that replies `Result<(), DeviceError>`, if any: messaging
/// failure, no reply within the deadline, or the device's error.
fn call_error<E: std::fmt::Display>(
    r: Result<Result<Result<(), stemflow_core::devices::DeviceError>, ()>, E>,
) -> Option<String> {
    match r {
        Ok(Ok(Ok(()))) => None,
        Ok(Ok(Err(e))) => Some(e.to_string()),
        Ok(Err(())) => Some(format!("no reply within {CALL_DEADLINE:?}")),
        Err(e) => Some(e.to_string()),
    }
}

/// Parses `START:DURATION` (s after the start), e.g. `0.5:1.0`.
fn parse_dip(text: &str) -> Result<(f64, f64)> {
    let bad =
        || anyhow::anyhow!("--sim-beam-dip {text}: expected START_S:DURATION_S, e.g. 0.5:1.0");
    let (a, b) = text.split_once(':').ok_or_else(bad)?;
    let (a, b): (f64, f64) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if !(a.is_finite() && b.is_finite() && a >= 0.0 && b >= 0.0) {
        return Err(bad());
    }
    Ok((a, b))
}

fn load_profile(p: Option<&Path>) -> Result<Profile> {
    Ok(match p {
        Some(p) => Profile::load(p)?,
        None => Profile::simulated(),
    })
}

fn faults(stuck: Option<&str>) -> Result<MicroscopeFaults> {
    use MicroscopeSetting as S;
    let stuck = match stuck {
        None => None,
        Some(name) => Some(
            [
                S::HighTension,
                S::CameraLength,
                S::ConvergenceAngle,
                S::Magnification,
                S::Defocus,
                S::BeamBlanked,
            ]
            .into_iter()
            .find(|s| s.field() == name)
            .with_context(|| {
                format!("--sim-stuck-setting {name}: not a microscope setting (e.g. defocus_m)")
            })?,
        ),
    };
    Ok(MicroscopeFaults { stuck })
}

/// The optics of a profile, applied once when a run or queue starts (plans then change
/// only what they name, so a refocus carries over to the next queue item).
fn profile_optics(profile: &Profile) -> MicroscopeSettings {
    let m = &profile.microscope;
    MicroscopeSettings {
        high_tension_v: Some(m.high_tension_v),
        camera_length_m: Some(m.camera_length_m),
        convergence_angle_rad: Some(m.convergence_angle_rad),
        magnification: Some(m.magnification),
        defocus_m: Some(m.defocus_m),
        beam_blanked: Some(false),
    }
}

/// The plan defaults of a profile (its scan and detector settings, no optics), without
/// starting anything.
fn defaults_of(profile: &Profile) -> ScanDefaults {
    ScanDefaults {
        scan: stemflow_sequences::Stem4dScanPlan {
            nav_shape: profile.nav_shape(),
            sig_shape: profile.sig_shape(),
            dtype: crate::registry::merlin_dtype_for_depth(profile.detector.counter_depth),
            dwell_time_s: profile.scan.dwell_time_s,
            flyback_s: profile.scan.flyback_s,
            exposure_s: profile
                .detector
                .exposure_s
                .min(profile.scan.dwell_time_s.max(1e-6)),
            counter_depth: Some(profile.detector.counter_depth),
            microscope: None,
        },
    }
}

/// The reductions of `profile`'s `[reductions] spec` (default: the live-view set) with the
/// command line's spec and ROI.
fn reductions_of(profile: &Profile, args: &ReductionChoice) -> Result<Reductions> {
    Reductions::load(profile.reductions.spec.as_deref(), None, None)
        .context("the profile's [reductions] spec")?
        .with_choice(args)
}

/// Starts the simulated instrument with `reductions` and applies the profile's optics.
fn start_instrument(
    profile: &Profile,
    args: &SequenceOptions,
    reductions: Reductions,
) -> Result<SimExecutor> {
    let (stuck, beam_dip, live_view) = (
        args.sim_stuck_setting.as_deref(),
        args.sim_beam_dip.as_deref(),
        args.live_view.as_ref(),
    );
    let recording = crate::output::recording_output(&args.recording, args.no_raw, Some(profile))?;
    let calibration = args.recording.calibration(
        profile.scan.step_nm,
        profile.scan.rotation_deg,
        profile.detector.pixel_pitch_um,
    );
    let (mut exec, _) = SimExecutor::start(profile, faults(stuck)?, recording, calibration)?;
    if let Some(opts) = live_view {
        let lv = exec.rt.block_on(crate::live_view::LiveView::bind(opts))?;
        lv.announce();
        if let Some(inst) = &exec.inst {
            // Spawned on the executor's runtime; it serves every acquisition of the
            // sequence and ends with the runtime.
            let _rt = exec.rt.enter();
            drop(lv.serve(inst.status()));
        }
    }
    exec.beam_dip = beam_dip.map(parse_dip).transpose()?;
    exec.reductions = std::sync::Arc::new(reductions);
    let optics = profile_optics(profile);
    println!(
        "instrument: simulated; optics from the profile: {}",
        stemflow_sequences::plan::describe_microscope(&optics)
    );
    exec.set_microscope(&optics)
        .context("applying the profile's optics")?;
    Ok(exec)
}

fn print_outcomes(outs: &[RunOutcome]) {
    for o in outs {
        println!(
            "run `{}`: {}, {} of {} frames, {} lost, {} damaged{}",
            o.label,
            o.exit_status,
            o.frames_received,
            o.frames_expected,
            o.frames_lost,
            o.frames_damaged,
            o.output_file
                .as_ref()
                .map(|p| format!(", {}", p.display()))
                .unwrap_or_default()
        );
    }
}

/// Watches `OUT/control` for pause, resume, stop or abort (a word left from an earlier
/// run is removed first, so it cannot stop this one).
fn control_file(
    out: &Path,
    control: &Control,
) -> Result<stemflow_sequences::engine::ControlFileWatch> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("creating output folder {}", out.display()))?;
    let path = out.join("control");
    let _ = std::fs::remove_file(&path);
    println!(
        "control: write pause, resume, stop or abort into {}",
        path.display()
    );
    Ok(stemflow_sequences::watch_control_file(
        path,
        control.clone(),
        Duration::from_millis(200),
    ))
}

/// Ctrl-C for `run` and `queue`: the first one aborts the sequence at its next checkpoint
/// (cleanup runs) and, with `cancel_acquisition`, also cancels the running acquisition
/// through the orchestrator (its recording is finished as `cancelled` with the frames so
/// far); the second quits at once. Returns the flag the first Ctrl-C sets.
fn interrupt_on_ctrl_c(
    exec: &SimExecutor,
    control: &Control,
    cancel_acquisition: bool,
) -> Arc<AtomicBool> {
    let cancel = exec
        .inst
        .as_ref()
        .filter(|_| cancel_acquisition)
        .map(Instrument::cancel_handle);
    let control = control.clone();
    let doing = if cancel.is_some() {
        "cancelling the acquisition and the sequence"
    } else {
        "stopping after the running acquisition"
    };
    crate::progress::on_ctrl_c(doing, move || {
        control.abort();
        if let Some(c) = cancel {
            c.cancel();
        }
    })
    .unwrap_or_else(|e| {
        tracing::warn!("{e:#}; Ctrl-C will end the process without cleanup");
        Arc::new(AtomicBool::new(false))
    })
}

/// The session of `stemflow run`: the simulated instrument started with `reductions`, the
/// stop signals wired to cancel it, log lines to stdout, the cleanup options and the time
/// limit `limit` set. Returns it with the flag a stop signal sets.
///
/// # Errors
/// The instrument cannot start, or a signal handler cannot be installed.
fn open_session(
    profile: &Profile,
    opts: &RunOptions,
    reductions: Reductions,
    control: &Control,
    limit: Duration,
) -> Result<(Session, Arc<AtomicBool>)> {
    let args = &opts.sequence;
    let exec = start_instrument(profile, args, reductions)?;
    let interrupted = interrupt_on_ctrl_c(&exec, control, true);
    let mut session = Session::new(Box::new(exec), control.clone(), Some(args.out.clone()));
    session.set_log(Box::new(|m| println!("{m}")));
    session.blank_beam_on_cleanup = opts.blank_beam_on_cleanup;
    session.set_time_limit(Some(limit));
    Ok((session, interrupted))
}

/// A sequence's time limit: `max_duration_s` when given (checked), else `default`.
///
/// # Errors
/// A limit that is not a positive number of seconds (at most 10^7), or the default's error.
fn time_limit(
    max_duration_s: Option<f64>,
    default: impl FnOnce() -> Result<Duration>,
) -> Result<Duration> {
    match max_duration_s {
        Some(s) if s > 0.0 && s <= 1e7 => Ok(Duration::from_secs_f64(s)),
        Some(s) => bail!("--max-duration-s {s}: must be more than 0 and at most 10^7 s"),
        None => default(),
    }
}

/// The error of a sequence the user cancelled: the frames of its last acquisition.
fn cancelled(outs: &[RunOutcome]) -> anyhow::Error {
    let frames = outs.last().map(|o| (o.frames_received, o.frames_expected));
    crate::progress::Cancelled::with_frames(frames).into()
}

/// `stemflow run FILE`: one plan (`.toml`) or sequence script (`.rhai`) on the simulated
/// instrument; `--dry-run` prints the steps, device settings, duration and data volume.
///
/// # Errors
/// The profile, reductions, plan or script cannot be loaded or do not fit, the instrument
/// cannot start, a step failed, frames were lost, or [`crate::progress::Cancelled`] when
/// the user cancelled it.
pub fn run(opts: &RunOptions) -> Result<()> {
    let file = &opts.file;
    let args = &opts.sequence;
    let profile = load_profile(args.profile.as_deref())?;
    // Parsed now, dry runs included; plans are also checked against each scan below.
    let reductions = reductions_of(&profile, &args.reductions)?;
    let control = Control::default();
    let _watch = (!args.dry_run)
        .then(|| control_file(&args.out, &control))
        .transpose()?;
    let is_script = file.extension().is_some_and(|e| e == "rhai");
    let defaults = defaults_of(&profile);
    if is_script {
        let src = ScriptSource::load(file)?;
        src.check()?;
        if args.dry_run {
            println!(
                "script {}: syntax ok; not costed (its steps depend on its results)",
                file.display()
            );
            return Ok(());
        }
        let limit = time_limit(opts.max_duration_s, || {
            Ok(Duration::from_secs_f64(SCRIPT_TIME_LIMIT_S))
        })?;
        let (session, interrupted) = open_session(&profile, opts, reductions, &control, limit)?;
        let (mut session, r) = run_script(session, &src, &defaults);
        // On failure the acquisitions run so far stay in the session.
        let outs = r
            .as_ref()
            .map_or_else(|_| session.take_outcomes(), Clone::clone);
        print_outcomes(&outs);
        drop(session);
        if interrupted.load(Ordering::SeqCst) {
            return Err(cancelled(&outs));
        }
        return r.map(|_| ()).map_err(Into::into);
    }
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let spec =
        PlanSpec::from_toml_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let plan = spec
        .build(&defaults)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    print!("{}", plan.dry_run()?);
    let steps = plan.steps()?;
    reductions
        .check_plan(&Geometry::default(), profile.sig_shape(), &steps)
        .with_context(|| format!("plan {}", file.display()))?;
    if !reductions.is_default() {
        println!("{}", reductions.describe());
    }
    if args.dry_run {
        println!("dry run: no device touched");
        return Ok(());
    }
    let limit = time_limit(opts.max_duration_s, || {
        Ok(default_time_limit(&Action::Plan(plan.clone()))?)
    })?;
    let (mut session, interrupted) = open_session(&profile, opts, reductions, &control, limit)?;
    let r = session.run_steps(&steps, &mut stemflow_sequences::NoHooks);
    session.cleanup();
    let outs = session.take_outcomes();
    print_outcomes(&outs);
    if interrupted.load(Ordering::SeqCst) {
        return Err(cancelled(&outs));
    }
    r?;
    if let Some(o) = outs
        .iter()
        .find(|o| o.frames_lost > 0 || o.frames_damaged > 0)
    {
        bail!(
            "run `{}`: {} of {} frames lost and {} damaged",
            o.label,
            o.frames_lost,
            o.frames_expected,
            o.frames_damaged
        );
    }
    Ok(())
}

/// `stemflow queue FILE.toml`: validates the whole queue, then runs it unattended with a
/// journal in `--out`; `--resume` continues after the last finished unit.
///
/// # Errors
/// The profile, reductions or queue cannot be loaded or do not fit, the instrument cannot
/// start, the journal cannot be written, or [`crate::progress::Cancelled`] when the user
/// cancelled it.
pub fn queue(opts: &QueueRunOptions) -> Result<()> {
    let (file, resume) = (&opts.file, opts.resume);
    let args = &opts.sequence;
    let profile = load_profile(args.profile.as_deref())?;
    let reductions = reductions_of(&profile, &args.reductions)?;
    let defaults = defaults_of(&profile);
    let q = Queue::load(file, &defaults)?;
    // Every plan unit's scans against the reductions now, not hours later when it is armed.
    for unit in &q.units {
        if let Action::Plan(plan) = &unit.action {
            reductions
                .check_plan(&Geometry::default(), profile.sig_shape(), &plan.steps()?)
                .with_context(|| format!("queue unit {}", unit.key))?;
        }
    }
    if !reductions.is_default() {
        println!("{}", reductions.describe());
    }
    if args.dry_run {
        print!("{}", q.dry_run());
        println!("dry run: no device touched");
        return Ok(());
    }
    println!("queue {}: {} units validated", q.name, q.units.len());
    let exec = start_instrument(&profile, args, reductions)?;
    let opts = QueueOptions {
        out: args.out.clone(),
        resume,
    };
    let control = Control::default();
    let _watch = control_file(&args.out, &control)?;
    // The running acquisition is cancelled (its frames so far recorded as `cancelled`) and
    // its unit journaled `stopped`, so `--resume` runs that unit again.
    let interrupted = interrupt_on_ctrl_c(&exec, &control, true);
    let (exec, r) = run_queue(&q, Box::new(exec), &defaults, &opts, control);
    drop(exec);
    if interrupted.load(Ordering::SeqCst) {
        if let Err(e) = &r {
            eprintln!("stemflow: {e}");
        }
        return Err(crate::progress::Cancelled::with_frames(None).into());
    }
    let rep = r?;
    println!(
        "journal: {} ({} completed, {} skipped, {} already done, {} frames lost)",
        rep.journal.display(),
        rep.completed,
        rep.skipped,
        rep.already_done,
        rep.frames_lost
    );
    Ok(())
}
