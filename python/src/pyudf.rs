//! Python UDFs inside the engine: each is a [`Udf`] whose per-worker task calls the Python
//! side's partition runner (`stemflow._runner`) once per partition — consecutive frames a
//! worker took as one unit of work — with the GIL held only for that call.
//!
//! The frames reach Python as a read-only `(frames, rows, cols)` NumPy array over the
//! engine's own memory (native pixel type), or over a per-task buffer the frames were
//! converted into without the GIL (`float32`/`float64`, LiberTEM's default input type). The
//! array is valid only during the call: a UDF that keeps a reference to it (or to a view of
//! it) ends the run with an error saying to copy, and the array it kept is first pointed at
//! a copy of its own, so that reading it later does not touch memory the engine reuses.

use numpy::npyffi::{NpyTypes, PY_ARRAY_API, PyArrayObject, flags, npy_intp};
use numpy::{Element, PyArrayDescrMethods};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use stemflow_core::frame::PixelsRef;
use stemflow_processing::{BufferDecl, Granularity, PartitionTask, TileView, Udf, UdfMeta};

/// What every Python UDF of a run shares: the run's cancel flag and the first error.
pub struct Shared {
    cancel: Arc<AtomicBool>,
    error: Mutex<Option<PyErr>>,
}

impl Shared {
    /// State for a run whose cancel flag is `cancel`.
    pub fn new(cancel: Arc<AtomicBool>) -> Self {
        Self {
            cancel,
            error: Mutex::new(None),
        }
    }
    /// Records `e` (the first error wins) and ends the run.
    pub fn fail(&self, e: PyErr) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e);
        }
        self.cancel.store(true, Ordering::SeqCst);
    }
    /// Whether an error was recorded.
    pub fn failed(&self) -> bool {
        self.error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
    /// The recorded error, if any.
    pub fn take_error(&self) -> Option<PyErr> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// The pixel type a Python UDF is given (LiberTEM: `numpy.result_type` of the data set's
/// and the UDF's preferred input type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Input {
    /// The decoded frames as they are (zero-copy).
    Native,
    /// Converted to `float32`.
    F32,
    /// Converted to `float64`.
    F64,
}

/// A Python UDF: the Python runner object (`stemflow._runner.PartitionRunner`) makes one
/// task per engine worker.
pub struct PyUdf {
    name: String,
    runner: Py<PyAny>,
    input: Input,
    shared: Arc<Shared>,
}

impl PyUdf {
    /// Wraps `runner`, whose `input_conversion` attribute is `native`, `float32` or
    /// `float64`.
    ///
    /// # Errors
    /// `ValueError` for another conversion.
    pub fn new(runner: &Bound<'_, PyAny>, name: String, shared: Arc<Shared>) -> PyResult<Self> {
        let conv: String = runner.getattr("input_conversion")?.extract()?;
        let input = match conv.as_str() {
            "native" => Input::Native,
            "float32" => Input::F32,
            "float64" => Input::F64,
            other => {
                return Err(PyValueError::new_err(format!(
                    "input_conversion must be native, float32 or float64, not {other:?}"
                )));
            }
        };
        Ok(Self {
            name,
            runner: runner.clone().unbind(),
            input,
            shared,
        })
    }
}

impl Udf for PyUdf {
    fn name(&self) -> &str {
        &self.name
    }
    /// The results live on the Python side (the runner's merged buffers).
    fn buffers(&self, _meta: &UdfMeta) -> Vec<BufferDecl> {
        Vec::new()
    }
    fn granularity(&self, _meta: &UdfMeta) -> Granularity {
        Granularity::Partition
    }
    fn new_partition(&self, _meta: &UdfMeta) -> Box<dyn PartitionTask> {
        let task = Python::attach(|py| self.runner.call_method0(py, "new_task"));
        let task = match task {
            Ok(t) => Some(t),
            Err(e) => {
                self.shared.fail(e);
                None
            }
        };
        Box::new(PyTask {
            task,
            input: self.input,
            shared: Arc::clone(&self.shared),
            f32s: Vec::new(),
            f64s: Vec::new(),
        })
    }
}

struct PyTask {
    task: Option<Py<PyAny>>,
    input: Input,
    shared: Arc<Shared>,
    /// Converted frames, reused from partition to partition.
    f32s: Vec<f32>,
    f64s: Vec<f64>,
}

macro_rules! convert_into {
    ($out:expr, $pixels:expr, $t:ty) => {{
        let out: &mut Vec<$t> = $out;
        out.clear();
        match $pixels {
            PixelsRef::U8(p) => out.extend(p.iter().map(|&v| v as $t)),
            PixelsRef::U16(p) => out.extend(p.iter().map(|&v| v as $t)),
            PixelsRef::U32(p) => out.extend(p.iter().map(|&v| v as $t)),
            PixelsRef::U64(p) => out.extend(p.iter().map(|&v| v as $t)),
            PixelsRef::F32(p) => out.extend(p.iter().map(|&v| v as $t)),
            PixelsRef::F64(p) => out.extend(p.iter().map(|&v| v as $t)),
        }
    }};
}

impl PartitionTask for PyTask {
    fn process_partition(&mut self, view: &TileView<'_>, _nav: &mut [f64]) {
        if self.shared.failed() {
            return;
        }
        let Some(task) = &self.task else {
            return;
        };
        let dims = [view.n_frames, view.sig_shape.rows, view.sig_shape.cols];
        let first = view.first_frame;
        // The conversion runs before the GIL is taken, in parallel with the other workers.
        let r = match self.input {
            Input::Native => match view.pixels {
                PixelsRef::U8(p) => call(task, first, p, dims),
                PixelsRef::U16(p) => call(task, first, p, dims),
                PixelsRef::U32(p) => call(task, first, p, dims),
                PixelsRef::U64(p) => call(task, first, p, dims),
                PixelsRef::F32(p) => call(task, first, p, dims),
                PixelsRef::F64(p) => call(task, first, p, dims),
            },
            Input::F32 => {
                convert_into!(&mut self.f32s, view.pixels, f32);
                call(task, first, &self.f32s, dims)
            }
            Input::F64 => {
                convert_into!(&mut self.f64s, view.pixels, f64);
                call(task, first, &self.f64s, dims)
            }
        };
        if let Err(e) = r {
            self.shared.fail(e);
        }
    }
}

/// Calls `task.process_partition(first, frames)` with `frames` a read-only array of shape
/// `dims` over `data`.
fn call<T: Element>(task: &Py<PyAny>, first: u64, data: &[T], dims: [usize; 3]) -> PyResult<()> {
    Python::attach(|py| {
        // SAFETY: `data` outlives the array's use: the array is dropped at the end of this
        // closure, and if Python kept a reference it is pointed at its own copy first.
        let arr = unsafe { borrowed(py, data, dims)? };
        let r = task.call_method1(py, "process_partition", (first, &arr));
        let kept = arr.get_refcnt() > 1;
        if kept {
            // SAFETY: `arr` is the array made above, which owns no data and has no base.
            unsafe { own_copy(py, &arr)? };
        }
        r?;
        if kept {
            return Err(PyRuntimeError::new_err(
                "a UDF kept a reference to the frames it was given (or to a view of them) \
                 after its process_frame/process_tile/process_partition returned; they are \
                 valid only during the call: keep a copy (frame.copy()) instead",
            ));
        }
        Ok(())
    })
}

/// A read-only, C-contiguous array of shape `dims` over `data`, owning nothing.
///
/// # Safety
/// The array must not be used after `data` is freed or changed.
unsafe fn borrowed<'py, T: Element>(
    py: Python<'py>,
    data: &[T],
    dims: [usize; 3],
) -> PyResult<Bound<'py, PyAny>> {
    let mut d: [npy_intp; 3] = [
        dims[0] as npy_intp,
        dims[1] as npy_intp,
        dims[2] as npy_intp,
    ];
    debug_assert_eq!(dims.iter().product::<usize>(), data.len());
    let descr = T::get_dtype(py).into_dtype_ptr();
    // SAFETY: NumPy's C API with a valid type object, a descriptor reference it steals,
    // matching dims, and a pointer to `data.len()` elements of that type.
    unsafe {
        let ptr = PY_ARRAY_API.PyArray_NewFromDescr(
            py,
            PY_ARRAY_API.get_type_object(py, NpyTypes::PyArray_Type),
            descr,
            3,
            d.as_mut_ptr(),
            std::ptr::null_mut(),
            data.as_ptr() as *mut c_void,
            flags::NPY_ARRAY_C_CONTIGUOUS | flags::NPY_ARRAY_ALIGNED,
            std::ptr::null_mut(),
        );
        Bound::from_owned_ptr_or_err(py, ptr)
    }
}

/// Points `arr` (made by [`borrowed`]) at a copy of its data that it owns.
///
/// # Safety
/// `arr` must be an array from [`borrowed`] whose data is still valid.
unsafe fn own_copy(py: Python<'_>, arr: &Bound<'_, PyAny>) -> PyResult<()> {
    let copy = arr.call_method0("copy")?;
    // SAFETY: both are NumPy arrays; the copy's data lives as long as the copy, which
    // becomes `arr`'s base (the reference is stolen by SetBaseObject).
    unsafe {
        let a = arr.as_ptr() as *mut PyArrayObject;
        let c = copy.as_ptr() as *mut PyArrayObject;
        (*a).data = (*c).data;
        if PY_ARRAY_API.PyArray_SetBaseObject(py, a, copy.into_ptr()) != 0 {
            return Err(PyErr::fetch(py));
        }
    }
    Ok(())
}
