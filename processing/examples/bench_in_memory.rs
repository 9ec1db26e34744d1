//! Prints the UDF engine's in-memory throughput: 256 × 256 u16 frames held in memory,
//! sum + sum over signal + virtual BF/ADF + CoM, on all cores and on one; the live path
//! (big-endian raw stacks, decoded by the workers); then each UDF alone on one thread, to
//! see where the time goes.
//!
//! `cargo run --release -p stemflow-processing --example bench_in_memory [FRAMES] [THREADS]`

use stemflow_core::NavShape;
use stemflow_processing::udf::Udf;
use stemflow_processing::{
    BenchConfig, bench_in_memory, bench_live_in_memory, bench_udfs, standard_udfs,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let frames: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(4096);
    let threads: Option<usize> = args.next().map(|a| a.parse()).transpose()?;
    let cfg = BenchConfig {
        nav_shape: NavShape::new(frames.div_ceil(64), 64),
        threads,
        ..BenchConfig::default()
    };
    println!("decoded tiles, all threads:\n  {}", bench_in_memory(&cfg)?);
    let one = BenchConfig {
        threads: Some(1),
        ..cfg
    };
    println!("decoded tiles, one thread:\n  {}", bench_in_memory(&one)?);
    println!(
        "live (big-endian stacks, decode included), all threads:\n  {}",
        bench_live_in_memory(&cfg)?
    );
    println!("each UDF alone, decoded tiles, one thread:");
    for udf in standard_udfs(128.0, 128.0, 32.0) {
        let single: Vec<Box<dyn Udf>> = vec![udf];
        println!("  {}", bench_udfs(&single, &one)?);
    }
    Ok(())
}
