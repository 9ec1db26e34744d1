//! The `stemflow` binary run to completion under a deadline, its output kept in log files
//! for failure messages; path arguments; result lookup in what a run recorded.

use super::process::ChildGuard;
use super::scratch::tail;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use stemflow_core::result::{ResultBuffer, UdfResults};

/// Limit for one `stemflow` command in these tests (debug build, two shared cores).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// A finished `stemflow` command.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// From start to exit.
    pub took: Duration,
}

impl Finished {
    /// The exit status, the time taken and the ends of both outputs, for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "exit status {} after {:.1} s\nstdout ends:\n{}\nstderr ends:\n{}",
            self.status,
            self.took.as_secs_f64(),
            tail(&self.stdout, 4000),
            tail(&self.stderr, 4000)
        )
    }

    /// Panics, describing the run, unless it exited with status 0.
    pub fn assert_success(&self, what: &str) {
        assert!(self.status.success(), "{what} failed: {}", self.describe());
    }
}

/// `stemflow ARGS` as a command, its output going to `scratch/stdout-<tag>.log` and
/// `scratch/stderr-<tag>.log` (returned in that order), for a test that starts it itself
/// (e.g. to kill it mid-way).
///
/// # Panics
/// When a log file cannot be created.
pub fn command(args: &[&str], scratch: &Path, tag: &str) -> (Command, PathBuf, PathBuf) {
    let out = scratch.join(format!("stdout-{tag}.log"));
    let err = scratch.join(format!("stderr-{tag}.log"));
    let file =
        |p: &Path| std::fs::File::create(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stemflow"));
    cmd.args(args)
        .stdout(Stdio::from(file(&out)))
        .stderr(Stdio::from(file(&err)));
    (cmd, out, err)
}

/// Runs `stemflow ARGS` to completion (at most [`COMMAND_TIMEOUT`]), its output kept in
/// `scratch/stdout-<tag>.log` and `scratch/stderr-<tag>.log`.
///
/// # Panics
/// When the command cannot be started or is still running at the deadline (it is then
/// killed with its process group), with the ends of its output.
pub fn stemflow(args: &[&str], scratch: &Path, tag: &str) -> Finished {
    stemflow_with_env(args, &[], scratch, tag)
}

/// As [`stemflow`], with the environment variables `env` set for the child.
///
/// # Panics
/// As [`stemflow`].
pub fn stemflow_with_env(
    args: &[&str],
    env: &[(&str, &str)],
    scratch: &Path,
    tag: &str,
) -> Finished {
    let (mut cmd, out, err) = command(args, scratch, tag);
    cmd.envs(env.iter().copied());
    let t0 = Instant::now();
    let mut child = ChildGuard::spawn(&format!("stemflow {}", args.join(" ")), &mut cmd);
    let status = child.wait_timeout(COMMAND_TIMEOUT);
    let took = t0.elapsed();
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let Some(status) = status else {
        panic!(
            "`stemflow {}` still running after {took:?}\nstdout ends:\n{}\nstderr ends:\n{}",
            args.join(" "),
            tail(&read(&out), 4000),
            tail(&read(&err), 4000)
        );
    };
    Finished {
        status,
        stdout: read(&out),
        stderr: read(&err),
        took,
    }
}

/// `p` as a command-line argument.
///
/// # Panics
/// When the path is not UTF-8 (the scratch directories always are).
pub fn path_arg(p: &Path) -> &str {
    p.to_str()
        .unwrap_or_else(|| panic!("non-UTF-8 path {}", p.display()))
}

/// Buffer `buf` of UDF `udf` in `results`; panics naming both when there is none.
pub fn result_buffer<'a>(results: &'a [UdfResults], udf: &str, buf: &str) -> &'a ResultBuffer {
    results
        .iter()
        .find(|r| r.udf == udf)
        .and_then(|r| r.buffer(buf))
        .unwrap_or_else(|| panic!("no result {udf}/{buf}"))
}

/// The values of buffer `buf` of UDF `udf` in `results`; panics naming both when there is
/// none.
pub fn buffer<'a>(results: &'a [UdfResults], udf: &str, buf: &str) -> &'a [f64] {
    &result_buffer(results, udf, buf).data
}
