//! GELU in its erf form (transformers' "gelu"), elementwise, forward and backward.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::simd::{gelu_backward, gelu_forward};
use super::storage::{cpu_tensor, f32_slice, with_f32};
use super::threads::par_new_rows;
use crate::Result;

struct GeluErfOp;

impl CustomOp1 for GeluErfOp {
    fn name(&self) -> &'static str {
        "fused-gelu-erf"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let _profile = crate::kernels::cpu::profile::op("gelu", "forward");
        let xs = f32_slice(x, xl, "gelu input")?;
        let (ys, _) = par_new_rows(xs.len(), 1, || (), |elems, out, _| gelu_forward(&xs[elems], out));
        Ok((CpuStorage::F32(ys), xl.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _ys: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let _profile = crate::kernels::cpu::profile::op("gelu", "backward");
        with_f32(x, "gelu input", |xs| {
            with_f32(grad, "gelu grad", |g| {
                let (dx, _) =
                    par_new_rows(xs.len(), 1, || (), |elems, out, _| gelu_backward(&xs[elems.clone()], &g[elems], out));
                Ok(Some(cpu_tensor(dx, x.shape())?))
            })
        })
    }
}

/// `0.5 * x * (1 + erf(x / sqrt(2)))`, elementwise.
pub(crate) fn gelu_erf(xs: &Tensor) -> Result<Tensor> {
    Ok(xs.apply_op1(GeluErfOp)?)
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::testing::{max_diff, probe, randn, rel_diff};

    #[test]
    fn gelu_matches_candle_forward_and_backward() {
        let x = randn((70, 333), 9);
        let p = probe(&[70, 333], 10);
        let fused = gelu_erf(&x).unwrap();
        let composed = x.gelu_erf().unwrap();
        assert!(max_diff(&fused, &composed) < 1e-6);
        let gf = (fused * &p).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (composed * &p).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(rel_diff(gf.get(&x).unwrap(), gc.get(&x).unwrap()) < 1e-5);
    }
}
