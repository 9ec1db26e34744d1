//! Test-local Merlin wire helpers: just enough to read raw bytes off the sockets, written
//! from protocols.md §1 independently of the simulator's encoder.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use stemflow_core::{NavShape, SigShape};
use stemflow_simulators::merlin::{MerlinSim, MerlinSimConfig, MerlinSource, Pacing};
use stemflow_simulators::specimen::Specimen;

/// Every socket read in the tests gives up after this long.
pub const DEADLINE: Duration = Duration::from_secs(5);

pub fn data_file(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/merlin/Merlin_Single_Quad/"
    ))
    .join(name)
}

pub fn specimen() -> Specimen {
    Specimen::builder()
        .disk_radius_px(8.0)
        .dose(3000.0)
        .seed(3)
        .build()
}

/// A synthetic simulator: `nav` scan of 64 × 64 frames.
pub fn synthetic(nav: NavShape, pacing: Pacing) -> MerlinSimConfig {
    let mut c = MerlinSimConfig::new(MerlinSource::Synthetic {
        specimen: specimen(),
        nav_shape: nav,
        sig_shape: SigShape::new(64, 64),
        seed: 11,
    });
    c.pacing = pacing;
    c
}

pub fn start(cfg: MerlinSimConfig) -> MerlinSim {
    MerlinSim::start(cfg).expect("simulator starts")
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

/// `MPX,<10 digits>,<payload>` with the length counting the comma.
pub fn frame(payload: &str) -> Vec<u8> {
    format!("MPX,{:010},{payload}", payload.len() + 1).into_bytes()
}

/// Reads one MPX message: (length field, payload).
pub fn read_mpx(s: &mut TcpStream) -> std::io::Result<(usize, Vec<u8>)> {
    let mut prefix = [0u8; 15];
    s.read_exact(&mut prefix)?;
    assert_eq!(
        &prefix[..4],
        b"MPX,",
        "magic, got {:?}",
        String::from_utf8_lossy(&prefix)
    );
    assert_eq!(prefix[14], b',');
    let len: usize = std::str::from_utf8(&prefix[4..14])
        .unwrap()
        .parse()
        .unwrap();
    let mut payload = vec![0u8; len - 1];
    s.read_exact(&mut payload)?;
    Ok((len, payload))
}

/// Sends one request and returns the raw response bytes (prefix included).
pub fn raw_request(s: &mut TcpStream, payload: &str) -> Vec<u8> {
    s.write_all(&frame(payload)).unwrap();
    let (len, p) = read_mpx(s).unwrap();
    let mut out = format!("MPX,{len:010},").into_bytes();
    out.extend_from_slice(&p);
    out
}

/// Sends one request and returns the response fields after the MPX prefix.
pub fn request(s: &mut TcpStream, payload: &str) -> Vec<String> {
    s.write_all(&frame(payload)).unwrap();
    let (len, p) = read_mpx(s).unwrap();
    assert_eq!(len, p.len() + 1, "real Merlin length counts the comma");
    String::from_utf8(p)
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect()
}

/// SET on a fresh short-lived connection (as LiberTEM does); asserts status 0.
pub fn set(addr: SocketAddr, name: &str, value: &str) {
    let mut s = connect(addr);
    let r = request(&mut s, &format!("SET,{name},{value}"));
    assert_eq!(r, ["SET", name, "0"], "SET {name} {value}");
}

pub fn get(addr: SocketAddr, name: &str) -> String {
    let mut s = connect(addr);
    let r = request(&mut s, &format!("GET,{name}"));
    assert_eq!(r.len(), 4, "{r:?}");
    assert_eq!(r[3], "0", "GET {name}: {r:?}");
    r[2].clone()
}

pub fn cmd(addr: SocketAddr, name: &str) -> String {
    let mut s = connect(addr);
    let r = request(&mut s, &format!("CMD,{name}"));
    assert_eq!(r[..2], ["CMD", name]);
    r[2].clone()
}

/// One message of the data stream.
#[derive(Debug)]
pub enum Msg {
    Hdr(String),
    Frame(WireFrame),
}

#[derive(Debug, Clone)]
pub struct WireFrame {
    pub mpx_len: usize,
    pub seq: u64,
    pub data_offset: usize,
    pub header: Vec<u8>,
    pub payload: Vec<u8>,
}

impl WireFrame {
    /// Header fields split on commas (before the NUL padding).
    pub fn fields(&self) -> Vec<String> {
        let text: String = self.header.iter().map(|&b| b as char).collect();
        text.trim_end_matches(['\0', ' '])
            .split(',')
            .map(str::to_string)
            .collect()
    }
    pub fn be_u16(&self) -> Vec<u32> {
        self.payload
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
            .collect()
    }
}

pub fn read_msg(s: &mut TcpStream) -> std::io::Result<Msg> {
    let (len, p) = read_mpx(s)?;
    if p.starts_with(b"HDR,") {
        return Ok(Msg::Hdr(p.iter().map(|&b| b as char).collect()));
    }
    assert_eq!(
        &p[..4],
        b"MQ1,",
        "unexpected message {:?}",
        String::from_utf8_lossy(&p[..16])
    );
    let data_offset: usize = std::str::from_utf8(&p[11..16]).unwrap().parse().unwrap();
    let seq = String::from_utf8_lossy(&p[4..10])
        .parse()
        .expect("6-digit sequence number");
    Ok(Msg::Frame(WireFrame {
        mpx_len: len,
        seq,
        data_offset,
        header: p[..data_offset].to_vec(),
        payload: p[data_offset..].to_vec(),
    }))
}

pub fn read_hdr(s: &mut TcpStream) -> String {
    match read_msg(s).unwrap() {
        Msg::Hdr(h) => h,
        Msg::Frame(f) => panic!("expected HDR, got frame {}", f.seq),
    }
}

pub fn read_frame(s: &mut TcpStream) -> WireFrame {
    match read_msg(s).unwrap() {
        Msg::Frame(f) => f,
        Msg::Hdr(_) => panic!("expected a frame, got an HDR"),
    }
}

/// The value of HDR line `key…:\tvalue`.
pub fn hdr_value(hdr: &str, key: &str) -> Option<String> {
    hdr.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once('\t'))
        .map(|(_, v)| v.trim().to_string())
}

/// Asserts no byte arrives on `s` for `quiet`.
pub fn assert_silent(s: &mut TcpStream, quiet: Duration) {
    s.set_read_timeout(Some(quiet)).unwrap();
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        Ok(0) => panic!("connection closed"),
        Ok(_) => panic!("unexpected byte {:?}", b[0] as char),
        Err(e) => panic!("{e}"),
    }
    s.set_read_timeout(Some(DEADLINE)).unwrap();
}

/// Polls DETECTORSTATUS until it reads `want` (deadline [`DEADLINE`]).
pub fn wait_status(addr: SocketAddr, want: &str) {
    let t = Instant::now();
    loop {
        let v = get(addr, "DETECTORSTATUS");
        if v == want {
            return;
        }
        assert!(
            t.elapsed() < DEADLINE,
            "DETECTORSTATUS stayed {v}, wanted {want}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}
