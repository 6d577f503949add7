//! A user's own data files: one file per split, read through a column mapping from the config,
//! so a new sentence(-pair) task needs no code.

use std::path::{Path, PathBuf};

use super::columns::{infer_label_names, is_float_column, ColumnMapping, Labels};
use super::dataset::{Dataset, DatasetDict};
use super::table::RawTable;
use crate::config::{DataConfig, FileFormat, ProblemType};
use crate::{Error, Result};

/// What [`load_files`] returns beside the splits.
#[derive(Debug, Clone, PartialEq)]
pub struct FilesInfo {
    pub text_columns: Vec<String>,
    /// The class names; empty when the label is a regression target.
    pub label_names: Vec<String>,
}

/// The split name and path of each of `train_file` / `validation_file` / `test_file` that is set.
pub(crate) fn named_files(cfg: &DataConfig) -> Vec<(&'static str, &PathBuf)> {
    [("train", cfg.train_file.as_ref()), ("validation", cfg.validation_file.as_ref()), ("test", cfg.test_file.as_ref())]
        .into_iter()
        .filter_map(|(split, f)| f.map(|f| (split, f)))
        .collect()
}

/// The name a task on files goes by: its train file (or the first file it has).
pub(crate) fn files_name(cfg: &DataConfig) -> String {
    named_files(cfg).first().map(|(_, p)| p.display().to_string()).unwrap_or_default()
}

/// Reads `train_file` / `validation_file` / `test_file` of `cfg`.
pub fn load_files(cfg: &DataConfig) -> Result<(DatasetDict, FilesInfo)> {
    let files = named_files(cfg);
    if files.is_empty() {
        return Err(Error::config(
            "data",
            "set data.dataset (e.g. \"glue/mrpc\") or data.train_file / validation_file / test_file",
        ));
    }
    let text_columns = cfg.text_columns.clone().ok_or_else(|| {
        Error::config(
            "data.text_columns",
            "required with data files: the one or two text columns, e.g. [\"sentence1\", \"sentence2\"]",
        )
    })?;
    if text_columns.is_empty() || text_columns.len() > 2 {
        return Err(Error::config(
            "data.text_columns",
            format!("expected one or two columns, got {}", text_columns.len()),
        ));
    }
    let label = cfg.label_column.clone().unwrap_or_else(|| "label".into());
    let format_for = |path: &Path| -> Result<FileFormat> {
        cfg.format.or_else(|| FileFormat::from_path(path)).ok_or_else(|| {
            Error::config(
                "data.format",
                format!("cannot tell the format of {} from its extension; set data.format", path.display()),
            )
        })
    };
    let quoting = cfg.quoting;
    let tables: Vec<(&str, RawTable)> = files
        .iter()
        .map(|(split, path)| Ok((*split, RawTable::read_quoted(path, format_for(path)?, quoting)?)))
        .collect::<Result<_>>()?;
    let (_, first) =
        tables.iter().find(|(s, _)| *s == "train").or_else(|| tables.first()).expect("at least one file was read");
    let regression = match cfg.problem_type {
        Some(ProblemType::Regression) => true,
        Some(ProblemType::SingleLabelClassification) => false,
        // As run_glue: a label column of floats is a regression target.
        None => cfg.label_names.is_none() && is_float_column(first, &label)?,
    };
    let label_names = match &cfg.label_names {
        Some(_) if regression => {
            return Err(Error::config("data.label_names", "a regression task has no class names; remove the key"))
        }
        Some(names) if names.is_empty() => return Err(Error::config("data.label_names", "must not be empty")),
        Some(names) => names.clone(),
        None if regression => Vec::new(),
        None => infer_label_names(first, &label)?,
    };
    if !regression && label_names.len() < 2 {
        return Err(Error::data(
            &first.path,
            None,
            format!(
                "column {label:?} holds one class ({:?}); classification needs two or more (for a score to predict, set data.problem_type = \"regression\")",
                label_names
            ),
        ));
    }
    let mapping = ColumnMapping {
        text: text_columns.iter().map(|c| (c.clone(), c.clone())).collect(),
        label,
        label_names: label_names.clone(),
        regression,
    };
    let mut dict = DatasetDict::new();
    for (split, table) in &tables {
        let labels = if *split == "test" { Labels::Optional } else { Labels::Required };
        dict.insert(*split, mapping.to_dataset(table, &table.rows, labels)?);
    }
    Ok((dict, FilesInfo { text_columns, label_names }))
}

/// The text columns a file of sentences is read with when none are named.
const DEFAULT_TEXT_COLUMNS: [&[&str]; 3] = [&["sentence1", "sentence2"], &["sentence"], &["text"]];

/// Reads the text columns of a file of sentences to classify (format from the extension). With
/// no `columns`, takes `sentence1, sentence2`, else `sentence`, else `text`. Returns the dataset
/// and the column names.
pub fn read_texts(path: &Path, columns: &[String]) -> Result<(Dataset, Vec<String>)> {
    let format = FileFormat::from_path(path).ok_or_else(|| {
        Error::data(path, None, "cannot tell the format from the extension: use .tsv, .csv, .jsonl or .parquet")
    })?;
    let table = RawTable::read(path, format)?;
    let columns: Vec<String> = if columns.is_empty() {
        let found = DEFAULT_TEXT_COLUMNS.iter().find(|cols| cols.iter().all(|c| table.columns.iter().any(|t| t == c)));
        match found {
            Some(cols) => cols.iter().map(|c| c.to_string()).collect(),
            None => {
                return Err(Error::data(
                    path,
                    None,
                    format!(
                        "name the text columns (the file has {:?}; looked for sentence1+sentence2, sentence, text)",
                        table.columns
                    ),
                ))
            }
        }
    } else {
        columns.to_vec()
    };
    let mut texts = Vec::with_capacity(columns.len());
    for name in &columns {
        let col = table.column(name)?;
        let values = table
            .rows
            .iter()
            .map(|r| {
                r.values[col].as_str().map(str::to_string).ok_or_else(|| {
                    table.error_at(r, format!("column {name:?}: expected text, found {}", r.values[col].describe()))
                })
            })
            .collect::<Result<Vec<String>>>()?;
        texts.push((name.clone(), values));
    }
    Ok((Dataset::from_texts(texts)?, columns))
}
