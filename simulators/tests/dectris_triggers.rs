//! Frame counts per trigger mode (protocols.md §2.3 "Trigger modes and frame count"):
//! software `ints`/`inte` over REST, external `exts`/`exte` through the modelled trigger line
//! (fired by hand and by the scan engine simulator), and frame-time pacing.

mod dectris_support;

use dectris_support::*;
use serde_json::json;
use std::time::{Duration, Instant};
use stemflow_core::devices::{ScanEngine, ScanSettings, TriggerOutput, trigger_line};
use stemflow_simulators::dectris::{DectrisSim, DectrisSimConfig, Pacing};
use stemflow_simulators::scan::{ScanEngineSim, ScanFaults};

fn fast_sim(trigger: Option<stemflow_core::devices::TriggerReceiver>) -> DectrisSim {
    let mut cfg = DectrisSimConfig::new(small_source());
    cfg.pacing = Pacing::AsFastAsPossible;
    cfg.trigger_input = trigger;
    DectrisSim::start(cfg).expect("start")
}

/// Frame indices of the images received before `dseries_end`.
fn frames(p: &mut Puller) -> Vec<u64> {
    let (images, _) = images_until_end(p);
    images
        .iter()
        .map(|m| json(&m[0])["frame"].as_u64().unwrap())
        .collect()
}

#[test]
fn ints_releases_nimages_per_software_trigger() {
    let s = fast_sim(None);
    let a = s.api_addr();
    let mut p = Puller::connect(&s.stream_endpoint());
    set(a, "trigger_mode", json!("ints"));
    set(a, "nimages", json!(3));
    set(a, "ntrigger", json!(2));
    arm(a);
    assert_eq!(htype(&p.recv()[0]), "dheader-1.0");
    command(a, "trigger");
    for want in 0..3 {
        assert_eq!(json(&p.recv()[0])["frame"], want);
    }
    assert!(
        p.recv_within(Duration::from_millis(150)).is_none(),
        "nothing more until the second trigger"
    );
    assert_eq!(state(a), "acquire");
    command(a, "trigger");
    assert_eq!(frames(&mut p), [3, 4, 5]);
    assert_eq!(state(a), "idle");
}

#[test]
fn inte_releases_one_image_per_trigger_with_its_exposure() {
    let s = fast_sim(None);
    let a = s.api_addr();
    let mut p = Puller::connect(&s.stream_endpoint());
    set(a, "trigger_mode", json!("inte"));
    set(a, "nimages", json!(5));
    set(a, "ntrigger", json!(3));
    arm(a);
    p.recv();
    let path = "/detector/api/1.8.0/command/trigger";
    for (i, exposure) in [0.002, 0.003, 0.004].iter().enumerate() {
        let (c, body) = put(a, path, json!(exposure));
        assert_eq!(c, 200, "{body}");
        let m = p.recv();
        assert_eq!(json(&m[0])["frame"], i as u64);
        let real = json(&m[3])["real_time"].as_u64().unwrap();
        assert_eq!(real, (exposure * 1e9_f64).round() as u64, "inte exposure");
    }
    let end = p.recv();
    assert_eq!(
        htype(&end[0]),
        "dseries_end-1.0",
        "ntrigger images, nimages ignored"
    );
    let (c, _) = put(a, path, json!(-1.0));
    assert_eq!(c, 400, "a negative exposure is refused");
}

#[test]
fn exte_and_exts_follow_trigger_line_edges() {
    let (mut tx, rx) = trigger_line();
    let s = fast_sim(Some(rx));
    let a = s.api_addr();
    let mut p = Puller::connect(&s.stream_endpoint());

    // Edges before arming are ignored (and counted).
    tx.fire();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(s.stats().triggers_ignored, 1);

    set(a, "trigger_mode", json!("exte"));
    set(a, "ntrigger", json!(4));
    set(a, "nimages", json!(9));
    arm(a);
    p.recv();
    let (c, _) = http(a, "PUT", "/detector/api/1.8.0/command/trigger", None);
    assert_eq!(c, 400, "software trigger in exte");
    for i in 0..4 {
        tx.fire();
        assert_eq!(json(&p.recv()[0])["frame"], i, "one image per edge");
    }
    assert_eq!(htype(&p.recv()[0]), "dseries_end-1.0");

    set(a, "trigger_mode", json!("exts"));
    set(a, "ntrigger", json!(2));
    set(a, "nimages", json!(3));
    arm(a);
    p.recv();
    tx.fire();
    tx.fire();
    tx.fire(); // beyond ntrigger
    assert_eq!(frames(&mut p), [0, 1, 2, 3, 4, 5]);
    std::thread::sleep(Duration::from_millis(100));
    let st = s.stats();
    assert_eq!(st.triggers_seen, 1 + 4 + 3);
    assert_eq!(
        st.triggers_ignored, 2,
        "the edge before arm and the one beyond ntrigger"
    );
}

#[test]
fn scan_engine_drives_an_exte_series() {
    let (tx, rx) = trigger_line();
    let s = fast_sim(Some(rx));
    let a = s.api_addr();
    let mut p = Puller::connect(&s.stream_endpoint());
    set(a, "trigger_mode", json!("exte"));
    set(a, "ntrigger", json!(64));
    arm(a);
    p.recv();
    let mut scan = ScanEngineSim::new(tx, ScanFaults::default());
    let settings = ScanSettings {
        nav_shape: stemflow_core::NavShape::new(8, 8),
        dwell_time_s: 2e-4,
        flyback_s: 0.0,
        trigger: TriggerOutput::Pixel,
        region_origin: None,
    };
    scan.configure(&settings).expect("configure the scan");
    scan.start().expect("start the scan");
    assert_eq!(frames(&mut p), (0..64).collect::<Vec<_>>());
    scan.stop().expect("stop the scan");
}

#[test]
fn frame_time_pacing_spaces_images() {
    let mut cfg = DectrisSimConfig::new(small_source());
    cfg.pacing = Pacing::FrameTime;
    let s = DectrisSim::start(cfg).expect("start");
    let a = s.api_addr();
    let mut p = Puller::connect(&s.stream_endpoint());
    set(a, "trigger_mode", json!("ints"));
    set(a, "nimages", json!(20));
    set(a, "count_time", json!(0.004));
    set(a, "frame_time", json!(0.005));
    arm(a);
    p.recv();
    let t0 = Instant::now();
    command(a, "trigger");
    let got = frames(&mut p);
    let took = t0.elapsed().as_secs_f64();
    assert_eq!(got.len(), 20);
    // First image after one count_time, then 19 frame times: 0.099 s.
    assert!(
        (0.095..0.5).contains(&took),
        "20 images at 5 ms took {took:.3} s"
    );

    // 10 kHz: deadlines are absolute, so the timer's ~1 ms granularity only bunches images;
    // the series can never finish early.
    set(a, "frame_time", json!(1e-4));
    set(a, "count_time", json!(5e-5));
    set(a, "nimages", json!(2000));
    arm(a);
    p.recv();
    let t0 = Instant::now();
    command(a, "trigger");
    assert_eq!(frames(&mut p).len(), 2000);
    let took = t0.elapsed().as_secs_f64();
    assert!(
        (0.19995..3.0).contains(&took),
        "2000 images at 0.1 ms took {took:.3} s"
    );
}
