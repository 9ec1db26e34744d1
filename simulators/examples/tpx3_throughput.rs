//! Measures the TPX3 simulator's start-up (event generation and encoding) and its sender
//! throughput over loopback.
//!
//! Run: `cargo run --release -p stemflow-simulators --example tpx3_throughput [scan] [repeats]`
//! (defaults: a 128 × 128 scan of 512 × 512 frames with 410 mean events per frame, 32 rows
//! per chunk, 10 passes, free-running, as fast as possible). The receiver reads 4 MiB at a
//! time and walks the 32-byte headers (skipping payloads by their announced length), so it
//! verifies the framing and counts chunks while costing little CPU.

use std::io::Read;
use std::net::TcpStream;
use std::time::Instant;
use stemflow_core::{NavShape, SigShape};
use stemflow_drivers::asi::wire::{HEADER_LEN, Header};
use stemflow_simulators::tpx3::{Tpx3Sim, Tpx3SimConfig, Tpx3Source};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let side: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(128);
    let repeats: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);
    let nav = NavShape::new(side, side);
    let mut cfg = Tpx3SimConfig::new(Tpx3Source::synthetic(nav, SigShape::new(512, 512)));
    cfg.repeats = repeats;
    cfg.close_when_done = true;
    let t = Instant::now();
    let sim = Tpx3Sim::start(cfg).expect("simulator");
    println!(
        "start (generate {nav} scan of 512x512, 410 events/frame, encode): {:.3} s",
        t.elapsed().as_secs_f64()
    );
    let mut s = TcpStream::connect(sim.data_addr()).expect("connect");
    let mut buf = vec![0u8; 4 << 20];
    let (mut have, mut skip, mut total) = (0usize, 0u64, 0u64);
    let (mut chunks, mut ends) = (0u64, 0u64);
    let mut pending: Vec<u8> = Vec::new();
    let t = Instant::now();
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        total += n as u64;
        let mut at = 0usize;
        while at < n {
            if skip > 0 {
                let k = skip.min((n - at) as u64);
                skip -= k;
                at += k as usize;
                continue;
            }
            let take = (HEADER_LEN - have).min(n - at);
            pending.extend_from_slice(&buf[at..at + take]);
            have += take;
            at += take;
            if have == HEADER_LEN {
                let mut h = [0u8; HEADER_LEN];
                h.copy_from_slice(&pending);
                match Header::parse(&h).expect("a valid header") {
                    Header::ArrayChunk(c) => {
                        chunks += 1;
                        skip = c.payload_len();
                    }
                    Header::ScanStart(sc) => skip = sc.metadata_length,
                    Header::AcquisitionEnd(_) => ends += 1,
                    _ => {}
                }
                pending.clear();
                have = 0;
            }
        }
    }
    let dt = t.elapsed().as_secs_f64();
    let st = sim.stats();
    println!(
        "{ends} acquisitions, {chunks} chunks, {} frames, {} events, {:.1} MB in {dt:.3} s = {:.0} MB/s, {:.0} frames/s",
        st.frames_sent,
        st.events_sent,
        total as f64 / 1e6,
        total as f64 / 1e6 / dt,
        st.frames_sent as f64 / dt
    );
    sim.stop();
}
