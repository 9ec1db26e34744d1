//! How fast the DECTRIS simulator serves stream-v1 images to a ZeroMQ PULL client on
//! loopback: replays the reference capture (256 × 256 uint16, bs16-lz4<, about 10.7 kB a
//! frame) as one `ints` series of `FRAMES` images as fast as the client takes them, and
//! prints frames/s and MB/s (compressed bytes on the wire).
//!
//! Run: `cargo run --release -p stemflow-simulators --example dectris_throughput [FRAMES]`

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use stemflow_simulators::dectris::{DectrisSim, DectrisSimConfig, DectrisSource, Pacing};
use zeromq::{Socket, SocketRecv};

fn put(addr: std::net::SocketAddr, path: &str, body: &str) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "PUT {path}: {r}");
}

fn main() {
    let frames: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/dectris/stream-v1/synthetic_16x16_256_u16.dump"
    );
    let mut cfg = DectrisSimConfig::new(DectrisSource::Capture { path: path.into() });
    cfg.pacing = Pacing::AsFastAsPossible;
    let sim = DectrisSim::start(cfg).expect("start the simulator");
    let a = sim.api_addr();
    let d = "/detector/api/1.8.0";
    put(
        a,
        &format!("{d}/config/trigger_mode"),
        r#"{"value":"ints"}"#,
    );
    put(a, &format!("{d}/config/ntrigger"), r#"{"value":1}"#);
    put(
        a,
        &format!("{d}/config/nimages"),
        &format!(r#"{{"value":{frames}}}"#),
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut pull = zeromq::PullSocket::new();
    rt.block_on(pull.connect(&sim.stream_endpoint()))
        .expect("connect PULL");
    put(a, &format!("{d}/command/arm"), "");
    let t0 = Instant::now();
    put(a, &format!("{d}/command/trigger"), "");
    let (mut images, mut bytes) = (0u64, 0u64);
    rt.block_on(async {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), pull.recv())
                .await
                .expect("a message within 10 s")
                .expect("receive");
            bytes += m.iter().map(|p| p.len() as u64).sum::<u64>();
            if m.len() >= 4 {
                images += 1;
            } else if m
                .get(0)
                .is_some_and(|p| p.starts_with(br#"{"htype":"dseries_end"#))
            {
                break;
            }
        }
    });
    let s = t0.elapsed().as_secs_f64();
    println!(
        "{images} images in {s:.3} s: {:.0} frames/s, {:.1} MB/s (simulator counted {} frames)",
        images as f64 / s,
        bytes as f64 / s / 1e6,
        sim.stats().frames_sent
    );
    drop(pull);
    sim.stop();
}
