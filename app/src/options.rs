//! What each job needs to be told, as plain values: the front ends (the command line, the
//! Python package, a service) fill these in from their own argument types and call the
//! job's function. Nothing here knows how it was parsed.
//!
//! Defaults ([`Default`]) are the command line's defaults, so a caller that sets only what
//! it cares about gets the same run as `stemflow` with the same flags left out.

use crate::registry::DetectorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use stemflow_core::detector::{ArmMode, DetectorTrigger};
use stemflow_core::metadata::CalibrationInputs;
use stemflow_core::{NavShape, SigShape};
use stemflow_drivers::nav_hint::NavHint;
use stemflow_processing::RoiRect;
pub use stemflow_recording::hdf5::Compression;

/// The engine's default time between two snapshots, ms.
pub const DEFAULT_SNAPSHOT_INTERVAL_MS: u64 = 100;

/// Where and for whom the live view serves the partial results over HTTP
/// ([`crate::live_view`]).
#[derive(Clone, PartialEq, Eq)]
pub struct LiveViewOptions {
    /// Address to serve on (e.g. `127.0.0.1:8080`; port 0: a free one). Beyond loopback the
    /// view is reachable from the network and always needs a token.
    pub addr: SocketAddr,
    /// Token every request must carry (`?token=` or `Authorization: Bearer`): at least
    /// [`crate::live_view::MIN_TOKEN_LEN`] characters of `A–Z a–z 0–9 - . _ ~`. `None`: no
    /// token on loopback, a random one (printed at start) beyond it.
    pub token: Option<String>,
}

impl LiveViewOptions {
    /// The view on `addr` without a token of the caller's.
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, token: None }
    }
}

impl std::fmt::Debug for LiveViewOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a secret: never in a log.
        f.debug_struct("LiveViewOptions")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// Which reductions a run computes, over which scan positions and how often it shows them
/// (offline processing, the simulated scan, acquisitions, plans and queues).
#[derive(Clone, Debug, PartialEq)]
pub struct ReductionChoice {
    /// A reduction spec (TOML: `[[udf]]` entries and an optional `[roi]`; see
    /// docs/reductions.md) whose UDFs replace the default set (sum, sum_sig, virtual BF +
    /// ADF, CoM) and the profile's `[reductions] spec`.
    pub spec: Option<PathBuf>,
    /// Only scan rows R0..R1 and columns C0..C1 (half-open, from 0), replacing the spec's
    /// ROI; nav results are NaN outside it.
    pub roi_rect: Option<RoiRect>,
    /// Only the scan positions set (nonzero) in this `.npy` array of the scan's shape,
    /// replacing the spec's ROI.
    pub roi_mask: Option<PathBuf>,
    /// Time between two live snapshots of the results (progress, live view), ms, ≥ 1.
    pub snapshot_interval_ms: u64,
}

impl Default for ReductionChoice {
    fn default() -> Self {
        Self {
            spec: None,
            roi_rect: None,
            roi_mask: None,
            snapshot_interval_ms: DEFAULT_SNAPSHOT_INTERVAL_MS,
        }
    }
}

impl ReductionChoice {
    /// True when no spec and no ROI was given (the snapshot interval always applies).
    pub fn is_empty(&self) -> bool {
        self.spec.is_none() && self.roi_rect.is_none() && self.roi_mask.is_none()
    }
}

/// How a run records (every command that writes a recording): raw frames or not, the
/// frames' compression, whether an earlier run's outputs may be replaced, and what the user
/// tells about the calibration.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct RecordingChoice {
    /// Frame compression; `None`: the profile's, else [`DEFAULT_COMPRESSION`].
    pub compression: Option<Compression>,
    /// Replace the outputs of an earlier run in the output folder (default: refuse).
    pub overwrite: bool,
    /// Scan step, nm per position; overrides the profile's `[scan] step_nm`.
    pub scan_step_nm: Option<f64>,
    /// Scan rotation, degrees; overrides the profile's `[scan] rotation_deg`.
    pub scan_rotation_deg: Option<f64>,
    /// Detector pixel pitch, µm; overrides the profile's and the detector model's.
    pub pixel_pitch_um: Option<f64>,
}

/// The frame compression when neither the command line nor the profile chooses one:
/// deflate (level 1) with byte shuffle, the one every reader opens as installed from PyPI
/// (HyperSpy, py4DSTEM, LiberTEM and h5py read it with libhdf5's built-in filter).
pub const DEFAULT_COMPRESSION: Compression = Compression::Deflate { level: 1 };

impl RecordingChoice {
    /// The calibration inputs: these options over the profile's values (`profile_step`,
    /// `profile_rotation`, `profile_pitch`).
    pub fn calibration(
        &self,
        profile_step: Option<f64>,
        profile_rotation: f64,
        profile_pitch: Option<f64>,
    ) -> CalibrationInputs {
        CalibrationInputs {
            scan_step_nm: self.scan_step_nm.or(profile_step),
            scan_rotation_deg: self.scan_rotation_deg.unwrap_or(profile_rotation),
            pixel_pitch_um: self.pixel_pitch_um.or(profile_pitch),
        }
    }
}

/// One 4D-STEM scan on the simulated instrument ([`crate::acquisition::simulate`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SimulateOptions {
    /// Output folder for the HDF5 file, the PNG images and run.json.
    pub out: PathBuf,
    /// Instrument profile (TOML); `None`: the embedded simulated instrument.
    pub profile: Option<PathBuf>,
    /// Scan shape, overriding the profile's.
    pub nav_shape: Option<NavShape>,
    /// Do not record raw frames (results and images are still written).
    pub no_raw: bool,
    /// Compression, overwriting, calibration.
    pub recording: RecordingChoice,
    /// Serve the partial results over HTTP (see [`LiveViewOptions`]).
    pub live_view: Option<LiveViewOptions>,
    /// The reductions.
    pub reductions: ReductionChoice,
}

impl Default for SimulateOptions {
    fn default() -> Self {
        Self {
            out: PathBuf::from("out"),
            profile: None,
            nav_shape: None,
            no_raw: false,
            recording: RecordingChoice::default(),
            live_view: None,
            reductions: ReductionChoice::default(),
        }
    }
}

/// One acquisition from a real or external detector ([`crate::acquisition::acquire`]).
#[derive(Clone, Debug, PartialEq)]
pub struct AcquireOptions {
    /// Which detector (see [`crate::registry`]).
    pub detector: DetectorKind,
    /// Detector host (Merlin PC, or the DECTRIS detector control unit): an IP address or a
    /// host name ([`crate::registry::resolve_host`]).
    pub host: String,
    /// Merlin control port.
    pub control_port: u16,
    /// Merlin data port; ASI TPX3 CSR data port (8283).
    pub data_port: u16,
    /// DECTRIS REST API port; ASI TPX3: Serval's port (8080; 0: none, passive only).
    pub api_port: u16,
    /// DECTRIS stream port (stream v1: 9999).
    pub stream_port: u16,
    /// Active: stemflow configures and arms the detector; passive: it waits for someone
    /// else to arm it.
    pub mode: ArmMode,
    /// Scan shape (frames = rows × cols); required in active mode. Passive: default from
    /// the detector's acquisition header.
    pub nav_shape: Option<NavShape>,
    /// Passive mode: a scan-shape hint with one side derived from the announced frame
    /// count (e.g. `?x256`).
    pub nav_hint: Option<NavHint>,
    /// Output folder.
    pub out: PathBuf,
    /// Merlin counter depth (active mode): 1, 6, 12 or 24 bits.
    pub counter_depth: u32,
    /// Exposure per frame, ms (active mode); the frame period and the count time unless
    /// given apart.
    pub exposure_ms: f64,
    /// Frame period, ms (active mode); `None`: `exposure_ms`.
    pub frame_time_ms: Option<f64>,
    /// Count time (exposure) per frame, ms (active mode); `None`: the frame period. A DECTRIS
    /// detector needs `count_time ≤ frame_time − readout`: a longer one is shortened to the
    /// frame period minus the readout time read back from the detector.
    pub count_time_ms: Option<f64>,
    /// Trigger (active mode).
    pub trigger: DetectorTrigger,
    /// Seconds to wait for the arm confirmation (passive: for someone to arm).
    pub arm_timeout_s: f64,
    /// Seconds without a frame after which the acquisition is ended (rest counted lost).
    pub frame_timeout_s: f64,
    /// Seconds from arming to the first frame (a detector that is never triggered).
    pub first_frame_timeout_s: f64,
    /// Merlin, active mode: raw frames (FILEFORMAT 2, as at the highest frame rates).
    pub raw: bool,
    /// Do not record raw frames.
    pub no_raw: bool,
    /// Compression, overwriting, calibration.
    pub recording: RecordingChoice,
    /// Serve the partial results over HTTP (see [`LiveViewOptions`]).
    pub live_view: Option<LiveViewOptions>,
    /// The reductions.
    pub reductions: ReductionChoice,
}

impl Default for AcquireOptions {
    fn default() -> Self {
        Self {
            detector: DetectorKind::Merlin,
            host: Ipv4Addr::LOCALHOST.to_string(),
            control_port: 6341,
            data_port: 6342,
            api_port: 80,
            stream_port: 9999,
            mode: ArmMode::Active,
            nav_shape: None,
            nav_hint: None,
            out: PathBuf::from("out"),
            counter_depth: 12,
            exposure_ms: 1.0,
            frame_time_ms: None,
            count_time_ms: None,
            trigger: DetectorTrigger::Soft,
            arm_timeout_s: 30.0,
            frame_timeout_s: 5.0,
            first_frame_timeout_s: 10.0,
            raw: false,
            no_raw: false,
            recording: RecordingChoice::default(),
            live_view: None,
            reductions: ReductionChoice::default(),
        }
    }
}

/// File formats offline processing reads.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum FileFormat {
    /// Merlin `.hdr` + `.mib`.
    Merlin,
    /// DECTRIS HDF5 recording (`*_master.h5` with its data files).
    Dectris,
    /// NumPy `.npy`, 3-D or 4-D.
    Npy,
    /// Raw binary; layout from the raw options of [`DataSetOptions`].
    Raw,
    /// An HDF5 dataset (e.g. a stemflow recording; one of sparse frames is read as CSR).
    Hdf5,
    /// An ASI TPX3 CSR stream recording (`.tpx`, protocols.md §3), read sparse.
    Tpx3,
}

/// Where a data set is and how to read it ([`crate::offline::open_dataset`]).
#[derive(Clone, Debug, PartialEq)]
pub struct DataSetOptions {
    /// A Merlin `.hdr`/`.mib`, DECTRIS master, `.npy`, HDF5 or raw binary file.
    pub path: PathBuf,
    /// File format; `None`: from the name (`*_master.h5`: DECTRIS) or the extension.
    pub format: Option<FileFormat>,
    /// Scan shape; `None`: from the file. Required for raw files.
    pub nav_shape: Option<NavShape>,
    /// HDF5: dataset path (3-D or 4-D); `None`: /entry/data/frames, then /entry/data/data.
    pub dataset: Option<String>,
    /// Raw: frame shape, pixels.
    pub sig_shape: Option<SigShape>,
    /// Raw: pixel type in the file (`u16`, `f32`, NumPy names and codes, …).
    pub dtype: String,
    /// Raw: byte order (`little`, `big`); `None`: the one a NumPy-style dtype names, else
    /// little.
    pub byte_order: Option<String>,
    /// Raw: bytes before the first frame.
    pub offset: u64,
    /// Raw: bytes before each frame (a per-frame header).
    pub frame_header_bytes: u64,
}

impl DataSetOptions {
    /// A file whose format and layout are taken from the file itself.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            format: None,
            nav_shape: None,
            dataset: None,
            sig_shape: None,
            dtype: "u16".into(),
            byte_order: None,
            offset: 0,
            frame_header_bytes: 0,
        }
    }
}

/// The reductions offline on a file ([`crate::offline::process`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessOptions {
    /// The file and how to read it.
    pub data: DataSetOptions,
    /// Output folder.
    pub out: PathBuf,
    /// Do not copy the frames into the recording (results, images and run.json are still
    /// written).
    pub no_raw: bool,
    /// Compression, overwriting, calibration.
    pub recording: RecordingChoice,
    /// The reductions.
    pub reductions: ReductionChoice,
}

/// Options shared by plans, scripts and queues on the simulated instrument.
#[derive(Clone, Debug, PartialEq)]
pub struct SequenceOptions {
    /// Validate and print the steps, settings, duration and data volume; touch nothing.
    pub dry_run: bool,
    /// Output folder.
    pub out: PathBuf,
    /// Instrument profile (TOML) giving the plan defaults; `None`: the simulated one.
    pub profile: Option<PathBuf>,
    /// The reductions every acquisition computes.
    pub reductions: ReductionChoice,
    /// Do not record raw frames.
    pub no_raw: bool,
    /// Compression, overwriting, calibration.
    pub recording: RecordingChoice,
    /// Serve the partial results over HTTP across every acquisition (see
    /// [`LiveViewOptions`]).
    pub live_view: Option<LiveViewOptions>,
    /// Simulated-instrument fault: this microscope setting (e.g. `defocus_m`) does not take.
    pub sim_stuck_setting: Option<String>,
    /// Simulated-instrument fault: the beam current drops to 0.1 nA from START_S for
    /// DURATION_S after the start, written `START_S:DURATION_S`.
    pub sim_beam_dip: Option<String>,
}

impl Default for SequenceOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            out: PathBuf::from("out"),
            profile: None,
            reductions: ReductionChoice::default(),
            no_raw: false,
            recording: RecordingChoice::default(),
            live_view: None,
            sim_stuck_setting: None,
            sim_beam_dip: None,
        }
    }
}

/// A plan (`.toml`) or a sequence script (`.rhai`) ([`crate::sequences::run`]).
#[derive(Clone, Debug, PartialEq)]
pub struct RunOptions {
    /// The plan or script file.
    pub file: PathBuf,
    /// Blank the beam when the sequence ends (every exit path).
    pub blank_beam_on_cleanup: bool,
    /// Longest the plan or script may run, s; `None`: twice a plan's estimate plus 600 s,
    /// 3600 s for a script (`stemflow_sequences::queue::default_time_limit`).
    pub max_duration_s: Option<f64>,
    /// The rest.
    pub sequence: SequenceOptions,
}

/// An unattended queue ([`crate::sequences::queue`]).
#[derive(Clone, Debug, PartialEq)]
pub struct QueueRunOptions {
    /// The queue file.
    pub file: PathBuf,
    /// Continue from the first unit the journal in `out` does not show finished.
    pub resume: bool,
    /// The rest.
    pub sequence: SequenceOptions,
}

/// A detector simulator served standalone ([`crate::sim::serve`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SimOptions {
    /// Which detector to simulate.
    pub detector: DetectorKind,
    /// Address to bind (loopback unless told otherwise).
    pub host: IpAddr,
    /// The detector's ports, in the order [`DetectorKind::port_names`] gives (Merlin:
    /// control, data; DECTRIS: REST API, stream); 0 = ephemeral (printed on start).
    pub ports: [u16; 2],
    /// Serve this recording instead of synthetic frames.
    pub recording: Option<PathBuf>,
    /// Synthetic frames: scan shape.
    pub nav_shape: NavShape,
    /// Synthetic frames: frame shape.
    pub sig_shape: SigShape,
    /// Send as fast as the client takes it instead of at the frame time.
    pub fast: bool,
    /// Stop after this long (`None`: run until interrupted).
    pub duration: Option<Duration>,
    /// ASI TPX3: wait for a measurement started through the Serval REST API (active mode)
    /// instead of streaming to every client that connects.
    pub active: bool,
    /// ASI TPX3, free-running: s per frame (`None`: as fast as the client reads).
    pub frame_time_s: Option<f64>,
}

/// `stemflow bench merlin` ([`crate::bench::bench_merlin`]).
#[derive(Clone, Debug, PartialEq)]
pub struct BenchMerlinOptions {
    /// Scan shape.
    pub nav_shape: NavShape,
    /// Frame shape.
    pub sig_shape: SigShape,
    /// Counter depths to measure (12 → u16, 6 → u8, 24 → u32).
    pub counter_depth: Vec<u32>,
    /// Repetitions per configuration (the best is reported).
    pub repeat: usize,
    /// Recording modes to measure each configuration in: `None` without recording, else
    /// raw frames into a scratch HDF5 file with that compression.
    pub record: Vec<crate::bench::RecordMode>,
}

/// `stemflow bench all` ([`crate::bench::bench_all`]).
#[derive(Clone, Debug, PartialEq)]
pub struct BenchAllOptions {
    /// MiB of frames per in-memory configuration.
    pub mem_mib: u64,
    /// MiB of frames per end-to-end configuration.
    pub e2e_mib: u64,
    /// Runs per end-to-end configuration; the fastest counts.
    pub e2e_repeat: usize,
    /// Skip the end-to-end runs.
    pub skip_e2e: bool,
    /// Frames of the latency run.
    pub latency_frames: usize,
    /// Frame rate of the latency run, Hz.
    pub latency_rate_hz: f64,
}

/// `stemflow bench tpx3` ([`crate::bench::tpx3::bench_tpx3`]).
#[derive(Clone, Debug, PartialEq)]
pub struct BenchTpx3Options {
    /// Scan shape.
    pub nav_shape: NavShape,
    /// Frame shape, pixels.
    pub sig_shape: stemflow_core::SigShape,
    /// Mean events per frame.
    pub events_per_frame: u64,
    /// Repetitions (in memory: the best is reported; end to end: each is).
    pub repeat: usize,
}

/// `stemflow bench dectris` ([`crate::bench::dectris::bench_dectris`]).
#[derive(Clone, Debug, PartialEq)]
pub struct BenchDectrisOptions {
    /// Scan shape.
    pub nav_shape: NavShape,
    /// Repetitions per configuration (the best is reported).
    pub repeat: usize,
    /// Recording modes to measure each configuration in (as [`BenchMerlinOptions::record`]).
    pub record: Vec<crate::bench::RecordMode>,
}
