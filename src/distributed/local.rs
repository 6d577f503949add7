//! ThreadGroup: ranks as threads of one process over shared buffers. It runs every collective
//! code path (gradient averaging, prediction gathering, weight broadcast) in fast unit tests; real
//! runs use MPI processes.

use std::sync::{Arc, Barrier, Mutex};

use super::ProcessGroup;
use crate::{Error, Result};

/// One rank of a group of threads made by [`ThreadGroup::run`].
#[derive(Debug)]
pub struct ThreadGroup {
    rank: usize,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    world: usize,
    barrier: Barrier,
    slots: Mutex<Vec<Vec<u8>>>,
}

impl ThreadGroup {
    /// Runs `f` on `world` threads, each with its own rank of one group; returns the results in
    /// rank order. A panic on any thread is re-raised here.
    pub fn run<T: Send>(world: usize, f: impl Fn(&ThreadGroup) -> T + Sync) -> Vec<T> {
        assert!(world > 0, "a group has at least one rank");
        let shared =
            Arc::new(Shared { world, barrier: Barrier::new(world), slots: Mutex::new(vec![Vec::new(); world]) });
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..world)
                .map(|rank| {
                    let group = ThreadGroup { rank, shared: shared.clone() };
                    let f = &f;
                    scope.spawn(move || f(&group))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
        })
    }

    /// Every rank's `bytes`, in rank order. All ranks must pass the same length, else every rank
    /// gets an error naming the lengths (no rank is left waiting).
    fn exchange(&self, op: &'static str, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.shared.slots.lock().unwrap_or_else(|p| p.into_inner())[self.rank] = bytes.to_vec();
        self.shared.barrier.wait();
        let all = self.shared.slots.lock().unwrap_or_else(|p| p.into_inner()).clone();
        self.shared.barrier.wait();
        let lengths: Vec<usize> = all.iter().map(Vec::len).collect();
        if lengths.iter().any(|&n| n != lengths[0]) {
            return Err(Error::dist(
                "threads",
                op,
                self.rank,
                format!("ranks passed unequal buffers: {lengths:?} bytes"),
            ));
        }
        Ok(all)
    }

    fn sum<T: bytemuck::Pod + Copy + std::ops::AddAssign>(
        &self,
        op: &'static str,
        send: &[T],
        recv: &mut [T],
    ) -> Result<()> {
        let all = self.exchange(op, bytemuck::cast_slice(send))?;
        recv.copy_from_slice(bytemuck::cast_slice(&all[0]));
        for other in &all[1..] {
            let other: &[T] = bytemuck::cast_slice(other);
            for (r, &o) in recv.iter_mut().zip(other) {
                *r += o;
            }
        }
        Ok(())
    }
}

impl ProcessGroup for ThreadGroup {
    fn backend(&self) -> &'static str {
        "threads"
    }

    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world
    }

    fn barrier(&self) -> Result<()> {
        self.shared.barrier.wait();
        Ok(())
    }

    fn all_reduce_sum_f32(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        self.sum("all_reduce", send, recv)
    }

    fn all_reduce_sum_f64(&self, send: &[f64], recv: &mut [f64]) -> Result<()> {
        self.sum("all_reduce", send, recv)
    }

    fn broadcast_bytes(&self, buf: &mut [u8], root: usize) -> Result<()> {
        let all = self.exchange("broadcast", buf)?;
        buf.copy_from_slice(&all[root]);
        Ok(())
    }

    fn all_gather_bytes(&self, send: &[u8], recv: &mut [u8]) -> Result<()> {
        let all = self.exchange("all_gather", send)?;
        for (chunk, part) in recv.chunks_exact_mut(send.len().max(1)).zip(&all) {
            chunk.copy_from_slice(part);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primitives_sum_gather_and_broadcast() {
        let out = ThreadGroup::run(3, |pg| {
            let r = pg.rank() as f32;
            let mut sum = [0f32; 2];
            pg.all_reduce_sum_f32(&[r, 1.0], &mut sum).unwrap();
            let mut gathered = vec![0u8; 3];
            pg.all_gather_bytes(&[pg.rank() as u8], &mut gathered).unwrap();
            let mut b = [pg.rank() as u8; 4];
            pg.broadcast_bytes(&mut b, 2).unwrap();
            (sum, gathered, b)
        });
        for (sum, gathered, b) in out {
            assert_eq!(sum, [3.0, 3.0]);
            assert_eq!(gathered, [0, 1, 2]);
            assert_eq!(b, [2; 4]);
        }
    }

    #[test]
    fn unequal_buffers_are_an_error_on_every_rank() {
        let out = ThreadGroup::run(2, |pg| {
            let send = vec![1f64; pg.rank() + 1];
            let mut recv = send.clone();
            pg.all_reduce_sum_f64(&send, &mut recv).unwrap_err().to_string()
        });
        for (rank, message) in out.iter().enumerate() {
            assert!(message.contains(&format!("rank {rank}")) && message.contains("unequal"), "{message}");
        }
    }
}
