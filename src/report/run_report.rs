//! The end-of-run report: throughput, model FLOP utilisation, where a step's time goes (median and
//! p90 of each phase), evaluation and checkpoint totals, launch to first step, and each rank's step
//! time and peak memory beside the estimate, with the all-reduce's bytes and bus bandwidth. Written
//! to `output_dir/run_report.json` and printed as a table when training ends; `accel bench`
//! prints the same table.

use serde::Serialize;

use crate::spans::{self, StepTimes};

/// The file the report is written to.
pub const RUN_REPORT_FILE: &str = "run_report.json";

/// Median and 90th percentile of a figure over the steps, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub median_ms: f64,
    pub p90_ms: f64,
}

impl Spread {
    /// Of `seconds` (empty: zeros).
    pub fn of(seconds: impl IntoIterator<Item = f64>) -> Self {
        let mut ms: Vec<f64> = seconds.into_iter().map(|s| s * 1e3).collect();
        ms.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| ms.get(((ms.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0.0);
        Self { median_ms: at(0.5), p90_ms: at(0.9) }
    }
}

/// One rank's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RankFigures {
    pub rank: usize,
    pub step_median_ms: f64,
    /// Peak resident memory (CPU), or peak device memory in use (GPU), in MiB.
    pub peak_memory_mib: f64,
    /// `accel estimate-memory`'s figure for the same run (model, batch, longest padded length).
    pub estimated_memory_mib: f64,
}

/// Where a FLOP rate's peak comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Peak {
    /// Per rank.
    pub tflops: f64,
    /// "measured: ..." (a CPU's calibration) or "nominal: ..." (a GPU's data sheet).
    pub source: String,
}

/// What a training run reports at its end.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    pub device: String,
    pub mixed_precision: String,
    pub world_size: usize,
    /// What was sharded over the ranks (ZeRO's stage; 0 is DDP).
    pub zero_stage: u8,
    /// Optimizer steps this run took (a resumed run counts its own).
    pub steps: usize,
    pub train_runtime_s: f64,
    pub samples_per_s: f64,
    /// Tokens that are not padding, per second.
    pub tokens_per_s: f64,
    pub padded_tokens_per_s: f64,
    /// 6 x non-embedding parameters x the tokens computed (padding included on a GPU, the real
    /// tokens only on the CPU, which skips padding), over all ranks (attention's own products are
    /// left out, as PyTorch's reference counts them).
    pub model_tflops_per_s: f64,
    pub peak: Option<Peak>,
    /// `model_tflops_per_s` over the peak of all ranks.
    pub mfu: Option<f64>,
    pub step: Spread,
    /// Each phase of a step (rank 0's steps): data, forward, backward, all-reduce wait (for the
    /// slowest rank), all-reduce (the transfer), clip, optimizer.
    pub phases: Vec<(String, Spread)>,
    pub evaluation_s: f64,
    pub evaluations: usize,
    pub checkpoint_s: f64,
    pub checkpoints: usize,
    /// From the launch (or the process's start) to the end of the first optimizer step.
    pub launch_to_first_step_s: Option<f64>,
    pub ranks: Vec<RankFigures>,
    /// How far the slowest rank's median step trails the fastest's.
    pub slowest_rank_trails_ms: f64,
    pub all_reduce_bytes_per_step: u64,
    /// 2 (n - 1) / n x bytes over the median transfer time, as nccl-tests counts it.
    pub all_reduce_bus_gb_per_s: Option<f64>,
    /// How the phases were timed.
    pub timing: String,
}

/// The phase times of `steps` (in order of a step's phases), and the step's own spread.
pub fn phase_spreads(steps: &[StepTimes]) -> (Spread, Vec<(String, Spread)>) {
    let step = Spread::of(steps.iter().map(|s| s.seconds));
    let phases = spans::STEP_PHASES
        .iter()
        .filter(|p| steps.iter().any(|s| s.phases.contains_key(*p)))
        .map(|p| (p.to_string(), Spread::of(steps.iter().map(|s| s.phases.get(p).copied().unwrap_or(0.0)))))
        .collect();
    (step, phases)
}

/// The numbers of a JSON value as `(prefix/path, value)`, objects by key and arrays by index
/// (a `[name, {...}]` pair by its name): the run report's figures as tracking metrics.
pub fn numbers(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, f64)>) {
    use serde_json::Value;
    match value {
        Value::Number(n) => out.extend(n.as_f64().map(|v| (prefix.to_string(), v))),
        Value::Object(fields) => fields.iter().for_each(|(k, v)| numbers(&format!("{prefix}/{k}"), v, out)),
        Value::Array(items) => match items.as_slice() {
            [Value::String(name), inner] => numbers(&format!("{prefix}/{name}"), inner, out),
            _ => items.iter().enumerate().for_each(|(i, v)| numbers(&format!("{prefix}/{i}"), v, out)),
        },
        _ => {}
    }
}

impl RunReport {
    /// The report as the table `accel train` prints.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(format!(
            "run report: {} steps on {} x {} ({}), {:.1} s",
            self.steps, self.world_size, self.device, self.mixed_precision, self.train_runtime_s
        ));
        line(format!(
            "  throughput     {:.1} samples/s, {:.0} tokens/s ({:.0} padded)",
            self.samples_per_s, self.tokens_per_s, self.padded_tokens_per_s
        ));
        match (&self.peak, self.mfu) {
            (Some(peak), Some(mfu)) => line(format!(
                "  MFU            {:.1}% ({:.3} TFLOP/s of {:.3} per rank x {}; peak {})",
                100.0 * mfu,
                self.model_tflops_per_s,
                peak.tflops,
                self.world_size,
                peak.source
            )),
            _ => line(format!(
                "  MFU            unknown ({:.3} TFLOP/s; no peak known for this device)",
                self.model_tflops_per_s
            )),
        }
        line(format!("  step                 median {:8.1} ms   p90 {:8.1} ms", self.step.median_ms, self.step.p90_ms));
        for (name, s) in &self.phases {
            line(format!("    {name:<16} median {:8.1} ms   p90 {:8.1} ms", s.median_ms, s.p90_ms));
        }
        line(format!(
            "  evaluation     {:.1} s in {}; checkpoints {:.1} s in {}",
            self.evaluation_s, self.evaluations, self.checkpoint_s, self.checkpoints
        ));
        if let Some(s) = self.launch_to_first_step_s {
            line(format!("  first step     {s:.2} s after launch"));
        }
        for r in &self.ranks {
            line(format!(
                "  rank {:<3}       median step {:.1} ms, peak memory {:.0} MiB (estimate {:.0} MiB)",
                r.rank, r.step_median_ms, r.peak_memory_mib, r.estimated_memory_mib
            ));
        }
        if self.world_size > 1 {
            let bus = self.all_reduce_bus_gb_per_s.map(|g| format!("{g:.2} GB/s bus")).unwrap_or_else(|| "-".into());
            // ZeRO-2 reduce-scatters the gradients; stages 1 and 2 then all-gather the weights.
            let (what, gather) = match self.zero_stage {
                0 => ("all-reduce    ", ""),
                1 => ("all-reduce    ", ", then the weights all-gathered"),
                _ => ("reduce-scatter", ", then the weights all-gathered"),
            };
            line(format!(
                "  {what} {:.1} MB per step, {bus}{gather}; the slowest rank trails by {:.1} ms",
                self.all_reduce_bytes_per_step as f64 / 1e6,
                self.slowest_rank_trails_ms
            ));
            if self.zero_stage > 0 {
                line(format!("  sharding       ZeRO stage {}", self.zero_stage));
            }
        }
        line(format!("  timing         {}", self.timing));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_are_the_median_and_the_90th_percentile() {
        let s = Spread::of((1..=10).map(|i| i as f64 / 1000.0));
        assert_eq!((s.median_ms.round(), s.p90_ms.round()), (6.0, 9.0));
        assert_eq!(Spread::of([]).median_ms, 0.0);
    }
}
