//! The process group: the one seam between single-process and data-parallel training. Gradient
//! synchronisation, data sharding, main-process-only work and metric gathering all go through a
//! `&dyn ProcessGroup`; [`SingleProcess`] is the real implementation for one process.

mod single;

pub use single::SingleProcess;

use candle_core::Tensor;

use crate::Result;

/// Collectives over the processes of one training run. Every rank must call the same collectives
/// in the same order.
pub trait ProcessGroup: Send + Sync {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;

    /// Whether this process logs and writes checkpoints.
    fn is_main(&self) -> bool {
        self.rank() == 0
    }

    /// Returns once every rank has reached it.
    fn barrier(&self) -> Result<()>;

    /// The element-wise sum of `xs` over all ranks.
    fn all_reduce_sum(&self, xs: &Tensor) -> Result<Tensor>;

    /// Rank `root`'s `xs`, on every rank.
    fn broadcast(&self, xs: &Tensor, root: usize) -> Result<Tensor>;

    /// Every rank's `values` (lengths may differ), concatenated in rank order.
    fn all_gather_f64(&self, values: &[f64]) -> Result<Vec<f64>>;
}
