//! What a training run counts about itself for its end-of-run report: rows and tokens trained on,
//! the longest padded batch, and the peak of device memory; at the end, with the step spans and
//! the other ranks' figures, the [`RunReport`].

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::data::Batch;
use crate::distributed::{collectives, ProcessGroup};
use crate::kernels::MixedPrecision;
use crate::model::{Model, ModelConfig};
use crate::report::run_report::{phase_spreads, RankFigures, RunReport};
use crate::spans;
use crate::Result;

/// Set by `accel launch` for its ranks: the launch's time, in seconds since the Unix epoch.
pub const LAUNCHED_AT_VAR: &str = "ACCEL_LAUNCHED_AT";

const MIB: f64 = 1024.0 * 1024.0;

/// Counts of the batches a rank trained on.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub rows: usize,
    /// Tokens that are not padding.
    pub tokens: usize,
    pub padded_tokens: usize,
    /// Tokens the encoder computed: the real ones where the CPU skips padding, else the padded.
    pub computed_tokens: usize,
    /// The longest padded length seen (for the memory estimate).
    pub longest: usize,
    pub largest_batch: usize,
    /// Peak device memory in use (GPU), sampled at step ends.
    pub peak_device_bytes: u64,
}

impl Counts {
    /// Counts `batch`, trained on `device`.
    pub fn add(&mut self, batch: &Batch, device: &Device) -> Result<()> {
        let (rows, len) = batch.dims()?;
        self.computed_tokens += crate::model::tokens_computed(&batch.attention_mask, device)?;
        self.rows += rows;
        self.tokens += batch.tokens;
        self.padded_tokens += rows * len;
        self.longest = self.longest.max(len);
        self.largest_batch = self.largest_batch.max(rows);
        Ok(())
    }

    /// At a step's end: the device memory in use, on a GPU.
    pub fn sample_device_memory(&mut self, device: &Device) {
        if let Some(bytes) = crate::device::gpu_memory_used(device) {
            self.peak_device_bytes = self.peak_device_bytes.max(bytes);
        }
    }
}

/// What the report is built from besides the spans.
pub struct Inputs<'a> {
    pub model: &'a Model,
    pub config: &'a ModelConfig,
    pub num_labels: usize,
    pub device: &'a Device,
    /// The precision asked for, and the one the products ran in (f32 where bf16 keeps f32).
    pub precision: MixedPrecision,
    pub products: MixedPrecision,
    pub counts: &'a Counts,
    /// Seconds from the run's start to its end, and the optimizer steps it took.
    pub runtime_s: f64,
    pub steps: usize,
    /// How the training state was spread over the ranks (for the memory estimate).
    pub zero_stage: crate::distributed::ZeroStage,
}

/// Every rank's kept spans into `output_dir/trace/rank-N.json`, sent to and written by rank 0;
/// returns the files written (none on the other ranks).
pub fn write_traces(pg: &dyn ProcessGroup, output_dir: &Path, records: &[spans::Record]) -> Result<Vec<PathBuf>> {
    let mine = spans::trace::file_bytes(pg.rank(), records)?;
    let dir = output_dir.join(spans::trace::TRACE_DIR);
    let mut written = Vec::new();
    for rank in 0..pg.world_size() {
        let mut data = if rank == pg.rank() { mine.clone() } else { Vec::new() };
        collectives::broadcast_vec(pg, &mut data, rank)?;
        if pg.is_main() {
            std::fs::create_dir_all(&dir).map_err(|e| crate::Error::io(&dir, e))?;
            let path = dir.join(format!("rank-{rank}.json"));
            crate::io::write_atomically(&path, &data)?;
            written.push(path);
        }
    }
    Ok(written)
}

/// Seconds from the launch (or this process's start) to the end of this run's first step.
fn launch_to_first_step(first_step_ended_s: f64) -> f64 {
    let zero_unix =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
            - spans::clock_zero().elapsed().as_secs_f64();
    let launched = std::env::var(LAUNCHED_AT_VAR).ok().and_then(|v| v.parse::<f64>().ok());
    first_step_ended_s + launched.map_or(0.0, |at| (zero_unix - at).max(0.0))
}

/// The report of this run; every rank of `pg` calls it (it gathers the ranks' figures).
pub fn build(inputs: &Inputs, pg: &dyn ProcessGroup) -> Result<RunReport> {
    let steps = spans::steps();
    let (step, phases) = phase_spreads(&steps);
    let counts = inputs.counts;
    let gpu = !inputs.device.is_cpu();
    let peak_memory =
        if gpu { counts.peak_device_bytes as f64 / MIB } else { crate::runtime::peak_rss_mib().unwrap_or(0.0) };
    let sharding = crate::train::memory::Sharding { stage: inputs.zero_stage, ranks: pg.world_size() };
    let estimate = crate::train::memory::estimate_per_rank(
        inputs.config,
        inputs.num_labels,
        counts.largest_batch.max(1),
        counts.longest.max(1),
        inputs.products,
        sharding,
    )?
    .total() as f64
        / MIB;
    // Every rank calibrates at once, as they trained: a shared machine's ranks share its cores.
    let peak = crate::train::peak::peak(inputs.config, inputs.device, inputs.products)?;
    let mine = [step.median_ms, peak_memory, estimate, peak.as_ref().map_or(f64::NAN, |p| p.tflops)];
    let all = collectives::all_gather_f64(pg, &mine)?;
    let ranks: Vec<RankFigures> = all
        .chunks_exact(mine.len())
        .enumerate()
        .map(|(rank, f)| RankFigures { rank, step_median_ms: f[0], peak_memory_mib: f[1], estimated_memory_mib: f[2] })
        .collect();
    let medians = ranks.iter().map(|r| r.step_median_ms);
    let slowest_rank_trails_ms = medians.clone().fold(f64::MIN, f64::max) - medians.fold(f64::MAX, f64::min);
    let rank_peaks: f64 = all.chunks_exact(mine.len()).map(|f| f[3]).sum();
    let nonembedding = inputs.model.nonembedding_parameters() as f64;
    let totals = collectives::sum_f64(
        pg,
        &[
            counts.rows as f64,
            counts.tokens as f64,
            counts.padded_tokens as f64,
            6.0 * nonembedding * counts.computed_tokens as f64,
        ],
    )?;
    let (evaluation_s, evaluations) = spans::total(spans::EVALUATION);
    let (checkpoint_s, checkpoints) = spans::total(spans::CHECKPOINT);
    // Rates over the time spent training: evaluation and checkpoint writes are reported apart.
    let training_s = (inputs.runtime_s - evaluation_s - checkpoint_s).max(1e-9);
    let model_tflops_per_s = totals[3] / training_s / 1e12;
    let world = pg.world_size();
    let bytes = 4 * inputs.model.params().num_elements() as u64;
    let transfer = phases.iter().find(|(n, _)| n == spans::ALL_REDUCE).map(|(_, s)| s.median_ms);
    // nccl-tests' bus factors: an all-reduce moves 2 (n - 1) / n of the bytes, a reduce-scatter
    // (ZeRO-2's) half that.
    let passes = if inputs.zero_stage == crate::distributed::ZeroStage::Gradients { 1.0 } else { 2.0 };
    let all_reduce_bus_gb_per_s = transfer
        .filter(|ms| world > 1 && *ms > 0.0)
        .map(|ms| passes * (world - 1) as f64 / world as f64 * bytes as f64 / (ms / 1e3) / 1e9);
    let timing = if gpu && !spans::synchronizes() {
        "host clock around each phase; the GPU runs queued kernels later, so the split is approximate \
         (profile = true waits for the GPU at each span)"
    } else {
        "clock around each phase; all-reduce wait is a barrier before the gradients' all-reduce"
    };
    Ok(RunReport {
        device: match crate::device::gpu_name(inputs.device) {
            Some(name) => format!("{} ({name})", crate::device::name(inputs.device)),
            None => crate::device::name(inputs.device),
        },
        mixed_precision: if inputs.products == inputs.precision {
            inputs.precision.to_string()
        } else {
            format!("{} asked, f32 products", inputs.precision)
        },
        world_size: world,
        zero_stage: if world > 1 { inputs.zero_stage.number() } else { 0 },
        steps: inputs.steps,
        train_runtime_s: inputs.runtime_s,
        samples_per_s: totals[0] / training_s,
        tokens_per_s: totals[1] / training_s,
        padded_tokens_per_s: totals[2] / training_s,
        model_tflops_per_s,
        mfu: peak.as_ref().map(|_| model_tflops_per_s / rank_peaks),
        peak,
        step,
        phases,
        evaluation_s,
        evaluations,
        checkpoint_s,
        checkpoints,
        launch_to_first_step_s: steps.first().map(|s| launch_to_first_step(s.ended_s)),
        ranks,
        slowest_rank_trails_ms,
        all_reduce_bytes_per_step: if world > 1 { bytes } else { 0 },
        all_reduce_bus_gb_per_s,
        timing: timing.to_string(),
    })
}
