//! Evaluation and prediction over a tokenized split: every rank takes its shard (uneven, no
//! padding), and predictions and losses are gathered so that metrics cover each row exactly once.

use std::sync::Arc;

use candle_core::D;

use crate::data::{BatchSampler, DataCollatorWithPadding, DataLoader, Dataset};
use crate::distributed::{collectives, ProcessGroup};
use crate::model::Model;
use crate::{Error, Result};

use super::metrics::{ComputeMetrics, EvalPrediction, Metrics};

/// Per-row outputs in dataset order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Predictions {
    /// Dataset row of each entry.
    pub rows: Vec<usize>,
    /// Per row: the class probabilities (softmax of the logits), or for regression the one
    /// predicted score.
    pub outputs: Vec<Vec<f32>>,
    /// Reference labels (class id or regression target), `None` where the row has none.
    pub labels: Vec<Option<f64>>,
    /// The model has one output: `outputs` are scores, the loss is squared error.
    pub regression: bool,
    /// Sum of per-row loss (cross-entropy, or squared error) over labelled rows, and how many
    /// rows had labels.
    pub loss_sum: f64,
    pub labelled: usize,
}

impl Predictions {
    /// The most probable class of each row (for regression, every row's "class" is 0).
    pub fn predicted(&self) -> Vec<usize> {
        self.outputs
            .iter()
            .map(|p| p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0))
            .collect()
    }

    /// What metrics compare with the labels: the class id, or the regression score.
    pub fn predictions(&self) -> Vec<f64> {
        match self.regression {
            true => self.outputs.iter().map(|o| o[0] as f64).collect(),
            false => self.predicted().into_iter().map(|c| c as f64).collect(),
        }
    }

    /// Mean loss, plus `compute_metrics` over the labelled rows.
    pub fn metrics(&self, compute_metrics: ComputeMetrics) -> Metrics {
        let (mut preds, mut labels) = (Vec::new(), Vec::new());
        for (p, l) in self.predictions().into_iter().zip(&self.labels) {
            if let Some(l) = l {
                preds.push(p);
                labels.push(*l);
            }
        }
        let mut metrics = Metrics::new();
        if !labels.is_empty() {
            metrics = compute_metrics(&EvalPrediction { predictions: preds, labels });
            metrics.insert("loss".into(), self.loss_sum / self.labelled.max(1) as f64);
        }
        metrics
    }
}

/// Runs the model in evaluation mode over `dataset` (its shard on each rank) and gathers the outputs.
pub fn predict(
    model: &Model,
    dataset: Arc<Dataset>,
    collator: &DataCollatorWithPadding,
    batch_size: usize,
    pg: &dyn ProcessGroup,
) -> Result<Predictions> {
    let labels_all: Option<Vec<Option<f64>>> = match (dataset.ints("label"), dataset.floats("label")) {
        (Ok(ids), _) => Some(ids.iter().map(|&l| (l >= 0).then_some(l as f64)).collect()),
        (_, Ok(targets)) => Some(targets.iter().map(|&t| t.is_finite().then_some(t)).collect()),
        _ => None,
    };
    let regression = model.is_regression();
    let loader = shard_loader(dataset, collator, batch_size, pg);
    let mut local = Predictions { regression, ..Predictions::default() };
    for batch in loader.iter() {
        let batch = batch?;
        let logits = model.forward_inference(&batch.input_ids, &batch.token_type_ids, &batch.attention_mask)?;
        let (outputs, losses): (Vec<Vec<f32>>, Vec<Vec<f32>>) = if regression {
            let scores = logits.to_vec2::<f32>()?;
            (scores.clone(), scores)
        } else {
            let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
            (log_probs.exp()?.to_vec2::<f32>()?, log_probs.to_vec2::<f32>()?)
        };
        for (i, &row) in batch.rows.iter().enumerate() {
            let label = labels_all.as_ref().and_then(|l| l[row]);
            if let Some(label) = label {
                local.loss_sum += match regression {
                    true => (losses[i][0] as f64 - label).powi(2),
                    false => -(losses[i][label as usize] as f64),
                };
                local.labelled += 1;
            }
            local.rows.push(row);
            local.labels.push(label);
            local.outputs.push(outputs[i].clone());
        }
    }
    gather(local, pg)
}

/// Concatenates every rank's predictions and sorts them by dataset row.
fn gather(local: Predictions, pg: &dyn ProcessGroup) -> Result<Predictions> {
    if pg.world_size() == 1 {
        return Ok(local);
    }
    let records = local.rows.iter().zip(&local.labels).zip(&local.outputs).map(|((row, label), probs)| {
        let values = std::iter::once(label.unwrap_or(f64::NAN)).chain(probs.iter().map(|&p| f64::from(p)));
        (*row, values.collect())
    });
    let rows = gather_rows(pg, records.collect(), "gather_predictions")?;
    let totals = collectives::sum_f64(pg, &[local.loss_sum, local.labelled as f64])?;
    let mut out = Predictions { regression: local.regression, ..Predictions::default() };
    for (row, values) in rows {
        out.rows.push(row);
        out.labels.push(values[0].is_finite().then_some(values[0]));
        out.outputs.push(values[1..].iter().map(|&p| p as f32).collect());
    }
    out.loss_sum = totals[0];
    out.labelled = totals[1] as usize;
    Ok(out)
}

/// This rank's shard of `dataset` in batches (uneven, no padding rows), for evaluation.
pub(super) fn shard_loader(
    dataset: Arc<Dataset>,
    collator: &DataCollatorWithPadding,
    batch_size: usize,
    pg: &dyn ProcessGroup,
) -> DataLoader {
    let sampler = BatchSampler::new(dataset.num_rows(), batch_size, false, 0)
        .even_batches(false)
        .shard(pg.rank(), pg.world_size());
    DataLoader::new(dataset, collator.clone(), sampler)
}

/// Every rank's `(row, values)` records (any number of values each) on every rank, sorted by row;
/// `gather_for_metrics`: the shards must cover the split's rows exactly once (`op` names the
/// gather in the error).
pub(super) fn gather_rows(
    pg: &dyn ProcessGroup,
    local: Vec<(usize, Vec<f64>)>,
    op: &'static str,
) -> Result<Vec<(usize, Vec<f64>)>> {
    let mut flat = Vec::new();
    for (row, values) in &local {
        flat.extend([*row as f64, values.len() as f64]);
        flat.extend(values);
    }
    let all = collectives::all_gather_f64(pg, &flat)?;
    let mut rows = Vec::new();
    let mut at = 0;
    while at < all.len() {
        let (row, len) = (all[at] as usize, all[at + 1] as usize);
        rows.push((row, all[at + 2..at + 2 + len].to_vec()));
        at += 2 + len;
    }
    rows.sort_by_key(|r| r.0);
    if let Some(i) = rows.iter().enumerate().position(|(i, r)| r.0 != i) {
        let message = format!(
            "the gathered records do not cover rows 0..{} exactly once (first bad position {i}: row {})",
            rows.len(),
            rows[i].0
        );
        return Err(Error::dist(pg.backend(), op, pg.rank(), message));
    }
    Ok(rows)
}
