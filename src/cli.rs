//! Command-line definitions and dispatch.

use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::IpAddr;
use std::path::PathBuf;
use stemflow_core::NavShape;

/// Live 4D-STEM acquisition and processing.
///
/// Without a subcommand: one 4D-STEM scan on the embedded simulated instrument (microscope,
/// scan engine and Merlin detector simulated in-process, synthetic specimen), writing an
/// HDF5 file and PNG images of the virtual bright field, annular dark field and centre of
/// mass to `--out`.
#[derive(Parser, Debug)]
#[command(name = "stemflow", version, about, long_about)]
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
    /// Acquire from a real or external Merlin detector over its control and data ports.
    Acquire(AcquireArgs),
    /// Run the reductions offline on a recorded Merlin `.hdr`/`.mib` set.
    Process(ProcessArgs),
    /// Start a detector simulator standalone on 127.0.0.1.
    #[command(subcommand)]
    Sim(SimCommand),
    /// Measure throughput.
    #[command(subcommand)]
    Bench(BenchCommand),
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

#[derive(Args, Debug, Clone)]
pub struct AcquireArgs {
    /// Merlin host.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Control port.
    #[arg(long, default_value_t = 6341)]
    pub control_port: u16,
    /// Data port.
    #[arg(long, default_value_t = 6342)]
    pub data_port: u16,
    /// active: configure and arm the detector; passive: wait for someone else to arm it.
    #[arg(long, value_enum, default_value = "active")]
    pub mode: ModeArg,
    /// Scan shape ROWSxCOLS (frames = ROWS*COLS). Passive mode: default from the HDR.
    #[arg(long)]
    pub nav_shape: Option<NavShape>,
    /// Output folder.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Counter depth (active mode): 1, 6, 12 or 24 bits.
    #[arg(long, default_value_t = 12)]
    pub counter_depth: u32,
    /// Exposure per frame, ms (active mode).
    #[arg(long, default_value_t = 1.0)]
    pub exposure_ms: f64,
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
    /// Active mode: ask for raw frames (FILEFORMAT 2, as at the highest frame rates).
    #[arg(long)]
    pub raw: bool,
    /// Do not record raw frames.
    #[arg(long)]
    pub no_raw: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ProcessArgs {
    /// A Merlin `.hdr` or `.mib` file.
    pub path: PathBuf,
    /// Scan shape ROWSxCOLS; default: from the header (ScanY x ScanX) or 1 x frames.
    #[arg(long)]
    pub nav_shape: Option<NavShape>,
    /// Output folder.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum SimCommand {
    /// Merlin detector simulator (control and data ports).
    Merlin(SimMerlinArgs),
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
}

pub fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        None => crate::run::simulate(&cli.simulate),
        Some(Command::Simulate(a)) => crate::run::simulate(&a),
        Some(Command::Acquire(a)) => crate::run::acquire(&a),
        Some(Command::Process(a)) => crate::offline::process(&a),
        Some(Command::Sim(SimCommand::Merlin(a))) => crate::simcmd::sim_merlin(&a),
        Some(Command::Bench(BenchCommand::Merlin(a))) => crate::bench::bench_merlin(&a),
    }
}
