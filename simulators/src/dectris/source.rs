//! Frame sources of the DECTRIS simulator: a stream-v1 capture (replayed blob for blob), a
//! DECTRIS HDF5 master/data set (chunks as stored, read by
//! `stemflow_drivers::dectris::master`), or frames of a modelled specimen compressed with our
//! bitshuffle-LZ4 or LZ4 encoder. Everything is prepared up front into [`Frames`], encoded blobs
//! shared by reference ([`Bytes`]) so sending never copies pixel data.

use super::settings::DetectorFacts;
use super::wire::md5_hex;
use crate::SimError;
use crate::specimen::Specimen;
use bytes::Bytes;
use serde_json::{Map, Value};
use std::path::Path;
use stemflow_core::{DType, NavShape, SigShape};
use stemflow_drivers::dectris::codec;
use stemflow_drivers::dectris::master::MasterFile;

/// Most distinct synthetic frames prepared; longer series cycle through them.
pub(crate) const MAX_SYNTHETIC_FRAMES: usize = 1024;

/// One encoded frame.
#[derive(Clone, Debug)]
pub(crate) struct Frame {
    pub(crate) blob: Bytes,
    /// MD5 hex of `blob` (§2.4 `hash`).
    pub(crate) hash: String,
    /// This frame's encoding when it differs from [`Frames::encoding`] (an HDF5 chunk the
    /// bitshuffle filter skipped is stored raw: `<`).
    pub(crate) encoding: Option<String>,
}

/// The frames a series sends, cycled when the series is longer.
#[derive(Clone, Debug)]
pub(crate) struct Frames {
    pub(crate) frames: Vec<Frame>,
    /// `[width, height]`, pixels.
    pub(crate) shape: [usize; 2],
    /// `uint8` / `uint16` / `uint32`.
    pub(crate) dtype: &'static str,
    /// Stream encoding string (§2.4), e.g. `bs16-lz4<`.
    pub(crate) encoding: String,
    /// The detector `compression` value these frames match (`bslz4`, `lz4`, `none`).
    pub(crate) compression: String,
}

/// A prepared source.
#[derive(Debug)]
pub(crate) enum Prepared {
    /// Fixed frames (capture or HDF5): one compression only.
    Fixed(Frames),
    /// Synthetic: re-encoded when `compression` changes.
    Synthetic { spec: SyntheticSpec, frames: Frames },
}

/// What a synthetic source renders.
#[derive(Clone, Debug)]
pub(crate) struct SyntheticSpec {
    pub(crate) specimen: Specimen,
    pub(crate) nav: NavShape,
    pub(crate) sig: SigShape,
    pub(crate) bit_depth: u32,
    pub(crate) seed: u64,
}

impl Prepared {
    /// The frames for detector compression `compression`, re-encoding synthetic frames when
    /// it changed since the last call.
    pub(crate) fn frames_for(&mut self, compression: &str) -> Result<&Frames, String> {
        match self {
            Prepared::Fixed(f) => {
                if f.compression != compression {
                    return Err(format!(
                        "the source holds `{}` frames; compression `{compression}` cannot be served",
                        f.compression
                    ));
                }
                Ok(f)
            }
            Prepared::Synthetic { spec, frames } => {
                if frames.compression != compression {
                    *frames = render(spec, compression)?;
                }
                Ok(frames)
            }
        }
    }
}

fn dtype_for(bits: u32) -> Option<&'static str> {
    match bits {
        8 => Some("uint8"),
        16 => Some("uint16"),
        32 => Some("uint32"),
        _ => None,
    }
}

/// Renders and encodes the synthetic frames (at most [`MAX_SYNTHETIC_FRAMES`]) on up to two
/// threads.
pub(crate) fn render(spec: &SyntheticSpec, compression: &str) -> Result<Frames, String> {
    let elem = (spec.bit_depth / 8) as usize;
    let dtype = dtype_for(spec.bit_depth)
        .ok_or_else(|| format!("bit depth {} is not 8, 16 or 32", spec.bit_depth))?;
    let encoding = match compression {
        "bslz4" => format!("bs{}-lz4<", spec.bit_depth),
        "lz4" => "lz4<".to_string(),
        "none" => "<".to_string(),
        other => return Err(format!("compression `{other}` cannot be synthesised")),
    };
    let n = spec.nav.len().clamp(1, MAX_SYNTHETIC_FRAMES);
    let max = if spec.bit_depth == 32 {
        u32::MAX
    } else {
        (1u32 << spec.bit_depth) - 1
    };
    let one = |i: usize| -> Result<Frame, String> {
        let mut counts = vec![0u32; spec.sig.len()];
        spec.specimen
            .render_frame(spec.nav, i as u64, spec.sig, spec.seed, &mut counts);
        let mut raw = Vec::with_capacity(counts.len() * elem);
        for c in counts {
            let c = c.min(max);
            raw.extend_from_slice(&c.to_le_bytes()[..elem]);
        }
        let blob = match compression {
            "bslz4" => codec::try_encode_bslz4(&raw, elem, 0)
                .map_err(|e| format!("bitshuffle-LZ4 encoding of frame {i} failed: {e}"))?,
            // Stream v1 `lz4<`: the whole frame as one raw LZ4 block (§2.5).
            "lz4" => {
                let mut out = Vec::new();
                codec::lz4::compress(&raw, &mut out);
                out
            }
            _ => raw,
        };
        Ok(Frame {
            hash: md5_hex(&blob),
            blob: Bytes::from(blob),
            encoding: None,
        })
    };
    let half = n.div_ceil(2);
    let (a, b) = std::thread::scope(|s| {
        let h = s.spawn(|| (half..n).map(one).collect::<Result<Vec<_>, _>>());
        let a = (0..half).map(one).collect::<Result<Vec<_>, _>>();
        let b = h
            .join()
            .unwrap_or_else(|_| Err("render thread panicked".into()));
        (a, b)
    });
    let mut frames = a?;
    frames.extend(b?);
    Ok(Frames {
        frames,
        shape: [spec.sig.cols, spec.sig.rows],
        dtype,
        encoding,
        compression: compression.to_string(),
    })
}

/// A loaded capture: its frames, its detector facts and the series it recorded.
pub(crate) struct Capture {
    pub(crate) frames: Frames,
    pub(crate) facts: DetectorFacts,
    pub(crate) series: u64,
}

/// Reads a stream capture in the dump format of `shared/data/README.md` (§4.2): records of an
/// 8-byte little-endian length and one ZeroMQ message part, in wire order. The first
/// `dheader-1.0` starts the series; with `header_detail` basic or all the next part is the
/// detector configuration (further `all` parts are skipped); then each frame's four parts,
/// up to `dseries_end-1.0` or the end of the file.
///
/// # Errors
/// [`SimError::Recording`] naming the record (index and byte offset) that is truncated, not
/// the expected JSON, or inconsistent (blob length ≠ `size`, shape or type changing), or a
/// capture without frames.
pub(crate) fn load_capture(path: &Path) -> Result<Capture, SimError> {
    let bad = |problem: String| SimError::Recording {
        path: path.to_path_buf(),
        problem,
    };
    let data = Bytes::from(std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?);
    // Split into parts (zero-copy slices of the file).
    let mut parts: Vec<(usize, Bytes)> = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        if data.len() - pos < 8 {
            return Err(bad(format!(
                "truncated record header at byte {pos}: {} of 8 bytes",
                data.len() - pos
            )));
        }
        let mut len8 = [0u8; 8];
        len8.copy_from_slice(&data[pos..pos + 8]);
        let len = i64::from_le_bytes(len8);
        let avail = data.len() - pos - 8;
        if len < 0 || len as u64 > avail as u64 {
            return Err(bad(format!(
                "record {} at byte {pos} claims {len} bytes, {avail} remain",
                parts.len()
            )));
        }
        let len = len as usize;
        parts.push((pos, data.slice(pos + 8..pos + 8 + len)));
        pos += 8 + len;
    }
    let json = |i: usize| -> Option<Map<String, Value>> {
        let (_, p) = parts.get(i)?;
        match serde_json::from_slice::<Value>(p) {
            Ok(Value::Object(m)) => Some(m),
            _ => None,
        }
    };
    let htype = |m: &Map<String, Value>| m.get("htype").and_then(Value::as_str).map(str::to_string);
    let at = |i: usize| {
        parts.get(i).map_or_else(
            || "end of file".to_string(),
            |(o, _)| format!("record {i} (byte {o})"),
        )
    };

    let start = (0..parts.len())
        .find(|&i| json(i).and_then(|m| htype(&m)).as_deref() == Some("dheader-1.0"))
        .ok_or_else(|| bad(format!("no dheader-1.0 among {} records", parts.len())))?;
    let header = json(start).unwrap_or_default();
    let series = header
        .get("series")
        .and_then(Value::as_u64)
        .ok_or_else(|| {
            bad(format!(
                "{}: dheader-1.0 without an unsigned `series`",
                at(start)
            ))
        })?;
    let detail = header
        .get("header_detail")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut i = start + 1;
    let mut recorded = None;
    if detail == "basic" || detail == "all" {
        let cfg = json(i).filter(|m| htype(m).is_none()).ok_or_else(|| {
            bad(format!(
                "{}: expected the detector configuration JSON",
                at(i)
            ))
        })?;
        recorded = Some(cfg);
        i += 1;
    }
    // Skip anything else until the first image (the `all` arrays, appendices).
    while i < parts.len() {
        match json(i).and_then(|m| htype(&m)).as_deref() {
            Some("dimage-1.0") | Some("dseries_end-1.0") => break,
            _ => i += 1,
        }
    }
    let mut frames = Vec::new();
    let mut meta: Option<([usize; 2], String, String)> = None;
    while i < parts.len() {
        let head = json(i).ok_or_else(|| bad(format!("{}: expected JSON", at(i))))?;
        match htype(&head).as_deref() {
            Some("dseries_end-1.0") => break,
            Some("dimage-1.0") => {}
            other => {
                return Err(bad(format!(
                    "{}: expected dimage-1.0 or dseries_end-1.0, found htype {other:?}",
                    at(i)
                )));
            }
        }
        let d = json(i + 1)
            .filter(|m| htype(m).as_deref() == Some("dimage_d-1.0"))
            .ok_or_else(|| bad(format!("{}: expected dimage_d-1.0", at(i + 1))))?;
        let (_, blob) = parts
            .get(i + 2)
            .cloned()
            .ok_or_else(|| bad(format!("{}: expected the image blob", at(i + 2))))?;
        let shape: Vec<usize> = d
            .get("shape")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_u64)
                    .map(|v| v as usize)
                    .collect()
            })
            .unwrap_or_default();
        let dtype = d
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let enc = d
            .get("encoding")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let size = d.get("size").and_then(Value::as_u64);
        if shape.len() != 2 || shape.contains(&0) {
            return Err(bad(format!("{}: shape {shape:?} is not [x, y]", at(i + 1))));
        }
        if size.is_some_and(|s| s != blob.len() as u64) {
            return Err(bad(format!(
                "{}: blob of {} bytes, dimage_d says size {}",
                at(i + 2),
                blob.len(),
                size.unwrap_or(0)
            )));
        }
        let m = ([shape[0], shape[1]], dtype, enc);
        match &meta {
            None => meta = Some(m),
            Some(first) if *first != m => {
                return Err(bad(format!(
                    "{}: frame {} has shape/type/encoding {m:?}, frame 0 had {first:?}",
                    at(i + 1),
                    frames.len()
                )));
            }
            Some(_) => {}
        }
        let hash = head
            .get("hash")
            .and_then(Value::as_str)
            .filter(|h| !h.is_empty())
            .map_or_else(|| md5_hex(&blob), str::to_string);
        frames.push(Frame {
            blob,
            hash,
            encoding: None,
        });
        i += 4;
    }
    let (shape, dtype, encoding) =
        meta.ok_or_else(|| bad(format!("series {series} holds no frames")))?;
    let dtype: &'static str = match dtype.as_str() {
        "uint8" => "uint8",
        "uint16" => "uint16",
        "uint32" => "uint32",
        other => return Err(bad(format!("pixel type `{other}` is not uint8/16/32"))),
    };
    let bit_depth = match dtype {
        "uint8" => 8,
        "uint16" => 16,
        _ => 32,
    };
    let compression = if encoding.contains("bs") && encoding.contains("lz4") {
        "bslz4"
    } else if encoding.contains("lz4") {
        "lz4"
    } else {
        "none"
    };
    let description = recorded
        .as_ref()
        .and_then(|m| m.get("description"))
        .and_then(Value::as_str)
        .unwrap_or("DECTRIS capture replay")
        .to_string();
    Ok(Capture {
        facts: DetectorFacts {
            x: shape[0],
            y: shape[1],
            bit_depth,
            compressions: vec![compression.to_string()],
            recorded,
            description,
        },
        frames: Frames {
            frames,
            shape,
            dtype,
            encoding,
            compression: compression.to_string(),
        },
        series,
    })
}

/// The `description` of synthetic detectors.
pub(crate) fn synthetic_description(sig: SigShape) -> String {
    format!(
        "stemflow simulated DECTRIS detector {}x{}",
        sig.cols, sig.rows
    )
}

/// A loaded HDF5 set: its frames (chunks as stored), detector facts and pixel mask.
pub(crate) struct Hdf5Set {
    pub(crate) frames: Frames,
    pub(crate) facts: DetectorFacts,
    /// Flat indices (row · cols + col) of masked pixels.
    pub(crate) masked: Vec<u32>,
}

/// Detector configuration keys taken from an HDF5 set's metadata when present (numbers where
/// they parse, else strings).
const HDF5_CONFIG_KEYS: &[&str] = &[
    "beam_center_x",
    "beam_center_y",
    "count_time",
    "countrate_correction_applied",
    "description",
    "detector_number",
    "detector_readout_time",
    "eiger_fw_version",
    "flatfield_correction_applied",
    "frame_time",
    "nimages",
    "ntrigger",
    "number_of_excluded_pixels",
    "pixel_mask_applied",
    "sensor_material",
    "sensor_thickness",
    "software_version",
    "threshold_energy",
    "trigger_mode",
    "x_pixel_size",
    "y_pixel_size",
];

/// Reads every frame chunk of a DECTRIS HDF5 master/data set as stored (bitshuffle-LZ4 with
/// the 12-byte header, §2.5; a chunk the filter skipped is sent raw with encoding `<`), with
/// the detector metadata and pixel mask of the master file.
///
/// # Errors
/// [`SimError::Recording`] for an unreadable set, a pixel type other than u8/u16/u32, a
/// filter other than bitshuffle-LZ4 or none, or a set without frames.
pub(crate) fn load_hdf5(path: &Path) -> Result<Hdf5Set, SimError> {
    let bad = |problem: String| SimError::Recording {
        path: path.to_path_buf(),
        problem,
    };
    let mut m = MasterFile::open(path).map_err(|e| bad(e.to_string()))?;
    let sig = m.sig_shape();
    let (dtype, bits): (&'static str, u32) = match m.dtype() {
        DType::U8 => ("uint8", 8),
        DType::U16 => ("uint16", 16),
        DType::U32 => ("uint32", 32),
        other => return Err(bad(format!("pixel type {other:?} is not u8/u16/u32"))),
    };
    if m.frames() == 0 {
        return Err(bad("the set holds no frames".into()));
    }
    let encoding = format!("bs{bits}-lz4<");
    let mut frames = Vec::with_capacity(m.frames() as usize);
    for i in 0..m.frames() {
        let (chunk, shuffled) = m.read_raw_chunk(i).map_err(|e| bad(e.to_string()))?;
        let blob = Bytes::copy_from_slice(chunk);
        frames.push(Frame {
            hash: md5_hex(&blob),
            blob,
            encoding: (!shuffled).then(|| "<".to_string()),
        });
    }
    let meta = m.metadata();
    let recorded: Map<String, Value> = HDF5_CONFIG_KEYS
        .iter()
        .filter_map(|&k| {
            let v = meta.get(k)?;
            let parsed = serde_json::from_str::<Value>(v)
                .ok()
                .filter(|x| x.is_number() || x.is_boolean())
                .unwrap_or_else(|| Value::String(v.clone()));
            Some((k.to_string(), parsed))
        })
        .collect();
    let description = recorded
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or("DECTRIS HDF5 replay")
        .to_string();
    Ok(Hdf5Set {
        masked: m.masked_pixels().to_vec(),
        facts: DetectorFacts {
            x: sig.cols,
            y: sig.rows,
            bit_depth: bits,
            compressions: vec!["bslz4".into()],
            recorded: Some(recorded),
            description,
        },
        frames: Frames {
            frames,
            shape: [sig.cols, sig.rows],
            dtype,
            encoding,
            compression: "bslz4".into(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_dump(parts: &[&[u8]]) -> (std::path::PathBuf, Vec<u8>) {
        let mut out = Vec::new();
        for p in parts {
            out.extend_from_slice(&(p.len() as i64).to_le_bytes());
            out.extend_from_slice(p);
        }
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "stemflow-dectris-dump-{}-{n}.dump",
            std::process::id()
        ));
        std::fs::write(&path, &out).unwrap();
        (path, out)
    }

    fn problem(parts: &[&[u8]], cut: usize) -> String {
        let (path, out) = write_dump(parts);
        std::fs::write(&path, &out[..out.len() - cut]).unwrap();
        let r = load_capture(&path);
        let _ = std::fs::remove_file(&path);
        match r {
            Err(SimError::Recording { problem, .. }) => problem,
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a bad capture loaded"),
        }
    }

    const HEAD: &[u8] = br#"{"htype":"dheader-1.0","header_detail":"basic","series":7}"#;
    const CFG: &[u8] = br#"{"nimages":1}"#;
    const IMG: &[u8] = br#"{"htype":"dimage-1.0","series":7,"frame":0,"hash":""}"#;
    const D: &[u8] =
        br#"{"htype":"dimage_d-1.0","shape":[2,2],"type":"uint16","encoding":"<","size":8}"#;
    const DC: &[u8] = br#"{"htype":"dconfig-1.0","start_time":0,"stop_time":1,"real_time":1}"#;
    const END: &[u8] = br#"{"htype":"dseries_end-1.0","series":7}"#;

    #[test]
    fn a_good_capture_loads() {
        let (path, _) = write_dump(&[b"junk", HEAD, CFG, IMG, D, &[1; 8], DC, END]);
        let c = load_capture(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(c.series, 7);
        assert_eq!(c.frames.frames.len(), 1);
        assert_eq!(c.frames.encoding, "<");
        assert_eq!(c.frames.compression, "none");
        assert_eq!(
            c.frames.frames[0].hash,
            md5_hex(&[1; 8]),
            "empty hash is computed"
        );
        assert_eq!((c.facts.x, c.facts.y, c.facts.bit_depth), (2, 2, 16));
    }

    #[test]
    fn bad_captures_are_errors_with_the_numbers() {
        let p = problem(&[HEAD, CFG, IMG, D, &[1; 8], DC], 3);
        assert!(
            p.contains("record 5 at byte 250 claims 66 bytes, 63 remain"),
            "{p}"
        );
        let p = problem(&[HEAD, CFG, IMG, D, &[1; 8], DC, b"1234"], 8);
        assert!(p.contains("truncated record header"), "{p}");
        let p = problem(&[CFG, IMG], 0);
        assert!(p.contains("no dheader-1.0 among 2 records"), "{p}");
        let p = problem(&[HEAD, CFG, IMG, D, &[1; 7], DC], 0);
        assert!(p.contains("blob of 7 bytes, dimage_d says size 8"), "{p}");
        let p = problem(&[HEAD, CFG, END], 0);
        assert!(p.contains("series 7 holds no frames"), "{p}");
        let p = problem(&[HEAD, CFG, IMG, CFG], 0);
        assert!(p.contains("expected dimage_d-1.0"), "{p}");
    }
}
