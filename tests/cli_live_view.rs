//! `--live-view ADDR`: partial results served over HTTP while a simulated scan runs.
//!
//! The HTTP client is a plain `TcpStream` with an HTTP/1.1 GET written by hand (one
//! request per connection, `Connection: close`), every read and connect bounded by a
//! deadline; the server binds 127.0.0.1 with port 0.

mod common;

use common::process::{ChildGuard, LogTap};
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

/// `GET path` on `addr` with `Host: addr`; panics (naming the path) on a socket error or a
/// malformed reply.
fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, path, &addr.to_string(), &[])
}

/// `GET path` on `addr` with `Host: host` and the header lines `extra` (`Name: value`);
/// panics (naming the path) on a socket error or a malformed reply.
fn request(addr: SocketAddr, path: &str, host: &str, extra: &[&str]) -> Reply {
    let mut s = TcpStream::connect_timeout(&addr, HTTP_DEADLINE)
        .unwrap_or_else(|e| panic!("connecting to {addr} for {path}: {e}"));
    s.set_read_timeout(Some(HTTP_DEADLINE))
        .expect("read timeout");
    s.set_write_timeout(Some(HTTP_DEADLINE))
        .expect("write timeout");
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())
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

/// The running `stemflow` of a live-view test, its output taps and the view's address.
struct Running {
    child: ChildGuard,
    stderr: LogTap,
    stdout: LogTap,
    addr: SocketAddr,
}

/// Starts the simulated scan of `nav` (`ROWSxCOLS`) at a dwell of `dwell` s per position,
/// writing to `dir/out`, with `--live-view 127.0.0.1:0`, the arguments `extra` and the
/// environment `env`; waits for its `live view: http://ADDR/` line.
fn start(
    dir: &ScratchDir,
    nav: &str,
    dwell: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Running {
    let profile = slow_simulated_profile(dir.path(), dwell);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stemflow"));
    cmd.args(["--nav-shape", nav, "--no-raw", "--live-view", "127.0.0.1:0"])
        .args(extra)
        .arg("--profile")
        .arg(&profile)
        .arg("--out")
        .arg(dir.path().join("out"))
        .envs(env.iter().copied())
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
    Running {
        child,
        stderr,
        stdout,
        addr,
    }
}

/// A 48 × 64 scan (non-square, so rows and columns cannot be swapped unnoticed) at a dwell
/// of 1.5 ms (about 4.6 s): `/status.json` shows a partial count while it runs, `/` links
/// every 2-D nav result, a result's PNG is 64 wide and 48 high, an unknown one is a 404
/// naming the images that exist but not the one asked for, and the command still exits 0
/// with its outputs.
#[test]
fn live_view_serves_partial_results_during_a_simulated_scan() {
    let dir = ScratchDir::new("live-view");
    let out = dir.path().join("out");
    let (rows, cols) = (48u32, 64u32);
    let expected = u64::from(rows * cols);
    let Running {
        mut child,
        stderr,
        stdout,
        addr,
    } = start(&dir, "48x64", "0.0015", &[], &[]);

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
    assert!(
        !msg.contains("no_such_udf") && !msg.contains("nothing"),
        "the 404 repeats the request: {msg}"
    );
    assert!(
        msg.contains(images[0]),
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

/// Open file descriptors of process `pid` (Linux; `None` elsewhere).
fn open_fds(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// True once the server has closed `s` (end of stream or reset), false when `s` is still
/// open at `deadline`.
fn closed_by(s: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("read timeout");
        match s.read(&mut buf) {
            Ok(0) => return true,
            // A reply (e.g. 408) is read past; the close follows.
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// The flood, scaled down: 500 idle (half-open) connections and a slowloris client
/// that trickles its request head, with the head timeout at 1 s
/// (`STEMFLOW_LIVE_VIEW_HEAD_TIMEOUT_MS`). A normal request is still answered within 2 s;
/// the server holds at most its 64 connections (open descriptors, on Linux); every idle
/// connection and the slowloris one are closed by the server within the head timeout (plus
/// a margin); afterwards the view answers as before and its descriptors are back.
#[test]
fn live_view_outlasts_a_flood_of_idle_connections() {
    const IDLE: usize = 500;
    /// The server's connection cap (`stemflow_app::live_view::MAX_CONNECTIONS`).
    const MAX_CONNECTIONS: usize = 64;
    let head_timeout = Duration::from_millis(1000);
    let dir = ScratchDir::new("live-view-flood");
    // 64 × 64 at 5 ms: about 20 s, longer than the test; killed at its end.
    let mut run = start(
        &dir,
        "64x64",
        "0.005",
        &[],
        &[("STEMFLOW_LIVE_VIEW_HEAD_TIMEOUT_MS", "1000")],
    );
    let (addr, pid) = (run.addr, run.child.id());
    assert_eq!(get(addr, "/status.json").code, 200);
    let fds_before = open_fds(pid);

    let flood_start = Instant::now();
    let mut idle: Vec<TcpStream> = (0..IDLE)
        .map(|i| {
            TcpStream::connect_timeout(&addr, HTTP_DEADLINE)
                .unwrap_or_else(|e| panic!("idle connection {i} to {addr}: {e}"))
        })
        .collect();
    let mut slow = TcpStream::connect_timeout(&addr, HTTP_DEADLINE).expect("slowloris connect");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        .expect("slowloris head");
    let opened = flood_start.elapsed();

    let t = Instant::now();
    let r = get(addr, "/status.json");
    let answered = t.elapsed();
    assert_eq!(r.code, 200, "{}", r.text());
    assert!(
        answered < Duration::from_secs(2),
        "a request took {answered:?} with {IDLE} idle connections open"
    );
    let fds_during = open_fds(pid);
    if let (Some(before), Some(during)) = (fds_before, fds_during) {
        assert!(
            during <= before + MAX_CONNECTIONS + 8,
            "{during} descriptors open during the flood, {before} before"
        );
    }
    eprintln!(
        "{IDLE} idle connections opened in {opened:?}; a request answered in {answered:?}; \
         descriptors {fds_before:?} before, {fds_during:?} during"
    );

    // The slowloris client keeps sending header bytes; the head timeout still ends it.
    let deadline = flood_start + head_timeout + Duration::from_secs(3);
    let slow_closed = loop {
        if Instant::now() > deadline {
            break false;
        }
        if slow.write_all(b"X-Slow: a\r\n").is_err() {
            break true;
        }
        if closed_by(&mut slow, Instant::now() + Duration::from_millis(100)) {
            break true;
        }
    };
    assert!(
        slow_closed,
        "a client trickling its head was not closed within {:?}",
        deadline - flood_start
    );
    let still_open = idle
        .iter_mut()
        .filter_map(|s| (!closed_by(s, deadline)).then_some(()))
        .count();
    assert_eq!(
        still_open,
        0,
        "{still_open} of {IDLE} idle connections still open {:?} after the flood began",
        flood_start.elapsed()
    );
    let all_closed = flood_start.elapsed();
    drop(idle);

    let r = get(addr, "/status.json");
    assert_eq!(r.code, 200, "after the flood: {}", r.text());
    std::thread::sleep(Duration::from_millis(200));
    let fds_after = open_fds(pid);
    if let (Some(before), Some(after)) = (fds_before, fds_after) {
        assert!(
            after <= before + 4,
            "{after} descriptors open after the flood, {before} before"
        );
    }
    eprintln!(
        "every idle connection closed by the server {all_closed:?} after the flood began; \
         descriptors {fds_after:?} after"
    );
    if let Some(status) = run.child.try_status() {
        assert!(
            status.success(),
            "stemflow failed during the flood:\n{}",
            tail(&run.stderr.text(), 3000)
        );
    }
}

/// The view's guards on loopback with `--live-view-token`: the given token is not printed;
/// a request without it, or with another, is 401 and with it (query or bearer) 200, the
/// page passing it on; a request for another host (DNS rebinding) is 421 even with the
/// token; 404s repeat neither the path nor the headers asked with.
#[test]
fn live_view_checks_host_and_token_and_echoes_nothing() {
    const TOKEN: &str = "cli-test-token-0123456789abcdef";
    const MARK: &str = "QX7Z9marker";
    let dir = ScratchDir::new("live-view-guard");
    // 48 × 64 at 4 ms: about 12 s, longer than the test; killed at its end.
    let mut run = start(&dir, "48x64", "0.004", &["--live-view-token", TOKEN], &[]);
    let addr = run.addr;
    let here = addr.to_string();
    assert!(
        !run.stderr.text().contains(TOKEN),
        "the given token is printed:\n{}",
        run.stderr.text()
    );

    let r = get(addr, "/status.json");
    assert_eq!(r.code, 401, "without the token: {}", r.text());
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer"))
    );
    let r = get(addr, "/status.json?token=wrong-token-0123456789abcdef");
    assert_eq!(r.code, 401, "with another token: {}", r.text());
    let r = get(addr, "/");
    assert_eq!(r.code, 401, "the page without the token");
    let r = get(addr, &format!("/status.json?token={TOKEN}"));
    assert_eq!(r.code, 200, "with ?token=: {}", r.text());
    let _: Value = serde_json::from_slice(&r.body).expect("status.json is JSON");
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let r = request(addr, "/status.json", &here, &[&bearer]);
    assert_eq!(r.code, 200, "with a bearer token: {}", r.text());
    let page = get(addr, &format!("/?token={TOKEN}"));
    assert_eq!(page.code, 200);
    assert!(
        page.text()
            .contains(&format!("data-auth=\"&amp;token={TOKEN}\"")),
        "the page does not pass the token on:\n{}",
        page.text()
    );

    // DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1.
    for host in ["evil.example", &format!("evil.example:{}", addr.port())] {
        let r = request(addr, &format!("/status.json?token={TOKEN}"), host, &[]);
        assert_eq!(r.code, 421, "Host: {host}: {}", r.text());
        assert!(!r.text().contains("evil"), "{}", r.text());
    }
    for host in [
        format!("localhost:{}", addr.port()),
        format!("[::1]:{}", addr.port()),
    ] {
        let r = request(addr, &format!("/status.json?token={TOKEN}"), &host, &[]);
        assert_eq!(r.code, 200, "Host: {host}: {}", r.text());
    }

    let echo = format!("X-Probe: {MARK}-header");
    for path in [
        format!("/{MARK}/page.html?token={TOKEN}&q={MARK}"),
        format!("/result/{MARK}/{MARK}.png?token={TOKEN}"),
        format!("/result/%3Cscript%3E{MARK}/x.png?token={TOKEN}"),
    ] {
        let r = request(addr, &path, &here, &[&echo]);
        assert_eq!(r.code, 404, "{path}: {}", r.text());
        let all = format!("{:?}{}", r.headers, r.text());
        assert!(
            !all.contains(MARK),
            "{path}: the 404 repeats the request: {all}"
        );
        assert!(!all.contains("<script"), "{path}: {all}");
    }
    assert!(
        run.child.try_status().is_none(),
        "stemflow ended early:\n{}",
        tail(&run.stderr.text(), 3000)
    );
}
