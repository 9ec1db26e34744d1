//! `stemflow` (simulate) and `stemflow acquire`: assemble an instrument, run one
//! acquisition through the orchestrator, show progress, write results.

use crate::cli::{AcquireArgs, DetectorArg, ModeArg, SimulateArgs, TriggerArg};
use crate::output;
use crate::pipeline::{self, Geometry};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use stemflow_actors::detector::DetectorFactory;
use stemflow_actors::orchestrator::{
    AcquisitionRequest, ExitStatus, Instrument, RunFailure, RunRecord,
};
use stemflow_actors::recorder::RecordingFactory;
use stemflow_actors::supervisor::InstrumentSpec;
use stemflow_config::Profile;
use stemflow_core::DType;
use stemflow_core::detector::{ArmMode, Detector, DetectorSettings, DetectorTrigger};
use stemflow_core::devices::{Microscope, MicroscopeSettings, ScanEngine, trigger_line};
use stemflow_drivers::dectris::detector::{DectrisDetector, DectrisDetectorConfig};
use stemflow_drivers::merlin::{MerlinDetector, MerlinDetectorConfig};
use stemflow_sequences::Stem4dScanPlan;
use stemflow_simulators::dectris::{DectrisSim, DectrisSimConfig, DectrisSource};
use stemflow_simulators::merlin::{MerlinFaults, MerlinSim, MerlinSimConfig, MerlinSource, Pacing};
use stemflow_simulators::microscope::{MicroscopeFaults, MicroscopeSim};
use stemflow_simulators::scan::{ScanEngineSim, ScanFaults};
use stemflow_simulators::specimen::Specimen;

/// Medipix3 pixel pitch, m.
const PIXEL_PITCH_M: f64 = 55e-6;

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn recording_factory() -> RecordingFactory {
    Arc::new(crate::output::open_recording)
}

/// The detector simulator of the simulated instrument (stopped when dropped).
pub enum SimDetector {
    /// A Merlin on its control and data ports.
    Merlin(MerlinSim),
    /// A DECTRIS SIMPLON detector on its REST API and stream ports.
    Dectris(DectrisSim),
}

impl SimDetector {
    /// Where it listens, for the terminal.
    pub fn describe(&self) -> String {
        match self {
            Self::Merlin(s) => format!(
                "Merlin simulator control {} data {}",
                s.control_addr(),
                s.data_addr()
            ),
            Self::Dectris(s) => format!(
                "DECTRIS simulator REST http://{} stream {}",
                s.api_addr(),
                s.stream_endpoint()
            ),
        }
    }
}

/// The embedded simulated instrument, assembled: a detector simulator (Merlin or DECTRIS,
/// by the profile's `detector.kind`) triggered by a simulated scan engine over a modelled
/// trigger line, a simulated microscope, the actor spec over them, the virtual detector
/// geometry and the profile's default scan.
pub struct SimulatedInstrument {
    /// The detector simulator (stopped when dropped).
    pub sim: SimDetector,
    /// Factories for the orchestrator.
    pub spec: InstrumentSpec,
    /// Virtual detector geometry for the live reductions, pixels.
    pub geometry: Geometry,
    /// The profile's scan, with its microscope settings.
    pub plan: Stem4dScanPlan,
}

/// Assembles the simulated instrument of `profile`; `microscope_faults` are injected into
/// the simulated microscope (e.g. a setting that does not take).
///
/// # Errors
/// The Merlin simulator failed to start.
pub fn assemble_simulated(
    profile: &Profile,
    microscope_faults: MicroscopeFaults,
) -> Result<SimulatedInstrument> {
    let nav = profile.nav_shape();
    let sig = profile.sig_shape();
    let depth = profile.detector.counter_depth;
    let dectris = profile.detector.kind == "dectris";
    let dtype = if dectris {
        match depth {
            8 => DType::U8,
            16 => DType::U16,
            _ => DType::U32,
        }
    } else {
        output::dtype_for_depth(depth)
    };
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
    let (sim, detector): (SimDetector, DetectorFactory) = if dectris {
        let mut cfg = DectrisSimConfig::new(DectrisSource::Synthetic {
            specimen,
            nav_shape: nav,
            sig_shape: sig,
            bit_depth: depth,
            seed: profile.specimen.seed,
        });
        cfg.trigger_input = Some(trig_in);
        let sim = DectrisSim::start(cfg).context("starting the DECTRIS simulator")?;
        let det_cfg =
            DectrisDetectorConfig::new("127.0.0.1", sim.api_addr().port(), sim.stream_addr());
        let factory: DetectorFactory = Arc::new(move || {
            DectrisDetector::connect(det_cfg.clone()).map(|d| Box::new(d) as Box<dyn Detector>)
        });
        (SimDetector::Dectris(sim), factory)
    } else {
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
        let det_cfg = MerlinDetectorConfig::new(sim.control_addr(), sim.data_addr());
        let factory: DetectorFactory = Arc::new(move || {
            MerlinDetector::connect(det_cfg.clone()).map(|d| Box::new(d) as Box<dyn Detector>)
        });
        (SimDetector::Merlin(sim), factory)
    };

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
        // DECTRIS detectors report their bit depth; only the Merlin's is set.
        counter_depth: (!dectris).then_some(depth),
        microscope: Some(MicroscopeSettings {
            high_tension_v: Some(m.high_tension_v),
            camera_length_m: Some(m.camera_length_m),
            convergence_angle_rad: Some(m.convergence_angle_rad),
            magnification: Some(m.magnification),
            defocus_m: Some(m.defocus_m),
            beam_blanked: Some(false),
        }),
    };

    let scan_out = trig_out.clone();
    let spec = InstrumentSpec {
        detector,
        scan: Some(Arc::new(move || {
            Ok(
                Box::new(ScanEngineSim::new(scan_out.clone(), ScanFaults::default()))
                    as Box<dyn ScanEngine>,
            )
        })),
        microscope: Some(Arc::new(move || {
            let start = MicroscopeSim::default().read_state()?;
            Ok(
                Box::new(MicroscopeSim::new(start, microscope_faults.clone()))
                    as Box<dyn Microscope>,
            )
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
    Ok(SimulatedInstrument {
        sim,
        spec,
        geometry,
        plan,
    })
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
    let SimulatedInstrument {
        sim,
        spec,
        geometry,
        plan,
    } = assemble_simulated(&profile, MicroscopeFaults::default())?;
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

/// The detector of `stemflow acquire`.
fn acquire_detector(args: &AcquireArgs) -> DetectorFactory {
    let frame_timeout = Duration::from_secs_f64(args.frame_timeout_s);
    let first_frame_timeout = Duration::from_secs_f64(args.first_frame_timeout_s);
    match args.detector {
        DetectorArg::Merlin => {
            let control = SocketAddr::new(args.host, args.control_port);
            let data = SocketAddr::new(args.host, args.data_port);
            let mut cfg = MerlinDetectorConfig::new(control, data);
            cfg.frame_timeout = frame_timeout;
            cfg.first_frame_timeout = first_frame_timeout;
            cfg.raw_format = args.raw;
            cfg.nav_shape = args.nav_shape;
            cfg.nav_hint = args.nav_hint;
            Arc::new(move || {
                MerlinDetector::connect(cfg.clone()).map(|d| Box::new(d) as Box<dyn Detector>)
            })
        }
        DetectorArg::Dectris => {
            let stream = SocketAddr::new(args.host, args.stream_port);
            let mut cfg = DectrisDetectorConfig::new(&args.host.to_string(), args.api_port, stream);
            cfg.frame_timeout = frame_timeout;
            cfg.first_frame_timeout = first_frame_timeout;
            cfg.nav_shape = args.nav_shape;
            cfg.nav_hint = args.nav_hint;
            Arc::new(move || {
                DectrisDetector::connect(cfg.clone()).map(|d| Box::new(d) as Box<dyn Detector>)
            })
        }
    }
}

/// Acquires from an external Merlin or DECTRIS detector.
pub fn acquire(args: &AcquireArgs) -> Result<()> {
    let mode = match args.mode {
        ModeArg::Active => ArmMode::Active,
        ModeArg::Passive => ArmMode::Passive,
    };
    if mode == ArmMode::Active && args.nav_shape.is_none() {
        bail!("--nav-shape is required in active mode (frames to acquire = rows × cols)");
    }
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
        // DECTRIS detectors report their bit depth; only the Merlin's is set.
        counter_depth: (args.detector == DetectorArg::Merlin).then_some(args.counter_depth),
        extra: BTreeMap::new(),
    };
    let spec = InstrumentSpec {
        detector: acquire_detector(args),
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
