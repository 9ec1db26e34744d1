//! An ASI Timepix3 (CheeTah) simulator: the sparse CSR event stream on a TCP data port
//! (protocols.md §3.1–§3.4, LiberTEM's default port [`DATA_PORT`]) and an emulation of ASI's
//! Serval REST API on another (§3.5–§3.6, default [`SERVAL_PORT`]).
//!
//! Beyond LiberTEM's `libertem-live-asi-tpx-sim` (§4.3), which replays capture files to every
//! client, it generates events of a modelled [`Specimen`] (a BF disk that dims and shifts,
//! particles that scatter into the dark field), chunks them as configured (rows per chunk,
//! dtypes, padding between the arrays), paces them, runs active measurements started over
//! REST and paced by a timer or the trigger line of a
//! [`ScanEngineSim`](crate::scan::ScanEngineSim), and injects faults.
//!
//! # Modes
//! * **Passive / free-running** ([`Tpx3SimConfig::free_running`] true, the default, as
//!   LiberTEM's simulator): every client that connects to the data port gets, on its own
//!   thread, every dataset of the source as one acquisition (`AcquisitionStart`, `ScanStart`
//!   with [`Tpx3SimConfig::scan_metadata`], `ArrayChunk`s, `ScanEnd`, `AcquisitionEnd`),
//!   [`Tpx3SimConfig::repeats`] times (0 = forever), acquisition sequences counting up from
//!   [`Tpx3SimConfig::first_sequence`] on each connection. Chunks leave as soon as their last
//!   frame is due at [`Tpx3SimConfig::frame_time_s`] per frame from the acquisition's start
//!   (0 = as fast as the client reads). Afterwards the connection stays open, idle (what the
//!   client sends is discarded), until the client closes it or the simulator stops — or it is
//!   closed at once with [`Tpx3SimConfig::close_when_done`]. The REST API still answers
//!   (`measurement/start` and `/stop` answer 409).
//! * **Active** (`free_running` false, Serval-like): the data port accepts one client at a
//!   time (a new connection replaces the old one) and sends nothing until
//!   `GET /measurement/start` (PUT and POST are accepted too). A start sends one acquisition of
//!   the next dataset (datasets cycle) with the next sequence; `nTriggers` of
//!   `/detector/config` must equal its frame count, else the start answers 400 naming both.
//!   Frames complete per `TriggerMode`: the external modes (`PEXSTART_NEXSTOP`,
//!   `NEXSTART_PEXSTOP`, `PEXSTART_TIMERSTOP`, `NEXSTART_TIMERSTOP`) complete one frame
//!   `ExposureTime + TriggerDelay` after each rising edge of [`Tpx3SimConfig::trigger_input`]
//!   (the modelled line carries no pulse width, so `ExposureTime` stands for it); the others
//!   (`AUTOTRIGSTART_TIMERSTOP`, `CONTINUOUS`, `SOFTWARESTART_TIMERSTOP`,
//!   `SOFTWARESTART_SOFTWARESTOP`) complete frame `k` at start + `ExposureTime` +
//!   `k × TriggerPeriod`, and `TriggerPeriod` 0 (a simulator extension) sends every frame at
//!   once. A chunk leaves when its last frame is complete. `GET /measurement/stop` sends the
//!   complete chunks, then the completed frames of the next chunk as a shorter chunk, then
//!   `AcquisitionEnd` inside the scan (the cancelled case of §3.2). With no client connected,
//!   frames are discarded (counted); a client that connects during a measurement gets the
//!   rest of it without the headers (as when joining a running stream). An external mode
//!   without a trigger input waits (`DA_RECORDING`) until stopped. `GET /measurement` reports `Status` `DA_IDLE` (never
//!   started, or finished), `DA_RECORDING` or `DA_STOPPED` (stopped or cancelled), in `Info`
//!   with `FrameCount`, `DroppedFrames`, `PixelEventRate`, `ElapsedTime`, `TimeLeft`,
//!   `StartDateTime` (Unix ms); `Status` is also repeated at the top level.
//!
//! # REST endpoints (`rest.rs`)
//! `/dashboard`, `/detector` (Info, Config, Layout, Health), `/detector/info` (`MpxType` 6,
//! `PixCount`, `RowLen` = chips per row, `NumberOfChips`, `NumberOfRows` = pixel rows;
//! 256-pixel chips when the frame is made of them), `/detector/layout`, `/detector/health`,
//! `/detector/config` GET/PUT, `/server/destination` GET (404 "Destination is not set" before
//! a PUT)/PUT, `/measurement/config` GET/PUT, `/measurement`, `/measurement/start`,
//! `/measurement/stop`, `/config/load`. A PUT of `/detector/config` takes the object GET
//! returns (keys left out keep their values; unknown keys, wrong types and out-of-range
//! values answer 400 naming the field: unknown `TriggerMode`, `ExposureTime` ≤ 0,
//! `TriggerPeriod` neither 0 nor ≥ `ExposureTime`, `nTriggers` < 1, …); PUTs while recording
//! answer 409. The destination is stored and echoed only: the stream always goes to the
//! data port.
//!
//! # Wire choices (§3 [?] where real producers are unverified)
//! * Every source is re-encoded from its frames with this simulator's chunking and dtypes
//!   (frame content identical to the recording); `version` is the recording's (7 for
//!   synthetic data); `ScanStart` and `ScanEnd` carry the acquisition's sequence.
//! * Faults count chunks within each acquisition (0-based) and apply to every acquisition;
//!   see [`Tpx3Faults`].
//!
//! Threads: the data acceptor (passive; one thread per connection) or the measurement engine
//! (active), a tokio runtime of one worker for the REST server, and with a trigger input a
//! forwarder from the trigger line into the engine.

mod engine;
mod rest;
mod source;

pub use engine::{GARBAGE_FIRST, GARBAGE_LEN};
pub use rest::{TIMER_MAX_S, TIMER_STEP_S};

use crate::SimError;
use crate::specimen::Specimen;
use crossbeam_channel::{Sender, unbounded};
use engine::{Engine, Event, PassivePlan, Shared};
use rest::{Ctx, Reply, RestState};
use source::{Dataset, Encoded, Layout};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use stemflow_core::csr::CsrDType;
use stemflow_core::devices::TriggerReceiver;
use stemflow_core::{NavShape, SigShape};

/// The data port LiberTEM connects to by default (protocols.md §3.1, §4.3).
pub const DATA_PORT: u16 = 8283;
/// Serval's default REST port (§3.5).
pub const SERVAL_PORT: u16 = 8080;
/// Largest padding between the arrays of a chunk, bytes.
const MAX_PAD: usize = 1 << 20;
/// Most events a synthetic source generates (about 4 GB of arrays).
const MAX_EVENTS: f64 = 5e8;
/// How long stopping waits for the REST runtime.
const STOP_DEADLINE: Duration = Duration::from_secs(2);

/// Where the simulator's frames come from.
#[derive(Clone, Debug)]
pub enum Tpx3Source {
    /// A `.tpx` stream file (the bytes a TPX3 server sends, §3.2–§3.4, e.g.
    /// `shared/data/tpx3/synthetic_16x16_512.tpx`): every complete scan in it becomes one
    /// dataset, re-sent with identical frame content (indices and values per frame) in this
    /// simulator's chunking and dtypes. Scans cancelled by `AcquisitionEnd` are skipped;
    /// ScanStart metadata and the recorded sequence numbers are not kept.
    Recording(PathBuf),
    /// Events of a modelled specimen: scan position `i` of `nav_shape` (row-major) gets a
    /// Poisson number of electrons with mean `mean_events` (the specimen's dose is replaced
    /// by it; electrons scattered beyond the frame are lost, so frames hold slightly fewer),
    /// placed by [`Specimen::place_electrons`] with noise seeded by `(seed, i)`. Rows hold
    /// sorted flat indices (`y × cols + x`) with counts (mostly 1; repeated pixels summed).
    /// Generated at start on all cores without dense frames (a 128 × 128 scan of 512 × 512
    /// with ~410 events per frame takes well under a second in release builds).
    Synthetic {
        /// The specimen model (BF disk radius in pixels, particles, …).
        specimen: Specimen,
        /// Scan grid, each side 1–65535.
        nav_shape: NavShape,
        /// Frame shape, pixels, each side 1–65535.
        sig_shape: SigShape,
        /// Mean electrons per frame (the shared capture has about 404).
        mean_events: f64,
        /// Noise seed.
        seed: u64,
    },
}

impl Tpx3Source {
    /// A synthetic source of the default specimen (27-pixel BF disk) with 410 mean events
    /// per frame and seed 1.
    pub fn synthetic(nav_shape: NavShape, sig_shape: SigShape) -> Self {
        Self::Synthetic {
            specimen: Specimen::builder().build(),
            nav_shape,
            sig_shape,
            mean_events: 410.0,
            seed: 1,
        }
    }
}

/// Faults the simulator injects (for receiver tests). `k`-values count chunks of an
/// acquisition (0-based; "after k chunks" = at the boundary before chunk `k`, and `k` = the
/// chunk count means after the last chunk, before `ScanEnd`); they apply to every
/// acquisition. At one boundary they are checked in the order garbage, close, stall, huge
/// chunk, cancel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tpx3Faults {
    /// After this many chunks the data connection is closed (at a message boundary).
    pub close_after_chunks: Option<u64>,
    /// After this many chunks, [`GARBAGE_LEN`] bytes that are no header (first byte
    /// [`GARBAGE_FIRST`], no known tag) are sent where a header belongs; the acquisition then
    /// goes on as if nothing happened.
    pub garbage_after_chunks: Option<u64>,
    /// After this many chunks nothing more is sent in the acquisition; the socket stays
    /// open (passive: until the client closes it; active: status stays `DA_RECORDING` until
    /// `measurement/stop`, which then sends `AcquisitionEnd`).
    pub stall_after_chunks: Option<u64>,
    /// This chunk's last row pointer is `nnz + 1` (or `nnz − 1` when the dtype cannot hold
    /// it): the arrays no longer form a valid CSR matrix; lengths and offsets are intact.
    pub corrupt_indptr_at: Option<u64>,
    /// This chunk's header and half its payload are sent, then the connection is closed.
    pub truncate_chunk_at: Option<u64>,
    /// After this many chunks `AcquisitionEnd` is sent inside the scan (the cancelled case
    /// of §3.2): passive connections go on with the next acquisition, an active measurement
    /// ends with status `DA_STOPPED`.
    pub cancel_after_chunks: Option<u64>,
    /// The first acquisition on each connection starts mid-stream: no `AcquisitionStart`
    /// and `ScanStart`, and chunks below this index are not sent (`Some(0)`: the first bytes
    /// are chunk 0's header).
    pub mid_stream_start: Option<u64>,
    /// After this many chunks an `ArrayChunk` header announcing `nnz` 0xFFFF_FFFF and a
    /// `values_offset` of 0xFFFF_FFFF (a payload of about 20 GiB) is sent and nothing follows:
    /// the acquisition stalls as with `stall_after_chunks` (an active stop closes the
    /// connection instead of sending `AcquisitionEnd`).
    pub huge_chunk_after: Option<u64>,
}

/// Configuration of a [`Tpx3Sim`].
#[derive(Clone, Debug)]
pub struct Tpx3SimConfig {
    /// Where the CSR data port binds (real: port [`DATA_PORT`]; tests: 127.0.0.1:0).
    pub data_bind: SocketAddr,
    /// Where the Serval REST API binds (real: port [`SERVAL_PORT`]; tests: 127.0.0.1:0).
    pub api_bind: SocketAddr,
    /// Frame source.
    pub source: Tpx3Source,
    /// Rows (frames) per `ArrayChunk`, ≥ 1 (default 32; LiberTEM's client fails on chunks
    /// larger than its slot, 384 KiB by default, §4.5).
    pub rows_per_chunk: usize,
    /// Value dtype of every chunk (default u32, as LiberTEM's producers).
    pub value_dtype: CsrDType,
    /// Row pointer dtype (`AcquisitionStart`, default u32).
    pub indptr_dtype: CsrDType,
    /// Signal index dtype (`AcquisitionStart`, default u32; u16 cannot index 512 × 512).
    pub indices_dtype: CsrDType,
    /// Zero bytes between indptr and indices and between indices and values (§3.4; default
    /// 0, at most 1 MiB).
    pub pad_bytes: usize,
    /// JSON text sent after every `ScanStart` (its `metadata_length`); `None` (default) = 0
    /// bytes, as all known producers.
    pub scan_metadata: Option<String>,
    /// Passive pacing: s per frame, a chunk leaves when its last frame is due (default 0 = as
    /// fast as the client reads).
    pub frame_time_s: f64,
    /// Passive (true, default) or active via the REST API (false); see the module docs.
    pub free_running: bool,
    /// Passive: passes over the source's datasets per connection (default 1; 0 = forever).
    pub repeats: u64,
    /// Passive: close the connection after the last acquisition instead of keeping it open
    /// idle (default false).
    pub close_when_done: bool,
    /// Sequence of the first acquisition (default 1); later ones count up (per connection
    /// in passive mode, per start in active mode).
    pub first_sequence: u32,
    /// The detector end of a trigger line (from a scan engine); its rising edges release
    /// frames in the external trigger modes of an active measurement.
    pub trigger_input: Option<TriggerReceiver>,
    /// Injected faults.
    pub faults: Tpx3Faults,
}

impl Tpx3SimConfig {
    /// Both ports on 127.0.0.1:0 (ephemeral), 32 rows per chunk, u32 dtypes, no padding, no
    /// metadata, as fast as possible, free-running, one pass, connection kept open, sequence
    /// 1, no trigger input, no faults.
    pub fn new(source: Tpx3Source) -> Self {
        let local = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Self {
            data_bind: local,
            api_bind: local,
            source,
            rows_per_chunk: 32,
            value_dtype: CsrDType::U32,
            indptr_dtype: CsrDType::U32,
            indices_dtype: CsrDType::U32,
            pad_bytes: 0,
            scan_metadata: None,
            frame_time_s: 0.0,
            free_running: true,
            repeats: 1,
            close_when_done: false,
            first_sequence: 1,
            trigger_input: None,
            faults: Tpx3Faults::default(),
        }
    }
}

/// Counters of a running simulator (monotonic over its lifetime, all connections).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tpx3SimStats {
    /// Data connections accepted.
    pub connections: u64,
    /// Acquisitions begun (passive: per connection and pass; active: per start).
    pub acquisitions: u64,
    /// Acquisitions that sent `ScanEnd` and `AcquisitionEnd`.
    pub acquisitions_completed: u64,
    /// Acquisitions ended by `AcquisitionEnd` inside the scan (stop or cancel fault).
    pub acquisitions_cancelled: u64,
    /// `ArrayChunk`s written completely to a client.
    pub chunks_sent: u64,
    /// Frames (rows) in those chunks.
    pub frames_sent: u64,
    /// CSR entries in those chunks (pixels hit per frame: a pixel hit twice is one entry of
    /// value 2).
    pub events_sent: u64,
    /// Bytes written to data clients (headers, payloads, garbage).
    pub bytes_sent: u64,
    /// Active mode: frames that had no client (none connected, or it went away).
    pub frames_discarded: u64,
    /// Rising edges on the trigger input (including ignored ones).
    pub triggers_seen: u64,
    /// Edges that released nothing: no external-trigger measurement running, or beyond
    /// `nTriggers`.
    pub triggers_ignored: u64,
    /// Faults injected (each firing counts once).
    pub faults_injected: u64,
}

/// A running TPX3 simulator. Dropping it stops it (as [`Tpx3Sim::stop`]); do so outside an
/// async context (the simulator owns a tokio runtime).
#[derive(Debug)]
pub struct Tpx3Sim {
    data_addr: SocketAddr,
    api_addr: SocketAddr,
    shared: Arc<Shared>,
    events: Option<Sender<Event>>,
    runtime: Option<tokio::runtime::Runtime>,
    server_stop: Option<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    shapes: Vec<(NavShape, SigShape)>,
}

fn io_err(during: &str, e: std::io::Error) -> SimError {
    SimError::Io {
        device: "tpx3-sim".into(),
        during: during.into(),
        source: e,
    }
}

impl Tpx3Sim {
    /// Loads or generates the source, encodes it, binds both ports and starts serving.
    ///
    /// # Errors
    /// [`SimError::Recording`] for an unreadable or malformed `.tpx` file;
    /// [`SimError::Config`] for an empty or over-large shape, a negative mean or more than
    /// 5·10⁸ events in all, zero rows per chunk, padding above 1 MiB, a frame time outside
    /// 0–3600 s, or data that do not fit the chosen dtypes
    /// (e.g. u16 indices for 512 × 512 frames); [`SimError::Io`] when a port cannot be bound
    /// or a thread or the runtime cannot start.
    pub fn start(cfg: Tpx3SimConfig) -> Result<Self, SimError> {
        if !cfg.frame_time_s.is_finite() || cfg.frame_time_s < 0.0 || cfg.frame_time_s > 3600.0 {
            return Err(SimError::Config(format!(
                "frame_time_s must be 0 to 3600 s, got {}",
                cfg.frame_time_s
            )));
        }
        if cfg.pad_bytes > MAX_PAD {
            return Err(SimError::Config(format!(
                "pad_bytes {} exceeds {MAX_PAD} bytes",
                cfg.pad_bytes
            )));
        }
        let datasets: Vec<Dataset> = match &cfg.source {
            Tpx3Source::Recording(path) => source::load_recording(path)?,
            Tpx3Source::Synthetic {
                specimen,
                nav_shape,
                sig_shape,
                mean_events,
                seed,
            } => {
                let big = |v: usize| v == 0 || v > usize::from(u16::MAX);
                if big(nav_shape.rows)
                    || big(nav_shape.cols)
                    || big(sig_shape.rows)
                    || big(sig_shape.cols)
                {
                    return Err(SimError::Config(format!(
                        "synthetic TPX3 source needs nav and sig shapes of 1 to 65535 a side (16-bit header fields, protocols.md §3.3); got nav {nav_shape}, sig {sig_shape}"
                    )));
                }
                let expected = mean_events * nav_shape.len() as f64;
                if expected > MAX_EVENTS {
                    return Err(SimError::Config(format!(
                        "synthetic TPX3 source: {mean_events} mean events × {} frames would be {expected:.3e} events; at most {MAX_EVENTS:.0e} are generated",
                        nav_shape.len()
                    )));
                }
                vec![source::synthesize(
                    specimen,
                    *nav_shape,
                    *sig_shape,
                    *mean_events,
                    *seed,
                )?]
            }
        };
        let layout = Layout {
            rows_per_chunk: cfg.rows_per_chunk,
            indptr: cfg.indptr_dtype,
            indices: cfg.indices_dtype,
            values: cfg.value_dtype,
            pad: cfg.pad_bytes,
        };
        let shapes: Vec<(NavShape, SigShape)> =
            datasets.iter().map(|d| (d.nav, d.rows.sig_shape)).collect();
        let encoded: Vec<Arc<Encoded>> = datasets
            .into_iter()
            .map(|d| source::encode(Arc::new(d), layout).map(Arc::new))
            .collect::<Result<_, _>>()
            .map_err(SimError::Config)?;
        let (first_nav, first_sig) = shapes[0];
        let metadata = cfg.scan_metadata.clone().unwrap_or_default().into_bytes();

        let data = TcpListener::bind(cfg.data_bind)
            .map_err(|e| io_err(&format!("binding the data port {}", cfg.data_bind), e))?;
        let data_addr = data
            .local_addr()
            .map_err(|e| io_err("reading the data address", e))?;
        let api = TcpListener::bind(cfg.api_bind)
            .map_err(|e| io_err(&format!("binding the REST port {}", cfg.api_bind), e))?;
        let api_addr = api
            .local_addr()
            .map_err(|e| io_err("reading the REST address", e))?;
        api.set_nonblocking(true)
            .map_err(|e| io_err("making the REST listener non-blocking", e))?;

        let shared = Arc::new(Shared::default());
        let (tx, rx) = unbounded();
        let mut threads = Vec::new();
        let connections = Arc::new(Mutex::new(Vec::new()));
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(f)
                .map_err(|e| io_err(&format!("spawning thread {name}"), e))
        };
        if cfg.free_running {
            let plan = Arc::new(PassivePlan {
                datasets: encoded.clone(),
                faults: cfg.faults.clone(),
                metadata,
                frame_time_s: cfg.frame_time_s,
                repeats: cfg.repeats,
                close_when_done: cfg.close_when_done,
                first_sequence: cfg.first_sequence,
            });
            let (sh, conns) = (shared.clone(), connections.clone());
            threads.push(spawn(
                "tpx3-sim-accept",
                Box::new(move || engine::accept_passive(data, plan, sh, conns)),
            )?);
        } else {
            let engine = Engine::new(shared.clone(), rx, data, cfg.faults.clone(), metadata)
                .map_err(|e| io_err("making the data listener non-blocking", e))?;
            threads.push(spawn("tpx3-sim-engine", Box::new(move || engine.run()))?);
        }

        let ctx = Arc::new(Ctx {
            state: Mutex::new(RestState {
                detector: rest::initial_detector(first_nav.len() as u64),
                destination: None,
                measurement: rest::initial_measurement(first_nav.cols, first_nav.rows),
                next_dataset: 0,
                next_sequence: cfg.first_sequence,
            }),
            shared: shared.clone(),
            events: tx.clone(),
            datasets: encoded,
            free_running: cfg.free_running,
            sig: first_sig,
            t0: Instant::now(),
        });
        let mut sim = Self {
            data_addr,
            api_addr,
            shared: shared.clone(),
            events: Some(tx.clone()),
            runtime: None,
            server_stop: None,
            threads,
            connections,
            shapes,
        };
        // From here on a failure stops what already runs (Drop).
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(4)
            .thread_name("tpx3-sim-rest")
            .enable_all()
            .build()
            .map_err(|e| io_err("starting the tokio runtime", e))?;
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(api)
                .map_err(|e| io_err("handing the REST listener to tokio", e))?
        };
        let (server_stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = axum::Router::new().fallback(serve).with_state(ctx);
        runtime.spawn(async move {
            let r = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = r {
                tracing::warn!("tpx3-sim: REST server ended: {e}");
            }
        });
        sim.runtime = Some(runtime);
        sim.server_stop = Some(server_stop);
        if let Some(trigger) = cfg.trigger_input {
            let sh = shared.clone();
            sim.threads.push(spawn(
                "tpx3-sim-trigger",
                Box::new(move || forward_triggers(trigger, sh, tx)),
            )?);
        }
        Ok(sim)
    }

    /// The bound CSR data address (clients connect here; port [`DATA_PORT`] on real
    /// systems).
    pub fn data_addr(&self) -> SocketAddr {
        self.data_addr
    }

    /// The bound Serval REST address (`http://<addr>/dashboard`, …).
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// Scan and frame shape of each dataset the source holds, in sending order.
    pub fn shapes(&self) -> &[(NavShape, SigShape)] {
        &self.shapes
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Tpx3SimStats {
        let c = &self.shared.counters;
        let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Tpx3SimStats {
            connections: g(&c.connections),
            acquisitions: g(&c.acquisitions),
            acquisitions_completed: g(&c.acquisitions_completed),
            acquisitions_cancelled: g(&c.acquisitions_cancelled),
            chunks_sent: g(&c.chunks_sent),
            frames_sent: g(&c.frames_sent),
            events_sent: g(&c.events_sent),
            bytes_sent: g(&c.bytes_sent),
            frames_discarded: g(&c.frames_discarded),
            triggers_seen: g(&c.triggers_seen),
            triggers_ignored: g(&c.triggers_ignored),
            faults_injected: g(&c.faults_injected),
        }
    }

    /// The active measurement's status string as `GET /measurement` reports it
    /// (`DA_IDLE`, `DA_RECORDING`, `DA_STOPPED`).
    pub fn measurement_status(&self) -> &'static str {
        self.shared.status().state.as_str()
    }

    /// Stops serving: closes the data connections and the REST server and joins every
    /// thread (within about 2 s).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        if let Some(tx) = self.events.take() {
            let _ = tx.send(Event::Shutdown);
        }
        if let Some(s) = self.server_stop.take() {
            let _ = s.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let conns: Vec<_> = self
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for t in conns {
            let _ = t.join();
        }
        if let Some(rt) = self.runtime.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                rt.shutdown_background();
            } else {
                rt.shutdown_timeout(STOP_DEADLINE);
            }
        }
    }
}

impl Drop for Tpx3Sim {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The axum glue: every request goes to [`rest::handle`] on the blocking pool.
async fn serve(
    axum::extract::State(ctx): axum::extract::State<Arc<Ctx>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let m = method.as_str().to_string();
    let reply = tokio::task::spawn_blocking(move || rest::handle(&ctx, &m, &path, &query, &body))
        .await
        .unwrap_or_else(|e| Reply::Text(500, format!("request handler failed: {e}")));
    let (code, ctype, text) = match reply {
        Reply::Json(c, v) => (c, "application/json; charset=utf-8", v.to_string()),
        Reply::Text(c, t) => (c, "text/plain; charset=utf-8", t),
    };
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, [(header::CONTENT_TYPE, ctype)], text).into_response()
}

/// Forwards rising edges from the trigger line to the engine until shutdown (passive mode:
/// the engine is not running and edges are only counted as ignored).
fn forward_triggers(trigger: TriggerReceiver, shared: Arc<Shared>, events: Sender<Event>) {
    const POLL: Duration = Duration::from_millis(20);
    while !shared.down() {
        let t = Instant::now();
        match trigger.wait(POLL) {
            Some(_) if events.send(Event::Edge(Instant::now())).is_err() => {
                let c = &shared.counters;
                c.triggers_seen.fetch_add(1, Ordering::Relaxed);
                c.triggers_ignored.fetch_add(1, Ordering::Relaxed);
            }
            Some(_) => {}
            // An unplugged line (every sender gone) returns at once: do not spin.
            None if t.elapsed() < POLL / 2 => std::thread::sleep(POLL),
            None => {}
        }
    }
}
