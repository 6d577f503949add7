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
//! | ModernBERT | first token or mean (`classifier_pooling`) | `head.dense` (`classifier_activation`), `head.norm`, dropout | `classifier` |

use candle_core::{DType, Tensor};

use super::builder::{Init, ParamBuilder};
use super::config::{Arch, ModelConfig, Pooling};
use super::dropout::{Dropout, DropoutRng, MaskLayout};
use super::family::Family;
use super::layers::{Activation, LayerNorm, Linear};
use super::packing::TokenRows;
use crate::Result;

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
    pooling: Pooling,
    dense: &'static str,
    /// The dense layer's bias, and how its weights and the output layer's are drawn when fresh.
    dense_bias: bool,
    inits: (Init, Init),
    activation: Activation,
    /// A LayerNorm after the activation: its name, epsilon and bias.
    norm: Option<(&'static str, f64, bool)>,
    out: &'static str,
    pre_dropout: f64,
    dropout: f64,
}

impl Layout {
    /// The layout most families share: the first token, a dense layer with a bias, no norm, weights
    /// drawn from N(0, initializer_range).
    fn first_token(dense: &'static str, out: &'static str, activation: Activation, dropouts: (f64, f64)) -> Self {
        Self {
            pooling: Pooling::First,
            dense,
            dense_bias: true,
            inits: (Init::Normal, Init::Normal),
            activation,
            norm: None,
            out,
            pre_dropout: dropouts.0,
            dropout: dropouts.1,
        }
    }
}

impl ClassificationHead {
    /// The head `config` describes, with `num_labels` outputs, under the model's root `pb`.
    pub(crate) fn load(pb: &ParamBuilder, config: &ModelConfig, num_labels: usize) -> Result<Self> {
        let hidden = config.dims().hidden_size;
        let layout = match config.arch() {
            Arch::Bert(c) => {
                let p = c.classifier_dropout_prob();
                match config.family() {
                    Family::Roberta | Family::XlmRoberta => {
                        Layout::first_token("classifier.dense", "classifier.out_proj", Activation::Tanh, (p, p))
                    }
                    // ELECTRA's head applies transformers' "gelu" whatever the encoder's activation.
                    Family::Electra => {
                        Layout::first_token("classifier.dense", "classifier.out_proj", Activation::GeluErf, (p, p))
                    }
                    _ => Layout::first_token("bert.pooler.dense", "classifier", Activation::Tanh, (0.0, p)),
                }
            }
            Arch::DistilBert(c) => {
                Layout::first_token("pre_classifier", "classifier", Activation::Relu, (0.0, c.seq_classif_dropout))
            }
            // transformers' ContextPooler, then the classifier.
            Arch::DebertaV2(c) => Layout::first_token(
                "pooler.dense",
                "classifier",
                Activation::parse("pooler_hidden_act", &c.pooler_hidden_act)?,
                (c.pooler_dropout, c.classifier_dropout_prob()),
            ),
            Arch::ModernBert(c) => {
                let output = super::encoder::modernbert_inits(c).output;
                let last = Init::TruncNormal { std: (hidden as f64).powf(-0.5), cutoff: c.initializer_cutoff_factor };
                Layout {
                    pooling: c.pooling()?,
                    dense: "head.dense",
                    dense_bias: c.classifier_bias,
                    inits: (output, last),
                    activation: Activation::parse("classifier_activation", &c.classifier_activation)?,
                    norm: Some(("head.norm", c.norm_eps, c.norm_bias)),
                    out: "classifier",
                    pre_dropout: 0.0,
                    dropout: c.classifier_dropout,
                }
            }
        };
        let mark = pb.mark();
        let dense = Linear::load_init(&pb.pp(layout.dense), hidden, hidden, layout.dense_bias, layout.inits.0)?;
        let norm = match layout.norm {
            Some((name, eps, bias)) => Some(LayerNorm::load_with(&pb.pp(name), hidden, eps, bias)?),
            None => None,
        };
        let out = Linear::load_init(&pb.pp(layout.out), hidden, num_labels, true, layout.inits.1)?;
        Ok(Self {
            pooling: layout.pooling,
            pre_dropout: Dropout::new(layout.pre_dropout),
            dense,
            activation: layout.activation,
            norm,
            dropout: Dropout::new(layout.dropout),
            out,
            names: pb.names_since(mark),
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
