//! Detector simulators served standalone (`stemflow sim merlin`, `stemflow sim dectris`),
//! by default on 127.0.0.1, for other programs (LiberTEM-live, a second stemflow) to
//! connect to.

use crate::options::SimOptions;
use crate::registry::DetectorKind;
use anyhow::{Context, Result};
use std::time::{Duration, Instant};
use stemflow_simulators::merlin::{MerlinSim, MerlinSimConfig, MerlinSource, Pacing};
use stemflow_simulators::specimen::Specimen;

/// Starts the simulator of `a.detector`, prints its ports, and serves until
/// `a.duration` has passed (or forever).
///
/// # Errors
/// The simulator could not start (a port in use, a recording that cannot be read).
pub fn serve(a: &SimOptions) -> Result<()> {
    match a.detector {
        DetectorKind::Merlin => sim_merlin(a),
        DetectorKind::Dectris => sim_dectris(a),
    }
}

/// The Merlin simulator on `a.ports` (control, data).
fn sim_merlin(a: &SimOptions) -> Result<()> {
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
    let sim = MerlinSim::start(cfg).context("starting the Merlin simulator")?;
    println!(
        "merlin simulator: control {} data {}",
        sim.control_addr(),
        sim.data_addr()
    );
    println!(
        "control_port={} data_port={}",
        sim.control_addr().port(),
        sim.data_addr().port()
    );
    serve_until(a.duration);
    let stats = sim.stats();
    println!(
        "served {} acquisitions, {} frames, {:.1} MB",
        stats.acquisitions,
        stats.frames_sent,
        stats.bytes_sent as f64 / 1e6
    );
    sim.stop();
    Ok(())
}

/// The DECTRIS simulator on `a.ports` (REST API, stream).
fn sim_dectris(a: &SimOptions) -> Result<()> {
    use stemflow_simulators::dectris::{DectrisSim, DectrisSimConfig};
    let cfg = DectrisSimConfig::from_cli(
        a.host,
        a.ports[0],
        a.ports[1],
        a.recording.clone(),
        a.nav_shape,
        a.sig_shape,
        a.fast,
    );
    let sim = DectrisSim::start(cfg).context("starting the DECTRIS simulator")?;
    println!(
        "dectris simulator: REST http://{} stream {}",
        sim.api_addr(),
        sim.stream_endpoint()
    );
    println!(
        "api_port={} stream_port={}",
        sim.api_addr().port(),
        sim.stream_addr().port()
    );
    serve_until(a.duration);
    let stats = sim.stats();
    println!(
        "served {} series, {} frames, {:.1} MB",
        stats.series,
        stats.frames_sent,
        stats.bytes_sent as f64 / 1e6
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
