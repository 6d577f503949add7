//! ZeRO's slices of the flat buckets: every bucket of [`super::buckets`] cut into `world` equal
//! blocks (the last ones padded), rank r owning block r. Slices follow bytes, not parameters, so
//! each rank owns about 1/world of every bucket whatever the parameter sizes; a table larger than a
//! bucket (the word embeddings) gets a bucket of its own and is split like any other. The
//! parameters are taken in the order backward makes their gradients ([`backward_order`]), so that
//! ZeRO-2's buckets ([`super::scatter`]) fill one after the other.
//!
//! The collectives on the slices: this rank's slices read from gradients that are already averaged
//! (ZeRO-1), and the updated slices all-gathered back into every rank's parameters.

use std::ops::Range;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Tensor, Var};

use super::buckets::buckets;
use super::ProcessGroup;
use crate::kernels::cpu::storage::with_f32;
use crate::model::Params;
use crate::Result;

/// What is sharded over the ranks: DeepSpeed's ZeRO stages 0 to 2 (`zero_stage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum ZeroStage {
    /// Stage 0, DDP: every rank holds the whole model, its gradients and AdamW's moments.
    #[default]
    Replicated,
    /// Stage 1: AdamW's moments sharded; gradients all-reduced whole.
    Optimizer,
    /// Stage 2: AdamW's moments and the averaged gradients sharded (gradients reduce-scattered).
    Gradients,
}

impl ZeroStage {
    pub fn number(self) -> u8 {
        match self {
            Self::Replicated => 0,
            Self::Optimizer => 1,
            Self::Gradients => 2,
        }
    }

    /// What the stage shards, for logs and `accel env`.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Replicated => "ZeRO stage 0 (DDP: weights, gradients and AdamW's moments on every rank)",
            Self::Optimizer => "ZeRO stage 1 (AdamW's moments sharded over the ranks)",
            Self::Gradients => "ZeRO stage 2 (AdamW's moments and the averaged gradients sharded over the ranks)",
        }
    }
}

impl TryFrom<u8> for ZeroStage {
    type Error = String;

    fn try_from(n: u8) -> std::result::Result<Self, String> {
        match n {
            0 => Ok(Self::Replicated),
            1 => Ok(Self::Optimizer),
            2 => Ok(Self::Gradients),
            _ => Err(format!(
                "zero_stage {n}: accel has stages 0 (DDP), 1 (AdamW's moments sharded) and 2 (moments and gradients sharded)"
            )),
        }
    }
}

impl From<ZeroStage> for u8 {
    fn from(stage: ZeroStage) -> u8 {
        stage.number()
    }
}

/// One bucket's cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketShard {
    /// The parameters the bucket holds, in the bucket's order (indices into the name-ordered list).
    pub params: Vec<usize>,
    /// Elements in the bucket.
    pub len: usize,
    /// Elements per rank: `len` divided by the world size, rounded up.
    pub block: usize,
    /// This rank's elements of the bucket (empty when the bucket has fewer elements than ranks).
    pub owned: Range<usize>,
    /// The parts of parameters that fall in `owned`, in order.
    pub pieces: Vec<Piece>,
}

impl BucketShard {
    /// The first parameter (the bucket's device is its device).
    pub fn first(&self) -> usize {
        self.params[0]
    }
}

/// The part of one parameter inside this rank's slice of a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// The parameter's index.
    pub param: usize,
    /// Its elements (row-major) that fall in the slice.
    pub within: Range<usize>,
    /// Where they start in the slice.
    pub at: usize,
}

/// How the buckets of a parameter list are cut over the ranks, seen from one rank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardLayout {
    world: usize,
    rank: usize,
    buckets: Vec<BucketShard>,
}

impl ShardLayout {
    /// The cut for parameters of `sizes` elements taken in `order` (indices into `sizes`), in
    /// buckets of about `bucket_bytes`, seen from `rank` of `world`.
    pub fn new(sizes: &[usize], order: &[usize], bucket_bytes: usize, world: usize, rank: usize) -> Self {
        let world = world.max(1);
        let buckets = buckets(order.iter().map(|&i| sizes[i]), bucket_bytes)
            .into_iter()
            .map(|positions| {
                let params: Vec<usize> = order[positions].to_vec();
                let len: usize = params.iter().map(|&i| sizes[i]).sum();
                let block = len.div_ceil(world);
                let owned = (rank * block).min(len)..((rank + 1) * block).min(len);
                let mut pieces = Vec::new();
                let mut start = 0;
                for &i in &params {
                    let end = start + sizes[i];
                    let (lo, hi) = (start.max(owned.start), end.min(owned.end));
                    if lo < hi {
                        pieces.push(Piece { param: i, within: lo - start..hi - start, at: lo - owned.start });
                    }
                    start = end;
                }
                BucketShard { params, len, block, owned, pieces }
            })
            .collect();
        Self { world, rank, buckets }
    }

    /// The cut of `params` over the ranks of `pg`, the parameters taken in [`backward_order`].
    pub fn of(params: &Params, bucket_bytes: usize, pg: &dyn ProcessGroup) -> Self {
        let sizes: Vec<usize> = params.iter().map(|(_, v)| v.elem_count()).collect();
        let names: Vec<&str> = params.names().collect();
        Self::new(&sizes, &backward_order(&names), bucket_bytes, pg.world_size(), pg.rank())
    }

    pub fn buckets(&self) -> &[BucketShard] {
        &self.buckets
    }

    pub fn world(&self) -> usize {
        self.world
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Elements this rank owns over all buckets.
    pub fn owned_elements(&self) -> usize {
        self.buckets.iter().map(|b| b.owned.len()).sum()
    }
}

/// The order in which a BERT's backward pass makes its parameters' gradients, as far as the names
/// tell: the model's modules from last to first (the head, the pooler, layer N-1 ... layer 0, the
/// embeddings; layer numbers compared as numbers), with the LayerNorm parameters, whose gradients
/// candle delivers at the pass's end, last of all. Buckets cut in this order fill one after the
/// other during backward, so ZeRO-2 can reduce each as it fills.
pub fn backward_order(names: &[&str]) -> Vec<usize> {
    /// Text and numbers apart, so that layer 10 sorts after layer 9.
    fn key(name: &str) -> Vec<(String, u64)> {
        let mut parts = Vec::new();
        let mut rest = name;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
            let text = &rest[..digits];
            let after = &rest[digits..];
            let end = after.find(|c: char| !c.is_ascii_digit()).unwrap_or(after.len());
            parts.push((text.to_string(), after[..end].parse().unwrap_or(0)));
            rest = &after[end..];
        }
        parts
    }
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by(|&a, &b| {
        let norm = |i: usize| names[i].contains("LayerNorm");
        norm(a).cmp(&norm(b)).then_with(|| key(names[b]).cmp(&key(names[a])))
    });
    order
}

/// ZeRO-1: this rank's slices of gradients that every rank already holds averaged (one tensor per
/// bucket, a copy of its own). A parameter without a gradient counts as zeros.
pub fn owned_slices(store: &GradStore, vars: &[Var], layout: &ShardLayout) -> Result<Vec<Tensor>> {
    let slices = slices_of(vars, &layout.buckets, |var, within| match store.get(var.as_tensor()) {
        Some(g) => Ok(g.flatten_all()?.narrow(0, within.start, within.len())?),
        None => Ok(Tensor::zeros(within.len(), DType::F32, var.device())?),
    })?;
    // A slice of one piece is a view of the gradient: copied, so that its owner may scale it.
    slices.into_iter().map(|s| Ok(s.copy()?)).collect()
}

/// This rank's slices of the parameters themselves (one tensor per bucket, a copy).
pub fn param_slices(vars: &[Var], layout: &ShardLayout) -> Result<Vec<Tensor>> {
    slices_of(vars, &layout.buckets, param_piece)
}

/// Elements `within` of a parameter, as a flat view.
fn param_piece(var: &Var, within: &Range<usize>) -> Result<Tensor> {
    Ok(var.as_tensor().flatten_all()?.narrow(0, within.start, within.len())?)
}

/// One tensor per bucket: the parts `part(var, elements)` gives for the pieces of this rank's
/// slice, put end to end.
fn slices_of(
    vars: &[Var],
    buckets: &[BucketShard],
    part: impl Fn(&Var, &Range<usize>) -> Result<Tensor>,
) -> Result<Vec<Tensor>> {
    buckets
        .iter()
        .map(|bucket| {
            let parts = bucket.pieces.iter().map(|p| part(&vars[p.param], &p.within)).collect::<Result<Vec<_>>>()?;
            if parts.is_empty() {
                return Ok(Tensor::zeros(0, DType::F32, vars[bucket.first()].device())?);
            }
            Ok(Tensor::cat(&parts, 0)?.contiguous()?)
        })
        .collect()
}

/// Every rank's slice of bucket `bucket` put together: the bucket's `len` values in order, on the
/// host. `owned` is this rank's slice (padded here to the bucket's block).
pub fn all_gather_bucket(pg: &dyn ProcessGroup, bucket: &BucketShard, owned: Vec<f32>) -> Result<Vec<f32>> {
    let mut send = owned;
    send.resize(bucket.block, 0.0);
    let mut recv = vec![0f32; bucket.block * pg.world_size()];
    pg.all_gather_bytes(bytemuck::cast_slice(&send), bytemuck::cast_slice_mut(&mut recv))?;
    recv.truncate(bucket.len);
    Ok(recv)
}

/// Writes every rank's updated slices into every rank's parameters: one all-gather per bucket, in
/// f32. `updated` holds, per bucket, this rank's updated slice where the optimizer could not write
/// it in place (a GPU's), or `None` where this rank's parameters already hold it.
///
/// On the CPU each bucket is gathered in place in `scratch` (kept by the caller from one step to the
/// next, so that its pages are not faulted in again): this rank's pieces are copied to its block,
/// and only the other ranks' elements are written back into the parameters' storage.
pub fn all_gather_params(
    vars: &[Var],
    layout: &ShardLayout,
    updated: &[Option<Tensor>],
    scratch: &mut Vec<f32>,
    pg: &dyn ProcessGroup,
) -> Result<()> {
    gather_params(vars, layout, updated, scratch, GATHER_ROUND, pg)
}

/// [`all_gather_params`] with host rounds of `round` elements per rank.
fn gather_params(
    vars: &[Var],
    layout: &ShardLayout,
    updated: &[Option<Tensor>],
    scratch: &mut Vec<f32>,
    round: usize,
    pg: &dyn ProcessGroup,
) -> Result<()> {
    for (k, (bucket, slice)) in layout.buckets.iter().zip(updated).enumerate() {
        let _span = crate::spans::enter_with(crate::spans::ALL_GATHER, Some(k));
        let device = vars[bucket.first()].device();
        if slice.is_none() && device.is_cpu() {
            gather_on_host(vars, bucket, layout.world, scratch, round, pg)?;
            continue;
        }
        let slice = match slice {
            Some(s) => s.clone(),
            None => slices_of(vars, std::slice::from_ref(bucket), param_piece)?.remove(0),
        };
        let pad = bucket.block - bucket.owned.len();
        let send = if pad > 0 {
            Tensor::cat(&[slice.clone(), Tensor::zeros(pad, DType::F32, device)?], 0)?
        } else {
            slice.contiguous()?
        };
        let recv = Tensor::zeros(bucket.block * layout.world, DType::F32, device)?;
        let flat = if pg.all_gather_on_device(&send, &recv)? {
            recv.narrow(0, 0, bucket.len)?
        } else {
            Tensor::from_vec(all_gather_bucket(pg, bucket, slice.to_vec1::<f32>()?)?, bucket.len, device)?
        };
        let mut offset = 0;
        for &i in &bucket.params {
            let var = &vars[i];
            let n = var.elem_count();
            var.set(&flat.narrow(0, offset, n)?.reshape(var.shape())?)?;
            offset += n;
        }
    }
    if vars.first().is_some_and(|v| !v.device().is_cpu()) {
        pg.finish_device_collectives()?;
    }
    Ok(())
}

/// The most elements of each rank's block one round of the host all-gather moves (1 MiB of f32):
/// the gather's buffer stays small (it would otherwise be as large as the largest bucket, the word
/// table's, for the whole run), and rounds of this size were measured as fast as one whole gather.
const GATHER_ROUND: usize = 1 << 18;

/// One bucket of CPU parameters gathered in place, in rounds through `scratch`, the other ranks'
/// elements written back into the parameters.
fn gather_on_host(
    vars: &[Var],
    bucket: &BucketShard,
    world: usize,
    scratch: &mut Vec<f32>,
    round: usize,
    pg: &dyn ProcessGroup,
) -> Result<()> {
    let rank = pg.rank();
    for first in (0..bucket.block).step_by(round) {
        // Round elements first..first + m of every rank's block; rank r's at buf[r * m..].
        let m = round.min(bucket.block - first);
        if scratch.len() < m * world {
            scratch.resize(m * world, 0.0);
        }
        let buf = &mut scratch[..m * world];
        let start = rank * bucket.block + first;
        let mine = &mut buf[rank * m..(rank + 1) * m];
        let real = bucket.len.saturating_sub(start).min(m);
        for_params_in(vars, bucket, start..start + real, |var, within, at| {
            let to = &mut mine[at..at + within.len()];
            with_f32(&param_piece(var, &within)?, "zero: parameter", |values| {
                to.copy_from_slice(values);
                Ok(())
            })?;
            Ok(())
        })?;
        mine[real..].fill(0.0);
        pg.all_gather_in_place_f32(buf)?;
        for r in (0..world).filter(|&r| r != rank) {
            let start = r * bucket.block + first;
            let values = &buf[r * m..(r + 1) * m];
            for_params_in(vars, bucket, start..(start + m).min(bucket.len).max(start), |var, within, at| {
                let op = WriteAt { at: within.start, values: &values[at..at + within.len()] };
                Ok(var.as_tensor().inplace_op1(&op)?)
            })?;
        }
    }
    Ok(())
}

/// Calls `f(parameter, its elements, where they start in the range)` for each parameter of
/// `bucket` that elements `range` of the bucket cover, in order.
fn for_params_in(
    vars: &[Var],
    bucket: &BucketShard,
    range: Range<usize>,
    mut f: impl FnMut(&Var, Range<usize>, usize) -> Result<()>,
) -> Result<()> {
    let mut offset = 0;
    for &i in &bucket.params {
        let n = vars[i].elem_count();
        let (lo, hi) = (range.start.max(offset), range.end.min(offset + n));
        if lo < hi {
            f(&vars[i], lo - offset..hi - offset, lo - range.start)?;
        }
        offset += n;
        if offset >= range.end {
            break;
        }
    }
    Ok(())
}

/// Writes `values` over elements `at..` of a contiguous f32 CPU tensor, in its own storage.
struct WriteAt<'a> {
    at: usize,
    values: &'a [f32],
}

impl InplaceOp1 for WriteAt<'_> {
    fn name(&self) -> &'static str {
        "write-at"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let (CpuStorage::F32(data), Some((start, end))) = (storage, layout.contiguous_offsets()) else {
            candle_core::bail!("zero: a parameter must be a contiguous f32 tensor")
        };
        if self.at + self.values.len() > end - start {
            candle_core::bail!("zero: {} values at {} do not fit {}", self.values.len(), self.at, end - start);
        }
        data[start + self.at..start + self.at + self.values.len()].copy_from_slice(self.values);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributed::ThreadGroup;
    use candle_core::Device;

    #[test]
    fn slices_follow_bytes_and_cover_every_element_once() {
        // Three ranks, buckets of 8 bytes (two f32): [3], [1, 2] -> 3 and 3 elements.
        let sizes = [3, 1, 2, 10];
        let order = [0, 1, 2, 3];
        let layouts: Vec<_> = (0..3).map(|r| ShardLayout::new(&sizes, &order, 8, 3, r)).collect();
        assert_eq!(layouts[0].buckets().len(), 3);
        let mut covered = vec![vec![0u8; 0]; sizes.len()];
        for (i, n) in sizes.iter().enumerate() {
            covered[i] = vec![0; *n];
        }
        for layout in &layouts {
            for bucket in layout.buckets() {
                assert_eq!(bucket.block, bucket.len.div_ceil(3));
                let mut at = 0;
                for piece in &bucket.pieces {
                    assert_eq!(piece.at, at);
                    at += piece.within.len();
                    for e in piece.within.clone() {
                        covered[piece.param][e] += 1;
                    }
                }
                assert_eq!(at, bucket.owned.len());
            }
        }
        assert!(covered.iter().flatten().all(|&c| c == 1), "{covered:?}");
        // The 10-element tensor alone in its bucket: 4, 4 and 2 elements.
        let big: Vec<usize> = layouts.iter().map(|l| l.buckets()[2].owned.len()).collect();
        assert_eq!(big, [4, 4, 2]);
        // Fewer elements than ranks: the last rank owns nothing.
        let tiny = ShardLayout::new(&[2], &[0], 4, 3, 2);
        assert!(tiny.buckets()[0].owned.is_empty() && tiny.buckets()[0].pieces.is_empty());
    }

    #[test]
    fn reduce_scatter_then_all_gather_gives_every_rank_the_mean() {
        let out = ThreadGroup::run(3, |pg| {
            let r = pg.rank() as f32;
            let a = Var::from_slice(&[0f32; 3], 3, &Device::Cpu).unwrap();
            let b = Var::from_slice(&[0f32; 4], (2, 2), &Device::Cpu).unwrap();
            let vars = vec![a.clone(), b.clone()];
            let params = Params::new(vec![("a".into(), a.clone()), ("b".into(), b.clone())]).unwrap();
            let layout = ShardLayout::of(&params, 12, pg);
            let mut store = GradStore::default();
            store.insert(a.as_tensor(), Tensor::new(&[r, 2.0 * r, 3.0], &Device::Cpu).unwrap());
            if pg.rank() == 1 {
                store.insert(b.as_tensor(), Tensor::new(&[[3f32, 6.], [9., 12.]], &Device::Cpu).unwrap());
            }
            let slices = crate::distributed::scatter::reduce_scatter_mean(&mut store, &vars, &layout, pg).unwrap();
            assert!(store.get(a.as_tensor()).is_none(), "reduced gradients leave the store");
            let slices: Vec<Option<Tensor>> = slices.into_iter().map(Some).collect();
            all_gather_params(&vars, &layout, &slices, &mut Vec::new(), pg).unwrap();
            (a.to_vec1::<f32>().unwrap(), b.to_vec2::<f32>().unwrap())
        });
        for (a, b) in out {
            assert_eq!(a, [1.0, 2.0, 3.0]);
            assert_eq!(b, [[1.0, 2.0], [3.0, 4.0]]);
        }
    }

    /// On the CPU each rank's parameters already hold its updated slice: the gather in place fills
    /// in every other rank's elements, whatever the cut (3 ranks: blocks of 4, the last padded)
    /// and the rounds (one round, and rounds of 3 that split the blocks and the parameters).
    #[test]
    fn host_gather_fills_in_the_other_ranks_elements() {
        let out = ThreadGroup::run(3, |pg| {
            let a = Var::from_slice(&[-1f32; 7], 7, &Device::Cpu).unwrap();
            let b = Var::from_slice(&[-1f32; 4], (2, 2), &Device::Cpu).unwrap();
            let vars = vec![a.clone(), b.clone()];
            let params = Params::new(vec![("a".into(), a.clone()), ("b".into(), b.clone())]).unwrap();
            // One bucket of 11 elements in backward order (b, then a): blocks of 4, 4 and 3.
            let layout = ShardLayout::of(&params, 1 << 20, pg);
            let bucket = &layout.buckets()[0];
            let value = |e: usize| (e / bucket.block * 100 + e) as f32;
            for p in &bucket.pieces {
                let start = bucket.owned.start + p.at;
                let values: Vec<f32> = (start..start + p.within.len()).map(value).collect();
                vars[p.param].as_tensor().inplace_op1(&WriteAt { at: p.within.start, values: &values }).unwrap();
            }
            let mut scratch = vec![f32::NAN; 3];
            let expected: Vec<f32> = (0..11).map(value).collect();
            let read = || [b.flatten_all().unwrap().to_vec1::<f32>().unwrap(), a.to_vec1::<f32>().unwrap()].concat();
            all_gather_params(&vars, &layout, &[None], &mut scratch, pg).unwrap();
            let whole = read();
            // The others' elements spoilt again, then gathered in rounds of 3.
            for (i, var) in vars.iter().enumerate() {
                let keep: Vec<f32> = var.flatten_all().unwrap().to_vec1().unwrap();
                var.as_tensor().inplace_op1(&WriteAt { at: 0, values: &vec![-1.0; keep.len()] }).unwrap();
                for p in bucket.pieces.iter().filter(|p| p.param == i) {
                    let mine = &keep[p.within.clone()];
                    var.as_tensor().inplace_op1(&WriteAt { at: p.within.start, values: mine }).unwrap();
                }
            }
            gather_params(&vars, &layout, &[None], &mut scratch, 3, pg).unwrap();
            (whole, read(), expected)
        });
        for (whole, rounds, expected) in out {
            assert_eq!(whole, expected);
            assert_eq!(rounds, expected);
        }
    }

    #[test]
    fn backward_order_runs_from_the_head_to_the_embeddings_with_layer_norms_last() {
        let names = [
            "bert.embeddings.LayerNorm.weight",
            "bert.embeddings.word_embeddings.weight",
            "bert.encoder.layer.0.output.dense.weight",
            "bert.encoder.layer.10.output.dense.weight",
            "bert.encoder.layer.2.output.LayerNorm.bias",
            "bert.encoder.layer.2.output.dense.weight",
            "bert.pooler.dense.weight",
            "classifier.weight",
        ];
        let ordered: Vec<&str> = backward_order(&names).into_iter().map(|i| names[i]).collect();
        assert_eq!(
            ordered,
            [
                "classifier.weight",
                "bert.pooler.dense.weight",
                "bert.encoder.layer.10.output.dense.weight",
                "bert.encoder.layer.2.output.dense.weight",
                "bert.encoder.layer.0.output.dense.weight",
                "bert.embeddings.word_embeddings.weight",
                "bert.encoder.layer.2.output.LayerNorm.bias",
                "bert.embeddings.LayerNorm.weight",
            ]
        );
    }

    #[test]
    fn owned_slices_read_the_averaged_gradients() {
        let out = ThreadGroup::run(2, |pg| {
            let a = Var::from_slice(&[0f32; 5], 5, &Device::Cpu).unwrap();
            let vars = vec![a.clone()];
            let params = Params::new(vec![("a".into(), a.clone())]).unwrap();
            let layout = ShardLayout::of(&params, 1 << 20, pg);
            let mut store = GradStore::default();
            store.insert(a.as_tensor(), Tensor::new(&[1f32, 2., 3., 4., 5.], &Device::Cpu).unwrap());
            owned_slices(&store, &vars, &layout).unwrap()[0].to_vec1::<f32>().unwrap()
        });
        assert_eq!(out, [vec![1.0, 2.0, 3.0], vec![4.0, 5.0]]);
    }
}
