//! `stemflow` (simulate) and `stemflow acquire`: assemble an instrument, run one
//! acquisition through the orchestrator, show progress, write results.

use crate::cli::{AcquireArgs, ModeArg, SimulateArgs, TriggerArg};
use stemflow_drivers::merlin::{MerlinDetector, MerlinDetectorConfig};
use crate::output;
use crate::pipeline::{self, Geometry};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use stemflow_actors::orchestrator::{
    AcquisitionRequest, ExitStatus, Instrument, RunFailure, RunRecord,
};
use stemflow_actors::recorder::RecordingFactory;
use stemflow_actors::supervisor::InstrumentSpec;
use stemflow_config::Profile;
use stemflow_core::detector::{ArmMode, Detector, DetectorSettings, DetectorTrigger};
use stemflow_core::devices::{Microscope, MicroscopeSettings, ScanEngine, trigger_line};
use stemflow_sequences::Stem4dScanPlan;
use stemflow_simulators::merlin::{MerlinFaults, MerlinSim, MerlinSimConfig, MerlinSource, Pacing};
use stemflow_simulators::microscope::MicroscopeSim;
use stemflow_simulators::scan::{ScanEngineSim, ScanFaults};
use stemflow_simulators::specimen::Specimen;

/// Medipix3 pixel pitch, m.
const PIXEL_PITCH_M: f64 = 55e-6;

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn recording_factory() -> RecordingFactory {
    Arc::new(crate::output::open_recording)
}

/// Runs one 4D-STEM scan on the simulated instrument.
pub fn simulate(args: &SimulateArgs) -> Result<()> {
    let mut profile = match &args.profile {
        Some(p) => Profile::load(p)?,
        None => Profile::simulated(),
    };
    if let Some(n) = args.nav_shape {
        profile.scan.nav_shape = [n.rows, n.cols];
    }
    let nav = profile.nav_shape();
    let sig = profile.sig_shape();
    let depth = profile.detector.counter_depth;
    let dtype = output::dtype_for_depth(depth);
    let m = &profile.microscope;
    let disk_radius_px = m.camera_length_m * m.convergence_angle_rad / PIXEL_PITCH_M;
    let specimen = Specimen::builder()
        .seed(profile.specimen.seed)
        .particles(profile.specimen.particles)
        .dose(profile.specimen.dose_electrons_per_frame)
        .disk_radius_px(disk_radius_px)
        .build();

    // The trigger cable from the scan engine to the detector.
    let (trig_out, trig_in) = trigger_line();
    let sim = MerlinSim::start(MerlinSimConfig {
        host: "127.0.0.1".parse()?,
        control_port: 0,
        data_port: 0,
        source: MerlinSource::Synthetic {
            specimen,
            nav_shape: nav,
            sig_shape: sig,
            seed: profile.specimen.seed,
        },
        pacing: Pacing::FrameTime,
        trigger_input: Some(trig_in),
        faults: MerlinFaults::default(),
    })
    .context("starting the Merlin simulator")?;
    println!(
        "simulated instrument: Merlin simulator control {} data {}; scan {} positions of {} frames, dwell {:.0} µs",
        sim.control_addr(),
        sim.data_addr(),
        nav,
        sig,
        profile.scan.dwell_time_s * 1e6
    );

    let plan = Stem4dScanPlan {
        nav_shape: nav,
        sig_shape: sig,
        dtype,
        dwell_time_s: profile.scan.dwell_time_s,
        flyback_s: profile.scan.flyback_s,
        exposure_s: profile
            .detector
            .exposure_s
            .min(profile.scan.dwell_time_s.max(1e-6)),
        counter_depth: Some(depth),
        microscope: Some(MicroscopeSettings {
            high_tension_v: Some(m.high_tension_v),
            camera_length_m: Some(m.camera_length_m),
            convergence_angle_rad: Some(m.convergence_angle_rad),
            magnification: Some(m.magnification),
            defocus_m: Some(m.defocus_m),
            beam_blanked: Some(false),
        }),
    };
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

    let det_cfg = MerlinDetectorConfig::new(sim.control_addr(), sim.data_addr());
    let scan_out = trig_out.clone();
    let spec = InstrumentSpec {
        detector: Arc::new(move || {
            MerlinDetector::connect(det_cfg.clone()).map(|d| Box::new(d) as Box<dyn Detector>)
        }),
        scan: Some(Arc::new(move || {
            Ok(
                Box::new(ScanEngineSim::new(scan_out.clone(), ScanFaults::default()))
                    as Box<dyn ScanEngine>,
            )
        })),
        microscope: Some(Arc::new(|| {
            Ok(Box::new(MicroscopeSim::default()) as Box<dyn Microscope>)
        })),
        recording: recording_factory(),
    };
    let r = &profile.reductions;
    let geometry = Geometry {
        cx: sig.cols as f64 / 2.0,
        cy: sig.rows as f64 / 2.0,
        bf_radius: r.bf_radius * disk_radius_px,
        adf_inner: r.adf_inner * disk_radius_px,
        adf_outer: r.adf_outer * disk_radius_px,
        com_radius: r.com_radius * disk_radius_px,
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating output folder {}", args.out.display()))?;
    let h5 = args.out.join("scan.h5");
    let req = AcquisitionRequest {
        mode: ArmMode::Active,
        detector: plan.detector_settings(),
        scan: Some(plan.scan_settings()),
        microscope: plan.microscope.clone(),
        arm_deadline: Duration::from_secs(5),
        deadline_margin: Duration::from_secs(10),
        output: Some(h5),
        pipeline: pipeline::builder(geometry, !args.no_raw),
        label: "simulated".into(),
        nav_from_detector: false,
    };
    let rt = runtime()?;
    let result = rt.block_on(run_one(spec, req));
    drop(sim);
    finish(result, &args.out, &geometry)
}

async fn run_one(
    spec: InstrumentSpec,
    req: AcquisitionRequest,
) -> Result<(
    Result<RunRecord, RunFailure>,
    Arc<stemflow_actors::processing::LiveSnapshot>,
)> {
    let mut inst = Instrument::start(spec)
        .await
        .map_err(|e| anyhow::anyhow!(e))
        .context("starting the instrument")?;
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
            output::write_run_record(out, &f.record)?;
            bail!(f.error);
        }
    };
    output::print_summary(&record);
    output::write_run_record(out, &record)?;
    let images = output::write_images(out, &snap.results, record.metadata.nav_shape)?;
    for p in images {
        println!("wrote {}", p.display());
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

/// Acquires from an external Merlin.
pub fn acquire(args: &AcquireArgs) -> Result<()> {
    let control = SocketAddr::new(args.host, args.control_port);
    let data = SocketAddr::new(args.host, args.data_port);
    let mut cfg = MerlinDetectorConfig::new(control, data);
    cfg.frame_timeout = Duration::from_secs_f64(args.frame_timeout_s);
    cfg.first_frame_timeout = Duration::from_secs_f64(args.first_frame_timeout_s);
    cfg.raw_format = args.raw;
    let mode = match args.mode {
        ModeArg::Active => ArmMode::Active,
        ModeArg::Passive => ArmMode::Passive,
    };
    if mode == ArmMode::Active && args.nav_shape.is_none() {
        bail!("--nav-shape is required in active mode (frames to acquire = rows × cols)");
    }
    cfg.nav_shape = args.nav_shape;
    let nav = args.nav_shape.unwrap_or(stemflow_core::NavShape::new(1, 1));
    let trigger = match args.trigger {
        TriggerArg::Internal => DetectorTrigger::Internal,
        TriggerArg::Soft => DetectorTrigger::Soft,
        TriggerArg::External => DetectorTrigger::ExternalRising,
    };
    let frames_per_trigger = if trigger == DetectorTrigger::Soft {
        nav.len() as u64
    } else {
        1
    };
    let settings = DetectorSettings {
        nav_shape: nav,
        exposure_s: args.exposure_ms * 1e-3,
        frame_time_s: args.exposure_ms * 1e-3,
        trigger,
        frames_per_trigger,
        counter_depth: Some(args.counter_depth),
        extra: BTreeMap::new(),
    };
    let det_cfg = cfg.clone();
    let spec = InstrumentSpec {
        detector: Arc::new(move || {
            MerlinDetector::connect(det_cfg.clone()).map(|d| Box::new(d) as Box<dyn Detector>)
        }),
        scan: None,
        microscope: None,
        recording: recording_factory(),
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating output folder {}", args.out.display()))?;
    // Geometry from the frame shape: known after arming; use the conventional 256×256
    // centre for a single chip and let the pipeline rescale (see pipeline::builder_auto).
    let req = AcquisitionRequest {
        mode,
        detector: settings,
        scan: None,
        microscope: None,
        arm_deadline: Duration::from_secs_f64(args.arm_timeout_s),
        deadline_margin: Duration::from_secs_f64(args.frame_timeout_s + 10.0),
        output: Some(args.out.join("acquisition.h5")),
        pipeline: pipeline::builder_auto(!args.no_raw),
        label: match mode {
            ArmMode::Active => "active".into(),
            ArmMode::Passive => "passive".into(),
        },
        nav_from_detector: args.nav_shape.is_none(),
    };
    let rt = runtime()?;
    let result = rt.block_on(run_one(spec, req));
    finish(result, &args.out, &Geometry::default())
}
