//! Partitions and snapshots, with known answers: the partition monitor holds exactly the
//! frames of one worker's partition (checked against naive sums of the tiles it must
//! hold), per-partition tasks are made once per worker and reused however many tiles come,
//! and snapshots come on the configured cadence, grow monotonically, and end with the final
//! results.

mod common;

use common::{assert_identical, buffer, config, random_frames, raw_stacks};
use crossbeam_channel::bounded;
use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use stemflow_core::frame::{Tile, TileData};
use stemflow_core::result::{ResultBuffer, UdfResults};
use stemflow_core::{DType, NavShape, SigShape};
use stemflow_processing::udf::{BufferDecl, PartitionTask, TileView, Udf, UdfMeta};
use stemflow_processing::{
    NpyDataSet, PartitionMonitorUdf, RunConfig, RunSummary, Snapshot, SumSigUdf, SumUdf,
    run_dataset, run_live, run_tiles,
};

/// Frames `first..first + n` of `frames` as one tile of `dtype`.
fn tile_of(frames: &[Vec<u64>], first: usize, n: usize, sig: SigShape, dtype: DType) -> Tile {
    let flat = frames[first..first + n].iter().flatten().copied();
    let data = match dtype {
        DType::U8 => TileData::U8(flat.map(|v| v as u8).collect()),
        DType::U16 => TileData::U16(flat.map(|v| v as u16).collect()),
        DType::U32 => TileData::U32(flat.map(|v| v as u32).collect()),
        DType::U64 => TileData::U64(flat.collect()),
        DType::F32 => TileData::F32(flat.map(|v| v as f32).collect()),
        DType::F64 => TileData::F64(flat.map(|v| v as f64).collect()),
    };
    Tile {
        first_frame: first as u64,
        n_frames: n,
        sig_shape: sig,
        data,
    }
}

/// The pixelwise sum of frames `range`, in plain integer loops.
fn naive_sum(frames: &[Vec<u64>], range: std::ops::Range<usize>) -> Vec<f64> {
    let mut acc = vec![0u64; frames[0].len()];
    for f in &frames[range] {
        for (a, &v) in acc.iter_mut().zip(f) {
            *a += v;
        }
    }
    acc.into_iter().map(|v| v as f64).collect()
}

/// `(intensity, frames)` of the partition monitor in `results`.
fn monitor(results: &[UdfResults]) -> (Vec<f64>, usize) {
    (
        buffer(results, "partition_monitor", "intensity").to_vec(),
        buffer(results, "partition_monitor", "frames")[0] as usize,
    )
}

/// Asserts that `sum` is the pixelwise sum of some set of whole `tiles` (`(first, n)`)
/// totalling `n` frames; returns that set (indices into `tiles`).
fn assert_whole_tiles(
    sum: &[f64],
    n: usize,
    tiles: &[(usize, usize)],
    frames: &[Vec<u64>],
) -> Vec<usize> {
    let sums: Vec<Vec<f64>> = tiles
        .iter()
        .map(|&(f0, k)| naive_sum(frames, f0..f0 + k))
        .collect();
    for set in 1u32..(1 << tiles.len()) {
        let members: Vec<usize> = (0..tiles.len()).filter(|&t| set & (1 << t) != 0).collect();
        if members.iter().map(|&t| tiles[t].1).sum::<usize>() != n {
            continue;
        }
        let matches =
            (0..sum.len()).all(|p| sum[p] == members.iter().map(|&t| sums[t][p]).sum::<f64>());
        if matches {
            return members;
        }
    }
    panic!("the partition monitor's {n} frames are no set of whole tiles of {tiles:?}");
}

#[test]
fn the_partition_monitor_holds_exactly_one_workers_partition() {
    let sig = SigShape::new(6, 7);
    // 127 frames in tiles of 1, 2, 4, … 64 frames: a frame count names its tiles (its
    // binary digits), so the monitor's count says which frames its sum must hold.
    let nav = NavShape::new(1, 127);
    let tiles: Vec<(usize, usize)> = (0..7).map(|k| ((1 << k) - 1, 1 << k)).collect();
    let udfs: Vec<Box<dyn Udf>> = vec![Box::new(PartitionMonitorUdf::new())];
    for (dtype, max) in [
        (DType::U8, 1u64 << 8),
        (DType::U16, 1 << 16),
        (DType::U32, 1 << 32),
    ] {
        let frames = random_frames(nav.len(), sig, max, 41);
        for (threads, repeats) in [(1, 1), (2, 4)] {
            for _ in 0..repeats {
                let mut cfg = config(nav, sig, dtype, threads);
                cfg.snapshot_interval = Duration::MAX;
                let s = run_tiles(
                    tiles
                        .iter()
                        .map(|&(f0, n)| Ok::<_, Infallible>(tile_of(&frames, f0, n, sig, dtype))),
                    &udfs,
                    &cfg,
                    None,
                    &mut |_| {},
                    &AtomicBool::new(false),
                )
                .unwrap();
                let (sum, n) = monitor(&s.results);
                assert!((1..=127).contains(&n), "{dtype}: {n} frames");
                let by_bits: Vec<usize> = (0..7).filter(|&k| n & (1 << k) != 0).collect();
                let want = by_bits
                    .iter()
                    .map(|&k| naive_sum(&frames, tiles[k].0..tiles[k].0 + tiles[k].1))
                    .reduce(|a, b| a.iter().zip(&b).map(|(x, y)| x + y).collect())
                    .unwrap();
                assert_eq!(sum, want, "{dtype}, {threads} threads: tiles {by_bits:?}");
                if threads == 1 {
                    // One worker merged once, at the end: its partition is every frame.
                    assert_eq!(n, 127);
                }
            }
        }
    }
}

#[test]
fn the_partition_monitor_follows_the_partitions_between_snapshots() {
    // One worker takes tiles in order, so between two snapshots it processes the frames
    // from the previous snapshot's count to this one's; the monitor must show exactly those.
    let sig = SigShape::new(5, 4);
    let per = 3;
    let n_tiles = 40;
    let nav = NavShape::new(4, 30);
    let frames = random_frames(nav.len(), sig, 1 << 16, 43);
    let mut cfg = config(nav, sig, DType::U16, 1);
    cfg.snapshot_interval = Duration::from_millis(10);
    let slow = (0..n_tiles).map(|k| {
        std::thread::sleep(Duration::from_millis(4));
        Ok::<_, Infallible>(tile_of(&frames, k * per, per, sig, DType::U16))
    });
    let mut shown: Vec<(u64, Vec<f64>, usize)> = Vec::new();
    let udfs: Vec<Box<dyn Udf>> = vec![Box::new(PartitionMonitorUdf::new())];
    let s = run_tiles(
        slow,
        &udfs,
        &cfg,
        None,
        &mut |snap: &Snapshot| {
            let (sum, n) = monitor(&snap.results);
            shown.push((snap.frames_processed, sum, n));
        },
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(s.frames_processed, 120);
    let mut before = 0usize;
    let mut later_partitions = 0;
    // Before any frame: zeros (a snapshot may come before the first frame is merged).
    let mut last = (vec![0.0; sig.len()], 0);
    for (done, sum, n) in shown {
        let done = done as usize;
        if done == before {
            // Nothing new (the final snapshot may repeat the last count, and one may come
            // before the first frame): the monitor is unchanged.
            assert_eq!((&sum, n), (&last.0, last.1), "an unchanged snapshot");
            continue;
        }
        assert_eq!(n, done - before, "frames {before}..{done}");
        assert_eq!(n % per, 0, "whole tiles");
        assert_eq!(
            sum,
            naive_sum(&frames, before..done),
            "frames {before}..{done}"
        );
        if before > 0 {
            later_partitions += 1;
        }
        before = done;
        last = (sum, n);
    }
    assert_eq!(before, 120);
    assert!(
        later_partitions >= 3,
        "only {later_partitions} partitions after the first: snapshots did not split the run"
    );
}

/// A little-endian u16 `.npy` of `shape` holding `frames`, header written here.
fn write_npy(path: &Path, shape: [usize; 4], frames: &[Vec<u64>]) {
    let dict = format!(
        "{{'descr': '<u2', 'fortran_order': False, 'shape': ({}, {}, {}, {}), }}",
        shape[0], shape[1], shape[2], shape[3]
    );
    let pad = (10 + dict.len() + 1).next_multiple_of(64) - (10 + dict.len() + 1);
    let header = format!("{dict}{}\n", " ".repeat(pad));
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in frames.iter().flatten() {
        bytes.extend_from_slice(&(*v as u16).to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn the_partition_monitor_holds_whole_partitions_of_the_offline_reader() {
    let nav = NavShape::new(8, 8);
    let sig = SigShape::new(16, 16);
    let frames = random_frames(nav.len(), sig, 1 << 16, 47);
    let path = std::env::temp_dir().join(format!(
        "stemflow-partitions-{}-{}.npy",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    write_npy(&path, [8, 8, 16, 16], &frames);
    let udfs: Vec<Box<dyn Udf>> = vec![Box::new(PartitionMonitorUdf::new())];
    let mut results = Vec::new();
    for (threads, repeats) in [(1, 1), (2, 4)] {
        for _ in 0..repeats {
            let mut cfg = config(nav, sig, DType::U16, threads);
            cfg.snapshot_interval = Duration::MAX;
            let per = cfg.partition_frames();
            let mut ds = NpyDataSet::open(&path).unwrap();
            let s = run_dataset(
                &mut ds,
                &udfs,
                &cfg,
                None,
                &mut |_| {},
                &AtomicBool::new(false),
            );
            results.push((threads, per, s));
        }
    }
    let _ = std::fs::remove_file(&path);
    for (threads, per, s) in results {
        let s: RunSummary = s.unwrap();
        // At least four partitions per worker: 16 frames on one thread, 8 on two.
        assert_eq!(per, 16 / threads);
        let parts: Vec<(usize, usize)> = (0..64 / per).map(|k| (k * per, per)).collect();
        let (sum, n) = monitor(&s.results);
        let set = assert_whole_tiles(&sum, n, &parts, &frames);
        if threads == 1 {
            assert_eq!(set.len(), 4, "one worker merged once holds every partition");
        }
    }
}

/// A UDF that counts the tasks it makes and the frames they process.
struct Counting {
    made: Arc<AtomicUsize>,
}

struct CountingTask {
    frames: u64,
}

impl Udf for Counting {
    fn name(&self) -> &str {
        "counting"
    }
    fn buffers(&self, _meta: &UdfMeta) -> Vec<BufferDecl> {
        vec![BufferDecl::single("frames", vec![], "frames")]
    }
    fn new_partition(&self, _meta: &UdfMeta) -> Box<dyn PartitionTask> {
        self.made.fetch_add(1, Ordering::SeqCst);
        Box::new(CountingTask { frames: 0 })
    }
}

impl PartitionTask for CountingTask {
    fn process_tile(&mut self, tile: &TileView<'_>, _nav: &mut [f64]) {
        self.frames += tile.n_frames as u64;
    }
    fn merge_into(&mut self, global: &mut [ResultBuffer]) {
        global[0].data[0] += self.frames as f64;
        self.frames = 0;
    }
}

#[test]
fn partition_tasks_are_made_once_per_worker_and_reused_for_every_tile() {
    let sig = SigShape::new(4, 4);
    for threads in [1, 2, 3] {
        for n_tiles in [20, 200] {
            let nav = NavShape::new(n_tiles, 2);
            let frames = random_frames(nav.len(), sig, 1 << 16, 53);
            let made = Arc::new(AtomicUsize::new(0));
            let udfs: Vec<Box<dyn Udf>> = vec![Box::new(Counting {
                made: Arc::clone(&made),
            })];
            // Frequent snapshots: merging must not make tasks either.
            let mut cfg = config(nav, sig, DType::U16, threads);
            cfg.snapshot_interval = Duration::from_millis(1);
            let s = run_tiles(
                (0..n_tiles)
                    .map(|k| Ok::<_, Infallible>(tile_of(&frames, 2 * k, 2, sig, DType::U16))),
                &udfs,
                &cfg,
                None,
                &mut |_| {},
                &AtomicBool::new(false),
            )
            .unwrap();
            assert_eq!(
                buffer(&s.results, "counting", "frames"),
                &[(2 * n_tiles) as f64]
            );
            // One task per pool thread plus one for work run outside the pool.
            assert_eq!(
                made.load(Ordering::SeqCst),
                threads + 1,
                "{threads} threads, {n_tiles} tiles"
            );
            // The live path: stacks of 2 frames decoded by the workers.
            let made = Arc::new(AtomicUsize::new(0));
            let udfs: Vec<Box<dyn Udf>> = vec![Box::new(Counting {
                made: Arc::clone(&made),
            })];
            let (tx, rx) = bounded(4);
            let stacks = raw_stacks(&frames, 0, 2, sig, &[]);
            let feeder = std::thread::spawn(move || {
                for s in stacks {
                    let _ = tx.send(s.into());
                }
            });
            let s = run_live(rx, &udfs, &cfg, None, &mut |_| {}, &AtomicBool::new(false)).unwrap();
            feeder.join().unwrap();
            assert_eq!(s.frames_processed, 2 * n_tiles as u64);
            assert_eq!(made.load(Ordering::SeqCst), threads + 1, "live");
        }
    }
}

#[test]
fn snapshots_come_on_the_interval_grow_and_end_with_the_final_results() {
    assert_eq!(
        RunConfig::new(NavShape::new(1, 1), SigShape::new(1, 1), DType::U8).snapshot_interval,
        Duration::from_millis(100)
    );
    let sig = SigShape::new(8, 8);
    let n_tiles = 60;
    let nav = NavShape::new(n_tiles, 2);
    let frames = random_frames(nav.len(), sig, 1 << 16, 59);
    let udfs = || -> Vec<Box<dyn Udf>> {
        vec![
            Box::new(SumUdf::new()),
            Box::new(SumSigUdf::new()),
            Box::new(PartitionMonitorUdf::new()),
        ]
    };
    let interval = Duration::from_millis(20);
    let mut cfg = config(nav, sig, DType::U16, 2);
    cfg.snapshot_interval = interval;
    // A source that feeds a tile of 2 frames every 5 ms: the run lasts about 300 ms.
    let slow = (0..n_tiles).map(|k| {
        std::thread::sleep(Duration::from_millis(5));
        Ok::<_, Infallible>(tile_of(&frames, 2 * k, 2, sig, DType::U16))
    });
    let mut snaps: Vec<Snapshot> = Vec::new();
    let start = Instant::now();
    let s = run_tiles(
        slow,
        &udfs(),
        &cfg,
        None,
        &mut |snap: &Snapshot| snaps.push(snap.clone()),
        &AtomicBool::new(false),
    )
    .unwrap();
    let elapsed = start.elapsed();
    let count = snaps.len();
    // Loose bounds for a loaded machine, but: a final snapshot only fails the lower one,
    // a snapshot per tile (61) the upper ones.
    let cadence_bound = (elapsed.as_millis() / interval.as_millis()) as usize + 3;
    assert!(count >= 5, "{count} snapshots in {elapsed:?}");
    assert!(
        count <= cadence_bound && count <= n_tiles / 2 + 1,
        "{count} snapshots in {elapsed:?}, at most {cadence_bound} expected"
    );
    // Each delivered snapshot shows more frames than the one before (none is delivered
    // while nothing changed), except that the final one may repeat the last count.
    for (k, w) in snaps.windows(2).enumerate() {
        let last = k + 2 == count;
        assert!(
            w[1].frames_processed > w[0].frames_processed
                || (last && w[1].frames_processed == w[0].frames_processed),
            "snapshot {}: {} frames after {}",
            k + 1,
            w[1].frames_processed,
            w[0].frames_processed
        );
    }
    // Every snapshot is consistent: its processed frames have their sums, the others NaN,
    // and the sum over the signal is the sum of the processed frames.
    for snap in &snaps {
        let per_frame = buffer(&snap.results, "sum_sig", "intensity");
        let done: Vec<usize> = (0..nav.len()).filter(|&i| !per_frame[i].is_nan()).collect();
        assert_eq!(done.len() as u64, snap.frames_processed);
        for &i in &done {
            assert_eq!(per_frame[i], frames[i].iter().sum::<u64>() as f64);
        }
        let total: f64 = buffer(&snap.results, "sum", "intensity").iter().sum();
        let want: u64 = done.iter().map(|&i| frames[i].iter().sum::<u64>()).sum();
        assert_eq!(total, want as f64);
    }
    let last = snaps.last().unwrap();
    assert_eq!(last.frames_processed, 120);
    assert_eq!(s.frames_processed, 120);
    assert_identical(&last.results, &s.results);
    // `Duration::MAX`: the final snapshot only.
    cfg.snapshot_interval = Duration::MAX;
    let mut count = 0;
    let s = run_tiles(
        (0..n_tiles).map(|k| Ok::<_, Infallible>(tile_of(&frames, 2 * k, 2, sig, DType::U16))),
        &udfs(),
        &cfg,
        None,
        &mut |snap: &Snapshot| {
            count += 1;
            assert_eq!(snap.frames_processed, 120);
        },
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(count, 1);
    assert_eq!(s.frames_processed, 120);
}

#[test]
fn no_snapshot_comes_before_the_first_frame() {
    let sig = SigShape::new(4, 4);
    let nav = NavShape::new(1, 4);
    let frames = random_frames(nav.len(), sig, 1 << 16, 61);
    let mut cfg = config(nav, sig, DType::U16, 1);
    cfg.snapshot_interval = Duration::from_millis(5);
    // Nothing arrives for 60 ms: about a dozen intervals in which nothing changes.
    let late = (0..2).map(|k| {
        std::thread::sleep(Duration::from_millis(if k == 0 { 60 } else { 1 }));
        Ok::<_, Infallible>(tile_of(&frames, 2 * k, 2, sig, DType::U16))
    });
    let mut counts = Vec::new();
    run_tiles(
        late,
        &[Box::new(SumUdf::new()) as Box<dyn Udf>],
        &cfg,
        None,
        &mut |snap: &Snapshot| counts.push(snap.frames_processed),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(counts.last(), Some(&4));
    assert!(
        counts.iter().all(|&n| n > 0),
        "snapshots before any frame: {counts:?}"
    );
}
