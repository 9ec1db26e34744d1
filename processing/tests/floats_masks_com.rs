//! Float pixels (f32, f64) through the virtual detectors, the centre of mass and the radial
//! profile, run by the real engine: against naive f64 references written here (negative
//! and non-integer values), against the integer paths on the same values, NaN propagation,
//! and the params structs' JSON round trip.

mod common;

use common::{Rng, buffer, config, float_tiles, random_frames, run_on_tiles, tiles};
use std::sync::Arc;
use stemflow_core::frame::Tile;
use stemflow_core::{DType, NavShape, SigShape};
use stemflow_processing::udf::{TileView, Udf, UdfMeta};
use stemflow_processing::{
    ComParams, ComUdf, CustomMask, Mask, MasksUdf, RadialProfileParams, RadialProfileUdf,
    ResultDType, RunSummary,
};

const FLOATS: [DType; 2] = [DType::F32, DType::F64];

/// `n` frames of `sig` with values in `[-80, 220)`, fractional, as `dtype` holds them (f32
/// values rounded to f32 and given back as the f64 they are).
fn float_frames(n: usize, sig: SigShape, dtype: DType, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = Rng(seed | 1);
    (0..n)
        .map(|_| {
            (0..sig.len())
                .map(|_| {
                    let v = (rng.next() >> 11) as f64 / (1u64 << 53) as f64 * 300.0 - 80.0;
                    if dtype == DType::F32 {
                        v as f32 as f64
                    } else {
                        v
                    }
                })
                .collect()
        })
        .collect()
}

/// Runs `udfs` over `t` on 2 threads.
fn run(
    t: Vec<Tile>,
    nav: NavShape,
    sig: SigShape,
    dtype: DType,
    udfs: &[Box<dyn Udf>],
) -> RunSummary {
    run_on_tiles(t, &config(nav, sig, dtype, 2), udfs)
}

/// Runs `udfs` over float `frames` in tiles of 3 on 2 threads.
fn run_floats(
    frames: &[Vec<f64>],
    nav: NavShape,
    sig: SigShape,
    dtype: DType,
    udfs: &[Box<dyn Udf>],
) -> RunSummary {
    run(float_tiles(frames, 3, sig, dtype), nav, sig, dtype, udfs)
}

/// Runs `udf()` over the integer `frames` as u16 (tiles of 4) and as each float type (tiles
/// of 3), on 2 threads: the u16 summary, and each float type's.
fn int_and_float_runs(
    frames: &[Vec<u64>],
    nav: NavShape,
    sig: SigShape,
    udf: impl Fn() -> Box<dyn Udf>,
) -> (RunSummary, [(DType, RunSummary); 2]) {
    let u16 = DType::U16;
    let ints = run(tiles(frames, 4, sig, u16), nav, sig, u16, &[udf()]);
    let floats = FLOATS.map(|t| (t, run(tiles(frames, 3, sig, t), nav, sig, t, &[udf()])));
    (ints, floats)
}

/// The distance from `(cx, cy)` to the centre of pixel `(x, y)`.
fn dist(x: usize, y: usize, cx: f64, cy: f64) -> f64 {
    (x as f64 + 0.5 - cx).hypot(y as f64 + 0.5 - cy)
}

/// Panics unless `got` is within `rel` of `want`, relative to `scale` (NaN matches NaN).
fn close(got: f64, want: f64, scale: f64, rel: f64, what: &str) {
    if want.is_nan() {
        assert!(got.is_nan(), "{what}: {got}, want NaN");
        return;
    }
    assert!(
        (got - want).abs() <= rel * scale.abs().max(1.0),
        "{what}: {got}, want {want} (difference {:e}, scale {scale})",
        got - want
    );
}

/// A random custom mask of `sig` (about a third of the pixels) and a mask of every shape,
/// each with its membership test written independently of the library where the shape
/// allows (polygon: the library's even-odd test, checked in mask.rs).
#[allow(clippy::type_complexity)]
fn all_shapes(sig: SigShape) -> Vec<(&'static str, Mask, Box<dyn Fn(usize, usize) -> bool>)> {
    let mut rng = Rng(99);
    let custom: Vec<bool> = (0..sig.len()).map(|_| rng.below(3) == 0).collect();
    let c2 = custom.clone();
    let poly = Mask::Polygon {
        vertices: vec![(2.1, 2.3), (17.2, 4.1), (9.3, 15.9), (4.4, 11.2)],
    };
    let p2 = poly.clone();
    vec![
        (
            "disk",
            Mask::Disk {
                cx: 11.3,
                cy: 9.8,
                r: 5.2,
            },
            Box::new(|x, y| dist(x, y, 11.3, 9.8) <= 5.2),
        ),
        (
            "ring",
            Mask::Ring {
                cx: 11.3,
                cy: 9.8,
                r_inner: 5.2,
                r_outer: 9.7,
            },
            Box::new(|x, y| {
                let d = dist(x, y, 11.3, 9.8);
                d > 5.2 && d <= 9.7
            }),
        ),
        (
            "rect",
            Mask::Rectangle {
                x: 3.2,
                y: 1.0,
                width: 7.5,
                height: 12.0,
            },
            Box::new(|x, y| {
                let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
                (3.2..10.7).contains(&px) && (1.0..13.0).contains(&py)
            }),
        ),
        ("poly", poly, Box::new(move |x, y| p2.contains(x, y))),
        (
            "custom",
            Mask::Custom(Arc::new(CustomMask {
                sig_shape: sig,
                pixels: custom,
            })),
            Box::new(move |x, y| c2[y * sig.cols + x]),
        ),
    ]
}

/// Naive masked sum of `frame` and the sum of the magnitudes (the error scale).
fn naive_sum(frame: &[f64], sig: SigShape, inside: &dyn Fn(usize, usize) -> bool) -> (f64, f64) {
    let (mut s, mut a) = (0.0, 0.0);
    for y in 0..sig.rows {
        for x in 0..sig.cols {
            if inside(x, y) {
                s += frame[y * sig.cols + x];
                a += frame[y * sig.cols + x].abs();
            }
        }
    }
    (s, a)
}

#[test]
fn masks_of_every_shape_match_a_naive_f64_sum() {
    let sig = SigShape::new(19, 23);
    let nav = NavShape::new(3, 5);
    let shapes = all_shapes(sig);
    for dtype in FLOATS {
        let frames = float_frames(nav.len(), sig, dtype, 7);
        let udf = MasksUdf::new(shapes.iter().map(|(n, m, _)| (*n, m.clone())));
        let s = run_floats(&frames, nav, sig, dtype, &[Box::new(udf)]);
        for (name, _, inside) in &shapes {
            let got = buffer(&s, "masks", name);
            let r = s.results[0].buffer(name).unwrap();
            assert_eq!(r.dtype, ResultDType::F64, "{dtype} {name}");
            for (i, f) in frames.iter().enumerate() {
                let (want, scale) = naive_sum(f, sig, inside.as_ref());
                assert!(scale > 100.0, "{name}: the mask covers pixels");
                close(
                    got[i],
                    want,
                    scale,
                    1e-12,
                    &format!("{dtype} {name} frame {i}"),
                );
            }
        }
    }
}

#[test]
fn a_ring_sums_exactly_the_pixels_inside_it() {
    // 0.75 inside the ring, large values of both signs elsewhere: any pixel taken from
    // outside, or missed inside, changes the sum by far more than rounding.
    let sig = SigShape::new(32, 32);
    let (cx, cy, r_in, r_out) = (15.4, 16.9, 4.5, 11.25);
    let mut inside = 0usize;
    let frame: Vec<f64> = (0..sig.len())
        .map(|i| {
            let d = dist(i % 32, i / 32, cx, cy);
            if d > r_in && d <= r_out {
                inside += 1;
                0.75
            } else if i % 2 == 0 {
                1.0e4
            } else {
                -3.0e3
            }
        })
        .collect();
    for dtype in FLOATS {
        let udf = MasksUdf::new([(
            "adf",
            Mask::Ring {
                cx,
                cy,
                r_inner: r_in,
                r_outer: r_out,
            },
        )]);
        let s = run_floats(
            std::slice::from_ref(&frame),
            NavShape::new(1, 1),
            sig,
            dtype,
            &[Box::new(udf)],
        );
        assert_eq!(
            buffer(&s, "masks", "adf")[0],
            0.75 * inside as f64,
            "{dtype}"
        );
    }
}

#[test]
fn masks_on_small_integers_as_floats_equal_the_integer_path() {
    let sig = SigShape::new(19, 23);
    let nav = NavShape::new(4, 5);
    let shapes = all_shapes(sig);
    let frames = random_frames(nav.len(), sig, 1 << 16, 5);
    let udf = || -> Box<dyn Udf> {
        Box::new(MasksUdf::new(
            shapes.iter().map(|(n, m, _)| (*n, m.clone())),
        ))
    };
    let (ints, floats) = int_and_float_runs(&frames, nav, sig, udf);
    for (dtype, fl) in floats {
        for (name, _, _) in &shapes {
            // Sums of integers below 2^53 are exact in f64: equal, not just close.
            assert_eq!(
                buffer(&fl, "masks", name),
                buffer(&ints, "masks", name),
                "{dtype} {name}"
            );
        }
        assert_eq!(
            ints.results[0].buffer("disk").unwrap().dtype,
            ResultDType::U64
        );
    }
}

#[test]
fn a_nan_pixel_spoils_only_the_sums_that_contain_it() {
    let sig = SigShape::new(24, 24);
    let nav = NavShape::new(2, 3);
    let (cx, cy) = (12.0, 12.0);
    let nan_at = (12, 12); // the disk's centre pixel, outside the ring
    assert!(dist(nan_at.0, nan_at.1, cx, cy) < 3.0);
    for dtype in FLOATS {
        let mut frames = float_frames(nav.len(), sig, dtype, 3);
        frames[4][nan_at.1 * sig.cols + nan_at.0] = f64::NAN;
        let masks = MasksUdf::new([
            ("bf", Mask::Disk { cx, cy, r: 3.0 }),
            (
                "adf",
                Mask::Ring {
                    cx,
                    cy,
                    r_inner: 3.0,
                    r_outer: 9.0,
                },
            ),
        ]);
        let com = ComUdf::new(cx, cy, 3.0);
        let radial = RadialProfileUdf::new(RadialProfileParams {
            cx,
            cy,
            bin_width: 1.0,
            n_bins: 12,
        });
        let s = run_floats(
            &frames,
            nav,
            sig,
            dtype,
            &[Box::new(masks), Box::new(com), Box::new(radial)],
        );
        let (bf, adf) = (buffer(&s, "masks", "bf"), buffer(&s, "masks", "adf"));
        for i in 0..nav.len() {
            assert_eq!(bf[i].is_nan(), i == 4, "{dtype} bf frame {i}: {}", bf[i]);
            let (want, scale) = naive_sum(&frames[i], sig, &|x, y| {
                let d = dist(x, y, cx, cy);
                d > 3.0 && d <= 9.0
            });
            close(
                adf[i],
                want,
                scale,
                1e-12,
                &format!("{dtype} adf frame {i}"),
            );
            assert_eq!(
                buffer(&s, "com", "x")[i].is_nan(),
                i == 4,
                "{dtype} com frame {i}"
            );
        }
        // The NaN pixel (distance √0.5 from the centre) lies in bin 0 only.
        let profile = buffer(&s, "radial", "profile");
        for (k, v) in profile[4 * 12..5 * 12].iter().enumerate() {
            assert_eq!(v.is_nan(), k == 0, "{dtype} bin {k}: {v}");
        }
        assert!(profile[..4 * 12].iter().all(|v| v.is_finite()));
    }
}

/// Naive signed-weight CoM of `frame` in the disk `(cx, cy, r)`, relative to `(cx, cy)`.
fn naive_com(frame: &[f64], sig: SigShape, cx: f64, cy: f64, r: f64) -> (f64, f64) {
    let (mut t, mut mx, mut my) = (0.0, 0.0, 0.0);
    for y in 0..sig.rows {
        for x in 0..sig.cols {
            if dist(x, y, cx, cy) <= r {
                let v = frame[y * sig.cols + x];
                t += v;
                mx += v * (x as f64 + 0.5);
                my += v * (y as f64 + 0.5);
            }
        }
    }
    (mx / t - cx, my / t - cy)
}

/// `(x, y)` flipped in y, then rotated by `deg` degrees, as ComUdf documents.
fn flip_rotate(x: f64, y: f64, flip: bool, deg: f64) -> (f64, f64) {
    let y = if flip { -y } else { y };
    let (s, c) = deg.to_radians().sin_cos();
    (x * c - y * s, x * s + y * c)
}

#[test]
fn com_with_signed_weights_matches_a_naive_weighted_mean() {
    let sig = SigShape::new(26, 30);
    let nav = NavShape::new(3, 4);
    let (cx, cy, r) = (14.7, 12.2, 8.6);
    for dtype in FLOATS {
        let frames = float_frames(nav.len(), sig, dtype, 21);
        assert!(frames[0].iter().any(|&v| v < 0.0));
        let com = ComUdf::from_params(ComParams {
            cx,
            cy,
            mask_radius: r,
            scan_rotation_deg: -23.0,
            flip_y: true,
        });
        let s = run_floats(&frames, nav, sig, dtype, &[Box::new(com)]);
        for (i, f) in frames.iter().enumerate() {
            let (x, y) = naive_com(f, sig, cx, cy, r);
            let (x, y) = flip_rotate(x, y, true, -23.0);
            let what = format!("{dtype} frame {i}");
            close(buffer(&s, "com", "x")[i], x, 10.0, 1e-11, &what);
            close(buffer(&s, "com", "y")[i], y, 10.0, 1e-11, &what);
            close(
                buffer(&s, "com", "magnitude")[i],
                x.hypot(y),
                10.0,
                1e-11,
                &what,
            );
        }
    }
}

#[test]
fn com_of_a_disk_shifted_by_a_sub_pixel_vector_is_that_vector() {
    // A disk of non-integer values, symmetric about the centre of pixel (20, 18), moved by
    // (3.3, -2.6) pixels with bilinear weights: the mixture of four integer-shifted copies
    // (same total, centres 1 pixel apart) has its centre of mass exactly at the shift.
    let sig = SigShape::new(40, 44);
    let (c0x, c0y) = (20.5, 18.5);
    let (sx, sy) = (3.3f64, -2.6f64);
    let (ix, iy) = (sx.floor() as i64, sy.floor() as i64);
    let (a, b) = (sx - ix as f64, sy - iy as f64);
    let disk = |x: i64, y: i64| -> f64 {
        let d = (x as f64 + 0.5 - c0x).hypot(y as f64 + 0.5 - c0y);
        if d <= 6.0 {
            3.25 + 0.5 * (6.0 - d)
        } else {
            0.0
        }
    };
    let frame: Vec<f64> = (0..sig.len() as i64)
        .map(|i| {
            let (x, y) = (i % sig.cols as i64 - ix, i / sig.cols as i64 - iy);
            (1.0 - a) * (1.0 - b) * disk(x, y)
                + a * (1.0 - b) * disk(x - 1, y)
                + (1.0 - a) * b * disk(x, y - 1)
                + a * b * disk(x - 1, y - 1)
        })
        .collect();
    for (flip, deg) in [(false, 0.0), (true, 37.0)] {
        let com = ComUdf::new(c0x, c0y, 14.0)
            .with_flip_y(flip)
            .with_scan_rotation(deg);
        let (wx, wy) = flip_rotate(sx, sy, flip, deg);
        // f64 frames hold the mixture as computed; f32 ones round each pixel (relative
        // 6e-8), which moves the centre by far less than 1e-5 pixels.
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            let s = run_floats(
                std::slice::from_ref(&frame),
                NavShape::new(1, 1),
                sig,
                dtype,
                &[Box::new(com.clone())],
            );
            let what = format!("{dtype} flip {flip} rotation {deg}");
            close(buffer(&s, "com", "x")[0], wx, 1.0, tol, &what);
            close(buffer(&s, "com", "y")[0], wy, 1.0, tol, &what);
            close(
                buffer(&s, "com", "magnitude")[0],
                sx.hypot(sy),
                1.0,
                tol,
                &what,
            );
        }
    }
}

#[test]
fn com_of_integer_and_float_frames_agree_in_every_output() {
    let sig = SigShape::new(32, 36);
    let nav = NavShape::new(4, 5);
    let mut frames = random_frames(nav.len(), sig, 4096, 13);
    // A frame with nothing in the disk: NaN in both, and NaN next to it in the derivatives.
    frames[7].iter_mut().for_each(|v| *v = 0);
    let com = || -> Box<dyn Udf> {
        Box::new(
            ComUdf::new(17.3, 15.1, 9.4)
                .with_scan_rotation(31.0)
                .with_flip_y(true),
        )
    };
    let (ints, floats) = int_and_float_runs(&frames, nav, sig, com);
    for (dtype, fl) in floats {
        for name in ["x", "y", "magnitude", "divergence", "curl"] {
            let (f, i) = (buffer(&fl, "com", name), buffer(&ints, "com", name));
            // Derivatives at a position use its neighbours only (central differences).
            let k = if name == "divergence" || name == "curl" {
                8
            } else {
                7
            };
            assert!(
                i[k].is_nan() && f[k].is_nan(),
                "{dtype} {name}: empty frame"
            );
            // Moments of integers below 2^53 are exact in f64 too, and both paths share
            // the division, flip and rotation: the same bits, not just close.
            for (k, (&a, &b)) in f.iter().zip(i).enumerate() {
                close(a, b, 10.0, 1e-12, &format!("{dtype} {name} position {k}"));
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "{dtype} {name} position {k}: {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn float_tasks_give_the_same_bits_whole_or_in_row_bands() {
    let sig = SigShape::new(21, 17);
    let n = 5;
    for dtype in FLOATS {
        let frames = float_frames(n, sig, dtype, 41);
        let tile = float_tiles(&frames, n, sig, dtype).remove(0);
        let view = TileView::of(&tile);
        let meta = UdfMeta {
            nav_shape: NavShape::new(1, n),
            sig_shape: sig,
            dtype,
        };
        let udfs: Vec<(Box<dyn Udf>, usize)> = vec![
            (
                Box::new(MasksUdf::new(
                    all_shapes(sig).into_iter().map(|(n, m, _)| (n, m)),
                )),
                5,
            ),
            (
                Box::new(ComUdf::new(8.2, 10.9, 6.3).with_scan_rotation(12.0)),
                3,
            ),
        ];
        for (udf, width) in udfs {
            let mut whole = vec![f64::NAN; n * width];
            udf.new_partition(&meta).process_tile(&view, &mut whole);
            for band_rows in [1, 4, 21] {
                let mut task = udf.new_partition(&meta);
                assert!(task.bands());
                let mut banded = vec![0.0; n * width];
                for r in (0..sig.rows).step_by(band_rows) {
                    task.process_band(&view, r..(r + band_rows).min(sig.rows), &mut banded);
                }
                task.finish_bands(&view, &mut banded);
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&whole),
                    bits(&banded),
                    "{dtype} {} bands of {band_rows}",
                    udf.name()
                );
            }
        }
    }
}

#[test]
fn radial_profile_of_floats_is_the_naive_per_bin_mean() {
    let sig = SigShape::new(22, 27);
    let nav = NavShape::new(2, 4);
    let p = RadialProfileParams {
        cx: 12.6,
        cy: 10.1,
        bin_width: 1.7,
        n_bins: 10,
    };
    for dtype in FLOATS {
        let frames = float_frames(nav.len(), sig, dtype, 17);
        let s = run_floats(
            &frames,
            nav,
            sig,
            dtype,
            &[Box::new(RadialProfileUdf::new(p))],
        );
        let profile = buffer(&s, "radial", "profile");
        let mut counts = vec![0usize; p.n_bins];
        for (i, f) in frames.iter().enumerate() {
            let mut sums = vec![0.0; p.n_bins];
            let mut mags = vec![0.0; p.n_bins];
            counts.fill(0);
            for y in 0..sig.rows {
                for x in 0..sig.cols {
                    let k = (dist(x, y, p.cx, p.cy) / p.bin_width).floor() as usize;
                    if k < p.n_bins {
                        sums[k] += f[y * sig.cols + x];
                        mags[k] += f[y * sig.cols + x].abs();
                        counts[k] += 1;
                    }
                }
            }
            for k in 0..p.n_bins {
                let want = sums[k] / counts[k] as f64;
                let scale = mags[k] / counts[k] as f64;
                close(
                    profile[i * p.n_bins + k],
                    want,
                    scale,
                    1e-12,
                    &format!("{dtype} frame {i} bin {k}"),
                );
            }
        }
        let pixels = buffer(&s, "radial", "pixels");
        assert_eq!(pixels, counts.iter().map(|&c| c as f64).collect::<Vec<_>>());
    }
}

/// Runs `a` and `b` on the same float frames; panics unless their results are bitwise
/// identical.
fn same_results(a: Box<dyn Udf>, b: Box<dyn Udf>, sig: SigShape) {
    let nav = NavShape::new(2, 3);
    let frames = float_frames(nav.len(), sig, DType::F32, 55);
    let ra = run_floats(&frames, nav, sig, DType::F32, &[a]);
    let rb = run_floats(&frames, nav, sig, DType::F32, &[b]);
    common::assert_identical(&ra.results, &rb.results);
}

#[test]
fn params_round_trip_through_json_to_the_same_results() {
    let sig = SigShape::new(19, 23);

    let masks = MasksUdf::new(all_shapes(sig).into_iter().map(|(n, m, _)| (n, m)))
        .with_source("custom", "/data/masks/custom.npy");
    let v = masks.params();
    assert_eq!(v["masks"][0]["name"], "disk");
    assert_eq!(v["masks"][0]["mask"]["shape"], "disk");
    assert_eq!(v["masks"][4]["source"], "/data/masks/custom.npy");
    assert!(v["masks"][0]["source"].is_null());
    let text = serde_json::to_string(&v).unwrap();
    let back = MasksUdf::from_params(serde_json::from_str(&text).unwrap());
    assert_eq!(back.params(), v);
    assert_eq!(back.masks(), masks.masks());
    same_results(Box::new(masks), Box::new(back), sig);

    // Every default resolved: no rotation, no flip.
    let com = ComUdf::new(11.5, 9.25, 6.0);
    assert_eq!(
        com.params(),
        serde_json::json!({"cx": 11.5, "cy": 9.25, "mask_radius": 6.0,
            "scan_rotation_deg": 0.0, "flip_y": false})
    );
    let com = com.with_scan_rotation(-14.5).with_flip_y(true);
    let text = serde_json::to_string(&com.params()).unwrap();
    let p: ComParams = serde_json::from_str(&text).unwrap();
    assert_eq!(p, com.to_params());
    let back = ComUdf::from_params(p);
    assert_eq!(back.params(), com.params());
    same_results(Box::new(com), Box::new(back), sig);

    let radial = RadialProfileUdf::new(RadialProfileParams {
        cx: 10.0,
        cy: 8.5,
        bin_width: 1.25,
        n_bins: 9,
    });
    let text = serde_json::to_string(&radial.params()).unwrap();
    let back = RadialProfileUdf::from_params(serde_json::from_str(&text).unwrap());
    assert_eq!(back.params(), radial.params());
    same_results(Box::new(radial), Box::new(back), sig);

    // Unknown fields are refused rather than ignored.
    assert!(
        serde_json::from_str::<ComParams>(
            r#"{"cx": 1, "cy": 1, "mask_radius": 1,
        "scan_rotation_deg": 0, "flip_y": false, "radius": 3}"#
        )
        .is_err()
    );
}
