//! Measures the Merlin simulator's sender throughput over loopback, and the specimen's
//! single-core render rate.
//!
//! Run: `cargo run --release -p stemflow-simulators --example merlin_throughput [frames] [depth]`
//! (defaults: 100 000 frames, counter depth 12 = U16; 256 × 256 synthetic frames, internal
//! trigger, as fast as possible). The receiver thread reads 4 MiB chunks and walks the MPX
//! framing (prefix and length of every message), so it verifies the stream and counts frames
//! while costing little CPU.

use std::io::Read;
use std::net::TcpStream;
use std::time::Instant;
use stemflow_core::{NavShape, SigShape};
use stemflow_simulators::merlin::{MerlinSim, MerlinSimConfig, MerlinSource, Pacing};
use stemflow_simulators::specimen::Specimen;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let frames: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let depth: u8 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(12);
    let sig = SigShape::new(256, 256);
    let nav = NavShape::new(256, 256);
    let specimen = Specimen::builder().build();

    // Render rate, one core.
    let mut buf = vec![0u32; sig.len()];
    let n = 2000u64;
    let t = Instant::now();
    for i in 0..n {
        specimen.render_frame(nav, i * 37, sig, 1, &mut buf);
    }
    let dt = t.elapsed().as_secs_f64();
    println!(
        "specimen: {n} frames of 256x256 in {dt:.3} s = {:.0} frames/s on one core",
        n as f64 / dt
    );

    let mut cfg = MerlinSimConfig::new(MerlinSource::Synthetic {
        specimen,
        nav_shape: nav,
        sig_shape: sig,
        seed: 1,
    });
    cfg.pacing = Pacing::AsFastAsPossible;
    let t = Instant::now();
    let sim = MerlinSim::start(cfg).expect("simulator");
    println!(
        "simulator start (cache render): {:.3} s",
        t.elapsed().as_secs_f64()
    );
    let mut data = TcpStream::connect(sim.data_addr()).expect("data");
    let control = sim.control_addr();
    let send = |p: &str| {
        let mut s = TcpStream::connect(control).unwrap();
        use std::io::Write;
        s.write_all(format!("MPX,{:010},{p}", p.len() + 1).as_bytes())
            .unwrap();
        let mut r = [0u8; 256];
        let n = s.read(&mut r).unwrap();
        let reply = String::from_utf8_lossy(&r[..n]).to_string();
        assert!(reply.ends_with(",0"), "{p}: {reply}");
    };
    send(&format!("SET,COUNTERDEPTH,{depth}"));
    send(&format!("SET,NUMFRAMESTOACQUIRE,{frames}"));
    send("CMD,STARTACQUISITION");

    // Receiver: walk MPX messages through 4 MiB reads.
    let mut chunk = vec![0u8; 4 << 20];
    let mut pending: Vec<u8> = Vec::new(); // an incomplete prefix carried between reads
    let mut skip = 0usize; // payload bytes of the current message still to pass
    let (mut msgs, mut total, mut frame_bytes) = (0u64, 0u64, 0u64);
    let mut t0 = None;
    while msgs < frames + 1 {
        let n = data.read(&mut chunk).expect("read");
        assert!(n > 0, "stream closed after {msgs} messages");
        if msgs >= 1 && t0.is_none() {
            t0 = Some(Instant::now());
        }
        total += n as u64;
        let mut pos = 0;
        while pos < n {
            if skip > 0 {
                let k = skip.min(n - pos);
                skip -= k;
                pos += k;
                continue;
            }
            let need = 15 - pending.len();
            let k = need.min(n - pos);
            pending.extend_from_slice(&chunk[pos..pos + k]);
            pos += k;
            if pending.len() == 15 {
                assert_eq!(&pending[..4], b"MPX,", "framing lost after {msgs} messages");
                let len: usize = std::str::from_utf8(&pending[4..14])
                    .unwrap()
                    .parse()
                    .unwrap();
                skip = len - 1;
                if msgs >= 1 {
                    frame_bytes += 15 + len as u64 - 1;
                }
                msgs += 1;
                pending.clear();
            }
        }
    }
    // The last frame's payload may still be in flight; read it out.
    while skip > 0 {
        let n = data.read(&mut chunk[..skip.min(4 << 20)]).expect("read");
        skip -= n;
        total += n as u64;
    }
    let dt = t0.map_or(0.0, |t| t.elapsed().as_secs_f64());
    println!(
        "sender: {frames} frames of 256x256 (depth {depth}), {:.3} GB frame bytes in {dt:.3} s = {:.2} GB/s, {:.0} frames/s (bytes read {total})",
        frame_bytes as f64 / 1e9,
        frame_bytes as f64 / 1e9 / dt,
        frames as f64 / dt
    );
    let st = sim.stats();
    println!("stats: {st:?}");
    sim.stop();
}
