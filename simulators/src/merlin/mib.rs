//! A minimal reader of Merlin recordings (`.hdr` + `.mib`) for replay: it finds each frame's
//! extent from its MQ1 header (data offset, shape, pixel format, counter depth; §1.6–1.7) and
//! keeps the frames verbatim. Pixels are never decoded.

use super::wire::{self, Geometry, Hdr};
use crate::SimError;
use chrono::Utc;
use std::path::{Path, PathBuf};
use stemflow_core::SigShape;

/// Largest `.mib` we hold in memory, bytes (recordings are replayed from RAM).
pub(crate) const MAX_MIB_BYTES: u64 = 4 << 30;

/// A recording loaded for replay.
#[derive(Debug)]
pub(crate) struct Recording {
    /// The HDR payload (`HDR,…`): the recorded `.hdr`, or one synthesised from the frames
    /// when only a `.mib` exists.
    pub(crate) hdr: Vec<u8>,
    /// The `.mib` content: `count` frames of `frame_len` bytes (MQ1 header + payload).
    pub(crate) mib: Vec<u8>,
    pub(crate) frame_len: usize,
    /// MQ1 header length (the data offset), bytes.
    pub(crate) header_len: usize,
    pub(crate) count: usize,
    pub(crate) counter_depth: u8,
    /// `FILEFORMAT` the recording was taken with: 0 binary, 2 raw (R64).
    pub(crate) file_format: u8,
    /// The assembled image shape (`IMAGEY` × `IMAGEX`).
    pub(crate) image: SigShape,
    pub(crate) software_version: Option<String>,
}

fn bad(path: &Path, problem: impl Into<String>) -> SimError {
    SimError::Recording {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, SimError> {
    std::fs::read(path).map_err(|e| bad(path, format!("cannot read: {e}")))
}

/// The value of an HDR line `Key…:\tValue` whose key starts with `key`, trimmed.
fn hdr_value(hdr: &[u8], key: &str) -> Option<String> {
    hdr.split(|&b| b == b'\n')
        .find(|l| l.starts_with(key.as_bytes()))
        .and_then(|l| {
            let text: String = l.iter().map(|&b| b as char).collect(); // Latin-1
            let (_, v) = text.split_once('\t').or_else(|| text.split_once(':'))?;
            Some(v.trim().to_string())
        })
}

/// What the first MQ1 header of a file says.
struct FirstHeader {
    header_len: usize,
    payload_len: usize,
    sig: SigShape,
    format: String,
    layout: String,
    depth: Option<u8>,
}

fn parse_mq1(path: &Path, mib: &[u8]) -> Result<FirstHeader, SimError> {
    if mib.len() < 16 || &mib[..4] != b"MQ1," {
        return Err(bad(
            path,
            "the .mib does not start with an MQ1 frame header",
        ));
    }
    let digits = |r: std::ops::Range<usize>| -> Option<usize> {
        std::str::from_utf8(mib.get(r)?).ok()?.trim().parse().ok()
    };
    let header_len = digits(11..16)
        .filter(|&n| (16..=mib.len()).contains(&n))
        .ok_or_else(|| {
            bad(
                path,
                "MQ1 data offset (bytes 11-15) unreadable or too large",
            )
        })?;
    if mib[10] != b',' {
        return Err(bad(path, "MQ1 sequence field is not 6 digits wide"));
    }
    let text: String = mib[..header_len].iter().map(|&b| b as char).collect();
    let toks: Vec<&str> = text.split(',').collect();
    if toks.len() < 8 {
        return Err(bad(
            path,
            format!("MQ1 header has {} fields, expected ≥ 8", toks.len()),
        ));
    }
    let num = |i: usize| -> Result<usize, SimError> {
        toks[i]
            .trim()
            .parse()
            .map_err(|_| bad(path, format!("MQ1 field {i} `{}` is not a number", toks[i])))
    };
    let (cols, rows) = (num(4)?, num(5)?);
    let format = toks[6].trim().to_string();
    let layout = toks[7].trim().to_string();
    let depth = toks
        .iter()
        .position(|t| *t == "MQ1A")
        .and_then(|a| toks.get(a + 3))
        .and_then(|t| {
            t.trim_matches(|c: char| c.is_whitespace() || c == '\0')
                .parse()
                .ok()
        });
    let n = rows * cols;
    let payload_len = match format.as_str() {
        "U01" | "U08" => n,
        "U16" => 2 * n,
        "U32" => 4 * n,
        "U64" => 8 * n,
        "R64" => match depth {
            Some(1) => n / 8,
            Some(6) => n,
            Some(12) => 2 * n,
            d => {
                return Err(bad(
                    path,
                    format!(
                        "raw R64 frames of counter depth {d:?} are not supported; supported: 1, 6, 12"
                    ),
                ));
            }
        },
        f => {
            return Err(bad(
                path,
                format!(
                    "pixel format `{f}` not supported; supported: U01, U08, U16, U32, U64, R64"
                ),
            ));
        }
    };
    Ok(FirstHeader {
        header_len,
        payload_len,
        sig: SigShape::new(rows, cols),
        format,
        layout,
        depth,
    })
}

/// Loads a recording. `path` names the `.hdr` (its `.mib` has the same stem) or the `.mib`
/// (a `.hdr` beside it is used when present, else an HDR is synthesised from the frames).
///
/// # Errors
/// [`SimError::Recording`] naming the file and the problem: unreadable, not MQ1, a frame
/// size that does not divide the file, a frame header that changes, unknown counter depth.
pub(crate) fn load(path: &Path) -> Result<Recording, SimError> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let (hdr_path, mib_path): (Option<PathBuf>, PathBuf) = match ext.to_ascii_lowercase().as_str() {
        "hdr" => (Some(path.to_path_buf()), path.with_extension("mib")),
        "mib" => {
            let h = path.with_extension("hdr");
            (h.exists().then_some(h), path.to_path_buf())
        }
        _ => return Err(bad(path, "expected a .hdr or .mib file")),
    };
    let size = std::fs::metadata(&mib_path)
        .map_err(|e| bad(&mib_path, format!("cannot read: {e}")))?
        .len();
    if size > MAX_MIB_BYTES {
        return Err(bad(
            &mib_path,
            format!("{size} bytes; replay holds at most {MAX_MIB_BYTES} bytes in memory"),
        ));
    }
    let mib = read(&mib_path)?;
    let first = parse_mq1(&mib_path, &mib)?;
    let frame_len = first.header_len + first.payload_len;
    if mib.len() % frame_len != 0 {
        return Err(bad(
            &mib_path,
            format!(
                "{} bytes is not a whole number of {frame_len}-byte frames ({} header + {} payload)",
                mib.len(),
                first.header_len,
                first.payload_len
            ),
        ));
    }
    let count = mib.len() / frame_len;
    for i in 1..count {
        let f = &mib[i * frame_len..];
        if &f[..4] != b"MQ1," || f[10] != b',' || f[11..16] != mib[11..16] {
            return Err(bad(
                &mib_path,
                format!(
                    "frame {i} (at byte {}) has another header layout than frame 0",
                    i * frame_len
                ),
            ));
        }
    }
    let hdr = match &hdr_path {
        Some(p) => {
            let h = read(p)?;
            if !h.starts_with(b"HDR,") {
                return Err(bad(p, "does not start with `HDR,`"));
            }
            Some(h)
        }
        None => None,
    };
    let depth = first
        .depth
        .or_else(|| {
            hdr.as_deref()
                .and_then(|h| hdr_value(h, "Counter Depth")?.parse().ok())
        })
        .filter(|d| matches!(d, 1 | 6 | 12 | 24))
        .ok_or_else(|| {
            bad(
                &mib_path,
                "counter depth unknown (no MQ1A extension, no HDR `Counter Depth`)",
            )
        })?;
    let raw = first.format == "R64";
    let image = if raw {
        match first.layout.as_str() {
            "2x2" => SigShape::new(512, 512),
            "2x2G" => SigShape::new(514, 514),
            _ => first.sig,
        }
    } else {
        first.sig
    };
    let software_version = hdr
        .as_deref()
        .and_then(|h| hdr_value(h, "Software Version"));
    let hdr = match hdr {
        Some(h) => h,
        None => wire::hdr_payload(&Hdr {
            frames: count as u64,
            frames_per_trigger: count as u64,
            depth,
            trigger_start: 0,
            trigger_stop: 0,
            geometry: Geometry::for_sig(image),
            software_version: crate::merlin::SIM_SOFTWARE_VERSION,
            scan: None,
            charge_summing: false,
            bias_v: "120",
            time: Utc::now(),
        }),
    };
    Ok(Recording {
        hdr,
        mib,
        frame_len,
        header_len: first.header_len,
        count,
        counter_depth: depth,
        file_format: if raw { 2 } else { 0 },
        image,
        software_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(name: &str) -> PathBuf {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/data/merlin/Merlin_Single_Quad/"
        ))
        .join(name)
    }

    #[test]
    fn loads_every_recorded_layout() {
        let cases = [
            (
                "Single_9_Frame_CounterDepth_12_Rows_256.hdr",
                9,
                384,
                2 * 65536,
                12,
                0,
                256,
            ),
            (
                "Single_9_Frame_CounterDepth_1_Rows_256RAW.hdr",
                9,
                384,
                8192,
                1,
                2,
                256,
            ),
            (
                "Quad_9_Frame_CounterDepth_24_Rows_256.hdr",
                9,
                768,
                4 * 512 * 512,
                24,
                0,
                512,
            ),
            (
                "Quad_1_Frame_CounterDepth_1_Rows_256RAW.mib",
                1,
                768,
                32768,
                1,
                2,
                512,
            ),
            (
                "Quad_1_Frame_CounterDepth_6_Rows_256.mib",
                1,
                768,
                512 * 512,
                6,
                0,
                512,
            ),
        ];
        for (name, count, hl, pl, depth, ff, side) in cases {
            let r = load(&data(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(r.count, count, "{name}");
            assert_eq!(r.header_len, hl, "{name}");
            assert_eq!(r.frame_len, hl + pl, "{name}");
            assert_eq!(r.counter_depth, depth, "{name}");
            assert_eq!(r.file_format, ff, "{name}");
            assert_eq!(r.image, SigShape::new(side, side), "{name}");
            assert_eq!(r.hdr.len(), 2048, "{name}");
            assert_eq!(r.software_version.as_deref(), Some("0.77"), "{name}");
        }
    }

    #[test]
    fn rejects_files_that_are_not_recordings() {
        let dir = std::env::temp_dir().join(format!("stemflow-sims-mib-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("junk.mib");
        std::fs::write(&p, b"not a merlin file at all").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("MQ1"), "{e}");
        let mut cut = std::fs::read(data("Single_1_Frame_CounterDepth_6_Rows_256.mib")).unwrap();
        cut.truncate(cut.len() - 10);
        std::fs::write(&p, &cut).unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("whole number"), "{e}");
        assert!(load(&dir.join("x.txt")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
