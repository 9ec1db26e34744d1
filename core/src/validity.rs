//! The per-frame validity map: for every frame of an acquisition, whether it was received
//! intact, never arrived (lost) or arrived damaged. Stored with every recording, so no loss
//! goes undetected.

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
}

/// Per-frame status for an acquisition of `len` frames; stored as `u8` codes
/// (0 missing/lost, 1 received, 2 damaged).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameValidity {
    codes: Vec<u8>,
    received: usize,
    damaged: usize,
}

impl FrameValidity {
    /// A map of `len` frames, all missing.
    pub fn new(len: usize) -> Self {
        Self {
            codes: vec![FrameStatus::Missing as u8; len],
            received: 0,
            damaged: 0,
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
            _ => {}
        }
        *code = status as u8;
        match status {
            FrameStatus::Received => self.received += 1,
            FrameStatus::Damaged => self.damaged += 1,
            FrameStatus::Missing => {}
        }
        true
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
    /// Frames never received (lost, once the acquisition has ended).
    pub fn missing(&self) -> usize {
        self.codes.len() - self.received - self.damaged
    }
    /// The raw `u8` codes, one per frame (0 missing, 1 received, 2 damaged).
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
}
