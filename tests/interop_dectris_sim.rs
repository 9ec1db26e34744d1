//! DECTRIS interoperability with LiberTEM-live, the peer implementation (protocols.md §2,
//! §4.2, §4.5): LiberTEM-live's DECTRIS client (`libertem-live==0.3.0`: its `DEigerClient`
//! REST calls and the `libertem_dectris` ZeroMQ receiver, in active mode) receives series
//! from stemflow's [`DectrisSim`] replaying the reference capture
//! `../shared/data/dectris/stream-v1/synthetic_16x16_256_u16.dump`, and its per-frame sums
//! must equal those of the decoded reference `synthetic_16x16_256_u16.npy` (total
//! 34 446 517), which this test reads itself.
//!
//! The Python client is embedded below ([`CLIENT`]) and written to a scratch directory. It
//! opens a connection (`make_connection('dectris').open(...)`), takes the active controller
//! in `ints` mode (LiberTEM sets `ntrigger = 1`, `nimages = 256`), and its
//! `on_ready_for_data` hook sends the software `trigger`; it runs two acquisitions in one
//! process, so the second series (id 35) must be found after the first (id 34).
//!
//! LiberTEM-live comes from PyPI into a venv under the target directory (`common::pyenv`);
//! without it the test fails. Everything binds 127.0.0.1 with ephemeral ports, and the Python
//! process is killed when its guard drops.

mod common;

use common::process::ChildGuard;
use common::pyenv;
use common::scratch::{ScratchDir, shared_data, tail};
use serde_json::Value;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use stemflow_simulators::dectris::{DectrisSim, DectrisSimConfig, DectrisSource, Pacing};

/// LiberTEM-live's whole client run (its own watchdog), and ours on top.
const CLIENT_TIMEOUT_S: u64 = 180;
const CLIENT_KILL_AFTER: Duration = Duration::from_secs(CLIENT_TIMEOUT_S + 30);
/// Acquisitions in the one Python run.
const ACQUISITIONS: usize = 2;

/// The LiberTEM-live client: writes `{"series": [...], "sums": [[...], ...], "shape": ...}`
/// to `--out`. The whole run is bounded by `--timeout` seconds (faulthandler dumps every
/// thread's stack and exits 1).
const CLIENT: &str = r#"
import argparse, faulthandler, json, sys, time, traceback
import numpy as np
from libertem.executor.pipelined import PipelinedExecutor
from libertem.udf.sumsigudf import SumSigUDF
from libertem_live.api import Hooks, LiveContext
from libertem_live.detectors.dectris.DEigerClient import DEigerClient

class SoftTrigger(Hooks):
    def __init__(self, host, port):
        self.host, self.port = host, port
    def on_ready_for_data(self, env):
        DEigerClient(self.host, port=self.port).sendDetectorCommand("trigger")

def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--api-port", type=int, required=True)
    p.add_argument("--data-port", type=int, required=True)
    p.add_argument("--acquisitions", type=int, default=1)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    faulthandler.dump_traceback_later(a.timeout, exit=True)
    executor = PipelinedExecutor(
        spec=PipelinedExecutor.make_spec(cpus=1, cudas=0), pin_workers=False,
    )
    ctx = LiveContext(executor=executor, plot_class=None)
    out = {"series": [], "sums": [], "seconds": []}
    try:
        conn = ctx.make_connection("dectris").open(
            api_host=a.host, api_port=a.api_port, data_host=a.host, data_port=a.data_port,
            buffer_size=256,
        )
        try:
            for _ in range(a.acquisitions):
                t0 = time.monotonic()
                controller = conn.get_active_controller(trigger_mode="ints")
                aq = ctx.make_acquisition(
                    conn=conn, nav_shape=(16, 16), controller=controller,
                    hooks=SoftTrigger(a.host, a.api_port),
                )
                res = ctx.run_udf(dataset=aq, udf=SumSigUDF())
                out["sums"].append([int(v) for v in np.asarray(res["intensity"].data).ravel()])
                out["series"].append(int(aq._acq_state.sequence_id))
                out["shape"] = [int(x) for x in aq.shape]
                out["dtype"] = np.dtype(aq.dtype).name
                out["seconds"].append(time.monotonic() - t0)
        finally:
            conn.close()
    except Exception as e:
        traceback.print_exc()
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        ctx.close()
    with open(a.out, "w") as f:
        json.dump(out, f)
    faulthandler.cancel_dump_traceback_later()
    return 0

if __name__ == "__main__":
    sys.exit(main())
"#;

/// Per-frame sums of the reference `.npy` (uint16 little-endian, C order, shape
/// (16, 16, 256, 256)), parsed here from the NPY v1/v2 header.
fn reference_sums() -> Vec<u64> {
    let path = shared_data().join("dectris/stream-v1/synthetic_16x16_256_u16.npy");
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &data[..6],
        b"\x93NUMPY",
        "{} is not an NPY file",
        path.display()
    );
    let (len, start) = match data[6] {
        1 => (u16::from_le_bytes([data[8], data[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([data[8], data[9], data[10], data[11]]) as usize,
            12,
        ),
    };
    let header = String::from_utf8_lossy(&data[start..start + len]).into_owned();
    assert!(header.contains("'<u2'"), "expected uint16 LE: {header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    assert!(header.contains("(16, 16, 256, 256)"), "{header}");
    let pixels = &data[start + len..];
    assert_eq!(pixels.len(), 256 * 256 * 256 * 2);
    pixels
        .chunks_exact(256 * 256 * 2)
        .map(|f| {
            f.chunks_exact(2)
                .map(|p| u64::from(u16::from_le_bytes([p[0], p[1]])))
                .sum()
        })
        .collect()
}

#[test]
fn libertem_live_receives_the_replayed_capture() {
    let expected = reference_sums();
    assert_eq!(expected.iter().sum::<u64>(), 34_446_517, "reference total");
    let py = pyenv::libertem_live();

    let mut cfg = DectrisSimConfig::new(DectrisSource::Capture {
        path: shared_data().join("dectris/stream-v1/synthetic_16x16_256_u16.dump"),
    });
    cfg.pacing = Pacing::AsFastAsPossible;
    let sim = DectrisSim::start(cfg).expect("start the DECTRIS simulator");

    let dir = ScratchDir::new("libertem-dectris-client");
    let script = dir.path().join("libertem_dectris_client.py");
    std::fs::write(&script, CLIENT).expect("write the client script");
    let out = dir.path().join("result.json");
    let (stdout, stderr) = (dir.path().join("stdout.log"), dir.path().join("stderr.log"));
    let file =
        |p: &Path| std::fs::File::create(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut cmd = py.command(&py.python());
    cmd.arg(&script)
        .args(["--host", "127.0.0.1", "--api-port"])
        .arg(sim.api_addr().port().to_string())
        .arg("--data-port")
        .arg(sim.stream_addr().port().to_string())
        .arg("--acquisitions")
        .arg(ACQUISITIONS.to_string())
        .arg("--timeout")
        .arg(CLIENT_TIMEOUT_S.to_string())
        .arg("--out")
        .arg(&out)
        .current_dir(dir.path())
        .stdout(Stdio::from(file(&stdout)))
        .stderr(Stdio::from(file(&stderr)));
    let mut client = ChildGuard::spawn("LiberTEM-live DECTRIS client", &mut cmd);
    let status = client.wait_timeout(CLIENT_KILL_AFTER);
    let logs = || {
        format!(
            "client stderr ends:\n{}\nclient stdout ends:\n{}",
            tail(&std::fs::read_to_string(&stderr).unwrap_or_default(), 8000),
            tail(&std::fs::read_to_string(&stdout).unwrap_or_default(), 2000)
        )
    };
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("LiberTEM-live client exited with {s}\n{}", logs()),
        None => panic!(
            "LiberTEM-live client still running after {CLIENT_KILL_AFTER:?}\n{}",
            logs()
        ),
    }
    drop(client);
    let text = std::fs::read_to_string(&out)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", out.display(), logs()));
    let r: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    if let Some(e) = r.get("error") {
        panic!("LiberTEM-live raised {e}\n{}", logs());
    }
    assert_eq!(r["shape"], serde_json::json!([16, 16, 256, 256]));
    assert_eq!(r["dtype"], "uint16");
    assert_eq!(
        r["series"],
        serde_json::json!([34, 35]),
        "series ids per arm"
    );
    let sums = r["sums"].as_array().expect("sums");
    assert_eq!(sums.len(), ACQUISITIONS);
    for (i, s) in sums.iter().enumerate() {
        let got: Vec<u64> = s
            .as_array()
            .expect("a list of sums")
            .iter()
            .map(|v| v.as_u64().expect("integer sum"))
            .collect();
        assert_eq!(got.len(), 256, "acquisition {i}: frames");
        let bad: Vec<usize> = (0..256).filter(|&k| got[k] != expected[k]).collect();
        assert!(
            bad.is_empty(),
            "acquisition {i}: {} frames differ, first {:?}: got {} want {}",
            bad.len(),
            bad.first(),
            got[bad[0]],
            expected[bad[0]]
        );
        assert_eq!(got.iter().sum::<u64>(), 34_446_517);
    }
    let st = sim.stats();
    assert_eq!(st.series, ACQUISITIONS as u64);
    assert_eq!(st.frames_sent, 256 * ACQUISITIONS as u64);
}
