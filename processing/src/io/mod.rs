//! Offline data sets: frames read from files, fed to the same UDFs as a live stream.
//!
//! | format | opener | notes |
//! |---|---|---|
//! | NumPy `.npy` | [`NpyDataSet::open`] | 3-D `(frames, sig_rows, sig_cols)` or 4-D `(nav_rows, nav_cols, sig_rows, sig_cols)`, C order, either byte order; `u1` `u2` `u4` `u8` `b1` `f4` `f8` `i1` `i2` `i4` `i8` |
//! | raw binary | [`RawDataSet::open`], [`RawDataSet::open_as`] | shape, pixel type, byte order, offset of the first frame and bytes before each frame given ([`RawSpec`], [`ElementType`]); reads Merlin `.mib` files too (`frame_header_bytes` = the MQ1 header size) |
//! | HDF5 | [`Hdf5DataSet::open`] | any 3-D or 4-D dataset path (default: our recordings' `/entry/data/frames`, then NeXus `/entry/data/data`) of uint8…uint64, float32, float64, int8…int64 |
//!
//! Pixel types ([`ElementType`]): unsigned integers and float32/float64 are read as they
//! are (frames of the same [`DType`]). Frames have no signed type, so signed integers are
//! converted, exactly, as they are read: int8 and int16 → float32, int32 → float64, int64
//! → float64 while every value lies within ±2^53 ([`F64_EXACT_INT`]; a value beyond is
//! [`IoError::Inexact`], naming the file, frame, pixel and value). Anything else (complex,
//! float16, strings, compounds, HDF5 booleans and enums) is refused when the file is
//! opened, with an [`IoError::Format`] naming the file, the type found and the types
//! supported.
//!
//! Merlin `.hdr`/`.mib` sets and DECTRIS master files are read by the detector drivers
//! (`stemflow_drivers::merlin::MibDataSet`, `stemflow_drivers::dectris::DectrisDataSet`),
//! which implement the same [`DataSet`] trait: it lives in `stemflow_core::dataset`, with
//! [`IoError`], [`ElementType`] and [`ByteOrder`], and is re-exported here.
//!
//! Files are read in large sequential blocks — one `pread` per partition of
//! [`crate::engine::partition_frames`] frames (~4 MiB) — straight into tiles that are
//! allocated once per run and reused ([`run_dataset`], which lives with the engine and is
//! re-exported here); byte order is fixed in place. Signed files are read into a scratch
//! block reused by the data set and converted from there into the tile, one block at a
//! time.
//!
//! This module knows file formats only: its code does not call the engine (the engine
//! reads a [`DataSet`] through the trait from `stemflow_core`; `run_dataset` is only
//! re-exported here, so that callers find it beside the readers), and the mask geometry
//! of [`crate::mask`] does not know it (loading a [`CustomMask`](crate::mask::CustomMask)
//! from `.npy` is here).

mod convert;
mod mask_file;
pub mod npy;

pub use crate::engine::run_dataset;
pub use stemflow_core::dataset::{DataSet, IoError, shape_tile};
pub use stemflow_core::element::{ByteOrder, ELEMENT_TYPES, ElementType, F64_EXACT_INT};

use std::path::{Path, PathBuf};
use stemflow_core::frame::{Tile, TileData};
use stemflow_core::{DType, NavShape, SigShape};

/// Parses the pixel type of frames: `u8`, `u16`, `u32`, `u64`, `f32`, `f64` and the other
/// spellings of [`ElementType::parse_with_order`] (`uint16`, `<u2`, `float32`, `f4`, …;
/// a byte-order mark is dropped).
///
/// # Errors
/// A sentence naming the text and the accepted spellings; a signed type (`int16`, …) is
/// refused, as frames have no signed type — files of signed pixels are read with
/// [`ElementType::parse`] and [`RawDataSet::open_as`], converted to floats.
pub fn parse_dtype(s: &str) -> Result<DType, String> {
    let e = ElementType::parse(s)?;
    if e.is_converted() {
        return Err(format!(
            "pixel type `{s}` is signed ({e}), and frames have no signed type (they are u8, u16, u32, u64, f32 or f64); files of {e} are read with ElementType, converted to {}",
            e.memory_dtype()
        ));
    }
    Ok(e.memory_dtype())
}

/// The pixel bytes of `data`, to read a file straight into.
fn bytes_mut(data: &mut TileData) -> &mut [u8] {
    match data {
        TileData::U8(v) => v,
        // SAFETY: u16/u32/u64 have no invalid bit patterns and an alignment ≥ u8's; the
        // byte slice covers exactly the vector's initialised elements and borrows it
        // mutably for its lifetime.
        TileData::U16(v) => unsafe {
            std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), v.len() * 2)
        },
        TileData::U32(v) => unsafe {
            std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), v.len() * 4)
        },
        TileData::U64(v) => unsafe {
            std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), v.len() * 8)
        },
        // SAFETY: as above; every bit pattern is a valid f32/f64.
        TileData::F32(v) => unsafe {
            std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), v.len() * 4)
        },
        TileData::F64(v) => unsafe {
            std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), v.len() * 8)
        },
    }
}

/// Turns pixels read in `order` into native order, in place.
fn fix_order(data: &mut TileData, order: ByteOrder) {
    if order == ByteOrder::native() {
        return;
    }
    match data {
        TileData::U8(_) => {}
        TileData::U16(v) => v.iter_mut().for_each(|x| *x = x.swap_bytes()),
        TileData::U32(v) => v.iter_mut().for_each(|x| *x = x.swap_bytes()),
        TileData::U64(v) => v.iter_mut().for_each(|x| *x = x.swap_bytes()),
        TileData::F32(v) => v
            .iter_mut()
            .for_each(|x| *x = f32::from_bits(x.to_bits().swap_bytes())),
        TileData::F64(v) => v
            .iter_mut()
            .for_each(|x| *x = f64::from_bits(x.to_bits().swap_bytes())),
    }
}

/// How frames lie in a raw binary file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawSpec {
    /// Scan grid; the file holds `nav_shape.len()` frames (or fewer: see
    /// [`RawDataSet::open`]).
    pub nav_shape: NavShape,
    /// Frame shape, pixels.
    pub sig_shape: SigShape,
    /// Pixel type of the frames, stored as such in the file (unsigned integers, float32,
    /// float64). Files of signed pixels: [`RawDataSet::open_as`].
    pub dtype: DType,
    /// Byte order of the pixels.
    pub byte_order: ByteOrder,
    /// Bytes before the first frame (a file header), bytes.
    pub offset: u64,
    /// Bytes before each frame's pixels (e.g. a Merlin MQ1 frame header), bytes.
    pub frame_header_bytes: u64,
}

impl RawSpec {
    /// Bytes from one frame's start to the next in a file holding pixels of `dtype`
    /// (for another [`ElementType`]: [`RawSpec::stride_of`]).
    pub fn stride(&self) -> u64 {
        self.stride_of(self.dtype.into())
    }

    /// Bytes from one frame's start to the next in a file holding pixels of `element`.
    pub fn stride_of(&self, element: ElementType) -> u64 {
        self.frame_header_bytes + (self.sig_shape.len() * element.size()) as u64
    }
}

/// The byte just past the last frame of `spec` with pixels of `element`, computed without
/// overflow.
///
/// # Errors
/// [`IoError::Format`] when a frame's size, the scan's frame count or the end does not fit
/// in 64 bits.
fn layout_end(path: &Path, spec: &RawSpec, element: ElementType) -> Result<u64, IoError> {
    let frames = (spec.nav_shape.rows as u128) * (spec.nav_shape.cols as u128);
    let pixels = (spec.sig_shape.rows as u128) * (spec.sig_shape.cols as u128);
    let stride = spec.frame_header_bytes as u128 + pixels * element.size() as u128;
    let end = spec.offset as u128 + frames * stride;
    if frames > usize::MAX as u128 || pixels > usize::MAX as u128 || end > u64::MAX as u128 {
        return Err(IoError::Format {
            path: path.to_path_buf(),
            detail: format!(
                "the layout does not fit in a file: {} bytes of offset + {frames} frames × \
                 ({} header bytes + {pixels} pixels × {} bytes) = {end} bytes, more than 2^64",
                spec.offset,
                spec.frame_header_bytes,
                element.size()
            ),
        });
    }
    Ok(end as u64)
}

/// Frames at fixed positions in a file: raw binary, `.npy`, and headered frame files such
/// as Merlin `.mib` (a per-frame header of fixed size).
///
/// Pixel types: any [`ElementType`]. Unsigned integers and floats are read straight into
/// the tile (byte order fixed in place); signed integers are read into a scratch block
/// and converted into float frames (int8/int16 → float32, int32/int64 → float64; int64
/// values beyond ±2^53 are [`IoError::Inexact`]).
pub struct RawDataSet {
    path: PathBuf,
    file: std::fs::File,
    /// `spec.dtype` is the frames' type, `element.memory_dtype()`.
    spec: RawSpec,
    element: ElementType,
    frames: u64,
    size: u64,
    /// Reused read buffer for files with per-frame headers or converted pixels.
    scratch: Vec<u8>,
}

impl RawDataSet {
    /// Opens `path` laid out as `spec`, whose pixels are `spec.dtype` as stored (no
    /// conversion). The frame count is `nav_shape.len()`; a file too short for it is
    /// reported when the missing frames are read.
    ///
    /// # Errors
    /// [`IoError::Io`] when the file cannot be opened.
    pub fn open(path: &Path, spec: RawSpec) -> Result<Self, IoError> {
        Self::open_as(path, spec, spec.dtype.into())
    }

    /// Opens `path` laid out as `spec` with pixels of `element` in the file (e.g. int16
    /// read as float32 frames). `spec.dtype` is ignored and replaced by
    /// `element.memory_dtype()`, the frames' type; offsets and frame strides count
    /// `element.size()` bytes per pixel.
    ///
    /// # Errors
    /// [`IoError::Io`] when the file cannot be opened; [`IoError::Format`] for a layout
    /// whose byte positions do not fit in 64 bits (a forged header, a mistyped
    /// `--frame-header-bytes`), naming the offset, frames and frame size.
    pub fn open_as(path: &Path, spec: RawSpec, element: ElementType) -> Result<Self, IoError> {
        layout_end(path, &spec, element)?;
        let file = std::fs::File::open(path).map_err(|e| IoError::io(path, "opening", e))?;
        let size = file
            .metadata()
            .map_err(|e| IoError::io(path, "reading the file size", e))?
            .len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            spec: RawSpec {
                dtype: element.memory_dtype(),
                ..spec
            },
            element,
            frames: spec.nav_shape.len() as u64,
            size,
            scratch: Vec::new(),
        })
    }

    /// Bytes the layout needs: offset + frames × (frame header + pixels).
    pub fn layout_bytes(&self) -> u64 {
        self.spec.offset + self.frames * self.spec.stride_of(self.element)
    }

    /// The layout; its `dtype` is the frames' type (see [`RawDataSet::element`]).
    pub fn spec(&self) -> &RawSpec {
        &self.spec
    }

    /// The pixel type stored in the file.
    pub fn element(&self) -> ElementType {
        self.element
    }
}

impl DataSet for RawDataSet {
    fn path(&self) -> &Path {
        &self.path
    }
    fn nav_shape(&self) -> NavShape {
        self.spec.nav_shape
    }
    fn sig_shape(&self) -> SigShape {
        self.spec.sig_shape
    }
    fn dtype(&self) -> DType {
        self.spec.dtype
    }
    fn element(&self) -> ElementType {
        self.element
    }
    fn frames(&self) -> u64 {
        self.frames
    }
    fn read_tile(&mut self, first: u64, n: usize, out: &mut Tile) -> Result<(), IoError> {
        use std::os::unix::fs::FileExt;
        let end = first + n as u64;
        if end > self.frames {
            return Err(IoError::Range {
                path: self.path.clone(),
                first,
                end,
                frames: self.frames,
            });
        }
        let s = self.spec;
        let stride = s.stride_of(self.element);
        let start = s.offset + first * stride;
        let needed = s.offset + end * stride;
        if needed > self.size {
            return Err(IoError::Truncated {
                path: self.path.clone(),
                first,
                end,
                needed,
                size: self.size,
            });
        }
        shape_tile(out, first, n, s.sig_shape, s.dtype);
        if s.sig_shape.is_empty() {
            // Frames of no pixels: nothing to read (and no chunks to cut).
            return Ok(());
        }
        let during = || format!("reading frames {first}..{end}");
        if self.element.is_converted() {
            self.scratch.resize((needed - start) as usize, 0);
            self.file
                .read_exact_at(&mut self.scratch, start)
                .map_err(|e| IoError::io(&self.path, &during(), e))?;
            let (hdr, len) = (s.frame_header_bytes as usize, s.sig_shape.len());
            for (k, src) in self.scratch.chunks_exact(stride as usize).enumerate() {
                let dst = out.data.pixels_mut(k * len..(k + 1) * len);
                convert::convert_signed(self.element, s.byte_order, &src[hdr..], dst).map_err(
                    |e| IoError::Inexact {
                        path: self.path.clone(),
                        frame: first + k as u64,
                        pixel: e.index,
                        value: e.value,
                    },
                )?;
            }
            return Ok(());
        }
        if s.frame_header_bytes == 0 {
            self.file
                .read_exact_at(bytes_mut(&mut out.data), start)
                .map_err(|e| IoError::io(&self.path, &during(), e))?;
        } else {
            self.scratch.resize((needed - start) as usize, 0);
            self.file
                .read_exact_at(&mut self.scratch, start)
                .map_err(|e| IoError::io(&self.path, &during(), e))?;
            let frame_bytes = s.sig_shape.len() * s.dtype.size();
            let hdr = s.frame_header_bytes as usize;
            let dst = bytes_mut(&mut out.data);
            for (d, src) in dst
                .chunks_exact_mut(frame_bytes)
                .zip(self.scratch.chunks_exact(stride as usize))
            {
                d.copy_from_slice(&src[hdr..]);
            }
        }
        fix_order(&mut out.data, s.byte_order);
        Ok(())
    }
}

/// A `.npy` file of frames: shape `(frames, sig_rows, sig_cols)` or
/// `(nav_rows, nav_cols, sig_rows, sig_cols)`, C order, either byte order, of
///
/// | `descr` | frames |
/// |---|---|
/// | `u1` `u2` `u4` `u8` | uint8 … uint64 |
/// | `b1` | uint8 (0 or 1) |
/// | `f4`, `f8` | float32, float64 |
/// | `i1`, `i2` | float32, converted exactly |
/// | `i4` | float64, converted exactly |
/// | `i8` | float64; a value beyond ±2^53 is [`IoError::Inexact`] when its frame is read |
///
/// Frames are read in blocks (`pread`), straight into the tile, or through a scratch
/// block for the converted signed types.
pub struct NpyDataSet {
    raw: RawDataSet,
}

impl NpyDataSet {
    /// Opens `path`.
    ///
    /// # Errors
    /// [`IoError::Format`] for a header that is not a 3-D or 4-D C-order array of one of
    /// the types above (the message names the `descr` found and the types supported);
    /// [`IoError::Io`].
    pub fn open(path: &Path) -> Result<Self, IoError> {
        let h = npy::read_header(path)?;
        let bad = |detail: String| IoError::Format {
            path: path.to_path_buf(),
            detail,
        };
        if h.fortran_order {
            return Err(bad("Fortran-order arrays cannot be read as frames".into()));
        }
        let element = match h.kind {
            npy::NpyKind::Unsigned(1) | npy::NpyKind::Bool => ElementType::U8,
            npy::NpyKind::Unsigned(2) => ElementType::U16,
            npy::NpyKind::Unsigned(4) => ElementType::U32,
            npy::NpyKind::Unsigned(8) => ElementType::U64,
            npy::NpyKind::Signed(1) => ElementType::I8,
            npy::NpyKind::Signed(2) => ElementType::I16,
            npy::NpyKind::Signed(4) => ElementType::I32,
            npy::NpyKind::Signed(8) => ElementType::I64,
            npy::NpyKind::Float(4) => ElementType::F32,
            npy::NpyKind::Float(8) => ElementType::F64,
            k => {
                return Err(bad(format!(
                    "element type {k:?} cannot be read as frames; supported: u1, u2, u4, u8, b1, f4, f8, i1, i2, i4, i8"
                )));
            }
        };
        let (nav, sig) = match h.shape[..] {
            [f, r, c] => (NavShape::new(1, f), SigShape::new(r, c)),
            [nr, nc, r, c] => (NavShape::new(nr, nc), SigShape::new(r, c)),
            _ => {
                return Err(bad(format!(
                    "expected a 3-D (frames, rows, cols) or 4-D (nav_rows, nav_cols, rows, cols) array, found shape {:?}",
                    h.shape
                )));
            }
        };
        let spec = RawSpec {
            nav_shape: nav,
            sig_shape: sig,
            dtype: element.memory_dtype(),
            byte_order: h.byte_order,
            offset: h.data_offset,
            frame_header_bytes: 0,
        };
        let raw = RawDataSet::open_as(path, spec, element)?;
        // A .npy holds its whole array: a header declaring more than the file holds is
        // corrupt (or forged), said now rather than after a recording of that size exists.
        let needed = raw.layout_bytes();
        if needed > raw.size {
            return Err(bad(format!(
                "the header declares shape {:?} of {}-byte elements: {} bytes of data after its \
                 {}-byte header, the file holds {}",
                h.shape,
                element.size(),
                needed - h.data_offset,
                h.data_offset,
                raw.size.saturating_sub(h.data_offset)
            )));
        }
        Ok(Self { raw })
    }
}

impl DataSet for NpyDataSet {
    fn path(&self) -> &Path {
        self.raw.path()
    }
    fn nav_shape(&self) -> NavShape {
        self.raw.nav_shape()
    }
    fn sig_shape(&self) -> SigShape {
        self.raw.sig_shape()
    }
    fn dtype(&self) -> DType {
        self.raw.dtype()
    }
    fn element(&self) -> ElementType {
        self.raw.element()
    }
    fn frames(&self) -> u64 {
        self.raw.frames()
    }
    fn read_tile(&mut self, first: u64, n: usize, out: &mut Tile) -> Result<(), IoError> {
        self.raw.read_tile(first, n, out)
    }
}

mod csr_h5;
mod h5;
mod memory;
pub use csr_h5::CsrHdf5DataSet;
pub use h5::{DEFAULT_DATASETS, Hdf5DataSet};
pub use memory::MemoryDataSet;
