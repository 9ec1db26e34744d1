//! MPX framing, the envelope of every message on both Merlin sockets (protocols.md §1.2).
//!
//! ```text
//! M P X , d d d d d d d d d d , <payload ...>
//! 0 1 2 3 4 ................ 13 14
//! ```
//!
//! The ten ASCII digits give a length that **counts the comma at byte 14** plus the payload,
//! so exactly `length - 1` payload bytes follow the fixed 15-byte prefix. A bad magic is
//! fatal here (we do not resynchronise by scanning, as LiberTEM does not either): the
//! receiver reports it and the caller reconnects, optionally draining stale bytes first.

/// Size of the fixed prefix `MPX,dddddddddd,` in bytes.
pub const MPX_PREFIX_LEN: usize = 15;

/// The four magic bytes every message starts with.
pub const MPX_MAGIC: &[u8; 4] = b"MPX,";

/// Default upper bound on the length field (1 GiB): larger values mean a corrupt stream,
/// not a frame (a 24-bit quad frame is 1 MiB).
pub const DEFAULT_MAX_MPX_LENGTH: u64 = 1 << 30;

/// The largest value ten decimal digits can carry.
const MAX_ENCODABLE_LENGTH: u64 = 9_999_999_999;

/// Errors parsing or encoding an MPX prefix. Device names are added by the caller (the
/// parser is pure).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum MpxError {
    /// The first four bytes are not `MPX,` (stale bytes, garbage, or a lost stream position).
    #[error("bad MPX magic: expected `MPX,` at a message start, observed `{observed}`")]
    BadMagic {
        /// The first bytes seen, escaped (`\x00`, `\n`, …) so binary data stays readable.
        observed: String,
    },
    /// Bytes 4–13 are not ten ASCII digits.
    #[error("bad MPX length field: expected 10 ASCII digits, observed `{observed}`")]
    NonDigitLength {
        /// The ten bytes seen, escaped.
        observed: String,
    },
    /// Byte 14 is not the comma that ends the prefix.
    #[error("bad MPX prefix: expected `,` after the length digits, observed `{observed}`")]
    BadSeparator {
        /// The byte seen, escaped.
        observed: String,
    },
    /// The length is 0: it must count at least the comma at byte 14.
    #[error("bad MPX length 0: the length counts the comma after the digits, so it is at least 1")]
    ZeroLength,
    /// The length exceeds the configured maximum (a corrupt or misaligned stream).
    #[error("MPX length {length} bytes exceeds the maximum of {max} bytes")]
    TooLong {
        /// The announced length in bytes.
        length: u64,
        /// The configured maximum in bytes.
        max: u64,
    },
    /// Fewer than 15 bytes were given to the parser.
    #[error("MPX prefix needs {MPX_PREFIX_LEN} bytes, got {observed}")]
    Short {
        /// Bytes given.
        observed: usize,
    },
    /// A payload too large for ten length digits.
    #[error("payload of {payload_len} bytes does not fit the 10-digit MPX length field")]
    PayloadTooLarge {
        /// Payload length in bytes.
        payload_len: usize,
    },
}

/// A parsed MPX prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MpxPrefix {
    /// The length field as sent, in bytes: the comma at byte 14 plus the payload.
    pub length: u64,
}

impl MpxPrefix {
    /// Parses the 15-byte prefix at the start of `bytes` (extra bytes are ignored).
    ///
    /// # Errors
    /// [`MpxError::Short`], [`MpxError::BadMagic`], [`MpxError::NonDigitLength`],
    /// [`MpxError::BadSeparator`], [`MpxError::ZeroLength`], or [`MpxError::TooLong`] when
    /// the length exceeds `max_length` bytes.
    pub fn parse(bytes: &[u8], max_length: u64) -> Result<Self, MpxError> {
        if bytes.len() < MPX_PREFIX_LEN {
            return Err(MpxError::Short {
                observed: bytes.len(),
            });
        }
        if &bytes[..4] != MPX_MAGIC {
            return Err(MpxError::BadMagic {
                observed: escape_bytes(&bytes[..MPX_PREFIX_LEN]),
            });
        }
        let digits = &bytes[4..14];
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(MpxError::NonDigitLength {
                observed: escape_bytes(digits),
            });
        }
        if bytes[14] != b',' {
            return Err(MpxError::BadSeparator {
                observed: escape_bytes(&bytes[14..15]),
            });
        }
        // Ten digits fit a u64 (< 10^10), so this cannot overflow.
        let length = digits
            .iter()
            .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
        if length == 0 {
            return Err(MpxError::ZeroLength);
        }
        if length > max_length {
            return Err(MpxError::TooLong {
                length,
                max: max_length,
            });
        }
        Ok(Self { length })
    }

    /// Payload bytes that follow the 15-byte prefix: `length - 1` (§1.2).
    pub fn payload_len(&self) -> usize {
        // `length` is ≥ 1 and bounded by the parser's maximum, which fits in memory.
        usize::try_from(self.length - 1).unwrap_or(usize::MAX)
    }

    /// The prefix for a payload of `payload_len` bytes (`length = payload_len + 1`).
    ///
    /// # Errors
    /// [`MpxError::PayloadTooLarge`] when the length does not fit ten digits.
    pub fn encode(payload_len: usize) -> Result<[u8; MPX_PREFIX_LEN], MpxError> {
        let length = (payload_len as u64)
            .checked_add(1)
            .filter(|l| *l <= MAX_ENCODABLE_LENGTH)
            .ok_or(MpxError::PayloadTooLarge { payload_len })?;
        let mut out = [0u8; MPX_PREFIX_LEN];
        out[..4].copy_from_slice(MPX_MAGIC);
        let mut rest = length;
        for slot in out[4..14].iter_mut().rev() {
            *slot = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        out[14] = b',';
        Ok(out)
    }
}

/// One whole message: prefix and payload (e.g. `MPX,0000000020,SET,COUNTERDEPTH,12`).
///
/// # Errors
/// [`MpxError::PayloadTooLarge`] when the payload does not fit the length field.
pub fn encode_message(payload: &[u8]) -> Result<Vec<u8>, MpxError> {
    let prefix = MpxPrefix::encode(payload.len())?;
    let mut out = Vec::with_capacity(MPX_PREFIX_LEN + payload.len());
    out.extend_from_slice(&prefix);
    out.extend_from_slice(payload);
    Ok(out)
}

/// Renders bytes for an error message: printable ASCII as is, everything else escaped
/// (`\x00`, `\n`, `\t`), at most 64 bytes followed by `…`.
pub fn escape_bytes(bytes: &[u8]) -> String {
    const MAX: usize = 64;
    let mut s = String::new();
    for b in bytes.iter().take(MAX) {
        s.extend(std::ascii::escape_default(*b).map(char::from));
    }
    if bytes.len() > MAX {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example_and_counts_the_comma() {
        let msg = b"MPX,0000000020,SET,COUNTERDEPTH,12";
        let p = MpxPrefix::parse(msg, DEFAULT_MAX_MPX_LENGTH).unwrap();
        assert_eq!(p.length, 20);
        assert_eq!(p.payload_len(), 19);
        assert_eq!(&msg[MPX_PREFIX_LEN..].len(), &p.payload_len());
    }

    #[test]
    fn encode_round_trips() {
        let msg = encode_message(b"SET,COUNTERDEPTH,12").unwrap();
        assert_eq!(msg, b"MPX,0000000020,SET,COUNTERDEPTH,12");
        let p = MpxPrefix::parse(&msg, DEFAULT_MAX_MPX_LENGTH).unwrap();
        assert_eq!(p.payload_len(), 19);
        // A frame: single chip U08, 384-byte header + 65536 pixels.
        let pre = MpxPrefix::encode(384 + 65536).unwrap();
        assert_eq!(&pre, b"MPX,0000065921,");
    }

    #[test]
    fn bad_magic_shows_the_bytes_escaped() {
        let err = MpxPrefix::parse(b"GARBAGE\x00\nGARBAGEGA", 100).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, MpxError::BadMagic { .. }));
        assert!(text.contains("GARBAGE\\x00\\nGARBAG"), "{text}");
    }

    #[test]
    fn rejects_non_digits_separator_zero_and_absurd_lengths() {
        assert!(matches!(
            MpxPrefix::parse(b"MPX,00000000x1,", 100),
            Err(MpxError::NonDigitLength { observed }) if observed == "00000000x1"
        ));
        assert!(matches!(
            MpxPrefix::parse(b"MPX,0000000001;", 100),
            Err(MpxError::BadSeparator { .. })
        ));
        assert_eq!(
            MpxPrefix::parse(b"MPX,0000000000,", 100),
            Err(MpxError::ZeroLength)
        );
        let err = MpxPrefix::parse(b"MPX,9999999999,", DEFAULT_MAX_MPX_LENGTH).unwrap_err();
        assert_eq!(
            err,
            MpxError::TooLong {
                length: 9_999_999_999,
                max: 1 << 30
            }
        );
        assert!(err.to_string().contains("9999999999"));
        assert_eq!(
            MpxPrefix::parse(b"MPX,00", 100),
            Err(MpxError::Short { observed: 6 })
        );
    }

    #[test]
    fn escape_truncates_long_input() {
        let s = escape_bytes(&[b'a'; 100]);
        assert_eq!(s.len(), 64 + '…'.len_utf8());
    }
}
