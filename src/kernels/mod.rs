//! Compute kernels by device: `cpu` (the fused ops the CPU runs) and, with the `cuda` feature,
//! `cuda` (what candle's CUDA backend lacks: dropout masks drawn on the GPU). The dropout masks'
//! plans ([`dropout_mask`]) and the mixed-precision policy are shared by both.

pub mod composed;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dropout_mask;
pub mod precision;

pub use cpu::autocast::{Autocast, TrackedWeights};
pub use precision::MixedPrecision;
