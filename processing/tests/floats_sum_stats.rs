//! Float pixel input (f32, f64) for sum, sum over signal, stats, pick, the two monitors and
//! record, run through the engine against naive f64 references written here: relative
//! tolerances where the sums are rounded, exact where values are copied or are small
//! binary fractions; NaN propagation; independence from tiling and threads; the `.npy`
//! written for float frames, parsed by hand; the params JSON of pick and record.

mod common;

use common::{Rng, buffer, config, float_tiles, result_buffer, run_on_tiles};
use serde_json::json;
use stemflow_core::frame::PixelsRef;
use stemflow_core::{DType, NavShape, SigShape};
use stemflow_processing::udf::{ResultDType, TileView, Udf, UdfMeta, new_results};
use stemflow_processing::{
    PartitionMonitorUdf, PickUdf, RecordUdf, RunSummary, SignalMonitorUdf, StatsUdf, SumSigUdf,
    SumUdf,
};

const FLOATS: [DType; 2] = [DType::F32, DType::F64];

/// Uniform in `[lo, hi)`, rounded to the precision of `dtype` (so that the f64 values
/// used by the references are exactly the pixels the engine sees).
fn uniform(rng: &mut Rng, lo: f64, hi: f64, dtype: DType) -> f64 {
    let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
    round_to(lo + (hi - lo) * u, dtype)
}

fn round_to(v: f64, dtype: DType) -> f64 {
    match dtype {
        DType::F32 => v as f32 as f64,
        _ => v,
    }
}

/// `n` frames of `sig`, values uniform in `[lo, hi)` at the precision of `dtype`.
fn float_frames(
    n: usize,
    sig: SigShape,
    lo: f64,
    hi: f64,
    dtype: DType,
    seed: u64,
) -> Vec<Vec<f64>> {
    let mut rng = Rng(seed | 1);
    (0..n)
        .map(|_| {
            (0..sig.len())
                .map(|_| uniform(&mut rng, lo, hi, dtype))
                .collect()
        })
        .collect()
}

/// Boxes UDFs into the slice that [`run`] takes.
macro_rules! udfs {
    ($($udf:expr),+ $(,)?) => {
        &[$(Box::new($udf) as Box<dyn Udf>),+]
    };
}

/// Runs `udfs` offline over `frames` (scan `nav` of frames `sig`, pixels of `dtype`) in tiles
/// of `per_tile` on `threads` workers.
fn run(
    frames: &[Vec<f64>],
    (nav, sig, dtype): (NavShape, SigShape, DType),
    (per_tile, threads): (usize, usize),
    udfs: &[Box<dyn Udf>],
) -> RunSummary {
    let t = float_tiles(frames, per_tile, sig, dtype);
    run_on_tiles(t, &config(nav, sig, dtype, threads), udfs)
}

/// Two different splits: tiles of 3 frames on 1 worker, tiles of 16 on 3 workers.
const SPLITS: [(usize, usize); 2] = [(3, 1), (16, 3)];

/// Panics unless `|got − want| <= rel · scale` (NaN only equal to NaN).
fn assert_close(got: f64, want: f64, rel: f64, scale: f64, what: &str) {
    if want.is_nan() {
        assert!(got.is_nan(), "{what}: got {got}, want NaN");
        return;
    }
    let err = (got - want).abs();
    assert!(
        err <= rel * scale,
        "{what}: got {got}, want {want} (error {err:e} > {rel:e} · {scale:e})"
    );
}

/// The dtype a result buffer declares.
fn dtype_of(s: &RunSummary, udf: &str, name: &str) -> ResultDType {
    result_buffer(s, udf, name).dtype
}

#[test]
fn sum_and_sum_sig_match_a_naive_f64_sum_for_any_split() {
    let sig = SigShape::new(7, 11);
    let nav = NavShape::new(5, 8);
    for dtype in FLOATS {
        // Negative and non-integer values.
        let frames = float_frames(nav.len(), sig, -50.0, 50.0, dtype, 3);
        let mut sums = Vec::new();
        for split in SPLITS {
            let s = run(
                &frames,
                (nav, sig, dtype),
                split,
                udfs![SumUdf::new(), SumSigUdf::new()],
            );
            assert_eq!(s.frames_processed, nav.len() as u64);
            let got = buffer(&s, "sum", "intensity");
            for p in 0..sig.len() {
                let want: f64 = frames.iter().map(|f| f[p]).sum();
                let scale: f64 = frames.iter().map(|f| f[p].abs()).sum();
                assert_close(
                    got[p],
                    want,
                    1e-12,
                    scale,
                    &format!("{dtype} {split:?} sum {p}"),
                );
            }
            let per_frame = buffer(&s, "sum_sig", "intensity");
            for (i, f) in frames.iter().enumerate() {
                let want: f64 = f.iter().sum();
                let scale: f64 = f.iter().map(|v| v.abs()).sum();
                assert_close(
                    per_frame[i],
                    want,
                    1e-12,
                    scale,
                    &format!("{dtype} sum_sig {i}"),
                );
            }
            assert_eq!(dtype_of(&s, "sum", "intensity"), ResultDType::F64);
            sums.push(got.to_vec());
        }
        // The two splits agree with each other within the tolerance too.
        for (a, b) in sums[0].iter().zip(&sums[1]) {
            assert_close(*a, *b, 1e-12, 50.0 * nav.len() as f64, "splits");
        }
    }
}

#[test]
fn small_binary_fractions_sum_exactly() {
    // Multiples of 1/4 in [-64, 64): every partial sum is exact in f64 (and in f32 per
    // pixel), so the results are exact whatever the order of additions.
    let sig = SigShape::new(4, 5);
    let nav = NavShape::new(3, 7);
    for dtype in FLOATS {
        let mut rng = Rng(99);
        let frames: Vec<Vec<f64>> = (0..nav.len())
            .map(|_| {
                (0..sig.len())
                    .map(|_| (rng.below(512) as f64 - 256.0) / 4.0)
                    .collect()
            })
            .collect();
        for split in SPLITS {
            let s = run(
                &frames,
                (nav, sig, dtype),
                split,
                udfs![SumUdf::new(), SumSigUdf::new(), StatsUdf::new()],
            );
            let want: Vec<f64> = (0..sig.len())
                .map(|p| frames.iter().map(|f| f[p]).sum())
                .collect();
            assert_eq!(
                buffer(&s, "sum", "intensity"),
                &want[..],
                "{dtype} {split:?}"
            );
            assert_eq!(buffer(&s, "stats", "sum"), &want[..], "{dtype} {split:?}");
            let per_frame: Vec<f64> = frames.iter().map(|f| f.iter().sum()).collect();
            assert_eq!(buffer(&s, "sum_sig", "intensity"), &per_frame[..]);
        }
    }
}

/// Per pixel: (mean, population variance) by two passes in f64 — the mean, then
/// Σ(x − mean)² / n.
fn two_pass(frames: &[Vec<f64>], p: usize) -> (f64, f64) {
    let n = frames.len() as f64;
    let mean = frames.iter().map(|f| f[p]).sum::<f64>() / n;
    let var = frames.iter().map(|f| (f[p] - mean).powi(2)).sum::<f64>() / n;
    (mean, var)
}

/// Per pixel: the population variance by the naive single pass Σx²/n − (Σx/n)².
fn naive_var(frames: &[Vec<f64>], p: usize) -> f64 {
    let n = frames.len() as f64;
    let s1: f64 = frames.iter().map(|f| f[p]).sum();
    let s2: f64 = frames.iter().map(|f| f[p] * f[p]).sum();
    s2 / n - (s1 / n) * (s1 / n)
}

#[test]
fn stats_match_a_two_pass_reference_at_a_large_offset() {
    // A large offset beside a spread of about ±1: Σx² carries the offset squared, so a
    // one-pass Σx²-based variance loses most or all of its digits (checked below), while
    // Welford/Chan must agree with the two-pass reference.
    // Enough frames (300 in tiles of 4) that several workers take part and merge.
    let sig = SigShape::new(12, 16);
    let nav = NavShape::new(12, 25);
    // f32 holds 1e6 to 1/16; f64 holds 1e8 to 1.5e-8.
    for (dtype, offset) in [(DType::F32, 1e6), (DType::F64, 1e8)] {
        let frames = float_frames(nav.len(), sig, offset - 1.0, offset + 1.0, dtype, 17);
        const VAR_TOL: f64 = 1e-11;
        // The tolerance separates the methods: the naive variance misses it.
        let naive_worst = (0..sig.len())
            .map(|p| {
                let (_, v) = two_pass(&frames, p);
                ((naive_var(&frames, p) - v) / v).abs()
            })
            .fold(0.0, f64::max);
        assert!(
            naive_worst > 100.0 * VAR_TOL,
            "{dtype}: naive error only {naive_worst:e}"
        );

        let mut vars = Vec::new();
        for split in SPLITS {
            let s = run(&frames, (nav, sig, dtype), split, udfs![StatsUdf::new()]);
            let (mean, var, std) = (
                buffer(&s, "stats", "mean"),
                buffer(&s, "stats", "var"),
                buffer(&s, "stats", "std"),
            );
            let (min, max, sum) = (
                buffer(&s, "stats", "min"),
                buffer(&s, "stats", "max"),
                buffer(&s, "stats", "sum"),
            );
            assert_eq!(buffer(&s, "stats", "frames"), &[nav.len() as f64]);
            for p in 0..sig.len() {
                let what = format!("{dtype} {split:?} pixel {p}");
                let (m, v) = two_pass(&frames, p);
                assert_close(mean[p], m, 1e-12, m.abs(), &format!("{what} mean"));
                assert_close(var[p], v, VAR_TOL, v, &format!("{what} var"));
                assert_close(std[p], v.sqrt(), VAR_TOL, v.sqrt(), &format!("{what} std"));
                let s1: f64 = frames.iter().map(|f| f[p]).sum();
                assert_close(sum[p], s1, 1e-12, s1.abs(), &format!("{what} sum"));
                let lo = frames.iter().map(|f| f[p]).fold(f64::INFINITY, f64::min);
                let hi = frames
                    .iter()
                    .map(|f| f[p])
                    .fold(f64::NEG_INFINITY, f64::max);
                assert_eq!((min[p], max[p]), (lo, hi), "{what} min/max");
            }
            for name in ["mean", "var", "std", "min", "max", "sum"] {
                assert_eq!(dtype_of(&s, "stats", name), ResultDType::F64, "{name}");
            }
            vars.push(var.to_vec());
        }
        for (a, b) in vars[0].iter().zip(&vars[1]) {
            assert_close(*a, *b, 2.0 * VAR_TOL, *b, "splits");
        }
    }
}

/// Runs `udf` by hand, without the engine: the frames are cut into consecutive groups of
/// `sizes`; group `g` goes to task `g / 2` (so each task merges twice, the second time
/// into buffers that already hold other tasks' frames); the merges happen in the order
/// `order` of the groups. Returns the shown results.
fn merge_by_hand(
    udf: &dyn Udf,
    frames: &[Vec<f64>],
    sig: SigShape,
    dtype: DType,
    sizes: &[usize],
    order: &[usize],
) -> Vec<stemflow_core::result::ResultBuffer> {
    let meta = UdfMeta {
        nav_shape: NavShape::new(1, frames.len()),
        sig_shape: sig,
        dtype,
    };
    let mut global = new_results(udf, &meta).buffers;
    udf.preprocess(&meta, &mut global).expect("preprocess");
    let mut tasks: Vec<_> = (0..sizes.len().div_ceil(2))
        .map(|_| udf.new_partition(&meta))
        .collect();
    let starts: Vec<usize> = sizes
        .iter()
        .scan(0, |at, &n| {
            *at += n;
            Some(*at - n)
        })
        .collect();
    assert_eq!(sizes.iter().sum::<usize>(), frames.len());
    for &g in order {
        let group = &frames[starts[g]..starts[g] + sizes[g]];
        let flat32: Vec<f32> = group.iter().flatten().map(|&v| v as f32).collect();
        let flat64: Vec<f64> = group.iter().flatten().copied().collect();
        let pixels = match dtype {
            DType::F32 => PixelsRef::F32(&flat32),
            _ => PixelsRef::F64(&flat64),
        };
        let view = TileView {
            first_frame: starts[g] as u64,
            n_frames: sizes[g],
            sig_shape: sig,
            pixels,
        };
        tasks[g / 2].process_tile(&view, &mut []);
        tasks[g / 2].merge_into(&mut global);
    }
    udf.get_results(&meta, &global)
}

#[test]
fn stats_and_sum_merge_uneven_partials_in_any_order() {
    // Partials of very different sizes whose means differ: Chan's δ²·n_a·n_b/n term and
    // the weights must be right for the merged variance to match.
    let sig = SigShape::new(3, 5);
    let sizes = [1, 7, 13, 2, 20, 17];
    let n: usize = sizes.iter().sum();
    for (dtype, offset) in [(DType::F32, 1e6), (DType::F64, 1e8)] {
        let mut frames = float_frames(n, sig, offset - 1.0, offset + 1.0, dtype, 29);
        // A drift, so that the partials' means differ by more than their noise.
        for (i, f) in frames.iter_mut().enumerate() {
            for v in f.iter_mut() {
                *v = round_to(*v + i as f64 / 8.0, dtype);
            }
        }
        for order in [[0, 1, 2, 3, 4, 5], [5, 3, 1, 4, 0, 2]] {
            let got = merge_by_hand(&StatsUdf::new(), &frames, sig, dtype, &sizes, &order);
            let get = |name: &str| &got.iter().find(|b| b.name == name).expect(name).data;
            assert_eq!(get("frames"), &vec![n as f64]);
            for p in 0..sig.len() {
                let what = format!("{dtype} {order:?} pixel {p}");
                let (m, v) = two_pass(&frames, p);
                assert_close(get("mean")[p], m, 1e-12, m.abs(), &format!("{what} mean"));
                assert_close(get("var")[p], v, 1e-11, v, &format!("{what} var"));
                let lo = frames.iter().map(|f| f[p]).fold(f64::INFINITY, f64::min);
                assert_eq!(get("min")[p], lo, "{what} min");
            }
            let sum = merge_by_hand(&SumUdf::new(), &frames, sig, dtype, &sizes, &order);
            for p in 0..sig.len() {
                let want: f64 = frames.iter().map(|f| f[p]).sum();
                assert_close(sum[0].data[p], want, 1e-12, want.abs(), "sum");
            }
        }
    }
}

#[test]
fn stats_of_signed_values_and_of_a_single_frame() {
    let sig = SigShape::new(3, 4);
    for dtype in FLOATS {
        // Values around zero, negative included, 2 frames per tile.
        let nav = NavShape::new(4, 5);
        let frames = float_frames(nav.len(), sig, -3.0, 2.0, dtype, 5);
        let s = run(&frames, (nav, sig, dtype), (2, 2), udfs![StatsUdf::new()]);
        for p in 0..sig.len() {
            let (m, v) = two_pass(&frames, p);
            assert_close(buffer(&s, "stats", "mean")[p], m, 1e-12, 3.0, "mean");
            assert_close(buffer(&s, "stats", "var")[p], v, 1e-12, v, "var");
        }
        // One frame: var 0, min = max = mean = the frame.
        let one = &frames[..1];
        let s = run(
            one,
            (NavShape::new(1, 1), sig, dtype),
            (1, 1),
            udfs![StatsUdf::new()],
        );
        assert_eq!(buffer(&s, "stats", "mean"), &one[0][..]);
        assert_eq!(buffer(&s, "stats", "min"), &one[0][..]);
        assert_eq!(buffer(&s, "stats", "max"), &one[0][..]);
        assert!(buffer(&s, "stats", "var").iter().all(|&v| v == 0.0));
    }
}

#[test]
fn a_nan_pixel_propagates_into_sums_and_min_max() {
    let sig = SigShape::new(4, 4);
    let nav = NavShape::new(3, 6);
    let last = nav.len() - 1;
    for dtype in FLOATS {
        let mut frames = float_frames(nav.len(), sig, -5.0, 5.0, dtype, 23);
        // NaN in the first frame at pixel 3, in the last frame at pixel 9: both the task
        // updates and the merges must keep it.
        frames[0][3] = f64::NAN;
        frames[last][9] = f64::NAN;
        for split in SPLITS {
            let s = run(
                &frames,
                (nav, sig, dtype),
                split,
                udfs![SumUdf::new(), SumSigUdf::new(), StatsUdf::new()],
            );
            let what = format!("{dtype} {split:?}");
            for p in 0..sig.len() {
                let nan = p == 3 || p == 9;
                assert_eq!(
                    buffer(&s, "sum", "intensity")[p].is_nan(),
                    nan,
                    "{what} sum {p}"
                );
                for name in ["mean", "var", "std", "min", "max", "sum"] {
                    let v = buffer(&s, "stats", name)[p];
                    assert_eq!(v.is_nan(), nan, "{what} stats {name} {p}: {v}");
                }
            }
            let per_frame = buffer(&s, "sum_sig", "intensity");
            for (i, v) in per_frame.iter().enumerate() {
                assert_eq!(v.is_nan(), i == 0 || i == last, "{what} sum_sig {i}");
            }
        }
    }
}

#[test]
fn infinities_follow_numpy() {
    // Pixel 5: +∞ in frame 2; pixel 6: −∞ in frame 0; pixel 7: +∞ and −∞. NumPy gives
    // sum and mean ±∞ (NaN for pixel 7), var and std NaN, min/max the infinity.
    let sig = SigShape::new(3, 3);
    let nav = NavShape::new(4, 6);
    for dtype in FLOATS {
        let mut frames = float_frames(nav.len(), sig, -5.0, 5.0, dtype, 31);
        frames[2][5] = f64::INFINITY;
        frames[0][6] = f64::NEG_INFINITY;
        frames[3][7] = f64::INFINITY;
        frames[20][7] = f64::NEG_INFINITY;
        for split in SPLITS {
            let s = run(
                &frames,
                (nav, sig, dtype),
                split,
                udfs![SumUdf::new(), StatsUdf::new()],
            );
            let what = format!("{dtype} {split:?}");
            let inf = f64::INFINITY;
            let get = |name: &str, p: usize| buffer(&s, "stats", name)[p];
            assert_eq!(buffer(&s, "sum", "intensity")[5], inf, "{what}");
            assert_eq!(buffer(&s, "sum", "intensity")[6], -inf, "{what}");
            assert!(buffer(&s, "sum", "intensity")[7].is_nan(), "{what}");
            assert_eq!(
                (get("mean", 5), get("sum", 5), get("max", 5)),
                (inf, inf, inf),
                "{what}"
            );
            assert_eq!(
                (get("mean", 6), get("sum", 6), get("min", 6)),
                (-inf, -inf, -inf),
                "{what}"
            );
            assert!(get("mean", 7).is_nan() && get("sum", 7).is_nan(), "{what}");
            assert_eq!((get("min", 7), get("max", 7)), (-inf, inf), "{what}");
            for p in [5, 6, 7] {
                assert!(
                    get("var", p).is_nan() && get("std", p).is_nan(),
                    "{what} {p}"
                );
            }
            // The other pixels are untouched by the infinities.
            for p in [0, 1, 2, 3, 4, 8] {
                let (m, v) = two_pass(&frames, p);
                assert_close(get("mean", p), m, 1e-12, 5.0, &format!("{what} mean {p}"));
                assert_close(get("var", p), v, 1e-12, v, &format!("{what} var {p}"));
            }
        }
    }
}

#[test]
fn pick_and_signal_monitor_copy_float_frames_exactly() {
    let sig = SigShape::new(6, 5);
    let nav = NavShape::new(4, 7);
    for dtype in FLOATS {
        let mut frames = float_frames(nav.len(), sig, -1e3, 1e3, dtype, 41);
        frames[2 * 7 + 3][4] = f64::NAN;
        frames[2 * 7 + 3][5] = -0.0;
        for split in SPLITS {
            let s = run(
                &frames,
                (nav, sig, dtype),
                split,
                udfs![PickUdf::new(2, 3), SignalMonitorUdf::new()],
            );
            let picked = buffer(&s, "pick", "intensity");
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(picked), bits(&frames[2 * 7 + 3]), "{dtype} {split:?}");
            assert_eq!(buffer(&s, "pick", "picked"), &[1.0]);
            assert_eq!(buffer(&s, "monitor", "latest"), &frames[nav.len() - 1][..]);
            assert_eq!(buffer(&s, "monitor", "frame"), &[(nav.len() - 1) as f64]);
            assert_eq!(dtype_of(&s, "pick", "intensity"), ResultDType::F64);
            assert_eq!(dtype_of(&s, "monitor", "latest"), ResultDType::F64);
        }
    }
}

#[test]
fn partition_monitor_sums_the_latest_partition() {
    // Every frame is the same pattern of binary fractions, so the sum of any partition of
    // k frames is exactly k × pattern: the shown sum must be `frames` × pattern.
    let sig = SigShape::new(3, 3);
    let nav = NavShape::new(5, 6);
    let pattern: Vec<f64> = (0..sig.len()).map(|i| i as f64 * 0.75 - 2.5).collect();
    for dtype in FLOATS {
        let frames = vec![pattern.clone(); nav.len()];
        for split in SPLITS {
            let s = run(
                &frames,
                (nav, sig, dtype),
                split,
                udfs![PartitionMonitorUdf::new()],
            );
            let k = buffer(&s, "partition_monitor", "frames")[0];
            assert!(
                k >= 1.0 && k <= nav.len() as f64,
                "{dtype} {split:?}: {k} frames"
            );
            let want: Vec<f64> = pattern.iter().map(|v| v * k).collect();
            assert_eq!(buffer(&s, "partition_monitor", "intensity"), &want[..]);
            assert_eq!(
                dtype_of(&s, "partition_monitor", "intensity"),
                ResultDType::F64
            );
        }
    }
}

/// A `.npy` file parsed by hand: (descr, shape, data bytes).
fn parse_npy(bytes: &[u8]) -> (String, Vec<usize>, &[u8]) {
    assert_eq!(&bytes[..6], b"\x93NUMPY", "magic");
    assert_eq!(&bytes[6..8], &[1, 0], "version 1.0");
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let start = 10 + len;
    assert_eq!(start % 64, 0, "data aligned to 64 bytes");
    let dict = std::str::from_utf8(&bytes[10..start]).expect("ASCII header");
    assert!(dict.ends_with('\n'), "{dict:?}");
    assert!(dict.contains("'fortran_order': False"), "{dict}");
    let field = |key: &str| -> &str {
        let at = dict
            .find(key)
            .unwrap_or_else(|| panic!("no {key} in {dict}"))
            + key.len();
        &dict[at..]
    };
    let descr = field("'descr': '").split('\'').next().unwrap().to_string();
    let shape_text = field("'shape': (").split(')').next().unwrap();
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.parse().expect("shape number"))
        .collect();
    (descr, shape, &bytes[start..])
}

#[test]
fn record_writes_float_npy_files() {
    let sig = SigShape::new(3, 4);
    let nav = NavShape::new(2, 5);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    for (dtype, want_descr, size) in [(DType::F32, "<f4", 4), (DType::F64, "<f8", 8)] {
        let mut frames = float_frames(nav.len(), sig, -7.0, 7.0, dtype, 61);
        frames[6][2] = f64::NAN;
        frames[1][0] = f64::NEG_INFINITY;
        let path = dir.join(format!("floats_sum_stats_record_{dtype}.npy"));
        let s = run(
            &frames,
            (nav, sig, dtype),
            (3, 2),
            udfs![RecordUdf::new(&path)],
        );
        assert_eq!(buffer(&s, "record", "frames_written"), &[nav.len() as f64]);
        let bytes = std::fs::read(&path).expect("record file");
        let (descr, shape, data) = parse_npy(&bytes);
        assert_eq!(descr, want_descr);
        assert_eq!(shape, vec![nav.rows, nav.cols, sig.rows, sig.cols]);
        assert_eq!(data.len(), nav.len() * sig.len() * size);
        let values: Vec<u64> = match dtype {
            DType::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()).to_bits() as u64)
                .collect(),
            _ => data
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()).to_bits())
                .collect(),
        };
        let want: Vec<u64> = frames
            .iter()
            .flatten()
            .map(|&v| match dtype {
                DType::F32 => (v as f32).to_bits() as u64,
                _ => v.to_bits(),
            })
            .collect();
        assert_eq!(values, want, "{dtype}");
        std::fs::remove_file(&path).ok();
    }
}

#[test]
fn params_of_pick_and_record_and_none_for_the_others() {
    let pick = PickUdf::new(2, 3).named("p");
    assert_eq!(pick.params(), json!({"row": 2, "col": 3}));
    // The params struct round-trips through its JSON.
    let again = PickUdf::from_params(serde_json::from_value(pick.params()).expect("params"));
    assert_eq!(again.params(), pick.params());
    assert_eq!(again.name(), "pick");

    let record = RecordUdf::new("/data/scan 1/frames.npy");
    assert_eq!(record.params(), json!({"path": "/data/scan 1/frames.npy"}));
    let again = RecordUdf::from_params(serde_json::from_value(record.params()).expect("params"));
    assert_eq!(
        again.path(),
        std::path::Path::new("/data/scan 1/frames.npy")
    );

    for udf in [
        Box::new(SumUdf::new()) as Box<dyn Udf>,
        Box::new(SumSigUdf::new()),
        Box::new(StatsUdf::new()),
        Box::new(SignalMonitorUdf::new()),
        Box::new(PartitionMonitorUdf::new()),
    ] {
        assert_eq!(udf.params(), serde_json::Value::Null, "{}", udf.name());
    }
}

#[test]
fn declared_dtypes_follow_the_pixel_type() {
    let meta = |dtype| UdfMeta {
        nav_shape: NavShape::new(2, 2),
        sig_shape: SigShape::new(2, 2),
        dtype,
    };
    let decl = |udf: &dyn Udf, dtype, name: &str| {
        udf.buffers(&meta(dtype))
            .into_iter()
            .find(|d| d.name == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .dtype
    };
    for dtype in FLOATS {
        assert_eq!(decl(&SumUdf::new(), dtype, "intensity"), ResultDType::F64);
        assert_eq!(decl(&StatsUdf::new(), dtype, "min"), ResultDType::F64);
        assert_eq!(decl(&StatsUdf::new(), dtype, "sum"), ResultDType::F64);
        assert_eq!(
            decl(&PickUdf::new(0, 0), dtype, "intensity"),
            ResultDType::F64
        );
        assert_eq!(
            decl(&SignalMonitorUdf::new(), dtype, "latest"),
            ResultDType::F64
        );
        assert_eq!(
            decl(&PartitionMonitorUdf::new(), dtype, "intensity"),
            ResultDType::F64
        );
    }
    // Integer frames keep their integer result types.
    assert_eq!(decl(&StatsUdf::new(), DType::U16, "min"), ResultDType::U64);
    assert_eq!(
        decl(&PickUdf::new(0, 0), DType::U16, "intensity"),
        ResultDType::U64
    );
    assert_eq!(
        decl(&SumUdf::new(), DType::U16, "intensity"),
        ResultDType::F64
    );
}
