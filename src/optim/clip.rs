//! Global L2-norm gradient clipping over all parameters, as `torch.nn.utils.clip_grad_norm_`.

use std::collections::{HashMap, HashSet};

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Storage, Tensor};

use crate::model::Params;
use crate::Result;

/// The L2 norm of all gradients together, walking `params` in order. Parameters without a gradient
/// are skipped, as PyTorch skips `grad is None`. Squares are summed in f64: on the CPU straight
/// from the storage, on a GPU into one device scalar that is read once.
pub fn global_grad_norm(grads: &GradStore, params: &Params) -> Result<f64> {
    let mut total = 0.0f64;
    let mut on_device: Option<Tensor> = None;
    for (_, var) in params.iter() {
        let Some(grad) = grads.get(var.as_tensor()) else { continue };
        match host_sum_of_squares(grad) {
            Some(s) => total += s,
            None => {
                let s = grad.to_dtype(DType::F64)?.sqr()?.sum_all()?;
                on_device = Some(match on_device.take() {
                    Some(acc) => (acc + s)?,
                    None => s,
                });
            }
        }
    }
    if let Some(s) = on_device {
        total += s.to_scalar::<f64>()?;
    }
    Ok(total.sqrt())
}

/// Scales all gradients in place so that their global norm is at most `max_norm`, and returns the
/// norm before clipping.
///
/// As PyTorch does: `clip_coef = max_norm / (total_norm + 1e-6)` in f32, applied only when it is
/// below 1. A non-finite norm leaves the gradients untouched; the caller sees it in the return value.
pub fn clip_grad_norm(grads: &mut GradStore, params: &Params, max_norm: f64) -> Result<f64> {
    let norm = global_grad_norm(grads, params)?;
    if let Some(coef) = clip_coefficient(norm, max_norm) {
        // In place where no other gradient of the store covers the same values and no parameter
        // shares the storage (a copy of every gradient would add the model's size to the step's
        // peak memory); views of one buffer (the all-reduce buckets) cover disjoint ranges. By a
        // new tensor otherwise, from the unscaled values.
        let address = |t: &Tensor| &*t.storage_and_layout().0 as *const Storage as usize;
        let span = |t: &Tensor| (address(t), t.layout().start_offset(), t.elem_count());
        let weights: HashSet<usize> = params.iter().map(|(_, v)| address(v.as_tensor())).collect();
        let mut uses: HashMap<(usize, usize, usize), usize> = HashMap::new();
        for (_, var) in params.iter() {
            if let Some(grad) = grads.get(var.as_tensor()) {
                *uses.entry(span(grad)).or_default() += 1;
            }
        }
        for (_, var) in params.iter() {
            let Some(grad) = grads.get(var.as_tensor()) else { continue };
            let key = span(grad);
            let owned = {
                let (storage, layout) = grad.storage_and_layout();
                matches!(&*storage, Storage::Cpu(CpuStorage::F32(_)))
                    && layout.is_contiguous()
                    && uses.get(&key) == Some(&1)
                    && !weights.contains(&key.0)
            };
            if owned {
                grad.inplace_op1(&Scale(coef))?;
            } else {
                let scaled = grad.affine(f64::from(coef), 0.0)?;
                grads.insert(var.as_tensor(), scaled);
            }
        }
    }
    Ok(norm)
}

/// The factor `clip_grad_norm_` multiplies the gradients by when their global norm is `norm`:
/// `max_norm / (norm + 1e-6)` in f32, and only when that is below 1 (`None` otherwise: the
/// gradients stay as they are). A non-finite norm, or a `max_norm` of 0 or less, scales nothing.
pub fn clip_coefficient(norm: f64, max_norm: f64) -> Option<f32> {
    let coef = max_norm as f32 / (norm as f32 + 1e-6);
    (max_norm > 0.0 && norm.is_finite() && coef < 1.0).then_some(coef)
}

/// Multiplies an f32 CPU storage by a constant, in place.
struct Scale(f32);

impl InplaceOp1 for Scale {
    fn name(&self) -> &'static str {
        "clip-scale"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let _profile = crate::kernels::cpu::profile::op("clip-scale", "forward");
        let (CpuStorage::F32(data), Some((start, end))) = (storage, layout.contiguous_offsets()) else {
            candle_core::bail!("clip: expected a contiguous f32 gradient")
        };
        data[start..end].iter_mut().for_each(|g| *g *= self.0);
        Ok(())
    }
}

/// Σ g² in f64 of any gradient: from the storage where the host can read it, else as tensors (one
/// read of the device).
pub(crate) fn sum_of_squares(grad: &Tensor) -> Result<f64> {
    match host_sum_of_squares(grad) {
        Some(s) => Ok(s),
        None => Ok(grad.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?),
    }
}

/// Σ g² in f64 of a contiguous f32 CPU gradient, read straight from its storage instead of
/// materializing `g²`; `None` for any other gradient.
fn host_sum_of_squares(grad: &Tensor) -> Option<f64> {
    let (storage, layout) = grad.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) => Some(sum_sq_f32(&data[start..end])),
        _ => None,
    }
}

/// Eight independent accumulators let the compiler vectorize the loop (a single running sum has a
/// serial dependency that it may not reorder).
fn sum_sq_f32(values: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = values.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            let v = f64::from(v);
            *a += v * v;
        }
    }
    let tail: f64 = rest.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    acc.iter().sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    #[test]
    fn aliased_gradients_are_scaled_once_and_parameters_never() {
        use candle_core::{Device, Var};
        let params = crate::model::Params::new(vec![
            ("a".into(), Var::new(&[1.0f32, 1.0], &Device::Cpu).unwrap()),
            ("b".into(), Var::new(&[1.0f32, 1.0], &Device::Cpu).unwrap()),
            ("c".into(), Var::new(&[3.0f32, 4.0], &Device::Cpu).unwrap()),
        ])
        .unwrap();
        let vars: Vec<_> = params.iter().map(|(_, v)| v.clone()).collect();
        let mut grads = candle_core::backprop::GradStore::default();
        let shared = candle_core::Tensor::new(&[3.0f32, 4.0], &Device::Cpu).unwrap();
        grads.insert(vars[0].as_tensor(), shared.clone());
        grads.insert(vars[1].as_tensor(), shared);
        // c's gradient is c itself: scaling it in place would scale the weights.
        grads.insert(vars[2].as_tensor(), vars[2].as_tensor().clone());
        let norm = super::clip_grad_norm(&mut grads, &params, 1.0).unwrap();
        assert!((norm - 75f64.sqrt()).abs() < 1e-6);
        let coef = 1.0 / (75f32.sqrt() + 1e-6);
        for v in &vars {
            let g = grads.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
            assert!((g[0] - 3.0 * coef).abs() < 1e-6 && (g[1] - 4.0 * coef).abs() < 1e-6, "{g:?}");
        }
        assert_eq!(vars[2].to_vec1::<f32>().unwrap(), [3.0, 4.0], "the weights are untouched");
    }

    use super::*;
    use candle_core::{Device, Var};

    fn setup() -> (Params, GradStore, Var, Var) {
        let dev = Device::Cpu;
        let a = Var::from_slice(&[1f32, 2.], 2, &dev).unwrap();
        let b = Var::from_slice(&[0.5f32, 0.5, 0.5], 3, &dev).unwrap();
        let params = Params::new(vec![("a".into(), a.clone()), ("b".into(), b.clone())]).unwrap();
        // loss = 3*a0 + 4*a1 + 0*b  ->  grad a = [3, 4]; b gets none (candle prunes `x * 0`); norm = 5.
        let w = Tensor::new(&[3f32, 4.], &dev).unwrap();
        let loss = ((a.as_tensor() * &w).unwrap().sum_all().unwrap()
            + (b.as_tensor() * 0.0).unwrap().sum_all().unwrap())
        .unwrap();
        let grads = loss.backward().unwrap();
        (params, grads, a, b)
    }

    #[test]
    fn norm_and_clipping_follow_torch() {
        let (params, mut grads, a, _) = setup();
        assert_eq!(global_grad_norm(&grads, &params).unwrap(), 5.0);
        // clip_coef = 1 / (5 + 1e-6) in f32; grads scale by it.
        let norm = clip_grad_norm(&mut grads, &params, 1.0).unwrap();
        assert_eq!(norm, 5.0);
        let coef = 1.0f32 / (5.0f32 + 1e-6);
        let g = grads.get(a.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(g, [3.0 * coef, 4.0 * coef]);
    }

    #[test]
    fn no_clipping_below_max_norm() {
        let (params, mut grads, a, _) = setup();
        let norm = clip_grad_norm(&mut grads, &params, 10.0).unwrap();
        assert_eq!(norm, 5.0);
        assert_eq!(grads.get(a.as_tensor()).unwrap().to_vec1::<f32>().unwrap(), [3.0, 4.0]);
    }

    #[test]
    fn fast_sum_matches_reference() {
        let values: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.37).sin()).collect();
        let reference: f64 = values.iter().map(|&v| f64::from(v).powi(2)).sum();
        assert!((sum_sq_f32(&values) - reference).abs() < 1e-9);
        let t = Tensor::new(values.as_slice(), &Device::Cpu).unwrap();
        assert!(
            (host_sum_of_squares(&t.narrow(0, 1, 1000).unwrap()).unwrap()
                - values[1..1001].iter().map(|&v| f64::from(v).powi(2)).sum::<f64>())
            .abs()
                < 1e-9
        );
    }

    #[test]
    fn gradients_the_host_cannot_read_in_place_are_summed_as_tensors() {
        // A transposed (strided) gradient takes the path every GPU gradient takes.
        let values: Vec<f32> = (0..6).map(|i| i as f32 - 2.5).collect();
        let var = Var::from_slice(&values, (3, 2), &Device::Cpu).unwrap();
        let other = Var::new(&[3.0f32, 4.0], &Device::Cpu).unwrap();
        let params = Params::new(vec![("a".into(), var.clone()), ("b".into(), other.clone())]).unwrap();
        let mut grads = GradStore::default();
        let strided = Tensor::from_slice(&values, (2, 3), &Device::Cpu).unwrap().t().unwrap();
        assert!(host_sum_of_squares(&strided).is_none());
        grads.insert(var.as_tensor(), strided);
        grads.insert(other.as_tensor(), Tensor::new(&[3.0f32, 4.0], &Device::Cpu).unwrap());
        let expected = (values.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() + 25.0).sqrt();
        assert!((global_grad_norm(&grads, &params).unwrap() - expected).abs() < 1e-12);
    }
}
