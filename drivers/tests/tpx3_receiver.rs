//! The ASI TPX3 CSR receiver against a scripted TCP server on 127.0.0.1:0: the shared
//! stream capture (LiberTEM's serializer), and streams built with the wire module — every
//! dtype, padding, metadata, several scans and acquisitions per connection, a scan
//! cancelled by `AcquisitionEnd`, a short scan, and broken streams (joined mid-way,
//! garbage, a cut chunk, a forged chunk size, chunk arrays that do not fit, rows past the
//! scan).

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::thread::JoinHandle;
use std::time::Duration;
use stemflow_core::SigShape;
use stemflow_core::csr::{CsrDType, CsrFormat, CsrRows, Stack};
use stemflow_core::validity::FrameStatus;
use stemflow_drivers::asi::wire::{self, AcquisitionStart, FormatType, Header, ScanStart};
use stemflow_drivers::asi::{
    AcquisitionSummary, EndReason, ReceiverEvent, Tpx3Receiver, Tpx3ReceiverConfig,
};

const TIMEOUT: Duration = Duration::from_secs(10);

fn shared(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data")
        .join(rel)
}

/// Serves `bytes` to the first client, then keeps the socket open for `linger` (so the
/// receiver sees silence, not a close) unless `close`.
fn serve(bytes: Vec<u8>, linger: Duration) -> (SocketAddr, JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = l.local_addr().expect("addr");
    let h = std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let _ = s.write_all(&bytes);
            let _ = s.flush();
            std::thread::sleep(linger);
        }
    });
    (addr, h)
}

struct Scan {
    header: Option<stemflow_drivers::asi::ScanHeader>,
    rows: CsrRows,
    summary: Option<AcquisitionSummary>,
}

struct Outcome {
    scans: Vec<Scan>,
    error: Option<String>,
}

/// Receives until the connection ends (or `scans` scans finished), normalising every
/// stack's chunks into one `CsrRows` per scan (damaged chunks as empty rows).
fn receive(addr: SocketAddr, cfg: impl FnOnce(&mut Tpx3ReceiverConfig), scans: usize) -> Outcome {
    let mut c = Tpx3ReceiverConfig::new(addr);
    c.header_timeout = Duration::from_secs(5);
    c.frame_timeout = Duration::from_millis(500);
    c.first_frame_timeout = Duration::from_secs(2);
    cfg(&mut c);
    let rx = Tpx3Receiver::start(c).expect("receiver starts");
    let mut out = Outcome {
        scans: Vec::new(),
        error: None,
    };
    let mut stacks = Vec::new();
    let drain = |stacks: &crossbeam_channel::Receiver<Stack>, scan: &mut Scan| {
        while let Ok(s) = stacks.recv_timeout(Duration::from_millis(200)) {
            let Stack::Csr(st) = s else {
                panic!("TPX3 stacks are CSR")
            };
            if scan.rows.indptr.is_empty() {
                scan.rows.clear(st.first_frame, st.format.sig_shape);
            }
            // Frames between stacks (lost or damaged) become empty rows.
            let next = scan.rows.first_frame as usize + scan.rows.n_frames();
            assert!(st.first_frame as usize >= next, "stacks in frame order");
            scan.rows.push_empty(st.first_frame as usize - next);
            for (i, ch) in st.chunks.iter().enumerate() {
                if scan.rows.push_chunk(&st.format, ch, st.payload(i)).is_err() {
                    scan.rows.push_empty(ch.frames as usize);
                }
            }
        }
    };
    while let Ok(ev) = rx.events().recv_timeout(TIMEOUT) {
        match ev {
            ReceiverEvent::Armed {
                header, stacks: s, ..
            } => {
                out.scans.push(Scan {
                    header: Some(header),
                    rows: CsrRows::default(),
                    summary: None,
                });
                stacks.push(s);
            }
            ReceiverEvent::FirstFrame { .. } => {}
            ReceiverEvent::Finished { summary, .. } => {
                let i = out.scans.len() - 1;
                drain(&stacks[i], &mut out.scans[i]);
                out.scans[i].summary = Some(summary);
                if out.scans.len() >= scans {
                    break;
                }
            }
            ReceiverEvent::Error { error, summary } => {
                if let Some(i) = out.scans.len().checked_sub(1) {
                    drain(&stacks[i], &mut out.scans[i]);
                    if summary.is_some() {
                        out.scans[i].summary = summary;
                    }
                }
                out.error = Some(error.to_string());
                break;
            }
        }
    }
    rx.stop();
    rx.join();
    out
}

fn acq(nav: (u16, u16), sig: (u16, u16), ip: CsrDType, id: CsrDType, seq: u32) -> AcquisitionStart {
    AcquisitionStart {
        version: 7,
        format_type: FormatType::Csr,
        nav_shape: nav,
        indptr: ip,
        sig_shape: sig,
        indices: id,
        sequence: seq,
    }
}

/// Frame `f` of a scan: `f % 4 + 1` events at indices `(f * 13 + k * 7) % sig_len`,
/// values `k + 1 + f % 5`.
fn frame(f: u64, sig_len: u64) -> (Vec<u32>, Vec<u32>) {
    let n = f % 4 + 1;
    let mut ev: Vec<(u32, u32)> = (0..n)
        .map(|k| (((f * 13 + k * 7) % sig_len) as u32, (k + 1 + f % 5) as u32))
        .collect();
    ev.sort_unstable();
    ev.dedup_by_key(|e| e.0);
    ev.into_iter().unzip()
}

/// A scan's messages: `ScanStart` (with `metadata`), chunks of `per_chunk` rows for frames
/// `0..frames` in value dtype `vd` with `pad`, and `end` (e.g. `ScanEnd`).
#[allow(clippy::too_many_arguments)]
fn scan_bytes(
    a: &AcquisitionStart,
    seq: u32,
    metadata: &[u8],
    frames: u64,
    per_chunk: usize,
    vd: CsrDType,
    pad: usize,
    end: Option<Header>,
) -> Vec<u8> {
    let mut b = Header::ScanStart(ScanStart {
        sequence: seq,
        metadata_length: metadata.len() as u64,
    })
    .to_bytes()
    .to_vec();
    b.extend_from_slice(metadata);
    let format = a.format();
    let sig_len = format.sig_shape.len() as u64;
    let all: Vec<(Vec<u32>, Vec<u32>)> = (0..frames).map(|f| frame(f, sig_len)).collect();
    for c in all.chunks(per_chunk) {
        let rows: Vec<(&[u32], &[u32])> = c.iter().map(|(i, v)| (&i[..], &v[..])).collect();
        wire::array_chunk(&format, vd, &rows, pad, &mut b).expect("chunk fits its dtypes");
    }
    if let Some(e) = end {
        b.extend_from_slice(&e.to_bytes());
    }
    b
}

fn check_frames(rows: &CsrRows, sig_len: u64, frames: std::ops::Range<u64>) {
    for f in frames {
        let (idx, val) = rows.row((f - rows.first_frame) as usize);
        let (ei, ev) = frame(f, sig_len);
        assert_eq!((idx, val), (&ei[..], &ev[..]), "frame {f}");
    }
}

#[test]
fn the_shared_capture_arrives_whole_and_sums_as_its_readme_says() {
    let bytes = std::fs::read(shared("tpx3/synthetic_16x16_512.tpx")).expect("shared data");
    let (addr, server) = serve(bytes, Duration::from_millis(300));
    let out = receive(addr, |_| {}, 1);
    assert!(out.error.is_none(), "{:?}", out.error);
    let scan = &out.scans[0];
    let h = scan.header.as_ref().unwrap();
    assert_eq!(
        (h.acquisition.nav_shape, h.acquisition.sig_shape),
        ((16, 16), (512, 512))
    );
    let s = scan.summary.as_ref().unwrap();
    assert_eq!(
        (s.expected, s.received, s.lost, s.damaged),
        (256, 256, 0, 0)
    );
    assert_eq!(s.end, EndReason::AllFrames);
    assert_eq!(s.series, (1, 1));
    assert_eq!(scan.rows.n_frames(), 256);
    let total: u64 = scan.rows.values.iter().map(|&v| u64::from(v)).sum();
    assert_eq!(total, 104_619, "the README's value sum");
    // About 404 hits per frame (README).
    let per = scan.rows.nnz() as f64 / 256.0;
    assert!((300.0..500.0).contains(&per), "{per} hits per frame");
    server.join().unwrap();
}

#[test]
fn every_dtype_padding_metadata_and_several_scans_and_acquisitions_per_connection() {
    use CsrDType::*;
    let mut b = Vec::new();
    let a1 = acq((3, 5), (16, 16), U8, U8, 1);
    b.extend_from_slice(&Header::AcquisitionStart(a1).to_bytes());
    b.extend(scan_bytes(
        &a1,
        1,
        b"{\"dwell\":1e-6}",
        15,
        4,
        U16,
        3,
        Some(Header::ScanEnd(1)),
    ));
    b.extend(scan_bytes(
        &a1,
        2,
        b"",
        15,
        15,
        U64,
        0,
        Some(Header::ScanEnd(2)),
    ));
    b.extend_from_slice(&Header::AcquisitionEnd(1).to_bytes());
    let a2 = acq((2, 4), (300, 250), U64, U32, 2);
    b.extend_from_slice(&Header::AcquisitionStart(a2).to_bytes());
    b.extend(scan_bytes(
        &a2,
        1,
        b"",
        8,
        3,
        U32,
        5,
        Some(Header::ScanEnd(1)),
    ));
    b.extend_from_slice(&Header::AcquisitionEnd(2).to_bytes());
    let (addr, server) = serve(b, Duration::from_millis(300));
    let out = receive(addr, |_| {}, 3);
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.scans.len(), 3);
    let meta = &out.scans[0].header.as_ref().unwrap().metadata;
    assert_eq!(meta, b"{\"dwell\":1e-6}");
    for (i, (frames, sig_len, series)) in
        [(15, 256, (1, 1)), (15, 256, (1, 2)), (8, 75_000, (2, 1))]
            .into_iter()
            .enumerate()
    {
        let s = out.scans[i].summary.as_ref().unwrap();
        assert_eq!((s.received, s.lost, s.damaged), (frames, 0, 0), "scan {i}");
        assert_eq!(s.series, series);
        assert_eq!(s.end, EndReason::AllFrames);
        check_frames(&out.scans[i].rows, sig_len, 0..frames);
    }
    server.join().unwrap();
}

#[test]
fn a_cancelled_scan_and_a_short_scan_count_the_rest_lost() {
    use CsrDType::*;
    let a = acq((4, 4), (32, 32), U32, U32, 1);
    let mut b = Header::AcquisitionStart(a).to_bytes().to_vec();
    // 10 of 16 frames, then AcquisitionEnd inside the scan (a stopped measurement).
    b.extend(scan_bytes(
        &a,
        1,
        b"",
        10,
        5,
        U32,
        0,
        Some(Header::AcquisitionEnd(1)),
    ));
    b.extend_from_slice(&Header::AcquisitionStart(a).to_bytes());
    // 12 of 16, then ScanEnd.
    b.extend(scan_bytes(
        &a,
        1,
        b"",
        12,
        4,
        U32,
        0,
        Some(Header::ScanEnd(1)),
    ));
    let (addr, server) = serve(b, Duration::from_millis(300));
    let out = receive(addr, |_| {}, 2);
    let s0 = out.scans[0].summary.as_ref().unwrap();
    assert_eq!(
        (s0.received, s0.lost, s0.end),
        (10, 6, EndReason::Cancelled)
    );
    assert_eq!(s0.validity.status(10), FrameStatus::Missing);
    let s1 = out.scans[1].summary.as_ref().unwrap();
    assert_eq!((s1.received, s1.lost, s1.end), (12, 4, EndReason::ScanEnd));
    check_frames(&out.scans[1].rows, 1024, 0..12);
    server.join().unwrap();
}

#[test]
fn a_stream_joined_mid_way_is_refused_with_a_clear_error() {
    let a = acq((2, 2), (8, 8), CsrDType::U32, CsrDType::U32, 1);
    let b = scan_bytes(&a, 1, b"", 4, 2, CsrDType::U32, 0, Some(Header::ScanEnd(1)));
    // The ScanStart is cut off: the first header is an ArrayChunk.
    let (addr, server) = serve(b[32..].to_vec(), Duration::from_millis(300));
    let out = receive(addr, |_| {}, 1);
    let e = out.error.expect("refused");
    assert!(
        e.contains("instead of AcquisitionStart") && e.contains("ArrayChunk"),
        "{e}"
    );
    assert!(out.scans.is_empty());
    server.join().unwrap();
}

#[test]
fn broken_chunks_end_the_connection_or_count_damaged_as_they_should() {
    use CsrDType::*;
    let a = acq((2, 4), (16, 16), U32, U32, 1);
    let start = Header::AcquisitionStart(a).to_bytes().to_vec();
    let good = scan_bytes(&a, 1, b"", 8, 2, U32, 0, None);
    // Chunk boundaries in `good`: ScanStart, then 4 chunks.
    let mut chunks_at = Vec::new();
    let mut at = 32;
    while at < good.len() {
        chunks_at.push(at);
        let mut h = [0u8; 32];
        h.copy_from_slice(&good[at..at + 32]);
        let Header::ArrayChunk(c) = Header::parse(&h).unwrap() else {
            panic!("chunk")
        };
        at += 32 + c.payload_len() as usize;
    }
    assert_eq!(chunks_at.len(), 4);
    let case = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut b = start.clone();
        let mut s = good.clone();
        edit(&mut s);
        b.extend(s);
        b
    };

    // Garbage instead of the third chunk's header: the connection ends, naming the tag.
    let b = case(&|s| s[chunks_at[2]] = 0x77);
    let (addr, server) = serve(b, Duration::from_millis(300));
    let out = receive(addr, |_| {}, 1);
    assert!(
        out.error
            .as_deref()
            .unwrap()
            .contains("unknown message tag 119")
    );
    let s = out.scans[0].summary.as_ref().unwrap();
    assert_eq!((s.received, s.expected), (4, 8));
    server.join().unwrap();

    // A forged payload size: refused before anything is read or allocated.
    let b = case(&|s| {
        let at = chunks_at[1];
        s[at + 6..at + 10].copy_from_slice(&u32::MAX.to_le_bytes());
    });
    let (addr, server) = serve(b, Duration::from_millis(300));
    let out = receive(addr, |c| c.max_chunk_bytes = 1 << 20, 1);
    let e = out.error.unwrap();
    assert!(e.contains("more than the 1048576-byte limit"), "{e}");
    server.join().unwrap();

    // Arrays that do not fit the payload as the offsets say (the indices offset inside
    // the row pointers; the payload length, values_offset + nnz × 4, is unchanged, so the
    // stream stays in step): that chunk's 2 frames are damaged, the rest arrive.
    let b = case(&|s| {
        let at = chunks_at[1];
        s[at + 10..at + 14].copy_from_slice(&4u32.to_le_bytes());
    });
    let b = [b, Header::ScanEnd(1).to_bytes().to_vec()].concat();
    let (addr, server) = serve(b, Duration::from_millis(300));
    let out = receive(addr, |_| {}, 1);
    assert!(out.error.is_none(), "{:?}", out.error);
    let s = out.scans[0].summary.as_ref().unwrap();
    assert_eq!((s.received, s.damaged, s.lost), (6, 2, 0));
    assert_eq!(s.validity.status(2), FrameStatus::Damaged);
    assert_eq!(s.validity.status(4), FrameStatus::Received);
    let rows = &out.scans[0].rows;
    check_frames(rows, 256, 0..2);
    check_frames(rows, 256, 4..8);
    server.join().unwrap();

    // A chunk cut off by a disconnect: its frames damaged, the error names the bytes.
    let mut b = case(&|_| {});
    b.truncate(start.len() + chunks_at[3] + 40);
    let (addr, server) = serve(b, Duration::ZERO);
    let out = receive(addr, |_| {}, 1);
    let e = out.error.unwrap();
    assert!(
        e.contains("connection closed inside the payload of the ArrayChunk of frames 6..8"),
        "{e}"
    );
    let s = out.scans[0].summary.as_ref().unwrap();
    assert_eq!((s.received, s.damaged), (6, 2));
    server.join().unwrap();

    // More rows than the scan has: a protocol error naming both.
    let mut b = start.clone();
    b.extend(scan_bytes(&a, 1, b"", 10, 5, U32, 0, None));
    let (addr, server) = serve(b, Duration::from_millis(300));
    let out = receive(addr, |_| {}, 1);
    let e = out.error.unwrap();
    assert!(e.contains("run past the scan's 8 frames"), "{e}");
    server.join().unwrap();
}

#[test]
fn a_silent_detector_ends_the_scan_at_the_deadline() {
    let a = acq((2, 2), (8, 8), CsrDType::U32, CsrDType::U32, 1);
    let mut b = Header::AcquisitionStart(a).to_bytes().to_vec();
    b.extend(scan_bytes(&a, 1, b"", 2, 2, CsrDType::U32, 0, None));
    let (addr, server) = serve(b, Duration::from_secs(2));
    let t = std::time::Instant::now();
    let out = receive(addr, |c| c.frame_timeout = Duration::from_millis(300), 1);
    let s = out.scans[0].summary.as_ref().unwrap();
    assert_eq!(
        (s.received, s.lost, s.end),
        (2, 2, EndReason::InactivityDeadline)
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "ended at the deadline, not the close"
    );
    server.join().unwrap();
}

#[test]
fn csr_format_matches_the_acquisition_start() {
    let a = acq((1, 1), (512, 256), CsrDType::U16, CsrDType::U32, 9);
    let f: CsrFormat = a.format();
    assert_eq!(f.sig_shape, SigShape::new(512, 256));
    assert_eq!((f.indptr, f.indices), (CsrDType::U16, CsrDType::U32));
}
