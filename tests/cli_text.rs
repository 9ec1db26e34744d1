//! What the command line prints is text a person reads, and what it is given is applied or
//! refused: no Rust debug notation in the summary or a plan's steps, no colour codes in a
//! log redirected to a file, and no option silently dropped because it stood before the
//! subcommand.

mod common;

use common::command::{self, path_arg};
use common::scratch::ScratchDir;

/// The summary of a scan and its log, redirected to files as in an unattended run: plain
/// words for the exit status and the end reason, no `Some(…)`, no ANSI escape sequences
/// even with logging turned up.
#[test]
fn summary_and_log_are_plain_text_when_redirected() {
    let dir = ScratchDir::new("text-summary");
    let out = dir.path().join("out");
    let run = command::stemflow_with_env(
        &["--out", path_arg(&out), "--nav-shape", "4x4", "--no-raw"],
        &[("STEMFLOW_LOG", "info")],
        dir.path(),
        "summary",
    );
    run.assert_success("stemflow --nav-shape 4x4");
    assert!(
        run.stdout.contains("exit status      completed\n"),
        "exit status not in words: {}",
        run.describe()
    );
    assert!(
        run.stdout
            .contains("ended by         every expected frame received"),
        "end reason not in words: {}",
        run.describe()
    );
    // The plan's steps, printed before the scan.
    assert!(
        run.stdout.contains("counter depth 12 bits") && run.stdout.contains("trigger"),
        "detector step not in words: {}",
        run.describe()
    );
    for debug in [
        "Some(",
        "None",
        "AllFrames",
        "CompletedWithLoss",
        "ExternalRising",
    ] {
        assert!(
            !run.stdout.contains(debug),
            "debug text `{debug}` in the summary: {}",
            run.describe()
        );
    }
    // Logging at info level writes lines; none carries a colour code.
    assert!(
        run.stderr.contains("INFO"),
        "no log lines at STEMFLOW_LOG=info: {}",
        run.describe()
    );
    assert!(
        !run.stderr.contains('\u{1b}'),
        "escape sequences in a redirected log: {}",
        run.describe()
    );
}

/// `stemflow --out X process F`: the default scan's options before a subcommand are refused
/// with a message naming the option, and nothing runs.
#[test]
fn options_before_a_subcommand_are_refused() {
    let dir = ScratchDir::new("text-order");
    let out = dir.path().join("elsewhere");
    let missing = dir.path().join("none.npy");
    let run = command::stemflow(
        &["--out", path_arg(&out), "process", path_arg(&missing)],
        dir.path(),
        "order",
    );
    assert_eq!(run.status.code(), Some(2), "{}", run.describe());
    assert!(
        run.stderr.contains("--out") && run.stderr.contains("process"),
        "the refusal does not name the option and the subcommand: {}",
        run.describe()
    );
    assert!(!out.exists(), "output written to {}", out.display());
}

/// `acquire --host localhost`: a host name is resolved (to its IPv4 address, where the
/// simulator listens) instead of refused as "invalid IP address syntax"; a name that does
/// not resolve is an error naming it, before anything is written.
#[test]
fn acquire_takes_a_host_name() {
    let (_sim, c, d) = common::instrument::fast_merlin_sim(2, 2, Default::default());
    let dir = ScratchDir::new("text-host");
    let out = dir.path().join("out");
    let run = command::stemflow(
        &[
            "acquire",
            "--host",
            "localhost",
            "--control-port",
            &c,
            "--data-port",
            &d,
            "--nav-shape",
            "2x2",
            "--no-raw",
            "--out",
            path_arg(&out),
        ],
        dir.path(),
        "host",
    );
    run.assert_success("stemflow acquire --host localhost");
    assert!(
        run.stdout.contains("4 expected, 4 received, 0 lost"),
        "{}",
        run.describe()
    );

    let nowhere = dir.path().join("nowhere");
    let run = command::stemflow(
        &[
            "acquire",
            "--host",
            "no-such-host.invalid",
            "--nav-shape",
            "2x2",
            "--out",
            path_arg(&nowhere),
        ],
        dir.path(),
        "no-host",
    );
    assert_eq!(run.status.code(), Some(1), "{}", run.describe());
    assert!(
        run.stderr.contains("no-such-host.invalid"),
        "the error does not name the host: {}",
        run.describe()
    );
    assert!(
        !nowhere.exists(),
        "output folder created for an unresolvable host"
    );
}

/// A detector whose control port refuses the connection: the error says the connection was
/// refused and names the detector, and does not claim that something panicked.
#[test]
fn a_refused_control_port_is_not_called_a_panic() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("binding a port")
        .local_addr()
        .expect("its address")
        .port();
    // The listener is dropped: nothing listens on `closed` any more.
    let port = closed.to_string();
    let dir = ScratchDir::new("text-refused");
    let run = command::stemflow(
        &[
            "acquire",
            "--control-port",
            &port,
            "--data-port",
            &port,
            "--nav-shape",
            "2x2",
            "--out",
            path_arg(&dir.path().join("out")),
        ],
        dir.path(),
        "refused",
    );
    assert_eq!(run.status.code(), Some(1), "{}", run.describe());
    let e = run.stderr.to_lowercase();
    assert!(
        e.contains("detector failed to start") && e.contains("refused"),
        "the error does not say what happened: {}",
        run.describe()
    );
    assert!(
        !e.contains("panicked"),
        "a refusal called a panic: {}",
        run.describe()
    );
}

/// `process --nav-shape` that does not hold the file's frames (4 or 16 positions for 9
/// frames) is refused naming both counts; without it, a Merlin set whose header gives no
/// scan shape and whose 9 frames make a square is processed as 3 × 3 (as LiberTEM does),
/// and the terminal says so.
#[test]
fn process_checks_the_scan_shape_against_the_frames() {
    let hdr = common::scratch::shared_data()
        .join("merlin/Merlin_Single_Quad/Quad_9_Frame_CounterDepth_12_Rows_256.hdr");
    let dir = ScratchDir::new("text-nav");
    for (shape, positions) in [("2x2", "4"), ("4x4", "16")] {
        let out = dir.path().join(format!("out-{shape}"));
        let run = command::stemflow(
            &[
                "process",
                path_arg(&hdr),
                "--nav-shape",
                shape,
                "--no-raw",
                "--out",
                path_arg(&out),
            ],
            dir.path(),
            &format!("nav-{shape}"),
        );
        assert_eq!(run.status.code(), Some(1), "{}", run.describe());
        assert!(
            run.stderr
                .contains(&format!("has {positions} scan positions"))
                && run.stderr.contains("holds 9 frames"),
            "the refusal does not name both counts: {}",
            run.describe()
        );
        assert!(
            !out.join("run.json").exists(),
            "results written for {shape}"
        );
    }
    let out = dir.path().join("out-square");
    let run = command::stemflow(
        &["process", path_arg(&hdr), "--out", path_arg(&out)],
        dir.path(),
        "nav-square",
    );
    run.assert_success("process without --nav-shape");
    assert!(
        run.stdout.contains("scan shape: 3x3"),
        "the inferred shape is not said: {}",
        run.describe()
    );
    let rec = stemflow_recording::reader::open_recording(out.join("recording.hspy"))
        .expect("opening recording.hspy");
    assert_eq!(rec.nav_shape(), stemflow_core::NavShape::new(3, 3));
}

/// `stemflow process` with stderr in a log file: a plain progress line (frames done of the
/// total, GB/s, the time left) every `STEMFLOW_PROGRESS_INTERVAL_S` seconds while it runs,
/// with no escape sequences; and nothing for a run shorter than the default interval (5 s).
#[test]
fn process_writes_plain_progress_lines_when_redirected() {
    let dir = ScratchDir::new("text-progress");
    // A sparse raw file of 8192 zero frames of 256 × 256 u16: 1 GiB to read, no disk blocks.
    let raw = dir.path().join("long.raw");
    let frames: u64 = 8192;
    std::fs::File::create(&raw)
        .and_then(|f| f.set_len(frames * 256 * 256 * 2))
        .expect("creating the raw file");
    let out = dir.path().join("out-long");
    let args = [
        "process",
        "--format",
        "raw",
        "--nav-shape",
        "64x128",
        "--sig-shape",
        "256x256",
        "--dtype",
        "u16",
        "--no-raw",
        "--snapshot-interval-ms",
        "10",
        "--out",
        path_arg(&out),
        path_arg(&raw),
    ];
    let interval = 0.02;
    let run = command::stemflow_with_env(
        &args,
        &[("STEMFLOW_PROGRESS_INTERVAL_S", "0.02")],
        dir.path(),
        "progress-long",
    );
    run.assert_success("process of 1 GiB");
    // The processing time, from `processed 8192 frames of … in 1.23 s`.
    let took: f64 = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("processed 8192 frames"))
        .and_then(|l| l.rsplit(" in ").next())
        .and_then(|l| l.trim_end_matches(" s").parse().ok())
        .unwrap_or_else(|| panic!("no `processed` line: {}", run.describe()));
    assert!(
        took > 5.0 * interval,
        "processing took {took} s, too short to show progress lines (input too small for this machine)"
    );
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("processing: "))
        .collect();
    assert!(
        !lines.is_empty(),
        "no progress line in {took} s: {}",
        run.describe()
    );
    for line in &lines {
        assert!(
            line.contains(&format!("/{frames} frames (")) && line.contains(" GB/s"),
            "progress line `{line}` lacks frames or GB/s: {}",
            run.describe()
        );
    }
    assert!(
        lines.iter().any(|l| l.contains(", ETA ")),
        "no progress line says the time left: {lines:?}"
    );
    assert!(
        !run.stderr.contains('\u{1b}'),
        "escape sequences in a redirected log: {}",
        run.describe()
    );
    // A short run at the default interval says nothing on stderr about progress.
    let small = dir.path().join("small.raw");
    std::fs::File::create(&small)
        .and_then(|f| f.set_len(16 * 256 * 256 * 2))
        .expect("creating the small raw file");
    let out = dir.path().join("out-short");
    let mut short = args;
    short[4] = "4x4";
    short[13] = path_arg(&out);
    short[14] = path_arg(&small);
    let run = command::stemflow(&short, dir.path(), "progress-short");
    run.assert_success("process of 16 frames");
    assert!(
        !run.stderr.contains("processing: "),
        "a progress line for a short run: {}",
        run.describe()
    );
}
