//! Pixel data types of decoded frames.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The native (host byte order) element type of decoded frames.
///
/// Merlin: counter depth 1 and 6 → `U8`, 12 → `U16`, 24 → `U32` (protocols.md §1.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// Unsigned 8-bit.
    U8,
    /// Unsigned 16-bit.
    U16,
    /// Unsigned 32-bit.
    U32,
    /// Unsigned 64-bit.
    U64,
    /// IEEE 754 binary32. Offline data only (processed or calibrated recordings); signed
    /// 8- and 16-bit files are read as this type, which holds every value exactly.
    F32,
    /// IEEE 754 binary64. Offline data only; signed 32-bit files are read as this type,
    /// which holds every value exactly.
    F64,
}

impl DType {
    /// Size of one element in bytes.
    pub const fn size(self) -> usize {
        match self {
            DType::U8 => 1,
            DType::U16 => 2,
            DType::U32 => 4,
            DType::U64 | DType::F64 => 8,
            DType::F32 => 4,
        }
    }
    /// The numpy-style name (`uint8`, `uint16`, …) used in docs and recordings.
    pub const fn name(self) -> &'static str {
        match self {
            DType::U8 => "uint8",
            DType::U16 => "uint16",
            DType::U32 => "uint32",
            DType::U64 => "uint64",
            DType::F32 => "float32",
            DType::F64 => "float64",
        }
    }
    /// The type of a numpy-style [`name`](Self::name) (`uint16` → `U16`); `None` for others.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            DType::U8,
            DType::U16,
            DType::U32,
            DType::U64,
            DType::F32,
            DType::F64,
        ]
        .into_iter()
        .find(|d| d.name() == name)
    }
    /// True for the floating-point types ([`DType::F32`], [`DType::F64`]).
    pub const fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
