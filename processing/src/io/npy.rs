//! NumPy `.npy` files: the header (format versions 1–3), reading and writing.
//!
//! Format (NumPy's `numpy.lib.format` documentation): the magic `\x93NUMPY`, a major and a
//! minor version byte, the header length (u16 little-endian for version 1, u32 for 2 and 3),
//! then a Python dict literal `{'descr': '<u2', 'fortran_order': False, 'shape': (…), }`
//! padded with spaces to a multiple of 64 bytes and ended by `\n`; the array data follow,
//! C order unless `fortran_order`.
//!
//! The header dict is parsed by npyz; the preamble check, the mapping onto the element
//! types stemflow reads, the header writer and the data reads are ours (decision 0017).

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

/// The longest header text read, bytes. NumPy's own headers are a few hundred bytes; npyz
/// would allocate whatever length a file states (up to 4 GiB for versions 2 and 3), so the
/// length is checked here before the text is read.
const MAX_HEADER_LEN: usize = 1 << 20;

/// Reads and parses the header of the `.npy` file at `path`.
///
/// The preamble (magic, version, header length) is checked here; the header dict is parsed
/// by npyz (a Python-literal parser), and its type mapped onto [`NpyKind`].
///
/// # Errors
/// [`IoError::Io`] when the file cannot be read; [`IoError::Format`] for a missing magic,
/// an unknown version, a header longer than 1 MiB, a header dict that does not parse or
/// lacks `descr`, `fortran_order` (a bool) or `shape`, or a `descr` other than bool,
/// integers and floats.
pub fn read_header(path: &Path) -> Result<NpyHeader, IoError> {
    let f = std::fs::File::open(path).map_err(|e| IoError::io(path, "opening", e))?;
    parse_header(f, path)
}

/// Reads and parses a `.npy` header from `f` (the start of the file), as
/// [`read_header`]; `path` names the file in errors.
///
/// # Errors
/// As [`read_header`].
pub fn parse_header(mut f: impl Read, path: &Path) -> Result<NpyHeader, IoError> {
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
    if len > MAX_HEADER_LEN {
        return Err(format_err(
            path,
            format!("header of {len} bytes is implausible (at most 1 MiB is read)"),
        ));
    }
    // npyz reads the preamble again, from these bytes, then exactly `len` bytes of text.
    let mut bytes = Vec::with_capacity(start + len);
    bytes.extend_from_slice(&pre[..start]);
    bytes.resize(start + len, 0);
    f.read_exact(&mut bytes[start..])
        .map_err(|e| IoError::io(path, "reading the .npy header", e))?;
    // npyz's Python-literal parser backtracks on nested brackets (each `{` tried as a dict,
    // then as a set): 200 of them took minutes, 8 took 88 ms (found by fuzzing). NumPy's
    // header needs a depth of 2 (the dict, the shape tuple), a structured type with a
    // sub-array 4 (dict, field list, field tuple, shape tuple).
    if let Some(at) = too_deep(&bytes[start..], MAX_HEADER_NESTING) {
        return Err(format_err(
            path,
            format!(
                "the header nests brackets deeper than {MAX_HEADER_NESTING} levels (at byte {})",
                start + at
            ),
        ));
    }
    // npyz multiplies the shape's dimensions in u64, which a forged shape overflows (a
    // panic in builds with overflow checks): said as an error, checked again by our readers
    // in u128 (RawDataSet::open_as).
    let parsed = std::panic::catch_unwind(|| npyz::NpyHeader::from_reader(bytes.as_slice()))
        .map_err(|_| {
            format_err(
                path,
                "the header's shape has more elements than fit in 64 bits".to_string(),
            )
        })?
        .map_err(|e| {
            let text = String::from_utf8_lossy(&bytes[start..]);
            let text = text.trim_end();
            let shown: String = text.chars().take(300).collect();
            let more = if shown.len() < text.len() { "…" } else { "" };
            format_err(path, format!("invalid .npy header {shown}{more}: {e}"))
        })?;
    to_header(path, &parsed, (start + len) as u64)
}

/// Deepest bracket nesting accepted in a header dict: the most a NumPy header has.
const MAX_HEADER_NESTING: usize = 4;

/// The byte offset in `text` where brackets (`{`, `[`, `(`) first nest deeper than `max`,
/// if they do. Brackets inside string literals count too: a backtracking parser also tries
/// readings in which they are not inside a string (found by fuzzing), and NumPy's headers
/// have none there.
fn too_deep(text: &[u8], max: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, &b) in text.iter().enumerate() {
        match b {
            b'{' | b'[' | b'(' => {
                depth += 1;
                if depth > max {
                    return Some(i);
                }
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// Maps npyz's header onto ours: the element types we read, the byte order, the shape.
fn to_header(path: &Path, h: &npyz::NpyHeader, data_offset: u64) -> Result<NpyHeader, IoError> {
    use npyz::{DType, Endianness, Order, TypeChar};
    let dtype = h.dtype();
    let unsupported = || {
        format_err(
            path,
            format!(
                "dtype {} is not supported (bool, integers, f4, f8 are)",
                dtype.descr()
            ),
        )
    };
    let DType::Plain(t) = &dtype else {
        return Err(unsupported());
    };
    let kind = match (t.type_char(), t.num_bytes()) {
        (TypeChar::Bool, Some(1)) => NpyKind::Bool,
        (TypeChar::Uint, Some(n @ (1 | 2 | 4 | 8))) => NpyKind::Unsigned(n),
        (TypeChar::Int, Some(n @ (1 | 2 | 4 | 8))) => NpyKind::Signed(n),
        (TypeChar::Float, Some(n @ (4 | 8))) => NpyKind::Float(n),
        _ => return Err(unsupported()),
    };
    let byte_order = match t.endianness() {
        Endianness::Little => ByteOrder::Little,
        Endianness::Big => ByteOrder::Big,
        // `|`: single-byte types, where the order does not matter.
        Endianness::Irrelevant => ByteOrder::native(),
    };
    let shape = h
        .shape()
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| {
                format_err(
                    path,
                    format!(
                        "shape {:?}: dimension {d} exceeds this machine's usize",
                        h.shape()
                    ),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NpyHeader {
        kind,
        byte_order,
        shape,
        fortran_order: matches!(h.order(), Order::Fortran),
        data_offset,
    })
}

/// The header bytes (version 1) of a C-order array of `shape` with element `descr`
/// (e.g. `<u2`), padded so the data start at a multiple of 64 bytes.
///
/// The bytes are NumPy's own for such an array: the shape tuple as Python writes it
/// (`(5,)`, `(2, 3)`). npyz's header writer writes `(5, )` and `(2, 3, )`, valid but not
/// NumPy's bytes, so the header is written here (decision 0017).
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
    let size = h.item_size();
    let n = h
        .shape
        .iter()
        .try_fold(size, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format_err(path, format!("shape {:?} overflows", h.shape)))?
        / size.max(1);
    let start = h.data_offset as usize;
    let data = bytes
        .get(start..start.saturating_add(n * size))
        .ok_or_else(|| {
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
    use npyz::WriterBuilder;
    use std::path::PathBuf;

    /// A scratch folder, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("stemflow-npy-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        /// Writes `bytes` to the file `name` and returns its path.
        fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A `.npy` header of format version `v` with `dict` as its text, padded to 64 bytes.
    fn header_file(dict: &str, v: u8) -> Vec<u8> {
        let pre = if v == 1 { 10 } else { 12 };
        let mut text = dict.to_string();
        let total = pre + text.len() + 1;
        text.push_str(&" ".repeat(total.next_multiple_of(64) - total));
        text.push('\n');
        let mut out = vec![0x93, b'N', b'U', b'M', b'P', b'Y', v, 0];
        if v == 1 {
            out.extend_from_slice(&(text.len() as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(text.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(text.as_bytes());
        out
    }

    /// npyz's own header bytes for `descr` and `shape`.
    fn npyz_header(descr: &str, shape: &[usize]) -> Vec<u8> {
        let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        npyz::WriteOptions::new_header_only()
            .dtype(npyz::DType::Plain(descr.parse().unwrap()))
            .shape(&shape)
            .writer(Vec::new())
            .write_header_only()
            .unwrap()
    }

    #[test]
    fn written_headers_parse_back() {
        let dir = Scratch::new("back");
        let mut bytes = header_bytes("<u2", &[2, 3, 4, 5]);
        assert_eq!(bytes.len() % 64, 0);
        bytes.extend(vec![0u8; 2 * 120]);
        let p = dir.file("h.npy", &bytes);
        let h = read_header(&p).unwrap();
        assert_eq!(h.shape, vec![2, 3, 4, 5]);
        assert_eq!(h.kind, NpyKind::Unsigned(2));
        assert_eq!(h.byte_order, ByteOrder::Little);
        assert!(!h.fortran_order);
        assert_eq!(h.data_offset, bytes.len() as u64 - 240);
    }

    #[test]
    fn every_accepted_type_order_version_and_key_order_parses() {
        let dir = Scratch::new("types");
        let cases = [
            ("|b1", NpyKind::Bool),
            ("|u1", NpyKind::Unsigned(1)),
            ("|i1", NpyKind::Signed(1)),
            ("<u2", NpyKind::Unsigned(2)),
            (">u4", NpyKind::Unsigned(4)),
            ("<u8", NpyKind::Unsigned(8)),
            (">i2", NpyKind::Signed(2)),
            ("<i4", NpyKind::Signed(4)),
            (">i8", NpyKind::Signed(8)),
            ("<f4", NpyKind::Float(4)),
            (">f8", NpyKind::Float(8)),
        ];
        for (descr, kind) in cases {
            let order = match descr.as_bytes()[0] {
                b'<' => ByteOrder::Little,
                b'>' => ByteOrder::Big,
                _ => ByteOrder::native(),
            };
            for (fortran, shape, shape_text) in [
                (false, vec![], "()"),
                (true, vec![7], "(7,)"),
                (false, vec![16, 16, 256, 256], "(16, 16, 256, 256)"),
            ] {
                let f = if fortran { "True" } else { "False" };
                for (v, dict) in [
                    (
                        1,
                        format!(
                            "{{'descr': '{descr}', 'fortran_order': {f}, 'shape': {shape_text}, }}"
                        ),
                    ),
                    (
                        2,
                        format!(
                            "{{'descr': '{descr}', 'fortran_order': {f}, 'shape': {shape_text}, }}"
                        ),
                    ),
                    (
                        3,
                        format!(
                            "{{'descr': '{descr}', 'fortran_order': {f}, 'shape': {shape_text}, }}"
                        ),
                    ),
                    (
                        1,
                        format!(
                            "{{'shape': {shape_text}, 'fortran_order': {f}, 'descr': '{descr}'}}"
                        ),
                    ),
                ] {
                    let bytes = header_file(&dict, v);
                    let p = dir.file("t.npy", &bytes);
                    let h = read_header(&p).unwrap_or_else(|e| panic!("v{v} {dict}: {e}"));
                    assert_eq!(
                        h,
                        NpyHeader {
                            kind,
                            byte_order: order,
                            shape: shape.clone(),
                            fortran_order: fortran,
                            data_offset: bytes.len() as u64,
                        },
                        "v{v} {dict}"
                    );
                }
            }
        }
    }

    #[test]
    fn malformed_headers_and_other_types_are_refused_naming_file_and_cause() {
        let dir = Scratch::new("bad");
        for (dict, cause) in [
            ("{'descr': '<u2', 'shape': (2,), }", "fortran_order"),
            (
                "{'descr': '<u2', 'fortran_order': 0, 'shape': (2,), }",
                "fortran_order",
            ),
            (
                "{'descr': '<u2', 'fortran_order': 'no', 'shape': (2,), }",
                "fortran_order",
            ),
            ("{'descr': '<u2', 'fortran_order': False, }", "shape"),
            ("{'fortran_order': False, 'shape': (2,), }", "descr"),
            (
                "{'descr': '<u2', 'fortran_order': False, 'shape': (2, -3), }",
                "negative",
            ),
            (
                "{'descr': '<u2' 'fortran_order': False 'shape': (2,)}",
                "parse",
            ),
            ("['<u2', False, (2,)]", "dict"),
            (
                "{'descr': '|u2', 'fortran_order': False, 'shape': (2,), }",
                "|u2",
            ),
            (
                "{'descr': '=u2', 'fortran_order': False, 'shape': (2,), }",
                "=u2",
            ),
            (
                "{'descr': 'u2', 'fortran_order': False, 'shape': (2,), }",
                "Invalid type-string",
            ),
            (
                "{'descr': '<c16', 'fortran_order': False, 'shape': (2,), }",
                "'<c16' is not supported",
            ),
            (
                "{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }",
                "'<f2' is not supported",
            ),
            (
                "{'descr': '<U4', 'fortran_order': False, 'shape': (2,), }",
                "'<U4' is not supported",
            ),
            (
                "{'descr': [('a', '<u2'), ('b', '<f4')], 'fortran_order': False, 'shape': (2,), }",
                "[('a', '<u2'), ('b', '<f4'), ] is not supported (bool, integers, f4, f8 are)",
            ),
        ] {
            let p = dir.file("m.npy", &header_file(dict, 1));
            let err = read_header(&p).expect_err(dict);
            assert!(matches!(err, IoError::Format { .. }), "{dict}: {err:?}");
            let msg = err.to_string();
            assert!(
                msg.starts_with(&p.display().to_string()) && msg.contains(cause),
                "{dict}: `{msg}` should name the file and {cause}"
            );
        }
    }

    #[test]
    fn preamble_is_checked_before_the_header_is_read() {
        let dir = Scratch::new("pre");
        // A version-2 header length above 1 MiB is refused from the 12-byte preamble alone,
        // before anything of that length is read or allocated.
        let mut big = b"\x93NUMPY\x02\x00".to_vec();
        big.extend_from_slice(&((1u32 << 20) + 64).to_le_bytes());
        let p = dir.file("big.npy", &big);
        let msg = read_header(&p).unwrap_err().to_string();
        assert!(
            msg.contains("header of 1048640 bytes is implausible"),
            "{msg}"
        );
        // A header text of exactly 1 MiB is read and parsed (not aligned: npyz does not ask).
        let mut text = "{'descr': '<u2', 'fortran_order': False, 'shape': (2,), }".to_string();
        text.push_str(&" ".repeat((1 << 20) - text.len() - 1));
        text.push('\n');
        let mut bytes = b"\x93NUMPY\x02\x00".to_vec();
        bytes.extend_from_slice(&(1u32 << 20).to_le_bytes());
        bytes.extend_from_slice(text.as_bytes());
        let p = dir.file("mib.npy", &bytes);
        assert_eq!(read_header(&p).unwrap().data_offset, 12 + (1 << 20));

        let p = dir.file("magic.npy", b"\x93NUMPX\x01\x00\x40\x00");
        let msg = read_header(&p).unwrap_err().to_string();
        assert!(msg.contains("not a .npy file"), "{msg}");
        let p = dir.file("v4.npy", b"\x93NUMPY\x04\x00\x40\x00\x00\x00");
        let msg = read_header(&p).unwrap_err().to_string();
        assert!(msg.contains("version 4 is unknown"), "{msg}");
        let mut minor = header_file(
            "{'descr': '<u2', 'fortran_order': False, 'shape': (2,), }",
            1,
        );
        minor[7] = 1;
        let p = dir.file("v1.1.npy", &minor);
        let msg = read_header(&p).unwrap_err().to_string();
        assert!(msg.contains("unsupported version: (1, 1)"), "{msg}");
        let p = dir.file("short.npy", b"\x93NUMPY\x01\x00\x40\x00{'descr'");
        assert!(matches!(read_header(&p), Err(IoError::Io { .. })));
    }

    /// Found by fuzzing: nested brackets made npyz's parser backtrack for minutes on a
    /// 260-byte header. Refused at once, naming the depth; NumPy's own nesting still reads.
    #[test]
    fn deeply_nested_headers_are_refused_at_once() {
        let dir = Scratch::new("nested");
        let deep = format!(
            "{{'descr': '<u2', 'fortran_order': False, 'shape': (16, 16, {}256), }}",
            "{".repeat(200)
        );
        let p = dir.file("deep.npy", &header_file(&deep, 1));
        let t0 = std::time::Instant::now();
        let msg = read_header(&p).unwrap_err().to_string();
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            t0.elapsed()
        );
        assert!(msg.contains("deeper than 4 levels"), "{msg}");
        // The deepest NumPy writes (a structured type with a sub-array) still parses; its
        // type is refused afterwards, as before.
        let structured = "{'descr': [('a', '<u2', (2,))], 'fortran_order': False, 'shape': (3,), }";
        let p = dir.file("structured.npy", &header_file(structured, 1));
        let msg = read_header(&p).unwrap_err().to_string();
        assert!(!msg.contains("deeper than"), "{msg}");
        // Brackets inside a string count as well: this 298-byte header, whose braces hide
        // behind quotes and escapes, kept npyz busy for over 5 s (found by fuzzing).
        let mut forged =
            b"\x93NUMPY\x01\x00\xca\x00{{{{'crorT2\x00\\\\\\\\\\\\\\N{2\\3|b1or{{'tr".to_vec();
        forged.resize(10 + 0xca, b' ');
        let p = dir.file("quoted.npy", &forged);
        let t0 = std::time::Instant::now();
        let msg = read_header(&p).unwrap_err().to_string();
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            t0.elapsed()
        );
        assert!(msg.contains("deeper than 4 levels"), "{msg}");
    }

    #[test]
    fn our_headers_are_numpys_and_npyz_writes_another_valid_form() {
        let dir = Scratch::new("write");
        // The header NumPy wrote for the shared DECTRIS capture's frames.
        let numpy = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/data/dectris/stream-v1/synthetic_16x16_256_u16.npy"
        ));
        if let Ok(bytes) = std::fs::read(numpy) {
            let ours = header_bytes("<u2", &[16, 16, 256, 256]);
            assert_eq!(&bytes[..ours.len()], &ours[..], "NumPy's header");
            assert_ne!(
                &bytes[..ours.len()],
                &npyz_header("<u2", &[16, 16, 256, 256])[..],
                "npyz now writes NumPy's header bytes: header_bytes could use its writer"
            );
        }
        let text = |b: &[u8]| String::from_utf8_lossy(&b[10..]).trim_end().to_string();
        assert_eq!(
            text(&header_bytes("<u2", &[5])),
            "{'descr': '<u2', 'fortran_order': False, 'shape': (5,), }"
        );
        assert_eq!(
            text(&npyz_header("<u2", &[5])),
            "{'descr': '<u2', 'fortran_order': False, 'shape': (5, ), }"
        );
        for descr in ["|b1", "|u1", "<u2", ">i4", "<f4", ">f8"] {
            for shape in [&[][..], &[5], &[3, 4], &[16, 16, 256, 256], &[1 << 20, 3]] {
                let ours = header_bytes(descr, shape);
                let theirs = npyz_header(descr, shape);
                // Same length and the same header once read; the bytes differ only in the
                // shape tuple's trailing `, ` (none for 0-D arrays: both write `()`).
                assert_eq!(ours.len(), theirs.len(), "{descr} {shape:?}");
                assert_eq!(ours == theirs, shape.is_empty(), "{descr} {shape:?}");
                let a = read_header(&dir.file("a.npy", &ours)).unwrap();
                let b = read_header(&dir.file("b.npy", &theirs)).unwrap();
                assert_eq!(a, b, "{descr} {shape:?}");
                assert_eq!(a.shape, shape);
                assert_eq!(a.data_offset % 64, 0);
            }
        }
    }
}
