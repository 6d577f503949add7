//! MpiProcessGroup: ranks started by `mpirun`, `srun` or `accel launch`, over the system MPI
//! library (rsmpi). Host buffers, MPI's own collectives; a watchdog ends the job when a collective
//! outlives `ddp_timeout`, and a panic or an error on one rank aborts every rank (a plain Rust panic
//! would unwind into `MPI_Finalize` while the others wait in a collective: a deadlock).

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::raw::AsRaw;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::{ffi, Threading};

use super::{DistOptions, ProcessGroup, Watchdog};
use crate::{Error, Result};

/// The largest message we hand MPI at once: its counts are C ints.
const MAX_CHUNK: usize = 1 << 30;

/// The most bytes (per rank, for a reduce-scatter) one round of an in-place all-reduce or a
/// reduce-scatter moves: measured on one host (Open MPI 4.1), a 25 MB bucket's in-place all-reduce
/// took 5-6 ms in rounds of 1 MiB and 8-10 ms whole, and rounds bound MPI's own temporaries.
const ROUND: usize = 1 << 20;

extern "C" {
    /// src/distributed/mpi_in_place.c: this MPI library's MPI_IN_PLACE.
    fn accel_mpi_in_place() -> *mut std::ffi::c_void;
}

fn in_place() -> *const std::ffi::c_void {
    // SAFETY: returns a constant.
    unsafe { accel_mpi_in_place() }
}

/// The MPI world of this job.
pub struct MpiProcessGroup {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    watchdog: Watchdog,
    // Dropped last: MPI_Finalize.
    _universe: Universe,
}

impl MpiProcessGroup {
    /// Initialises MPI (once per process), installs the abort-on-panic hook and starts the watchdog.
    pub fn init(options: DistOptions) -> Result<Self> {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Multiple)
            .ok_or_else(|| Error::dist("mpi", "init", 0, "MPI was already initialised in this process"))?;
        let world = universe.world();
        let rank = world.rank() as usize;
        let size = world.size() as usize;
        // The hook and the watchdog run on other threads: MPI_Abort is only allowed there when MPI
        // granted full thread support; otherwise the process exits, and the launcher ends the job
        // because a rank left without finalizing.
        let can_abort_anywhere = threading == Threading::Multiple;
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            crate::io::eprint_line(&accel_launch::RankFailure::Panicked.line(rank));
            abort_world(101, can_abort_anywhere);
        }));
        let watchdog = Watchdog::start(rank, options.timeout, move |message| {
            crate::io::eprint_line(message);
            abort_world(124, can_abort_anywhere);
        });
        Ok(Self { world, rank, size, watchdog, _universe: universe })
    }

    /// `recv` = the sum over ranks of `send`, in messages of at most [`MAX_CHUNK`] bytes.
    fn sum<T: Equivalence>(&self, send: &[T], recv: &mut [T]) -> Result<()> {
        self.check_len("all_reduce", recv.len(), send.len())?;
        let _watch = self.watchdog.enter("all_reduce");
        let per = MAX_CHUNK / std::mem::size_of::<T>();
        for (s, r) in send.chunks(per).zip(recv.chunks_mut(per)) {
            self.world.all_reduce_into(s, r, SystemOperation::sum());
        }
        Ok(())
    }

    /// Puts `op` under the `ddp_timeout` watchdog until the guard is dropped.
    #[cfg(feature = "nccl")]
    pub(crate) fn watch(&self, op: &'static str) -> super::watchdog::Watch<'_> {
        self.watchdog.enter(op)
    }

    /// An MPI call's return code as a result (the default error handler aborts first).
    fn check(&self, code: i32, op: &'static str) -> Result<()> {
        if code == ffi::MPI_SUCCESS as i32 {
            return Ok(());
        }
        Err(Error::dist("mpi", op, self.rank, format!("MPI error code {code}")))
    }

    fn check_len(&self, op: &'static str, got: usize, want: usize) -> Result<()> {
        if got != want {
            return Err(Error::dist(
                "mpi",
                op,
                self.rank,
                format!("receive buffer holds {got} elements, {want} expected"),
            ));
        }
        Ok(())
    }
}

/// Ends every rank of the job with `code`.
fn abort_world(code: i32, from_any_thread: bool) -> ! {
    if from_any_thread {
        // SAFETY: MPI is initialised with MPI_THREAD_MULTIPLE, so any thread may call MPI_Abort;
        // it does not return.
        unsafe { mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, code) };
    }
    // SAFETY: _exit ends the process at once without running destructors (no MPI_Finalize).
    unsafe { libc::_exit(code) }
}

impl ProcessGroup for MpiProcessGroup {
    fn backend(&self) -> &'static str {
        "mpi"
    }

    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.size
    }

    fn barrier(&self) -> Result<()> {
        let _watch = self.watchdog.enter("barrier");
        self.world.barrier();
        Ok(())
    }

    fn all_reduce_sum_f32(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        self.sum(send, recv)
    }

    fn all_reduce_sum_f64(&self, send: &[f64], recv: &mut [f64]) -> Result<()> {
        self.sum(send, recv)
    }

    fn all_reduce_sum_in_place_f32(&self, buf: &mut [f32]) -> Result<()> {
        let _watch = self.watchdog.enter("all_reduce");
        for chunk in buf.chunks_mut(ROUND / std::mem::size_of::<f32>()) {
            // SAFETY: MPI_IN_PLACE with a valid buffer of `chunk.len()` floats on every rank.
            self.check(
                unsafe {
                    ffi::MPI_Allreduce(
                        in_place(),
                        chunk.as_mut_ptr().cast(),
                        chunk.len() as i32,
                        ffi::RSMPI_FLOAT,
                        ffi::RSMPI_SUM,
                        self.world.as_raw(),
                    )
                },
                "all_reduce",
            )?;
        }
        Ok(())
    }

    fn reduce_scatter_sum_in_place_f32(&self, buf: &mut [f32]) -> Result<()> {
        if !buf.len().is_multiple_of(self.size) {
            return Err(Error::dist(
                "mpi",
                "reduce_scatter",
                self.rank,
                format!("{} elements do not cut into {} equal blocks", buf.len(), self.size),
            ));
        }
        if self.size == 2 {
            // Measured on one host (Open MPI 4.1, shared memory), two ranks' reduce-scatter of a
            // 25 MB bucket took 1.2x (in rounds of 0.5 MB) to 3x (whole) the time of an in-place
            // all-reduce of it, which needs no copy either: the all-reduce it is.
            return self.all_reduce_sum_in_place_f32(buf);
        }
        let _watch = self.watchdog.enter("reduce_scatter");
        // In rounds of at most ROUND bytes per rank, cut alike on every rank: Open MPI's
        // reduce-scatter keeps a temporary of the whole message (on rank 0), which for the word
        // table's bucket is 125 MB of bert-large's gradient; a round's copy is far smaller.
        let n = buf.len() / self.size;
        let per = ROUND / std::mem::size_of::<f32>();
        let mut chunk = Vec::with_capacity(per * self.size);
        let mut sum = vec![0f32; per.min(n)];
        for start in (0..n).step_by(per) {
            let end = (start + per).min(n);
            chunk.clear();
            for r in 0..self.size {
                chunk.extend_from_slice(&buf[r * n + start..r * n + end]);
            }
            let sum = &mut sum[..end - start];
            self.world.reduce_scatter_block_into(&chunk[..], sum, SystemOperation::sum());
            buf[self.rank * n + start..self.rank * n + end].copy_from_slice(sum);
        }
        Ok(())
    }

    fn all_gather_in_place_f32(&self, buf: &mut [f32]) -> Result<()> {
        if !buf.len().is_multiple_of(self.size) || buf.len() / self.size > MAX_CHUNK / std::mem::size_of::<f32>() {
            return Err(Error::dist(
                "mpi",
                "all_gather",
                self.rank,
                format!("{} elements are not {} equal blocks of at most 1 GiB", buf.len(), self.size),
            ));
        }
        let _watch = self.watchdog.enter("all_gather");
        // SAFETY: MPI_IN_PLACE (send arguments ignored) with a valid buffer of `size` blocks.
        self.check(
            unsafe {
                ffi::MPI_Allgather(
                    in_place(),
                    0,
                    ffi::RSMPI_DATATYPE_NULL,
                    buf.as_mut_ptr().cast(),
                    (buf.len() / self.size) as i32,
                    ffi::RSMPI_FLOAT,
                    self.world.as_raw(),
                )
            },
            "all_gather",
        )
    }

    fn broadcast_bytes(&self, buf: &mut [u8], root: usize) -> Result<()> {
        if root >= self.size {
            return Err(Error::dist(
                "mpi",
                "broadcast",
                self.rank,
                format!("root {root} is not a rank of {}", self.size),
            ));
        }
        let _watch = self.watchdog.enter("broadcast");
        let root = self.world.process_at_rank(root as i32);
        for chunk in buf.chunks_mut(MAX_CHUNK) {
            root.broadcast_into(chunk);
        }
        Ok(())
    }

    fn all_gather_bytes(&self, send: &[u8], recv: &mut [u8]) -> Result<()> {
        self.check_len("all_gather", recv.len(), send.len() * self.size)?;
        if send.len() > MAX_CHUNK {
            return Err(Error::dist("mpi", "all_gather", self.rank, format!("{} bytes is over 1 GiB", send.len())));
        }
        let _watch = self.watchdog.enter("all_gather");
        self.world.all_gather_into(send, recv);
        Ok(())
    }

    fn set_step(&self, step: usize) {
        self.watchdog.set_step(step);
    }

    fn abort_job(&self, code: i32) {
        abort_world(code, true)
    }
}

/// The MPI library's own description (`MPI_Get_library_version`, callable before MPI_Init).
pub fn library_version() -> Option<String> {
    mpi::environment::library_version()
        .ok()
        .map(|v| v.trim_matches(|c: char| c.is_whitespace() || c == '\0').to_string())
}
