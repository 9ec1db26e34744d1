//! The UDF interface beyond the basics: regions of interest, partition-fed UDFs,
//! preprocess / postprocess / get_results, typed buffers, cancellation leaving the engine
//! usable, and automatic partition sizes.

mod common;

use common::{assert_identical, random_frames, raw_stacks, tiles};
use crossbeam_channel::bounded;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stemflow_core::{DType, NavShape, SigShape};
use stemflow_processing::result::{BufferKind, ResultBuffer};
use stemflow_processing::udf::{BufferDecl, Granularity, PartitionTask, TileView, Udf, UdfMeta};
use stemflow_processing::{
    Outcome, ProcessingError, ResultDType, Roi, RunConfig, RunSummary, SumSigUdf, SumUdf,
    TypedValues, partition_frames, run_live, run_tiles, standard_udfs, typed_values,
};

fn run(
    frames: &[Vec<u64>],
    per_tile: usize,
    cfg: &RunConfig,
    udfs: &[Box<dyn Udf>],
) -> Result<RunSummary, ProcessingError> {
    let t = tiles(frames, per_tile, cfg.sig_shape, cfg.dtype);
    run_tiles(
        t.into_iter().map(Ok::<_, Infallible>),
        udfs,
        cfg,
        None,
        &mut |_| {},
        &AtomicBool::new(false),
    )
}

#[test]
fn roi_limits_processing_and_fills_nan_outside() {
    let sig = SigShape::new(6, 7);
    let nav = NavShape::new(4, 5);
    let frames = random_frames(nav.len(), sig, 1000, 4);
    let coords = [(0, 0), (1, 3), (1, 4), (2, 0), (3, 4)];
    let roi = Roi::from_coords(nav, &coords).unwrap();
    let mut cfg = RunConfig::new(nav, sig, DType::U16).with_roi(roi.clone());
    cfg.threads = Some(2);
    let udfs: Vec<Box<dyn Udf>> = vec![Box::new(SumUdf::new()), Box::new(SumSigUdf::new())];
    let s = run(&frames, 3, &cfg, &udfs).unwrap();
    assert_eq!(s.frames_processed, 5);
    assert_eq!(s.outside_roi, 15);
    let inside: Vec<usize> = coords.iter().map(|&(r, c)| r * 5 + c).collect();
    let ss = s.results[1].buffer("intensity").unwrap();
    for (i, f) in frames.iter().enumerate() {
        let v = ss.data[i];
        if inside.contains(&i) {
            assert_eq!(v, f.iter().sum::<u64>() as f64, "frame {i}");
        } else {
            assert!(v.is_nan(), "frame {i} outside the ROI: {v}");
        }
    }
    // The sum over signal pixels counts ROI frames only.
    let sum = &s.results[0].buffer("intensity").unwrap().data;
    for p in 0..sig.len() {
        let want: u64 = inside.iter().map(|&i| frames[i][p]).sum();
        assert_eq!(sum[p], want as f64);
    }
    // The raw, ROI-only buffer: the 5 values in scan order.
    let compact = roi.compact(ss);
    assert_eq!(compact.shape, vec![5]);
    let want: Vec<f64> = inside
        .iter()
        .map(|&i| frames[i].iter().sum::<u64>() as f64)
        .collect();
    assert_eq!(compact.data, want);
    // Integer view: NaN becomes the documented fill value.
    let TypedValues::U64(ints) = typed_values(&ss.data, ResultDType::U64) else {
        panic!("u64 values")
    };
    assert_eq!(ints[1], u64::MAX);
    assert_eq!(ints[0], want[0] as u64);
    // Live, with the same ROI: identical.
    let (tx, rx) = bounded(64);
    for st in raw_stacks(&frames, 0, 4, sig, &[]) {
        tx.send(st.into()).unwrap();
    }
    drop(tx);
    let live = run_live(rx, &udfs, &cfg, None, &mut |_| {}, &AtomicBool::new(false)).unwrap();
    assert_identical(&live.results, &s.results);
    // A ROI for another scan is refused.
    let wrong = RunConfig::new(NavShape::new(2, 2), sig, DType::U16)
        .with_roi(Roi::from_mask(nav, vec![true; 20]).unwrap());
    assert!(matches!(
        run(&frames[..4], 2, &wrong, &udfs),
        Err(ProcessingError::RoiShape { .. })
    ));
}

/// Sees whole partitions; records their sizes; sums frames into a single buffer; counts
/// preprocess / postprocess calls; adds a derived buffer in get_results.
struct PartitionUdf {
    sizes: Arc<Mutex<Vec<usize>>>,
    calls: Arc<Mutex<(u32, u32)>>,
}

struct PartitionTaskImpl {
    sizes: Arc<Mutex<Vec<usize>>>,
    total: u64,
}

impl Udf for PartitionUdf {
    fn name(&self) -> &str {
        "partition"
    }
    fn buffers(&self, _meta: &UdfMeta) -> Vec<BufferDecl> {
        vec![
            BufferDecl::single("total", vec![], "counts").with_dtype(ResultDType::U64),
            BufferDecl::nav("first_pixel", "counts"),
        ]
    }
    fn granularity(&self, _meta: &UdfMeta) -> Granularity {
        Granularity::Partition
    }
    fn preprocess(&self, _m: &UdfMeta, global: &mut [ResultBuffer]) -> Result<(), String> {
        self.calls.lock().unwrap().0 += 1;
        global[0].data[0] = 1000.0;
        Ok(())
    }
    fn postprocess(&self, _m: &UdfMeta, global: &mut [ResultBuffer]) -> Result<(), String> {
        self.calls.lock().unwrap().1 += 1;
        global[0].data[0] -= 1000.0;
        Ok(())
    }
    fn get_results(&self, _m: &UdfMeta, merged: &[ResultBuffer]) -> Vec<ResultBuffer> {
        let mut out = merged.to_vec();
        let mut doubled = merged[1].clone();
        doubled.name = "twice".into();
        doubled.data.iter_mut().for_each(|v| *v *= 2.0);
        out.push(doubled);
        out
    }
    fn new_partition(&self, _meta: &UdfMeta) -> Box<dyn PartitionTask> {
        Box::new(PartitionTaskImpl {
            sizes: Arc::clone(&self.sizes),
            total: 0,
        })
    }
}

impl PartitionTask for PartitionTaskImpl {
    fn process_partition(&mut self, p: &TileView<'_>, nav: &mut [f64]) {
        self.sizes.lock().unwrap().push(p.n_frames);
        for (i, slot) in nav.iter_mut().enumerate().take(p.n_frames) {
            let f = p.frame(i);
            *slot = f.get_f64(0);
            self.total += (0..f.len()).map(|k| f.get_f64(k) as u64).sum::<u64>();
        }
    }
    fn merge_into(&mut self, global: &mut [ResultBuffer]) {
        global[0].data[0] += self.total as f64;
        self.total = 0;
    }
}

#[test]
fn partition_udfs_see_whole_partitions_and_hooks_run_once() {
    // 256 × 256 u16 frames: tile-fed UDFs see chunks of 4 frames; a partition UDF sees the
    // whole tile of 10.
    let sig = SigShape::new(256, 256);
    let nav = NavShape::new(2, 10);
    let frames = random_frames(nav.len(), sig, 50, 8);
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(Mutex::new((0, 0)));
    let udfs: Vec<Box<dyn Udf>> = vec![Box::new(PartitionUdf {
        sizes: Arc::clone(&sizes),
        calls: Arc::clone(&calls),
    })];
    let mut cfg = RunConfig::new(nav, sig, DType::U16);
    cfg.threads = Some(2);
    let s = run(&frames, 10, &cfg, &udfs).unwrap();
    assert_eq!(*sizes.lock().unwrap(), vec![10, 10]);
    assert_eq!(*calls.lock().unwrap(), (1, 1));
    let total: u64 = frames.iter().flatten().sum();
    let r = &s.results[0];
    assert_eq!(r.buffer("total").unwrap().data[0], total as f64);
    assert_eq!(
        r.buffer("twice").unwrap().data[3],
        2.0 * frames[3][0] as f64
    );
    assert_eq!(r.buffers.len(), 3);
    assert_eq!(r.buffer("first_pixel").unwrap().kind, BufferKind::Nav);
}

#[test]
fn a_live_stack_is_one_partition() {
    // Live, the unit of work is a receiver's stack: a partition UDF sees each stack whole
    // (16 frames of 256 × 256, four chunks for the tile-fed UDFs), beside the standard set,
    // and every frame's values are right.
    let sig = SigShape::new(256, 256);
    let nav = NavShape::new(3, 16);
    let frames = random_frames(nav.len(), sig, 50, 9);
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let mut udfs = standard_udfs(128.0, 128.0, 20.0);
    udfs.push(Box::new(PartitionUdf {
        sizes: Arc::clone(&sizes),
        calls: Arc::new(Mutex::new((0, 0))),
    }));
    let mut cfg = RunConfig::new(nav, sig, DType::U16);
    cfg.threads = Some(2);
    let (tx, rx) = crossbeam_channel::unbounded();
    for st in raw_stacks(&frames, 0, 16, sig, &[]) {
        tx.send(st.into()).unwrap();
    }
    drop(tx);
    let live = run_live(rx, &udfs, &cfg, None, &mut |_| {}, &AtomicBool::new(false)).unwrap();
    assert_eq!(*sizes.lock().unwrap(), vec![16, 16, 16]);
    let r = live.results.iter().find(|r| r.udf == "partition").unwrap();
    let total: u64 = frames.iter().flatten().sum();
    assert_eq!(r.buffer("total").unwrap().data[0], total as f64);
    let first: Vec<f64> = frames.iter().map(|f| f[0] as f64).collect();
    assert_eq!(r.buffer("first_pixel").unwrap().data, first);
    // The tile-fed UDFs give what they give offline.
    let offline = run(&frames, 16, &cfg, &udfs[..udfs.len() - 1]).unwrap();
    common::assert_identical(&offline.results, &live.results[..live.results.len() - 1]);
}

#[test]
fn a_cancelled_run_leaves_the_engine_usable() {
    let sig = SigShape::new(16, 16);
    let nav = NavShape::new(10, 10);
    let frames = random_frames(nav.len(), sig, 100, 2);
    let cfg = RunConfig::new(nav, sig, DType::U16);
    let udfs = standard_udfs(8.0, 8.0, 3.0);
    // Cancelled before it starts: prompt, distinct outcome, a final snapshot.
    let cancel = AtomicBool::new(true);
    let (_tx, rx) = bounded(1);
    let mut finals = 0;
    let t0 = std::time::Instant::now();
    let s = run_live(rx, &udfs, &cfg, None, &mut |_| finals += 1, &cancel).unwrap();
    assert_eq!(s.outcome, Outcome::Cancelled);
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(finals, 1);
    // The same UDFs run again to completion.
    cancel.store(false, Ordering::SeqCst);
    let t = tiles(&frames, 7, sig, DType::U16);
    let again = run_tiles(
        t.into_iter().map(Ok::<_, Infallible>),
        &udfs,
        &cfg,
        None,
        &mut |_| {},
        &cancel,
    )
    .unwrap();
    assert_eq!(again.outcome, Outcome::Completed);
    assert_eq!(again.frames_processed, 100);
}

#[test]
fn partitions_are_sized_from_frame_size_and_cores() {
    // 256 × 256 u16 = 128 KiB: 32 frames make 4 MiB.
    assert_eq!(
        partition_frames(SigShape::new(256, 256), DType::U16, 2, 65536),
        32
    );
    // 512 × 512 u32 = 1 MiB: 4 frames.
    assert_eq!(
        partition_frames(SigShape::new(512, 512), DType::U32, 2, 65536),
        4
    );
    // Few frames: at least four partitions per worker.
    assert_eq!(
        partition_frames(SigShape::new(256, 256), DType::U16, 2, 40),
        5
    );
    assert_eq!(partition_frames(SigShape::new(1, 1), DType::U8, 16, 1), 1);
}

#[test]
fn typed_values_round_saturate_and_fill() {
    let v = [1.4, f64::NAN, -3.0, 300.0];
    assert_eq!(
        typed_values(&v, ResultDType::U8),
        TypedValues::U8(vec![1, 255, 0, 255])
    );
    assert_eq!(
        typed_values(&v, ResultDType::I32),
        TypedValues::I32(vec![1, i32::MIN, -3, 300])
    );
    let TypedValues::F32(f) = typed_values(&v, ResultDType::F32) else {
        panic!("f32")
    };
    assert!(f[1].is_nan() && f[0] == 1.4f32);
}
