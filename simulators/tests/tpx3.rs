//! The ASI TPX3 simulator (protocols.md §3): what it sends on the data port, parsed with the
//! pure wire headers of `stemflow_drivers::asi::wire` and checked with `CsrRows::push_chunk`;
//! the Serval REST emulation (§3.6) with a minimal HTTP/1.1 client; active measurements
//! (timer and trigger line), stop mid-scan, and every fault as it shows on the wire.
//! Loopback only; every read has a deadline.

use serde_json::{Value, json};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use stemflow_core::csr::{CsrDType, CsrRows};
use stemflow_core::devices::{ScanEngine, ScanSettings, TriggerOutput, trigger_line};
use stemflow_core::{NavShape, SigShape};
use stemflow_drivers::asi::wire::{
    AcquisitionStart, ArrayChunk, HEADER_LEN, Header, ScanStart, WireError,
};
use stemflow_simulators::scan::{ScanEngineSim, ScanFaults};
use stemflow_simulators::specimen::Specimen;
use stemflow_simulators::tpx3::{
    GARBAGE_FIRST, GARBAGE_LEN, Tpx3Faults, Tpx3Sim, Tpx3SimConfig, Tpx3Source,
};

/// Every wait gives up after this long.
const DEADLINE: Duration = Duration::from_secs(10);

fn capture() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/tpx3/synthetic_16x16_512.tpx"
    ))
}

// ---------------------------------------------------------------- wire reading helpers

/// One message off the wire.
#[derive(Debug)]
enum Msg {
    Start(AcquisitionStart),
    Scan(ScanStart, Vec<u8>),
    Chunk(ArrayChunk, Vec<u8>),
    ScanEnd(u32),
    AcqEnd(u32),
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect to the data port");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

fn header_bytes(s: &mut TcpStream) -> std::io::Result<[u8; HEADER_LEN]> {
    let mut h = [0u8; HEADER_LEN];
    s.read_exact(&mut h)?;
    Ok(h)
}

/// Reads one message (header and what follows it). A header that does not parse is an
/// `InvalidData` error carrying the wire error.
fn read_msg(s: &mut TcpStream) -> std::io::Result<Msg> {
    let h = header_bytes(s)?;
    let header = Header::parse(&h).map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))?;
    Ok(match header {
        Header::AcquisitionStart(a) => Msg::Start(a),
        Header::ScanStart(sc) => {
            let mut meta = vec![0u8; sc.metadata_length as usize];
            s.read_exact(&mut meta)?;
            Msg::Scan(sc, meta)
        }
        Header::ArrayChunk(c) => {
            let mut p = vec![0u8; c.payload_len() as usize];
            s.read_exact(&mut p)?;
            Msg::Chunk(c, p)
        }
        Header::ScanEnd(q) => Msg::ScanEnd(q),
        Header::AcquisitionEnd(q) => Msg::AcqEnd(q),
    })
}

/// One acquisition as received.
#[derive(Debug)]
struct Acq {
    start: AcquisitionStart,
    scan: ScanStart,
    metadata: Vec<u8>,
    chunks: Vec<ArrayChunk>,
    rows: CsrRows,
    /// `ScanEnd` came before `AcquisitionEnd`.
    complete: bool,
    end_sequence: u32,
}

/// Adds a chunk's rows to `rows` (checked by `push_chunk`).
fn push(acq_start: &AcquisitionStart, rows: &mut CsrRows, c: &ArrayChunk, payload: &[u8]) {
    let at = rows.n_frames() as u64;
    rows.push_chunk(&acq_start.format(), &c.chunk_ref(0, at), payload)
        .unwrap_or_else(|e| panic!("chunk at frame {at}: {e}"));
}

/// Reads AcquisitionStart … AcquisitionEnd.
fn read_acquisition(s: &mut TcpStream) -> Acq {
    let Msg::Start(start) = read_msg(s).expect("AcquisitionStart") else {
        panic!("an acquisition starts with AcquisitionStart")
    };
    let Msg::Scan(scan, metadata) = read_msg(s).expect("ScanStart") else {
        panic!("then ScanStart")
    };
    let mut rows = CsrRows::default();
    rows.clear(0, start.format().sig_shape);
    let mut chunks = Vec::new();
    let mut complete = false;
    loop {
        match read_msg(s).expect("a message of the scan") {
            Msg::Chunk(c, p) => {
                push(&start, &mut rows, &c, &p);
                chunks.push(c);
            }
            Msg::ScanEnd(q) => {
                assert_eq!(q, scan.sequence, "ScanEnd matches ScanStart");
                complete = true;
            }
            Msg::AcqEnd(q) => {
                return Acq {
                    start,
                    scan,
                    metadata,
                    chunks,
                    rows,
                    complete,
                    end_sequence: q,
                };
            }
            other => panic!("unexpected {other:?} inside an acquisition"),
        }
    }
}

/// The shared capture parsed directly from the file (independently of the simulator).
fn file_rows() -> (AcquisitionStart, CsrRows, Vec<u8>) {
    let d = std::fs::read(capture()).expect("shared capture");
    let mut pos = 0;
    let mut hdr = || {
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&d[pos..pos + HEADER_LEN]);
        pos += HEADER_LEN;
        Header::parse(&h).unwrap()
    };
    let Header::AcquisitionStart(a) = hdr() else {
        panic!("file starts with AcquisitionStart")
    };
    let Header::ScanStart(_) = hdr() else {
        panic!("then ScanStart")
    };
    let mut rows = CsrRows::default();
    rows.clear(0, a.format().sig_shape);
    loop {
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&d[pos..pos + HEADER_LEN]);
        pos += HEADER_LEN;
        match Header::parse(&h).unwrap() {
            Header::ArrayChunk(c) => {
                let n = c.payload_len() as usize;
                push(&a, &mut rows, &c, &d[pos..pos + n]);
                pos += n;
            }
            Header::ScanEnd(_) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    (a, rows, d)
}

fn same_rows(a: &CsrRows, b: &CsrRows) {
    assert_eq!(a.n_frames(), b.n_frames(), "frame count");
    assert_eq!(a.indptr, b.indptr, "row pointers");
    assert_eq!(a.indices, b.indices, "indices");
    assert_eq!(a.values, b.values, "values");
}

/// Nothing arrives within `wait` and the connection is still open.
fn silent(s: &mut TcpStream, wait: Duration) {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        Ok(0) => panic!("the connection was closed"),
        Ok(_) => panic!("unexpected data"),
        Err(e) => panic!("read failed: {e}"),
    }
    s.set_read_timeout(Some(DEADLINE)).unwrap();
}

/// The peer closes: EOF (or a reset) within the deadline.
fn closed(s: &mut TcpStream) {
    let mut b = [0u8; 4096];
    let t = Instant::now();
    loop {
        match s.read(&mut b) {
            Ok(0) => return,
            Ok(_) => assert!(t.elapsed() < DEADLINE, "still sending"),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
            Err(e) => panic!("expected the connection to close, got {e}"),
        }
    }
}

// ---------------------------------------------------------------- REST helpers

/// One HTTP/1.1 request; returns the status code and the body.
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect to the REST port");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send the request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("header end");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (code, body.to_string())
}

fn get(addr: SocketAddr, path: &str) -> Value {
    let (code, body) = http(addr, "GET", path, None);
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

fn put(addr: SocketAddr, path: &str, v: &Value) -> (u16, String) {
    http(addr, "PUT", path, Some(&v.to_string()))
}

/// PUTs the detector config with `changes` applied; panics unless 200.
fn configure(addr: SocketAddr, changes: Value) {
    let mut cfg = get(addr, "/detector/config");
    for (k, v) in changes.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    let (code, body) = put(addr, "/detector/config", &cfg);
    assert_eq!(code, 200, "PUT /detector/config: {body}");
}

fn status(addr: SocketAddr) -> Value {
    get(addr, "/measurement")["Info"].clone()
}

fn wait_status(addr: SocketAddr, want: &str) -> Value {
    let t = Instant::now();
    loop {
        let s = status(addr);
        if s["Status"] == want {
            return s;
        }
        assert!(t.elapsed() < DEADLINE, "status {s} never became {want}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------- simulators

fn start(cfg: Tpx3SimConfig) -> Tpx3Sim {
    Tpx3Sim::start(cfg).expect("simulator starts")
}

fn recording(rows_per_chunk: usize) -> Tpx3SimConfig {
    let mut c = Tpx3SimConfig::new(Tpx3Source::Recording(capture()));
    c.rows_per_chunk = rows_per_chunk;
    c
}

fn active(rows_per_chunk: usize) -> Tpx3SimConfig {
    Tpx3SimConfig {
        free_running: false,
        ..recording(rows_per_chunk)
    }
}

fn faulty(faults: Tpx3Faults) -> Tpx3Sim {
    start(Tpx3SimConfig {
        faults,
        ..recording(4)
    })
}

// ================================================================ sources

#[test]
fn recording_is_resent_byte_for_byte_in_its_own_chunking() {
    let (_, want, file) = file_rows();
    let sim = start(recording(4));
    let mut s = connect(sim.data_addr());
    let mut got = vec![0u8; file.len()];
    s.read_exact(&mut got).expect("as many bytes as the file");
    assert!(
        got == file,
        "same 4-frame chunks, u32, no padding: identical bytes"
    );
    silent(&mut s, Duration::from_millis(100));
    assert_eq!(
        sim.shapes(),
        [(NavShape::new(16, 16), SigShape::new(512, 512))]
    );
    let st = sim.stats();
    assert_eq!(
        (st.acquisitions_completed, st.chunks_sent, st.frames_sent),
        (1, 64, 256)
    );
    assert_eq!(st.events_sent, want.nnz() as u64);
    assert_eq!(st.bytes_sent, file.len() as u64);
}

#[test]
fn recording_frames_survive_rechunking_padding_and_dtypes() {
    let (_, want, _) = file_rows();
    let total: u64 = want.values.iter().map(|&v| u64::from(v)).sum();
    assert_eq!(total, 104_619, "the value sum shared/data/README.md states");
    let cfg = Tpx3SimConfig {
        pad_bytes: 3,
        value_dtype: CsrDType::U8,
        indptr_dtype: CsrDType::U64,
        ..recording(7)
    };
    let sim = start(cfg);
    let mut s = connect(sim.data_addr());
    let a = read_acquisition(&mut s);
    assert_eq!(a.start.nav_shape, (16, 16));
    assert_eq!(a.start.sig_shape, (512, 512));
    assert_eq!((a.start.version, a.start.sequence), (7, 1));
    assert_eq!(a.start.indptr, CsrDType::U64);
    assert_eq!((a.scan.sequence, a.scan.metadata_length), (1, 0));
    assert!(a.complete && a.end_sequence == 1);
    assert_eq!(a.chunks.len(), 256usize.div_ceil(7));
    assert!(a.chunks.iter().all(|c| c.values == CsrDType::U8));
    let c = a.chunks[0];
    assert_eq!(
        c.indices_offset,
        8 * 8 + 3,
        "indptr of 7 + 1 u64 and 3 bytes of padding"
    );
    same_rows(&a.rows, &want);
}

#[test]
fn indices_that_do_not_fit_their_dtype_are_refused_at_start() {
    let cfg = Tpx3SimConfig {
        indices_dtype: CsrDType::U16,
        ..recording(4)
    };
    let e = Tpx3Sim::start(cfg).unwrap_err().to_string();
    assert!(e.contains("indices dtype u16"), "{e}");
    let bad = Tpx3SimConfig::new(Tpx3Source::Recording(PathBuf::from("/nonexistent.tpx")));
    assert!(
        Tpx3Sim::start(bad)
            .unwrap_err()
            .to_string()
            .contains("cannot read")
    );
}

#[test]
fn synthetic_events_show_the_bf_disk_and_the_particles() {
    let nav = NavShape::new(32, 32);
    let sig = SigShape::new(512, 512);
    let specimen = Specimen::builder().particles(10).seed(4).build();
    let mean = 410.0;
    let t = Instant::now();
    let sim = start(Tpx3SimConfig::new(Tpx3Source::Synthetic {
        specimen: specimen.clone(),
        nav_shape: nav,
        sig_shape: sig,
        mean_events: mean,
        seed: 7,
    }));
    let startup = t.elapsed();
    let mut s = connect(sim.data_addr());
    let a = read_acquisition(&mut s);
    assert_eq!(a.start.nav_shape, (32, 32));
    assert_eq!(a.chunks.len(), 32, "32 rows per chunk by default");
    let rows = &a.rows;
    assert_eq!(rows.n_frames(), nav.len());

    let r_bf = specimen.params().bf_radius_px;
    let (mut total, mut ones, mut entries) = (0u64, 0u64, 0u64);
    let mut bf_img = Vec::new();
    let mut adf_img = Vec::new();
    let mut com = (0.0, 0.0, 0.0);
    for f in 0..rows.n_frames() {
        let (idx, val) = rows.row(f);
        assert!(
            idx.windows(2).all(|w| w[0] < w[1]),
            "frame {f}: sorted, unique"
        );
        let (mut bf, mut adf) = (0u64, 0u64);
        for (&i, &v) in idx.iter().zip(val) {
            let (y, x) = ((i / 512) as f64 + 0.5, (i % 512) as f64 + 0.5);
            let r = ((y - 256.0).powi(2) + (x - 256.0).powi(2)).sqrt();
            if r < r_bf + 4.0 {
                bf += u64::from(v);
            } else if r > 1.2 * r_bf {
                adf += u64::from(v);
            }
            com.0 += y * f64::from(v);
            com.1 += x * f64::from(v);
            com.2 += f64::from(v);
            ones += u64::from(v == 1);
        }
        entries += idx.len() as u64;
        total += val.iter().map(|&v| u64::from(v)).sum::<u64>();
        bf_img.push(bf as f64);
        adf_img.push(adf as f64);
    }
    let per_frame = total as f64 / nav.len() as f64;
    assert!(
        (per_frame - mean).abs() < 0.03 * mean,
        "mean events per frame {per_frame}, configured {mean}"
    );
    assert!(ones as f64 > 0.9 * entries as f64, "counts are mostly 1");
    let (cy, cx) = (com.0 / com.2, com.1 / com.2);
    assert!(
        (cy - 256.0).abs() < 8.0 && (cx - 256.0).abs() < 8.0,
        "the BF disk sits at the centre: centre of mass ({cy}, {cx})"
    );
    // The ADF image follows the specimen's ground truth and is far from flat.
    let truth = specimen.adf_truth(nav);
    let corr = correlation(&adf_img, &truth);
    assert!(corr > 0.9, "ADF image vs ground truth: correlation {corr}");
    let (lo, hi) = min_max(&adf_img);
    assert!(
        hi > 4.0 * lo.max(1.0),
        "ADF image range {lo}..{hi} shows particles"
    );
    assert!(
        correlation(&bf_img, &truth) < -0.9,
        "BF dims where ADF rises"
    );
    eprintln!("32x32 of 512x512 at {mean} events: start {startup:?}");
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        })
}

fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    sab / (saa * sbb).sqrt()
}

#[test]
fn a_128_by_128_scan_of_512_by_512_starts_quickly() {
    let t = Instant::now();
    let sim = start(Tpx3SimConfig::new(Tpx3Source::synthetic(
        NavShape::new(128, 128),
        SigShape::new(512, 512),
    )));
    let dt = t.elapsed();
    eprintln!("128x128 scan of 512x512, 410 events per frame: generated and encoded in {dt:?}");
    // Release builds take a fraction of a second on 2 cores; the bound leaves room for
    // unoptimised test builds on a busy machine.
    assert!(dt < Duration::from_secs(30), "{dt:?}");
    let mut s = connect(sim.data_addr());
    let h = Header::parse(&header_bytes(&mut s).unwrap()).unwrap();
    assert!(matches!(h, Header::AcquisitionStart(a) if a.nav_shape == (128, 128)));
}

// ================================================================ passive mode

#[test]
fn passive_repeats_count_sequences_up_and_keep_the_connection_open() {
    let cfg = Tpx3SimConfig {
        repeats: 2,
        first_sequence: 5,
        scan_metadata: Some(r#"{"sim": true}"#.into()),
        ..recording(32)
    };
    let sim = start(cfg);
    let (_, want, _) = file_rows();
    let mut s = connect(sim.data_addr());
    for seq in [5, 6] {
        let a = read_acquisition(&mut s);
        assert_eq!(
            (a.start.sequence, a.scan.sequence, a.end_sequence),
            (seq, seq, seq)
        );
        assert_eq!(a.metadata, br#"{"sim": true}"#);
        assert!(a.complete);
        same_rows(&a.rows, &want);
    }
    silent(&mut s, Duration::from_millis(150));
    // Another client gets its own acquisitions, from the first sequence again.
    let mut s2 = connect(sim.data_addr());
    assert_eq!(read_acquisition(&mut s2).start.sequence, 5);
    assert_eq!(sim.stats().connections, 2);
}

#[test]
fn passive_close_when_done_closes_after_the_last_acquisition() {
    let sim = start(Tpx3SimConfig {
        close_when_done: true,
        ..recording(64)
    });
    let mut s = connect(sim.data_addr());
    let a = read_acquisition(&mut s);
    assert_eq!(a.chunks.len(), 4);
    closed(&mut s);
}

#[test]
fn passive_pacing_spaces_the_chunks() {
    let sim = start(Tpx3SimConfig {
        frame_time_s: 0.002,
        ..recording(32)
    });
    let t = Instant::now();
    let mut s = connect(sim.data_addr());
    let a = read_acquisition(&mut s);
    let dt = t.elapsed();
    assert_eq!(a.rows.n_frames(), 256);
    // 256 frames × 2 ms: the last chunk is due after 0.512 s.
    assert!(dt >= Duration::from_millis(500), "took {dt:?}");
    assert!(dt < Duration::from_secs(5), "took {dt:?}");
}

#[test]
fn passive_clients_are_served_concurrently() {
    let sim = start(recording(16));
    let (_, want, _) = file_rows();
    let addr = sim.data_addr();
    let handles: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = connect(addr);
                read_acquisition(&mut s).rows
            })
        })
        .collect();
    for h in handles {
        same_rows(&h.join().unwrap(), &want);
    }
}

// ================================================================ REST

#[test]
fn rest_describes_the_detector() {
    let sim = start(active(32));
    let a = sim.api_addr();
    let d = get(a, "/dashboard");
    assert_eq!(d["Detector"]["DetectorType"], "Tpx3");
    assert!(d["Server"]["SoftwareVersion"].is_string());
    let info = get(a, "/detector/info");
    assert_eq!(info["MpxType"], 6);
    assert_eq!(info["PixCount"], 512 * 512);
    assert_eq!(
        (
            &info["NumberOfChips"],
            &info["RowLen"],
            &info["NumberOfRows"]
        ),
        (&json!(4), &json!(2), &json!(512))
    );
    let layout = get(a, "/detector/layout");
    assert_eq!(layout["Original"]["Width"], 512);
    assert_eq!(layout["Original"]["Chips"].as_array().unwrap().len(), 4);
    assert_eq!(get(a, "/detector/info/"), info, "trailing slash accepted");
    let whole = get(a, "/detector");
    assert_eq!(whole["Info"], info);
    assert_eq!(http(a, "GET", "/nothing/here", None).0, 404);
    assert_eq!(http(a, "DELETE", "/detector/config", None).0, 405);
}

#[test]
fn detector_config_round_trips_and_refuses_bad_values() {
    let sim = start(active(32));
    let a = sim.api_addr();
    let mut cfg = get(a, "/detector/config");
    assert_eq!(cfg["nTriggers"], 256, "the source's frame count");
    for k in [
        "BiasVoltage",
        "BiasEnabled",
        "ExposureTime",
        "TriggerPeriod",
        "TriggerMode",
        "TriggerIn",
        "TriggerOut",
        "TriggerDelay",
        "Polarity",
    ] {
        assert!(cfg.get(k).is_some(), "{k} in {cfg}");
    }
    cfg["TriggerMode"] = json!("PEXSTART_NEXSTOP");
    cfg["ExposureTime"] = json!(0.0005);
    cfg["TriggerPeriod"] = json!(0.001);
    cfg["BiasVoltage"] = json!(120.0);
    cfg["BiasEnabled"] = json!(true);
    cfg["Polarity"] = json!("Negative");
    let (code, body) = put(a, "/detector/config", &cfg);
    assert_eq!(code, 200, "{body}");
    assert_eq!(get(a, "/detector/config"), cfg);

    let refused = |change: Value, says: &str| {
        let mut c = cfg.clone();
        for (k, v) in change.as_object().unwrap() {
            c[k] = v.clone();
        }
        let (code, body) = put(a, "/detector/config", &c);
        assert_eq!(code, 400, "{change}: {body}");
        assert!(body.contains(says), "{change}: {body} should say {says}");
    };
    refused(
        json!({"TriggerMode": "WHENEVER"}),
        "TriggerMode \"WHENEVER\" is unknown",
    );
    refused(
        json!({"ExposureTime": 0}),
        "ExposureTime must be a number > 0",
    );
    refused(json!({"ExposureTime": -1.0}), "ExposureTime");
    refused(
        json!({"ExposureTime": 0.002, "TriggerPeriod": 0.001}),
        "TriggerPeriod 0.001 s is shorter than ExposureTime 0.002 s",
    );
    refused(
        json!({"nTriggers": 0}),
        "nTriggers must be an integer from 1",
    );
    refused(
        json!({"BiasEnabled": "yes"}),
        "BiasEnabled must be true or false",
    );
    refused(
        json!({"Polarity": "Up"}),
        "Polarity must be one of Positive, Negative",
    );
    refused(
        json!({"Nonsense": 1}),
        "unknown detector config field `Nonsense`",
    );
    let (code, body) = http(a, "PUT", "/detector/config", Some("{not json"));
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        get(a, "/detector/config"),
        cfg,
        "nothing changed by refused PUTs"
    );
}

#[test]
fn destination_and_measurement_config_round_trip() {
    let sim = start(active(32));
    let a = sim.api_addr();
    let (code, body) = http(a, "GET", "/server/destination", None);
    assert_eq!((code, body.as_str()), (404, "Destination is not set"));
    let dest = json!({
        "Image": [{"Base": "tcp://listen@127.0.0.1:8283", "Format": "pgm", "Mode": "count"}],
        "Raw": [{"Base": "file:/tmp/raw"}],
    });
    assert_eq!(put(a, "/server/destination", &dest).0, 200);
    assert_eq!(get(a, "/server/destination"), dest);
    let (code, body) = put(
        a,
        "/server/destination",
        &json!({"Image": [{"Base": "ftp://x", "Format": "pgm"}]}),
    );
    assert_eq!(code, 400);
    assert!(
        body.contains("Image[0].Base `ftp://x` must start with"),
        "{body}"
    );

    let mc = get(a, "/measurement/config");
    assert_eq!(mc["Stem"]["Scan"]["Width"], 16);
    let new = json!({"Stem": {"Scan": {"Width": 16, "Height": 16, "DwellTime": 2e-4},
                              "VirtualDetector": {"RadiusInner": 10, "RadiusOuter": 60}}});
    assert_eq!(put(a, "/measurement/config", &new).0, 200);
    assert_eq!(get(a, "/measurement/config"), new);
    let (code, body) = put(
        a,
        "/measurement/config",
        &json!({"Stem": {"Scan": {"Width": 0}}}),
    );
    assert_eq!(code, 400);
    assert!(
        body.contains("Stem.Scan.Width must be an integer from 1"),
        "{body}"
    );
    assert_eq!(status(a)["Status"], "DA_IDLE");
}

// ================================================================ active mode

#[test]
fn active_start_checks_ntriggers_and_sends_one_acquisition_per_start() {
    let sim = start(active(32));
    let a = sim.api_addr();
    let (_, want, _) = file_rows();
    let mut s = connect(sim.data_addr());
    silent(&mut s, Duration::from_millis(100));

    configure(a, json!({"nTriggers": 100}));
    let (code, body) = http(a, "GET", "/measurement/start", None);
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("nTriggers 100") && body.contains("256 frames"),
        "{body}"
    );
    silent(&mut s, Duration::from_millis(50));

    configure(
        a,
        json!({"nTriggers": 256, "TriggerMode": "SOFTWARESTART_TIMERSTOP",
               "ExposureTime": 0.0002, "TriggerPeriod": 0.0005}),
    );
    let t = Instant::now();
    let (code, body) = http(a, "GET", "/measurement/start", None);
    assert_eq!(code, 200, "{body}");
    let acq = read_acquisition(&mut s);
    let dt = t.elapsed();
    assert!(acq.complete);
    assert_eq!(acq.start.sequence, 1);
    same_rows(&acq.rows, &want);
    assert!(
        dt >= Duration::from_millis(120),
        "256 frames × 0.5 ms paced: {dt:?}"
    );
    let st = wait_status(a, "DA_IDLE");
    assert_eq!(st["FrameCount"], 256);
    assert!(st["StartDateTime"].as_i64().unwrap() > 1_600_000_000_000);
    assert!(st["PixelEventRate"].as_u64().unwrap() > 0);

    // PUT and POST start too; the next acquisition counts up; period 0 = as fast as possible.
    configure(a, json!({"TriggerPeriod": 0}));
    let (code, _) = http(a, "POST", "/measurement/start", None);
    assert_eq!(code, 200);
    let acq = read_acquisition(&mut s);
    assert_eq!((acq.start.sequence, acq.rows.n_frames()), (2, 256));
    wait_status(a, "DA_IDLE");
    assert_eq!(sim.stats().acquisitions_completed, 2);
}

#[test]
fn active_stop_mid_scan_ends_the_acquisition_inside_the_scan() {
    let sim = start(active(4));
    let a = sim.api_addr();
    let (_, want, _) = file_rows();
    let mut s = connect(sim.data_addr());
    configure(
        a,
        json!({"TriggerMode": "AUTOTRIGSTART_TIMERSTOP", "ExposureTime": 0.001,
               "TriggerPeriod": 0.005}),
    );
    assert_eq!(http(a, "GET", "/measurement/start", None).0, 200);
    let Msg::Start(start) = read_msg(&mut s).unwrap() else {
        panic!("AcquisitionStart")
    };
    assert!(matches!(read_msg(&mut s).unwrap(), Msg::Scan(..)));
    let mut rows = CsrRows::default();
    rows.clear(0, start.format().sig_shape);
    for _ in 0..2 {
        let Msg::Chunk(c, p) = read_msg(&mut s).unwrap() else {
            panic!("chunks")
        };
        push(&start, &mut rows, &c, &p);
    }
    assert_eq!(status(a)["Status"], "DA_RECORDING");
    assert!(status(a)["TimeLeft"].as_f64().unwrap() > 0.5);
    assert_eq!(http(a, "GET", "/measurement/stop", None).0, 200);
    assert_eq!(status(a)["Status"], "DA_STOPPED");
    let mut chunks_after = 0;
    loop {
        match read_msg(&mut s).unwrap() {
            Msg::Chunk(c, p) => {
                push(&start, &mut rows, &c, &p);
                chunks_after += 1;
            }
            Msg::AcqEnd(q) => {
                assert_eq!(q, start.sequence);
                break;
            }
            other => panic!("expected chunks and AcquisitionEnd, got {other:?}"),
        }
    }
    let n = rows.n_frames();
    assert!((8..256).contains(&n), "{n} frames before the stop");
    assert!(
        chunks_after < 62,
        "the stop came mid-scan: {chunks_after} chunks after it"
    );
    for f in 0..n {
        assert_eq!(rows.row(f), want.row(f), "frame {f}");
    }
    let st = status(a);
    assert_eq!(st["FrameCount"], n as u64);
    assert_eq!(sim.stats().acquisitions_cancelled, 1);
    silent(&mut s, Duration::from_millis(50));
    // Stopping again is harmless; a new start works.
    assert_eq!(http(a, "GET", "/measurement/stop", None).0, 200);
    configure(a, json!({"TriggerPeriod": 0}));
    assert_eq!(http(a, "PUT", "/measurement/start", None).0, 200);
    let acq = read_acquisition(&mut s);
    assert!(acq.complete && acq.start.sequence == 2);
}

#[test]
fn active_external_trigger_releases_one_frame_per_edge() {
    let (mut tx, rx) = trigger_line();
    let sim = start(Tpx3SimConfig {
        trigger_input: Some(rx),
        ..active(4)
    });
    let a = sim.api_addr();
    let mut s = connect(sim.data_addr());
    configure(
        a,
        json!({"TriggerMode": "PEXSTART_NEXSTOP", "ExposureTime": 0.0001, "TriggerPeriod": 0.0001}),
    );
    tx.fire(); // before the start: ignored
    let t = Instant::now();
    while sim.stats().triggers_seen < 1 {
        assert!(t.elapsed() < DEADLINE);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(sim.stats().triggers_ignored, 1);
    assert_eq!(http(a, "GET", "/measurement/start", None).0, 200);
    let Msg::Start(start) = read_msg(&mut s).unwrap() else {
        panic!("AcquisitionStart")
    };
    assert!(matches!(read_msg(&mut s).unwrap(), Msg::Scan(..)));
    silent(&mut s, Duration::from_millis(80));
    for _ in 0..10 {
        tx.fire();
    }
    let mut frames = 0;
    for _ in 0..2 {
        let Msg::Chunk(c, _) = read_msg(&mut s).unwrap() else {
            panic!("a chunk")
        };
        frames += c.frames;
    }
    assert_eq!(frames, 8, "two whole chunks of 4 after 10 edges");
    silent(&mut s, Duration::from_millis(80));
    for _ in 0..246 {
        tx.fire();
    }
    let mut rows = CsrRows::default();
    rows.clear(8, start.format().sig_shape);
    loop {
        match read_msg(&mut s).unwrap() {
            Msg::Chunk(c, p) => push(&start, &mut rows, &c, &p),
            Msg::ScanEnd(_) => {}
            Msg::AcqEnd(_) => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(rows.n_frames(), 248);
    wait_status(a, "DA_IDLE");
    for _ in 0..3 {
        tx.fire();
    }
    let t = Instant::now();
    while sim.stats().triggers_seen < 260 {
        assert!(t.elapsed() < DEADLINE);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        sim.stats().triggers_ignored,
        4,
        "edges outside a measurement"
    );
}

#[test]
fn a_scan_engine_drives_an_active_measurement() {
    let (tx, rx) = trigger_line();
    let sim = start(Tpx3SimConfig {
        trigger_input: Some(rx),
        ..active(16)
    });
    let a = sim.api_addr();
    let mut s = connect(sim.data_addr());
    configure(
        a,
        json!({"TriggerMode": "PEXSTART_TIMERSTOP", "ExposureTime": 0.0001, "TriggerPeriod": 0.0002}),
    );
    assert_eq!(http(a, "GET", "/measurement/start", None).0, 200);
    let mut scan = ScanEngineSim::new(tx, ScanFaults::default());
    scan.configure(&ScanSettings {
        nav_shape: NavShape::new(16, 16),
        dwell_time_s: 2e-4,
        flyback_s: 0.0,
        trigger: TriggerOutput::Pixel,
        region_origin: None,
    })
    .expect("configure the scan");
    scan.start().expect("start the scan");
    let acq = read_acquisition(&mut s);
    assert!(acq.complete);
    assert_eq!(acq.rows.n_frames(), 256);
    scan.stop().expect("stop the scan");
}

#[test]
fn free_running_refuses_measurement_commands() {
    let sim = start(recording(32));
    let (code, body) = http(sim.api_addr(), "GET", "/measurement/start", None);
    assert_eq!(code, 409);
    assert!(body.contains("free-running"), "{body}");
}

// ================================================================ faults

/// Reads the acquisition's headers and the first `n` chunks.
fn skip_chunks(s: &mut TcpStream, n: usize) -> AcquisitionStart {
    let Msg::Start(start) = read_msg(s).unwrap() else {
        panic!("AcquisitionStart")
    };
    assert!(matches!(read_msg(s).unwrap(), Msg::Scan(..)));
    for i in 0..n {
        assert!(matches!(read_msg(s).unwrap(), Msg::Chunk(..)), "chunk {i}");
    }
    start
}

#[test]
fn fault_close_after_chunks() {
    let sim = faulty(Tpx3Faults {
        close_after_chunks: Some(2),
        ..Default::default()
    });
    let mut s = connect(sim.data_addr());
    skip_chunks(&mut s, 2);
    closed(&mut s);
    assert_eq!(sim.stats().faults_injected, 1);
}

#[test]
fn fault_garbage_instead_of_a_header() {
    let sim = faulty(Tpx3Faults {
        garbage_after_chunks: Some(1),
        ..Default::default()
    });
    let mut s = connect(sim.data_addr());
    skip_chunks(&mut s, 1);
    let mut g = vec![0u8; GARBAGE_LEN];
    s.read_exact(&mut g).unwrap();
    assert_eq!(g[0], GARBAGE_FIRST);
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(&g[..HEADER_LEN]);
    assert!(matches!(
        Header::parse(&h),
        Err(WireError::Tag { tag, .. }) if tag == GARBAGE_FIRST
    ));
    // The acquisition goes on after the garbage: chunk 1 follows.
    assert!(matches!(read_msg(&mut s).unwrap(), Msg::Chunk(..)));
}

#[test]
fn fault_stall_keeps_the_socket_open() {
    let sim = faulty(Tpx3Faults {
        stall_after_chunks: Some(3),
        ..Default::default()
    });
    let mut s = connect(sim.data_addr());
    skip_chunks(&mut s, 3);
    silent(&mut s, Duration::from_millis(200));
}

#[test]
fn fault_corrupt_indptr_breaks_one_chunk_only() {
    let sim = faulty(Tpx3Faults {
        corrupt_indptr_at: Some(1),
        ..Default::default()
    });
    let mut s = connect(sim.data_addr());
    let start = skip_chunks(&mut s, 1);
    let Msg::Chunk(c, p) = read_msg(&mut s).unwrap() else {
        panic!("chunk 1")
    };
    let mut rows = CsrRows::default();
    rows.clear(0, start.format().sig_shape);
    let e = rows
        .push_chunk(&start.format(), &c.chunk_ref(0, 4), &p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("row pointer 4 is"), "{e}");
    let mut good = 0;
    loop {
        match read_msg(&mut s).unwrap() {
            Msg::Chunk(c, p) => {
                push(&start, &mut rows, &c, &p);
                good += 1;
            }
            Msg::ScanEnd(_) => {}
            Msg::AcqEnd(_) => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(good, 62, "the other chunks are intact");
}

#[test]
fn fault_truncated_chunk_then_close() {
    let sim = faulty(Tpx3Faults {
        truncate_chunk_at: Some(2),
        ..Default::default()
    });
    let mut s = connect(sim.data_addr());
    skip_chunks(&mut s, 2);
    let Header::ArrayChunk(c) = Header::parse(&header_bytes(&mut s).unwrap()).unwrap() else {
        panic!("chunk 2's header")
    };
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert_eq!(
        rest.len() as u64,
        c.payload_len() / 2,
        "half the payload, then EOF"
    );
}

#[test]
fn fault_cancel_sends_acquisition_end_inside_the_scan() {
    let sim = start(Tpx3SimConfig {
        repeats: 2,
        faults: Tpx3Faults {
            cancel_after_chunks: Some(5),
            ..Default::default()
        },
        ..recording(4)
    });
    let mut s = connect(sim.data_addr());
    for seq in [1, 2] {
        let a = read_acquisition(&mut s);
        assert!(!a.complete, "no ScanEnd");
        assert_eq!(
            (a.start.sequence, a.end_sequence, a.rows.n_frames()),
            (seq, seq, 20)
        );
    }
    assert_eq!(sim.stats().acquisitions_cancelled, 2);
}

#[test]
fn fault_mid_stream_start() {
    let sim = faulty(Tpx3Faults {
        mid_stream_start: Some(3),
        ..Default::default()
    });
    let (_, want, _) = file_rows();
    let mut s = connect(sim.data_addr());
    let Header::ArrayChunk(c) = Header::parse(&header_bytes(&mut s).unwrap()).unwrap() else {
        panic!("the first bytes are a chunk header")
    };
    let mut p = vec![0u8; c.payload_len() as usize];
    s.read_exact(&mut p).unwrap();
    // It is chunk 3 (frames 12..16), readable with the format the receiver never got.
    let (fmt_start, _, _) = file_rows();
    let mut rows = CsrRows::default();
    rows.clear(12, fmt_start.format().sig_shape);
    push(&fmt_start, &mut rows, &c, &p);
    for f in 0..4 {
        assert_eq!(rows.row(f), want.row(12 + f));
    }
    // A second connection is fresh again.
    let mut s2 = connect(sim.data_addr());
    assert!(matches!(
        Header::parse(&header_bytes(&mut s2).unwrap()).unwrap(),
        Header::ArrayChunk(_)
    ));
}

#[test]
fn fault_huge_chunk_header_then_silence() {
    let sim = faulty(Tpx3Faults {
        huge_chunk_after: Some(1),
        ..Default::default()
    });
    let mut s = connect(sim.data_addr());
    skip_chunks(&mut s, 1);
    let Header::ArrayChunk(c) = Header::parse(&header_bytes(&mut s).unwrap()).unwrap() else {
        panic!("a chunk header")
    };
    assert_eq!(c.nnz, 0xFFFF_FFFF);
    assert!(
        c.payload_len() > 16 << 30,
        "announces {} bytes",
        c.payload_len()
    );
    silent(&mut s, Duration::from_millis(150));
}

#[test]
fn fault_in_an_active_measurement() {
    let sim = start(Tpx3SimConfig {
        faults: Tpx3Faults {
            cancel_after_chunks: Some(3),
            ..Default::default()
        },
        ..active(8)
    });
    let a = sim.api_addr();
    let mut s = connect(sim.data_addr());
    configure(a, json!({"TriggerPeriod": 0}));
    assert_eq!(http(a, "GET", "/measurement/start", None).0, 200);
    let acq = read_acquisition(&mut s);
    assert!(!acq.complete);
    assert_eq!(acq.rows.n_frames(), 24);
    wait_status(a, "DA_STOPPED");
}

#[test]
fn stop_and_drop_end_quickly_with_clients_attached() {
    let sim = faulty(Tpx3Faults {
        stall_after_chunks: Some(1),
        ..Default::default()
    });
    let _idle = connect(sim.data_addr());
    let _other = connect(sim.data_addr());
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    sim.stop();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[test]
fn active_frames_without_a_client_are_discarded_and_reported() {
    let sim = start(active(32));
    let a = sim.api_addr();
    configure(a, json!({"TriggerPeriod": 0}));
    assert_eq!(http(a, "GET", "/measurement/start", None).0, 200);
    let st = wait_status(a, "DA_IDLE");
    assert_eq!(
        (&st["FrameCount"], &st["DroppedFrames"]),
        (&json!(256), &json!(256))
    );
    let stats = sim.stats();
    assert_eq!((stats.frames_discarded, stats.frames_sent), (256, 0));
    // A start while recording is refused, and so is a config change.
    configure(a, json!({"TriggerMode": "PEXSTART_NEXSTOP"}));
    assert_eq!(http(a, "GET", "/measurement/start", None).0, 200);
    let (code, body) = http(a, "GET", "/measurement/start", None);
    assert_eq!(code, 409, "{body}");
    let (code, _) = put(a, "/detector/config", &get(a, "/detector/config"));
    assert_eq!(code, 409, "no config change while recording");
    assert_eq!(http(a, "GET", "/measurement/stop", None).0, 200);
    assert_eq!(sim.measurement_status(), "DA_STOPPED");
}
