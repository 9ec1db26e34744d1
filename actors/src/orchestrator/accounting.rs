//! The end-of-run recount (decision 0008): the detector side knows which frames reached
//! its receiver, the pipeline knows which of them it could decode and, after a cancel,
//! where it stopped taking them. Together they say, for every scan position, whether it
//! was received, damaged, lost or never acquired.

use crate::processing::PipelineOutput;
use stemflow_core::detector::AcquisitionEnd;
use stemflow_core::validity::{FrameStatus, FrameValidity};

/// Fits the detector side's account of an acquisition to the scan of `scan` positions:
/// a detector that announced fewer frames (its HDR, set by someone else in passive mode)
/// leaves the positions after them lost; frames beyond the scan were never positions of it
/// (the pipeline dropped them) and are not counted. The counts are taken from the fitted
/// map, and the end reason says what the detector announced.
pub(super) fn fit_to_scan(end: &mut AcquisitionEnd, scan: usize) {
    let announced = end.validity.len();
    if announced == scan {
        return;
    }
    let mut v = FrameValidity::new(scan);
    for i in 0..announced.min(scan) {
        let status = end.validity.status(i);
        if status != FrameStatus::Missing {
            v.mark(i as u64, status);
        }
    }
    end.expected = scan as u64;
    end.received = v.received() as u64;
    end.damaged = v.damaged() as u64;
    end.lost = v.missing() as u64;
    end.validity = v;
    end.reason = format!(
        "{} (the detector announced {announced} frames for a scan of {scan} positions{})",
        end.reason,
        if announced > scan {
            "; the frames beyond the scan are not kept"
        } else {
            ""
        }
    );
}

/// Recounts `end` with the pipeline's `output`; returns the frames not acquired (0 unless
/// the run was cancelled).
///
/// - Frames the pipeline could not decode are damaged, not received.
/// - After a cancel, frames from `unprocessed_from` on that reached the receiver but not
///   the reductions are in no result and not recorded: lost, not received.
/// - After a cancel, the positions after the last frame that arrived were never acquired
///   (the run stopped before the scan got there): not acquired, not lost. Gaps before it
///   stay lost.
pub(super) fn recount(end: &mut AcquisitionEnd, output: &PipelineOutput) -> u64 {
    for &i in &output.damaged {
        if end.validity.status(i as usize) == FrameStatus::Received {
            end.received = end.received.saturating_sub(1);
            end.damaged += 1;
        }
        end.validity.mark(i, FrameStatus::Damaged);
    }
    if !output.cancelled {
        return 0;
    }
    if let Some(from) = output.unprocessed_from {
        for i in from..end.validity.len() as u64 {
            if end.validity.status(i as usize) == FrameStatus::Received {
                end.validity.mark(i, FrameStatus::Missing);
                end.received = end.received.saturating_sub(1);
                end.lost += 1;
            }
        }
    }
    let not_acquired = end.validity.mark_not_acquired_after_last() as u64;
    end.lost = end.lost.saturating_sub(not_acquired);
    not_acquired
}

#[cfg(test)]
mod tests {
    use super::*;
    use stemflow_core::validity::FrameValidity;

    /// An end of `n` frames of which `received` arrived intact; the rest lost.
    fn end_with(n: usize, received: &[u64]) -> AcquisitionEnd {
        let mut validity = FrameValidity::new(n);
        for &i in received {
            validity.mark(i, FrameStatus::Received);
        }
        AcquisitionEnd {
            expected: n as u64,
            received: received.len() as u64,
            lost: (n - received.len()) as u64,
            damaged: 0,
            validity,
            reason: "test".into(),
            error: None,
        }
    }

    fn output(damaged: Vec<u64>, cancelled: bool, unprocessed_from: Option<u64>) -> PipelineOutput {
        PipelineOutput {
            results: vec![],
            frames_processed: 0,
            damaged,
            cancelled,
            unprocessed_from,
            recording: None,
        }
    }

    /// A completed run: an undecodable frame moves from received to damaged; nothing is
    /// "not acquired".
    #[test]
    fn an_end_that_announced_fewer_or_more_frames_fits_the_scan() {
        let mut fewer = end_with(50, &(0..50).collect::<Vec<_>>());
        fit_to_scan(&mut fewer, 64);
        assert_eq!(
            (fewer.expected, fewer.received, fewer.lost, fewer.damaged),
            (64, 50, 14, 0)
        );
        assert_eq!(fewer.validity.len(), 64);
        assert!(
            fewer
                .reason
                .contains("announced 50 frames for a scan of 64")
        );
        let mut more = end_with(80, &(0..80).collect::<Vec<_>>());
        fit_to_scan(&mut more, 64);
        assert_eq!((more.expected, more.received, more.lost), (64, 64, 0));
        assert!(more.reason.contains("beyond the scan"));
    }

    #[test]
    fn damaged_frames_are_not_received() {
        let mut end = end_with(4, &[0, 1, 2, 3]);
        assert_eq!(recount(&mut end, &output(vec![2], false, None)), 0);
        assert_eq!((end.received, end.damaged, end.lost), (3, 1, 0));
        assert_eq!(end.validity.status(2), FrameStatus::Damaged);
    }

    /// A completed run with a gap at the end: the missing frames stay lost.
    #[test]
    fn completed_run_keeps_trailing_losses() {
        let mut end = end_with(4, &[0, 1]);
        assert_eq!(recount(&mut end, &output(vec![], false, None)), 0);
        assert_eq!((end.received, end.lost), (2, 2));
        assert_eq!(end.validity.status(3), FrameStatus::Missing);
    }

    /// A cancelled run: frames received but not processed are lost; positions after the
    /// last frame that arrived are not acquired; a gap before it stays lost.
    #[test]
    fn cancelled_run_counts_unprocessed_and_not_acquired() {
        // 8 positions; 0, 2, 3, 4 arrived (1 is a gap); the pipeline took up to 3.
        let mut end = end_with(8, &[0, 2, 3, 4]);
        let not_acquired = recount(&mut end, &output(vec![], true, Some(4)));
        // Frame 4 arrived but was dropped unprocessed: lost, and the last "arrived" frame
        // is now 3, so 4..8 are not acquired; only the gap at 1 stays lost.
        assert_eq!(not_acquired, 4);
        assert_eq!((end.received, end.lost, end.damaged), (3, 1, 0));
        assert_eq!(end.validity.status(1), FrameStatus::Missing);
        assert_eq!(end.validity.status(4), FrameStatus::NotAcquired);
    }
}
