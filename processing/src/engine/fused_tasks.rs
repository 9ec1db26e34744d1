//! The tasks of a worker that the fused pass takes ([`crate::fused`]): which ones, the
//! pass's plan, and handing each task its share of the pass's sums.

use super::worker::UdfLayout;
use crate::fused::{Fusable, FusedPlan, LinearTerms, Scratch};
use crate::udf::{PartitionTask, TileView, UdfMeta};
use std::ops::Range;
use stemflow_core::frame::PixelsRef;

/// The tasks of a worker that the fused pass takes ([`crate::fused`]), its plan and buffers.
pub(super) struct FusedTasks {
    plan: FusedPlan,
    /// The [`Fusable::SigSum`] task (the first, if several) whose accumulator the pass adds into.
    sum: Option<usize>,
    /// Each [`Fusable::Linear`] task and the range of its sums among the plan's terms.
    linear: Vec<(usize, Range<usize>)>,
    scratch: Scratch,
    /// The pass's sums, frame-major.
    sums: Vec<u64>,
    /// One task's sums, frame-major.
    task_sums: Vec<u64>,
}

impl FusedTasks {
    /// The fused pass for `tasks` (`banded[u]`: task `u` is fed in bands), or `None` when
    /// no banded task is [`Fusable::Linear`] or [`FusedPlan::new`] declines the shape,
    /// dtype or build.
    pub(super) fn new(
        meta: &UdfMeta,
        tasks: &[Box<dyn PartitionTask>],
        banded: &[bool],
    ) -> Option<Self> {
        let mut sum = None;
        let mut linear = Vec::new();
        let mut terms: Vec<LinearTerms> = Vec::new();
        for (u, task) in tasks.iter().enumerate() {
            if !banded[u] {
                continue;
            }
            match task.fusable() {
                Some(Fusable::SigSum) if sum.is_none() => sum = Some(u),
                Some(Fusable::Linear(t)) => {
                    let a: usize = terms.iter().map(|t| t.weights.len()).sum();
                    let k: usize = t.iter().map(|t| t.weights.len()).sum();
                    linear.push((u, a..a + k));
                    terms.extend(t);
                }
                _ => {}
            }
        }
        // The sum alone streams as fast in bands (measured); the pass pays off when
        // there is more to do per pixel.
        if linear.is_empty() {
            return None;
        }
        let refs: Vec<&LinearTerms> = terms.iter().collect();
        let plan = FusedPlan::new(meta.sig_shape, meta.dtype, &refs)?;
        Some(Self {
            plan,
            sum,
            linear,
            scratch: Scratch::default(),
            sums: Vec::new(),
            task_sums: Vec::new(),
        })
    }

    /// True for each task the pass takes.
    pub(super) fn takes(&self, tasks: usize) -> Vec<bool> {
        let mut t = vec![false; tasks];
        for u in self
            .sum
            .iter()
            .copied()
            .chain(self.linear.iter().map(|l| l.0))
        {
            t[u] = true;
        }
        t
    }

    /// Runs the pass on `chunk` (frames `f..` of `view`) and hands each fused task its
    /// results; false, having handed nothing, when the chunk is not u16 or the sum task
    /// gave no accumulator (its tasks then take the chunk in bands).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run(
        &mut self,
        view: &TileView<'_>,
        f: usize,
        chunk: &TileView<'_>,
        tasks: &mut [Box<dyn PartitionTask>],
        values: &mut [Vec<f64>],
        starts: &[usize],
        layouts: &[UdfLayout],
    ) -> bool {
        let n = view.sig_shape.len();
        let m = chunk.n_frames;
        let PixelsRef::U16(all) = view.pixels else {
            return false;
        };
        let Some(px) = all.get(f * n..) else {
            return false;
        };
        let nt = self.plan.n_terms();
        self.sums.clear();
        self.sums.resize(m * nt, 0);
        let acc = match self.sum {
            Some(u) => match tasks[u].fused_sum(m) {
                Some(acc) => Some(acc),
                None => return false,
            },
            None => None,
        };
        if !self.plan.run(px, m, acc, &mut self.scratch, &mut self.sums) {
            return false;
        }
        for (u, terms) in &self.linear {
            self.task_sums.clear();
            for fr in 0..m {
                self.task_sums
                    .extend_from_slice(&self.sums[fr * nt + terms.start..fr * nt + terms.end]);
            }
            let w = layouts[*u].width;
            let base = starts[*u] + f * w;
            tasks[*u].take_linear(chunk, &self.task_sums, &mut values[*u][base..base + m * w]);
        }
        true
    }
}
