//! The detector registry: the one place that lists the detector kinds stemflow drives and
//! how each is built — connected to a real detector, started as an in-process simulator
//! wired to the scan engine's trigger line, or served standalone.
//!
//! Adding a detector means a protocol module in `drivers` (implementing
//! `core::detector::Detector`), a simulator in `simulators`, and one more [`DetectorKind`]
//! with its arms in this file (docs/adding-a-detector.md). The profile's `detector.kind`
//! and the command line's `--detector` use [`DetectorKind::name`].

use anyhow::{Context, Result};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use stemflow_actors::detector::DetectorFactory;
use stemflow_core::DType;
use stemflow_core::detector::Detector;
use stemflow_core::devices::TriggerReceiver;
use stemflow_core::{NavShape, SigShape};
use stemflow_drivers::asi::{Tpx3Detector, Tpx3DetectorConfig};
use stemflow_drivers::dectris::detector::{DectrisDetector, DectrisDetectorConfig};
use stemflow_drivers::merlin::{MerlinDetector, MerlinDetectorConfig};
use stemflow_drivers::nav_hint::NavHint;
use stemflow_simulators::dectris::{DectrisSim, DectrisSimConfig, DectrisSource};
use stemflow_simulators::merlin::{MerlinFaults, MerlinSim, MerlinSimConfig, MerlinSource, Pacing};
use stemflow_simulators::specimen::Specimen;
use stemflow_simulators::tpx3::{Tpx3Sim, Tpx3SimConfig, Tpx3Source};

/// A detector family stemflow has a driver and a simulator for.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum DetectorKind {
    /// Quantum Detectors Merlin (Medipix3): TCP control and data ports, MPX framing
    /// (protocols.md §1).
    Merlin,
    /// DECTRIS SIMPLON detectors (ARINA, QUADRO, …): REST API and a ZeroMQ stream,
    /// bitshuffle-LZ4 frames (protocols.md §2).
    Dectris,
    /// ASI Timepix3 (CheeTah): a sparse CSR event stream over TCP, and Serval's REST API
    /// for active mode (protocols.md §3).
    Tpx3,
}

impl DetectorKind {
    /// Every kind, in the order help texts list them.
    pub const ALL: [DetectorKind; 3] = [
        DetectorKind::Merlin,
        DetectorKind::Dectris,
        DetectorKind::Tpx3,
    ];

    /// The name a profile's `detector.kind` and `--detector` use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Merlin => "merlin",
            Self::Dectris => "dectris",
            Self::Tpx3 => "tpx3",
        }
    }

    /// The kind called `name` (as [`DetectorKind::name`] spells it).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The names of the detector's two ports, as [`crate::options::SimOptions::ports`]
    /// orders them.
    pub fn port_names(self) -> [&'static str; 2] {
        match self {
            Self::Merlin => ["control", "data"],
            Self::Dectris => ["api", "stream"],
            Self::Tpx3 => ["api", "data"],
        }
    }

    /// The pixel type of frames acquired at `depth` bits (the profile's
    /// `detector.counter_depth`): Merlin 1/6 → u8, 12 → u16, 24 → u32 (protocols.md §1.7);
    /// DECTRIS 8/16/32 bits as they are; Timepix3 event counts are u32 whatever the depth.
    pub fn dtype_for_depth(self, depth: u32) -> DType {
        match self {
            Self::Merlin => merlin_dtype_for_depth(depth),
            Self::Tpx3 => DType::U32,
            Self::Dectris => match depth {
                8 => DType::U8,
                16 => DType::U16,
                _ => DType::U32,
            },
        }
    }

    /// True when stemflow sets the counter depth when configuring (Merlin); DECTRIS
    /// detectors report their bit depth instead.
    pub fn sets_counter_depth(self) -> bool {
        self == Self::Merlin
    }

    /// True for event cameras whose frames arrive sparse (CSR): recorded as CSR.
    pub fn is_sparse(self) -> bool {
        self == Self::Tpx3
    }

    /// The vendor's default ports `(data or control/stream, api)` as the command line's
    /// `--data-port` / `--api-port` take them: Merlin data 6342; DECTRIS REST 80; ASI TPX3
    /// data 8283 and Serval 8080 (protocols.md §3.1, §3.6).
    pub fn default_ports(self) -> (u16, u16) {
        match self {
            Self::Merlin => (6342, 80),
            Self::Dectris => (6342, 80),
            Self::Tpx3 => (8283, 8080),
        }
    }
}

/// The pixel type of Merlin frames of `depth` bits: 1 and 6 → u8, 12 → u16, 24 → u32
/// (protocols.md §1.7).
pub fn merlin_dtype_for_depth(depth: u32) -> DType {
    match depth {
        1 | 6 => DType::U8,
        12 => DType::U16,
        _ => DType::U32,
    }
}

impl std::str::FromStr for DetectorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::from_name(s).ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|k| k.name()).collect();
            format!("detector `{s}`: supported: {}", names.join(", "))
        })
    }
}

/// The address of the detector host `host`: an IP address as written, else the host
/// name's first IPv4 address (detector PCs and control units are reached over IPv4 on
/// facility networks), else its first IPv6 address.
///
/// # Errors
/// The name cannot be resolved, or resolves to no address; the message names the host.
pub fn resolve_host(host: &str) -> Result<IpAddr> {
    use std::net::ToSocketAddrs as _;
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    let addrs: Vec<SocketAddr> = (host, 0)
        .to_socket_addrs()
        .with_context(|| {
            format!("detector host `{host}`: not an IP address, and no host of that name resolves")
        })?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .map(SocketAddr::ip)
        .with_context(|| format!("detector host `{host}` resolves to no address"))
}

/// Where a real (or external) detector listens and how its receiver waits.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectorEndpoint {
    /// Which detector.
    pub kind: DetectorKind,
    /// The detector's host (Merlin PC, DECTRIS detector control unit).
    pub host: IpAddr,
    /// Merlin control port (6341).
    pub control_port: u16,
    /// Merlin data port (6342).
    pub data_port: u16,
    /// DECTRIS REST API port (80).
    pub api_port: u16,
    /// DECTRIS stream port (stream v1: 9999).
    pub stream_port: u16,
    /// ASI TPX3: reach Serval at `api_port` (active mode needs it; passive does not).
    pub use_api: bool,
    /// Time without a frame after which an acquisition ends; `None`: the driver's default.
    pub frame_timeout: Option<Duration>,
    /// Time from arming to the first frame; `None`: the driver's default.
    pub first_frame_timeout: Option<Duration>,
    /// Merlin: ask for raw frames (FILEFORMAT 2).
    pub raw_format: bool,
    /// Passive mode: the scan shape, overriding the detector's announcement.
    pub nav_shape: Option<NavShape>,
    /// Passive mode: a scan-shape hint with one side derived from the frame count.
    pub nav_hint: Option<NavHint>,
}

impl DetectorEndpoint {
    /// `kind` at `host` on its vendors' default ports, driver defaults otherwise.
    pub fn new(kind: DetectorKind, host: IpAddr) -> Self {
        Self {
            kind,
            host,
            control_port: 6341,
            data_port: 6342,
            api_port: 80,
            stream_port: 9999,
            use_api: true,
            frame_timeout: None,
            first_frame_timeout: None,
            raw_format: false,
            nav_shape: None,
            nav_hint: None,
        }
    }

    /// Where it listens, for the terminal.
    pub fn describe(&self) -> String {
        let h = self.host;
        match self.kind {
            DetectorKind::Merlin => format!(
                "Merlin control {h}:{} data {h}:{}",
                self.control_port, self.data_port
            ),
            DetectorKind::Dectris => format!(
                "DECTRIS REST {h}:{} stream {h}:{}",
                self.api_port, self.stream_port
            ),
            DetectorKind::Tpx3 if self.use_api => format!(
                "TPX3 data {h}:{} Serval {h}:{}",
                self.data_port, self.api_port
            ),
            DetectorKind::Tpx3 => format!("TPX3 data {h}:{}", self.data_port),
        }
    }

    /// The factory the detector actor calls to connect (and to reconnect after a restart).
    pub fn factory(&self) -> DetectorFactory {
        match self.kind {
            DetectorKind::Merlin => {
                let mut cfg = MerlinDetectorConfig::new(
                    SocketAddr::new(self.host, self.control_port),
                    SocketAddr::new(self.host, self.data_port),
                );
                if let Some(t) = self.frame_timeout {
                    cfg.frame_timeout = t;
                }
                if let Some(t) = self.first_frame_timeout {
                    cfg.first_frame_timeout = t;
                }
                cfg.raw_format = self.raw_format;
                cfg.nav_shape = self.nav_shape;
                cfg.nav_hint = self.nav_hint;
                Arc::new(move || {
                    MerlinDetector::connect(cfg.clone()).map(|d| Box::new(d) as Box<dyn Detector>)
                })
            }
            DetectorKind::Dectris => {
                let stream = SocketAddr::new(self.host, self.stream_port);
                let mut cfg =
                    DectrisDetectorConfig::new(&self.host.to_string(), self.api_port, stream);
                if let Some(t) = self.frame_timeout {
                    cfg.frame_timeout = t;
                }
                if let Some(t) = self.first_frame_timeout {
                    cfg.first_frame_timeout = t;
                }
                cfg.nav_shape = self.nav_shape;
                cfg.nav_hint = self.nav_hint;
                Arc::new(move || {
                    DectrisDetector::connect(cfg.clone()).map(|d| Box::new(d) as Box<dyn Detector>)
                })
            }
            DetectorKind::Tpx3 => {
                let serval = self.use_api.then(|| (self.host.to_string(), self.api_port));
                let mut cfg =
                    Tpx3DetectorConfig::new(SocketAddr::new(self.host, self.data_port), serval);
                if let Some(t) = self.frame_timeout {
                    cfg.frame_timeout = t;
                }
                if let Some(t) = self.first_frame_timeout {
                    cfg.first_frame_timeout = t;
                }
                cfg.nav_shape = self.nav_shape;
                Arc::new(move || {
                    Tpx3Detector::connect(cfg.clone()).map(|d| Box::new(d) as Box<dyn Detector>)
                })
            }
        }
    }
}

/// What an in-process detector simulator serves: synthetic frames of a specimen.
#[derive(Clone, Debug)]
pub struct SyntheticFrames {
    /// The specimen model.
    pub specimen: Specimen,
    /// Scan shape.
    pub nav_shape: NavShape,
    /// Frame shape, pixels.
    pub sig_shape: SigShape,
    /// Counter depth, bits (the profile's `detector.counter_depth`).
    pub bit_depth: u32,
    /// Seed of the counting noise.
    pub seed: u64,
}

/// The detector of an instrument: simulated in-process (stopped when dropped), or a real
/// one.
pub enum InstrumentDetector {
    /// A Merlin simulator on its control and data ports.
    Merlin(MerlinSim),
    /// A DECTRIS SIMPLON simulator on its REST API and stream ports.
    Dectris(DectrisSim),
    /// An ASI TPX3 simulator on its CSR data port and Serval REST port.
    Tpx3(Tpx3Sim),
    /// A real detector; its description.
    External(String),
}

impl InstrumentDetector {
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
            Self::Tpx3(s) => format!(
                "TPX3 simulator data {} Serval http://{}",
                s.data_addr(),
                s.api_addr()
            ),
        }
    }
}

/// Starts `kind`'s simulator on ephemeral loopback ports, serving `frames` one per pulse
/// of `trigger_input` (the scan engine's trigger line), and the factory that connects the
/// real driver to it.
///
/// # Errors
/// The simulator failed to start (its ports could not be bound).
pub fn start_simulated(
    kind: DetectorKind,
    frames: SyntheticFrames,
    trigger_input: TriggerReceiver,
) -> Result<(InstrumentDetector, DetectorFactory)> {
    let loopback = IpAddr::from([127, 0, 0, 1]);
    match kind {
        DetectorKind::Tpx3 => {
            let mean_events = frames.specimen.params().dose;
            let mut cfg = Tpx3SimConfig::new(Tpx3Source::Synthetic {
                specimen: frames.specimen,
                nav_shape: frames.nav_shape,
                sig_shape: frames.sig_shape,
                mean_events,
                seed: frames.seed,
            });
            // Active through Serval, one frame per pulse of the scan engine's line.
            cfg.free_running = false;
            cfg.trigger_input = Some(trigger_input);
            let sim = Tpx3Sim::start(cfg).context("starting the TPX3 simulator")?;
            let mut ep = DetectorEndpoint::new(kind, loopback);
            ep.data_port = sim.data_addr().port();
            ep.api_port = sim.api_addr().port();
            Ok((InstrumentDetector::Tpx3(sim), ep.factory()))
        }
        DetectorKind::Dectris => {
            let mut cfg = DectrisSimConfig::new(DectrisSource::Synthetic {
                specimen: frames.specimen,
                nav_shape: frames.nav_shape,
                sig_shape: frames.sig_shape,
                bit_depth: frames.bit_depth,
                seed: frames.seed,
            });
            cfg.trigger_input = Some(trigger_input);
            let sim = DectrisSim::start(cfg).context("starting the DECTRIS simulator")?;
            let mut ep = DetectorEndpoint::new(kind, loopback);
            ep.api_port = sim.api_addr().port();
            ep.stream_port = sim.stream_addr().port();
            Ok((InstrumentDetector::Dectris(sim), ep.factory()))
        }
        DetectorKind::Merlin => {
            let sim = MerlinSim::start(MerlinSimConfig {
                host: loopback,
                control_port: 0,
                data_port: 0,
                source: MerlinSource::Synthetic {
                    specimen: frames.specimen,
                    nav_shape: frames.nav_shape,
                    sig_shape: frames.sig_shape,
                    seed: frames.seed,
                },
                pacing: Pacing::FrameTime,
                trigger_input: Some(trigger_input),
                faults: MerlinFaults::default(),
            })
            .context("starting the Merlin simulator")?;
            let mut ep = DetectorEndpoint::new(kind, loopback);
            ep.control_port = sim.control_addr().port();
            ep.data_port = sim.data_addr().port();
            Ok((InstrumentDetector::Merlin(sim), ep.factory()))
        }
    }
}
