//! The reduction pipeline of a live acquisition: receiver stacks → decode → UDFs (sum,
//! sum over signal, virtual BF + ADF, CoM) → snapshots, with raw frames into the recording.

use std::sync::Arc;
use stemflow_actors::orchestrator::{PipelineBuilder, PipelineInputs};
use stemflow_actors::processing::{LiveSnapshot, PipelineOutput};
use stemflow_core::SigShape;
use stemflow_core::sink::TileSink;
use stemflow_processing::{ComUdf, Mask, MasksUdf, Outcome, RunConfig, SumSigUdf, SumUdf, Udf};

/// Virtual detector geometry in detector pixels (centre and radii).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Geometry {
    /// Centre x (column), pixels.
    pub cx: f64,
    /// Centre y (row), pixels.
    pub cy: f64,
    /// Bright-field disk radius, pixels.
    pub bf_radius: f64,
    /// ADF ring inner radius, pixels.
    pub adf_inner: f64,
    /// ADF ring outer radius, pixels.
    pub adf_outer: f64,
    /// CoM mask radius, pixels.
    pub com_radius: f64,
}

impl Geometry {
    /// A geometry for frames whose bright-field disk is unknown: centred, BF radius 1/8 of
    /// the smaller side, ADF 1.5–3 × BF, CoM 1.25 × BF.
    pub fn centred(sig: SigShape) -> Self {
        let r = sig.rows.min(sig.cols) as f64 / 8.0;
        Self {
            cx: sig.cols as f64 / 2.0,
            cy: sig.rows as f64 / 2.0,
            bf_radius: r,
            adf_inner: 1.5 * r,
            adf_outer: 3.0 * r,
            com_radius: 1.25 * r,
        }
    }
}

/// The UDFs of the live view for `g`: `sum`, `sum_sig`, `virtual` (bf, adf), `com`.
pub fn udfs(g: &Geometry) -> Vec<Box<dyn Udf>> {
    vec![
        Box::new(SumUdf::new()),
        Box::new(SumSigUdf::new()),
        Box::new(
            MasksUdf::new([
                (
                    "bf",
                    Mask::Disk {
                        cx: g.cx,
                        cy: g.cy,
                        r: g.bf_radius,
                    },
                ),
                (
                    "adf",
                    Mask::Ring {
                        cx: g.cx,
                        cy: g.cy,
                        r_inner: g.adf_inner,
                        r_outer: g.adf_outer,
                    },
                ),
            ])
            .named("virtual"),
        ),
        Box::new(ComUdf::new(g.cx, g.cy, g.com_radius)),
    ]
}

fn run(
    inputs: PipelineInputs,
    g: Geometry,
    record_raw: bool,
) -> stemflow_actors::processing::PipelineJob {
    Box::new(move |cancel, snaps| {
        let cfg = RunConfig::new(inputs.nav_shape, inputs.sig_shape, inputs.dtype);
        let udfs = udfs(&g);
        let mut recording = inputs.recording;
        let sink: Option<&mut dyn TileSink> = if record_raw {
            recording.as_deref_mut().map(|r| r as &mut dyn TileSink)
        } else {
            None
        };
        let mut on_snapshot = |s: &stemflow_processing::Snapshot| {
            let _ = snaps.send(Arc::new(LiveSnapshot {
                frames_processed: s.frames_processed,
                results: s.results.clone(),
            }));
        };
        let summary = stemflow_processing::run_live(
            inputs.stacks,
            &udfs,
            &cfg,
            sink,
            &mut on_snapshot,
            &cancel,
        )
        .map_err(|e| e.to_string())?;
        let _ = snaps.send(Arc::new(LiveSnapshot {
            frames_processed: summary.frames_processed,
            results: summary.results.clone(),
        }));
        Ok(PipelineOutput {
            results: summary.results,
            frames_processed: summary.frames_processed,
            damaged: summary.damaged,
            cancelled: summary.outcome == Outcome::Cancelled,
            recording,
        })
    })
}

/// A pipeline builder with a fixed geometry.
pub fn builder(g: Geometry, record_raw: bool) -> PipelineBuilder {
    Arc::new(move |inputs| run(inputs, g, record_raw))
}

/// A pipeline builder whose geometry follows the frame shape announced at arm time.
pub fn builder_auto(record_raw: bool) -> PipelineBuilder {
    Arc::new(move |inputs| {
        let g = Geometry::centred(inputs.sig_shape);
        run(inputs, g, record_raw)
    })
}
