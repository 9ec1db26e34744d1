//! Where the simulator's frames come from, and their pre-encoded wire form.
//!
//! Both sources end up as [`Dataset`]s: one complete scan of CSR rows (`u32` indices sorted
//! within each row, `u32` counts, protocols.md §3.4). A dataset is encoded once, at start,
//! into [`Encoded`]: every `ArrayChunk` message (header + payload) back to back in one
//! buffer, with the byte range of each chunk, so that sending is a plain `write` of
//! contiguous ranges and costs no CPU beyond the copy into the socket.

use crate::SimError;
use crate::specimen::{Specimen, SpecimenParams};
use std::path::Path;
use std::sync::Arc;
use stemflow_core::csr::{CsrDType, CsrFormat, CsrRows};
use stemflow_core::{NavShape, SigShape};
use stemflow_drivers::asi::wire::{
    AcquisitionStart, FormatType, HEADER_LEN, Header, WireError, array_chunk,
};

/// The stream version LiberTEM's producers write (protocols.md §3.3).
pub(crate) const STREAM_VERSION: u8 = 7;

/// One complete scan: `nav.len()` CSR rows of `rows.sig_shape` frames.
#[derive(Debug)]
pub(crate) struct Dataset {
    /// Counts or time over threshold (§3.3 `format_type`).
    pub(crate) format_type: FormatType,
    /// Stream version byte sent in `AcquisitionStart`.
    pub(crate) version: u8,
    /// Scan shape.
    pub(crate) nav: NavShape,
    /// The frames, row-major scan order.
    pub(crate) rows: CsrRows,
}

impl Dataset {
    /// Frames of the scan.
    pub(crate) fn frames(&self) -> u64 {
        self.nav.len() as u64
    }
}

fn rec_err(path: &Path, problem: String) -> SimError {
    SimError::Recording {
        path: path.to_path_buf(),
        problem,
    }
}

/// Reads a `.tpx` stream file (the bytes a TPX3 server sends, protocols.md §3.2–§3.4): every
/// complete scan becomes one dataset. A scan cancelled by `AcquisitionEnd` is skipped (with a
/// warning); ScanStart metadata is skipped; the recorded sequence numbers are not kept.
///
/// # Errors
/// [`SimError::Recording`] for an unreadable file, a damaged header or chunk, a chunk outside
/// a scan, a scan with more frames than its nav shape or ending early at `ScanEnd`, a file
/// ending inside a message, or a file without any complete scan.
pub(crate) fn load_recording(path: &Path) -> Result<Vec<Dataset>, SimError> {
    let data = std::fs::read(path).map_err(|e| rec_err(path, format!("cannot read: {e}")))?;
    parse_stream(&data).map_err(|p| rec_err(path, p))
}

/// The scan being read.
struct Open {
    start: AcquisitionStart,
    rows: CsrRows,
}

fn parse_stream(data: &[u8]) -> Result<Vec<Dataset>, String> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    let mut acq: Option<AcquisitionStart> = None;
    let mut scan: Option<Open> = None;
    let mut chunk_no = 0u64;
    while pos < data.len() {
        let Some(bytes) = data.get(pos..pos + HEADER_LEN) else {
            return Err(format!(
                "ends inside a header at byte {pos} ({} of {HEADER_LEN} bytes)",
                data.len() - pos
            ));
        };
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(bytes);
        let header = Header::parse(&h).map_err(|e| format!("header at byte {pos}: {e}"))?;
        pos += HEADER_LEN;
        match header {
            Header::AcquisitionStart(a) => {
                if scan.is_some() {
                    return Err(format!(
                        "AcquisitionStart at byte {} inside a scan",
                        pos - HEADER_LEN
                    ));
                }
                acq = Some(a);
            }
            Header::ScanStart(s) => {
                let Some(a) = acq else {
                    return Err(format!(
                        "ScanStart at byte {} before any AcquisitionStart",
                        pos - HEADER_LEN
                    ));
                };
                let skip = usize::try_from(s.metadata_length)
                    .ok()
                    .filter(|&n| n <= data.len() - pos)
                    .ok_or_else(|| {
                        format!(
                            "ScanStart at byte {} announces {} metadata bytes, only {} follow",
                            pos - HEADER_LEN,
                            s.metadata_length,
                            data.len() - pos
                        )
                    })?;
                pos += skip;
                let mut rows = CsrRows::default();
                rows.clear(0, a.format().sig_shape);
                scan = Some(Open { start: a, rows });
            }
            Header::ArrayChunk(c) => {
                let Some(open) = scan.as_mut() else {
                    return Err(format!(
                        "ArrayChunk at byte {} outside a scan",
                        pos - HEADER_LEN
                    ));
                };
                let len = c.payload_len();
                let payload = usize::try_from(len)
                    .ok()
                    .and_then(|n| data.get(pos..pos.checked_add(n)?))
                    .ok_or_else(|| {
                        format!(
                            "chunk {chunk_no} at byte {} announces {len} payload bytes, only {} follow",
                            pos - HEADER_LEN,
                            data.len() - pos
                        )
                    })?;
                let have = open.rows.n_frames() as u64;
                if have + u64::from(c.frames) > open.start.frames() {
                    return Err(format!(
                        "chunk {chunk_no} at byte {} brings the scan to {} frames, its nav shape {} × {} has {}",
                        pos - HEADER_LEN,
                        have + u64::from(c.frames),
                        open.start.nav_shape.0,
                        open.start.nav_shape.1,
                        open.start.frames()
                    ));
                }
                open.rows
                    .push_chunk(&open.start.format(), &c.chunk_ref(0, have), payload)
                    .map_err(|e| format!("chunk {chunk_no} at byte {}: {e}", pos - HEADER_LEN))?;
                pos += payload.len();
                chunk_no += 1;
            }
            Header::ScanEnd(_) => {
                let Some(open) = scan.take() else {
                    return Err(format!(
                        "ScanEnd at byte {} outside a scan",
                        pos - HEADER_LEN
                    ));
                };
                let (have, want) = (open.rows.n_frames() as u64, open.start.frames());
                if have != want {
                    return Err(format!(
                        "scan ending at byte {} holds {have} frames, its nav shape {} × {} has {want}",
                        pos - HEADER_LEN,
                        open.start.nav_shape.0,
                        open.start.nav_shape.1
                    ));
                }
                out.push(Dataset {
                    format_type: open.start.format_type,
                    version: open.start.version,
                    nav: NavShape::new(
                        usize::from(open.start.nav_shape.0),
                        usize::from(open.start.nav_shape.1),
                    ),
                    rows: open.rows,
                });
            }
            Header::AcquisitionEnd(_) => {
                if let Some(open) = scan.take() {
                    tracing::warn!(
                        "tpx3-sim: recording: skipping a scan cancelled after {} of {} frames",
                        open.rows.n_frames(),
                        open.start.frames()
                    );
                }
                acq = None;
            }
        }
    }
    if out.is_empty() {
        return Err("holds no complete scan (AcquisitionStart, ScanStart, chunks, ScanEnd)".into());
    }
    Ok(out)
}

/// Events of a modelled specimen: scan position `i` gets Poisson electrons placed by
/// [`Specimen::place_electrons`] with the dose `mean_events`, noise seeded by `(seed, i)`;
/// repeated pixels are summed, indices sorted. Runs on all available cores.
///
/// # Errors
/// [`SimError::Config`] for an empty or over-large shape or a negative/non-finite mean.
pub(crate) fn synthesize(
    specimen: &Specimen,
    nav: NavShape,
    sig: SigShape,
    mean_events: f64,
    seed: u64,
) -> Result<Dataset, SimError> {
    if !mean_events.is_finite() || mean_events < 0.0 {
        return Err(SimError::Config(format!(
            "synthetic TPX3 source: mean_events must be a finite number ≥ 0, got {mean_events}"
        )));
    }
    let specimen = Specimen::new(SpecimenParams {
        dose: mean_events,
        ..specimen.params().clone()
    });
    let n = nav.len();
    let threads = std::thread::available_parallelism()
        .map_or(2, |p| p.get())
        .clamp(1, 16)
        .min(n.max(1));
    let per = n.div_ceil(threads);
    // Each worker: (row lengths, indices, values) of its frame range.
    let parts: Vec<(Vec<u32>, Vec<u32>, Vec<u32>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let specimen = &specimen;
                scope.spawn(move || {
                    let range = (t * per).min(n)..((t + 1) * per).min(n);
                    let guess = (range.len() as f64 * mean_events * 1.05) as usize;
                    let mut lens = Vec::with_capacity(range.len());
                    let mut idx = Vec::with_capacity(guess);
                    let mut val = Vec::with_capacity(guess);
                    let mut ev = Vec::new();
                    for f in range {
                        ev.clear();
                        specimen.place_electrons(nav, f as u64, sig, seed, &mut ev);
                        ev.sort_unstable();
                        let before = idx.len();
                        for &i in &ev {
                            if idx.len() > before && idx.last() == Some(&i) {
                                if let Some(v) = val.last_mut() {
                                    *v += 1;
                                }
                            } else {
                                idx.push(i);
                                val.push(1);
                            }
                        }
                        lens.push((idx.len() - before) as u32);
                    }
                    (lens, idx, val)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut rows = CsrRows::default();
    rows.clear(0, sig);
    let total: usize = parts.iter().map(|p| p.1.len()).sum();
    rows.indices.reserve_exact(total);
    rows.values.reserve_exact(total);
    rows.indptr.reserve_exact(n);
    for (lens, idx, val) in parts {
        let mut at = rows.indices.len() as u64;
        for l in lens {
            at += u64::from(l);
            rows.indptr.push(at);
        }
        rows.indices.extend_from_slice(&idx);
        rows.values.extend_from_slice(&val);
    }
    if rows.n_frames() != n {
        return Err(SimError::Config(format!(
            "synthetic TPX3 source: a generator thread failed ({} of {n} frames made)",
            rows.n_frames()
        )));
    }
    Ok(Dataset {
        format_type: FormatType::Csr,
        version: STREAM_VERSION,
        nav,
        rows,
    })
}

/// How datasets are laid out on the wire (the simulator configuration's share).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Rows (frames) per `ArrayChunk`, ≥ 1.
    pub(crate) rows_per_chunk: usize,
    /// Row pointer dtype.
    pub(crate) indptr: CsrDType,
    /// Signal index dtype.
    pub(crate) indices: CsrDType,
    /// Value dtype.
    pub(crate) values: CsrDType,
    /// Zero bytes between the arrays of a payload.
    pub(crate) pad: usize,
}

/// Where one `ArrayChunk` message lies in [`Encoded::bytes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChunkAt {
    /// First byte (the header).
    pub(crate) start: usize,
    /// One past the last payload byte.
    pub(crate) end: usize,
    /// Scan index of its first frame.
    pub(crate) first_frame: u64,
    /// Frames in the chunk.
    pub(crate) frames: u32,
    /// Events (entries) in the chunk.
    pub(crate) nnz: u32,
}

impl ChunkAt {
    /// One past its last frame.
    pub(crate) fn end_frame(&self) -> u64 {
        self.first_frame + u64::from(self.frames)
    }
}

/// A dataset encoded for the wire.
#[derive(Debug)]
pub(crate) struct Encoded {
    /// The source rows (for chunks cut short by a stop).
    pub(crate) dataset: Arc<Dataset>,
    /// `AcquisitionStart` with sequence 0 (patched per acquisition).
    pub(crate) start: AcquisitionStart,
    /// Dtypes and padding.
    pub(crate) layout: Layout,
    /// Every `ArrayChunk` message back to back.
    pub(crate) bytes: Vec<u8>,
    /// Their positions, in frame order.
    pub(crate) chunks: Vec<ChunkAt>,
}

impl Encoded {
    /// The format every chunk shares.
    pub(crate) fn format(&self) -> CsrFormat {
        self.start.format()
    }

    /// One `ArrayChunk` message of frames `frames` (a range within the scan) in this
    /// layout, appended to `out`.
    pub(crate) fn encode_rows(
        &self,
        frames: std::ops::Range<u64>,
        out: &mut Vec<u8>,
    ) -> Result<(), WireError> {
        let rows = &self.dataset.rows;
        let list: Vec<(&[u32], &[u32])> = (frames.start as usize..frames.end as usize)
            .map(|f| rows.row(f))
            .collect();
        array_chunk(
            &self.format(),
            self.layout.values,
            &list,
            self.layout.pad,
            out,
        )
    }
}

/// Encodes `dataset` in chunks of `layout.rows_per_chunk` frames.
///
/// # Errors
/// A message when a shape exceeds the 16-bit header fields, a value or index does not fit
/// its dtype, or a chunk is too large for the 32-bit offsets of the header.
pub(crate) fn encode(dataset: Arc<Dataset>, layout: Layout) -> Result<Encoded, String> {
    let sig = dataset.rows.sig_shape;
    let nav = dataset.nav;
    let fits = |v: usize| u16::try_from(v).ok().filter(|&x| x > 0);
    let (Some(nr), Some(nc), Some(sr), Some(sc)) = (
        fits(nav.rows),
        fits(nav.cols),
        fits(sig.rows),
        fits(sig.cols),
    ) else {
        return Err(format!(
            "nav shape {nav} and sig shape {sig} must each be 1 to 65535 a side (16-bit header fields, protocols.md §3.3)"
        ));
    };
    if layout.rows_per_chunk == 0 {
        return Err("rows per chunk must be at least 1".into());
    }
    let start = AcquisitionStart {
        version: dataset.version,
        format_type: dataset.format_type,
        nav_shape: (nr, nc),
        indptr: layout.indptr,
        sig_shape: (sr, sc),
        indices: layout.indices,
        sequence: 0,
    };
    if (sig.len() as u64 - 1) > layout.indices.max() {
        return Err(format!(
            "indices dtype {} cannot hold the signal indices of a {sig} frame (up to {})",
            layout.indices,
            sig.len() - 1
        ));
    }
    let mut enc = Encoded {
        dataset: dataset.clone(),
        start,
        layout,
        bytes: Vec::with_capacity(
            dataset.rows.nnz() * (layout.indices.size() + layout.values.size())
                + nav.len() / layout.rows_per_chunk * (HEADER_LEN + 2 * layout.pad + 8)
                + nav.len() * layout.indptr.size()
                + 4096,
        ),
        chunks: Vec::new(),
    };
    let n = dataset.frames();
    let mut f = 0u64;
    while f < n {
        let end = (f + layout.rows_per_chunk as u64).min(n);
        let nnz = dataset.rows.indptr[end as usize] - dataset.rows.indptr[f as usize];
        let size = (end - f + 1) * layout.indptr.size() as u64
            + 2 * layout.pad as u64
            + nnz * (layout.indices.size() + layout.values.size()) as u64;
        if size > u64::from(u32::MAX) || nnz > u64::from(u32::MAX) {
            return Err(format!(
                "chunk of frames {f}..{end} would hold {nnz} events in {size} bytes: more than the 32-bit header fields allow; use fewer rows per chunk"
            ));
        }
        let at = enc.bytes.len();
        let mut bytes = std::mem::take(&mut enc.bytes);
        let r = enc.encode_rows(f..end, &mut bytes);
        enc.bytes = bytes;
        r.map_err(|e| format!("frames {f}..{end}: {e} (value dtype {})", layout.values))?;
        enc.chunks.push(ChunkAt {
            start: at,
            end: enc.bytes.len(),
            first_frame: f,
            frames: (end - f) as u32,
            nnz: nnz as u32,
        });
        f = end;
    }
    Ok(enc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(rel: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data")
            .join(rel)
    }

    #[test]
    fn the_shared_recording_is_one_complete_scan() {
        let d = load_recording(&shared("tpx3/synthetic_16x16_512.tpx")).expect("loads");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].nav, NavShape::new(16, 16));
        assert_eq!(d[0].rows.sig_shape, SigShape::new(512, 512));
        assert_eq!(d[0].rows.n_frames(), 256);
        let sum: u64 = d[0].rows.values.iter().map(|&v| u64::from(v)).sum();
        assert_eq!(sum, 104_619, "the value sum shared/data/README.md states");
    }

    #[test]
    fn damaged_streams_are_refused_with_the_position() {
        let d = std::fs::read(shared("tpx3/synthetic_16x16_512.tpx")).unwrap();
        let e = parse_stream(&d[..d.len() - 40]).unwrap_err();
        assert!(e.contains("ends inside a header"), "{e}");
        let e = parse_stream(&d[..100]).unwrap_err();
        assert!(e.contains("payload bytes, only"), "{e}");
        let mut bad = d.clone();
        bad[64] = 9;
        let e = parse_stream(&bad).unwrap_err();
        assert!(e.contains("header at byte 64"), "{e}");
        assert!(parse_stream(&[]).unwrap_err().contains("no complete scan"));
    }

    #[test]
    fn synthetic_rows_are_sorted_counts() {
        let sp = Specimen::builder().build();
        let d = synthesize(&sp, NavShape::new(4, 4), SigShape::new(128, 128), 300.0, 3)
            .expect("synthesizes");
        assert_eq!(d.rows.n_frames(), 16);
        for f in 0..16 {
            let (idx, val) = d.rows.row(f);
            assert!(idx.windows(2).all(|w| w[0] < w[1]), "sorted, unique");
            assert!(val.iter().all(|&v| v >= 1));
            let n: u32 = val.iter().sum();
            assert!((200..400).contains(&n), "frame {f}: {n} events");
        }
        let again =
            synthesize(&sp, NavShape::new(4, 4), SigShape::new(128, 128), 300.0, 3).unwrap();
        assert_eq!(again.rows.indices, d.rows.indices, "deterministic");
    }

    #[test]
    fn encoding_checks_dtypes_and_chunks() {
        let sp = Specimen::builder().build();
        let d = Arc::new(
            synthesize(&sp, NavShape::new(3, 3), SigShape::new(512, 512), 50.0, 1).unwrap(),
        );
        let layout = Layout {
            rows_per_chunk: 4,
            indptr: CsrDType::U32,
            indices: CsrDType::U32,
            values: CsrDType::U32,
            pad: 3,
        };
        let e = encode(d.clone(), layout).unwrap();
        assert_eq!(
            e.chunks.iter().map(|c| c.frames).collect::<Vec<_>>(),
            [4, 4, 1]
        );
        assert_eq!(e.chunks[2].end, e.bytes.len());
        let small = Layout {
            indices: CsrDType::U16,
            ..layout
        };
        assert!(encode(d, small).unwrap_err().contains("indices dtype u16"));
    }
}
