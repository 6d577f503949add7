//! Evaluation and prediction for question answering: every rank scores its shard of windows, the
//! start and end scores are gathered whole, window by window, and each example's windows are
//! post-processed together into one answer, scored once (`gather_for_metrics`).

use std::sync::Arc;

use candle_core::{DType, D};

use crate::data::squad::Example;
use crate::data::windows::NOT_CONTEXT;
use crate::data::{DataCollatorWithPadding, Dataset};
use crate::distributed::{collectives, ProcessGroup};
use crate::model::{span_loss, Model};
use crate::{Error, Result};

use super::answers::{best_answer, Answer, AnswerOptions, WindowScores};
use super::eval::{gather_rows, shard_loader};
use super::metrics::Metrics;
use super::squad::{squad_v1, squad_v2, Scored};

/// Each window's start and end scores (padding left out), in dataset order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpanPredictions {
    pub rows: Vec<usize>,
    pub start: Vec<Vec<f32>>,
    pub end: Vec<Vec<f32>>,
    /// Sum of the windows' losses (the mean of the start and end cross-entropies), and how many.
    pub loss_sum: f64,
    pub windows: usize,
}

/// Runs the model in evaluation mode over the windows (its shard on each rank) and gathers the scores.
pub fn predict_spans(
    model: &Model,
    windows: Arc<Dataset>,
    collator: &DataCollatorWithPadding,
    batch_size: usize,
    pg: &dyn ProcessGroup,
) -> Result<SpanPredictions> {
    let loader = shard_loader(windows, collator, batch_size, pg);
    let mut local = SpanPredictions::default();
    for batch in loader.iter() {
        let batch = batch?;
        let logits = model.forward_inference(&batch.input_ids, &batch.token_type_ids, &batch.attention_mask)?;
        let logits = logits.to_dtype(DType::F32)?;
        if let Some(spans) = &batch.spans {
            let mean = span_loss(&logits, spans)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            local.loss_sum += mean * batch.rows.len() as f64;
            local.windows += batch.rows.len();
        }
        let start = logits.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?.to_vec2::<f32>()?;
        let end = logits.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?.to_vec2::<f32>()?;
        let mask = batch.attention_mask.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        for (i, &row) in batch.rows.iter().enumerate() {
            let keep = |scores: &[f32]| -> Vec<f32> {
                scores.iter().zip(&mask[i]).filter(|(_, m)| **m != 0).map(|(s, _)| *s).collect()
            };
            local.rows.push(row);
            local.start.push(keep(&start[i]));
            local.end.push(keep(&end[i]));
        }
    }
    gather(local, pg)
}

/// Concatenates every rank's windows (starts, then ends) and sorts them by row.
fn gather(local: SpanPredictions, pg: &dyn ProcessGroup) -> Result<SpanPredictions> {
    if pg.world_size() == 1 {
        return Ok(local);
    }
    let records = local
        .rows
        .iter()
        .zip(&local.start)
        .zip(&local.end)
        .map(|((row, start), end)| (*row, start.iter().chain(end).map(|&s| f64::from(s)).collect()));
    let windows = gather_rows(pg, records.collect(), "gather_windows")?;
    let totals = collectives::sum_f64(pg, &[local.loss_sum, local.windows as f64])?;
    let mut out = SpanPredictions { loss_sum: totals[0], windows: totals[1] as usize, ..SpanPredictions::default() };
    for (row, scores) in windows {
        let (start, end) = scores.split_at(scores.len() / 2);
        out.rows.push(row);
        out.start.push(start.iter().map(|&s| s as f32).collect());
        out.end.push(end.iter().map(|&s| s as f32).collect());
    }
    Ok(out)
}

impl SpanPredictions {
    /// One answer per example, from the windows of `windows` (the `example` and `offsets` columns
    /// [`crate::data::QaWindows`] writes) that belong to it.
    pub fn answers(&self, windows: &Dataset, examples: &[Example], opts: &AnswerOptions) -> Result<Vec<Answer>> {
        let (of_example, offsets) = (windows.ints("example")?, windows.int_lists("offsets")?);
        let mut per_example: Vec<Vec<usize>> = vec![Vec::new(); examples.len()];
        for (k, &row) in self.rows.iter().enumerate() {
            let e = of_example[row] as usize;
            per_example
                .get_mut(e)
                .ok_or_else(|| Error::Msg(format!("window {row} belongs to example {e}, past the split's end")))?
                .push(k);
        }
        let spans: Vec<Vec<Option<(usize, usize)>>> = self
            .rows
            .iter()
            .map(|&row| {
                offsets
                    .row(row)
                    .chunks(2)
                    .map(|o| (o[0] != NOT_CONTEXT).then(|| (o[0] as usize, o[1] as usize)))
                    .collect()
            })
            .collect();
        Ok(examples
            .iter()
            .zip(&per_example)
            .map(|(e, ks)| {
                let scores: Vec<WindowScores> = ks
                    .iter()
                    .map(|&k| WindowScores { start: &self.start[k], end: &self.end[k], offsets: &spans[k] })
                    .collect();
                best_answer(&e.context, &scores, opts)
            })
            .collect())
    }

    /// SQuAD's scores (v2's when `opts` allow no answer) over the examples, and the mean window loss.
    pub fn metrics(&self, windows: &Dataset, examples: &[Example], opts: &AnswerOptions) -> Result<Metrics> {
        let answers = self.answers(windows, examples, opts)?;
        let golds: Vec<Vec<String>> =
            examples.iter().map(|e| e.answers.iter().map(|a| a.0.clone()).collect()).collect();
        let scored: Vec<Scored> =
            golds.iter().zip(&answers).map(|(gold, a)| Scored { gold, predicted: &a.text }).collect();
        let mut metrics = match opts.version_2_with_negative {
            true => squad_v2(&scored),
            false => squad_v1(&scored),
        };
        if self.windows > 0 {
            metrics.insert("loss".into(), self.loss_sum / self.windows as f64);
        }
        Ok(metrics)
    }
}
