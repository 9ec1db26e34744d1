//! A user-defined function written outside stemflow's built-ins, run on frames held in
//! memory with a region of interest, beside a built-in, with snapshots — the same UDF runs
//! live (`run_live`, or in a reduction pipeline) and on files (`run_dataset`). See
//! `docs/udfs.md`.
//!
//! `cargo run --release -p stemflow-processing --example custom_udf`

use std::sync::atomic::AtomicBool;
use stemflow_core::frame::{Tile, TileData};
use stemflow_core::{DType, NavShape, SigShape};
use stemflow_processing::result::ResultBuffer;
use stemflow_processing::udf::{BufferDecl, PartitionTask, ResultDType, TileView, Udf, UdfMeta};
use stemflow_processing::{Roi, RunConfig, SumSigUdf, run_tiles};

/// The brightest pixel of each frame and where it is, plus how often each detector pixel
/// was the brightest.
///
/// Buffers: nav `max` (counts, u32), nav `argmax` (`[2]` per position: row, column; pixels),
/// sig `hits` (frames, u64).
struct BrightestPixel;

impl Udf for BrightestPixel {
    fn name(&self) -> &str {
        "brightest"
    }
    fn buffers(&self, _meta: &UdfMeta) -> Vec<BufferDecl> {
        vec![
            BufferDecl::nav("max", "counts").with_dtype(ResultDType::U32),
            BufferDecl::nav("argmax", "pixels").with_extra_shape(vec![2]),
            BufferDecl::sig("hits", "frames").with_dtype(ResultDType::U64),
        ]
    }
    fn check(&self, meta: &UdfMeta) -> Result<(), String> {
        match meta.dtype {
            DType::U16 => Ok(()),
            other => Err(format!("this example reads u16 frames, not {other}")),
        }
    }
    fn new_partition(&self, meta: &UdfMeta) -> Box<dyn PartitionTask> {
        Box::new(BrightestTask {
            cols: meta.sig_shape.cols,
            hits: vec![0; meta.sig_shape.len()],
        })
    }
}

/// One worker's state: its own `hits`, merged into the global buffer at each snapshot.
struct BrightestTask {
    cols: usize,
    hits: Vec<u64>,
}

impl PartitionTask for BrightestTask {
    fn process_tile(&mut self, tile: &TileView<'_>, nav: &mut [f64]) {
        let stemflow_core::frame::PixelsRef::U16(px) = tile.pixels else {
            return;
        };
        let n = tile.sig_shape.len();
        // `nav` holds 3 values per frame: max, then argmax row and column.
        for (out, frame) in nav.chunks_exact_mut(3).zip(px.chunks_exact(n)) {
            let (i, &v) = frame
                .iter()
                .enumerate()
                .max_by_key(|&(i, &v)| (v, std::cmp::Reverse(i)))
                .unwrap_or((0, &0));
            out.copy_from_slice(&[v as f64, (i / self.cols) as f64, (i % self.cols) as f64]);
            self.hits[i] += 1;
        }
    }
    fn merge_into(&mut self, global: &mut [ResultBuffer]) {
        // Buffers in declaration order: max, argmax (nav: merged by the engine), hits.
        for (g, h) in global[2].data.iter_mut().zip(&mut self.hits) {
            *g += *h as f64;
            *h = 0;
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (nav, sig) = (NavShape::new(8, 8), SigShape::new(64, 64));
    // A bright spot that walks across the detector with the scan position.
    let tiles = (0..nav.len()).step_by(16).map(|first| {
        let mut px = vec![10u16; 16 * sig.len()];
        for f in 0..16 {
            let k = first + f;
            px[f * sig.len() + (k / 8) * sig.cols + k % 8] = 1000 + k as u16;
        }
        Ok::<_, std::io::Error>(Tile {
            first_frame: first as u64,
            n_frames: 16,
            sig_shape: sig,
            data: TileData::U16(px),
        })
    });
    // Only the left half of the scan.
    let coords: Vec<(usize, usize)> = (0..8).flat_map(|r| (0..4).map(move |c| (r, c))).collect();
    let cfg = RunConfig::new(nav, sig, DType::U16).with_roi(Roi::from_coords(nav, &coords)?);
    let udfs: Vec<Box<dyn Udf>> = vec![Box::new(BrightestPixel), Box::new(SumSigUdf::new())];
    let mut snapshots = 0;
    let summary = run_tiles(
        tiles,
        &udfs,
        &cfg,
        None,
        &mut |_| snapshots += 1,
        &AtomicBool::new(false),
    )?;
    let b = &summary.results[0];
    let max = &b.buffer("max").ok_or("no max")?.data;
    let hits = &b.buffer("hits").ok_or("no hits")?.data;
    println!(
        "{} frames processed, {} outside the ROI, {snapshots} snapshots",
        summary.frames_processed, summary.outside_roi
    );
    println!("max at scan (0, 3): {} (inside the ROI)", max[3]);
    println!("max at scan (0, 4): {} (outside: NaN)", max[4]);
    println!(
        "pixels that were ever the brightest: {}",
        hits.iter().filter(|&&h| h > 0.0).count()
    );
    assert_eq!((max[3], hits.iter().sum::<f64>()), (1003.0, 32.0));
    assert!(max[4].is_nan());
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The example is a test too (`test = true` in Cargo.toml): the guide cannot rot.
    #[test]
    fn the_example_runs_and_its_answers_hold() {
        super::main().unwrap();
    }
}
