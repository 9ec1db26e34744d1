//! Built-ins and offline readers on real data from `../shared/data`, against references
//! computed here from the file bytes (never through our readers): Merlin `.mib` recordings
//! read as raw binary with per-frame headers (checked against `merlin/reference.json`,
//! written by an independent reader), the DECTRIS stream capture's decoded frames
//! (`.npy`), and live/offline parity: the same frames through the live path (raw
//! big-endian stacks → decode → UDFs) and through the `.npy`, raw and HDF5 readers give
//! bit-identical results.

mod common;

use common::{assert_identical, buffer, data, raw_stacks, run_on};
use crossbeam_channel::bounded;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use stemflow_core::{DType, NavShape, SigShape};
use stemflow_processing::io::ByteOrder;
use stemflow_processing::udf::Udf;
use stemflow_processing::{
    DataSet, Hdf5DataSet, Mask, MasksUdf, NpyDataSet, PickUdf, RadialProfileParams,
    RadialProfileUdf, RawDataSet, RawSpec, Roi, RunConfig, StatsUdf, run_dataset, run_live,
    standard_udfs,
};

/// `(header bytes, dtype)` from a MIB file's first MQ1 header (fields 3 and 7,
/// protocols.md §1).
fn mib_layout(path: &Path) -> (u64, DType) {
    let bytes = std::fs::read(path).unwrap();
    let text = String::from_utf8_lossy(&bytes[..64]);
    let f: Vec<&str> = text.split(',').collect();
    let dtype = match f[6] {
        "U08" => DType::U8,
        "U16" => DType::U16,
        "U32" => DType::U32,
        other => panic!("dtype {other}"),
    };
    (f[2].parse().unwrap(), dtype)
}

#[test]
fn merlin_recordings_read_as_raw_match_the_independent_reference() {
    let refs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data("merlin/reference.json")).unwrap())
            .unwrap();
    for stem in [
        "Single_9_Frame_CounterDepth_12_Rows_256",
        "Single_9_Frame_CounterDepth_24_Rows_256",
        "Single_9_Frame_CounterDepth_6_Rows_256",
        "Quad_9_Frame_CounterDepth_12_Rows_256",
    ] {
        let name = format!("{stem}.mib");
        let r = &refs[&name];
        let path = data(&format!("merlin/Merlin_Single_Quad/{name}"));
        let (hdr, dtype) = mib_layout(&path);
        let sig = r["sig_shape"].as_array().unwrap();
        let sig = SigShape::new(
            sig[0].as_u64().unwrap() as usize,
            sig[1].as_u64().unwrap() as usize,
        );
        let frames = r["frames"].as_u64().unwrap() as usize;
        let nav = NavShape::new(1, frames);
        let spec = RawSpec {
            nav_shape: nav,
            sig_shape: sig,
            dtype,
            byte_order: ByteOrder::Big,
            offset: 0,
            frame_header_bytes: hdr,
        };
        let mut ds = RawDataSet::open(&path, spec).unwrap();
        let udfs: Vec<Box<dyn Udf>> = vec![
            Box::new(stemflow_processing::SumUdf::new()),
            Box::new(stemflow_processing::SumSigUdf::new()),
            Box::new(StatsUdf::new()),
            Box::new(PickUdf::new(0, 0)),
        ];
        let s = run_on(&mut ds, &RunConfig::new(nav, sig, dtype), &udfs);
        let per_frame: Vec<f64> = r["per_frame_sums"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(buffer(&s, "sum_sig", "intensity"), &per_frame[..], "{stem}");
        let total: f64 = buffer(&s, "sum", "intensity").iter().sum();
        assert_eq!(total, r["total"].as_f64().unwrap(), "{stem}");
        let max = buffer(&s, "stats", "max")
            .iter()
            .cloned()
            .fold(0.0, f64::max);
        assert_eq!(max, r["max_value"].as_f64().unwrap(), "{stem}");
        // Pixel order holds for single-chip files (quad files need the chip rearrangement
        // of the Merlin decoder; their sums above do not depend on it).
        if stem.starts_with("Single") {
            let f0 = buffer(&s, "pick", "intensity");
            let row0: f64 = f0[..sig.cols].iter().sum();
            let col0: f64 = (0..sig.rows).map(|y| f0[y * sig.cols]).sum();
            assert_eq!(row0, r["frame0_row0_sum"].as_f64().unwrap(), "{stem}");
            assert_eq!(col0, r["frame0_col0_sum"].as_f64().unwrap(), "{stem}");
        }
    }
}

/// The DECTRIS capture's decoded frames: (16, 16, 256, 256) little-endian u16.
fn dectris_npy() -> PathBuf {
    data("dectris/stream-v1/synthetic_16x16_256_u16.npy")
}

/// The first `n` frames of the capture, decoded from the file's last bytes (the data follow
/// the header; read without our `.npy` parser).
fn dectris_frames(n: usize) -> Vec<Vec<u64>> {
    let bytes = std::fs::read(dectris_npy()).unwrap();
    let len = 256 * 256;
    let start = bytes.len() - 256 * len * 2;
    (0..n)
        .map(|f| {
            bytes[start + f * len * 2..start + (f + 1) * len * 2]
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as u64)
                .collect()
        })
        .collect()
}

#[test]
fn builtins_on_the_dectris_capture_match_naive_references() {
    let mut ds = NpyDataSet::open(&dectris_npy()).unwrap();
    let (nav, sig) = (ds.nav_shape(), ds.sig_shape());
    assert_eq!(
        (nav, sig, ds.dtype()),
        (NavShape::new(16, 16), SigShape::new(256, 256), DType::U16)
    );
    // Expensive references on 12 frames spread over the scan, through a ROI.
    let picked: Vec<usize> = (0..12).map(|k| k * 21 + 3).collect();
    let coords: Vec<(usize, usize)> = picked.iter().map(|&i| (i / 16, i % 16)).collect();
    let roi = Roi::from_coords(nav, &coords).unwrap();
    let (cx, cy) = (128.0, 128.0);
    let mut udfs = standard_udfs(cx, cy, 20.0);
    udfs.push(Box::new(StatsUdf::new()));
    udfs.push(Box::new(RadialProfileUdf::new(RadialProfileParams {
        cx,
        cy,
        bin_width: 8.0,
        n_bins: 16,
    })));
    udfs.push(Box::new(
        MasksUdf::new([(
            "rect",
            Mask::Rectangle {
                x: 100.0,
                y: 90.0,
                width: 40.0,
                height: 20.0,
            },
        )])
        .named("more"),
    ));
    let whole = run_on(&mut ds, &RunConfig::new(nav, sig, DType::U16), &udfs);
    let part = run_on(
        &mut ds,
        &RunConfig::new(nav, sig, DType::U16).with_roi(roi),
        &udfs,
    );
    let all = dectris_frames(256);
    // Whole scan: the documented total, per-frame sums, statistics.
    let total: f64 = buffer(&whole, "sum", "intensity").iter().sum();
    assert_eq!(total, 34_446_517.0);
    for (i, f) in all.iter().enumerate() {
        assert_eq!(
            buffer(&whole, "sum_sig", "intensity")[i],
            f.iter().sum::<u64>() as f64
        );
    }
    for p in (0..sig.len()).step_by(97) {
        let col: Vec<f64> = all.iter().map(|f| f[p] as f64).collect();
        let mean = col.iter().sum::<f64>() / 256.0;
        let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 256.0;
        assert!((buffer(&whole, "stats", "mean")[p] - mean).abs() <= 1e-12 * mean.max(1.0));
        assert!((buffer(&whole, "stats", "var")[p] - var).abs() <= 1e-9 * var.max(1.0));
    }
    // ROI frames: virtual detectors, CoM, radial profile; NaN elsewhere.
    let dist = |i: usize| ((i % 256) as f64 + 0.5 - cx).hypot((i / 256) as f64 + 0.5 - cy);
    for &i in &picked {
        let f = &all[i];
        let masked = |keep: &dyn Fn(usize) -> bool| -> f64 {
            (0..f.len()).filter(|&p| keep(p)).map(|p| f[p] as f64).sum()
        };
        assert_eq!(
            buffer(&part, "virtual", "bf")[i],
            masked(&|p| dist(p) <= 20.0)
        );
        assert_eq!(
            buffer(&part, "virtual", "adf")[i],
            masked(&|p| dist(p) > 30.0 && dist(p) <= 60.0)
        );
        assert_eq!(
            buffer(&part, "more", "rect")[i],
            masked(&|p| (100..140).contains(&(p % 256)) && (90..110).contains(&(p / 256)))
        );
        let t = masked(&|p| dist(p) <= 25.0);
        let mx: f64 = (0..f.len())
            .filter(|&p| dist(p) <= 25.0)
            .map(|p| f[p] as f64 * ((p % 256) as f64 + 0.5))
            .sum();
        assert!(
            (buffer(&part, "com", "x")[i] - (mx / t - cx)).abs() < 1e-9,
            "frame {i}"
        );
        for b in 0..16 {
            let ring: Vec<f64> = (0..f.len())
                .filter(|&p| (dist(p) / 8.0).floor() as usize == b)
                .map(|p| f[p] as f64)
                .collect();
            let want = ring.iter().sum::<f64>() / ring.len() as f64;
            let got = buffer(&part, "radial", "profile")[i * 16 + b];
            assert!(
                (got - want).abs() <= 1e-12 * want.max(1.0),
                "frame {i} bin {b}"
            );
        }
    }
    assert!(buffer(&part, "virtual", "bf")[0].is_nan());
    assert_eq!(part.frames_processed, 12);
}

#[test]
fn live_and_offline_readers_give_bit_identical_results() {
    let dir = std::env::temp_dir().join(format!("stemflow-parity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let nav = NavShape::new(3, 16);
    let sig = SigShape::new(256, 256);
    let frames = dectris_frames(nav.len());
    let le: Vec<u8> = frames
        .iter()
        .flatten()
        .flat_map(|&v| (v as u16).to_le_bytes())
        .collect();
    let be: Vec<u8> = frames
        .iter()
        .flatten()
        .flat_map(|&v| (v as u16).to_be_bytes())
        .collect();
    // .npy (4-D), raw big-endian with a 100-byte file header, HDF5 4-D and 3-D.
    let npy = dir.join("f.npy");
    let mut bytes = stemflow_processing::io::npy::header_bytes("<u2", &[3, 16, 256, 256]);
    bytes.extend_from_slice(&le);
    std::fs::write(&npy, bytes).unwrap();
    let raw = dir.join("f.raw");
    let mut bytes = vec![7u8; 100];
    bytes.extend_from_slice(&be);
    std::fs::write(&raw, bytes).unwrap();
    let h5 = dir.join("f.h5");
    {
        let f = hdf5::File::create(&h5).unwrap();
        let flat: Vec<u16> = frames.iter().flatten().map(|&v| v as u16).collect();
        let a4 = ndarray::Array4::from_shape_vec((3, 16, 256, 256), flat.clone()).unwrap();
        f.new_dataset_builder()
            .with_data(&a4)
            .create("/entry/data/frames")
            .unwrap();
        let a3 = ndarray::Array3::from_shape_vec((48, 256, 256), flat).unwrap();
        f.create_group("scan").unwrap();
        f.new_dataset_builder()
            .with_data(&a3)
            .create("/scan/stack")
            .unwrap();
    }
    let udfs = || -> Vec<Box<dyn Udf>> {
        let mut u = standard_udfs(128.0, 128.0, 24.0);
        u.push(Box::new(StatsUdf::new()));
        u.push(Box::new(RadialProfileUdf::new(RadialProfileParams {
            cx: 128.0,
            cy: 128.0,
            bin_width: 4.0,
            n_bins: 32,
        })));
        u
    };
    let mut cfg = RunConfig::new(nav, sig, DType::U16);
    cfg.threads = Some(2);
    // Live: big-endian raw stacks of 5 frames through a channel, decoded by the workers.
    let (tx, rx) = bounded(4);
    let stacks = raw_stacks(&frames, 0, 5, sig, &[]);
    let feeder = std::thread::spawn(move || {
        for s in stacks {
            let _ = tx.send(s.into());
        }
    });
    let live = run_live(
        rx,
        &udfs(),
        &cfg,
        None,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    feeder.join().unwrap();
    assert_eq!(live.frames_processed, 48);
    let spec = RawSpec {
        nav_shape: nav,
        sig_shape: sig,
        dtype: DType::U16,
        byte_order: ByteOrder::Big,
        offset: 100,
        frame_header_bytes: 0,
    };
    let mut sets: Vec<(&str, Box<dyn DataSet>)> = vec![
        ("npy", Box::new(NpyDataSet::open(&npy).unwrap())),
        ("raw", Box::new(RawDataSet::open(&raw, spec).unwrap())),
        ("h5 4-D", Box::new(Hdf5DataSet::open(&h5, None).unwrap())),
        (
            "h5 3-D",
            Box::new(Hdf5DataSet::open(&h5, Some("/scan/stack")).unwrap()),
        ),
    ];
    for (what, ds) in &mut sets {
        let s = run_dataset(
            ds.as_mut(),
            &udfs(),
            &cfg,
            None,
            &mut |_| {},
            &AtomicBool::new(false),
        )
        .unwrap();
        assert_eq!(s.frames_processed, 48, "{what}");
        assert_identical(&s.results, &live.results);
    }
    // A truncated raw file names the file and the sizes.
    let short = dir.join("short.raw");
    std::fs::write(&short, vec![0u8; 1000]).unwrap();
    let mut ds = RawDataSet::open(&short, spec).unwrap();
    let err = run_dataset(
        &mut ds,
        &udfs(),
        &cfg,
        None,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(err.to_string().contains("short.raw"), "{err}");
    assert!(err.to_string().contains("the file has 1000"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
