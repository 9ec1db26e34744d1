//! A whole instrument in a test: the orchestrator with given device factories, and a
//! pipeline that decodes and counts every frame (no reductions), so device tests check
//! synchronisation and accounting without depending on the processing engine.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use stemflow_actors::orchestrator::{
    AcquisitionRequest, Instrument, PipelineBuilder, RunFailure, RunRecord,
};
use stemflow_actors::processing::PipelineOutput;
use stemflow_actors::supervisor::InstrumentSpec;
use stemflow_core::detector::{ArmMode, DetectorSettings, DetectorTrigger};
use stemflow_core::devices::ScanSettings;
use stemflow_core::frame::Tile;

/// Decodes every stack and counts its frames; fails when the frames hold no counts at all.
pub fn counting_pipeline() -> PipelineBuilder {
    Arc::new(|inputs| {
        Box::new(move |_cancel: Arc<AtomicBool>, _snaps| {
            let mut frames = 0u64;
            let mut total = 0f64;
            let mut tile = Tile::zeros(0, 0, inputs.sig_shape, inputs.dtype);
            let mut rows = stemflow_core::csr::CsrRows::default();
            while let Ok(stack) = inputs.stacks.recv() {
                match stack {
                    stemflow_core::csr::Stack::Dense(stack) => {
                        tile.decode_from(&stack).map_err(|e| e.to_string())?;
                        frames += tile.n_frames as u64;
                        let view = tile.data.view();
                        total += (0..tile.data.len()).map(|i| view.get_f64(i)).sum::<f64>();
                    }
                    stemflow_core::csr::Stack::Csr(st) => {
                        rows.clear(st.first_frame, st.format.sig_shape);
                        for (i, c) in st.chunks.iter().enumerate() {
                            rows.push_chunk(&st.format, c, st.payload(i))
                                .map_err(|e| e.to_string())?;
                        }
                        frames += rows.n_frames() as u64;
                        total += rows.values.iter().map(|&v| f64::from(v)).sum::<f64>();
                    }
                }
            }
            if frames > 0 && total == 0.0 {
                return Err("every frame is empty".into());
            }
            Ok(PipelineOutput {
                results: Vec::new(),
                frames_processed: frames,
                damaged: Vec::new(),
                cancelled: false,
                unprocessed_from: None,
                recording: inputs.recording,
            })
        })
    })
}

/// An active-mode acquisition of one externally triggered frame per scan position.
pub fn external_trigger_request(scan: ScanSettings, label: &str) -> AcquisitionRequest {
    AcquisitionRequest {
        mode: ArmMode::Active,
        detector: DetectorSettings {
            nav_shape: scan.nav_shape,
            exposure_s: scan.dwell_time_s / 2.0,
            frame_time_s: scan.dwell_time_s,
            trigger: DetectorTrigger::ExternalRising,
            frames_per_trigger: 1,
            counter_depth: Some(12),
            extra: Default::default(),
        },
        scan: Some(scan),
        microscope: None,
        arm_deadline: Duration::from_secs(5),
        deadline_margin: Duration::from_secs(10),
        output: None,
        pipeline: counting_pipeline(),
        label: label.into(),
        nav_from_detector: false,
        ready_hook: None,
        calibration: Default::default(),
    }
}

/// Starts the instrument, runs the acquisitions in order, shuts it down.
///
/// # Panics
/// When the instrument does not start.
pub fn run(
    spec: InstrumentSpec,
    requests: Vec<AcquisitionRequest>,
) -> Vec<Result<RunRecord, RunFailure>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut inst = Instrument::start(spec).await.expect("instrument");
        let mut out = Vec::new();
        for r in requests {
            out.push(inst.run_acquisition(r).await);
        }
        inst.shutdown().await;
        out
    })
}

/// A Merlin simulator on ephemeral loopback ports serving `rows × cols` synthetic
/// 64 × 64 frames as fast as the client takes them, with `faults` injected; returned with
/// its control and data ports as command-line arguments.
///
/// # Panics
/// When the simulator cannot start.
pub fn fast_merlin_sim(
    rows: usize,
    cols: usize,
    faults: stemflow_simulators::merlin::MerlinFaults,
) -> (stemflow_simulators::merlin::MerlinSim, String, String) {
    use stemflow_simulators::merlin::{MerlinSim, MerlinSimConfig, MerlinSource, Pacing};
    let mut cfg = MerlinSimConfig::new(MerlinSource::Synthetic {
        specimen: stemflow_simulators::specimen::Specimen::builder().build(),
        nav_shape: stemflow_core::NavShape::new(rows, cols),
        sig_shape: stemflow_core::SigShape::new(64, 64),
        seed: 1,
    });
    cfg.pacing = Pacing::AsFastAsPossible;
    cfg.faults = faults;
    let sim = MerlinSim::start(cfg).expect("starting the Merlin simulator");
    let (c, d) = (sim.control_addr().port(), sim.data_addr().port());
    (sim, c.to_string(), d.to_string())
}
