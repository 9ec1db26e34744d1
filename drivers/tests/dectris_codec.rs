//! DECTRIS frame codec conformance: the real stream-v1 capture decoded byte-exactly against
//! its `.npy`, interoperability with the reference C bitshuffle library in both directions,
//! and malformed input (every truncation, every flipped byte, lying headers) refused
//! without a panic.

mod dectris_support;

use dectris_support::{Rng, Scratch, data, pixels, pyenv, read_npy};
use std::fs;
use stemflow_drivers::dectris::codec::{
    self, CodecError, Compression, Encoding, Kernel, decode_into, decode_into_with, encode_bslz4,
};

/// Splits the capture into its messages (8-byte LE length + bytes, data README).
fn messages(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let n = u64::from_le_bytes(bytes[pos..pos + 8].try_into().unwrap()) as usize;
        out.push(&bytes[pos + 8..pos + 8 + n]);
        pos += 8 + n;
    }
    assert_eq!(pos, bytes.len());
    out
}

/// The capture's frames: (frame index, `dimage_d` JSON, blob).
fn capture_frames() -> Vec<(u64, serde_json::Value, Vec<u8>)> {
    let bytes = fs::read(data("stream-v1/synthetic_16x16_256_u16.dump")).unwrap();
    let msgs = messages(&bytes);
    let mut frames = Vec::new();
    let mut i = 0;
    while i < msgs.len() {
        let json: Option<serde_json::Value> = serde_json::from_slice(msgs[i]).ok();
        if json.as_ref().and_then(|j| j["htype"].as_str()) == Some("dimage-1.0") {
            let frame = json.unwrap()["frame"].as_u64().unwrap();
            let d: serde_json::Value = serde_json::from_slice(msgs[i + 1]).unwrap();
            assert_eq!(d["htype"], "dimage_d-1.0");
            frames.push((frame, d, msgs[i + 2].to_vec()));
            i += 4;
        } else {
            i += 1;
        }
    }
    frames
}

#[test]
fn stream_v1_capture_decodes_byte_exact_with_every_kernel() {
    let npy = read_npy(&data("stream-v1/synthetic_16x16_256_u16.npy"));
    assert_eq!(npy.shape, [16, 16, 256, 256]);
    let frame_bytes = 256 * 256 * 2;
    let frames = capture_frames();
    assert_eq!(frames.len(), 256);
    let mut out = vec![0u8; frame_bytes];
    let mut sum = 0u64;
    for (k, (index, d, blob)) in frames.iter().enumerate() {
        assert_eq!(*index, k as u64);
        assert_eq!(d["size"].as_u64(), Some(blob.len() as u64));
        assert_eq!(d["shape"], serde_json::json!([256, 256]));
        let enc = Encoding::parse_for(d["encoding"].as_str().unwrap(), 2).unwrap();
        assert_eq!(enc.compression, Compression::BitshuffleLz4);
        let expected = &npy.data[k * frame_bytes..(k + 1) * frame_bytes];
        // Every kernel on a sample, the default one on all frames.
        let kernels: &[Kernel] = if k % 37 == 0 {
            &[Kernel::Scalar, Kernel::Sse2, Kernel::Avx2, Kernel::Auto]
        } else {
            &[Kernel::Auto]
        };
        for &kernel in kernels {
            out.fill(0xA5);
            let n = decode_into_with(&enc, blob, &mut out, kernel).unwrap();
            assert_eq!(n, frame_bytes);
            assert!(out == expected, "frame {k} differs ({kernel:?})");
        }
        sum += out
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as u64)
            .sum::<u64>();
    }
    assert_eq!(sum, 34_446_517, "README sum of the capture");
}

#[test]
fn our_encoding_of_the_capture_roundtrips_and_is_about_as_small() {
    let npy = read_npy(&data("stream-v1/synthetic_16x16_256_u16.npy"));
    let frames = capture_frames();
    let frame_bytes = 256 * 256 * 2;
    let enc = Encoding::parse("bs16-lz4<").unwrap();
    let (mut ours, mut theirs) = (0usize, 0usize);
    let mut out = vec![0u8; frame_bytes];
    for (k, (_, _, blob)) in frames.iter().enumerate().step_by(5) {
        let frame = &npy.data[k * frame_bytes..(k + 1) * frame_bytes];
        let mine = encode_bslz4(frame, 2, 0);
        // Same header as the reference: total bytes, default block of 4096 u16 = 8192 bytes.
        assert_eq!(mine[..12], blob[..12], "frame {k} header");
        decode_into(&enc, &mine, &mut out).unwrap();
        assert!(out == frame, "frame {k}");
        ours += mine.len();
        theirs += blob.len();
    }
    assert!(
        (ours as f64) < 1.5 * theirs as f64,
        "our greedy LZ4 gives {ours} bytes, the reference {theirs}"
    );
}

/// Runs the reference library on the cases in `dir`: writes `<name>.ref` (its bitshuffle-LZ4
/// of `<name>.raw` with the 12-byte header of §2.5) and `<name>.back` (its decoding of our
/// `<name>.ours`).
const REFERENCE_SCRIPT: &str = r#"
import sys, json, struct, numpy as np, bitshuffle
d = sys.argv[1]
for c in json.load(open(d + "/cases.json")):
    dt = np.dtype({1: "<u1", 2: "<u2", 4: "<u4"}[c["e"]])
    name = d + "/" + c["name"]
    raw = np.fromfile(name + ".raw", dtype=dt)
    block = c["block"] or max(128, (8192 // dt.itemsize) // 8 * 8)
    comp = bitshuffle.compress_lz4(raw, block)
    with open(name + ".ref", "wb") as f:
        f.write(struct.pack(">QI", raw.nbytes, block * dt.itemsize) + comp.tobytes())
    ours = np.fromfile(name + ".ours", dtype=np.uint8)
    total, block_bytes = struct.unpack(">QI", ours[:12].tobytes())
    assert total == raw.nbytes, (total, raw.nbytes)
    back = bitshuffle.decompress_lz4(ours[12:], (total // dt.itemsize,), dt, block_bytes // dt.itemsize)
    back.tofile(name + ".back")
print("ok")
"#;

#[test]
fn interoperates_with_the_reference_c_library_both_ways() {
    let env = pyenv();
    let dir = Scratch::new("bslz4-ref");
    let mut rng = Rng(0x5eed_1234);
    let mut cases = Vec::new();
    let mut inputs = Vec::new();
    for e in [1usize, 2, 4] {
        for (n, block) in [
            (1usize, 0usize),
            (7, 8),
            (8, 8),
            (1001, 24),
            (4099, 0),
            (12_345, 256),
            (65_541, 1000),
            (36_864, 0),
            (36_869, 2048),
            (9000, 8),
        ] {
            let name = format!("e{e}-n{n}-b{block}");
            let raw = pixels(&mut rng, n, e);
            fs::write(dir.0.join(format!("{name}.raw")), &raw).unwrap();
            fs::write(
                dir.0.join(format!("{name}.ours")),
                encode_bslz4(&raw, e, block),
            )
            .unwrap();
            cases.push(serde_json::json!({"name": name, "e": e, "block": block}));
            inputs.push((name, e, raw));
        }
    }
    fs::write(
        dir.0.join("cases.json"),
        serde_json::to_vec(&cases).unwrap(),
    )
    .unwrap();
    let said = env.run(REFERENCE_SCRIPT, &[dir.0.to_str().unwrap()]);
    assert_eq!(said.trim(), "ok");
    for (name, e, raw) in inputs {
        let theirs = fs::read(dir.0.join(format!("{name}.ref"))).unwrap();
        let enc = Encoding {
            compression: Compression::BitshuffleLz4,
            elem_size: e,
        };
        for kernel in [Kernel::Scalar, Kernel::Sse2, Kernel::Avx2] {
            let mut out = vec![0xEEu8; raw.len()];
            decode_into_with(&enc, &theirs, &mut out, kernel)
                .unwrap_or_else(|err| panic!("{name}: {err}"));
            assert!(
                out == raw,
                "{name}: our decoding of the reference differs ({kernel:?})"
            );
        }
        let back = fs::read(dir.0.join(format!("{name}.back"))).unwrap();
        assert!(
            back == raw,
            "{name}: the reference's decoding of ours differs"
        );
    }
}

/// A small blob with every part of the layout: 3 full blocks of 32 u16, a partial block of
/// 8, and 5 leftover elements stored raw.
fn small_blob() -> (Vec<u8>, Vec<u8>) {
    let mut rng = Rng(77);
    let raw = pixels(&mut rng, 3 * 32 + 8 + 5, 2);
    let blob = encode_bslz4(&raw, 2, 32);
    (raw, blob)
}

const BS16: Encoding = Encoding {
    compression: Compression::BitshuffleLz4,
    elem_size: 2,
};

#[test]
fn every_truncation_is_an_error() {
    let (raw, blob) = small_blob();
    let mut out = vec![0u8; raw.len()];
    decode_into(&BS16, &blob, &mut out).unwrap();
    assert_eq!(out, raw);
    for len in 0..blob.len() {
        let r = decode_into(&BS16, &blob[..len], &mut out);
        assert!(
            r.is_err(),
            "truncated to {len} of {} bytes decoded",
            blob.len()
        );
    }
    let lz = codec::encode_lz4(&raw);
    let lz4 = Encoding::parse("lz4<").unwrap();
    decode_into(&lz4, &lz, &mut out).unwrap();
    assert_eq!(out, raw);
    for len in 0..lz.len() {
        assert!(
            decode_into(&lz4, &lz[..len], &mut out).is_err(),
            "lz4 truncated to {len}"
        );
    }
    // One byte too many is refused as well.
    let mut long = blob.clone();
    long.push(0);
    assert!(matches!(
        decode_into(&BS16, &long, &mut out),
        Err(CodecError::Leftover {
            expected: 10,
            observed: 11,
            ..
        })
    ));
    let raw_enc = Encoding::parse("<").unwrap();
    assert!(matches!(
        decode_into(&raw_enc, &raw[1..], &mut out),
        Err(CodecError::RawSize { .. })
    ));
}

/// The HDF5 LZ4 filter's framing (§2.5 last paragraph), built by hand: 64-byte blocks, the
/// last one short, one stored raw.
#[test]
fn hdf5_lz4_framing_decodes_and_every_truncation_is_an_error() {
    let (raw, _) = small_blob();
    let mut blob = Vec::new();
    blob.extend_from_slice(&(raw.len() as u64).to_be_bytes());
    blob.extend_from_slice(&64u32.to_be_bytes());
    for (i, chunk) in raw.chunks(64).enumerate() {
        let stored = if i == 1 {
            chunk.to_vec()
        } else {
            codec::encode_lz4(chunk)
        };
        assert!(i == 1 || stored.len() != chunk.len());
        blob.extend_from_slice(&(stored.len() as u32).to_be_bytes());
        blob.extend_from_slice(&stored);
    }
    let mut out = vec![0u8; raw.len()];
    assert_eq!(
        codec::decode_hdf5_lz4_into(&blob, &mut out).unwrap(),
        raw.len()
    );
    assert_eq!(out, raw);
    for len in 0..blob.len() {
        assert!(
            codec::decode_hdf5_lz4_into(&blob[..len], &mut out).is_err(),
            "truncated to {len}"
        );
    }
    let mut long = blob.clone();
    long.push(0);
    assert!(matches!(
        codec::decode_hdf5_lz4_into(&long, &mut out),
        Err(CodecError::Leftover { observed: 1, .. })
    ));
    let mut short_out = vec![0u8; raw.len() - 2];
    assert!(matches!(
        codec::decode_hdf5_lz4_into(&blob, &mut short_out),
        Err(CodecError::TotalSize { .. })
    ));
}

#[test]
fn flipped_bytes_never_panic_and_framing_damage_is_an_error() {
    let (raw, blob) = small_blob();
    let mut out = vec![0u8; raw.len()];
    let mut errors = 0;
    for pos in 0..blob.len() {
        for flip in [0x01u8, 0x80, 0xFF] {
            let mut bad = blob.clone();
            bad[pos] ^= flip;
            // A flip inside literals may decode to other pixels: bitshuffle-LZ4 has no checksum
            // (the stream's md5 `hash` is there for that, §2.4). It must not panic.
            let r = decode_into(&BS16, &bad, &mut out);
            if r.is_err() {
                errors += 1;
            } else if pos < 12 {
                // Header bytes: only the block-size and total fields exist; both must fail.
                panic!("flipping header byte {pos} by {flip:#x} decoded");
            }
        }
        // The first block's 4-byte length prefix: any change makes the framing fail.
        if (12..16).contains(&pos) {
            let mut bad = blob.clone();
            bad[pos] ^= 0x01;
            assert!(
                decode_into(&BS16, &bad, &mut out).is_err(),
                "prefix byte {pos}"
            );
        }
    }
    assert!(
        errors > blob.len(),
        "only {errors} of {} flips refused",
        3 * blob.len()
    );
    // Random garbage: no panic, whatever it is.
    let mut rng = Rng(99);
    for _ in 0..20_000 {
        let len = rng.below(80) as usize;
        let mut junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if len >= 12 && rng.below(2) == 0 {
            junk[..12].copy_from_slice(&blob[..12]);
        }
        let _ = decode_into(&BS16, &junk, &mut out);
        let _ = decode_into(&Encoding::parse("lz4<").unwrap(), &junk, &mut out);
    }
}

#[test]
fn lying_headers_are_errors_with_the_numbers() {
    let (raw, blob) = small_blob();
    let mut out = vec![0u8; raw.len()];
    // Total size: any non-zero value other than the frame size.
    for total in [1u64, raw.len() as u64 - 2, raw.len() as u64 + 2, u64::MAX] {
        let mut bad = blob.clone();
        bad[..8].copy_from_slice(&total.to_be_bytes());
        let err = decode_into(&BS16, &bad, &mut out).unwrap_err();
        assert_eq!(
            err,
            CodecError::TotalSize {
                header: total,
                expected: raw.len()
            }
        );
        assert!(err.to_string().contains(&raw.len().to_string()));
    }
    // Zero total (the LiberTEM mock's header) means "the frame size".
    let mut zero = blob.clone();
    zero[..8].fill(0);
    decode_into(&BS16, &zero, &mut out).unwrap();
    assert_eq!(out, raw);
    // Block sizes that are not whole multiples of 8 elements.
    for bytes in [1u32, 2, 15, 17, 30] {
        let mut bad = blob.clone();
        bad[8..12].copy_from_slice(&bytes.to_be_bytes());
        assert_eq!(
            decode_into(&BS16, &bad, &mut out).unwrap_err(),
            CodecError::BlockSize {
                bytes,
                elem_size: 2
            }
        );
    }
    // Valid-looking but wrong block sizes: the blocks no longer decode to their size.
    for bytes in [16u32, 32, 128, 8192, 1 << 31] {
        let mut bad = blob.clone();
        bad[8..12].copy_from_slice(&bytes.to_be_bytes());
        let err = decode_into(&BS16, &bad, &mut out).unwrap_err();
        assert!(
            matches!(
                err,
                CodecError::BlockLz4 { .. }
                    | CodecError::Leftover { .. }
                    | CodecError::BlockTruncated { .. }
            ),
            "block size {bytes}: {err}"
        );
    }
    // A block length prefix larger than the blob.
    let mut bad = blob.clone();
    bad[12..16].copy_from_slice(&10_000u32.to_be_bytes());
    let err = decode_into(&BS16, &bad, &mut out).unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::BlockTruncated {
                block: 0,
                at: 16,
                needed: 10_000,
                ..
            }
        ),
        "{err}"
    );
    // Output buffers that do not fit.
    let mut odd = vec![0u8; raw.len() - 1];
    assert!(matches!(
        decode_into(&BS16, &blob, &mut odd),
        Err(CodecError::OutputLen { .. })
    ));
    let bad_elem = Encoding {
        compression: Compression::BitshuffleLz4,
        elem_size: 3,
    };
    assert!(matches!(
        decode_into(&bad_elem, &blob, &mut out),
        Err(CodecError::ElemSize { elem_size: 3 })
    ));
}
