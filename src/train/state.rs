//! TrainState: where a run stands (steps, epoch, position in the epoch, best metric, log history),
//! saved as `trainer_state.json` in every checkpoint so that a run resumes exactly.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::BatchShape;
use crate::model::DropoutRngState;
use crate::{Error, Result};

/// The file a checkpoint keeps its [`TrainState`] in (transformers' name).
pub const STATE_FILE: &str = "trainer_state.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub global_step: usize,
    /// Optimizer steps the run will take.
    pub max_steps: usize,
    /// The epoch in progress, 0-based.
    pub epoch: usize,
    /// Micro-batches of that epoch already consumed, counted in the `layout`'s micro-batches.
    pub batches_in_epoch: usize,
    /// Micro-batches per epoch for one rank of the `layout`.
    pub batches_per_epoch: usize,
    pub best_metric: Option<f64>,
    pub best_model_checkpoint: Option<PathBuf>,
    /// Every logged record, in order.
    pub log_history: Vec<serde_json::Value>,
    /// The dropout generator (its masks are keyed by step and global row, so one serves every rank).
    pub dropout_rng: DropoutRngState,
    /// How many processes wrote this state (0 in older checkpoints: unknown).
    #[serde(default)]
    pub world_size: usize,
    pub seed: u64,
    /// Per-device batch size and training rows of the run (0 in older checkpoints: unknown), so that
    /// a resume can say which one changed.
    #[serde(default)]
    pub train_batch_size: usize,
    #[serde(default)]
    pub train_rows: usize,
    /// Evaluations in a row without improvement, for early stopping.
    #[serde(default)]
    pub early_stopping_patience_counter: usize,
    /// The shape that laid the epochs out in steps: the first run's processes, per-device batch
    /// and accumulation. A resume with another shape of the same global batch keeps it (absent in
    /// older checkpoints, which resume on their own shape only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<BatchShape>,
}

impl TrainState {
    /// Fractional epochs done, as transformers logs them.
    pub fn epoch_progress(&self) -> f64 {
        self.epoch as f64 + self.batches_in_epoch as f64 / self.batches_per_epoch.max(1) as f64
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(STATE_FILE);
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Msg(format!("serializing {}: {e}", path.display())))?;
        crate::io::write_atomically(&path, text.as_bytes())
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::data(&path, Some(e.line()), format!("not a trainer state: {e}")))
    }
}
