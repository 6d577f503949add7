//! Compute kernels by device: `cpu` now; a `cuda` sibling takes the same ops to the GPU. The
//! mixed-precision policy is shared by both.

pub mod cpu;
pub mod precision;

pub use cpu::autocast::Autocast;
pub use precision::MixedPrecision;
