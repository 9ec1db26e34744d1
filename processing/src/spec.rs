//! Reduction specs: which UDFs a run computes, with which parameters, over which region of
//! interest — written by the user in TOML, so that every built-in UDF can be chosen without
//! writing Rust.
//!
//! ```toml
//! [[udf]]
//! kind = "masks"                 # buffer per mask; the UDF is named "virtual" by default
//! masks = [ { name = "bf",  disk = { r = 20 } },            # centre: the frame's centre
//!           { name = "adf", ring = { r_inner = 30, r_outer = 60 } },
//!           { name = "slit", rectangle = { x = 10, y = 0, width = 5, height = 256 } },
//!           { name = "poly", polygon = [[0, 0], [10, 0], [5, 9]] },
//!           { name = "mine", custom = "mask.npy" } ]
//! [[udf]]
//! kind = "com"                   # cx, cy, mask_radius, rotation_deg, flip_y
//! [[udf]]
//! kind = "stats"
//! [roi]
//! rect = { rows = [0, 32], cols = [0, 64] }   # or mask = "roi.npy", or coords = [[r, c], …]
//! ```
//!
//! Kinds and their parameters (all lengths in detector pixels, pixel convention of
//! [`crate::mask`]: the centre of a 256 × 256 frame is `(128, 128)`); every entry takes an
//! optional `name` (the UDF's group in the results, unique within the spec):
//!
//! | kind | parameters (default) | UDF |
//! |---|---|---|
//! | `sum` | — | [`SumUdf`] |
//! | `sum_sig` | — | [`SumSigUdf`] |
//! | `stats` | — | [`StatsUdf`] |
//! | `masks` | `masks` (BF disk + ADF ring, centred); name `virtual` | [`MasksUdf`] |
//! | `com` | `cx`, `cy` (centre), `mask_radius` (1.25 × BF), `rotation_deg` (0), `flip_y` (false) | [`ComUdf`] |
//! | `radial` | `cx`, `cy` (centre), `bin_width` (1), `n_bins` (to the farthest corner) | [`RadialProfileUdf`] |
//! | `pick` | `row`, `col` (required) | [`PickUdf`] |
//! | `signal_monitor` | — | [`SignalMonitorUdf`] |
//! | `partition_monitor` | — | [`PartitionMonitorUdf`] |
//! | `record` | `path` (required, `.npy`) | [`RecordUdf`] |
//!
//! Omitted centres and radii follow [`crate::standard_udfs`] on a centred geometry: the
//! centre of the frame, BF radius 1/8 of the frame's smaller side, ADF ring 1.5–3 × BF.
//! Mask shapes: `disk = { cx, cy, r }`, `ring = { cx, cy, r_inner, r_outer }` (centre and
//! radii optional), `rectangle = { x, y, width, height }`, `polygon = [[x, y], …]` (≥ 3
//! vertices), `custom = "file.npy"` (a 2-D array of the frame's shape, nonzero = in).
//!
//! ROI forms (exactly one): `rect = { rows = [R0, R1], cols = [C0, C1] }` (half-open scan
//! ranges, rows `R0..R1`, columns `C0..C1`), `mask = "file.npy"` (a bool or integer array of
//! the scan's shape, nonzero = inside), `coords = [[row, col], …]`. Nav buffers hold NaN
//! outside the ROI ([`crate::roi`]).
//!
//! Relative paths (custom masks, ROI masks, record files) are resolved against the spec
//! file's folder. Unknown keys are errors.

use crate::mask::{CustomMask, Mask};
use crate::roi::{Roi, RoiError};
use crate::udf::Udf;
use crate::udfs::{
    ComParams, ComUdf, MasksUdf, PartitionMonitorUdf, PickUdf, RadialProfileParams,
    RadialProfileUdf, RecordUdf, SignalMonitorUdf, StatsUdf, SumSigUdf, SumUdf,
};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use stemflow_core::{NavShape, SigShape};

/// The kinds a `[[udf]]` entry may name, for error messages.
pub const KINDS: &[&str] = &[
    "sum",
    "sum_sig",
    "stats",
    "masks",
    "com",
    "radial",
    "pick",
    "signal_monitor",
    "partition_monitor",
    "record",
];

/// Errors reading or building a reduction spec. Each names the entry (`udf[INDEX]`, its
/// kind), the field, and what was expected and found.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The spec file could not be read.
    #[error("{path}: cannot read the reduction spec: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, or a top-level key other than `udf` and `roi`, or a malformed `[roi]`.
    #[error("{file}: {message}")]
    Parse {
        /// The file (or a label for text without one).
        file: String,
        /// The parser's message, naming the key.
        message: String,
    },
    /// A `[[udf]]` entry does not deserialise: unknown kind, unknown key, wrong type, a
    /// missing required key.
    #[error("{file}: udf[{index}] (kind = \"{kind}\"): {message}")]
    Entry {
        /// The file.
        file: String,
        /// Position of the entry among the `[[udf]]` entries, from 0.
        index: usize,
        /// The entry's kind as written (empty when missing).
        kind: String,
        /// What is wrong, naming the key, expected and found.
        message: String,
    },
    /// A parameter value is out of range for the data set.
    #[error("udf[{index}] (kind = \"{kind}\"): `{field}`: expected {expected}, found {found}")]
    Invalid {
        /// Position of the entry, from 0.
        index: usize,
        /// The entry's kind.
        kind: &'static str,
        /// The key (e.g. `masks[2].custom`, `row`).
        field: String,
        /// What is allowed.
        expected: String,
        /// What was given.
        found: String,
    },
    /// A mask's parameters are rejected ([`Mask::check_for`]); the message names the
    /// parameter and its value.
    #[error("udf[{index}] (kind = \"{kind}\"): `{field}`: {message}")]
    Rejected {
        /// Position of the entry, from 0.
        index: usize,
        /// The entry's kind.
        kind: &'static str,
        /// The key (e.g. `masks[0]` with the mask's name).
        field: String,
        /// The check's sentence (parameter, value, allowed range).
        message: String,
    },
    /// A file named by an entry (custom mask) cannot be read.
    #[error("udf[{index}] (kind = \"{kind}\"): `{field}`: {source}")]
    File {
        /// Position of the entry, from 0.
        index: usize,
        /// The entry's kind.
        kind: &'static str,
        /// The key naming the file.
        field: String,
        /// The reader's error (it names the file).
        #[source]
        source: crate::io::IoError,
    },
    /// Two entries have the same UDF name.
    #[error(
        "udf[{first}] and udf[{second}] are both named `{name}`; UDF names must be unique (set `name`)"
    )]
    DuplicateName {
        /// The name.
        name: String,
        /// The first entry with it.
        first: usize,
        /// The second entry with it.
        second: usize,
    },
    /// The spec has no `[[udf]]` entry.
    #[error("the reduction spec has no [[udf]] entry; expected at least one (kinds: {})", KINDS.join(", "))]
    Empty,
    /// The ROI does not fit the scan.
    #[error("roi: `{field}`: expected {expected}, found {found}")]
    Roi {
        /// The key (`rect`, `mask`, `coords`).
        field: &'static str,
        /// What is allowed.
        expected: String,
        /// What was given.
        found: String,
    },
    /// The ROI mask file cannot be read.
    #[error("roi: `mask`: {source}")]
    RoiFile {
        /// The reader's error (it names the file).
        #[source]
        source: crate::io::IoError,
    },
}

/// What [`ReductionSpec::build`] gives: the UDFs, in entry order, and the ROI (`None`:
/// the whole scan).
pub type Built = (Vec<Box<dyn Udf>>, Option<Roi>);

/// A reduction spec: the UDFs of a run and an optional region of interest.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReductionSpec {
    /// The `[[udf]]` entries, in result order.
    #[serde(default)]
    pub udf: Vec<UdfSpec>,
    /// `[roi]`: the scan positions processed; absent: all.
    #[serde(default)]
    pub roi: Option<RoiSpec>,
}

/// One `[[udf]]` entry, tagged by `kind`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum UdfSpec {
    /// [`SumUdf`], default name `sum`.
    Sum(NameOnly),
    /// [`SumSigUdf`], default name `sum_sig`.
    SumSig(NameOnly),
    /// [`StatsUdf`], default name `stats`.
    Stats(NameOnly),
    /// [`MasksUdf`], default name `virtual`.
    Masks(MasksSpec),
    /// [`ComUdf`], default name `com`.
    Com(ComSpec),
    /// [`RadialProfileUdf`], default name `radial`.
    Radial(RadialSpec),
    /// [`PickUdf`], default name `pick`.
    Pick(PickSpec),
    /// [`SignalMonitorUdf`], default name `monitor`.
    SignalMonitor(NameOnly),
    /// [`PartitionMonitorUdf`], default name `partition_monitor`.
    PartitionMonitor(NameOnly),
    /// [`RecordUdf`], default name `record`.
    Record(RecordSpec),
}

/// An entry whose only parameter is its name.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NameOnly {
    /// The UDF's name in the results; default: the kind's.
    #[serde(default)]
    pub name: Option<String>,
}

/// `kind = "masks"`: virtual detectors.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MasksSpec {
    /// The UDF's name; default `virtual`.
    #[serde(default)]
    pub name: Option<String>,
    /// The masks, one nav buffer each; absent: `bf` (disk) and `adf` (ring), centred.
    #[serde(default)]
    pub masks: Option<Vec<MaskSpec>>,
}

/// One mask of a `masks` entry: its buffer name and exactly one shape.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MaskSpec {
    /// Buffer name, unique within the entry.
    pub name: String,
    /// A disk ([`Mask::Disk`]).
    #[serde(default)]
    pub disk: Option<DiskSpec>,
    /// A ring ([`Mask::Ring`]).
    #[serde(default)]
    pub ring: Option<RingSpec>,
    /// A rectangle ([`Mask::Rectangle`]).
    #[serde(default)]
    pub rectangle: Option<RectangleSpec>,
    /// Polygon vertices `[x, y]`, pixels ([`Mask::Polygon`]).
    #[serde(default)]
    pub polygon: Option<Vec<[f64; 2]>>,
    /// A `.npy` file of the frame's shape, nonzero = in the mask ([`Mask::Custom`]).
    #[serde(default)]
    pub custom: Option<PathBuf>,
}

/// `disk = { cx, cy, r }`, pixels; omitted: the frame's centre, BF radius.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// Centre x (column direction), pixels.
    #[serde(default)]
    pub cx: Option<f64>,
    /// Centre y (row direction), pixels.
    #[serde(default)]
    pub cy: Option<f64>,
    /// Radius, pixels.
    #[serde(default)]
    pub r: Option<f64>,
}

/// `ring = { cx, cy, r_inner, r_outer }`, pixels; omitted: the frame's centre, 1.5 × and
/// 3 × the BF radius.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RingSpec {
    /// Centre x (column direction), pixels.
    #[serde(default)]
    pub cx: Option<f64>,
    /// Centre y (row direction), pixels.
    #[serde(default)]
    pub cy: Option<f64>,
    /// Inner radius (excluded), pixels.
    #[serde(default)]
    pub r_inner: Option<f64>,
    /// Outer radius (included), pixels.
    #[serde(default)]
    pub r_outer: Option<f64>,
}

/// `rectangle = { x, y, width, height }`, pixels (left, top edge; all required).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RectangleSpec {
    /// Left edge (column direction), pixels.
    pub x: f64,
    /// Top edge (row direction), pixels.
    pub y: f64,
    /// Width, pixels.
    pub width: f64,
    /// Height, pixels.
    pub height: f64,
}

/// `kind = "com"`: centre of mass ([`ComParams`]).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ComSpec {
    /// The UDF's name; default `com`.
    #[serde(default)]
    pub name: Option<String>,
    /// Reference centre x, pixels; default the frame's centre.
    #[serde(default)]
    pub cx: Option<f64>,
    /// Reference centre y, pixels; default the frame's centre.
    #[serde(default)]
    pub cy: Option<f64>,
    /// Radius of the weighed disk, pixels; default 1.25 × the BF radius.
    #[serde(default)]
    pub mask_radius: Option<f64>,
    /// Scan rotation, degrees (also `scan_rotation_deg`).
    #[serde(default, alias = "scan_rotation_deg")]
    pub rotation_deg: f64,
    /// Flip the detector's y axis before rotating.
    #[serde(default)]
    pub flip_y: bool,
}

/// `kind = "radial"`: radial profile ([`RadialProfileParams`]).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RadialSpec {
    /// The UDF's name; default `radial`.
    #[serde(default)]
    pub name: Option<String>,
    /// Centre x, pixels; default the frame's centre.
    #[serde(default)]
    pub cx: Option<f64>,
    /// Centre y, pixels; default the frame's centre.
    #[serde(default)]
    pub cy: Option<f64>,
    /// Bin width, pixels; default 1.
    #[serde(default)]
    pub bin_width: Option<f64>,
    /// Number of bins; default: enough to reach the frame's farthest corner.
    #[serde(default)]
    pub n_bins: Option<usize>,
}

/// `kind = "pick"`: one frame by scan position.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PickSpec {
    /// The UDF's name; default `pick`.
    #[serde(default)]
    pub name: Option<String>,
    /// Scan row, from 0.
    pub row: usize,
    /// Scan column, from 0.
    pub col: usize,
}

/// `kind = "record"`: frames to a `.npy` file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RecordSpec {
    /// The UDF's name; default `record`.
    #[serde(default)]
    pub name: Option<String>,
    /// The `.npy` file written (relative: to the spec's folder).
    pub path: PathBuf,
}

/// `[roi]`: exactly one of `rect`, `mask`, `coords`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoiSpec {
    /// A rectangle of scan positions.
    #[serde(default)]
    pub rect: Option<RoiRect>,
    /// A `.npy` array of the scan's shape (bool or integers; nonzero = inside).
    #[serde(default)]
    pub mask: Option<PathBuf>,
    /// Scan positions `[row, col]`.
    #[serde(default)]
    pub coords: Option<Vec<[usize; 2]>>,
}

/// A rectangle of scan positions: rows `rows[0]..rows[1]`, columns `cols[0]..cols[1]`
/// (half-open). On the command line: `R0:R1,C0:C1`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RoiRect {
    /// First row, one past the last row.
    pub rows: [usize; 2],
    /// First column, one past the last column.
    pub cols: [usize; 2],
}

impl std::str::FromStr for RoiRect {
    type Err = String;

    /// Parses `R0:R1,C0:C1` (half-open scan ranges, e.g. `0:32,0:64`).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}`: expected R0:R1,C0:C1 (half-open scan rows and columns)");
        let (r, c) = s.split_once(',').ok_or_else(bad)?;
        let range = |t: &str| -> Result<[usize; 2], String> {
            let (a, b) = t.split_once(':').ok_or_else(bad)?;
            let n = |v: &str| v.trim().parse::<usize>().map_err(|_| bad());
            Ok([n(a)?, n(b)?])
        };
        Ok(Self {
            rows: range(r)?,
            cols: range(c)?,
        })
    }
}

impl std::fmt::Display for RoiRect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{},{}:{}",
            self.rows[0], self.rows[1], self.cols[0], self.cols[1]
        )
    }
}

/// The centred geometry of [`crate::standard_udfs`] on a frame of `sig`:
/// `(cx, cy, bf_radius)`, pixels.
fn centred(sig: SigShape) -> (f64, f64, f64) {
    (
        sig.cols as f64 / 2.0,
        sig.rows as f64 / 2.0,
        sig.rows.min(sig.cols) as f64 / 8.0,
    )
}

fn resolve(base_dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}

impl ReductionSpec {
    /// Reads a spec file (TOML).
    ///
    /// # Errors
    /// [`SpecError::Read`]; as [`ReductionSpec::from_toml`], naming the file.
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Parses spec text; `file` names it in errors. Entries are parsed one by one so that
    /// an error names the entry's index and kind.
    ///
    /// # Errors
    /// [`SpecError::Parse`] for bad TOML, a top-level key other than `udf`/`roi` or a bad
    /// `[roi]`; [`SpecError::Entry`] for an entry with a missing or unknown `kind`, an
    /// unknown key, a value of the wrong type or a missing required key.
    pub fn from_toml(text: &str, file: &str) -> Result<Self, SpecError> {
        let parse = |message: String| SpecError::Parse {
            file: file.to_string(),
            message: message.trim().to_string(),
        };
        let table: toml::Table = toml::from_str(text).map_err(|e| parse(e.to_string()))?;
        let mut spec = ReductionSpec::default();
        for (key, value) in table {
            match key.as_str() {
                "udf" => {
                    let toml::Value::Array(entries) = value else {
                        return Err(parse(format!(
                            "`udf`: expected an array of tables ([[udf]]), found a {}",
                            value.type_str()
                        )));
                    };
                    for (index, entry) in entries.into_iter().enumerate() {
                        spec.udf.push(UdfSpec::from_value(entry, index, file)?);
                    }
                }
                "roi" => {
                    let roi: RoiSpec = value
                        .try_into()
                        .map_err(|e: toml::de::Error| parse(format!("roi: {}", e.message())))?;
                    spec.roi = Some(roi);
                }
                other => {
                    return Err(parse(format!(
                        "unknown top-level key `{other}`; expected `udf` ([[udf]] entries) or `roi`"
                    )));
                }
            }
        }
        Ok(spec)
    }

    /// Builds the UDFs (in entry order) and the ROI for a data set of frames `sig_shape`
    /// and scan `nav_shape`; relative paths are resolved against `base_dir` (the spec
    /// file's folder). Custom masks and a ROI mask are read here.
    ///
    /// # Errors
    /// [`SpecError::Empty`] without entries; [`SpecError::Invalid`], [`SpecError::Rejected`]
    /// for parameters out of range (a mask outside the rules of [`Mask::check_for`], a
    /// custom mask of another shape than the frame, a pick position outside the scan, a
    /// non-positive radius or bin width); [`SpecError::File`] for an unreadable mask file;
    /// [`SpecError::DuplicateName`]; [`SpecError::Roi`] / [`SpecError::RoiFile`] as
    /// [`RoiSpec::build`].
    pub fn build(
        &self,
        sig_shape: SigShape,
        nav_shape: NavShape,
        base_dir: &Path,
    ) -> Result<Built, SpecError> {
        if self.udf.is_empty() {
            return Err(SpecError::Empty);
        }
        let mut udfs: Vec<Box<dyn Udf>> = Vec::with_capacity(self.udf.len());
        for (index, entry) in self.udf.iter().enumerate() {
            let udf = entry.build(index, sig_shape, nav_shape, base_dir)?;
            if let Some(first) = udfs.iter().position(|u| u.name() == udf.name()) {
                return Err(SpecError::DuplicateName {
                    name: udf.name().to_string(),
                    first,
                    second: index,
                });
            }
            udfs.push(udf);
        }
        let roi = self
            .roi
            .as_ref()
            .map(|r| r.build(nav_shape, base_dir))
            .transpose()?;
        Ok((udfs, roi))
    }
}

impl UdfSpec {
    /// The entry's `kind` as written in TOML.
    pub fn kind(&self) -> &'static str {
        match self {
            UdfSpec::Sum(_) => "sum",
            UdfSpec::SumSig(_) => "sum_sig",
            UdfSpec::Stats(_) => "stats",
            UdfSpec::Masks(_) => "masks",
            UdfSpec::Com(_) => "com",
            UdfSpec::Radial(_) => "radial",
            UdfSpec::Pick(_) => "pick",
            UdfSpec::SignalMonitor(_) => "signal_monitor",
            UdfSpec::PartitionMonitor(_) => "partition_monitor",
            UdfSpec::Record(_) => "record",
        }
    }

    /// One `[[udf]]` table: dispatched on `kind`, the rest deserialised into the kind's
    /// parameter struct (so the error names that struct's keys).
    fn from_value(entry: toml::Value, index: usize, file: &str) -> Result<Self, SpecError> {
        let err = |kind: &str, message: String| SpecError::Entry {
            file: file.to_string(),
            index,
            kind: kind.to_string(),
            message,
        };
        let toml::Value::Table(mut table) = entry else {
            return Err(err(
                "",
                format!("expected a table, found a {}", entry.type_str()),
            ));
        };
        let kind = match table.remove("kind") {
            Some(toml::Value::String(k)) => k,
            Some(other) => {
                return Err(err(
                    "",
                    format!(
                        "`kind`: expected a string (one of {}), found a {}",
                        KINDS.join(", "),
                        other.type_str()
                    ),
                ));
            }
            None => {
                return Err(err(
                    "",
                    format!("`kind` is missing; expected one of {}", KINDS.join(", ")),
                ));
            }
        };
        fn params<T: for<'de> Deserialize<'de>>(t: toml::Table) -> Result<T, String> {
            // Through text, not the value tree: the error then carries the span of the
            // offending value, from which the key is recovered for type errors (whose
            // message names only the types).
            let text = toml::to_string(&t).map_err(|e| e.to_string())?;
            toml::from_str::<T>(&text).map_err(|e| {
                let message = e.message().trim().to_string();
                let key = e.span().and_then(|span| {
                    let start = text.get(..span.start)?.rfind('\n').map_or(0, |i| i + 1);
                    let line = text.get(start..)?.lines().next()?;
                    let (key, _) = line.split_once('=')?;
                    Some(key.trim().trim_matches('"').to_string())
                });
                match key {
                    Some(k) if message.starts_with("invalid") && !k.is_empty() => {
                        format!("`{k}`: {message}")
                    }
                    _ => message,
                }
            })
        }
        let spec = match kind.as_str() {
            "sum" => params(table).map(UdfSpec::Sum),
            "sum_sig" => params(table).map(UdfSpec::SumSig),
            "stats" => params(table).map(UdfSpec::Stats),
            "masks" => params(table).map(UdfSpec::Masks),
            "com" => params(table).map(UdfSpec::Com),
            "radial" => params(table).map(UdfSpec::Radial),
            "pick" => params(table).map(UdfSpec::Pick),
            "signal_monitor" => params(table).map(UdfSpec::SignalMonitor),
            "partition_monitor" => params(table).map(UdfSpec::PartitionMonitor),
            "record" => params(table).map(UdfSpec::Record),
            other => Err(format!(
                "unknown kind `{other}`; expected one of {}",
                KINDS.join(", ")
            )),
        };
        spec.map_err(|m| err(&kind, m))
    }

    /// Builds the UDF of entry `index` for frames `sig` and scan `nav`.
    fn build(
        &self,
        index: usize,
        sig: SigShape,
        nav: NavShape,
        base_dir: &Path,
    ) -> Result<Box<dyn Udf>, SpecError> {
        let kind = self.kind();
        let invalid = |field: &str, expected: String, found: String| SpecError::Invalid {
            index,
            kind,
            field: field.to_string(),
            expected,
            found,
        };
        let finite = |field: &str, v: f64| {
            if v.is_finite() {
                Ok(v)
            } else {
                Err(invalid(field, "a finite number".into(), v.to_string()))
            }
        };
        let positive = |field: &str, v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(v)
            } else {
                Err(invalid(
                    field,
                    "a number > 0 (pixels)".into(),
                    v.to_string(),
                ))
            }
        };
        let (cx0, cy0, r0) = centred(sig);
        let name = |n: &Option<String>, default: &str| -> Result<String, SpecError> {
            match n {
                Some(n) if n.trim().is_empty() => {
                    Err(invalid("name", "a non-empty name".into(), format!("{n:?}")))
                }
                Some(n) => Ok(n.clone()),
                None => Ok(default.to_string()),
            }
        };
        Ok(match self {
            UdfSpec::Sum(n) => Box::new(SumUdf::new().named(&name(&n.name, "sum")?)),
            UdfSpec::SumSig(n) => Box::new(SumSigUdf::new().named(&name(&n.name, "sum_sig")?)),
            UdfSpec::Stats(n) => Box::new(StatsUdf::new().named(&name(&n.name, "stats")?)),
            UdfSpec::SignalMonitor(n) => {
                Box::new(SignalMonitorUdf::new().named(&name(&n.name, "monitor")?))
            }
            UdfSpec::PartitionMonitor(n) => {
                Box::new(PartitionMonitorUdf::new().named(&name(&n.name, "partition_monitor")?))
            }
            UdfSpec::Masks(m) => {
                let masks = match &m.masks {
                    None => vec![
                        (
                            "bf".to_string(),
                            Mask::Disk {
                                cx: cx0,
                                cy: cy0,
                                r: r0,
                            },
                        ),
                        (
                            "adf".to_string(),
                            Mask::Ring {
                                cx: cx0,
                                cy: cy0,
                                r_inner: 1.5 * r0,
                                r_outer: 3.0 * r0,
                            },
                        ),
                    ],
                    Some(list) if list.is_empty() => {
                        return Err(invalid(
                            "masks",
                            "at least one mask (or no `masks` key for BF + ADF)".into(),
                            "an empty list".into(),
                        ));
                    }
                    Some(list) => {
                        let mut out: Vec<(String, Mask)> = Vec::with_capacity(list.len());
                        for (j, ms) in list.iter().enumerate() {
                            let field = format!("masks[{j}] ({})", ms.name);
                            if ms.name.trim().is_empty() {
                                return Err(invalid(
                                    &format!("masks[{j}].name"),
                                    "a non-empty buffer name".into(),
                                    format!("{:?}", ms.name),
                                ));
                            }
                            if let Some(k) = out.iter().position(|(n, _)| *n == ms.name) {
                                return Err(invalid(
                                    &format!("masks[{j}].name"),
                                    "a name unique within the entry".into(),
                                    format!("`{}`, already used by masks[{k}]", ms.name),
                                ));
                            }
                            let mask = ms.mask(index, j, sig, base_dir)?;
                            mask.check_for(sig).map_err(|message| SpecError::Rejected {
                                index,
                                kind,
                                field: field.clone(),
                                message,
                            })?;
                            out.push((ms.name.clone(), mask));
                        }
                        out
                    }
                };
                let mut udf = MasksUdf::new(masks);
                // Custom masks keep the file they came from in the UDF's parameters.
                for ms in m.masks.iter().flatten() {
                    if let Some(c) = &ms.custom {
                        udf = udf.with_source(&ms.name, resolve(base_dir, c));
                    }
                }
                Box::new(udf.named(&name(&m.name, "virtual")?))
            }
            UdfSpec::Com(c) => {
                let p = ComParams {
                    cx: finite("cx", c.cx.unwrap_or(cx0))?,
                    cy: finite("cy", c.cy.unwrap_or(cy0))?,
                    mask_radius: positive("mask_radius", c.mask_radius.unwrap_or(1.25 * r0))?,
                    scan_rotation_deg: finite("rotation_deg", c.rotation_deg)?,
                    flip_y: c.flip_y,
                };
                Box::new(ComUdf::from_params(p).named(&name(&c.name, "com")?))
            }
            UdfSpec::Radial(r) => {
                let cx = finite("cx", r.cx.unwrap_or(cx0))?;
                let cy = finite("cy", r.cy.unwrap_or(cy0))?;
                let bin_width = positive("bin_width", r.bin_width.unwrap_or(1.0))?;
                let n_bins = match r.n_bins {
                    Some(0) => {
                        return Err(invalid("n_bins", "≥ 1".into(), "0".into()));
                    }
                    Some(n) => n,
                    None => {
                        // Far enough for every pixel centre of the frame.
                        let (w, h) = (sig.cols as f64, sig.rows as f64);
                        let reach = [(0.0, 0.0), (w, 0.0), (0.0, h), (w, h)]
                            .iter()
                            .map(|&(x, y)| (x - cx).hypot(y - cy))
                            .fold(0.0, f64::max);
                        ((reach / bin_width).ceil() as usize).max(1)
                    }
                };
                Box::new(
                    RadialProfileUdf::new(RadialProfileParams {
                        cx,
                        cy,
                        bin_width,
                        n_bins,
                    })
                    .named(&name(&r.name, "radial")?),
                )
            }
            UdfSpec::Pick(p) => {
                if p.row >= nav.rows {
                    return Err(invalid(
                        "row",
                        format!("a scan row below {} (the scan is {nav})", nav.rows),
                        p.row.to_string(),
                    ));
                }
                if p.col >= nav.cols {
                    return Err(invalid(
                        "col",
                        format!("a scan column below {} (the scan is {nav})", nav.cols),
                        p.col.to_string(),
                    ));
                }
                Box::new(PickUdf::new(p.row, p.col).named(&name(&p.name, "pick")?))
            }
            UdfSpec::Record(r) => Box::new(
                RecordUdf::new(resolve(base_dir, &r.path)).named(&name(&r.name, "record")?),
            ),
        })
    }
}

impl MaskSpec {
    /// The mask of entry `index`'s `masks[j]`, defaults filled in for frames `sig`.
    fn mask(
        &self,
        index: usize,
        j: usize,
        sig: SigShape,
        base_dir: &Path,
    ) -> Result<Mask, SpecError> {
        let kind = "masks";
        let given: Vec<&str> = [
            ("disk", self.disk.is_some()),
            ("ring", self.ring.is_some()),
            ("rectangle", self.rectangle.is_some()),
            ("polygon", self.polygon.is_some()),
            ("custom", self.custom.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(k, _)| *k)
        .collect();
        if given.len() != 1 {
            return Err(SpecError::Invalid {
                index,
                kind,
                field: format!("masks[{j}] ({})", self.name),
                expected: "exactly one of disk, ring, rectangle, polygon, custom".into(),
                found: if given.is_empty() {
                    "none".into()
                } else {
                    given.join(" and ")
                },
            });
        }
        let (cx0, cy0, r0) = centred(sig);
        if let Some(d) = &self.disk {
            return Ok(Mask::Disk {
                cx: d.cx.unwrap_or(cx0),
                cy: d.cy.unwrap_or(cy0),
                r: d.r.unwrap_or(r0),
            });
        }
        if let Some(r) = &self.ring {
            return Ok(Mask::Ring {
                cx: r.cx.unwrap_or(cx0),
                cy: r.cy.unwrap_or(cy0),
                r_inner: r.r_inner.unwrap_or(1.5 * r0),
                r_outer: r.r_outer.unwrap_or(3.0 * r0),
            });
        }
        if let Some(r) = &self.rectangle {
            return Ok(Mask::Rectangle {
                x: r.x,
                y: r.y,
                width: r.width,
                height: r.height,
            });
        }
        if let Some(p) = &self.polygon {
            return Ok(Mask::Polygon {
                vertices: p.iter().map(|&[x, y]| (x, y)).collect(),
            });
        }
        let path = resolve(base_dir, self.custom.as_deref().unwrap_or(Path::new("")));
        let field = format!("masks[{j}].custom");
        let m = CustomMask::from_npy(&path).map_err(|source| SpecError::File {
            index,
            kind,
            field: field.clone(),
            source,
        })?;
        if m.sig_shape != sig {
            return Err(SpecError::Invalid {
                index,
                kind,
                field,
                expected: format!("a {sig} array (the frame shape) in {}", path.display()),
                found: format!("{}", m.sig_shape),
            });
        }
        Ok(Mask::Custom(std::sync::Arc::new(m)))
    }
}

impl RoiSpec {
    /// A spec of a rectangle of scan positions.
    pub fn rect(rect: RoiRect) -> Self {
        Self {
            rect: Some(rect),
            ..Self::default()
        }
    }

    /// A spec of a `.npy` mask file.
    pub fn mask_file(path: impl Into<PathBuf>) -> Self {
        Self {
            mask: Some(path.into()),
            ..Self::default()
        }
    }

    /// The ROI on scan `nav`; a relative mask path is resolved against `base_dir`.
    ///
    /// # Errors
    /// [`SpecError::Roi`] when not exactly one form is given, for a rectangle that is
    /// empty or reaches beyond the scan, a mask array of another shape than the scan
    /// (`[rows, cols]`, or `[rows × cols]`), a coordinate outside the scan;
    /// [`SpecError::RoiFile`] for an unreadable mask file.
    pub fn build(&self, nav: NavShape, base_dir: &Path) -> Result<Roi, SpecError> {
        let given: Vec<&str> = [
            ("rect", self.rect.is_some()),
            ("mask", self.mask.is_some()),
            ("coords", self.coords.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(k, _)| *k)
        .collect();
        if given.len() != 1 {
            return Err(SpecError::Roi {
                field: "roi",
                expected: "exactly one of rect, mask, coords".into(),
                found: if given.is_empty() {
                    "none".into()
                } else {
                    given.join(" and ")
                },
            });
        }
        if let Some(r) = self.rect {
            let ok = |[a, b]: [usize; 2], n: usize| a < b && b <= n;
            if !ok(r.rows, nav.rows) || !ok(r.cols, nav.cols) {
                return Err(SpecError::Roi {
                    field: "rect",
                    expected: format!(
                        "non-empty half-open ranges within the {nav} scan (rows 0..{}, cols 0..{})",
                        nav.rows, nav.cols
                    ),
                    found: format!(
                        "rows {}..{}, cols {}..{}",
                        r.rows[0], r.rows[1], r.cols[0], r.cols[1]
                    ),
                });
            }
            let mask = (0..nav.len())
                .map(|i| {
                    let (row, col) = (i / nav.cols, i % nav.cols);
                    (r.rows[0]..r.rows[1]).contains(&row) && (r.cols[0]..r.cols[1]).contains(&col)
                })
                .collect();
            return Roi::from_mask(nav, mask).map_err(roi_error);
        }
        if let Some(p) = &self.mask {
            let path = resolve(base_dir, p);
            let (shape, values) = crate::io::npy::read_nonzero(&path)
                .map_err(|source| SpecError::RoiFile { source })?;
            if shape != [nav.rows, nav.cols] && shape != [nav.len()] {
                return Err(SpecError::Roi {
                    field: "mask",
                    expected: format!(
                        "an array of shape [{}, {}] (the scan) in {}",
                        nav.rows,
                        nav.cols,
                        path.display()
                    ),
                    found: format!("shape {shape:?}"),
                });
            }
            return Roi::from_mask(nav, values).map_err(roi_error);
        }
        let coords: Vec<(usize, usize)> =
            self.coords.iter().flatten().map(|&[r, c]| (r, c)).collect();
        Roi::from_coords(nav, &coords).map_err(roi_error)
    }
}

fn roi_error(e: RoiError) -> SpecError {
    let field = match e {
        RoiError::MaskLength { .. } => "mask",
        RoiError::Coordinate { .. } => "coords",
    };
    match e {
        RoiError::MaskLength {
            nav_shape,
            expected,
            observed,
        } => SpecError::Roi {
            field,
            expected: format!("{expected} entries (the {nav_shape} scan)"),
            found: format!("{observed}"),
        },
        RoiError::Coordinate {
            nav_shape,
            row,
            col,
        } => SpecError::Roi {
            field,
            expected: format!("positions within the {nav_shape} scan"),
            found: format!("[{row}, {col}]"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::udf::UdfMeta;
    use stemflow_core::DType;

    const SIG: SigShape = SigShape { rows: 64, cols: 48 };
    const NAV: NavShape = NavShape { rows: 4, cols: 5 };

    /// A scratch folder, removed when dropped.
    struct Scratch(PathBuf);

    impl std::ops::Deref for Scratch {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch(name: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("stemflow-spec-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }

    fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) {
        let mut bytes = crate::io::npy::header_bytes(descr, shape);
        bytes.extend_from_slice(data);
        std::fs::write(path, bytes).unwrap();
    }

    fn parse(text: &str) -> ReductionSpec {
        ReductionSpec::from_toml(text, "t.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn meta() -> UdfMeta {
        UdfMeta {
            nav_shape: NAV,
            sig_shape: SIG,
            dtype: DType::U16,
        }
    }

    fn names(udfs: &[Box<dyn Udf>]) -> Vec<String> {
        udfs.iter().map(|u| u.name().to_string()).collect()
    }

    fn buffers(u: &dyn Udf) -> Vec<String> {
        u.buffers(&meta()).into_iter().map(|b| b.name).collect()
    }

    #[test]
    fn every_kind_parses_and_builds_with_default_names() {
        let dir = scratch("kinds");
        let spec = parse(
            r#"
            [[udf]]
            kind = "sum"
            [[udf]]
            kind = "sum_sig"
            [[udf]]
            kind = "stats"
            [[udf]]
            kind = "masks"
            [[udf]]
            kind = "com"
            cx = 20
            cy = 30.5
            mask_radius = 9
            rotation_deg = 12.5
            flip_y = true
            [[udf]]
            kind = "radial"
            bin_width = 2.0
            [[udf]]
            kind = "pick"
            row = 3
            col = 4
            [[udf]]
            kind = "signal_monitor"
            [[udf]]
            kind = "partition_monitor"
            [[udf]]
            kind = "record"
            path = "frames.npy"
            "#,
        );
        assert_eq!(
            spec.udf[4],
            UdfSpec::Com(ComSpec {
                name: None,
                cx: Some(20.0),
                cy: Some(30.5),
                mask_radius: Some(9.0),
                rotation_deg: 12.5,
                flip_y: true,
            })
        );
        let kinds: Vec<&str> = spec.udf.iter().map(UdfSpec::kind).collect();
        assert_eq!(kinds, KINDS);
        let (udfs, roi) = spec.build(SIG, NAV, &dir).unwrap();
        assert!(roi.is_none());
        assert_eq!(
            names(&udfs),
            [
                "sum",
                "sum_sig",
                "stats",
                "virtual",
                "com",
                "radial",
                "pick",
                "monitor",
                "partition_monitor",
                "record"
            ]
        );
        for u in &udfs {
            u.check(&meta())
                .unwrap_or_else(|e| panic!("{}: {e}", u.name()));
        }
        // Default masks: BF + ADF.
        assert_eq!(buffers(udfs[3].as_ref()), ["bf", "adf"]);
        // Radial default reach: farthest corner of a 48 × 64 frame from (24, 32) is 40 px,
        // 20 bins of 2 px.
        let radial = udfs[5].buffers(&meta());
        assert_eq!(radial[0].extra_shape, vec![20]);
    }

    #[test]
    fn the_derived_deserialiser_agrees_and_denies_unknown_keys() {
        let text = "[[udf]]\nkind = \"com\"\nmask_radius = 4\n[[udf]]\nkind = \"masks\"\n\
                    masks = [ { name = \"a\", ring = { r_outer = 9 } } ]\n[roi]\ncoords = [[1, 1]]\n";
        let derived: ReductionSpec = toml::from_str(text).unwrap();
        assert_eq!(derived, parse(text));
        assert!(toml::from_str::<ReductionSpec>("[[udf]]\nkind = \"com\"\nradius = 4\n").is_err());
        assert!(toml::from_str::<ReductionSpec>("[[udf]]\nkind = \"sum\"\n[other]\n").is_err());
    }

    #[test]
    fn the_shipped_example_builds_for_256_pixel_frames() {
        let text = include_str!("../../config/reductions/example.toml");
        let dir = scratch("example");
        let sig = SigShape::new(256, 256);
        let nav = NavShape::new(64, 64);
        let spec = ReductionSpec::from_toml(text, "example.toml").unwrap_or_else(|e| panic!("{e}"));
        let (udfs, roi) = spec.build(sig, nav, &dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            names(&udfs),
            ["sum_sig", "sum", "virtual", "com", "stats", "radial"]
        );
        assert!(roi.is_none());
        // Its commented ROI, switched on, covers half the scan.
        let with_roi = text.replace("# [roi]\n# rect", "[roi]\nrect");
        let spec = ReductionSpec::from_toml(&with_roi, "example.toml").unwrap();
        let roi = spec.build(sig, nav, &dir).unwrap().1.expect("roi");
        assert_eq!(roi.count(), 32 * 64);
    }

    #[test]
    fn masks_of_every_shape_build_with_defaults_and_files() {
        let dir = scratch("masks");
        // A 64 × 48 u8 mask with 3 pixels set.
        let mut data = vec![0u8; 64 * 48];
        data[0] = 1;
        data[5] = 7;
        data[48 * 10 + 3] = 1;
        write_npy(&dir.join("mine.npy"), "|u1", &[64, 48], &data);
        let spec = parse(
            r#"
            [[udf]]
            kind = "masks"
            name = "det"
            masks = [ { name = "bf", disk = { r = 5 } },
                      { name = "adf", ring = { cx = 10, cy = 11, r_inner = 3, r_outer = 6 } },
                      { name = "slit", rectangle = { x = 1, y = 0, width = 2, height = 64 } },
                      { name = "poly", polygon = [[0, 0], [10, 0], [5, 9]] },
                      { name = "mine", custom = "mine.npy" } ]
            "#,
        );
        let (udfs, _) = spec.build(SIG, NAV, &dir).unwrap();
        assert_eq!(names(&udfs), ["det"]);
        assert_eq!(
            buffers(udfs[0].as_ref()),
            ["bf", "adf", "slit", "poly", "mine"]
        );
        let UdfSpec::Masks(m) = &spec.udf[0] else {
            panic!("not masks")
        };
        let built = m.masks.as_ref().unwrap();
        // The disk's centre defaults to the frame's centre (x = cols / 2).
        assert_eq!(
            built[0].mask(0, 0, SIG, &dir).unwrap(),
            Mask::Disk {
                cx: 24.0,
                cy: 32.0,
                r: 5.0
            }
        );
        let custom = built[4].mask(0, 4, SIG, &dir).unwrap();
        assert_eq!(custom.spans(SIG).pixel_count(), 3);
        // A custom mask of another shape is refused, naming field and shapes.
        write_npy(&dir.join("small.npy"), "|b1", &[2, 2], &[1, 0, 0, 1]);
        let bad = parse(
            "[[udf]]\nkind = \"masks\"\nmasks = [ { name = \"m\", custom = \"small.npy\" } ]\n",
        );
        let e = bad.build(SIG, NAV, &dir).err().unwrap().to_string();
        assert!(
            e.contains("udf[0]") && e.contains("masks[0].custom") && e.contains("2x2"),
            "{e}"
        );
        let missing = parse(
            "[[udf]]\nkind = \"masks\"\nmasks = [ { name = \"m\", custom = \"nope.npy\" } ]\n",
        );
        let e = missing.build(SIG, NAV, &dir).err().unwrap().to_string();
        assert!(
            e.contains("masks[0].custom") && e.contains("nope.npy"),
            "{e}"
        );
    }

    #[test]
    fn roi_forms_build() {
        let dir = scratch("roi");
        let rect =
            parse("[[udf]]\nkind = \"sum\"\n[roi]\nrect = { rows = [1, 3], cols = [0, 2] }\n");
        let (_, roi) = rect.build(SIG, NAV, &dir).unwrap();
        let roi = roi.unwrap();
        assert_eq!(roi.count(), 4);
        assert!(roi.contains(5) && roi.contains(6) && roi.contains(11) && !roi.contains(7));

        let coords = parse("[[udf]]\nkind = \"sum\"\n[roi]\ncoords = [[0, 0], [3, 4]]\n");
        let roi = coords.build(SIG, NAV, &dir).unwrap().1.unwrap();
        assert_eq!(roi.count(), 2);
        assert!(roi.contains(0) && roi.contains(19));

        let mut m = vec![0u8; 20];
        m[7] = 1;
        m[8] = 1;
        write_npy(&dir.join("roi.npy"), "|b1", &[4, 5], &m);
        let mask = parse("[[udf]]\nkind = \"sum\"\n[roi]\nmask = \"roi.npy\"\n");
        let roi = mask.build(SIG, NAV, &dir).unwrap().1.unwrap();
        assert_eq!(roi.mask().iter().filter(|b| **b).count(), 2);
        assert!(roi.contains(7) && roi.contains(8));

        assert_eq!(
            "0:32,8:64".parse::<RoiRect>().unwrap(),
            RoiRect {
                rows: [0, 32],
                cols: [8, 64]
            }
        );
        assert!("0:32".parse::<RoiRect>().is_err());
        assert!("a:3,0:1".parse::<RoiRect>().is_err());
        let r = RoiSpec::rect("1:2,1:2".parse().unwrap())
            .build(NAV, &dir)
            .unwrap();
        assert_eq!(r.count(), 1);
    }

    #[test]
    fn roi_errors_name_form_expected_and_found() {
        let dir = scratch("roi-errors");
        let out = RoiSpec::rect(RoiRect {
            rows: [0, 9],
            cols: [0, 1],
        })
        .build(NAV, &dir)
        .unwrap_err()
        .to_string();
        assert!(
            out.contains("rect") && out.contains("rows 0..9") && out.contains("4x5"),
            "{out}"
        );
        let empty = RoiSpec::rect(RoiRect {
            rows: [2, 2],
            cols: [0, 1],
        })
        .build(NAV, &dir)
        .unwrap_err();
        assert!(matches!(empty, SpecError::Roi { field: "rect", .. }));
        let both = RoiSpec {
            rect: Some(RoiRect {
                rows: [0, 1],
                cols: [0, 1],
            }),
            coords: Some(vec![[0, 0]]),
            mask: None,
        }
        .build(NAV, &dir)
        .unwrap_err()
        .to_string();
        assert!(
            both.contains("exactly one") && both.contains("rect and coords"),
            "{both}"
        );
        let none = RoiSpec::default().build(NAV, &dir).unwrap_err().to_string();
        assert!(none.contains("found none"), "{none}");
        let coord = RoiSpec {
            coords: Some(vec![[4, 0]]),
            ..RoiSpec::default()
        }
        .build(NAV, &dir)
        .unwrap_err()
        .to_string();
        assert!(
            coord.contains("coords") && coord.contains("[4, 0]"),
            "{coord}"
        );
        write_npy(&dir.join("wrong.npy"), "|u1", &[5, 4], &[0; 20]);
        let shape = RoiSpec::mask_file("wrong.npy")
            .build(NAV, &dir)
            .unwrap_err()
            .to_string();
        assert!(
            shape.contains("[4, 5]") && shape.contains("[5, 4]"),
            "{shape}"
        );
        let gone = RoiSpec::mask_file("gone.npy")
            .build(NAV, &dir)
            .unwrap_err()
            .to_string();
        assert!(gone.contains("gone.npy"), "{gone}");
        let e = ReductionSpec::from_toml("[roi]\nrect = { rows = [0, 1] }\n", "r.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("r.toml") && e.contains("roi") && e.contains("cols"),
            "{e}"
        );
    }

    #[test]
    fn parse_errors_name_entry_kind_and_key() {
        let err = |text: &str| {
            ReductionSpec::from_toml(text, "bad.toml")
                .err()
                .unwrap_or_else(|| panic!("accepted: {text}"))
                .to_string()
        };
        let e = err("[[udf]]\nkind = \"sum\"\n[[udf]]\nkind = \"com\"\nradius = 3\n");
        assert!(
            e.contains("bad.toml")
                && e.contains("udf[1]")
                && e.contains("kind = \"com\"")
                && e.contains("radius")
                && e.contains("mask_radius"),
            "{e}"
        );
        let e = err("[[udf]]\nkind = \"fft\"\n");
        assert!(
            e.contains("unknown kind `fft`") && e.contains("radial"),
            "{e}"
        );
        let e = err("[[udf]]\nname = \"x\"\n");
        assert!(
            e.contains("udf[0]") && e.contains("`kind` is missing"),
            "{e}"
        );
        let e = err("[[udf]]\nkind = \"com\"\ncy = 3\ncx = \"middle\"\n");
        assert!(
            e.contains("udf[0]") && e.contains("`cx`") && e.contains("middle") && e.contains("f64"),
            "{e}"
        );
        let e = err(
            "[[udf]]\nkind = \"masks\"\nmasks = [ { name = \"a\", disk = { r = \"big\" } } ]\n",
        );
        assert!(e.contains("big"), "{e}");
        let e = err("[[udf]]\nkind = \"pick\"\nrow = 1\n");
        assert!(e.contains("pick") && e.contains("col"), "{e}");
        let e = err("[[udf]]\nkind = \"masks\"\nmasks = [ { name = \"a\", dsk = { r = 1 } } ]\n");
        assert!(e.contains("dsk") && e.contains("disk"), "{e}");
        let e = err("[[udf]]\nkind = \"sum\"\n[extra]\nx = 1\n");
        assert!(e.contains("unknown top-level key `extra`"), "{e}");
        let e = err("udf = 3\n");
        assert!(e.contains("array of tables"), "{e}");
        let e = err("[[udf]\n");
        assert!(e.contains("bad.toml"), "{e}");
    }

    #[test]
    fn build_errors_name_entry_field_expected_and_found() {
        let dir = scratch("build-errors");
        let build = |text: &str| {
            ReductionSpec::from_toml(text, "b.toml")
                .unwrap()
                .build(SIG, NAV, &dir)
                .err()
                .unwrap_or_else(|| panic!("built: {text}"))
        };
        let e = build("[[udf]]\nkind = \"pick\"\nrow = 4\ncol = 0\n").to_string();
        assert!(
            e.contains("udf[0]") && e.contains("`row`") && e.contains("found 4"),
            "{e}"
        );
        let e = build("[[udf]]\nkind = \"com\"\nmask_radius = -1\n").to_string();
        assert!(e.contains("mask_radius") && e.contains("found -1"), "{e}");
        let e = build("[[udf]]\nkind = \"radial\"\nn_bins = 0\n").to_string();
        assert!(e.contains("n_bins"), "{e}");
        let e =
            build("[[udf]]\nkind = \"masks\"\nmasks = [ { name = \"a\", disk = { r = -2 } } ]\n")
                .to_string();
        assert!(e.contains("masks[0] (a)") && e.contains("-2"), "{e}");
        let e = build(
            "[[udf]]\nkind = \"masks\"\nmasks = [ { name = \"a\", disk = {}, ring = {} } ]\n",
        )
        .to_string();
        assert!(
            e.contains("exactly one") && e.contains("disk and ring"),
            "{e}"
        );
        let e = build("[[udf]]\nkind = \"masks\"\nmasks = [ { name = \"a\" } ]\n").to_string();
        assert!(e.contains("found none"), "{e}");
        let e = build(
            "[[udf]]\nkind = \"masks\"\nmasks = [ { name = \"a\", disk = {} }, { name = \"a\", ring = {} } ]\n",
        )
        .to_string();
        assert!(e.contains("masks[1].name") && e.contains("masks[0]"), "{e}");
        let e = build(
            "[[udf]]\nkind = \"masks\"\nmasks = [ { name = \"p\", polygon = [[0, 0], [1, 1]] } ]\n",
        )
        .to_string();
        assert!(e.contains("3 vertices"), "{e}");
        let e = build("[[udf]]\nkind = \"sum\"\n[[udf]]\nkind = \"stats\"\nname = \"sum\"\n");
        assert!(
            matches!(
                e,
                SpecError::DuplicateName {
                    first: 0,
                    second: 1,
                    ..
                }
            ),
            "{e}"
        );
        assert!(matches!(
            build("[roi]\ncoords = [[0, 0]]\n"),
            SpecError::Empty
        ));
    }
}
