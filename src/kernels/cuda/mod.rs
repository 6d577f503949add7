//! The GPU kernels accel adds to candle's: dropout masks drawn on the device from the same
//! counter-based generator as the CPU's. The PTX is compiled by nvcc at build time (build.rs) and
//! loaded once per device.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use candle_core::CudaDevice;

use super::dropout_mask::{MaskLayout, MaskPlan};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/dropout.ptx"));

/// The mask of `rows` rows of `plan` (f32: `plan.scale` kept, 0 dropped), drawn on `device`'s
/// stream.
pub(crate) fn dropout_mask(device: &CudaDevice, plan: &MaskPlan, rows: usize) -> candle_core::Result<CudaSlice<f32>> {
    let row_values = plan.layout.row_values();
    let n = rows * row_values;
    let (scores, len) = match plan.layout {
        MaskLayout::Scores { len, .. } => (1u32, len),
        MaskLayout::Tokens { len, .. } => (0, len),
        MaskLayout::Pooled { .. } => (0, 1),
    };
    let row_words = plan.layout.row_words() as u64;
    if n == 0 {
        return device.alloc_zeros::<f32>(0);
    }
    let func = device.get_or_load_custom_func("accel_dropout_mask", "accel_dropout", PTX)?;
    // SAFETY: every element is written by the kernel below before the slice is read.
    let mut out = unsafe { device.alloc::<f32>(n)? };
    let blocks =
        u32::try_from(n.div_ceil(256)).map_err(|_| candle_core::Error::Msg(format!("dropout mask of {n} values")))?;
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let [k0, k1, k2, k3, k4, k5, k6, k7] = plan.key;
    let mut b = func.builder();
    b.arg(&mut out);
    b.arg(&n);
    b.arg(&row_values);
    for k in [&k0, &k1, &k2, &k3, &k4, &k5, &k6, &k7] {
        b.arg(k);
    }
    b.arg(&plan.stream);
    b.arg(&plan.first_row);
    b.arg(&row_words);
    b.arg(&scores);
    b.arg(&len);
    b.arg(&plan.threshold);
    b.arg(&plan.scale);
    // SAFETY: the arguments match the kernel's signature in dropout.cu, in order and type.
    unsafe { b.launch(cfg) }.map_err(|e| candle_core::Error::Msg(format!("dropout mask kernel: {e:?}")))?;
    Ok(out)
}
