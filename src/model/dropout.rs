//! Dropout with masks drawn from our own seeded ChaCha8 stream, so training is reproducible and resumable.
//!
//! candle's CPU random generator cannot be seeded, so masks come from [`DropoutRng`] instead. ChaCha8
//! gives the same words on every platform, and its position in the stream (`word_pos`) is all that a
//! checkpoint needs to continue the exact sequence of masks.

use candle_core::Tensor;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::fused;
use super::parallel::par_row_chunks;
use crate::Result;

/// The random stream dropout masks are drawn from. One per model replica (rank).
#[derive(Debug, Clone)]
pub struct DropoutRng {
    seed: u64,
    rng: ChaCha8Rng,
}

/// Where a [`DropoutRng`] stands: enough to rebuild it exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropoutRngState {
    pub seed: u64,
    /// Position in the ChaCha8 stream, in 32-bit words.
    pub word_pos: u128,
}

impl DropoutRng {
    /// A stream starting at the beginning for `seed`.
    pub fn new(seed: u64) -> Self {
        Self { seed, rng: ChaCha8Rng::seed_from_u64(seed) }
    }

    /// The seed and stream position, for a checkpoint.
    pub fn state(&self) -> DropoutRngState {
        DropoutRngState { seed: self.seed, word_pos: self.rng.get_word_pos() }
    }

    /// Rebuilds the stream a checkpoint recorded; the next mask equals the one the saved run would have drawn.
    pub fn from_state(state: DropoutRngState) -> Self {
        let mut rng = Self::new(state.seed);
        rng.rng.set_word_pos(state.word_pos);
        rng
    }

    /// `n` mask values: `1/(1-p)` for kept elements, 0 for dropped ones (PyTorch's inverted dropout).
    /// Element `i` uses word `i` from the current stream position and is kept when that word is at
    /// least `p * 2^32`. ChaCha can start anywhere in its stream, so chunks are generated in
    /// parallel with the same result as one sequential pass.
    fn mask(&mut self, n: usize, p: f64) -> Vec<f32> {
        let threshold = (p * 4_294_967_296.0).round() as u64;
        let scale = (1.0 / (1.0 - p)) as f32;
        let start = self.rng.get_word_pos();
        let mut mask = vec![0f32; n];
        let rng = &self.rng;
        par_row_chunks(
            &mut mask,
            1,
            || (),
            |elems, chunk, _| {
                let mut rng = rng.clone();
                rng.set_word_pos(start + elems.start as u128);
                for m in chunk.iter_mut() {
                    *m = if u64::from(rng.next_u32()) >= threshold { scale } else { 0.0 };
                }
            },
        );
        self.rng.set_word_pos(start + n as u128);
        mask
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

    /// In training (`rng` is `Some`) zeroes each element with probability `p` and scales the rest by
    /// `1/(1-p)`. In evaluation, or when `p == 0`, returns `xs` unchanged and draws nothing.
    pub fn forward(&self, xs: &Tensor, rng: Option<&mut DropoutRng>) -> Result<Tensor> {
        match self.draw(xs.elem_count(), rng) {
            Some(mask) => apply_mask(xs, mask),
            None => Ok(xs.clone()),
        }
    }

    /// The mask `forward` would multiply `n` values by (`1/(1-p)` kept, 0 dropped), for kernels
    /// that apply dropout themselves; `None` (and nothing drawn) in evaluation or when `p == 0`.
    pub(crate) fn draw(&self, n: usize, rng: Option<&mut DropoutRng>) -> Option<Vec<f32>> {
        match rng {
            Some(rng) if self.p > 0.0 => Some(rng.mask(n, self.p)),
            _ => None,
        }
    }
}

/// `xs` times a mask from [`Dropout::draw`] (same number of values).
pub(crate) fn apply_mask(xs: &Tensor, mask: Vec<f32>) -> Result<Tensor> {
    let mask = Tensor::from_vec(mask, xs.shape(), xs.device())?.to_dtype(xs.dtype())?;
    if fused::enabled(xs) {
        fused::mask_mul(xs, mask)
    } else {
        Ok(xs.mul(&mask)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn eval_and_zero_probability_are_identity_and_draw_nothing() {
        let xs = Tensor::arange(0f32, 12., &Device::Cpu).unwrap();
        let mut rng = DropoutRng::new(3);
        let before = rng.state();
        let ys = Dropout::new(0.5).forward(&xs, None).unwrap();
        assert_eq!(ys.to_vec1::<f32>().unwrap(), xs.to_vec1::<f32>().unwrap());
        let ys = Dropout::new(0.0).forward(&xs, Some(&mut rng)).unwrap();
        assert_eq!(ys.to_vec1::<f32>().unwrap(), xs.to_vec1::<f32>().unwrap());
        assert_eq!(rng.state(), before);
    }

    #[test]
    fn training_drops_about_p_and_scales_the_rest() {
        let n = 100_000;
        let xs = Tensor::ones(n, candle_core::DType::F32, &Device::Cpu).unwrap();
        let mut rng = DropoutRng::new(7);
        let ys = Dropout::new(0.1).forward(&xs, Some(&mut rng)).unwrap().to_vec1::<f32>().unwrap();
        let kept = ys.iter().filter(|&&y| y != 0.0).count();
        assert!((kept as f64 / n as f64 - 0.9).abs() < 0.005, "kept {kept}");
        assert!(ys.iter().all(|&y| y == 0.0 || y == (1.0f64 / 0.9) as f32));
        assert_eq!(rng.state().word_pos, n as u128);
    }

    #[test]
    fn parallel_masks_equal_one_sequential_pass() {
        let mut rng = DropoutRng::new(21);
        rng.rng.next_u32(); // start mid-block
        let mut sequential = rng.rng.clone();
        let n = 100_003;
        let mask = rng.mask(n, 0.25);
        let expected: Vec<f32> = (0..n)
            .map(|_| if u64::from(sequential.next_u32()) >= 1 << 30 { (1.0f64 / 0.75) as f32 } else { 0.0 })
            .collect();
        assert_eq!(mask, expected);
        assert_eq!(rng.rng.get_word_pos(), sequential.get_word_pos());
    }

    #[test]
    fn same_seed_same_masks_and_state_restores_the_stream() {
        let xs = Tensor::ones(64, candle_core::DType::F32, &Device::Cpu).unwrap();
        let drop = Dropout::new(0.5);
        let mut a = DropoutRng::new(11);
        let mut b = DropoutRng::new(11);
        let a1 = drop.forward(&xs, Some(&mut a)).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a1, drop.forward(&xs, Some(&mut b)).unwrap().to_vec1::<f32>().unwrap());

        let saved = a.state();
        let json = serde_json::to_string(&saved).unwrap();
        let a2 = drop.forward(&xs, Some(&mut a)).unwrap().to_vec1::<f32>().unwrap();
        assert_ne!(a1, a2);
        let mut resumed = DropoutRng::from_state(serde_json::from_str(&json).unwrap());
        assert_eq!(a2, drop.forward(&xs, Some(&mut resumed)).unwrap().to_vec1::<f32>().unwrap());
    }
}
