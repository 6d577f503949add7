//! ModernBERT's encoder: pre-norm layers without biases (where the config says so), rotary position
//! embeddings with one base for global layers and another for local ones, attention that
//! alternates between the whole sequence and a sliding window, a gated GELU feed-forward block, and
//! a final LayerNorm.
//!
//! On the CPU the encoder runs on the real tokens only, as BERT's does (see `packing`), with the
//! fused attention kernel (its sliding window for local layers) and the rotary angles of each
//! row's position. Elsewhere, and as that path's reference, it is composed from candle's ops on the
//! padded layout, padding masked as transformers masks it.

use candle_core::{DType, Device, Tensor};

use super::super::builder::{Init, ParamBuilder};
use super::super::config::ModernBertConfig;
use super::super::dropout::{Dropout, DropoutRng, MaskLayout};
use super::super::layers::{attention_probs, Activation, LayerNorm, Linear};
use super::super::packing::TokenRows;
use super::word_rows;
use crate::kernels::cpu::{self, Positions};
use crate::kernels::precision;
use crate::{bail, Result};

/// How fresh weights are drawn, as transformers' `_init_weights` for ModernBERT: truncated normals
/// of `initializer_range` for inputs, scaled by 1 / sqrt(2 layers) for outputs into the residual.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Inits {
    pub input: Init,
    pub output: Init,
}

impl Inits {
    pub(crate) fn of(c: &ModernBertConfig) -> Self {
        let std = c.initializer_range;
        let cutoff = c.initializer_cutoff_factor;
        Self {
            input: Init::TruncNormal { std, cutoff },
            output: Init::TruncNormal { std: std / (2.0 * c.num_hidden_layers as f64).sqrt(), cutoff },
        }
    }
}

/// cos and sin of each position's rotary angles, [len, head_dim], for one base.
fn rotary(theta: f64, head_dim: usize, len: usize) -> (Vec<f32>, Vec<f32>) {
    // In f32, as transformers computes them: base ** (2i / d), then 1 / that, then position x it.
    let inv_freq: Vec<f32> =
        (0..head_dim / 2).map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32)).collect();
    let (mut cos, mut sin) = (Vec::with_capacity(len * head_dim), Vec::with_capacity(len * head_dim));
    for p in 0..len {
        for _half in 0..2 {
            for f in &inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
    }
    (cos, sin)
}

/// `xs` rotated by the angles in `cos`, `sin` (broadcast against it) over its last dimension, one
/// head's width: `xs * cos + rotate_half(xs) * sin`, where `rotate_half` swaps the halves and
/// negates the first.
fn apply_rotary(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let last = xs.rank() - 1;
    let d = xs.dim(last)?;
    let (first, second) = (xs.narrow(last, 0, d / 2)?, xs.narrow(last, d / 2, d / 2)?);
    let rotated = Tensor::cat(&[&second.neg()?, &first], last)?;
    Ok((xs.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

/// The rotary angles of each row of `rows`, [rows, 1, d], from the [len, d] tables of one base.
fn rotary_rows(
    (cos, sin): &(Vec<f32>, Vec<f32>),
    rows: &TokenRows,
    d: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let positions: Vec<usize> = match rows {
        &TokenRows::Padded { batch, seq } => (0..batch * seq).map(|r| r % seq).collect(),
        TokenRows::Packed(packing) => packing.ranges().flat_map(|r| 0..r.len()).collect(),
    };
    let gather = |table: &[f32]| -> Result<Tensor> {
        let values: Vec<f32> = positions.iter().flat_map(|&p| table[p * d..][..d].iter().copied()).collect();
        Ok(Tensor::from_vec(values, (positions.len(), 1, d), device)?)
    };
    Ok((gather(cos)?, gather(sin)?))
}

/// Self-attention over the whole sequence or a window, with rotary positions.
// https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/modernbert/modeling_modernbert.py (ModernBertAttention)
#[derive(Debug, Clone)]
struct Attention {
    qkv: Linear,
    out: Linear,
    heads: usize,
    head_dim: usize,
    global: bool,
    dropout: Dropout,
}

impl Attention {
    fn forward(&self, xs: &Tensor, ctx: &Context, mut rng: Option<&mut DropoutRng>) -> Result<Tensor> {
        let qkv = self.qkv.forward(xs)?;
        let context = match ctx.fused {
            true => self.fused(&qkv, ctx, rng.as_deref_mut())?,
            false => self.composed(&qkv, ctx, rng.as_deref_mut())?,
        };
        ctx.rows.drop_tokens(&self.dropout, &self.out.forward(&context)?, rng)
    }

    /// The CPU kernel on [rows, hidden] projections, heads side by side in the columns.
    fn fused(&self, qkv: &Tensor, ctx: &Context, rng: Option<&mut DropoutRng>) -> Result<Tensor> {
        let (heads, d) = (self.heads, self.head_dim);
        let (h, rows) = (heads * d, qkv.dim(0)?);
        let (cos, sin) = if self.global { &ctx.global_rotary } else { &ctx.local_rotary };
        let rotate = |t: Tensor| -> Result<Tensor> {
            Ok(apply_rotary(&t.reshape((rows, heads, d))?, cos, sin)?.reshape((rows, h))?)
        };
        let (q, k) = (rotate(qkv.narrow(1, 0, h)?.contiguous()?)?, rotate(qkv.narrow(1, h, h)?.contiguous()?)?);
        let v = qkv.narrow(1, 2 * h, h)?.contiguous()?;
        let dropout = self.dropout.draw(&ctx.rows.layouts(|len| MaskLayout::Scores { heads, len }), rng)?;
        let mask = matches!(ctx.rows, TokenRows::Padded { .. }).then_some(&ctx.padding);
        let window = (!self.global && ctx.longest > ctx.radius + 1).then_some(ctx.radius);
        cpu::attention((&q, &k, &v), ctx.rows.sequences(), heads, mask, (d as f64).powf(-0.5), dropout, window)
    }

    /// Candle's ops on the padded [batch, heads, len, d] layout (any device).
    fn composed(&self, qkv: &Tensor, ctx: &Context, rng: Option<&mut DropoutRng>) -> Result<Tensor> {
        let (heads, d) = (self.heads, self.head_dim);
        let &TokenRows::Padded { batch: b, seq: l } = &ctx.rows else {
            bail!("packed token rows run on the CPU kernels only");
        };
        // [b, l, 3, heads, d] -> q, k, v as [b, heads, l, d].
        let qkv = qkv.reshape((b, l, 3, heads, d))?;
        let part = |i: usize| -> Result<Tensor> { Ok(qkv.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2)?.contiguous()?) };
        let (cos, sin) = if self.global { &ctx.global_rotary } else { &ctx.local_rotary };
        let (q, k, v) = (apply_rotary(&part(0)?, cos, sin)?, apply_rotary(&part(1)?, cos, sin)?, part(2)?);
        let scores = product(&q, &k.t()?)?;
        let scale = (d as f64).powf(-0.5);
        let probs = match (self.global, &ctx.window) {
            (false, Some(window)) => attention_probs(&(scores * scale)?.broadcast_add(window)?, &ctx.none, 1.0)?,
            _ => attention_probs(&scores, &ctx.padding, scale)?,
        };
        let probs = self.dropout.forward(&probs, MaskLayout::Scores { heads, len: l }, rng)?;
        Ok(product(&probs, &v)?.transpose(1, 2)?.reshape((b * l, heads * d))?)
    }
}

/// What every layer of a forward pass reads: how the rows are laid out, and in that layout the
/// rotary angles of global and of local layers, and the masks.
struct Context {
    rows: TokenRows,
    /// The CPU kernels' path (rows possibly packed) rather than the composed one.
    fused: bool,
    /// cos and sin of each row ([rows, 1, d]) on the fused path, of each position ([len, d]) on
    /// the composed one.
    global_rotary: (Tensor, Tensor),
    local_rotary: (Tensor, Tensor),
    /// The padding mask, additive, [batch, len].
    padding: Tensor,
    /// Composed only: a zero mask [batch, len], for scores that already hold theirs, and where
    /// local layers see less than the whole sequence, the window's mask ([batch, 1, len, len]).
    none: Tensor,
    window: Option<Tensor>,
    /// The local window's radius, and the longest sequence of the batch.
    radius: usize,
    longest: usize,
}

/// Attention's batched products: bf16 through cuBLAS on a GPU under autocast; f32 on the CPU, where
/// candle has no fast bf16 product (the linear layers' products take the bf16 library there).
fn product(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match a.device().is_cpu() {
        true => Ok(a.matmul(b)?),
        false => precision::product(a, b),
    }
}

/// The gated feed-forward block: `Wo(dropout(act(input) * gate))` with `input, gate = Wi(x)`.
// https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/modernbert/modeling_modernbert.py (ModernBertMLP)
#[derive(Debug, Clone)]
struct Mlp {
    wi: Linear,
    wo: Linear,
    activation: Activation,
    dropout: Dropout,
}

impl Mlp {
    fn forward(&self, xs: &Tensor, rows: &TokenRows, rng: Option<&mut DropoutRng>) -> Result<Tensor> {
        let both = self.wi.forward(xs)?;
        let i = both.dim(1)? / 2;
        let (input, gate) = (both.narrow(1, 0, i)?.contiguous()?, both.narrow(1, i, i)?);
        let gated = (self.activation.forward(&input)? * gate)?;
        self.wo.forward(&rows.drop_tokens(&self.dropout, &gated, rng)?)
    }
}
/// One pre-norm layer (the first has no norm before attention: the embeddings end with one).
// https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/modernbert/modeling_modernbert.py (ModernBertEncoderLayer)
#[derive(Debug, Clone)]
struct Layer {
    attn_norm: Option<LayerNorm>,
    attention: Attention,
    mlp_norm: LayerNorm,
    mlp: Mlp,
}

impl Layer {
    fn load(pb: &ParamBuilder, c: &ModernBertConfig, index: usize, global: bool) -> Result<Self> {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let inits = Inits::of(c);
        let norm = |name: &str| LayerNorm::load_with(&pb.pp(name), h, c.norm_eps, c.norm_bias);
        let attn = pb.pp("attn");
        let mlp = pb.pp("mlp");
        Ok(Self {
            attn_norm: (index > 0).then(|| norm("attn_norm")).transpose()?,
            attention: Attention {
                qkv: Linear::load_init(&attn.pp("Wqkv"), h, 3 * h, c.attention_bias, inits.input)?,
                out: Linear::load_init(&attn.pp("Wo"), h, h, c.attention_bias, inits.output)?,
                heads: c.num_attention_heads,
                head_dim: h / c.num_attention_heads,
                global,
                dropout: Dropout::new(c.attention_dropout),
            },
            mlp_norm: norm("mlp_norm")?,
            mlp: Mlp {
                wi: Linear::load_init(&mlp.pp("Wi"), h, 2 * i, c.mlp_bias, inits.input)?,
                wo: Linear::load_init(&mlp.pp("Wo"), i, h, c.mlp_bias, inits.output)?,
                activation: Activation::parse("hidden_activation", &c.hidden_activation)?,
                dropout: Dropout::new(c.mlp_dropout),
            },
        })
    }

    fn detached(&self) -> Self {
        Self {
            attn_norm: self.attn_norm.as_ref().map(LayerNorm::detached),
            attention: Attention {
                qkv: self.attention.qkv.detached(),
                out: self.attention.out.detached(),
                ..self.attention.clone()
            },
            mlp_norm: self.mlp_norm.detached(),
            mlp: Mlp { wi: self.mlp.wi.detached(), wo: self.mlp.wo.detached(), ..self.mlp.clone() },
        }
    }

    fn forward(&self, xs: &Tensor, ctx: &Context, mut rng: Option<&mut DropoutRng>) -> Result<Tensor> {
        let normed = match &self.attn_norm {
            Some(norm) => norm.forward(xs)?,
            None => xs.clone(),
        };
        let xs = (xs + self.attention.forward(&normed, ctx, rng.as_deref_mut())?)?;
        let mlp = self.mlp.forward(&self.mlp_norm.forward(&xs)?, &ctx.rows, rng)?;
        Ok((xs + mlp)?)
    }
}

/// ModernBERT's encoder (`model.*`): token embeddings with their norm, the layers, the final norm.
// https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/modernbert/modeling_modernbert.py (ModernBertModel)
#[derive(Debug, Clone)]
pub(crate) struct ModernBertEncoder {
    words: Tensor,
    pad: Option<u32>,
    embedding_norm: LayerNorm,
    embedding_dropout: Dropout,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    head_dim: usize,
    /// The rotary bases of global and local layers, and the local window's radius.
    thetas: (f64, f64),
    window: usize,
    max_sequence: usize,
}

impl ModernBertEncoder {
    pub(crate) fn load(pb: &ParamBuilder, c: &ModernBertConfig) -> Result<Self> {
        let h = c.hidden_size;
        let embeddings = pb.pp("embeddings");
        let globals = c.layer_types()?;
        let layers = pb.pp("layers");
        let layers = (0..c.num_hidden_layers)
            .map(|i| Layer::load(&layers.pp(i.to_string()), c, i, globals[i]))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            words: embeddings.pp("tok_embeddings").get((c.vocab_size, h), "weight", Inits::of(c).input)?,
            pad: c.pad_token_id,
            embedding_norm: LayerNorm::load_with(&embeddings.pp("norm"), h, c.norm_eps, c.norm_bias)?,
            embedding_dropout: Dropout::new(c.embedding_dropout),
            layers,
            final_norm: LayerNorm::load_with(&pb.pp("final_norm"), h, c.norm_eps, c.norm_bias)?,
            head_dim: h / c.num_attention_heads,
            thetas: (c.rope_theta(true)?, c.rope_theta(false)?),
            window: c.window_radius(),
            max_sequence: c.max_position_embeddings,
        })
    }

    pub(crate) fn detached(&self) -> Self {
        Self {
            words: self.words.detach(),
            embedding_norm: self.embedding_norm.detached(),
            layers: self.layers.iter().map(Layer::detached).collect(),
            final_norm: self.final_norm.detached(),
            ..self.clone()
        }
    }

    /// The layout, rotary angles and masks of a batch with `attention_mask` [batch, len], for the
    /// CPU kernels' path (`fused`, skipping padding where `pack` allows) or the composed one.
    fn context(&self, attention_mask: &Tensor, fused: bool, pack: bool) -> Result<Context> {
        let (b, l) = attention_mask.dims2()?;
        let device = attention_mask.device();
        let min = f64::from(f32::MIN);
        let keys = attention_mask.to_dtype(DType::F32)?;
        let rows = match fused && pack {
            true => TokenRows::of(attention_mask)?,
            false => TokenRows::Padded { batch: b, seq: l },
        };
        let longest = match &rows {
            TokenRows::Packed(packing) => packing.ranges().map(|r| r.len()).max().unwrap_or(0),
            TokenRows::Padded { seq, .. } => *seq,
        };
        let local_layers = self.layers.iter().any(|layer| !layer.attention.global);
        let window = match !fused && local_layers && l > self.window + 1 {
            // A key is seen where it is a token and within the window: one mask, finite everywhere.
            true => {
                let near: Vec<f32> = (0..l)
                    .flat_map(|q| (0..l).map(move |k| f32::from(u8::from(q.abs_diff(k) <= self.window))))
                    .collect();
                let near = Tensor::from_vec(near, (1, 1, l, l), device)?;
                let seen = near.broadcast_mul(&keys.reshape((b, 1, 1, l))?)?;
                Some(seen.affine(-min, min)?)
            }
            false => None,
        };
        let table = |theta: f64| -> Result<(Tensor, Tensor)> {
            let angles = rotary(theta, self.head_dim, l);
            match fused {
                true => rotary_rows(&angles, &rows, self.head_dim, device),
                false => {
                    let shape = (l, self.head_dim);
                    Ok((Tensor::from_vec(angles.0, shape, device)?, Tensor::from_vec(angles.1, shape, device)?))
                }
            }
        };
        Ok(Context {
            global_rotary: table(self.thetas.0)?,
            local_rotary: table(self.thetas.1)?,
            padding: keys.affine(-min, min)?,
            none: Tensor::zeros((b, l), DType::F32, device)?,
            window,
            radius: self.window,
            longest,
            rows,
            fused,
        })
    }

    /// The last hidden states (after the final norm) as [rows, hidden], and how their rows are laid
    /// out (on the CPU the real tokens only, packed, where the mask pads at the right).
    pub(crate) fn encode(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        pack: bool,
        mut rng: Option<&mut DropoutRng>,
    ) -> Result<(Tensor, TokenRows)> {
        let (b, l) = input_ids.dims2()?;
        if l > self.max_sequence {
            bail!("sequence length {l} exceeds the model's {} positions", self.max_sequence);
        }
        let words = match cpu::enabled(&self.words) {
            true => {
                let none = Tensor::zeros((b, l), DType::U32, input_ids.device())?;
                cpu::embedding_sum((&self.words, None, None), input_ids, &none, self.pad, &Positions::Sequential)?
            }
            false => word_rows(&self.words, input_ids, self.pad)?,
        };
        let xs = self.embedding_norm.forward(&words)?;
        let width = xs.dim(1)?;
        let mut xs = self.embedding_dropout.forward(&xs, MaskLayout::Tokens { len: l, width }, rng.as_deref_mut())?;
        let ctx = self.context(attention_mask, cpu::enabled(&xs), pack)?;
        if let TokenRows::Packed(packing) = &ctx.rows {
            xs = xs.index_select(&packing.real_rows(xs.device())?, 0)?;
        }
        for layer in &self.layers {
            xs = layer.forward(&xs, &ctx, rng.as_deref_mut())?;
        }
        Ok((self.final_norm.forward(&xs)?, ctx.rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_norms_and_turns_position_zero_by_nothing() {
        let (cos, sin) = rotary(10_000.0, 4, 3);
        assert_eq!(&cos[..4], &[1.0; 4]);
        assert_eq!(&sin[..4], &[0.0; 4]);
        // Position 1: angles 1 and 1 / 100 for the two frequencies, repeated for each half.
        assert!((cos[4] - 1f32.cos()).abs() < 1e-7 && (sin[5] - 0.01f32.sin()).abs() < 1e-7 && cos[6] == cos[4]);
        let xs = Tensor::new(&[1f32, 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12.], &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 3, 4))
            .unwrap();
        let (c, s) = (
            Tensor::from_vec(cos, (3, 4), &Device::Cpu).unwrap(),
            Tensor::from_vec(sin, (3, 4), &Device::Cpu).unwrap(),
        );
        let rotated = apply_rotary(&xs, &c, &s).unwrap();
        let norms = |t: &Tensor| t.sqr().unwrap().sum(3).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (a, b) in norms(&xs).iter().zip(norms(&rotated)) {
            assert!((a - b).abs() < 1e-4 * a, "{a} {b}");
        }
    }
}
