//! The command line as given (clap derive structs only); turning it into configs happens in
//! `main.rs` through [`crate::config`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::device::DeviceSpec;
use crate::kernels::MixedPrecision;
use crate::train::args::FlagValue;

/// Fine-tune transformers on sentence(-pair) classification.
#[derive(Debug, Parser)]
#[command(name = "accel", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inspect and prepare datasets.
    #[command(subcommand)]
    Data(DataCommand),
    /// Fine-tune a model as the config says.
    Train(TrainArgs),
    /// Loss and metrics of a fine-tuned model on a split.
    Eval(EvalArgs),
    /// Labels and probabilities for your sentences (a file or the command line).
    Predict(PredictArgs),
    /// Start a command on several ranks through mpirun, e.g. `accel launch --nproc 2 train --config C`.
    Launch(LaunchArgs),
    /// What a bug report needs: version, features, CPU, threads, MPI, GPUs, the ACCEL_*/HF_* variables;
    /// with --config, also what that run would shard over its ranks.
    Env(EnvArgs),
    /// Write a commented run config with every key, its default and its meaning.
    Config(ConfigArgs),
    /// Draw the training curves of one or several runs side by side into a PNG.
    Plot(PlotArgs),
    /// A short end-to-end run of this set-up on a tiny model: what works, what was skipped and why.
    Test(TestArgs),
    /// Memory to fine-tune a model (parameters, gradients, AdamW, activations) in fp32 and bf16.
    EstimateMemory(EstimateMemoryArgs),
    /// Train a config a few steps on one process, on N ranks and with N-fold accumulation: do the
    /// losses, gradient norms and weights agree?
    Verify(VerifyArgs),
    /// Training throughput (samples/s, MFU) of a random-init model on this device; under `accel
    /// launch`, the gradient all-reduce's bandwidth too. Prints one JSON line.
    Bench(BenchArgs),
}

/// `accel env`.
#[derive(Debug, Args)]
pub struct EnvArgs {
    /// A run's TOML config: also say what its ranks shard (zero_stage).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override any config key, as for `accel train` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

/// `accel verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The run's TOML config.
    #[arg(long)]
    pub config: PathBuf,
    /// Override any config key, as for `accel train` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Ranks of the multi-process run.
    #[arg(long, default_value_t = 2)]
    pub nproc: usize,
    /// Optimizer steps of each run.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// The largest difference allowed in a loss, a gradient norm or a weight.
    #[arg(long, default_value_t = 1e-4)]
    pub tolerance: f64,
    /// Keep the three runs here (default: a temporary folder, removed at the end).
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
}

/// `accel bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// "minilm" (all-MiniLM-L6-v2's shape), "bert-base", "bert-large", a family's base shape
    /// ("roberta-base", "xlm-roberta-base", "distilbert-base", "electra-small", "electra-base",
    /// "deberta-v3-base", "modernbert-base"), or a model folder whose config.json to use.
    #[arg(long, default_value = "minilm")]
    pub model: String,
    /// Rows per step and rank.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// "mrpc": MRPC's training pairs in file order, padded per batch (what
    /// ../shared/bench/gpu_bench.py trains on); "random": random tokens, --seq-len per row.
    #[arg(long, default_value = "mrpc")]
    pub data: String,
    /// The tokenizer for --data mrpc: a model folder or a name under ACCEL_MODEL_DIR.
    #[arg(long, default_value = "all-MiniLM-L6-v2")]
    pub tokenizer: String,
    /// Tokens per row of --data random.
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// "no" or "bf16".
    #[arg(long, default_value = "no")]
    pub mixed_precision: MixedPrecision,
    /// "auto", "cpu", "cuda" or "cuda:N".
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// The peak the FLOP utilisation is counted against, in TFLOP/s (default: 989, the dense bf16
    /// peak of an H100/H200 SXM, as ../shared/bench/gpu_bench.py counts).
    #[arg(long, default_value_t = 989.0)]
    pub peak_tflops: f64,
    /// What is sharded over the ranks: 0 (DDP), 1 (AdamW's moments) or 2 (moments and gradients).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub zero_stage: u8,
}

/// `accel estimate-memory`.
#[derive(Debug, Args)]
pub struct EstimateMemoryArgs {
    /// A model folder, a name under ACCEL_MODEL_DIR, or a hub id (only config.json is read).
    #[arg(long)]
    pub model: String,
    /// Rows per process and micro-batch (per_device_train_batch_size).
    #[arg(long)]
    pub batch: usize,
    /// Tokens per row: the longest row of a batch (default: 128).
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Outputs of the head (1 for regression).
    #[arg(long, default_value_t = 2)]
    pub num_labels: usize,
    /// Ranks of the run: the figures are per rank.
    #[arg(long, default_value_t = 1)]
    pub nproc: usize,
    /// What is sharded over the ranks: 0 (DDP), 1 (AdamW's moments) or 2 (moments and gradients).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub zero_stage: u8,
    /// Also run 3 training steps on random tokens here, in each precision, and compare the peak
    /// resident memory they add with the estimate.
    #[arg(long)]
    pub measure: bool,
    /// With --measure, run one precision in this process (`no` or `bf16`) and print bytes only.
    #[arg(long, hide = true)]
    pub measure_one: Option<String>,
}

/// `accel test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Ranks for the multi-process check through `accel launch` (0 skips it).
    #[arg(long, default_value_t = 2)]
    pub nproc: usize,
    /// Keep the runs in this folder (default: a temporary folder, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// `accel plot`.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Run folders (holding metrics.jsonl) or checkpoint folders (holding trainer_state.json).
    #[arg(required = true, value_name = "RUN_DIR")]
    pub runs: Vec<PathBuf>,
    /// The image to write (default: RUN_DIR/curves.png for one run, curves.png for several;
    /// RUN_DIR/timeline.png with --timeline).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Draw one step's timeline from RUN_DIR/trace/ (a run trained with profile = true) instead.
    #[arg(long)]
    pub timeline: bool,
    /// The step --timeline draws (default: the one of median duration).
    #[arg(long, requires = "timeline")]
    pub step: Option<u64>,
}

/// `accel config`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// A built-in dataset such as glue/mrpc (default glue/mrpc, with a note on using your own files).
    #[arg(long, conflicts_with = "print")]
    pub dataset: Option<String>,
    /// The model: a folder, a name under ACCEL_MODEL_DIR, or a hub id.
    #[arg(long, conflicts_with = "print")]
    pub model: Option<String>,
    /// Write here instead of standard output (an existing file is never overwritten).
    #[arg(long, short, conflicts_with = "print")]
    pub output: Option<PathBuf>,
    /// Print the config `accel train` would run with these arguments (--config, --set, its flags),
    /// each value with where it came from, instead of the template.
    #[arg(long)]
    pub print: bool,
    #[command(flatten)]
    pub run: TrainArgs,
}

/// `accel launch`: flags override the `[launch]` section of the command's `--config`.
#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// Ranks to start (launch.nproc).
    #[arg(long)]
    pub nproc: Option<usize>,
    /// An OpenMPI hostfile (`host slots=N` lines) to run across machines (launch.hostfile).
    #[arg(long)]
    pub hostfile: Option<PathBuf>,
    /// Compute threads per rank (launch.threads_per_rank, default 1).
    #[arg(long)]
    pub threads_per_rank: Option<usize>,
    /// The mpirun to use (launch.mpirun; default `mpirun` on PATH).
    #[arg(long)]
    pub mpirun: Option<PathBuf>,
    /// Extra mpirun arguments, split on spaces, e.g. --mpirun-args "--mca btl tcp,self" (launch.mpirun_args).
    #[arg(long, allow_hyphen_values = true)]
    pub mpirun_args: Option<String>,
    /// Allow more ranks than cores (launch.oversubscribe).
    #[arg(long)]
    pub oversubscribe: bool,
    /// Start a failed `train` job again, up to N times, from its newest checkpoint (launch.max_restarts).
    #[arg(long, value_name = "N")]
    pub max_restarts: Option<usize>,
    /// With a hostfile: restart without the host where a rank failed while at least M ranks remain, keeping the global batch through accumulation (launch.min_nproc).
    #[arg(long, value_name = "M")]
    pub min_nproc: Option<usize>,
    /// Seconds a preempted job (SIGTERM or SIGUSR1 to the launcher) may take to checkpoint before it is ended (launch.preempt_grace).
    #[arg(long, value_name = "SECONDS")]
    pub preempt_grace: Option<f64>,
    /// Print the mpirun command line and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// The accel command each rank runs, e.g. `train --config configs/mrpc.toml`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

impl LaunchArgs {
    /// The flags as a launch config (unset flags stay unset, so the file's values show through).
    pub fn flags(&self) -> accel_launch::LaunchConfig {
        accel_launch::LaunchConfig {
            nproc: self.nproc,
            hostfile: self.hostfile.clone(),
            threads_per_rank: self.threads_per_rank,
            mpirun: self.mpirun.clone(),
            mpirun_args: self
                .mpirun_args
                .as_deref()
                .map(|a| a.split_whitespace().map(String::from).collect())
                .unwrap_or_default(),
            oversubscribe: self.oversubscribe.then_some(true),
            max_restarts: self.max_restarts,
            min_nproc: self.min_nproc,
            preempt_grace: self.preempt_grace,
        }
    }

    /// The `--config` file the command names, if any.
    pub fn command_config(&self) -> Option<PathBuf> {
        let mut it = self.command.iter();
        while let Some(arg) = it.next() {
            if arg == "--config" {
                return it.next().map(PathBuf::from);
            }
            if let Some(path) = arg.strip_prefix("--config=") {
                return Some(PathBuf::from(path));
            }
        }
        None
    }
}

/// `accel train`: the config file, overrides, and flags for the common keys.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The run's TOML config (training arguments at the top, [data] and [model] sections).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override any config key, e.g. --set data.max_length=128 (repeatable, applied in order).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    #[arg(long)]
    pub max_steps: Option<i64>,
    #[arg(long)]
    pub num_train_epochs: Option<f64>,
    #[arg(long)]
    pub learning_rate: Option<f64>,
    #[arg(long)]
    pub per_device_train_batch_size: Option<usize>,
    #[arg(long)]
    pub gradient_accumulation_steps: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// A checkpoint folder to resume from, or "latest" for the newest in output_dir.
    #[arg(long)]
    pub resume_from_checkpoint: Option<PathBuf>,
    /// "no" or "bf16": bf16 matrix products with f32 weights and optimizer (mixed_precision).
    #[arg(long)]
    pub mixed_precision: Option<MixedPrecision>,
    /// "auto", "cpu", "cuda" (the GPU of the local rank) or "cuda:N" (device).
    #[arg(long)]
    pub device: Option<DeviceSpec>,
    /// What is sharded over the ranks: 0 (DDP), 1 (AdamW's moments) or 2 (moments and gradients)
    /// (zero_stage).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub zero_stage: Option<u8>,
    /// Write a timeline of the steps to output_dir/trace/ (profile); STEPS bounds it, e.g. 10-20 (profile_steps).
    #[arg(long, value_name = "STEPS", num_args = 0..=1, default_missing_value = "")]
    pub profile: Option<String>,
    /// Print the resolved config, each value with where it came from (default, file:line, --set,
    /// a flag, the environment, Slurm), and exit without training.
    #[arg(long)]
    pub print_config: bool,
}

impl TrainArgs {
    /// The config keys the flags set, in the order they are applied (after `--set`).
    pub fn flag_values(&self) -> crate::Result<Vec<FlagValue>> {
        let mut out = Vec::new();
        let path = |p: &PathBuf| p.to_string_lossy().into_owned();
        let mut put = |key, flag, value: Option<toml::Value>| {
            if let Some(value) = value {
                out.push(FlagValue { key, flag, value });
            }
        };
        put("output_dir", "--output-dir", self.output_dir.as_ref().map(|p| path(p).into()));
        put("max_steps", "--max-steps", self.max_steps.map(Into::into));
        put("num_train_epochs", "--num-train-epochs", self.num_train_epochs.map(Into::into));
        put("learning_rate", "--learning-rate", self.learning_rate.map(Into::into));
        put("per_device_train_batch_size", "--per-device-train-batch-size", self.per_device_train_batch_size.map(int));
        put("gradient_accumulation_steps", "--gradient-accumulation-steps", self.gradient_accumulation_steps.map(int));
        put(
            "resume_from_checkpoint",
            "--resume-from-checkpoint",
            self.resume_from_checkpoint.as_ref().map(|p| path(p).into()),
        );
        put("mixed_precision", "--mixed-precision", self.mixed_precision.map(|m| m.as_str().into()));
        put("device", "--device", self.device.map(|d| d.to_string().into()));
        put("zero_stage", "--zero-stage", self.zero_stage.map(|z| i64::from(z).into()));
        put("profile", "--profile", self.profile.as_ref().map(|_| true.into()));
        put("profile_steps", "--profile", self.profile.as_ref().filter(|s| !s.is_empty()).map(|s| s.as_str().into()));
        if let Some(seed) = self.seed {
            out.push(FlagValue::new("seed", "--seed", seed)?);
        }
        Ok(out)
    }
}

/// A count as a TOML integer (clap's values are far below i64's limit).
fn int(n: usize) -> toml::Value {
    toml::Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

/// `accel eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A fine-tuned model folder (config.json with id2label, model.safetensors, tokenizer files).
    #[arg(long)]
    pub model: String,
    /// Print one JSON object (split, rows, metrics, seconds) instead of the lines.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub source: DataSource,
    /// The split to evaluate (default: validation; MNLI's validation_matched).
    #[arg(long)]
    pub split: Option<String>,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// "no" or "bf16" (bf16 matrix products).
    #[arg(long, default_value = "no")]
    pub mixed_precision: MixedPrecision,
    /// "auto", "cpu", "cuda" or "cuda:N".
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
}

/// `accel predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// A fine-tuned model folder.
    #[arg(long)]
    pub model: String,
    /// A TSV, CSV, JSON-lines or parquet file with a header; see --text-columns. For a token
    /// classifier: a CoNLL file (words in its first column), JSON lines with `tokens`, or a text
    /// file of one sentence per line. For question answering: a SQuAD JSON file or JSON lines
    /// with `id`, `question` and `context`.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// The one or two text columns of --input (default: sentence1,sentence2 or sentence or text).
    #[arg(long, value_delimiter = ',')]
    pub text_columns: Vec<String>,
    /// A sentence to classify (with --text-pair for a pair); for a token classifier, its words
    /// separated by spaces; for question answering, the question (--text-pair: the context).
    #[arg(long, conflicts_with = "input")]
    pub text: Option<String>,
    #[arg(long, requires = "text")]
    pub text_pair: Option<String>,
    /// A question answering model: questions may have no answer (SQuAD v2); the null answer wins
    /// when it beats the best span by more than --null-score-diff-threshold.
    #[arg(long)]
    pub version_2_with_negative: bool,
    #[arg(long, default_value_t = 0.0)]
    pub null_score_diff_threshold: f64,
    /// A question answering model: the windows' length and the tokens two windows share (as
    /// `data.max_length` and `data.doc_stride`).
    #[arg(long, default_value_t = 384)]
    pub max_length: usize,
    #[arg(long, default_value_t = 128)]
    pub doc_stride: usize,
    /// A token classifier's tags as CoNLL (`word tag` per line, a blank line after each sentence)
    /// instead of one JSON line per sentence.
    #[arg(long)]
    pub conll: bool,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// "no" or "bf16" (bf16 matrix products).
    #[arg(long, default_value = "no")]
    pub mixed_precision: MixedPrecision,
    /// "auto", "cpu", "cuda" or "cuda:N".
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Print a dataset's splits, features and a row.
    Show(ShowArgs),
    /// Tokenize every split through the cache and print length statistics.
    Tokenize(TokenizeArgs),
}

/// Where the data comes from: a name, a config, overrides.
#[derive(Debug, Args)]
pub struct DataSource {
    /// A built-in dataset such as glue/mrpc (sets data.dataset).
    pub dataset: Option<String>,
    /// A TOML config whose [data] section describes the data.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A folder laid out like glue/MRPC/... (default: ACCEL_DATA_DIR).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Override a config key, e.g. --set data.max_length=128 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub source: DataSource,
    /// The split whose row to print.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// The row to print.
    #[arg(long, default_value_t = 0)]
    pub index: usize,
}

#[derive(Debug, Args)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub source: DataSource,
    /// A model folder, a name under ACCEL_MODEL_DIR, or a hub id.
    #[arg(long)]
    pub model: String,
    /// Tokenize without reading or writing the cache.
    #[arg(long)]
    pub no_cache: bool,
}
