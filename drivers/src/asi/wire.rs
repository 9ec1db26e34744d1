//! The ASI TPX3 (CheeTah) sparse stream's messages: five 32-byte little-endian headers,
//! the first byte a tag (protocols.md §3.2–§3.3), parsed and written as plain values.
//! Pure: no I/O. The chunk payload after an `ArrayChunk` (§3.4) is read by the receiver
//! straight into its stack and checked by [`stemflow_core::csr::CsrRows::push_chunk`].

use stemflow_core::SigShape;
use stemflow_core::csr::{CsrChunkRef, CsrDType, CsrError, CsrFormat};

/// Bytes of every header (§3.1).
pub const HEADER_LEN: usize = 32;

/// Tags of the five headers (§3.3).
pub mod tag {
    /// `AcquisitionStart`.
    pub const ACQUISITION_START: u8 = 0;
    /// `ScanStart`.
    pub const SCAN_START: u8 = 1;
    /// `ArrayChunk`.
    pub const ARRAY_CHUNK: u8 = 2;
    /// `ScanEnd`.
    pub const SCAN_END: u8 = 3;
    /// `AcquisitionEnd`.
    pub const ACQUISITION_END: u8 = 4;
}

/// Errors parsing a header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The first byte is no known tag: not a TPX3 stream, or the position in it was lost.
    #[error(
        "unknown message tag {tag} (expected 0–4: AcquisitionStart, ScanStart, ArrayChunk, ScanEnd, AcquisitionEnd; protocols.md §3.3); header bytes {head}"
    )]
    Tag {
        /// The byte found.
        tag: u8,
        /// The header, hex.
        head: String,
    },
    /// A dtype or format code we cannot read.
    #[error("{0}")]
    DType(#[from] CsrError),
    /// A format type other than CSR (0) or ToT CSR (1).
    #[error("format type {0} is not supported (0 = CSR, 1 = ToT CSR; protocols.md §3.3)")]
    Format(u8),
    /// A zero dimension in the AcquisitionStart.
    #[error(
        "AcquisitionStart announces nav shape {nav_rows} × {nav_cols} and signal shape {sig_rows} × {sig_cols}: every dimension must be at least 1"
    )]
    Shape {
        /// Scan rows.
        nav_rows: u16,
        /// Scan columns.
        nav_cols: u16,
        /// Frame rows.
        sig_rows: u16,
        /// Frame columns.
        sig_cols: u16,
    },
}

/// How counts are encoded (§3.3 `format_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatType {
    /// Sorted CSR, values are event counts.
    Csr,
    /// Sorted CSR whose values are time-over-threshold sums.
    Tot,
}

/// `AcquisitionStart` (tag 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcquisitionStart {
    /// Stream version (LiberTEM's producers send 7).
    pub version: u8,
    /// Counts or time over threshold.
    pub format_type: FormatType,
    /// Scan shape, (rows, cols).
    pub nav_shape: (u16, u16),
    /// Row pointer dtype.
    pub indptr: CsrDType,
    /// Frame shape, (rows, cols).
    pub sig_shape: (u16, u16),
    /// Signal index dtype.
    pub indices: CsrDType,
    /// Acquisition id.
    pub sequence: u32,
}

impl AcquisitionStart {
    /// Frames of one scan: `nav_shape.0 × nav_shape.1`.
    pub fn frames(&self) -> u64 {
        u64::from(self.nav_shape.0) * u64::from(self.nav_shape.1)
    }
    /// The CSR format every chunk of the acquisition shares.
    pub fn format(&self) -> CsrFormat {
        CsrFormat {
            sig_shape: SigShape::new(self.sig_shape.0 as usize, self.sig_shape.1 as usize),
            indptr: self.indptr,
            indices: self.indices,
        }
    }
}

/// `ScanStart` (tag 1), followed by `metadata_length` bytes of JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanStart {
    /// Scan number within the acquisition.
    pub sequence: u32,
    /// Bytes of metadata that follow.
    pub metadata_length: u64,
}

/// `ArrayChunk` (tag 2), followed by its CSR payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArrayChunk {
    /// Value dtype of this chunk.
    pub values: CsrDType,
    /// Rows (scan positions).
    pub frames: u32,
    /// Entries (events).
    pub nnz: u32,
    /// Byte offset of `indices` in the payload.
    pub indices_offset: u32,
    /// Byte offset of `values` in the payload.
    pub values_offset: u32,
}

impl ArrayChunk {
    /// Payload bytes after the header: `values_offset + nnz × value size` (§3.4).
    pub fn payload_len(&self) -> u64 {
        u64::from(self.values_offset) + u64::from(self.nnz) * self.values.size() as u64
    }
    /// The chunk as a stack entry at `offset`, holding frames from `first_frame`.
    pub fn chunk_ref(&self, offset: usize, first_frame: u64) -> CsrChunkRef {
        CsrChunkRef {
            offset,
            len: self.payload_len() as usize,
            first_frame,
            frames: self.frames,
            nnz: self.nnz,
            indices_offset: self.indices_offset,
            values_offset: self.values_offset,
            values: self.values,
        }
    }
}

/// One header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// Tag 0.
    AcquisitionStart(AcquisitionStart),
    /// Tag 1.
    ScanStart(ScanStart),
    /// Tag 2.
    ArrayChunk(ArrayChunk),
    /// Tag 3, with the scan's sequence.
    ScanEnd(u32),
    /// Tag 4, with the acquisition's sequence.
    AcquisitionEnd(u32),
}

fn u16_at(b: &[u8; HEADER_LEN], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8; HEADER_LEN], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8; HEADER_LEN], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

impl Header {
    /// Parses one header (reserved bytes are ignored).
    ///
    /// # Errors
    /// [`WireError`] for an unknown tag, format type, dtype code, or a zero dimension.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<Self, WireError> {
        Ok(match b[0] {
            tag::ACQUISITION_START => {
                let format_type = match b[2] {
                    0 => FormatType::Csr,
                    1 => FormatType::Tot,
                    other => return Err(WireError::Format(other)),
                };
                let a = AcquisitionStart {
                    version: b[1],
                    format_type,
                    nav_shape: (u16_at(b, 3), u16_at(b, 5)),
                    indptr: CsrDType::from_code("indptr", b[7])?,
                    sig_shape: (u16_at(b, 8), u16_at(b, 10)),
                    indices: CsrDType::from_code("indices", b[12])?,
                    sequence: u32_at(b, 13),
                };
                if a.nav_shape.0 == 0
                    || a.nav_shape.1 == 0
                    || a.sig_shape.0 == 0
                    || a.sig_shape.1 == 0
                {
                    return Err(WireError::Shape {
                        nav_rows: a.nav_shape.0,
                        nav_cols: a.nav_shape.1,
                        sig_rows: a.sig_shape.0,
                        sig_cols: a.sig_shape.1,
                    });
                }
                Header::AcquisitionStart(a)
            }
            tag::SCAN_START => Header::ScanStart(ScanStart {
                sequence: u32_at(b, 1),
                metadata_length: u64_at(b, 5),
            }),
            tag::ARRAY_CHUNK => Header::ArrayChunk(ArrayChunk {
                values: CsrDType::from_code("values", b[1])?,
                frames: u32_at(b, 2),
                nnz: u32_at(b, 6),
                indices_offset: u32_at(b, 10),
                values_offset: u32_at(b, 14),
            }),
            tag::SCAN_END => Header::ScanEnd(u32_at(b, 1)),
            tag::ACQUISITION_END => Header::AcquisitionEnd(u32_at(b, 1)),
            other => {
                return Err(WireError::Tag {
                    tag: other,
                    head: b.iter().map(|x| format!("{x:02x}")).collect(),
                });
            }
        })
    }

    /// The 32 bytes of this header (reserved bytes zero), for simulators and tests.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        match *self {
            Header::AcquisitionStart(a) => {
                b[0] = tag::ACQUISITION_START;
                b[1] = a.version;
                b[2] = match a.format_type {
                    FormatType::Csr => 0,
                    FormatType::Tot => 1,
                };
                b[3..5].copy_from_slice(&a.nav_shape.0.to_le_bytes());
                b[5..7].copy_from_slice(&a.nav_shape.1.to_le_bytes());
                b[7] = a.indptr.code();
                b[8..10].copy_from_slice(&a.sig_shape.0.to_le_bytes());
                b[10..12].copy_from_slice(&a.sig_shape.1.to_le_bytes());
                b[12] = a.indices.code();
                b[13..17].copy_from_slice(&a.sequence.to_le_bytes());
            }
            Header::ScanStart(s) => {
                b[0] = tag::SCAN_START;
                b[1..5].copy_from_slice(&s.sequence.to_le_bytes());
                b[5..13].copy_from_slice(&s.metadata_length.to_le_bytes());
            }
            Header::ArrayChunk(c) => {
                b[0] = tag::ARRAY_CHUNK;
                b[1] = c.values.code();
                b[2..6].copy_from_slice(&c.frames.to_le_bytes());
                b[6..10].copy_from_slice(&c.nnz.to_le_bytes());
                b[10..14].copy_from_slice(&c.indices_offset.to_le_bytes());
                b[14..18].copy_from_slice(&c.values_offset.to_le_bytes());
            }
            Header::ScanEnd(s) => {
                b[0] = tag::SCAN_END;
                b[1..5].copy_from_slice(&s.to_le_bytes());
            }
            Header::AcquisitionEnd(s) => {
                b[0] = tag::ACQUISITION_END;
                b[1..5].copy_from_slice(&s.to_le_bytes());
            }
        }
        b
    }
}

/// One `ArrayChunk` message (header and payload) of `frames` rows given as `(indices,
/// values)` per row, in the acquisition's `format` dtypes, values as `values`, with
/// `pad` bytes between the arrays (§3.4 allows padding). For simulators and tests.
///
/// # Errors
/// [`WireError::DType`] when an index or value does not fit its dtype.
pub fn array_chunk(
    format: &CsrFormat,
    values: CsrDType,
    rows: &[(&[u32], &[u32])],
    pad: usize,
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    let put = |out: &mut Vec<u8>, v: u64, dt: CsrDType| {
        out.extend_from_slice(&v.to_le_bytes()[..dt.size()]);
    };
    let nnz: usize = rows.iter().map(|r| r.0.len()).sum();
    let too_big = |array: &'static str, v: u64, dt: CsrDType| {
        (v > dt.max())
            .then_some(WireError::DType(CsrError::Value { entry: 0, value: v }))
            .map(|e| (array, e))
    };
    if let Some((_, e)) = too_big("indptr", nnz as u64, format.indptr) {
        return Err(e);
    }
    let header_at = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    let base = out.len();
    let mut at = 0u64;
    put(out, 0, format.indptr);
    for (idx, _) in rows {
        at += idx.len() as u64;
        put(out, at, format.indptr);
    }
    out.resize(out.len() + pad, 0);
    let indices_offset = (out.len() - base) as u32;
    for (idx, _) in rows {
        for &i in *idx {
            if let Some((_, e)) = too_big("indices", u64::from(i), format.indices) {
                return Err(e);
            }
            put(out, u64::from(i), format.indices);
        }
    }
    out.resize(out.len() + pad, 0);
    let values_offset = (out.len() - base) as u32;
    for (_, val) in rows {
        for &v in *val {
            if let Some((_, e)) = too_big("values", u64::from(v), values) {
                return Err(e);
            }
            put(out, u64::from(v), values);
        }
    }
    let h = Header::ArrayChunk(ArrayChunk {
        values,
        frames: rows.len() as u32,
        nnz: nnz as u32,
        indices_offset,
        values_offset,
    });
    out[header_at..header_at + HEADER_LEN].copy_from_slice(&h.to_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(rel: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data")
            .join(rel)
    }

    #[test]
    fn the_shared_stream_starts_as_protocols_md_says() {
        let d = std::fs::read(shared("tpx3/synthetic_16x16_512.tpx")).expect("shared data");
        let h = |at: usize| {
            let mut b = [0u8; HEADER_LEN];
            b.copy_from_slice(&d[at..at + HEADER_LEN]);
            Header::parse(&b).unwrap()
        };
        let Header::AcquisitionStart(a) = h(0) else {
            panic!("AcquisitionStart first")
        };
        assert_eq!(
            (
                a.version,
                a.nav_shape,
                a.sig_shape,
                a.indptr,
                a.indices,
                a.sequence
            ),
            (7, (16, 16), (512, 512), CsrDType::U32, CsrDType::U32, 1)
        );
        assert_eq!(
            h(32),
            Header::ScanStart(ScanStart {
                sequence: 1,
                metadata_length: 0
            })
        );
        let Header::ArrayChunk(c) = h(64) else {
            panic!("then a chunk")
        };
        assert_eq!((c.frames, c.nnz, c.indices_offset), (4, 1698, 20));
        assert_eq!(c.values_offset, 20 + 1698 * 4);
        assert_eq!(c.payload_len(), 20 + 1698 * 8);
        // Every header round-trips.
        for x in [h(0), h(32), h(64)] {
            assert_eq!(Header::parse(&x.to_bytes()).unwrap(), x);
        }
    }

    #[test]
    fn bad_headers_are_named() {
        let mut b = [0u8; HEADER_LEN];
        b[0] = 9;
        assert!(
            Header::parse(&b)
                .unwrap_err()
                .to_string()
                .contains("unknown message tag 9")
        );
        b[0] = 2;
        b[1] = 1;
        assert!(
            Header::parse(&b)
                .unwrap_err()
                .to_string()
                .contains("values dtype code 1")
        );
        let zero = Header::AcquisitionStart(AcquisitionStart {
            version: 7,
            format_type: FormatType::Csr,
            nav_shape: (0, 4),
            indptr: CsrDType::U32,
            sig_shape: (512, 512),
            indices: CsrDType::U32,
            sequence: 1,
        });
        assert!(matches!(
            Header::parse(&zero.to_bytes()),
            Err(WireError::Shape { nav_rows: 0, .. })
        ));
    }

    #[test]
    fn written_chunks_read_back() {
        let format = CsrFormat {
            sig_shape: SigShape::new(4, 4),
            indptr: CsrDType::U16,
            indices: CsrDType::U8,
        };
        let mut msg = Vec::new();
        let rows: [(&[u32], &[u32]); 2] = [(&[1, 5], &[2, 3]), (&[15], &[7])];
        array_chunk(&format, CsrDType::U16, &rows, 3, &mut msg).unwrap();
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&msg[..HEADER_LEN]);
        let Header::ArrayChunk(c) = Header::parse(&h).unwrap() else {
            panic!("a chunk")
        };
        assert_eq!(c.payload_len() as usize, msg.len() - HEADER_LEN);
        let mut r = stemflow_core::csr::CsrRows::default();
        r.clear(0, format.sig_shape);
        r.push_chunk(&format, &c.chunk_ref(0, 0), &msg[HEADER_LEN..])
            .unwrap();
        assert_eq!(r.indices, vec![1, 5, 15]);
        assert_eq!(r.values, vec![2, 3, 7]);
        assert!(array_chunk(&format, CsrDType::U8, &[(&[300], &[1])], 0, &mut msg).is_err());
    }
}
