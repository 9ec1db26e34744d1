//! [`Hdf5Recorder`]: writes one acquisition's raw frames to HDF5 as the pipeline delivers
//! them (a [`TileSink`]), then the UDF results, the validity map and the metadata.
//!
//! Frames go into one 4-D dataset `(nav_rows, nav_cols, sig_rows, sig_cols)` so that any
//! HDF5 reader finds scan position `(y, x)` at `frames[y, x]` without a stemflow-specific
//! view. A tile of consecutive frames may start mid-row and span several scan rows; it is
//! written as at most three hyperslabs (tail of a row, whole rows, head of a row; see
//! [`layout::blocks`]), so a tile costs at most three HDF5 calls whatever its length.
//!
//! By default the HDF5 calls run on a dedicated writer thread: `write_tile` copies the tile
//! into a buffer from a small bounded [`Pool`] (a memcpy, ~10 GB/s) and queues it, so the
//! pipeline's coordinating thread never waits for the disk unless the writer has fallen a
//! whole pool behind (backpressure, with a deadline).
//!
//! Measured (`examples/write_throughput.rs`, 256 × 256 `u16` frames, 2-core VM, ext4):
//! into a warm page cache the inline writer sustains ~5 GB/s and the HDF5 calls add no
//! measurable cost over the kernel's copy (4- to 32-frame tiles alike); to a closed file
//! ~4 GB/s, ~2 GB/s including `fsync`; into never-touched page-cache memory ~0.5 GB/s,
//! the machine's first-touch rate. The writer thread gives the same sustained rate (it
//! cannot beat the disk) for one extra memcpy of every tile, and buys freedom from disk
//! latency spikes (writeback throttling, other processes' `fsync`) of up to
//! `writer_queue` tiles; `writer_queue = 0` saves the copy where memory bandwidth is
//! short. Compressed recordings are written one frame per chunk, each compressed by the
//! pipeline's workers ([`crate::chunk`]) and stored by direct chunk write: deflate level 1
//! keeps 80–84 % of the live rate without recording on 2 cores (13 000 frames/s of
//! 256 × 256 u16), where libhdf5's filter on the writer thread kept 18–22 % (3 400).
//!
//! Crash safety: uncompressed frames are allocated in the file when it is created and the
//! HDF5 chunk cache is off, so writing pixels never changes the file's metadata; after
//! `create` has flushed, a killed process leaves a readable file whose unwritten frames read
//! as zeros. The validity dataset is rewritten at every flush (every `flush_interval`) with
//! the frames written so far, and `/entry@recording_complete` stays 0 until `finish`.
//! Compressed recordings allocate chunks as they are written; a kill loses what was written
//! since the last flush.
//!
//! File locking: libhdf5 (≥ 1.10) normally `flock`s a file while it is open. We open ours
//! without the lock: a child process started while a recording is open inherits the file
//! descriptor (libhdf5 does not set close-on-exec) and would otherwise hold the lock until
//! it exits, so the finished file could not be opened again; and without it h5py can open
//! a recording in progress (the frames of an uncompressed one are safe to read then, as
//! their layout never changes after `create`). Nothing else protects against two writers
//! of one file: give each acquisition its own path.

use crate::error::RecordingError;
use crate::layout::{self, Block};
use hdf5::types::VarLenUnicode;
use hdf5::{Dataset, File, Group, H5Type, Location};
use ndarray::{ArrayView4, ArrayViewD, IxDyn};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use stemflow_core::frame::{RawStack, Tile, TileData};
use stemflow_core::metadata::RunMetadata;
use stemflow_core::pool::{Pool, Pooled};
use stemflow_core::result::{BufferKind, TypedValues, UdfResults};
use stemflow_core::sink::{SinkError, TileSink};
use stemflow_core::validity::FrameValidity;
use stemflow_core::{DType, NavShape, SigShape};

/// What to record and how.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordingSpec {
    /// Scan grid; frame `i` is stored at `(i / cols, i % cols)`.
    pub nav_shape: NavShape,
    /// Frame shape in pixels.
    pub sig_shape: SigShape,
    /// Pixel type of the decoded frames, stored as is (native byte order).
    pub dtype: DType,
    /// Frames per HDF5 chunk (see [`layout::chunk_shape`]); [`RecordingSpec::new`] picks
    /// about 2 MiB per chunk (16 frames of 256 × 256 `u16`).
    pub frames_per_chunk: usize,
    /// How the frames are compressed ([`Compression`]).
    pub compression: Compression,
    /// Tiles that may wait for the writer thread; 0 writes on the caller's thread inside
    /// `write_tile` instead (no copy, but the caller waits for the disk).
    pub writer_queue: usize,
    /// How often written frames are flushed to the file (and the validity map updated), s.
    pub flush_interval: Duration,
    /// How long `write_tile` or `flush` waits for a writer that has fallen behind before
    /// failing with [`RecordingError::WriterStalled`].
    pub stall_timeout: Duration,
    /// Bytes of the disk left free after an uncompressed recording's frames are allocated
    /// (default [`DEFAULT_DISK_RESERVE`]): a recording that would not fit is refused
    /// before the file is created.
    pub disk_reserve: u64,
    /// Whether frames will be written (default true). A recording that only keeps the
    /// validity map, metadata and results (`process --no-raw`) takes no disk for its
    /// frames (the file is sparse) and is not checked against the free space.
    pub frames_written: bool,
    /// Frames come as sparse rows (CSR, an event camera): they are recorded as
    /// `/entry/data/csr/{indptr, indices, values}` ([`crate::csr`]) instead of a dense
    /// `frames` dataset, compressed with shuffle + deflate unless [`Compression::None`].
    /// Default false.
    pub sparse: bool,
}

/// How the frames dataset is compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// Uncompressed: fastest, crash-safe by construction (every chunk allocated at create).
    #[default]
    None,
    /// HDF5's byte shuffle then deflate (gzip) at `level` 1–9, one frame per chunk,
    /// compressed by the pipeline's workers ([`crate::chunk`]). Every HDF5 reader has
    /// these filters built in.
    Deflate {
        /// zlib level, 1 (fastest) to 9 (smallest).
        level: u8,
    },
    /// Bitshuffle + LZ4, HDF5 filter 32008 (the format of DECTRIS detectors' own files),
    /// one frame per chunk; stemflow compresses the chunks itself and writes them with
    /// HDF5's direct chunk write, so libhdf5 needs no plugin to write, and a DECTRIS
    /// frame that arrived bitshuffle-LZ4 compressed is written as it came
    /// ([`Hdf5Recorder::write_raw`]). Readers need the filter: `pip install
    /// hdf5plugin` and `import hdf5plugin` (HyperSpy and py4DSTEM import it when installed).
    Bslz4,
}

impl Compression {
    /// How stemflow compresses a frame of `elem`-byte pixels into a chunk itself, one
    /// frame per chunk (every compression but none).
    pub fn chunk_codec(self, elem: usize) -> Option<crate::chunk::ChunkCodec> {
        use crate::chunk::ChunkCodec;
        match self {
            Compression::None => None,
            Compression::Bslz4 => Some(ChunkCodec::Bslz4 { elem }),
            Compression::Deflate { level } => Some(ChunkCodec::Deflate { elem, level }),
        }
    }

    /// The name used on the command line and in profiles (`none`, `deflate`, `deflate:4`,
    /// `bslz4`).
    pub fn name(&self) -> String {
        match self {
            Compression::None => "none".into(),
            Compression::Deflate { level: 1 } => "deflate".into(),
            Compression::Deflate { level } => format!("deflate:{level}"),
            Compression::Bslz4 => "bslz4".into(),
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    /// `none`, `deflate` (level 1), `deflate:N` (N = 1–9; `gzip` is a synonym of
    /// `deflate`), `bslz4`.
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        let (name, level) = match t.split_once(':') {
            Some((n, l)) => (n.to_string(), Some(l.to_string())),
            None => (t.clone(), None),
        };
        match (name.as_str(), level) {
            ("none", None) => Ok(Compression::None),
            ("bslz4", None) => Ok(Compression::Bslz4),
            ("deflate" | "gzip", None) => Ok(Compression::Deflate { level: 1 }),
            ("deflate" | "gzip", Some(l)) => match l.parse::<u8>() {
                Ok(level @ 1..=9) => Ok(Compression::Deflate { level }),
                _ => Err(format!("deflate level `{l}`: expected 1 to 9")),
            },
            _ => Err(format!(
                "compression `{s}`: expected none, deflate, deflate:1 … deflate:9 or bslz4"
            )),
        }
    }
}

/// Bytes left free on the disk beside an uncompressed recording: 256 MiB.
pub const DEFAULT_DISK_RESERVE: u64 = 256 << 20;

impl RecordingSpec {
    /// A spec with the defaults: ~2 MiB chunks, no compression, a writer thread with 8 tiles
    /// in flight, a flush every second, a 30 s stall deadline.
    pub fn new(nav_shape: NavShape, sig_shape: SigShape, dtype: DType) -> Self {
        Self {
            nav_shape,
            sig_shape,
            dtype,
            frames_per_chunk: layout::default_frames_per_chunk(sig_shape, dtype),
            compression: Compression::None,
            writer_queue: 8,
            flush_interval: Duration::from_secs(1),
            stall_timeout: Duration::from_secs(30),
            disk_reserve: DEFAULT_DISK_RESERVE,
            frames_written: true,
            sparse: false,
        }
    }

    /// Bytes of the frames, uncompressed: nav positions × pixels × pixel size.
    pub fn frame_bytes(&self) -> u128 {
        self.nav_shape.rows as u128
            * self.nav_shape.cols as u128
            * self.sig_shape.rows as u128
            * self.sig_shape.cols as u128
            * self.dtype.size() as u128
    }
}

/// Bytes free for an unprivileged writer on the file system holding `dir`; `None` when it
/// cannot be told.
fn available_bytes(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: a valid NUL-terminated path and a buffer of the right type; the struct is
        // read only when the call succeeded.
        let st = unsafe {
            if libc::statvfs(c.as_ptr(), st.as_mut_ptr()) != 0 {
                return None;
            }
            st.assume_init()
        };
        Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// What a finished recording holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordingSummary {
    /// The file.
    pub path: PathBuf,
    /// Distinct frames whose pixels were written.
    pub frames_written: u64,
    /// Pixel bytes written (frames written, counting rewrites, × frame size).
    pub bytes_written: u64,
}

/// Writes one acquisition to an HDF5 file (layout: crate docs and `docs/formats.md`).
///
/// Lifecycle: [`create`](Hdf5Recorder::create) when the acquisition is armed;
/// [`write_tile`](TileSink::write_tile) for every decoded tile, in any order;
/// [`finish`](Hdf5Recorder::finish) once the pipeline has ended. Dropping it unfinished
/// (aborted run) writes what is queued, flushes and closes the file, which then keeps
/// `recording_complete = 0`.
pub struct Hdf5Recorder {
    path: PathBuf,
    spec: RecordingSpec,
    mode: Mode,
}

enum Mode {
    /// `writer_queue == 0`: HDF5 calls on the caller's thread.
    Inline(Box<Writer>),
    /// HDF5 calls on the writer thread.
    Threaded(Threaded),
    /// The writer failed (error already reported) or the recorder was finished.
    Closed(String),
}

struct Threaded {
    /// Tile copies and flush requests to the writer; dropped to make it finish.
    jobs: Option<crossbeam_channel::Sender<Job>>,
    /// The writer thread; yields the writer (file still open) when the queue closes.
    handle: Option<JoinHandle<Result<Writer, RecordingError>>>,
    /// Tile buffers: bounded, reused, so the copy never touches fresh memory after warm-up.
    pool: Pool<TileData>,
}

enum Job {
    Tile {
        first: u64,
        n: usize,
        data: Pooled<TileData>,
    },
    /// Frames (acquisition index, chunk bytes) already compressed as the frames dataset's
    /// filter compresses one frame: written as they are.
    Chunks(Vec<(u64, Vec<u8>)>),
    /// Sparse rows (CSR) of consecutive frames.
    Csr(stemflow_core::csr::CsrRows),
    /// Flush, then answer (true on success; on failure the thread ends with the error).
    Flush(crossbeam_channel::Sender<bool>),
}

impl Hdf5Recorder {
    /// Creates (truncates) `path` with the frames and validity datasets for `spec`, flushes
    /// it, and starts the writer thread unless `spec.writer_queue == 0`.
    ///
    /// # Errors
    /// [`RecordingError::Spec`] for an empty shape, `frames_per_chunk == 0`, a compression
    /// level above 9 or deflate missing from libhdf5; [`RecordingError::Hdf5`] when the file
    /// or an object cannot be created.
    pub fn create(path: impl AsRef<Path>, spec: RecordingSpec) -> Result<Self, RecordingError> {
        Self::create_with_metadata(path, spec, None)
    }

    /// As [`create`](Self::create), and writes `metadata` (what is known when the recording
    /// opens: the detector's header and read-back settings, the microscope, the scan) as
    /// `/entry/run_metadata_json` at once and flushes it, so that a file left by a killed
    /// process says what it holds; [`finish`](Self::finish) replaces it with the final
    /// metadata.
    ///
    /// # Errors
    /// As [`create`](Self::create); [`RecordingError::Json`] when the metadata cannot be
    /// encoded.
    pub fn create_with_metadata(
        path: impl AsRef<Path>,
        spec: RecordingSpec,
        metadata: Option<&RunMetadata>,
    ) -> Result<Self, RecordingError> {
        let path = path.as_ref().to_path_buf();
        let mut spec = spec;
        if spec.compression != Compression::None {
            // One frame per chunk, compressed by the pipeline's workers (chunk.rs); for
            // bitshuffle-LZ4 as DECTRIS writes it: a detector's compressed frame is a
            // chunk as it stands.
            spec.frames_per_chunk = 1;
        }
        check_spec(&path, &spec)?;
        let writer = Writer::create(&path, &spec)?;
        if let Some(md) = metadata {
            write_opening_metadata(&writer.file, &path, md)?;
            if writer.frames.is_some() {
                crate::views::update(
                    &writer.file,
                    &path,
                    &title_of(&path),
                    spec.nav_shape,
                    spec.sig_shape,
                    Some(md),
                )?;
            }
        }
        let mode = if spec.writer_queue == 0 {
            Mode::Inline(Box::new(writer))
        } else {
            let (tx, rx) = crossbeam_channel::bounded(spec.writer_queue + 1);
            let dtype = spec.dtype;
            let pool = Pool::new("hdf5 recorder tiles", spec.writer_queue, || {
                TileData::zeros(dtype, 0)
            });
            let handle = std::thread::Builder::new()
                .name("hdf5-writer".into())
                .spawn(move || run_writer(writer, rx))
                .map_err(|source| RecordingError::Io {
                    path: path.clone(),
                    during: "starting the writer thread".into(),
                    source,
                })?;
            Mode::Threaded(Threaded {
                jobs: Some(tx),
                handle: Some(handle),
                pool,
            })
        };
        tracing::debug!(path = %path.display(), nav = %spec.nav_shape, sig = %spec.sig_shape,
            dtype = %spec.dtype, "recording created");
        Ok(Self { path, spec, mode })
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The spec it was created with.
    pub fn spec(&self) -> &RecordingSpec {
        &self.spec
    }

    /// Writes one tile (frames `tile.first_frame..+n_frames`), or queues it for the writer.
    ///
    /// # Errors
    /// [`RecordingError::TileShape`], [`TileDtype`](RecordingError::TileDtype),
    /// [`TileLength`](RecordingError::TileLength) or
    /// [`FrameRange`](RecordingError::FrameRange) for a tile that does not fit;
    /// [`WriterStalled`](RecordingError::WriterStalled) when no buffer came back within
    /// `stall_timeout`; the writer's own error ([`RecordingError::Hdf5`]) once it has failed.
    pub fn write(&mut self, tile: &Tile) -> Result<(), RecordingError> {
        self.check_tile(tile)?;
        let mut buf = match &mut self.mode {
            Mode::Inline(w) => {
                w.write(tile.first_frame, tile.n_frames, &tile.data)?;
                return w.maybe_flush();
            }
            Mode::Threaded(t) => match t.pool.try_take() {
                Some(buf) => buf,
                None => self.wait_for_buffer()?,
            },
            Mode::Closed(why) => return Err(closed(&self.path, why)),
        };
        copy_tile_data(&mut buf, &tile.data);
        self.send(Job::Tile {
            first: tile.first_frame,
            n: tile.n_frames,
            data: buf,
        })
    }

    /// Writes the frames of `tile` from the payloads of `raw`, the stack it was decoded
    /// from, when they are chunks of this recording's filter ([`Compression::Bslz4`], one
    /// frame per chunk) declaring the frame's size; other frames (a payload of another
    /// size) are compressed from the tile. Frames in `damaged` are not written (their
    /// validity says so; they read as zeros).
    ///
    /// # Errors
    /// As [`write`](Self::write).
    pub fn write_raw(
        &mut self,
        tile: &Tile,
        raw: &RawStack,
        damaged: &[u64],
    ) -> Result<(), RecordingError> {
        self.check_tile(tile)?;
        if self.spec.compression != Compression::Bslz4
            || raw.decoder.hdf5_chunk_filter() != Some(crate::bslz4::FILTER_ID as u32)
            || raw.first_frame != tile.first_frame
            || raw.len() < tile.n_frames
        {
            return self.write(tile);
        }
        let frame_len = tile.sig_shape.len();
        let frame_bytes = (frame_len * tile.data.dtype().size()) as u64;
        let mut chunks = Vec::with_capacity(tile.n_frames);
        for i in 0..tile.n_frames {
            let f = tile.first_frame + i as u64;
            if damaged.contains(&f) {
                continue;
            }
            let payload = raw.payload(i);
            let fits = stemflow_core::codec::bslz4_header(payload)
                .is_ok_and(|(total, _)| total == frame_bytes);
            let chunk = if fits {
                payload.to_vec()
            } else {
                let mut bytes = vec![0u8; frame_bytes as usize];
                copy_le(&mut bytes, &tile.data, i * frame_len..(i + 1) * frame_len);
                crate::bslz4::encode(&bytes, tile.data.dtype().size()).map_err(|e| {
                    RecordingError::Spec {
                        path: self.path.clone(),
                        detail: format!("compressing frame {f}: {e}"),
                    }
                })?
            };
            chunks.push((f, chunk));
        }
        self.write_chunks(tile, chunks)
    }

    /// Writes frames of `tile` that come compressed as this recording's chunks (one frame
    /// each, [`Compression::chunk_codec`]): `(acquisition index, chunk bytes)`.
    ///
    /// # Errors
    /// As [`write`](Self::write); a recording of another compression.
    pub fn write_chunks(
        &mut self,
        tile: &Tile,
        chunks: Vec<(u64, Vec<u8>)>,
    ) -> Result<(), RecordingError> {
        self.check_tile(tile)?;
        if self.spec.compression == Compression::None {
            return self.write(tile);
        }
        match &mut self.mode {
            Mode::Inline(w) => {
                w.write_chunks(&chunks)?;
                w.maybe_flush()
            }
            Mode::Threaded(_) => self.send(Job::Chunks(chunks)),
            Mode::Closed(why) => Err(closed(&self.path, why)),
        }
    }

    /// Writes sparse rows (CSR) of a sparse recording ([`RecordingSpec::sparse`]); rows of
    /// the frames in `damaged` are empty (their validity says so).
    ///
    /// # Errors
    /// [`RecordingError::TileShape`] for rows of another frame shape;
    /// [`FrameRange`](RecordingError::FrameRange) outside the scan; a dense recording
    /// ([`RecordingError::Mismatch`]); the writer's error once it has failed.
    pub fn write_csr(&mut self, rows: &stemflow_core::csr::CsrRows) -> Result<(), RecordingError> {
        if rows.sig_shape != self.spec.sig_shape {
            return Err(RecordingError::TileShape {
                path: self.path.clone(),
                first_frame: rows.first_frame,
                expected: self.spec.sig_shape,
                observed: rows.sig_shape,
            });
        }
        check_range(
            &self.path,
            rows.first_frame,
            rows.n_frames(),
            self.spec.nav_shape,
        )?;
        match &mut self.mode {
            Mode::Inline(w) => {
                w.write_csr(rows.clone())?;
                w.maybe_flush()
            }
            Mode::Threaded(_) => self.send(Job::Csr(rows.clone())),
            Mode::Closed(why) => Err(closed(&self.path, why)),
        }
    }

    /// Waits (at most `stall_timeout`) for the writer to return a tile buffer, looking in
    /// short steps whether it has died meanwhile (its queued buffers stay in the channel
    /// then, so the pool would never refill).
    fn wait_for_buffer(&mut self) -> Result<Pooled<TileData>, RecordingError> {
        let deadline = Instant::now() + self.spec.stall_timeout;
        loop {
            let Mode::Threaded(t) = &mut self.mode else {
                return Err(closed(&self.path, "not threaded"));
            };
            let step = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50));
            if let Ok(buf) = t.pool.take(step) {
                return Ok(buf);
            }
            if t.handle.as_ref().is_some_and(|h| h.is_finished()) {
                return Err(self.writer_failure());
            }
            if Instant::now() >= deadline {
                return Err(RecordingError::WriterStalled {
                    path: self.path.clone(),
                    waited_s: self.spec.stall_timeout.as_secs_f64(),
                    in_flight: t.pool.capacity() - t.pool.free(),
                });
            }
        }
    }

    /// Sends a job; the channel has room for every pool buffer plus one flush, so this only
    /// fails when the writer thread has ended (with an error).
    fn send(&mut self, job: Job) -> Result<(), RecordingError> {
        let Mode::Threaded(t) = &mut self.mode else {
            return Err(closed(&self.path, "not threaded"));
        };
        let Some(jobs) = &t.jobs else {
            return Err(closed(&self.path, "writer queue closed"));
        };
        match jobs.send_timeout(job, self.spec.stall_timeout) {
            Ok(()) => Ok(()),
            Err(crossbeam_channel::SendTimeoutError::Timeout(_)) => {
                Err(RecordingError::WriterStalled {
                    path: self.path.clone(),
                    waited_s: self.spec.stall_timeout.as_secs_f64(),
                    in_flight: t.pool.capacity() - t.pool.free(),
                })
            }
            Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => Err(self.writer_failure()),
        }
    }

    /// After a timeout waiting for a buffer: the writer either died (report its error) or
    /// is stalled.
    fn stalled_or_failed(&mut self) -> RecordingError {
        let Mode::Threaded(t) = &mut self.mode else {
            return closed(&self.path, "not threaded");
        };
        if t.handle.as_ref().is_some_and(|h| h.is_finished()) {
            return self.writer_failure();
        }
        RecordingError::WriterStalled {
            path: self.path.clone(),
            waited_s: self.spec.stall_timeout.as_secs_f64(),
            in_flight: t.pool.capacity() - t.pool.free(),
        }
    }

    /// Joins the (ended) writer thread and returns its error; the recorder is closed after.
    fn writer_failure(&mut self) -> RecordingError {
        let mode = std::mem::replace(
            &mut self.mode,
            Mode::Closed("the writer failed earlier".into()),
        );
        let Mode::Threaded(mut t) = mode else {
            return closed(&self.path, "not threaded");
        };
        t.jobs = None;
        match t.handle.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => e,
            Some(Ok(Ok(_))) => closed(&self.path, "the writer ended early"),
            Some(Err(panic)) => RecordingError::WriterDied {
                path: self.path.clone(),
                detail: panic_text(&panic),
            },
            None => closed(&self.path, "no writer thread"),
        }
    }

    /// Waits until every queued tile is written, then flushes the file (and updates the
    /// validity dataset with the frames written so far), so that a process killed after
    /// this returns leaves every frame written so far readable.
    ///
    /// # Errors
    /// [`RecordingError::WriterStalled`] after `stall_timeout`; the writer's error.
    pub fn flush(&mut self) -> Result<(), RecordingError> {
        match &mut self.mode {
            Mode::Inline(w) => w.flush(),
            Mode::Threaded(_) => {
                let (tx, rx) = crossbeam_channel::bounded(1);
                self.send(Job::Flush(tx))?;
                match rx.recv_timeout(self.spec.stall_timeout) {
                    Ok(true) => Ok(()),
                    Ok(false) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                        Err(self.writer_failure())
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        Err(self.stalled_or_failed())
                    }
                }
            }
            Mode::Closed(why) => Err(closed(&self.path, why)),
        }
    }

    /// Writes the end-of-run objects and closes the file: every UDF result buffer, the final
    /// validity map with its counts, the instrument metadata, start/stop times, the
    /// metadata (and the run record, if given) as JSON; then sets
    /// `/entry@recording_complete = 1` and flushes.
    ///
    /// `validity` must have `nav_shape.len()` frames; result buffers must hold
    /// `shape.iter().product()` values.
    ///
    /// # Errors
    /// [`RecordingError::Mismatch`] for a validity map or buffer of the wrong size;
    /// [`RecordingError::Hdf5`] naming the object that could not be written; the writer's
    /// error if it failed while the last tiles were written.
    pub fn finish(
        mut self,
        results: &[UdfResults],
        validity: &FrameValidity,
        metadata: &RunMetadata,
        run_record: Option<&serde_json::Value>,
    ) -> Result<RecordingSummary, RecordingError> {
        let mut writer = self.take_writer()?;
        if let Some(mut csr) = writer.csr.take() {
            let r = csr
                .finish(&mut writer.written)
                .and_then(|()| csr.export_raw(&self.path, writer.nav, writer.sig));
            writer.csr = Some(csr);
            r?;
        }
        writer.flush()?;
        let p = &self.path;
        write_validity(&writer, validity)?;
        write_results(&writer.file, p, results)?;
        write_metadata(&writer.file, p, metadata, run_record)?;
        if writer.frames.is_some() {
            crate::views::update(
                &writer.file,
                p,
                &title_of(p),
                writer.nav,
                writer.sig,
                Some(metadata),
            )?;
        }
        if let Some(cal) = &metadata.calibration {
            crate::views::write_nexus_calibration(&writer.file, p, cal)?;
        }
        let entry = group(&writer.file, p, layout::ENTRY)?;
        set_attr(&entry, p, layout::COMPLETE_ATTR, &1u8)?;
        writer
            .file
            .flush()
            .map_err(h5(p, "/", "flushing the file"))?;
        let summary = RecordingSummary {
            path: self.path.clone(),
            frames_written: writer.frames_written,
            bytes_written: writer.bytes_written,
        };
        drop(writer);
        tracing::debug!(path = %summary.path.display(), frames = summary.frames_written, "recording finished");
        Ok(summary)
    }

    /// Ends the writer (inline or threaded) and returns it with the file open.
    fn take_writer(&mut self) -> Result<Box<Writer>, RecordingError> {
        let mode = std::mem::replace(&mut self.mode, Mode::Closed("finished".into()));
        match mode {
            Mode::Inline(w) => Ok(w),
            Mode::Threaded(mut t) => {
                t.jobs = None;
                match t.handle.take().map(JoinHandle::join) {
                    Some(Ok(r)) => r.map(Box::new),
                    Some(Err(panic)) => Err(RecordingError::WriterDied {
                        path: self.path.clone(),
                        detail: panic_text(&panic),
                    }),
                    None => Err(closed(&self.path, "no writer thread")),
                }
            }
            Mode::Closed(why) => Err(closed(&self.path, &why)),
        }
    }

    fn check_tile(&self, tile: &Tile) -> Result<(), RecordingError> {
        let spec = &self.spec;
        if tile.sig_shape != spec.sig_shape {
            return Err(RecordingError::TileShape {
                path: self.path.clone(),
                first_frame: tile.first_frame,
                expected: spec.sig_shape,
                observed: tile.sig_shape,
            });
        }
        if tile.data.dtype() != spec.dtype {
            return Err(RecordingError::TileDtype {
                path: self.path.clone(),
                first_frame: tile.first_frame,
                expected: spec.dtype,
                observed: tile.data.dtype(),
            });
        }
        let expected = tile.n_frames * spec.sig_shape.len();
        if tile.data.len() != expected {
            return Err(RecordingError::TileLength {
                path: self.path.clone(),
                first_frame: tile.first_frame,
                n_frames: tile.n_frames,
                expected,
                observed: tile.data.len(),
            });
        }
        check_range(&self.path, tile.first_frame, tile.n_frames, spec.nav_shape)
    }
}

impl TileSink for Hdf5Recorder {
    fn name(&self) -> &str {
        "hdf5 recorder"
    }
    fn write_tile(&mut self, tile: &Tile) -> Result<(), SinkError> {
        self.write(tile).map_err(Into::into)
    }
    /// A bitshuffle-LZ4 recording (one frame per chunk) stores bitshuffle-LZ4 payloads as
    /// they came: no decode and re-encode on the recording path.
    fn takes_raw(&self, filter: u32) -> bool {
        self.spec.compression == Compression::Bslz4
            && self.spec.frames_written
            && filter == crate::bslz4::FILTER_ID as u32
    }
    fn write_tile_with_raw(
        &mut self,
        tile: &Tile,
        raw: &RawStack,
        damaged: &[u64],
    ) -> Result<(), SinkError> {
        self.write_raw(tile, raw, damaged).map_err(Into::into)
    }
    /// A compressed recording has the pipeline's workers compress its frames (one chunk
    /// each), in parallel and while the frames are in cache.
    fn frame_encoder(&self) -> Option<std::sync::Arc<dyn stemflow_core::sink::FrameEncoder>> {
        let codec = self.spec.compression.chunk_codec(self.spec.dtype.size())?;
        (self.spec.frames_written && !self.spec.sparse)
            .then(|| std::sync::Arc::new(crate::chunk::FrameChunks(codec)) as _)
    }
    fn write_encoded(
        &mut self,
        tile: &Tile,
        encoded: stemflow_core::sink::EncodedFrames,
    ) -> Result<(), SinkError> {
        self.write_chunks(tile, encoded).map_err(Into::into)
    }
    /// A sparse recording stores the rows as CSR; a dense one densifies them.
    fn write_csr(
        &mut self,
        rows: &stemflow_core::csr::CsrRows,
        damaged: &[u64],
    ) -> Result<(), SinkError> {
        if self.spec.sparse {
            if !self.spec.frames_written {
                return Ok(());
            }
            return Hdf5Recorder::write_csr(self, rows).map_err(Into::into);
        }
        let _ = damaged;
        let mut tile = Tile::zeros(rows.first_frame, 0, rows.sig_shape, DType::U32);
        rows.densify_into(0..rows.n_frames(), &mut tile);
        self.write(&tile).map_err(Into::into)
    }
}

impl Drop for Hdf5Recorder {
    fn drop(&mut self) {
        if matches!(self.mode, Mode::Closed(_)) {
            return;
        }
        tracing::warn!(path = %self.path.display(), "recording dropped without finish; closing it incomplete");
        // The writer writes what is queued (at most `writer_queue` tiles), flushes, and
        // the file closes when it is dropped.
        if let Err(e) = self.take_writer().and_then(|mut w| w.flush()) {
            tracing::warn!("closing unfinished recording: {e}");
        }
    }
}

/// Fails when frames `first..first + n` are not all in the acquisition.
pub(crate) fn check_range(
    path: &Path,
    first: u64,
    n: usize,
    nav: NavShape,
) -> Result<(), RecordingError> {
    let frames = nav.len() as u64;
    match first.checked_add(n as u64) {
        Some(end) if end <= frames => Ok(()),
        end => Err(RecordingError::FrameRange {
            path: path.to_path_buf(),
            first,
            end: end.unwrap_or(u64::MAX),
            frames,
        }),
    }
}

fn check_spec(path: &Path, spec: &RecordingSpec) -> Result<(), RecordingError> {
    let bad = |detail: String| RecordingError::Spec {
        path: path.to_path_buf(),
        detail,
    };
    if spec.nav_shape.is_empty() || spec.sig_shape.is_empty() {
        return Err(bad(format!(
            "nav_shape {} and sig_shape {} must both have at least one position/pixel",
            spec.nav_shape, spec.sig_shape
        )));
    }
    if spec.frames_per_chunk == 0 {
        return Err(bad("frames_per_chunk is 0, must be at least 1".into()));
    }
    let frames = spec.nav_shape.rows as u128 * spec.nav_shape.cols as u128;
    if frames > usize::MAX as u128 || spec.frame_bytes() > u64::MAX as u128 {
        return Err(bad(format!(
            "{} × {} scan positions of {} {} frames do not fit in a file ({} bytes)",
            spec.nav_shape.rows,
            spec.nav_shape.cols,
            spec.sig_shape,
            spec.dtype,
            spec.frame_bytes()
        )));
    }
    if spec.compression == Compression::None && spec.frames_written && !spec.sparse {
        // Uncompressed chunks are all allocated when the file is created: the frames must
        // fit on the disk, with the reserve left free.
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if let Some(free) = available_bytes(dir) {
            let need = spec.frame_bytes() + spec.disk_reserve as u128;
            if need > free as u128 {
                return Err(bad(format!(
                    "the frames need {} bytes ({} positions × {} {} frames), the disk holding \
                     {} has {free} bytes free and {} are kept free",
                    spec.frame_bytes(),
                    spec.nav_shape,
                    spec.sig_shape,
                    spec.dtype,
                    dir.display(),
                    spec.disk_reserve
                )));
            }
        }
    }
    let chunk = layout::chunk_shape(spec.nav_shape, spec.sig_shape, spec.frames_per_chunk);
    let chunk_bytes = chunk.iter().product::<usize>() * spec.dtype.size();
    if chunk_bytes >= 1 << 32 {
        return Err(bad(format!(
            "a chunk of {chunk:?} {} is {chunk_bytes} bytes; HDF5 chunks must be under 4 GiB",
            spec.dtype
        )));
    }
    if let Compression::Deflate { level } = spec.compression {
        if level > 9 {
            return Err(bad(format!(
                "compression level {level}; supported: 0-9 (deflate)"
            )));
        }
        if !hdf5::filters::deflate_available() {
            return Err(bad(format!(
                "compression level {level} asked for, but this libhdf5 has no deflate filter; record uncompressed"
            )));
        }
    }
    Ok(())
}

fn closed(path: &Path, why: &str) -> RecordingError {
    RecordingError::WriterDied {
        path: path.to_path_buf(),
        detail: format!("recorder closed: {why}"),
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic without message".into())
}

/// Copies `src` into the pooled buffer `dst`, reusing its allocation.
fn copy_tile_data(dst: &mut TileData, src: &TileData) {
    match (dst, src) {
        (TileData::U8(d), TileData::U8(s)) => copy_vec(d, s),
        (TileData::U16(d), TileData::U16(s)) => copy_vec(d, s),
        (TileData::U32(d), TileData::U32(s)) => copy_vec(d, s),
        (TileData::U64(d), TileData::U64(s)) => copy_vec(d, s),
        (d, s) => *d = s.clone(),
    }
}

fn copy_vec<T: Copy>(dst: &mut Vec<T>, src: &[T]) {
    dst.clear();
    dst.extend_from_slice(src);
}

/// Maps an HDF5 error to [`RecordingError::Hdf5`] naming file, object and operation.
pub(crate) fn h5<'a>(
    path: &'a Path,
    object: &'a str,
    during: &'a str,
) -> impl FnOnce(hdf5::Error) -> RecordingError + 'a {
    move |source| RecordingError::Hdf5 {
        path: path.to_path_buf(),
        object: object.to_string(),
        during: during.to_string(),
        source,
    }
}

/// The end of the HDF5 calls: owns the file and its two per-frame datasets.
struct Writer {
    path: PathBuf,
    file: File,
    /// `None` when raw recording is off ([`RecordingSpec::frames_written`] false) or the
    /// frames are sparse.
    frames: Option<Dataset>,
    /// The CSR datasets of a sparse recording ([`RecordingSpec::sparse`]).
    csr: Option<crate::csr::CsrWriter>,
    /// How this crate compresses the chunks itself (one frame per chunk); `None` when the
    /// frames are stored uncompressed.
    own_chunks: Option<crate::chunk::ChunkCodec>,
    validity: Dataset,
    nav: NavShape,
    sig: SigShape,
    /// 1 where the frame's pixels were written; stored as the validity map at each flush
    /// until `finish` replaces it with the pipeline's own map.
    written: Vec<u8>,
    frames_written: u64,
    bytes_written: u64,
    frame_bytes: u64,
    /// Frames written since the last flush.
    dirty: bool,
    last_flush: Instant,
    flush_interval: Duration,
}

impl Writer {
    fn create(path: &Path, spec: &RecordingSpec) -> Result<Self, RecordingError> {
        // No HDF5 file lock (see `unlocked`): h5py may look at frames while we record.
        let file = File::with_options()
            .with_fapl(|p| p.file_locking(false))
            .create(path)
            .map_err(h5(path, "/", "creating the file"))?;
        set_attr_str(&file, path, "default", "entry")?;
        set_attr(
            &file,
            path,
            "stemflow_layout_version",
            &layout::LAYOUT_VERSION,
        )?;
        let entry =
            file.create_group("entry")
                .map_err(h5(path, layout::ENTRY, "creating the group"))?;
        set_attr_str(&entry, path, "NX_class", "NXentry")?;
        set_attr_str(&entry, path, "default", "data")?;
        set_attr(&entry, path, layout::COMPLETE_ATTR, &0u8)?;
        set_attr(
            &entry,
            path,
            "stemflow_layout_version",
            &layout::LAYOUT_VERSION,
        )?;
        write_str_dataset(
            &entry,
            path,
            "software_version",
            stemflow_core::SOFTWARE_VERSION,
        )?;
        let data =
            entry
                .create_group("data")
                .map_err(h5(path, layout::DATA, "creating the group"))?;
        set_attr_str(&data, path, "NX_class", "NXdata")?;
        set_attr(
            &data,
            path,
            "frames_recorded",
            &u8::from(spec.frames_written),
        )?;
        let (nav, sig) = (spec.nav_shape, spec.sig_shape);
        // Shapes and pixel type are stored even without frames (`--no-raw`), for readers of
        // the validity map and the results.
        write_u64_array(
            &data,
            path,
            "sig_shape",
            &[sig.rows as u64, sig.cols as u64],
            "pixels",
        )?;
        set_attr_str(&data, path, "frames_dtype", spec.dtype.name())?;
        let mut csr = None;
        let frames = if spec.frames_written && spec.sparse {
            set_attr_str(&data, path, "frames_format", "csr")?;
            set_attr_str(
                &data,
                path,
                "frames_note",
                "sparse frames (an event camera): recorded as CSR rows in csr/ (indptr, indices, values), no dense frames dataset",
            )?;
            let deflate = match spec.compression {
                Compression::None => None,
                Compression::Deflate { level } => Some(level),
                Compression::Bslz4 => Some(1),
            };
            csr = Some(crate::csr::CsrWriter::create(
                &data,
                path,
                nav.len() as u64,
                deflate,
            )?);
            None
        } else if spec.frames_written {
            set_attr_str(&data, path, "signal", "frames")?;
            let frames = match spec.dtype {
                DType::U8 => create_frames::<u8>(&data, path, spec),
                DType::U16 => create_frames::<u16>(&data, path, spec),
                DType::U32 => create_frames::<u32>(&data, path, spec),
                DType::U64 => create_frames::<u64>(&data, path, spec),
                DType::F32 => create_frames::<f32>(&data, path, spec),
                DType::F64 => create_frames::<f64>(&data, path, spec),
            }?;
            set_attr_str(&frames, path, "units", "counts")?;
            set_attr_str(
                &frames,
                path,
                "axes_order",
                "scan_y, scan_x, detector_y, detector_x (frame i at [i // nav_cols, i % nav_cols])",
            )?;
            set_attr_str(
                &frames,
                path,
                "detector_row_order",
                "row 0 as sent by the detector (LiberTEM's convention; HyperSpy shows Merlin frames flipped vertically)",
            )?;
            crate::views::create(&file, path, &title_of(path), nav, sig)?;
            Some(frames)
        } else {
            set_attr_str(
                &data,
                path,
                "frames_note",
                "raw frames were not recorded (raw recording off): this file holds the validity map, the results and the metadata only",
            )?;
            None
        };
        let validity = data
            .new_dataset::<u8>()
            .shape((nav.rows, nav.cols))
            .alloc_time(Some(hdf5::dataset::AllocTime::Early))
            .create("validity")
            .map_err(h5(path, layout::VALIDITY, "creating the dataset"))?;
        set_attr_str(&validity, path, "codes", layout::VALIDITY_CODES)?;
        set_attr_str(
            &validity,
            path,
            "state",
            "frames written so far (recording not finished); finish() stores the acquisition's own map",
        )?;
        file.flush()
            .map_err(h5(path, "/", "flushing the new file"))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            own_chunks: frames
                .as_ref()
                .and_then(|_| spec.compression.chunk_codec(spec.dtype.size())),
            frames,
            csr,
            validity,
            nav,
            sig,
            written: vec![0; nav.len()],
            frames_written: 0,
            bytes_written: 0,
            frame_bytes: (sig.len() * spec.dtype.size()) as u64,
            dirty: false,
            last_flush: Instant::now(),
            flush_interval: spec.flush_interval,
        })
    }

    fn write(&mut self, first: u64, n: usize, data: &TileData) -> Result<(), RecordingError> {
        let Some(frames) = &self.frames else {
            return Err(RecordingError::Mismatch {
                path: self.path.clone(),
                object: layout::FRAMES.into(),
                detail: format!(
                    "frames {first}..{} given to a recording made without raw frames",
                    first + n as u64
                ),
            });
        };
        match self.own_chunks {
            Some(codec) => {
                // One frame per chunk: each frame compressed on this (the writer's) thread
                // (tiles that did not come through the workers' encoder).
                let frame_len = self.sig.len();
                let mut bytes = vec![0u8; frame_len * data.dtype().size()];
                let mut chunks = Vec::with_capacity(n);
                for i in 0..n {
                    copy_le(&mut bytes, data, i * frame_len..(i + 1) * frame_len);
                    let chunk = codec.encode(&bytes).map_err(|e| RecordingError::Spec {
                        path: self.path.clone(),
                        detail: format!("compressing frame {}: {e}", first + i as u64),
                    })?;
                    chunks.push((first + i as u64, chunk));
                }
                return self.write_chunks(&chunks);
            }
            None => self.write_blocks(frames, first, n, data)?,
        }
        for w in &mut self.written[first as usize..first as usize + n] {
            self.frames_written += u64::from(*w == 0);
            *w = 1;
        }
        self.bytes_written += n as u64 * self.frame_bytes;
        self.dirty = true;
        Ok(())
    }

    /// Writes frames `first..first + n` of `data` through libhdf5 (its filters, if any), as
    /// at most three hyperslabs ([`layout::blocks`]).
    fn write_blocks(
        &self,
        frames: &Dataset,
        first: u64,
        n: usize,
        data: &TileData,
    ) -> Result<(), RecordingError> {
        for block in layout::blocks(first, n, self.nav) {
            let r = match data {
                TileData::U8(d) => write_block(frames, d, block, self.sig),
                TileData::U16(d) => write_block(frames, d, block, self.sig),
                TileData::U32(d) => write_block(frames, d, block, self.sig),
                TileData::U64(d) => write_block(frames, d, block, self.sig),
                TileData::F32(d) => write_block(frames, d, block, self.sig),
                TileData::F64(d) => write_block(frames, d, block, self.sig),
            };
            r.map_err(|source| {
                let start = first + block.offset as u64;
                RecordingError::Hdf5 {
                    path: self.path.clone(),
                    object: layout::FRAMES.into(),
                    during: format!(
                        "writing frames {start}..{} (scan rows {}..{}, columns {}..{})",
                        start + block.frames() as u64,
                        block.row,
                        block.row + block.rows,
                        block.col,
                        block.col + block.cols
                    ),
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// Time until the next periodic flush is due (long when nothing is waiting).
    fn until_flush(&self) -> Duration {
        if self.dirty {
            self.flush_interval
                .saturating_sub(self.last_flush.elapsed())
        } else {
            self.flush_interval.max(Duration::from_millis(100))
        }
    }

    fn maybe_flush(&mut self) -> Result<(), RecordingError> {
        if self.dirty && self.last_flush.elapsed() >= self.flush_interval {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes frames that came compressed, one chunk per frame (`(index, bytes)`).
    fn write_chunks(&mut self, chunks: &[(u64, Vec<u8>)]) -> Result<(), RecordingError> {
        let Some(frames) = &self.frames else {
            return Err(RecordingError::Mismatch {
                path: self.path.clone(),
                object: layout::FRAMES.into(),
                detail: "compressed frames given to a recording made without raw frames".into(),
            });
        };
        for (f, chunk) in chunks {
            let f = *f as usize;
            if f >= self.written.len() {
                continue;
            }
            let offset = [(f / self.nav.cols) as u64, (f % self.nav.cols) as u64, 0, 0];
            crate::bslz4::write_chunk(frames, &offset, chunk).map_err(|source| {
                RecordingError::Hdf5 {
                    path: self.path.clone(),
                    object: layout::FRAMES.into(),
                    during: format!("writing frame {f} as it came (bitshuffle-LZ4 chunk)"),
                    source,
                }
            })?;
            self.frames_written += u64::from(self.written[f] == 0);
            self.written[f] = 1;
            self.bytes_written += self.frame_bytes;
        }
        self.dirty = true;
        Ok(())
    }

    /// Appends sparse rows (in frame order through the reorder buffer).
    fn write_csr(&mut self, rows: stemflow_core::csr::CsrRows) -> Result<(), RecordingError> {
        let Some(csr) = self.csr.as_mut() else {
            return Err(RecordingError::Mismatch {
                path: self.path.clone(),
                object: crate::csr::CSR_GROUP.into(),
                detail: format!(
                    "sparse rows of frames {}..+{} given to a recording of dense frames",
                    rows.first_frame,
                    rows.n_frames()
                ),
            });
        };
        let before = csr.nnz();
        self.frames_written += csr.write(rows, &mut self.written)?;
        self.bytes_written += (csr.nnz() - before) * 8;
        self.dirty = true;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), RecordingError> {
        if let Some(csr) = self.csr.as_mut() {
            csr.flush()?;
        }
        let p = &self.path;
        let shape = (self.nav.rows, self.nav.cols);
        let view = ndarray::ArrayView2::from_shape(shape, &self.written[..])
            .map_err(|e| h5(p, layout::VALIDITY, "writing the frames-written map")(e.into()))?;
        self.validity.write(view).map_err(h5(
            p,
            layout::VALIDITY,
            "writing the frames-written map",
        ))?;
        self.file.flush().map_err(h5(p, "/", "flushing the file"))?;
        self.dirty = false;
        self.last_flush = Instant::now();
        Ok(())
    }
}

/// Copies pixels `px` of `data` into `dst` as little-endian bytes (the file's byte order
/// for the chunks we compress).
pub(crate) fn copy_le(dst: &mut [u8], data: &TileData, px: std::ops::Range<usize>) {
    macro_rules! le {
        ($v:expr, $n:expr) => {
            for (d, v) in dst.chunks_exact_mut($n).zip(&$v[px]) {
                d.copy_from_slice(&v.to_le_bytes());
            }
        };
    }
    match data {
        TileData::U8(v) => dst.copy_from_slice(&v[px]),
        TileData::U16(v) => le!(v, 2),
        TileData::U32(v) => le!(v, 4),
        TileData::U64(v) => le!(v, 8),
        TileData::F32(v) => le!(v, 4),
        TileData::F64(v) => le!(v, 8),
    }
}

fn create_frames<T: H5Type>(
    data: &Group,
    path: &Path,
    spec: &RecordingSpec,
) -> Result<Dataset, RecordingError> {
    let (nav, sig) = (spec.nav_shape, spec.sig_shape);
    let chunk = layout::chunk_shape(nav, sig, spec.frames_per_chunk);
    let builder = data
        .new_dataset::<T>()
        .shape((nav.rows, nav.cols, sig.rows, sig.cols))
        .chunk((chunk[0], chunk[1], chunk[2], chunk[3]));
    let builder = match spec.compression {
        Compression::None => builder
            // Every chunk gets its place in the file now and the chunk cache is off, so
            // writing pixels goes straight to those places and never touches the file's
            // metadata (crash safety, and no read-modify-write of partial chunks). The
            // file is sparse until written.
            .alloc_time(Some(hdf5::dataset::AllocTime::Early))
            .fill_time(hdf5::dataset::FillTime::Never)
            .chunk_cache(521, 0, 1.0),
        Compression::Bslz4 => {
            crate::bslz4::register()?;
            // Chunks come compressed from the writer (direct chunk write); the filter is
            // declared so that readers decode them. Allocated as written.
            builder
                .add_filter(
                    crate::bslz4::FILTER_ID,
                    &[0, 4, spec.dtype.size() as u32, 0, crate::bslz4::LZ4_FLAG],
                )
                .chunk_cache(521, 0, 1.0)
        }
        // Chunks come compressed (shuffle, then deflate) from the pipeline's workers or the
        // writer (direct chunk write); the filters are declared, in that order, so that
        // readers decode them. Allocated as written.
        Compression::Deflate { level } => builder.shuffle().deflate(level).chunk_cache(521, 0, 1.0),
    };
    builder
        .create("frames")
        .map_err(h5(path, layout::FRAMES, "creating the dataset"))
}

fn write_block<T: H5Type>(
    frames: &Dataset,
    data: &[T],
    b: Block,
    sig: SigShape,
) -> hdf5::Result<()> {
    let frame_len = sig.len();
    let pixels = &data[b.offset * frame_len..(b.offset + b.frames()) * frame_len];
    let view = ArrayView4::from_shape((b.rows, b.cols, sig.rows, sig.cols), pixels)?;
    frames.write_slice(view, (b.row..b.row + b.rows, b.col..b.col + b.cols, .., ..))
}

/// The writer thread: writes tiles as they come, flushes every `flush_interval` and on
/// request; when the queue closes it flushes and hands the writer back.
fn run_writer(
    mut w: Writer,
    jobs: crossbeam_channel::Receiver<Job>,
) -> Result<Writer, RecordingError> {
    loop {
        match jobs.recv_timeout(w.until_flush()) {
            Ok(Job::Tile { first, n, data }) => {
                w.write(first, n, &data)?;
                drop(data); // back to the pool before the (slower) flush
                w.maybe_flush()?;
            }
            Ok(Job::Chunks(chunks)) => {
                w.write_chunks(&chunks)?;
                w.maybe_flush()?;
            }
            Ok(Job::Csr(rows)) => {
                w.write_csr(rows)?;
                w.maybe_flush()?;
            }
            Ok(Job::Flush(reply)) => {
                let r = w.flush();
                let _ = reply.send(r.is_ok());
                r?;
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => w.maybe_flush()?,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                w.flush()?;
                return Ok(w);
            }
        }
    }
}

// ---- end-of-run objects ----

fn write_validity(w: &Writer, validity: &FrameValidity) -> Result<(), RecordingError> {
    let p = &w.path;
    if validity.len() != w.nav.len() {
        return Err(RecordingError::Mismatch {
            path: p.clone(),
            object: layout::VALIDITY.into(),
            detail: format!(
                "validity map has {} frames, the scan {} has {}",
                validity.len(),
                w.nav,
                w.nav.len()
            ),
        });
    }
    let during = "writing the validity map";
    let view = ndarray::ArrayView2::from_shape((w.nav.rows, w.nav.cols), validity.codes())
        .map_err(|e| h5(p, layout::VALIDITY, during)(e.into()))?;
    w.validity
        .write(view)
        .map_err(h5(p, layout::VALIDITY, during))?;
    let v = &w.validity;
    set_attr(v, p, "frames_expected", &(validity.len() as u64))?;
    set_attr(v, p, "frames_received", &(validity.received() as u64))?;
    set_attr(v, p, "frames_lost", &(validity.missing() as u64))?;
    set_attr(v, p, "frames_damaged", &(validity.damaged() as u64))?;
    set_attr(
        v,
        p,
        "frames_not_acquired",
        &(validity.not_acquired() as u64),
    )?;
    set_attr_str(v, p, "state", "final: the acquisition's validity map")?;
    Ok(())
}

fn write_results(file: &File, p: &Path, results: &[UdfResults]) -> Result<(), RecordingError> {
    let root =
        file.create_group("entry/results")
            .map_err(h5(p, layout::RESULTS, "creating the group"))?;
    set_attr_str(&root, p, "NX_class", "NXcollection")?;
    for udf in results {
        let udf_name = layout::link_name(&udf.udf);
        let udf_path = format!("{}/{udf_name}", layout::RESULTS);
        let g =
            root.create_group(&udf_name)
                .map_err(h5(p, &udf_path, "creating the UDF's group"))?;
        set_attr_str(&g, p, "NX_class", "NXcollection")?;
        if !udf.params.is_empty() {
            set_attr_str(&g, p, "params", &udf.params)?;
        }
        for buf in &udf.buffers {
            let obj = format!("{udf_path}/{}", layout::link_name(&buf.name));
            let expected: usize = buf.shape.iter().product();
            if buf.data.len() != expected {
                return Err(RecordingError::Mismatch {
                    path: p.to_path_buf(),
                    object: obj,
                    detail: format!(
                        "buffer of shape {:?} needs {expected} values, has {}",
                        buf.shape,
                        buf.data.len()
                    ),
                });
            }
            // Stored in the buffer's declared type; integer buffers mark positions with no
            // value (NaN in the merged f64s) with the type's fill value, named in the
            // `_FillValue` attribute (the CF convention).
            let name = layout::link_name(&buf.name);
            macro_rules! typed {
                ($v:expr) => {{
                    let view = ArrayViewD::from_shape(IxDyn(&buf.shape), &$v[..])
                        .map_err(|e| h5(p, &obj, "writing the result buffer")(e.into()))?;
                    let ds = g
                        .new_dataset_builder()
                        .with_data(view)
                        .create(name.as_str())
                        .map_err(h5(p, &obj, "writing the result buffer"))?;
                    if let Some(fill) = buf.dtype.int_fill() {
                        let fill = fill.clamp(i64::MIN as i128, u64::MAX as i128);
                        let attr = format!("{obj}@_FillValue");
                        if fill < 0 {
                            ds.new_attr::<i64>()
                                .create("_FillValue")
                                .and_then(|a| a.write_scalar(&(fill as i64)))
                                .map_err(h5(p, &attr, "writing the attribute"))?;
                        } else {
                            ds.new_attr::<u64>()
                                .create("_FillValue")
                                .and_then(|a| a.write_scalar(&(fill as u64)))
                                .map_err(h5(p, &attr, "writing the attribute"))?;
                        }
                    }
                    ds
                }};
            }
            let ds = match buf.typed() {
                TypedValues::F64(v) => typed!(v),
                TypedValues::F32(v) => typed!(v),
                TypedValues::I64(v) => typed!(v),
                TypedValues::I32(v) => typed!(v),
                TypedValues::U64(v) => typed!(v),
                TypedValues::U32(v) => typed!(v),
                TypedValues::U16(v) => typed!(v),
                TypedValues::U8(v) => typed!(v),
            };
            let kind = match buf.kind {
                BufferKind::Nav => "nav",
                BufferKind::Sig => "sig",
                BufferKind::Single => "single",
            };
            set_attr_str(&ds, p, "kind", kind)?;
            set_attr_str(&ds, p, "unit", &buf.unit)?;
            set_attr_str(&ds, p, "units", &buf.unit)?;
            set_attr_str(&ds, p, "name", &buf.name)?;
        }
    }
    Ok(())
}

/// The metadata known when the recording opens, as `/entry/run_metadata_json`, flushed.
fn write_opening_metadata(file: &File, p: &Path, md: &RunMetadata) -> Result<(), RecordingError> {
    let entry = group(file, p, layout::ENTRY)?;
    let json = serde_json::to_string_pretty(md).map_err(|source| RecordingError::Json {
        path: p.to_path_buf(),
        object: layout::METADATA_JSON.into(),
        source,
    })?;
    write_str_dataset(&entry, p, "run_metadata_json", &json)?;
    file.flush()
        .map_err(h5(p, "/", "flushing the opening metadata"))
}

fn write_metadata(
    file: &File,
    p: &Path,
    md: &RunMetadata,
    run_record: Option<&serde_json::Value>,
) -> Result<(), RecordingError> {
    let entry = group(file, p, layout::ENTRY)?;
    let version = if md.software_version.is_empty() {
        stemflow_core::SOFTWARE_VERSION
    } else {
        &md.software_version
    };
    // Created at `create` with this build's version; the metadata's wins (offline copies).
    let sv =
        entry
            .dataset("software_version")
            .map_err(h5(p, "/entry/software_version", "opening"))?;
    sv.write_scalar(&vlen(version))
        .map_err(h5(p, "/entry/software_version", "writing"))?;
    write_str_dataset(&entry, p, "start_time", &md.start_time)?;
    write_str_dataset(&entry, p, "stop_time", &md.stop_time)?;
    write_str_dataset(&entry, p, "mode", &md.mode)?;
    let json = serde_json::to_string_pretty(md).map_err(|source| RecordingError::Json {
        path: p.to_path_buf(),
        object: layout::METADATA_JSON.into(),
        source,
    })?;
    // Written when the recording opened (`create_with_metadata`): replaced, not added.
    if entry.link_exists("run_metadata_json") {
        entry.unlink("run_metadata_json").map_err(h5(
            p,
            layout::METADATA_JSON,
            "replacing the opening metadata",
        ))?;
    }
    write_str_dataset(&entry, p, "run_metadata_json", &json)?;
    if let Some(rr) = run_record {
        let json = serde_json::to_string_pretty(rr).map_err(|source| RecordingError::Json {
            path: p.to_path_buf(),
            object: layout::RUN_RECORD_JSON.into(),
            source,
        })?;
        write_str_dataset(&entry, p, "run_record_json", &json)?;
    }

    let inst = entry.create_group("instrument").map_err(h5(
        p,
        layout::INSTRUMENT,
        "creating the group",
    ))?;
    set_attr_str(&inst, p, "NX_class", "NXinstrument")?;

    let det = inst.create_group("detector").map_err(h5(
        p,
        "/entry/instrument/detector",
        "creating the group",
    ))?;
    set_attr_str(&det, p, "NX_class", "NXdetector")?;
    write_str_dataset(&det, p, "name", &md.detector)?;
    if let Some(hdr) = &md.detector_header {
        write_str_dataset(&det, p, "header", hdr)?;
    }
    if let Some(dt) = md.dtype {
        write_str_dataset(&det, p, "dtype", dt.name())?;
    }
    if let Some(s) = md.sig_shape {
        write_u64_array(
            &det,
            p,
            "sig_shape",
            &[s.rows as u64, s.cols as u64],
            "pixels",
        )?;
    }
    let settings = det.create_group("settings").map_err(h5(
        p,
        "/entry/instrument/detector/settings",
        "creating the group",
    ))?;
    set_attr_str(&settings, p, "NX_class", "NXcollection")?;
    for (name, value) in &md.detector_settings {
        set_attr_str(&settings, p, name, value)?;
    }

    if let Some(m) = &md.microscope {
        let g = inst.create_group("microscope").map_err(h5(
            p,
            "/entry/instrument/microscope",
            "creating the group",
        ))?;
        set_attr_str(&g, p, "NX_class", "NXcollection")?;
        write_f64(&g, p, "high_tension", m.high_tension_v, "V")?;
        write_f64(&g, p, "camera_length", m.camera_length_m, "m")?;
        write_f64(
            &g,
            p,
            "convergence_semi_angle",
            m.convergence_angle_rad,
            "rad",
        )?;
        write_f64(&g, p, "magnification", m.magnification, "1")?;
        write_f64(&g, p, "defocus", m.defocus_m, "m")?;
        write_u8(&g, p, "beam_blanked", u8::from(m.beam_blanked))?;
    }

    let nav = md.scan.as_ref().map(|s| s.nav_shape).or(md.nav_shape);
    if md.scan.is_some() || nav.is_some() {
        let g = inst.create_group("scan").map_err(h5(
            p,
            "/entry/instrument/scan",
            "creating the group",
        ))?;
        set_attr_str(&g, p, "NX_class", "NXcollection")?;
        if let Some(n) = nav {
            write_u64_array(
                &g,
                p,
                "nav_shape",
                &[n.rows as u64, n.cols as u64],
                "positions",
            )?;
        }
        if let Some(s) = &md.scan {
            write_f64(&g, p, "dwell_time", s.dwell_time_s, "s")?;
            write_f64(&g, p, "flyback_time", s.flyback_s, "s")?;
            write_f64(&g, p, "duration", s.duration_s(), "s")?;
            let trigger = serde_json::to_value(s.trigger)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| format!("{:?}", s.trigger));
            write_str_dataset(&g, p, "trigger", &trigger)?;
        }
    }
    Ok(())
}

// ---- small HDF5 helpers (every error names file and object) ----

/// The HyperSpy signal's title: the file's stem (`recording` for `recording.hspy`).
pub(crate) fn title_of(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "stemflow".into())
}

fn group(file: &File, p: &Path, name: &str) -> Result<Group, RecordingError> {
    file.group(name).map_err(h5(p, name, "opening the group"))
}

fn obj_path(loc: &Location, name: &str) -> String {
    format!("{}@{name}", loc.name())
}

/// A variable-length UTF-8 string; NUL characters (which HDF5 strings cannot hold) are
/// dropped.
pub(crate) fn vlen(s: &str) -> VarLenUnicode {
    let clean: String = s.chars().filter(|&c| c != '\0').collect();
    clean.parse().unwrap_or_default()
}

pub(crate) fn set_attr<T: H5Type>(
    loc: &Location,
    p: &Path,
    name: &str,
    value: &T,
) -> Result<(), RecordingError> {
    let obj = obj_path(loc, name);
    let attr = match loc.attr(name) {
        Ok(a) => a,
        Err(_) => {
            loc.new_attr::<T>()
                .create(name)
                .map_err(h5(p, &obj, "creating the attribute"))?
        }
    };
    attr.write_scalar(value)
        .map_err(h5(p, &obj, "writing the attribute"))
}

pub(crate) fn set_attr_str(
    loc: &Location,
    p: &Path,
    name: &str,
    value: &str,
) -> Result<(), RecordingError> {
    set_attr(loc, p, name, &vlen(value))
}

fn write_str_dataset(g: &Group, p: &Path, name: &str, value: &str) -> Result<(), RecordingError> {
    let obj = format!("{}/{name}", g.name());
    let ds = g.new_dataset::<VarLenUnicode>().create(name).map_err(h5(
        p,
        &obj,
        "creating the string dataset",
    ))?;
    ds.write_scalar(&vlen(value))
        .map_err(h5(p, &obj, "writing the string"))
}

fn write_f64(
    g: &Group,
    p: &Path,
    name: &str,
    value: f64,
    units: &str,
) -> Result<(), RecordingError> {
    let obj = format!("{}/{name}", g.name());
    let ds = g
        .new_dataset::<f64>()
        .create(name)
        .map_err(h5(p, &obj, "creating the dataset"))?;
    ds.write_scalar(&value)
        .map_err(h5(p, &obj, "writing the value"))?;
    set_attr_str(&ds, p, "units", units)
}

fn write_u8(g: &Group, p: &Path, name: &str, value: u8) -> Result<(), RecordingError> {
    let obj = format!("{}/{name}", g.name());
    let ds = g
        .new_dataset::<u8>()
        .create(name)
        .map_err(h5(p, &obj, "creating the dataset"))?;
    ds.write_scalar(&value)
        .map_err(h5(p, &obj, "writing the value"))
}

fn write_u64_array(
    g: &Group,
    p: &Path,
    name: &str,
    values: &[u64],
    units: &str,
) -> Result<(), RecordingError> {
    let obj = format!("{}/{name}", g.name());
    let ds = g
        .new_dataset_builder()
        .with_data(values)
        .create(name)
        .map_err(h5(p, &obj, "writing the dataset"))?;
    set_attr_str(&ds, p, "units", units)
}
