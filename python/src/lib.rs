//! `stemflow._native`: the part of stemflow's Python package written in Rust — data sets
//! opened by the application layer, runs of the engine with built-in and Python UDFs, and
//! live acquisitions. The LiberTEM-compatible API (`stemflow.api`, `stemflow.udf`) is
//! Python code over these few calls (docs/decisions/0019-python-package.md).
//!
//! The GIL is released for the whole of a run; it is taken back only to call a Python
//! UDF's partition method, a snapshot callback, or to check for Ctrl-C.

mod live;
mod pyudf;
mod results;

use numpy::{PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stemflow_app::options::{DataSetOptions, FileFormat};
use stemflow_core::frame::TileData;
use stemflow_core::{DType, NavShape, SigShape};
use stemflow_processing::udfs::{ComUdf, MasksUdf, PickUdf, RadialProfileParams};
use stemflow_processing::udfs::{RadialProfileUdf, RecordUdf, StatsUdf, SumSigUdf, SumUdf};
use stemflow_processing::{CustomMask, DataSet, Mask, MemoryDataSet, Outcome, Roi, RunConfig, Udf};

/// The NumPy name of a pixel type.
pub(crate) fn numpy_name(d: DType) -> &'static str {
    match d {
        DType::U8 => "uint8",
        DType::U16 => "uint16",
        DType::U32 => "uint32",
        DType::U64 => "uint64",
        DType::F32 => "float32",
        DType::F64 => "float64",
    }
}

fn err(e: anyhow::Error) -> PyErr {
    PyValueError::new_err(format!("{e:#}"))
}

/// A flag that ends a run within about 10 ms of being set (the engine's cancel flag).
#[pyclass(frozen, module = "stemflow._native")]
pub struct CancelToken {
    pub(crate) flag: Arc<AtomicBool>,
}

#[pymethods]
impl CancelToken {
    #[new]
    fn new() -> Self {
        Self {
            flag: Arc::new(AtomicBool::new(false)),
        }
    }
    /// Asks the run to stop.
    fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }
    /// Whether the run was asked to stop.
    #[getter]
    fn cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

/// An offline data set, opened by the application layer (`stemflow process` reads the same
/// formats the same way).
#[pyclass(frozen, module = "stemflow._native")]
pub struct NativeDataSet {
    /// Taken by a run for its duration.
    data: Mutex<Box<dyn DataSet>>,
    nav: NavShape,
    sig: SigShape,
    dtype: DType,
    element: String,
    frames: u64,
    path: String,
}

impl NativeDataSet {
    fn new(data: Box<dyn DataSet>, nav: NavShape) -> Self {
        Self {
            nav,
            sig: data.sig_shape(),
            dtype: data.dtype(),
            element: data.element().to_string(),
            frames: data.frames(),
            path: data.path().display().to_string(),
            data: Mutex::new(data),
        }
    }
}

#[pymethods]
impl NativeDataSet {
    /// Scan shape `(rows, cols)`.
    #[getter]
    fn nav_shape(&self) -> (usize, usize) {
        (self.nav.rows, self.nav.cols)
    }
    /// Frame shape `(rows, cols)`, pixels.
    #[getter]
    fn sig_shape(&self) -> (usize, usize) {
        (self.sig.rows, self.sig.cols)
    }
    /// NumPy name of the decoded pixel type (`uint16`, `float32`, …).
    #[getter]
    fn dtype(&self) -> &'static str {
        numpy_name(self.dtype)
    }
    /// The pixel type stored in the file, before conversion (e.g. `int16`).
    #[getter]
    fn element(&self) -> &str {
        &self.element
    }
    /// Frames in the file.
    #[getter]
    fn frames(&self) -> u64 {
        self.frames
    }
    /// The file (`<memory>` for an in-memory array).
    #[getter]
    fn path(&self) -> &str {
        &self.path
    }
}

/// Opens a file as the application layer does for `stemflow process`.
///
/// `format`: `merlin`, `dectris`, `npy`, `raw`, `hdf5` or `None` (from the name);
/// shapes are `(rows, cols)`.
///
/// Raises `ValueError` naming the file and what is wrong with it.
#[pyfunction]
#[pyo3(signature = (path, format=None, nav_shape=None, sig_shape=None, dtype="u16", ds_path=None, byte_order=None, offset=0, frame_header_bytes=0))]
#[allow(clippy::too_many_arguments)]
fn open_dataset(
    path: PathBuf,
    format: Option<&str>,
    nav_shape: Option<(usize, usize)>,
    sig_shape: Option<(usize, usize)>,
    dtype: &str,
    ds_path: Option<String>,
    byte_order: Option<String>,
    offset: u64,
    frame_header_bytes: u64,
) -> PyResult<NativeDataSet> {
    let format = match format {
        None => None,
        Some("merlin" | "mib") => Some(FileFormat::Merlin),
        Some("dectris") => Some(FileFormat::Dectris),
        Some("npy") => Some(FileFormat::Npy),
        Some("raw") => Some(FileFormat::Raw),
        Some("hdf5") => Some(FileFormat::Hdf5),
        Some(other) => {
            return Err(PyValueError::new_err(format!(
                "unknown file format {other:?}: give merlin, dectris, npy, raw or hdf5"
            )));
        }
    };
    let opts = DataSetOptions {
        path,
        format,
        nav_shape: nav_shape.map(|(r, c)| NavShape::new(r, c)),
        dataset: ds_path,
        sig_shape: sig_shape.map(|(r, c)| SigShape::new(r, c)),
        dtype: dtype.to_string(),
        byte_order,
        offset,
        frame_header_bytes,
    };
    let data = stemflow_app::offline::open_dataset(&opts).map_err(err)?;
    let nav = stemflow_app::offline::scan_shape(&opts, data.as_ref()).map_err(err)?;
    Ok(NativeDataSet::new(data, nav))
}

/// An in-memory data set from a C-contiguous array of `nav_shape + sig_shape` (uint8/16/32/64
/// or float32/64; the Python side converts other types first). The pixels are copied once.
///
/// Raises `ValueError` when the array's size does not match the shapes.
#[pyfunction]
fn memory_dataset(
    data: &Bound<'_, PyAny>,
    nav_shape: (usize, usize),
    sig_shape: (usize, usize),
) -> PyResult<NativeDataSet> {
    fn take<T: numpy::Element + Copy>(a: &Bound<'_, PyAny>) -> PyResult<Option<Vec<T>>> {
        match a.extract::<PyReadonlyArrayDyn<'_, T>>() {
            Ok(arr) => {
                let s = arr.as_slice().map_err(|_| {
                    PyValueError::new_err("the array must be C-contiguous (np.ascontiguousarray)")
                })?;
                Ok(Some(s.to_vec()))
            }
            Err(_) => Ok(None),
        }
    }
    let pixels = if let Some(v) = take::<u8>(data)? {
        TileData::U8(v)
    } else if let Some(v) = take::<u16>(data)? {
        TileData::U16(v)
    } else if let Some(v) = take::<u32>(data)? {
        TileData::U32(v)
    } else if let Some(v) = take::<u64>(data)? {
        TileData::U64(v)
    } else if let Some(v) = take::<f32>(data)? {
        TileData::F32(v)
    } else if let Some(v) = take::<f64>(data)? {
        TileData::F64(v)
    } else {
        return Err(PyValueError::new_err(
            "memory data must be a NumPy array of uint8/16/32/64 or float32/64",
        ));
    };
    let nav = NavShape::new(nav_shape.0, nav_shape.1);
    let sig = SigShape::new(sig_shape.0, sig_shape.1);
    let ds = MemoryDataSet::new("<memory>", nav, sig, pixels)
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(NativeDataSet::new(Box::new(ds), nav))
}

fn get<'py, T: for<'a> FromPyObject<'a, 'py, Error = PyErr>>(
    d: &Bound<'py, PyDict>,
    key: &str,
) -> PyResult<T> {
    match d.get_item(key)? {
        Some(v) => v.extract(),
        None => Err(PyValueError::new_err(format!(
            "built-in UDF description lacks {key:?}"
        ))),
    }
}

/// A built-in UDF from its description (a dict with `kind` and parameters; lengths in
/// detector pixels, stemflow's pixel convention: pixel centres at `index + 0.5`).
pub(crate) fn builtin(d: &Bound<'_, PyDict>, name: &str, sig: SigShape) -> PyResult<Box<dyn Udf>> {
    let kind: String = get(d, "kind")?;
    Ok(match kind.as_str() {
        "sum" => Box::new(SumUdf::new().named(name)),
        "sum_sig" => Box::new(SumSigUdf::new().named(name)),
        "stats" => Box::new(StatsUdf::new().named(name)),
        "masks" => {
            let arrays: Vec<PyReadonlyArrayDyn<'_, bool>> = get(d, "masks")?;
            let mut masks = Vec::with_capacity(arrays.len());
            for (i, a) in arrays.iter().enumerate() {
                if a.shape() != [sig.rows, sig.cols] {
                    return Err(PyValueError::new_err(format!(
                        "mask {i} has shape {:?}, the frames are {sig}",
                        a.shape()
                    )));
                }
                let pixels = a.as_array().iter().copied().collect();
                masks.push((
                    format!("m{i}"),
                    Mask::Custom(Arc::new(CustomMask {
                        sig_shape: sig,
                        pixels,
                    })),
                ));
            }
            Box::new(MasksUdf::new(masks).named(name))
        }
        "com" => Box::new(ComUdf::new(get(d, "cx")?, get(d, "cy")?, get(d, "r")?).named(name)),
        "pick" => Box::new(PickUdf::new(get(d, "row")?, get(d, "col")?).named(name)),
        "radial" => Box::new(
            RadialProfileUdf::new(RadialProfileParams {
                cx: get(d, "cx")?,
                cy: get(d, "cy")?,
                bin_width: get(d, "bin_width")?,
                n_bins: get(d, "n_bins")?,
            })
            .named(name),
        ),
        "record" => Box::new(RecordUdf::new(get::<PathBuf>(d, "path")?).named(name)),
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown built-in UDF kind {other:?}"
            )));
        }
    })
}

/// The run's UDFs: the built-ins described by `builtins`, then the Python UDFs.
pub(crate) fn udf_list(
    builtins: &Bound<'_, PyList>,
    python: &Bound<'_, PyList>,
    sig: SigShape,
    shared: &Arc<pyudf::Shared>,
) -> PyResult<Vec<Box<dyn Udf>>> {
    let mut list = Vec::new();
    for (i, d) in builtins.iter().enumerate() {
        let d = d.cast_into::<PyDict>()?;
        list.push(builtin(&d, &format!("b{i}"), sig)?);
    }
    for (i, r) in python.iter().enumerate() {
        list.push(
            Box::new(pyudf::PyUdf::new(&r, format!("p{i}"), Arc::clone(shared))?) as Box<dyn Udf>,
        );
    }
    Ok(list)
}

/// A ROI from a bool array of the scan's shape.
pub(crate) fn roi_of(
    roi: Option<PyReadonlyArrayDyn<'_, bool>>,
    nav: NavShape,
) -> PyResult<Option<Roi>> {
    roi.map(|a| {
        if a.shape() != [nav.rows, nav.cols] {
            return Err(PyValueError::new_err(format!(
                "the ROI has shape {:?}, the scan is {nav}",
                a.shape()
            )));
        }
        Roi::from_mask(nav, a.as_array().iter().copied().collect())
            .map_err(|e| PyValueError::new_err(e.to_string()))
    })
    .transpose()
}

/// Runs `builtins` (descriptions, see [`builtin`]) and `python` (Python UDF runners, see
/// `stemflow._runner`) in one pass over `dataset`, over the scan positions of `roi` (a bool
/// array of the scan's shape) if given. `on_snapshot(frames_processed, results)` is called
/// about every `snapshot_interval_s` seconds with the built-ins' results so far; `cancel`
/// ends the run early; `frames = (start, end)` reads only those frames (one part of a data
/// set split across Dask workers; the others' nav values stay NaN).
///
/// Returns a dict: `frames_processed`, `damaged` (frame indices), `cancelled`, `results`
/// (one entry per built-in: `{buffer name: (kind, unit, dtype, values)}`).
///
/// Raises the first exception a Python UDF raised (with its traceback), `KeyboardInterrupt`
/// on Ctrl-C, `ValueError` for bad descriptions, `RuntimeError` for engine errors.
#[pyfunction]
#[pyo3(signature = (dataset, builtins, python, roi=None, on_snapshot=None, snapshot_interval_s=0.1, threads=None, cancel=None, frames=None))]
#[allow(clippy::too_many_arguments)]
fn run_dataset(
    py: Python<'_>,
    dataset: &NativeDataSet,
    builtins: &Bound<'_, PyList>,
    python: &Bound<'_, PyList>,
    roi: Option<PyReadonlyArrayDyn<'_, bool>>,
    on_snapshot: Option<Py<PyAny>>,
    snapshot_interval_s: f64,
    threads: Option<usize>,
    cancel: Option<Py<CancelToken>>,
    frames: Option<(u64, u64)>,
) -> PyResult<Py<PyAny>> {
    let flag = match &cancel {
        Some(c) => Arc::clone(&c.get().flag),
        None => Arc::new(AtomicBool::new(false)),
    };
    let shared = Arc::new(pyudf::Shared::new(Arc::clone(&flag)));
    let nav = dataset.nav;
    let list = udf_list(builtins, python, dataset.sig, &shared)?;
    let mut cfg = RunConfig::new(nav, dataset.sig, dataset.dtype);
    cfg.snapshot_interval = Duration::from_secs_f64(snapshot_interval_s.max(0.001));
    cfg.threads = threads;
    if let Some(r) = roi_of(roi, nav)? {
        cfg = cfg.with_roi(r);
    }
    let mut data = dataset
        .data
        .try_lock()
        .map_err(|_| PyRuntimeError::new_err("the data set is in use by another run"))?;
    let data: &mut dyn DataSet = data.as_mut();
    let outcome = py.detach(|| {
        let mut on_snap = |s: &stemflow_processing::Snapshot| {
            Python::attach(|py| {
                if let Err(e) = py.check_signals() {
                    shared.fail(e);
                    return;
                }
                if let Some(cb) = &on_snapshot {
                    let r = results::to_py(py, &s.results)
                        .and_then(|r| cb.call1(py, (s.frames_processed, r)));
                    if let Err(e) = r {
                        shared.fail(e);
                    }
                }
            })
        };
        let range = frames.map_or(0..u64::MAX, |(a, b)| a..b);
        stemflow_processing::run_dataset_range(data, range, &list, &cfg, None, &mut on_snap, &flag)
    });
    if let Some(e) = shared.take_error() {
        return Err(e);
    }
    let summary = outcome.map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    let out = PyDict::new(py);
    out.set_item("frames_processed", summary.frames_processed)?;
    out.set_item("damaged", summary.damaged.clone())?;
    // Offline, every frame of the file was read: damaged frames are reported in
    // `damaged`, not as a stream that ended early.
    out.set_item("frames_expected", summary.frames_processed)?;
    out.set_item("cancelled", summary.outcome == Outcome::Cancelled)?;
    out.set_item("results", results::to_py(py, &summary.results)?)?;
    Ok(out.into_any().unbind())
}

/// The extension module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<CancelToken>()?;
    m.add_class::<NativeDataSet>()?;
    m.add_function(wrap_pyfunction!(open_dataset, m)?)?;
    m.add_function(wrap_pyfunction!(memory_dataset, m)?)?;
    m.add_function(wrap_pyfunction!(run_dataset, m)?)?;
    live::register(m)?;
    Ok(())
}
