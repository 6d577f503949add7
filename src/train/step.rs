//! One forward pass on a collated batch: what the custom loop and the Trainer call.

use candle_core::Tensor;

use crate::data::Batch;
use crate::model::BertForSequenceClassification;
use crate::{Error, Result};

/// Logits, and the mean cross-entropy when the batch has labels.
#[derive(Debug, Clone)]
pub struct ModelOutput {
    pub logits: Tensor,
    pub loss: Option<Tensor>,
}

impl ModelOutput {
    /// The loss, or an error saying the batch had no labels.
    pub fn loss(&self) -> Result<&Tensor> {
        self.loss.as_ref().ok_or_else(|| Error::Msg("the batch has no labels, so there is no loss".into()))
    }
}

impl BertForSequenceClassification {
    /// Training-mode forward (dropout on) with the loss: `model(**batch)` after `model.train()`.
    pub fn forward_train(&self, batch: &Batch) -> Result<ModelOutput> {
        self.forward_batch(batch, true)
    }

    /// Evaluation-mode forward (dropout off): `model(**batch)` after `model.eval()`.
    pub fn forward_eval(&self, batch: &Batch) -> Result<ModelOutput> {
        self.forward_batch(batch, false)
    }

    fn forward_batch(&self, batch: &Batch, train: bool) -> Result<ModelOutput> {
        let logits = self.forward(&batch.input_ids, &batch.token_type_ids, &batch.attention_mask, train)?;
        let loss = match (&batch.labels, batch.max_label) {
            (Some(labels), Some(max)) if !self.is_regression() => Some(self.class_loss(&logits, labels, max)?),
            (Some(labels), _) => Some(self.loss(&logits, labels)?),
            (None, _) => None,
        };
        Ok(ModelOutput { logits, loss })
    }
}
