//! `stemflow process`: the live reductions, offline, on a recorded Merlin `.hdr`/`.mib` set,
//! writing the same outputs (HDF5, PNG images, run.json).

use crate::cli::ProcessArgs;
use crate::output;
use crate::pipeline::{Geometry, udfs};
use anyhow::{Context, Result};
use std::sync::atomic::AtomicBool;
use stemflow_core::NavShape;
use stemflow_core::frame::Tile;
use stemflow_core::metadata::RunMetadata;
use stemflow_core::result::UdfResults;
use stemflow_core::validity::FrameValidity;
use stemflow_drivers::merlin::MibFile;
use stemflow_processing::{RunConfig, RunSummary};
use stemflow_recording::hdf5::{Hdf5Recorder, RecordingSpec};

/// Frames per tile read from the file.
const FRAMES_PER_TILE: usize = 32;

/// Runs the live-view reductions over every frame of a MIB recording; `sink` receives the
/// decoded tiles (e.g. an HDF5 recorder).
///
/// # Errors
/// File and decoding errors naming the file and frame; processing errors.
pub fn reduce_file(
    path: &std::path::Path,
    nav_shape: Option<NavShape>,
    sink: Option<&mut dyn stemflow_core::sink::TileSink>,
) -> Result<(MibFile, NavShape, RunSummary)> {
    let mut file = MibFile::open(path).with_context(|| format!("opening {}", path.display()))?;
    let frames = file.frames() as usize;
    let nav = nav_shape
        .or_else(|| file.nav_shape())
        .unwrap_or(NavShape::new(1, frames));
    let sig = file.sig_shape();
    let dtype = file.dtype();
    let cfg = RunConfig::new(nav, sig, dtype);
    let g = Geometry::centred(sig);
    let ranges: Vec<(u64, usize)> = file.tile_ranges(FRAMES_PER_TILE).collect();
    let summary = {
        let f = &mut file;
        let tiles = ranges.into_iter().map(move |(first, n)| {
            let mut t = Tile::zeros(first, n, sig, dtype);
            f.read_tile(first, n, &mut t).map(|_| t)
        });
        stemflow_processing::run_tiles(
            tiles,
            &udfs(&g),
            &cfg,
            sink,
            &mut |_| {},
            &AtomicBool::new(false),
        )?
    };
    Ok((file, nav, summary))
}

/// `stemflow process PATH`.
pub fn process(args: &ProcessArgs) -> Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating output folder {}", args.out.display()))?;
    let t0 = std::time::Instant::now();
    let start_time = stemflow_actors::orchestrator::now_rfc3339();
    // Open once to learn the shapes for the recorder.
    let probe =
        MibFile::open(&args.path).with_context(|| format!("opening {}", args.path.display()))?;
    let nav = args
        .nav_shape
        .or_else(|| probe.nav_shape())
        .unwrap_or(NavShape::new(1, probe.frames() as usize));
    let h5 = args.out.join("processed.h5");
    let mut rec = Hdf5Recorder::create(
        &h5,
        RecordingSpec::new(nav, probe.sig_shape(), probe.dtype()),
    )?;
    let (file, nav, summary) = reduce_file(&args.path, Some(nav), Some(&mut rec))?;
    let mut validity = FrameValidity::new(nav.len());
    validity.mark_range_received(0, (file.frames() as usize).min(nav.len()));
    for &d in &summary.damaged {
        validity.mark(d, stemflow_core::validity::FrameStatus::Damaged);
    }
    let metadata = RunMetadata {
        detector: format!("merlin recording {}", file.mib_path().display()),
        detector_header: file.header().map(|h| h.raw().to_string()),
        nav_shape: Some(nav),
        sig_shape: Some(file.sig_shape()),
        dtype: Some(file.dtype()),
        mode: "offline".into(),
        software_version: stemflow_core::SOFTWARE_VERSION.into(),
        start_time,
        stop_time: stemflow_actors::orchestrator::now_rfc3339(),
        ..RunMetadata::default()
    };
    let record = serde_json::json!({
        "exit_status": "completed",
        "frames_expected": nav.len(),
        "frames_processed": summary.frames_processed,
        "frames_damaged": summary.damaged.len(),
        "source": args.path.display().to_string(),
    });
    rec.finish(&summary.results, &validity, &metadata, Some(&record))?;
    println!(
        "processed {} frames of {} {} from {} in {:.2} s",
        summary.frames_processed,
        file.sig_shape(),
        file.dtype(),
        args.path.display(),
        t0.elapsed().as_secs_f64()
    );
    print_totals(&summary.results);
    println!("wrote {}", h5.display());
    for p in output::write_images(&args.out, &summary.results, Some(nav))? {
        println!("wrote {}", p.display());
    }
    std::fs::write(
        args.out.join("run.json"),
        serde_json::to_string_pretty(&record)?,
    )?;
    Ok(())
}

fn print_totals(results: &[UdfResults]) {
    if let Some(b) = results
        .iter()
        .find(|r| r.udf == "sum")
        .and_then(|r| r.buffer("intensity"))
    {
        let total: f64 = b.data.iter().sum();
        println!("sum over all frames and pixels: {total}");
    }
}
