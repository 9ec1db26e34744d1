//! `stemflow process`: the live reductions, offline, on a file — a Merlin `.hdr`/`.mib`
//! set, a DECTRIS `*_master.h5` set, a `.npy` array, raw binary, or an HDF5 dataset (our
//! own recordings included) —
//! writing the same outputs (HDF5, PNG images, run.json).

use crate::options::{DataSetOptions, FileFormat, ProcessOptions};
use crate::output;
use crate::reductions::{Geometry, Reductions};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use stemflow_core::metadata::RunMetadata;
use stemflow_core::result::UdfResults;
use stemflow_core::validity::FrameValidity;
use stemflow_core::{NavShape, SigShape};
use stemflow_drivers::dectris::DectrisDataSet;
use stemflow_drivers::merlin::{MibDataSet, MibFile};
use stemflow_processing::io::{ByteOrder, ElementType};
use stemflow_processing::{
    CsrHdf5DataSet, DataSet, Hdf5DataSet, NpyDataSet, Outcome, RawDataSet, RawSpec, RunSummary,
    Snapshot, run_dataset,
};
use stemflow_recording::hdf5::{Hdf5Recorder, RecordingSpec};

/// The format of `args.path`: as given, else from its extension.
fn format_of(args: &DataSetOptions) -> Result<FileFormat> {
    if let Some(f) = args.format {
        return Ok(f);
    }
    let ext = args
        .path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let name = args
        .path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if name.ends_with("_master.h5") {
        return Ok(FileFormat::Dectris);
    }
    Ok(match ext.as_str() {
        "hdr" | "mib" => FileFormat::Merlin,
        "npy" => FileFormat::Npy,
        "h5" | "hdf5" | "nxs" | "hspy" | "emd" => FileFormat::Hdf5,
        "raw" | "bin" | "dat" => FileFormat::Raw,
        "tpx" => FileFormat::Tpx3,
        _ => bail!(
            "cannot tell the format of {} from its extension; give --format merlin|dectris|npy|raw|hdf5|tpx3",
            args.path.display()
        ),
    })
}

/// Opens the file `args` names as a data set.
///
/// # Errors
/// Unknown format; missing raw-layout options; the reader's errors naming the file.
pub fn open_dataset(args: &DataSetOptions) -> Result<Box<dyn DataSet>> {
    let path = &args.path;
    let ds: Box<dyn DataSet> = match format_of(args)? {
        FileFormat::Merlin => Box::new(
            MibDataSet::open(path, args.nav_shape)
                .with_context(|| format!("opening {}", path.display()))?,
        ),
        FileFormat::Npy => Box::new(NpyDataSet::open(path)?),
        FileFormat::Dectris => Box::new(
            DectrisDataSet::open(path, args.nav_shape)
                .with_context(|| format!("opening {}", path.display()))?,
        ),
        FileFormat::Hdf5 if args.dataset.is_none() && CsrHdf5DataSet::is_csr(path) => {
            Box::new(CsrHdf5DataSet::open(path)?)
        }
        FileFormat::Hdf5 => Box::new(Hdf5DataSet::open(path, args.dataset.as_deref())?),
        FileFormat::Tpx3 => Box::new(
            stemflow_drivers::asi::TpxFile::open(path)
                .with_context(|| format!("opening {}", path.display()))?,
        ),
        FileFormat::Raw => {
            let (Some(nav_shape), Some(sig_shape)) = (args.nav_shape, args.sig_shape) else {
                bail!(
                    "raw files need --nav-shape and --sig-shape (and --dtype, --byte-order, --offset as they apply)"
                );
            };
            let (element, marked) =
                ElementType::parse_with_order(&args.dtype).map_err(anyhow::Error::msg)?;
            let given: Option<ByteOrder> = args
                .byte_order
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let byte_order = match (given, marked) {
                (Some(g), Some(m)) if g != m && element.size() > 1 => {
                    let name = |o| if o == ByteOrder::Big { "big" } else { "little" };
                    bail!(
                        "--dtype {} names {}-endian pixels, --byte-order says {}-endian",
                        args.dtype,
                        name(m),
                        name(g)
                    )
                }
                (Some(g), _) => g,
                (None, Some(m)) => m,
                (None, None) => ByteOrder::Little,
            };
            Box::new(RawDataSet::open_as(
                path,
                RawSpec {
                    nav_shape,
                    sig_shape,
                    dtype: element.memory_dtype(),
                    byte_order,
                    offset: args.offset,
                    frame_header_bytes: args.frame_header_bytes,
                },
                element,
            )?)
        }
    };
    Ok(ds)
}

/// Runs `reductions` (without a spec: the live-view set, [`crate::reductions::udfs`] on a centred
/// [`Geometry`]) over every frame of `data` with scan `nav`, over the ROI if one is given;
/// `sink` receives every decoded tile (e.g. an HDF5 recorder), inside the ROI or not.
/// `on_progress` gets the frames processed so far at each of the engine's snapshots (every
/// snapshot interval, and at the end). Setting `cancel` ends the run within about 10 ms with
/// the results so far ([`stemflow_processing::Outcome::Cancelled`]).
///
/// # Errors
/// The spec does not fit the data (naming the spec file, entry and key); reading and
/// processing errors, naming the file and frame.
pub fn reduce(
    data: &mut dyn DataSet,
    nav: NavShape,
    reductions: &Reductions,
    geometry: &Geometry,
    sink: Option<&mut dyn stemflow_core::sink::TileSink>,
    on_progress: &mut dyn FnMut(u64),
    cancel: &AtomicBool,
) -> Result<RunSummary> {
    let (list, roi) = reductions.build(geometry, data.sig_shape(), nav)?;
    let cfg = reductions.run_config(nav, data.sig_shape(), data.dtype(), roi);
    let summary = run_dataset(
        data,
        &list,
        &cfg,
        sink,
        &mut |s: &Snapshot| on_progress(s.frames_processed),
        cancel,
    )?;
    Ok(summary)
}

/// The scan shape to process `data` on: the one given, which must hold exactly the
/// file's frames; else the file's own. A Merlin set whose header has no scan shape
/// (ScanX/ScanY, older Merlin software) and a square number of frames is taken as a square
/// scan, as LiberTEM does, and the terminal says so.
///
/// # Errors
/// A given shape whose positions differ from the file's frames, naming both counts.
pub fn scan_shape(args: &DataSetOptions, data: &dyn DataSet) -> Result<NavShape> {
    let frames = data.frames();
    if let Some(n) = args.nav_shape {
        if n.len() as u64 != frames {
            bail!(
                "--nav-shape {n} has {} scan positions, but {} holds {frames} frames: give a \
                 shape of {frames} positions (a region of the scan is chosen with --roi-rect \
                 or --roi-mask)",
                n.len(),
                data.path().display()
            );
        }
        return Ok(n);
    }
    let own = data.nav_shape();
    if format_of(args)? == FileFormat::Merlin && own.rows == 1 && frames > 1 {
        let side = frames.isqrt();
        if side * side == frames {
            let square = NavShape::new(side as usize, side as usize);
            println!(
                "scan shape: {square} (the header gives none; {frames} frames make a square \
                 scan; give --nav-shape otherwise)"
            );
            return Ok(square);
        }
    }
    Ok(own)
}

/// What a stemflow recording given to `process` says about the run that made it.
struct StoredRun {
    /// The live run's metadata (microscope, scan, calibration, detector).
    metadata: RunMetadata,
    /// The virtual detectors of the default UDF set, when the run used it.
    geometry: Option<Geometry>,
}

/// The metadata and default-UDF geometry of the stemflow recording `path` (frames of
/// `sig`), or `None` for any other HDF5 file.
fn stored_run(path: &Path, sig: SigShape) -> Option<StoredRun> {
    let rec = stemflow_recording::open_recording(path).ok()?;
    let metadata = rec.metadata().ok()?;
    let results = rec.results().unwrap_or_default();
    let params = |udf: &str| -> Option<serde_json::Value> {
        let r = results.iter().find(|r| r.udf == udf)?;
        serde_json::from_str(&r.params).ok()
    };
    let geometry = (|| {
        let v = params("virtual")?;
        let masks = v.get("masks")?.as_array()?;
        let mask = |name: &str| {
            masks
                .iter()
                .find(|m| m.get("name").and_then(|n| n.as_str()) == Some(name))
                .and_then(|m| m.get("mask"))
        };
        let (bf, adf) = (mask("bf")?, mask("adf")?);
        let num = |m: &serde_json::Value, k: &str| m.get(k).and_then(serde_json::Value::as_f64);
        let com = params("com")?;
        let g = Geometry {
            cx: num(bf, "cx")?,
            cy: num(bf, "cy")?,
            bf_radius: num(bf, "r")?,
            adf_inner: num(adf, "r_inner")?,
            adf_outer: num(adf, "r_outer")?,
            com_radius: num(&com, "mask_radius")?,
        };
        // Only a geometry that fits these frames (the recording's own).
        (g.cx < sig.cols as f64 && g.cy < sig.rows as f64).then_some(g)
    })();
    Some(StoredRun { metadata, geometry })
}

/// Refuses an input file that is one of the outputs `process` would write into `out` (its
/// recording would be replaced while being read).
///
/// # Errors
/// The input is `out`'s recording (or its py4DSTEM link).
fn refuse_input_among_outputs(input: &Path, out: &Path) -> Result<()> {
    let (Ok(i), Ok(o)) = (input.canonicalize(), out.canonicalize()) else {
        return Ok(());
    };
    let outputs = [
        stemflow_core::metadata::RECORDING_FILE,
        stemflow_core::metadata::EMD_ALIAS,
    ];
    if outputs
        .iter()
        .any(|n| o.join(n).canonicalize().ok() == Some(i.clone()))
    {
        bail!(
            "{} is the recording that --out {} would hold: write the results into another \
             folder (--out)",
            input.display(),
            out.display()
        );
    }
    Ok(())
}

/// `stemflow process PATH`.
///
/// While the frames are processed, stderr shows their progress
/// ([`crate::progress::FrameProgress`]): a bar with the frames done of those to process
/// (inside the ROI), GB/s of frame data and the time left on a terminal, else a plain line
/// every 5 s (none for a shorter run).
///
/// The first Ctrl-C ends the run within about 10 ms; the outputs are written as usual with
/// `exit_status = "cancelled"` in `run.json` and the recording's run record, and the error
/// is [`crate::progress::Cancelled`] (exit status 130).
pub fn process(args: &ProcessOptions) -> Result<()> {
    // First, so that a Ctrl-C from here on is a cancel, not a kill.
    let cancel = interrupt_flag();
    let r = &args.reductions;
    let reductions = Reductions::from_choice(r)?;
    refuse_input_among_outputs(&args.data.path, &args.out)?;
    output::prepare_out(&args.out, args.recording.overwrite)?;
    let t0 = std::time::Instant::now();
    let start_time = stemflow_actors::orchestrator::now_rfc3339();
    let mut data = open_dataset(&args.data)?;
    let nav = scan_shape(&args.data, data.as_ref())?;
    let (sig, dtype) = (data.sig_shape(), data.dtype());
    // The pixel type stored in the file (int16 for float32 frames, …), for the record.
    let file_dtype = data.element();
    let source: PathBuf = data.path().to_path_buf();
    let frames_in_file = data.frames();
    // Built once before the recording is created, so that a spec that does not fit the
    // data leaves no half-written file behind.
    // A stemflow recording keeps the run's metadata and the default UDFs' parameters:
    // offline gives the results the live run gave unless told otherwise.
    let stored = (format_of(&args.data)? == FileFormat::Hdf5)
        .then(|| stored_run(&source, sig))
        .flatten();
    let geometry = match (&stored, reductions.is_default()) {
        (Some(s), true) => match s.geometry {
            Some(g) => {
                println!(
                    "virtual detectors as recorded by the live run: BF r = {:.1} px, ADF {:.1}–{:.1} px, CoM r = {:.1} px, centre ({:.1}, {:.1}) (give --reductions for others)",
                    g.bf_radius, g.adf_inner, g.adf_outer, g.com_radius, g.cx, g.cy
                );
                g
            }
            None => Geometry::centred(sig),
        },
        _ => Geometry::centred(sig),
    };
    let (_, roi) = reductions.build(&geometry, sig, nav)?;
    if !reductions.is_default() {
        println!("{}", reductions.describe());
    }
    let h5 = args.out.join(stemflow_core::metadata::RECORDING_FILE);
    let mut spec = RecordingSpec::new(nav, sig, dtype);
    spec.frames_written = !args.no_raw;
    spec.sparse = data.is_sparse();
    spec.compression = output::recording_output(&args.recording, args.no_raw, None)?.compression;
    let spec_compression = spec.compression;
    let mut rec = Hdf5Recorder::create(&h5, spec)?;
    let sink = (!args.no_raw).then_some(&mut rec as &mut dyn stemflow_core::sink::TileSink);
    // The frames the UDFs will process (those inside the ROI): what the engine counts.
    let to_process = roi
        .as_ref()
        .map_or(nav.len(), |r| r.count())
        .min(usize::try_from(frames_in_file).unwrap_or(usize::MAX)) as u64;
    let bytes_per_frame = (sig.len() * dtype.size()) as u64;
    let mut progress =
        crate::progress::FrameProgress::new("processing", to_process, bytes_per_frame);
    let summary = reduce(
        data.as_mut(),
        nav,
        &reductions,
        &geometry,
        sink,
        &mut |done| progress.update(done),
        &cancel,
    )?;
    progress.finish();
    let cancelled = summary.outcome == Outcome::Cancelled;
    // A cancelled run read a prefix of the file (partitions in order); the rest is missing.
    let frames_read = if cancelled {
        summary.frames_processed + summary.outside_roi + summary.damaged.len() as u64
    } else {
        frames_in_file
    };
    let mut validity = FrameValidity::new(nav.len());
    validity.mark_range_received(0, (frames_read as usize).min(nav.len()));
    for &d in &summary.damaged {
        validity.mark(d, stemflow_core::validity::FrameStatus::Damaged);
    }
    // Merlin sets keep their acquisition header; other files have none.
    let header = if format_of(&args.data)? == FileFormat::Merlin {
        MibFile::open(&args.data.path)
            .ok()
            .and_then(|f| f.header().map(|h| h.raw().to_string()))
    } else {
        None
    };
    let detector = match format_of(&args.data)? {
        FileFormat::Merlin => "merlin recording",
        FileFormat::Npy => "npy file",
        FileFormat::Dectris => "dectris recording",
        FileFormat::Raw => "raw file",
        FileFormat::Hdf5 => "hdf5 file",
        FileFormat::Tpx3 => "tpx3 stream recording",
    };
    // A stemflow recording's instrument state carries over (microscope, scan, detector
    // settings), so the calibration does too; the command line's inputs win.
    let earlier = stored.map(|s| s.metadata);
    let mut metadata = RunMetadata {
        detector: format!("{detector} {}", source.display()),
        detector_header: header
            .or_else(|| earlier.as_ref().and_then(|m| m.detector_header.clone())),
        detector_settings: earlier
            .as_ref()
            .map(|m| m.detector_settings.clone())
            .unwrap_or_default(),
        microscope: earlier.as_ref().and_then(|m| m.microscope.clone()),
        scan: earlier.as_ref().and_then(|m| m.scan.clone()),
        nav_shape: Some(nav),
        sig_shape: Some(sig),
        dtype: Some(dtype),
        mode: "offline".into(),
        software_version: stemflow_core::SOFTWARE_VERSION.into(),
        start_time,
        stop_time: stemflow_actors::orchestrator::now_rfc3339(),
        ..RunMetadata::default()
    };
    let before = earlier.as_ref().and_then(|m| m.calibration.clone());
    let mut inputs = args.recording.calibration(
        before.as_ref().and_then(|c| c.scan_step_nm),
        before.as_ref().map_or(0.0, |c| c.scan_rotation_deg),
        before.as_ref().and_then(|c| c.pixel_pitch_um),
    );
    if inputs.pixel_pitch_um.is_none() {
        // The recording's detector name (e.g. `merlin @ …`) gives its model's pitch.
        inputs.pixel_pitch_um = earlier
            .as_ref()
            .and_then(|m| stemflow_core::metadata::pixel_pitch_um_for_model(&m.detector));
    }
    metadata.calibration = Some(stemflow_core::metadata::Calibration::derive(
        &metadata, &inputs,
    ));
    let record = serde_json::json!({
        "exit_status": if cancelled { "cancelled" } else { "completed" },
        "frames_expected": nav.len(),
        "frames_processed": summary.frames_processed,
        "frames_damaged": summary.damaged.len(),
        "frames_dtype": dtype.name(),
        "file_dtype": file_dtype.name(),
        "frames_outside_roi": summary.outside_roi,
        "source": args.data.path.display().to_string(),
        "reductions": reductions.spec.as_ref().map(|(p, _)| p.display().to_string()),
        "results": output::results_index(&summary.results),
        "udfs": output::udfs_index(&summary.results),
        "calibration": metadata.calibration,
        "compression": spec_compression.name(),
        "frames_recorded": !args.no_raw,
    });
    rec.finish(&summary.results, &validity, &metadata, Some(&record))?;
    let converted = if file_dtype.is_converted() {
        format!(" (converted exactly from the file's {file_dtype})")
    } else {
        String::new()
    };
    println!(
        "{} {} frames of {} {}{converted} from {} in {:.2} s",
        if cancelled {
            "cancelled after"
        } else {
            "processed"
        },
        summary.frames_processed,
        sig,
        dtype,
        args.data.path.display(),
        t0.elapsed().as_secs_f64()
    );
    if summary.outside_roi > 0 {
        println!(
            "{} frames outside the ROI (nav results NaN there)",
            summary.outside_roi
        );
    }
    print_totals(&summary.results);
    for line in output::udf_summary_lines(&summary.results) {
        println!("  {line}");
    }
    println!("wrote {}", h5.display());
    let image_opts = output::ImageOptions {
        frames_summed: Some(summary.frames_processed),
        scan_step: metadata
            .calibration
            .as_ref()
            .and_then(|c| c.scan_step_nm)
            .map(|s| (s, "nm".to_string())),
    };
    for p in output::write_images(&args.out, &summary.results, Some(nav), &image_opts)? {
        println!("wrote {}", p.display());
    }
    std::fs::write(
        args.out.join("run.json"),
        serde_json::to_string_pretty(&record)?,
    )?;
    output::link_emd_alias(&args.out);
    if cancelled {
        return Err(
            crate::progress::Cancelled::after(summary.frames_processed, nav.len() as u64).into(),
        );
    }
    Ok(())
}

/// The cancel flag of `process`: set by the first Ctrl-C. Without a handler (it could not
/// be installed: said on stderr) Ctrl-C ends the process as usual.
fn interrupt_flag() -> std::sync::Arc<AtomicBool> {
    crate::progress::on_ctrl_c("cancelling the run", || {}).unwrap_or_else(|e| {
        tracing::warn!("{e:#}; Ctrl-C will end the process without writing results");
        std::sync::Arc::new(AtomicBool::new(false))
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reductions::udfs;
    use std::path::Path;
    use stemflow_core::{DType, SigShape};
    use stemflow_processing::RunConfig;
    use stemflow_processing::udf::Udf;

    fn data(rel: &str) -> PathBuf {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data")).join(rel)
    }

    fn run(ds: &mut dyn DataSet) -> RunSummary {
        let cfg = RunConfig::new(ds.nav_shape(), ds.sig_shape(), ds.dtype());
        let u: Vec<Box<dyn Udf>> = udfs(&Geometry::centred(ds.sig_shape()));
        run_dataset(ds, &u, &cfg, None, &mut |_| {}, &AtomicBool::new(false)).unwrap()
    }

    /// The Merlin driver's reader and the generic raw reader (big-endian u16 after a
    /// 384-byte MQ1 header per frame) give bit-identical reductions of a real recording.
    #[test]
    fn merlin_reader_and_raw_reader_agree_bit_for_bit() {
        let mib = data("merlin/Merlin_Single_Quad/Single_9_Frame_CounterDepth_12_Rows_256.mib");
        let mut merlin = MibDataSet::open(&mib, Some(NavShape::new(3, 3))).unwrap();
        let a = run(&mut merlin);
        let mut raw = RawDataSet::open(
            &mib,
            RawSpec {
                nav_shape: NavShape::new(3, 3),
                sig_shape: SigShape::new(256, 256),
                dtype: DType::U16,
                byte_order: ByteOrder::Big,
                offset: 0,
                frame_header_bytes: 384,
            },
        )
        .unwrap();
        let b = run(&mut raw);
        assert_eq!(a.frames_processed, 9);
        let bits = |s: &RunSummary| -> Vec<Vec<u64>> {
            s.results
                .iter()
                .flat_map(|r| &r.buffers)
                .map(|b| b.data.iter().map(|v| v.to_bits()).collect())
                .collect()
        };
        assert_eq!(bits(&a), bits(&b));
    }

    /// A DECTRIS master set (a dark recording: every frame zero) reads through the
    /// DECTRIS driver, bitshuffle-LZ4 decoded without an HDF5 filter plugin.
    #[test]
    fn dectris_master_files_are_processed() {
        let master = data("dectris/arina/test_00_master.h5");
        let mut ds = DectrisDataSet::open(&master, None).unwrap();
        assert_eq!((ds.frames(), ds.sig_shape()), (16, SigShape::new(192, 192)));
        let s = run(&mut ds);
        assert_eq!(s.frames_processed, 16);
        let sum = s.results.iter().find(|r| r.udf == "sum").unwrap();
        assert!(sum.buffers[0].data.iter().all(|&v| v == 0.0));
    }
}
