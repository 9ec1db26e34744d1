//! [`TpxFile`]: a recorded TPX3 CSR stream (`.tpx`: the bytes of the data port, as
//! LiberTEM's serializer writes them, protocols.md §3.2–§3.4) as a sparse
//! [`DataSet`](stemflow_core::DataSet).
//!
//! Opening walks the headers once (seeking over payloads) and indexes the chunks of the
//! first scan of the first acquisition; every header, every chunk's layout and the rows
//! against the scan are checked then, so reading later fails only on I/O. Frames are read
//! as CSR rows ([`CsrRows`]) chunk by chunk into a reused buffer, a chunk straddling the
//! requested range contributing only its rows inside it.

use super::wire::{AcquisitionStart, HEADER_LEN, Header};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use stemflow_core::csr::{CsrChunkRef, CsrFormat, CsrRows};
use stemflow_core::dataset::{DataSet, IoError};
use stemflow_core::frame::Tile;
use stemflow_core::{DType, NavShape, SigShape};

/// One indexed chunk: where its payload is and its first frame.
#[derive(Clone, Copy, Debug)]
struct Indexed {
    /// Payload offset in the file, bytes.
    at: u64,
    chunk: CsrChunkRef,
}

/// A `.tpx` stream file opened for reading.
#[derive(Debug)]
pub struct TpxFile {
    path: PathBuf,
    file: File,
    acquisition: AcquisitionStart,
    format: CsrFormat,
    chunks: Vec<Indexed>,
    frames: u64,
    nav: NavShape,
    /// Scratch: one chunk's payload and rows.
    payload: Vec<u8>,
    rows: CsrRows,
}

fn format_err(path: &Path, detail: String) -> IoError {
    IoError::Format {
        path: path.to_path_buf(),
        detail,
    }
}

impl TpxFile {
    /// Opens and indexes `path` (the first scan of its first acquisition).
    ///
    /// # Errors
    /// [`IoError::Io`] on a read failure; [`IoError::Format`] naming the byte offset for a
    /// file that does not start with `AcquisitionStart`, an unknown header, a chunk whose
    /// arrays do not fit its payload, rows past the scan, or a file cut inside a message.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, IoError> {
        let path = path.as_ref().to_path_buf();
        let io = |during: &str| {
            let path = path.clone();
            let during = during.to_string();
            move |source| IoError::Io {
                path,
                during,
                source,
            }
        };
        let mut file = File::open(&path).map_err(io("opening"))?;
        let size = file.metadata().map_err(io("reading its size"))?.len();
        let mut at = 0u64;
        let read_header = |file: &mut File, at: &mut u64| -> Result<Option<Header>, IoError> {
            if *at + HEADER_LEN as u64 > size {
                if *at == size {
                    return Ok(None);
                }
                return Err(format_err(
                    &path,
                    format!("cut inside a header at byte {at} (file of {size} bytes)"),
                ));
            }
            let mut b = [0u8; HEADER_LEN];
            file.seek(SeekFrom::Start(*at)).map_err(io("seeking"))?;
            file.read_exact(&mut b).map_err(io("reading a header"))?;
            let h = Header::parse(&b)
                .map_err(|e| format_err(&path, format!("header at byte {at}: {e}")))?;
            *at += HEADER_LEN as u64;
            Ok(Some(h))
        };
        let Some(Header::AcquisitionStart(acquisition)) = read_header(&mut file, &mut at)? else {
            return Err(format_err(
                &path,
                "does not start with an AcquisitionStart header (protocols.md §3.2): not a TPX3 stream recording".into(),
            ));
        };
        let format = acquisition.format();
        let mut chunks = Vec::new();
        let mut frames = 0u64;
        let mut in_scan = false;
        let max = acquisition.frames();
        while let Some(h) = read_header(&mut file, &mut at)? {
            match h {
                Header::ScanStart(s) if !in_scan => {
                    in_scan = true;
                    at = at.saturating_add(s.metadata_length);
                }
                Header::ArrayChunk(c) if in_scan => {
                    let len = c.payload_len();
                    if at + len > size {
                        return Err(format_err(
                            &path,
                            format!(
                                "the ArrayChunk at byte {} announces {len} payload bytes, the file ends {} bytes later",
                                at - HEADER_LEN as u64,
                                size - at
                            ),
                        ));
                    }
                    let chunk = c.chunk_ref(0, frames);
                    chunk.check_layout(&format).map_err(|e| {
                        format_err(&path, format!("ArrayChunk at byte {}: {e}", at - 32))
                    })?;
                    frames += u64::from(c.frames);
                    if frames > max {
                        return Err(format_err(
                            &path,
                            format!("the scan's chunks hold more than its {max} frames"),
                        ));
                    }
                    chunks.push(Indexed { at, chunk });
                    at += len;
                }
                Header::ArrayChunk(c) => at += c.payload_len(),
                Header::ScanStart(_) | Header::ScanEnd(_) | Header::AcquisitionEnd(_) => {
                    if in_scan {
                        break;
                    }
                }
                Header::AcquisitionStart(_) => break,
            }
        }
        if !in_scan {
            return Err(format_err(&path, "holds no scan (no ScanStart)".into()));
        }
        let nav = if frames == max {
            NavShape::new(
                acquisition.nav_shape.0 as usize,
                acquisition.nav_shape.1 as usize,
            )
        } else {
            NavShape::new(1, frames as usize)
        };
        Ok(Self {
            path,
            file,
            acquisition,
            format,
            chunks,
            frames,
            nav,
            payload: Vec::new(),
            rows: CsrRows::default(),
        })
    }

    /// The recording's `AcquisitionStart`.
    pub fn acquisition(&self) -> &AcquisitionStart {
        &self.acquisition
    }
}

impl DataSet for TpxFile {
    fn path(&self) -> &Path {
        &self.path
    }
    fn nav_shape(&self) -> NavShape {
        self.nav
    }
    fn sig_shape(&self) -> SigShape {
        self.format.sig_shape
    }
    fn dtype(&self) -> DType {
        DType::U32
    }
    fn frames(&self) -> u64 {
        self.frames
    }
    fn is_sparse(&self) -> bool {
        true
    }

    fn read_csr(&mut self, first: u64, n: usize, out: &mut CsrRows) -> Result<(), IoError> {
        let end = first + n as u64;
        if end > self.frames {
            return Err(IoError::Range {
                path: self.path.clone(),
                first,
                end,
                frames: self.frames,
            });
        }
        out.clear(first, self.format.sig_shape);
        let k0 = self
            .chunks
            .partition_point(|c| c.chunk.first_frame + u64::from(c.chunk.frames) <= first);
        for i in k0..self.chunks.len() {
            let c = self.chunks[i];
            if c.chunk.first_frame >= end {
                break;
            }
            self.payload.resize(c.chunk.len, 0);
            self.file
                .seek(SeekFrom::Start(c.at))
                .and_then(|_| self.file.read_exact(&mut self.payload))
                .map_err(|source| IoError::Io {
                    path: self.path.clone(),
                    during: format!("reading the chunk at byte {}", c.at),
                    source,
                })?;
            self.rows.clear(c.chunk.first_frame, self.format.sig_shape);
            self.rows
                .push_chunk(&self.format, &c.chunk, &self.payload)
                .map_err(|e| format_err(&self.path, format!("chunk at byte {}: {e}", c.at)))?;
            let a = first.max(c.chunk.first_frame) - c.chunk.first_frame;
            let b = end.min(c.chunk.first_frame + u64::from(c.chunk.frames)) - c.chunk.first_frame;
            out.extend_rows(&self.rows, a as usize..b as usize);
        }
        Ok(())
    }

    fn read_tile(&mut self, first: u64, n: usize, out: &mut Tile) -> Result<(), IoError> {
        let mut rows = CsrRows::default();
        self.read_csr(first, n, &mut rows)?;
        rows.densify_into(0..rows.n_frames(), out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_capture_reads_as_its_readme_says_in_any_split() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data/tpx3/synthetic_16x16_512.tpx");
        let mut f = TpxFile::open(&p).unwrap();
        assert_eq!(
            (f.nav_shape(), f.sig_shape()),
            (NavShape::new(16, 16), SigShape::new(512, 512))
        );
        assert!(f.is_sparse());
        let mut all = CsrRows::default();
        f.read_csr(0, 256, &mut all).unwrap();
        assert_eq!(
            all.values.iter().map(|&v| u64::from(v)).sum::<u64>(),
            104_619
        );
        // Ranges that split chunks (of 4 frames) give the same rows.
        let mut parts = CsrRows::default();
        parts.clear(0, f.sig_shape());
        for (a, n) in [(0, 3), (3, 6), (9, 200), (209, 47)] {
            let mut r = CsrRows::default();
            f.read_csr(a, n, &mut r).unwrap();
            assert_eq!(r.first_frame, a);
            parts.extend_rows(&r, 0..n);
        }
        assert_eq!(
            (&parts.indptr, &parts.indices, &parts.values),
            (&all.indptr, &all.indices, &all.values)
        );
        let mut t = Tile::zeros(0, 0, f.sig_shape(), DType::U32);
        f.read_tile(5, 2, &mut t).unwrap();
        assert_eq!(t.n_frames, 2);
        assert!(f.read_csr(250, 10, &mut parts).is_err());
        let garbage =
            std::env::temp_dir().join(format!("stemflow-not-tpx-{}.tpx", std::process::id()));
        std::fs::write(&garbage, [1u8; 64]).unwrap();
        let e = TpxFile::open(&garbage).unwrap_err().to_string();
        assert!(e.contains("AcquisitionStart"), "{e}");
        let _ = std::fs::remove_file(&garbage);
    }
}
