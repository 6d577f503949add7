//! Encoder: the family's transformer, from token ids to the last hidden states, behind one type so
//! that heads and the trainer never ask which family they hold.

mod bert;
mod deberta;
mod modernbert;
mod residual;

use candle_core::{DType, Tensor};

use super::builder::ParamBuilder;
use super::config::{Arch, ModelConfig};
use super::dropout::DropoutRng;
use super::packing::TokenRows;
use crate::Result;

pub(crate) use bert::BertEncoder;
pub(crate) use deberta::DebertaEncoder;
pub(crate) use modernbert::{Inits as ModernBertInits, ModernBertEncoder};

/// How fresh ModernBERT weights are drawn (its head draws from the same rule).
pub(crate) fn modernbert_inits(c: &super::config::ModernBertConfig) -> ModernBertInits {
    ModernBertInits::of(c)
}

/// A family's encoder.
#[derive(Debug, Clone)]
pub(crate) enum Encoder {
    /// BERT, RoBERTa, XLM-RoBERTa, ELECTRA and DistilBERT.
    Bert(BertEncoder),
    DebertaV2(DebertaEncoder),
    ModernBert(ModernBertEncoder),
}

impl Encoder {
    /// The encoder `config` describes, its parameters under `pb` (the family's base prefix).
    pub(crate) fn load(pb: &ParamBuilder, config: &ModelConfig) -> Result<Self> {
        Ok(match config.arch() {
            Arch::Bert(c) => Self::Bert(BertEncoder::load_bert(pb, config.family(), c, config.dims().max_sequence)?),
            Arch::DistilBert(c) => Self::Bert(BertEncoder::load_distilbert(pb, c)?),
            Arch::DebertaV2(c) => Self::DebertaV2(DebertaEncoder::load(pb, c)?),
            Arch::ModernBert(c) => Self::ModernBert(ModernBertEncoder::load(pb, c)?),
        })
    }

    /// The same encoder reading the same weights, outside the autograd graph: evaluation builds no
    /// graph and frees each activation as soon as the next layer has read it.
    pub(crate) fn detached(&self) -> Self {
        match self {
            Self::Bert(e) => Self::Bert(e.detached()),
            Self::DebertaV2(e) => Self::DebertaV2(e.detached()),
            Self::ModernBert(e) => Self::ModernBert(e.detached()),
        }
    }

    /// The last hidden states as [rows, hidden] and how their rows are laid out, for
    /// `input_ids`, `token_type_ids`, `attention_mask` [batch, seq] (mask 1 = token, 0 = padding).
    /// With `pack`, the CPU kernels may skip the padding rows. Dropout is applied when `rng` is
    /// given (training) and skipped otherwise (evaluation).
    pub(crate) fn encode(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        pack: bool,
        rng: Option<&mut DropoutRng>,
    ) -> Result<(Tensor, TokenRows)> {
        let (b, l) = input_ids.dims2()?;
        if token_type_ids.dims() != [b, l] || attention_mask.dims() != [b, l] {
            crate::bail!(
                "input_ids {:?}, token_type_ids {:?} and attention_mask {:?} must have the same [batch, seq] shape",
                input_ids.dims(),
                token_type_ids.dims(),
                attention_mask.dims()
            );
        }
        match self {
            Self::Bert(e) => e.encode(input_ids, token_type_ids, attention_mask, pack, rng),
            Self::DebertaV2(e) => e.encode(input_ids, token_type_ids, attention_mask, rng),
            Self::ModernBert(e) => e.encode(input_ids, attention_mask, pack, rng),
        }
    }
}

/// Whether the exact gradient of parameter `name` of an encoder of `config` is zero whatever the
/// data: attention's key biases, where the key enters the scores only through q . k (softmax ignores
/// a shift shared by a row's scores). Rounding leaves noise there, which Adam scales to updates of
/// about the learning rate, so runs that add in another order (another rank count) differ in them.
pub(crate) fn zero_gradient(config: &ModelConfig, name: &str) -> bool {
    match config.arch() {
        Arch::Bert(_) => name.ends_with(".attention.self.key.bias"),
        Arch::DistilBert(_) => name.ends_with(".attention.k_lin.bias"),
        // DeBERTa's p2c term reads the keys against relative positions, which vary along a row;
        // c2p's own position keys enter as q . (W r + b), whose bias part is shared by the row.
        Arch::DebertaV2(c) => {
            (name.ends_with(".attention.self.key_proj.bias") && !(c.relative_attention && c.p2c()))
                || name.ends_with(".attention.self.pos_key_proj.bias")
        }
        // The key's share of a fused Wqkv bias (attention_bias) is a slice, not a parameter.
        Arch::ModernBert(_) => false,
    }
}

/// The rows of the word table `words` for `ids` ([batch, seq]): [batch * seq, width], from candle's
/// ops (any device). Rows of the padding id `pad` send no gradient to the table, as
/// `nn.Embedding(padding_idx=pad)`: they are read from a detached copy.
pub(crate) fn word_rows(words: &Tensor, ids: &Tensor, pad: Option<u32>) -> Result<Tensor> {
    let flat = ids.flatten_all()?.to_dtype(DType::U32)?;
    let rows = words.index_select(&flat, 0)?;
    match pad {
        Some(pad) => without_gradient_at(&rows, &flat, pad),
        None => Ok(rows),
    }
}

/// `rows` ([n, width], gathered by `index`) with those gathered from table row `pad` detached.
pub(crate) fn without_gradient_at(rows: &Tensor, index: &Tensor, pad: u32) -> Result<Tensor> {
    let is_pad = index.eq(f64::from(pad))?.unsqueeze(1)?.broadcast_as(rows.shape())?;
    Ok(is_pad.where_cond(&rows.detach(), rows)?)
}

/// [batch, seq] 0/1 mask to the additive mask transformers adds to attention scores (broadcast
/// over heads and queries): `(1 - mask) * finfo(float32).min`, so padded keys get zero probability.
pub(crate) fn additive_mask(attention_mask: &Tensor) -> Result<Tensor> {
    let min = f64::from(f32::MIN);
    // mask * (-min) + min: exactly 0 where mask is 1 and `min` where it is 0.
    Ok(attention_mask.to_dtype(DType::F32)?.affine(-min, min)?)
}
