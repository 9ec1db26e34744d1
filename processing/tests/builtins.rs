//! Every built-in UDF against a naive reference (f64 loops written here) on synthetic
//! frames with known answers, for u8, u16 and u32 pixels.

mod common;

use common::{buffer, config, random_frames, run_on_tiles, tiles};
use std::convert::Infallible;
use std::sync::atomic::AtomicBool;
use stemflow_core::{DType, NavShape, SigShape};
use stemflow_processing::udf::Udf;
use stemflow_processing::{
    ComUdf, Mask, MasksUdf, RadialProfileParams, RadialProfileUdf, RunConfig, RunSummary,
    SumSigUdf, SumUdf, run_tiles,
};

const DTYPES: [(DType, u64); 3] = [
    (DType::U8, 1 << 8),
    (DType::U16, 1 << 16),
    (DType::U32, 1 << 32),
];

/// Runs `udfs` offline over `frames` in tiles of 4 on 2 threads.
fn run(
    frames: &[Vec<u64>],
    nav: NavShape,
    sig: SigShape,
    dtype: DType,
    udfs: &[Box<dyn Udf>],
) -> RunSummary {
    run_on_tiles(
        tiles(frames, 4, sig, dtype),
        &config(nav, sig, dtype, 2),
        udfs,
    )
}

/// The distance from `(cx, cy)` to the centre of pixel `(x, y)`.
fn dist(x: usize, y: usize, cx: f64, cy: f64) -> f64 {
    (x as f64 + 0.5 - cx).hypot(y as f64 + 0.5 - cy)
}

#[test]
fn sum_is_the_exact_pixelwise_sum_of_all_frames() {
    let sig = SigShape::new(9, 13);
    let nav = NavShape::new(3, 10);
    for (dtype, max) in DTYPES {
        let frames = random_frames(nav.len(), sig, max, 11);
        let s = run(&frames, nav, sig, dtype, &[Box::new(SumUdf::new())]);
        let got = buffer(&s, "sum", "intensity");
        for p in 0..sig.len() {
            let want: f64 = frames.iter().map(|f| f[p] as f64).sum();
            assert_eq!(got[p], want, "{dtype} pixel {p}");
        }
        assert_eq!(s.frames_processed, 30);
    }
}

#[test]
fn sum_of_maximal_u16_frames_is_exact() {
    // 300 frames of 65535 everywhere: 19 660 500 per pixel, exactly.
    let sig = SigShape::new(4, 4);
    let nav = NavShape::new(10, 30);
    let frames = vec![vec![u16::MAX as u64; sig.len()]; nav.len()];
    let s = run(&frames, nav, sig, DType::U16, &[Box::new(SumUdf::new())]);
    assert!(
        buffer(&s, "sum", "intensity")
            .iter()
            .all(|&v| v == 300.0 * 65535.0)
    );
}

#[test]
fn sum_sig_is_each_frames_total() {
    let sig = SigShape::new(7, 11);
    let nav = NavShape::new(4, 5);
    for (dtype, max) in DTYPES {
        let frames = random_frames(nav.len(), sig, max, 5);
        let s = run(&frames, nav, sig, dtype, &[Box::new(SumSigUdf::new())]);
        let got = buffer(&s, "sum_sig", "intensity");
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(
                got[i],
                f.iter().map(|&v| v as f64).sum::<f64>(),
                "{dtype} frame {i}"
            );
        }
    }
}

#[test]
fn masks_sum_the_pixels_inside_disk_and_ring() {
    let sig = SigShape::new(40, 48);
    let nav = NavShape::new(2, 9);
    let (cx, cy) = (23.7, 19.2);
    let udf = MasksUdf::new([
        ("bf", Mask::Disk { cx, cy, r: 6.3 }),
        (
            "adf",
            Mask::Ring {
                cx,
                cy,
                r_inner: 9.1,
                r_outer: 17.6,
            },
        ),
        (
            "off",
            Mask::Disk {
                cx: 2.0,
                cy: 3.0,
                r: 4.4,
            },
        ),
    ]);
    for (dtype, max) in DTYPES {
        let frames = random_frames(nav.len(), sig, max, 3);
        let s = run(&frames, nav, sig, dtype, &[Box::new(udf.clone())]);
        for (i, f) in frames.iter().enumerate() {
            let (mut bf, mut adf, mut off) = (0.0, 0.0, 0.0);
            for y in 0..sig.rows {
                for x in 0..sig.cols {
                    let v = f[y * sig.cols + x] as f64;
                    let d = dist(x, y, cx, cy);
                    if d <= 6.3 {
                        bf += v;
                    }
                    if d > 9.1 && d <= 17.6 {
                        adf += v;
                    }
                    if dist(x, y, 2.0, 3.0) <= 4.4 {
                        off += v;
                    }
                }
            }
            assert_eq!(buffer(&s, "masks", "bf")[i], bf, "{dtype} frame {i}");
            assert_eq!(buffer(&s, "masks", "adf")[i], adf, "{dtype} frame {i}");
            assert_eq!(buffer(&s, "masks", "off")[i], off, "{dtype} frame {i}");
        }
    }
}

/// A uniform disk of radius `r` about `(x0, y0)` (a pixel corner or centre, so the disk is
/// mirror-symmetric about it and its centre of mass is exactly there).
fn disk_frame(sig: SigShape, x0: f64, y0: f64, r: f64, value: u64) -> Vec<u64> {
    (0..sig.len())
        .map(|i| {
            let d = dist(i % sig.cols, i / sig.cols, x0, y0);
            if d <= r { value } else { 0 }
        })
        .collect()
}

#[test]
fn com_of_a_shifted_disk_is_the_shift() {
    let sig = SigShape::new(64, 64);
    let shifts = [(3.0, -2.0), (-4.5, 1.5), (0.0, 0.0), (6.0, 5.5)];
    let nav = NavShape::new(1, shifts.len() + 1);
    let (cx, cy) = (32.0, 32.0);
    let mut frames: Vec<Vec<u64>> = shifts
        .iter()
        .map(|&(dx, dy)| disk_frame(sig, cx + dx, cy + dy, 8.0, 100))
        .collect();
    // Last frame: nothing inside the CoM disk.
    frames.push(vec![0; sig.len()]);
    for (dtype, _) in DTYPES {
        let s = run(
            &frames,
            nav,
            sig,
            dtype,
            &[Box::new(ComUdf::new(cx, cy, 20.0))],
        );
        let (x, y, m) = (
            buffer(&s, "com", "x"),
            buffer(&s, "com", "y"),
            buffer(&s, "com", "magnitude"),
        );
        for (i, &(dx, dy)) in shifts.iter().enumerate() {
            assert!(
                (x[i] - dx).abs() < 1e-12,
                "{dtype} frame {i}: x {} vs {dx}",
                x[i]
            );
            assert!(
                (y[i] - dy).abs() < 1e-12,
                "{dtype} frame {i}: y {} vs {dy}",
                y[i]
            );
            assert!((m[i] - f64::hypot(dx, dy)).abs() < 1e-12);
        }
        let last = shifts.len();
        assert!(x[last].is_nan() && y[last].is_nan() && m[last].is_nan());
    }
}

#[test]
fn com_matches_a_naive_reference_on_noise() {
    // A width that spans no whole vector register and one that spans two.
    for (sig, cx) in [(SigShape::new(30, 36), 17.3), (SigShape::new(30, 64), 40.3)] {
        com_against_naive(sig, cx);
    }
}

fn com_against_naive(sig: SigShape, cx: f64) {
    let nav = NavShape::new(3, 4);
    let (cy, r) = (14.6, 9.7);
    for (dtype, max) in DTYPES {
        let frames = random_frames(nav.len(), sig, max, 9);
        let s = run(
            &frames,
            nav,
            sig,
            dtype,
            &[Box::new(ComUdf::new(cx, cy, r))],
        );
        for (i, f) in frames.iter().enumerate() {
            let (mut t, mut sx, mut sy) = (0.0, 0.0, 0.0);
            for yy in 0..sig.rows {
                for xx in 0..sig.cols {
                    if dist(xx, yy, cx, cy) <= r {
                        let v = f[yy * sig.cols + xx] as f64;
                        t += v;
                        sx += v * (xx as f64 + 0.5);
                        sy += v * (yy as f64 + 0.5);
                    }
                }
            }
            let (wx, wy) = (sx / t - cx, sy / t - cy);
            let tol = 1e-9 * (1.0 + wx.abs() + wy.abs());
            assert!(
                (buffer(&s, "com", "x")[i] - wx).abs() < tol,
                "{dtype} frame {i}"
            );
            assert!(
                (buffer(&s, "com", "y")[i] - wy).abs() < tol,
                "{dtype} frame {i}"
            );
        }
    }
}

#[test]
fn com_scan_rotation_rotates_the_shift() {
    let sig = SigShape::new(48, 48);
    let nav = NavShape::new(1, 1);
    let frames = vec![disk_frame(sig, 27.0, 22.0, 6.0, 7)];
    let udf = ComUdf::new(24.0, 24.0, 15.0).with_scan_rotation(90.0);
    let s = run(&frames, nav, sig, DType::U16, &[Box::new(udf)]);
    // Shift (3, -2) rotated by 90°: (2, 3).
    assert!((buffer(&s, "com", "x")[0] - 2.0).abs() < 1e-12);
    assert!((buffer(&s, "com", "y")[0] - 3.0).abs() < 1e-12);
}

#[test]
fn bad_parameters_stop_the_run_before_it_starts() {
    let sig = SigShape::new(8, 8);
    let nav = NavShape::new(1, 1);
    let cfg = RunConfig::new(nav, sig, DType::U16);
    let cases: Vec<(Vec<Box<dyn Udf>>, &str)> = vec![
        (
            vec![Box::new(MasksUdf::new([(
                "a",
                Mask::Disk {
                    cx: 1.0,
                    cy: 1.0,
                    r: -2.0,
                },
            )]))],
            "mask `a`",
        ),
        (
            vec![Box::new(MasksUdf::new([
                (
                    "a",
                    Mask::Disk {
                        cx: 1.0,
                        cy: 1.0,
                        r: 2.0,
                    },
                ),
                (
                    "a",
                    Mask::Disk {
                        cx: 1.0,
                        cy: 1.0,
                        r: 3.0,
                    },
                ),
            ]))],
            "used twice",
        ),
        (
            vec![Box::new(SumUdf::new()), Box::new(SumUdf::new())],
            "two UDFs are named `sum`",
        ),
        (vec![Box::new(ComUdf::new(4.0, 4.0, f64::NAN))], "finite"),
        (
            vec![Box::new(RadialProfileUdf::new(RadialProfileParams {
                cx: 4.0,
                cy: 4.0,
                bin_width: 1e-6,
                n_bins: 1_000_000,
            }))],
            "exceeds the frame's 64 pixels",
        ),
    ];
    for (udfs, want) in cases {
        let err = run_tiles(
            std::iter::empty::<Result<_, Infallible>>(),
            &udfs,
            &cfg,
            None,
            &mut |_| {},
            &AtomicBool::new(false),
        )
        .unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
    }
}
