//! Crash safety: a writer process killed with SIGKILL mid-recording leaves a readable file.
//!
//! Kept in its own test binary: the child process is started by fork/exec and inherits
//! every file descriptor open in the parent at that moment, including HDF5 files that
//! other tests of the same binary have open, whose locks it would then hold until killed.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use stemflow_core::DType;
use stemflow_core::sink::TileSink;
use stemflow_core::validity::FrameStatus;
use stemflow_recording::{Hdf5Recorder, RecordingSpec, open_recording};

const CHILD_ENV: &str = "STEMFLOW_RECORDING_KILL_CHILD";

/// Child half of `killed_writer_leaves_readable_file`: only acts when started by it.
#[test]
fn child_writer_for_kill_test() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut rec = Hdf5Recorder::create(&path, RecordingSpec::new(NAV, SIG, DType::U16)).unwrap();
    for &(first, n) in &TILES[..3] {
        rec.write_tile(&tile(first, n, DType::U16)).unwrap();
    }
    rec.flush().unwrap();
    // Written after the flush: must not make the file unreadable when the kill comes.
    rec.write_tile(&tile(21, 9, DType::U16)).unwrap();
    println!("FLUSHED");
    std::thread::sleep(Duration::from_secs(60));
}

/// A process killed (SIGKILL) mid-recording leaves a file that opens, with every frame
/// written before the last flush readable and marked in the validity map.
#[test]
fn killed_writer_leaves_readable_file() {
    let path = scratch("killed");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_writer_for_kill_test",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("FLUSHED") {
                let _ = tx.send(());
            }
        }
    });
    let flushed = rx.recv_timeout(Duration::from_secs(30));
    // Give the writer thread a moment with the unflushed tile, then kill mid-flight.
    std::thread::sleep(Duration::from_millis(50));
    child.kill().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "killed child did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
    flushed.expect("child wrote and flushed within 30 s");

    let r = open_recording(&path).unwrap();
    assert!(!r.is_complete());
    let v = r.validity().unwrap();
    // Tiles (11, 9), (30, 5), (0, 4) were flushed; the tile at 21 may or may not be in.
    for &(first, n) in &TILES[..3] {
        for f in first..first + n as u64 {
            assert_eq!(v.status(f as usize), FrameStatus::Received, "frame {f}");
        }
        check_pixels(&r.read_tile(first, n).unwrap());
    }
    assert_eq!(v.status(5), FrameStatus::Missing);
    drop(r);
    std::fs::remove_file(&path).unwrap();
}

fn check_pixels(t: &stemflow_core::frame::Tile) {
    for f in 0..t.n_frames {
        let frame = t.first_frame + f as u64;
        for i in 0..SIG.len() {
            assert_eq!(
                t.frame(f).get_f64(i) as u64,
                expected(frame, i, DType::U16),
                "frame {frame} pixel {i}"
            );
        }
    }
}
