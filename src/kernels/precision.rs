//! The mixed-precision policy, Accelerate's `mixed_precision`: which matrix products may run in a
//! narrower type. Master weights, optimizer state, normalisations, softmax and the loss stay f32.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::cpu::autocast;

/// `mixed_precision = "no" | "bf16"` (config key and `--mixed-precision`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MixedPrecision {
    /// Everything in f32.
    #[default]
    No,
    /// The large products (Q/K/V/output projections, attention scores and context, feed-forward,
    /// pooler, classifier) read bf16 inputs and accumulate in f32; their outputs are f32 on the CPU
    /// and rounded to bf16 by cuBLAS on a GPU (as under torch.autocast); gradients stay f32.
    Bf16,
}

impl MixedPrecision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::No => "no",
            Self::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for MixedPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MixedPrecision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "no" => Ok(Self::No),
            "bf16" => Ok(Self::Bf16),
            "fp16" => Err("fp16 is not supported on the CPU; use \"bf16\" or \"no\"".into()),
            other => Err(format!("unknown mixed precision {other:?}; expected \"no\" or \"bf16\"")),
        }
    }
}

/// `xs · weightᵀ` in the composed path (every device but the CPU kernels'): under a bf16 scope
/// both sides are rounded to bf16 (the weight from the scope's cache), the backend accumulates in
/// f32 and writes bf16 (cuBLAS, as `torch.autocast` on a GPU does), and the result is widened back
/// to f32 for what follows. The CPU kernels keep their f32 outputs unrounded.
pub(crate) fn linear_product(xs: &Tensor, weight: &Tensor) -> crate::Result<Tensor> {
    match autocast::active() {
        Some(cache) if xs.dtype() == DType::F32 => {
            let w = cache.bf16_tensor(weight)?;
            Ok(xs.to_dtype(DType::BF16)?.matmul(&w.t()?)?.to_dtype(DType::F32)?)
        }
        _ => Ok(xs.matmul(&weight.t()?)?),
    }
}

/// `a · b` of two activations (attention scores and context) in the composed path, in bf16 under a
/// bf16 scope as [`linear_product`] does.
pub(crate) fn product(a: &Tensor, b: &Tensor) -> crate::Result<Tensor> {
    match autocast::active() {
        Some(_) if a.dtype() == DType::F32 => {
            Ok(a.to_dtype(DType::BF16)?.matmul(&b.to_dtype(DType::BF16)?)?.to_dtype(DType::F32)?)
        }
        _ => Ok(a.matmul(b)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    /// What a GPU runs under bf16 (the composed products), checked on the CPU: inputs rounded to
    /// bf16, f32 out, gradients reaching the f32 weight, one conversion of a weight per scope.
    #[test]
    fn composed_bf16_products_round_their_inputs_and_keep_gradients() {
        let dev = Device::Cpu;
        let xs = Tensor::randn(0f32, 1., (16, 64), &dev).unwrap();
        let w = Var::randn(0f32, 0.2, (32, 64), &dev).unwrap();
        let f32_out = xs.matmul(&w.as_tensor().t().unwrap()).unwrap();
        let bf16 = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        let expected = bf16(&xs).matmul(&bf16(w.as_tensor()).t().unwrap()).unwrap().to_dtype(DType::F32).unwrap();
        let tracked = autocast::TrackedWeights::new([w.as_tensor()]);
        let ((out, again, scores, grad), conversions) = autocast::with_composed_bf16(&tracked, || {
            let out = linear_product(&xs, w.as_tensor()).unwrap();
            let again = linear_product(&xs, w.as_tensor()).unwrap();
            let scores = product(&xs, &xs.t().unwrap()).unwrap();
            let grads = out.sum_all().unwrap().backward().unwrap();
            (out, again, scores, grads.get(w.as_tensor()).unwrap().clone())
        });
        assert_eq!(conversions, 1, "the weight is converted once per version of its values");
        assert_eq!(out.dtype(), DType::F32);
        assert_eq!(max_diff(&out, &again), 0.0);
        // bf16 products of bf16-rounded inputs: the composed path is exactly that.
        assert!(
            max_diff(&out, &expected) <= 1e-2 * expected.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
        );
        // bf16 ran (results differ from f32) within bf16's 8-bit mantissa over 64 terms.
        let gap = max_diff(&out, &f32_out);
        assert!(gap > 0.0 && gap < 0.05, "{gap}");
        let scores_f32 = xs.matmul(&xs.t().unwrap()).unwrap();
        let gap = max_diff(&scores, &scores_f32);
        assert!(gap > 0.0 && gap < 0.5, "{gap}");
        // d(sum(x w^T))/dw = column sums of x for every row of w, in f32 on the f32 weight.
        assert_eq!(grad.dtype(), DType::F32);
        let col_sums = xs.sum_keepdim(0).unwrap().broadcast_as((32, 64)).unwrap();
        assert!(max_diff(&grad, &col_sums) < 0.1, "{}", max_diff(&grad, &col_sums));
    }
}
