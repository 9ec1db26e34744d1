//! Result buffers of UDFs, as merged and handed to the live view, the recorder and the CLI.

use serde::{Deserialize, Serialize};

/// Where a result buffer lives (LiberTEM's buffer kinds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BufferKind {
    /// One value (or an `extra_shape` array) per scan position: shape `nav_shape + extra`.
    Nav,
    /// One value per detector pixel: shape `sig_shape + extra`.
    Sig,
    /// Any fixed shape, independent of the data's shape.
    Single,
}

/// One merged result buffer: `f64` values, row-major, of shape `shape`.
///
/// For `Nav` buffers `shape = [nav_rows, nav_cols, extra...]`; positions not (yet) processed
/// hold `NaN`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultBuffer {
    /// Buffer name, unique within its UDF (e.g. `intensity`, `x`, `y`).
    pub name: String,
    /// Kind of buffer.
    pub kind: BufferKind,
    /// Full shape, row-major.
    pub shape: Vec<usize>,
    /// Values, `shape.iter().product()` of them.
    pub data: Vec<f64>,
    /// Physical unit of the values (`counts`, `pixels`, …), for recordings and plots.
    pub unit: String,
}

/// The results of one UDF after a merge (a snapshot) or at the end of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UdfResults {
    /// UDF name (e.g. `sum`, `virtual_bf`, `com`), unique within a run.
    pub udf: String,
    /// Its buffers.
    pub buffers: Vec<ResultBuffer>,
}

impl UdfResults {
    /// The buffer called `name`, if any.
    pub fn buffer(&self, name: &str) -> Option<&ResultBuffer> {
        self.buffers.iter().find(|b| b.name == name)
    }
}
