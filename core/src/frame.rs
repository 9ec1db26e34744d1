//! Frames on the data path: raw stacks as received, decoded tiles as processed.
//!
//! A receiver reads the detector's bytes into a [`RawStack`] (a pooled byte buffer holding
//! several consecutive frames, still in wire encoding). Processing workers decode each raw
//! frame with the stack's [`FrameDecoder`] straight into a [`Tile`] (consecutive frames in
//! native byte order) and run the UDFs on it. Neither ever travels through an actor mailbox.

use crate::pool::Pooled;
use crate::{DType, SigShape};
use std::fmt;
use std::sync::Arc;

/// Errors decoding one frame's payload.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The payload length does not match what the frame header announced.
    #[error("{device}: frame payload is {observed} bytes, expected {expected} bytes")]
    PayloadSize {
        /// The device whose frame this is (e.g. `merlin`).
        device: String,
        /// Bytes expected from the header (pixels × bytes per pixel, or packed size).
        expected: usize,
        /// Bytes received.
        observed: usize,
    },
    /// The output buffer has the wrong element type or length.
    #[error(
        "decode target is {observed_dtype} × {observed_len}, expected {expected_dtype} × {expected_len}"
    )]
    Target {
        /// Element type the decoder produces.
        expected_dtype: DType,
        /// Pixels the decoder produces.
        expected_len: usize,
        /// Element type of the given buffer.
        observed_dtype: DType,
        /// Pixels in the given buffer.
        observed_len: usize,
    },
    /// The payload is malformed (bad compression stream, unknown layout, …).
    #[error("{device}: malformed frame payload: {detail}")]
    Malformed {
        /// The device whose frame this is.
        device: String,
        /// What was wrong, with the numbers that matter.
        detail: String,
    },
}

/// A mutable view of one decoded frame's pixels (row-major, `sig_shape.len()` elements).
#[derive(Debug)]
pub enum PixelsMut<'a> {
    /// 8-bit pixels.
    U8(&'a mut [u8]),
    /// 16-bit pixels.
    U16(&'a mut [u16]),
    /// 32-bit pixels.
    U32(&'a mut [u32]),
    /// 64-bit pixels.
    U64(&'a mut [u64]),
    /// 32-bit float pixels (offline data only: no detector sends floats).
    F32(&'a mut [f32]),
    /// 64-bit float pixels (offline data only).
    F64(&'a mut [f64]),
}

impl PixelsMut<'_> {
    /// Element type of the view.
    pub fn dtype(&self) -> DType {
        match self {
            PixelsMut::U8(_) => DType::U8,
            PixelsMut::U16(_) => DType::U16,
            PixelsMut::U32(_) => DType::U32,
            PixelsMut::U64(_) => DType::U64,
            PixelsMut::F32(_) => DType::F32,
            PixelsMut::F64(_) => DType::F64,
        }
    }
    /// Number of pixels in the view.
    pub fn len(&self) -> usize {
        match self {
            PixelsMut::U8(s) => s.len(),
            PixelsMut::U16(s) => s.len(),
            PixelsMut::U32(s) => s.len(),
            PixelsMut::U64(s) => s.len(),
            PixelsMut::F32(s) => s.len(),
            PixelsMut::F64(s) => s.len(),
        }
    }
    /// True for an empty view.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Turns one frame's payload, as received (wire byte order, packed, compressed, …), into
/// native pixels. One decoder describes one acquisition: every frame in it has the same
/// signal shape and output dtype. Implemented per detector protocol (Merlin MQ1: big-endian
/// and raw R64; DECTRIS: bitshuffle-LZ4); called from processing workers in parallel.
pub trait FrameDecoder: Send + Sync + fmt::Debug {
    /// Decoded frame shape in pixels.
    fn sig_shape(&self) -> SigShape;
    /// Decoded element type.
    fn dtype(&self) -> DType;
    /// Decodes `payload` (one frame's pixel bytes, without wire framing or frame header)
    /// into `out`, which holds exactly `sig_shape().len()` elements of `dtype()`.
    ///
    /// # Errors
    /// [`DecodeError::PayloadSize`] when the payload has the wrong length,
    /// [`DecodeError::Target`] when `out` does not fit, [`DecodeError::Malformed`] otherwise.
    fn decode_into(&self, payload: &[u8], out: PixelsMut<'_>) -> Result<(), DecodeError>;

    /// When every payload is, as it stands, one frame's chunk of an HDF5 filter (DECTRIS
    /// bitshuffle-LZ4 blobs are chunks of filter 32008, protocols.md §2.5): that filter's
    /// id, so a recorder using the same filter can store the payload without decoding and
    /// re-encoding it. `None` (the default): payloads must be decoded.
    fn hdf5_chunk_filter(&self) -> Option<u32> {
        None
    }
}

/// Where one raw frame lies in a [`RawStack`]'s buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawFrameRef {
    /// Byte offset of the frame's pixel payload in the stack buffer.
    pub offset: usize,
    /// Payload length in bytes.
    pub len: usize,
}

/// Several consecutive frames of one acquisition as received, before decoding.
///
/// Frames are consecutive by construction: a receiver that sees a gap (lost frames) closes
/// the stack and starts a new one at the next received frame, and reports the gap in the
/// validity map.
pub struct RawStack {
    /// Acquisition index (0-based) of the first frame in the stack.
    pub first_frame: u64,
    /// Payload location of each frame, in order.
    pub frames: Vec<RawFrameRef>,
    /// The bytes; returned to its pool when the stack is dropped.
    pub buf: Pooled<Vec<u8>>,
    /// The decoder for this acquisition's frames.
    pub decoder: Arc<dyn FrameDecoder>,
    /// When the stack's first frame had been read completely: the frames' arrival for
    /// latency figures (later frames of the stack arrived after it).
    pub first_received: std::time::Instant,
}

impl RawStack {
    /// Number of frames in the stack.
    pub fn len(&self) -> usize {
        self.frames.len()
    }
    /// True when the stack holds no frames.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
    /// The payload bytes of frame `i` of the stack (`0 <= i < len()`).
    pub fn payload(&self, i: usize) -> &[u8] {
        let r = self.frames[i];
        &self.buf[r.offset..r.offset + r.len]
    }
}

impl fmt::Debug for RawStack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawStack")
            .field("first_frame", &self.first_frame)
            .field("frames", &self.frames.len())
            .field("decoder", &self.decoder)
            .finish()
    }
}

/// `v.resize(len, 0)`; a new allocation of [`crate::mem::HUGE_PAGE_MIN_BYTES`] or more is
/// first advised to use huge pages (before its pages are touched), so the UDFs streaming
/// through tiles take far fewer TLB misses.
fn grow_zeroed<T: Copy + Default>(v: &mut Vec<T>, len: usize) {
    if len > v.capacity() {
        v.reserve_exact(len - v.len());
        crate::mem::advise_huge_pages(v.as_ptr().cast(), v.capacity() * std::mem::size_of::<T>());
    }
    v.resize(len, T::default());
}

/// Decoded pixels of a tile: `n_frames * sig_len` elements, frame-major, native byte order.
#[derive(Clone, Debug, PartialEq)]
pub enum TileData {
    /// 8-bit pixels.
    U8(Vec<u8>),
    /// 16-bit pixels.
    U16(Vec<u16>),
    /// 32-bit pixels.
    U32(Vec<u32>),
    /// 64-bit pixels.
    U64(Vec<u64>),
    /// 32-bit float pixels (offline data only: no detector sends floats).
    F32(Vec<f32>),
    /// 64-bit float pixels (offline data only).
    F64(Vec<f64>),
}

impl TileData {
    /// An all-zero buffer of `len` elements of `dtype`.
    pub fn zeros(dtype: DType, len: usize) -> Self {
        let mut d = match dtype {
            DType::U8 => TileData::U8(Vec::new()),
            DType::U16 => TileData::U16(Vec::new()),
            DType::U32 => TileData::U32(Vec::new()),
            DType::U64 => TileData::U64(Vec::new()),
            DType::F32 => TileData::F32(Vec::new()),
            DType::F64 => TileData::F64(Vec::new()),
        };
        d.resize(len);
        d
    }
    /// Element type.
    pub fn dtype(&self) -> DType {
        match self {
            TileData::U8(_) => DType::U8,
            TileData::U16(_) => DType::U16,
            TileData::U32(_) => DType::U32,
            TileData::U64(_) => DType::U64,
            TileData::F32(_) => DType::F32,
            TileData::F64(_) => DType::F64,
        }
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TileData::U8(v) => v.len(),
            TileData::U16(v) => v.len(),
            TileData::U32(v) => v.len(),
            TileData::U64(v) => v.len(),
            TileData::F32(v) => v.len(),
            TileData::F64(v) => v.len(),
        }
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Grows or shrinks to `len` elements (new elements are 0), keeping the allocation
    /// when it is large enough.
    pub fn resize(&mut self, len: usize) {
        match self {
            TileData::U8(v) => grow_zeroed(v, len),
            TileData::U16(v) => grow_zeroed(v, len),
            TileData::U32(v) => grow_zeroed(v, len),
            TileData::U64(v) => grow_zeroed(v, len),
            TileData::F32(v) => grow_zeroed(v, len),
            TileData::F64(v) => grow_zeroed(v, len),
        }
    }
    /// Mutable view of elements `range` (e.g. one frame).
    pub fn pixels_mut(&mut self, range: std::ops::Range<usize>) -> PixelsMut<'_> {
        match self {
            TileData::U8(v) => PixelsMut::U8(&mut v[range]),
            TileData::U16(v) => PixelsMut::U16(&mut v[range]),
            TileData::U32(v) => PixelsMut::U32(&mut v[range]),
            TileData::U64(v) => PixelsMut::U64(&mut v[range]),
            TileData::F32(v) => PixelsMut::F32(&mut v[range]),
            TileData::F64(v) => PixelsMut::F64(&mut v[range]),
        }
    }
    /// Shared view of all elements.
    pub fn view(&self) -> PixelsRef<'_> {
        match self {
            TileData::U8(v) => PixelsRef::U8(v),
            TileData::U16(v) => PixelsRef::U16(v),
            TileData::U32(v) => PixelsRef::U32(v),
            TileData::U64(v) => PixelsRef::U64(v),
            TileData::F32(v) => PixelsRef::F32(v),
            TileData::F64(v) => PixelsRef::F64(v),
        }
    }
}

/// A shared view of decoded pixels (a frame or a whole tile).
#[derive(Clone, Copy, Debug)]
pub enum PixelsRef<'a> {
    /// 8-bit pixels.
    U8(&'a [u8]),
    /// 16-bit pixels.
    U16(&'a [u16]),
    /// 32-bit pixels.
    U32(&'a [u32]),
    /// 64-bit pixels.
    U64(&'a [u64]),
    /// 32-bit float pixels (offline data only: no detector sends floats).
    F32(&'a [f32]),
    /// 64-bit float pixels (offline data only).
    F64(&'a [f64]),
}

impl<'a> PixelsRef<'a> {
    /// Element type.
    pub fn dtype(&self) -> DType {
        match self {
            PixelsRef::U8(_) => DType::U8,
            PixelsRef::U16(_) => DType::U16,
            PixelsRef::U32(_) => DType::U32,
            PixelsRef::U64(_) => DType::U64,
            PixelsRef::F32(_) => DType::F32,
            PixelsRef::F64(_) => DType::F64,
        }
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            PixelsRef::U8(s) => s.len(),
            PixelsRef::U16(s) => s.len(),
            PixelsRef::U32(s) => s.len(),
            PixelsRef::U64(s) => s.len(),
            PixelsRef::F32(s) => s.len(),
            PixelsRef::F64(s) => s.len(),
        }
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Sub-view of elements `range`.
    pub fn slice(&self, range: std::ops::Range<usize>) -> PixelsRef<'a> {
        match *self {
            PixelsRef::U8(s) => PixelsRef::U8(&s[range]),
            PixelsRef::U16(s) => PixelsRef::U16(&s[range]),
            PixelsRef::U32(s) => PixelsRef::U32(&s[range]),
            PixelsRef::U64(s) => PixelsRef::U64(&s[range]),
            PixelsRef::F32(s) => PixelsRef::F32(&s[range]),
            PixelsRef::F64(s) => PixelsRef::F64(&s[range]),
        }
    }
    /// Element `i` widened to `f64` (slow path: tests and references only).
    pub fn get_f64(&self, i: usize) -> f64 {
        match self {
            PixelsRef::U8(s) => s[i] as f64,
            PixelsRef::U16(s) => s[i] as f64,
            PixelsRef::U32(s) => s[i] as f64,
            PixelsRef::U64(s) => s[i] as f64,
            PixelsRef::F32(s) => s[i] as f64,
            PixelsRef::F64(s) => s[i],
        }
    }
}

/// Consecutive decoded frames of one acquisition: the unit UDFs process.
#[derive(Clone, Debug, PartialEq)]
pub struct Tile {
    /// Acquisition index (0-based) of the first frame.
    pub first_frame: u64,
    /// Number of frames in the tile.
    pub n_frames: usize,
    /// Shape of each frame.
    pub sig_shape: SigShape,
    /// `n_frames * sig_shape.len()` pixels, frame-major.
    pub data: TileData,
}

impl Tile {
    /// An all-zero tile.
    pub fn zeros(first_frame: u64, n_frames: usize, sig_shape: SigShape, dtype: DType) -> Self {
        Self {
            first_frame,
            n_frames,
            sig_shape,
            data: TileData::zeros(dtype, n_frames * sig_shape.len()),
        }
    }
    /// Pixels of frame `i` of the tile (`0 <= i < n_frames`).
    pub fn frame(&self, i: usize) -> PixelsRef<'_> {
        let n = self.sig_shape.len();
        self.data.view().slice(i * n..(i + 1) * n)
    }
    /// Decodes every frame of `raw` into this tile, reusing its allocation.
    ///
    /// # Errors
    /// The first [`DecodeError`] of any frame; frames before it are decoded.
    pub fn decode_from(&mut self, raw: &RawStack) -> Result<(), DecodeError> {
        let dec = &raw.decoder;
        let sig = dec.sig_shape();
        let n = sig.len();
        if self.data.dtype() != dec.dtype() {
            self.data = TileData::zeros(dec.dtype(), raw.len() * n);
        } else {
            self.data.resize(raw.len() * n);
        }
        self.first_frame = raw.first_frame;
        self.n_frames = raw.len();
        self.sig_shape = sig;
        for i in 0..raw.len() {
            dec.decode_into(raw.payload(i), self.data.pixels_mut(i * n..(i + 1) * n))?;
        }
        Ok(())
    }
}
