//! The fused pass: one walk over the rows of each chunk of u16 frames for the sum and for
//! every reduction that is an exact weighted pixel sum (sum over signal, the virtual
//! detectors, the CoM moments), with the rows a few KiB ahead prefetched (decision 0009).
//!
//! Why: the band path ([`crate::udf::PartitionTask::process_band`]) has the sum pull each
//! 128 KiB band in from memory, then runs the other reductions on it from cache. While they
//! compute, nothing streams, so on a core the memory time and the compute time add up.
//! Here each row of the chunk's frames goes through all of them at once, and prefetches
//! keep about 2 KiB per frame in flight, so the loads of later rows overlap the work on
//! this one. Measured (sum + sum over signal + 4 masks + CoM in memory, interleaved runs
//! with the pass on and off): 256 × 256 u16, one thread 23–25 GB/s against 17.6–18.3 in
//! bands, two threads 36–38 GB/s against 30–31.5; 512 × 512 u16, 21–23.5 against 18–19,
//! and 32–34 against 30–31.7.
//!
//! How a row goes through: the frames' rows are read in lockstep (four frames) and added
//! into the sum's `u32` lanes and the whole-frame totals; then each support's windows
//! (the lane bits of each 32-pixel block of the row it covers) take the same rows again,
//! now from L1, with a masked load.
//!
//! How the sums stay exact with 16-bit multiply-adds (`vpdpwssd`, AVX-512 VNNI): a pixel
//! `p` (0–65535) enters as `q = p − 32768` (a sign-bit flip), which fits an `i16`; each
//! weighted sum `Σ w·p` is computed as `Σ w·q + 32768·Σ w` over the support, whose second
//! part is a constant of the mask. Column and row weights are taken from the support's
//! first column and row (`x − x0`, `y − y0`, shifted back at the end), which keeps the
//! products small. `i32` lanes take at most a bounded number of rows' products before
//! they are widened into `i64` lanes ([`FusedPlan::new`] bounds it per support so they
//! cannot overflow). Results equal the band path's bit for bit (tested).

// Builds without the kernel keep the plan's types (FusedPlan::new declines every run
// there), whose fields only the kernel reads.
#![cfg_attr(
    not(all(
        target_arch = "x86_64",
        target_feature = "avx512bw",
        target_feature = "avx512vnni"
    )),
    allow(dead_code)
)]

use crate::mask::{Span, SpanMask};
use stemflow_core::{DType, SigShape};

/// The weight of each pixel in one sum of a [`LinearTerms`]; pixel `(x, y)` is column `x`,
/// row `y`, both 0-based, in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weight {
    /// `Σ I`: counts.
    One,
    /// `Σ I·x`: counts × pixels.
    Column,
    /// `Σ I·y`: counts × pixels.
    Row,
}

/// Weighted pixel sums over one support, which the engine may compute for a task in its
/// fused pass ([`crate::udf::PartitionTask::fusable`]).
#[derive(Clone, Debug, PartialEq)]
pub struct LinearTerms {
    /// The pixels summed (a binary mask on the run's `sig_shape`); `None`: the whole frame.
    pub support: Option<SpanMask>,
    /// One sum per weight, in this order.
    pub weights: Vec<Weight>,
}

/// What a task can leave to the engine's fused pass over u16 frames
/// ([`crate::udf::PartitionTask::fusable`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Fusable {
    /// The task sums frames pixel by pixel into the `u32` accumulator it hands over in
    /// [`crate::udf::PartitionTask::fused_sum`].
    SigSum,
    /// The task's nav values derive from these exact sums per frame, handed over in
    /// [`crate::udf::PartitionTask::take_linear`].
    Linear(Vec<LinearTerms>),
}

/// Bytes of each frame the pass keeps in flight ahead of the row it works on (rounded
/// down to whole rows, at least one). Measured (full set in memory, two threads, 2
/// interleaved rounds each, 256 × 256 / 512 × 512 u16): 1 KiB 32.5–33.5 / 32.0–32.4
/// GB/s; 1.5 KiB 35.8–36.8 / 31.6–31.9; 2 KiB 36.3–38.4 / 32.3–34.1; 4 KiB 34.6 / 30.1;
/// 8 KiB 32.8 / 30.1 (the band path: 28.5–32.2 / 29.8–32.0).
const PREFETCH_BYTES: usize = 2 * 1024;
/// Bytes of rows (over the frames of the lockstep) the pass streams before the windows go
/// over them: one row of 256 × 256 u16. Slabs of more rows let the windows keep their
/// accumulators in registers longer, but the bursts of loads they make cost more:
/// in memory, full set, one thread, 1 row 22–25 GB/s, 4 rows 20–22, 8 rows 18–19.
const SLAB_BYTES: usize = 2 * 1024;
/// Pixels per vector: 32 u16 lanes of a 512-bit register, 64 bytes (one cache line).
const LANES: usize = 32;
/// Frames the pass walks in lockstep: the sum's accumulator row is loaded and stored once
/// for four frames (as in the band path). Measured (full set in memory, one thread): one
/// frame 12.7–13.8 GB/s, two 18.8–19.9, four 22–25; eight 16 (registers spill).
const LOCKSTEP: usize = 4;
/// The bias that maps a u16 pixel onto an i16 (`p − 32768`).
const BIAS: i64 = 32768;

/// Where a term's sum comes from.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// The whole-frame total, summed in the streaming loop.
    Total,
    /// Group `g`'s accumulator for weight slot `w` (0: one, 1: column, 2: row).
    Group { g: usize, w: usize },
}

/// One support as vector windows per row: the pass adds the lanes of `bits` of the
/// 32-pixel block `block` of each row.
#[derive(Clone, Debug)]
struct Group {
    /// True when the column and row moments are wanted too (three sums, not one).
    moments: bool,
    /// `row_first[r]..row_first[r + 1]`: the windows of row `r` (`rows + 1` entries).
    row_first: Vec<u32>,
    /// Block (32-pixel column group) of each window.
    blocks: Vec<u16>,
    /// Lane bits of each window: bit `i` for column `block * 32 + i`.
    bits: Vec<u32>,
    /// The support's first column and row: moments are weighed by `x − x0` and `y − y0`,
    /// which keeps the products small, and shifted back at the end.
    x0: usize,
    y0: usize,
    /// `x − x0` for every column (moments only; negative left of the support, where
    /// every lane is masked off).
    xs: Vec<i16>,
    /// Support pixel count, and the sums of `x − x0` and `y − y0` over it.
    count: i64,
    xsum: i64,
    ysum: i64,
    /// Rows whose products this group's `i32` lanes can take before they are widened.
    slab_rows: usize,
}

/// The fused pass for one run's shape and fusable terms; built once per worker.
#[derive(Clone, Debug)]
pub(crate) struct FusedPlan {
    sig: SigShape,
    groups: Vec<Group>,
    /// Per output term: its source and, for a column or row moment, the shift (`x0` or
    /// `y0`) times its group's plain sum that makes the weight absolute again.
    terms: Vec<(Source, i64)>,
    /// Rows of whole-frame totals the `i32` lanes can take before they are widened.
    total_slab_rows: usize,
    /// Rows ahead of the current one that are prefetched.
    prefetch_rows: usize,
    /// Rows the pass streams before it runs the windows over them (≥ 1, at most every
    /// group's and the totals' `i32` slab).
    slab_rows: usize,
}

impl FusedPlan {
    /// The pass for u16 frames of `sig` computing `terms` (in order; their sums come out
    /// in that order, one per weight). `None` when this build has no kernel (it needs
    /// AVX-512 BW and VNNI at compile time, decision 0005), for other dtypes, for rows
    /// not a multiple of 32 pixels wide, for a support on another shape, or for a
    /// support so wide that even one row's products could overflow the `i32` lanes
    /// (more than 32767 pixels from its first column or row, or e.g. 2048 columns with
    /// column weights).
    pub(crate) fn new(sig: SigShape, dtype: DType, terms: &[&LinearTerms]) -> Option<Self> {
        if !kernel::AVAILABLE || dtype != DType::U16 {
            return None;
        }
        let (rows, cols) = (sig.rows, sig.cols);
        if rows == 0 || cols == 0 || !cols.is_multiple_of(LANES) {
            return None;
        }
        let blocks = cols / LANES;
        let mut plan = Self {
            sig,
            groups: Vec::new(),
            terms: Vec::new(),
            total_slab_rows: slab_rows(blocks, 1)?.min(rows),
            prefetch_rows: (PREFETCH_BYTES / (cols * 2)).max(1),
            slab_rows: 1,
        };
        for t in terms {
            if let Some(s) = &t.support
                && s.sig_shape() != sig
            {
                return None;
            }
            if t.support.is_none() && t.weights.iter().all(|&w| w == Weight::One) {
                plan.terms
                    .extend(t.weights.iter().map(|_| (Source::Total, 0)));
                continue;
            }
            let full;
            let spans = match &t.support {
                Some(s) => s.spans(),
                None => {
                    full = (0..rows)
                        .map(|r| Span {
                            row: r as u32,
                            start: 0,
                            end: cols as u32,
                        })
                        .collect::<Vec<_>>();
                    &full[..]
                }
            };
            let moments = t.weights.iter().any(|&w| w != Weight::One);
            let g = plan.groups.len();
            plan.groups.push(Group::of(spans, rows, cols, moments)?);
            for &w in &t.weights {
                plan.terms.push(match w {
                    Weight::One => (Source::Group { g, w: 0 }, 0),
                    Weight::Column => (Source::Group { g, w: 1 }, plan.groups[g].x0 as i64),
                    Weight::Row => (Source::Group { g, w: 2 }, plan.groups[g].y0 as i64),
                });
            }
        }
        plan.slab_rows = plan
            .groups
            .iter()
            .map(|g| g.slab_rows)
            .fold(plan.total_slab_rows, usize::min)
            .min((SLAB_BYTES / (LOCKSTEP * cols * 2)).max(1));
        Some(plan)
    }

    /// Sums per frame this plan computes ([`FusedPlan::run`] writes them frame-major).
    pub(crate) fn n_terms(&self) -> usize {
        self.terms.len()
    }

    /// Processes the first `frames` frames of `px` (u16 frames of the plan's shape; any
    /// further frames in `px` are only prefetched): adds them pixel by pixel into `sum`
    /// when given (`sig_shape.len()` lanes, kept within their headroom by the caller),
    /// and writes each frame's term sums to `out[f * n_terms..]` (`frames * n_terms`
    /// values). Returns false, having done nothing, when the lengths do not fit.
    pub(crate) fn run(
        &self,
        px: &[u16],
        frames: usize,
        sum: Option<&mut [u32]>,
        scratch: &mut Scratch,
        out: &mut [u64],
    ) -> bool {
        let n = self.sig.len();
        let fits = frames.checked_mul(n).is_some_and(|l| l <= px.len())
            && out.len() >= frames * self.n_terms()
            && sum.as_ref().is_none_or(|s| s.len() == n);
        if !fits {
            return false;
        }
        scratch.fit(self);
        kernel::run(self, px, frames, sum, scratch, out);
        true
    }
}

/// Rows of products a lane can take before it could overflow an `i32`: one window adds
/// two products of at most 32768 · `max_weight` into a lane, and a row has at most
/// `windows` windows per accumulator. `None` when not even one row fits.
fn slab_rows(windows: usize, max_weight: usize) -> Option<usize> {
    let per_row = (windows.max(1) as u64) * 2 * (BIAS as u64) * max_weight.max(1) as u64;
    let rows = (i32::MAX as u64 / per_row) as usize;
    (rows > 0).then_some(rows)
}

impl Group {
    /// The windows of `spans` (by row, then column; inside a `rows × cols` frame); `None`
    /// for a span outside the frame, or moments whose products could overflow one row.
    fn of(spans: &[Span], rows: usize, cols: usize, moments: bool) -> Option<Self> {
        let blocks = cols / LANES;
        let mut row_bits = vec![0u32; rows * blocks];
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        for s in spans {
            let (r, a, b) = (s.row as usize, s.start as usize, s.end as usize);
            if r >= rows || b > cols || a > b {
                return None;
            }
            if a < b {
                (x0, y0, x1, y1) = (x0.min(a), y0.min(r), x1.max(b - 1), y1.max(r));
            }
            for x in a..b {
                row_bits[r * blocks + x / LANES] |= 1 << (x % LANES);
            }
        }
        if x0 == usize::MAX {
            (x0, y0) = (0, 0);
        }
        let mut group = Group {
            moments,
            row_first: Vec::with_capacity(rows + 1),
            blocks: Vec::new(),
            bits: Vec::new(),
            x0,
            y0,
            xs: Vec::new(),
            count: 0,
            xsum: 0,
            ysum: 0,
            slab_rows: 1,
        };
        let mut widest = 0;
        for r in 0..rows {
            let first = group.blocks.len();
            group.row_first.push(first as u32);
            for (j, &bits) in row_bits[r * blocks..(r + 1) * blocks].iter().enumerate() {
                if bits != 0 {
                    group.blocks.push(j as u16);
                    group.bits.push(bits);
                    let n = i64::from(bits.count_ones());
                    group.count += n;
                    group.ysum += n * (r - y0) as i64;
                    for i in 0..LANES {
                        if bits >> i & 1 == 1 {
                            group.xsum += (j * LANES + i - x0) as i64;
                        }
                    }
                }
            }
            widest = widest.max(group.blocks.len() - first);
        }
        group.row_first.push(group.blocks.len() as u32);
        let max_weight = if moments {
            let w = (x1.saturating_sub(x0)).max(y1.saturating_sub(y0));
            i16::try_from(w).ok()?;
            group.xs = (0..cols)
                .map(|x| (x as i64 - x0 as i64).clamp(-32768, 32767) as i16)
                .collect();
            w
        } else {
            1
        };
        group.slab_rows = slab_rows(widest, max_weight)?.min(rows);
        Some(group)
    }
}

/// Per-worker buffers of the pass, allocated once and grown to the largest plan seen.
#[derive(Default)]
pub(crate) struct Scratch {
    /// Rows each group's `i32` lanes took since they were last widened.
    since: Vec<usize>,
    /// `i32` accumulators: per group, 3 weight slots × `LOCKSTEP` frames, 16 lanes each.
    acc32: Vec<[i32; 16]>,
    /// `i64` accumulators, as `acc32` plus `LOCKSTEP` totals, 8 lanes each.
    acc64: Vec<[i64; 8]>,
}

impl Scratch {
    fn fit(&mut self, plan: &FusedPlan) {
        if self.since.len() < plan.groups.len() {
            self.since.resize(plan.groups.len(), 0);
        }
        let a = plan.groups.len() * 3 * LOCKSTEP;
        if self.acc32.len() < a {
            self.acc32.resize(a, [0; 16]);
        }
        if self.acc64.len() < a + LOCKSTEP {
            self.acc64.resize(a + LOCKSTEP, [0; 8]);
        }
    }
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx512bw",
    target_feature = "avx512vnni"
))]
// The frame index of the lockstep addresses several arrays and pointers at once.
#[allow(clippy::needless_range_loop)]
mod kernel {
    use super::{BIAS, FusedPlan, LANES, LOCKSTEP, Scratch, Source};
    use std::arch::x86_64::*;

    /// This build has the fused kernel.
    pub(super) const AVAILABLE: bool = true;

    /// [`FusedPlan::run`] after its checks: lockstep groups of up to four frames.
    pub(super) fn run(
        plan: &FusedPlan,
        px: &[u16],
        frames: usize,
        mut sum: Option<&mut [u32]>,
        scratch: &mut Scratch,
        out: &mut [u64],
    ) {
        let n = plan.sig.len();
        let nt = plan.n_terms();
        let mut f = 0;
        while f < frames {
            let k = LOCKSTEP.min(frames - f);
            // Frames after this lockstep group that may be prefetched.
            let from = &px[f * n..];
            let o = &mut out[f * nt..(f + k) * nt];
            let s = sum.as_deref_mut();
            // SAFETY: AVX-512 F/BW/VNNI are enabled at compile time (cfg above); `from`
            // holds at least `k` frames (checked in FusedPlan::run); the scratch fits the
            // plan (Scratch::fit); every load below stays inside those slices.
            unsafe {
                match k {
                    4 => lockstep::<4>(plan, from, s, scratch, o),
                    3 => lockstep::<3>(plan, from, s, scratch, o),
                    2 => lockstep::<2>(plan, from, s, scratch, o),
                    _ => lockstep::<1>(plan, from, s, scratch, o),
                }
            }
            f += k;
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn widen_add(acc64: &mut [i64; 8], v: __m512i) {
        let lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(v));
        let hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64::<1>(v));
        // SAFETY: [i64; 8] is 64 bytes; unaligned load and store.
        unsafe {
            let a = _mm512_loadu_si512(acc64.as_ptr().cast());
            let a = _mm512_add_epi64(a, _mm512_add_epi64(lo, hi));
            _mm512_storeu_si512(acc64.as_mut_ptr().cast(), a);
        }
    }

    /// One row of `F` frames (`rows[f]`: the row's first pixel in frame `f`): adds it into
    /// the sum's lanes at `sum` when `SUM`, and biased (`p − 32768`) into the whole-frame
    /// totals; prefetches the rows at `next` (null: none), one line per line read, so
    /// that the prefetches never come in bursts that would wait for free miss buffers.
    ///
    /// # Safety
    /// `rows[f]`, non-null `next[f]` and (when `SUM`) `sum` point at `cols` readable
    /// (writable) elements; `cols` is a multiple of 32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn stream_row<const F: usize, const SUM: bool>(
        rows: [*const u16; F],
        next: [*const u16; F],
        sum: *mut u32,
        cols: usize,
        total: &mut [__m512i; F],
    ) {
        let bias = _mm512_set1_epi16(i16::MIN);
        let ones = _mm512_set1_epi16(1);
        let mut t = *total;
        for o in (0..cols).step_by(LANES) {
            // SAFETY: o + 32 ≤ cols for every pointer (the caller's contract).
            unsafe {
                let (mut lo, mut hi) = if SUM {
                    (
                        _mm512_loadu_si512(sum.add(o).cast()),
                        _mm512_loadu_si512(sum.add(o + 16).cast()),
                    )
                } else {
                    (_mm512_setzero_si512(), _mm512_setzero_si512())
                };
                for f in 0..F {
                    if !next[f].is_null() {
                        _mm_prefetch::<_MM_HINT_T0>(next[f].add(o).cast());
                    }
                    let v = _mm512_loadu_si512(rows[f].add(o).cast());
                    if SUM {
                        lo = _mm512_add_epi32(lo, _mm512_cvtepu16_epi32(_mm512_castsi512_si256(v)));
                        hi = _mm512_add_epi32(
                            hi,
                            _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64::<1>(v)),
                        );
                    }
                    t[f] = _mm512_dpwssd_epi32(t[f], _mm512_xor_si512(v, bias), ones);
                }
                if SUM {
                    _mm512_storeu_si512(sum.add(o).cast(), lo);
                    _mm512_storeu_si512(sum.add(o + 16).cast(), hi);
                }
            }
        }
        *total = t;
    }

    /// The 32 pixels at `p` in the lanes of `m`, biased to `p − 32768`; 0 in the other
    /// lanes, so that they add nothing whatever their weight.
    ///
    /// # Safety
    /// `p` points at 32 readable u16.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn masked_biased(m: u32, p: *const u16) -> __m512i {
        let bias = _mm512_set1_epi16(i16::MIN);
        // SAFETY: the caller's contract; lanes outside `m` are not read.
        let v = unsafe { _mm512_maskz_loadu_epi16(m, p.cast()) };
        _mm512_maskz_mov_epi16(m, _mm512_xor_si512(v, bias))
    }

    /// `F` frames at the start of `px` (which may hold more, prefetched only).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn lockstep<const F: usize>(
        plan: &FusedPlan,
        px: &[u16],
        mut sum: Option<&mut [u32]>,
        scratch: &mut Scratch,
        out: &mut [u64],
    ) {
        let (rows, cols) = (plan.sig.rows, plan.sig.cols);
        let n = rows * cols;
        let ng = plan.groups.len();
        let ones = _mm512_set1_epi16(1);
        let zero = _mm512_setzero_si512();
        let acc32 = &mut scratch.acc32[..ng * 3 * LOCKSTEP];
        let acc64 = &mut scratch.acc64[..ng * 3 * LOCKSTEP + LOCKSTEP];
        acc32.fill([0; 16]);
        acc64.fill([0; 8]);
        let mut total = [zero; F];
        let base = px.as_ptr();
        let ahead = plan.prefetch_rows;
        let slab = plan.slab_rows;
        let since = &mut scratch.since[..ng];
        since.fill(0);
        let mut total_since = 0;
        let mut r0 = 0;
        while r0 < rows {
            let r1 = (r0 + slab).min(rows);
            for r in r0..r1 {
                // Row r + ahead of each frame, or the first rows of the frames after them
                // once this lockstep group's rows run out: prefetched while streaming.
                let pr = r + ahead;
                let next: [*const u16; F] = std::array::from_fn(|f| {
                    let row0 = if pr < rows {
                        f * n + pr * cols
                    } else {
                        (F + f) * n + (pr - rows) * cols
                    };
                    if row0 + cols <= px.len() {
                        // SAFETY: inside `px` (checked above).
                        unsafe { base.add(row0) }
                    } else {
                        std::ptr::null()
                    }
                });
                // Stream: the sum and the whole-frame total.
                // SAFETY: frame f < F lies in `px` and row r in each frame; the sum has n
                // lanes (FusedPlan::run).
                unsafe {
                    let rows_at: [*const u16; F] =
                        std::array::from_fn(|f| base.add(f * n + r * cols));
                    match sum.as_deref_mut() {
                        Some(s) => stream_row::<F, true>(
                            rows_at,
                            next,
                            s.as_mut_ptr().add(r * cols),
                            cols,
                            &mut total,
                        ),
                        None => stream_row::<F, false>(
                            rows_at,
                            next,
                            std::ptr::null_mut(),
                            cols,
                            &mut total,
                        ),
                    }
                }
            }
            // The windows of each support in these rows, from the biased rows in L1.
            for (g, grp) in plan.groups.iter().enumerate() {
                let (a, b) = (grp.row_first[r0] as usize, grp.row_first[r1] as usize);
                if a == b {
                    continue;
                }
                let slots = &mut acc32[g * 3 * LOCKSTEP..(g + 1) * 3 * LOCKSTEP];
                // SAFETY: [i32; 16] is 64 bytes.
                let load = |i: usize| unsafe { _mm512_loadu_si512(slots[i].as_ptr().cast()) };
                let mut one: [__m512i; F] = std::array::from_fn(&load);
                if grp.moments {
                    let mut xm: [__m512i; F] = std::array::from_fn(|f| load(LOCKSTEP + f));
                    let mut ym: [__m512i; F] = std::array::from_fn(|f| load(2 * LOCKSTEP + f));
                    for r in r0..r1 {
                        // r − y0 fits an i16 for rows with windows (Group::of).
                        let yv = _mm512_set1_epi16((r.wrapping_sub(grp.y0)) as i16);
                        for i in grp.row_first[r] as usize..grp.row_first[r + 1] as usize {
                            let j = grp.blocks[i] as usize;
                            let m = grp.bits[i];
                            // SAFETY: j < blocks, so xs[j*32..+32] lies in xs (cols entries).
                            let xv = unsafe {
                                _mm512_loadu_si512(grp.xs.as_ptr().add(j * LANES).cast())
                            };
                            for f in 0..F {
                                // SAFETY: row r of frame f < F, j < blocks: inside `px`.
                                let v = unsafe {
                                    masked_biased(m, base.add(f * n + r * cols + j * LANES))
                                };
                                one[f] = _mm512_dpwssd_epi32(one[f], v, ones);
                                xm[f] = _mm512_dpwssd_epi32(xm[f], v, xv);
                                ym[f] = _mm512_dpwssd_epi32(ym[f], v, yv);
                            }
                        }
                    }
                    for f in 0..F {
                        // SAFETY: [i32; 16] is 64 bytes.
                        unsafe {
                            _mm512_storeu_si512(slots[LOCKSTEP + f].as_mut_ptr().cast(), xm[f]);
                            _mm512_storeu_si512(slots[2 * LOCKSTEP + f].as_mut_ptr().cast(), ym[f]);
                        }
                    }
                } else {
                    for r in r0..r1 {
                        for i in grp.row_first[r] as usize..grp.row_first[r + 1] as usize {
                            let j = grp.blocks[i] as usize;
                            let m = grp.bits[i];
                            for f in 0..F {
                                // SAFETY: row r of frame f < F, j < blocks: inside `px`.
                                let v = unsafe {
                                    masked_biased(m, base.add(f * n + r * cols + j * LANES))
                                };
                                one[f] = _mm512_dpwssd_epi32(one[f], v, ones);
                            }
                        }
                    }
                }
                for f in 0..F {
                    // SAFETY: [i32; 16] is 64 bytes.
                    unsafe { _mm512_storeu_si512(slots[f].as_mut_ptr().cast(), one[f]) };
                }
            }
            // Widen each group's i32 lanes before the next slab could overflow them.
            let last = r1 == rows;
            for (g, grp) in plan.groups.iter().enumerate() {
                since[g] += r1 - r0;
                if !last && since[g] + slab <= grp.slab_rows {
                    continue;
                }
                since[g] = 0;
                let used = if grp.moments { 3 } else { 1 };
                for w in 0..used {
                    for f in 0..F {
                        let i = (g * 3 + w) * LOCKSTEP + f;
                        // SAFETY: [i32; 16] is 64 bytes.
                        let v = unsafe { _mm512_loadu_si512(acc32[i].as_ptr().cast()) };
                        widen_add(&mut acc64[i], v);
                        acc32[i] = [0; 16];
                    }
                }
            }
            total_since += r1 - r0;
            if last || total_since + slab > plan.total_slab_rows {
                total_since = 0;
                let t64 = &mut acc64[ng * 3 * LOCKSTEP..];
                for f in 0..F {
                    widen_add(&mut t64[f], total[f]);
                    total[f] = zero;
                }
            }
            r0 = r1;
        }
        let nt = plan.n_terms();
        let n = n as i64;
        for f in 0..F {
            let lanes = |i: usize| acc64[i].iter().sum::<i64>();
            for (t, &(src, shift)) in plan.terms.iter().enumerate() {
                let s = match src {
                    Source::Total => lanes(ng * 3 * LOCKSTEP + f) + BIAS * n,
                    Source::Group { g, w } => {
                        let grp = &plan.groups[g];
                        let one = lanes(g * 3 * LOCKSTEP + f) + BIAS * grp.count;
                        match w {
                            0 => one,
                            // Σ I·x = Σ I·(x − x0) + x0·Σ I, and likewise for y.
                            1 => lanes((g * 3 + 1) * LOCKSTEP + f) + BIAS * grp.xsum + shift * one,
                            _ => lanes((g * 3 + 2) * LOCKSTEP + f) + BIAS * grp.ysum + shift * one,
                        }
                    }
                };
                // Non-negative: a sum of u16 pixels times non-negative weights.
                out[f * nt + t] = s as u64;
            }
        }
    }
}

#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx512bw",
    target_feature = "avx512vnni"
)))]
mod kernel {
    use super::{FusedPlan, Scratch};

    /// This build has no fused kernel: [`FusedPlan::new`] gives `None`.
    pub(super) const AVAILABLE: bool = false;

    /// Never called: no plan exists without the kernel.
    pub(super) fn run(
        _plan: &FusedPlan,
        _px: &[u16],
        _frames: usize,
        _sum: Option<&mut [u32]>,
        _scratch: &mut Scratch,
        _out: &mut [u64],
    ) {
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::Mask;

    /// Exact sums of `terms` for each frame of `px`, pixel by pixel.
    fn naive(px: &[u16], sig: SigShape, terms: &[&LinearTerms]) -> Vec<u64> {
        let mut out = Vec::new();
        for frame in px.chunks_exact(sig.len()) {
            for t in terms {
                let inside = |x: usize, y: usize| match &t.support {
                    None => true,
                    Some(m) => m.spans().iter().any(|s| {
                        s.row as usize == y && (s.start as usize..s.end as usize).contains(&x)
                    }),
                };
                for w in &t.weights {
                    let mut s = 0u64;
                    for y in 0..sig.rows {
                        for x in 0..sig.cols {
                            if inside(x, y) {
                                let p = frame[y * sig.cols + x] as u64;
                                s += p * match w {
                                    Weight::One => 1,
                                    Weight::Column => x as u64,
                                    Weight::Row => y as u64,
                                };
                            }
                        }
                    }
                    out.push(s);
                }
            }
        }
        out
    }

    fn terms_for(sig: SigShape) -> Vec<LinearTerms> {
        let (cx, cy) = (sig.cols as f64 / 2.0, sig.rows as f64 / 2.0);
        let r = sig.rows.min(sig.cols) as f64 / 3.0;
        let mask = |m: Mask| Some(m.spans(sig));
        vec![
            LinearTerms {
                support: None,
                weights: vec![Weight::One],
            },
            LinearTerms {
                support: mask(Mask::Disk { cx, cy, r }),
                weights: vec![Weight::One, Weight::Column, Weight::Row],
            },
            LinearTerms {
                support: mask(Mask::Ring {
                    cx,
                    cy,
                    r_inner: r / 2.0,
                    r_outer: 1.5 * r,
                }),
                weights: vec![Weight::One],
            },
            // The last columns and a moment without the plain sum.
            LinearTerms {
                support: mask(Mask::Rectangle {
                    x: sig.cols as f64 - 7.0,
                    y: 0.0,
                    width: 7.0,
                    height: sig.rows as f64,
                }),
                weights: vec![Weight::Row],
            },
            LinearTerms {
                support: Some(SpanMask::from_spans(sig, Vec::new())),
                weights: vec![Weight::One],
            },
            LinearTerms {
                support: None,
                weights: vec![Weight::Column, Weight::One],
            },
        ]
    }

    #[test]
    fn the_pass_gives_exact_sums_for_every_weight_and_frame_count() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        // 64 × 512: the i32 lanes are widened every 4 rows; 1 × 32: one row, one block.
        for (rows, cols) in [(1, 32), (37, 64), (64, 512), (256, 256)] {
            let sig = SigShape::new(rows, cols);
            let terms = terms_for(sig);
            let refs: Vec<&LinearTerms> = terms.iter().collect();
            let Some(plan) = FusedPlan::new(sig, DType::U16, &refs) else {
                if kernel::AVAILABLE {
                    panic!("{rows} × {cols} declined although the kernel exists");
                }
                return;
            };
            let n = sig.len();
            // 9 frames: lockstep groups of 4, 4 and 1; the last frames of the slice are
            // only prefetched when fewer are processed. Extremes first: all 0, all 65535.
            let mut px: Vec<u16> = vec![0; n];
            px.extend(std::iter::repeat_n(u16::MAX, n));
            px.extend((0..7 * n).map(|_| next() as u16));
            for frames in [1, 2, 3, 4, 5, 9] {
                let mut sum = vec![7u32; n];
                let mut out = vec![0u64; frames * plan.n_terms()];
                let mut scratch = Scratch::default();
                assert!(plan.run(&px, frames, Some(&mut sum), &mut scratch, &mut out));
                assert_eq!(
                    out,
                    naive(&px[..frames * n], sig, &refs),
                    "{rows} × {cols}, {frames} frames"
                );
                for (i, &s) in sum.iter().enumerate() {
                    let want: u32 = 7 + (0..frames).map(|f| px[f * n + i] as u32).sum::<u32>();
                    assert_eq!(s, want, "{rows} × {cols}, {frames} frames, pixel {i}");
                }
            }
            // Without a sum, and a slice too short for the frames asked: refused.
            let mut out = vec![0u64; 2 * plan.n_terms()];
            let mut scratch = Scratch::default();
            assert!(plan.run(&px, 2, None, &mut scratch, &mut out));
            assert_eq!(out, naive(&px[..2 * n], sig, &refs));
            assert!(!plan.run(&px[..n], 2, None, &mut scratch, &mut out));
        }
    }

    #[test]
    fn shapes_and_types_the_pass_cannot_take_are_declined() {
        let sig = SigShape::new(64, 64);
        let terms = terms_for(sig);
        let refs: Vec<&LinearTerms> = terms.iter().collect();
        assert!(FusedPlan::new(sig, DType::U8, &refs).is_none());
        assert!(FusedPlan::new(sig, DType::U32, &refs).is_none());
        // Rows not a multiple of 32 pixels.
        let odd = SigShape::new(64, 48);
        let t = terms_for(odd);
        assert!(FusedPlan::new(odd, DType::U16, &t.iter().collect::<Vec<_>>()).is_none());
        // A mask made for another shape.
        assert!(FusedPlan::new(SigShape::new(32, 64), DType::U16, &refs).is_none());
        // 2048 columns: one row of column-weighted products could overflow an i32 lane;
        // plain sums are fine.
        let wide = SigShape::new(8, 2048);
        let moments = LinearTerms {
            support: None,
            weights: vec![Weight::Column],
        };
        assert!(FusedPlan::new(wide, DType::U16, &[&moments]).is_none());
        let plain = LinearTerms {
            support: None,
            weights: vec![Weight::One],
        };
        assert_eq!(
            FusedPlan::new(wide, DType::U16, &[&plain]).is_some(),
            kernel::AVAILABLE
        );
        assert_eq!(
            FusedPlan::new(sig, DType::U16, &refs).is_some(),
            kernel::AVAILABLE
        );
    }
}
