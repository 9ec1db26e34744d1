//! Merlin interoperability with LiberTEM-live, the peer implementation (protocols.md §1, §4.1,
//! §4.5), on the real recordings in `../shared/data/merlin/Merlin_Single_Quad/`:
//!
//! - stemflow's Merlin driver ([`MerlinControl`] + [`MerlinReceiver`] + the decoder) against
//!   LiberTEM-live's simulator `libertem-live-mib-sim` (one test per recording);
//! - LiberTEM-live's Merlin client (`tests/interop/libertem_merlin_client.py`, active mode
//!   with a soft-trigger hook) against stemflow's [`MerlinSim`] (one test, every recording).
//!
//! Both directions must reproduce `reference.json` (LiberTEM 0.16's offline MIB reader):
//! frame count, signal shape, per-frame sums, total, maximum, and frame 0's first/last row
//! and column sums and quadrant sums (which catch a wrong quad assembly or row order).
//!
//! LiberTEM-live comes from PyPI into a venv under the target directory, built once
//! (`common::pyenv`); without it these tests fail. Everything binds 127.0.0.1 with ephemeral
//! ports, every wait has a deadline, and every Python process is killed when its guard drops.

mod common;

use common::process::{ChildGuard, LogTap};
use common::pyenv::{self, PyEnv};
use common::scratch::{ScratchDir, shared_data, tail};
use crossbeam_channel::RecvTimeoutError;
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use stemflow_core::frame::{PixelsRef, Tile};
use stemflow_core::{DType, SigShape};
use stemflow_drivers::merlin::{
    EndReason, MerlinControl, MerlinReceiver, MerlinReceiverConfig, MerlinSettings, MerlinTrigger,
    ReceiverEvent,
};
use stemflow_simulators::merlin::{MerlinSim, MerlinSimConfig, MerlinSource, Pacing};

/// Starting LiberTEM's simulator: Python imports, loading the recording, numba compilation.
const SIM_START_TIMEOUT: Duration = Duration::from_secs(90);
/// From arm to HDR, from trigger to the first frame (LiberTEM's simulator compiles its reader
/// on the first acquisition), and for the whole acquisition.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(60);
const ACQUISITION_TIMEOUT: Duration = Duration::from_secs(90);
/// LiberTEM-live's whole client run (its own watchdog), and ours on top.
const CLIENT_TIMEOUT_S: u64 = 240;
const CLIENT_KILL_AFTER: Duration = Duration::from_secs(CLIENT_TIMEOUT_S + 30);

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Every recording in the shared data (stems; `.hdr` + `.mib` each).
const ALL_RECORDINGS: [&str; 20] = [
    "Single_1_Frame_CounterDepth_1_Rows_256",
    "Single_1_Frame_CounterDepth_6_Rows_256",
    "Single_1_Frame_CounterDepth_12_Rows_256",
    "Single_1_Frame_CounterDepth_24_Rows_256",
    "Single_1_Frame_CounterDepth_1_Rows_256RAW",
    "Single_9_Frame_CounterDepth_1_Rows_256",
    "Single_9_Frame_CounterDepth_6_Rows_256",
    "Single_9_Frame_CounterDepth_12_Rows_256",
    "Single_9_Frame_CounterDepth_24_Rows_256",
    "Single_9_Frame_CounterDepth_1_Rows_256RAW",
    "Quad_1_Frame_CounterDepth_1_Rows_256",
    "Quad_1_Frame_CounterDepth_6_Rows_256",
    "Quad_1_Frame_CounterDepth_12_Rows_256",
    "Quad_1_Frame_CounterDepth_24_Rows_256",
    "Quad_1_Frame_CounterDepth_1_Rows_256RAW",
    "Quad_9_Frame_CounterDepth_1_Rows_256",
    "Quad_9_Frame_CounterDepth_6_Rows_256",
    "Quad_9_Frame_CounterDepth_12_Rows_256",
    "Quad_9_Frame_CounterDepth_24_Rows_256",
    "Quad_9_Frame_CounterDepth_1_Rows_256RAW",
];

fn recordings_dir() -> PathBuf {
    shared_data().join("merlin/Merlin_Single_Quad")
}

// ---------------------------------------------------------------------------------------
// Reference values and the statistics both directions compare with them.

/// Statistics of one decoded frame, rows in the order received (row 0 first).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct FrameStats {
    sum: u64,
    max: u64,
    row0: u64,
    last_row: u64,
    col0: u64,
    last_col: u64,
    /// Top-left, top-right, bottom-left, bottom-right halves by rows and columns.
    quadrants: [u64; 4],
}

impl FrameStats {
    fn of(pixels: PixelsRef<'_>, sig: SigShape) -> Self {
        let (rows, cols) = (sig.rows, sig.cols);
        let mut s = FrameStats::default();
        for r in 0..rows {
            for c in 0..cols {
                let v = pixels.get_f64(r * cols + c) as u64;
                s.sum += v;
                s.max = s.max.max(v);
                if r == 0 {
                    s.row0 += v;
                }
                if r == rows - 1 {
                    s.last_row += v;
                }
                if c == 0 {
                    s.col0 += v;
                }
                if c == cols - 1 {
                    s.last_col += v;
                }
                s.quadrants[usize::from(r >= rows / 2) * 2 + usize::from(c >= cols / 2)] += v;
            }
        }
        s
    }
}

/// What `reference.json` says about one recording.
#[derive(Debug)]
struct Expected {
    name: String,
    frames: usize,
    sig_shape: SigShape,
    counter_depth: u32,
    raw: bool,
    total: u64,
    per_frame_sums: Vec<u64>,
    max_value: u64,
    /// Frame 0: row 0, last row, column 0, last column.
    frame0_edges: [u64; 4],
    frame0_quadrants: [u64; 4],
}

impl Expected {
    fn load(stem: &str) -> Self {
        let path = shared_data().join("merlin/reference.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let all: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        let name = format!("{stem}.mib");
        Self::from_value(stem, &all[&name], &path)
    }

    /// One recording's entry in the `reference.json` layout (`path`: where it came from,
    /// for messages); the counter depth and raw format from the stem's name.
    fn from_value(stem: &str, r: &Value, path: &Path) -> Self {
        let name = format!("{stem}.mib");
        let num = |v: &Value, what: &str| {
            v.as_u64().unwrap_or_else(|| {
                panic!("{}: {name}.{what} is not an integer: {v}", path.display())
            })
        };
        let list = |v: &Value, what: &str| -> Vec<u64> {
            v.as_array()
                .unwrap_or_else(|| panic!("{}: {name}.{what} is not a list", path.display()))
                .iter()
                .map(|x| num(x, what))
                .collect()
        };
        let shape = list(&r["sig_shape"], "sig_shape");
        let depth = stem
            .split("CounterDepth_")
            .nth(1)
            .and_then(|s| s.split('_').next())
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("no counter depth in the name {stem}"));
        let q = &r["frame0_quadrant_sums"];
        Self {
            frames: num(&r["frames"], "frames") as usize,
            sig_shape: SigShape::new(shape[0] as usize, shape[1] as usize),
            counter_depth: depth,
            raw: stem.ends_with("RAW"),
            total: num(&r["total"], "total"),
            per_frame_sums: list(&r["per_frame_sums"], "per_frame_sums"),
            max_value: num(&r["max_value"], "max_value"),
            frame0_edges: [
                num(&r["frame0_row0_sum"], "frame0_row0_sum"),
                num(&r["frame0_lastrow_sum"], "frame0_lastrow_sum"),
                num(&r["frame0_col0_sum"], "frame0_col0_sum"),
                num(&r["frame0_lastcol_sum"], "frame0_lastcol_sum"),
            ],
            frame0_quadrants: [
                num(&q["top_left"], "top_left"),
                num(&q["top_right"], "top_right"),
                num(&q["bottom_left"], "bottom_left"),
                num(&q["bottom_right"], "bottom_right"),
            ],
            name,
        }
    }

    /// The decoded dtype both stemflow and LiberTEM-live use for this counter depth
    /// (1/6 → u8, 12 → u16, 24 → u32; §1.7).
    fn dtype(&self) -> DType {
        match self.counter_depth {
            1 | 6 => DType::U8,
            12 => DType::U16,
            _ => DType::U32,
        }
    }

    /// Differences between what a receiver observed and the reference, one line each.
    fn compare(&self, sig_shape: SigShape, frames: &[FrameStats]) -> Vec<String> {
        let mut bad = Vec::new();
        if sig_shape != self.sig_shape {
            bad.push(format!(
                "sig shape {sig_shape}, reference {}",
                self.sig_shape
            ));
        }
        if frames.len() != self.frames {
            bad.push(format!(
                "{} frames, reference {}",
                frames.len(),
                self.frames
            ));
        }
        let sums: Vec<u64> = frames.iter().map(|f| f.sum).collect();
        if sums != self.per_frame_sums {
            bad.push(format!(
                "per-frame sums {sums:?}, reference {:?}",
                self.per_frame_sums
            ));
        }
        let total: u64 = sums.iter().sum();
        if total != self.total {
            bad.push(format!("total {total}, reference {}", self.total));
        }
        let max = frames.iter().map(|f| f.max).max().unwrap_or(0);
        if max != self.max_value {
            bad.push(format!("maximum {max}, reference {}", self.max_value));
        }
        if let Some(f0) = frames.first() {
            let edges = [f0.row0, f0.last_row, f0.col0, f0.last_col];
            if edges != self.frame0_edges {
                bad.push(format!(
                    "frame 0 [row 0, last row, col 0, last col] sums {edges:?}, reference {:?}",
                    self.frame0_edges
                ));
            }
            if f0.quadrants != self.frame0_quadrants {
                bad.push(format!(
                    "frame 0 quadrant sums [TL, TR, BL, BR] {:?}, reference {:?}",
                    f0.quadrants, self.frame0_quadrants
                ));
            }
        }
        bad
    }
}

// ---------------------------------------------------------------------------------------
// (a) stemflow's driver ← LiberTEM-live's simulator

/// `libertem-live-mib-sim` serving one recording on ephemeral loopback ports, with
/// `--wait-trigger` (HDR on STARTACQUISITION, frames on SOFTTRIGGER). Killed on drop.
struct LibertemMibSim {
    // Field order is drop order: the process first, then its log reader, then the folder.
    child: ChildGuard,
    log: LogTap,
    _dir: ScratchDir,
    control: SocketAddr,
    data: SocketAddr,
}

impl LibertemMibSim {
    fn start(py: &PyEnv, stem: &str) -> Self {
        Self::start_from(py, &recordings_dir(), stem)
    }

    /// As [`start`](Self::start), serving `<src>/<stem>.hdr` + `.mib`.
    fn start_from(py: &PyEnv, src: &Path, stem: &str) -> Self {
        // Its own folder: LiberTEM globs `<stem>*.mib` beside the .hdr, so in the shared folder
        // `..._Rows_256.hdr` would also pick up `..._Rows_256RAW.mib` (§4.5).
        let dir = ScratchDir::new(&format!("mib-sim-{stem}"));
        for ext in ["hdr", "mib"] {
            let from = src.join(format!("{stem}.{ext}"));
            link_or_copy(&from, &dir.path().join(format!("{stem}.{ext}")));
        }
        let hdr = dir.path().join(format!("{stem}.hdr"));
        let mut cmd = py.command(&py.bin("libertem-live-mib-sim"));
        cmd.args([
            "--host",
            "127.0.0.1",
            "--data-port",
            "0",
            "--control-port",
            "0",
        ])
        .args(["--trigger-port", "0", "--wait-trigger"])
        .arg(&hdr)
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let mut child = ChildGuard::spawn(&format!("libertem-live-mib-sim {stem}"), &mut cmd);
        let log = child.tap_stderr();
        let ports = log.wait_for(
            SIM_START_TIMEOUT,
            || child.try_status().is_none(),
            |text| {
                Some((
                    listening_port(text, "DataSocketServer")?,
                    listening_port(text, "ControlSocketServer")?,
                ))
            },
        );
        let Some((data, control)) = ports else {
            let status = child.try_status();
            panic!(
                "{} did not report its listening ports within {:.0} s (exit status {status:?}); log ends:\n{}",
                child.name(),
                SIM_START_TIMEOUT.as_secs_f64(),
                tail(&log.text(), 6000)
            );
        };
        Self {
            child,
            log,
            _dir: dir,
            control: SocketAddr::new(LOCALHOST, control),
            data: SocketAddr::new(LOCALHOST, data),
        }
    }

    /// The end of the simulator's log, for failure messages.
    fn log_tail(&mut self) -> String {
        let status = self.child.try_status();
        format!(
            "{} (exit status {status:?}) log ends:\n{}",
            self.child.name(),
            tail(&self.log.text(), 6000)
        )
    }
}

/// The port in LiberTEM's `<server> listening ('127.0.0.1', <port>)` log line.
fn listening_port(log: &str, server: &str) -> Option<u16> {
    let needle = format!("{server} listening ('127.0.0.1', ");
    let rest = &log[log.find(&needle)? + needle.len()..];
    rest[..rest.find(')')?].trim().parse().ok()
}

fn link_or_copy(from: &Path, to: &Path) {
    #[cfg(unix)]
    let made = std::os::unix::fs::symlink(from, to);
    #[cfg(not(unix))]
    let made = std::fs::copy(from, to).map(|_| ());
    made.unwrap_or_else(|e| panic!("cannot link {} to {}: {e}", from.display(), to.display()));
}

/// Acquisitions per connection in direction (a), and per simulator in direction (b): the
/// second one checks re-arming on the same data connection (a) and a new client connection
/// to an idle detector (b).
const ACQUISITIONS: usize = 2;

/// Connects stemflow's receiver and control client to LiberTEM-live's simulator serving
/// `stem`, configures a soft-triggered acquisition, then [`ACQUISITIONS`] times: arms, waits
/// for the HDR, soft-triggers, decodes every frame and compares with the reference.
fn stemflow_receives_from_libertem_sim(stem: &str) {
    let expected = Expected::load(stem);
    let py = pyenv::libertem_live();
    let mut sim = LibertemMibSim::start(&py, stem);
    let t0 = Instant::now();

    // The receiver connects before arming, so the HDR cannot be missed.
    let mut rx_cfg = MerlinReceiverConfig::new(sim.data);
    rx_cfg.header_timeout = HEADER_TIMEOUT;
    rx_cfg.first_frame_timeout = FIRST_FRAME_TIMEOUT;
    rx_cfg.frame_timeout = Duration::from_secs(10);
    rx_cfg.frames_per_stack = 4; // several stacks even for 9 frames
    rx_cfg.pool_stacks = 4;
    let receiver = MerlinReceiver::start(rx_cfg)
        .unwrap_or_else(|e| panic!("stemflow receiver: {e}\n{}", sim.log_tail()));
    let mut control = configure(&mut sim, &expected);

    for acquisition in 0..ACQUISITIONS {
        let (sig_shape, frames) = acquire(&mut sim, &receiver, &mut control, &expected);
        let bad = expected.compare(sig_shape, &frames);
        assert!(
            bad.is_empty(),
            "{} (acquisition {acquisition} on one connection): stemflow's decode of \
             LiberTEM-live's simulator stream differs from the reference:\n  {}",
            expected.name,
            bad.join("\n  ")
        );
    }
    drop(control);
    receiver.stop();
    receiver.join();
    eprintln!(
        "{stem}: {ACQUISITIONS} × {} frames from libertem-live-mib-sim in {:.2} s",
        expected.frames,
        t0.elapsed().as_secs_f64()
    );
}

/// Connects stemflow's control client and sets a soft-triggered acquisition of the
/// recording's frames. SET and GET round-trip through the simulator's control emulation,
/// whose replies announce a length one short (§1.2); it stores values without acting on them.
fn configure(sim: &mut LibertemMibSim, expected: &Expected) -> MerlinControl {
    let stem = &expected.name;
    let mut control =
        MerlinControl::connect(sim.control, Duration::from_secs(5), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("stemflow control: {e}\n{}", sim.log_tail()));
    let settings = MerlinSettings {
        frames: expected.frames as u64,
        frames_per_trigger: expected.frames as u64,
        counter_depth: expected.counter_depth,
        exposure_s: 0.001,
        frame_period_s: 0.001,
        trigger_start: MerlinTrigger::Soft,
        trigger_stop: MerlinTrigger::Internal,
        continuous_rw: true,
        raw_format: expected.raw,
        run_headless: true,
    };
    let read_back = control
        .configure_acquisition(&settings)
        .unwrap_or_else(|e| panic!("configure_acquisition: {e}\n{}", sim.log_tail()));
    assert_eq!(
        read_back.get("TRIGGERSTART").map(String::as_str),
        Some("5"),
        "{stem}: TRIGGERSTART read back"
    );
    let mut image = |v: &str| -> usize {
        let s = control.get(v).unwrap_or_else(|e| panic!("GET {v}: {e}"));
        s.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{stem}: GET {v} answered `{s}`"))
    };
    let (image_x, image_y) = (image("IMAGEX"), image("IMAGEY"));
    assert_eq!(
        SigShape::new(image_y, image_x),
        expected.sig_shape,
        "{stem}: IMAGEY × IMAGEX as reported by the simulator"
    );
    control
}

/// One acquisition: STARTACQUISITION, the HDR (Armed), SOFTTRIGGER, every stack decoded as
/// it arrives (frame indices must tile `0..frames` exactly once), then FirstFrame and
/// Finished with complete accounting. Returns the decoded shape and per-frame statistics.
fn acquire(
    sim: &mut LibertemMibSim,
    receiver: &MerlinReceiver,
    control: &mut MerlinControl,
    expected: &Expected,
) -> (SigShape, Vec<FrameStats>) {
    let stem = &expected.name;
    control
        .cmd("STARTACQUISITION")
        .unwrap_or_else(|e| panic!("CMD STARTACQUISITION: {e}\n{}", sim.log_tail()));
    let armed = receiver
        .events()
        .recv_timeout(HEADER_TIMEOUT + Duration::from_secs(5));
    let (header, stacks) = match armed {
        Ok(ReceiverEvent::Armed { header, stacks, .. }) => (header, stacks),
        other => panic!(
            "{stem}: expected Armed (HDR) after STARTACQUISITION, got {other:?}\n{}",
            sim.log_tail()
        ),
    };
    // The simulator sends the recording's .hdr verbatim.
    assert_eq!(
        header.frames_in_acquisition(),
        expected.frames as u64,
        "{stem}: HDR frames in acquisition"
    );
    assert_eq!(
        header.counter_depth(),
        Some(expected.counter_depth),
        "{stem}: HDR counter depth"
    );
    assert!(
        header.warnings().is_empty(),
        "{stem}: HDR parse warnings {:?}",
        header.warnings()
    );
    control
        .cmd("SOFTTRIGGER")
        .unwrap_or_else(|e| panic!("CMD SOFTTRIGGER: {e}\n{}", sim.log_tail()));

    let deadline = Instant::now() + ACQUISITION_TIMEOUT;
    let mut frames: Vec<Option<FrameStats>> = vec![None; expected.frames];
    let mut tile = Tile::zeros(0, 0, expected.sig_shape, expected.dtype());
    let mut decoded_as = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let stack = match stacks.recv_timeout(left) {
            Ok(s) => s,
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => panic!(
                "{stem}: frames still missing after {:.0} s (received: {:?})\n{}",
                ACQUISITION_TIMEOUT.as_secs_f64(),
                frames.iter().map(Option::is_some).collect::<Vec<_>>(),
                sim.log_tail()
            ),
        };
        let stack = stack.into_dense().expect("Merlin stacks are dense");
        tile.decode_from(&stack).unwrap_or_else(|e| {
            panic!(
                "{stem}: decoding the stack from frame {}: {e}",
                stack.first_frame
            )
        });
        decoded_as = Some((tile.sig_shape, tile.data.dtype()));
        for i in 0..tile.n_frames {
            let index = usize::try_from(tile.first_frame)
                .unwrap_or(usize::MAX)
                .saturating_add(i);
            let slot = frames.get_mut(index).unwrap_or_else(|| {
                panic!(
                    "{stem}: frame index {index} beyond {} frames",
                    expected.frames
                )
            });
            assert!(slot.is_none(), "{stem}: frame {index} delivered twice");
            *slot = Some(FrameStats::of(tile.frame(i), tile.sig_shape));
        }
    }

    let mut first_frame_seen = false;
    let summary = loop {
        match receiver.events().recv_timeout(Duration::from_secs(10)) {
            Ok(ReceiverEvent::FirstFrame {
                sig_shape, dtype, ..
            }) => {
                first_frame_seen = true;
                assert_eq!(
                    sig_shape, expected.sig_shape,
                    "{stem}: FirstFrame sig shape"
                );
                assert_eq!(dtype, expected.dtype(), "{stem}: FirstFrame dtype");
            }
            Ok(ReceiverEvent::Finished { summary, .. }) => break summary,
            other => panic!(
                "{stem}: expected FirstFrame or Finished, got {other:?}\n{}",
                sim.log_tail()
            ),
        }
    };
    assert!(
        first_frame_seen,
        "{stem}: no FirstFrame event before Finished"
    );
    assert_eq!(summary.end, EndReason::AllFrames, "{stem}: {summary:?}");
    let n = expected.frames as u64;
    assert_eq!(
        (
            summary.expected,
            summary.received,
            summary.lost,
            summary.damaged
        ),
        (n, n, 0, 0),
        "{stem}: frame accounting (expected, received, lost, damaged)"
    );
    let Some((sig_shape, dtype)) = decoded_as else {
        panic!("{stem}: no stack arrived");
    };
    assert_eq!(dtype, expected.dtype(), "{stem}: decoded dtype");
    let missing: Vec<usize> = (0..frames.len()).filter(|&i| frames[i].is_none()).collect();
    assert!(
        missing.is_empty(),
        "{stem}: frames never delivered: {missing:?}"
    );
    (sig_shape, frames.into_iter().flatten().collect())
}

/// Single chip, 12-bit (U16 big-endian), 9 frames.
#[test]
fn stemflow_receives_libertem_sim_single_12bit() {
    stemflow_receives_from_libertem_sim("Single_9_Frame_CounterDepth_12_Rows_256");
}

/// Single chip, 1-bit sent as U08, 9 frames.
#[test]
fn stemflow_receives_libertem_sim_single_1bit() {
    stemflow_receives_from_libertem_sim("Single_9_Frame_CounterDepth_1_Rows_256");
}

/// Single chip, 24-bit (U32 big-endian), 9 frames.
#[test]
fn stemflow_receives_libertem_sim_single_24bit() {
    stemflow_receives_from_libertem_sim("Single_9_Frame_CounterDepth_24_Rows_256");
}

/// Quad (2 × 2 chips, assembled 512 × 512 by the Merlin software), 12-bit, 9 frames.
#[test]
fn stemflow_receives_libertem_sim_quad_12bit() {
    stemflow_receives_from_libertem_sim("Quad_9_Frame_CounterDepth_12_Rows_256");
}

/// Quad raw (R64, 1-bit, 1024 × 256 on the wire, bottom chips rotated), 9 frames.
#[test]
fn stemflow_receives_libertem_sim_quad_raw_1bit() {
    stemflow_receives_from_libertem_sim("Quad_9_Frame_CounterDepth_1_Rows_256RAW");
}

/// Single chip raw (R64, 1-bit), 9 frames.
#[test]
fn stemflow_receives_libertem_sim_single_raw_1bit() {
    stemflow_receives_from_libertem_sim("Single_9_Frame_CounterDepth_1_Rows_256RAW");
}

// ---------------------------------------------------------------------------------------
// (b) LiberTEM-live's client ← stemflow's simulator

/// LiberTEM-live's Merlin client (active mode; its `on_ready_for_data` hook sends
/// STARTACQUISITION and SOFTTRIGGER) receives every recording from stemflow's `MerlinSim`,
/// one simulator per recording, [`ACQUISITIONS`] rounds over all of them in one Python run.
/// Every acquisition's per-frame statistics must match the reference, and its signal shape
/// and dtype (which LiberTEM-live takes from GET IMAGEX / IMAGEY / COUNTERDEPTH) too.
#[test]
fn libertem_live_receives_from_stemflow_sim() {
    let py = pyenv::libertem_live();
    let recordings: Vec<(Expected, MerlinSim)> = ALL_RECORDINGS
        .iter()
        .map(|stem| {
            let mut cfg = MerlinSimConfig::new(MerlinSource::Recording {
                path: recordings_dir().join(format!("{stem}.hdr")),
            });
            cfg.host = LOCALHOST;
            cfg.pacing = Pacing::AsFastAsPossible;
            let sim = MerlinSim::start(cfg).unwrap_or_else(|e| panic!("MerlinSim for {stem}: {e}"));
            (Expected::load(stem), sim)
        })
        .collect();

    let dir = ScratchDir::new("libertem-client");
    let out = dir.path().join("result.json");
    let stdout = dir.path().join("stdout.log");
    let stderr = dir.path().join("stderr.log");
    let file =
        |p: &Path| std::fs::File::create(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/libertem_merlin_client.py");
    let mut cmd = py.command(&py.python());
    cmd.arg(&script)
        .args([
            "--host",
            "127.0.0.1",
            "--timeout",
            &CLIENT_TIMEOUT_S.to_string(),
            "--out",
        ])
        .arg(&out)
        .current_dir(dir.path())
        .stdout(Stdio::from(file(&stdout)))
        .stderr(Stdio::from(file(&stderr)));
    for _ in 0..ACQUISITIONS {
        for (e, sim) in &recordings {
            cmd.arg("--acquisition")
                .arg(sim.control_addr().port().to_string())
                .arg(sim.data_addr().port().to_string())
                .arg(e.frames.to_string());
        }
    }
    let t0 = Instant::now();
    let mut client = ChildGuard::spawn("LiberTEM-live Merlin client", &mut cmd);
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
    let elapsed = t0.elapsed();
    drop(client);

    let text = std::fs::read_to_string(&out)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", out.display(), logs()));
    let results: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("client JSON: {e}: {text}"));
    let results = results
        .as_array()
        .unwrap_or_else(|| panic!("client JSON is not a list: {text}"));
    assert_eq!(
        results.len(),
        ACQUISITIONS * recordings.len(),
        "one result per acquisition"
    );

    let mut failures = Vec::new();
    for (i, r) in results.iter().enumerate() {
        let (expected, _) = &recordings[i % recordings.len()];
        let bad = match client_result(r, expected) {
            Ok(bad) => bad,
            Err(problem) => vec![problem],
        };
        if !bad.is_empty() {
            let round = i / recordings.len();
            failures.push(format!(
                "{} (round {round}):\n    {}",
                expected.name,
                bad.join("\n    ")
            ));
        }
    }
    for (expected, sim) in &recordings {
        let stats = sim.stats();
        let n = ACQUISITIONS as u64;
        if stats.frames_sent != n * expected.frames as u64 || stats.acquisitions != n {
            failures.push(format!(
                "{}: the simulator sent {} frames in {} acquisitions, expected {} in {n}",
                expected.name,
                stats.frames_sent,
                stats.acquisitions,
                n * expected.frames as u64
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "LiberTEM-live's client disagrees with the reference on recordings served by stemflow's \
         MerlinSim:\n  {}\n{}",
        failures.join("\n  "),
        logs()
    );
    eprintln!(
        "LiberTEM-live received {ACQUISITIONS} × {} recordings from MerlinSim in {:.2} s",
        recordings.len(),
        elapsed.as_secs_f64()
    );
}

/// Checks one acquisition as reported by the client script (see its docstring for the JSON
/// layout). Ok: the differences from the reference (empty when it agrees); Err: LiberTEM-live
/// raised or the JSON is not as the script writes it.
fn client_result(r: &Value, expected: &Expected) -> Result<Vec<String>, String> {
    if let Some(err) = r.get("error") {
        return Err(format!("LiberTEM-live raised: {err}"));
    }
    let ints = |v: &Value, what: &str| -> Result<Vec<u64>, String> {
        v.as_array()
            .and_then(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
            .ok_or_else(|| format!("`{what}` is not a list of integers in {r}"))
    };
    let shape = ints(&r["sig_shape"], "sig_shape")?;
    let [rows, cols] = shape[..] else {
        return Err(format!("sig_shape {shape:?} is not 2-D"));
    };
    let sig = SigShape::new(rows as usize, cols as usize);
    let per_frame = |name: &str| ints(&r["per_frame"][name], name);
    let (sum, max) = (per_frame("sum")?, per_frame("max")?);
    let edges = [
        per_frame("row0")?,
        per_frame("lastrow")?,
        per_frame("col0")?,
        per_frame("lastcol")?,
    ];
    let quads = [
        per_frame("top_left")?,
        per_frame("top_right")?,
        per_frame("bottom_left")?,
        per_frame("bottom_right")?,
    ];
    let n = sum.len();
    if [
        &max, &edges[0], &edges[1], &edges[2], &edges[3], &quads[0], &quads[1], &quads[2],
        &quads[3],
    ]
    .iter()
    .any(|v| v.len() != n)
    {
        return Err(format!("per-frame lists of different lengths in {r}"));
    }
    let frames: Vec<FrameStats> = (0..n)
        .map(|i| FrameStats {
            sum: sum[i],
            max: max[i],
            row0: edges[0][i],
            last_row: edges[1][i],
            col0: edges[2][i],
            last_col: edges[3][i],
            quadrants: [quads[0][i], quads[1][i], quads[2][i], quads[3][i]],
        })
        .collect();
    let mut bad = expected.compare(sig, &frames);
    let want_dtype = expected.dtype().name();
    if r["dtype"].as_str() != Some(want_dtype) {
        bad.push(format!("dtype {}, expected {want_dtype}", r["dtype"]));
    }
    Ok(bad)
}

// ---------------------------------------------------------------------------------------
// Detector ROI: frames of fewer rows than the chip (256 columns × 128 rows), both directions

/// The ROI acquisition used below: a 4 × 4 scan of 128 × 256 (rows × columns) 12-bit frames,
/// the Merlin's reduced-row readout for higher frame rates.
const ROI_STEM: &str = "Roi_16_Frame_CounterDepth_12_Rows_128";
const ROI_FRAMES: usize = 16;

/// stemflow's simulator producing the ROI acquisition (synthetic specimen, fixed seed: every
/// simulator made here sends the same frames).
fn roi_sim() -> MerlinSim {
    let mut cfg = MerlinSimConfig::new(MerlinSource::Synthetic {
        specimen: stemflow_simulators::specimen::Specimen::builder()
            .disk_radius_px(20.0)
            .build(),
        nav_shape: stemflow_core::NavShape::new(4, 4),
        sig_shape: SigShape::new(128, 256),
        seed: 9,
    });
    cfg.host = LOCALHOST;
    cfg.pacing = Pacing::AsFastAsPossible;
    MerlinSim::start(cfg).unwrap_or_else(|e| panic!("MerlinSim (ROI): {e}"))
}

/// Reads one MPX message from the data stream (`MPX,` + 10-digit length + `,`, then
/// length − 1 bytes, §1.4): its payload.
fn read_mpx(s: &mut std::net::TcpStream) -> Vec<u8> {
    use std::io::Read;
    let mut head = [0u8; 15];
    s.read_exact(&mut head).expect("MPX prefix");
    assert_eq!(&head[..4], b"MPX,", "not an MPX prefix: {head:?}");
    let len: usize = std::str::from_utf8(&head[4..14])
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("MPX length in {head:?}"));
    let mut body = vec![0u8; len - 1];
    s.read_exact(&mut body).expect("MPX payload");
    body
}

/// Captures one soft-triggered ROI acquisition from [`roi_sim`] as a Merlin file set in
/// `dir`: the HDR message as `<ROI_STEM>.hdr`, the frames (MQ1 header and pixels, without
/// the MPX prefix) back to back as `<ROI_STEM>.mib`, as the Merlin software writes files.
fn capture_roi_files(dir: &Path) {
    let sim = roi_sim();
    let mut data = std::net::TcpStream::connect(sim.data_addr()).expect("data port");
    data.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut c = MerlinControl::connect(
        sim.control_addr(),
        Duration::from_secs(5),
        Duration::from_secs(5),
    )
    .expect("control");
    for (k, v) in [
        ("COUNTERDEPTH", "12".to_string()),
        ("NUMFRAMESTOACQUIRE", ROI_FRAMES.to_string()),
        ("NUMFRAMESPERTRIGGER", ROI_FRAMES.to_string()),
        ("TRIGGERSTART", "5".to_string()),
    ] {
        c.set(k, &v).unwrap_or_else(|e| panic!("SET {k}: {e}"));
    }
    c.cmd("STARTACQUISITION").expect("STARTACQUISITION");
    let hdr = read_mpx(&mut data);
    assert!(hdr.starts_with(b"HDR,"), "first message is not the HDR");
    c.cmd("SOFTTRIGGER").expect("SOFTTRIGGER");
    let mut mib = Vec::new();
    for _ in 0..ROI_FRAMES {
        let frame = read_mpx(&mut data);
        assert!(frame.starts_with(b"MQ1,"), "not a frame");
        mib.extend_from_slice(&frame);
    }
    std::fs::write(dir.join(format!("{ROI_STEM}.hdr")), hdr).expect("write hdr");
    std::fs::write(dir.join(format!("{ROI_STEM}.mib")), mib).expect("write mib");
}

/// LiberTEM's offline MIB reader on the captured files: the independent reference.
fn libertem_reference(py: &PyEnv, dir: &Path) -> Expected {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/libertem_mib_stats.py");
    let out = dir.join("reference.json");
    let status = py
        .command(&py.python())
        .arg(&script)
        .arg(dir.join(format!("{ROI_STEM}.hdr")))
        .arg(ROI_FRAMES.to_string())
        .arg(&out)
        .status()
        .expect("running LiberTEM");
    assert!(
        status.success(),
        "LiberTEM's MIB reader failed on the ROI files"
    );
    let text = std::fs::read_to_string(&out).expect("reference");
    let v: Value = serde_json::from_str(&text).expect("reference JSON");
    Expected::from_value(ROI_STEM, &v, &out)
}

/// Merlin detector ROI (128 × 256 frames), both directions: stemflow's receiver reads
/// LiberTEM-live's simulator serving a ROI acquisition (captured from stemflow's simulator
/// and read by LiberTEM's offline MIB reader for the reference), and LiberTEM-live's client
/// reads stemflow's simulator producing it (taking the frame shape from GET IMAGEX/IMAGEY).
/// Both agree with LiberTEM's reading of the files: 128 × 256 frames and every statistic.
#[test]
fn detector_roi_frames_in_both_directions() {
    let py = pyenv::libertem_live();
    let files = ScratchDir::new("merlin-roi-files");
    capture_roi_files(files.path());
    let expected = libertem_reference(&py, files.path());
    assert_eq!(expected.sig_shape, SigShape::new(128, 256));
    assert!(expected.total > 0, "empty ROI frames");

    // (a) stemflow's receiver ← LiberTEM-live's simulator.
    let mut sim = LibertemMibSim::start_from(&py, files.path(), ROI_STEM);
    let mut rx_cfg = MerlinReceiverConfig::new(sim.data);
    rx_cfg.header_timeout = HEADER_TIMEOUT;
    rx_cfg.first_frame_timeout = FIRST_FRAME_TIMEOUT;
    rx_cfg.frame_timeout = Duration::from_secs(10);
    rx_cfg.frames_per_stack = 4;
    rx_cfg.pool_stacks = 4;
    let receiver = MerlinReceiver::start(rx_cfg)
        .unwrap_or_else(|e| panic!("stemflow receiver: {e}\n{}", sim.log_tail()));
    let mut control = configure(&mut sim, &expected);
    let (sig_shape, frames) = acquire(&mut sim, &receiver, &mut control, &expected);
    let bad = expected.compare(sig_shape, &frames);
    assert!(
        bad.is_empty(),
        "stemflow's receiver on LiberTEM-live's simulator serving ROI frames:\n  {}",
        bad.join("\n  ")
    );
    drop(control);
    receiver.stop();
    receiver.join();
    drop(sim);

    // (b) LiberTEM-live's client ← stemflow's simulator.
    let ours = roi_sim();
    let dir = ScratchDir::new("merlin-roi-client");
    let out = dir.path().join("result.json");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/libertem_merlin_client.py");
    let mut cmd = py.command(&py.python());
    cmd.arg(&script)
        .args([
            "--host",
            "127.0.0.1",
            "--timeout",
            &CLIENT_TIMEOUT_S.to_string(),
            "--out",
        ])
        .arg(&out)
        .arg("--acquisition")
        .arg(ours.control_addr().port().to_string())
        .arg(ours.data_addr().port().to_string())
        .arg(ROI_FRAMES.to_string())
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut client = ChildGuard::spawn("LiberTEM-live Merlin client (ROI)", &mut cmd);
    let log = client.tap_stderr();
    let status = client.wait_timeout(CLIENT_KILL_AFTER);
    assert!(
        status.is_some_and(|s| s.success()),
        "LiberTEM-live client (ROI): {status:?}\n{}",
        tail(&log.text(), 6000)
    );
    let text = std::fs::read_to_string(&out).expect("client JSON");
    let results: Value = serde_json::from_str(&text).expect("client JSON parses");
    let r = &results[0];
    let bad = client_result(r, &expected).unwrap_or_else(|e| vec![e]);
    assert!(
        bad.is_empty(),
        "LiberTEM-live's client on stemflow's simulator producing ROI frames:\n  {}",
        bad.join("\n  ")
    );
}
