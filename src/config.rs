//! Configs are data: TOML files with Hugging Face's names where one exists, overridden by
//! `--set key=value` (dotted for sections). Unknown keys are errors that suggest the nearest valid key.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// `[data]`: the dataset and how it is read and tokenized.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A built-in dataset, `glue/<task>`; leave unset to read `train_file` and friends.
    pub dataset: Option<String>,
    /// A local folder laid out like `glue/MRPC/...` (overrides `ACCEL_DATA_DIR`).
    pub data_dir: Option<PathBuf>,
    /// Your own files, one per split (CSV, TSV, JSON lines or parquet).
    pub train_file: Option<PathBuf>,
    pub validation_file: Option<PathBuf>,
    pub test_file: Option<PathBuf>,
    /// `csv`, `tsv`, `jsonl` or `parquet`; by default from each file's extension.
    pub format: Option<FileFormat>,
    /// `csv` (a `"` opens a quoted field) or `none` (quotes are text); by default `csv` for CSV files
    /// and detected for TSV files.
    pub quoting: Option<Quoting>,
    /// The one or two text columns of your files.
    pub text_columns: Option<Vec<String>>,
    /// The label column of your files (default `label`).
    pub label_column: Option<String>,
    /// Class names; labels in the files are names from this list or indices into it. By default the
    /// sorted distinct labels of the train file.
    pub label_names: Option<Vec<String>>,
    /// `regression` (one output, mean squared error, Pearson/Spearman) or
    /// `single_label_classification`; by default a label column of floats is a regression.
    pub problem_type: Option<ProblemType>,
    /// Truncate to this many tokens instead of the model's maximum.
    pub max_length: Option<usize>,
    /// Pad each batch up to a multiple of this (8 suits tensor cores).
    pub pad_to_multiple_of: Option<usize>,
    /// Token classification, CoNLL files: the 0-based column that holds the tags (default: the
    /// last one, as CoNLL-2003's NER tags are).
    pub tag_column: Option<usize>,
    /// Token classification: a word's later pieces take its tag (an I- tag for a B- word) instead
    /// of being left out of the loss (run_ner's and the course's `label_all_tokens`).
    #[serde(default)]
    pub label_all_tokens: bool,
    /// Question answering: the tokens two windows of a long context share (run_qa's
    /// `doc_stride`, default 128; windows are `max_length` tokens, default 384).
    pub doc_stride: Option<usize>,
    /// Question answering: whether a question may have no answer (SQuAD v2); by default, whether
    /// any question of the data has none.
    pub version_2_with_negative: Option<bool>,
    /// Question answering: the null answer wins when its score beats the best span's by more than
    /// this (default 0).
    pub null_score_diff_threshold: Option<f64>,
    /// Question answering: how many of the best starts and ends are paired (default 20).
    pub n_best_size: Option<usize>,
    /// Question answering: the longest answer, in tokens (default 30).
    pub max_answer_length: Option<usize>,
    /// Question answering: pad every window to `max_length` (default true, as run_qa does). The
    /// span scores are a softmax over every position, padding included, as in transformers: with
    /// windows padded per batch the loss depends on how the windows are batched.
    pub pad_to_max_length: Option<bool>,
}

/// File formats a user's data can come in (`data.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum FileFormat {
    /// Comma-separated with CSV quoting.
    #[serde(rename = "csv")]
    Csv,
    /// Tab-separated; a `"` opens a quoted field unless `data.quoting` says otherwise.
    #[serde(rename = "tsv")]
    Tsv,
    /// Tab-separated, no quoting: a `"` is literal text (GLUE's and Microsoft's files).
    #[serde(rename = "glue-tsv")]
    GlueTsv,
    /// One JSON object per line.
    #[serde(rename = "jsonl", alias = "json")]
    JsonLines,
    #[serde(rename = "parquet")]
    Parquet,
    /// One word per line with its columns separated by spaces or tabs, a blank line between
    /// sentences, `-DOCSTART-` lines skipped (CoNLL-2003).
    #[serde(rename = "conll")]
    Conll,
}

impl FileFormat {
    /// The format a file extension implies.
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(Self::Csv),
            "tsv" | "tab" => Some(Self::Tsv),
            "jsonl" | "json" | "ndjson" => Some(Self::JsonLines),
            "parquet" | "pq" => Some(Self::Parquet),
            "conll" | "conll03" | "iob" | "bio" => Some(Self::Conll),
            _ => None,
        }
    }
}

/// Whether a `"` in a CSV or TSV file opens a quoted field (`data.quoting`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Quoting {
    /// CSV quoting: a field may be quoted, and a quoted field may hold delimiters and line breaks.
    Csv,
    /// Quotes are literal text; one line is one row (GLUE's TSVs).
    None,
}

/// What the model learns to predict (the top-level `task` key): a class (or score) per sequence,
/// a tag per word, or the span of a context that answers a question.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    #[default]
    SequenceClassification,
    TokenClassification,
    QuestionAnswering,
}

impl Task {
    /// The task's part of transformers' class names (`BertForTokenClassification`).
    pub fn class_suffix(self) -> &'static str {
        match self {
            Self::SequenceClassification => "ForSequenceClassification",
            Self::TokenClassification => "ForTokenClassification",
            Self::QuestionAnswering => "ForQuestionAnswering",
        }
    }

    /// The task whose class name `architecture` ends with (`"RobertaForQuestionAnswering"`).
    pub fn of_architecture(architecture: &str) -> Option<Self> {
        [Self::SequenceClassification, Self::TokenClassification, Self::QuestionAnswering]
            .into_iter()
            .find(|t| architecture.ends_with(t.class_suffix()))
    }

    /// The key's value, as written in a config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SequenceClassification => "sequence-classification",
            Self::TokenClassification => "token-classification",
            Self::QuestionAnswering => "question-answering",
        }
    }
}

/// What the label is (`data.problem_type`, transformers' `problem_type` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemType {
    /// A score to predict: one output, mean squared error, Pearson and Spearman.
    Regression,
    /// One class of several: cross-entropy, accuracy (and F1 for two classes).
    SingleLabelClassification,
}

/// Reads a TOML file into a table; syntax errors name the file and line.
pub fn read_toml(path: &Path) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.parse::<toml::Table>().map_err(|e| {
        let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1);
        Error::data(path, line, e.message().to_string())
    })
}

/// Applies `key=value` to `table`: the key is dotted for sections, the value is TOML (a bare word
/// that is not valid TOML is taken as a string).
pub fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<()> {
    let (key, value) = parse_assignment(assignment)?;
    set_value(table, &key, value)
}

/// The dotted key and the value of `key=value` (a bare word that is not valid TOML is a string).
pub fn parse_assignment(assignment: &str) -> Result<(String, toml::Value)> {
    let Some((key, raw)) = assignment.split_once('=') else {
        return Err(Error::config(assignment, "expected --set key=value"));
    };
    let raw = raw.trim();
    let value = match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    Ok((key.trim().to_string(), value))
}

/// Sets the dotted `key` of `table` to `value`, creating the sections on the way.
pub fn set_value(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<()> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(Error::config(key, "empty key segment"));
    }
    let (last, sections) = parts.split_last().expect("split yields at least one part");
    let mut node = table;
    for (i, part) in sections.iter().enumerate() {
        let entry = node.entry(part.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(Error::config(parts[..=i].join("."), "is a value, not a section")),
        };
    }
    node.insert(last.to_string(), value);
    Ok(())
}

/// The line (from 1) where each leaf key of the TOML `text` is written, by dotted key
/// (`data.max_length`), sections and inline tables walked into; None when the text does not parse.
pub fn key_lines(text: &str) -> Option<std::collections::HashMap<String, usize>> {
    fn walk(table: &toml::de::DeTable, prefix: &str, text: &str, out: &mut std::collections::HashMap<String, usize>) {
        for (key, value) in table {
            let name =
                if prefix.is_empty() { key.get_ref().to_string() } else { format!("{prefix}.{}", key.get_ref()) };
            match value.get_ref() {
                toml::de::DeValue::Table(inner) => walk(inner, &name, text, out),
                _ => {
                    let line = text[..key.span().start.min(text.len())].matches('\n').count() + 1;
                    out.insert(name, line);
                }
            }
        }
    }
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut out = std::collections::HashMap::new();
    walk(doc.get_ref(), "", text, &mut out);
    Some(out)
}

/// Deserializes section `section` of `table` (the whole table when empty). `origin` names where
/// it came from in errors; an unknown key gets the nearest valid key as a suggestion.
pub fn section<T: DeserializeOwned + Default>(table: &toml::Table, section: &str, origin: &str) -> Result<T> {
    let value = if section.is_empty() {
        toml::Value::Table(table.clone())
    } else {
        match table.get(section) {
            Some(v @ toml::Value::Table(_)) => v.clone(),
            Some(_) => return Err(Error::config(section, format!("must be a [{section}] section ({origin})"))),
            None => return Ok(T::default()),
        }
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        explain(e.into_inner().message(), section, &path, origin)
    })
}

/// Turns serde's message into a config error naming the dotted key (`path` is where serde stopped,
/// inside `section`) and, for an unknown key, the nearest valid one.
fn explain(message: &str, section: &str, path: &str, origin: &str) -> Error {
    let prefix = if section.is_empty() { String::new() } else { format!("{section}.") };
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let valid: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        let nearest = valid
            .iter()
            .map(|v| (strsim::damerau_levenshtein(field, v), *v))
            .min()
            .filter(|(d, v)| *d <= 3.max(v.len() / 3))
            .map(|(_, v)| format!("; did you mean `{prefix}{v}`?"))
            .unwrap_or_default();
        return Error::config(
            format!("{prefix}{field}"),
            format!("unknown key ({origin}){nearest} Valid keys: {}", valid.join(", ")),
        );
    }
    let key = match (path, section) {
        ("." | "", "") => "(top level)".to_string(),
        ("." | "", _) => section.to_string(),
        (path, _) => format!("{prefix}{path}"),
    };
    Error::config(key, format!("{message} ({origin})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_toml_values_and_create_sections() {
        let mut t = toml::Table::new();
        apply_override(&mut t, "data.max_length=128").unwrap();
        apply_override(&mut t, "data.dataset=glue/sst2").unwrap();
        apply_override(&mut t, "data.text_columns=[\"a\", \"b\"]").unwrap();
        let cfg: DataConfig = section(&t, "data", "--set").unwrap();
        assert_eq!(cfg.max_length, Some(128));
        assert_eq!(cfg.dataset.as_deref(), Some("glue/sst2"));
        assert_eq!(cfg.text_columns, Some(vec!["a".into(), "b".into()]));
        assert!(apply_override(&mut t, "nokey").is_err());
        apply_override(&mut t, "x=1").unwrap();
        assert!(apply_override(&mut t, "x.y=1").unwrap_err().to_string().contains("not a section"));
    }

    #[test]
    fn unknown_keys_suggest_the_nearest() {
        let t: toml::Table = "[data]\nmax_lenght = 3\n".parse().unwrap();
        let err = section::<DataConfig>(&t, "data", "c.toml").unwrap_err().to_string();
        assert!(err.contains("data.max_lenght") && err.contains("did you mean `data.max_length`"), "{err}");
        let t: toml::Table = "[data]\nmax_length = \"x\"\n".parse().unwrap();
        let err = section::<DataConfig>(&t, "data", "c.toml").unwrap_err().to_string();
        assert!(err.starts_with("config data.max_length: invalid type") && err.contains("c.toml"), "{err}");
        // A wrong choice names its key and the values it may take.
        for (text, key, allowed) in [
            ("[data]\nformat = \"xml\"\n", "data.format", "`jsonl`, `parquet`"),
            ("[data]\nquoting = \"single\"\n", "data.quoting", "`csv` or `none`"),
            (
                "[data]\nproblem_type = \"multi\"\n",
                "data.problem_type",
                "`regression` or `single_label_classification`",
            ),
        ] {
            let t: toml::Table = text.parse().unwrap();
            let err = section::<DataConfig>(&t, "data", "c.toml").unwrap_err().to_string();
            assert!(err.starts_with(&format!("config {key}: unknown variant")) && err.contains(allowed), "{err}");
        }
        let t: toml::Table =
            "[data]\nformat = \"json\"\nquoting = \"none\"\nproblem_type = \"regression\"\n".parse().unwrap();
        let cfg = section::<DataConfig>(&t, "data", "c.toml").unwrap();
        assert_eq!(cfg.format, Some(FileFormat::JsonLines), "json is jsonl's other name");
        assert_eq!((cfg.quoting, cfg.problem_type), (Some(Quoting::None), Some(ProblemType::Regression)));
    }

    #[test]
    fn key_lines_follow_sections_dotted_keys_and_inline_tables() {
        let text = "seed = 1\n\n[data]\nmax_length = 3\nlaunch.nproc = 2\n[model]\nx = { y = 1,\n z = 2 }\n";
        let lines = key_lines(text).unwrap();
        assert_eq!(lines["seed"], 1);
        assert_eq!(lines["data.max_length"], 4);
        assert_eq!(lines["data.launch.nproc"], 5);
        assert_eq!((lines["model.x.y"], lines["model.x.z"]), (7, 8));
        assert!(!lines.contains_key("data"), "sections are not leaves");
        assert!(key_lines("x = = 1").is_none());
    }

    #[test]
    fn toml_syntax_errors_name_the_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bad.toml");
        std::fs::write(&p, "[data]\ndataset = \"glue/mrpc\"\nmax_length = = 3\n").unwrap();
        let err = read_toml(&p).unwrap_err().to_string();
        assert!(err.contains("bad.toml:3"), "{err}");
    }
}
