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

use std::ops::Range;
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::autocast;
use super::bf16::{to_bf16, Bf16};
use super::gemm::{matmul_into, Element, SharedMut, Threads, View};
use super::simd::{masked_softmax_columns, masked_softmax_row, softmax_backward_row};
use super::storage::{cpu_tensor, f32_slice, with_f32};
use super::threads::{par_each, sized_chunks, sized_ranges, zeroed};
use super::tile_products::{self, Kernel, Packed, Session, Staged, ROWS};
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
type Bf16Projections = [Arc<Vec<Bf16>>; 3];

/// Where each sequence's rows sit in the [rows, hidden] projections: one after the other, all at
/// the batch's padded length or packed at their own lengths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sequences {
    starts: Vec<usize>,
    lens: Vec<usize>,
}

impl Sequences {
    /// `batch` sequences of `seq` rows each (padding included, masked by the additive mask).
    pub(crate) fn padded(batch: usize, seq: usize) -> Self {
        Self { starts: (0..batch).map(|b| b * seq).collect(), lens: vec![seq; batch] }
    }

    /// Sequences of `lens` rows, packed one after the other.
    pub(crate) fn packed(lens: &[usize]) -> Self {
        let starts = lens.iter().scan(0, |next, &len| Some(std::mem::replace(next, *next + len))).collect();
        Self { starts, lens: lens.to_vec() }
    }

    fn rows(&self) -> usize {
        self.lens.iter().sum()
    }
}

struct AttentionOp {
    seqs: Sequences,
    heads: usize,
    scale: f32,
    /// Additive mask over keys, one value per row: the padding mask, or zeros for packed rows.
    mask: Vec<f32>,
    /// Where each (sequence, head) pair's len x len block starts in `probs` and `dropout`, in
    /// pair order; the total last.
    blocks: Vec<usize>,
    /// Dropout on the probabilities, a block per pair: 0 or 1/(1-p).
    dropout: Option<Vec<f32>>,
    /// A sliding window: each query sees the keys at most this far away (ModernBERT's local layers).
    window: Option<usize>,
    /// Whether the products take bf16 inputs (chosen at forward time).
    bf16: bool,
    /// Whether a backward pass can follow (a projection is in the autograd graph): only then are
    /// the probabilities kept.
    keep_probs: bool,
    /// The softmax output of the forward pass, a block per pair, for the backward pass.
    probs: Mutex<Option<Arc<Vec<f32>>>>,
    /// The bf16 projections: the copies the projection layers made (when they did) before the
    /// forward pass, those it made after, for the backward pass.
    projections: Mutex<Option<Bf16Projections>>,
}

/// Where a work item's attention probabilities go: its chunk of the buffer kept for the backward
/// pass, or a block of its own that each pair overwrites.
enum ProbsOut<'a> {
    Kept(&'a mut [f32]),
    Scratch(Vec<f32>),
}

/// One (sequence, head) pair: its length, the offset of its block in a [rows, hidden]
/// projection, its keys' additive mask and its block of the probabilities.
struct Pair<'a> {
    len: usize,
    at: usize,
    mask: &'a [f32],
    block: Range<usize>,
}

impl AttentionOp {
    /// Rows, hidden width and head width of a [rows, hidden] projection.
    fn dims(&self, layout: &Layout, what: &str) -> candle_core::Result<(usize, usize, usize)> {
        let (rows, hidden) = layout.shape().dims2()?;
        if rows != self.seqs.rows() || hidden % self.heads != 0 {
            candle_core::bail!(
                "fused attention: {what} is {:?}, expected [{} rows, a multiple of {} heads]",
                layout.dims(),
                self.seqs.rows(),
                self.heads
            );
        }
        Ok((rows, hidden, hidden / self.heads))
    }

    fn pair(&self, pair: usize, hidden: usize, head_dim: usize) -> Pair<'_> {
        let (s, h) = (pair / self.heads, pair % self.heads);
        let (start, len) = (self.seqs.starts[s], self.seqs.lens[s]);
        Pair {
            len,
            at: start * hidden + h * head_dim,
            mask: &self.mask[start..][..len],
            block: self.blocks[pair]..self.blocks[pair + 1],
        }
    }

    /// Each pair's number of probabilities, in pair order: what the work items are cut by.
    fn block_sizes(&self) -> Vec<usize> {
        self.blocks.windows(2).map(|w| w[1] - w[0]).collect()
    }

    /// The additive mask of `key` for `query`: the key's own `m`, or outside a window the
    /// smallest float (set rather than added, so that a row masked throughout stays finite).
    fn windowed(&self, m: f32, query: usize, key: usize) -> f32 {
        match self.window {
            Some(w) if query.abs_diff(key) > w => f32::MIN,
            _ => m,
        }
    }

    /// The largest block: the scratch each work item needs.
    fn largest_block(&self) -> usize {
        self.seqs.lens.iter().map(|l| l * l).max().unwrap_or(0)
    }

    /// Scores, softmax (into `probs`, where the backward pass needs them; else into each work
    /// item's scratch), dropout and context (into `context`) for every pair.
    fn forward<T: Element>(
        &self,
        (q, k, v): (&[T], &[T], &[T]),
        hidden: usize,
        probs: Option<&mut [f32]>,
        context: SharedMut,
    ) {
        let d = hidden / self.heads;
        let scratch = self.largest_block();
        let longest = self.seqs.lens.iter().copied().max().unwrap_or(0);
        // Each work item: its pairs, and where their probabilities go (a chunk of `probs`, or a
        // block of its own reused pair after pair).
        let targets: Vec<(Range<usize>, ProbsOut<'_>)> = match probs {
            Some(probs) => sized_chunks(probs, &self.block_sizes())
                .into_iter()
                .map(|(pairs, c)| (pairs, ProbsOut::Kept(c)))
                .collect(),
            None => sized_ranges(&self.block_sizes())
                .into_iter()
                .map(|pairs| (pairs, ProbsOut::Scratch(vec![0f32; scratch])))
                .collect(),
        };
        let items = targets
            .into_iter()
            .map(|(pairs, target)| {
                (pairs, target, vec![0f32; scratch], vec![T::default(); scratch], vec![0f32; longest])
            })
            .collect();
        par_each(items, |(pairs, target, scores, staged, band)| {
            let base = self.blocks[pairs.start];
            for pair in pairs.clone() {
                let Pair { len: l, at, mask, block } = self.pair(pair, hidden, d);
                if l == 0 {
                    continue;
                }
                let p = match target {
                    ProbsOut::Kept(chunk) => &mut chunk[block.start - base..block.end - base],
                    ProbsOut::Scratch(own) => &mut own[..l * l],
                };
                let (scores, staged) = (&mut scores[..l * l], &mut staged[..l * l]);
                // SAFETY: the views stay inside q, k, v; `scores` is l x l.
                unsafe {
                    let (qv, kv) = (View::new(&q[at..], hidden), View::new(&k[at..], hidden));
                    pair_matmul(l, l, d, scores.as_mut_ptr(), l, qv, kv.t());
                }
                for (i, (s, p)) in scores.chunks_exact(l).zip(p.chunks_exact_mut(l)).enumerate() {
                    match self.window {
                        // Keys beyond the window are masked as padding is (see `windowed`).
                        Some(_) => {
                            let band = &mut band[..l];
                            band.iter_mut().zip(mask).enumerate().for_each(|(j, (b, &m))| *b = self.windowed(m, i, j));
                            masked_softmax_row(s, band, self.scale, p);
                        }
                        None => masked_softmax_row(s, mask, self.scale, p),
                    }
                }
                let drop = self.dropout.as_ref().map(|m| &m[block]);
                let w = weights(p, drop, scores, staged);
                // SAFETY: this pair's block of `context` is written by this pair only.
                unsafe {
                    let (wv, vv) = (View::new(w, l), View::new(&v[at..], hidden));
                    pair_matmul(l, d, l, context.at(at), hidden, wv, vv);
                }
            }
        });
    }

    /// The gradients of q, k and v (into `dq`, `dk`, `dv`) from the context gradient `g`.
    fn backward<T: Element>(
        &self,
        (q, k, v, g): (&[T], &[T], &[T], &[T]),
        hidden: usize,
        probs: &[f32],
        (dq, dk, dv): (SharedMut, SharedMut, SharedMut),
    ) {
        let d = hidden / self.heads;
        let scratch = self.largest_block();
        // Work items over pairs, with two f32 and one T scratch blocks each.
        let items = sized_ranges(&self.block_sizes())
            .into_iter()
            .map(|r| (r, vec![0f32; scratch], vec![0f32; scratch], vec![T::default(); scratch]))
            .collect();
        par_each(items, |(pairs, d_weights, ds, staged)| {
            for pair in pairs.clone() {
                let Pair { len: l, at, block, .. } = self.pair(pair, hidden, d);
                if l == 0 {
                    continue;
                }
                let (d_weights, ds, staged) = (&mut d_weights[..l * l], &mut ds[..l * l], &mut staged[..l * l]);
                let p = &probs[block.clone()];
                let drop = self.dropout.as_ref().map(|m| &m[block]);
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

/// A work item's buffers for the products on the matrix instructions.
#[derive(Default)]
struct Tiles {
    /// The pair's keys (rows) and values (transposed: a row per head dimension).
    keys: Staged,
    values: Staged,
    /// A block of 16 queries (transposed), then its weights (a pair of keys per row).
    queries: Packed,
    weights: Packed,
    /// The block's scores and probabilities, a row of 16 queries per key; its context, a row of
    /// 16 queries per head dimension.
    scores: Vec<f32>,
    context: Vec<f32>,
    /// The mask in the scores' layout.
    mask: Vec<f32>,
}

impl AttentionOp {
    /// [`Self::forward`] without a backward pass to follow (no probabilities kept), on bf16
    /// projections with the products on `kernel`, 16 queries at a time and transposed: scores =
    /// keys x queries^T, so that the softmax over keys runs down columns (every step elementwise
    /// on vectors of 16 queries, no reduction across lanes), and context^T = values^T x
    /// weights^T, whose right operand is the probability block itself, rounded and paired as it
    /// is packed.
    fn forward_tiles(&self, kernel: Kernel, (q, k, v): (&[Bf16], &[Bf16], &[Bf16]), hidden: usize, context: SharedMut) {
        let d = hidden / self.heads;
        let items = sized_ranges(&self.block_sizes()).into_iter().map(|pairs| (pairs, Tiles::default())).collect();
        par_each(items, |(pairs, tiles)| {
            let session = Session::start(kernel);
            let Tiles { keys, values, queries, weights, scores, context: out, mask: block_mask } = tiles;
            for pair in pairs.clone() {
                let Pair { len: l, at, mask, block } = self.pair(pair, hidden, d);
                if l == 0 {
                    continue;
                }
                keys.rows(&k[at..], hidden, l, d);
                values.transposed(&v[at..], hidden, d, l);
                let drop = self.dropout.as_ref().map(|m| &m[block]);
                scores.resize(keys.height() * ROWS, 0.0);
                out.resize(values.height() * ROWS, 0.0);
                for first in (0..l).step_by(ROWS) {
                    let rows = (l - first).min(ROWS);
                    queries.pack_transposed(&q[at + first * hidden..], hidden, d, rows);
                    keys.product(&session, queries, scores);
                    // With a window, each query of the block has its own mask over the keys.
                    block_mask.clear();
                    if self.window.is_some() {
                        for (j, &m) in mask.iter().enumerate() {
                            block_mask.extend((first..first + ROWS).map(|query| self.windowed(m, query, j)));
                        }
                    }
                    let p = &mut scores[..l * ROWS];
                    masked_softmax_columns(p, mask, block_mask, self.scale);
                    if let Some(m) = drop {
                        for (j, row) in p.chunks_exact_mut(ROWS).enumerate() {
                            row[..rows].iter_mut().enumerate().for_each(|(i, x)| *x *= m[(first + i) * l + j]);
                        }
                    }
                    weights.pack_rounded16(p, l);
                    values.product(&session, weights, out);
                    // SAFETY: these rows of this pair's block of `context` are this item's alone
                    // (written, never read: the buffer is not initialized before).
                    unsafe {
                        for i in 0..rows {
                            let row = context.at(at + (first + i) * hidden);
                            (0..d).for_each(|c| row.add(c).write(out[c * ROWS + i]));
                        }
                    }
                }
            }
        });
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    /// `q`, `k`, `v`: [rows, hidden]. Returns the context, [rows, hidden].
    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        ql: &Layout,
        k: &CpuStorage,
        kl: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let _profile = crate::kernels::cpu::profile::op("attention", "forward");
        let (rows, hidden, _) = self.dims(ql, "query")?;
        if kl.dims() != ql.dims() || vl.dims() != ql.dims() {
            candle_core::bail!("fused attention: query {:?}, key {:?}, value {:?}", ql.dims(), kl.dims(), vl.dims());
        }
        let (q, k, v) = (f32_slice(q, ql, "query")?, f32_slice(k, kl, "key")?, f32_slice(v, vl, "value")?);
        // Kept for the backward pass; without one (evaluation) each work item reuses a block.
        let mut probs = self.keep_probs.then(|| zeroed(self.blocks[self.blocks.len() - 1]));
        // Every pair writes its rows' columns of its head, so every value is written: no zero fill.
        let mut context: Vec<f32> = Vec::with_capacity(rows * hidden);
        let out = SharedMut(context.as_mut_ptr());
        if self.bf16 {
            let made = self.projections.lock().unwrap_or_else(|e| e.into_inner()).take();
            let projections = match made {
                Some(made) if made.iter().all(|p| p.len() == q.len()) => made,
                _ => [q, k, v].map(|x| Arc::new(to_bf16(x))),
            };
            let [qb, kb, vb] = &projections;
            let qkv = (&qb[..], &kb[..], &vb[..]);
            // The transposed blocks pay where no probabilities are kept (evaluation); kept ones
            // would be written across the grain, and a training step's attention measured a
            // tenth slower that way.
            match tile_products::kernel().filter(|_| probs.is_none()) {
                Some(kernel) => self.forward_tiles(kernel, qkv, hidden, out),
                None => self.forward(qkv, hidden, probs.as_deref_mut(), out),
            }
            *self.projections.lock().unwrap_or_else(|e| e.into_inner()) = Some(projections);
        } else {
            self.forward((q, k, v), hidden, probs.as_deref_mut(), out);
        }
        // SAFETY: the forward pass wrote all rows x hidden values (see above).
        unsafe { context.set_len(rows * hidden) };
        *self.probs.lock().unwrap_or_else(|e| e.into_inner()) = probs.map(Arc::new);
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
        let _profile = crate::kernels::cpu::profile::op("attention", "backward");
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
                let [qb, kb, vb] = &projections;
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

/// Multi-head attention context for projections `q`, `k`, `v` ([rows, hidden], f32 on the CPU;
/// each sequence's rows where `seqs` says): softmax(q k^T * scale + mask) per sequence and head,
/// times the dropout mask when given, times v. `mask` is additive, [batch, seq], for padded
/// sequences; packed ones need none. `dropout` holds a len x len block per (sequence, head), in that
/// order (see `Dropout::draw`). With a `window`, a query sees only the keys at most that many
/// positions away. Inside a bf16 [`Autocast`](super::autocast::Autocast) scope both products read
/// bf16 inputs; the softmax stays f32.
pub(crate) fn attention(
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    seqs: Sequences,
    heads: usize,
    mask: Option<&Tensor>,
    scale: f64,
    dropout: Option<Vec<f32>>,
    window: Option<usize>,
) -> Result<Tensor> {
    let rows = seqs.rows();
    let mask = match mask {
        Some(mask) => mask.flatten_all()?.to_vec1::<f32>()?,
        None => vec![0f32; rows],
    };
    if mask.len() != rows {
        crate::bail!("fused attention: a mask of {} values for {rows} rows", mask.len());
    }
    let blocks: Vec<usize> = std::iter::once(0)
        .chain(seqs.lens.iter().flat_map(|&l| std::iter::repeat_n(l * l, heads)).scan(0, |total, n| {
            *total += n;
            Some(*total)
        }))
        .collect();
    if let Some(m) = &dropout {
        if m.len() != blocks[blocks.len() - 1] {
            crate::bail!(
                "fused attention: a dropout mask of {} values for {heads} heads over sequences of {:?}",
                m.len(),
                seqs.lens
            );
        }
    }
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let cache = autocast::active();
    // The bf16 copies the projection layers handed over, when all three did.
    let made = cache.as_ref().and_then(|c| Some([c.kept_input(&q)?, c.kept_input(&k)?, c.kept_input(&v)?]));
    let op = AttentionOp {
        seqs,
        heads,
        scale: scale as f32,
        mask,
        blocks,
        dropout,
        window,
        bf16: cache.is_some(),
        keep_probs: q.track_op() || k.track_op() || v.track_op(),
        probs: Mutex::new(None),
        projections: Mutex::new(made),
    };
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

        let ours =
            attention((&q, &k, &v), Sequences::padded(b, l), heads, Some(&mask), 0.25, Some(drop), None).unwrap();
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

    /// A sliding window masks the keys farther than it from each query, as an additive band of
    /// the smallest float would, forward and backward; packed sequences get the same band.
    #[test]
    fn a_window_masks_far_keys_forward_and_backward() {
        let (b, l, heads, hidden, w) = (2, 9, 2, 8, 2);
        let (q, k, v) = (randn((b * l, hidden), 11), randn((b * l, hidden), 12), randn((b * l, hidden), 13));
        let mask = Tensor::zeros((b, l), candle_core::DType::F32, &Device::Cpu).unwrap();
        let ones = Tensor::ones((b, heads, l, l), candle_core::DType::F32, &Device::Cpu).unwrap();
        let probe = randn((b * l, hidden), 14);
        let ours = attention((&q, &k, &v), Sequences::packed(&[l, l]), heads, None, 0.25, None, Some(w)).unwrap();
        // The composed reference with the band folded into the scores (0 inside, f32::MIN outside).
        let band: Vec<f32> = (0..l * l).map(|x| if (x / l).abs_diff(x % l) > w { f32::MIN } else { 0.0 }).collect();
        let band = Tensor::from_vec(band, (1, 1, l, l), &Device::Cpu).unwrap();
        let d = hidden / heads;
        let split = |t: &Tensor| t.reshape((b, l, heads, d)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
        let scores = (split(&q).matmul(&split(&k).t().unwrap()).unwrap() * 0.25).unwrap().broadcast_add(&band).unwrap();
        let reference = softmax_last_dim(&scores).unwrap().matmul(&split(&v)).unwrap();
        let reference = reference.transpose(1, 2).unwrap().reshape((b * l, hidden)).unwrap();
        assert!(max_diff(&ours, &reference) < 1e-6);
        let unbanded = composed(&q, &k, &v, (b, l, heads), &mask, &ones);
        assert!(max_diff(&ours, &unbanded) > 1e-3, "the window changed something");
        let g_ours = (ours * probe.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        let g_ref = (reference * probe.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, t) in [("q", &q), ("k", &k), ("v", &v)] {
            let (a, r) = (g_ours.get(t).unwrap(), g_ref.get(t).unwrap());
            assert!(max_diff(a, r) < 1e-5, "d{name} differs by {}", max_diff(a, r));
        }
    }

    #[test]
    fn without_dropout_is_plain_attention() {
        let (b, l, heads, hidden) = (2, 5, 4, 16);
        let (q, k, v) = (randn((b * l, hidden), 5), randn((b * l, hidden), 6), randn((b * l, hidden), 7));
        let mask = Tensor::zeros((b, l), candle_core::DType::F32, &Device::Cpu).unwrap();
        let ones = Tensor::ones((b, heads, l, l), candle_core::DType::F32, &Device::Cpu).unwrap();
        let ours = attention((&q, &k, &v), Sequences::padded(b, l), heads, Some(&mask), 0.25, None, None).unwrap();
        assert!(max_diff(&ours, &composed(&q, &k, &v, (b, l, heads), &mask, &ones)) < 1e-6);
        let wrong =
            attention((&q, &k, &v), Sequences::padded(b, l), heads, Some(&mask), 0.25, Some(vec![1.0; 3]), None);
        assert!(wrong.unwrap_err().to_string().contains("dropout mask of 3 values"));
    }

    /// Packed sequences at their own lengths give what padded ones give at their real rows: the
    /// context and, from a loss that reads real rows only (as a model's does), every gradient.
    #[test]
    fn packed_sequences_match_padded_ones_at_their_real_rows() {
        let (l, heads, hidden, lens) = (6, 2, 8, [6usize, 2, 4]);
        let b = lens.len();
        let padded_rows: Vec<u32> =
            lens.iter().enumerate().flat_map(|(s, &n)| (0..n).map(move |p| (s * l + p) as u32)).collect();
        let real = Tensor::new(&padded_rows[..], &Device::Cpu).unwrap();
        let (q, k, v) = (randn((b * l, hidden), 11), randn((b * l, hidden), 12), randn((b * l, hidden), 13));
        let mask: Vec<f32> = (0..b * l).map(|i| if i % l < lens[i / l] { 0.0 } else { f32::MIN }).collect();
        let mask = Tensor::from_vec(mask, (b, l), &Device::Cpu).unwrap();
        let drop: Vec<f32> = (0..b * heads * l * l).map(|i| if i % 7 == 0 { 0.0 } else { 1.25 }).collect();
        // The packed mask: each pair's block is the top-left len x len corner of its padded block.
        let packed_drop: Vec<f32> = (0..b * heads)
            .flat_map(|pair| {
                let n = lens[pair / heads];
                let block = &drop[pair * l * l..][..l * l];
                (0..n).flat_map(move |i| block[i * l..][..n].to_vec())
            })
            .collect();
        let probe = randn((padded_rows.len(), hidden), 14);

        let padded =
            attention((&q, &k, &v), Sequences::padded(b, l), heads, Some(&mask), 0.25, Some(drop), None).unwrap();
        let padded = padded.index_select(&real, 0).unwrap();
        let pack = |t: &Var| Var::from_tensor(&t.index_select(&real, 0).unwrap()).unwrap();
        let (pq, pk, pv) = (pack(&q), pack(&k), pack(&v));
        let packed =
            attention((&pq, &pk, &pv), Sequences::packed(&lens), heads, None, 0.25, Some(packed_drop), None).unwrap();
        assert!(max_diff(&packed, &padded) < 1e-6, "context differs by {}", max_diff(&packed, &padded));

        let g_padded = (padded * probe.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        let g_packed = (packed * probe.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, t, p) in [("q", &q, &pq), ("k", &k, &pk), ("v", &v, &pv)] {
            let a = g_padded.get(t).unwrap().index_select(&real, 0).unwrap();
            let ours = g_packed.get(p).unwrap();
            assert!(max_diff(ours, &a) < 1e-5, "d{name} differs by {}", max_diff(ours, &a));
            assert!(max_diff(ours, &ours.zeros_like().unwrap()) > 1e-3, "d{name} is zero");
        }
        let wrong = attention((&pq, &pk, &pv), Sequences::packed(&[6, 2, 5]), heads, None, 0.25, None, None);
        assert!(wrong.unwrap_err().to_string().contains("expected [13 rows"));
        // Sequences of no rows: nothing to compute, forward or backward.
        let empty = Var::zeros((0, hidden), candle_core::DType::F32, &Device::Cpu).unwrap();
        let none = attention((&empty, &empty, &empty), Sequences::padded(2, 0), heads, None, 0.25, None, None).unwrap();
        assert_eq!(none.dims(), [0, hidden]);
        none.sum_all().unwrap().backward().unwrap();
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
        let ours = autocast
            .run(|| attention((&q, &k, &v), Sequences::padded(b, l), heads, Some(&mask), 0.25, Some(drop), None))
            .unwrap();
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

    /// Without a backward pass, bf16 attention runs on the matrix instructions where the CPU has
    /// them (transposed blocks, 16 queries at a time): the same context as the library's per-pair
    /// products within the rounding of the probabilities to bf16, for padded and packed sequences
    /// longer than a block, with a window and with dropout.
    #[test]
    fn matrix_instructions_give_the_library_path_context() {
        use crate::kernels::{Autocast, MixedPrecision};
        if !crate::kernels::cpu::testing::bf16_available("matrix_instructions_give_the_library_path_context") {
            return;
        }
        let Some(kernel) = tile_products::kernel() else {
            eprintln!("skipped: no AMX-BF16 or AVX512-BF16 here");
            return;
        };
        let _autocast = Autocast::new(MixedPrecision::Bf16, &Default::default()).unwrap();
        let bf16 = |t: &Var| to_bf16(&t.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap());
        // Heads of 32 values, and of 19 (an odd depth, off the tiles' 32).
        for (lens, padded, window, dropout, (heads, hidden)) in [
            (vec![37, 37], true, None, false, (2, 64)),
            (vec![37, 5, 16, 33], false, None, true, (2, 64)),
            (vec![40, 40], true, Some(3), false, (2, 64)),
            (vec![37, 37], true, None, true, (3, 57)),
        ] {
            let seqs = if padded { Sequences::padded(lens.len(), lens[0]) } else { Sequences::packed(&lens) };
            let rows = seqs.rows();
            let (q, k, v) = (randn((rows, hidden), 41), randn((rows, hidden), 42), randn((rows, hidden), 43));
            let (qb, kb, vb) = (bf16(&q), bf16(&k), bf16(&v));
            // The last 4 keys of the first padded sequence are padding.
            let mask: Vec<f32> =
                (0..rows).map(|r| if padded && (33..37).contains(&r) { f32::MIN } else { 0.0 }).collect();
            let blocks: Vec<usize> = std::iter::once(0)
                .chain(lens.iter().flat_map(|&l| std::iter::repeat_n(l * l, heads)).scan(0, |t, n| {
                    *t += n;
                    Some(*t)
                }))
                .collect();
            let total = blocks[blocks.len() - 1];
            let dropout = dropout.then(|| (0..total).map(|i| if i % 7 == 0 { 0.0 } else { 1.25 }).collect());
            let op = AttentionOp {
                seqs,
                heads,
                scale: 0.2,
                mask,
                blocks,
                dropout,
                window,
                bf16: true,
                keep_probs: false,
                probs: Mutex::new(None),
                projections: Mutex::new(None),
            };
            let (mut tiles, mut library) = (vec![f32::NAN; rows * hidden], vec![f32::NAN; rows * hidden]);
            op.forward_tiles(kernel, (&qb, &kb, &vb), hidden, SharedMut(tiles.as_mut_ptr()));
            op.forward((&qb[..], &kb[..], &vb[..]), hidden, None, SharedMut(library.as_mut_ptr()));
            let scale = library.iter().fold(0f32, |m, x| m.max(x.abs()));
            let worst = tiles.iter().zip(&library).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst.is_finite() && worst < 1e-2 * scale, "{lens:?}: differs by {worst} (scale {scale})");
        }
        // Through `attention`: tensors outside the graph take this path.
        let (heads, hidden) = (2, 64);
        let (q, k, v) = (randn((20, hidden), 51), randn((20, hidden), 52), randn((20, hidden), 53));
        let plain = |t: &Var| t.as_tensor().detach();
        let ours = _autocast
            .run(|| {
                attention((&plain(&q), &plain(&k), &plain(&v)), Sequences::padded(1, 20), heads, None, 0.2, None, None)
            })
            .unwrap();
        let reference =
            _autocast.run(|| attention((&q, &k, &v), Sequences::padded(1, 20), heads, None, 0.2, None, None)).unwrap();
        let d = crate::kernels::cpu::testing::rel_diff(&ours, &reference);
        assert!(d < 1e-2, "{d}");
    }
}
