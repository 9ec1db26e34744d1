//! The `stemflow` command line end to end, as a user runs it: the simulated instrument
//! (`stemflow --nav-shape …`), `stemflow sim merlin` serving the real recordings in
//! `../shared/data/merlin/`, `stemflow acquire` in active and passive mode against it,
//! `stemflow process` on the same recordings — and the failures a user meets: an acquisition
//! nobody arms, a detector that never triggers, a truncated file.
//!
//! Live/offline parity: the frames a recording holds give bit-identical results (every
//! buffer of every UDF) and bit-identical recorded frames through the live path (simulator →
//! control and data ports → receiver → processing → HDF5) and the offline path
//! (`stemflow process`).
//!
//! Every child process binds 127.0.0.1 with ephemeral ports, runs under a deadline, and is
//! killed (with its process group) when its guard drops.

mod common;

use common::command::{self, Finished, buffer, path_arg};
use common::process::ChildGuard;
use common::scratch::{ScratchDir, shared_data};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use stemflow_core::result::UdfResults;
use stemflow_drivers::merlin::MerlinControl;
use stemflow_recording::reader::{RecordingReader, open_recording};
use stemflow_simulators::merlin::{MerlinSim, MerlinSimConfig, MerlinSource, Pacing};
use stemflow_simulators::specimen::Specimen;

fn recording(stem: &str) -> PathBuf {
    shared_data().join(format!("merlin/Merlin_Single_Quad/{stem}.hdr"))
}

/// Runs `stemflow ARGS` to completion, its logs named after the subcommand.
fn stemflow(args: &[&str], scratch: &Path) -> Finished {
    command::stemflow(args, scratch, args.first().unwrap_or(&"run"))
}

fn open(path: &Path) -> RecordingReader {
    open_recording(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

fn results(r: &RecordingReader) -> Vec<UdfResults> {
    r.results()
        .unwrap_or_else(|e| panic!("results of {}: {e}", r.path().display()))
}

/// Width and height from a PNG's IHDR chunk (PNG spec §11.2.2), after checking the signature.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.len() > 24 && bytes[..8] == *b"\x89PNG\r\n\x1a\n" && &bytes[12..16] == b"IHDR",
        "{} is not a PNG",
        path.display()
    );
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

/// Pearson correlation coefficient of two equally long series.
fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    sab / (saa * sbb).sqrt()
}

// ---------------------------------------------------------------------------------------

/// The README's main job on a small scan: the simulated instrument (microscope, scan engine
/// firing the trigger line, Merlin simulator over loopback, synthetic specimen) through the
/// orchestrator, with the state changes on stderr, the summary on stdout, an HDF5 recording
/// whose raw frames agree with the reductions, the microscope state read back as metadata,
/// and PNG images of BF, ADF and CoM.
#[test]
fn simulated_instrument_scan_writes_recording_and_images() {
    let dir = ScratchDir::new("cli-simulate");
    let out = dir.path().join("out");
    let run = stemflow(
        &["--out", path_arg(&out), "--nav-shape", "16x16"],
        dir.path(),
    );
    run.assert_success("stemflow --nav-shape 16x16");
    assert!(
        run.stdout
            .contains("256 expected, 256 received, 0 lost, 0 damaged, 256 processed"),
        "summary line missing: {}",
        run.describe()
    );
    for state in ["Configuring", "Armed", "Running", "Idle"] {
        assert!(
            run.stderr.contains(&format!("--> {state}")),
            "no state change to {state} on stderr: {}",
            run.describe()
        );
    }

    let rec = open(&out.join("recording.hspy"));
    assert!(rec.is_complete(), "recording not marked complete");
    assert_eq!((rec.nav_shape().rows, rec.nav_shape().cols), (16, 16));
    assert_eq!((rec.sig_shape().rows, rec.sig_shape().cols), (256, 256));
    assert_eq!(rec.frames(), 256);
    let validity = rec.validity().expect("validity");
    assert_eq!((validity.received(), validity.missing()), (256, 0));

    let meta = rec.metadata().expect("metadata");
    let microscope = meta.microscope.expect("microscope state read back");
    assert!(
        microscope.high_tension_v > 1e4 && microscope.camera_length_m > 0.0,
        "implausible microscope read-back {microscope:?}"
    );
    assert!(
        meta.detector_header
            .as_deref()
            .is_some_and(|h| h.contains("Frames in Acquisition")),
        "the Merlin HDR is not stored: {:?}",
        meta.detector_header
    );
    assert!(!meta.start_time.is_empty() && !meta.stop_time.is_empty());

    // The recorded raw frames and the live reductions describe the same data.
    let res = results(&rec);
    let per_frame = buffer(&res, "sum_sig", "intensity");
    let tile = rec.read_tile(0, 256).expect("raw frames");
    let sig_len = 256 * 256;
    for f in [0usize, 17, 255] {
        let raw: f64 = (0..sig_len)
            .map(|i| tile.data.view().get_f64(f * sig_len + i))
            .sum();
        assert_eq!(raw, per_frame[f], "frame {f}: raw sum vs sum_sig");
    }
    let bf = buffer(&res, "virtual", "bf");
    let adf = buffer(&res, "virtual", "adf");
    for (name, b) in [
        ("bf", bf),
        ("adf", adf),
        ("com/x", buffer(&res, "com", "x")),
        ("com/y", buffer(&res, "com", "y")),
    ] {
        assert_eq!(b.len(), 256, "{name} length");
        assert!(b.iter().all(|v| v.is_finite()), "{name} has NaN: {b:?}");
    }
    // Particles scatter out of the disk into the ring: BF and ADF are anti-correlated.
    let r = pearson(bf, adf);
    assert!(
        r < -0.3,
        "virtual BF vs ADF correlation {r:.3}, expected clearly negative"
    );

    // One figure per map, enlarged (16 positions at 32 pixels each, plus title, colour bar
    // and margins), beside a grey image of one pixel per position; the mean diffraction
    // pattern (256 × 256 at 2 pixels each) and the overview.
    for name in ["virtual_bf", "virtual_adf", "com_x", "com_y"] {
        let (w, h) = png_size(&out.join(format!("{name}.png")));
        assert!(w > 512 && h > 512, "{name}.png is {w} × {h}");
        let raw = format!("{name}_raw.png");
        assert_eq!(png_size(&out.join(&raw)), (16, 16), "{raw} size");
    }
    let (w, h) = png_size(&out.join("mean_diffraction_pattern.png"));
    assert!(
        w > 512 && h > 512,
        "mean_diffraction_pattern.png is {w} × {h}"
    );
    let (w, h) = png_size(&out.join("overview.png"));
    assert!(w > 3 * 256 && h > 3 * 256, "overview.png is {w} × {h}");
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).expect("run.json"))
            .expect("run.json is JSON");
    assert_eq!(record["frames_lost"], 0);
    assert_eq!(record["frames_received"], 256);
}

/// `stemflow sim merlin` serving a recording (ports printed), `stemflow acquire` (active,
/// soft trigger) recording from it, and `stemflow process` on the same file: identical
/// results and frames, for single and quad, 6-, 12-, 24-bit and raw 1-bit.
#[test]
fn live_and_offline_give_identical_results_on_real_recordings() {
    for stem in [
        "Single_9_Frame_CounterDepth_12_Rows_256",
        "Single_9_Frame_CounterDepth_24_Rows_256",
        "Quad_9_Frame_CounterDepth_6_Rows_256",
        "Quad_9_Frame_CounterDepth_1_Rows_256RAW",
    ] {
        live_equals_offline(stem);
    }
}

fn live_equals_offline(stem: &str) {
    let depth = stem
        .split("CounterDepth_")
        .nth(1)
        .and_then(|s| s.split('_').next())
        .expect("depth in name");
    let dir = ScratchDir::new(&format!("cli-parity-{stem}"));
    let hdr = recording(stem);

    let mut sim_cmd = Command::new(env!("CARGO_BIN_EXE_stemflow"));
    sim_cmd
        .args(["sim", "merlin", "--control-port", "0", "--data-port", "0"])
        .args(["--fast", "--duration-s", "120", "--recording"])
        .arg(&hdr)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut sim = ChildGuard::spawn("stemflow sim merlin", &mut sim_cmd);
    let log = sim.tap_stdout();
    let ports = log.wait_for(
        Duration::from_secs(30),
        || sim.try_status().is_none(),
        |text| {
            let line = text.lines().find(|l| l.starts_with("control_port="))?;
            let mut it = line
                .split_whitespace()
                .filter_map(|kv| kv.split_once('=')?.1.parse::<u16>().ok());
            Some((it.next()?, it.next()?))
        },
    );
    let Some((control, data)) = ports else {
        panic!(
            "`stemflow sim merlin` printed no ports (status {:?}): {}",
            sim.try_status(),
            log.text()
        );
    };
    assert!(control != 0 && data != 0 && control != data);

    let live = dir.path().join("live");
    let (c, d) = (control.to_string(), data.to_string());
    let mut args = vec![
        "acquire",
        "--control-port",
        &c,
        "--data-port",
        &d,
        "--mode",
        "active",
        "--trigger",
        "soft",
        "--nav-shape",
        "3x3",
        "--counter-depth",
        depth,
        "--out",
        path_arg(&live),
    ];
    if stem.ends_with("RAW") {
        args.push("--raw");
    }
    let run = stemflow(&args, dir.path());
    run.assert_success(&format!(
        "stemflow acquire from the simulator serving {stem}"
    ));
    assert!(
        run.stdout
            .contains("9 expected, 9 received, 0 lost, 0 damaged"),
        "{stem}: {}",
        run.describe()
    );
    drop(log);
    drop(sim);

    let offline = dir.path().join("offline");
    let run = stemflow(
        &[
            "process",
            path_arg(&hdr),
            "--nav-shape",
            "3x3",
            "--out",
            path_arg(&offline),
        ],
        dir.path(),
    );
    run.assert_success(&format!("stemflow process {stem}"));

    let a = open(&live.join("recording.hspy"));
    let b = open(&offline.join("recording.hspy"));
    assert_eq!(a.frames(), 9, "{stem}: live frames");
    assert_eq!(b.frames(), 9, "{stem}: offline frames");
    assert_eq!(a.sig_shape(), b.sig_shape(), "{stem}: sig shape");
    assert_eq!(a.dtype(), b.dtype(), "{stem}: dtype");
    assert_eq!(
        a.read_tile(0, 9).expect("live frames"),
        b.read_tile(0, 9).expect("offline frames"),
        "{stem}: recorded frames differ"
    );
    let (ra, rb) = (results(&a), results(&b));
    assert_eq!(ra.len(), rb.len(), "{stem}: number of UDFs");
    let mut compared = 0;
    for ua in &ra {
        let ub = rb
            .iter()
            .find(|u| u.udf == ua.udf)
            .unwrap_or_else(|| panic!("{stem}: offline lacks UDF {}", ua.udf));
        for ba in &ua.buffers {
            let bb = ub
                .buffer(&ba.name)
                .unwrap_or_else(|| panic!("{stem}: offline lacks {}/{}", ua.udf, ba.name));
            assert_eq!(ba.shape, bb.shape, "{stem}: {}/{} shape", ua.udf, ba.name);
            let bits = |d: &[f64]| d.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&ba.data),
                bits(&bb.data),
                "{stem}: {}/{} differs between live and offline",
                ua.udf,
                ba.name
            );
            compared += 1;
        }
    }
    assert!(compared >= 6, "{stem}: only {compared} buffers compared");
    // And both agree with the independent reference (LiberTEM's reader, reference.json).
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(shared_data().join("merlin/reference.json")).expect("reference"),
    )
    .expect("reference JSON");
    let want: Vec<f64> = reference[format!("{stem}.mib")]["per_frame_sums"]
        .as_array()
        .expect("per_frame_sums")
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect();
    assert_eq!(
        buffer(&ra, "sum_sig", "intensity"),
        want.as_slice(),
        "{stem}: sums"
    );
}

/// Passive mode: `stemflow acquire --mode passive` connects, waits, and records the
/// acquisition that another client arms and triggers over the control port; the scan shape
/// comes from the frame count the HDR announces, folded by a hint (`?x3`). The 1.5 s the
/// operator takes to arm is not counted in the frame rate: run.json's `acquisition_s`
/// starts when the acquisition was announced, and the summary shows the wait apart.
#[test]
fn passive_acquire_records_acquisition_armed_elsewhere() {
    let stem = "Single_9_Frame_CounterDepth_12_Rows_256";
    let mut cfg = MerlinSimConfig::new(MerlinSource::Recording {
        path: recording(stem),
    });
    cfg.host = "127.0.0.1".parse().expect("ip");
    cfg.pacing = Pacing::AsFastAsPossible;
    let sim = MerlinSim::start(cfg).expect("MerlinSim");
    let dir = ScratchDir::new("cli-passive");
    let out = dir.path().join("out");
    let (c, d) = (
        sim.control_addr().port().to_string(),
        sim.data_addr().port().to_string(),
    );
    let out_s = path_arg(&out).to_string();
    let scratch = dir.path().to_path_buf();
    let acquire = std::thread::spawn(move || {
        stemflow(
            &[
                "acquire",
                "--mode",
                "passive",
                "--control-port",
                &c,
                "--data-port",
                &d,
                "--arm-timeout-s",
                "60",
                "--nav-hint",
                "?x3",
                "--out",
                &out_s,
            ],
            &scratch,
        )
    });

    // Someone else arms once stemflow listens on the data port.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sim.stats().data_connections == 0 {
        assert!(
            Instant::now() < deadline && !acquire.is_finished(),
            "stemflow never connected to the data port"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The operator takes a while.
    std::thread::sleep(Duration::from_millis(1500));
    let mut other = MerlinControl::connect(
        sim.control_addr(),
        Duration::from_secs(5),
        Duration::from_secs(5),
    )
    .expect("control connection");
    for (k, v) in [
        ("NUMFRAMESTOACQUIRE", "9"),
        ("NUMFRAMESPERTRIGGER", "9"),
        ("TRIGGERSTART", "5"),
    ] {
        other.set(k, v).unwrap_or_else(|e| panic!("SET {k}: {e}"));
    }
    other.cmd("STARTACQUISITION").expect("STARTACQUISITION");
    other.cmd("SOFTTRIGGER").expect("SOFTTRIGGER");

    let run = acquire.join().expect("acquire thread");
    run.assert_success("stemflow acquire --mode passive");
    assert!(
        run.stdout
            .contains("9 expected, 9 received, 0 lost, 0 damaged"),
        "{}",
        run.describe()
    );
    let rec = open(&out.join("recording.hspy"));
    assert_eq!(rec.frames(), 9);
    // The hint `?x3` folds the 9 announced frames into 3 lines of 3.
    assert_eq!((rec.nav_shape().rows, rec.nav_shape().cols), (3, 3));
    assert_eq!(rec.metadata().expect("metadata").mode, "passive");
    assert_eq!(sim.stats().frames_sent, 9);
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).expect("run.json"))
            .expect("json");
    let (total, acquiring) = (
        record["duration_s"].as_f64().expect("duration_s"),
        record["acquisition_s"].as_f64().expect("acquisition_s"),
    );
    assert!(
        acquiring > 0.0 && total - acquiring >= 1.4,
        "the wait for the operator counted as acquiring: {acquiring} of {total} s"
    );
    assert!(
        run.stdout.contains("waiting for the detector to be armed"),
        "{}",
        run.describe()
    );
}

/// Passive mode with nobody arming: the arm deadline expires with an error naming the
/// detector and what it waited for; the run record says so; nothing hangs.
#[test]
fn passive_acquire_without_arming_fails_at_its_deadline() {
    let mut cfg = MerlinSimConfig::new(MerlinSource::Synthetic {
        specimen: Specimen::builder().build(),
        nav_shape: stemflow_core::NavShape::new(4, 4),
        sig_shape: stemflow_core::SigShape::new(64, 64),
        seed: 3,
    });
    cfg.host = "127.0.0.1".parse().expect("ip");
    let sim = MerlinSim::start(cfg).expect("MerlinSim");
    let dir = ScratchDir::new("cli-passive-deadline");
    let out = dir.path().join("out");
    let run = stemflow(
        &[
            "acquire",
            "--mode",
            "passive",
            "--control-port",
            &sim.control_addr().port().to_string(),
            "--data-port",
            &sim.data_addr().port().to_string(),
            "--arm-timeout-s",
            "1",
            "--out",
            path_arg(&out),
        ],
        dir.path(),
    );
    assert!(!run.status.success(), "succeeded without an acquisition");
    assert!(run.took < Duration::from_secs(30), "{}", run.describe());
    let all = format!("{}{}", run.stdout, run.stderr);
    let device = format!("merlin @ {}", sim.control_addr());
    assert!(
        all.contains(&device),
        "error does not name {device}: {}",
        run.describe()
    );
    assert!(
        all.contains("HDR"),
        "error does not say it waited for the HDR: {}",
        run.describe()
    );
    let record: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("run.json")).expect("run.json written on failure"),
    )
    .expect("run.json is JSON");
    assert_ne!(record["exit_status"], "completed", "{record}");
}

/// Active mode with an external trigger that never comes (no cable from a scan engine):
/// the first-frame deadline ends the acquisition with every frame counted lost, the run is a
/// fault whose error names the detector, the frames expected and the frames received, and
/// the instrument is back in Idle.
#[test]
fn acquire_with_trigger_that_never_comes_reports_lost_frames() {
    let mut cfg = MerlinSimConfig::new(MerlinSource::Synthetic {
        specimen: Specimen::builder().build(),
        nav_shape: stemflow_core::NavShape::new(4, 4),
        sig_shape: stemflow_core::SigShape::new(64, 64),
        seed: 3,
    });
    cfg.host = "127.0.0.1".parse().expect("ip");
    let sim = MerlinSim::start(cfg).expect("MerlinSim");
    let dir = ScratchDir::new("cli-no-trigger");
    let out = dir.path().join("out");
    let run = stemflow(
        &[
            "acquire",
            "--control-port",
            &sim.control_addr().port().to_string(),
            "--data-port",
            &sim.data_addr().port().to_string(),
            "--trigger",
            "external",
            "--nav-shape",
            "4x4",
            "--frame-timeout-s",
            "1",
            "--first-frame-timeout-s",
            "2",
            "--out",
            path_arg(&out),
        ],
        dir.path(),
    );
    assert!(
        !run.status.success(),
        "succeeded without frames: {}",
        run.describe()
    );
    assert!(run.took < Duration::from_secs(20), "{}", run.describe());
    assert!(
        run.stderr.contains("0 of 16 frames received"),
        "error does not say frames expected vs received: {}",
        run.describe()
    );
    assert!(
        run.stderr.contains("--> Fault") && run.stderr.contains("--> Idle"),
        "no Fault → Idle: {}",
        run.describe()
    );
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(
        all.contains("16 expected, 0 received, 16 lost"),
        "summary does not count the lost frames: {}",
        run.describe()
    );
    let device = format!("merlin @ {}", sim.control_addr());
    assert!(
        all.contains(&device),
        "error does not name {device}: {}",
        run.describe()
    );
    assert_eq!(sim.stats().frames_sent, 0);
    let record: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("run.json")).expect("run.json written on failure"),
    )
    .expect("run.json is JSON");
    assert_eq!(record["frames_lost"], 16, "{record}");
}

/// A truncated `.mib`: `stemflow process` names the file, the frame and the sizes.
#[test]
fn process_truncated_recording_names_file_frame_and_sizes() {
    let stem = "Single_9_Frame_CounterDepth_12_Rows_256";
    let dir = ScratchDir::new("cli-truncated");
    let src = recording(stem);
    let hdr = dir.path().join(format!("{stem}.hdr"));
    let mib = dir.path().join(format!("{stem}.mib"));
    std::fs::copy(&src, &hdr).expect("copy hdr");
    let bytes = std::fs::read(src.with_extension("mib")).expect("read mib");
    // Four whole frames and half of the fifth.
    let frame = bytes.len() / 9;
    std::fs::write(&mib, &bytes[..4 * frame + frame / 2]).expect("write truncated mib");
    let out = dir.path().join("out");
    let run = stemflow(
        &["process", path_arg(&hdr), "--out", path_arg(&out)],
        dir.path(),
    );
    assert!(
        !run.status.success(),
        "a truncated file processed cleanly: {}",
        run.describe()
    );
    assert!(
        run.stderr.contains(&format!("{stem}.mib")) && run.stderr.contains("truncated"),
        "{}",
        run.describe()
    );
}

/// `stemflow bench all` on small sizes: every figure the issue asks for is printed and in
/// the JSON line — ceilings, in-memory sum and full set for 256²/512² × u8/u16/u32 (and the
/// u16 full set with the engine's fused pass off), end to
/// end with no frame lost, latency at both snapshot intervals. Figures are not judged here
/// (timing belongs to benchmarks), only their presence and sanity.
#[test]
fn bench_all_reports_every_figure() {
    let dir = ScratchDir::new("cli-bench-all");
    let f = stemflow(
        &[
            "bench",
            "all",
            "--mem-mib",
            "2",
            "--e2e-mib",
            "4",
            "--e2e-repeat",
            "1",
            "--latency-frames",
            "256",
            "--latency-rate-hz",
            "2000",
        ],
        dir.path(),
    );
    f.assert_success("bench all");
    let json: Value = f
        .stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON line: {}", f.describe()));
    let ceilings = &json["ceilings"];
    for key in ["memory_read_gb_per_s", "loopback_tcp_gb_per_s"] {
        assert!(ceilings[key].as_f64().unwrap_or(0.0) > 0.0, "{key}: {json}");
    }
    let mem = json["in_memory"].as_array().expect("in_memory");
    assert_eq!(
        mem.len(),
        14,
        "2 shapes x 3 dtypes x 2 sets, and the u16 full set with the fused pass off: {json}"
    );
    let off: Vec<_> = mem
        .iter()
        .filter(|m| {
            m["set"]
                .as_str()
                .is_some_and(|s| s.ends_with("fused pass off"))
        })
        .map(|m| (m["sig_shape"].as_str(), m["dtype"].as_str()))
        .collect();
    assert_eq!(
        off,
        [
            (Some("256x256"), Some("uint16")),
            (Some("512x512"), Some("uint16"))
        ]
    );
    for m in mem {
        let frac = m["fraction_of_memory_bandwidth"].as_f64().unwrap_or(-1.0);
        let of_sum = m["fraction_of_sum"].as_f64().unwrap_or(-1.0);
        assert!(
            m["gb_per_s"].as_f64().unwrap_or(0.0) > 0.0 && frac > 0.0 && of_sum > 0.0,
            "{m}"
        );
        if m["set"] == "sum" {
            assert_eq!(of_sum, 1.0, "{m}");
        }
    }
    let e2e = json["end_to_end"].as_array().expect("end_to_end");
    assert_eq!(e2e.len(), 6, "{json}");
    for e in e2e {
        assert_eq!(e["frames_lost"], 0, "{e}");
        assert!(e["frames"].as_u64().unwrap_or(0) > 0, "{e}");
    }
    let lat = json["latency_ms"].as_array().expect("latency_ms");
    assert_eq!(lat.len(), 2);
    for l in lat {
        let (median, p99) = (
            l["median"].as_f64().unwrap_or(-1.0),
            l["p99"].as_f64().unwrap_or(-1.0),
        );
        assert!(
            median >= 0.0 && p99 >= median && l["samples"].as_u64() == Some(256),
            "{l}"
        );
    }
    for line in [
        "ceilings on",
        "in memory 512x512 uint32 sum+sum_sig+4 masks+com",
        "end to end 256x256 uint16",
        "latency, frame arrival to snapshot",
    ] {
        assert!(
            f.stdout.contains(line),
            "missing `{line}`: {}",
            f.describe()
        );
    }
}
