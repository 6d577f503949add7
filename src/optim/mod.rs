//! Optimization: AdamW with PyTorch's update order, global-norm gradient clipping, and learning-rate schedules.

pub mod adamw;
pub mod clip;
pub mod schedule;
pub mod zero;

pub use adamw::{AdamW, AdamWConfig, OptimizerState};
pub use clip::{clip_coefficient, clip_grad_norm, global_grad_norm};
pub use schedule::{LrSchedule, ScheduleKind, Warmup};
pub use zero::ShardedAdamW;
