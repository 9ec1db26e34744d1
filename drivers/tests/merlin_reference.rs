//! Conformance of the Merlin file reader and decoder with real recordings
//! (`shared/data/merlin/Merlin_Single_Quad`, Merlin software 0.77): every value of
//! `reference.json` (decoded independently by LiberTEM 0.16) is checked for every `.mib`.
//!
//! Dtype mapping: the reference gives LiberTEM's dtype. For non-raw files that is the stored
//! type (`uint8`, `>u2`, `>u4`), which we decode to `u8`, `u16`, `u32` in native order. For
//! raw (`R64`) 1-bit files LiberTEM reports `uint64` (its default decode target for raw);
//! stemflow decodes raw 1-bit to `u8` (values 0/1), so those are compared by value.

use serde_json::Value;
use std::path::PathBuf;
use stemflow_core::frame::{PixelsRef, Tile};
use stemflow_core::{DType, SigShape};
use stemflow_drivers::merlin::MibFile;

fn data_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/merlin"
    ))
}

/// The dtype stemflow produces for a reference dtype string and file name.
fn expected_dtype(libertem: &str, name: &str) -> DType {
    match libertem {
        "uint8" | "|u1" | "u1" => DType::U8,
        ">u2" | "uint16" => DType::U16,
        ">u4" | "uint32" => DType::U32,
        // LiberTEM decodes raw frames into uint64; we decode raw 1/6-bit to u8.
        "uint64" if name.contains("RAW") => DType::U8,
        other => panic!("{name}: unknown reference dtype {other}"),
    }
}

fn sum(p: PixelsRef<'_>) -> u64 {
    match p {
        PixelsRef::U8(s) => s.iter().map(|&v| u64::from(v)).sum(),
        PixelsRef::U16(s) => s.iter().map(|&v| u64::from(v)).sum(),
        PixelsRef::U32(s) => s.iter().map(|&v| u64::from(v)).sum(),
        PixelsRef::U64(s) => s.iter().sum(),
        PixelsRef::F32(_) | PixelsRef::F64(_) => panic!("Merlin frames are integers"),
    }
}

fn max(p: PixelsRef<'_>) -> u64 {
    (0..p.len()).map(|i| p.get_f64(i) as u64).max().unwrap_or(0)
}

/// Sum of pixels `(r, c)` of a frame for which `keep(r, c)` holds.
fn sum_where(p: PixelsRef<'_>, sig: SigShape, keep: impl Fn(usize, usize) -> bool) -> u64 {
    let mut total = 0u64;
    for r in 0..sig.rows {
        for c in 0..sig.cols {
            if keep(r, c) {
                total += p.get_f64(r * sig.cols + c) as u64;
            }
        }
    }
    total
}

fn as_u64(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("reference {what} is not an integer: {v}"))
}

/// Every `.mib` of the set against every value of `reference.json`.
#[test]
fn every_recording_matches_the_reference() {
    let dir = data_dir();
    let reference: Value = serde_json::from_slice(
        &std::fs::read(dir.join("reference.json")).expect("reference.json readable"),
    )
    .expect("reference.json is JSON");
    let reference = reference
        .as_object()
        .expect("reference.json maps file names to values");

    let mut mibs: Vec<PathBuf> = std::fs::read_dir(dir.join("Merlin_Single_Quad"))
        .expect("recordings folder readable")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "mib"))
        .collect();
    mibs.sort();
    assert_eq!(mibs.len(), 20, "the set holds 20 recordings");
    assert_eq!(
        reference.len(),
        mibs.len(),
        "one reference entry per recording"
    );

    for path in &mibs {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 name");
        let r = reference
            .get(name)
            .unwrap_or_else(|| panic!("{name}: no reference entry"));
        let mut file = MibFile::open(path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            file.header().is_some(),
            "{name}: .hdr found beside the .mib"
        );

        let frames = as_u64(&r["frames"], "frames");
        assert_eq!(file.frames(), frames, "{name}: frames");
        let shape = r["sig_shape"].as_array().expect("sig_shape array");
        let sig = SigShape::new(
            as_u64(&shape[0], "rows") as usize,
            as_u64(&shape[1], "cols") as usize,
        );
        assert_eq!(file.sig_shape(), sig, "{name}: sig_shape");
        let dtype = expected_dtype(r["libertem_dtype"].as_str().expect("dtype string"), name);
        assert_eq!(file.dtype(), dtype, "{name}: dtype");

        // Read in tiles of 4 frames to exercise block reads and tile reuse.
        let mut tile = Tile::zeros(0, 0, sig, DType::U8);
        let mut per_frame = Vec::new();
        let mut max_value = 0;
        let mut frame0 = None;
        for (first, n) in file.tile_ranges(4).collect::<Vec<_>>() {
            file.read_tile(first, n, &mut tile)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                (tile.first_frame, tile.n_frames, tile.sig_shape),
                (first, n, sig)
            );
            for i in 0..n {
                per_frame.push(sum(tile.frame(i)));
                max_value = max_value.max(max(tile.frame(i)));
            }
            if first == 0 {
                frame0 = Some(tile.clone());
            }
        }
        let expected_sums: Vec<u64> = r["per_frame_sums"]
            .as_array()
            .expect("per_frame_sums array")
            .iter()
            .map(|v| as_u64(v, "per-frame sum"))
            .collect();
        assert_eq!(per_frame, expected_sums, "{name}: per_frame_sums");
        assert_eq!(
            per_frame.iter().sum::<u64>(),
            as_u64(&r["total"], "total"),
            "{name}: total"
        );
        assert_eq!(
            max_value,
            as_u64(&r["max_value"], "max_value"),
            "{name}: max_value"
        );

        let frame0 = frame0.expect("frame 0 read");
        let f0 = frame0.frame(0);
        let (h, w) = (sig.rows, sig.cols);
        let checks = [
            ("frame0_row0_sum", sum_where(f0, sig, |r, _| r == 0)),
            ("frame0_lastrow_sum", sum_where(f0, sig, |r, _| r == h - 1)),
            ("frame0_col0_sum", sum_where(f0, sig, |_, c| c == 0)),
            ("frame0_lastcol_sum", sum_where(f0, sig, |_, c| c == w - 1)),
        ];
        for (key, got) in checks {
            assert_eq!(got, as_u64(&r[key], key), "{name}: {key}");
        }
        let q = &r["frame0_quadrant_sums"];
        let quadrants = [
            (
                "top_left",
                sum_where(f0, sig, |r, c| r < h / 2 && c < w / 2),
            ),
            (
                "top_right",
                sum_where(f0, sig, |r, c| r < h / 2 && c >= w / 2),
            ),
            (
                "bottom_left",
                sum_where(f0, sig, |r, c| r >= h / 2 && c < w / 2),
            ),
            (
                "bottom_right",
                sum_where(f0, sig, |r, c| r >= h / 2 && c >= w / 2),
            ),
        ];
        for (key, got) in quadrants {
            assert_eq!(got, as_u64(&q[key], key), "{name}: quadrant {key}");
        }
    }
}

/// Opening by the `.hdr` finds the `.mib` and gives the same frames.
#[test]
fn opening_by_header_finds_the_frames() {
    let dir = data_dir().join("Merlin_Single_Quad");
    let f = MibFile::open(dir.join("Quad_9_Frame_CounterDepth_1_Rows_256RAW.hdr")).expect("opens");
    assert_eq!(f.frames(), 9);
    assert_eq!(f.sig_shape(), SigShape::new(512, 512));
    let h = f.header().expect("header");
    assert_eq!(h.frames_in_acquisition(), 9);
    assert_eq!(h.counter_depth(), Some(1));
    assert_eq!(h.assembly_size(), Some("2x2"));
    assert_eq!(h.software_version(), Some("0.77"));
    assert_eq!(f.first_frame_header().counter_depth, Some(1));
}
