//! The Merlin control client against fake control servers on 127.0.0.1:0: replies with
//! status 0 and non-zero statuses, a server that never answers, the LiberTEM simulator's
//! off-by-one reply length, and read-back checks of `configure_acquisition`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use stemflow_drivers::merlin::control::commands;
use stemflow_drivers::merlin::{ControlError, MerlinControl, MerlinSettings, MerlinTrigger};

/// How the fake frames its replies.
#[derive(Clone, Copy)]
enum Framing {
    /// Real Merlin: the length counts the comma after the digits.
    Merlin,
    /// LiberTEM simulator: the length does not count it (one short).
    LiberTemSim,
}

fn frame(reply: &str, framing: Framing) -> Vec<u8> {
    let len = match framing {
        Framing::Merlin => reply.len() + 1,
        Framing::LiberTemSim => reply.len(),
    };
    format!("MPX,{len:010},{reply}").into_bytes()
}

/// Reads one MPX request (real framing) from `conn`; `None` at EOF or after 10 s.
fn read_request(conn: &mut TcpStream) -> Option<String> {
    let mut prefix = [0u8; 15];
    conn.read_exact(&mut prefix).ok()?;
    let len: usize = std::str::from_utf8(&prefix[4..14]).ok()?.parse().ok()?;
    let mut payload = vec![0u8; len - 1];
    conn.read_exact(&mut payload).ok()?;
    String::from_utf8(payload).ok()
}

/// A fake control server: `answer` maps each request payload to a reply payload (or `None`
/// to stay silent). Every request is logged.
fn fake(
    framing: Framing,
    mut answer: impl FnMut(&str) -> Option<String> + Send + 'static,
) -> (SocketAddr, Arc<Mutex<Vec<String>>>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = Arc::clone(&log);
    let handle = std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else {
            return;
        };
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        while let Some(req) = read_request(&mut conn) {
            log2.lock().unwrap().push(req.clone());
            if let Some(reply) = answer(&req)
                && conn.write_all(&frame(&reply, framing)).is_err()
            {
                return;
            }
        }
    });
    (addr, log, handle)
}

/// A fake Merlin that stores SET values and answers GETs from them, status 0.
fn storing_merlin(tweak: fn(&str, &str) -> String) -> impl FnMut(&str) -> Option<String> {
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    vars.insert("IMAGEX".into(), "256".into());
    move |req: &str| {
        let f: Vec<&str> = req.split(',').collect();
        Some(match f.as_slice() {
            ["SET", name, value] => {
                vars.insert(name.to_string(), tweak(name, value));
                format!("SET,{name},0")
            }
            ["GET", name] => format!(
                "GET,{name},{},0",
                vars.get(*name).map_or("undef", String::as_str)
            ),
            ["CMD", name] => format!("CMD,{name},0"),
            _ => format!("{},{},2", f[0], f.get(1).unwrap_or(&"")),
        })
    }
}

fn connect(addr: SocketAddr, reply: Duration) -> MerlinControl {
    MerlinControl::connect(addr, Duration::from_secs(2), reply).expect("connects")
}

fn settings() -> MerlinSettings {
    MerlinSettings {
        frames: 1024,
        frames_per_trigger: 32,
        counter_depth: 6,
        exposure_s: 0.0005,
        frame_period_s: 0.001,
        trigger_start: MerlinTrigger::RisingEdgeTtl,
        trigger_stop: MerlinTrigger::Internal,
        continuous_rw: true,
        raw_format: false,
        run_headless: true,
    }
}

/// SET, GET and CMD with status 0; requests go out without LiberTEM's dummy `,0`.
#[test]
fn set_get_cmd_round_trip() {
    let (addr, log, server) = fake(Framing::Merlin, storing_merlin(|_, v| v.to_string()));
    let mut c = connect(addr, Duration::from_secs(2));
    c.set("COUNTERDEPTH", "12").unwrap();
    assert_eq!(c.get("COUNTERDEPTH").unwrap(), "12");
    assert_eq!(c.get("IMAGEX").unwrap(), "256");
    c.cmd(commands::START_ACQUISITION).unwrap();
    drop(c);
    server.join().unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            "SET,COUNTERDEPTH,12",
            "GET,COUNTERDEPTH",
            "GET,IMAGEX",
            "CMD,STARTACQUISITION"
        ]
    );
}

/// A non-zero status is an error naming device, request, code and meaning.
#[test]
fn non_zero_status_names_device_request_and_meaning() {
    let (addr, _log, server) = fake(Framing::Merlin, |req| {
        Some(match req {
            "SET,COUNTERDEPTH,7" => "SET,COUNTERDEPTH,3".to_string(),
            "CMD,STARTACQUISITION" => "CMD,STARTACQUISITION,1".to_string(),
            "GET,NOSUCHVAR" => "GET,NOSUCHVAR,,2".to_string(),
            "SET,COUNTERDEPTH,6" => "SET,COUNTERDEPTH,0".to_string(),
            other => format!("{other},0"),
        })
    });
    let mut c = connect(addr, Duration::from_secs(2));
    let err = c.set("COUNTERDEPTH", "7").unwrap_err();
    assert!(matches!(err, ControlError::Status { code: 3, .. }), "{err}");
    let text = err.to_string();
    for needle in [
        &format!("merlin @ {addr}"),
        "SET,COUNTERDEPTH,7",
        "status 3",
        "parameter out of range",
    ] {
        assert!(text.contains(needle), "`{needle}` missing in: {text}");
    }
    let err = c.cmd(commands::START_ACQUISITION).unwrap_err();
    assert!(err.to_string().contains("status 1 (busy"), "{err}");
    let err = c.get("NOSUCHVAR").unwrap_err();
    assert!(matches!(err, ControlError::Status { code: 2, .. }), "{err}");
    // The connection stays usable after refusals.
    c.set("COUNTERDEPTH", "6").unwrap();
    drop(c);
    server.join().unwrap();
}

/// A server that never answers: the request fails at the reply deadline.
#[test]
fn reply_deadline_when_the_server_never_answers() {
    let (addr, _log, server) = fake(Framing::Merlin, |_| None);
    let mut c = connect(addr, Duration::from_millis(200));
    let t0 = Instant::now();
    let err = c.get("DETECTORSTATUS").unwrap_err();
    let took = t0.elapsed();
    assert!(
        matches!(err, ControlError::Timeout { received: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("GET,DETECTORSTATUS"), "{err}");
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(1),
        "{took:?}"
    );
    drop(c);
    server.join().unwrap();
}

/// The LiberTEM simulator's replies announce one byte less than they carry; a sequence of
/// requests must stay in step (no byte left over for the next reply, no wait).
#[test]
fn libertem_simulator_reply_length_quirk() {
    let (addr, _log, server) = fake(Framing::LiberTemSim, storing_merlin(|_, v| v.to_string()));
    let mut c = connect(addr, Duration::from_millis(500));
    let t0 = Instant::now();
    for depth in ["1", "6", "12", "24"] {
        c.set("COUNTERDEPTH", depth).unwrap();
        assert_eq!(c.get("COUNTERDEPTH").unwrap(), depth);
    }
    assert_eq!(c.get("NEVERSET").unwrap(), "undef");
    c.cmd(commands::SOFT_TRIGGER).unwrap();
    assert!(
        t0.elapsed() < Duration::from_millis(400),
        "no reply waited for its deadline"
    );
    drop(c);
    server.join().unwrap();
}

/// `configure_acquisition` sets every variable, reads each back and returns the values;
/// a lengthened period is reported as read, not an error.
#[test]
fn configure_acquisition_reads_every_setting_back() {
    let (addr, log, server) = fake(
        Framing::Merlin,
        storing_merlin(|name, v| {
            if name == "ACQUISITIONPERIOD" {
                "1.25".to_string()
            } else {
                v.to_string()
            }
        }),
    );
    let mut c = connect(addr, Duration::from_secs(2));
    let read_back = c.configure_acquisition(&settings()).unwrap();
    drop(c);
    server.join().unwrap();
    let expected: BTreeMap<String, String> = [
        ("ACQUISITIONPERIOD", "1.25"),
        ("ACQUISITIONTIME", "0.5"),
        ("CONTINUOUSRW", "1"),
        ("COUNTERDEPTH", "6"),
        ("FILEFORMAT", "0"),
        ("NUMFRAMESPERTRIGGER", "32"),
        ("NUMFRAMESTOACQUIRE", "1024"),
        ("RUNHEADLESS", "1"),
        ("TRIGGERSTART", "1"),
        ("TRIGGERSTOP", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(read_back, expected);
    let log = log.lock().unwrap();
    assert_eq!(log.iter().filter(|r| r.starts_with("SET,")).count(), 10);
    assert_eq!(log.iter().filter(|r| r.starts_with("GET,")).count(), 10);
}

/// A frame count, depth or trigger code that reads back different is an error naming the
/// setting, the requested and the actual value.
#[test]
fn configure_acquisition_rejects_a_changed_counter_depth() {
    let (addr, _log, server) = fake(
        Framing::Merlin,
        storing_merlin(|name, v| {
            if name == "COUNTERDEPTH" {
                "12".to_string()
            } else {
                v.to_string()
            }
        }),
    );
    let mut c = connect(addr, Duration::from_secs(2));
    let err = c.configure_acquisition(&settings()).unwrap_err();
    assert!(
        matches!(&err, ControlError::Mismatch { setting, requested, actual, .. }
            if setting == "COUNTERDEPTH" && requested == "6" && actual == "12"),
        "{err}"
    );
    drop(c);
    server.join().unwrap();
}

/// Invalid settings are refused before anything is sent.
#[test]
fn invalid_settings_are_refused_before_sending() {
    let (addr, log, server) = fake(Framing::Merlin, storing_merlin(|_, v| v.to_string()));
    let mut c = connect(addr, Duration::from_secs(2));
    let mut s = settings();
    s.counter_depth = 8;
    let err = c.configure_acquisition(&s).unwrap_err();
    assert!(err.to_string().contains("supported: 1, 6, 12, 24"), "{err}");
    drop(c);
    server.join().unwrap();
    assert!(log.lock().unwrap().is_empty());
}

/// A peer that closes mid-conversation is reported, not waited for.
#[test]
fn closed_connection_is_reported() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let _ = read_request(&mut conn);
        conn.write_all(b"MPX,0000000010,SET").unwrap();
    });
    let mut c = connect(addr, Duration::from_secs(2));
    let err = c.set("COUNTERDEPTH", "6").unwrap_err();
    assert!(
        matches!(err, ControlError::Closed { received: 18, .. }),
        "{err}"
    );
    server.join().unwrap();
}
