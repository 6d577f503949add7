//! The run's optimizer: AdamW whole on every rank (ZeRO stage 0, DDP), or with its moments sharded
//! over the ranks (stages 1 and 2). The trainer runs each micro-batch's backward pass and each
//! optimizer step through it, and saves and restores it the same way either way; checkpoints hold
//! the same optimizer file, so a run resumes with or without sharding.

use std::path::Path;

use candle_core::Tensor;

use crate::distributed::scatter::{reduce_scatter_mean, BucketScatter};
use crate::distributed::shards::{all_gather_params, owned_slices, ShardLayout};
use crate::distributed::{collectives, ProcessGroup, ZeroStage};
use crate::model::Params;
use crate::optim::clip::{clip_coefficient, sum_of_squares};
use crate::optim::{AdamW, AdamWConfig, OptimizerState, ShardedAdamW};
use crate::spans;
use crate::Result;

use super::gradients::Gradients;
use super::optimizer_step::optimizer_step;

/// AdamW, replicated or sharded.
#[derive(Debug)]
pub enum Optimizer {
    Replicated(AdamW),
    Sharded {
        adamw: ShardedAdamW,
        stage: ZeroStage,
        /// ZeRO-2's buckets as they fill during the step's last backward pass.
        scatter: Box<BucketScatter>,
        /// The all-gather's buffer on the CPU, kept from one step to the next.
        gather: Vec<f32>,
    },
}

impl Optimizer {
    /// AdamW for `params` at `stage`, its slices cut on gradient buckets of `bucket_bytes`. One
    /// process has nothing to shard: it keeps the replicated optimizer at any stage.
    pub fn new(
        params: &Params,
        config: AdamWConfig,
        stage: ZeroStage,
        bucket_bytes: usize,
        pg: &dyn ProcessGroup,
    ) -> Result<Self> {
        if stage == ZeroStage::Replicated || pg.world_size() == 1 {
            return Ok(Self::Replicated(AdamW::new(params, config)?));
        }
        let layout = ShardLayout::of(params, bucket_bytes, pg);
        let vars: Vec<_> = params.iter().map(|(_, v)| v.clone()).collect();
        let scatter = Box::new(BucketScatter::new(&vars, &layout));
        Ok(Self::Sharded { adamw: ShardedAdamW::new(params, config, layout)?, stage, scatter, gather: Vec::new() })
    }

    /// The stage in effect (0 for one process, whatever was asked).
    pub fn stage(&self) -> ZeroStage {
        match self {
            Self::Replicated(_) => ZeroStage::Replicated,
            Self::Sharded { stage, .. } => *stage,
        }
    }

    /// The backward pass of one micro-batch's `loss` into `grads`. Under ZeRO-2, the step's
    /// `last` micro-batch hands its gradients to the buckets as the CPU kernels make them, and
    /// each bucket is reduce-scattered as soon as it is complete.
    pub fn backward(
        &mut self,
        grads: &mut Gradients,
        loss: &Tensor,
        params: &Params,
        last: bool,
        pg: &dyn ProcessGroup,
    ) -> Result<()> {
        match self {
            Self::Sharded { stage: ZeroStage::Gradients, scatter, .. } if last => {
                grads.backward_handing_over(loss, params, &mut |param, grad| scatter.offer(param, grad, pg))
            }
            _ => grads.backward(loss, params),
        }
    }

    /// One optimizer step at `lr` on the accumulated `grads`; returns the gradient norm before
    /// clipping when `max_grad_norm` is given.
    ///
    /// Replicated, it is [`optimizer_step`]. Sharded:
    /// 1. after the barrier, stage 1 all-reduces the gradients as DDP does and takes this rank's
    ///    slices of them; stage 2 reduce-scatters the buckets not reduced during backward, so that
    ///    only this rank's slices of the mean remain;
    /// 2. the global norm is the square root of the slices' squared norms summed over the ranks
    ///    (one all-reduce of a number), and `clip_grad_norm_`'s coefficient scales the slices
    ///    inside AdamW's pass;
    /// 3. AdamW updates this rank's slices of the weights;
    /// 4. the updated slices are all-gathered into every rank's weights, in f32, so that every
    ///    rank ends the step with the same weights as DDP's ranks.
    pub fn step(
        &mut self,
        grads: &mut Gradients,
        lr: f64,
        max_grad_norm: Option<f64>,
        pg: &dyn ProcessGroup,
    ) -> Result<Option<f64>> {
        let (adamw, stage, scatter, gather) = match self {
            Self::Replicated(adamw) => return optimizer_step(grads, adamw, lr, max_grad_norm, pg),
            Self::Sharded { adamw, stage, scatter, gather } => (adamw, *stage, scatter, gather),
        };
        let params = adamw.params().clone();
        let vars: Vec<_> = params.iter().map(|(_, v)| v.clone()).collect();
        {
            let _wait = spans::enter(spans::ALL_REDUCE_WAIT);
            pg.barrier()?;
        }
        let slices = match stage {
            ZeroStage::Gradients if vars.first().is_none_or(|v| v.device().is_cpu()) => {
                scatter.finish(grads.store_mut(), pg)?
            }
            ZeroStage::Gradients => reduce_scatter_mean(grads.store_mut(), &vars, adamw.layout(), pg)?,
            _ => {
                grads.all_reduce_mean(&params, pg)?;
                owned_slices(grads.store(), &vars, adamw.layout())?
            }
        };
        grads.zero();
        let (norm, grad_scale) = {
            let _clip = spans::enter(spans::CLIP);
            match max_grad_norm {
                Some(max) => {
                    let local: f64 = slices.iter().map(sum_of_squares).sum::<Result<f64>>()?;
                    let norm = collectives::sum_f64(pg, &[local])?[0].sqrt();
                    (Some(norm), clip_coefficient(norm, max))
                }
                None => (None, None),
            }
        };
        let updated = {
            let _optimizer = spans::enter(spans::OPTIMIZER);
            adamw.set_lr(lr);
            adamw.step(&slices, grad_scale)?
        };
        drop(slices);
        let _gather = spans::enter(spans::ALL_GATHER);
        all_gather_params(&vars, adamw.layout(), &updated, gather, pg)?;
        Ok(norm)
    }

    /// The whole state for a checkpoint, on the main process (`None` elsewhere). A collective when
    /// sharded: every rank calls it.
    pub fn state_for_checkpoint(&self, pg: &dyn ProcessGroup) -> Result<Option<OptimizerState>> {
        match self {
            Self::Replicated(adamw) => pg.is_main().then(|| adamw.state()).transpose(),
            Self::Sharded { adamw, .. } => adamw.gather(pg),
        }
    }

    /// Restores the state of an optimizer file (written at any stage and world size).
    pub fn load(&mut self, path: &Path) -> Result<()> {
        match self {
            Self::Replicated(adamw) => adamw.load(path),
            Self::Sharded { adamw, .. } => adamw.load(path),
        }
    }

    /// Bytes of AdamW's moments this rank holds.
    pub fn moment_bytes(&self) -> usize {
        match self {
            Self::Replicated(adamw) => 8 * adamw.params().num_elements(),
            Self::Sharded { adamw, .. } => 8 * adamw.owned_elements(),
        }
    }
}
