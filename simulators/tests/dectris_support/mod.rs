//! Test-local DECTRIS helpers, written from protocols.md §2 independently of the simulator:
//! a minimal HTTP/1.1 client for the SIMPLON REST API, a ZeroMQ PULL receiver with
//! deadlines, and a reader of the stream-capture dump format.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use stemflow_core::{NavShape, SigShape};
use stemflow_simulators::dectris::{DectrisSim, DectrisSimConfig, DectrisSource, Pacing};
use stemflow_simulators::specimen::Specimen;
use zeromq::{Socket, SocketRecv};

/// Every wait in the tests gives up after this long.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// The reference capture (one series, id 34, of 256 frames of 256 × 256 uint16, bs16-lz4<).
pub fn capture_path() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/dectris/stream-v1/synthetic_16x16_256_u16.dump"
    ))
}

/// The parts of a dump file: 8-byte little-endian length + bytes, per ZeroMQ part.
pub fn read_dump(path: &std::path::Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut parts = Vec::new();
    let mut pos = 0;
    while pos + 8 <= data.len() {
        let n = u64::from_le_bytes(data[pos..pos + 8].try_into().unwrap()) as usize;
        parts.push(data[pos + 8..pos + 8 + n].to_vec());
        pos += 8 + n;
    }
    assert_eq!(pos, data.len(), "dump ends inside a record");
    parts
}

/// A simulator replaying the reference capture as fast as possible.
pub fn capture_sim() -> DectrisSim {
    let mut cfg = DectrisSimConfig::new(DectrisSource::Capture {
        path: capture_path(),
    });
    cfg.pacing = Pacing::AsFastAsPossible;
    DectrisSim::start(cfg).expect("start the capture simulator")
}

/// The specimen of [`small_source`].
pub fn small_specimen() -> Specimen {
    Specimen::builder()
        .disk_radius_px(6.0)
        .dose(500.0)
        .seed(5)
        .build()
}

/// A small synthetic source: 4 × 4 scan of 32 × 32 frames, 16-bit, noise seed 9.
pub fn small_source() -> DectrisSource {
    DectrisSource::Synthetic {
        specimen: small_specimen(),
        nav_shape: NavShape::new(4, 4),
        sig_shape: SigShape::new(32, 32),
        bit_depth: 16,
        seed: 9,
    }
}

/// One HTTP/1.1 request; returns the status code and the body.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect to the REST port");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send the request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {text:?}"));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "the helper reads only fixed-length bodies"
    );
    (code, body.to_string())
}

/// GET a JSON value; panics unless 200.
pub fn get(addr: SocketAddr, path: &str) -> Value {
    let (code, body) = http(addr, "GET", path, None);
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// GET `/detector/api/1.8.0/config/<p>` and return its `value`.
pub fn config(addr: SocketAddr, p: &str) -> Value {
    get(addr, &format!("/detector/api/1.8.0/config/{p}"))["value"].clone()
}

/// PUT `{"value": v}`; returns status and body.
pub fn put(addr: SocketAddr, path: &str, v: Value) -> (u16, String) {
    let body = serde_json::json!({ "value": v }).to_string();
    http(addr, "PUT", path, Some(&body))
}

/// PUT a detector config parameter; panics unless 200; returns the changed-parameter list.
pub fn set(addr: SocketAddr, p: &str, v: Value) -> Value {
    let path = format!("/detector/api/1.8.0/config/{p}");
    let (code, body) = put(addr, &path, v);
    assert_eq!(code, 200, "PUT {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// PUT a stream config parameter; panics unless 200.
pub fn set_stream(addr: SocketAddr, p: &str, v: Value) {
    let path = format!("/stream/api/1.8.0/config/{p}");
    let (code, body) = put(addr, &path, v);
    assert_eq!(code, 200, "PUT {path}: {body}");
}

/// PUT a detector command with an empty body; panics unless 200.
pub fn command(addr: SocketAddr, name: &str) -> Value {
    let path = format!("/detector/api/1.8.0/command/{name}");
    let (code, body) = http(addr, "PUT", &path, None);
    assert_eq!(code, 200, "PUT {path}: {body}");
    serde_json::from_str(&body).unwrap_or(Value::Null)
}

/// `arm`, returning the sequence id.
pub fn arm(addr: SocketAddr) -> u64 {
    command(addr, "arm")["sequence id"]
        .as_u64()
        .expect("arm answers {\"sequence id\": N}")
}

/// The detector state string.
pub fn state(addr: SocketAddr) -> String {
    get(addr, "/detector/api/1.8.0/status/state")["value"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A ZeroMQ PULL client with its own runtime; every receive has a deadline.
pub struct Puller {
    rt: tokio::runtime::Runtime,
    sock: Option<zeromq::PullSocket>,
}

impl Puller {
    /// Connects to `endpoint` and waits until the connection is up (a message sent before
    /// that would wait in the simulator, so a short settle time suffices).
    pub fn connect(endpoint: &str) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut sock = zeromq::PullSocket::new();
        rt.block_on(async {
            tokio::time::timeout(DEADLINE, sock.connect(endpoint))
                .await
                .expect("connect within the deadline")
                .expect("connect the PULL socket");
        });
        Self {
            rt,
            sock: Some(sock),
        }
    }

    /// The next multipart message, or `None` after `timeout`.
    pub fn recv_within(&mut self, timeout: Duration) -> Option<Vec<Vec<u8>>> {
        let sock = self.sock.as_mut().unwrap();
        self.rt.block_on(async {
            match tokio::time::timeout(timeout, sock.recv()).await {
                Ok(Ok(m)) => Some(m.into_vec().into_iter().map(|b| b.to_vec()).collect()),
                Ok(Err(e)) => panic!("PULL receive failed: {e}"),
                Err(_) => None,
            }
        })
    }

    /// The next message; panics after [`DEADLINE`].
    pub fn recv(&mut self) -> Vec<Vec<u8>> {
        self.recv_within(DEADLINE)
            .expect("a stream message within the deadline")
    }
}

impl Drop for Puller {
    fn drop(&mut self) {
        if let Some(s) = self.sock.take() {
            self.rt.block_on(async {
                let _ = tokio::time::timeout(Duration::from_millis(200), s.close()).await;
            });
        }
    }
}

/// A JSON part.
pub fn json(part: &[u8]) -> Value {
    serde_json::from_slice(part)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(part)))
}

/// The `htype` of a JSON part.
pub fn htype(part: &[u8]) -> String {
    json(part)["htype"].as_str().unwrap_or("").to_string()
}

/// Receives images until `dseries_end-1.0`; returns the image messages and the end message.
pub fn images_until_end(p: &mut Puller) -> (Vec<Vec<Vec<u8>>>, Value) {
    let t0 = Instant::now();
    let mut images = Vec::new();
    loop {
        assert!(t0.elapsed() < Duration::from_secs(30), "series did not end");
        let m = p.recv();
        match htype(&m[0]).as_str() {
            "dimage-1.0" => images.push(m),
            "dseries_end-1.0" => {
                assert_eq!(m.len(), 1, "dseries_end is a single-part message");
                return (images, json(&m[0]));
            }
            other => panic!("unexpected message {other}"),
        }
    }
}

/// MD5 hex of `data`.
pub fn md5_hex(data: &[u8]) -> String {
    format!("{:x}", md5::compute(data))
}
