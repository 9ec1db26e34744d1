//! Control-channel conformance of the Merlin simulator (protocols.md §1.2–1.3), checked as
//! raw bytes on the wire.

mod common;

use common::*;
use std::io::{Read, Write};
use std::time::Duration;
use stemflow_core::NavShape;
use stemflow_simulators::merlin::Pacing;

/// Responses carry the real Merlin length (counting the comma) and the documented fields,
/// with and without LiberTEM's dummy `,0`.
#[test]
fn responses_are_byte_exact() {
    let sim = start(synthetic(NavShape::new(2, 2), Pacing::FrameTime));
    let mut s = connect(sim.control_addr());
    // protocols.md §1.3 example request, answered `SET,COUNTERDEPTH,0` (18 bytes + comma).
    s.write_all(b"MPX,0000000020,SET,COUNTERDEPTH,12").unwrap();
    let (len, p) = read_mpx(&mut s).unwrap();
    assert_eq!((len, p.as_slice()), (19, &b"SET,COUNTERDEPTH,0"[..]));
    assert_eq!(
        raw_request(&mut s, "GET,IMAGEX"),
        b"MPX,0000000016,GET,IMAGEX,64,0"
    );
    assert_eq!(
        raw_request(&mut s, "GET,IMAGEY,0"),
        b"MPX,0000000016,GET,IMAGEY,64,0"
    );
    assert_eq!(
        raw_request(&mut s, "GET,COUNTERDEPTH,0"),
        b"MPX,0000000022,GET,COUNTERDEPTH,12,0"
    );
    assert_eq!(
        raw_request(&mut s, "CMD,NOSUCHCOMMAND"),
        b"MPX,0000000020,CMD,NOSUCHCOMMAND,2"
    );
    assert_eq!(
        raw_request(&mut s, "GET,NOSUCHVAR"),
        b"MPX,0000000017,GET,NOSUCHVAR,,2"
    );
    assert_eq!(
        raw_request(&mut s, "SET,NOSUCHVAR,1"),
        b"MPX,0000000016,SET,NOSUCHVAR,2"
    );
    assert_eq!(
        raw_request(&mut s, "SET,COUNTERDEPTH,8"),
        b"MPX,0000000019,SET,COUNTERDEPTH,3"
    );
    assert_eq!(
        raw_request(&mut s, "SET,IMAGEX,128"),
        b"MPX,0000000013,SET,IMAGEX,3"
    );
    assert_eq!(
        raw_request(&mut s, "SET,COUNTERDEPTH"),
        b"MPX,0000000019,SET,COUNTERDEPTH,3"
    );
    assert_eq!(
        raw_request(&mut s, "PUT,IMAGEX,1"),
        b"MPX,0000000013,PUT,IMAGEX,2"
    );
    assert_eq!(
        raw_request(&mut s, "GET,DETECTORSTATUS,0"),
        b"MPX,0000000023,GET,DETECTORSTATUS,0,0"
    );
    let version = request(&mut s, "GET,SOFTWAREVERSION");
    assert!(version[2].contains("stemflow"), "{version:?}");
}

/// Several requests per connection, pipelined in one write, and many short-lived
/// connections one after another (LiberTEM's pattern).
#[test]
fn many_connections_and_pipelined_requests() {
    let sim = start(synthetic(NavShape::new(2, 2), Pacing::FrameTime));
    for i in 0..10 {
        set(sim.control_addr(), "NUMFRAMESTOACQUIRE", &i.to_string());
        assert_eq!(get(sim.control_addr(), "NUMFRAMESTOACQUIRE"), i.to_string());
    }
    let mut s = connect(sim.control_addr());
    let mut burst = frame("SET,ACQUISITIONTIME,2.5");
    burst.extend(frame("SET,ACQUISITIONPERIOD,1"));
    burst.extend(frame("GET,ACQUISITIONPERIOD,0"));
    burst.extend(frame("SET,CONTINUOUSRW,0"));
    burst.extend(frame("GET,ACQUISITIONPERIOD"));
    // Split mid-prefix to exercise reassembly.
    let (a, b) = burst.split_at(7);
    s.write_all(a).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    s.write_all(b).unwrap();
    let mut replies = Vec::new();
    for _ in 0..5 {
        let (_, p) = read_mpx(&mut s).unwrap();
        replies.push(String::from_utf8(p).unwrap());
    }
    assert_eq!(
        replies,
        [
            "SET,ACQUISITIONTIME,0",
            "SET,ACQUISITIONPERIOD,0",
            // Period reads back lengthened to fit the exposure (2.5 ms) ...
            "GET,ACQUISITIONPERIOD,2.5,0",
            "SET,CONTINUOUSRW,0",
            // ... plus the modelled 12-bit readout (0.6 ms) without continuous read/write.
            "GET,ACQUISITIONPERIOD,3.1,0",
        ]
    );
}

/// While armed the detector is busy: SET and a second STARTACQUISITION answer 1, GET still
/// works, DETECTORSTATUS reads 1; after STOPACQUISITION it is idle and accepts SET again.
#[test]
fn busy_while_armed() {
    let sim = start(synthetic(NavShape::new(2, 2), Pacing::FrameTime));
    let c = sim.control_addr();
    set(c, "TRIGGERSTART", "5");
    set(c, "NUMFRAMESTOACQUIRE", "4");
    assert_eq!(cmd(c, "STARTACQUISITION"), "0");
    let mut s = connect(c);
    assert_eq!(
        request(&mut s, "SET,COUNTERDEPTH,6"),
        ["SET", "COUNTERDEPTH", "1"]
    );
    assert_eq!(
        request(&mut s, "CMD,STARTACQUISITION,0"),
        ["CMD", "STARTACQUISITION", "1"]
    );
    assert_eq!(
        request(&mut s, "GET,DETECTORSTATUS"),
        ["GET", "DETECTORSTATUS", "1", "0"]
    );
    assert_eq!(
        request(&mut s, "GET,COUNTERDEPTH"),
        ["GET", "COUNTERDEPTH", "12", "0"]
    );
    assert_eq!(
        request(&mut s, "CMD,STOPACQUISITION"),
        ["CMD", "STOPACQUISITION", "0"]
    );
    assert_eq!(
        request(&mut s, "GET,DETECTORSTATUS"),
        ["GET", "DETECTORSTATUS", "0", "0"]
    );
    assert_eq!(
        request(&mut s, "SET,COUNTERDEPTH,6"),
        ["SET", "COUNTERDEPTH", "0"]
    );
    // ABORT when idle is harmless.
    assert_eq!(request(&mut s, "CMD,ABORT,0"), ["CMD", "ABORT", "0"]);
    assert_eq!(sim.stats().acquisitions, 1);
}

/// Bytes that are not MPX framing close the connection; the server keeps serving others.
#[test]
fn garbage_closes_only_that_connection() {
    let sim = start(synthetic(NavShape::new(2, 2), Pacing::FrameTime));
    let mut bad = connect(sim.control_addr());
    bad.write_all(b"HELLO MERLIN\n").unwrap();
    let mut b = [0u8; 16];
    assert_eq!(bad.read(&mut b).unwrap(), 0, "closed without a reply");
    assert_eq!(get(sim.control_addr(), "IMAGEX"), "64");
}

/// A recording fixes counter depth and file format; IMAGEX/IMAGEY come from it.
#[test]
fn recording_source_constrains_settings() {
    let sim = start(stemflow_simulators::merlin::MerlinSimConfig::new(
        stemflow_simulators::merlin::MerlinSource::Recording {
            path: data_file("Quad_1_Frame_CounterDepth_1_Rows_256RAW.mib"),
        },
    ));
    let c = sim.control_addr();
    assert_eq!(get(c, "IMAGEX"), "512");
    assert_eq!(get(c, "IMAGEY"), "512");
    assert_eq!(get(c, "COUNTERDEPTH"), "1");
    assert_eq!(get(c, "FILEFORMAT"), "2");
    assert_eq!(get(c, "SOFTWAREVERSION"), "0.77");
    let mut s = connect(c);
    assert_eq!(
        request(&mut s, "SET,COUNTERDEPTH,12"),
        ["SET", "COUNTERDEPTH", "3"]
    );
    assert_eq!(
        request(&mut s, "SET,FILEFORMAT,0"),
        ["SET", "FILEFORMAT", "3"]
    );
    assert_eq!(
        request(&mut s, "SET,COUNTERDEPTH,1"),
        ["SET", "COUNTERDEPTH", "0"]
    );
}
