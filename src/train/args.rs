//! TrainingArguments: the Trainer's settings under Hugging Face's names and defaults, and the
//! whole run config (`[data]`, `[model]` and the arguments at the top level of the TOML file).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{self, DataConfig, Task};
use crate::device::DeviceSpec;
use crate::distributed::ZeroStage;
use crate::kernels::MixedPrecision;
use crate::optim::{AdamWConfig, LrSchedule, ScheduleKind, Warmup};
use crate::{Error, Result};

/// When to evaluate, log or save.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IntervalStrategy {
    No,
    Steps,
    Epoch,
}

impl IntervalStrategy {
    /// The name a config uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::No => "no",
            Self::Steps => "steps",
            Self::Epoch => "epoch",
        }
    }
}

/// The learning-rate schedule (transformers' `SchedulerType` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerType {
    Linear,
    Cosine,
    Constant,
    ConstantWithWarmup,
}

/// The Trainer's arguments. Defaults are transformers' `TrainingArguments` defaults.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingArguments {
    pub output_dir: PathBuf,
    pub num_train_epochs: f64,
    /// Total optimizer steps; overrides `num_train_epochs` when positive.
    pub max_steps: i64,
    pub per_device_train_batch_size: usize,
    pub per_device_eval_batch_size: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub max_grad_norm: f64,
    pub lr_scheduler_type: SchedulerType,
    /// Warmup as a fraction of the total steps (rounded up); `warmup_steps` wins when positive.
    pub warmup_ratio: f64,
    pub warmup_steps: usize,
    pub gradient_accumulation_steps: usize,
    pub seed: u64,
    pub eval_strategy: IntervalStrategy,
    /// Defaults to `logging_steps`.
    pub eval_steps: Option<usize>,
    pub logging_strategy: IntervalStrategy,
    pub logging_steps: usize,
    pub save_strategy: IntervalStrategy,
    pub save_steps: usize,
    pub save_total_limit: Option<usize>,
    pub load_best_model_at_end: bool,
    /// Defaults to `loss` (lower is better) when `load_best_model_at_end` is set.
    pub metric_for_best_model: Option<String>,
    pub greater_is_better: Option<bool>,
    pub dataloader_drop_last: bool,
    /// A checkpoint folder to resume from.
    pub resume_from_checkpoint: Option<PathBuf>,
    /// Seconds a collective may wait for the other ranks before the job is aborted.
    pub ddp_timeout: u64,
    /// Size of the gradient all-reduce buckets in MB (DDP's `bucket_cap_mb`).
    pub ddp_bucket_cap_mb: f64,
    /// Every this many optimizer steps, check that all ranks hold the same weights (0: never).
    pub ddp_check_weights_steps: usize,
    /// What is sharded over the ranks (DeepSpeed's name): 0 = DDP (everything on every rank),
    /// 1 = AdamW's moments, 2 = the moments and the averaged gradients. One process ignores it.
    pub zero_stage: ZeroStage,
    /// Accelerate's `mixed_precision`: "no", or "bf16" for bf16 matrix products (fp32 weights,
    /// optimizer, normalisations and loss), in training and evaluation.
    pub mixed_precision: MixedPrecision,
    /// Where the model, batches and optimizer state live: "auto" (a GPU per local rank when the
    /// build has CUDA and the host has GPUs, else the CPU), "cpu", "cuda" or "cuda:N".
    pub device: DeviceSpec,
    /// Stop after this many evaluations without improvement of `metric_for_best_model`
    /// (transformers' `EarlyStoppingCallback`); needs `load_best_model_at_end`.
    pub early_stopping_patience: Option<usize>,
    /// How much the metric must improve to count as an improvement.
    pub early_stopping_threshold: f64,
    /// Where logged records go besides metrics.jsonl (transformers' name): `["tensorboard"]`,
    /// `["mlflow"]` (the server at MLFLOW_TRACKING_URI), `"all"` (TensorBoard, and MLflow when
    /// MLFLOW_TRACKING_URI is set) or `"none"`; a string or a list.
    #[serde(deserialize_with = "one_or_many")]
    pub report_to: Vec<ReportTo>,
    /// The run's name in MLflow (transformers' `run_name`; default: output_dir's last folder).
    pub run_name: Option<String>,
    /// With MLflow: upload the final model folder as the run's `model` artifact at the end.
    pub mlflow_log_model: bool,
    /// TensorBoard's folder; default `output_dir/runs/<Mon><DD>_<HH-MM-SS>_<host>` (UTC).
    pub logging_dir: Option<PathBuf>,
    /// Write a timeline of every phase of the steps (Chrome trace-event JSON, one file per rank in
    /// `output_dir/trace/`); on a GPU each phase then waits for the device.
    pub profile: bool,
    /// The steps the timeline keeps: `"10-20"`, `"15"`; all of them when unset.
    pub profile_steps: Option<String>,
}

/// The integrations `report_to` names (transformers' names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportTo {
    /// TensorBoard event files under `logging_dir`.
    Tensorboard,
    /// An MLflow tracking server (MLFLOW_TRACKING_URI), through its REST API.
    Mlflow,
    /// Every integration accel has: TensorBoard, and MLflow when MLFLOW_TRACKING_URI is set.
    All,
    /// None besides metrics.jsonl.
    None,
}

/// One name or a list of names, as transformers accepts for `report_to`; a name outside
/// [`ReportTo`] is an error listing the names there are.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<ReportTo>, D::Error> {
    use serde::de::{Error as _, IntoDeserializer};
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let names = match OneOrMany::deserialize(d) {
        Ok(OneOrMany::One(s)) => vec![s],
        Ok(OneOrMany::Many(v)) => v,
        Err(_) => return Err(D::Error::custom("expected a string or a list of strings, such as [\"tensorboard\"]")),
    };
    names
        .into_iter()
        .map(|name| {
            if name == "wandb" {
                return Err(D::Error::custom(
                    "\"wandb\" is not an integration of accel: W&B's offline run format is internal to its client, \
                     and accel writes no format it cannot check; use \"mlflow\" or \"tensorboard\" (W&B can sync \
                     TensorBoard event files: `wandb sync --sync-tensorboard`)",
                ));
            }
            let name: serde::de::value::StringDeserializer<serde::de::value::Error> = name.into_deserializer();
            ReportTo::deserialize(name).map_err(|e| D::Error::custom(e.to_string()))
        })
        .collect()
}

impl Default for TrainingArguments {
    fn default() -> Self {
        Self {
            output_dir: PathBuf::from("trainer_output"),
            num_train_epochs: 3.0,
            max_steps: -1,
            per_device_train_batch_size: 8,
            per_device_eval_batch_size: 8,
            learning_rate: 5e-5,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            max_grad_norm: 1.0,
            lr_scheduler_type: SchedulerType::Linear,
            warmup_ratio: 0.0,
            warmup_steps: 0,
            gradient_accumulation_steps: 1,
            seed: 42,
            eval_strategy: IntervalStrategy::No,
            eval_steps: None,
            logging_strategy: IntervalStrategy::Steps,
            logging_steps: 500,
            save_strategy: IntervalStrategy::Steps,
            save_steps: 500,
            save_total_limit: None,
            load_best_model_at_end: false,
            metric_for_best_model: None,
            greater_is_better: None,
            dataloader_drop_last: false,
            resume_from_checkpoint: None,
            ddp_timeout: 1800,
            ddp_bucket_cap_mb: 25.0,
            ddp_check_weights_steps: 0,
            zero_stage: ZeroStage::Replicated,
            mixed_precision: MixedPrecision::No,
            device: DeviceSpec::Auto,
            early_stopping_patience: None,
            early_stopping_threshold: 0.0,
            report_to: Vec::new(),
            run_name: None,
            mlflow_log_model: false,
            logging_dir: None,
            profile: false,
            profile_steps: None,
        }
    }
}

impl TrainingArguments {
    /// Checks values and their combinations; each error names the key to change.
    pub fn validate(&self) -> Result<()> {
        let positive = |key: &str, v: usize| {
            if v == 0 {
                Err(Error::config(key, "must be at least 1"))
            } else {
                Ok(())
            }
        };
        positive("per_device_train_batch_size", self.per_device_train_batch_size)?;
        positive("per_device_eval_batch_size", self.per_device_eval_batch_size)?;
        positive("gradient_accumulation_steps", self.gradient_accumulation_steps)?;
        positive("logging_steps", self.logging_steps)?;
        positive("save_steps", self.save_steps)?;
        if let Some(n) = self.eval_steps {
            positive("eval_steps", n)?;
        }
        if self.ddp_timeout == 0 {
            return Err(Error::config("ddp_timeout", "must be at least 1 second"));
        }
        if !(self.ddp_bucket_cap_mb.is_finite() && self.ddp_bucket_cap_mb > 0.0) {
            return Err(Error::config("ddp_bucket_cap_mb", "must be a positive number of MB"));
        }
        if self.max_steps <= 0 && self.num_train_epochs <= 0.0 {
            return Err(Error::config("num_train_epochs", "must be positive unless max_steps is set"));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate >= 0.0) {
            return Err(Error::config("learning_rate", "must be a finite non-negative number"));
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return Err(Error::config("warmup_ratio", "must lie in [0, 1]"));
        }
        if self.weight_decay < 0.0 {
            return Err(Error::config("weight_decay", "must not be negative"));
        }
        if !(0.0..1.0).contains(&self.adam_beta1) || !(0.0..1.0).contains(&self.adam_beta2) {
            return Err(Error::config("adam_beta1", "adam_beta1 and adam_beta2 must lie in [0, 1)"));
        }
        if let Some(patience) = self.early_stopping_patience {
            positive("early_stopping_patience", patience)?;
            if !self.load_best_model_at_end {
                return Err(Error::config(
                    "early_stopping_patience",
                    "needs load_best_model_at_end = true (and so an evaluation and a save strategy), as transformers' EarlyStoppingCallback does",
                ));
            }
        }
        if self.report_to.contains(&ReportTo::None) && self.report_to.len() > 1 {
            return Err(Error::config("report_to", "\"none\" cannot be combined with other integrations"));
        }
        self.profile_range()?;
        if self.early_stopping_threshold < 0.0 {
            return Err(Error::config("early_stopping_threshold", "must not be negative"));
        }
        if self.load_best_model_at_end {
            if self.eval_strategy == IntervalStrategy::No {
                return Err(Error::config("load_best_model_at_end", "needs eval_strategy \"steps\" or \"epoch\""));
            }
            if self.save_strategy != self.eval_strategy {
                return Err(Error::config(
                    "save_strategy",
                    "must match eval_strategy when load_best_model_at_end is set (the best model must have been saved)",
                ));
            }
            if self.save_strategy == IntervalStrategy::Steps && !self.save_steps.is_multiple_of(self.eval_steps()) {
                return Err(Error::config(
                    "save_steps",
                    format!(
                        "must be a multiple of eval_steps ({}) when load_best_model_at_end is set",
                        self.eval_steps()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The process-group settings these arguments ask for.
    pub fn dist_options(&self) -> crate::distributed::DistOptions {
        crate::distributed::DistOptions { timeout: std::time::Duration::from_secs(self.ddp_timeout) }
    }

    /// The gradient bucket size in bytes.
    pub fn bucket_bytes(&self) -> usize {
        (self.ddp_bucket_cap_mb * 1024.0 * 1024.0) as usize
    }

    /// Whether logged records also go to TensorBoard event files.
    pub fn report_to_tensorboard(&self) -> bool {
        self.report_to.iter().any(|r| matches!(r, ReportTo::Tensorboard | ReportTo::All))
    }

    /// Whether records go to MLflow: `report_to` names it, or says `"all"` and MLFLOW_TRACKING_URI
    /// is set (`tracking_uri_set`).
    pub fn report_to_mlflow(&self, tracking_uri_set: bool) -> bool {
        self.report_to.iter().any(|r| *r == ReportTo::Mlflow || (*r == ReportTo::All && tracking_uri_set))
    }

    /// The run's name: `run_name`, else output_dir's last folder.
    pub fn run_name(&self) -> String {
        self.run_name.clone().unwrap_or_else(|| {
            self.output_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "accel".into())
        })
    }

    /// The steps the timeline keeps (None: no timeline).
    pub fn profile_range(&self) -> Result<Option<std::ops::RangeInclusive<usize>>> {
        if !self.profile {
            return Ok(None);
        }
        let Some(text) = self.profile_steps.as_deref() else { return Ok(Some(1..=usize::MAX)) };
        let bad = || Error::config("profile_steps", format!("{text:?} is not FIRST-LAST or STEP (steps count from 1)"));
        let number = |s: &str| s.trim().parse::<usize>().ok().filter(|n| *n >= 1).ok_or_else(bad);
        let (first, last) = match text.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => (number(text)?, number(text)?),
        };
        if first > last {
            return Err(bad());
        }
        Ok(Some(first..=last))
    }

    pub fn eval_steps(&self) -> usize {
        self.eval_steps.unwrap_or(self.logging_steps)
    }

    /// The metric that picks the best checkpoint, and whether greater is better.
    pub fn best_metric(&self) -> (String, bool) {
        let name = self.metric_for_best_model.clone().unwrap_or_else(|| "loss".into());
        let name = name.strip_prefix("eval_").unwrap_or(&name).to_string();
        let greater = self.greater_is_better.unwrap_or(name != "loss");
        (name, greater)
    }

    /// Warmup steps for a run of `total` optimizer steps.
    pub fn warmup_for(&self, total: usize) -> usize {
        if self.warmup_steps > 0 {
            self.warmup_steps
        } else {
            (total as f64 * self.warmup_ratio).ceil() as usize
        }
    }

    /// The learning-rate schedule of a run of `total` optimizer steps (transformers'
    /// `get_scheduler(lr_scheduler_type, num_warmup_steps, num_training_steps)`).
    pub fn lr_schedule(&self, total: usize) -> Result<LrSchedule> {
        let (kind, warmup) = match self.lr_scheduler_type {
            SchedulerType::Linear => (ScheduleKind::Linear, self.warmup_for(total)),
            SchedulerType::Cosine => (ScheduleKind::Cosine { num_cycles: 0.5 }, self.warmup_for(total)),
            SchedulerType::Constant => (ScheduleKind::Constant, 0),
            SchedulerType::ConstantWithWarmup => (ScheduleKind::Constant, self.warmup_for(total)),
        };
        LrSchedule::new(kind, self.learning_rate, Warmup::Steps(warmup), total)
    }

    /// AdamW's settings: the Trainer's, with no weight decay on biases and LayerNorm weights.
    pub fn adamw_config(&self) -> AdamWConfig {
        AdamWConfig {
            lr: self.learning_rate,
            beta1: self.adam_beta1,
            beta2: self.adam_beta2,
            eps: self.adam_epsilon,
            weight_decay: self.weight_decay,
            decay_all: false,
        }
    }

    /// The optimizer steps of the run and the epochs they span, for `steps_per_epoch` optimizer
    /// steps an epoch (an epoch's last window of accumulation may be short): `max_steps` when
    /// positive, else `num_train_epochs` of steps.
    pub fn steps_and_epochs(&self, steps_per_epoch: usize) -> (usize, usize) {
        let updates_per_epoch = steps_per_epoch.max(1);
        let max_steps = if self.max_steps > 0 {
            self.max_steps as usize
        } else {
            (self.num_train_epochs * updates_per_epoch as f64).ceil() as usize
        };
        (max_steps, max_steps.div_ceil(updates_per_epoch))
    }
}

/// `[model]`: which pretrained model to fine-tune.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// A folder, a name under ACCEL_MODEL_DIR, or a hub id.
    pub name_or_path: String,
    /// Initialize afresh the weights whose checkpoint shape differs (a classification head for
    /// another number of labels) instead of failing, as transformers' `ignore_mismatched_sizes`.
    pub ignore_mismatched_sizes: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self { name_or_path: "all-MiniLM-L6-v2".into(), ignore_mismatched_sizes: false }
    }
}

/// A command-line flag's value for a config key (`--learning-rate 1e-4` sets `learning_rate`).
#[derive(Debug, Clone, PartialEq)]
pub struct FlagValue {
    /// The dotted config key it sets.
    pub key: &'static str,
    /// The flag as typed (`--learning-rate`).
    pub flag: &'static str,
    pub value: toml::Value,
}

impl FlagValue {
    /// `value` as the TOML value of `key`; an error names the flag (a seed past TOML's integers).
    pub fn new(key: &'static str, flag: &'static str, value: impl Serialize) -> Result<Self> {
        let value = toml::Value::try_from(value).map_err(|e| Error::config(key, format!("{flag}: {e}")))?;
        Ok(Self { key, flag, value })
    }
}

/// A whole run: training arguments at the top level, `[data]`, `[model]` and `[launch]` sections.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// What the model learns to predict (the top-level `task` key).
    pub task: Task,
    pub args: TrainingArguments,
    pub data: DataConfig,
    pub model: ModelConfig,
    /// How `accel launch` starts the ranks of this run (read by the launcher, not the trainer).
    pub launch: accel_launch::LaunchConfig,
}

impl TrainConfig {
    /// Reads `path` (if any), applies `--set` overrides in order, and validates.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self> {
        Self::load_with(path, overrides, &[])
    }

    /// As [`load`](Self::load), with a command's `flags` setting their keys after the `--set`
    /// overrides and before validation.
    pub fn load_with(path: Option<&Path>, overrides: &[String], flags: &[FlagValue]) -> Result<Self> {
        let (mut table, origin) = match path {
            Some(p) => (config::read_toml(p)?, p.display().to_string()),
            None => (toml::Table::new(), "command line".to_string()),
        };
        for assignment in overrides {
            config::apply_override(&mut table, assignment)?;
        }
        for flag in flags {
            config::set_value(&mut table, flag.key, flag.value.clone())?;
        }
        // A wrong value may come from either; errors name both places to look.
        let origin = match (path, overrides.is_empty() && flags.is_empty()) {
            (Some(_), false) => format!("{origin} or the command line"),
            _ => origin,
        };
        Self::from_table(table, &origin)
    }

    /// Builds the config from a parsed table and validates it; `origin` names the file in errors.
    pub fn from_table(table: toml::Table, origin: &str) -> Result<Self> {
        let cfg = Self::parse_table(table, origin)?;
        cfg.args.validate()?;
        Ok(cfg)
    }

    fn parse_table(mut table: toml::Table, origin: &str) -> Result<Self> {
        let data: DataConfig = config::section(&table, "data", origin)?;
        let model: ModelConfig = config::section(&table, "model", origin)?;
        let launch: accel_launch::LaunchConfig = config::section(&table, "launch", origin)?;
        table.remove("data");
        table.remove("model");
        table.remove("launch");
        let task = match table.remove("task") {
            None => Task::default(),
            Some(value) => value.clone().try_into::<Task>().map_err(|_| {
                Error::config(
                    "task",
                    format!(
                        "{origin}: unknown task {value}; one of \"sequence-classification\", \"token-classification\", \"question-answering\""
                    ),
                )
            })?,
        };
        let args: TrainingArguments = config::section(&table, "", origin)?;
        Ok(Self { task, args, data, model, launch })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TrainConfig> {
        TrainConfig::from_table(text.parse().unwrap(), "t.toml")
    }

    #[test]
    fn hugging_face_names_and_defaults() {
        let cfg =
            parse("learning_rate = 2e-5\nlr_scheduler_type = \"cosine\"\n[data]\ndataset = \"glue/mrpc\"\n").unwrap();
        assert_eq!(cfg.args.learning_rate, 2e-5);
        assert_eq!(cfg.args.lr_scheduler_type, SchedulerType::Cosine);
        assert_eq!(cfg.args.per_device_train_batch_size, 8);
        assert_eq!(cfg.data.dataset.as_deref(), Some("glue/mrpc"));
        assert_eq!(cfg.model.name_or_path, "all-MiniLM-L6-v2");
        assert_eq!(cfg.args.warmup_for(101), 0);
        let cfg = parse("warmup_ratio = 0.1").unwrap();
        assert_eq!(cfg.args.warmup_for(101), 11, "rounded up as transformers does");
    }

    #[test]
    fn the_task_key_picks_the_head() {
        assert_eq!(parse("").unwrap().task, Task::SequenceClassification);
        assert_eq!(parse("task = \"token-classification\"").unwrap().task, Task::TokenClassification);
        let err = parse("task = \"ner\"").unwrap_err().to_string();
        assert!(err.contains("task") && err.contains("t.toml") && err.contains("question-answering"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let err = parse("learning_rat = 1e-5").unwrap_err().to_string();
        assert!(err.contains("learning_rat") && err.contains("did you mean `learning_rate`"), "{err}");
        let err = parse("[model]\nname = \"x\"").unwrap_err().to_string();
        assert!(err.contains("model.name") && err.contains("name_or_path"), "{err}");
        let err = parse("eval_strategy = \"sometimes\"").unwrap_err().to_string();
        assert!(err.contains("sometimes") && err.contains("epoch"), "{err}");
        let err = parse("per_device_train_batch_size = 0").unwrap_err().to_string();
        assert!(err.contains("per_device_train_batch_size"), "{err}");
        let err = parse("report_to = [\"wandb\"]").unwrap_err().to_string();
        assert!(err.starts_with("config report_to: \"wandb\" is not") && err.contains("\"mlflow\""), "{err}");
        let err = parse("report_to = [\"comet\"]").unwrap_err().to_string();
        assert!(err.contains("config report_to: unknown variant `comet`") && err.contains("`mlflow`"), "{err}");
        let args = parse("report_to = \"all\"").unwrap().args;
        assert!(args.report_to_mlflow(true) && !args.report_to_mlflow(false));
        assert!(parse("report_to = \"mlflow\"").unwrap().args.report_to_mlflow(false));
        let err = parse("report_to = [\"none\", \"tensorboard\"]").unwrap_err().to_string();
        assert!(err.contains("report_to") && err.contains("cannot be combined"), "{err}");
        let err = parse("report_to = 3").unwrap_err().to_string();
        assert!(err.contains("report_to") && err.contains("list of strings"), "{err}");
        assert!(parse("report_to = \"tensorboard\"").unwrap().args.report_to_tensorboard());
        assert!(parse("report_to = [\"all\"]").unwrap().args.report_to_tensorboard());
        assert!(!parse("report_to = \"none\"").unwrap().args.report_to_tensorboard());
        let err = parse("load_best_model_at_end = true").unwrap_err().to_string();
        assert!(err.contains("load_best_model_at_end") && err.contains("eval_strategy"), "{err}");
        let range = |text: &str| parse(text).map(|c| c.args.profile_range().unwrap());
        assert_eq!(range("profile = true\nprofile_steps = \"10-20\"").unwrap(), Some(10..=20));
        assert_eq!(range("profile = true\nprofile_steps = \"15\"").unwrap(), Some(15..=15));
        assert_eq!(range("profile = true").unwrap(), Some(1..=usize::MAX));
        assert_eq!(range("profile_steps = \"3-4\"").unwrap(), None, "no timeline unless profile = true");
        for bad in ["\"20-10\"", "\"0-3\"", "\"ten\""] {
            let err = parse(&format!("profile = true\nprofile_steps = {bad}")).unwrap_err().to_string();
            assert!(err.contains("profile_steps") && err.contains("FIRST-LAST"), "{err}");
        }
    }

    #[test]
    fn steps_epochs_schedule_and_optimizer_come_from_the_arguments() {
        let cfg = parse("num_train_epochs = 3\nwarmup_ratio = 0.1").unwrap();
        assert_eq!(cfg.args.steps_and_epochs(3), (9, 3));
        let cfg = parse("num_train_epochs = 2.5").unwrap();
        assert_eq!(cfg.args.steps_and_epochs(4), (10, 3), "a fraction of an epoch is its share of the steps");
        let cfg = parse("max_steps = 10\nnum_train_epochs = 1").unwrap();
        assert_eq!(cfg.args.steps_and_epochs(4), (10, 3), "max_steps wins and spans the epochs it needs");
        let cfg = parse("learning_rate = 1e-3\nwarmup_steps = 2").unwrap();
        let schedule = cfg.args.lr_schedule(10).unwrap();
        assert_eq!((schedule.lr_at(0), schedule.lr_at(2)), (0.0, 1e-3));
        let cfg = parse("learning_rate = 1e-3\nwarmup_steps = 2\nlr_scheduler_type = \"constant\"").unwrap();
        assert_eq!(cfg.args.lr_schedule(10).unwrap().lr_at(0), 1e-3, "constant has no warmup");
        let cfg = parse("weight_decay = 0.01\nadam_beta2 = 0.98").unwrap();
        let adamw = cfg.args.adamw_config();
        assert_eq!((adamw.weight_decay, adamw.beta2, adamw.decay_all), (0.01, 0.98, false));
    }

    #[test]
    fn a_wrong_value_at_the_top_level_names_its_key() {
        let mut t = toml::Table::new();
        config::apply_override(&mut t, "learning_rate=abc").unwrap();
        let err = TrainConfig::from_table(t, "command line").unwrap_err().to_string();
        assert!(err.starts_with("config learning_rate: invalid type: string \"abc\""), "{err}");
        let err = parse("mixed_precision = \"fp8\"\n").unwrap_err().to_string();
        assert!(err.starts_with("config mixed_precision: unknown variant `fp8`"), "{err}");
    }

    #[test]
    fn overrides_apply_in_order() {
        let mut t: toml::Table = "seed = 1\n[data]\ndataset = \"glue/mrpc\"".parse().unwrap();
        config::apply_override(&mut t, "seed=7").unwrap();
        config::apply_override(&mut t, "data.max_length=64").unwrap();
        let cfg = TrainConfig::from_table(t, "t.toml").unwrap();
        assert_eq!((cfg.args.seed, cfg.data.max_length), (7, Some(64)));
    }
}
