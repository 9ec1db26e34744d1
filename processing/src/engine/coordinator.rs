//! The coordinating thread ([`Coordinator`]) and its one loop ([`drive`]), which serves
//! every source: live stacks, file readers and tiles in memory ([`super::source`]).

use super::config::RunConfig;
use super::error::ProcessingError;
use super::job::{Done, Job, Slot, admit};
use super::shared::{Shared, lock, prepare};
use super::source::{Pulled, Source};
use super::summary::{Outcome, RunSummary, Snapshot};
use crate::result::UdfResults;
use crate::sink::TileSink;
use crate::udf::Udf;
use crossbeam_channel::{Receiver, Sender, unbounded};
use std::any::Any;
use std::panic::resume_unwind;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use stemflow_core::csr::{CsrRows, Stack};
use stemflow_core::frame::Tile;

/// How often the coordinator looks at the cancel flag while waiting.
const CANCEL_POLL: Duration = Duration::from_millis(10);
/// How long the coordinator waits for in-flight work before logging that it still waits.
const DRAIN_WARN: Duration = Duration::from_secs(5);

/// Counters a run hands to its summary.
struct Tally {
    /// Acquisition indices of damaged frames, ascending.
    damaged: Vec<u64>,
    /// Frames beyond the scan.
    out_of_range: u64,
    /// Frames outside the ROI.
    outside_roi: u64,
    /// The final results as delivered.
    results: Vec<UdfResults>,
}

/// The coordinating thread's state.
pub(super) struct Coordinator<'c, 'a> {
    shared: &'c Shared,
    udfs: &'c [Box<dyn Udf>],
    /// Where every processed tile goes, on this thread, in completion order.
    sink: Option<&'c mut dyn TileSink>,
    on_snapshot: &'c mut dyn FnMut(&Snapshot),
    /// Tiles (or stacks) that may be at the workers at once.
    capacity: usize,
    /// Jobs spawned and not yet handled.
    in_flight: usize,
    /// Pooled sources (live stacks, file readers): tiles not in use, allocated once per
    /// run and reused.
    free: Vec<Tile>,
    /// Sparse rows not in use, reused from one sparse stack to the next.
    pub(super) free_rows: Vec<CsrRows>,
    done_tx: Sender<Done<'a>>,
    /// Workers' reports; a source that waits for work also waits on this.
    pub(super) done_rx: Receiver<Done<'a>>,
    damaged: Vec<u64>,
    out_of_range: u64,
    outside_roi: u64,
    /// Final results, set by the final snapshot.
    final_results: Option<Vec<UdfResults>>,
    /// Frames processed by finished jobs (for error messages).
    frames_done: u64,
    /// The first error; the run stops.
    failure: Option<ProcessingError>,
    /// The first panic of a worker; resumed at the end.
    panic: Option<Box<dyn Any + Send>>,
    /// When the next snapshot is due (`None`: only the final one).
    next_snapshot: Option<Instant>,
    /// Frames in the last snapshot delivered.
    delivered: Option<u64>,
}

impl<'c, 'a> Coordinator<'c, 'a> {
    fn new(
        shared: &'c Shared,
        udfs: &'c [Box<dyn Udf>],
        sink: Option<&'c mut dyn TileSink>,
        on_snapshot: &'c mut dyn FnMut(&Snapshot),
    ) -> Self {
        // Unbounded is safe: at most `capacity` reports exist at once.
        let (done_tx, done_rx) = unbounded();
        Self {
            shared,
            udfs,
            sink,
            on_snapshot,
            capacity: 2 * (shared.workers.len() - 1).max(1),
            in_flight: 0,
            free: Vec::new(),
            free_rows: Vec::new(),
            done_tx,
            done_rx,
            damaged: Vec::new(),
            out_of_range: 0,
            outside_roi: 0,
            final_results: None,
            frames_done: 0,
            failure: None,
            panic: None,
            next_snapshot: Instant::now().checked_add(shared.cfg.snapshot_interval),
            // Nothing processed is nothing changed: no empty snapshot before the first frame.
            delivered: Some(0),
        }
    }

    /// True once the run must end (an error or a panic).
    fn stopped(&self) -> bool {
        self.failure.is_some() || self.panic.is_some()
    }

    /// A free pooled tile (a fresh empty one if none is left: only after a panic, when the
    /// run is ending anyway).
    pub(super) fn take_tile(&mut self) -> Tile {
        let cfg = &self.shared.cfg;
        self.free
            .pop()
            .unwrap_or_else(|| Tile::zeros(0, 0, cfg.sig_shape, cfg.dtype))
    }

    /// Returns a pooled tile that was not used to the free list.
    pub(super) fn put_back(&mut self, tile: Tile) {
        self.free.push(tile);
    }

    /// Takes a worker's report: counters, errors, the sink, the tile back to the free list.
    fn handle(&mut self, mut done: Done<'a>) {
        self.in_flight -= 1;
        self.frames_done += done.frames;
        let damaged_from = self.damaged.len();
        self.damaged.extend(done.damaged);
        self.out_of_range += done.out_of_range;
        self.outside_roi += done.outside_roi;
        if let Some(p) = done.panic {
            self.panic.get_or_insert(p);
        }
        if let Some(e) = done.error {
            self.failure.get_or_insert(e);
        }
        let Some(slot) = done.slot else {
            return;
        };
        if let Some(e) = done.encode_error.take()
            && let Some(sink) = self.sink.as_ref()
        {
            self.failure.get_or_insert(ProcessingError::Sink {
                sink: sink.name().to_string(),
                frames_processed: self.frames_done,
                source: format!("encoding frames for the sink: {e}").into(),
            });
        }
        if done.to_sink
            && !self.stopped()
            && let Some(sink) = self.sink.as_mut()
            && let Err(source) = match (&done.raw, done.encoded, &done.rows) {
                (_, _, Some(rows)) => sink.write_csr(rows, &self.damaged[damaged_from..]),
                (Some(raw), _, None) => {
                    sink.write_tile_with_raw(slot.tile(), raw, &self.damaged[damaged_from..])
                }
                (None, Some(encoded), None) => sink.write_encoded(slot.tile(), encoded),
                (None, None, None) => sink.write_tile(slot.tile()),
            }
        {
            self.failure = Some(ProcessingError::Sink {
                sink: sink.name().to_string(),
                frames_processed: self.frames_done,
                source,
            });
        }
        if let Slot::Pooled(tile) = slot {
            self.free.push(tile);
        }
        if let Some(rows) = done.rows {
            self.free_rows.push(rows);
        }
    }

    /// Waits up to `wait` for one job to finish and handles it.
    fn wait_one(&mut self, wait: Duration) {
        if let Ok(done) = self.done_rx.recv_timeout(wait) {
            self.handle(done);
        }
    }

    /// Delivers a snapshot when one is due; returns how long to wait for work before the
    /// next look at the clock and the cancel flag.
    fn tick(&mut self) -> Duration {
        let now = Instant::now();
        if let Some(due) = self.next_snapshot
            && now >= due
        {
            self.snapshot(false);
            // A fixed cadence: a late look at the clock does not push every later
            // snapshot back (what a frame waits for its snapshot is at most one interval
            // plus its processing).
            let interval = self.shared.cfg.snapshot_interval;
            self.next_snapshot = due
                .checked_add(interval)
                .filter(|&next| next > now)
                .or_else(|| now.checked_add(interval));
        }
        let until = self
            .next_snapshot
            .map_or(CANCEL_POLL, |t| t.saturating_duration_since(now));
        until.clamp(Duration::from_millis(1), CANCEL_POLL)
    }

    /// Merges all partitions and hands the global results to `on_snapshot` (unless nothing
    /// changed since the last one and this is not the final one).
    fn snapshot(&mut self, final_one: bool) {
        self.shared.merge_all();
        let meta = self.shared.cfg.meta();
        let mut g = lock(&self.shared.global);
        if final_one {
            for (u, r) in self.udfs.iter().zip(&mut g.results) {
                if let Err(detail) = u.postprocess(&meta, &mut r.buffers) {
                    self.failure.get_or_insert(ProcessingError::Udf {
                        udf: u.name().to_string(),
                        detail: format!("postprocess: {detail}"),
                    });
                }
            }
        }
        if final_one || self.delivered != Some(g.frames_processed) {
            let shown = Snapshot {
                frames_processed: g.frames_processed,
                results: self
                    .udfs
                    .iter()
                    .zip(&g.results)
                    .map(|(u, r)| UdfResults {
                        udf: r.udf.clone(),
                        buffers: u.get_results(&meta, &r.buffers),
                        params: r.params.clone(),
                    })
                    .collect(),
            };
            drop(g);
            (self.on_snapshot)(&shown);
            self.delivered = Some(shown.frames_processed);
            if final_one {
                self.final_results = Some(shown.results);
            }
        }
    }

    /// Waits for every in-flight job (bounded: at most `capacity` tiles of work).
    fn drain(&mut self) {
        let mut waited = Duration::ZERO;
        while self.in_flight > 0 {
            match self.done_rx.recv_timeout(DRAIN_WARN) {
                Ok(done) => self.handle(done),
                Err(_) => {
                    waited += DRAIN_WARN;
                    tracing::warn!(
                        in_flight = self.in_flight,
                        waited_s = waited.as_secs_f64(),
                        "processing: still waiting for UDF work to finish"
                    );
                }
            }
        }
    }

    /// Ends the run: resumes a worker's panic, returns the first error, or the counters.
    fn finish(mut self) -> Result<Tally, ProcessingError> {
        if let Some(p) = self.panic.take() {
            resume_unwind(p);
        }
        if let Some(e) = self.failure.take() {
            return Err(e);
        }
        self.snapshot(true);
        if let Some(e) = self.failure.take() {
            return Err(e);
        }
        self.damaged.sort_unstable();
        Ok(Tally {
            damaged: std::mem::take(&mut self.damaged),
            out_of_range: self.out_of_range,
            outside_roi: self.outside_roi,
            results: self.final_results.take().unwrap_or_default(),
        })
    }
}

/// The summary of a run that ended with `outcome`, from its tally (or its error).
fn summarize(
    shared: Shared,
    tally: Result<Tally, ProcessingError>,
    outcome: Outcome,
) -> Result<RunSummary, ProcessingError> {
    let tally = tally?;
    let global = shared
        .global
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    Ok(RunSummary {
        frames_processed: global.frames_processed,
        damaged: tally.damaged,
        out_of_range: tally.out_of_range,
        outside_roi: tally.outside_roi,
        outcome,
        unprocessed_from: None,
        results: tally.results,
    })
}

/// Runs `udfs` on everything `source` yields: the one coordinator loop of every run.
///
/// The calling thread takes work from the source while fewer than `capacity` jobs are at
/// the workers, hands each to a worker, handles the workers' reports (sink, free list,
/// counters), delivers snapshots on their cadence, and looks at `cancel` at least every
/// [`CANCEL_POLL`]. The run ends when the source is exhausted and every job is done, on
/// cancel, or on the first error or panic (after the in-flight jobs finish).
pub(super) fn drive<'a, S: Source<'a>>(
    mut source: S,
    udfs: &[Box<dyn Udf>],
    cfg: &RunConfig,
    sink: Option<&mut dyn TileSink>,
    on_snapshot: &mut dyn FnMut(&Snapshot),
    cancel: &AtomicBool,
) -> Result<RunSummary, ProcessingError> {
    let (pool, mut shared) = prepare(udfs, cfg)?;
    // The one filter a detector sends chunks of: bitshuffle-LZ4 (HDF5 filter 32008).
    const BSLZ4: u32 = 32008;
    shared.raw_filter = sink
        .as_ref()
        .is_some_and(|s| s.takes_raw(BSLZ4))
        .then_some(BSLZ4);
    shared.encoder = sink.as_ref().and_then(|s| s.frame_encoder());
    let sink = sink.map(|s| s as &mut dyn TileSink);
    let mut co = Coordinator::new(&shared, udfs, sink, on_snapshot);
    if S::POOLED {
        co.free = (0..co.capacity)
            .map(|_| Tile::zeros(0, 0, cfg.sig_shape, cfg.dtype))
            .collect();
    }
    let outcome = pool.in_place_scope(|s| {
        let mut exhausted = false;
        let outcome = loop {
            while let Ok(done) = co.done_rx.try_recv() {
                co.handle(done);
            }
            if cancel.load(Ordering::Relaxed) {
                break Outcome::Cancelled;
            }
            if co.stopped() {
                break Outcome::Completed;
            }
            let wait = co.tick();
            if exhausted || co.in_flight >= co.capacity {
                if co.in_flight == 0 {
                    break Outcome::Completed;
                }
                co.wait_one(wait);
                continue;
            }
            let job = match source.pull(&mut co, wait) {
                Pulled::Stack(Stack::Dense(raw)) => Job::Live(raw, co.take_tile()),
                Pulled::Stack(Stack::Csr(st)) => {
                    let rows = co.free_rows.pop().unwrap_or_default();
                    Job::Sparse(Some(st), rows, co.take_tile())
                }
                Pulled::Rows(rows) => Job::Sparse(None, rows, co.take_tile()),
                Pulled::Tile(slot) => match admit(slot, cfg) {
                    Ok((slot, keep, dropped)) => {
                        co.out_of_range += dropped;
                        Job::Offline(slot, keep)
                    }
                    Err(e) => {
                        co.failure = Some(e);
                        continue;
                    }
                },
                Pulled::Done(done) => {
                    co.handle(*done);
                    continue;
                }
                Pulled::Idle => continue,
                Pulled::End => {
                    exhausted = true;
                    continue;
                }
                Pulled::Failed(source) => {
                    co.failure = Some(ProcessingError::Source {
                        frames_processed: co.frames_done,
                        source,
                    });
                    continue;
                }
            };
            co.in_flight += 1;
            let tx = co.done_tx.clone();
            let sh = &shared;
            s.spawn(move |_| {
                let _ = tx.send(job.run(sh));
            });
        };
        co.drain();
        outcome
    });
    let unprocessed_from = source.finish(outcome);
    let tally = co.finish();
    let mut summary = summarize(shared, tally, outcome)?;
    summary.unprocessed_from = unprocessed_from;
    Ok(summary)
}
