//! Reduction specs end to end, as a user runs them: `stemflow process FILE --reductions
//! SPEC.toml` on a real Merlin recording, checked value by value against a naive reference
//! computed here from the same frames (read with the Merlin driver's file reader); the ROI
//! (spec and `--roi-mask`) leaving NaN outside; a bad spec failing with a clear message;
//! and a live run (the simulated instrument) computing a spec's UDFs.
//!
//! Every child process runs under a deadline and is killed (with its process group) when
//! its guard drops.

mod common;

use common::command::{path_arg as arg, result_buffer as buffer, stemflow};
use common::process::ChildGuard;
use common::scratch::{ScratchDir, shared_data};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use stemflow_core::frame::Tile;
use stemflow_core::result::UdfResults;
use stemflow_drivers::merlin::MibFile;
use stemflow_recording::reader::open_recording;

/// 9 frames of 256 × 256 12-bit counts (→ u16), scanned here as 3 × 3.
const STEM: &str = "Single_9_Frame_CounterDepth_12_Rows_256";

fn results(h5: &Path) -> Vec<UdfResults> {
    open_recording(h5)
        .and_then(|r| r.results())
        .unwrap_or_else(|e| panic!("results of {}: {e}", h5.display()))
}

/// The UDF names of `results`, sorted (the file keeps groups in name order).
fn udf_names(results: &[UdfResults]) -> Vec<&str> {
    let mut names: Vec<&str> = results.iter().map(|r| r.udf.as_str()).collect();
    names.sort_unstable();
    names
}

/// Writes a 2-D `uint8` `.npy` array.
fn write_npy_u8(path: &Path, shape: [usize; 2], data: &[u8]) {
    let mut bytes = stemflow_processing::io::npy::header_bytes("|u1", &shape);
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// The frames of the recording as `f64` pixels, read with the Merlin driver.
fn frames(hdr: &Path) -> Vec<Vec<f64>> {
    let mut file = MibFile::open(hdr).unwrap_or_else(|e| panic!("{}: {e}", hdr.display()));
    let n = file.frames() as usize;
    let sig = file.sig_shape();
    let mut tile = Tile::zeros(0, n, sig, file.dtype());
    file.read_tile(0, n, &mut tile)
        .unwrap_or_else(|e| panic!("{}: {e}", hdr.display()));
    (0..n)
        .map(|i| {
            let f = tile.frame(i);
            (0..sig.len()).map(|j| f.get_f64(j)).collect()
        })
        .collect()
}

/// True when pixel `(x, y)`'s centre lies inside the triangle (all three edge tests agree;
/// vertices off the half-pixel grid, so no centre lies on an edge).
fn in_triangle(tri: [(f64, f64); 3], x: usize, y: usize) -> bool {
    let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
    let s =
        |(ax, ay): (f64, f64), (bx, by): (f64, f64)| (bx - ax) * (py - ay) - (by - ay) * (px - ax);
    let (a, b, c) = (s(tri[0], tri[1]), s(tri[1], tri[2]), s(tri[2], tri[0]));
    (a > 0.0 && b > 0.0 && c > 0.0) || (a < 0.0 && b < 0.0 && c < 0.0)
}

const TRIANGLE: [(f64, f64); 3] = [(20.3, 30.1), (200.7, 60.2), (90.4, 220.9)];

/// A sparse custom mask: pixels with `(7x + 3y) % 5 == 0`.
fn custom_mask(x: usize, y: usize) -> bool {
    (7 * x + 3 * y).is_multiple_of(5)
}

fn spec_text() -> String {
    let [(x0, y0), (x1, y1), (x2, y2)] = TRIANGLE;
    format!(
        r#"
[[udf]]
kind = "stats"

[[udf]]
kind = "masks"
name = "det"
masks = [ {{ name = "tri", polygon = [[{x0}, {y0}], [{x1}, {y1}], [{x2}, {y2}]] }},
          {{ name = "mine", custom = "masks/mine.npy" }},
          {{ name = "bf", disk = {{ r = 40 }} }} ]

[[udf]]
kind = "radial"
cx = 128
cy = 128
bin_width = 16
n_bins = 8

[roi]
rect = {{ rows = [0, 2], cols = [1, 3] }}
"#
    )
}

/// Scan positions inside the spec's ROI (rows 0..2, cols 1..3 of 3 × 3).
const INSIDE: [usize; 4] = [1, 2, 4, 5];

/// `got` equals `want` to 1e-9 (relative above 1); `at` is the element, for the message.
fn assert_close(what: &str, at: usize, got: f64, want: f64) {
    let tol = 1e-9 * want.abs().max(1.0);
    assert!(
        (got - want).abs() <= tol,
        "{what} at {at}: got {got}, expected {want}"
    );
}

/// `stemflow process --reductions`: statistics, virtual detectors (polygon, custom `.npy`
/// mask, centred disk) and a radial profile over a rectangular ROI, against a naive
/// reference; NaN outside the ROI; outputs (run.json index, PNGs, per-UDF lines).
#[test]
fn process_with_a_spec_matches_a_naive_reference_inside_the_roi() {
    let dir = ScratchDir::new("cli-reductions-process");
    let hdr = shared_data().join(format!("merlin/Merlin_Single_Quad/{STEM}.hdr"));
    let (rows, cols) = (256usize, 256usize);
    let spec = write_spec(dir.path());
    let out = dir.path().join("out");
    let run = stemflow(
        &[
            "process",
            arg(&hdr),
            "--nav-shape",
            "3x3",
            "--reductions",
            arg(&spec),
            "--out",
            arg(&out),
        ],
        dir.path(),
        "process",
    );
    assert!(run.status.success(), "process failed: {}", run.describe());

    let frames = frames(&hdr);
    assert_eq!(frames.len(), 9);
    let res = results(&out.join("recording.hspy"));
    assert_eq!(
        udf_names(&res),
        ["det", "radial", "stats"],
        "only the spec's UDFs run"
    );

    // Virtual detectors: exact sums inside the ROI, NaN outside.
    let pixels = |pred: &dyn Fn(usize, usize) -> bool| -> Vec<usize> {
        (0..rows * cols)
            .filter(|&i| pred(i % cols, i / cols))
            .collect()
    };
    let tri = pixels(&|x, y| in_triangle(TRIANGLE, x, y));
    let mine = pixels(&custom_mask);
    let bf = pixels(&|x, y| {
        let (dx, dy) = (x as f64 + 0.5 - 128.0, y as f64 + 0.5 - 128.0);
        dx.hypot(dy) <= 40.0
    });
    assert!(tri.len() > 1000 && mine.len() > 1000 && bf.len() > 1000);
    for (name, px) in [("tri", &tri), ("mine", &mine), ("bf", &bf)] {
        let b = buffer(&res, "det", name);
        assert_eq!(b.shape, vec![3, 3], "det/{name} shape");
        for (i, frame) in frames.iter().enumerate() {
            let got = b.data[i];
            if INSIDE.contains(&i) {
                let want: f64 = px.iter().map(|&p| frame[p]).sum();
                assert_eq!(got, want, "det/{name} at scan position {i}");
            } else {
                assert!(got.is_nan(), "det/{name} at {i} outside the ROI: {got}");
            }
        }
    }
    // The recording's frames have counts under every mask (a real check, not 0 = 0).
    assert!(buffer(&res, "det", "bf").data[INSIDE[0]] > 0.0);

    // Statistics over the ROI's frames only.
    let n = INSIDE.len() as f64;
    assert_eq!(buffer(&res, "stats", "frames").data, vec![n]);
    let (mean, var, min, max) = (
        buffer(&res, "stats", "mean"),
        buffer(&res, "stats", "var"),
        buffer(&res, "stats", "min"),
        buffer(&res, "stats", "max"),
    );
    assert_eq!(mean.shape, vec![rows, cols]);
    for (p, &got_mean) in mean.data.iter().enumerate() {
        let v: Vec<f64> = INSIDE.iter().map(|&i| frames[i][p]).collect();
        let m = v.iter().sum::<f64>() / n;
        let s2 = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n;
        assert_close("stats/mean", p, got_mean, m);
        assert_close("stats/var", p, var.data[p], s2);
        assert_eq!(min.data[p], v.iter().copied().fold(f64::INFINITY, f64::min));
        assert_eq!(
            max.data[p],
            v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
        );
    }

    // Radial profile: the mean of each 16-pixel ring about (128, 128).
    let profile = buffer(&res, "radial", "profile");
    assert_eq!(profile.shape, vec![3, 3, 8]);
    for (i, frame) in frames.iter().enumerate() {
        for k in 0..8 {
            let got = profile.data[i * 8 + k];
            if !INSIDE.contains(&i) {
                assert!(got.is_nan(), "radial at {i} bin {k} outside the ROI: {got}");
                continue;
            }
            let ring = pixels(&|x, y| {
                let d = (x as f64 + 0.5 - 128.0).hypot(y as f64 + 0.5 - 128.0);
                (d / 16.0).floor() as usize == k
            });
            let want = ring.iter().map(|&p| frame[p]).sum::<f64>() / ring.len() as f64;
            assert_close("radial (position × 8 + bin)", i * 8 + k, got, want);
        }
    }

    // run.json indexes every buffer; PNGs for every 2-D nav result; one line per UDF.
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).expect("run.json"))
            .expect("run.json is JSON");
    assert_eq!(record["frames_outside_roi"], 5);
    let index = record["results"].as_array().expect("results index");
    let find = |udf: &str, buf: &str| {
        index
            .iter()
            .find(|e| e["udf"] == udf && e["buffer"] == buf)
            .unwrap_or_else(|| panic!("run.json lacks {udf}/{buf}: {index:?}"))
    };
    assert_eq!(find("det", "tri")["finite"], 4);
    // Mask sums are exact counts, the statistics' mean is not.
    assert_eq!(find("det", "tri")["dtype"], "uint64");
    assert_eq!(find("stats", "mean")["dtype"], "float64");
    assert_eq!(
        find("radial", "profile")["shape"],
        serde_json::json!([3, 3, 8])
    );
    find("stats", "std");
    // Each UDF with the parameters that produced its results, defaults resolved.
    let udfs = record["udfs"].as_array().expect("udfs index");
    let params = |udf: &str| {
        udfs.iter()
            .find(|e| e["udf"] == udf)
            .unwrap_or_else(|| panic!("run.json lacks udf {udf}: {udfs:?}"))["params"]
            .clone()
    };
    assert_eq!(
        params("radial"),
        serde_json::json!({"cx": 128.0, "cy": 128.0, "bin_width": 16.0, "n_bins": 8})
    );
    assert_eq!(
        params("stats"),
        Value::Null,
        "statistics have no parameters"
    );
    // The custom mask: its file and its pixels, as used.
    let mine = &params("det")["masks"][1];
    assert_eq!(mine["name"], "mine");
    assert!(
        mine["source"]
            .as_str()
            .is_some_and(|s| s.ends_with("masks/mine.npy")),
        "{mine:?}"
    );
    let pixels = (0..256 * 256)
        .filter(|&i| custom_mask(i % 256, i / 256))
        .count();
    assert_eq!(mine["mask"]["pixel_count"], pixels, "{mine:?}");
    for png in ["det_tri.png", "det_mine.png", "det_bf.png"] {
        assert!(out.join(png).is_file(), "{png} missing");
    }
    assert!(
        !out.join("virtual_bf.png").exists(),
        "the default set ran too"
    );
    for line in [
        "stats: mean [256x256 sig",
        "det: tri [3x3 nav, counts]",
        "radial: profile [3x3x8 nav",
    ] {
        assert!(
            run.stdout.contains(line),
            "no `{line}` line: {}",
            run.describe()
        );
    }

    // --roi-mask replaces the spec's ROI: only scan position 8 (row 2, col 2).
    let mut roi = [0u8; 9];
    roi[8] = 1;
    let roi_file = dir.path().join("roi.npy");
    write_npy_u8(&roi_file, [3, 3], &roi);
    let out2 = dir.path().join("out2");
    let run = stemflow(
        &[
            "process",
            arg(&hdr),
            "--nav-shape",
            "3x3",
            "--reductions",
            arg(&spec),
            "--roi-mask",
            arg(&roi_file),
            "--out",
            arg(&out2),
        ],
        dir.path(),
        "process-roi-mask",
    );
    assert!(
        run.status.success(),
        "process --roi-mask failed: {}",
        run.describe()
    );
    let res = results(&out2.join("recording.hspy"));
    let tri_sums = &buffer(&res, "det", "tri").data;
    let want: f64 = tri.iter().map(|&p| frames[8][p]).sum();
    assert_eq!(tri_sums[8], want);
    assert!(tri_sums[..8].iter().all(|v| v.is_nan()), "{tri_sums:?}");
    assert_eq!(buffer(&res, "stats", "frames").data, vec![1.0]);
}

/// Writes the spec of [`spec_text`] and its custom mask into `dir/specs`; returns the spec.
fn write_spec(dir: &Path) -> PathBuf {
    let (rows, cols) = (256usize, 256usize);
    std::fs::create_dir_all(dir.join("specs/masks")).expect("spec folder");
    let mask: Vec<u8> = (0..rows * cols)
        .map(|i| u8::from(custom_mask(i % cols, i / cols)))
        .collect();
    write_npy_u8(&dir.join("specs/masks/mine.npy"), [rows, cols], &mask);
    let spec = dir.join("specs/spec.toml");
    std::fs::write(&spec, spec_text()).expect("spec");
    spec
}

/// `stemflow acquire --reductions` from the Merlin simulator serving the recording and
/// `stemflow process --reductions` on the file give bit-identical results for every buffer
/// of every UDF of the spec (NaN outside the ROI included).
#[test]
fn acquire_with_a_spec_equals_process_with_it() {
    let dir = ScratchDir::new("cli-reductions-acquire");
    let hdr = shared_data().join(format!("merlin/Merlin_Single_Quad/{STEM}.hdr"));
    let spec = write_spec(dir.path());

    let mut sim_cmd = Command::new(env!("CARGO_BIN_EXE_stemflow"));
    sim_cmd
        .args(["sim", "merlin", "--control-port", "0", "--data-port", "0"])
        .args(["--fast", "--duration-s", "120", "--recording"])
        .arg(&hdr)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut sim = ChildGuard::spawn("stemflow sim merlin", &mut sim_cmd);
    let log = sim.tap_stdout();
    let ports = log.wait_for(
        Duration::from_secs(30),
        || sim.try_status().is_none(),
        |text| {
            let line = text.lines().find(|l| l.starts_with("control_port="))?;
            let mut it = line
                .split_whitespace()
                .filter_map(|kv| kv.split_once('=')?.1.parse::<u16>().ok());
            Some((it.next()?, it.next()?))
        },
    );
    let Some((control, data)) = ports else {
        panic!("`stemflow sim merlin` printed no ports: {}", log.text());
    };
    let live = dir.path().join("live");
    let (c, d) = (control.to_string(), data.to_string());
    let run = stemflow(
        &[
            "acquire",
            "--control-port",
            &c,
            "--data-port",
            &d,
            "--mode",
            "active",
            "--trigger",
            "soft",
            "--nav-shape",
            "3x3",
            "--counter-depth",
            "12",
            "--reductions",
            arg(&spec),
            "--out",
            arg(&live),
        ],
        dir.path(),
        "acquire",
    );
    assert!(run.status.success(), "acquire failed: {}", run.describe());

    // A spec that does not fit the shapes announced at arm time fails the acquisition
    // with the spec's message.
    let bad = dir.path().join("pick.toml");
    std::fs::write(&bad, "[[udf]]\nkind = \"pick\"\nrow = 7\ncol = 0\n").expect("spec");
    let failed = stemflow(
        &[
            "acquire",
            "--control-port",
            &c,
            "--data-port",
            &d,
            "--mode",
            "active",
            "--trigger",
            "soft",
            "--nav-shape",
            "3x3",
            "--counter-depth",
            "12",
            "--reductions",
            arg(&bad),
            "--out",
            arg(&dir.path().join("failed")),
        ],
        dir.path(),
        "acquire-bad",
    );
    assert_eq!(failed.status.code(), Some(1), "{}", failed.describe());
    let said = format!("{}{}", failed.stdout, failed.stderr);
    assert!(
        said.contains("pick.toml") && said.contains("`row`") && said.contains("found 7"),
        "{}",
        failed.describe()
    );
    drop(log);
    drop(sim);

    let offline = dir.path().join("offline");
    let run = stemflow(
        &[
            "process",
            arg(&hdr),
            "--nav-shape",
            "3x3",
            "--reductions",
            arg(&spec),
            "--out",
            arg(&offline),
        ],
        dir.path(),
        "process",
    );
    assert!(run.status.success(), "process failed: {}", run.describe());

    let a = results(&live.join("recording.hspy"));
    let b = results(&offline.join("recording.hspy"));
    assert_eq!(udf_names(&a), ["det", "radial", "stats"]);
    assert_eq!(udf_names(&a), udf_names(&b));
    type Bits = Vec<(String, String, Vec<usize>, Vec<u64>)>;
    let bits = |r: &[UdfResults]| -> Bits {
        let mut v: Bits = r
            .iter()
            .flat_map(|u| {
                u.buffers.iter().map(|b| {
                    (
                        u.udf.clone(),
                        b.name.clone(),
                        b.shape.clone(),
                        b.data.iter().map(|x| x.to_bits()).collect(),
                    )
                })
            })
            .collect();
        v.sort();
        v
    };
    let (la, lb) = (bits(&a), bits(&b));
    assert_eq!(la.len(), lb.len());
    for (x, y) in la.iter().zip(&lb) {
        assert_eq!((&x.0, &x.1, &x.2), (&y.0, &y.1, &y.2));
        assert!(x.3 == y.3, "{}/{}: live and offline differ", x.0, x.1);
    }
    // The ROI holds in the live run too.
    let tri = &buffer(&a, "det", "tri").data;
    assert!(tri[0].is_nan() && tri[1].is_finite(), "{tri:?}");
}

/// A spec with an unknown key, or one that does not fit the data, fails with exit status 1
/// and a message naming the entry, the key and what was expected; nothing is recorded.
#[test]
fn a_bad_spec_fails_clearly() {
    let dir = ScratchDir::new("cli-reductions-bad");
    let hdr = shared_data().join(format!("merlin/Merlin_Single_Quad/{STEM}.hdr"));
    let cases: [(&str, &[&str]); 3] = [
        (
            "[[udf]]\nkind = \"stats\"\n[[udf]]\nkind = \"com\"\nradius = 3\n",
            &["udf[1]", "kind = \"com\"", "radius", "mask_radius"],
        ),
        (
            "[[udf]]\nkind = \"pick\"\nrow = 5\ncol = 0\n",
            &["udf[0]", "`row`", "found 5", "3x3"],
        ),
        (
            "[[udf]]\nkind = \"sum\"\n[roi]\nrect = { rows = [0, 4], cols = [0, 1] }\n",
            &["roi", "rect", "rows 0..4"],
        ),
    ];
    for (i, (text, wanted)) in cases.iter().enumerate() {
        let spec = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&spec, text).expect("spec");
        let out = dir.path().join(format!("out{i}"));
        let run = stemflow(
            &[
                "process",
                arg(&hdr),
                "--nav-shape",
                "3x3",
                "--reductions",
                arg(&spec),
                "--out",
                arg(&out),
            ],
            dir.path(),
            &format!("bad{i}"),
        );
        assert_eq!(run.status.code(), Some(1), "case {i}: {}", run.describe());
        for w in *wanted {
            assert!(
                run.stderr.contains(w),
                "case {i}: `{w}` not in: {}",
                run.describe()
            );
        }
        assert!(
            run.stderr.contains(&format!("bad{i}.toml")),
            "case {i}: file not named: {}",
            run.describe()
        );
        assert!(
            !out.join("recording.hspy").exists(),
            "case {i}: a recording was written"
        );
    }
    // A missing spec file is named too.
    let run = stemflow(
        &["process", arg(&hdr), "--reductions", "no-such-spec.toml"],
        dir.path(),
        "missing",
    );
    assert_eq!(run.status.code(), Some(1), "{}", run.describe());
    assert!(
        run.stderr.contains("no-such-spec.toml"),
        "{}",
        run.describe()
    );
}

/// The simulated instrument's live run with `--reductions` and `--roi-rect`: the spec's
/// extra UDFs (statistics, a rectangle virtual detector) are computed live, written to the
/// recording and run.json, NaN outside the ROI, with an image per 2-D nav result.
#[test]
fn live_run_computes_the_spec_udfs() {
    let dir = ScratchDir::new("cli-reductions-live");
    let spec = dir.path().join("live.toml");
    std::fs::write(
        &spec,
        "[[udf]]\nkind = \"sum_sig\"\n[[udf]]\nkind = \"stats\"\n[[udf]]\nkind = \"masks\"\nname = \"slit\"\n\
         masks = [ { name = \"v\", rectangle = { x = 120, y = 0, width = 16, height = 256 } } ]\n",
    )
    .expect("spec");
    let out = dir.path().join("out");
    let run = stemflow(
        &[
            "--out",
            arg(&out),
            "--nav-shape",
            "8x8",
            "--reductions",
            arg(&spec),
            "--roi-rect",
            "0:4,0:8",
        ],
        dir.path(),
        "live",
    );
    assert!(run.status.success(), "live run failed: {}", run.describe());
    assert!(
        run.stdout
            .contains("64 expected, 64 received, 0 lost, 0 damaged"),
        "{}",
        run.describe()
    );
    let h5 = out.join("recording.hspy");
    let res = results(&h5);
    assert_eq!(udf_names(&res), ["slit", "stats", "sum_sig"]);
    // 32 positions in the ROI (rows 0..4 of 8 × 8).
    assert_eq!(buffer(&res, "stats", "frames").data, vec![32.0]);
    let v = &buffer(&res, "slit", "v").data;
    let per_frame = &buffer(&res, "sum_sig", "intensity").data;
    assert_eq!(v.len(), 64);
    for i in 0..64 {
        if i < 32 {
            assert!(
                v[i] > 0.0 && v[i] <= per_frame[i],
                "position {i}: {} of {}",
                v[i],
                per_frame[i]
            );
        } else {
            assert!(
                v[i].is_nan() && per_frame[i].is_nan(),
                "position {i} outside the ROI"
            );
        }
    }
    // The recorded frames are all there (the ROI limits reduction, not recording), and the
    // slit's sums agree with them.
    let rec = open_recording(&h5).expect("recording");
    assert_eq!(rec.frames(), 64);
    let tile = rec.read_tile(0, 2).expect("raw frames");
    for (f, &got) in v.iter().enumerate().take(2) {
        let want: f64 = (0..256)
            .flat_map(|y| (120..136).map(move |x| y * 256 + x))
            .map(|p| tile.data.view().get_f64(f * 256 * 256 + p))
            .sum();
        assert_eq!(got, want, "slit at position {f}");
    }
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).expect("run.json"))
            .expect("run.json is JSON");
    let index = record["results"].as_array().expect("results index");
    assert!(
        index
            .iter()
            .any(|e| e["udf"] == "stats" && e["buffer"] == "mean"),
        "{index:?}"
    );
    assert!(out.join("slit_v.png").is_file() && out.join("sum_sig_intensity.png").is_file());
    assert!(
        run.stdout.contains("slit: v [8x8 nav"),
        "{}",
        run.describe()
    );
}

/// A profile naming a spec (`[reductions] spec`, relative to the profile) makes the live
/// runs compute it without any command-line option: the default simulated run and a plan
/// (`stemflow run`).
#[test]
fn profile_spec_is_used_by_the_live_runs() {
    let dir = ScratchDir::new("cli-reductions-profile");
    let conf = dir.path().join("conf");
    std::fs::create_dir_all(conf.join("red")).expect("folder");
    std::fs::write(
        conf.join("red/r.toml"),
        "[[udf]]\nkind = \"radial\"\nbin_width = 32\n[[udf]]\nkind = \"pick\"\nrow = 1\ncol = 2\n",
    )
    .expect("spec");
    let profile = stemflow_config::SIMULATED_PROFILE
        .replace("[reductions]\n", "[reductions]\nspec = \"red/r.toml\"\n")
        .replace("nav_shape = [64, 64]", "nav_shape = [4, 4]");
    assert!(profile.contains("spec = \"red/r.toml\"") && profile.contains("[4, 4]"));
    let p = conf.join("profile.toml");
    std::fs::write(&p, profile).expect("profile");

    let out: PathBuf = dir.path().join("out");
    let run = stemflow(
        &["--profile", arg(&p), "--out", arg(&out)],
        dir.path(),
        "profile",
    );
    assert!(run.status.success(), "run failed: {}", run.describe());
    let res = results(&out.join("recording.hspy"));
    assert_eq!(udf_names(&res), ["pick", "radial"]);
    // 256 × 256 frames, 32-pixel bins out to the corner (181 px): 6 bins.
    assert_eq!(buffer(&res, "radial", "profile").shape, vec![4, 4, 6]);
    assert_eq!(buffer(&res, "pick", "picked").data, vec![1.0]);
    assert!(buffer(&res, "pick", "intensity").data.iter().sum::<f64>() > 0.0);

    // A plan on the same profile: its scan (8 × 8 here) with the profile's spec.
    let plan =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("sequences/examples/quickstart-scan.toml");
    let out = dir.path().join("plan-out");
    let run = stemflow(
        &["run", arg(&plan), "--profile", arg(&p), "--out", arg(&out)],
        dir.path(),
        "plan",
    );
    assert!(run.status.success(), "plan failed: {}", run.describe());
    let h5 = plan_recordings(&out);
    assert_eq!(h5.len(), 1, "{h5:?}");
    let res = results(&h5[0]);
    assert_eq!(udf_names(&res), ["pick", "radial"]);
    assert_eq!(buffer(&res, "radial", "profile").shape, vec![8, 8, 6]);

    // `run --reductions` replaces the profile's spec; a bad one fails even a dry run.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[udf]]\nkind = \"sums\"\n").expect("spec");
    let run = stemflow(
        &[
            "run",
            "--dry-run",
            arg(&plan),
            "--profile",
            arg(&p),
            "--reductions",
            arg(&bad),
        ],
        dir.path(),
        "plan-bad",
    );
    assert_eq!(run.status.code(), Some(1), "{}", run.describe());
    assert!(
        run.stderr.contains("bad.toml") && run.stderr.contains("unknown kind `sums`"),
        "{}",
        run.describe()
    );
}

/// The recordings of a plan's acquisitions: `OUT/NNN_label/recording.hspy`, each folder
/// holding run.json and the images too, as a single run's output folder does.
fn plan_recordings(out: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(out)
        .expect("plan output")
        .map(|e| e.expect("entry").path())
        .filter(|d| d.is_dir())
        .map(|d| d.join("recording.hspy"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    for rec in &found {
        let dir = rec.parent().expect("acquisition folder");
        let run: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("run.json")).expect("the acquisition's run.json"),
        )
        .expect("run.json is JSON");
        assert_eq!(run["exit_status"], "completed", "{}", dir.display());
    }
    found
}

/// `run` and `queue` take `--roi-rect` like `process` and `acquire`: the plan's recording
/// has values inside the ROI only. Spec and ROI are checked against every plan's scan
/// before anything runs (dry runs included): a ROI larger than one unit's scan or a spec
/// that picks a position outside a scan fails naming the unit, instead of when that unit
/// is armed.
#[test]
fn run_and_queue_take_a_roi_checked_against_every_scan() {
    let dir = ScratchDir::new("cli-reductions-run-roi");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("sequences/examples");
    let plan = examples.join("quickstart-scan.toml");
    let profile = examples.join("small-sim-profile.toml");

    // The 8 × 8 quickstart scan, rows 1..3 and columns 2..5 only.
    let out = dir.path().join("plan-out");
    let run = stemflow(
        &[
            "run",
            arg(&plan),
            "--profile",
            arg(&profile),
            "--roi-rect",
            "1:3,2:5",
            "--out",
            arg(&out),
        ],
        dir.path(),
        "plan-roi",
    );
    assert!(run.status.success(), "plan failed: {}", run.describe());
    assert!(
        run.stdout.contains("ROI rows 1..3, cols 2..5"),
        "{}",
        run.describe()
    );
    let h5 = plan_recordings(&out);
    assert_eq!(h5.len(), 1, "{h5:?}");
    // The acquisition's folder has its images, as a single run's has.
    let acq_dir = h5[0].parent().expect("folder");
    for png in ["sum_sig_intensity.png", "virtual_bf.png", "overview.png"] {
        assert!(
            acq_dir.join(png).is_file(),
            "{png} missing in {}",
            acq_dir.display()
        );
    }
    let res = results(&h5[0]);
    let sum_sig = buffer(&res, "sum_sig", "intensity");
    assert_eq!(sum_sig.shape, vec![8, 8]);
    for (i, v) in sum_sig.data.iter().enumerate() {
        let (r, c) = (i / 8, i % 8);
        let inside = (1..3).contains(&r) && (2..5).contains(&c);
        assert_eq!(v.is_finite(), inside, "position ({r}, {c}): {v}");
    }

    // The overnight queue scans 4 × 4 (dark, rescan region) and 8 × 8: a 6 × 6 ROI does not
    // fit the dark reference, found at validation.
    let queue = examples.join("overnight-queue.toml");
    let q = stemflow(
        &[
            "queue",
            "--dry-run",
            arg(&queue),
            "--profile",
            arg(&profile),
            "--roi-rect",
            "0:6,0:6",
        ],
        dir.path(),
        "queue-roi",
    );
    assert_eq!(q.status.code(), Some(1), "{}", q.describe());
    assert!(
        q.stderr.contains("dark") && q.stderr.contains("ROI"),
        "{}",
        q.describe()
    );
    // A 2 × 2 ROI fits every scan.
    let q = stemflow(
        &[
            "queue",
            "--dry-run",
            arg(&queue),
            "--profile",
            arg(&profile),
            "--roi-rect",
            "0:2,0:2",
        ],
        dir.path(),
        "queue-roi-fits",
    );
    assert!(q.status.success(), "{}", q.describe());
    assert!(
        q.stdout.contains("ROI rows 0..2, cols 0..2"),
        "{}",
        q.describe()
    );

    // A spec picking scan position (6, 6): fits the 8 × 8 scans, not the 4 × 4 ones.
    let spec = dir.path().join("pick.toml");
    std::fs::write(&spec, "[[udf]]\nkind = \"pick\"\nrow = 6\ncol = 6\n").expect("spec");
    let run = stemflow(
        &[
            "run",
            "--dry-run",
            arg(&plan),
            "--profile",
            arg(&profile),
            "--reductions",
            arg(&spec),
        ],
        dir.path(),
        "plan-pick",
    );
    assert!(run.status.success(), "{}", run.describe());
    let q = stemflow(
        &[
            "queue",
            "--dry-run",
            arg(&queue),
            "--profile",
            arg(&profile),
            "--reductions",
            arg(&spec),
        ],
        dir.path(),
        "queue-pick",
    );
    assert_eq!(q.status.code(), Some(1), "{}", q.describe());
    assert!(
        q.stderr.contains("dark") && q.stderr.contains("pick.toml"),
        "{}",
        q.describe()
    );
}
