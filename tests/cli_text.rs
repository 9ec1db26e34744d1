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
    use stemflow_core::{NavShape, SigShape};
    use stemflow_simulators::merlin::{MerlinSim, MerlinSimConfig, MerlinSource, Pacing};
    use stemflow_simulators::specimen::Specimen;

    let mut cfg = MerlinSimConfig::new(MerlinSource::Synthetic {
        specimen: Specimen::builder().build(),
        nav_shape: NavShape::new(2, 2),
        sig_shape: SigShape::new(64, 64),
        seed: 1,
    });
    cfg.pacing = Pacing::AsFastAsPossible;
    let sim = MerlinSim::start(cfg).expect("starting the Merlin simulator");
    let (c, d) = (
        sim.control_addr().port().to_string(),
        sim.data_addr().port().to_string(),
    );
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
