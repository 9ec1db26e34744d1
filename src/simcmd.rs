//! `stemflow sim merlin` and `stemflow sim dectris`: detector simulators standalone on
//! 127.0.0.1.

use crate::cli::{SimDectrisArgs, SimMerlinArgs};
use anyhow::{Context, Result};
use std::time::{Duration, Instant};
use stemflow_simulators::merlin::{MerlinSim, MerlinSimConfig, MerlinSource, Pacing};
use stemflow_simulators::specimen::Specimen;

/// Starts the simulator, prints its ports, and serves until `--duration-s` (or forever).
pub fn sim_merlin(a: &SimMerlinArgs) -> Result<()> {
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
    cfg.control_port = a.control_port;
    cfg.data_port = a.data_port;
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
    serve_until(a.duration_s);
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

/// Starts the DECTRIS simulator, prints its REST address and stream endpoint, and serves
/// until `--duration-s` (or forever).
pub fn sim_dectris(a: &SimDectrisArgs) -> Result<()> {
    use stemflow_simulators::dectris::{DectrisSim, DectrisSimConfig};
    let cfg = DectrisSimConfig::from_cli(
        a.host,
        a.api_port,
        a.stream_port,
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
    serve_until(a.duration_s);
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

/// Returns after `duration_s` seconds, or never (the user ends the simulator with Ctrl-C).
fn serve_until(duration_s: Option<f64>) {
    let t0 = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if duration_s.is_some_and(|d| t0.elapsed().as_secs_f64() >= d) {
            return;
        }
    }
}
