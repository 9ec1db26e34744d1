//! More built-ins on real data from `../shared/data`, against naive references computed
//! here in plain `f64` loops over frames read without our readers: every CoM buffer (x, y,
//! magnitude, divergence, curl; with and without scan rotation and flip), the per-pixel
//! statistics against a two-pass reference, the signal and partition monitors, and the
//! record UDF's `.npy` file parsed here byte by byte.

mod common;

use common::{buffer, config, data, run_on};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use stemflow_core::frame::{Tile, TileData};
use stemflow_core::{DType, NavShape, SigShape};
use stemflow_processing::io::ByteOrder;
use stemflow_processing::udf::Udf;
use stemflow_processing::{
    ComParams, ComUdf, NpyDataSet, PartitionMonitorUdf, RawDataSet, RawSpec, RecordUdf, Roi,
    RunSummary, SignalMonitorUdf, StatsUdf, run_tiles,
};

/// The DECTRIS capture's decoded frames: (16, 16, 256, 256) little-endian u16.
fn dectris_npy() -> PathBuf {
    data("dectris/stream-v1/synthetic_16x16_256_u16.npy")
}

/// A `.npy` file as parsed here (format version 1–3, C or Fortran order flag, raw data).
struct Npy {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
    /// Offset of the data in the file.
    data_offset: usize,
    data: Vec<u8>,
}

/// Parses a `.npy` file by the NumPy format description: magic `\x93NUMPY`, major and
/// minor version, a little-endian header length (u16 for version 1, u32 for 2 and 3), a
/// Python dict literal, then the data.
fn parse_npy(bytes: &[u8]) -> Npy {
    assert_eq!(&bytes[..6], b"\x93NUMPY", "magic");
    let major = bytes[6];
    let (len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => panic!("npy version {v}"),
    };
    let header = std::str::from_utf8(&bytes[start..start + len]).expect("ASCII header");
    assert!(
        header.ends_with('\n'),
        "header ends with a newline: {header:?}"
    );
    let value_of = |key: &str| -> &str {
        let at = header
            .find(&format!("'{key}':"))
            .unwrap_or_else(|| panic!("no {key} in {header:?}"));
        header[at + key.len() + 3..].trim_start()
    };
    let descr = value_of("descr");
    let descr = descr[1..].split('\'').next().unwrap().to_string();
    let fortran_order = value_of("fortran_order").starts_with("True");
    let shape_text = value_of("shape");
    let shape = shape_text[1..shape_text.find(')').unwrap()]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    Npy {
        descr,
        fortran_order,
        shape,
        data_offset: start + len,
        data: bytes[start + len..].to_vec(),
    }
}

/// All 256 frames of the capture, frame after frame, read with [`parse_npy`].
fn capture() -> Vec<u16> {
    let npy = parse_npy(&std::fs::read(dectris_npy()).unwrap());
    assert_eq!(
        (npy.descr.as_str(), npy.fortran_order, &npy.shape[..]),
        ("<u2", false, &[16, 16, 256, 256][..])
    );
    npy.data
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect()
}

const SIG: SigShape = SigShape::new(256, 256);
const FRAME: usize = 256 * 256;

/// `a` and `b` agree to 1e-9 relative (1e-9 absolute near zero); NaN only with NaN.
fn close(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

/// Naive CoM of one frame by the definitions of `ComUdf`: pixel `(x, y)` weighs at
/// `(x + 0.5, y + 0.5)` when that centre lies within `mask_radius` of `(cx, cy)`; the shift
/// is the centroid minus `(cx, cy)`, y negated for a flip, then rotated by the scan
/// rotation (`x' = x cos θ − y sin θ`, `y' = x sin θ + y cos θ`).
fn naive_com(frame: &[u16], sig: SigShape, p: &ComParams) -> (f64, f64) {
    let (mut total, mut mx, mut my) = (0.0, 0.0, 0.0);
    for y in 0..sig.rows {
        for x in 0..sig.cols {
            let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
            if (px - p.cx).powi(2) + (py - p.cy).powi(2) <= p.mask_radius.powi(2) {
                let v = frame[y * sig.cols + x] as f64;
                total += v;
                mx += v * px;
                my += v * py;
            }
        }
    }
    if total == 0.0 {
        return (f64::NAN, f64::NAN);
    }
    let (x, mut y) = (mx / total - p.cx, my / total - p.cy);
    if p.flip_y {
        y = -y;
    }
    let t = p.scan_rotation_deg.to_radians();
    (x * t.cos() - y * t.sin(), x * t.sin() + y * t.cos())
}

/// `∂f/∂col` (or `∂f/∂row`) of a `rows × cols` field at `(r, c)`, as NumPy's `gradient`:
/// central inside, one-sided at the edges, 0 along an axis of length 1.
fn naive_derivative(
    f: &[f64],
    rows: usize,
    cols: usize,
    r: usize,
    c: usize,
    along_rows: bool,
) -> f64 {
    let at = |r: usize, c: usize| f[r * cols + c];
    let (k, n) = if along_rows { (r, rows) } else { (c, cols) };
    let step = |d: isize| -> f64 {
        let (rr, cc) = if along_rows {
            ((r as isize + d) as usize, c)
        } else {
            (r, (c as isize + d) as usize)
        };
        at(rr, cc)
    };
    if n == 1 {
        0.0
    } else if k == 0 {
        step(1) - step(0)
    } else if k == n - 1 {
        step(0) - step(-1)
    } else {
        (step(1) - step(-1)) / 2.0
    }
}

/// Checks all five CoM buffers of `udf` in `s` against the naive reference over `frames`
/// on the scan `nav`.
fn check_com(s: &RunSummary, udf: &str, frames: &[u16], nav: NavShape, p: &ComParams) {
    let names: Vec<&str> = s
        .results
        .iter()
        .find(|r| r.udf == udf)
        .unwrap()
        .buffers
        .iter()
        .map(|b| b.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["x", "y", "magnitude", "divergence", "curl"],
        "{udf}"
    );
    let (rows, cols) = (nav.rows, nav.cols);
    let (xs, ys): (Vec<f64>, Vec<f64>) = frames
        .chunks_exact(FRAME)
        .take(nav.len())
        .map(|f| naive_com(f, SIG, p))
        .unzip();
    assert!(
        xs.iter().chain(&ys).all(|v| v.is_finite()),
        "{udf}: no empty frames"
    );
    for i in 0..nav.len() {
        let (r, c) = (i / cols, i % cols);
        let want = [
            ("x", xs[i]),
            ("y", ys[i]),
            ("magnitude", xs[i].hypot(ys[i])),
            (
                "divergence",
                naive_derivative(&xs, rows, cols, r, c, false)
                    + naive_derivative(&ys, rows, cols, r, c, true),
            ),
            (
                "curl",
                naive_derivative(&ys, rows, cols, r, c, false)
                    - naive_derivative(&xs, rows, cols, r, c, true),
            ),
        ];
        for (name, w) in want {
            let got = buffer(s, udf, name)[i];
            assert!(close(got, w), "{udf}/{name} at {i}: {got} vs {w}");
        }
    }
}

#[test]
fn every_com_buffer_on_the_dectris_capture_matches_a_naive_reference() {
    let frames = capture();
    let plain = ComParams {
        cx: 127.3,
        cy: 129.1,
        mask_radius: 30.5,
        scan_rotation_deg: 0.0,
        flip_y: false,
    };
    // No pixel centre lies within 0.04 px² of either disk's edge: the comparison does not
    // hinge on rounding.
    let turned = ComParams {
        cx: 131.7,
        cy: 124.6,
        mask_radius: 22.3,
        scan_rotation_deg: -37.0,
        flip_y: true,
    };
    let udfs: Vec<Box<dyn Udf>> = vec![
        Box::new(ComUdf::from_params(plain)),
        Box::new(ComUdf::from_params(turned).named("com_turned")),
    ];
    // The whole 16 × 16 scan through the `.npy` reader.
    let nav = NavShape::new(16, 16);
    let mut ds = NpyDataSet::open(&dectris_npy()).unwrap();
    let s = run_on(&mut ds, &config(nav, SIG, DType::U16, 2), &udfs);
    assert_eq!(s.frames_processed, 256);
    check_com(&s, "com", &frames, nav, &plain);
    check_com(&s, "com_turned", &frames, nav, &turned);
    // The rotation and flip change the answer (the references are not trivially alike).
    let (x0, x1) = (buffer(&s, "com", "x"), buffer(&s, "com_turned", "x"));
    assert!(x0.iter().zip(x1).any(|(a, b)| (a - b).abs() > 0.1));
    let div = buffer(&s, "com", "divergence");
    assert!(div.iter().any(|v| v.abs() > 1e-3), "a non-trivial field");
    // A single scan row (sub-scan of the first 16 frames in tiles of 5): derivatives along
    // rows are 0.
    let nav = NavShape::new(1, 16);
    let tiles: Vec<Tile> = (0..16)
        .step_by(5)
        .map(|f0: usize| {
            let n = 5.min(16 - f0);
            Tile {
                first_frame: f0 as u64,
                n_frames: n,
                sig_shape: SIG,
                data: TileData::U16(frames[f0 * FRAME..(f0 + n) * FRAME].to_vec()),
            }
        })
        .collect();
    let s = run_tiles(
        tiles.into_iter().map(Ok::<_, std::convert::Infallible>),
        &udfs,
        &config(nav, SIG, DType::U16, 2),
        None,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    check_com(&s, "com", &frames, nav, &plain);
    check_com(&s, "com_turned", &frames, nav, &turned);
}

#[test]
fn statistics_on_the_dectris_capture_match_a_two_pass_reference() {
    let frames = capture();
    let n = 256.0;
    // Two passes, in f64: the mean, then the mean squared deviation from it.
    let mut sum = vec![0.0f64; FRAME];
    let mut min = vec![f64::INFINITY; FRAME];
    let mut max = vec![f64::NEG_INFINITY; FRAME];
    for f in frames.chunks_exact(FRAME) {
        for (p, &v) in f.iter().enumerate() {
            let v = v as f64;
            sum[p] += v;
            min[p] = min[p].min(v);
            max[p] = max[p].max(v);
        }
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let mut dev2 = vec![0.0f64; FRAME];
    for f in frames.chunks_exact(FRAME) {
        for (p, &v) in f.iter().enumerate() {
            dev2[p] += (v as f64 - mean[p]).powi(2);
        }
    }
    let var: Vec<f64> = dev2.iter().map(|d| d / n).collect();
    let mut ds = NpyDataSet::open(&dectris_npy()).unwrap();
    let s = run_on(
        &mut ds,
        &config(NavShape::new(16, 16), SIG, DType::U16, 2),
        &[Box::new(StatsUdf::new())],
    );
    let rel = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs();
    let (m, v, sd) = (
        buffer(&s, "stats", "mean"),
        buffer(&s, "stats", "var"),
        buffer(&s, "stats", "std"),
    );
    for p in 0..FRAME {
        assert!(rel(m[p], mean[p]), "mean at {p}: {} vs {}", m[p], mean[p]);
        assert!(rel(v[p], var[p]), "var at {p}: {} vs {}", v[p], var[p]);
        assert!(rel(sd[p], var[p].sqrt()), "std at {p}");
    }
    assert_eq!(buffer(&s, "stats", "min"), &min[..]);
    assert_eq!(buffer(&s, "stats", "max"), &max[..]);
    assert_eq!(buffer(&s, "stats", "sum"), &sum[..]);
    assert_eq!(buffer(&s, "stats", "frames"), &[256.0]);
    // The data are not trivial: pixels vary, and the hot pixel is constant.
    assert!(var.iter().filter(|&&v| v > 1.0).count() > 1000);
    assert!(max.contains(&65535.0));
}

#[test]
fn the_signal_monitor_shows_the_last_processed_real_frame() {
    let frames = capture();
    let nav = NavShape::new(16, 16);
    let as_f64 = |i: usize| -> Vec<f64> {
        frames[i * FRAME..(i + 1) * FRAME]
            .iter()
            .map(|&v| v as f64)
            .collect()
    };
    let udfs: Vec<Box<dyn Udf>> = vec![Box::new(SignalMonitorUdf::new())];
    let mut ds = NpyDataSet::open(&dectris_npy()).unwrap();
    let s = run_on(&mut ds, &config(nav, SIG, DType::U16, 2), &udfs);
    assert_eq!(buffer(&s, "monitor", "latest"), &as_f64(255)[..]);
    assert_eq!(buffer(&s, "monitor", "frame"), &[255.0]);
    // Through a ROI: the last frame processed is the ROI's last, 12 · 16 + 5 = 197.
    let roi = Roi::from_coords(nav, &[(0, 3), (12, 5), (7, 9)]).unwrap();
    let s = run_on(
        &mut ds,
        &config(nav, SIG, DType::U16, 2).with_roi(roi),
        &udfs,
    );
    assert_eq!(s.frames_processed, 3);
    assert_eq!(buffer(&s, "monitor", "latest"), &as_f64(197)[..]);
    assert_eq!(buffer(&s, "monitor", "frame"), &[197.0]);
}

/// Checks that `sum`, `n` (a partition monitor's result) is the pixelwise sum of the
/// frames of some set of whole tiles `tiles` (`(first, n_frames)`) of `frames`, totalling
/// `n` frames; returns the tiles of that set.
fn assert_is_a_partition(
    sum: &[f64],
    n: usize,
    tiles: &[(usize, usize)],
    frames: &[u16],
) -> Vec<usize> {
    let len = sum.len();
    let tile_sums: Vec<Vec<u64>> = tiles
        .iter()
        .map(|&(f0, k)| {
            let mut acc = vec![0u64; len];
            for f in frames[f0 * len..(f0 + k) * len].chunks_exact(len) {
                for (a, &v) in acc.iter_mut().zip(f) {
                    *a += v as u64;
                }
            }
            acc
        })
        .collect();
    for set in 1u32..(1 << tiles.len()) {
        let members: Vec<usize> = (0..tiles.len()).filter(|&t| set & (1 << t) != 0).collect();
        if members.iter().map(|&t| tiles[t].1).sum::<usize>() != n {
            continue;
        }
        let matches = (0..len).all(|p| {
            let want: u64 = members.iter().map(|&t| tile_sums[t][p]).sum();
            sum[p] == want as f64
        });
        if matches {
            return members;
        }
    }
    panic!("the partition monitor's {n} frames are no set of whole tiles of {tiles:?}");
}

#[test]
fn the_partition_monitor_sums_exactly_one_partition_of_real_frames() {
    let frames = capture();
    // 255 frames in tiles of 1, 2, 4, … 128 frames: a frame count names its tiles.
    let nav = NavShape::new(15, 17);
    let tiles: Vec<(usize, usize)> = (0..8).map(|k| ((1 << k) - 1, 1 << k)).collect();
    let (tiles_ref, frames_ref) = (&tiles, &frames);
    let make = || {
        tiles_ref.iter().map(move |&(f0, n)| {
            Ok::<_, std::convert::Infallible>(Tile {
                first_frame: f0 as u64,
                n_frames: n,
                sig_shape: SIG,
                data: TileData::U16(frames_ref[f0 * FRAME..(f0 + n) * FRAME].to_vec()),
            })
        })
    };
    let udfs: Vec<Box<dyn Udf>> = vec![Box::new(PartitionMonitorUdf::new())];
    for threads in [1, 2] {
        let mut cfg = config(nav, SIG, DType::U16, threads);
        cfg.snapshot_interval = Duration::MAX;
        let s = run_tiles(
            make(),
            &udfs,
            &cfg,
            None,
            &mut |_| {},
            &AtomicBool::new(false),
        )
        .unwrap();
        let n = buffer(&s, "partition_monitor", "frames")[0] as usize;
        let sum = buffer(&s, "partition_monitor", "intensity");
        let set = assert_is_a_partition(sum, n, &tiles, &frames);
        if threads == 1 {
            // One worker, merged once at the end: its partition is every frame.
            assert_eq!((n, set.len()), (255, 8));
        }
    }
    // The offline reader's partitions (64 frames each on one thread): one worker merged
    // once holds them all.
    let mut ds = NpyDataSet::open(&dectris_npy()).unwrap();
    let mut cfg = config(NavShape::new(16, 16), SIG, DType::U16, 1);
    cfg.snapshot_interval = Duration::MAX;
    let s = run_on(&mut ds, &cfg, &udfs);
    let all: Vec<(usize, usize)> = (0..4).map(|k| (64 * k, 64)).collect();
    assert_eq!(buffer(&s, "partition_monitor", "frames"), &[256.0]);
    assert_eq!(
        assert_is_a_partition(
            buffer(&s, "partition_monitor", "intensity"),
            256,
            &all,
            &frames
        ),
        vec![0, 1, 2, 3]
    );
}

/// A directory under the system's temp dir, removed on drop (also when a test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "stemflow-{what}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Checks a recorded `.npy` file: dtype `descr`, C order, shape `nav × 256 × 256`, the
/// data 64-byte aligned, and the pixels `want` (little-endian, `size` bytes each).
fn check_recording(path: &Path, descr: &str, shape: [usize; 4], want: &[u64], size: usize) {
    let npy = parse_npy(&std::fs::read(path).unwrap());
    assert_eq!(npy.descr, descr);
    assert!(!npy.fortran_order);
    assert_eq!(npy.shape, shape);
    assert_eq!(npy.data_offset % 64, 0, "data aligned to 64 bytes");
    assert_eq!(npy.data.len(), want.len() * size, "no bytes more or less");
    let got: Vec<u64> = npy
        .data
        .chunks_exact(size)
        .map(|b| {
            let mut le = [0u8; 8];
            le[..size].copy_from_slice(b);
            u64::from_le_bytes(le)
        })
        .collect();
    assert!(got == want, "recorded pixels differ");
}

#[test]
fn the_record_udf_writes_exactly_the_real_frames() {
    let tmp = TempDir::new("record-real");
    let frames = capture();
    let nav = NavShape::new(16, 16);
    // The whole capture through the `.npy` reader on two threads.
    let path = tmp.0.join("all.npy");
    let mut ds = NpyDataSet::open(&dectris_npy()).unwrap();
    let s = run_on(
        &mut ds,
        &config(nav, SIG, DType::U16, 2),
        &[Box::new(RecordUdf::new(&path))],
    );
    assert_eq!(buffer(&s, "record", "frames_written"), &[256.0]);
    let want: Vec<u64> = frames.iter().map(|&v| v as u64).collect();
    check_recording(&path, "<u2", [16, 16, 256, 256], &want, 2);
    // Through a ROI: positions outside it hold zeros.
    let coords = [(0, 0), (3, 7), (3, 8), (15, 15)];
    let roi = Roi::from_coords(nav, &coords).unwrap();
    let path = tmp.0.join("roi.npy");
    let s = run_on(
        &mut ds,
        &config(nav, SIG, DType::U16, 2).with_roi(roi),
        &[Box::new(RecordUdf::new(&path))],
    );
    assert_eq!(buffer(&s, "record", "frames_written"), &[4.0]);
    let mut want = vec![0u64; frames.len()];
    for (r, c) in coords {
        let i = r * 16 + c;
        for p in i * FRAME..(i + 1) * FRAME {
            want[p] = frames[p] as u64;
        }
    }
    check_recording(&path, "<u2", [16, 16, 256, 256], &want, 2);
    // Merlin recordings of 8-, 16- and 32-bit pixels, read as raw big-endian frames with
    // per-frame headers; the reference is decoded here from the file bytes.
    for (stem, descr, dtype) in [
        ("Single_9_Frame_CounterDepth_6_Rows_256", "|u1", DType::U8),
        ("Single_9_Frame_CounterDepth_12_Rows_256", "<u2", DType::U16),
        ("Single_9_Frame_CounterDepth_24_Rows_256", "<u4", DType::U32),
    ] {
        let mib = data(&format!("merlin/Merlin_Single_Quad/{stem}.mib"));
        let bytes = std::fs::read(&mib).unwrap();
        let head = String::from_utf8_lossy(&bytes[..64]).to_string();
        let hdr: usize = head.split(',').nth(2).unwrap().parse().unwrap();
        let size = dtype.size();
        let stride = hdr + FRAME * size;
        assert_eq!(bytes.len(), 9 * stride, "{stem}");
        let want: Vec<u64> = (0..9)
            .flat_map(|f| {
                bytes[f * stride + hdr..(f + 1) * stride]
                    .chunks_exact(size)
                    .map(|b| b.iter().fold(0u64, |a, &x| (a << 8) | x as u64))
            })
            .collect();
        let nav = NavShape::new(3, 3);
        let spec = RawSpec {
            nav_shape: nav,
            sig_shape: SIG,
            dtype,
            byte_order: ByteOrder::Big,
            offset: 0,
            frame_header_bytes: hdr as u64,
        };
        let mut ds = RawDataSet::open(&mib, spec).unwrap();
        let path = tmp.0.join(format!("{stem}.npy"));
        let s = run_on(
            &mut ds,
            &config(nav, SIG, dtype, 2),
            &[Box::new(RecordUdf::new(&path))],
        );
        assert_eq!(buffer(&s, "record", "frames_written"), &[9.0], "{stem}");
        assert!(want.iter().any(|&v| v > 0), "{stem}: not all zero");
        check_recording(&path, descr, [3, 3, 256, 256], &want, size);
    }
}
