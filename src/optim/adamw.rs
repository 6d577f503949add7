//! AdamW with torch.optim.AdamW's update order, per-parameter weight-decay groups, and name-keyed state that checkpoints save and restore.
//!
//! For each parameter with a gradient `g`, at its step `t` (counted per parameter, as PyTorch does):
//!
//! ```text
//! p  = p * (1 - lr * weight_decay)                  (decoupled decay, first; skipped when wd = 0)
//! m  = m + (1 - beta1) * (g - m)                    (torch's lerp_, weight < 0.5 branch)
//! v  = v * beta2 + (1 - beta2) * g * g              (mul_ then addcmul_)
//! step_size = lr / (1 - beta1^t)                    (f64, as Python computes it)
//! denom     = sqrt(v) / sqrt(1 - beta2^t) + eps
//! p  = p + (-step_size) * m / denom                 (addcdiv_)
//! ```
//!
//! Scalars are computed in f64 and rounded to f32 where PyTorch hands them to an f32 kernel.
//! On CPU the whole update is one pass over (p, g, m, v) with the moments in plain host vectors;
//! elsewhere it is composed from tensor ops.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Tensor, Var};

use crate::kernels::cpu::bf16::OutputCopy;
use crate::kernels::cpu::threads::{par_each, CHUNK_ELEMS};
use crate::model::params::{write_safetensors, Params};
use crate::{bail, Error, Result};

/// AdamW hyperparameters. `Default` is `torch.optim.AdamW`'s: lr 1e-3, betas (0.9, 0.999), eps 1e-8,
/// weight decay 0.01, here with transformers Trainer's no-decay group (`decay_all = false`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Decay every parameter (one group, as `AdamW(model.parameters())`). When false, biases and
    /// LayerNorm weights are not decayed, as transformers' Trainer groups them.
    pub decay_all: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, decay_all: false }
    }
}

/// The moment estimates of one parameter: host vectors on CPU (updated in one fused pass), tensors elsewhere.
#[derive(Debug)]
enum Moments {
    Host { exp_avg: Vec<f32>, exp_avg_sq: Vec<f32> },
    Device { exp_avg: Tensor, exp_avg_sq: Tensor },
}

#[derive(Debug)]
struct ParamState {
    name: String,
    var: Var,
    decay: bool,
    step: u64,
    moments: Moments,
}

/// AdamW over a [`Params`] list; `step` applies one update from a [`GradStore`].
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    states: Vec<ParamState>,
    /// The parameters it updates; each step makes the copies made from them (bf16 weights) stale.
    params: Params,
}

/// Format tag written into saved optimizer state.
const STATE_FORMAT: &str = "accel-adamw-1";

impl AdamW {
    pub fn new(params: &Params, config: AdamWConfig) -> Result<Self> {
        let states = params
            .iter()
            .map(|(name, var)| {
                Ok(ParamState {
                    name: name.to_string(),
                    var: var.clone(),
                    decay: config.decay_all || decays_by_default(name),
                    step: 0,
                    moments: zero_moments(var)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { config, states, params: params.clone() })
    }

    /// The parameters this optimizer updates, in name order.
    pub fn params(&self) -> &Params {
        &self.params
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    pub fn lr(&self) -> f64 {
        self.config.lr
    }

    /// Sets the learning rate for the next steps (a schedule calls this before every step).
    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// The number of updates applied so far (the largest per-parameter step count).
    pub fn step_count(&self) -> u64 {
        self.states.iter().map(|s| s.step).max().unwrap_or(0)
    }

    /// Where each parameter's moments live (beside the parameter: host vectors for f32 CPU
    /// parameters, tensors on the parameter's device otherwise).
    pub fn state_locations(&self) -> Vec<(&str, candle_core::DeviceLocation)> {
        self.states
            .iter()
            .map(|s| {
                let location = match &s.moments {
                    Moments::Host { .. } => Device::Cpu.location(),
                    Moments::Device { exp_avg, .. } => exp_avg.device().location(),
                };
                (s.name.as_str(), location)
            })
            .collect()
    }

    /// Whether weight decay applies to the parameter `name`.
    pub fn decays(&self, name: &str) -> bool {
        self.states.iter().find(|s| s.name == name).is_some_and(|s| s.decay)
    }

    /// Applies one update to every parameter that has a gradient in `grads`; parameters without one
    /// are left alone and their step count does not advance.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step_scaled(grads, None)
    }

    /// [`step`](Self::step) on the gradients multiplied by `grad_scale` (the clipping coefficient
    /// of [`clip_coefficient`](super::clip_coefficient)), without writing the scaled gradients:
    /// the product is taken inside the update's one pass over each parameter, which saves a read
    /// and a write of every gradient. The result is the same as clipping the gradients in place
    /// first. `None` uses the gradients as they are.
    pub fn step_scaled(&mut self, grads: &GradStore, grad_scale: Option<f32>) -> Result<()> {
        let cfg = self.config;
        // Before any write, so that even a step that fails half-way leaves no copy thought fresh.
        self.params.mark_changed();
        for state in &mut self.states {
            let Some(grad) = grads.get(state.var.as_tensor()) else {
                continue;
            };
            if grad.shape() != state.var.shape() {
                bail!("gradient of {} has shape {:?}, the parameter {:?}", state.name, grad.dims(), state.var.dims());
            }
            state.step += 1;
            let scalars = StepScalars::new(&cfg, state.step, state.decay).scaling_gradients(grad_scale);
            match &mut state.moments {
                Moments::Host { exp_avg, exp_avg_sq } => {
                    let grad = grad.contiguous()?;
                    // The weight's next bf16 copy, written in the same pass, where the products read one.
                    let tracked = self.params.tracked();
                    let copy =
                        tracked.wants_copy(state.var.as_tensor()).then(|| OutputCopy::new(state.var.elem_count()));
                    let op = FusedUpdate {
                        exp_avg: RefCell::new(exp_avg),
                        exp_avg_sq: RefCell::new(exp_avg_sq),
                        scalars,
                        copy: copy.as_ref(),
                    };
                    state.var.as_tensor().inplace_op2(&grad, &op)?;
                    if let Some(copy) = copy {
                        // SAFETY: the update ran over every value and wrote each chunk's copy.
                        tracked.prepared(state.var.as_tensor(), unsafe { copy.finish() });
                    }
                }
                Moments::Device { exp_avg, exp_avg_sq } => {
                    let (p, m, v) = composed_update(state.var.as_tensor(), grad, exp_avg, exp_avg_sq, &scalars)?;
                    state.var.set(&p)?;
                    *exp_avg = m;
                    *exp_avg_sq = v;
                }
            }
        }
        Ok(())
    }

    /// The state as the optimizer file holds it (a copy of the moments, on the CPU).
    pub fn state(&self) -> Result<OptimizerState> {
        let mut entries = Vec::with_capacity(self.states.len());
        for s in &self.states {
            let (m, v) = match &s.moments {
                Moments::Host { exp_avg, exp_avg_sq } => (
                    Tensor::from_slice(exp_avg, s.var.shape(), &Device::Cpu)?,
                    Tensor::from_slice(exp_avg_sq, s.var.shape(), &Device::Cpu)?,
                ),
                Moments::Device { exp_avg, exp_avg_sq } => (exp_avg.clone(), exp_avg_sq.clone()),
            };
            entries.push(SavedMoments { name: s.name.clone(), step: s.step, exp_avg: m, exp_avg_sq: v });
        }
        Ok(OptimizerState { entries })
    }

    /// Writes the moments (`<name>.exp_avg`, `<name>.exp_avg_sq`) and per-parameter step counts to
    /// `path` as safetensors.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.state()?.write(path.as_ref())
    }

    /// Restores state written by [`save`](Self::save) for the same parameter names and shapes.
    /// Hyperparameters are not restored: they come from the configuration (and the schedule).
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let file = StateFile::read(path.as_ref())?;
        file.check_names(self.states.iter().map(|s| s.name.as_str()))?;
        // Read everything before changing anything, so a bad file leaves the optimizer as it was.
        let mut restored = Vec::with_capacity(self.states.len());
        for s in &self.states {
            let (m, v) = file.moments(&s.name, s.var.dims())?;
            restored.push((file.step(&s.name)?, m, v));
        }
        for (s, (step, m, v)) in self.states.iter_mut().zip(restored) {
            s.step = step;
            s.moments = match &s.moments {
                Moments::Host { .. } => Moments::Host { exp_avg: m, exp_avg_sq: v },
                Moments::Device { .. } => {
                    let (shape, dev) = (s.var.shape(), s.var.device());
                    Moments::Device {
                        exp_avg: Tensor::from_vec(m, shape, dev)?,
                        exp_avg_sq: Tensor::from_vec(v, shape, dev)?,
                    }
                }
            };
        }
        Ok(())
    }
}

/// One parameter's AdamW state as the optimizer file holds it.
#[derive(Debug)]
pub(crate) struct SavedMoments {
    pub name: String,
    pub step: u64,
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
}

/// AdamW's state as a checkpoint's optimizer file holds it, whichever optimizer (replicated or
/// sharded) held it: per parameter its two moments (`<name>.exp_avg`, `<name>.exp_avg_sq`) and its
/// step count (in the metadata).
#[derive(Debug)]
pub struct OptimizerState {
    pub(crate) entries: Vec<SavedMoments>,
}

impl OptimizerState {
    /// Writes the state to `path` as safetensors (to a temporary file, then renamed).
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut tensors = Vec::with_capacity(2 * self.entries.len());
        for e in &self.entries {
            tensors.push((format!("{}.exp_avg", e.name), &e.exp_avg));
            tensors.push((format!("{}.exp_avg_sq", e.name), &e.exp_avg_sq));
        }
        let steps: BTreeMap<&str, u64> = self.entries.iter().map(|e| (e.name.as_str(), e.step)).collect();
        let metadata = HashMap::from([
            ("format".to_string(), STATE_FORMAT.to_string()),
            ("steps".to_string(), serde_json::to_string(&steps).expect("a map of numbers serializes")),
        ]);
        let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), *t)).collect();
        write_safetensors(path, refs, metadata)
    }
}

/// An optimizer file read whole, checked as it is asked for each parameter's state.
pub(crate) struct StateFile {
    path: std::path::PathBuf,
    bytes: Vec<u8>,
    steps: BTreeMap<String, u64>,
}

impl StateFile {
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |message: String| Error::data(path, None, message);
        safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("not safetensors: {e}")))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(STATE_FORMAT) {
            return Err(bad(format!("not AdamW state written by accel (format tag {:?})", meta.get("format"))));
        }
        let steps: BTreeMap<String, u64> = serde_json::from_str(meta.get("steps").map(String::as_str).unwrap_or(""))
            .map_err(|e| bad(format!("bad \"steps\" metadata: {e}")))?;
        Ok(Self { path: path.to_path_buf(), bytes, steps })
    }

    fn bad(&self, message: String) -> Error {
        Error::data(&self.path, None, message)
    }

    /// Errors unless the file holds state for exactly the parameters `names`.
    pub fn check_names<'a>(&self, names: impl Iterator<Item = &'a str> + Clone) -> Result<()> {
        if let Some(name) = names.clone().find(|n| !self.steps.contains_key(*n)) {
            return Err(self.bad(format!("no state for parameter {name}")));
        }
        let known: Vec<&str> = names.collect();
        let extra: Vec<&String> = self.steps.keys().filter(|k| !known.contains(&k.as_str())).collect();
        if !extra.is_empty() {
            return Err(self.bad(format!("state for parameters this model does not have: {extra:?}")));
        }
        Ok(())
    }

    /// The step count of parameter `name`.
    pub fn step(&self, name: &str) -> Result<u64> {
        self.steps.get(name).copied().ok_or_else(|| self.bad(format!("no state for parameter {name}")))
    }

    /// The two moments of parameter `name`, which must have the shape `dims`.
    pub fn moments(&self, name: &str, dims: &[usize]) -> Result<(Vec<f32>, Vec<f32>)> {
        let file = safetensors::SafeTensors::deserialize(&self.bytes).map_err(|e| self.bad(e.to_string()))?;
        let read = |suffix: &str| -> Result<Vec<f32>> {
            let key = format!("{name}.{suffix}");
            let view = file.tensor(&key).map_err(|_| self.bad(format!("missing tensor {key}")))?;
            if view.dtype() != safetensors::Dtype::F32 || view.shape() != dims {
                return Err(self.bad(format!("{key} is {:?} {:?}, expected F32 {dims:?}", view.dtype(), view.shape())));
            }
            Ok(view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
        };
        Ok((read("exp_avg")?, read("exp_avg_sq")?))
    }
}

/// transformers Trainer's grouping (`get_decay_parameter_names`): no weight decay for biases and
/// normalisation parameters, by the names every family gives them: `LayerNorm` (BERT, DeBERTa),
/// `*_layer_norm` (DistilBERT), `norm` and `*_norm` (ModernBERT), `rmsnorm`.
pub(crate) fn decays_by_default(name: &str) -> bool {
    let lower = name.to_lowercase();
    let norm_part = lower.split('.').any(|part| part == "norm" || part.ends_with("_norm"));
    !(lower.contains("bias") || lower.contains("layernorm") || lower.contains("rmsnorm") || norm_part)
}

fn zero_moments(var: &Var) -> Result<Moments> {
    if var.device().is_cpu() && var.dtype() == DType::F32 {
        let n = var.elem_count();
        Ok(Moments::Host { exp_avg: vec![0.0; n], exp_avg_sq: vec![0.0; n] })
    } else {
        Ok(Moments::Device { exp_avg: var.zeros_like()?, exp_avg_sq: var.zeros_like()? })
    }
}

/// The per-step scalars, derived in f64 exactly as torch's `_single_tensor_adam` does in Python,
/// then rounded to f32 as the kernels receive them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepScalars {
    /// `1 - lr * weight_decay`, or 1 when no decay applies.
    decay_factor: f32,
    /// `1 - beta1`, the lerp weight.
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    /// `-lr / (1 - beta1^t)`.
    neg_step_size: f32,
    /// `(1 - beta2^t) ** 0.5`.
    bias_correction2_sqrt: f32,
    eps: f32,
    /// Whether `decay_factor` is applied at all (PyTorch skips the multiply when wd == 0).
    apply_decay: bool,
    /// `clip_grad_norm_`'s coefficient, multiplied into each gradient value before it is used, or
    /// `None` when the gradients are used as they are.
    grad_scale: Option<f32>,
}

impl StepScalars {
    pub(crate) fn new(cfg: &AdamWConfig, step: u64, decay: bool) -> Self {
        let t = step as f64;
        let bias_correction1 = 1.0 - cfg.beta1.powf(t);
        let bias_correction2 = 1.0 - cfg.beta2.powf(t);
        let apply_decay = decay && cfg.weight_decay != 0.0;
        Self {
            decay_factor: (1.0 - cfg.lr * cfg.weight_decay) as f32,
            one_minus_beta1: (1.0 - cfg.beta1) as f32,
            beta2: cfg.beta2 as f32,
            one_minus_beta2: (1.0 - cfg.beta2) as f32,
            neg_step_size: (-(cfg.lr / bias_correction1)) as f32,
            bias_correction2_sqrt: bias_correction2.powf(0.5) as f32,
            eps: cfg.eps as f32,
            apply_decay,
            grad_scale: None,
        }
    }

    /// The same scalars for gradients that are first multiplied by `coef` (the clipping
    /// coefficient), inside the update's one pass: the value each element sees is the f32 product
    /// `g * coef` that scaling the gradients in place would have stored.
    pub(crate) fn scaling_gradients(self, coef: Option<f32>) -> Self {
        Self { grad_scale: coef, ..self }
    }

    /// One element of the update; returns nothing, writes p, m, v. `DECAY` and `SCALE` are
    /// `apply_decay` and whether `grad_scale` is set, as constants so that each loop is compiled
    /// without the branches.
    #[inline(always)]
    fn apply<const DECAY: bool, const SCALE: bool>(&self, p: &mut f32, g: f32, m: &mut f32, v: &mut f32) {
        let g = if SCALE { g * self.grad_scale.unwrap_or(1.0) } else { g };
        if DECAY {
            *p *= self.decay_factor;
        }
        *m += self.one_minus_beta1 * (g - *m);
        *v = *v * self.beta2 + self.one_minus_beta2 * g * g;
        let denom = v.sqrt() / self.bias_correction2_sqrt + self.eps;
        *p += self.neg_step_size * *m / denom;
    }
}

/// The CPU update as an in-place op on the parameter, with the gradient as its source. The moment
/// vectors ride along in the op because candle's in-place ops mutate only their first tensor.
struct FusedUpdate<'a> {
    exp_avg: RefCell<&'a mut Vec<f32>>,
    exp_avg_sq: RefCell<&'a mut Vec<f32>>,
    scalars: StepScalars,
    /// Where the updated values' bf16 copy goes, if the products want one.
    copy: Option<&'a OutputCopy>,
}

impl InplaceOp2 for FusedUpdate<'_> {
    fn name(&self) -> &'static str {
        "adamw-fused-update"
    }

    fn cpu_fwd(&self, p: &mut CpuStorage, pl: &Layout, g: &CpuStorage, gl: &Layout) -> candle_core::Result<()> {
        let _profile = crate::kernels::cpu::profile::op("adamw", "forward");
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (p, g) else {
            candle_core::bail!("adamw: parameters and gradients must be f32 on CPU")
        };
        let (Some((p0, p1)), Some((g0, g1))) = (pl.contiguous_offsets(), gl.contiguous_offsets()) else {
            candle_core::bail!("adamw: parameter and gradient must be contiguous")
        };
        let (p, g) = (&mut p[p0..p1], &g[g0..g1]);
        let mut m = self.exp_avg.borrow_mut();
        let mut v = self.exp_avg_sq.borrow_mut();
        if p.len() != g.len() || p.len() != m.len() || p.len() != v.len() {
            candle_core::bail!("adamw: parameter, gradient and moments differ in length");
        }
        if self.copy.is_some_and(|c| c.len() != p.len()) {
            candle_core::bail!("adamw: bf16 copy of another length than the parameter");
        }
        host_update(p, g, &mut m[..], &mut v[..], &self.scalars, self.copy);
        Ok(())
    }
}

/// The update of host values `p` from gradients `g` with moments `m` and `v` (all of one length),
/// in parallel chunks; with `copy`, each chunk's new values are also written to it in bf16 while
/// they are in cache.
pub(crate) fn host_update(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    s: &StepScalars,
    copy: Option<&OutputCopy>,
) {
    let s = *s;
    // Elements are independent, so any split gives the same result.
    let chunk = CHUNK_ELEMS * 4;
    let items: Vec<_> = p
        .chunks_mut(chunk)
        .zip(g.chunks(chunk))
        .zip(m.chunks_mut(chunk))
        .zip(v.chunks_mut(chunk))
        .enumerate()
        .collect();
    par_each(items, |(i, (((p, g), m), v))| {
        match (s.apply_decay, s.grad_scale.is_some()) {
            (true, true) => update_chunk::<true, true>(p, g, m, v, &s),
            (true, false) => update_chunk::<true, false>(p, g, m, v, &s),
            (false, true) => update_chunk::<false, true>(p, g, m, v, &s),
            (false, false) => update_chunk::<false, false>(p, g, m, v, &s),
        }
        if let Some(copy) = copy {
            // SAFETY: chunk i's values are written by the one thread that runs the chunk.
            unsafe { copy.write(*i * chunk, p) };
        }
    });
}

fn update_chunk<const DECAY: bool, const SCALE: bool>(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    s: &StepScalars,
) {
    for (((p, &g), m), v) in p.iter_mut().zip(g.iter()).zip(m.iter_mut()).zip(v.iter_mut()) {
        s.apply::<DECAY, SCALE>(p, g, m, v);
    }
}

/// The same update from tensor ops, for devices other than the CPU (and as the reference the fused
/// CPU pass is tested against). Returns the new (p, m, v).
pub(crate) fn composed_update(
    p: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    s: &StepScalars,
) -> Result<(Tensor, Tensor, Tensor)> {
    let scaled;
    let g = match s.grad_scale {
        Some(coef) => {
            scaled = g.affine(f64::from(coef), 0.0)?;
            &scaled
        }
        None => g,
    };
    let p = if s.apply_decay { p.affine(f64::from(s.decay_factor), 0.0)? } else { p.clone() };
    let m = (m + (g - m)?.affine(f64::from(s.one_minus_beta1), 0.0)?)?;
    let v = (v.affine(f64::from(s.beta2), 0.0)? + g.affine(f64::from(s.one_minus_beta2), 0.0)?.mul(g)?)?;
    let denom = (v.sqrt()? / f64::from(s.bias_correction2_sqrt))?.affine(1.0, f64::from(s.eps))?;
    let p = (p + m.affine(f64::from(s.neg_step_size), 0.0)?.div(&denom)?)?;
    Ok((p, m, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One parameter p = [1.0, -2.0, 0.5], gradients given directly, lr = 0.1, wd = 0.1.
    fn setup(decay_all: bool) -> (Params, Var, AdamW) {
        let p = Var::from_slice(&[1.0f32, -2.0, 0.5], 3, &Device::Cpu).unwrap();
        let params = Params::new(vec![("w".into(), p.clone())]).unwrap();
        let cfg = AdamWConfig { lr: 0.1, weight_decay: 0.1, decay_all, ..Default::default() };
        let opt = AdamW::new(&params, cfg).unwrap();
        (params, p, opt)
    }

    #[test]
    fn the_update_writes_the_bf16_copy_the_products_read_next() {
        use crate::kernels::cpu::autocast::{active, with_composed_bf16};
        use crate::kernels::cpu::bf16::to_bf16;
        let (params, p, mut opt) = setup(true);
        let read = || with_composed_bf16(params.tracked(), || active().unwrap().get(p.as_tensor()).unwrap());
        // Not wanted yet: the first read converts, and the update writes no copy.
        opt.step(&grads_for(&p, &[0.1, 0.2, 0.3])).unwrap();
        assert_eq!(read().1, 1);
        // Now wanted: the next update writes the copy of its new values, and the read takes it.
        opt.step(&grads_for(&p, &[0.3, -0.2, 0.1])).unwrap();
        let (copy, conversions) = read();
        assert_eq!(conversions, 0);
        assert_eq!(*copy, to_bf16(&p.as_tensor().to_vec1::<f32>().unwrap()));
        // Taken once: written again after that, a copy made for an older version is never read.
        opt.step(&grads_for(&p, &[0.3, -0.2, 0.1])).unwrap();
        params.mark_changed();
        assert_eq!(read().1, 1);
    }

    fn grads_for(p: &Var, g: &[f32]) -> GradStore {
        // loss = sum(p * g)  ->  dloss/dp = g
        let g = Tensor::new(g, &Device::Cpu).unwrap();
        (p.as_tensor() * g).unwrap().sum_all().unwrap().backward().unwrap()
    }

    fn assert_close(actual: &[f32], expected: &[f64], rel: f64) {
        for (a, e) in actual.iter().zip(expected) {
            assert!((f64::from(*a) - e).abs() <= rel * e.abs().max(1e-12), "{actual:?} vs {expected:?}");
        }
    }

    #[test]
    fn two_steps_match_pytorch_formulas() {
        let (_, p, mut opt) = setup(true);
        // Step 1, g = [0.5, -1.0, 0.0]:
        //   p *= 1 - 0.1*0.1 = 0.99                 -> [0.99, -1.98, 0.495]
        //   m = 0.1*g = [0.05, -0.1, 0];  v = 0.001*g^2 = [2.5e-4, 1e-3, 0]
        //   step_size = 0.1 / (1 - 0.9) = 1.0;  bc2_sqrt = sqrt(1 - 0.999) = 0.0316227766
        //   denom = sqrt(v)/bc2_sqrt + 1e-8 = [0.5 + 1e-8, 1.0 + 1e-8, 1e-8]
        //   p -= m / denom  -> [0.99 - 0.05/(0.5+1e-8), -1.98 + 0.1/(1+1e-8), 0.495 - 0]
        opt.step(&grads_for(&p, &[0.5, -1.0, 0.0])).unwrap();
        let e1 = [0.99 - 0.05 / (0.5 + 1e-8), -1.98 + 0.1 / (1.0 + 1e-8), 0.495];
        assert_close(&p.to_vec1::<f32>().unwrap(), &e1, 1e-6);

        // Step 2, g = [0.1, 0.2, -0.3]:
        //   p *= 0.99
        //   m = 0.9*m1 + 0.1*g;  v = 0.999*v1 + 0.001*g^2
        //   step_size = 0.1 / (1 - 0.81) = 0.526315789...;  bc2_sqrt = sqrt(1 - 0.998001)
        //   p -= step_size * m / (sqrt(v)/bc2_sqrt + 1e-8)
        opt.step(&grads_for(&p, &[0.1, 0.2, -0.3])).unwrap();
        let (g1, g2) = ([0.5, -1.0, 0.0], [0.1, 0.2, -0.3]);
        let step_size = 0.1 / (1.0 - 0.9f64 * 0.9);
        let bc2_sqrt = (1.0 - 0.999f64 * 0.999).sqrt();
        let e2: Vec<f64> = (0..3)
            .map(|i| {
                let m = 0.9 * (0.1 * g1[i]) + 0.1 * g2[i];
                let v = 0.999 * (0.001 * g1[i] * g1[i]) + 0.001 * g2[i] * g2[i];
                e1[i] * 0.99 - step_size * m / (v.sqrt() / bc2_sqrt + 1e-8)
            })
            .collect();
        assert_close(&p.to_vec1::<f32>().unwrap(), &e2, 1e-6);
        assert_eq!(opt.step_count(), 2);
    }

    #[test]
    fn trainer_grouping_skips_decay_for_bias_and_layer_norm() {
        let names = [
            "bert.embeddings.LayerNorm.weight",
            "bert.embeddings.LayerNorm.bias",
            "bert.encoder.layer.0.output.dense.bias",
            "bert.encoder.layer.0.output.dense.weight",
            "classifier.weight",
            "distilbert.transformer.layer.0.sa_layer_norm.weight",
            "model.layers.1.attn_norm.weight",
            "model.final_norm.weight",
            "head.norm.weight",
            "deberta.encoder.rel_embeddings.weight",
        ];
        let vars: Vec<(String, Var)> =
            names.iter().map(|n| (n.to_string(), Var::zeros(2, DType::F32, &Device::Cpu).unwrap())).collect();
        let params = Params::new(vars).unwrap();
        let opt = AdamW::new(&params, AdamWConfig::default()).unwrap();
        let decayed: Vec<&str> = names.iter().copied().filter(|n| opt.decays(n)).collect();
        assert_eq!(
            decayed,
            ["bert.encoder.layer.0.output.dense.weight", "classifier.weight", "deberta.encoder.rel_embeddings.weight"]
        );
        let all = AdamW::new(&params, AdamWConfig { decay_all: true, ..Default::default() }).unwrap();
        assert!(names.iter().all(|n| all.decays(n)));
    }

    #[test]
    fn no_decay_group_gets_plain_adam() {
        let p = Var::from_slice(&[1.0f32], 1, &Device::Cpu).unwrap();
        let params = Params::new(vec![("x.bias".into(), p.clone())]).unwrap();
        let mut opt = AdamW::new(&params, AdamWConfig { lr: 0.1, weight_decay: 0.5, ..Default::default() }).unwrap();
        // No decay: p = 1 - 1.0 * 0.1*g / (|g| + 1e-8) with step_size 1.0 -> 1 - 0.1 = 0.9 (g > 0).
        opt.step(&grads_for(&p, &[2.0])).unwrap();
        assert_close(&p.to_vec1::<f32>().unwrap(), &[1.0 - 0.1 * 2.0 / (2.0 + 1e-8)], 1e-6);
    }

    #[test]
    fn fused_cpu_update_matches_composed_reference() {
        let n = 1000;
        let values: Vec<f32> = (0..n).map(|i| (i as f32 * 0.1).sin()).collect();
        let grads: Vec<Vec<f32>> =
            (0..3).map(|s| (0..n).map(|i| ((i * (s + 2)) as f32 * 0.07).cos() * 1e-3).collect()).collect();
        let cfg = AdamWConfig { lr: 5e-5, weight_decay: 0.01, decay_all: true, ..Default::default() };
        let p = Var::from_slice(&values, n, &Device::Cpu).unwrap();
        let params = Params::new(vec![("w".into(), p.clone())]).unwrap();
        let mut opt = AdamW::new(&params, cfg).unwrap();
        let mut reference = Tensor::from_slice(&values, n, &Device::Cpu).unwrap();
        let (mut m, mut v) = (reference.zeros_like().unwrap(), reference.zeros_like().unwrap());
        for (step, g) in grads.iter().enumerate() {
            opt.step(&grads_for(&p, g)).unwrap();
            let g = Tensor::from_slice(g, n, &Device::Cpu).unwrap();
            let s = StepScalars::new(&cfg, step as u64 + 1, true);
            (reference, m, v) = composed_update(&reference, &g, &m, &v, &s).unwrap();
        }
        let ours = p.to_vec1::<f32>().unwrap();
        let theirs = reference.to_vec1::<f32>().unwrap();
        for (a, b) in ours.iter().zip(&theirs) {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-3), "{a} vs {b}");
        }
    }

    /// A clipping coefficient handed to the update gives, bit for bit, what stepping on gradients
    /// already multiplied by it gives: the fused CPU pass (parameters with and without weight
    /// decay) and the composed pass of other devices.
    #[test]
    fn scaled_step_equals_clipping_the_gradients_first() {
        let n = 300;
        let values: Vec<f32> = (0..n).map(|i| (i as f32 * 0.3).sin()).collect();
        let grads: Vec<Tensor> = (0..3)
            .map(|s| {
                let g: Vec<f32> = (0..n).map(|i| ((i * (s + 3)) as f32 * 0.11).cos()).collect();
                Tensor::from_slice(&g, n, &Device::Cpu).unwrap()
            })
            .collect();
        let coef = 0.123_456_7_f32;
        let cfg = AdamWConfig { lr: 1e-3, weight_decay: 0.01, ..Default::default() };
        let run = |fused: bool| {
            let w = Var::from_slice(&values, n, &Device::Cpu).unwrap();
            let b = Var::from_slice(&values, n, &Device::Cpu).unwrap();
            let params = Params::new(vec![("w".into(), w.clone()), ("x.bias".into(), b.clone())]).unwrap();
            let mut opt = AdamW::new(&params, cfg).unwrap();
            for g in &grads {
                let mut store =
                    ((w.as_tensor() + b.as_tensor()).unwrap() * g).unwrap().sum_all().unwrap().backward().unwrap();
                if fused {
                    opt.step_scaled(&store, Some(coef)).unwrap();
                } else {
                    let clipped = g.affine(f64::from(coef), 0.0).unwrap();
                    store.insert(w.as_tensor(), clipped.clone());
                    store.insert(b.as_tensor(), clipped);
                    opt.step(&store).unwrap();
                }
            }
            (w.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap())
        };
        let (fused, first) = (run(true), run(false));
        assert_eq!(fused, first);
        assert_ne!(fused.0, fused.1, "the decayed and the undecayed parameter should differ");

        let p = Tensor::from_slice(&values, n, &Device::Cpu).unwrap();
        let (m, v) = (grads[1].clone(), grads[2].sqr().unwrap());
        let s = StepScalars::new(&cfg, 2, true);
        let ours = composed_update(&p, &grads[0], &m, &v, &s.scaling_gradients(Some(coef))).unwrap();
        let theirs = composed_update(&p, &grads[0].affine(f64::from(coef), 0.0).unwrap(), &m, &v, &s).unwrap();
        for (a, b) in [(ours.0, theirs.0), (ours.1, theirs.1), (ours.2, theirs.2)] {
            assert_eq!(a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
        }
    }

    #[test]
    fn save_and_load_resume_identically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optimizer.safetensors");
        let (_, p, mut opt) = setup(false);
        opt.step(&grads_for(&p, &[0.5, -1.0, 0.25])).unwrap();
        opt.save(&path).unwrap();
        let snapshot = p.as_tensor().copy().unwrap();

        opt.step(&grads_for(&p, &[0.1, 0.2, 0.3])).unwrap();
        let continued = p.to_vec1::<f32>().unwrap();

        let (_, p2, mut resumed) = setup(false);
        p2.set(&snapshot).unwrap();
        resumed.load(&path).unwrap();
        assert_eq!(resumed.step_count(), 1);
        resumed.step(&grads_for(&p2, &[0.1, 0.2, 0.3])).unwrap();
        assert_eq!(p2.to_vec1::<f32>().unwrap(), continued);
    }

    #[test]
    fn parameters_without_gradients_are_untouched() {
        let a = Var::from_slice(&[1.0f32], 1, &Device::Cpu).unwrap();
        let b = Var::from_slice(&[1.0f32], 1, &Device::Cpu).unwrap();
        let params = Params::new(vec![("a".into(), a.clone()), ("b".into(), b.clone())]).unwrap();
        let mut opt = AdamW::new(&params, AdamWConfig { decay_all: true, ..Default::default() }).unwrap();
        opt.step(&grads_for(&a, &[1.0])).unwrap();
        assert_eq!(b.to_vec1::<f32>().unwrap(), [1.0]);
        assert_ne!(a.to_vec1::<f32>().unwrap(), [1.0]);
    }
}
