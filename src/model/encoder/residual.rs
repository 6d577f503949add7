//! The block that ends a post-norm layer's attention and feed-forward halves: dense, dropout and a
//! residual LayerNorm, `LayerNorm(dropout(dense(x)) + residual)`, fused on the CPU.

use candle_core::Tensor;

use super::super::builder::ParamBuilder;
use super::super::dropout::{Dropout, DropoutRng, MaskLayout};
use super::super::layers::{LayerNorm, Linear};
use super::super::packing::TokenRows;
use crate::kernels::cpu;
use crate::{bail, Result};

/// Dense + dropout + residual LayerNorm (BERT's `BertSelfOutput` and `BertOutput`, DeBERTa's).
// https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/bert/modeling_bert.py (BertSelfOutput, BertOutput)
#[derive(Debug, Clone)]
pub(crate) struct ResidualOutput {
    dense: Linear,
    layer_norm: LayerNorm,
    dropout: Dropout,
}

impl ResidualOutput {
    /// The dense layer under `dense` ([in_dim -> hidden]), the LayerNorm under `norm`, dropout `p`.
    pub(crate) fn load(
        (dense, norm): (&ParamBuilder, &ParamBuilder),
        in_dim: usize,
        hidden: usize,
        eps: f64,
        p: f64,
    ) -> Result<Self> {
        Ok(Self {
            dense: Linear::load(dense, in_dim, hidden)?,
            layer_norm: LayerNorm::load(norm, hidden, eps)?,
            dropout: Dropout::new(p),
        })
    }

    pub(crate) fn detached(&self) -> Self {
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
