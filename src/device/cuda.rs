//! What the CUDA driver says about this machine's GPUs, in words a user can act on.

use cudarc::driver::result::{self, device, DriverError};
use cudarc::driver::sys::{CUdevice_attribute, CUresult};

/// The CUDA version these kernels were built for (cudarc's `cuda-13000`).
const BUILT_FOR: &str = "13.0";

/// What a driver error means here.
fn explain(e: DriverError) -> String {
    match e.0 {
        CUresult::CUDA_ERROR_STUB_LIBRARY => {
            "no NVIDIA driver on this machine (libcuda.so.1 is CUDA's stub library, not a driver)".into()
        }
        CUresult::CUDA_ERROR_SYSTEM_DRIVER_MISMATCH | CUresult::CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE => {
            format!("the NVIDIA driver is too old for CUDA {BUILT_FOR} (R580 or newer is needed)")
        }
        CUresult::CUDA_ERROR_NO_DEVICE => "this machine has no CUDA GPU".into(),
        other => format!("the CUDA driver failed: {other:?}"),
    }
}

/// Starts the driver (once; later calls are cheap) and counts the GPUs.
pub(super) fn device_count() -> Result<usize, String> {
    match result::init() {
        Ok(()) => {}
        Err(e) if e.0 == CUresult::CUDA_ERROR_NO_DEVICE => return Ok(0),
        Err(e) => return Err(explain(e)),
    }
    device::get_count().map(|n| n.max(0) as usize).map_err(explain)
}

/// The driver's CUDA version, e.g. "13.0".
fn driver_version() -> Result<String, String> {
    let mut v = 0;
    // SAFETY: cuDriverGetVersion writes one int through the pointer it is given.
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) }.result().map_err(explain)?;
    Ok(format!("{}.{}", v / 1000, (v % 1000) / 10))
}

/// A GPU's name.
pub(super) fn name(ordinal: usize) -> Option<String> {
    device::get(ordinal as i32).ok().and_then(|dev| device::get_name(dev).ok())
}

/// One GPU: name, compute capability, memory.
fn describe(ordinal: usize) -> Result<String, DriverError> {
    let dev = device::get(ordinal as i32)?;
    let name = device::get_name(dev)?;
    // SAFETY: `dev` came from cuDeviceGet.
    let (major, minor, bytes) = unsafe {
        (
            device::get_attribute(dev, CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            device::get_attribute(dev, CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            device::total_mem(dev)?,
        )
    };
    Ok(format!("{name}, compute capability {major}.{minor}, {:.1} GiB", bytes as f64 / (1u64 << 30) as f64))
}

/// `(key, value)` lines for `accel env`.
pub(super) fn report() -> Vec<(String, String)> {
    // build.rs compiles accel's kernels for the same capability, 90 unless told otherwise.
    let cap = option_env!("CUDA_COMPUTE_CAP").unwrap_or("90");
    let mut lines = vec![("cuda".into(), format!("built for CUDA {BUILT_FOR}, kernels for compute capability {cap}"))];
    match device_count() {
        Err(why) => lines.push(("gpus".into(), format!("none: {why}"))),
        Ok(count) => {
            lines.push((
                "cuda driver".into(),
                driver_version().map(|v| format!("supports CUDA {v}")).unwrap_or_else(|w| w),
            ));
            lines.push(("gpus".into(), count.to_string()));
            for i in 0..count {
                lines.push((format!("cuda:{i}"), describe(i).unwrap_or_else(explain)));
            }
        }
    }
    #[cfg(feature = "nccl")]
    lines.push((
        "nccl".into(),
        match cudarc::nccl::result::get_nccl_version() {
            Ok(v) => format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100),
            Err(e) => format!("unavailable: {e:?}"),
        },
    ));
    #[cfg(not(feature = "nccl"))]
    lines.push(("nccl".into(), "not compiled in (the `nccl` feature)".into()));
    lines
}
