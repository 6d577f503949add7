//! Fused CPU f32 kernels with hand-written backward passes (linear, LayerNorm, exact GELU, masked softmax), each tested against its composed reference.
//!
//! Composed from elementary candle ops, one BERT layer runs dozens of single-purpose passes over
//! memory, and the generic backward of a bias broadcast or a transposed weight takes slow strided
//! paths. These candle custom ops do each block in one or two passes, spread over the CPU threads
//! in chunks that do not depend on the thread count (`parallel.rs`); partial sums are added in
//! chunk order, so results are the same with any number of threads.
//!
//! The model uses them for f32 tensors on the CPU ([`enabled`]); other devices take the composed
//! path in `layers.rs`, which is also the reference these kernels are tested against.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Storage, Tensor};

use super::matmul::{matmul, matmul_into, Threads, View};
use super::parallel::{par_each, par_row_chunks, repeat_rows, row_ranges, zeroed};
use super::simd::{
    gelu_backward, gelu_forward, layer_norm_backward_rows, layer_norm_rows, masked_softmax_row, softmax_backward_row,
};
use crate::Result;

thread_local! {
    static REFERENCE_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the fused kernels apply to `xs`.
pub(crate) fn enabled(xs: &Tensor) -> bool {
    xs.device().is_cpu() && xs.dtype() == DType::F32 && !REFERENCE_ONLY.with(|r| r.get())
}

/// Runs `f` with the composed reference ops instead of the fused kernels on this thread (the
/// backward pass follows whatever the forward pass built). For tests and benchmarks.
pub fn with_reference_ops<R>(f: impl FnOnce() -> R) -> R {
    let before = REFERENCE_ONLY.with(|r| r.replace(true));
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            REFERENCE_ONLY.with(|r| r.set(self.0));
        }
    }
    let _restore = Restore(before);
    f()
}

/// The contiguous f32 values of a CPU storage.
pub(super) fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(values), Some((start, end))) => Ok(&values[start..end]),
        (CpuStorage::F32(_), None) => candle_core::bail!("{what}: expected a contiguous tensor"),
        _ => candle_core::bail!("{what}: expected f32 values"),
    }
}

/// Runs `f` on the f32 values of `t` (made contiguous first if needed).
pub(super) fn with_f32<R>(
    t: &Tensor,
    what: &str,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(f32_slice(cpu, layout, what)?),
        _ => candle_core::bail!("{what}: expected a CPU tensor"),
    }
}

pub(super) fn cpu_tensor(values: Vec<f32>, shape: impl Into<Shape>) -> candle_core::Result<Tensor> {
    Tensor::from_vec(values, shape, &candle_core::Device::Cpu)
}

/// The last dimension of a layout and the number of rows before it.
fn rows_and_width(layout: &Layout) -> (usize, usize) {
    let dims = layout.dims();
    let width = dims.last().copied().unwrap_or(1);
    (layout.shape().elem_count() / width.max(1), width)
}

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

// ---------------------------------------------------------------------------------------------
// Linear: y = x W^T + b

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

// ---------------------------------------------------------------------------------------------
// LayerNorm over the last dimension

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
pub(super) fn layer_norm_backward(xs: &[f32], g: &[f32], w: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
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

// ---------------------------------------------------------------------------------------------
// GELU in its erf form, transformers' "gelu"

struct GeluErfOp;

impl CustomOp1 for GeluErfOp {
    fn name(&self) -> &'static str {
        "fused-gelu-erf"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let xs = f32_slice(x, xl, "gelu input")?;
        let mut ys = zeroed(xs.len());
        par_row_chunks(&mut ys, 1, || (), |elems, out, _| gelu_forward(&xs[elems], out));
        Ok((CpuStorage::F32(ys), xl.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _ys: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        with_f32(x, "gelu input", |xs| {
            with_f32(grad, "gelu grad", |g| {
                let mut dx = zeroed(xs.len());
                par_row_chunks(&mut dx, 1, || (), |elems, out, _| gelu_backward(&xs[elems.clone()], &g[elems], out));
                Ok(Some(cpu_tensor(dx, x.shape())?))
            })
        })
    }
}

/// `0.5 * x * (1 + erf(x / sqrt(2)))`, elementwise.
pub(crate) fn gelu_erf(xs: &Tensor) -> Result<Tensor> {
    Ok(xs.apply_op1(GeluErfOp)?)
}

// ---------------------------------------------------------------------------------------------
// Attention probabilities: softmax(scores * scale + mask) over the last dimension

struct MaskedSoftmaxOp {
    scale: f32,
}

impl CustomOp2 for MaskedSoftmaxOp {
    fn name(&self) -> &'static str {
        "fused-masked-softmax"
    }

    /// `scores` [batch, heads, queries, keys]; `mask` [batch, keys], additive.
    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        sl: &Layout,
        m: &CpuStorage,
        ml: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, heads, queries, keys) = sl.shape().dims4()?;
        if ml.dims() != [batch, keys] {
            candle_core::bail!("fused-masked-softmax: scores {:?}, mask {:?}", sl.dims(), ml.dims());
        }
        let scores = f32_slice(s, sl, "attention scores")?;
        let mask = f32_slice(m, ml, "attention mask")?;
        let rows_per_batch = heads * queries;
        let mut probs = zeroed(scores.len());
        par_row_chunks(
            &mut probs,
            keys,
            || (),
            |rows, out, _| {
                for (r, p) in rows.zip(out.chunks_exact_mut(keys)) {
                    let s = &scores[r * keys..(r + 1) * keys];
                    let m = &mask[(r / rows_per_batch) * keys..(r / rows_per_batch + 1) * keys];
                    masked_softmax_row(s, m, self.scale, p);
                }
            },
        );
        Ok((CpuStorage::F32(probs), sl.shape().clone()))
    }

    fn bwd(
        &self,
        scores: &Tensor,
        _mask: &Tensor,
        probs: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let keys = scores.dim(candle_core::D::Minus1)?;
        let scale = self.scale;
        let d_scores = with_f32(probs, "attention probs", |p| {
            with_f32(grad, "attention grad", |g| {
                let mut ds = zeroed(p.len());
                par_row_chunks(
                    &mut ds,
                    keys,
                    || (),
                    |rows, out, _| {
                        let span = rows.start * keys..rows.end * keys;
                        let rows_p = p[span.clone()].chunks_exact(keys);
                        let rows_g = g[span].chunks_exact(keys);
                        for ((p, g), d) in rows_p.zip(rows_g).zip(out.chunks_exact_mut(keys)) {
                            softmax_backward_row(p, g, scale, d);
                        }
                    },
                );
                cpu_tensor(ds, scores.shape())
            })
        })?;
        Ok((Some(d_scores), None))
    }
}

/// Softmax over the last dimension of `scores * scale + mask`, with `scores` [batch, heads, q, k]
/// and the additive `mask` [batch, k] broadcast over heads and queries. The mask gets no gradient.
pub(crate) fn masked_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let op = MaskedSoftmaxOp { scale: scale as f32 };
    Ok(scores.apply_op2(mask, op)?)
}

// ---------------------------------------------------------------------------------------------
// Dropout: multiply by a fixed mask

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
    use crate::model::layers::softmax_last_dim;
    use candle_core::{Device, Var, D};

    fn max_abs(t: &Tensor) -> f32 {
        t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        max_abs(&(a - b).unwrap())
    }

    /// Largest difference relative to the largest magnitude of the reference.
    fn rel_diff(a: &Tensor, reference: &Tensor) -> f32 {
        max_diff(a, reference) / max_abs(reference).max(1e-12)
    }

    fn randn(shape: impl Into<Shape>, seed: u64) -> Var {
        // Deterministic pseudo-random values without depending on candle's unseedable generator.
        let shape = shape.into();
        let n = shape.elem_count();
        let values: Vec<f32> = (0..n).map(|i| ((i as f32 + seed as f32 * 0.37) * 12.9898).sin() * 1.7).collect();
        Var::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    /// Gradients of `sum(f(..) * probe)` for the fused and composed versions must agree.
    fn probe(shape: &[usize], seed: u64) -> Tensor {
        randn(shape.to_vec(), seed).as_tensor().detach()
    }

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
    fn masked_softmax_matches_composed_forward_and_backward() {
        let (batch, heads, len) = (3, 4, 21);
        let scores = randn((batch, heads, len, len), 11);
        let keep: Vec<f32> = (0..batch * len).map(|i| if i % len < len - i / len * 3 { 1.0 } else { 0.0 }).collect();
        let keep = Tensor::from_vec(keep, (batch, len), &Device::Cpu).unwrap();
        let min = f64::from(f32::MIN);
        let mask = keep.affine(-min, min).unwrap();
        let p = probe(&[batch, heads, len, len], 12);
        let scale = 0.125;
        let fused = masked_softmax(&scores, &mask, scale).unwrap();
        let composed = softmax_last_dim(
            &(scores.as_tensor() * scale).unwrap().broadcast_add(&mask.reshape((batch, 1, 1, len)).unwrap()).unwrap(),
        )
        .unwrap();
        assert!(max_diff(&fused, &composed) < 1e-6);
        let masked = fused.narrow(0, 2, 1).unwrap().narrow(D::Minus1, len - 6, 6).unwrap();
        assert_eq!(masked.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        let gf = (fused * &p).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (composed * &p).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(rel_diff(gf.get(&scores).unwrap(), gc.get(&scores).unwrap()) < 1e-5);
    }

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

    #[test]
    fn column_sums_are_independent_of_chunking() {
        let values: Vec<f32> = (0..3 * 100_000).map(|i| (i % 7) as f32).collect();
        let sums = column_sums(&values, 3);
        let expected: Vec<f32> =
            (0..3).map(|c| values.iter().skip(c).step_by(3).map(|&v| f64::from(v)).sum::<f64>() as f32).collect();
        assert_eq!(sums, expected);
    }
}
