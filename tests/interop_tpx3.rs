//! ASI TPX3 interoperability with LiberTEM-live, the peer implementation (protocols.md §3,
//! §4.3), on the shared stream capture `../shared/data/tpx3/synthetic_16x16_512.tpx`
//! (LiberTEM's serializer) and its CSR reference `.npz`:
//!
//! - `stemflow acquire --detector tpx3 --mode passive` reading LiberTEM-live's simulator
//!   `libertem-live-asi-tpx-sim` serving the capture: per-frame sums, the summed frame and
//!   the recorded CSR rows equal the reference exactly (`tests/interop/tpx3_compare.py`);
//! - LiberTEM-live's TPX3 client (`tests/interop/libertem_tpx3_client.py`) reading
//!   stemflow's simulator (`stemflow sim tpx3`) serving the same capture: its per-frame sums
//!   and summed frame equal the reference.
//!
//! LiberTEM-live comes from PyPI into a venv under the target directory (`common::pyenv`).
//! Everything binds 127.0.0.1, every wait has a deadline, every child is killed on drop.

mod common;

use common::command::{path_arg, stemflow};
use common::process::ChildGuard;
use common::pyenv;
use common::scratch::{ScratchDir, shared_data, tail};
use serde_json::Value;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Starting LiberTEM's simulator (Python imports, caching the file).
const SIM_START_TIMEOUT: Duration = Duration::from_secs(90);

fn capture() -> PathBuf {
    shared_data().join("tpx3/synthetic_16x16_512.tpx")
}

fn reference() -> PathBuf {
    shared_data().join("tpx3/synthetic_16x16_512.npz")
}

fn interop_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(name)
}

/// A free loopback port (LiberTEM's simulator takes a port number, not 0).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Waits until `port` accepts a connection on loopback, or `timeout`.
fn wait_listening(port: u16, timeout: Duration, child: &mut ChildGuard) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if child.try_status().is_some() {
            return false;
        }
        // A probe connection: the simulator streams to it and notices the close.
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// `libertem-live-asi-tpx-sim` serving `source` (the capture path, or `--mock-nav-shape`
/// arguments) on a free loopback port, listening; killed on drop (field order: the process
/// first, then its log reader).
struct LibertemTpxSim {
    _child: ChildGuard,
    _log: common::process::LogTap,
    port: u16,
}

impl LibertemTpxSim {
    fn start(py: &pyenv::PyEnv, source: &[&std::ffi::OsStr]) -> Self {
        let port = free_port();
        let mut cmd = py.command(&py.bin("libertem-live-asi-tpx-sim"));
        cmd.args(["--port", &port.to_string(), "--cached", "MEM"])
            // A pause between passes: the receiver takes the first scan. (Short: the probe
            // connection of `wait_listening` holds the simulator's one server thread until
            // a send to it fails.)
            .args(["--sleep", "1"])
            .args(source)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = ChildGuard::spawn("libertem-live-asi-tpx-sim", &mut cmd);
        let log = child.tap_stderr();
        assert!(
            wait_listening(port, SIM_START_TIMEOUT, &mut child),
            "LiberTEM's TPX3 simulator did not listen on {port}:\n{}",
            tail(&log.text(), 3000)
        );
        Self {
            _child: child,
            _log: log,
            port,
        }
    }
}

/// `stemflow acquire --detector tpx3 --mode passive` from the data port `port` into a new
/// scratch folder (kept while the returned guard lives); the run's output folder.
fn passive_acquire(port: u16, tag: &str) -> (ScratchDir, PathBuf) {
    let scratch = ScratchDir::new(tag);
    let out = scratch.path().join("run");
    let r = stemflow(
        &[
            "acquire",
            "--detector",
            "tpx3",
            "--mode",
            "passive",
            "--host",
            "127.0.0.1",
            "--data-port",
            &port.to_string(),
            "--arm-timeout-s",
            "30",
            "--out",
            path_arg(&out),
        ],
        scratch.path(),
        "acquire",
    );
    r.assert_success("stemflow acquire --detector tpx3 --mode passive");
    (scratch, out)
}

#[test]
fn stemflow_reads_libertems_simulator_and_matches_the_reference() {
    let py = pyenv::libertem_live();
    let sim = LibertemTpxSim::start(&py, &[capture().as_os_str()]);
    let (_scratch, out) = passive_acquire(sim.port, "interop-tpx3");
    let run: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("run.json")).expect("run.json written"),
    )
    .expect("run.json parses");
    assert_eq!(run["frames_expected"], 256, "{run:#}");
    assert_eq!(run["frames_received"], 256, "{run:#}");
    assert_eq!(run["frames_lost"], 0, "{run:#}");
    let cmp = py
        .command(&py.python())
        .arg(interop_script("tpx3_compare.py"))
        .arg(reference())
        .arg(out.join("recording.hspy"))
        .output()
        .expect("the comparison runs");
    let text = String::from_utf8_lossy(&cmp.stdout);
    assert!(
        cmp.status.success(),
        "stemflow's results differ from the reference: {text}\n{}",
        String::from_utf8_lossy(&cmp.stderr)
    );
    let v: Value = serde_json::from_str(text.trim()).expect("comparison JSON");
    assert_eq!(v["csr_equal"], true, "{v}");
    assert_eq!(v["raw_csr_equal"], true, "LiberTEM's raw_csr reader: {v}");
    assert_eq!(v["total"], 104_619.0, "{v}");
    drop(sim);
}

#[test]
fn libertems_client_reads_stemflows_simulator_and_matches_the_reference() {
    let py = pyenv::libertem_live();
    let scratch = ScratchDir::new("interop-tpx3-client");
    // stemflow's simulator serving the capture to every client, repeatedly.
    let (mut cmd, stdout, _) = common::command::command(
        &[
            "sim",
            "tpx3",
            "--recording",
            path_arg(&capture()),
            "--api-port",
            "0",
            "--data-port",
            "0",
            "--duration-s",
            "300",
        ],
        scratch.path(),
        "sim",
    );
    let mut sim = ChildGuard::spawn("stemflow sim tpx3", &mut cmd);
    let deadline = Instant::now() + Duration::from_secs(30);
    let port = loop {
        let text = std::fs::read_to_string(&stdout).unwrap_or_default();
        if let Some(p) = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix("data_port="))
            .and_then(|p| p.parse::<u16>().ok())
        {
            break p;
        }
        assert!(
            Instant::now() < deadline && sim.try_status().is_none(),
            "stemflow sim tpx3 did not report its port: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = scratch.path().join("libertem.json");
    let mut client_cmd = py.command(&py.python());
    client_cmd
        .arg(interop_script("libertem_tpx3_client.py"))
        .args(["--port", &port.to_string(), "--timeout", "150", "--out"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut client = ChildGuard::spawn("libertem_tpx3_client.py", &mut client_cmd);
    let client_log = client.tap_stderr();
    let status = client.wait_timeout(Duration::from_secs(200));
    assert!(
        status.is_some_and(|s| s.success()),
        "LiberTEM-live's client failed ({status:?}):\n{}",
        tail(&client_log.text(), 4000)
    );
    let got: Value = serde_json::from_str(&std::fs::read_to_string(&out).expect("client output"))
        .expect("client JSON");
    assert!(
        got.get("error").is_none(),
        "LiberTEM-live raised: {got}\n{}",
        tail(&client_log.text(), 4000)
    );
    let want = py
        .command(&py.python())
        .arg(interop_script("tpx3_reference.py"))
        .arg(reference())
        .output()
        .expect("the reference script runs");
    let want: Value = serde_json::from_slice(&want.stdout).expect("reference JSON");
    assert_eq!(got["nav_shape"], serde_json::json!([16, 16]));
    assert_eq!(got["sig_shape"], serde_json::json!([512, 512]));
    assert_eq!(got["sum_total"], 104_619.0);
    assert_eq!(got["frame_sums"], want["frame_sums"], "per-frame sums");
    assert_eq!(got["sum_nonzero"], want["sum_nonzero"], "the summed frame");
    drop(sim);
}

/// An unseen stream, made by LiberTEM's own serializer: its simulator's mock acquisition
/// (`--mock-nav-shape 32 32`: one chunk of all 1024 frames, frame `i` holding the value `i`
/// at pixel `i`). stemflow's per-frame sums and summed frame must be exactly that.
#[test]
fn stemflow_reads_libertems_mock_stream_exactly() {
    let py = pyenv::libertem_live();
    let args = ["--mock-nav-shape", "32", "32"].map(std::ffi::OsStr::new);
    let sim = LibertemTpxSim::start(&py, &args);
    let (_scratch, out) = passive_acquire(sim.port, "interop-tpx3-mock");
    let h5 = out.join("recording.hspy");
    let file = hdf5::File::open(&h5).expect("the recording opens");
    let sums = file
        .dataset("/entry/results/sum_sig/intensity")
        .and_then(|d| d.read_raw::<f64>())
        .expect("per-frame sums");
    let want: Vec<f64> = (0..1024).map(f64::from).collect();
    assert_eq!(sums, want, "frame i sums to i");
    let total = file
        .dataset("/entry/results/sum/intensity")
        .and_then(|d| d.read_raw::<f64>())
        .expect("summed frame");
    assert!(
        total[..1024]
            .iter()
            .enumerate()
            .all(|(i, &v)| v == i as f64)
    );
    assert!(total[1024..].iter().all(|&v| v == 0.0));
    drop(sim);
}
