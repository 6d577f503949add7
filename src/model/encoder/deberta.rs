//! DeBERTa-v2/v3's encoder: BERT's post-norm layers with disentangled attention, which adds to
//! each content score q·k the content-to-position (c2p) and position-to-content (p2c) terms of the
//! pair's relative position, bucketed logarithmically beyond `position_buckets / 2` and read from
//! one table of relative embeddings shared by every layer (LayerNorm-ed where `norm_rel_ebd` says,
//! projected by each layer's own query and key projections where `share_att_key` says).
//!
//! Attention is composed from candle's ops on every device (the products in f32 on the CPU); the
//! dense layers and LayerNorms run on the fused CPU kernels. The encoder keeps the padded layout:
//! padding rows are computed and masked, as transformers does: a padding query sees no key (its
//! row of probabilities is uniform), so that under left padding the first position reads what
//! transformers' reads.

use candle_core::{DType, Tensor};

use super::super::builder::{Init, ParamBuilder};
use super::super::config::DebertaV2Config;
use super::super::dropout::{Dropout, DropoutRng, MaskLayout};
use super::super::layers::{attention_probs, Activation, LayerNorm, Linear};
use super::super::packing::TokenRows;
use super::residual::ResidualOutput;
use super::word_rows;
use crate::kernels::cpu::{self, Positions};
use crate::kernels::precision;
use crate::{bail, Result};

/// Word (+ absolute position) (+ token type) embeddings, the projection where they are narrower
/// than the encoder, LayerNorm, zeroed padding rows and dropout.
// https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/deberta_v2/modeling_deberta_v2.py (DebertaV2Embeddings)
#[derive(Debug, Clone)]
struct Embeddings {
    words: Tensor,
    positions: Option<Tensor>,
    types: Option<Tensor>,
    project: Option<Linear>,
    layer_norm: LayerNorm,
    dropout: Dropout,
    pad: Option<u32>,
}

impl Embeddings {
    fn load(pb: &ParamBuilder, c: &DebertaV2Config) -> Result<Self> {
        let e = c.embedding_width();
        let table =
            |name: &str, rows: usize| pb.pp(name).get((rows, e), "weight", Init::Embedding { padding_idx: None });
        let positions = match c.position_biased_input {
            true => Some(table("position_embeddings", c.max_position_embeddings)?),
            false => None,
        };
        let types = match c.type_vocab_size {
            0 => None,
            n => Some(table("token_type_embeddings", n)?),
        };
        let project = match e != c.hidden_size {
            true => Some(Linear::load_with(&pb.pp("embed_proj"), e, c.hidden_size, false)?),
            false => None,
        };
        let padding_idx = c.pad_token_id;
        Ok(Self {
            words: pb.pp("word_embeddings").get((c.vocab_size, e), "weight", Init::Embedding { padding_idx })?,
            positions,
            types,
            project,
            layer_norm: LayerNorm::load(&pb.pp("LayerNorm"), c.hidden_size, c.layer_norm_eps)?,
            dropout: Dropout::new(c.hidden_dropout_prob),
            pad: c.pad_token_id,
        })
    }

    fn detached(&self) -> Self {
        Self {
            words: self.words.detach(),
            positions: self.positions.as_ref().map(Tensor::detach),
            types: self.types.as_ref().map(Tensor::detach),
            project: self.project.as_ref().map(Linear::detached),
            layer_norm: self.layer_norm.detached(),
            ..self.clone()
        }
    }

    /// [batch * seq, hidden] for `input_ids`, `token_type_ids` and `attention_mask` [batch, seq].
    fn forward(&self, ids: &Tensor, types: &Tensor, mask: &Tensor, rng: Option<&mut DropoutRng>) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let xs = if cpu::enabled(&self.words) {
            let tables = (&self.words, self.types.as_ref(), self.positions.as_ref());
            cpu::embedding_sum(tables, ids, types, self.pad, &Positions::Sequential)?
        } else {
            self.composed_sum(ids, types)?
        };
        let xs = match &self.project {
            Some(project) => project.forward(&xs)?,
            None => xs,
        };
        let xs = self.layer_norm.forward(&xs)?;
        let xs = xs.broadcast_mul(&mask.to_dtype(DType::F32)?.reshape((b * l, 1))?)?;
        let width = xs.dim(1)?;
        self.dropout.forward(&xs, MaskLayout::Tokens { len: l, width }, rng)
    }

    /// The embedding sum from candle's ops (any device): the CPU kernel's reference.
    fn composed_sum(&self, ids: &Tensor, types: &Tensor) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let e = self.words.dim(1)?;
        let mut xs = word_rows(&self.words, ids, self.pad)?;
        if let Some(positions) = &self.positions {
            xs = xs.reshape((b, l, e))?.broadcast_add(&positions.narrow(0, 0, l)?)?.reshape((b * l, e))?;
        }
        if let Some(table) = &self.types {
            xs = (xs + table.index_select(&types.flatten_all()?.to_dtype(DType::U32)?, 0)?)?;
        }
        Ok(xs)
    }
}

/// The relative embeddings every layer reads, and how relative positions map to their rows.
#[derive(Debug, Clone)]
struct Relative {
    /// `encoder.rel_embeddings.weight`: [2 span, hidden].
    table: Tensor,
    norm: Option<LayerNorm>,
    /// Rows on each side of zero (`pos_ebd_size`): the buckets, or the largest relative position.
    span: usize,
    /// `position_buckets` (0: exact positions) and `max_relative_positions`.
    buckets: usize,
    max_relative: usize,
}

impl Relative {
    /// The table, LayerNorm-ed where the config asks.
    fn embeddings(&self) -> Result<Tensor> {
        match &self.norm {
            Some(norm) => norm.forward(&self.table),
            None => Ok(self.table.clone()),
        }
    }

    /// The relative position of query `q` to key `k`, bucketed as transformers'
    /// `make_log_bucket_position` computes it (in f32, as torch does, so the buckets agree).
    fn position(&self, q: usize, k: usize) -> i64 {
        let rel = q as i64 - k as i64;
        if self.buckets == 0 {
            return rel;
        }
        let mid = (self.buckets / 2) as i64;
        let abs = if rel < mid && rel > -mid { mid - 1 } else { rel.abs() };
        if abs <= mid {
            return rel;
        }
        let ratio = (abs as f32 / mid as f32).ln() / ((self.max_relative - 1) as f32 / mid as f32).ln();
        let log_pos = (ratio * (mid - 1) as f32).ceil() + mid as f32;
        log_pos as i64 * rel.signum()
    }

    /// For a sequence of `len`, the flat indices that gather the c2p and p2c terms in [query, key]
    /// order from products laid out [row, 2 span] (row-major, `len` rows): c2p reads query q's row
    /// at `clamp(rel(q, k) + span)`, p2c key k's row at `clamp(-rel(k, q) + span)`.
    fn gather_indices(&self, len: usize) -> (Vec<u32>, Vec<u32>) {
        let width = 2 * self.span;
        let clamp = |p: i64| p.clamp(0, width as i64 - 1) as usize;
        let (mut c2p, mut p2c) = (Vec::with_capacity(len * len), Vec::with_capacity(len * len));
        for q in 0..len {
            for k in 0..len {
                c2p.push((q * width + clamp(self.position(q, k) + self.span as i64)) as u32);
                p2c.push((k * width + clamp(-self.position(k, q) + self.span as i64)) as u32);
            }
        }
        (c2p, p2c)
    }
}

/// Disentangled self-attention.
// https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/deberta_v2/modeling_deberta_v2.py (DisentangledSelfAttention)
#[derive(Debug, Clone)]
struct Attention {
    query: Linear,
    key: Linear,
    value: Linear,
    /// The relative terms' own projections, where the content ones are not shared.
    pos_key: Option<Linear>,
    pos_query: Option<Linear>,
    relative: bool,
    c2p: bool,
    p2c: bool,
    heads: usize,
    head_dim: usize,
    /// sqrt(head_dim x (1 + the number of relative terms)).
    scale: f64,
    dropout: Dropout,
    pos_dropout: Dropout,
}

impl Attention {
    fn load(pb: &ParamBuilder, c: &DebertaV2Config) -> Result<Self> {
        let h = c.hidden_size;
        let separate = c.relative_attention && !c.share_att_key;
        let terms = usize::from(c.c2p()) + usize::from(c.p2c());
        let head_dim = h / c.num_attention_heads;
        Ok(Self {
            query: Linear::load(&pb.pp("query_proj"), h, h)?,
            key: Linear::load(&pb.pp("key_proj"), h, h)?,
            value: Linear::load(&pb.pp("value_proj"), h, h)?,
            pos_key: (separate && c.c2p()).then(|| Linear::load(&pb.pp("pos_key_proj"), h, h)).transpose()?,
            pos_query: (separate && c.p2c()).then(|| Linear::load(&pb.pp("pos_query_proj"), h, h)).transpose()?,
            relative: c.relative_attention,
            c2p: c.c2p(),
            p2c: c.p2c(),
            heads: c.num_attention_heads,
            head_dim,
            // In f32, as torch computes it.
            scale: f64::from((head_dim as f32 * (1 + terms) as f32).sqrt()),
            dropout: Dropout::new(c.attention_probs_dropout_prob),
            pos_dropout: Dropout::new(c.hidden_dropout_prob),
        })
    }

    fn detached(&self) -> Self {
        Self {
            query: self.query.detached(),
            key: self.key.detached(),
            value: self.value.detached(),
            pos_key: self.pos_key.as_ref().map(Linear::detached),
            pos_query: self.pos_query.as_ref().map(Linear::detached),
            ..self.clone()
        }
    }

    /// `xs`: [batch * seq, hidden] (padded rows); `mask`: additive [batch, 1, seq, seq] (a query
    /// sees a key where both are tokens), with `none` a zero [batch, seq]; `rel`: the
    /// relative embeddings and the gather indices of this length. Returns [batch * seq, hidden].
    fn forward(
        &self,
        xs: &Tensor,
        (b, l): (usize, usize),
        (mask, none): (&Tensor, &Tensor),
        rel: Option<(&Tensor, &(Tensor, Tensor))>,
        mut rng: Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        let (heads, d) = (self.heads, self.head_dim);
        let split = |t: Tensor| -> Result<Tensor> { Ok(t.reshape((b, l, heads, d))?.transpose(1, 2)?.contiguous()?) };
        let (q, k, v) =
            (split(self.query.forward(xs)?)?, split(self.key.forward(xs)?)?, split(self.value.forward(xs)?)?);
        let mut scores = product(&q, &(k.t()? / self.scale)?)?;
        if let (true, Some((embeddings, (c2p_index, p2c_index)))) = (self.relative, rel) {
            // Each layer drops out its own copy of the shared table, the same rows on every rank.
            let width = embeddings.dim(1)?;
            let table =
                self.pos_dropout.forward_shared(embeddings, MaskLayout::Pooled { width }, rng.as_deref_mut())?;
            let rows = table.dim(0)?;
            // [2 span, hidden] -> [heads, 2 span, d], read by every batch row.
            let per_head =
                |t: Tensor| -> Result<Tensor> { Ok(t.reshape((rows, heads, d))?.transpose(0, 1)?.contiguous()?) };
            let mut bias: Option<Tensor> = None;
            if self.c2p {
                let pos_key = per_head(self.pos_key.as_ref().unwrap_or(&self.key).forward(&table)?)?;
                let c2p = (gathered(&by_head(&q, &pos_key)?, c2p_index, (b, heads, l))? / self.scale)?;
                bias = Some(c2p);
            }
            if self.p2c {
                let pos_query = per_head(self.pos_query.as_ref().unwrap_or(&self.query).forward(&table)?)?;
                let p2c = (gathered(&by_head(&k, &pos_query)?, p2c_index, (b, heads, l))? / self.scale)?;
                bias = Some(match bias {
                    Some(c2p) => (c2p + p2c)?,
                    None => p2c,
                });
            }
            if let Some(bias) = bias {
                scores = (scores + bias)?;
            }
        }
        let probs = attention_probs(&scores.broadcast_add(mask)?, none, 1.0)?;
        let probs = self.dropout.forward(&probs, MaskLayout::Scores { heads, len: l }, rng)?;
        let context = product(&probs, &v)?;
        Ok(context.transpose(1, 2)?.reshape((b * l, heads * d))?)
    }
}

/// `xs` [batch, heads, len, d] times each head's `table` [heads, 2 span, d] transposed:
/// [batch, heads, len, 2 span], as one product per head over every batch row.
fn by_head(xs: &Tensor, table: &Tensor) -> Result<Tensor> {
    let (b, heads, l, d) = xs.dims4()?;
    let rows = xs.transpose(0, 1)?.contiguous()?.reshape((heads, b * l, d))?;
    let out = product(&rows, &table.t()?)?;
    Ok(out.reshape((heads, b, l, table.dim(1)?))?.transpose(0, 1)?)
}

/// `terms` [batch, heads, len, 2 span] read at `index` (len x len flat positions into each
/// [len, 2 span] matrix): [batch, heads, len, len].
fn gathered(terms: &Tensor, index: &Tensor, (b, heads, l): (usize, usize, usize)) -> Result<Tensor> {
    let rows = terms.dim(3)?;
    Ok(terms.contiguous()?.reshape((b * heads, l * rows))?.index_select(index, 1)?.reshape((b, heads, l, l))?)
}

/// Attention's batched products: bf16 through cuBLAS on a GPU under autocast; f32 on the CPU, where
/// candle has no fast bf16 product (the linear layers' products take the bf16 library there).
fn product(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match a.device().is_cpu() {
        true => Ok(a.matmul(b)?),
        false => precision::product(a, b),
    }
}

/// One layer: disentangled attention with its output block, then dense + activation and the output block.
// https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/deberta_v2/modeling_deberta_v2.py (DebertaV2Layer)
#[derive(Debug, Clone)]
struct Layer {
    attention: Attention,
    attention_output: ResidualOutput,
    intermediate: Linear,
    activation: Activation,
    output: ResidualOutput,
}

impl Layer {
    fn load(pb: &ParamBuilder, c: &DebertaV2Config) -> Result<Self> {
        let (h, i, eps, p) = (c.hidden_size, c.intermediate_size, c.layer_norm_eps, c.hidden_dropout_prob);
        let (attention, output) = (pb.pp("attention"), pb.pp("output"));
        let attention_out = attention.pp("output");
        Ok(Self {
            attention: Attention::load(&attention.pp("self"), c)?,
            attention_output: ResidualOutput::load(
                (&attention_out.pp("dense"), &attention_out.pp("LayerNorm")),
                h,
                h,
                eps,
                p,
            )?,
            intermediate: Linear::load(&pb.pp("intermediate").pp("dense"), h, i)?,
            activation: Activation::parse("hidden_act", &c.hidden_act)?,
            output: ResidualOutput::load((&output.pp("dense"), &output.pp("LayerNorm")), i, h, eps, p)?,
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
}

/// DeBERTa-v2's encoder (`deberta.*`): embeddings, layers and the relative embeddings they share.
// https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/deberta_v2/modeling_deberta_v2.py (DebertaV2Model, DebertaV2Encoder)
#[derive(Debug, Clone)]
pub(crate) struct DebertaEncoder {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    relative: Option<Relative>,
    max_sequence: usize,
}

impl DebertaEncoder {
    pub(crate) fn load(pb: &ParamBuilder, c: &DebertaV2Config) -> Result<Self> {
        let encoder = pb.pp("encoder");
        let layers = (0..c.num_hidden_layers)
            .map(|i| Layer::load(&encoder.pp(format!("layer.{i}")), c))
            .collect::<Result<Vec<_>>>()?;
        let relative = match c.relative_attention {
            true => {
                let span = c.rel_positions();
                let table = encoder.pp("rel_embeddings").get(
                    (2 * span, c.hidden_size),
                    "weight",
                    Init::Embedding { padding_idx: None },
                )?;
                let norm = match c.norm_rel_embeddings() {
                    true => Some(LayerNorm::load(&encoder.pp("LayerNorm"), c.hidden_size, c.layer_norm_eps)?),
                    false => None,
                };
                let buckets = usize::try_from(c.position_buckets).unwrap_or(0);
                Some(Relative { table, norm, span, buckets, max_relative: c.max_relative() })
            }
            false => None,
        };
        Ok(Self {
            embeddings: Embeddings::load(&pb.pp("embeddings"), c)?,
            layers,
            relative,
            // Relative positions take any length; an absolute table only its own.
            max_sequence: if c.position_biased_input { c.max_position_embeddings } else { usize::MAX },
        })
    }

    pub(crate) fn detached(&self) -> Self {
        Self {
            embeddings: self.embeddings.detached(),
            layers: self.layers.iter().map(Layer::detached).collect(),
            relative: self.relative.as_ref().map(|r| Relative {
                table: r.table.detach(),
                norm: r.norm.as_ref().map(LayerNorm::detached),
                ..r.clone()
            }),
            max_sequence: self.max_sequence,
        }
    }

    /// The last hidden states as [batch * seq, hidden], padded rows included.
    pub(crate) fn encode(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        mut rng: Option<&mut DropoutRng>,
    ) -> Result<(Tensor, TokenRows)> {
        let (b, l) = input_ids.dims2()?;
        if l > self.max_sequence {
            bail!("sequence length {l} exceeds the model's {} positions", self.max_sequence);
        }
        let rows = TokenRows::Padded { batch: b, seq: l };
        // transformers' `mask[q] * mask[k]`, as an additive mask: the smallest float where either
        // is padding (added to a score, it stays that float: as masked_fill's replacement).
        let keys = attention_mask.to_dtype(DType::F32)?;
        let pairs = keys.unsqueeze(2)?.broadcast_mul(&keys.unsqueeze(1)?)?.unsqueeze(1)?;
        let min = f64::from(f32::MIN);
        let masks = (pairs.affine(-min, min)?, Tensor::zeros((b, l), DType::F32, keys.device())?);
        let mut xs = self.embeddings.forward(input_ids, token_type_ids, attention_mask, rng.as_deref_mut())?;
        let relative = match &self.relative {
            Some(r) => {
                let (c2p, p2c) = r.gather_indices(l);
                let device = xs.device();
                let indices = (Tensor::from_vec(c2p, l * l, device)?, Tensor::from_vec(p2c, l * l, device)?);
                Some((r.embeddings()?, indices))
            }
            None => None,
        };
        for layer in &self.layers {
            let rel = relative.as_ref().map(|(embeddings, indices)| (embeddings, indices));
            let attended = layer.attention.forward(&xs, (b, l), (&masks.0, &masks.1), rel, rng.as_deref_mut())?;
            let attended = layer.attention_output.forward(&attended, &xs, &rows, rng.as_deref_mut())?;
            let inner = layer.activation.forward(&layer.intermediate.forward(&attended)?)?;
            xs = layer.output.forward(&inner, &attended, &rows, rng.as_deref_mut())?;
        }
        Ok((xs, rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Checked against transformers' `make_log_bucket_position` over relative positions -600..=600:
    /// the sum of |bucket| and the largest bucket (any bucket off by one changes the sum).
    #[test]
    fn log_buckets_equal_transformers() {
        for (buckets, max_relative, abs_sum, largest) in
            [(256, 512, 221436, 270), (32, 512, 33344, 32), (64, 128, 91590, 98)]
        {
            let r = Relative {
                table: Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
                norm: None,
                span: buckets,
                buckets,
                max_relative,
            };
            let positions: Vec<i64> = (-600i64..=600)
                .map(|rel| if rel >= 0 { r.position(rel as usize, 0) } else { r.position(0, (-rel) as usize) })
                .collect();
            assert_eq!(
                positions.iter().map(|p| p.abs()).sum::<i64>(),
                abs_sum,
                "buckets {buckets}, max {max_relative}"
            );
            assert_eq!(positions.iter().copied().max(), Some(largest));
            assert!(positions.iter().zip(positions.iter().rev()).all(|(a, b)| *a == -b), "odd in the offset");
        }
    }
}
