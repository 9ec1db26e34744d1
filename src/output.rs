//! Outputs of a run: the summary on the terminal, `run.json`, PNG images, and the HDF5
//! recording adapter for the recorder actor.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use stemflow_actors::orchestrator::RunRecord;
use stemflow_actors::recorder::{Recording, RecordingRequest};
use stemflow_core::metadata::RunMetadata;
use stemflow_core::result::UdfResults;
use stemflow_core::sink::{SinkError, TileSink};
use stemflow_core::validity::FrameValidity;
use stemflow_core::{DType, NavShape};
use stemflow_recording::hdf5::{Hdf5Recorder, RecordingSpec};

/// Merlin counter depth → decoded dtype (protocols.md §1.7).
pub fn dtype_for_depth(depth: u32) -> DType {
    match depth {
        1 | 6 => DType::U8,
        12 => DType::U16,
        _ => DType::U32,
    }
}

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
    Hdf5Recorder::create(&req.path, spec)
        .map(|r| Box::new(Hdf5Recording(r)) as Box<dyn Recording>)
        .map_err(|e| e.to_string())
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
    println!("exit status      {:?}", r.exit_status);
    if let Some(e) = &r.error {
        println!("error            {e}");
    }
    println!(
        "frames           {} expected, {} received, {} lost, {} damaged, {} processed",
        r.frames_expected, r.frames_received, r.frames_lost, r.frames_damaged, r.frames_processed
    );
    println!(
        "data             {mb:.1} MB in {:.2} s ({rate:.0} frames/s overall)",
        r.duration_s
    );
    if !r.end_reason.is_empty() {
        println!("ended by         {}", r.end_reason);
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

/// Writes `run.json` (the run record) into `out`.
pub fn write_run_record(out: &Path, r: &RunRecord) -> Result<()> {
    let p = out.join("run.json");
    let text = serde_json::to_string_pretty(r)?;
    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    Ok(())
}

/// Writes PNG images of the 2-D nav results: virtual BF, ADF, CoM x/y (and magnitude).
pub fn write_images(
    out: &Path,
    results: &[UdfResults],
    nav: Option<NavShape>,
) -> Result<Vec<PathBuf>> {
    use stemflow_recording::png::{Scaling, write_png_image};
    let Some(nav) = nav else { return Ok(vec![]) };
    let mut written = Vec::new();
    let wanted: [(&str, &str, &str, Scaling); 4] = [
        ("virtual", "bf", "virtual_bf.png", Scaling::default()),
        ("virtual", "adf", "virtual_adf.png", Scaling::default()),
        (
            "com",
            "x",
            "com_x.png",
            Scaling::Diverging { percentile: 99.0 },
        ),
        (
            "com",
            "y",
            "com_y.png",
            Scaling::Diverging { percentile: 99.0 },
        ),
    ];
    for (udf, buf, file, scaling) in wanted {
        let Some(b) = results
            .iter()
            .find(|r| r.udf == udf)
            .and_then(|r| r.buffer(buf))
        else {
            continue;
        };
        if b.data.len() != nav.len() {
            continue;
        }
        let p = out.join(file);
        write_png_image(&p, &b.data, (nav.rows, nav.cols), scaling)
            .with_context(|| format!("writing {}", p.display()))?;
        written.push(p);
    }
    Ok(written)
}
