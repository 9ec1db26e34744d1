//! Helpers shared by the processing tests: synthetic frames, a big-endian u16 decoder, raw
//! stacks, tiles (integer and float frames), the shared data, runs over data sets and tiles,
//! result lookup, and a bitwise comparison of results.
#![allow(dead_code)]

use std::sync::Arc;
use stemflow_core::frame::{
    DecodeError, FrameDecoder, PixelsMut, RawFrameRef, RawStack, Tile, TileData,
};
use stemflow_core::pool::Pooled;
use stemflow_core::result::{ResultBuffer, UdfResults};
use stemflow_core::{DType, SigShape};

/// Deterministic pseudo-random numbers (xorshift64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `n` frames of `sig` with values in `0..max`.
pub fn random_frames(n: usize, sig: SigShape, max: u64, seed: u64) -> Vec<Vec<u64>> {
    let mut rng = Rng(seed | 1);
    (0..n)
        .map(|_| (0..sig.len()).map(|_| rng.below(max)).collect())
        .collect()
}

/// Frames packed into tiles of `per_tile` frames of `dtype`.
pub fn tiles(frames: &[Vec<u64>], per_tile: usize, sig: SigShape, dtype: DType) -> Vec<Tile> {
    pack(frames, per_tile, sig, |chunk| {
        let flat = chunk.iter().flatten().copied();
        match dtype {
            DType::U8 => TileData::U8(flat.map(|v| v as u8).collect()),
            DType::U16 => TileData::U16(flat.map(|v| v as u16).collect()),
            DType::U32 => TileData::U32(flat.map(|v| v as u32).collect()),
            DType::U64 => TileData::U64(flat.collect()),
            DType::F32 => TileData::F32(flat.map(|v| v as f32).collect()),
            DType::F64 => TileData::F64(flat.map(|v| v as f64).collect()),
        }
    })
}

/// Float frames packed into tiles of `per_tile` frames of `dtype` (F32, each value rounded
/// to f32, or F64); panics on an integer `dtype`.
pub fn float_tiles(frames: &[Vec<f64>], per_tile: usize, sig: SigShape, dtype: DType) -> Vec<Tile> {
    pack(frames, per_tile, sig, |chunk| {
        let flat = chunk.iter().flatten().copied();
        match dtype {
            DType::F32 => TileData::F32(flat.map(|v| v as f32).collect()),
            DType::F64 => TileData::F64(flat.collect()),
            other => panic!("float_tiles: {other} is not a float dtype"),
        }
    })
}

/// Consecutive chunks of `per_tile` frames as tiles, numbered from frame 0, their pixels
/// made by `data`.
fn pack<T>(
    frames: &[Vec<T>],
    per_tile: usize,
    sig: SigShape,
    data: impl Fn(&[Vec<T>]) -> TileData,
) -> Vec<Tile> {
    frames
        .chunks(per_tile)
        .enumerate()
        .map(|(k, chunk)| Tile {
            first_frame: (k * per_tile) as u64,
            n_frames: chunk.len(),
            sig_shape: sig,
            data: data(chunk),
        })
        .collect()
}

/// Big-endian u16 frames (as Merlin sends 12-bit data), rejecting payloads of the wrong
/// length.
#[derive(Debug)]
pub struct BeU16Decoder {
    pub sig: SigShape,
}

impl FrameDecoder for BeU16Decoder {
    fn sig_shape(&self) -> SigShape {
        self.sig
    }
    fn dtype(&self) -> DType {
        DType::U16
    }
    fn decode_into(&self, payload: &[u8], out: PixelsMut<'_>) -> Result<(), DecodeError> {
        let n = self.sig.len();
        if payload.len() != 2 * n {
            return Err(DecodeError::PayloadSize {
                device: "test".into(),
                expected: 2 * n,
                observed: payload.len(),
            });
        }
        let PixelsMut::U16(out) = out else {
            return Err(DecodeError::Target {
                expected_dtype: DType::U16,
                expected_len: n,
                observed_dtype: out.dtype(),
                observed_len: out.len(),
            });
        };
        for (o, b) in out.iter_mut().zip(payload.chunks_exact(2)) {
            *o = u16::from_be_bytes([b[0], b[1]]);
        }
        Ok(())
    }
}

/// Frames encoded big-endian into raw stacks of `per_stack` frames, starting at frame
/// `first`. Frames listed in `truncate` get a payload one byte short (damaged).
pub fn raw_stacks(
    frames: &[Vec<u64>],
    first: u64,
    per_stack: usize,
    sig: SigShape,
    truncate: &[u64],
) -> Vec<RawStack> {
    let decoder: Arc<dyn FrameDecoder> = Arc::new(BeU16Decoder { sig });
    frames
        .chunks(per_stack)
        .enumerate()
        .map(|(k, chunk)| {
            let first_frame = first + (k * per_stack) as u64;
            let mut buf = Vec::new();
            let mut refs = Vec::new();
            for (i, f) in chunk.iter().enumerate() {
                let offset = buf.len();
                for v in f {
                    buf.extend_from_slice(&(*v as u16).to_be_bytes());
                }
                let mut len = buf.len() - offset;
                if truncate.contains(&(first_frame + i as u64)) {
                    len -= 1;
                }
                refs.push(RawFrameRef { offset, len });
                // A few header bytes between payloads, as on the wire.
                buf.extend_from_slice(b"HDR");
            }
            RawStack {
                first_frame,
                frames: refs,
                buf: Pooled::unpooled(buf),
                decoder: Arc::clone(&decoder),
                first_received: std::time::Instant::now(),
            }
        })
        .collect()
}

/// Panics unless `a` and `b` are bitwise identical (NaN == NaN, -0 != +0).
pub fn assert_identical(a: &[UdfResults], b: &[UdfResults]) {
    assert_eq!(a.len(), b.len());
    for (ra, rb) in a.iter().zip(b) {
        assert_eq!(ra.udf, rb.udf);
        assert_eq!(ra.buffers.len(), rb.buffers.len());
        for (ba, bb) in ra.buffers.iter().zip(&rb.buffers) {
            assert_eq!(
                (&ba.name, ba.kind, &ba.shape),
                (&bb.name, bb.kind, &bb.shape)
            );
            let bits_a: Vec<u64> = ba.data.iter().map(|v| v.to_bits()).collect();
            let bits_b: Vec<u64> = bb.data.iter().map(|v| v.to_bits()).collect();
            assert!(bits_a == bits_b, "{}/{} differs", ra.udf, ba.name);
        }
    }
}

/// A file of the shared test data (`../shared/data/<rel>` beside the workspace).
pub fn data(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data")).join(rel)
}

/// What holds a run's results: a summary, or the results themselves (a snapshot's).
pub trait HasResults {
    /// The results, one per UDF.
    fn udf_results(&self) -> &[UdfResults];
}

impl HasResults for stemflow_processing::RunSummary {
    fn udf_results(&self) -> &[UdfResults] {
        &self.results
    }
}

impl HasResults for [UdfResults] {
    fn udf_results(&self) -> &[UdfResults] {
        self
    }
}

impl HasResults for Vec<UdfResults> {
    fn udf_results(&self) -> &[UdfResults] {
        self
    }
}

/// Buffer `name` of UDF `udf`; panics naming both when there is none.
pub fn result_buffer<'a, R: HasResults + ?Sized>(
    r: &'a R,
    udf: &str,
    name: &str,
) -> &'a ResultBuffer {
    r.udf_results()
        .iter()
        .find(|x| x.udf == udf)
        .and_then(|x| x.buffer(name))
        .unwrap_or_else(|| panic!("no buffer {udf}/{name}"))
}

/// The values of buffer `name` of UDF `udf`; panics naming both when there is none.
pub fn buffer<'a, R: HasResults + ?Sized>(r: &'a R, udf: &str, name: &str) -> &'a [f64] {
    &result_buffer(r, udf, name).data
}

/// A run configuration on `threads` workers.
pub fn config(
    nav: stemflow_core::NavShape,
    sig: SigShape,
    dtype: DType,
    threads: usize,
) -> stemflow_processing::RunConfig {
    let mut cfg = stemflow_processing::RunConfig::new(nav, sig, dtype);
    cfg.threads = Some(threads);
    cfg
}

/// Runs `udfs` over all of `ds`; panics when the run fails.
pub fn run_on(
    ds: &mut dyn stemflow_processing::DataSet,
    cfg: &stemflow_processing::RunConfig,
    udfs: &[Box<dyn stemflow_processing::udf::Udf>],
) -> stemflow_processing::RunSummary {
    stemflow_processing::run_dataset(
        ds,
        udfs,
        cfg,
        None,
        &mut |_| {},
        &std::sync::atomic::AtomicBool::new(false),
    )
    .expect("run")
}

/// Runs `udfs` offline over the tiles `t`; panics when the run fails.
pub fn run_on_tiles(
    t: Vec<Tile>,
    cfg: &stemflow_processing::RunConfig,
    udfs: &[Box<dyn stemflow_processing::udf::Udf>],
) -> stemflow_processing::RunSummary {
    stemflow_processing::run_tiles(
        t.into_iter().map(Ok::<_, std::convert::Infallible>),
        udfs,
        cfg,
        None,
        &mut |_| {},
        &std::sync::atomic::AtomicBool::new(false),
    )
    .expect("run succeeds")
}
