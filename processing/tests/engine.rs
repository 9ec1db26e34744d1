//! The engine: determinism across splits and threads, live against offline, cancel,
//! damaged and out-of-range frames, the sink, snapshots, errors and UDF panics.

mod common;

use common::{BeU16Decoder, assert_identical, random_frames, raw_stacks, tiles};
use crossbeam_channel::bounded;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use stemflow_core::frame::{FrameDecoder, PixelsRef, RawStack, Tile};
use stemflow_core::sink::{SinkError, TileSink};
use stemflow_core::{DType, NavShape, SigShape};
use stemflow_processing::result::ResultBuffer;
use stemflow_processing::udf::{
    BufferDecl, Fusable, LinearTerms, PartitionTask, TileView, Udf, UdfMeta, Weight,
};
use stemflow_processing::{
    ComUdf, Mask, MasksUdf, Outcome, ProcessingError, RunConfig, RunSummary, Snapshot, SpanMask,
    StatsUdf, SumSigUdf, SumUdf, run_live, run_tiles, standard_udfs,
};

fn cfg(nav: NavShape, sig: SigShape, threads: usize) -> RunConfig {
    let mut c = RunConfig::new(nav, sig, DType::U16);
    c.threads = Some(threads);
    c
}

fn offline(
    frames: &[Vec<u64>],
    per_tile: usize,
    c: &RunConfig,
    udfs: &[Box<dyn Udf>],
) -> RunSummary {
    let t = tiles(frames, per_tile, c.sig_shape, c.dtype);
    run_tiles(
        t.into_iter().map(Ok::<_, Infallible>),
        udfs,
        c,
        None,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .expect("offline run succeeds")
}

/// Runs `run_live` with `stacks` fed from another thread through a small bounded channel.
fn live(
    stacks: Vec<RawStack>,
    c: &RunConfig,
    udfs: &[Box<dyn Udf>],
    sink: Option<&mut dyn TileSink>,
) -> Result<RunSummary, ProcessingError> {
    let (tx, rx) = bounded(2);
    let feeder = std::thread::spawn(move || {
        for s in stacks {
            if tx.send_timeout(s.into(), Duration::from_secs(10)).is_err() {
                break;
            }
        }
    });
    let r = run_live(rx, udfs, c, sink, &mut |_| {}, &AtomicBool::new(false));
    feeder.join().expect("feeder thread");
    r
}

/// A UDF exercising the interface's defaults: `process_frame` only, a nav buffer with an
/// extra shape, and a single buffer merged by adding.
struct CornersUdf;

struct CornersTask {
    frames: u64,
}

impl Udf for CornersUdf {
    fn name(&self) -> &str {
        "corners"
    }
    fn buffers(&self, _meta: &UdfMeta) -> Vec<BufferDecl> {
        vec![
            BufferDecl::single("frames", vec![], "frames"),
            BufferDecl::nav("first_last", "counts").with_extra_shape(vec![2]),
            BufferDecl::nav("index", "frames"),
        ]
    }
    fn new_partition(&self, _meta: &UdfMeta) -> Box<dyn PartitionTask> {
        Box::new(CornersTask { frames: 0 })
    }
}

impl PartitionTask for CornersTask {
    fn process_frame(&mut self, frame: u64, pixels: PixelsRef<'_>, nav: &mut [f64]) {
        nav[0] = pixels.get_f64(0);
        nav[1] = pixels.get_f64(pixels.len() - 1);
        nav[2] = frame as f64;
        self.frames += 1;
    }
    fn merge_into(&mut self, global: &mut [ResultBuffer]) {
        global[0].data[0] += self.frames as f64;
        self.frames = 0;
    }
}

fn all_udfs(sig: SigShape) -> Vec<Box<dyn Udf>> {
    let mut u = standard_udfs(
        sig.cols as f64 / 2.0,
        sig.rows as f64 / 2.0,
        sig.rows as f64 / 8.0,
    );
    u.push(Box::new(CornersUdf));
    u
}

#[test]
fn results_are_identical_whatever_the_split_and_thread_count() {
    // 256 × 256 u16 frames: the engine processes 4 frames per cache chunk, so tiles of 5
    // are split into chunks of 4 and 1, tiles of 7 into 4 and 3.
    let sig = SigShape::new(256, 256);
    let nav = NavShape::new(3, 7);
    let frames = random_frames(nav.len(), sig, 4096, 21);
    let udfs = all_udfs(sig);
    let reference = offline(&frames, nav.len(), &cfg(nav, sig, 1), &udfs);
    assert_eq!(reference.frames_processed, 21);
    for (per_tile, threads) in [(1, 1), (5, 3), (7, 2), (2, 4)] {
        let other = offline(&frames, per_tile, &cfg(nav, sig, threads), &udfs);
        assert_identical(&reference.results, &other.results);
    }
    let corners = &reference.results[4];
    assert_eq!(corners.buffer("frames").unwrap().data, vec![21.0]);
    let fl = &corners.buffer("first_last").unwrap().data;
    assert_eq!(corners.buffer("first_last").unwrap().shape, vec![3, 7, 2]);
    assert_eq!(
        (fl[2 * 9], fl[2 * 9 + 1]),
        (frames[9][0] as f64, frames[9][sig.len() - 1] as f64)
    );
    let index = &corners.buffer("index").unwrap().data;
    assert!(index.iter().enumerate().all(|(i, &v)| v == i as f64));
}

#[test]
fn live_stream_gives_the_offline_results() {
    let sig = SigShape::new(32, 24);
    let nav = NavShape::new(6, 10);
    let frames = random_frames(nav.len(), sig, 1 << 16, 7);
    let udfs = all_udfs(sig);
    let c = cfg(nav, sig, 3);
    let want = offline(&frames, 8, &c, &udfs);
    let got = live(raw_stacks(&frames, 0, 3, sig, &[]), &c, &udfs, None).unwrap();
    assert_eq!(got.outcome, Outcome::Completed);
    assert_eq!(got.frames_processed, 60);
    assert!(got.damaged.is_empty());
    assert_identical(&want.results, &got.results);
}

/// Records every frame index it is given, and optionally fails at the n-th tile.
#[derive(Default)]
struct CountingSink {
    seen: Vec<u32>,
    first_pixels: Vec<(u64, u64)>,
    fail_at: Option<usize>,
    tiles: usize,
}

impl TileSink for CountingSink {
    fn name(&self) -> &str {
        "counting"
    }
    fn write_tile(&mut self, tile: &Tile) -> Result<(), SinkError> {
        self.tiles += 1;
        if self.fail_at == Some(self.tiles) {
            return Err("disk full".into());
        }
        for i in 0..tile.n_frames {
            let f = tile.first_frame as usize + i;
            if self.seen.len() <= f {
                self.seen.resize(f + 1, 0);
            }
            self.seen[f] += 1;
            self.first_pixels
                .push((f as u64, tile.frame(i).get_f64(0) as u64));
        }
        Ok(())
    }
}

#[test]
fn sink_gets_every_frame_exactly_once() {
    let sig = SigShape::new(8, 8);
    let nav = NavShape::new(5, 9);
    let frames = random_frames(nav.len(), sig, 1000, 2);
    let mut sink = CountingSink::default();
    let s = live(
        raw_stacks(&frames, 0, 4, sig, &[]),
        &cfg(nav, sig, 2),
        &all_udfs(sig),
        Some(&mut sink),
    )
    .unwrap();
    assert_eq!(s.frames_processed, 45);
    assert_eq!(sink.seen, vec![1; 45]);
    for &(f, p) in &sink.first_pixels {
        assert_eq!(
            p, frames[f as usize][0],
            "frame {f} reached the sink decoded"
        );
    }
    // Offline too.
    let mut sink = CountingSink::default();
    let t = tiles(&frames, 7, sig, DType::U16);
    run_tiles(
        t.into_iter().map(Ok::<_, Infallible>),
        &all_udfs(sig),
        &cfg(nav, sig, 2),
        Some(&mut sink),
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(sink.seen, vec![1; 45]);
}

#[test]
fn damaged_frames_are_counted_skipped_and_zeroed() {
    let sig = SigShape::new(6, 5);
    let nav = NavShape::new(3, 8);
    let frames = random_frames(nav.len(), sig, 500, 4);
    let bad = [5u64, 6, 17];
    let mut sink = CountingSink::default();
    let udfs = all_udfs(sig);
    let s = live(
        raw_stacks(&frames, 0, 4, sig, &bad),
        &cfg(nav, sig, 2),
        &udfs,
        Some(&mut sink),
    )
    .unwrap();
    assert_eq!(s.outcome, Outcome::Completed);
    assert_eq!(s.damaged, bad.to_vec());
    assert_eq!(s.frames_processed, 21);
    // Same results as an offline run over the good frames only: nav NaN at the damaged
    // positions, sums without them.
    let sum_sig = &s.results[1].buffer("intensity").unwrap().data;
    for f in 0..24u64 {
        let want = frames[f as usize].iter().sum::<u64>() as f64;
        if bad.contains(&f) {
            assert!(sum_sig[f as usize].is_nan(), "frame {f}");
        } else {
            assert_eq!(sum_sig[f as usize], want, "frame {f}");
        }
    }
    let sum = &s.results[0].buffer("intensity").unwrap().data;
    let want0: u64 = (0..24)
        .filter(|f| !bad.contains(f))
        .map(|f| frames[f as usize][0])
        .sum();
    assert_eq!(sum[0], want0 as f64);
    // The sink still gets every frame; the damaged ones are zero.
    assert_eq!(sink.seen, vec![1; 24]);
    for &(f, p) in &sink.first_pixels {
        let want = if bad.contains(&f) {
            0
        } else {
            frames[f as usize][0]
        };
        assert_eq!(p, want, "frame {f}");
    }
}

#[test]
fn frames_beyond_the_scan_are_dropped_and_counted() {
    let sig = SigShape::new(4, 4);
    let nav = NavShape::new(2, 5);
    // 14 frames for a 10-position scan.
    let frames = random_frames(14, sig, 100, 8);
    let mut sink = CountingSink::default();
    let s = live(
        raw_stacks(&frames, 0, 4, sig, &[]),
        &cfg(nav, sig, 2),
        &all_udfs(sig),
        Some(&mut sink),
    )
    .unwrap();
    assert_eq!((s.frames_processed, s.out_of_range), (10, 4));
    assert_eq!(sink.seen, vec![1; 10]);
    let t = tiles(&frames, 3, sig, DType::U16);
    let s = run_tiles(
        t.into_iter().map(Ok::<_, Infallible>),
        &all_udfs(sig),
        &cfg(nav, sig, 2),
        None,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!((s.frames_processed, s.out_of_range), (10, 4));
}

#[test]
fn cancel_ends_a_stream_that_never_ends() {
    let sig = SigShape::new(16, 16);
    let nav = NavShape::new(100, 100);
    let frames = random_frames(40, sig, 100, 1);
    let (tx, rx) = bounded(4);
    let cancel = Arc::new(AtomicBool::new(false));
    let c2 = Arc::clone(&cancel);
    // Sends 10 stacks, then holds the channel open until cancelled.
    let feeder = std::thread::spawn(move || {
        for s in raw_stacks(&frames, 0, 4, sig, &[]) {
            tx.send(s.into()).unwrap();
        }
        while !c2.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(tx);
    });
    let mut c = cfg(nav, sig, 2);
    c.snapshot_interval = Duration::from_millis(5);
    let (done_tx, done_rx) = bounded(1);
    let cancel_run = Arc::clone(&cancel);
    let runner = std::thread::spawn(move || {
        let mut snaps = 0u32;
        let r = run_live(
            rx,
            &all_udfs(sig),
            &c,
            None,
            &mut |s: &Snapshot| {
                snaps += 1;
                // Cancel once all 40 sent frames were processed.
                if s.frames_processed == 40 {
                    cancel_run.store(true, Ordering::SeqCst);
                }
            },
            &cancel_run,
        );
        let _ = done_tx.send((r, snaps));
    });
    let (r, snaps) = done_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("run_live returns after cancel");
    let s = r.unwrap();
    assert_eq!(s.outcome, Outcome::Cancelled);
    assert_eq!(s.frames_processed, 40);
    assert_eq!(
        s.unprocessed_from,
        Some(40),
        "the 40 frames taken were processed"
    );
    assert!(snaps >= 2, "a progress snapshot and the final one");
    runner.join().unwrap();
    feeder.join().unwrap();
}

/// A cancel before any stack was taken, with stacks queued: they are dropped unprocessed,
/// and the summary says no frame from 0 on was processed, so the caller does not count
/// them as received.
#[test]
fn a_cancel_reports_where_the_unprocessed_frames_begin() {
    let sig = SigShape::new(8, 8);
    let nav = NavShape::new(4, 10);
    let frames = random_frames(40, sig, 100, 3);
    let (tx, rx) = bounded(16);
    // Stacks from frame 8 on (frames 0..8 never came): all queued before the run starts.
    for s in raw_stacks(&frames[8..], 8, 4, sig, &[]) {
        tx.send(s.into()).unwrap();
    }
    let s = run_live(
        rx,
        &all_udfs(sig),
        &cfg(nav, sig, 2),
        None,
        &mut |_| {},
        &AtomicBool::new(true),
    )
    .unwrap();
    assert_eq!(s.outcome, Outcome::Cancelled);
    assert_eq!(s.frames_processed, 0);
    assert_eq!(s.unprocessed_from, Some(0));
    assert!(tx.is_empty(), "the queued stacks were dropped");
}

#[test]
fn snapshots_show_nan_where_nothing_was_processed_yet() {
    let sig = SigShape::new(8, 8);
    let nav = NavShape::new(4, 5);
    let frames = random_frames(20, sig, 100, 12);
    let mut stacks = raw_stacks(&frames, 0, 5, sig, &[]).into_iter();
    let (tx, rx) = bounded(8);
    let (go_tx, go_rx) = bounded::<()>(1);
    // First half, then wait until the engine reported it, then the rest.
    let feeder = std::thread::spawn(move || {
        tx.send(stacks.next().unwrap().into()).unwrap();
        tx.send(stacks.next().unwrap().into()).unwrap();
        go_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a snapshot of the first half");
        for s in stacks {
            tx.send(s.into()).unwrap();
        }
    });
    let mut c = cfg(nav, sig, 2);
    c.snapshot_interval = Duration::from_millis(2);
    let mut snaps: Vec<Snapshot> = Vec::new();
    let s = run_live(
        rx,
        &all_udfs(sig),
        &c,
        None,
        &mut |s: &Snapshot| {
            if s.frames_processed == 10 {
                let _ = go_tx.try_send(());
            }
            snaps.push(s.clone());
        },
        &AtomicBool::new(false),
    )
    .unwrap();
    feeder.join().unwrap();
    let half = snaps
        .iter()
        .find(|s| s.frames_processed == 10)
        .expect("half-way snapshot");
    let bf = &half.results[2].buffer("bf").unwrap().data;
    assert!(bf[..10].iter().all(|v| !v.is_nan()));
    assert!(bf[10..].iter().all(|v| v.is_nan()));
    // Frames only grow; the last snapshot is the final result.
    assert!(
        snaps
            .windows(2)
            .all(|w| w[0].frames_processed <= w[1].frames_processed)
    );
    let last = snaps.last().unwrap();
    assert_eq!(last.frames_processed, 20);
    assert_identical(&last.results, &s.results);
}

#[test]
fn snapshots_come_at_most_every_interval() {
    let sig = SigShape::new(8, 8);
    let nav = NavShape::new(10, 40);
    let frames = random_frames(400, sig, 100, 3);
    let t = tiles(&frames, 1, sig, DType::U16);
    let mut c = cfg(nav, sig, 2);
    c.snapshot_interval = Duration::MAX;
    let mut n = 0;
    run_tiles(
        t.into_iter().map(Ok::<_, Infallible>),
        &all_udfs(sig),
        &c,
        None,
        &mut |_| n += 1,
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(n, 1, "only the final snapshot");
}

#[test]
fn wrong_decoder_sink_failure_and_reader_failure_stop_the_run() {
    let sig = SigShape::new(4, 4);
    let nav = NavShape::new(2, 4);
    let frames = random_frames(8, sig, 100, 5);
    let udfs = all_udfs(sig);
    // Decoder for another frame shape.
    let mut stacks = raw_stacks(&frames, 0, 4, sig, &[]);
    stacks[1].decoder = Arc::new(BeU16Decoder {
        sig: SigShape::new(2, 8),
    }) as Arc<dyn FrameDecoder>;
    let err = live(stacks, &cfg(nav, sig, 2), &udfs, None).unwrap_err();
    assert!(
        matches!(err, ProcessingError::Mismatch { first_frame: 4, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("2x8"), "{err}");
    // The sink fails at its second tile.
    let mut sink = CountingSink {
        fail_at: Some(2),
        ..Default::default()
    };
    let err = live(
        raw_stacks(&frames, 0, 2, sig, &[]),
        &cfg(nav, sig, 2),
        &udfs,
        Some(&mut sink),
    )
    .unwrap_err();
    assert!(err.to_string().contains("sink `counting` failed"), "{err}");
    assert!(err.to_string().contains("disk full"), "{err}");
    // The reader fails after one tile.
    let t = tiles(&frames, 4, sig, DType::U16);
    let items = vec![Ok(t[0].clone()), Err("file truncated at byte 96")];
    let err = run_tiles(
        items.into_iter(),
        &udfs,
        &cfg(nav, sig, 2),
        None,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(err.to_string().contains("file truncated"), "{err}");
    // A tile of the wrong dtype.
    let t8 = tiles(&frames, 4, sig, DType::U8);
    let err = run_tiles(
        t8.into_iter().map(Ok::<_, Infallible>),
        &udfs,
        &cfg(nav, sig, 2),
        None,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(err.to_string().contains("uint8"), "{err}");
}

struct PanickyUdf;

struct PanickyTask;

impl Udf for PanickyUdf {
    fn name(&self) -> &str {
        "panicky"
    }
    fn buffers(&self, _meta: &UdfMeta) -> Vec<BufferDecl> {
        vec![BufferDecl::nav("v", "counts")]
    }
    fn new_partition(&self, _meta: &UdfMeta) -> Box<dyn PartitionTask> {
        Box::new(PanickyTask)
    }
}

impl PartitionTask for PanickyTask {
    fn process_frame(&mut self, frame: u64, _pixels: PixelsRef<'_>, _nav: &mut [f64]) {
        if frame == 6 {
            panic!("UDF bug at frame 6");
        }
    }
}

#[test]
fn a_panicking_udf_panics_the_run_without_hanging() {
    let sig = SigShape::new(4, 4);
    let nav = NavShape::new(2, 8);
    let frames = random_frames(16, sig, 100, 5);
    let udfs: Vec<Box<dyn Udf>> = vec![Box::new(PanickyUdf)];
    let stacks = raw_stacks(&frames, 0, 2, sig, &[]);
    let c = cfg(nav, sig, 2);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        live(stacks, &c, &udfs, None)
    }));
    let payload = r.expect_err("the UDF's panic reaches the caller");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"UDF bug at frame 6"));
}

/// A user UDF whose value per frame is Σ I·(x + y) over a rectangle: fusable as a column
/// and a row moment ([`Fusable::Linear`]), and counting how often the fused pass hands it
/// its sums.
struct MomentProbe {
    fused_calls: Arc<AtomicUsize>,
}

struct MomentProbeTask {
    support: SpanMask,
    fused_calls: Arc<AtomicUsize>,
}

impl MomentProbe {
    fn support(sig: SigShape) -> SpanMask {
        Mask::Rectangle {
            x: 3.0,
            y: 2.0,
            width: sig.cols as f64 - 5.0,
            height: 9.0,
        }
        .spans(sig)
    }
}

impl Udf for MomentProbe {
    fn name(&self) -> &str {
        "probe"
    }
    fn buffers(&self, _meta: &UdfMeta) -> Vec<BufferDecl> {
        vec![BufferDecl::nav("xy_moment", "counts·pixels")]
    }
    fn new_partition(&self, meta: &UdfMeta) -> Box<dyn PartitionTask> {
        Box::new(MomentProbeTask {
            support: Self::support(meta.sig_shape),
            fused_calls: Arc::clone(&self.fused_calls),
        })
    }
}

impl PartitionTask for MomentProbeTask {
    fn process_frame(&mut self, _frame: u64, pixels: PixelsRef<'_>, nav: &mut [f64]) {
        let cols = self.support.sig_shape().cols;
        let mut m = 0u64;
        for s in self.support.spans() {
            for x in s.start..s.end {
                let p = pixels.get_f64(s.row as usize * cols + x as usize) as u64;
                m += p * (x + s.row) as u64;
            }
        }
        nav[0] = m as f64;
    }
    fn bands(&self) -> bool {
        true
    }
    fn process_band(&mut self, tile: &TileView<'_>, rows: std::ops::Range<usize>, nav: &mut [f64]) {
        // The whole frame at the first band: simple, and the result is the same.
        if rows.start == 0 {
            for i in 0..tile.n_frames {
                let f = tile.frames(i..i + 1);
                self.process_frame(f.first_frame, f.pixels, &mut nav[i..i + 1]);
            }
        }
    }
    fn fusable(&self) -> Option<Fusable> {
        Some(Fusable::Linear(vec![LinearTerms {
            support: Some(self.support.clone()),
            weights: vec![Weight::Column, Weight::Row],
        }]))
    }
    fn take_linear(&mut self, _tile: &TileView<'_>, sums: &[u64], nav: &mut [f64]) {
        for (out, s) in nav.iter_mut().zip(sums.chunks_exact(2)) {
            *out = (s[0] + s[1]) as f64;
        }
        self.fused_calls.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn the_fused_pass_gives_the_band_path_results_bit_for_bit() {
    let kernel = cfg!(all(
        target_arch = "x86_64",
        target_feature = "avx512bw",
        target_feature = "avx512vnni"
    ));
    // Rows of 96 and 256 pixels are fused (multiples of 32); rows of 48 never are.
    for (rows, cols, fusable) in [(64, 96, true), (256, 256, true), (40, 48, false)] {
        let sig = SigShape::new(rows, cols);
        let nav = NavShape::new(3, 6);
        // The whole u16 range: the pass biases pixels by 32768.
        let frames = random_frames(nav.len(), sig, 1 << 16, 5);
        let (cx, cy, r) = (cols as f64 / 2.0, rows as f64 / 2.0, rows as f64 / 5.0);
        let fused_calls = Arc::new(AtomicUsize::new(0));
        let udfs: Vec<Box<dyn Udf>> = vec![
            Box::new(SumUdf::new()),
            Box::new(SumSigUdf::new()),
            // A second sum: the pass takes the first one only.
            Box::new(SumUdf::new().named("sum_again")),
            Box::new(
                MasksUdf::new([
                    ("disk", Mask::Disk { cx, cy, r }),
                    (
                        "ring",
                        Mask::Ring {
                            cx,
                            cy,
                            r_inner: r,
                            r_outer: 2.0 * r,
                        },
                    ),
                    (
                        "polygon",
                        Mask::Polygon {
                            vertices: vec![(1.0, 1.0), (cx, 3.0), (cols as f64 - 2.0, cy)],
                        },
                    ),
                ])
                .named("virtual"),
            ),
            Box::new(
                ComUdf::new(cx + 1.5, cy - 2.0, 1.5 * r)
                    .with_scan_rotation(17.0)
                    .with_flip_y(true),
            ),
            // Banded but not fusable: takes its bands beside the pass.
            Box::new(StatsUdf::new()),
            Box::new(MomentProbe {
                fused_calls: Arc::clone(&fused_calls),
            }),
        ];
        let mut bands_only = cfg(nav, sig, 2);
        bands_only.fused = false;
        let want = offline(&frames, 5, &bands_only, &udfs);
        assert_eq!(fused_calls.load(Ordering::Relaxed), 0, "fused = false");
        assert_eq!(want.frames_processed, 18);
        for (per_tile, threads) in [(18, 1), (5, 2), (3, 3)] {
            let got = offline(&frames, per_tile, &cfg(nav, sig, threads), &udfs);
            assert_identical(&want.results, &got.results);
        }
        let got = live(
            raw_stacks(&frames, 0, 4, sig, &[]),
            &cfg(nav, sig, 2),
            &udfs,
            None,
        )
        .expect("live run");
        assert_identical(&want.results, &got.results);
        assert_eq!(
            fused_calls.load(Ordering::Relaxed) > 0,
            kernel && fusable,
            "{rows} × {cols}: the fused pass ran"
        );
        // The probe's value is its own: Σ I·(x + y) over its rectangle, frame 7.
        let support = MomentProbe::support(sig);
        let mut m = 0u64;
        for s in support.spans() {
            for x in s.start..s.end {
                m += frames[7][s.row as usize * cols + x as usize] * (x + s.row) as u64;
            }
        }
        let probe = want.results.iter().find(|r| r.udf == "probe").unwrap();
        assert_eq!(probe.buffer("xy_moment").unwrap().data[7], m as f64);
    }
}
