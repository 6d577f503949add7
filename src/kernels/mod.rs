//! Compute kernels by device: `cpu` (the fused ops the CPU runs) and, with the `cuda` feature,
//! `cuda` (what candle's CUDA backend lacks: dropout masks drawn on the GPU). The mixed-precision
//! policy is shared by both.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod precision;

pub use cpu::autocast::Autocast;
pub use precision::MixedPrecision;
