//! `accel config`: a commented config holding every key with its default and a one-line meaning,
//! so that nobody has to guess key names. Keys and defaults come from the config types themselves;
//! only the meanings are written here, and a key without one is an error (caught by the tests).

use serde::Serialize;

use super::args::{ModelConfig, TrainingArguments};
use crate::config::{DataConfig, Task};
use crate::{Error, Result};

/// One line on what a key does, for the top level and each section.
fn meaning(section: &str, key: &str) -> Option<&'static str> {
    Some(match (section, key) {
        ("", "task") => "\"sequence-classification\", \"token-classification\" or \"question-answering\"",
        ("", "output_dir") => "where checkpoints, metrics.jsonl and the final model go",
        ("", "num_train_epochs") => "passes over the training data",
        ("", "max_steps") => "total optimizer steps; overrides num_train_epochs when positive",
        ("", "per_device_train_batch_size") => "training rows per process and micro-batch",
        ("", "per_device_eval_batch_size") => "evaluation rows per process and batch",
        ("", "learning_rate") => "AdamW's peak learning rate",
        ("", "weight_decay") => "AdamW's decoupled weight decay (not on biases and LayerNorm weights)",
        ("", "adam_beta1") => "AdamW's first-moment decay",
        ("", "adam_beta2") => "AdamW's second-moment decay",
        ("", "adam_epsilon") => "AdamW's denominator epsilon",
        ("", "max_grad_norm") => "clip the global gradient norm to this (0: no clipping)",
        ("", "lr_scheduler_type") => "\"linear\", \"cosine\", \"constant\" or \"constant_with_warmup\"",
        ("", "warmup_ratio") => "warmup as a fraction of the total steps",
        ("", "warmup_steps") => "warmup steps; wins over warmup_ratio when positive",
        ("", "gradient_accumulation_steps") => "micro-batches per optimizer step",
        ("", "seed") => "seed for the classifier's initialisation, shuffling and dropout",
        ("", "eval_strategy") => "when to evaluate: \"no\", \"steps\" or \"epoch\"",
        ("", "eval_steps") => "evaluate every this many steps (default: logging_steps)",
        ("", "logging_strategy") => "when to log: \"no\", \"steps\" or \"epoch\"",
        ("", "logging_steps") => "log every this many steps",
        ("", "save_strategy") => "when to write a checkpoint: \"no\", \"steps\" or \"epoch\"",
        ("", "save_steps") => "checkpoint every this many steps",
        ("", "save_total_limit") => "keep at most this many checkpoints (never deleting the best)",
        ("", "load_best_model_at_end") => "end with the best checkpoint's weights",
        ("", "metric_for_best_model") => "the metric that picks the best checkpoint (default: loss)",
        ("", "greater_is_better") => "whether a larger metric is better (default: not for loss)",
        ("", "dataloader_drop_last") => "drop the last incomplete training batch",
        ("", "resume_from_checkpoint") => {
            "a checkpoint folder to continue from, \"latest\", or \"latest-if-any\" (a fresh start when there is none)"
        }
        ("", "ddp_timeout") => "seconds a collective waits for the other ranks before the job is aborted",
        ("", "ddp_bucket_cap_mb") => "size of the gradient all-reduce buckets in MB",
        ("", "ddp_check_weights_steps") => "every N steps, check all ranks hold the same weights (0: never)",
        ("", "zero_stage") => {
            "what is sharded over the ranks (DeepSpeed's name): 0 = nothing (DDP), 1 = AdamW's moments, 2 = moments and gradients"
        }
        ("", "mixed_precision") => "\"no\", or \"bf16\" for bf16 matrix products (on the CPU: oneDNN or oneMKL, where measured faster than f32)",
        ("", "device") => "\"auto\" (a GPU per local rank when there are GPUs), \"cpu\", \"cuda\" or \"cuda:N\"",
        ("", "early_stopping_patience") => "stop after this many evaluations without improvement",
        ("", "early_stopping_threshold") => "how much the metric must improve to count",
        ("", "report_to") => {
            "also log to [\"tensorboard\"] (event files under logging_dir), [\"mlflow\"] (the server at MLFLOW_TRACKING_URI), \"all\" or \"none\""
        }
        ("", "run_name") => "the run's name in MLflow (default: output_dir's last folder)",
        ("", "mlflow_log_model") => "with MLflow, upload the final model folder as the run's `model` artifact",
        ("", "logging_dir") => "TensorBoard's folder (default: output_dir/runs/<time>_<host>)",
        ("data", "dataset") => "a built-in dataset such as \"glue/mrpc\"; leave unset to read your files",
        ("data", "data_dir") => "a folder laid out like glue/MRPC/... (default: ACCEL_DATA_DIR)",
        ("data", "train_file") => "your training file: .csv, .tsv, .jsonl or .parquet (token classification: also .conll)",
        ("data", "validation_file") => "your validation file",
        ("data", "test_file") => "your test file",
        ("data", "format") => "\"csv\", \"tsv\", \"jsonl\", \"parquet\" or \"conll\" (default: from the extension)",
        ("data", "tag_column") => "token classification, CoNLL files: the 0-based column of the tags (default: the last)",
        ("data", "label_all_tokens") => "token classification: a word's later pieces take its tag (I- for a B- word) instead of -100",
        ("data", "doc_stride") => "question answering: tokens shared by two windows of a long context (default 128; windows of max_length, default 384)",
        ("data", "version_2_with_negative") => "question answering: questions may have no answer (SQuAD v2; default: whether any question has none)",
        ("data", "null_score_diff_threshold") => "question answering, v2: the null answer wins when it beats the best span by more than this (default 0)",
        ("data", "n_best_size") => "question answering: how many of the best starts and ends are paired (default 20)",
        ("data", "max_answer_length") => "question answering: the longest answer in tokens (default 30)",
        ("data", "pad_to_max_length") => "question answering: pad every window to max_length (default true, as run_qa; per-batch padding changes the loss)",
        ("data", "quoting") => "\"csv\" or \"none\" (quotes are text); default: csv, detected for TSV",
        ("data", "text_columns") => "the one or two text columns of your files",
        ("data", "label_column") => "the label column of your files (default: label)",
        ("data", "label_names") => "class names (default: the sorted distinct training labels)",
        ("data", "problem_type") => "\"regression\" or \"single_label_classification\" (default: float labels regress)",
        ("data", "max_length") => "truncate to this many tokens (default: the model's maximum)",
        ("data", "pad_to_multiple_of") => "pad each batch to a multiple of this",
        ("model", "name_or_path") => "a model folder, a name under ACCEL_MODEL_DIR, or a hub id",
        ("model", "ignore_mismatched_sizes") => "initialize afresh a head trained for another number of labels",
        ("launch", "nproc") => "ranks `accel launch` starts",
        ("launch", "hostfile") => "an OpenMPI hostfile (`host slots=N` lines) to spread ranks over machines",
        ("launch", "threads_per_rank") => "compute threads per rank (default 1)",
        ("launch", "mpirun") => "the mpirun to use (default: mpirun on PATH)",
        ("launch", "mpirun_args") => "extra mpirun arguments, e.g. [\"--mca\", \"btl\", \"tcp,self\"]",
        ("launch", "oversubscribe") => "allow more ranks than cores",
        ("launch", "max_restarts") => "times a failed job is started again from its newest checkpoint (default 0)",
        ("", "profile") => "write a timeline of every step's phases to output_dir/trace/ (Chrome trace JSON)",
        ("", "profile_steps") => "the steps the timeline keeps, e.g. \"10-20\" (default: all)",
        ("launch", "min_nproc") => {
            "with a hostfile, restarts leave out a failed rank's host while this many ranks remain"
        }
        ("launch", "preempt_grace") => "seconds a preempted job may take to checkpoint before it is ended",
        _ => return None,
    })
}

/// An example value for an unset key, shown commented out.
fn example(section: &str, key: &str) -> &'static str {
    match (section, key) {
        ("", "eval_steps") => "500",
        ("", "save_total_limit") => "2",
        ("", "metric_for_best_model") => "\"accuracy\"",
        ("", "greater_is_better") => "true",
        ("", "resume_from_checkpoint") => "\"latest\"",
        ("", "early_stopping_patience") => "3",
        ("", "report_to") => "[\"tensorboard\"]",
        ("", "run_name") => "\"mrpc-first-try\"",
        ("", "logging_dir") => "\"runs/mrpc/runs/first-try\"",
        ("data", "data_dir") | ("launch", "hostfile") => "\"path/to/folder\"",
        ("data", "train_file") => "\"data/train.csv\"",
        ("data", "validation_file") => "\"data/validation.csv\"",
        ("data", "test_file") => "\"data/test.csv\"",
        ("data", "format") => "\"csv\"",
        ("data", "quoting") => "\"none\"",
        ("data", "text_columns") => "[\"sentence1\", \"sentence2\"]",
        ("data", "label_column") => "\"label\"",
        ("data", "label_names") => "[\"negative\", \"positive\"]",
        ("data", "problem_type") => "\"regression\"",
        ("data", "max_length") => "128",
        ("data", "pad_to_multiple_of") => "8",
        ("data", "tag_column") => "3",
        ("data", "doc_stride") => "128",
        ("data", "version_2_with_negative") => "true",
        ("data", "null_score_diff_threshold") => "0.0",
        ("data", "n_best_size") => "20",
        ("data", "max_answer_length") => "30",
        ("data", "pad_to_max_length") => "true",
        ("launch", "nproc") => "2",
        ("launch", "threads_per_rank") => "1",
        ("launch", "mpirun") => "\"mpirun\"",
        ("launch", "oversubscribe") => "false",
        ("launch", "max_restarts") => "3",
        ("", "profile") => "false",
        ("", "profile_steps") => "\"10-20\"",
        ("launch", "min_nproc") => "1",
        ("launch", "preempt_grace") => "90",
        _ => "\"...\"",
    }
}

/// The keys of one section in their declared order, each with its value as TOML (None when unset:
/// a missing option or an empty list).
pub fn fields(section: &str, values: &impl Serialize) -> Result<Vec<(String, Option<toml::Value>)>> {
    let json = serde_json::to_value(values).map_err(|e| Error::Msg(format!("config [{section}]: {e}")))?;
    let serde_json::Value::Object(fields) = json else {
        return Err(Error::Msg(format!("config [{section}] is not a table")));
    };
    fields
        .into_iter()
        .map(|(key, value)| {
            let shown = match &value {
                serde_json::Value::Null => None,
                serde_json::Value::Array(a) if a.is_empty() => None,
                v => Some(toml::Value::try_from(v).map_err(|e| Error::Msg(format!("config {key}: {e}")))?),
            };
            Ok((key, shown))
        })
        .collect()
}

/// The lines of one section: `key = default  # meaning`, unset keys commented out.
fn section_lines(section: &str, values: &impl Serialize, commented: bool, out: &mut String) -> Result<()> {
    for (key, shown) in fields(section, values)? {
        let what = meaning(section, &key).ok_or_else(|| {
            Error::Msg(format!(
                "config template: no meaning written for {section}{}{key}",
                if section.is_empty() { "" } else { "." }
            ))
        })?;
        let line = match shown {
            Some(v) if !commented => format!("{key} = {v}"),
            Some(v) => format!("# {key} = {v}"),
            None => format!("# {key} = {}", example(section, &key)),
        };
        out.push_str(&format!("{line:<44} # {what}\n"));
    }
    Ok(())
}

/// The top-level key beside the training arguments.
#[derive(Serialize)]
pub struct TaskKey {
    pub task: Task,
}

/// A commented config for `dataset` (a built-in dataset, or none for your own files) and `model`:
/// every training argument at its default, then `[data]`, `[model]` and `[launch]`.
pub fn default_config(dataset: Option<&str>, model: Option<&str>) -> Result<String> {
    let mut out = String::from(
        "# accel run config: transformers' TrainingArguments names at the top level, then [data], [model]\n\
         # and [launch]. Every key is shown with its default; commented keys are unset. Override any key\n\
         # with --set key=value (dotted for sections: --set data.max_length=128).\n\n",
    );
    section_lines("", &TaskKey { task: Task::default() }, false, &mut out)?;
    section_lines("", &TrainingArguments::default(), false, &mut out)?;
    let data = DataConfig { dataset: Some(dataset.unwrap_or("glue/mrpc").to_string()), ..DataConfig::default() };
    out.push_str("\n[data]\n");
    if dataset.is_none() {
        out.push_str("# Your own files: remove `dataset` and set train_file, validation_file and text_columns.\n");
    }
    section_lines("data", &data, false, &mut out)?;
    let mut model_config = ModelConfig::default();
    if let Some(m) = model {
        model_config.name_or_path = m.to_string();
    }
    out.push_str("\n[model]\n");
    section_lines("model", &model_config, false, &mut out)?;
    out.push_str("\n# How `accel launch` starts the ranks of this run (flags win over these).\n[launch]\n");
    section_lines("launch", &accel_launch::LaunchConfig::default(), true, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::TrainConfig;

    #[test]
    fn the_template_names_every_key_and_reads_back_as_the_defaults() {
        let text = default_config(Some("glue/sst2"), Some("my-model")).unwrap();
        let cfg = TrainConfig::from_table(text.parse().unwrap(), "template").unwrap();
        assert_eq!(cfg.args, TrainingArguments::default());
        assert_eq!(cfg.data.dataset.as_deref(), Some("glue/sst2"));
        assert_eq!(cfg.model.name_or_path, "my-model");
        // Uncommenting every example still gives a valid config of the same shape.
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ").filter(|r| r.contains(" = ")) {
                Some(rest) => format!("{rest}\n"),
                None => format!("{l}\n"),
            })
            .collect();
        let table: toml::Table = uncommented.parse().unwrap();
        assert!(table["data"].get("text_columns").is_some() && table["launch"].get("nproc").is_some());
        for key in ["learning_rate = 0.00005", "mixed_precision = \"no\"", "eval_strategy = \"no\""] {
            assert!(text.contains(key), "{key} missing:\n{text}");
        }
    }
}
