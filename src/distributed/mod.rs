//! The process group: the one seam between single-process and data-parallel training. Gradient
//! synchronisation, data sharding, main-process-only work and metric gathering all go through a
//! `&dyn ProcessGroup`.
//!
//! A backend implements a few equal-sized primitives ([`ProcessGroup`]); everything else
//! (unequal all-gathers, broadcasting weights and files, bucketed gradient averaging, the weight
//! check) is built once on top of them in [`collectives`] and [`reducer`], over the flat [`buckets`].
//!
//! Backends: [`SingleProcess`] (one process, every collective the identity), [`ThreadGroup`]
//! (ranks as threads of one process, for tests of the collective code paths) and, with the `mpi`
//! feature, [`MpiProcessGroup`] (ranks started by `mpirun`, `srun` or `accel launch`), and with the
//! `nccl` feature, `NcclProcessGroup` (the same ranks on GPUs: gradients summed by NCCL).

pub mod buckets;
pub mod collectives;
mod local;
#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;
pub mod reducer;
pub mod scatter;
pub mod shards;
mod single;
mod watchdog;

use std::time::Duration;

use candle_core::Tensor;

pub use accel_launch::RankEnv;
pub use local::ThreadGroup;
#[cfg(feature = "mpi")]
pub use mpi::{library_version as mpi_library_version, MpiProcessGroup};
#[cfg(feature = "nccl")]
pub use nccl::NcclProcessGroup;
pub use shards::ZeroStage;
pub use single::SingleProcess;
pub use watchdog::Watchdog;

use crate::{Error, Result};

/// Collectives over the processes of one training run. Every rank must call the same collectives
/// in the same order, with buffers of the same length on every rank.
///
/// The trait asks for neither `Send` nor `Sync`: a GPU communicator belongs to one thread.
pub trait ProcessGroup {
    /// The backend's name, for messages ("single", "threads", "mpi").
    fn backend(&self) -> &'static str;
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;

    /// Whether this process logs and writes checkpoints.
    fn is_main(&self) -> bool {
        self.rank() == 0
    }

    /// Returns once every rank has reached it.
    fn barrier(&self) -> Result<()>;

    /// `recv` = the element-wise sum of every rank's `send`.
    fn all_reduce_sum_f32(&self, send: &[f32], recv: &mut [f32]) -> Result<()>;

    /// `recv` = the element-wise sum of every rank's `send`, in f64 (losses, counts, metrics).
    fn all_reduce_sum_f64(&self, send: &[f64], recv: &mut [f64]) -> Result<()>;

    /// Sums `buf`, a contiguous f32 tensor on this rank's device, over the ranks in place, queued
    /// on the device's stream (no wait for the host). Returns `false` when this backend reduces
    /// host memory only: the caller then goes through [`all_reduce_sum_f32`](Self::all_reduce_sum_f32).
    fn all_reduce_sum_in_place(&self, _buf: &Tensor) -> Result<bool> {
        Ok(false)
    }

    /// Waits until the collectives queued on the device by
    /// [`all_reduce_sum_in_place`](Self::all_reduce_sum_in_place) have completed, under the
    /// `ddp_timeout` watchdog: once per optimizer step, so that a rank stuck in a GPU collective
    /// ends the job instead of hanging it. Backends that reduce on the host have nothing queued.
    fn finish_device_collectives(&self) -> Result<()> {
        Ok(())
    }

    /// `buf` = the element-wise sum over the ranks of every rank's `buf`, in place. Backends
    /// without an in-place collective of their own sum a copy.
    fn all_reduce_sum_in_place_f32(&self, buf: &mut [f32]) -> Result<()> {
        let send = buf.to_vec();
        self.all_reduce_sum_f32(&send, buf)
    }

    /// Block `rank` of `buf` = block `rank` of the element-wise sum over the ranks of every rank's
    /// `buf`, which holds `world_size` equal blocks (`MPI_Reduce_scatter_block`, in place). The
    /// other blocks are left undefined. Backends without one of their own sum the whole buffer.
    fn reduce_scatter_sum_in_place_f32(&self, buf: &mut [f32]) -> Result<()> {
        if !buf.len().is_multiple_of(self.world_size()) {
            return Err(Error::dist(
                self.backend(),
                "reduce_scatter",
                self.rank(),
                format!("{} elements do not cut into {} equal blocks", buf.len(), self.world_size()),
            ));
        }
        self.all_reduce_sum_in_place_f32(buf)
    }

    /// Every rank's block `rank` of `buf` (`world_size` equal blocks) into every rank's `buf`, in
    /// place (`MPI_Allgather` with `MPI_IN_PLACE`): block r of each rank's `buf` is then rank r's.
    fn all_gather_in_place_f32(&self, buf: &mut [f32]) -> Result<()> {
        let world = self.world_size();
        if !buf.len().is_multiple_of(world) {
            return Err(Error::dist(
                self.backend(),
                "all_gather",
                self.rank(),
                format!("{} elements do not cut into {world} equal blocks", buf.len()),
            ));
        }
        let block = buf.len() / world;
        let own = buf[self.rank() * block..(self.rank() + 1) * block].to_vec();
        self.all_gather_bytes(bytemuck::cast_slice(&own), bytemuck::cast_slice_mut(buf))
    }

    /// [`reduce_scatter_sum_in_place_f32`](Self::reduce_scatter_sum_in_place_f32), not in place, of contiguous f32 tensors on this
    /// rank's device, queued on its stream; `false` when this backend reduces host memory only.
    fn reduce_scatter_sum_on_device(&self, _send: &Tensor, _recv: &Tensor) -> Result<bool> {
        Ok(false)
    }

    /// `recv` = every rank's `send` in rank order, for contiguous f32 tensors on this rank's device,
    /// queued on its stream; `false` when this backend gathers host memory only.
    fn all_gather_on_device(&self, _send: &Tensor, _recv: &Tensor) -> Result<bool> {
        Ok(false)
    }

    /// Overwrites `buf` on every rank with rank `root`'s `buf`.
    fn broadcast_bytes(&self, buf: &mut [u8], root: usize) -> Result<()>;

    /// Every rank's `send` concatenated in rank order into `recv` (`world_size * send.len()` bytes).
    fn all_gather_bytes(&self, send: &[u8], recv: &mut [u8]) -> Result<()>;

    /// Records the optimizer step this rank is at, for timeout and failure messages.
    fn set_step(&self, _step: usize) {}

    /// Ends every rank of the job with `code` (after an error on this rank that the others cannot
    /// see, so that none of them waits forever in a collective). One process just returns.
    fn abort_job(&self, _code: i32) {}
}

/// Settings of the process group that come from the training arguments.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistOptions {
    /// A collective that does not complete within this time aborts the job (`ddp_timeout`).
    pub timeout: Duration,
}

impl Default for DistOptions {
    fn default() -> Self {
        // transformers' default ddp_timeout: 1800 s.
        Self { timeout: Duration::from_secs(1800) }
    }
}

/// The process group this process belongs to: [`SingleProcess`] when no launcher started it (MPI
/// is not initialised then), else the MPI world, with NCCL over it when this rank trains on a GPU
/// and the build has the `nccl` feature.
pub fn init(env: &RankEnv, options: DistOptions, device: &candle_core::Device) -> Result<Box<dyn ProcessGroup>> {
    if env.world_size == 1 {
        return Ok(Box::new(SingleProcess));
    }
    #[cfg(feature = "mpi")]
    {
        let pg = MpiProcessGroup::init(options)?;
        if pg.rank() != env.rank || pg.world_size() != env.world_size {
            let message = format!(
                "the launcher's environment says rank {} of {}, MPI says rank {} of {}",
                env.rank,
                env.world_size,
                pg.rank(),
                pg.world_size()
            );
            return Err(Error::dist("mpi", "init", env.rank, message));
        }
        #[cfg(feature = "nccl")]
        {
            // Every rank must pick the same backend, or their collectives would not match.
            let mut on_gpus = [0f64];
            pg.all_reduce_sum_f64(&[f64::from(u8::from(device.is_cuda()))], &mut on_gpus)?;
            match on_gpus[0] as usize {
                0 => {}
                n if n == pg.world_size() => return Ok(Box::new(NcclProcessGroup::init(pg, device)?)),
                n => {
                    return Err(Error::config(
                        "device",
                        format!("{n} of {} ranks have a GPU: set \"cpu\" or \"cuda\" so that every rank trains on the same kind of device", pg.world_size()),
                    ))
                }
            }
        }
        let _ = device;
        Ok(Box::new(pg))
    }
    #[cfg(not(feature = "mpi"))]
    {
        let _ = (options, device);
        Err(Error::dist(
            "none",
            "init",
            env.rank,
            format!("started as rank {} of {}, but this build has no MPI (feature `mpi`)", env.rank, env.world_size),
        ))
    }
}
