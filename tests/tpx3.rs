//! The ASI TPX3 driver (`Tpx3Detector`: stream receiver + Serval client) against stemflow's
//! TPX3 simulator in-process, on 127.0.0.1:0: active mode through the Serval emulation
//! (configuration read back, measurement started and stopped), settings Serval refuses,
//! and faults on the stream (a scan cancelled inside, a corrupt chunk, a stream joined
//! mid-way, a forged chunk size), each with its frame accounting and a deadline.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};
use stemflow_core::detector::{
    AcquisitionEnd, ArmMode, ArmedAcquisition, Detector, DetectorSettings, DetectorTrigger,
};
use stemflow_core::{NavShape, SigShape};
use stemflow_drivers::asi::{Tpx3Detector, Tpx3DetectorConfig};
use stemflow_processing::{RunConfig, RunSummary, run_live, standard_udfs};
use stemflow_simulators::tpx3::{Tpx3Faults, Tpx3Sim, Tpx3SimConfig, Tpx3Source};

const NAV: NavShape = NavShape { rows: 8, cols: 8 };
const SIG: SigShape = SigShape {
    rows: 128,
    cols: 128,
};

fn sim(active: bool, faults: Tpx3Faults) -> Tpx3Sim {
    let mut cfg = Tpx3SimConfig::new(Tpx3Source::Synthetic {
        specimen: stemflow_simulators::specimen::Specimen::builder()
            .disk_radius_px(12.0)
            .build(),
        nav_shape: NAV,
        sig_shape: SIG,
        mean_events: 100.0,
        seed: 5,
    });
    cfg.free_running = !active;
    cfg.rows_per_chunk = 8;
    cfg.faults = faults;
    Tpx3Sim::start(cfg).expect("TPX3 simulator starts")
}

fn detector(s: &Tpx3Sim, serval: bool) -> Tpx3Detector {
    let mut c = Tpx3DetectorConfig::new(
        s.data_addr(),
        serval.then(|| ("127.0.0.1".to_string(), s.api_addr().port())),
    );
    c.frame_timeout = Duration::from_millis(500);
    c.first_frame_timeout = Duration::from_secs(5);
    Tpx3Detector::connect(c).expect("the detector connects")
}

fn settings(frame_time_s: f64) -> DetectorSettings {
    DetectorSettings {
        nav_shape: NAV,
        exposure_s: frame_time_s / 2.0,
        frame_time_s,
        trigger: DetectorTrigger::Internal,
        frames_per_trigger: 1,
        counter_depth: None,
        extra: BTreeMap::new(),
    }
}

/// Runs the standard reductions on the acquisition's stacks; the summary and its end.
fn process(armed: ArmedAcquisition) -> (RunSummary, AcquisitionEnd) {
    let cfg = RunConfig::new(NAV, armed.sig_shape, armed.dtype);
    let udfs = standard_udfs(64.0, 64.0, 12.0);
    let summary = run_live(
        armed.stacks.clone(),
        &udfs,
        &cfg,
        None,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .expect("the pipeline runs");
    let end = armed
        .end
        .recv_timeout(Duration::from_secs(10))
        .expect("the end of the scan is reported");
    (summary, end)
}

#[test]
fn active_mode_configures_serval_reads_it_back_and_receives_the_scan() {
    let s = sim(true, Tpx3Faults::default());
    let mut d = detector(&s, true);
    let back = d
        .configure(&settings(1e-4))
        .expect("Serval takes the settings");
    assert_eq!(back["detector.config.nTriggers"], "64", "{back:?}");
    assert_eq!(
        back["detector.config.TriggerMode"],
        "AUTOTRIGSTART_TIMERSTOP"
    );
    assert_eq!(back["layout.width"], "128");
    assert_eq!(back["detector.info.MpxType"], "6", "Timepix3");
    assert!(
        back.contains_key("measurement.Info.Status") || back.contains_key("measurement.Status"),
        "{back:?}"
    );
    assert_eq!(s.measurement_status(), "DA_IDLE");
    let armed = d
        .arm(ArmMode::Active, Duration::from_secs(5))
        .expect("armed");
    assert_eq!((armed.expected_frames, armed.nav_shape), (64, Some(NAV)));
    let (summary, end) = process(armed);
    assert_eq!((end.received, end.lost, end.damaged), (64, 0, 0), "{end:?}");
    assert_eq!(summary.frames_processed, 64);
    let total = summary.results[0].buffers[0].data.iter().sum::<f64>();
    let per_frame = summary.results[1].buffers[0].data.iter().sum::<f64>();
    assert!(
        total > 64.0 * 50.0 && total == per_frame,
        "{total} {per_frame}"
    );
    d.disarm().expect("disarm");
    // The next measurement on the same connection.
    let armed = d
        .arm(ArmMode::Active, Duration::from_secs(5))
        .expect("armed again");
    let (_, end) = process(armed);
    assert_eq!(end.received, 64);
    assert_eq!(s.stats().acquisitions_completed, 2);
}

#[test]
fn settings_serval_refuses_are_errors_naming_them() {
    let s = sim(true, Tpx3Faults::default());
    let mut d = detector(&s, true);
    let mut bad = settings(1e-3);
    bad.extra.insert("TriggerMode".into(), "WHENEVER".into());
    let e = d.configure(&bad).unwrap_err().to_string();
    assert!(
        e.contains("TriggerMode") && e.contains("PEXSTART_NEXSTOP"),
        "{e}"
    );
    let mut bad = settings(1e-3);
    bad.exposure_s = -1.0;
    let e = d.configure(&bad).unwrap_err().to_string();
    assert!(
        e.contains("HTTP status 400") && e.contains("ExposureTime"),
        "{e}"
    );
    // Passive-only (no Serval): active arming says what is missing.
    let s2 = sim(false, Tpx3Faults::default());
    let mut p = detector(&s2, false);
    let e = p
        .arm(ArmMode::Active, Duration::from_secs(1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("without Serval"), "{e}");
}

#[test]
fn a_measurement_stopped_mid_scan_counts_the_rest_lost() {
    let s = sim(true, Tpx3Faults::default());
    let mut d = detector(&s, true);
    // 64 frames of 10 ms: 0.64 s; stopped after about 0.2 s.
    d.configure(&settings(0.01)).expect("configured");
    let armed = d
        .arm(ArmMode::Active, Duration::from_secs(5))
        .expect("armed");
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        d.disarm().expect("stop");
        d
    });
    let t = Instant::now();
    let (summary, end) = process(armed);
    let _d = stopper.join().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "ended promptly after the stop"
    );
    assert!(end.received > 0 && end.received < 64, "{end:?}");
    assert_eq!(end.received + end.lost + end.damaged, 64, "{end:?}");
    assert_eq!(summary.frames_processed, end.received);
    assert_eq!(s.measurement_status(), "DA_STOPPED");
}

#[test]
fn stream_faults_are_counted_or_refused_with_clear_errors() {
    // AcquisitionEnd inside the scan after 3 of 8 chunks: 24 received, 40 lost.
    let s = sim(
        false,
        Tpx3Faults {
            cancel_after_chunks: Some(3),
            ..Tpx3Faults::default()
        },
    );
    let mut d = detector(&s, false);
    let (_, end) = process(d.arm(ArmMode::Passive, Duration::from_secs(5)).unwrap());
    assert_eq!((end.received, end.lost), (24, 40), "{end:?}");
    assert!(end.reason.contains("cancelled"), "{}", end.reason);

    // A chunk whose row pointers are broken: its 8 frames damaged in processing.
    let s = sim(
        false,
        Tpx3Faults {
            corrupt_indptr_at: Some(2),
            ..Tpx3Faults::default()
        },
    );
    let mut d = detector(&s, false);
    let (summary, end) = process(d.arm(ArmMode::Passive, Duration::from_secs(5)).unwrap());
    assert_eq!(end.received, 64);
    assert_eq!(summary.damaged, (16..24).collect::<Vec<u64>>());
    assert_eq!(summary.frames_processed, 56);

    // Joined mid-way: refused, naming why.
    let s = sim(
        false,
        Tpx3Faults {
            mid_stream_start: Some(0),
            ..Tpx3Faults::default()
        },
    );
    let mut d = detector(&s, false);
    let e = d
        .arm(ArmMode::Passive, Duration::from_secs(5))
        .unwrap_err()
        .to_string();
    assert!(e.contains("joined mid-stream"), "{e}");

    // A forged chunk size (20 GiB announced): ends at once, nothing allocated from it.
    let s = sim(
        false,
        Tpx3Faults {
            huge_chunk_after: Some(1),
            ..Tpx3Faults::default()
        },
    );
    let mut d = detector(&s, false);
    let t = Instant::now();
    let (_, end) = process(d.arm(ArmMode::Passive, Duration::from_secs(5)).unwrap());
    assert!(t.elapsed() < Duration::from_secs(3));
    let e = end.error.clone().expect("an error");
    assert!(e.contains("byte limit"), "{e}");
    assert_eq!(
        (end.received, end.received + end.lost + end.damaged),
        (8, 64),
        "{end:?}"
    );
}
