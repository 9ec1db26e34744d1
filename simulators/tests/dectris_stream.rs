//! The DECTRIS simulator's stream v1 (protocols.md §2.4) through a ZeroMQ PULL socket:
//! replay of the reference capture byte for byte, every message type and its JSON fields,
//! `header_detail` all/basic/none.

mod dectris_support;

use dectris_support::*;
use serde_json::{Value, json};
use std::time::Duration;

#[test]
fn replayed_capture_is_byte_identical_to_the_dump() {
    let dump = read_dump(&capture_path());
    let s = capture_sim();
    let a = s.api_addr();
    // The recorded configuration is the initial one.
    assert_eq!(config(a, "trigger_mode"), "exte");
    assert_eq!(config(a, "ntrigger"), 256);
    assert_eq!(config(a, "compression"), "bslz4");
    assert_eq!(config(a, "x_pixels_in_detector"), 256);
    let (c, body) = put(a, "/detector/api/1.8.0/config/compression", json!("none"));
    assert_eq!(c, 400, "a capture holds bslz4 frames only: {body}");

    let mut p = Puller::connect(&s.stream_endpoint());
    set(a, "trigger_mode", json!("ints"));
    set(a, "ntrigger", json!(1));
    set(a, "nimages", json!(256));
    let series = arm(a);
    assert_eq!(series, 34, "the first arm replays the recorded series id");

    let header = p.recv();
    assert_eq!(
        header.len(),
        2,
        "basic header: dheader + config, one message"
    );
    assert_eq!(header[0], dump[0], "dheader-1.0 as recorded");
    let recorded: Value = json(&dump[1]);
    let sent: Value = json(&header[1]);
    for (k, v) in recorded.as_object().unwrap() {
        let expect = match k.as_str() {
            "trigger_mode" => json!("ints"),
            "nimages" => json!(256),
            "ntrigger" => json!(1),
            _ => v.clone(),
        };
        if k != "data_collection_date" {
            assert_eq!(sent[k], expect, "detector config key {k}");
        }
    }
    assert!(
        p.recv_within(Duration::from_millis(100)).is_none(),
        "no image before the trigger"
    );
    command(a, "trigger");
    let (images, end) = images_until_end(&mut p);
    assert_eq!(images.len(), 256);
    assert_eq!(end, json!({"htype": "dseries_end-1.0", "series": 34}));
    let mut last_stop = 0;
    for (i, m) in images.iter().enumerate() {
        let rec = &dump[2 + 4 * i..2 + 4 * i + 4];
        assert_eq!(m.len(), 4, "frame {i}: four parts");
        assert_eq!(m[0], rec[0], "frame {i}: dimage-1.0 as recorded");
        assert_eq!(m[1], rec[1], "frame {i}: dimage_d-1.0 as recorded");
        assert_eq!(m[2], rec[2], "frame {i}: blob byte-identical");
        let d = json(&m[0]);
        assert_eq!(d["series"], 34);
        assert_eq!(d["frame"], i as u64);
        assert_eq!(d["hash"], md5_hex(&m[2]), "hash = MD5 of the blob");
        let dd = json(&m[1]);
        assert_eq!(dd["shape"], json!([256, 256]));
        assert_eq!(dd["type"], "uint16");
        assert_eq!(dd["encoding"], "bs16-lz4<");
        assert_eq!(dd["size"], m[2].len());
        let dc = json(&m[3]);
        assert_eq!(dc["htype"], "dconfig-1.0");
        let (start, stop, real) = (
            dc["start_time"].as_u64().unwrap(),
            dc["stop_time"].as_u64().unwrap(),
            dc["real_time"].as_u64().unwrap(),
        );
        assert_eq!(real, 999_900, "real_time = count_time 0.0009999 s in ns");
        assert_eq!(stop - start, real);
        assert!(stop >= last_stop, "frame {i}: stop_time goes backwards");
        last_stop = stop;
    }
    let st = s.stats();
    assert_eq!(st.frames_sent, 256);
    assert_eq!(st.messages_sent, 258);
    let received: usize = header.iter().map(Vec::len).sum::<usize>()
        + images.iter().flatten().map(Vec::len).sum::<usize>()
        + end.to_string().len();
    assert_eq!(
        st.bytes_sent, received as u64,
        "bytes = all parts of all messages"
    );

    // The next series counts up and cycles the same frames.
    assert_eq!(arm(a), 35);
    command(a, "trigger");
    assert_eq!(json(&p.recv()[0])["series"], 35);
    let (images, _) = images_until_end(&mut p);
    assert_eq!(images.len(), 256);
    assert_eq!(images[0][2], dump[4]);
}

#[test]
fn header_detail_all_basic_none() {
    let s = capture_sim();
    let a = s.api_addr();
    let mut p = Puller::connect(&s.stream_endpoint());
    set(a, "trigger_mode", json!("ints"));

    set_stream(a, "header_detail", json!("all"));
    arm(a);
    let h = p.recv();
    let types: Vec<String> = [0, 2, 4, 6].iter().map(|&i| htype(&h[i])).collect();
    assert_eq!(
        types,
        [
            "dheader-1.0",
            "dflatfield-1.0",
            "dpixelmask-1.0",
            "dcountrate_table-1.0"
        ]
    );
    assert_eq!(h.len(), 8);
    assert_eq!(json(&h[0])["header_detail"], "all");
    assert!(
        json(&h[1]).get("htype").is_none(),
        "part 2 is the detector config"
    );
    assert_eq!(json(&h[2])["shape"], json!([256, 256]));
    assert_eq!(h[3].len(), 256 * 256 * 4, "flatfield float32 per pixel");
    assert_eq!(json(&h[4])["type"], "uint32");
    assert_eq!(h[5].len(), 256 * 256 * 4, "pixel mask uint32 per pixel");
    let n = json(&h[6])["shape"][1].as_u64().unwrap() as usize;
    assert_eq!(h[7].len(), 2 * n * 4);
    command(a, "disarm");
    assert_eq!(htype(&p.recv()[0]), "dseries_end-1.0");

    set_stream(a, "header_detail", json!("none"));
    arm(a);
    let h = p.recv();
    assert_eq!(h.len(), 1);
    assert_eq!(json(&h[0])["header_detail"], "none");
    command(a, "abort");
    assert_eq!(htype(&p.recv()[0]), "dseries_end-1.0");

    set_stream(a, "header_detail", json!("basic"));
    set_stream(a, "header_appendix", json!("{\"user\":1}"));
    arm(a);
    let h = p.recv();
    assert_eq!(h.len(), 3, "basic + header_appendix");
    assert_eq!(h[2], b"{\"user\":1}");
    command(a, "cancel");
    assert_eq!(htype(&p.recv()[0]), "dseries_end-1.0");
}

#[test]
fn stream_mode_disabled_sends_nothing() {
    let s = capture_sim();
    let a = s.api_addr();
    let mut p = Puller::connect(&s.stream_endpoint());
    set(a, "trigger_mode", json!("ints"));
    set(a, "nimages", json!(5));
    set(a, "ntrigger", json!(1));
    set_stream(a, "mode", json!("disabled"));
    arm(a);
    command(a, "trigger");
    assert!(p.recv_within(Duration::from_millis(300)).is_none());
    assert_eq!(state(a), "idle", "the series ran without the stream");
    assert_eq!(s.stats().frames_discarded, 5);
}

#[test]
fn messages_wait_for_a_late_client_and_a_stop_releases_them() {
    let s = capture_sim();
    let a = s.api_addr();
    set(a, "trigger_mode", json!("ints"));
    set(a, "ntrigger", json!(1));
    set(a, "nimages", json!(3));
    // Armed and triggered with nobody listening: like libzmq PUSH, nothing is lost.
    arm(a);
    command(a, "trigger");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(s.stats().messages_sent, 0);
    let mut p = Puller::connect(&s.stream_endpoint());
    assert_eq!(htype(&p.recv()[0]), "dheader-1.0");
    let (images, end) = images_until_end(&mut p);
    assert_eq!(images.len(), 3);
    assert_eq!(end["series"], 34);
    drop(p);

    // With no client, disarm gives up on the waiting header; the detector is idle at once
    // and serves the next series to the next client.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(arm(a), 35);
    command(a, "disarm");
    assert_eq!(state(a), "idle");
    assert_eq!(arm(a), 36);
    command(a, "trigger");
    let mut p = Puller::connect(&s.stream_endpoint());
    let first = p.recv();
    // The end of series 35 may have found the new client within its patience (1 s).
    let header = if htype(&first[0]) == "dseries_end-1.0" {
        assert_eq!(json(&first[0])["series"], 35);
        p.recv()
    } else {
        first
    };
    assert_eq!(json(&header[0])["series"], 36);
    let (images, _) = images_until_end(&mut p);
    assert_eq!(images.len(), 3);
}
