//! Masks compiled to vector windows, for the virtual-detector kernels.
//!
//! A [`SpanMask`] lists row runs; summing run by run costs a loop set-up and a tail per run
//! (rings and disks on 256 × 256 frames: hundreds of runs of tens of pixels). A
//! [`WindowMask`] instead lists the mask as `(offset, lane bits)` pairs over windows of one
//! vector register (AVX-512: 64 bytes, i.e. 64 pixels of u8, 32 of u16, 16 of u32; AVX2: 32
//! bytes): one masked load and two or three adds per window, no branch per run. Windows are aligned to multiples of
//! the lane count from the frame's first pixel (the last one is moved back to end at the
//! frame's end), so every load lies inside the frame and each pixel belongs to exactly one
//! window of a mask.
//!
//! The kernels are chosen at compile time (`target-cpu=native`, decision 0005): AVX-512 BW,
//! else AVX2 (which has no byte or word masked load: each window is loaded whole and its
//! lanes outside the mask cleared; 256² u16, 4 masks: 2.5 → 1.9 µs per frame against the run
//! kernels). Without either, [`WindowMask::new`] gives `None` and callers use the run kernels
//! of [`crate::pixel`]. All are exact, so results do not depend on which ran.

use crate::mask::SpanMask;
use crate::pixel::Pixel;
use stemflow_core::DType;

/// A mask as vector windows over a frame of `frame_len` pixels, for pixels of one width.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowMask {
    /// Element offset of each window's first pixel within the frame.
    offsets: Vec<u32>,
    /// Lane bits of each window: bit `i` set when pixel `offset + i` is in the mask.
    bits: Vec<u64>,
    /// Pixels per window (`WINDOW_BYTES` / pixel bytes: 64 bytes with AVX-512, 32 with AVX2).
    lanes: usize,
    /// Pixels per frame the windows were made for.
    frame_len: usize,
    /// `row_first[r]`: the first window starting at or after row `r` (`rows + 1` entries);
    /// a window belongs to the row band holding its first pixel.
    row_first: Vec<u32>,
}

impl WindowMask {
    /// The windows of `mask` for pixels of `dtype`; `None` when this build has no window
    /// kernel (neither AVX-512 BW nor AVX2), for u64 and float pixels (whose sums are not
    /// exact integers: the virtual detectors add their spans in `f64`), for frames shorter
    /// than one window, or when the frame has 2^32 pixels or more.
    pub fn new(mask: &SpanMask, dtype: DType) -> Option<Self> {
        // Without a kernel, windows would answer some row bands (empty ones, `Some(0)`) and
        // leave the others to the run kernels, whose bands split the mask differently.
        if !kernels::AVAILABLE {
            return None;
        }
        Self::build(mask, dtype)
    }

    /// The windows, whether or not this build has a kernel to sum them.
    fn build(mask: &SpanMask, dtype: DType) -> Option<Self> {
        let lanes = match dtype {
            DType::U64 | DType::F32 | DType::F64 => return None,
            d => kernels::WINDOW_BYTES / d.size(),
        };
        let sig = mask.sig_shape();
        let frame_len = sig.len();
        if frame_len < lanes || u32::try_from(frame_len).is_err() {
            return None;
        }
        let mut offsets: Vec<u32> = Vec::new();
        let mut bits: Vec<u64> = Vec::new();
        for span in mask.spans() {
            let r = span.range(sig.cols);
            let mut pos = r.start;
            while pos < r.end {
                // Aligned window, moved back when it would run past the frame's end.
                let start = (pos / lanes * lanes).min(frame_len - lanes);
                let end = (start + lanes).min(r.end);
                let n = end - pos;
                let b = if n == 64 { u64::MAX } else { (1u64 << n) - 1 } << (pos - start);
                // Spans come by row then column, so window starts never decrease.
                if offsets.last() == Some(&(start as u32)) {
                    if let Some(last) = bits.last_mut() {
                        *last |= b;
                    }
                } else {
                    offsets.push(start as u32);
                    bits.push(b);
                }
                pos = end;
            }
        }
        let row_first = (0..=sig.rows)
            .map(|r| offsets.partition_point(|&o| (o as usize) < r * sig.cols) as u32)
            .collect();
        Some(Self {
            offsets,
            bits,
            lanes,
            frame_len,
            row_first,
        })
    }

    /// Number of windows (vector loads per frame).
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// True when the mask is empty.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Exact sum of `frame`'s pixels under the mask; `None` when no vector kernel exists
    /// for `P`, or `frame` is not the frame shape the windows were made for.
    #[inline]
    pub fn sum<P: Pixel>(&self, frame: &[P]) -> Option<u64> {
        if frame.len() != self.frame_len || P::DTYPE.size() * self.lanes != kernels::WINDOW_BYTES {
            return None;
        }
        kernels::sum(P::DTYPE, frame.as_ptr().cast(), &self.offsets, &self.bits)
    }

    /// [`WindowMask::sum`] over the windows that start in rows `rows` (clipped to the
    /// frame): summed over consecutive, disjoint row bands covering the frame, it gives the
    /// whole mask's sum, each pixel counted once.
    #[inline]
    pub fn sum_rows<P: Pixel>(&self, frame: &[P], rows: std::ops::Range<usize>) -> Option<u64> {
        if frame.len() != self.frame_len || P::DTYPE.size() * self.lanes != kernels::WINDOW_BYTES {
            return None;
        }
        let last = self.row_first.len() - 1;
        let a = self.row_first[rows.start.min(last)] as usize;
        let b = self.row_first[rows.end.min(last)] as usize;
        if a >= b {
            return Some(0);
        }
        kernels::sum(
            P::DTYPE,
            frame.as_ptr().cast(),
            &self.offsets[a..b],
            &self.bits[a..b],
        )
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx512bw"))]
mod kernels {
    use std::arch::x86_64::*;
    use stemflow_core::DType;

    /// This build sums windows with vector kernels.
    pub(super) const AVAILABLE: bool = true;
    /// Bytes per window: one 512-bit register.
    pub(super) const WINDOW_BYTES: usize = 64;

    /// Sums the windows; `frame` points at a frame of the dtype's pixels in which every
    /// window (`offset + lanes`) lies, checked by the caller ([`super::WindowMask::sum`]).
    #[inline]
    pub(super) fn sum(dtype: DType, frame: *const u8, offs: &[u32], bits: &[u64]) -> Option<u64> {
        // SAFETY: the caller checked the frame length and dtype against the windows, all of
        // which lie inside the frame (WindowMask::new); AVX-512 BW is enabled at compile time.
        unsafe {
            match dtype {
                DType::U8 => Some(sum_u8(frame, offs, bits)),
                DType::U16 => Some(sum_u16(frame.cast(), offs, bits)),
                DType::U32 => Some(sum_u32(frame.cast(), offs, bits)),
                DType::U64 | DType::F32 | DType::F64 => None,
            }
        }
    }

    /// u8: `vpsadbw` adds eight bytes into each u64 lane — no overflow to watch.
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn sum_u8(p: *const u8, offs: &[u32], bits: &[u64]) -> u64 {
        let zero = _mm512_setzero_si512();
        let mut acc = _mm512_setzero_si512();
        for (&o, &m) in offs.iter().zip(bits) {
            // SAFETY: window inside the frame (see `sum`).
            let v = unsafe { _mm512_maskz_loadu_epi8(m, p.add(o as usize).cast()) };
            acc = _mm512_add_epi64(acc, _mm512_sad_epu8(v, zero));
        }
        _mm512_reduce_add_epi64(acc) as u64
    }

    /// u16: the low and high halves of each u32 lane go into two u32 accumulators, each
    /// taking one value < 2^16 per window: exact for up to 2^16 windows, then flushed.
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn sum_u16(p: *const u16, offs: &[u32], bits: &[u64]) -> u64 {
        let low = _mm512_set1_epi32(0xFFFF);
        let mut total = 0u64;
        for (oc, bc) in offs.chunks(1 << 16).zip(bits.chunks(1 << 16)) {
            let mut a = _mm512_setzero_si512();
            let mut b = _mm512_setzero_si512();
            for (&o, &m) in oc.iter().zip(bc) {
                // SAFETY: window inside the frame (see `sum`).
                let v = unsafe { _mm512_maskz_loadu_epi16(m as u32, p.add(o as usize).cast()) };
                a = _mm512_add_epi32(a, _mm512_and_si512(v, low));
                b = _mm512_add_epi32(b, _mm512_srli_epi32::<16>(v));
            }
            total += widen_sum_u32(a) + widen_sum_u32(b);
        }
        total
    }

    /// u32: both halves widened to u64 lanes.
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn sum_u32(p: *const u32, offs: &[u32], bits: &[u64]) -> u64 {
        let mut a = _mm512_setzero_si512();
        let mut b = _mm512_setzero_si512();
        for (&o, &m) in offs.iter().zip(bits) {
            // SAFETY: window inside the frame (see `sum`).
            let v = unsafe { _mm512_maskz_loadu_epi32(m as u16, p.add(o as usize).cast()) };
            a = _mm512_add_epi64(a, _mm512_cvtepu32_epi64(_mm512_castsi512_si256(v)));
            b = _mm512_add_epi64(b, _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64::<1>(v)));
        }
        (_mm512_reduce_add_epi64(a) as u64).wrapping_add(_mm512_reduce_add_epi64(b) as u64)
    }

    /// Sum of sixteen u32 lanes, in u64.
    #[target_feature(enable = "avx512f,avx512bw")]
    fn widen_sum_u32(v: __m512i) -> u64 {
        let lo = _mm512_cvtepu32_epi64(_mm512_castsi512_si256(v));
        let hi = _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64::<1>(v));
        _mm512_reduce_add_epi64(_mm512_add_epi64(lo, hi)) as u64
    }
}

/// AVX2 (x86-64-v3) kernels: 32-byte windows. AVX2 has no byte or word masked load, so
/// each window loads its 32 bytes whole (they lie inside the frame) and clears the lanes
/// outside the mask with a lane mask built from the window's bits.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    not(target_feature = "avx512bw")
))]
mod kernels {
    use std::arch::x86_64::*;
    use stemflow_core::DType;

    /// This build sums windows with vector kernels.
    pub(super) const AVAILABLE: bool = true;
    /// Bytes per window: one 256-bit register.
    pub(super) const WINDOW_BYTES: usize = 32;

    /// Sums the windows; `frame` points at a frame of the dtype's pixels in which every
    /// window (`offset + lanes`) lies, checked by the caller ([`super::WindowMask::sum`]).
    #[inline]
    pub(super) fn sum(dtype: DType, frame: *const u8, offs: &[u32], bits: &[u64]) -> Option<u64> {
        // SAFETY: the caller checked the frame length and dtype against the windows, all of
        // which lie inside the frame (WindowMask::new); AVX2 is enabled at compile time.
        unsafe {
            match dtype {
                DType::U8 => Some(sum_u8(frame, offs, bits)),
                DType::U16 => Some(sum_u16(frame.cast(), offs, bits)),
                DType::U32 => Some(sum_u32(frame.cast(), offs, bits)),
                DType::U64 | DType::F32 | DType::F64 => None,
            }
        }
    }

    /// u8: bit `i` of the window's 32 bits selects byte lane `i`; `vpsadbw` adds eight
    /// bytes into each u64 lane.
    #[target_feature(enable = "avx2")]
    unsafe fn sum_u8(p: *const u8, offs: &[u32], bits: &[u64]) -> u64 {
        // Byte lane i takes byte i / 8 of the bits, then tests bit i % 8 of it.
        let spread = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
        );
        let select = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let zero = _mm256_setzero_si256();
        let mut acc = _mm256_setzero_si256();
        for (&o, &m) in offs.iter().zip(bits) {
            let b = _mm256_shuffle_epi8(_mm256_set1_epi32(m as u32 as i32), spread);
            let lanes = _mm256_cmpeq_epi8(_mm256_and_si256(b, select), select);
            // SAFETY: window inside the frame (see `sum`).
            let v = unsafe { _mm256_loadu_si256(p.add(o as usize).cast()) };
            acc = _mm256_add_epi64(acc, _mm256_sad_epu8(_mm256_and_si256(v, lanes), zero));
        }
        sum_u64_lanes(acc)
    }

    /// u16: bit `i` selects word lane `i`; the low and high words of each u32 lane go into
    /// two u32 accumulators, each taking one value < 2^16 per window: exact for up to 2^16
    /// windows, then flushed.
    #[target_feature(enable = "avx2")]
    unsafe fn sum_u16(p: *const u16, offs: &[u32], bits: &[u64]) -> u64 {
        let select = _mm256_setr_epi16(
            1,
            2,
            4,
            8,
            16,
            32,
            64,
            128,
            256,
            512,
            1024,
            2048,
            4096,
            8192,
            16384,
            i16::MIN,
        );
        let low = _mm256_set1_epi32(0xFFFF);
        let mut total = 0u64;
        for (oc, bc) in offs.chunks(1 << 16).zip(bits.chunks(1 << 16)) {
            let mut a = _mm256_setzero_si256();
            let mut b = _mm256_setzero_si256();
            for (&o, &m) in oc.iter().zip(bc) {
                let bw = _mm256_set1_epi16(m as u16 as i16);
                let lanes = _mm256_cmpeq_epi16(_mm256_and_si256(bw, select), select);
                // SAFETY: window inside the frame (see `sum`).
                let v = unsafe { _mm256_loadu_si256(p.add(o as usize).cast()) };
                let v = _mm256_and_si256(v, lanes);
                a = _mm256_add_epi32(a, _mm256_and_si256(v, low));
                b = _mm256_add_epi32(b, _mm256_srli_epi32::<16>(v));
            }
            total += sum_u32_lanes(a) + sum_u32_lanes(b);
        }
        total
    }

    /// u32: bit `i` selects lane `i`; both halves widened to u64 lanes.
    #[target_feature(enable = "avx2")]
    unsafe fn sum_u32(p: *const u32, offs: &[u32], bits: &[u64]) -> u64 {
        let select = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        let mut a = _mm256_setzero_si256();
        let mut b = _mm256_setzero_si256();
        for (&o, &m) in offs.iter().zip(bits) {
            let bd = _mm256_set1_epi32(m as u32 as i32);
            let lanes = _mm256_cmpeq_epi32(_mm256_and_si256(bd, select), select);
            // SAFETY: window inside the frame (see `sum`).
            let v = unsafe { _mm256_loadu_si256(p.add(o as usize).cast()) };
            let v = _mm256_and_si256(v, lanes);
            a = _mm256_add_epi64(a, _mm256_cvtepu32_epi64(_mm256_castsi256_si128(v)));
            b = _mm256_add_epi64(b, _mm256_cvtepu32_epi64(_mm256_extracti128_si256::<1>(v)));
        }
        sum_u64_lanes(a).wrapping_add(sum_u64_lanes(b))
    }

    /// Sum of four u64 lanes (wrapping).
    #[target_feature(enable = "avx2")]
    fn sum_u64_lanes(v: __m256i) -> u64 {
        let mut l = [0u64; 4];
        // SAFETY: `l` is 32 bytes.
        unsafe { _mm256_storeu_si256(l.as_mut_ptr().cast(), v) };
        l.iter().fold(0u64, |s, &x| s.wrapping_add(x))
    }

    /// Sum of eight u32 lanes, in u64.
    #[target_feature(enable = "avx2")]
    fn sum_u32_lanes(v: __m256i) -> u64 {
        let mut l = [0u32; 8];
        // SAFETY: `l` is 32 bytes.
        unsafe { _mm256_storeu_si256(l.as_mut_ptr().cast(), v) };
        l.iter().map(|&x| x as u64).sum()
    }
}

#[cfg(not(all(
    target_arch = "x86_64",
    any(target_feature = "avx512bw", target_feature = "avx2")
)))]
mod kernels {
    use stemflow_core::DType;

    /// This build has no window kernel: [`super::WindowMask::new`] gives `None`.
    pub(super) const AVAILABLE: bool = false;
    /// Bytes per window the decomposition would use (tests only).
    pub(super) const WINDOW_BYTES: usize = 64;

    /// No vector kernel on this build: the caller uses the run kernels.
    #[inline]
    pub(super) fn sum(_: DType, _: *const u8, _: &[u32], _: &[u64]) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::Mask;
    use stemflow_core::SigShape;

    fn naive<P: Pixel>(m: &SpanMask, frame: &[P]) -> u64 {
        let cols = m.sig_shape().cols;
        m.spans()
            .iter()
            .flat_map(|s| s.range(cols))
            .map(|i| frame[i].widen())
            .sum()
    }

    fn masks(sig: SigShape) -> Vec<SpanMask> {
        let (cx, cy) = (sig.cols as f64 / 2.0, sig.rows as f64 / 2.0);
        [
            Mask::Disk { cx, cy, r: 7.3 },
            Mask::Ring {
                cx: 3.0,
                cy: cy + 2.0,
                r_inner: 4.0,
                r_outer: 40.0,
            },
            Mask::Rectangle {
                x: 0.0,
                y: 0.0,
                width: sig.cols as f64,
                height: sig.rows as f64,
            },
            // Touches the last pixel: the last window is moved back inside the frame.
            Mask::Rectangle {
                x: sig.cols as f64 - 3.0,
                y: sig.rows as f64 - 2.0,
                width: 3.0,
                height: 2.0,
            },
        ]
        .iter()
        .map(|m| m.spans(sig))
        .collect()
    }

    #[test]
    fn windows_cover_each_mask_pixel_once() {
        for sig in [
            SigShape::new(37, 45),
            SigShape::new(64, 64),
            SigShape::new(5, 20),
        ] {
            for m in masks(sig) {
                for dtype in [DType::U8, DType::U16, DType::U32] {
                    let Some(w) = WindowMask::build(&m, dtype) else {
                        assert!(sig.len() < kernels::WINDOW_BYTES / dtype.size());
                        continue;
                    };
                    let mut covered = vec![0u32; sig.len()];
                    for (&o, &b) in w.offsets.iter().zip(&w.bits) {
                        assert!(o as usize + w.lanes <= sig.len());
                        for i in 0..w.lanes {
                            if b >> i & 1 == 1 {
                                covered[o as usize + i] += 1;
                            }
                        }
                    }
                    let mut want = vec![0u32; sig.len()];
                    for i in m.spans().iter().flat_map(|s| s.range(sig.cols)) {
                        want[i] = 1;
                    }
                    assert_eq!(covered, want, "{sig:?} {dtype:?}");
                }
            }
        }
    }

    #[test]
    fn window_sums_are_exact_where_a_kernel_exists() {
        let sig = SigShape::new(67, 93);
        let n = sig.len();
        let f8: Vec<u8> = (0..n).map(|i| (i * 31 % 256) as u8).collect();
        let f16: Vec<u16> = (0..n)
            .map(|i| u16::MAX - (i * 7919 % 4000) as u16)
            .collect();
        let f32: Vec<u32> = (0..n)
            .map(|i| u32::MAX - (i * 104_729) as u32 % 9999)
            .collect();
        if !kernels::AVAILABLE {
            // No windows at all: masks use the run kernels for whole frames and bands alike.
            assert!(WindowMask::new(&masks(sig)[0], DType::U16).is_none());
            return;
        }
        for m in masks(sig) {
            let check = |got: Option<u64>, want: u64| assert_eq!(got, Some(want));
            check(
                WindowMask::new(&m, DType::U8).unwrap().sum(&f8),
                naive(&m, &f8),
            );
            check(
                WindowMask::new(&m, DType::U16).unwrap().sum(&f16),
                naive(&m, &f16),
            );
            check(
                WindowMask::new(&m, DType::U32).unwrap().sum(&f32),
                naive(&m, &f32),
            );
            // Bands of any height add up to the whole, each pixel once.
            let w = WindowMask::new(&m, DType::U16).unwrap();
            for band in [1, 2, 7, 67] {
                let parts: Option<u64> = (0..67)
                    .step_by(band)
                    .map(|r| w.sum_rows(&f16, r..(r + band).min(67)))
                    .sum();
                check(parts, naive(&m, &f16));
            }
            // The wrong frame length or pixel type never reads: no kernel answers.
            assert_eq!(
                WindowMask::new(&m, DType::U16).unwrap().sum(&f16[1..]),
                None
            );
            assert_eq!(WindowMask::new(&m, DType::U16).unwrap().sum(&f8), None);
        }
    }

    #[test]
    fn float_and_u64_pixels_get_no_windows() {
        let sig = SigShape::new(64, 64);
        for m in masks(sig) {
            for dtype in [DType::U64, DType::F32, DType::F64] {
                assert!(WindowMask::new(&m, dtype).is_none(), "{dtype}");
            }
        }
    }
}
