//! [`MerlinDecoder`]: one MQ1 frame payload → native pixels (protocols.md §1.7).
//!
//! * `U01`, `U08` → `u8` (one byte per pixel, copied).
//! * `U16`, `U32`, `U64` → `u16`, `u32`, `u64` from big-endian.
//! * `R64` ("raw", `FILEFORMAT 2`): the payload is a sequence of big-endian 64-bit words,
//!   pixels packed from the least-significant end: 1-bit (64 pixels per word) and 6-bit
//!   (8 bits per pixel, 8 per word) → `u8`; 12-bit (16 bits per pixel, 4 per word) → `u16`.
//!   24-bit raw is refused when the decoder is built (Merlin sends it as two frames).
//! * Raw quad (`2x2`, `2x2G`): the header says 1024 × 256; the payload holds 256 row groups
//!   of four chip rows in the order Q4, Q3, Q2, Q1. Q1 and Q2 fill the top half as decoded;
//!   Q3 and Q4 fill the bottom half rotated by 180° (row `H-1-r`, pixel order reversed).
//!   `2x2G` adds a 2-pixel gap cross (output 514 × 514); gap pixels are written as 0.
//!
//! Rows are kept in the order stored (row 0 first, LiberTEM's convention). The inner loops
//! work on fixed-size chunks (`chunks_exact`, `from_be_bytes`, a 256-entry table for 1-bit
//! unpacking) so the compiler vectorises them; they run at memory speed.

use super::hdr::MerlinHeader;
use super::mq1::{Layout, Mq1Header, PixelFormat};
use stemflow_core::frame::{DecodeError, FrameDecoder, PixelsMut};
use stemflow_core::{DType, SigShape};

/// Errors building a [`MerlinDecoder`] from the first frame header: formats this decoder
/// cannot produce. Each message lists what is supported.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DecoderError {
    /// Raw (`R64`) frames with a counter depth this decoder does not unpack.
    #[error(
        "raw (R64) frames with counter depth {depth} are not supported; supported raw counter depths: 1, 6, 12 (24-bit raw is sent as two frames; use FILEFORMAT 0 for 24-bit)"
    )]
    UnsupportedRawDepth {
        /// Counter depth in bits.
        depth: u32,
    },
    /// Raw frames without a counter depth in the frame header (`MQ1A`) or the HDR.
    #[error(
        "raw (R64) frames need the counter depth, but neither the frame header (MQ1A extension) nor the acquisition header gives it"
    )]
    MissingCounterDepth,
    /// Raw frames in a layout this decoder does not assemble.
    #[error(
        "raw (R64) frames in layout {layout} are not supported; supported raw layouts: 1x1, 2x2, 2x2G"
    )]
    UnsupportedRawLayout {
        /// The layout.
        layout: Layout,
    },
    /// Header dimensions that cannot describe the layout (e.g. raw quad width not divisible
    /// by 4, or chip rows that are not whole 64-bit words).
    #[error("frame geometry {width}×{height} ({format}, {layout}) is invalid: {detail}")]
    Geometry {
        /// Width in pixels as sent.
        width: u32,
        /// Height in pixels as sent.
        height: u32,
        /// Pixel format.
        format: PixelFormat,
        /// Layout.
        layout: Layout,
        /// What is wrong.
        detail: String,
    },
}

/// How the payload is turned into pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// One byte per pixel, copied.
    Bytes,
    /// Big-endian 16-bit.
    Be16,
    /// Big-endian 32-bit.
    Be32,
    /// Big-endian 64-bit.
    Be64,
    /// Raw 1-bit.
    Raw1,
    /// Raw 6-bit in 8-bit containers.
    Raw6,
    /// Raw 12-bit in 16-bit containers.
    Raw12,
}

/// Raw chip arrangement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Assembly {
    /// Payload order is output order.
    Linear,
    /// Raw quad: row groups Q4 Q3 Q2 Q1, bottom chips rotated by 180°; `gap` = 0 or 2.
    RawQuad {
        chip_rows: usize,
        chip_cols: usize,
        gap: usize,
    },
}

/// Decodes the frames of one Merlin acquisition. Built from its first MQ1 header (and the
/// HDR, which supplies the counter depth for raw frames that lack the `MQ1A` extension);
/// shared by the processing workers through an `Arc`.
#[derive(Clone, Debug)]
pub struct MerlinDecoder {
    device: String,
    format: PixelFormat,
    layout: Layout,
    counter_depth: Option<u32>,
    kind: Kind,
    assembly: Assembly,
    sig_shape: SigShape,
    dtype: DType,
    payload_len: usize,
}

impl MerlinDecoder {
    /// A decoder for frames like `first`; `hdr` is consulted for the counter depth when the
    /// frame header has no `MQ1A` extension. Errors name the device `merlin`; see
    /// [`with_device`](Self::with_device).
    ///
    /// Signal shape (rows × cols, pixels) and dtype (§1.7): non-raw formats decode to the
    /// header's height × width in `u8`/`u16`/`u32`/`u64`; raw single chip to height × width;
    /// raw quad (header 1024 × 256) to 512 × 512 (`2x2`) or 514 × 514 (`2x2G`); raw 1- and
    /// 6-bit to `u8`, 12-bit to `u16`.
    ///
    /// # Errors
    /// [`DecoderError`] for raw 24-bit, raw strips, a missing raw counter depth, or header
    /// dimensions that do not fit the layout.
    pub fn new(first: &Mq1Header, hdr: Option<&MerlinHeader>) -> Result<Self, DecoderError> {
        let counter_depth = first
            .counter_depth
            .or_else(|| hdr.and_then(MerlinHeader::counter_depth));
        let (w, h) = (first.width as usize, first.height as usize);
        let geometry = |detail: String| DecoderError::Geometry {
            width: first.width,
            height: first.height,
            format: first.pixel_format,
            layout: first.layout,
            detail,
        };
        if w == 0 || h == 0 {
            return Err(geometry("zero-sized frame".into()));
        }
        let (kind, dtype, bits) = match first.pixel_format {
            PixelFormat::U01 | PixelFormat::U08 => (Kind::Bytes, DType::U8, 8),
            PixelFormat::U16 => (Kind::Be16, DType::U16, 16),
            PixelFormat::U32 => (Kind::Be32, DType::U32, 32),
            PixelFormat::U64 => (Kind::Be64, DType::U64, 64),
            PixelFormat::R64 => match counter_depth {
                Some(1) => (Kind::Raw1, DType::U8, 1),
                Some(6) => (Kind::Raw6, DType::U8, 8),
                Some(12) => (Kind::Raw12, DType::U16, 16),
                Some(depth) => return Err(DecoderError::UnsupportedRawDepth { depth }),
                None => return Err(DecoderError::MissingCounterDepth),
            },
        };
        let raw = first.pixel_format == PixelFormat::R64;
        let (assembly, sig_shape) = if !raw {
            (Assembly::Linear, SigShape::new(h, w))
        } else {
            let (chips_across, gap) = match first.layout {
                Layout::Single => (1, 0),
                Layout::Quad => (4, 0),
                Layout::QuadWithGap => (4, 2),
                layout @ (Layout::Strip | Layout::StripWithGap) => {
                    return Err(DecoderError::UnsupportedRawLayout { layout });
                }
            };
            if w % chips_across != 0 {
                return Err(geometry(format!(
                    "raw width {w} is not divisible by {chips_across} chips"
                )));
            }
            let chip_cols = w / chips_across;
            if (chip_cols * bits) % 64 != 0 {
                return Err(geometry(format!(
                    "a chip row of {chip_cols} pixels × {bits} bits is not a whole number of 64-bit words"
                )));
            }
            if chips_across == 1 {
                (Assembly::Linear, SigShape::new(h, w))
            } else {
                let assembly = Assembly::RawQuad {
                    chip_rows: h,
                    chip_cols,
                    gap,
                };
                (assembly, SigShape::new(2 * h + gap, 2 * chip_cols + gap))
            }
        };
        let pixels = w
            .checked_mul(h)
            .ok_or_else(|| geometry("pixel count overflows".into()))?;
        // Raw payloads hold exactly the header's width × height pixels, packed.
        let payload_len = pixels
            .checked_mul(bits)
            .map(|b| b / 8)
            .ok_or_else(|| geometry("payload size overflows".into()))?;
        if payload_len % 8 != 0 && raw {
            return Err(geometry(format!(
                "raw payload of {payload_len} bytes is not whole 64-bit words"
            )));
        }
        Ok(Self {
            device: "merlin".to_string(),
            format: first.pixel_format,
            layout: first.layout,
            counter_depth,
            kind,
            assembly,
            sig_shape,
            dtype,
            payload_len,
        })
    }

    /// Names the device in decode errors (e.g. `merlin @ 10.0.0.2:6342`).
    pub fn with_device(mut self, device: impl Into<String>) -> Self {
        self.device = device.into();
        self
    }

    /// Bytes of one frame's payload (pixels only, no header).
    pub fn payload_len(&self) -> usize {
        self.payload_len
    }

    /// The pixel format of the frames.
    pub fn pixel_format(&self) -> PixelFormat {
        self.format
    }

    /// The chip layout of the frames.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Counter depth in bits, when known (frame header `MQ1A` or HDR).
    pub fn counter_depth(&self) -> Option<u32> {
        self.counter_depth
    }

    fn target_error(&self, out: &PixelsMut<'_>) -> DecodeError {
        DecodeError::Target {
            expected_dtype: self.dtype,
            expected_len: self.sig_shape.len(),
            observed_dtype: out.dtype(),
            observed_len: out.len(),
        }
    }
}

impl FrameDecoder for MerlinDecoder {
    fn sig_shape(&self) -> SigShape {
        self.sig_shape
    }

    fn dtype(&self) -> DType {
        self.dtype
    }

    fn decode_into(&self, payload: &[u8], out: PixelsMut<'_>) -> Result<(), DecodeError> {
        if payload.len() != self.payload_len {
            return Err(DecodeError::PayloadSize {
                device: self.device.clone(),
                expected: self.payload_len,
                observed: payload.len(),
            });
        }
        if out.len() != self.sig_shape.len() || out.dtype() != self.dtype {
            return Err(self.target_error(&out));
        }
        match (self.kind, out) {
            (Kind::Bytes, PixelsMut::U8(o)) => o.copy_from_slice(payload),
            (Kind::Be16, PixelsMut::U16(o)) => be16(payload, o),
            (Kind::Be32, PixelsMut::U32(o)) => be32(payload, o),
            (Kind::Be64, PixelsMut::U64(o)) => be64(payload, o),
            (Kind::Raw1, PixelsMut::U8(o)) => {
                self.assemble(payload, o, 1, [raw1_row, raw1_row_reversed])
            }
            (Kind::Raw6, PixelsMut::U8(o)) => {
                self.assemble(payload, o, 8, [raw6_row, raw6_row_reversed])
            }
            (Kind::Raw12, PixelsMut::U16(o)) => {
                self.assemble(payload, o, 16, [raw12_row, raw12_row_reversed])
            }
            (_, out) => return Err(self.target_error(&out)),
        }
        Ok(())
    }
}

impl MerlinDecoder {
    /// Places raw chip rows into `out`: `row[0]` decodes a chip row in pixel order,
    /// `row[1]` in reversed order (for the rotated bottom chips); `bits` per pixel container.
    fn assemble<T: Copy + Default>(
        &self,
        payload: &[u8],
        out: &mut [T],
        bits: usize,
        row: [RowFn<T>; 2],
    ) {
        let [row, reversed] = row;
        match self.assembly {
            Assembly::Linear => row(payload, out),
            Assembly::RawQuad {
                chip_rows,
                chip_cols,
                gap,
            } => {
                let cols = self.sig_shape.cols;
                let rows = self.sig_shape.rows;
                let row_bytes = chip_cols * bits / 8;
                if gap > 0 {
                    // Reused tiles hold old frames: write the gap cross explicitly.
                    out[chip_rows * cols..(chip_rows + gap) * cols].fill(T::default());
                    for r in out.chunks_exact_mut(cols) {
                        r[chip_cols..chip_cols + gap].fill(T::default());
                    }
                }
                for (r, group) in payload.chunks_exact(4 * row_bytes).enumerate() {
                    let (q4, rest) = group.split_at(row_bytes);
                    let (q3, rest) = rest.split_at(row_bytes);
                    let (q2, q1) = rest.split_at(row_bytes);
                    let top = &mut out[r * cols..(r + 1) * cols];
                    row(q1, &mut top[..chip_cols]);
                    row(q2, &mut top[chip_cols + gap..]);
                    let b = rows - 1 - r;
                    let bottom = &mut out[b * cols..(b + 1) * cols];
                    let (left, right) = bottom.split_at_mut(chip_cols);
                    reversed(q3, left);
                    reversed(q4, &mut right[gap..]);
                }
            }
        }
    }
}

/// Decodes one raw chip row (packed words) into pixels.
type RowFn<T> = fn(&[u8], &mut [T]);

fn be16(src: &[u8], dst: &mut [u16]) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = u16::from_be_bytes([s[0], s[1]]);
    }
}

fn be32(src: &[u8], dst: &mut [u32]) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *d = u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
    }
}

fn be64(src: &[u8], dst: &mut [u64]) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(8)) {
        *d = u64::from_be_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]);
    }
}

/// `BIT_SPREAD[b]` holds the 8 bits of byte `b` as 8 bytes of 0/1, bit 0 in the first
/// (lowest-address, little-endian) byte.
const BIT_SPREAD: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut b = 0;
    while b < 256 {
        let mut v = 0u64;
        let mut i = 0;
        while i < 8 {
            v |= (((b >> i) & 1) as u64) << (8 * i);
            i += 1;
        }
        t[b] = v;
        b += 1;
    }
    t
};

/// `BIT_SPREAD_REVERSED[b]`: the 8 bits of byte `b`, bit 7 in the first byte.
const BIT_SPREAD_REVERSED: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = BIT_SPREAD[b].swap_bytes();
        b += 1;
    }
    t
};

/// Raw 1-bit: pixel `k` of a word is bit `k` of the big-endian u64, i.e. bit `k % 8` of
/// byte `7 - k / 8`.
fn raw1_row(src: &[u8], dst: &mut [u8]) {
    for (d, s) in dst.chunks_exact_mut(64).zip(src.chunks_exact(8)) {
        for (b, out) in d.chunks_exact_mut(8).enumerate() {
            out.copy_from_slice(&BIT_SPREAD[s[7 - b] as usize].to_le_bytes());
        }
    }
}

/// [`raw1_row`] with the pixel order of the whole row reversed: words last to first, and in
/// each word pixel `63 - m` (bit `7 - m % 8` of byte `m / 8`) at position `m`.
fn raw1_row_reversed(src: &[u8], dst: &mut [u8]) {
    for (d, s) in dst.chunks_exact_mut(64).zip(src.chunks_exact(8).rev()) {
        for (b, out) in d.chunks_exact_mut(8).enumerate() {
            out.copy_from_slice(&BIT_SPREAD_REVERSED[s[b] as usize].to_le_bytes());
        }
    }
}

/// Raw 6-bit (8-bit containers): pixel `k` of a word is byte `7 - k`.
fn raw6_row(src: &[u8], dst: &mut [u8]) {
    for (d, s) in dst.chunks_exact_mut(8).zip(src.chunks_exact(8)) {
        let w = u64::from_be_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]);
        d.copy_from_slice(&w.to_le_bytes());
    }
}

/// [`raw6_row`] reversed: the two byte reversals cancel, leaving the words in reverse order.
fn raw6_row_reversed(src: &[u8], dst: &mut [u8]) {
    for (d, s) in dst.chunks_exact_mut(8).zip(src.chunks_exact(8).rev()) {
        d.copy_from_slice(s);
    }
}

/// Raw 12-bit (16-bit containers): pixel `k` of a word is the big-endian u16 in slot `3 - k`.
fn raw12_row(src: &[u8], dst: &mut [u16]) {
    for (d, s) in dst.chunks_exact_mut(4).zip(src.chunks_exact(8)) {
        let w = u64::from_be_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]);
        d[0] = w as u16;
        d[1] = (w >> 16) as u16;
        d[2] = (w >> 32) as u16;
        d[3] = (w >> 48) as u16;
    }
}

/// [`raw12_row`] reversed: words in reverse order, each word's slots in order 0..3.
fn raw12_row_reversed(src: &[u8], dst: &mut [u16]) {
    for (d, s) in dst.chunks_exact_mut(4).zip(src.chunks_exact(8).rev()) {
        let w = u64::from_be_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]);
        d[0] = (w >> 48) as u16;
        d[1] = (w >> 32) as u16;
        d[2] = (w >> 16) as u16;
        d[3] = w as u16;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(
        format: PixelFormat,
        layout: Layout,
        w: u32,
        h: u32,
        depth: Option<u32>,
    ) -> Mq1Header {
        Mq1Header {
            sequence: 1,
            data_offset: 384,
            num_chips: 1,
            width: w,
            height: h,
            pixel_format: format,
            layout,
            chip_select: 1,
            timestamp: String::new(),
            exposure_s: 0.001,
            counter: 0,
            colour_mode: 0,
            gain: None,
            thresholds_kev: vec![],
            utc_timestamp: None,
            exposure_ns: None,
            counter_depth: depth,
        }
    }

    /// Packs pixels the way Merlin does (§1.7): big-endian words, pixel k from the LSB end.
    fn pack(pixels: &[u64], bits: usize) -> Vec<u8> {
        let per_word = 64 / bits;
        pixels
            .chunks(per_word)
            .flat_map(|px| {
                let w = px
                    .iter()
                    .enumerate()
                    .fold(0u64, |acc, (k, &v)| acc | (v << (k * bits)));
                w.to_be_bytes()
            })
            .collect()
    }

    #[test]
    fn big_endian_formats() {
        let d = MerlinDecoder::new(
            &header(PixelFormat::U16, Layout::Single, 2, 1, Some(12)),
            None,
        )
        .unwrap();
        assert_eq!(
            (d.sig_shape(), d.dtype(), d.payload_len()),
            (SigShape::new(1, 2), DType::U16, 4)
        );
        let mut o = [0u16; 2];
        d.decode_into(&[0x01, 0x02, 0xff, 0x00], PixelsMut::U16(&mut o))
            .unwrap();
        assert_eq!(o, [0x0102, 0xff00]);

        let d = MerlinDecoder::new(&header(PixelFormat::U32, Layout::Single, 1, 1, None), None)
            .unwrap();
        let mut o = [0u32; 1];
        d.decode_into(&[0, 0x10, 0, 1], PixelsMut::U32(&mut o))
            .unwrap();
        assert_eq!(o, [0x0010_0001]);

        let d = MerlinDecoder::new(&header(PixelFormat::U64, Layout::Single, 1, 1, None), None)
            .unwrap();
        let mut o = [0u64; 1];
        d.decode_into(&[0, 0, 0, 0, 0, 0, 1, 2], PixelsMut::U64(&mut o))
            .unwrap();
        assert_eq!(o, [0x0102]);

        let d = MerlinDecoder::new(&header(PixelFormat::U01, Layout::Single, 3, 1, None), None)
            .unwrap();
        let mut o = [9u8; 3];
        d.decode_into(&[1, 0, 1], PixelsMut::U8(&mut o)).unwrap();
        assert_eq!(o, [1, 0, 1]);
    }

    #[test]
    fn raw_single_chip_round_trips_all_depths() {
        for (depth, bits) in [(1u32, 1usize), (6, 8), (12, 16)] {
            let max = (1u64 << depth) - 1;
            let pixels: Vec<u64> = (0..256 * 4).map(|i| (i * 7 + i / 3) % (max + 1)).collect();
            let d = MerlinDecoder::new(
                &header(PixelFormat::R64, Layout::Single, 256, 4, Some(depth)),
                None,
            )
            .unwrap();
            let payload = pack(&pixels, bits);
            assert_eq!(d.payload_len(), payload.len());
            assert_eq!(d.sig_shape(), SigShape::new(4, 256));
            let got: Vec<u64> = match d.dtype() {
                DType::U8 => {
                    let mut o = vec![0u8; 1024];
                    d.decode_into(&payload, PixelsMut::U8(&mut o)).unwrap();
                    o.into_iter().map(u64::from).collect()
                }
                DType::U16 => {
                    let mut o = vec![0u16; 1024];
                    d.decode_into(&payload, PixelsMut::U16(&mut o)).unwrap();
                    o.into_iter().map(u64::from).collect()
                }
                other => panic!("unexpected dtype {other}"),
            };
            assert_eq!(got, pixels, "depth {depth}");
        }
    }

    /// Builds a raw quad payload from four chip images (row-major, `n`×`n` each) following
    /// §1.7 literally, and checks the decoder puts every pixel back in its quadrant.
    #[test]
    fn raw_quad_assembly_with_and_without_gap() {
        let n = 64; // chip size in pixels (real chips: 256)
        let chip = |q: u64, r: usize, c: usize| ((q * 1000 + (r * n + c) as u64) % 4096) as u16;
        for (layout, gap) in [(Layout::Quad, 0usize), (Layout::QuadWithGap, 2)] {
            // Q1 top-left, Q2 top-right, Q3 bottom-left, Q4 bottom-right, as displayed.
            let size = 2 * n + gap;
            let mut expected = vec![0u16; size * size];
            for r in 0..n {
                for c in 0..n {
                    expected[r * size + c] = chip(1, r, c);
                    expected[r * size + n + gap + c] = chip(2, r, c);
                    expected[(n + gap + r) * size + c] = chip(3, r, c);
                    expected[(n + gap + r) * size + n + gap + c] = chip(4, r, c);
                }
            }
            // Wire: row group g = chip rows of Q4, Q3, Q2, Q1; bottom chips are sent rotated
            // by 180°, so their row g is displayed row (n-1-g), reversed.
            let mut wire_pixels = Vec::new();
            for g in 0..n {
                for q in [4u64, 3] {
                    wire_pixels.extend((0..n).rev().map(|c| u64::from(chip(q, n - 1 - g, c))));
                }
                for q in [2u64, 1] {
                    wire_pixels.extend((0..n).map(|c| u64::from(chip(q, g, c))));
                }
            }
            let payload = pack(&wire_pixels, 16);
            let mut h = header(PixelFormat::R64, layout, 4 * n as u32, n as u32, Some(12));
            h.num_chips = 4;
            let d = MerlinDecoder::new(&h, None).unwrap();
            assert_eq!(d.sig_shape(), SigShape::new(size, size));
            let mut out = vec![0xffffu16; size * size];
            d.decode_into(&payload, PixelsMut::U16(&mut out)).unwrap();
            assert!(out == expected, "layout {layout}: quadrants misplaced");
        }
    }

    #[test]
    fn reversed_row_decoders_equal_decode_then_reverse() {
        let src: Vec<u8> = (0..512u32).map(|i| (i * 37 + 11) as u8).collect();
        let mut a = vec![0u8; 4096];
        let mut b = vec![0u8; 4096];
        raw1_row(&src, &mut a);
        a.reverse();
        raw1_row_reversed(&src, &mut b);
        assert_eq!(a, b);
        let (mut a, mut b) = (vec![0u8; 512], vec![0u8; 512]);
        raw6_row(&src, &mut a);
        a.reverse();
        raw6_row_reversed(&src, &mut b);
        assert_eq!(a, b);
        let (mut a, mut b) = (vec![0u16; 256], vec![0u16; 256]);
        raw12_row(&src, &mut a);
        a.reverse();
        raw12_row_reversed(&src, &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn raw_quad_shape_matches_the_real_header() {
        let mut h = header(PixelFormat::R64, Layout::Quad, 1024, 256, Some(1));
        h.num_chips = 4;
        let d = MerlinDecoder::new(&h, None).unwrap();
        assert_eq!(
            (d.sig_shape(), d.dtype(), d.payload_len()),
            (SigShape::new(512, 512), DType::U8, 32768)
        );
        h.layout = Layout::QuadWithGap;
        let d = MerlinDecoder::new(&h, None).unwrap();
        assert_eq!(d.sig_shape(), SigShape::new(514, 514));
    }

    #[test]
    fn refuses_unsupported_raw_and_bad_targets() {
        let err = MerlinDecoder::new(
            &header(PixelFormat::R64, Layout::Single, 256, 256, Some(24)),
            None,
        )
        .unwrap_err();
        assert_eq!(err, DecoderError::UnsupportedRawDepth { depth: 24 });
        assert!(err.to_string().contains("not supported"));
        assert_eq!(
            MerlinDecoder::new(
                &header(PixelFormat::R64, Layout::Single, 256, 256, None),
                None
            )
            .unwrap_err(),
            DecoderError::MissingCounterDepth
        );
        assert!(matches!(
            MerlinDecoder::new(
                &header(PixelFormat::R64, Layout::Strip, 1024, 256, Some(1)),
                None
            ),
            Err(DecoderError::UnsupportedRawLayout { .. })
        ));
        assert!(matches!(
            MerlinDecoder::new(
                &header(PixelFormat::R64, Layout::Single, 100, 256, Some(1)),
                None
            ),
            Err(DecoderError::Geometry { .. })
        ));
        // The HDR supplies the counter depth when MQ1A is absent.
        let hdr = MerlinHeader::parse(
            b"HDR,\nCounter Depth (number):\t6\nFrames in Acquisition (Number):\t1\nFrames per Trigger (Number):\t1\nEnd",
        )
        .unwrap();
        let d = MerlinDecoder::new(
            &header(PixelFormat::R64, Layout::Single, 256, 256, None),
            Some(&hdr),
        )
        .unwrap();
        assert_eq!((d.counter_depth(), d.dtype()), (Some(6), DType::U8));

        let d = MerlinDecoder::new(&header(PixelFormat::U16, Layout::Single, 2, 2, None), None)
            .unwrap()
            .with_device("merlin @ test");
        let mut o8 = [0u8; 4];
        let err = d.decode_into(&[0; 8], PixelsMut::U8(&mut o8)).unwrap_err();
        assert!(matches!(err, DecodeError::Target { .. }));
        let mut o16 = [0u16; 4];
        let err = d
            .decode_into(&[0; 7], PixelsMut::U16(&mut o16))
            .unwrap_err();
        assert_eq!(
            err,
            DecodeError::PayloadSize {
                device: "merlin @ test".into(),
                expected: 8,
                observed: 7
            }
        );
    }
}
