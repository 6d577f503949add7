//! The data a run trains and evaluates on, read and tokenized for its task: sentence (pair)
//! classification from a GLUE task or files, token classification from tagged files.

use crate::config::Task;
use crate::data::{self, DatasetCache, DatasetDict, PairTokenizer, Sources, TokenizeWords};
use crate::distributed::{collectives, ProcessGroup};
use crate::{Error, Result};

use super::args::TrainConfig;
use super::metrics::{self, ComputeMetrics};

/// How a split's predictions are scored.
#[derive(Debug, Clone)]
pub enum Evaluation {
    /// One prediction per row, scored by a `compute_metrics`.
    Classes(ComputeMetrics),
    /// A tag per token, scored by seqeval with these tag names.
    Tags(Vec<String>),
}

/// A task's tokenized splits and what the model and the evaluation need to know about them.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// `glue/mrpc`, or the train file's name.
    pub name: String,
    pub splits: DatasetDict,
    /// The class or tag names; empty for a regression.
    pub label_names: Vec<String>,
    /// The splits evaluated, with their metric suffixes; the first picks the best model.
    pub eval_splits: Vec<(String, String)>,
    pub evaluation: Evaluation,
}

impl Prepared {
    /// Reads and tokenizes `cfg`'s data for `cfg.task`; the main process first, filling the cache
    /// the others then read. `model_labels` (the model's `id2label`) names token classification's
    /// tags when it holds every tag of the data.
    pub fn load(
        cfg: &TrainConfig,
        sources: &Sources,
        tokenizer: &PairTokenizer,
        model_labels: Option<&[String]>,
        pg: &dyn ProcessGroup,
    ) -> Result<Self> {
        let cache = DatasetCache::from_env();
        match cfg.task {
            Task::SequenceClassification => {
                let task = data::load_task(&cfg.data, sources)?;
                let (splits, _) = collectives::main_process_first(pg, || task.tokenize(tokenizer, Some(&cache)))?;
                let evaluation = Evaluation::Classes(metrics::for_task_kind(&task.name, task.is_regression()));
                Ok(Self {
                    name: task.name,
                    splits,
                    label_names: task.label_names,
                    eval_splits: task.eval_splits,
                    evaluation,
                })
            }
            Task::TokenClassification => {
                let tagged = data::load_tagged(&cfg.data, model_labels)?;
                let f = TokenizeWords {
                    tokenizer,
                    label_names: tagged.label_names.clone(),
                    label_all_tokens: cfg.data.label_all_tokens,
                };
                let (splits, _) = collectives::main_process_first(pg, || tagged.splits.map(&f, 10_000, Some(&cache)))?;
                Ok(Self {
                    name: task_name(&cfg.data),
                    splits,
                    label_names: tagged.label_names.clone(),
                    eval_splits: vec![("validation".into(), String::new())],
                    evaluation: Evaluation::Tags(tagged.label_names),
                })
            }
            Task::QuestionAnswering => Err(Error::config(
                "task",
                "\"question-answering\" builds its model (accel's heads cover it) but its data preparation \
                 (SQuAD windows) is not in this version: use \"sequence-classification\" or \"token-classification\"",
            )),
        }
    }

    /// Whether the label is a number to predict (one output, mean squared error).
    pub fn is_regression(&self) -> bool {
        self.label_names.is_empty()
    }

    /// The model's outputs: one per class or tag, or one score for regression.
    pub fn num_labels(&self) -> usize {
        self.label_names.len().max(1)
    }

    /// The split that picks the best model.
    pub fn validation_split(&self) -> &str {
        self.eval_splits.first().map(|(s, _)| s.as_str()).unwrap_or("validation")
    }
}

/// The name a run on files goes by: its train file (or the first file it has).
fn task_name(cfg: &crate::config::DataConfig) -> String {
    data::files::named_files(cfg).first().map(|(_, p)| p.display().to_string()).unwrap_or_default()
}
