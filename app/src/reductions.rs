//! The reduction pipeline of a live acquisition: receiver stacks → decode → UDFs → snapshots,
//! with raw frames into the recording. The UDFs are the live-view set (sum, sum over
//! signal, virtual BF + ADF, CoM) on a [`Geometry`], or those of a reduction spec
//! ([`Reductions`]), optionally over a region of interest.

use crate::options::ReductionChoice;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use stemflow_actors::orchestrator::{PipelineBuilder, PipelineInputs};
use stemflow_actors::processing::{LiveSnapshot, PipelineOutput};
use stemflow_core::sink::TileSink;
use stemflow_core::{DType, NavShape, SigShape};
use stemflow_processing::{Outcome, ReductionSpec, Roi, RoiRect, RoiSpec, RunConfig, Udf};
use stemflow_sequences::plan::PlanStep;

pub use stemflow_processing::udfs::Geometry;

/// The UDFs of the live view for `g`: `sum`, `sum_sig`, `virtual` (bf, adf), `com`
/// ([`Geometry::udfs`]).
pub fn udfs(g: &Geometry) -> Vec<Box<dyn Udf>> {
    g.udfs()
}

/// Which UDFs a run computes and over which scan positions: a reduction spec's (else the
/// live-view set of [`udfs`]), with the ROI of the spec or the one given to replace it.
#[derive(Clone, Debug, Default)]
pub struct Reductions {
    /// The spec file (for messages and its folder) and its contents; `None`: the
    /// live-view set.
    pub spec: Option<(PathBuf, ReductionSpec)>,
    /// A ROI replacing the spec's, with the folder its relative mask path resolves against.
    pub roi: Option<(RoiSpec, PathBuf)>,
    /// Time between two live snapshots (`--snapshot-interval-ms`); `None`: the engine's
    /// default (100 ms).
    pub snapshot_interval: Option<Duration>,
}

impl Reductions {
    /// Reads the spec file `spec` (if any) and takes a ROI from `roi_rect` or `roi_mask`
    /// (a `.npy` file; relative: to the working directory), which replaces the spec's.
    ///
    /// # Errors
    /// The spec cannot be read or parsed (the error names the file, entry and key).
    pub fn load(
        spec: Option<&Path>,
        roi_rect: Option<RoiRect>,
        roi_mask: Option<&Path>,
    ) -> Result<Self> {
        let spec = spec
            .map(|p| -> Result<_> { Ok((p.to_path_buf(), ReductionSpec::load(p)?)) })
            .transpose()?;
        let roi = match (roi_rect, roi_mask) {
            (Some(r), _) => Some((RoiSpec::rect(r), PathBuf::from("."))),
            (None, Some(m)) => Some((RoiSpec::mask_file(m), PathBuf::from("."))),
            (None, None) => None,
        };
        Ok(Self {
            spec,
            roi,
            snapshot_interval: None,
        })
    }

    /// The reductions `a` alone (no profile): its spec, ROI and snapshot interval.
    ///
    /// # Errors
    /// As [`Reductions::load`].
    pub fn from_choice(a: &ReductionChoice) -> Result<Self> {
        Self::default().with_choice(a)
    }

    /// The engine settings of one run over `nav` frames of `sig` pixels of `dtype`: the
    /// snapshot interval and the ROI `roi` (as [`Reductions::build`] returned it).
    pub fn run_config(
        &self,
        nav: NavShape,
        sig: SigShape,
        dtype: DType,
        roi: Option<Roi>,
    ) -> RunConfig {
        let mut cfg = RunConfig::new(nav, sig, dtype);
        if let Some(i) = self.snapshot_interval {
            cfg.snapshot_interval = i;
        }
        if let Some(roi) = roi {
            cfg = cfg.with_roi(roi);
        }
        cfg
    }

    /// These reductions (a profile's) with the user's choices `a`: its spec replaces this
    /// one's; a ROI given alone keeps this spec and replaces its ROI.
    ///
    /// # Errors
    /// As [`Reductions::load`].
    pub fn with_choice(self, a: &ReductionChoice) -> Result<Self> {
        let snapshot_interval = Some(Duration::from_millis(a.snapshot_interval_ms));
        if a.is_empty() {
            return Ok(Self {
                snapshot_interval,
                ..self
            });
        }
        let base = match (&a.spec, self.spec) {
            (Some(p), _) => Some(p.clone()),
            (None, spec) => spec.map(|(p, _)| p),
        };
        Ok(Self {
            snapshot_interval,
            ..Self::load(base.as_deref(), a.roi_rect, a.roi_mask.as_deref())?
        })
    }

    /// Builds the UDFs and the ROI for every acquisition of `steps` (frames of `sig`; each
    /// scan's shape from the `ConfigureDetector` before it), so that a spec or a ROI that
    /// does not fit a scan fails before anything runs rather than when it is armed.
    ///
    /// # Errors
    /// As [`Reductions::build`], naming the acquisition.
    pub fn check_plan(&self, g: &Geometry, sig: SigShape, steps: &[PlanStep]) -> Result<()> {
        if self.is_default() {
            return Ok(());
        }
        let mut nav = None;
        for step in steps {
            match step {
                PlanStep::ConfigureDetector(d) => nav = Some(d.nav_shape),
                PlanStep::Acquire { label, .. } => {
                    if let Some(nav) = nav {
                        self.build(g, sig, nav)
                            .with_context(|| format!("acquisition `{label}`"))?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// True for the live-view set over the whole scan.
    pub fn is_default(&self) -> bool {
        self.spec.is_none() && self.roi.is_none()
    }

    /// A line saying what runs, for the terminal.
    pub fn describe(&self) -> String {
        let what = match &self.spec {
            Some((p, s)) => format!(
                "reductions from {}: {}",
                p.display(),
                s.udf
                    .iter()
                    .map(|u| u.kind())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => "reductions: sum, sum_sig, virtual (bf, adf), com".to_string(),
        };
        match (
            &self.roi,
            self.spec.as_ref().and_then(|(_, s)| s.roi.as_ref()),
        ) {
            (Some((r, _)), _) | (None, Some(r)) => format!("{what}; ROI {}", describe_roi(r)),
            (None, None) => what,
        }
    }

    /// The UDFs and the ROI for frames `sig` and scan `nav`; without a spec, [`udfs`] on
    /// `g`.
    ///
    /// # Errors
    /// The spec's parameters do not fit the data (the error names the spec file, the entry,
    /// the key, expected and found), a mask file cannot be read, the ROI does not fit the
    /// scan.
    pub fn build(
        &self,
        g: &Geometry,
        sig: SigShape,
        nav: NavShape,
    ) -> Result<stemflow_processing::spec::Built> {
        let (list, mut roi) = match &self.spec {
            Some((path, spec)) => {
                let dir = path.parent().unwrap_or(Path::new(""));
                spec.build(sig, nav, dir).with_context(|| {
                    format!(
                        "reduction spec {} for {sig} frames on a {nav} scan",
                        path.display()
                    )
                })?
            }
            None => (udfs(g), None),
        };
        if let Some((r, dir)) = &self.roi {
            roi = Some(
                r.build(nav, dir)
                    .context("the ROI given on the command line")?,
            );
        }
        Ok((list, roi))
    }
}

fn describe_roi(r: &RoiSpec) -> String {
    if let Some(rect) = r.rect {
        format!(
            "rows {}..{}, cols {}..{}",
            rect.rows[0], rect.rows[1], rect.cols[0], rect.cols[1]
        )
    } else if let Some(m) = &r.mask {
        format!("mask {}", m.display())
    } else {
        format!("{} positions", r.coords.as_ref().map_or(0, Vec::len))
    }
}

fn run(
    inputs: PipelineInputs,
    g: Geometry,
    reductions: Arc<Reductions>,
    record_raw: bool,
) -> stemflow_actors::processing::PipelineJob {
    Box::new(move |cancel, snaps| {
        let (udfs, roi) = reductions
            .build(&g, inputs.sig_shape, inputs.nav_shape)
            .map_err(|e| format!("{e:#}"))?;
        let cfg = reductions.run_config(inputs.nav_shape, inputs.sig_shape, inputs.dtype, roi);
        let (output, _) = run_pipeline(
            inputs.stacks,
            inputs.recording,
            &udfs,
            &cfg,
            record_raw,
            &cancel,
            &snaps,
            &mut |_| {},
        )?;
        Ok(output)
    })
}

/// The body of a live pipeline: runs `udfs` with `cfg` on the acquisition's `stacks`, the
/// raw frames into `recording` when `record_raw`; every snapshot, and the final results,
/// go to the orchestrator through `snaps` and to `on_snapshot` (a front end's own view).
///
/// Returns the pipeline's output (the recording handed back) and the engine's summary.
///
/// # Errors
/// The engine's error, as text.
#[allow(clippy::too_many_arguments)]
pub fn run_pipeline(
    stacks: crossbeam_channel::Receiver<stemflow_core::csr::Stack>,
    mut recording: Option<Box<dyn stemflow_actors::recorder::Recording>>,
    udfs: &[Box<dyn Udf>],
    cfg: &RunConfig,
    record_raw: bool,
    cancel: &std::sync::atomic::AtomicBool,
    snaps: &tokio::sync::watch::Sender<Arc<LiveSnapshot>>,
    on_snapshot: &mut dyn FnMut(&stemflow_processing::Snapshot),
) -> Result<(PipelineOutput, stemflow_processing::RunSummary), String> {
    let sink: Option<&mut dyn TileSink> = if record_raw {
        recording.as_deref_mut().map(|r| r as &mut dyn TileSink)
    } else {
        None
    };
    let mut on_snap = |s: &stemflow_processing::Snapshot| {
        let _ = snaps.send(Arc::new(LiveSnapshot {
            frames_processed: s.frames_processed,
            results: s.results.clone(),
        }));
        on_snapshot(s);
    };
    let summary = stemflow_processing::run_live(stacks, udfs, cfg, sink, &mut on_snap, cancel)
        .map_err(|e| e.to_string())?;
    let _ = snaps.send(Arc::new(LiveSnapshot {
        frames_processed: summary.frames_processed,
        results: summary.results.clone(),
    }));
    let output = PipelineOutput {
        results: summary.results.clone(),
        frames_processed: summary.frames_processed,
        damaged: summary.damaged.clone(),
        cancelled: summary.outcome == Outcome::Cancelled,
        unprocessed_from: summary.unprocessed_from,
        recording,
    };
    Ok((output, summary))
}

/// A pipeline builder running `reductions`, built for the shapes announced at arm time; the
/// live-view set (no spec) uses `g`, else [`Geometry::centred`] on the announced frame
/// shape. A spec that does not fit the announced shapes fails the run with its error.
pub fn builder_with(
    g: Option<Geometry>,
    reductions: Arc<Reductions>,
    record_raw: bool,
) -> PipelineBuilder {
    Arc::new(move |inputs| {
        let g = g.unwrap_or_else(|| Geometry::centred(inputs.sig_shape));
        run(inputs, g, Arc::clone(&reductions), record_raw)
    })
}
