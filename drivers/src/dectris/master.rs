//! Offline reading of a DECTRIS HDF5 recording (a NeXus `*_master.h5` with its
//! `*_data_NNNNNN.h5` files, written by the DCU's filewriter or by the DECTRIS software).
//!
//! The frames live in `entry/data/data_NNNNNN` (external links to the data files), each a
//! 3-D data set (frames × rows × cols) of u8/u16/u32 chunked one frame per chunk and
//! compressed with the bitshuffle HDF5 filter (id 32008, LZ4 mode; DCU `compression =
//! bslz4`) or the LZ4 filter (id 32004; `compression = lz4`). We read each chunk's stored
//! bytes as they are (an HDF5 *direct chunk read*: `H5Dget_chunk_info_by_coord` for its
//! size, then `H5Dread_chunk`, through `hdf5-sys` under hdf5-metno's global lock) and decode
//! them with our own [`codec`] — the bitshuffle filter's chunk format is the 12-byte header +
//! LZ4 blocks of protocols.md §2.5 — so no HDF5 filter plugin is needed and decoding runs at
//! our codec's speed. Chunks whose filter was skipped (the chunk's filter mask) are copied
//! as stored. Frames are read one chunk at a time into one reused buffer.
//!
//! The detector's `pixel_mask` (`entry/instrument/detector/detectorSpecific/pixel_mask`,
//! u32 per pixel, non-zero = gap, dead, cold, hot or noisy pixel) is applied by default:
//! every pixel whose mask value is non-zero is set to 0 in the decoded frames. Why: with
//! `pixel_mask_applied` the DCU writes such pixels as the type's maximum (e.g. 2³² − 1),
//! which would dominate every sum, virtual detector and centre of mass; zero is what the
//! DCU itself writes with `mask_to_zero` (§2.3), and LiberTEM treats mask > 0 as excluded
//! (§2.3, darray). [`MasterFile::set_apply_mask`] turns it off.
//!
//! Scalar values of `entry/instrument/detector` and its `detectorSpecific` group are
//! exposed as name → value strings ([`MasterFile::metadata`]), with their `units`
//! attributes ([`MasterFile::unit`]).

use super::codec::{self, CodecError, Compression, Encoding};
use hdf5::types::{TypeDescriptor, VarLenAscii, VarLenUnicode};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use stemflow_core::frame::{Tile, TileData};
use stemflow_core::{DType, NavShape, SigShape};

/// HDF5 filter id of the bitshuffle filter (registered with The HDF Group).
pub const BSHUF_FILTER_ID: i32 = 32_008;
/// HDF5 filter id of the LZ4 filter (DECTRIS `compression = lz4`).
pub const LZ4_FILTER_ID: i32 = 32_004;
/// The bitshuffle filter's `cd_values[4]` for LZ4 compression.
const BSHUF_LZ4: u32 = 2;
/// Where the detector description lives in a DECTRIS master file.
const DETECTOR: &str = "entry/instrument/detector";
/// The pixel mask, relative to [`DETECTOR`].
const PIXEL_MASK: &str = "detectorSpecific/pixel_mask";

/// Errors reading a DECTRIS HDF5 set. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum MasterFileError {
    /// HDF5 refused an operation.
    #[error("{path}: HDF5 error during {during}: {source}")]
    Hdf5 {
        /// The master file.
        path: PathBuf,
        /// What was under way (names the object).
        during: String,
        /// The cause.
        #[source]
        source: hdf5::Error,
    },
    /// No `entry/data/data_NNNNNN` data set.
    #[error("{path}: no frame data set `entry/data/data_NNNNNN` found")]
    NoData {
        /// The master file.
        path: PathBuf,
    },
    /// A frame data set that is not frames × rows × cols, or whose frame shape or pixel
    /// type differs from the first one's.
    #[error("{path}: {part}: {what} is {observed}, expected {expected}")]
    Layout {
        /// The master file.
        path: PathBuf,
        /// The data set (`entry/data/data_000002`).
        part: String,
        /// What is wrong (`shape`, `pixel type`, `chunk shape`, `filter`).
        what: &'static str,
        /// What we need.
        expected: String,
        /// What the file has.
        observed: String,
    },
    /// The pixel mask does not have the frame shape.
    #[error("{path}: pixel_mask has shape {observed:?}, expected the frame shape {expected:?}")]
    Mask {
        /// The master file.
        path: PathBuf,
        /// Frame shape (rows, cols).
        expected: (usize, usize),
        /// Mask shape.
        observed: Vec<usize>,
    },
    /// A chunk could not be located or read.
    #[error("{path}: {part}: frame {frame}: raw chunk read failed: {detail}")]
    Chunk {
        /// The master file.
        path: PathBuf,
        /// The data set.
        part: String,
        /// Frame index in the acquisition (0-based).
        frame: u64,
        /// What HDF5 said, with the numbers.
        detail: String,
    },
    /// A chunk does not decode.
    #[error("{path}: frame {frame}: {source}")]
    Decode {
        /// The master file.
        path: PathBuf,
        /// Frame index in the acquisition (0-based).
        frame: u64,
        /// The cause.
        #[source]
        source: CodecError,
    },
    /// Frames requested past the end.
    #[error("{path}: frames {first}..{end} requested, the set holds {frames}")]
    Range {
        /// The master file.
        path: PathBuf,
        /// First frame requested.
        first: u64,
        /// One past the last frame requested.
        end: u64,
        /// Frames in the set.
        frames: u64,
    },
}

/// One frame data set (one data file).
#[derive(Debug)]
struct Part {
    /// Path inside the master (`entry/data/data_000001`).
    name: String,
    dataset: hdf5::Dataset,
    /// Acquisition index of its first frame.
    first: u64,
    /// Frames in it.
    frames: u64,
    /// The filter and the bit of a chunk's filter mask that says it was skipped (None: no
    /// filter).
    filter: Option<(ChunkFilter, u32)>,
}

/// The compression filter of a frame data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkFilter {
    /// Bitshuffle + LZ4 (32008): the §2.5 layout.
    BitshuffleLz4,
    /// LZ4 (32004): [`codec::decode_hdf5_lz4_into`].
    Lz4,
}

/// An open DECTRIS HDF5 recording, read frame by frame from raw chunks.
#[derive(Debug)]
pub struct MasterFile {
    path: PathBuf,
    _file: hdf5::File,
    parts: Vec<Part>,
    sig: SigShape,
    dtype: DType,
    frames: u64,
    nav: Option<NavShape>,
    enc: Encoding,
    /// Flat indices (row · cols + col) of pixels with a non-zero `pixel_mask`.
    masked: Vec<u32>,
    apply_mask: bool,
    metadata: BTreeMap<String, String>,
    units: BTreeMap<String, String>,
    /// Reused buffer for one stored chunk.
    chunk: Vec<u8>,
}

impl MasterFile {
    /// Opens a master file: finds the frame data sets (`entry/data/data_*`, following the
    /// external links to the data files, which must lie where the links say, normally
    /// beside the master; a data file given on its own is read through its `entry/data/data`,
    /// without metadata or mask), checks that they are frames × rows × cols of u8/u16/u32 in
    /// one-frame chunks with the bitshuffle-LZ4 filter or none, reads the pixel mask and
    /// the detector metadata. The scan shape comes from `STEM Metadata` (`NumPixelsY`,
    /// `NumPixelsX` attributes) of a `<stem>.h5` beside `<stem>_master.h5` when there is
    /// one (DECTRIS' acquisition software writes it), else it is unknown.
    ///
    /// # Errors
    /// [`MasterFileError`] naming the file: HDF5 errors (missing file or data file),
    /// [`MasterFileError::NoData`], [`MasterFileError::Layout`] for an unsupported layout,
    /// pixel type or filter, [`MasterFileError::Mask`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, MasterFileError> {
        let path = path.as_ref().to_path_buf();
        let h5 = |during: String| {
            let p = path.clone();
            move |source| MasterFileError::Hdf5 {
                path: p,
                during,
                source,
            }
        };
        let file = hdf5::File::open(&path).map_err(h5("opening".into()))?;
        let data = file
            .group("entry/data")
            .map_err(h5("opening entry/data".into()))?;
        let mut names: Vec<String> = data
            .member_names()
            .map_err(h5("listing entry/data".into()))?
            .into_iter()
            .filter(|n| n.starts_with("data_"))
            .collect();
        if names.is_empty() && data.link_exists("data") {
            names.push("data".into());
        }
        names.sort();
        if names.is_empty() {
            return Err(MasterFileError::NoData { path });
        }

        let mut parts = Vec::new();
        let mut first_layout: Option<(SigShape, DType)> = None;
        let mut total = 0u64;
        for n in names {
            let name = format!("entry/data/{n}");
            let dataset = file
                .dataset(&name)
                .map_err(h5(format!("opening {name} (is its data file present?)")))?;
            let layout = |what, expected: String, observed: String| MasterFileError::Layout {
                path: path.clone(),
                part: name.clone(),
                what,
                expected,
                observed,
            };
            let shape = dataset.shape();
            if shape.len() != 3 {
                return Err(layout(
                    "shape",
                    "frames × rows × cols".into(),
                    format!("{shape:?}"),
                ));
            }
            let sig = SigShape::new(shape[1], shape[2]);
            let desc = dataset
                .dtype()
                .and_then(|t| t.to_descriptor())
                .map_err(h5(format!("reading the type of {name}")))?;
            let dtype = match desc {
                TypeDescriptor::Unsigned(s) => match s as usize {
                    1 => DType::U8,
                    2 => DType::U16,
                    4 => DType::U32,
                    _ => DType::U64,
                },
                other => {
                    return Err(layout(
                        "pixel type",
                        "u8, u16 or u32".into(),
                        format!("{other:?}"),
                    ));
                }
            };
            if dtype == DType::U64 {
                return Err(layout("pixel type", "u8, u16 or u32".into(), "u64".into()));
            }
            match first_layout {
                None => first_layout = Some((sig, dtype)),
                Some((s0, d0)) => {
                    if s0 != sig {
                        return Err(layout("frame shape", format!("{s0:?}"), format!("{sig:?}")));
                    }
                    if d0 != dtype {
                        return Err(layout(
                            "pixel type",
                            format!("{d0:?}"),
                            format!("{dtype:?}"),
                        ));
                    }
                }
            }
            let chunk = dataset.chunk();
            if chunk.as_deref() != Some(&[1, shape[1], shape[2]][..]) {
                return Err(layout(
                    "chunk shape",
                    format!("[1, {}, {}] (one frame)", shape[1], shape[2]),
                    format!("{chunk:?}"),
                ));
            }
            let mut filter = None;
            let filters = dataset.filters();
            if filters.len() > 1 {
                return Err(layout(
                    "filter",
                    "one filter: bitshuffle-LZ4 (32008) or LZ4 (32004)".into(),
                    format!("{filters:?}"),
                ));
            }
            for (i, f) in filters.into_iter().enumerate() {
                match f {
                    hdf5::filters::Filter::User(id, cd) if id == BSHUF_FILTER_ID => {
                        // cd_values: [0, 1] filter version, [2] element size, [3] block size,
                        // [4] compression (2 = LZ4). Missing [4] means bitshuffle alone.
                        let elem_ok = cd.get(2).is_none_or(|&e| e as usize == dtype.size());
                        if cd.get(4).copied() != Some(BSHUF_LZ4) || !elem_ok {
                            return Err(layout(
                                "filter",
                                format!(
                                    "bitshuffle with LZ4 (cd_values[4] = 2) on {}-byte elements",
                                    dtype.size()
                                ),
                                format!("bitshuffle with cd_values {cd:?}"),
                            ));
                        }
                        filter = Some((ChunkFilter::BitshuffleLz4, i as u32));
                    }
                    hdf5::filters::Filter::User(id, _) if id == LZ4_FILTER_ID => {
                        filter = Some((ChunkFilter::Lz4, i as u32));
                    }
                    other => {
                        return Err(layout(
                            "filter",
                            "bitshuffle-LZ4 (32008), LZ4 (32004) or none".into(),
                            format!("{other:?}"),
                        ));
                    }
                }
            }
            parts.push(Part {
                name,
                dataset,
                first: total,
                frames: shape[0] as u64,
                filter,
            });
            total += shape[0] as u64;
        }
        let (sig, dtype) = first_layout.unwrap_or((SigShape::new(0, 0), DType::U8));

        let (metadata, units) = read_metadata(&file);
        let masked = match file.dataset(&format!("{DETECTOR}/{PIXEL_MASK}")) {
            Ok(mask) => {
                let shape = mask.shape();
                if shape != [sig.rows, sig.cols] {
                    return Err(MasterFileError::Mask {
                        path,
                        expected: (sig.rows, sig.cols),
                        observed: shape,
                    });
                }
                let values: Vec<u32> = mask
                    .read_raw::<u32>()
                    .map_err(h5(format!("reading {DETECTOR}/{PIXEL_MASK}")))?;
                values
                    .iter()
                    .enumerate()
                    .filter(|&(_, &v)| v != 0)
                    .map(|(i, _)| i as u32)
                    .collect()
            }
            Err(_) => Vec::new(),
        };
        let nav = scan_shape(&path);
        Ok(Self {
            path,
            _file: file,
            parts,
            sig,
            dtype,
            frames: total,
            nav,
            enc: Encoding {
                compression: Compression::BitshuffleLz4,
                elem_size: dtype.size(),
            },
            masked,
            apply_mask: true,
            metadata,
            units,
            chunk: Vec::new(),
        })
    }

    /// Path of the master file.
    pub fn master_path(&self) -> &Path {
        &self.path
    }

    /// Frames in the set (all data files together).
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Decoded frame shape in pixels (rows = y, cols = x).
    pub fn sig_shape(&self) -> SigShape {
        self.sig
    }

    /// Pixel type of the frames (u8, u16 or u32; `bit_depth_image`).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The scan grid, when a `<stem>.h5` with `STEM Metadata` lies beside the master.
    pub fn nav_shape(&self) -> Option<NavShape> {
        self.nav
    }

    /// Detector metadata: scalar data sets of `entry/instrument/detector` and
    /// `…/detectorSpecific`, by leaf name (`x_pixel_size`, `count_time`, `frame_time`,
    /// `bit_depth_image`, `ntrigger`, …) → value as text (numbers in Rust's shortest
    /// round-trip form, strings without padding). A name present in both groups keeps the
    /// `detector` value; the other is under `detectorSpecific/<name>`.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The `units` attribute of a metadata value (`s`, `m`, `eV`, `pixel`), when it has one.
    pub fn unit(&self, name: &str) -> Option<&str> {
        self.units.get(name).map(String::as_str)
    }

    /// Flat indices (row · cols + col) of the pixels with a non-zero `pixel_mask`.
    pub fn masked_pixels(&self) -> &[u32] {
        &self.masked
    }

    /// Whether decoded frames have masked pixels set to 0 (default true; see the module
    /// documentation for why).
    pub fn set_apply_mask(&mut self, on: bool) {
        self.apply_mask = on;
    }

    /// Consecutive `(first, n)` ranges of at most `frames_per_tile` frames covering the set,
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

    /// The stored (still compressed) bytes of frame `frame`'s chunk, and whether the data
    /// set's filter was applied to it (false: stored raw, the chunk's filter mask says the
    /// filter was skipped).
    ///
    /// # Errors
    /// [`MasterFileError::Range`], [`MasterFileError::Chunk`].
    pub fn read_raw_chunk(&mut self, frame: u64) -> Result<(&[u8], bool), MasterFileError> {
        let (bytes, filter) = self.raw_chunk(frame)?;
        Ok((bytes, filter.is_some()))
    }

    /// [`read_raw_chunk`](Self::read_raw_chunk) with the filter that was applied.
    fn raw_chunk(&mut self, frame: u64) -> Result<(&[u8], Option<ChunkFilter>), MasterFileError> {
        read_chunk(&self.parts, &self.path, self.frames, &mut self.chunk, frame)
    }

    /// Reads and decodes frames `first..first + n` into `out` (its allocation is reused when
    /// the dtype matches; its `first_frame`, `n_frames` and `sig_shape` are set), with the
    /// pixel mask applied unless turned off.
    ///
    /// # Errors
    /// [`MasterFileError::Range`], [`MasterFileError::Chunk`], [`MasterFileError::Decode`].
    pub fn read_tile(
        &mut self,
        first: u64,
        n: usize,
        out: &mut Tile,
    ) -> Result<(), MasterFileError> {
        let end = first.saturating_add(n as u64);
        if end > self.frames {
            return Err(MasterFileError::Range {
                path: self.path.clone(),
                first,
                end,
                frames: self.frames,
            });
        }
        let pixels = self.sig.len();
        if out.data.dtype() != self.dtype {
            out.data = TileData::zeros(self.dtype, n * pixels);
        } else {
            out.data.resize(n * pixels);
        }
        out.first_frame = first;
        out.n_frames = n;
        out.sig_shape = self.sig;
        let raw_enc = Encoding {
            compression: Compression::None,
            elem_size: self.dtype.size(),
        };
        for i in 0..n {
            let frame = first + i as u64;
            let enc = self.enc;
            let (bytes, filter) =
                read_chunk(&self.parts, &self.path, self.frames, &mut self.chunk, frame)?;
            let target = out.data.pixels_mut(i * pixels..(i + 1) * pixels);
            match filter {
                Some(ChunkFilter::BitshuffleLz4) => codec::decode_pixels(&enc, bytes, target),
                Some(ChunkFilter::Lz4) => codec::decode_hdf5_lz4_pixels(bytes, target),
                None => codec::decode_pixels(&raw_enc, bytes, target),
            }
            .map_err(|source| MasterFileError::Decode {
                path: self.path.clone(),
                frame,
                source,
            })?;
            if self.apply_mask {
                let base = i * pixels;
                match &mut out.data {
                    TileData::U8(v) => self.masked.iter().for_each(|&p| v[base + p as usize] = 0),
                    TileData::U16(v) => self.masked.iter().for_each(|&p| v[base + p as usize] = 0),
                    TileData::U32(v) => self.masked.iter().for_each(|&p| v[base + p as usize] = 0),
                    TileData::U64(v) => self.masked.iter().for_each(|&p| v[base + p as usize] = 0),
                    TileData::F32(v) => {
                        self.masked.iter().for_each(|&p| v[base + p as usize] = 0.0)
                    }
                    TileData::F64(v) => {
                        self.masked.iter().for_each(|&p| v[base + p as usize] = 0.0)
                    }
                }
            }
        }
        Ok(())
    }
}

/// Reads the stored bytes of frame `frame`'s chunk into `chunk` (grown as needed) with a
/// direct chunk read; returns them and the filter that was applied (None: stored raw).
fn read_chunk<'a>(
    parts: &[Part],
    path: &Path,
    frames: u64,
    chunk: &'a mut Vec<u8>,
    frame: u64,
) -> Result<(&'a [u8], Option<ChunkFilter>), MasterFileError> {
    if frame >= frames {
        return Err(MasterFileError::Range {
            path: path.to_path_buf(),
            first: frame,
            end: frame + 1,
            frames,
        });
    }
    let k = parts.partition_point(|p| p.first + p.frames <= frame);
    let part = &parts[k];
    let local = frame - part.first;
    let offset: [u64; 3] = [local, 0, 0];
    let id = part.dataset.id();
    let chunk_err = |detail: String| MasterFileError::Chunk {
        path: path.to_path_buf(),
        part: part.name.clone(),
        frame,
        detail,
    };
    let mut mask: u32 = 0;
    let mut addr: u64 = 0;
    let mut size: u64 = 0;
    // SAFETY: `id` is an open data set of rank 3; `offset` has 3 elements; the out
    // pointers are valid locals. Under hdf5-metno's global lock like its own calls.
    let r = hdf5::sync::sync(|| unsafe {
        hdf5_sys::h5d::H5Dget_chunk_info_by_coord(
            id,
            offset.as_ptr(),
            &mut mask,
            &mut addr,
            &mut size,
        )
    });
    if r < 0 {
        return Err(chunk_err(format!(
            "H5Dget_chunk_info_by_coord({local}, 0, 0) failed ({r})"
        )));
    }
    if addr == u64::MAX || size == 0 {
        return Err(chunk_err(format!(
            "chunk {local} of {} is not written",
            part.frames
        )));
    }
    let size = size as usize;
    if chunk.len() < size {
        chunk.resize(size, 0);
    }
    let buf = chunk.as_mut_ptr();
    let mut filters: u32 = 0;
    // SAFETY: `buf` holds at least `size` bytes, the stored size of this chunk that
    // HDF5 just reported; H5Dread_chunk writes exactly the stored bytes.
    let r = hdf5::sync::sync(|| unsafe {
        hdf5_sys::h5d::H5Dread_chunk(
            id,
            hdf5_sys::h5p::H5P_DEFAULT,
            offset.as_ptr(),
            &mut filters,
            buf.cast(),
        )
    });
    if r < 0 {
        return Err(chunk_err(format!(
            "H5Dread_chunk({local}, 0, 0) of {size} bytes failed ({r})"
        )));
    }
    let applied = part
        .filter
        .and_then(|(f, bit)| (filters & (1 << bit) == 0).then_some(f));
    Ok((&chunk[..size], applied))
}

/// Reads the scalar values of the detector group and its `detectorSpecific` group.
fn read_metadata(file: &hdf5::File) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut values = BTreeMap::new();
    let mut units = BTreeMap::new();
    for (group, prefix) in [
        (DETECTOR.to_string(), ""),
        (format!("{DETECTOR}/detectorSpecific"), "detectorSpecific/"),
    ] {
        let Ok(g) = file.group(&group) else { continue };
        let Ok(names) = g.member_names() else {
            continue;
        };
        for name in names {
            let Ok(ds) = g.dataset(&name) else { continue };
            if !ds.is_scalar() {
                continue;
            }
            let Some(v) = scalar_text(&ds) else { continue };
            let key = if values.contains_key(&name) {
                format!("{prefix}{name}")
            } else {
                name
            };
            if let Ok(u) = ds.attr("units").and_then(|a| {
                a.read_scalar::<VarLenUnicode>()
                    .map(|s| s.to_string())
                    .or_else(|_| fixed_string_attr(&a))
            }) {
                units.insert(key.clone(), u);
            }
            values.insert(key, v);
        }
    }
    (values, units)
}

/// A scalar data set's value as text, for numbers and strings; None for other types.
fn scalar_text(ds: &hdf5::Dataset) -> Option<String> {
    let desc = ds.dtype().ok()?.to_descriptor().ok()?;
    match desc {
        TypeDescriptor::Unsigned(_) => ds.read_scalar::<u64>().ok().map(|v| v.to_string()),
        TypeDescriptor::Integer(_) => ds.read_scalar::<i64>().ok().map(|v| v.to_string()),
        TypeDescriptor::Float(_) => ds.read_scalar::<f64>().ok().map(|v| v.to_string()),
        TypeDescriptor::Boolean => ds.read_scalar::<bool>().ok().map(|v| v.to_string()),
        TypeDescriptor::VarLenUnicode => ds
            .read_scalar::<VarLenUnicode>()
            .ok()
            .map(|s| s.to_string()),
        TypeDescriptor::VarLenAscii => ds.read_scalar::<VarLenAscii>().ok().map(|s| s.to_string()),
        TypeDescriptor::FixedAscii(n) | TypeDescriptor::FixedUnicode(n) => {
            fixed_string(ds.id(), n, false)
        }
        _ => None,
    }
}

/// Reads a fixed-length string data set or attribute (`id`, `n` bytes) in its own type,
/// trimmed at the first NUL and of trailing spaces.
fn fixed_string(id: hdf5_sys::h5i::hid_t, n: usize, attr: bool) -> Option<String> {
    let mut buf = vec![0u8; n.max(1)];
    // SAFETY: `id` is an open scalar object whose type is `n` bytes wide; we read it in its
    // own (file) type into `buf` of at least `n` bytes, and close the type we opened.
    let r = hdf5::sync::sync(|| unsafe {
        let t = if attr {
            hdf5_sys::h5a::H5Aget_type(id)
        } else {
            hdf5_sys::h5d::H5Dget_type(id)
        };
        if t < 0 {
            return -1;
        }
        let size = hdf5_sys::h5t::H5Tget_size(t);
        let r = if size > buf.len() {
            -1
        } else if attr {
            hdf5_sys::h5a::H5Aread(id, t, buf.as_mut_ptr().cast())
        } else {
            hdf5_sys::h5d::H5Dread(
                id,
                t,
                hdf5_sys::h5s::H5S_ALL,
                hdf5_sys::h5s::H5S_ALL,
                hdf5_sys::h5p::H5P_DEFAULT,
                buf.as_mut_ptr().cast(),
            )
        };
        hdf5_sys::h5t::H5Tclose(t);
        r
    });
    if r < 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).trim_end().to_string())
}

/// A fixed-length string attribute (DECTRIS writes `units` that way).
fn fixed_string_attr(a: &hdf5::Attribute) -> hdf5::Result<String> {
    let n = a.dtype()?.size();
    fixed_string(a.id(), n, true).ok_or_else(|| hdf5::Error::from("not a string attribute"))
}

/// The scan shape from `<stem>.h5`'s `STEM Metadata` group (`NumPixelsY`, `NumPixelsX`),
/// beside `<stem>_master.h5`.
fn scan_shape(master: &Path) -> Option<NavShape> {
    let name = master.file_name()?.to_str()?;
    let stem = name.strip_suffix("_master.h5")?;
    let side = master.with_file_name(format!("{stem}.h5"));
    if !side.is_file() {
        return None;
    }
    let f = hdf5::File::open(side).ok()?;
    let g = f.group("STEM Metadata").ok()?;
    let read = |n: &str| -> Option<usize> {
        let a = g.attr(n).ok()?;
        let v = a.read_raw::<i64>().ok()?;
        usize::try_from(*v.first()?).ok()
    };
    let rows = read("NumPixelsY")?;
    let cols = read("NumPixelsX")?;
    (rows > 0 && cols > 0).then(|| NavShape::new(rows, cols))
}
