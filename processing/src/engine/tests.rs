//! The one coordinator loop seen through its file and tile sources: partitions read into
//! reused tiles, frames beyond the scan, a failing reader, a cancel before the start.

use super::*;
use crate::udfs::SumUdf;
use std::path::{Path, PathBuf};
use stemflow_core::dataset::{IoError, shape_tile};
use stemflow_core::frame::TileData;
use stemflow_core::{DType, NavShape, SigShape};

/// `frames` frames of 4 × 4 u16 pixels, frame `i` all `i + 1`; reads from `fail_from` on
/// fail.
struct Counting {
    path: PathBuf,
    frames: u64,
    fail_from: u64,
    /// Reads into a tile that already held frames: a pooled tile back from a worker.
    reused: usize,
}

impl Counting {
    fn new(frames: u64, fail_from: u64) -> Self {
        Self {
            path: PathBuf::from("counting.raw"),
            frames,
            fail_from,
            reused: 0,
        }
    }
}

impl DataSet for Counting {
    fn path(&self) -> &Path {
        &self.path
    }
    fn nav_shape(&self) -> NavShape {
        NavShape::new(1, self.frames as usize)
    }
    fn sig_shape(&self) -> SigShape {
        SigShape::new(4, 4)
    }
    fn dtype(&self) -> DType {
        DType::U16
    }
    fn frames(&self) -> u64 {
        self.frames
    }
    fn read_tile(&mut self, first: u64, n: usize, out: &mut Tile) -> Result<(), IoError> {
        if first + n as u64 > self.fail_from {
            return Err(IoError::Format {
                path: self.path.clone(),
                detail: format!("frames {first}..+{n} unreadable"),
            });
        }
        if out.data.dtype() == DType::U16 && !out.data.is_empty() {
            self.reused += 1;
        }
        shape_tile(out, first, n, self.sig_shape(), DType::U16);
        let TileData::U16(v) = &mut out.data else {
            unreachable!("shape_tile gives u16 pixels");
        };
        for (k, frame) in v.chunks_exact_mut(16).enumerate() {
            frame.fill(first as u16 + k as u16 + 1);
        }
        Ok(())
    }
}

fn cfg(frames: usize) -> RunConfig {
    RunConfig {
        threads: Some(2),
        ..RunConfig::new(NavShape::new(1, frames), SigShape::new(4, 4), DType::U16)
    }
}

fn sum_of(s: &RunSummary) -> &[f64] {
    &s.results[0].buffers[0].data
}

/// Every frame inside the scan is read once, in partitions, into tiles that come back to
/// the free list; frames beyond the scan are counted, not summed.
#[test]
fn a_data_set_is_read_in_partitions_into_reused_tiles() {
    let mut ds = Counting::new(100, u64::MAX);
    let udfs: Vec<Box<dyn Udf>> = vec![Box::new(SumUdf::new())];
    let c = cfg(90);
    let s = run_dataset(
        &mut ds,
        &udfs,
        &c,
        None,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(s.outcome, Outcome::Completed);
    assert_eq!((s.frames_processed, s.out_of_range), (90, 10));
    assert_eq!(s.unprocessed_from, None);
    let expected = (1..=90).sum::<u64>() as f64;
    assert!(
        sum_of(&s).iter().all(|&v| v == expected),
        "{:?}",
        sum_of(&s)
    );
    let partitions = 100usize.div_ceil(c.partition_frames());
    let pooled = 2 * c.worker_threads();
    assert!(
        partitions > pooled && ds.reused >= partitions - pooled,
        "{} of {partitions} partitions read into reused tiles",
        ds.reused
    );
}

/// A reader's error stops the run as [`ProcessingError::Source`], keeping the reader's
/// error; an iterator's error alike.
#[test]
fn a_failing_source_stops_the_run_with_its_error() {
    let udfs: Vec<Box<dyn Udf>> = vec![Box::new(SumUdf::new())];
    let mut ds = Counting::new(64, 40);
    let e = run_dataset(
        &mut ds,
        &udfs,
        &cfg(64),
        None,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap_err();
    let ProcessingError::Source { source, .. } = &e else {
        panic!("expected a source error, got {e:?}");
    };
    assert!(source.downcast_ref::<IoError>().is_some(), "{source}");

    let tiles = vec![
        Ok(Tile::zeros(0, 2, SigShape::new(4, 4), DType::U16)),
        Err("the second tile is unreadable"),
    ];
    let e = run_tiles(
        tiles.into_iter(),
        &udfs,
        &cfg(4),
        None,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(
        matches!(&e, ProcessingError::Source { source, .. } if source.to_string() == "the second tile is unreadable"),
        "{e:?}"
    );
}

/// A tile of another pixel type than the run's is a mismatch, not a panic.
#[test]
fn a_tile_of_another_type_is_a_mismatch() {
    let udfs: Vec<Box<dyn Udf>> = vec![Box::new(SumUdf::new())];
    let tiles = [Ok::<_, IoError>(Tile::zeros(
        0,
        2,
        SigShape::new(4, 4),
        DType::U32,
    ))];
    let e = run_tiles(
        tiles.into_iter(),
        &udfs,
        &cfg(2),
        None,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            ProcessingError::Mismatch {
                source_kind: "tile",
                observed_dtype: DType::U32,
                ..
            }
        ),
        "{e:?}"
    );
}

/// A run cancelled before it starts processes nothing, still delivers its final snapshot,
/// and (offline) has no unprocessed-from index.
#[test]
fn a_cancel_before_the_start_ends_file_runs_at_once() {
    let udfs: Vec<Box<dyn Udf>> = vec![Box::new(SumUdf::new())];
    let cancel = AtomicBool::new(true);
    let mut snapshots = 0;
    let mut ds = Counting::new(32, u64::MAX);
    let s = run_dataset(
        &mut ds,
        &udfs,
        &cfg(32),
        None,
        &mut |_| snapshots += 1,
        &cancel,
    )
    .unwrap();
    assert_eq!(s.outcome, Outcome::Cancelled);
    assert_eq!((s.frames_processed, s.unprocessed_from), (0, None));
    assert_eq!(snapshots, 1, "the final snapshot comes after a cancel too");
}
