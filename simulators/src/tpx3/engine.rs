//! Sending: the data connection ([`Link`]), one acquisition with its faults ([`AcqSend`]),
//! the passive (free-running) per-connection server ([`serve_passive`]) and the active
//! measurement engine driven by the Serval REST API and the trigger line ([`Engine`]).
//!
//! All on std threads with blocking sockets. Writes use a short write timeout so a blocked
//! sender keeps looking at the shutdown flag (and, in the active engine, at a pending stop).
//! Chunks are pre-encoded (`source.rs`); consecutive chunks without a fault between them are
//! written with one `write` of up to [`BATCH_BYTES`].

use super::Tpx3Faults;
use super::source::Encoded;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use stemflow_drivers::asi::wire::{ArrayChunk, HEADER_LEN, Header, ScanStart};

/// Writes close once they reach this many bytes (1–2 MiB writes measured fastest over
/// loopback in the Merlin simulator).
const BATCH_BYTES: usize = 2 << 20;
/// Socket write timeout: how often a blocked sender looks at its flags.
const WRITE_POLL: Duration = Duration::from_millis(20);
/// Idle poll period (new data clients, events, pacing waits).
const IDLE_POLL: Duration = Duration::from_millis(5);
/// How long a stop waits for a client that does not read before its connection is closed.
const STOP_DRAIN: Duration = Duration::from_secs(2);
/// Bytes of the garbage fault.
pub const GARBAGE_LEN: usize = 256;
/// First garbage byte: no message tag (protocols.md §3.3 knows 0–4).
pub const GARBAGE_FIRST: u8 = 0xA5;

/// Counters behind [`super::Tpx3SimStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) connections: AtomicU64,
    pub(crate) acquisitions: AtomicU64,
    pub(crate) acquisitions_completed: AtomicU64,
    pub(crate) acquisitions_cancelled: AtomicU64,
    pub(crate) chunks_sent: AtomicU64,
    pub(crate) frames_sent: AtomicU64,
    pub(crate) events_sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) frames_discarded: AtomicU64,
    pub(crate) triggers_seen: AtomicU64,
    pub(crate) triggers_ignored: AtomicU64,
    pub(crate) faults_injected: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Serval's measurement status strings (protocols.md §3.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DaState {
    Idle,
    Recording,
    Stopped,
}

impl DaState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "DA_IDLE",
            Self::Recording => "DA_RECORDING",
            Self::Stopped => "DA_STOPPED",
        }
    }
}

/// The current (or last) active measurement, as `GET /measurement` reports it.
#[derive(Clone, Debug)]
pub(crate) struct MeasureStatus {
    pub(crate) state: DaState,
    /// Frames sent (or discarded without a client) so far.
    pub(crate) frames: u64,
    /// Frames that had no client to go to.
    pub(crate) dropped: u64,
    /// Events in the frames sent.
    pub(crate) events: u64,
    /// Frames the measurement was started for (`nTriggers`).
    pub(crate) total: u64,
    /// Trigger period, s (for `TimeLeft`).
    pub(crate) period_s: f64,
    pub(crate) started: Option<Instant>,
    /// Unix time of the start, ms.
    pub(crate) started_epoch_ms: i64,
    pub(crate) ended: Option<Instant>,
}

impl Default for MeasureStatus {
    fn default() -> Self {
        Self {
            state: DaState::Idle,
            frames: 0,
            dropped: 0,
            events: 0,
            total: 0,
            period_s: 0.0,
            started: None,
            started_epoch_ms: 0,
            ended: None,
        }
    }
}

/// State shared by the engine, passive connections, the REST API and the handle.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) counters: Counters,
    pub(crate) shutdown: AtomicBool,
    /// A stop is on its way to the engine: a blocked write gives up after [`STOP_DRAIN`].
    pub(crate) stop_requested: AtomicBool,
    pub(crate) status: Mutex<MeasureStatus>,
    /// Passive connections currently streaming an acquisition.
    pub(crate) passive_streams: AtomicU64,
}

impl Shared {
    pub(crate) fn status(&self) -> MutexGuard<'_, MeasureStatus> {
        // A panicked holder leaves plain data behind; keep serving.
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }
}

/// The simulator is shutting down: stop sending at once.
#[derive(Debug)]
pub(crate) struct Down;

/// One data connection, or none (then writes are discarded).
pub(crate) struct Link {
    stream: Option<TcpStream>,
    shared: Arc<Shared>,
    /// No acquisition has begun on this connection yet (the mid-stream fault applies).
    pub(crate) fresh: bool,
    /// Give up a blocked write [`STOP_DRAIN`] after a stop was requested (active engine).
    honour_stop: bool,
}

/// Prepares an accepted socket: blocking, with the write timeout.
fn prepare(s: &TcpStream) -> bool {
    let ok = s.set_nonblocking(false).is_ok() && s.set_write_timeout(Some(WRITE_POLL)).is_ok();
    let _ = s.set_nodelay(true);
    ok
}

impl Link {
    pub(crate) fn new(stream: Option<TcpStream>, shared: Arc<Shared>, honour_stop: bool) -> Self {
        Self {
            stream,
            shared,
            fresh: true,
            honour_stop,
        }
    }

    pub(crate) fn connected(&self) -> bool {
        self.stream.is_some()
    }

    /// Closes the connection (both directions).
    pub(crate) fn close(&mut self) {
        if let Some(s) = self.stream.take() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Replaces the connection with a new one (the old one is closed).
    fn replace(&mut self, s: TcpStream) {
        self.close();
        self.stream = Some(s);
        self.fresh = true;
    }

    /// Writes all of `buf`; a client that fails (or does not read within [`STOP_DRAIN`]
    /// of a requested stop) is dropped and the rest discarded.
    ///
    /// # Errors
    /// [`Down`] on shutdown.
    pub(crate) fn write(&mut self, mut buf: &[u8]) -> Result<(), Down> {
        let Some(s) = self.stream.as_mut() else {
            return Ok(());
        };
        let mut stop_deadline: Option<Instant> = None;
        let mut failed = false;
        while !buf.is_empty() {
            match s.write(buf) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => {
                    buf = &buf[n..];
                    add(&self.shared.counters.bytes_sent, n as u64);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) =>
                {
                    if self.shared.down() {
                        return Err(Down);
                    }
                    if self.honour_stop && self.shared.stop_requested.load(Ordering::Acquire) {
                        let d = *stop_deadline.get_or_insert_with(|| Instant::now() + STOP_DRAIN);
                        if Instant::now() > d {
                            failed = true;
                            break;
                        }
                    }
                }
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            self.close();
        }
        Ok(())
    }

    /// Keeps the connection open without sending, discarding what the client sends, until
    /// it closes or the simulator shuts down.
    fn idle(&mut self) {
        let Some(s) = self.stream.as_mut() else {
            return;
        };
        if s.set_read_timeout(Some(Duration::from_millis(50))).is_err() {
            return;
        }
        let mut buf = [0u8; 4096];
        while !self.shared.down() {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(_) => break,
            }
        }
        self.close();
    }
}

/// Where one acquisition stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    /// More to send.
    Going,
    /// The stall (or huge-chunk) fault: nothing more is sent in this acquisition.
    Stalled,
    /// `AcquisitionEnd` was sent inside the scan (stop or cancel fault).
    Cancelled,
    /// The close or truncate fault closed the connection.
    Closed,
    /// `ScanEnd` and `AcquisitionEnd` were sent.
    Finished,
}

/// One acquisition on a [`Link`], with the faults of [`Tpx3Faults`].
pub(crate) struct AcqSend {
    pub(crate) enc: Arc<Encoded>,
    pub(crate) seq: u32,
    /// Chunks handled (sent, skipped or discarded).
    pub(crate) next: usize,
    /// Frames handled.
    pub(crate) frames_done: u64,
    /// Frames that had no client to go to.
    pub(crate) frames_discarded: u64,
    /// Mid-stream fault: chunks below this are skipped.
    skip_before: usize,
    /// Set once the acquisition can send no more.
    pub(crate) over: Option<Flow>,
    /// Chunk boundary whose faults already fired.
    fired_at: Option<usize>,
    huge_sent: bool,
    shared: Arc<Shared>,
}

impl AcqSend {
    pub(crate) fn new(enc: Arc<Encoded>, seq: u32, shared: Arc<Shared>) -> Self {
        Self {
            enc,
            seq,
            next: 0,
            frames_done: 0,
            frames_discarded: 0,
            skip_before: 0,
            over: None,
            fired_at: None,
            huge_sent: false,
            shared,
        }
    }

    fn chunks(&self) -> usize {
        self.enc.chunks.len()
    }

    /// True once every chunk has been handled.
    pub(crate) fn all_chunks_done(&self) -> bool {
        self.next >= self.chunks()
    }

    /// `AcquisitionStart`, `ScanStart` and the metadata — or, on a fresh link with the
    /// mid-stream fault, nothing (the first chunks are skipped as configured).
    pub(crate) fn begin(
        &mut self,
        link: &mut Link,
        faults: &Tpx3Faults,
        metadata: &[u8],
    ) -> Result<(), Down> {
        let c = &self.shared.counters;
        add(&c.acquisitions, 1);
        let fresh = std::mem::replace(&mut link.fresh, false);
        if fresh && let Some(m) = faults.mid_stream_start {
            self.skip_before = usize::try_from(m).unwrap_or(usize::MAX);
            add(&c.faults_injected, 1);
            return Ok(());
        }
        let mut start = self.enc.start;
        start.sequence = self.seq;
        let mut b = Vec::with_capacity(2 * HEADER_LEN + metadata.len());
        b.extend_from_slice(&Header::AcquisitionStart(start).to_bytes());
        b.extend_from_slice(
            &Header::ScanStart(ScanStart {
                sequence: self.seq,
                metadata_length: metadata.len() as u64,
            })
            .to_bytes(),
        );
        b.extend_from_slice(metadata);
        link.write(&b)
    }

    /// True when chunk boundary `k` (before chunk `k`; `k` = chunk count is the end of
    /// the scan) carries a fault or the mid-stream skip.
    fn touches(&self, faults: &Tpx3Faults, k: usize) -> bool {
        let k64 = k as u64;
        k < self.skip_before
            || [
                faults.close_after_chunks,
                faults.garbage_after_chunks,
                faults.stall_after_chunks,
                faults.cancel_after_chunks,
                faults.huge_chunk_after,
                faults.corrupt_indptr_at,
                faults.truncate_chunk_at,
            ]
            .contains(&Some(k64))
    }

    /// The boundary faults at `self.next`, once: garbage, then close, stall, huge chunk,
    /// cancel.
    fn boundary(&mut self, link: &mut Link, faults: &Tpx3Faults) -> Result<Option<Flow>, Down> {
        let k = self.next;
        if self.fired_at == Some(k) {
            return Ok(None);
        }
        self.fired_at = Some(k);
        let k64 = Some(k as u64);
        let c = &self.shared.counters;
        if faults.garbage_after_chunks == k64 {
            add(&c.faults_injected, 1);
            link.write(&garbage())?;
        }
        if faults.close_after_chunks == k64 {
            add(&c.faults_injected, 1);
            link.close();
            return Ok(Some(Flow::Closed));
        }
        if faults.stall_after_chunks == k64 {
            add(&c.faults_injected, 1);
            self.over = Some(Flow::Stalled);
            return Ok(Some(Flow::Stalled));
        }
        if faults.huge_chunk_after == k64 {
            add(&c.faults_injected, 1);
            let frames = self.enc.chunks.get(k).map_or(1, |ch| ch.frames);
            let ip = self.enc.layout.indptr.size() as u32;
            let h = Header::ArrayChunk(ArrayChunk {
                values: self.enc.layout.values,
                frames,
                nnz: u32::MAX,
                indices_offset: frames.saturating_add(1).saturating_mul(ip),
                values_offset: u32::MAX,
            });
            link.write(&h.to_bytes())?;
            self.huge_sent = true;
            self.over = Some(Flow::Stalled);
            return Ok(Some(Flow::Stalled));
        }
        if faults.cancel_after_chunks == k64 {
            add(&c.faults_injected, 1);
            // Counted before the bytes leave, so a client that has read them sees the count.
            add(&c.acquisitions_cancelled, 1);
            self.over = Some(Flow::Cancelled);
            link.write(&Header::AcquisitionEnd(self.seq).to_bytes())?;
            return Ok(Some(Flow::Cancelled));
        }
        Ok(None)
    }

    fn count(&mut self, connected: bool, from: usize, to: usize) {
        let c = &self.shared.counters;
        let (mut frames, mut events) = (0u64, 0u64);
        for ch in &self.enc.chunks[from..to] {
            frames += u64::from(ch.frames);
            events += u64::from(ch.nnz);
        }
        if connected {
            add(&c.chunks_sent, (to - from) as u64);
            add(&c.frames_sent, frames);
            add(&c.events_sent, events);
        } else {
            add(&c.frames_discarded, frames);
            self.frames_discarded += frames;
        }
        self.frames_done += frames;
    }

    /// Sends chunks `self.next..upto` (boundary faults first at each). Returns early with
    /// [`Flow::Going`] when a stop is requested and `link` honours stops, and with the flow
    /// when a fault ends or interrupts the acquisition.
    ///
    /// # Errors
    /// [`Down`] on shutdown.
    pub(crate) fn send(
        &mut self,
        link: &mut Link,
        faults: &Tpx3Faults,
        upto: usize,
    ) -> Result<Flow, Down> {
        let upto = upto.min(self.chunks());
        while self.next < upto {
            if let Some(f) = self.over {
                return Ok(f);
            }
            if let Some(f) = self.boundary(link, faults)? {
                return Ok(f);
            }
            let k = self.next;
            let ch = self.enc.chunks[k];
            if k < self.skip_before {
                self.next += 1;
                self.frames_done += u64::from(ch.frames);
                continue;
            }
            let enc = self.enc.clone();
            let whole = &enc.bytes[ch.start..ch.end];
            let c = &self.shared.counters;
            if faults.truncate_chunk_at == Some(k as u64) {
                add(&c.faults_injected, 1);
                let cut = HEADER_LEN + (whole.len() - HEADER_LEN) / 2;
                link.write(&whole[..cut])?;
                link.close();
                self.next += 1;
                self.frames_done += u64::from(ch.frames);
                return Ok(Flow::Closed);
            }
            if faults.corrupt_indptr_at == Some(k as u64) {
                add(&c.faults_injected, 1);
                let mut b = whole.to_vec();
                corrupt_indptr(&mut b, &enc, ch.frames, ch.nnz);
                let was = link.connected();
                link.write(&b)?;
                let ok = was && link.connected();
                self.count(ok, k, k + 1);
                self.next += 1;
                continue;
            }
            let mut j = k + 1;
            while j < upto
                && !self.touches(faults, j)
                && enc.chunks[j].end - ch.start <= BATCH_BYTES
            {
                j += 1;
            }
            let was = link.connected();
            link.write(&enc.bytes[ch.start..enc.chunks[j - 1].end])?;
            let ok = was && link.connected();
            self.count(ok, k, j);
            self.next = j;
            if link.honour_stop && self.shared.stop_requested.load(Ordering::Acquire) {
                return Ok(Flow::Going);
            }
        }
        Ok(self.over.unwrap_or(Flow::Going))
    }

    /// After the last chunk: the end-of-scan boundary faults, then `ScanEnd` and
    /// `AcquisitionEnd`.
    ///
    /// # Errors
    /// [`Down`] on shutdown.
    pub(crate) fn finish(&mut self, link: &mut Link, faults: &Tpx3Faults) -> Result<Flow, Down> {
        if let Some(f) = self.over {
            return Ok(f);
        }
        if let Some(f) = self.boundary(link, faults)? {
            return Ok(f);
        }
        let mut b = Vec::with_capacity(2 * HEADER_LEN);
        b.extend_from_slice(&Header::ScanEnd(self.seq).to_bytes());
        b.extend_from_slice(&Header::AcquisitionEnd(self.seq).to_bytes());
        add(&self.shared.counters.acquisitions_completed, 1);
        self.over = Some(Flow::Finished);
        link.write(&b)?;
        Ok(Flow::Finished)
    }

    /// Ends the acquisition inside the scan (a stop): the exposed frames of the next chunk
    /// (`released` counts exposed frames of the scan) as a shorter chunk, then
    /// `AcquisitionEnd`. After the huge-chunk fault the connection is closed instead (its
    /// stream cannot continue).
    ///
    /// # Errors
    /// [`Down`] on shutdown.
    pub(crate) fn cancel(&mut self, link: &mut Link, released: u64) -> Result<(), Down> {
        match self.over {
            Some(Flow::Finished | Flow::Cancelled) => return Ok(()),
            _ if self.huge_sent => {
                link.close();
                self.over = Some(Flow::Cancelled);
                return Ok(());
            }
            _ => {}
        }
        let c = &self.shared.counters;
        if self.over.is_none()
            && self.next >= self.skip_before
            && let Some(ch) = self.enc.chunks.get(self.next).copied()
            && released > ch.first_frame
        {
            let end = released.min(ch.end_frame());
            let mut b = Vec::new();
            if self.enc.encode_rows(ch.first_frame..end, &mut b).is_ok() {
                let was = link.connected();
                link.write(&b)?;
                let frames = end - ch.first_frame;
                let rows = &self.enc.dataset.rows;
                let events = rows.indptr[end as usize] - rows.indptr[ch.first_frame as usize];
                if was && link.connected() {
                    add(&c.chunks_sent, 1);
                    add(&c.frames_sent, frames);
                    add(&c.events_sent, events);
                } else {
                    add(&c.frames_discarded, frames);
                    self.frames_discarded += frames;
                }
                self.frames_done += frames;
            }
        }
        add(&c.acquisitions_cancelled, 1);
        self.over = Some(Flow::Cancelled);
        link.write(&Header::AcquisitionEnd(self.seq).to_bytes())
    }
}

/// The garbage fault's bytes: not a header (first byte [`GARBAGE_FIRST`]).
fn garbage() -> Vec<u8> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut g: Vec<u8> = (0..GARBAGE_LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    g[0] = GARBAGE_FIRST;
    g
}

/// Breaks the last row pointer of a chunk message `b` (header + payload) so it no longer
/// equals the entry count: `nnz + 1` where the dtype holds it, else `nnz − 1`.
fn corrupt_indptr(b: &mut [u8], enc: &Encoded, frames: u32, nnz: u32) {
    let dt = enc.layout.indptr;
    let size = dt.size();
    let at = HEADER_LEN + frames as usize * size;
    let v = if u64::from(nnz) < dt.max() {
        u64::from(nnz) + 1
    } else {
        u64::from(nnz).saturating_sub(1)
    };
    if let Some(slot) = b.get_mut(at..at + size) {
        slot.copy_from_slice(&v.to_le_bytes()[..size]);
    }
}

/// What a passive connection sends.
#[derive(Debug)]
pub(crate) struct PassivePlan {
    pub(crate) datasets: Vec<Arc<Encoded>>,
    pub(crate) faults: Tpx3Faults,
    pub(crate) metadata: Vec<u8>,
    /// s per frame; 0 = as fast as possible.
    pub(crate) frame_time_s: f64,
    /// Passes over all datasets; 0 = forever.
    pub(crate) repeats: u64,
    pub(crate) close_when_done: bool,
    pub(crate) first_sequence: u32,
}

/// Counts a passive stream while it lives.
struct Streaming<'a>(&'a AtomicU64);

impl Drop for Streaming<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one passive (free-running) connection: every dataset as one acquisition,
/// `repeats` times, then idles (or closes).
pub(crate) fn serve_passive(stream: TcpStream, plan: Arc<PassivePlan>, shared: Arc<Shared>) {
    if !prepare(&stream) {
        return;
    }
    let mut link = Link::new(Some(stream), shared.clone(), false);
    shared.passive_streams.fetch_add(1, Ordering::Relaxed);
    let guard = Streaming(&shared.passive_streams);
    let done = stream_passive(&mut link, &plan, &shared);
    drop(guard);
    if done.is_err() || !link.connected() {
        link.close();
        return;
    }
    if plan.close_when_done {
        link.close();
    } else {
        link.idle();
    }
}

/// Sends the acquisitions; `Err` on shutdown, `Ok` also when the connection was lost.
fn stream_passive(link: &mut Link, plan: &PassivePlan, shared: &Arc<Shared>) -> Result<(), Down> {
    let mut seq = plan.first_sequence;
    let mut pass = 0u64;
    while plan.repeats == 0 || pass < plan.repeats {
        pass += 1;
        for enc in &plan.datasets {
            let mut acq = AcqSend::new(enc.clone(), seq, shared.clone());
            seq = seq.wrapping_add(1);
            acq.begin(link, &plan.faults, &plan.metadata)?;
            let t0 = Instant::now();
            let flow = loop {
                if !link.connected() {
                    return Ok(());
                }
                let upto = if plan.frame_time_s > 0.0 {
                    let elapsed = t0.elapsed().as_secs_f64();
                    enc.chunks[acq.next..]
                        .iter()
                        .take_while(|c| c.end_frame() as f64 * plan.frame_time_s <= elapsed)
                        .count()
                        + acq.next
                } else {
                    enc.chunks.len()
                };
                if upto > acq.next {
                    match acq.send(link, &plan.faults, upto)? {
                        Flow::Going => {}
                        other => break other,
                    }
                }
                if acq.all_chunks_done() {
                    break acq.finish(link, &plan.faults)?;
                }
                if shared.down() {
                    return Err(Down);
                }
                // Pace: wait for the next chunk's last frame.
                let due = enc.chunks[acq.next].end_frame() as f64 * plan.frame_time_s;
                let wait = (due - t0.elapsed().as_secs_f64()).max(0.0);
                std::thread::sleep(Duration::from_secs_f64(wait).min(WRITE_POLL));
            };
            match flow {
                Flow::Closed => return Ok(()),
                Flow::Stalled => {
                    link.idle();
                    return Ok(());
                }
                Flow::Going | Flow::Cancelled | Flow::Finished => {}
            }
        }
    }
    Ok(())
}

/// How an active measurement's frames are released (protocols.md §3.5 trigger modes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Timing {
    /// Frame `k` completes at start + exposure + `k` × period; a zero period sends all
    /// frames at once.
    Timer {
        period: Duration,
        exposure: Duration,
    },
    /// Frame `k` completes `delay` after the `k`-th rising edge of the trigger line.
    External { delay: Duration },
}

/// One active measurement, fixed at `measurement/start`.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) enc: Arc<Encoded>,
    pub(crate) seq: u32,
    pub(crate) timing: Timing,
    /// Trigger period, s (status `TimeLeft`).
    pub(crate) period_s: f64,
}

/// Messages to the active engine.
#[derive(Debug)]
pub(crate) enum Event {
    /// `measurement/start`; acked once the headers are on the wire.
    Start(Box<Plan>, Sender<()>),
    /// `measurement/stop`; acked once the measurement has ended.
    Stop(Sender<()>),
    /// A rising edge of the trigger line.
    Edge(Instant),
    Shutdown,
}

struct Measure {
    send: AcqSend,
    timing: Timing,
    started: Instant,
    /// External timing: completion time of each released frame.
    due: Vec<Instant>,
}

impl Measure {
    fn total(&self) -> u64 {
        self.send.enc.dataset.frames()
    }

    /// Frames exposed by `now`.
    fn released(&self, now: Instant) -> u64 {
        match self.timing {
            Timing::Timer { period, exposure } => {
                if period.is_zero() {
                    return self.total();
                }
                let Some(t) = self
                    .started
                    .checked_add(exposure)
                    .and_then(|s| now.checked_duration_since(s))
                else {
                    return 0;
                };
                let k = (t.as_secs_f64() / period.as_secs_f64()).floor() as u64 + 1;
                k.min(self.total())
            }
            Timing::External { .. } => self.due.iter().take_while(|&&d| d <= now).count() as u64,
        }
    }

    /// When frame `f` completes, if known yet.
    fn frame_due(&self, f: u64) -> Option<Instant> {
        match self.timing {
            Timing::Timer { period, exposure } => {
                if period.is_zero() {
                    return Some(self.started);
                }
                let offset = Duration::try_from_secs_f64(period.as_secs_f64() * f as f64).ok()?;
                self.started.checked_add(exposure)?.checked_add(offset)
            }
            Timing::External { .. } => self.due.get(f as usize).copied(),
        }
    }

    /// Chunks whose frames are all complete by `now`.
    fn chunks_due(&self, now: Instant) -> usize {
        let chunks = &self.send.enc.chunks;
        let mut k = self.send.next;
        while let Some(c) = chunks.get(k) {
            match self.frame_due(c.end_frame() - 1) {
                Some(d) if d <= now => k += 1,
                _ => break,
            }
        }
        k
    }

    /// When the next chunk completes, if known.
    fn next_due(&self) -> Option<Instant> {
        let c = self.send.enc.chunks.get(self.send.next)?;
        self.frame_due(c.end_frame() - 1)
    }
}

/// The active engine: owns the data listener, the client and the measurement.
pub(crate) struct Engine {
    shared: Arc<Shared>,
    events: Receiver<Event>,
    listener: TcpListener,
    link: Link,
    faults: Tpx3Faults,
    metadata: Vec<u8>,
    meas: Option<Measure>,
}

impl Engine {
    /// # Errors
    /// A message when the listener cannot be made non-blocking.
    pub(crate) fn new(
        shared: Arc<Shared>,
        events: Receiver<Event>,
        listener: TcpListener,
        faults: Tpx3Faults,
        metadata: Vec<u8>,
    ) -> Result<Self, std::io::Error> {
        listener.set_nonblocking(true)?;
        Ok(Self {
            link: Link::new(None, shared.clone(), true),
            shared,
            events,
            listener,
            faults,
            metadata,
            meas: None,
        })
    }

    /// Takes pending data connections; the newest replaces the current client.
    fn poll_accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((s, _)) => {
                    if prepare(&s) {
                        self.link.replace(s);
                        add(&self.shared.counters.connections, 1);
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Runs until shutdown.
    pub(crate) fn run(mut self) {
        while !self.shared.down() {
            let now = Instant::now();
            let wait = self
                .meas
                .as_ref()
                .filter(|m| m.send.over.is_none())
                .and_then(Measure::next_due)
                .map_or(IDLE_POLL, |d| {
                    d.saturating_duration_since(now).min(IDLE_POLL)
                });
            match self.events.recv_timeout(wait) {
                Ok(ev) => {
                    if self.handle(ev).is_err() {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.poll_accept();
            if self.send_due().is_err() {
                break;
            }
        }
        self.link.close();
    }

    fn handle(&mut self, ev: Event) -> Result<(), Down> {
        match ev {
            Event::Shutdown => return Err(Down),
            Event::Start(plan, ack) => {
                if self.meas.is_some() {
                    // The REST layer refuses a start while recording; end a stale one.
                    self.stop()?;
                }
                self.poll_accept();
                let now = Instant::now();
                {
                    let mut st = self.shared.status();
                    *st = MeasureStatus {
                        state: DaState::Recording,
                        total: plan.enc.dataset.frames(),
                        period_s: plan.period_s,
                        started: Some(now),
                        started_epoch_ms: chrono::Utc::now().timestamp_millis(),
                        ..MeasureStatus::default()
                    };
                }
                let mut send = AcqSend::new(plan.enc.clone(), plan.seq, self.shared.clone());
                send.begin(&mut self.link, &self.faults, &self.metadata)?;
                self.meas = Some(Measure {
                    send,
                    timing: plan.timing,
                    started: now,
                    due: Vec::new(),
                });
                let _ = ack.send(());
                self.send_due()?;
            }
            Event::Stop(ack) => {
                self.stop()?;
                self.shared.stop_requested.store(false, Ordering::Release);
                let _ = ack.send(());
            }
            Event::Edge(at) => {
                let c = &self.shared.counters;
                add(&c.triggers_seen, 1);
                match self.meas.as_mut() {
                    Some(m)
                        if matches!(m.timing, Timing::External { .. })
                            && (m.due.len() as u64) < m.total()
                            && m.send.over.is_none() =>
                    {
                        let Timing::External { delay } = m.timing else {
                            return Ok(());
                        };
                        m.due.push(at + delay);
                    }
                    _ => add(&c.triggers_ignored, 1),
                }
            }
        }
        Ok(())
    }

    /// Sends what is due, ends a finished measurement.
    fn send_due(&mut self) -> Result<(), Down> {
        let Some(m) = self.meas.as_mut() else {
            return Ok(());
        };
        if m.send.over.is_some() {
            return Ok(());
        }
        let upto = m.chunks_due(Instant::now());
        let mut flow = Flow::Going;
        if upto > m.send.next {
            flow = m.send.send(&mut self.link, &self.faults, upto)?;
        }
        if flow == Flow::Going && m.send.all_chunks_done() {
            flow = m.send.finish(&mut self.link, &self.faults)?;
        }
        self.update_status();
        match flow {
            Flow::Finished => self.end(DaState::Idle),
            Flow::Cancelled => self.end(DaState::Stopped),
            Flow::Going | Flow::Stalled | Flow::Closed => {}
        }
        Ok(())
    }

    fn update_status(&self) {
        let Some(m) = self.meas.as_ref() else { return };
        let mut st = self.shared.status();
        st.frames = m.send.frames_done;
        st.dropped = m.send.frames_discarded;
        let rows = &m.send.enc.dataset.rows;
        let f = (m.send.frames_done as usize).min(rows.n_frames());
        st.events = rows.indptr[f];
    }

    fn end(&mut self, state: DaState) {
        self.update_status();
        self.meas = None;
        let mut st = self.shared.status();
        st.state = state;
        st.ended = Some(Instant::now());
    }

    /// `measurement/stop`: complete chunks go out, then the exposed rest as a shorter chunk
    /// and `AcquisitionEnd` inside the scan.
    fn stop(&mut self) -> Result<(), Down> {
        if self.meas.is_none() {
            let mut st = self.shared.status();
            if st.state == DaState::Recording {
                st.state = DaState::Stopped;
            }
            return Ok(());
        }
        self.send_due()?;
        if let Some(m) = self.meas.as_mut() {
            let released = m.released(Instant::now());
            m.send.cancel(&mut self.link, released)?;
            self.end(DaState::Stopped);
        }
        Ok(())
    }
}

/// The acceptor of passive mode: one thread per connection, until shutdown.
pub(crate) fn accept_passive(
    listener: TcpListener,
    plan: Arc<PassivePlan>,
    shared: Arc<Shared>,
    conns: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
) {
    if listener.set_nonblocking(true).is_err() {
        tracing::warn!("tpx3-sim: data listener cannot be made non-blocking");
        return;
    }
    while !shared.down() {
        match listener.accept() {
            Ok((stream, peer)) => {
                add(&shared.counters.connections, 1);
                let (plan, sh) = (plan.clone(), shared.clone());
                let spawned = std::thread::Builder::new()
                    .name("tpx3-sim-conn".into())
                    .spawn(move || serve_passive(stream, plan, sh));
                let mut list = conns.lock().unwrap_or_else(|e| e.into_inner());
                list.retain(|h| !h.is_finished());
                match spawned {
                    Ok(h) => list.push(h),
                    Err(e) => tracing::warn!("tpx3-sim: no thread for data client {peer}: {e}"),
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(IDLE_POLL),
            Err(e) => {
                tracing::warn!("tpx3-sim: data accept failed: {e}");
                std::thread::sleep(IDLE_POLL);
            }
        }
    }
}
