//! Where a run's work comes from ([`Source`]): live stacks from a receiver ([`Stacks`]),
//! a file read into the coordinator's reused tiles ([`Reader`]), or tiles made elsewhere
//! ([`Tiles`]). The coordinator's loop ([`super::coordinator::drive`]) is the same for all
//! three; a source only says how the next unit of work is taken.

use super::coordinator::Coordinator;
use super::error::BoxError;
use super::job::{Done, Slot};
use super::summary::Outcome;
use crossbeam_channel::{Receiver, select};
use std::ops::Range;
use std::time::Duration;
use stemflow_core::csr::{CsrRows, Stack};
use stemflow_core::dataset::DataSet;

/// What a source gives the coordinator when asked for work.
pub(super) enum Pulled<'a> {
    /// A live stack, to be decoded by a worker into a pooled tile (dense) or normalised
    /// into pooled rows (sparse).
    Stack(Stack),
    /// Sparse rows read offline, to be processed as they are.
    Rows(CsrRows),
    /// A decoded tile, to be checked against the run ([`super::job::admit`]) and processed.
    Tile(Slot<'a>),
    /// A worker's report that arrived while the source waited for work (boxed: a report
    /// is several times larger than the other variants).
    Done(Box<Done<'a>>),
    /// Nothing within the wait: the coordinator looks at the clock and the cancel flag.
    Idle,
    /// The source has no more work.
    End,
    /// The source failed; the run stops with [`super::ProcessingError::Source`].
    Failed(BoxError),
}

/// A run's supply of work, asked by the coordinating thread whenever a worker could take
/// more (fewer than `2 × threads` jobs in flight).
pub(super) trait Source<'a> {
    /// True when the coordinator keeps a free list of tiles for this source (allocated
    /// once per run, handed back after the sink): live stacks are decoded into them and
    /// files read into them.
    const POOLED: bool;

    /// The next unit of work; waits at most `wait` (only a source that waits for data,
    /// i.e. the live one, waits at all).
    fn pull(&mut self, co: &mut Coordinator<'_, 'a>, wait: Duration) -> Pulled<'a>;

    /// Called once the loop ended with `outcome` and the in-flight jobs finished: what the
    /// summary's [`super::RunSummary::unprocessed_from`] is (`None` by default).
    fn finish(&mut self, outcome: Outcome) -> Option<u64> {
        let _ = outcome;
        None
    }
}

/// Live raw frame stacks from a receiver, until it disconnects the channel.
pub(super) struct Stacks {
    rx: Receiver<Stack>,
    /// Acquisition index after the last frame of the stacks taken so far.
    taken_until: u64,
}

impl Stacks {
    /// The stacks arriving on `rx`.
    pub(super) fn new(rx: Receiver<Stack>) -> Self {
        Self { rx, taken_until: 0 }
    }
}

impl<'a> Source<'a> for Stacks {
    const POOLED: bool = true;

    fn pull(&mut self, co: &mut Coordinator<'_, 'a>, wait: Duration) -> Pulled<'a> {
        // Waits for a stack and for the workers at once: a finished job frees a tile
        // (and feeds the sink) as soon as it is done, even while no stack arrives.
        select! {
            recv(self.rx) -> msg => match msg {
                Ok(raw) => {
                    self.taken_until = self.taken_until.max(raw.first_frame() + raw.len() as u64);
                    Pulled::Stack(raw)
                }
                Err(_) => Pulled::End,
            },
            recv(co.done_rx) -> done => done.map_or(Pulled::Idle, |d| Pulled::Done(Box::new(d))),
            default(wait) => Pulled::Idle,
        }
    }

    fn finish(&mut self, outcome: Outcome) -> Option<u64> {
        match outcome {
            Outcome::Cancelled => {
                // Dropping the queued stacks returns their buffers to the receiver's pool
                // at once.
                self.rx.try_iter().for_each(drop);
                Some(self.taken_until)
            }
            Outcome::Completed => None,
        }
    }
}

/// A [`DataSet`] read in partitions of `per` frames into the coordinator's reused tiles.
pub(super) struct Reader<'d> {
    data: &'d mut dyn DataSet,
    /// Frames per partition, ≥ 1.
    per: u64,
    /// The next frame to read.
    next: u64,
    /// One past the last frame to read.
    end: u64,
}

impl<'d> Reader<'d> {
    /// Reads all of `data`, `per` frames at a time (at least 1).
    pub(super) fn new(data: &'d mut dyn DataSet, per: usize) -> Self {
        let end = data.frames();
        Self::range(data, per, 0..end)
    }

    /// Reads frames `frames` of `data` (clipped to its frames), `per` at a time.
    pub(super) fn range(data: &'d mut dyn DataSet, per: usize, frames: Range<u64>) -> Self {
        let end = frames.end.min(data.frames());
        Self {
            data,
            per: per.max(1) as u64,
            next: frames.start.min(end),
            end,
        }
    }
}

impl<'a> Source<'a> for Reader<'_> {
    const POOLED: bool = true;

    fn pull(&mut self, co: &mut Coordinator<'_, 'a>, _wait: Duration) -> Pulled<'a> {
        if self.next >= self.end {
            return Pulled::End;
        }
        let n = self.per.min(self.end - self.next) as usize;
        if self.data.is_sparse() {
            let mut rows = co.free_rows.pop().unwrap_or_default();
            return match self.data.read_csr(self.next, n, &mut rows) {
                Ok(()) => {
                    self.next += n as u64;
                    Pulled::Rows(rows)
                }
                Err(e) => {
                    co.free_rows.push(rows);
                    Pulled::Failed(Box::new(e))
                }
            };
        }
        let mut tile = co.take_tile();
        match self.data.read_tile(self.next, n, &mut tile) {
            Ok(()) => {
                self.next += n as u64;
                Pulled::Tile(Slot::Pooled(tile))
            }
            Err(e) => {
                co.put_back(tile);
                Pulled::Failed(Box::new(e))
            }
        }
    }
}

/// Tiles made elsewhere (an iterator over owned or borrowed tiles), taken on the
/// coordinating thread as workers free up.
pub(super) struct Tiles<I>(pub(super) I);

impl<'a, I> Source<'a> for Tiles<I>
where
    I: Iterator<Item = Result<Slot<'a>, BoxError>>,
{
    const POOLED: bool = false;

    fn pull(&mut self, _co: &mut Coordinator<'_, 'a>, _wait: Duration) -> Pulled<'a> {
        match self.0.next() {
            None => Pulled::End,
            Some(Err(e)) => Pulled::Failed(e),
            Some(Ok(slot)) => Pulled::Tile(slot),
        }
    }
}
