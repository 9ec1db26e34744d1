//! [`SumUdf`]: the sum of all frames (the mean diffraction pattern times the frame count).

use crate::pixel::{Accum, FloatPixel, Pixel};
use crate::result::ResultBuffer;
use crate::udf::{
    BandRead, BufferDecl, Fusable, PartitionTask, ResultDType, TileView, Udf, UdfMeta,
};
use crate::with_pixel_type;
use std::ops::Range;
use stemflow_core::DType;
use stemflow_core::frame::PixelsRef;

/// Sums all processed frames pixel by pixel.
///
/// No parameters besides the name ([`Udf::params`] is `null`).
///
/// Output: sig buffer `intensity`, shape `[sig_rows, sig_cols]`, unit `counts`, dtype
/// float64 for every pixel type.
///
/// Integer frames: accumulation is exact: u8/u16 frames are added into `u32` lanes,
/// flushed to `u64` before a lane could overflow (every 65 537 u16 frames); u32/u64 frames
/// into `u64`. The merged `f64` sums are exact while a pixel's total stays below 2^53
/// counts, so the result does not depend on how frames were split or in which order
/// partitions merged.
///
/// Float frames (f32, f64): each pixel is summed in `f64`, per worker, then the workers'
/// sums are added at each merge. Not exact: the last bits depend on the order of the
/// additions (tiling, partitions, threads) — agreement with a plain f64 sum is to about
/// 1e-12 of the magnitude of the sum of |x| for ordinary frame counts. Negative values are
/// summed as they are; a NaN pixel in any frame makes that pixel's sum NaN (as
/// `numpy.sum`), and ±∞ propagate as in IEEE arithmetic.
#[derive(Clone, Debug)]
pub struct SumUdf {
    name: String,
}

impl SumUdf {
    /// A sum UDF named `sum`.
    pub fn new() -> Self {
        Self { name: "sum".into() }
    }
    /// The same UDF under another name (names are unique within a run).
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }
}

impl Default for SumUdf {
    fn default() -> Self {
        Self::new()
    }
}

impl Udf for SumUdf {
    fn name(&self) -> &str {
        &self.name
    }
    fn buffers(&self, _meta: &UdfMeta) -> Vec<BufferDecl> {
        // float64 whatever `meta.dtype`: integer frames give exact counts below 2^53, float
        // frames an `f64` sum (never an integer dtype, which could not hold fractions).
        vec![BufferDecl::sig("intensity", "counts").with_dtype(ResultDType::F64)]
    }
    fn new_partition(&self, meta: &UdfMeta) -> Box<dyn PartitionTask> {
        with_pixel_type!(meta.dtype,
            P => Box::new(SumTask::<P>::new(meta)),
            F => Box::new(FloatSumTask::<F>::new(meta)))
    }
}

/// Pixels per accumulator block: 16 KiB of `u32` lanes, which stay in L1 beside the four
/// frame blocks being read.
const BLOCK: usize = 4096;

/// `acc[i] += frame[e0 + i]` for the first `frames` frames of `n` pixels in `px`
/// (`acc` covers pixels `e0..e0 + acc.len()`), in blocks of [`BLOCK`] pixels and four
/// frames at a time.
fn add_frames<P: Pixel>(acc: &mut [P::Acc], px: &[P], n: usize, e0: usize, frames: usize) {
    let len = acc.len();
    for b0 in (0..len).step_by(BLOCK) {
        let b1 = (b0 + BLOCK).min(len);
        let acc = &mut acc[b0..b1];
        let block = |f: usize| &px[f * n + e0 + b0..f * n + e0 + b1];
        let mut f = 0;
        while f + 4 <= frames {
            P::add4_into(acc, block(f), block(f + 1), block(f + 2), block(f + 3));
            f += 4;
        }
        while f < frames {
            P::add_into(acc, block(f));
            f += 1;
        }
    }
}

/// Per-worker sum: `acc` takes every frame; `total` takes `acc` before it could overflow.
struct SumTask<P: Pixel> {
    meta: UdfMeta,
    acc: Vec<P::Acc>,
    /// Allocated at the first flush only (rare: 65 537 u16 frames in one partition).
    total: Vec<u64>,
    frames_in_acc: u64,
}

impl<P: Pixel> SumTask<P> {
    fn new(meta: &UdfMeta) -> Self {
        Self {
            meta: *meta,
            acc: vec![P::Acc::default(); meta.sig_shape.len()],
            total: Vec::new(),
            frames_in_acc: 0,
        }
    }

    fn flush(&mut self) {
        if self.total.is_empty() {
            self.total = vec![0; self.acc.len()];
        }
        for (t, a) in self.total.iter_mut().zip(self.acc.iter_mut()) {
            *t = t.wrapping_add(a.to_u64());
            *a = P::Acc::default();
        }
        self.frames_in_acc = 0;
    }
}

impl<P: Pixel> PartitionTask for SumTask<P> {
    fn process_frame(&mut self, frame: u64, pixels: PixelsRef<'_>, nav: &mut [f64]) {
        self.process_tile(&TileView::single(frame, self.meta.sig_shape, pixels), nav);
    }

    fn process_tile(&mut self, tile: &TileView<'_>, _nav: &mut [f64]) {
        // The engine hands only tiles of the run's dtype.
        let Some(px) = P::slice(tile.pixels) else {
            return;
        };
        let n = self.acc.len();
        if n == 0 {
            return;
        }
        let frames = (tile.n_frames).min(px.len() / n);
        let mut done = 0;
        while done < frames {
            if self.frames_in_acc >= P::ACC_HEADROOM {
                self.flush();
            }
            // Frames that fit the lanes' headroom, summed block by block.
            let room = (P::ACC_HEADROOM - self.frames_in_acc).min(u64::MAX >> 1);
            let group = (frames - done).min(usize::try_from(room).unwrap_or(usize::MAX));
            let g = &px[done * n..(done + group) * n];
            add_frames::<P>(&mut self.acc, g, n, 0, group);
            self.frames_in_acc += group as u64;
            done += group;
        }
    }

    fn bands(&self) -> bool {
        true
    }

    fn band_read(&self) -> BandRead {
        BandRead::Lockstep
    }

    fn process_band(&mut self, tile: &TileView<'_>, rows: Range<usize>, _nav: &mut [f64]) {
        let Some(px) = P::slice(tile.pixels) else {
            return;
        };
        let n = self.acc.len();
        if n == 0 {
            return;
        }
        let frames = tile.n_frames.min(px.len() / n);
        // Each pixel takes `frames` additions per chunk (at most MAX_BAND_FRAMES, below
        // every pixel type's headroom): flush before a chunk that could overflow a lane.
        if rows.start == 0 && self.frames_in_acc + frames as u64 > P::ACC_HEADROOM {
            self.flush();
        }
        let cols = self.meta.sig_shape.cols;
        let (e0, e1) = ((rows.start * cols).min(n), (rows.end * cols).min(n));
        add_frames::<P>(&mut self.acc[e0..e1], px, n, e0, frames);
    }

    fn finish_bands(&mut self, tile: &TileView<'_>, _nav: &mut [f64]) {
        let n = self.acc.len().max(1);
        let frames = P::slice(tile.pixels).map_or(0, |px| tile.n_frames.min(px.len() / n));
        self.frames_in_acc += frames as u64;
    }

    fn fusable(&self) -> Option<Fusable> {
        (P::DTYPE == DType::U16).then_some(Fusable::SigSum)
    }

    fn fused_sum(&mut self, frames: usize) -> Option<&mut [u32]> {
        // As in process_band: flush before a chunk that could overflow a lane.
        if self.frames_in_acc + frames as u64 > P::ACC_HEADROOM {
            self.flush();
        }
        self.frames_in_acc += frames as u64;
        P::acc_u32(&mut self.acc)
    }

    fn process_csr(
        &mut self,
        rows: &stemflow_core::csr::CsrRows,
        frames: Range<usize>,
        _nav: &mut [f64],
    ) -> bool {
        // A pixel takes at most one entry per row from a CSR producer (a repeated index
        // still adds up; u64 lanes hold 4.3 G maximal u32 values).
        if self.frames_in_acc + frames.len() as u64 > P::ACC_HEADROOM {
            self.flush();
        }
        let Some(acc) = P::acc_u64(&mut self.acc) else {
            return false;
        };
        let (a, b) = match (rows.indptr.get(frames.start), rows.indptr.get(frames.end)) {
            (Some(&a), Some(&b)) => (a as usize, b as usize),
            _ => (0, 0),
        };
        let (indices, values) = (&rows.indices[a..b], &rows.values[a..b]);
        for (&i, &v) in indices.iter().zip(values) {
            if let Some(a) = acc.get_mut(i as usize) {
                *a = a.wrapping_add(u64::from(v));
            }
        }
        self.frames_in_acc += frames.len() as u64;
        true
    }

    fn merge_into(&mut self, global: &mut [ResultBuffer]) {
        let Some(out) = global.first_mut() else {
            return;
        };
        if self.total.is_empty() {
            for (g, a) in out.data.iter_mut().zip(self.acc.iter_mut()) {
                *g += a.to_u64() as f64;
                *a = P::Acc::default();
            }
        } else {
            for ((g, a), t) in out
                .data
                .iter_mut()
                .zip(self.acc.iter_mut())
                .zip(self.total.iter_mut())
            {
                *g += t.wrapping_add(a.to_u64()) as f64;
                *a = P::Acc::default();
                *t = 0;
            }
        }
        self.frames_in_acc = 0;
    }
}

/// `acc[i] += frame[e0 + i]` in `f64` for the first `frames` frames of `n` pixels in `px`
/// (`acc` covers pixels `e0..e0 + acc.len()`), block by block so that a block of the
/// accumulator stays in L1 while the frames stream past it.
fn add_float_frames<F: FloatPixel>(acc: &mut [f64], px: &[F], n: usize, e0: usize, frames: usize) {
    let len = acc.len();
    for b0 in (0..len).step_by(BLOCK) {
        let b1 = (b0 + BLOCK).min(len);
        let acc = &mut acc[b0..b1];
        for f in 0..frames {
            F::add_into(acc, &px[f * n + e0 + b0..f * n + e0 + b1]);
        }
    }
}

/// Per-worker sum of float frames: one `f64` per pixel since the last merge.
struct FloatSumTask<F: FloatPixel> {
    meta: UdfMeta,
    acc: Vec<f64>,
    _pixel: std::marker::PhantomData<F>,
}

impl<F: FloatPixel> FloatSumTask<F> {
    fn new(meta: &UdfMeta) -> Self {
        Self {
            meta: *meta,
            acc: vec![0.0; meta.sig_shape.len()],
            _pixel: std::marker::PhantomData,
        }
    }
}

impl<F: FloatPixel> PartitionTask for FloatSumTask<F> {
    fn process_frame(&mut self, frame: u64, pixels: PixelsRef<'_>, nav: &mut [f64]) {
        self.process_tile(&TileView::single(frame, self.meta.sig_shape, pixels), nav);
    }

    fn process_tile(&mut self, tile: &TileView<'_>, _nav: &mut [f64]) {
        let Some(px) = F::slice(tile.pixels) else {
            return;
        };
        let n = self.acc.len();
        if n == 0 {
            return;
        }
        let frames = tile.n_frames.min(px.len() / n);
        add_float_frames::<F>(&mut self.acc, px, n, 0, frames);
    }

    fn bands(&self) -> bool {
        true
    }

    fn band_read(&self) -> BandRead {
        BandRead::Stream
    }

    fn process_band(&mut self, tile: &TileView<'_>, rows: Range<usize>, _nav: &mut [f64]) {
        let Some(px) = F::slice(tile.pixels) else {
            return;
        };
        let n = self.acc.len();
        if n == 0 {
            return;
        }
        let frames = tile.n_frames.min(px.len() / n);
        let cols = self.meta.sig_shape.cols;
        let (e0, e1) = ((rows.start * cols).min(n), (rows.end * cols).min(n));
        add_float_frames::<F>(&mut self.acc[e0..e1], px, n, e0, frames);
    }

    fn merge_into(&mut self, global: &mut [ResultBuffer]) {
        let Some(out) = global.first_mut() else {
            return;
        };
        for (g, a) in out.data.iter_mut().zip(self.acc.iter_mut()) {
            *g += *a;
            *a = 0.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::udf::new_results;
    use stemflow_core::{DType, NavShape, SigShape};

    fn meta(dtype: DType) -> UdfMeta {
        UdfMeta {
            nav_shape: NavShape::new(1, 1),
            sig_shape: SigShape::new(2, 3),
            dtype,
        }
    }

    #[test]
    fn flushes_before_a_u32_lane_overflows() {
        // 70 000 maximal u16 frames overflow a u32 lane after 65 537; the flush keeps the
        // sum exact.
        let m = meta(DType::U16);
        let mut task = SumTask::<u16>::new(&m);
        let frame = [u16::MAX; 6];
        for i in 0..70_000u64 {
            task.process_frame(i, PixelsRef::U16(&frame), &mut []);
        }
        let mut res = new_results(&SumUdf::new(), &m);
        task.merge_into(&mut res.buffers);
        assert_eq!(res.buffers[0].data, vec![70_000.0 * 65_535.0; 6]);
        // Merging reset the task: a second merge adds nothing.
        task.merge_into(&mut res.buffers);
        assert_eq!(res.buffers[0].data[0], 70_000.0 * 65_535.0);
    }

    #[test]
    fn lockstep_and_single_frame_paths_flush_alike() {
        // Tiles of 7 frames: four in lockstep, three one by one; 70 007 frames in all.
        let m = meta(DType::U16);
        let mut task = SumTask::<u16>::new(&m);
        let tile: Vec<u16> = (0..7 * 6).map(|i| u16::MAX - (i % 5) as u16).collect();
        let per_pixel: Vec<u64> = (0..6)
            .map(|p| (0..7).map(|f| tile[f * 6 + p] as u64).sum())
            .collect();
        for k in 0..10_001u64 {
            let view = TileView {
                first_frame: 7 * k,
                n_frames: 7,
                sig_shape: m.sig_shape,
                pixels: PixelsRef::U16(&tile),
            };
            task.process_tile(&view, &mut []);
        }
        let mut res = new_results(&SumUdf::new(), &m);
        task.merge_into(&mut res.buffers);
        let want: Vec<f64> = per_pixel.iter().map(|&s| (s * 10_001) as f64).collect();
        assert_eq!(res.buffers[0].data, want);
    }
}
