//! Measures how fast `Hdf5Recorder` writes 256 × 256 `u16` frames.
//!
//! ```sh
//! cargo run --release -p stemflow-recording --example write_throughput -- [FRAMES] [TILE] [DIR]
//! ```
//!
//! Defaults: 2048 frames (a 32 × 64 scan, 256 MiB), tiles of 32 frames, the system temp
//! directory. For each configuration it prints the rate seen by the caller of
//! `write_tile` (what the pipeline feels), the rate to a finished, closed file (page cache),
//! and the rate including `fsync` (the disk).

use std::path::Path;
use std::time::Instant;
use stemflow_core::frame::{Tile, TileData};
use stemflow_core::metadata::RunMetadata;
use stemflow_core::sink::TileSink;
use stemflow_core::validity::FrameValidity;
use stemflow_core::{DType, NavShape, SigShape};
use stemflow_recording::hdf5::Compression;
use stemflow_recording::{Hdf5Recorder, RecordingSpec};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let frames: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2048);
    let tile_frames: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(32);
    let dir = args
        .get(3)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let sig = SigShape::new(256, 256);
    let nav = NavShape::new(frames.div_ceil(64), 64.min(frames));
    let frames = nav.len();

    // A few tiles of sparse low counts (like a real diffraction pattern away from the
    // disk), made once and reused with different frame indices.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let templates: Vec<TileData> = (0..4)
        .map(|_| {
            TileData::U16(
                (0..tile_frames * sig.len())
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        let r = (seed >> 40) as u16;
                        if r < 50_000 { 0 } else { r & 7 }
                    })
                    .collect(),
            )
        })
        .collect();
    let mb = (frames * sig.len() * 2) as f64 / 1e6;
    println!(
        "{frames} frames of {sig} u16 ({mb:.0} MB), tiles of {tile_frames} frames, in {}",
        dir.display()
    );
    println!(
        "{:<34} {:>12} {:>12} {:>12}",
        "configuration", "caller MB/s", "closed MB/s", "fsync MB/s"
    );
    for (label, queue, compression, shuffled) in [
        (
            "warm-up (page cache), not counted",
            8,
            Compression::None,
            false,
        ),
        ("inline, uncompressed", 0, Compression::None, false),
        ("writer thread, uncompressed", 8, Compression::None, false),
        (
            "writer thread, uncompressed, shuffled",
            8,
            Compression::None,
            true,
        ),
        (
            "writer thread, deflate 1",
            8,
            Compression::Deflate { level: 1 },
            false,
        ),
        ("writer thread, bslz4", 8, Compression::Bslz4, false),
    ] {
        let path = dir.join("stemflow-write-throughput.h5");
        let _ = std::fs::remove_file(&path);
        let mut spec = RecordingSpec::new(nav, sig, DType::U16);
        spec.writer_queue = queue;
        spec.compression = compression;
        let mut order: Vec<usize> = (0..frames.div_ceil(tile_frames)).collect();
        if shuffled {
            // Deterministic, out of order within a window of 8 tiles (like parallel workers).
            for w in order.chunks_mut(8) {
                w.reverse();
            }
        }
        let t0 = Instant::now();
        let mut rec = Hdf5Recorder::create(&path, spec).unwrap();
        let mut in_calls = 0.0;
        let mut tile = Tile::zeros(0, 0, sig, DType::U16);
        for (k, &t) in order.iter().enumerate() {
            let first = t * tile_frames;
            let n = tile_frames.min(frames - first);
            tile.first_frame = first as u64;
            tile.n_frames = n;
            copy_into(
                &mut tile.data,
                &templates[k % templates.len()],
                n * sig.len(),
            );
            let c = Instant::now();
            rec.write_tile(&tile).unwrap();
            in_calls += c.elapsed().as_secs_f64();
        }
        let mut validity = FrameValidity::new(frames);
        validity.mark_range_received(0, frames);
        rec.finish(&[], &validity, &RunMetadata::default(), None)
            .unwrap();
        let closed = t0.elapsed().as_secs_f64();
        sync(&path);
        let synced = t0.elapsed().as_secs_f64();
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
        println!(
            "{label:<34} {:>12.0} {:>12.0} {:>12.0}   ({size:.0} MB file)",
            mb / in_calls,
            mb / closed,
            mb / synced
        );
        let _ = std::fs::remove_file(&path);
    }
}

/// Copies the first `len` pixels of `src` into `dst`, reusing `dst`'s allocation.
fn copy_into(dst: &mut TileData, src: &TileData, len: usize) {
    dst.resize(len);
    if let (TileData::U16(d), TileData::U16(s)) = (dst, src) {
        d.copy_from_slice(&s[..len]);
    }
}

fn sync(path: &Path) {
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.sync_all();
    }
}
