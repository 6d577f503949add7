//! BertModel: embeddings, encoder layers and pooler, with transformers' module names and dropout that is on only in training.
//!
//! Inside the encoder, hidden states are kept as a [rows, hidden] matrix so every dense layer is one
//! plain matrix product: [batch * seq] rows, or on the CPU the real tokens only, packed (see
//! `packing`). Composed attention (off the CPU) reshapes to [batch, heads, seq, head_dim] for
//! batched products. Dropout is active exactly when a [`DropoutRng`] is passed.

use candle_core::{DType, Tensor};

use super::builder::{Init, ParamBuilder};
use super::config::BertConfig;
use super::dropout::{Dropout, DropoutRng, MaskLayout};
use super::layers::{attention_probs, gelu_erf, LayerNorm, Linear};
use super::packing::TokenRows;
use crate::kernels::{cpu, precision};
use crate::{bail, Result};

/// Word + position + token-type embeddings, then LayerNorm and dropout.
// https://github.com/huggingface/transformers/blob/8ec58104181bfb34d824d89bccc009b4f6be6e0e/src/transformers/models/bert/modeling_bert.py (BertEmbeddings)
#[derive(Debug, Clone)]
pub struct BertEmbeddings {
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    layer_norm: LayerNorm,
    dropout: Dropout,
    pad_token_id: Option<u32>,
}

impl BertEmbeddings {
    pub(crate) fn load(pb: &ParamBuilder, cfg: &BertConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let padding_idx = cfg.pad_token_id;
        Ok(Self {
            word_embeddings: pb.pp("word_embeddings").get(
                (cfg.vocab_size, h),
                "weight",
                Init::Embedding { padding_idx },
            )?,
            position_embeddings: pb.pp("position_embeddings").get(
                (cfg.max_position_embeddings, h),
                "weight",
                Init::Embedding { padding_idx: None },
            )?,
            token_type_embeddings: pb.pp("token_type_embeddings").get(
                (cfg.type_vocab_size, h),
                "weight",
                Init::Embedding { padding_idx: None },
            )?,
            layer_norm: LayerNorm::load(&pb.pp("LayerNorm"), h, cfg.layer_norm_eps)?,
            dropout: Dropout::new(cfg.hidden_dropout_prob),
            pad_token_id: cfg.pad_token_id,
        })
    }

    fn detached(&self) -> Self {
        Self {
            word_embeddings: self.word_embeddings.detach(),
            position_embeddings: self.position_embeddings.detach(),
            token_type_embeddings: self.token_type_embeddings.detach(),
            layer_norm: self.layer_norm.detached(),
            ..self.clone()
        }
    }

    /// `input_ids`, `token_type_ids`: [batch, seq] integer ids. Returns [batch * seq, hidden].
    pub fn forward(&self, input_ids: &Tensor, token_type_ids: &Tensor, rng: Option<&mut DropoutRng>) -> Result<Tensor> {
        if cpu::enabled(&self.word_embeddings) {
            let tables = (&self.word_embeddings, &self.token_type_embeddings, &self.position_embeddings);
            let xs = cpu::embedding_sum(tables, input_ids, token_type_ids, self.pad_token_id)?;
            let xs = self.layer_norm.forward(&xs)?;
            let h = self.word_embeddings.dim(1)?;
            return self.dropout.forward(&xs, MaskLayout::Tokens { len: input_ids.dim(1)?, width: h }, rng);
        }
        let (b, l) = input_ids.dims2()?;
        let h = self.word_embeddings.dim(1)?;
        let ids = input_ids.flatten_all()?;
        let mut words = self.word_embeddings.index_select(&ids, 0)?;
        if let Some(pad) = self.pad_token_id {
            // nn.Embedding(padding_idx=pad) never sends gradient to the padding row: take those
            // rows from a detached copy.
            let is_pad = ids.eq(f64::from(pad))?.unsqueeze(1)?.broadcast_as((b * l, h))?;
            words = is_pad.where_cond(&words.detach(), &words)?;
        }
        let types = self.token_type_embeddings.index_select(&token_type_ids.flatten_all()?, 0)?;
        // Positions are 0..seq, so their embeddings are the first `seq` rows of the table.
        let positions = self.position_embeddings.narrow(0, 0, l)?;
        let xs = (words + types)?.reshape((b, l, h))?.broadcast_add(&positions)?.reshape((b * l, h))?;
        let xs = self.layer_norm.forward(&xs)?;
        self.dropout.forward(&xs, MaskLayout::Tokens { len: l, width: h }, rng)
    }
}

/// Multi-head self-attention: query/key/value projections, scaled dot products with the additive
/// padding mask, softmax, dropout on the probabilities.
// https://github.com/huggingface/transformers/blob/8ec58104181bfb34d824d89bccc009b4f6be6e0e/src/transformers/models/bert/modeling_bert.py (BertSelfAttention)
#[derive(Debug, Clone)]
pub struct BertSelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    dropout: Dropout,
    num_heads: usize,
    head_dim: usize,
}

impl BertSelfAttention {
    pub(crate) fn load(pb: &ParamBuilder, cfg: &BertConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            query: Linear::load(&pb.pp("query"), h, h)?,
            key: Linear::load(&pb.pp("key"), h, h)?,
            value: Linear::load(&pb.pp("value"), h, h)?,
            dropout: Dropout::new(cfg.attention_probs_dropout_prob),
            num_heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
        })
    }

    fn detached(&self) -> Self {
        Self { query: self.query.detached(), key: self.key.detached(), value: self.value.detached(), ..self.clone() }
    }

    /// `xs`: [rows, hidden], laid out as `rows` says; `mask`: additive, [batch, seq] (read for
    /// padded rows). Returns [rows, hidden].
    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        rows: &TokenRows,
        mask: &Tensor,
        rng: Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let (q, k, v) = (self.query.forward(xs)?, self.key.forward(xs)?, self.value.forward(xs)?);
        if cpu::enabled(xs) {
            let heads = self.num_heads;
            let dropout = self.dropout.draw(&rows.layouts(|len| MaskLayout::Scores { heads, len }), rng)?;
            let mask = matches!(rows, TokenRows::Padded { .. }).then_some(mask);
            return cpu::attention((&q, &k, &v), rows.sequences(), heads, mask, scale, dropout);
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

/// Dense + dropout + residual LayerNorm after attention (`attention.output`) or after the
/// feed-forward block (`output`); the two differ only in the input width.
// https://github.com/huggingface/transformers/blob/8ec58104181bfb34d824d89bccc009b4f6be6e0e/src/transformers/models/bert/modeling_bert.py (BertSelfOutput, BertOutput)
#[derive(Debug, Clone)]
pub struct BertResidualOutput {
    dense: Linear,
    layer_norm: LayerNorm,
    dropout: Dropout,
}

impl BertResidualOutput {
    pub(crate) fn load(pb: &ParamBuilder, cfg: &BertConfig, in_dim: usize) -> Result<Self> {
        Ok(Self {
            dense: Linear::load(&pb.pp("dense"), in_dim, cfg.hidden_size)?,
            layer_norm: LayerNorm::load(&pb.pp("LayerNorm"), cfg.hidden_size, cfg.layer_norm_eps)?,
            dropout: Dropout::new(cfg.hidden_dropout_prob),
        })
    }

    fn detached(&self) -> Self {
        Self { dense: self.dense.detached(), layer_norm: self.layer_norm.detached(), dropout: self.dropout }
    }

    /// `xs`: [rows, in], `residual`: [rows, hidden], laid out as `rows` says.
    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        residual: &Tensor,
        rows: &TokenRows,
        rng: Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        let ys = self.dense.forward(xs)?;
        let width = ys.dim(1)?;
        if cpu::enabled(&ys) {
            let dropout = self.dropout.draw(&rows.layouts(|len| MaskLayout::Tokens { len, width }), rng)?;
            return self.layer_norm.forward_residual(&ys, residual, dropout);
        }
        let &TokenRows::Padded { seq, .. } = rows else {
            bail!("packed token rows run on the CPU kernels only");
        };
        // Composed (GPU): the mask is drawn where the activations are.
        let ys = self.dropout.forward(&ys, MaskLayout::Tokens { len: seq, width }, rng)?;
        self.layer_norm.forward(&(ys + residual)?)
    }
}

/// One encoder layer: self-attention with its output block, then dense + exact GELU and the output block.
// https://github.com/huggingface/transformers/blob/8ec58104181bfb34d824d89bccc009b4f6be6e0e/src/transformers/models/bert/modeling_bert.py (BertLayer, BertAttention, BertIntermediate)
#[derive(Debug, Clone)]
pub struct BertLayer {
    attention: BertSelfAttention,
    attention_output: BertResidualOutput,
    intermediate: Linear,
    output: BertResidualOutput,
}

impl BertLayer {
    pub(crate) fn load(pb: &ParamBuilder, cfg: &BertConfig) -> Result<Self> {
        let attn = pb.pp("attention");
        Ok(Self {
            attention: BertSelfAttention::load(&attn.pp("self"), cfg)?,
            attention_output: BertResidualOutput::load(&attn.pp("output"), cfg, cfg.hidden_size)?,
            intermediate: Linear::load(&pb.pp("intermediate").pp("dense"), cfg.hidden_size, cfg.intermediate_size)?,
            output: BertResidualOutput::load(&pb.pp("output"), cfg, cfg.intermediate_size)?,
        })
    }

    fn detached(&self) -> Self {
        Self {
            attention: self.attention.detached(),
            attention_output: self.attention_output.detached(),
            intermediate: self.intermediate.detached(),
            output: self.output.detached(),
        }
    }

    /// `xs`: [rows, hidden], laid out as `rows` says; `mask`: additive, [batch, seq].
    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        rows: &TokenRows,
        mask: &Tensor,
        mut rng: Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        let attended = self.attention.forward(xs, rows, mask, rng.as_deref_mut())?;
        let attended = self.attention_output.forward(&attended, xs, rows, rng.as_deref_mut())?;
        // transformers' "gelu" is the exact erf form.
        let inner = gelu_erf(&self.intermediate.forward(&attended)?)?;
        self.output.forward(&inner, &attended, rows, rng)
    }
}

/// tanh(dense(hidden state of the first token)).
// https://github.com/huggingface/transformers/blob/8ec58104181bfb34d824d89bccc009b4f6be6e0e/src/transformers/models/bert/modeling_bert.py (BertPooler)
#[derive(Debug, Clone)]
pub struct BertPooler {
    dense: Linear,
}

impl BertPooler {
    pub(crate) fn load(pb: &ParamBuilder, cfg: &BertConfig) -> Result<Self> {
        Ok(Self { dense: Linear::load(&pb.pp("dense"), cfg.hidden_size, cfg.hidden_size)? })
    }

    fn detached(&self) -> Self {
        Self { dense: self.dense.detached() }
    }

    /// `first`: each sequence's first hidden state, [batch, hidden]. Returns [batch, hidden].
    pub fn forward(&self, first: &Tensor) -> Result<Tensor> {
        Ok(self.dense.forward(first)?.tanh()?)
    }
}

/// What [`BertModel::forward`] returns.
#[derive(Debug, Clone)]
pub struct BertOutput {
    /// Last hidden states, [batch, seq, hidden]. On the CPU, where the encoder skips padding,
    /// padding positions hold zeros.
    pub sequence_output: Tensor,
    /// Pooler output, [batch, hidden].
    pub pooled_output: Tensor,
}

/// The BERT encoder with its pooler (`bert.*` in a classification checkpoint).
// https://github.com/huggingface/transformers/blob/8ec58104181bfb34d824d89bccc009b4f6be6e0e/src/transformers/models/bert/modeling_bert.py (BertModel)
#[derive(Debug, Clone)]
pub struct BertModel {
    embeddings: BertEmbeddings,
    layers: Vec<BertLayer>,
    pooler: BertPooler,
    max_positions: usize,
}

impl BertModel {
    pub(crate) fn load(pb: &ParamBuilder, cfg: &BertConfig) -> Result<Self> {
        let encoder = pb.pp("encoder");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| BertLayer::load(&encoder.pp(format!("layer.{i}")), cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings: BertEmbeddings::load(&pb.pp("embeddings"), cfg)?,
            layers,
            pooler: BertPooler::load(&pb.pp("pooler"), cfg)?,
            max_positions: cfg.max_position_embeddings,
        })
    }

    /// The same model reading the same weights, outside the autograd graph: evaluation builds no
    /// graph and frees each activation as soon as the next layer has read it.
    pub(crate) fn detached(&self) -> Self {
        Self {
            embeddings: self.embeddings.detached(),
            layers: self.layers.iter().map(BertLayer::detached).collect(),
            pooler: self.pooler.detached(),
            max_positions: self.max_positions,
        }
    }

    /// `input_ids`, `token_type_ids`, `attention_mask`: [batch, seq] integers (mask 1 = attend, 0 = padding).
    /// Dropout is applied when `rng` is given (training) and skipped otherwise (evaluation).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        rng: Option<&mut DropoutRng>,
    ) -> Result<BertOutput> {
        let (xs, rows) = self.encode(input_ids, token_type_ids, attention_mask, rng)?;
        let sequence_output = match &rows {
            TokenRows::Packed(packing) => packing.unpack(&xs)?,
            &TokenRows::Padded { batch, seq } => xs.reshape((batch, seq, ()))?,
        };
        let pooled_output = self.pool(&xs, &rows)?;
        Ok(BertOutput { sequence_output, pooled_output })
    }

    /// The pooler output alone, [batch, hidden]: [`BertModel::forward`]'s `pooled_output` without
    /// laying the last hidden states out again.
    pub fn pooled(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        rng: Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        let (xs, rows) = self.encode(input_ids, token_type_ids, attention_mask, rng)?;
        self.pool(&xs, &rows)
    }

    /// Embeddings and encoder layers: the last hidden states as [rows, hidden], and how their
    /// rows are laid out.
    fn encode(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        mut rng: Option<&mut DropoutRng>,
    ) -> Result<(Tensor, TokenRows)> {
        let (b, l) = input_ids.dims2()?;
        if token_type_ids.dims() != [b, l] || attention_mask.dims() != [b, l] {
            bail!(
                "input_ids {:?}, token_type_ids {:?} and attention_mask {:?} must have the same [batch, seq] shape",
                input_ids.dims(),
                token_type_ids.dims(),
                attention_mask.dims()
            );
        }
        if l > self.max_positions {
            bail!("sequence length {l} exceeds max_position_embeddings {}", self.max_positions);
        }
        let mask = additive_mask(attention_mask)?;
        let mut xs = self.embeddings.forward(input_ids, token_type_ids, rng.as_deref_mut())?;
        // On the CPU the encoder runs on the real tokens only (see `packing`).
        let rows = match cpu::enabled(&xs) {
            true => TokenRows::of(attention_mask)?,
            false => TokenRows::Padded { batch: b, seq: l },
        };
        if let TokenRows::Packed(packing) = &rows {
            xs = xs.index_select(&packing.real_rows(xs.device())?, 0)?;
        }
        for layer in &self.layers {
            xs = layer.forward(&xs, &rows, &mask, rng.as_deref_mut())?;
        }
        Ok((xs, rows))
    }

    /// The pooler on each sequence's first hidden state.
    fn pool(&self, xs: &Tensor, rows: &TokenRows) -> Result<Tensor> {
        let first = match rows {
            TokenRows::Packed(packing) => xs.index_select(&packing.first_rows(xs.device())?, 0)?,
            &TokenRows::Padded { batch, seq } => {
                let first = xs.reshape((batch, seq, ()))?.narrow(1, 0, 1)?.squeeze(1)?;
                match first.device().is_cpu() {
                    true => first,
                    // candle's CUDA matmul takes no row stride but the row's length: the first
                    // token of each row is copied out (the CPU's kernels read it in place).
                    false => first.contiguous()?,
                }
            }
        };
        self.pooler.forward(&first)
    }
}

/// [batch, seq] 0/1 mask to the additive mask transformers adds to attention scores (broadcast
/// over heads and queries): `(1 - mask) * finfo(float32).min`, so padded keys get zero probability.
fn additive_mask(attention_mask: &Tensor) -> Result<Tensor> {
    let min = f64::from(f32::MIN);
    // mask * (-min) + min: exactly 0 where mask is 1 and `min` where it is 0.
    Ok(attention_mask.to_dtype(DType::F32)?.affine(-min, min)?)
}
