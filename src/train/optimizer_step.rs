//! The optimizer step that follows the last micro-batch's backward pass, as Accelerate's loop
//! runs it (`accelerator.backward` has accumulated the gradients): average the gradients over the
//! ranks, clip their global norm, set the learning rate, apply AdamW, zero the gradients. The
//! trainer, the custom loop, the benchmarks and the memory measurement all take their steps here.

use crate::distributed::shards::{all_gather_params, owned_slices, reduce_scatter_mean};
use crate::distributed::{collectives, ProcessGroup, ZeroStage};
use crate::optim::clip::sum_of_squares;
use crate::optim::{AdamW, ShardedAdamW};
use crate::spans;
use crate::Result;

use super::gradients::Gradients;

/// One optimizer step at learning rate `lr` on the gradients accumulated in `grads`:
///
/// 1. `grads` becomes its mean over the ranks of `pg` (a single process has nothing to do), after
///    a barrier that measures the wait for the slowest rank apart from the transfer;
/// 2. with `max_grad_norm = Some(max)`, its global L2 norm is clipped to `max` (`clip_grad_norm_`;
///    a `max` of 0 or less measures only); `None` is a loop without clipping;
/// 3. AdamW applies the update at `lr`, which makes every bf16 copy of the weights stale;
/// 4. `grads` is emptied for the next step (`optimizer.zero_grad()`).
///
/// Returns the gradient norm before clipping, as transformers logs it (`grad_norm`), when
/// `max_grad_norm` asked for it.
pub fn optimizer_step(
    grads: &mut Gradients,
    optimizer: &mut AdamW,
    lr: f64,
    max_grad_norm: Option<f64>,
    pg: &dyn ProcessGroup,
) -> Result<Option<f64>> {
    let params = optimizer.params().clone();
    if pg.world_size() > 1 {
        // Waiting for the slowest rank, apart from the transfer that follows.
        let _wait = spans::enter(spans::ALL_REDUCE_WAIT);
        pg.barrier()?;
    }
    grads.all_reduce_mean(&params, pg)?;
    let norm = {
        let _clip = spans::enter(spans::CLIP);
        max_grad_norm.map(|max| grads.clip(&params, max)).transpose()?
    };
    let _optimizer = spans::enter(spans::OPTIMIZER);
    optimizer.set_lr(lr);
    optimizer.step(grads.store())?;
    grads.zero();
    Ok(norm)
}

/// The same step with AdamW's moments sharded (ZeRO `stage` 1 or 2):
///
/// 1. after the barrier, stage 1 all-reduces the gradients as DDP does and takes this rank's
///    slices of them; stage 2 reduce-scatters them, so that only this rank's slices of the mean
///    remain (the full gradients are freed bucket by bucket);
/// 2. the global norm is the square root of the slices' squared norms summed over the ranks (one
///    all-reduce of a number), and the slices are scaled by `clip_grad_norm_`'s coefficient;
/// 3. AdamW updates this rank's slices of the weights;
/// 4. the updated slices are all-gathered into every rank's weights (f32, so every rank ends the
///    step with the same weights as DDP's ranks).
pub fn sharded_step(
    grads: &mut Gradients,
    optimizer: &mut ShardedAdamW,
    stage: ZeroStage,
    lr: f64,
    max_grad_norm: Option<f64>,
    pg: &dyn ProcessGroup,
) -> Result<Option<f64>> {
    let params = optimizer.params().clone();
    let vars: Vec<_> = params.iter().map(|(_, v)| v.clone()).collect();
    if pg.world_size() > 1 {
        let _wait = spans::enter(spans::ALL_REDUCE_WAIT);
        pg.barrier()?;
    }
    let mut slices = match stage {
        ZeroStage::Gradients => reduce_scatter_mean(grads.store_mut(), &vars, optimizer.layout(), pg)?,
        _ => {
            grads.all_reduce_mean(&params, pg)?;
            owned_slices(grads.store(), &vars, optimizer.layout())?
        }
    };
    grads.zero();
    let norm = {
        let _clip = spans::enter(spans::CLIP);
        match max_grad_norm {
            Some(max) => {
                let local: f64 = slices.iter().map(sum_of_squares).sum::<Result<f64>>()?;
                let norm = collectives::sum_f64(pg, &[local])?[0].sqrt();
                // As clip_grad_norm does: the coefficient in f32, applied only below 1.
                let coef = max as f32 / (norm as f32 + 1e-6);
                if max > 0.0 && norm.is_finite() && coef < 1.0 {
                    for slice in &mut slices {
                        *slice = slice.affine(f64::from(coef), 0.0)?;
                    }
                }
                Some(norm)
            }
            None => None,
        }
    };
    let updated = {
        let _optimizer = spans::enter(spans::OPTIMIZER);
        optimizer.set_lr(lr);
        optimizer.step(&slices)?
    };
    drop(slices);
    let _gather = spans::enter(spans::ALL_GATHER);
    all_gather_params(&vars, optimizer.layout(), &updated, pg)?;
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributed::SingleProcess;
    use crate::model::Params;
    use crate::optim::AdamWConfig;
    use candle_core::{Device, Tensor, Var};

    /// The step is the four calls in order: the clipped gradient moves the weight by AdamW's first
    /// step (lr times the sign), the learning rate is the one given, the gradients are gone, and the
    /// weights' version moved (bf16 copies are stale).
    #[test]
    fn one_step_reduces_clips_updates_and_zeroes() {
        let w = Var::from_slice(&[1f32, 1.0], 2, &Device::Cpu).unwrap();
        let params = Params::new(vec![("w".into(), w.clone())]).unwrap();
        let config = AdamWConfig { weight_decay: 0.0, decay_all: true, ..AdamWConfig::default() };
        let mut optimizer = AdamW::new(&params, config).unwrap();
        let mut grads = Gradients::new();
        let loss = (w.as_tensor() * &Tensor::new(&[3f32, -4.0], &Device::Cpu).unwrap()).unwrap().sum_all().unwrap();
        grads.backward(&loss, &params).unwrap();
        let version = params.tracked().version();
        let norm = optimizer_step(&mut grads, &mut optimizer, 0.1, Some(1.0), &SingleProcess).unwrap().unwrap();
        assert!((norm - 5.0).abs() < 1e-6, "{norm}");
        assert_eq!(optimizer.lr(), 0.1);
        let moved = w.as_tensor().to_vec1::<f32>().unwrap();
        assert!((moved[0] - 0.9).abs() < 1e-5 && (moved[1] - 1.1).abs() < 1e-5, "{moved:?}");
        assert!(grads.store().get(w.as_tensor()).is_none() && grads.micro_batches() == 0);
        assert!(params.tracked().version() > version);
    }
}
