//! Offline reading of a recorded Merlin acquisition: a `.mib` file of frames (each an MQ1
//! header followed by its payload, exactly as on the data port minus the MPX prefix,
//! protocols.md §1.6) with its optional `.hdr` acquisition header (§1.5).
//!
//! Frames are read in blocks with one large sequential read into a reused buffer, each
//! frame header is checked against the first (magic, data offset, sequence), and the
//! payloads are decoded by [`MerlinDecoder`] into a [`Tile`] whose allocation is reused.
//! Multi-file sets (`IMAGESPERFILE`, `default1.mib`, `default2.mib`, …) are read one file at
//! a time.

use super::decode::{DecoderError, MerlinDecoder};
use super::hdr::{HdrError, MerlinHeader};
use super::mq1::{self, Mq1Error, Mq1Header};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use stemflow_core::frame::{DecodeError, FrameDecoder, Tile, TileData};
use stemflow_core::{DType, NavShape, SigShape};

/// Bytes read to find the first frame header's data offset and parse it (headers are 384
/// or 768 bytes; the data offset field is 5 digits).
const FIRST_HEADER_READ: usize = 100_000;

/// Errors reading a recorded `.hdr` / `.mib` set. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum MibFileError {
    /// The path has neither a `.mib` nor a `.hdr` extension.
    #[error("{path}: expected a `.mib` or `.hdr` file")]
    Extension {
        /// The path given.
        path: PathBuf,
    },
    /// A `.hdr` was given and no `.mib` lies beside it.
    #[error("{hdr}: no frame file beside it (looked for {mib})")]
    NoFrames {
        /// The header file.
        hdr: PathBuf,
        /// The frame file looked for.
        mib: PathBuf,
    },
    /// The file could not be opened or read.
    #[error("{path}: I/O error during {during}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was under way.
        during: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The `.hdr` file is not a valid acquisition header.
    #[error("{path}: {source}")]
    Header {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: HdrError,
    },
    /// A frame header does not parse.
    #[error("{path}: frame {frame}: {source}")]
    FrameHeader {
        /// The file.
        path: PathBuf,
        /// Frame index in the file (0-based).
        frame: u64,
        /// The cause.
        #[source]
        source: Mq1Error,
    },
    /// The first frame's format cannot be decoded.
    #[error("{path}: {source}")]
    Decoder {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: DecoderError,
    },
    /// A frame's payload does not decode.
    #[error("{path}: frame {frame}: {source}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// Frame index in the file (0-based).
        frame: u64,
        /// The cause.
        #[source]
        source: DecodeError,
    },
    /// The file ends inside a frame.
    #[error("{path}: truncated: frame {frame} needs {expected} bytes, the file holds {observed}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Index of the incomplete frame (0-based).
        frame: u64,
        /// Bytes per frame (header + payload).
        expected: u64,
        /// Bytes of that frame present.
        observed: u64,
    },
    /// A frame header disagrees with the first frame's.
    #[error("{path}: frame {frame}: {field} is {observed}, expected {expected} (from frame 0)")]
    Inconsistent {
        /// The file.
        path: PathBuf,
        /// Frame index in the file (0-based).
        frame: u64,
        /// The field (`data offset`, `sequence number`).
        field: &'static str,
        /// Expected value.
        expected: u64,
        /// Value in the file.
        observed: u64,
    },
    /// Frames requested past the end of the file.
    #[error("{path}: frames {first}..{end} requested, the file holds {frames}")]
    Range {
        /// The file.
        path: PathBuf,
        /// First frame requested.
        first: u64,
        /// One past the last frame requested.
        end: u64,
        /// Frames in the file.
        frames: u64,
    },
}

/// An open `.mib` recording (with its `.hdr` when present).
#[derive(Debug)]
pub struct MibFile {
    mib_path: PathBuf,
    hdr_path: Option<PathBuf>,
    header: Option<MerlinHeader>,
    first: Mq1Header,
    decoder: Arc<MerlinDecoder>,
    file: File,
    frame_bytes: u64,
    frames: u64,
    /// Reused read buffer: a block of whole frames (headers + payloads).
    buf: Vec<u8>,
}

impl MibFile {
    /// Opens a recording given its `.mib` (the `.hdr` with the same stem is read when it
    /// exists) or its `.hdr` (the `.mib` with the same stem must exist). Reads the first
    /// frame header to learn the format and computes the frame count from the file size.
    ///
    /// # Errors
    /// [`MibFileError`] naming the file: unknown extension, missing `.mib`, I/O, an invalid
    /// header, an undecodable format, or a file that ends inside a frame.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, MibFileError> {
        let path = path.as_ref();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let (mib_path, hdr_path) = match ext.as_deref() {
            Some("mib") => {
                let hdr = path.with_extension("hdr");
                (path.to_path_buf(), hdr.is_file().then_some(hdr))
            }
            Some("hdr") => {
                let mib = path.with_extension("mib");
                if !mib.is_file() {
                    return Err(MibFileError::NoFrames {
                        hdr: path.to_path_buf(),
                        mib,
                    });
                }
                (mib, Some(path.to_path_buf()))
            }
            _ => {
                return Err(MibFileError::Extension {
                    path: path.to_path_buf(),
                });
            }
        };
        let header = match &hdr_path {
            Some(p) => {
                let bytes = std::fs::read(p).map_err(|source| MibFileError::Io {
                    path: p.clone(),
                    during: "reading the acquisition header",
                    source,
                })?;
                Some(
                    MerlinHeader::parse(&bytes).map_err(|source| MibFileError::Header {
                        path: p.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        let io_err = |during: &'static str| {
            let p = mib_path.clone();
            move |source| MibFileError::Io {
                path: p,
                during,
                source,
            }
        };
        let mut file = File::open(&mib_path).map_err(io_err("opening"))?;
        let file_len = file.metadata().map_err(io_err("reading the size"))?.len();

        let mut head = Vec::with_capacity(FIRST_HEADER_READ);
        (&mut file)
            .take(FIRST_HEADER_READ as u64)
            .read_to_end(&mut head)
            .map_err(io_err("reading the first frame header"))?;
        let frame_err = |source| MibFileError::FrameHeader {
            path: mib_path.clone(),
            frame: 0,
            source,
        };
        let first = Mq1Header::parse(&head).map_err(frame_err)?;
        let decoder = MerlinDecoder::new(&first, header.as_ref())
            .map_err(|source| MibFileError::Decoder {
                path: mib_path.clone(),
                source,
            })?
            .with_device(format!("merlin file {}", mib_path.display()));
        let frame_bytes = (first.data_offset + decoder.payload_len()) as u64;
        let frames = file_len / frame_bytes;
        let rest = file_len % frame_bytes;
        if rest != 0 {
            return Err(MibFileError::Truncated {
                path: mib_path,
                frame: frames,
                expected: frame_bytes,
                observed: rest,
            });
        }
        Ok(Self {
            mib_path,
            hdr_path,
            header,
            first,
            decoder: Arc::new(decoder),
            file,
            frame_bytes,
            frames,
            buf: Vec::new(),
        })
    }

    /// Path of the `.mib` frame file.
    pub fn mib_path(&self) -> &Path {
        &self.mib_path
    }

    /// Path of the `.hdr` file, when one was found.
    pub fn hdr_path(&self) -> Option<&Path> {
        self.hdr_path.as_deref()
    }

    /// The acquisition header, when a `.hdr` was found.
    pub fn header(&self) -> Option<&MerlinHeader> {
        self.header.as_ref()
    }

    /// The first frame's header.
    pub fn first_frame_header(&self) -> &Mq1Header {
        &self.first
    }

    /// Frames in the `.mib` file (file size / frame size). The HDR's `Frames in
    /// Acquisition` may be larger for an aborted or multi-file acquisition.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Decoded frame shape in pixels.
    pub fn sig_shape(&self) -> SigShape {
        self.decoder.sig_shape()
    }

    /// Decoded pixel type.
    pub fn dtype(&self) -> DType {
        self.decoder.dtype()
    }

    /// The scan grid from the header's `ScanY` × `ScanX`, when present.
    pub fn nav_shape(&self) -> Option<NavShape> {
        self.header.as_ref().and_then(MerlinHeader::nav_shape)
    }

    /// Bytes per frame in the file: header (data offset) + payload.
    pub fn frame_bytes(&self) -> u64 {
        self.frame_bytes
    }

    /// The decoder for this file's frames.
    pub fn decoder(&self) -> Arc<MerlinDecoder> {
        Arc::clone(&self.decoder)
    }

    /// Consecutive `(first, n)` ranges of at most `frames_per_tile` frames covering the file,
    /// for [`read_tile`](Self::read_tile).
    pub fn tile_ranges(
        &self,
        frames_per_tile: usize,
    ) -> impl Iterator<Item = (u64, usize)> + use<> {
        let step = frames_per_tile.max(1) as u64;
        let total = self.frames;
        (0..total.div_ceil(step)).map(move |i| {
            let first = i * step;
            (first, (total - first).min(step) as usize)
        })
    }

    /// Reads frames `first..first + n` as stored (MQ1 header + payload each, `n ×
    /// frame_bytes()` bytes), e.g. for a simulator to replay them inside MPX framing.
    ///
    /// # Errors
    /// [`MibFileError::Range`] past the end; [`MibFileError::Io`] or
    /// [`MibFileError::Truncated`] when the file shrank.
    pub fn read_raw(&mut self, first: u64, n: usize) -> Result<&[u8], MibFileError> {
        let end = first.saturating_add(n as u64);
        if end > self.frames {
            return Err(MibFileError::Range {
                path: self.mib_path.clone(),
                first,
                end,
                frames: self.frames,
            });
        }
        let len = n * self.frame_bytes as usize;
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        let path = &self.mib_path;
        self.file
            .seek(SeekFrom::Start(first * self.frame_bytes))
            .map_err(|source| MibFileError::Io {
                path: path.clone(),
                during: "seeking",
                source,
            })?;
        let mut got = 0;
        while got < len {
            match self.file.read(&mut self.buf[got..len]) {
                Ok(0) => {
                    let frame_in_block = (got as u64) / self.frame_bytes;
                    return Err(MibFileError::Truncated {
                        path: path.clone(),
                        frame: first + frame_in_block,
                        expected: self.frame_bytes,
                        observed: got as u64 - frame_in_block * self.frame_bytes,
                    });
                }
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(MibFileError::Io {
                        path: path.clone(),
                        during: "reading frames",
                        source,
                    });
                }
            }
        }
        Ok(&self.buf[..len])
    }

    /// Reads and decodes frames `first..first + n` into `out` (its allocation is reused when
    /// the dtype matches; its `first_frame`, `n_frames` and `sig_shape` are set).
    ///
    /// # Errors
    /// [`MibFileError::Range`], I/O and truncation errors, [`MibFileError::FrameHeader`] /
    /// [`MibFileError::Inconsistent`] for a frame header that disagrees with the first
    /// (magic, data offset, sequence number = first + index), [`MibFileError::Decode`].
    pub fn read_tile(&mut self, first: u64, n: usize, out: &mut Tile) -> Result<(), MibFileError> {
        let decoder = Arc::clone(&self.decoder);
        let sig = decoder.sig_shape();
        let pixels = sig.len();
        if out.data.dtype() != decoder.dtype() {
            out.data = TileData::zeros(decoder.dtype(), n * pixels);
        } else {
            out.data.resize(n * pixels);
        }
        out.first_frame = first;
        out.n_frames = n;
        out.sig_shape = sig;

        let frame_bytes = self.frame_bytes as usize;
        let data_offset = self.first.data_offset;
        let first_seq = self.first.sequence;
        let path = self.mib_path.clone();
        let block = self.read_raw(first, n)?;
        for (i, frame) in block.chunks_exact(frame_bytes).enumerate() {
            let index = first + i as u64;
            let (seq, offset) =
                mq1::quick_parse(frame).map_err(|source| MibFileError::FrameHeader {
                    path: path.clone(),
                    frame: index,
                    source,
                })?;
            let inconsistent = |field, expected: u64, observed: u64| MibFileError::Inconsistent {
                path: path.clone(),
                frame: index,
                field,
                expected,
                observed,
            };
            if offset != data_offset {
                return Err(inconsistent(
                    "data offset",
                    data_offset as u64,
                    offset as u64,
                ));
            }
            if seq != first_seq + index {
                return Err(inconsistent("sequence number", first_seq + index, seq));
            }
            decoder
                .decode_into(
                    &frame[data_offset..],
                    out.data.pixels_mut(i * pixels..(i + 1) * pixels),
                )
                .map_err(|source| MibFileError::Decode {
                    path: path.clone(),
                    frame: index,
                    source,
                })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tmp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("stemflow-mib-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A single-chip-like U08 frame of 4×2 pixels with a 32-byte header.
    fn frame(seq: u64, offset: usize, value: u8) -> Vec<u8> {
        let mut h = format!("MQ1,{seq:06},{offset:05},01,0004,0002,U08,   1x1,01,t,0.001,0,0,0,")
            .into_bytes();
        h.resize(offset, 0);
        h.extend(std::iter::repeat_n(value, 8));
        h
    }

    fn write(path: &Path, parts: &[Vec<u8>]) {
        let mut f = File::create(path).unwrap();
        for p in parts {
            f.write_all(p).unwrap();
        }
    }

    #[test]
    fn reads_tiles_and_reports_inconsistent_headers() {
        let dir = tmp_dir("inconsistent");
        let mib = dir.join("a.mib");
        write(&mib, &[frame(1, 64, 1), frame(2, 64, 2), frame(4, 64, 3)]);
        let mut f = MibFile::open(&mib).unwrap();
        assert_eq!(
            (f.frames(), f.frame_bytes(), f.sig_shape()),
            (3, 72, SigShape::new(2, 4))
        );
        assert!(f.header().is_none());
        let ranges: Vec<_> = f.tile_ranges(2).collect();
        assert_eq!(ranges, vec![(0, 2), (2, 1)]);
        let mut tile = Tile::zeros(0, 0, SigShape::new(1, 1), DType::U16);
        f.read_tile(0, 2, &mut tile).unwrap();
        assert_eq!(
            tile.data,
            TileData::U8(vec![1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2])
        );
        let err = f.read_tile(1, 2, &mut tile).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(
                err,
                MibFileError::Inconsistent {
                    frame: 2,
                    expected: 3,
                    observed: 4,
                    ..
                }
            ),
            "{text}"
        );
        assert!(
            text.contains("a.mib") && text.contains("sequence number"),
            "{text}"
        );
        assert!(matches!(
            f.read_tile(2, 2, &mut tile),
            Err(MibFileError::Range { .. })
        ));
    }

    #[test]
    fn truncated_file_names_frame_and_sizes() {
        let dir = tmp_dir("truncated");
        let mib = dir.join("b.mib");
        let mut second = frame(2, 64, 2);
        second.truncate(50);
        write(&mib, &[frame(1, 64, 1), second]);
        let err = MibFile::open(&mib).unwrap_err();
        assert!(
            matches!(
                err,
                MibFileError::Truncated {
                    frame: 1,
                    expected: 72,
                    observed: 50,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("b.mib"));
    }

    #[test]
    fn hdr_path_needs_its_mib_and_bad_extensions_are_refused() {
        let dir = tmp_dir("paths");
        let hdr = dir.join("c.hdr");
        write(
            &hdr,
            &[
                b"HDR,\nFrames in Acquisition (Number):\t1\nFrames per Trigger (Number):\t1\nEnd"
                    .to_vec(),
            ],
        );
        assert!(matches!(
            MibFile::open(&hdr),
            Err(MibFileError::NoFrames { .. })
        ));
        write(&dir.join("c.mib"), &[frame(1, 64, 9)]);
        let f = MibFile::open(&hdr).unwrap();
        assert_eq!(f.header().unwrap().frames_in_acquisition(), 1);
        assert_eq!(f.mib_path(), dir.join("c.mib"));
        assert!(matches!(
            MibFile::open(dir.join("c.txt")),
            Err(MibFileError::Extension { .. })
        ));
    }
}
