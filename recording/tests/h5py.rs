//! Opens a recording with h5py (what most of our users will do) and checks shapes, dtypes,
//! pixels, the validity map and counts, attributes and the metadata JSON.
//!
//! The Python environment is a virtualenv under the target directory
//! (`<target>/py-h5py`), created on first use with `python3 -m venv` and
//! `pip install h5py numpy`, then reused. If it cannot be created the test FAILS, saying
//! why: an h5py check that silently passes would hide the one reader that matters most.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use stemflow_core::DType;
use stemflow_core::sink::TileSink;
use stemflow_recording::{Hdf5Recorder, RecordingSpec};

/// The target directory: `$CARGO_TARGET_DIR`, else three levels above this executable
/// (`<target>/<profile>/deps/<test>`).
fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .nth(3)
        .expect("target directory above the test executable")
        .to_path_buf()
}

/// Runs `cmd` to completion, at most `limit`; kills it and fails past that.
fn run(cmd: &mut Command, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().expect("wait for child").is_some() {
            return child.wait_with_output().expect("child output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn has_h5py(python: &Path) -> bool {
    python.exists()
        && run(
            Command::new(python).args(["-c", "import h5py, numpy"]),
            Duration::from_secs(60),
        )
        .status
        .success()
}

/// The venv's python with h5py and numpy, creating the venv if needed.
fn python_with_h5py() -> PathBuf {
    let venv = target_dir().join("py-h5py");
    let python = venv.join("bin").join("python");
    if has_h5py(&python) {
        return python;
    }
    let out = run(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "FAILED to create the h5py test environment: `python3 -m venv {}` failed:\n{}",
        venv.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        Command::new(venv.join("bin").join("pip")).args(["install", "--quiet", "h5py", "numpy"]),
        Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "FAILED to install h5py and numpy into {} (network or PyPI unavailable?); this test \
         needs them and does not pass without them:\n{}{}",
        venv.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        has_h5py(&python),
        "h5py installed into {} but does not import",
        venv.display()
    );
    python
}

const SCRIPT: &str = r#"
import json, sys
import h5py, numpy as np

path = sys.argv[1]
nav, sig = (5, 7), (6, 4)
lost, damaged = {9, 10}, 20
with h5py.File(path, "r") as f:
    assert f["/entry"].attrs["recording_complete"] == 1
    assert f["/entry"].attrs["NX_class"] == "NXentry" and f.attrs["default"] == "entry"
    frames = f["/entry/data/frames"]
    assert frames.shape == nav + sig, frames.shape
    assert frames.dtype == np.uint16, frames.dtype
    assert frames.chunks[2:] == sig, frames.chunks
    i = np.arange(sig[0] * sig[1]).reshape(sig)
    for y in range(nav[0]):
        for x in range(nav[1]):
            n = y * nav[1] + x
            want = np.zeros(sig, np.uint16) if n in lost or n == damaged else ((n * 1009 + i * 7 + 1) % 65536).astype(np.uint16)
            got = frames[y, x]
            assert got.shape == sig and np.array_equal(got, want), (y, x, got, want)
    # A slice across scan rows.
    assert frames[1:3, 2, 0, 0].tolist() == [0, 16 * 1009 + 1]  # frame 9 lost, frame 16

    v = f["/entry/data/validity"]
    assert v.shape == nav and v.dtype == np.uint8
    codes = v[()].ravel()
    assert codes[9] == 0 and codes[10] == 0 and codes[20] == 2 and codes[0] == 1
    a = v.attrs
    assert (a["frames_expected"], a["frames_received"], a["frames_lost"], a["frames_damaged"]) == (35, 32, 2, 1), dict(a)
    assert (codes == 1).sum() == 32 and (codes == 0).sum() == 2 and (codes == 2).sum() == 1
    assert "damaged" in a["codes"]

    ix = f["/entry/results/sum_sig/intensity"]
    assert ix.dtype == np.float64 and ix.shape == nav
    assert ix.attrs["kind"] == "nav" and ix.attrs["unit"] == "counts"
    assert np.isnan(ix[1, 2]) and ix[0, 3] == 1.5
    assert f["/entry/results/com/x"].attrs["unit"] == "pixels"
    assert f["/entry/results/sum/frame_sum"].shape == sig
    assert f["/entry/results/sum/frame_sum"].dtype == np.uint64
    hits = f["/entry/results/sum_sig/hits"]
    assert hits.dtype == np.uint16 and hits.attrs["_FillValue"] == 65535
    assert hits[1, 2] == 65535 and hits[0, 3] == 6

    md = json.loads(f["/entry/run_metadata_json"].asstr()[()])
    assert md["detector"].startswith("merlin") and md["microscope"]["high_tension_v"] == 200000.0
    assert md["nav_shape"] == {"rows": 5, "cols": 7}
    rr = json.loads(f["/entry/run_record_json"].asstr()[()])
    assert rr["frames_lost"] == 2
    assert f["/entry/start_time"].asstr()[()] == "2025-01-01T00:00:00Z"
    assert f["/entry/software_version"].asstr()[()] != ""
    ht = f["/entry/instrument/microscope/high_tension"]
    assert ht[()] == 200000.0 and ht.attrs["units"] == "V"
    assert f["/entry/instrument/scan/dwell_time"].attrs["units"] == "s"
    assert f["/entry/instrument/detector/header"].asstr()[()].startswith("HDR,")
    assert f["/entry/instrument/detector/settings"].attrs["COUNTERDEPTH"] == "12"
print("h5py OK")
"#;

const LIVE_SCRIPT: &str = r#"
import sys
import h5py
with h5py.File(sys.argv[1], "r") as f:
    assert f["/entry"].attrs["recording_complete"] == 0
    assert f["/entry/data/validity"][1, 4] == 1
    assert f["/entry/data/frames"][1, 4, 0, 0] == 11 * 1009 + 1
"#;

/// h5py reads `frames[y, x]`, the validity codes and counts, results and metadata.
#[test]
fn h5py_reads_the_recording() {
    let python = python_with_h5py();
    let path = scratch("h5py");
    let mut spec = RecordingSpec::new(NAV, SIG, DType::U16);
    spec.frames_per_chunk = 4;
    let mut rec = Hdf5Recorder::create(&path, spec).unwrap();
    for &(first, n) in &TILES {
        rec.write_tile(&tile(first, n, DType::U16)).unwrap();
    }
    // A recording in progress: h5py can open it and read the frames flushed so far.
    rec.flush().unwrap();
    let out = run(
        Command::new(&python).args(["-c", LIVE_SCRIPT]).arg(&path),
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "h5py could not read the recording in progress:\n{text}"
    );

    rec.finish(
        &results(),
        &validity(),
        &metadata(DType::U16),
        Some(&run_record()),
    )
    .unwrap();

    let out = run(
        Command::new(&python).args(["-c", SCRIPT]).arg(&path),
        Duration::from_secs(60),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("h5py OK"),
        "h5py check failed:\n{text}"
    );
    std::fs::remove_file(&path).unwrap();
}
