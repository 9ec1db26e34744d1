//! The detector engine: one tokio task that owns the ZeroMQ PUSH socket and the series being
//! acquired. The REST API (software commands) and the trigger-line forwarder (hardware
//! edges) reach it through one event channel, so arm, triggers and stops are handled in the
//! order they happened.
//!
//! Sending follows libzmq PUSH semantics (§2.1): with no PULL peer connected a message waits
//! (here: polled every [`PEER_POLL`]) until one connects or the series is stopped; once queued
//! a message is never dropped. A peer that stops reading blocks the engine (TCP back-pressure),
//! as it blocks a DCU.

use super::source::Frames;
use super::wire::{self, ImageMeta};
use super::{DectrisFaults, Pacing};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;
use zeromq::{PushSocket, SocketSend, ZmqError, ZmqMessage};

/// How often a message waiting for a PULL peer looks again.
const PEER_POLL: Duration = Duration::from_millis(5);
/// How long the end-of-series message after a stop waits for a peer.
const END_PATIENCE: Duration = Duration::from_secs(1);
/// Most frames sent before the engine looks at its events again.
const BURST: usize = 64;

/// Trigger modes (§2.3 "Trigger modes and frame count").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TriggerMode {
    /// Software trigger starts `nimages` images.
    Ints,
    /// One image per software trigger, exposure from the trigger command.
    Inte,
    /// One external edge starts `nimages` images.
    Exts,
    /// One image per external edge.
    Exte,
}

impl TriggerMode {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "ints" => Some(Self::Ints),
            "inte" => Some(Self::Inte),
            "exts" => Some(Self::Exts),
            "exte" => Some(Self::Exte),
            _ => None,
        }
    }
    pub(crate) fn external(self) -> bool {
        matches!(self, Self::Exts | Self::Exte)
    }
    /// Images released by one trigger.
    pub(crate) fn per_trigger(self, nimages: u64) -> u64 {
        match self {
            Self::Ints | Self::Exts => nimages,
            Self::Inte | Self::Exte => 1,
        }
    }
}

/// Everything a series needs, fixed at arm time.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) series: u64,
    pub(crate) mode: TriggerMode,
    pub(crate) nimages: u64,
    pub(crate) ntrigger: u64,
    /// s
    pub(crate) count_time: f64,
    /// s
    pub(crate) frame_time: f64,
    /// The global header message's parts.
    pub(crate) header: Vec<Bytes>,
    pub(crate) frames: Arc<Frames>,
    pub(crate) stream_enabled: bool,
    pub(crate) image_appendix: String,
}

impl Plan {
    pub(crate) fn total(&self) -> u64 {
        self.mode
            .per_trigger(self.nimages)
            .saturating_mul(self.ntrigger)
    }
}

/// How a series is stopped from outside (§2.3 commands).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StopKind {
    Disarm,
    Abort,
    Cancel,
}

/// Messages to the engine.
#[derive(Debug)]
pub(crate) enum Event {
    Arm(Box<Plan>),
    /// A software trigger (already checked by the REST layer); `inte` exposure, s.
    Trigger {
        exposure_s: Option<f64>,
    },
    /// A rising edge of the trigger input.
    Edge(Instant),
    Stop(StopKind),
    Shutdown,
}

/// Counters behind [`super::DectrisSimStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) series: AtomicU64,
    pub(crate) frames_sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) messages_sent: AtomicU64,
    pub(crate) triggers_seen: AtomicU64,
    pub(crate) triggers_ignored: AtomicU64,
    pub(crate) frames_dropped: AtomicU64,
    pub(crate) blobs_corrupted: AtomicU64,
    pub(crate) series_ended_early: AtomicU64,
    pub(crate) frames_discarded: AtomicU64,
    pub(crate) series_completed: AtomicU64,
}

/// Seconds as a duration; a negative, NaN or huge value (a recorded configuration can carry
/// one) becomes zero or one hour instead of panicking.
fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.clamp(0.0, 3600.0)).unwrap_or(Duration::ZERO)
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Detector state as `status/state` reports it (§2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DetState {
    Idle,
    /// Armed, waiting for the first trigger.
    Ready,
    Acquire,
}

impl DetState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Ready => "ready",
            Self::Acquire => "acquire",
        }
    }
}

/// The armed series as the REST layer sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Armed {
    pub(crate) series: u64,
    pub(crate) mode: TriggerMode,
    pub(crate) triggers_left: u64,
}

/// The state the REST layer and the engine share.
#[derive(Debug)]
pub(crate) struct Status {
    pub(crate) state: DetState,
    pub(crate) armed: Option<Armed>,
}

/// Shared between the engine, the REST API and the [`super::DectrisSim`] handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) status: Mutex<Status>,
    pub(crate) counters: Counters,
    /// A stop command is on its way: a message waiting for a peer gives up.
    pub(crate) stop_requested: AtomicBool,
    pub(crate) shutdown: AtomicBool,
    /// The simulator's clock origin (dconfig times count from here).
    pub(crate) t0: Instant,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Self {
            status: Mutex::new(Status {
                state: DetState::Idle,
                armed: None,
            }),
            counters: Counters::default(),
            stop_requested: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            t0: Instant::now(),
        }
    }
    pub(crate) fn status(&self) -> MutexGuard<'_, Status> {
        // A panicked holder leaves plain data behind; keep serving.
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Frames released by one trigger.
#[derive(Debug)]
struct Release {
    at: Instant,
    exposure: Duration,
    left: u64,
    first: bool,
}

/// One armed series.
struct Acq {
    plan: Box<Plan>,
    total: u64,
    /// Next frame index to emit (sent, dropped or discarded).
    next: u64,
    triggers_used: u64,
    pending: VecDeque<Release>,
    /// When the previous frame left (frame-time pacing).
    last_due: Option<Instant>,
    /// The stall fault holds the rest of the series.
    stalled: bool,
}

/// The engine task's state.
pub(crate) struct Engine {
    pub(crate) shared: Arc<Shared>,
    pub(crate) events: UnboundedReceiver<Event>,
    pub(crate) push: PushSocket,
    pub(crate) pacing: Pacing,
    pub(crate) faults: DectrisFaults,
    acq: Option<Acq>,
}

enum Sent {
    Ok,
    /// Nobody took it (no peer until stopped, or the peer failed).
    Lost,
}

impl Engine {
    pub(crate) fn new(
        shared: Arc<Shared>,
        events: UnboundedReceiver<Event>,
        push: PushSocket,
        pacing: Pacing,
        faults: DectrisFaults,
    ) -> Self {
        Self {
            shared,
            events,
            push,
            pacing,
            faults,
            acq: None,
        }
    }

    /// Runs until shutdown.
    pub(crate) async fn run(mut self) {
        loop {
            let due = self.next_due();
            tokio::select! {
                biased;
                ev = self.events.recv() => match ev {
                    None | Some(Event::Shutdown) => break,
                    Some(ev) => self.handle(ev).await,
                },
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now).into()), if due.is_some() => {
                    self.send_due().await;
                }
            }
            if self.shared.shutdown.load(Ordering::Acquire) {
                break;
            }
        }
        use zeromq::Socket;
        let _ = tokio::time::timeout(Duration::from_millis(200), self.push.close()).await;
    }

    /// When the next frame may leave; `None` when none is released (or the series stalls).
    fn next_due(&self) -> Option<Instant> {
        let a = self.acq.as_ref()?;
        if a.stalled || a.next >= a.total {
            return None;
        }
        let r = a.pending.front()?;
        if self.pacing == Pacing::AsFastAsPossible {
            return Some(Instant::now());
        }
        let period = secs(a.plan.frame_time);
        Some(match (r.first, a.last_due) {
            (true, Some(last)) => (r.at + r.exposure).max(last + period),
            (true, None) => r.at + r.exposure,
            (false, Some(last)) => last + period,
            (false, None) => r.at + r.exposure,
        })
    }

    async fn handle(&mut self, ev: Event) {
        match ev {
            Event::Shutdown => {}
            Event::Arm(plan) => {
                if self.acq.is_some() {
                    // The REST layer refuses arm while armed; a stale series is ended.
                    self.end_series(false).await;
                }
                add(&self.shared.counters.series, 1);
                let total = plan.total();
                let header = plan.header.clone();
                let enabled = plan.stream_enabled;
                self.acq = Some(Acq {
                    plan,
                    total,
                    next: 0,
                    triggers_used: 0,
                    pending: VecDeque::new(),
                    last_due: None,
                    stalled: false,
                });
                if enabled {
                    let _ = self.deliver(header, None).await;
                }
            }
            Event::Trigger { exposure_s } => {
                add(&self.shared.counters.triggers_seen, 1);
                let now = Instant::now();
                self.release(now, exposure_s, false);
            }
            Event::Edge(at) => {
                add(&self.shared.counters.triggers_seen, 1);
                self.release(at, None, true);
            }
            Event::Stop(kind) => {
                tracing::debug!("dectris-sim: {kind:?}");
                self.shared.stop_requested.store(false, Ordering::Release);
                if self.acq.is_some() {
                    self.end_series(false).await;
                }
            }
        }
    }

    /// Releases the frames of one trigger, or counts it as ignored (not armed, wrong kind of
    /// trigger for the mode, or beyond `ntrigger`).
    fn release(&mut self, at: Instant, exposure_s: Option<f64>, external: bool) {
        let Some(a) = self.acq.as_mut() else {
            add(&self.shared.counters.triggers_ignored, 1);
            return;
        };
        if a.plan.mode.external() != external || a.triggers_used >= a.plan.ntrigger {
            add(&self.shared.counters.triggers_ignored, 1);
            return;
        }
        a.triggers_used += 1;
        let exposure = exposure_s
            .filter(|e| e.is_finite() && *e > 0.0)
            .unwrap_or(a.plan.count_time);
        a.pending.push_back(Release {
            at,
            exposure: secs(exposure),
            left: a.plan.mode.per_trigger(a.plan.nimages),
            first: true,
        });
        let mut st = self.shared.status();
        if st.armed.is_some_and(|x| x.series == a.plan.series) {
            st.state = DetState::Acquire;
        }
    }

    /// Sends the frames that are due (at most [`BURST`]).
    async fn send_due(&mut self) {
        for _ in 0..BURST {
            let Some(due) = self.next_due() else { return };
            let now = Instant::now();
            if due > now {
                return;
            }
            let Some(a) = self.acq.as_mut() else { return };
            let Some(r) = a.pending.front_mut() else {
                return;
            };
            let exposure = r.exposure;
            r.first = false;
            r.left -= 1;
            if r.left == 0 {
                a.pending.pop_front();
            }
            a.last_due = Some(due);
            let index = a.next;
            a.next += 1;
            let c = &self.shared.counters;
            if self.faults.stall_after.is_some_and(|s| a.next > s) {
                // This frame and every later one stay in the detector.
                a.next -= 1;
                a.stalled = true;
                return;
            }
            if self.faults.drop_frames.contains(&index) {
                add(&c.frames_dropped, 1);
            } else if !a.plan.stream_enabled {
                add(&c.frames_discarded, 1);
            } else {
                let frames = &a.plan.frames;
                let f = &frames.frames[(index % frames.frames.len() as u64) as usize];
                let mut blob = f.blob.clone();
                if self.faults.corrupt_blob_at == Some(index) {
                    // Half the blob is sent; `size` and `hash` still describe the whole.
                    blob = blob.slice(..blob.len() / 2);
                    add(&c.blobs_corrupted, 1);
                }
                let stop_ns = due.saturating_duration_since(self.shared.t0).as_nanos() as u64;
                let real_ns = exposure.as_nanos() as u64;
                let meta = ImageMeta {
                    series: a.plan.series,
                    frame: index,
                    hash: &f.hash,
                    shape: frames.shape,
                    dtype: frames.dtype,
                    encoding: f.encoding.as_deref().unwrap_or(&frames.encoding),
                    size: f.blob.len(),
                    start_ns: stop_ns.saturating_sub(real_ns),
                    stop_ns,
                    real_ns,
                };
                let parts = wire::image(&meta, blob, &a.plan.image_appendix);
                match self.deliver(parts, None).await {
                    Sent::Ok => add(&self.shared.counters.frames_sent, 1),
                    Sent::Lost => add(&self.shared.counters.frames_discarded, 1),
                }
            }
            let Some(a) = self.acq.as_ref() else { return };
            if self.faults.end_early_after.is_some_and(|n| a.next >= n) && a.next < a.total {
                add(&self.shared.counters.series_ended_early, 1);
                self.end_series(false).await;
                return;
            }
            if a.next >= a.total {
                self.end_series(true).await;
                return;
            }
        }
    }

    /// Sends dseries_end and goes idle.
    async fn end_series(&mut self, completed: bool) {
        let Some(a) = self.acq.take() else { return };
        if completed {
            add(&self.shared.counters.series_completed, 1);
        }
        {
            let mut st = self.shared.status();
            if st.armed.is_some_and(|x| x.series == a.plan.series) {
                st.armed = None;
                st.state = DetState::Idle;
            }
        }
        if a.plan.stream_enabled {
            let patience = if completed { None } else { Some(END_PATIENCE) };
            let _ = self
                .deliver(vec![wire::series_end(a.plan.series)], patience)
                .await;
        }
    }

    /// Sends one multipart message, waiting for a peer while there is none (until a stop is
    /// requested, shutdown, or `patience` runs out).
    async fn deliver(&mut self, parts: Vec<Bytes>, patience: Option<Duration>) -> Sent {
        let bytes: usize = parts.iter().map(Bytes::len).sum();
        let Ok(mut msg) = ZmqMessage::try_from(parts) else {
            return Sent::Lost;
        };
        let deadline = patience.map(|p| Instant::now() + p);
        loop {
            match self.push.send(msg).await {
                Ok(()) => {
                    add(&self.shared.counters.messages_sent, 1);
                    add(&self.shared.counters.bytes_sent, bytes as u64);
                    return Sent::Ok;
                }
                Err(ZmqError::ReturnToSender { message, .. }) => {
                    msg = message;
                    let given_up = self.shared.stop_requested.load(Ordering::Acquire)
                        || self.shared.shutdown.load(Ordering::Acquire)
                        || deadline.is_some_and(|d| Instant::now() >= d);
                    if given_up {
                        return Sent::Lost;
                    }
                    tokio::time::sleep(PEER_POLL).await;
                }
                Err(e) => {
                    tracing::warn!("dectris-sim: message of {bytes} bytes lost: {e}");
                    return Sent::Lost;
                }
            }
        }
    }
}
