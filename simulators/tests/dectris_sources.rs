//! The DECTRIS simulator's other sources: synthetic specimen frames (bitshuffle-LZ4, LZ4 and
//! uncompressed, decoded here with the driver's codec and compared with frames rendered here
//! from the same specimen) and an HDF5 master/data set (chunks sent as stored, compared with
//! the chunk bytes located through the HDF5 library and read from the data file here).

mod dectris_support;

use dectris_support::*;
use serde_json::json;
use std::io::{Read, Seek, SeekFrom};
use stemflow_core::{NavShape, SigShape};
use stemflow_drivers::dectris::codec::{Encoding, decode_into};
use stemflow_simulators::dectris::{DectrisSim, DectrisSimConfig, DectrisSource, Pacing};

/// Frame `i` of [`small_source`] as 16-bit little-endian bytes.
fn expected_frame(i: u64) -> Vec<u8> {
    let (nav, sig) = (NavShape::new(4, 4), SigShape::new(32, 32));
    let mut counts = vec![0u32; sig.len()];
    small_specimen().render_frame(nav, i, sig, 9, &mut counts);
    counts
        .iter()
        .flat_map(|&c| (c.min(65535) as u16).to_le_bytes())
        .collect()
}

#[test]
fn synthetic_frames_decode_to_the_specimen_in_every_compression() {
    let mut cfg = DectrisSimConfig::new(small_source());
    cfg.pacing = Pacing::AsFastAsPossible;
    let s = DectrisSim::start(cfg).expect("start");
    let a = s.api_addr();
    assert_eq!(config(a, "compression"), "bslz4", "a DCU starts with bslz4");
    let mut p = Puller::connect(&s.stream_endpoint());
    set(a, "trigger_mode", json!("ints"));
    set(a, "nimages", json!(20)); // 16 scan positions, then 4 more cycling
    for (compression, encoding) in [("bslz4", "bs16-lz4<"), ("lz4", "lz4<"), ("none", "<")] {
        set(a, "compression", json!(compression));
        arm(a);
        let h = p.recv();
        assert_eq!(json(&h[1])["compression"], compression);
        command(a, "trigger");
        let (images, _) = images_until_end(&mut p);
        assert_eq!(images.len(), 20);
        for (i, m) in images.iter().enumerate() {
            let d = json(&m[1]);
            assert_eq!(d["encoding"], encoding);
            assert_eq!(d["shape"], json!([32, 32]));
            assert_eq!(d["type"], "uint16");
            assert_eq!(json(&m[0])["hash"], md5_hex(&m[2]));
            let enc = Encoding::parse(encoding).expect("our encoding strings parse");
            let mut out = vec![0u8; 32 * 32 * 2];
            let n = decode_into(&enc, &m[2], &mut out)
                .unwrap_or_else(|e| panic!("{compression} frame {i}: {e}"));
            assert_eq!(n, out.len());
            // Frames cycle through the 16 rendered scan positions.
            assert_eq!(
                out,
                expected_frame(i as u64 % 16),
                "{compression} frame {i} differs from the specimen"
            );
        }
        if compression == "bslz4" {
            // bitshuffle-LZ4 framing (§2.5): u64 BE size, u32 BE block size 8192.
            let b = &images[0][2];
            assert_eq!(u64::from_be_bytes(b[..8].try_into().unwrap()), 2048);
            assert_eq!(u32::from_be_bytes(b[8..12].try_into().unwrap()), 8192);
        }
    }
}

fn arina(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/dectris/arina/"
    ))
    .join(name)
}

/// The stored bytes of each chunk of `entry/data/data` in the ARINA data file, located
/// with HDF5's chunk index and read from the file directly.
fn stored_chunks() -> Vec<Vec<u8>> {
    let path = arina("test_00_data_000001.h5");
    let f = hdf5::File::open(&path).expect("open the ARINA data file");
    let ds = f.dataset("entry/data/data").expect("entry/data/data");
    let n = ds.num_chunks().expect("a chunked data set");
    let mut raw = std::fs::File::open(&path).unwrap();
    let mut chunks: Vec<(u64, Vec<u8>)> = (0..n)
        .map(|i| {
            let info = ds.chunk_info(i).expect("chunk info");
            assert_eq!(info.filter_mask, 0, "chunk {i}: every filter applied");
            let mut buf = vec![0u8; info.size as usize];
            raw.seek(SeekFrom::Start(info.addr)).unwrap();
            raw.read_exact(&mut buf).unwrap();
            (info.offset[0], buf)
        })
        .collect();
    chunks.sort_by_key(|(frame, _)| *frame);
    chunks.into_iter().map(|(_, c)| c).collect()
}

#[test]
fn hdf5_chunks_are_sent_as_stored() {
    let chunks = stored_chunks();
    assert_eq!(chunks.len(), 16);
    let mut cfg = DectrisSimConfig::new(DectrisSource::from_path(arina("test_00_master.h5")));
    cfg.pacing = Pacing::AsFastAsPossible;
    let s = DectrisSim::start(cfg).expect("start the HDF5 replay");
    let a = s.api_addr();
    assert_eq!(config(a, "x_pixels_in_detector"), 192);
    assert_eq!(config(a, "y_pixels_in_detector"), 192);
    assert_eq!(config(a, "bit_depth_image"), 32);
    assert_eq!(config(a, "compression"), "bslz4");
    let mut p = Puller::connect(&s.stream_endpoint());
    set(a, "trigger_mode", json!("ints"));
    set(a, "ntrigger", json!(1));
    set(a, "nimages", json!(16));
    arm(a);
    p.recv();
    command(a, "trigger");
    let (images, _) = images_until_end(&mut p);
    assert_eq!(images.len(), 16);
    for (i, m) in images.iter().enumerate() {
        let d = json(&m[1]);
        assert_eq!(d["encoding"], "bs32-lz4<");
        assert_eq!(d["type"], "uint32");
        assert_eq!(d["shape"], json!([192, 192]));
        assert_eq!(m[2], chunks[i], "frame {i}: the chunk as stored");
        // A dark recording: every pixel decodes to 0.
        let mut out = vec![1u8; 192 * 192 * 4];
        decode_into(&Encoding::parse("bs32-lz4<").unwrap(), &m[2], &mut out).unwrap();
        assert!(out.iter().all(|&b| b == 0), "frame {i} is not dark");
    }
}
