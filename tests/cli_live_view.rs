//! `--live-view ADDR`: partial results served over HTTP while a simulated scan runs.
//!
//! The HTTP client is a plain `TcpStream` with an HTTP/1.1 GET written by hand (one
//! request per connection, `Connection: close`), every read and connect bounded by a
//! deadline; the server binds 127.0.0.1 with port 0.

mod common;

use common::process::ChildGuard;
use common::scratch::{ScratchDir, slow_simulated_profile, tail};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest wait for one HTTP exchange.
const HTTP_DEADLINE: Duration = Duration::from_secs(5);

/// One HTTP response: status code, lower-cased headers, body.
struct Reply {
    code: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET path` on `addr`; panics (naming the path) on a socket error or a malformed reply.
fn get(addr: SocketAddr, path: &str) -> Reply {
    let mut s = TcpStream::connect_timeout(&addr, HTTP_DEADLINE)
        .unwrap_or_else(|e| panic!("connecting to {addr} for {path}: {e}"));
    s.set_read_timeout(Some(HTTP_DEADLINE))
        .expect("read timeout");
    s.set_write_timeout(Some(HTTP_DEADLINE))
        .expect("write timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap_or_else(|e| panic!("sending GET {path}: {e}"));
    let deadline = Instant::now() + HTTP_DEADLINE;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        assert!(Instant::now() < deadline, "GET {path}: no end of reply");
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => panic!("reading the reply to GET {path}: {e}"),
        }
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("GET {path}: no end of headers in {raw:?}"));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = status
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: bad status line `{status}`"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        body = dechunk(&body, path);
    } else if let Some((_, len)) = headers.iter().find(|(n, _)| n == "content-length") {
        let len: usize = len.parse().expect("content-length");
        assert_eq!(body.len(), len, "GET {path}: body length");
    }
    Reply {
        code,
        headers,
        body,
    }
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut data: &[u8], path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or_else(|| panic!("GET {path}: truncated chunk size"));
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or_else(|_| panic!("GET {path}: bad chunk size `{size_text}`"));
        if size == 0 {
            return out;
        }
        let start = eol + 2;
        assert!(
            data.len() >= start + size + 2,
            "GET {path}: truncated chunk"
        );
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
}

/// Width and height from a PNG's IHDR chunk (which must come first).
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(
        bytes.len() >= 24,
        "PNG of {} bytes is too short",
        bytes.len()
    );
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR", "first chunk is IHDR");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

/// A 48 × 64 scan (non-square, so rows and columns cannot be swapped unnoticed) at a dwell
/// of 1.5 ms (about 4.6 s): `/status.json` shows a partial count while it runs, `/` links
/// every 2-D nav result, a result's PNG is 64 wide and 48 high, an unknown one is a 404
/// naming the images that exist, and the command still exits 0 with its outputs.
#[test]
fn live_view_serves_partial_results_during_a_simulated_scan() {
    let dir = ScratchDir::new("live-view");
    let profile = slow_simulated_profile(dir.path(), "0.0015");
    let out = dir.path().join("out");
    let (rows, cols) = (48u32, 64u32);
    let expected = u64::from(rows * cols);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stemflow"));
    cmd.args([
        "--nav-shape",
        "48x64",
        "--no-raw",
        "--live-view",
        "127.0.0.1:0",
    ])
    .arg("--profile")
    .arg(&profile)
    .arg("--out")
    .arg(&out)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = ChildGuard::spawn("stemflow --live-view", &mut cmd);
    let stderr = child.tap_stderr();
    let stdout = child.tap_stdout();

    let addr: SocketAddr = stderr
        .wait_for(
            Duration::from_secs(30),
            || true,
            |t| {
                let rest = &t[t.find("live view: http://")? + "live view: http://".len()..];
                rest[..rest.find('/')?].parse().ok()
            },
        )
        .unwrap_or_else(|| panic!("no `live view:` line on stderr:\n{}", stderr.text()));
    assert!(addr.ip().is_loopback(), "bound {addr}");
    assert_ne!(addr.port(), 0, "the actual port is printed");

    // Partial results while the scan runs.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        assert!(
            child.try_status().is_none(),
            "the scan ended before a partial status was seen:\n{}",
            tail(&stderr.text(), 3000)
        );
        assert!(Instant::now() < deadline, "no partial status within 30 s");
        let r = get(addr, "/status.json");
        assert_eq!(r.code, 200, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v: Value = serde_json::from_slice(&r.body).expect("status.json is JSON");
        let done = v["frames_processed"].as_u64().expect("frames_processed");
        if done > 0 {
            assert_eq!(v["frames_expected"], expected, "{v:#}");
            assert!(done < expected, "scan over before it was observed: {v:#}");
            break v;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status["snapshot"].as_u64().unwrap_or(0) > 0, "{status:#}");
    assert!(status["state"].is_string(), "{status:#}");
    let results = status["results"].as_array().expect("results");
    let images: Vec<&str> = results.iter().filter_map(|r| r["image"].as_str()).collect();
    assert!(!images.is_empty(), "no 2-D result in {status:#}");
    for r in results.iter().filter(|r| r["image"].is_string()) {
        assert_eq!(r["shape"], serde_json::json!([rows, cols]), "{r:#}");
        let finite = r["finite"].as_u64().expect("finite");
        assert!(finite < expected, "partial image already complete: {r:#}");
    }

    let page = get(addr, "/");
    assert_eq!(page.code, 200);
    let html = page.text();
    assert!(html.contains("<img"), "{html}");
    for url in &images {
        assert!(html.contains(url), "page lacks {url}:\n{html}");
    }

    let png = get(addr, images[0]);
    assert_eq!(png.code, 200, "{}", png.text());
    assert_eq!(png.header("content-type"), Some("image/png"));
    assert_eq!(
        png_size(&png.body),
        (cols, rows),
        "width × height of {}",
        images[0]
    );

    let bogus = get(addr, "/result/no_such_udf/nothing.png");
    assert_eq!(bogus.code, 404);
    let msg = bogus.text();
    assert!(msg.contains("no_such_udf"), "{msg}");
    assert!(
        msg.contains(&images[0].replace("%20", " ")),
        "404 does not name {}: {msg}",
        images[0]
    );

    let code = child
        .wait_timeout(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("still running 60 s on:\n{}", tail(&stderr.text(), 3000)));
    assert_eq!(
        code.code(),
        Some(0),
        "exit status; stdout:\n{}\nstderr:\n{}",
        tail(&stdout.text(), 3000),
        tail(&stderr.text(), 3000)
    );
    assert!(out.join("run.json").is_file(), "no run.json");
}
