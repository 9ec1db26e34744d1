//! Frame accounting of one acquisition: every frame index is received, damaged or lost,
//! and frames read after the consumer had gone count as lost
//! (`docs/decisions/0008-cancel-and-frame-accounting.md`). Chunks of many frames
//! (protocols.md §3.4) are accounted per frame.

use super::MAX_FRAMES_PER_ACQUISITION;
use super::protocol::{EndReasons, OrderError};
use stemflow_core::detector::AcquisitionEnd;
use stemflow_core::validity::{FrameStatus, FrameValidity};

/// Frame accounting of one acquisition, with the protocol's end reason `E` and acquisition
/// id `S` (DECTRIS: the series id, protocols.md §2.4; `()` for Merlin, §1.4).
#[derive(Clone, Debug, PartialEq)]
pub struct AcquisitionSummary<E, S = ()> {
    /// The protocol's id of the acquisition (DECTRIS: series id).
    pub series: S,
    /// Frames expected (0 = continuous, or unknown until the end marker).
    pub expected: u64,
    /// Frames received intact (delivered in stacks).
    pub received: u64,
    /// Frames never received (gaps, and for a finite acquisition every frame after the
    /// last one received), and frames read after the consumer had dropped its stacks
    /// channel (they were discarded).
    pub lost: u64,
    /// Frames received but unusable (cut by a truncated or stalled stream, of the wrong
    /// size, failing a check).
    pub damaged: u64,
    /// Per-frame status; its length is `expected`, or when `expected` is 0 the frames up
    /// to the last one seen (and a gap before a frame that did not complete).
    pub validity: FrameValidity,
    /// Why the acquisition ended.
    pub end: E,
}

impl<E: EndReasons, S> AcquisitionSummary<E, S> {
    /// The detector-independent end record the orchestrator stores
    /// ([`stemflow_core::detector::AcquisitionEnd`]); `error` is the message of the
    /// [`ReceiverEvent::Error`](super::ReceiverEvent::Error) that ended it, if one did.
    pub fn to_acquisition_end(&self, error: Option<String>) -> AcquisitionEnd {
        AcquisitionEnd {
            expected: self.expected,
            received: self.received,
            lost: self.lost,
            damaged: self.damaged,
            validity: self.validity.clone(),
            reason: self.end.as_str().to_string(),
            error,
        }
    }
}

/// A forward jump in frame indices: frames `from..to` never arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    /// First lost frame.
    pub from: u64,
    /// One past the last lost frame.
    pub to: u64,
}

/// The running tally of one acquisition: one status code per frame index, grown as frames
/// are accounted (preallocated up to 16 Mi frames from the expected count).
pub(crate) struct Tally {
    pub(crate) expected: u64,
    /// Index of the frame expected next (frames `0..next` are accounted for or lost).
    pub(crate) next: u64,
    /// Per-frame [`FrameStatus`] codes; frames not in it, or 0, are lost.
    codes: Vec<u8>,
    /// First frame of the first stack the consumer did not take (it had dropped its
    /// receiver, e.g. a cancelled pipeline): this frame and every later one were read and
    /// discarded, so none counts as received.
    pub(crate) discarded_from: Option<u64>,
}

impl Tally {
    pub(crate) fn new(expected: u64) -> Self {
        Self {
            expected,
            next: 0,
            codes: Vec::with_capacity(expected.min(1 << 24) as usize),
            discarded_from: None,
        }
    }

    /// True once every expected frame is accounted for (never for a continuous one).
    pub(crate) fn complete(&self) -> bool {
        self.expected > 0 && self.next >= self.expected
    }

    /// True once any frame index was accepted or accounted.
    pub(crate) fn started(&self) -> bool {
        self.next > 0 || !self.codes.is_empty()
    }

    /// Checks that frames `first..first + count` may come next: the gap before them, if
    /// any (the caller closes the open stack; the skipped frames stay lost).
    pub(crate) fn accept(&mut self, first: u64, count: u64) -> Result<Option<Gap>, OrderError> {
        if first < self.next {
            return Err(OrderError::Backwards);
        }
        let end = first.saturating_add(count);
        if self.expected > 0 && (first >= self.expected || end > self.expected) {
            return Err(OrderError::PastEnd {
                expected_frames: self.expected,
            });
        }
        if end > MAX_FRAMES_PER_ACQUISITION {
            return Err(OrderError::PastLimit {
                max: MAX_FRAMES_PER_ACQUISITION,
            });
        }
        let gap = (first > self.next).then_some(Gap {
            from: self.next,
            to: first,
        });
        self.next = first;
        Ok(gap)
    }

    /// Marks frames `first..first + count` and moves past them.
    pub(crate) fn mark(&mut self, first: u64, count: u64, status: FrameStatus) {
        let Ok(from) = usize::try_from(first) else {
            return;
        };
        let Some(to) = usize::try_from(first.saturating_add(count))
            .ok()
            .filter(|&t| t as u64 <= MAX_FRAMES_PER_ACQUISITION.max(self.expected))
        else {
            return;
        };
        if self.codes.len() < to {
            self.codes.resize(to, FrameStatus::Missing as u8);
        }
        self.codes[from..to].fill(status as u8);
        self.next = self.next.max(to as u64);
    }

    /// The summary; the acquisition's stacks channel should be closed first.
    pub(crate) fn into_summary<E, S>(self, series: S, end: E) -> AcquisitionSummary<E, S> {
        // Frames before a gap's end are known to be lost even when the frame after the gap
        // never completed.
        let total = self.expected.max(self.codes.len() as u64).max(self.next);
        let mut validity = FrameValidity::new(usize::try_from(total).unwrap_or(usize::MAX));
        let discarded_from = self.discarded_from.unwrap_or(u64::MAX);
        for (i, &c) in self.codes.iter().enumerate() {
            let i = i as u64;
            if c == FrameStatus::Received as u8 && i < discarded_from {
                validity.mark(i, FrameStatus::Received);
            } else if c == FrameStatus::Damaged as u8 {
                validity.mark(i, FrameStatus::Damaged);
            }
        }
        let (received, damaged) = (validity.received() as u64, validity.damaged() as u64);
        AcquisitionSummary {
            series,
            expected: self.expected,
            received,
            lost: total - received - damaged,
            damaged,
            validity,
            end,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_damage_and_discarded_frames_are_accounted_per_frame() {
        let mut t = Tally::new(10);
        assert_eq!(t.accept(0, 3), Ok(None));
        t.mark(0, 3, FrameStatus::Received);
        assert_eq!(t.accept(5, 1), Ok(Some(Gap { from: 3, to: 5 })));
        t.mark(5, 1, FrameStatus::Damaged);
        assert_eq!(t.accept(4, 1), Err(OrderError::Backwards));
        assert_eq!(
            t.accept(8, 3),
            Err(OrderError::PastEnd {
                expected_frames: 10
            })
        );
        t.mark(6, 2, FrameStatus::Received);
        t.discarded_from = Some(7);
        let s = t.into_summary((), "end");
        assert_eq!((s.expected, s.received, s.damaged, s.lost), (10, 4, 1, 5));
        assert_eq!(s.validity.codes(), &[1, 1, 1, 0, 0, 2, 1, 0, 0, 0]);
    }

    #[test]
    fn continuous_acquisitions_end_at_the_last_frame_seen_and_at_the_limit() {
        let mut t = Tally::new(0);
        assert_eq!(t.accept(0, 4), Ok(None));
        t.mark(0, 4, FrameStatus::Received);
        assert!(!t.complete());
        assert_eq!(
            t.accept(MAX_FRAMES_PER_ACQUISITION, 1),
            Err(OrderError::PastLimit {
                max: MAX_FRAMES_PER_ACQUISITION
            })
        );
        let s = t.into_summary((), "end");
        assert_eq!((s.expected, s.received, s.lost), (0, 4, 0));

        // A gap, then the frame after it never completes (stop): the gap is lost.
        let mut t = Tally::new(0);
        t.mark(0, 2, FrameStatus::Received);
        assert_eq!(t.accept(4, 1), Ok(Some(Gap { from: 2, to: 4 })));
        let s = t.into_summary((), "end");
        assert_eq!((s.received, s.lost, s.validity.len()), (2, 2, 4));
    }
}
