//! One acquisition through the orchestrator: on the simulated instrument of a profile
//! ([`simulate`]) or from a real or external detector ([`acquire`]) — the instrument
//! assembled, progress shown, the results written (HDF5, PNG images, run.json).

use crate::instrument::{SimulatedInstrument, assemble_simulated, recording_factory, runtime};
use crate::options::{AcquireOptions, LiveViewOptions, SimulateOptions};
use crate::output;
use crate::reductions::{self, Geometry, Reductions};
use crate::registry::{DetectorEndpoint, DetectorKind, resolve_host};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use stemflow_actors::orchestrator::{
    AcquisitionRequest, ExitStatus, Instrument, PipelineBuilder, ReadyHook, RunFailure, RunRecord,
};
use stemflow_actors::supervisor::InstrumentSpec;
use stemflow_config::Profile;
use stemflow_core::detector::{ArmMode, DetectorSettings, DetectorTrigger};
use stemflow_simulators::microscope::MicroscopeFaults;

/// Runs one 4D-STEM scan on the simulated instrument.
///
/// # Errors
/// The profile or the reductions cannot be loaded, the instrument cannot start, the run
/// failed or lost frames (the outputs are written first), or
/// [`crate::progress::Cancelled`] when the user cancelled it.
pub fn simulate(args: &SimulateOptions) -> Result<()> {
    let mut profile = match &args.profile {
        Some(p) => Profile::load(p)?,
        None => Profile::simulated(),
    };
    if let Some(n) = args.nav_shape {
        profile.scan.nav_shape = [n.rows, n.cols];
    }
    // Before anything starts: an earlier run's outputs are not silently replaced.
    output::prepare_out(&args.out, args.recording.overwrite)?;
    let recording = output::recording_output(&args.recording, args.no_raw, Some(&profile))?;
    let SimulatedInstrument {
        sim,
        spec,
        geometry,
        plan,
        reductions,
    } = assemble_simulated(&profile, MicroscopeFaults::default(), recording)?;
    let reductions = reductions.with_choice(&args.reductions)?;
    if !reductions.is_default() {
        // Checked against this scan's shapes now, so that a bad spec fails before the scan.
        reductions.build(&geometry, plan.sig_shape, plan.nav_shape)?;
        println!("{}", reductions.describe());
    }
    println!(
        "simulated instrument: {}; scan {} positions of {} frames, dwell {:.0} µs",
        sim.describe(),
        plan.nav_shape,
        plan.sig_shape,
        profile.scan.dwell_time_s * 1e6
    );
    for step in plan.steps()? {
        println!("plan: {step}");
    }
    let summary = plan.summary();
    println!(
        "plan: estimated {:.2} s, {} frames, {:.1} MB",
        summary.duration_s,
        summary.frames,
        summary.data_bytes as f64 / 1e6
    );
    let h5 = args.out.join(stemflow_core::metadata::RECORDING_FILE);
    let req = AcquisitionRequest {
        mode: ArmMode::Active,
        detector: plan.detector_settings(),
        scan: Some(plan.scan_settings()),
        microscope: plan.microscope.clone(),
        arm_deadline: Duration::from_secs(5),
        deadline_margin: Duration::from_secs(10),
        output: Some(h5),
        pipeline: reductions::builder_with(Some(geometry), Arc::new(reductions), !args.no_raw),
        label: "simulated".into(),
        nav_from_detector: false,
        ready_hook: None,
        calibration: args.recording.calibration(
            profile.scan.step_nm,
            profile.scan.rotation_deg,
            profile.detector.pixel_pitch_um,
        ),
    };
    let rt = runtime()?;
    let result = rt.block_on(run_one(spec, req, args.live_view.clone()));
    drop(sim);
    finish(result, &args.out, &geometry)
}

/// Runs `req` on a new instrument of `spec`, with the progress view on stderr and, with
/// `live_view`, the HTTP live view (see `crate::live_view`) on its address. The live view
/// task stays on the caller's runtime, so it keeps serving the final results while they
/// are written, until the runtime is dropped when the command returns.
async fn run_one(
    spec: InstrumentSpec,
    req: AcquisitionRequest,
    live_view: Option<LiveViewOptions>,
) -> Result<(
    Result<RunRecord, RunFailure>,
    Arc<stemflow_actors::processing::LiveSnapshot>,
)> {
    // Bound first: a busy address fails the command before the instrument moves.
    let live = match &live_view {
        Some(opts) => {
            let lv = crate::live_view::LiveView::bind(opts).await?;
            lv.announce();
            Some(lv)
        }
        None => None,
    };
    let mut inst = Instrument::start(spec)
        .await
        .map_err(|e| anyhow::anyhow!(e))
        .context("starting the instrument")?;
    if let Some(lv) = live {
        // Not awaited: the server ends with the runtime, not with the run.
        drop(lv.serve(inst.status()));
    }
    // The first Ctrl-C cancels the acquisition through the orchestrator (pipeline
    // cancelled, scan stopped, detector disarmed, recording finished as `cancelled`).
    let cancel = inst.cancel_handle();
    if let Err(e) =
        crate::progress::on_ctrl_c("cancelling the acquisition", move || cancel.cancel())
    {
        tracing::warn!("{e:#}; Ctrl-C will end the process without writing results");
    }
    let view = tokio::spawn(crate::progress::show(inst.status(), inst.state_changes()));
    let r = inst.run_acquisition(req).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), view).await;
    let snap = inst.last_results();
    inst.shutdown().await;
    Ok((r, snap))
}

fn finish(
    result: Result<(
        Result<RunRecord, RunFailure>,
        Arc<stemflow_actors::processing::LiveSnapshot>,
    )>,
    out: &std::path::Path,
    _geometry: &Geometry,
) -> Result<()> {
    let (r, snap) = result?;
    let record = match r {
        Ok(rec) => rec,
        Err(f) => {
            output::print_summary(&f.record);
            output::write_run_record(out, &f.record, &snap.results)?;
            bail!(f.error);
        }
    };
    output::print_summary(&record);
    for line in output::udf_summary_lines(&snap.results) {
        println!("result           {line}");
    }
    output::write_run_record(out, &record, &snap.results)?;
    let image_opts = output::ImageOptions {
        frames_summed: Some(snap.frames_processed),
        ..output::ImageOptions::for_record(&record)
    };
    let images = output::write_images(out, &snap.results, record.metadata.nav_shape, &image_opts)?;
    for p in images {
        println!("wrote {}", p.display());
    }
    if record.exit_status == ExitStatus::Cancelled {
        return Err(crate::progress::Cancelled::after(
            record.frames_processed,
            record.frames_expected,
        )
        .into());
    }
    if record.exit_status == ExitStatus::CompletedWithLoss {
        // Outputs are written and the missing frames marked; the exit status still says so.
        bail!(
            "{} of {} frames lost and {} damaged (marked in the recording's validity map)",
            record.frames_lost,
            record.frames_expected,
            record.frames_damaged
        );
    }
    Ok(())
}

/// The detector of an acquisition from `args`.
///
/// # Errors
/// The host name cannot be resolved.
fn acquire_detector(args: &AcquireOptions) -> Result<DetectorEndpoint> {
    let mut ep = DetectorEndpoint::new(args.detector, resolve_host(&args.host)?);
    ep.control_port = args.control_port;
    ep.data_port = args.data_port;
    ep.api_port = args.api_port;
    // TPX3: Serval is reached unless its port is 0 (passive mode needs no Serval; the
    // command line gives 0 there unless --api-port is given).
    ep.use_api = args.detector != DetectorKind::Tpx3 || args.api_port != 0;
    ep.stream_port = args.stream_port;
    ep.frame_timeout = Some(Duration::from_secs_f64(args.frame_timeout_s));
    ep.first_frame_timeout = Some(Duration::from_secs_f64(args.first_frame_timeout_s));
    ep.raw_format = args.raw;
    ep.nav_shape = args.nav_shape;
    ep.nav_hint = args.nav_hint;
    Ok(ep)
}

/// Acquires from an external Merlin or DECTRIS detector.
///
/// # Errors
/// Active mode without a scan shape, the reductions cannot be loaded, the output folder
/// cannot be created, the run failed or lost frames (the outputs are written first), or
/// [`crate::progress::Cancelled`] when the user cancelled it.
pub fn acquire(args: &AcquireOptions) -> Result<()> {
    // Geometry from the frame shape: known after arming, so the UDFs (default set or spec)
    // are built then (see reductions::builder_with).
    let a = &args.reductions;
    let reductions = Reductions::from_choice(a)?;
    let described = (!reductions.is_default()).then(|| reductions.describe());
    let pipeline = reductions::builder_with(None, Arc::new(reductions), !args.no_raw);
    // The request first: a bad shape or host creates no output folder.
    let (spec, req) = external_request(
        args,
        pipeline,
        Some(args.out.join(stemflow_core::metadata::RECORDING_FILE)),
    )?;
    output::prepare_out(&args.out, args.recording.overwrite)?;
    if let Some(d) = described {
        println!("{d}");
    }
    let rt = runtime()?;
    let result = rt.block_on(run_one(spec, req, args.live_view.clone()));
    finish(result, &args.out, &Geometry::default())
}

/// The instrument (the detector of `args` alone) and the request of one acquisition from
/// it, processed by `pipeline` and recorded into `output` if given.
///
/// # Errors
/// Active mode without a scan shape; a host name that does not resolve.
fn external_request(
    args: &AcquireOptions,
    pipeline: PipelineBuilder,
    output: Option<std::path::PathBuf>,
) -> Result<(InstrumentSpec, AcquisitionRequest)> {
    let mode = args.mode;
    if mode == ArmMode::Active && args.nav_shape.is_none() {
        bail!("--nav-shape is required in active mode (frames to acquire = rows × cols)");
    }
    let nav = args.nav_shape.unwrap_or(stemflow_core::NavShape::new(1, 1));
    let trigger = args.trigger;
    let frames_per_trigger = if trigger == DetectorTrigger::Soft {
        nav.len() as u64
    } else {
        1
    };
    let settings = DetectorSettings {
        nav_shape: nav,
        exposure_s: args
            .count_time_ms
            .or(args.frame_time_ms)
            .unwrap_or(args.exposure_ms)
            * 1e-3,
        frame_time_s: args.frame_time_ms.unwrap_or(args.exposure_ms) * 1e-3,
        trigger,
        frames_per_trigger,
        // DECTRIS detectors report their bit depth; only the Merlin's is set.
        counter_depth: args
            .detector
            .sets_counter_depth()
            .then_some(args.counter_depth),
        extra: BTreeMap::new(),
    };
    let spec = InstrumentSpec {
        detector: acquire_detector(args)?.factory(),
        scan: None,
        microscope: None,
        recording: recording_factory(output::RecordingOutput {
            sparse: args.detector.is_sparse(),
            ..output::recording_output(&args.recording, args.no_raw, None)?
        }),
    };
    let req = AcquisitionRequest {
        mode,
        detector: settings,
        scan: None,
        microscope: None,
        arm_deadline: Duration::from_secs_f64(args.arm_timeout_s),
        deadline_margin: Duration::from_secs_f64(args.frame_timeout_s + 10.0),
        output,
        pipeline,
        label: match mode {
            ArmMode::Active => "active".into(),
            ArmMode::Passive => "passive".into(),
        },
        nav_from_detector: args.nav_shape.is_none(),
        calibration: args.recording.calibration(None, 0.0, None),
        ready_hook: None,
    };
    Ok((spec, req))
}

/// One acquisition from the detector of `args` for a front end that brings its own
/// processing (`pipeline`) and reads the results itself (the Python package): nothing is
/// printed and no files are written but the recording `output`, if given. `ready_hook` is
/// called in active mode before the trigger; setting `cancel` cancels the run (the
/// detector is disarmed, the recording finished).
///
/// Returns the run's record, or its failure with the record.
///
/// # Errors
/// The request cannot be made ([`external_request`]) or the instrument cannot start.
pub fn acquire_with(
    args: &AcquireOptions,
    pipeline: PipelineBuilder,
    output: Option<std::path::PathBuf>,
    ready_hook: Option<ReadyHook>,
    cancel: Arc<std::sync::atomic::AtomicBool>,
) -> Result<Result<RunRecord, RunFailure>> {
    let alias_for = output.clone();
    let (spec, mut req) = external_request(args, pipeline, output)?;
    req.ready_hook = ready_hook;
    let r = run_quietly(spec, req, cancel);
    if let Some(p) = alias_for {
        output::link_emd_alias_for(&p);
    }
    r
}

/// One scan on the simulated instrument of `profile` (the embedded one when `None`), on a
/// scan of `nav_shape` if given, recorded as `recording` says (its `no_raw` and
/// `recording` options; the detector options are not used), for a front end that brings
/// its own processing — as
/// [`acquire_with`], the scan engine triggering the detector as in [`simulate`].
///
/// # Errors
/// The profile cannot be loaded or assembled, or the instrument cannot start.
pub fn simulate_with(
    profile: Option<&std::path::Path>,
    nav_shape: Option<stemflow_core::NavShape>,
    recording: &AcquireOptions,
    pipeline: PipelineBuilder,
    output: Option<std::path::PathBuf>,
    ready_hook: Option<ReadyHook>,
    cancel: Arc<std::sync::atomic::AtomicBool>,
) -> Result<Result<RunRecord, RunFailure>> {
    let mut profile = match profile {
        Some(p) => Profile::load(p)?,
        None => Profile::simulated(),
    };
    if let Some(n) = nav_shape {
        profile.scan.nav_shape = [n.rows, n.cols];
    }
    let rec = output::recording_output(&recording.recording, recording.no_raw, Some(&profile))?;
    let SimulatedInstrument {
        sim, spec, plan, ..
    } = assemble_simulated(&profile, MicroscopeFaults::default(), rec)?;
    let req = AcquisitionRequest {
        mode: ArmMode::Active,
        detector: plan.detector_settings(),
        scan: Some(plan.scan_settings()),
        microscope: plan.microscope.clone(),
        arm_deadline: Duration::from_secs(5),
        deadline_margin: Duration::from_secs(10),
        output,
        pipeline,
        label: "simulated".into(),
        nav_from_detector: false,
        ready_hook,
        calibration: recording.recording.calibration(
            profile.scan.step_nm,
            profile.scan.rotation_deg,
            profile.detector.pixel_pitch_um,
        ),
    };
    let alias_for = req.output.clone();
    let r = run_quietly(spec, req, cancel);
    drop(sim);
    if let Some(p) = alias_for {
        output::link_emd_alias_for(&p);
    }
    r
}

/// Runs `req` on a new instrument of `spec` without terminal output; `cancel` cancels it.
fn run_quietly(
    spec: InstrumentSpec,
    req: AcquisitionRequest,
    cancel: Arc<std::sync::atomic::AtomicBool>,
) -> Result<Result<RunRecord, RunFailure>> {
    let rt = runtime()?;
    rt.block_on(async move {
        let mut inst = Instrument::start(spec)
            .await
            .map_err(|e| anyhow::anyhow!(e))
            .context("starting the instrument")?;
        let handle = inst.cancel_handle();
        let watcher = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tick.tick().await;
                if cancel.load(std::sync::atomic::Ordering::SeqCst) {
                    handle.cancel();
                    break;
                }
            }
        });
        let r = inst.run_acquisition(req).await;
        watcher.abort();
        inst.shutdown().await;
        Ok(r)
    })
}
