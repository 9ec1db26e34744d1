//! Instrument assembly: an instrument profile (TOML) becomes the actors' [`InstrumentSpec`]
//! — the detector through the [registry](crate::registry), the scan engine and the
//! microscope (simulated in-process, simulated behind their real SCPI drivers, or real),
//! the HDF5 recording — plus the default scan plan, virtual-detector geometry and
//! reductions of the profile.

use crate::reductions::{Geometry, Reductions};
use crate::registry::{
    DetectorEndpoint, DetectorKind, InstrumentDetector, SyntheticFrames, resolve_host,
    start_simulated,
};
use anyhow::{Context, Result};
use std::sync::Arc;
use std::time::Duration;
use stemflow_actors::detector::DetectorFactory;
use stemflow_actors::microscope::MicroscopeFactory;
use stemflow_actors::recorder::RecordingFactory;
use stemflow_actors::scan::ScanFactory;
use stemflow_actors::supervisor::InstrumentSpec;
use stemflow_config::{DetectorDevice, Profile, ScanEngineDevice};
use stemflow_core::devices::{
    Microscope, MicroscopeSettings, ScanEngine, TriggerSender, trigger_line,
};
use stemflow_drivers::scpi::microscope::MICROSCOPE_DEFAULT_MAP;
use stemflow_drivers::scpi::scan_engine::SCAN_ENGINE_DEFAULT_MAP;
use stemflow_drivers::scpi::{
    CommandMap, MappedMicroscope, MappedMicroscopeConfig, MappedScanEngine, MappedScanEngineConfig,
    PixelClock, PixelClockConfig, PixelClockTrigger, ScanPattern, ScpiAddress,
};
use stemflow_sequences::Stem4dScanPlan;
use stemflow_simulators::microscope::{MicroscopeFaults, MicroscopeSim};
use stemflow_simulators::pixel_clock::{PixelClockSim, PixelClockSimConfig};
use stemflow_simulators::scan::{ScanEngineSim, ScanFaults};
use stemflow_simulators::scpi_devices::{
    ColumnSim, ColumnSimConfig, ScanGeneratorSim, ScanGeneratorSimConfig,
};
use stemflow_simulators::specimen::Specimen;

/// Medipix3 pixel pitch, m.
const PIXEL_PITCH_M: f64 = 55e-6;

/// The async runtime the actors run on: two worker threads (the data path runs on its own
/// threads; the actors only exchange control messages) and tokio's blocking pool for
/// device calls.
///
/// # Errors
/// The runtime could not be built (threads could not be spawned).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The recorder actor's factory: HDF5 recordings ([`crate::output::open_recording`]) made
/// as `out` says.
pub fn recording_factory(out: crate::output::RecordingOutput) -> RecordingFactory {
    Arc::new(move |req| crate::output::open_recording(req, out))
}

/// The simulators a profile asked for, kept running for the instrument's lifetime.
pub struct SimDevices {
    /// The detector (simulated or external).
    pub detector: InstrumentDetector,
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
    recording: crate::output::RecordingOutput,
) -> Result<SimulatedInstrument> {
    let nav = profile.nav_shape();
    let sig = profile.sig_shape();
    let depth = profile.detector.counter_depth;
    let kind = DetectorKind::from_name(&profile.detector.kind).with_context(|| {
        format!(
            "detector.kind `{}` has no entry in the detector registry",
            profile.detector.kind
        )
    })?;
    let dtype = kind.dtype_for_depth(depth);
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
    let (sim, detector): (InstrumentDetector, DetectorFactory) =
        if let Some(d) = &profile.devices.detector {
            external_detector(d, kind)?
        } else {
            let frames = SyntheticFrames {
                specimen,
                nav_shape: nav,
                sig_shape: sig,
                bit_depth: depth,
                seed: profile.specimen.seed,
            };
            start_simulated(kind, frames, trig_in)?
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
        counter_depth: kind.sets_counter_depth().then_some(depth),
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
        recording: recording_factory(recording),
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
fn external_detector(
    d: &DetectorDevice,
    kind: DetectorKind,
) -> Result<(InstrumentDetector, DetectorFactory)> {
    let host = resolve_host(&d.address).context("devices.detector.address")?;
    let mut ep = DetectorEndpoint::new(kind, host);
    ep.control_port = d.control_port;
    ep.data_port = d.data_port;
    ep.api_port = d.api_port;
    ep.stream_port = d.stream_port;
    Ok((InstrumentDetector::External(ep.describe()), ep.factory()))
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
