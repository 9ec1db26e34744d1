//! Detector simulators served standalone (`stemflow sim merlin`, `stemflow sim dectris`),
//! by default on 127.0.0.1, for other programs (LiberTEM-live, a second stemflow, a Python
//! notebook through [`start`]) to connect to.

use crate::options::SimOptions;
use crate::registry::DetectorKind;
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use stemflow_simulators::dectris::{DectrisSim, DectrisSimConfig};
use stemflow_simulators::merlin::{MerlinSim, MerlinSimConfig, MerlinSource, Pacing};
use stemflow_simulators::specimen::Specimen;
use stemflow_simulators::tpx3::{Tpx3Sim, Tpx3SimConfig, Tpx3Source};

/// A simulator serving on its ports until [`RunningSim::stop`] (or drop).
pub enum RunningSim {
    /// The Merlin simulator (control, data ports).
    Merlin(MerlinSim),
    /// The DECTRIS simulator (REST API, stream ports).
    Dectris(DectrisSim),
    /// The ASI TPX3 simulator (Serval REST API, CSR data ports).
    Tpx3(Tpx3Sim),
}

impl RunningSim {
    /// The two addresses: Merlin control and data; DECTRIS REST API and stream.
    pub fn addrs(&self) -> [SocketAddr; 2] {
        match self {
            RunningSim::Merlin(s) => [s.control_addr(), s.data_addr()],
            RunningSim::Dectris(s) => [s.api_addr(), s.stream_addr()],
            RunningSim::Tpx3(s) => [s.api_addr(), s.data_addr()],
        }
    }
    /// What was served so far: `(acquisitions or series, frames, bytes)`.
    pub fn served(&self) -> (u64, u64, u64) {
        match self {
            RunningSim::Merlin(s) => {
                let st = s.stats();
                (st.acquisitions, st.frames_sent, st.bytes_sent)
            }
            RunningSim::Dectris(s) => {
                let st = s.stats();
                (st.series, st.frames_sent, st.bytes_sent)
            }
            RunningSim::Tpx3(s) => {
                let st = s.stats();
                (st.acquisitions, st.frames_sent, st.bytes_sent)
            }
        }
    }
    /// Stops serving and closes the ports.
    pub fn stop(self) {
        match self {
            RunningSim::Merlin(s) => s.stop(),
            RunningSim::Dectris(s) => s.stop(),
            RunningSim::Tpx3(s) => s.stop(),
        }
    }
}

/// Starts the simulator of `a.detector` on `a.host` and `a.ports` (0: any free port).
///
/// # Errors
/// The simulator could not start (a port in use, a recording that cannot be read).
pub fn start(a: &SimOptions) -> Result<RunningSim> {
    Ok(match a.detector {
        DetectorKind::Merlin => {
            let source = match &a.recording {
                Some(p) => MerlinSource::Recording { path: p.clone() },
                None => MerlinSource::Synthetic {
                    specimen: Specimen::builder().build(),
                    nav_shape: a.nav_shape,
                    sig_shape: a.sig_shape,
                    seed: 1,
                },
            };
            let mut cfg = MerlinSimConfig::new(source);
            cfg.host = a.host;
            [cfg.control_port, cfg.data_port] = a.ports;
            cfg.pacing = if a.fast {
                Pacing::AsFastAsPossible
            } else {
                Pacing::FrameTime
            };
            RunningSim::Merlin(MerlinSim::start(cfg).context("starting the Merlin simulator")?)
        }
        DetectorKind::Dectris => {
            let cfg = DectrisSimConfig::from_cli(
                a.host,
                a.ports[0],
                a.ports[1],
                a.recording.clone(),
                a.nav_shape,
                a.sig_shape,
                a.fast,
            );
            RunningSim::Dectris(DectrisSim::start(cfg).context("starting the DECTRIS simulator")?)
        }
        DetectorKind::Tpx3 => {
            let source = match &a.recording {
                Some(p) => Tpx3Source::Recording(p.clone()),
                None => Tpx3Source::synthetic(a.nav_shape, a.sig_shape),
            };
            let mut cfg = Tpx3SimConfig::new(source);
            cfg.api_bind = SocketAddr::new(a.host, a.ports[0]);
            cfg.data_bind = SocketAddr::new(a.host, a.ports[1]);
            // Free-running (every client gets the scan at once) unless a measurement is to
            // be started through Serval.
            cfg.free_running = !a.active;
            cfg.repeats = if a.active { 1 } else { 0 };
            cfg.frame_time_s = if a.fast {
                0.0
            } else {
                a.frame_time_s.unwrap_or(0.0)
            };
            RunningSim::Tpx3(Tpx3Sim::start(cfg).context("starting the TPX3 simulator")?)
        }
    })
}

/// Starts the simulator of `a.detector`, prints its ports, and serves until
/// `a.duration` has passed (or forever).
///
/// # Errors
/// The simulator could not start (a port in use, a recording that cannot be read).
pub fn serve(a: &SimOptions) -> Result<()> {
    let sim = start(a)?;
    let [first, second] = sim.addrs();
    match &sim {
        RunningSim::Merlin(_) => {
            println!("merlin simulator: control {first} data {second}");
            println!("control_port={} data_port={}", first.port(), second.port());
        }
        RunningSim::Dectris(s) => {
            println!(
                "dectris simulator: REST http://{first} stream {}",
                s.stream_endpoint()
            );
            println!("api_port={} stream_port={}", first.port(), second.port());
        }
        RunningSim::Tpx3(_) => {
            println!("tpx3 simulator: Serval REST http://{first} data {second}");
            println!("api_port={} data_port={}", first.port(), second.port());
        }
    }
    serve_until(a.duration);
    let (n, frames, bytes) = sim.served();
    let what = match &sim {
        RunningSim::Merlin(_) => "acquisitions",
        RunningSim::Dectris(_) => "series",
        RunningSim::Tpx3(_) => "acquisitions",
    };
    println!(
        "served {n} {what}, {frames} frames, {:.1} MB",
        bytes as f64 / 1e6
    );
    sim.stop();
    Ok(())
}

/// Returns after `duration`, or never (the user ends the simulator with Ctrl-C).
fn serve_until(duration: Option<Duration>) {
    let t0 = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if duration.is_some_and(|d| t0.elapsed() >= d) {
            return;
        }
    }
}
