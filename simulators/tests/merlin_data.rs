//! Data-channel behaviour of the Merlin simulator (protocols.md §1.4–1.7): HDR at arm,
//! triggered frames, continuous mode, re-arm, recording replay, pixel encodings and faults.

mod common;

use common::*;
use std::time::{Duration, Instant};
use stemflow_core::devices::{ScanEngine, ScanSettings, TriggerOutput, trigger_line};
use stemflow_core::{NavShape, SigShape};
use stemflow_simulators::merlin::{MerlinFaults, MerlinSimConfig, MerlinSource, Pacing};
use stemflow_simulators::scan::{ScanEngineSim, ScanFaults};

const QUIET: Duration = Duration::from_millis(100);

/// The counts the simulator must have encoded for frame `i` (same specimen, seed 11).
fn expected_counts(nav: NavShape, i: u64, max: u32) -> Vec<u32> {
    let sig = SigShape::new(64, 64);
    let mut out = vec![0u32; sig.len()];
    specimen().render_frame(nav, i, sig, 11, &mut out);
    out.iter().map(|&v| v.min(max)).collect()
}

/// Soft trigger: HDR right after STARTACQUISITION, nothing until SOFTTRIGGER, then
/// NUMFRAMESPERTRIGGER frames per trigger with sequence numbers 1..N and the pixels of the
/// specimen, big-endian U16; idle after the last frame.
#[test]
fn soft_trigger_acquisition() {
    let nav = NavShape::new(2, 4);
    let sim = start(synthetic(nav, Pacing::FrameTime));
    let c = sim.control_addr();
    let mut data = connect(sim.data_addr());
    set(c, "TRIGGERSTART", "5");
    set(c, "NUMFRAMESTOACQUIRE", "8");
    set(c, "NUMFRAMESPERTRIGGER", "4");
    set(c, "ACQUISITIONTIME", "0.2");
    assert_eq!(cmd(c, "STARTACQUISITION"), "0");
    let hdr = read_hdr(&mut data);
    assert!(hdr.starts_with("HDR,"));
    assert_eq!(hdr.len(), 2048, "HDR padded to 2 KiB like the hardware");
    assert_eq!(
        hdr_value(&hdr, "Frames in Acquisition").as_deref(),
        Some("8")
    );
    assert_eq!(hdr_value(&hdr, "Frames per Trigger").as_deref(), Some("4"));
    assert_eq!(hdr_value(&hdr, "Counter Depth").as_deref(), Some("12"));
    assert_eq!(
        hdr_value(&hdr, "Trigger Start").as_deref(),
        Some("Soft Trigger")
    );
    assert_eq!(hdr_value(&hdr, "ScanX").as_deref(), Some("4"));
    assert_eq!(hdr_value(&hdr, "ScanY").as_deref(), Some("2"));
    assert_silent(&mut data, QUIET);
    assert_eq!(get(c, "DETECTORSTATUS"), "1");

    for trigger in 0..2u64 {
        assert_eq!(cmd(c, "SOFTTRIGGER"), "0");
        for k in 0..4u64 {
            let i = trigger * 4 + k;
            let f = read_frame(&mut data);
            assert_eq!(f.seq, i + 1);
            assert_eq!(f.data_offset, 384);
            assert_eq!(f.mpx_len, 384 + 64 * 64 * 2 + 1);
            let fields = f.fields();
            assert_eq!(
                fields[..9],
                [
                    "MQ1",
                    &format!("{:06}", i + 1),
                    "00384",
                    "01",
                    "0064",
                    "0064",
                    "U16",
                    "   1x1",
                    "01"
                ]
            );
            let a = fields
                .iter()
                .position(|t| t == "MQ1A")
                .expect("MQ1A extension");
            assert_eq!(fields[a + 2], "200000ns");
            assert_eq!(fields[a + 3], "12");
            assert_eq!(
                f.be_u16(),
                expected_counts(nav, i, 4095),
                "frame {i} pixels"
            );
        }
        if trigger == 0 {
            assert_silent(&mut data, QUIET);
        }
    }
    wait_status(c, "0");
    assert_silent(&mut data, QUIET);
    let st = sim.stats();
    assert_eq!(
        (
            st.acquisitions,
            st.frames_sent,
            st.triggers_seen,
            st.triggers_ignored
        ),
        (1, 8, 2, 0)
    );
    // A soft trigger while idle is ignored (and counted).
    assert_eq!(cmd(c, "SOFTTRIGGER"), "0");
    assert_silent(&mut data, QUIET);
    assert_eq!(sim.stats().triggers_ignored, 1);
}

/// External trigger from the simulated scan engine through the modelled trigger line, pixel
/// and line triggers; a pulse before arming is ignored and counted.
#[test]
fn external_trigger_from_scan_engine() {
    let nav = NavShape::new(4, 4);
    let (mut out, input) = trigger_line();
    let mut cfg = synthetic(nav, Pacing::FrameTime);
    cfg.trigger_input = Some(input);
    let sim = start(cfg);
    let c = sim.control_addr();
    let mut data = connect(sim.data_addr());
    out.fire(); // not armed yet
    let t = Instant::now();
    while sim.stats().triggers_seen < 1 {
        assert!(t.elapsed() < DEADLINE);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(sim.stats().triggers_ignored, 1);

    for (trigger, per_trigger) in [(TriggerOutput::Pixel, 1), (TriggerOutput::Line, 4)] {
        set(c, "TRIGGERSTART", "3");
        set(c, "NUMFRAMESTOACQUIRE", "16");
        set(c, "NUMFRAMESPERTRIGGER", &per_trigger.to_string());
        set(c, "ACQUISITIONTIME", "0.1");
        set(c, "ACQUISITIONPERIOD", "0.2");
        assert_eq!(cmd(c, "STARTACQUISITION"), "0");
        let hdr = read_hdr(&mut data);
        assert_eq!(
            hdr_value(&hdr, "Trigger Start").as_deref(),
            Some("Rising Edge LVDS")
        );
        assert_silent(&mut data, Duration::from_millis(30));
        let mut scan = ScanEngineSim::new(out.clone(), ScanFaults::default());
        scan.configure(&ScanSettings {
            nav_shape: nav,
            dwell_time_s: 300e-6,
            flyback_s: 200e-6,
            trigger,
            region_origin: None,
        })
        .unwrap();
        scan.start().unwrap();
        for i in 0..16u64 {
            let f = read_frame(&mut data);
            assert_eq!(f.seq, i + 1, "{trigger:?}");
            assert_eq!(
                f.be_u16(),
                expected_counts(nav, i, 4095),
                "{trigger:?} frame {i}"
            );
        }
        wait_status(c, "0");
        let t = Instant::now();
        while scan.status().unwrap().running {
            assert!(t.elapsed() < DEADLINE, "scan did not finish");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(scan.status().unwrap().positions_done, 16);
    }
    let st = sim.stats();
    assert_eq!(st.triggers_seen, 1 + 16 + 4);
    assert_eq!(st.triggers_ignored, 1);
    assert_eq!(st.frames_sent, 32);
}

/// Continuous acquisition (NUMFRAMESTOACQUIRE 0) streams until STOPACQUISITION, cut at a
/// frame boundary; the detector is then idle and re-arms on the same data connection.
#[test]
fn continuous_stop_and_rearm() {
    let nav = NavShape::new(3, 3);
    let sim = start(synthetic(nav, Pacing::FrameTime));
    let c = sim.control_addr();
    let mut data = connect(sim.data_addr());
    set(c, "NUMFRAMESTOACQUIRE", "0");
    set(c, "ACQUISITIONTIME", "0.5");
    let t = Instant::now();
    assert_eq!(cmd(c, "STARTACQUISITION"), "0");
    let hdr = read_hdr(&mut data);
    assert_eq!(
        hdr_value(&hdr, "Frames in Acquisition").as_deref(),
        Some("0")
    );
    for i in 0..20u64 {
        let f = read_frame(&mut data);
        assert_eq!(f.seq, i + 1);
        // Frame i shows scan position i % 9 again and again.
        assert_eq!(f.be_u16(), expected_counts(nav, i % 9, 4095));
    }
    // Frame-time pacing: frame 20 leaves no sooner than arm + 20 × 0.5 ms.
    assert!(
        t.elapsed() >= Duration::from_micros(10_000),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(get(c, "DETECTORSTATUS"), "1");
    assert_eq!(cmd(c, "STOPACQUISITION"), "0");
    assert_eq!(get(c, "DETECTORSTATUS"), "0");
    // Frames already on the wire are whole; then silence.
    let mut last = 20;
    data.set_read_timeout(Some(QUIET)).unwrap();
    while let Ok(Msg::Frame(f)) = read_msg(&mut data) {
        last += 1;
        assert_eq!(f.seq, last);
    }
    data.set_read_timeout(Some(DEADLINE)).unwrap();

    set(c, "NUMFRAMESTOACQUIRE", "3");
    assert_eq!(cmd(c, "STARTACQUISITION"), "0");
    let hdr = read_hdr(&mut data);
    assert_eq!(
        hdr_value(&hdr, "Frames in Acquisition").as_deref(),
        Some("3")
    );
    for i in 0..3 {
        assert_eq!(read_frame(&mut data).seq, i + 1, "sequence restarts at 1");
    }
    wait_status(c, "0");
    assert_silent(&mut data, QUIET);
    assert_eq!(sim.stats().acquisitions, 2);
    assert_eq!(sim.stats().data_connections, 1);
}

/// Frame-time pacing honours the read-back period; as-fast-as-possible does not wait.
#[test]
fn pacing_follows_the_period() {
    let nav = NavShape::new(2, 2);
    // 20 frames at a 10 ms period: the last cannot leave before arm + 190 ms. Timed from
    // before the arm command, so a late test thread can only lengthen the measurement.
    for (pacing, min_ms, max_ms) in [
        (Pacing::FrameTime, 190.0, 3000.0),
        (Pacing::AsFastAsPossible, 0.0, 150.0),
    ] {
        let sim = start(synthetic(nav, pacing));
        let c = sim.control_addr();
        let mut data = connect(sim.data_addr());
        set(c, "NUMFRAMESTOACQUIRE", "20");
        set(c, "ACQUISITIONPERIOD", "10");
        set(c, "ACQUISITIONTIME", "0.01");
        let t = Instant::now();
        assert_eq!(cmd(c, "STARTACQUISITION"), "0");
        read_hdr(&mut data);
        for i in 0..20 {
            assert_eq!(read_frame(&mut data).seq, i + 1);
        }
        let ms = t.elapsed().as_secs_f64() * 1e3;
        assert!(
            ms >= min_ms && ms < max_ms,
            "{pacing:?}: 20 frames in {ms} ms"
        );
    }
}

/// With no data client at arm time the HDR and frames are discarded and counted.
#[test]
fn no_client_frames_are_discarded_and_counted() {
    let sim = start(synthetic(NavShape::new(2, 2), Pacing::AsFastAsPossible));
    let c = sim.control_addr();
    set(c, "NUMFRAMESTOACQUIRE", "5");
    set(c, "ACQUISITIONTIME", "0.2");
    assert_eq!(cmd(c, "STARTACQUISITION"), "0");
    wait_status(c, "0");
    let st = sim.stats();
    assert_eq!(
        (st.frames_discarded, st.frames_sent, st.bytes_sent),
        (5, 0, 0)
    );
}

/// Replay of a recording: the HDR is the recorded text with the frame counts rewritten, and
/// frames are the recorded bytes, cycled, with sequence numbers renumbered 1..N.
#[test]
fn recording_replay_is_byte_identical() {
    for name in [
        "Single_9_Frame_CounterDepth_12_Rows_256",
        "Quad_9_Frame_CounterDepth_1_Rows_256RAW",
    ] {
        let hdr_path = data_file(&format!("{name}.hdr"));
        let mib = std::fs::read(data_file(&format!("{name}.mib"))).unwrap();
        let recorded_hdr = std::fs::read(&hdr_path).unwrap();
        let mut cfg = MerlinSimConfig::new(MerlinSource::Recording { path: hdr_path });
        cfg.pacing = Pacing::AsFastAsPossible;
        let sim = start(cfg);
        let c = sim.control_addr();
        let mut data = connect(sim.data_addr());
        set(c, "NUMFRAMESTOACQUIRE", "20");
        set(c, "NUMFRAMESPERTRIGGER", "20");
        assert_eq!(cmd(c, "STARTACQUISITION"), "0");
        let hdr = read_hdr(&mut data);
        assert_eq!(hdr.len(), recorded_hdr.len(), "{name}");
        let recorded: String = recorded_hdr.iter().map(|&b| b as char).collect();
        for (got, want) in hdr.lines().zip(recorded.lines()) {
            if want.starts_with("Frames in Acquisition") {
                assert_eq!(got, "Frames in Acquisition (Number):\t20");
            } else if want.starts_with("Frames per Trigger") {
                assert_eq!(got, "Frames per Trigger (Number):\t20");
            } else if !want.starts_with("End") {
                assert_eq!(got, want, "{name}: other HDR lines are kept");
            }
        }
        let frame_len = mib.len() / 9;
        for i in 0..20usize {
            let f = read_frame(&mut data);
            let rec = &mib[(i % 9) * frame_len..(i % 9 + 1) * frame_len];
            assert_eq!(f.seq, i as u64 + 1);
            assert_eq!(f.mpx_len, frame_len + 1);
            assert_eq!(&f.header[..4], &rec[..4]);
            assert_eq!(
                &f.header[10..],
                &rec[10..f.data_offset],
                "{name} frame {i} header"
            );
            assert!(
                f.payload == rec[f.data_offset..],
                "{name} frame {i} payload differs"
            );
        }
        wait_status(c, "0");
    }
}

/// Raw R64 (FILEFORMAT 2) frames decode, by the protocols.md §1.7 rule, to the specimen's
/// counts clipped to the counter depth.
#[test]
fn raw_r64_frames_decode_to_the_specimen() {
    let nav = NavShape::new(2, 2);
    let sim = start(synthetic(nav, Pacing::AsFastAsPossible));
    let c = sim.control_addr();
    let mut data = connect(sim.data_addr());
    for (depth, bits) in [(6u8, 8u32), (1, 1), (12, 16)] {
        set(c, "FILEFORMAT", "2");
        set(c, "COUNTERDEPTH", &depth.to_string());
        set(c, "NUMFRAMESTOACQUIRE", "4");
        assert_eq!(cmd(c, "STARTACQUISITION"), "0");
        read_hdr(&mut data);
        for i in 0..4u64 {
            let f = read_frame(&mut data);
            assert_eq!(f.fields()[6], "R64");
            let per_word = 64 / bits as usize;
            assert_eq!(f.payload.len(), 64 * 64 / per_word * 8);
            let mut px = Vec::new();
            for w in f.payload.chunks_exact(8) {
                let word = u64::from_be_bytes(w.try_into().unwrap());
                for k in 0..per_word {
                    px.push(((word >> (bits as usize * k)) & ((1u64 << bits) - 1)) as u32);
                }
            }
            assert_eq!(
                px,
                expected_counts(nav, i, (1 << depth) - 1),
                "depth {depth} frame {i}"
            );
        }
        wait_status(c, "0");
    }
    // Raw 24-bit does not exist.
    let mut s = connect(c);
    assert_eq!(
        request(&mut s, "SET,COUNTERDEPTH,24"),
        ["SET", "COUNTERDEPTH", "3"]
    );
}

/// Injected faults are visible on the wire: a dropped frame is absent (sequence gap), a
/// corrupt prefix, a frame of the wrong size, a stalled stream.
#[test]
fn faults_are_visible_on_the_wire() {
    let nav = NavShape::new(2, 4);
    let mut cfg = synthetic(nav, Pacing::AsFastAsPossible);
    cfg.faults = MerlinFaults {
        drop_frames: vec![2, 5],
        corrupt_prefix_at: None,
        stop_after_frames: None,
        wrong_size_at: Some(6),
        frames_at_depth: None,
    };
    let sim = start(cfg);
    let c = sim.control_addr();
    let mut data = connect(sim.data_addr());
    set(c, "NUMFRAMESTOACQUIRE", "8");
    assert_eq!(cmd(c, "STARTACQUISITION"), "0");
    read_hdr(&mut data);
    let mut seqs = Vec::new();
    for _ in 0..6 {
        let f = read_frame(&mut data);
        if f.seq == 7 {
            assert_eq!(f.payload.len(), 64 * 64, "half of 8192 bytes");
        } else {
            assert_eq!(f.payload.len(), 64 * 64 * 2);
        }
        seqs.push(f.seq);
    }
    assert_eq!(seqs, [1, 2, 4, 5, 7, 8]);
    wait_status(c, "0");
    assert_eq!(sim.stats().frames_dropped, 2);
    assert_eq!(sim.stats().frames_sent, 6);
    drop(sim);

    let mut cfg = synthetic(nav, Pacing::AsFastAsPossible);
    cfg.faults = MerlinFaults {
        corrupt_prefix_at: Some(1),
        stop_after_frames: Some(3),
        ..Default::default()
    };
    let sim = start(cfg);
    let c = sim.control_addr();
    let mut data = connect(sim.data_addr());
    set(c, "NUMFRAMESTOACQUIRE", "8");
    assert_eq!(cmd(c, "STARTACQUISITION"), "0");
    read_hdr(&mut data);
    assert_eq!(read_frame(&mut data).seq, 1);
    let mut raw = vec![0u8; 15 + 384 + 8192];
    std::io::Read::read_exact(&mut data, &mut raw).unwrap();
    assert_eq!(&raw[..15], b"XPM,0000008577,");
    assert_eq!(&raw[15..25], b"MQ1,000002");
    assert_eq!(read_frame(&mut data).seq, 3);
    // Stalled: the socket stays open, nothing more comes, the detector stays busy.
    assert_silent(&mut data, Duration::from_millis(200));
    assert_eq!(get(c, "DETECTORSTATUS"), "1");
    assert_eq!(cmd(c, "ABORT"), "0");
    assert_eq!(get(c, "DETECTORSTATUS"), "0");
}

/// A 512 × 512 synthetic source is sent as a quad: 768-byte headers, layout `2x2`, chip
/// mask `0F`.
#[test]
fn quad_geometry() {
    let mut cfg = MerlinSimConfig::new(MerlinSource::Synthetic {
        specimen: specimen(),
        nav_shape: NavShape::new(1, 2),
        sig_shape: SigShape::new(512, 512),
        seed: 1,
    });
    cfg.pacing = Pacing::AsFastAsPossible;
    let sim = start(cfg);
    let c = sim.control_addr();
    let mut data = connect(sim.data_addr());
    set(c, "COUNTERDEPTH", "6");
    set(c, "NUMFRAMESTOACQUIRE", "2");
    assert_eq!(cmd(c, "STARTACQUISITION"), "0");
    let hdr = read_hdr(&mut data);
    assert_eq!(hdr_value(&hdr, "Assembly Size").as_deref(), Some("2x2"));
    let f = read_frame(&mut data);
    assert_eq!(f.data_offset, 768);
    assert_eq!(
        f.fields()[3..9],
        ["04", "0512", "0512", "U08", "   2x2", "0F"]
    );
    assert_eq!(f.payload.len(), 512 * 512);
    assert!(f.payload.iter().all(|&v| v <= 63));
}

/// `stop` returns promptly even with idle control and data connections open and a
/// continuous acquisition streaming, and closes those connections.
#[test]
fn stop_is_prompt_and_closes_connections() {
    let sim = start(synthetic(NavShape::new(2, 2), Pacing::AsFastAsPossible));
    let c = sim.control_addr();
    let mut data = connect(sim.data_addr());
    let mut idle_control = connect(c);
    set(c, "NUMFRAMESTOACQUIRE", "0");
    assert_eq!(cmd(c, "STARTACQUISITION"), "0");
    read_hdr(&mut data);
    read_frame(&mut data);
    // The client stops reading: the sender blocks on a full socket.
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    sim.stop();
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "stop took {:?}",
        t.elapsed()
    );
    let mut b = [0u8; 1];
    assert_eq!(std::io::Read::read(&mut idle_control, &mut b).unwrap(), 0);
    // The data connection ends (after whatever was already buffered).
    let mut sink = vec![0u8; 1 << 20];
    let t = Instant::now();
    while std::io::Read::read(&mut data, &mut sink).unwrap_or(0) > 0 {
        assert!(t.elapsed() < DEADLINE);
    }
}
