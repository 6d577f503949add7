//! Evaluation and prediction for token classification: every rank tags its shard of sentences,
//! and the tags are gathered whole, sentence by sentence, so that seqeval scores each sentence
//! exactly once (`gather_for_metrics`). The metrics are `run_ner.py`'s: the tokens whose label is
//! not -100 (a word's first piece), scored by seqeval.

use std::sync::Arc;

use candle_core::{DType, D};

use crate::data::collate::IGNORED;
use crate::data::{DataCollatorWithPadding, Dataset};
use crate::distributed::{collectives, ProcessGroup};
use crate::model::{token_loss, Model};
use crate::{Error, Result};

use super::eval::{gather_rows, shard_loader};
use super::metrics::Metrics;
use super::seqeval::Report;

/// Tag names, sentence by sentence.
pub type Sentences<'a> = Vec<Vec<&'a str>>;

/// Each sentence's predicted tag per token (padding left out), in dataset order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TagPredictions {
    pub rows: Vec<usize>,
    pub tags: Vec<Vec<u32>>,
    /// Sum of the cross-entropies of the labelled tokens, and how many there were.
    pub loss_sum: f64,
    pub labelled: usize,
}

/// Runs the model in evaluation mode over `dataset` (its shard on each rank) and gathers the tags.
pub fn predict_tags(
    model: &Model,
    dataset: Arc<Dataset>,
    collator: &DataCollatorWithPadding,
    batch_size: usize,
    pg: &dyn ProcessGroup,
) -> Result<TagPredictions> {
    let loader = shard_loader(dataset, collator, batch_size, pg);
    let mut local = TagPredictions::default();
    for batch in loader.iter() {
        let batch = batch?;
        let logits = model.forward_inference(&batch.input_ids, &batch.token_type_ids, &batch.attention_mask)?;
        let logits = logits.to_dtype(DType::F32)?;
        if let Some(labels) = &batch.token_labels {
            let mean = token_loss(&logits, labels)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            local.loss_sum += mean * labels.count as f64;
            local.labelled += labels.count;
        }
        let best = logits.argmax(D::Minus1)?.to_vec2::<u32>()?;
        let mask = batch.attention_mask.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        for ((&row, best), mask) in batch.rows.iter().zip(best).zip(mask) {
            local.rows.push(row);
            local.tags.push(best.into_iter().zip(mask).filter(|(_, m)| *m != 0).map(|(t, _)| t).collect());
        }
    }
    gather(local, pg)
}

/// Concatenates every rank's sentences and sorts them by row.
fn gather(local: TagPredictions, pg: &dyn ProcessGroup) -> Result<TagPredictions> {
    if pg.world_size() == 1 {
        return Ok(local);
    }
    let records =
        local.rows.iter().zip(&local.tags).map(|(row, tags)| (*row, tags.iter().map(|&t| f64::from(t)).collect()));
    let sentences = gather_rows(pg, records.collect(), "gather_tags")?;
    let totals = collectives::sum_f64(pg, &[local.loss_sum, local.labelled as f64])?;
    let (rows, tags) = sentences.into_iter().map(|(row, t)| (row, t.into_iter().map(|t| t as u32).collect())).unzip();
    Ok(TagPredictions { rows, tags, loss_sum: totals[0], labelled: totals[1] as usize })
}

impl TagPredictions {
    /// The labelled tokens' gold and predicted tag names, sentence by sentence (run_ner's
    /// `true_labels` and `true_predictions`), from `dataset`'s `labels` column.
    pub fn labelled<'a>(&self, dataset: &Dataset, names: &'a [String]) -> Result<(Sentences<'a>, Sentences<'a>)> {
        let labels = dataset.int_lists("labels")?;
        let name = |id: i64| -> Result<&'a str> {
            names.get(id as usize).map(String::as_str).ok_or_else(|| {
                Error::Msg(format!("tag id {id} is out of range for the {} tags {names:?}", names.len()))
            })
        };
        let (mut gold, mut predicted) = (Vec::new(), Vec::new());
        for (&row, tags) in self.rows.iter().zip(&self.tags) {
            let (mut g, mut p) = (Vec::new(), Vec::new());
            for (&label, &tag) in labels.row(row).iter().zip(tags) {
                if label != IGNORED {
                    g.push(name(label)?);
                    p.push(name(i64::from(tag))?);
                }
            }
            gold.push(g);
            predicted.push(p);
        }
        Ok((gold, predicted))
    }

    /// seqeval's report on the labelled tokens.
    pub fn report(&self, dataset: &Dataset, names: &[String]) -> Result<Report> {
        let (gold, predicted) = self.labelled(dataset, names)?;
        Ok(Report::new(&gold, &predicted))
    }

    /// A report's scores (overall and per type) and the mean loss per labelled token.
    pub fn metrics_of(&self, report: &Report) -> Metrics {
        let mut metrics = report.metrics();
        metrics.insert("loss".into(), self.loss_sum / self.labelled.max(1) as f64);
        metrics
    }

    /// seqeval's scores (overall and per type) and the mean loss per labelled token; empty when
    /// no token has a label.
    pub fn metrics(&self, dataset: &Dataset, names: &[String]) -> Result<Metrics> {
        if self.labelled == 0 {
            return Ok(Metrics::new());
        }
        Ok(self.metrics_of(&self.report(dataset, names)?))
    }

    /// Each sentence's tag per word, the prediction of the word's first piece (from `dataset`'s
    /// `word_ids`); `None` for words that truncation left out.
    pub fn word_tags(&self, dataset: &Dataset) -> Result<Vec<Vec<Option<u32>>>> {
        let (words, word_ids) = (dataset.str_lists("tokens")?, dataset.int_lists("word_ids")?);
        let mut out = Vec::with_capacity(self.rows.len());
        for (&row, tags) in self.rows.iter().zip(&self.tags) {
            let mut per_word = vec![None; words.row(row).len()];
            let mut previous = -1;
            for (&word, &tag) in word_ids.row(row).iter().zip(tags) {
                if word >= 0 && word != previous {
                    per_word[word as usize] = Some(tag);
                }
                previous = word;
            }
            out.push(per_word);
        }
        Ok(out)
    }
}

/// The number of labelled tokens in `rows` of a tokenized split (its `labels` column).
pub fn labelled_tokens(dataset: &Dataset, rows: &[usize]) -> Result<usize> {
    let labels = dataset.int_lists("labels")?;
    Ok(rows.iter().map(|&r| labels.row(r).iter().filter(|&&l| l != IGNORED).count()).sum())
}
