//! `cargo bench -p stemflow-processing`: the UDF engine's in-memory throughput on all
//! cores, sum alone and the full set (sum + sum over signal + 4 masks + CoM), for 256 × 256
//! and 512 × 512 frames of u8, u16 and u32, each as a fraction of the memory read
//! bandwidth measured in the same run. About 256 MiB of frames per case. `stemflow bench
//! all` adds the end-to-end (simulator → loopback → receiver) and latency figures.

use stemflow_core::{DType, SigShape};
use stemflow_processing::udf::Udf;
use stemflow_processing::{
    BenchConfig, SumUdf, bench_udfs, full_set, memory_read_bandwidth, partition_frames,
};

fn main() {
    // `cargo bench -- --list` and filters come from the harness protocol; this bench has
    // one case set and ignores them.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bw = memory_read_bandwidth(512 << 20, None, 3);
    println!("memory read bandwidth on {cores} cores: {bw:.2} GB/s");
    for sig in [SigShape::new(256, 256), SigShape::new(512, 512)] {
        for dtype in [DType::U8, DType::U16, DType::U32] {
            let frame_bytes = sig.len() * dtype.size();
            let frames = ((256usize << 20) / frame_bytes).max(64);
            let nav = stemflow_core::NavShape::new(frames.div_ceil(64), 64);
            let cfg = BenchConfig {
                nav_shape: nav,
                sig_shape: sig,
                dtype,
                frames_per_tile: partition_frames(sig, dtype, cores, nav.len()),
                threads: None,
                passes: 3,
                fused: true,
            };
            let sum: Vec<Box<dyn Udf>> = vec![Box::new(SumUdf::new())];
            for (name, udfs) in [("sum", sum), ("sum+sum_sig+4 masks+com", full_set(sig))] {
                match bench_udfs(&udfs, &cfg) {
                    Ok(f) => println!(
                        "{sig} {dtype} {name}: {:.2} GB/s = {:.0} % of memory bandwidth, {:.0} frames/s",
                        f.gb_per_s,
                        100.0 * f.gb_per_s / bw,
                        f.frames_per_s
                    ),
                    Err(e) => println!("{sig} {dtype} {name}: failed: {e}"),
                }
            }
        }
    }
}
