//! Simulators of the instrument around a 4D-STEM experiment, so the whole system runs — and
//! every test passes — without hardware: a Merlin detector that speaks the real wire protocol,
//! a scan engine that drives it through a modelled trigger line, a microscope column, and a
//! synthetic specimen whose ground truth is known.
//!
//! All simulators use std threads and blocking sockets; they bind where they are told
//! (127.0.0.1 in tests) and stop when dropped.
//!
//! # Layout
//! - [`merlin`]: [`merlin::MerlinSim`], a Quantum Detectors Merlin on two TCP ports (control
//!   and data, protocols.md §1) with real variable semantics, soft/external/internal
//!   triggering, frame-time or as-fast-as-possible pacing, recording replay and fault
//!   injection. Inside: `wire` (our own MPX/HDR/MQ1/R64 encoder), `mib` (a minimal recording
//!   reader), `control` (request parsing and variables), `frames` (frame sources and the
//!   encoded-frame cache), `engine` (acquisition state and the batched sender).
//! - [`dectris`]: [`dectris::DectrisSim`], a DECTRIS SIMPLON detector (ARINA/QUADRO-like,
//!   protocols.md §2): the REST API (axum on its own tokio runtime) and a stream-v1 ZeroMQ
//!   PUSH socket, replaying a stream capture blob for blob or sending synthetic frames
//!   compressed with our bitshuffle-LZ4 encoder, all four trigger modes (external ones from a
//!   scan engine's trigger line), pacing and fault injection. Inside: `wire` (our own
//!   stream-v1 message writer), `settings` (the parameter store), `rest` (the API),
//!   `source` (capture reader, synthetic frames), `engine` (series state and the sender).
//! - [`tpx3`]: [`tpx3::Tpx3Sim`], an ASI Timepix3 (CheeTah) detector (protocols.md §3): the
//!   sparse CSR event stream on a TCP data port (32-byte headers from
//!   `stemflow_drivers::asi::wire`) and an emulation of the Serval REST API; replays `.tpx`
//!   stream files or generates Poisson events of the specimen without dense frames;
//!   free-running (every client gets the acquisition, as LiberTEM's simulator) or active
//!   (`measurement/start`, timer or trigger-line paced, stop → AcquisitionEnd inside the
//!   scan); configurable chunking, dtypes, padding and pacing; fault injection. Inside:
//!   `source` (recording reader, event generator, pre-encoded chunks), `engine` (the data
//!   connection, acquisitions with faults, passive server, active engine), `rest` (Serval).
//! - [`scan`]: [`scan::ScanEngineSim`], a raster scan generator implementing
//!   `stemflow_core::devices::ScanEngine`, firing the trigger line per pixel or per line with
//!   drift-free deadlines, with faults (silent engine, unplugged cable).
//! - [`microscope`]: [`microscope::MicroscopeSim`], implementing
//!   `stemflow_core::devices::Microscope` with range checks, read-back and a setting that does
//!   not take.
//! - [`pixel_clock`]: [`pixel_clock::PixelClockSim`], a burst waveform generator speaking SCPI
//!   over TCP or a pseudo-terminal, firing the trigger line as a scan's pixel clock.
//! - [`scpi_devices`]: [`scpi_devices::ScanGeneratorSim`] and [`scpi_devices::ColumnSim`], a
//!   scan generator (firing the trigger line) and a microscope column speaking the default
//!   command maps of the command-map drivers, over TCP and a pseudo-terminal, with faults.
//! - [`specimen`]: [`specimen::Specimen`], particles on an amorphous support rendered as
//!   Poisson-noisy diffraction patterns (BF disk dimming and shifting with the phase gradient,
//!   ADF ring rising on particles), with ground-truth ADF and phase-gradient maps.
//! - `rng` (private): the deterministic generator and fast Poisson sampler behind the specimen.

#![warn(missing_docs)]

pub mod dectris;
pub mod merlin;
pub mod microscope;
pub mod pixel_clock;
mod rng;
pub mod scan;
pub mod scpi_devices;
mod scpi_server;
pub mod specimen;
pub mod tpx3;

use std::path::PathBuf;

/// Errors starting a simulator. Runtime problems (a client that goes away, a bad request) are
/// answered on the wire or counted, never returned.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A socket or thread could not be set up.
    #[error("{device}: I/O error while {during}: {source}")]
    Io {
        /// The simulator (e.g. `merlin-sim`).
        device: String,
        /// What it was doing.
        during: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A recording to replay cannot be used.
    #[error("recording {path}: {problem}")]
    Recording {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it, with the numbers.
        problem: String,
    },
    /// The configuration cannot be simulated.
    #[error("simulator configuration: {0}")]
    Config(String),
    /// A simulated device refused its configuration.
    #[error(transparent)]
    Device(#[from] stemflow_core::devices::DeviceError),
}
