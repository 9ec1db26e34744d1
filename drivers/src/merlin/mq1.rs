//! The MQ1 frame header (protocols.md §1.6): ASCII, comma-separated, padded with NULs or
//! spaces to a fixed data offset, then the pixel payload.
//!
//! Parsing follows the rules of §1.6: the data offset is read from bytes 11–15 alone; the
//! text is cut at the data offset and split on commas; fields 0–13 are taken by position;
//! the threshold and DAC blocks that follow may be empty, so nothing past field 13 is read
//! by position — the `MQ1A` extension (UTC timestamp, exposure in ns, counter depth) is
//! found by searching for its marker.

use super::mpx::escape_bytes;
use std::fmt;

/// Bytes read to find the data offset: fields 0–2 end at byte 16 with a six-digit sequence
/// number; 32 leaves room for a sequence of up to 13 digits (§1.6 caveat). Every real
/// header is longer (fields 0–13 alone take 85 bytes).
pub const MQ1_MIN_LEN: usize = 32;

/// The magic at the start of every frame header.
pub const MQ1_MAGIC: &[u8; 4] = b"MQ1,";

/// Errors parsing an MQ1 frame header. Device and frame are named by the caller.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Mq1Error {
    /// The header does not start with `MQ1,`.
    #[error("bad frame header magic: expected `MQ1,`, observed `{observed}`")]
    BadMagic {
        /// The first bytes seen, escaped.
        observed: String,
    },
    /// Fewer bytes than the header needs.
    #[error("frame header needs {expected} bytes, got {observed}")]
    Short {
        /// Bytes needed.
        expected: usize,
        /// Bytes given.
        observed: usize,
    },
    /// A field is missing or does not parse.
    #[error("frame header field {index} ({name}): expected {expected}, observed `{observed}`")]
    Field {
        /// Field index (0-based, §1.6 table).
        index: usize,
        /// Field name.
        name: &'static str,
        /// What the field must hold.
        expected: &'static str,
        /// What it held, escaped.
        observed: String,
    },
}

/// Pixel encoding token of field 6 (§1.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// `U01`: 1-bit counter, one byte per pixel.
    U01,
    /// `U08`: one byte per pixel (counter depth 1 or 6).
    U08,
    /// `U16`: big-endian 16-bit (counter depth 12).
    U16,
    /// `U32`: big-endian 32-bit (counter depth 24).
    U32,
    /// `U64`: big-endian 64-bit.
    U64,
    /// `R64`: "raw" mode, pixels packed into big-endian 64-bit words (counter depth from
    /// `MQ1A`).
    R64,
}

impl PixelFormat {
    /// Parses the three-letter token (`U08`, `R64`, …).
    pub fn parse(token: &str) -> Option<Self> {
        Some(match token.trim() {
            "U01" => Self::U01,
            "U08" => Self::U08,
            "U16" => Self::U16,
            "U32" => Self::U32,
            "U64" => Self::U64,
            "R64" => Self::R64,
            _ => return None,
        })
    }
    /// The token as sent.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::U01 => "U01",
            Self::U08 => "U08",
            Self::U16 => "U16",
            Self::U32 => "U32",
            Self::U64 => "U64",
            Self::R64 => "R64",
        }
    }
    /// Bytes per pixel on the wire, `None` for the packed raw format.
    pub const fn bytes_per_pixel(self) -> Option<usize> {
        match self {
            Self::U01 | Self::U08 => Some(1),
            Self::U16 => Some(2),
            Self::U32 => Some(4),
            Self::U64 => Some(8),
            Self::R64 => None,
        }
    }
}

impl fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Chip arrangement of field 7 and of the HDR `Assembly Size` (§1.6, §1.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// `1x1`: one chip, 256 × 256.
    Single,
    /// `2x2`: four chips in a square, 512 × 512 (raw: sent as 1024 × 256 chip rows).
    Quad,
    /// `2x2G`: four chips with the 2-pixel gap cross, 514 × 514.
    QuadWithGap,
    /// `Nx1`: chips side by side in a strip (EELS).
    Strip,
    /// `Nx1G`: a strip with gaps between chips.
    StripWithGap,
}

impl Layout {
    /// Parses the token (leading spaces allowed; case-insensitive: the HDR writes `2X2`
    /// in its key and `2x2` in the value).
    pub fn parse(token: &str) -> Option<Self> {
        Some(match token.trim().to_ascii_lowercase().as_str() {
            "1x1" => Self::Single,
            "2x2" => Self::Quad,
            "2x2g" => Self::QuadWithGap,
            "nx1" => Self::Strip,
            "nx1g" => Self::StripWithGap,
            _ => return None,
        })
    }
    /// The token as Merlin writes it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Single => "1x1",
            Self::Quad => "2x2",
            Self::QuadWithGap => "2x2G",
            Self::Strip => "Nx1",
            Self::StripWithGap => "Nx1G",
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Amplifier gain of field 13.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Gain {
    /// `0`: super low gain mode (SLGM).
    SuperLow,
    /// `1`: low gain mode (LGM).
    Low,
    /// `2`: high gain mode (HGM).
    High,
    /// `3`: super high gain mode (SHGM).
    SuperHigh,
}

/// One parsed MQ1 frame header. Field numbers refer to the §1.6 table.
#[derive(Clone, Debug, PartialEq)]
pub struct Mq1Header {
    /// Field 1: frame sequence number, starting at 1 in each acquisition.
    pub sequence: u64,
    /// Field 2: bytes from the `M` of `MQ1` to the first pixel byte (384 single, 768 quad).
    pub data_offset: usize,
    /// Field 3: number of chips (1 or 4).
    pub num_chips: u32,
    /// Field 4: width in pixels as sent (raw quad: 1024).
    pub width: u32,
    /// Field 5: height in pixels as sent (raw quad: 256).
    pub height: u32,
    /// Field 6: pixel encoding.
    pub pixel_format: PixelFormat,
    /// Field 7: chip layout.
    pub layout: Layout,
    /// Field 8: chip-select bit mask (hex on the wire: `01` single, `0F` quad).
    pub chip_select: u8,
    /// Field 9: local time stamp as sent (`2020-05-18 16:51:49.971626`, µs resolution).
    pub timestamp: String,
    /// Field 10: shutter (exposure) time, s.
    pub exposure_s: f64,
    /// Field 11: counter (0 or 1).
    pub counter: u8,
    /// Field 12: colour mode (0 single, 1 multi).
    pub colour_mode: u8,
    /// Field 13: gain mode, if the code is known.
    pub gain: Option<Gain>,
    /// Fields 14–21: thresholds in keV; empty when the block is empty.
    pub thresholds_kev: Vec<f64>,
    /// `MQ1A`+1: UTC time stamp as sent (ns resolution), if the extension is present.
    pub utc_timestamp: Option<String>,
    /// `MQ1A`+2: shutter time in ns, if the extension is present.
    pub exposure_ns: Option<u64>,
    /// `MQ1A`+3: counter depth in bits (1, 6, 12, 24); needed to decode raw (`R64`) frames.
    pub counter_depth: Option<u32>,
}

/// Reads the data offset (field 2, bytes 11–15 with a six-digit sequence number) from the
/// first [`MQ1_MIN_LEN`] bytes of a frame header without parsing anything else; fields are
/// found by their commas, so a sequence number wider than six digits still works. Checks the
/// `MQ1,` magic on the way.
///
/// # Errors
/// [`Mq1Error::Short`] when the bytes end before field 2 does, [`Mq1Error::BadMagic`],
/// [`Mq1Error::Field`] when the offset is not a number of at least [`MQ1_MIN_LEN`] bytes.
pub fn peek_data_offset(bytes: &[u8]) -> Result<usize, Mq1Error> {
    check_magic(bytes)?;
    let mut commas = bytes
        .iter()
        .enumerate()
        .skip(4)
        .filter(|(_, b)| **b == b',')
        .map(|(i, _)| i);
    let (Some(a), Some(b)) = (commas.next(), commas.next()) else {
        return Err(Mq1Error::Short {
            expected: MQ1_MIN_LEN,
            observed: bytes.len(),
        });
    };
    let field = &bytes[a + 1..b];
    let offset =
        parse_ascii_u64(field).ok_or_else(|| field_err(2, "data offset", "digits", field))?;
    let offset = usize::try_from(offset).unwrap_or(usize::MAX);
    if offset < MQ1_MIN_LEN {
        return Err(field_err(2, "data offset", "at least 32 bytes", field));
    }
    Ok(offset)
}

/// The fields checked on every frame after the first: sequence number and data offset,
/// parsed by splitting on commas (never by fixed width: the sequence may outgrow six
/// digits, §1.6).
///
/// # Errors
/// [`Mq1Error::BadMagic`] or [`Mq1Error::Field`].
pub fn quick_parse(bytes: &[u8]) -> Result<(u64, usize), Mq1Error> {
    check_magic(bytes)?;
    let mut fields = bytes[4..].splitn(3, |b| *b == b',');
    let seq = fields.next().unwrap_or_default();
    let off = fields.next().unwrap_or_default();
    let sequence =
        parse_ascii_u64(seq).ok_or_else(|| field_err(1, "sequence number", "digits", seq))?;
    let offset = parse_ascii_u64(off).ok_or_else(|| field_err(2, "data offset", "digits", off))?;
    Ok((sequence, usize::try_from(offset).unwrap_or(usize::MAX)))
}

impl Mq1Header {
    /// Parses a whole frame header; `bytes` holds at least the data offset's worth of bytes
    /// (more, e.g. the payload, is ignored).
    ///
    /// # Errors
    /// [`Mq1Error`] naming the field, what it must hold and what it held.
    pub fn parse(bytes: &[u8]) -> Result<Self, Mq1Error> {
        let data_offset = peek_data_offset(bytes)?;
        if bytes.len() < data_offset {
            return Err(Mq1Error::Short {
                expected: data_offset,
                observed: bytes.len(),
            });
        }
        // Header text is ASCII; the padding (NUL or space) is trimmed off the last field.
        let text: String = bytes[..data_offset]
            .iter()
            .map(|b| char::from(*b))
            .collect();
        let tokens: Vec<&str> = text.split(',').collect();
        let get = |i: usize| tokens.get(i).copied().unwrap_or("");
        let num = |i: usize, name: &'static str| -> Result<u64, Mq1Error> {
            let t = get(i).trim_matches(pad);
            t.parse::<u64>()
                .map_err(|_| field_err(i, name, "a decimal number", t.as_bytes()))
        };
        let small = |i: usize, name: &'static str| -> Result<u32, Mq1Error> {
            let v = num(i, name)?;
            u32::try_from(v)
                .map_err(|_| field_err(i, name, "a number below 2^32", get(i).as_bytes()))
        };
        let digit = |i: usize, name: &'static str| -> Result<u8, Mq1Error> {
            let v = num(i, name)?;
            u8::try_from(v).map_err(|_| field_err(i, name, "a small number", get(i).as_bytes()))
        };

        let sequence = num(1, "sequence number")?;
        let num_chips = small(3, "number of chips")?;
        let width = small(4, "width")?;
        let height = small(5, "height")?;
        let pixel_format = PixelFormat::parse(get(6)).ok_or_else(|| {
            field_err(
                6,
                "pixel format",
                "U01, U08, U16, U32, U64 or R64",
                get(6).as_bytes(),
            )
        })?;
        let layout = Layout::parse(get(7)).ok_or_else(|| {
            field_err(
                7,
                "layout",
                "1x1, 2x2, 2x2G, Nx1 or Nx1G",
                get(7).as_bytes(),
            )
        })?;
        let chip_select = u8::from_str_radix(get(8).trim(), 16)
            .map_err(|_| field_err(8, "chip select", "a hex byte", get(8).as_bytes()))?;
        let timestamp = get(9).trim().to_string();
        let exposure_s = get(10)
            .trim()
            .parse::<f64>()
            .map_err(|_| field_err(10, "exposure time", "seconds", get(10).as_bytes()))?;
        let counter = digit(11, "counter")?;
        let colour_mode = digit(12, "colour mode")?;
        let gain = match digit(13, "gain")? {
            0 => Some(Gain::SuperLow),
            1 => Some(Gain::Low),
            2 => Some(Gain::High),
            3 => Some(Gain::SuperHigh),
            _ => None,
        };
        // Thresholds are `%E` floats (`1.200000E+2`); the DAC block after them holds bare
        // integers, so a threshold token is one with a mantissa dot or an exponent.
        let thresholds_kev = tokens
            .iter()
            .skip(14)
            .take(8)
            .take_while(|t| t.contains(['.', 'E', 'e']))
            .map_while(|t| t.trim().parse::<f64>().ok())
            .collect();

        let (mut utc_timestamp, mut exposure_ns, mut counter_depth) = (None, None, None);
        if let Some(at) = tokens
            .iter()
            .skip(14)
            .position(|t| t.trim_matches(pad) == "MQ1A")
        {
            let at = at + 14;
            let ext = |k: usize| {
                tokens
                    .get(at + k)
                    .map(|t| t.trim_matches(pad))
                    .filter(|t| !t.is_empty())
            };
            utc_timestamp = ext(1).map(str::to_string);
            exposure_ns = ext(2).and_then(|t| t.trim_end_matches("ns").parse().ok());
            counter_depth = ext(3).and_then(|t| t.parse().ok());
        }

        Ok(Self {
            sequence,
            data_offset,
            num_chips,
            width,
            height,
            pixel_format,
            layout,
            chip_select,
            timestamp,
            exposure_s,
            counter,
            colour_mode,
            gain,
            thresholds_kev,
            utc_timestamp,
            exposure_ns,
            counter_depth,
        })
    }
}

/// Padding and line ends that may trail a header field.
fn pad(c: char) -> bool {
    c == '\0' || c.is_ascii_whitespace()
}

fn check_magic(bytes: &[u8]) -> Result<(), Mq1Error> {
    if bytes.len() < 4 || &bytes[..4] != MQ1_MAGIC {
        return Err(Mq1Error::BadMagic {
            observed: escape_bytes(&bytes[..bytes.len().min(16)]),
        });
    }
    Ok(())
}

fn field_err(
    index: usize,
    name: &'static str,
    expected: &'static str,
    observed: &[u8],
) -> Mq1Error {
    Mq1Error::Field {
        index,
        name,
        expected,
        observed: escape_bytes(observed),
    }
}

/// Parses ASCII decimal digits (no sign, no spaces, at most 19 digits).
fn parse_ascii_u64(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > 19 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        bytes
            .iter()
            .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0')),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A quad raw 1-bit header as recorded (software 0.77), padded with NULs to 768 bytes.
    fn quad_raw_header() -> Vec<u8> {
        let dacs = "3RX,011,511,000,000,000,000,000,000,175,010,200,125,100,100,093,100,099,030,128,004,255,140,128,191,179,511,511";
        let text = format!(
            "MQ1,000001,00768,04,1024,0256,R64,   2x2,0F,2021-04-15 14:44:15.862206,0.001000,0,0,0,\
             2.000000E+0,5.110000E+2,0.000000E+0,0.000000E+0,0.000000E+0,0.000000E+0,0.000000E+0,0.000000E+0,\
             {dacs},{dacs},{dacs},{dacs},MQ1A,2021-04-15T13:44:15.862206301Z,1000000ns,1,"
        );
        let mut b = text.into_bytes();
        b.resize(768, 0);
        b
    }

    #[test]
    fn parses_every_field_of_a_real_header() {
        let h = Mq1Header::parse(&quad_raw_header()).unwrap();
        assert_eq!(h.sequence, 1);
        assert_eq!(h.data_offset, 768);
        assert_eq!((h.num_chips, h.width, h.height), (4, 1024, 256));
        assert_eq!(h.pixel_format, PixelFormat::R64);
        assert_eq!(h.layout, Layout::Quad);
        assert_eq!(h.chip_select, 0x0F);
        assert_eq!(h.timestamp, "2021-04-15 14:44:15.862206");
        assert_eq!(h.exposure_s, 0.001);
        assert_eq!(
            (h.counter, h.colour_mode, h.gain),
            (0, 0, Some(Gain::SuperLow))
        );
        assert_eq!(h.thresholds_kev.len(), 8);
        assert_eq!(h.thresholds_kev[1], 511.0);
        assert_eq!(
            h.utc_timestamp.as_deref(),
            Some("2021-04-15T13:44:15.862206301Z")
        );
        assert_eq!(h.exposure_ns, Some(1_000_000));
        assert_eq!(h.counter_depth, Some(1));
        assert_eq!(quick_parse(&quad_raw_header()).unwrap(), (1, 768));
    }

    #[test]
    fn tolerates_empty_threshold_and_dac_blocks() {
        // Seen in raw 6-bit files: `0,0,0,,MQ1A,...`.
        let mut b = b"MQ1,000007,00384,01,0256,0256,R64,   1x1,01,2020-05-18 16:51:49.971626,0.000555,0,0,0,,MQ1A,2020-05-18T14:51:49.971626178Z,555000ns,6,".to_vec();
        b.resize(384, b' ');
        let h = Mq1Header::parse(&b).unwrap();
        assert_eq!(h.sequence, 7);
        assert!(h.thresholds_kev.is_empty());
        assert_eq!(h.exposure_ns, Some(555_000));
        assert_eq!(h.counter_depth, Some(6));
        assert_eq!(h.layout, Layout::Single);
    }

    #[test]
    fn missing_extension_leaves_counter_depth_unknown() {
        let mut b = b"MQ1,1234567,00384,01,0256,0256,U16,  2x2G,0F,t,0.001,0,0,0".to_vec();
        b.resize(384, 0);
        let h = Mq1Header::parse(&b).unwrap();
        assert_eq!(h.sequence, 1_234_567, "sequence wider than six digits");
        assert_eq!(h.layout, Layout::QuadWithGap);
        assert_eq!(h.counter_depth, None);
        assert_eq!(h.gain, Some(Gain::SuperLow));
    }

    #[test]
    fn errors_name_field_and_value() {
        assert!(matches!(
            Mq1Header::parse(b"MQX,000001,00384,"),
            Err(Mq1Error::BadMagic { .. })
        ));
        assert!(matches!(
            peek_data_offset(b"MQ1,000001,003x4,"),
            Err(Mq1Error::Field { index: 2, .. })
        ));
        assert!(matches!(
            peek_data_offset(b"MQ1,000001,00384"),
            Err(Mq1Error::Short { .. })
        ));
        assert!(matches!(
            Mq1Header::parse(b"MQ1,000001,00384,01"),
            Err(Mq1Error::Short {
                expected: 384,
                observed: 19
            })
        ));
        let mut b = b"MQ1,000001,00100,01,0256,0256,F32,   1x1,01,t,0.001,0,0,0".to_vec();
        b.resize(100, 0);
        let err = Mq1Header::parse(&b).unwrap_err();
        assert!(err.to_string().contains("field 6 (pixel format)"), "{err}");
        assert!(err.to_string().contains("F32"), "{err}");
        assert!(matches!(
            quick_parse(b"MQ1,,00384,"),
            Err(Mq1Error::Field { index: 1, .. })
        ));
    }

    #[test]
    fn tokens_round_trip() {
        for f in [
            PixelFormat::U01,
            PixelFormat::U08,
            PixelFormat::U16,
            PixelFormat::U32,
            PixelFormat::U64,
            PixelFormat::R64,
        ] {
            assert_eq!(PixelFormat::parse(f.as_str()), Some(f));
        }
        for l in [
            Layout::Single,
            Layout::Quad,
            Layout::QuadWithGap,
            Layout::Strip,
            Layout::StripWithGap,
        ] {
            assert_eq!(Layout::parse(&format!("  {l}")), Some(l));
        }
        assert_eq!(Layout::parse("2X2"), Some(Layout::Quad));
    }
}
