//! Faults an unattended run meets, as a user sees them: each ends promptly with an error
//! that says what happened (the device, what was expected, what was observed), not a
//! timeout of something that never had a chance, and not a panic that never happened.
//!
//! Every peer binds 127.0.0.1 on an ephemeral port and stops by itself.

mod common;

use common::command::{self, path_arg};
use common::instrument::fast_merlin_sim;
use common::scratch::ScratchDir;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use stemflow_core::NavShape;
use stemflow_simulators::merlin::MerlinFaults;

/// A misbehaving peer on 127.0.0.1: a listener served by `serve` on its own thread until
/// the value is dropped (its stop flag raised) or `serve` returns.
struct FakePort {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl FakePort {
    fn start(serve: impl FnOnce(TcpListener, Arc<AtomicBool>) + Send + 'static) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").expect("binding the port");
        let port = l.local_addr().expect("its address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        std::thread::spawn(move || serve(l, s));
        Self { port, stop }
    }

    /// A port that accepts every connection and closes it at once (for a minute at most).
    fn slamming() -> Self {
        Self::start(|l, stop| {
            l.set_nonblocking(true).expect("non-blocking listener");
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                match l.accept() {
                    Ok((c, _)) => drop(c),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    }
}

impl Drop for FakePort {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A Merlin whose data port accepts and closes at once: `acquire` fails within seconds
/// saying the data connection closed before any HDR, not "timed out after 30 s".
#[test]
fn a_data_port_that_closes_at_once_is_reported_as_closed() {
    let (_sim, c, _) = fast_merlin_sim(2, 2, MerlinFaults::default());
    let data = FakePort::slamming();
    let d = data.port.to_string();
    let dir = ScratchDir::new("fault-slam");
    let run = command::stemflow(
        &[
            "acquire",
            "--control-port",
            &c,
            "--data-port",
            &d,
            "--nav-shape",
            "2x2",
            "--arm-timeout-s",
            "30",
            "--out",
            path_arg(&dir.path().join("out")),
        ],
        dir.path(),
        "slam",
    );
    assert_eq!(run.status.code(), Some(1), "{}", run.describe());
    assert!(
        run.took < Duration::from_secs(15),
        "took {:?}: {}",
        run.took,
        run.describe()
    );
    assert!(
        run.stderr.contains("closed") && !run.stderr.contains("timed out after 30"),
        "the error does not say the connection closed: {}",
        run.describe()
    );
    // The arm failed: no frame was acquired, and run.json says so in counts that add up.
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out/run.json")).expect("run.json"),
    )
    .expect("run.json parses");
    assert_eq!(
        (
            json["frames_expected"].as_u64(),
            json["frames_not_acquired"].as_u64()
        ),
        (Some(4), Some(4)),
        "{json:#}"
    );
}

/// Garbage instead of an `MPX,` prefix mid-scan: the frames after it are counted lost,
/// and the cause is in run.json's `error` — the same as in the recording's own run record —
/// not only in a log line.
#[test]
fn garbage_mid_stream_names_its_cause_in_run_json_and_the_recording() {
    let faults = MerlinFaults {
        corrupt_prefix_at: Some(5),
        ..MerlinFaults::default()
    };
    let (_sim, c, d) = fast_merlin_sim(4, 4, faults);
    let dir = ScratchDir::new("fault-garbage");
    let out = dir.path().join("out");
    let run = command::stemflow(
        &[
            "acquire",
            "--control-port",
            &c,
            "--data-port",
            &d,
            "--nav-shape",
            "4x4",
            "--frame-timeout-s",
            "1",
            "--out",
            path_arg(&out),
        ],
        dir.path(),
        "garbage",
    );
    assert_eq!(run.status.code(), Some(1), "{}", run.describe());
    let text = std::fs::read_to_string(out.join("run.json")).expect("run.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("run.json parses");
    let error = json["error"]
        .as_str()
        .unwrap_or_else(|| panic!("run.json has no error for a stream that broke: {json:#}"));
    assert!(
        error.contains("MPX"),
        "the error does not name the framing: {error}"
    );
    let frames = |k: &str| json[k].as_u64().unwrap_or_else(|| panic!("{k}: {json:#}"));
    assert_eq!(
        frames("frames_received") + frames("frames_lost") + frames("frames_damaged"),
        16,
        "{json:#}"
    );
    assert!(frames("frames_lost") > 0, "{json:#}");
    let rec = stemflow_recording::reader::open_recording(out.join("recording.hspy"))
        .expect("opening the recording");
    let stored: serde_json::Value = stored_run_record(&rec);
    assert_eq!(stored["error"], json["error"], "stored: {stored:#}");
    assert_eq!(
        stored["exit_status"], json["exit_status"],
        "stored: {stored:#}"
    );
}

/// An active Merlin whose frames come at another counter depth than configured (uint8
/// frames where `COUNTERDEPTH 12` asks for uint16): a protocol error for the acquisition,
/// named with both formats, within seconds; the first frame counted damaged and the rest
/// lost — counts that add up in run.json and in the finished recording alike, not the
/// pipeline fault that used to leave "0 received, 0 lost of 16" and an unfinished file.
#[test]
fn a_first_frame_of_another_pixel_type_is_a_protocol_error_with_counts() {
    let faults = MerlinFaults {
        frames_at_depth: Some(6),
        ..MerlinFaults::default()
    };
    let (sim, c, d) = fast_merlin_sim(4, 4, faults);
    let dir = ScratchDir::new("fault-dtype");
    let out = dir.path().join("out");
    let t0 = Instant::now();
    let run = command::stemflow(
        &[
            "acquire",
            "--control-port",
            &c,
            "--data-port",
            &d,
            "--nav-shape",
            "4x4",
            "--frame-timeout-s",
            "2",
            "--out",
            path_arg(&out),
        ],
        dir.path(),
        "dtype",
    );
    let took = t0.elapsed();
    assert_eq!(run.status.code(), Some(1), "{}", run.describe());
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).expect("run.json"))
            .expect("run.json parses");
    let error = json["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error: {json:#}"));
    assert!(
        error.contains("uint8") && error.contains("uint16") && error.contains("configured"),
        "the error names neither format: {error}"
    );
    let n = |k: &str| json[k].as_u64().unwrap_or_else(|| panic!("{k}: {json:#}"));
    assert_eq!(
        (
            n("frames_expected"),
            n("frames_received"),
            n("frames_damaged"),
            n("frames_lost") + n("frames_not_acquired")
        ),
        (16, 0, 1, 15),
        "{json:#}"
    );
    let rec = stemflow_recording::reader::open_recording(out.join("recording.hspy"))
        .expect("opening the recording");
    assert!(rec.is_complete(), "the recording was not finished");
    let v = rec.validity().expect("validity map");
    assert_eq!((v.len(), v.received()), (16, 0));
    assert_eq!(
        v.status(0),
        stemflow_core::validity::FrameStatus::Damaged,
        "frame 0"
    );
    let stored: serde_json::Value = stored_run_record(&rec);
    assert_eq!(stored["error"], json["error"], "stored: {stored:#}");
    assert_eq!(
        stored["exit_status"], json["exit_status"],
        "stored: {stored:#}"
    );
    // The detector was stopped, not left acquiring.
    let mut control = stemflow_drivers::merlin::control::MerlinControl::connect(
        sim.control_addr(),
        Duration::from_secs(2),
        Duration::from_secs(2),
    )
    .expect("connecting to the control port");
    assert_eq!(
        control.get("DETECTORSTATUS").expect("GET DETECTORSTATUS"),
        "0",
        "the Merlin was left acquiring"
    );
}

/// A Merlin data port that sends a real acquisition's HDR (9 frames of 512 × 512 u16), its
/// first frame, then its second frame one byte every 0.5 s: every read makes progress, so
/// only the run's overall deadline can end it.
fn trickling_merlin() -> FakePort {
    use std::io::Write;
    use stemflow_drivers::merlin::mpx::{MPX_PREFIX_LEN, encode_message};
    let data = common::scratch::shared_data().join("merlin/Merlin_Single_Quad");
    let hdr = std::fs::read(data.join("Quad_9_Frame_CounterDepth_12_Rows_256.hdr"))
        .expect("the shared HDR");
    let mib = std::fs::read(data.join("Quad_9_Frame_CounterDepth_12_Rows_256.mib"))
        .expect("the shared MIB");
    // The .hdr holds the HDR message (tag included), the .mib the MQ1 messages.
    let one = mib.len() / 9;
    let first = encode_message(&mib[..one]).expect("framing frame 1");
    let second = encode_message(&mib[one..2 * one]).expect("framing frame 2");
    let mut head = encode_message(&hdr).expect("framing the HDR");
    head.extend_from_slice(&first);
    head.extend_from_slice(&second[..MPX_PREFIX_LEN]);
    let frame = second[MPX_PREFIX_LEN..].to_vec();
    FakePort::start(move |l, stop| {
        let Ok((mut c, _)) = l.accept() else { return };
        let _ = c.write_all(&head);
        let deadline = Instant::now() + Duration::from_secs(120);
        for b in &frame {
            if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                break;
            }
            if c.write_all(std::slice::from_ref(b)).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    })
}

/// A detector that trickles one byte every 0.5 s (passive, scan of 3 × 3): the receiver's
/// inactivity deadline never fires, the run's overall deadline does. The run fails naming
/// the deadline, within it plus a few seconds, and its counts add up in run.json and in
/// the finished recording, which the fault path gets at once (the reception is aborted,
/// not left waiting for a quiet stream) — before, "0 of 64" with nothing lost and an
/// unfinished file.
#[test]
fn a_detector_that_trickles_bytes_ends_at_the_run_deadline_with_counts() {
    let data = trickling_merlin();
    let control = FakePort::slamming();
    let dir = ScratchDir::new("fault-trickle");
    let out = dir.path().join("out");
    let t0 = Instant::now();
    let run = command::stemflow(
        &[
            "acquire",
            "--mode",
            "passive",
            "--control-port",
            &control.port.to_string(),
            "--data-port",
            &data.port.to_string(),
            "--nav-shape",
            "3x3",
            "--frame-timeout-s",
            "2",
            "--out",
            path_arg(&out),
        ],
        dir.path(),
        "trickle",
    );
    let took = t0.elapsed();
    assert_ne!(run.status.code(), Some(0), "{}", run.describe());
    assert!(
        took < Duration::from_secs(40),
        "took {took:?}: {}",
        run.describe()
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).expect("run.json"))
            .expect("run.json parses");
    assert_eq!(json["exit_status"], "fault", "{json:#}");
    assert!(
        json["error"]
            .as_str()
            .is_some_and(|e| e.contains("deadline")),
        "{json:#}"
    );
    let n = |k: &str| json[k].as_u64().unwrap_or_else(|| panic!("{k}: {json:#}"));
    assert_eq!(n("frames_expected"), 9, "{json:#}");
    assert!(n("frames_received") <= 1, "{json:#}");
    assert_eq!(
        n("frames_received") + n("frames_lost") + n("frames_damaged") + n("frames_not_acquired"),
        9,
        "{json:#}"
    );
    let rec = stemflow_recording::reader::open_recording(out.join("recording.hspy"))
        .expect("opening the recording");
    assert!(rec.is_complete(), "the recording was not finished");
    let v = rec.validity().expect("validity map");
    assert_eq!((v.len(), v.received() as u64), (9, n("frames_received")));
    let stored: serde_json::Value = stored_run_record(&rec);
    assert_eq!(
        stored["exit_status"], json["exit_status"],
        "stored: {stored:#}"
    );
}

/// `kill -9` in the middle of a live scan: the recording it leaves is marked incomplete
/// and still says what it holds — the detector's header, the read-back microscope and the
/// scan — because the metadata known at arm time is written when the recording opens.
#[cfg(unix)]
#[test]
fn a_killed_recording_says_what_it_holds() {
    use common::process::ChildGuard;
    use common::scratch::slow_simulated_profile;
    use std::process::{Command, Stdio};
    let dir = ScratchDir::new("fault-kill9");
    let profile = slow_simulated_profile(dir.path(), "0.002");
    let out = dir.path().join("out");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stemflow"));
    cmd.args(["--nav-shape", "64x64", "--profile"])
        .arg(&profile)
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = ChildGuard::spawn("stemflow (to be killed)", &mut cmd);
    let log = child.tap_stderr();
    let running = log.wait_for(
        Duration::from_secs(60),
        || child.try_status().is_none(),
        |t| t.contains("--> Running").then_some(()),
    );
    assert!(running.is_some(), "the scan never ran: {}", log.text());
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_status().is_none(),
        "the scan ended before the kill"
    );
    child.signal(libc::SIGKILL);
    let status = child.wait_timeout(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.code().is_none()),
        "not killed: {status:?}"
    );
    let rec = stemflow_recording::reader::open_recording(out.join("recording.hspy"))
        .expect("the killed recording opens");
    assert!(!rec.is_complete(), "a killed recording marked complete");
    let md = rec.metadata().expect("the killed recording's metadata");
    assert!(
        md.detector_header
            .as_deref()
            .is_some_and(|h| h.contains("Frames in Acquisition")),
        "no detector header: {md:?}"
    );
    assert!(md.microscope.is_some(), "no microscope read-back: {md:?}");
    assert!(md.scan.is_some(), "no scan settings: {md:?}");
    assert_eq!(md.nav_shape, Some(NavShape::new(64, 64)), "{md:?}");
}

/// A 1 KB `.npy` whose header declares 100000 × 100000 frames of 256 × 256 u16, and a raw
/// file given a per-frame header of 2^64 − 1 bytes: `process` exits 1 within a second,
/// naming the declared and the real sizes, and creates no recording (no panic, no 1.3 PB
/// sparse file).
#[test]
fn process_refuses_sizes_a_file_cannot_hold() {
    let dir = ScratchDir::new("faults-forged-sizes");
    let npy = dir.path().join("forged.npy");
    let mut bytes = stemflow_processing::io::npy::header_bytes("<u2", &[100000, 100000, 256, 256]);
    bytes.extend_from_slice(&[0u8; 1024]);
    std::fs::write(&npy, bytes).unwrap();
    let out = dir.path().join("out-npy");
    let t0 = Instant::now();
    let run = command::stemflow(
        &["process", path_arg(&npy), "--out", path_arg(&out)],
        dir.path(),
        "forged-npy",
    );
    assert_eq!(run.status.code(), Some(1), "{}", run.describe());
    assert!(t0.elapsed() < Duration::from_secs(5), "{}", run.describe());
    assert!(
        run.stderr.contains("1310720000000000 bytes of data")
            && run.stderr.contains("the file holds 1024"),
        "{}",
        run.describe()
    );
    assert!(!out.join("recording.hspy").exists() && !out.join("recording.hspy").exists());

    let raw = dir.path().join("frames.raw");
    std::fs::write(&raw, [0u8; 512]).unwrap();
    let out = dir.path().join("out-raw");
    let run = command::stemflow(
        &[
            "process",
            path_arg(&raw),
            "--nav-shape",
            "2x2",
            "--sig-shape",
            "8x8",
            "--frame-header-bytes",
            "18446744073709551615",
            "--out",
            path_arg(&out),
        ],
        dir.path(),
        "forged-raw",
    );
    assert_eq!(run.status.code(), Some(1), "{}", run.describe());
    assert!(!run.stderr.contains("panicked"), "{}", run.describe());
    assert!(run.stderr.contains("more than 2^64"), "{}", run.describe());
}

/// Passive mode with `--nav-shape 8x8`, and the operator's acquisition announces 50 or 80
/// frames in its HDR: the run ends with counts that add up to the 64 scan positions in
/// run.json and in the recording, which is finished; fewer frames end as completed with
/// loss (exit 1) naming what the detector announced, more as completed (the frames beyond
/// the scan are not kept).
#[test]
fn an_hdr_announcing_fewer_or_more_frames_than_the_scan_is_accounted_for() {
    use stemflow_drivers::merlin::control::MerlinControl;
    for (announced, code) in [(50u64, 1), (80, 0)] {
        let (_sim, c, d) = fast_merlin_sim(10, 8, MerlinFaults::default());
        let dir = ScratchDir::new(&format!("fault-hdr-{announced}"));
        let out = dir.path().join("out");
        let (mut cmd, _o, err) = command::command(
            &[
                "acquire",
                "--mode",
                "passive",
                "--control-port",
                &c,
                "--data-port",
                &d,
                "--nav-shape",
                "8x8",
                "--arm-timeout-s",
                "30",
                "--frame-timeout-s",
                "2",
                "--out",
                path_arg(&out),
            ],
            dir.path(),
            "hdr",
        );
        let mut child = common::process::ChildGuard::spawn("stemflow acquire", &mut cmd);
        // The receiver connects when the instrument starts; then the operator starts an
        // acquisition of `announced` frames, soft-triggered.
        std::thread::sleep(Duration::from_millis(1500));
        let addr = format!("127.0.0.1:{c}").parse().unwrap();
        let mut ctl = MerlinControl::connect(addr, Duration::from_secs(2), Duration::from_secs(2))
            .expect("control port");
        for (k, v) in [
            ("NUMFRAMESTOACQUIRE", announced.to_string()),
            ("NUMFRAMESPERTRIGGER", announced.to_string()),
            ("TRIGGERSTART", "5".into()),
        ] {
            ctl.set(k, &v).expect("SET");
        }
        ctl.cmd("STARTACQUISITION").expect("STARTACQUISITION");
        ctl.cmd("SOFTTRIGGER").expect("SOFTTRIGGER");
        let status = child
            .wait_timeout(Duration::from_secs(60))
            .expect("acquire did not end");
        let stderr = std::fs::read_to_string(&err).unwrap_or_default();
        assert_eq!(status.code(), Some(code), "{announced}: {stderr}");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
        let n = |k: &str| json[k].as_u64().unwrap_or_else(|| panic!("{k}: {json:#}"));
        assert_eq!(n("frames_expected"), 64, "{json:#}");
        assert_eq!(
            n("frames_received")
                + n("frames_lost")
                + n("frames_damaged")
                + n("frames_not_acquired"),
            64,
            "{json:#}"
        );
        assert_eq!(n("frames_received"), announced.min(64), "{json:#}");
        assert!(
            json["end_reason"]
                .as_str()
                .is_some_and(|r| r.contains(&format!("announced {announced} frames"))),
            "{json:#}"
        );
        let rec = stemflow_recording::reader::open_recording(out.join("recording.hspy"))
            .expect("opening the recording");
        assert!(rec.is_complete(), "the recording was not finished");
        let v = rec.validity().expect("validity map");
        assert_eq!((v.len(), v.received() as u64), (64, announced.min(64)));
    }
}

/// One frame of the wrong size in the middle of a Merlin stream (MPX framing intact): that
/// frame is counted damaged, the stream goes on, and every other frame is received —
/// as a DECTRIS image that fails to decode — instead of the rest of the scan being lost.
#[test]
fn one_frame_of_the_wrong_size_is_damaged_and_the_stream_goes_on() {
    let faults = MerlinFaults {
        wrong_size_at: Some(5),
        ..MerlinFaults::default()
    };
    let (_sim, c, d) = fast_merlin_sim(4, 4, faults);
    let dir = ScratchDir::new("fault-wrong-size");
    let out = dir.path().join("out");
    let run = command::stemflow(
        &[
            "acquire",
            "--control-port",
            &c,
            "--data-port",
            &d,
            "--nav-shape",
            "4x4",
            "--frame-timeout-s",
            "2",
            "--out",
            path_arg(&out),
        ],
        dir.path(),
        "wrong-size",
    );
    // Completed with one damaged frame: exit 1, the summary says so.
    assert_eq!(run.status.code(), Some(1), "{}", run.describe());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    let n = |k: &str| json[k].as_u64().unwrap_or_else(|| panic!("{k}: {json:#}"));
    assert_eq!(
        (n("frames_received"), n("frames_damaged"), n("frames_lost")),
        (15, 1, 0),
        "{json:#}"
    );
    assert_eq!(json["exit_status"], "completed_with_loss", "{json:#}");
    let rec = stemflow_recording::reader::open_recording(out.join("recording.hspy"))
        .expect("opening the recording");
    let v = rec.validity().expect("validity map");
    assert_eq!(
        v.status(5),
        stemflow_core::validity::FrameStatus::Damaged,
        "frame 5"
    );
    assert_eq!(v.received(), 15);
}

/// A Merlin simulator on loopback serving 4 × 4 frames of 64 × 64 with `faults`, and an
/// instrument spec (that detector alone, HDF5 recordings as the CLI makes them) for it;
/// the receiver's per-frame deadline is 30 s, so only the run's own deadline can end a
/// stalled acquisition.
fn merlin_instrument(
    faults: MerlinFaults,
) -> (
    stemflow_simulators::merlin::MerlinSim,
    stemflow_actors::supervisor::InstrumentSpec,
) {
    use stemflow_core::detector::Detector;
    use stemflow_drivers::merlin::{MerlinDetector, MerlinDetectorConfig};
    let (sim, _, _) = fast_merlin_sim(4, 4, faults);
    let mut det = MerlinDetectorConfig::new(sim.control_addr(), sim.data_addr());
    det.frame_timeout = Duration::from_secs(30);
    let spec = stemflow_actors::supervisor::InstrumentSpec {
        detector: Arc::new(move || {
            MerlinDetector::connect(det.clone()).map(|d| Box::new(d) as Box<dyn Detector>)
        }),
        scan: None,
        microscope: None,
        recording: stemflow_app::instrument::recording_factory(
            stemflow_app::output::RecordingOutput::default(),
        ),
    };
    (sim, spec)
}

/// A soft-triggered acquisition of the 16 frames into `output`, processed by `pipeline`,
/// with a run deadline of twice 16 ms plus `margin`.
fn soft_request(
    output: std::path::PathBuf,
    pipeline: stemflow_actors::orchestrator::PipelineBuilder,
    margin: Duration,
) -> stemflow_actors::orchestrator::AcquisitionRequest {
    use stemflow_core::detector::{ArmMode, DetectorSettings, DetectorTrigger};
    stemflow_actors::orchestrator::AcquisitionRequest {
        mode: ArmMode::Active,
        detector: DetectorSettings {
            nav_shape: NavShape::new(4, 4),
            exposure_s: 0.001,
            frame_time_s: 0.001,
            trigger: DetectorTrigger::Soft,
            frames_per_trigger: 16,
            counter_depth: Some(12),
            extra: Default::default(),
        },
        scan: None,
        microscope: None,
        arm_deadline: Duration::from_secs(5),
        deadline_margin: margin,
        output: Some(output),
        pipeline,
        label: "active".into(),
        nav_from_detector: false,
        ready_hook: None,
        calibration: Default::default(),
    }
}

/// A detector that goes quiet after 6 of 16 frames (its connection open, so only the run's
/// deadline can end it): the run fails at the deadline naming it, and still finishes the
/// recording — results so far, the validity map, the run record with the error — with
/// counts that add up, the same in the returned record and in the file.
#[test]
fn a_run_that_fails_at_its_deadline_still_finishes_its_recording() {
    let (_sim, spec) = merlin_instrument(MerlinFaults {
        stop_after_frames: Some(6),
        ..MerlinFaults::default()
    });
    let dir = ScratchDir::new("fault-deadline-salvage");
    let file = dir.path().join("recording.hspy");
    let t0 = Instant::now();
    let mut results = common::instrument::run(
        spec,
        vec![soft_request(
            file.clone(),
            common::instrument::counting_pipeline(),
            Duration::from_millis(500),
        )],
    );
    let failure = match results.remove(0) {
        Ok(r) => panic!("a stalled acquisition completed: {r:?}"),
        Err(f) => f,
    };
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t0.elapsed()
    );
    let r = &failure.record;
    let error = r.error.clone().expect("error");
    assert!(error.contains("deadline"), "{error}");
    assert_eq!(
        r.frames_received + r.frames_lost + r.frames_damaged + r.frames_not_acquired,
        16,
        "{r:?}"
    );
    assert_eq!(r.frames_received, 6, "{r:?}");
    assert_eq!(r.output_file.as_deref(), Some(file.as_path()));
    let rec = stemflow_recording::reader::open_recording(&file).expect("recording");
    assert!(
        rec.is_complete(),
        "the failed run's recording was not finished"
    );
    assert_eq!(rec.validity().expect("validity").received(), 6);
    let stored: serde_json::Value = serde_json::from_str(
        &rec.run_record_json()
            .expect("run record")
            .expect("a stored run record"),
    )
    .expect("json");
    assert_eq!(stored["exit_status"], "fault", "{stored:#}");
    assert_eq!(stored["error"].as_str(), Some(error.as_str()), "{stored:#}");
    assert_eq!(stored["frames_received"], 6, "{stored:#}");
}

/// A consumer slower than the run's deadline allows (150 ms per frame, 2.4 s for a run
/// whose deadline is 0.5 s) while frames keep being processed: backpressure, not a
/// detector fault — the run finishes late and completes with every frame.
#[test]
fn a_slow_consumer_finishes_late_instead_of_failing() {
    use stemflow_actors::processing::{LiveSnapshot, PipelineOutput};
    use stemflow_core::frame::Tile;
    let (_sim, spec) = merlin_instrument(MerlinFaults::default());
    let slow: stemflow_actors::orchestrator::PipelineBuilder = Arc::new(|inputs| {
        Box::new(move |_cancel: Arc<AtomicBool>, snaps| {
            let mut frames = 0u64;
            let mut tile = Tile::zeros(0, 0, inputs.sig_shape, inputs.dtype);
            while let Ok(stack) = inputs.stacks.recv() {
                let stack = stack.into_dense().expect("Merlin stacks are dense");
                tile.decode_from(&stack).map_err(|e| e.to_string())?;
                for _ in 0..tile.n_frames {
                    std::thread::sleep(Duration::from_millis(150));
                    frames += 1;
                    let _ = snaps.send(Arc::new(LiveSnapshot {
                        frames_processed: frames,
                        results: Vec::new(),
                    }));
                }
            }
            Ok(PipelineOutput {
                results: Vec::new(),
                frames_processed: frames,
                damaged: Vec::new(),
                cancelled: false,
                unprocessed_from: None,
                recording: inputs.recording,
            })
        })
    });
    let dir = ScratchDir::new("fault-slow-consumer");
    let mut results = common::instrument::run(
        spec,
        vec![soft_request(
            dir.path().join("recording.hspy"),
            slow,
            Duration::from_millis(500),
        )],
    );
    let record = match results.remove(0) {
        Ok(r) => r,
        Err(f) => panic!("a slow consumer failed the run: {}", f.error),
    };
    assert_eq!(record.frames_processed, 16);
    assert_eq!(record.frames_received, 16);
    assert!(record.duration_s > 2.0, "{}", record.duration_s);
}

/// The peak resident memory (`VmHWM`, bytes) of a running process, or `None` once it exited.
fn peak_rss(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// An operator's acquisition announcing 2^30 frames in its HDR (passive mode, scan shape
/// from the detector, no raw frames): refused at once, naming the announced count and the
/// limit, before a validity map of a byte per frame is allocated; the process's peak
/// memory stays under 600 MB.
#[test]
fn a_forged_frame_count_is_refused_within_the_memory_budget() {
    use stemflow_drivers::merlin::control::MerlinControl;
    let (_sim, c, d) = fast_merlin_sim(4, 4, MerlinFaults::default());
    let dir = ScratchDir::new("fault-hdr-huge");
    let out = dir.path().join("out");
    let (mut cmd, _o, err) = command::command(
        &[
            "acquire",
            "--mode",
            "passive",
            "--control-port",
            &c,
            "--data-port",
            &d,
            "--no-raw",
            "--arm-timeout-s",
            "30",
            "--frame-timeout-s",
            "2",
            "--out",
            path_arg(&out),
        ],
        dir.path(),
        "huge",
    );
    let mut child = common::process::ChildGuard::spawn("stemflow acquire", &mut cmd);
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(1500));
    let addr = format!("127.0.0.1:{c}").parse().expect("address");
    let mut ctl = MerlinControl::connect(addr, Duration::from_secs(2), Duration::from_secs(2))
        .expect("control port");
    let announced = (1u64 << 30).to_string();
    for (k, v) in [
        ("NUMFRAMESTOACQUIRE", announced.as_str()),
        ("NUMFRAMESPERTRIGGER", announced.as_str()),
        ("TRIGGERSTART", "5"),
    ] {
        ctl.set(k, v).expect("SET");
    }
    let t0 = Instant::now();
    ctl.cmd("STARTACQUISITION").expect("STARTACQUISITION");
    let mut peak = 0;
    while child.try_status().is_none() && t0.elapsed() < Duration::from_secs(30) {
        if let Some(p) = peak_rss(pid) {
            peak = peak.max(p);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = child
        .wait_timeout(Duration::from_secs(30))
        .expect("acquire did not end");
    let took = t0.elapsed();
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(took < Duration::from_secs(10), "took {took:?}: {stderr}");
    assert!(
        stderr.contains("1073741824") && stderr.contains("67108864"),
        "the error does not name the announced count and the limit: {stderr}"
    );
    assert!(
        peak < 600 << 20,
        "peak memory {} MB under a forged frame count",
        peak >> 20
    );
    eprintln!(
        "forged 2^30-frame HDR refused in {:.2} s, peak memory {} MB",
        took.as_secs_f64(),
        peak >> 20
    );
}

/// The run record a recording stores beside its data, parsed.
fn stored_run_record(rec: &stemflow_recording::reader::RecordingReader) -> serde_json::Value {
    let text = rec
        .run_record_json()
        .expect("reading the stored run record")
        .expect("a stored run record");
    serde_json::from_str(&text).expect("the stored run record parses")
}
