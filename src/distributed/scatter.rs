//! ZeRO-2's reduce-scatter of the gradients' mean into this rank's slices, bucket by bucket and
//! always in bucket order (so every rank calls the same collectives in the same order). On the CPU
//! the buckets fill during the backward pass, as the kernels hand the gradients over
//! ([`BucketScatter::offer`]); each bucket is reduce-scattered as soon as it and those before it
//! are complete, and its gradients are never kept whole. What has not come by the pass's end (the
//! LayerNorm parameters, a rank with no rows in the step) is taken from the gradient store
//! ([`BucketScatter::finish`]).

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, TensorId, Var};

use super::shards::ShardLayout;
use super::ProcessGroup;
use crate::kernels::cpu::storage::with_f32;
use crate::{bail, Result};

/// The buckets of one step's gradients as they fill and are reduce-scattered.
#[derive(Debug)]
pub struct BucketScatter {
    layout: ShardLayout,
    vars: Vec<Var>,
    /// A parameter's index from its tensor id.
    index: HashMap<TensorId, usize>,
    /// Per parameter: its bucket and its offset there.
    place: Vec<(usize, usize)>,
    /// Per bucket: the scaled gradients gathered so far (allocated by the first to come).
    filling: Vec<Option<Vec<f32>>>,
    /// Per bucket: parameters whose gradient has not come yet.
    missing: Vec<usize>,
    arrived: Vec<bool>,
    /// This rank's slices of the buckets reduced so far, in order.
    slices: Vec<Tensor>,
}

impl BucketScatter {
    /// Empty buckets for `vars` (the parameters in name order) cut as `layout` says.
    pub fn new(vars: &[Var], layout: &ShardLayout) -> Self {
        let mut place = vec![(0, 0); vars.len()];
        for (b, bucket) in layout.buckets().iter().enumerate() {
            let mut offset = 0;
            for &i in &bucket.params {
                place[i] = (b, offset);
                offset += vars[i].elem_count();
            }
        }
        let mut scatter = Self {
            layout: layout.clone(),
            vars: vars.to_vec(),
            index: vars.iter().enumerate().map(|(i, v)| (v.id(), i)).collect(),
            place,
            filling: Vec::new(),
            missing: Vec::new(),
            arrived: Vec::new(),
            slices: Vec::new(),
        };
        scatter.reset();
        scatter
    }

    fn reset(&mut self) {
        let buckets = self.layout.buckets();
        self.filling = vec![None; buckets.len()];
        self.missing = buckets.iter().map(|b| b.params.len()).collect();
        self.arrived = vec![false; self.vars.len()];
        self.slices.clear();
    }

    /// Takes `grad`, the whole step's gradient of `param` on this rank, when `param` is one of its
    /// parameters on the CPU (`Ok(None)`), and reduce-scatters every bucket that is then complete
    /// along with those before it. Anything else is handed back.
    pub fn offer(&mut self, param: &Tensor, grad: Tensor, pg: &dyn ProcessGroup) -> Result<Option<Tensor>> {
        let Some(&i) = self.index.get(&param.id()) else { return Ok(Some(grad)) };
        if !grad.device().is_cpu() {
            return Ok(Some(grad));
        }
        self.pack(i, &grad)?;
        while self.slices.len() < self.missing.len() && self.missing[self.slices.len()] == 0 {
            self.reduce_next(pg)?;
        }
        Ok(None)
    }

    /// Reduce-scatters the buckets not reduced yet, with the gradients `store` holds for the
    /// parameters that have not come (zeros for one it lacks, as in DDP's all-reduce), and returns
    /// every bucket's slice; the next step starts with empty buckets.
    pub fn finish(&mut self, store: &mut GradStore, pg: &dyn ProcessGroup) -> Result<Vec<Tensor>> {
        for b in self.slices.len()..self.missing.len() {
            for k in 0..self.layout.buckets()[b].params.len() {
                let i = self.layout.buckets()[b].params[k];
                if self.arrived[i] {
                    continue;
                }
                match store.remove(self.vars[i].as_tensor()) {
                    Some(grad) => self.pack(i, &grad)?,
                    None => {
                        self.arrived[i] = true;
                        self.missing[b] -= 1;
                    }
                }
            }
            self.reduce_next(pg)?;
        }
        let slices = std::mem::take(&mut self.slices);
        self.reset();
        Ok(slices)
    }

    /// Adds parameter `i`'s gradient, scaled by 1 / world, at its place in its bucket.
    fn pack(&mut self, i: usize, grad: &Tensor) -> Result<()> {
        let (b, offset) = self.place[i];
        if b < self.slices.len() {
            bail!("the gradient of parameter {i} came after its bucket was reduced");
        }
        let bucket = &self.layout.buckets()[b];
        let n = self.vars[i].elem_count();
        if grad.elem_count() != n {
            bail!("a gradient of {} values for a parameter of {n}", grad.elem_count());
        }
        let scale = 1.0 / self.layout.world() as f32;
        let buffer = self.filling[b].get_or_insert_with(|| vec![0f32; bucket.block * self.layout.world()]);
        let first = !self.arrived[i];
        with_f32(grad, "gradient", |g| {
            let to = &mut buffer[offset..offset + n];
            if first {
                to.iter_mut().zip(g).for_each(|(t, &v)| *t = v * scale);
            } else {
                to.iter_mut().zip(g).for_each(|(t, &v)| *t += v * scale);
            }
            Ok(())
        })?;
        if first {
            self.arrived[i] = true;
            self.missing[b] -= 1;
        }
        Ok(())
    }

    /// Reduce-scatters the next bucket in order and keeps a copy of this rank's slice of it (the
    /// bucket itself is freed: only the slices outlive the backward pass).
    fn reduce_next(&mut self, pg: &dyn ProcessGroup) -> Result<()> {
        let b = self.slices.len();
        let _span = crate::spans::enter_with(crate::spans::ALL_REDUCE, Some(b));
        let bucket = &self.layout.buckets()[b];
        let mut buf = self.filling[b].take().unwrap_or_else(|| vec![0f32; bucket.block * self.layout.world()]);
        pg.reduce_scatter_sum_in_place_f32(&mut buf)?;
        let start = bucket.block * self.layout.rank();
        let slice = buf[start..start + bucket.owned.len()].to_vec();
        drop(buf);
        let device = self.vars[bucket.first()].device();
        self.slices.push(Tensor::from_vec(slice, bucket.owned.len(), device)?);
        Ok(())
    }
}

/// ZeRO-2 after the backward pass: the mean over the ranks of every gradient in `store`,
/// reduce-scattered bucket by bucket into this rank's slices (one tensor per bucket, on the
/// parameters' device). Each bucket's gradients leave `store` as it is reduced, so the full
/// gradients are freed on the way. A parameter without a gradient on this rank counts as zeros.
pub fn reduce_scatter_mean(
    store: &mut GradStore,
    vars: &[Var],
    layout: &ShardLayout,
    pg: &dyn ProcessGroup,
) -> Result<Vec<Tensor>> {
    if vars.first().is_none_or(|v| v.device().is_cpu()) {
        return BucketScatter::new(vars, layout).finish(store, pg);
    }
    let world = layout.world();
    let scale = 1.0 / world as f32;
    let mut slices = Vec::with_capacity(layout.buckets().len());
    for (k, bucket) in layout.buckets().iter().enumerate() {
        let _span = crate::spans::enter_with(crate::spans::ALL_REDUCE, Some(k));
        let device = vars[bucket.first()].device();
        let mut parts = Vec::with_capacity(bucket.params.len() + 1);
        for &i in &bucket.params {
            parts.push(match store.remove(vars[i].as_tensor()) {
                Some(g) => g.flatten_all()?.affine(f64::from(scale), 0.0)?,
                None => Tensor::zeros(vars[i].elem_count(), DType::F32, device)?,
            });
        }
        if bucket.block * world > bucket.len {
            parts.push(Tensor::zeros(bucket.block * world - bucket.len, DType::F32, device)?);
        }
        let flat = Tensor::cat(&parts, 0)?;
        drop(parts);
        let block = Tensor::zeros(bucket.block, DType::F32, device)?;
        let block = if pg.reduce_scatter_sum_on_device(&flat, &block)? {
            block
        } else {
            let mut buf = flat.to_vec1::<f32>()?;
            pg.reduce_scatter_sum_in_place_f32(&mut buf)?;
            let start = bucket.block * pg.rank();
            Tensor::from_slice(&buf[start..start + bucket.block], bucket.block, device)?
        };
        slices.push(block.narrow(0, 0, bucket.owned.len())?);
    }
    let _span = crate::spans::enter(crate::spans::ALL_REDUCE);
    pg.finish_device_collectives()?;
    Ok(slices)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributed::ThreadGroup;
    use candle_core::Device;

    /// Buckets are reduced in order as soon as they and those before them are complete; what has
    /// not come is taken from the store at the end; every rank gets its slices of the mean.
    #[test]
    fn buckets_are_reduced_in_order_as_they_fill() {
        let out = ThreadGroup::run(2, |pg| {
            let r = pg.rank() as f32;
            let var = |n: usize| Var::from_vec(vec![0f32; n], n, &Device::Cpu).unwrap();
            let vars = vec![var(3), var(4), var(2)];
            // Buckets of one parameter each, in the order c, b, a.
            let layout = ShardLayout::new(&[3, 4, 2], &[2, 1, 0], 8, 2, pg.rank());
            let mut scatter = BucketScatter::new(&vars, &layout);
            let grad = |values: &[f32]| Tensor::new(values, &Device::Cpu).unwrap();
            let unknown = grad(&[1.0]);
            assert!(scatter.offer(&unknown, grad(&[1.0]), pg).unwrap().is_some(), "not a parameter of its");
            assert!(scatter.offer(vars[1].as_tensor(), grad(&[2.0 * r, 2.0, 4.0, 6.0]), pg).unwrap().is_none());
            let waiting = scatter.slices.len();
            scatter.offer(vars[2].as_tensor(), grad(&[r, 1.0]), pg).unwrap();
            let reduced = scatter.slices.len();
            let mut store = GradStore::default();
            store.insert(vars[0].as_tensor(), grad(&[3.0, 3.0, 3.0 + 2.0 * r]));
            let slices = scatter.finish(&mut store, pg).unwrap();
            assert!(store.get(vars[0].as_tensor()).is_none());
            let slices: Vec<Vec<f32>> = slices.iter().map(|s| s.to_vec1::<f32>().unwrap()).collect();
            (waiting, reduced, slices)
        });
        // The means: c = [0.5, 1], b = [1, 2, 4, 6], a = [3, 3, 4]; rank 0 owns the first half of
        // each bucket (rounded up), rank 1 the rest.
        assert_eq!((out[0].0, out[0].1), (0, 2), "b waits for c, then both go");
        assert_eq!(out[0].2, [vec![0.5], vec![1.0, 2.0], vec![3.0, 3.0]]);
        assert_eq!(out[1].2, [vec![1.0], vec![4.0, 6.0], vec![4.0]]);
    }
}
