//! Command-line definitions, their translation into the application layer's options, and
//! dispatch. Nothing here decides how a run goes: every command is parsed, turned into
//! `stemflow_app::options` values and handed to the application layer.

use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use stemflow_app::options as app;
use stemflow_app::registry::DetectorKind;
use stemflow_core::NavShape;
use stemflow_core::detector::{ArmMode, DetectorTrigger};

/// Live 4D-STEM acquisition and processing.
///
/// Without a subcommand: one 4D-STEM scan on the embedded simulated instrument (microscope,
/// scan engine and Merlin detector simulated in-process, synthetic specimen), writing an
/// HDF5 file and PNG images of the virtual bright field, annular dark field and centre of
/// mass to `--out`.
///
/// The options of the default scan (`--out`, `--nav-shape`, …) belong to it alone: given
/// before a subcommand they are refused, not silently ignored.
#[derive(Parser, Debug)]
#[command(
    name = "stemflow",
    version,
    about,
    long_about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub simulate: SimulateArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a 4D-STEM scan on the simulated instrument (the default).
    Simulate(SimulateArgs),
    /// Acquire from a real or external detector: a Merlin over its control and data ports, or
    /// a DECTRIS detector over its REST API and stream.
    Acquire(AcquireArgs),
    /// Run the reductions offline on a recording (Merlin `.hdr`/`.mib`, DECTRIS master,
    /// `.npy`, HDF5, raw); `--reductions SPEC.toml` chooses the UDFs, `--roi-rect` /
    /// `--roi-mask` the scan positions.
    Process(ProcessArgs),
    /// Start a detector simulator standalone on 127.0.0.1.
    #[command(subcommand)]
    Sim(SimCommand),
    /// Measure throughput.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run a plan (`.toml`) or a sequence script (`.rhai`) on the simulated instrument;
    /// `--dry-run` prints the steps, settings, duration and data volume only.
    Run(RunArgs),
    /// Run an unattended queue (`.toml`) of plans and scripts with a crash-safe journal.
    Queue(QueueArgs),
}

/// `stemflow run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// A plan file (`plan = "stem_4d_scan"` and parameters) or a Rhai script (`.rhai`).
    pub file: PathBuf,
    /// Print the steps, device settings, estimated duration and data volume; touch nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Output folder for the recordings.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Instrument profile (TOML) giving the plan defaults; default: the simulated one.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// The reductions every acquisition computes and over which scan positions.
    #[command(flatten)]
    pub reductions: ReductionArgs,
    /// Do not record raw frames.
    #[arg(long)]
    pub no_raw: bool,
    #[command(flatten)]
    pub recording: RecordingArgs,
    /// Blank the beam when the sequence ends (every exit path).
    #[arg(long)]
    pub blank_beam_on_cleanup: bool,
    /// Longest the plan or script may run, s; past it the sequence fails (cleanup still
    /// runs). Default: twice a plan's estimated duration plus 600 s; 3600 s for a script.
    #[arg(long, value_name = "S")]
    pub max_duration_s: Option<f64>,
    #[command(flatten)]
    pub live_view: LiveViewArgs,
    /// Simulated-instrument fault: this microscope setting (e.g. `defocus_m`) does not take.
    #[arg(long)]
    pub sim_stuck_setting: Option<String>,
    /// Simulated-instrument fault: the beam current (monitor `beam_current_na`, 1 nA) drops
    /// to 0.1 nA from START_S for DURATION_S after the start, written `START_S:DURATION_S`.
    #[arg(long)]
    pub sim_beam_dip: Option<String>,
}

/// `stemflow queue`.
#[derive(Args, Debug, Clone)]
pub struct QueueArgs {
    /// The queue file.
    pub file: PathBuf,
    /// Validate and print every unit's steps and the total estimate; touch nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Continue from the first unit the journal in `--out` does not show finished.
    #[arg(long)]
    pub resume: bool,
    /// Output folder: `journal.jsonl`, the log and one folder of recordings per unit.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Instrument profile (TOML) giving the plan defaults; default: the simulated one.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// The reductions every acquisition computes and over which scan positions.
    #[command(flatten)]
    pub reductions: ReductionArgs,
    /// Do not record raw frames.
    #[arg(long)]
    pub no_raw: bool,
    #[command(flatten)]
    pub recording: RecordingArgs,
    /// Simulated-instrument fault: this microscope setting (e.g. `defocus_m`) does not take.
    #[arg(long)]
    pub sim_stuck_setting: Option<String>,
    /// Simulated-instrument fault: the beam current (monitor `beam_current_na`, 1 nA) drops
    /// to 0.1 nA from START_S for DURATION_S after the start, written `START_S:DURATION_S`.
    #[arg(long)]
    pub sim_beam_dip: Option<String>,
    #[command(flatten)]
    pub live_view: LiveViewArgs,
}

/// `--live-view` and its token (every command that acquires: the default scan, `acquire`,
/// `run`, `queue`).
#[derive(Args, Debug, Clone, Default)]
pub struct LiveViewArgs {
    /// Serve the partial results live over HTTP on ADDR (e.g. `127.0.0.1:8080`; port 0 picks
    /// a free one), across every acquisition of a plan or queue: `/` a page of the images,
    /// `/status.json`, `/result/<udf>/<buffer>.png`. The bound address is printed to stderr
    /// as `live view: http://ADDR/`. Bound to loopback it answers only requests for
    /// localhost; bound beyond loopback (e.g. `0.0.0.0:8080`) it is reachable from the
    /// network: a warning is printed and every request needs a token (see
    /// `--live-view-token`; without one a random token is printed in the `live view:` line).
    #[arg(long, value_name = "ADDR")]
    pub live_view: Option<SocketAddr>,
    /// The token every live-view request must then carry, as `?token=TOKEN` or
    /// `Authorization: Bearer TOKEN` (at least 16 characters of `A-Z a-z 0-9 - . _ ~`);
    /// required on loopback too when given.
    #[arg(long, value_name = "TOKEN", requires = "live_view", value_parser = live_view_token)]
    pub live_view_token: Option<String>,
}

/// A `--live-view-token` value, checked at parse time as the live view checks it.
fn live_view_token(s: &str) -> Result<String, String> {
    stemflow_app::live_view::check_token(s)
        .map(|()| s.to_string())
        .map_err(|e| format!("{e:#}"))
}

impl From<LiveViewArgs> for Option<app::LiveViewOptions> {
    fn from(a: LiveViewArgs) -> Self {
        a.live_view.map(|addr| app::LiveViewOptions {
            addr,
            token: a.live_view_token,
        })
    }
}

/// How a run records: compression, overwriting an earlier run, calibration (every command
/// that writes a recording).
#[derive(Args, Debug, Clone, Default)]
pub struct RecordingArgs {
    /// Frame compression: none, deflate (gzip level 1 with byte shuffle: every reader opens
    /// it as installed), deflate:1 … deflate:9, or bslz4 (bitshuffle-LZ4, HDF5 filter
    /// 32008: readers need `pip install hdf5plugin`). Default: the profile's, else deflate.
    #[arg(long, value_name = "NAME", value_parser = parse_compression)]
    pub compression: Option<stemflow_app::options::Compression>,
    /// Replace the outputs of an earlier run in the output folder (without it such a
    /// folder is refused).
    #[arg(long)]
    pub overwrite: bool,
    /// Scan step, nm per scan position (the calibration of the scan axes); overrides the
    /// profile's `[scan] step_nm`.
    #[arg(long, value_name = "NM")]
    pub scan_step_nm: Option<f64>,
    /// Scan rotation, degrees; overrides the profile's `[scan] rotation_deg`.
    #[arg(long, value_name = "DEG")]
    pub scan_rotation_deg: Option<f64>,
    /// Detector pixel pitch, µm; default: the profile's, the detector's read-back value or
    /// its model's (Merlin 55, ARINA 100, QUADRO 75).
    #[arg(long, value_name = "UM")]
    pub pixel_pitch_um: Option<f64>,
}

/// `--compression`.
///
/// # Errors
/// Not one of the names.
pub fn parse_compression(text: &str) -> Result<stemflow_app::options::Compression, String> {
    text.parse()
}

impl From<RecordingArgs> for app::RecordingChoice {
    fn from(a: RecordingArgs) -> Self {
        Self {
            compression: a.compression,
            overwrite: a.overwrite,
            scan_step_nm: a.scan_step_nm,
            scan_rotation_deg: a.scan_rotation_deg,
            pixel_pitch_um: a.pixel_pitch_um,
        }
    }
}

/// Which reductions a run computes, over which scan positions and how often it shows them
/// (`process`, the default run, `acquire`, `run`, `queue`).
#[derive(Args, Debug, Clone)]
pub struct ReductionArgs {
    /// A reduction spec (TOML: `[[udf]]` entries and an optional `[roi]`; see
    /// docs/reductions.md): run its UDFs instead of the default set (sum, sum_sig, virtual
    /// BF + ADF, CoM). Overrides the profile's `[reductions] spec`.
    #[arg(long, value_name = "SPEC.toml")]
    pub reductions: Option<PathBuf>,
    /// Process only scan rows R0..R1 and columns C0..C1 (half-open, from 0), replacing the
    /// spec's ROI; nav results are NaN outside it. With `run` and `queue` it applies to
    /// every acquisition, and each scan must hold it.
    #[arg(long, value_name = "R0:R1,C0:C1", conflicts_with = "roi_mask")]
    pub roi_rect: Option<stemflow_processing::RoiRect>,
    /// Process only the scan positions set (nonzero) in this `.npy` array of the scan's
    /// shape, replacing the spec's ROI; nav results are NaN outside it.
    #[arg(long, value_name = "FILE.npy")]
    pub roi_mask: Option<PathBuf>,
    /// Time between two live snapshots of the results (progress, live view), ms, at least
    /// 1. Shorter: fresher views at more merging cost.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_SNAPSHOT_INTERVAL_MS,
          value_parser = parse_snapshot_interval_ms)]
    pub snapshot_interval_ms: u64,
}

/// The engine's default time between two snapshots, ms.
pub const DEFAULT_SNAPSHOT_INTERVAL_MS: u64 = app::DEFAULT_SNAPSHOT_INTERVAL_MS;

impl Default for ReductionArgs {
    fn default() -> Self {
        Self {
            reductions: None,
            roi_rect: None,
            roi_mask: None,
            snapshot_interval_ms: DEFAULT_SNAPSHOT_INTERVAL_MS,
        }
    }
}

/// `--snapshot-interval-ms`: a whole number of milliseconds, at least 1.
///
/// # Errors
/// Not a whole number, or 0 (the engine would snapshot on every poll).
pub fn parse_snapshot_interval_ms(text: &str) -> Result<u64, String> {
    let ms: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("expected a whole number of milliseconds (≥ 1), got `{text}`"))?;
    if ms == 0 {
        return Err("the snapshot interval must be at least 1 ms, got 0".into());
    }
    Ok(ms)
}

impl ReductionArgs {
    /// True when no spec and no ROI was given (the snapshot interval always applies).
    pub fn is_empty(&self) -> bool {
        self.reductions.is_none() && self.roi_rect.is_none() && self.roi_mask.is_none()
    }
}

#[derive(Args, Debug, Clone)]
pub struct SimulateArgs {
    /// Output folder for the HDF5 file and the PNG images.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Instrument profile (TOML); default: the embedded simulated instrument.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Scan shape ROWSxCOLS, overriding the profile.
    #[arg(long)]
    pub nav_shape: Option<NavShape>,
    /// Do not record raw frames (results and images are still written).
    #[arg(long)]
    pub no_raw: bool,
    #[command(flatten)]
    pub recording: RecordingArgs,
    #[command(flatten)]
    pub live_view: LiveViewArgs,
    #[command(flatten)]
    pub reductions: ReductionArgs,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// stemflow configures and arms the detector.
    Active,
    /// Wait for an acquisition armed by someone else.
    Passive,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum TriggerArg {
    /// The detector's own timer.
    Internal,
    /// One software trigger for the whole scan.
    Soft,
    /// Rising edge on the TTL trigger input (pixel clock from the scan engine).
    External,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum DetectorArg {
    /// Quantum Detectors Merlin (control and data TCP ports).
    Merlin,
    /// DECTRIS SIMPLON detector, e.g. ARINA or QUADRO (REST API and ZeroMQ stream).
    Dectris,
    /// ASI Timepix3 (CheeTah): sparse CSR event stream; Serval REST for active mode.
    Tpx3,
}

#[derive(Args, Debug, Clone)]
pub struct AcquireArgs {
    /// Which detector.
    #[arg(long, value_enum, default_value = "merlin")]
    pub detector: DetectorArg,
    /// Detector host (Merlin PC, or the DECTRIS detector control unit): an IP address or
    /// a host name.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Merlin control port.
    #[arg(long, default_value_t = 6341)]
    pub control_port: u16,
    /// Data port: Merlin 6342, ASI TPX3 CSR stream 8283 (the detector's default when not
    /// given).
    #[arg(long)]
    pub data_port: Option<u16>,
    /// REST API port: DECTRIS 80; ASI TPX3 Serval 8080 (active mode; passive mode uses
    /// Serval only when this is given).
    #[arg(long)]
    pub api_port: Option<u16>,
    /// DECTRIS stream port (stream v1: 9999).
    #[arg(long, default_value_t = 9999)]
    pub stream_port: u16,
    /// active: configure and arm the detector; passive: wait for someone else to arm it.
    #[arg(long, value_enum, default_value = "active")]
    pub mode: ModeArg,
    /// Scan shape ROWSxCOLS (frames = ROWS*COLS). Passive mode: default from the HDR.
    #[arg(long)]
    pub nav_shape: Option<NavShape>,
    /// Passive mode: a scan-shape hint with one side derived from the announced frame
    /// count, e.g. `?x256` (256 positions per line, as many lines as there are frames).
    #[arg(long, conflicts_with = "nav_shape")]
    pub nav_hint: Option<stemflow_drivers::nav_hint::NavHint>,
    /// Output folder.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Merlin counter depth (active mode): 1, 6, 12 or 24 bits.
    #[arg(long, default_value_t = 12)]
    pub counter_depth: u32,
    /// Exposure per frame, ms (active mode): the frame period and the count time unless
    /// --frame-time-ms / --count-time-ms give them apart.
    #[arg(long, default_value_t = 1.0)]
    pub exposure_ms: f64,
    /// Frame period, ms (active mode; default: --exposure-ms).
    #[arg(long)]
    pub frame_time_ms: Option<f64>,
    /// Count time per frame, ms (active mode; default: the frame period). A DECTRIS detector
    /// needs count time ≤ frame time − readout: a longer one becomes the frame time minus
    /// the readout time the detector reports (stored in the run's metadata).
    #[arg(long)]
    pub count_time_ms: Option<f64>,
    /// Trigger (active mode).
    #[arg(long, value_enum, default_value = "soft")]
    pub trigger: TriggerArg,
    /// Seconds to wait for the HDR (arm confirmation; passive: for someone to arm).
    #[arg(long, default_value_t = 30.0)]
    pub arm_timeout_s: f64,
    /// Seconds without a frame after which the acquisition is ended (rest counted lost).
    #[arg(long, default_value_t = 5.0)]
    pub frame_timeout_s: f64,
    /// Seconds from arming to the first frame (a detector that is never triggered).
    #[arg(long, default_value_t = 10.0)]
    pub first_frame_timeout_s: f64,
    /// Merlin, active mode: ask for raw frames (FILEFORMAT 2, as at the highest frame rates).
    #[arg(long)]
    pub raw: bool,
    /// Do not record raw frames.
    #[arg(long)]
    pub no_raw: bool,
    #[command(flatten)]
    pub recording: RecordingArgs,
    #[command(flatten)]
    pub live_view: LiveViewArgs,
    #[command(flatten)]
    pub reductions: ReductionArgs,
}

#[derive(Args, Debug, Clone)]
pub struct ProcessArgs {
    /// A Merlin `.hdr`/`.mib`, `.npy`, HDF5 (`.h5`, `.hdf5`, `.nxs`) or raw binary file.
    pub path: PathBuf,
    /// File format; default: from the name (`*_master.h5`: dectris) or the extension
    /// (raw: `.raw`, `.bin`, `.dat`).
    #[arg(long, value_enum)]
    pub format: Option<ProcessFormat>,
    /// Scan shape ROWSxCOLS; default: from the file (Merlin: ScanY x ScanX; 3-D arrays:
    /// 1 x frames). Required for raw files.
    #[arg(long)]
    pub nav_shape: Option<NavShape>,
    /// HDF5: dataset path (3-D or 4-D); default /entry/data/frames, then /entry/data/data.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Raw: frame shape ROWSxCOLS.
    #[arg(long)]
    pub sig_shape: Option<stemflow_core::SigShape>,
    /// Raw: pixel type in the file: u8, u16, u32, u64, f32, f64 (read as they are); i8,
    /// i16 (read as float32, exactly); i32, i64 (read as float64; int64 only while every
    /// value lies within ±2^53). NumPy's names and codes too: uint16, int16, float32, <i2,
    /// >f4, f8, … (`u8`/`i8` are 8-bit; NumPy's `<u8` is refused as ambiguous).
    #[arg(long, default_value = "u16")]
    pub dtype: String,
    /// Raw: byte order (little, big); default: the one a NumPy-style --dtype names
    /// (`>i2`: big), else little.
    #[arg(long)]
    pub byte_order: Option<String>,
    /// Raw: bytes before the first frame.
    #[arg(long, default_value_t = 0)]
    pub offset: u64,
    /// Raw: bytes before each frame (a per-frame header).
    #[arg(long, default_value_t = 0)]
    pub frame_header_bytes: u64,
    /// Output folder.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Do not copy the frames into the recording (results, images and run.json are still
    /// written; the file holds no frames dataset).
    #[arg(long)]
    pub no_raw: bool,
    #[command(flatten)]
    pub recording: RecordingArgs,
    #[command(flatten)]
    pub reductions: ReductionArgs,
}

/// File formats `stemflow process` reads.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProcessFormat {
    /// Merlin `.hdr` + `.mib`.
    Merlin,
    /// DECTRIS HDF5 recording (`*_master.h5` with its data files; bitshuffle-LZ4 decoded
    /// by stemflow, no filter plugin needed).
    Dectris,
    /// NumPy `.npy`, 3-D or 4-D: unsigned integers, float32/float64, signed integers
    /// (int8/int16 read as float32, int32/int64 as float64).
    Npy,
    /// Raw binary; layout from --nav-shape, --sig-shape, --dtype, --byte-order, --offset.
    Raw,
    /// HDF5 dataset (--dataset), e.g. a stemflow recording: unsigned integers,
    /// float32/float64, signed integers (read as floats, as for npy); a stemflow
    /// recording of sparse frames (TPX3) is read as CSR.
    Hdf5,
    /// ASI TPX3 CSR stream recording (`.tpx`: the data port's bytes, protocols.md §3),
    /// processed sparse.
    Tpx3,
}

#[derive(Subcommand, Debug)]
pub enum SimCommand {
    /// Merlin detector simulator (control and data ports).
    Merlin(SimMerlinArgs),
    /// DECTRIS SIMPLON detector simulator (REST API and stream-v1 ZeroMQ PUSH).
    Dectris(SimDectrisArgs),
    /// ASI TPX3 simulator: the CSR event stream (as LiberTEM-live reads it) and a Serval
    /// REST emulation for active mode.
    Tpx3(SimTpx3Args),
}

#[derive(Args, Debug, Clone)]
pub struct SimTpx3Args {
    /// Address to bind (loopback by default).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Serval REST API port (0 = ephemeral; printed on start).
    #[arg(long, default_value_t = stemflow_simulators::tpx3::SERVAL_PORT)]
    pub api_port: u16,
    /// CSR data port (0 = ephemeral; printed on start).
    #[arg(long, default_value_t = stemflow_simulators::tpx3::DATA_PORT)]
    pub data_port: u16,
    /// Serve this stream recording (`.tpx`) instead of synthetic events.
    #[arg(long)]
    pub recording: Option<PathBuf>,
    /// Synthetic events: scan shape.
    #[arg(long, default_value = "64x64")]
    pub nav_shape: NavShape,
    /// Synthetic events: frame shape.
    #[arg(long, default_value = "512x512")]
    pub sig_shape: stemflow_core::SigShape,
    /// Wait for a measurement started through Serval (`/measurement/start`) instead of
    /// streaming the scan to every client that connects (LiberTEM-live's simulator).
    #[arg(long)]
    pub active: bool,
    /// Free-running: seconds per frame (default: as fast as the client reads).
    #[arg(long)]
    pub frame_time_s: Option<f64>,
    /// Send as fast as the client takes it (overrides --frame-time-s).
    #[arg(long)]
    pub fast: bool,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long)]
    pub duration_s: Option<f64>,
}

#[derive(Args, Debug, Clone)]
pub struct SimDectrisArgs {
    /// Address to bind (loopback by default).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// REST API port (0 = ephemeral; printed on start).
    #[arg(long, default_value_t = stemflow_simulators::dectris::LIBERTEM_API_PORT)]
    pub api_port: u16,
    /// Stream port, ZeroMQ PUSH (0 = ephemeral; printed on start).
    #[arg(long, default_value_t = stemflow_simulators::dectris::STREAM_V1_PORT)]
    pub stream_port: u16,
    /// Serve this stream capture (`.dump`) or HDF5 master file (`*_master.h5`) instead of
    /// synthetic frames.
    #[arg(long)]
    pub recording: Option<PathBuf>,
    /// Synthetic frames: scan shape.
    #[arg(long, default_value = "64x64")]
    pub nav_shape: NavShape,
    /// Synthetic frames: frame shape.
    #[arg(long, default_value = "256x256")]
    pub sig_shape: stemflow_core::SigShape,
    /// Send as fast as the client takes it instead of at the frame time.
    #[arg(long)]
    pub fast: bool,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long)]
    pub duration_s: Option<f64>,
}

#[derive(Args, Debug, Clone)]
pub struct SimMerlinArgs {
    /// Address to bind (loopback by default).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Control port (0 = ephemeral; printed on start).
    #[arg(long, default_value_t = 6341)]
    pub control_port: u16,
    /// Data port (0 = ephemeral; printed on start).
    #[arg(long, default_value_t = 6342)]
    pub data_port: u16,
    /// Serve this recording (`.hdr` or `.mib`) instead of synthetic frames.
    #[arg(long)]
    pub recording: Option<PathBuf>,
    /// Synthetic frames: scan shape.
    #[arg(long, default_value = "64x64")]
    pub nav_shape: NavShape,
    /// Synthetic frames: frame shape.
    #[arg(long, default_value = "256x256")]
    pub sig_shape: stemflow_core::SigShape,
    /// Send as fast as the socket takes it instead of at the frame period.
    #[arg(long)]
    pub fast: bool,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long)]
    pub duration_s: Option<f64>,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Merlin simulator → loopback → receiver → reductions (sum, BF, ADF, CoM).
    Merlin(BenchMerlinArgs),
    /// Every processing figure: ceilings, in memory and end to end for 256² and 512²
    /// frames of u8, u16, u32, and the arrival-to-snapshot latency (under two minutes).
    All(BenchAllArgs),
    /// DECTRIS simulator → ZeroMQ stream → receiver → bslz4 decode in the workers →
    /// reductions; and the codec's single-core decode rate.
    Dectris(BenchDectrisArgs),
    /// ASI TPX3: sparse reductions (sum, sum over signal, BF, ADF, CoM on the events) in
    /// memory, and TPX3 simulator → loopback → receiver → reductions; events/s and frames/s.
    Tpx3(BenchTpx3Args),
}

#[derive(Args, Debug, Clone)]
pub struct BenchTpx3Args {
    /// Scan shape.
    #[arg(long, default_value = "128x128")]
    pub nav_shape: NavShape,
    /// Frame shape, pixels.
    #[arg(long, default_value = "512x512")]
    pub sig_shape: stemflow_core::SigShape,
    /// Mean events per frame.
    #[arg(long, default_value_t = 410)]
    pub events_per_frame: u64,
    /// Repetitions (in memory: the best is reported; end to end: each is).
    #[arg(long, default_value_t = 2)]
    pub repeat: usize,
}

#[derive(Args, Debug, Clone)]
pub struct BenchDectrisArgs {
    /// Scan shape.
    #[arg(long, default_value = "128x128")]
    pub nav_shape: NavShape,
    /// Repetitions per configuration (the best is reported).
    #[arg(long, default_value_t = 2)]
    pub repeat: usize,
    /// Recording modes, comma separated: off (no recording), none, deflate, deflate:N,
    /// bslz4 (raw frames into a scratch file in the temporary folder, removed after). Each
    /// is reported with its rate as a percentage of `off`'s.
    #[arg(long, default_value = "off", value_delimiter = ',', value_parser = parse_record_mode)]
    pub record: Vec<stemflow_app::bench::RecordMode>,
}

/// A `--record` mode: `off`, or a compression name.
///
/// # Errors
/// Neither `off` nor a compression.
pub fn parse_record_mode(text: &str) -> Result<stemflow_app::bench::RecordMode, String> {
    if text.trim() == "off" {
        Ok(None)
    } else {
        parse_compression(text).map(Some)
    }
}

#[derive(Args, Debug, Clone)]
pub struct BenchAllArgs {
    /// MiB of frames per in-memory configuration (1 GiB: tens of milliseconds per pass, so
    /// that neither the run's start, about 0.7 ms, nor a moment of another tenant's load
    /// decides the figure).
    #[arg(long, default_value_t = 1024)]
    pub mem_mib: u64,
    /// MiB of frames per end-to-end configuration (4 GiB: 32 768 frames of 256 × 256 u16,
    /// about a second; a run of a few tenths of a second mostly measures its start).
    #[arg(long, default_value_t = 4096)]
    pub e2e_mib: u64,
    /// Runs per end-to-end configuration; the fastest counts (each is short, so one slow
    /// start or a busy neighbour would otherwise decide the figure).
    #[arg(long, default_value_t = 2)]
    pub e2e_repeat: usize,
    /// Skip the end-to-end runs.
    #[arg(long)]
    pub skip_e2e: bool,
    /// Frames of the latency run.
    #[arg(long, default_value_t = 8192)]
    pub latency_frames: usize,
    /// Frame rate of the latency run, Hz.
    #[arg(long, default_value_t = 4000.0)]
    pub latency_rate_hz: f64,
}

#[derive(Args, Debug, Clone)]
pub struct BenchMerlinArgs {
    /// Scan shape.
    #[arg(long, default_value = "128x128")]
    pub nav_shape: NavShape,
    /// Frame shape.
    #[arg(long, default_value = "256x256")]
    pub sig_shape: stemflow_core::SigShape,
    /// Counter depths to measure (12 → u16, 6 → u8, 24 → u32), comma separated.
    #[arg(long, default_value = "12,6", value_delimiter = ',')]
    pub counter_depth: Vec<u32>,
    /// Repetitions per configuration (the best is reported).
    #[arg(long, default_value_t = 2)]
    pub repeat: usize,
    /// Recording modes, comma separated, as for `bench dectris --record`.
    #[arg(long, default_value = "off", value_delimiter = ',', value_parser = parse_record_mode)]
    pub record: Vec<stemflow_app::bench::RecordMode>,
}

impl From<ReductionArgs> for app::ReductionChoice {
    fn from(a: ReductionArgs) -> Self {
        Self {
            spec: a.reductions,
            roi_rect: a.roi_rect,
            roi_mask: a.roi_mask,
            snapshot_interval_ms: a.snapshot_interval_ms,
        }
    }
}

impl From<SimulateArgs> for app::SimulateOptions {
    fn from(a: SimulateArgs) -> Self {
        Self {
            out: a.out,
            profile: a.profile,
            nav_shape: a.nav_shape,
            no_raw: a.no_raw,
            recording: a.recording.into(),
            live_view: a.live_view.into(),
            reductions: a.reductions.into(),
        }
    }
}

impl From<DetectorArg> for DetectorKind {
    fn from(d: DetectorArg) -> Self {
        match d {
            DetectorArg::Merlin => DetectorKind::Merlin,
            DetectorArg::Dectris => DetectorKind::Dectris,
            DetectorArg::Tpx3 => DetectorKind::Tpx3,
        }
    }
}

impl From<AcquireArgs> for app::AcquireOptions {
    fn from(a: AcquireArgs) -> Self {
        let detector: DetectorKind = a.detector.into();
        let (data_default, api_default) = detector.default_ports();
        let passive = matches!(a.mode, ModeArg::Passive);
        Self {
            detector,
            host: a.host,
            control_port: a.control_port,
            data_port: a.data_port.unwrap_or(data_default),
            api_port: a
                .api_port
                .unwrap_or(if detector == DetectorKind::Tpx3 && passive {
                    0
                } else {
                    api_default
                }),
            stream_port: a.stream_port,
            mode: match a.mode {
                ModeArg::Active => ArmMode::Active,
                ModeArg::Passive => ArmMode::Passive,
            },
            nav_shape: a.nav_shape,
            nav_hint: a.nav_hint,
            out: a.out,
            counter_depth: a.counter_depth,
            exposure_ms: a.exposure_ms,
            frame_time_ms: a.frame_time_ms,
            count_time_ms: a.count_time_ms,
            trigger: match a.trigger {
                TriggerArg::Internal => DetectorTrigger::Internal,
                TriggerArg::Soft => DetectorTrigger::Soft,
                TriggerArg::External => DetectorTrigger::ExternalRising,
            },
            arm_timeout_s: a.arm_timeout_s,
            frame_timeout_s: a.frame_timeout_s,
            first_frame_timeout_s: a.first_frame_timeout_s,
            raw: a.raw,
            no_raw: a.no_raw,
            recording: a.recording.into(),
            live_view: a.live_view.into(),
            reductions: a.reductions.into(),
        }
    }
}

impl From<ProcessArgs> for app::ProcessOptions {
    fn from(a: ProcessArgs) -> Self {
        Self {
            data: app::DataSetOptions {
                path: a.path,
                format: a.format.map(|f| match f {
                    ProcessFormat::Merlin => app::FileFormat::Merlin,
                    ProcessFormat::Dectris => app::FileFormat::Dectris,
                    ProcessFormat::Npy => app::FileFormat::Npy,
                    ProcessFormat::Raw => app::FileFormat::Raw,
                    ProcessFormat::Hdf5 => app::FileFormat::Hdf5,
                    ProcessFormat::Tpx3 => app::FileFormat::Tpx3,
                }),
                nav_shape: a.nav_shape,
                dataset: a.dataset,
                sig_shape: a.sig_shape,
                dtype: a.dtype,
                byte_order: a.byte_order,
                offset: a.offset,
                frame_header_bytes: a.frame_header_bytes,
            },
            out: a.out,
            no_raw: a.no_raw,
            recording: a.recording.into(),
            reductions: a.reductions.into(),
        }
    }
}

impl From<RunArgs> for app::RunOptions {
    fn from(a: RunArgs) -> Self {
        Self {
            file: a.file,
            blank_beam_on_cleanup: a.blank_beam_on_cleanup,
            max_duration_s: a.max_duration_s,
            sequence: app::SequenceOptions {
                dry_run: a.dry_run,
                out: a.out,
                profile: a.profile,
                reductions: a.reductions.into(),
                no_raw: a.no_raw,
                recording: a.recording.into(),
                live_view: a.live_view.into(),
                sim_stuck_setting: a.sim_stuck_setting,
                sim_beam_dip: a.sim_beam_dip,
            },
        }
    }
}

impl From<QueueArgs> for app::QueueRunOptions {
    fn from(a: QueueArgs) -> Self {
        Self {
            file: a.file,
            resume: a.resume,
            sequence: app::SequenceOptions {
                dry_run: a.dry_run,
                out: a.out,
                profile: a.profile,
                reductions: a.reductions.into(),
                no_raw: a.no_raw,
                recording: a.recording.into(),
                live_view: a.live_view.into(),
                sim_stuck_setting: a.sim_stuck_setting,
                sim_beam_dip: a.sim_beam_dip,
            },
        }
    }
}

/// Seconds as given on the command line (`--duration-s`), as a duration.
fn seconds(s: Option<f64>) -> Option<Duration> {
    s.map(|s| Duration::from_secs_f64(s.max(0.0)))
}

impl From<SimMerlinArgs> for app::SimOptions {
    fn from(a: SimMerlinArgs) -> Self {
        Self {
            detector: DetectorKind::Merlin,
            host: a.host,
            ports: [a.control_port, a.data_port],
            recording: a.recording,
            nav_shape: a.nav_shape,
            sig_shape: a.sig_shape,
            fast: a.fast,
            duration: seconds(a.duration_s),
            active: false,
            frame_time_s: None,
        }
    }
}

impl From<SimTpx3Args> for app::SimOptions {
    fn from(a: SimTpx3Args) -> Self {
        Self {
            detector: DetectorKind::Tpx3,
            host: a.host,
            ports: [a.api_port, a.data_port],
            recording: a.recording,
            nav_shape: a.nav_shape,
            sig_shape: a.sig_shape,
            fast: a.fast,
            duration: seconds(a.duration_s),
            active: a.active,
            frame_time_s: a.frame_time_s,
        }
    }
}

impl From<SimDectrisArgs> for app::SimOptions {
    fn from(a: SimDectrisArgs) -> Self {
        Self {
            detector: DetectorKind::Dectris,
            host: a.host,
            ports: [a.api_port, a.stream_port],
            recording: a.recording,
            nav_shape: a.nav_shape,
            sig_shape: a.sig_shape,
            fast: a.fast,
            duration: seconds(a.duration_s),
            active: false,
            frame_time_s: None,
        }
    }
}

impl From<BenchMerlinArgs> for app::BenchMerlinOptions {
    fn from(a: BenchMerlinArgs) -> Self {
        Self {
            nav_shape: a.nav_shape,
            sig_shape: a.sig_shape,
            counter_depth: a.counter_depth,
            repeat: a.repeat,
            record: a.record,
        }
    }
}

impl From<BenchAllArgs> for app::BenchAllOptions {
    fn from(a: BenchAllArgs) -> Self {
        Self {
            mem_mib: a.mem_mib,
            e2e_mib: a.e2e_mib,
            e2e_repeat: a.e2e_repeat,
            skip_e2e: a.skip_e2e,
            latency_frames: a.latency_frames,
            latency_rate_hz: a.latency_rate_hz,
        }
    }
}

impl From<BenchTpx3Args> for app::BenchTpx3Options {
    fn from(a: BenchTpx3Args) -> Self {
        Self {
            nav_shape: a.nav_shape,
            sig_shape: a.sig_shape,
            events_per_frame: a.events_per_frame,
            repeat: a.repeat,
        }
    }
}

impl From<BenchDectrisArgs> for app::BenchDectrisOptions {
    fn from(a: BenchDectrisArgs) -> Self {
        Self {
            nav_shape: a.nav_shape,
            repeat: a.repeat,
            record: a.record,
        }
    }
}

/// Runs the command `cli` names.
///
/// # Errors
/// The command's own errors (see `stemflow_app`); [`stemflow_app::Cancelled`] when the
/// user cancelled it.
pub fn dispatch(cli: Cli) -> Result<()> {
    use stemflow_app::{acquisition, bench, offline, sequences, sim};
    match cli.command {
        None => acquisition::simulate(&cli.simulate.into()),
        Some(Command::Simulate(a)) => acquisition::simulate(&a.into()),
        Some(Command::Acquire(a)) => acquisition::acquire(&a.into()),
        Some(Command::Process(a)) => offline::process(&a.into()),
        Some(Command::Sim(SimCommand::Merlin(a))) => sim::serve(&a.into()),
        Some(Command::Sim(SimCommand::Dectris(a))) => sim::serve(&a.into()),
        Some(Command::Sim(SimCommand::Tpx3(a))) => sim::serve(&a.into()),
        Some(Command::Bench(BenchCommand::Merlin(a))) => bench::bench_merlin(&a.into()),
        Some(Command::Bench(BenchCommand::All(a))) => bench::bench_all(&a.into()),
        Some(Command::Bench(BenchCommand::Dectris(a))) => bench::dectris::bench_dectris(&a.into()),
        Some(Command::Bench(BenchCommand::Tpx3(a))) => bench::tpx3::bench_tpx3(&a.into()),
        Some(Command::Run(a)) => sequences::run(&a.into()),
        Some(Command::Queue(a)) => sequences::queue(&a.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stemflow_app::reductions::{Geometry, Reductions};
    use stemflow_core::{DType, SigShape};
    use stemflow_processing::RunConfig;

    /// The reduction options alone, as every command flattens them.
    #[derive(Parser, Debug)]
    struct Opts {
        #[command(flatten)]
        r: ReductionArgs,
    }

    fn parse(args: &[&str]) -> Result<Opts, clap::Error> {
        Opts::try_parse_from(std::iter::once("stemflow").chain(args.iter().copied()))
    }

    fn config_of(r: &Reductions) -> RunConfig {
        r.run_config(NavShape::new(4, 4), SigShape::new(8, 8), DType::U16, None)
    }

    /// `--snapshot-interval-ms` reaches the engine's configuration through both ways a
    /// command builds its reductions (alone, or over a profile's), spec or not.
    #[test]
    fn the_snapshot_interval_reaches_the_run_config() {
        let o = parse(&["--snapshot-interval-ms", "250"]).unwrap();
        let cfg = config_of(&Reductions::from_choice(&o.r.clone().into()).unwrap());
        assert_eq!(cfg.snapshot_interval, Duration::from_millis(250));
        let profile = Reductions::load(None, None, None).unwrap();
        let cfg = config_of(&profile.with_choice(&o.r.clone().into()).unwrap());
        assert_eq!(cfg.snapshot_interval, Duration::from_millis(250));
        let o = parse(&["--snapshot-interval-ms", "7", "--roi-rect", "0:2,0:2"]).unwrap();
        let r = Reductions::from_choice(&o.r.clone().into()).unwrap();
        let (_, roi) = r
            .build(
                &Geometry::centred(SigShape::new(8, 8)),
                SigShape::new(8, 8),
                NavShape::new(4, 4),
            )
            .unwrap();
        let cfg = r.run_config(NavShape::new(4, 4), SigShape::new(8, 8), DType::U16, roi);
        assert_eq!(cfg.snapshot_interval, Duration::from_millis(7));
        assert!(cfg.roi.is_some());
    }

    /// Without the option: 100 ms, the engine's default.
    #[test]
    fn the_default_snapshot_interval_is_100_ms() {
        let o = parse(&[]).unwrap();
        assert_eq!(o.r.snapshot_interval_ms, 100);
        let cfg = config_of(&Reductions::from_choice(&o.r.clone().into()).unwrap());
        assert_eq!(cfg.snapshot_interval, Duration::from_millis(100));
        assert_eq!(ReductionArgs::default().snapshot_interval_ms, 100);
    }

    /// 0 and non-numbers are refused with a message naming the limit.
    #[test]
    fn a_zero_or_garbled_snapshot_interval_is_refused() {
        let e = parse(&["--snapshot-interval-ms", "0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 1 ms"), "{e}");
        let e = parse(&["--snapshot-interval-ms", "fast"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("whole number of milliseconds"), "{e}");
    }
}
