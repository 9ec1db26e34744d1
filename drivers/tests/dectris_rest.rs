//! The SIMPLON REST client against a tiny in-test HTTP/1.1 server playing a DCU
//! (protocols.md §2.2–§2.3): paths, bodies, read-back after every PUT, commands and their
//! `sequence id`, and the failures: deadline expiry, non-2xx status with the body in the
//! error, read-back mismatch, connection refused.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stemflow_drivers::dectris::rest::{
    Command, DetectorState, Module, RestError, SimplonClient, StreamFormat,
};
use stemflow_drivers::dectris::stream::HeaderDetail;

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    content_type: Option<String>,
    body: String,
}

/// What the handler answers: status, body, delay before answering.
struct Reply {
    status: u16,
    body: String,
    delay: Duration,
}

impl Reply {
    fn ok(v: Value) -> Self {
        Self {
            status: 200,
            body: v.to_string(),
            delay: Duration::ZERO,
        }
    }
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

/// A tiny HTTP server on 127.0.0.1:0; stops when dropped.
struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Seen> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut it = line.split_whitespace();
    let method = it.next()?.to_string();
    let path = it.next()?.to_string();
    let mut len = 0usize;
    let mut content_type = None;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        match k.to_ascii_lowercase().as_str() {
            "content-length" => len = v.trim().parse().ok()?,
            "content-type" => content_type = Some(v.trim().to_string()),
            _ => {}
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some(Seen {
        method,
        path,
        content_type,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn serve(handler: Arc<Handler>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (seen2, stop2) = (seen.clone(), stop.clone());
    std::thread::spawn(move || {
        while !stop2.load(Ordering::Relaxed) {
            let Ok((s, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            };
            let (handler, seen, stop) = (handler.clone(), seen2.clone(), stop2.clone());
            std::thread::spawn(move || {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                while let Some(req) = read_request(&mut r) {
                    seen.lock().unwrap().push(req.clone());
                    let reply = handler(&req);
                    std::thread::sleep(reply.delay);
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let msg = format!(
                        "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
                        reply.status,
                        reply.body.len(),
                        reply.body
                    );
                    if w.write_all(msg.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Server { port, seen, stop }
}

/// A DCU model: config values by path, commands with a sequence id, `round` applied to
/// `count_time` on PUT (to provoke read-back mismatches).
fn dcu(round_count_time: bool) -> Server {
    let values: Arc<Mutex<BTreeMap<String, Value>>> = Arc::new(Mutex::new(BTreeMap::new()));
    values
        .lock()
        .unwrap()
        .insert("/detector/api/1.8.0/status/state".into(), json!("idle"));
    values.lock().unwrap().insert(
        "/detector/api/1.8.0/status/error".into(),
        json!(["hv low", "temperature"]),
    );
    serve(Arc::new(move |req: &Seen| {
        let mut v = values.lock().unwrap();
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/detector/api/version/") => {
                Reply::ok(json!({"value": "1.8.0", "value_type": "string"}))
            }
            ("PUT", p) if p.contains("/command/") => match p.rsplit('/').next() {
                Some("arm" | "disarm" | "abort" | "cancel") => {
                    Reply::ok(json!({"sequence id": 42}))
                }
                Some("trigger") => Reply::ok(json!({})),
                _ => Reply {
                    status: 500,
                    body: json!({"error": "unknown command"}).to_string(),
                    delay: Duration::ZERO,
                },
            },
            ("PUT", p) => {
                let body: Value = serde_json::from_str(&req.body).unwrap_or(Value::Null);
                let mut value = body.get("value").cloned().unwrap_or(Value::Null);
                if p.ends_with("/ntrigger") && value.as_u64() == Some(0) {
                    return Reply {
                        status: 400,
                        body: "{\"error\":\"ntrigger must be >= 1\"}".into(),
                        delay: Duration::ZERO,
                    };
                }
                if round_count_time && p.ends_with("/count_time") {
                    value = json!(0.002);
                }
                let param = p.rsplit('/').next().unwrap_or_default().to_string();
                v.insert(p.to_string(), value);
                Reply::ok(json!([param]))
            }
            ("GET", p) => match v.get(p) {
                Some(value) => Reply::ok(json!({"value": value, "access_mode": "rw"})),
                None => Reply {
                    status: 404,
                    body: format!("{{\"error\":\"no such parameter {p}\"}}"),
                    delay: Duration::ZERO,
                },
            },
            _ => Reply::ok(json!({})),
        }
    }))
}

fn client(port: u16) -> SimplonClient {
    SimplonClient::new("127.0.0.1", port, Duration::from_secs(2))
}

#[test]
fn config_puts_send_value_objects_and_read_back() {
    let server = dcu(false);
    let c = client(server.port);
    assert_eq!(c.version().unwrap(), "1.8.0");
    assert_eq!(
        c.set_detector_config("trigger_mode", "exte").unwrap(),
        json!("exte")
    );
    assert_eq!(c.set_detector_config("ntrigger", 256).unwrap(), json!(256));
    assert_eq!(
        c.set_detector_config("count_time", 0.001).unwrap(),
        json!(0.001)
    );
    assert_eq!(c.detector_config("ntrigger").unwrap(), json!(256));
    c.set_stream_enabled(true).unwrap();
    c.set_header_detail(HeaderDetail::Basic).unwrap();
    c.set_stream_format(StreamFormat::Legacy).unwrap();
    assert_eq!(
        c.get_config(Module::Stream, "header_detail").unwrap(),
        json!("basic")
    );
    let seen = server.seen.lock().unwrap().clone();
    let put = seen
        .iter()
        .find(|s| s.method == "PUT" && s.path == "/detector/api/1.8.0/config/ntrigger")
        .expect("PUT ntrigger");
    assert_eq!(put.body, r#"{"value":256}"#);
    assert_eq!(put.content_type.as_deref(), Some("application/json"));
    // Every PUT is followed by a GET of the same path (the read-back).
    for (i, s) in seen.iter().enumerate().filter(|(_, s)| s.method == "PUT") {
        let next = &seen[i + 1];
        assert_eq!(
            (next.method.as_str(), next.path.as_str()),
            ("GET", s.path.as_str())
        );
    }
    assert!(
        seen.iter().any(
            |s| s.path == "/stream/api/1.8.0/config/mode" && s.body == r#"{"value":"enabled"}"#
        )
    );
    assert!(
        seen.iter()
            .any(|s| s.path == "/stream/api/1.8.0/config/format"
                && s.body == r#"{"value":"legacy"}"#)
    );
}

#[test]
fn commands_return_the_sequence_id_and_status_reads() {
    let server = dcu(false);
    let c = client(server.port);
    assert_eq!(c.arm().unwrap(), 42);
    c.trigger(Some(0.5)).unwrap();
    c.trigger(None).unwrap();
    assert_eq!(c.disarm().unwrap(), Some(42));
    assert_eq!(c.abort().unwrap(), Some(42));
    assert_eq!(c.cancel().unwrap(), Some(42));
    let e = c.command(Command::Initialize, None).unwrap_err();
    assert!(e.to_string().contains("HTTP status 500"), "{e}");
    assert_eq!(c.state().unwrap(), DetectorState::Idle);
    assert_eq!(
        c.errors().unwrap(),
        vec!["hv low".to_string(), "temperature".to_string()]
    );
    let seen = server.seen.lock().unwrap().clone();
    let triggers: Vec<_> = seen
        .iter()
        .filter(|s| s.path == "/detector/api/1.8.0/command/trigger")
        .map(|s| s.body.clone())
        .collect();
    assert_eq!(
        triggers,
        vec![r#"{"value":0.5}"#.to_string(), String::new()]
    );
    assert!(seen.iter().any(|s| s.method == "PUT"
        && s.path == "/detector/api/1.8.0/command/arm"
        && s.body.is_empty()));
}

#[test]
fn a_read_back_mismatch_names_both_values() {
    let server = dcu(true);
    let c = client(server.port);
    let e = c.set_detector_config("count_time", 0.001).unwrap_err();
    assert!(matches!(e, RestError::Mismatch { .. }), "{e}");
    let m = e.to_string();
    assert!(m.contains("dectris @ 127.0.0.1:"), "{m}");
    assert!(
        m.contains("PUT /detector/api/1.8.0/config/count_time"),
        "{m}"
    );
    assert!(m.contains("requested 0.001, read back 0.002"), "{m}");
}

#[test]
fn a_non_2xx_answer_names_endpoint_status_and_body() {
    let server = dcu(false);
    let c = client(server.port);
    let e = c.set_detector_config("ntrigger", 0).unwrap_err();
    let RestError::Status {
        status,
        ref body,
        ref endpoint,
        ..
    } = e
    else {
        panic!("expected a status error, got {e}")
    };
    assert_eq!(status, 400);
    assert_eq!(endpoint, "/detector/api/1.8.0/config/ntrigger");
    assert!(body.contains("ntrigger must be >= 1"));
    let m = e.to_string();
    assert!(
        m.contains("PUT /detector/api/1.8.0/config/ntrigger: HTTP status 400"),
        "{m}"
    );
    let e = c.detector_config("no_such").unwrap_err();
    assert!(
        e.to_string()
            .contains("GET /detector/api/1.8.0/config/no_such: HTTP status 404"),
        "{e}"
    );
    assert!(e.to_string().contains("no such parameter"), "{e}");
}

#[test]
fn a_slow_answer_fails_at_the_deadline() {
    let server = serve(Arc::new(|_: &Seen| Reply {
        status: 200,
        body: "{\"value\": 1}".into(),
        delay: Duration::from_secs(3),
    }));
    let c = SimplonClient::new("127.0.0.1", server.port, Duration::from_millis(200));
    let t0 = Instant::now();
    let e = c.detector_config("ntrigger").unwrap_err();
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        t0.elapsed()
    );
    assert!(matches!(e, RestError::Timeout { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("GET /detector/api/1.8.0/config/ntrigger: no answer within 0.200 s"),
        "{e}"
    );
}

#[test]
fn malformed_replies_and_refused_connections_are_errors() {
    let server = serve(Arc::new(|_: &Seen| Reply {
        status: 200,
        body: "not json".into(),
        delay: Duration::ZERO,
    }));
    let c = client(server.port);
    let e = c.detector_config("ntrigger").unwrap_err();
    assert!(matches!(e, RestError::Reply { .. }), "{e}");
    assert!(e.to_string().contains("body: not json"), "{e}");
    let e = c.arm().unwrap_err();
    assert!(e.to_string().contains("sequence id"), "{e}");

    // A port nobody listens on.
    let free = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = client(free).version().unwrap_err();
    assert!(
        matches!(e, RestError::Transport { .. } | RestError::Timeout { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("GET /detector/api/version/"), "{e}");
}

// ---------------------------------------------------------------------------------------
// DectrisDetector against a fake DCU: this HTTP server for REST plus an in-test ZMTP PUSH
// for the stream, sending a raw (`<`) 4 × 4 u16 series on `trigger`.

mod fake_dcu {
    use super::*;
    use std::net::SocketAddr;
    use stemflow_drivers::dectris::zmtp::{ZmtpPush, ZmtpPushListener};

    pub const SERIES: u64 = 9;

    pub struct FakeDcu {
        pub server: Server,
        pub stream: SocketAddr,
        pub push: Arc<Mutex<Option<ZmtpPush>>>,
        listener: Arc<Mutex<Option<ZmtpPushListener>>>,
    }

    impl FakeDcu {
        /// Accepts the detector's stream connection (call while it connects).
        pub fn accept_in_background(&self) -> std::thread::JoinHandle<()> {
            let (l, p) = (self.listener.clone(), self.push.clone());
            std::thread::spawn(move || {
                let l = l.lock().unwrap().take().unwrap();
                *p.lock().unwrap() = Some(l.accept(Duration::from_secs(5)).unwrap());
            })
        }
    }

    fn send(push: &Mutex<Option<ZmtpPush>>, parts: &[&[u8]]) {
        if let Some(p) = push.lock().unwrap().as_mut() {
            p.send(parts).unwrap();
        }
    }

    pub fn start() -> FakeDcu {
        start_with(false)
    }

    /// A fake DCU; with `hang_arm` its `arm` command answers only after 30 s.
    pub fn start_with(hang_arm: bool) -> FakeDcu {
        let listener = ZmtpPushListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let stream = listener.local_addr().unwrap();
        let push: Arc<Mutex<Option<ZmtpPush>>> = Arc::new(Mutex::new(None));
        let values: Arc<Mutex<BTreeMap<String, Value>>> = Arc::new(Mutex::new(BTreeMap::new()));
        for (k, v) in [
            ("x_pixels_in_detector", json!(4)),
            ("y_pixels_in_detector", json!(4)),
            ("bit_depth_image", json!(16)),
        ] {
            values
                .lock()
                .unwrap()
                .insert(format!("/detector/api/1.8.0/config/{k}"), v);
        }
        let p2 = push.clone();
        let server = serve(Arc::new(move |req: &Seen| {
            let mut v = values.lock().unwrap();
            let cfg = |k: &str| v.get(&format!("/detector/api/1.8.0/config/{k}")).cloned();
            match (req.method.as_str(), req.path.as_str()) {
                ("GET", "/detector/api/version/") => Reply::ok(json!({"value": "1.8.0"})),
                ("PUT", "/detector/api/1.8.0/command/arm") if hang_arm => Reply {
                    status: 200,
                    body: json!({"sequence id": SERIES}).to_string(),
                    delay: Duration::from_secs(30),
                },
                ("PUT", "/detector/api/1.8.0/command/arm") => {
                    let config = json!({
                        "trigger_mode": cfg("trigger_mode"), "ntrigger": cfg("ntrigger"),
                        "nimages": cfg("nimages"), "x_pixels_in_detector": 4,
                        "y_pixels_in_detector": 4, "bit_depth_image": 16,
                    })
                    .to_string();
                    let h = format!(
                        r#"{{"htype":"dheader-1.0","header_detail":"basic","series":{SERIES}}}"#
                    );
                    // The header overtakes the REST reply, as it can on a real DCU.
                    send(&p2, &[h.as_bytes(), config.as_bytes()]);
                    Reply::ok(json!({"sequence id": SERIES}))
                }
                ("PUT", "/detector/api/1.8.0/command/trigger") => {
                    let n = cfg("nimages").and_then(|n| n.as_u64()).unwrap_or(0)
                        * cfg("ntrigger").and_then(|n| n.as_u64()).unwrap_or(0);
                    for i in 0..n {
                        let h = format!(
                            r#"{{"htype":"dimage-1.0","series":{SERIES},"frame":{i},"hash":""}}"#
                        );
                        let d = r#"{"htype":"dimage_d-1.0","shape":[4,4],"type":"uint16","encoding":"<","size":32}"#;
                        let blob: Vec<u8> = (0..16u16)
                            .flat_map(|p| (p + 100 * i as u16).to_le_bytes())
                            .collect();
                        let t =
                            r#"{"htype":"dconfig-1.0","start_time":0,"stop_time":1,"real_time":1}"#;
                        send(&p2, &[h.as_bytes(), d.as_bytes(), &blob, t.as_bytes()]);
                    }
                    let end = format!(r#"{{"htype":"dseries_end-1.0","series":{SERIES}}}"#);
                    send(&p2, &[end.as_bytes()]);
                    Reply::ok(json!({}))
                }
                ("PUT", p) if p.contains("/command/") => Reply::ok(json!({"sequence id": SERIES})),
                ("PUT", p) => {
                    let body: Value = serde_json::from_str(&req.body).unwrap_or(Value::Null);
                    v.insert(p.to_string(), body["value"].clone());
                    Reply::ok(json!([]))
                }
                ("GET", p) => match v.get(p) {
                    Some(value) => Reply::ok(json!({"value": value})),
                    None => Reply {
                        status: 404,
                        body: "{}".into(),
                        delay: Duration::ZERO,
                    },
                },
                _ => Reply::ok(json!({})),
            }
        }));
        FakeDcu {
            server,
            stream,
            push,
            listener: Arc::new(Mutex::new(Some(listener))),
        }
    }
}

fn fake_settings(
    trigger: stemflow_core::detector::DetectorTrigger,
    fpt: u64,
) -> stemflow_core::detector::DetectorSettings {
    stemflow_core::detector::DetectorSettings {
        nav_shape: stemflow_core::NavShape::new(2, 3),
        exposure_s: 0.001,
        frame_time_s: 0.002,
        trigger,
        frames_per_trigger: fpt,
        counter_depth: None,
        extra: BTreeMap::new(),
    }
}

#[test]
fn detector_active_mode_with_internal_trigger_against_a_fake_dcu() {
    use stemflow_core::detector::{ArmMode, Detector, DetectorTrigger};
    use stemflow_core::frame::{PixelsRef, Tile};
    use stemflow_drivers::dectris::{DectrisDetector, DectrisDetectorConfig};
    let dcu = fake_dcu::start();
    let accept = dcu.accept_in_background();
    let det = DectrisDetector::connect(DectrisDetectorConfig::new(
        "127.0.0.1",
        dcu.server.port,
        dcu.stream,
    ));
    accept.join().unwrap();
    let mut det = det.unwrap();
    assert!(det.name().starts_with("dectris @ 127.0.0.1:"));

    // k frames per external trigger must divide the scan.
    let e = det
        .configure(&fake_settings(DetectorTrigger::ExternalRising, 4))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("6 scan positions are not a multiple of 4"),
        "{e}"
    );

    let rb = det
        .configure(&fake_settings(DetectorTrigger::Internal, 1))
        .unwrap();
    assert_eq!(rb["trigger_mode"], "ints");
    assert_eq!(
        (rb["ntrigger"].as_str(), rb["nimages"].as_str()),
        ("1", "6")
    );
    assert_eq!(rb["x_pixels_in_detector"], "4");
    let armed = det.arm(ArmMode::Active, Duration::from_secs(5)).unwrap();
    assert_eq!(armed.expected_frames, 6);
    assert_eq!(armed.nav_shape, Some(stemflow_core::NavShape::new(2, 3)));
    assert!(armed.header.as_deref().unwrap().contains("\"series\":9"));
    let mut tile = Tile::zeros(0, 0, armed.sig_shape, armed.dtype);
    let mut frames = 0;
    while let Ok(stack) = armed.stacks.recv_timeout(Duration::from_secs(5)) {
        let stack = stack.into_dense().expect("DECTRIS stacks are dense");
        tile.decode_from(&stack).unwrap();
        for i in 0..stack.len() {
            let f = stack.first_frame + i as u64;
            let PixelsRef::U16(px) = tile.frame(i) else {
                panic!("u16")
            };
            assert_eq!(px[5], 5 + 100 * f as u16);
            frames += 1;
        }
    }
    assert_eq!(frames, 6);
    let end = armed.end.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!((end.received, end.lost, end.error), (6, 0, None));
    det.disarm().unwrap();

    let seen = dcu.server.seen.lock().unwrap().clone();
    let puts: Vec<String> = seen
        .iter()
        .filter(|s| s.method == "PUT")
        .map(|s| format!("{} {}", s.path.rsplit('/').next().unwrap(), s.body))
        .collect();
    let at = |p: &str| {
        puts.iter()
            .position(|x| x.starts_with(p))
            .unwrap_or(usize::MAX)
    };
    // count_time before frame_time; arm before the automatic trigger.
    assert!(at("count_time") < at("frame_time"), "{puts:?}");
    assert!(at("arm ") < at("trigger "), "{puts:?}");
    assert!(
        puts.contains(&r#"mode {"value":"enabled"}"#.to_string()),
        "{puts:?}"
    );
    assert!(
        puts.contains(&r#"header_detail {"value":"basic"}"#.to_string()),
        "{puts:?}"
    );
    assert!(
        !puts.iter().any(|p| p.starts_with("format")),
        "v1 leaves the format alone"
    );

    // Forced `inte`: one frame per soft trigger, the exposure sent with each.
    let mut s = fake_settings(DetectorTrigger::Soft, 1);
    s.extra.insert("trigger_mode".into(), "inte".into());
    let rb = det.configure(&s).unwrap();
    assert_eq!(
        (rb["trigger_mode"].as_str(), rb["ntrigger"].as_str()),
        ("inte", "6")
    );
    det.soft_trigger().unwrap();
    let seen = dcu.server.seen.lock().unwrap().clone();
    let last = seen
        .iter()
        .rev()
        .find(|s| s.path.ends_with("/command/trigger"))
        .unwrap();
    assert_eq!(last.body, r#"{"value":0.001}"#);
}

/// A DCU whose `arm` never answers: the arm fails at the caller's deadline (1 s here), not
/// at the REST client's own 60 s, and the error names the time actually waited.
#[test]
fn an_arm_that_never_answers_fails_at_the_callers_deadline() {
    use stemflow_core::detector::{ArmMode, Detector, DetectorTrigger};
    use stemflow_drivers::dectris::{DectrisDetector, DectrisDetectorConfig};
    let dcu = fake_dcu::start_with(true);
    let accept = dcu.accept_in_background();
    let det = DectrisDetector::connect(DectrisDetectorConfig::new(
        "127.0.0.1",
        dcu.server.port,
        dcu.stream,
    ));
    accept.join().unwrap();
    let mut det = det.unwrap();
    det.configure(&fake_settings(DetectorTrigger::Internal, 1))
        .unwrap();
    let t0 = Instant::now();
    let e = det
        .arm(ArmMode::Active, Duration::from_secs(1))
        .unwrap_err()
        .to_string();
    let took = t0.elapsed();
    assert!(took < Duration::from_millis(2500), "took {took:?}: {e}");
    assert!(
        e.contains("command/arm") && e.contains("timed out after"),
        "{e}"
    );
    assert!(!e.contains("60.000") && !e.contains("7.000"), "{e}");
}
