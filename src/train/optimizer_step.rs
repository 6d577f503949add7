//! The optimizer step that follows the last micro-batch's backward pass, as Accelerate's loop
//! runs it (`accelerator.backward` has accumulated the gradients): average the gradients over the
//! ranks, clip their global norm, set the learning rate, apply AdamW, zero the gradients. The
//! trainer, the custom loop, the benchmarks and the memory measurement all take their steps here.

use crate::distributed::ProcessGroup;
use crate::optim::{clip_coefficient, global_grad_norm, AdamW};
use crate::spans;
use crate::Result;

use super::gradients::Gradients;

/// One optimizer step at learning rate `lr` on the gradients accumulated in `grads`:
///
/// 1. `grads` becomes its mean over the ranks of `pg` (a single process has nothing to do), after
///    a barrier that measures the wait for the slowest rank apart from the transfer;
/// 2. with `max_grad_norm = Some(max)`, its global L2 norm is clipped to `max` (`clip_grad_norm_`;
///    a `max` of 0 or less measures only); `None` is a loop without clipping;
/// 3. AdamW applies the update at `lr`, which makes every bf16 copy of the weights stale. The
///    clipping coefficient is multiplied into each gradient inside AdamW's pass rather than
///    written back first (the same values, one pass over the gradients fewer);
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
    let (norm, grad_scale) = {
        let _clip = spans::enter(spans::CLIP);
        match max_grad_norm {
            Some(max) => {
                let norm = global_grad_norm(grads.store(), &params)?;
                (Some(norm), clip_coefficient(norm, max))
            }
            None => (None, None),
        }
    };
    let _optimizer = spans::enter(spans::OPTIMIZER);
    optimizer.set_lr(lr);
    optimizer.step_scaled(grads.store(), grad_scale)?;
    grads.zero();
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
