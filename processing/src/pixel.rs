//! Pixel element types and the exact integer kernels the built-in UDFs share.
//!
//! Built-ins are written once, generic over [`Pixel`], and pick the element type once per
//! tile with [`Pixel::slice`]. Every kernel here is exact: it accumulates in an integer type
//! wide enough for the number of additions it does (u8 and u16 pixels into `u32` lanes —
//! half the memory traffic of `u64` and twice the SIMD width — in chunks that cannot
//! overflow, then into `u64`). Exact integer sums do not depend on the order of addition,
//! which is what makes results bit-identical whatever the split into tiles and partitions.

use stemflow_core::DType;
use stemflow_core::frame::PixelsRef;

mod sealed {
    pub trait Sealed {}
    impl Sealed for u8 {}
    impl Sealed for u16 {}
    impl Sealed for u32 {}
    impl Sealed for u64 {}
}

/// An integer accumulator lane (`u32` or `u64`).
pub trait Accum: Copy + Default + Send + Sync + std::fmt::Debug + 'static {
    /// The value widened to `u64`.
    fn to_u64(self) -> u64;
}

impl Accum for u32 {
    #[inline]
    fn to_u64(self) -> u64 {
        self as u64
    }
}

impl Accum for u64 {
    #[inline]
    fn to_u64(self) -> u64 {
        self
    }
}

/// A decoded pixel element type: `u8`, `u16`, `u32` or `u64` (sealed).
pub trait Pixel: Copy + Send + Sync + std::fmt::Debug + 'static + sealed::Sealed {
    /// Accumulator lane for per-pixel sums (`u32` for `u8`/`u16`, `u64` otherwise).
    type Acc: Accum;
    /// The matching [`DType`].
    const DTYPE: DType;
    /// How many pixel values can be added into one zeroed [`Pixel::Acc`] without overflow
    /// (`u64::MAX` for `u64` pixels, whose sums wrap at 2^64 — far above real counts).
    const ACC_HEADROOM: u64;
    /// The elements of `p` when it holds this type, `None` otherwise.
    fn slice(p: PixelsRef<'_>) -> Option<&[Self]>;
    /// Exact sum of `s` (wraps at 2^64 for `u64` pixels only).
    fn sum(s: &[Self]) -> u64;
    /// `acc[i] += s[i]` for every `i` (`acc.len() == s.len()`); the caller keeps the number
    /// of additions per lane within [`Pixel::ACC_HEADROOM`].
    fn add_into(acc: &mut [Self::Acc], s: &[Self]);
    /// [`Pixel::add_into`] and [`Pixel::sum`] in one pass over `s`.
    fn add_into_sum(acc: &mut [Self::Acc], s: &[Self]) -> u64;
    /// `acc[i] += a[i] + b[i] + c[i] + d[i]` (four additions per lane): four frames read in
    /// lockstep, so the accumulator crosses the cache once per four frames instead of once
    /// per frame — about twice as fast from memory.
    fn add4_into(acc: &mut [Self::Acc], a: &[Self], b: &[Self], c: &[Self], d: &[Self]);
}

// u8 and u16: `u32` lanes; a chunk of `$chunk` values sums into `u32` without overflow.
macro_rules! narrow_pixel_for {
    (u8) => {
        narrow_pixel_impl!(u8, U8, 1 << 24);
    };
    (u16) => {
        narrow_pixel_impl!(u16, U16, 1 << 16);
    };
}

macro_rules! narrow_pixel_impl {
    ($t:ty, $variant:ident, $chunk:expr) => {
        impl Pixel for $t {
            type Acc = u32;
            const DTYPE: DType = DType::$variant;
            const ACC_HEADROOM: u64 = u32::MAX as u64 / <$t>::MAX as u64;
            #[inline]
            fn slice(p: PixelsRef<'_>) -> Option<&[Self]> {
                match p {
                    PixelsRef::$variant(s) => Some(s),
                    _ => None,
                }
            }
            #[inline]
            fn sum(s: &[Self]) -> u64 {
                // A chunk of `$chunk` values of at most `MAX` sums below 2^32.
                s.chunks($chunk)
                    .map(|c| c.iter().map(|&v| v as u32).sum::<u32>() as u64)
                    .sum()
            }
            #[inline]
            fn add_into(acc: &mut [u32], s: &[Self]) {
                for (a, &v) in acc.iter_mut().zip(s) {
                    *a += v as u32;
                }
            }
            #[inline]
            fn add_into_sum(acc: &mut [u32], s: &[Self]) -> u64 {
                let mut total = 0u64;
                for (ac, sc) in acc.chunks_mut($chunk).zip(s.chunks($chunk)) {
                    let mut t = 0u32;
                    for (a, &v) in ac.iter_mut().zip(sc) {
                        *a += v as u32;
                        t += v as u32;
                    }
                    total += t as u64;
                }
                total
            }
            #[inline]
            fn add4_into(acc: &mut [u32], a: &[Self], b: &[Self], c: &[Self], d: &[Self]) {
                for ((((x, &p), &q), &r), &s) in acc.iter_mut().zip(a).zip(b).zip(c).zip(d) {
                    *x += p as u32 + q as u32 + r as u32 + s as u32;
                }
            }
        }
    };
}

narrow_pixel_for!(u8);
narrow_pixel_for!(u16);

impl Pixel for u32 {
    type Acc = u64;
    const DTYPE: DType = DType::U32;
    const ACC_HEADROOM: u64 = u64::MAX / u32::MAX as u64;
    #[inline]
    fn slice(p: PixelsRef<'_>) -> Option<&[Self]> {
        match p {
            PixelsRef::U32(s) => Some(s),
            _ => None,
        }
    }
    #[inline]
    fn sum(s: &[Self]) -> u64 {
        s.iter().map(|&v| v as u64).sum()
    }
    #[inline]
    fn add_into(acc: &mut [u64], s: &[Self]) {
        for (a, &v) in acc.iter_mut().zip(s) {
            *a += v as u64;
        }
    }
    #[inline]
    fn add_into_sum(acc: &mut [u64], s: &[Self]) -> u64 {
        let mut t = 0u64;
        for (a, &v) in acc.iter_mut().zip(s) {
            *a += v as u64;
            t += v as u64;
        }
        t
    }
    #[inline]
    fn add4_into(acc: &mut [u64], a: &[Self], b: &[Self], c: &[Self], d: &[Self]) {
        for ((((x, &p), &q), &r), &s) in acc.iter_mut().zip(a).zip(b).zip(c).zip(d) {
            *x += p as u64 + q as u64 + r as u64 + s as u64;
        }
    }
}

impl Pixel for u64 {
    type Acc = u64;
    const DTYPE: DType = DType::U64;
    const ACC_HEADROOM: u64 = u64::MAX;
    #[inline]
    fn slice(p: PixelsRef<'_>) -> Option<&[Self]> {
        match p {
            PixelsRef::U64(s) => Some(s),
            _ => None,
        }
    }
    #[inline]
    fn sum(s: &[Self]) -> u64 {
        s.iter().fold(0u64, |t, &v| t.wrapping_add(v))
    }
    #[inline]
    fn add_into(acc: &mut [u64], s: &[Self]) {
        for (a, &v) in acc.iter_mut().zip(s) {
            *a = a.wrapping_add(v);
        }
    }
    #[inline]
    fn add_into_sum(acc: &mut [u64], s: &[Self]) -> u64 {
        let mut t = 0u64;
        for (a, &v) in acc.iter_mut().zip(s) {
            *a = a.wrapping_add(v);
            t = t.wrapping_add(v);
        }
        t
    }
    #[inline]
    fn add4_into(acc: &mut [u64], a: &[Self], b: &[Self], c: &[Self], d: &[Self]) {
        for ((((x, &p), &q), &r), &s) in acc.iter_mut().zip(a).zip(b).zip(c).zip(d) {
            *x = x
                .wrapping_add(p)
                .wrapping_add(q)
                .wrapping_add(r)
                .wrapping_add(s);
        }
    }
}

/// Evaluates `$body` with the type alias `$p` bound to the pixel type of `$dtype`
/// (`u8`, `u16`, `u32`, `u64`): the one place a [`DType`] becomes a generic parameter.
#[macro_export]
macro_rules! with_pixel_type {
    ($dtype:expr, $p:ident => $body:expr) => {
        match $dtype {
            $crate::DType::U8 => {
                type $p = u8;
                $body
            }
            $crate::DType::U16 => {
                type $p = u16;
                $body
            }
            $crate::DType::U32 => {
                type $p = u32;
                $body
            }
            $crate::DType::U64 => {
                type $p = u64;
                $body
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_are_exact_at_the_chunk_limits() {
        // 2^16 + 3 maximal u16 values cross one u32 chunk boundary.
        let s = vec![u16::MAX; (1 << 16) + 3];
        assert_eq!(u16::sum(&s), u16::MAX as u64 * ((1 << 16) + 3));
        let mut acc = vec![0u32; s.len()];
        assert_eq!(u16::add_into_sum(&mut acc, &s), u16::sum(&s));
        assert!(acc.iter().all(|&a| a == u16::MAX as u32));
        let s8 = vec![u8::MAX; 1000];
        assert_eq!(u8::sum(&s8), 255_000);
        let s32 = vec![u32::MAX; 3];
        assert_eq!(u32::sum(&s32), 3 * u32::MAX as u64);
    }

    #[test]
    fn headroom_matches_the_lane_width() {
        // Adding ACC_HEADROOM maximal values must fit; one more must not.
        assert_eq!(u16::ACC_HEADROOM, 65537);
        assert!((u16::ACC_HEADROOM as u128) * (u16::MAX as u128) <= u32::MAX as u128);
        assert!(((u16::ACC_HEADROOM + 1) as u128) * (u16::MAX as u128) > u32::MAX as u128);
        assert!((u8::ACC_HEADROOM as u128) * 255 <= u32::MAX as u128);
        assert!((u32::ACC_HEADROOM as u128) * (u32::MAX as u128) <= u64::MAX as u128);
    }

    #[test]
    fn slice_picks_only_the_matching_type() {
        let v = [1u16, 2, 3];
        assert_eq!(u16::slice(PixelsRef::U16(&v)), Some(&v[..]));
        assert_eq!(u8::slice(PixelsRef::U16(&v)), None);
        assert_eq!(with_pixel_type!(DType::U32, P => P::DTYPE), DType::U32);
    }
}
