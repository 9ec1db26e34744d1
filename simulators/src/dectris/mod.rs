//! A DECTRIS SIMPLON detector simulator (ARINA/QUADRO-like, protocols.md §2): the REST API
//! on one TCP port (§2.2, §2.3) and a stream-v1 ZeroMQ PUSH socket on another (§2.4).
//!
//! Beyond LiberTEM's simulator (§4.2) it models the detector, not just a file player: a
//! parameter store with types, ranges, read-only keys and DCU consequences (`count_time`
//! raises `frame_time`), a state machine (`idle` → `ready` on arm → `acquire` on the first
//! trigger → `idle` when the series ends or is disarmed/aborted/cancelled), series ids that
//! count up per arm, all four trigger modes (software `ints`/`inte`, external `exts`/`exte`
//! from a [`ScanEngineSim`](crate::scan::ScanEngineSim)'s trigger line), `header_detail`
//! all/basic/none, frame-time pacing, and fault injection.
//!
//! Sources: a stream capture (the dump format of `shared/data/README.md`), replayed blob for
//! blob; a DECTRIS HDF5 master/data set, chunks sent as stored; or frames of a modelled
//! [`Specimen`] compressed with our bitshuffle-LZ4 encoder
//! (`stemflow_drivers::dectris::codec`), LZ4, or sent uncompressed.
//!
//! Threads: a tokio runtime owned by the simulator (two workers) runs the axum REST server
//! and the detector engine task (see `engine.rs`); with a trigger input, one std thread
//! forwards edges into the engine's event channel.
//!
//! Behaviour worth knowing (simulator choices where a real DCU is unverified, §2 [?]):
//! * The global header is one multipart message (as a DCU sends it, §2.4), each image one
//!   4-part message, `dseries_end-1.0` one single-part message — also after disarm, abort or
//!   cancel of an armed series.
//! * Image counts per series: `nimages × ntrigger` for `ints`/`exts`, `ntrigger` for
//!   `inte`/`exte` (§2.3). Triggers beyond `ntrigger` are refused (software: 400) or ignored
//!   and counted (edges); edges while not armed or in a software mode are ignored and counted.
//! * PUTs of detector parameters while armed answer 400; `trigger` in an external mode
//!   answers 400; `arm` while armed answers 400.
//! * Frames beyond the source's count are cycled; `frame` counts 0.. within each series, and
//!   `hash` is the MD5 of the blob (the recorded one for captures).
//! * With no PULL client connected, messages wait for one (libzmq PUSH semantics) until a
//!   stop command; frames are never silently dropped except by [`DectrisFaults`].
//! * `dconfig-1.0` times are ns since the simulator started: `stop_time` is when the frame
//!   left, `start_time = stop_time − real_time`, `real_time` the exposure.
//! * Faults use 0-based frame indices within a series and apply to every series.

mod engine;
mod rest;
mod settings;
mod source;
mod wire;

pub use rest::API_VERSION;

use crate::SimError;
use crate::specimen::Specimen;
use bytes::Bytes;
use engine::{Engine, Event, Shared};
use rest::{Config, Ctx, Reply};
use source::{Prepared, SyntheticSpec};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use stemflow_core::devices::TriggerReceiver;
use stemflow_core::{NavShape, SigShape};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use wire::HeaderArrays;
use zeromq::Socket;

/// The REST port LiberTEM-live's simulator uses (§2.1, §4.2); a DCU serves port 80.
pub const LIBERTEM_API_PORT: u16 = 8910;
/// The stream-v1 port of a DCU (§2.1).
pub const STREAM_V1_PORT: u16 = 9999;
/// Entries of the count-rate correction table sent with `header_detail = all`.
const COUNTRATE_TABLE_LEN: usize = 1000;
/// How long stopping waits for the runtime's tasks.
const STOP_DEADLINE: Duration = Duration::from_secs(2);

/// Where the simulator's frames come from.
#[derive(Clone, Debug)]
pub enum DectrisSource {
    /// Replays a stream capture in the dump format of `shared/data/README.md` (§4.2: records
    /// of an 8-byte little-endian length and one ZeroMQ part). Blobs, their hashes, shape,
    /// pixel type and encoding are sent as recorded (frames cycle when a series is longer);
    /// the recorded detector configuration is the initial one, and the first arm answers the
    /// recorded series id. `compression` is fixed to the recorded one.
    Capture {
        /// The dump file.
        path: PathBuf,
    },
    /// Replays a DECTRIS HDF5 set: `master` is the `*_master.h5` (its data files beside it,
    /// as its external links say). Each frame's chunk is sent as stored (bitshuffle-LZ4 with
    /// the 12-byte header, encoding `bs<bits>-lz4<`; a chunk the filter skipped is sent raw
    /// with encoding `<`), never recompressed; frames cycle when a series is longer. The
    /// master's detector metadata (count/frame time, description, pixel size, …) and pixel
    /// mask are the initial configuration; `compression` is fixed to `bslz4`.
    Hdf5 {
        /// The master file.
        master: PathBuf,
    },
    /// Frames of a modelled specimen: frame `i` shows scan position `i % nav_shape.len()`
    /// (row-major) with Poisson noise seeded by `(seed, i)`, counts clipped to the bit depth,
    /// little-endian, compressed per the detector's `compression` (`bslz4`: bitshuffle-LZ4,
    /// default block size, §2.5; `lz4`: one raw LZ4 block, encoding `lz4<`; `none`: raw,
    /// encoding `<`). At most 1024 distinct frames are
    /// prepared (at start and when `compression` changes); longer scans cycle through them.
    Synthetic {
        /// The specimen model.
        specimen: Specimen,
        /// Scan grid the frames follow.
        nav_shape: NavShape,
        /// Frame shape (height × width), pixels; the detector reports x = cols, y = rows.
        sig_shape: SigShape,
        /// Bits per pixel: 8, 16 or 32 (`bit_depth_image`, pixel type uint8/16/32).
        bit_depth: u32,
        /// Noise seed.
        seed: u64,
    },
}

impl DectrisSource {
    /// [`DectrisSource::Hdf5`] for a path ending in `.h5` or `.hdf5`, else
    /// [`DectrisSource::Capture`].
    pub fn from_path(path: PathBuf) -> Self {
        let hdf5 = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("h5") || e.eq_ignore_ascii_case("hdf5"));
        if hdf5 {
            Self::Hdf5 { master: path }
        } else {
            Self::Capture { path }
        }
    }

    /// A synthetic source of 16-bit frames of the default specimen with seed 1.
    pub fn synthetic(nav_shape: NavShape, sig_shape: SigShape) -> Self {
        Self::Synthetic {
            specimen: Specimen::builder().build(),
            nav_shape,
            sig_shape,
            bit_depth: 16,
            seed: 1,
        }
    }
}

/// How fast frames leave the simulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pacing {
    /// Like the hardware: a trigger's first image leaves one exposure (`count_time`, or the
    /// `inte` trigger value) after the trigger, further images one `frame_time` apart, and
    /// never sooner than one `frame_time` after the previous image. Deadlines are absolute,
    /// so timing does not drift (images due together leave back to back).
    FrameTime,
    /// Released images are sent as fast as the PULL client takes them (triggers still gate
    /// them).
    AsFastAsPossible,
}

/// Faults the simulator injects. Indices are 0-based frame indices within a series and apply
/// to every series.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DectrisFaults {
    /// Images never sent (their `frame` numbers are missing on the wire); counted in
    /// [`DectrisSimStats::frames_dropped`].
    pub drop_frames: Vec<u64>,
    /// This image's blob is sent truncated to half its length while `size` and `hash` still
    /// describe the whole blob (a decoder fails; a hash check fails).
    pub corrupt_blob_at: Option<u64>,
    /// After this many images the series ends early: `dseries_end-1.0` follows at once and
    /// the detector goes idle; counted in [`DectrisSimStats::series_ended_early`].
    pub end_early_after: Option<u64>,
    /// After this many images the detector stalls: no more images, no end message, state
    /// stays `acquire` until disarm, abort or cancel.
    pub stall_after: Option<u64>,
}

/// Configuration of a [`DectrisSim`].
#[derive(Clone, Debug)]
pub struct DectrisSimConfig {
    /// Address to bind both ports to (use 127.0.0.1 in tests).
    pub host: IpAddr,
    /// REST API port (DCU: 80; LiberTEM's simulator: [`LIBERTEM_API_PORT`]); 0 = ephemeral,
    /// see [`DectrisSim::api_addr`].
    pub api_port: u16,
    /// Stream-v1 ZeroMQ PUSH port ([`STREAM_V1_PORT`] on a DCU); 0 = ephemeral, see
    /// [`DectrisSim::stream_addr`].
    pub stream_port: u16,
    /// Frame source.
    pub source: DectrisSource,
    /// Frame pacing.
    pub pacing: Pacing,
    /// The detector end of a trigger line (from a scan engine); rising edges trigger images
    /// in `exts`/`exte`.
    pub trigger_input: Option<TriggerReceiver>,
    /// Injected faults.
    pub faults: DectrisFaults,
}

impl DectrisSimConfig {
    /// 127.0.0.1 with ephemeral ports, frame-time pacing, no trigger input, no faults.
    pub fn new(source: DectrisSource) -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            api_port: 0,
            stream_port: 0,
            source,
            pacing: Pacing::FrameTime,
            trigger_input: None,
            faults: DectrisFaults::default(),
        }
    }

    /// The configuration a command line asks for: `recording` replays an HDF5 master file
    /// (extension `.h5`/`.hdf5`) or a stream capture (anything else), else a synthetic 16-bit
    /// source of the default specimen on `nav_shape` × `sig_shape`; `fast` selects
    /// [`Pacing::AsFastAsPossible`]. Ports 0 = ephemeral.
    pub fn from_cli(
        host: IpAddr,
        api_port: u16,
        stream_port: u16,
        recording: Option<PathBuf>,
        nav_shape: NavShape,
        sig_shape: SigShape,
        fast: bool,
    ) -> Self {
        let source = match recording {
            Some(path) => DectrisSource::from_path(path),
            None => DectrisSource::synthetic(nav_shape, sig_shape),
        };
        Self {
            host,
            api_port,
            stream_port,
            pacing: if fast {
                Pacing::AsFastAsPossible
            } else {
                Pacing::FrameTime
            },
            ..Self::new(source)
        }
    }
}

/// Counters of a running simulator (monotonic over its lifetime).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DectrisSimStats {
    /// Series armed.
    pub series: u64,
    /// Series that sent all their images.
    pub series_completed: u64,
    /// Images handed to a PULL client (ZeroMQ accepted the whole message).
    pub frames_sent: u64,
    /// Stream messages sent (headers, images, ends).
    pub messages_sent: u64,
    /// Bytes of all parts of all messages sent (ZeroMQ framing excluded).
    pub bytes_sent: u64,
    /// Software triggers and trigger-line edges received (including ignored ones).
    pub triggers_seen: u64,
    /// Edges that released nothing: not armed, a software mode, or beyond `ntrigger`.
    pub triggers_ignored: u64,
    /// Images withheld by [`DectrisFaults::drop_frames`].
    pub frames_dropped: u64,
    /// Images sent with a corrupt blob ([`DectrisFaults::corrupt_blob_at`]).
    pub blobs_corrupted: u64,
    /// Series ended by [`DectrisFaults::end_early_after`].
    pub series_ended_early: u64,
    /// Images not delivered: stream mode `disabled`, no client until the series was stopped,
    /// or the client went away.
    pub frames_discarded: u64,
}

/// A running DECTRIS simulator. Dropping it stops it (as [`DectrisSim::stop`]); do so outside
/// an async context (the simulator owns a tokio runtime).
#[derive(Debug)]
pub struct DectrisSim {
    api_addr: SocketAddr,
    stream_addr: SocketAddr,
    shared: Arc<Shared>,
    events: UnboundedSender<Event>,
    runtime: Option<tokio::runtime::Runtime>,
    server_stop: Option<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

fn io_err(during: &str, e: std::io::Error) -> SimError {
    SimError::Io {
        device: "dectris-sim".into(),
        during: during.into(),
        source: e,
    }
}

impl DectrisSim {
    /// Loads or renders the frame source, binds the REST port and the ZeroMQ PUSH port, and
    /// starts serving.
    ///
    /// # Errors
    /// [`SimError::Io`] when a port cannot be bound or the runtime cannot start;
    /// [`SimError::Recording`] for an unreadable or malformed capture; [`SimError::Config`] for
    /// an empty nav or sig shape, a bit depth other than 8/16/32, or an encoder failure.
    pub fn start(cfg: DectrisSimConfig) -> Result<Self, SimError> {
        let mut masked = Vec::new();
        let (source, facts, first_series) = match cfg.source {
            DectrisSource::Capture { path } => {
                let c = source::load_capture(&path)?;
                (Prepared::Fixed(c.frames), c.facts, c.series)
            }
            DectrisSource::Hdf5 { master } => {
                let h = source::load_hdf5(&master)?;
                masked = h.masked;
                (Prepared::Fixed(h.frames), h.facts, 1)
            }
            DectrisSource::Synthetic {
                specimen,
                nav_shape,
                sig_shape,
                bit_depth,
                seed,
            } => {
                if nav_shape.is_empty() || sig_shape.is_empty() {
                    return Err(SimError::Config(format!(
                        "synthetic DECTRIS source needs non-empty shapes; got nav {nav_shape}, sig {sig_shape}"
                    )));
                }
                if !matches!(bit_depth, 8 | 16 | 32) {
                    return Err(SimError::Config(format!(
                        "bit depth {bit_depth} is not 8, 16 or 32"
                    )));
                }
                let spec = SyntheticSpec {
                    specimen,
                    nav: nav_shape,
                    sig: sig_shape,
                    bit_depth,
                    seed,
                };
                // Bitshuffle-LZ4 first, as a DCU starts.
                let compressions = vec!["bslz4".to_string(), "lz4".to_string(), "none".to_string()];
                let frames = source::render(&spec, "bslz4").map_err(SimError::Config)?;
                let facts = settings::DetectorFacts {
                    x: sig_shape.cols,
                    y: sig_shape.rows,
                    bit_depth,
                    compressions,
                    recorded: None,
                    description: source::synthetic_description(sig_shape),
                };
                (Prepared::Synthetic { spec, frames }, facts, 1)
            }
        };
        let mut detector = settings::detector_config(&facts);
        if facts.recorded.is_none() {
            // A fresh detector: one image per software trigger.
            let _ = detector.put("trigger_mode", &serde_json::json!("ints"));
        }
        let (x, y) = (facts.x, facts.y);
        let arrays = HeaderArrays {
            shape: [x, y],
            flatfield: Bytes::from(1.0f32.to_le_bytes().repeat(x * y)),
            pixel_mask: {
                let mut m = vec![0u8; 4 * x * y];
                for &i in &masked {
                    if let Some(px) = m.get_mut(4 * i as usize..4 * i as usize + 4) {
                        px.copy_from_slice(&1u32.to_le_bytes());
                    }
                }
                Bytes::from(m)
            },
            countrate_table: Bytes::from(
                (0..2 * COUNTRATE_TABLE_LEN)
                    .flat_map(|i| ((i % COUNTRATE_TABLE_LEN) as f32).to_le_bytes())
                    .collect::<Vec<u8>>(),
            ),
            countrate_len: COUNTRATE_TABLE_LEN,
        };

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("dectris-sim")
            .enable_all()
            .build()
            .map_err(|e| io_err("starting the tokio runtime", e))?;
        let api = std::net::TcpListener::bind((cfg.host, cfg.api_port))
            .map_err(|e| io_err(&format!("binding REST port {}", cfg.api_port), e))?;
        let api_addr = api
            .local_addr()
            .map_err(|e| io_err("reading the REST address", e))?;
        api.set_nonblocking(true)
            .map_err(|e| io_err("making the REST listener non-blocking", e))?;
        let mut push = zeromq::PushSocket::new();
        let endpoint = format!("tcp://{}:{}", fmt_host(cfg.host), cfg.stream_port);
        let bound = runtime.block_on(push.bind(&endpoint)).map_err(|e| {
            io_err(
                &format!("binding the ZeroMQ PUSH socket {endpoint}"),
                std::io::Error::other(e.to_string()),
            )
        })?;
        let stream_addr = match bound {
            zeromq::Endpoint::Tcp(host, port) => {
                let ip = match host {
                    zeromq::Host::Ipv4(a) => IpAddr::V4(a),
                    zeromq::Host::Ipv6(a) => IpAddr::V6(a),
                    _ => cfg.host,
                };
                SocketAddr::new(ip, port)
            }
            other => {
                return Err(SimError::Config(format!(
                    "ZeroMQ bound {other}, expected a TCP endpoint"
                )));
            }
        };

        let shared = Arc::new(Shared::new());
        let (tx, rx) = unbounded_channel();
        let ctx = Arc::new(Ctx {
            config: Mutex::new(Config {
                detector,
                stream: settings::stream_config(),
                filewriter: settings::filewriter_config(),
                monitor: settings::monitor_config(),
                source,
                arrays,
                next_series: first_series,
                last_series: first_series.saturating_sub(1),
            }),
            shared: shared.clone(),
            events: tx.clone(),
        });
        let engine = Engine::new(shared.clone(), rx, push, cfg.pacing, cfg.faults);
        runtime.spawn(engine.run());
        let (server_stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(api)
                .map_err(|e| io_err("handing the REST listener to tokio", e))?
        };
        let app = axum::Router::new().fallback(serve).with_state(ctx);
        runtime.spawn(async move {
            let r = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = r {
                tracing::warn!("dectris-sim: REST server ended: {e}");
            }
        });

        let mut threads = Vec::new();
        if let Some(trigger) = cfg.trigger_input {
            let (shared, tx) = (shared.clone(), tx.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("dectris-sim-trigger".into())
                    .spawn(move || forward_triggers(trigger, shared, tx))
                    .map_err(|e| io_err("spawning the trigger forwarder", e))?,
            );
        }
        Ok(Self {
            api_addr,
            stream_addr,
            shared,
            events: tx,
            runtime: Some(runtime),
            server_stop: Some(server_stop),
            threads,
        })
    }

    /// The bound REST API address (`http://<addr>/detector/api/1.8.0/...`).
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The bound stream-v1 address; clients connect a ZeroMQ PULL socket to
    /// [`DectrisSim::stream_endpoint`].
    pub fn stream_addr(&self) -> SocketAddr {
        self.stream_addr
    }

    /// The ZeroMQ endpoint of the stream, `tcp://<host>:<port>`.
    pub fn stream_endpoint(&self) -> String {
        format!(
            "tcp://{}:{}",
            fmt_host(self.stream_addr.ip()),
            self.stream_addr.port()
        )
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> DectrisSimStats {
        let c = &self.shared.counters;
        let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        DectrisSimStats {
            series: g(&c.series),
            series_completed: g(&c.series_completed),
            frames_sent: g(&c.frames_sent),
            messages_sent: g(&c.messages_sent),
            bytes_sent: g(&c.bytes_sent),
            triggers_seen: g(&c.triggers_seen),
            triggers_ignored: g(&c.triggers_ignored),
            frames_dropped: g(&c.frames_dropped),
            blobs_corrupted: g(&c.blobs_corrupted),
            series_ended_early: g(&c.series_ended_early),
            frames_discarded: g(&c.frames_discarded),
        }
    }

    /// The detector state as `status/state` reports it: `idle`, `ready` or `acquire`.
    pub fn state(&self) -> &'static str {
        self.shared.status().state.as_str()
    }

    /// Stops serving: closes the REST server and the stream socket and joins every thread
    /// (within about 2 s).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        let _ = self.events.send(Event::Shutdown);
        if let Some(s) = self.server_stop.take() {
            let _ = s.send(());
        }
        for t in self.threads.drain(..) {
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

impl Drop for DectrisSim {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn fmt_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
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
    let m = method.as_str().to_string();
    let reply = tokio::task::spawn_blocking(move || rest::handle(&ctx, &m, &path, &body))
        .await
        .unwrap_or_else(|e| Reply::Text(500, format!("request handler failed: {e}")));
    let (code, ctype, text) = match reply {
        Reply::Json(c, v) => (c, "application/json; charset=utf-8", v.to_string()),
        Reply::Text(c, t) => (c, "text/plain; charset=utf-8", t),
    };
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, [(header::CONTENT_TYPE, ctype)], text).into_response()
}

/// Forwards rising edges from the trigger line to the engine until shutdown.
fn forward_triggers(trigger: TriggerReceiver, shared: Arc<Shared>, events: UnboundedSender<Event>) {
    const POLL: Duration = Duration::from_millis(20);
    while !shared.shutdown.load(Ordering::Acquire) {
        let t = Instant::now();
        match trigger.wait(POLL) {
            Some(_) if events.send(Event::Edge(Instant::now())).is_err() => return,
            Some(_) => {}
            // An unplugged line (every sender gone) returns at once: do not spin.
            None if t.elapsed() < POLL / 2 => std::thread::sleep(POLL),
            None => {}
        }
    }
}
