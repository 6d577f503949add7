//! The data a run trains and evaluates on, read and tokenized for its task: sentence (pair)
//! classification from a GLUE task or files, token classification from tagged files, question
//! answering from SQuAD files (cut into windows).

use std::collections::BTreeMap;

use crate::config::{DataConfig, Task};
use crate::data::squad::{examples_of, Example};
use crate::data::{self, DatasetCache, DatasetDict, PairTokenizer, QaWindows, Sources, TokenizeWords};
use crate::distributed::{collectives, ProcessGroup};
use crate::{Error, Result};

use super::answers::AnswerOptions;
use super::args::TrainConfig;
use super::metrics::{self, ComputeMetrics};

/// How a split's predictions are scored.
#[derive(Debug, Clone)]
pub enum Evaluation {
    /// One prediction per row, scored by a `compute_metrics`.
    Classes(ComputeMetrics),
    /// A tag per token, scored by seqeval with these tag names.
    Tags(Vec<String>),
    /// A span per question from its windows, scored by SQuAD's exact match and F1: each split's
    /// questions, and the post-processing settings.
    Answers(BTreeMap<String, Vec<Example>>, AnswerOptions),
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
    /// The length every batch is padded to (question answering's windows), if any.
    pub pad_to_length: Option<usize>,
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
                    pad_to_length: None,
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
                    name: data::files::files_name(&cfg.data),
                    splits,
                    label_names: tagged.label_names.clone(),
                    eval_splits: vec![("validation".into(), String::new())],
                    evaluation: Evaluation::Tags(tagged.label_names),
                    pad_to_length: None,
                })
            }
            Task::QuestionAnswering => {
                let qa = data::load_squad(&cfg.data)?;
                let f = QaWindows {
                    tokenizer,
                    max_length: cfg.data.max_length.unwrap_or(384).min(tokenizer.max_length()),
                    stride: cfg.data.doc_stride.unwrap_or(128),
                };
                if f.stride >= f.max_length / 2 {
                    return Err(Error::config(
                        "data.doc_stride",
                        format!("{} leaves too little new context per window of {} tokens", f.stride, f.max_length),
                    ));
                }
                let (splits, _) = collectives::main_process_first(pg, || qa.splits.map(&f, 1_000, Some(&cache)))?;
                // The questions evaluation answers: every split but train, whose windows are all
                // training needs.
                let mut examples = BTreeMap::new();
                for (name, ds) in qa.splits.iter().filter(|(name, _)| *name != "train") {
                    examples.insert(name.to_string(), examples_of(ds)?);
                }
                Ok(Self {
                    name: data::files::files_name(&cfg.data),
                    splits,
                    // Two outputs per token, the start and end scores, named as transformers names
                    // a QA model's.
                    label_names: vec!["LABEL_0".into(), "LABEL_1".into()],
                    eval_splits: vec![("validation".into(), String::new())],
                    evaluation: Evaluation::Answers(examples, answer_options(&cfg.data, qa.has_unanswerable)),
                    pad_to_length: cfg.data.pad_to_max_length.unwrap_or(true).then_some(f.max_length),
                })
            }
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

/// Post-processing as `[data]` sets it, SQuAD v2's when the data has unanswerable questions.
pub fn answer_options(cfg: &DataConfig, has_unanswerable: bool) -> AnswerOptions {
    let defaults = AnswerOptions::default();
    AnswerOptions {
        n_best_size: cfg.n_best_size.unwrap_or(defaults.n_best_size),
        max_answer_length: cfg.max_answer_length.unwrap_or(defaults.max_answer_length),
        version_2_with_negative: cfg.version_2_with_negative.unwrap_or(has_unanswerable),
        null_score_diff_threshold: cfg.null_score_diff_threshold.unwrap_or(0.0),
    }
}
