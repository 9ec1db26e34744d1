//! `stemflow` (simulate) and `stemflow acquire`: assemble an instrument, run one
//! acquisition through the orchestrator, show progress, write results.

use crate::cli::{AcquireArgs, DetectorArg, ModeArg, SimulateArgs, TriggerArg};
use crate::output;
use crate::pipeline::{self, Geometry, Reductions};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use stemflow_actors::detector::DetectorFactory;
use stemflow_actors::microscope::MicroscopeFactory;
use stemflow_actors::orchestrator::{
    AcquisitionRequest, ExitStatus, Instrument, RunFailure, RunRecord,
};
use stemflow_actors::recorder::RecordingFactory;
use stemflow_actors::scan::ScanFactory;
use stemflow_actors::supervisor::InstrumentSpec;
use stemflow_config::{DetectorDevice, Profile, ScanEngineDevice};
use stemflow_core::DType;
use stemflow_core::detector::{ArmMode, Detector, DetectorSettings, DetectorTrigger};
use stemflow_core::devices::{
    Microscope, MicroscopeSettings, ScanEngine, TriggerSender, trigger_line,
};
use stemflow_drivers::dectris::detector::{DectrisDetector, DectrisDetectorConfig};
use stemflow_drivers::merlin::{MerlinDetector, MerlinDetectorConfig};
use stemflow_drivers::scpi::microscope::MICROSCOPE_DEFAULT_MAP;
use stemflow_drivers::scpi::scan_engine::SCAN_ENGINE_DEFAULT_MAP;
use stemflow_drivers::scpi::{
    CommandMap, MappedMicroscope, MappedMicroscopeConfig, MappedScanEngine, MappedScanEngineConfig,
    PixelClock, PixelClockConfig, PixelClockTrigger, ScanPattern, ScpiAddress,
};
use stemflow_sequences::Stem4dScanPlan;
use stemflow_simulators::dectris::{DectrisSim, DectrisSimConfig, DectrisSource};
use stemflow_simulators::merlin::{MerlinFaults, MerlinSim, MerlinSimConfig, MerlinSource, Pacing};
use stemflow_simulators::microscope::{MicroscopeFaults, MicroscopeSim};
use stemflow_simulators::pixel_clock::{PixelClockSim, PixelClockSimConfig};
use stemflow_simulators::scan::{ScanEngineSim, ScanFaults};
use stemflow_simulators::scpi_devices::{
    ColumnSim, ColumnSimConfig, ScanGeneratorSim, ScanGeneratorSimConfig,
};
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

/// The detector of the instrument: simulated in-process (stopped when dropped), or a real
/// one named by the profile's `[devices.detector]`.
pub enum SimDetector {
    /// A Merlin simulator on its control and data ports.
    Merlin(MerlinSim),
    /// A DECTRIS SIMPLON simulator on its REST API and stream ports.
    Dectris(DectrisSim),
    /// A real detector at this address.
    External(String),
}

/// The simulators a profile asked for, kept running for the instrument's lifetime.
pub struct SimDevices {
    /// The detector (simulated or external).
    pub detector: SimDetector,
    /// Device simulators driven by real drivers (pixel clock, scan generator, column).
    _others: Vec<Box<dyn Send>>,
    /// One line per device, for the terminal.
    lines: Vec<String>,
}

impl SimDevices {
    /// Where everything listens, for the terminal.
    pub fn describe(&self) -> String {
        std::iter::once(self.detector.describe())
            .chain(self.lines.iter().cloned())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl SimDetector {
    /// Where it listens, for the terminal.
    pub fn describe(&self) -> String {
        match self {
            Self::External(a) => format!("detector at {a}"),
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
    /// The simulators (stopped when dropped) and the detector's description.
    pub sim: SimDevices,
    /// Factories for the orchestrator.
    pub spec: InstrumentSpec,
    /// Virtual detector geometry for the live reductions, pixels.
    pub geometry: Geometry,
    /// The profile's scan, with its microscope settings.
    pub plan: Stem4dScanPlan,
    /// The reductions of the profile's `[reductions] spec` (default: the live-view set on
    /// `geometry`).
    pub reductions: Reductions,
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
    let (sim, detector): (SimDetector, DetectorFactory) = if let Some(d) = &profile.devices.detector
    {
        external_detector(d, dectris)?
    } else if dectris {
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

    let mut others: Vec<Box<dyn Send>> = Vec::new();
    let mut lines = Vec::new();
    let scan = scan_engine(profile, trig_out, &mut others, &mut lines)?;
    let microscope = microscope(profile, microscope_faults, &mut others, &mut lines)?;
    let sim = SimDevices {
        detector: sim,
        _others: others,
        lines,
    };
    let spec = InstrumentSpec {
        detector,
        scan: Some(scan),
        microscope: Some(microscope),
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
    // Parsed now; built for each acquisition's shapes when it is armed (plans may scan
    // other grids than the profile's).
    let reductions = Reductions::load(r.spec.as_deref(), None, None)
        .context("the profile's [reductions] spec")?;
    Ok(SimulatedInstrument {
        sim,
        spec,
        geometry,
        plan,
        reductions,
    })
}

/// A real detector from `[devices.detector]`.
fn external_detector(d: &DetectorDevice, dectris: bool) -> Result<(SimDetector, DetectorFactory)> {
    let host: std::net::IpAddr = d.address.parse().with_context(|| {
        format!(
            "devices.detector.address `{}` is not an IP address",
            d.address
        )
    })?;
    if dectris {
        let cfg = DectrisDetectorConfig::new(
            &d.address,
            d.api_port,
            SocketAddr::new(host, d.stream_port),
        );
        let factory: DetectorFactory = Arc::new(move || {
            DectrisDetector::connect(cfg.clone()).map(|x| Box::new(x) as Box<dyn Detector>)
        });
        let at = format!(
            "DECTRIS REST {}:{} stream {}:{}",
            d.address, d.api_port, d.address, d.stream_port
        );
        Ok((SimDetector::External(at), factory))
    } else {
        let cfg = MerlinDetectorConfig::new(
            SocketAddr::new(host, d.control_port),
            SocketAddr::new(host, d.data_port),
        );
        let factory: DetectorFactory = Arc::new(move || {
            MerlinDetector::connect(cfg.clone()).map(|x| Box::new(x) as Box<dyn Detector>)
        });
        let at = format!(
            "Merlin control {}:{} data {}:{}",
            d.address, d.control_port, d.address, d.data_port
        );
        Ok((SimDetector::External(at), factory))
    }
}

fn scpi_address(section: &str, address: Option<&str>) -> Result<ScpiAddress> {
    let a = address.with_context(|| format!("{section}.address is missing"))?;
    a.parse::<ScpiAddress>()
        .map_err(|e| anyhow::anyhow!("{section}.address: {e}"))
}

/// The scan engine of `[devices.scan_engine]` (default: the in-process simulator), its
/// simulator started when `simulated = true` and wired to the detector's trigger input.
fn scan_engine(
    profile: &Profile,
    trig_out: TriggerSender,
    others: &mut Vec<Box<dyn Send>>,
    lines: &mut Vec<String>,
) -> Result<ScanFactory> {
    let timeout = |e: &ScanEngineDevice| Duration::from_secs_f64(e.timeout_s);
    match profile.devices.scan_engine.as_ref() {
        None => Ok(simulated_scan(trig_out)),
        Some(e) if e.kind == "simulated" => Ok(simulated_scan(trig_out)),
        Some(e) if e.kind == "pixel-clock" => {
            let address = if e.simulated {
                let sim = PixelClockSim::start(PixelClockSimConfig {
                    output: Some(trig_out),
                    ..PixelClockSimConfig::default()
                })
                .context("starting the pixel clock simulator")?;
                lines.push(format!("pixel clock simulator {} (SCPI)", sim.addr()));
                let a = ScpiAddress::Tcp(sim.addr().to_string());
                others.push(Box::new(sim));
                a
            } else {
                scpi_address("devices.scan_engine", e.address.as_deref())?
            };
            let mut cfg = PixelClockConfig::new(address);
            cfg.channel = e.channel;
            cfg.timeout = timeout(e);
            cfg.trigger = match e.start.as_deref() {
                Some("external") => PixelClockTrigger::External,
                _ => PixelClockTrigger::Bus,
            };
            Ok(Arc::new(move || {
                PixelClock::connect(cfg.clone()).map(|c| Box::new(c) as Box<dyn ScanEngine>)
            }))
        }
        Some(e) => {
            let address = if e.simulated {
                let sim = ScanGeneratorSim::start(ScanGeneratorSimConfig {
                    output: Some(trig_out),
                    ..ScanGeneratorSimConfig::default()
                })
                .context("starting the scan generator simulator")?;
                lines.push(format!(
                    "scan generator simulator {} (command map)",
                    sim.addr()
                ));
                let a = ScpiAddress::Tcp(sim.addr().to_string());
                others.push(Box::new(sim));
                a
            } else {
                scpi_address("devices.scan_engine", e.address.as_deref())?
            };
            let mut cfg = MappedScanEngineConfig::new(address);
            cfg.timeout = timeout(e);
            cfg.commands = e.commands.clone();
            cfg.pattern = match e.pattern.as_deref() {
                Some("serpentine") => ScanPattern::Serpentine,
                _ => ScanPattern::Raster,
            };
            // The map is checked now, so a typo is reported before anything moves.
            CommandMap::new(
                "devices.scan_engine.commands",
                SCAN_ENGINE_DEFAULT_MAP,
                &cfg.commands,
            )?;
            Ok(Arc::new(move || {
                MappedScanEngine::connect(cfg.clone()).map(|c| Box::new(c) as Box<dyn ScanEngine>)
            }))
        }
    }
}

fn simulated_scan(trig_out: TriggerSender) -> ScanFactory {
    Arc::new(move || {
        Ok(
            Box::new(ScanEngineSim::new(trig_out.clone(), ScanFaults::default()))
                as Box<dyn ScanEngine>,
        )
    })
}

/// The microscope of `[devices.microscope]` (default: the in-process simulator with
/// `faults`), its simulator started when `simulated = true`.
fn microscope(
    profile: &Profile,
    faults: MicroscopeFaults,
    others: &mut Vec<Box<dyn Send>>,
    lines: &mut Vec<String>,
) -> Result<MicroscopeFactory> {
    match profile.devices.microscope.as_ref() {
        Some(m) if m.kind == "command-map" => {
            let address = if m.simulated {
                let sim = ColumnSim::start(ColumnSimConfig::default())
                    .context("starting the column simulator")?;
                lines.push(format!("column simulator {} (command map)", sim.addr()));
                let a = ScpiAddress::Tcp(sim.addr().to_string());
                others.push(Box::new(sim));
                a
            } else {
                scpi_address("devices.microscope", m.address.as_deref())?
            };
            let mut cfg = MappedMicroscopeConfig::new(address);
            cfg.timeout = Duration::from_secs_f64(m.timeout_s);
            cfg.settle = Duration::from_secs_f64(m.settle_s);
            cfg.commands = m.commands.clone();
            CommandMap::new(
                "devices.microscope.commands",
                MICROSCOPE_DEFAULT_MAP,
                &cfg.commands,
            )?;
            Ok(Arc::new(move || {
                MappedMicroscope::connect(cfg.clone()).map(|c| Box::new(c) as Box<dyn Microscope>)
            }))
        }
        _ => Ok(Arc::new(move || {
            let start = MicroscopeSim::default().read_state()?;
            Ok(Box::new(MicroscopeSim::new(start, faults.clone())) as Box<dyn Microscope>)
        })),
    }
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
        reductions,
    } = assemble_simulated(&profile, MicroscopeFaults::default())?;
    let reductions = reductions.with_args(&args.reductions)?;
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
        pipeline: pipeline::builder_with(Some(geometry), Arc::new(reductions), !args.no_raw),
        label: "simulated".into(),
        nav_from_detector: false,
    };
    let rt = runtime()?;
    let result = rt.block_on(run_one(spec, req, args.live_view));
    drop(sim);
    finish(result, &args.out, &geometry)
}

/// Runs `req` on a new instrument of `spec`, with the progress view on stderr and, with
/// `live_view`, the HTTP live view (see `crate::live_view`) on that address. The live view
/// task stays on the caller's runtime, so it keeps serving the final results while they
/// are written, until the runtime is dropped when the command returns.
async fn run_one(
    spec: InstrumentSpec,
    req: AcquisitionRequest,
    live_view: Option<SocketAddr>,
) -> Result<(
    Result<RunRecord, RunFailure>,
    Arc<stemflow_actors::processing::LiveSnapshot>,
)> {
    // Bound first: a busy address fails the command before the instrument moves.
    let live = match live_view {
        Some(addr) => {
            let lv = crate::live_view::LiveView::bind(addr).await?;
            eprintln!("live view: http://{}/", lv.local_addr());
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
    let images = output::write_images(out, &snap.results, record.metadata.nav_shape)?;
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
    // Geometry from the frame shape: known after arming, so the UDFs (default set or spec)
    // are built then (see pipeline::builder_with).
    let a = &args.reductions;
    let reductions = Reductions::from_args(a)?;
    if !reductions.is_default() {
        println!("{}", reductions.describe());
    }
    let req = AcquisitionRequest {
        mode,
        detector: settings,
        scan: None,
        microscope: None,
        arm_deadline: Duration::from_secs_f64(args.arm_timeout_s),
        deadline_margin: Duration::from_secs_f64(args.frame_timeout_s + 10.0),
        output: Some(args.out.join("acquisition.h5")),
        pipeline: pipeline::builder_with(None, Arc::new(reductions), !args.no_raw),
        label: match mode {
            ArmMode::Active => "active".into(),
            ArmMode::Passive => "passive".into(),
        },
        nav_from_detector: args.nav_shape.is_none(),
    };
    let rt = runtime()?;
    let result = rt.block_on(run_one(spec, req, args.live_view));
    finish(result, &args.out, &Geometry::default())
}
