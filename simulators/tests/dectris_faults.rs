//! Every injected fault of the DECTRIS simulator is observable on the wire and in the stats:
//! a dropped image, a corrupt blob, a series that ends early, a stalled detector.

mod dectris_support;

use dectris_support::*;
use serde_json::json;
use std::time::Duration;
use stemflow_simulators::dectris::{
    DectrisFaults, DectrisSim, DectrisSimConfig, DectrisSource, Pacing,
};

fn sim(faults: DectrisFaults) -> (DectrisSim, Puller) {
    let mut cfg = DectrisSimConfig::new(DectrisSource::Capture {
        path: capture_path(),
    });
    cfg.pacing = Pacing::AsFastAsPossible;
    cfg.faults = faults;
    let s = DectrisSim::start(cfg).expect("start");
    let a = s.api_addr();
    let p = Puller::connect(&s.stream_endpoint());
    set(a, "trigger_mode", json!("ints"));
    set(a, "ntrigger", json!(1));
    set(a, "nimages", json!(10));
    (s, p)
}

fn run_series(s: &DectrisSim, p: &mut Puller) -> (Vec<Vec<Vec<u8>>>, serde_json::Value) {
    arm(s.api_addr());
    assert_eq!(htype(&p.recv()[0]), "dheader-1.0");
    command(s.api_addr(), "trigger");
    images_until_end(p)
}

#[test]
fn dropped_frames_leave_gaps() {
    let (s, mut p) = sim(DectrisFaults {
        drop_frames: vec![3, 7],
        ..Default::default()
    });
    let (images, end) = run_series(&s, &mut p);
    let ids: Vec<u64> = images
        .iter()
        .map(|m| json(&m[0])["frame"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [0, 1, 2, 4, 5, 6, 8, 9]);
    assert_eq!(end["series"], 34);
    let st = s.stats();
    assert_eq!((st.frames_dropped, st.frames_sent), (2, 8));
}

#[test]
fn corrupt_blob_is_short_and_fails_its_hash() {
    let dump = read_dump(&capture_path());
    let (s, mut p) = sim(DectrisFaults {
        corrupt_blob_at: Some(2),
        ..Default::default()
    });
    let (images, _) = run_series(&s, &mut p);
    assert_eq!(images.len(), 10);
    for (i, m) in images.iter().enumerate() {
        let size = json(&m[1])["size"].as_u64().unwrap() as usize;
        let hash = json(&m[0])["hash"].as_str().unwrap().to_string();
        if i == 2 {
            assert_eq!(m[2].len(), size / 2, "corrupt blob is half its size");
            assert_ne!(md5_hex(&m[2]), hash);
            assert_eq!(m[2][..], dump[2 + 4 * i + 2][..size / 2]);
        } else {
            assert_eq!(m[2].len(), size);
            assert_eq!(md5_hex(&m[2]), hash);
        }
    }
    assert_eq!(s.stats().blobs_corrupted, 1);
}

#[test]
fn series_ends_early() {
    let (s, mut p) = sim(DectrisFaults {
        end_early_after: Some(4),
        ..Default::default()
    });
    let (images, end) = run_series(&s, &mut p);
    assert_eq!(images.len(), 4);
    assert_eq!(end["htype"], "dseries_end-1.0");
    assert_eq!(state(s.api_addr()), "idle");
    let st = s.stats();
    assert_eq!((st.series_ended_early, st.series_completed), (1, 0));
}

#[test]
fn stalled_detector_sends_nothing_until_aborted() {
    let (s, mut p) = sim(DectrisFaults {
        stall_after: Some(6),
        ..Default::default()
    });
    let a = s.api_addr();
    arm(a);
    p.recv();
    command(a, "trigger");
    for i in 0..6 {
        assert_eq!(json(&p.recv()[0])["frame"], i);
    }
    assert!(
        p.recv_within(Duration::from_millis(300)).is_none(),
        "stalled"
    );
    assert_eq!(state(a), "acquire");
    let r = command(a, "abort");
    assert_eq!(r["sequence id"], 34);
    let end = p.recv();
    assert_eq!(
        json(&end[0]),
        json!({"htype": "dseries_end-1.0", "series": 34})
    );
    assert_eq!(state(a), "idle");
    // The next series stalls again at the same index.
    assert_eq!(arm(a), 35);
    p.recv();
    command(a, "trigger");
    for _ in 0..6 {
        p.recv();
    }
    assert!(p.recv_within(Duration::from_millis(200)).is_none());
}
