//! Extractive question answering data: SQuAD v1.1 / v2.0 JSON files (`data` > `paragraphs` >
//! `qas`), and JSON lines in the layout of Hugging Face's `squad` datasets (`id`, `question`,
//! `context`, `answers` {`text`, `answer_start`}). Each split becomes a dataset of `id`, `title`,
//! `context`, `question`, `answer_text`, `answer_start` (characters into the context, as Python
//! counts them) and `example` (the question's position in its file). Every answer must be the
//! context's text at its `answer_start`: an error names the file, the line or the question's id.

use std::path::Path;

use serde_json::Value;

use super::dataset::{Column, Dataset, DatasetDict, Dtype, Feature, IntLists, StrLists};
use crate::config::DataConfig;
use crate::{Error, Result};

/// One question with its context and gold answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub id: String,
    pub title: String,
    pub context: String,
    pub question: String,
    /// The gold answers' texts and character offsets; none for an unanswerable question (v2).
    pub answers: Vec<(String, usize)>,
}

/// Question answering's splits, and whether any question has no answer (SQuAD v2).
#[derive(Debug, Clone)]
pub struct QaData {
    pub splits: DatasetDict,
    pub has_unanswerable: bool,
}

/// Reads the files `[data]` names for question answering.
pub fn load_squad(cfg: &DataConfig) -> Result<QaData> {
    let files = super::files::named_files(cfg);
    if files.is_empty() {
        return Err(Error::config(
            "data.train_file",
            "question answering reads your files: set data.train_file (and validation_file, test_file), SQuAD JSON or JSON lines",
        ));
    }
    let mut splits = DatasetDict::new();
    let mut has_unanswerable = false;
    for (split, path) in files {
        let examples = read_examples(path, true)?;
        has_unanswerable |= examples.iter().any(|e| e.answers.is_empty());
        splits.insert(split, to_dataset(&examples)?);
    }
    Ok(QaData { splits, has_unanswerable })
}

/// The questions of a SQuAD JSON file (a top-level object with `data`) or of JSON lines. With
/// `need_answers`, every question must have an answer list (empty only when unanswerable);
/// questions to answer need none.
pub fn read_examples(path: &Path, need_answers: bool) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let whole = text.trim_start().starts_with('{').then(|| serde_json::from_str::<Value>(&text).ok()).flatten();
    let examples = match whole {
        Some(doc) if doc.get("data").is_some() => squad_document(path, &doc, need_answers)?,
        _ => json_lines(path, &text, need_answers)?,
    };
    let mut seen = std::collections::HashSet::new();
    for e in &examples {
        if !seen.insert(e.id.as_str()) {
            return Err(Error::data(path, None, format!("question {:?} appears twice: ids must be unique", e.id)));
        }
    }
    Ok(examples)
}

fn squad_document(path: &Path, doc: &Value, need_answers: bool) -> Result<Vec<Example>> {
    let bad = |m: String| Error::data(path, None, m);
    let articles = doc["data"].as_array().ok_or_else(|| bad("`data` is not a list of articles".into()))?;
    let mut out = Vec::new();
    for (a, article) in articles.iter().enumerate() {
        let title = article.get("title").and_then(Value::as_str).unwrap_or_default();
        let paragraphs = article["paragraphs"]
            .as_array()
            .ok_or_else(|| bad(format!("article {a} ({title:?}) has no `paragraphs` list")))?;
        for (p, paragraph) in paragraphs.iter().enumerate() {
            let context = paragraph["context"]
                .as_str()
                .ok_or_else(|| bad(format!("article {a}, paragraph {p}: no `context` text")))?;
            let qas =
                paragraph["qas"].as_array().ok_or_else(|| bad(format!("article {a}, paragraph {p}: no `qas` list")))?;
            for qa in qas {
                let id = string(qa, "id")
                    .ok_or_else(|| bad(format!("article {a}, paragraph {p}: a question has no `id`")))?;
                let at = |m: String| Error::data(path, None, format!("question {id:?}: {m}"));
                let question = qa["question"].as_str().ok_or_else(|| at("no `question` text".into()))?;
                let mut answers = Vec::new();
                let impossible = qa.get("is_impossible").and_then(Value::as_bool).unwrap_or(false);
                if need_answers && !impossible && !qa["answers"].is_array() {
                    return Err(at("no `answers` list (an unanswerable question says \"is_impossible\": true)".into()));
                }
                if !impossible {
                    for answer in qa["answers"].as_array().map(Vec::as_slice).unwrap_or_default() {
                        let text = answer["text"].as_str().ok_or_else(|| at("an answer has no `text`".into()))?;
                        let start = answer["answer_start"]
                            .as_u64()
                            .ok_or_else(|| at("an answer has no `answer_start` (a character offset)".into()))?;
                        answers.push((text.to_string(), start as usize));
                    }
                }
                let example = Example {
                    id: id.clone(),
                    title: title.to_string(),
                    context: context.to_string(),
                    question: question.to_string(),
                    answers,
                };
                check_answers(&example).map_err(at)?;
                out.push(example);
            }
        }
    }
    Ok(out)
}

fn json_lines(path: &Path, text: &str, need_answers: bool) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |m: String| Error::data(path, Some(i + 1), m);
        let row: Value = serde_json::from_str(line).map_err(|e| at(format!("invalid JSON: {e}")))?;
        let field = |k: &str| row[k].as_str().map(str::to_string).ok_or_else(|| at(format!("no `{k}` text")));
        let id = string(&row, "id").ok_or_else(|| at("no `id`".into()))?;
        let (context, question) = (field("context")?, field("question")?);
        let answers = &row["answers"];
        let list = |k: &str| match &answers[k] {
            Value::Array(items) => Ok(items.clone()),
            Value::Null if !need_answers && answers.is_null() => Ok(Vec::new()),
            _ => Err(at(format!("question {id:?}: `answers.{k}` is not a list"))),
        };
        let (texts, starts) = (list("text")?, list("answer_start")?);
        if texts.len() != starts.len() {
            return Err(at(format!("question {id:?}: {} answer texts and {} answer_start", texts.len(), starts.len())));
        }
        let answers = texts
            .iter()
            .zip(&starts)
            .map(|(t, s)| match (t.as_str(), s.as_u64()) {
                (Some(t), Some(s)) => Ok((t.to_string(), s as usize)),
                _ => Err(at(format!("question {id:?}: an answer is not a text and a character offset"))),
            })
            .collect::<Result<Vec<_>>>()?;
        let title = row.get("title").and_then(Value::as_str).unwrap_or_default().to_string();
        let example = Example { id: id.clone(), title, context, question, answers };
        check_answers(&example).map_err(|m| at(format!("question {id:?}: {m}")))?;
        out.push(example);
    }
    Ok(out)
}

/// An id given as a string or a number.
fn string(v: &Value, key: &str) -> Option<String> {
    match &v[key] {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Every answer is the context's text at its offset (in characters).
fn check_answers(e: &Example) -> std::result::Result<(), String> {
    let chars = e.context.chars().count();
    for (text, start) in &e.answers {
        let len = text.chars().count();
        if start + len > chars {
            return Err(format!(
                "the answer {text:?} at answer_start {start} runs past the end of its context ({chars} characters)"
            ));
        }
        let found: String = e.context.chars().skip(*start).take(len).collect();
        if found != *text {
            return Err(format!(
                "the answer {text:?} does not match the context at answer_start {start}, which reads {found:?}"
            ));
        }
    }
    Ok(())
}

/// A split's dataset from its questions.
pub fn to_dataset(examples: &[Example]) -> Result<Dataset> {
    let strings = |f: fn(&Example) -> &String| examples.iter().map(|e| f(e).clone()).collect::<Vec<_>>();
    let (mut texts, mut starts) = (StrLists::new(), IntLists::new());
    for e in examples {
        texts.push(e.answers.iter().map(|a| a.0.clone()));
        starts.push(e.answers.iter().map(|a| a.1 as i64));
    }
    Dataset::new(vec![
        ("id".into(), Feature::Value(Dtype::String), Column::Str(strings(|e| &e.id))),
        ("title".into(), Feature::Value(Dtype::String), Column::Str(strings(|e| &e.title))),
        ("context".into(), Feature::Value(Dtype::String), Column::Str(strings(|e| &e.context))),
        ("question".into(), Feature::Value(Dtype::String), Column::Str(strings(|e| &e.question))),
        ("answer_text".into(), Feature::List(Dtype::String), Column::StrList(texts)),
        ("answer_start".into(), Feature::List(Dtype::Int64), Column::IntList(starts)),
        ("example".into(), Feature::Value(Dtype::Int64), Column::Int((0..examples.len() as i64).collect())),
    ])
}

/// The examples of a split's dataset (as [`load_squad`] made it), in order.
pub fn examples_of(ds: &Dataset) -> Result<Vec<Example>> {
    let (ids, titles, contexts, questions) =
        (ds.strings("id")?, ds.strings("title")?, ds.strings("context")?, ds.strings("question")?);
    let (texts, starts) = (ds.str_lists("answer_text")?, ds.int_lists("answer_start")?);
    Ok((0..ds.num_rows())
        .map(|i| Example {
            id: ids[i].clone(),
            title: titles[i].clone(),
            context: contexts[i].clone(),
            question: questions[i].clone(),
            answers: texts.row(i).iter().cloned().zip(starts.row(i).iter().map(|&s| s as usize)).collect(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn squad_json_and_json_lines_read_alike_and_offsets_count_characters() {
        let dir = tempfile::tempdir().unwrap();
        let json = write(
            dir.path(),
            "a.json",
            r#"{"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": "Brønby lies on the Aln.",
               "qas": [{"id": "q1", "question": "Where?", "answers": [{"text": "the Aln", "answer_start": 15}]},
                       {"id": "q2", "question": "Who?", "answers": [], "is_impossible": true}]}]}]}"#,
        );
        let lines = write(
            dir.path(),
            "a.jsonl",
            "{\"id\": \"q1\", \"title\": \"T\", \"context\": \"Brønby lies on the Aln.\", \"question\": \"Where?\", \"answers\": {\"text\": [\"the Aln\"], \"answer_start\": [15]}}\n\
             {\"id\": \"q2\", \"title\": \"T\", \"context\": \"Brønby lies on the Aln.\", \"question\": \"Who?\", \"answers\": {\"text\": [], \"answer_start\": []}}\n",
        );
        let (a, b) = (read_examples(&json, true).unwrap(), read_examples(&lines, true).unwrap());
        assert_eq!(a, b);
        assert_eq!(a[0].answers, [("the Aln".to_string(), 15)]);
        assert!(a[1].answers.is_empty());
    }

    #[test]
    fn an_answer_that_is_not_the_context_there_is_refused_naming_the_question() {
        let dir = tempfile::tempdir().unwrap();
        let line = |start: usize, text: &str| {
            format!("{{\"id\": \"q7\", \"context\": \"Marlowe lies on the Aln.\", \"question\": \"Where?\", \"answers\": {{\"text\": [\"{text}\"], \"answer_start\": [{start}]}}}}\n")
        };
        let path = write(dir.path(), "b.jsonl", &format!("{}{}", line(16, "the Aln"), line(17, "the Aln")));
        let err = read_examples(&path, true).unwrap_err().to_string();
        assert!(err.contains("b.jsonl:2:") && err.contains("q7") && err.contains("answer_start 17"), "{err}");
        let path = write(dir.path(), "c.jsonl", &line(20, "the Aln river"));
        let err = read_examples(&path, true).unwrap_err().to_string();
        assert!(err.contains("c.jsonl:1:") && err.contains("runs past the end of its context"), "{err}");
    }
}
