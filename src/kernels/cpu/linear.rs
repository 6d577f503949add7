//! The linear layer, `y = x W^T + b`, as one op: the product added onto the bias rows, and a backward pass of two products and a column sum.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::autocast::{self, copy_slot, hand_over_copy, leave_copy, output_copy, CopySlot};
use super::bf16::{to_bf16, Bf16};
use super::gemm::{matmul, matmul_bias_into, Element, Then, View};
use super::grad_sink::hand_over;
use super::storage::{cpu_tensor, f32_slice, with_f32};
use super::threads::{par_each, row_ranges};
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

/// The bf16 side of a linear op under autocast: the step's bf16 weight, and the bf16 input (made
/// once for the layers that read the same input), kept for the weight gradient.
struct Bf16Operands {
    weight: Arc<Vec<Bf16>>,
    input: Arc<Vec<Bf16>>,
}

struct LinearOp {
    /// Set when the products take bf16 inputs (chosen at forward time).
    bf16: Option<Bf16Operands>,
    /// Where the output's bf16 copy goes, when the next products read the output.
    copy: Option<CopySlot>,
    /// GELU applied to the output in the product's pass (only where no backward pass follows).
    gelu: bool,
}

/// The two products of the backward pass: (d input, d weight) from the output gradient `g` [rows,
/// out], the weight `w` [out, in] and the input `x` [rows, in].
fn backward_products<T: Element>(
    g: &[T],
    w: &[T],
    x: &[T],
    (rows, in_dim, out_dim): (usize, usize, usize),
) -> (Vec<f32>, Vec<f32>) {
    // SAFETY: g is rows x out, w is out x in, x is rows x in.
    unsafe {
        let (g, x, w) = (View::new(g, out_dim), View::new(x, in_dim), View::new(w, in_dim));
        // [out, rows] x [rows, in] gives the weight gradient in the weight's own layout.
        (matmul(rows, in_dim, out_dim, g, w), matmul(out_dim, in_dim, rows, g.t(), x))
    }
}

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
        let _profile = crate::kernels::cpu::profile::op("linear", "forward");
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
        // Each thread writes the bias into its block of the output and adds its product to it: no
        // zero fill, no second pass.
        let mut ys = Vec::with_capacity(rows * out_dim);
        let dims = (rows, out_dim, in_dim);
        let copy = output_copy(&self.copy, rows * out_dim);
        let then = Then { gelu: self.gelu, copy: copy.as_ref(), at: 0 };
        match &self.bf16 {
            // SAFETY: x is rows x in_dim, w is out_dim x in_dim (read transposed), ys has room for
            // rows x out_dim values, all of which the product writes.
            None => unsafe {
                let (x, w) = (View::new(x, in_dim), View::new(w, in_dim).t());
                matmul_bias_into(dims, ys.as_mut_ptr(), out_dim, bias, x, w, then);
            },
            Some(bf16) => {
                if bf16.weight.len() != w.len() || bf16.input.len() != x.len() {
                    candle_core::bail!(
                        "fused-linear: bf16 weight of {} and input of {} values for {:?} and {:?}",
                        bf16.weight.len(),
                        bf16.input.len(),
                        wl.dims(),
                        xl.dims()
                    );
                }
                // SAFETY: as above, over the bf16 copies of the same shapes.
                unsafe {
                    let (x, w) = (View::new(&bf16.input[..], in_dim), View::new(&bf16.weight[..], in_dim).t());
                    matmul_bias_into(dims, ys.as_mut_ptr(), out_dim, bias, x, w, then);
                }
            }
        }
        // SAFETY: the product wrote all rows x out_dim values, and their copy where it made one.
        unsafe {
            ys.set_len(rows * out_dim);
            leave_copy(&self.copy, copy);
        }
        Ok((CpuStorage::F32(ys), Shape::from((rows, out_dim))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _ys: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let _profile = crate::kernels::cpu::profile::op("linear", "backward");
        if self.gelu {
            candle_core::bail!("fused-linear: the GELU form has no backward pass (it runs outside the graph)");
        }
        let ((rows, in_dim), out_dim) = (x.dims2()?, w.dim(0)?);
        let dims = (rows, in_dim, out_dim);
        with_f32(grad, "fused-linear grad", |g| {
            let (grad_x, grad_w) = match &self.bf16 {
                None => with_f32(x, "fused-linear input", |xs| {
                    with_f32(w, "fused-linear weight", |ws| Ok(backward_products(g, ws, xs, dims)))
                })?,
                Some(bf16) => backward_products(&to_bf16(g), &bf16.weight, &bf16.input, dims),
            };
            // The parameters' gradients go to a sink first, where there is one (ZeRO-2).
            Ok((
                Some(cpu_tensor(grad_x, (rows, in_dim))?),
                hand_over(w, cpu_tensor(grad_w, (out_dim, in_dim))?)?,
                hand_over(b, cpu_tensor(column_sums(g, out_dim), out_dim)?)?,
            ))
        })
    }
}

/// `xs` [rows, in] times `weight` [out, in] transposed, plus `bias` [out]. Inside a bf16
/// [`Autocast`](super::autocast::Autocast) scope the products read bf16 copies of `xs` and `weight`.
pub(crate) fn linear(xs: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    linear_op(xs, weight, bias, (false, false))
}

/// [`linear`] for an output that products read next (attention's projections): inside a bf16
/// scope the op also writes the output's bf16 copy, block by block as the product finishes it,
/// and hands it over to the scope.
pub(crate) fn linear_for_products(xs: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    linear_op(xs, weight, bias, (false, true))
}

/// `gelu(linear(xs))` (exact GELU). Outside the autograd graph (evaluation) the GELU runs on each
/// thread's block of the product right after it, and under bf16 the block's copy follows for the
/// next layer: one pass over the activations instead of three. In the graph, the two ops.
pub(crate) fn linear_gelu(xs: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if xs.track_op() || weight.track_op() || bias.track_op() {
        return super::gelu_erf(&linear(xs, weight, bias)?);
    }
    linear_op(xs, weight, bias, (true, true))
}

fn linear_op(xs: &Tensor, weight: &Tensor, bias: &Tensor, (gelu, copy): (bool, bool)) -> Result<Tensor> {
    // The products read plain row-major matrices (a pooler input, say, is a strided view).
    let weight = weight.contiguous()?;
    let xs = xs.contiguous()?;
    let bf16 = match autocast::active() {
        Some(cache) => Some(Bf16Operands { weight: cache.get(&weight)?, input: cache.input(&xs)? }),
        None => None,
    };
    let slot = if copy { copy_slot() } else { None };
    let ys = xs.apply_op3(&weight, &bias.contiguous()?, LinearOp { bf16, copy: slot.clone(), gelu })?;
    hand_over_copy(&ys, slot);
    Ok(ys)
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

    #[test]
    fn bf16_linear_is_the_f32_linear_of_rounded_inputs_and_converts_weights_once() {
        use crate::kernels::cpu::testing::{bf16_available, bf16_rounded};
        use crate::kernels::{Autocast, MixedPrecision, TrackedWeights};
        if !bf16_available("bf16_linear_is_the_f32_linear_of_rounded_inputs_and_converts_weights_once") {
            return;
        }
        let (x, w, b) = (randn((37, 96), 21), randn((40, 96), 22), randn(40, 23));
        // A bf16 probe makes the output gradient exactly representable, as the bf16 products see it.
        let p = bf16_rounded(&probe(&[37, 40], 24));
        let tracked = TrackedWeights::new([w.as_tensor()]);
        let autocast = Autocast::new(MixedPrecision::Bf16, &tracked).unwrap();
        let ours = autocast.run(|| linear(&x, &w, &b)).unwrap();
        let (xr, wr) = (candle_core::Var::from_tensor(&bf16_rounded(&x)).unwrap(), bf16_rounded(&w));
        let wr = candle_core::Var::from_tensor(&wr).unwrap();
        let reference = linear(&xr, &wr, &b).unwrap();
        assert!(rel_diff(&ours, &reference) < 1e-5, "{}", rel_diff(&ours, &reference));
        assert!(max_diff(&ours, &linear(&x, &w, &b).unwrap()) > 1e-4, "the bf16 path was not taken");
        let g_ours = (ours * &p).unwrap().sum_all().unwrap().backward().unwrap();
        let g_ref = (reference * &p).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, a, r) in [("x", &x, &xr), ("w", &w, &wr)] {
            let d = rel_diff(g_ours.get(a).unwrap(), g_ref.get(r).unwrap());
            assert!(d < 1e-5, "d{name}: {d}");
        }
        assert_eq!(max_diff(g_ours.get(&b).unwrap(), g_ref.get(&b).unwrap()), 0.0);
        // One conversion of the weight per version of its values, however often it is read.
        autocast.run(|| linear(&x, &w, &b)).unwrap();
        assert_eq!(autocast.conversions(), 1);
        tracked.changed();
        autocast.run(|| linear(&x, &w, &b)).unwrap();
        assert_eq!(autocast.conversions(), 2);
        // A detached tensor over the weight's storage (evaluation's layers) reads the same copy.
        autocast.run(|| linear(&x, &w.as_tensor().detach(), &b)).unwrap();
        assert_eq!(autocast.conversions(), 2);
        // A weight nobody tracks is converted at every use: no copy of it can go stale.
        let untracked = Autocast::new(MixedPrecision::Bf16, &TrackedWeights::default()).unwrap();
        untracked.run(|| linear(&x, &w, &b)).unwrap();
        untracked.run(|| linear(&x, &w, &b)).unwrap();
        assert_eq!(untracked.conversions(), 2);
    }

    #[test]
    fn bf16_projections_hand_their_copies_to_attention_which_computes_the_same() {
        use crate::kernels::cpu::autocast::{handed_over, with_composed_bf16};
        use crate::kernels::cpu::testing::bf16_available;
        use crate::kernels::cpu::{attention, Sequences};
        if !bf16_available("bf16_projections_hand_their_copies_to_attention_which_computes_the_same") {
            return;
        }
        // Rows split over the threads by rows (40 >= 24) and by columns (3 < 24): both epilogues.
        for (b, l) in [(4, 10), (1, 3)] {
            let x = randn((b * l, 48), 31);
            let layers: Vec<_> = (0..3).map(|i| (randn((24, 48), 32 + i), randn(24, 40 + i))).collect();
            let (copies_and_context, _) = with_composed_bf16(&Default::default(), || {
                let qkv: Vec<Tensor> = layers.iter().map(|(w, b)| linear_for_products(&x, w, b).unwrap()).collect();
                let copies: Vec<_> = qkv.iter().map(handed_over).collect();
                let context = attention((&qkv[0], &qkv[1], &qkv[2]), Sequences::padded(b, l), 2, None, 0.3, None, None);
                (copies, context.unwrap())
            });
            let (copies, with_copies) = copies_and_context;
            for (copy, expected) in copies {
                assert_eq!(copy, expected);
            }
            // The same layers without copies: attention converts the projections itself.
            let (converted, _) = with_composed_bf16(&Default::default(), || {
                let qkv: Vec<Tensor> = layers.iter().map(|(w, b)| linear(&x, w, b).unwrap()).collect();
                attention((&qkv[0], &qkv[1], &qkv[2]), Sequences::padded(b, l), 2, None, 0.3, None, None).unwrap()
            });
            assert_eq!(max_diff(&with_copies, &converted), 0.0);
        }
    }

    #[test]
    fn linear_gelu_outside_the_graph_is_gelu_of_linear() {
        use crate::kernels::cpu::autocast::{handed_over, with_composed_bf16};
        use crate::kernels::cpu::gelu_erf;
        use crate::kernels::cpu::testing::bf16_available;
        // Split over the threads by rows, and by columns.
        for (rows, out) in [(300, 96), (5, 700)] {
            let (x, w, b) = (randn((rows, 64), 51).detach(), randn((out, 64), 52).detach(), randn(out, 53).detach());
            let fused = linear_gelu(&x, &w, &b).unwrap();
            assert_eq!(max_diff(&fused, &gelu_erf(&linear(&x, &w, &b).unwrap()).unwrap()), 0.0);
            if bf16_available("linear_gelu_outside_the_graph_is_gelu_of_linear") {
                let ((fused, (copy, expected)), _) = with_composed_bf16(&Default::default(), || {
                    let ys = linear_gelu(&x, &w, &b).unwrap();
                    let copy = handed_over(&ys);
                    (ys, copy)
                });
                assert_eq!(copy, expected);
                // bf16 takes GELU's fused form: within f32 rounding of the two ops, not their bits.
                let (composed, _) =
                    with_composed_bf16(&Default::default(), || gelu_erf(&linear(&x, &w, &b).unwrap()).unwrap());
                let d = crate::kernels::cpu::testing::rel_diff(&fused, &composed);
                assert!(d < 1e-5, "bf16 linear + GELU differs by {d}");
            }
        }
        // In the graph it is the two ops, with their backward passes.
        let (x, w, b) = (randn((7, 16), 54), randn((8, 16), 55), randn(8, 56));
        let grads = linear_gelu(&x, &w, &b).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&w).is_some());
    }
}
