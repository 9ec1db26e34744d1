//! Outputs of a run: the summary on the terminal (with one line per UDF), `run.json` (with
//! an index of every result buffer), PNG images of every 2-D nav result, and the HDF5
//! recording adapter for the recorder actor.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use stemflow_actors::orchestrator::{ExitStatus, RunRecord};
use stemflow_actors::recorder::{Recording, RecordingRequest};
use stemflow_core::NavShape;
use stemflow_core::metadata::RunMetadata;
use stemflow_core::result::{BufferKind, UdfResults};
use stemflow_core::sink::{SinkError, TileSink};
use stemflow_core::validity::FrameValidity;
use stemflow_recording::hdf5::{Hdf5Recorder, RecordingSpec};

/// The HDF5 recording as the recorder actor's [`Recording`].
struct Hdf5Recording(Hdf5Recorder);

impl TileSink for Hdf5Recording {
    fn name(&self) -> &str {
        "hdf5 recorder"
    }
    fn write_tile(&mut self, tile: &stemflow_core::frame::Tile) -> Result<(), SinkError> {
        TileSink::write_tile(&mut self.0, tile)
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

/// Opens an HDF5 recording for the recorder actor.
pub fn open_recording(req: &RecordingRequest) -> Result<Box<dyn Recording>, String> {
    let spec = RecordingSpec::new(req.nav_shape, req.sig_shape, req.dtype);
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
    let rate = if r.duration_s > 0.0 {
        r.frames_processed as f64 / r.duration_s
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
    println!(
        "data             {mb:.1} MB in {:.2} s ({rate:.0} frames/s overall)",
        r.duration_s
    );
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

/// Writes `run.json` into `out`: the run record, plus `results`, the index of every UDF
/// buffer computed ([`results_index`]).
pub fn write_run_record(out: &Path, r: &RunRecord, results: &[UdfResults]) -> Result<()> {
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

/// Writes a PNG image `<udf>_<buffer>.png` of every 2-D nav result (shape
/// `[nav_rows, nav_cols]`; e.g. `virtual_bf.png`, `com_x.png`). Signed maps (any negative
/// value, e.g. CoM x/y) are scaled symmetrically about zero, the others between
/// percentiles; NaN (outside a ROI) is black.
///
/// # Errors
/// A PNG cannot be written (the error names the file).
pub fn write_images(
    out: &Path,
    results: &[UdfResults],
    nav: Option<NavShape>,
) -> Result<Vec<PathBuf>> {
    use stemflow_recording::png::write_png_image;
    let Some(nav) = nav else { return Ok(vec![]) };
    let mut written = Vec::new();
    for r in results {
        for b in &r.buffers {
            if b.kind != BufferKind::Nav
                || b.shape != [nav.rows, nav.cols]
                || b.data.len() != nav.len()
            {
                continue;
            }
            let scaling = scaling_for(&b.data);
            let p = out.join(format!("{}_{}.png", file_part(&r.udf), file_part(&b.name)));
            write_png_image(&p, &b.data, (nav.rows, nav.cols), scaling)
                .with_context(|| format!("writing {}", p.display()))?;
            written.push(p);
        }
    }
    Ok(written)
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
        let written = write_images(&dir, &r, Some(NavShape::new(2, 3))).unwrap();
        assert_eq!(written, vec![dir.join("my_det_a.png")]);
        assert!(
            write_images(&dir, &r, Some(NavShape::new(3, 2)))
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
}
