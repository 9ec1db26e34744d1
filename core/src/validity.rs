//! The per-frame validity map: for every frame of an acquisition, whether it was received
//! intact, never arrived (lost), arrived damaged, or was never acquired because the run was
//! cancelled first. Stored with every recording, so no loss goes undetected.

use serde::{Deserialize, Serialize};

/// What happened to one frame of an acquisition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum FrameStatus {
    /// Not (yet) received. At the end of an acquisition this means lost.
    Missing = 0,
    /// Received and decoded.
    Received = 1,
    /// Received but could not be decoded (wrong size, corrupt payload); its pixels are zero.
    Damaged = 2,
    /// Never acquired: the run was cancelled before this scan position (after the last
    /// frame that arrived). Not a loss; its pixels are zero.
    NotAcquired = 3,
}

/// Per-frame status for an acquisition of `len` frames; stored as `u8` codes
/// (0 missing/lost, 1 received, 2 damaged, 3 not acquired).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameValidity {
    codes: Vec<u8>,
    received: usize,
    damaged: usize,
    #[serde(default)]
    not_acquired: usize,
}

impl FrameValidity {
    /// A map of `len` frames, all missing.
    pub fn new(len: usize) -> Self {
        Self {
            codes: vec![FrameStatus::Missing as u8; len],
            received: 0,
            damaged: 0,
            not_acquired: 0,
        }
    }
    /// Number of frames in the acquisition.
    pub fn len(&self) -> usize {
        self.codes.len()
    }
    /// True for a zero-frame acquisition.
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }
    /// Marks frame `index`; out-of-range indices are ignored and return `false` (the
    /// receiver reports those frames as unexpected instead).
    pub fn mark(&mut self, index: u64, status: FrameStatus) -> bool {
        let Some(code) = usize::try_from(index)
            .ok()
            .and_then(|i| self.codes.get_mut(i))
        else {
            return false;
        };
        match *code {
            1 => self.received -= 1,
            2 => self.damaged -= 1,
            3 => self.not_acquired -= 1,
            _ => {}
        }
        *code = status as u8;
        match status {
            FrameStatus::Received => self.received += 1,
            FrameStatus::Damaged => self.damaged += 1,
            FrameStatus::NotAcquired => self.not_acquired += 1,
            FrameStatus::Missing => {}
        }
        true
    }
    /// For a cancelled run: marks every missing frame after the last one that arrived
    /// (received or damaged) as [`FrameStatus::NotAcquired`]; missing frames before it stay
    /// lost. Returns how many it marked.
    pub fn mark_not_acquired_after_last(&mut self) -> usize {
        let span = self
            .codes
            .iter()
            .rposition(|&c| c == FrameStatus::Received as u8 || c == FrameStatus::Damaged as u8)
            .map_or(0, |i| i + 1);
        let mut n = 0;
        for i in span..self.codes.len() {
            if self.codes[i] == FrameStatus::Missing as u8 {
                self.mark(i as u64, FrameStatus::NotAcquired);
                n += 1;
            }
        }
        n
    }
    /// Marks frames `first..first + n` as received.
    pub fn mark_range_received(&mut self, first: u64, n: usize) {
        for i in first..first + n as u64 {
            self.mark(i, FrameStatus::Received);
        }
    }
    /// Status of frame `index`.
    pub fn status(&self, index: usize) -> FrameStatus {
        match self.codes.get(index) {
            Some(1) => FrameStatus::Received,
            Some(2) => FrameStatus::Damaged,
            Some(3) => FrameStatus::NotAcquired,
            _ => FrameStatus::Missing,
        }
    }
    /// Frames received intact.
    pub fn received(&self) -> usize {
        self.received
    }
    /// Frames received damaged.
    pub fn damaged(&self) -> usize {
        self.damaged
    }
    /// Frames never received (lost, once the acquisition has ended); not-acquired frames of
    /// a cancelled run are not counted.
    pub fn missing(&self) -> usize {
        self.codes.len() - self.received - self.damaged - self.not_acquired
    }
    /// Frames never acquired because the run was cancelled first.
    pub fn not_acquired(&self) -> usize {
        self.not_acquired
    }
    /// The raw `u8` codes, one per frame (0 missing, 1 received, 2 damaged, 3 not
    /// acquired).
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_marks() {
        let mut v = FrameValidity::new(5);
        assert_eq!(v.missing(), 5);
        v.mark_range_received(0, 3);
        assert!(v.mark(4, FrameStatus::Damaged));
        assert!(!v.mark(5, FrameStatus::Received));
        assert_eq!((v.received(), v.damaged(), v.missing()), (3, 1, 1));
        v.mark(4, FrameStatus::Received);
        assert_eq!((v.received(), v.damaged(), v.missing()), (4, 0, 1));
        assert_eq!(v.codes(), &[1, 1, 1, 0, 1]);
    }

    #[test]
    fn a_cancelled_run_marks_the_positions_after_its_last_frame_not_acquired() {
        let mut v = FrameValidity::new(8);
        v.mark_range_received(0, 2);
        v.mark(4, FrameStatus::Damaged);
        // Frames 2 and 3 are gaps before the last arrival: lost. 5..8 were never scanned.
        assert_eq!(v.mark_not_acquired_after_last(), 3);
        assert_eq!(v.codes(), &[1, 1, 0, 0, 2, 3, 3, 3]);
        assert_eq!((v.missing(), v.not_acquired()), (2, 3));
        assert_eq!(v.status(6), FrameStatus::NotAcquired);
        // Nothing arrived: every position not acquired, nothing lost.
        let mut none = FrameValidity::new(4);
        assert_eq!(none.mark_not_acquired_after_last(), 4);
        assert_eq!((none.missing(), none.not_acquired()), (0, 4));
        // A late arrival turns a not-acquired position back into a received one.
        none.mark(3, FrameStatus::Received);
        assert_eq!((none.received(), none.not_acquired()), (1, 3));
    }
}
