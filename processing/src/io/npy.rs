//! NumPy `.npy` files: the header (format versions 1–3), reading and writing.
//!
//! Format (NumPy's `numpy.lib.format` documentation): the magic `\x93NUMPY`, a major and a
//! minor version byte, the header length (u16 little-endian for version 1, u32 for 2 and 3),
//! then a Python dict literal `{'descr': '<u2', 'fortran_order': False, 'shape': (…), }`
//! padded with spaces to a multiple of 64 bytes and ended by `\n`; the array data follow,
//! C order unless `fortran_order`.

use super::{ByteOrder, IoError};
use std::io::Read;
use std::path::Path;

/// An element type of a `.npy` array, as its `descr` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NpyKind {
    /// `b1`: bool, one byte.
    Bool,
    /// `u1`, `u2`, `u4`, `u8`: unsigned integers of that many bytes.
    Unsigned(usize),
    /// `i1`…`i8`: signed integers.
    Signed(usize),
    /// `f4`, `f8`: floats.
    Float(usize),
}

/// The parsed header of a `.npy` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpyHeader {
    /// Element type.
    pub kind: NpyKind,
    /// Byte order of multi-byte elements.
    pub byte_order: ByteOrder,
    /// Array shape.
    pub shape: Vec<usize>,
    /// True for Fortran (column-major) order, which stemflow does not read as frames.
    pub fortran_order: bool,
    /// Offset of the first data byte in the file.
    pub data_offset: u64,
}

impl NpyHeader {
    /// Bytes per element.
    pub fn item_size(&self) -> usize {
        match self.kind {
            NpyKind::Bool => 1,
            NpyKind::Unsigned(n) | NpyKind::Signed(n) | NpyKind::Float(n) => n,
        }
    }
}

fn format_err(path: &Path, detail: impl Into<String>) -> IoError {
    IoError::Format {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// Reads and parses the header of the `.npy` file at `path`.
///
/// # Errors
/// [`IoError::Io`] when the file cannot be read; [`IoError::Format`] for a missing magic,
/// an unknown version, or a header dict without `descr` / `shape` or with a `descr` other
/// than bool, integers and floats.
pub fn read_header(path: &Path) -> Result<NpyHeader, IoError> {
    let mut f = std::fs::File::open(path).map_err(|e| IoError::io(path, "opening", e))?;
    let mut pre = [0u8; 12];
    f.read_exact(&mut pre[..10])
        .map_err(|e| IoError::io(path, "reading the .npy preamble", e))?;
    if &pre[..6] != b"\x93NUMPY" {
        return Err(format_err(
            path,
            format!(
                "not a .npy file: the first bytes are {:02x?}, expected 93 4e 55 4d 50 59",
                &pre[..6]
            ),
        ));
    }
    let (len, start) = match pre[6] {
        1 => (u16::from_le_bytes([pre[8], pre[9]]) as usize, 10usize),
        2 | 3 => {
            f.read_exact(&mut pre[10..12])
                .map_err(|e| IoError::io(path, "reading the .npy preamble", e))?;
            (
                u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]) as usize,
                12usize,
            )
        }
        v => {
            return Err(format_err(
                path,
                format!(".npy format version {v} is unknown (1, 2 and 3 are supported)"),
            ));
        }
    };
    if len > 1 << 20 {
        return Err(format_err(
            path,
            format!("header of {len} bytes is implausible"),
        ));
    }
    let mut text = vec![0u8; len];
    f.read_exact(&mut text)
        .map_err(|e| IoError::io(path, "reading the .npy header", e))?;
    let text = String::from_utf8_lossy(&text);
    parse_dict(path, &text, (start + len) as u64)
}

fn dict_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let k = text.find(&format!("'{key}'"))?;
    let rest = &text[k + key.len() + 2..];
    let colon = rest.find(':')?;
    Some(rest[colon + 1..].trim_start())
}

fn parse_dict(path: &Path, text: &str, data_offset: u64) -> Result<NpyHeader, IoError> {
    let descr = dict_value(text, "descr")
        .and_then(|v| v.strip_prefix('\''))
        .and_then(|v| v.split('\'').next())
        .ok_or_else(|| format_err(path, format!("header without 'descr': {text}")))?;
    let (order, code) = match descr.as_bytes().first() {
        Some(b'<') => (ByteOrder::Little, &descr[1..]),
        Some(b'>') => (ByteOrder::Big, &descr[1..]),
        Some(b'|') | Some(b'=') => (ByteOrder::native(), &descr[1..]),
        _ => (ByteOrder::native(), descr),
    };
    let size = code.get(1..).and_then(|s| s.parse::<usize>().ok());
    let kind = match (code.as_bytes().first(), size) {
        (Some(b'b'), Some(1)) => NpyKind::Bool,
        (Some(b'u'), Some(n @ (1 | 2 | 4 | 8))) => NpyKind::Unsigned(n),
        (Some(b'i'), Some(n @ (1 | 2 | 4 | 8))) => NpyKind::Signed(n),
        (Some(b'f'), Some(n @ (4 | 8))) => NpyKind::Float(n),
        _ => {
            return Err(format_err(
                path,
                format!("dtype '{descr}' is not supported (bool, integers, f4, f8 are)"),
            ));
        }
    };
    let fortran_order = dict_value(text, "fortran_order").is_some_and(|v| v.starts_with("True"));
    let shape_text = dict_value(text, "shape")
        .and_then(|v| v.strip_prefix('('))
        .and_then(|v| v.split(')').next())
        .ok_or_else(|| format_err(path, format!("header without 'shape': {text}")))?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format_err(path, format!("shape ({shape_text}): {e}")))?;
    Ok(NpyHeader {
        kind,
        byte_order: order,
        shape,
        fortran_order,
        data_offset,
    })
}

/// The header bytes (version 1) of a C-order array of `shape` with element `descr`
/// (e.g. `<u2`), padded so the data start at a multiple of 64 bytes.
pub fn header_bytes(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape_text = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut dict =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    let total = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// Reads a whole (small) C-order `.npy` array and returns its shape and, per element,
/// whether it is nonzero (for masks).
///
/// # Errors
/// As [`read_header`]; [`IoError::Format`] for Fortran order or a short file.
pub fn read_nonzero(path: &Path) -> Result<(Vec<usize>, Vec<bool>), IoError> {
    let h = read_header(path)?;
    if h.fortran_order {
        return Err(format_err(path, "Fortran-order arrays are not supported"));
    }
    let bytes = std::fs::read(path).map_err(|e| IoError::io(path, "reading", e))?;
    let n: usize = h.shape.iter().product();
    let size = h.item_size();
    let start = h.data_offset as usize;
    let data = bytes.get(start..start + n * size).ok_or_else(|| {
        format_err(
            path,
            format!(
                "{} data bytes expected after the header, {} present",
                n * size,
                bytes.len().saturating_sub(start)
            ),
        )
    })?;
    // Any nonzero byte makes an integer or bool nonzero; floats need -0.0 treated as zero.
    let values = data
        .chunks_exact(size)
        .map(|c| match h.kind {
            NpyKind::Float(_) => c.iter().enumerate().any(|(i, &b)| {
                let sign_byte = match h.byte_order {
                    ByteOrder::Little => size - 1,
                    ByteOrder::Big => 0,
                };
                if i == sign_byte {
                    b & 0x7f != 0
                } else {
                    b != 0
                }
            }),
            _ => c.iter().any(|&b| b != 0),
        })
        .collect();
    Ok((h.shape, values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_headers_parse_back() {
        let dir = std::env::temp_dir().join(format!("stemflow-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("h.npy");
        let mut bytes = header_bytes("<u2", &[2, 3, 4, 5]);
        assert_eq!(bytes.len() % 64, 0);
        bytes.extend(vec![0u8; 2 * 120]);
        std::fs::write(&p, &bytes).unwrap();
        let h = read_header(&p).unwrap();
        assert_eq!(h.shape, vec![2, 3, 4, 5]);
        assert_eq!(h.kind, NpyKind::Unsigned(2));
        assert_eq!(h.byte_order, ByteOrder::Little);
        assert_eq!(h.data_offset, bytes.len() as u64 - 240);
        let t = parse_dict(
            &p,
            "{'descr': '>f4', 'fortran_order': True, 'shape': (7,), }",
            0,
        )
        .unwrap();
        assert_eq!(
            (t.kind, t.byte_order, t.shape, t.fortran_order),
            (NpyKind::Float(4), ByteOrder::Big, vec![7], true)
        );
        assert!(parse_dict(&p, "{'descr': '<c16', 'shape': (1,)}", 0).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
