//! Differentiable building blocks: Linear, LayerNorm, GELU and attention softmax, fused on CPU and composed elsewhere.
//!
//! candle's own fused `softmax_last_dim` and `layer_norm` kernels (and `candle_nn::LayerNorm` on
//! contiguous input) have no backward pass: gradients silently stop there. On CPU with f32 these
//! blocks run our fused kernels with hand-written backward passes (`kernels/cpu/`); on other devices
//! they are composed from elementary ops candle can differentiate. The composed forms are also the
//! references the fused kernels are tested against.

use candle_core::{DType, Tensor, D};

use super::builder::{Init, ParamBuilder};
use super::dropout;
use crate::kernels::composed::softmax_last_dim;
use crate::kernels::{cpu, precision};
use crate::{Error, Result};

/// An activation function a config names (`hidden_act`, `activation`, ...), or a fixed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// transformers' `"gelu"`: the exact erf form.
    GeluErf,
    Relu,
    Tanh,
}

impl Activation {
    /// The activation a config's `key` names: `"gelu"` (exact) or `"relu"`.
    pub fn parse(key: &str, name: &str) -> Result<Self> {
        match name {
            "gelu" => Ok(Self::GeluErf),
            "relu" => Ok(Self::Relu),
            other => Err(Error::config(
                key,
                format!("{other:?} is not supported; accel implements \"gelu\" (exact, erf) and \"relu\""),
            )),
        }
    }

    pub fn forward(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::GeluErf => gelu_erf(xs),
            Self::Relu => Ok(xs.relu()?),
            Self::Tanh => Ok(xs.tanh()?),
        }
    }
}

/// A zero bias for the kernels that take one, where a layer has none: a constant, not a parameter.
fn zero_bias(pb: &ParamBuilder, width: usize) -> Result<Tensor> {
    Ok(Tensor::zeros(width, DType::F32, &pb.device())?)
}

/// `y = x W^T + b`, with `W` of shape [out, in] as in `torch.nn.Linear`; `bias = False` layers add
/// nothing (their bias is a zero constant, not a parameter).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Tensor,
    has_bias: bool,
}

impl Linear {
    pub(crate) fn load(pb: &ParamBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        Self::load_with(pb, in_dim, out_dim, true)
    }

    /// A layer with a bias parameter when `bias`, else without one.
    pub(crate) fn load_with(pb: &ParamBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        Self::load_init(pb, in_dim, out_dim, bias, Init::Normal)
    }

    /// As [`Linear::load_with`], with fresh weights drawn as `init` says.
    pub(crate) fn load_init(pb: &ParamBuilder, in_dim: usize, out_dim: usize, bias: bool, init: Init) -> Result<Self> {
        let weight = pb.get((out_dim, in_dim), "weight", init)?;
        let bias_tensor = match bias {
            true => pb.get(out_dim, "bias", Init::Zeros)?,
            false => zero_bias(pb, out_dim)?,
        };
        Ok(Self { weight, bias: bias_tensor, has_bias: bias })
    }

    /// The same layer reading the same storage, outside the autograd graph.
    pub(crate) fn detached(&self) -> Self {
        Self { weight: self.weight.detach(), bias: self.bias.detach(), has_bias: self.has_bias }
    }

    /// The output width.
    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Applies the layer to the last dimension of `xs`. Leading dimensions are folded into one
    /// matrix product (a batched product would broadcast the weight and be much slower).
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if xs.rank() == 2 {
            return self.forward_2d(xs);
        }
        let (lead, in_dim) = (xs.dims()[..xs.rank() - 1].to_vec(), xs.dim(D::Minus1)?);
        let rows: usize = lead.iter().product();
        let ys = self.forward_2d(&xs.reshape((rows, in_dim))?)?;
        let mut out = lead;
        out.push(self.weight.dim(0)?);
        Ok(ys.reshape(out)?)
    }

    /// [`Linear::forward`] for an output that matrix products read next (attention's
    /// projections): on the CPU under bf16, the layer hands its output's bf16 copy to them.
    pub fn forward_for_products(&self, xs: &Tensor) -> Result<Tensor> {
        if xs.rank() == 2 && cpu::enabled(xs) {
            return cpu::linear_for_products(xs, &self.weight, &self.bias);
        }
        self.forward(xs)
    }

    /// `activation(self.forward(xs))`; on the CPU the exact GELU runs inside the layer's pass
    /// where no backward pass follows (see `kernels::cpu::linear_gelu`).
    pub fn forward_activated(&self, xs: &Tensor, activation: Activation) -> Result<Tensor> {
        if activation == Activation::GeluErf && xs.rank() == 2 && cpu::enabled(xs) {
            return cpu::linear_gelu(xs, &self.weight, &self.bias);
        }
        activation.forward(&self.forward(xs)?)
    }

    fn forward_2d(&self, xs: &Tensor) -> Result<Tensor> {
        if cpu::enabled(xs) {
            cpu::linear(xs, &self.weight, &self.bias)
        } else if self.has_bias {
            Ok(precision::linear_product(xs, &self.weight)?.broadcast_add(&self.bias)?)
        } else {
            precision::linear_product(xs, &self.weight)
        }
    }
}

/// Layer normalization over the last dimension, as `torch.nn.LayerNorm` computes it: biased
/// variance, `(x - mean) / sqrt(var + eps) * weight + bias`; `bias = False` norms add nothing.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub(crate) fn load(pb: &ParamBuilder, size: usize, eps: f64) -> Result<Self> {
        Self::load_with(pb, size, eps, true)
    }

    /// A norm with a bias parameter when `bias`, else without one.
    pub(crate) fn load_with(pb: &ParamBuilder, size: usize, eps: f64, bias: bool) -> Result<Self> {
        let weight = pb.get(size, "weight", Init::Ones)?;
        let bias = match bias {
            true => pb.get(size, "bias", Init::Zeros)?,
            false => zero_bias(pb, size)?,
        };
        Ok(Self { weight, bias, eps })
    }

    /// The same layer reading the same storage, outside the autograd graph.
    pub(crate) fn detached(&self) -> Self {
        Self { weight: self.weight.detach(), bias: self.bias.detach(), eps: self.eps }
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if cpu::enabled(xs) {
            return cpu::layer_norm(xs, &self.weight, &self.bias, self.eps);
        }
        let centered = xs.broadcast_sub(&xs.mean_keepdim(D::Minus1)?)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        // Multiplying by the reciprocal square root is what PyTorch's kernel does, and it is cheaper
        // to differentiate than a broadcast division.
        let inv_std = (var + self.eps)?.sqrt()?.recip()?;
        let normed = centered.broadcast_mul(&inv_std)?;
        Ok(normed.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?)
    }

    /// `LayerNorm(dropout(xs) + residual)`, the end of a BERT attention or feed-forward block, with
    /// `dropout` the mask [`Dropout::draw`](super::dropout::Dropout) gave (none in evaluation).
    pub fn forward_residual(&self, xs: &Tensor, residual: &Tensor, dropout: Option<Vec<f32>>) -> Result<Tensor> {
        if cpu::enabled(xs) && xs.rank() == 2 {
            return cpu::residual_layer_norm(xs, residual, (&self.weight, &self.bias), self.eps, dropout);
        }
        let xs = match dropout {
            Some(mask) => dropout::apply_mask(xs, mask)?,
            None => xs.clone(),
        };
        self.forward(&(xs + residual)?)
    }
}

/// The exact (erf) GELU, transformers' `"gelu"`.
pub fn gelu_erf(xs: &Tensor) -> Result<Tensor> {
    if cpu::enabled(xs) {
        cpu::gelu_erf(xs)
    } else {
        Ok(xs.gelu_erf()?)
    }
}

/// Attention probabilities: softmax over the last dimension of `scores * scale + mask`, with
/// `scores` [batch, heads, queries, keys] and the additive `mask` [batch, keys].
pub fn attention_probs(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    if cpu::enabled(scores) {
        return cpu::masked_softmax(scores, mask, scale);
    }
    let (b, keys) = mask.dims2()?;
    softmax_last_dim(&(scores * scale)?.broadcast_add(&mask.reshape((b, 1, 1, keys))?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn layer_norm_matches_candle_slow_reference() {
        let dev = Device::Cpu;
        let xs = Tensor::new(&[[1f32, 2., 4., 8.], [0.5, -0.5, 0.25, 3.0]], &dev).unwrap();
        let w = Tensor::new(&[1f32, 0.5, 2., -1.], &dev).unwrap();
        let b = Tensor::new(&[0f32, 0.1, 0.2, 0.3], &dev).unwrap();
        let ln = LayerNorm { weight: w.clone(), bias: b.clone(), eps: 1e-12 };
        let ours = ln.forward(&xs).unwrap();
        let reference = candle_nn::ops::layer_norm_slow(&xs, &w, &b, 1e-12).unwrap();
        let diff = (ours - reference).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6, "{diff}");
    }
}
