//! The DECTRIS simulator's SIMPLON REST API (protocols.md §2.2, §2.3), through a raw
//! HTTP/1.1 client: version, config read-back with DCU consequences, refusals, the state
//! machine, series ids, stream and file-writer config, the pixel mask darray.

mod dectris_support;

use dectris_support::*;
use serde_json::json;
use stemflow_simulators::dectris::{DectrisSim, DectrisSimConfig};

fn sim() -> DectrisSim {
    DectrisSim::start(DectrisSimConfig::new(small_source())).expect("start")
}

#[test]
fn version_and_config_read_back() {
    let s = sim();
    let a = s.api_addr();
    assert_eq!(get(a, "/detector/api/version/")["value"], "1.8.0");
    assert_eq!(get(a, "/stream/api/version/")["value"], "1.8.0");
    assert_eq!(config(a, "x_pixels_in_detector"), 32);
    assert_eq!(config(a, "y_pixels_in_detector"), 32);
    assert_eq!(config(a, "bit_depth_image"), 16);
    let d = get(a, "/detector/api/1.8.0/config/count_time");
    assert_eq!(d["access_mode"], "rw");
    assert_eq!(d["unit"], "s");
    assert_eq!(d["value_type"], "float");

    // count_time beyond frame_time raises frame_time (count_time + readout 1e-7 s).
    let changed = set(a, "count_time", json!(0.004));
    assert_eq!(changed, json!(["count_time", "frame_time"]));
    assert_eq!(config(a, "count_time"), 0.004);
    let ft = config(a, "frame_time").as_f64().unwrap();
    assert!((ft - 0.0040001).abs() < 1e-12, "frame_time read back {ft}");
    // frame_time below count_time lowers count_time.
    assert_eq!(
        set(a, "frame_time", json!(0.002)),
        json!(["frame_time", "count_time"])
    );
    let ct = config(a, "count_time").as_f64().unwrap();
    assert!((ct - 0.0019999).abs() < 1e-12, "count_time read back {ct}");

    set(a, "nimages", json!(7));
    set(a, "ntrigger", json!(3));
    set(a, "trigger_mode", json!("exts"));
    assert_eq!(config(a, "nimages"), 7);
    assert_eq!(config(a, "ntrigger"), 3);
    assert_eq!(config(a, "trigger_mode"), "exts");
    // Parameters LiberTEM-live sets (§2.3).
    set(a, "roi_mode", json!("disabled"));
    set(a, "mask_to_zero", json!(true));
    assert_eq!(config(a, "mask_to_zero"), true);
    set(a, "compression", json!("none"));
    assert_eq!(config(a, "compression"), "none");
    let keys = get(a, "/detector/api/1.8.0/config/keys");
    assert!(keys.as_array().unwrap().iter().any(|k| k == "ntrigger"));
}

#[test]
fn bad_requests_are_refused_with_a_reason() {
    let s = sim();
    let a = s.api_addr();
    let p = "/detector/api/1.8.0/config/";
    let cases = [
        (
            format!("{p}x_pixels_in_detector"),
            json!(64),
            400,
            "read-only",
        ),
        (format!("{p}nimages"), json!(0), 400, "outside"),
        (format!("{p}nimages"), json!("many"), 400, "unsigned"),
        (format!("{p}trigger_mode"), json!("extg"), 400, "not one of"),
        (format!("{p}frame_time"), json!(1e-9), 400, "outside"),
        (format!("{p}no_such_thing"), json!(1), 404, "no parameter"),
        (
            "/stream/api/1.8.0/config/format".into(),
            json!("cbor"),
            400,
            "not one of",
        ),
        (
            "/detector/api/1.7.0/config/nimages".into(),
            json!(1),
            404,
            "version",
        ),
    ];
    for (path, v, code, why) in cases {
        let (c, body) = put(a, &path, v);
        assert_eq!(c, code, "PUT {path}: {body}");
        assert!(
            body.contains(why),
            "PUT {path}: {body:?} should say {why:?}"
        );
    }
    let (c, body) = http(a, "PUT", &format!("{p}nimages"), Some("{not json"));
    assert_eq!(c, 400, "{body}");
    let (c, _) = http(a, "PUT", &format!("{p}nimages"), None);
    assert_eq!(c, 400);
    let (c, _) = http(a, "GET", "/nothing/here", None);
    assert_eq!(c, 404);
    let (c, _) = http(a, "PUT", "/detector/api/1.8.0/command/self_destruct", None);
    assert_eq!(c, 404);
    let (c, body) = http(a, "PUT", "/detector/api/1.8.0/command/trigger", None);
    assert_eq!(c, 400, "trigger while idle: {body}");
    // The simulator still serves after all that.
    assert_eq!(state(a), "idle");
}

#[test]
fn arm_counts_series_and_drives_the_state_machine() {
    let s = sim();
    let a = s.api_addr();
    let mut p = Puller::connect(&s.stream_endpoint());
    set(a, "trigger_mode", json!("ints"));
    set(a, "nimages", json!(2));
    assert_eq!(state(a), "idle");
    let first = arm(a);
    assert_eq!(first, 1, "a synthetic detector starts at series 1");
    assert_eq!(state(a), "ready");
    let (c, body) = http(a, "PUT", "/detector/api/1.8.0/command/arm", None);
    assert_eq!(c, 400, "arm while armed: {body}");
    let (c, body) = put(a, "/detector/api/1.8.0/config/nimages", json!(5));
    assert_eq!(c, 400, "config change while armed: {body}");
    command(a, "trigger");
    let (c, _) = http(a, "PUT", "/detector/api/1.8.0/command/trigger", None);
    assert_eq!(c, 400, "a second trigger with ntrigger = 1");
    assert_eq!(htype(&p.recv()[0]), "dheader-1.0");
    let (images, end) = images_until_end(&mut p);
    assert_eq!(images.len(), 2);
    assert_eq!(end["series"], first);
    assert_eq!(state(a), "idle");

    for expected in first + 1..first + 4 {
        assert_eq!(arm(a), expected);
        let d = command(a, "disarm");
        assert_eq!(d["sequence id"], expected, "disarm answers the series id");
        let h = p.recv();
        assert_eq!(json(&h[0])["series"], expected);
        let end = p.recv();
        assert_eq!(htype(&end[0]), "dseries_end-1.0");
        assert_eq!(json(&end[0])["series"], expected);
        assert_eq!(state(a), "idle");
    }
    let st = s.stats();
    assert_eq!(st.series, 4);
    assert_eq!(st.series_completed, 1);
    assert_eq!(st.frames_sent, 2);
}

#[test]
fn stream_filewriter_and_pixel_mask() {
    let s = sim();
    let a = s.api_addr();
    for (k, v) in [
        ("header_detail", "all"),
        ("header_detail", "none"),
        ("mode", "disabled"),
    ] {
        set_stream(a, k, json!(v));
        assert_eq!(get(a, &format!("/stream/api/1.8.0/config/{k}"))["value"], v);
    }
    let (c, _) = put(a, "/stream/api/1.8.0/config/header_detail", json!("most"));
    assert_eq!(c, 400);
    let (c, body) = put(
        a,
        "/filewriter/api/1.8.0/config/nimages_per_file",
        json!(100),
    );
    assert_eq!(c, 200, "{body}");
    assert_eq!(
        get(a, "/filewriter/api/1.8.0/config/nimages_per_file")["value"],
        100
    );
    let (c, _) = put(a, "/filewriter/api/1.8.0/config/mode", json!("disabled"));
    assert_eq!(c, 200);

    // darray (§2.3): base64 data, shape [x, y], a numpy dtype string.
    let m = get(a, "/detector/api/1.8.0/config/pixel_mask");
    let v = &m["value"];
    assert!(
        v["filters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "base64")
    );
    assert_eq!(v["shape"], json!([32, 32]));
    assert_eq!(v["type"], "<u4");
    let data = v["data"].as_str().unwrap();
    // 4096 bytes of zeros → 5464 base64 characters (1366 groups, two padding characters).
    assert_eq!(data.len(), 4096usize.div_ceil(3) * 4);
    assert!(data.starts_with("AAAA") && data.ends_with("AA=="));
}
