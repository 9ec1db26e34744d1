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

/// One merged result buffer: `f64` values, row-major, of shape `shape`, standing for values
/// of type `dtype`.
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
    /// The numeric type the values stand for (default `f64`); recordings store the buffer
    /// in it ([`ResultBuffer::typed`]).
    #[serde(default)]
    pub dtype: ResultDType,
}

impl ResultBuffer {
    /// The values converted to [`ResultBuffer::dtype`] (see [`typed_values`]).
    pub fn typed(&self) -> TypedValues {
        typed_values(&self.data, self.dtype)
    }
}

/// The results of one UDF after a merge (a snapshot) or at the end of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UdfResults {
    /// UDF name (e.g. `sum`, `virtual_bf`, `com`), unique within a run.
    pub udf: String,
    /// Its buffers.
    pub buffers: Vec<ResultBuffer>,
    /// The parameters that produced these results, as JSON text (the UDF's params struct
    /// with every default resolved, e.g. `{"cx":128.0,"cy":128.0,"mask_radius":40.0}`);
    /// empty for a UDF without parameters. Recorded as the `params` attribute of
    /// `/entry/results/<udf>` and in `run.json` → `udfs`, for provenance.
    #[serde(default)]
    pub params: String,
}

impl UdfResults {
    /// The buffer called `name`, if any.
    pub fn buffer(&self, name: &str) -> Option<&ResultBuffer> {
        self.buffers.iter().find(|b| b.name == name)
    }
}

/// The numeric type of a result buffer's values.
///
/// Merged values travel as `f64` (exact for integers below 2^53); the recorder stores each
/// buffer in its type ([`ResultBuffer::typed`]), NaN becoming [`ResultDType::int_fill`] in
/// integer buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultDType {
    /// 64-bit float (the default).
    #[default]
    F64,
    /// 32-bit float.
    F32,
    /// Signed integers, 64 bits.
    I64,
    /// Signed integers, 32 bits.
    I32,
    /// Unsigned integers, 64 bits (exact in the merged `f64` buffers below 2^53).
    U64,
    /// Unsigned integers, 32 bits.
    U32,
    /// Unsigned integers, 16 bits.
    U16,
    /// Unsigned integers, 8 bits.
    U8,
}

impl ResultDType {
    /// The NumPy name (`float64`, `uint16`, …), as written in recordings and `run.json`.
    pub fn numpy_name(self) -> &'static str {
        match self {
            ResultDType::F64 => "float64",
            ResultDType::F32 => "float32",
            ResultDType::I64 => "int64",
            ResultDType::I32 => "int32",
            ResultDType::U64 => "uint64",
            ResultDType::U32 => "uint32",
            ResultDType::U16 => "uint16",
            ResultDType::U8 => "uint8",
        }
    }
    /// True for the integer types.
    pub fn is_integer(self) -> bool {
        !matches!(self, ResultDType::F64 | ResultDType::F32)
    }
    /// The value that stands for "not processed / outside the ROI" in an integer buffer
    /// (where NaN does not exist): the type's minimum for signed types, its maximum for
    /// unsigned ones (counts are never negative, so `MAX` is the unlikely value). `None`
    /// for floats, which use NaN.
    pub fn int_fill(self) -> Option<i128> {
        match self {
            ResultDType::F64 | ResultDType::F32 => None,
            ResultDType::I64 => Some(i64::MIN as i128),
            ResultDType::I32 => Some(i32::MIN as i128),
            ResultDType::U64 => Some(u64::MAX as i128),
            ResultDType::U32 => Some(u32::MAX as i128),
            ResultDType::U16 => Some(u16::MAX as i128),
            ResultDType::U8 => Some(u8::MAX as i128),
        }
    }
}

/// A result buffer's values in its declared type.
#[derive(Clone, Debug, PartialEq)]
pub enum TypedValues {
    /// `f64` values.
    F64(Vec<f64>),
    /// `f32` values.
    F32(Vec<f32>),
    /// `i64` values.
    I64(Vec<i64>),
    /// `i32` values.
    I32(Vec<i32>),
    /// `u64` values.
    U64(Vec<u64>),
    /// `u32` values.
    U32(Vec<u32>),
    /// `u16` values.
    U16(Vec<u16>),
    /// `u8` values.
    U8(Vec<u8>),
}

/// `values` converted to `dtype`: floats as they are (rounded to `f32` for
/// [`ResultDType::F32`]); integers rounded to nearest and saturated to the type's range,
/// NaN replaced by [`ResultDType::int_fill`].
pub fn typed_values(values: &[f64], dtype: ResultDType) -> TypedValues {
    macro_rules! ints {
        ($t:ty, $v:ident) => {{
            let fill = dtype.int_fill().unwrap_or(0) as $t;
            TypedValues::$v(
                values
                    .iter()
                    .map(|&x| if x.is_nan() { fill } else { x.round() as $t })
                    .collect(),
            )
        }};
    }
    match dtype {
        ResultDType::F64 => TypedValues::F64(values.to_vec()),
        ResultDType::F32 => TypedValues::F32(values.iter().map(|&x| x as f32).collect()),
        ResultDType::I64 => ints!(i64, I64),
        ResultDType::I32 => ints!(i32, I32),
        ResultDType::U64 => ints!(u64, U64),
        ResultDType::U32 => ints!(u32, U32),
        ResultDType::U16 => ints!(u16, U16),
        ResultDType::U8 => ints!(u8, U8),
    }
}
