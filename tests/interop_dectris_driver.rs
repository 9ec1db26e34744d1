//! DECTRIS interoperability with LiberTEM-live, the peer implementation (protocols.md §2,
//! §4.2, §4.5): stemflow's DECTRIS driver ([`DectrisDetector`]: SIMPLON REST client +
//! ZeroMQ stream receiver + bitshuffle-LZ4 decoder) against LiberTEM-live's simulator
//! `libertem-live-dectris-sim` (Flask REST API + a libzmq PUSH socket) replaying the
//! stream-v1 capture `../shared/data/dectris/stream-v1/synthetic_16x16_256_u16.dump`.
//!
//! Active mode: configure over REST (values consistent with the capture, which the
//! simulator requires), arm (series 34), receive, decode every frame and compare it with
//! the capture's `.npy` (sum 34 446 517) — twice on one connection, since the simulator
//! reuses the series id. Passive mode: the test arms the simulator with its own REST client
//! while the driver waits for the header. A third test runs the same driver against
//! stemflow's own DECTRIS simulator (a second, independent ZMTP implementation: the `zeromq`
//! crate) with injected faults: dropped frames, a corrupt blob, an early end of series.
//!
//! LiberTEM-live (`libertem-live[sim]==0.3.0`, the `sim` extra brings Flask) comes from
//! PyPI into a venv under the target directory, built once (`common::pyenv`); without it
//! these tests fail. Both simulator ports are ephemeral (`--port 0 --zmqport 0`, read from
//! its log); every wait has a deadline; the simulator is killed when its guard drops.

mod common;

use common::process::{ChildGuard, LogTap};
use common::pyenv::{self, PyEnv};
use common::scratch::{shared_data, tail};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use stemflow_core::detector::{
    ArmMode, ArmedAcquisition, Detector, DetectorSettings, DetectorTrigger,
};
use stemflow_core::frame::{PixelsRef, Tile};
use stemflow_core::{DType, NavShape, SigShape};
use stemflow_drivers::dectris::{DectrisDetector, DectrisDetectorConfig, SimplonClient};

/// Python imports and the first bind take a few seconds on a loaded machine.
const SIM_START_TIMEOUT: Duration = Duration::from_secs(90);
const ARM_TIMEOUT: Duration = Duration::from_secs(30);
const ACQUISITION_TIMEOUT: Duration = Duration::from_secs(60);

const FRAMES: usize = 256;
const SIG: SigShape = SigShape::new(256, 256);
const TOTAL_SUM: u64 = 34_446_517;
/// The capture's detector configuration (the simulator refuses other values, §4.2).
const COUNT_TIME_S: f64 = 0.0009999;
const FRAME_TIME_S: f64 = 0.001;

fn capture_dir() -> PathBuf {
    shared_data().join("dectris/stream-v1")
}

fn reference() -> Vec<u16> {
    let b = std::fs::read(capture_dir().join("synthetic_16x16_256_u16.npy"))
        .expect("the .npy in ../shared/data");
    assert_eq!(&b[..6], b"\x93NUMPY");
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = String::from_utf8_lossy(&b[10..10 + hlen]);
    assert!(
        header.contains("'<u2'") && header.contains("(16, 16, 256, 256)"),
        "{header}"
    );
    b[10 + hlen..]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// LiberTEM's DECTRIS simulator with its REST and ZeroMQ ports.
struct Sim {
    child: ChildGuard,
    log: LogTap,
    rest_port: u16,
    zmq_port: u16,
}

fn port_after(text: &str, marker: &str) -> Option<u16> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let digits: String = rest
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn start_sim(env: &PyEnv) -> Sim {
    let dump = capture_dir().join("synthetic_16x16_256_u16.dump");
    let mut cmd = env.command(&env.bin("libertem-live-dectris-sim"));
    cmd.arg(&dump)
        .args(["--port", "0", "--zmqport", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = ChildGuard::spawn("libertem-live-dectris-sim", &mut cmd);
    let log = child.tap_stderr();
    let ports = log.wait_for(
        SIM_START_TIMEOUT,
        || child_alive(&mut child),
        |t| {
            let rest = port_after(t, "API server listening on ('127.0.0.1', ")?;
            let zmq = port_after(t, "RustedReplay listening on tcp://127.0.0.1:")?;
            Some((rest, zmq))
        },
    );
    let Some((rest_port, zmq_port)) = ports else {
        panic!(
            "libertem-live-dectris-sim did not report its ports within {SIM_START_TIMEOUT:?}; log:\n{}",
            tail(&log.text(), 4000)
        );
    };
    Sim {
        child,
        log,
        rest_port,
        zmq_port,
    }
}

fn child_alive(c: &mut ChildGuard) -> bool {
    c.try_status().is_none()
}

fn detector(sim: &Sim) -> DectrisDetector {
    let stream = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), sim.zmq_port);
    let mut cfg = DectrisDetectorConfig::new("127.0.0.1", sim.rest_port, stream);
    cfg.connect_timeout = Duration::from_secs(10);
    cfg.first_frame_timeout = Duration::from_secs(30);
    cfg.frame_timeout = Duration::from_secs(10);
    DectrisDetector::connect(cfg).unwrap_or_else(|e| {
        panic!(
            "cannot connect to the simulator: {e}\nsimulator log:\n{}",
            tail(&sim.log.text(), 4000)
        )
    })
}

fn settings() -> DetectorSettings {
    DetectorSettings {
        nav_shape: NavShape::new(16, 16),
        exposure_s: COUNT_TIME_S,
        frame_time_s: FRAME_TIME_S,
        trigger: DetectorTrigger::ExternalRising,
        frames_per_trigger: 1,
        counter_depth: None,
        extra: BTreeMap::new(),
    }
}

/// Receives, decodes and checks one armed series; returns frames per second from the arm
/// confirmation to the last stack.
fn receive_and_check(armed: ArmedAcquisition, reference: &[u16], sim: &Sim) -> f64 {
    assert_eq!(armed.expected_frames, FRAMES as u64);
    assert_eq!(armed.sig_shape, SIG);
    assert_eq!(armed.dtype, DType::U16);
    let t0 = Instant::now();
    let until = t0 + ACQUISITION_TIMEOUT;
    let mut tile = Tile::zeros(0, 0, SIG, DType::U16);
    let mut seen = vec![false; FRAMES];
    let mut sum = 0u64;
    loop {
        match armed.stacks.recv_deadline(until) {
            Ok(stack) => {
                let stack = stack.into_dense().expect("DECTRIS stacks are dense");
                tile.decode_from(&stack).expect("every frame decodes");
                for i in 0..stack.len() {
                    let idx = stack.first_frame as usize + i;
                    let PixelsRef::U16(px) = tile.frame(i) else {
                        panic!("frames are not u16")
                    };
                    assert!(
                        px == &reference[idx * SIG.len()..(idx + 1) * SIG.len()],
                        "frame {idx} differs from the .npy"
                    );
                    sum += px.iter().map(|&v| u64::from(v)).sum::<u64>();
                    seen[idx] = true;
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!(
                "stacks: {e} after {:?}; simulator log:\n{}",
                t0.elapsed(),
                tail(&sim.log.text(), 4000)
            ),
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let end = armed
        .end
        .recv_timeout(Duration::from_secs(10))
        .expect("the end of the series");
    assert_eq!(end.error, None);
    assert_eq!(
        (end.expected, end.received, end.lost, end.damaged),
        (256, 256, 0, 0),
        "{end:?}"
    );
    assert_eq!(end.reason, "all frames");
    assert!(seen.iter().all(|&s| s), "every frame delivered");
    assert_eq!(sum, TOTAL_SUM);
    FRAMES as f64 / elapsed
}

#[test]
fn active_mode_against_libertem_dectris_sim_twice_on_one_connection() {
    let env = pyenv::libertem_live();
    let sim = start_sim(&env);
    let reference = reference();
    let mut det = detector(&sim);
    let readback = det.configure(&settings()).unwrap_or_else(|e| {
        panic!(
            "configure: {e}\nsimulator log:\n{}",
            tail(&sim.log.text(), 4000)
        )
    });
    assert_eq!(
        readback.get("trigger_mode").map(String::as_str),
        Some("exte")
    );
    assert_eq!(readback.get("ntrigger").map(String::as_str), Some("256"));
    assert_eq!(
        readback.get("x_pixels_in_detector").map(String::as_str),
        Some("256")
    );
    for run in 0..2 {
        let armed = det
            .arm(ArmMode::Active, ARM_TIMEOUT)
            .unwrap_or_else(|e| panic!("arm {run}: {e}\nlog:\n{}", tail(&sim.log.text(), 4000)));
        assert!(
            armed
                .header
                .as_deref()
                .is_some_and(|h| h.contains("\"series\":34")),
            "{:?}",
            armed.header
        );
        assert_eq!(armed.nav_shape, Some(NavShape::new(16, 16)));
        let fps = receive_and_check(armed, &reference, &sim);
        eprintln!("run {run}: {fps:.0} frames/s end to end (receive + decode + compare)");
        det.disarm().unwrap();
    }
    drop(det);
    drop(sim.child);
}

#[test]
fn passive_mode_waits_for_a_series_armed_elsewhere() {
    let env = pyenv::libertem_live();
    let sim = start_sim(&env);
    let reference = reference();
    let mut det = detector(&sim);
    // Someone else arms, a little after we start listening.
    let rest_port = sim.rest_port;
    let other = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        SimplonClient::new("127.0.0.1", rest_port, Duration::from_secs(10)).arm()
    });
    let armed = det
        .arm(ArmMode::Passive, ARM_TIMEOUT)
        .unwrap_or_else(|e| panic!("passive arm: {e}\nlog:\n{}", tail(&sim.log.text(), 4000)));
    assert_eq!(other.join().unwrap().unwrap(), 34);
    assert_eq!(armed.nav_shape, None, "the DCU does not know the scan");
    receive_and_check(armed, &reference, &sim);
    det.disarm().unwrap();

    // With nothing armed, passive waiting ends at its deadline.
    let t0 = Instant::now();
    let e = det
        .arm(ArmMode::Passive, Duration::from_millis(300))
        .unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert!(e.to_string().contains("timed out"), "{e}");
}

// ---------------------------------------------------------------------------------------
// The same driver against stemflow's own DECTRIS simulator (simulators/src/dectris), whose
// PUSH socket is the pure-Rust `zeromq` crate — a second independent ZMTP implementation —
// with its fault injection: dropped frames, a corrupt blob, an early end of series.

#[test]
fn against_stemflow_dectris_sim_with_faults() {
    use stemflow_simulators::dectris::{
        DectrisFaults, DectrisSim, DectrisSimConfig, DectrisSource, Pacing,
    };
    let mut cfg = DectrisSimConfig::new(DectrisSource::from_path(
        capture_dir().join("synthetic_16x16_256_u16.dump"),
    ));
    cfg.pacing = Pacing::AsFastAsPossible;
    cfg.faults = DectrisFaults {
        drop_frames: vec![5, 6],
        corrupt_blob_at: Some(9),
        end_early_after: Some(200),
        stall_after: None,
    };
    let sim = DectrisSim::start(cfg).expect("stemflow's DECTRIS simulator starts");
    let mut dc = DectrisDetectorConfig::new(
        &sim.api_addr().ip().to_string(),
        sim.api_addr().port(),
        sim.stream_addr(),
    );
    dc.frame_timeout = Duration::from_secs(5);
    let mut det = DectrisDetector::connect(dc).expect("connect");
    let mut s = settings();
    s.trigger = DetectorTrigger::Internal; // `ints`: the driver sends `trigger` itself
    det.configure(&s).expect("configure");
    let armed = det.arm(ArmMode::Active, ARM_TIMEOUT).expect("arm");
    assert_eq!(armed.expected_frames, 256);
    let reference = reference();
    let mut got = Vec::new();
    let until = Instant::now() + ACQUISITION_TIMEOUT;
    while let Ok(stack) = armed.stacks.recv_deadline(until) {
        let stack = stack.into_dense().expect("DECTRIS stacks are dense");
        for i in 0..stack.len() {
            let idx = stack.first_frame as usize + i;
            let mut one = Tile::zeros(0, 1, SIG, DType::U16);
            let single = stemflow_core::frame::RawStack {
                first_frame: idx as u64,
                frames: vec![stemflow_core::frame::RawFrameRef {
                    offset: 0,
                    len: stack.frames[i].len,
                }],
                buf: stemflow_core::pool::Pooled::unpooled(stack.payload(i).to_vec()),
                decoder: stack.decoder.clone(),
                first_received: stack.first_received,
            };
            match one.decode_from(&single) {
                Ok(()) => {
                    let PixelsRef::U16(px) = one.frame(0) else {
                        panic!("u16")
                    };
                    let r = idx % FRAMES;
                    assert!(
                        px == &reference[r * SIG.len()..(r + 1) * SIG.len()],
                        "frame {idx} differs"
                    );
                    got.push(idx);
                }
                Err(e) => panic!("frame {idx} does not decode: {e}"),
            }
        }
    }
    let end = armed
        .end
        .recv_timeout(Duration::from_secs(10))
        .expect("end");
    det.disarm().ok();
    assert_eq!(end.reason, "end of series", "{end:?}");
    assert_eq!(end.expected, 256);
    // Frames 5 and 6 never sent, 9 corrupt (cut in half: the framing check catches it),
    // 200..256 never sent (early end).
    assert_eq!(end.damaged, 1, "{end:?}");
    assert_eq!(end.lost, 2 + 56, "{end:?}");
    assert_eq!(end.received, 200 - 3);
    assert!(!got.contains(&5) && !got.contains(&9) && got.contains(&199));
    sim.stop();
}
