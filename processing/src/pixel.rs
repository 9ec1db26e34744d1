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
    /// `acc` as plain `u32` lanes when [`Pixel::Acc`] is `u32` (u8, u16), for the fused
    /// pass ([`crate::fused`]); `None` otherwise.
    fn acc_u32(acc: &mut [Self::Acc]) -> Option<&mut [u32]> {
        let _ = acc;
        None
    }
    /// `acc` as plain `u64` lanes when [`Pixel::Acc`] is `u64` (u32, u64): sparse events
    /// are added into it one by one ([`crate::udf::PartitionTask::add_events`]).
    fn acc_u64(acc: &mut [Self::Acc]) -> Option<&mut [u64]> {
        let _ = acc;
        None
    }
    /// The value as `u64`.
    fn widen(self) -> u64;
    /// Exact sum of `s` (wraps at 2^64 for `u64` pixels only).
    fn sum(s: &[Self]) -> u64;
    /// Exact sum of a short run `s` of at most 2^20 pixels (a mask span within one row),
    /// in one vector loop of fixed lanes: the compiler's unrolled loop for [`Pixel::sum`]
    /// needs 64 or more elements before it starts, so spans of tens of pixels would be
    /// summed one pixel at a time.
    fn span_sum(s: &[Self]) -> u64;
    /// Exact sum of `frame`'s pixels in all `spans` (a frame of `cols` columns; spans inside
    /// it). Lanes stay in registers across spans and a span's tail is added through a lane
    /// mask instead of one pixel at a time, so short spans (rings, disks: tens of pixels)
    /// cost a few instructions each rather than a horizontal reduction and a scalar loop.
    fn spans_sum(frame: &[Self], spans: &[crate::mask::Span], cols: usize) -> u64 {
        spans
            .iter()
            .map(|s| Self::span_sum(&frame[s.range(cols)]))
            .fold(0u64, u64::wrapping_add)
    }
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

/// `TAIL[k][i]` is all ones for `i < k`: keeps the first `k` lanes of a chunk.
const TAIL: [[u32; 16]; 16] = {
    let mut t = [[0u32; 16]; 16];
    let mut k = 0;
    while k < 16 {
        let mut i = 0;
        while i < k {
            t[k][i] = u32::MAX;
            i += 1;
        }
        k += 1;
    }
    t
};

/// [`Pixel::spans_sum`] for pixels that fit `u32` lanes: 16 lanes, flushed to `u64` before
/// any lane could take more than `headroom` values.
#[inline]
fn spans_sum_narrow<T: Copy>(
    frame: &[T],
    spans: &[crate::mask::Span],
    cols: usize,
    wide: impl Fn(T) -> u32 + Copy,
    headroom: u64,
) -> u64 {
    let mut lanes = [0u32; 16];
    let mut in_lanes = 0u64;
    let mut total = 0u64;
    for s in spans {
        let r = s.range(cols);
        // Values a lane takes from this span: one per 16 pixels plus the tail.
        let per_lane = (r.len() / 16 + 1) as u64;
        if in_lanes + per_lane > headroom {
            total += lanes.iter().map(|&l| l as u64).sum::<u64>();
            lanes = [0; 16];
            in_lanes = 0;
        }
        in_lanes += per_lane;
        let mut it = frame[r.clone()].chunks_exact(16);
        for c in &mut it {
            for (l, &v) in lanes.iter_mut().zip(c) {
                *l += wide(v);
            }
        }
        let k = it.remainder().len();
        if k > 0 {
            let at = r.end - k;
            match frame.get(at..at + 16) {
                // The whole chunk exists (it runs past the span into the frame): add it
                // through the mask of its first k lanes.
                Some(c) => {
                    for ((l, &v), &m) in lanes.iter_mut().zip(c).zip(&TAIL[k]) {
                        *l += wide(v) & m;
                    }
                }
                None => total += it.remainder().iter().map(|&v| wide(v) as u64).sum::<u64>(),
            }
        }
    }
    total + lanes.iter().map(|&l| l as u64).sum::<u64>()
}

/// Exact sum of bytes in 64 `u16` lanes, flushed every 256 rows of 64 bytes (256 × 255 <
/// 2^16): each 64-byte row costs two widenings and two adds, half the work of `u32` lanes.
/// Measured, the sum over signal of a 256 × 256 u8 frame in cache: 0.71 µs with `u32`
/// lanes, 0.40 µs with these (`vpsadbw` intrinsics: 0.34 µs, not worth unsafe code).
#[inline]
fn sum_u8(s: &[u8]) -> u64 {
    let mut total = 0u64;
    for block in s.chunks(64 * 256) {
        let mut lanes = [0u16; 64];
        let mut it = block.chunks_exact(64);
        for c in &mut it {
            for (l, &v) in lanes.iter_mut().zip(c) {
                *l += v as u16;
            }
        }
        total += lanes.iter().map(|&l| l as u64).sum::<u64>();
        total += it.remainder().iter().map(|&v| v as u64).sum::<u64>();
    }
    total
}

/// Exact sum of u16 pixels: chunks of 2^16 values of at most 2^16 − 1 sum below 2^32 in
/// `u32` lanes, which the compiler vectorises.
#[inline]
fn sum_u16(s: &[u16]) -> u64 {
    s.chunks(1 << 16)
        .map(|c| c.iter().map(|&v| v as u32).sum::<u32>() as u64)
        .sum()
}

// u8 and u16: `u32` lanes; a chunk of `$chunk` values sums into `u32` without overflow.
macro_rules! narrow_pixel_for {
    (u8) => {
        narrow_pixel_impl!(u8, U8, 1 << 24, sum_u8);
    };
    (u16) => {
        narrow_pixel_impl!(u16, U16, 1 << 16, sum_u16);
    };
}

macro_rules! narrow_pixel_impl {
    ($t:ty, $variant:ident, $chunk:expr, $sum:ident) => {
        impl Pixel for $t {
            type Acc = u32;
            const DTYPE: DType = DType::$variant;
            const ACC_HEADROOM: u64 = u32::MAX as u64 / <$t>::MAX as u64;
            #[inline]
            fn acc_u32(acc: &mut [u32]) -> Option<&mut [u32]> {
                Some(acc)
            }
            #[inline]
            fn widen(self) -> u64 {
                self as u64
            }
            #[inline]
            fn slice(p: PixelsRef<'_>) -> Option<&[Self]> {
                match p {
                    PixelsRef::$variant(s) => Some(s),
                    _ => None,
                }
            }
            #[inline]
            fn sum(s: &[Self]) -> u64 {
                $sum(s)
            }
            #[inline]
            fn span_sum(s: &[Self]) -> u64 {
                // 16 lanes of u32: ≤ 2^16 values of < 2^16 per lane for spans ≤ 2^20.
                let mut lanes = [0u32; 16];
                let mut it = s.chunks_exact(16);
                for c in &mut it {
                    for (l, &v) in lanes.iter_mut().zip(c) {
                        *l += v as u32;
                    }
                }
                let rest: u64 = it.remainder().iter().map(|&v| v as u64).sum();
                lanes.iter().map(|&l| l as u64).sum::<u64>() + rest
            }
            #[inline]
            fn spans_sum(frame: &[Self], spans: &[crate::mask::Span], cols: usize) -> u64 {
                spans_sum_narrow(frame, spans, cols, |v: $t| v as u32, Self::ACC_HEADROOM)
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
    fn acc_u64(acc: &mut [u64]) -> Option<&mut [u64]> {
        Some(acc)
    }
    #[inline]
    fn widen(self) -> u64 {
        self as u64
    }
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
    fn span_sum(s: &[Self]) -> u64 {
        let mut lanes = [0u64; 8];
        let mut it = s.chunks_exact(8);
        for c in &mut it {
            for (l, &v) in lanes.iter_mut().zip(c) {
                *l += v as u64;
            }
        }
        lanes.iter().sum::<u64>() + it.remainder().iter().map(|&v| v as u64).sum::<u64>()
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
    fn widen(self) -> u64 {
        self
    }
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
    fn span_sum(s: &[Self]) -> u64 {
        Self::sum(s)
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

/// Evaluates `$body` with the type alias `$p` bound to the integer pixel type of `$dtype`
/// (`u8`, `u16`, `u32`, `u64`), or `$fbody` with `$f` bound to its float type (`f32`,
/// `f64`): the one place a [`DType`] becomes a generic parameter. Both arms are required,
/// so every UDF says what it does with float data.
#[macro_export]
macro_rules! with_pixel_type {
    ($dtype:expr, $p:ident => $body:expr, $f:ident => $fbody:expr) => {
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
            $crate::DType::F32 => {
                type $f = f32;
                $fbody
            }
            $crate::DType::F64 => {
                type $f = f64;
                $fbody
            }
        }
    };
}

/// Any pixel type, integer or float, for UDFs whose work is the same for both (a frame
/// total, a copy of a frame): the view of a [`PixelsRef`], a value as `f64` and a frame's
/// total as `f64` (integers: the exact sum of [`Pixel::sum`], converted once, exact below
/// 2^53; floats: [`FloatPixel::sum`]).
pub trait AnyPixel: Copy + Send + Sync + std::fmt::Debug + 'static {
    /// The pixels of `p` when they are of this type.
    fn any_slice(p: PixelsRef<'_>) -> Option<&[Self]>;
    /// The value as `f64` (exact for every type but u64 above 2^53).
    fn any_f64(self) -> f64;
    /// The sum of `s` as `f64`.
    fn any_total(s: &[Self]) -> f64;
}

macro_rules! any_pixel {
    ($trait:ident: $($t:ty),*) => {$(
        impl AnyPixel for $t {
            #[inline]
            fn any_slice(p: PixelsRef<'_>) -> Option<&[Self]> {
                <$t as $trait>::slice(p)
            }
            #[inline]
            fn any_f64(self) -> f64 {
                self as f64
            }
            #[inline]
            fn any_total(s: &[Self]) -> f64 {
                <$t as $trait>::sum(s) as f64
            }
        }
    )*};
}

any_pixel!(Pixel: u8, u16, u32, u64);
any_pixel!(FloatPixel: f32, f64);

mod sealed_float {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A floating-point pixel type (`f32`, `f64`): offline data that was processed or
/// calibrated before it reached stemflow (gain-corrected, dark-subtracted), or signed
/// integer files read as floats ([`DType::F32`]). Sums accumulate in `f64`; unlike the
/// integer paths they are not exact, and their last bits depend on the order of the
/// additions (tiling, partitions, threads). A NaN pixel makes every sum it enters NaN, as
/// in NumPy.
pub trait FloatPixel:
    Copy + Send + Sync + std::fmt::Debug + 'static + sealed_float::Sealed
{
    /// The matching [`DType`].
    const DTYPE: DType;
    /// The pixels of `p` when they are of this type.
    fn slice(p: PixelsRef<'_>) -> Option<&[Self]>;
    /// The value as `f64` (exact).
    fn to_f64(self) -> f64;
    /// Sum of `s` in `f64`, eight independent lanes (vectorises; order: lane-wise, then
    /// the lanes, then the remainder).
    #[inline]
    fn sum(s: &[Self]) -> f64 {
        let mut lanes = [0f64; 8];
        let mut it = s.chunks_exact(8);
        for c in &mut it {
            for (l, &v) in lanes.iter_mut().zip(c) {
                *l += v.to_f64();
            }
        }
        let rest: f64 = it.remainder().iter().map(|&v| v.to_f64()).sum();
        lanes.iter().sum::<f64>() + rest
    }
    /// Sum of `frame` (`cols` pixels per row) under `spans` ([`crate::mask::Span`]).
    #[inline]
    fn spans_sum(frame: &[Self], spans: &[crate::mask::Span], cols: usize) -> f64 {
        spans.iter().map(|s| Self::sum(&frame[s.range(cols)])).sum()
    }
    /// `acc[i] += s[i]` in `f64`.
    #[inline]
    fn add_into(acc: &mut [f64], s: &[Self]) {
        for (a, &v) in acc.iter_mut().zip(s) {
            *a += v.to_f64();
        }
    }
}

impl FloatPixel for f32 {
    const DTYPE: DType = DType::F32;
    #[inline]
    fn slice(p: PixelsRef<'_>) -> Option<&[Self]> {
        match p {
            PixelsRef::F32(s) => Some(s),
            _ => None,
        }
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl FloatPixel for f64 {
    const DTYPE: DType = DType::F64;
    #[inline]
    fn slice(p: PixelsRef<'_>) -> Option<&[Self]> {
        match p {
            PixelsRef::F64(s) => Some(s),
            _ => None,
        }
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self
    }
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
        // Past the u16 lanes' flush (256 rows of 64 bytes), with a ragged tail: 300 rows of
        // 255 would overflow a lane without it.
        let long = vec![u8::MAX; 64 * 300 + 17];
        assert_eq!(u8::sum(&long), 255 * long.len() as u64);
        let mixed: Vec<u8> = (0..64 * 513 + 5).map(|i| (i * 31 % 256) as u8).collect();
        assert_eq!(
            u8::sum(&mixed),
            mixed.iter().map(|&v| v as u64).sum::<u64>()
        );
        // Spans that end anywhere, also at the frame's last pixel.
        let frame: Vec<u16> = (0..40 * 50).map(|i| (i * 37 % 65536) as u16).collect();
        let spans: Vec<crate::mask::Span> = (0..40)
            .map(|row| crate::mask::Span {
                row,
                start: row % 7,
                end: 50 - (row % 3) * (row % 2),
            })
            .collect();
        let want: u64 = spans.iter().map(|s| u16::sum(&frame[s.range(50)])).sum();
        assert_eq!(u16::spans_sum(&frame, &spans, 50), want);
        let f8: Vec<u8> = frame.iter().map(|&v| v as u8).collect();
        let want8: u64 = spans.iter().map(|s| u8::sum(&f8[s.range(50)])).sum();
        assert_eq!(u8::spans_sum(&f8, &spans, 50), want8);
        for n in [0, 1, 15, 16, 17, 44, 1000] {
            let v: Vec<u16> = (0..n).map(|i| u16::MAX - i as u16).collect();
            assert_eq!(u16::span_sum(&v), u16::sum(&v), "{n}");
            let w: Vec<u32> = (0..n).map(|i| u32::MAX - i as u32).collect();
            assert_eq!(u32::span_sum(&w), u32::sum(&w), "{n}");
        }
        let s32 = vec![u32::MAX; 3];
        assert_eq!(u32::sum(&s32), 3 * u32::MAX as u64);
    }

    #[test]
    fn float_sums_agree_with_a_plain_sum() {
        let v: Vec<f32> = (0..1001).map(|i| (i as f32) * 0.25 - 100.0).collect();
        let want: f64 = v.iter().map(|&x| x as f64).sum();
        assert!(
            (f32::sum(&v) - want).abs() < 1e-9,
            "{} vs {want}",
            f32::sum(&v)
        );
        let spans = [crate::mask::Span {
            row: 1,
            start: 2,
            end: 7,
        }];
        let frame: Vec<f64> = (0..20).map(|i| i as f64 - 3.5).collect();
        assert_eq!(
            f64::spans_sum(&frame, &spans, 10),
            (12..17).map(|i| i as f64 - 3.5).sum::<f64>()
        );
        let mut acc = vec![1.0; 3];
        f32::add_into(&mut acc, &[0.5, -1.0, 2.0]);
        assert_eq!(acc, [1.5, 0.0, 3.0]);
        assert!(f32::sum(&[1.0, f32::NAN]).is_nan());
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
        assert_eq!(
            with_pixel_type!(DType::U32, P => P::DTYPE, F => F::DTYPE),
            DType::U32
        );
        assert_eq!(
            with_pixel_type!(DType::F32, P => P::DTYPE, F => F::DTYPE),
            DType::F32
        );
        let f = [1.5f32, -2.0];
        assert_eq!(f32::slice(PixelsRef::F32(&f)), Some(&f[..]));
        assert_eq!(f64::slice(PixelsRef::F32(&f)), None);
    }
}
