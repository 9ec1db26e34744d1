//! `stemflow process` on float and signed-integer files, as a user runs it: a float32
//! `.npy`, a big-endian int16 `.npy` and a big-endian int16 raw file of a 4 × 4 scan of
//! 32 × 32 frames holding negative values (and fractions, for float32). The run must end
//! with exit status 0; the per-frame sums over the signal (`sum_sig`) and the per-pixel sums
//! over the scan (`sum`) in `recording.hspy` must equal a reference computed here; the frames
//! copied into `recording.hspy` must be the file's values (float32 frames); `run.json` must
//! report a completed run of 16 frames with float64 results.
//!
//! Every child process runs under a deadline and is killed (with its process group) when
//! its guard drops.

mod common;

use common::command::{buffer, path_arg as arg, stemflow};
use common::scratch::ScratchDir;
use serde_json::Value;
use std::path::Path;
use stemflow_core::frame::PixelsRef;
use stemflow_core::{DType, SigShape};
use stemflow_recording::reader::open_recording;

/// Scan 4 × 4, frames 32 × 32.
const NAV: (usize, usize) = (4, 4);
const SIG: (usize, usize) = (32, 32);
const FRAMES: usize = NAV.0 * NAV.1;
const PIXELS: usize = SIG.0 * SIG.1;

/// Float32 pixels: multiples of 1/16 in -5.4375..=5.0625 (so every sum here is exact in
/// float64, whatever the order of summation), about half of them negative.
fn float_frames() -> Vec<Vec<f32>> {
    (0..FRAMES)
        .map(|f| {
            (0..PIXELS)
                .map(|i| ((f * 37 + i * 11) % 29) as f32 * 0.375 - 5.4375)
                .collect()
        })
        .collect()
}

/// Int16 pixels in -1501..=1400, about half of them negative, frame 5 all negative.
fn int16_frames() -> Vec<Vec<i16>> {
    (0..FRAMES)
        .map(|f| {
            (0..PIXELS)
                .map(|i| {
                    let v = ((f * 131 + i * 17) % 30) as i16 * 100 - 1500;
                    if f == 5 { -v.abs() - 1 } else { v }
                })
                .collect()
        })
        .collect()
}

/// Writes a 4-D `.npy` of shape (4, 4, 32, 32) with element `descr` and data `data`.
fn write_npy(path: &Path, descr: &str, data: &[u8]) {
    let mut bytes =
        stemflow_processing::io::npy::header_bytes(descr, &[NAV.0, NAV.1, SIG.0, SIG.1]);
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// `got` equals `want` to 1e-12 of its magnitude (exact here: see [`float_frames`]).
fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-12 * w.abs().max(1.0),
            "{what} at {i}: got {g}, expected {w}"
        );
    }
}

/// Runs `stemflow process` with `args` and checks the outputs in `out` against `frames`
/// (the file's pixels as f64): exit 0, `sum_sig` and `sum` equal to the naive sums, the
/// recorded frames float32 and equal to the pixels, `run.json` complete.
fn process_and_check(args: &[&str], out: &Path, scratch: &Path, frames: &[Vec<f64>]) {
    let run = stemflow(args, scratch, "process");
    assert!(
        run.status.success(),
        "`stemflow {}` failed: {}",
        args.join(" "),
        run.describe()
    );
    assert!(
        run.stdout.contains("float32"),
        "the summary line should name the frames' dtype float32: {}",
        run.describe()
    );
    let h5 = out.join("recording.hspy");
    let rec = open_recording(&h5).unwrap_or_else(|e| panic!("{}: {e}", h5.display()));
    // The reference has negative frame totals and pixel sums, which must survive.
    let per_frame: Vec<f64> = frames.iter().map(|f| f.iter().sum()).collect();
    let per_pixel: Vec<f64> = (0..PIXELS)
        .map(|i| frames.iter().map(|f| f[i]).sum())
        .collect();
    assert!(per_frame.iter().any(|&v| v < 0.0) && per_pixel.iter().any(|&v| v < 0.0));
    let results = rec
        .results()
        .unwrap_or_else(|e| panic!("results of {}: {e}", h5.display()));
    assert_close(
        "sum_sig",
        buffer(&results, "sum_sig", "intensity"),
        &per_frame,
    );
    assert_close("sum", buffer(&results, "sum", "intensity"), &per_pixel);
    // The frames as recorded: float32, the file's values exactly.
    assert_eq!(rec.dtype(), DType::F32);
    assert_eq!(rec.sig_shape(), SigShape::new(SIG.0, SIG.1));
    let tile = rec
        .read_tile(0, FRAMES)
        .unwrap_or_else(|e| panic!("frames of {}: {e}", h5.display()));
    let PixelsRef::F32(px) = tile.data.view() else {
        panic!("recorded frames are {}", tile.data.dtype());
    };
    let want: Vec<f32> = frames.iter().flatten().map(|&v| v as f32).collect();
    assert_eq!(
        px,
        &want[..],
        "recorded frames differ from the file's pixels"
    );
    // run.json: a completed run of every frame, results float64.
    let json = std::fs::read_to_string(out.join("run.json")).expect("run.json");
    let record: Value = serde_json::from_str(&json).expect("run.json is JSON");
    assert_eq!(record["exit_status"], "completed", "{json}");
    assert_eq!(record["frames_processed"], FRAMES, "{json}");
    let sum_sig = record["results"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|r| r["udf"] == "sum_sig" && r["buffer"] == "intensity")
        })
        .unwrap_or_else(|| panic!("no sum_sig in run.json: {json}"));
    assert_eq!(sum_sig["dtype"], "float64", "{json}");
    assert_eq!(sum_sig["finite"], FRAMES, "{json}");
}

/// The pixels of `frames` as f64 (exactly: f32 and i16 widen without rounding).
fn widened<T: Copy + Into<f64>>(frames: &[Vec<T>]) -> Vec<Vec<f64>> {
    frames
        .iter()
        .map(|f| f.iter().map(|&v| v.into()).collect())
        .collect()
}

/// Writes `frames` as a `.npy` of element `descr` (each pixel encoded by `encode`) in a
/// scratch directory named after `prefix`, then runs `stemflow process FILE` on it and
/// checks the outputs ([`process_and_check`]).
fn process_npy<T: Copy + Into<f64>, const N: usize>(
    prefix: &str,
    descr: &str,
    frames: &[Vec<T>],
    encode: fn(T) -> [u8; N],
) {
    let dir = ScratchDir::new(prefix);
    let npy = dir.path().join("frames.npy");
    let data: Vec<u8> = frames.iter().flatten().flat_map(|&v| encode(v)).collect();
    write_npy(&npy, descr, &data);
    let out = dir.path().join("out");
    process_and_check(
        &["process", arg(&npy), "--out", arg(&out)],
        &out,
        dir.path(),
        &widened(frames),
    );
}

/// A float32 `.npy` (fractions, negative values) is processed like a detector's frames.
#[test]
fn process_float32_npy() {
    process_npy("cli-process-f32", "<f4", &float_frames(), f32::to_le_bytes);
}

/// A big-endian int16 `.npy` is read as float32 frames, exactly, and processed.
#[test]
fn process_int16_npy() {
    process_npy(
        "cli-process-i16-npy",
        ">i2",
        &int16_frames(),
        i16::to_be_bytes,
    );
}

/// A big-endian int16 raw file after a 64-byte header (`--dtype int16`) is read as float32
/// frames, exactly, and processed.
#[test]
fn process_int16_raw() {
    let dir = ScratchDir::new("cli-process-i16-raw");
    let frames = int16_frames();
    let raw = dir.path().join("frames.raw");
    let mut data = vec![0x7Fu8; 64];
    data.extend(frames.iter().flatten().flat_map(|v| v.to_be_bytes()));
    std::fs::write(&raw, data).unwrap_or_else(|e| panic!("{}: {e}", raw.display()));
    let out = dir.path().join("out");
    process_and_check(
        &[
            "process",
            arg(&raw),
            "--nav-shape",
            "4x4",
            "--sig-shape",
            "32x32",
            "--dtype",
            "int16",
            "--byte-order",
            "big",
            "--offset",
            "64",
            "--out",
            arg(&out),
        ],
        &out,
        dir.path(),
        &widened(&frames),
    );
}
