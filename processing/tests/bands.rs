//! Row bands ([`PartitionTask::process_band`]) and whole tiles
//! ([`PartitionTask::process_tile`]) give bit-identical results for every built-in that
//! takes bands, whatever the band height, pixel type and frame shape.

mod common;

use common::{config, random_frames, run_on_tiles, tiles};
use stemflow_core::frame::PixelsRef;
use stemflow_core::result::UdfResults;
use stemflow_core::{DType, NavShape, SigShape};
use stemflow_processing::udf::{TileView, UdfMeta, nav_width};
use stemflow_processing::{
    BandRead, ComUdf, Mask, MasksUdf, SumSigUdf, SumUdf, Udf, line_fraction, new_results,
};

fn udfs(sig: SigShape) -> Vec<Box<dyn Udf>> {
    let (cx, cy) = (sig.cols as f64 / 2.0 - 0.7, sig.rows as f64 / 2.0 + 0.3);
    vec![
        Box::new(SumUdf::new()),
        Box::new(SumSigUdf::new()),
        Box::new(MasksUdf::new([
            ("disk", Mask::Disk { cx, cy, r: 9.5 }),
            (
                "ring",
                Mask::Ring {
                    cx: 2.0,
                    cy,
                    r_inner: 3.0,
                    r_outer: 30.0,
                },
            ),
            (
                "rect",
                Mask::Rectangle {
                    x: sig.cols as f64 - 5.0,
                    y: sig.rows as f64 - 4.0,
                    width: 5.0,
                    height: 4.0,
                },
            ),
            (
                "poly",
                Mask::Polygon {
                    vertices: vec![(1.0, 1.0), (30.0, 4.0), (12.0, 33.0)],
                },
            ),
        ])),
        Box::new(ComUdf::new(cx, cy, 14.0).with_scan_rotation(17.0)),
    ]
}

/// `n` frames of `sig` with a bright off-centre disk on a ramp, values near the type's top
/// so that lane overflow would show.
fn frames(sig: SigShape, n: usize, top: u64) -> Vec<u64> {
    (0..n * sig.len())
        .map(|i| {
            let (f, p) = (i / sig.len(), i % sig.len());
            let (x, y) = ((p % sig.cols) as f64, (p / sig.cols) as f64);
            let d = (x - 20.0 - f as f64).hypot(y - 15.0);
            let v = if d < 8.0 {
                top
            } else {
                top / 3 + (i as u64 * 2_654_435_761) % 97
            };
            v.min(top)
        })
        .collect()
}

fn check(sig: SigShape, dtype: DType) {
    let n = 5;
    let top = match dtype {
        DType::U8 => u8::MAX as u64,
        DType::U16 => u16::MAX as u64,
        _ => u32::MAX as u64,
    };
    let raw = frames(sig, n, top);
    let (v8, v16, v32): (Vec<u8>, Vec<u16>, Vec<u32>) = (
        raw.iter().map(|&v| v as u8).collect(),
        raw.iter().map(|&v| v as u16).collect(),
        raw.iter().map(|&v| v as u32).collect(),
    );
    let pixels = match dtype {
        DType::U8 => PixelsRef::U8(&v8),
        DType::U16 => PixelsRef::U16(&v16),
        DType::U32 => PixelsRef::U32(&v32),
        DType::U64 => PixelsRef::U64(&raw),
        DType::F32 | DType::F64 => panic!("integer pixels only in this test"),
    };
    let meta = UdfMeta {
        nav_shape: NavShape::new(1, n),
        sig_shape: sig,
        dtype,
    };
    let view = TileView {
        first_frame: 0,
        n_frames: n,
        sig_shape: sig,
        pixels,
    };
    for udf in udfs(sig) {
        udf.check(&meta).unwrap();
        let width = nav_width(&udf.buffers(&meta));
        let mut whole = udf.new_partition(&meta);
        assert!(whole.bands(), "{} takes bands", udf.name());
        let mut nav_whole = vec![f64::NAN; n * width];
        whole.process_tile(&view, &mut nav_whole);
        let mut merged_whole = new_results(udf.as_ref(), &meta);
        whole.merge_into(&mut merged_whole.buffers);
        for band in [1, 3, 8, sig.rows] {
            let mut banded = udf.new_partition(&meta);
            let mut nav = vec![0.0; n * width];
            let mut r = 0;
            while r < sig.rows {
                let r1 = (r + band).min(sig.rows);
                banded.process_band(&view, r..r1, &mut nav);
                r = r1;
            }
            banded.finish_bands(&view, &mut nav);
            let same = |a: &[f64], b: &[f64]| {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            };
            assert!(
                same(&nav, &nav_whole),
                "{} {dtype:?} {sig:?} bands of {band} rows: nav {nav:?} != {nav_whole:?}",
                udf.name()
            );
            let mut merged = new_results(udf.as_ref(), &meta);
            banded.merge_into(&mut merged.buffers);
            for (a, b) in merged.buffers.iter().zip(&merged_whole.buffers) {
                assert!(same(&a.data, &b.data), "{} buffer {}", udf.name(), a.name);
            }
        }
    }
}

#[test]
fn bands_match_whole_tiles_for_every_dtype_and_shape() {
    for sig in [
        SigShape::new(37, 45),
        SigShape::new(64, 64),
        SigShape::new(40, 33),
    ] {
        // u64 has no window kernel: masks take the run kernels, as every dtype does on
        // builds without AVX-512.
        for dtype in [DType::U8, DType::U16, DType::U32, DType::U64] {
            check(sig, dtype);
        }
    }
}

#[test]
fn the_sum_stays_exact_across_many_banded_chunks() {
    // u16 lanes take 65 537 full-scale frames before they must be flushed: 70 000 frames in
    // chunks of 4, fed in bands, must still sum exactly.
    let sig = SigShape::new(3, 4);
    let meta = UdfMeta {
        nav_shape: NavShape::new(1, 70_000),
        sig_shape: sig,
        dtype: DType::U16,
    };
    let udf = SumUdf::new();
    let mut task = udf.new_partition(&meta);
    let px = vec![u16::MAX; 4 * sig.len()];
    for k in 0..17_500u64 {
        let view = TileView {
            first_frame: 4 * k,
            n_frames: 4,
            sig_shape: sig,
            pixels: PixelsRef::U16(&px),
        };
        task.process_band(&view, 0..2, &mut []);
        task.process_band(&view, 2..3, &mut []);
        task.finish_bands(&view, &mut []);
    }
    let mut merged = new_results(&udf, &meta);
    task.merge_into(&mut merged.buffers);
    assert_eq!(merged.buffers[0].data, vec![70_000.0 * 65_535.0; 12]);
}

/// The standard live set's geometry on `sig`: a BF disk, three annular or off-axis
/// detectors and CoM in a small disk (as in `stemflow bench`).
fn live_set(sig: SigShape) -> (MasksUdf, MasksUdf, ComUdf) {
    let r = sig.rows.min(sig.cols) as f64 / 8.0;
    let (cx, cy) = (sig.cols as f64 / 2.0, sig.rows as f64 / 2.0);
    let ring = |a: f64, b: f64| Mask::Ring {
        cx,
        cy,
        r_inner: a * r,
        r_outer: b * r,
    };
    let four = MasksUdf::new([
        ("bf", Mask::Disk { cx, cy, r }),
        ("adf", ring(1.5, 3.0)),
        (
            "rect",
            Mask::Rectangle {
                x: cx + 1.2 * r,
                y: cy - 0.5 * r,
                width: 2.0 * r,
                height: r,
            },
        ),
        ("outer", ring(3.0, 3.8)),
    ])
    .named("four");
    let bf = MasksUdf::new([("bf", Mask::Disk { cx, cy, r })]).named("bf");
    (four, bf, ComUdf::new(cx, cy, 1.25 * r))
}

#[test]
fn each_task_says_how_it_reads_a_band() {
    let sig = SigShape::new(256, 256);
    for dtype in [DType::U8, DType::U16, DType::U32] {
        let meta = UdfMeta {
            nav_shape: NavShape::new(4, 4),
            sig_shape: sig,
            dtype,
        };
        let read = |u: &dyn Udf| u.new_partition(&meta).band_read();
        assert_eq!(read(&SumUdf::new()), BandRead::Lockstep);
        assert_eq!(read(&SumSigUdf::new()), BandRead::Stream);
        let (four, bf, com) = live_set(sig);
        // Four detectors out to 0.475 of the frame touch most lines: scattered.
        assert_eq!(read(&four), BandRead::Scattered, "{dtype:?}");
        // A BF disk of an eighth of the frame, or CoM in a small disk: a part.
        assert_eq!(read(&bf), BandRead::Part, "{dtype:?}");
        assert_eq!(read(&com), BandRead::Part, "{dtype:?}");
        // CoM over the whole frame reads every line.
        assert_eq!(
            read(&ComUdf::new(128.0, 128.0, 1000.0)),
            BandRead::Scattered
        );
    }
}

#[test]
fn line_fraction_counts_cache_lines_touched() {
    use stemflow_processing::Span;
    let sig = SigShape::new(4, 64);
    // u8: one 64-byte line per row. One pixel in row 1 touches a quarter of the lines.
    let one = [Span {
        row: 1,
        start: 5,
        end: 6,
    }];
    assert_eq!(line_fraction(&one, sig, 1), 0.25);
    // u16: two lines per row; columns 31..33 straddle the line boundary of row 0.
    let straddle = [Span {
        row: 0,
        start: 31,
        end: 33,
    }];
    assert_eq!(line_fraction(&straddle, sig, 2), 2.0 / 8.0);
    // Overlapping spans of several masks count each line once.
    let both = [
        Span {
            row: 2,
            start: 0,
            end: 64,
        },
        Span {
            row: 2,
            start: 10,
            end: 20,
        },
    ];
    assert_eq!(line_fraction(&both, sig, 1), 0.25);
    assert_eq!(line_fraction(&[], sig, 4), 0.0);
}

/// Runs `udfs` offline over `frames` in tiles of 8 (banded chunks) on 2 threads.
fn run_set(
    frames: &[Vec<u64>],
    sig: SigShape,
    dtype: DType,
    udfs: &[Box<dyn Udf>],
) -> Vec<UdfResults> {
    let nav = NavShape::new(frames.len() / 8, 8);
    run_on_tiles(
        tiles(frames, 8, sig, dtype),
        &config(nav, sig, dtype, 2),
        udfs,
    )
    .results
}

/// The engine reorders banded tasks (best reader first) and reads a band itself when only
/// scattered readers take it; neither may change a result.
#[test]
fn results_do_not_depend_on_which_task_reads_a_band_first() {
    let sig = SigShape::new(64, 64);
    for (dtype, max) in [
        (DType::U8, 1 << 8),
        (DType::U16, 1 << 16),
        (DType::U32, 1 << 32),
    ] {
        let frames = random_frames(32, sig, max, 7);
        let set = |order: &[usize]| -> Vec<Box<dyn Udf>> {
            let (four, _, com) = live_set(sig);
            let mut all: Vec<Option<Box<dyn Udf>>> = vec![
                Some(Box::new(SumUdf::new())),
                Some(Box::new(SumSigUdf::new())),
                Some(Box::new(four)),
                Some(Box::new(com)),
            ];
            order.iter().map(|&i| all[i].take().unwrap()).collect()
        };
        let by_name = |r: Vec<UdfResults>| {
            let mut r = r;
            r.sort_by(|a, b| a.udf.cmp(&b.udf));
            r
        };
        let sum_first = by_name(run_set(&frames, sig, dtype, &set(&[0, 1, 2, 3])));
        let masks_first = by_name(run_set(&frames, sig, dtype, &set(&[2, 3, 1, 0])));
        common::assert_identical(&sum_first, &masks_first);
        // The four detectors alone: the engine reads each band before them.
        let alone = run_set(&frames, sig, dtype, &set(&[2]));
        let four = sum_first.iter().find(|r| r.udf == "four").unwrap();
        common::assert_identical(std::slice::from_ref(four), &alone);
        // And against a naive sum under each mask.
        let (four_udf, _, _) = live_set(sig);
        for (name, mask) in four_udf.masks() {
            let spans = mask.spans(sig);
            let got = &four.buffer(name).unwrap().data;
            for (f, frame) in frames.iter().enumerate() {
                let want: u64 = spans
                    .spans()
                    .iter()
                    .flat_map(|s| frame[s.range(sig.cols)].iter())
                    .sum();
                assert_eq!(got[f], want as f64, "{dtype:?} {name} frame {f}");
            }
        }
    }
}
