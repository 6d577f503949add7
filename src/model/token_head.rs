//! The heads that score every token: token classification (a tag per token) and extractive
//! question answering (a start and an end score per token), at each family's names.
//!
//! | family | token classification | question answering |
//! |---|---|---|
//! | BERT, RoBERTa, XLM-R, ELECTRA | dropout, `classifier` | `qa_outputs` |
//! | DistilBERT | dropout (`dropout`), `classifier` | dropout (`qa_dropout`), `qa_outputs` |
//! | DeBERTa-v2 | dropout (`hidden_dropout_prob`), `classifier` | `qa_outputs` |
//! | ModernBERT | `head.dense`, `head.norm`, dropout, `classifier` | the same |

use candle_core::Tensor;

use super::builder::{Init, ParamBuilder};
use super::config::{Arch, ModelConfig};
use super::dropout::{Dropout, DropoutRng};
use super::layers::{Activation, LayerNorm, Linear};
use super::packing::TokenRows;
use crate::config::Task;
use crate::Result;

/// ModernBERT's prediction head before the output layer: dense, activation, LayerNorm.
#[derive(Debug, Clone)]
struct Prediction {
    dense: Linear,
    activation: Activation,
    norm: LayerNorm,
}

/// A per-token head: `[rows, hidden]` hidden states to `[rows, outputs]` scores.
// https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/bert/modeling_bert.py (BertForTokenClassification, BertForQuestionAnswering)
#[derive(Debug, Clone)]
pub(crate) struct TokenHead {
    prediction: Option<Prediction>,
    dropout: Dropout,
    out: Linear,
    names: Vec<String>,
}

impl TokenHead {
    /// The head of `task` (token classification or question answering) with `outputs` scores per
    /// token, under the model's root `pb`.
    pub(crate) fn load(pb: &ParamBuilder, config: &ModelConfig, task: Task, outputs: usize) -> Result<Self> {
        let hidden = config.dims().hidden_size;
        let qa = task == Task::QuestionAnswering;
        let mark = pb.mark();
        let (dropout, out_name, out_init, prediction) = match config.arch() {
            Arch::Bert(c) => {
                let p = if qa { 0.0 } else { c.classifier_dropout_prob() };
                (p, if qa { "qa_outputs" } else { "classifier" }, Init::Normal, None)
            }
            Arch::DistilBert(c) => {
                let p = if qa { c.qa_dropout } else { c.dropout };
                (p, if qa { "qa_outputs" } else { "classifier" }, Init::Normal, None)
            }
            Arch::DebertaV2(c) => {
                let p = if qa { 0.0 } else { c.hidden_dropout_prob };
                (p, if qa { "qa_outputs" } else { "classifier" }, Init::Normal, None)
            }
            Arch::ModernBert(c) => {
                let inits = super::encoder::modernbert_inits(c);
                let last = Init::TruncNormal { std: (hidden as f64).powf(-0.5), cutoff: c.initializer_cutoff_factor };
                let prediction = Prediction {
                    dense: Linear::load_init(&pb.pp("head.dense"), hidden, hidden, c.classifier_bias, inits.output)?,
                    activation: Activation::parse("classifier_activation", &c.classifier_activation)?,
                    norm: LayerNorm::load_with(&pb.pp("head.norm"), hidden, c.norm_eps, c.norm_bias)?,
                };
                // transformers' ModernBertForQuestionAnswering names its output layer `classifier` too.
                (c.classifier_dropout, "classifier", last, Some(prediction))
            }
        };
        let out = Linear::load_init(&pb.pp(out_name), hidden, outputs, true, out_init)?;
        Ok(Self { prediction, dropout: Dropout::new(dropout), out, names: pb.names_since(mark) })
    }

    /// The parameter names the head owns.
    pub(crate) fn names(&self) -> &[String] {
        &self.names
    }

    /// The number of scores per token.
    pub(crate) fn outputs(&self) -> usize {
        self.out.out_dim()
    }

    pub(crate) fn detached(&self) -> Self {
        Self {
            prediction: self.prediction.as_ref().map(|p| Prediction {
                dense: p.dense.detached(),
                activation: p.activation,
                norm: p.norm.detached(),
            }),
            out: self.out.detached(),
            ..self.clone()
        }
    }

    /// Scores [batch, seq, outputs] from the encoder's last hidden states `xs` ([rows, hidden]
    /// laid out as `rows` says); where the encoder skipped padding, padding positions score 0.
    pub(crate) fn forward(&self, xs: &Tensor, rows: &TokenRows, rng: Option<&mut DropoutRng>) -> Result<Tensor> {
        let ys = match &self.prediction {
            Some(p) => p.norm.forward(&p.activation.forward(&p.dense.forward(xs)?)?)?,
            None => xs.clone(),
        };
        let ys = rows.drop_tokens(&self.dropout, &ys, rng)?;
        rows.unpad(&self.out.forward(&ys)?)
    }
}
