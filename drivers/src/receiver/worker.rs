//! The connection thread: [`Connection`] (its handle), [`ReceiverEvent`] (what it
//! reports), [`Sink`] (what a [`Protocol`] writes frames into) and the acquisition loop.

use super::accounting::{AcquisitionSummary, Gap, Tally};
use super::protocol::{Begin, CoreError, EndReasons, Flow, Message, Protocol};
use super::stack::{OpenStack, StackLayout, StackPool};
use super::{END_POLL, END_QUIET, MAX_FRAMES_PER_ACQUISITION, POLL, Settings, Wait};
use crossbeam_channel::{Receiver, SendTimeoutError, Sender, bounded, unbounded};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;
use stemflow_core::pool::{PoolError, Pooled};
use stemflow_core::validity::FrameStatus;
use stemflow_core::{DType, SigShape};

/// The decoder a protocol's stacks carry.
pub type DecoderOf<P> = <<P as Protocol>::Layout as StackLayout>::Decoder;
/// The stacks a protocol's receiver sends.
pub type StackOf<P> = <<P as Protocol>::Layout as StackLayout>::Stack;
/// The summary of a protocol's acquisitions.
pub type SummaryOf<P> = AcquisitionSummary<<P as Protocol>::End, <P as Protocol>::Series>;
type EntryOf<P> = <<P as Protocol>::Layout as StackLayout>::Entry;

/// What a receiver reports, in order: per acquisition `Armed`, `FirstFrame` (unless no
/// frame came), then `Finished` or `Error`. The channel disconnects when the connection
/// thread ends.
pub enum ReceiverEvent<P: Protocol> {
    /// An acquisition header arrived (and passed the protocol's filter): the detector is
    /// armed — this is how "armed" is confirmed. `stacks` yields the acquisition's frames
    /// in order and is closed after its last stack.
    Armed {
        /// Acquisition number on this connection, from 0.
        acquisition: u64,
        /// The acquisition header.
        header: P::Header,
        /// The acquisition's stacks, in frame order.
        stacks: Receiver<StackOf<P>>,
    },
    /// First frame seen: shape, pixel type and encoding known.
    FirstFrame {
        /// Acquisition number.
        acquisition: u64,
        /// Decoded frame shape, pixels.
        sig_shape: SigShape,
        /// Decoded pixel type.
        dtype: DType,
        /// The decoder every stack of this acquisition carries.
        decoder: Arc<DecoderOf<P>>,
    },
    /// Acquisition over (all expected frames, or ended early: end marker, deadline, new
    /// header, disarm, stop, disconnect). Sent after its stacks channel has been closed (all
    /// stacks sent).
    Finished {
        /// Acquisition number.
        acquisition: u64,
        /// Counts, validity and reason.
        summary: SummaryOf<P>,
    },
    /// A fatal error: the connection is closed; the summary of the acquisition in
    /// progress, if any (its stacks channel is closed first; stacks sent before the error
    /// stay valid).
    Error {
        /// What went wrong.
        error: P::Error,
        /// The acquisition in progress (`end` = [`EndReasons::FAILED`]).
        summary: Option<SummaryOf<P>>,
    },
}

impl<P: Protocol> fmt::Debug for ReceiverEvent<P>
where
    DecoderOf<P>: fmt::Debug,
    P::Error: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Armed {
                acquisition,
                header,
                stacks,
            } => f
                .debug_struct("Armed")
                .field("acquisition", acquisition)
                .field("header", header)
                .field("stacks", stacks)
                .finish(),
            Self::FirstFrame {
                acquisition,
                sig_shape,
                dtype,
                decoder,
            } => f
                .debug_struct("FirstFrame")
                .field("acquisition", acquisition)
                .field("sig_shape", sig_shape)
                .field("dtype", dtype)
                .field("decoder", decoder)
                .finish(),
            Self::Finished {
                acquisition,
                summary,
            } => f
                .debug_struct("Finished")
                .field("acquisition", acquisition)
                .field("summary", summary)
                .finish(),
            Self::Error { error, summary } => f
                .debug_struct("Error")
                .field("error", error)
                .field("summary", summary)
                .finish(),
        }
    }
}

/// A running receiver: one connection served by one thread running the core's loop over a
/// [`Protocol`]. Detector receivers (`MerlinReceiver`, `DectrisReceiver`) wrap it.
/// Dropping it stops and joins.
pub struct Connection<P: Protocol> {
    device: String,
    events: Receiver<ReceiverEvent<P>>,
    stop: Arc<AtomicBool>,
    end: Arc<AtomicBool>,
    /// Called after the stop flag is raised: wakes waits the socket does not see (DECTRIS'
    /// series filter).
    on_stop: Option<Box<dyn Fn() + Send + Sync>>,
    /// The frame format the next acquisitions must have (see [`expect_format`](Self::expect_format)).
    expected: ExpectedFormat,
    thread: Option<JoinHandle<()>>,
}

/// The frame shape and pixel type the detector was configured for, shared between the
/// detector driver (which sets it when it arms) and the connection thread (which checks
/// each acquisition's first frame against it). `None`: the first frame sets the format.
type ExpectedFormat = Arc<std::sync::Mutex<Option<(SigShape, DType)>>>;

impl<P: Protocol> fmt::Debug for Connection<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("device", &self.device)
            .field("running", &self.is_running())
            .finish_non_exhaustive()
    }
}

impl<P: Protocol> Connection<P> {
    /// Starts the connection thread named `thread_name` serving `protocol`, whose socket
    /// watches `stop` (the flag [`stop`](Self::stop) raises).
    ///
    /// # Errors
    /// The OS error when the thread cannot be spawned.
    pub fn spawn(
        settings: Settings,
        protocol: P,
        stop: Arc<AtomicBool>,
        thread_name: &str,
    ) -> std::io::Result<Self> {
        let device = settings.device.clone();
        let (tx, events) = unbounded();
        let end = Arc::new(AtomicBool::new(false));
        let expected = ExpectedFormat::default();
        let worker = Worker {
            core: WorkerCore {
                settings,
                events: tx,
                end: Arc::clone(&end),
                stop: Arc::clone(&stop),
                expected: Arc::clone(&expected),
                pool: None,
            },
            protocol,
            acquisitions: 0,
        };
        let thread = std::thread::Builder::new()
            .name(thread_name.into())
            .spawn(move || worker.run())?;
        Ok(Self {
            device,
            events,
            stop,
            end,
            on_stop: None,
            expected,
            thread: Some(thread),
        })
    }

    /// Sets the frame shape and pixel type that the acquisitions from now on must have
    /// (an active detector's configured counter depth and region of interest), or `None`
    /// to take them from each acquisition's first frame (passive mode). A first frame that
    /// differs ends its acquisition with [`CoreError::Format`], before any frame is stored.
    pub fn expect_format(&self, format: Option<(SigShape, DType)>) {
        *self.expected.lock().unwrap_or_else(|e| e.into_inner()) = format;
    }

    /// Calls `wake` after every [`stop`](Self::stop) (and on drop): for waits of the
    /// protocol that do not watch the stop flag's socket.
    #[must_use]
    pub fn on_stop(mut self, wake: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_stop = Some(Box::new(wake));
        self
    }

    /// The device name.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The event channel (see [`ReceiverEvent`] for the order of events). Unbounded: a few
    /// events per acquisition; frames travel in the stacks channels.
    pub fn events(&self) -> &Receiver<ReceiverEvent<P>> {
        &self.events
    }

    /// Whether the connection thread still runs (it ends after [`stop`](Self::stop), a
    /// disconnect or a fatal error, each reported on [`events`](Self::events) first).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Ends the current acquisition (reported with [`EndReasons::STOPPED`]) and the
    /// connection, within about 10 ms of polling plus the time to send what was received.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(wake) = &self.on_stop {
            wake();
        }
    }

    /// Asks to end the acquisition in progress once the stream has been quiet for
    /// [`END_QUIET`] (counted from this call and from the last byte), reported with
    /// [`EndReasons::DISARMED`]; the connection stays open. A request made while no
    /// acquisition runs lapses when the next one starts. Without effect for protocols
    /// without [`EndReasons::DISARMED`].
    pub fn end_acquisition(&self) {
        self.end.store(true, Ordering::SeqCst);
    }

    /// Waits for the connection thread to end (after [`stop`](Self::stop), a disconnect or
    /// a fatal error; without them it runs as long as the connection lasts).
    pub fn join(mut self) {
        self.join_thread();
    }

    fn join_thread(&mut self) {
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!(device = %self.device, "receiver thread panicked");
        }
    }
}

impl<P: Protocol> Drop for Connection<P> {
    fn drop(&mut self) {
        self.stop();
        self.join_thread();
    }
}

/// State of the acquisition under way.
struct Acquisition<P: Protocol> {
    id: u64,
    series: P::Series,
    /// `None` once the consumer dropped its receiver (frames are then read and discarded).
    stacks: Option<Sender<StackOf<P>>>,
    /// Set by the first frame ([`Sink::set_format`]).
    decoder: Option<Arc<DecoderOf<P>>>,
    stack: Option<OpenStack<EntryOf<P>>>,
    /// Bytes reserved in the open stack for the payload being read: (offset, len).
    reserved: Option<(usize, usize)>,
    tally: Tally,
}

/// What a [`Protocol`] writes one acquisition's frames into, in [`Protocol::frames`]: the
/// frame accounting and the open stack of the pool's buffers. Payloads are read straight
/// into [`reserve`](Self::reserve)d stack bytes: one copy, no allocation per frame.
pub struct Sink<'a, P: Protocol> {
    worker: &'a mut WorkerCore<P>,
    acq: &'a mut Acquisition<P>,
}

impl<P: Protocol> Sink<'_, P> {
    /// Acquisition number on this connection, from 0.
    pub fn acquisition(&self) -> u64 {
        self.acq.id
    }

    /// Frames expected (0: continuous or unknown).
    pub fn expected(&self) -> u64 {
        self.acq.tally.expected
    }

    /// Index of the frame expected next (0-based).
    pub fn next_frame(&self) -> u64 {
        self.acq.tally.next
    }

    /// Whether [`set_format`](Self::set_format) was called in this acquisition.
    pub fn has_format(&self) -> bool {
        self.acq.decoder.is_some()
    }

    /// Largest payload one write may have, bytes (0 before the first format).
    pub fn slot(&self) -> usize {
        self.worker.pool.as_ref().map_or(0, |p| p.slot)
    }

    /// Fixes the acquisition's format from its first frame: sizes the pool for writes of
    /// at most `slot` bytes within the memory budget (once per connection; again only when
    /// a larger slot is needed) and reports [`ReceiverEvent::FirstFrame`].
    ///
    /// # Errors
    /// [`CoreError::Format`] when the shape or type differs from the one the detector was
    /// configured for ([`Connection::expect_format`]); [`CoreError::Budget`] when `slot`
    /// (from the frame header) cannot fit the memory budget. Both are protocol errors for
    /// this acquisition, checked before anything is allocated.
    pub fn set_format(
        &mut self,
        decoder: Arc<DecoderOf<P>>,
        sig_shape: SigShape,
        dtype: DType,
        slot: usize,
    ) -> Result<(), CoreError> {
        let w = &mut *self.worker;
        let expected = *w.expected.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((expected_sig, expected_dtype)) = expected
            && (expected_sig, expected_dtype) != (sig_shape, dtype)
        {
            return Err(CoreError::Format {
                expected_sig,
                expected_dtype,
                observed_sig: sig_shape,
                observed_dtype: dtype,
            });
        }
        if w.pool.as_ref().is_none_or(|p| p.slot < slot) {
            // The old pool goes first, so that old and new are never held together.
            w.pool = None;
            w.pool = Some(StackPool::new(
                &w.settings.device,
                w.settings.pool_stacks,
                w.settings.frames_per_stack,
                slot,
                w.settings.memory_budget,
            )?);
        }
        self.acq.decoder = Some(Arc::clone(&decoder));
        w.emit(ReceiverEvent::FirstFrame {
            acquisition: self.acq.id,
            sig_shape,
            dtype,
            decoder,
        });
        Ok(())
    }

    /// Accepts frames `first..first + count` (0-based) as the next ones. A forward gap is
    /// returned (its frames stay lost; the next write starts a new stack); repeated,
    /// backward and past-the-end indices are errors.
    ///
    /// # Errors
    /// [`CoreError::Order`] with the index expected and the one observed.
    pub fn accept(&mut self, first: u64, count: u64) -> Result<Option<Gap>, CoreError> {
        let expected = self.acq.tally.next;
        let gap = self
            .acq
            .tally
            .accept(first, count)
            .map_err(|kind| CoreError::Order {
                expected,
                observed: first,
                kind,
            })?;
        if let Some(g) = gap {
            tracing::warn!(
                device = %self.worker.settings.device, acquisition = self.acq.id,
                from = g.from, to = g.to, "frames lost (gap in frame numbers)"
            );
        }
        Ok(gap)
    }

    /// Bytes for a payload of `len` bytes starting at frame `first`, in the open stack
    /// (closing it first when it holds other than the frames just before `first`, or lacks
    /// room), or in a new one from the pool, waiting at most the frame timeout for a free
    /// buffer. `None`: stopped while waiting. Read the payload into them, then
    /// [`commit`](Self::commit) (or [`damaged`](Self::damaged): a new reservation reuses the
    /// bytes).
    ///
    /// # Errors
    /// [`CoreError::Pool`] when no buffer comes back (or no consumer takes a stack) in
    /// time, [`CoreError::Slot`] for a payload larger than a stack buffer,
    /// [`CoreError::Misuse`] before [`set_format`](Self::set_format).
    pub fn reserve(&mut self, first: u64, len: usize) -> Result<Option<&mut [u8]>, CoreError> {
        self.acq.reserved = None;
        let (Some(writes), Some(_)) = (
            self.worker.pool.as_ref().map(|p| p.writes.max(1)),
            self.acq.decoder.as_ref(),
        ) else {
            return Err(CoreError::Misuse("a payload before the format was set"));
        };
        if let Some(open) = self.acq.stack.as_mut()
            && open.entries.is_empty()
        {
            // Nothing written yet (the reservation before was not committed): start here.
            open.first_frame = first;
            open.next_frame = first;
        }
        if self.acq.stack.as_ref().is_some_and(|s| {
            s.next_frame != first || !s.fits(len, <P::Layout as StackLayout>::ALIGN)
        }) {
            self.worker.flush(self.acq)?;
        }
        if self.acq.stack.is_none() {
            let Some(buf) = self.worker.take_buffer()? else {
                return Ok(None);
            };
            self.acq.stack = Some(OpenStack::new(first, writes, buf));
        }
        let Some(open) = self.acq.stack.as_mut() else {
            return Ok(None);
        };
        let at = open.next_offset(<P::Layout as StackLayout>::ALIGN);
        if !open.fits(len, <P::Layout as StackLayout>::ALIGN) {
            return Err(CoreError::Slot {
                len,
                slot: open.buf.len(),
            });
        }
        self.acq.reserved = Some((at, len));
        Ok(Some(&mut open.buf[at..at + len]))
    }

    /// The reserved bytes hold frames `first..first + count`, intact: records them in the
    /// open stack, counts them received, and sends the stack when it is full.
    ///
    /// # Errors
    /// [`CoreError::Pool`] when the consumer takes no stack within the frame timeout;
    /// [`CoreError::Misuse`] without a reservation.
    pub fn commit(&mut self, first: u64, count: u32) -> Result<(), CoreError> {
        let (Some((at, len)), Some(open)) = (self.acq.reserved.take(), self.acq.stack.as_mut())
        else {
            return Err(CoreError::Misuse("a commit without a reservation"));
        };
        if open.entries.is_empty() {
            open.first_received = Instant::now();
        }
        open.entries
            .push(<P::Layout as StackLayout>::entry(at, len, first, count));
        open.used = at + len;
        open.next_frame = first + u64::from(count);
        self.acq
            .tally
            .mark(first, u64::from(count), FrameStatus::Received);
        let full = self
            .worker
            .pool
            .as_ref()
            .is_some_and(|p| open.entries.len() >= p.writes.max(1));
        if full {
            self.worker.flush(self.acq)?;
        }
        Ok(())
    }

    /// Frames `first..first + count` arrived unusable: counts them damaged (the next write
    /// starts a new stack: stacks hold consecutive frames).
    pub fn damaged(&mut self, first: u64, count: u64) {
        self.acq.reserved = None;
        self.acq.tally.mark(first, count, FrameStatus::Damaged);
    }
}

/// How an acquisition handed control back.
enum Next<H> {
    /// Wait for the next header.
    Wait,
    /// This header arrived inside the acquisition.
    Header(H),
    /// The connection is over (stop or disconnect).
    Exit,
}

/// A fatal error and the summary of the acquisition it ended.
struct Fatal<P: Protocol> {
    error: P::Error,
    summary: Option<SummaryOf<P>>,
}

/// The connection thread's state but the protocol (so that a [`Sink`] can borrow it while
/// the protocol reads from its socket).
struct WorkerCore<P: Protocol> {
    settings: Settings,
    events: Sender<ReceiverEvent<P>>,
    /// Set by [`Connection::end_acquisition`]; cleared when an acquisition starts.
    end: Arc<AtomicBool>,
    /// Set by [`Connection::stop`] (the protocol's socket watches it too).
    stop: Arc<AtomicBool>,
    /// Set by [`Connection::expect_format`].
    expected: ExpectedFormat,
    pool: Option<StackPool>,
}

impl<P: Protocol> WorkerCore<P> {
    fn emit(&self, event: ReceiverEvent<P>) {
        // Nobody listening is not an error: the receiver is being dropped.
        let _ = self.events.send(event);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// True when the consumer has finished every stack sent to it.
    fn consumer_idle(&self) -> bool {
        self.pool.as_ref().is_some_and(StackPool::consumer_idle)
    }

    /// A free stack buffer, waiting at most the frame timeout; `None` on stop.
    fn take_buffer(&self) -> Result<Option<Pooled<Vec<u8>>>, CoreError> {
        let Some(sp) = &self.pool else {
            return Err(CoreError::Misuse("a payload before the format was set"));
        };
        let started = Instant::now();
        loop {
            if self.stopped() {
                return Ok(None);
            }
            if let Ok(buf) = sp.pool.take(POLL) {
                return Ok(Some(buf));
            }
            if started.elapsed() >= self.settings.frame_timeout {
                return Err(CoreError::Pool {
                    source: PoolError::Exhausted {
                        pool: format!("{} frame stacks", self.settings.device),
                        capacity: sp.pool.capacity(),
                        waited_s: started.elapsed().as_secs_f64(),
                    },
                });
            }
        }
    }

    /// Sends the open stack, if it holds frames, waiting at most the frame timeout for the
    /// consumer (a consumer that dropped its receiver: the frames are discarded and
    /// counted lost).
    fn flush(&self, acq: &mut Acquisition<P>) -> Result<(), CoreError> {
        acq.reserved = None;
        let Some(open) = acq.stack.take() else {
            return Ok(());
        };
        if open.entries.is_empty() {
            return Ok(());
        }
        let (Some(decoder), Some(tx)) = (acq.decoder.as_ref(), acq.stacks.as_ref()) else {
            return Ok(());
        };
        let first = open.first_frame;
        let mut stack = <P::Layout as StackLayout>::stack(open.into_filled(), decoder);
        let started = Instant::now();
        loop {
            match tx.send_timeout(stack, POLL) {
                Ok(()) => return Ok(()),
                Err(SendTimeoutError::Disconnected(_)) => {
                    tracing::warn!(device = %self.settings.device, acquisition = acq.id, "consumer dropped the stacks channel; frames are discarded");
                    acq.stacks = None;
                    acq.tally.discarded_from = Some(first);
                    return Ok(());
                }
                Err(SendTimeoutError::Timeout(s)) => {
                    if self.stopped() {
                        return Ok(());
                    }
                    if started.elapsed() >= self.settings.frame_timeout {
                        return Err(CoreError::Pool {
                            source: PoolError::Exhausted {
                                pool: format!(
                                    "{} stacks channel (consumer stalled)",
                                    self.settings.device
                                ),
                                capacity: self.settings.pool_stacks.max(1),
                                waited_s: started.elapsed().as_secs_f64(),
                            },
                        });
                    }
                    stack = s;
                }
            }
        }
    }
}

/// The connection thread.
struct Worker<P: Protocol> {
    core: WorkerCore<P>,
    protocol: P,
    acquisitions: u64,
}

impl<P: Protocol> Worker<P> {
    fn run(mut self) {
        if let Err(f) = self.serve() {
            if self.protocol.is_quiet_close(&f.error) && f.summary.is_none() {
                tracing::info!(device = %self.core.settings.device, "data connection closed between acquisitions");
            } else {
                tracing::warn!(device = %self.core.settings.device, error = %f.error, "receiver failed");
            }
            self.core.emit(ReceiverEvent::Error {
                error: f.error,
                summary: f.summary,
            });
        }
    }

    fn fatal(error: P::Error) -> Box<Fatal<P>> {
        Box::new(Fatal {
            error,
            summary: None,
        })
    }

    fn serve(&mut self) -> Result<(), Box<Fatal<P>>> {
        self.protocol.prepare().map_err(Self::fatal)?;
        let mut header_deadline = self
            .core
            .settings
            .header_timeout
            .map(|t| Instant::now() + t);
        let mut pending = None;
        loop {
            let header = match pending.take() {
                Some(h) => h,
                None => match self
                    .protocol
                    .wait_header(header_deadline.take())
                    .map_err(Self::fatal)?
                {
                    Some(h) => h,
                    None => return Ok(()),
                },
            };
            header_deadline = None;
            match self.acquisition(header)? {
                Next::Wait => {}
                Next::Header(h) => {
                    if self.protocol.accepts(&h) {
                        pending = Some(h);
                    }
                }
                Next::Exit => return Ok(()),
            }
        }
    }

    /// Receives one acquisition after its header.
    fn acquisition(&mut self, header: P::Header) -> Result<Next<P::Header>, Box<Fatal<P>>> {
        let id = self.acquisitions;
        self.acquisitions += 1;
        let Begin { expected, series } = self.protocol.begin(&header).map_err(Self::fatal)?;
        if expected > MAX_FRAMES_PER_ACQUISITION {
            let e = CoreError::TooManyFrames {
                frames: expected,
                max: MAX_FRAMES_PER_ACQUISITION,
            };
            return Err(Self::fatal(self.protocol.core_error(e)));
        }
        let (tx, rx) = bounded(self.core.settings.pool_stacks.max(1));
        // Before `Armed`: a detector disarms only after its arm saw `Armed`, so an end
        // request from an earlier acquisition lapses here and a new one is never missed.
        self.core.end.store(false, Ordering::SeqCst);
        self.core.emit(ReceiverEvent::Armed {
            acquisition: id,
            header,
            stacks: rx,
        });
        let mut acq = Acquisition {
            id,
            series,
            stacks: Some(tx),
            decoder: None,
            stack: None,
            reserved: None,
            tally: Tally::new(expected),
        };
        let mut end_requested: Option<Instant> = None;
        let first_deadline = Instant::now() + self.core.settings.first_frame_timeout;
        loop {
            if acq.stack.is_some()
                && self.core.consumer_idle()
                && self.protocol.pending() == Some(0)
            {
                // The consumer has finished every stack sent to it and the next message is
                // not here yet: hand the frames over now, not when the stack fills many
                // frame times later at slow rates. While the consumer is busy, stacks fill,
                // which keeps their number (and the work per stack) in bounds at high rates.
                if let Err(e) = self.core.flush(&mut acq) {
                    let e = self.protocol.core_error(e);
                    return Err(self.fail(acq, e));
                }
            }
            let deadline = if acq.decoder.is_some() || acq.tally.started() {
                self.protocol.last_activity() + self.core.settings.frame_timeout
            } else {
                first_deadline
            };
            // With disarm requests, waits in slices so that one is seen while the stream
            // is quiet.
            let until = match P::End::DISARMED {
                Some(_) => deadline.min(Instant::now() + END_POLL),
                None => deadline,
            };
            let msg = match self.protocol.next(until) {
                Ok(Wait::Ready(m)) => m,
                Ok(Wait::TimedOut) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Ok(self.finish(acq, P::End::INACTIVITY_DEADLINE, Next::Wait));
                    }
                    if let Some(disarmed) = P::End::DISARMED {
                        if end_requested.is_none() && self.core.end.load(Ordering::SeqCst) {
                            end_requested = Some(now);
                        }
                        if let Some(at) = end_requested
                            && now >= at.max(self.protocol.last_activity()) + END_QUIET
                        {
                            self.core.end.store(false, Ordering::SeqCst);
                            return Ok(self.finish(acq, disarmed, Next::Wait));
                        }
                    }
                    continue;
                }
                Ok(Wait::Stopped) => return Ok(self.finish(acq, P::End::STOPPED, Next::Exit)),
                Ok(Wait::Closed) => {
                    return Ok(self.finish(acq, P::End::DISCONNECTED, Next::Exit));
                }
                Err(e) => return Err(self.fail(acq, e)),
            };
            match msg {
                Message::Header(h) => {
                    return Ok(self.finish(acq, P::End::NEW_HEADER, Next::Header(h)));
                }
                Message::End(reason) => {
                    let end = if acq.tally.complete() {
                        P::End::ALL_FRAMES
                    } else {
                        reason
                    };
                    return Ok(self.finish(acq, end, Next::Wait));
                }
                Message::Skip => {}
                Message::Frames(frames) => {
                    let mut sink = Sink {
                        worker: &mut self.core,
                        acq: &mut acq,
                    };
                    match self.protocol.frames(frames, &mut sink) {
                        Ok(Flow::Continue) => {
                            if acq.tally.complete() {
                                return Ok(self.finish(acq, P::End::ALL_FRAMES, Next::Wait));
                            }
                        }
                        Ok(Flow::Stopped) => {
                            return Ok(self.finish(acq, P::End::STOPPED, Next::Exit));
                        }
                        Ok(Flow::Closed) => {
                            return Ok(self.finish(acq, P::End::DISCONNECTED, Next::Exit));
                        }
                        Err(e) => return Err(self.fail(acq, e)),
                    }
                }
            }
        }
    }

    /// Sends the open stack, closes the stacks channel, reports `Finished`.
    fn finish(
        &mut self,
        mut acq: Acquisition<P>,
        end: P::End,
        next: Next<P::Header>,
    ) -> Next<P::Header> {
        if let Err(e) = self.core.flush(&mut acq) {
            tracing::warn!(device = %self.core.settings.device, error = %e, "could not deliver the last stack");
        }
        let acquisition = acq.id;
        acq.stacks = None;
        let summary = acq.tally.into_summary(acq.series, end);
        if summary.lost > 0 || summary.damaged > 0 {
            tracing::warn!(
                device = %self.core.settings.device, acquisition, lost = summary.lost,
                damaged = summary.damaged, %end, "acquisition ended with frames missing"
            );
        }
        self.core.emit(ReceiverEvent::Finished {
            acquisition,
            summary,
        });
        next
    }

    /// Sends what was received and builds the fatal error report.
    fn fail(&mut self, mut acq: Acquisition<P>, error: P::Error) -> Box<Fatal<P>> {
        if let Err(e) = self.core.flush(&mut acq) {
            tracing::warn!(device = %self.core.settings.device, error = %e, "could not deliver the last stack");
        }
        acq.stacks = None;
        Box::new(Fatal {
            error,
            summary: Some(acq.tally.into_summary(acq.series, P::End::FAILED)),
        })
    }
}
