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
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::{Tensor, TensorId};

use super::bf16::{to_bf16, Bf16, OutputCopy};
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
///
/// The weights a cache has read in bf16 are marked wanted; the optimizer writes their next bf16
/// copies in the pass that updates them ([`TrackedWeights::prepared`]), and the cache takes those
/// instead of converting the new values again.
#[derive(Debug, Clone, Default)]
pub struct TrackedWeights {
    ids: Arc<HashSet<TensorId>>,
    storages: Arc<HashMap<StorageKey, TensorId>>,
    _kept: Arc<Vec<Tensor>>,
    version: Arc<AtomicU64>,
    /// The weights whose bf16 copies a cache has made.
    wanted: Arc<Mutex<HashSet<TensorId>>>,
    /// Copies written with the values, each for the version it was made at.
    prepared: Arc<Mutex<HashMap<TensorId, Prepared>>>,
}

/// A weight's bf16 copy written with its values: the version it was written at, and the copy.
type Prepared = (u64, Arc<Vec<Bf16>>);

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
            ..Self::default()
        }
    }

    /// Whether a cache has read `weight` in bf16, so that whoever writes its values next should
    /// also write its bf16 copy and hand it over with [`TrackedWeights::prepared`].
    pub(crate) fn wants_copy(&self, weight: &Tensor) -> bool {
        // Only tracked weights are ever marked wanted.
        self.wanted.lock().unwrap_or_else(|e| e.into_inner()).contains(&weight.id())
    }

    /// Hands over `copy`, the bf16 copy of `weight`'s values written at the current version (after
    /// [`TrackedWeights::changed`], with the values).
    pub(crate) fn prepared(&self, weight: &Tensor, copy: Vec<Bf16>) {
        let entry = (self.version(), Arc::new(copy));
        self.prepared.lock().unwrap_or_else(|e| e.into_inner()).insert(weight.id(), entry);
    }

    /// The copy handed over for weight `id` at `version`, if any (an older one is dropped).
    fn take_prepared(&self, id: TensorId, version: u64) -> Option<Arc<Vec<Bf16>>> {
        let mut prepared = self.prepared.lock().unwrap_or_else(|e| e.into_inner());
        let (made_at, copy) = prepared.remove(&id)?;
        (made_at == version).then_some(copy)
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
    /// bf16 copies of the latest activations, by tensor, newest first: made by the ops that
    /// produced them ([`hand_over_copy`]), or by the first product that read them (the query, key and
    /// value layers read the same input, converted once for the three).
    inputs: Mutex<VecDeque<(TensorId, Arc<Vec<Bf16>>)>>,
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
        self.cached(weight, false, |c| &mut c.tensors, |_, _, _| None, || weight.to_dtype(candle_core::DType::BF16))
    }

    /// `weight` in bf16 for the CPU kernels.
    pub(crate) fn get(&self, weight: &Tensor) -> candle_core::Result<Arc<Vec<Bf16>>> {
        let prepared = |tracked: &TrackedWeights, id, version| {
            tracked.wanted.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
            tracked.take_prepared(id, version)
        };
        self.cached(
            weight,
            true,
            |c| &mut c.host,
            prepared,
            || with_f32(weight, "bf16 weight", |w| Ok(Arc::new(to_bf16(w)))),
        )
    }

    /// `xs` (an activation) in bf16 for the CPU kernels: the copy its producer made, or the copy
    /// made for a previous product that read the same tensor. A variable's values can change under
    /// the same id, so a variable is converted at every use.
    pub(crate) fn input(&self, xs: &Tensor) -> candle_core::Result<Arc<Vec<Bf16>>> {
        if let Some(copy) = self.kept_input(xs) {
            return Ok(copy);
        }
        let _profile = super::profile::op("bf16 input copy", "forward");
        let copy = with_f32(xs, "bf16 input", |x| Ok(Arc::new(to_bf16(x))))?;
        self.keep_input(xs, copy.clone());
        Ok(copy)
    }

    /// The copy kept for `xs` (made by its producer, or for a product that read it), if any; never
    /// one for a variable, which is not kept.
    pub(crate) fn kept_input(&self, xs: &Tensor) -> Option<Arc<Vec<Bf16>>> {
        let inputs = self.inputs.lock().unwrap_or_else(|e| e.into_inner());
        inputs.iter().find(|(id, _)| *id == xs.id()).map(|(_, copy)| copy.clone())
    }

    /// Keeps `copy`, the bf16 copy of the activation `xs` its producer made, for the products that
    /// read `xs`.
    fn keep_input(&self, xs: &Tensor, copy: Arc<Vec<Bf16>>) {
        if !xs.is_variable() {
            let mut inputs = self.inputs.lock().unwrap_or_else(|e| e.into_inner());
            inputs.push_front((xs.id(), copy));
            inputs.truncate(KEPT_INPUTS);
        }
    }

    /// `convert(weight)`, from the copies of the weights' current version for a tracked weight
    /// (made once: by `prepare`, which gives what the optimizer wrote, else by `convert`),
    /// converted afresh for anything else.
    fn cached<T: Clone>(
        &self,
        weight: &Tensor,
        by_storage: bool,
        map: impl FnOnce(&mut Copies) -> &mut HashMap<TensorId, T>,
        prepare: impl FnOnce(&TrackedWeights, TensorId, u64) -> Option<T>,
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
        let converted = match prepare(&self.tracked, id, version) {
            Some(prepared) => prepared,
            None => convert()?,
        };
        map.insert(id, converted.clone());
        Ok(converted)
    }
}

/// Activation copies kept at once: enough for a producer's copy to wait while the layers between
/// it and its reader run (a residual block's output waits for nothing, an attention block's for
/// its three projections), few enough that they cost little memory.
const KEPT_INPUTS: usize = 4;

/// Where an op leaves the bf16 copy of its output for the caller to hand over.
pub(crate) type CopySlot = Arc<Mutex<Option<Vec<Bf16>>>>;

/// A slot for an op's bf16 output copy when the calling thread's products take bf16 inputs (the op
/// then writes the copy beside its output, and the caller hands it over with [`hand_over_copy`]);
/// none otherwise.
pub(crate) fn copy_slot() -> Option<CopySlot> {
    ACTIVE.with(|a| a.borrow().is_some()).then(CopySlot::default)
}

/// Room for the bf16 copy of an op's output of `n` values, where the op has a slot for one.
pub(crate) fn output_copy(slot: &Option<CopySlot>, n: usize) -> Option<OutputCopy> {
    slot.as_ref().map(|_| OutputCopy::new(n))
}

/// Leaves the finished `copy` in `slot` for the op's caller.
///
/// # Safety
/// The op wrote every value of `copy` ([`OutputCopy::finish`]).
pub(crate) unsafe fn leave_copy(slot: &Option<CopySlot>, copy: Option<OutputCopy>) {
    if let (Some(slot), Some(copy)) = (slot, copy) {
        // SAFETY: the caller's promise.
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(unsafe { copy.finish() });
    }
}

/// Hands over the copy an op left in `slot`, of its output `ys`, to the calling thread's bf16
/// scope: the products that read `ys` take it instead of converting `ys`.
pub(crate) fn hand_over_copy(ys: &Tensor, slot: Option<CopySlot>) {
    let Some(copy) = slot.and_then(|s| s.lock().unwrap_or_else(|e| e.into_inner()).take()) else { return };
    if let Some(cache) = active() {
        cache.keep_input(ys, Arc::new(copy));
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

/// `ys` rounded to bf16, as the copy its producer handed over to the calling thread's bf16 scope
/// has it; panics when there is no such copy. For tests of the ops that make them.
#[cfg(test)]
pub(crate) fn handed_over(ys: &Tensor) -> (Vec<Bf16>, Vec<Bf16>) {
    let copy = active().expect("a bf16 scope").kept_input(ys).expect("a copy handed over");
    let expected = with_f32(ys, "output", |y| Ok(to_bf16(y))).unwrap();
    (copy.to_vec(), expected)
}

/// Runs `f` in a bf16 scope that needs no library (the composed products only: CPU tests of what a
/// GPU computes), keeping copies of `weights`; returns `f`'s result and how many conversions it made.
#[cfg(test)]
pub(crate) fn with_composed_bf16<R>(weights: &TrackedWeights, f: impl FnOnce() -> R) -> (R, usize) {
    let cache = Arc::new(WeightCache::new(weights.clone()));
    let out = super::with_local(&ACTIVE, Some(cache.clone()), f).0;
    (out, cache.conversions.load(Ordering::Relaxed))
}
