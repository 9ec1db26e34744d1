//! PNG images of 2-D maps: decoded with the png crate, checked for size, pixel format and
//! the documented scaling (percentile range → 0..255, NaN → 0, constant → 128, diverging
//! 0 → 128).

mod common;

use stemflow_recording::{RecordingError, Scaling, write_png_image};

fn decode(path: &std::path::Path) -> (png::OutputInfo, Vec<u8>, Vec<(String, String)>) {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut reader = png::Decoder::new(file).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    let text = reader
        .info()
        .uncompressed_latin1_text
        .iter()
        .map(|t| (t.keyword.clone(), t.text.clone()))
        .collect();
    (info, buf, text)
}

/// A 3 × 400 ramp with a hot pixel and a NaN: width/height as given, 8-bit grey, the
/// 0.5th percentile → 0, the 99.5th → 255, the hot pixel clipped to 255, NaN → 0.
#[test]
fn percentile_png_maps_range_to_full_scale() {
    let (rows, cols) = (3, 400);
    let mut data: Vec<f64> = (0..rows * cols).map(|i| i as f64).collect();
    data[1] = f64::NAN;
    data[1199] = 1e12;
    let path = common::scratch("ramp").with_extension("png");
    let range = write_png_image(&path, &data, (rows, cols), Scaling::default()).unwrap();
    let (info, px, text) = decode(&path);
    assert_eq!((info.width, info.height), (400, 3));
    assert_eq!(info.color_type, png::ColorType::Grayscale);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    assert_eq!(px.len(), 1200);
    // 1199 finite values sorted: 0, 2, 3, …, 1198, 1e12; nearest rank 0.5 % → index 6
    // (value 7), 99.5 % → index 1192 (value 1193).
    assert_eq!((range.black, range.white), (7.0, 1193.0));
    assert_eq!(px[0], 0);
    assert_eq!(px[1], 0, "NaN is 0");
    assert_eq!(px[7], 0);
    assert_eq!(px[1193], 255);
    assert_eq!(px[1199], 255, "hot pixel clipped");
    assert!(
        px[600] > 120 && px[600] < 135,
        "middle of the ramp is mid grey: {}",
        px[600]
    );
    assert!(
        px.windows(2).skip(2).take(1190).all(|w| w[0] <= w[1]),
        "monotonic ramp"
    );
    assert!(
        text.iter()
            .any(|(k, v)| k == "stemflow:white" && v == "1193"),
        "{text:?}"
    );
    std::fs::remove_file(&path).unwrap();
}

/// Signed maps (CoM): zero is mid grey, ±full scale are 0 and 255; a constant map is 128.
#[test]
fn diverging_and_constant_pngs() {
    let data = [-4.0, -2.0, 0.0, 2.0, 4.0, f64::NAN];
    let path = common::scratch("diverging").with_extension("png");
    let range = write_png_image(
        &path,
        &data,
        (2, 3),
        Scaling::Diverging { percentile: 100.0 },
    )
    .unwrap();
    assert_eq!((range.black, range.white), (-4.0, 4.0));
    let (info, px, _) = decode(&path);
    assert_eq!((info.width, info.height), (3, 2));
    assert_eq!(px, vec![0, 64, 128, 191, 255, 0]);

    write_png_image(&path, &[7.5; 6], (3, 2), Scaling::default()).unwrap();
    let (info, px, _) = decode(&path);
    assert_eq!((info.width, info.height), (2, 3));
    assert_eq!(px, vec![128; 6]);

    let e = write_png_image(&path, &[1.0; 5], (2, 3), Scaling::default()).unwrap_err();
    assert!(
        matches!(
            e,
            RecordingError::ImageShape {
                expected: 6,
                observed: 5,
                ..
            }
        ),
        "{e}"
    );
    std::fs::remove_file(&path).unwrap();
}
