//! [`RecordingReader`]: reads our own recordings back — frames as [`Tile`]s for offline
//! processing and tests, the validity map, the results and the metadata.

use crate::error::RecordingError;
use crate::hdf5::{check_range, h5};
use crate::layout::{self, Block};
use hdf5::types::{FloatSize, IntSize, TypeDescriptor, VarLenUnicode};
use hdf5::{Dataset, File, H5Type};
use ndarray::Ix4;
use std::path::{Path, PathBuf};
use stemflow_core::frame::{Tile, TileData};
use stemflow_core::metadata::RunMetadata;
use stemflow_core::result::{BufferKind, ResultBuffer, ResultDType, UdfResults};
use stemflow_core::validity::{FrameStatus, FrameValidity};
use stemflow_core::{DType, NavShape, SigShape};

/// An open stemflow recording (read-only).
pub struct RecordingReader {
    path: PathBuf,
    file: File,
    /// `None` for a recording made with raw recording off.
    frames: Option<Dataset>,
    nav_shape: NavShape,
    sig_shape: SigShape,
    dtype: DType,
}

/// Opens a recording written by [`Hdf5Recorder`](crate::Hdf5Recorder), finished or not
/// (a file from a killed or aborted run opens too; see [`RecordingReader::is_complete`]).
///
/// # Errors
/// [`RecordingError::Hdf5`] when the file cannot be opened; [`RecordingError::Layout`] when
/// `/entry/data/frames` is missing, not 4-D or not of an unsigned 8/16/32/64-bit or a
/// 32/64-bit float type.
pub fn open_recording(path: impl AsRef<Path>) -> Result<RecordingReader, RecordingError> {
    let path = path.as_ref().to_path_buf();
    // Recordings compressed with bitshuffle-LZ4 decode through our own filter.
    crate::bslz4::register()?;
    // Read-only and without an HDF5 file lock, like the writer (crate::hdf5 docs).
    let file = File::with_options()
        .with_fapl(|p| p.file_locking(false))
        .open(&path)
        .map_err(h5(&path, "/", "opening the file"))?;
    if !file.link_exists(layout::FRAMES) {
        return open_without_frames(path, file);
    }
    let frames = file
        .dataset(layout::FRAMES)
        .map_err(|e| RecordingError::Layout {
            path: path.clone(),
            object: layout::FRAMES.into(),
            detail: format!("cannot open the frames dataset: {e}"),
        })?;
    let shape = frames.shape();
    let [nr, nc, sr, sc] = shape[..] else {
        return Err(RecordingError::Layout {
            path,
            object: layout::FRAMES.into(),
            detail: format!(
                "expected 4 dimensions (nav_rows, nav_cols, sig_rows, sig_cols), found shape {shape:?}"
            ),
        });
    };
    let descr = frames.dtype().and_then(|t| t.to_descriptor()).map_err(h5(
        &path,
        layout::FRAMES,
        "reading the datatype",
    ))?;
    let dtype = match descr {
        TypeDescriptor::Unsigned(IntSize::U1) => DType::U8,
        TypeDescriptor::Unsigned(IntSize::U2) => DType::U16,
        TypeDescriptor::Unsigned(IntSize::U4) => DType::U32,
        TypeDescriptor::Unsigned(IntSize::U8) => DType::U64,
        TypeDescriptor::Float(FloatSize::U4) => DType::F32,
        TypeDescriptor::Float(FloatSize::U8) => DType::F64,
        other => {
            return Err(RecordingError::Layout {
                path,
                object: layout::FRAMES.into(),
                detail: format!(
                    "pixel type {other:?}; supported: uint8, uint16, uint32, uint64, float32, float64"
                ),
            });
        }
    };
    Ok(RecordingReader {
        path,
        file,
        frames: Some(frames),
        nav_shape: NavShape::new(nr, nc),
        sig_shape: SigShape::new(sr, sc),
        dtype,
    })
}

/// A recording made with raw recording off (layout 2: no frames dataset): the scan from
/// the validity map, the frame shape and pixel type from `/entry/data`.
fn open_without_frames(path: PathBuf, file: File) -> Result<RecordingReader, RecordingError> {
    let layout_err = |object: &str, detail: String| RecordingError::Layout {
        path: path.clone(),
        object: object.into(),
        detail,
    };
    let validity = file.dataset(layout::VALIDITY).map_err(|e| {
        layout_err(
            layout::FRAMES,
            format!("no frames dataset and no validity map either: {e}"),
        )
    })?;
    let [nr, nc] = validity.shape()[..] else {
        return Err(layout_err(
            layout::VALIDITY,
            format!("expected 2 dimensions, found {:?}", validity.shape()),
        ));
    };
    let sig_path = format!("{}/sig_shape", layout::DATA);
    let sig = file
        .dataset(&sig_path)
        .and_then(|d| d.read_raw::<u64>())
        .map_err(|e| layout_err(&sig_path, format!("cannot read the frame shape: {e}")))?;
    let [sr, sc] = sig[..] else {
        return Err(layout_err(
            &sig_path,
            format!("expected 2 values, found {sig:?}"),
        ));
    };
    let dtype_attr = format!("{}@frames_dtype", layout::DATA);
    let name = file
        .group(layout::DATA)
        .and_then(|g| g.attr("frames_dtype"))
        .and_then(|a| a.read_scalar::<VarLenUnicode>())
        .map_err(|e| layout_err(&dtype_attr, format!("cannot read the pixel type: {e}")))?;
    let dtype = DType::from_name(name.as_str())
        .ok_or_else(|| layout_err(&dtype_attr, format!("unknown pixel type {name}")))?;
    Ok(RecordingReader {
        path: path.clone(),
        file,
        frames: None,
        nav_shape: NavShape::new(nr, nc),
        sig_shape: SigShape::new(sr as usize, sc as usize),
        dtype,
    })
}

impl RecordingReader {
    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Scan grid (the frames dataset's first two dimensions).
    pub fn nav_shape(&self) -> NavShape {
        self.nav_shape
    }
    /// Frame shape (its last two dimensions).
    pub fn sig_shape(&self) -> SigShape {
        self.sig_shape
    }
    /// Pixel type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Whether the file holds the frames (false when raw recording was off).
    pub fn has_frames(&self) -> bool {
        self.frames.is_some()
    }
    /// Frames in the recording (`nav_shape.len()`).
    pub fn frames(&self) -> u64 {
        self.nav_shape.len() as u64
    }

    /// True once `finish` completed (`/entry@recording_complete == 1`); false for a file
    /// from a killed or aborted run, whose validity map then shows the frames written up to
    /// the last flush.
    pub fn is_complete(&self) -> bool {
        self.file
            .group(layout::ENTRY)
            .and_then(|g| g.attr(layout::COMPLETE_ATTR))
            .and_then(|a| a.read_scalar::<u8>())
            .is_ok_and(|v| v == 1)
    }

    /// Frames `first..first + n` (flattened scan order) as one tile.
    ///
    /// # Errors
    /// [`RecordingError::FrameRange`] outside the recording; [`RecordingError::Hdf5`].
    pub fn read_tile(&self, first: u64, n: usize) -> Result<Tile, RecordingError> {
        let mut tile = Tile::zeros(first, 0, self.sig_shape, self.dtype);
        self.read_tile_into(&mut tile, first, n)?;
        Ok(tile)
    }

    /// Like [`read_tile`](Self::read_tile), into `tile`, reusing its allocation.
    ///
    /// # Errors
    /// As [`read_tile`](Self::read_tile).
    pub fn read_tile_into(
        &self,
        tile: &mut Tile,
        first: u64,
        n: usize,
    ) -> Result<(), RecordingError> {
        check_range(&self.path, first, n, self.nav_shape)?;
        let Some(frames) = &self.frames else {
            return Err(RecordingError::Layout {
                path: self.path.clone(),
                object: layout::FRAMES.into(),
                detail: "this recording holds no frames (raw recording was off)".into(),
            });
        };
        let sig = self.sig_shape;
        if tile.data.dtype() != self.dtype {
            tile.data = TileData::zeros(self.dtype, 0);
        }
        tile.data.resize(n * sig.len());
        tile.first_frame = first;
        tile.n_frames = n;
        tile.sig_shape = sig;
        for b in layout::blocks(first, n, self.nav_shape) {
            let r = match &mut tile.data {
                TileData::U8(d) => read_block(frames, d, b, sig),
                TileData::U16(d) => read_block(frames, d, b, sig),
                TileData::U32(d) => read_block(frames, d, b, sig),
                TileData::U64(d) => read_block(frames, d, b, sig),
                TileData::F32(d) => read_block(frames, d, b, sig),
                TileData::F64(d) => read_block(frames, d, b, sig),
            };
            let start = first + b.offset as u64;
            let during = format!("reading frames {start}..{}", start + b.frames() as u64);
            r.map_err(h5(&self.path, layout::FRAMES, &during))?;
        }
        Ok(())
    }

    /// The per-frame validity map (the acquisition's at the end of a finished run; the
    /// frames written so far in an unfinished file).
    ///
    /// # Errors
    /// [`RecordingError::Hdf5`]; [`RecordingError::Layout`] for a wrong shape or a code
    /// other than 0, 1, 2, 3.
    pub fn validity(&self) -> Result<FrameValidity, RecordingError> {
        let p = &self.path;
        let ds = self.file.dataset(layout::VALIDITY).map_err(h5(
            p,
            layout::VALIDITY,
            "opening the dataset",
        ))?;
        let codes: Vec<u8> = ds.read_raw().map_err(h5(p, layout::VALIDITY, "reading"))?;
        if codes.len() != self.nav_shape.len() {
            return Err(RecordingError::Layout {
                path: p.clone(),
                object: layout::VALIDITY.into(),
                detail: format!("{} codes for a {} scan", codes.len(), self.nav_shape),
            });
        }
        let mut v = FrameValidity::new(codes.len());
        for (i, &c) in codes.iter().enumerate() {
            let status = match c {
                0 => continue,
                1 => FrameStatus::Received,
                2 => FrameStatus::Damaged,
                3 => FrameStatus::NotAcquired,
                other => {
                    return Err(RecordingError::Layout {
                        path: p.clone(),
                        object: layout::VALIDITY.into(),
                        detail: format!(
                            "frame {i} has code {other}; known: {}",
                            layout::VALIDITY_CODES
                        ),
                    });
                }
            };
            v.mark(i as u64, status);
        }
        Ok(v)
    }

    /// The `/entry/run_metadata_json` text (absent before `finish`).
    ///
    /// # Errors
    /// [`RecordingError::Hdf5`] naming the dataset when it is missing.
    pub fn metadata_json(&self) -> Result<String, RecordingError> {
        self.read_string(layout::METADATA_JSON)
    }

    /// The metadata, parsed.
    ///
    /// # Errors
    /// As [`metadata_json`](Self::metadata_json); [`RecordingError::Json`].
    pub fn metadata(&self) -> Result<RunMetadata, RecordingError> {
        let text = self.metadata_json()?;
        serde_json::from_str(&text).map_err(|source| RecordingError::Json {
            path: self.path.clone(),
            object: layout::METADATA_JSON.into(),
            source,
        })
    }

    /// The run record's JSON text, when `finish` was given one.
    ///
    /// # Errors
    /// [`RecordingError::Hdf5`] when it exists but cannot be read.
    pub fn run_record_json(&self) -> Result<Option<String>, RecordingError> {
        if !self.file.link_exists(layout::RUN_RECORD_JSON) {
            return Ok(None);
        }
        self.read_string(layout::RUN_RECORD_JSON).map(Some)
    }

    /// A scalar string dataset (e.g. `/entry/start_time`).
    ///
    /// # Errors
    /// [`RecordingError::Hdf5`] naming the dataset.
    pub fn read_string(&self, dataset: &str) -> Result<String, RecordingError> {
        let p = &self.path;
        let ds = self
            .file
            .dataset(dataset)
            .map_err(h5(p, dataset, "opening the dataset"))?;
        let s: VarLenUnicode = ds
            .read_scalar()
            .map_err(h5(p, dataset, "reading the string"))?;
        Ok(s.as_str().to_string())
    }

    /// Every UDF result stored under `/entry/results`, UDFs and buffers sorted by name
    /// (HDF5's link order), buffer names as stored (`/` replaced by `_`).
    ///
    /// # Errors
    /// [`RecordingError::Hdf5`]; [`RecordingError::Layout`] for an unknown `kind`.
    pub fn results(&self) -> Result<Vec<UdfResults>, RecordingError> {
        let p = &self.path;
        if !self.file.link_exists(layout::RESULTS) {
            return Ok(Vec::new());
        }
        let root = self.file.group(layout::RESULTS).map_err(h5(
            p,
            layout::RESULTS,
            "opening the group",
        ))?;
        let names = root
            .member_names()
            .map_err(h5(p, layout::RESULTS, "listing"))?;
        let mut out = Vec::with_capacity(names.len());
        for udf in names {
            let gpath = format!("{}/{udf}", layout::RESULTS);
            let g = root
                .group(&udf)
                .map_err(h5(p, &gpath, "opening the group"))?;
            let mut buffers = Vec::new();
            for name in g.member_names().map_err(h5(p, &gpath, "listing"))? {
                let obj = format!("{gpath}/{name}");
                let ds = g
                    .dataset(&name)
                    .map_err(h5(p, &obj, "opening the dataset"))?;
                let mut data: Vec<f64> = ds.read_raw().map_err(h5(p, &obj, "reading"))?;
                let dtype = result_dtype(&ds);
                // Integer buffers mark positions without a value by the type's fill value
                // (see the recorder): back to NaN, as in the merged results.
                if let Some(fill) = dtype.int_fill() {
                    let fill = fill as f64;
                    data.iter_mut()
                        .filter(|v| **v == fill)
                        .for_each(|v| *v = f64::NAN);
                }
                let attr = |a: &str| -> Result<String, RecordingError> {
                    let v: VarLenUnicode = ds.attr(a).and_then(|a| a.read_scalar()).map_err(h5(
                        p,
                        &format!("{obj}@{a}"),
                        "reading the attribute",
                    ))?;
                    Ok(v.as_str().to_string())
                };
                let kind = match attr("kind")?.as_str() {
                    "nav" => BufferKind::Nav,
                    "sig" => BufferKind::Sig,
                    "single" => BufferKind::Single,
                    other => {
                        return Err(RecordingError::Layout {
                            path: p.clone(),
                            object: format!("{obj}@kind"),
                            detail: format!("kind `{other}`; known: nav, sig, single"),
                        });
                    }
                };
                buffers.push(ResultBuffer {
                    name,
                    kind,
                    shape: ds.shape(),
                    data,
                    unit: attr("unit")?,
                    dtype,
                });
            }
            // Written by recordings since the params attribute exists; older ones have none.
            let params = g
                .attr("params")
                .and_then(|a| a.read_scalar::<VarLenUnicode>())
                .map(|v| v.as_str().to_string())
                .unwrap_or_default();
            out.push(UdfResults {
                udf,
                buffers,
                params,
            });
        }
        Ok(out)
    }
}

/// The result type a dataset was stored in (`f64` for any type stemflow does not write).
fn result_dtype(ds: &Dataset) -> ResultDType {
    use hdf5::types::{FloatSize, IntSize, TypeDescriptor as T};
    match ds.dtype().and_then(|t| t.to_descriptor()) {
        Ok(T::Float(FloatSize::U4)) => ResultDType::F32,
        Ok(T::Integer(IntSize::U8)) => ResultDType::I64,
        Ok(T::Integer(IntSize::U4)) => ResultDType::I32,
        Ok(T::Unsigned(IntSize::U8)) => ResultDType::U64,
        Ok(T::Unsigned(IntSize::U4)) => ResultDType::U32,
        Ok(T::Unsigned(IntSize::U2)) => ResultDType::U16,
        Ok(T::Unsigned(IntSize::U1)) => ResultDType::U8,
        _ => ResultDType::F64,
    }
}

fn read_block<T: H5Type + Copy>(
    frames: &Dataset,
    out: &mut [T],
    b: Block,
    sig: SigShape,
) -> hdf5::Result<()> {
    let frame_len = sig.len();
    let arr =
        frames.read_slice::<T, _, Ix4>((b.row..b.row + b.rows, b.col..b.col + b.cols, .., ..))?;
    let dst = &mut out[b.offset * frame_len..(b.offset + b.frames()) * frame_len];
    match arr.as_slice() {
        Some(src) => dst.copy_from_slice(src),
        None => dst.iter_mut().zip(arr.iter()).for_each(|(d, s)| *d = *s),
    }
    Ok(())
}
