//! `LayerNorm(dropout(x) + residual)`, the end of every BERT attention and feed-forward block, as one fused CPU op with its backward pass.
//!
//! Composed, the block is three graph nodes (dropout, residual add, LayerNorm), each a pass over a
//! [batch * seq, hidden] matrix forward and backward, and autograd allocates and adds a gradient
//! at each. This op reads `x` and `residual` once, keeps nothing but its inputs, and in backward
//! recomputes the sum it normalized. Dropout multiplies by the same mask `Dropout::forward` would
//! draw, and `x * mask + residual` is the same arithmetic, so results equal the composed form.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::autocast::{copy_slot, hand_over_copy, leave_copy, output_copy, CopySlot};
use super::simd::{layer_norm_backward_rows, layer_norm_rows};
use super::storage::{cpu_tensor, f32_slice, with_f32};
use super::threads::{init_zeroed, par_each, par_new_rows, row_ranges, rows_per_chunk};
use crate::Result;

struct ResidualLayerNormOp {
    eps: f32,
    /// Dropout on `x`, same shape: 0 or 1/(1-p).
    dropout: Option<Vec<f32>>,
    /// Under a bf16 autocast, where the output's bf16 copy goes (the next layer's products read it).
    copy: Option<CopySlot>,
}

impl ResidualLayerNormOp {
    /// `x * mask + residual` for the values `span` of the flattened inputs.
    fn sum_into(&self, x: &[f32], residual: &[f32], span: std::ops::Range<usize>, out: &mut [f32]) {
        let (x, r) = (&x[span.clone()], &residual[span.clone()]);
        match &self.dropout {
            Some(mask) => {
                let m = &mask[span];
                for (((o, &x), &m), &r) in out.iter_mut().zip(x).zip(m).zip(r) {
                    *o = x * m + r;
                }
            }
            None => out.iter_mut().zip(x).zip(r).for_each(|((o, &x), &r)| *o = x + r),
        }
    }

    /// The backward pass in one pass over the rows, each chunk on one thread: the sum the
    /// LayerNorm read (recomputed into the chunk's scratch), its gradient (the residual's), the
    /// gradient of `x` (the sum's through the dropout mask, where there is one), and the chunk's
    /// weight and bias gradients, added in chunk order.
    fn backward_values(&self, x: &[f32], r: &[f32], w: &[f32], g: &[f32]) -> Gradients {
        let width = w.len();
        let rows = x.len() / width.max(1);
        let dx_len = if self.dropout.is_some() { x.len() } else { 0 };
        let (mut d_sum, mut dx) = (Vec::with_capacity(x.len()), Vec::with_capacity(dx_len));
        let chunk = rows_per_chunk(width) * width.max(1);
        let dx_chunks = dx.spare_capacity_mut()[..dx_len].chunks_mut(chunk);
        let items: Vec<_> = row_ranges(rows, width)
            .zip(d_sum.spare_capacity_mut()[..x.len()].chunks_mut(chunk))
            .zip(dx_chunks.map(Some).chain(std::iter::repeat_with(|| None)))
            .map(|((range, d), m)| (range, d, m, (Vec::new(), vec![0f32; width], vec![0f32; width])))
            .collect();
        let done = par_each(items, |(range, d, m, (sum, dw, db))| {
            let span = range.start * width..range.end * width;
            sum.resize(span.len(), 0.0);
            self.sum_into(x, r, span.clone(), sum);
            let d = init_zeroed(d);
            layer_norm_backward_rows(sum, &g[span.clone()], w, self.eps, d, dw, db);
            if let (Some(m), Some(mask)) = (m.as_deref_mut(), &self.dropout) {
                let m = init_zeroed(m);
                m.iter_mut().zip(&*d).zip(&mask[span]).for_each(|((o, d), k)| *o = d * k);
            }
        });
        let (mut dw, mut db) = (vec![0f32; width], vec![0f32; width]);
        for (_, _, _, (_, pw, pb)) in done {
            dw.iter_mut().zip(&pw).for_each(|(a, v)| *a += v);
            db.iter_mut().zip(&pb).for_each(|(a, v)| *a += v);
        }
        // SAFETY: every chunk of both was written (zeroed, then overwritten) above.
        unsafe {
            d_sum.set_len(x.len());
            dx.set_len(dx_len);
        }
        Gradients { d_sum, dx: self.dropout.is_some().then_some(dx), dw, db }
    }
}

/// The gradients of one backward pass: of the sum (the residual's), of `x` where dropout makes
/// it differ, and of the LayerNorm's weight and bias.
struct Gradients {
    d_sum: Vec<f32>,
    dx: Option<Vec<f32>>,
    dw: Vec<f32>,
    db: Vec<f32>,
}

impl CustomOp3 for ResidualLayerNormOp {
    fn name(&self) -> &'static str {
        "fused-residual-layer-norm"
    }

    /// `x`, `residual`: [rows, width]; `weight_bias`: [2, width] (LayerNorm weight, then bias).
    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        r: &CpuStorage,
        rl: &Layout,
        wb: &CpuStorage,
        wbl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let _profile = crate::kernels::cpu::profile::op("residual-layer-norm", "forward");
        let (rows, width) = xl.shape().dims2()?;
        if rl.dims() != xl.dims() || wbl.dims() != [2, width] {
            candle_core::bail!(
                "residual layer norm: x {:?}, residual {:?}, weight+bias {:?}",
                xl.dims(),
                rl.dims(),
                wbl.dims()
            );
        }
        if self.dropout.as_ref().is_some_and(|m| m.len() != rows * width) {
            candle_core::bail!("residual layer norm: dropout mask does not match x {:?}", xl.dims());
        }
        let (x, r) = (f32_slice(x, xl, "residual layer norm input")?, f32_slice(r, rl, "residual")?);
        let wb = f32_slice(wb, wbl, "layer-norm weight and bias")?;
        let (w, b) = wb.split_at(width);
        let copy = output_copy(&self.copy, x.len());
        let (ys, _) = par_new_rows(x.len(), width, Vec::new, |rows, out, sum| {
            let span = rows.start * width..rows.end * width;
            sum.resize(span.len(), 0.0);
            self.sum_into(x, r, span.clone(), sum);
            layer_norm_rows(sum, w, b, self.eps, out);
            if let Some(copy) = &copy {
                // SAFETY: each chunk's values are written by the one thread that runs the chunk.
                unsafe { copy.write(span.start, out) };
            }
        });
        // SAFETY: the chunks cover every value.
        unsafe { leave_copy(&self.copy, copy) };
        Ok((CpuStorage::F32(ys), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        residual: &Tensor,
        weight_bias: &Tensor,
        _ys: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let _profile = crate::kernels::cpu::profile::op("residual-layer-norm", "backward");
        let (_, width) = x.dims2()?;
        with_f32(x, "residual layer norm input", |xs| {
            with_f32(residual, "residual", |r| {
                with_f32(weight_bias, "layer-norm weight and bias", |wb| {
                    with_f32(grad, "residual layer norm grad", |g| {
                        let Gradients { d_sum, dx, dw, db } = self.backward_values(xs, r, &wb[..width], g);
                        // Without dropout both inputs get the same gradient: one tensor, shared.
                        let d_sum = cpu_tensor(d_sum, x.shape())?;
                        let dx = match dx {
                            Some(dx) => cpu_tensor(dx, x.shape())?,
                            None => d_sum.clone(),
                        };
                        let d_wb = [dw, db].concat();
                        Ok((Some(dx), Some(d_sum), Some(cpu_tensor(d_wb, (2, width))?)))
                    })
                })
            })
        })
    }
}

/// `LayerNorm(x * dropout + residual)` over the last dimension, with `x` and `residual` [rows,
/// width] f32 on the CPU and `dropout` the mask `Dropout::draw` gave (or none).
pub(crate) fn residual_layer_norm(
    xs: &Tensor,
    residual: &Tensor,
    (weight, bias): (&Tensor, &Tensor),
    eps: f64,
    dropout: Option<Vec<f32>>,
) -> Result<Tensor> {
    let weight_bias = Tensor::stack(&[weight, bias], 0)?;
    let slot = copy_slot();
    let op = ResidualLayerNormOp { eps: eps as f32, dropout, copy: slot.clone() };
    let ys = xs.contiguous()?.apply_op3(&residual.contiguous()?, &weight_bias, op)?;
    hand_over_copy(&ys, slot);
    Ok(ys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::testing::max_diff;
    use candle_core::{Device, Var};

    fn var(values: Vec<f32>, shape: (usize, usize)) -> Var {
        Var::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn matches_dropout_add_layer_norm_forward_and_backward() {
        let (rows, width) = (5, 12);
        let wave = |seed: usize| -> Vec<f32> {
            (0..rows * width).map(|i| ((i * 37 + seed * 11) % 23) as f32 * 0.17 - 1.9).collect()
        };
        let (x, r) = (var(wave(1), (rows, width)), var(wave(2), (rows, width)));
        let w = Var::from_vec((0..width).map(|i| 0.5 + i as f32 * 0.1).collect(), width, &Device::Cpu).unwrap();
        let b = Var::from_vec((0..width).map(|i| i as f32 * -0.05).collect(), width, &Device::Cpu).unwrap();
        let mask: Vec<f32> = (0..rows * width).map(|i| if i % 7 == 3 { 0.0 } else { 1.25 }).collect();
        let probe = Tensor::from_vec(wave(3), (rows, width), &Device::Cpu).unwrap();

        let ours = residual_layer_norm(&x, &r, (&w, &b), 1e-12, Some(mask.clone())).unwrap();
        let mask_t = Tensor::from_vec(mask, (rows, width), &Device::Cpu).unwrap();
        let summed = ((x.as_tensor() * &mask_t).unwrap() + r.as_tensor()).unwrap();
        // The fused LayerNorm (itself tested against the composed one) on the composed sum.
        let reference = crate::kernels::cpu::layer_norm(&summed, &w, &b, 1e-12).unwrap();
        assert_eq!(ours.to_vec2::<f32>().unwrap(), reference.to_vec2::<f32>().unwrap());

        let g_ours = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let g_ref = (reference * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, t) in
            [("x", x.as_tensor()), ("residual", r.as_tensor()), ("weight", w.as_tensor()), ("bias", b.as_tensor())]
        {
            let (a, e) = (g_ours.get(t).unwrap(), g_ref.get(t).unwrap());
            assert!(max_diff(a, e) < 1e-5, "d{name} differs by {}", max_diff(a, e));
        }
        // Dropped elements of x get no gradient.
        assert_eq!(g_ours.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()[3], 0.0);
    }

    #[test]
    fn under_bf16_the_output_comes_with_its_bf16_copy() {
        use crate::kernels::cpu::autocast::{handed_over, with_composed_bf16};
        let (rows, width) = (300, 384);
        let wave = |seed: usize| -> Vec<f32> {
            (0..rows * width).map(|i| ((i * 37 + seed * 11) % 23) as f32 * 0.17 - 1.9).collect()
        };
        let (x, r) = (var(wave(1), (rows, width)), var(wave(2), (rows, width)));
        let w = Var::from_vec(vec![0.7f32; width], width, &Device::Cpu).unwrap();
        let b = Var::from_vec(vec![0.1f32; width], width, &Device::Cpu).unwrap();
        let ((copy, expected), _) = with_composed_bf16(&Default::default(), || {
            handed_over(&residual_layer_norm(&x, &r, (&w, &b), 1e-12, None).unwrap())
        });
        assert_eq!(copy, expected);
    }
}
