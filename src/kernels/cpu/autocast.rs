//! The scope in which the CPU products take bf16 inputs, and its cache of bf16 weights.
//!
//! Like `torch.autocast`, precision is a property of the code that runs the forward pass, not of
//! the model: [`Autocast::run`] sets it for the calling thread, and each op records at forward
//! time what it chose, so its backward pass follows even outside the scope. Weights are rounded to
//! bf16 once and reused by every product that reads them until [`Autocast::weights_changed`]
//! (after each optimizer step): the conversion costs one pass per step, not one per use.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::{Tensor, TensorId};

use super::bf16::{to_bf16, Bf16};
use super::mkl;
use super::storage::with_f32;
use crate::kernels::MixedPrecision;
use crate::{Error, Result};

/// bf16 copies of the weights the products have read in this scope, by tensor: host vectors for
/// the CPU kernels, bf16 tensors (in the autograd graph) for the composed products on a GPU.
#[derive(Default)]
pub(crate) struct WeightCache {
    weights: Mutex<HashMap<TensorId, Arc<Vec<Bf16>>>>,
    tensors: Mutex<HashMap<TensorId, Tensor>>,
    conversions: AtomicUsize,
}

impl WeightCache {
    /// `weight` as a bf16 tensor on its device, converted once per optimizer step for a trained
    /// parameter. The conversion is recorded in the graph, so gradients reach the f32 weight.
    pub(crate) fn bf16_tensor(&self, weight: &Tensor) -> candle_core::Result<Tensor> {
        self.cached(&self.tensors, weight, || weight.to_dtype(candle_core::DType::BF16))
    }

    /// `weight` in bf16 for the CPU kernels.
    pub(crate) fn get(&self, weight: &Tensor) -> candle_core::Result<Arc<Vec<Bf16>>> {
        self.cached(&self.weights, weight, || with_f32(weight, "bf16 weight", |w| Ok(Arc::new(to_bf16(w)))))
    }

    /// `convert(weight)`, from `map` for a trained parameter (a `Var`, whose values change only
    /// through the optimizer), converted afresh for anything else.
    fn cached<T: Clone>(
        &self,
        map: &Mutex<HashMap<TensorId, T>>,
        weight: &Tensor,
        convert: impl FnOnce() -> candle_core::Result<T>,
    ) -> candle_core::Result<T> {
        let convert = || {
            self.conversions.fetch_add(1, Ordering::Relaxed);
            convert()
        };
        if !weight.is_variable() {
            return convert();
        }
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cached) = map.get(&weight.id()) {
            return Ok(cached.clone());
        }
        let converted = convert()?;
        map.insert(weight.id(), converted.clone());
        Ok(converted)
    }
}

thread_local! {
    static ACTIVE: RefCell<Option<Arc<WeightCache>>> = const { RefCell::new(None) };
}

/// The bf16 scope the calling thread is in, if any.
pub(crate) fn active() -> Option<Arc<WeightCache>> {
    ACTIVE.with(|a| a.borrow().clone())
}

/// A mixed-precision policy ready to run: for bf16 on the CPU, oneMKL was found.
pub struct Autocast {
    precision: MixedPrecision,
    cache: Option<Arc<WeightCache>>,
    /// The products run on a GPU (cuBLAS through candle) rather than the CPU kernels.
    gpu: bool,
}

impl Autocast {
    /// The policy for `precision` on the CPU. bf16 without oneMKL is an error naming where it was
    /// looked for: asked for explicitly, it is not silently replaced by f32.
    pub fn new(precision: MixedPrecision) -> Result<Self> {
        Self::on(precision, &candle_core::Device::Cpu)
    }

    /// The policy for `precision` on `device`: on a GPU, bf16 products are cuBLAS's (bf16 inputs,
    /// f32 accumulation) and need no other library.
    pub fn on(precision: MixedPrecision, device: &candle_core::Device) -> Result<Self> {
        let gpu = !device.is_cpu();
        let cache = match precision {
            MixedPrecision::No => None,
            MixedPrecision::Bf16 => {
                if !gpu {
                    mkl::get().map_err(|why| Error::config("mixed_precision", format!("\"bf16\" needs {why}")))?;
                }
                Some(Arc::new(WeightCache::default()))
            }
        };
        Ok(Self { precision, cache, gpu })
    }

    pub fn precision(&self) -> MixedPrecision {
        self.precision
    }

    /// One line on what runs the products: for the run's log and `accel env`.
    pub fn describe(&self) -> String {
        match (self.precision, mkl::get()) {
            (MixedPrecision::Bf16, _) if self.gpu => "bf16 products through cuBLAS".to_string(),
            (MixedPrecision::Bf16, Ok(lib)) => {
                format!("bf16 products through {} ({})", lib.version, mkl::bf16_instructions())
            }
            _ => "f32".to_string(),
        }
    }

    /// Runs `f` with this policy on the calling thread (restoring the previous one after).
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        super::with_local(&ACTIVE, self.cache.clone(), f).0
    }

    /// Forgets the bf16 weights: call after anything changes the weights in place.
    pub fn weights_changed(&self) {
        if let Some(cache) = &self.cache {
            cache.weights.lock().unwrap_or_else(|e| e.into_inner()).clear();
            cache.tensors.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }

    /// How many weight conversions to bf16 this scope has made (for tests of the cache).
    pub fn conversions(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.conversions.load(Ordering::Relaxed))
    }
}

/// Runs `f` in a bf16 scope that needs no library (the composed products only: CPU tests of what a
/// GPU computes); returns `f`'s result and how many weights were converted.
#[cfg(test)]
pub(crate) fn with_composed_bf16<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let cache = Arc::new(WeightCache::default());
    let out = super::with_local(&ACTIVE, Some(cache.clone()), f).0;
    (out, cache.conversions.load(Ordering::Relaxed))
}
