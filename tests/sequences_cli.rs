//! `stemflow run` and `stemflow queue` end to end on the embedded simulated instrument:
//! dry runs that touch nothing, every example of `sequences/examples/` run for real (small
//! scans: 8 × 8 of 64 × 64 frames), a microscope setting that does not take, and a queue
//! killed mid-way and resumed from its journal.
//!
//! Every child runs under a deadline and is killed (with its process group) when its guard
//! drops.

mod common;

use common::command::{COMMAND_TIMEOUT, command, stemflow};
use common::process::ChildGuard;
use common::scratch::ScratchDir;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sequences/examples")
}

fn profile() -> String {
    examples()
        .join("small-sim-profile.toml")
        .display()
        .to_string()
}

/// A local webhook receiver: collects request bodies until one contains `last` or the
/// deadline passes (then it stops by itself).
fn webhook_server(last: &'static str) -> (u16, std::thread::JoinHandle<Vec<String>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    let t = std::thread::spawn(move || {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let mut bodies = Vec::new();
        while Instant::now() < deadline && !bodies.iter().any(|b: &String| b.contains(last)) {
            let Ok((mut c, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            c.set_nonblocking(false).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = c.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
                if n == 0 || String::from_utf8_lossy(&got).trim_end().ends_with('}') {
                    break;
                }
            }
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            bodies.push(String::from_utf8_lossy(&got).into_owned());
        }
        bodies
    });
    (port, t)
}

fn journal(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("journal.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn ends<'a>(j: &'a [Value], status: &str) -> Vec<&'a str> {
    j.iter()
        .filter(|r| r["event"] == "run_end" && r["status"] == status)
        .filter_map(|r| r["key"].as_str())
        .collect()
}

#[test]
fn dry_runs_print_steps_settings_duration_and_volume_and_touch_nothing() {
    let s = ScratchDir::new("seq-dry");
    let out = s.path().join("never");
    let plan = examples().join("defocus-series.toml");
    let f = stemflow(
        &[
            "run",
            "--dry-run",
            plan.to_str().unwrap(),
            "--profile",
            &profile(),
            "--out",
            out.to_str().unwrap(),
        ],
        s.path(),
        "dry-plan",
    );
    assert!(f.status.success(), "{}", f.describe());
    for want in [
        "microscope: defocus -40.0 nm",
        "scan engine: 8x8 positions, dwell 500.0 µs",
        "detector: 64 frames, exposure 400.0 µs",
        "acquire `defocus 40.0 nm`: 64 frames",
        "estimated 0.16 s, 5 acquisition(s), 320 frames, 2.6 MB",
        "dry run: no device touched",
    ] {
        assert!(
            f.stdout.contains(want),
            "missing `{want}`\n{}",
            f.describe()
        );
    }
    let q = examples().join("overnight-queue.toml");
    let f = stemflow(
        &[
            "queue",
            "--dry-run",
            q.to_str().unwrap(),
            "--profile",
            &profile(),
            "--out",
            out.to_str().unwrap(),
        ],
        s.path(),
        "dry-queue",
    );
    assert!(f.status.success(), "{}", f.describe());
    assert!(
        f.stdout.contains("queue overnight (7 units)"),
        "{}",
        f.describe()
    );
    assert!(
        f.stdout.contains("[002:defocus#2] plan stem_4d_scan"),
        "{}",
        f.describe()
    );
    assert!(
        f.stdout
            .contains("acquire `region (2, 2) 4x4 of 8x8`: 16 frames"),
        "{}",
        f.describe()
    );
    assert!(!out.exists(), "a dry run created {}", out.display());

    // A bad plan is refused with file, key and problem; nothing runs.
    let bad = s.path().join("bad.toml");
    std::fs::write(
        &bad,
        "plan = \"repeated_scan\"\nnav_shape = \"8x8\"\nrepeats = 0\n",
    )
    .unwrap();
    let f = stemflow(
        &["run", "--dry-run", bad.to_str().unwrap()],
        s.path(),
        "bad",
    );
    assert!(!f.status.success());
    assert!(
        f.stderr.contains("bad.toml") && f.stderr.contains("`repeats`") && f.stderr.contains("≥ 1"),
        "{}",
        f.describe()
    );
    let badq = s.path().join("badq.toml");
    std::fs::write(
        &badq,
        "[[item]]\nplan = \"stem_4d_scan\"\n[[item]]\nname = \"x\"\nplan = \"stem_4d_scan\"\ndwell_time_s = -1\n",
    )
    .unwrap();
    let f = stemflow(
        &[
            "queue",
            badq.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        s.path(),
        "badq",
    );
    assert!(!f.status.success());
    assert!(
        f.stderr
            .contains("badq.toml: key `item[1] \"x\".dwell_time_s`"),
        "{}",
        f.describe()
    );
    assert!(!out.exists(), "an invalid queue started: {}", out.display());
}

#[test]
fn example_plans_and_script_run_on_the_simulated_instrument() {
    let s = ScratchDir::new("seq-run");
    for (file, acquisitions, frames) in [
        ("quickstart-scan.toml", 1, 64),
        ("defocus-series.toml", 5, 64),
        ("repeated-scans.toml", 3, 64),
        ("refocus.rhai", 4, 64),
    ] {
        let out = s.path().join(file);
        let path = examples().join(file);
        let f = stemflow(
            &[
                "run",
                path.to_str().unwrap(),
                "--profile",
                &profile(),
                "--out",
                out.to_str().unwrap(),
            ],
            s.path(),
            file,
        );
        assert!(f.status.success(), "{file}: {}", f.describe());
        let runs: Vec<&str> = f
            .stdout
            .lines()
            .filter(|l| l.starts_with("run `"))
            .collect();
        assert_eq!(runs.len(), acquisitions, "{file}: {}", f.describe());
        let last = runs.last().unwrap();
        assert!(
            last.contains(&format!("completed, {frames} of {frames} frames, 0 lost")),
            "{file}: {last}"
        );
        let h5 = std::fs::read_dir(&out).unwrap().count();
        assert_eq!(h5, acquisitions, "{file}: one recording per acquisition");
    }
}

#[test]
fn example_queues_run_and_journal_every_unit() {
    let s = ScratchDir::new("seq-queue");
    for (file, units, acquisitions) in [
        ("dark-then-scan.toml", 2, 2),
        ("overnight-queue.toml", 7, 11),
    ] {
        let out = s.path().join(file);
        let path = examples().join(file);
        let f = stemflow(
            &[
                "queue",
                path.to_str().unwrap(),
                "--profile",
                &profile(),
                "--out",
                out.to_str().unwrap(),
            ],
            s.path(),
            file,
        );
        assert!(f.status.success(), "{file}: {}", f.describe());
        let j = journal(&out);
        assert_eq!(ends(&j, "completed").len(), units, "{file}: {j:?}");
        let runs: usize = j
            .iter()
            .filter(|r| r["event"] == "run_end")
            .map(|r| r["runs"].as_array().map_or(0, Vec::len))
            .sum();
        assert_eq!(runs, acquisitions, "{file}");
        let first = &j.iter().find(|r| r["event"] == "run_end").unwrap()["runs"][0];
        assert_eq!(first["exit_status"], "completed");
        assert_eq!(first["frames_lost"], 0);
        assert!(first["metadata"]["microscope"].is_object(), "{first}");
        assert!(Path::new(first["output_file"].as_str().unwrap()).exists());
        assert_eq!(j.last().unwrap()["event"], "queue_end");
    }
    // The dark reference was taken with the beam blanked (read back into its metadata).
    let j = journal(&s.path().join("dark-then-scan.toml"));
    let dark = &j
        .iter()
        .find(|r| r["key"] == "000:dark" && r["event"] == "run_end")
        .unwrap()["runs"][0];
    assert_eq!(
        dark["metadata"]["microscope"]["beam_blanked"], true,
        "{dark}"
    );
    let scan = &j
        .iter()
        .find(|r| r["key"] == "001:scan" && r["event"] == "run_end")
        .unwrap()["runs"][0];
    assert_eq!(
        scan["metadata"]["microscope"]["beam_blanked"], false,
        "{scan}"
    );
    // The overnight queue's log has the script's own lines.
    let log = std::fs::read_to_string(s.path().join("overnight-queue.toml/queue.log")).unwrap();
    assert!(log.contains("script: refocus: best defocus"), "{log}");
}

#[test]
fn a_microscope_setting_that_does_not_take_fails_the_item_per_its_policy() {
    let s = ScratchDir::new("seq-stuck");
    let q = s.path().join("q.toml");
    let (port, hook) = webhook_server("queue_aborted");
    std::fs::write(
        &q,
        format!("[queue]\nwebhook = \"http://127.0.0.1:{port}/stemflow\"\n")
            + "[[item]]\nname = \"focus\"\nplan = \"stem_4d_scan\"\nnav_shape = \"4x4\"\ndefocus_m = 2e-8\non_error = \"retry\"\nretries = 1\nafter_retries = \"skip\"\n\
         [[item]]\nname = \"plain\"\nplan = \"stem_4d_scan\"\nnav_shape = \"4x4\"\n\
         [[item]]\nname = \"series\"\nplan = \"defocus_series\"\nnav_shape = \"4x4\"\ndefocus_m = [1e-8]\n\
         [[item]]\nname = \"never\"\nplan = \"stem_4d_scan\"\n",
    )
    .unwrap();
    let out = s.path().join("out");
    let f = stemflow(
        &[
            "queue",
            q.to_str().unwrap(),
            "--profile",
            &profile(),
            "--out",
            out.to_str().unwrap(),
            "--sim-stuck-setting",
            "defocus_m",
        ],
        s.path(),
        "stuck",
    );
    assert!(
        !f.status.success(),
        "the abort policy must fail the command: {}",
        f.describe()
    );
    assert!(
        f.stderr.contains("queue aborted at `002:series`")
            && f.stderr
                .contains("`defocus_m` rejected: requested 0.00000001")
            && f.stderr.contains("0 (read back)"),
        "{}",
        f.describe()
    );
    let j = journal(&out);
    let failed: Vec<&str> = ends(&j, "failed");
    assert_eq!(failed, vec!["000:focus"], "one retry");
    assert_eq!(ends(&j, "skipped"), vec!["000:focus"]);
    assert_eq!(ends(&j, "completed"), vec!["001:plain"]);
    assert_eq!(ends(&j, "aborted"), vec!["002:series"]);
    let e = j
        .iter()
        .find(|r| r["key"] == "000:focus" && r["status"] == "skipped")
        .unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        e.contains("microscope-sim")
            && e.contains("defocus_m")
            && e.contains("requested 0.00000002"),
        "{e}"
    );
    assert!(
        !j.iter().any(|r| r["key"] == "003:never"),
        "nothing ran after the abort"
    );
    let bodies = hook.join().unwrap();
    let events: Vec<&str> = ["queue_start", "unit_retry", "unit_skipped", "queue_aborted"]
        .into_iter()
        .filter(|e| {
            bodies
                .iter()
                .any(|b| b.contains(&format!("\"event\":\"{e}\"")))
        })
        .collect();
    assert_eq!(events.len(), 4, "webhook POSTs: {bodies:?}");
    let aborted = bodies.iter().find(|b| b.contains("queue_aborted")).unwrap();
    assert!(
        aborted.starts_with("POST /stemflow HTTP/1.1") && aborted.contains("defocus_m"),
        "{aborted}"
    );
}

#[test]
fn a_queue_killed_mid_way_resumes_from_the_first_unfinished_unit() {
    let s = ScratchDir::new("seq-kill");
    let q = s.path().join("q.toml");
    // Six units of ~0.4 s each (two 4x4 scans 0.3 s apart).
    let mut text = String::from("[queue]\nlog = \"queue.log\"\n");
    for i in 0..6 {
        text.push_str(&format!(
            "[[item]]\nname = \"u{i}\"\nplan = \"repeated_scan\"\nnav_shape = \"4x4\"\nrepeats = 2\ninterval_s = 0.3\n"
        ));
    }
    std::fs::write(&q, text).unwrap();
    let out = s.path().join("out");
    let args = [
        "queue",
        q.to_str().unwrap(),
        "--profile",
        &profile(),
        "--out",
        out.to_str().unwrap(),
    ];
    let (mut cmd, _, _) = command(&args, s.path(), "killed");
    let mut child = ChildGuard::spawn("stemflow queue (to be killed)", &mut cmd);
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    while ends(&journal(&out), "completed").len() < 2 {
        assert!(
            child.try_status().is_none(),
            "the queue ended before it was killed"
        );
        assert!(
            Instant::now() < deadline,
            "no unit finished in time: {:?}",
            journal(&out)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(child); // SIGKILL to the process group: no cleanup code of ours runs
    let before = journal(&out);
    let done_before: Vec<String> = ends(&before, "completed")
        .iter()
        .map(|k| k.to_string())
        .collect();
    assert!(
        done_before.len() >= 2 && done_before.len() < 6,
        "{done_before:?}"
    );
    assert!(
        !before.iter().any(|r| r["event"] == "queue_end"),
        "killed, so the journal shows no end"
    );

    // Another queue file cannot resume this journal.
    let other = s.path().join("other.toml");
    std::fs::write(&other, "[[item]]\nplan = \"stem_4d_scan\"\n").unwrap();
    let f = stemflow(
        &[
            "queue",
            other.to_str().unwrap(),
            "--profile",
            &profile(),
            "--out",
            out.to_str().unwrap(),
            "--resume",
        ],
        s.path(),
        "other",
    );
    assert!(
        !f.status.success() && f.stderr.contains("belongs to queue"),
        "{}",
        f.describe()
    );

    let f = stemflow(&[&args[..], &["--resume"]].concat(), s.path(), "resumed");
    assert!(f.status.success(), "{}", f.describe());
    assert!(
        f.stdout
            .contains(&format!("{} already done", done_before.len())),
        "{}",
        f.describe()
    );
    let after = journal(&out);
    let done_after = ends(&after, "completed");
    for i in 0..6 {
        let key = format!("00{i}:u{i}");
        assert_eq!(
            done_after.iter().filter(|k| **k == key).count(),
            1,
            "{key} completed exactly once over both runs"
        );
    }
    for k in &done_before {
        let starts = after
            .iter()
            .filter(|r| r["event"] == "run_start" && r["key"] == k.as_str())
            .count();
        assert_eq!(
            starts, 1,
            "{k} finished before the kill and was not run again"
        );
    }
    assert_eq!(after.last().unwrap()["event"], "queue_end");
    assert_eq!(
        after.last().unwrap()["metadata"]["already_done"],
        done_before.len()
    );
}

#[test]
fn a_control_file_pauses_resumes_and_stops_a_running_queue() {
    let s = ScratchDir::new("seq-control");
    let q = s.path().join("q.toml");
    // Five units of ~0.6 s each (two 4x4 scans 0.5 s apart).
    let mut text = String::new();
    for i in 0..5 {
        text.push_str(&format!(
            "[[item]]\nname = \"u{i}\"\nplan = \"repeated_scan\"\nnav_shape = \"4x4\"\nrepeats = 2\ninterval_s = 0.5\n"
        ));
    }
    std::fs::write(&q, text).unwrap();
    let out = s.path().join("out");
    let control = out.join("control");
    let args = [
        "queue",
        q.to_str().unwrap(),
        "--profile",
        &profile(),
        "--out",
        out.to_str().unwrap(),
    ];
    let (mut cmd, stdout, stderr) = command(&args, s.path(), "controlled");
    let mut child = ChildGuard::spawn("stemflow queue (controlled)", &mut cmd);
    let wait_until = |what: &str, cond: &dyn Fn(&[Value]) -> bool| {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let j = journal(&out);
            if cond(&j) {
                return j;
            }
            assert!(Instant::now() < deadline, "{what}: {j:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_until("first unit started", &|j| {
        j.iter().any(|r| r["event"] == "run_start")
    });
    std::fs::write(&control, "pause").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let paused = journal(&out).len();
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(journal(&out).len(), paused, "nothing moves while paused");
    assert!(
        ends(&journal(&out), "completed").len() < 5,
        "paused before the end"
    );
    std::fs::write(&control, "resume").unwrap();
    wait_until("a unit completed after the resume", &|j| j.len() > paused);
    std::fs::write(&control, "stop").unwrap();
    let status = child.wait_timeout(COMMAND_TIMEOUT);
    let err = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert!(
        status.is_some_and(|s| !s.success()),
        "a stopped queue exits with an error: {err}"
    );
    assert!(err.contains("stopped by request"), "{err}");
    let j = journal(&out);
    assert_eq!(ends(&j, "stopped").len(), 1, "{j:?}");
    let out_text = std::fs::read_to_string(&stdout).unwrap_or_default();
    assert!(out_text.contains("control: write pause"), "{out_text}");

    // The stopped unit runs again on resume; the stale `stop` word is cleared.
    let f = stemflow(&[&args[..], &["--resume"]].concat(), s.path(), "resumed");
    assert!(f.status.success(), "{}", f.describe());
    let j = journal(&out);
    assert_eq!(ends(&j, "completed").len(), 5, "{j:?}");
}

#[test]
fn a_suspender_holds_the_queue_while_the_beam_current_is_low() {
    let s = ScratchDir::new("seq-suspend");
    let q = s.path().join("q.toml");
    let mut text = String::from(
        "[queue]\nlog = \"queue.log\"\n[[suspend]]\nmonitor = \"beam_current_na\"\nbelow = 0.5\nmax_suspend_s = 20\npoll_s = 0.05\n",
    );
    for i in 0..4 {
        text.push_str(&format!(
            "[[item]]\nname = \"u{i}\"\nplan = \"repeated_scan\"\nnav_shape = \"4x4\"\nrepeats = 3\ninterval_s = 0.1\n"
        ));
    }
    std::fs::write(&q, text).unwrap();
    let out = s.path().join("out");
    let t0 = Instant::now();
    let f = stemflow(
        &[
            "queue",
            q.to_str().unwrap(),
            "--profile",
            &profile(),
            "--out",
            out.to_str().unwrap(),
            "--sim-beam-dip",
            "0.2:1.5",
        ],
        s.path(),
        "suspend",
    );
    assert!(f.status.success(), "{}", f.describe());
    assert!(
        t0.elapsed() >= Duration::from_millis(1700),
        "the dip was waited out"
    );
    let log = std::fs::read_to_string(out.join("queue.log")).unwrap();
    let held = log
        .find("suspended while beam_current_na < 0.5 (beam_current_na = 0.1)")
        .unwrap_or_else(|| panic!("{log}"));
    let resumed = log
        .find("resumed: beam_current_na < 0.5 cleared")
        .unwrap_or_else(|| panic!("{log}"));
    assert!(held < resumed);
    assert_eq!(ends(&journal(&out), "completed").len(), 4);
}

/// `stemflow run` of a script stuck in a busy loop ends at `--max-duration-s` with an error
/// naming the limit (cleanup still runs), instead of hanging forever.
#[test]
fn a_stuck_script_ends_at_its_time_limit() {
    let dir = ScratchDir::new("seq-limit");
    let script = dir.path().join("spin.rhai");
    std::fs::write(&script, "loop { }").expect("writing the script");
    let out = dir.path().join("out");
    let run = stemflow(
        &[
            "run",
            script.to_str().expect("utf-8 path"),
            "--max-duration-s",
            "1",
            "--out",
            out.to_str().expect("utf-8 path"),
        ],
        dir.path(),
        "limit",
    );
    assert_eq!(run.status.code(), Some(1), "{}", run.describe());
    assert!(
        run.stderr.contains("time limit of 1.0 s"),
        "the error does not name the limit: {}",
        run.describe()
    );
    assert!(
        run.took < Duration::from_secs(60),
        "took {:?}: {}",
        run.took,
        run.describe()
    );
}
