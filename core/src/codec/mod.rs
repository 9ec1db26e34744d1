//! DECTRIS frame codecs: bitshuffle + LZ4 (`bs8-lz4<`, `bs16-lz4<`, `bs32-lz4<`), plain LZ4
//! (`lz4<`) and uncompressed (`<`) — the stream v1 `encoding` strings of protocols.md §2.4
//! with the byte layout of §2.5 (also the HDF5 bitshuffle filter 32008's chunk format, so
//! the DECTRIS master-file reader (`stemflow_drivers::dectris::master`) decodes raw HDF5 chunks with the same code).
//!
//! Everything here is our own code: the LZ4 block codec ([`lz4`]) and the bit transpose
//! ([`shuffle`]: scalar, SSE2 and AVX2 kernels chosen at run time). Decoding allocates
//! nothing per frame: each thread keeps one scratch block buffer that grows to the largest
//! block seen. Malformed input is an error naming what was expected and observed, never a
//! panic and never an out-of-bounds access.

pub mod bench;
pub mod lz4;
pub mod shuffle;

use crate::frame::PixelsMut;
use std::cell::RefCell;

pub use lz4::Lz4Error;
pub use shuffle::Kernel;

/// Bytes of the bitshuffle header: u64 BE uncompressed size, u32 BE block size (§2.5).
pub const BSLZ4_HEADER_LEN: usize = 12;

/// Target block size of the bitshuffle library's default, bytes (§2.5).
const DEFAULT_BLOCK_BYTES: usize = 8192;

/// How a frame blob is compressed (protocols.md §2.4 `encoding`, §2.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Raw little-endian pixels (`<`).
    None,
    /// One raw LZ4 block holding the whole frame (stream v1 `lz4<`, §2.5 last paragraph;
    /// not the HDF5 LZ4 filter's framing).
    Lz4,
    /// Bitshuffle + LZ4 with the 12-byte header and per-block length prefixes (`bsN-lz4<`,
    /// HDF5 filter 32008 with LZ4; §2.5).
    BitshuffleLz4,
    /// LZ4 in the HDF5 LZ4 filter's framing (filter 32004: 12-byte header, length-prefixed
    /// blocks), as stream v2 sends `lz4` (§2.5 last paragraph, §2.6).
    Lz4Hdf5,
}

/// A frame encoding: compression and element size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Encoding {
    /// The compression.
    pub compression: Compression,
    /// Bytes per element for the bit transpose: 1, 2 or 4 (`bs8`/`bs16`/`bs32`). For
    /// `lz4<` and `<` the string does not say; [`Encoding::parse`] gives 0 there and
    /// decoding does not use it (the pixel type comes from `dimage_d`'s `type`, §2.4).
    pub elem_size: usize,
}

/// Codec errors. Byte positions (`at`) count from the start of the blob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// An encoding we cannot decode.
    #[error("codec `{0}` not supported")]
    Unsupported(String),
    /// An `encoding` string that does not follow `[bs<BITS>][[-]lz4][<|>]` or that names
    /// something we do not decode (§2.4).
    #[error("encoding `{encoding}`: {reason}")]
    BadEncoding {
        /// The string received.
        encoding: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The element size is not one bitshuffle-LZ4 decoding supports here (1, 2, 4 or 8).
    #[error("bitshuffle element size {elem_size} bytes not supported (1, 2, 4 or 8)")]
    ElemSize {
        /// Bytes per element asked for.
        elem_size: usize,
    },
    /// The output buffer is not a whole number of elements.
    #[error("output buffer of {len} bytes is not a whole number of {elem_size}-byte elements")]
    OutputLen {
        /// Output bytes.
        len: usize,
        /// Bytes per element.
        elem_size: usize,
    },
    /// An uncompressed blob whose length is not the frame size.
    #[error("uncompressed blob is {observed} bytes, expected {expected} (the frame size)")]
    RawSize {
        /// Frame bytes.
        expected: usize,
        /// Blob bytes.
        observed: usize,
    },
    /// A bitshuffle blob shorter than its 12-byte header.
    #[error("bitshuffle blob is {observed} bytes, shorter than the 12-byte header")]
    Header {
        /// Blob bytes.
        observed: usize,
    },
    /// The header's uncompressed size disagrees with the frame size.
    #[error("bitshuffle header announces {header} uncompressed bytes, the frame has {expected}")]
    TotalSize {
        /// Bytes in the header.
        header: u64,
        /// Frame bytes (shape × type).
        expected: usize,
    },
    /// The header's block size is not a positive multiple of 8 elements.
    #[error(
        "bitshuffle header block size {bytes} bytes is not a multiple of 8 elements of {elem_size} bytes"
    )]
    BlockSize {
        /// Block size in the header, bytes.
        bytes: u32,
        /// Bytes per element.
        elem_size: usize,
    },
    /// A block's length prefix or data lies past the end of the blob.
    #[error(
        "bitshuffle block {block} at byte {at} needs {needed} bytes, the blob has {available} left"
    )]
    BlockTruncated {
        /// Block index (0-based).
        block: usize,
        /// Position of the block's length prefix or data.
        at: usize,
        /// Bytes needed.
        needed: usize,
        /// Bytes left in the blob.
        available: usize,
    },
    /// A block's LZ4 data does not decode to exactly one block.
    #[error("bitshuffle block {block} (LZ4 data at byte {at}, {len} bytes): {source}")]
    BlockLz4 {
        /// Block index (0-based).
        block: usize,
        /// Position of the block's LZ4 data.
        at: usize,
        /// Length of the block's LZ4 data.
        len: usize,
        /// The LZ4 decoder's complaint.
        #[source]
        source: Lz4Error,
    },
    /// A plain LZ4 blob does not decode to exactly one frame.
    #[error("LZ4 frame blob of {len} bytes: {source}")]
    Lz4 {
        /// Blob bytes.
        len: usize,
        /// The LZ4 decoder's complaint.
        #[source]
        source: Lz4Error,
    },
    /// The bytes after the last block are not the `(N mod 8) · elem_size` raw leftover bytes.
    #[error(
        "bitshuffle blob has {observed} bytes after its last block at byte {at}, expected {expected} raw leftover bytes"
    )]
    Leftover {
        /// Position after the last block.
        at: usize,
        /// Leftover bytes expected, `(N mod 8) · elem_size`.
        expected: usize,
        /// Bytes present.
        observed: usize,
    },
}

impl Encoding {
    /// Bitshuffle + LZ4 on `elem_size`-byte elements (`bs8/16/32-lz4<`, HDF5 filter 32008).
    pub const fn bslz4(elem_size: usize) -> Self {
        Self {
            compression: Compression::BitshuffleLz4,
            elem_size,
        }
    }

    /// One raw LZ4 block (`lz4<`) of `elem_size`-byte pixels.
    pub const fn lz4(elem_size: usize) -> Self {
        Self {
            compression: Compression::Lz4,
            elem_size,
        }
    }

    /// Uncompressed little-endian `elem_size`-byte pixels (`<`).
    pub const fn raw(elem_size: usize) -> Self {
        Self {
            compression: Compression::None,
            elem_size,
        }
    }

    /// Parses a stream v1 `encoding` string (§2.4): `bs8-lz4<`, `bs16-lz4<`, `bs32-lz4<`
    /// (the `-` and the trailing `<` are optional), `lz4<`, `<` (or empty). The element size
    /// is 0 for `lz4<` and `<` (see [`Encoding::elem_size`]).
    ///
    /// # Errors
    /// [`CodecError::BadEncoding`] for anything else, including big-endian `>` (no DECTRIS
    /// detector sends it) and bitshuffle without LZ4.
    pub fn parse(s: &str) -> Result<Self, CodecError> {
        let bad = |reason| CodecError::BadEncoding {
            encoding: s.to_string(),
            reason,
        };
        let mut rest = s.trim();
        if let Some(r) = rest.strip_suffix('>') {
            let _ = r;
            return Err(bad("big-endian (`>`) pixels are not supported"));
        }
        rest = rest.strip_suffix('<').unwrap_or(rest);
        let mut elem_size = 0;
        if let Some(r) = rest.strip_prefix("bs") {
            let digits = r.bytes().take_while(u8::is_ascii_digit).count();
            elem_size = match &r[..digits] {
                "8" => 1,
                "16" => 2,
                "32" => 4,
                "64" => 8,
                _ => return Err(bad("bitshuffle element size must be 8, 16, 32 or 64 bits")),
            };
            rest = &r[digits..];
            rest = rest.strip_prefix('-').unwrap_or(rest);
            if rest != "lz4" {
                return Err(bad("bitshuffle must be followed by `lz4`"));
            }
            return Ok(Self {
                compression: Compression::BitshuffleLz4,
                elem_size,
            });
        }
        let compression = match rest {
            "lz4" => Compression::Lz4,
            "" => Compression::None,
            _ => return Err(bad("expected `bs<BITS>-lz4<`, `lz4<` or `<`")),
        };
        Ok(Self {
            compression,
            elem_size,
        })
    }

    /// [`Encoding::parse`], then checks it against the pixel size of the frame (`type` of
    /// `dimage_d`, bytes) and fills [`Encoding::elem_size`] where the string left it 0.
    ///
    /// # Errors
    /// As [`Encoding::parse`]; [`CodecError::BadEncoding`] when `bsN` disagrees with the pixel
    /// size.
    pub fn parse_for(s: &str, pixel_bytes: usize) -> Result<Self, CodecError> {
        let mut enc = Self::parse(s)?;
        if enc.elem_size == 0 {
            enc.elem_size = pixel_bytes;
        } else if enc.elem_size != pixel_bytes {
            return Err(CodecError::BadEncoding {
                encoding: s.to_string(),
                reason: "bitshuffle element size differs from the pixel type",
            });
        }
        Ok(enc)
    }

    /// The stream v1 string for this encoding (`bs16-lz4<`, `lz4<`, `<`).
    pub fn as_stream_string(&self) -> String {
        match self.compression {
            Compression::None => "<".into(),
            Compression::Lz4 => "lz4<".into(),
            Compression::BitshuffleLz4 => format!("bs{}-lz4<", 8 * self.elem_size),
            // Stream v2 only; v1 has no string for it.
            Compression::Lz4Hdf5 => "lz4 (HDF5 framing)".into(),
        }
    }
}

/// The bitshuffle block size in elements used when a writer asks for the default (0):
/// 8192 bytes' worth, rounded down to a multiple of 8, at least 128 (§2.5): 8192, 4096, 2048
/// elements for 1, 2, 4-byte elements.
pub fn default_block_elems(elem_size: usize) -> usize {
    ((DEFAULT_BLOCK_BYTES / elem_size.max(1)) / 8 * 8).max(128)
}

/// The two header fields of a bitshuffle blob: (uncompressed size in bytes, block size in
/// bytes), both big-endian (§2.5).
///
/// # Errors
/// [`CodecError::Header`] when the blob is shorter than 12 bytes.
pub fn bslz4_header(blob: &[u8]) -> Result<(u64, u32), CodecError> {
    let Some(h) = blob.get(..BSLZ4_HEADER_LEN) else {
        return Err(CodecError::Header {
            observed: blob.len(),
        });
    };
    let total = u64::from_be_bytes(h[..8].try_into().unwrap_or_default());
    let block = u32::from_be_bytes(h[8..12].try_into().unwrap_or_default());
    Ok((total, block))
}

/// Decodes `blob` into `out`: exactly the decoded frame's bytes (pixels × bytes per pixel),
/// little-endian pixels. Returns the bytes written (`out.len()`). Uses the fastest bit
/// transpose the CPU supports ([`Kernel::Auto`]).
///
/// Bitshuffle-LZ4 (§2.5): the header's block size is used when non-zero, else the default
/// ([`default_block_elems`]); a header total of 0 (the LiberTEM mock simulator's 12 zero
/// bytes) means "the frame size", any other total must equal `out.len()`. Plain LZ4: one raw
/// block of exactly `out.len()` bytes. Uncompressed: `blob.len() == out.len()`.
///
/// # Errors
/// A [`CodecError`] naming what was expected and observed: wrong header length or total,
/// a bad block size, blocks that overrun the blob, LZ4 data with offsets before the start
/// or that over- or under-fills its block, missing or extra trailing bytes.
pub fn decode_into(enc: &Encoding, blob: &[u8], out: &mut [u8]) -> Result<usize, CodecError> {
    decode_into_with(enc, blob, out, Kernel::Auto)
}

/// [`decode_into`] with a chosen bit-transpose kernel (for tests and benchmarks).
///
/// # Errors
/// As [`decode_into`].
pub fn decode_into_with(
    enc: &Encoding,
    blob: &[u8],
    out: &mut [u8],
    kernel: Kernel,
) -> Result<usize, CodecError> {
    match enc.compression {
        Compression::None => {
            if blob.len() != out.len() {
                return Err(CodecError::RawSize {
                    expected: out.len(),
                    observed: blob.len(),
                });
            }
            out.copy_from_slice(blob);
        }
        Compression::Lz4 => lz4::decompress(blob, out).map_err(|source| CodecError::Lz4 {
            len: blob.len(),
            source,
        })?,
        Compression::BitshuffleLz4 => decode_bslz4(blob, out, enc.elem_size, kernel)?,
        Compression::Lz4Hdf5 => {
            decode_hdf5_lz4_into(blob, out)?;
        }
    }
    Ok(out.len())
}

/// Decodes into a typed pixel buffer (a frame of a [`crate::frame::Tile`]): the
/// bytes are decoded as little-endian pixels of the buffer's type. Returns bytes written.
///
/// # Errors
/// As [`decode_into`] with `out` = the buffer's bytes.
pub fn decode_pixels(enc: &Encoding, blob: &[u8], out: PixelsMut<'_>) -> Result<usize, CodecError> {
    match out {
        PixelsMut::U8(p) => decode_into(enc, blob, p),
        PixelsMut::U16(p) => {
            let n = decode_into(enc, blob, as_bytes_mut(p))?;
            #[cfg(target_endian = "big")]
            p.iter_mut().for_each(|v| *v = u16::from_le(*v));
            Ok(n)
        }
        PixelsMut::U32(p) => {
            let n = decode_into(enc, blob, as_bytes_mut(p))?;
            #[cfg(target_endian = "big")]
            p.iter_mut().for_each(|v| *v = u32::from_le(*v));
            Ok(n)
        }
        PixelsMut::U64(p) => {
            let n = decode_into(enc, blob, as_bytes_mut(p))?;
            #[cfg(target_endian = "big")]
            p.iter_mut().for_each(|v| *v = u64::from_le(*v));
            Ok(n)
        }
        PixelsMut::F32(p) => {
            let n = decode_into(enc, blob, as_bytes_mut(p))?;
            #[cfg(target_endian = "big")]
            p.iter_mut()
                .for_each(|v| *v = f32::from_bits(u32::from_le(v.to_bits())));
            Ok(n)
        }
        PixelsMut::F64(p) => {
            let n = decode_into(enc, blob, as_bytes_mut(p))?;
            #[cfg(target_endian = "big")]
            p.iter_mut()
                .for_each(|v| *v = f64::from_bits(u64::from_le(v.to_bits())));
            Ok(n)
        }
    }
}

/// [`decode_hdf5_lz4_into`] into a typed pixel buffer (little-endian pixels).
///
/// # Errors
/// As [`decode_hdf5_lz4_into`].
pub fn decode_hdf5_lz4_pixels(blob: &[u8], out: PixelsMut<'_>) -> Result<usize, CodecError> {
    match out {
        PixelsMut::U8(p) => decode_hdf5_lz4_into(blob, p),
        PixelsMut::U16(p) => {
            let n = decode_hdf5_lz4_into(blob, as_bytes_mut(p))?;
            #[cfg(target_endian = "big")]
            p.iter_mut().for_each(|v| *v = u16::from_le(*v));
            Ok(n)
        }
        PixelsMut::U32(p) => {
            let n = decode_hdf5_lz4_into(blob, as_bytes_mut(p))?;
            #[cfg(target_endian = "big")]
            p.iter_mut().for_each(|v| *v = u32::from_le(*v));
            Ok(n)
        }
        PixelsMut::U64(p) => {
            let n = decode_hdf5_lz4_into(blob, as_bytes_mut(p))?;
            #[cfg(target_endian = "big")]
            p.iter_mut().for_each(|v| *v = u64::from_le(*v));
            Ok(n)
        }
        PixelsMut::F32(p) => {
            let n = decode_hdf5_lz4_into(blob, as_bytes_mut(p))?;
            #[cfg(target_endian = "big")]
            p.iter_mut()
                .for_each(|v| *v = f32::from_bits(u32::from_le(v.to_bits())));
            Ok(n)
        }
        PixelsMut::F64(p) => {
            let n = decode_hdf5_lz4_into(blob, as_bytes_mut(p))?;
            #[cfg(target_endian = "big")]
            p.iter_mut()
                .for_each(|v| *v = f64::from_bits(u64::from_le(v.to_bits())));
            Ok(n)
        }
    }
}

/// Pixel types whose memory can be viewed as bytes (no padding, every bit pattern valid).
trait Plain: Copy {}
impl Plain for u16 {}
impl Plain for u32 {}
impl Plain for u64 {}
impl Plain for f32 {}
impl Plain for f64 {}

/// The bytes of a pixel slice.
fn as_bytes_mut<T: Plain>(p: &mut [T]) -> &mut [u8] {
    let len = std::mem::size_of_val(p);
    // SAFETY: T is an unsigned integer or a float (no padding, every bit pattern valid); u8 has
    // alignment 1; the borrow of `p` is moved into the result.
    unsafe { std::slice::from_raw_parts_mut(p.as_mut_ptr().cast::<u8>(), len) }
}

thread_local! {
    /// Per-thread scratch for one decompressed (still bit-transposed) block.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Decodes a bitshuffle-LZ4 blob (§2.5) into `out`.
fn decode_bslz4(blob: &[u8], out: &mut [u8], e: usize, kernel: Kernel) -> Result<(), CodecError> {
    if !matches!(e, 1 | 2 | 4 | 8) {
        return Err(CodecError::ElemSize { elem_size: e });
    }
    if !out.len().is_multiple_of(e) {
        return Err(CodecError::OutputLen {
            len: out.len(),
            elem_size: e,
        });
    }
    let (total, block_bytes) = bslz4_header(blob)?;
    if total != 0 && total != out.len() as u64 {
        return Err(CodecError::TotalSize {
            header: total,
            expected: out.len(),
        });
    }
    let block = if block_bytes == 0 {
        default_block_elems(e)
    } else {
        let b = block_bytes as usize;
        if !b.is_multiple_of(8 * e) {
            return Err(CodecError::BlockSize {
                bytes: block_bytes,
                elem_size: e,
            });
        }
        b / e
    };
    let n = out.len() / e;
    let full = n / block;
    let partial = (n % block) / 8 * 8;
    let leftover = (n % 8) * e;

    SCRATCH.with(|cell| {
        // Re-entrancy is impossible (no callbacks), but fall back to a fresh buffer rather
        // than panic if the scratch is somehow borrowed.
        let mut own = Vec::new();
        let mut guard = cell.try_borrow_mut();
        let scratch: &mut Vec<u8> = match guard.as_mut() {
            Ok(s) => s,
            Err(_) => &mut own,
        };
        let max_block = (if full > 0 { block } else { partial }) * e;
        if scratch.len() < max_block {
            scratch.resize(max_block, 0);
        }
        let mut pos = BSLZ4_HEADER_LEN;
        let mut written = 0;
        let blocks = full + usize::from(partial > 0);
        for index in 0..blocks {
            let elems = if index < full { block } else { partial };
            let bytes = elems * e;
            let available = blob.len() - pos;
            if available < 4 {
                return Err(CodecError::BlockTruncated {
                    block: index,
                    at: pos,
                    needed: 4,
                    available,
                });
            }
            let len = u32::from_be_bytes([blob[pos], blob[pos + 1], blob[pos + 2], blob[pos + 3]])
                as usize;
            pos += 4;
            if len > blob.len() - pos {
                return Err(CodecError::BlockTruncated {
                    block: index,
                    at: pos,
                    needed: len,
                    available: blob.len() - pos,
                });
            }
            let tmp = &mut scratch[..bytes];
            lz4::decompress(&blob[pos..pos + len], tmp).map_err(|source| CodecError::BlockLz4 {
                block: index,
                at: pos,
                len,
                source,
            })?;
            shuffle::untranspose(tmp, &mut out[written..written + bytes], e, kernel);
            pos += len;
            written += bytes;
        }
        let rest = blob.len() - pos;
        if rest != leftover {
            return Err(CodecError::Leftover {
                at: pos,
                expected: leftover,
                observed: rest,
            });
        }
        out[written..].copy_from_slice(&blob[pos..]);
        Ok(())
    })
}

/// Decodes a blob in the HDF5 LZ4 filter's framing (filter id 32004; also DECTRIS stream
/// v2's `lz4`, protocols.md §2.5 last paragraph) into `out`: u64 BE uncompressed size, u32 BE
/// block size in bytes (0 = the filter's default of 1 GiB), then per block a u32 BE stored
/// length and that many bytes — raw when the length equals the block's size (the filter
/// stores incompressible blocks so), else one LZ4 block. Returns the bytes written.
///
/// # Errors
/// [`CodecError::Header`], [`CodecError::TotalSize`] (a total other than `out.len()`),
/// [`CodecError::BlockTruncated`], [`CodecError::BlockLz4`], [`CodecError::Leftover`] for
/// bytes after the last block.
pub fn decode_hdf5_lz4_into(blob: &[u8], out: &mut [u8]) -> Result<usize, CodecError> {
    /// The filter's default block size when the header says 0, bytes.
    const DEFAULT_BLOCK: usize = 1 << 30;
    let (total, block_bytes) = bslz4_header(blob)?;
    if total != out.len() as u64 {
        return Err(CodecError::TotalSize {
            header: total,
            expected: out.len(),
        });
    }
    let block = if block_bytes == 0 {
        DEFAULT_BLOCK
    } else {
        block_bytes as usize
    };
    let mut pos = BSLZ4_HEADER_LEN;
    let mut written = 0;
    let mut index = 0;
    while written < out.len() {
        let size = block.min(out.len() - written);
        let available = blob.len() - pos;
        if available < 4 {
            return Err(CodecError::BlockTruncated {
                block: index,
                at: pos,
                needed: 4,
                available,
            });
        }
        let len =
            u32::from_be_bytes([blob[pos], blob[pos + 1], blob[pos + 2], blob[pos + 3]]) as usize;
        pos += 4;
        if len > blob.len() - pos {
            return Err(CodecError::BlockTruncated {
                block: index,
                at: pos,
                needed: len,
                available: blob.len() - pos,
            });
        }
        let dst = &mut out[written..written + size];
        if len == size {
            dst.copy_from_slice(&blob[pos..pos + len]);
        } else {
            lz4::decompress(&blob[pos..pos + len], dst).map_err(|source| CodecError::BlockLz4 {
                block: index,
                at: pos,
                len,
                source,
            })?;
        }
        pos += len;
        written += size;
        index += 1;
    }
    if pos != blob.len() {
        return Err(CodecError::Leftover {
            at: pos,
            expected: 0,
            observed: blob.len() - pos,
        });
    }
    Ok(out.len())
}

/// Encodes `data` (little-endian pixels of `elem_size` bytes) as bitshuffle + LZ4 with the
/// 12-byte header (§2.5), as the HDF5 filter and a DECTRIS DCU write it; `block_size` in
/// elements, 0 = the default ([`default_block_elems`]), otherwise rounded down to a multiple
/// of 8 (at least 8). The output decodes with the reference C library.
///
/// # Panics
/// When `elem_size` is 0 or `data.len()` is not a multiple of it (the caller's pixel type
/// is wrong: a programming error); [`try_encode_bslz4`] returns an error instead.
pub fn encode_bslz4(data: &[u8], elem_size: usize, block_size: usize) -> Vec<u8> {
    match try_encode_bslz4(data, elem_size, block_size) {
        Ok(v) => v,
        Err(e) => panic!("encode_bslz4: {e}"),
    }
}

/// [`encode_bslz4`] returning an error instead of panicking.
///
/// # Errors
/// [`CodecError::ElemSize`] for `elem_size` 0; [`CodecError::OutputLen`] when `data.len()`
/// is not a multiple of `elem_size`.
pub fn try_encode_bslz4(
    data: &[u8],
    elem_size: usize,
    block_size: usize,
) -> Result<Vec<u8>, CodecError> {
    let e = elem_size;
    if e == 0 {
        return Err(CodecError::ElemSize { elem_size: 0 });
    }
    if !data.len().is_multiple_of(e) {
        return Err(CodecError::OutputLen {
            len: data.len(),
            elem_size: e,
        });
    }
    let block = if block_size == 0 {
        default_block_elems(e)
    } else {
        (block_size / 8 * 8).max(8)
    };
    let n = data.len() / e;
    let mut out = Vec::with_capacity(data.len() / 4 + 64);
    out.extend_from_slice(&(data.len() as u64).to_be_bytes());
    out.extend_from_slice(&((block * e) as u32).to_be_bytes());
    let mut tmp = vec![0u8; block.min(n) * e];
    let mut start = 0;
    let full_end = n / block * block;
    let blocks_end = n / 8 * 8;
    while start < blocks_end {
        let elems = if start < full_end {
            block
        } else {
            blocks_end - start
        };
        let src = &data[start * e..(start + elems) * e];
        let t = &mut tmp[..elems * e];
        shuffle::transpose(src, t, e);
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        lz4::compress(t, &mut out);
        let len = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
        start += elems;
    }
    out.extend_from_slice(&data[blocks_end * e..]);
    Ok(out)
}

/// Encodes `data` as one raw LZ4 block (stream v1 `lz4<`, §2.5).
pub fn encode_lz4(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    lz4::compress(data, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_stream_strings() {
        let p = |s| Encoding::parse(s).unwrap();
        assert_eq!(p("bs8-lz4<").elem_size, 1);
        assert_eq!(p("bs16-lz4<").elem_size, 2);
        assert_eq!(p("bs32-lz4<").compression, Compression::BitshuffleLz4);
        assert_eq!(p("bs32-lz4<").elem_size, 4);
        assert_eq!(p("bs16lz4").elem_size, 2);
        assert_eq!(p("lz4<").compression, Compression::Lz4);
        assert_eq!(p("<").compression, Compression::None);
        for bad in ["bs12-lz4<", "bs16<", "zstd<", "bs16-lz4>", ">", "lz4>"] {
            assert!(
                matches!(Encoding::parse(bad), Err(CodecError::BadEncoding { .. })),
                "{bad}"
            );
        }
        assert_eq!(Encoding::parse_for("lz4<", 2).unwrap().elem_size, 2);
        assert!(Encoding::parse_for("bs32-lz4<", 2).is_err());
        for (s, bytes) in [
            ("bs8-lz4<", 1),
            ("bs16-lz4<", 2),
            ("bs32-lz4<", 4),
            ("lz4<", 2),
            ("<", 4),
        ] {
            let enc = Encoding::parse_for(s, bytes).unwrap();
            assert_eq!(enc.elem_size, bytes, "{s}");
            assert_eq!(enc.as_stream_string(), s);
        }
        assert_eq!(Encoding::parse("bs16-lz4<").unwrap(), Encoding::bslz4(2));
        assert_eq!(Encoding::parse_for("lz4<", 4).unwrap(), Encoding::lz4(4));
        assert_eq!(Encoding::parse_for("<", 1).unwrap(), Encoding::raw(1));
        assert_eq!(default_block_elems(1), 8192);
        assert_eq!(default_block_elems(2), 4096);
        assert_eq!(default_block_elems(4), 2048);
    }

    #[test]
    fn roundtrips_every_size_and_odd_lengths() {
        for e in [1usize, 2, 4, 8] {
            for n in [0usize, 1, 7, 8, 9, 100, 1000, 4099, 20_001] {
                for block in [0usize, 8, 64, 1000] {
                    let data: Vec<u8> = (0..n * e)
                        .map(|i| ((i * 7) % 13) as u8 * (i % 3 == 0) as u8)
                        .collect();
                    let blob = encode_bslz4(&data, e, block);
                    let enc = Encoding {
                        compression: Compression::BitshuffleLz4,
                        elem_size: e,
                    };
                    for kernel in [Kernel::Scalar, Kernel::Sse2, Kernel::Auto] {
                        let mut out = vec![0xEE; n * e];
                        decode_into_with(&enc, &blob, &mut out, kernel).unwrap();
                        assert_eq!(out, data, "e={e} n={n} block={block} {kernel:?}");
                    }
                }
            }
        }
    }
}
