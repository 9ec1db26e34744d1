//! Sparse frames (CSR rows, decision 0010): the UDFs on CSR stacks give the results of the
//! same frames processed dense, bit for bit, whether every UDF takes events (sum, sum over
//! signal, virtual detectors, CoM) or one needs pixels (radial profile, statistics: rows
//! densified per tile); malformed chunks count their frames damaged.

mod common;

use common::{Rng, assert_identical, tiles};
use crossbeam_channel::bounded;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};
use stemflow_core::csr::{CsrChunkRef, CsrDType, CsrFormat, CsrRows, CsrStack, Stack};
use stemflow_core::pool::Pooled;
use stemflow_core::{DType, NavShape, SigShape};
use stemflow_processing::udf::Udf;
use stemflow_processing::{
    Outcome, PickUdf, RadialProfileParams, RadialProfileUdf, RunConfig, RunSummary, StatsUdf,
    run_live, run_tiles, standard_udfs,
};

/// Event frames: about `mean` events per frame, a bright disk at the centre and a sparse
/// halo, values 1–3 (a TPX3 count per pixel and dwell).
fn event_frames(n: usize, sig: SigShape, mean: u64, seed: u64) -> Vec<Vec<u64>> {
    let mut rng = Rng(seed | 1);
    (0..n)
        .map(|_| {
            let mut f = vec![0u64; sig.len()];
            let events = mean / 2 + rng.below(mean);
            for _ in 0..events {
                let (cy, cx) = (sig.rows as u64 / 2, sig.cols as u64 / 2);
                let (y, x) = if rng.below(3) == 0 {
                    (rng.below(sig.rows as u64), rng.below(sig.cols as u64))
                } else {
                    let r = (sig.rows as u64 / 8).max(1);
                    (cy + rng.below(r) - r / 2, cx + rng.below(r) - r / 2)
                };
                f[(y * sig.cols as u64 + x) as usize] += 1 + rng.below(3);
            }
            f
        })
        .collect()
}

/// One CSR chunk of `frames` in the given dtypes, with `pad` bytes between arrays.
fn chunk(
    frames: &[Vec<u64>],
    ip: CsrDType,
    id: CsrDType,
    vd: CsrDType,
    pad: usize,
) -> (Vec<u8>, u32, u32, u32) {
    let put =
        |b: &mut Vec<u8>, v: u64, dt: CsrDType| b.extend_from_slice(&v.to_le_bytes()[..dt.size()]);
    let (mut ptr, mut ind, mut val) = (vec![0u64], Vec::new(), Vec::new());
    for f in frames {
        for (i, &v) in f.iter().enumerate() {
            if v != 0 {
                ind.push(i as u64);
                val.push(v);
            }
        }
        ptr.push(ind.len() as u64);
    }
    let mut b = Vec::new();
    ptr.iter().for_each(|&v| put(&mut b, v, ip));
    b.resize(b.len() + pad, 0xEE);
    let io = b.len() as u32;
    ind.iter().for_each(|&v| put(&mut b, v, id));
    b.resize(b.len() + pad, 0xEE);
    let vo = b.len() as u32;
    val.iter().for_each(|&v| put(&mut b, v, vd));
    (b, ind.len() as u32, io, vo)
}

/// Sparse stacks of `per_stack` frames, chunks of `per_chunk`; the chunks whose first
/// frame is in `corrupt` get a row pointer past their end.
fn csr_stacks(
    frames: &[Vec<u64>],
    sig: SigShape,
    per_stack: usize,
    per_chunk: usize,
    corrupt: &[u64],
) -> Vec<Stack> {
    use CsrDType::*;
    let format = Arc::new(CsrFormat {
        sig_shape: sig,
        indptr: U32,
        indices: if sig.len() <= 65536 { U16 } else { U32 },
    });
    let dtypes = [U8, U16, U32, U64];
    frames
        .chunks(per_stack)
        .enumerate()
        .map(|(k, stack)| {
            let first = (k * per_stack) as u64;
            let mut buf = Vec::new();
            let mut chunks = Vec::new();
            for (j, c) in stack.chunks(per_chunk).enumerate() {
                let offset = buf.len().next_multiple_of(8);
                buf.resize(offset, 0);
                let vd = dtypes[(k + j) % 4];
                let (mut b, nnz, io, vo) = chunk(c, format.indptr, format.indices, vd, j % 3);
                let cf = first + (j * per_chunk) as u64;
                if corrupt.contains(&cf) {
                    b[4..8].copy_from_slice(&(nnz + 1).to_le_bytes());
                }
                chunks.push(CsrChunkRef {
                    offset,
                    len: b.len(),
                    first_frame: cf,
                    frames: c.len() as u32,
                    nnz,
                    indices_offset: io,
                    values_offset: vo,
                    values: vd,
                });
                buf.extend_from_slice(&b);
            }
            Stack::Csr(CsrStack {
                first_frame: first,
                frames: stack.len() as u64,
                chunks,
                buf: Pooled::unpooled(buf),
                format: Arc::clone(&format),
                first_received: Instant::now(),
            })
        })
        .collect()
}

fn live(stacks: Vec<Stack>, c: &RunConfig, udfs: &[Box<dyn Udf>]) -> RunSummary {
    let (tx, rx) = bounded(2);
    let feeder = std::thread::spawn(move || {
        for s in stacks {
            if tx.send_timeout(s, Duration::from_secs(10)).is_err() {
                break;
            }
        }
    });
    let r = run_live(rx, udfs, c, None, &mut |_| {}, &AtomicBool::new(false));
    feeder.join().expect("feeder");
    r.expect("sparse run succeeds")
}

fn dense(frames: &[Vec<u64>], c: &RunConfig, udfs: &[Box<dyn Udf>]) -> RunSummary {
    let t = tiles(frames, 7, c.sig_shape, DType::U32);
    run_tiles(
        t.into_iter().map(Ok::<_, Infallible>),
        udfs,
        c,
        None,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .expect("dense run succeeds")
}

fn cfg(nav: NavShape, sig: SigShape) -> RunConfig {
    let mut c = RunConfig::new(nav, sig, DType::U32);
    c.threads = Some(2);
    c
}

#[test]
fn event_udfs_on_csr_equal_the_dense_results_bit_for_bit() {
    // A power-of-two width (every Timepix3) and one that is not (x, y by division).
    for sig in [SigShape::new(64, 128), SigShape::new(40, 56)] {
        let nav = NavShape::new(9, 11);
        let frames = event_frames(nav.len(), sig, 300, 5);
        let c = cfg(nav, sig);
        let udfs = standard_udfs(sig.cols as f64 / 2.0, sig.rows as f64 / 2.0, 6.0);
        let want = dense(&frames, &c, &udfs);
        let got = live(csr_stacks(&frames, sig, 16, 5, &[]), &c, &udfs);
        assert_eq!(got.outcome, Outcome::Completed);
        assert_eq!(got.frames_processed, nav.len() as u64);
        assert_identical(&want.results, &got.results);
        let total: u64 = frames.iter().flatten().sum();
        let sum = got.results[0].buffers[0].data.iter().sum::<f64>();
        assert_eq!(sum, total as f64, "the summed frame holds every event");
    }
}

#[test]
fn statistics_and_the_radial_profile_on_csr_and_densified_rows_equal_dense() {
    let sig = SigShape::new(48, 64);
    let nav = NavShape::new(5, 13);
    let mut frames = event_frames(nav.len(), sig, 200, 9);
    // Pixel 0 hit in every frame (its minimum is not 0), pixel 1 in every frame but one.
    for (k, f) in frames.iter_mut().enumerate() {
        f[0] += 2 + k as u64 % 3;
        if k != 7 {
            f[1] += 1;
        }
    }
    let c = cfg(nav, sig);
    let mut udfs = standard_udfs(32.0, 24.0, 5.0);
    udfs.push(Box::new(StatsUdf::new()));
    udfs.push(Box::new(RadialProfileUdf::new(RadialProfileParams {
        cx: 32.0,
        cy: 24.0,
        bin_width: 2.0,
        n_bins: 10,
    })));
    // Every UDF takes the rows: no densifying.
    let want = dense(&frames, &c, &udfs);
    let got = live(csr_stacks(&frames, sig, 8, 3, &[]), &c, &udfs);
    assert_eq!(got.frames_processed, nav.len() as u64);
    assert_identical(&want.results, &got.results);
    let min = &got.results[4]
        .buffers
        .iter()
        .find(|b| b.name == "min")
        .unwrap()
        .data;
    assert_eq!((min[0], min[1], min[2]), (2.0, 0.0, 0.0));
    // A UDF that needs pixels (picking a frame): the rows are densified per tile for all.
    udfs.push(Box::new(PickUdf::new(2, 3)));
    let want = dense(&frames, &c, &udfs);
    let got = live(csr_stacks(&frames, sig, 8, 3, &[]), &c, &udfs);
    assert_identical(&want.results, &got.results);
}

#[test]
fn malformed_chunks_count_their_frames_damaged_and_the_rest_goes_on() {
    let sig = SigShape::new(32, 32);
    let nav = NavShape::new(4, 10);
    let frames = event_frames(nav.len(), sig, 50, 3);
    let c = cfg(nav, sig);
    let udfs = standard_udfs(16.0, 16.0, 4.0);
    // Chunks of 4 frames: the ones at frames 8 and 20 are broken.
    let got = live(csr_stacks(&frames, sig, 12, 4, &[8, 20]), &c, &udfs);
    assert_eq!(got.damaged, vec![8, 9, 10, 11, 20, 21, 22, 23]);
    assert_eq!(got.frames_processed, 32);
    let mut good = frames.clone();
    for f in [8, 9, 10, 11, 20, 21, 22, 23] {
        good[f] = vec![0; sig.len()];
    }
    let sum = got.results[0].buffers[0].data.iter().sum::<f64>();
    assert_eq!(sum, good.iter().flatten().sum::<u64>() as f64);
    // Their nav values stay NaN (not processed), as for damaged dense frames.
    let sumsig = &got.results[1].buffers[0].data;
    assert!(sumsig[8].is_nan() && sumsig[23].is_nan() && !sumsig[7].is_nan());
}

#[test]
fn csr_rows_read_back_the_frames() {
    let sig = SigShape::new(8, 8);
    let frames = event_frames(3, sig, 10, 1);
    let mut rows = CsrRows::default();
    rows.clear(0, sig);
    for f in &frames {
        let px: Vec<u32> = f.iter().map(|&v| v as u32).collect();
        rows.push_dense(stemflow_core::frame::PixelsRef::U32(&px));
    }
    let mut t = stemflow_core::frame::Tile::zeros(0, 0, sig, DType::U32);
    rows.densify_into(0..3, &mut t);
    let back: Vec<u64> = match &t.data {
        stemflow_core::frame::TileData::U32(v) => v.iter().map(|&x| u64::from(x)).collect(),
        _ => panic!("u32"),
    };
    assert_eq!(back, frames.concat());
}
