//! Gradient averaging across ranks: the parameters in name order, packed into the flat buckets
//! of [`super::buckets`], one all-reduce per bucket. The one copy is the flatten into the bucket
//! (scaled by 1/world on the way), straight into the reduced bucket's storage, which MPI then sums
//! in place and the gradients then view.

use std::cell::RefCell;
use std::ops::Range;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, InplaceOp1, Layout, Tensor};

use super::buckets::buckets;
use super::ProcessGroup;
use crate::kernels::cpu::storage::with_f32;
use crate::model::Params;
use crate::{Error, Result};

/// Averages gradients across ranks bucket by bucket, keeping its buffers from one step to the
/// next: one reduced tensor per bucket whose storage the averaged gradients view. Fresh multi-megabyte buffers every step would fault their pages in again, which
/// cost as much as the all-reduce itself.
///
/// The gradients it returns are views into its buffers: they are valid until the next call.
#[derive(Debug, Default)]
pub struct GradientReducer {
    reduced: Vec<Tensor>,
}

impl GradientReducer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces every parameter's gradient in `store` by its mean over the ranks of `pg`. A
    /// parameter without a gradient on this rank counts as zeros (and gets the mean of the
    /// others'). A single process returns at once.
    pub fn all_reduce_mean(
        &mut self,
        store: &mut GradStore,
        params: &Params,
        pg: &dyn ProcessGroup,
        bucket_bytes: usize,
    ) -> Result<()> {
        let world = pg.world_size();
        if world == 1 {
            return Ok(());
        }
        let vars: Vec<_> = params.iter().map(|(_, v)| v).collect();
        let scale = 1.0 / world as f32;
        let buckets = buckets(vars.iter().map(|v| v.elem_count()), bucket_bytes);
        if vars.first().is_some_and(|v| !v.device().is_cpu()) {
            return Self::all_reduce_on_device(store, &vars, buckets, scale, pg);
        }
        for (k, bucket) in buckets.into_iter().enumerate() {
            let _span = crate::spans::enter_with(crate::spans::ALL_REDUCE, Some(k));
            let len: usize = bucket.clone().map(|i| vars[i].elem_count()).sum();
            let grads = bucket
                .clone()
                .map(|i| {
                    Ok((store.get(vars[i].as_tensor()).map(Tensor::contiguous).transpose()?, vars[i].elem_count()))
                })
                .collect::<Result<Vec<_>>>()?;
            let device = vars[bucket.start].device();
            // A gradient that still views last step's bucket (it would be read while the bucket
            // is written) gets the bucket a new buffer.
            let reusable = self.reduced.get(k).is_some_and(|t| {
                t.elem_count() == len && grads.iter().filter_map(|(g, _)| g.as_ref()).all(|g| !same_storage(g, t))
            });
            if !reusable {
                self.reduced.truncate(k);
                self.reduced.push(Tensor::zeros(len, candle_core::DType::F32, device)?);
            }
            let reduced = &self.reduced[k];
            let op = FlattenAndSum { grads: &grads, scale, pg, error: RefCell::new(None) };
            if let Err(e) = reduced.inplace_op1(&op) {
                return Err(op.error.into_inner().unwrap_or(Error::Candle(e)));
            }
            insert_views(store, vars[bucket].iter().copied(), reduced)?;
        }
        Ok(())
    }

    /// The buckets of gradients that live on a GPU: flattened and scaled there, summed by the
    /// process group on the device's stream (NCCL), with no copy through the host; a backend that
    /// only reduces host memory gets each bucket through the host instead.
    fn all_reduce_on_device(
        store: &mut GradStore,
        vars: &[&candle_core::Var],
        buckets: Vec<Range<usize>>,
        scale: f32,
        pg: &dyn ProcessGroup,
    ) -> Result<()> {
        for (k, bucket) in buckets.into_iter().enumerate() {
            let _span = crate::spans::enter_with(crate::spans::ALL_REDUCE, Some(k));
            let mut parts = Vec::with_capacity(bucket.len());
            for i in bucket.clone() {
                let var = vars[i];
                parts.push(match store.get(var.as_tensor()) {
                    Some(g) => g.flatten_all()?.affine(f64::from(scale), 0.0)?,
                    None => Tensor::zeros(var.elem_count(), candle_core::DType::F32, var.device())?,
                });
            }
            let mut flat = Tensor::cat(&parts, 0)?;
            drop(parts);
            if !pg.all_reduce_sum_in_place(&flat)? {
                let send = flat.to_vec1::<f32>()?;
                let mut recv = vec![0f32; send.len()];
                pg.all_reduce_sum_f32(&send, &mut recv)?;
                flat = Tensor::from_vec(recv, send.len(), flat.device())?;
            }
            insert_views(store, vars[bucket].iter().copied(), &flat)?;
        }
        // Once per step, not per bucket: the buckets' collectives run back to back on the device.
        let _span = crate::spans::enter(crate::spans::ALL_REDUCE);
        pg.finish_device_collectives()
    }
}

/// Makes each parameter's gradient in `store` the view of its part of a reduced bucket.
fn insert_views<'v>(
    store: &mut GradStore,
    vars: impl Iterator<Item = &'v candle_core::Var>,
    bucket: &Tensor,
) -> Result<()> {
    let mut offset = 0;
    for var in vars {
        let n = var.elem_count();
        store.insert(var.as_tensor(), bucket.narrow(0, offset, n)?.reshape(var.shape())?);
        offset += n;
    }
    Ok(())
}

/// Whether two CPU tensors share one storage.
fn same_storage(a: &Tensor, b: &Tensor) -> bool {
    let at: *const candle_core::Storage = &*a.storage_and_layout().0;
    std::ptr::eq(at, &*b.storage_and_layout().0)
}

/// Writes the gradients of one bucket, scaled, into a tensor's own storage (zeros for a parameter
/// without one), then sums it over the ranks in place.
struct FlattenAndSum<'a> {
    /// Each parameter's gradient (contiguous) and element count, in bucket order.
    grads: &'a [(Option<Tensor>, usize)],
    scale: f32,
    pg: &'a dyn ProcessGroup,
    /// The collective's own error, which candle's error type would flatten into a message.
    error: RefCell<Option<Error>>,
}

impl InplaceOp1 for FlattenAndSum<'_> {
    fn name(&self) -> &'static str {
        "flatten-and-sum"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let (CpuStorage::F32(data), Some((start, end))) = (storage, layout.contiguous_offsets()) else {
            candle_core::bail!("all-reduce needs a contiguous f32 buffer");
        };
        let data = &mut data[start..end];
        let mut offset = 0;
        for (grad, n) in self.grads {
            let Some(to) = data.get_mut(offset..offset + n) else {
                candle_core::bail!("a bucket of {} values is too small for its gradients", data.len())
            };
            match grad {
                // Scaled while flattened: one pass, and exactly (a + b) / 2 for two ranks.
                Some(g) => with_f32(g, "gradient", |g| {
                    if g.len() != *n {
                        candle_core::bail!("a gradient of {} values for a parameter of {n}", g.len());
                    }
                    to.iter_mut().zip(g).for_each(|(t, &v)| *t = v * self.scale);
                    Ok(())
                })?,
                None => to.fill(0.0),
            }
            offset += n;
        }
        // Summed in place: MPI's in-place all-reduce was measured faster than its copying one by
        // more than a copy costs (25 MB: 6-8 ms against 11-15 ms, a copy 2-3 ms).
        self.pg.all_reduce_sum_in_place_f32(data).map_err(|e| {
            let message = e.to_string();
            *self.error.borrow_mut() = Some(e);
            candle_core::Error::Msg(message)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributed::ThreadGroup;
    use candle_core::{Device, Var};

    #[test]
    fn every_rank_gets_the_mean_and_missing_gradients_count_as_zero() {
        let out = ThreadGroup::run(2, |pg| {
            let a = Var::from_slice(&[0f32, 0.], 2, &Device::Cpu).unwrap();
            let b = Var::from_slice(&[0f32, 0., 0., 0.], (2, 2), &Device::Cpu).unwrap();
            let params = Params::new(vec![("a".into(), a.clone()), ("b".into(), b.clone())]).unwrap();
            let r = pg.rank() as f32;
            let fresh = || {
                let mut store = GradStore::default();
                store.insert(a.as_tensor(), Tensor::new(&[1.0 + r, 2.0 * r], &Device::Cpu).unwrap());
                if pg.rank() == 0 {
                    store.insert(b.as_tensor(), Tensor::new(&[[4f32, 8.], [12., 16.]], &Device::Cpu).unwrap());
                }
                store
            };
            // A bucket of 8 bytes puts each parameter into its own all-reduce. The second round
            // reuses the first one's buffers and gives the same result.
            let mut reducer = GradientReducer::new();
            let mut store = fresh();
            reducer.all_reduce_mean(&mut store, &params, pg, 8).unwrap();
            let mut again = fresh();
            reducer.all_reduce_mean(&mut again, &params, pg, 8).unwrap();
            assert_eq!(again.get(b.as_tensor()).unwrap().to_vec2::<f32>().unwrap(), [[2.0, 4.0], [6.0, 8.0]]);
            // Gradients that are views of the reducer's own buckets (reduced twice): a new bucket
            // is written, not the one being read, and the mean of equal means is the same.
            reducer.all_reduce_mean(&mut again, &params, pg, 8).unwrap();
            assert_eq!(again.get(a.as_tensor()).unwrap().to_vec1::<f32>().unwrap(), [1.5, 1.0]);
            (
                store.get(a.as_tensor()).unwrap().to_vec1::<f32>().unwrap(),
                store.get(b.as_tensor()).unwrap().to_vec2::<f32>().unwrap(),
            )
        });
        for (a, b) in out {
            assert_eq!(a, [1.5, 1.0]);
            assert_eq!(b, [[2.0, 4.0], [6.0, 8.0]]);
        }
    }

    /// The path GPU gradients take (flatten and scale on the device, reduce in place or through
    /// the host) gives the host path's result; a backend without device reduction takes the host.
    #[test]
    fn the_device_path_averages_as_the_host_path_does() {
        let out = ThreadGroup::run(2, |pg| {
            let a = Var::from_slice(&[0f32, 0.], 2, &Device::Cpu).unwrap();
            let b = Var::from_slice(&[0f32, 0., 0., 0.], (2, 2), &Device::Cpu).unwrap();
            let params = Params::new(vec![("a".into(), a.clone()), ("b".into(), b.clone())]).unwrap();
            let r = pg.rank() as f32;
            let mut store = GradStore::default();
            store.insert(a.as_tensor(), Tensor::new(&[1.0 + r, 2.0 * r], &Device::Cpu).unwrap());
            if pg.rank() == 0 {
                // Strided, as a gradient may be: the flatten copies it.
                store.insert(b.as_tensor(), Tensor::new(&[[4f32, 12.], [8., 16.]], &Device::Cpu).unwrap().t().unwrap());
            }
            let vars: Vec<_> = params.iter().map(|(_, v)| v).collect();
            let sizes = vars.iter().map(|v| v.elem_count());
            GradientReducer::all_reduce_on_device(&mut store, &vars, buckets(sizes, 8), 0.5, pg).unwrap();
            (
                store.get(a.as_tensor()).unwrap().to_vec1::<f32>().unwrap(),
                store.get(b.as_tensor()).unwrap().to_vec2::<f32>().unwrap(),
            )
        });
        for (a, b) in out {
            assert_eq!(a, [1.5, 1.0]);
            assert_eq!(b, [[2.0, 4.0], [6.0, 8.0]]);
        }
    }
}
