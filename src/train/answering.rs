//! Evaluation and prediction for question answering: every rank scores its shard of windows, the
//! start and end scores are gathered whole, window by window, and each example's windows are
//! post-processed together into one answer, scored once (`gather_for_metrics`).

use std::sync::Arc;

use candle_core::{DType, D};

use crate::data::squad::Example;
use crate::data::windows::NOT_CONTEXT;
use crate::data::{BatchSampler, DataCollatorWithPadding, DataLoader, Dataset};
use crate::distributed::{collectives, ProcessGroup};
use crate::model::{span_loss, Model};
use crate::{Error, Result};

use super::answers::{best_answer, Answer, AnswerOptions, WindowScores};
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
    let sampler = BatchSampler::new(windows.num_rows(), batch_size, false, 0)
        .even_batches(false)
        .shard(pg.rank(), pg.world_size());
    let loader = DataLoader::new(windows, collator.clone(), sampler);
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

/// Concatenates every rank's windows ([row, length, starts..., ends...] each) and sorts them by row.
fn gather(local: SpanPredictions, pg: &dyn ProcessGroup) -> Result<SpanPredictions> {
    if pg.world_size() == 1 {
        return Ok(local);
    }
    let mut flat = Vec::new();
    for ((row, start), end) in local.rows.iter().zip(&local.start).zip(&local.end) {
        flat.push(*row as f64);
        flat.push(start.len() as f64);
        flat.extend(start.iter().chain(end).map(|&s| f64::from(s)));
    }
    let all = collectives::all_gather_f64(pg, &flat)?;
    let totals = collectives::sum_f64(pg, &[local.loss_sum, local.windows as f64])?;
    let mut windows = Vec::new();
    let mut at = 0;
    while at < all.len() {
        let (row, len) = (all[at] as usize, all[at + 1] as usize);
        let scores = |from: usize| all[from..from + len].iter().map(|&s| s as f32).collect::<Vec<f32>>();
        windows.push((row, scores(at + 2), scores(at + 2 + len)));
        at += 2 + 2 * len;
    }
    windows.sort_by_key(|w| w.0);
    if let Some(i) = windows.iter().enumerate().position(|(i, w)| w.0 != i) {
        let message = format!("the gathered windows do not cover 0..{} exactly once (at {i})", windows.len());
        return Err(Error::dist(pg.backend(), "gather_windows", pg.rank(), message));
    }
    let mut out = SpanPredictions { loss_sum: totals[0], windows: totals[1] as usize, ..SpanPredictions::default() };
    for (row, start, end) in windows {
        out.rows.push(row);
        out.start.push(start);
        out.end.push(end);
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
