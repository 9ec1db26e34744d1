//! The reader views of a recording (layout version 2): the same frames dataset, by HDF5
//! hard links, where HyperSpy and py4DSTEM look for it, with the axes, calibration and
//! instrument metadata each of them reads. The facts come from the readers' sources
//! (RosettaSciIO 0.15 `hspy` reader, emdfile 0.0.16 / py4DSTEM 0.14; summarised in
//! `../shared/docs/readers.md`) and are checked by round trips through the real packages
//! (`python/tests/test_readers.py`).
//!
//! ```text
//! /                    @file_format = "HyperSpy", @file_format_version = "3.3"  (HyperSpy)
//!                      @emd_group_type = "file", @version_major = 1, @version_minor = 0 (EMD 1.0)
//! /4DSTEM              EMD root (@emd_group_type = "root", @python_class = "Root")
//!   datacube/data      ≡ /entry/data/frames (hard link); dim0..dim3 = [0, step], @name, @units
//!   metadatabundle/calibration   Q_pixel_size, R_pixel_size, Q_pixel_units, R_pixel_units, QR_flip, QR_rotation_degrees
//! /Experiments/<title> HyperSpy signal
//!   data               ≡ /entry/data/frames (hard link)
//!   axis-0..axis-3     @name, @units, @scale, @offset, @size, @navigate
//!   metadata/...       General/title, Signal/signal_type, Acquisition_instrument/TEM/...
//!   original_metadata/ stemflow_run_metadata (the run metadata as JSON, a string dataset)
//!                      and detector/ (the read-back settings, one attribute each)
//! ```
//!
//! The EMD root is named `4DSTEM` so that it sorts before `Experiments` and `entry`: HDF5
//! visits a hard-linked dataset once, under its first name in name order, and RosettaSciIO's
//! EMD reader (what `hs.load` uses for a `.emd` name) only takes a dataset found under an
//! EMD group.

use crate::error::RecordingError;
use crate::hdf5::{h5, set_attr, set_attr_str, vlen};
use crate::layout;
use hdf5::types::VarLenUnicode;
use hdf5::{File, Group, H5Type};
use std::path::Path;
use stemflow_core::metadata::{Calibration, RunMetadata};
use stemflow_core::{NavShape, SigShape};

/// HyperSpy's hdf5 format version we write (RosettaSciIO refuses files newer than its own).
pub const HSPY_VERSION: &str = "3.3";
/// The EMD 1.0 root group holding py4DSTEM's `DataCube`.
pub const EMD_ROOT: &str = "/4DSTEM";
/// py4DSTEM's `DataCube` group.
pub const EMD_DATACUBE: &str = "/4DSTEM/datacube";
/// HyperSpy's experiments group.
pub const HSPY_EXPERIMENTS: &str = "/Experiments";

/// Marks the file as HyperSpy and EMD 1.0 (root attributes) and creates both views of
/// the frames dataset `/entry/data/frames` with uncalibrated axes. Called when the file is
/// created, so a recording from a killed run opens in both readers too.
///
/// # Errors
/// [`RecordingError::Hdf5`] naming the object.
pub(crate) fn create(
    file: &File,
    p: &Path,
    title: &str,
    nav: NavShape,
    sig: SigShape,
) -> Result<(), RecordingError> {
    set_attr_str(file, p, "file_format", "HyperSpy")?;
    set_attr_str(file, p, "file_format_version", HSPY_VERSION)?;
    set_attr_str(file, p, "emd_group_type", "file")?;
    set_attr(file, p, "version_major", &1u32)?;
    set_attr(file, p, "version_minor", &0u32)?;

    // py4DSTEM (EMD 1.0).
    let root = new_group(file, p, EMD_ROOT)?;
    set_attr_str(&root, p, "emd_group_type", "root")?;
    set_attr_str(&root, p, "python_class", "Root")?;
    let dc = new_group(file, p, EMD_DATACUBE)?;
    set_attr_str(&dc, p, "emd_group_type", "array")?;
    set_attr_str(&dc, p, "python_class", "DataCube")?;
    set_attr_str(&dc, p, "name", "datacube")?;
    link(file, p, &format!("{EMD_DATACUBE}/data"))?;
    let mb = new_group(file, p, &format!("{EMD_ROOT}/metadatabundle"))?;
    set_attr_str(&mb, p, "emd_group_type", "metadatabundle")?;
    let cal = new_group(file, p, &format!("{EMD_ROOT}/metadatabundle/calibration"))?;
    set_attr_str(&cal, p, "emd_group_type", "metadata")?;
    set_attr_str(&cal, p, "python_class", "Calibration")?;
    set_attr_str(&cal, p, "name", "calibration")?;
    // What py4DSTEM's own writer adds (py4DSTEM.io.save, Calibration.to_h5) so that its
    // reader registers the datacube with the calibration and gives the dims their units:
    // without these, `read` keeps the calibration but shows the dims in pixels.
    emd_string(&cal, p, "_root_treepath", "")?;
    let targets = new_group(
        file,
        p,
        &format!("{EMD_ROOT}/metadatabundle/calibration/_target_paths"),
    )?;
    set_attr_str(&targets, p, "type", "list_of_strings")?;
    set_attr(&targets, p, "length", &1i64)?;
    emd_string(&targets, p, "0", "/datacube")?;

    // HyperSpy.
    let exp = new_group(file, p, HSPY_EXPERIMENTS)?;
    let sgn = exp.create_group(&layout::link_name(title)).map_err(h5(
        p,
        HSPY_EXPERIMENTS,
        "creating the signal group",
    ))?;
    let sig_path = sgn.name();
    link(file, p, &format!("{sig_path}/data"))?;
    new_group(file, p, &format!("{sig_path}/metadata"))?;
    new_group(file, p, &format!("{sig_path}/original_metadata"))?;
    for i in 0..4 {
        new_group(file, p, &format!("{sig_path}/axis-{i}"))?;
    }
    update(file, p, title, nav, sig, None)
}

/// Writes (again) the axes, the calibration and the instrument metadata of both views from
/// `md` (`None`: pixels and positions, uncalibrated).
///
/// # Errors
/// [`RecordingError::Hdf5`] naming the object.
pub(crate) fn update(
    file: &File,
    p: &Path,
    title: &str,
    nav: NavShape,
    sig: SigShape,
    md: Option<&RunMetadata>,
) -> Result<(), RecordingError> {
    let cal = md.and_then(|m| m.calibration.clone()).unwrap_or_default();
    let (r_step, r_unit) = cal.real_axis();
    let (q_step, q_unit) = cal.reciprocal_axis();

    // py4DSTEM: dim vectors [offset, step] and the Calibration metadata.
    let dc = group(file, p, EMD_DATACUBE)?;
    let q_emd = if q_unit == "1/Å" { "A^-1" } else { q_unit };
    let r_emd = if r_unit == "px" { "pixels" } else { r_unit };
    let q_emd = if q_emd == "px" { "pixels" } else { q_emd };
    for (i, (name, unit, step)) in [
        ("Rx", r_emd, r_step),
        ("Ry", r_emd, r_step),
        ("Qx", q_emd, q_step),
        ("Qy", q_emd, q_step),
    ]
    .into_iter()
    .enumerate()
    {
        let dim = format!("dim{i}");
        let ds = match dc.dataset(&dim) {
            Ok(ds) => ds,
            Err(_) => dc
                .new_dataset::<f64>()
                .shape(2)
                .create(dim.as_str())
                .map_err(h5(p, &format!("{EMD_DATACUBE}/{dim}"), "creating"))?,
        };
        ds.write(&[0.0, step])
            .map_err(h5(p, &format!("{EMD_DATACUBE}/{dim}"), "writing"))?;
        set_attr_str(&ds, p, "name", name)?;
        set_attr_str(&ds, p, "units", unit)?;
    }
    let cg = group(file, p, &format!("{EMD_ROOT}/metadatabundle/calibration"))?;
    emd_number(&cg, p, "Q_pixel_size", q_step)?;
    emd_number(&cg, p, "R_pixel_size", r_step)?;
    emd_string(&cg, p, "Q_pixel_units", q_emd)?;
    emd_string(&cg, p, "R_pixel_units", r_emd)?;
    emd_bool(&cg, p, "QR_flip", false)?;
    emd_number(&cg, p, "QR_rotation_degrees", cal.scan_rotation_deg)?;
    if let Some(a) = cal.convergence_semi_angle_mrad {
        emd_number(&cg, p, "convergence_semiangle_mrad", a)?;
    }
    if let Some(e) = cal.beam_energy_kev {
        emd_number(&cg, p, "accelerating_voltage", e * 1e3)?;
    }

    // HyperSpy: axes in C order, scan axes navigate.
    let sig_path = format!("{HSPY_EXPERIMENTS}/{}", layout::link_name(title));
    for (i, (name, unit, step, size, navigate)) in [
        ("y", r_unit, r_step, nav.rows, true),
        ("x", r_unit, r_step, nav.cols, true),
        ("ky", q_unit, q_step, sig.rows, false),
        ("kx", q_unit, q_step, sig.cols, false),
    ]
    .into_iter()
    .enumerate()
    {
        let a = group(file, p, &format!("{sig_path}/axis-{i}"))?;
        set_attr_str(&a, p, "name", name)?;
        set_attr_str(&a, p, "units", if unit == "px" { "" } else { unit })?;
        set_attr(&a, p, "scale", &step)?;
        set_attr(&a, p, "offset", &0.0f64)?;
        set_attr(&a, p, "size", &(size as u64))?;
        set_attr(&a, p, "navigate", &navigate)?;
    }
    let md_path = format!("{sig_path}/metadata");
    let general = ensure_group(file, p, &format!("{md_path}/General"))?;
    set_attr_str(&general, p, "title", title)?;
    // HyperSpy's General.date / time (ISO 8601 date and time of day).
    if let Some((date, time)) = md.and_then(|m| m.start_time.split_once('T')) {
        set_attr_str(&general, p, "date", date)?;
        set_attr_str(&general, p, "time", time.trim_end_matches('Z'))?;
    }
    let signal = ensure_group(file, p, &format!("{md_path}/Signal"))?;
    // pyxem picks `electron_diffraction` up as its diffraction signal class.
    set_attr_str(&signal, p, "signal_type", "electron_diffraction")?;
    set_attr_str(&signal, p, "quantity", "Electrons (counts)")?;
    let tem = ensure_group(file, p, &format!("{md_path}/Acquisition_instrument/TEM"))?;
    set_attr_str(&tem, p, "acquisition_mode", "STEM")?;
    hspy_number(&tem, p, "beam_energy", cal.beam_energy_kev)?;
    hspy_number(
        &tem,
        p,
        "camera_length",
        cal.camera_length_m.map(|l| l * 100.0),
    )?;
    hspy_number(
        &tem,
        p,
        "convergence_angle",
        cal.convergence_semi_angle_mrad,
    )?;
    hspy_number(&tem, p, "dwell_time", cal.dwell_time_s)?;
    hspy_number(
        &tem,
        p,
        "magnification",
        md.and_then(|m| m.microscope.as_ref())
            .map(|m| m.magnification),
    )?;
    hspy_number(&tem, p, "rotation", Some(cal.scan_rotation_deg))?;
    let det = ensure_group(
        file,
        p,
        &format!("{md_path}/Acquisition_instrument/TEM/Detector/Diffraction"),
    )?;
    if let Some(m) = md {
        set_attr_str(&det, p, "detector_name", &m.detector)?;
    }
    hspy_number(
        &det,
        p,
        "camera_length",
        cal.camera_length_m.map(|l| l * 100.0),
    )?;
    hspy_number(&det, p, "pixel_size", cal.pixel_pitch_um)?;
    if let Some(m) = md {
        let om = group(file, p, &format!("{sig_path}/original_metadata"))?;
        let json = serde_json::to_string(m).map_err(|source| RecordingError::Json {
            path: p.to_path_buf(),
            object: format!("{sig_path}/original_metadata/stemflow_run_metadata"),
            source,
        })?;
        // A dataset, not an attribute: attributes are limited to 64 KiB, and a detector's
        // header can make the run metadata larger.
        if om.link_exists("stemflow_run_metadata") {
            om.unlink("stemflow_run_metadata").map_err(h5(
                p,
                &format!("{sig_path}/original_metadata/stemflow_run_metadata"),
                "replacing",
            ))?;
        }
        let obj = format!("{sig_path}/original_metadata/stemflow_run_metadata");
        om.new_dataset::<VarLenUnicode>()
            .create("stemflow_run_metadata")
            .and_then(|d| d.write_scalar(&vlen(&json)))
            .map_err(h5(p, &obj, "writing the run metadata"))?;
        let settings = ensure_group(file, p, &format!("{sig_path}/original_metadata/detector"))?;
        for (k, v) in &m.detector_settings {
            set_attr_str(&settings, p, &layout::link_name(k), v)?;
        }
    }
    Ok(())
}

/// Stores the calibration in the NeXus view too (`/entry/instrument/calibration`).
///
/// # Errors
/// [`RecordingError::Hdf5`] naming the object.
pub(crate) fn write_nexus_calibration(
    file: &File,
    p: &Path,
    cal: &Calibration,
) -> Result<(), RecordingError> {
    let g = ensure_group(file, p, &format!("{}/calibration", layout::INSTRUMENT))?;
    set_attr_str(&g, p, "NX_class", "NXcollection")?;
    let values = [
        ("scan_step", cal.scan_step_nm, "nm"),
        ("scan_rotation", Some(cal.scan_rotation_deg), "deg"),
        ("pixel_pitch", cal.pixel_pitch_um, "um"),
        ("camera_length", cal.camera_length_m, "m"),
        ("beam_energy", cal.beam_energy_kev, "keV"),
        ("wavelength", cal.wavelength_angstrom, "angstrom"),
        ("angle_per_pixel", cal.mrad_per_pixel, "mrad"),
        (
            "spatial_frequency_per_pixel",
            cal.inv_angstrom_per_pixel,
            "1/angstrom",
        ),
        (
            "convergence_semi_angle",
            cal.convergence_semi_angle_mrad,
            "mrad",
        ),
        ("dwell_time", cal.dwell_time_s, "s"),
    ];
    for (name, v, unit) in values {
        let Some(v) = v else { continue };
        let obj = format!("{}/{name}", g.name());
        let ds =
            g.new_dataset::<f64>()
                .create(name)
                .map_err(h5(p, &obj, "creating the dataset"))?;
        ds.write_scalar(&v).map_err(h5(p, &obj, "writing"))?;
        set_attr_str(&ds, p, "units", unit)?;
    }
    Ok(())
}

fn link(file: &File, p: &Path, at: &str) -> Result<(), RecordingError> {
    file.link_hard(layout::FRAMES, at)
        .map_err(h5(p, at, "linking the frames dataset"))
}

fn new_group(file: &File, p: &Path, path: &str) -> Result<Group, RecordingError> {
    file.create_group(path)
        .map_err(h5(p, path, "creating the group"))
}

fn group(file: &File, p: &Path, path: &str) -> Result<Group, RecordingError> {
    file.group(path).map_err(h5(p, path, "opening the group"))
}

fn ensure_group(file: &File, p: &Path, path: &str) -> Result<Group, RecordingError> {
    if file.link_exists(path) {
        group(file, p, path)
    } else {
        new_group(file, p, path)
    }
}

/// A HyperSpy metadata number (an attribute); unknown values are left out.
fn hspy_number(g: &Group, p: &Path, name: &str, v: Option<f64>) -> Result<(), RecordingError> {
    match v {
        Some(v) if v.is_finite() => set_attr(g, p, name, &v),
        _ => Ok(()),
    }
}

/// An emdfile metadata item: a scalar dataset with its `type` attribute, rewritten in place.
fn emd_item<T: H5Type>(
    g: &Group,
    p: &Path,
    name: &str,
    value: &T,
    kind: &str,
) -> Result<(), RecordingError> {
    let obj = format!("{}/{name}", g.name());
    let ds = match g.dataset(name) {
        Ok(ds) => ds,
        Err(_) => g
            .new_dataset::<T>()
            .create(name)
            .map_err(h5(p, &obj, "creating the dataset"))?,
    };
    ds.write_scalar(value).map_err(h5(p, &obj, "writing"))?;
    set_attr_str(&ds, p, "type", kind)
}

fn emd_number(g: &Group, p: &Path, name: &str, v: f64) -> Result<(), RecordingError> {
    emd_item(g, p, name, &v, "number")
}

fn emd_string(g: &Group, p: &Path, name: &str, v: &str) -> Result<(), RecordingError> {
    emd_item::<VarLenUnicode>(g, p, name, &vlen(v), "string")
}

fn emd_bool(g: &Group, p: &Path, name: &str, v: bool) -> Result<(), RecordingError> {
    emd_item(g, p, name, &v, "bool")
}
