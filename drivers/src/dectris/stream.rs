//! DECTRIS stream messages: v1 ("legacy", JSON parts + binary, protocols.md §2.4) and
//! v2 (CBOR, §2.6). Pure parsing, no I/O; every error names the part it came from.
//!
//! Stream v1, per series: a global header (`dheader-1.0`, then, for `header_detail`
//! `basic`/`all`, the detector configuration, and for `all` three array header/blob pairs),
//! then per frame four parts (`dimage-1.0`, `dimage_d-1.0`, the blob, `dconfig-1.0`), then
//! `dseries_end-1.0`. Unknown keys are ignored.
//!
//! Stream v2: one CBOR map per message, `type` = `start` / `image` / `end`; image data are
//! tag-40 multi-dimensional arrays around RFC 8746 typed arrays, optionally compressed with
//! the DECTRIS tag 56500 `[algorithm, element size, bytes]`.

use super::codec::{Compression, Encoding};
use ciborium::value::{Integer, Value};
use serde::Deserialize;
use stemflow_core::{DType, SigShape};

/// Errors parsing a stream message; each names the part (`dheader-1.0`, `dimage_d-1.0`,
/// `detector config`, `CBOR image`, …) and what was wrong.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StreamError {
    /// The part is not valid JSON of the expected structure (serde's message names the
    /// field and position).
    #[error("{part}: malformed JSON: {detail}")]
    Json {
        /// The part.
        part: String,
        /// What the parser reported.
        detail: String,
    },
    /// The part's `htype` is not the one its position requires.
    #[error("{part}: expected htype `{expected}`, observed `{observed}`")]
    Htype {
        /// The part (by position).
        part: String,
        /// The htype required here.
        expected: String,
        /// The htype found (empty when absent).
        observed: String,
    },
    /// A field has a value outside what the protocol allows.
    #[error("{part}: field `{field}` is {observed}, expected {expected}")]
    Field {
        /// The part.
        part: String,
        /// The field.
        field: String,
        /// What is allowed.
        expected: String,
        /// What was found.
        observed: String,
    },
    /// The message is not valid CBOR of the expected structure.
    #[error("{part}: malformed CBOR: {detail}")]
    Cbor {
        /// The message (`CBOR start`, `CBOR image`, …).
        part: String,
        /// What was wrong.
        detail: String,
    },
}

fn json_err(part: &str, e: impl std::fmt::Display) -> StreamError {
    StreamError::Json {
        part: part.to_string(),
        detail: e.to_string(),
    }
}

fn field_err(part: &str, field: &str, expected: &str, observed: impl Into<String>) -> StreamError {
    StreamError::Field {
        part: part.to_string(),
        field: field.to_string(),
        expected: expected.to_string(),
        observed: observed.into(),
    }
}

/// How much of the detector's state the global header carries (stream config
/// `header_detail`, §2.3, §2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeaderDetail {
    /// Part 1, the configuration, and flatfield, pixel mask and count-rate table (8 parts).
    All,
    /// Part 1 and the configuration (2 parts); what LiberTEM always sets.
    Basic,
    /// Part 1 only: no shape, bit depth or frame count before the first frame.
    None,
}

impl HeaderDetail {
    /// The REST/stream spelling (`all`, `basic`, `none`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Basic => "basic",
            Self::None => "none",
        }
    }

    /// Parses the REST/stream spelling.
    ///
    /// # Errors
    /// [`StreamError::Field`] naming `header_detail` for anything else.
    pub fn parse(s: &str) -> Result<Self, StreamError> {
        match s {
            "all" => Ok(Self::All),
            "basic" => Ok(Self::Basic),
            "none" => Ok(Self::None),
            other => Err(field_err(
                "dheader-1.0",
                "header_detail",
                "`all`, `basic` or `none`",
                format!("`{other}`"),
            )),
        }
    }
}

/// The DCU trigger modes (§2.3 "Trigger modes and frame count").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TriggerMode {
    /// One image per external trigger pulse; `ntrigger` images.
    Exte,
    /// One external trigger starts `nimages`; `nimages × ntrigger` images.
    Exts,
    /// One image per software `trigger`; `ntrigger` images.
    Inte,
    /// One software `trigger` starts `nimages`; `nimages × ntrigger` images.
    Ints,
}

impl TriggerMode {
    /// The SIMPLON spelling (`exte`, `exts`, `inte`, `ints`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Exte => "exte",
            Self::Exts => "exts",
            Self::Inte => "inte",
            Self::Ints => "ints",
        }
    }

    /// Parses the SIMPLON spelling.
    ///
    /// # Errors
    /// [`StreamError::Field`] naming `trigger_mode` for anything else.
    pub fn parse(s: &str) -> Result<Self, StreamError> {
        match s {
            "exte" => Ok(Self::Exte),
            "exts" => Ok(Self::Exts),
            "inte" => Ok(Self::Inte),
            "ints" => Ok(Self::Ints),
            other => Err(field_err(
                "detector config",
                "trigger_mode",
                "`exte`, `exts`, `inte` or `ints`",
                format!("`{other}`"),
            )),
        }
    }

    /// Images in a series with these counts (LiberTEM's formula, §2.3): `ntrigger` for
    /// `exte`/`inte`, `nimages × ntrigger` for `exts`/`ints`.
    pub const fn images(self, nimages: u64, ntrigger: u64) -> u64 {
        match self {
            Self::Exte | Self::Inte => ntrigger,
            Self::Exts | Self::Ints => nimages.saturating_mul(ntrigger),
        }
    }
}

/// `dheader-1.0`, part 1 of the global header (sent on `arm`, §2.4).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct GlobalHeader {
    /// Series id; equals the `sequence id` returned by `arm`.
    pub series: u64,
    /// How many header parts follow (`all`, `basic`, `none`).
    #[serde(deserialize_with = "de_detail")]
    pub header_detail: HeaderDetail,
}

fn de_detail<'de, D: serde::Deserializer<'de>>(d: D) -> Result<HeaderDetail, D::Error> {
    let s = String::deserialize(d)?;
    HeaderDetail::parse(&s).map_err(serde::de::Error::custom)
}

/// The detector configuration part of the global header (`basic`/`all`, §2.4): the values
/// of the config API; only the fields the receiver needs are typed, the rest kept as text.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct DetectorConfig {
    /// Images per trigger.
    pub nimages: Option<u64>,
    /// Triggers per series.
    pub ntrigger: Option<u64>,
    /// Trigger mode (`exte`, …).
    pub trigger_mode: Option<String>,
    /// Frame width, pixels.
    pub x_pixels_in_detector: Option<u64>,
    /// Frame height, pixels.
    pub y_pixels_in_detector: Option<u64>,
    /// Bits per pixel of the images (8, 16, 32).
    pub bit_depth_image: Option<u32>,
    /// Exposure, s.
    pub count_time: Option<f64>,
    /// Frame period, s.
    pub frame_time: Option<f64>,
    /// Compression (`bslz4`, `lz4`, `none`).
    pub compression: Option<String>,
    /// Detector description (e.g. "Dectris QUADRO Si 250K").
    pub description: Option<String>,
}

impl DetectorConfig {
    /// Images in the series (§2.3): from `trigger_mode`, `nimages` and `ntrigger`.
    ///
    /// # Errors
    /// [`StreamError::Field`] when `trigger_mode` is missing or unknown, or a count it needs
    /// is missing.
    pub fn expected_images(&self) -> Result<u64, StreamError> {
        let mode = TriggerMode::parse(self.trigger_mode.as_deref().unwrap_or(""))?;
        let need = |v: Option<u64>, f: &str| {
            v.ok_or_else(|| field_err("detector config", f, "a count", "missing"))
        };
        let ntrigger = need(self.ntrigger, "ntrigger")?;
        let nimages = match mode {
            TriggerMode::Exte | TriggerMode::Inte => self.nimages.unwrap_or(1),
            _ => need(self.nimages, "nimages")?,
        };
        Ok(mode.images(nimages, ntrigger))
    }

    /// Frame shape (rows = `y_pixels_in_detector`, cols = `x_pixels_in_detector`), if both
    /// are given.
    pub fn sig_shape(&self) -> Option<SigShape> {
        Some(SigShape::new(
            usize::try_from(self.y_pixels_in_detector?).ok()?,
            usize::try_from(self.x_pixels_in_detector?).ok()?,
        ))
    }

    /// Pixel type from `bit_depth_image` (8/16/32 → u8/u16/u32), if given and valid.
    pub fn dtype(&self) -> Option<DType> {
        match self.bit_depth_image? {
            8 => Some(DType::U8),
            16 => Some(DType::U16),
            32 => Some(DType::U32),
            _ => None,
        }
    }
}

/// `dimage-1.0`, part 1 of an image message (§2.4).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ImageHeader {
    /// Series id.
    pub series: u64,
    /// Frame index in the series, from 0.
    pub frame: u64,
    /// MD5 hex digest of the blob (may be empty; not checked).
    #[serde(default)]
    pub hash: String,
}

/// `dimage_d-1.0`, part 2 of an image message (§2.4): how to read the blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageData {
    /// Frame shape (the wire's `shape` is `[x, y]`; this is rows = y, cols = x).
    pub sig_shape: SigShape,
    /// Pixel type (`uint8`/`uint16`/`uint32`).
    pub dtype: DType,
    /// The `encoding` string as sent (e.g. `bs16-lz4<`).
    pub encoding_text: String,
    /// The encoding, parsed.
    pub encoding: StreamEncoding,
    /// Blob size in bytes, when given.
    pub size: Option<u64>,
}

#[derive(Deserialize)]
struct RawImageData {
    shape: Vec<u64>,
    #[serde(rename = "type")]
    dtype: String,
    encoding: String,
    size: Option<u64>,
}

/// `dconfig-1.0`, part 4 of an image message: times in ns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct ImageTimes {
    /// Exposure start, ns since the series start.
    #[serde(default)]
    pub start_time: u64,
    /// Exposure end, ns.
    #[serde(default)]
    pub stop_time: u64,
    /// Exposure length, ns.
    #[serde(default)]
    pub real_time: u64,
}

/// `dseries_end-1.0` (§2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct SeriesEnd {
    /// Series id.
    pub series: u64,
}

/// Header of an array that follows as a binary part in an `all` global header
/// (`dflatfield-1.0`, `dpixelmask-1.0`, `dcountrate_table-1.0`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ArrayHeader {
    /// The htype.
    pub htype: String,
    /// Array shape as sent (`[x, y]`).
    #[serde(default)]
    pub shape: Vec<u64>,
    /// Element type (`float32`, `uint32`).
    #[serde(rename = "type", default)]
    pub dtype: String,
}

/// A stream v1 part that carries an `htype`, parsed.
#[derive(Clone, Debug, PartialEq)]
pub enum V1Part {
    /// `dheader-1.0`.
    Header(GlobalHeader),
    /// `dimage-1.0`.
    Image(ImageHeader),
    /// `dimage_d-1.0`.
    ImageData(ImageData),
    /// `dconfig-1.0`.
    ImageTimes(ImageTimes),
    /// `dseries_end-1.0`.
    SeriesEnd(SeriesEnd),
    /// `dflatfield-1.0`, `dpixelmask-1.0`, `dcountrate_table-1.0`: a binary part follows.
    Array(ArrayHeader),
    /// JSON with another or no `htype` (e.g. the detector config, appendices).
    Other(Option<String>),
}

#[derive(Deserialize)]
struct Htype {
    htype: Option<String>,
}

/// The `htype` of a part if it is a JSON object that has one; `None` for binary parts and
/// other JSON. Cheap enough to call on every part (blobs are rejected on the first byte).
pub fn htype_of(part: &[u8]) -> Option<String> {
    if part.first() != Some(&b'{') {
        return None;
    }
    serde_json::from_slice::<Htype>(part).ok()?.htype
}

/// Parses a JSON part by its `htype` (§2.4).
///
/// # Errors
/// [`StreamError::Json`] naming the htype (or `JSON part` when it has none) for malformed
/// JSON or missing required fields; [`StreamError::Field`] for invalid values.
pub fn parse_v1_part(part: &[u8]) -> Result<V1Part, StreamError> {
    let h: Htype = serde_json::from_slice(part).map_err(|e| json_err("JSON part", e))?;
    let Some(htype) = h.htype else {
        return Ok(V1Part::Other(None));
    };
    let p = htype.as_str();
    Ok(match p {
        "dheader-1.0" => V1Part::Header(serde_json::from_slice(part).map_err(|e| json_err(p, e))?),
        "dimage-1.0" => V1Part::Image(serde_json::from_slice(part).map_err(|e| json_err(p, e))?),
        "dimage_d-1.0" => V1Part::ImageData(parse_image_data(part)?),
        "dconfig-1.0" => {
            V1Part::ImageTimes(serde_json::from_slice(part).map_err(|e| json_err(p, e))?)
        }
        "dseries_end-1.0" => {
            V1Part::SeriesEnd(serde_json::from_slice(part).map_err(|e| json_err(p, e))?)
        }
        "dflatfield-1.0" | "dpixelmask-1.0" | "dcountrate_table-1.0" => {
            V1Part::Array(serde_json::from_slice(part).map_err(|e| json_err(p, e))?)
        }
        _ => V1Part::Other(Some(htype)),
    })
}

/// Parses a part that must have htype `expected`; `what` names the part in errors.
fn expect_htype<'a, T: Deserialize<'a>>(part: &'a [u8], expected: &str) -> Result<T, StreamError> {
    let h: Htype = serde_json::from_slice(part).map_err(|e| json_err(expected, e))?;
    if h.htype.as_deref() != Some(expected) {
        return Err(StreamError::Htype {
            part: expected.to_string(),
            expected: expected.to_string(),
            observed: h.htype.unwrap_or_default(),
        });
    }
    serde_json::from_slice(part).map_err(|e| json_err(expected, e))
}

/// Parses part 1 of the global header.
///
/// # Errors
/// [`StreamError::Htype`] when it is another part; [`StreamError::Json`] /
/// [`StreamError::Field`] when malformed (e.g. no `series`, unknown `header_detail`).
pub fn parse_global_header(part: &[u8]) -> Result<GlobalHeader, StreamError> {
    expect_htype(part, "dheader-1.0")
}

/// Parses the detector configuration part (part 2 of a `basic`/`all` global header).
///
/// # Errors
/// [`StreamError::Json`] naming `detector config` when it is not a JSON object with
/// values of the documented types.
pub fn parse_detector_config(part: &[u8]) -> Result<DetectorConfig, StreamError> {
    let v: serde_json::Value =
        serde_json::from_slice(part).map_err(|e| json_err("detector config", e))?;
    if !v.is_object() {
        return Err(json_err("detector config", "not a JSON object"));
    }
    serde_json::from_value(v).map_err(|e| json_err("detector config", e))
}

/// Parses part 1 of an image message.
///
/// # Errors
/// As [`parse_global_header`], for `dimage-1.0`.
pub fn parse_image_header(part: &[u8]) -> Result<ImageHeader, StreamError> {
    expect_htype(part, "dimage-1.0")
}

/// Parses part 2 of an image message: shape `[x, y]`, type, encoding, size.
///
/// # Errors
/// [`StreamError::Htype`]/[`StreamError::Json`] as above; [`StreamError::Field`] for a
/// shape that is not two positive numbers, an unknown type or encoding, or a shuffle
/// width that differs from the type's.
pub fn parse_image_data(part: &[u8]) -> Result<ImageData, StreamError> {
    const P: &str = "dimage_d-1.0";
    let r: RawImageData = expect_htype(part, P)?;
    let [x, y] = r.shape[..] else {
        return Err(field_err(P, "shape", "[x, y]", format!("{:?}", r.shape)));
    };
    let (Ok(cols), Ok(rows)) = (usize::try_from(x), usize::try_from(y)) else {
        return Err(field_err(
            P,
            "shape",
            "[x, y] that fit in memory",
            format!("{:?}", r.shape),
        ));
    };
    if rows == 0 || cols == 0 {
        return Err(field_err(
            P,
            "shape",
            "two positive sizes",
            format!("{:?}", r.shape),
        ));
    }
    let dtype = match r.dtype.as_str() {
        "uint8" => DType::U8,
        "uint16" => DType::U16,
        "uint32" => DType::U32,
        other => {
            return Err(field_err(
                P,
                "type",
                "`uint8`, `uint16` or `uint32`",
                format!("`{other}`"),
            ));
        }
    };
    let encoding = StreamEncoding::parse(&r.encoding)?;
    if let Some(bits) = encoding.shuffle_bits
        && bits as usize != dtype.size() * 8
    {
        return Err(field_err(
            P,
            "encoding",
            &format!(
                "a shuffle width of {} bits for type {dtype}",
                dtype.size() * 8
            ),
            format!("`{}` ({bits} bits)", r.encoding),
        ));
    }
    Ok(ImageData {
        sig_shape: SigShape::new(rows, cols),
        dtype,
        encoding_text: r.encoding,
        encoding,
        size: r.size,
    })
}

/// Parses part 4 of an image message.
///
/// # Errors
/// As [`parse_global_header`], for `dconfig-1.0`.
pub fn parse_image_times(part: &[u8]) -> Result<ImageTimes, StreamError> {
    expect_htype(part, "dconfig-1.0")
}

/// A stream v1 `encoding` string, parsed (§2.4 "Encoding string": grammar
/// `[bs<BITS>][[-]lz4][<|>]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamEncoding {
    /// Bitshuffle element width in bits (8, 16, 32), if bitshuffled.
    pub shuffle_bits: Option<u32>,
    /// LZ4-compressed.
    pub lz4: bool,
    /// Byte order after decompression is big-endian (`>`); DECTRIS sends `<`.
    pub big_endian: bool,
}

impl StreamEncoding {
    /// Parses e.g. `bs16-lz4<`, `bs32-lz4<`, `lz4<`, `<`, `>`.
    ///
    /// # Errors
    /// [`StreamError::Field`] naming `encoding` for anything outside the grammar, and for a
    /// bitshuffle without LZ4 (not produced by DECTRIS, not decodable by our codec).
    pub fn parse(s: &str) -> Result<Self, StreamError> {
        let bad = || {
            field_err(
                "dimage_d-1.0",
                "encoding",
                "`[bs8|bs16|bs32][-]lz4<`, `lz4<` or `<` (protocols.md §2.4)",
                format!("`{s}`"),
            )
        };
        let mut rest = s;
        let mut shuffle_bits = None;
        if let Some(r) = rest.strip_prefix("bs") {
            let digits = r.bytes().take_while(u8::is_ascii_digit).count();
            let bits: u32 = r[..digits].parse().map_err(|_| bad())?;
            if !matches!(bits, 8 | 16 | 32) {
                return Err(bad());
            }
            shuffle_bits = Some(bits);
            rest = &r[digits..];
        }
        let rest = rest.strip_prefix('-').unwrap_or(rest);
        let (lz4, rest) = match rest.strip_prefix("lz4") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let big_endian = match rest {
            "<" | "" => false,
            ">" => true,
            _ => return Err(bad()),
        };
        if shuffle_bits.is_some() && !lz4 {
            return Err(bad());
        }
        Ok(Self {
            shuffle_bits,
            lz4,
            big_endian,
        })
    }

    /// The codec's description of blobs with this encoding holding `dtype` pixels.
    pub fn codec(&self, dtype: DType) -> Encoding {
        let compression = match (self.shuffle_bits, self.lz4) {
            (Some(_), _) => Compression::BitshuffleLz4,
            (None, true) => Compression::Lz4,
            (None, false) => Compression::None,
        };
        let elem_size = self.shuffle_bits.map_or(dtype.size(), |b| (b / 8) as usize);
        Encoding {
            compression,
            elem_size,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Stream v2 (CBOR)

/// A stream v2 `start` message (on arm, §2.6); fields we use.
#[derive(Clone, Debug, PartialEq)]
pub struct V2Start {
    /// Series id (as returned by `arm`).
    pub series_id: u64,
    /// Series unique id (text).
    pub series_unique_id: String,
    /// Images in the series.
    pub number_of_images: Option<u64>,
    /// Frame width, pixels.
    pub image_size_x: Option<u64>,
    /// Frame height, pixels.
    pub image_size_y: Option<u64>,
    /// Pixel type (`image_dtype`), if given.
    pub dtype: Option<DType>,
    /// Threshold channel names.
    pub channels: Vec<String>,
    /// Exposure, s.
    pub count_time: Option<f64>,
    /// Frame period, s.
    pub frame_time: Option<f64>,
}

impl V2Start {
    /// Frame shape from `image_size_y` × `image_size_x`, if both given.
    pub fn sig_shape(&self) -> Option<SigShape> {
        Some(SigShape::new(
            usize::try_from(self.image_size_y?).ok()?,
            usize::try_from(self.image_size_x?).ok()?,
        ))
    }
}

/// One channel's image in a stream v2 `image` message: a tag-40 array of a typed array.
#[derive(Clone, Debug, PartialEq)]
pub struct V2Array {
    /// Frame shape (tag 40 dims are row-major: `[rows, cols]`).
    pub sig_shape: SigShape,
    /// Pixel type from the typed-array tag.
    pub dtype: DType,
    /// True for a big-endian typed array (tags 65–67).
    pub big_endian: bool,
    /// How `data` is encoded (tag 56500 or raw).
    pub encoding: Encoding,
    /// The (possibly compressed) bytes.
    pub data: Vec<u8>,
}

/// A stream v2 `image` message.
#[derive(Clone, Debug, PartialEq)]
pub struct V2Image {
    /// Series id.
    pub series_id: u64,
    /// Frame index in the series, from 0.
    pub image_id: u64,
    /// Channel name → image, in message order.
    pub channels: Vec<(String, V2Array)>,
}

/// A stream v2 message.
#[derive(Clone, Debug, PartialEq)]
pub enum V2Message {
    /// `start`.
    Start(V2Start),
    /// `image`.
    Image(V2Image),
    /// `end` with its series id.
    End {
        /// Series id.
        series_id: u64,
    },
    /// Another `type` (ignored by the receiver).
    Other(String),
}

fn cbor_err(part: &str, detail: impl Into<String>) -> StreamError {
    StreamError::Cbor {
        part: part.to_string(),
        detail: detail.into(),
    }
}

fn map_get<'a>(map: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    map.iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Integer(i) => u64::try_from(i128::from(*i)).ok(),
        _ => None,
    }
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Float(f) => Some(*f),
        Value::Integer(i) => Some(i128::from(*i) as f64),
        _ => None,
    }
}

fn req_u64(map: &[(Value, Value)], key: &str, part: &str) -> Result<u64, StreamError> {
    let v = map_get(map, key).ok_or_else(|| cbor_err(part, format!("missing key `{key}`")))?;
    as_u64(v).ok_or_else(|| {
        cbor_err(
            part,
            format!("`{key}` is {v:?}, expected an unsigned integer"),
        )
    })
}

/// Parses one stream v2 message (§2.6).
///
/// # Errors
/// [`StreamError::Cbor`] naming the message type (`CBOR message` before it is known) for
/// invalid CBOR, a non-map, a missing `type`, missing required keys, or image data that is
/// not a tag-40 array of a supported typed array (tags 64, 65, 66, 69, 70), compressed
/// with an unknown algorithm.
pub fn parse_v2_message(bytes: &[u8]) -> Result<V2Message, StreamError> {
    let v: Value =
        ciborium::from_reader(bytes).map_err(|e| cbor_err("CBOR message", e.to_string()))?;
    let Value::Map(map) = v else {
        return Err(cbor_err("CBOR message", "not a map"));
    };
    let ty = map_get(&map, "type")
        .and_then(Value::as_text)
        .ok_or_else(|| cbor_err("CBOR message", "missing text key `type`"))?
        .to_string();
    match ty.as_str() {
        "start" => {
            const P: &str = "CBOR start";
            let text = |k: &str| {
                map_get(&map, k)
                    .and_then(Value::as_text)
                    .map(str::to_string)
            };
            let dtype = match text("image_dtype").as_deref() {
                None => None,
                Some("uint8") => Some(DType::U8),
                Some("uint16") => Some(DType::U16),
                Some("uint32") => Some(DType::U32),
                Some(other) => {
                    return Err(cbor_err(P, format!("unsupported image_dtype `{other}`")));
                }
            };
            let channels = match map_get(&map, "channels") {
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|c| c.as_text().map(str::to_string))
                    .collect(),
                _ => Vec::new(),
            };
            Ok(V2Message::Start(V2Start {
                series_id: req_u64(&map, "series_id", P)?,
                series_unique_id: text("series_unique_id").unwrap_or_default(),
                number_of_images: map_get(&map, "number_of_images").and_then(as_u64),
                image_size_x: map_get(&map, "image_size_x").and_then(as_u64),
                image_size_y: map_get(&map, "image_size_y").and_then(as_u64),
                dtype,
                channels,
                count_time: map_get(&map, "count_time").and_then(as_f64),
                frame_time: map_get(&map, "frame_time").and_then(as_f64),
            }))
        }
        "image" => {
            const P: &str = "CBOR image";
            let series_id = req_u64(&map, "series_id", P)?;
            let image_id = req_u64(&map, "image_id", P)?;
            let Some(Value::Map(data)) = map_get(&map, "data") else {
                return Err(cbor_err(P, "missing map key `data`"));
            };
            let mut channels = Vec::with_capacity(data.len());
            for (k, v) in data {
                let name = k
                    .as_text()
                    .ok_or_else(|| cbor_err(P, "a `data` key is not text"))?;
                channels.push((name.to_string(), parse_v2_array(v, name)?));
            }
            if channels.is_empty() {
                return Err(cbor_err(P, "`data` has no channel"));
            }
            Ok(V2Message::Image(V2Image {
                series_id,
                image_id,
                channels,
            }))
        }
        "end" => Ok(V2Message::End {
            series_id: req_u64(&map, "series_id", "CBOR end")?,
        }),
        other => Ok(V2Message::Other(other.to_string())),
    }
}

/// DECTRIS compression tag (§2.6).
const TAG_COMPRESSION: u64 = 56500;
/// RFC 8746 multi-dimensional array, row-major.
const TAG_MULTI_DIM: u64 = 40;

/// Parses `40([dims, typed-array])`; `channel` names the channel in errors.
fn parse_v2_array(v: &Value, channel: &str) -> Result<V2Array, StreamError> {
    let part = format!("CBOR image channel `{channel}`");
    let err = |d: String| cbor_err(&part, d);
    let Value::Tag(TAG_MULTI_DIM, inner) = v else {
        return Err(err(format!(
            "expected tag 40 (multi-dimensional array), observed {v:?}"
        )
        .chars()
        .take(200)
        .collect()));
    };
    let Value::Array(items) = inner.as_ref() else {
        return Err(err("tag 40 does not wrap an array".into()));
    };
    let [Value::Array(dims), typed] = &items[..] else {
        return Err(err(format!(
            "tag 40 wraps {} items, expected [dims, data]",
            items.len()
        )));
    };
    let dims: Vec<u64> = dims.iter().filter_map(as_u64).collect();
    let [rows, cols] = dims[..] else {
        return Err(err(format!("dims {dims:?}, expected [rows, cols]")));
    };
    let (Ok(rows), Ok(cols)) = (usize::try_from(rows), usize::try_from(cols)) else {
        return Err(err(format!("dims {dims:?} too large")));
    };
    let Value::Tag(tag, payload) = typed else {
        return Err(err("data is not a typed array (RFC 8746 tag)".into()));
    };
    let (dtype, big_endian) = match tag {
        64 => (DType::U8, false),
        65 => (DType::U16, true),
        66 => (DType::U32, true),
        69 => (DType::U16, false),
        70 => (DType::U32, false),
        t => {
            return Err(err(format!(
                "typed-array tag {t} unsupported; supported: 64 (u8), 65/69 (u16 BE/LE), 66/70 (u32 BE/LE)"
            )));
        }
    };
    let (encoding, data) = match payload.as_ref() {
        Value::Bytes(b) => (
            Encoding {
                compression: Compression::None,
                elem_size: dtype.size(),
            },
            b.clone(),
        ),
        Value::Tag(TAG_COMPRESSION, c) => {
            let Value::Array(c) = c.as_ref() else {
                return Err(err("tag 56500 does not wrap an array".into()));
            };
            let [Value::Text(alg), modifier, Value::Bytes(b)] = &c[..] else {
                return Err(err(
                    "tag 56500 must wrap [algorithm, element size, bytes]".into()
                ));
            };
            let elem = as_u64(modifier).unwrap_or(0) as usize;
            let compression = match alg.as_str() {
                "bslz4" => {
                    if elem != dtype.size() {
                        return Err(err(format!(
                            "bslz4 element size {elem}, expected {} for {dtype}",
                            dtype.size()
                        )));
                    }
                    Compression::BitshuffleLz4
                }
                // Stream v2 `lz4` uses the HDF5 LZ4 filter framing (§2.5, last paragraph).
                "lz4" => Compression::Lz4Hdf5,
                other => {
                    return Err(err(format!(
                        "compression `{other}` unsupported; supported: bslz4, lz4 (and uncompressed)"
                    )));
                }
            };
            (
                Encoding {
                    compression,
                    elem_size: dtype.size(),
                },
                b.clone(),
            )
        }
        other => {
            return Err(err(format!(
                "typed array content is {other:?}, expected bytes"
            )
            .chars()
            .take(200)
            .collect()));
        }
    };
    Ok(V2Array {
        sig_shape: SigShape::new(rows, cols),
        dtype,
        big_endian,
        encoding,
        data,
    })
}

/// Builds a stream v2 message as a CBOR map (for simulators and tests): `fields` in order.
///
/// # Errors
/// [`StreamError::Cbor`] when serialisation fails (it does not for these values).
pub fn encode_v2(fields: Vec<(&str, Value)>) -> Result<Vec<u8>, StreamError> {
    let map = Value::Map(
        fields
            .into_iter()
            .map(|(k, v)| (Value::Text(k.to_string()), v))
            .collect(),
    );
    let mut out = Vec::new();
    ciborium::into_writer(&map, &mut out).map_err(|e| cbor_err("CBOR message", e.to_string()))?;
    Ok(out)
}

/// A stream v2 image array value `40([[rows, cols], tag(data)])` (simulators and tests):
/// little-endian typed array of `dtype`, its content `data` raw or, with `compression`,
/// wrapped in tag 56500 `[algorithm, element size, data]`.
pub fn v2_array_value(
    sig_shape: SigShape,
    dtype: DType,
    compression: Option<&str>,
    data: Vec<u8>,
) -> Value {
    let tag = match dtype {
        DType::U8 => 64,
        DType::U16 => 69,
        DType::U32 | DType::U64 => 70,
        // RFC 8746 §2.1: float32 and float64, little-endian.
        DType::F32 => 85,
        DType::F64 => 86,
    };
    let content = match compression {
        None => Value::Bytes(data),
        Some(alg) => {
            let modifier = if alg == "bslz4" {
                dtype.size() as u64
            } else {
                0
            };
            Value::Tag(
                TAG_COMPRESSION,
                Box::new(Value::Array(vec![
                    Value::Text(alg.to_string()),
                    Value::Integer(Integer::from(modifier)),
                    Value::Bytes(data),
                ])),
            )
        }
    };
    Value::Tag(
        TAG_MULTI_DIM,
        Box::new(Value::Array(vec![
            Value::Array(vec![
                Value::Integer(Integer::from(sig_shape.rows as u64)),
                Value::Integer(Integer::from(sig_shape.cols as u64)),
            ]),
            Value::Tag(tag, Box::new(content)),
        ])),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_header_each_detail() {
        for (d, want) in [
            ("all", HeaderDetail::All),
            ("basic", HeaderDetail::Basic),
            ("none", HeaderDetail::None),
        ] {
            let s =
                format!(r#"{{"htype":"dheader-1.0","header_detail":"{d}","series":34,"extra":1}}"#);
            let h = parse_global_header(s.as_bytes()).unwrap();
            assert_eq!(
                h,
                GlobalHeader {
                    series: 34,
                    header_detail: want
                }
            );
            assert_eq!(parse_v1_part(s.as_bytes()).unwrap(), V1Part::Header(h));
        }
        let e =
            parse_global_header(br#"{"htype":"dheader-1.0","header_detail":"some","series":3}"#)
                .unwrap_err();
        assert!(
            e.to_string().contains("header_detail") && e.to_string().contains("some"),
            "{e}"
        );
        let e =
            parse_global_header(br#"{"htype":"dheader-1.0","header_detail":"all"}"#).unwrap_err();
        assert!(
            e.to_string().contains("dheader-1.0") && e.to_string().contains("series"),
            "{e}"
        );
        let e = parse_global_header(br#"{"htype":"dimage-1.0","series":3,"frame":0}"#).unwrap_err();
        assert!(matches!(e, StreamError::Htype { .. }), "{e}");
        let e = parse_global_header(b"{\"htype\":\"dheader-1.0\",").unwrap_err();
        assert!(
            e.to_string().starts_with("dheader-1.0: malformed JSON"),
            "{e}"
        );
    }

    #[test]
    fn detector_config_gives_counts_shape_and_dtype() {
        let c = parse_detector_config(
            br#"{"trigger_mode":"exts","nimages":4,"ntrigger":8,"x_pixels_in_detector":192,
                 "y_pixels_in_detector":96,"bit_depth_image":32,"count_time":0.001,"other":[1]}"#,
        )
        .unwrap();
        assert_eq!(c.expected_images().unwrap(), 32);
        assert_eq!(c.sig_shape(), Some(SigShape::new(96, 192)));
        assert_eq!(c.dtype(), Some(DType::U32));
        let exte = parse_detector_config(br#"{"trigger_mode":"exte","nimages":1,"ntrigger":256}"#)
            .unwrap();
        assert_eq!(exte.expected_images().unwrap(), 256);
        let e = parse_detector_config(br#"{"trigger_mode":"xyz","ntrigger":1}"#)
            .unwrap()
            .expected_images()
            .unwrap_err();
        assert!(e.to_string().contains("trigger_mode"), "{e}");
        let e = parse_detector_config(br#"{"ntrigger":"many"}"#).unwrap_err();
        assert!(
            e.to_string().starts_with("detector config: malformed JSON"),
            "{e}"
        );
        assert!(parse_detector_config(b"[1,2]").is_err());
    }

    #[test]
    fn image_parts_parse_and_reject_bad_values() {
        let h = parse_image_header(br#"{"htype":"dimage-1.0","series":34,"frame":7,"hash":"ab"}"#)
            .unwrap();
        assert_eq!((h.series, h.frame, h.hash.as_str()), (34, 7, "ab"));
        let d = parse_image_data(
            br#"{"htype":"dimage_d-1.0","shape":[256,128],"type":"uint16","encoding":"bs16-lz4<","size":10692}"#,
        )
        .unwrap();
        assert_eq!(d.sig_shape, SigShape::new(128, 256));
        assert_eq!(d.dtype, DType::U16);
        assert_eq!(d.size, Some(10692));
        assert_eq!(
            d.encoding.codec(d.dtype),
            Encoding {
                compression: Compression::BitshuffleLz4,
                elem_size: 2
            }
        );
        for (bad, field) in [
            (
                r#"{"htype":"dimage_d-1.0","shape":[256],"type":"uint16","encoding":"<"}"#,
                "shape",
            ),
            (
                r#"{"htype":"dimage_d-1.0","shape":[2,2],"type":"float32","encoding":"<"}"#,
                "type",
            ),
            (
                r#"{"htype":"dimage_d-1.0","shape":[2,2],"type":"uint16","encoding":"zstd"}"#,
                "encoding",
            ),
            (
                r#"{"htype":"dimage_d-1.0","shape":[2,2],"type":"uint16","encoding":"bs32-lz4<"}"#,
                "encoding",
            ),
        ] {
            let e = parse_image_data(bad.as_bytes()).unwrap_err();
            assert!(e.to_string().contains(field), "{bad}: {e}");
        }
        let t = parse_image_times(
            br#"{"htype":"dconfig-1.0","start_time":1,"stop_time":3,"real_time":2}"#,
        )
        .unwrap();
        assert_eq!(t.real_time, 2);
        assert_eq!(
            parse_v1_part(br#"{"htype":"dseries_end-1.0","series":5}"#).unwrap(),
            V1Part::SeriesEnd(SeriesEnd { series: 5 })
        );
        assert!(matches!(
            parse_v1_part(br#"{"htype":"dpixelmask-1.0","shape":[4,4],"type":"uint32"}"#).unwrap(),
            V1Part::Array(a) if a.dtype == "uint32"
        ));
        assert_eq!(parse_v1_part(br#"{"a":1}"#).unwrap(), V1Part::Other(None));
        let e = parse_v1_part(br#"{"htype":"dimage-1.0","series":1}"#).unwrap_err();
        assert!(
            e.to_string().contains("dimage-1.0") && e.to_string().contains("frame"),
            "{e}"
        );
        assert_eq!(htype_of(b"\x00\x01"), None);
        assert_eq!(
            htype_of(br#"{"htype":"dconfig-1.0"}"#).as_deref(),
            Some("dconfig-1.0")
        );
    }

    #[test]
    fn encoding_strings() {
        let e = StreamEncoding::parse("bs32-lz4<").unwrap();
        assert_eq!(
            (e.shuffle_bits, e.lz4, e.big_endian),
            (Some(32), true, false)
        );
        let e = StreamEncoding::parse("bs8lz4<").unwrap();
        assert_eq!(e.shuffle_bits, Some(8));
        let e = StreamEncoding::parse("lz4<").unwrap();
        assert_eq!((e.shuffle_bits, e.lz4), (None, true));
        assert_eq!(e.codec(DType::U32).compression, Compression::Lz4);
        let e = StreamEncoding::parse(">").unwrap();
        assert!(e.big_endian && !e.lz4);
        assert_eq!(
            e.codec(DType::U16),
            Encoding {
                compression: Compression::None,
                elem_size: 2
            }
        );
        for bad in ["bs12-lz4<", "bs16<", "lz5<", "bs16-lz4<<", "gzip"] {
            assert!(StreamEncoding::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cbor_lz4_images_in_hdf5_framing_decode() {
        // A 4 × 8 u16 frame, LZ4 in the HDF5 filter framing (12-byte header: total bytes and
        // block bytes, big-endian; then each block's compressed length and LZ4 block).
        let px: Vec<u16> = (0..32u16).map(|i| i * 3 % 7).collect();
        let raw: Vec<u8> = px.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut block = Vec::new();
        crate::dectris::codec::lz4::compress(&raw, &mut block);
        let mut blob = Vec::new();
        blob.extend_from_slice(&(raw.len() as u64).to_be_bytes());
        blob.extend_from_slice(&(raw.len() as u32).to_be_bytes());
        blob.extend_from_slice(&(block.len() as u32).to_be_bytes());
        blob.extend_from_slice(&block);
        let arr = v2_array_value(SigShape::new(4, 8), DType::U16, Some("lz4"), blob.clone());
        let img = encode_v2(vec![
            ("type", Value::Text("image".into())),
            ("series_id", Value::Integer(1.into())),
            ("image_id", Value::Integer(0.into())),
            (
                "data",
                Value::Map(vec![(Value::Text("threshold_1".into()), arr)]),
            ),
        ])
        .unwrap();
        let V2Message::Image(i) = parse_v2_message(&img).unwrap() else {
            panic!("not an image")
        };
        let a = &i.channels[0].1;
        assert_eq!(a.encoding.compression, Compression::Lz4Hdf5);
        let mut out = vec![0u8; raw.len()];
        crate::dectris::codec::decode_into(&a.encoding, &a.data, &mut out).unwrap();
        assert_eq!(out, raw);
        crate::dectris::decode::check_framing(&a.encoding, &a.data, raw.len()).unwrap();
        assert!(
            crate::dectris::decode::check_framing(&a.encoding, &a.data, 2 * raw.len()).is_err()
        );
    }

    #[test]
    fn cbor_messages_round_trip_and_errors_name_the_message() {
        let start = encode_v2(vec![
            ("type", Value::Text("start".into())),
            ("series_id", Value::Integer(7.into())),
            ("series_unique_id", Value::Text("u7".into())),
            ("number_of_images", Value::Integer(16.into())),
            ("image_size_x", Value::Integer(8.into())),
            ("image_size_y", Value::Integer(4.into())),
            ("image_dtype", Value::Text("uint16".into())),
            (
                "channels",
                Value::Array(vec![Value::Text("threshold_1".into())]),
            ),
        ])
        .unwrap();
        let V2Message::Start(s) = parse_v2_message(&start).unwrap() else {
            panic!("not a start")
        };
        assert_eq!((s.series_id, s.number_of_images), (7, Some(16)));
        assert_eq!(s.sig_shape(), Some(SigShape::new(4, 8)));
        assert_eq!(s.dtype, Some(DType::U16));
        assert_eq!(s.channels, vec!["threshold_1".to_string()]);

        let arr = v2_array_value(
            SigShape::new(4, 8),
            DType::U16,
            Some("bslz4"),
            vec![1, 2, 3],
        );
        let img = encode_v2(vec![
            ("type", Value::Text("image".into())),
            ("series_id", Value::Integer(7.into())),
            ("image_id", Value::Integer(3.into())),
            (
                "data",
                Value::Map(vec![(Value::Text("threshold_1".into()), arr)]),
            ),
        ])
        .unwrap();
        let V2Message::Image(i) = parse_v2_message(&img).unwrap() else {
            panic!("not an image")
        };
        assert_eq!((i.series_id, i.image_id), (7, 3));
        let (name, a) = &i.channels[0];
        assert_eq!(name, "threshold_1");
        assert_eq!(a.sig_shape, SigShape::new(4, 8));
        assert_eq!((a.dtype, a.big_endian), (DType::U16, false));
        assert_eq!(a.encoding.compression, Compression::BitshuffleLz4);
        assert_eq!(a.data, vec![1, 2, 3]);

        let end = encode_v2(vec![
            ("type", Value::Text("end".into())),
            ("series_id", Value::Integer(7.into())),
        ])
        .unwrap();
        assert_eq!(
            parse_v2_message(&end).unwrap(),
            V2Message::End { series_id: 7 }
        );

        let e = parse_v2_message(&[0xff, 0x00]).unwrap_err();
        assert!(
            e.to_string().starts_with("CBOR message: malformed CBOR"),
            "{e}"
        );
        let no_id = encode_v2(vec![("type", Value::Text("image".into()))]).unwrap();
        let e = parse_v2_message(&no_id).unwrap_err();
        assert!(
            e.to_string().contains("CBOR image") && e.to_string().contains("series_id"),
            "{e}"
        );
        let bad_arr = encode_v2(vec![
            ("type", Value::Text("image".into())),
            ("series_id", Value::Integer(7.into())),
            ("image_id", Value::Integer(0.into())),
            (
                "data",
                Value::Map(vec![(
                    Value::Text("t".into()),
                    v2_array_value(SigShape::new(2, 2), DType::U8, Some("zstd"), vec![]),
                )]),
            ),
        ])
        .unwrap();
        let e = parse_v2_message(&bad_arr).unwrap_err();
        assert!(
            e.to_string().contains("channel `t`") && e.to_string().contains("zstd"),
            "{e}"
        );
    }
}
