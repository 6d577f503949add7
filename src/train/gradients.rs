//! Gradients: the parameter gradients of one optimizer step, accumulated over micro-batches,
//! averaged across processes, and clipped, each as its own call so a custom loop reads like the
//! course's: `backward`, `clip`, `optimizer.step`, `zero`.

use candle_core::backprop::GradStore;
use candle_core::Tensor;

use crate::distributed::ProcessGroup;
use crate::kernels::cpu::{collect_table_grads, with_grad_sink};
use crate::model::Params;
use crate::optim::clip_grad_norm;
use crate::Result;

/// Takes `(parameter, gradient)` as the backward pass makes it: `Ok(None)` when it took the
/// gradient, `Ok(Some(gradient))` to leave it to be accumulated.
pub(crate) type Take<'a> = dyn FnMut(&Tensor, Tensor) -> Result<Option<Tensor>> + 'a;

/// Accumulated parameter gradients (intermediate gradients are dropped right after backward).
#[derive(Debug)]
pub struct Gradients {
    store: GradStore,
    micro_batches: usize,
    bucket_bytes: usize,
    reducer: crate::distributed::reducer::GradientReducer,
}

impl Default for Gradients {
    fn default() -> Self {
        Self {
            store: GradStore::default(),
            micro_batches: 0,
            bucket_bytes: crate::distributed::buckets::DEFAULT_BUCKET_BYTES,
            reducer: Default::default(),
        }
    }
}

impl Gradients {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the size of the buckets that [`Gradients::all_reduce_mean`] reduces at once.
    pub fn with_bucket_bytes(mut self, bytes: usize) -> Self {
        self.bucket_bytes = bytes.max(4);
        self
    }

    /// Backpropagates `loss` and adds each parameter's gradient to what is accumulated.
    pub fn backward(&mut self, loss: &Tensor, params: &Params) -> Result<()> {
        self.backward_with(loss, params, None)
    }

    /// [`backward`](Self::backward) for the step's last micro-batch, with every parameter gradient
    /// the CPU kernels make, added to what is accumulated for it, offered to `take` as it is made
    /// (ZeRO-2 reduce-scatters it there). What `take` leaves is accumulated as by `backward`.
    pub(crate) fn backward_handing_over(&mut self, loss: &Tensor, params: &Params, take: &mut Take<'_>) -> Result<()> {
        self.backward_with(loss, params, Some(take))
    }

    /// The backward pass of both: the word table's gradient comes back beside candle's store (see
    /// `collect_table_grads`), and so does every gradient the CPU kernels make for their
    /// parameters, through a sink (candle would add each to a zero-filled tensor of its size
    /// first). With `take`, each of those is first summed with what is accumulated and offered to
    /// it; what it leaves is accumulated with the rest.
    fn backward_with(&mut self, loss: &Tensor, params: &Params, mut take: Option<&mut Take<'_>>) -> Result<()> {
        let store = &mut self.store;
        let mut handed = Vec::new();
        // The error `take` met, kept whole (candle's error type would flatten it into a message).
        let mut failed = None;
        let mut sink = |param: &Tensor, grad: Tensor| -> candle_core::Result<Option<Tensor>> {
            let left = match take.as_mut() {
                Some(take) => {
                    let grad = match store.remove(param) {
                        Some(acc) => (acc + grad)?,
                        None => grad,
                    };
                    take(param, grad).map_err(|e| {
                        let message = e.to_string();
                        failed = Some(e);
                        candle_core::Error::Msg(message)
                    })?
                }
                None => Some(grad),
            };
            handed.extend(left.map(|grad| (param.clone(), grad)));
            Ok(None)
        };
        let (fresh, mut tables) = with_grad_sink(&mut sink, || collect_table_grads(|| loss.backward()));
        if let Some(e) = failed {
            return Err(e);
        }
        tables.append(&mut handed);
        self.accumulate(fresh?, tables, params)
    }

    /// Adds a backward pass's gradients (`fresh`, and those handed over beside it, a parameter
    /// possibly more than once) to what is accumulated.
    fn accumulate(&mut self, mut fresh: GradStore, tables: Vec<(Tensor, Tensor)>, params: &Params) -> Result<()> {
        for (table, grad) in tables {
            let sum = match fresh.remove(&table) {
                Some(other) => (other + grad)?,
                None => grad,
            };
            fresh.insert(&table, sum);
        }
        for (_, var) in params.iter() {
            let Some(grad) = fresh.remove(var.as_tensor()) else { continue };
            let sum = match self.store.remove(var.as_tensor()) {
                Some(acc) => (acc + grad)?,
                None => grad,
            };
            self.store.insert(var.as_tensor(), sum);
        }
        self.micro_batches += 1;
        Ok(())
    }

    /// How many backward passes are accumulated.
    pub fn micro_batches(&self) -> usize {
        self.micro_batches
    }

    /// Replaces every gradient by its mean over the ranks of `pg`: the parameters in name order,
    /// in buckets of the configured size (one all-reduce each). A single process returns at once.
    /// Call it once per optimizer step, after the last micro-batch (accumulation does not reduce).
    pub fn all_reduce_mean(&mut self, params: &Params, pg: &dyn ProcessGroup) -> Result<()> {
        self.reducer.all_reduce_mean(&mut self.store, params, pg, self.bucket_bytes)
    }

    /// Scales the gradients so that their global L2 norm is at most `max_norm`; returns the norm
    /// before clipping (`torch.nn.utils.clip_grad_norm_`). A `max_norm` of 0 or less only measures.
    pub fn clip(&mut self, params: &Params, max_norm: f64) -> Result<f64> {
        if max_norm > 0.0 {
            clip_grad_norm(&mut self.store, params, max_norm)
        } else {
            crate::optim::global_grad_norm(&self.store, params)
        }
    }

    /// Multiplies every gradient by `factor` (a test hook: one rank's gradients made to differ).
    pub fn scale(&mut self, params: &Params, factor: f64) -> Result<()> {
        for (_, var) in params.iter() {
            if let Some(g) = self.store.remove(var.as_tensor()) {
                self.store.insert(var.as_tensor(), g.affine(factor, 0.0)?);
            }
        }
        Ok(())
    }

    /// The gradients, for `AdamW::step`.
    pub fn store(&self) -> &GradStore {
        &self.store
    }

    /// The gradients, for the reductions that take them out (ZeRO-2's reduce-scatter).
    pub(crate) fn store_mut(&mut self) -> &mut GradStore {
        &mut self.store
    }

    /// Forgets every gradient (`optimizer.zero_grad()`).
    pub fn zero(&mut self) {
        self.store = GradStore::default();
        self.micro_batches = 0;
    }
}
