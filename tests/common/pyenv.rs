//! A Python virtual environment with pinned PyPI packages, created once per cargo target
//! directory (`<target>/py-<name>`) and reused by every later test run.
//!
//! Safe when several tests (threads of one test binary, or several test binaries) ask for it
//! at once: a mutex serialises the threads of a process, and a lock directory
//! (`<target>/py-<name>.lock`, created atomically, holding the owner's pid) serialises
//! processes; a lock whose owner has died is taken over. A venv counts as ready only once a
//! marker file with the exact requirements has been written after a successful install and
//! import check, so an interrupted install is redone, and changing the pins rebuilds it.
//!
//! If the environment cannot be made (no `python3` with `venv`, PyPI unreachable, a package
//! that does not install) the asking test panics with pip's output: the interoperability
//! tests must fail, not pass or skip silently.

use super::process::ChildGuard;
use super::scratch::{tail, target_dir};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// LiberTEM-live as pinned for the interoperability tests (protocols.md §4.5 describes this
/// release's simulators and clients), with the `sim` extra its DECTRIS simulator needs.
pub const LIBERTEM_LIVE: &str = "libertem-live[sim]==0.3.0";

/// Environment variable naming an existing virtual environment to use instead of building one
/// (it must already contain [`LIBERTEM_LIVE`]; nothing is installed into it).
pub const LIBERTEM_VENV_VAR: &str = "STEMFLOW_LIBERTEM_VENV";

/// Environment variable naming the Python interpreter that creates venvs (default `python3`).
pub const PYTHON_VAR: &str = "STEMFLOW_PYTHON";

/// Limits of the set-up steps, s. pip takes about 40 s for LiberTEM-live on a warm network.
const VENV_TIMEOUT: Duration = Duration::from_secs(120);
const PIP_TIMEOUT: Duration = Duration::from_secs(900);
const CHECK_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a test waits for another process that is building the same venv.
const LOCK_TIMEOUT: Duration = Duration::from_secs(1200);

/// A ready virtual environment.
#[derive(Clone, Debug)]
pub struct PyEnv {
    dir: PathBuf,
}

impl PyEnv {
    /// The venv directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The venv's interpreter.
    pub fn python(&self) -> PathBuf {
        self.bin("python")
    }

    /// A console script installed in the venv (e.g. `libertem-live-mib-sim`).
    pub fn bin(&self, name: &str) -> PathBuf {
        if cfg!(windows) {
            self.dir.join("Scripts").join(format!("{name}.exe"))
        } else {
            self.dir.join("bin").join(name)
        }
    }

    /// A command running the venv's interpreter with a small thread budget (the CI machine has
    /// two cores that the simulators and the receivers share).
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.env("PYTHONUNBUFFERED", "1")
            .env("OMP_NUM_THREADS", "1")
            .env("OPENBLAS_NUM_THREADS", "1")
            .env("MKL_NUM_THREADS", "1")
            .env("NUMBA_NUM_THREADS", "1")
            .env_remove("PYTHONDONTWRITEBYTECODE")
            .env_remove("PYTHONPATH")
            .env_remove("PYTHONHOME");
        c
    }
}

/// The LiberTEM-live environment: [`LIBERTEM_LIVE`] in `<target>/py-libertem`, or the venv
/// named by [`LIBERTEM_VENV_VAR`].
///
/// # Panics
/// When the environment cannot be made, with the reason and the installer's output.
pub fn libertem_live() -> PyEnv {
    const CHECK: &str = "import libertem_live, libertem_qd_mpx, libertem_dectris, flask, \
                         libertem_live.detectors.merlin.sim, libertem_live.detectors.dectris.sim";
    if let Some(dir) = std::env::var_os(LIBERTEM_VENV_VAR) {
        let env = PyEnv { dir: dir.into() };
        if let Err(problem) = run_logged(
            env.command(&env.python()).args(["-c", CHECK]),
            CHECK_TIMEOUT,
            None,
        ) {
            panic!(
                "{LIBERTEM_VENV_VAR}={} does not provide LiberTEM-live ({problem}); unset it to \
                 let the tests install {LIBERTEM_LIVE} themselves",
                env.dir.display()
            );
        }
        return env;
    }
    ensure("libertem", &[LIBERTEM_LIVE], CHECK)
}

/// Makes (once) and returns the venv `<target>/py-<name>` with `requirements` installed by
/// pip, checked by running `check` (Python source) in it. A failure is remembered for the
/// rest of the test process, so the other tests that need the venv fail at once with the same
/// message instead of retrying the install.
///
/// # Panics
/// When the environment cannot be made, with the reason and the installer's output.
pub fn ensure(name: &str, requirements: &[&str], check: &str) -> PyEnv {
    static IN_PROCESS: Mutex<Vec<(String, Result<PyEnv, String>)>> = Mutex::new(Vec::new());
    // Held through the build: threads of this process wait for the first one's outcome.
    let mut known = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
    let key = format!("{name}\n{}", requirements.join("\n"));
    let outcome = match known.iter().find(|(k, _)| *k == key) {
        Some((_, outcome)) => outcome.clone(),
        None => {
            let outcome = build(name, requirements, check);
            known.push((key, outcome.clone()));
            outcome
        }
    };
    drop(known);
    outcome.unwrap_or_else(|problem| panic!("{problem}"))
}

/// [`ensure`] without the in-process memory.
fn build(name: &str, requirements: &[&str], check: &str) -> Result<PyEnv, String> {
    let target = target_dir();
    let env = PyEnv {
        dir: target.join(format!("py-{name}")),
    };
    let marker = env.dir.join(".stemflow-requirements");
    let wanted = requirements.join("\n");
    let ready = || fs::read_to_string(&marker).is_ok_and(|m| m == wanted) && env.python().exists();
    if ready() {
        return Ok(env);
    }

    let _lock = DirLock::acquire(&target.join(format!("py-{name}.lock")), LOCK_TIMEOUT);
    if ready() {
        return Ok(env); // built by another process while we waited
    }
    let log = target.join(format!("py-{name}.install.log"));
    let fail = |step: &str, problem: String| {
        format!(
            "cannot prepare the Python environment {} for {}: {step} failed: {problem}\n\
             (needs `python3` with the venv module and access to PyPI; set {PYTHON_VAR} to choose \
             the interpreter, or {LIBERTEM_VENV_VAR} to use an existing venv; full log: {})",
            env.dir.display(),
            requirements.join(" "),
            log.display()
        )
    };
    if env.dir.exists() {
        fs::remove_dir_all(&env.dir)
            .map_err(|e| fail("removing an incomplete venv", e.to_string()))?;
    }
    let python = std::env::var_os(PYTHON_VAR).unwrap_or_else(|| "python3".into());
    let mut venv = Command::new(&python);
    venv.arg("-m").arg("venv").arg(&env.dir);
    run_logged(&mut venv, VENV_TIMEOUT, Some(&log))
        .map_err(|p| fail(&format!("`{} -m venv`", python.to_string_lossy()), p))?;
    let mut pip = env.command(&env.python());
    pip.args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
    ])
    .args(requirements);
    run_logged(&mut pip, PIP_TIMEOUT, Some(&log)).map_err(|p| fail("`pip install`", p))?;
    run_logged(
        env.command(&env.python()).args(["-c", check]),
        CHECK_TIMEOUT,
        Some(&log),
    )
    .map_err(|p| fail(&format!("the import check `{check}`"), p))?;
    fs::write(&marker, &wanted).map_err(|e| fail("writing the ready marker", e.to_string()))?;
    Ok(env)
}

/// Runs `cmd` to completion within `timeout`, stdout and stderr appended to `log` (or a
/// scratch file). Err: what went wrong, with the end of the output.
fn run_logged(cmd: &mut Command, timeout: Duration, log: Option<&Path>) -> Result<(), String> {
    let scratch = super::scratch::ScratchDir::new("pyenv-run");
    let log = log.map_or_else(|| scratch.path().join("output.log"), Path::to_path_buf);
    let log = log.as_path();
    let open = || {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("cannot open log {}: {e}", log.display()))
    };
    let before = fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    let out: File = open()?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    cmd.stdout(Stdio::from(out)).stderr(Stdio::from(err));
    let mut child = ChildGuard::spawn("python set-up", cmd);
    let t0 = Instant::now();
    let status = child.wait_timeout(timeout);
    let output = fs::read(log)
        .map(|b| String::from_utf8_lossy(&b[(before as usize).min(b.len())..]).into_owned())
        .unwrap_or_default();
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(format!(
            "{cmd:?} exited with {s}; output ends:\n{}",
            tail(&output, 4000)
        )),
        None => Err(format!(
            "{cmd:?} did not finish within {:.0} s; output ends:\n{}",
            t0.elapsed().as_secs_f64(),
            tail(&output, 4000)
        )),
    }
}

/// A lock held by owning a directory (creation is atomic); removed on drop.
struct DirLock {
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock, waiting at most `timeout`; takes over a lock whose owner is dead.
    ///
    /// # Panics
    /// When the lock cannot be had within `timeout`.
    fn acquire(path: &Path, timeout: Duration) -> Self {
        let deadline = Instant::now() + timeout;
        if let Some(parent) = path.parent() {
            let _ = fs::create_dir_all(parent);
        }
        loop {
            match fs::create_dir(path) {
                Ok(()) => {
                    let _ = fs::write(path.join("pid"), std::process::id().to_string());
                    return Self {
                        path: path.to_path_buf(),
                    };
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = fs::read_to_string(path.join("pid"))
                        .ok()
                        .and_then(|p| p.trim().parse::<u32>().ok());
                    let age = fs::metadata(path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .unwrap_or_default();
                    // No pid yet: the owner is between create_dir and write; give it a moment.
                    let dead = match owner {
                        Some(pid) => !process_alive(pid),
                        None => age > Duration::from_secs(10),
                    };
                    if dead {
                        let _ = fs::remove_dir_all(path);
                        continue;
                    }
                }
                Err(e) => panic!("cannot create lock directory {}: {e}", path.display()),
            }
            if Instant::now() >= deadline {
                panic!(
                    "waited {:.0} s for another test process to finish building the Python \
                     environment (lock {}); remove the lock if no test is running",
                    timeout.as_secs_f64(),
                    path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Whether a process with this pid exists.
fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = i32::try_from(pid) else {
            return false;
        };
        // SAFETY: signal 0 only checks that the process exists and may be signalled.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}
