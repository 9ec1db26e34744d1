//! Sparse frames: compressed sparse rows (CSR), as an event detector sends them.
//!
//! An ASI Timepix3 (CheeTah) server does not send pixels: it sends, per scan position, the
//! electron events binned into one sparse row — the flat signal indices hit and a count per
//! index — in `ArrayChunk`s of many rows (protocols.md §3.4). Decision 0010: such data stays
//! sparse from the receiver to the UDFs.
//!
//! - [`CsrStack`]: whole chunks as received, in a pooled buffer, with their layout
//!   ([`CsrChunkRef`], [`CsrFormat`]); the sparse counterpart of [`RawStack`]. A receiver's
//!   stacks channel carries either kind as a [`Stack`].
//! - [`CsrRows`]: consecutive rows normalised to `u64` row pointers, `u32` indices and
//!   `u32` values, checked (row pointers monotonic and ending at the chunk's length, every
//!   index inside the frame); what the UDFs that take CSR read, and what a dense UDF gets
//!   densified per tile ([`CsrRows::densify_into`]).
//!
//! Values wider than `u32` are accepted on the wire (dtype code 5) but a value above
//! `u32::MAX` (4.3 G events in one pixel at one scan position) makes its chunk damaged: the
//! decoded pixels are `u32`, as LiberTEM's.

use crate::frame::{RawStack, Tile, TileData};
use crate::pool::Pooled;
use crate::{DType, SigShape};
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

/// Errors in one CSR chunk's arrays (the chunk's frames count as damaged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// A dtype code outside 0–5, or one we cannot read (U1, U4).
    #[error(
        "{array} dtype code {code} is not supported (supported: 2 = u8, 3 = u16, 4 = u32, 5 = u64; protocols.md §3.3)"
    )]
    DType {
        /// Which array (`indptr`, `indices`, `values`).
        array: &'static str,
        /// The code on the wire.
        code: u8,
    },
    /// The arrays do not fit the payload as the offsets say.
    #[error(
        "chunk of {frames} rows and {nnz} entries: {array} at bytes {start}..{end} does not fit (payload {payload} bytes, {detail})"
    )]
    Layout {
        /// Rows in the chunk.
        frames: u32,
        /// Entries (events) in the chunk.
        nnz: u32,
        /// Which array.
        array: &'static str,
        /// Where it would start, bytes into the payload.
        start: u64,
        /// Where it would end.
        end: u64,
        /// Payload length, bytes.
        payload: u64,
        /// What overlaps or exceeds what.
        detail: &'static str,
    },
    /// The row pointers are not a valid CSR `indptr`.
    #[error(
        "row pointer {index} is {value}, expected {expected} (row pointers start at 0, never decrease and end at the entry count {nnz})"
    )]
    Indptr {
        /// Position in `indptr`.
        index: usize,
        /// The value found.
        value: u64,
        /// What it should be (or at least/most be).
        expected: String,
        /// Entries in the chunk.
        nnz: u32,
    },
    /// A signal index outside the frame.
    #[error("entry {entry}: signal index {index} is outside the {sig_len}-pixel frame")]
    Index {
        /// Entry within the chunk.
        entry: usize,
        /// The flat signal index found.
        index: u64,
        /// Pixels per frame.
        sig_len: usize,
    },
    /// A value that does not fit the `u32` pixels.
    #[error("entry {entry}: value {value} exceeds the u32 pixel range")]
    Value {
        /// Entry within the chunk.
        entry: usize,
        /// The value found.
        value: u64,
    },
}

/// Element type of one CSR array on the wire (protocols.md §3.3: codes 2–5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CsrDType {
    /// 1 byte.
    U8,
    /// 2 bytes, little-endian.
    U16,
    /// 4 bytes, little-endian.
    U32,
    /// 8 bytes, little-endian.
    U64,
}

impl CsrDType {
    /// The dtype of wire code `code` (0 = U1 and 1 = U4 exist but no producer sends them;
    /// LiberTEM cannot read them either).
    ///
    /// # Errors
    /// [`CsrError::DType`] for any other code.
    pub fn from_code(array: &'static str, code: u8) -> Result<Self, CsrError> {
        match code {
            2 => Ok(Self::U8),
            3 => Ok(Self::U16),
            4 => Ok(Self::U32),
            5 => Ok(Self::U64),
            _ => Err(CsrError::DType { array, code }),
        }
    }
    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            Self::U8 => 2,
            Self::U16 => 3,
            Self::U32 => 4,
            Self::U64 => 5,
        }
    }
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::U8 => 1,
            Self::U16 => 2,
            Self::U32 => 4,
            Self::U64 => 8,
        }
    }
    /// Largest value the dtype holds.
    pub fn max(self) -> u64 {
        match self {
            Self::U8 => u8::MAX as u64,
            Self::U16 => u16::MAX as u64,
            Self::U32 => u32::MAX as u64,
            Self::U64 => u64::MAX,
        }
    }
}

impl fmt::Display for CsrDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::U8 => "u8",
            Self::U16 => "u16",
            Self::U32 => "u32",
            Self::U64 => "u64",
        })
    }
}

/// What every chunk of one acquisition shares (protocols.md §3.3, `AcquisitionStart`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CsrFormat {
    /// Frame shape, pixels.
    pub sig_shape: SigShape,
    /// Row pointer dtype.
    pub indptr: CsrDType,
    /// Signal index dtype.
    pub indices: CsrDType,
}

/// Where one chunk lies in a [`CsrStack`]'s buffer and what it holds (protocols.md §3.3,
/// `ArrayChunk`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CsrChunkRef {
    /// Byte offset of the chunk's payload in the buffer (a multiple of 8).
    pub offset: usize,
    /// Payload length, bytes.
    pub len: usize,
    /// Acquisition index of its first row.
    pub first_frame: u64,
    /// Rows (frames) in the chunk.
    pub frames: u32,
    /// Entries (events) in the chunk.
    pub nnz: u32,
    /// Byte offset of `indices` in the payload.
    pub indices_offset: u32,
    /// Byte offset of `values` in the payload.
    pub values_offset: u32,
    /// Value dtype (per chunk on the wire).
    pub values: CsrDType,
}

impl CsrChunkRef {
    /// Payload bytes a chunk of this layout takes: `values_offset + nnz × value size`.
    pub fn payload_len(&self) -> u64 {
        u64::from(self.values_offset) + u64::from(self.nnz) * self.values.size() as u64
    }

    /// Checks that the three arrays fit a payload of `self.len` bytes in order, without
    /// overlapping (padding between them is allowed, §3.4).
    ///
    /// # Errors
    /// [`CsrError::Layout`] naming the array that does not fit.
    pub fn check_layout(&self, format: &CsrFormat) -> Result<(), CsrError> {
        let payload = self.len as u64;
        let err = |array, start: u64, end: u64, detail| CsrError::Layout {
            frames: self.frames,
            nnz: self.nnz,
            array,
            start,
            end,
            payload,
            detail,
        };
        let indptr_end = (u64::from(self.frames) + 1) * format.indptr.size() as u64;
        let ind0 = u64::from(self.indices_offset);
        let ind_end = ind0 + u64::from(self.nnz) * format.indices.size() as u64;
        let val0 = u64::from(self.values_offset);
        let val_end = self.payload_len();
        if indptr_end > ind0 {
            return Err(err("indptr", 0, indptr_end, "overlaps the indices offset"));
        }
        if ind_end > val0 {
            return Err(err("indices", ind0, ind_end, "overlaps the values offset"));
        }
        if val_end != payload {
            return Err(err("values", val0, val_end, "must end the payload"));
        }
        Ok(())
    }
}

/// Whole CSR chunks of one acquisition as received, before normalising: the sparse
/// counterpart of [`RawStack`]. Chunks hold consecutive frames
/// (`first_frame..first_frame + frames`).
pub struct CsrStack {
    /// Acquisition index (0-based) of the first frame.
    pub first_frame: u64,
    /// Frames in the stack (rows of all its chunks).
    pub frames: u64,
    /// The chunks, in frame order.
    pub chunks: Vec<CsrChunkRef>,
    /// The bytes; back to its pool when the stack is dropped.
    pub buf: Pooled<Vec<u8>>,
    /// The acquisition's array dtypes and frame shape.
    pub format: Arc<CsrFormat>,
    /// When the first chunk had been read completely (the frames' arrival, for latency).
    pub first_received: Instant,
}

impl CsrStack {
    /// Frames in the stack.
    pub fn len(&self) -> usize {
        self.frames as usize
    }
    /// True when the stack holds no frames.
    pub fn is_empty(&self) -> bool {
        self.frames == 0
    }
    /// The payload of chunk `i`.
    pub fn payload(&self, i: usize) -> &[u8] {
        let c = &self.chunks[i];
        self.buf.get(c.offset..c.offset + c.len).unwrap_or(&[])
    }
}

impl fmt::Debug for CsrStack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CsrStack")
            .field("first_frame", &self.first_frame)
            .field("frames", &self.frames)
            .field("chunks", &self.chunks.len())
            .field("format", &self.format)
            .finish()
    }
}

/// What a receiver sends on an acquisition's stacks channel: dense frames still in wire
/// encoding, or sparse CSR chunks.
#[derive(Debug)]
pub enum Stack {
    /// Frames of pixels (Merlin, DECTRIS).
    Dense(RawStack),
    /// CSR chunks (ASI TPX3).
    Csr(CsrStack),
}

impl Stack {
    /// Acquisition index of the first frame.
    pub fn first_frame(&self) -> u64 {
        match self {
            Stack::Dense(s) => s.first_frame,
            Stack::Csr(s) => s.first_frame,
        }
    }
    /// Frames in the stack.
    pub fn len(&self) -> usize {
        match self {
            Stack::Dense(s) => s.len(),
            Stack::Csr(s) => s.len(),
        }
    }
    /// True when the stack holds no frames.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// When its first frame (or chunk) had been read completely.
    pub fn first_received(&self) -> Instant {
        match self {
            Stack::Dense(s) => s.first_received,
            Stack::Csr(s) => s.first_received,
        }
    }
    /// The dense stack, if it is one.
    pub fn into_dense(self) -> Option<RawStack> {
        match self {
            Stack::Dense(s) => Some(s),
            Stack::Csr(_) => None,
        }
    }
    /// The sparse stack, if it is one.
    pub fn into_csr(self) -> Option<CsrStack> {
        match self {
            Stack::Csr(s) => Some(s),
            Stack::Dense(_) => None,
        }
    }
}

impl From<RawStack> for Stack {
    fn from(s: RawStack) -> Self {
        Stack::Dense(s)
    }
}

impl From<CsrStack> for Stack {
    fn from(s: CsrStack) -> Self {
        Stack::Csr(s)
    }
}

/// Reads little-endian elements of `dt` from `bytes` (exactly `n` of them) as `u64`s into
/// `out`, calling `check(k, value)` for each.
fn read_le(bytes: &[u8], dt: CsrDType, out: &mut Vec<u64>) {
    match dt {
        CsrDType::U8 => out.extend(bytes.iter().map(|&b| u64::from(b))),
        CsrDType::U16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| u64::from(u16::from_le_bytes([c[0], c[1]]))),
        ),
        CsrDType::U32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        ),
        CsrDType::U64 => out.extend(
            bytes
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])),
        ),
    }
}

/// Appends `bytes` (little-endian elements of `dt`) to `out` as `u32`s; the index of the
/// first element above `limit` (exclusive) and its value, if any, and then nothing is
/// appended.
fn read_u32s(bytes: &[u8], dt: CsrDType, limit: u64, out: &mut Vec<u32>) -> Option<(usize, u64)> {
    let start = out.len();
    match dt {
        CsrDType::U8 => out.extend(bytes.iter().map(|&b| u32::from(b))),
        CsrDType::U16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]]))),
        ),
        CsrDType::U32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        CsrDType::U64 => {
            for (k, c) in bytes.chunks_exact(8).enumerate() {
                let v = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
                if v >= limit || v > u64::from(u32::MAX) {
                    out.truncate(start);
                    return Some((k, v));
                }
                out.push(v as u32);
            }
            return None;
        }
    }
    // One pass for the bound after the vectorised conversion: the maximum.
    let max = out[start..].iter().copied().max().map_or(0, u64::from);
    if max >= limit {
        let k = out[start..]
            .iter()
            .position(|&v| u64::from(v) >= limit)
            .unwrap_or(0);
        let v = u64::from(out[start + k]);
        out.truncate(start);
        return Some((k, v));
    }
    None
}

/// Consecutive frames as CSR rows: `indptr` (`n_frames + 1` entries from 0), flat signal
/// `indices` (`y × cols + x`, pixels) and `values` (counts). Buffers are reused from one
/// stack to the next ([`CsrRows::clear`]).
#[derive(Clone, Debug, Default)]
pub struct CsrRows {
    /// Acquisition index (0-based) of the first row.
    pub first_frame: u64,
    /// Frame shape, pixels.
    pub sig_shape: SigShape,
    /// Row `f` is entries `indptr[f]..indptr[f + 1]`; `indptr.len() == n_frames + 1`.
    pub indptr: Vec<u64>,
    /// Flat signal index of each entry, `< sig_shape.len()`.
    pub indices: Vec<u32>,
    /// Count of each entry.
    pub values: Vec<u32>,
    /// Scratch for one chunk's row pointers.
    scratch: Vec<u64>,
}

impl Default for SigShape {
    fn default() -> Self {
        SigShape::new(0, 0)
    }
}

impl CsrRows {
    /// Empty rows starting at frame `first_frame` of `sig_shape`, keeping the allocations.
    pub fn clear(&mut self, first_frame: u64, sig_shape: SigShape) {
        self.first_frame = first_frame;
        self.sig_shape = sig_shape;
        self.indptr.clear();
        self.indptr.push(0);
        self.indices.clear();
        self.values.clear();
    }

    /// Rows held.
    pub fn n_frames(&self) -> usize {
        self.indptr.len().saturating_sub(1)
    }

    /// Entries (events) held.
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }

    /// Indices and values of row `f` (`0 <= f < n_frames()`).
    pub fn row(&self, f: usize) -> (&[u32], &[u32]) {
        let (a, b) = (self.indptr[f] as usize, self.indptr[f + 1] as usize);
        (&self.indices[a..b], &self.values[a..b])
    }

    /// Appends `n` rows without entries (frames that are damaged or lost: they count in the
    /// frame range but add nothing).
    pub fn push_empty(&mut self, n: usize) {
        let last = self.indptr.last().copied().unwrap_or(0);
        self.indptr.extend(std::iter::repeat_n(last, n));
    }

    /// Appends rows `rows` of `other` (same frame shape).
    pub fn extend_rows(&mut self, other: &CsrRows, rows: std::ops::Range<usize>) {
        let (a, b) = (
            other.indptr[rows.start] as usize,
            other.indptr[rows.end] as usize,
        );
        let base = self.indices.len() as u64;
        self.indices.extend_from_slice(&other.indices[a..b]);
        self.values.extend_from_slice(&other.values[a..b]);
        self.indptr.extend(
            other.indptr[rows.start + 1..=rows.end]
                .iter()
                .map(|&p| base + p - a as u64),
        );
    }

    /// Appends the rows of one chunk's `payload` laid out as `chunk` says, checking it
    /// whole first: on an error nothing is appended.
    ///
    /// # Errors
    /// [`CsrError`] naming the first violation: the arrays do not fit the payload, the row
    /// pointers are not monotonic from 0 to `nnz`, an index lies outside the frame, or a
    /// `u64` value exceeds `u32`.
    pub fn push_chunk(
        &mut self,
        format: &CsrFormat,
        chunk: &CsrChunkRef,
        payload: &[u8],
    ) -> Result<(), CsrError> {
        let c = CsrChunkRef {
            len: payload.len(),
            ..*chunk
        };
        c.check_layout(format)?;
        let rows = c.frames as usize;
        let nnz = c.nnz as usize;
        let ptr_bytes = &payload[..(rows + 1) * format.indptr.size()];
        let mut ptr = std::mem::take(&mut self.scratch);
        ptr.clear();
        read_le(ptr_bytes, format.indptr, &mut ptr);
        let result = self.push_checked(format, &c, payload, &ptr, rows, nnz);
        self.scratch = ptr;
        result
    }

    fn push_checked(
        &mut self,
        format: &CsrFormat,
        c: &CsrChunkRef,
        payload: &[u8],
        ptr: &[u64],
        rows: usize,
        nnz: usize,
    ) -> Result<(), CsrError> {
        if ptr[0] != 0 {
            return Err(CsrError::Indptr {
                index: 0,
                value: ptr[0],
                expected: "0".into(),
                nnz: c.nnz,
            });
        }
        for i in 1..=rows {
            if ptr[i] < ptr[i - 1] || ptr[i] > nnz as u64 {
                return Err(CsrError::Indptr {
                    index: i,
                    value: ptr[i],
                    expected: format!("{}..={nnz}", ptr[i - 1]),
                    nnz: c.nnz,
                });
            }
        }
        if ptr[rows] != nnz as u64 {
            return Err(CsrError::Indptr {
                index: rows,
                value: ptr[rows],
                expected: nnz.to_string(),
                nnz: c.nnz,
            });
        }
        let sig_len = format.sig_shape.len();
        let ind0 = c.indices_offset as usize;
        let ind = &payload[ind0..ind0 + nnz * format.indices.size()];
        let val0 = c.values_offset as usize;
        let val = &payload[val0..val0 + nnz * c.values.size()];
        let base_entries = self.indices.len();
        if let Some((entry, index)) =
            read_u32s(ind, format.indices, sig_len as u64, &mut self.indices)
        {
            return Err(CsrError::Index {
                entry,
                index,
                sig_len,
            });
        }
        if let Some((entry, value)) = read_u32s(val, c.values, u64::MAX, &mut self.values) {
            self.indices.truncate(base_entries);
            return Err(CsrError::Value { entry, value });
        }
        let base = base_entries as u64;
        self.indptr.extend(ptr[1..].iter().map(|&p| base + p));
        Ok(())
    }

    /// Appends frame `pixels` (one frame of `sig_shape`, any integer dtype) as a row:
    /// its nonzero pixels in index order. For offline data and tests.
    ///
    /// # Panics
    /// Never on data; a value above `u32::MAX` saturates.
    pub fn push_dense(&mut self, pixels: crate::frame::PixelsRef<'_>) {
        for i in 0..pixels.len() {
            let v = pixels.get_f64(i);
            if v != 0.0 {
                self.indices.push(i as u32);
                self.values.push(v.min(u32::MAX as f64) as u32);
            }
        }
        self.indptr.push(self.indices.len() as u64);
    }

    /// Writes rows `rows` as dense `u32` frames into `tile` (resized, its allocation kept
    /// when it holds `u32`): zeroes the pixels, then adds each entry (a repeated index adds
    /// up, as a sum over the events would).
    pub fn densify_into(&self, rows: std::ops::Range<usize>, tile: &mut Tile) {
        let n = self.sig_shape.len();
        let frames = rows.len();
        if tile.data.dtype() != DType::U32 {
            tile.data = TileData::zeros(DType::U32, 0);
        }
        tile.data.resize(frames * n);
        tile.first_frame = self.first_frame + rows.start as u64;
        tile.n_frames = frames;
        tile.sig_shape = self.sig_shape;
        let TileData::U32(px) = &mut tile.data else {
            return;
        };
        px.fill(0);
        for (f, r) in rows.enumerate() {
            let (idx, val) = self.row(r);
            let frame = &mut px[f * n..(f + 1) * n];
            for (&i, &v) in idx.iter().zip(val) {
                frame[i as usize] = frame[i as usize].wrapping_add(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk_bytes(
        indptr: &[u64],
        ip: CsrDType,
        indices: &[u64],
        id: CsrDType,
        values: &[u64],
        vd: CsrDType,
        pad: usize,
    ) -> (Vec<u8>, CsrChunkRef) {
        fn put(out: &mut Vec<u8>, v: u64, dt: CsrDType) {
            out.extend_from_slice(&v.to_le_bytes()[..dt.size()]);
        }
        let mut b = Vec::new();
        indptr.iter().for_each(|&v| put(&mut b, v, ip));
        b.resize(b.len() + pad, 0xAA);
        let io = b.len() as u32;
        indices.iter().for_each(|&v| put(&mut b, v, id));
        b.resize(b.len() + pad, 0xAA);
        let vo = b.len() as u32;
        values.iter().for_each(|&v| put(&mut b, v, vd));
        let r = CsrChunkRef {
            offset: 0,
            len: b.len(),
            first_frame: 0,
            frames: (indptr.len() - 1) as u32,
            nnz: indices.len() as u32,
            indices_offset: io,
            values_offset: vo,
            values: vd,
        };
        (b, r)
    }

    fn fmt(ip: CsrDType, id: CsrDType) -> CsrFormat {
        CsrFormat {
            sig_shape: SigShape::new(4, 4),
            indptr: ip,
            indices: id,
        }
    }

    #[test]
    fn every_dtype_and_padding_reads_the_same_rows() {
        use CsrDType::*;
        let mut want = None;
        for (ip, id, vd, pad) in [
            (U32, U32, U32, 0),
            (U8, U16, U8, 3),
            (U64, U64, U64, 5),
            (U16, U8, U16, 1),
        ] {
            let (b, r) = chunk_bytes(&[0, 2, 2, 3], ip, &[1, 15, 4], id, &[5, 1, 250], vd, pad);
            let mut rows = CsrRows::default();
            rows.clear(7, SigShape::new(4, 4));
            rows.push_chunk(&fmt(ip, id), &r, &b).unwrap();
            assert_eq!(rows.n_frames(), 3);
            assert_eq!(rows.row(0), (&[1u32, 15][..], &[5u32, 1][..]));
            assert_eq!(rows.row(1).0.len(), 0);
            let mut t = Tile::zeros(0, 0, SigShape::new(1, 1), DType::U16);
            rows.densify_into(0..3, &mut t);
            assert_eq!(t.first_frame, 7);
            let TileData::U32(px) = &t.data else {
                panic!("u32 tile")
            };
            assert_eq!((px[1], px[15], px[16 * 2 + 4]), (5, 1, 250));
            assert_eq!(px.iter().map(|&v| u64::from(v)).sum::<u64>(), 256);
            match &want {
                None => want = Some(rows.clone()),
                Some(w) => assert_eq!(
                    (&w.indptr, &w.indices, &w.values),
                    (&rows.indptr, &rows.indices, &rows.values)
                ),
            }
        }
    }

    #[test]
    fn bad_chunks_are_refused_whole_and_name_the_fault() {
        use CsrDType::*;
        let f = fmt(U32, U32);
        let mut rows = CsrRows::default();
        rows.clear(0, SigShape::new(4, 4));
        let (good, gr) = chunk_bytes(&[0, 1], U32, &[3], U32, &[1], U32, 0);
        rows.push_chunk(&f, &gr, &good).unwrap();
        let cases: Vec<(Vec<u8>, CsrChunkRef, &str)> = vec![
            {
                let (b, r) = chunk_bytes(&[0, 2, 1], U32, &[3, 4], U32, &[1, 1], U32, 0);
                (b, r, "row pointer 2 is 1")
            },
            {
                let (b, r) = chunk_bytes(&[1, 2], U32, &[3, 4], U32, &[1, 1], U32, 0);
                (b, r, "row pointer 0 is 1")
            },
            {
                let (b, r) = chunk_bytes(&[0, 1], U32, &[16], U32, &[1], U32, 0);
                (b, r, "signal index 16 is outside the 16-pixel frame")
            },
            {
                let (b, r) = chunk_bytes(&[0, 1], U32, &[2], U32, &[1 << 40], U64, 0);
                (b, r, "exceeds the u32 pixel range")
            },
            {
                let (b, mut r) = chunk_bytes(&[0, 1], U32, &[2], U32, &[1], U32, 0);
                r.indices_offset = 4;
                (b, r, "indptr at bytes 0..8")
            },
            {
                let (mut b, r) = chunk_bytes(&[0, 1], U32, &[2], U32, &[1], U32, 0);
                b.pop();
                (b, r, "values")
            },
        ];
        for (b, r, what) in cases {
            let e = rows.push_chunk(&f, &r, &b).unwrap_err().to_string();
            assert!(e.contains(what), "{e} should contain {what}");
            assert_eq!(rows.n_frames(), 1, "nothing appended after: {e}");
            assert_eq!(rows.nnz(), 1);
        }
        assert_eq!(
            CsrDType::from_code("values", 1).unwrap_err().to_string(),
            "values dtype code 1 is not supported (supported: 2 = u8, 3 = u16, 4 = u32, 5 = u64; protocols.md §3.3)"
        );
        rows.push_empty(2);
        assert_eq!(rows.indptr, vec![0, 1, 1, 1]);
    }
}
