//! Attention probabilities, `softmax(scores * scale + mask)` over the last dimension, with the additive mask broadcast over heads and queries.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use super::simd::{masked_softmax_row, softmax_backward_row};
use super::storage::{cpu_tensor, f32_slice, with_f32};
use super::threads::{par_row_chunks, zeroed};
use crate::Result;

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
        let _profile = crate::kernels::cpu::profile::op("masked-softmax", "forward");
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
        let _profile = crate::kernels::cpu::profile::op("masked-softmax", "backward");
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
#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::composed::softmax_last_dim;
    use crate::kernels::cpu::testing::{max_diff, probe, randn, rel_diff};
    use candle_core::{Device, D};

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
}
