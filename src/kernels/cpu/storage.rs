//! Reading candle's CPU storage as plain f32 slices, and wrapping kernel results back into tensors.

use candle_core::{CpuStorage, Layout, Shape, Storage, Tensor};

/// The contiguous f32 values of a CPU storage.
pub(crate) fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(values), Some((start, end))) => Ok(&values[start..end]),
        (CpuStorage::F32(_), None) => candle_core::bail!("{what}: expected a contiguous tensor"),
        _ => candle_core::bail!("{what}: expected f32 values"),
    }
}

/// Runs `f` on the f32 values of `t` (made contiguous first if needed).
pub(crate) fn with_f32<R>(
    t: &Tensor,
    what: &str,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(f32_slice(cpu, layout, what)?),
        _ => candle_core::bail!("{what}: expected a CPU tensor"),
    }
}

pub(crate) fn cpu_tensor(values: Vec<f32>, shape: impl Into<Shape>) -> candle_core::Result<Tensor> {
    Tensor::from_vec(values, shape, &candle_core::Device::Cpu)
}

/// The last dimension of a layout and the number of rows before it.
pub(crate) fn rows_and_width(layout: &Layout) -> (usize, usize) {
    let dims = layout.dims();
    let width = dims.last().copied().unwrap_or(1);
    (layout.shape().elem_count() / width.max(1), width)
}
