//! The exact conversion of signed-integer pixels, as stored in a file, to the float
//! frames stemflow processes ([`ElementType::memory_dtype`]): int8 and int16 → float32,
//! int32 → float64, int64 → float64 while the value lies within ±2^53.

use stemflow_core::element::{ByteOrder, ElementType, F64_EXACT_INT};

/// An int64 pixel with no exact float64: its index in the converted block and its value.
pub(super) struct TooLarge {
    /// Index of the pixel in the converted block.
    pub index: usize,
    /// The value stored.
    pub value: i64,
}

/// Decodes `N`-byte elements of `src` in `order` with `le`/`be` and stores them, converted
/// by `conv`, in `dst` (element by element, as many as both hold).
fn convert<const N: usize, T, D>(
    src: &[u8],
    dst: &mut [D],
    order: ByteOrder,
    le: fn([u8; N]) -> T,
    be: fn([u8; N]) -> T,
    conv: fn(T) -> D,
) {
    let (chunks, _) = src.as_chunks::<N>();
    // One loop per byte order keeps the decode branch out of the inner loop.
    match order {
        ByteOrder::Little => dst
            .iter_mut()
            .zip(chunks)
            .for_each(|(d, c)| *d = conv(le(*c))),
        ByteOrder::Big => dst
            .iter_mut()
            .zip(chunks)
            .for_each(|(d, c)| *d = conv(be(*c))),
    }
}

/// Converts the signed-integer pixels `src` (elements of `element` in `order`) into the
/// float pixels `dst` (`element.memory_dtype()`, as many as `src` holds).
///
/// # Errors
/// [`TooLarge`] for the first int64 value beyond ±2^53 (`dst` then holds rounded values
/// and must not be used). A `dst` of another dtype than `element.memory_dtype()`
/// or an `element` that is not signed is a caller's bug; nothing is converted then.
pub(super) fn convert_signed(
    element: ElementType,
    order: ByteOrder,
    src: &[u8],
    dst: stemflow_core::frame::PixelsMut<'_>,
) -> Result<(), TooLarge> {
    use stemflow_core::frame::PixelsMut;
    match (element, dst) {
        (ElementType::I8, PixelsMut::F32(d)) => convert::<1, i8, f32>(
            src,
            d,
            order,
            i8::from_le_bytes,
            i8::from_be_bytes,
            f32::from,
        ),
        (ElementType::I16, PixelsMut::F32(d)) => convert::<2, i16, f32>(
            src,
            d,
            order,
            i16::from_le_bytes,
            i16::from_be_bytes,
            f32::from,
        ),
        (ElementType::I32, PixelsMut::F64(d)) => convert::<4, i32, f64>(
            src,
            d,
            order,
            i32::from_le_bytes,
            i32::from_be_bytes,
            f64::from,
        ),
        (ElementType::I64, PixelsMut::F64(d)) => {
            // Decoded as-is first (a plain vectorisable pass), then checked.
            convert::<8, i64, f64>(src, d, order, i64::from_le_bytes, i64::from_be_bytes, |v| {
                v as f64
            });
            // Rounding to f64 is monotonic and ±2^53 are exact, so an integer beyond ±2^53
            // becomes a float of magnitude ≥ 2^53: only those few are decoded again.
            let limit = F64_EXACT_INT as f64;
            let (chunks, _) = src.as_chunks::<8>();
            for (index, _) in d
                .iter()
                .take(chunks.len())
                .enumerate()
                .filter(|(_, v)| v.abs() >= limit)
            {
                let value = match order {
                    ByteOrder::Little => i64::from_le_bytes(chunks[index]),
                    ByteOrder::Big => i64::from_be_bytes(chunks[index]),
                };
                if value.unsigned_abs() > F64_EXACT_INT {
                    return Err(TooLarge { index, value });
                }
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_values_convert_exactly_in_both_byte_orders() {
        let v16 = [i16::MIN, -1, 0, 1, i16::MAX];
        for order in [ByteOrder::Little, ByteOrder::Big] {
            let bytes: Vec<u8> = v16
                .iter()
                .flat_map(|v| match order {
                    ByteOrder::Little => v.to_le_bytes(),
                    ByteOrder::Big => v.to_be_bytes(),
                })
                .collect();
            let mut out = [0f32; 5];
            assert!(
                convert_signed(
                    ElementType::I16,
                    order,
                    &bytes,
                    stemflow_core::frame::PixelsMut::F32(&mut out)
                )
                .is_ok()
            );
            assert_eq!(out, v16.map(f32::from));
        }
        let limit = F64_EXACT_INT as i64;
        let ok = [-limit, limit, -5];
        let bytes: Vec<u8> = ok.iter().flat_map(|v| v.to_be_bytes()).collect();
        let mut out = [0f64; 3];
        assert!(
            convert_signed(
                ElementType::I64,
                ByteOrder::Big,
                &bytes,
                stemflow_core::frame::PixelsMut::F64(&mut out)
            )
            .is_ok()
        );
        assert_eq!(out, [-(limit as f64), limit as f64, -5.0]);
        let bad = [3, limit + 1, i64::MIN];
        let bytes: Vec<u8> = bad.iter().flat_map(|v| v.to_le_bytes()).collect();
        let e = convert_signed(
            ElementType::I64,
            ByteOrder::Little,
            &bytes,
            stemflow_core::frame::PixelsMut::F64(&mut out),
        )
        .err()
        .unwrap();
        assert_eq!((e.index, e.value), (1, limit + 1));
    }
}
