//! The run's optimizer: AdamW whole on every rank (ZeRO stage 0, DDP), or with its moments sharded
//! over the ranks (stages 1 and 2). The trainer steps, saves and restores it the same way either
//! way; checkpoints hold the same optimizer file, so a run resumes with or without sharding.

use std::path::Path;

use crate::distributed::shards::ShardLayout;
use crate::distributed::{ProcessGroup, ZeroStage};
use crate::model::Params;
use crate::optim::{AdamW, AdamWConfig, OptimizerState, ShardedAdamW};
use crate::Result;

use super::gradients::Gradients;
use super::optimizer_step::{optimizer_step, sharded_step};

/// AdamW, replicated or sharded.
#[derive(Debug)]
pub enum Optimizer {
    Replicated(AdamW),
    Sharded { adamw: ShardedAdamW, stage: ZeroStage },
}

impl Optimizer {
    /// AdamW for `params` at `stage`, its slices cut on the gradient buckets of `bucket_bytes`. One
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
        let vars: Vec<_> = params.iter().map(|(_, v)| v.clone()).collect();
        let layout = ShardLayout::of(&vars, bucket_bytes, pg);
        Ok(Self::Sharded { adamw: ShardedAdamW::new(params, config, layout)?, stage })
    }

    /// The stage in effect (0 for one process, whatever was asked).
    pub fn stage(&self) -> ZeroStage {
        match self {
            Self::Replicated(_) => ZeroStage::Replicated,
            Self::Sharded { stage, .. } => *stage,
        }
    }

    /// One optimizer step at `lr` on the accumulated `grads` ([`optimizer_step`] or
    /// [`sharded_step`]); returns the gradient norm before clipping when `max_grad_norm` is given.
    pub fn step(
        &mut self,
        grads: &mut Gradients,
        lr: f64,
        max_grad_norm: Option<f64>,
        pg: &dyn ProcessGroup,
    ) -> Result<Option<f64>> {
        match self {
            Self::Replicated(adamw) => optimizer_step(grads, adamw, lr, max_grad_norm, pg),
            Self::Sharded { adamw, stage } => sharded_step(grads, adamw, *stage, lr, max_grad_norm, pg),
        }
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
