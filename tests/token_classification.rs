//! Token classification: CoNLL reading, the course's label alignment and seqeval's metric, held to
//! transformers and seqeval through `tests/fixtures/ner/reference.json`
//! (`scripts/make_task_fixtures.py`).

mod common;

use std::path::{Path, PathBuf};

use accel::config::DataConfig;
use accel::data::{load_tagged, PairTokenizer, TokenizeWords};
use accel::train::seqeval::Report;
use common::read_json;
use serde_json::Value;

fn ner_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ner")
}

fn model_dir(family: &str) -> PathBuf {
    common::fixture_model(family)
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

#[test]
fn the_metric_equals_seqeval() {
    let reference = read_json(&ner_dir().join("reference.json"));
    let data = load_tagged(&ner_config(), None).unwrap();
    let tags = data.splits.split("validation").unwrap().int_lists("ner_tags").unwrap();
    let gold: Vec<Vec<&str>> =
        (0..tags.len()).map(|i| tags.row(i).iter().map(|&t| data.label_names[t as usize].as_str()).collect()).collect();
    let predicted: Vec<Vec<String>> = serde_json::from_value(reference["predictions"].clone()).unwrap();
    let predicted: Vec<Vec<&str>> = predicted.iter().map(|s| s.iter().map(String::as_str).collect()).collect();
    let report = Report::new(&gold, &predicted);
    let expected = &reference["seqeval"];
    let close = |got: f64, key: &str, want: &Value| {
        let want = want.as_f64().unwrap();
        assert!((got - want).abs() <= 1e-6, "{key}: {got} vs seqeval's {want}");
    };
    close(report.overall.precision, "overall_precision", &expected["overall_precision"]);
    close(report.overall.recall, "overall_recall", &expected["overall_recall"]);
    close(report.overall.f1, "overall_f1", &expected["overall_f1"]);
    close(report.accuracy, "overall_accuracy", &expected["overall_accuracy"]);
    let types: Vec<&String> = report.per_type.keys().collect();
    let expected_types: Vec<&String> =
        expected.as_object().unwrap().keys().filter(|k| !k.starts_with("overall_")).collect();
    assert_eq!(types, expected_types);
    for (t, s) in &report.per_type {
        close(s.precision, &format!("{t} precision"), &expected[t]["precision"]);
        close(s.recall, &format!("{t} recall"), &expected[t]["recall"]);
        close(s.f1, &format!("{t} f1"), &expected[t]["f1"]);
        assert_eq!(s.number as u64, expected[t]["number"].as_u64().unwrap(), "{t} number");
    }
}

#[test]
fn a_hub_parquet_file_names_its_tags_in_its_own_order() {
    // conll2003's parquet files hold tag ids; their names (O, B-PER, I-PER, ...) are in the file's
    // `huggingface` metadata, as `datasets` writes it.
    let parquet = DataConfig { validation_file: Some(ner_dir().join("validation.parquet")), ..DataConfig::default() };
    let from_parquet = load_tagged(&parquet, None).unwrap();
    assert_eq!(
        from_parquet.label_names,
        ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    );
    let conll = DataConfig { validation_file: Some(ner_dir().join("validation.conll")), ..DataConfig::default() };
    let from_conll = load_tagged(&conll, None).unwrap();
    let (a, b) = (from_parquet.splits.split("validation").unwrap(), from_conll.splits.split("validation").unwrap());
    assert_eq!(a.str_lists("tokens").unwrap(), b.str_lists("tokens").unwrap());
    let names = |data: &accel::data::TaggedData, ds: &accel::data::Dataset| -> Vec<String> {
        ds.int_lists("ner_tags").unwrap().values.iter().map(|&t| data.label_names[t as usize].clone()).collect()
    };
    assert_eq!(names(&from_parquet, a), names(&from_conll, b));
}
