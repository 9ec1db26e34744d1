//! Sparse frames recorded as CSR (decision 0010; `docs/formats.md`, layout 2, sparse
//! frames): `/entry/data/csr/{indptr, indices, values}`, so an event-camera run (ASI TPX3)
//! stays as small as its events instead of `nav × 512 × 512 × 4` bytes.
//!
//! - `indptr` (`u64`, `frames + 1`): row `i` (frame `i` in scan order) is entries
//!   `indptr[i]..indptr[i + 1]`; frames not (yet) written are empty rows.
//! - `indices` (`u32`): flat signal index `y × sig_cols + x` of each entry.
//! - `values` (`u32`): counts.
//!
//! The pipeline hands rows over in completion order, not frame order; rows are appended in
//! frame order, blocks that arrive early wait in a small reorder buffer. Frames that never
//! come (lost) are filled in as empty rows once more than [`REORDER_BLOCKS`] blocks wait
//! behind them, and at the end.
//!
//! When the recording is finished the same arrays are also written as LiberTEM's
//! `raw_csr` data set beside it ([`CsrWriter::export_raw`]): three raw little-endian files
//! and a TOML description, `ctx.load("raw_csr", path="…/recording.toml")`.

use crate::error::RecordingError;
use crate::hdf5::{h5, set_attr_str};
use hdf5::{Dataset, Group};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use stemflow_core::csr::CsrRows;

/// Where the CSR group lives.
pub const CSR_GROUP: &str = "/entry/data/csr";

/// Blocks of rows that may wait for an earlier frame before the frames missing in front
/// of them are taken as lost (the pipeline has at most a few blocks in flight).
pub const REORDER_BLOCKS: usize = 64;

/// Entries per HDF5 chunk of `indices` and `values` (1 MiB of `u32`).
const CHUNK_ENTRIES: usize = 1 << 18;

/// The CSR datasets of a recording and the rows not yet appended.
pub(crate) struct CsrWriter {
    path: PathBuf,
    indptr: Dataset,
    indices: Dataset,
    values: Dataset,
    /// Row pointers of the frames appended so far (`next + 1` entries).
    ptr: Vec<u64>,
    /// Frames in the scan.
    frames: u64,
    /// Early blocks by first frame.
    pending: BTreeMap<u64, CsrRows>,
}

impl CsrWriter {
    /// Creates the CSR group under `data` for `frames` frames, compressed with shuffle and
    /// deflate at `deflate` when given.
    pub(crate) fn create(
        data: &Group,
        path: &Path,
        frames: u64,
        deflate: Option<u8>,
    ) -> Result<Self, RecordingError> {
        let g = data
            .create_group("csr")
            .map_err(h5(path, CSR_GROUP, "creating the group"))?;
        set_attr_str(&g, path, "format", "csr")?;
        set_attr_str(
            &g,
            path,
            "description",
            "frame i (scan order) is entries indptr[i]..indptr[i+1] of indices (flat signal index y*sig_cols+x) and values (counts); decision 0010",
        )?;
        let indptr = data
            .new_dataset::<u64>()
            .shape(frames as usize + 1)
            .alloc_time(Some(hdf5::dataset::AllocTime::Early))
            .create("csr/indptr")
            .map_err(h5(path, "/entry/data/csr/indptr", "creating the dataset"))?;
        let mk = |name: &str| {
            let b = data.new_dataset::<u32>().shape(0..).chunk(CHUNK_ENTRIES);
            let b = match deflate {
                Some(level) => b.shuffle().deflate(level),
                None => b,
            };
            b.create(format!("csr/{name}").as_str()).map_err(h5(
                path,
                "/entry/data/csr",
                "creating the dataset",
            ))
        };
        let indices = mk("indices")?;
        let values = mk("values")?;
        set_attr_str(&indices, path, "units", "pixels")?;
        set_attr_str(&values, path, "units", "counts")?;
        Ok(Self {
            path: path.to_path_buf(),
            indptr,
            indices,
            values,
            ptr: vec![0],
            frames,
            pending: BTreeMap::new(),
        })
    }

    /// The next frame to append.
    fn next(&self) -> u64 {
        self.ptr.len() as u64 - 1
    }

    /// Takes a block of rows; returns the frames appended (for the frames-written map).
    pub(crate) fn write(
        &mut self,
        rows: CsrRows,
        written: &mut [u8],
    ) -> Result<u64, RecordingError> {
        let end = rows.first_frame + rows.n_frames() as u64;
        if end > self.frames || rows.first_frame < self.next() {
            return Err(RecordingError::Mismatch {
                path: self.path.clone(),
                object: CSR_GROUP.into(),
                detail: format!(
                    "rows of frames {}..{end} given; the scan has {} frames and {} are written",
                    rows.first_frame,
                    self.frames,
                    self.next()
                ),
            });
        }
        self.pending.insert(rows.first_frame, rows);
        let mut done = self.drain(written)?;
        if self.pending.len() > REORDER_BLOCKS
            && let Some(&first) = self.pending.keys().next()
        {
            // The frames in front of the waiting blocks are lost: empty rows.
            self.fill_to(first);
            done += self.drain(written)?;
        }
        Ok(done)
    }

    fn fill_to(&mut self, frame: u64) {
        let last = *self.ptr.last().unwrap_or(&0);
        while self.next() < frame {
            self.ptr.push(last);
        }
    }

    fn drain(&mut self, written: &mut [u8]) -> Result<u64, RecordingError> {
        let mut done = 0;
        while let Some(rows) = self.pending.remove(&self.next()) {
            self.append(&rows)?;
            let first = rows.first_frame as usize;
            let n = rows.n_frames();
            if let Some(w) = written.get_mut(first..first + n) {
                w.fill(1);
            }
            done += n as u64;
        }
        Ok(done)
    }

    fn append(&mut self, rows: &CsrRows) -> Result<(), RecordingError> {
        let p = &self.path;
        let nnz = *self.ptr.last().unwrap_or(&0) as usize;
        let k = rows.nnz();
        if k > 0 {
            for (ds, data, name) in [
                (&self.indices, &rows.indices, "indices"),
                (&self.values, &rows.values, "values"),
            ] {
                let obj = format!("{CSR_GROUP}/{name}");
                ds.resize(nnz + k)
                    .map_err(h5(p, &obj, "growing the dataset"))?;
                ds.write_slice(&data[..], nnz..nnz + k)
                    .map_err(h5(p, &obj, "writing entries"))?;
            }
        }
        let base = nnz as u64;
        self.ptr.extend(rows.indptr[1..].iter().map(|&q| base + q));
        Ok(())
    }

    /// Writes the row pointers (frames not written yet: empty rows).
    pub(crate) fn flush(&mut self) -> Result<(), RecordingError> {
        let last = *self.ptr.last().unwrap_or(&0);
        let mut all = self.ptr.clone();
        all.resize(self.frames as usize + 1, last);
        self.indptr.write(&all).map_err(h5(
            &self.path,
            "/entry/data/csr/indptr",
            "writing the row pointers",
        ))
    }

    /// Appends every waiting block (the frames missing in front of them as empty rows) and
    /// writes the row pointers.
    pub(crate) fn finish(&mut self, written: &mut [u8]) -> Result<(), RecordingError> {
        while let Some(&first) = self.pending.keys().next() {
            self.fill_to(first);
            self.drain(written)?;
        }
        self.flush()
    }

    /// Entries written.
    pub(crate) fn nnz(&self) -> u64 {
        *self.ptr.last().unwrap_or(&0)
    }

    /// Writes the finished arrays as LiberTEM's `raw_csr` data set beside the recording
    /// `recording` (`<stem>.indptr` uint64, `<stem>.indices` and `<stem>.values` uint32, all
    /// little-endian, and `<stem>.toml` naming them with the scan and frame shapes); returns
    /// the TOML file. Called after [`finish`](Self::finish).
    ///
    /// # Errors
    /// [`RecordingError::Io`] naming the file that cannot be written;
    /// [`RecordingError::Hdf5`] when the entries cannot be read back.
    pub(crate) fn export_raw(
        &self,
        recording: &Path,
        nav: stemflow_core::NavShape,
        sig: stemflow_core::SigShape,
    ) -> Result<PathBuf, RecordingError> {
        use std::io::Write;
        let dir = recording.parent().unwrap_or(Path::new("."));
        let stem = recording.file_stem().map_or_else(
            || "recording".to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
        let file = |ext: &str| dir.join(format!("{stem}.{ext}"));
        let io = |p: &Path, during: &str| {
            let path = p.to_path_buf();
            let during = during.to_string();
            move |source| RecordingError::Io {
                path,
                during,
                source,
            }
        };
        let create = |p: &Path| {
            std::fs::File::create(p)
                .map(std::io::BufWriter::new)
                .map_err(io(p, "creating a raw_csr file"))
        };
        let last = *self.ptr.last().unwrap_or(&0);
        let mut ptr = self.ptr.clone();
        ptr.resize(self.frames as usize + 1, last);
        let p = file("indptr");
        let mut w = create(&p)?;
        for v in &ptr {
            w.write_all(&v.to_le_bytes()).map_err(io(&p, "writing"))?;
        }
        w.flush().map_err(io(&p, "writing"))?;
        let nnz = last as usize;
        for (ds, ext, name) in [
            (&self.indices, "indices", "indices"),
            (&self.values, "values", "values"),
        ] {
            let p = file(ext);
            let mut w = create(&p)?;
            let obj = format!("{CSR_GROUP}/{name}");
            let mut at = 0;
            while at < nnz {
                let end = (at + CHUNK_ENTRIES).min(nnz);
                let block = ds.read_slice_1d::<u32, _>(at..end).map_err(h5(
                    &self.path,
                    &obj,
                    "reading entries back",
                ))?;
                for v in block.iter() {
                    w.write_all(&v.to_le_bytes()).map_err(io(&p, "writing"))?;
                }
                at = end;
            }
            w.flush().map_err(io(&p, "writing"))?;
        }
        let toml = file("toml");
        let text = format!(
            "# LiberTEM raw_csr data set of the sparse frames of {stem}.hspy (the same arrays as\n\
             # /entry/data/csr): ctx.load(\"raw_csr\", path=\"{stem}.toml\")\n\
             [params]\nfiletype = \"raw_csr\"\nnav_shape = [{}, {}]\nsig_shape = [{}, {}]\n\n\
             [raw_csr]\nindptr_file = \"{stem}.indptr\"\nindptr_dtype = \"<u8\"\n\
             indices_file = \"{stem}.indices\"\nindices_dtype = \"<u4\"\n\
             data_file = \"{stem}.values\"\ndata_dtype = \"<u4\"\n",
            nav.rows, nav.cols, sig.rows, sig.cols
        );
        std::fs::write(&toml, text).map_err(io(&toml, "writing"))?;
        Ok(toml)
    }
}
