//! StepSampler: the training rows of every optimizer step, and this rank's share of them, for a
//! run whose shape (processes x per-device batch x accumulation) may differ from the shape that
//! laid the epochs out.
//!
//! The run that starts training fixes the layout: its [`BatchSampler`] cuts each epoch's
//! permutation into batches (padded for its number of processes), and optimizer step `s` takes
//! global batches `s * W * A ..` (`W` processes, `A` accumulation), so a step is a list of at
//! most `W * b * A` rows. A run resumed with another shape of the same global batch keeps that
//! list: rank `r`'s micro-batch `m` takes the rows at `(m * W' + r) * b'` and the `b'` after, which
//! is also where its dropout masks are drawn. Each row weighs in the step's loss as it did in the
//! layout: `1 / (rows of its batch * W * A)`; a micro-batch's mean loss is scaled to give its rows
//! that weight once the process group has averaged over `W'` ranks. With the layout's own shape
//! this is exactly the sampler's batches and a loss divided by the accumulation.

use serde::{Deserialize, Serialize};

use super::sampler::BatchSampler;

/// How a step's rows are split: processes x rows per micro-batch x micro-batches per step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchShape {
    pub processes: usize,
    pub batch_size: usize,
    pub accumulation: usize,
}

impl BatchShape {
    /// Rows per optimizer step.
    pub fn global(&self) -> usize {
        self.processes * self.batch_size * self.accumulation
    }
}

impl std::fmt::Display for BatchShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = if self.processes == 1 { "process" } else { "processes" };
        write!(f, "{} {p} x {} rows x {} accumulation", self.processes, self.batch_size, self.accumulation)
    }
}

/// Rows of one forward and backward pass: where they sit in the step, and the factor its mean loss
/// is multiplied by before the backward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct MicroBatch {
    pub rows: Vec<usize>,
    /// The first row's place in the step's global batch (dropout masks are keyed by it).
    pub first_row: usize,
    pub loss_scale: f64,
}

/// Every step of an epoch for one rank of a run of `shape`, laid out by `layout`.
#[derive(Debug, Clone, PartialEq)]
pub struct StepSampler {
    /// Shuffling, seed and `drop_last`, with the layout's batch size and processes.
    layout_sampler: BatchSampler,
    layout: BatchShape,
    shape: BatchShape,
    rank: usize,
}

impl StepSampler {
    /// Rank `rank` of a run of `shape` over `num_rows` rows, on epochs laid out by `layout`, whose
    /// global batch `shape` must keep.
    pub fn new(
        num_rows: usize,
        seed: u64,
        drop_last: bool,
        layout: BatchShape,
        shape: BatchShape,
        rank: usize,
    ) -> Self {
        assert_eq!(layout.global(), shape.global(), "{shape} does not keep the global batch of {layout}");
        let layout_sampler =
            BatchSampler::new(num_rows, layout.batch_size, true, seed).drop_last(drop_last).shard(0, layout.processes);
        Self { layout_sampler, layout, shape, rank }
    }

    pub fn layout(&self) -> BatchShape {
        self.layout
    }

    /// Micro-batches per epoch of one rank of the layout (what `epoch` fractions count).
    pub fn layout_batches_per_epoch(&self) -> usize {
        self.layout_sampler.len()
    }

    /// Optimizer steps per epoch.
    pub fn steps_per_epoch(&self) -> usize {
        self.layout_batches_per_epoch().div_ceil(self.layout.accumulation)
    }

    /// Steps done once `batches` of the layout's micro-batches of an epoch are.
    pub fn steps_done(&self, batches: usize) -> usize {
        batches.div_ceil(self.layout.accumulation)
    }

    /// The layout's micro-batches of an epoch done after `steps` steps.
    pub fn batches_done(&self, steps: usize) -> usize {
        (steps * self.layout.accumulation).min(self.layout_batches_per_epoch())
    }

    /// This rank's micro-batches of every step of `epoch`. A step near an epoch's end may leave a
    /// rank fewer micro-batches, or none: it still takes part in the step's all-reduce.
    pub fn epoch(&self, epoch: u64) -> Vec<Vec<MicroBatch>> {
        let batches = self.layout_sampler.global_batches(epoch);
        let per_step = self.layout.processes * self.layout.accumulation;
        batches.chunks(per_step).map(|step| self.split(step)).collect()
    }

    /// This rank's micro-batches of a step made of the layout's `batches`, each cut where the
    /// weight of its rows changes (only a single process's short last batch weighs differently).
    fn split(&self, batches: &[Vec<usize>]) -> Vec<MicroBatch> {
        let (layout, shape) = (self.layout, self.shape);
        let rows: Vec<(usize, usize)> = batches.iter().flat_map(|b| b.iter().map(move |&row| (row, b.len()))).collect();
        let mut out = Vec::new();
        for m in 0..shape.accumulation {
            let start = (m * shape.processes + self.rank) * shape.batch_size;
            let end = (start + shape.batch_size).min(rows.len());
            let mut first = start;
            while first < end {
                let of = rows[first].1;
                let len = rows[first..end].iter().take_while(|r| r.1 == of).count();
                out.push(MicroBatch {
                    rows: rows[first..first + len].iter().map(|r| r.0).collect(),
                    first_row: first,
                    loss_scale: (shape.processes * len) as f64 / (of * layout.processes * layout.accumulation) as f64,
                });
                first += len;
            }
        }
        out
    }
}

/// The shapes that keep a global batch of `global` rows on `processes` processes, as
/// "batch x accumulation" pairs; empty when `processes` does not divide it.
pub fn shapes_for(global: usize, processes: usize) -> Vec<(usize, usize)> {
    if processes == 0 || !global.is_multiple_of(processes) {
        return Vec::new();
    }
    let per = global / processes;
    (1..=per).rev().filter(|b| per.is_multiple_of(*b)).map(|b| (b, per / b)).collect()
}

/// The process counts that can keep a global batch of `global` rows.
pub fn process_counts_for(global: usize) -> Vec<usize> {
    (1..=global).filter(|p| global.is_multiple_of(*p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(processes: usize, batch_size: usize, accumulation: usize) -> BatchShape {
        BatchShape { processes, batch_size, accumulation }
    }

    /// Every rank's rows of every step, with their places and scales, for `shape` on `layout`.
    fn steps(rows: usize, layout: BatchShape, shape: BatchShape) -> Vec<Vec<(usize, usize, f64)>> {
        let samplers: Vec<_> =
            (0..shape.processes).map(|r| StepSampler::new(rows, 3, false, layout, shape, r).epoch(1)).collect();
        (0..samplers[0].len())
            .map(|s| {
                let mut all: Vec<(usize, usize, f64)> = samplers
                    .iter()
                    .flat_map(|e| e[s].iter())
                    .flat_map(|mb| {
                        let scale = mb.loss_scale / (shape.processes * mb.rows.len()) as f64;
                        mb.rows.iter().enumerate().map(move |(i, &row)| (mb.first_row + i, row, scale))
                    })
                    .collect();
                all.sort_by_key(|x| x.0);
                all
            })
            .collect()
    }

    #[test]
    fn the_layouts_own_shape_is_the_batch_samplers_batches() {
        // 2 ranks x 4 rows x 2 accumulation over 37 rows: rank 1's micro-batches are its sampler's
        // batches, at (m * 2 + 1) * 4, each loss divided by the accumulation.
        let s = shape(2, 4, 2);
        let sampler = StepSampler::new(37, 3, false, s, s, 1);
        let mine = BatchSampler::new(37, 4, true, 3).shard(1, 2).batches(1);
        let epoch = sampler.epoch(1);
        assert_eq!(epoch.len(), sampler.steps_per_epoch());
        assert_eq!(sampler.layout_batches_per_epoch(), mine.len());
        let flat: Vec<&MicroBatch> = epoch.iter().flatten().collect();
        assert_eq!(flat.iter().map(|mb| mb.rows.clone()).collect::<Vec<_>>(), mine);
        for step in &epoch {
            for (m, mb) in step.iter().enumerate() {
                assert_eq!(mb.first_row, (m * 2 + 1) * 4);
                assert_eq!(mb.loss_scale, 1.0 / 2.0);
            }
        }
    }

    #[test]
    fn other_shapes_of_the_global_batch_take_the_same_rows_at_the_same_places_and_weights() {
        // 37 rows: 2 x 4 pads its last batch and adds one; a single process of 8 has a short last
        // batch (5 rows), whose rows weigh 1/5 of a step where the others weigh 1/8.
        for layout in [shape(2, 4, 1), shape(1, 8, 1), shape(1, 4, 2), shape(2, 2, 2)] {
            let reference = steps(37, layout, layout);
            for other in
                [shape(1, 8, 1), shape(1, 4, 2), shape(2, 4, 1), shape(4, 2, 1), shape(2, 1, 4), shape(8, 1, 1)]
            {
                let got = steps(37, layout, other);
                let places = |s: &[Vec<(usize, usize, f64)>]| -> Vec<Vec<(usize, usize)>> {
                    s.iter().map(|step| step.iter().map(|r| (r.0, r.1)).collect()).collect()
                };
                assert_eq!(places(&got), places(&reference), "{other} on {layout}");
                for (a, b) in got.iter().flatten().zip(reference.iter().flatten()) {
                    assert!((a.2 - b.2).abs() <= 1e-15 * b.2, "{other} on {layout}: weight {} vs {}", a.2, b.2);
                }
            }
        }
        let short = steps(37, shape(1, 8, 1), shape(1, 8, 1));
        assert_eq!(short.last().unwrap().len(), 5);
        assert!(short.last().unwrap().iter().all(|r| (r.2 - 0.2).abs() < 1e-15));
        let padded = steps(37, shape(2, 4, 1), shape(2, 4, 1));
        assert_eq!(padded.last().unwrap().len(), 8);
        assert!(padded.iter().flatten().all(|r| r.2 == 1.0 / 8.0));
    }

    #[test]
    fn a_short_step_leaves_some_ranks_nothing_and_counts_the_layouts_batches() {
        // 1 x 8 over 37 rows on 4 ranks of 2: the last step's 5 rows are rank 0's 2, rank 1's 2 and
        // rank 2's 1; rank 3 has nothing to do in it.
        let (layout, s) = (shape(1, 8, 1), shape(4, 2, 1));
        let last = |r| StepSampler::new(37, 3, false, layout, s, r).epoch(0).pop().unwrap();
        assert_eq!(last(2).iter().map(|mb| mb.rows.len()).collect::<Vec<_>>(), [1]);
        assert!(last(3).is_empty());
        let sampler = StepSampler::new(37, 3, false, shape(1, 4, 2), shape(2, 4, 1), 0);
        assert_eq!((sampler.layout_batches_per_epoch(), sampler.steps_per_epoch()), (10, 5));
        assert_eq!((sampler.batches_done(4), sampler.batches_done(5), sampler.steps_done(8)), (8, 10, 4));
    }

    #[test]
    fn usable_shapes_are_named() {
        assert_eq!(shapes_for(8, 2), [(4, 1), (2, 2), (1, 4)]);
        assert!(shapes_for(8, 3).is_empty());
        assert_eq!(process_counts_for(8), [1, 2, 4, 8]);
    }
}
