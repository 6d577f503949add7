//! Dropout with masks from a counter-based generator keyed by where each value sits in the
//! optimizer step's global batch, so that training is reproducible, resumable from the step count
//! alone, and the same however a step's rows are split over ranks and micro-batches.
//!
//! candle's CPU random generator cannot be seeded, so masks come from [`DropoutRng`]: ChaCha8 (the
//! same words on every platform), one stream per (step, dropout call of the forward pass), and
//! within it a fixed range of words per global row. A value's word depends on its row in the global
//! batch and its position in that row (token, head, key), never on the padded length of the batch
//! or on which rank holds the row: 2 ranks of 4 rows draw exactly the masks 1 process of 8 draws.

use candle_core::Tensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::kernels::cpu;
use crate::kernels::cpu::dropout_words::fill_mask;
use crate::kernels::cpu::threads::{par_each, sized_chunks};
pub use crate::kernels::dropout_mask::MaskLayout;
use crate::kernels::dropout_mask::{chacha8_word, MaskPlan, MAX_SEQ};
use crate::{bail, Result};

/// Dropout calls one forward pass may make (its stream ids are step * this + call).
const MAX_CALLS: u64 = 1 << 12;

/// Where dropout masks come from: a seed, and the position of the rows of the forward pass in
/// progress (optimizer step, offset of the first row in the step's global batch).
#[derive(Debug, Clone)]
pub struct DropoutRng {
    seed: u64,
    /// Set by [`DropoutRng::set_position`] for the next forward pass.
    pending: Option<(u64, u64)>,
    step: u64,
    row_offset: u64,
    call: u64,
    /// The step a forward pass takes when nobody set one: forward passes counted.
    next_auto_step: u64,
}

/// What a checkpoint needs to rebuild a [`DropoutRng`]: the seed, and how many forward passes
/// took their step from the count (a trainer sets the step itself, so only custom loops use it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropoutRngState {
    pub seed: u64,
    #[serde(default)]
    pub forwards: u64,
}

impl DropoutRng {
    /// A generator for `seed`, at step 0.
    pub fn new(seed: u64) -> Self {
        Self { seed, pending: None, step: 0, row_offset: 0, call: 0, next_auto_step: 0 }
    }

    pub fn state(&self) -> DropoutRngState {
        DropoutRngState { seed: self.seed, forwards: self.next_auto_step }
    }

    pub fn from_state(state: DropoutRngState) -> Self {
        Self { next_auto_step: state.forwards, ..Self::new(state.seed) }
    }

    /// Places the next forward pass's rows: optimizer step `step`, first row at `row_offset` in the
    /// step's global batch (rank r's micro-batch m of size b: `(m * world + r) * b`, the order in
    /// which the sampler deals batches).
    pub fn set_position(&mut self, step: u64, row_offset: u64) {
        self.pending = Some((step, row_offset));
    }

    /// Starts a forward pass: at the position set for it, else at the next step of the count with
    /// its rows from 0.
    pub fn begin_forward(&mut self) {
        let (step, row_offset) = self.pending.take().unwrap_or((self.next_auto_step, 0));
        self.step = step;
        self.row_offset = row_offset;
        self.call = 0;
        self.next_auto_step = step + 1;
    }

    /// Takes the next dropout call of the forward pass: what any device needs to draw its mask.
    fn plan(&mut self, layout: MaskLayout, p: f64) -> Result<MaskPlan> {
        if self.call >= MAX_CALLS {
            bail!("more than {MAX_CALLS} dropout calls in one forward pass");
        }
        if let MaskLayout::Tokens { len, .. } | MaskLayout::Scores { len, .. } = layout {
            if len as u128 > MAX_SEQ {
                bail!("dropout over sequences of {len} tokens (at most {MAX_SEQ})");
            }
        }
        let base = ChaCha8Rng::seed_from_u64(self.seed);
        let seed = base.get_seed();
        let key = std::array::from_fn(|i| {
            u32::from_le_bytes([seed[4 * i], seed[4 * i + 1], seed[4 * i + 2], seed[4 * i + 3]])
        });
        let stream = self.step * MAX_CALLS + self.call;
        self.call += 1;
        Ok(MaskPlan {
            key,
            stream,
            first_row: self.row_offset,
            layout,
            threshold: (p * 4_294_967_296.0).round() as u64,
            scale: (1.0 / (1.0 - p)) as f32,
        })
    }

    /// The mask for batch rows laid out as `layouts` (one per row, each row's values after the
    /// previous row's): `1/(1-p)` for kept values, 0 for dropped ones (PyTorch's inverted dropout).
    /// Value v uses its word w and is kept when w >= `p * 2^32`. Rows of one call share a kind of
    /// layout and may differ in length (packed sequences): a value's word does not depend on it.
    fn mask(&mut self, layouts: &[MaskLayout], p: f64) -> Result<Vec<f32>> {
        // No rows (an empty batch) still takes its call, as on every device.
        let longest = layouts.iter().max_by_key(|l| l.row_values()).copied().unwrap_or(MaskLayout::Pooled { width: 0 });
        let plan = self.plan(longest, p)?;
        let (threshold, scale) = (plan.threshold, plan.scale);
        let sizes: Vec<usize> = layouts.iter().map(|l| l.row_values()).collect();
        let mut mask = vec![0f32; sizes.iter().sum()];
        let first_row = self.row_offset as u128;
        par_each(sized_chunks(&mut mask, &sizes), |(rows, chunk)| {
            let runs = rows.clone().flat_map(|row| {
                let layout = layouts[row];
                let row_base = (first_row + row as u128) * layout.row_words();
                layout.runs().into_iter().map(move |(offset, count)| (row_base + offset, count))
            });
            fill_mask((&plan.key, plan.stream), runs, (threshold, scale), chunk);
        });
        Ok(mask)
    }
}

/// Inverted dropout with probability `p`, like `torch.nn.Dropout`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    p: f64,
}

impl Dropout {
    pub fn new(p: f64) -> Self {
        Self { p }
    }

    pub fn p(&self) -> f64 {
        self.p
    }

    /// In training (`rng` is `Some`) zeroes each element of `xs` ([batch, ...] laid out as
    /// `layout`) with probability `p` and scales the rest by `1/(1-p)`. In evaluation, or when
    /// `p == 0`, returns `xs` unchanged and draws nothing.
    ///
    /// On a GPU the mask is drawn there (the same words as on the CPU), never copied from the host.
    pub fn forward(&self, xs: &Tensor, layout: MaskLayout, rng: Option<&mut DropoutRng>) -> Result<Tensor> {
        let rows = xs.elem_count() / layout.row_values().max(1);
        if !xs.device().is_cpu() {
            return match rng {
                Some(rng) if self.p > 0.0 => {
                    let plan = rng.plan(layout, self.p)?;
                    let mask = xs.apply_op1_no_bwd(&DrawMask { plan, rows })?.to_dtype(xs.dtype())?;
                    Ok(xs.mul(&mask)?)
                }
                _ => Ok(xs.clone()),
            };
        }
        match self.draw(&vec![layout; rows], rng)? {
            Some(mask) => apply_mask(xs, mask),
            None => Ok(xs.clone()),
        }
    }

    /// As [`Dropout::forward`] for a tensor that is not rows of the batch (DeBERTa's relative
    /// embeddings, which every row reads): its mask is drawn as for rows at the start of the global
    /// batch, so every rank and micro-batch of a step draws the same one.
    pub fn forward_shared(&self, xs: &Tensor, layout: MaskLayout, rng: Option<&mut DropoutRng>) -> Result<Tensor> {
        let Some(rng) = rng else { return self.forward(xs, layout, None) };
        let offset = std::mem::replace(&mut rng.row_offset, 0);
        let out = self.forward(xs, layout, Some(&mut *rng));
        rng.row_offset = offset;
        out
    }

    /// The mask `forward` would multiply rows laid out as `layouts` by (`1/(1-p)` kept, 0
    /// dropped; one layout per row, rows one after the other), for kernels that apply dropout
    /// themselves; `None` (and nothing drawn) in evaluation or when `p == 0`. Rows may be packed
    /// sequences of their own lengths: each value gets the word it has in a padded batch.
    pub(crate) fn draw(&self, layouts: &[MaskLayout], rng: Option<&mut DropoutRng>) -> Result<Option<Vec<f32>>> {
        match rng {
            Some(rng) if self.p > 0.0 => Ok(Some(rng.mask(layouts, self.p)?)),
            _ => Ok(None),
        }
    }
}

/// Draws a [`MaskPlan`]'s mask (f32, the input's shape) on the input's device: on a GPU with the
/// kernel in `kernels/cuda`, on the CPU word by word with [`chacha8_word`] (the reference for the
/// kernel; the CPU's own dropout draws the same values faster, from the generator's buffer).
pub(crate) struct DrawMask {
    pub plan: MaskPlan,
    pub rows: usize,
}

impl candle_core::CustomOp1 for DrawMask {
    fn name(&self) -> &'static str {
        "dropout-mask"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let _profile = crate::kernels::cpu::profile::op("dropout-mask", "forward");
        let row_values = self.plan.layout.row_values();
        if self.rows * row_values != layout.shape().elem_count() {
            candle_core::bail!("dropout mask: {} rows of {row_values} for {:?}", self.rows, layout.shape());
        }
        let mut mask = vec![0f32; self.rows * row_values];
        for (e, m) in mask.iter_mut().enumerate() {
            let pos = self.plan.word_pos((e / row_values) as u64, (e % row_values) as u64);
            let word = chacha8_word(&self.plan.key, self.plan.stream, pos);
            *m = if u64::from(word) >= self.plan.threshold { self.plan.scale } else { 0.0 };
        }
        Ok((candle_core::CpuStorage::F32(mask), layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        let device = storage.device.clone();
        let mask = crate::kernels::cuda::dropout_mask(&device, &self.plan, self.rows)?;
        if mask.len() != layout.shape().elem_count() {
            candle_core::bail!("dropout mask: {} values for {:?}", mask.len(), layout.shape());
        }
        Ok((candle_core::CudaStorage::wrap_cuda_slice(mask, device), layout.shape().clone()))
    }
}

/// `xs` times a mask from [`Dropout::draw`] (same number of values).
pub(crate) fn apply_mask(xs: &Tensor, mask: Vec<f32>) -> Result<Tensor> {
    let mask = Tensor::from_vec(mask, xs.shape(), xs.device())?.to_dtype(xs.dtype())?;
    if cpu::enabled(xs) {
        // The kernel reads rows in place: a strided view (a sequence's first token) is copied out.
        cpu::mask_mul(&xs.contiguous()?, mask)
    } else {
        Ok(xs.mul(&mask)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::RngCore;

    fn tokens(len: usize) -> MaskLayout {
        MaskLayout::Tokens { len, width: 4 }
    }

    #[test]
    fn eval_and_zero_probability_are_identity_and_draw_nothing() {
        let xs = Tensor::arange(0f32, 12., &Device::Cpu).unwrap().reshape((1, 3, 4)).unwrap();
        let mut rng = DropoutRng::new(3);
        rng.begin_forward();
        let ys = Dropout::new(0.5).forward(&xs, tokens(3), None).unwrap();
        assert_eq!(ys.to_vec3::<f32>().unwrap(), xs.to_vec3::<f32>().unwrap());
        let ys = Dropout::new(0.0).forward(&xs, tokens(3), Some(&mut rng)).unwrap();
        assert_eq!(ys.to_vec3::<f32>().unwrap(), xs.to_vec3::<f32>().unwrap());
        assert_eq!(rng.call, 0, "nothing drawn");
    }

    #[test]
    fn training_drops_about_p_and_scales_the_rest() {
        let mut rng = DropoutRng::new(7);
        rng.begin_forward();
        let mask = rng.mask(&vec![MaskLayout::Pooled { width: 1000 }; 100], 0.1).unwrap();
        let kept = mask.iter().filter(|&&y| y != 0.0).count();
        assert!((kept as f64 / mask.len() as f64 - 0.9).abs() < 0.005, "kept {kept}");
        assert!(mask.iter().all(|&y| y == 0.0 || y == (1.0f64 / 0.9) as f32));
    }

    /// The property data parallelism rests on: a row's mask depends on its place in the step's
    /// global batch and its own coordinates, not on the batch's padded length or its split.
    #[test]
    fn masks_follow_global_rows_not_padding_or_split() {
        let p = 0.3;
        let draw = |offset: u64, rows: usize, layout: MaskLayout| {
            let mut rng = DropoutRng::new(11);
            rng.set_position(5, offset);
            rng.begin_forward();
            rng.mask(&vec![layout; rows], p).unwrap()
        };
        // One pass of 4 rows padded to 6 tokens against two passes of 2 rows padded to 5.
        let whole = draw(0, 4, tokens(6));
        let (first, second) = (draw(0, 2, tokens(5)), draw(2, 2, tokens(5)));
        for (row, half) in [(0, &first[..20]), (1, &first[20..]), (2, &second[..20]), (3, &second[20..])] {
            assert_eq!(&whole[row * 24..row * 24 + 20], half, "row {row}");
        }
        // Attention probabilities: [rows, heads, len, len].
        let scores = |len| MaskLayout::Scores { heads: 2, len };
        let whole = draw(0, 2, scores(4));
        let part = draw(1, 1, scores(3));
        for h in 0..2 {
            for i in 0..3 {
                assert_eq!(&whole[32 + (h * 4 + i) * 4..][..3], &part[(h * 3 + i) * 3..][..3], "head {h} query {i}");
            }
        }
    }

    /// Packed sequences, rows of their own lengths in one call, draw the padded masks' real
    /// entries: what lets the CPU encoder skip padding without changing a value.
    #[test]
    fn packed_rows_draw_the_padded_masks_real_entries() {
        let draw = |layouts: &[MaskLayout]| {
            let mut rng = DropoutRng::new(7);
            rng.set_position(2, 3);
            rng.begin_forward();
            rng.mask(layouts, 0.4).unwrap()
        };
        let lens = [5usize, 2, 4];
        let padded = draw(&[tokens(5); 3]);
        let packed = draw(&lens.map(tokens));
        let real: Vec<f32> = lens.iter().enumerate().flat_map(|(r, &n)| padded[r * 20..][..n * 4].to_vec()).collect();
        assert_eq!(packed, real);
        let scores = |len| MaskLayout::Scores { heads: 2, len };
        let padded = draw(&[scores(5); 3]);
        let packed = draw(&lens.map(scores));
        let mut real = Vec::new();
        for pair in 0..3 * 2 {
            let n = lens[pair / 2];
            (0..n).for_each(|i| real.extend_from_slice(&padded[pair * 25 + i * 5..][..n]));
        }
        assert_eq!(packed, real);
    }

    /// The word function the CUDA kernel implements, and the plan's word positions, give exactly
    /// the generator's masks for every layout: what a GPU draws is what the CPU draws.
    #[test]
    fn plans_drawn_word_by_word_equal_the_generators_masks() {
        use candle_core::{CustomOp1, DType};
        let mut rng = ChaCha8Rng::seed_from_u64(99);
        let key: [u32; 8] = {
            let s = rng.get_seed();
            std::array::from_fn(|i| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]))
        };
        rng.set_stream(77);
        for pos in [0u64, 1, 15, 16, 17, 1000, (1 << 36) + 5] {
            rng.set_word_pos(u128::from(pos));
            assert_eq!(chacha8_word(&key, 77, pos), rng.next_u32(), "word {pos}");
        }
        for (rows, layout) in [
            (3, MaskLayout::Tokens { len: 5, width: 4 }),
            (2, MaskLayout::Scores { heads: 3, len: 4 }),
            (4, MaskLayout::Pooled { width: 7 }),
        ] {
            let mut a = DropoutRng::new(5);
            a.set_position(9, 6);
            a.begin_forward();
            let mut b = a.clone();
            let expected = a.mask(&vec![layout; rows], 0.3).unwrap();
            let plan = b.plan(layout, 0.3).unwrap();
            let xs = Tensor::zeros(rows * layout.row_values(), DType::F32, &Device::Cpu).unwrap();
            let (storage, l) = xs.storage_and_layout();
            let candle_core::Storage::Cpu(cpu) = &*storage else { unreachable!() };
            let (drawn, _) = DrawMask { plan, rows }.cpu_fwd(cpu, l).unwrap();
            let candle_core::CpuStorage::F32(drawn) = drawn else { unreachable!() };
            assert_eq!(drawn, expected, "{layout:?}");
        }
    }

    #[test]
    fn steps_calls_and_seeds_give_new_masks_and_the_state_restores_them() {
        let layout = MaskLayout::Pooled { width: 64 };
        let mut a = DropoutRng::new(11);
        a.begin_forward();
        let first = a.mask(&[layout], 0.5).unwrap();
        assert_ne!(first, a.mask(&[layout], 0.5).unwrap(), "the second call of a pass");
        let saved = a.state();
        a.begin_forward();
        let next = a.mask(&[layout], 0.5).unwrap();
        assert_ne!(next, first, "the next pass");
        let mut other = DropoutRng::new(12);
        other.begin_forward();
        assert_ne!(other.mask(&[layout], 0.5).unwrap(), first, "another seed");
        let json = serde_json::to_string(&saved).unwrap();
        let mut resumed = DropoutRng::from_state(serde_json::from_str(&json).unwrap());
        resumed.begin_forward();
        assert_eq!(resumed.mask(&[layout], 0.5).unwrap(), next);
    }
}
