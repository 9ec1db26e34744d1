//! The Merlin data-port receiver against a scripted TCP server on 127.0.0.1:0 that writes
//! raw bytes: real recordings in MPX framing, and broken streams (corrupt prefix, wrong frame
//! size, truncation, sequence gaps, stalls, new headers, continuous mode, stalled consumer).

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use stemflow_core::frame::{PixelsRef, Tile};
use stemflow_core::validity::FrameStatus;
use stemflow_core::{DType, SigShape};
use stemflow_drivers::merlin::mpx::encode_message;
use stemflow_drivers::merlin::{
    AcquisitionSummary, EndReason, MerlinError, MerlinReceiver, MerlinReceiverConfig, MibFile,
    ReceiverEvent,
};

// ---------------------------------------------------------------------------------------
// Test data and the scripted server

fn data_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/merlin"
    ))
}

/// A recording as the data port carries it: the HDR payload and each frame (MQ1 header +
/// payload), not yet MPX-framed.
struct Recording {
    hdr: Vec<u8>,
    frames: Vec<Vec<u8>>,
    per_frame_sums: Vec<u64>,
}

fn recording(name: &str) -> Recording {
    let dir = data_dir().join("Merlin_Single_Quad");
    let hdr = std::fs::read(dir.join(format!("{name}.hdr"))).expect("hdr readable");
    let mut f = MibFile::open(dir.join(format!("{name}.mib"))).expect("mib opens");
    let n = f.frames() as usize;
    let fb = f.frame_bytes() as usize;
    let raw = f.read_raw(0, n).expect("frames readable").to_vec();
    let reference: Value =
        serde_json::from_slice(&std::fs::read(data_dir().join("reference.json")).unwrap()).unwrap();
    let per_frame_sums = reference[format!("{name}.mib")]["per_frame_sums"]
        .as_array()
        .expect("reference entry")
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    Recording {
        hdr,
        frames: raw.chunks_exact(fb).map(<[u8]>::to_vec).collect(),
        per_frame_sums,
    }
}

fn mpx(payload: &[u8]) -> Vec<u8> {
    encode_message(payload).expect("payload fits")
}

/// A frame with its sequence number rewritten (field 1, six digits at bytes 4–9).
fn renumbered(frame: &[u8], seq: u64) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[4..10].copy_from_slice(format!("{seq:06}").as_bytes());
    f
}

/// A minimal HDR announcing `frames` frames (0 = continuous).
fn hdr_with_frames(frames: u64) -> Vec<u8> {
    format!(
        "HDR,\nFrames in Acquisition (Number):\t{frames}\nFrames per Trigger (Number):\t1\nEnd\t"
    )
    .into_bytes()
}

enum Step {
    Send(Vec<u8>),
    /// Sends in chunks of this many bytes with a pause after each.
    SendSlowly(Vec<u8>, usize, Duration),
    Sleep(Duration),
    /// Waits until the test signals (or drops the sender), at most 10 s.
    WaitFor(crossbeam_channel::Receiver<()>),
    /// Keeps the connection open until the client closes it (at most 10 s).
    Hold,
}

/// Serves `steps` to the first client, then closes (unless the script ends with `Hold`).
fn serve(steps: Vec<Step>) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut conn = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
                Err(_) => return,
            }
        };
        conn.set_nonblocking(false).unwrap();
        conn.set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        for step in steps {
            let ok = match step {
                Step::Send(b) => conn.write_all(&b).is_ok(),
                Step::SendSlowly(b, chunk, pause) => b.chunks(chunk).all(|c| {
                    let ok = conn.write_all(c).is_ok();
                    std::thread::sleep(pause);
                    ok
                }),
                Step::Sleep(d) => {
                    std::thread::sleep(d);
                    true
                }
                Step::WaitFor(go) => {
                    let _ = go.recv_timeout(Duration::from_secs(10));
                    true
                }
                Step::Hold => {
                    conn.set_read_timeout(Some(Duration::from_secs(10)))
                        .unwrap();
                    let mut b = [0u8; 16];
                    let _ = conn.read(&mut b);
                    true
                }
            };
            if !ok {
                return;
            }
        }
    });
    (addr, handle)
}

fn config(addr: SocketAddr) -> MerlinReceiverConfig {
    MerlinReceiverConfig {
        device: format!("merlin @ {addr}"),
        data_addr: addr,
        connect_timeout: Duration::from_secs(2),
        header_timeout: Duration::from_secs(3),
        first_frame_timeout: Duration::from_secs(3),
        frame_timeout: Duration::from_secs(1),
        frames_per_stack: 4,
        pool_stacks: 4,
        expected_frames: None,
        drain: false,
        memory_budget: stemflow_drivers::receiver::DEFAULT_MEMORY_BUDGET,
    }
}

// ---------------------------------------------------------------------------------------
// Collecting what the receiver reports

/// What one acquisition delivered.
#[derive(Debug, Default)]
struct Acq {
    armed: bool,
    first: Option<(SigShape, DType)>,
    /// (first_frame, frames) of each stack, in order.
    stacks: Vec<(u64, usize)>,
    /// (frame index, pixel sum) of every delivered frame.
    frames: Vec<(u64, u64)>,
    summary: Option<AcquisitionSummary>,
}

#[derive(Debug, Default)]
struct Outcome {
    acqs: Vec<Acq>,
    error: Option<(MerlinError, Option<AcquisitionSummary>)>,
}

fn sum(p: PixelsRef<'_>) -> u64 {
    (0..p.len()).map(|i| p.get_f64(i) as u64).sum()
}

/// Consumes events and stacks until the event channel closes or `until` says so (checked
/// after each event) or `limit` passes; calls `on_frames` with the frames delivered so far.
fn collect(
    rx: &MerlinReceiver,
    limit: Duration,
    mut until: impl FnMut(&Outcome) -> bool,
) -> Outcome {
    let deadline = Instant::now() + limit;
    let mut out = Outcome::default();
    let mut channels: Vec<crossbeam_channel::Receiver<stemflow_core::csr::Stack>> = Vec::new();
    let mut tile = Tile::zeros(0, 0, SigShape::new(1, 1), DType::U8);
    loop {
        for (i, ch) in channels.iter().enumerate() {
            while let Ok(stack) = ch.try_recv() {
                let stack = stack.into_dense().expect("Merlin stacks are dense");
                tile.decode_from(&stack).expect("stack decodes");
                let acq = &mut out.acqs[i];
                acq.stacks.push((stack.first_frame, stack.len()));
                for k in 0..stack.len() {
                    acq.frames
                        .push((stack.first_frame + k as u64, sum(tile.frame(k))));
                }
            }
        }
        match rx.events().recv_timeout(Duration::from_millis(5)) {
            Ok(ReceiverEvent::Armed {
                acquisition,
                stacks,
                ..
            }) => {
                assert_eq!(
                    acquisition as usize,
                    out.acqs.len(),
                    "acquisitions numbered in order"
                );
                out.acqs.push(Acq {
                    armed: true,
                    ..Acq::default()
                });
                channels.push(stacks);
            }
            Ok(ReceiverEvent::FirstFrame {
                acquisition,
                sig_shape,
                dtype,
                ..
            }) => {
                out.acqs[acquisition as usize].first = Some((sig_shape, dtype));
            }
            Ok(ReceiverEvent::Finished {
                acquisition,
                summary,
            }) => {
                let i = acquisition as usize;
                // The stacks channel is closed before Finished: drain it completely.
                while let Ok(stack) = channels[i].recv_timeout(Duration::from_millis(100)) {
                    let stack = stack.into_dense().expect("Merlin stacks are dense");
                    tile.decode_from(&stack).expect("stack decodes");
                    out.acqs[i].stacks.push((stack.first_frame, stack.len()));
                    for k in 0..stack.len() {
                        out.acqs[i]
                            .frames
                            .push((stack.first_frame + k as u64, sum(tile.frame(k))));
                    }
                }
                assert!(channels[i].is_empty());
                out.acqs[i].summary = Some(summary);
            }
            Ok(ReceiverEvent::Error { error, summary }) => {
                for (i, ch) in channels.iter().enumerate() {
                    while let Ok(stack) = ch.try_recv() {
                        out.acqs[i].stacks.push((stack.first_frame(), stack.len()));
                        for k in 0..stack.len() {
                            out.acqs[i].frames.push((stack.first_frame() + k as u64, 0));
                        }
                    }
                }
                out.error = Some((error, summary));
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return out,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
        }
        if until(&out) || Instant::now() >= deadline {
            return out;
        }
    }
}

/// HDR + all frames of `rec`, MPX-framed.
fn acquisition_bytes(rec: &Recording) -> Vec<u8> {
    let mut b = mpx(&rec.hdr);
    for f in &rec.frames {
        b.extend(mpx(f));
    }
    b
}

// ---------------------------------------------------------------------------------------
// Tests

/// Three real recordings (U16 single, raw 1-bit quad, U32 quad) as three acquisitions on one
/// connection: every frame arrives in order, decodes to the reference sums, in contiguous
/// stacks; the frame size changes between acquisitions.
#[test]
fn real_recordings_as_multiple_acquisitions_on_one_connection() {
    let names = [
        "Single_9_Frame_CounterDepth_12_Rows_256",
        "Quad_9_Frame_CounterDepth_1_Rows_256RAW",
        "Quad_9_Frame_CounterDepth_24_Rows_256",
    ];
    let recs: Vec<Recording> = names.iter().map(|n| recording(n)).collect();
    let steps = recs
        .iter()
        .map(|r| Step::Send(acquisition_bytes(r)))
        .collect();
    let (addr, server) = serve(steps);
    let rx = MerlinReceiver::start(config(addr)).expect("connects");
    let out = collect(&rx, Duration::from_secs(10), |_| false);
    server.join().unwrap();

    assert_eq!(out.acqs.len(), 3);
    let shapes = [
        (SigShape::new(256, 256), DType::U16),
        (SigShape::new(512, 512), DType::U8),
        (SigShape::new(512, 512), DType::U32),
    ];
    for ((acq, rec), shape) in out.acqs.iter().zip(&recs).zip(shapes) {
        assert!(acq.armed);
        assert_eq!(acq.first, Some(shape));
        assert_eq!(
            acq.stacks,
            vec![(0, 4), (4, 4), (8, 1)],
            "stacks of 4 consecutive frames"
        );
        let got: Vec<u64> = acq.frames.iter().map(|&(_, s)| s).collect();
        assert_eq!(
            got, rec.per_frame_sums,
            "frames decode to the reference sums"
        );
        let s = acq.summary.as_ref().expect("finished");
        assert_eq!(
            (s.expected, s.received, s.lost, s.damaged, s.end),
            (9, 9, 0, 0, EndReason::AllFrames)
        );
        assert_eq!(s.validity.codes(), &[1u8; 9]);
    }
    // The server closed the connection after the last acquisition.
    assert!(
        matches!(out.error, Some((MerlinError::Closed { .. }, None))),
        "{:?}",
        out.error
    );
}

/// Bytes that are not an MPX prefix end the connection with an error showing them.
#[test]
fn corrupt_mpx_prefix_is_fatal_and_shows_the_bytes() {
    let (addr, server) = serve(vec![
        Step::Send(b"GARBAGEGARBAGEGARBAGE".repeat(10)),
        Step::Hold,
    ]);
    let rx = MerlinReceiver::start(config(addr)).unwrap();
    let out = collect(&rx, Duration::from_secs(5), |o| o.error.is_some());
    let (err, summary) = out.error.expect("error reported");
    assert!(matches!(err, MerlinError::Mpx { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("GARBAGEGARBAGE") && text.contains(&addr.to_string()),
        "{text}"
    );
    assert!(summary.is_none());
    drop(rx);
    server.join().unwrap();
}

/// With `drain`, stale bytes before the HDR are discarded (until 100 ms of silence).
#[test]
fn drain_discards_stale_bytes_before_the_header() {
    let rec = recording("Single_1_Frame_CounterDepth_6_Rows_256");
    let (addr, server) = serve(vec![
        Step::Send(b"GARBAGE".repeat(3000)),
        Step::Sleep(Duration::from_millis(400)),
        Step::Send(acquisition_bytes(&rec)),
    ]);
    let mut cfg = config(addr);
    cfg.drain = true;
    let rx = MerlinReceiver::start(cfg).unwrap();
    let out = collect(&rx, Duration::from_secs(5), |_| false);
    server.join().unwrap();
    let s = out.acqs[0].summary.as_ref().expect("finished");
    assert_eq!((s.received, s.end), (1, EndReason::AllFrames));
    assert_eq!(out.acqs[0].frames[0].1, rec.per_frame_sums[0]);
}

/// A frame of the wrong size with its MPX framing intact: counted damaged and skipped, the
/// acquisition goes on and ends with every other frame received (as a DECTRIS image that
/// fails to decode), the frames after it delivered with their own pixels.
#[test]
fn a_frame_of_the_wrong_size_is_damaged_and_the_stream_goes_on() {
    let rec = recording("Single_9_Frame_CounterDepth_6_Rows_256");
    let mut bytes = mpx(&rec.hdr);
    for (i, f) in rec.frames.iter().enumerate() {
        if i == 2 {
            let mut bigger = f.clone();
            bigger.extend([0u8; 8]);
            bytes.extend(mpx(&bigger));
        } else {
            bytes.extend(mpx(f));
        }
    }
    let (addr, server) = serve(vec![Step::Send(bytes), Step::Hold]);
    let rx = MerlinReceiver::start(config(addr)).unwrap();
    let out = collect(&rx, Duration::from_secs(5), |o| {
        o.acqs.first().is_some_and(|a| a.summary.is_some()) || o.error.is_some()
    });
    assert!(
        out.error.is_none(),
        "{:?}",
        out.error.as_ref().map(|e| e.0.to_string())
    );
    let acq = &out.acqs[0];
    let s = acq.summary.as_ref().expect("the acquisition ended");
    assert_eq!(
        (s.expected, s.received, s.damaged, s.lost, s.end),
        (9, 8, 1, 0, EndReason::AllFrames)
    );
    assert_eq!(s.validity.status(2), FrameStatus::Damaged);
    let got: Vec<(u64, u64)> = acq.frames.clone();
    let want: Vec<(u64, u64)> = (0..9u64)
        .filter(|&i| i != 2)
        .map(|i| (i, rec.per_frame_sums[i as usize]))
        .collect();
    assert_eq!(
        got, want,
        "the frames after the bad one keep their own pixels"
    );
    drop(rx);
    server.join().unwrap();
}

/// A frame whose MPX length is implausible (more than twice the acquisition's frames): the
/// stream is not trusted further — an error naming the expected and observed bytes,
/// earlier frames delivered, the bad one damaged, the rest lost.
#[test]
fn an_implausible_frame_length_names_expected_and_observed_bytes() {
    let rec = recording("Single_9_Frame_CounterDepth_6_Rows_256");
    let mut bytes = mpx(&rec.hdr);
    for f in &rec.frames[..2] {
        bytes.extend(mpx(f));
    }
    let mut huge = rec.frames[2].clone();
    huge.extend(vec![0u8; 3 * huge.len()]);
    bytes.extend(mpx(&huge));
    let (addr, server) = serve(vec![Step::Send(bytes), Step::Hold]);
    let rx = MerlinReceiver::start(config(addr)).unwrap();
    let out = collect(&rx, Duration::from_secs(5), |o| o.error.is_some());
    let (err, summary) = out.error.expect("error reported");
    let frame_len = (384 + 65536) as u64;
    match &err {
        MerlinError::FrameSize {
            expected,
            observed,
            sequence,
            ..
        } => {
            assert_eq!(
                (*expected, *observed, *sequence),
                (frame_len, 4 * frame_len, 3)
            );
        }
        other => panic!("expected FrameSize, got {other}"),
    }
    let s = summary.expect("summary of the acquisition in progress");
    assert_eq!(
        (s.expected, s.received, s.damaged, s.lost, s.end),
        (9, 2, 1, 6, EndReason::Failed)
    );
    assert_eq!(
        out.acqs[0].frames.len(),
        2,
        "frames before the error are delivered"
    );
    drop(rx);
    server.join().unwrap();
}

/// EOF inside a frame: error naming bytes expected and received; the cut frame is damaged.
#[test]
fn truncated_stream_names_bytes_and_counts_the_frame() {
    let rec = recording("Single_9_Frame_CounterDepth_1_Rows_256");
    let mut bytes = mpx(&rec.hdr);
    for f in &rec.frames[..3] {
        bytes.extend(mpx(f));
    }
    let fourth = mpx(&rec.frames[3]);
    bytes.extend(&fourth[..1000]);
    let (addr, server) = serve(vec![Step::Send(bytes)]);
    let rx = MerlinReceiver::start(config(addr)).unwrap();
    let out = collect(&rx, Duration::from_secs(5), |_| false);
    server.join().unwrap();
    let (err, summary) = out.error.expect("error reported");
    match &err {
        MerlinError::Truncated {
            expected,
            received,
            what,
            ..
        } => {
            assert_eq!((*expected, *received), (fourth.len() as u64, 1000));
            assert_eq!(what, "frame 4");
        }
        other => panic!("expected Truncated, got {other}"),
    }
    let s = summary.expect("summary");
    assert_eq!((s.received, s.damaged, s.lost), (3, 1, 5));
    assert_eq!(s.validity.codes(), &[1, 1, 1, 2, 0, 0, 0, 0, 0]);
}

/// A sequence gap closes the stack, marks the skipped frames lost and goes on.
#[test]
fn sequence_gap_marks_lost_frames_and_restarts_the_stack() {
    let rec = recording("Single_9_Frame_CounterDepth_12_Rows_256");
    let mut bytes = mpx(&rec.hdr);
    for (i, f) in rec.frames.iter().enumerate() {
        if i == 3 || i == 4 {
            continue; // frames with sequence 4 and 5 never arrive
        }
        bytes.extend(mpx(f));
    }
    let (addr, server) = serve(vec![Step::Send(bytes), Step::Hold]);
    let rx = MerlinReceiver::start(config(addr)).unwrap();
    let out = collect(&rx, Duration::from_secs(5), |o| {
        o.acqs.first().is_some_and(|a| a.summary.is_some())
    });
    let acq = &out.acqs[0];
    let s = acq.summary.as_ref().unwrap();
    assert_eq!(
        (s.received, s.lost, s.damaged, s.end),
        (7, 2, 0, EndReason::AllFrames)
    );
    assert_eq!(s.validity.codes(), &[1, 1, 1, 0, 0, 1, 1, 1, 1]);
    let end = s.to_acquisition_end(None);
    assert_eq!(
        (end.received, end.lost, end.reason.as_str()),
        (7, 2, "all frames")
    );
    assert_eq!(acq.stacks, vec![(0, 3), (5, 4)], "the gap closes the stack");
    let sums: Vec<(u64, u64)> = [0usize, 1, 2, 5, 6, 7, 8]
        .iter()
        .map(|&i| (i as u64, rec.per_frame_sums[i]))
        .collect();
    assert_eq!(acq.frames, sums, "frames keep their acquisition index");
    drop(rx);
    server.join().unwrap();
}

/// No frame for longer than the frame timeout ends the acquisition; the rest is lost.
#[test]
fn inactivity_deadline_ends_a_stalled_acquisition() {
    let rec = recording("Single_9_Frame_CounterDepth_6_Rows_256");
    let mut bytes = mpx(&rec.hdr);
    for f in &rec.frames[..3] {
        bytes.extend(mpx(f));
    }
    let (addr, server) = serve(vec![Step::Send(bytes), Step::Hold]);
    let mut cfg = config(addr);
    cfg.frame_timeout = Duration::from_millis(200);
    let rx = MerlinReceiver::start(cfg).unwrap();
    let t0 = Instant::now();
    let out = collect(&rx, Duration::from_secs(5), |o| {
        o.acqs.first().is_some_and(|a| a.summary.is_some())
    });
    let took = t0.elapsed();
    let s = out.acqs[0].summary.as_ref().expect("finished");
    assert_eq!(
        (s.received, s.lost, s.end),
        (3, 6, EndReason::InactivityDeadline)
    );
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(2),
        "{took:?}"
    );
    // Still connected, waiting for the next HDR: stop ends it promptly.
    let t1 = Instant::now();
    rx.stop();
    rx.join();
    assert!(t1.elapsed() < Duration::from_millis(500));
    server.join().unwrap();
}

/// The detector actor's disarm (`end_acquisition`) ends an acquisition whose stream went
/// quiet as `Disarmed` at once, not at the 5 s inactivity deadline: the frames received
/// are kept, the rest lost. The connection stays up: a frame of the stopped acquisition
/// that comes late is skipped as stale, and the next acquisition is received whole.
#[test]
fn end_acquisition_ends_a_quiet_acquisition_and_the_next_one_runs() {
    let rec = recording("Single_9_Frame_CounterDepth_6_Rows_256");
    let mut first = mpx(&rec.hdr);
    for f in &rec.frames[..3] {
        first.extend(mpx(f));
    }
    // Frame 4 arrives late; without the end request it would still belong to the first
    // acquisition, which would then end on the new HDR.
    let mut later = mpx(&rec.frames[3]);
    later.extend(acquisition_bytes(&rec));
    let (addr, server) = serve(vec![
        Step::Send(first),
        Step::Sleep(Duration::from_secs(3)),
        Step::Send(later),
        Step::Hold,
    ]);
    let mut cfg = config(addr);
    cfg.frame_timeout = Duration::from_secs(5);
    let rx = MerlinReceiver::start(cfg).unwrap();
    let mut asked: Option<Instant> = None;
    let mut ended_after: Option<Duration> = None;
    let out = collect(&rx, Duration::from_secs(10), |o| {
        if asked.is_none() && o.acqs.first().is_some_and(|a| a.frames.len() == 3) {
            rx.end_acquisition();
            asked = Some(Instant::now());
        }
        if ended_after.is_none() && o.acqs.first().is_some_and(|a| a.summary.is_some()) {
            ended_after = asked.map(|t| t.elapsed());
        }
        o.acqs.get(1).is_some_and(|a| a.summary.is_some())
    });
    let s0 = out.acqs[0]
        .summary
        .as_ref()
        .expect("first acquisition ended");
    assert_eq!((s0.received, s0.lost, s0.end), (3, 6, EndReason::Disarmed));
    assert_eq!(s0.to_acquisition_end(None).reason, "disarmed");
    let took = ended_after.expect("ended after the request");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(out.acqs.len(), 2, "{:?}", out.error);
    let s1 = out.acqs[1].summary.as_ref().unwrap();
    assert_eq!((s1.received, s1.lost, s1.end), (9, 0, EndReason::AllFrames));
    let sums: Vec<u64> = out.acqs[1].frames.iter().map(|&(_, s)| s).collect();
    assert_eq!(sums, rec.per_frame_sums);
    drop(rx);
    server.join().unwrap();
}

/// A consumer that drops its stacks receiver after taking the first 4 frames (a cancelled
/// pipeline): the 5 frames sent after that are read and discarded, counted lost and never
/// received, so the validity map matches what was processed.
#[test]
fn frames_the_consumer_no_longer_takes_are_not_counted_received() {
    let rec = recording("Single_9_Frame_CounterDepth_6_Rows_256");
    let mut head = mpx(&rec.hdr);
    for f in &rec.frames[..4] {
        head.extend(mpx(f));
    }
    let rest: Vec<u8> = rec.frames[4..].iter().flat_map(|f| mpx(f)).collect();
    let (go, gate) = crossbeam_channel::bounded::<()>(1);
    let (addr, server) = serve(vec![
        Step::Send(head),
        Step::WaitFor(gate),
        Step::Send(rest),
        Step::Hold,
    ]);
    let rx = MerlinReceiver::start(config(addr)).unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    let stacks = loop {
        match rx.events().recv_deadline(until) {
            Ok(ReceiverEvent::Armed { stacks, .. }) => break stacks,
            Ok(ReceiverEvent::FirstFrame { .. }) => {}
            other => panic!("expected Armed, got {other:?}"),
        }
    };
    let mut taken = 0;
    while taken < 4 {
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
    assert_eq!(
        (summary.received, summary.lost, summary.damaged, summary.end),
        (4, 5, 0, EndReason::AllFrames)
    );
    assert_eq!(summary.validity.status(3), FrameStatus::Received);
    assert_eq!(summary.validity.status(4), FrameStatus::Missing);
    drop(rx);
    server.join().unwrap();
}

/// An HDR, then no frame within the first-frame timeout: every frame lost.
#[test]
fn first_frame_timeout_loses_every_frame() {
    let rec = recording("Single_9_Frame_CounterDepth_6_Rows_256");
    let (addr, server) = serve(vec![Step::Send(mpx(&rec.hdr)), Step::Hold]);
    let mut cfg = config(addr);
    cfg.first_frame_timeout = Duration::from_millis(150);
    let rx = MerlinReceiver::start(cfg).unwrap();
    let out = collect(&rx, Duration::from_secs(5), |o| {
        o.acqs.first().is_some_and(|a| a.summary.is_some())
    });
    let acq = &out.acqs[0];
    assert!(acq.armed && acq.first.is_none());
    let s = acq.summary.as_ref().unwrap();
    assert_eq!(
        (s.received, s.lost, s.end),
        (0, 9, EndReason::InactivityDeadline)
    );
    drop(rx);
    server.join().unwrap();
}

/// No HDR within the header timeout: an error saying so.
#[test]
fn header_timeout_is_reported() {
    let (addr, server) = serve(vec![Step::Hold]);
    let mut cfg = config(addr);
    cfg.header_timeout = Duration::from_millis(150);
    let rx = MerlinReceiver::start(cfg).unwrap();
    let out = collect(&rx, Duration::from_secs(5), |o| o.error.is_some());
    let (err, _) = out.error.expect("error");
    assert!(matches!(err, MerlinError::HeaderTimeout { .. }), "{err}");
    assert!(err.to_string().contains("HDR"));
    drop(rx);
    server.join().unwrap();
}

/// A new HDR while frames are expected ends the previous acquisition (rest lost) and starts
/// the next; stale frames between acquisitions are skipped.
#[test]
fn new_header_ends_the_previous_acquisition() {
    let rec = recording("Single_9_Frame_CounterDepth_1_Rows_256");
    let mut bytes = mpx(&rec.hdr);
    for f in &rec.frames[..3] {
        bytes.extend(mpx(f));
    }
    bytes.extend(acquisition_bytes(&rec));
    // Two stale frames after the second acquisition, then a third one.
    bytes.extend(mpx(&rec.frames[0]));
    bytes.extend(mpx(&rec.frames[1]));
    bytes.extend(acquisition_bytes(&rec));
    let (addr, server) = serve(vec![Step::Send(bytes)]);
    let rx = MerlinReceiver::start(config(addr)).unwrap();
    let out = collect(&rx, Duration::from_secs(5), |_| false);
    server.join().unwrap();
    assert_eq!(out.acqs.len(), 3);
    let s0 = out.acqs[0].summary.as_ref().unwrap();
    assert_eq!((s0.received, s0.lost, s0.end), (3, 6, EndReason::NewHeader));
    for acq in &out.acqs[1..] {
        let s = acq.summary.as_ref().unwrap();
        assert_eq!((s.received, s.lost, s.end), (9, 0, EndReason::AllFrames));
        assert_eq!(acq.frames.len(), 9);
    }
}

/// Continuous mode (`Frames in Acquisition` 0, sequence numbers running on across the
/// repeated recording): frames flow until stop, which ends the acquisition promptly; the
/// summary counts what arrived and nothing is lost.
#[test]
fn continuous_acquisition_runs_until_stop() {
    let rec = recording("Single_9_Frame_CounterDepth_6_Rows_256");
    let mut bytes = mpx(&hdr_with_frames(0));
    for seq in 1..=20u64 {
        bytes.extend(mpx(&renumbered(&rec.frames[(seq as usize - 1) % 9], seq)));
    }
    let (addr, server) = serve(vec![Step::Send(bytes), Step::Hold]);
    let mut cfg = config(addr);
    cfg.frame_timeout = Duration::from_secs(5);
    let rx = MerlinReceiver::start(cfg).unwrap();
    let mut stopped_at = None;
    let out = collect(&rx, Duration::from_secs(5), |o| {
        if stopped_at.is_none() && o.acqs.first().is_some_and(|a| a.frames.len() == 20) {
            rx.stop();
            stopped_at = Some(Instant::now());
        }
        false
    });
    let latency = stopped_at.expect("all frames seen").elapsed();
    assert!(latency < Duration::from_secs(1), "{latency:?}");
    let s = out.acqs[0].summary.as_ref().expect("finished after stop");
    assert_eq!(
        (s.expected, s.received, s.lost, s.end),
        (0, 20, 0, EndReason::Stopped)
    );
    assert_eq!(s.validity.len(), 20);
    assert!(out.error.is_none(), "stop is not an error");
    for (i, &(index, sum)) in out.acqs[0].frames.iter().enumerate() {
        assert_eq!(
            (index, sum),
            (i as u64, rec.per_frame_sums[i % 9]),
            "frame {i}"
        );
    }
    drop(rx);
    server.join().unwrap();
}

/// Frames trickling in small pieces, with pauses longer than the receiver's socket poll:
/// partial reads across read timeouts keep the stream position.
#[test]
fn slow_chunks_across_read_timeouts_keep_stream_position() {
    let rec = recording("Single_1_Frame_CounterDepth_12_Rows_256");
    let bytes = acquisition_bytes(&rec);
    let (addr, server) = serve(vec![Step::SendSlowly(
        bytes,
        20_000,
        Duration::from_millis(25),
    )]);
    let rx = MerlinReceiver::start(config(addr)).unwrap();
    let out = collect(&rx, Duration::from_secs(5), |_| false);
    server.join().unwrap();
    let acq = &out.acqs[0];
    assert_eq!(acq.summary.as_ref().unwrap().end, EndReason::AllFrames);
    assert_eq!(acq.frames, vec![(0, rec.per_frame_sums[0])]);
}

/// A consumer that takes no stacks: once the pool is exhausted the receiver waits at most
/// the frame timeout, then fails naming the pool (no hang).
#[test]
fn stalled_consumer_exhausts_the_pool_with_an_error() {
    let rec = recording("Single_9_Frame_CounterDepth_6_Rows_256");
    let (addr, server) = serve(vec![Step::Send(acquisition_bytes(&rec)), Step::Hold]);
    let mut cfg = config(addr);
    cfg.frames_per_stack = 1;
    cfg.pool_stacks = 2;
    cfg.frame_timeout = Duration::from_millis(200);
    let rx = MerlinReceiver::start(cfg).unwrap();
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let err = loop {
        assert!(Instant::now() < deadline, "no error reported");
        match rx.events().recv_timeout(Duration::from_millis(50)) {
            // Keep the stacks channel alive but never read it.
            Ok(ReceiverEvent::Armed { stacks, .. }) => held.push(stacks),
            Ok(ReceiverEvent::Error { error, summary }) => break (error, summary),
            _ => {}
        }
    };
    let (error, summary) = err;
    assert!(matches!(error, MerlinError::Pool { .. }), "{error}");
    assert!(error.to_string().contains("frame stacks"), "{error}");
    let s = summary.expect("summary");
    assert_eq!(s.received, 2, "two stacks of one frame were delivered");
    assert_eq!(held[0].len(), 2);
    drop(rx);
    server.join().unwrap();
}

/// A sequence number that goes backwards is a protocol error naming both numbers.
#[test]
fn backwards_sequence_is_an_error() {
    let rec = recording("Single_9_Frame_CounterDepth_6_Rows_256");
    let mut bytes = mpx(&rec.hdr);
    bytes.extend(mpx(&rec.frames[0]));
    bytes.extend(mpx(&rec.frames[1]));
    bytes.extend(mpx(&rec.frames[1]));
    let (addr, server) = serve(vec![Step::Send(bytes), Step::Hold]);
    let rx = MerlinReceiver::start(config(addr)).unwrap();
    let out = collect(&rx, Duration::from_secs(5), |o| o.error.is_some());
    let (err, _) = out.error.expect("error");
    assert!(
        matches!(
            err,
            MerlinError::Sequence {
                expected: 3,
                observed: 2,
                ..
            }
        ),
        "{err}"
    );
    drop(rx);
    server.join().unwrap();
}

/// `expected_frames` overrides the HDR count (e.g. a scan of 4 positions of a 9-frame HDR).
#[test]
fn expected_frames_override_the_header() {
    let rec = recording("Single_9_Frame_CounterDepth_6_Rows_256");
    let mut bytes = mpx(&rec.hdr);
    for f in &rec.frames[..4] {
        bytes.extend(mpx(f));
    }
    let (addr, server) = serve(vec![Step::Send(bytes), Step::Hold]);
    let mut cfg = config(addr);
    cfg.expected_frames = Some(4);
    let rx = MerlinReceiver::start(cfg).unwrap();
    let out = collect(&rx, Duration::from_secs(5), |o| {
        o.acqs.first().is_some_and(|a| a.summary.is_some())
    });
    let s = out.acqs[0].summary.as_ref().unwrap();
    assert_eq!(
        (s.expected, s.received, s.lost, s.end),
        (4, 4, 0, EndReason::AllFrames)
    );
    drop(rx);
    server.join().unwrap();
}

/// An absurd frame count in the HDR is refused instead of sizing a validity map for it.
#[test]
fn absurd_frame_count_is_refused() {
    let (addr, server) = serve(vec![Step::Send(mpx(&hdr_with_frames(1 << 40))), Step::Hold]);
    let rx = MerlinReceiver::start(config(addr)).unwrap();
    let out = collect(&rx, Duration::from_secs(5), |o| o.error.is_some());
    let (err, _) = out.error.expect("error");
    assert!(
        matches!(err, MerlinError::TooManyFrames { frames, .. } if frames == 1 << 40),
        "{err}"
    );
    assert!(out.acqs.is_empty(), "never reported armed");
    drop(rx);
    server.join().unwrap();
}

/// Connecting to a port nobody listens on fails within the deadline.
#[test]
fn connect_failure_is_reported() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let err = MerlinReceiver::start(config(addr)).unwrap_err();
    assert!(matches!(err, MerlinError::Connect { .. }), "{err}");
    assert!(err.to_string().contains(&addr.to_string()));
}

/// A slow detector: one frame, then nothing for 600 ms. The receiver hands the frame over
/// while it waits for the next (the consumer is idle and nothing more is in the socket)
/// instead of holding it until the stack of 4 fills; the later frames follow, every frame
/// once, in order.
#[test]
fn a_frame_is_handed_over_when_no_next_frame_is_waiting() {
    let rec = recording("Single_9_Frame_CounterDepth_6_Rows_256");
    let mut first = mpx(&rec.hdr);
    first.extend(mpx(&rec.frames[0]));
    let rest: Vec<u8> = rec.frames[1..].iter().flat_map(|f| mpx(f)).collect();
    let (addr, server) = serve(vec![
        Step::Send(first),
        Step::Sleep(Duration::from_millis(600)),
        Step::Send(rest),
    ]);
    let t0 = Instant::now();
    let rx = MerlinReceiver::start(config(addr)).unwrap();
    // When the first stack had come, and what it held.
    let mut first_stack = None;
    let out = collect(&rx, Duration::from_secs(5), |o| {
        if first_stack.is_none()
            && let Some(s) = o.acqs.first().and_then(|a| a.stacks.first())
        {
            first_stack = Some((*s, t0.elapsed()));
        }
        o.acqs.first().is_some_and(|a| a.summary.is_some())
    });
    server.join().unwrap();
    let (stack, waited) = first_stack.expect("a stack came");
    assert_eq!(stack, (0, 1), "{out:?}");
    assert!(
        waited < Duration::from_millis(450),
        "the first frame came {waited:?} after the start, not before the next frames"
    );
    let acq = &out.acqs[0];
    assert_eq!(
        acq.frames,
        rec.per_frame_sums
            .iter()
            .enumerate()
            .map(|(i, &s)| (i as u64, s))
            .collect::<Vec<_>>()
    );
    assert_eq!(acq.summary.as_ref().unwrap().end, EndReason::AllFrames);
}

/// A first frame whose MQ1 header declares 16384 × 16000 pixels of U32 (1 GB, with an MPX
/// length to match): the receive pool is not sized from it. The acquisition ends at once
/// with an error naming the frame size and the memory budget, before anything that large
/// is allocated, and every frame of the acquisition is accounted for.
#[test]
fn a_forged_frame_size_is_refused_within_the_memory_budget() {
    let rec = recording("Single_9_Frame_CounterDepth_6_Rows_256");
    let head = String::from_utf8_lossy(&rec.frames[0][..384]).into_owned();
    let forged = head.replacen(",0256,0256,U08,", ",16384,16000,U32,", 1);
    assert_ne!(forged, head, "the header layout changed");
    // Two characters longer: take them from the zero padding so the header stays 384 bytes.
    let mut header = forged.into_bytes();
    header.truncate(384);
    let payload_len: u64 = 16384 * 16000 * 4;
    let mut bytes = mpx(&rec.hdr);
    bytes.extend(format!("MPX,{:010},", 384 + payload_len + 1).into_bytes());
    bytes.extend(&header);
    let (addr, server) = serve(vec![Step::Send(bytes), Step::Hold]);
    let t0 = Instant::now();
    let rx = MerlinReceiver::start(config(addr)).unwrap();
    let out = collect(&rx, Duration::from_secs(5), |o| o.error.is_some());
    let (err, summary) = out.error.expect("error reported");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t0.elapsed()
    );
    assert!(matches!(err, MerlinError::Budget { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&payload_len.to_string())
            && text.contains(&stemflow_drivers::receiver::DEFAULT_MEMORY_BUDGET.to_string()),
        "{text}"
    );
    let s = summary.expect("summary of the acquisition");
    assert_eq!(s.received, 0);
    assert_eq!(s.expected, s.lost + s.damaged, "{s:?}");
    drop(rx);
    server.join().unwrap();
}
