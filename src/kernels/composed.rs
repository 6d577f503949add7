//! Differentiable compositions of candle's elementary ops where candle's own fused op has no
//! backward pass (its `softmax_last_dim`): the path the model takes on every device but the CPU
//! kernels', and the reference those kernels are held to.

use candle_core::{Tensor, D};

use crate::Result;

/// Softmax over the last dimension.
///
/// The row maximum is subtracted only to keep `exp` finite; softmax does not change under a shift,
/// so the maximum is treated as a constant (detached) and autograd does no work for it.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let exp = xs.broadcast_sub(&max)?.exp()?;
    let inv_sum = exp.sum_keepdim(D::Minus1)?.recip()?;
    Ok(exp.broadcast_mul(&inv_sum)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn softmax_matches_candle_reference_and_has_gradients() {
        let dev = Device::Cpu;
        let x = Var::from_slice(&[1f32, 2., 3., -1., 0., 1000.], (2, 3), &dev).unwrap();
        let ours = softmax_last_dim(x.as_tensor()).unwrap();
        let reference = candle_nn::ops::softmax(x.as_tensor(), D::Minus1).unwrap();
        let diff = (ours.clone() - reference).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-7, "{diff}");
        // d/dx of sum(softmax * w) is nonzero for non-constant w.
        let w = Tensor::new(&[[1f32, 2., 3.], [3., 2., 1.]], &dev).unwrap();
        let grads = (ours * w).unwrap().sum_all().unwrap().backward().unwrap();
        let g = grads.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        assert!(g[0].iter().any(|&v| v.abs() > 1e-3));
        // Row sums of a softmax Jacobian-vector product are zero.
        assert!(g[0].iter().sum::<f32>().abs() < 1e-6);
    }
}
