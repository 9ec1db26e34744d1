//! No silent traps around a run's outputs: an earlier run's results are never replaced
//! without `--overwrite`; raw recording off means no frames in the file (and the file says
//! so); offline processing of a stemflow recording gives the live run's results with the
//! defaults, because it reuses the run's detector geometry; a recording keeps its
//! calibration.

mod common;

use common::command::{self, path_arg};
use common::scratch::ScratchDir;
use stemflow_recording::reader::open_recording;

fn buffer(path: &std::path::Path, udf: &str, name: &str) -> Vec<f64> {
    let rec = open_recording(path).expect("recording");
    let res = rec.results().expect("results");
    let u = res
        .iter()
        .find(|r| r.udf == udf)
        .unwrap_or_else(|| panic!("no {udf} in {}", path.display()));
    u.buffer(name)
        .unwrap_or_else(|| panic!("no {udf}/{name}"))
        .data
        .clone()
}

/// A second run into the same `--out` is refused, naming the files, and leaves the first
/// run's outputs as they were; `--overwrite` replaces them.
#[test]
fn an_earlier_run_is_never_overwritten_silently() {
    let dir = ScratchDir::new("traps-overwrite");
    let out = dir.path().join("out");
    let first = command::stemflow(
        &["--out", path_arg(&out), "--nav-shape", "4x4"],
        dir.path(),
        "first",
    );
    first.assert_success("first run");
    let rec = out.join("recording.hspy");
    let before = std::fs::metadata(&rec)
        .expect("recording")
        .modified()
        .expect("mtime");
    let run_json = std::fs::read_to_string(out.join("run.json")).expect("run.json");

    let second = command::stemflow(
        &["--out", path_arg(&out), "--nav-shape", "4x4"],
        dir.path(),
        "second",
    );
    assert_eq!(second.status.code(), Some(1), "{}", second.describe());
    assert!(
        second
            .stderr
            .contains("holds the outputs of an earlier run")
            && second.stderr.contains("recording.hspy")
            && second.stderr.contains("--overwrite"),
        "{}",
        second.describe()
    );
    assert_eq!(
        std::fs::metadata(&rec)
            .expect("recording")
            .modified()
            .expect("mtime"),
        before,
        "the refused run touched the recording"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("run.json")).expect("run.json"),
        run_json
    );

    // process too, and it never writes over its own input.
    let p = command::stemflow(
        &[
            "process",
            path_arg(&rec),
            "--out",
            path_arg(&out),
            "--overwrite",
        ],
        dir.path(),
        "process-into-input",
    );
    assert_eq!(p.status.code(), Some(1), "{}", p.describe());
    assert!(p.stderr.contains("another folder"), "{}", p.describe());
    assert!(rec.is_file(), "the input was removed");

    let third = command::stemflow(
        &["--out", path_arg(&out), "--nav-shape", "3x3", "--overwrite"],
        dir.path(),
        "overwrite",
    );
    third.assert_success("--overwrite");
    assert_eq!(open_recording(&rec).expect("recording").frames(), 9);
}

/// `--no-raw`, live and offline: the recording has no frames dataset (not a full-shape
/// dataset of zeros that readers would sum), says so, and still holds the validity map,
/// the results and the metadata.
#[test]
fn no_raw_recordings_hold_no_frames_and_say_so() {
    let dir = ScratchDir::new("traps-no-raw");
    let live = dir.path().join("live");
    command::stemflow(
        &["--out", path_arg(&live), "--nav-shape", "4x4", "--no-raw"],
        dir.path(),
        "live",
    )
    .assert_success("--no-raw");
    let raw = dir.path().join("raw");
    command::stemflow(
        &["--out", path_arg(&raw), "--nav-shape", "4x4"],
        dir.path(),
        "with-raw",
    )
    .assert_success("with raw");
    let offline = dir.path().join("offline");
    command::stemflow(
        &[
            "process",
            path_arg(&raw.join("recording.hspy")),
            "--out",
            path_arg(&offline),
            "--no-raw",
        ],
        dir.path(),
        "process",
    )
    .assert_success("process --no-raw");
    for d in [&live, &offline] {
        let path = d.join("recording.hspy");
        {
            let f = hdf5::File::open(&path).expect("open");
            assert!(
                !f.link_exists("/entry/data/frames"),
                "{}: a frames dataset without raw recording",
                path.display()
            );
            let data = f.group("/entry/data").expect("data");
            let recorded: u8 = data
                .attr("frames_recorded")
                .and_then(|a| a.read_scalar())
                .expect("frames_recorded");
            assert_eq!(recorded, 0);
            let note: hdf5::types::VarLenUnicode = data
                .attr("frames_note")
                .and_then(|a| a.read_scalar())
                .expect("frames_note");
            assert!(note.as_str().contains("not recorded"), "{note}");
        }
        let rec = open_recording(&path).expect("reader opens it");
        assert!(!rec.has_frames());
        assert_eq!(rec.frames(), 16);
        assert_eq!(rec.validity().expect("validity").received(), 16);
        assert!(
            rec.read_tile(0, 1).is_err(),
            "frames read from a file without"
        );
        assert!(!rec.results().expect("results").is_empty());
        assert!(
            !d.join("recording.emd").exists(),
            "a py4DSTEM link to a file without frames"
        );
    }
}

/// `process` on a stemflow recording with the defaults gives the live run's results:
/// it reuses the virtual detectors the live run used (from the profile's optics, not the
/// frame-centred defaults) and says so; the calibration carries over.
#[test]
fn offline_with_defaults_gives_the_live_results() {
    let dir = ScratchDir::new("traps-offline-defaults");
    let live = dir.path().join("live");
    command::stemflow(
        &["--out", path_arg(&live), "--nav-shape", "6x6"],
        dir.path(),
        "live",
    )
    .assert_success("live");
    let offline = dir.path().join("offline");
    let p = command::stemflow(
        &[
            "process",
            path_arg(&live.join("recording.hspy")),
            "--out",
            path_arg(&offline),
        ],
        dir.path(),
        "process",
    );
    p.assert_success("process");
    assert!(
        p.stdout
            .contains("virtual detectors as recorded by the live run"),
        "{}",
        p.describe()
    );
    let (a, b) = (live.join("recording.hspy"), offline.join("recording.hspy"));
    for (udf, buf) in [
        ("virtual", "bf"),
        ("virtual", "adf"),
        ("com", "x"),
        ("com", "y"),
        ("sum", "intensity"),
    ] {
        assert_eq!(buffer(&a, udf, buf), buffer(&b, udf, buf), "{udf}/{buf}");
    }
    let cal = open_recording(&b)
        .expect("recording")
        .metadata()
        .expect("metadata")
        .calibration
        .expect("calibration");
    // The embedded profile: 0.5 nm steps, 55 µm pixels at 0.1 m and 200 kV.
    assert_eq!(cal.scan_step_nm, Some(0.5));
    assert!((cal.mrad_per_pixel.expect("mrad") - 0.55).abs() < 1e-9);
}

/// The same simulated scan recorded with each compression reads back identical frames
/// (bslz4: compressed by the pipeline's workers, written by direct chunk write, read back
/// through stemflow's own filter); the compressed files are much smaller than the frames.
#[test]
fn every_compression_records_the_same_frames() {
    let dir = ScratchDir::new("traps-compression");
    let mut frames = Vec::new();
    for c in ["none", "deflate", "bslz4"] {
        let out = dir.path().join(c);
        command::stemflow(
            &[
                "--out",
                path_arg(&out),
                "--nav-shape",
                "6x6",
                "--compression",
                c,
            ],
            dir.path(),
            c,
        )
        .assert_success(c);
        let path = out.join("recording.hspy");
        let rec = open_recording(&path).expect("recording");
        let tile = rec.read_tile(0, 36).expect("frames");
        let stemflow_core::frame::TileData::U16(px) = tile.data else {
            panic!("{c}: not u16 frames");
        };
        let size = std::fs::metadata(&path).expect("size").len();
        let raw_bytes = (px.len() * 2) as u64;
        if c != "none" {
            assert!(
                size * 4 < raw_bytes,
                "{c}: {size} bytes for {raw_bytes} of frames"
            );
        }
        assert!(px.iter().any(|&v| v > 0), "{c}: all zero");
        frames.push(px);
    }
    assert_eq!(frames[0], frames[1], "deflate differs from uncompressed");
    assert_eq!(frames[0], frames[2], "bslz4 differs from uncompressed");
}

/// A layout-1 recording (`scan.h5` of earlier stemflow versions: `/entry/data/frames`,
/// the validity map, no reader views, no calibration) is still processed, and its frames'
/// sum comes out right.
#[test]
fn layout_1_recordings_are_still_processed() {
    let dir = ScratchDir::new("traps-layout-1");
    let path = dir.path().join("scan.h5");
    let (rows, cols, sr, sc) = (3usize, 4usize, 8usize, 8usize);
    let px: Vec<u16> = (0..rows * cols * sr * sc)
        .map(|i| (i % 13) as u16)
        .collect();
    {
        let f = hdf5::File::create(&path).expect("create");
        let entry = f.create_group("entry").expect("entry");
        entry
            .new_attr::<u64>()
            .create("stemflow_layout_version")
            .and_then(|a| a.write_scalar(&1u64))
            .expect("version");
        let data = entry.create_group("data").expect("data");
        let arr = ndarray::Array4::from_shape_vec((rows, cols, sr, sc), px.clone()).expect("shape");
        data.new_dataset_builder()
            .with_data(&arr)
            .chunk((1, cols, sr, sc))
            .create("frames")
            .expect("frames");
        let v = ndarray::Array2::<u8>::ones((rows, cols));
        data.new_dataset_builder()
            .with_data(&v)
            .create("validity")
            .expect("validity");
    }
    let out = dir.path().join("out");
    let p = command::stemflow(
        &["process", path_arg(&path), "--out", path_arg(&out)],
        dir.path(),
        "process-v1",
    );
    p.assert_success("process a layout-1 file");
    let total: u64 = px.iter().map(|&v| u64::from(v)).sum();
    assert!(
        p.stdout
            .contains(&format!("sum over all frames and pixels: {total}")),
        "{}",
        p.describe()
    );
    let rec = open_recording(out.join("recording.hspy")).expect("recording");
    assert_eq!(rec.frames(), 12);
}

/// A profile without `[scan] step_nm`: the scan step is the microscope's full scan field
/// of view read back (the simulated column: 32 nm at 2 000 000×) over the scan's columns,
/// stored in run.json and the recording; `--scan-step-nm` still wins.
#[test]
fn the_scan_step_comes_from_the_microscopes_field_of_view() {
    let dir = ScratchDir::new("traps-fov");
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/profiles/simulated.toml"
    ))
    .expect("reading the simulated profile");
    let line = text
        .lines()
        .find(|l| l.starts_with("step_nm"))
        .expect("the profile's step");
    let profile = dir.path().join("no-step.toml");
    std::fs::write(&profile, text.replace(line, "")).expect("writing the profile");
    for (extra, step) in [(None, 4.0), (Some("1.25"), 1.25)] {
        let out = dir.path().join(format!("out-{step}"));
        let mut args = vec![
            "--profile",
            path_arg(&profile),
            "--nav-shape",
            "4x8",
            "--out",
            path_arg(&out),
        ];
        if let Some(s) = extra {
            args.extend(["--scan-step-nm", s]);
        }
        command::stemflow(&args, dir.path(), "fov").assert_success("scan");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).expect("run.json"))
                .expect("run.json parses");
        let cal = &json["metadata"]["calibration"];
        assert_eq!(cal["scan_step_nm"].as_f64(), Some(step), "{cal:#}");
        let stored = open_recording(out.join("recording.hspy"))
            .expect("recording")
            .metadata()
            .expect("metadata")
            .calibration
            .expect("calibration");
        assert_eq!(stored.scan_step_nm, Some(step));
    }
}
