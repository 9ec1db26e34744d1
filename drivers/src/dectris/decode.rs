//! [`DectrisDecoder`]: one DECTRIS frame blob (bitshuffle-LZ4, LZ4 or raw, protocols.md
//! §2.4–§2.6) → native pixels, with [`super::codec`]. Called by the processing workers in
//! parallel, so the receive thread never decompresses; it only runs [`check_framing`], a
//! cheap structural check that catches truncated or corrupt blobs without decoding them.

use super::codec::{self, BSLZ4_HEADER_LEN, Compression, Encoding};
use stemflow_core::frame::{DecodeError, FrameDecoder, PixelsMut};
use stemflow_core::{DType, SigShape};

/// Decodes the frames of one DECTRIS series: every frame has the same shape, pixel type and
/// encoding (taken from the first frame's `dimage_d-1.0` or CBOR image).
#[derive(Clone, Debug)]
pub struct DectrisDecoder {
    device: String,
    sig_shape: SigShape,
    dtype: DType,
    encoding: Encoding,
    big_endian: bool,
}

impl DectrisDecoder {
    /// A decoder for frames of `sig_shape` (rows × cols, pixels) of `dtype`
    /// (`u8`/`u16`/`u32`) encoded as `encoding`; `big_endian` when the decompressed bytes
    /// are big-endian (`>` in v1, typed-array tags 65/66 in v2). Errors name `device`.
    pub fn new(
        device: impl Into<String>,
        sig_shape: SigShape,
        dtype: DType,
        encoding: Encoding,
        big_endian: bool,
    ) -> Self {
        Self {
            device: device.into(),
            sig_shape,
            dtype,
            encoding,
            big_endian,
        }
    }

    /// The blob encoding.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Decoded frame size, bytes (pixels × bytes per pixel).
    pub fn frame_bytes(&self) -> usize {
        self.sig_shape.len() * self.dtype.size()
    }
}

impl FrameDecoder for DectrisDecoder {
    fn sig_shape(&self) -> SigShape {
        self.sig_shape
    }

    /// Bitshuffle-LZ4 little-endian frames whose transpose element is the pixel: each blob
    /// is one chunk of HDF5 filter 32008 (§2.5), storable as it came.
    fn hdf5_chunk_filter(&self) -> Option<u32> {
        (self.encoding.compression == Compression::BitshuffleLz4
            && self.encoding.elem_size == self.dtype.size()
            && !self.big_endian)
            .then_some(32008)
    }

    fn dtype(&self) -> DType {
        self.dtype
    }

    fn decode_into(&self, payload: &[u8], mut out: PixelsMut<'_>) -> Result<(), DecodeError> {
        if out.len() != self.sig_shape.len() || out.dtype() != self.dtype {
            return Err(DecodeError::Target {
                expected_dtype: self.dtype,
                expected_len: self.sig_shape.len(),
                observed_dtype: out.dtype(),
                observed_len: out.len(),
            });
        }
        codec::decode_pixels(&self.encoding, payload, out.reborrow()).map_err(|e| {
            DecodeError::Malformed {
                device: self.device.clone(),
                detail: format!("{} byte blob: {e}", payload.len()),
            }
        })?;
        if self.big_endian {
            match out {
                PixelsMut::U16(p) => p.iter_mut().for_each(|v| *v = v.swap_bytes()),
                PixelsMut::U32(p) => p.iter_mut().for_each(|v| *v = v.swap_bytes()),
                PixelsMut::U64(p) => p.iter_mut().for_each(|v| *v = v.swap_bytes()),
                PixelsMut::F32(p) => p
                    .iter_mut()
                    .for_each(|v| *v = f32::from_bits(v.to_bits().swap_bytes())),
                PixelsMut::F64(p) => p
                    .iter_mut()
                    .for_each(|v| *v = f64::from_bits(v.to_bits().swap_bytes())),
                PixelsMut::U8(_) => {}
            }
        }
        Ok(())
    }
}

/// Helper: re-borrow a [`PixelsMut`] for a shorter lifetime.
trait Reborrow {
    fn reborrow(&mut self) -> PixelsMut<'_>;
}

impl Reborrow for PixelsMut<'_> {
    fn reborrow(&mut self) -> PixelsMut<'_> {
        match self {
            PixelsMut::U8(p) => PixelsMut::U8(p),
            PixelsMut::U16(p) => PixelsMut::U16(p),
            PixelsMut::U32(p) => PixelsMut::U32(p),
            PixelsMut::U64(p) => PixelsMut::U64(p),
            PixelsMut::F32(p) => PixelsMut::F32(p),
            PixelsMut::F64(p) => PixelsMut::F64(p),
        }
    }
}

/// Checks a blob's framing without decompressing (§2.5): for bitshuffle-LZ4, the 12-byte
/// header (total 0 or `frame_bytes`), and that the per-block length prefixes walk exactly
/// to the end of the blob (with the raw leftover bytes); for raw frames, the length. Plain
/// LZ4 (`lz4<`) is one block without framing and is only checked for being non-empty.
/// Costs one 4-byte read per block (16 for a 256 × 256 u16 frame).
///
/// # Errors
/// A description of the first inconsistency, with the numbers.
pub fn check_framing(enc: &Encoding, blob: &[u8], frame_bytes: usize) -> Result<(), String> {
    match enc.compression {
        Compression::None => {
            if blob.len() != frame_bytes {
                return Err(format!(
                    "raw blob is {} bytes, expected {frame_bytes} bytes",
                    blob.len()
                ));
            }
        }
        Compression::Lz4 => {
            if blob.is_empty() && frame_bytes > 0 {
                return Err("empty LZ4 blob".into());
            }
        }
        Compression::Lz4Hdf5 => {
            let (total, _) = codec::bslz4_header(blob).map_err(|e| e.to_string())?;
            if total != frame_bytes as u64 {
                return Err(format!(
                    "LZ4 header announces {total} bytes, the frame has {frame_bytes} bytes"
                ));
            }
        }
        Compression::BitshuffleLz4 => {
            let (total, block_bytes) = codec::bslz4_header(blob).map_err(|e| e.to_string())?;
            if total != 0 && total != frame_bytes as u64 {
                return Err(format!(
                    "bitshuffle header announces {total} bytes, the frame has {frame_bytes} bytes"
                ));
            }
            let elem = enc.elem_size.max(1);
            let block_elems = if block_bytes == 0 {
                codec::default_block_elems(elem)
            } else {
                block_bytes as usize / elem
            };
            if block_elems == 0 || block_elems % 8 != 0 {
                return Err(format!(
                    "bitshuffle block of {block_bytes} bytes is not a multiple of 8 elements of {elem} bytes"
                ));
            }
            let n = frame_bytes / elem;
            let mut blocks = n / block_elems;
            if (n % block_elems) / 8 * 8 > 0 {
                blocks += 1;
            }
            let leftover = (n % 8) * elem;
            let mut at = BSLZ4_HEADER_LEN;
            for b in 0..blocks {
                let Some(len) = blob.get(at..at + 4) else {
                    return Err(format!(
                        "blob of {} bytes ends at block {b} of {blocks} (byte {at})",
                        blob.len()
                    ));
                };
                let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
                at = at.saturating_add(4).saturating_add(len);
            }
            if at.saturating_add(leftover) != blob.len() {
                return Err(format!(
                    "{blocks} blocks and {leftover} leftover bytes end at byte {}, the blob has {} bytes",
                    at.saturating_add(leftover),
                    blob.len()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Vec<u16> {
        (0..64 * 32).map(|i| (i * 7 % 1000) as u16).collect()
    }

    fn le_bytes(p: &[u16]) -> Vec<u8> {
        p.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn decodes_bslz4_and_checks_framing() {
        let px = frame();
        let blob = codec::encode_bslz4(&le_bytes(&px), 2, 0);
        let enc = Encoding {
            compression: Compression::BitshuffleLz4,
            elem_size: 2,
        };
        let d = DectrisDecoder::new("dectris", SigShape::new(32, 64), DType::U16, enc, false);
        assert_eq!(d.frame_bytes(), 4096);
        check_framing(&enc, &blob, d.frame_bytes()).unwrap();
        let mut out = vec![0u16; px.len()];
        d.decode_into(&blob, PixelsMut::U16(&mut out)).unwrap();
        assert_eq!(out, px);

        let cut = &blob[..blob.len() - 3];
        let e = check_framing(&enc, cut, d.frame_bytes()).unwrap_err();
        assert!(e.contains("the blob has"), "{e}");
        let e = d.decode_into(cut, PixelsMut::U16(&mut out)).unwrap_err();
        assert!(e.to_string().starts_with("dectris: malformed"), "{e}");
        let e = check_framing(&enc, &blob, 2048).unwrap_err();
        assert!(e.contains("announces 4096 bytes"), "{e}");
        let e = d
            .decode_into(&blob, PixelsMut::U8(&mut [0u8; 4]))
            .unwrap_err();
        assert!(matches!(e, DecodeError::Target { .. }), "{e}");
    }

    #[test]
    fn raw_big_endian_frames_are_swapped() {
        let px = frame();
        let be: Vec<u8> = px.iter().flat_map(|v| v.to_be_bytes()).collect();
        let enc = Encoding {
            compression: Compression::None,
            elem_size: 2,
        };
        let d = DectrisDecoder::new("dectris", SigShape::new(32, 64), DType::U16, enc, true);
        let mut out = vec![0u16; px.len()];
        d.decode_into(&be, PixelsMut::U16(&mut out)).unwrap();
        assert_eq!(out, px);
        assert!(check_framing(&enc, &be[1..], 4096).is_err());
    }
}
