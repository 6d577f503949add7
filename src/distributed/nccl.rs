//! NcclProcessGroup: one rank per GPU, started like any MPI job (`accel launch`, mpirun, srun). The
//! gradient buckets are summed by NCCL on the GPU, queued on the stream the model computes on, so a
//! step never waits for the host between backward, all-reduce and the optimizer. Everything the host
//! exchanges (losses and metrics, files, barriers, the weight check) goes over the MPI world that
//! started the job, which also carries NCCL's unique id from rank 0 to the others.
//!
//! A dead rank ends the job as under MPI alone: the launcher ends the other ranks when one exits,
//! and the watchdog aborts a host collective that outlives `ddp_timeout`.

use std::ffi::c_char;

use candle_core::{CudaStorage, Device, InplaceOp1, InplaceOp2, Layout, Tensor};
use cudarc::nccl::{Comm, Id, ReduceOp};

use super::{MpiProcessGroup, ProcessGroup};
use crate::{Error, Result};

/// NCCL on the GPUs, MPI on the host.
pub struct NcclProcessGroup {
    // Dropped first: the communicator goes before MPI finalizes.
    comm: Comm,
    host: MpiProcessGroup,
}

impl NcclProcessGroup {
    /// Builds the communicator of `host`'s ranks on `device` (this rank's GPU): rank 0 makes the
    /// unique id and sends it over MPI, then every rank joins. A rank that fails here ends the whole
    /// job (the others would wait for it in the broadcast or inside NCCL's set-up).
    pub fn init(host: MpiProcessGroup, device: &Device) -> Result<Self> {
        let rank = host.rank();
        let result = (|| -> Result<Comm> {
            let fail = |e: String| Error::dist("nccl", "init", rank, e);
            let cuda = device.as_cuda_device().map_err(|e| fail(format!("NCCL needs a GPU device: {e}")))?;
            let mut bytes = [0u8; 128];
            if rank == 0 {
                let id = Id::new().map_err(|e| fail(format!("ncclGetUniqueId failed: {e:?}")))?;
                for (b, c) in bytes.iter_mut().zip(id.internal()) {
                    *b = *c as u8;
                }
            }
            host.broadcast_bytes(&mut bytes, 0)?;
            let id = Id::uninit(bytes.map(|b| b as c_char));
            let _watch = host.watch("NCCL's communicator set-up");
            Comm::from_rank(cuda.cuda_stream(), rank, host.world_size(), id)
                .map_err(|e| fail(format!("ncclCommInitRank failed: {e:?}")))
        })();
        match result {
            Ok(comm) => Ok(Self { comm, host }),
            Err(e) => {
                crate::io::eprint_line(&accel_launch::RankFailure::Error(e.to_string()).line(rank));
                host.abort_job(1);
                Err(e)
            }
        }
    }
}

impl Drop for NcclProcessGroup {
    fn drop(&mut self) {
        // Every queued collective completes before the communicator goes (cudarc's drop aborts it,
        // which would cut one short).
        if let Err(e) = self.comm.stream().synchronize() {
            crate::io::eprint_line(&format!("rank {}: NCCL teardown: {e:?}", self.host.rank()));
        }
    }
}

impl ProcessGroup for NcclProcessGroup {
    fn backend(&self) -> &'static str {
        "nccl"
    }

    fn rank(&self) -> usize {
        self.host.rank()
    }

    fn world_size(&self) -> usize {
        self.host.world_size()
    }

    fn barrier(&self) -> Result<()> {
        self.host.barrier()
    }

    fn all_reduce_sum_f32(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        self.host.all_reduce_sum_f32(send, recv)
    }

    fn all_reduce_sum_f64(&self, send: &[f64], recv: &mut [f64]) -> Result<()> {
        self.host.all_reduce_sum_f64(send, recv)
    }

    fn all_reduce_sum_in_place_f32(&self, buf: &mut [f32]) -> Result<()> {
        self.host.all_reduce_sum_in_place_f32(buf)
    }

    fn reduce_scatter_sum_in_place_f32(&self, buf: &mut [f32]) -> Result<()> {
        self.host.reduce_scatter_sum_in_place_f32(buf)
    }

    fn all_gather_in_place_f32(&self, buf: &mut [f32]) -> Result<()> {
        self.host.all_gather_in_place_f32(buf)
    }

    fn all_reduce_sum_in_place(&self, buf: &Tensor) -> Result<bool> {
        if !buf.device().is_cuda() {
            return Ok(false);
        }
        let op = NcclSum { comm: &self.comm };
        buf.inplace_op1(&op).map_err(|e| Error::dist("nccl", "all_reduce", self.rank(), e.to_string()))?;
        Ok(true)
    }

    fn reduce_scatter_sum_on_device(&self, send: &Tensor, recv: &Tensor) -> Result<bool> {
        if !recv.device().is_cuda() {
            return Ok(false);
        }
        let op = NcclBlocks { comm: &self.comm, gather: false };
        recv.inplace_op2(send, &op).map_err(|e| Error::dist("nccl", "reduce_scatter", self.rank(), e.to_string()))?;
        Ok(true)
    }

    fn all_gather_on_device(&self, send: &Tensor, recv: &Tensor) -> Result<bool> {
        if !recv.device().is_cuda() {
            return Ok(false);
        }
        let op = NcclBlocks { comm: &self.comm, gather: true };
        recv.inplace_op2(send, &op).map_err(|e| Error::dist("nccl", "all_gather", self.rank(), e.to_string()))?;
        Ok(true)
    }

    fn finish_device_collectives(&self) -> Result<()> {
        let _watch = self.host.watch("NCCL all_reduce");
        self.comm.stream().synchronize().map_err(|e| Error::dist("nccl", "all_reduce", self.rank(), format!("{e:?}")))
    }

    fn broadcast_bytes(&self, buf: &mut [u8], root: usize) -> Result<()> {
        self.host.broadcast_bytes(buf, root)
    }

    fn all_gather_bytes(&self, send: &[u8], recv: &mut [u8]) -> Result<()> {
        self.host.all_gather_bytes(send, recv)
    }

    fn set_step(&self, step: usize) {
        self.host.set_step(step)
    }

    fn abort_job(&self, code: i32) {
        self.host.abort_job(code)
    }
}

/// ncclAllReduce(sum) of a contiguous f32 GPU tensor, in place, on the communicator's stream (the
/// stream candle computes on).
struct NcclSum<'a> {
    comm: &'a Comm,
}

impl InplaceOp1 for NcclSum<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce"
    }

    fn cpu_fwd(&self, _: &mut candle_core::CpuStorage, _: &Layout) -> candle_core::Result<()> {
        candle_core::bail!("NCCL reduces GPU memory only")
    }

    fn cuda_fwd(&self, storage: &mut CudaStorage, layout: &Layout) -> candle_core::Result<()> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("NCCL all-reduce needs a contiguous buffer");
        };
        let slice = storage.as_cuda_slice_mut::<f32>()?;
        let mut view = slice.slice_mut(start..end);
        self.comm
            .all_reduce_in_place(&mut view, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::Msg(format!("ncclAllReduce failed: {e:?}")))?;
        Ok(())
    }
}

/// ncclReduceScatter(sum) or ncclAllGather from a contiguous f32 GPU tensor (the op's source) into
/// another (the op's target), on the communicator's stream.
struct NcclBlocks<'a> {
    comm: &'a Comm,
    /// All-gather; otherwise reduce-scatter.
    gather: bool,
}

impl InplaceOp2 for NcclBlocks<'_> {
    fn name(&self) -> &'static str {
        if self.gather {
            "nccl-all-gather"
        } else {
            "nccl-reduce-scatter"
        }
    }

    fn cpu_fwd(
        &self,
        _: &mut candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<()> {
        candle_core::bail!("NCCL moves GPU memory only")
    }

    fn cuda_fwd(
        &self,
        recv: &mut CudaStorage,
        recv_layout: &Layout,
        send: &CudaStorage,
        send_layout: &Layout,
    ) -> candle_core::Result<()> {
        let (Some((r0, r1)), Some((s0, s1))) = (recv_layout.contiguous_offsets(), send_layout.contiguous_offsets())
        else {
            candle_core::bail!("NCCL needs contiguous buffers");
        };
        let world = self.comm.world_size();
        let (sent, received) = (s1 - s0, r1 - r0);
        let expected = if self.gather { sent * world == received } else { received * world == sent };
        if !expected {
            candle_core::bail!("{}: {sent} elements sent, {received} received over {world} ranks", self.name());
        }
        let send = send.as_cuda_slice::<f32>()?.slice(s0..s1);
        let recv = recv.as_cuda_slice_mut::<f32>()?;
        let mut view = recv.slice_mut(r0..r1);
        let result = if self.gather {
            self.comm.all_gather(&send, &mut view)
        } else {
            self.comm.reduce_scatter(&send, &mut view, &ReduceOp::Sum)
        };
        result.map_err(|e| candle_core::Error::Msg(format!("{} failed: {e:?}", self.name())))?;
        Ok(())
    }
}
