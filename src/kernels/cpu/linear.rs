//! The linear layer, `y = x W^T + b`, as one op: the product added onto the bias rows, and a backward pass of two products and a column sum.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::gemm::{matmul, matmul_into, Threads, View};
use super::storage::{cpu_tensor, f32_slice, with_f32};
use super::threads::{par_each, repeat_rows, row_ranges};
use crate::Result;

/// Sum over rows of a [rows, width] matrix, as per-chunk partials added in order.
fn column_sums(values: &[f32], width: usize) -> Vec<f32> {
    let items = row_ranges(values.len() / width.max(1), width).map(|rows| (rows, vec![0f32; width])).collect();
    let partials = par_each(items, |(rows, acc)| {
        for row in values[rows.start * width..rows.end * width].chunks_exact(width) {
            acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
        }
    });
    let mut sums = vec![0f32; width];
    for (_, partial) in partials {
        sums.iter_mut().zip(&partial).for_each(|(s, p)| *s += p);
    }
    sums
}

struct LinearOp;

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "fused-linear"
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
        let (rows, in_dim) = xl.shape().dims2()?;
        let (out_dim, w_in) = wl.shape().dims2()?;
        if w_in != in_dim {
            candle_core::bail!("fused-linear: input width {in_dim}, weight {:?}", wl.dims());
        }
        let (x, w) = (f32_slice(x, xl, "fused-linear input")?, f32_slice(w, wl, "fused-linear weight")?);
        let bias = f32_slice(b, bl, "fused-linear bias")?;
        if bias.len() != out_dim {
            candle_core::bail!("fused-linear: {} bias values for {out_dim} outputs", bias.len());
        }
        // Start from the bias in every row and add the product to it: no zero fill, no second pass.
        let mut ys = repeat_rows(bias, rows);
        // SAFETY: x is rows x in_dim, w is out_dim x in_dim (read transposed), ys is rows x out_dim.
        unsafe {
            let dims = (rows, out_dim, in_dim);
            matmul_into(
                dims,
                ys.as_mut_ptr(),
                out_dim,
                true,
                View::new(x, in_dim),
                View::new(w, in_dim).t(),
                Threads::All,
            );
        }
        Ok((CpuStorage::F32(ys), Shape::from((rows, out_dim))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _ys: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let ((rows, in_dim), out_dim) = (x.dims2()?, w.dim(0)?);
        with_f32(x, "fused-linear input", |xs| {
            with_f32(w, "fused-linear weight", |ws| {
                with_f32(grad, "fused-linear grad", |g| {
                    // SAFETY: g is rows x out, w is out x in, x is rows x in.
                    let (grad_x, grad_w) = unsafe {
                        let (g, x, w) = (View::new(g, out_dim), View::new(xs, in_dim), View::new(ws, in_dim));
                        // [out, rows] x [rows, in] gives the weight gradient in the weight's own layout.
                        (matmul(rows, in_dim, out_dim, g, w), matmul(out_dim, in_dim, rows, g.t(), x))
                    };
                    Ok((
                        Some(cpu_tensor(grad_x, (rows, in_dim))?),
                        Some(cpu_tensor(grad_w, (out_dim, in_dim))?),
                        Some(cpu_tensor(column_sums(g, out_dim), out_dim)?),
                    ))
                })
            })
        })
    }
}

/// `xs` [rows, in] times `weight` [out, in] transposed, plus `bias` [out].
pub(crate) fn linear(xs: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    // The products read plain row-major matrices (a pooler input, say, is a strided view).
    Ok(xs.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, LinearOp)?)
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::testing::{max_diff, probe, randn, rel_diff};

    #[test]
    fn linear_matches_composed_forward_and_backward() {
        let (x, w, b) = (randn((37, 24), 1), randn((40, 24), 2), randn(40, 3));
        let p = probe(&[37, 40], 4);
        let fused = linear(&x, &w, &b).unwrap();
        let composed = x.matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
        assert!(max_diff(&fused, &composed) < 1e-5);
        let gf = (fused * &p).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (composed * &p).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &w, &b] {
            let d = rel_diff(gf.get(v).unwrap(), gc.get(v).unwrap());
            assert!(d < 1e-5, "{d}");
        }
    }

    #[test]
    fn column_sums_are_independent_of_chunking() {
        let values: Vec<f32> = (0..3 * 100_000).map(|i| (i % 7) as f32).collect();
        let sums = column_sums(&values, 3);
        let expected: Vec<f32> =
            (0..3).map(|c| values.iter().skip(c).step_by(3).map(|&v| f64::from(v)).sum::<f64>() as f32).collect();
        assert_eq!(sums, expected);
    }
}
