//! GELU in its erf form (transformers' "gelu"), elementwise, forward and backward.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::autocast::{copy_slot, hand_over_copy, leave_copy, output_copy, CopySlot};
use super::simd::{gelu_backward, gelu_forward};
use super::storage::{cpu_tensor, f32_slice, with_f32};
use super::threads::par_new_rows;
use crate::Result;

/// The op; under a bf16 autocast it also writes its output's bf16 copy (only the next product
/// reads the output).
struct GeluErfOp {
    copy: Option<CopySlot>,
}

impl CustomOp1 for GeluErfOp {
    fn name(&self) -> &'static str {
        "fused-gelu-erf"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let _profile = crate::kernels::cpu::profile::op("gelu", "forward");
        let xs = f32_slice(x, xl, "gelu input")?;
        let copy = output_copy(&self.copy, xs.len());
        let (ys, _) = par_new_rows(
            xs.len(),
            1,
            || (),
            |elems, out, _| {
                let at = elems.start;
                gelu_forward(&xs[elems], out);
                if let Some(copy) = &copy {
                    // SAFETY: each chunk's values are written by the one thread that runs the chunk.
                    unsafe { copy.write(at, out) };
                }
            },
        );
        // SAFETY: the chunks cover every value.
        unsafe { leave_copy(&self.copy, copy) };
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
    let slot = copy_slot();
    let ys = xs.apply_op1(GeluErfOp { copy: slot.clone() })?;
    hand_over_copy(&ys, slot);
    Ok(ys)
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

    #[test]
    fn under_bf16_the_output_comes_with_its_bf16_copy() {
        use crate::kernels::cpu::autocast::{handed_over, with_composed_bf16};
        let x = randn((70, 1000), 11);
        let ((copy, expected), _) = with_composed_bf16(&Default::default(), || handed_over(&gelu_erf(&x).unwrap()));
        assert_eq!(copy, expected);
    }
}
