//! Training: metrics now; the custom-loop helpers and the Trainer build on them.

pub mod args;
pub mod metrics;
