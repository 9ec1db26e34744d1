//! Ctrl-C as a user presses it: the first SIGINT ends a `stemflow process` run or a live
//! simulated acquisition promptly, the results so far are written and marked `cancelled`,
//! stderr says how far the run got, and the command exits with 130 (128 + SIGINT).
//! SIGTERM (systemd, `docker stop`) and SIGHUP (a lost ssh session) do the same and exit
//! with 143 and 129.
//! Also `--snapshot-interval-ms`, which must be at least 1.
//!
//! Every child runs in its own process group under a deadline and is killed when its guard
//! drops, so a test can never hang.

mod common;

use common::process::{ChildGuard, LogTap};
use common::scratch::{ScratchDir, slow_simulated_profile, tail};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A stop signal as a test sends it, the exit status it must give and how stderr must
/// name the cancel.
#[derive(Clone, Copy, Debug)]
struct Stop {
    /// The signal's number.
    signal: i32,
    /// The exit status of a command it cancelled: 128 + the signal's number.
    code: i32,
    /// The start of stderr's cancel line.
    said: &'static str,
}

/// Ctrl-C.
#[cfg(unix)]
const SIGINT: Stop = Stop {
    signal: libc::SIGINT,
    code: 130,
    said: "cancelled by the user after",
};

/// systemd's or `docker stop`'s stop request.
#[cfg(unix)]
const SIGTERM: Stop = Stop {
    signal: libc::SIGTERM,
    code: 143,
    said: "cancelled by SIGTERM after",
};

/// A lost terminal.
#[cfg(unix)]
const SIGHUP: Stop = Stop {
    signal: libc::SIGHUP,
    code: 129,
    said: "cancelled by SIGHUP after",
};

/// Longest a cancelled command may take to exit after the SIGINT (debug build, two shared
/// cores; the live path waits up to the receiver's 2 s frame timeout after disarming).
const EXIT_DEADLINE: Duration = Duration::from_secs(20);

fn stemflow() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stemflow"))
}

/// A `stemflow` child ([`ChildGuard`]: killed and reaped when dropped) with its stdout and
/// stderr collected.
struct Running {
    guard: ChildGuard,
    stdout: LogTap,
    stderr: LogTap,
}

impl Running {
    fn spawn(cmd: &mut Command) -> Self {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut guard = ChildGuard::spawn("stemflow", cmd);
        let stdout = guard.tap_stdout();
        let stderr = guard.tap_stderr();
        Self {
            guard,
            stdout,
            stderr,
        }
    }

    fn stdout(&self) -> String {
        self.stdout.text()
    }

    fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// Waits at most `timeout` until `find` is true of stdout + stderr or the child exits.
    fn wait_for_output(&mut self, timeout: Duration, find: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if find(&format!("{}{}", self.stdout(), self.stderr())) {
                return true;
            }
            if Instant::now() >= deadline || self.exited().is_some() {
                return find(&format!("{}{}", self.stdout(), self.stderr()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.guard.try_status()
    }

    fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let s = self.guard.wait_timeout(timeout)?;
        // Let the reader threads take the last output.
        std::thread::sleep(Duration::from_millis(100));
        Some(s)
    }

    #[cfg(unix)]
    fn stop(&self, stop: Stop) {
        self.guard.signal(stop.signal);
    }
}

fn read_json(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// A sparse raw file of `frames` zero frames of 256 × 256 u16: gigabytes to read, no disk
/// blocks used.
fn sparse_raw(path: &Path, frames: u64) {
    let f = std::fs::File::create(path).expect("creating the raw file");
    f.set_len(frames * 256 * 256 * 2)
        .expect("sizing the raw file");
}

/// A small reduction spec (its line on stdout says the run has started).
fn spec(path: &Path) {
    std::fs::write(
        path,
        "[[udf]]\nkind = \"sum\"\n\n[[udf]]\nkind = \"stats\"\n",
    )
    .expect("writing the spec");
}

/// `stemflow process` on a long input: SIGINT after it started → exit 130 within seconds,
/// `run.json` and `recording.hspy` written, `exit_status = "cancelled"`, fewer frames
/// processed than expected, and the one-line message on stderr.
#[cfg(unix)]
#[test]
fn ctrl_c_cancels_process_and_writes_the_results_so_far() {
    cancels_process(SIGINT);
}

/// SIGTERM does to `stemflow process` what Ctrl-C does, with exit status 143.
#[cfg(unix)]
#[test]
fn sigterm_cancels_process_and_writes_the_results_so_far() {
    cancels_process(SIGTERM);
}

#[cfg(unix)]
fn cancels_process(stop: Stop) {
    let dir = ScratchDir::new("cancel-process");
    let raw = dir.path().join("long.raw");
    // 8 GiB of frames: many seconds even for a release build, so the Ctrl-C comes first.
    let frames: u64 = 256 * 256;
    sparse_raw(&raw, frames);
    let spec_path = dir.path().join("spec.toml");
    spec(&spec_path);
    let out = dir.path().join("out");
    let mut cmd = stemflow();
    // --no-raw: the frames read are not copied into recording.hspy (no disk needed).
    cmd.args([
        "process",
        "--format",
        "raw",
        "--nav-shape",
        "256x256",
        "--no-raw",
    ])
    .args(["--sig-shape", "256x256", "--dtype", "u16"])
    .arg("--reductions")
    .arg(&spec_path)
    .arg("--out")
    .arg(&out)
    .arg(&raw);
    let mut child = Running::spawn(&mut cmd);
    // The spec line is printed after the Ctrl-C handler is installed and the input opened.
    assert!(
        child.wait_for_output(Duration::from_secs(30), |t| t.contains("reductions from")),
        "process never started:\nstdout:\n{}\nstderr:\n{}",
        child.stdout(),
        child.stderr()
    );
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        child.exited().is_none(),
        "process ended before the Ctrl-C (input too small for this machine):\n{}",
        tail(&child.stdout(), 2000)
    );
    child.stop(stop);
    let t0 = Instant::now();
    let status = child.wait_timeout(EXIT_DEADLINE).unwrap_or_else(|| {
        panic!(
            "process still running {} s after Ctrl-C:\nstderr:\n{}",
            EXIT_DEADLINE.as_secs(),
            tail(&child.stderr(), 2000)
        )
    });
    let took = t0.elapsed();
    let (so, se) = (child.stdout(), child.stderr());
    assert_eq!(
        status.code(),
        Some(stop.code),
        "exit status; stdout:\n{}\nstderr:\n{}",
        tail(&so, 2000),
        tail(&se, 2000)
    );
    assert!(took < Duration::from_secs(10), "took {took:?} to stop");
    assert!(
        se.contains(stop.said) && se.contains(&format!("of {frames} frames")),
        "stderr lacks the cancel line:\n{se}"
    );
    let run = read_json(&out.join("run.json"));
    assert_eq!(run["exit_status"], "cancelled", "{run:#}");
    assert_eq!(run["frames_expected"], frames, "{run:#}");
    let done = run["frames_processed"].as_u64().expect("frames_processed");
    assert!(done < frames, "all {done} frames processed: not cancelled");
    assert!(
        out.join("recording.hspy").is_file(),
        "recording.hspy not written"
    );
    assert!(
        run["results"].as_array().is_some_and(|r| !r.is_empty()),
        "no results listed: {run:#}"
    );
}

/// A live scan on the simulated instrument (long dwell, large scan): SIGINT while Running →
/// exit 130 within seconds, `run.json` with `exit_status = "cancelled"` and fewer frames
/// than the scan has, the recording finished.
#[cfg(unix)]
#[test]
fn ctrl_c_cancels_a_live_simulated_scan() {
    cancels_a_live_simulated_scan(SIGINT);
}

/// SIGTERM (systemd, `docker stop`) during a live scan: cancelled as by Ctrl-C — scan
/// stopped, detector disarmed, recording finished, run.json written — and exit 143.
#[cfg(unix)]
#[test]
fn sigterm_cancels_a_live_simulated_scan() {
    cancels_a_live_simulated_scan(SIGTERM);
}

/// SIGHUP (a lost ssh session) during a live scan: cancelled as by Ctrl-C, exit 129.
#[cfg(unix)]
#[test]
fn sighup_cancels_a_live_simulated_scan() {
    cancels_a_live_simulated_scan(SIGHUP);
}

#[cfg(unix)]
fn cancels_a_live_simulated_scan(stop: Stop) {
    let dir = ScratchDir::new("cancel-live");
    let profile = slow_simulated_profile(dir.path(), "0.002");
    let out = dir.path().join("out");
    let mut cmd = stemflow();
    cmd.args(["--nav-shape", "96x96", "--no-raw"])
        .arg("--profile")
        .arg(&profile)
        .arg("--out")
        .arg(&out);
    let frames: u64 = 96 * 96;
    let mut child = Running::spawn(&mut cmd);
    // State changes go to stderr when it is not a terminal.
    assert!(
        child.wait_for_output(Duration::from_secs(60), |t| t.contains("--> Running")),
        "scan never reached Running:\nstdout:\n{}\nstderr:\n{}",
        child.stdout(),
        child.stderr()
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert!(child.exited().is_none(), "scan ended before the Ctrl-C");
    child.stop(stop);
    let status = child.wait_timeout(EXIT_DEADLINE).unwrap_or_else(|| {
        panic!(
            "scan still running {} s after Ctrl-C:\nstderr:\n{}",
            EXIT_DEADLINE.as_secs(),
            tail(&child.stderr(), 3000)
        )
    });
    let (so, se) = (child.stdout(), child.stderr());
    assert_eq!(
        status.code(),
        Some(stop.code),
        "exit status; stdout:\n{}\nstderr:\n{}",
        tail(&so, 3000),
        tail(&se, 3000)
    );
    assert!(
        se.contains(stop.said),
        "stderr lacks the cancel line:\n{se}"
    );
    let run = read_json(&out.join("run.json"));
    assert_eq!(run["exit_status"], "cancelled", "{run:#}");
    // The disarm ended the acquisition, not the receiver's inactivity deadline (2 s).
    assert_eq!(run["end_reason"], "Disarmed", "{run:#}");
    assert_eq!(run["frames_expected"], frames, "{run:#}");
    let done = run["frames_processed"].as_u64().expect("frames_processed");
    assert!(done < frames, "all {done} frames processed: not cancelled");
    // The positions after the cancel were never acquired: not lost (the loopback simulator
    // loses nothing), and every position is accounted for.
    assert_eq!(run["frames_lost"], 0, "{run:#}");
    let received = run["frames_received"].as_u64().expect("frames_received");
    let damaged = run["frames_damaged"].as_u64().expect("frames_damaged");
    let not_acquired = run["frames_not_acquired"]
        .as_u64()
        .expect("frames_not_acquired");
    assert!(not_acquired > 0, "{run:#}");
    assert_eq!(received + damaged + not_acquired, frames, "{run:#}");
    assert!(
        out.join("recording.hspy").is_file(),
        "recording not finished"
    );
    // The recording's validity map says the same: code 3 for the positions never scanned.
    let rec = stemflow_recording::reader::open_recording(out.join("recording.hspy"))
        .expect("opening recording.hspy");
    let v = rec.validity().expect("validity map");
    assert_eq!(v.not_acquired() as u64, not_acquired);
    assert_eq!(v.missing(), 0, "lost frames in the map");
    assert_eq!(
        v.status(frames as usize - 1),
        stemflow_core::validity::FrameStatus::NotAcquired
    );
}

/// `queue`: SIGINT while a unit's scan runs → that acquisition is cancelled, not waited
/// for (96 × 96 positions of 2 ms would take 18 s), exit 130, the unit journaled `stopped`
/// with its run `cancelled` (so `--resume` runs it again), and the next unit never starts.
#[cfg(unix)]
#[test]
fn ctrl_c_cancels_a_queue_unit_and_journals_it_stopped() {
    cancels_a_queue_unit_and_journals_it_stopped(SIGINT);
}

/// SIGTERM stops an unattended queue the way Ctrl-C does, with exit status 143.
#[cfg(unix)]
#[test]
fn sigterm_cancels_a_queue_unit_and_journals_it_stopped() {
    cancels_a_queue_unit_and_journals_it_stopped(SIGTERM);
}

#[cfg(unix)]
fn cancels_a_queue_unit_and_journals_it_stopped(stop: Stop) {
    let dir = ScratchDir::new("cancel-queue");
    let q = dir.path().join("q.toml");
    std::fs::write(
        &q,
        "[[item]]\nname = \"long\"\nplan = \"stem_4d_scan\"\nnav_shape = \"96x96\"\n\
         dwell_time_s = 0.002\n[[item]]\nname = \"after\"\nplan = \"stem_4d_scan\"\n\
         nav_shape = \"4x4\"\n",
    )
    .expect("writing the queue");
    let out = dir.path().join("out");
    let journal = out.join("journal.jsonl");
    let mut cmd = stemflow();
    cmd.arg("queue").arg(&q).arg("--out").arg(&out);
    let mut child = Running::spawn(&mut cmd);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&journal).is_ok_and(|j| j.contains("\"run_start\"")) {
        assert!(
            Instant::now() < deadline && child.exited().is_none(),
            "the unit never started:\nstderr:\n{}",
            tail(&child.stderr(), 3000)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert!(child.exited().is_none(), "queue ended before the Ctrl-C");
    let sent = Instant::now();
    child.stop(stop);
    let status = child.wait_timeout(EXIT_DEADLINE).unwrap_or_else(|| {
        panic!(
            "queue still running {} s after Ctrl-C:\nstderr:\n{}",
            EXIT_DEADLINE.as_secs(),
            tail(&child.stderr(), 3000)
        )
    });
    assert_eq!(
        status.code(),
        Some(stop.code),
        "stderr:\n{}",
        tail(&child.stderr(), 3000)
    );
    assert!(
        sent.elapsed() < Duration::from_secs(12),
        "the scan was waited for: {:?} after Ctrl-C",
        sent.elapsed()
    );
    let recs: Vec<Value> = std::fs::read_to_string(&journal)
        .expect("journal")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let end = recs
        .iter()
        .find(|r| r["event"] == "run_end" && r["key"] == "000:long")
        .unwrap_or_else(|| panic!("no run_end for the unit: {recs:#?}"));
    assert_eq!(end["status"], "stopped", "{end:#}");
    assert_eq!(end["runs"][0]["exit_status"], "cancelled", "{end:#}");
    assert!(
        !recs.iter().any(|r| r["key"] == "001:after"),
        "the next unit started: {recs:#?}"
    );
}

/// `--snapshot-interval-ms 0` is refused before anything runs, with a message naming the
/// option and the limit.
#[test]
fn a_zero_snapshot_interval_is_refused() {
    let dir = ScratchDir::new("cancel-interval");
    let out = stemflow()
        .args(["process", "--snapshot-interval-ms", "0", "--out"])
        .arg(dir.path().join("out"))
        .arg(dir.path().join("none.npy"))
        .output()
        .expect("running stemflow");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{err}");
    assert!(
        err.contains("--snapshot-interval-ms") && err.contains("at least 1 ms"),
        "stderr:\n{err}"
    );
    assert!(!dir.path().join("out").exists(), "output written");
}

/// A pipeline that counts frames and honours the cancel flag within 10 ms, as the engine
/// does. After the cancel it lingers 100 ms while the scan goes on, so stacks queue up, and
/// reports where the frames it did not count begin, as the engine does.
fn cancellable_counting_pipeline() -> stemflow_actors::orchestrator::PipelineBuilder {
    use crossbeam_channel::RecvTimeoutError;
    use std::sync::atomic::Ordering;
    use stemflow_actors::processing::PipelineOutput;
    Arc::new(|inputs| {
        Box::new(move |cancel, _snaps| {
            let mut frames = 0u64;
            let mut taken_until = 0u64;
            let cancelled = loop {
                if cancel.load(Ordering::SeqCst) {
                    break true;
                }
                match inputs.stacks.recv_timeout(Duration::from_millis(10)) {
                    Ok(stack) => {
                        frames += stack.len() as u64;
                        taken_until = stack.first_frame() + stack.len() as u64;
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break false,
                }
            };
            Ok(PipelineOutput {
                results: Vec::new(),
                frames_processed: frames,
                damaged: Vec::new(),
                cancelled,
                unprocessed_from: cancelled.then(|| {
                    std::thread::sleep(Duration::from_millis(100));
                    taken_until
                }),
                recording: inputs.recording,
            })
        })
    })
}

/// The orchestrator's user cancel ([`stemflow_actors::orchestrator::CancelHandle`], what
/// Ctrl-C calls): the running scan ends as `Cancelled` with the frames so far, promptly;
/// the request is consumed, and the same instrument then runs a whole scan to completion.
#[test]
fn a_cancelled_acquisition_leaves_the_instrument_usable() {
    use stemflow_actors::orchestrator::{ExitStatus, Instrument};
    use stemflow_actors::supervisor::InstrumentSpec;
    use stemflow_core::detector::Detector;
    use stemflow_core::devices::{ScanEngine, ScanSettings, TriggerOutput, trigger_line};
    use stemflow_core::{NavShape, SigShape};
    use stemflow_drivers::merlin::{MerlinDetector, MerlinDetectorConfig};
    use stemflow_simulators::merlin::{MerlinSim, MerlinSimConfig, MerlinSource, Pacing};
    use stemflow_simulators::scan::{ScanEngineSim, ScanFaults};
    use stemflow_simulators::specimen::Specimen;

    let nav = NavShape::new(40, 50);
    let (trig_out, trig_in) = trigger_line();
    let mut cfg = MerlinSimConfig::new(MerlinSource::Synthetic {
        specimen: Specimen::builder().disk_radius_px(8.0).build(),
        nav_shape: nav,
        sig_shape: SigShape::new(64, 64),
        seed: 3,
    });
    cfg.pacing = Pacing::AsFastAsPossible;
    cfg.trigger_input = Some(trig_in);
    let merlin = MerlinSim::start(cfg).expect("merlin simulator");
    let det = MerlinDetectorConfig::new(merlin.control_addr(), merlin.data_addr());
    let spec = InstrumentSpec {
        detector: Arc::new(move || {
            MerlinDetector::connect(det.clone()).map(|d| Box::new(d) as Box<dyn Detector>)
        }),
        scan: Some(Arc::new(move || {
            Ok(
                Box::new(ScanEngineSim::new(trig_out.clone(), ScanFaults::default()))
                    as Box<dyn ScanEngine>,
            )
        })),
        microscope: None,
        recording: Arc::new(|_| Err("no recording in this test".into())),
    };
    let request = |dwell_s: f64| {
        let mut r = common::instrument::external_trigger_request(
            ScanSettings {
                nav_shape: nav,
                dwell_time_s: dwell_s,
                flyback_s: 0.0,
                trigger: TriggerOutput::Pixel,
                region_origin: None,
            },
            "cancel",
        );
        r.pipeline = cancellable_counting_pipeline();
        r
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let frames = nav.len() as u64;
    rt.block_on(async {
        let mut inst = Instrument::start(spec).await.expect("instrument");
        let handle = inst.cancel_handle();
        let h = handle.clone();
        // 2000 positions of 3 ms: 6 s unless cancelled after 1 s.
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            h.cancel();
        });
        let t0 = Instant::now();
        let first =
            tokio::time::timeout(Duration::from_secs(30), inst.run_acquisition(request(3e-3)))
                .await
                .expect("the cancelled run ended")
                .unwrap_or_else(|f| panic!("cancelled run failed: {}", f.error));
        let took = t0.elapsed();
        canceller.await.expect("canceller");
        assert_eq!(first.exit_status, ExitStatus::Cancelled, "{first:?}");
        assert!(
            first.frames_processed > 0 && first.frames_processed < frames,
            "{first:?}"
        );
        // The disarm ends the receiver's acquisition once the stream is quiet, not at its
        // 2 s inactivity deadline.
        assert_eq!(first.end_reason, "Disarmed", "{first:?}");
        assert!(took < Duration::from_secs(5), "cancel took {took:?}");
        // The frames queued after the cancel and dropped are not counted received: every
        // position is processed, not acquired, or (on loopback, none) lost.
        assert_eq!(first.frames_received, first.frames_processed, "{first:?}");
        assert_eq!(first.frames_lost, 0, "{first:?}");
        assert_eq!(
            first.frames_received + first.frames_not_acquired,
            frames,
            "{first:?}"
        );
        assert!(
            !handle.is_requested(),
            "the cancel request was not consumed"
        );
        assert_eq!(inst.state(), stemflow_core::state::AcqState::Idle);

        let second =
            tokio::time::timeout(Duration::from_secs(30), inst.run_acquisition(request(2e-4)))
                .await
                .expect("the second run ended")
                .unwrap_or_else(|f| panic!("run after the cancel failed: {}", f.error));
        assert_eq!(second.exit_status, ExitStatus::Completed, "{second:?}");
        assert_eq!(second.frames_processed, frames, "{second:?}");
        inst.shutdown().await;
    });
    drop(merlin);
}
