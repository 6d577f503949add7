//! AdamW with its moments sharded over the ranks (ZeRO stages 1 and 2): each rank keeps the moments
//! of its slices of the flat buckets only ([`ShardLayout`]) and updates only those elements of the
//! weights; the updated slices are then all-gathered, so every rank ends the step with the same
//! full weights, as under DDP.
//!
//! The update of each element is [`AdamW`](super::AdamW)'s (the same scalars and the same fused
//! pass on the CPU), so a sharded run follows a replicated one. Step counts stay per parameter, and
//! the state is saved and read in the replicated optimizer's file format: rank 0 gathers every
//! rank's moments into it, and every rank reads its slices from it, whatever the world size that
//! wrote it.

use std::cell::RefCell;
use std::ops::Range;
use std::path::Path;

use candle_core::{CpuStorage, Device, InplaceOp1, Layout, Tensor, Var};

use super::adamw::{
    composed_update, decays_by_default, host_update, OptimizerState, SavedMoments, StateFile, StepScalars,
};
use super::AdamWConfig;
use crate::distributed::shards::{all_gather_bucket, param_slices, ShardLayout};
use crate::distributed::ProcessGroup;
use crate::kernels::cpu::storage::with_f32;
use crate::model::Params;
use crate::{bail, Result};

/// The moments of one bucket's slice: host vectors for f32 CPU parameters, tensors elsewhere.
#[derive(Debug)]
enum SliceMoments {
    Host { exp_avg: Vec<f32>, exp_avg_sq: Vec<f32> },
    Device { exp_avg: Tensor, exp_avg_sq: Tensor },
}

/// AdamW over this rank's slices of a [`Params`] list.
#[derive(Debug)]
pub struct ShardedAdamW {
    config: AdamWConfig,
    params: Params,
    vars: Vec<Var>,
    names: Vec<String>,
    decay: Vec<bool>,
    /// Updates applied to each parameter.
    steps: Vec<u64>,
    layout: ShardLayout,
    /// One entry per bucket.
    moments: Vec<SliceMoments>,
}

impl ShardedAdamW {
    /// Zero moments for this rank's slices of `layout` (made for `params`).
    pub fn new(params: &Params, config: AdamWConfig, layout: ShardLayout) -> Result<Self> {
        let vars: Vec<Var> = params.iter().map(|(_, v)| v.clone()).collect();
        let names: Vec<String> = params.names().map(str::to_string).collect();
        let moments = layout
            .buckets()
            .iter()
            .map(|bucket| {
                let n = bucket.owned.len();
                let var = &vars[bucket.first()];
                Ok(if var.device().is_cpu() && var.dtype() == candle_core::DType::F32 {
                    SliceMoments::Host { exp_avg: vec![0.0; n], exp_avg_sq: vec![0.0; n] }
                } else {
                    let zeros = || Tensor::zeros(n, var.dtype(), var.device());
                    SliceMoments::Device { exp_avg: zeros()?, exp_avg_sq: zeros()? }
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config,
            params: params.clone(),
            decay: names.iter().map(|n| config.decay_all || decays_by_default(n)).collect(),
            steps: vec![0; vars.len()],
            vars,
            names,
            layout,
            moments,
        })
    }

    /// The parameters this optimizer updates, in name order.
    pub fn params(&self) -> &Params {
        &self.params
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    pub fn layout(&self) -> &ShardLayout {
        &self.layout
    }

    pub fn lr(&self) -> f64 {
        self.config.lr
    }

    /// Sets the learning rate for the next steps.
    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// The number of updates applied so far (the largest per-parameter step count).
    pub fn step_count(&self) -> u64 {
        self.steps.iter().copied().max().unwrap_or(0)
    }

    /// Elements of moments this rank holds (each of the two moments has this many).
    pub fn owned_elements(&self) -> usize {
        self.layout.owned_elements()
    }

    /// Applies one update to this rank's slices of the weights from `grads`, its slices of the
    /// averaged gradients, one per bucket, each value multiplied by `grad_scale` (the clipping
    /// coefficient) where one is given. CPU weights are updated in place (`None`
    /// for their bucket); elsewhere the updated slice is returned, for the all-gather to write.
    /// Every parameter counts a step: after the reduction every rank's every parameter has a
    /// gradient, as under DDP.
    pub fn step(&mut self, grads: &[Tensor], grad_scale: Option<f32>) -> Result<Vec<Option<Tensor>>> {
        if grads.len() != self.moments.len() {
            bail!("{} gradient slices for {} buckets", grads.len(), self.moments.len());
        }
        // Before any write, so that even a step that fails half-way leaves no copy thought fresh.
        self.params.mark_changed();
        self.steps.iter_mut().for_each(|s| *s += 1);
        let cfg = self.config;
        let scalars =
            |param: usize| StepScalars::new(&cfg, self.steps[param], self.decay[param]).scaling_gradients(grad_scale);
        let on_device = matches!(self.moments.first(), Some(SliceMoments::Device { .. }));
        let device_weights = if on_device { param_slices(&self.vars, &self.layout)? } else { Vec::new() };
        let mut updated = Vec::with_capacity(grads.len());
        for ((bucket, grad), moments) in self.layout.buckets().iter().zip(grads).zip(&mut self.moments) {
            if grad.elem_count() != bucket.owned.len() {
                bail!("a gradient slice of {} elements for a slice of {}", grad.elem_count(), bucket.owned.len());
            }
            match moments {
                SliceMoments::Host { exp_avg, exp_avg_sq } => {
                    // In the parameters' own storage: no copy of the slice is made.
                    with_f32(grad, "zero: gradient slice", |g| {
                        for piece in &bucket.pieces {
                            let at = piece.at..piece.at + piece.within.len();
                            let op = PieceUpdate {
                                within: piece.within.clone(),
                                grad: &g[at.clone()],
                                exp_avg: RefCell::new(&mut exp_avg[at.clone()]),
                                exp_avg_sq: RefCell::new(&mut exp_avg_sq[at]),
                                scalars: scalars(piece.param),
                            };
                            self.vars[piece.param].as_tensor().inplace_op1(&op)?;
                        }
                        Ok(())
                    })?;
                    updated.push(None);
                }
                SliceMoments::Device { exp_avg, exp_avg_sq } => {
                    let weights = &device_weights[updated.len()];
                    let (mut ps, mut ms, mut vs) = (Vec::new(), Vec::new(), Vec::new());
                    for piece in &bucket.pieces {
                        let (at, n) = (piece.at, piece.within.len());
                        let (p, m, v) = composed_update(
                            &weights.narrow(0, at, n)?,
                            &grad.narrow(0, at, n)?,
                            &exp_avg.narrow(0, at, n)?,
                            &exp_avg_sq.narrow(0, at, n)?,
                            &scalars(piece.param),
                        )?;
                        ps.push(p);
                        ms.push(m);
                        vs.push(v);
                    }
                    if !ps.is_empty() {
                        *exp_avg = Tensor::cat(&ms, 0)?;
                        *exp_avg_sq = Tensor::cat(&vs, 0)?;
                        updated.push(Some(Tensor::cat(&ps, 0)?));
                    } else {
                        updated.push(Some(weights.clone()));
                    }
                }
            }
        }
        Ok(updated)
    }

    /// Every rank's moments put together in the replicated optimizer's form: the state on rank 0,
    /// `None` on the others. A collective: every rank calls it.
    pub fn gather(&self, pg: &dyn ProcessGroup) -> Result<Option<OptimizerState>> {
        let mut saved = Vec::with_capacity(self.vars.len());
        for (bucket, moments) in self.layout.buckets().iter().zip(&self.moments) {
            let (m, v) = match moments {
                SliceMoments::Host { exp_avg, exp_avg_sq } => (exp_avg.clone(), exp_avg_sq.clone()),
                SliceMoments::Device { exp_avg, exp_avg_sq } => {
                    (exp_avg.to_vec1::<f32>()?, exp_avg_sq.to_vec1::<f32>()?)
                }
            };
            let (m, v) = (all_gather_bucket(pg, bucket, m)?, all_gather_bucket(pg, bucket, v)?);
            if !pg.is_main() {
                continue;
            }
            let mut offset = 0;
            for &i in &bucket.params {
                let var = &self.vars[i];
                let n = var.elem_count();
                let part = |all: &[f32]| Tensor::from_slice(&all[offset..offset + n], var.shape(), &Device::Cpu);
                saved.push(SavedMoments {
                    name: self.names[i].clone(),
                    step: self.steps[i],
                    exp_avg: part(&m)?,
                    exp_avg_sq: part(&v)?,
                });
                offset += n;
            }
        }
        Ok(pg.is_main().then_some(OptimizerState { entries: saved }))
    }

    /// Writes the optimizer file at `path` on rank 0 (the path the other ranks pass is not used):
    /// the same file a replicated [`AdamW`](super::AdamW) writes. A collective.
    pub fn save(&self, pg: &dyn ProcessGroup, path: &Path) -> Result<()> {
        if let Some(state) = self.gather(pg)? {
            state.write(path)?;
        }
        Ok(())
    }

    /// Reads this rank's slices of the state at `path` (written by a replicated or a sharded
    /// optimizer, at any world size). A bad file leaves the optimizer as it was.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let file = StateFile::read(path.as_ref())?;
        file.check_names(self.names.iter().map(String::as_str))?;
        let steps = self.names.iter().map(|n| file.step(n)).collect::<Result<Vec<_>>>()?;
        let mut restored = Vec::with_capacity(self.moments.len());
        for bucket in self.layout.buckets() {
            let (mut m, mut v) = (vec![0f32; bucket.owned.len()], vec![0f32; bucket.owned.len()]);
            for piece in &bucket.pieces {
                let (full_m, full_v) = file.moments(&self.names[piece.param], self.vars[piece.param].dims())?;
                let at = piece.at..piece.at + piece.within.len();
                m[at.clone()].copy_from_slice(&full_m[piece.within.clone()]);
                v[at].copy_from_slice(&full_v[piece.within.clone()]);
            }
            restored.push((m, v));
        }
        for (slot, (m, v)) in self.moments.iter_mut().zip(restored) {
            *slot = match slot {
                SliceMoments::Host { .. } => SliceMoments::Host { exp_avg: m, exp_avg_sq: v },
                SliceMoments::Device { exp_avg, .. } => {
                    let (n, device) = (m.len(), exp_avg.device().clone());
                    SliceMoments::Device {
                        exp_avg: Tensor::from_vec(m, n, &device)?,
                        exp_avg_sq: Tensor::from_vec(v, n, &device)?,
                    }
                }
            };
        }
        self.steps = steps;
        Ok(())
    }
}

/// AdamW's update of elements `within` of a CPU parameter, in its storage, from a slice's
/// gradient and moments (candle's in-place ops hand over only the tensor they change).
struct PieceUpdate<'a> {
    within: Range<usize>,
    grad: &'a [f32],
    exp_avg: RefCell<&'a mut [f32]>,
    exp_avg_sq: RefCell<&'a mut [f32]>,
    scalars: StepScalars,
}

impl InplaceOp1 for PieceUpdate<'_> {
    fn name(&self) -> &'static str {
        "adamw-slice-update"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let _profile = crate::kernels::cpu::profile::op("adamw-slice", "forward");
        let (CpuStorage::F32(data), Some((start, end))) = (storage, layout.contiguous_offsets()) else {
            candle_core::bail!("zero: a parameter must be a contiguous f32 tensor")
        };
        if self.within.end > end - start || self.grad.len() != self.within.len() {
            candle_core::bail!(
                "zero: a slice of {} values does not fit {:?} of {}",
                self.grad.len(),
                self.within,
                end - start
            );
        }
        let p = &mut data[start + self.within.start..start + self.within.end];
        host_update(
            p,
            self.grad,
            &mut self.exp_avg.borrow_mut(),
            &mut self.exp_avg_sq.borrow_mut(),
            &self.scalars,
            None,
        );
        Ok(())
    }
}
