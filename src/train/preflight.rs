//! The pre-flight memory check: before a weight is allocated, `accel estimate-memory`'s figure for
//! the run (its model, per-device batch, longest training row and precision) against the memory
//! this process can have: on a CPU the host's available memory (`MemAvailable`, or the cgroup's
//! limit when lower) shared by the ranks on the host; on a GPU its free device memory. A run that
//! cannot fit is refused with both figures and the batch that would fit, in milliseconds, where it
//! would otherwise allocate until the machine gives out. `ACCEL_MEMORY_CHECK=off` skips it.

use candle_core::Device;

use crate::kernels::MixedPrecision;
use crate::model::ModelConfig;
use crate::{Error, Result};

use super::memory::estimate;

/// The variable that turns the check off.
pub const CHECK_VAR: &str = "ACCEL_MEMORY_CHECK";

/// What this process may use, in bytes, and where the figure comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Available {
    pub bytes: u64,
    pub source: String,
}

/// A figure in the unit that reads best.
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    let units = [("TiB", 1u64 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)];
    for (unit, size) in units {
        if b >= size as f64 {
            return format!("{:.1} {unit}", b / size as f64);
        }
    }
    format!("{bytes} B")
}

/// A `/proc/meminfo` field in bytes.
fn meminfo(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// The cgroup's memory left (`memory.max - memory.current`, cgroup v2), when it has a limit.
fn cgroup_left() -> Option<u64> {
    let read = |f: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{f}")).ok();
    let max = read("memory.max")?.trim().parse::<u64>().ok()?;
    let current = read("memory.current")?.trim().parse::<u64>().ok()?;
    Some(max.saturating_sub(current))
}

/// Ranks that share this host: OpenMPI's local size, Slurm's tasks per node, else all of them.
fn ranks_on_host(world_size: usize) -> (usize, &'static str) {
    for var in ["OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"] {
        if let Some(n) = std::env::var(var).ok().and_then(|v| v.trim().parse::<usize>().ok()).filter(|n| *n > 0) {
            return (n, if var.starts_with("OMPI") { "OMPI_COMM_WORLD_LOCAL_SIZE" } else { "SLURM_NTASKS_PER_NODE" });
        }
    }
    (world_size.max(1), "all ranks")
}

/// The memory this process may use on `device`, for a job of `world_size` ranks.
pub fn available(device: &Device, world_size: usize) -> Option<Available> {
    if !device.is_cpu() {
        let bytes = crate::device::gpu_memory_free(device)?;
        return Some(Available { bytes, source: format!("free memory of {}", crate::device::name(device)) });
    }
    let host = meminfo("MemAvailable")?;
    let (bytes, what) = match cgroup_left() {
        Some(left) if left < host => (left, "the cgroup's memory limit"),
        _ => (host, "MemAvailable"),
    };
    let (ranks, how) = ranks_on_host(world_size);
    let source = if ranks == 1 {
        format!("{what} {}", human(bytes))
    } else {
        format!("{what} {} shared by {ranks} ranks on this host ({how})", human(bytes))
    };
    Some(Available { bytes: bytes / ranks as u64, source })
}

/// What the check is given.
pub struct Run<'a> {
    pub config: &'a ModelConfig,
    pub num_labels: usize,
    pub batch: usize,
    pub accumulation: usize,
    /// The longest padded row training will see.
    pub seq_len: usize,
    pub precision: MixedPrecision,
}

/// Ok when the run fits in `available`; else the refusal, naming the figures and what would fit.
pub fn check(run: &Run, available: &Available) -> Result<()> {
    let e = estimate(run.config, run.num_labels, run.batch, run.seq_len, run.precision)?;
    let dims = run.config.dims();
    // The estimate's parts scale with the batch from there on; only the config could fail it.
    let need = |batch: usize, precision| {
        estimate(run.config, run.num_labels, batch, run.seq_len, precision).map_or(u64::MAX, |e| e.total())
    };
    let needed = e.total();
    if needed <= available.bytes {
        return Ok(());
    }
    let parts = format!(
        "parameters {}, gradients {}, AdamW {}, activations {}",
        human(e.parameters),
        human(e.gradients),
        human(e.optimizer),
        human(e.activations + e.backward_work + e.allocator)
    );
    let mut fixes = Vec::new();
    // The largest batch that fits, with the accumulation that keeps the global batch.
    let global = run.batch * run.accumulation;
    if let Some(b) =
        (1..run.batch).rev().find(|b| run.batch.is_multiple_of(*b) && need(*b, run.precision) <= available.bytes)
    {
        fixes.push(format!(
            "per_device_train_batch_size = {b} with gradient_accumulation_steps = {} keeps the global batch of {global} \
             and needs {}",
            global / b,
            human(need(b, run.precision))
        ));
    }
    let other = if run.precision == MixedPrecision::No { MixedPrecision::Bf16 } else { MixedPrecision::No };
    if need(run.batch, other) <= available.bytes {
        fixes.push(format!("mixed_precision = \"{other}\" needs {}", human(need(run.batch, other))));
    }
    let fix = if fixes.is_empty() {
        format!(
            "even a batch of 1 needs {}: the model ({} layers, hidden {}) is too large for this memory",
            human(need(1, run.precision)),
            dims.num_layers,
            dims.hidden_size
        )
    } else {
        format!("what fits: {}", fixes.join("; or "))
    };
    Err(Error::config(
        "per_device_train_batch_size",
        format!(
            "this run needs about {} per process ({parts}; batch {} x {} tokens, {}), and {} is available per process \
             ({}): {fix} ({CHECK_VAR}=off skips this check)",
            human(needed),
            run.batch,
            run.seq_len,
            run.precision,
            human(available.bytes),
            available.source
        ),
    ))
}

/// Whether the check is on (`ACCEL_MEMORY_CHECK` is not `off`).
pub fn enabled() -> bool {
    std::env::var(CHECK_VAR).map(|v| v.trim() != "off").unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(config: &ModelConfig, batch: usize) -> Run<'_> {
        Run { config, num_labels: 2, batch, accumulation: 1, seq_len: 128, precision: MixedPrecision::No }
    }

    #[test]
    fn a_run_that_fits_passes_and_one_that_does_not_names_the_figures_and_a_batch_that_fits() {
        use crate::model::BertConfig;
        let bert =
            BertConfig { hidden_size: 384, num_hidden_layers: 6, intermediate_size: 1536, ..BertConfig::default() };
        let config = ModelConfig::bert(bert.clone());
        let at_32 = estimate(&config, 2, 32, 128, MixedPrecision::No).unwrap().total();
        let plenty = Available { bytes: 2 * at_32, source: "test".into() };
        check(&run(&config, 32), &plenty).unwrap();
        let at_8 = estimate(&config, 2, 8, 128, MixedPrecision::No).unwrap().total();
        let tight = Available { bytes: at_8 + 1, source: "MemAvailable 1 GiB".into() };
        let err = check(&run(&config, 32), &tight).unwrap_err().to_string();
        assert!(err.contains("per_device_train_batch_size") && err.contains("MemAvailable 1 GiB"), "{err}");
        assert!(err.contains("per_device_train_batch_size = 8 with gradient_accumulation_steps = 4"), "{err}");
        let absurd = ModelConfig::bert(BertConfig { num_hidden_layers: 10_000_000, ..bert });
        let err = check(&run(&absurd, 8), &plenty).unwrap_err().to_string();
        assert!(err.contains("even a batch of 1 needs") && err.contains("TiB"), "{err}");
    }

    #[test]
    fn figures_read_in_their_unit() {
        assert_eq!(human(3 << 30), "3.0 GiB");
        assert_eq!(human(512 << 20), "512.0 MiB");
        assert_eq!(human(100), "100 B");
        assert!(available(&Device::Cpu, 1).is_some_and(|a| a.bytes > 0));
    }
}
