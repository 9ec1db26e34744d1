//! Prints the UDF engine's in-memory throughput beside the machine's memory read
//! bandwidth: 256 × 256 frames of u16 (or the dtype given) held in memory, sum alone and
//! sum + sum over signal + 4 masks + CoM, on all cores (with and without the engine's
//! fused pass) and on one; the live path
//! (big-endian raw stacks, decoded by the workers); then each UDF alone on one thread, to
//! see where the time goes.
//!
//! `cargo run --release -p stemflow-processing --example bench_in_memory [FRAMES] [THREADS] [u8|u16|u32]`

use stemflow_core::NavShape;
use stemflow_processing::io::parse_dtype;
use stemflow_processing::udf::Udf;
use stemflow_processing::{
    BenchConfig, SumUdf, bench_live_in_memory, bench_udfs, full_set, memory_read_bandwidth,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let frames: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2048);
    let threads: Option<usize> = args.next().map(|a| a.parse()).transpose()?;
    let dtype = args
        .next()
        .map(|a| parse_dtype(&a))
        .transpose()?
        .unwrap_or(stemflow_core::DType::U16);
    let bw = memory_read_bandwidth(512 << 20, threads, 3);
    println!("memory read bandwidth: {bw:.2} GB/s");
    let cfg = BenchConfig {
        nav_shape: NavShape::new(frames.div_ceil(64), 64),
        threads,
        dtype,
        frames_per_tile: 32,
        ..BenchConfig::default()
    };
    let sum: Vec<Box<dyn Udf>> = vec![Box::new(SumUdf::new())];
    let f = bench_udfs(&sum, &cfg)?;
    println!(
        "sum alone:\n  {f}\n  {:.0} % of memory bandwidth",
        100.0 * f.gb_per_s / bw
    );
    let full = full_set(cfg.sig_shape);
    let f = bench_udfs(&full, &cfg)?;
    println!(
        "full set:\n  {f}\n  {:.0} % of memory bandwidth",
        100.0 * f.gb_per_s / bw
    );
    let bands = BenchConfig {
        fused: false,
        ..cfg
    };
    let f = bench_udfs(&full, &bands)?;
    println!(
        "full set, the engine's fused pass off (row bands only):\n  {f}\n  {:.0} % of memory bandwidth",
        100.0 * f.gb_per_s / bw
    );
    let one = BenchConfig {
        threads: Some(1),
        ..cfg
    };
    println!("full set, one thread:\n  {}", bench_udfs(&full, &one)?);
    println!(
        "live (big-endian u16 stacks, decode included), all threads:\n  {}",
        bench_live_in_memory(&cfg)?
    );
    println!("each UDF alone, one thread:");
    for udf in full_set(cfg.sig_shape) {
        let single: Vec<Box<dyn Udf>> = vec![udf];
        println!("  {}", bench_udfs(&single, &one)?);
    }
    Ok(())
}
