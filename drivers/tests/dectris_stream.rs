//! Stream v1 message parsing on the real capture
//! (`../shared/data/dectris/stream-v1/synthetic_16x16_256_u16.dump`, protocols.md §2.4):
//! every part parses as the type its position says, ids are consecutive, `size` matches
//! the blob, every blob passes the framing check and decodes; and malformed variants of
//! each part fail with an error naming the part.

use std::path::PathBuf;
use stemflow_core::frame::{FrameDecoder, PixelsMut};
use stemflow_core::{DType, SigShape};
use stemflow_drivers::dectris::decode::{DectrisDecoder, check_framing};
use stemflow_drivers::dectris::stream::{
    HeaderDetail, V1Part, htype_of, parse_detector_config, parse_global_header, parse_image_data,
    parse_image_header, parse_image_times, parse_v1_part,
};

fn parts() -> Vec<Vec<u8>> {
    let path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/dectris/stream-v1/synthetic_16x16_256_u16.dump"
    ));
    let bytes = std::fs::read(path).expect("the stream-v1 capture in ../shared/data");
    let mut out = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let len = i64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        out.push(bytes[at + 8..at + 8 + len].to_vec());
        at += 8 + len;
    }
    out
}

#[test]
fn every_part_of_the_capture_parses_in_order() {
    let p = parts();
    assert_eq!(p.len(), 2 + 4 * 256 + 1);
    let h = parse_global_header(&p[0]).unwrap();
    assert_eq!((h.series, h.header_detail), (34, HeaderDetail::Basic));
    let c = parse_detector_config(&p[1]).unwrap();
    assert_eq!(c.expected_images().unwrap(), 256);
    assert_eq!(c.sig_shape(), Some(SigShape::new(256, 256)));
    assert_eq!(c.dtype(), Some(DType::U16));
    assert_eq!(c.trigger_mode.as_deref(), Some("exte"));
    assert_eq!(c.count_time, Some(0.0009999));
    let mut total = 0u64;
    let mut px = vec![0u16; 256 * 256];
    for (i, f) in p[2..2 + 4 * 256].chunks_exact(4).enumerate() {
        let ih = parse_image_header(&f[0]).unwrap();
        assert_eq!((ih.series, ih.frame), (34, i as u64));
        assert_eq!(ih.hash.len(), 32);
        let d = parse_image_data(&f[1]).unwrap();
        assert_eq!(d.sig_shape, SigShape::new(256, 256));
        assert_eq!(d.encoding_text, "bs16-lz4<");
        assert_eq!(d.size, Some(f[2].len() as u64));
        assert_eq!(htype_of(&f[2]), None, "the blob is binary");
        let enc = d.encoding.codec(d.dtype);
        check_framing(&enc, &f[2], 256 * 256 * 2).unwrap();
        let dec = DectrisDecoder::new("dectris", d.sig_shape, d.dtype, enc, false);
        dec.decode_into(&f[2], PixelsMut::U16(&mut px)).unwrap();
        total += px.iter().map(|&v| u64::from(v)).sum::<u64>();
        let t = parse_image_times(&f[3]).unwrap();
        assert!(t.stop_time > t.start_time);
    }
    assert_eq!(total, 34_446_517);
    assert!(
        matches!(parse_v1_part(&p[p.len() - 1]).unwrap(), V1Part::SeriesEnd(e) if e.series == 34)
    );
}

#[test]
fn malformed_variants_of_each_part_name_the_part() {
    let p = parts();
    let cut = |b: &[u8]| b[..b.len() / 2].to_vec();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (cut(&p[0]), "dheader-1.0"),
        (cut(&p[1]), "detector config"),
        (cut(&p[2]), "dimage-1.0"),
        (cut(&p[3]), "dimage_d-1.0"),
        (cut(&p[5]), "dconfig-1.0"),
    ];
    for (i, (bytes, part)) in cases.iter().enumerate() {
        let e = match i {
            0 => parse_global_header(bytes).unwrap_err(),
            1 => parse_detector_config(bytes).unwrap_err(),
            2 => parse_image_header(bytes).unwrap_err(),
            3 => parse_image_data(bytes).unwrap_err(),
            _ => parse_image_times(bytes).unwrap_err(),
        };
        assert!(e.to_string().starts_with(part), "{part}: {e}");
    }
    // A part in the wrong position names the htype expected and observed.
    let e = parse_image_data(&p[2]).unwrap_err();
    assert!(
        e.to_string()
            .contains("expected htype `dimage_d-1.0`, observed `dimage-1.0`"),
        "{e}"
    );
    // A blob where JSON belongs.
    assert!(
        parse_v1_part(&p[4])
            .unwrap_err()
            .to_string()
            .contains("malformed JSON")
    );
}
