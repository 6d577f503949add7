//! Dropout's multiply by a mask drawn outside the graph, without a gradient for the mask.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::storage::{f32_slice, with_f32};
use super::threads::{par_row_chunks, zeroed};
use crate::Result;

/// Multiplies by a mask drawn outside the graph. As a plain product, candle's backward would also
/// compute (and allocate) a gradient for the mask; this op only produces the input's.
struct MaskMulOp {
    mask: Tensor,
}

impl CustomOp1 for MaskMulOp {
    fn name(&self) -> &'static str {
        "fused-mask-mul"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let _profile = crate::kernels::cpu::profile::op("mask-mul", "forward");
        let xs = f32_slice(x, xl, "dropout input")?;
        let ys = with_f32(&self.mask, "dropout mask", |mask| {
            if mask.len() != xs.len() {
                candle_core::bail!("dropout: mask of {} values for {} inputs", mask.len(), xs.len());
            }
            let mut ys = zeroed(xs.len());
            par_row_chunks(
                &mut ys,
                1,
                || (),
                |elems, out, _| {
                    for ((y, x), m) in out.iter_mut().zip(&xs[elems.clone()]).zip(&mask[elems]) {
                        *y = x * m;
                    }
                },
            );
            Ok(ys)
        })?;
        Ok((CpuStorage::F32(ys), xl.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _ys: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let _profile = crate::kernels::cpu::profile::op("mask-mul", "backward");
        Ok(Some(grad.mul(&self.mask)?))
    }
}

/// `xs * mask` where `mask` (same shape, f32 CPU) needs no gradient.
pub(crate) fn mask_mul(xs: &Tensor, mask: Tensor) -> Result<Tensor> {
    Ok(xs.apply_op1(MaskMulOp { mask })?)
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::testing::{max_diff, probe, randn};

    #[test]
    fn mask_mul_matches_product_and_passes_the_masked_gradient() {
        let x = randn((5, 7), 13);
        let mask = probe(&[5, 7], 14);
        let p = probe(&[5, 7], 15);
        let fused = mask_mul(&x, mask.clone()).unwrap();
        let composed = x.as_tensor().mul(&mask).unwrap();
        assert_eq!(max_diff(&fused, &composed), 0.0);
        let gf = (fused * &p).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(max_diff(gf.get(&x).unwrap(), &(&p * &mask).unwrap()), 0.0);
    }
}
