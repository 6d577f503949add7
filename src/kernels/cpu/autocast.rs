//! The scope in which the CPU products take bf16 inputs, and its cache of bf16 weights.
//!
//! Like `torch.autocast`, precision is a property of the code that runs the forward pass, not of
//! the model: [`Autocast::run`] sets it for the calling thread, and each op records at forward
//! time what it chose, so its backward pass follows even outside the scope. Weights are rounded to
//! bf16 once and reused by every product that reads them while their values stay the same: the
//! cache is keyed to the [`TrackedWeights`]' version, which every write to the weights (an
//! optimizer step, a load, a broadcast) advances, so a stale copy cannot be read. The conversion
//! costs one pass per step, not one per use.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::{Tensor, TensorId};

use super::bf16::{to_bf16, Bf16};
use super::bf16_calibration::{self, bf16_products};
use super::bf16_library::Unavailable;
use super::storage::with_f32;
use crate::kernels::MixedPrecision;
use crate::{Error, Result};

/// The trained weights whose bf16 copies a cache may keep: their tensors, and a version that every
/// write to their values advances. Clones share the version. A model's parameter list owns one
/// (`Params::tracked`); the optimizer and the weight loaders advance it.
///
/// A weight is known by its tensor, or by its storage: the layers evaluation runs are detached
/// from the graph (new tensors over the same storage) and read the same copies. The tensors are
/// kept, so no other tensor's storage can take a tracked weight's place while this lives.
#[derive(Debug, Clone, Default)]
pub struct TrackedWeights {
    ids: Arc<HashSet<TensorId>>,
    storages: Arc<HashMap<StorageKey, TensorId>>,
    _kept: Arc<Vec<Tensor>>,
    version: Arc<AtomicU64>,
}

/// Where a tensor's values are: its storage's address, its offset and its dimensions.
type StorageKey = (usize, usize, Vec<usize>);

fn storage_key(t: &Tensor) -> StorageKey {
    let (storage, layout) = t.storage_and_layout();
    (std::ptr::from_ref(&*storage) as usize, layout.start_offset(), layout.dims().to_vec())
}

impl TrackedWeights {
    pub fn new<'a>(weights: impl IntoIterator<Item = &'a Tensor>) -> Self {
        let kept: Vec<Tensor> = weights.into_iter().cloned().collect();
        Self {
            ids: Arc::new(kept.iter().map(Tensor::id).collect()),
            storages: Arc::new(kept.iter().map(|t| (storage_key(t), t.id())).collect()),
            _kept: Arc::new(kept),
            version: Arc::default(),
        }
    }

    /// How many times the weights have been written.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Records that some of the weights were written in place: every copy made before is stale.
    pub fn changed(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// The tracked weight `weight` is, or (`by_storage`) reads the storage of: its id.
    fn tracked_id(&self, weight: &Tensor, by_storage: bool) -> Option<TensorId> {
        if self.ids.contains(&weight.id()) {
            return Some(weight.id());
        }
        if !by_storage || self.storages.is_empty() {
            return None;
        }
        self.storages.get(&storage_key(weight)).copied()
    }
}

/// The copies, valid for one version of the weights.
#[derive(Default)]
struct Copies {
    version: u64,
    host: HashMap<TensorId, Arc<Vec<Bf16>>>,
    tensors: HashMap<TensorId, Tensor>,
}

/// bf16 copies of the tracked weights the products have read at their current version, by
/// tensor: host vectors for the CPU kernels, bf16 tensors (in the autograd graph) for the composed
/// products on a GPU. Any other tensor is converted afresh at each use.
#[derive(Default)]
pub(crate) struct WeightCache {
    tracked: TrackedWeights,
    copies: Mutex<Copies>,
    conversions: AtomicUsize,
    /// The last activation converted for the products, by tensor: the query, key and value layers
    /// read the same input, which is converted once for the three.
    last_input: Mutex<Option<(TensorId, Arc<Vec<Bf16>>)>>,
}

impl WeightCache {
    fn new(tracked: TrackedWeights) -> Self {
        Self { tracked, ..Self::default() }
    }

    /// `weight` as a bf16 tensor on its device, converted once per version of a tracked weight.
    /// The conversion is recorded in the graph, so gradients reach the f32 weight.
    pub(crate) fn bf16_tensor(&self, weight: &Tensor) -> candle_core::Result<Tensor> {
        // Only the tensor itself: a copy made from a detached tensor is outside the graph, and a
        // training step must not read it.
        self.cached(weight, false, |c| &mut c.tensors, || weight.to_dtype(candle_core::DType::BF16))
    }

    /// `weight` in bf16 for the CPU kernels.
    pub(crate) fn get(&self, weight: &Tensor) -> candle_core::Result<Arc<Vec<Bf16>>> {
        self.cached(weight, true, |c| &mut c.host, || with_f32(weight, "bf16 weight", |w| Ok(Arc::new(to_bf16(w)))))
    }

    /// `xs` (an activation) in bf16 for the CPU kernels: the copy made for the previous product
    /// when that read the same tensor. A variable's values can change under the same id, so a
    /// variable is converted at every use.
    pub(crate) fn input(&self, xs: &Tensor) -> candle_core::Result<Arc<Vec<Bf16>>> {
        let mut last = self.last_input.lock().unwrap_or_else(|e| e.into_inner());
        match &*last {
            Some((id, copy)) if *id == xs.id() && !xs.is_variable() => return Ok(copy.clone()),
            _ => {}
        }
        let _profile = super::profile::op("bf16 input copy", "forward");
        let copy = with_f32(xs, "bf16 input", |x| Ok(Arc::new(to_bf16(x))))?;
        *last = (!xs.is_variable()).then(|| (xs.id(), copy.clone()));
        Ok(copy)
    }

    /// `convert(weight)`, from the copies of the weights' current version for a tracked weight,
    /// converted afresh for anything else.
    fn cached<T: Clone>(
        &self,
        weight: &Tensor,
        by_storage: bool,
        map: impl FnOnce(&mut Copies) -> &mut HashMap<TensorId, T>,
        convert: impl FnOnce() -> candle_core::Result<T>,
    ) -> candle_core::Result<T> {
        let convert = || {
            let _profile = super::profile::op("bf16 weight copy", "forward");
            self.conversions.fetch_add(1, Ordering::Relaxed);
            convert()
        };
        let Some(id) = self.tracked.tracked_id(weight, by_storage) else { return convert() };
        let mut copies = self.copies.lock().unwrap_or_else(|e| e.into_inner());
        let version = self.tracked.version();
        if copies.version != version {
            *copies = Copies { version, ..Copies::default() };
        }
        let map = map(&mut copies);
        if let Some(copy) = map.get(&id) {
            return Ok(copy.clone());
        }
        let converted = convert()?;
        map.insert(id, converted.clone());
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

/// A mixed-precision policy ready to run: for bf16 on the CPU, the library for this CPU was found,
/// or the CPU has no bf16 instructions and the products stay f32.
pub struct Autocast {
    precision: MixedPrecision,
    cache: Option<Arc<WeightCache>>,
    /// The products run on a GPU (cuBLAS through candle) rather than the CPU kernels.
    gpu: bool,
    /// Why bf16 was asked for and the products stay f32 (a CPU without bf16 instructions, bf16
    /// products measured too slow to pay, or ranks that disagree).
    kept_f32: Option<String>,
}

impl Autocast {
    /// The policy for `precision` on the CPU, keeping bf16 copies of `weights`.
    pub fn new(precision: MixedPrecision, weights: &TrackedWeights) -> Result<Self> {
        Self::on(precision, &candle_core::Device::Cpu, weights)
    }

    /// The policy for `precision` on `device`, keeping bf16 copies of `weights` (a model's
    /// `params().tracked()`). On a GPU, bf16 products are cuBLAS's (bf16 inputs, f32 accumulation).
    /// On the CPU they go through the library `bf16_library` chose, once `bf16_calibration`
    /// measured it to pay; on a CPU without bf16 instructions, or where the bf16 products measured
    /// too slow, the products stay f32 and [`Autocast::describe`] says so. A CPU with them whose library is missing is an error naming where it was looked
    /// for: bf16 asked for explicitly is not silently replaced by f32 there.
    pub fn on(precision: MixedPrecision, device: &candle_core::Device, weights: &TrackedWeights) -> Result<Self> {
        let gpu = !device.is_cpu();
        let mut kept_f32 = None;
        let cache = match precision {
            MixedPrecision::No => None,
            MixedPrecision::Bf16 if gpu => Some(Arc::new(WeightCache::new(weights.clone()))),
            MixedPrecision::Bf16 => match bf16_products() {
                Ok(_) => Some(Arc::new(WeightCache::new(weights.clone()))),
                Err(Unavailable::NoInstructions(why) | Unavailable::Slower(why)) => {
                    kept_f32 = Some(why.clone());
                    None
                }
                Err(Unavailable::Missing(why)) => {
                    return Err(Error::config("mixed_precision", format!("\"bf16\" needs {why}")))
                }
            },
        };
        Ok(Self { precision, cache, gpu, kept_f32 })
    }

    /// Why bf16 was asked for and the products run in f32, if they do.
    pub fn kept_f32(&self) -> Option<&str> {
        self.kept_f32.as_deref()
    }

    /// The precision the products run in: [`Autocast::precision`], or `No` where bf16 keeps f32.
    pub fn products(&self) -> MixedPrecision {
        if self.cache.is_some() {
            MixedPrecision::Bf16
        } else {
            MixedPrecision::No
        }
    }

    /// The same policy with f32 products, for `why` (ranks that must run the same sums).
    pub fn keep_f32(self, why: String) -> Self {
        Self { cache: None, kept_f32: Some(why), ..self }
    }

    pub fn precision(&self) -> MixedPrecision {
        self.precision
    }

    /// One line on what runs the products: for the run's log and `accel env`.
    pub fn describe(&self) -> String {
        if let Some(why) = &self.kept_f32 {
            return format!("f32 products: mixed_precision = \"bf16\" keeps f32 here, as {why}");
        }
        match (&self.cache, bf16_products()) {
            (Some(_), _) if self.gpu => "bf16 products through cuBLAS".to_string(),
            (Some(_), Ok(lib)) => format!("bf16 products through {}", bf16_calibration::describe(lib)),
            _ => "f32".to_string(),
        }
    }

    /// Runs `f` with this policy on the calling thread (restoring the previous one after).
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        super::with_local(&ACTIVE, self.cache.clone(), f).0
    }

    /// How many weight conversions to bf16 this scope has made (for tests of the cache).
    pub fn conversions(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.conversions.load(Ordering::Relaxed))
    }
}

/// Runs `f` in a bf16 scope that needs no library (the composed products only: CPU tests of what a
/// GPU computes), keeping copies of `weights`; returns `f`'s result and how many conversions it made.
#[cfg(test)]
pub(crate) fn with_composed_bf16<R>(weights: &TrackedWeights, f: impl FnOnce() -> R) -> (R, usize) {
    let cache = Arc::new(WeightCache::new(weights.clone()));
    let out = super::with_local(&ACTIVE, Some(cache.clone()), f).0;
    (out, cache.conversions.load(Ordering::Relaxed))
}
