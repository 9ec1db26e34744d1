//! Per-UDF compute cost with the frames in cache: each UDF of the full set processes the
//! same 4-frame chunk (512 KiB of 256 × 256 u16) many times; prints ns per frame and the
//! equivalent GB/s. Shows which UDF to optimise, independent of memory bandwidth.
//!
//! `cargo run --release -p stemflow-processing --example udf_costs [u8|u16|u32]`

use std::time::Instant;
use stemflow_core::frame::PixelsRef;
use stemflow_core::{DType, NavShape, SigShape};
use stemflow_processing::full_set;
use stemflow_processing::io::parse_dtype;
use stemflow_processing::udf::nav_width;
use stemflow_processing::udf::{TileView, UdfMeta};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dtype = std::env::args()
        .nth(1)
        .map(|a| parse_dtype(&a))
        .transpose()?
        .unwrap_or(DType::U16);
    let sig = SigShape::new(256, 256);
    let n = 4usize;
    let len = n * sig.len();
    let v8: Vec<u8> = (0..len).map(|i| (i * 7 % 13) as u8).collect();
    let v16: Vec<u16> = (0..len).map(|i| (i * 7 % 13) as u16).collect();
    let v32: Vec<u32> = (0..len).map(|i| (i * 7 % 13) as u32).collect();
    let pixels = match dtype {
        DType::U8 => PixelsRef::U8(&v8),
        DType::U32 => PixelsRef::U32(&v32),
        _ => PixelsRef::U16(&v16),
    };
    let meta = UdfMeta {
        nav_shape: NavShape::new(64, 64),
        sig_shape: sig,
        dtype,
    };
    let view = TileView {
        first_frame: 0,
        n_frames: n,
        sig_shape: sig,
        pixels,
    };
    let reps = 4000;
    let mut total = 0.0;
    for udf in full_set(sig) {
        let mut task = udf.new_partition(&meta);
        let mut nav = vec![0f64; n * nav_width(&udf.buffers(&meta))];
        let t = Instant::now();
        for r in 0..reps {
            let v = TileView {
                first_frame: (r * n % 4096) as u64,
                ..view
            };
            task.process_tile(&v, &mut nav);
        }
        let ns = t.elapsed().as_secs_f64() * 1e9 / (reps * n) as f64;
        total += ns;
        let bytes = sig.len() * dtype.size();
        println!(
            "{:10} {:8.0} ns/frame  {:6.1} GB/s",
            udf.name(),
            ns,
            bytes as f64 / ns
        );
        std::hint::black_box(&nav);
    }
    println!(
        "{:10} {:8.0} ns/frame  {:6.1} GB/s",
        "total",
        total,
        (sig.len() * dtype.size()) as f64 / total
    );
    Ok(())
}
