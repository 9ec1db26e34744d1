//! The offline readers on float and signed-integer files: `.npy` (f4, f8, i1, i2, i4, i8 in
//! both byte orders), raw binary (big-endian float32 after a file header, int16 with
//! per-frame headers) and HDF5 (float32 3-D, int16 4-D, int8, int32, int64, float64), read
//! back through the [`DataSet`] API in blocks of several sizes. Every pixel must come back
//! exactly as written (negative values, fractions, NaN and -0.0 bit for bit), in the
//! documented frame dtype; unsupported types and int64 values beyond ±2^53 must fail with
//! messages naming the file, the type (or frame and value) and what is supported.

use ndarray::{Array3, Array4};
use std::path::{Path, PathBuf};
use stemflow_core::frame::{PixelsRef, Tile};
use stemflow_core::{DType, NavShape, SigShape};
use stemflow_processing::io::{ByteOrder, ElementType, IoError, parse_dtype};
use stemflow_processing::{DataSet, Hdf5DataSet, NpyDataSet, RawDataSet, RawSpec};

/// A scan of 2 × 3 frames of 4 × 5 pixels: small, but 4-D and with more than one block.
const NAV: NavShape = NavShape::new(2, 3);
const SIG: SigShape = SigShape::new(4, 5);

/// A directory removed with its contents when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "stemflow-io-floats-{tag}-{}-{ns}",
            std::process::id()
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn n_pixels() -> usize {
    NAV.len() * SIG.len()
}

/// Signed test values of pixel `i`: negative and positive, spanning `-amp..=amp`, with the
/// extremes placed at pixels 0 and 1.
fn signed_values(amp: i64) -> Vec<i64> {
    (0..n_pixels() as i64)
        .map(|i| match i {
            0 => -amp,
            1 => amp,
            _ => (i * 7919 % (2 * amp + 1)) - amp,
        })
        .collect()
}

/// Float test values: fractions of both signs, a large and a tiny magnitude, -0.0, NaN
/// and an infinity.
fn float_values() -> Vec<f64> {
    (0..n_pixels())
        .map(|i| match i {
            0 => -0.0,
            1 => f64::NAN,
            2 => f64::NEG_INFINITY,
            3 => 1.0e30,
            4 => -3.0e-30,
            _ => (i as f64 - 60.0) * 0.3125 + 0.1,
        })
        .collect()
}

/// Encodes `values` with `enc` (one element's bytes in the file's byte order).
fn bytes_of<T: Copy, const N: usize>(values: &[T], enc: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|&v| enc(v)).collect()
}

/// A `.npy` of shape `(2, 3, 4, 5)` with element `descr` and data `data`.
fn write_npy(path: &Path, descr: &str, data: &[u8]) {
    let mut bytes = stemflow_processing::io::npy::header_bytes(
        descr,
        &[NAV.rows, NAV.cols, SIG.rows, SIG.cols],
    );
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

/// Every frame of `ds`, read in blocks of `block` frames into one reused tile; asserts
/// the tile's dtype and shape on every block.
fn read_all(ds: &mut dyn DataSet, block: usize) -> Vec<PixelsOwned> {
    let mut tile = Tile::zeros(0, 0, SigShape::new(1, 1), DType::U8);
    let mut out = Vec::new();
    let mut first = 0u64;
    while first < ds.frames() {
        let n = (block as u64).min(ds.frames() - first) as usize;
        ds.read_tile(first, n, &mut tile)
            .unwrap_or_else(|e| panic!("frames {first}..+{n}: {e}"));
        assert_eq!(tile.data.dtype(), ds.dtype());
        assert_eq!(
            (tile.first_frame, tile.n_frames, tile.sig_shape),
            (first, n, SIG)
        );
        out.push(match tile.data.view() {
            PixelsRef::F32(v) => PixelsOwned::F32(v.to_vec()),
            PixelsRef::F64(v) => PixelsOwned::F64(v.to_vec()),
            other => panic!(
                "integer frames ({}) where floats were expected",
                other.dtype()
            ),
        });
        first += n as u64;
    }
    out
}

enum PixelsOwned {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// The pixels of all blocks as f32 bits (the frames must be float32).
fn f32_bits(blocks: Vec<PixelsOwned>) -> Vec<u32> {
    blocks
        .into_iter()
        .flat_map(|b| match b {
            PixelsOwned::F32(v) => v.into_iter().map(f32::to_bits).collect::<Vec<_>>(),
            PixelsOwned::F64(_) => panic!("float64 frames where float32 were expected"),
        })
        .collect()
}

/// The pixels of all blocks as f64 bits (the frames must be float64).
fn f64_bits(blocks: Vec<PixelsOwned>) -> Vec<u64> {
    blocks
        .into_iter()
        .flat_map(|b| match b {
            PixelsOwned::F64(v) => v.into_iter().map(f64::to_bits).collect::<Vec<_>>(),
            PixelsOwned::F32(_) => panic!("float32 frames where float64 were expected"),
        })
        .collect()
}

/// Reads `ds` in blocks of 1, 4 and all frames; each read, as `bits`, gives `want`. The
/// frames must be of `dtype`; the data set's scan and frame shapes must be [`NAV`] and
/// [`SIG`] when `four_d`, else only its frame count is checked (scan shape 1 × frames).
fn assert_reads<T: PartialEq + std::fmt::Debug>(
    ds: &mut dyn DataSet,
    (dtype, four_d): (DType, bool),
    bits: fn(Vec<PixelsOwned>) -> Vec<T>,
    want: &[T],
    what: &str,
) {
    assert_eq!(ds.dtype(), dtype, "{what}");
    if four_d {
        assert_eq!((ds.nav_shape(), ds.sig_shape()), (NAV, SIG), "{what}");
    } else {
        assert_eq!(ds.frames(), NAV.len() as u64, "{what}");
    }
    for block in [1, 4, NAV.len()] {
        assert_eq!(bits(read_all(ds, block)), want, "{what}, blocks of {block}");
    }
}

/// [`assert_reads`] for float32 frames of a 4-D data set.
fn assert_reads_f32(ds: &mut dyn DataSet, want: &[u32], what: &str) {
    assert_reads(ds, (DType::F32, true), f32_bits, want, what);
}

/// [`assert_reads`] for float64 frames of a 4-D data set.
fn assert_reads_f64(ds: &mut dyn DataSet, want: &[u64], what: &str) {
    assert_reads(ds, (DType::F64, true), f64_bits, want, what);
}

/// `.npy` float32 and float64 in both byte orders read natively, bit for bit (NaN,
/// infinities, -0.0, fractions of both signs).
#[test]
fn npy_floats_read_bit_for_bit_in_both_byte_orders() {
    let dir = Scratch::new("npy-float");
    let v = float_values();
    let v32: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    let want32: Vec<u32> = v32.iter().map(|x| x.to_bits()).collect();
    let want64: Vec<u64> = v.iter().map(|x| x.to_bits()).collect();
    let cases: [(&str, Vec<u8>); 4] = [
        ("<f4", bytes_of(&v32, f32::to_le_bytes)),
        (">f4", bytes_of(&v32, f32::to_be_bytes)),
        ("<f8", bytes_of(&v, f64::to_le_bytes)),
        (">f8", bytes_of(&v, f64::to_be_bytes)),
    ];
    for (descr, data) in cases {
        let p = dir.join(&format!("{}.npy", descr.replace(['<', '>'], "x")));
        write_npy(&p, descr, &data);
        let mut ds = NpyDataSet::open(&p).unwrap();
        if descr.ends_with("f4") {
            assert_eq!(ds.element(), ElementType::F32);
            assert_reads_f32(&mut ds, &want32, descr);
        } else {
            assert_eq!(ds.element(), ElementType::F64);
            assert_reads_f64(&mut ds, &want64, descr);
        }
    }
}

/// `.npy` int8/int16 → float32 and int32/int64 → float64, exactly, including each type's
/// extremes, in both byte orders.
#[test]
fn npy_signed_integers_convert_exactly_to_floats() {
    let dir = Scratch::new("npy-signed");
    let i8v = signed_values(i64::from(i8::MAX));
    let mut i8v_min = i8v.clone();
    i8v_min[0] = i64::from(i8::MIN);
    let i16v = {
        let mut v = signed_values(i64::from(i16::MAX));
        v[0] = i64::from(i16::MIN);
        v
    };
    let i32v = {
        let mut v = signed_values(i64::from(i32::MAX));
        v[0] = i64::from(i32::MIN);
        v
    };
    let i64v = signed_values(1 << 53);
    let as32 = |v: &[i64]| -> Vec<u32> { v.iter().map(|&x| (x as f32).to_bits()).collect() };
    let as64 = |v: &[i64]| -> Vec<u64> { v.iter().map(|&x| (x as f64).to_bits()).collect() };
    // The reference conversions above are exact for these ranges: check that premise.
    assert!(i16v.iter().all(|&x| (x as f32) as i64 == x));
    assert!(i64v.iter().all(|&x| (x as f64) as i64 == x));
    let enc8 = |v: &[i64]| bytes_of(v, |x| (x as i8).to_le_bytes());
    type Case<'a> = (&'a str, Vec<u8>, ElementType, &'a [i64]);
    let cases: Vec<Case> = vec![
        ("|i1", enc8(&i8v_min), ElementType::I8, &i8v_min),
        (
            "<i2",
            bytes_of(&i16v, |x| (x as i16).to_le_bytes()),
            ElementType::I16,
            &i16v,
        ),
        (
            ">i2",
            bytes_of(&i16v, |x| (x as i16).to_be_bytes()),
            ElementType::I16,
            &i16v,
        ),
        (
            "<i4",
            bytes_of(&i32v, |x| (x as i32).to_le_bytes()),
            ElementType::I32,
            &i32v,
        ),
        (
            ">i4",
            bytes_of(&i32v, |x| (x as i32).to_be_bytes()),
            ElementType::I32,
            &i32v,
        ),
        (
            "<i8",
            bytes_of(&i64v, i64::to_le_bytes),
            ElementType::I64,
            &i64v,
        ),
        (
            ">i8",
            bytes_of(&i64v, i64::to_be_bytes),
            ElementType::I64,
            &i64v,
        ),
    ];
    for (descr, data, element, values) in cases {
        let p = dir.join(&format!("{}.npy", descr.replace(['<', '>', '|'], "x")));
        write_npy(&p, descr, &data);
        let mut ds = NpyDataSet::open(&p).unwrap();
        assert_eq!(ds.element(), element, "{descr}");
        assert_eq!(ds.dtype(), element.memory_dtype(), "{descr}");
        match element.memory_dtype() {
            DType::F32 => assert_reads_f32(&mut ds, &as32(values), descr),
            _ => assert_reads_f64(&mut ds, &as64(values), descr),
        }
    }
}

/// An int64 `.npy` with one value beyond ±2^53 reads until the frame holding it, which
/// fails naming the file, the frame, the pixel and the value.
#[test]
fn npy_int64_beyond_2_pow_53_is_an_error_naming_frame_and_value() {
    let dir = Scratch::new("npy-i64");
    let mut v = signed_values(1000);
    let bad_frame = 4;
    let bad_pixel = 7;
    let bad = -(1i64 << 53) - 1;
    v[bad_frame * SIG.len() + bad_pixel] = bad;
    let p = dir.join("big.npy");
    write_npy(&p, ">i8", &bytes_of(&v, i64::to_be_bytes));
    let mut ds = NpyDataSet::open(&p).unwrap();
    let mut tile = Tile::zeros(0, 0, SIG, DType::F64);
    ds.read_tile(0, 4, &mut tile).unwrap();
    let err = ds.read_tile(3, 3, &mut tile).unwrap_err();
    match &err {
        IoError::Inexact {
            path,
            frame,
            pixel,
            value,
        } => assert_eq!(
            (path.as_path(), *frame, *pixel, *value),
            (p.as_path(), bad_frame as u64, bad_pixel, bad)
        ),
        other => panic!("expected IoError::Inexact, got {other}"),
    }
    let msg = err.to_string();
    for part in [
        p.display().to_string(),
        format!("frame {bad_frame}"),
        bad.to_string(),
        "2^53".into(),
    ] {
        assert!(msg.contains(&part), "`{msg}` does not name {part}");
    }
}

/// Unsupported `.npy` element types fail when the file is opened, naming the file and the
/// type found.
#[test]
fn npy_unsupported_types_name_file_and_type() {
    let dir = Scratch::new("npy-bad");
    for descr in ["<c8", "<f2", "<U4"] {
        let p = dir.join(&format!("{}.npy", &descr[1..]));
        write_npy(&p, descr, &vec![0u8; n_pixels() * 16]);
        let msg = NpyDataSet::open(&p).err().unwrap().to_string();
        assert!(
            msg.contains(&p.display().to_string()) && msg.contains(descr),
            "`{msg}` should name {} and {descr}",
            p.display()
        );
        assert!(msg.contains("f4"), "`{msg}` should list what is supported");
    }
}

/// Raw float32, big-endian, after a 100-byte file header: read natively with
/// `RawDataSet::open` (dtype float32), bit for bit.
#[test]
fn raw_big_endian_float32_with_an_offset() {
    let dir = Scratch::new("raw-f32");
    let v32: Vec<f32> = float_values().iter().map(|&x| x as f32).collect();
    let p = dir.join("f.raw");
    let mut bytes = vec![0xAB; 100];
    bytes.extend(bytes_of(&v32, f32::to_be_bytes));
    std::fs::write(&p, bytes).unwrap();
    let spec = RawSpec {
        nav_shape: NAV,
        sig_shape: SIG,
        dtype: parse_dtype("float32").unwrap(),
        byte_order: ByteOrder::Big,
        offset: 100,
        frame_header_bytes: 0,
    };
    let mut ds = RawDataSet::open(&p, spec).unwrap();
    assert_eq!(ds.element(), ElementType::F32);
    let want: Vec<u32> = v32.iter().map(|x| x.to_bits()).collect();
    assert_reads_f32(&mut ds, &want, "raw >f4");
    // Missing bytes are reported as before, counted in 4-byte pixels.
    let short = dir.join("short.raw");
    std::fs::write(&short, vec![0u8; 100 + 4 * SIG.len() * 5]).unwrap();
    let mut ds = RawDataSet::open(&short, spec).unwrap();
    let mut tile = Tile::zeros(0, 0, SIG, DType::F32);
    let err = ds.read_tile(0, 6, &mut tile).unwrap_err().to_string();
    assert!(
        err.contains(&format!("{}", 100 + 4 * SIG.len() * 6)),
        "{err}"
    );
}

/// Raw int16 (parsed from `<i2` and `int16`), little- and big-endian, with a file header
/// and a 6-byte header before every frame: converted exactly to float32, headers skipped.
#[test]
fn raw_int16_with_frame_headers_converts_exactly() {
    let dir = Scratch::new("raw-i16");
    let mut v = signed_values(i64::from(i16::MAX));
    v[2] = i64::from(i16::MIN);
    let want: Vec<u32> = v.iter().map(|&x| (x as f32).to_bits()).collect();
    for (name, order) in [("<i2", ByteOrder::Little), ("int16", ByteOrder::Big)] {
        let (element, mark) = ElementType::parse_with_order(name).unwrap();
        assert_eq!(element, ElementType::I16);
        assert_eq!(mark, (name == "<i2").then_some(ByteOrder::Little));
        let mut bytes = vec![0x55; 32];
        for frame in v.chunks(SIG.len()) {
            bytes.extend_from_slice(b"HEADER");
            bytes.extend(bytes_of(frame, |x| match order {
                ByteOrder::Little => (x as i16).to_le_bytes(),
                ByteOrder::Big => (x as i16).to_be_bytes(),
            }));
        }
        let p = dir.join("f.raw");
        std::fs::write(&p, bytes).unwrap();
        let spec = RawSpec {
            nav_shape: NAV,
            sig_shape: SIG,
            dtype: DType::U8, // replaced by the element's frame type
            byte_order: order,
            offset: 32,
            frame_header_bytes: 6,
        };
        let mut ds = RawDataSet::open_as(&p, spec, element).unwrap();
        assert_eq!(ds.spec().dtype, DType::F32);
        assert_eq!(ds.element(), ElementType::I16);
        assert_reads_f32(&mut ds, &want, name);
    }
    // Frames have no signed type: the frame-type parser says so and names the type.
    let e = parse_dtype("int16").unwrap_err();
    assert!(e.contains("int16") && e.contains("float32"), "{e}");
    assert_eq!(parse_dtype("u8"), Ok(DType::U8));
    assert_eq!(parse_dtype("f8"), Ok(DType::F64));
}

/// HDF5 float32 3-D and float64 4-D datasets read natively; int16 4-D, int8 3-D → float32
/// and int32, int64 → float64, exactly (libhdf5 converting int8/16/32 as it reads).
#[test]
fn hdf5_floats_and_signed_integers() {
    let dir = Scratch::new("h5");
    let p = dir.join("f.h5");
    let fv = float_values();
    let f32v: Vec<f32> = fv.iter().map(|&x| x as f32).collect();
    let mut i16v = signed_values(i64::from(i16::MAX));
    i16v[2] = i64::from(i16::MIN);
    let mut i8v = signed_values(i64::from(i8::MAX));
    i8v[2] = i64::from(i8::MIN);
    let mut i32v = signed_values(i64::from(i32::MAX));
    i32v[2] = i64::from(i32::MIN);
    let i64v = signed_values(1 << 53);
    let (nr, nc, r, c) = (NAV.rows, NAV.cols, SIG.rows, SIG.cols);
    {
        let f = hdf5::File::create(&p).unwrap();
        f.new_dataset_builder()
            .with_data(&Array3::from_shape_vec((nr * nc, r, c), f32v.clone()).unwrap())
            .create("f32_3d")
            .unwrap();
        f.new_dataset_builder()
            .with_data(&Array4::from_shape_vec((nr, nc, r, c), fv.clone()).unwrap())
            .create("f64_4d")
            .unwrap();
        let i16a: Vec<i16> = i16v.iter().map(|&x| x as i16).collect();
        f.new_dataset_builder()
            .with_data(&Array4::from_shape_vec((nr, nc, r, c), i16a).unwrap())
            .create("i16_4d")
            .unwrap();
        let i8a: Vec<i8> = i8v.iter().map(|&x| x as i8).collect();
        f.new_dataset_builder()
            .with_data(&Array3::from_shape_vec((nr * nc, r, c), i8a).unwrap())
            .create("i8_3d")
            .unwrap();
        let i32a: Vec<i32> = i32v.iter().map(|&x| x as i32).collect();
        f.new_dataset_builder()
            .with_data(&Array4::from_shape_vec((nr, nc, r, c), i32a).unwrap())
            .create("i32_4d")
            .unwrap();
        f.new_dataset_builder()
            .with_data(&Array4::from_shape_vec((nr, nc, r, c), i64v.clone()).unwrap())
            .create("i64_4d")
            .unwrap();
    }
    let as32 = |v: &[i64]| -> Vec<u32> { v.iter().map(|&x| (x as f32).to_bits()).collect() };
    let as64 = |v: &[i64]| -> Vec<u64> { v.iter().map(|&x| (x as f64).to_bits()).collect() };
    let open = |name: &str| Hdf5DataSet::open(&p, Some(name)).unwrap();
    // 3-D datasets have no scan shape: 1 × frames.
    let flat_nav = NavShape::new(1, NAV.len());
    let mut ds = open("f32_3d");
    assert_eq!((ds.element(), ds.nav_shape()), (ElementType::F32, flat_nav));
    let want: Vec<u32> = f32v.iter().map(|x| x.to_bits()).collect();
    assert_reads_f32_any_nav(&mut ds, &want, "h5 f32 3-D");
    let mut ds = open("f64_4d");
    assert_eq!(ds.element(), ElementType::F64);
    let want: Vec<u64> = fv.iter().map(|x| x.to_bits()).collect();
    assert_reads_f64(&mut ds, &want, "h5 f64 4-D");
    let mut ds = open("i16_4d");
    assert_eq!(ds.element(), ElementType::I16);
    assert_reads_f32(&mut ds, &as32(&i16v), "h5 i16 4-D");
    let mut ds = open("i8_3d");
    assert_eq!(ds.element(), ElementType::I8);
    assert_reads_f32_any_nav(&mut ds, &as32(&i8v), "h5 i8 3-D");
    let mut ds = open("i32_4d");
    assert_eq!(ds.element(), ElementType::I32);
    assert_reads_f64(&mut ds, &as64(&i32v), "h5 i32 4-D");
    let mut ds = open("i64_4d");
    assert_eq!(ds.element(), ElementType::I64);
    assert_reads_f64(&mut ds, &as64(&i64v), "h5 i64 4-D");
}

/// [`assert_reads`] for float32 frames of a 3-D dataset (scan shape 1 × frames).
fn assert_reads_f32_any_nav(ds: &mut dyn DataSet, want: &[u32], what: &str) {
    assert_reads(ds, (DType::F32, false), f32_bits, want, what);
}

/// HDF5: an int64 beyond 2^53 fails naming file, frame and value; unsupported types (bool,
/// strings) fail at open naming the file, the dataset, the type found and the types
/// supported.
#[test]
fn hdf5_errors_name_file_dataset_and_type() {
    let dir = Scratch::new("h5-bad");
    let p = dir.join("bad.h5");
    let (n, r, c) = (NAV.len(), SIG.rows, SIG.cols);
    let mut big = vec![0i64; n * r * c];
    let big_value = (1i64 << 53) + 1;
    big[2 * r * c + 3] = big_value;
    {
        let f = hdf5::File::create(&p).unwrap();
        f.new_dataset_builder()
            .with_data(&Array3::from_shape_vec((n, r, c), big).unwrap())
            .create("big")
            .unwrap();
        f.new_dataset_builder()
            .with_data(&Array3::from_elem((n, r, c), true))
            .create("flags")
            .unwrap();
        let s: hdf5::types::FixedAscii<4> = hdf5::types::FixedAscii::from_ascii(b"ab").unwrap();
        f.new_dataset_builder()
            .with_data(&Array3::from_elem((n, r, c), s))
            .create("text")
            .unwrap();
    }
    let mut ds = Hdf5DataSet::open(&p, Some("big")).unwrap();
    let mut tile = Tile::zeros(0, 0, SIG, DType::F64);
    ds.read_tile(0, 2, &mut tile).unwrap();
    let err = ds.read_tile(0, n, &mut tile).unwrap_err();
    assert!(
        matches!(err, IoError::Inexact { frame: 2, pixel: 3, value, .. } if value == big_value),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&p.display().to_string()) && msg.contains(&big_value.to_string()),
        "{msg}"
    );
    for (name, found) in [("flags", "bool"), ("text", "string")] {
        let msg = Hdf5DataSet::open(&p, Some(name))
            .err()
            .unwrap_or_else(|| panic!("dataset {name} should be refused"))
            .to_string();
        for part in [&p.display().to_string(), name, found, "float32", "int16"] {
            assert!(msg.contains(part), "`{msg}` does not name {part}");
        }
    }
}

/// Sizes from a file's header are untrusted: a 1 KB `.npy` declaring 100000 × 100000 ×
/// 256 × 256 frames, one whose shape overflows 64 bits, and a raw layout whose per-frame
/// header is 2^64 − 1 bytes are refused when opened, naming the sizes, before anything
/// is allocated or created.
#[test]
fn forged_sizes_are_refused_when_opened() {
    let dir = Scratch::new("forged");
    let big = dir.join("big.npy");
    let mut bytes = stemflow_processing::io::npy::header_bytes("<u2", &[100000, 100000, 256, 256]);
    bytes.extend_from_slice(&[0u8; 1024]);
    std::fs::write(&big, bytes).unwrap();
    match NpyDataSet::open(&big) {
        Err(IoError::Format { detail, .. }) => {
            assert!(detail.contains("[100000, 100000, 256, 256]"), "{detail}");
            assert!(
                detail.contains("1310720000000000 bytes of data"),
                "{detail}"
            );
            assert!(detail.contains("the file holds 1024"), "{detail}");
        }
        other => panic!("expected a format error, got {:?}", other.map(|_| ())),
    }

    let huge = dir.join("huge.npy");
    let bytes = stemflow_processing::io::npy::header_bytes("<u2", &[1 << 32, 1 << 32, 4, 4]);
    std::fs::write(&huge, bytes).unwrap();
    match NpyDataSet::open(&huge) {
        Err(IoError::Format { detail, .. }) => {
            // npyz's count overflows first in builds with overflow checks.
            assert!(
                detail.contains("more than 2^64") || detail.contains("fit in 64 bits"),
                "{detail}"
            )
        }
        other => panic!("expected a format error, got {:?}", other.map(|_| ())),
    }

    let raw = dir.join("frames.raw");
    std::fs::write(&raw, [0u8; 512]).unwrap();
    let spec = RawSpec {
        nav_shape: NavShape::new(2, 2),
        sig_shape: SigShape::new(8, 8),
        dtype: DType::U16,
        byte_order: ByteOrder::Little,
        offset: 0,
        frame_header_bytes: u64::MAX,
    };
    match RawDataSet::open(&raw, spec) {
        Err(IoError::Format { detail, .. }) => {
            assert!(
                detail.contains("18446744073709551615 header bytes"),
                "{detail}"
            )
        }
        other => panic!("expected a format error, got {:?}", other.map(|_| ())),
    }
}
