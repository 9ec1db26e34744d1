//! DECTRIS HDF5 master/data sets read from raw chunks with our decoder: the real ARINA
//! recording (all-zero frames: container, filter framing, metadata), and a set written here
//! with h5py + hdf5plugin (the reference bitshuffle HDF5 filter) with non-zero frames, two
//! data files, a pixel mask and a chunk stored with the filter skipped, checked value for
//! value.

mod dectris_support;

use dectris_support::{Scratch, data, pyenv};
use std::fs;
use stemflow_core::frame::{Tile, TileData};
use stemflow_core::{DType, NavShape, SigShape};
use stemflow_drivers::dectris::codec::{self, bslz4_header};
use stemflow_drivers::dectris::master::{MasterFile, MasterFileError};

#[test]
fn reads_the_real_arina_set() {
    // `stemflow process` moves the reader to a worker thread.
    fn send<T: Send>() {}
    send::<MasterFile>();
    let mut f = MasterFile::open(data("arina/test_00_master.h5")).unwrap();
    assert_eq!(f.frames(), 16);
    assert_eq!(f.sig_shape(), SigShape::new(192, 192));
    assert_eq!(f.dtype(), DType::U32);
    assert_eq!(
        f.nav_shape(),
        Some(NavShape::new(4, 4)),
        "from test_00.h5 STEM Metadata"
    );
    // The recording's mask excludes nothing, as its number_of_excluded_pixels says.
    let md = f.metadata();
    assert_eq!(md["number_of_excluded_pixels"], "0");
    assert!(f.masked_pixels().is_empty());
    assert_eq!(md["x_pixel_size"].parse::<f64>().unwrap(), 1e-4);
    assert_eq!(f.unit("x_pixel_size"), Some("m"));
    assert_eq!(
        md["count_time"].parse::<f64>().unwrap(),
        9.950000094249845e-05
    );
    assert_eq!(f.unit("count_time"), Some("s"));
    assert_eq!(
        md["frame_time"].parse::<f64>().unwrap(),
        9.960000094249845e-05
    );
    assert_eq!(md["bit_depth_image"], "32");
    assert_eq!(md["bit_depth_readout"], "8");
    assert_eq!(md["description"], "Dectris ARINA CZT");
    assert_eq!(md["ntrigger"], "16");
    assert_eq!(md["nimages"], "1");
    assert_eq!(md["trigger_mode"], "exts");
    assert_eq!(md["compression"], "bslz4");
    assert_eq!(md["x_pixels_in_detector"], "192");
    assert_eq!(md["countrate_correction_applied"], "1");
    assert_eq!(md["eiger_fw_version"], "release-2024.1");

    // The stored chunk is the filter's framing: 12-byte header (frame bytes, 8192-byte
    // blocks), then LZ4 blocks (§2.5).
    let (raw, filtered) = f.read_raw_chunk(0).unwrap();
    assert!(filtered);
    assert_eq!(raw.len(), 858, "h5py reports 858 stored bytes for chunk 0");
    assert_eq!(bslz4_header(raw).unwrap(), (192 * 192 * 4, 8192));

    let mut tile = Tile::zeros(0, 1, SigShape::new(1, 1), DType::U8);
    let ranges: Vec<_> = f.tile_ranges(5).collect();
    assert_eq!(ranges, [(0, 5), (5, 5), (10, 5), (15, 1)]);
    for (first, n) in ranges {
        tile.data = TileData::U32(vec![7; 3]); // garbage that must be replaced
        f.read_tile(first, n, &mut tile).unwrap();
        assert_eq!(tile.first_frame, first);
        assert_eq!(tile.n_frames, n);
        assert_eq!(tile.sig_shape, SigShape::new(192, 192));
        let TileData::U32(v) = &tile.data else {
            panic!("dtype")
        };
        assert_eq!(v.len(), n * 192 * 192);
        assert!(v.iter().all(|&p| p == 0), "a dark recording");
    }
    // A data file opened on its own: the frames, without metadata or mask.
    let mut d = MasterFile::open(data("arina/test_00_data_000001.h5")).unwrap();
    assert_eq!(
        (d.frames(), d.sig_shape(), d.dtype()),
        (16, SigShape::new(192, 192), DType::U32)
    );
    assert!(d.metadata().is_empty());
    assert_eq!(d.nav_shape(), None);
    d.read_tile(3, 2, &mut tile).unwrap();
    assert_eq!(tile.data, TileData::U32(vec![0; 2 * 192 * 192]));

    assert!(matches!(
        f.read_tile(15, 2, &mut tile),
        Err(MasterFileError::Range {
            first: 15,
            end: 17,
            frames: 16,
            ..
        })
    ));
}

/// Writes, with the reference HDF5 filter: `x_data_000001.h5` (5 frames) and
/// `x_data_000002.h5` (3 frames, frame 1 stored with the filter skipped) of 48 × 40 u16,
/// `x_master.h5` linking them with detector metadata and a pixel mask whose pixels hold
/// 65535 in the data (as the DCU writes them); `expected.u16` (frames as written) and
/// `mask.u32`; `lonely_master.h5` linking a missing data file. Then checks that our
/// encoder's blob (`ours.bslz4`, of `ours.u16`) decodes through the HDF5 filter.
const WRITE_SET: &str = r#"
import sys, numpy as np, h5py, hdf5plugin
d = sys.argv[1]
rows, cols = 48, 40
def frames(n, seed):
    r = np.random.default_rng(seed)
    f = r.poisson(0.5, size=(n, rows, cols)).astype("<u2")
    f[:, 10:20, 12:22] += r.poisson(900, size=(n, 10, 10)).astype("<u2")
    return f
a, b = frames(5, 1), frames(3, 2)
mask = np.zeros((rows, cols), "<u4")
for (y, x, v) in [(0, 0, 1), (5, 7, 2), (47, 39, 16), (12, 15, 8), (30, 1, 4)]:
    mask[y, x] = v
a[:, mask != 0] = 65535
b[:, mask != 0] = 65535
comp = hdf5plugin.Bitshuffle(nelems=0, cname="lz4")
for name, arr in [("x_data_000001.h5", a), ("x_data_000002.h5", b)]:
    with h5py.File(f"{d}/{name}", "w") as f:
        f.create_dataset("entry/data/data", data=arr, chunks=(1, rows, cols), **comp)
with h5py.File(f"{d}/x_data_000002.h5", "a") as f:
    f["entry/data/data"].id.write_direct_chunk((1, 0, 0), b[1].tobytes(), filter_mask=1)
with h5py.File(f"{d}/x_data_000002.h5", "r") as f:
    assert (f["entry/data/data"][1] == b[1]).all()
with h5py.File(f"{d}/x_master.h5", "w") as m:
    m["entry/data/data_000001"] = h5py.ExternalLink("x_data_000001.h5", "/entry/data/data")
    m["entry/data/data_000002"] = h5py.ExternalLink("x_data_000002.h5", "/entry/data/data")
    det = m.create_group("entry/instrument/detector")
    det["x_pixel_size"] = 7.5e-05
    det["x_pixel_size"].attrs["units"] = np.bytes_("m")
    det["count_time"] = 0.001
    det["count_time"].attrs["units"] = "s"
    det["frame_time"] = 0.00125
    det["bit_depth_image"] = np.uint32(16)
    det["description"] = np.bytes_("Dectris QUADRO Si 250K")
    det["countrate_correction_applied"] = np.int8(-1)
    spec = det.create_group("detectorSpecific")
    spec["pixel_mask"] = mask
    spec["ntrigger"] = np.uint64(8)
    spec["count_time"] = 0.002
    spec["software_version"] = np.bytes_("1.8.0")
    spec["roi_mode"] = np.bytes_("")
with h5py.File(f"{d}/lonely_master.h5", "w") as m:
    m["entry/data/data_000001"] = h5py.ExternalLink("nowhere_data_000001.h5", "/entry/data/data")
np.concatenate([a, b]).tofile(f"{d}/expected.u16")
mask.tofile(f"{d}/mask.u32")

ours = np.fromfile(f"{d}/ours.u16", dtype="<u2").reshape(1, rows, cols)
blob = open(f"{d}/ours.bslz4", "rb").read()
with h5py.File(f"{d}/filtercheck.h5", "w") as f:
    ds = f.create_dataset("x", shape=ours.shape, dtype="<u2", chunks=(1, rows, cols), **comp)
    ds.id.write_direct_chunk((0, 0, 0), blob)
with h5py.File(f"{d}/filtercheck.h5", "r") as f:
    assert (f["x"][()] == ours).all(), "the HDF5 filter decodes our blob differently"

# An LZ4-filtered set (DECTRIS `compression = lz4`): 1 KiB LZ4 blocks, one frame of noise
# (incompressible: blocks stored raw) and two sparse ones.
r = np.random.default_rng(5)
y = np.zeros((3, 32, 24), "<u4")
y[0] = r.integers(0, 2**32, size=(32, 24), dtype="<u4")
y[1:] = r.poisson(0.3, size=(2, 32, 24))
with h5py.File(f"{d}/y_data_000001.h5", "w") as f:
    f.create_dataset("entry/data/data", data=y, chunks=(1, 32, 24), **hdf5plugin.LZ4(nbytes=1024))
with h5py.File(f"{d}/y_master.h5", "w") as m:
    m["entry/data/data_000001"] = h5py.ExternalLink("y_data_000001.h5", "/entry/data/data")
y.tofile(f"{d}/y.u32")
print("ok")
"#;

fn u16s(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

#[test]
fn reads_a_reference_written_set_exactly_with_the_mask() {
    let env = pyenv();
    let dir = Scratch::new("dectris-master");
    // Our encoder's output for the HDF5-filter check: a frame of the same shape.
    let frame = codec::bench::synthetic_frame(48, 40, 2, 3, 11);
    fs::write(dir.0.join("ours.u16"), &frame).unwrap();
    fs::write(dir.0.join("ours.bslz4"), codec::encode_bslz4(&frame, 2, 0)).unwrap();
    assert_eq!(env.run(WRITE_SET, &[dir.0.to_str().unwrap()]).trim(), "ok");

    let expected = u16s(&fs::read(dir.0.join("expected.u16")).unwrap());
    let mask: Vec<u32> = fs::read(dir.0.join("mask.u32"))
        .unwrap()
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let pixels = 48 * 40;
    assert_eq!(expected.len(), 8 * pixels);

    let mut f = MasterFile::open(dir.0.join("x_master.h5")).unwrap();
    assert_eq!(f.frames(), 8);
    assert_eq!(f.sig_shape(), SigShape::new(48, 40));
    assert_eq!(f.dtype(), DType::U16);
    assert_eq!(f.nav_shape(), None);
    let want_masked: Vec<u32> = vec![0, 5 * 40 + 7, 12 * 40 + 15, 30 * 40 + 1, 47 * 40 + 39];
    assert_eq!(f.masked_pixels(), want_masked);

    let md = f.metadata();
    assert_eq!(md["x_pixel_size"], "0.000075");
    assert_eq!(f.unit("x_pixel_size"), Some("m"));
    assert_eq!(md["count_time"], "0.001");
    assert_eq!(f.unit("count_time"), Some("s"));
    assert_eq!(md["detectorSpecific/count_time"], "0.002");
    assert_eq!(md["frame_time"], "0.00125");
    assert_eq!(md["bit_depth_image"], "16");
    assert_eq!(md["description"], "Dectris QUADRO Si 250K");
    assert_eq!(md["countrate_correction_applied"], "-1");
    assert_eq!(md["ntrigger"], "8");
    assert_eq!(md["software_version"], "1.8.0");
    assert_eq!(md["roi_mode"], "");
    assert!(!md.contains_key("pixel_mask"), "arrays are not metadata");

    // Frame 6 (part 2, chunk 1) was stored with the filter skipped.
    let (raw, filtered) = f.read_raw_chunk(6).unwrap();
    assert!(!filtered);
    assert_eq!(raw.len(), pixels * 2);
    let (raw, filtered) = f.read_raw_chunk(0).unwrap();
    assert!(filtered);
    assert_eq!(bslz4_header(raw).unwrap().0, (pixels * 2) as u64);

    // Tiles of 3 cross the boundary between the data files (after frame 5).
    let mut tile = Tile::zeros(0, 1, SigShape::new(1, 1), DType::U8);
    let mut seen = vec![0u16; 8 * pixels];
    for (first, n) in f.tile_ranges(3) {
        f.read_tile(first, n, &mut tile).unwrap();
        let TileData::U16(v) = &tile.data else {
            panic!("dtype {:?}", tile.data.dtype())
        };
        seen[first as usize * pixels..(first as usize + n) * pixels].copy_from_slice(v);
    }
    let mut want = expected.clone();
    for (i, w) in want.iter_mut().enumerate() {
        if mask[i % pixels] != 0 {
            assert_eq!(*w, 65535);
            *w = 0;
        }
    }
    assert!(want.iter().any(|&v| v > 500), "non-trivial frames");
    assert!(
        seen == want,
        "decoded frames differ from what h5py wrote (mask applied)"
    );

    f.set_apply_mask(false);
    f.read_tile(4, 3, &mut tile).unwrap();
    let TileData::U16(v) = &tile.data else {
        panic!()
    };
    assert!(
        v[..] == expected[4 * pixels..7 * pixels],
        "unmasked frames 4..7"
    );

    assert!(matches!(
        f.read_raw_chunk(8),
        Err(MasterFileError::Range { frames: 8, .. })
    ));

    // The LZ4-filtered set, exactly.
    let mut y = MasterFile::open(dir.0.join("y_master.h5")).unwrap();
    assert_eq!(
        (y.frames(), y.sig_shape(), y.dtype()),
        (3, SigShape::new(32, 24), DType::U32)
    );
    y.read_tile(0, 3, &mut tile).unwrap();
    let want: Vec<u32> = fs::read(dir.0.join("y.u32"))
        .unwrap()
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(tile.data, TileData::U32(want));

    let err = MasterFile::open(dir.0.join("lonely_master.h5")).unwrap_err();
    assert!(matches!(err, MasterFileError::Hdf5 { .. }), "{err}");
    assert!(err.to_string().contains("data_000001"), "{err}");
    let err = MasterFile::open(dir.0.join("missing_master.h5")).unwrap_err();
    assert!(err.to_string().contains("missing_master.h5"), "{err}");
}
