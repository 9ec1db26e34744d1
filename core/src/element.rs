//! [`ElementType`]: the type of the pixels stored in a file, and [`ByteOrder`], the order
//! of their bytes.
//!
//! Frames have no signed [`DType`]: a signed file is read as floats, converted block by
//! block as it is read. int8 and int16 fit float32's 24-bit significand and int32 fits
//! float64's 53-bit one, so those conversions are exact; int64 is read as float64 only
//! while every value lies within ±2^53, and a value beyond is an error naming the frame
//! and the value rather than a silently rounded pixel. The types live here, beside
//! [`crate::dataset::DataSet`], so that every reader (the processing crate's files, the
//! detector drivers' recordings) describes its files alike; the conversion itself is the
//! readers' (`stemflow_processing::io`).

use crate::DType;
use std::fmt;

/// Byte order of multi-byte pixels in a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteOrder {
    /// Least significant byte first (x86, ARM, NumPy's `<`).
    Little,
    /// Most significant byte first (Merlin, NumPy's `>`).
    Big,
}

impl ByteOrder {
    /// This machine's byte order.
    pub fn native() -> Self {
        if cfg!(target_endian = "big") {
            ByteOrder::Big
        } else {
            ByteOrder::Little
        }
    }
}

impl std::str::FromStr for ByteOrder {
    type Err = String;
    /// `little`/`le`/`<` or `big`/`be`/`>`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "little" | "le" | "<" => Ok(ByteOrder::Little),
            "big" | "be" | ">" => Ok(ByteOrder::Big),
            other => Err(format!("byte order `{other}`: expected little or big")),
        }
    }
}

/// The largest magnitude up to which every integer is exactly a float64: 2^53.
pub const F64_EXACT_INT: u64 = 1 << 53;

/// The type of one pixel as stored in a file (raw binary, `.npy`, HDF5), before it is read
/// into frames of [`ElementType::memory_dtype`].
///
/// | file | frames | conversion |
/// |---|---|---|
/// | uint8, uint16, uint32, uint64 | the same | none |
/// | float32, float64 | the same | none |
/// | int8, int16 | float32 | exact |
/// | int32 | float64 | exact |
/// | int64 | float64 | exact within ±2^53, else an error ([`crate::dataset::IoError::Inexact`]) |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElementType {
    /// Unsigned 8-bit.
    U8,
    /// Unsigned 16-bit.
    U16,
    /// Unsigned 32-bit.
    U32,
    /// Unsigned 64-bit.
    U64,
    /// Signed 8-bit (two's complement); read as float32.
    I8,
    /// Signed 16-bit; read as float32.
    I16,
    /// Signed 32-bit; read as float64.
    I32,
    /// Signed 64-bit; read as float64, values beyond ±2^53 refused.
    I64,
    /// IEEE 754 binary32.
    F32,
    /// IEEE 754 binary64.
    F64,
}

/// Every element type, for messages and tests.
pub const ELEMENT_TYPES: [ElementType; 10] = [
    ElementType::U8,
    ElementType::U16,
    ElementType::U32,
    ElementType::U64,
    ElementType::I8,
    ElementType::I16,
    ElementType::I32,
    ElementType::I64,
    ElementType::F32,
    ElementType::F64,
];

/// The accepted spellings, for error messages.
const SPELLINGS: &str = "uint8/u8/u1, uint16/u16/u2, uint32/u32/u4, uint64/u64, \
     int8/i8/i1, int16/i16/i2, int32/i32/i4, int64/i64, float32/f32/f4, float64/f64/f8, \
     optionally after a NumPy byte-order mark < > = |";

impl ElementType {
    /// Bytes per element in the file.
    pub const fn size(self) -> usize {
        match self {
            ElementType::U8 | ElementType::I8 => 1,
            ElementType::U16 | ElementType::I16 => 2,
            ElementType::U32 | ElementType::I32 | ElementType::F32 => 4,
            ElementType::U64 | ElementType::I64 | ElementType::F64 => 8,
        }
    }

    /// NumPy's name (`uint8`, `int16`, `float32`, …).
    pub const fn name(self) -> &'static str {
        match self {
            ElementType::U8 => "uint8",
            ElementType::U16 => "uint16",
            ElementType::U32 => "uint32",
            ElementType::U64 => "uint64",
            ElementType::I8 => "int8",
            ElementType::I16 => "int16",
            ElementType::I32 => "int32",
            ElementType::I64 => "int64",
            ElementType::F32 => "float32",
            ElementType::F64 => "float64",
        }
    }

    /// The pixel type of the frames this element is read into: itself for unsigned
    /// integers and floats; float32 for int8/int16, float64 for int32/int64.
    pub const fn memory_dtype(self) -> DType {
        match self {
            ElementType::U8 => DType::U8,
            ElementType::U16 => DType::U16,
            ElementType::U32 => DType::U32,
            ElementType::U64 => DType::U64,
            ElementType::I8 | ElementType::I16 | ElementType::F32 => DType::F32,
            ElementType::I32 | ElementType::I64 | ElementType::F64 => DType::F64,
        }
    }

    /// True when the file's bytes are not the frames' bytes (the signed types): reading
    /// goes through a scratch block and a conversion.
    pub const fn is_converted(self) -> bool {
        matches!(
            self,
            ElementType::I8 | ElementType::I16 | ElementType::I32 | ElementType::I64
        )
    }

    /// Parses a pixel type; see [`ElementType::parse_with_order`] for the spellings. A
    /// byte-order mark is accepted and dropped (the byte order is given separately).
    ///
    /// # Errors
    /// As [`ElementType::parse_with_order`].
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::parse_with_order(s).map(|(e, _)| e)
    }

    /// Parses a pixel type and the byte order its NumPy mark names, if any.
    ///
    /// Spellings (case-insensitive): NumPy's names `uint8` … `float64`; stemflow's (Rust's)
    /// bit-count names `u8`, `u16`, `u32`, `u64`, `i8`, `i16`, `i32`, `i64`, `f32`, `f64`;
    /// NumPy's byte-count codes `u1`, `u2`, `u4`, `i1`, `i2`, `i4`, `f4`, `f8`. A leading
    /// `<` (little-endian), `>` (big-endian), `=` (native) or `|` (not applicable) is
    /// NumPy's byte-order mark; the order is returned for `<`, `>` and `=`.
    ///
    /// `u8` and `i8` mean 8 bits (stemflow's long-standing `--dtype u8`), although in
    /// NumPy's codes they are 8 *bytes*. Written after a byte-order mark (`<u8`, `>i8`),
    /// as NumPy writes them, they are refused as ambiguous: name `uint64` or `uint8`.
    ///
    /// # Errors
    /// A sentence naming the text and the accepted spellings.
    pub fn parse_with_order(s: &str) -> Result<(Self, Option<ByteOrder>), String> {
        let t = s.trim().to_ascii_lowercase();
        let (order, marked, body) = match t.as_bytes().first() {
            Some(b'<') => (Some(ByteOrder::Little), true, &t[1..]),
            Some(b'>') => (Some(ByteOrder::Big), true, &t[1..]),
            Some(b'=') => (Some(ByteOrder::native()), true, &t[1..]),
            Some(b'|') => (None, true, &t[1..]),
            _ => (None, false, t.as_str()),
        };
        let e = match body {
            "uint8" | "u8" | "u1" => ElementType::U8,
            "uint16" | "u16" | "u2" => ElementType::U16,
            "uint32" | "u32" | "u4" => ElementType::U32,
            "uint64" | "u64" => ElementType::U64,
            "int8" | "i8" | "i1" => ElementType::I8,
            "int16" | "i16" | "i2" => ElementType::I16,
            "int32" | "i32" | "i4" => ElementType::I32,
            "int64" | "i64" => ElementType::I64,
            "float32" | "f32" | "f4" => ElementType::F32,
            "float64" | "f64" | "f8" => ElementType::F64,
            _ => return Err(format!("pixel type `{s}` is unknown; expected {SPELLINGS}")),
        };
        if marked && matches!(body, "u8" | "i8") {
            let (narrow, wide) = if body == "u8" {
                ("uint8", "uint64")
            } else {
                ("int8", "int64")
            };
            return Err(format!(
                "pixel type `{s}` is ambiguous: in NumPy's notation `{body}` is 8 bytes \
                 ({wide}), in stemflow's 8 bits ({narrow}); write `{wide}` or `{narrow}`"
            ));
        }
        Ok((e, order))
    }
}

impl From<DType> for ElementType {
    /// The element type whose bytes are the frames' bytes.
    fn from(d: DType) -> Self {
        match d {
            DType::U8 => ElementType::U8,
            DType::U16 => ElementType::U16,
            DType::U32 => ElementType::U32,
            DType::U64 => ElementType::U64,
            DType::F32 => ElementType::F32,
            DType::F64 => ElementType::F64,
        }
    }
}

impl std::str::FromStr for ElementType {
    type Err = String;
    /// As [`ElementType::parse`].
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

impl fmt::Display for ElementType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_parse_to_the_documented_types() {
        let cases = [
            ("u8", ElementType::U8),
            ("uint8", ElementType::U8),
            ("|u1", ElementType::U8),
            ("<u2", ElementType::U16),
            ("UINT32", ElementType::U32),
            ("uint64", ElementType::U64),
            ("i8", ElementType::I8),
            ("|i1", ElementType::I8),
            ("int16", ElementType::I16),
            ("i2", ElementType::I16),
            ("<i2", ElementType::I16),
            ("i4", ElementType::I32),
            ("int64", ElementType::I64),
            ("i64", ElementType::I64),
            ("float32", ElementType::F32),
            ("f4", ElementType::F32),
            ("f32", ElementType::F32),
            (">f8", ElementType::F64),
            ("float64", ElementType::F64),
        ];
        for (s, e) in cases {
            assert_eq!(ElementType::parse(s), Ok(e), "{s}");
        }
        assert_eq!(
            ElementType::parse_with_order(">i2"),
            Ok((ElementType::I16, Some(ByteOrder::Big)))
        );
        assert_eq!(
            ElementType::parse_with_order("float32"),
            Ok((ElementType::F32, None))
        );
        for s in ["<u8", ">i8", "c8", "bool", "f2", "", "int"] {
            let e = ElementType::parse(s).unwrap_err();
            assert!(e.contains(&format!("`{s}`")), "{e}");
        }
        assert!(ElementType::parse("<u8").unwrap_err().contains("uint64"));
        for e in ELEMENT_TYPES {
            assert_eq!(ElementType::parse(e.name()), Ok(e));
            assert_eq!(
                e.memory_dtype().is_float(),
                e.is_converted() || e.name().starts_with('f')
            );
        }
    }
}
