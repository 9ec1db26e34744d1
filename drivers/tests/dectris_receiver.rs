//! The DECTRIS stream receiver against an in-test ZeroMQ PUSH peer replaying the stream-v1
//! capture `../shared/data/dectris/stream-v1/synthetic_16x16_256_u16.dump` (series 34,
//! 256 frames of 256 × 256 u16, `bs16-lz4<`, header_detail `basic`, `exte`), edited per
//! test: missing frames, stale series, early end, wrong frame ids, corrupt blobs, other
//! header details, stream v2 (CBOR) built from the same blobs. Decoded frames are compared
//! with the capture's `.npy` (sum 34 446 517).
//!
//! Everything binds 127.0.0.1 with ephemeral ports; every wait has a deadline.

use crossbeam_channel::{Receiver, select};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use stemflow_core::csr::Stack;
use stemflow_core::frame::{DecodeError, RawStack, Tile};
use stemflow_core::validity::FrameStatus;
use stemflow_core::{DType, SigShape};
use stemflow_drivers::dectris::receiver::{
    AcquisitionSummary, DectrisError, DectrisReceiver, DectrisReceiverConfig, EndReason,
    LossPolicy, ReceiverEvent, SeriesFilter, SeriesHeader,
};
use stemflow_drivers::dectris::rest::StreamFormat;
use stemflow_drivers::dectris::stream::{HeaderDetail, encode_v2, v2_array_value};
use stemflow_drivers::dectris::zmtp::{ZmtpPush, ZmtpPushListener};

const FRAMES: usize = 256;
const SIG: SigShape = SigShape::new(256, 256);
const TOTAL_SUM: u64 = 34_446_517;
const TIMEOUT: Duration = Duration::from_secs(10);

fn data_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/dectris/stream-v1"
    ))
}

/// The capture, split into its messages.
#[derive(Clone)]
struct Capture {
    dheader: Vec<u8>,
    config: Vec<u8>,
    /// Per frame: dimage, dimage_d, blob, dconfig.
    frames: Vec<[Vec<u8>; 4]>,
    end: Vec<u8>,
}

fn capture() -> Capture {
    let bytes = std::fs::read(data_dir().join("synthetic_16x16_256_u16.dump"))
        .expect("the stream-v1 capture in ../shared/data");
    let mut parts = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let len = i64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        parts.push(bytes[at + 8..at + 8 + len].to_vec());
        at += 8 + len;
    }
    assert_eq!(parts.len(), 2 + 4 * FRAMES + 1);
    let end = parts.pop().unwrap();
    let frames = parts[2..]
        .chunks_exact(4)
        .map(|c| [c[0].clone(), c[1].clone(), c[2].clone(), c[3].clone()])
        .collect();
    Capture {
        dheader: parts[0].clone(),
        config: parts[1].clone(),
        frames,
        end,
    }
}

/// The expected frames: (16, 16, 256, 256) u16 from the `.npy`.
fn reference() -> Vec<u16> {
    let b = std::fs::read(data_dir().join("synthetic_16x16_256_u16.npy")).expect("the .npy");
    assert_eq!(&b[..6], b"\x93NUMPY");
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = String::from_utf8_lossy(&b[10..10 + hlen]);
    assert!(
        header.contains("'<u2'") && header.contains("(16, 16, 256, 256)"),
        "{header}"
    );
    b[10 + hlen..]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

fn localhost0() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
}

/// A PUSH peer and a receiver connected to it.
fn connect(cfg: impl FnOnce(&mut DectrisReceiverConfig)) -> (ZmtpPush, DectrisReceiver) {
    connect_format(StreamFormat::Legacy, cfg)
}

fn connect_format(
    format: StreamFormat,
    cfg: impl FnOnce(&mut DectrisReceiverConfig),
) -> (ZmtpPush, DectrisReceiver) {
    let listener = ZmtpPushListener::bind(localhost0()).unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = std::thread::spawn(move || listener.accept(TIMEOUT).unwrap());
    let mut c = DectrisReceiverConfig::new(addr, format);
    c.frame_timeout = Duration::from_millis(500);
    c.first_frame_timeout = Duration::from_secs(5);
    c.header_timeout = Some(Duration::from_secs(5));
    cfg(&mut c);
    let rx = DectrisReceiver::start(c).unwrap();
    (accept.join().unwrap(), rx)
}

/// Sends `msgs` (each a multipart message) from a thread.
fn send_all(mut push: ZmtpPush, msgs: Vec<Vec<Vec<u8>>>) -> std::thread::JoinHandle<ZmtpPush> {
    std::thread::spawn(move || {
        for m in msgs {
            let parts: Vec<&[u8]> = m.iter().map(Vec::as_slice).collect();
            push.send(&parts).unwrap();
        }
        push
    })
}

/// The capture as the LiberTEM simulator sends it: header parts as two single-part
/// messages, frames as 4-part messages, then the end.
fn sim_messages(c: &Capture) -> Vec<Vec<Vec<u8>>> {
    let mut m = vec![vec![c.dheader.clone()], vec![c.config.clone()]];
    m.extend(c.frames.iter().map(|f| f.to_vec()));
    m.push(vec![c.end.clone()]);
    m
}

/// What one series produced.
struct Outcome {
    header: SeriesHeader,
    stacks: Vec<RawStack>,
    summary: Option<AcquisitionSummary>,
    error: Option<DectrisError>,
}

/// Collects one series (from `Armed` to `Finished`/`Error`), draining stacks as they come.
fn collect(rx: &DectrisReceiver) -> Outcome {
    let until = Instant::now() + TIMEOUT;
    let events = rx.events();
    let (header, stacks_rx): (SeriesHeader, Receiver<Stack>) = match events.recv_deadline(until) {
        Ok(ReceiverEvent::Armed { header, stacks, .. }) => (*header, stacks),
        Ok(ReceiverEvent::Error { error, .. }) => panic!("error before the header: {error}"),
        Ok(other) => panic!("unexpected event before Armed: {other:?}"),
        Err(e) => panic!("no Armed event: {e}"),
    };
    let mut stacks = Vec::new();
    let mut stacks_open = true;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if stacks_open {
            select! {
                recv(stacks_rx) -> s => match s {
                    Ok(s) => stacks.push(s.into_dense().expect("DECTRIS stacks are dense")),
                    Err(_) => stacks_open = false,
                },
                recv(events) -> ev => match ev {
                    Ok(ReceiverEvent::FirstFrame { .. }) => {}
                    Ok(ReceiverEvent::Finished { summary, .. }) => {
                        stacks.extend(stacks_rx.try_iter().filter_map(Stack::into_dense));
                        return Outcome { header, stacks, summary: Some(summary), error: None };
                    }
                    Ok(ReceiverEvent::Error { error, summary }) => {
                        stacks.extend(stacks_rx.try_iter().filter_map(Stack::into_dense));
                        return Outcome { header, stacks, summary, error: Some(error) };
                    }
                    Ok(other) => panic!("unexpected event {other:?}"),
                    Err(_) => panic!("receiver ended without Finished"),
                },
                default(left) => panic!("series did not end within {TIMEOUT:?}"),
            }
        } else {
            match events.recv_deadline(until) {
                Ok(ReceiverEvent::FirstFrame { .. }) => {}
                Ok(ReceiverEvent::Finished { summary, .. }) => {
                    return Outcome {
                        header,
                        stacks,
                        summary: Some(summary),
                        error: None,
                    };
                }
                Ok(ReceiverEvent::Error { error, summary }) => {
                    return Outcome {
                        header,
                        stacks,
                        summary,
                        error: Some(error),
                    };
                }
                Ok(other) => panic!("unexpected event {other:?}"),
                Err(e) => panic!("no end of series: {e}"),
            }
        }
    }
}

/// Decodes every stack; returns (frame index, pixels) per frame, in order.
fn decode(stacks: &[RawStack]) -> Vec<(u64, Vec<u16>)> {
    let mut out = Vec::new();
    let mut tile = Tile::zeros(0, 0, SIG, DType::U16);
    for s in stacks {
        tile.decode_from(s).expect("every delivered frame decodes");
        for i in 0..s.len() {
            let stemflow_core::frame::PixelsRef::U16(p) = tile.frame(i) else {
                panic!("not u16")
            };
            out.push((s.first_frame + i as u64, p.to_vec()));
        }
    }
    out
}

fn assert_frames_match(decoded: &[(u64, Vec<u16>)], reference: &[u16]) {
    let n = SIG.len();
    for (i, px) in decoded {
        let i = *i as usize;
        assert!(
            px[..] == reference[i * n..(i + 1) * n],
            "frame {i} differs from the .npy"
        );
    }
}

#[test]
fn full_capture_is_received_and_every_frame_decodes_to_the_reference() {
    let c = capture();
    let (push, rx) = connect(|_| {});
    let sender = send_all(push, sim_messages(&c));
    let out = collect(&rx);
    sender.join().unwrap();
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.header.series, 34);
    assert_eq!(out.header.header_detail, Some(HeaderDetail::Basic));
    assert_eq!(out.header.expected_frames, 256);
    assert_eq!(out.header.sig_shape, Some(SIG));
    assert_eq!(out.header.dtype, Some(DType::U16));
    let s = out.summary.unwrap();
    assert_eq!(
        (s.expected, s.received, s.lost, s.damaged),
        (256, 256, 0, 0)
    );
    assert_eq!(s.end, EndReason::AllFrames);
    assert_eq!(s.validity.received(), 256);
    // Stacks are consecutive and hold compressed blobs (much smaller than raw frames).
    let mut next = 0;
    for st in &out.stacks {
        assert_eq!(st.first_frame, next);
        next += st.len() as u64;
        assert!(st.frames.iter().all(|f| f.len < SIG.len() * 2));
    }
    let decoded = decode(&out.stacks);
    assert_eq!(decoded.len(), FRAMES);
    let reference = reference();
    assert_frames_match(&decoded, &reference);
    let sum: u64 = decoded
        .iter()
        .flat_map(|(_, p)| p.iter())
        .map(|&v| u64::from(v))
        .sum();
    assert_eq!(sum, TOTAL_SUM);
}

#[test]
fn a_missing_frame_is_counted_lost_and_the_series_continues() {
    let c = capture();
    let mut msgs = sim_messages(&c);
    msgs.remove(2 + 5); // frame 5's whole message
    let (push, rx) = connect(|_| {});
    let sender = send_all(push, msgs);
    let out = collect(&rx);
    sender.join().unwrap();
    assert!(out.error.is_none());
    let s = out.summary.unwrap();
    assert_eq!((s.received, s.lost, s.damaged), (255, 1, 0));
    assert_eq!(s.validity.status(5), FrameStatus::Missing);
    assert_eq!(s.validity.status(6), FrameStatus::Received);
    assert_eq!(s.end, EndReason::AllFrames);
    let decoded = decode(&out.stacks);
    assert!(decoded.iter().all(|(i, _)| *i != 5));
    assert_frames_match(&decoded, &reference());
}

/// A consumer that drops its stacks receiver after taking the first 32 frames (a cancelled
/// pipeline): the frames sent after that are read and discarded, counted lost and never
/// received, so the validity map matches what was processed.
#[test]
fn frames_the_consumer_no_longer_takes_are_not_counted_received() {
    let c = capture();
    let mut msgs = sim_messages(&c);
    let n = c.frames.len() as u64;
    let rest = msgs.split_off(2 + 32);
    let (push, rx) = connect(|cfg| cfg.frames_per_stack = 32);
    let (go, gate) = crossbeam_channel::bounded::<()>(1);
    let sender = std::thread::spawn(move || {
        let push = send_all(push, msgs).join().unwrap();
        let _ = gate.recv_timeout(TIMEOUT);
        send_all(push, rest).join().unwrap()
    });
    let until = Instant::now() + TIMEOUT;
    let stacks = match rx.events().recv_deadline(until) {
        Ok(ReceiverEvent::Armed { stacks, .. }) => stacks,
        other => panic!("expected Armed, got {other:?}"),
    };
    let mut taken = 0;
    while taken < 32 {
        taken += stacks.recv_deadline(until).expect("the first frames").len();
    }
    drop(stacks);
    go.send(()).unwrap();
    let summary = loop {
        match rx.events().recv_deadline(until) {
            Ok(ReceiverEvent::Finished { summary, .. }) => break summary,
            Ok(ReceiverEvent::FirstFrame { .. }) => {}
            other => panic!("expected Finished, got {other:?}"),
        }
    };
    sender.join().unwrap();
    assert_eq!(
        (summary.received, summary.lost, summary.damaged),
        (32, n - 32, 0)
    );
    assert_eq!(summary.validity.received(), 32);
    assert_eq!(summary.validity.status(31), FrameStatus::Received);
    assert_eq!(summary.validity.status(32), FrameStatus::Missing);
}

#[test]
fn a_missing_frame_aborts_the_series_when_the_policy_says_so() {
    let c = capture();
    let mut msgs = sim_messages(&c);
    msgs.remove(2 + 5);
    let (push, rx) = connect(|c| c.on_lost = LossPolicy::Abort);
    let sender = send_all(push, msgs);
    let out = collect(&rx);
    let _ = sender.join();
    let e = out.error.expect("an error");
    assert!(
        matches!(e, DectrisError::FramesLost { from: 5, to: 6, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("frames 5..6 lost (1 frames)"), "{e}");
    let s = out.summary.unwrap();
    assert_eq!(s.received, 5);
    assert_eq!(s.end, EndReason::Failed);
}

#[test]
fn stale_messages_and_an_earlier_series_are_drained() {
    let c = capture();
    let stale_header = br#"{"htype":"dheader-1.0","header_detail":"basic","series":33}"#.to_vec();
    let mut msgs: Vec<Vec<Vec<u8>>> = vec![
        // Leftovers: the tail of a frame, a frame of series 33, its end.
        vec![c.frames[9][2].clone(), c.frames[9][3].clone()],
        vec![stale_header, c.config.clone()],
    ];
    for f in &c.frames[..3] {
        let mut f = f.to_vec();
        f[0] = String::from_utf8(f[0].clone())
            .unwrap()
            .replace("\"series\":34", "\"series\":33")
            .into_bytes();
        msgs.push(f);
    }
    msgs.push(vec![br#"{"htype":"dseries_end-1.0","series":33}"#.to_vec()]);
    msgs.extend(sim_messages(&c));
    let (push, rx) = connect(|c| c.series = SeriesFilter::Series(34));
    let sender = send_all(push, msgs);
    let out = collect(&rx);
    sender.join().unwrap();
    assert_eq!(out.header.series, 34);
    let s = out.summary.unwrap();
    assert_eq!((s.received, s.lost), (256, 0));
    assert_frames_match(&decode(&out.stacks), &reference());
}

#[test]
fn a_pending_filter_holds_the_header_until_the_series_id_is_known() {
    let c = capture();
    let (push, rx) = connect(|c| c.series = SeriesFilter::Pending);
    let sender = send_all(push, sim_messages(&c));
    std::thread::sleep(Duration::from_millis(100));
    assert!(rx.events().is_empty(), "header must be held while pending");
    rx.set_series_filter(SeriesFilter::Series(34));
    let out = collect(&rx);
    sender.join().unwrap();
    assert_eq!(out.summary.unwrap().received, 256);
}

#[test]
fn an_early_end_of_series_ends_it_with_the_rest_lost() {
    let c = capture();
    let mut msgs = sim_messages(&c);
    msgs.drain(2 + 100..2 + FRAMES);
    let (push, rx) = connect(|_| {});
    let sender = send_all(push, msgs);
    let out = collect(&rx);
    sender.join().unwrap();
    let s = out.summary.unwrap();
    assert_eq!(s.end, EndReason::SeriesEnd);
    assert_eq!((s.received, s.lost, s.damaged), (100, 156, 0));
    assert_eq!(s.validity.len(), 256);
    assert_eq!(s.validity.status(99), FrameStatus::Received);
    assert_eq!(s.validity.status(100), FrameStatus::Missing);
}

#[test]
fn silence_ends_the_series_at_the_inactivity_deadline() {
    let c = capture();
    let mut msgs = sim_messages(&c);
    msgs.truncate(2 + 10);
    let (push, rx) = connect(|c| c.frame_timeout = Duration::from_millis(200));
    let sender = send_all(push, msgs);
    let t0 = Instant::now();
    let out = collect(&rx);
    let _push = sender.join().unwrap();
    let s = out.summary.unwrap();
    assert_eq!(s.end, EndReason::InactivityDeadline);
    assert_eq!((s.received, s.lost), (10, 246));
    assert!(t0.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_repeated_frame_id_is_an_error_naming_both_ids() {
    let c = capture();
    let mut msgs = sim_messages(&c);
    let dup = msgs[2 + 1].clone();
    msgs.insert(2 + 3, dup); // frames 0 1 2 1 …
    let (push, rx) = connect(|_| {});
    let sender = send_all(push, msgs);
    let out = collect(&rx);
    let _ = sender.join();
    let e = out.error.expect("an error");
    assert!(
        matches!(
            e,
            DectrisError::FrameId {
                expected: 3,
                observed: 1,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("series 34"), "{e}");
    let s = out.summary.unwrap();
    assert_eq!((s.received, s.end), (3, EndReason::Failed));
    assert_eq!(
        decode(&out.stacks).len(),
        3,
        "frames before the error stay valid"
    );
}

#[test]
fn a_frame_of_another_series_inside_a_series_is_an_error() {
    let c = capture();
    let mut msgs = sim_messages(&c);
    msgs[2 + 4][0] = String::from_utf8(msgs[2 + 4][0].clone())
        .unwrap()
        .replace("\"series\":34", "\"series\":35")
        .into_bytes();
    let (push, rx) = connect(|_| {});
    let sender = send_all(push, msgs);
    let out = collect(&rx);
    let _ = sender.join();
    let e = out.error.expect("an error");
    assert!(
        e.to_string()
            .contains("expected frames of series 34, observed series 35 (frame 4)"),
        "{e}"
    );
}

#[test]
fn corrupt_blobs_are_counted_damaged_or_fail_to_decode() {
    let c = capture();
    let mut msgs = sim_messages(&c);
    // Frame 3: cut the blob (the announced size follows it): the framing check catches it.
    let blob = &mut msgs[2 + 3][2];
    blob.truncate(blob.len() - 100);
    let n = blob.len();
    msgs[2 + 3][1] = String::from_utf8(msgs[2 + 3][1].clone())
        .unwrap()
        .replace("\"size\":", &format!("\"size\":{n},\"was\":"))
        .into_bytes();
    // Frame 7: wrong `size` in dimage_d.
    msgs[2 + 7][1] = String::from_utf8(msgs[2 + 7][1].clone())
        .unwrap()
        .replace("\"size\":", "\"size\":1,\"was\":")
        .into_bytes();
    // Frame 9: malformed dimage_d.
    msgs[2 + 9][1] = br#"{"htype":"dimage_d-1.0","shape":[256],"type":"uint16"}"#.to_vec();
    // Frame 11: framing intact, LZ4 data scrambled: only decoding can tell.
    let b = &mut msgs[2 + 11][2];
    let block0 = u32::from_be_bytes(b[12..16].try_into().unwrap()) as usize;
    assert!(block0 > 8, "block 0 has {block0} bytes");
    for x in b[16..16 + block0.min(64)].iter_mut() {
        *x = 0xff;
    }
    let (push, rx) = connect(|_| {});
    let sender = send_all(push, msgs);
    let out = collect(&rx);
    sender.join().unwrap();
    assert!(out.error.is_none(), "{:?}", out.error);
    let s = out.summary.unwrap();
    assert_eq!((s.received, s.lost, s.damaged), (253, 0, 3));
    for i in [3, 7, 9] {
        assert_eq!(s.validity.status(i), FrameStatus::Damaged, "frame {i}");
    }
    // Frame 11 is delivered; decoding it is an error for that frame, naming the device.
    let st = out
        .stacks
        .iter()
        .find(|st| (st.first_frame..st.first_frame + st.len() as u64).contains(&11))
        .expect("frame 11 delivered");
    let i = (11 - st.first_frame) as usize;
    let mut px = vec![0u16; SIG.len()];
    let e = st
        .decoder
        .decode_into(st.payload(i), stemflow_core::frame::PixelsMut::U16(&mut px))
        .unwrap_err();
    assert!(matches!(e, DecodeError::Malformed { .. }), "{e}");
    assert!(e.to_string().starts_with("dectris @ 127.0.0.1:"), "{e}");
    let others: Vec<_> = out
        .stacks
        .iter()
        .filter(|st| !(st.first_frame..st.first_frame + st.len() as u64).contains(&11))
        .collect();
    let owned: Vec<RawStack> = others
        .into_iter()
        .map(|st| RawStack {
            first_frame: st.first_frame,
            frames: st.frames.clone(),
            buf: stemflow_core::pool::Pooled::unpooled(st.buf.to_vec()),
            decoder: st.decoder.clone(),
            first_received: st.first_received,
        })
        .collect();
    assert_frames_match(&decode(&owned), &reference());
}

#[test]
fn header_detail_all_in_one_multipart_message_and_none() {
    let c = capture();
    // `all`: 8 parts in one message, as a real DCU sends them (§2.4).
    let dheader = br#"{"htype":"dheader-1.0","header_detail":"all","series":34}"#.to_vec();
    let mut header = vec![dheader, c.config.clone()];
    for (h, len) in [
        (
            r#"{"htype":"dflatfield-1.0","shape":[256,256],"type":"float32"}"#,
            256 * 256 * 4,
        ),
        (
            r#"{"htype":"dpixelmask-1.0","shape":[256,256],"type":"uint32"}"#,
            256 * 256 * 4,
        ),
        (
            r#"{"htype":"dcountrate_table-1.0","shape":[2,1000],"type":"float32"}"#,
            8000,
        ),
    ] {
        header.push(h.as_bytes().to_vec());
        header.push(vec![0x7b; len]); // binary that starts like JSON, to be skipped by position
    }
    let mut msgs = vec![header];
    msgs.extend(c.frames[..].iter().map(|f| f.to_vec()));
    msgs.push(vec![c.end.clone()]);
    let (push, rx) = connect(|_| {});
    let sender = send_all(push, msgs);
    let out = collect(&rx);
    let push = sender.join().unwrap();
    assert_eq!(out.header.header_detail, Some(HeaderDetail::All));
    assert_eq!(out.summary.unwrap().received, 256);
    drop((push, rx));

    // `none`: no config, so no frame count; the end of series ends it.
    let none = br#"{"htype":"dheader-1.0","header_detail":"none","series":34}"#.to_vec();
    let mut msgs = vec![vec![none]];
    msgs.extend(c.frames[..20].iter().map(|f| f.to_vec()));
    msgs.push(vec![c.end.clone()]);
    let (push, rx) = connect(|_| {});
    let sender = send_all(push, msgs);
    let out = collect(&rx);
    sender.join().unwrap();
    assert_eq!(out.header.header_detail, Some(HeaderDetail::None));
    assert_eq!(out.header.expected_frames, 0);
    assert_eq!(out.header.sig_shape, None);
    let s = out.summary.unwrap();
    assert_eq!((s.expected, s.received, s.lost), (0, 20, 0));
    assert_eq!(s.end, EndReason::SeriesEnd);
    assert_frames_match(&decode(&out.stacks), &reference());
}

#[test]
fn a_malformed_header_config_is_an_error_naming_the_part() {
    let c = capture();
    let msgs = vec![
        vec![c.dheader.clone()],
        vec![b"{\"nimages\": \"one\"".to_vec()],
    ];
    let (push, rx) = connect(|_| {});
    let _sender = send_all(push, msgs);
    match rx.events().recv_timeout(TIMEOUT) {
        Ok(ReceiverEvent::Error { error, .. }) => {
            let m = error.to_string();
            assert!(m.contains("detector config: malformed JSON"), "{m}");
        }
        Ok(other) => panic!("unexpected {other:?}"),
        Err(e) => panic!("no error event: {e}"),
    }
}

#[test]
fn no_header_within_the_deadline_is_reported() {
    let (_push, rx) = connect(|c| c.header_timeout = Some(Duration::from_millis(100)));
    match rx.events().recv_timeout(TIMEOUT) {
        Ok(ReceiverEvent::Error { error, .. }) => {
            assert!(
                matches!(error, DectrisError::HeaderTimeout { .. }),
                "{error}"
            );
            assert!(error.to_string().contains("no series header"), "{error}");
        }
        other => panic!("expected a header timeout, got {other:?}"),
    }
}

#[test]
fn stream_v2_cbor_series_decodes_to_the_reference() {
    use ciborium::value::Value;
    let c = capture();
    let n = 40;
    let mut msgs = vec![vec![
        encode_v2(vec![
            ("type", Value::Text("start".into())),
            ("series_id", Value::Integer(7.into())),
            ("series_unique_id", Value::Text("u-7".into())),
            ("number_of_images", Value::Integer((n as u64).into())),
            ("image_size_x", Value::Integer(256.into())),
            ("image_size_y", Value::Integer(256.into())),
            ("image_dtype", Value::Text("uint16".into())),
            (
                "channels",
                Value::Array(vec![Value::Text("threshold_1".into())]),
            ),
        ])
        .unwrap(),
    ]];
    for (i, f) in c.frames[..n].iter().enumerate() {
        let arr = v2_array_value(SIG, DType::U16, Some("bslz4"), f[2].clone());
        msgs.push(vec![
            encode_v2(vec![
                ("type", Value::Text("image".into())),
                ("series_id", Value::Integer(7.into())),
                ("series_unique_id", Value::Text("u-7".into())),
                ("image_id", Value::Integer((i as u64).into())),
                (
                    "data",
                    Value::Map(vec![(Value::Text("threshold_1".into()), arr)]),
                ),
            ])
            .unwrap(),
        ]);
    }
    msgs.push(vec![
        encode_v2(vec![
            ("type", Value::Text("end".into())),
            ("series_id", Value::Integer(7.into())),
        ])
        .unwrap(),
    ]);
    let (push, rx) = connect_format(StreamFormat::Cbor, |_| {});
    let sender = send_all(push, msgs);
    let out = collect(&rx);
    sender.join().unwrap();
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.header.series, 7);
    assert_eq!(out.header.expected_frames, n as u64);
    assert_eq!(out.header.sig_shape, Some(SIG));
    let s = out.summary.unwrap();
    assert_eq!(
        (s.received, s.lost, s.end),
        (n as u64, 0, EndReason::AllFrames)
    );
    let decoded = decode(&out.stacks);
    assert_eq!(decoded.len(), n);
    assert_frames_match(&decoded, &reference());
}

/// Throughput of the receive path alone (socket → pooled stacks, no decoding) and of
/// decoding on one thread, on the capture's blobs repeated to 5120 frames. Ignored by
/// default (timing, not correctness): `cargo test -p stemflow-drivers --release --test
/// dectris_receiver -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput() {
    let c = capture();
    let reps = 20;
    let n = FRAMES * reps;
    let config = String::from_utf8(c.config.clone())
        .unwrap()
        .replace("\"ntrigger\":256", &format!("\"ntrigger\":{n}"));
    let mut msgs = vec![vec![c.dheader.clone()], vec![config.into_bytes()]];
    for i in 0..n {
        let f = &c.frames[i % FRAMES];
        let h = format!(r#"{{"htype":"dimage-1.0","series":34,"frame":{i},"hash":""}}"#);
        msgs.push(vec![
            h.into_bytes(),
            f[1].clone(),
            f[2].clone(),
            f[3].clone(),
        ]);
    }
    msgs.push(vec![c.end.clone()]);
    let bytes: usize = msgs.iter().flatten().map(Vec::len).sum();
    // Pass 1 drops each stack as it arrives; pass 2 decodes each one (one thread).
    for decode_too in [false, true] {
        let (push, rx) = connect(|_| {});
        let t0 = Instant::now();
        let sender = send_all(push, msgs.clone());
        let Ok(ReceiverEvent::Armed { stacks, .. }) = rx.events().recv_timeout(TIMEOUT) else {
            panic!("no header")
        };
        let mut tile = Tile::zeros(0, 0, SIG, DType::U16);
        let mut frames = 0;
        while let Ok(s) = stacks.recv_timeout(TIMEOUT) {
            let s = s.into_dense().expect("DECTRIS stacks are dense");
            if decode_too {
                tile.decode_from(&s).unwrap();
            }
            frames += s.len();
        }
        let secs = t0.elapsed().as_secs_f64();
        sender.join().unwrap();
        assert_eq!(frames, n);
        eprintln!(
            "{}: {n} frames ({:.1} MB compressed) in {secs:.3} s = {:.0} frames/s, {:.0} MB/s",
            if decode_too {
                "receive + decode (1 thread)"
            } else {
                "receive only"
            },
            bytes as f64 / 1e6,
            n as f64 / secs,
            bytes as f64 / 1e6 / secs
        );
    }
}

#[test]
fn a_closed_connection_ends_the_series_as_disconnected() {
    let c = capture();
    let mut msgs = sim_messages(&c);
    msgs.truncate(2 + 10);
    let (push, rx) = connect(|c| c.frame_timeout = Duration::from_secs(5));
    let sender = send_all(push, msgs);
    let push = sender.join().unwrap();
    // Give the receiver the frames, then close the DCU side.
    std::thread::sleep(Duration::from_millis(100));
    drop(push);
    let t0 = Instant::now();
    let out = collect(&rx);
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "must not wait for the frame deadline"
    );
    let s = out.summary.unwrap();
    assert_eq!(s.end, EndReason::Disconnected);
    assert_eq!((s.received, s.lost), (10, 246));
    // The thread ends with the connection.
    assert!(rx.events().recv_timeout(TIMEOUT).is_err());
}

#[test]
fn stop_ends_the_series_promptly() {
    let c = capture();
    let mut msgs = sim_messages(&c);
    msgs.truncate(2 + 10);
    let (push, rx) = connect(|c| c.frame_timeout = Duration::from_secs(30));
    let _push = send_all(push, msgs).join().unwrap();
    let Ok(ReceiverEvent::Armed { stacks, .. }) = rx.events().recv_timeout(TIMEOUT) else {
        panic!("no header")
    };
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    rx.stop();
    let mut frames = 0;
    while let Ok(s) = stacks.recv_timeout(TIMEOUT) {
        frames += s.len();
    }
    assert_eq!(frames, 10, "frames received before the stop are delivered");
    loop {
        match rx.events().recv_timeout(TIMEOUT) {
            Ok(ReceiverEvent::FirstFrame { .. }) => {}
            Ok(ReceiverEvent::Finished { summary, .. }) => {
                assert_eq!(summary.end, EndReason::Stopped);
                break;
            }
            other => panic!("expected Finished, got {other:?}"),
        }
    }
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t0.elapsed()
    );
}

/// A slow detector: the header and one frame, then silence. The receiver hands that frame
/// over while it waits (the consumer has finished every earlier stack and nothing more is in
/// the socket) instead of holding it until its stack of 32 fills; the other 255 frames
/// follow, every frame once, in order, decoding to the reference.
#[test]
fn a_frame_is_handed_over_when_no_next_frame_is_waiting() {
    let c = capture();
    let (mut push, rx) = connect(|cfg| cfg.frames_per_stack = 32);
    let msgs = sim_messages(&c);
    for m in &msgs[..3] {
        let parts: Vec<&[u8]> = m.iter().map(Vec::as_slice).collect();
        push.send(&parts).unwrap();
    }
    let stacks = match rx.events().recv_timeout(TIMEOUT) {
        Ok(ReceiverEvent::Armed { stacks, .. }) => stacks,
        other => panic!("expected Armed, got {other:?}"),
    };
    let first = stacks
        .recv_timeout(Duration::from_millis(400))
        .expect("frame 0 handed over while the detector is silent")
        .into_dense()
        .expect("DECTRIS stacks are dense");
    assert_eq!((first.first_frame, first.len()), (0, 1));
    let reference = reference();
    let mut decoded = decode(std::slice::from_ref(&first));
    drop(first);
    let sender = send_all(push, msgs[3..].to_vec());
    let until = Instant::now() + TIMEOUT;
    while let Ok(s) = stacks.recv_deadline(until) {
        let s = s.into_dense().expect("DECTRIS stacks are dense");
        decoded.extend(decode(std::slice::from_ref(&s)));
    }
    sender.join().unwrap();
    assert_eq!(
        decoded.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        (0..FRAMES as u64).collect::<Vec<_>>()
    );
    assert_frames_match(&decoded, &reference);
    loop {
        match rx.events().recv_deadline(until) {
            Ok(ReceiverEvent::Finished { summary, .. }) => {
                assert_eq!((summary.received, summary.lost), (256, 0));
                break;
            }
            Ok(ReceiverEvent::FirstFrame { .. }) => {}
            other => panic!("expected Finished, got {other:?}"),
        }
    }
}

/// The peak resident memory of this test process, bytes (Linux: `VmHWM`).
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// A first image announcing 65 536 × 65 536 uint16 pixels (8 GiB a frame): refused by the
/// receive memory budget before anything is allocated, the error naming the frame size and
/// the budget — not a 69 GB allocation.
#[test]
fn a_forged_image_shape_is_refused_within_the_memory_budget() {
    let c = capture();
    let mut msgs = sim_messages(&c);
    let part = String::from_utf8(msgs[2][1].clone()).unwrap();
    assert!(part.contains("[256,256]"), "{part}");
    msgs[2][1] = part.replace("[256,256]", "[65536,65536]").into_bytes();
    let (push, rx) = connect(|_| {});
    let t0 = Instant::now();
    let sender = send_all(push, msgs);
    let out = collect(&rx);
    let took = t0.elapsed();
    drop(rx);
    let _ = sender.join();
    let error = out
        .error
        .expect("a forged shape must end the series")
        .to_string();
    assert!(
        error.contains("memory budget") && error.contains("bytes per frame"),
        "{error}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    if let Some(peak) = peak_rss() {
        assert!(peak < 600 << 20, "peak resident memory {peak} bytes");
    }
}
