//! The DECTRIS path through the command line, as a user runs it: `stemflow sim dectris`
//! replaying the real stream capture (`../shared/data/dectris/stream-v1/`, bitshuffle-LZ4
//! blobs made by the reference C library), `stemflow acquire --detector dectris` configuring
//! and arming it over REST and receiving the ZeroMQ stream, then `stemflow process` on the
//! recording: every frame arrives and the total equals the capture's decoded frames
//! (34 446 517 counts, data README).

mod common;

use common::process::ChildGuard;
use common::scratch::{ScratchDir, shared_data, tail};
use std::process::{Command, Stdio};
use std::time::Duration;
use stemflow_recording::reader::open_recording;

fn stemflow(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stemflow"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run stemflow: {e}"));
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn acquire_from_the_dectris_simulator_replaying_the_capture() {
    let capture = shared_data().join("dectris/stream-v1/synthetic_16x16_256_u16.dump");
    let (sim, log, api, stream) = start_dectris_sim(&capture);

    let dir = ScratchDir::new("cli-dectris");
    let out = dir.path().join("live");
    let out_s = out.to_str().expect("utf-8 path");
    let (api_s, stream_s) = (api.to_string(), stream.to_string());
    let (ok, text) = stemflow(&[
        "acquire",
        "--detector",
        "dectris",
        "--api-port",
        &api_s,
        "--stream-port",
        &stream_s,
        "--trigger",
        "internal",
        "--nav-shape",
        "16x16",
        "--exposure-ms",
        "0.1",
        "--out",
        out_s,
    ]);
    assert!(ok, "acquire failed:\n{}", tail(&text, 6000));
    assert!(
        text.contains("256 expected, 256 received, 0 lost, 0 damaged, 256 processed"),
        "{}",
        tail(&text, 6000)
    );
    drop(log);
    drop(sim);

    let rec = open_recording(out.join("recording.hspy")).expect("recording");
    assert_eq!(rec.frames(), 256);
    assert_eq!((rec.sig_shape().rows, rec.sig_shape().cols), (256, 256));
    let meta = rec.metadata().expect("metadata");
    assert!(meta.detector.contains("127.0.0.1"), "{}", meta.detector);

    let processed = dir.path().join("offline");
    let (ok, text) = stemflow(&[
        "process",
        out.join("recording.hspy").to_str().expect("utf-8"),
        "--out",
        processed.to_str().expect("utf-8"),
    ]);
    assert!(ok, "process failed:\n{}", tail(&text, 4000));
    assert!(
        text.contains("sum over all frames and pixels: 34446517"),
        "{}",
        tail(&text, 4000)
    );
}

/// The simulated instrument with a DECTRIS detector instead of the Merlin (a profile
/// switch): the scan engine's pulses trigger the DECTRIS simulator (`exte`), frames arrive
/// bitshuffle-LZ4 compressed over the stream, and the recording holds 192 × 192 u16 frames
/// with the detector named in its metadata.
#[test]
fn simulated_instrument_with_a_dectris_detector() {
    let dir = ScratchDir::new("cli-dectris-profile");
    let out = dir.path().join("out");
    let profile = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/profiles/simulated-dectris.toml"
    );
    let (ok, text) = stemflow(&[
        "--profile",
        profile,
        "--nav-shape",
        "12x12",
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert!(ok, "simulate failed:\n{}", tail(&text, 6000));
    assert!(
        text.contains("DECTRIS simulator REST http://127.0.0.1:"),
        "{}",
        tail(&text, 4000)
    );
    assert!(
        text.contains("144 expected, 144 received, 0 lost, 0 damaged, 144 processed"),
        "{}",
        tail(&text, 4000)
    );
    let rec = open_recording(out.join("recording.hspy")).expect("recording");
    assert_eq!(rec.frames(), 144);
    assert_eq!((rec.sig_shape().rows, rec.sig_shape().cols), (192, 192));
    assert_eq!(rec.dtype(), stemflow_core::DType::U16);
    let meta = rec.metadata().expect("metadata");
    assert!(
        meta.detector.contains("127.0.0.1"),
        "detector name {:?}",
        meta.detector
    );
    assert_eq!(meta.scan.expect("scan read back").nav_shape.len(), 144);
    for png in [
        "virtual_bf.png",
        "virtual_adf.png",
        "com_x.png",
        "com_y.png",
    ] {
        assert!(out.join(png).exists(), "{png}");
    }
}

/// Passive mode: `stemflow acquire --detector dectris --mode passive` waits for a series
/// that another client configures, arms and triggers over REST; the scan shape comes from
/// the announced image count folded by the hint `?x16`.
#[test]
fn passive_acquire_of_a_series_armed_elsewhere_with_a_scan_shape_hint() {
    use stemflow_drivers::dectris::SimplonClient;
    use stemflow_simulators::dectris::{DectrisSim, DectrisSimConfig, DectrisSource, Pacing};
    let capture = shared_data().join("dectris/stream-v1/synthetic_16x16_256_u16.dump");
    let mut cfg = DectrisSimConfig::new(DectrisSource::Capture { path: capture });
    cfg.pacing = Pacing::AsFastAsPossible;
    let sim = DectrisSim::start(cfg).expect("DECTRIS simulator");
    let dir = ScratchDir::new("cli-dectris-passive");
    let out = dir.path().join("out");
    let args: Vec<String> = [
        "acquire",
        "--detector",
        "dectris",
        "--mode",
        "passive",
        "--api-port",
        &sim.api_addr().port().to_string(),
        "--stream-port",
        &sim.stream_addr().port().to_string(),
        "--nav-hint",
        "?x16",
        "--arm-timeout-s",
        "60",
        "--out",
        out.to_str().expect("utf-8"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let acquire = std::thread::spawn(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        stemflow(&refs)
    });
    // Someone else: a soft-triggered series of 256 images.
    std::thread::sleep(Duration::from_millis(1500));
    let rest = SimplonClient::new("127.0.0.1", sim.api_addr().port(), Duration::from_secs(10));
    rest.set_detector_config("trigger_mode", "ints")
        .expect("trigger_mode");
    rest.set_detector_config("ntrigger", 1).expect("ntrigger");
    rest.set_detector_config("nimages", 256).expect("nimages");
    rest.arm().expect("arm");
    rest.trigger(None).expect("trigger");
    let (ok, text) = acquire.join().expect("acquire thread");
    assert!(ok, "passive acquire failed:\n{}", tail(&text, 6000));
    assert!(
        text.contains("256 expected, 256 received, 0 lost, 0 damaged"),
        "{}",
        tail(&text, 4000)
    );
    let rec = open_recording(out.join("recording.hspy")).expect("recording");
    assert_eq!((rec.nav_shape().rows, rec.nav_shape().cols), (16, 16));
    assert_eq!(rec.metadata().expect("metadata").mode, "passive");
}

/// DECTRIS active mode with the frame period and the count time apart: `--frame-time-ms 2`
/// alone gives a count time of the frame period minus the detector's readout time (read
/// back over REST; a detector needs `count_time ≤ frame_time − readout`), `--count-time-ms
/// 1 --frame-time-ms 2` gives both as asked; the recording's metadata holds what the
/// detector read back, readout time included.
#[test]
fn dectris_frame_time_and_count_time_apart() {
    use stemflow_core::{NavShape, SigShape};
    use stemflow_simulators::dectris::{DectrisSim, DectrisSimConfig, DectrisSource};
    let dir = ScratchDir::new("cli-dectris-times");
    for (tag, extra, count) in [
        ("frame", vec!["--frame-time-ms", "2"], 0.002 - 1e-7),
        (
            "both",
            vec!["--frame-time-ms", "2", "--count-time-ms", "1"],
            0.001,
        ),
    ] {
        // One simulator per acquisition (each `stemflow acquire` is a new stream client).
        let sim = DectrisSim::start(DectrisSimConfig::new(DectrisSource::synthetic(
            NavShape::new(4, 4),
            SigShape::new(32, 32),
        )))
        .expect("DECTRIS simulator");
        let (api, stream) = (
            sim.api_addr().port().to_string(),
            sim.stream_addr().port().to_string(),
        );
        let out = dir.path().join(tag);
        let mut args = vec![
            "acquire",
            "--detector",
            "dectris",
            "--api-port",
            &api,
            "--stream-port",
            &stream,
            "--trigger",
            "internal",
            "--nav-shape",
            "4x4",
            "--out",
            out.to_str().expect("utf-8"),
        ];
        args.extend(extra.iter());
        let (ok, text) = stemflow(&args);
        assert!(ok, "{tag}: {}", tail(&text, 4000));
        let meta = open_recording(out.join("recording.hspy"))
            .expect("recording")
            .metadata()
            .expect("metadata");
        let get = |k: &str| -> f64 {
            meta.detector_settings
                .get(k)
                .unwrap_or_else(|| panic!("{tag}: no {k} in {:?}", meta.detector_settings))
                .parse()
                .unwrap_or_else(|_| panic!("{tag}: {k} is not a number"))
        };
        assert!((get("frame_time") - 0.002).abs() < 1e-12, "{tag}");
        assert!(
            (get("count_time") - count).abs() < 1e-12,
            "{tag}: {}",
            get("count_time")
        );
        assert!((get("detector_readout_time") - 1e-7).abs() < 1e-15, "{tag}");
        sim.stop();
    }
}

/// Starts `stemflow sim dectris` replaying `capture`; returns it, its stdout tap and the
/// REST and stream ports it printed.
fn start_dectris_sim(capture: &std::path::Path) -> (ChildGuard, common::process::LogTap, u16, u16) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stemflow"));
    cmd.args(["sim", "dectris", "--api-port", "0", "--stream-port", "0"])
        .args(["--fast", "--duration-s", "120", "--recording"])
        .arg(capture)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut sim = ChildGuard::spawn("stemflow sim dectris", &mut cmd);
    let log = sim.tap_stdout();
    let ports = log.wait_for(
        Duration::from_secs(30),
        || sim.try_status().is_none(),
        |text| {
            let line = text.lines().find(|l| l.starts_with("api_port="))?;
            let mut it = line
                .split_whitespace()
                .filter_map(|kv| kv.split_once('=')?.1.parse::<u16>().ok());
            Some((it.next()?, it.next()?))
        },
    );
    let Some((api, stream)) = ports else {
        panic!("`stemflow sim dectris` printed no ports: {}", log.text());
    };
    (sim, log, api, stream)
}

/// The message parts of a stream capture (dump format, shared/data/README.md §4.2: an
/// 8-byte little-endian length, then the part).
fn capture_parts(bytes: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut pos = 0;
    while pos + 8 <= bytes.len() {
        let len = u64::from_le_bytes(bytes[pos..pos + 8].try_into().expect("8 bytes")) as usize;
        let end = (pos + 8 + len).min(bytes.len());
        parts.push(&bytes[pos + 8..end]);
        pos = end;
    }
    parts
}

/// `--compression bslz4` with a DECTRIS detector: the frames the detector sent as
/// bitshuffle-LZ4 blobs are the recording's chunks byte for byte (HDF5 direct chunk write,
/// no decode and re-encode), the file is as small as the stream, and the frames read back
/// (through stemflow's filter) are the capture's (their total is the README's).
#[test]
fn dectris_bslz4_frames_are_recorded_as_they_came() {
    let capture = shared_data().join("dectris/stream-v1/synthetic_16x16_256_u16.dump");
    let (sim, log, api, stream) = start_dectris_sim(&capture);
    let dir = ScratchDir::new("cli-dectris-bslz4");
    let out = dir.path().join("live");
    let (api_s, stream_s) = (api.to_string(), stream.to_string());
    let (ok, text) = stemflow(&[
        "acquire",
        "--detector",
        "dectris",
        "--api-port",
        &api_s,
        "--stream-port",
        &stream_s,
        "--trigger",
        "internal",
        "--nav-shape",
        "16x16",
        "--exposure-ms",
        "0.1",
        "--compression",
        "bslz4",
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    drop(log);
    drop(sim);
    assert!(ok, "acquire failed:\n{}", tail(&text, 6000));
    assert!(
        text.contains("256 expected, 256 received, 0 lost, 0 damaged, 256 processed"),
        "{}",
        tail(&text, 6000)
    );
    let file = out.join("recording.hspy");

    // Frame 0's blob as the capture holds it: the first part whose bitshuffle-LZ4 header
    // declares one 256 × 256 u16 frame (131072 bytes).
    let bytes = std::fs::read(&capture).expect("capture");
    let blobs: Vec<&[u8]> = capture_parts(&bytes)
        .into_iter()
        .filter(|p| p.len() > 12 && p[..8] == 131_072u64.to_be_bytes())
        .collect();
    assert_eq!(blobs.len(), 256, "one blob per frame in the capture");
    let blob_bytes: usize = blobs.iter().map(|b| b.len()).sum();
    let h5 = hdf5::File::open(&file).expect("open");
    let frames = h5.dataset("/entry/data/frames").expect("frames");
    for (i, blob) in blobs.iter().enumerate().step_by(37) {
        let offset = [(i / 16) as u64, (i % 16) as u64, 0, 0];
        let chunk = stemflow_recording::bslz4::read_chunk(&frames, &offset).expect("chunk");
        assert!(
            chunk == *blob,
            "frame {i}: the stored chunk is not the detector's blob"
        );
    }
    drop(frames);
    drop(h5);
    let size = std::fs::metadata(&file).expect("size").len() as usize;
    assert!(
        size < blob_bytes + (1 << 20),
        "recording {size} bytes for {blob_bytes} bytes of stream"
    );

    let processed = dir.path().join("offline");
    let (ok, text) = stemflow(&[
        "process",
        file.to_str().expect("utf-8"),
        "--out",
        processed.to_str().expect("utf-8"),
    ]);
    assert!(ok, "process failed:\n{}", tail(&text, 4000));
    assert!(
        text.contains("sum over all frames and pixels: 34446517"),
        "{}",
        tail(&text, 4000)
    );
}
