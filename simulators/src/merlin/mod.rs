//! A Quantum Detectors Merlin simulator speaking the real protocol (protocols.md §1): MPX
//! framed control on one TCP port, HDR + MQ1 frames on the other.
//!
//! Beyond LiberTEM's simulator (§4.1) it models the detector, not just a file player:
//! variables with semantics and status codes (busy, unknown, out of range), the real response
//! length, arm → HDR → triggered frames → idle → re-arm on the same data connection, internal,
//! soft and external triggering (the latter from a [`ScanEngineSim`](crate::scan::ScanEngineSim)
//! through the modelled trigger line), frame-time pacing, synthetic frames of a modelled
//! specimen in U08/U16/U32 and raw R64, and fault injection (dropped, corrupt, wrong-size
//! frames, a stalled stream).
//!
//! Threads: an acceptor for control connections (one thread per connection; several may come
//! and go, each may carry several requests), the detector engine (owns the data connection
//! and the acquisition; see `engine.rs`), and, with a trigger input, a forwarder from the
//! trigger line into the engine's event channel.
//!
//! Behaviour worth knowing (simulator choices where real Merlin is unverified, §1.3 [?]):
//! * `DETECTORSTATUS` reads 0 when idle and 1 from STARTACQUISITION until the acquisition has
//!   emitted its last frame (or is stopped/aborted).
//! * SET while busy answers 1; STARTACQUISITION while busy answers 1; SOFTTRIGGER, STOP and
//!   ABORT always answer 0 (a soft trigger when not armed in soft mode is ignored and counted).
//! * STOPACQUISITION and ABORT both end the acquisition at the next frame boundary; the reply
//!   comes once the detector is idle.
//! * GET of an unknown variable answers `GET,<NAME>,,2`; SET of a read-only one answers 3.
//! * One data client at a time: a new connection replaces the previous one (which is closed).
//!   With no client at arm time the HDR and the frames are discarded (counted), as hardware
//!   does.
//! * Triggers that arrive while frames of earlier triggers are still pending are queued (no
//!   frame is lost); triggers beyond `NUMFRAMESTOACQUIRE` are ignored and counted.
//! * Sequence numbers count 1..N per acquisition and wrap to 000000 after 999999 (6 digits
//!   kept so fixed-offset fields stay in place).
//! * MQ1 timestamps of pre-rendered frames are the arm time (their headers are refreshed at
//!   every arm); frames rendered on the fly carry their send time.
//! * Faults use acquisition frame indices (0-based) and apply to every acquisition.

mod control;
mod engine;
mod frames;
mod mib;
mod wire;

use crate::SimError;
use crate::specimen::Specimen;
use control::{Request, Settings, parse_request, response, status};
use crossbeam_channel::{Sender, bounded, unbounded};
use engine::{Engine, Event, Shared};
use frames::Source;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use stemflow_core::devices::TriggerReceiver;
use stemflow_core::{NavShape, SigShape};

/// What `GET SOFTWAREVERSION` answers and the HDR states for synthetic sources (recordings
/// report the version they were recorded with).
pub const SIM_SOFTWARE_VERSION: &str = concat!("stemflow-merlin-sim ", env!("CARGO_PKG_VERSION"));

/// Largest control message accepted, bytes; longer ones close the connection.
const MAX_CONTROL_MESSAGE: usize = 64 << 10;
/// Read timeout of control connections: how often they look at the shutdown flag.
const CONTROL_POLL: Duration = Duration::from_millis(50);
/// How long a control request waits for the engine (arming renders the frame cache when the
/// counter depth changed, which takes up to about a second).
const ENGINE_DEADLINE: Duration = Duration::from_secs(30);

/// Where the simulator's frames come from.
#[derive(Clone, Debug)]
pub enum MerlinSource {
    /// Replays a Merlin recording. `path` is the `.hdr` (its `.mib` has the same stem) or the
    /// `.mib` (a `.hdr` beside it is used if present, else an HDR is synthesised). Frames are
    /// replayed cyclically and verbatim except for the renumbered sequence field (1..N per
    /// acquisition). The HDR is the recorded text with `Frames in Acquisition` and `Frames per
    /// Trigger` rewritten to the configured values. `COUNTERDEPTH` and `FILEFORMAT` are fixed
    /// by the recording (other values answer status 3); `IMAGEX`/`IMAGEY` give the assembled
    /// image (512 × 512 for a raw quad).
    Recording {
        /// The `.hdr` or `.mib` file.
        path: PathBuf,
    },
    /// Renders frames of a modelled specimen: frame `i` shows scan position
    /// `i % nav_shape.len()` (row-major) with Poisson noise seeded by `(seed, i)`. Counter
    /// depth 1/6/12/24 and raw R64 (1/6/12-bit, single chip) are produced as configured.
    /// `sig_shape` 512 × 512 is sent as a quad (`2x2`, 768-byte headers), up to 256 × 256 as
    /// a single chip.
    ///
    /// Frames are pre-rendered when all scan positions fit in 256 MiB of encoded frames
    /// (e.g. a 32 × 32 scan of 256 × 256 U16 frames, about 0.1 s to render on 2 cores).
    /// Larger scans are rendered as they are sent under [`Pacing::FrameTime`] (exact, about
    /// 2000+ frames/s of 256 × 256 per core) and cycle through 64 pre-rendered positions under
    /// [`Pacing::AsFastAsPossible`] (content then no longer matches the scan position).
    Synthetic {
        /// The specimen model.
        specimen: Specimen,
        /// Scan grid; sets `ScanX`/`ScanY` in the HDR.
        nav_shape: NavShape,
        /// Frame shape (`IMAGEY` × `IMAGEX`), pixels.
        sig_shape: SigShape,
        /// Noise seed.
        seed: u64,
    },
}

/// How fast frames leave the simulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pacing {
    /// Like the hardware: with the internal trigger, frame `k` leaves at arm time +
    /// `ACQUISITIONTIME` + k × the read-back `ACQUISITIONPERIOD`; with soft or external
    /// triggers, a trigger's first frame leaves one `ACQUISITIONTIME` after the edge (never
    /// sooner than one period after the previous frame) and its further frames one period
    /// apart. Deadlines are absolute, so timing does not drift.
    FrameTime,
    /// Released frames are written as fast as the socket takes them (the benchmark path);
    /// triggers still gate them. Without a data client, frames are discarded at frame-time
    /// pace instead of spinning.
    AsFastAsPossible,
}

/// Faults the simulator injects. Indices are 0-based frame indices within an acquisition and
/// apply to every acquisition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MerlinFaults {
    /// Frames never sent (their sequence numbers are missing on the wire); counted in
    /// [`MerlinSimStats::frames_dropped`].
    pub drop_frames: Vec<u64>,
    /// This frame's MPX magic `MPX,` is replaced by `XPM,` (length and contents intact).
    pub corrupt_prefix_at: Option<u64>,
    /// After this many frames the detector stalls: no more frames, the data socket stays
    /// open, `DETECTORSTATUS` stays busy until STOPACQUISITION or ABORT.
    pub stop_after_frames: Option<u64>,
    /// This frame is sent with half its payload (MPX length consistent with what is sent,
    /// MQ1 header unchanged), so its size differs from the others.
    pub wrong_size_at: Option<u64>,
    /// Every acquisition is sent at this counter depth (HDR and frames), whatever
    /// `SET COUNTERDEPTH` set and `GET COUNTERDEPTH` answers: a detector whose setting did
    /// not take effect, so its frames' pixel type differs from the configured one.
    pub frames_at_depth: Option<u8>,
}

/// Configuration of a [`MerlinSim`].
#[derive(Clone, Debug)]
pub struct MerlinSimConfig {
    /// Address to bind both ports to (use 127.0.0.1 in tests).
    pub host: IpAddr,
    /// Control port (Merlin: 6341); 0 = ephemeral, see [`MerlinSim::control_addr`].
    pub control_port: u16,
    /// Data port (Merlin: 6342); 0 = ephemeral, see [`MerlinSim::data_addr`].
    pub data_port: u16,
    /// Frame source.
    pub source: MerlinSource,
    /// Frame pacing.
    pub pacing: Pacing,
    /// The detector end of a trigger line (from a scan engine); rising edges trigger frames
    /// with `TRIGGERSTART` 1–4.
    pub trigger_input: Option<TriggerReceiver>,
    /// Injected faults.
    pub faults: MerlinFaults,
}

impl MerlinSimConfig {
    /// 127.0.0.1 with ephemeral ports, frame-time pacing, no trigger input, no faults.
    pub fn new(source: MerlinSource) -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            control_port: 0,
            data_port: 0,
            source,
            pacing: Pacing::FrameTime,
            trigger_input: None,
            faults: MerlinFaults::default(),
        }
    }
}

/// Counters of a running simulator (monotonic over its lifetime).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MerlinSimStats {
    /// STARTACQUISITION commands accepted.
    pub acquisitions: u64,
    /// Frames written completely to a data client.
    pub frames_sent: u64,
    /// Bytes written to data clients (HDR and frames, MPX framing included).
    pub bytes_sent: u64,
    /// Trigger edges and soft triggers received (including ignored ones).
    pub triggers_seen: u64,
    /// Triggers that released no frame: not armed, wrong trigger mode, or beyond the
    /// acquisition's frame count.
    pub triggers_ignored: u64,
    /// Frames that had no data client to go to (none connected, or it went away mid-batch).
    pub frames_discarded: u64,
    /// Frames withheld by [`MerlinFaults::drop_frames`].
    pub frames_dropped: u64,
    /// Data connections accepted.
    pub data_connections: u64,
}

/// A running Merlin simulator. Dropping it stops it (as [`MerlinSim::stop`]).
#[derive(Debug)]
pub struct MerlinSim {
    control_addr: SocketAddr,
    data_addr: SocketAddr,
    shared: Arc<Shared>,
    events: Sender<Event>,
    threads: Vec<JoinHandle<()>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

fn io_err(during: &str, e: std::io::Error) -> SimError {
    SimError::Io {
        device: "merlin-sim".into(),
        during: during.into(),
        source: e,
    }
}

impl MerlinSim {
    /// Binds both ports, loads or prepares the frame source (rendering the frame cache for
    /// the initial settings: counter depth 12, binary) and starts serving.
    ///
    /// # Errors
    /// [`SimError::Io`] when a port cannot be bound; [`SimError::Recording`] for an
    /// unreadable or malformed recording; [`SimError::Config`] for an empty nav or sig shape.
    pub fn start(cfg: MerlinSimConfig) -> Result<Self, SimError> {
        let control = TcpListener::bind((cfg.host, cfg.control_port))
            .map_err(|e| io_err(&format!("binding control port {}", cfg.control_port), e))?;
        let data = TcpListener::bind((cfg.host, cfg.data_port))
            .map_err(|e| io_err(&format!("binding data port {}", cfg.data_port), e))?;
        let control_addr = control
            .local_addr()
            .map_err(|e| io_err("reading control address", e))?;
        let data_addr = data
            .local_addr()
            .map_err(|e| io_err("reading data address", e))?;

        let (source, settings) = match cfg.source {
            MerlinSource::Recording { path } => {
                let rec = mib::load(&path)?;
                let version = rec
                    .software_version
                    .clone()
                    .unwrap_or_else(|| SIM_SOFTWARE_VERSION.to_string());
                let s = Settings::new(
                    rec.image,
                    version,
                    Some((rec.counter_depth, rec.file_format)),
                );
                (Source::Recording(rec), s)
            }
            MerlinSource::Synthetic {
                specimen,
                nav_shape,
                sig_shape,
                seed,
            } => {
                if nav_shape.is_empty()
                    || sig_shape.is_empty()
                    || sig_shape.rows > 9999
                    || sig_shape.cols > 9999
                {
                    return Err(SimError::Config(format!(
                        "synthetic source needs a non-empty nav shape and a sig shape of 1 to 9999 pixels a side; got nav {nav_shape}, sig {sig_shape}"
                    )));
                }
                let s = Settings::new(sig_shape, SIM_SOFTWARE_VERSION.to_string(), None);
                (
                    Source::Synthetic {
                        specimen,
                        nav: nav_shape,
                        sig: sig_shape,
                        seed,
                    },
                    s,
                )
            }
        };
        let shared = Arc::new(Shared {
            settings: Mutex::new(settings),
            counters: Default::default(),
            shutdown: Default::default(),
        });
        let (tx, rx) = unbounded();
        let engine = Engine::new(shared.clone(), rx, data, source, cfg.pacing, cfg.faults)
            .map_err(SimError::Config)?;
        control
            .set_nonblocking(true)
            .map_err(|e| io_err("making the control listener non-blocking", e))?;

        let mut threads = Vec::new();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(f)
                .map_err(|e| io_err(&format!("spawning thread {name}"), e))
        };
        threads.push(spawn("merlin-sim-engine", Box::new(move || engine.run()))?);
        let connections = Arc::new(Mutex::new(Vec::new()));
        {
            let (shared, tx, conns) = (shared.clone(), tx.clone(), connections.clone());
            threads.push(spawn(
                "merlin-sim-control",
                Box::new(move || accept_control(control, shared, tx, conns)),
            )?);
        }
        if let Some(trigger) = cfg.trigger_input {
            let (shared, tx) = (shared.clone(), tx.clone());
            threads.push(spawn(
                "merlin-sim-trigger",
                Box::new(move || forward_triggers(trigger, shared, tx)),
            )?);
        }
        Ok(Self {
            control_addr,
            data_addr,
            shared,
            events: tx,
            threads,
            connections,
        })
    }

    /// The bound control address (Merlin port 6341).
    pub fn control_addr(&self) -> SocketAddr {
        self.control_addr
    }

    /// The bound data address (Merlin port 6342).
    pub fn data_addr(&self) -> SocketAddr {
        self.data_addr
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> MerlinSimStats {
        let c = &self.shared.counters;
        let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        MerlinSimStats {
            acquisitions: g(&c.acquisitions),
            frames_sent: g(&c.frames_sent),
            bytes_sent: g(&c.bytes_sent),
            triggers_seen: g(&c.triggers_seen),
            triggers_ignored: g(&c.triggers_ignored),
            frames_discarded: g(&c.frames_discarded),
            frames_dropped: g(&c.frames_dropped),
            data_connections: g(&c.data_connections),
        }
    }

    /// Stops serving: closes the data connection and all control connections and joins every
    /// thread (within about 50 ms).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        let _ = self.events.send(Event::Shutdown);
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
    }
}

impl Drop for MerlinSim {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Accepts control connections until shutdown, one thread each.
fn accept_control(
    listener: TcpListener,
    shared: Arc<Shared>,
    events: Sender<Event>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    while !shared.shutdown.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let (shared, events) = (shared.clone(), events.clone());
                let spawned = std::thread::Builder::new()
                    .name("merlin-sim-control-conn".into())
                    .spawn(move || serve_control(stream, shared, events));
                let mut list = conns.lock().unwrap_or_else(|e| e.into_inner());
                list.retain(|h| !h.is_finished());
                match spawned {
                    Ok(h) => list.push(h),
                    Err(e) => {
                        tracing::warn!("merlin-sim: no thread for control client {peer}: {e}")
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => {
                tracing::warn!("merlin-sim: control accept failed: {e}");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Serves one control connection: any number of requests, until the client closes it, sends
/// something that is not MPX framing, or the simulator shuts down.
fn serve_control(mut s: TcpStream, shared: Arc<Shared>, events: Sender<Event>) {
    if s.set_nonblocking(false).is_err() || s.set_read_timeout(Some(CONTROL_POLL)).is_err() {
        return;
    }
    let _ = s.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        loop {
            match take_message(&mut buf) {
                Ok(Some(payload)) => {
                    let reply = handle_request(&payload, &shared, &events);
                    if s.write_all(&reply).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(problem) => {
                    tracing::warn!("merlin-sim: closing control connection: {problem}");
                    return;
                }
            }
        }
        if shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        match s.read(&mut tmp) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}

/// Takes one complete MPX message off the front of `buf`, returning its payload (after the
/// comma at byte 14).
fn take_message(buf: &mut Vec<u8>) -> Result<Option<Vec<u8>>, String> {
    let n = buf.len().min(4);
    if buf[..n] != b"MPX,"[..n] {
        return Err(format!(
            "expected `MPX,`, got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ));
    }
    if buf.len() < wire::MPX_PREFIX_LEN {
        return Ok(None);
    }
    let digits = &buf[4..14];
    if !digits.iter().all(u8::is_ascii_digit) || buf[14] != b',' {
        return Err(format!(
            "bad MPX length field {:?}",
            String::from_utf8_lossy(&buf[4..15])
        ));
    }
    let len: usize = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0);
    if len == 0 || len > MAX_CONTROL_MESSAGE {
        return Err(format!(
            "MPX length {len} outside 1..={MAX_CONTROL_MESSAGE}"
        ));
    }
    let end = 14 + len;
    if buf.len() < end {
        return Ok(None);
    }
    let payload = buf[wire::MPX_PREFIX_LEN..end].to_vec();
    buf.drain(..end);
    Ok(Some(payload))
}

/// Answers one request (see the module documentation for the semantics).
fn handle_request(payload: &[u8], shared: &Shared, events: &Sender<Event>) -> Vec<u8> {
    let text: String = payload.iter().map(|&b| b as char).collect(); // Latin-1
    match parse_request(&text) {
        Request::Get(name) => match shared.settings().get(name) {
            Ok(v) => response("GET", name, Some(&v), status::OK),
            Err(st) => response("GET", name, Some(""), st),
        },
        Request::Set(name, value) => {
            let st = shared.settings().set(name, value);
            response("SET", name, None, st)
        }
        Request::Cmd(name) => response("CMD", name, None, command(name, shared, events)),
        Request::Bad { kind, name, status } => response(kind, name, None, status),
    }
}

/// Executes a command and returns its status.
fn command(name: &str, shared: &Shared, events: &Sender<Event>) -> u8 {
    match name {
        "STARTACQUISITION" => {
            let snapshot = {
                let mut s = shared.settings();
                if s.busy {
                    return status::BUSY;
                }
                if s.format().is_none() {
                    return status::RANGE;
                }
                s.busy = true;
                s.clone()
            };
            let (ack, done) = bounded(1);
            let sent = events.send(Event::Arm {
                settings: Box::new(snapshot),
                ack,
            });
            match sent.ok().and_then(|_| wait_ack(&done, shared)) {
                Some(Ok(())) => status::OK,
                Some(Err(problem)) => {
                    tracing::warn!("merlin-sim: arm failed: {problem}");
                    status::RANGE
                }
                None => status::BUSY,
            }
        }
        "SOFTTRIGGER" => {
            let (ack, done) = bounded(1);
            if events.send(Event::SoftTrigger { ack }).is_ok() {
                let _ = wait_ack(&done, shared);
            }
            status::OK
        }
        "STOPACQUISITION" | "ABORT" => {
            let (ack, done) = bounded(1);
            if events.send(Event::Stop { ack }).is_ok() {
                let _ = wait_ack(&done, shared);
            }
            status::OK
        }
        _ => status::UNKNOWN,
    }
}

/// Waits for the engine's answer until [`ENGINE_DEADLINE`], giving up early on shutdown (a
/// queued event keeps its ack sender alive after the engine has exited).
fn wait_ack<T>(done: &crossbeam_channel::Receiver<T>, shared: &Shared) -> Option<T> {
    let deadline = Instant::now() + ENGINE_DEADLINE;
    while Instant::now() < deadline && !shared.shutdown.load(Ordering::Acquire) {
        match done.recv_timeout(CONTROL_POLL) {
            Ok(v) => return Some(v),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return None,
        }
    }
    None
}

/// Forwards rising edges from the trigger line to the engine until shutdown.
fn forward_triggers(trigger: TriggerReceiver, shared: Arc<Shared>, events: Sender<Event>) {
    const POLL: Duration = Duration::from_millis(20);
    while !shared.shutdown.load(Ordering::Acquire) {
        let t = Instant::now();
        match trigger.wait(POLL) {
            Some(_) if events.send(Event::ExtTrigger(Instant::now())).is_err() => return,
            Some(_) => {}
            // An unplugged line (every sender gone) returns at once: do not spin.
            None if t.elapsed() < POLL / 2 => std::thread::sleep(POLL),
            None => {}
        }
    }
}
