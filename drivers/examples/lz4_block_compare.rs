//! LZ4 block decoding: our decoder (`codec::lz4`) against `lz4_flex`, on real DECTRIS data.
//!
//! Decision 0016 rests on these figures. Four sets of bitshuffle-LZ4 blobs, of three kinds:
//! - `capture`: the 256 frames (256 × 256 u16, `bs16-lz4<`) of the stream-v1 capture in
//!   `shared/data/dectris/stream-v1/`, compressed by the reference C library, so byte for byte
//!   what a DCU sends;
//! - `arina`: the 16 chunks (192 × 192 u32) of the real ARINA HDF5 set in
//!   `shared/data/dectris/arina/`, read as stored (a dark recording: every block is zeros);
//! - `synthetic`: 64 frames each of 256 × 256 u16 and 192 × 192 u32 (sparse Poisson counts
//!   with a bright disk, [`bench::synthetic_frame`]) encoded by our encoder, as the DECTRIS
//!   simulator sends them.
//!
//! For each set it first checks parity: every LZ4 block decodes to the same bytes with both
//! decoders, the capture's frames equal its `.npy`, and every truncation and single flipped
//! byte of a sample of blocks is refused or accepted alike (a panic would end the run).
//! Then it times, on one thread, (1) the LZ4 stage alone — every block of every blob into
//! one reused 8 KiB buffer — and (2) the whole frame decode, ours (`decode_into`) against
//! the same loop with `lz4_flex` for the blocks and our bit transpose. Runs are interleaved
//! (ours, lz4_flex, ours, lz4_flex, …), each the fastest pass within its window; the ratio
//! ours / lz4_flex is given per round, because the machine is shared and absolute rates
//! drift.
//!
//! Run: `cargo run --release -p stemflow-drivers --example lz4_block_compare [-- ROUNDS
//! WINDOW_MS]` (defaults 5 rounds, 200 ms windows).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use stemflow_drivers::dectris::codec::{self, Encoding, Kernel, bench, shuffle};
use stemflow_drivers::dectris::master::MasterFile;

/// One set of bitshuffle-LZ4 blobs of equal frames.
struct Set {
    name: String,
    /// Bytes per element (the bit transpose's element size).
    elem: usize,
    /// Decoded bytes per frame.
    frame_bytes: usize,
    blobs: Vec<Vec<u8>>,
    /// The expected frames, where the data set has them (the capture's `.npy`).
    expected: Option<Vec<u8>>,
}

/// A block of a blob: its LZ4 bytes and its decoded size.
struct Block<'a> {
    lz4: &'a [u8],
    size: usize,
}

fn data(rel: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/dectris"
    ))
    .join(rel)
}

/// The capture's blobs: each `dimage_d-1.0` header is followed by its frame's blob
/// (messages are an 8-byte little-endian length and the bytes; data README).
fn capture() -> Set {
    let bytes = std::fs::read(data("stream-v1/synthetic_16x16_256_u16.dump")).expect("capture");
    let mut msgs = Vec::new();
    let mut pos = 0;
    while pos + 8 <= bytes.len() {
        let n = u64::from_le_bytes(bytes[pos..pos + 8].try_into().unwrap_or_default()) as usize;
        msgs.push(&bytes[pos + 8..pos + 8 + n]);
        pos += 8 + n;
    }
    let mut blobs = Vec::new();
    for w in msgs.windows(2) {
        if w[0].starts_with(b"{") && w[0].windows(13).any(|s| s == b"dimage_d-1.0\"") {
            blobs.push(w[1].to_vec());
        }
    }
    let npy = std::fs::read(data("stream-v1/synthetic_16x16_256_u16.npy")).expect("npy");
    let frame_bytes = 256 * 256 * 2;
    let expected = npy[npy.len() - blobs.len() * frame_bytes..].to_vec();
    Set {
        name: "capture u16 256x256 (C library)".into(),
        elem: 2,
        frame_bytes,
        blobs,
        expected: Some(expected),
    }
}

/// The ARINA set's chunks as stored.
fn arina() -> Set {
    let mut m = MasterFile::open(data("arina/test_00_master.h5")).expect("ARINA master");
    let sig = m.sig_shape();
    let elem = m.dtype().size();
    let blobs = (0..m.frames())
        .map(|i| m.read_raw_chunk(i).expect("raw chunk").0.to_vec())
        .collect();
    Set {
        name: format!("arina u32 {}x{} (DCU, dark)", sig.rows, sig.cols),
        elem,
        frame_bytes: sig.rows * sig.cols * elem,
        blobs,
        expected: None,
    }
}

fn synthetic(rows: usize, cols: usize, elem: usize) -> Set {
    let blobs = (0..64)
        .map(|i| codec::encode_bslz4(&bench::synthetic_frame(rows, cols, elem, i, 42), elem, 0))
        .collect();
    Set {
        name: format!("synthetic u{} {rows}x{cols} (ours)", 8 * elem),
        elem,
        frame_bytes: rows * cols * elem,
        blobs,
        expected: None,
    }
}

/// Splits a bitshuffle-LZ4 blob (protocols.md §2.5) into its LZ4 blocks.
fn blocks_of(blob: &[u8], frame_bytes: usize, elem: usize) -> Vec<Block<'_>> {
    let (_, block_bytes) = codec::bslz4_header(blob).expect("header");
    let block = if block_bytes == 0 {
        codec::default_block_elems(elem) * elem
    } else {
        block_bytes as usize
    };
    let mut left = frame_bytes / (8 * elem) * (8 * elem);
    let mut pos = codec::BSLZ4_HEADER_LEN;
    let mut out = Vec::new();
    while left > 0 {
        let size = left.min(block) / (8 * elem) * (8 * elem);
        let len = u32::from_be_bytes(blob[pos..pos + 4].try_into().unwrap_or_default()) as usize;
        out.push(Block {
            lz4: &blob[pos + 4..pos + 4 + len],
            size,
        });
        pos += 4 + len;
        left -= size;
    }
    out
}

/// `lz4_flex` with our contract: the block must fill `dst` exactly.
fn flex(src: &[u8], dst: &mut [u8]) -> Result<(), String> {
    match lz4_flex::block::decompress_into(src, dst) {
        Ok(n) if n == dst.len() => Ok(()),
        Ok(n) => Err(format!("{n} bytes, expected {}", dst.len())),
        Err(e) => Err(e.to_string()),
    }
}

/// A whole bitshuffle-LZ4 frame with `lz4_flex` for the blocks and our bit transpose (the
/// frames here have no partial block or leftover bytes; checked against ours in parity).
fn decode_frame_flex(blob: &[u8], out: &mut [u8], elem: usize, scratch: &mut [u8]) {
    let mut written = 0;
    for b in blocks_of(blob, out.len(), elem) {
        let tmp = &mut scratch[..b.size];
        flex(b.lz4, tmp).expect("lz4_flex block");
        shuffle::untranspose(tmp, &mut out[written..written + b.size], elem, Kernel::Auto);
        written += b.size;
    }
}

/// Checks that both decoders agree on `set` and on damaged copies of some of its blocks.
fn parity(set: &Set) -> (usize, usize) {
    let enc = Encoding::bslz4(set.elem);
    let mut ours = vec![0u8; 1 << 16];
    let mut theirs = vec![0u8; 1 << 16];
    let mut frame = vec![0u8; set.frame_bytes];
    let mut frame_flex = vec![0u8; set.frame_bytes];
    let mut blocks = 0;
    for (k, blob) in set.blobs.iter().enumerate() {
        for b in blocks_of(blob, set.frame_bytes, set.elem) {
            ours[..b.size].fill(0xA5);
            theirs[..b.size].fill(0x5A);
            codec::lz4::decompress(b.lz4, &mut ours[..b.size]).expect("ours");
            flex(b.lz4, &mut theirs[..b.size]).expect("lz4_flex");
            assert!(
                ours[..b.size] == theirs[..b.size],
                "{}: block differs",
                set.name
            );
            blocks += 1;
        }
        codec::decode_into(&enc, blob, &mut frame).expect("ours, frame");
        decode_frame_flex(blob, &mut frame_flex, set.elem, &mut theirs);
        assert!(frame == frame_flex, "{}: frame {k} differs", set.name);
        if let Some(exp) = &set.expected {
            let want = &exp[k * set.frame_bytes..(k + 1) * set.frame_bytes];
            assert!(
                frame == want,
                "{}: frame {k} differs from the .npy",
                set.name
            );
        }
    }
    // Damaged blocks: every truncation and every single flipped byte (0xFF xor) of the first
    // 16 blocks. Both decoders must return (no panic); count where they disagree.
    let mut damaged = 0;
    let mut disagree = 0;
    let sample: Vec<Block<'_>> = set
        .blobs
        .iter()
        .flat_map(|b| blocks_of(b, set.frame_bytes, set.elem))
        .take(16)
        .collect();
    for b in &sample {
        let mut variants: Vec<Vec<u8>> = (0..b.lz4.len()).map(|n| b.lz4[..n].to_vec()).collect();
        for i in 0..b.lz4.len() {
            let mut v = b.lz4.to_vec();
            v[i] ^= 0xFF;
            variants.push(v);
        }
        for v in variants {
            let r = catch_unwind(AssertUnwindSafe(|| {
                let a = codec::lz4::decompress(&v, &mut ours[..b.size]).is_ok();
                let f = flex(&v, &mut theirs[..b.size]).is_ok();
                (a, f, !a || !f || ours[..b.size] == theirs[..b.size])
            }));
            let (a, f, same) = r.expect("a decoder panicked on a damaged block");
            damaged += 1;
            disagree += usize::from(a != f || !same);
        }
    }
    println!(
        "{:<34} parity: {blocks} blocks and {} frames identical{}; {damaged} damaged blocks, \
         {disagree} decoded differently",
        set.name,
        set.blobs.len(),
        if set.expected.is_some() {
            ", frames equal the .npy"
        } else {
            ""
        }
    );
    (damaged, disagree)
}

/// The fastest of `f`'s passes within `window`, as decoded GB/s (`bytes` per pass).
fn best_rate(window: Duration, bytes: usize, f: &mut dyn FnMut()) -> f64 {
    f();
    let t0 = Instant::now();
    let mut best = f64::INFINITY;
    let mut passes = 0;
    while passes < 3 || t0.elapsed() < window {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        passes += 1;
    }
    bytes as f64 / best / 1e9
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times `a` (ours) and `b` (lz4_flex) interleaved; prints each round and the median ratio.
fn interleaved(
    label: &str,
    rounds: usize,
    window: Duration,
    bytes: usize,
    a: &mut dyn FnMut(),
    b: &mut dyn FnMut(),
) -> (f64, f64, f64) {
    let (mut ra, mut rb, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    let mut line = String::new();
    for _ in 0..rounds {
        let x = best_rate(window, bytes, a);
        let y = best_rate(window, bytes, b);
        line.push_str(&format!(" {x:.2}/{y:.2}"));
        ra.push(x);
        rb.push(y);
        ratio.push(x / y);
    }
    let (ma, mb, mr) = (median(&mut ra), median(&mut rb), median(&mut ratio));
    println!(
        "  {label:<12} ours {ma:6.2} GB/s  lz4_flex {mb:6.2} GB/s  ours/lz4_flex {mr:5.2} \
         (ratios {:.2}–{:.2}; rounds ours/flex GB/s:{line})",
        ratio[0],
        ratio[ratio.len() - 1]
    );
    (ma, mb, mr)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let window = Duration::from_millis(args.next().and_then(|s| s.parse().ok()).unwrap_or(200));
    let sets = [
        capture(),
        arina(),
        synthetic(256, 256, 2),
        synthetic(192, 192, 4),
    ];
    for set in &sets {
        parity(set);
    }
    println!(
        "single thread, {rounds} interleaved rounds, fastest pass in {} ms windows; decoded \
         GB/s (medians); bit transpose kernel {:?}",
        window.as_millis(),
        Kernel::Auto.resolve()
    );
    for set in &sets {
        let stored: usize = set.blobs.iter().map(Vec::len).sum();
        let total = set.blobs.len() * set.frame_bytes;
        println!(
            "{} — {} frames, compression ratio {:.1}",
            set.name,
            set.blobs.len(),
            total as f64 / stored as f64
        );
        let blocks: Vec<Block<'_>> = set
            .blobs
            .iter()
            .flat_map(|b| blocks_of(b, set.frame_bytes, set.elem))
            .collect();
        let block_bytes: usize = blocks.iter().map(|b| b.size).sum();
        let mut buf = vec![0u8; 1 << 16];
        let mut buf2 = vec![0u8; 1 << 16];
        interleaved(
            "LZ4 blocks",
            rounds,
            window,
            block_bytes,
            &mut || {
                for b in &blocks {
                    let _ = std::hint::black_box(codec::lz4::decompress(b.lz4, &mut buf[..b.size]));
                }
            },
            &mut || {
                for b in &blocks {
                    let _ = std::hint::black_box(flex(b.lz4, &mut buf2[..b.size]));
                }
            },
        );
        let enc = Encoding::bslz4(set.elem);
        let mut frame = vec![0u8; set.frame_bytes];
        let mut frame2 = vec![0u8; set.frame_bytes];
        let mut scratch = vec![0u8; 1 << 16];
        interleaved(
            "whole frames",
            rounds,
            window,
            total,
            &mut || {
                for blob in &set.blobs {
                    let _ = std::hint::black_box(codec::decode_into(&enc, blob, &mut frame));
                }
            },
            &mut || {
                for blob in &set.blobs {
                    decode_frame_flex(blob, &mut frame2, set.elem, &mut scratch);
                }
                std::hint::black_box(&frame2);
            },
        );
    }
}
