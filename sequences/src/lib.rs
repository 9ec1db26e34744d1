//! Plans: experiments written in Rust with typed parameters that emit typed steps for the
//! orchestrator, so a plan can be summarised (dry-run) without touching hardware.
//!
//! # Layout
//! - [`PlanStep`]: one typed command (apply microscope settings, configure scan, configure
//!   detector, acquire).
//! - [`Stem4dScanPlan`]: the basic 4D-STEM scan; [`PlanSummary`]: its estimated duration and
//!   data volume.

use serde::Serialize;
use std::fmt;
use stemflow_core::detector::{DetectorSettings, DetectorTrigger};
use stemflow_core::devices::{MicroscopeSettings, ScanSettings, TriggerOutput};
use stemflow_core::{DType, NavShape, SigShape};

/// Errors building a plan.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    /// A parameter is out of range.
    #[error("plan `{plan}`: parameter `{param}` = {value}: {problem}")]
    Parameter {
        /// The plan.
        plan: &'static str,
        /// The parameter.
        param: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        problem: String,
    },
}

/// One typed step of a plan, executed by the orchestrator in order.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum PlanStep {
    /// Apply and read back microscope settings.
    ApplyMicroscope(MicroscopeSettings),
    /// Configure the scan engine (the trigger source).
    ConfigureScan(ScanSettings),
    /// Configure the detector.
    ConfigureDetector(DetectorSettings),
    /// Arm, trigger and read out one acquisition of `frames` frames.
    Acquire {
        /// Frames expected.
        frames: u64,
    },
}

impl fmt::Display for PlanStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanStep::ApplyMicroscope(m) => write!(f, "microscope: apply {m:?}"),
            PlanStep::ConfigureScan(s) => write!(
                f,
                "scan engine: {} positions, dwell {:.1} µs, flyback {:.1} µs, {:?} trigger",
                s.nav_shape,
                s.dwell_time_s * 1e6,
                s.flyback_s * 1e6,
                s.trigger
            ),
            PlanStep::ConfigureDetector(d) => write!(
                f,
                "detector: {} frames, exposure {:.1} µs, frame time {:.1} µs, trigger {:?}, counter depth {:?}",
                d.nav_shape.len(),
                d.exposure_s * 1e6,
                d.frame_time_s * 1e6,
                d.trigger,
                d.counter_depth
            ),
            PlanStep::Acquire { frames } => write!(f, "acquire {frames} frames"),
        }
    }
}

/// Estimated cost of a plan.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanSummary {
    /// Estimated duration, s.
    pub duration_s: f64,
    /// Frames.
    pub frames: u64,
    /// Raw frame data, bytes.
    pub data_bytes: u64,
}

/// The basic 4D-STEM scan: apply optics, configure the scan engine as pixel-trigger source,
/// configure the detector for one frame per scan position, acquire.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stem4dScanPlan {
    /// Scan grid.
    pub nav_shape: NavShape,
    /// Frame shape (for the data volume estimate).
    pub sig_shape: SigShape,
    /// Decoded pixel type (for the data volume estimate).
    pub dtype: DType,
    /// Dwell time per position, s.
    pub dwell_time_s: f64,
    /// Flyback per line, s.
    pub flyback_s: f64,
    /// Detector exposure per frame, s (≤ dwell time when triggered by the scan).
    pub exposure_s: f64,
    /// Detector counter depth, bits.
    pub counter_depth: Option<u32>,
    /// Optics to apply first.
    pub microscope: Option<MicroscopeSettings>,
}

impl Stem4dScanPlan {
    /// Checks the parameters.
    ///
    /// # Errors
    /// [`PlanError::Parameter`] naming the parameter and the problem.
    pub fn validate(&self) -> Result<(), PlanError> {
        let err = |param, value: String, problem: &str| PlanError::Parameter {
            plan: "stem_4d_scan",
            param,
            value,
            problem: problem.into(),
        };
        if self.nav_shape.is_empty() {
            return Err(err(
                "nav_shape",
                self.nav_shape.to_string(),
                "must have ≥ 1 position",
            ));
        }
        if self.dwell_time_s < 0.0 {
            return Err(err(
                "dwell_time_s",
                self.dwell_time_s.to_string(),
                "must be ≥ 0",
            ));
        }
        if self.dwell_time_s > 0.0 && self.exposure_s > self.dwell_time_s {
            return Err(err(
                "exposure_s",
                self.exposure_s.to_string(),
                "must not exceed the dwell time (one frame per trigger)",
            ));
        }
        Ok(())
    }

    /// The steps, in order.
    ///
    /// # Errors
    /// [`PlanError`] from [`validate`](Self::validate).
    pub fn steps(&self) -> Result<Vec<PlanStep>, PlanError> {
        self.validate()?;
        let mut steps = Vec::new();
        if let Some(m) = &self.microscope {
            steps.push(PlanStep::ApplyMicroscope(m.clone()));
        }
        steps.push(PlanStep::ConfigureScan(self.scan_settings()));
        steps.push(PlanStep::ConfigureDetector(self.detector_settings()));
        steps.push(PlanStep::Acquire {
            frames: self.nav_shape.len() as u64,
        });
        Ok(steps)
    }

    /// The scan engine settings of this plan.
    pub fn scan_settings(&self) -> ScanSettings {
        ScanSettings {
            nav_shape: self.nav_shape,
            dwell_time_s: self.dwell_time_s,
            flyback_s: self.flyback_s,
            trigger: TriggerOutput::Pixel,
        }
    }

    /// The detector settings of this plan (one frame per pixel trigger).
    pub fn detector_settings(&self) -> DetectorSettings {
        DetectorSettings {
            nav_shape: self.nav_shape,
            exposure_s: self.exposure_s,
            frame_time_s: self.dwell_time_s.max(self.exposure_s),
            trigger: DetectorTrigger::ExternalRising,
            frames_per_trigger: 1,
            counter_depth: self.counter_depth,
            extra: Default::default(),
        }
    }

    /// Estimated duration and data volume.
    pub fn summary(&self) -> PlanSummary {
        let frames = self.nav_shape.len() as u64;
        PlanSummary {
            duration_s: self.scan_settings().duration_s(),
            frames,
            data_bytes: frames * (self.sig_shape.len() * self.dtype.size()) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Stem4dScanPlan {
        Stem4dScanPlan {
            nav_shape: NavShape::new(64, 64),
            sig_shape: SigShape::new(256, 256),
            dtype: DType::U16,
            dwell_time_s: 1e-3,
            flyback_s: 1e-3,
            exposure_s: 0.8e-3,
            counter_depth: Some(12),
            microscope: None,
        }
    }

    #[test]
    fn steps_and_summary() {
        let p = plan();
        let steps = p.steps().unwrap();
        assert_eq!(steps.len(), 3);
        assert_eq!(steps[2], PlanStep::Acquire { frames: 4096 });
        let s = p.summary();
        assert!((s.duration_s - (4096.0e-3 + 64.0e-3)).abs() < 1e-9);
        assert_eq!(s.data_bytes, 4096 * 256 * 256 * 2);
        assert!(steps[1].to_string().contains("4096 frames"));
    }

    #[test]
    fn exposure_longer_than_dwell_is_rejected() {
        let mut p = plan();
        p.exposure_s = 2e-3;
        let e = p.steps().unwrap_err().to_string();
        assert!(e.contains("exposure_s") && e.contains("dwell"), "{e}");
    }
}
