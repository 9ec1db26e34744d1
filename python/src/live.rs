//! Live acquisitions and detector simulators for Python.
//!
//! [`live_run`] runs one acquisition through the application layer
//! ([`stemflow_app::acquisition::acquire_with`]) with a pipeline whose UDFs Python chooses
//! once the detector is armed and the frame shape is known (`on_armed`). The GIL is
//! released for the whole acquisition.

use crate::pyudf::Shared;
use crate::{CancelToken, numpy_name, results, roi_of, udf_list};
use numpy::PyReadonlyArrayDyn;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stemflow_actors::orchestrator::{PipelineBuilder, ReadyHook, RunRecord};
use stemflow_app::options::{AcquireOptions, SimOptions};
use stemflow_app::registry::DetectorKind;
use stemflow_app::sim::RunningSim;
use stemflow_core::detector::{ArmMode, DetectorTrigger};
use stemflow_core::result::UdfResults;
use stemflow_core::{NavShape, SigShape};
use stemflow_processing::{Outcome, RunConfig};

fn kind_of(name: &str) -> PyResult<DetectorKind> {
    DetectorKind::from_name(name).ok_or_else(|| {
        PyValueError::new_err(format!(
            "unknown detector {name:?}: give merlin, dectris or tpx3"
        ))
    })
}

/// A detector simulator serving on loopback (or `host`) until stopped.
#[pyclass(frozen, module = "stemflow._native")]
pub struct Simulator {
    sim: Mutex<Option<RunningSim>>,
    addrs: [(String, u16); 2],
}

#[pymethods]
impl Simulator {
    /// The two `(host, port)` pairs: Merlin control and data; DECTRIS REST API and stream.
    #[getter]
    fn addrs(&self) -> [(String, u16); 2] {
        self.addrs.clone()
    }
    /// `(acquisitions or series, frames, bytes)` served so far.
    #[getter]
    fn served(&self) -> (u64, u64, u64) {
        match &*self.sim.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(s) => s.served(),
            None => (0, 0, 0),
        }
    }
    /// Stops serving (idempotent).
    fn stop(&self, py: Python<'_>) {
        let sim = self.sim.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(s) = sim {
            py.detach(|| s.stop());
        }
    }
}

/// Starts `detector`'s simulator (`merlin`, `dectris` or `tpx3`) serving `recording` (a
/// `.hdr` / `*_master.h5` / `.tpx`) or synthetic frames of a specimen, `nav_shape` × `sig_shape`, as fast as
/// the receiver takes them (`fast`) or at the frame time.
///
/// Raises `ValueError` for an unknown detector or host, `RuntimeError` when it cannot start.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (detector, nav_shape=(16, 16), sig_shape=(256, 256), recording=None, fast=true, host="127.0.0.1", ports=(0, 0)))]
fn start_simulator(
    py: Python<'_>,
    detector: &str,
    nav_shape: (usize, usize),
    sig_shape: (usize, usize),
    recording: Option<PathBuf>,
    fast: bool,
    host: &str,
    ports: (u16, u16),
) -> PyResult<Simulator> {
    let host: IpAddr = host
        .parse()
        .map_err(|_| PyValueError::new_err(format!("{host:?} is not an IP address")))?;
    let opts = SimOptions {
        detector: kind_of(detector)?,
        host,
        ports: [ports.0, ports.1],
        recording,
        nav_shape: NavShape::new(nav_shape.0, nav_shape.1),
        sig_shape: SigShape::new(sig_shape.0, sig_shape.1),
        fast,
        duration: None,
        active: false,
        frame_time_s: None,
    };
    let sim = py
        .detach(|| stemflow_app::sim::start(&opts))
        .map_err(|e| PyRuntimeError::new_err(format!("{e:#}")))?;
    let [a, b] = sim.addrs();
    Ok(Simulator {
        addrs: [
            (a.ip().to_string(), a.port()),
            (b.ip().to_string(), b.port()),
        ],
        sim: Mutex::new(Some(sim)),
    })
}

fn opt<'py, T: for<'a> FromPyObject<'a, 'py, Error = PyErr>>(
    d: &Bound<'py, PyDict>,
    key: &str,
    default: T,
) -> PyResult<T> {
    match d.get_item(key)? {
        Some(v) if !v.is_none() => v.extract(),
        _ => Ok(default),
    }
}

/// The acquisition options from the dict Python passes (keys as [`AcquireOptions`]'s
/// fields; times in s).
fn acquire_options(d: &Bound<'_, PyDict>) -> PyResult<AcquireOptions> {
    let mut a = AcquireOptions::default();
    a.detector = kind_of(&opt::<String>(d, "detector", "merlin".into())?)?;
    a.host = opt(d, "host", "127.0.0.1".to_string())?;
    a.control_port = opt(d, "control_port", a.control_port)?;
    a.data_port = opt(d, "data_port", a.data_port)?;
    a.api_port = opt(d, "api_port", a.api_port)?;
    a.stream_port = opt(d, "stream_port", a.stream_port)?;
    a.mode = match opt::<String>(d, "mode", "active".into())?.as_str() {
        "active" => ArmMode::Active,
        "passive" => ArmMode::Passive,
        other => {
            return Err(PyValueError::new_err(format!(
                "mode must be active or passive, not {other:?}"
            )));
        }
    };
    a.nav_shape =
        opt::<Option<(usize, usize)>>(d, "nav_shape", None)?.map(|(r, c)| NavShape::new(r, c));
    a.trigger = match opt::<String>(d, "trigger", "soft".into())?.as_str() {
        "soft" | "soft_trigger" => DetectorTrigger::Soft,
        "internal" | "int" | "ints" => DetectorTrigger::Internal,
        "external" | "exte" | "ext" | "exts" => DetectorTrigger::ExternalRising,
        other => {
            return Err(PyValueError::new_err(format!(
                "trigger must be soft, internal or external, not {other:?}"
            )));
        }
    };
    a.counter_depth = opt(d, "counter_depth", a.counter_depth)?;
    a.exposure_ms = opt(d, "exposure_s", a.exposure_ms * 1e-3)? * 1e3;
    a.frame_time_ms = opt::<Option<f64>>(d, "frame_time_s", None)?.map(|t| t * 1e3);
    a.count_time_ms = opt::<Option<f64>>(d, "count_time_s", None)?.map(|t| t * 1e3);
    a.arm_timeout_s = opt(d, "arm_timeout_s", a.arm_timeout_s)?;
    a.frame_timeout_s = opt(d, "frame_timeout_s", a.frame_timeout_s)?;
    a.first_frame_timeout_s = opt(d, "first_frame_timeout_s", a.first_frame_timeout_s)?;
    a.no_raw = !opt(d, "record_raw", true)?;
    if let Some(c) = opt::<Option<String>>(d, "compression", None)? {
        a.recording.compression = Some(c.parse().map_err(PyValueError::new_err)?);
    }
    a.recording.scan_step_nm = opt(d, "scan_step_nm", None)?;
    a.recording.scan_rotation_deg = opt(d, "scan_rotation_deg", None)?;
    a.recording.pixel_pitch_um = opt(d, "pixel_pitch_um", None)?;
    Ok(a)
}

/// What `on_armed` returns: built-in descriptions, Python runners, the ROI and the scan
/// shape.
type PlanTuple<'py> = (
    Bound<'py, PyList>,
    Bound<'py, PyList>,
    Option<PyReadonlyArrayDyn<'py, bool>>,
    (usize, usize),
);

/// What the pipeline hands back to [`live_run`].
#[derive(Default)]
struct LiveOutcome {
    results: Vec<UdfResults>,
    frames_processed: u64,
    cancelled: bool,
}

/// Runs one acquisition.
///
/// `options`: `detector` (`merlin`, `dectris`, or `simulated` with `profile`), `host`, ports, `mode` (`active`/`passive`), `nav_shape`,
/// `trigger`, `exposure_s`, `counter_depth`, `arm_timeout_s`, `frame_timeout_s`,
/// `first_frame_timeout_s`, `output` (HDF5 recording path or None), `record_raw`,
/// `compression` (`none`, `deflate`, `deflate:N`, `bslz4`), `scan_step_nm`,
/// `scan_rotation_deg`, `pixel_pitch_um`.
/// `on_armed(nav_shape, sig_shape, dtype)` returns `(builtins, python_runners, roi,
/// nav_shape)` for the frames announced; `on_snapshot(frames, results)` gets the built-ins' partial
/// results; `ready_hook(nav_shape)` runs in active mode before the trigger.
///
/// Returns a dict: `record` (run.json's run record, JSON text), `exit_status`, `error`,
/// `frames_processed`, `cancelled`, `results`.
///
/// Raises the first exception raised by a Python UDF or callback, `ValueError` for bad
/// options, `RuntimeError` when the instrument cannot start.
#[pyfunction]
#[pyo3(signature = (options, on_armed, on_snapshot=None, ready_hook=None, cancel=None, snapshot_interval_s=0.1))]
fn live_run(
    py: Python<'_>,
    options: &Bound<'_, PyDict>,
    on_armed: Py<PyAny>,
    on_snapshot: Option<Py<PyAny>>,
    ready_hook: Option<Py<PyAny>>,
    cancel: Option<Py<CancelToken>>,
    snapshot_interval_s: f64,
) -> PyResult<Py<PyAny>> {
    // `simulated`: the simulated instrument of a profile (scan engine, microscope and a
    // detector simulator wired by a trigger line), as `stemflow simulate` runs it.
    let simulated = opt::<String>(options, "detector", "merlin".into())? == "simulated";
    let args = if simulated {
        let o = options.copy()?;
        o.set_item("detector", "merlin")?;
        acquire_options(&o)?
    } else {
        acquire_options(options)?
    };
    let output: Option<PathBuf> = opt(options, "output", None)?;
    let record_raw = !args.no_raw;
    let flag = match &cancel {
        Some(c) => Arc::clone(&c.get().flag),
        None => Arc::new(AtomicBool::new(false)),
    };
    let shared = Arc::new(Shared::new(Arc::clone(&flag)));
    let outcome: Arc<Mutex<LiveOutcome>> = Arc::default();
    let on_armed = Arc::new(on_armed);
    let on_snapshot = Arc::new(on_snapshot);
    let interval = Duration::from_secs_f64(snapshot_interval_s.max(0.001));
    let pipeline: PipelineBuilder = {
        let (shared, outcome) = (Arc::clone(&shared), Arc::clone(&outcome));
        Arc::new(move |inputs| {
            let (shared, outcome) = (Arc::clone(&shared), Arc::clone(&outcome));
            let (on_armed, on_snapshot) = (Arc::clone(&on_armed), Arc::clone(&on_snapshot));
            Box::new(move |cancel, snaps| {
                let (nav, sig, dtype) = (inputs.nav_shape, inputs.sig_shape, inputs.dtype);
                let built = Python::attach(|py| -> PyResult<_> {
                    let plan = on_armed.call1(
                        py,
                        (
                            (nav.rows, nav.cols),
                            (sig.rows, sig.cols),
                            numpy_name(dtype),
                        ),
                    )?;
                    let (b, p, roi, shape): PlanTuple<'_> = plan.extract(py)?;
                    // The scan shape the Python side settled on (a hook may give one of the
                    // same number of positions).
                    let nav = NavShape::new(shape.0, shape.1);
                    Ok((udf_list(&b, &p, sig, &shared)?, roi_of(roi, nav)?, nav))
                });
                let (list, roi, nav) = built.map_err(|e| {
                    shared.fail(e);
                    "the Python side could not set up the UDFs".to_string()
                })?;
                let mut cfg = RunConfig::new(nav, sig, dtype);
                cfg.snapshot_interval = interval;
                if let Some(r) = roi {
                    cfg = cfg.with_roi(r);
                }
                let mut on_snap = |s: &stemflow_processing::Snapshot| {
                    if let Some(cb) = on_snapshot.as_ref() {
                        Python::attach(|py| {
                            let r = results::to_py(py, &s.results)
                                .and_then(|r| cb.call1(py, (s.frames_processed, r)));
                            if let Err(e) = r {
                                shared.fail(e);
                            }
                        });
                    }
                };
                let run = stemflow_app::reductions::run_pipeline(
                    inputs.stacks,
                    inputs.recording,
                    &list,
                    &cfg,
                    record_raw,
                    &cancel,
                    &snaps,
                    &mut on_snap,
                );
                // The Python UDF tasks hold Python objects: dropped with the GIL.
                Python::attach(|_| drop(list));
                let (output, summary) = run?;
                let mut o = outcome.lock().unwrap_or_else(|p| p.into_inner());
                o.results = summary.results;
                o.frames_processed = summary.frames_processed;
                o.cancelled = summary.outcome == Outcome::Cancelled;
                Ok(output)
            })
        })
    };
    let hook: Option<ReadyHook> = ready_hook.map(|h| {
        let h = Arc::new(h);
        let shared = Arc::clone(&shared);
        Arc::new(move |nav: NavShape| {
            Python::attach(|py| h.call1(py, ((nav.rows, nav.cols),)).map(|_| ())).map_err(|e| {
                let text = e.to_string();
                shared.fail(e);
                text
            })
        }) as ReadyHook
    });
    let run = if simulated {
        let profile: Option<PathBuf> = opt(options, "profile", None)?;
        let nav = args.nav_shape;
        py.detach(|| {
            stemflow_app::acquisition::simulate_with(
                profile.as_deref(),
                nav,
                &args,
                pipeline,
                output,
                hook,
                Arc::clone(&flag),
            )
        })
    } else {
        py.detach(|| {
            stemflow_app::acquisition::acquire_with(
                &args,
                pipeline,
                output,
                hook,
                Arc::clone(&flag),
            )
        })
    };
    if let Some(e) = shared.take_error() {
        return Err(e);
    }
    let run = run.map_err(|e| PyRuntimeError::new_err(format!("{e:#}")))?;
    let (record, error): (RunRecord, Option<String>) = match run {
        Ok(r) => (r, None),
        Err(f) => (*f.record, Some(f.error.to_string())),
    };
    let o = std::mem::take(&mut *outcome.lock().unwrap_or_else(|p| p.into_inner()));
    let out = PyDict::new(py);
    out.set_item(
        "record",
        serde_json::to_string(&record).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")),
    )?;
    out.set_item("exit_status", format!("{:?}", record.exit_status))?;
    out.set_item("error", error.or(record.error.clone()))?;
    out.set_item("frames_processed", o.frames_processed)?;
    out.set_item("frames_expected", record.frames_expected)?;
    out.set_item("frames_lost", record.frames_lost)?;
    out.set_item("end_reason", &record.end_reason)?;
    out.set_item("cancelled", o.cancelled)?;
    out.set_item("results", results::to_py(py, &o.results)?)?;
    Ok(out.into_any().unbind())
}

/// Adds this module's functions and classes.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Simulator>()?;
    m.add_function(wrap_pyfunction!(start_simulator, m)?)?;
    m.add_function(wrap_pyfunction!(live_run, m)?)?;
    Ok(())
}
