//! Gradient averaging across ranks: the parameters in name order, packed into a few large
//! contiguous buckets (DDP's `bucket_cap_mb`, default 25 MB), one all-reduce per bucket. The one
//! copy is the flatten into the bucket; the reduced bucket becomes the gradients' storage, each
//! parameter's gradient a view into it.

use std::ops::Range;

use candle_core::backprop::GradStore;
use candle_core::Tensor;

use super::collectives::append_f32;
use super::ProcessGroup;
use crate::model::Params;
use crate::Result;

/// PyTorch DDP's default bucket size.
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// Consecutive index ranges over tensors of `sizes` elements (f32), each closed once it holds at
/// least `bucket_bytes`; a tensor larger than a bucket gets one of its own.
pub fn buckets(sizes: impl IntoIterator<Item = usize>, bucket_bytes: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes, mut end) = (0, 0usize, 0);
    for (i, n) in sizes.into_iter().enumerate() {
        end = i + 1;
        bytes += n * 4;
        if bytes >= bucket_bytes {
            out.push(start..end);
            start = end;
            bytes = 0;
        }
    }
    if start < end {
        out.push(start..end);
    }
    out
}

/// Replaces every parameter's gradient in `store` by its mean over the ranks of `pg`. A parameter
/// without a gradient on this rank counts as zeros (and gets the mean of the others'). A single
/// process returns at once.
pub fn all_reduce_mean(
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
    for bucket in buckets(vars.iter().map(|v| v.elem_count()), bucket_bytes) {
        let len: usize = bucket.clone().map(|i| vars[i].elem_count()).sum();
        let mut send = Vec::with_capacity(len);
        for i in bucket.clone() {
            match store.get(vars[i].as_tensor()) {
                Some(g) => append_f32(&mut send, g)?,
                None => send.resize(send.len() + vars[i].elem_count(), 0.0),
            }
        }
        let mut recv = vec![0f32; len];
        pg.all_reduce_sum_f32(&send, &mut recv)?;
        drop(send);
        for v in recv.iter_mut() {
            *v *= scale;
        }
        let device = vars[bucket.start].device();
        let reduced = Tensor::from_vec(recv, len, device)?;
        let mut offset = 0;
        for i in bucket {
            let var = vars[i];
            let n = var.elem_count();
            store.insert(var.as_tensor(), reduced.narrow(0, offset, n)?.reshape(var.shape())?);
            offset += n;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::ThreadGroup;
    use candle_core::{Device, Var};

    #[test]
    fn buckets_close_at_the_cap() {
        assert_eq!(buckets([1, 1, 1, 1, 1], 8), [0..2, 2..4, 4..5]);
        assert_eq!(buckets([10, 1, 1], 8), [0..1, 1..3]);
        assert_eq!(buckets([1, 1], 1 << 20), vec![0..2]);
        assert!(buckets(std::iter::empty(), 8).is_empty());
    }

    #[test]
    fn every_rank_gets_the_mean_and_missing_gradients_count_as_zero() {
        let out = ThreadGroup::run(2, |pg| {
            let a = Var::from_slice(&[0f32, 0.], 2, &Device::Cpu).unwrap();
            let b = Var::from_slice(&[0f32, 0., 0., 0.], (2, 2), &Device::Cpu).unwrap();
            let params = Params::new(vec![("a".into(), a.clone()), ("b".into(), b.clone())]).unwrap();
            let mut store = GradStore::default();
            let r = pg.rank() as f32;
            store.insert(a.as_tensor(), Tensor::new(&[1.0 + r, 2.0 * r], &Device::Cpu).unwrap());
            if pg.rank() == 0 {
                store.insert(b.as_tensor(), Tensor::new(&[[4f32, 8.], [12., 16.]], &Device::Cpu).unwrap());
            }
            // A bucket of 8 bytes puts each parameter into its own all-reduce.
            all_reduce_mean(&mut store, &params, pg, 8).unwrap();
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
