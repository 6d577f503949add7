//! BERT's embedding sum, `words[ids] + token_types[types] + positions[position ids]`, as one op
//! whose word-table gradient is accumulated by row.
//!
//! Composed, the sum is two `index_select`s, two adds and a broadcast, and the word table's
//! gradient (30522 x 384 for BERT's vocabulary: 47 MB) is built by `index_add` into a fresh zero
//! table, then added by candle's gradient store into another fresh zero table: about five passes
//! over 47 MB per step for the few hundred rows a batch touches. Here the table comes zeroed from
//! the allocator (fresh pages, not a fill) and only the touched rows are written, each summed in
//! row order as `index_add` sums them. Inside [`collect_table_grads`] (which `Gradients::backward`
//! uses) the table also bypasses candle's store, which would add it into yet another zero table.
//! Measured on MiniLM at batch 8: 6 ms instead of 12 ms for the backward pass and one read of the
//! gradient. The optimizer sees the same dense gradient either way, so AdamW's result is the one
//! the composed form gives, bit for bit.

use std::cell::RefCell;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::grad_sink::hand_over;
use super::storage::{cpu_tensor, f32_slice, with_f32};
use super::threads::{par_row_chunks, zeroed};
use crate::Result;

thread_local! {
    /// Word-table gradients handed over outside candle's store, while a collection is active.
    static TABLE_GRADS: RefCell<Option<Vec<(Tensor, Tensor)>>> = const { RefCell::new(None) };
}

/// Runs `f` (a backward pass) on this thread, collecting the word-table gradients that embedding
/// ops hand over directly instead of through candle's gradient store: (table, gradient) pairs that
/// the caller must add to the gradients `f` returns. Outside such a call the gradients go through
/// candle as any other.
pub fn collect_table_grads<R>(f: impl FnOnce() -> R) -> (R, Vec<(Tensor, Tensor)>) {
    let (out, collected) = super::with_local(&TABLE_GRADS, Some(Vec::new()), f);
    (out, collected.unwrap_or_default())
}

/// Which row of the position table each token reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Positions {
    /// `0..seq` in every sequence (BERT).
    Sequential,
    /// RoBERTa's: tokens that are not padding count from `pad + 1`; padding tokens read row `pad`,
    /// which gets no gradient (`nn.Embedding(padding_idx=pad)`).
    AfterPadding { pad: u32 },
}

impl Positions {
    /// The position id of each token of `ids` ([batch, seq], row-major).
    pub(crate) fn ids(&self, ids: &[u32], seq: usize) -> Vec<u32> {
        match *self {
            Self::Sequential => (0..ids.len()).map(|r| (r % seq) as u32).collect(),
            Self::AfterPadding { pad } => ids
                .chunks(seq.max(1))
                .flat_map(|row| {
                    row.iter().scan(pad, move |count, &id| match id == pad {
                        true => Some(pad),
                        false => {
                            *count += 1;
                            Some(*count)
                        }
                    })
                })
                .collect(),
        }
    }

    /// The table row that gets no gradient.
    pub(crate) fn pad(&self) -> Option<u32> {
        match *self {
            Self::Sequential => None,
            Self::AfterPadding { pad } => Some(pad),
        }
    }
}

struct EmbeddingSumOp {
    /// Word ids, token types and position ids, one per row of the output ([batch * seq]).
    ids: Vec<u32>,
    types: Vec<u32>,
    positions: Vec<u32>,
    /// The padding id, whose row gets no gradient (`nn.Embedding(padding_idx=...)`).
    pad: Option<u32>,
    /// The position row that gets no gradient.
    position_pad: Option<u32>,
}

impl EmbeddingSumOp {
    /// Checks every id against its table's row count.
    fn check(&self, words: usize, types: usize, positions: usize) -> candle_core::Result<()> {
        if let Some((r, id)) = self.ids.iter().enumerate().find(|(_, &id)| id as usize >= words) {
            candle_core::bail!("embeddings: input id {id} at position {r} is outside the vocabulary of {words}");
        }
        if let Some((r, t)) = self.types.iter().enumerate().find(|(_, &t)| t as usize >= types) {
            candle_core::bail!("embeddings: token type {t} at position {r} is outside the {types} types");
        }
        if let Some(&p) = self.positions.iter().max().filter(|&&p| p as usize >= positions) {
            candle_core::bail!("embeddings: position {p} is outside the {positions} positions of the model");
        }
        Ok(())
    }
}

impl CustomOp3 for EmbeddingSumOp {
    fn name(&self) -> &'static str {
        "fused-embedding-sum"
    }

    /// `words` [vocab, hidden], `types` [type_vocab, hidden], `positions` [max_positions, hidden].
    fn cpu_fwd(
        &self,
        w: &CpuStorage,
        wl: &Layout,
        t: &CpuStorage,
        tl: &Layout,
        p: &CpuStorage,
        pl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let _profile = crate::kernels::cpu::profile::op("embedding-sum", "forward");
        let ((vocab, h), (type_vocab, th), (positions, ph)) =
            (wl.shape().dims2()?, tl.shape().dims2()?, pl.shape().dims2()?);
        if th != h || ph != h {
            candle_core::bail!("embeddings: widths {h}, {th}, {ph} differ");
        }
        self.check(vocab, type_vocab, positions)?;
        let (words, types, pos) =
            (f32_slice(w, wl, "word table")?, f32_slice(t, tl, "type table")?, f32_slice(p, pl, "position table")?);
        let rows = self.ids.len();
        let mut out = zeroed(rows * h);
        par_row_chunks(
            &mut out,
            h,
            || (),
            |range, chunk, _| {
                for (r, o) in range.zip(chunk.chunks_exact_mut(h)) {
                    let word = &words[self.ids[r] as usize * h..][..h];
                    let kind = &types[self.types[r] as usize * h..][..h];
                    let at = &pos[self.positions[r] as usize * h..][..h];
                    // (words + types) + positions: the composed form's order of additions.
                    for (((o, w), k), a) in o.iter_mut().zip(word).zip(kind).zip(at) {
                        *o = (w + k) + a;
                    }
                }
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((rows, h))))
    }

    fn bwd(
        &self,
        words: &Tensor,
        types: &Tensor,
        positions: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let _profile = crate::kernels::cpu::profile::op("embedding-sum", "backward");
        let ((vocab, h), type_vocab, max_positions) = (words.dims2()?, types.dim(0)?, positions.dim(0)?);
        let (d_words, d_types, d_pos) = with_f32(grad, "embedding grad", |g| {
            // Each id's rows summed in row order, as index_add adds them into zeros.
            // calloc: the OS hands over zero pages, and only the touched rows are written.
            let mut d_words = vec![0f32; vocab * h];
            let mut d_types = vec![0f32; type_vocab * h];
            let mut d_pos = vec![0f32; max_positions * h];
            for (r, row) in g.chunks_exact(h).enumerate() {
                let kind = &mut d_types[self.types[r] as usize * h..][..h];
                kind.iter_mut().zip(row).for_each(|(d, v)| *d += v);
                if Some(self.positions[r]) != self.position_pad {
                    let at = &mut d_pos[self.positions[r] as usize * h..][..h];
                    at.iter_mut().zip(row).for_each(|(d, v)| *d += v);
                }
                if Some(self.ids[r]) != self.pad {
                    let word = &mut d_words[self.ids[r] as usize * h..][..h];
                    word.iter_mut().zip(row).for_each(|(d, v)| *d += v);
                }
            }
            Ok((d_words, d_types, d_pos))
        })?;
        // The tables' gradients go to a sink first, where there is one (ZeRO-2).
        let d_words = hand_over(words, cpu_tensor(d_words, (vocab, h))?)?.and_then(|d_words| {
            TABLE_GRADS.with(|t| match t.borrow_mut().as_mut() {
                Some(collected) => {
                    collected.push((words.clone(), d_words));
                    None
                }
                None => Some(d_words),
            })
        });
        Ok((
            d_words,
            hand_over(types, cpu_tensor(d_types, (type_vocab, h))?)?,
            hand_over(positions, cpu_tensor(d_pos, (max_positions, h))?)?,
        ))
    }
}

/// `words[ids] + types[token_types] + positions[position ids]` for `ids` and `token_types`
/// [batch, seq]: [batch * seq, hidden], the position ids as `order` lays them out. Rows whose id is
/// `pad` send no gradient to the word table. Without a type (or position) table every token reads
/// a zero row there.
pub(crate) fn embedding_sum(
    (words, types, positions): (&Tensor, Option<&Tensor>, Option<&Tensor>),
    ids: &Tensor,
    token_types: &Tensor,
    pad: Option<u32>,
    order: &Positions,
) -> Result<Tensor> {
    let (_, seq) = ids.dims2()?;
    let ids = ids.flatten_all()?.to_dtype(candle_core::DType::U32)?.to_vec1::<u32>()?;
    let (types, token_types) = match types {
        Some(table) => {
            (table.contiguous()?, token_types.flatten_all()?.to_dtype(candle_core::DType::U32)?.to_vec1::<u32>()?)
        }
        // A constant zero row: nothing is added, and its gradient goes nowhere.
        None => (Tensor::zeros((1, words.dim(1)?), words.dtype(), words.device())?, vec![0; ids.len()]),
    };
    let (positions, position_ids) = match positions {
        Some(table) => (table.contiguous()?, order.ids(&ids, seq)),
        None => (Tensor::zeros((1, words.dim(1)?), words.dtype(), words.device())?, vec![0; ids.len()]),
    };
    let op = EmbeddingSumOp { positions: position_ids, ids, types: token_types, pad, position_pad: order.pad() };
    Ok(words.contiguous()?.apply_op3(&types, &positions, op)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::testing::{max_diff, probe, randn};
    use candle_core::Device;

    #[test]
    fn matches_composed_embeddings_and_hands_the_word_gradient_over() {
        let (vocab, types, positions, h, b, l) = (50, 2, 16, 8, 3, 6);
        let (w, t, p) = (randn((vocab, h), 1), randn((types, h), 2), randn((positions, h), 3));
        // Id 0 is padding; id 7 repeats, within a row and across rows.
        let ids: Vec<u32> = vec![7, 3, 7, 9, 0, 0, 1, 7, 2, 8, 4, 0, 5, 6, 7, 7, 11, 12];
        let kinds: Vec<u32> = (0..b * l).map(|i| u32::from(i % l >= 3)).collect();
        let ids = Tensor::from_vec(ids, (b, l), &Device::Cpu).unwrap();
        let kinds = Tensor::from_vec(kinds, (b, l), &Device::Cpu).unwrap();
        let g = probe(&[b * l, h], 4);

        let ours = embedding_sum((&w, Some(&t), Some(&p)), &ids, &kinds, Some(0), &Positions::Sequential).unwrap();
        let flat = ids.flatten_all().unwrap();
        let words = w.index_select(&flat, 0).unwrap();
        let is_pad = flat.eq(0f64).unwrap().unsqueeze(1).unwrap().broadcast_as((b * l, h)).unwrap();
        let words = is_pad.where_cond(&words.detach(), &words).unwrap();
        let kinds_rows = t.index_select(&kinds.flatten_all().unwrap(), 0).unwrap();
        let at = p.narrow(0, 0, l).unwrap();
        let composed = (words + kinds_rows)
            .unwrap()
            .reshape((b, l, h))
            .unwrap()
            .broadcast_add(&at)
            .unwrap()
            .reshape((b * l, h))
            .unwrap();
        assert_eq!(max_diff(&ours, &composed), 0.0);

        let loss = |x: Tensor| (x * &g).unwrap().sum_all().unwrap();
        let reference = loss(composed).backward().unwrap();
        let through_candle = loss(ours.clone()).backward().unwrap();
        for (name, v) in [("words", &w), ("types", &t), ("positions", &p)] {
            let d = max_diff(through_candle.get(v).unwrap(), reference.get(v).unwrap());
            assert!(d < 1e-6, "d{name} differs by {d}");
        }
        let d_words = through_candle.get(&w).unwrap();
        assert_eq!(max_diff(d_words, reference.get(&w).unwrap()), 0.0, "word rows sum in index_add's order");
        let pad_row = d_words.get(0).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(pad_row, 0.0, "the padding row gets no gradient");

        // Collected, the word gradient bypasses candle's store and arrives beside it, the same.
        let ours = embedding_sum((&w, Some(&t), Some(&p)), &ids, &kinds, Some(0), &Positions::Sequential).unwrap();
        let (store, handed) = collect_table_grads(|| loss(ours).backward());
        let store = store.unwrap();
        assert!(store.get(&w).is_none());
        assert_eq!(handed.len(), 1);
        assert_eq!(handed[0].0.id(), w.id());
        assert_eq!(max_diff(&handed[0].1, d_words), 0.0);
        assert!(store.get(&t).is_some() && store.get(&p).is_some());
    }

    #[test]
    fn out_of_range_ids_name_the_position() {
        let (w, t, p) = (randn((10, 4), 1), randn((2, 4), 2), randn((8, 4), 3));
        let ids = Tensor::from_vec(vec![1u32, 10, 2], (1, 3), &Device::Cpu).unwrap();
        let kinds = Tensor::zeros((1, 3), candle_core::DType::U32, &Device::Cpu).unwrap();
        let err = embedding_sum((&w, Some(&t), Some(&p)), &ids, &kinds, None, &Positions::Sequential)
            .unwrap_err()
            .to_string();
        assert!(err.contains("input id 10 at position 1"), "{err}");
    }

    #[test]
    fn positions_after_padding_count_real_tokens_and_skip_the_padding_row() {
        let order = Positions::AfterPadding { pad: 1 };
        assert_eq!(order.ids(&[0, 5, 6, 2, 1, 1, 0, 7, 2, 1, 1, 1], 6), [2, 3, 4, 5, 1, 1, 2, 3, 4, 1, 1, 1]);
        let (w, p) = (randn((10, 4), 1), randn((8, 4), 3));
        let ids = Tensor::from_vec(vec![0u32, 5, 2, 1], (1, 4), &Device::Cpu).unwrap();
        let none = Tensor::zeros((1, 4), candle_core::DType::U32, &Device::Cpu).unwrap();
        let ours = embedding_sum((&w, None, Some(&p)), &ids, &none, Some(1), &order).unwrap();
        let rows = Tensor::new(&[2u32, 3, 4, 1], &Device::Cpu).unwrap();
        let composed =
            (w.index_select(&ids.flatten_all().unwrap(), 0).unwrap() + p.index_select(&rows, 0).unwrap()).unwrap();
        assert_eq!(max_diff(&ours, &composed), 0.0);
        let g = ours.sum_all().unwrap().backward().unwrap();
        let d_pos = g.get(&p).unwrap().to_vec2::<f32>().unwrap();
        assert!(d_pos[1].iter().all(|&v| v == 0.0) && d_pos[2].iter().all(|&v| v == 1.0), "{d_pos:?}");
        let err =
            embedding_sum((&w, None, Some(&randn((4, 4), 3))), &ids, &none, Some(1), &order).unwrap_err().to_string();
        assert!(err.contains("position 4 is outside the 4 positions"), "{err}");
    }
}
