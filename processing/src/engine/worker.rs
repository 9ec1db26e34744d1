//! A worker thread's partition ([`Worker`]): one task per UDF, the nav values staged since
//! the last merge, and how each chunk of frames goes through the tasks (cache-sized
//! pieces, row bands, the fused pass).

use super::fused_tasks::FusedTasks;
use super::sparse::{CsrPlan, TaskCsr};
use super::summary::Snapshot;
use crate::udf::{
    BandRead, BufferDecl, Granularity, MAX_BAND_FRAMES, PartitionTask, TileView, UdfMeta,
};
use std::ops::Range;
use stemflow_core::csr::CsrRows;
use stemflow_core::frame::{PixelsRef, Tile};
use stemflow_core::result::BufferKind;

/// Where a nav buffer's values sit in a frame's staged row.
#[derive(Debug)]
pub(super) struct NavSlot {
    /// Index of the buffer in the UDF's declaration order.
    buffer: usize,
    /// Offset of its first value in the frame's row.
    offset: usize,
    /// Values per frame (product of its extra shape).
    width: usize,
}

/// The nav layout of one UDF.
#[derive(Debug)]
pub(super) struct UdfLayout {
    /// Where each nav buffer's values sit in a frame's staged row.
    pub(super) slots: Vec<NavSlot>,
    /// Staged values per frame.
    pub(super) width: usize,
    /// What its task is fed.
    pub(super) granularity: Granularity,
}

impl UdfLayout {
    /// The layout of a UDF declaring `decls`, fed at `granularity`.
    pub(super) fn new(decls: &[BufferDecl], granularity: Granularity) -> Self {
        let mut slots = Vec::new();
        let mut offset = 0;
        for (buffer, d) in decls.iter().enumerate() {
            if d.kind == BufferKind::Nav {
                let width = d.extra_len();
                slots.push(NavSlot {
                    buffer,
                    offset,
                    width,
                });
                offset += width;
            }
        }
        Self {
            slots,
            width: offset,
            granularity,
        }
    }
}

/// One worker thread's partition: a task per UDF and the nav values staged since the last
/// merge.
pub(super) struct Worker {
    tasks: Vec<Box<dyn PartitionTask>>,
    /// Per UDF: fed in row bands ([`PartitionTask::bands`], tile granularity).
    banded: Vec<bool>,
    /// The banded tasks the fused pass does not take, in the order each band goes
    /// through them: the best reader ([`PartitionTask::band_read`]) first, so it pulls the
    /// band in from memory.
    band_order: Vec<usize>,
    /// As `band_order`, for all banded tasks: a chunk the fused pass could not take.
    band_order_all: Vec<usize>,
    /// The fused pass over u16 chunks, when the run has fusable tasks ([`crate::fused`]).
    fused: Option<FusedTasks>,
    /// True when the best reader among the banded tasks of `band_order` is
    /// [`BandRead::Scattered`]: the engine then reads each band once itself before them
    /// ([`touch`]).
    touch_bands: bool,
    /// As `touch_bands`, for `band_order_all`.
    touch_bands_all: bool,
    /// Rows per band (≥ 1).
    band_rows: usize,
    /// Frames per `process_tile` call for tasks not fed in bands: about
    /// [`CHUNK_BYTES`](super::shared::CHUNK_BYTES) of pixels.
    tile_frames: usize,
    /// `(first_frame, n_frames)` of every run of frames processed since the last merge.
    runs: Vec<(u64, usize)>,
    /// Per UDF: staged nav values, `layout.width` per frame, frames in `runs` order.
    values: Vec<Vec<f64>>,
    /// Scratch: per UDF, where the current tile's values start in `values`.
    starts: Vec<usize>,
    /// Frames processed since the last merge.
    pub(super) frames: u64,
    /// How each task takes sparse rows (CSR, decision 0010).
    csr: CsrPlan,
    /// Sparse rows densified for a run with a task that needs pixels; reused.
    dense: Tile,
    /// Scratch: one task's exact sums over sparse rows.
    sums: Vec<u64>,
}

impl Worker {
    /// A worker running `tasks` (one per UDF, laid out as `layouts`), taking chunks of
    /// `tile_frames` frames for the tasks not fed in bands and bands of `band_rows` rows
    /// for the others; with the fused pass when `fused` allows it and it applies.
    pub(super) fn new(
        meta: &UdfMeta,
        mut tasks: Vec<Box<dyn PartitionTask>>,
        layouts: &[UdfLayout],
        fused: bool,
        band_rows: usize,
        tile_frames: usize,
    ) -> Self {
        let banded: Vec<bool> = tasks
            .iter()
            .zip(layouts)
            .map(|(t, l)| l.granularity == Granularity::Tile && t.bands())
            .collect();
        let reads: Vec<Option<BandRead>> = tasks
            .iter()
            .zip(&banded)
            .map(|(t, &b)| b.then(|| t.band_read()))
            .collect();
        let (band_order_all, touch_bands_all) = band_plan(&reads);
        let fused = if fused {
            FusedTasks::new(meta, &tasks, &banded)
        } else {
            None
        };
        let (band_order, touch_bands) = match &fused {
            Some(fz) => {
                let takes = fz.takes(tasks.len());
                let rest: Vec<Option<BandRead>> = reads
                    .iter()
                    .zip(&takes)
                    .map(|(r, &t)| if t { None } else { *r })
                    .collect();
                band_plan(&rest)
            }
            None => (band_order_all.clone(), touch_bands_all),
        };
        let n = tasks.len();
        let granularity: Vec<Granularity> = layouts.iter().map(|l| l.granularity).collect();
        let csr = CsrPlan::new(&mut tasks, &granularity, meta.sig_shape);
        Self {
            tasks,
            banded,
            band_order,
            band_order_all,
            fused,
            touch_bands,
            touch_bands_all,
            band_rows,
            tile_frames,
            runs: Vec::new(),
            values: vec![Vec::new(); n],
            starts: Vec::with_capacity(n),
            frames: 0,
            csr,
            dense: Tile::zeros(0, 0, meta.sig_shape, stemflow_core::DType::U32),
            sums: Vec::new(),
        }
    }

    /// Runs every task on rows `frames` of sparse `rows`, staging nav values for the next
    /// merge: from the events when every task can take them ([`CsrPlan`]), else densified
    /// `chunk_frames` rows at a time into a reused tile and run as dense frames.
    pub(super) fn process_csr(
        &mut self,
        rows: &CsrRows,
        frames: Range<usize>,
        layouts: &[UdfLayout],
        chunk_frames: usize,
    ) {
        let n = frames.len();
        if n == 0 {
            return;
        }
        if !self.csr.all {
            let mut f = frames.start;
            while f < frames.end {
                let m = chunk_frames.max(1).min(frames.end - f);
                let mut dense = std::mem::replace(
                    &mut self.dense,
                    Tile::zeros(0, 0, rows.sig_shape, stemflow_core::DType::U32),
                );
                rows.densify_into(f..f + m, &mut dense);
                self.process(&TileView::of(&dense), layouts, chunk_frames);
                self.dense = dense;
                f += m;
            }
            return;
        }
        let first = rows.first_frame + frames.start as u64;
        self.runs.push((first, n));
        self.starts.clear();
        for (vals, layout) in self.values.iter_mut().zip(layouts) {
            self.starts.push(vals.len());
            vals.resize(vals.len() + n * layout.width, f64::NAN);
        }
        // take_linear reads only the sums; the view gives the frames' range and shape.
        let view = TileView {
            first_frame: first,
            n_frames: n,
            sig_shape: rows.sig_shape,
            pixels: PixelsRef::U32(&[]),
        };
        for (u, task) in self.tasks.iter_mut().enumerate() {
            match &self.csr.tasks[u] {
                TaskCsr::Rows => {
                    let w = layouts[u].width;
                    let base = self.starts[u];
                    let nav = &mut self.values[u][base..base + n * w];
                    nav.fill(0.0);
                    task.process_csr(rows, frames.clone(), nav);
                }
                TaskCsr::Linear { terms, k } => {
                    self.csr
                        .linear_sums(terms, *k, rows, frames.clone(), &mut self.sums);
                    let w = layouts[u].width;
                    let base = self.starts[u];
                    let nav = &mut self.values[u][base..base + n * w];
                    nav.fill(0.0);
                    task.take_linear(&view, &self.sums, nav);
                }
                TaskCsr::Dense => {}
            }
        }
        self.frames += n as u64;
    }

    /// Runs every task on `view` (frames to process, all of them), staging nav values for
    /// the next merge; tasks of tile granularity take it in chunks of `chunk_frames`.
    pub(super) fn process(
        &mut self,
        view: &TileView<'_>,
        layouts: &[UdfLayout],
        chunk_frames: usize,
    ) {
        let n = view.n_frames;
        if n == 0 {
            return;
        }
        self.runs.push((view.first_frame, n));
        self.starts.clear();
        for (vals, layout) in self.values.iter_mut().zip(layouts) {
            self.starts.push(vals.len());
            vals.resize(vals.len() + n * layout.width, f64::NAN);
        }
        for (u, task) in self.tasks.iter_mut().enumerate() {
            if layouts[u].granularity == Granularity::Partition {
                let w = layouts[u].width;
                let base = self.starts[u];
                task.process_partition(view, &mut self.values[u][base..base + n * w]);
            }
        }
        let mut f = 0;
        while f < n {
            let m = chunk_frames.min(n - f);
            let chunk = view.frames(f..f + m);
            let in_bands = m <= MAX_BAND_FRAMES;
            if in_bands {
                self.bands(view, f, &chunk, layouts);
            }
            // The other tile tasks take cache-sized pieces of the chunk.
            let mut g = 0;
            while g < m {
                let k = self.tile_frames.min(m - g);
                let piece = chunk.frames(g..g + k);
                for (u, task) in self.tasks.iter_mut().enumerate() {
                    if (in_bands && self.banded[u]) || layouts[u].granularity != Granularity::Tile {
                        continue;
                    }
                    let w = layouts[u].width;
                    let base = self.starts[u] + (f + g) * w;
                    task.process_tile(&piece, &mut self.values[u][base..base + k * w]);
                }
                g += k;
            }
            f += m;
        }
        self.frames += n as u64;
    }

    /// Feeds the band-capable tasks `chunk` (frames `f..` of the current view) band by
    /// band: every such task reads a band while it is in L1, and the rows after it stream
    /// in meanwhile.
    /// `chunk` is frames `f..` of `view`; the fused pass, if any, takes its tasks first
    /// (and prefetches from the frames of `view` after the chunk).
    fn bands(
        &mut self,
        view: &TileView<'_>,
        f: usize,
        chunk: &TileView<'_>,
        layouts: &[UdfLayout],
    ) {
        if !self.banded.iter().any(|&b| b) {
            return;
        }
        let m = chunk.n_frames;
        let slots = |u: usize, starts: &[usize]| {
            let w = layouts[u].width;
            let base = starts[u] + f * w;
            base..base + m * w
        };
        for u in 0..self.tasks.len() {
            if self.banded[u] {
                self.values[u][slots(u, &self.starts)].fill(0.0);
            }
        }
        let fused = match &mut self.fused {
            Some(fz) => fz.run(
                view,
                f,
                chunk,
                &mut self.tasks,
                &mut self.values,
                &self.starts,
                layouts,
            ),
            None => false,
        };
        let (order, touch_bands) = if fused {
            (&self.band_order, self.touch_bands)
        } else {
            (&self.band_order_all, self.touch_bands_all)
        };
        let rows = chunk.sig_shape.rows;
        let mut r = 0;
        while r < rows {
            let r1 = (r + self.band_rows).min(rows);
            if touch_bands {
                touch(chunk, r..r1);
            }
            for &u in order {
                let nav = &mut self.values[u][slots(u, &self.starts)];
                self.tasks[u].process_band(chunk, r..r1, nav);
            }
            r = r1;
        }
        for &u in order {
            self.tasks[u].finish_bands(chunk, &mut self.values[u][slots(u, &self.starts)]);
        }
    }

    /// Writes the staged nav values into `global` at their frames' positions, merges every
    /// task's sig and single buffers (the task resets them), and counts the frames.
    pub(super) fn merge(&mut self, global: &mut Snapshot, layouts: &[UdfLayout]) {
        for (((task, vals), layout), res) in self
            .tasks
            .iter_mut()
            .zip(&mut self.values)
            .zip(layouts)
            .zip(&mut global.results)
        {
            let bufs = &mut res.buffers;
            let mut pos = 0;
            for &(first, n) in &self.runs {
                for i in 0..n {
                    let frame = (first + i as u64) as usize;
                    for slot in &layout.slots {
                        let src = &vals[pos + slot.offset..pos + slot.offset + slot.width];
                        let at = frame * slot.width;
                        bufs[slot.buffer].data[at..at + slot.width].copy_from_slice(src);
                    }
                    pos += layout.width;
                }
            }
            task.merge_into(bufs);
            vals.clear();
        }
        self.runs.clear();
        global.frames_processed += self.frames;
        self.frames = 0;
    }
}

/// The order in which each band goes through the banded tasks (`reads[u]` is `Some` for
/// a banded task `u`): best reader first, ties in the caller's order; and whether the
/// engine reads each band itself first (the best reader is [`BandRead::Scattered`]).
fn band_plan(reads: &[Option<BandRead>]) -> (Vec<usize>, bool) {
    let mut order: Vec<usize> = (0..reads.len()).filter(|&u| reads[u].is_some()).collect();
    // Stable: tasks that read alike keep the caller's order.
    order.sort_by_key(|&u| std::cmp::Reverse(reads[u]));
    let touch = order
        .first()
        .is_some_and(|&u| reads[u] == Some(BandRead::Scattered));
    (order, touch)
}

/// Reads every cache line of rows `rows` of every frame of `chunk`, frame after frame, so
/// that band-capable tasks which skip lines (the virtual detectors' windows) find the band
/// in cache: the hardware prefetcher follows this plain stream at memory speed, but not
/// theirs. One load per 64-byte line; the loads are independent, so many are in flight.
fn touch(chunk: &TileView<'_>, rows: Range<usize>) {
    fn lines<P: Copy>(
        px: &[P],
        chunk: &TileView<'_>,
        rows: &Range<usize>,
        bits: fn(P) -> u64,
    ) -> u64 {
        let n = chunk.sig_shape.len();
        let cols = chunk.sig_shape.cols;
        let step = (64 / std::mem::size_of::<P>()).max(1);
        let mut acc = 0u64;
        for f in 0..chunk.n_frames {
            let band = &px[f * n + rows.start * cols..f * n + rows.end * cols];
            for &v in band.iter().step_by(step) {
                acc = acc.wrapping_add(bits(v));
            }
        }
        acc
    }
    let acc = match chunk.pixels {
        PixelsRef::U8(px) => lines(px, chunk, &rows, u64::from),
        PixelsRef::U16(px) => lines(px, chunk, &rows, u64::from),
        PixelsRef::U32(px) => lines(px, chunk, &rows, u64::from),
        PixelsRef::U64(px) => lines(px, chunk, &rows, |v| v),
        PixelsRef::F32(px) => lines(px, chunk, &rows, |v| v.to_bits() as u64),
        PixelsRef::F64(px) => lines(px, chunk, &rows, f64::to_bits),
    };
    // Keeps the loads: their only purpose is their effect on the cache.
    std::hint::black_box(acc);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_band_reader_goes_first_and_the_engine_reads_for_scattered_ones() {
        use BandRead::*;
        // Not banded (None) stays out; ties keep the caller's order.
        let (order, touch) = band_plan(&[Some(Scattered), None, Some(Part), Some(Lockstep)]);
        assert_eq!(order, vec![3, 0, 2]);
        assert!(!touch, "the sum pulls the bands in");
        let (order, touch) = band_plan(&[Some(Part), Some(Scattered), Some(Scattered)]);
        assert_eq!(order, vec![1, 2, 0]);
        assert!(touch, "only scattered readers: the engine reads first");
        let (order, touch) = band_plan(&[Some(Part), Some(Part)]);
        assert_eq!(order, vec![0, 1]);
        assert!(
            !touch,
            "parts read little: reading the whole band would cost more"
        );
        let (order, touch) = band_plan(&[Some(Stream), Some(Lockstep), Some(Stream)]);
        assert_eq!(order, vec![1, 0, 2]);
        assert!(!touch);
        assert_eq!(band_plan(&[None, None]), (vec![], false));
    }
}
