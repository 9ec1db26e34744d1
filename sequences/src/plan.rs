//! Plans written in Rust with typed parameters. Each plan expands into typed [`PlanStep`]s
//! for the orchestrator, so it can be listed and costed (dry-run) without hardware.
//!
//! Plans: [`Stem4dScanPlan`] (one scan), [`DarkReferencePlan`] (beam blanked),
//! [`DefocusSeriesPlan`], [`RepeatedScanPlan`] (time series) and [`SubRegionRescanPlan`];
//! [`Plan`] is any of them, [`PlanSpec`] their TOML form.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
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

fn param_err(plan: &'static str, param: &'static str, value: String, problem: &str) -> PlanError {
    PlanError::Parameter {
        plan,
        param,
        value,
        problem: problem.into(),
    }
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
    /// Arm, trigger and read out one acquisition of `frames` frames with the settings of the
    /// last `ConfigureScan` / `ConfigureDetector` steps.
    Acquire {
        /// Frames expected.
        frames: u64,
        /// What this acquisition is (`scan`, `dark`, `defocus -50 nm`, …): stored in the
        /// metadata and used in output file names.
        label: String,
    },
    /// Wait, s (time series intervals).
    Wait {
        /// Seconds.
        seconds: f64,
    },
}

/// Writes the settings that are given, with units (`defocus -50.0 nm, beam blanked`).
pub fn describe_microscope(m: &MicroscopeSettings) -> String {
    let mut parts = Vec::new();
    if let Some(v) = m.high_tension_v {
        parts.push(format!("high tension {:.0} kV", v / 1e3));
    }
    if let Some(v) = m.camera_length_m {
        parts.push(format!("camera length {:.0} mm", v * 1e3));
    }
    if let Some(v) = m.convergence_angle_rad {
        parts.push(format!("convergence {:.2} mrad", v * 1e3));
    }
    if let Some(v) = m.magnification {
        parts.push(format!("magnification {v:.0}×"));
    }
    if let Some(v) = m.defocus_m {
        parts.push(format!("defocus {:.1} nm", v * 1e9));
    }
    if let Some(b) = m.beam_blanked {
        parts.push(if b { "beam blanked" } else { "beam unblanked" }.into());
    }
    if parts.is_empty() {
        "no change".into()
    } else {
        parts.join(", ")
    }
}

impl fmt::Display for PlanStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanStep::ApplyMicroscope(m) => write!(f, "microscope: {}", describe_microscope(m)),
            PlanStep::ConfigureScan(s) => write!(
                f,
                "scan engine: {} positions, dwell {:.1} µs, flyback {:.1} µs, {} trigger",
                s.nav_shape,
                s.dwell_time_s * 1e6,
                s.flyback_s * 1e6,
                s.trigger
            ),
            PlanStep::ConfigureDetector(d) => write!(
                f,
                "detector: {} frames, exposure {:.1} µs, frame time {:.1} µs, trigger {}, counter depth {}",
                d.nav_shape.len(),
                d.exposure_s * 1e6,
                d.frame_time_s * 1e6,
                d.trigger,
                d.counter_depth.map_or_else(
                    || "as the detector reports".to_string(),
                    |b| format!("{b} bits")
                )
            ),
            PlanStep::Acquire { frames, label } => write!(f, "acquire `{label}`: {frames} frames"),
            PlanStep::Wait { seconds } => write!(f, "wait {seconds:.3} s"),
        }
    }
}

/// Estimated cost of a plan: scan time plus waits (configuration overhead not included),
/// frames and raw data volume.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanSummary {
    /// Estimated duration, s.
    pub duration_s: f64,
    /// Frames.
    pub frames: u64,
    /// Raw frame data, bytes.
    pub data_bytes: u64,
    /// Acquisitions.
    pub acquisitions: u64,
}

impl PlanSummary {
    /// Adds another summary (for a queue).
    pub fn add(&mut self, o: &PlanSummary) {
        self.duration_s += o.duration_s;
        self.frames += o.frames;
        self.data_bytes += o.data_bytes;
        self.acquisitions += o.acquisitions;
    }
}

impl fmt::Display for PlanSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "estimated {:.2} s, {} acquisition(s), {} frames, {:.1} MB",
            self.duration_s,
            self.acquisitions,
            self.frames,
            self.data_bytes as f64 / 1e6
        )
    }
}

/// Costs `steps`: each acquisition lasts the scan time of the last configured scan (or
/// frames × frame time without a scan); each frame is `frame_bytes` bytes.
pub fn summarize(steps: &[PlanStep], frame_bytes: u64) -> PlanSummary {
    let mut s = PlanSummary {
        duration_s: 0.0,
        frames: 0,
        data_bytes: 0,
        acquisitions: 0,
    };
    let mut scan: Option<&ScanSettings> = None;
    let mut det: Option<&DetectorSettings> = None;
    for step in steps {
        match step {
            PlanStep::ConfigureScan(x) => scan = Some(x),
            PlanStep::ConfigureDetector(d) => det = Some(d),
            PlanStep::Acquire { frames, .. } => {
                s.acquisitions += 1;
                s.frames += frames;
                s.data_bytes += frames * frame_bytes;
                s.duration_s += match (scan, det) {
                    (Some(x), _) => x.duration_s(),
                    (None, Some(d)) => *frames as f64 * d.frame_time_s,
                    (None, None) => 0.0,
                };
            }
            PlanStep::Wait { seconds } => s.duration_s += seconds,
            PlanStep::ApplyMicroscope(_) => {}
        }
    }
    s
}

/// What the orchestrator gets for one acquisition of a plan.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanAcquisition {
    /// What it is (`scan`, `dark`, `defocus -50.0 nm`, …).
    pub label: String,
    /// Scan engine settings (the trigger source), if a scan is run.
    pub scan: Option<ScanSettings>,
    /// Detector settings (frames = `detector.nav_shape.len()`).
    pub detector: DetectorSettings,
    /// HDF5 file to record into, if any (set by the session).
    pub output: Option<PathBuf>,
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
        self.validate_as("stem_4d_scan")
    }

    fn validate_as(&self, plan: &'static str) -> Result<(), PlanError> {
        if self.nav_shape.is_empty() {
            return Err(param_err(
                plan,
                "nav_shape",
                self.nav_shape.to_string(),
                "must have ≥ 1 position",
            ));
        }
        if self.sig_shape.is_empty() {
            return Err(param_err(
                plan,
                "sig_shape",
                self.sig_shape.to_string(),
                "must have ≥ 1 pixel",
            ));
        }
        for (param, v) in [
            ("dwell_time_s", self.dwell_time_s),
            ("flyback_s", self.flyback_s),
            ("exposure_s", self.exposure_s),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(param_err(
                    plan,
                    param,
                    v.to_string(),
                    "must be finite and ≥ 0",
                ));
            }
        }
        if self.dwell_time_s > 0.0 && self.exposure_s > self.dwell_time_s {
            return Err(param_err(
                plan,
                "exposure_s",
                self.exposure_s.to_string(),
                "must not exceed the dwell time (one frame per trigger)",
            ));
        }
        if let Some(d) = self.counter_depth
            && ![1, 6, 12, 24].contains(&d)
        {
            return Err(param_err(
                plan,
                "counter_depth",
                d.to_string(),
                "must be 1, 6, 12 or 24 bits",
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
        self.push_acquisition(&mut steps, "scan");
        Ok(steps)
    }

    fn push_acquisition(&self, steps: &mut Vec<PlanStep>, label: &str) {
        steps.push(PlanStep::ConfigureScan(self.scan_settings()));
        steps.push(PlanStep::ConfigureDetector(self.detector_settings()));
        steps.push(PlanStep::Acquire {
            frames: self.nav_shape.len() as u64,
            label: label.into(),
        });
    }

    /// The scan engine settings of this plan.
    pub fn scan_settings(&self) -> ScanSettings {
        ScanSettings {
            nav_shape: self.nav_shape,
            dwell_time_s: self.dwell_time_s,
            flyback_s: self.flyback_s,
            trigger: TriggerOutput::Pixel,
            region_origin: None,
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

    /// Bytes of one decoded frame.
    pub fn frame_bytes(&self) -> u64 {
        (self.sig_shape.len() * self.dtype.size()) as u64
    }

    /// Estimated duration and data volume.
    pub fn summary(&self) -> PlanSummary {
        let frames = self.nav_shape.len() as u64;
        PlanSummary {
            duration_s: self.scan_settings().duration_s(),
            frames,
            data_bytes: frames * self.frame_bytes(),
            acquisitions: 1,
        }
    }
}

/// A dark reference: blank the beam, acquire `scan` (usually a small grid), unblank.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DarkReferencePlan {
    /// The acquisition (its microscope settings are applied with the beam blanked).
    pub scan: Stem4dScanPlan,
}

impl DarkReferencePlan {
    /// The steps: blank (with the scan's optics), acquire `dark`, unblank.
    ///
    /// # Errors
    /// [`PlanError::Parameter`] for an invalid scan.
    pub fn steps(&self) -> Result<Vec<PlanStep>, PlanError> {
        self.scan.validate_as("dark_reference")?;
        let mut blank = self.scan.microscope.clone().unwrap_or_default();
        blank.beam_blanked = Some(true);
        let mut steps = vec![PlanStep::ApplyMicroscope(blank)];
        self.scan.push_acquisition(&mut steps, "dark");
        steps.push(PlanStep::ApplyMicroscope(MicroscopeSettings {
            beam_blanked: Some(false),
            ..Default::default()
        }));
        Ok(steps)
    }
}

/// A defocus series: one scan per defocus value, in the order given.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DefocusSeriesPlan {
    /// The scan repeated at every defocus (its microscope settings are applied first).
    pub scan: Stem4dScanPlan,
    /// Defocus values, m (negative = underfocus), each within ±100 µm.
    pub defocus_m: Vec<f64>,
}

impl DefocusSeriesPlan {
    /// The steps: optics, then per defocus value: set defocus, acquire `defocus N nm`.
    ///
    /// # Errors
    /// [`PlanError::Parameter`] for an invalid scan, an empty series or a value that is not
    /// finite or beyond ±100 µm.
    pub fn steps(&self) -> Result<Vec<PlanStep>, PlanError> {
        const P: &str = "defocus_series";
        self.scan.validate_as(P)?;
        if self.defocus_m.is_empty() {
            return Err(param_err(P, "defocus_m", "[]".into(), "needs ≥ 1 value"));
        }
        if let Some(v) = self
            .defocus_m
            .iter()
            .find(|v| !(v.is_finite() && v.abs() <= 100e-6))
        {
            return Err(param_err(
                P,
                "defocus_m",
                v.to_string(),
                "must be within ±100 µm (±1e-4 m)",
            ));
        }
        let mut steps = Vec::new();
        if let Some(m) = &self.scan.microscope {
            steps.push(PlanStep::ApplyMicroscope(m.clone()));
        }
        for &df in &self.defocus_m {
            steps.push(PlanStep::ApplyMicroscope(MicroscopeSettings {
                defocus_m: Some(df),
                ..Default::default()
            }));
            self.scan
                .push_acquisition(&mut steps, &format!("defocus {:.1} nm", df * 1e9));
        }
        Ok(steps)
    }
}

/// A time series: the same scan `repeats` times, `interval_s` apart (end to start).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RepeatedScanPlan {
    /// The scan.
    pub scan: Stem4dScanPlan,
    /// Number of scans, ≥ 1.
    pub repeats: u32,
    /// Wait between scans, s.
    pub interval_s: f64,
}

impl RepeatedScanPlan {
    /// The steps: optics, then `repeat i` acquisitions with waits between.
    ///
    /// # Errors
    /// [`PlanError::Parameter`] for an invalid scan, 0 repeats or a negative interval.
    pub fn steps(&self) -> Result<Vec<PlanStep>, PlanError> {
        const P: &str = "repeated_scan";
        self.scan.validate_as(P)?;
        if self.repeats == 0 {
            return Err(param_err(P, "repeats", "0".into(), "must be ≥ 1"));
        }
        if !(self.interval_s.is_finite() && self.interval_s >= 0.0) {
            return Err(param_err(
                P,
                "interval_s",
                self.interval_s.to_string(),
                "must be finite and ≥ 0",
            ));
        }
        let mut steps = Vec::new();
        if let Some(m) = &self.scan.microscope {
            steps.push(PlanStep::ApplyMicroscope(m.clone()));
        }
        for i in 0..self.repeats {
            if i > 0 && self.interval_s > 0.0 {
                steps.push(PlanStep::Wait {
                    seconds: self.interval_s,
                });
            }
            self.scan
                .push_acquisition(&mut steps, &format!("repeat {i}"));
        }
        Ok(steps)
    }
}

/// A rectangle of the scan grid, in scan positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// First row.
    pub row: usize,
    /// First column.
    pub col: usize,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
}

/// A rescan of a sub-region of a previous scan's grid, typically with a longer dwell time.
/// The scan engine scans `region.rows × region.cols` positions; the region's origin is
/// recorded in the acquisition label (the scan settings carry no offset yet).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SubRegionRescanPlan {
    /// The full scan (its `nav_shape` is the grid the region lies in).
    pub scan: Stem4dScanPlan,
    /// The region, inside `scan.nav_shape`.
    pub region: Region,
}

impl SubRegionRescanPlan {
    /// The steps: optics, acquire `region (row, col) rows×cols`.
    ///
    /// # Errors
    /// [`PlanError::Parameter`] for an invalid scan or a region that is empty or leaves
    /// the grid.
    pub fn steps(&self) -> Result<Vec<PlanStep>, PlanError> {
        const P: &str = "subregion_rescan";
        self.scan.validate_as(P)?;
        let r = self.region;
        let n = self.scan.nav_shape;
        if r.rows == 0 || r.cols == 0 || r.row + r.rows > n.rows || r.col + r.cols > n.cols {
            return Err(param_err(
                P,
                "region",
                format!(
                    "rows {}..{}, cols {}..{}",
                    r.row,
                    r.row + r.rows,
                    r.col,
                    r.col + r.cols
                ),
                &format!("must be non-empty and inside the {n} scan grid"),
            ));
        }
        let mut sub = self.scan.clone();
        sub.nav_shape = NavShape::new(r.rows, r.cols);
        let mut steps = Vec::new();
        if let Some(m) = &self.scan.microscope {
            steps.push(PlanStep::ApplyMicroscope(m.clone()));
        }
        sub.push_acquisition(
            &mut steps,
            &format!("region ({}, {}) {}x{} of {n}", r.row, r.col, r.rows, r.cols),
        );
        // The scan engine scans the region where it lies in the full field.
        for step in &mut steps {
            if let PlanStep::ConfigureScan(s) = step {
                s.region_origin = Some((r.row, r.col));
            }
        }
        Ok(steps)
    }
}

/// Any plan.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Plan {
    /// One 4D-STEM scan.
    Stem4dScan(Stem4dScanPlan),
    /// A dark reference.
    DarkReference(DarkReferencePlan),
    /// A defocus series.
    DefocusSeries(DefocusSeriesPlan),
    /// A repeated scan (time series).
    RepeatedScan(RepeatedScanPlan),
    /// A sub-region rescan.
    SubRegionRescan(SubRegionRescanPlan),
}

impl Plan {
    /// The plan's name as written in TOML (`stem_4d_scan`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Plan::Stem4dScan(_) => "stem_4d_scan",
            Plan::DarkReference(_) => "dark_reference",
            Plan::DefocusSeries(_) => "defocus_series",
            Plan::RepeatedScan(_) => "repeated_scan",
            Plan::SubRegionRescan(_) => "subregion_rescan",
        }
    }

    /// The scan every acquisition of the plan is based on.
    pub fn base(&self) -> &Stem4dScanPlan {
        match self {
            Plan::Stem4dScan(p) => p,
            Plan::DarkReference(p) => &p.scan,
            Plan::DefocusSeries(p) => &p.scan,
            Plan::RepeatedScan(p) => &p.scan,
            Plan::SubRegionRescan(p) => &p.scan,
        }
    }

    /// The steps, in order.
    ///
    /// # Errors
    /// [`PlanError::Parameter`] naming the plan, the parameter and the problem.
    pub fn steps(&self) -> Result<Vec<PlanStep>, PlanError> {
        match self {
            Plan::Stem4dScan(p) => p.steps(),
            Plan::DarkReference(p) => p.steps(),
            Plan::DefocusSeries(p) => p.steps(),
            Plan::RepeatedScan(p) => p.steps(),
            Plan::SubRegionRescan(p) => p.steps(),
        }
    }

    /// Estimated duration and data volume.
    ///
    /// # Errors
    /// [`PlanError`] from [`steps`](Self::steps).
    pub fn summary(&self) -> Result<PlanSummary, PlanError> {
        Ok(summarize(&self.steps()?, self.base().frame_bytes()))
    }

    /// The dry-run text: every step with its device settings, then the summary.
    ///
    /// # Errors
    /// [`PlanError`] from [`steps`](Self::steps).
    pub fn dry_run(&self) -> Result<String, PlanError> {
        let steps = self.steps()?;
        let mut out = format!("plan {}:\n", self.name());
        for (i, s) in steps.iter().enumerate() {
            out.push_str(&format!("  {:>3}. {s}\n", i + 1));
        }
        out.push_str(&format!(
            "  {}\n",
            summarize(&steps, self.base().frame_bytes())
        ));
        Ok(out)
    }
}

/// A grid shape in TOML: `"8x8"` or `[8, 8]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ShapeSpec {
    /// `[rows, cols]`.
    Pair([usize; 2]),
    /// `"ROWSxCOLS"`.
    Text(String),
}

/// The TOML form of a plan invocation: the plan's name and its parameters; parameters not
/// given come from the instrument's defaults ([`ScanDefaults`]). Unknown keys are errors.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSpec {
    /// `stem_4d_scan`, `dark_reference`, `defocus_series`, `repeated_scan` or
    /// `subregion_rescan`.
    pub plan: String,
    /// Scan grid, `"ROWSxCOLS"` or `[rows, cols]`.
    pub nav_shape: Option<ShapeSpec>,
    /// Frame shape (data volume estimate).
    pub sig_shape: Option<ShapeSpec>,
    /// Dwell time per position, s.
    pub dwell_time_s: Option<f64>,
    /// Flyback per line, s.
    pub flyback_s: Option<f64>,
    /// Exposure per frame, s.
    pub exposure_s: Option<f64>,
    /// Counter depth, bits (1, 6, 12, 24).
    pub counter_depth: Option<u32>,
    /// Microscope settings applied first (`[item.microscope]`).
    pub microscope: Option<MicroscopeSettings>,
    /// Defocus values, m (`defocus_series`; other plans: the defocus to apply).
    pub defocus_m: Option<Vec<f64>>,
    /// Scans (`repeated_scan`).
    pub repeats: Option<u32>,
    /// Wait between scans, s (`repeated_scan`).
    pub interval_s: Option<f64>,
    /// The region (`subregion_rescan`).
    pub region: Option<Region>,
}

impl ShapeSpec {
    fn parse(&self, key: &'static str, plan: &'static str) -> Result<[usize; 2], PlanError> {
        match self {
            ShapeSpec::Pair(p) => Ok(*p),
            ShapeSpec::Text(t) => {
                let (r, c) = t
                    .split_once(['x', 'X', '×'])
                    .ok_or_else(|| param_err(plan, key, t.clone(), "expected ROWSxCOLS"))?;
                match (r.trim().parse(), c.trim().parse()) {
                    (Ok(r), Ok(c)) => Ok([r, c]),
                    _ => Err(param_err(
                        plan,
                        key,
                        t.clone(),
                        "expected ROWSxCOLS with whole numbers",
                    )),
                }
            }
        }
    }
}

/// The instrument's defaults for plan parameters not given (from the instrument profile).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScanDefaults {
    /// The default scan (its `microscope` is applied when a plan gives none).
    pub scan: Stem4dScanPlan,
}

/// Names of the plans [`PlanSpec::build`] knows.
pub const PLAN_NAMES: [&str; 5] = [
    "stem_4d_scan",
    "dark_reference",
    "defocus_series",
    "repeated_scan",
    "subregion_rescan",
];

fn dtype_for_depth(depth: u32) -> DType {
    match depth {
        1 | 6 => DType::U8,
        12 => DType::U16,
        _ => DType::U32,
    }
}

impl PlanSpec {
    /// Parses a plan file's text (`plan = "…"` and parameters at the top level).
    ///
    /// # Errors
    /// The TOML parser's message: the key, the line and the problem.
    pub fn from_toml_str(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim().replace('\n', " "))
    }

    /// Builds the typed plan over `defaults`, checking every parameter.
    ///
    /// # Errors
    /// [`PlanError::Parameter`] naming the parameter: unknown plan, a parameter the plan
    /// does not take, a missing one, or a value out of range.
    pub fn build(&self, defaults: &ScanDefaults) -> Result<Plan, PlanError> {
        let name: &'static str = PLAN_NAMES
            .iter()
            .find(|n| **n == self.plan)
            .ok_or_else(|| {
                param_err(
                    "?",
                    "plan",
                    self.plan.clone(),
                    &format!("unknown plan; known: {}", PLAN_NAMES.join(", ")),
                )
            })?;
        let mut scan = defaults.scan.clone();
        if let Some(s) = &self.nav_shape {
            let [r, c] = s.parse("nav_shape", name)?;
            scan.nav_shape = NavShape::new(r, c);
        }
        if let Some(s) = &self.sig_shape {
            let [r, c] = s.parse("sig_shape", name)?;
            scan.sig_shape = SigShape::new(r, c);
        }
        if let Some(v) = self.dwell_time_s {
            scan.dwell_time_s = v;
            // A shorter dwell shortens the default exposure with it.
            if self.exposure_s.is_none() {
                scan.exposure_s = scan.exposure_s.min(v);
            }
        }
        if let Some(v) = self.flyback_s {
            scan.flyback_s = v;
        }
        if let Some(v) = self.exposure_s {
            scan.exposure_s = v;
        }
        if let Some(d) = self.counter_depth {
            scan.counter_depth = Some(d);
            scan.dtype = dtype_for_depth(d);
        }
        if let Some(m) = &self.microscope {
            scan.microscope = Some(m.clone());
        }
        let not_for = |param: &'static str, given: bool| {
            if given {
                Err(param_err(
                    name,
                    param,
                    "given".into(),
                    "this plan does not take it",
                ))
            } else {
                Ok(())
            }
        };
        if name != "defocus_series"
            && let Some(d) = &self.defocus_m
        {
            match d.as_slice() {
                [one] => {
                    let mut m = scan.microscope.clone().unwrap_or_default();
                    m.defocus_m = Some(*one);
                    scan.microscope = Some(m);
                }
                _ => {
                    return Err(param_err(
                        name,
                        "defocus_m",
                        format!("{d:?}"),
                        "a list of values is for defocus_series; give one value",
                    ));
                }
            }
        }
        if name != "repeated_scan" {
            not_for("repeats", self.repeats.is_some())?;
            not_for("interval_s", self.interval_s.is_some())?;
        }
        if name != "subregion_rescan" {
            not_for("region", self.region.is_some())?;
        }
        let plan = match name {
            "stem_4d_scan" => Plan::Stem4dScan(scan),
            "dark_reference" => Plan::DarkReference(DarkReferencePlan { scan }),
            "defocus_series" => Plan::DefocusSeries(DefocusSeriesPlan {
                scan,
                defocus_m: self.defocus_m.clone().ok_or_else(|| {
                    param_err(
                        name,
                        "defocus_m",
                        "missing".into(),
                        "give the defocus values, m",
                    )
                })?,
            }),
            "repeated_scan" => Plan::RepeatedScan(RepeatedScanPlan {
                scan,
                repeats: self.repeats.ok_or_else(|| {
                    param_err(
                        name,
                        "repeats",
                        "missing".into(),
                        "give the number of scans",
                    )
                })?,
                interval_s: self.interval_s.unwrap_or(0.0),
            }),
            _ => Plan::SubRegionRescan(SubRegionRescanPlan {
                scan,
                region: self.region.ok_or_else(|| {
                    param_err(
                        name,
                        "region",
                        "missing".into(),
                        "give { row, col, rows, cols }",
                    )
                })?,
            }),
        };
        plan.steps()?;
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn plan() -> Stem4dScanPlan {
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
        assert_eq!(
            steps[2],
            PlanStep::Acquire {
                frames: 4096,
                label: "scan".into()
            }
        );
        let s = p.summary();
        assert!((s.duration_s - (4096.0e-3 + 64.0e-3)).abs() < 1e-9);
        assert_eq!(s.data_bytes, 4096 * 256 * 256 * 2);
        assert!(steps[1].to_string().contains("4096 frames"));
        assert_eq!(Plan::Stem4dScan(p).summary().unwrap(), s);
    }

    #[test]
    fn exposure_longer_than_dwell_is_rejected() {
        let mut p = plan();
        p.exposure_s = 2e-3;
        let e = p.steps().unwrap_err().to_string();
        assert!(e.contains("exposure_s") && e.contains("dwell"), "{e}");
    }

    #[test]
    fn dark_reference_blanks_then_unblanks() {
        let steps = DarkReferencePlan { scan: plan() }.steps().unwrap();
        assert!(matches!(&steps[0], PlanStep::ApplyMicroscope(m) if m.beam_blanked == Some(true)));
        assert!(matches!(&steps[3], PlanStep::Acquire { label, .. } if label == "dark"));
        assert!(
            matches!(steps.last(), Some(PlanStep::ApplyMicroscope(m)) if m.beam_blanked == Some(false))
        );
    }

    #[test]
    fn defocus_series_sets_each_value_before_its_scan() {
        let p = DefocusSeriesPlan {
            scan: plan(),
            defocus_m: vec![-50e-9, 0.0, 50e-9],
        };
        let steps = p.steps().unwrap();
        let set: Vec<f64> = steps
            .iter()
            .filter_map(|s| match s {
                PlanStep::ApplyMicroscope(m) => m.defocus_m,
                _ => None,
            })
            .collect();
        assert_eq!(set, vec![-50e-9, 0.0, 50e-9]);
        let s = Plan::DefocusSeries(p.clone()).summary().unwrap();
        assert_eq!(s.acquisitions, 3);
        assert_eq!(s.frames, 3 * 4096);
        let bad = DefocusSeriesPlan {
            defocus_m: vec![1e-3],
            ..p
        };
        assert!(bad.steps().unwrap_err().to_string().contains("defocus_m"));
    }

    #[test]
    fn repeated_scan_waits_between() {
        let p = RepeatedScanPlan {
            scan: plan(),
            repeats: 3,
            interval_s: 2.0,
        };
        let s = Plan::RepeatedScan(p).summary().unwrap();
        assert_eq!(s.acquisitions, 3);
        assert!(
            (s.duration_s - 3.0 * 4.16 - 4.0).abs() < 1e-6,
            "{}",
            s.duration_s
        );
    }

    #[test]
    fn subregion_must_be_inside_the_grid() {
        let ok = SubRegionRescanPlan {
            scan: plan(),
            region: Region {
                row: 10,
                col: 20,
                rows: 8,
                cols: 16,
            },
        };
        let steps = ok.steps().unwrap();
        assert!(steps.contains(&PlanStep::Acquire {
            frames: 128,
            label: "region (10, 20) 8x16 of 64x64".into()
        }));
        // The scan engine is told where the region lies.
        assert!(steps.iter().any(|s| matches!(
            s,
            PlanStep::ConfigureScan(sc)
                if sc.region_origin == Some((10, 20)) && sc.nav_shape == NavShape::new(8, 16)
        )));
        let bad = SubRegionRescanPlan {
            region: Region {
                row: 60,
                col: 0,
                rows: 8,
                cols: 8,
            },
            ..ok
        };
        let e = bad.steps().unwrap_err().to_string();
        assert!(e.contains("region") && e.contains("64x64"), "{e}");
    }

    #[test]
    fn spec_builds_over_defaults_and_rejects_misplaced_parameters() {
        let d = ScanDefaults { scan: plan() };
        let spec: PlanSpec = toml::from_str(
            "plan = \"defocus_series\"\nnav_shape = \"8x8\"\ndefocus_m = [-1e-8, 1e-8]",
        )
        .unwrap();
        let p = spec.build(&d).unwrap();
        assert_eq!(p.base().nav_shape, NavShape::new(8, 8));
        assert_eq!(p.summary().unwrap().frames, 128);
        let spec: PlanSpec = toml::from_str("plan = \"stem_4d_scan\"\nrepeats = 3").unwrap();
        let e = spec.build(&d).unwrap_err().to_string();
        assert!(e.contains("repeats") && e.contains("does not take"), "{e}");
        let spec: PlanSpec = toml::from_str("plan = \"spiral\"").unwrap();
        assert!(
            spec.build(&d)
                .unwrap_err()
                .to_string()
                .contains("unknown plan")
        );
        let spec: PlanSpec =
            toml::from_str("plan = \"stem_4d_scan\"\nnav_shape = \"8by8\"").unwrap();
        assert!(
            spec.build(&d)
                .unwrap_err()
                .to_string()
                .contains("nav_shape")
        );
        assert!(toml::from_str::<PlanSpec>("plan = \"stem_4d_scan\"\nnavshape = 3").is_err());
    }

    #[test]
    fn dry_run_lists_steps_and_cost() {
        let text = Plan::Stem4dScan(plan()).dry_run().unwrap();
        assert!(text.contains("scan engine: 64x64 positions"), "{text}");
        assert!(text.contains("estimated 4.16 s"), "{text}");
        assert!(text.contains("536.9 MB"), "{text}");
    }
}
