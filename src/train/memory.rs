//! `accel estimate-memory`: what fine-tuning a classifier holds in memory at its peak, by
//! part (parameters, gradients, AdamW's state, the activations the backward pass reads, and under
//! bf16 the bf16 copies of weights and inputs), and a measurement of the same on this machine.
//!
//! The activation count follows what this crate's CPU kernels keep for backward, per layer for `T`
//! tokens (batch x sequence), hidden `H`, intermediate `I`, `A` heads and sequence `L`:
//! the query, key and value projections, the attention context, each dense output, each dropout
//! mask and each LayerNorm output (10 T H), the feed-forward product and its GELU (2 T I), and the
//! softmax probabilities with their dropout mask (2 batch A L^2); the embeddings keep 4 T H. All f32.
//! The families whose attention is composed from candle's ops keep more (see `Kept`).
//! Under bf16, each linear layer also keeps a bf16 copy of its input and attention a bf16 copy of
//! the three projections (16 T H + 2 T I bytes per layer), and the linear weights get a bf16 copy.
//! On top come the backward pass's working memory (about one layer's activations) and the
//! allocator's slack (15% of what each step frees and allocates again, as measured here).

use std::path::Path;

use candle_core::{Device, Tensor};

use crate::data::Batch;
use crate::distributed::{SingleProcess, ZeroStage};
use crate::kernels::{Autocast, MixedPrecision, TrackedWeights};
use crate::model::config::Arch;
use crate::model::{Model, ModelConfig};
use crate::optim::{AdamW, AdamWConfig};
use crate::{Error, Result};

use super::{optimizer_step, Gradients};

/// Bytes at the peak of a training step, by part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    pub parameters: u64,
    pub gradients: u64,
    /// AdamW's two moments.
    pub optimizer: u64,
    /// What the backward pass reads: activations, dropout masks, and under bf16 the bf16 copies of
    /// inputs and of the step's linear weights.
    pub activations: u64,
    /// What the backward pass allocates on the way: the gradients of one layer's activations.
    pub backward_work: u64,
    /// Memory the allocator holds beyond live tensors: activations and gradients are freed and
    /// allocated again every step, and freed blocks are kept for reuse (returning them to the
    /// system costs time), not all of the next step's sizes fit them. Measured at about 15% of
    /// what is reallocated each step.
    pub allocator: u64,
}

impl MemoryEstimate {
    pub fn total(&self) -> u64 {
        self.parameters + self.gradients + self.optimizer + self.activations + self.backward_work + self.allocator
    }
}

/// The number of trainable parameters of a classifier of `config`'s family with `num_labels`
/// outputs, counted from the model's own parameter list (nothing is allocated). Past three layers
/// the count grows by the third layer's parameters per layer, so any depth counts in microseconds.
pub fn parameter_count(config: &ModelConfig, num_labels: usize) -> Result<u64> {
    let count = |layers: usize| -> Result<u64> {
        let shapes = Model::parameter_shapes(&config.with_num_layers(layers), num_labels)?;
        Ok(shapes.iter().map(|(_, shape)| shape.iter().product::<usize>() as u64).sum())
    };
    let layers = config.dims().num_layers;
    if layers <= 3 {
        return count(layers);
    }
    let (two, three) = (count(2)?, count(3)?);
    Ok(three + (layers as u64 - 3) * (three - two))
}

/// What a layer of a family keeps for the backward pass, per token: vectors of the hidden and of
/// the intermediate width; per sequence and head: [seq, seq] score matrices and DeBERTa's
/// [seq, relative_width] relative-position products. Counted from the ops the layer runs: the fused
/// CPU kernels keep their inputs and outputs, composed ops every intermediate result.
struct Kept {
    hidden: u64,
    intermediate: u64,
    scores: u64,
    relative: u64,
    relative_width: u64,
}

impl Kept {
    fn of(config: &ModelConfig) -> Self {
        let plain =
            |hidden, intermediate, scores| Self { hidden, intermediate, scores, relative: 0, relative_width: 0 };
        match config.arch() {
            // The query, key and value projections, the attention context, each dense output, each
            // dropout mask and LayerNorm output; the feed-forward product and its GELU; the softmax
            // probabilities and their dropout mask.
            Arch::Bert(_) | Arch::DistilBert(_) => plain(10, 2, 2),
            // Composed attention keeps the projections and their per-head copies, the scaled keys,
            // the context and its merged copy; scores, probabilities and their dropout mask; and per
            // relative term a per-head copy of its side, the product with the relative embeddings
            // and its gathered copy (2 relative products, 2 score matrices), plus the sums.
            Arch::DebertaV2(c) => {
                let terms = match c.relative_attention {
                    true => u64::from(c.c2p()) + u64::from(c.p2c()),
                    false => 0,
                };
                Self {
                    hidden: 15 + terms,
                    intermediate: 2,
                    scores: 4 + 2 * terms + u64::from(terms > 0) + u64::from(terms == 2),
                    relative: 2 * terms,
                    relative_width: 2 * c.rel_positions() as u64,
                }
            }
            // Pre-norm: both norms' outputs and two residual sums; the fused query-key-value product
            // and its three parts, the rotary ops on the query and the key (4.5 vectors each), the
            // context and its projection; the gated block's product (two widths), the gate's input,
            // its activation and the product of the two (22 and 5). Measured, the step holds about
            // a fifth more: the backward pass of the composed ops (rotation, the gate's halves)
            // copies whole tensors; 28 and 6 match the measurement within 5% at batch 8 and 32.
            Arch::ModernBert(_) => plain(28, 6, 1),
        }
    }
}

/// How the training state is spread over the ranks of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sharding {
    pub stage: ZeroStage,
    pub ranks: usize,
}

impl Sharding {
    /// One process: nothing spread.
    pub const NONE: Self = Self { stage: ZeroStage::Replicated, ranks: 1 };
}

/// The peak of one training step of one process at `batch` rows of `seq` tokens under `precision`.
pub fn estimate(
    config: &ModelConfig,
    num_labels: usize,
    batch: usize,
    seq: usize,
    precision: MixedPrecision,
) -> Result<MemoryEstimate> {
    estimate_per_rank(config, num_labels, batch, seq, precision, Sharding::NONE)
}

/// The peak of one rank's training step at `batch` rows of `seq` tokens under `precision`, with the
/// training state spread as `sharding` says. Over several ranks, DDP's and ZeRO-1's gradients are
/// backward's and the all-reduce's averaged buckets, kept from one step to the next (4 + 4 bytes a
/// parameter); ZeRO-2's are this rank's slices of the mean (4 / ranks) and the buckets still filling
/// during backward (about two), as the CPU kernels hand each gradient to its bucket as they make it.
/// ZeRO-1 and 2 keep 8 / ranks bytes of AdamW's moments a parameter. One micro-batch per step: with
/// gradient accumulation ZeRO-2 also keeps the earlier micro-batches' gradients whole.
pub fn estimate_per_rank(
    config: &ModelConfig,
    num_labels: usize,
    batch: usize,
    seq: usize,
    precision: MixedPrecision,
    sharding: Sharding,
) -> Result<MemoryEstimate> {
    let params = parameter_count(config, num_labels)?;
    let dims = config.dims();
    let (h, i, heads) = (dims.hidden_size as u64, dims.intermediate_size as u64, dims.num_heads as u64);
    let layers = dims.num_layers as u64;
    let (b, l) = (batch as u64, seq as u64);
    let t = b * l;
    let kept = Kept::of(config);
    let per_layer = kept.hidden * t * h
        + kept.intermediate * t * i
        + kept.scores * b * heads * l * l
        + kept.relative * b * heads * l * kept.relative_width;
    let mut activations = 4 * (layers * per_layer + 4 * t * h);
    let backward_work = 4 * per_layer;
    if precision == MixedPrecision::Bf16 {
        let linear_weights = layers * (4 * h * h + 2 * h * i) + h * h + h * num_labels as u64;
        activations += layers * (16 * t * h + 2 * t * i) + 2 * linear_weights;
    }
    let ranks = sharding.ranks.max(1) as u64;
    let filling = (4 * params).min(2 * crate::distributed::buckets::DEFAULT_BUCKET_BYTES as u64);
    let (gradients, optimizer) = match (ranks, sharding.stage) {
        (1, _) => (4 * params, 8 * params),
        (_, ZeroStage::Replicated) => (8 * params, 8 * params),
        (_, ZeroStage::Optimizer) => (8 * params, (8 * params).div_ceil(ranks)),
        (_, ZeroStage::Gradients) => ((4 * params).div_ceil(ranks) + filling, (8 * params).div_ceil(ranks)),
    };
    let allocator = (activations + backward_work + gradients) * 15 / 100;
    Ok(MemoryEstimate { parameters: 4 * params, gradients, optimizer, activations, backward_work, allocator })
}

/// What [`measure`] saw: the resident memory a few training steps added to the process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    /// Resident memory before the model was built, in bytes.
    pub before: u64,
    /// Peak resident memory during the steps, in bytes.
    pub peak: u64,
}

impl Measured {
    /// What training added at its peak.
    pub fn added(&self) -> u64 {
        self.peak.saturating_sub(self.before)
    }
}

/// Builds the model from `model_dir` (weights from the folder, a fresh head) and runs `steps`
/// AdamW steps on random token ids at `batch` x `seq`, with dropout, under `precision`; returns the
/// resident memory before and at the peak. Run it in a process of its own: other threads'
/// allocations would count too.
pub fn measure(
    model_dir: &Path,
    num_labels: usize,
    batch: usize,
    seq: usize,
    precision: MixedPrecision,
    steps: usize,
) -> Result<Measured> {
    let config = ModelConfig::from_file(model_dir.join("config.json"))?;
    // bf16's library is loaded before the measurement starts (and a missing one is said at once).
    Autocast::new(precision, &TrackedWeights::default())?;
    let batch_data = random_batch(&config, num_labels, batch, seq, &Device::Cpu)?;
    let before = resident_bytes("VmRSS")?;
    reset_peak();
    let (model, _) = Model::from_pretrained_with_options(model_dir, config, num_labels, 0, &Device::Cpu, true)?;
    let autocast = Autocast::new(precision, model.params().tracked())?;
    let params = model.params().clone();
    let mut optimizer = AdamW::new(&params, AdamWConfig::default())?;
    let mut grads = Gradients::new();
    for step in 0..steps {
        model.set_dropout_position(step as u64, 0);
        autocast.run(|| -> Result<()> {
            let out = model.forward_train(&batch_data)?;
            grads.backward(out.loss()?, &params)
        })?;
        let lr = optimizer.lr();
        optimizer_step(&mut grads, &mut optimizer, lr, Some(1.0), &SingleProcess)?;
    }
    let peak = resident_bytes("VmHWM")?;
    Ok(Measured { before, peak })
}

/// A batch of `seq` random token ids per row (no padding) with random labels, on `device`.
pub fn random_batch(
    config: &ModelConfig,
    num_labels: usize,
    batch: usize,
    seq: usize,
    device: &Device,
) -> Result<Batch> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as u32
    };
    let ids: Vec<u32> = (0..batch * seq).map(|_| next(config.dims().vocab_size)).collect();
    let (labels, max_label) = match num_labels {
        1 => (Tensor::from_vec((0..batch).map(|_| next(5) as f32).collect::<Vec<f32>>(), batch, device)?, None),
        n => {
            let ids: Vec<u32> = (0..batch).map(|_| next(n)).collect();
            let max = ids.iter().copied().max();
            (Tensor::from_vec(ids, batch, device)?, max)
        }
    };
    Ok(Batch {
        input_ids: Tensor::from_vec(ids, (batch, seq), device)?,
        token_type_ids: Tensor::zeros((batch, seq), candle_core::DType::U32, device)?,
        attention_mask: Tensor::ones((batch, seq), candle_core::DType::U32, device)?,
        labels: Some(labels),
        max_label,
        token_labels: None,
        spans: None,
        rows: (0..batch).collect(),
        tokens: batch * seq,
    })
}

/// `VmRSS` or `VmHWM` of this process, in bytes; an error where the platform does not report it.
pub(crate) fn resident_bytes(field: &str) -> Result<u64> {
    crate::runtime::status_bytes(field)
        .ok_or_else(|| Error::data("/proc/self/status", None, format!("no {field} line")))
}

/// Resets the process's peak resident memory to its current value (Linux 4.0 and later); where that
/// is refused the peak includes what came before, and the measurement can only be larger.
pub(crate) fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_count_matches_the_model() {
        let config = ModelConfig::bert(crate::model::BertConfig::tiny());
        let model = Model::new(config.clone(), 3, 0, &Device::Cpu).unwrap();
        let counted: usize = model.params().iter().map(|(_, v)| v.elem_count()).sum();
        assert_eq!(parameter_count(&config, 3).unwrap(), counted as u64);
        let planned = Model::parameter_shapes(&config, 3).unwrap();
        let built: Vec<(String, Vec<usize>)> =
            model.params().iter().map(|(n, v)| (n.to_string(), v.dims().to_vec())).collect();
        assert_eq!(planned, built);
        let deep =
            ModelConfig::bert(crate::model::BertConfig { num_hidden_layers: 7, ..crate::model::BertConfig::tiny() });
        let counted = Model::new(deep.clone(), 2, 0, &Device::Cpu).unwrap().params().num_elements();
        assert_eq!(parameter_count(&deep, 2).unwrap(), counted as u64);
    }

    #[test]
    fn bf16_adds_copies_and_activations_grow_with_the_square_of_the_sequence() {
        let cfg = ModelConfig::bert(crate::model::BertConfig::tiny());
        let f32 = estimate(&cfg, 2, 8, 32, MixedPrecision::No).unwrap();
        let bf16 = estimate(&cfg, 2, 8, 32, MixedPrecision::Bf16).unwrap();
        assert_eq!((f32.parameters, f32.optimizer), (bf16.parameters, bf16.optimizer));
        assert!(bf16.activations > f32.activations);
        let short = estimate(&cfg, 2, 8, 16, MixedPrecision::No).unwrap();
        assert!(f32.activations > 2 * short.activations, "the L^2 attention terms");
        let parts = [f32.parameters, f32.gradients, f32.optimizer, f32.activations, f32.backward_work, f32.allocator];
        assert_eq!(f32.total(), parts.iter().sum::<u64>());
    }

    #[test]
    fn sharding_divides_the_moments_and_zero_2_the_gradients() {
        let cfg = ModelConfig::bert(crate::model::BertConfig::tiny());
        let p = parameter_count(&cfg, 2).unwrap();
        let at =
            |stage, ranks| estimate_per_rank(&cfg, 2, 8, 32, MixedPrecision::No, Sharding { stage, ranks }).unwrap();
        let one = at(ZeroStage::Gradients, 1);
        assert_eq!(one, estimate(&cfg, 2, 8, 32, MixedPrecision::No).unwrap(), "one process shards nothing");
        let ddp = at(ZeroStage::Replicated, 2);
        assert_eq!((ddp.gradients, ddp.optimizer), (8 * p, 8 * p), "DDP keeps the averaged buckets");
        let z1 = at(ZeroStage::Optimizer, 2);
        assert_eq!((z1.gradients, z1.optimizer), (8 * p, 4 * p));
        let z2 = at(ZeroStage::Gradients, 3);
        assert_eq!(
            (z2.gradients, z2.optimizer),
            ((4 * p).div_ceil(3) + 4 * p, (8 * p).div_ceil(3)),
            "a tiny model fills no two buckets"
        );
        assert_eq!(z2.parameters, ddp.parameters);
    }
}
