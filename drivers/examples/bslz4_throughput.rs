//! Single-thread bitshuffle-LZ4 decode throughput: ours against the reference C bitshuffle
//! library, on the same blobs.
//!
//! For 256 × 256 u16 and 192 × 192 u32 frames (sparse Poisson counts with a bright disk,
//! [`bench::synthetic_frame`]), the reference library (PyPI `bitshuffle`, through Python)
//! compresses the frames — so the blobs are what a DECTRIS DCU sends — and times its own
//! decompression; we time ours on the same blobs with each kernel. The Python figure includes
//! the per-call overhead of Python and numpy (about a microsecond per frame, and numpy's
//! allocation of each output array). Both sides report their fastest pass over the 64 frames
//! (the least disturbed by other load on the machine).
//!
//! The reference interpreter is `$STEMFLOW_BSLZ4_PYTHON`, else the venv the codec tests build
//! (`<target>/py-dectris-codec/bin/python`); without one only our figures are printed.
//!
//! Run: `cargo run --release -p stemflow-drivers --example bslz4_throughput [-- SECONDS]`.
//! The last line of the output is one JSON object with every figure.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use stemflow_drivers::dectris::codec::{self, Encoding, Kernel, bench};

/// Frames per configuration (different disk positions and noise).
const FRAMES: u64 = 64;

/// Reference side: compress every `.raw` with the C library (header of §2.5 prepended), then
/// time `decompress_lz4` over all blobs in passes for about the given seconds; prints
/// `<name> <frames per pass> <seconds of the fastest pass>` per configuration.
const PY: &str = r#"
import sys, struct, time, numpy as np, bitshuffle
d, secs = sys.argv[1], float(sys.argv[2])
print("simd", "avx2" if bitshuffle.using_AVX2() else ("sse2" if bitshuffle.using_SSE2() else "none"))
# Per-call overhead of the Python wrapper: the fastest call on an 8-element blob.
tiny = bitshuffle.compress_lz4(np.zeros(8, "<u2"), 8)
best = float("inf")
for _ in range(2000):
    t = time.perf_counter()
    bitshuffle.decompress_lz4(tiny, (8,), np.dtype("<u2"), 8)
    best = min(best, time.perf_counter() - t)
print("overhead", best)
for spec in sys.argv[3:]:
    name, rows, cols, e, n = spec.split(":"); rows, cols, e, n = int(rows), int(cols), int(e), int(n)
    dt = np.dtype({2: "<u2", 4: "<u4"}[e])
    block = max(128, (8192 // e) // 8 * 8)
    views = []
    for i in range(n):
        raw = np.fromfile(f"{d}/{name}-{i}.raw", dtype=dt)
        comp = bitshuffle.compress_lz4(raw, block)
        with open(f"{d}/{name}-{i}.blob", "wb") as f:
            f.write(struct.pack(">QI", raw.nbytes, block * e) + comp.tobytes())
        views.append(comp)
    shape = (rows * cols,)
    for v in views:
        bitshuffle.decompress_lz4(v, shape, dt, block)
    best, t0 = float("inf"), time.perf_counter()
    while time.perf_counter() - t0 < secs:
        t = time.perf_counter()
        for v in views:
            bitshuffle.decompress_lz4(v, shape, dt, block)
        best = min(best, time.perf_counter() - t)
    frames, el = len(views), best
    print(name, frames, el)
"#;

fn reference_python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("STEMFLOW_BSLZ4_PYTHON") {
        return Some(p.into());
    }
    // target/<profile>/examples/<exe> → target
    let exe = std::env::current_exe().ok()?;
    let target = exe.parent()?.parent()?.parent()?;
    let p = target.join("py-dectris-codec/bin/python");
    p.exists().then_some(p)
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let configs = [
        ("u16_256x256", 256usize, 256usize, 2usize),
        ("u32_192x192", 192, 192, 4),
    ];
    let dir = std::env::temp_dir().join(format!("bslz4-throughput-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let mut raws = Vec::new();
    for &(name, rows, cols, e) in &configs {
        let frames: Vec<Vec<u8>> = (0..FRAMES)
            .map(|i| bench::synthetic_frame(rows, cols, e, i, 42))
            .collect();
        for (i, f) in frames.iter().enumerate() {
            std::fs::write(dir.join(format!("{name}-{i}.raw")), f).expect("write frame");
        }
        raws.push(frames);
    }

    // The reference: compresses (so blobs are the C library's) and times its decompression.
    let mut reference: Vec<Option<bench::Throughput>> = vec![None; configs.len()];
    let mut ref_simd = String::from("unavailable");
    // Seconds per Python call spent outside the C library (measured on a tiny blob).
    let mut call_overhead = 0f64;
    let python = reference_python();
    if let Some(py) = &python {
        let specs: Vec<String> = configs
            .iter()
            .map(|(n, r, c, e)| format!("{n}:{r}:{c}:{e}:{FRAMES}"))
            .collect();
        let out = Command::new(py)
            .arg("-c")
            .arg(PY)
            .arg(&dir)
            .arg(secs.to_string())
            .args(&specs)
            .env("OMP_NUM_THREADS", "1")
            .output();
        match out {
            Ok(o) if o.status.success() => {
                for line in String::from_utf8_lossy(&o.stdout).lines() {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    if f.first() == Some(&"overhead") {
                        call_overhead = f.get(1).and_then(|v| v.parse().ok()).unwrap_or(0.0);
                    } else if f.first() == Some(&"simd") {
                        ref_simd = f.get(1).unwrap_or(&"?").to_string();
                    } else if let Some(k) = configs.iter().position(|c| Some(&c.0) == f.first()) {
                        let (rows, cols, e) = (configs[k].1, configs[k].2, configs[k].3);
                        let frames: u64 = f[1].parse().unwrap_or(0);
                        reference[k] = Some(bench::Throughput {
                            frames,
                            bytes: frames * (rows * cols * e) as u64,
                            seconds: f[2].parse().unwrap_or(f64::NAN),
                        });
                    }
                }
            }
            Ok(o) => eprintln!(
                "reference failed: {}\n{}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("reference could not start ({}): {e}", py.display()),
        }
    } else {
        eprintln!(
            "no reference Python (set STEMFLOW_BSLZ4_PYTHON or run `cargo test -p \
             stemflow-drivers --test dectris_codec` to build the venv); printing ours only"
        );
    }

    println!(
        "single-thread decode, {FRAMES} frames per case, fastest pass over >= {secs} s; our \
         kernel: {:?}; reference SIMD: {ref_simd}; Python call overhead {:.2} us per frame",
        Kernel::Auto.resolve(),
        call_overhead * 1e6
    );
    println!(
        "{:<12} {:<22} {:>9} {:>10} {:>11}",
        "frames", "decoder (blobs)", "GB/s", "frames/s", "ratio"
    );
    let mut json = serde_json_like::Obj::default();
    for (k, &(name, rows, cols, e)) in configs.iter().enumerate() {
        let frame_bytes = rows * cols * e;
        let enc = Encoding {
            compression: codec::Compression::BitshuffleLz4,
            elem_size: e,
        };
        let ref_blobs: Option<Vec<Vec<u8>>> = (0..FRAMES)
            .map(|i| std::fs::read(dir.join(format!("{name}-{i}.blob"))).ok())
            .collect();
        let our_blobs: Vec<Vec<u8>> = raws[k]
            .iter()
            .map(|f| codec::encode_bslz4(f, e, 0))
            .collect();
        let ratio = |blobs: &[Vec<u8>]| {
            (FRAMES as usize * frame_bytes) as f64
                / blobs.iter().map(Vec::len).sum::<usize>() as f64
        };
        let min = Duration::from_secs_f64(secs);
        let mut row = |label: &str, key: &str, t: bench::Throughput, r: f64| {
            println!(
                "{name:<12} {label:<22} {:>9.2} {:>10.0} {:>10.1}x",
                t.gb_per_s(),
                t.frames_per_s(),
                r
            );
            json.push(&format!("{name}_{key}_gbps"), t.gb_per_s());
            json.push(&format!("{name}_{key}_fps"), t.frames_per_s());
        };
        if let Some(blobs) = &ref_blobs {
            for (kernel, key) in [
                (Kernel::Auto, "ours"),
                (Kernel::Sse2, "ours_sse2"),
                (Kernel::Scalar, "ours_scalar"),
            ] {
                match bench::measure(&enc, blobs, frame_bytes, kernel, min) {
                    Ok(t) => row(&format!("ours {kernel:?} (C blobs)"), key, t, ratio(blobs)),
                    Err(e) => eprintln!("{name}: our decoder refused a reference blob: {e}"),
                }
            }
            if let Some(t) = reference[k] {
                row("C via Python (C blobs)", "c_ref", t, ratio(blobs));
                let net = bench::Throughput {
                    seconds: (t.seconds - t.frames as f64 * call_overhead).max(1e-9),
                    ..t
                };
                row("C minus call overhead", "c_ref_net", net, ratio(blobs));
            }
        }
        match bench::measure(&enc, &our_blobs, frame_bytes, Kernel::Auto, min) {
            Ok(t) => row(
                "ours Auto (our blobs)",
                "ours_own_blobs",
                t,
                ratio(&our_blobs),
            ),
            Err(e) => eprintln!("{name}: {e}"),
        }
        let t0 = std::time::Instant::now();
        let mut encoded = 0usize;
        while t0.elapsed() < min {
            for f in &raws[k] {
                encoded += std::hint::black_box(codec::encode_bslz4(f, e, 0))
                    .len()
                    .min(1)
                    * f.len();
            }
        }
        let enc_gbps = encoded as f64 / t0.elapsed().as_secs_f64() / 1e9;
        println!("{name:<12} our encoder: {enc_gbps:.2} GB/s of input");
        json.push(&format!("{name}_encode_gbps"), enc_gbps);
        if let Some(blobs) = &ref_blobs {
            let (lz4_s, shuffle_s) = stages(blobs, e, frame_bytes, min);
            println!(
                "{name:<12} stages (C blobs): LZ4 {:.2} GB/s, bit transpose {:.2} GB/s",
                lz4_s, shuffle_s
            );
            json.push(&format!("{name}_stage_lz4_gbps"), lz4_s);
            json.push(&format!("{name}_stage_untranspose_gbps"), shuffle_s);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("{}", json.finish());
}

/// Times the two stages separately on the blocks of `blobs`: LZ4 block decoding alone and
/// the bit transpose alone (best kernel); GB/s of decoded bytes.
fn stages(blobs: &[Vec<u8>], e: usize, frame_bytes: usize, min: Duration) -> (f64, f64) {
    // Split every blob into its LZ4 blocks (header of §2.5, then u32 BE length + data).
    let block_bytes = 8192usize;
    let mut blocks: Vec<(&[u8], usize)> = Vec::new();
    for b in blobs {
        let mut pos = 12;
        let mut left = frame_bytes / (8 * e) * (8 * e);
        while left > 0 {
            let len = u32::from_be_bytes(b[pos..pos + 4].try_into().unwrap_or_default()) as usize;
            let size = left.min(block_bytes);
            blocks.push((&b[pos + 4..pos + 4 + len], size));
            pos += 4 + len;
            left -= size;
        }
    }
    let mut out = vec![0u8; block_bytes];
    let mut planes = vec![0u8; block_bytes];
    let time = |f: &mut dyn FnMut() -> usize| {
        let t0 = std::time::Instant::now();
        let mut best = 0f64;
        while t0.elapsed() < min {
            let t = std::time::Instant::now();
            let bytes = f();
            best = best.max(bytes as f64 / t.elapsed().as_secs_f64() / 1e9);
        }
        best
    };
    let lz4 = time(&mut || {
        let mut n = 0;
        for (src, size) in &blocks {
            let _ = codec::lz4::decompress(src, &mut out[..*size]);
            n += size;
        }
        n
    });
    let _ = codec::lz4::decompress(blocks[0].0, &mut planes[..blocks[0].1]);
    let per_frame = frame_bytes / block_bytes;
    let shuffle = time(&mut || {
        for _ in 0..per_frame {
            codec::shuffle::untranspose(&planes, &mut out, e, Kernel::Auto);
        }
        per_frame * block_bytes
    });
    (lz4, shuffle)
}

/// A flat JSON object of numbers, without a JSON dependency.
mod serde_json_like {
    #[derive(Default)]
    pub struct Obj(Vec<String>);
    impl Obj {
        pub fn push(&mut self, key: &str, v: f64) {
            let v = if v.is_finite() {
                format!("{v:.4}")
            } else {
                "null".into()
            };
            self.0.push(format!("\"{key}\":{v}"));
        }
        pub fn finish(&self) -> String {
            format!("{{{}}}", self.0.join(","))
        }
    }
}
