//! Outputs of a run: the summary on the terminal (with one line per UDF), `run.json` (with
//! an index of every result buffer), PNG images (a figure and a one-pixel-per-position grey
//! image of every 2-D nav result, the mean diffraction pattern, an overview; drawn by
//! [`crate::figure`]), and the HDF5 recording adapter for the recorder actor.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use stemflow_actors::orchestrator::{ExitStatus, RunRecord};
use stemflow_actors::recorder::{Recording, RecordingRequest};
use stemflow_core::NavShape;
use stemflow_core::metadata::RunMetadata;
use stemflow_core::metadata::{EMD_ALIAS, RECORDING_FILE};
use stemflow_core::result::{BufferKind, UdfResults};
use stemflow_core::sink::{SinkError, TileSink};
use stemflow_core::validity::FrameValidity;
use stemflow_recording::hdf5::{Compression, Hdf5Recorder, RecordingSpec};

/// The HDF5 recording as the recorder actor's [`Recording`].
struct Hdf5Recording(Hdf5Recorder);

impl TileSink for Hdf5Recording {
    fn name(&self) -> &str {
        "hdf5 recorder"
    }
    fn write_tile(&mut self, tile: &stemflow_core::frame::Tile) -> Result<(), SinkError> {
        TileSink::write_tile(&mut self.0, tile)
    }
    fn takes_raw(&self, filter: u32) -> bool {
        self.0.takes_raw(filter)
    }
    fn write_tile_with_raw(
        &mut self,
        tile: &stemflow_core::frame::Tile,
        raw: &stemflow_core::frame::RawStack,
        damaged: &[u64],
    ) -> Result<(), SinkError> {
        self.0.write_tile_with_raw(tile, raw, damaged)
    }
    fn write_csr(
        &mut self,
        rows: &stemflow_core::csr::CsrRows,
        damaged: &[u64],
    ) -> Result<(), SinkError> {
        TileSink::write_csr(&mut self.0, rows, damaged)
    }
}

impl Recording for Hdf5Recording {
    fn finish(
        self: Box<Self>,
        results: &[UdfResults],
        validity: &FrameValidity,
        metadata: &RunMetadata,
        run_record: &serde_json::Value,
    ) -> Result<PathBuf, String> {
        self.0
            .finish(results, validity, metadata, Some(run_record))
            .map(|s| s.path)
            .map_err(|e| e.to_string())
    }
}

/// How the recorder actor's recordings are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordingOutput {
    /// Record the raw frames (false: `--no-raw`; the file holds no frames dataset).
    pub raw: bool,
    /// The frames' compression.
    pub compression: Compression,
    /// The frames arrive sparse (an event camera, ASI TPX3): recorded as CSR rows.
    pub sparse: bool,
}

impl Default for RecordingOutput {
    fn default() -> Self {
        Self {
            raw: true,
            compression: crate::options::DEFAULT_COMPRESSION,
            sparse: false,
        }
    }
}

/// The recording of a run: raw frames unless `no_raw`, the compression of `choice`, else
/// the profile's `[recording] compression`, else [`crate::options::DEFAULT_COMPRESSION`].
///
/// # Errors
/// The profile names an unknown compression (the error names the key).
pub fn recording_output(
    choice: &crate::options::RecordingChoice,
    no_raw: bool,
    profile: Option<&stemflow_config::Profile>,
) -> Result<RecordingOutput> {
    let from_profile = match profile.and_then(|p| p.recording.compression.as_deref()) {
        Some(name) => Some(
            name.parse::<Compression>()
                .map_err(|e| anyhow::anyhow!("profile key `recording.compression`: {e}"))?,
        ),
        None => None,
    };
    Ok(RecordingOutput {
        sparse: profile.is_some_and(|p| {
            crate::registry::DetectorKind::from_name(&p.detector.kind)
                .is_some_and(crate::registry::DetectorKind::is_sparse)
        }),
        raw: !no_raw,
        compression: choice
            .compression
            .or(from_profile)
            .unwrap_or(crate::options::DEFAULT_COMPRESSION),
    })
}

/// Opens an HDF5 recording for the recorder actor.
///
/// # Errors
/// The recorder's error as text (it names the file and what failed).
pub fn open_recording(
    req: &RecordingRequest,
    out: RecordingOutput,
) -> Result<Box<dyn Recording>, String> {
    let mut spec = RecordingSpec::new(req.nav_shape, req.sig_shape, req.dtype);
    spec.frames_written = out.raw;
    spec.compression = out.compression;
    spec.sparse = out.sparse;
    Hdf5Recorder::create_with_metadata(&req.path, spec, Some(&req.metadata))
        .map(|r| Box::new(Hdf5Recording(r)) as Box<dyn Recording>)
        .map_err(|e| e.to_string())
}

/// How the summary names an exit status (run.json keeps the machine-readable name).
fn exit_status_text(s: ExitStatus) -> &'static str {
    match s {
        ExitStatus::Completed => "completed",
        ExitStatus::CompletedWithLoss => "completed with lost or damaged frames",
        ExitStatus::Cancelled => "cancelled",
        ExitStatus::Fault => "fault",
    }
}

/// How the summary names the receiver's end reason (run.json's `end_reason` keeps the
/// receiver's own name, e.g. `AllFrames`); an unknown name is shown as it is.
fn end_reason_text(reason: &str) -> &str {
    match reason {
        "AllFrames" => "every expected frame received",
        "SeriesEnd" => "the detector's end-of-series message",
        "InactivityDeadline" => "no frame within the inactivity deadline",
        "NewHeader" | "NewSeries" => "a new acquisition started on the detector",
        "Stopped" => "the acquisition was stopped",
        "Disarmed" => "the detector was disarmed (cancel)",
        "Disconnected" => "the detector closed the connection",
        "Failed" => "a receive error",
        other => other,
    }
}

/// Prints the end-of-run summary.
pub fn print_summary(r: &RunRecord) {
    let mb = r.bytes_processed as f64 / 1e6;
    // Over the time the detector was armed: a passive run's wait for someone to arm it
    // (or configuring, in active mode) is not acquiring.
    let acquiring = if r.acquisition_s > 0.0 {
        r.acquisition_s
    } else {
        r.duration_s
    };
    let rate = if acquiring > 0.0 {
        r.frames_processed as f64 / acquiring
    } else {
        0.0
    };
    println!("── run summary ──────────────────────────────────────────────");
    println!("exit status      {}", exit_status_text(r.exit_status));
    if let Some(e) = &r.error {
        println!("error            {e}");
    }
    println!(
        "frames           {} expected, {} received, {} lost, {} damaged, {} processed",
        r.frames_expected, r.frames_received, r.frames_lost, r.frames_damaged, r.frames_processed
    );
    if r.frames_not_acquired > 0 {
        println!(
            "not acquired     {} (the run was cancelled before those positions)",
            r.frames_not_acquired
        );
    }
    println!("data             {mb:.1} MB in {acquiring:.2} s acquiring ({rate:.0} frames/s)");
    let before = r.duration_s - acquiring;
    if before >= 0.05 {
        println!(
            "before that      {before:.2} s {}",
            if r.metadata.mode == "passive" {
                "waiting for the detector to be armed"
            } else {
                "configuring and arming"
            }
        );
    }
    if !r.end_reason.is_empty() {
        println!("ended by         {}", end_reason_text(&r.end_reason));
    }
    if let Some(m) = &r.metadata.microscope {
        println!(
            "microscope       {:.0} kV, camera length {:.3} m, convergence {:.1} mrad, defocus {:.1} nm",
            m.high_tension_v / 1e3,
            m.camera_length_m,
            m.convergence_angle_rad * 1e3,
            m.defocus_m * 1e9
        );
    }
    if let Some(p) = &r.output_file {
        println!("recording        {}", p.display());
    }
}

/// The files an earlier run left in an output folder (any stemflow version's names).
const EARLIER_OUTPUTS: [&str; 10] = [
    RECORDING_FILE,
    EMD_ALIAS,
    "run.json",
    "scan.h5",
    "acquisition.h5",
    "processed.h5",
    // A sparse recording's LiberTEM raw_csr files (docs/formats.md §1.3).
    "recording.toml",
    "recording.indptr",
    "recording.indices",
    "recording.values",
];

/// Makes the output folder `out` for a new run. A folder holding an earlier run's outputs
/// (recording, run.json) is refused unless `overwrite`, which removes them (and their PNG
/// images) first, so that nothing of the earlier run is mistaken for the new one's.
///
/// # Errors
/// The folder cannot be made; it holds an earlier run and `overwrite` is false (the error
/// names the files); an earlier output cannot be removed.
pub fn prepare_out(out: &Path, overwrite: bool) -> Result<()> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("creating output folder {}", out.display()))?;
    let earlier: Vec<PathBuf> = EARLIER_OUTPUTS
        .iter()
        .map(|n| out.join(n))
        .filter(|p| p.symlink_metadata().is_ok())
        .collect();
    if earlier.is_empty() {
        return Ok(());
    }
    if !overwrite {
        let names: Vec<String> = earlier
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        anyhow::bail!(
            "{} holds the outputs of an earlier run ({}); choose another --out, or give \
             --overwrite to replace them",
            out.display(),
            names.join(", ")
        );
    }
    let pngs = std::fs::read_dir(out)
        .with_context(|| format!("listing {}", out.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "png"));
    for p in earlier.into_iter().chain(pngs) {
        std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
    }
    Ok(())
}

/// Links [`EMD_ALIAS`] to the recording `out/recording.hspy` ([`link_emd_alias_for`]).
pub fn link_emd_alias(out: &Path) {
    link_emd_alias_for(&out.join(RECORDING_FILE));
}

/// Links `<stem>.emd` beside the recording `file` (a `.hspy` file) to it when it holds
/// frames (the py4DSTEM view needs them), replacing an older link: py4DSTEM picks its
/// reader by extension and reads the same file as EMD 1.0. A file system without symbolic
/// links is said on stderr and skipped: the `.hspy` file is complete without it.
pub fn link_emd_alias_for(file: &Path) {
    if file.extension().is_none_or(|e| e != "hspy") {
        return;
    }
    let has_frames = stemflow_recording::open_recording(file).is_ok_and(|r| r.has_frames());
    if !has_frames {
        return;
    }
    let (Some(name), alias) = (file.file_name(), file.with_extension("emd")) else {
        return;
    };
    if alias.symlink_metadata().is_ok() {
        let _ = std::fs::remove_file(&alias);
    }
    #[cfg(unix)]
    if let Err(e) = std::os::unix::fs::symlink(name, &alias) {
        eprintln!(
            "note: could not link {} to {} ({e}); py4DSTEM users can copy or rename the \
             file to .emd",
            alias.display(),
            file.display()
        );
    }
}

/// Writes `run.json` into `out`: the run record, plus `results`, the index of every UDF
/// buffer computed ([`results_index`]); links the py4DSTEM name of the recording
/// ([`link_emd_alias`]).
pub fn write_run_record(out: &Path, r: &RunRecord, results: &[UdfResults]) -> Result<()> {
    link_emd_alias(out);
    let p = out.join("run.json");
    let mut value = serde_json::to_value(r)?;
    if let Some(map) = value.as_object_mut() {
        map.insert("results".into(), results_index(results));
        map.insert("udfs".into(), udfs_index(results));
    }
    let text = serde_json::to_string_pretty(&value)?;
    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    Ok(())
}

/// Every UDF buffer of `results` for `run.json`: `udf`, `buffer`, `kind` (`nav`, `sig`,
/// `single`), `shape`, `unit`, and `finite` (values that are not NaN — outside a ROI, nav
/// values are NaN). The values themselves are in the HDF5 file under
/// `/entry/results/<udf>/<buffer>`.
pub fn results_index(results: &[UdfResults]) -> serde_json::Value {
    results
        .iter()
        .flat_map(|r| {
            r.buffers.iter().map(move |b| {
                serde_json::json!({
                    "udf": r.udf,
                    "buffer": b.name,
                    "kind": kind_name(b.kind),
                    "shape": b.shape,
                    "unit": b.unit,
                    "dtype": b.dtype.numpy_name(),
                    "finite": b.data.iter().filter(|v| v.is_finite()).count(),
                })
            })
        })
        .collect()
}

/// Every UDF of `results` for `run.json` → `udfs`: its name and the parameters that
/// produced its results (`UdfResults::params`, parsed; `null` for a UDF without
/// parameters), e.g. `{"udf": "com", "params": {"cx": 128.0, "cy": 128.0, …}}`.
pub fn udfs_index(results: &[UdfResults]) -> serde_json::Value {
    results
        .iter()
        .map(|r| {
            let params = serde_json::from_str(&r.params).unwrap_or(serde_json::Value::Null);
            serde_json::json!({ "udf": r.udf, "params": params })
        })
        .collect()
}

fn kind_name(k: BufferKind) -> &'static str {
    match k {
        BufferKind::Nav => "nav",
        BufferKind::Sig => "sig",
        BufferKind::Single => "single",
    }
}

/// One line per UDF for the terminal: each buffer with its shape, kind, unit and the mean
/// of its finite values (a single value is printed as is), e.g.
/// `virtual: bf [16x16 nav, counts] mean 1234.5 (200/256 finite); adf …`.
pub fn udf_summary_lines(results: &[UdfResults]) -> Vec<String> {
    results
        .iter()
        .map(|r| {
            let bufs: Vec<String> = r
                .buffers
                .iter()
                .map(|b| {
                    let shape = b
                        .shape
                        .iter()
                        .map(usize::to_string)
                        .collect::<Vec<_>>()
                        .join("x");
                    let finite: Vec<f64> =
                        b.data.iter().copied().filter(|v| v.is_finite()).collect();
                    let head = if shape.is_empty() {
                        format!("{} [{}, {}]", b.name, kind_name(b.kind), b.unit)
                    } else {
                        format!("{} [{} {}, {}]", b.name, shape, kind_name(b.kind), b.unit)
                    };
                    if b.data.len() == 1 {
                        format!("{head} = {}", b.data[0])
                    } else if finite.is_empty() {
                        format!("{head} no finite values")
                    } else {
                        let mean = finite.iter().sum::<f64>() / finite.len() as f64;
                        format!(
                            "{head} mean {} ({}/{} finite)",
                            short(mean),
                            finite.len(),
                            b.data.len()
                        )
                    }
                })
                .collect();
            format!("{}: {}", r.udf, bufs.join("; "))
        })
        .collect()
}

/// `v` with at most 6 decimals, trailing zeros dropped (`28918`, `3.8`, `0.441254`);
/// small magnitudes in scientific notation (`1.234e-5`).
fn short(v: f64) -> String {
    if v != 0.0 && v.abs() < 1e-3 {
        return format!("{v:.3e}");
    }
    let t = format!("{v:.6}");
    t.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A file-name-safe form of a UDF or buffer name.
fn file_part(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// How a nav result is mapped to grey for its PNG (files and the live view alike): centred
/// on zero at the 99th percentile of |value| when any value is negative (CoM shifts,
/// divergence, curl), else the 0.5–99.5 % range.
pub fn scaling_for(data: &[f64]) -> stemflow_recording::png::Scaling {
    use stemflow_recording::png::Scaling;
    if data.iter().any(|v| *v < 0.0) {
        Scaling::Diverging { percentile: 99.0 }
    } else {
        Scaling::default()
    }
}

/// What the figures of a run know beyond its results.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImageOptions {
    /// The size of one scan position (the step between neighbouring positions) and its
    /// unit, e.g. `(2.5, "nm")`: every map gets a scale bar. `None`: the scan is not
    /// calibrated, and the maps have none.
    pub scan_step: Option<(f64, String)>,
    /// Frames summed into the `sum` UDF's `intensity` (the frames the UDFs processed):
    /// `mean_diffraction_pattern.png` is that sum divided by this. `None` or 0: no mean
    /// diffraction pattern is drawn.
    pub frames_summed: Option<u64>,
}

impl ImageOptions {
    /// The options for a run's record: its scan step (the calibration in its metadata) and
    /// the frames it processed.
    pub fn for_record(record: &RunRecord) -> Self {
        Self {
            scan_step: record
                .metadata
                .calibration
                .as_ref()
                .and_then(|c| c.scan_step_nm)
                .map(|s| (s, "nm".to_string())),
            frames_summed: Some(record.frames_processed),
        }
    }
}

/// The UDF whose `intensity` sig buffer is the summed diffraction pattern.
const SUM_UDF: &str = "sum";

/// Writes the images of a run into `out` and returns their paths:
///
/// - for every 2-D nav result (shape `[nav_rows, nav_cols]`, e.g. `virtual`/`bf`):
///   - `<udf>_<buffer>.png`: a figure to look at — the map enlarged by a whole factor
///     (each scan position a square of pixels) to at least 512 pixels on its longest
///     side, in viridis, or for a signed map (any negative value: CoM x/y, divergence,
///     curl) in blue–white–red centred on zero; a colour bar with round tick values and
///     the buffer's unit; the title `<udf>: <buffer> (rows × cols)`; a scale bar when
///     `opts.scan_step` is given. NaN (outside a ROI, not processed) is grey. A map one
///     side of which is at least 16 times the other (an unshaped file's `1 × N`) is drawn
///     as a line plot of its values in frame order instead.
///   - `<udf>_<buffer>_raw.png`: the same values as an 8-bit grey PNG of one pixel per
///     scan position, scaled as before and as the live view
///     ([`stemflow_recording::png::write_png_image`]; the values at black and white in its
///     text chunks), for programs that read the map back.
/// - `mean_diffraction_pattern.png`: the `sum` UDF's `intensity` divided by
///   `opts.frames_summed`, on a log scale (inferno, colour bar in decades, unit
///   `<unit>/frame`), when both are there.
/// - `overview.png`: every figure above, smaller, in one picture with their titles.
///
/// Both map colour scales use the limits of the grey PNG ([`scaling_for`]); values beyond
/// them take the end colours.
///
/// # Errors
/// An image cannot be written (the error names the file).
pub fn write_images(
    out: &Path,
    results: &[UdfResults],
    nav: Option<NavShape>,
    opts: &ImageOptions,
) -> Result<Vec<PathBuf>> {
    use crate::figure::{self, ColourScale, FULL, Map, TILE};
    use stemflow_recording::png::write_png_image;
    let mut written = Vec::new();
    let mut tiles = Vec::new();
    let step = opts
        .scan_step
        .as_ref()
        .map(|(size, unit)| (*size, unit.as_str()));
    let maps = results
        .iter()
        .flat_map(|r| r.buffers.iter().map(move |b| (r, b)));
    for (r, b) in maps {
        let Some(nav) = nav else { break };
        if b.kind != BufferKind::Nav || b.shape != [nav.rows, nav.cols] || b.data.len() != nav.len()
        {
            continue;
        }
        let stem = format!("{}_{}", file_part(&r.udf), file_part(&b.name));
        let p = out.join(format!("{stem}.png"));
        let scale = ColourScale::for_map(&b.data);
        let draw = |size| {
            if figure::is_profile(nav.rows, nav.cols) {
                let title = format!(
                    "{}: {} ({} frames, no scan shape)",
                    r.udf,
                    b.name,
                    nav.len()
                );
                figure::render_profile(&title, &b.data, &b.unit, scale, size)
            } else {
                let title = format!("{}: {} ({} × {})", r.udf, b.name, nav.rows, nav.cols);
                let map = Map {
                    title: &title,
                    data: &b.data,
                    rows: nav.rows,
                    cols: nav.cols,
                    unit: &b.unit,
                    scale,
                    step,
                };
                figure::render_map(&map, size)
            }
        };
        draw(FULL).canvas.write_png(&p)?;
        written.push(p);
        tiles.push(draw(TILE).canvas);
        let raw = out.join(format!("{stem}_raw.png"));
        write_png_image(&raw, &b.data, (nav.rows, nav.cols), scaling_for(&b.data))
            .with_context(|| format!("writing {}", raw.display()))?;
        written.push(raw);
    }
    if let Some((mean, rows, cols, unit)) = mean_pattern(results, opts.frames_summed) {
        let title = format!("mean diffraction pattern, log ({rows} × {cols})");
        let unit = format!("{unit}/frame");
        let map = Map {
            title: &title,
            data: &mean,
            rows,
            cols,
            unit: &unit,
            scale: ColourScale::for_pattern(&mean),
            step: None,
        };
        let p = out.join("mean_diffraction_pattern.png");
        figure::render_map(&map, FULL).canvas.write_png(&p)?;
        written.push(p);
        tiles.push(figure::render_map(&map, TILE).canvas);
    }
    if !tiles.is_empty() {
        let header = match nav {
            Some(n) => format!("stemflow results: {} × {} scan", n.rows, n.cols),
            None => "stemflow results".to_string(),
        };
        let p = out.join("overview.png");
        figure::overview(&header, &tiles).write_png(&p)?;
        written.push(p);
    }
    Ok(written)
}

/// The mean diffraction pattern: the `sum` UDF's `intensity` (a 2-D sig buffer) divided
/// by `frames` (> 0), with its rows, columns and unit.
fn mean_pattern(
    results: &[UdfResults],
    frames: Option<u64>,
) -> Option<(Vec<f64>, usize, usize, String)> {
    let frames = frames.filter(|&f| f > 0)? as f64;
    let b = results
        .iter()
        .find(|r| r.udf == SUM_UDF)?
        .buffer("intensity")?;
    let &[rows, cols] = b.shape.as_slice() else {
        return None;
    };
    if b.kind != BufferKind::Sig || b.data.len() != rows * cols {
        return None;
    }
    let mean = b.data.iter().map(|v| v / frames).collect();
    Some((mean, rows, cols, b.unit.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stemflow_core::result::ResultBuffer;

    fn results() -> Vec<UdfResults> {
        let buf = |name: &str, kind, shape: Vec<usize>, data: Vec<f64>| ResultBuffer {
            name: name.into(),
            kind,
            shape,
            data,
            unit: "counts".into(),
            dtype: Default::default(),
        };
        vec![UdfResults {
            udf: "my det".into(),
            params: String::new(),
            buffers: vec![
                buf(
                    "a",
                    BufferKind::Nav,
                    vec![2, 3],
                    vec![1.0, f64::NAN, 3.0, 4.0, 5.0, 6.0],
                ),
                buf("s", BufferKind::Sig, vec![2, 2], vec![0.0; 4]),
                buf("p", BufferKind::Nav, vec![2, 3, 4], vec![0.0; 24]),
                buf("n", BufferKind::Single, vec![], vec![7.0]),
            ],
        }]
    }

    #[test]
    fn every_2d_nav_buffer_gets_an_image_and_an_index_entry() {
        let dir = std::env::temp_dir().join(format!("stemflow-output-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let r = results();
        let opts = ImageOptions::default();
        let written = write_images(&dir, &r, Some(NavShape::new(2, 3)), &opts).unwrap();
        assert_eq!(
            written,
            vec![
                dir.join("my_det_a.png"),
                dir.join("my_det_a_raw.png"),
                dir.join("overview.png")
            ]
        );
        // The figure is enlarged (2 × 3 positions at 171 pixels each), the raw image is one
        // pixel per position.
        let (w, h) = png_size(&dir.join("my_det_a.png"));
        assert!(w > 3 * 171 && h > 2 * 171, "{w} × {h}");
        assert_eq!(png_size(&dir.join("my_det_a_raw.png")), (3, 2));
        assert!(
            write_images(&dir, &r, Some(NavShape::new(3, 2)), &opts)
                .unwrap()
                .is_empty()
        );
        let index = results_index(&r);
        assert_eq!(index.as_array().unwrap().len(), 4);
        assert_eq!(index[0]["finite"], 5);
        assert_eq!(index[0]["dtype"], "float64");
        assert_eq!(index[2]["shape"], serde_json::json!([2, 3, 4]));
        let lines = udf_summary_lines(&r);
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].starts_with("my det: a [2x3 nav, counts] mean 3.8 "),
            "{}",
            lines[0]
        );
        assert!(
            lines[0].contains("(5/6 finite)") && lines[0].contains("n [single, counts] = 7"),
            "{}",
            lines[0]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The `sum` UDF's intensity divided by the frames summed, drawn on a log scale at the
    /// signal's shape; an unshaped scan's maps are line plots.
    #[test]
    fn the_mean_diffraction_pattern_and_an_unshaped_scan() {
        let dir = std::env::temp_dir().join(format!("stemflow-output-dp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pattern: Vec<f64> = (0..8 * 6).map(|i| f64::from(i * i)).collect();
        let r = vec![
            UdfResults {
                udf: "sum".into(),
                params: String::new(),
                buffers: vec![ResultBuffer {
                    name: "intensity".into(),
                    kind: BufferKind::Sig,
                    shape: vec![8, 6],
                    data: pattern.clone(),
                    unit: "counts".into(),
                    dtype: Default::default(),
                }],
            },
            UdfResults {
                udf: "sum_sig".into(),
                params: String::new(),
                buffers: vec![ResultBuffer {
                    name: "intensity".into(),
                    kind: BufferKind::Nav,
                    shape: vec![1, 40],
                    data: (0..40).map(f64::from).collect(),
                    unit: "counts".into(),
                    dtype: Default::default(),
                }],
            },
        ];
        let (mean, rows, cols, unit) = mean_pattern(&r, Some(4)).unwrap();
        assert_eq!((rows, cols, unit.as_str()), (8, 6, "counts"));
        assert_eq!(mean[3], 9.0 / 4.0);
        assert!(matches!(
            crate::figure::ColourScale::for_pattern(&mean),
            crate::figure::ColourScale::Log { hi, .. } if hi == 47.0 * 47.0 / 4.0
        ));
        assert!(mean_pattern(&r, Some(0)).is_none() && mean_pattern(&r, None).is_none());
        let opts = ImageOptions {
            frames_summed: Some(4),
            ..Default::default()
        };
        let written = write_images(&dir, &r, Some(NavShape::new(1, 40)), &opts).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "sum_sig_intensity.png",
                "sum_sig_intensity_raw.png",
                "mean_diffraction_pattern.png",
                "overview.png"
            ]
        );
        // 8 × 6 at 64 pixels per detector pixel; the line plot is 1024 pixels wide.
        let (w, h) = png_size(&dir.join("mean_diffraction_pattern.png"));
        assert!(w > 6 * 64 && h > 8 * 64, "{w} × {h}");
        assert!(png_size(&dir.join("sum_sig_intensity.png")).0 > 1024);
        assert_eq!(png_size(&dir.join("sum_sig_intensity_raw.png")), (40, 1));
        // Without a scan shape there are no maps, but still the pattern and the overview.
        assert_eq!(write_images(&dir, &r, None, &opts).unwrap().len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Width and height of the PNG at `p`.
    fn png_size(p: &Path) -> (u32, u32) {
        let file = std::fs::File::open(p).unwrap();
        let reader = png::Decoder::new(std::io::BufReader::new(file))
            .read_info()
            .unwrap();
        let info = reader.info();
        (info.width, info.height)
    }
}
