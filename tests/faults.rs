//! Faults an unattended run meets, as a user sees them: each ends promptly with an error
//! that says what happened (the device, what was expected, what was observed), not a
//! timeout of something that never had a chance, and not a panic that never happened.
//!
//! Every peer binds 127.0.0.1 on an ephemeral port and stops by itself.

mod common;

use common::command::{self, path_arg};
use common::scratch::ScratchDir;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use stemflow_core::{NavShape, SigShape};
use stemflow_simulators::merlin::{MerlinSim, MerlinSimConfig, MerlinSource, Pacing};
use stemflow_simulators::specimen::Specimen;

/// A data port that accepts every connection and closes it at once, until dropped.
struct SlammingPort {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl SlammingPort {
    fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").expect("binding the data port");
        l.set_nonblocking(true).expect("non-blocking listener");
        let port = l.local_addr().expect("its address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !s.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                match l.accept() {
                    Ok((c, _)) => drop(c),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { port, stop }
    }
}

impl Drop for SlammingPort {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A Merlin whose data port accepts and closes at once: `acquire` fails within seconds
/// saying the data connection closed before any HDR, not "timed out after 30 s".
#[test]
fn a_data_port_that_closes_at_once_is_reported_as_closed() {
    let mut cfg = MerlinSimConfig::new(MerlinSource::Synthetic {
        specimen: Specimen::builder().build(),
        nav_shape: NavShape::new(2, 2),
        sig_shape: SigShape::new(64, 64),
        seed: 1,
    });
    cfg.pacing = Pacing::AsFastAsPossible;
    let sim = MerlinSim::start(cfg).expect("starting the Merlin simulator");
    let data = SlammingPort::start();
    let (c, d) = (sim.control_addr().port().to_string(), data.port.to_string());
    let dir = ScratchDir::new("fault-slam");
    let run = command::stemflow(
        &[
            "acquire",
            "--control-port",
            &c,
            "--data-port",
            &d,
            "--nav-shape",
            "2x2",
            "--arm-timeout-s",
            "30",
            "--out",
            path_arg(&dir.path().join("out")),
        ],
        dir.path(),
        "slam",
    );
    assert_eq!(run.status.code(), Some(1), "{}", run.describe());
    assert!(
        run.took < Duration::from_secs(15),
        "took {:?}: {}",
        run.took,
        run.describe()
    );
    assert!(
        run.stderr.contains("closed") && !run.stderr.contains("timed out after 30"),
        "the error does not say the connection closed: {}",
        run.describe()
    );
}
