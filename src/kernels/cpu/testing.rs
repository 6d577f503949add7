//! Inputs and comparisons the kernels' tests share.

use candle_core::{Device, Shape, Tensor, Var};

pub(crate) fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}

/// Largest difference relative to the largest magnitude of the reference.
pub(crate) fn rel_diff(a: &Tensor, reference: &Tensor) -> f32 {
    max_diff(a, reference) / max_abs(reference).max(1e-12)
}

pub(crate) fn randn(shape: impl Into<Shape>, seed: u64) -> Var {
    // Deterministic pseudo-random values without depending on candle's unseedable generator.
    let shape = shape.into();
    let n = shape.elem_count();
    let values: Vec<f32> = (0..n).map(|i| ((i as f32 + seed as f32 * 0.37) * 12.9898).sin() * 1.7).collect();
    Var::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// Gradients of `sum(f(..) * probe)` for the fused and composed versions must agree.
pub(crate) fn probe(shape: &[usize], seed: u64) -> Tensor {
    randn(shape.to_vec(), seed).as_tensor().detach()
}

/// Whether bf16 products run here for a bf16 test (a library, measured to pay or forced); when they
/// do not, says the test was skipped and why.
pub(crate) fn bf16_available(test: &str) -> bool {
    match super::bf16_products() {
        Ok(_) => true,
        Err(why) => {
            eprintln!("skipped {test}: {why}");
            false
        }
    }
}

/// `values` rounded to bf16 and widened back: the inputs a bf16 product sees.
pub(crate) fn bf16_rounded(t: &Tensor) -> Tensor {
    let values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let rounded: Vec<f32> = super::bf16::to_bf16(&values).into_iter().map(|b| b.to_f32()).collect();
    Tensor::from_vec(rounded, t.shape(), &Device::Cpu).unwrap()
}
