//! The bitshuffle bit transpose of one block (protocols.md §2.5): `n` elements of `e` bytes
//! (n a multiple of 8) stored as `8·e` bit planes of `n/8` bytes; plane `p = 8·j + k` holds
//! bit `k` of byte `j` of every element, element `8·i + b` in bit `b` of the plane's byte `i`.
//!
//! Decoding ([`untranspose`]) works on groups of 8 elements: for each byte index `j`, the
//! 8 plane bytes `(8·j + k, i)` form an 8 × 8 bit matrix whose transpose holds byte `j` of the
//! 8 elements. The SIMD kernels load 16 (SSE2) or 32 (AVX2) consecutive `i` of the 8 planes
//! of one `j` into 8 registers, transpose all their 8 × 8 bit matrices at once with three
//! rounds of masked shift-and-swap between register pairs, then interleave the `8·e`
//! resulting rows into element order with byte/word/dword/qword unpacks. Encoding
//! ([`transpose`]) runs the same two steps backwards (SSE2): on 16 × 16 byte matrices the
//! unpack network is a transpose, hence its own inverse, and so is the bit transpose.

/// Which implementation of the bit transpose to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// The fastest the CPU supports (detected at run time).
    Auto,
    /// Portable code: 64-bit words used as 8-lane vectors (SWAR), no `std::arch`.
    Scalar,
    /// x86_64 SSE2 (every x86_64 CPU).
    Sse2,
    /// x86_64 AVX2, when the CPU has it (else the next best).
    Avx2,
}

impl Kernel {
    /// The kernel that will actually run for this request on this CPU: `Auto` and
    /// unavailable instruction sets resolve to the best available one.
    pub fn resolve(self) -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2");
            match self {
                Kernel::Scalar => Kernel::Scalar,
                Kernel::Sse2 => Kernel::Sse2,
                Kernel::Auto | Kernel::Avx2 if avx2 => Kernel::Avx2,
                Kernel::Auto | Kernel::Avx2 => Kernel::Sse2,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Kernel::Scalar
        }
    }
}

/// Transposes an 8 × 8 bit matrix held in a u64 (byte `r` = row `r`, bit `c` = column `c`):
/// afterwards byte `c` bit `r` holds what was byte `r` bit `c`. Its own inverse.
#[inline(always)]
fn transpose8(mut x: u64) -> u64 {
    let t = (x ^ (x >> 7)) & 0x00AA_00AA_00AA_00AA;
    x ^= t ^ (t << 7);
    let t = (x ^ (x >> 14)) & 0x0000_CCCC_0000_CCCC;
    x ^= t ^ (t << 14);
    let t = (x ^ (x >> 28)) & 0x0000_0000_F0F0_F0F0;
    x ^ t ^ (t << 28)
}

/// Scalar inverse transpose of groups `g0..n/8` (`nb = n/8` bytes per plane): each group's
/// `8·E` output bytes are assembled in a small array and written with one copy.
#[inline(always)]
fn untranspose_scalar_from<const E: usize>(src: &[u8], dst: &mut [u8], nb: usize, g0: usize) {
    let src = &src[..8 * E * nb];
    let dst = &mut dst[..8 * E * nb];
    let mut unit = [0u8; 32];
    for i in g0..nb {
        for j in 0..E {
            let mut x = 0u64;
            for k in 0..8 {
                x |= (src[(8 * j + k) * nb + i] as u64) << (8 * k);
            }
            let x = transpose8(x).to_le_bytes();
            for b in 0..8 {
                unit[b * E + j] = x[b];
            }
        }
        dst[8 * E * i..8 * E * (i + 1)].copy_from_slice(&unit[..8 * E]);
    }
}

/// Transposes 8 × 8 matrices held in 8 words (word `r` = row `r`). `UNIT` = 1: one bit
/// matrix per byte lane (cell `c` = bit `c` of the lane; the masks keep lanes apart), as the
/// SIMD kernels do per register; `UNIT` = 8: one byte matrix (cell `c` = byte `c`).
/// Afterwards word `c` cell `r` = old word `r` cell `c`.
#[inline(always)]
fn transpose_words<const UNIT: u32>(w: &mut [u64; 8]) {
    let (m4, m2, m1) = if UNIT == 1 {
        (
            0x0F0F_0F0F_0F0F_0F0Fu64,
            0x3333_3333_3333_3333u64,
            0x5555_5555_5555_5555u64,
        )
    } else {
        (
            0x0000_0000_FFFF_FFFFu64,
            0x0000_FFFF_0000_FFFFu64,
            0x00FF_00FF_00FF_00FFu64,
        )
    };
    for (a, s, m) in [
        (0usize, 4usize, m4),
        (1, 4, m4),
        (2, 4, m4),
        (3, 4, m4),
        (0, 2, m2),
        (1, 2, m2),
        (4, 2, m2),
        (5, 2, m2),
        (0, 1, m1),
        (2, 1, m1),
        (4, 1, m1),
        (6, 1, m1),
    ] {
        let shift = s as u32 * UNIT;
        let t = ((w[a] >> shift) ^ w[a + s]) & m;
        w[a + s] ^= t;
        w[a] ^= t << shift;
    }
}

/// Portable inverse transpose of 8 groups at a time (64-bit words as 8-lane vectors, the
/// SIMD algorithm in SWAR form); returns the groups done.
#[inline(always)]
fn untranspose_swar<const E: usize>(src: &[u8], dst: &mut [u8], nb: usize) -> usize {
    let src = &src[..8 * E * nb];
    let dst = &mut dst[..8 * E * nb];
    let mut i = 0;
    let mut unit = [0u8; 8 * 32];
    while i + 8 <= nb {
        for j in 0..E {
            let mut w = [0u64; 8];
            for (k, wk) in w.iter_mut().enumerate() {
                let at = (8 * j + k) * nb + i;
                *wk = u64::from_le_bytes(src[at..at + 8].try_into().unwrap_or_default());
            }
            // Word b, byte g: byte j of element 8·(i + g) + b.
            transpose_words::<1>(&mut w);
            // Word g, byte b: the same, grouped by element group.
            transpose_words::<8>(&mut w);
            if E == 1 {
                for (g, wg) in w.iter().enumerate() {
                    unit[8 * g..8 * g + 8].copy_from_slice(&wg.to_le_bytes());
                }
            } else {
                for (g, wg) in w.iter().enumerate() {
                    for (b, v) in wg.to_le_bytes().into_iter().enumerate() {
                        unit[8 * E * g + b * E + j] = v;
                    }
                }
            }
        }
        dst[8 * E * i..8 * E * (i + 8)].copy_from_slice(&unit[..64 * E]);
        i += 8;
    }
    i
}

/// Scalar inverse transpose for any element size.
fn untranspose_scalar_dyn(src: &[u8], dst: &mut [u8], e: usize, nb: usize) {
    for i in 0..nb {
        for j in 0..e {
            let mut x = 0u64;
            for k in 0..8 {
                x |= (src[(8 * j + k) * nb + i] as u64) << (8 * k);
            }
            let x = transpose8(x);
            for b in 0..8 {
                dst[(8 * i + b) * e + j] = (x >> (8 * b)) as u8;
            }
        }
    }
}

/// Inverse bit transpose of one block: `src` (bit planes) to `dst` (elements), both
/// `n · e` bytes with `n` a multiple of 8. Panics (a bug of ours, never input-driven) when
/// the lengths disagree; callers check them.
pub fn untranspose(src: &[u8], dst: &mut [u8], e: usize, kernel: Kernel) {
    assert!(e > 0 && src.len() == dst.len() && src.len().is_multiple_of(8 * e));
    let nb = src.len() / (8 * e);
    let mut done = simd(src, dst, e, nb, kernel);
    if kernel == Kernel::Scalar || done == 0 {
        done = match e {
            1 => untranspose_swar::<1>(src, dst, nb),
            2 => untranspose_swar::<2>(src, dst, nb),
            4 => untranspose_swar::<4>(src, dst, nb),
            _ => 0,
        };
    }
    match e {
        1 => untranspose_scalar_from::<1>(src, dst, nb, done),
        2 => untranspose_scalar_from::<2>(src, dst, nb, done),
        4 => untranspose_scalar_from::<4>(src, dst, nb, done),
        _ => untranspose_scalar_dyn(src, dst, e, nb),
    }
}

/// Runs the SIMD kernel chosen by `kernel`; returns the groups of 8 elements it did (a
/// prefix: the scalar code finishes the rest).
#[cfg(target_arch = "x86_64")]
fn simd(src: &[u8], dst: &mut [u8], e: usize, nb: usize, kernel: Kernel) -> usize {
    use x86::*;
    match (kernel.resolve(), e) {
        // SAFETY (all arms): lengths were checked by `untranspose`; AVX2 only when detected.
        (Kernel::Avx2, 1) => unsafe { untranspose_avx2::<1, 8>(src, dst, nb) },
        (Kernel::Avx2, 2) => unsafe { untranspose_avx2::<2, 16>(src, dst, nb) },
        (Kernel::Avx2, 4) => unsafe { untranspose_avx2::<4, 32>(src, dst, nb) },
        (Kernel::Sse2, 1) => unsafe { untranspose_sse2::<1, 8>(src, dst, nb) },
        (Kernel::Sse2, 2) => unsafe { untranspose_sse2::<2, 16>(src, dst, nb) },
        (Kernel::Sse2, 4) => unsafe { untranspose_sse2::<4, 32>(src, dst, nb) },
        _ => 0,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn simd(_: &[u8], _: &mut [u8], _: usize, _: usize, _: Kernel) -> usize {
    0
}

/// Forward bit transpose of one block (elements to bit planes), for the encoder; scalar.
pub fn transpose(src: &[u8], dst: &mut [u8], e: usize) {
    assert!(e > 0 && src.len() == dst.len() && src.len().is_multiple_of(8 * e));
    let nb = src.len() / (8 * e);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: lengths checked above; SSE2 is part of x86_64.
    let done = unsafe {
        match e {
            1 => x86::transpose_sse2::<1>(src, dst, nb),
            2 => x86::transpose_sse2::<2>(src, dst, nb),
            4 => x86::transpose_sse2::<4>(src, dst, nb),
            _ => 0,
        }
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    match e {
        1 => transpose_fixed::<1>(src, dst, nb, done),
        2 => transpose_fixed::<2>(src, dst, nb, done),
        4 => transpose_fixed::<4>(src, dst, nb, done),
        _ => {
            for i in 0..nb {
                for j in 0..e {
                    let mut x = 0u64;
                    for b in 0..8 {
                        x |= (src[(8 * i + b) * e + j] as u64) << (8 * b);
                    }
                    let x = transpose8(x);
                    for k in 0..8 {
                        dst[(8 * j + k) * nb + i] = (x >> (8 * k)) as u8;
                    }
                }
            }
        }
    }
}

/// [`transpose`] for a fixed element size from group `g0` on: each group's `8·E` input
/// bytes are read with one copy.
#[inline(always)]
fn transpose_fixed<const E: usize>(src: &[u8], dst: &mut [u8], nb: usize, g0: usize) {
    let src = &src[..8 * E * nb];
    let dst = &mut dst[..8 * E * nb];
    let mut unit = [0u8; 32];
    for i in g0..nb {
        unit[..8 * E].copy_from_slice(&src[8 * E * i..8 * E * (i + 1)]);
        for j in 0..E {
            let mut x = 0u64;
            for b in 0..8 {
                x |= (unit[b * E + j] as u64) << (8 * b);
            }
            let x = transpose8(x).to_le_bytes();
            for (k, &v) in x.iter().enumerate() {
                dst[(8 * j + k) * nb + i] = v;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// One masked shift-and-swap round between rows `$a` and `$b` of the bit transpose.
    macro_rules! swap {
        ($v:ident, $and:ident, $xor:ident, $srl:ident, $sll:ident, $set1:ident, $a:literal, $b:literal, $s:literal, $m:literal) => {{
            let t = $and($xor($srl::<$s>($v[$a]), $v[$b]), $set1($m));
            $v[$b] = $xor($v[$b], t);
            $v[$a] = $xor($v[$a], $sll::<$s>(t));
        }};
    }

    /// Generates the 8 × 8 bit-matrix transpose for one register width.
    macro_rules! bit_transpose {
        ($name:ident, $feat:literal, $v:ty, $and:ident, $xor:ident, $srl:ident, $sll:ident, $set1:ident) => {
            /// Transposes the 8 × 8 bit matrices formed by byte lane `l` of the 8 registers
            /// (register `k` = row `k`): afterwards register `b` bit `k` = old register `k`
            /// bit `b`, in every byte lane.
            #[target_feature(enable = $feat)]
            #[inline]
            fn $name(v: &mut [$v; 8]) {
                swap!(v, $and, $xor, $srl, $sll, $set1, 0, 4, 4, 0x0F);
                swap!(v, $and, $xor, $srl, $sll, $set1, 1, 5, 4, 0x0F);
                swap!(v, $and, $xor, $srl, $sll, $set1, 2, 6, 4, 0x0F);
                swap!(v, $and, $xor, $srl, $sll, $set1, 3, 7, 4, 0x0F);
                swap!(v, $and, $xor, $srl, $sll, $set1, 0, 2, 2, 0x33);
                swap!(v, $and, $xor, $srl, $sll, $set1, 1, 3, 2, 0x33);
                swap!(v, $and, $xor, $srl, $sll, $set1, 4, 6, 2, 0x33);
                swap!(v, $and, $xor, $srl, $sll, $set1, 5, 7, 2, 0x33);
                swap!(v, $and, $xor, $srl, $sll, $set1, 0, 1, 1, 0x55);
                swap!(v, $and, $xor, $srl, $sll, $set1, 2, 3, 1, 0x55);
                swap!(v, $and, $xor, $srl, $sll, $set1, 4, 5, 1, 0x55);
                swap!(v, $and, $xor, $srl, $sll, $set1, 6, 7, 1, 0x55);
            }
        };
    }

    bit_transpose!(
        bits_sse2,
        "sse2",
        __m128i,
        _mm_and_si128,
        _mm_xor_si128,
        _mm_srli_epi16,
        _mm_slli_epi16,
        _mm_set1_epi8
    );
    bit_transpose!(
        bits_avx2,
        "avx2",
        __m256i,
        _mm256_and_si256,
        _mm256_xor_si256,
        _mm256_srli_epi16,
        _mm256_slli_epi16,
        _mm256_set1_epi8
    );

    /// One unpack level of the interleave: row groups `2·g2`, `2·g2 + 1` (each `h`
    /// registers, one per range of `i`) merge into group `g2` with twice the rows.
    macro_rules! level {
        ($v:ident, $z:ident, $r:expr, $lvl:expr, $lo:ident, $hi:ident) => {{
            let g = $r >> $lvl;
            let h = 1usize << $lvl;
            let mut n = [$z(); R];
            for g2 in 0..g / 2 {
                for hh in 0..h {
                    let a = $v[(2 * g2) * h + hh];
                    let b = $v[(2 * g2 + 1) * h + hh];
                    n[g2 * 2 * h + 2 * hh] = $lo(a, b);
                    n[g2 * 2 * h + 2 * hh + 1] = $hi(a, b);
                }
            }
            *$v = n;
        }};
    }

    /// Generates the byte interleave of R rows (R = 8·E ∈ {8, 16, 32}): row `r` holds byte
    /// `r` of the output unit of each `i`; afterwards the registers, read in the order
    /// `out[g·H + h]` with H = R / G, hold the units of consecutive `i` (per 128-bit lane).
    macro_rules! interleave {
        ($name:ident, $feat:literal, $v:ty, $z:ident, [$l8:ident, $h8:ident], [$l16:ident, $h16:ident], [$l32:ident, $h32:ident], [$l64:ident, $h64:ident]) => {
            /// Interleaves `R` rows into element order, four unpack levels at most; returns the
            /// number of row groups `G` left (1, or 2 for R = 32).
            #[target_feature(enable = $feat)]
            #[inline]
            fn $name<const R: usize>(v: &mut [$v; R]) -> usize {
                level!(v, $z, R, 0, $l8, $h8);
                level!(v, $z, R, 1, $l16, $h16);
                level!(v, $z, R, 2, $l32, $h32);
                if R >= 16 {
                    level!(v, $z, R, 3, $l64, $h64);
                }
                if R > 16 { R / 16 } else { 1 }
            }
        };
    }

    interleave!(
        interleave_sse2,
        "sse2",
        __m128i,
        _mm_setzero_si128,
        [_mm_unpacklo_epi8, _mm_unpackhi_epi8],
        [_mm_unpacklo_epi16, _mm_unpackhi_epi16],
        [_mm_unpacklo_epi32, _mm_unpackhi_epi32],
        [_mm_unpacklo_epi64, _mm_unpackhi_epi64]
    );
    interleave!(
        interleave_avx2,
        "avx2",
        __m256i,
        _mm256_setzero_si256,
        [_mm256_unpacklo_epi8, _mm256_unpackhi_epi8],
        [_mm256_unpacklo_epi16, _mm256_unpackhi_epi16],
        [_mm256_unpacklo_epi32, _mm256_unpackhi_epi32],
        [_mm256_unpacklo_epi64, _mm256_unpackhi_epi64]
    );

    /// Index of the register holding output chunk `q` (16 bytes per lane) after the
    /// interleave left `g` row groups of `R / g` registers each.
    #[inline(always)]
    fn chunk<const R: usize>(q: usize, g: usize) -> usize {
        if g == 1 { q } else { (q % g) * (R / g) + q / g }
    }

    /// Forward transpose (elements to bit planes) with SSE2, for the encoder: 16 groups of 8
    /// elements per step (32 for E = 1). The element-order bytes of 16 groups form 16 × 16
    /// byte matrices, which the interleave network transposes back into rows (a transpose is
    /// its own inverse), then the bit transpose turns rows into planes. Returns the groups
    /// done.
    ///
    /// # Safety
    /// `src` and `dst` hold `8 · E · nb` bytes; E ∈ {1, 2, 4}.
    #[target_feature(enable = "sse2")]
    pub unsafe fn transpose_sse2<const E: usize>(src: &[u8], dst: &mut [u8], nb: usize) -> usize {
        debug_assert!(src.len() >= 8 * E * nb && dst.len() >= 8 * E * nb);
        let sp = src.as_ptr();
        let dp = dst.as_mut_ptr();
        let step = if E == 1 { 32 } else { 16 };
        let mut i = 0;
        while i + step <= nb {
            let mut rows = [_mm_setzero_si128(); 32];
            for half in 0..E.div_ceil(2) {
                let mut o = [_mm_setzero_si128(); 16];
                // SAFETY (loads): every address + 16 lies within the 8·E·(i + step) bytes of
                // the groups of this step.
                unsafe {
                    if E == 1 {
                        for q in 0..8 {
                            let a = _mm_loadu_si128(sp.add((i + 2 * q) * 8) as *const _);
                            let b = _mm_loadu_si128(sp.add((i + 16 + 2 * q) * 8) as *const _);
                            o[2 * q] = _mm_unpacklo_epi64(a, b);
                            o[2 * q + 1] = _mm_unpackhi_epi64(a, b);
                        }
                    } else {
                        for (h, oh) in o.iter_mut().enumerate() {
                            *oh = _mm_loadu_si128(sp.add((i + h) * 8 * E + 16 * half) as *const _);
                        }
                    }
                }
                interleave_sse2::<16>(&mut o);
                rows[16 * half..16 * half + 16].copy_from_slice(&o);
            }
            // Rows: E = 1: b for groups i.. (0..8) and i + 16.. (8..16); else b·E + j.
            let sets = if E == 1 { 2 } else { E };
            for j in 0..sets {
                let mut v = [_mm_setzero_si128(); 8];
                for (b, vb) in v.iter_mut().enumerate() {
                    *vb = if E == 1 {
                        rows[8 * j + b]
                    } else {
                        rows[b * E + j]
                    };
                }
                bits_sse2(&mut v);
                for (k, vk) in v.iter().enumerate() {
                    let at = if E == 1 {
                        k * nb + i + 16 * j
                    } else {
                        (8 * j + k) * nb + i
                    };
                    // SAFETY: plane bytes at + 16 <= 8·E·nb.
                    unsafe { _mm_storeu_si128(dp.add(at) as *mut _, *vk) };
                }
            }
            i += step;
        }
        i
    }

    /// SSE2 kernel: 16 groups of 8 elements per iteration. Returns the groups done.
    ///
    /// # Safety
    /// `src` and `dst` hold `8 · E · nb` bytes; `R == 8 · E`.
    #[target_feature(enable = "sse2")]
    pub unsafe fn untranspose_sse2<const E: usize, const R: usize>(
        src: &[u8],
        dst: &mut [u8],
        nb: usize,
    ) -> usize {
        debug_assert!(R == 8 * E && src.len() >= R * nb && dst.len() >= R * nb);
        let sp = src.as_ptr();
        let dp = dst.as_mut_ptr();
        let mut i = 0;
        while i + 16 <= nb {
            let mut rows = [_mm_setzero_si128(); R];
            for j in 0..E {
                let mut v = [_mm_setzero_si128(); 8];
                for (k, vk) in v.iter_mut().enumerate() {
                    // SAFETY: (8j + k)·nb + i + 16 <= 8·E·nb.
                    *vk = unsafe { _mm_loadu_si128(sp.add((8 * j + k) * nb + i) as *const _) };
                }
                bits_sse2(&mut v);
                for (b, vb) in v.iter().enumerate() {
                    rows[b * E + j] = *vb;
                }
            }
            // For R = 32 the two 16-row groups never mix: interleave them one after the
            // other, so each fits the 16 registers.
            let g = if R == 32 {
                let (a, b) = rows.split_at_mut(16);
                if let (Ok(a), Ok(b)) = (<&mut [_; 16]>::try_from(a), <&mut [_; 16]>::try_from(b)) {
                    interleave_sse2::<16>(a);
                    interleave_sse2::<16>(b);
                }
                2
            } else {
                interleave_sse2::<R>(&mut rows)
            };
            for q in 0..R {
                // SAFETY: i·R + 16·R <= nb·R.
                unsafe {
                    _mm_storeu_si128(dp.add(i * R + 16 * q) as *mut _, rows[chunk::<R>(q, g)])
                };
            }
            i += 16;
        }
        i
    }

    /// AVX2 kernel: 32 groups of 8 elements per iteration (two independent 16-group halves,
    /// one per 128-bit lane). Returns the groups done.
    ///
    /// # Safety
    /// The CPU has AVX2; `src` and `dst` hold `8 · E · nb` bytes; `R == 8 · E`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn untranspose_avx2<const E: usize, const R: usize>(
        src: &[u8],
        dst: &mut [u8],
        nb: usize,
    ) -> usize {
        debug_assert!(R == 8 * E && src.len() >= R * nb && dst.len() >= R * nb);
        let sp = src.as_ptr();
        let dp = dst.as_mut_ptr();
        let mut i = 0;
        while i + 32 <= nb {
            let mut rows = [_mm256_setzero_si256(); R];
            for j in 0..E {
                let mut v = [_mm256_setzero_si256(); 8];
                for (k, vk) in v.iter_mut().enumerate() {
                    // SAFETY: (8j + k)·nb + i + 32 <= 8·E·nb.
                    *vk = unsafe { _mm256_loadu_si256(sp.add((8 * j + k) * nb + i) as *const _) };
                }
                bits_avx2(&mut v);
                for (b, vb) in v.iter().enumerate() {
                    rows[b * E + j] = *vb;
                }
            }
            // For R = 32 the two 16-row groups never mix: interleave them one after the
            // other, so each fits the 16 registers.
            let g = if R == 32 {
                let (a, b) = rows.split_at_mut(16);
                if let (Ok(a), Ok(b)) = (<&mut [_; 16]>::try_from(a), <&mut [_; 16]>::try_from(b)) {
                    interleave_avx2::<16>(a);
                    interleave_avx2::<16>(b);
                }
                2
            } else {
                interleave_avx2::<R>(&mut rows)
            };
            // Lane 0 holds groups i..i+16, lane 1 groups i+16..i+32, each as R chunks of 16
            // bytes; pairs of consecutive chunks are joined into 32-byte stores.
            for q in (0..R).step_by(2) {
                let a = rows[chunk::<R>(q, g)];
                let b = rows[chunk::<R>(q + 1, g)];
                let lo = _mm256_permute2x128_si256::<0x20>(a, b);
                let hi = _mm256_permute2x128_si256::<0x31>(a, b);
                // SAFETY: (i + 32)·R <= nb·R.
                unsafe {
                    _mm256_storeu_si256(dp.add(i * R + 16 * q) as *mut _, lo);
                    _mm256_storeu_si256(dp.add((i + 16) * R + 16 * q) as *mut _, hi);
                }
            }
            i += 32;
        }
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect()
    }

    /// The bit-plane layout written out literally from protocols.md §2.5.
    fn reference_planes(data: &[u8], e: usize) -> Vec<u8> {
        let n = data.len() / e;
        let nb = n / 8;
        let mut out = vec![0u8; data.len()];
        for el in 0..n {
            for j in 0..e {
                for k in 0..8 {
                    let bit = (data[el * e + j] >> k) & 1;
                    let p = 8 * j + k;
                    out[p * nb + el / 8] |= bit << (el % 8);
                }
            }
        }
        out
    }

    #[test]
    fn transpose_matches_the_documented_layout_and_every_kernel_inverts_it() {
        for e in [1usize, 2, 4, 8] {
            for n in [8usize, 64, 128, 136, 256, 512, 520, 4096, 4104] {
                let data = noise(n * e, (n * 31 + e) as u64);
                let planes = reference_planes(&data, e);
                let mut t = vec![0u8; data.len()];
                transpose(&data, &mut t, e);
                assert_eq!(t, planes, "e={e} n={n}");
                for kernel in [Kernel::Scalar, Kernel::Sse2, Kernel::Avx2, Kernel::Auto] {
                    let mut back = vec![0u8; data.len()];
                    untranspose(&planes, &mut back, e, kernel);
                    assert_eq!(back, data, "e={e} n={n} {kernel:?}");
                }
            }
        }
    }
}
