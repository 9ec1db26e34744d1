//! The detector engine: one thread that owns the acquisition state and the data connection.
//!
//! Control connections and the trigger input talk to it through one event channel, so
//! arming, triggers and stops are handled in the order they happened. The engine accepts data
//! clients itself (polling a non-blocking listener, always right before arming) so that a
//! client that connected before sending STARTACQUISITION is sure to receive the HDR.
//!
//! Sending: frames are assembled into batches of up to [`BATCH_FRAMES`] frames /
//! [`BATCH_BYTES`] bytes and written with one `writev` per batch where the socket takes it:
//! each frame is a freshly patched header (MPX prefix + MQ1 header with its sequence number)
//! followed by its payload straight from the cache, so payload bytes are never copied in user
//! space. The socket has a short write timeout; when the client stops reading, the engine keeps
//! serving events between attempts, and a stop cuts the stream only at a frame boundary.

use super::control::Settings;
use super::frames::{self, CachePlan, Source, WireFrames};
use super::wire::{self, Geometry, Hdr};
use super::{MerlinFaults, Pacing, SIM_SOFTWARE_VERSION};
use chrono::Utc;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::collections::BTreeSet;
use std::io::{ErrorKind, IoSlice, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Most frames in one batch.
const BATCH_FRAMES: usize = 64;
/// Batches close once they reach this many bytes: writes of 1–2 MiB measured fastest over
/// loopback (larger ones thrash the socket buffer, smaller ones cost more syscalls).
const BATCH_BYTES: usize = 2 << 20;
/// Most iovecs handed to one `writev` (Linux IOV_MAX is 1024).
const MAX_IOV: usize = 256;
/// Socket write timeout: how often a blocked sender looks at its events.
const WRITE_POLL: Duration = Duration::from_millis(20);
/// Idle poll period for new data clients.
const IDLE_POLL: Duration = Duration::from_millis(5);
/// How long a stop waits for a client that does not read to take the rest of a frame
/// before the connection is closed.
const STOP_DRAIN: Duration = Duration::from_secs(2);
/// How long an HDR write may block before the client is dropped.
const HDR_DEADLINE: Duration = Duration::from_secs(2);

/// Messages to the engine.
pub(crate) enum Event {
    /// STARTACQUISITION with the settings snapshot (busy is already set); the ack comes after
    /// the HDR is on the wire (or discarded when no client is connected).
    Arm {
        settings: Box<Settings>,
        ack: Sender<Result<(), String>>,
    },
    /// SOFTTRIGGER; acked once counted.
    SoftTrigger { ack: Sender<()> },
    /// STOPACQUISITION / ABORT; acked once the detector is idle.
    Stop { ack: Sender<()> },
    /// A rising edge on the trigger input.
    ExtTrigger(Instant),
    /// The simulator is shutting down.
    Shutdown,
}

/// Counters behind [`super::MerlinSimStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) acquisitions: AtomicU64,
    pub(crate) frames_sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) triggers_seen: AtomicU64,
    pub(crate) triggers_ignored: AtomicU64,
    pub(crate) frames_discarded: AtomicU64,
    pub(crate) frames_dropped: AtomicU64,
    pub(crate) data_connections: AtomicU64,
}

/// State shared by the engine, the control server and the [`super::MerlinSim`] handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) settings: Mutex<Settings>,
    pub(crate) counters: Counters,
    pub(crate) shutdown: AtomicBool,
}

impl Shared {
    pub(crate) fn settings(&self) -> MutexGuard<'_, Settings> {
        // A panicked holder leaves plain data behind; keep serving.
        self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn add(&self, c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TriggerMode {
    Internal,
    External,
    Soft,
}

/// One armed acquisition.
struct Acq {
    /// Frames in the acquisition; `None` = continuous.
    total: Option<u64>,
    /// Next frame index to emit (sent, dropped or discarded).
    next: u64,
    /// Frames released by triggers so far (`u64::MAX` with the internal trigger).
    released: u64,
    /// When frame `next` is due (frame-time pacing).
    next_due: Instant,
    period: Duration,
    exposure: Duration,
    frames_per_trigger: u64,
    mode: TriggerMode,
    settings: Box<Settings>,
    /// Stop acks to send once the current batch reaches a frame boundary.
    stopping: Vec<Sender<()>>,
}

impl Acq {
    fn emitted_all(&self) -> bool {
        self.total.is_some_and(|t| self.next >= t)
    }
}

#[derive(Clone, Copy)]
enum Src {
    Hdr,
    Cache,
    Scratch,
}

#[derive(Clone, Copy)]
struct Part {
    src: Src,
    start: usize,
    len: usize,
}

/// Frames assembled for one write: headers and rendered payloads in reused buffers, cached
/// payloads by reference.
#[derive(Default)]
struct Batch {
    hdr: Vec<u8>,
    scratch: Vec<u8>,
    parts: Vec<Part>,
    /// Cumulative byte offset of the end of each frame.
    frame_ends: Vec<usize>,
    total: usize,
    written: usize,
    /// Bytes to write (less than `total` once a stop cut the batch at a frame boundary).
    limit: usize,
    /// Frames of this batch fully written and counted.
    counted: usize,
}

impl Batch {
    fn clear(&mut self) {
        self.hdr.clear();
        self.scratch.clear();
        self.parts.clear();
        self.frame_ends.clear();
        self.total = 0;
        self.written = 0;
        self.limit = 0;
        self.counted = 0;
    }

    fn push(&mut self, src: Src, start: usize, len: usize) {
        self.parts.push(Part { src, start, len });
        self.total += len;
    }

    fn end_frame(&mut self) {
        self.frame_ends.push(self.total);
        self.limit = self.total;
    }

    fn frames(&self) -> usize {
        self.frame_ends.len()
    }

    /// Cuts the batch at the end of the frame being written (or right here at a boundary).
    fn cut_at_frame_boundary(&mut self) {
        let at = self
            .frame_ends
            .iter()
            .copied()
            .find(|&e| e >= self.written)
            .unwrap_or(self.total);
        self.limit = self.limit.min(at);
    }

    /// The unwritten bytes up to `limit`, as at most [`MAX_IOV`] slices.
    fn slices<'a>(&'a self, cache: &'a [u8]) -> Vec<IoSlice<'a>> {
        let mut out = Vec::with_capacity(self.parts.len().min(MAX_IOV));
        let mut pos = 0;
        for p in &self.parts {
            let (start, end) = (pos, pos + p.len);
            pos = end;
            if end <= self.written {
                continue;
            }
            if start >= self.limit || out.len() == MAX_IOV {
                break;
            }
            let skip = self.written.saturating_sub(start);
            let take = end.min(self.limit) - start;
            let buf = match p.src {
                Src::Hdr => &self.hdr[p.start..p.start + p.len],
                Src::Cache => &cache[p.start..p.start + p.len],
                Src::Scratch => &self.scratch[p.start..p.start + p.len],
            };
            out.push(IoSlice::new(&buf[skip..take]));
        }
        out
    }
}

/// The engine: acquisition state machine + data sender.
pub(crate) struct Engine {
    shared: Arc<Shared>,
    events: Receiver<Event>,
    listener: TcpListener,
    client: Option<TcpStream>,
    source: Source,
    cache: Option<WireFrames>,
    pacing: Pacing,
    drop_frames: BTreeSet<u64>,
    faults: MerlinFaults,
    acq: Option<Acq>,
    batch: Batch,
    counts: Vec<u32>,
}

impl Engine {
    /// An engine serving `listener` (set non-blocking here); the cache for the initial
    /// settings is built at once so the first arm is quick.
    ///
    /// # Errors
    /// A message when the cache cannot be built or the listener cannot be made non-blocking.
    pub(crate) fn new(
        shared: Arc<Shared>,
        events: Receiver<Event>,
        listener: TcpListener,
        source: Source,
        pacing: Pacing,
        faults: MerlinFaults,
    ) -> Result<Self, String> {
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("data listener: cannot make non-blocking: {e}"))?;
        let mut e = Self {
            shared,
            events,
            listener,
            client: None,
            source,
            cache: None,
            pacing,
            drop_frames: faults.drop_frames.iter().copied().collect(),
            faults,
            acq: None,
            batch: Batch::default(),
            counts: Vec::new(),
        };
        let settings = e.shared.settings().clone();
        e.ensure_cache(&settings)?;
        Ok(e)
    }

    fn fast(&self) -> bool {
        self.pacing == Pacing::AsFastAsPossible && self.client.is_some()
    }

    /// Builds or rebuilds the frame cache when the source needs one for `settings`.
    fn ensure_cache(&mut self, settings: &Settings) -> Result<(), String> {
        let key = (settings.counter_depth, settings.file_format);
        let n = match &self.source {
            Source::Recording(_) => {
                if self.cache.is_none() {
                    self.cache = Some(frames::build(&mut self.source, settings, 0)?);
                }
                return Ok(());
            }
            Source::Synthetic { nav, sig, .. } => {
                let format = settings
                    .format()
                    .ok_or("no pixel format for these settings")?;
                let bytes = Geometry::for_sig(*sig).data_offset
                    + wire::payload_len(*sig, format, settings.counter_depth);
                match frames::cache_plan(*nav, bytes, self.pacing == Pacing::AsFastAsPossible) {
                    CachePlan::All => nav.len(),
                    CachePlan::Cycle(n) => n,
                    CachePlan::OnTheFly => {
                        self.cache = None;
                        return Ok(());
                    }
                }
            }
        };
        if let (Some(cache), Source::Synthetic { sig, .. }) = (self.cache.as_mut(), &self.source)
            && cache.key == key
            && cache.count == n
        {
            frames::refresh_headers(cache, *sig, settings, Utc::now());
            return Ok(());
        }
        self.cache = None; // free the old frames before rendering the new ones
        self.cache = Some(frames::build(&mut self.source, settings, n)?);
        Ok(())
    }

    /// Takes pending data connections; the newest replaces the current client.
    fn poll_accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((s, _)) => {
                    // Accepted sockets may inherit the listener's non-blocking mode.
                    let ok = s.set_nonblocking(false).is_ok()
                        && s.set_write_timeout(Some(WRITE_POLL)).is_ok();
                    let _ = s.set_nodelay(true);
                    if ok {
                        if let Some(old) = self.client.replace(s) {
                            let _ = old.shutdown(Shutdown::Both);
                        }
                        self.shared.add(&self.shared.counters.data_connections, 1);
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return, // WouldBlock: none pending; others: try again next poll
            }
        }
    }

    /// Runs until shutdown.
    pub(crate) fn run(mut self) {
        loop {
            if self.shared.shutdown.load(Ordering::Acquire) {
                break;
            }
            let wait = match &self.acq {
                Some(a) if self.sendable(a) => {
                    if self.fast() {
                        Duration::ZERO
                    } else {
                        a.next_due.saturating_duration_since(Instant::now())
                    }
                }
                _ => IDLE_POLL,
            };
            let first = if wait.is_zero() {
                self.events.try_recv().ok()
            } else {
                match self.events.recv_timeout(wait) {
                    Ok(ev) => Some(ev),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            };
            if let Some(ev) = first {
                if !self.handle(ev) {
                    break;
                }
                while let Ok(ev) = self.events.try_recv() {
                    if !self.handle(ev) {
                        return self.close();
                    }
                }
            }
            self.poll_accept();
            if !self.send_due() {
                break;
            }
        }
        self.close();
    }

    fn close(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = c.shutdown(Shutdown::Both);
        }
        if let Some(acq) = self.acq.take() {
            for ack in acq.stopping {
                let _ = ack.send(());
            }
        }
    }

    fn sendable(&self, a: &Acq) -> bool {
        a.next < a.released
            && !a.emitted_all()
            && self.faults.stop_after_frames.is_none_or(|s| a.next < s)
    }

    /// Handles one event; false on shutdown.
    fn handle(&mut self, ev: Event) -> bool {
        match ev {
            Event::Shutdown => return false,
            Event::Arm { settings, ack } => {
                if self.acq.is_some() {
                    // The control server checks busy first; an arm can only overtake an
                    // acquisition through a bug, and must not clobber it.
                    let _ = ack.send(Err("already armed".to_string()));
                    return true;
                }
                let r = self.arm(settings);
                if r.is_err() {
                    self.shared.settings().busy = false;
                }
                let _ = ack.send(r);
            }
            Event::SoftTrigger { ack } => {
                self.trigger(TriggerMode::Soft, Instant::now());
                let _ = ack.send(());
            }
            Event::ExtTrigger(at) => self.trigger(TriggerMode::External, at),
            Event::Stop { ack } => match &mut self.acq {
                // Mid-batch: finish the frame on the wire, then stop (see `write_batch`).
                Some(acq) if self.batch.written < self.batch.limit => acq.stopping.push(ack),
                Some(_) => {
                    self.finish();
                    let _ = ack.send(());
                }
                None => {
                    let _ = ack.send(());
                }
            },
        }
        true
    }

    fn trigger(&mut self, kind: TriggerMode, at: Instant) {
        let c = &self.shared.counters;
        self.shared.add(&c.triggers_seen, 1);
        let Some(acq) = self.acq.as_mut().filter(|a| a.mode == kind) else {
            self.shared.add(&c.triggers_ignored, 1);
            return;
        };
        if acq.total.is_some_and(|t| acq.released >= t) || !acq.stopping.is_empty() {
            self.shared.add(&c.triggers_ignored, 1);
            return;
        }
        if acq.next >= acq.released {
            // Nothing pending: this trigger's first frame completes one exposure after the
            // edge, and never sooner than one period after the previous frame.
            acq.next_due = acq.next_due.max(at + acq.exposure);
        }
        acq.released = acq.released.saturating_add(acq.frames_per_trigger);
    }

    fn arm(&mut self, mut settings: Box<Settings>) -> Result<(), String> {
        self.poll_accept();
        if let Some(depth) = self.faults.frames_at_depth {
            // The snapshot this acquisition is sent with; the control port keeps answering
            // the configured depth.
            settings.counter_depth = depth;
        }
        self.ensure_cache(&settings)?;
        let hdr = match &self.source {
            Source::Recording(rec) => {
                wire::rewrite_hdr(&rec.hdr, settings.num_frames, settings.frames_per_trigger)
            }
            Source::Synthetic { nav, sig, .. } => wire::hdr_payload(&Hdr {
                frames: settings.num_frames,
                frames_per_trigger: settings.frames_per_trigger,
                depth: settings.counter_depth,
                trigger_start: settings.trigger_start,
                trigger_stop: settings.trigger_stop,
                geometry: Geometry::for_sig(*sig),
                software_version: SIM_SOFTWARE_VERSION,
                scan: Some(*nav),
                charge_summing: settings
                    .plain
                    .get("CHARGESUMMING")
                    .is_some_and(|v| v == "1"),
                bias_v: settings.plain.get("HVBIAS").map_or("120", String::as_str),
                time: Utc::now(),
            }),
        };
        let msg = wire::mpx_message(&hdr);
        if let Some(client) = self.client.as_mut() {
            if write_all_deadline(client, &msg, HDR_DEADLINE).is_ok() {
                self.shared
                    .add(&self.shared.counters.bytes_sent, msg.len() as u64);
            } else {
                self.drop_client();
            }
        }
        let mode = match settings.trigger_start {
            0 => TriggerMode::Internal,
            5 => TriggerMode::Soft,
            _ => TriggerMode::External,
        };
        let now = Instant::now();
        let exposure = Duration::from_secs_f64(settings.acq_time_ms * 1e-3);
        self.acq = Some(Acq {
            total: (settings.num_frames > 0).then_some(settings.num_frames),
            next: 0,
            released: if mode == TriggerMode::Internal {
                u64::MAX
            } else {
                0
            },
            next_due: now
                + if mode == TriggerMode::Internal {
                    exposure
                } else {
                    Duration::ZERO
                },
            period: Duration::from_secs_f64(settings.period_ms() * 1e-3),
            exposure,
            frames_per_trigger: settings.frames_per_trigger,
            mode,
            settings,
            stopping: Vec::new(),
        });
        self.shared.add(&self.shared.counters.acquisitions, 1);
        Ok(())
    }

    /// Ends the acquisition: the detector is idle and can be armed again.
    fn finish(&mut self) {
        if let Some(acq) = self.acq.take() {
            for ack in acq.stopping {
                let _ = ack.send(());
            }
        }
        self.shared.settings().busy = false;
    }

    fn drop_client(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Sends the frames that are due; false on shutdown.
    fn send_due(&mut self) -> bool {
        let Some(acq) = self.acq.as_ref() else {
            return true;
        };
        if !acq.stopping.is_empty() {
            self.finish();
            return true;
        }
        if !self.sendable(acq) {
            if acq.emitted_all() {
                self.finish();
            }
            return true;
        }
        self.assemble();
        let ok = if self.batch.frames() > 0 {
            self.write_batch()
        } else {
            true
        };
        if let Some(acq) = self.acq.as_ref()
            && (!acq.stopping.is_empty() || acq.emitted_all())
        {
            self.finish();
        }
        ok
    }

    /// Fills the batch with due frames, accounting for dropped and discarded ones.
    fn assemble(&mut self) {
        self.batch.clear();
        let fast = self.fast();
        let now = Instant::now();
        let shared = self.shared.clone();
        let c = &shared.counters;
        while let Some(acq) = self.acq.as_ref() {
            if !self.sendable(acq)
                || (!fast && acq.next_due > now)
                || self.batch.frames() >= BATCH_FRAMES
                || self.batch.total >= BATCH_BYTES
            {
                break;
            }
            let i = acq.next;
            if self.drop_frames.contains(&i) {
                shared.add(&c.frames_dropped, 1);
            } else if self.client.is_none() {
                shared.add(&c.frames_discarded, 1);
            } else {
                self.add_frame(i);
            }
            if let Some(acq) = self.acq.as_mut() {
                acq.next += 1;
                acq.next_due += acq.period;
            }
        }
    }

    /// Appends frame `i` (header patched for sequence number and faults).
    fn add_frame(&mut self, i: u64) {
        let b = &mut self.batch;
        let h0 = b.hdr.len();
        let payload_len;
        match &self.cache {
            Some(cache) => {
                let base = (i % cache.count as u64) as usize * cache.stride();
                b.hdr.extend_from_slice(&wire::mpx_prefix(cache.stride()));
                b.hdr
                    .extend_from_slice(&cache.bytes[base..base + cache.mq1_len]);
                wire::patch_sequence(&mut b.hdr[h0 + wire::MPX_PREFIX_LEN..], i);
                payload_len = cache.payload_len;
                b.push(Src::Hdr, h0, wire::MPX_PREFIX_LEN + cache.mq1_len);
                b.push(Src::Cache, base + cache.mq1_len, payload_len);
            }
            None => {
                let Source::Synthetic {
                    specimen,
                    nav,
                    sig,
                    seed,
                } = &self.source
                else {
                    return;
                };
                let Some(acq) = self.acq.as_ref() else { return };
                let Some(format) = acq.settings.format() else {
                    return;
                };
                let mq1_len = Geometry::for_sig(*sig).data_offset;
                payload_len = wire::payload_len(*sig, format, acq.settings.counter_depth);
                self.counts.resize(sig.len(), 0);
                let s0 = b.scratch.len();
                b.scratch.resize(s0 + mq1_len + payload_len, 0);
                frames::render_synthetic(
                    specimen,
                    *nav,
                    *sig,
                    *seed,
                    i,
                    format,
                    &acq.settings,
                    &mut self.counts,
                    &mut b.scratch[s0..],
                );
                b.hdr
                    .extend_from_slice(&wire::mpx_prefix(mq1_len + payload_len));
                b.hdr.extend_from_slice(&b.scratch[s0..s0 + mq1_len]);
                b.push(Src::Hdr, h0, wire::MPX_PREFIX_LEN + mq1_len);
                b.push(Src::Scratch, s0 + mq1_len, payload_len);
            }
        }
        let header_len = b.hdr.len() - h0;
        if self.faults.wrong_size_at == Some(i) {
            // Half the payload, framed consistently: the stream stays parseable, the frame
            // has the wrong size.
            let short = payload_len / 2;
            wire::write_mpx_length(&mut b.hdr[h0..], header_len - wire::MPX_PREFIX_LEN + short);
            if let Some(last) = b.parts.last_mut() {
                last.len = short;
                b.total -= payload_len - short;
            }
        }
        if self.faults.corrupt_prefix_at == Some(i) {
            b.hdr[h0..h0 + 4].copy_from_slice(b"XPM,");
        }
        b.end_frame();
    }

    /// Writes the batch, serving events while the socket is full; false on shutdown.
    fn write_batch(&mut self) -> bool {
        let mut stop_deadline: Option<Instant> = None;
        while self.batch.written < self.batch.limit {
            let Some(client) = self.client.as_mut() else {
                break;
            };
            let cache: &[u8] = self.cache.as_ref().map_or(&[], |c| &c.bytes);
            let slices = self.batch.slices(cache);
            let res = client.write_vectored(&slices);
            drop(slices);
            match res {
                Ok(0) => self.drop_client(),
                Ok(n) => {
                    self.batch.written += n;
                    self.shared.add(&self.shared.counters.bytes_sent, n as u64);
                    let done = self.batch.frame_ends[self.batch.counted..]
                        .iter()
                        .take_while(|&&e| e <= self.batch.written)
                        .count();
                    self.batch.counted += done;
                    self.shared
                        .add(&self.shared.counters.frames_sent, done as u64);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) =>
                {
                    while let Ok(ev) = self.events.try_recv() {
                        if !self.handle(ev) {
                            return false;
                        }
                    }
                    if self.shared.shutdown.load(Ordering::Acquire) {
                        return false;
                    }
                    if self.acq.as_ref().is_some_and(|a| !a.stopping.is_empty()) {
                        self.batch.cut_at_frame_boundary();
                        let deadline =
                            *stop_deadline.get_or_insert_with(|| Instant::now() + STOP_DRAIN);
                        if Instant::now() > deadline {
                            self.drop_client();
                        }
                    }
                }
                Err(_) => self.drop_client(),
            }
        }
        if self.client.is_none() {
            // The client went away: the frames it did not get are lost to it.
            let lost = (self.batch.frames() - self.batch.counted) as u64;
            self.shared
                .add(&self.shared.counters.frames_discarded, lost);
        }
        true
    }
}

/// Writes all of `buf`, retrying on write timeouts until `deadline` from now.
fn write_all_deadline(s: &mut TcpStream, mut buf: &[u8], limit: Duration) -> std::io::Result<()> {
    let deadline = Instant::now() + limit;
    while !buf.is_empty() {
        match s.write(buf) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                if Instant::now() > deadline {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
