//! Compute kernels by device: `cpu` now; a `cuda` sibling takes the same ops to the GPU.

pub mod cpu;
