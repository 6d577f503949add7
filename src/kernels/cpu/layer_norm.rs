//! LayerNorm over the last dimension as one op, one pass over the rows forward and one backward.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::simd::{layer_norm_backward_rows, layer_norm_rows};
use super::storage::{cpu_tensor, f32_slice, rows_and_width, with_f32};
use super::threads::{par_row_chunks, zeroed};
use crate::Result;

struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let _profile = crate::kernels::cpu::profile::op("layer-norm", "forward");
        let (_, width) = rows_and_width(xl);
        let xs = f32_slice(x, xl, "fused-layer-norm input")?;
        let (w, b) = (f32_slice(w, wl, "layer-norm weight")?, f32_slice(b, bl, "layer-norm bias")?);
        if w.len() != width || b.len() != width {
            candle_core::bail!("fused-layer-norm: width {width}, weight {}, bias {}", w.len(), b.len());
        }
        let mut ys = zeroed(xs.len());
        par_row_chunks(
            &mut ys,
            width,
            || (),
            |rows, out, _| {
                layer_norm_rows(&xs[rows.start * width..rows.end * width], w, b, self.eps, out);
            },
        );
        Ok((CpuStorage::F32(ys), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _ys: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let _profile = crate::kernels::cpu::profile::op("layer-norm", "backward");
        let width = x.dim(candle_core::D::Minus1)?;
        let eps = self.eps;
        with_f32(x, "layer-norm input", |xs| {
            with_f32(w, "layer-norm weight", |w| {
                with_f32(grad, "layer-norm grad", |g| {
                    let (dx, dw, db) = layer_norm_backward(xs, g, w, eps);
                    Ok((Some(cpu_tensor(dx, x.shape())?), Some(cpu_tensor(dw, width)?), Some(cpu_tensor(db, width)?)))
                })
            })
        })
    }
}

/// LayerNorm backward over rows of `weight.len()` values: (d input, d weight, d bias).
pub(crate) fn layer_norm_backward(xs: &[f32], g: &[f32], w: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let width = w.len();
    let mut dx = zeroed(xs.len());
    // Per chunk: (d weight, d bias) partial sums, added in chunk order.
    let partials = par_row_chunks(
        &mut dx,
        width,
        || (vec![0f32; width], vec![0f32; width]),
        |rows, out, (dw, db)| {
            let span = rows.start * width..rows.end * width;
            layer_norm_backward_rows(&xs[span.clone()], &g[span], w, eps, out, dw, db);
        },
    );
    let (mut dw, mut db) = (vec![0f32; width], vec![0f32; width]);
    for (pw, pb) in partials {
        dw.iter_mut().zip(&pw).for_each(|(a, v)| *a += v);
        db.iter_mut().zip(&pb).for_each(|(a, v)| *a += v);
    }
    (dx, dw, db)
}

/// LayerNorm of `xs` over its last dimension.
pub(crate) fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let op = LayerNormOp { eps: eps as f32 };
    Ok(xs.apply_op3(weight, bias, op)?)
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::testing::{max_diff, probe, randn, rel_diff};

    #[test]
    fn layer_norm_matches_composed_forward_and_backward() {
        let (x, w, b) = (randn((2, 300, 48), 5), randn(48, 6), randn(48, 7));
        let p = probe(&[2, 300, 48], 8);
        let fused = layer_norm(&x, &w, &b, 1e-12).unwrap();
        let composed = candle_nn::ops::layer_norm_slow(&x, &w, &b, 1e-12).unwrap();
        assert!(max_diff(&fused, &composed) < 1e-5);
        let gf = (fused * &p).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (composed * &p).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &w, &b] {
            let d = rel_diff(gf.get(v).unwrap(), gc.get(v).unwrap());
            assert!(d < 1e-5, "{d}");
        }
    }
}
