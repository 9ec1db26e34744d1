//! The UDFs on sparse frames (CSR rows, decision 0010): which tasks take events directly,
//! and the exact weighted sums the engine computes from the events for the others.
//!
//! A task that is [`Fusable::Linear`] (sum over signal, the virtual detectors, the CoM
//! moments) gets its sums `Σ v·w(index)` over each row's events: `w` is 1, the column or
//! the row, inside the term's support; the same exact integers the dense paths sum over
//! the pixels, so its nav values are bit-identical. A task that takes rows itself
//! ([`PartitionTask::process_csr`]: the sum, statistics, the radial profile) reads them. Either costs per event, not
//! per pixel. Any other task makes the worker densify the rows per chunk into a reused
//! tile and run the dense path for all tasks.

use crate::fused::{Fusable, LinearTerms, Weight};
use crate::udf::{Granularity, PartitionTask};
use stemflow_core::SigShape;
use stemflow_core::csr::CsrRows;

/// One term's support as a bitmap over the frame's pixels (`None`: the whole frame) and
/// its weights.
#[derive(Debug)]
pub(super) struct Term {
    support: Option<Vec<u64>>,
    weights: Vec<Weight>,
}

impl Term {
    fn new(t: &LinearTerms, sig: SigShape) -> Self {
        let support = t.support.as_ref().map(|m| {
            let mut bits = vec![0u64; sig.len().div_ceil(64)];
            for s in m.spans() {
                let base = s.row as usize * sig.cols;
                for x in s.start as usize..(s.end as usize).min(sig.cols) {
                    let i = base + x;
                    if let Some(w) = bits.get_mut(i / 64) {
                        *w |= 1 << (i % 64);
                    }
                }
            }
            bits
        });
        Self {
            support,
            weights: t.weights.clone(),
        }
    }
}

/// How one task takes sparse rows.
#[derive(Debug)]
pub(super) enum TaskCsr {
    /// [`PartitionTask::process_csr`].
    Rows,
    /// Its [`Fusable::Linear`] terms, computed by the engine: `k` sums per frame.
    Linear { terms: Vec<Term>, k: usize },
    /// Needs dense frames.
    Dense,
}

/// Per task, how it takes sparse rows; the plan is sparse only when every task can.
#[derive(Debug)]
pub(super) struct CsrPlan {
    pub(super) tasks: Vec<TaskCsr>,
    /// True when every task takes rows without densifying.
    pub(super) all: bool,
    sig: SigShape,
}

impl CsrPlan {
    /// The plan for `tasks` on frames of `sig` (`granularity[u]` of task `u`).
    pub(super) fn new(
        tasks: &mut [Box<dyn PartitionTask>],
        granularity: &[Granularity],
        sig: SigShape,
    ) -> Self {
        let plan: Vec<TaskCsr> = tasks
            .iter_mut()
            .zip(granularity)
            .map(|(t, g)| {
                if *g != Granularity::Tile {
                    return TaskCsr::Dense;
                }
                match t.fusable() {
                    Some(Fusable::Linear(terms)) => TaskCsr::Linear {
                        k: terms.iter().map(|t| t.weights.len()).sum(),
                        terms: terms.iter().map(|t| Term::new(t, sig)).collect(),
                    },
                    // Probing with no rows changes nothing in the task.
                    _ if t.process_csr(&CsrRows::default(), 0..0, &mut []) => TaskCsr::Rows,
                    _ => TaskCsr::Dense,
                }
            })
            .collect();
        let all = plan.iter().all(|p| !matches!(p, TaskCsr::Dense));
        Self {
            tasks: plan,
            all,
            sig,
        }
    }

    /// The `k` sums per frame of `terms` over rows `frames` of `rows`, frame-major, into
    /// `out` (cleared).
    pub(super) fn linear_sums(
        &self,
        terms: &[Term],
        k: usize,
        rows: &CsrRows,
        frames: std::ops::Range<usize>,
        out: &mut Vec<u64>,
    ) {
        out.clear();
        out.resize(frames.len() * k, 0);
        let cols = self.sig.cols.max(1) as u64;
        // Column and row of a flat index: a shift and a mask for power-of-two widths
        // (every Timepix3 layout), a division otherwise.
        let shift = cols.is_power_of_two().then(|| cols.trailing_zeros());
        for (f, r) in frames.enumerate() {
            let (idx, val) = rows.row(r);
            let sums = &mut out[f * k..(f + 1) * k];
            let mut at = 0;
            for t in terms {
                let n = t.weights.len();
                let s = &mut sums[at..at + n];
                at += n;
                let (mut s1, mut sx, mut sy) = (0u64, 0u64, 0u64);
                for (&i, &v) in idx.iter().zip(val) {
                    if let Some(bits) = &t.support
                        && bits[i as usize / 64] & (1 << (i % 64)) == 0
                    {
                        continue;
                    }
                    let v = u64::from(v);
                    let i = u64::from(i);
                    let (x, y) = match shift {
                        Some(sh) => (i & (cols - 1), i >> sh),
                        None => (i % cols, i / cols),
                    };
                    s1 = s1.wrapping_add(v);
                    sx = sx.wrapping_add(v * x);
                    sy = sy.wrapping_add(v * y);
                }
                for (o, w) in s.iter_mut().zip(&t.weights) {
                    *o = match w {
                        Weight::One => s1,
                        Weight::Column => sx,
                        Weight::Row => sy,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::udf::{Udf, UdfMeta};
    use stemflow_core::{DType, NavShape};

    fn plan(udfs: &[Box<dyn Udf>], dtype: DType) -> CsrPlan {
        let meta = UdfMeta {
            nav_shape: NavShape::new(2, 2),
            sig_shape: SigShape::new(64, 64),
            dtype,
        };
        let mut tasks: Vec<_> = udfs.iter().map(|u| u.new_partition(&meta)).collect();
        let g: Vec<_> = udfs.iter().map(|u| u.granularity(&meta)).collect();
        CsrPlan::new(&mut tasks, &g, meta.sig_shape)
    }

    #[test]
    fn the_standard_set_takes_events_and_statistics_need_pixels() {
        let mut udfs = crate::standard_udfs(32.0, 32.0, 8.0);
        let p = plan(&udfs, DType::U32);
        assert!(
            p.all,
            "sum, sum over signal, virtual detectors and CoM take CSR"
        );
        assert!(matches!(p.tasks[0], TaskCsr::Rows));
        assert!(matches!(p.tasks[2], TaskCsr::Linear { k: 2, .. }));
        assert!(matches!(p.tasks[3], TaskCsr::Linear { k: 3, .. }));
        udfs.push(Box::new(crate::StatsUdf::new()));
        assert!(plan(&udfs, DType::U32).all, "statistics take rows");
        udfs.push(Box::new(crate::udfs::PickUdf::new(0, 0)));
        assert!(!plan(&udfs, DType::U32).all, "picking a frame needs pixels");
    }
}
