//! The built-ins added to sum, sum over signal, masks and CoM, against naive references
//! on synthetic frames with known answers: statistics, radial profile, pick, monitors,
//! record, rectangle / polygon / custom masks, CoM flip, divergence and curl.

mod common;

use common::{buffer, config, random_frames, run_on_tiles, tiles};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use stemflow_core::{DType, NavShape, SigShape};
use stemflow_processing::udf::Udf;
use stemflow_processing::{
    ComParams, ComUdf, CustomMask, Mask, MasksUdf, NpyDataSet, PartitionMonitorUdf, PickUdf,
    RadialProfileParams, RadialProfileUdf, RecordUdf, RunConfig, RunSummary, SignalMonitorUdf,
    StatsUdf, run_dataset, run_tiles,
};

const DTYPES: [(DType, u64); 3] = [
    (DType::U8, 1 << 8),
    (DType::U16, 1 << 16),
    (DType::U32, 1 << 32),
];

fn run(
    frames: &[Vec<u64>],
    nav: NavShape,
    sig: SigShape,
    dtype: DType,
    udfs: &[Box<dyn Udf>],
) -> RunSummary {
    run_on_tiles(
        tiles(frames, 3, sig, dtype),
        &config(nav, sig, dtype, 2),
        udfs,
    )
}

#[test]
fn statistics_match_a_two_pass_reference() {
    let sig = SigShape::new(5, 9);
    let nav = NavShape::new(4, 6);
    for (dtype, max) in DTYPES {
        let frames = random_frames(nav.len(), sig, max, 17);
        let s = run(&frames, nav, sig, dtype, &[Box::new(StatsUdf::new())]);
        let n = frames.len() as f64;
        for p in 0..sig.len() {
            let col: Vec<f64> = frames.iter().map(|f| f[p] as f64).collect();
            let mean = col.iter().sum::<f64>() / n;
            let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            let rel = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1.0);
            assert!(
                rel(buffer(&s, "stats", "mean")[p], mean),
                "{dtype} mean {p}"
            );
            assert!(rel(buffer(&s, "stats", "var")[p], var), "{dtype} var {p}");
            assert!(
                rel(buffer(&s, "stats", "std")[p], var.sqrt()),
                "{dtype} std"
            );
            let mn = col.iter().cloned().fold(f64::INFINITY, f64::min);
            let mx = col.iter().cloned().fold(0.0, f64::max);
            assert_eq!(buffer(&s, "stats", "min")[p], mn);
            assert_eq!(buffer(&s, "stats", "max")[p], mx);
        }
        assert_eq!(buffer(&s, "stats", "frames"), &[24.0]);
    }
    // Constant frames: variance exactly 0, whatever the value.
    let frames = vec![vec![65_000u64; sig.len()]; nav.len()];
    let s = run(&frames, nav, sig, DType::U16, &[Box::new(StatsUdf::new())]);
    assert!(buffer(&s, "stats", "var").iter().all(|&v| v == 0.0));
}

#[test]
fn statistics_stay_exact_when_the_sum_of_squares_passes_2_to_the_53() {
    // Full-scale u32 pixels: each x² is about 2^64, far beyond f64's exact integers. The
    // variance must be the exact one, and the same bits whatever the tiling (merge order).
    let sig = SigShape::new(2, 3);
    let nav = NavShape::new(3, 8);
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let frames: Vec<Vec<u64>> = (0..nav.len())
        .map(|_| {
            (0..sig.len())
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    u32::MAX as u64 - rng % 5_000_000
                })
                .collect()
        })
        .collect();
    let stats = || -> Vec<Box<dyn Udf>> { vec![Box::new(StatsUdf::new())] };
    let s = run(&frames, nav, sig, DType::U32, &stats());
    let n = frames.len() as u128;
    for p in 0..sig.len() {
        let s1: u128 = frames.iter().map(|f| f[p] as u128).sum();
        let s2: u128 = frames.iter().map(|f| f[p] as u128 * f[p] as u128).sum();
        assert!(s2 > 1 << 64, "the test must pass 2^53 by far");
        let want = (n * s2 - s1 * s1) as f64 / (n * n) as f64;
        assert_eq!(buffer(&s, "stats", "var")[p], want, "pixel {p}");
    }
    // One frame per tile: another split and merge order, the same bits.
    let cfg = config(nav, sig, DType::U32, 2);
    let single = run_on_tiles(tiles(&frames, 1, sig, DType::U32), &cfg, &stats());
    for name in ["mean", "var", "std", "sum"] {
        let (a, b) = (buffer(&s, "stats", name), buffer(&single, "stats", name));
        assert!(
            a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{name}: {a:?} != {b:?}"
        );
    }
}

#[test]
fn radial_profile_averages_rings_and_knows_a_radial_pattern() {
    let sig = SigShape::new(21, 24);
    let nav = NavShape::new(2, 3);
    let p = RadialProfileParams {
        cx: 11.3,
        cy: 10.0,
        bin_width: 2.5,
        n_bins: 6,
    };
    let d =
        |i: usize| ((i % sig.cols) as f64 + 0.5 - p.cx).hypot((i / sig.cols) as f64 + 0.5 - p.cy);
    for (dtype, max) in DTYPES {
        let frames = random_frames(nav.len(), sig, max, 23);
        let s = run(
            &frames,
            nav,
            sig,
            dtype,
            &[Box::new(RadialProfileUdf::new(p))],
        );
        let prof = buffer(&s, "radial", "profile");
        for (f, frame) in frames.iter().enumerate() {
            for k in 0..p.n_bins {
                let vals: Vec<f64> = (0..sig.len())
                    .filter(|&i| (d(i) / p.bin_width).floor() as usize == k)
                    .map(|i| frame[i] as f64)
                    .collect();
                let want = vals.iter().sum::<f64>() / vals.len() as f64;
                let got = prof[f * p.n_bins + k];
                assert!(
                    (got - want).abs() <= 1e-9 * want.max(1.0),
                    "{dtype} {f} {k}"
                );
            }
        }
        assert_eq!(buffer(&s, "radial", "radius")[1], 3.75);
    }
    // A pattern that depends on the bin only gives that value per bin.
    let frame: Vec<u64> = (0..sig.len())
        .map(|i| 10 * (d(i) / p.bin_width).floor() as u64)
        .collect();
    let s = run(
        &[frame],
        NavShape::new(1, 1),
        sig,
        DType::U16,
        &[Box::new(RadialProfileUdf::new(p))],
    );
    assert_eq!(
        buffer(&s, "radial", "profile"),
        &[0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
    );
}

#[test]
fn pick_and_monitors_show_the_right_frames() {
    let sig = SigShape::new(4, 5);
    let nav = NavShape::new(3, 4);
    let frames = random_frames(nav.len(), sig, 1000, 31);
    let udfs: Vec<Box<dyn Udf>> = vec![
        Box::new(PickUdf::new(1, 2)),
        Box::new(SignalMonitorUdf::new()),
        Box::new(PartitionMonitorUdf::new()),
    ];
    let s = run(&frames, nav, sig, DType::U16, &udfs);
    let want: Vec<f64> = frames[6].iter().map(|&v| v as f64).collect();
    assert_eq!(buffer(&s, "pick", "intensity"), &want[..]);
    assert_eq!(buffer(&s, "pick", "picked"), &[1.0]);
    // At the end the latest frame is the last one.
    let last: Vec<f64> = frames[11].iter().map(|&v| v as f64).collect();
    assert_eq!(buffer(&s, "monitor", "latest"), &last[..]);
    assert_eq!(buffer(&s, "monitor", "frame"), &[11.0]);
    // The partition monitor holds the sum of some consecutive partition's frames.
    let pm = buffer(&s, "partition_monitor", "intensity");
    let n = buffer(&s, "partition_monitor", "frames")[0] as usize;
    assert!((1..=12).contains(&n));
    let total: f64 = pm.iter().sum();
    assert!(total > 0.0);
    // A position outside the scan is refused.
    let mut cfg = RunConfig::new(nav, sig, DType::U16);
    cfg.threads = Some(1);
    let err = run_tiles(
        std::iter::empty::<Result<_, Infallible>>(),
        &[Box::new(PickUdf::new(3, 0)) as Box<dyn Udf>],
        &cfg,
        None,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(err.to_string().contains("row 3"), "{err}");
}

#[test]
fn record_writes_a_npy_that_reads_back_identically() {
    let dir = std::env::temp_dir().join(format!("stemflow-record-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sig = SigShape::new(6, 5);
    let nav = NavShape::new(3, 7);
    for (dtype, max) in DTYPES {
        let frames = random_frames(nav.len(), sig, max, 41);
        let path = dir.join(format!("rec-{dtype}.npy"));
        let s = run(&frames, nav, sig, dtype, &[Box::new(RecordUdf::new(&path))]);
        assert_eq!(buffer(&s, "record", "frames_written"), &[21.0]);
        // Reading it back (offline path) gives every pixel.
        let mut ds = NpyDataSet::open(&path).unwrap();
        let back = run_dataset(
            &mut ds,
            &[Box::new(PickUdf::new(2, 6)) as Box<dyn Udf>],
            &RunConfig::new(nav, sig, dtype),
            None,
            &mut |_| {},
            &AtomicBool::new(false),
        )
        .unwrap();
        let want: Vec<f64> = frames[20].iter().map(|&v| v as f64).collect();
        assert_eq!(buffer(&back, "pick", "intensity"), &want[..], "{dtype}");
        // Independent of our reader: the last frame's bytes at the end of the file.
        let bytes = std::fs::read(&path).unwrap();
        let size = dtype.size();
        let tail = &bytes[bytes.len() - sig.len() * size..];
        let first = tail[..size]
            .iter()
            .rev()
            .fold(0u64, |a, &b| (a << 8) | b as u64);
        assert_eq!(first, frames[20][0]);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rectangle_polygon_and_custom_masks_sum_their_pixels() {
    let sig = SigShape::new(17, 19);
    let nav = NavShape::new(2, 4);
    // A triangle, a concave "L", a rectangle, a custom checkerboard.
    let tri = vec![(2.1, 2.3), (15.2, 4.1), (6.3, 13.9)];
    let ell = vec![
        (1.0, 1.0),
        (5.0, 1.0),
        (5.0, 10.0),
        (12.0, 10.0),
        (12.0, 14.0),
        (1.0, 14.0),
    ];
    let board: Vec<bool> = (0..sig.len())
        .map(|i| (i % sig.cols + i / sig.cols).is_multiple_of(2))
        .collect();
    let custom = Arc::new(CustomMask {
        sig_shape: sig,
        pixels: board.clone(),
    });
    let udf = MasksUdf::new([
        (
            "rect",
            Mask::Rectangle {
                x: 3.2,
                y: 4.0,
                width: 7.5,
                height: 6.0,
            },
        ),
        (
            "tri",
            Mask::Polygon {
                vertices: tri.clone(),
            },
        ),
        (
            "ell",
            Mask::Polygon {
                vertices: ell.clone(),
            },
        ),
        ("board", Mask::Custom(custom)),
    ]);
    // Naive predicates on pixel centres.
    let in_rect = |x: f64, y: f64| (3.2..10.7).contains(&x) && (4.0..10.0).contains(&y);
    // Barycentric sign test for the triangle.
    let in_tri = |x: f64, y: f64| {
        let s = |(ax, ay): (f64, f64), (bx, by): (f64, f64)| {
            (bx - ax) * (y - ay) - (by - ay) * (x - ax)
        };
        let (a, b, c) = (s(tri[0], tri[1]), s(tri[1], tri[2]), s(tri[2], tri[0]));
        (a > 0.0 && b > 0.0 && c > 0.0) || (a < 0.0 && b < 0.0 && c < 0.0)
    };
    // The L as two rectangles.
    let in_ell = |x: f64, y: f64| {
        ((1.0..5.0).contains(&x) && (1.0..14.0).contains(&y))
            || ((1.0..12.0).contains(&x) && (10.0..14.0).contains(&y))
    };
    for (dtype, max) in DTYPES {
        let frames = random_frames(nav.len(), sig, max, 51);
        let s = run(&frames, nav, sig, dtype, &[Box::new(udf.clone())]);
        for (f, frame) in frames.iter().enumerate() {
            let mut want = [0u64; 4];
            for (i, &v) in frame.iter().enumerate() {
                let (x, y) = ((i % sig.cols) as f64 + 0.5, (i / sig.cols) as f64 + 0.5);
                want[0] += if in_rect(x, y) { v } else { 0 };
                want[1] += if in_tri(x, y) { v } else { 0 };
                want[2] += if in_ell(x, y) { v } else { 0 };
                want[3] += if board[i] { v } else { 0 };
            }
            for (k, name) in ["rect", "tri", "ell", "board"].iter().enumerate() {
                assert_eq!(
                    buffer(&s, "masks", name)[f],
                    want[k] as f64,
                    "{dtype} {name} frame {f}"
                );
            }
        }
    }
    // A custom mask of another shape is refused before the run.
    let wrong = MasksUdf::new([(
        "c",
        Mask::Custom(Arc::new(CustomMask {
            sig_shape: SigShape::new(2, 2),
            pixels: vec![true; 4],
        })),
    )]);
    let cfg = RunConfig::new(nav, sig, DType::U16);
    let err = run_tiles(
        std::iter::empty::<Result<_, Infallible>>(),
        &[Box::new(wrong) as Box<dyn Udf>],
        &cfg,
        None,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
}

#[test]
fn custom_mask_loads_from_npy() {
    let dir = std::env::temp_dir().join(format!("stemflow-mask-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.npy");
    let mut bytes = stemflow_processing::io::npy::header_bytes("<f4", &[2, 3]);
    for v in [0.0f32, 1.5, -0.0, 0.0, 2.0, 0.0] {
        bytes.extend(v.to_le_bytes());
    }
    std::fs::write(&path, bytes).unwrap();
    let m = CustomMask::from_npy(&path).unwrap();
    assert_eq!(m.sig_shape, SigShape::new(2, 3));
    assert_eq!(m.pixels, vec![false, true, false, false, true, false]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A uniform disk about `(x0, y0)`.
fn disk(sig: SigShape, x0: f64, y0: f64, r: f64) -> Vec<u64> {
    (0..sig.len())
        .map(|i| {
            let d = ((i % sig.cols) as f64 + 0.5 - x0).hypot((i / sig.cols) as f64 + 0.5 - y0);
            if d <= r { 50 } else { 0 }
        })
        .collect()
}

#[test]
fn com_flip_divergence_and_curl_of_known_fields() {
    let sig = SigShape::new(48, 48);
    let nav = NavShape::new(3, 4);
    let (cx, cy) = (24.0, 24.0);
    // Shift field (x, y) = (col − 1, row − 1) × 1 pixel: divergence 2, curl 0.
    let radial: Vec<Vec<u64>> = (0..nav.len())
        .map(|i| {
            let (r, c) = ((i / 4) as f64, (i % 4) as f64);
            disk(sig, cx + c - 1.0, cy + r - 1.0, 6.0)
        })
        .collect();
    let p = ComParams {
        cx,
        cy,
        mask_radius: 16.0,
        scan_rotation_deg: 0.0,
        flip_y: false,
    };
    let s = run(
        &radial,
        nav,
        sig,
        DType::U16,
        &[Box::new(ComUdf::from_params(p))],
    );
    for i in 0..nav.len() {
        assert!(
            (buffer(&s, "com", "divergence")[i] - 2.0).abs() < 1e-9,
            "{i}"
        );
        assert!(buffer(&s, "com", "curl")[i].abs() < 1e-9, "{i}");
    }
    // Rotational field (x, y) = (−(row − 1), col − 1): divergence 0, curl 2.
    let rot: Vec<Vec<u64>> = (0..nav.len())
        .map(|i| {
            let (r, c) = ((i / 4) as f64, (i % 4) as f64);
            disk(sig, cx - (r - 1.0), cy + c - 1.0, 6.0)
        })
        .collect();
    let s = run(
        &rot,
        nav,
        sig,
        DType::U16,
        &[Box::new(ComUdf::from_params(p))],
    );
    for i in 0..nav.len() {
        assert!(buffer(&s, "com", "divergence")[i].abs() < 1e-9, "{i}");
        assert!((buffer(&s, "com", "curl")[i] - 2.0).abs() < 1e-9, "{i}");
    }
    // Flip: a disk shifted by (3, −2) reads (3, 2); with a 90° rotation too, (−2, 3).
    let one = vec![disk(sig, cx + 3.0, cy - 2.0, 6.0)];
    let n1 = NavShape::new(1, 1);
    let flipped = ComUdf::from_params(ComParams { flip_y: true, ..p });
    let s = run(&one, n1, sig, DType::U16, &[Box::new(flipped)]);
    assert!((buffer(&s, "com", "x")[0] - 3.0).abs() < 1e-12);
    assert!((buffer(&s, "com", "y")[0] - 2.0).abs() < 1e-12);
    let both = ComUdf::from_params(ComParams {
        flip_y: true,
        scan_rotation_deg: 90.0,
        ..p
    });
    let s = run(&one, n1, sig, DType::U16, &[Box::new(both)]);
    assert!((buffer(&s, "com", "x")[0] + 2.0).abs() < 1e-12);
    assert!((buffer(&s, "com", "y")[0] - 3.0).abs() < 1e-12);
    // One scan position: derivatives are 0, not NaN.
    assert_eq!(buffer(&s, "com", "divergence"), &[0.0]);
}
