//! [`RecordUdf`]: writes every processed frame to a `.npy` file at its scan position.

use crate::io::npy::header_bytes;
use crate::result::ResultBuffer;
use crate::udf::{BufferDecl, Granularity, PartitionTask, ResultDType, TileView, Udf, UdfMeta};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use stemflow_core::DType;
use stemflow_core::frame::PixelsRef;

/// The parameters of [`RecordUdf`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordParams {
    /// The `.npy` file to write, created (or truncated) when the run starts; serialised as
    /// a string (a path that is not UTF-8 is shown lossily by [`Udf::params`]).
    pub path: PathBuf,
}

/// Records frames to a NumPy `.npy` file (format version 1.0) of shape `(nav_rows,
/// nav_cols, sig_rows, sig_cols)`, C order, and the run's pixel type, little-endian:
/// descr `|u1`, `<u2`, `<u4`, `<u8`, or `<f4`, `<f8` for float frames (written bit for
/// bit, NaN and negative values included).
///
/// Parameters: [`RecordParams`] — `path`, the file, created (or truncated) when the run
/// starts; [`Udf::params`] gives `{"path": "…"}`. Each frame
/// is written at its scan position by the worker that processed it (one positioned write
/// per partition), so the file is complete when the run ends; positions never processed
/// (outside the ROI, lost, damaged, or after a cancel) hold zeros.
///
/// Output: single `frames_written`, shape `[]`, dtype u64. A write error ends the run
/// with [`crate::ProcessingError::Udf`] naming the file, at the end of the run.
#[derive(Clone, Debug)]
pub struct RecordUdf {
    name: String,
    path: PathBuf,
    /// Offset of the data in the file (set by preprocess).
    data_offset: Arc<Mutex<u64>>,
    /// The first write error of any task.
    error: Arc<Mutex<Option<String>>>,
}

impl RecordUdf {
    /// Records to `path`; named `record`.
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self {
            name: "record".into(),
            path: path.as_ref().to_path_buf(),
            data_offset: Arc::new(Mutex::new(0)),
            error: Arc::new(Mutex::new(None)),
        }
    }
    /// Records to the file of `p`; named `record`.
    pub fn from_params(p: RecordParams) -> Self {
        Self::new(p.path)
    }
    /// The same UDF under another name (names are unique within a run).
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }
    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }
    fn fail(&self, e: String) {
        let mut g = self.error.lock().unwrap_or_else(|p| p.into_inner());
        g.get_or_insert(e);
    }
}

fn descr(dtype: DType) -> &'static str {
    match dtype {
        DType::U8 => "|u1",
        DType::U16 => "<u2",
        DType::U32 => "<u4",
        DType::U64 => "<u8",
        DType::F32 => "<f4",
        DType::F64 => "<f8",
    }
}

impl Udf for RecordUdf {
    fn name(&self) -> &str {
        &self.name
    }
    fn params(&self) -> serde_json::Value {
        let p = RecordParams {
            path: self.path.clone(),
        };
        // serde refuses a path that is not UTF-8: show it lossily rather than not at all.
        serde_json::to_value(&p)
            .unwrap_or_else(|_| serde_json::json!({ "path": self.path.to_string_lossy() }))
    }
    fn buffers(&self, _meta: &UdfMeta) -> Vec<BufferDecl> {
        vec![BufferDecl::single("frames_written", vec![], "frames").with_dtype(ResultDType::U64)]
    }
    fn granularity(&self, _meta: &UdfMeta) -> Granularity {
        Granularity::Partition
    }
    fn preprocess(&self, meta: &UdfMeta, _global: &mut [ResultBuffer]) -> Result<(), String> {
        let shape = [
            meta.nav_shape.rows,
            meta.nav_shape.cols,
            meta.sig_shape.rows,
            meta.sig_shape.cols,
        ];
        let header = header_bytes(descr(meta.dtype), &shape);
        let data_bytes = (meta.nav_shape.len() * meta.sig_shape.len() * meta.dtype.size()) as u64;
        let write = || -> std::io::Result<()> {
            let f = std::fs::File::create(&self.path)?;
            f.write_all_at(&header, 0)?;
            f.set_len(header.len() as u64 + data_bytes)
        };
        write().map_err(|e| format!("cannot create {}: {e}", self.path.display()))?;
        *self.data_offset.lock().unwrap_or_else(|p| p.into_inner()) = header.len() as u64;
        *self.error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }
    fn postprocess(&self, _meta: &UdfMeta, _global: &mut [ResultBuffer]) -> Result<(), String> {
        match self.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
    fn new_partition(&self, meta: &UdfMeta) -> Box<dyn PartitionTask> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(|e| self.fail(format!("cannot open {}: {e}", self.path.display())))
            .ok();
        Box::new(RecordTask {
            udf: self.clone(),
            file,
            offset: *self.data_offset.lock().unwrap_or_else(|p| p.into_inner()),
            frame_bytes: (meta.sig_shape.len() * meta.dtype.size()) as u64,
            scratch: Vec::new(),
            frames: 0,
        })
    }
}

struct RecordTask {
    udf: RecordUdf,
    file: Option<std::fs::File>,
    offset: u64,
    frame_bytes: u64,
    /// Reused little-endian bytes of a partition.
    scratch: Vec<u8>,
    frames: u64,
}

impl PartitionTask for RecordTask {
    fn process_frame(&mut self, frame: u64, pixels: PixelsRef<'_>, nav: &mut [f64]) {
        let sig = stemflow_core::SigShape::new(1, pixels.len());
        self.process_tile(&TileView::single(frame, sig, pixels), nav);
    }
    fn process_tile(&mut self, tile: &TileView<'_>, _nav: &mut [f64]) {
        let Some(file) = &self.file else {
            return;
        };
        self.scratch.clear();
        match tile.pixels {
            PixelsRef::U8(s) => self.scratch.extend_from_slice(s),
            PixelsRef::U16(s) => s.iter().for_each(|v| self.scratch.extend(v.to_le_bytes())),
            PixelsRef::U32(s) => s.iter().for_each(|v| self.scratch.extend(v.to_le_bytes())),
            PixelsRef::U64(s) => s.iter().for_each(|v| self.scratch.extend(v.to_le_bytes())),
            PixelsRef::F32(s) => s.iter().for_each(|v| self.scratch.extend(v.to_le_bytes())),
            PixelsRef::F64(s) => s.iter().for_each(|v| self.scratch.extend(v.to_le_bytes())),
        }
        let at = self.offset + tile.first_frame * self.frame_bytes;
        match file.write_all_at(&self.scratch, at) {
            Ok(()) => self.frames += tile.n_frames as u64,
            Err(e) => {
                self.udf.fail(format!(
                    "writing frames {}..{} to {}: {e}",
                    tile.first_frame,
                    tile.first_frame + tile.n_frames as u64,
                    self.udf.path.display()
                ));
                self.file = None;
            }
        }
    }
    fn merge_into(&mut self, global: &mut [ResultBuffer]) {
        global[0].data[0] += self.frames as f64;
        self.frames = 0;
    }
}
