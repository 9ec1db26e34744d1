//! The work a worker does on one partition ([`Job`]): decoding a live stack chunk by chunk
//! into a pooled tile while the UDFs reduce it, or running the UDFs on an offline tile;
//! and the report it sends back ([`Done`]).

use super::config::RunConfig;
use super::error::ProcessingError;
use super::shared::Shared;
use crate::udf::TileView;
use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use stemflow_core::DType;
use stemflow_core::csr::{CsrRows, CsrStack};
use stemflow_core::frame::{PixelsMut, RawStack, Tile, TileData};

/// A tile as it travels to a worker and back.
pub(super) enum Slot<'a> {
    /// From the coordinator's free list; goes back to it.
    Pooled(Tile),
    /// Given by a reader; dropped after the sink.
    Owned(Tile),
    /// Lent by the caller.
    Borrowed(&'a Tile),
}

impl Slot<'_> {
    /// The tile, wherever it comes from.
    pub(super) fn tile(&self) -> &Tile {
        match self {
            Slot::Pooled(t) | Slot::Owned(t) => t,
            Slot::Borrowed(t) => t,
        }
    }
}

/// A worker's report on one stack or tile.
#[derive(Default)]
pub(super) struct Done<'a> {
    /// The tile, back for the sink and then the free list (`None` after a panic).
    pub(super) slot: Option<Slot<'a>>,
    /// Whether the tile holds frames for the sink.
    pub(super) to_sink: bool,
    /// Frames processed.
    pub(super) frames: u64,
    /// Acquisition indices of damaged frames.
    pub(super) damaged: Vec<u64>,
    /// Frames beyond the scan.
    pub(super) out_of_range: u64,
    /// Frames outside the ROI.
    pub(super) outside_roi: u64,
    /// What stops the run (a stack decoder of the wrong shape or type).
    pub(super) error: Option<ProcessingError>,
    /// A UDF's panic, resumed on the coordinating thread at the end of the run.
    pub(super) panic: Option<Box<dyn Any + Send>>,
    /// The stack the tile was decoded from, kept for a sink that stores its payloads
    /// ([`Shared::raw_filter`]); dropped (its buffer back to the pool) after the sink.
    pub(super) raw: Option<Box<RawStack>>,
    /// The tile's frames encoded for the sink ([`Shared::encoder`]), damaged ones left out.
    pub(super) encoded: Option<stemflow_core::sink::EncodedFrames>,
    /// The first encoder error, which ends the run as the sink's.
    pub(super) encode_error: Option<String>,
    /// Sparse rows processed (their frames, damaged ones empty), for the sink and then the
    /// coordinator's free list; the slot's tile is then unused.
    pub(super) rows: Option<CsrRows>,
}

impl Done<'_> {
    /// The report of a job that panicked with `payload`.
    pub(super) fn panicked(payload: Box<dyn Any + Send>) -> Self {
        Self {
            panic: Some(payload),
            ..Self::default()
        }
    }
}

/// Frames of a tile at `first` with `n` frames that lie inside a scan of `nav_len`.
fn frames_in_scan(first: u64, n: usize, nav_len: usize) -> usize {
    let room = (nav_len as u64).saturating_sub(first);
    (n as u64).min(room) as usize
}

/// Shrinks `tile` to its first `keep` frames, keeping the allocation.
fn truncate(tile: &mut Tile, keep: usize) {
    if keep < tile.n_frames {
        tile.n_frames = keep;
        tile.data.resize(keep * tile.sig_shape.len());
    }
}

/// Sets every pixel of `p` to 0 (a damaged frame's).
fn zero(p: PixelsMut<'_>) {
    match p {
        PixelsMut::U8(s) => s.fill(0),
        PixelsMut::U16(s) => s.fill(0),
        PixelsMut::U32(s) => s.fill(0),
        PixelsMut::U64(s) => s.fill(0),
        PixelsMut::F32(s) => s.fill(0.0),
        PixelsMut::F64(s) => s.fill(0.0),
    }
}

/// Decodes the stack chunk by chunk into `tile` (resized to the stack's frames inside the
/// scan), each chunk processed by the UDFs right after it is decoded, while it is still in
/// cache: the decoded frames are written once and never read back from memory. A frame
/// that fails to decode (or lies beyond the stack's buffer) is zeroed and reported
/// damaged; the others go on.
fn live_job(shared: &Shared, raw: RawStack, mut tile: Tile) -> Done<'static> {
    let mut done = Done::default();
    let cfg = &shared.cfg;
    let dec = &raw.decoder;
    if dec.sig_shape() != cfg.sig_shape || dec.dtype() != cfg.dtype {
        done.error = Some(ProcessingError::Mismatch {
            source_kind: "stack decoder",
            first_frame: raw.first_frame,
            expected_sig: cfg.sig_shape,
            expected_dtype: cfg.dtype,
            observed_sig: dec.sig_shape(),
            observed_dtype: dec.dtype(),
        });
        done.slot = Some(Slot::Pooled(tile));
        return done;
    }
    let keep = frames_in_scan(raw.first_frame, raw.len(), cfg.nav_shape.len());
    done.out_of_range = (raw.len() - keep) as u64;
    let n = cfg.sig_shape.len();
    tile.first_frame = raw.first_frame;
    tile.n_frames = keep;
    tile.sig_shape = cfg.sig_shape;
    if tile.data.dtype() == cfg.dtype {
        tile.data.resize(keep * n);
    } else {
        tile.data = TileData::zeros(cfg.dtype, keep * n);
    }
    let buf_len = raw.buf.len();
    let keep_raw =
        shared.raw_filter.is_some() && raw.decoder.hdf5_chunk_filter() == shared.raw_filter;
    let mut damaged = Vec::new();
    let mut first_error = None;
    // Decoded and reduced chunk by chunk, so decoded frames are still in cache when the
    // UDFs read them; with a partition UDF in the run, the stack is its partition and goes
    // to the UDFs whole once decoded.
    let step = if shared.whole_stacks {
        keep
    } else {
        shared.chunk_frames
    };
    let mut f = 0;
    while f < keep {
        let m = step.min(keep - f);
        let chunk_damaged = damaged.len();
        for i in f..f + m {
            let r = &raw.frames[i];
            let out = tile.data.pixels_mut(i * n..(i + 1) * n);
            let result = match r.offset.checked_add(r.len) {
                Some(end) if end <= buf_len => dec.decode_into(&raw.buf[r.offset..end], out),
                _ => Err(stemflow_core::frame::DecodeError::Malformed {
                    device: format!("{dec:?}"),
                    detail: format!(
                        "frame payload at bytes {}..+{} lies beyond the {buf_len}-byte stack buffer",
                        r.offset, r.len
                    ),
                }),
            };
            if let Err(e) = result {
                zero(tile.data.pixels_mut(i * n..(i + 1) * n));
                damaged.push(i);
                first_error.get_or_insert(e);
            }
        }
        let view = TileView::of(&tile).frames(f..f + m);
        let local: Vec<usize> = damaged[chunk_damaged..].iter().map(|&i| i - f).collect();
        done.outside_roi += shared.process(&view, &local);
        // Encoded for the sink while the chunk is in cache (not when the sink stores the
        // detector's own payloads).
        if !keep_raw && let Some(enc) = &shared.encoder {
            encode_frames(
                &**enc,
                &tile,
                f..f + m,
                &damaged[chunk_damaged..],
                &mut done,
            );
        }
        f += m;
    }
    if let Some(e) = first_error {
        tracing::warn!(
            first_frame = raw.first_frame,
            damaged = damaged.len(),
            "damaged frames in stack: {e}"
        );
    }
    if keep_raw {
        done.raw = Some(Box::new(raw));
    } else {
        drop(raw);
    }
    done.frames = (keep - damaged.len()) as u64 - done.outside_roi;
    done.damaged = damaged
        .iter()
        .map(|&i| tile.first_frame + i as u64)
        .collect();
    done.to_sink = keep > 0;
    done.slot = Some(Slot::Pooled(tile));
    done
}

/// Checks an offline tile against `cfg`, truncates an owned or pooled one to the scan
/// (keeping its allocation); returns it, the number of its frames inside the scan, and the
/// number beyond it.
pub(super) fn admit<'a>(
    mut slot: Slot<'a>,
    cfg: &RunConfig,
) -> Result<(Slot<'a>, usize, u64), ProcessingError> {
    let t = slot.tile();
    if t.sig_shape != cfg.sig_shape || t.data.dtype() != cfg.dtype {
        return Err(ProcessingError::Mismatch {
            source_kind: "tile",
            first_frame: t.first_frame,
            expected_sig: cfg.sig_shape,
            expected_dtype: cfg.dtype,
            observed_sig: t.sig_shape,
            observed_dtype: t.data.dtype(),
        });
    }
    let expected = t.n_frames * t.sig_shape.len();
    if t.data.len() != expected {
        return Err(ProcessingError::TileLength {
            first_frame: t.first_frame,
            n_frames: t.n_frames,
            expected,
            observed: t.data.len(),
        });
    }
    let keep = frames_in_scan(t.first_frame, t.n_frames, cfg.nav_shape.len());
    let dropped = (t.n_frames - keep) as u64;
    if let Slot::Owned(t) | Slot::Pooled(t) = &mut slot {
        truncate(t, keep);
    }
    Ok((slot, keep, dropped))
}

/// Runs the UDFs on the first `keep` frames of an admitted offline tile.
fn offline_job<'a>(shared: &Shared, slot: Slot<'a>, keep: usize) -> Done<'a> {
    let outside_roi = shared.process(&TileView::of(slot.tile()).frames(0..keep), &[]);
    let mut done = Done {
        to_sink: keep > 0,
        frames: keep as u64 - outside_roi,
        outside_roi,
        ..Done::default()
    };
    if let Some(enc) = &shared.encoder {
        encode_frames(&**enc, slot.tile(), 0..keep, &[], &mut done);
    }
    done.slot = Some(slot);
    done
}

/// Encodes frames `range` of `tile` (indices within the tile) for the sink into
/// `done.encoded`, leaving out the `damaged` ones (indices within the tile).
fn encode_frames(
    enc: &dyn stemflow_core::sink::FrameEncoder,
    tile: &Tile,
    range: std::ops::Range<usize>,
    damaged: &[usize],
    done: &mut Done<'_>,
) {
    let out = done.encoded.get_or_insert_with(Vec::new);
    for i in range {
        if damaged.contains(&i) {
            continue;
        }
        let mut bytes = Vec::new();
        match enc.encode(tile, i, &mut bytes) {
            Ok(()) => out.push((tile.first_frame + i as u64, bytes)),
            Err(e) => {
                done.encode_error.get_or_insert(e);
                return;
            }
        }
    }
}

/// Normalises a live sparse stack into `rows` (when given) and runs the UDFs on the rows
/// inside the scan. A chunk whose arrays are malformed ([`stemflow_core::csr::CsrError`])
/// becomes empty rows reported damaged; the others go on.
fn csr_job(
    shared: &Shared,
    stack: Option<CsrStack>,
    mut rows: CsrRows,
    tile: Tile,
) -> Done<'static> {
    let mut done = Done {
        slot: Some(Slot::Pooled(tile)),
        ..Done::default()
    };
    let cfg = &shared.cfg;
    let sig = stack
        .as_ref()
        .map_or(rows.sig_shape, |s| s.format.sig_shape);
    let first = stack.as_ref().map_or(rows.first_frame, |s| s.first_frame);
    if sig != cfg.sig_shape || cfg.dtype != DType::U32 {
        done.error = Some(ProcessingError::Mismatch {
            source_kind: "sparse stack",
            first_frame: first,
            expected_sig: cfg.sig_shape,
            expected_dtype: cfg.dtype,
            observed_sig: sig,
            observed_dtype: DType::U32,
        });
        done.rows = Some(rows);
        return done;
    }
    let mut damaged = Vec::new();
    if let Some(st) = stack {
        rows.clear(st.first_frame, sig);
        let mut first_error = None;
        for (i, c) in st.chunks.iter().enumerate() {
            let at = rows.n_frames();
            if let Err(e) = rows.push_chunk(&st.format, c, st.payload(i)) {
                rows.push_empty(c.frames as usize);
                damaged.extend(at..at + c.frames as usize);
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            tracing::warn!(
                first_frame = st.first_frame,
                damaged = damaged.len(),
                "damaged CSR chunks in stack: {e}"
            );
        }
        // The stack's buffer goes back to the receiver's pool before the UDFs run.
        drop(st);
    }
    let n = rows.n_frames();
    let keep = frames_in_scan(rows.first_frame, n, cfg.nav_shape.len());
    if keep < n {
        let end = rows.indptr[keep] as usize;
        rows.indptr.truncate(keep + 1);
        rows.indices.truncate(end);
        rows.values.truncate(end);
        damaged.retain(|&i| i < keep);
    }
    done.out_of_range = (n - keep) as u64;
    done.outside_roi = shared.process_csr(&rows, &damaged);
    done.frames = (keep - damaged.len()) as u64 - done.outside_roi;
    done.damaged = damaged
        .iter()
        .map(|&i| rows.first_frame + i as u64)
        .collect();
    done.to_sink = keep > 0;
    done.rows = Some(rows);
    done
}

/// One unit of work for a worker: a partition.
pub(super) enum Job<'a> {
    /// A live sparse stack to normalise into the rows (reused), or rows read offline
    /// (`None`), and the pooled tile that comes back with them unused.
    Sparse(Option<CsrStack>, CsrRows, Tile),
    /// A live stack, to decode into the pooled tile and process.
    Live(RawStack, Tile),
    /// An admitted offline tile and the number of its frames inside the scan.
    Offline(Slot<'a>, usize),
}

impl<'a> Job<'a> {
    /// Runs the job on the calling worker; a panic in a UDF becomes the report's.
    pub(super) fn run(self, shared: &Shared) -> Done<'a> {
        catch_unwind(AssertUnwindSafe(|| match self {
            Job::Live(raw, tile) => live_job(shared, raw, tile),
            Job::Sparse(stack, rows, tile) => csr_job(shared, stack, rows, tile),
            Job::Offline(slot, keep) => offline_job(shared, slot, keep),
        }))
        .unwrap_or_else(Done::panicked)
    }
}
