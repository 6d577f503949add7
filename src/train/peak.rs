//! The FLOP rate model FLOP utilisation is measured against, per rank. On a CPU it is measured: a
//! short calibration of the run's own linear product (the same kernels or bf16 library, the same
//! threads) at a feed-forward shape of the model. On a GPU it is the device's nominal dense rate
//! for the run's precision, where the GPU is known.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::kernels::{Autocast, MixedPrecision, TrackedWeights};
use crate::model::ModelConfig;
use crate::report::run_report::Peak;
use crate::Result;

/// Rows of the calibration's product: a batch of 8 rows of 64 tokens.
const ROWS: usize = 512;

/// The peak for a run of `config` on `device` under `precision`, or None for a GPU whose rate is
/// not known here.
pub fn peak(config: &ModelConfig, device: &Device, precision: MixedPrecision) -> Result<Option<Peak>> {
    if device.is_cpu() {
        return calibrate(config, precision).map(Some);
    }
    Ok(crate::device::gpu_name(device).and_then(|name| nominal(&name, precision)))
}

/// Dense TFLOP/s from the data sheets (SXM parts; fp32 without TF32, as candle multiplies f32).
fn nominal(name: &str, precision: MixedPrecision) -> Option<Peak> {
    let (bf16, fp32) = match name {
        n if n.contains("H100") || n.contains("H200") => (989.0, 67.0),
        n if n.contains("A100") => (312.0, 19.5),
        n if n.contains("L40S") => (362.0, 91.6),
        n if n.contains("L4") => (121.0, 30.3),
        _ => return None,
    };
    let (tflops, what) = if precision == MixedPrecision::Bf16 { (bf16, "bf16") } else { (fp32, "fp32") };
    Some(Peak { tflops, source: format!("nominal: {name}, dense {what}") })
}

/// Times the linear product `[512, hidden] x [hidden, intermediate]` under `precision` for about
/// 0.2 s after a warm-up.
fn calibrate(config: &ModelConfig, precision: MixedPrecision) -> Result<Peak> {
    let (k, n) = (config.dims().hidden_size, config.dims().intermediate_size);
    let x = Tensor::randn(0f32, 1.0, (ROWS, k), &Device::Cpu)?;
    let w = Tensor::randn(0f32, 0.02, (n, k), &Device::Cpu)?;
    let b = Tensor::zeros(n, DType::F32, &Device::Cpu)?;
    let autocast = Autocast::on(precision, &Device::Cpu, &TrackedWeights::new([&w]))?;
    let (seconds, reps) = autocast.run(|| -> Result<(f64, usize)> {
        crate::kernels::cpu::linear(&x, &w, &b)?;
        let started = Instant::now();
        let mut reps = 0;
        while reps < 3 || (started.elapsed().as_secs_f64() < 0.2 && reps < 200) {
            crate::kernels::cpu::linear(&x, &w, &b)?;
            reps += 1;
        }
        Ok((started.elapsed().as_secs_f64(), reps))
    })?;
    let tflops = 2.0 * (ROWS * k * n * reps) as f64 / seconds / 1e12;
    let threads = candle_core::utils::get_num_threads();
    // The run's log already names the library, and why bf16 stays f32 where it does.
    let products = match autocast.products() {
        MixedPrecision::Bf16 => "bf16 products",
        MixedPrecision::No if precision == MixedPrecision::Bf16 => "f32 products",
        MixedPrecision::No => "f32",
    };
    Ok(Peak {
        tflops,
        source: format!(
            "measured: {products} of {ROWS}x{k}x{n} on {threads} thread{}",
            if threads == 1 { "" } else { "s" }
        ),
    })
}
