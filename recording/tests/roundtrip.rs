//! Writes small recordings from tiles delivered out of order across scan rows, reads them
//! back with the crate's reader, and checks every pixel, the validity map and its counts,
//! the result buffers and the metadata; then the error paths
//! and an aborted (dropped) recording. Crash safety is in `crash.rs`.

mod common;

use common::*;
use stemflow_core::DType;
use stemflow_core::frame::Tile;
use stemflow_core::result::BufferKind;
use stemflow_core::sink::TileSink;
use stemflow_core::validity::FrameStatus;
use stemflow_recording::hdf5::Compression;
use stemflow_recording::{Hdf5Recorder, RecordingError, RecordingSpec, open_recording};

fn write_recording(
    name: &str,
    dtype: DType,
    compression: Compression,
    queue: usize,
) -> std::path::PathBuf {
    let path = scratch(name);
    let mut spec = RecordingSpec::new(NAV, SIG, dtype);
    spec.frames_per_chunk = 3; // chunks smaller than the tiles, and tiles off chunk bounds
    spec.compression = compression;
    spec.writer_queue = queue;
    let mut rec = Hdf5Recorder::create(&path, spec).unwrap();
    for &(first, n) in &TILES {
        rec.write_tile(&tile(first, n, dtype)).unwrap();
    }
    let summary = rec
        .finish(
            &results(),
            &validity(),
            &metadata(dtype),
            Some(&run_record()),
        )
        .unwrap();
    assert_eq!(summary.frames_written, 33);
    assert_eq!(
        summary.bytes_written,
        33 * (SIG.len() * dtype.size()) as u64
    );
    path
}

fn check_pixels(t: &Tile, dtype: DType) {
    for f in 0..t.n_frames {
        let frame = t.first_frame + f as u64;
        let px = t.frame(f);
        for i in 0..SIG.len() {
            assert_eq!(
                px.get_f64(i) as u64,
                expected(frame, i, dtype),
                "frame {frame} pixel {i} ({dtype})"
            );
        }
    }
}

/// Every dtype, inline and threaded writers, with and without compression: all pixels,
/// the validity map, results and metadata come back as written.
#[test]
fn round_trip_out_of_order_tiles_crossing_rows() {
    let cases = [
        (DType::U8, Compression::None, 0),
        (DType::U16, Compression::None, 8),
        (DType::U32, Compression::Deflate { level: 4 }, 2),
        (DType::U64, Compression::Deflate { level: 1 }, 0),
        (DType::F32, Compression::Deflate { level: 4 }, 0),
        (DType::F64, Compression::None, 2),
        // Compressed by the recorder, written by direct chunk write, read back through
        // the filter it registers.
        (DType::U8, Compression::Bslz4, 0),
        (DType::U16, Compression::Bslz4, 8),
        (DType::U32, Compression::Bslz4, 2),
        (DType::F64, Compression::Bslz4, 0),
    ];
    for (dtype, compression, queue) in cases {
        let path = write_recording(
            &format!("roundtrip-{dtype}-{compression}"),
            dtype,
            compression,
            queue,
        );
        let r = open_recording(&path).unwrap();
        assert_eq!((r.nav_shape(), r.sig_shape(), r.dtype()), (NAV, SIG, dtype));
        assert!(r.is_complete());

        // Whole acquisition, then reads that start mid-row and span rows.
        let all = r.read_tile(0, NAV.len()).unwrap();
        assert_eq!(
            (all.first_frame, all.n_frames, all.data.dtype()),
            (0, 35, dtype)
        );
        check_pixels(&all, dtype);
        for (first, n) in [(3, 12), (6, 1), (13, 22), (34, 1)] {
            let t = r.read_tile(first, n).unwrap();
            assert_eq!((t.first_frame, t.n_frames), (first, n));
            check_pixels(&t, dtype);
        }
        assert!(matches!(
            r.read_tile(30, 6),
            Err(RecordingError::FrameRange {
                end: 36,
                frames: 35,
                ..
            })
        ));

        let v = r.validity().unwrap();
        assert_eq!(v, validity());
        assert_eq!((v.received(), v.missing(), v.damaged()), (32, 2, 1));
        assert_eq!(v.status(9), FrameStatus::Missing);
        assert_eq!(v.status(20), FrameStatus::Damaged);

        let res = r.results().unwrap();
        let names: Vec<&str> = res.iter().map(|u| u.udf.as_str()).collect();
        assert_eq!(names, ["com", "sum", "sum_sig"]);
        let want = results();
        let x = res[0].buffer("x").unwrap();
        assert_eq!(
            (x.kind, x.unit.as_str(), x.shape.as_slice()),
            (BufferKind::Nav, "pixels", &[5, 7][..])
        );
        // Each UDF's parameters come back as written; none written, none read.
        assert_eq!(res[0].params, want[1].params);
        assert_eq!(res[0].params, r#"{"cx":1.5,"mask_radius":4.0}"#);
        assert_eq!((res[1].params.as_str(), res[2].params.as_str()), ("", ""));
        for (a, b) in x.data.iter().zip(&want[1].buffers[0].data) {
            assert!(a == b || (a.is_nan() && b.is_nan()), "com x {a} != {b}");
        }
        assert!(res[2].buffer("intensity").unwrap().data[9].is_nan());
        // Typed buffers come back in their type, fill values as NaN again.
        let hits = res[2].buffer("hits").unwrap();
        assert_eq!(hits.dtype, stemflow_core::result::ResultDType::U16);
        assert!(hits.data[9].is_nan() && hits.data[10].is_nan());
        assert_eq!(hits.data[3], 6.0);
        assert_eq!(
            res[1].buffer("frame_sum").unwrap().dtype,
            stemflow_core::result::ResultDType::U64
        );
        assert_eq!(res[1].buffer("frame_sum").unwrap(), &want[2].buffers[0]);
        assert_eq!(res[1].buffer("total").unwrap().data, vec![12345.0]);
        assert_eq!(res[1].buffer("total").unwrap().kind, BufferKind::Single);
        assert_eq!(
            res[1].buffer("frames_seen").unwrap(),
            &want[2].buffers[2],
            "0-d buffer"
        );

        assert_eq!(r.metadata().unwrap(), metadata(dtype));
        let rr: serde_json::Value =
            serde_json::from_str(&r.run_record_json().unwrap().unwrap()).unwrap();
        assert_eq!(rr, run_record());
        assert_eq!(
            r.read_string("/entry/start_time").unwrap(),
            "2025-01-01T00:00:00Z"
        );
        assert_eq!(
            r.read_string("/entry/stop_time").unwrap(),
            "2025-01-01T00:00:02Z"
        );
        assert_eq!(
            r.read_string("/entry/software_version").unwrap(),
            stemflow_core::SOFTWARE_VERSION
        );
        assert!(
            r.read_string("/entry/instrument/detector/header")
                .unwrap()
                .starts_with("HDR,")
        );
        assert_eq!(
            r.read_string("/entry/instrument/scan/trigger").unwrap(),
            "pixel"
        );
        drop(r);
        std::fs::remove_file(&path).unwrap();
    }
}

/// Tiles that do not fit are refused with errors naming the file and the numbers, and the
/// recorder keeps working after a refused tile.
#[test]
fn bad_tiles_and_bad_finish_inputs_are_errors() {
    let path = scratch("errors");
    let mut rec = Hdf5Recorder::create(&path, RecordingSpec::new(NAV, SIG, DType::U16)).unwrap();
    let e = rec.write(&tile(33, 3, DType::U16)).unwrap_err();
    assert!(
        matches!(
            e,
            RecordingError::FrameRange {
                first: 33,
                end: 36,
                frames: 35,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains(&path.display().to_string()));
    let e = rec.write(&tile(0, 2, DType::U32)).unwrap_err();
    assert!(matches!(e, RecordingError::TileDtype { .. }), "{e}");
    let mut wrong = tile(0, 2, DType::U16);
    wrong.sig_shape = stemflow_core::SigShape::new(4, 6);
    let e = rec.write(&wrong).unwrap_err();
    assert!(
        e.to_string().contains("4x6") && e.to_string().contains("6x4"),
        "{e}"
    );
    let mut short = tile(0, 2, DType::U16);
    short.n_frames = 3;
    assert!(matches!(
        rec.write(&short).unwrap_err(),
        RecordingError::TileLength {
            expected: 72,
            observed: 48,
            ..
        }
    ));
    rec.write(&tile(0, 7, DType::U16)).unwrap();
    let e = rec
        .finish(
            &[],
            &stemflow_core::validity::FrameValidity::new(34),
            &metadata(DType::U16),
            None,
        )
        .unwrap_err();
    assert!(
        e.to_string().contains("34 frames") && e.to_string().contains("/entry/data/validity"),
        "{e}"
    );

    let mut spec = RecordingSpec::new(NAV, SIG, DType::U16);
    assert!("deflate:12".parse::<Compression>().is_err());
    spec.compression = Compression::Deflate { level: 12 };
    assert!(matches!(
        Hdf5Recorder::create(&path, spec),
        Err(RecordingError::Spec { .. })
    ));
    std::fs::remove_file(&path).unwrap();
}

/// A recording dropped without `finish` (aborted run) is closed readable, marked
/// incomplete, with the frames written so far.
#[test]
fn dropped_recording_is_readable_and_incomplete() {
    let path = scratch("dropped");
    let mut rec = Hdf5Recorder::create(&path, RecordingSpec::new(NAV, SIG, DType::U16)).unwrap();
    rec.write_tile(&tile(11, 9, DType::U16)).unwrap();
    drop(rec);
    let r = open_recording(&path).unwrap();
    assert!(!r.is_complete());
    let v = r.validity().unwrap();
    assert_eq!(v.received(), 9);
    assert_eq!(v.status(11), FrameStatus::Received);
    check_pixels(&r.read_tile(11, 9).unwrap(), DType::U16);
    assert!(r.metadata_json().is_err());
    std::fs::remove_file(&path).unwrap();
}

/// A child process started while a recording is open inherits its file descriptor; the
/// finished file must still open (no HDF5 file lock held through the child).
#[test]
fn child_process_started_during_recording_does_not_lock_the_file() {
    let path = scratch("inherited");
    let mut rec = Hdf5Recorder::create(&path, RecordingSpec::new(NAV, SIG, DType::U16)).unwrap();
    let mut child = std::process::Command::new("sleep")
        .arg("10")
        .spawn()
        .unwrap();
    rec.write_tile(&tile(0, 7, DType::U16)).unwrap();
    rec.finish(&[], &validity(), &metadata(DType::U16), None)
        .unwrap();
    // A plain libhdf5 open takes the usual shared lock, as h5py and other programs do.
    let opened = hdf5::File::open(&path);
    child.kill().unwrap();
    child.wait().unwrap();
    let f = opened.unwrap();
    assert_eq!(
        f.dataset("/entry/data/frames").unwrap().shape(),
        [5, 7, 6, 4]
    );
    drop(f);
    assert!(open_recording(&path).unwrap().is_complete());
    std::fs::remove_file(&path).unwrap();
}

/// A recording that cannot fit on the disk (an HDR announcing 10^10 frames) is refused
/// before its file is created, naming the bytes needed and free; one whose size does not
/// fit in 64 bits as well.
#[test]
fn a_recording_larger_than_the_disk_is_refused_before_the_file_exists() {
    use stemflow_core::{NavShape, SigShape};
    let path = scratch("too-big.h5");
    let spec = RecordingSpec::new(
        NavShape::new(100000, 100000),
        SigShape::new(256, 256),
        DType::U16,
    );
    let Err(e) = Hdf5Recorder::create(&path, spec) else {
        panic!("a recording of 1.3 PB was created");
    };
    let text = e.to_string();
    assert!(matches!(e, RecordingError::Spec { .. }), "{text}");
    assert!(
        text.contains("the frames need 1310720000000000 bytes"),
        "{text}"
    );
    assert!(text.contains("bytes free"), "{text}");
    assert!(!path.exists(), "the file was created");

    let spec = RecordingSpec::new(
        NavShape::new(1 << 32, 1 << 32),
        SigShape::new(256, 256),
        DType::U16,
    );
    let Err(e) = Hdf5Recorder::create(&path, spec) else {
        panic!("a recording of 2^64 frames was created");
    };
    let text = e.to_string();
    assert!(text.contains("do not fit in a file"), "{text}");
    assert!(!path.exists());
}

/// A detector header far larger than an HDF5 attribute may be (64 KiB) still records: the
/// reader views keep the run metadata in a dataset, and the HyperSpy and py4DSTEM views
/// (hard links to the frames, axes, calibration) are there.
#[test]
fn a_large_detector_header_and_the_reader_views() {
    let path = scratch("large-header");
    let mut md = metadata(DType::U16);
    md.detector_header = Some("x".repeat(200 << 10));
    let mut rec = Hdf5Recorder::create_with_metadata(
        &path,
        RecordingSpec::new(NAV, SIG, DType::U16),
        Some(&md),
    )
    .unwrap();
    for &(first, n) in &TILES {
        rec.write_tile(&tile(first, n, DType::U16)).unwrap();
    }
    rec.finish(&results(), &validity(), &md, Some(&run_record()))
        .unwrap();
    let f = hdf5::File::open(&path).unwrap();
    let frames = f.dataset("/entry/data/frames").unwrap();
    // The HyperSpy signal is named after the file's stem.
    let title = path.file_stem().unwrap().to_string_lossy().into_owned();
    let signal = format!("/Experiments/{title}");
    for other in [
        format!("{signal}/data"),
        "/4DSTEM/datacube/data".to_string(),
    ] {
        let other = other.as_str();
        let d = f.dataset(other).unwrap();
        assert_eq!(d.shape(), frames.shape(), "{other}");
        assert_eq!(
            d.read_raw::<u16>().unwrap(),
            frames.read_raw::<u16>().unwrap(),
            "{other}"
        );
    }
    let json: hdf5::types::VarLenUnicode = f
        .dataset(&format!("{signal}/original_metadata/stemflow_run_metadata"))
        .unwrap()
        .read_scalar()
        .unwrap();
    assert!(json.as_str().len() > 200 << 10);
    let scale: f64 = f
        .group(&format!("{signal}/axis-0"))
        .unwrap()
        .attr("scale")
        .unwrap()
        .read_scalar()
        .unwrap();
    assert_eq!(scale, 2.5, "the scan step of the metadata's calibration");
    let r: f64 = f
        .dataset("/4DSTEM/metadatabundle/calibration/R_pixel_size")
        .unwrap()
        .read_scalar()
        .unwrap();
    assert_eq!(r, 2.5);
    drop(f);
    std::fs::remove_file(&path).unwrap();
}
