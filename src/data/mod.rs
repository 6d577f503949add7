//! Data: datasets and their sources, batched tokenization with a cache, and dynamic padding.
//!
//! Flow: [`load_task`] (GLUE or your files) -> [`Dataset::map`] with [`Tokenize`] (cached) ->
//! [`DataLoader`] (a [`BatchSampler`] and a [`DataCollatorWithPadding`]) -> [`Batch`]es.

pub mod collate;
pub mod columns;
pub mod dataset;
pub mod files;
pub mod glue;
pub mod loader;
pub mod map;
pub mod sampler;
pub mod source;
pub mod squad;
pub mod steps;
pub mod table;
pub mod tagged;
pub mod tokenize;
pub mod windows;
pub mod words;

pub use collate::{Batch, DataCollatorWithPadding};
pub use dataset::{Cell, Column, Dataset, DatasetDict, Dtype, Feature, IntLists, StrLists};
pub use glue::load_dataset;
pub use loader::DataLoader;
pub use map::{BatchFn, CacheStatus, DatasetCache};
pub use sampler::BatchSampler;
pub use source::Sources;
pub use squad::{load_squad, Example, QaData};
pub use steps::{BatchShape, MicroBatch, StepSampler};
pub use tagged::{load_tagged, read_words, words_dataset, TaggedData};
pub use tokenize::{PadSpec, PaddingSide, PairTokenizer, Tokenize, WordEncoding};
pub use windows::QaWindows;
pub use words::TokenizeWords;

use crate::config::DataConfig;
use crate::{Error, Result};

/// A classification task's splits and what the rest of the pipeline needs to know about them.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskData {
    /// `glue/mrpc`, or the train file's name.
    pub name: String,
    pub splits: DatasetDict,
    /// The one or two text columns to tokenize.
    pub text_columns: Vec<String>,
    /// The class names; empty for a regression task (the label is a number to predict).
    pub label_names: Vec<String>,
    /// The splits evaluation runs on, each with the suffix its metrics are logged with: the first
    /// (no suffix) picks the best model. `validation`, or MNLI's matched and mismatched (`_mm`).
    pub eval_splits: Vec<(String, String)>,
}

/// Loads the task a `[data]` config names: a GLUE task or the user's files.
pub fn load_task(cfg: &DataConfig, sources: &Sources) -> Result<TaskData> {
    let sources = sources.clone().with_data_dir(cfg.data_dir.clone());
    match &cfg.dataset {
        Some(name) => {
            let task = glue::parse_name(name).ok_or_else(|| {
                let known: Vec<String> = glue::TASKS.iter().map(|t| format!("glue/{}", t.name)).collect();
                Error::config(
                    "data.dataset",
                    format!(
                        "unknown dataset {name:?}; built in: {}; for your own data set data.train_file etc.",
                        known.join(", ")
                    ),
                )
            })?;
            Ok(TaskData {
                name: format!("glue/{}", task.name),
                splits: task.load(&sources)?,
                text_columns: task.text_columns(),
                label_names: task.label_names(),
                eval_splits: task.eval_splits(),
            })
        }
        None => {
            let (splits, info) = files::load_files(cfg)?;
            Ok(TaskData {
                name: files::files_name(cfg),
                splits,
                text_columns: info.text_columns,
                label_names: info.label_names,
                eval_splits: vec![("validation".into(), String::new())],
            })
        }
    }
}

impl TaskData {
    /// Whether the label is a number to predict (one output, mean squared error).
    pub fn is_regression(&self) -> bool {
        self.label_names.is_empty()
    }

    /// The model's outputs: one per class, or one score for regression.
    pub fn num_labels(&self) -> usize {
        if self.is_regression() {
            1
        } else {
            self.label_names.len()
        }
    }

    /// The split that picks the best model and that `accel eval` reads by default.
    pub fn validation_split(&self) -> &str {
        self.eval_splits.first().map(|(s, _)| s.as_str()).unwrap_or("validation")
    }

    /// Tokenizes every split through `cache`, as `map(batched=True)` does, in batches of 10,000 rows:
    /// large batches keep every core busy.
    pub fn tokenize(
        &self,
        tokenizer: &PairTokenizer,
        cache: Option<&DatasetCache>,
    ) -> Result<(DatasetDict, Vec<(String, CacheStatus)>)> {
        let f = Tokenize { tokenizer, text_columns: self.text_columns.clone() };
        self.splits.map(&f, 10_000, cache)
    }
}
