//! The sequence classification head of each family: a summary of the sequence (its first token, or
//! the mean of its tokens), a dense layer with its activation, dropout and the output layer, at the
//! family's parameter names.
//!
//! | family | summary | dense (activation) | output |
//! |---|---|---|---|
//! | BERT | first token | `bert.pooler.dense` (tanh), dropout | `classifier` |
//! | RoBERTa, XLM-R | dropout, first token | `classifier.dense` (tanh), dropout | `classifier.out_proj` |
//! | ELECTRA | dropout, first token | `classifier.dense` (GELU), dropout | `classifier.out_proj` |
//! | DistilBERT | first token | `pre_classifier` (ReLU), dropout | `classifier` |
//! | DeBERTa-v2 | dropout, first token | `pooler.dense` (`pooler_hidden_act`), dropout | `classifier` |

use candle_core::{DType, Tensor};

use super::builder::ParamBuilder;
use super::config::{Arch, ModelConfig};
use super::dropout::{Dropout, DropoutRng, MaskLayout};
use super::family::Family;
use super::layers::{Activation, LayerNorm, Linear};
use super::packing::TokenRows;
use crate::Result;

/// How a head summarises a sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The first token's hidden state.
    First,
    /// The mean over the sequence's tokens.
    Mean,
}

/// A sequence classification head.
// https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/roberta/modeling_roberta.py (RobertaClassificationHead)
#[derive(Debug, Clone)]
pub(crate) struct ClassificationHead {
    pooling: Pooling,
    /// Dropout on the summary before the dense layer (probability 0 where a family has none).
    pre_dropout: Dropout,
    dense: Linear,
    activation: Activation,
    norm: Option<LayerNorm>,
    dropout: Dropout,
    out: Linear,
    /// The parameter names the head owns (a checkpoint of the bare encoder lacks them).
    names: Vec<String>,
}

/// Where a family's head keeps its layers, and how it computes.
struct Layout {
    dense: &'static str,
    out: &'static str,
    activation: Activation,
    pre_dropout: f64,
    dropout: f64,
}

impl ClassificationHead {
    /// The head `config` describes, with `num_labels` outputs, under the model's root `pb`.
    pub(crate) fn load(pb: &ParamBuilder, config: &ModelConfig, num_labels: usize) -> Result<Self> {
        let hidden = config.dims().hidden_size;
        let layout = match config.arch() {
            Arch::Bert(c) => {
                let p = c.classifier_dropout_prob();
                match config.family() {
                    Family::Roberta | Family::XlmRoberta => Layout {
                        dense: "classifier.dense",
                        out: "classifier.out_proj",
                        activation: Activation::Tanh,
                        pre_dropout: p,
                        dropout: p,
                    },
                    // ELECTRA's head applies transformers' "gelu" whatever the encoder's activation.
                    Family::Electra => Layout {
                        dense: "classifier.dense",
                        out: "classifier.out_proj",
                        activation: Activation::GeluErf,
                        pre_dropout: p,
                        dropout: p,
                    },
                    _ => Layout {
                        dense: "bert.pooler.dense",
                        out: "classifier",
                        activation: Activation::Tanh,
                        pre_dropout: 0.0,
                        dropout: p,
                    },
                }
            }
            Arch::DistilBert(c) => Layout {
                dense: "pre_classifier",
                out: "classifier",
                activation: Activation::Relu,
                pre_dropout: 0.0,
                dropout: c.seq_classif_dropout,
            },
            // transformers' ContextPooler, then the classifier.
            Arch::DebertaV2(c) => Layout {
                dense: "pooler.dense",
                out: "classifier",
                activation: Activation::parse("pooler_hidden_act", &c.pooler_hidden_act)?,
                pre_dropout: c.pooler_dropout,
                dropout: c.classifier_dropout_prob(),
            },
        };
        let (dense, out) = (pb.pp(layout.dense), pb.pp(layout.out));
        let names = [&dense, &out].iter().flat_map(|p| [p.name("weight"), p.name("bias")]).collect();
        Ok(Self {
            pooling: Pooling::First,
            pre_dropout: Dropout::new(layout.pre_dropout),
            dense: Linear::load(&dense, hidden, hidden)?,
            activation: layout.activation,
            norm: None,
            dropout: Dropout::new(layout.dropout),
            out: Linear::load(&out, hidden, num_labels)?,
            names,
        })
    }

    /// The parameter names the head owns.
    pub(crate) fn names(&self) -> &[String] {
        &self.names
    }

    /// The number of outputs.
    pub(crate) fn num_labels(&self) -> usize {
        self.out.out_dim()
    }

    pub(crate) fn detached(&self) -> Self {
        Self {
            dense: self.dense.detached(),
            norm: self.norm.as_ref().map(LayerNorm::detached),
            out: self.out.detached(),
            ..self.clone()
        }
    }

    /// Logits [batch, num_labels] from the encoder's last hidden states `xs` ([rows, hidden] laid
    /// out as `rows` says) of a batch with `attention_mask` [batch, seq].
    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        rows: &TokenRows,
        attention_mask: &Tensor,
        mut rng: Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        let summary = summarise(xs, rows, attention_mask, self.pooling)?;
        let width = summary.dim(1)?;
        let summary = self.pre_dropout.forward(&summary, MaskLayout::Pooled { width }, rng.as_deref_mut())?;
        let mut ys = self.activation.forward(&self.dense.forward(&summary)?)?;
        if let Some(norm) = &self.norm {
            ys = norm.forward(&ys)?;
        }
        let ys = self.dropout.forward(&ys, MaskLayout::Pooled { width }, rng)?;
        self.out.forward(&ys)
    }
}

/// One row per sequence, [batch, hidden]: its first token's hidden state, or the mean of its tokens'
/// (those `attention_mask` marks, as transformers' masked mean).
pub(crate) fn summarise(xs: &Tensor, rows: &TokenRows, attention_mask: &Tensor, pooling: Pooling) -> Result<Tensor> {
    match pooling {
        Pooling::First => match rows {
            TokenRows::Packed(packing) => Ok(xs.index_select(&packing.first_rows(xs.device())?, 0)?),
            &TokenRows::Padded { batch, seq } => {
                let first = xs.reshape((batch, seq, ()))?.narrow(1, 0, 1)?.squeeze(1)?;
                Ok(match first.device().is_cpu() {
                    true => first,
                    // candle's CUDA matmul takes no row stride but the row's length: the first
                    // token of each row is copied out (the CPU's kernels read it in place).
                    false => first.contiguous()?,
                })
            }
        },
        Pooling::Mean => match rows {
            // Each sequence's rows summed, over their count.
            TokenRows::Packed(packing) => {
                let parts = packing.ranges().map(|r| xs.narrow(0, r.start, r.len())?.mean_keepdim(0));
                Ok(Tensor::cat(&parts.collect::<candle_core::Result<Vec<_>>>()?, 0)?)
            }
            &TokenRows::Padded { batch, seq } => {
                let mask = attention_mask.to_dtype(DType::F32)?;
                let summed = xs.reshape((batch, seq, ()))?.broadcast_mul(&mask.unsqueeze(2)?)?.sum(1)?;
                Ok(summed.broadcast_div(&mask.sum_keepdim(1)?)?)
            }
        },
    }
}
