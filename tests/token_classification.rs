//! Token classification: CoNLL reading, the course's label alignment and seqeval's metric, held to
//! transformers and seqeval through `tests/fixtures/ner/reference.json`
//! (`scripts/make_task_fixtures.py`).

mod common;

use std::path::{Path, PathBuf};

use accel::config::DataConfig;
use accel::data::{load_tagged, PairTokenizer, TokenizeWords};
use common::read_json;
use serde_json::Value;

fn ner_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ner")
}

fn model_dir(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models").join(family)
}

fn ner_config() -> DataConfig {
    DataConfig {
        train_file: Some(ner_dir().join("train.conll")),
        validation_file: Some(ner_dir().join("validation.conll")),
        ..DataConfig::default()
    }
}

fn int_rows(v: &Value) -> Vec<Vec<i64>> {
    v.as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()).collect()
}

#[test]
fn the_label_list_is_the_sorted_tags() {
    let reference = read_json(&ner_dir().join("reference.json"));
    let data = load_tagged(&ner_config(), None).unwrap();
    let expected: Vec<String> = serde_json::from_value(reference["labels"].clone()).unwrap();
    assert_eq!(data.label_names, expected);
    assert_eq!(data.splits.split("train").unwrap().num_rows(), 300);
    assert_eq!(data.splits.split("validation").unwrap().num_rows(), 60);
}

#[test]
fn labels_align_as_the_course_aligns_them() {
    let reference = read_json(&ner_dir().join("reference.json"));
    let data = load_tagged(&ner_config(), None).unwrap();
    let validation = data.splits.split("validation").unwrap();
    // RoBERTa's byte-level BPE shows that words are tokenized with a space before each.
    for family in ["bert", "roberta"] {
        let tokenizer = PairTokenizer::from_dir(&model_dir(family)).unwrap();
        for label_all_tokens in [false, true] {
            let f = TokenizeWords { tokenizer: &tokenizer, label_names: data.label_names.clone(), label_all_tokens };
            let (mapped, _) = validation.map(&f, 16, None).unwrap();
            let expected = &reference["aligned"][family][label_all_tokens.to_string()];
            for column in ["input_ids", "labels"] {
                let got = mapped.int_lists(column).unwrap();
                let got: Vec<Vec<i64>> = (0..got.len()).map(|i| got.row(i).to_vec()).collect();
                assert_eq!(got, int_rows(&expected[column]), "{family}, label_all_tokens={label_all_tokens}: {column}");
            }
        }
    }
}
