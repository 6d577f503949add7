//! The BERT-shaped encoders, post-norm layers of self-attention and a feed-forward block:
//! BERT, RoBERTa and XLM-RoBERTa (positions counted after the padding id, every token of type 0),
//! ELECTRA (BERT behind a projection of narrower embeddings) and DistilBERT (its own parameter
//! names, no token types, no dropout after attention), each with transformers' parameter names and
//! dropout that is on only in training.
//!
//! Inside the encoder, hidden states are kept as a [rows, hidden] matrix so every dense layer is one
//! plain matrix product: [batch * seq] rows, or on the CPU the real tokens only, packed (see
//! `packing`). Composed attention (off the CPU) reshapes to [batch, heads, seq, head_dim] for
//! batched products. Dropout is active exactly when a [`DropoutRng`] is passed.

use candle_core::{DType, Tensor};

use super::super::builder::{Init, ParamBuilder};
use super::super::config::{BertConfig, DistilBertConfig};
use super::super::dropout::{Dropout, DropoutRng, MaskLayout};
use super::super::family::Family;
use super::super::layers::{attention_probs, Activation, LayerNorm, Linear};
use super::super::packing::TokenRows;
use super::residual::ResidualOutput;
use super::{additive_mask, without_gradient_at, word_rows};
use crate::kernels::cpu::Positions;
use crate::kernels::{cpu, precision};
use crate::{bail, Result};

/// Where each family keeps a layer's parameters, under `<encoder>.<i>.`.
#[derive(Debug)]
struct LayerNames {
    query: &'static str,
    key: &'static str,
    value: &'static str,
    attention_dense: &'static str,
    attention_norm: &'static str,
    intermediate: &'static str,
    output_dense: &'static str,
    output_norm: &'static str,
}

// https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/bert/modeling_bert.py (BertLayer)
const BERT_NAMES: LayerNames = LayerNames {
    query: "attention.self.query",
    key: "attention.self.key",
    value: "attention.self.value",
    attention_dense: "attention.output.dense",
    attention_norm: "attention.output.LayerNorm",
    intermediate: "intermediate.dense",
    output_dense: "output.dense",
    output_norm: "output.LayerNorm",
};

// https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/distilbert/modeling_distilbert.py (TransformerBlock)
const DISTILBERT_NAMES: LayerNames = LayerNames {
    query: "attention.q_lin",
    key: "attention.k_lin",
    value: "attention.v_lin",
    attention_dense: "attention.out_lin",
    attention_norm: "sa_layer_norm",
    intermediate: "ffn.lin1",
    output_dense: "ffn.lin2",
    output_norm: "output_layer_norm",
};

/// What distinguishes one BERT-shaped family's encoder from another's.
#[derive(Debug)]
struct Spec {
    names: &'static LayerNames,
    /// The folder of the layers under the encoder's prefix (`encoder.layer`, `transformer.layer`).
    layers_at: &'static str,
    vocab: usize,
    hidden: usize,
    /// The embeddings' width (ELECTRA's are narrower and projected).
    embedding: usize,
    layers: usize,
    heads: usize,
    intermediate: usize,
    positions: usize,
    /// Token type embeddings (`None`: DistilBERT has none), and whether inputs' types are read.
    type_vocab: Option<usize>,
    read_types: bool,
    order: Positions,
    pad: Option<u32>,
    eps: f64,
    activation: Activation,
    hidden_dropout: f64,
    attention_dropout: f64,
    /// Dropout on the attention block's output before its residual LayerNorm.
    attention_output_dropout: f64,
    sinusoidal: bool,
}

impl Spec {
    fn of_bert(family: Family, c: &BertConfig) -> Result<Self> {
        let roberta = matches!(family, Family::Roberta | Family::XlmRoberta);
        let order = match (roberta, c.pad_token_id) {
            (true, Some(pad)) => Positions::AfterPadding { pad },
            (true, None) => bail!("RoBERTa counts positions from the padding id; the config sets none"),
            (false, _) => Positions::Sequential,
        };
        Ok(Self {
            names: &BERT_NAMES,
            layers_at: "encoder.layer",
            vocab: c.vocab_size,
            hidden: c.hidden_size,
            embedding: c.embedding_size.unwrap_or(c.hidden_size),
            layers: c.num_hidden_layers,
            heads: c.num_attention_heads,
            intermediate: c.intermediate_size,
            positions: c.max_position_embeddings,
            type_vocab: Some(c.type_vocab_size),
            read_types: family.uses_token_types(),
            order,
            pad: c.pad_token_id,
            eps: c.layer_norm_eps,
            activation: Activation::parse("hidden_act", &c.hidden_act)?,
            hidden_dropout: c.hidden_dropout_prob,
            attention_dropout: c.attention_probs_dropout_prob,
            attention_output_dropout: c.hidden_dropout_prob,
            sinusoidal: false,
        })
    }

    fn of_distilbert(c: &DistilBertConfig) -> Result<Self> {
        Ok(Self {
            names: &DISTILBERT_NAMES,
            layers_at: "transformer.layer",
            vocab: c.vocab_size,
            hidden: c.dim,
            embedding: c.dim,
            layers: c.n_layers,
            heads: c.n_heads,
            intermediate: c.hidden_dim,
            positions: c.max_position_embeddings,
            type_vocab: None,
            read_types: false,
            order: Positions::Sequential,
            pad: c.pad_token_id,
            // DistilBERT's LayerNorms have a fixed epsilon.
            eps: 1e-12,
            activation: Activation::parse("activation", &c.activation)?,
            hidden_dropout: c.dropout,
            attention_dropout: c.attention_dropout,
            attention_output_dropout: 0.0,
            sinusoidal: c.sinusoidal_pos_embds,
        })
    }
}

/// Word + position (+ token-type) embeddings, then LayerNorm and dropout.
// https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/bert/modeling_bert.py (BertEmbeddings)
// https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/roberta/modeling_roberta.py (RobertaEmbeddings)
#[derive(Debug, Clone)]
struct Embeddings {
    words: Tensor,
    positions: Tensor,
    types: Option<Tensor>,
    read_types: bool,
    order: Positions,
    layer_norm: LayerNorm,
    dropout: Dropout,
    pad_token_id: Option<u32>,
}

impl Embeddings {
    fn load(pb: &ParamBuilder, spec: &Spec) -> Result<Self> {
        let (e, padding_idx) = (spec.embedding, spec.pad);
        let position_init = match spec.sinusoidal {
            true => Init::Sinusoidal,
            false => Init::Embedding { padding_idx: spec.order.pad() },
        };
        let types = match spec.type_vocab {
            Some(n) => {
                Some(pb.pp("token_type_embeddings").get((n, e), "weight", Init::Embedding { padding_idx: None })?)
            }
            None => None,
        };
        Ok(Self {
            words: pb.pp("word_embeddings").get((spec.vocab, e), "weight", Init::Embedding { padding_idx })?,
            positions: pb.pp("position_embeddings").get((spec.positions, e), "weight", position_init)?,
            types,
            read_types: spec.read_types,
            order: spec.order.clone(),
            layer_norm: LayerNorm::load(&pb.pp("LayerNorm"), e, spec.eps)?,
            dropout: Dropout::new(spec.hidden_dropout),
            pad_token_id: spec.pad,
        })
    }

    fn detached(&self) -> Self {
        Self {
            words: self.words.detach(),
            positions: self.positions.detach(),
            types: self.types.as_ref().map(Tensor::detach),
            layer_norm: self.layer_norm.detached(),
            ..self.clone()
        }
    }

    /// `input_ids`, `token_type_ids`: [batch, seq] integer ids. Returns [batch * seq, width].
    fn forward(&self, input_ids: &Tensor, token_type_ids: &Tensor, rng: Option<&mut DropoutRng>) -> Result<Tensor> {
        let (b, l) = input_ids.dims2()?;
        let e = self.words.dim(1)?;
        // Families that do not read types take every token as type 0.
        let zeros;
        let token_type_ids = match self.read_types {
            true => token_type_ids,
            false => {
                zeros = Tensor::zeros((b, l), DType::U32, input_ids.device())?;
                &zeros
            }
        };
        let xs = if cpu::enabled(&self.words) {
            let tables = (&self.words, self.types.as_ref(), Some(&self.positions));
            cpu::embedding_sum(tables, input_ids, token_type_ids, self.pad_token_id, &self.order)?
        } else {
            self.composed_sum(input_ids, token_type_ids)?
        };
        let xs = self.layer_norm.forward(&xs)?;
        self.dropout.forward(&xs, MaskLayout::Tokens { len: l, width: e }, rng)
    }

    /// The embedding sum from candle's ops (any device): the CPU kernel's reference.
    fn composed_sum(&self, input_ids: &Tensor, token_type_ids: &Tensor) -> Result<Tensor> {
        let (b, l) = input_ids.dims2()?;
        let e = self.words.dim(1)?;
        let words = word_rows(&self.words, input_ids, self.pad_token_id)?;
        let xs = match &self.types {
            Some(types) => (words + types.index_select(&token_type_ids.flatten_all()?.to_dtype(DType::U32)?, 0)?)?,
            None => words,
        };
        Ok(match &self.order {
            // Positions are 0..seq, so their embeddings are the first `seq` rows of the table.
            Positions::Sequential => {
                xs.reshape((b, l, e))?.broadcast_add(&self.positions.narrow(0, 0, l)?)?.reshape((b * l, e))?
            }
            Positions::AfterPadding { pad } => {
                let ids = input_ids.to_dtype(DType::U32)?;
                let positions = roberta_positions(&ids, *pad)?.flatten_all()?;
                let rows = self.positions.index_select(&positions, 0)?;
                (xs + without_gradient_at(&rows, &positions, *pad)?)?
            }
        })
    }
}

/// RoBERTa's position ids for `ids` [batch, seq], from candle's ops on `ids`' device:
/// `cumsum(ids != pad) * (ids != pad) + pad`.
fn roberta_positions(ids: &Tensor, pad: u32) -> Result<Tensor> {
    let real = ids.ne(f64::from(pad))?.to_dtype(DType::F32)?;
    let counted = (real.cumsum(1)? * &real)?;
    Ok((counted + f64::from(pad))?.to_dtype(DType::U32)?)
}

/// Multi-head self-attention: query/key/value projections, scaled dot products with the additive
/// padding mask, softmax, dropout on the probabilities.
// https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/bert/modeling_bert.py (BertSelfAttention)
#[derive(Debug, Clone)]
struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    dropout: Dropout,
    num_heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    fn load(pb: &ParamBuilder, spec: &Spec) -> Result<Self> {
        let (h, names) = (spec.hidden, spec.names);
        Ok(Self {
            query: Linear::load(&pb.pp(names.query), h, h)?,
            key: Linear::load(&pb.pp(names.key), h, h)?,
            value: Linear::load(&pb.pp(names.value), h, h)?,
            dropout: Dropout::new(spec.attention_dropout),
            num_heads: spec.heads,
            head_dim: h / spec.heads,
        })
    }

    fn detached(&self) -> Self {
        Self { query: self.query.detached(), key: self.key.detached(), value: self.value.detached(), ..self.clone() }
    }

    /// `xs`: [rows, hidden], laid out as `rows` says; `mask`: additive, [batch, seq] (read for
    /// padded rows). Returns [rows, hidden].
    fn forward(&self, xs: &Tensor, rows: &TokenRows, mask: &Tensor, rng: Option<&mut DropoutRng>) -> Result<Tensor> {
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let (q, k, v) = (
            self.query.forward_for_products(xs)?,
            self.key.forward_for_products(xs)?,
            self.value.forward_for_products(xs)?,
        );
        if cpu::enabled(xs) {
            let heads = self.num_heads;
            let dropout = self.dropout.draw(&rows.layouts(|len| MaskLayout::Scores { heads, len }), rng)?;
            let mask = matches!(rows, TokenRows::Padded { .. }).then_some(mask);
            return cpu::attention((&q, &k, &v), rows.sequences(), heads, mask, scale, dropout, None);
        }
        let &TokenRows::Padded { batch: b, seq: l } = rows else {
            bail!("packed token rows run on the CPU kernels only");
        };
        let split_heads = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, l, self.num_heads, self.head_dim))?.transpose(1, 2)?.contiguous()?)
        };
        let (q, k, v) = (split_heads(q)?, split_heads(k)?, split_heads(v)?);
        let probs = attention_probs(&precision::product(&q, &k.t()?)?, mask, scale)?;
        let probs = self.dropout.forward(&probs, MaskLayout::Scores { heads: self.num_heads, len: l }, rng)?;
        let context = precision::product(&probs, &v)?;
        Ok(context.transpose(1, 2)?.reshape((b * l, self.num_heads * self.head_dim))?)
    }
}

/// One encoder layer: self-attention with its output block, then dense + activation and the output block.
// https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/bert/modeling_bert.py (BertLayer)
#[derive(Debug, Clone)]
struct Layer {
    attention: SelfAttention,
    attention_output: ResidualOutput,
    intermediate: Linear,
    activation: Activation,
    output: ResidualOutput,
}

impl Layer {
    fn load(pb: &ParamBuilder, spec: &Spec) -> Result<Self> {
        let n = spec.names;
        let (h, i) = (spec.hidden, spec.intermediate);
        Ok(Self {
            attention: SelfAttention::load(pb, spec)?,
            attention_output: ResidualOutput::load(
                (&pb.pp(n.attention_dense), &pb.pp(n.attention_norm)),
                h,
                h,
                spec.eps,
                spec.attention_output_dropout,
            )?,
            intermediate: Linear::load(&pb.pp(n.intermediate), h, i)?,
            activation: spec.activation,
            output: ResidualOutput::load(
                (&pb.pp(n.output_dense), &pb.pp(n.output_norm)),
                i,
                h,
                spec.eps,
                spec.hidden_dropout,
            )?,
        })
    }

    fn detached(&self) -> Self {
        Self {
            attention: self.attention.detached(),
            attention_output: self.attention_output.detached(),
            intermediate: self.intermediate.detached(),
            activation: self.activation,
            output: self.output.detached(),
        }
    }

    /// `xs`: [rows, hidden], laid out as `rows` says; `mask`: additive, [batch, seq].
    fn forward(
        &self,
        xs: &Tensor,
        rows: &TokenRows,
        mask: &Tensor,
        mut rng: Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        let attended = self.attention.forward(xs, rows, mask, rng.as_deref_mut())?;
        let attended = self.attention_output.forward(&attended, xs, rows, rng.as_deref_mut())?;
        let inner = self.intermediate.forward_activated(&attended, self.activation)?;
        self.output.forward(&inner, &attended, rows, rng)
    }
}

/// A BERT-shaped encoder (`bert.*`, `roberta.*`, `electra.*`, `distilbert.*` in a task checkpoint):
/// embeddings, ELECTRA's projection where its embeddings are narrower, and the layers.
// https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/bert/modeling_bert.py (BertModel)
// https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/electra/modeling_electra.py (ElectraModel)
#[derive(Debug, Clone)]
pub(crate) struct BertEncoder {
    embeddings: Embeddings,
    project: Option<Linear>,
    layers: Vec<Layer>,
    max_sequence: usize,
}

impl BertEncoder {
    /// BERT, RoBERTa, XLM-RoBERTa or ELECTRA under `pb` (the family's prefix).
    pub(crate) fn load_bert(
        pb: &ParamBuilder,
        family: Family,
        config: &BertConfig,
        max_sequence: usize,
    ) -> Result<Self> {
        Self::load(pb, &Spec::of_bert(family, config)?, max_sequence)
    }

    /// DistilBERT under `pb` (`distilbert`).
    pub(crate) fn load_distilbert(pb: &ParamBuilder, config: &DistilBertConfig) -> Result<Self> {
        Self::load(pb, &Spec::of_distilbert(config)?, config.max_position_embeddings)
    }

    fn load(pb: &ParamBuilder, spec: &Spec, max_sequence: usize) -> Result<Self> {
        let at = pb.pp(spec.layers_at);
        let layers = (0..spec.layers).map(|i| Layer::load(&at.pp(i.to_string()), spec)).collect::<Result<Vec<_>>>()?;
        let project = match spec.embedding != spec.hidden {
            true => Some(Linear::load(&pb.pp("embeddings_project"), spec.embedding, spec.hidden)?),
            false => None,
        };
        Ok(Self { embeddings: Embeddings::load(&pb.pp("embeddings"), spec)?, project, layers, max_sequence })
    }

    /// The same encoder reading the same weights, outside the autograd graph.
    pub(crate) fn detached(&self) -> Self {
        Self {
            embeddings: self.embeddings.detached(),
            project: self.project.as_ref().map(Linear::detached),
            layers: self.layers.iter().map(Layer::detached).collect(),
            max_sequence: self.max_sequence,
        }
    }

    /// Embeddings and layers: the last hidden states as [rows, hidden], and how their rows are
    /// laid out (on the CPU the real tokens only, packed, where the mask pads at the right).
    pub(crate) fn encode(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        pack: bool,
        mut rng: Option<&mut DropoutRng>,
    ) -> Result<(Tensor, TokenRows)> {
        let (b, l) = input_ids.dims2()?;
        if l > self.max_sequence {
            bail!("sequence length {l} exceeds the model's {} positions", self.max_sequence);
        }
        let mask = additive_mask(attention_mask)?;
        let mut xs = self.embeddings.forward(input_ids, token_type_ids, rng.as_deref_mut())?;
        let rows = match pack && cpu::enabled(&xs) {
            true => TokenRows::of(attention_mask)?,
            false => TokenRows::Padded { batch: b, seq: l },
        };
        if let TokenRows::Packed(packing) = &rows {
            xs = xs.index_select(&packing.real_rows(xs.device())?, 0)?;
        }
        if let Some(project) = &self.project {
            xs = project.forward(&xs)?;
        }
        for layer in &self.layers {
            xs = layer.forward(&xs, &rows, &mask, rng.as_deref_mut())?;
        }
        Ok((xs, rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn roberta_positions_on_any_device_equal_the_kernels() {
        let ids = Tensor::new(&[[0u32, 5, 6, 2, 1, 1], [0, 7, 2, 1, 1, 1]], &Device::Cpu).unwrap();
        let composed = roberta_positions(&ids, 1).unwrap().flatten_all().unwrap().to_vec1::<u32>().unwrap();
        let flat = ids.flatten_all().unwrap().to_vec1::<u32>().unwrap();
        assert_eq!(composed, Positions::AfterPadding { pad: 1 }.ids(&flat, 6));
    }
}
