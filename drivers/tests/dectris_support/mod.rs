//! Shared by the DECTRIS integration tests: the shared test data, a `.npy` reader, a small
//! xorshift generator, and a Python virtual environment with the reference C bitshuffle
//! library (PyPI `bitshuffle`, `hdf5plugin`, `h5py`) created once under the cargo target
//! directory (the pattern of the workspace's `tests/common/pyenv.rs`, which member crates
//! cannot `mod`). If the environment cannot be made, the asking test fails with pip's output.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Pinned reference packages (the versions the tests were written against).
pub const REQUIREMENTS: &[&str] = &[
    "numpy==2.4.6",
    "h5py==3.16.0",
    "hdf5plugin==7.1.0",
    "bitshuffle==0.5.2",
];
const CHECK: &str = "import numpy, h5py, hdf5plugin, bitshuffle";
const VENV_TIMEOUT: Duration = Duration::from_secs(120);
const PIP_TIMEOUT: Duration = Duration::from_secs(900);
const LOCK_TIMEOUT: Duration = Duration::from_secs(1200);
/// Limit for one reference script run, s.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// `shared/data/dectris/<rel>` beside the workspace root.
pub fn data(rel: &str) -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/dectris"
    ))
    .join(rel)
}

/// The cargo target directory (parent of `CARGO_TARGET_TMPDIR`).
pub fn target_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).to_path_buf()
}

/// A scratch directory under `CARGO_TARGET_TMPDIR`, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A fresh, empty directory named after `prefix`, the pid and a counter.
    pub fn new(prefix: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A little-endian unsigned `.npy` array: its shape and raw element bytes.
pub struct Npy {
    /// Shape, C order.
    pub shape: Vec<usize>,
    /// Bytes per element.
    pub elem_size: usize,
    /// The elements' bytes, C order, little-endian.
    pub data: Vec<u8>,
}

/// Reads a `.npy` file (format 1.0/2.0, `<u1`/`<u2`/`<u4`, C order).
pub fn read_npy(path: &Path) -> Npy {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "not a .npy file");
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + hlen]).unwrap();
    assert!(header.contains("'fortran_order': False"), "{header}");
    let descr = header.split("'descr':").nth(1).unwrap();
    let descr = descr.split('\'').nth(1).unwrap();
    let elem_size = match descr {
        "<u2" => 2,
        "<u4" => 4,
        "|u1" | "<u1" => 1,
        other => panic!("unsupported dtype {other}"),
    };
    let shape_txt = header.split("'shape':").nth(1).unwrap();
    let shape_txt = &shape_txt[shape_txt.find('(').unwrap() + 1..shape_txt.find(')').unwrap()];
    let shape: Vec<usize> = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let data = bytes[start + hlen..].to_vec();
    assert_eq!(data.len(), shape.iter().product::<usize>() * elem_size);
    Npy {
        shape,
        elem_size,
        data,
    }
}

/// A xorshift64* generator: reproducible test data without a dependency.
pub struct Rng(pub u64);

impl Rng {
    /// Next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Detector-like pixels: mostly small counts, some zeros, rare large values, `n` elements
/// of `e` bytes, little-endian.
pub fn pixels(rng: &mut Rng, n: usize, e: usize) -> Vec<u8> {
    let max = if e >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * e)) - 1
    };
    let mut out = Vec::with_capacity(n * e);
    for _ in 0..n {
        let r = rng.below(100);
        let v = match r {
            0..=49 => 0,
            50..=89 => rng.below(8),
            90..=98 => rng.below(300),
            _ => rng.next(),
        } & max;
        out.extend_from_slice(&v.to_le_bytes()[..e]);
    }
    out
}

/// A ready reference venv.
pub struct PyEnv {
    /// The venv directory.
    pub dir: PathBuf,
}

impl PyEnv {
    /// Runs `script` (Python source) with `args` in the venv, within [`SCRIPT_TIMEOUT`];
    /// panics with its output when it fails. Returns its stdout.
    pub fn run(&self, script: &str, args: &[&str]) -> String {
        let mut cmd = Command::new(self.dir.join("bin").join("python"));
        cmd.arg("-c")
            .arg(script)
            .args(args)
            .env("OMP_NUM_THREADS", "1")
            .env_remove("PYTHONPATH")
            .env_remove("PYTHONHOME");
        match run_logged(&mut cmd, SCRIPT_TIMEOUT) {
            Ok(out) => out,
            Err(problem) => panic!("reference script failed: {problem}"),
        }
    }
}

/// Makes (once per target directory) and returns the venv with [`REQUIREMENTS`].
///
/// # Panics
/// When it cannot be made, with pip's output.
pub fn pyenv() -> PyEnv {
    static ONCE: Mutex<Option<Result<PathBuf, String>>> = Mutex::new(None);
    let mut g = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    if g.is_none() {
        *g = Some(build());
    }
    match g.as_ref().unwrap() {
        Ok(dir) => PyEnv { dir: dir.clone() },
        Err(problem) => panic!("{problem}"),
    }
}

fn build() -> Result<PathBuf, String> {
    let target = target_dir();
    let dir = target.join("py-dectris-codec");
    let marker = dir.join(".stemflow-requirements");
    let wanted = REQUIREMENTS.join("\n");
    let ready = || fs::read_to_string(&marker).is_ok_and(|m| m == wanted);
    if ready() {
        return Ok(dir);
    }
    let _lock = DirLock::acquire(&target.join("py-dectris-codec.lock"))?;
    if ready() {
        return Ok(dir);
    }
    let fail = |step: &str, p: String| {
        format!(
            "cannot prepare the reference Python environment {} ({}): {step} failed: {p}",
            dir.display(),
            REQUIREMENTS.join(" ")
        )
    };
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(|e| fail("removing an old venv", e.to_string()))?;
    }
    let python = std::env::var_os("STEMFLOW_PYTHON").unwrap_or_else(|| "python3".into());
    run_logged(
        Command::new(&python).arg("-m").arg("venv").arg(&dir),
        VENV_TIMEOUT,
    )
    .map_err(|p| fail("python3 -m venv", p))?;
    run_logged(
        Command::new(dir.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
            ])
            .args(REQUIREMENTS),
        PIP_TIMEOUT,
    )
    .map_err(|p| fail("pip install", p))?;
    run_logged(
        Command::new(dir.join("bin/python")).args(["-c", CHECK]),
        VENV_TIMEOUT,
    )
    .map_err(|p| fail("the import check", p))?;
    fs::write(&marker, &wanted).map_err(|e| fail("writing the marker", e.to_string()))?;
    Ok(dir)
}

/// Runs `cmd` with a deadline; Ok(stdout) or Err(status and the end of the output).
fn run_logged(cmd: &mut Command, timeout: Duration) -> Result<String, String> {
    let scratch = Scratch::new("pyrun");
    let out_path = scratch.0.join("stdout");
    let err_path = scratch.0.join("stderr");
    let out = fs::File::create(&out_path).map_err(|e| e.to_string())?;
    let err = fs::File::create(&err_path).map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{cmd:?}: cannot start: {e}"))?;
    let t0 = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if t0.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e.to_string()),
        }
    };
    let stdout = fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    let tail = |s: &str| s[s.len().saturating_sub(4000)..].to_string();
    match status {
        Some(s) if s.success() => Ok(stdout),
        Some(s) => Err(format!(
            "{cmd:?} exited with {s}\nstdout ends:\n{}\nstderr ends:\n{}",
            tail(&stdout),
            tail(&stderr)
        )),
        None => Err(format!(
            "{cmd:?} did not finish within {} s\nstderr ends:\n{}",
            timeout.as_secs(),
            tail(&stderr)
        )),
    }
}

/// A lock held by owning a directory; removed on drop. A lock whose owner process is gone
/// (Linux: no `/proc/<pid>`) or that is older than the lock timeout is taken over.
struct DirLock(PathBuf);

impl DirLock {
    fn acquire(path: &Path) -> Result<Self, String> {
        let deadline = Instant::now() + LOCK_TIMEOUT;
        loop {
            match fs::create_dir(path) {
                Ok(()) => {
                    let _ = fs::write(path.join("pid"), std::process::id().to_string());
                    return Ok(Self(path.to_path_buf()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = fs::read_to_string(path.join("pid")).ok();
                    let age = fs::metadata(path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .unwrap_or_default();
                    let dead = match owner.and_then(|p| p.trim().parse::<u32>().ok()) {
                        Some(pid) if Path::new("/proc/self").exists() => {
                            !Path::new(&format!("/proc/{pid}")).exists()
                        }
                        Some(_) => age > LOCK_TIMEOUT,
                        None => age > Duration::from_secs(10),
                    };
                    if dead {
                        let _ = fs::remove_dir_all(path);
                        continue;
                    }
                }
                Err(e) => return Err(format!("cannot create lock {}: {e}", path.display())),
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "waited {} s for another test process building the venv (lock {})",
                    LOCK_TIMEOUT.as_secs(),
                    path.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
