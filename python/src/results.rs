//! Engine results to Python: per UDF, a dict of buffer name → `(kind, unit, dtype, values)`
//! with `values` a float64 array of the buffer's full shape (nav: `nav_shape + extra`, NaN
//! where not processed or outside the ROI; sig: `sig_shape + extra`; single: its shape).
//! `dtype` names the type the values stand for; the Python side converts.

use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use stemflow_core::result::{BufferKind, UdfResults};

/// `results` as a list (one dict per UDF, in order).
pub fn to_py<'py>(py: Python<'py>, results: &[UdfResults]) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for r in results {
        let d = PyDict::new(py);
        for b in &r.buffers {
            let kind = match b.kind {
                BufferKind::Nav => "nav",
                BufferKind::Sig => "sig",
                BufferKind::Single => "single",
            };
            let values = PyArray1::from_slice(py, &b.data).reshape(b.shape.clone())?;
            d.set_item(&b.name, (kind, &b.unit, b.dtype.numpy_name(), values))?;
        }
        list.append(d)?;
    }
    Ok(list)
}
