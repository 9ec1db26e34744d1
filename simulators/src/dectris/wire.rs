//! Our own writer of DECTRIS stream v1 messages (protocols.md §2.4), written from the
//! protocol description and independent of the receiver's parser, so that tests of one
//! against the other mean something.
//!
//! Every JSON part is a flat UTF-8 object whose first key is `htype`; key order follows what
//! a DCU (and the reference capture in `shared/data/dectris/stream-v1`) sends, so a replayed
//! series is byte-identical to the capture where the content is.

use bytes::Bytes;
use serde_json::Value;

/// `header_detail` of the stream (§2.4): how much the global header carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeaderDetail {
    /// dheader, detector config, flatfield, pixel mask and count-rate table (8 parts).
    All,
    /// dheader and detector config (2 parts).
    Basic,
    /// dheader only.
    None,
}

impl HeaderDetail {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "all" => Some(Self::All),
            "basic" => Some(Self::Basic),
            "none" => Some(Self::None),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Basic => "basic",
            Self::None => "none",
        }
    }
}

/// The arrays a header with `header_detail = all` carries, x-fastest little-endian blobs.
#[derive(Clone, Debug)]
pub(crate) struct HeaderArrays {
    /// Width and height of the detector, pixels.
    pub(crate) shape: [usize; 2],
    /// Flatfield, float32 per pixel.
    pub(crate) flatfield: Bytes,
    /// Pixel mask, uint32 per pixel (non-zero = defective).
    pub(crate) pixel_mask: Bytes,
    /// Count-rate correction table, float32, shape `[2, n]`.
    pub(crate) countrate_table: Bytes,
    /// `n` of the count-rate table.
    pub(crate) countrate_len: usize,
}

/// The parts of the global header message sent on `arm` (§2.4 "Global header"), in wire
/// order: the dheader; for `basic` and `all` the detector configuration; for `all` the
/// flatfield, pixel mask and count-rate table, each a JSON description and a blob; and the
/// `header_appendix` as one more part when it is not empty [ext].
pub(crate) fn global_header(
    series: u64,
    detail: HeaderDetail,
    config: &Value,
    arrays: &HeaderArrays,
    appendix: &str,
) -> Vec<Bytes> {
    let mut parts = vec![Bytes::from(format!(
        r#"{{"htype":"dheader-1.0","header_detail":"{}","series":{series}}}"#,
        detail.as_str()
    ))];
    if detail != HeaderDetail::None {
        parts.push(Bytes::from(config.to_string()));
    }
    if detail == HeaderDetail::All {
        let [x, y] = arrays.shape;
        parts.push(Bytes::from(format!(
            r#"{{"htype":"dflatfield-1.0","shape":[{x},{y}],"type":"float32"}}"#
        )));
        parts.push(arrays.flatfield.clone());
        parts.push(Bytes::from(format!(
            r#"{{"htype":"dpixelmask-1.0","shape":[{x},{y}],"type":"uint32"}}"#
        )));
        parts.push(arrays.pixel_mask.clone());
        parts.push(Bytes::from(format!(
            r#"{{"htype":"dcountrate_table-1.0","shape":[2,{}],"type":"float32"}}"#,
            arrays.countrate_len
        )));
        parts.push(arrays.countrate_table.clone());
    }
    if !appendix.is_empty() {
        parts.push(Bytes::from(appendix.to_string()));
    }
    parts
}

/// What the image message says about one frame.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ImageMeta<'a> {
    pub(crate) series: u64,
    /// 0-based index within the series.
    pub(crate) frame: u64,
    /// MD5 hex digest of the (uncorrupted) blob.
    pub(crate) hash: &'a str,
    /// `[width, height]`, pixels (x first, §2.4).
    pub(crate) shape: [usize; 2],
    /// `uint8`, `uint16` or `uint32`.
    pub(crate) dtype: &'a str,
    /// The encoding string (§2.4), e.g. `bs16-lz4<`.
    pub(crate) encoding: &'a str,
    /// The `size` field: the blob's length in bytes as the detector meant to send it.
    pub(crate) size: usize,
    /// Exposure start and stop, ns (the DCU's clock; here since the simulator started).
    pub(crate) start_ns: u64,
    pub(crate) stop_ns: u64,
    /// Exposure duration, ns.
    pub(crate) real_ns: u64,
}

/// The image message (§2.4 "Image message"): dimage-1.0, dimage_d-1.0, the blob, and
/// dconfig-1.0; plus the `image_appendix` as a fifth part when it is not empty [ext].
pub(crate) fn image(meta: &ImageMeta<'_>, blob: Bytes, appendix: &str) -> Vec<Bytes> {
    let [x, y] = meta.shape;
    let mut parts = vec![
        Bytes::from(format!(
            r#"{{"htype":"dimage-1.0","series":{},"frame":{},"hash":"{}"}}"#,
            meta.series, meta.frame, meta.hash
        )),
        Bytes::from(format!(
            r#"{{"htype":"dimage_d-1.0","shape":[{x},{y}],"type":"{}","encoding":"{}","size":{}}}"#,
            meta.dtype, meta.encoding, meta.size
        )),
        blob,
        Bytes::from(format!(
            r#"{{"htype":"dconfig-1.0","start_time":{},"stop_time":{},"real_time":{}}}"#,
            meta.start_ns, meta.stop_ns, meta.real_ns
        )),
    ];
    if !appendix.is_empty() {
        parts.push(Bytes::from(appendix.to_string()));
    }
    parts
}

/// The end-of-series message (§2.4), a single part.
pub(crate) fn series_end(series: u64) -> Bytes {
    Bytes::from(format!(
        r#"{{"htype":"dseries_end-1.0","series":{series}}}"#
    ))
}

/// MD5 hex digest, as the `hash` field of dimage-1.0 carries it (§2.4).
pub(crate) fn md5_hex(data: &[u8]) -> String {
    format!("{:x}", md5::compute(data))
}

/// Standard base64 (RFC 4648, with padding), for the darray values of the REST API (§2.3).
pub(crate) fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrays() -> HeaderArrays {
        HeaderArrays {
            shape: [4, 2],
            flatfield: Bytes::from(vec![0u8; 32]),
            pixel_mask: Bytes::from(vec![0u8; 32]),
            countrate_table: Bytes::from(vec![0u8; 16]),
            countrate_len: 2,
        }
    }

    #[test]
    fn messages_match_the_reference_capture_byte_for_byte() {
        // Parts as found in shared/data/dectris/stream-v1/synthetic_16x16_256_u16.dump.
        let cfg = serde_json::json!({"nimages": 1});
        let h = global_header(34, HeaderDetail::Basic, &cfg, &arrays(), "");
        assert_eq!(
            &h[0][..],
            br#"{"htype":"dheader-1.0","header_detail":"basic","series":34}"#
        );
        assert_eq!(&h[1][..], br#"{"nimages":1}"#);
        assert_eq!(h.len(), 2);
        let meta = ImageMeta {
            series: 34,
            frame: 0,
            hash: "650aee587ad48307bd69aa644ddfce08",
            shape: [256, 256],
            dtype: "uint16",
            encoding: "bs16-lz4<",
            size: 10692,
            start_ns: 5396052835800,
            stop_ns: 5396053835700,
            real_ns: 999900,
        };
        let m = image(&meta, Bytes::from_static(b"blob"), "");
        assert_eq!(m.len(), 4);
        assert_eq!(
            &m[0][..],
            br#"{"htype":"dimage-1.0","series":34,"frame":0,"hash":"650aee587ad48307bd69aa644ddfce08"}"#
        );
        assert_eq!(
            &m[1][..],
            br#"{"htype":"dimage_d-1.0","shape":[256,256],"type":"uint16","encoding":"bs16-lz4<","size":10692}"#
        );
        assert_eq!(&m[2][..], b"blob");
        assert_eq!(
            &m[3][..],
            br#"{"htype":"dconfig-1.0","start_time":5396052835800,"stop_time":5396053835700,"real_time":999900}"#
        );
        assert_eq!(
            &series_end(34)[..],
            br#"{"htype":"dseries_end-1.0","series":34}"#
        );
    }

    #[test]
    fn header_detail_sets_the_number_of_parts() {
        let cfg = serde_json::json!({});
        assert_eq!(
            global_header(1, HeaderDetail::None, &cfg, &arrays(), "").len(),
            1
        );
        let all = global_header(1, HeaderDetail::All, &cfg, &arrays(), "x");
        assert_eq!(all.len(), 9);
        assert!(all[2].starts_with(br#"{"htype":"dflatfield-1.0","shape":[4,2]"#));
        assert!(all[6].starts_with(br#"{"htype":"dcountrate_table-1.0","shape":[2,2]"#));
        assert_eq!(&all[8][..], b"x");
    }

    #[test]
    fn md5_and_base64_known_answers() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff, 0xfe]), "//4=");
    }
}
