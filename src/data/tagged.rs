//! Word-tagged data for token classification: CoNLL files (a word per line, its tag in a chosen
//! column, a blank line between sentences, `-DOCSTART-` lines skipped), and JSON lines or parquet
//! rows holding a list of words and a list of tags (names, or ids into the label list; a parquet
//! file from the hub names its ids in its `huggingface` metadata). Each split becomes a dataset
//! of `tokens` (the words), `ner_tags` (tag ids) and `id` (the sentence's position in its file).

use std::path::{Path, PathBuf};

use super::dataset::{Column, Dataset, DatasetDict, Dtype, Feature, IntLists, StrLists};
use super::table::{RawTable, RawValue};
use crate::config::{DataConfig, FileFormat};
use crate::{Error, Result};

/// One sentence as read: its words, its tags (names or ids), and the line it starts at.
#[derive(Debug, Clone, PartialEq)]
struct Sentence {
    words: Vec<String>,
    tags: Vec<Tag>,
    line: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Tag {
    Name(String),
    Id(i64),
}

/// A split's sentences and where they came from.
struct TaggedFile {
    path: PathBuf,
    sentences: Vec<Sentence>,
    /// The tag names a parquet file's metadata gives its ids.
    names: Option<Vec<String>>,
}

/// Token classification's splits and their label list.
#[derive(Debug, Clone)]
pub struct TaggedData {
    pub splits: DatasetDict,
    pub label_names: Vec<String>,
}

/// Reads the files `[data]` names for token classification. The label list is `data.label_names`,
/// else a parquet file's own names for its ids, else `model_labels` (the model's `id2label`) when
/// it holds every tag the data uses, else the data's tags sorted (run_ner's `get_label_list`).
pub fn load_tagged(cfg: &DataConfig, model_labels: Option<&[String]>) -> Result<TaggedData> {
    let files = super::files::named_files(cfg);
    if files.is_empty() {
        return Err(Error::config(
            "data.train_file",
            "token classification reads your files: set data.train_file (and validation_file, test_file)",
        ));
    }
    let read = files.iter().map(|(split, path)| Ok((*split, read_file(cfg, path)?))).collect::<Result<Vec<_>>>()?;
    let names = label_names(cfg, &read, model_labels)?;
    let mut splits = DatasetDict::new();
    for (split, file) in read {
        splits.insert(split, to_dataset(&file, &names)?);
    }
    Ok(TaggedData { splits, label_names: names })
}

/// Reads sentences to tag: a CoNLL file (its first column; tags, if any, are ignored), JSON lines
/// or parquet rows with a `tokens` list, or a text file of one sentence per line, split at spaces.
/// The dataset has `tokens` and `id`.
pub fn read_words(path: &Path) -> Result<Dataset> {
    let sentences: Vec<Vec<String>> = match FileFormat::from_path(path) {
        Some(FileFormat::Conll) => read_conll_words(path)?,
        Some(format @ (FileFormat::JsonLines | FileFormat::Parquet)) => {
            let table = RawTable::read(path, format)?;
            let w = table.column("tokens")?;
            table
                .rows
                .iter()
                .map(|row| match &row.values[w] {
                    RawValue::List(items) => items
                        .iter()
                        .map(|v| v.as_str().map(str::to_string))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| table.error_at(row, "tokens holds something other than words")),
                    other => Err(table.error_at(row, format!("tokens is {}, not a list of words", other.describe()))),
                })
                .collect::<Result<_>>()?
        }
        _ => {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            text.lines()
                .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                .filter(|w| !w.is_empty())
                .collect()
        }
    };
    words_dataset(sentences)
}

/// A dataset of `tokens` (and `id`) from sentences given as words.
pub fn words_dataset(sentences: Vec<Vec<String>>) -> Result<Dataset> {
    let mut words = StrLists::new();
    let ids = (0..sentences.len() as i64).collect();
    for s in sentences {
        words.push(s);
    }
    Dataset::new(vec![
        ("tokens".into(), Feature::List(Dtype::String), Column::StrList(words)),
        ("id".into(), Feature::Value(Dtype::Int64), Column::Int(ids)),
    ])
}

fn read_conll_words(path: &Path) -> Result<Vec<Vec<String>>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = vec![Vec::new()];
    for line in text.lines() {
        match line.split_whitespace().next() {
            None | Some("-DOCSTART-") => out.push(Vec::new()),
            Some(word) => out.last_mut().expect("never empty").push(word.to_string()),
        }
    }
    out.retain(|s| !s.is_empty());
    Ok(out)
}

fn read_file(cfg: &DataConfig, path: &Path) -> Result<TaggedFile> {
    let format = cfg.format.or_else(|| FileFormat::from_path(path)).ok_or_else(|| {
        Error::config(
            "data.format",
            format!("cannot tell the format of {} from its extension; set data.format = \"conll\" (or \"jsonl\", \"parquet\")", path.display()),
        )
    })?;
    match format {
        FileFormat::Conll => read_conll(path, cfg.tag_column),
        FileFormat::JsonLines | FileFormat::Parquet => read_rows(cfg, path, format),
        other => Err(Error::config(
            "data.format",
            format!(
                "{}: {other:?} files hold no word lists; token classification reads conll, jsonl or parquet",
                path.display()
            ),
        )),
    }
}

/// A CoNLL file: per line `word ... tag` separated by spaces or tabs.
fn read_conll(path: &Path, tag_column: Option<usize>) -> Result<TaggedFile> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut sentences = Vec::new();
    let mut current = Sentence { words: Vec::new(), tags: Vec::new(), line: 1 };
    let mut finish = |current: &mut Sentence, next_line: usize| {
        let done = std::mem::replace(current, Sentence { words: Vec::new(), tags: Vec::new(), line: next_line });
        if !done.words.is_empty() {
            sentences.push(done);
        }
    };
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() || fields[0] == "-DOCSTART-" {
            finish(&mut current, number + 1);
            continue;
        }
        let column = tag_column.unwrap_or(fields.len() - 1);
        if fields.len() < 2 || column >= fields.len() || column == 0 {
            let why = match tag_column {
                Some(c) => {
                    format!("no tag in column {c} (0-based, data.tag_column): the line has {} columns", fields.len())
                }
                None => "a word with no tag column".to_string(),
            };
            return Err(Error::data(path, Some(number), why));
        }
        current.words.push(fields[0].to_string());
        current.tags.push(Tag::Name(fields[column].to_string()));
    }
    finish(&mut current, text.lines().count() + 1);
    Ok(TaggedFile { path: path.to_path_buf(), sentences, names: None })
}

/// JSON lines or parquet rows with a list of words and a list of tags.
fn read_rows(cfg: &DataConfig, path: &Path, format: FileFormat) -> Result<TaggedFile> {
    let table = RawTable::read(path, format)?;
    let words_column = cfg.text_columns.as_ref().and_then(|c| c.first().cloned()).unwrap_or_else(|| "tokens".into());
    let tags_column = cfg.label_column.clone().unwrap_or_else(|| "ner_tags".into());
    let (w, t) = (table.column(&words_column)?, table.column(&tags_column)?);
    let mut sentences = Vec::with_capacity(table.rows.len());
    for row in &table.rows {
        let bad = |m: String| table.error_at(row, m);
        let words: Vec<String> = match &row.values[w] {
            RawValue::List(items) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad(format!("{words_column}: {} is not a word", v.describe())))
                })
                .collect::<Result<_>>()?,
            other => return Err(bad(format!("{words_column} is {}, not a list of words", other.describe()))),
        };
        let tags: Vec<Tag> = match &row.values[t] {
            RawValue::List(items) => items
                .iter()
                .map(|v| match v {
                    RawValue::Str(s) => Ok(Tag::Name(s.clone())),
                    RawValue::Int(i) => Ok(Tag::Id(*i)),
                    other => Err(bad(format!("{tags_column}: {} is not a tag name or id", other.describe()))),
                })
                .collect::<Result<_>>()?,
            other => return Err(bad(format!("{tags_column} is {}, not a list of tags", other.describe()))),
        };
        if tags.len() != words.len() {
            return Err(bad(format!("{} words and {} tags", words.len(), tags.len())));
        }
        sentences.push(Sentence { words, tags, line: row.line });
    }
    let names = match format {
        FileFormat::Parquet => hub_tag_names(path, &tags_column),
        _ => None,
    };
    Ok(TaggedFile { path: path.to_path_buf(), sentences, names })
}

/// The names a Hugging Face parquet file gives a column of class ids, from its `huggingface`
/// metadata (`features.<column>...names`), if it has them.
fn hub_tag_names(path: &Path, column: &str) -> Option<Vec<String>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(std::fs::File::open(path).ok()?).ok()?;
    let meta = reader.metadata().file_metadata().key_value_metadata()?.iter().find(|kv| kv.key == "huggingface")?;
    let json: serde_json::Value = serde_json::from_str(meta.value.as_ref()?).ok()?;
    let feature = json.get("info")?.get("features")?.get(column)?;
    fn names(v: &serde_json::Value) -> Option<Vec<String>> {
        if let Some(list) = v.get("names").and_then(|n| n.as_array()) {
            return list.iter().map(|n| n.as_str().map(str::to_string)).collect();
        }
        v.as_object()?.values().find_map(names)
    }
    names(feature)
}

fn label_names(cfg: &DataConfig, files: &[(&str, TaggedFile)], model_labels: Option<&[String]>) -> Result<Vec<String>> {
    if let Some(names) = &cfg.label_names {
        return Ok(names.clone());
    }
    if let Some(names) = files.iter().find_map(|(_, f)| f.names.clone()) {
        return Ok(names);
    }
    let used: std::collections::BTreeSet<&str> = files
        .iter()
        .flat_map(|(_, f)| f.sentences.iter().flat_map(|s| &s.tags))
        .filter_map(|t| match t {
            Tag::Name(n) => Some(n.as_str()),
            Tag::Id(_) => None,
        })
        .collect();
    let has_ids = files.iter().any(|(_, f)| f.sentences.iter().any(|s| s.tags.iter().any(|t| matches!(t, Tag::Id(_)))));
    if has_ids {
        return match model_labels {
            Some(names) => Ok(names.to_vec()),
            None => Err(Error::config(
                "data.label_names",
                "the tags are ids: name them with data.label_names (in id order), or use a model whose id2label names them",
            )),
        };
    }
    if let Some(names) = model_labels.filter(|names| used.iter().all(|u| names.iter().any(|n| n == u))) {
        return Ok(names.to_vec());
    }
    Ok(used.into_iter().map(str::to_string).collect())
}

fn to_dataset(file: &TaggedFile, names: &[String]) -> Result<Dataset> {
    let (mut words, mut tags, mut ids) = (StrLists::new(), IntLists::new(), Vec::new());
    for (index, s) in file.sentences.iter().enumerate() {
        let row = s
            .tags
            .iter()
            .map(|t| match t {
                Tag::Name(n) => names.iter().position(|m| m == n).map(|i| i as i64).ok_or_else(|| {
                    Error::data(&file.path, Some(s.line), format!("tag {n:?} is not one of the labels {names:?}"))
                }),
                Tag::Id(i) if *i >= 0 && (*i as usize) < names.len() => Ok(*i),
                Tag::Id(i) => Err(Error::data(
                    &file.path,
                    Some(s.line),
                    format!("tag id {i} is outside the {} labels", names.len()),
                )),
            })
            .collect::<Result<Vec<i64>>>()?;
        words.push(s.words.iter().cloned());
        tags.push(row);
        ids.push(index as i64);
    }
    Dataset::new(vec![
        ("tokens".into(), Feature::List(Dtype::String), Column::StrList(words)),
        ("ner_tags".into(), Feature::List(Dtype::Int64), Column::IntList(tags)),
        ("id".into(), Feature::Value(Dtype::Int64), Column::Int(ids)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conll_sentences_skip_docstart_and_name_the_line_of_a_missing_tag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.conll");
        std::fs::write(
            &path,
            "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n",
        )
        .unwrap();
        let cfg = DataConfig { train_file: Some(path.clone()), ..Default::default() };
        let data = load_tagged(&cfg, None).unwrap();
        let train = data.splits.split("train").unwrap();
        assert_eq!(data.label_names, ["B-ORG", "B-PER", "O"]);
        assert_eq!(train.str_lists("tokens").unwrap().row(0), ["EU", "rejects"]);
        assert_eq!(train.int_lists("ner_tags").unwrap().row(1), [1]);
        std::fs::write(&path, "EU NNP B-ORG\nrejects VBZ O\n\nPeter NNP B-PER\n").unwrap();
        let cfg = DataConfig { tag_column: Some(3), ..cfg };
        let err = load_tagged(&cfg, None).unwrap_err().to_string();
        assert!(err.contains("a.conll:1:") && err.contains("column 3"), "{err}");
    }

    #[test]
    fn json_lines_take_names_or_ids_and_model_labels_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        std::fs::write(&path, "{\"tokens\": [\"a\", \"b\"], \"ner_tags\": [\"O\", \"B-X\"]}\n").unwrap();
        let cfg = DataConfig { train_file: Some(path.clone()), ..Default::default() };
        let model = ["O".to_string(), "B-X".to_string(), "I-X".to_string()];
        assert_eq!(load_tagged(&cfg, Some(&model)).unwrap().label_names, model);
        std::fs::write(
            &path,
            "{\"tokens\": [\"a\", \"b\"], \"ner_tags\": [0, 2]}\n{\"tokens\": [\"c\"], \"ner_tags\": [0, 1]}\n",
        )
        .unwrap();
        let err = load_tagged(&cfg, Some(&model)).unwrap_err().to_string();
        assert!(err.contains("a.jsonl:2:") && err.contains("1 words and 2 tags"), "{err}");
        std::fs::write(&path, "{\"tokens\": [\"a\", \"b\"], \"ner_tags\": [0, 2]}\n").unwrap();
        let err = load_tagged(&cfg, None).unwrap_err().to_string();
        assert!(err.contains("data.label_names"), "{err}");
        let data = load_tagged(&cfg, Some(&model)).unwrap();
        assert_eq!(data.splits.split("train").unwrap().int_lists("ner_tags").unwrap().row(0), [0, 2]);
    }
}
