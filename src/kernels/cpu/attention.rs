//! Multi-head self-attention as one fused CPU op: scores, masked softmax, dropout and context per (batch, head), with its backward pass.
//!
//! Composed from candle ops, attention splits the heads out with three copies, runs its products as
//! batches of tiny matrices (each spread over the threads on its own), merges the heads back with a
//! fourth copy, and autograd allocates and adds a gradient for each of the ten or so nodes. This op
//! reads the query, key and value projections where they are ([batch * seq, hidden], head `h` in
//! columns `h * head_dim..`), runs each (batch, head) pair on one thread with single-threaded
//! products, and writes the context straight into the merged layout. The softmax output is kept
//! for the backward pass. Each pair's arithmetic is independent of the others and of the thread
//! count, so results do not depend on how many threads run.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::autocast;
use super::bf16::{to_bf16, Bf16};
use super::gemm::{matmul_into, Element, SharedMut, Threads, View};
use super::simd::{masked_softmax_row, softmax_backward_row};
use super::storage::{cpu_tensor, f32_slice, with_f32};
use super::threads::{par_each, par_row_chunks, row_ranges, zeroed};
use crate::Result;

/// `dst[m x n] = lhs[m x k] * rhs[k x n]` on the calling thread.
///
/// # Safety
/// As [`matmul_into`].
unsafe fn pair_matmul<T: Element>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_stride: usize,
    lhs: View<T>,
    rhs: View<T>,
) {
    matmul_into((m, n, k), dst, dst_stride, false, lhs, rhs, Threads::One)
}

/// `p * mask` (or `p`) as `T`: `p` itself for f32 without dropout, else through `staging` and `out`.
fn weights<'a, T: Element>(p: &'a [f32], drop: Option<&[f32]>, staging: &'a mut [f32], out: &'a mut [T]) -> &'a [T] {
    let weights: &[f32] = match drop {
        Some(m) => {
            staging.iter_mut().zip(p).zip(m).for_each(|((w, p), m)| *w = p * m);
            staging
        }
        None => p,
    };
    T::staged(weights, out)
}

/// The query, key and value projections as the products read them: bf16 copies under autocast.
type Bf16Projections = Arc<[Vec<Bf16>; 3]>;

struct AttentionOp {
    batch: usize,
    seq: usize,
    heads: usize,
    scale: f32,
    /// Additive mask, [batch, seq] over keys.
    mask: Vec<f32>,
    /// Dropout on the probabilities, [batch, heads, seq, seq]: 0 or 1/(1-p).
    dropout: Option<Vec<f32>>,
    /// Whether the products take bf16 inputs (chosen at forward time).
    bf16: bool,
    /// The softmax output of the forward pass, [batch, heads, seq, seq], for the backward pass.
    probs: Mutex<Option<Arc<Vec<f32>>>>,
    /// The bf16 projections the forward pass made, for the backward pass.
    projections: Mutex<Option<Bf16Projections>>,
}

impl AttentionOp {
    /// Rows, hidden width and head width of a [batch * seq, hidden] projection.
    fn dims(&self, layout: &Layout, what: &str) -> candle_core::Result<(usize, usize, usize)> {
        let (rows, hidden) = layout.shape().dims2()?;
        if rows != self.batch * self.seq || hidden % self.heads != 0 {
            candle_core::bail!(
                "fused attention: {what} is {:?}, expected [{} * {}, a multiple of {} heads]",
                layout.dims(),
                self.batch,
                self.seq,
                self.heads
            );
        }
        Ok((rows, hidden, hidden / self.heads))
    }

    /// Offset of (batch `b`, head `h`)'s block in a [batch * seq, hidden] matrix.
    fn block(&self, pair: usize, hidden: usize, head_dim: usize) -> usize {
        let (b, h) = (pair / self.heads, pair % self.heads);
        b * self.seq * hidden + h * head_dim
    }

    /// Scores, softmax (into `probs`), dropout and context (into `context`) for every pair.
    fn forward<T: Element>(&self, (q, k, v): (&[T], &[T], &[T]), hidden: usize, probs: &mut [f32], context: SharedMut) {
        let (l, d) = (self.seq, hidden / self.heads);
        par_row_chunks(
            probs,
            l * l,
            || (vec![0f32; l * l], vec![T::default(); l * l]),
            |pairs, chunk, (scores, staged)| {
                for (pair, p) in pairs.zip(chunk.chunks_exact_mut(l * l)) {
                    let at = self.block(pair, hidden, d);
                    let mask = &self.mask[(pair / self.heads) * l..][..l];
                    // SAFETY: the views stay inside q, k, v; `scores` is l x l.
                    unsafe {
                        let (qv, kv) = (View::new(&q[at..], hidden), View::new(&k[at..], hidden));
                        pair_matmul(l, l, d, scores.as_mut_ptr(), l, qv, kv.t());
                    }
                    for (s, p) in scores.chunks_exact(l).zip(p.chunks_exact_mut(l)) {
                        masked_softmax_row(s, mask, self.scale, p);
                    }
                    let drop = self.dropout.as_ref().map(|m| &m[pair * l * l..][..l * l]);
                    let w = weights(p, drop, scores, staged);
                    // SAFETY: this pair's block of `context` is written by this pair only.
                    unsafe {
                        let (wv, vv) = (View::new(w, l), View::new(&v[at..], hidden));
                        pair_matmul(l, d, l, context.at(at), hidden, wv, vv);
                    }
                }
            },
        );
    }

    /// The gradients of q, k and v (into `dq`, `dk`, `dv`) from the context gradient `g`.
    fn backward<T: Element>(
        &self,
        (q, k, v, g): (&[T], &[T], &[T], &[T]),
        hidden: usize,
        probs: &[f32],
        (dq, dk, dv): (SharedMut, SharedMut, SharedMut),
    ) {
        let (l, d) = (self.seq, hidden / self.heads);
        let pairs = self.batch * self.heads;
        // Work items over pairs, with two f32 and one T l x l scratch matrices each.
        let items = row_ranges(pairs, l * l)
            .map(|r| (r, vec![0f32; l * l], vec![0f32; l * l], vec![T::default(); l * l]))
            .collect();
        par_each(items, |(pairs, d_weights, ds, staged)| {
            for pair in pairs.clone() {
                let at = self.block(pair, hidden, d);
                let p = &probs[pair * l * l..][..l * l];
                let drop = self.dropout.as_ref().map(|m| &m[pair * l * l..][..l * l]);
                let (qv, kv) = (View::new(&q[at..], hidden), View::new(&k[at..], hidden));
                let (vv, gv) = (View::new(&v[at..], hidden), View::new(&g[at..], hidden));
                // SAFETY: views stay inside their buffers; each pair writes its own block.
                unsafe {
                    // d(weights) = dC V^T
                    pair_matmul(l, l, d, d_weights.as_mut_ptr(), l, gv, vv.t());
                    // dV = weights^T dC, with weights = P (times the dropout mask).
                    let w = weights(p, drop, ds, staged);
                    pair_matmul(l, d, l, dv.at(at), hidden, View::new(w, l).t(), gv);
                }
                if let Some(m) = drop {
                    d_weights.iter_mut().zip(m).for_each(|(w, m)| *w *= m);
                }
                // dS = softmax backward of dP, times the scale.
                let rows = p.chunks_exact(l).zip(d_weights.chunks_exact(l)).zip(ds.chunks_exact_mut(l));
                for ((p, dp), ds) in rows {
                    softmax_backward_row(p, dp, self.scale, ds);
                }
                let ds = View::new(T::staged(ds, staged), l);
                // SAFETY: as above.
                unsafe {
                    pair_matmul(l, d, l, dq.at(at), hidden, ds, kv);
                    pair_matmul(l, d, l, dk.at(at), hidden, ds.t(), qv);
                }
            }
        });
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    /// `q`, `k`, `v`: [batch * seq, hidden]. Returns the context, [batch * seq, hidden].
    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        ql: &Layout,
        k: &CpuStorage,
        kl: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, hidden, _) = self.dims(ql, "query")?;
        if kl.dims() != ql.dims() || vl.dims() != ql.dims() {
            candle_core::bail!("fused attention: query {:?}, key {:?}, value {:?}", ql.dims(), kl.dims(), vl.dims());
        }
        let (q, k, v) = (f32_slice(q, ql, "query")?, f32_slice(k, kl, "key")?, f32_slice(v, vl, "value")?);
        let l = self.seq;
        let mut probs = zeroed(self.batch * self.heads * l * l);
        let mut context = zeroed(rows * hidden);
        let out = SharedMut(context.as_mut_ptr());
        if self.bf16 {
            let projections: Bf16Projections = Arc::new([to_bf16(q), to_bf16(k), to_bf16(v)]);
            let [qb, kb, vb] = &*projections;
            self.forward((&qb[..], &kb[..], &vb[..]), hidden, &mut probs, out);
            *self.projections.lock().unwrap_or_else(|e| e.into_inner()) = Some(projections);
        } else {
            self.forward((q, k, v), hidden, &mut probs, out);
        }
        *self.probs.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(probs));
        Ok((CpuStorage::F32(context), Shape::from((rows, hidden))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _context: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(probs) = self.probs.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            candle_core::bail!("fused attention: backward before forward");
        };
        let (rows, hidden, _) = self.dims(q.layout(), "query")?;
        let (mut dq, mut dk, mut dv) = (zeroed(rows * hidden), zeroed(rows * hidden), zeroed(rows * hidden));
        let outs = (SharedMut(dq.as_mut_ptr()), SharedMut(dk.as_mut_ptr()), SharedMut(dv.as_mut_ptr()));
        with_f32(grad, "attention grad", |g| {
            if self.bf16 {
                let Some(projections) = self.projections.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
                    candle_core::bail!("fused attention: bf16 backward before forward");
                };
                let [qb, kb, vb] = &*projections;
                self.backward((&qb[..], &kb[..], &vb[..], &to_bf16(g)[..]), hidden, &probs, outs);
                return Ok(());
            }
            with_f32(q, "query", |q| {
                with_f32(k, "key", |k| {
                    with_f32(v, "value", |v| {
                        self.backward((q, k, v, g), hidden, &probs, outs);
                        Ok(())
                    })
                })
            })
        })?;
        let shape = (rows, hidden);
        Ok((Some(cpu_tensor(dq, shape)?), Some(cpu_tensor(dk, shape)?), Some(cpu_tensor(dv, shape)?)))
    }
}

/// Multi-head attention context for projections `q`, `k`, `v` ([batch * seq, hidden], f32 on the
/// CPU): softmax(q k^T * scale + mask) per head, times the dropout mask when given, times v.
/// `mask` is additive, [batch, seq]; `dropout` is [batch, heads, seq, seq] (see `Dropout::draw`).
/// Inside a bf16 [`Autocast`](super::autocast::Autocast) scope both products read bf16 inputs;
/// the softmax stays f32.
pub(crate) fn attention(
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    (batch, seq, heads): (usize, usize, usize),
    mask: &Tensor,
    scale: f64,
    dropout: Option<Vec<f32>>,
) -> Result<Tensor> {
    if let Some(m) = &dropout {
        if m.len() != batch * heads * seq * seq {
            crate::bail!("fused attention: dropout mask of {} values for {batch}x{heads}x{seq}x{seq}", m.len());
        }
    }
    let op = AttentionOp {
        batch,
        seq,
        heads,
        scale: scale as f32,
        mask: mask.flatten_all()?.to_vec1::<f32>()?,
        dropout,
        bf16: autocast::active().is_some(),
        probs: Mutex::new(None),
        projections: Mutex::new(None),
    };
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    Ok(q.apply_op3(&k, &v, op)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::composed::softmax_last_dim;
    use crate::kernels::cpu::testing::{max_diff, randn};
    use candle_core::{Device, Var};

    /// The composed candle computation the fused op replaces.
    fn composed(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        dims: (usize, usize, usize),
        mask: &Tensor,
        drop: &Tensor,
    ) -> Tensor {
        let (b, l, heads) = dims;
        let d = q.dim(1).unwrap() / heads;
        let split = |t: &Tensor| t.reshape((b, l, heads, d)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
        let (q, k, v) = (split(q), split(k), split(v));
        let scores = (q.matmul(&k.t().unwrap()).unwrap() * 0.25).unwrap();
        let probs = softmax_last_dim(&scores.broadcast_add(&mask.reshape((b, 1, 1, l)).unwrap()).unwrap()).unwrap();
        let context = (probs * drop).unwrap().matmul(&v).unwrap();
        context.transpose(1, 2).unwrap().reshape((b * l, heads * d)).unwrap()
    }

    #[test]
    fn fused_attention_matches_composed_forward_and_backward() {
        let (b, l, heads, hidden) = (3, 7, 2, 8);
        let (q, k, v) = (randn((b * l, hidden), 1), randn((b * l, hidden), 2), randn((b * l, hidden), 3));
        // The last two keys of the second sequence are padding.
        let mut mask = vec![0f32; b * l];
        mask[l + 5] = f32::MIN;
        mask[l + 6] = f32::MIN;
        let mask = Tensor::from_vec(mask, (b, l), &Device::Cpu).unwrap();
        let drop: Vec<f32> = (0..b * heads * l * l).map(|i| if i % 5 == 0 { 0.0 } else { 1.25 }).collect();
        let drop_t = Tensor::from_vec(drop.clone(), (b, heads, l, l), &Device::Cpu).unwrap();
        let probe = randn((b * l, hidden), 4);

        let ours = attention((&q, &k, &v), (b, l, heads), &mask, 0.25, Some(drop)).unwrap();
        let reference = composed(&q, &k, &v, (b, l, heads), &mask, &drop_t);
        assert!(max_diff(&ours, &reference) < 1e-6);

        let g_ours = (ours * probe.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        let g_ref = (reference * probe.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, t) in [("q", &q), ("k", &k), ("v", &v)] {
            let (a, r) = (g_ours.get(t).unwrap(), g_ref.get(t).unwrap());
            assert!(max_diff(a, r) < 1e-5, "d{name} differs by {}", max_diff(a, r));
            assert!(max_diff(a, &a.zeros_like().unwrap()) > 1e-3, "d{name} is zero");
        }
        // Padded keys get no weight, so their keys and values get no gradient from other rows.
        let dv = g_ours.get(&v).unwrap().to_vec2::<f32>().unwrap();
        assert!(dv[l + 5].iter().chain(&dv[l + 6]).all(|&x| x == 0.0));
    }

    #[test]
    fn without_dropout_is_plain_attention() {
        let (b, l, heads, hidden) = (2, 5, 4, 16);
        let (q, k, v) = (randn((b * l, hidden), 5), randn((b * l, hidden), 6), randn((b * l, hidden), 7));
        let mask = Tensor::zeros((b, l), candle_core::DType::F32, &Device::Cpu).unwrap();
        let ones = Tensor::ones((b, heads, l, l), candle_core::DType::F32, &Device::Cpu).unwrap();
        let ours = attention((&q, &k, &v), (b, l, heads), &mask, 0.25, None).unwrap();
        assert!(max_diff(&ours, &composed(&q, &k, &v, (b, l, heads), &mask, &ones)) < 1e-6);
        let wrong = attention((&q, &k, &v), (b, l, heads), &mask, 0.25, Some(vec![1.0; 3]));
        assert!(wrong.unwrap_err().to_string().contains("dropout mask of 3 values"));
    }

    #[test]
    fn bf16_attention_stays_within_bf16_rounding_of_f32() {
        use crate::kernels::cpu::testing::{bf16_available, bf16_rounded, rel_diff};
        use crate::kernels::{Autocast, MixedPrecision};
        if !bf16_available("bf16_attention_stays_within_bf16_rounding_of_f32") {
            return;
        }
        let (b, l, heads, hidden) = (2, 9, 2, 16);
        let (q, k, v) = (randn((b * l, hidden), 31), randn((b * l, hidden), 32), randn((b * l, hidden), 33));
        let mut mask = vec![0f32; b * l];
        mask[l + 8] = f32::MIN;
        let mask = Tensor::from_vec(mask, (b, l), &Device::Cpu).unwrap();
        let drop: Vec<f32> = (0..b * heads * l * l).map(|i| if i % 5 == 0 { 0.0 } else { 1.25 }).collect();
        let drop_t = Tensor::from_vec(drop.clone(), (b, heads, l, l), &Device::Cpu).unwrap();
        let probe = bf16_rounded(randn((b * l, hidden), 34).as_tensor());
        let autocast = Autocast::new(MixedPrecision::Bf16, &Default::default()).unwrap();
        let ours = autocast.run(|| attention((&q, &k, &v), (b, l, heads), &mask, 0.25, Some(drop))).unwrap();
        let rounded: Vec<Var> = [&q, &k, &v].iter().map(|t| Var::from_tensor(&bf16_rounded(t)).unwrap()).collect();
        let reference = composed(&rounded[0], &rounded[1], &rounded[2], (b, l, heads), &mask, &drop_t);
        // Inputs are exactly the rounded ones; the probabilities and the gradients between the
        // products are rounded to 8 significant bits once each: within a few 2^-8 of f32.
        let forward = rel_diff(&ours, &reference);
        assert!(forward > 0.0 && forward < 1e-2, "forward {forward}");
        let g_ours = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let g_ref = (reference * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, a, r) in [("q", &q, &rounded[0]), ("k", &k, &rounded[1]), ("v", &v, &rounded[2])] {
            let d = rel_diff(g_ours.get(a).unwrap(), g_ref.get(r).unwrap());
            assert!(d < 2e-2, "d{name}: {d}");
        }
    }
}
