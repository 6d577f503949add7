//! Extractive question answering: SQuAD reading, run_qa.py's windows, post-processing and the
//! SQuAD metrics, held to transformers and evaluate through `tests/fixtures/squad/reference.json`
//! (`scripts/make_qa_fixtures.py`).

mod common;

use std::path::{Path, PathBuf};

use accel::config::DataConfig;
use accel::data::squad::read_examples;
use accel::data::{load_squad, PairTokenizer, QaWindows};
use accel::train::answers::{best_answer, AnswerOptions, WindowScores};
use accel::train::squad::{squad_v1, squad_v2, Scored};
use common::read_json;
use serde_json::Value;

fn squad_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/squad")
}

fn model_dir(family: &str) -> PathBuf {
    common::fixture_model(family)
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

#[test]
fn squad_json_and_its_json_lines_hold_the_same_questions() {
    let json = read_examples(&squad_dir().join("validation.json"), true).unwrap();
    let lines = read_examples(&squad_dir().join("validation.jsonl"), true).unwrap();
    assert_eq!(json, lines);
    assert_eq!(json.len(), 32);
    assert_eq!(json.iter().filter(|e| e.answers.is_empty()).count(), 8, "v2's unanswerable questions");
    let cfg = DataConfig { train_file: Some(squad_dir().join("train.json")), ..DataConfig::default() };
    let data = load_squad(&cfg).unwrap();
    assert_eq!(data.splits.split("train").unwrap().num_rows(), 192);
    assert!(data.has_unanswerable);
}

#[test]
fn windows_equal_run_qa_preprocessing() {
    let reference = read_json(&squad_dir().join("reference.json"));
    let cfg = DataConfig { validation_file: Some(squad_dir().join("validation.json")), ..DataConfig::default() };
    let data = load_squad(&cfg).unwrap();
    let validation = data.splits.split("validation").unwrap();
    for (family, max_length, stride, questions) in [("bert", 384, 128, 16), ("roberta", 128, 32, 4)] {
        let tokenizer = PairTokenizer::from_dir(&model_dir(family)).unwrap();
        let f = QaWindows { tokenizer: &tokenizer, max_length, stride };
        let (windows, _) = validation.slice(0, questions).unwrap().map(&f, 5, None).unwrap();
        let expected = reference["windows"][family].as_array().unwrap();
        assert_eq!(windows.num_rows(), expected.len(), "{family}: windows");
        let (ids, offsets) = (windows.int_lists("input_ids").unwrap(), windows.int_lists("offsets").unwrap());
        let (starts, ends, examples) = (
            windows.ints("start_positions").unwrap(),
            windows.ints("end_positions").unwrap(),
            windows.ints("example").unwrap(),
        );
        for (i, w) in expected.iter().enumerate() {
            let at = format!("{family}, window {i}");
            assert_eq!(examples[i], w["example"].as_i64().unwrap(), "{at}: example");
            assert_eq!(ids.row(i), ints(&w["input_ids"]), "{at}: input_ids");
            let first = offsets.row(i).chunks(2).position(|o| o[0] >= 0).unwrap();
            assert_eq!(first as i64, w["context_start"].as_i64().unwrap(), "{at}: the context's first token");
            let context: Vec<i64> = offsets.row(i).iter().copied().filter(|&o| o >= 0).collect();
            assert_eq!(context, ints(&w["context_offsets"]), "{at}: offsets");
            assert_eq!(starts[i], w["start_positions"].as_i64().unwrap(), "{at}: start_positions");
            assert_eq!(ends[i], w["end_positions"].as_i64().unwrap(), "{at}: end_positions");
        }
    }
}

/// Little-endian f32 values in base64.
fn f32s(v: &Value) -> Vec<f32> {
    let bytes = base64_decode(v.as_str().unwrap());
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &d)| n | u32::from(d) << (18 - 6 * i));
        out.extend(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

fn close(got: f64, want: &Value, what: &str) {
    let want = want.as_f64().unwrap();
    assert!((got - want).abs() <= 1e-6, "{what}: {got} vs evaluate's {want}");
}

#[test]
fn post_processing_and_the_metrics_equal_run_qa_and_evaluate() {
    let reference = read_json(&squad_dir().join("reference.json"));
    let examples = read_examples(&squad_dir().join("validation.json"), true).unwrap();
    let windows = reference["windows"]["bert"].as_array().unwrap();
    let logits = reference["logits"].as_array().unwrap();
    // Each window's offsets as post-processing reads them: None outside the context.
    let offsets: Vec<Vec<Option<(usize, usize)>>> = windows
        .iter()
        .map(|w| {
            let n = w["input_ids"].as_array().unwrap().len();
            let first = w["context_start"].as_u64().unwrap() as usize;
            let context = ints(&w["context_offsets"]);
            (0..n)
                .map(|k| {
                    (k >= first && k < first + context.len() / 2)
                        .then(|| (context[2 * (k - first)] as usize, context[2 * (k - first) + 1] as usize))
                })
                .collect()
        })
        .collect();
    let scores: Vec<(Vec<f32>, Vec<f32>)> = logits.iter().map(|l| (f32s(&l["start"]), f32s(&l["end"]))).collect();
    let answer = |index: usize, opts: &AnswerOptions| {
        let of_example: Vec<WindowScores> = windows
            .iter()
            .enumerate()
            .filter(|(_, w)| w["example"].as_u64().unwrap() as usize == index)
            .map(|(i, _)| WindowScores { start: &scores[i].0, end: &scores[i].1, offsets: &offsets[i] })
            .collect();
        best_answer(&examples[index].context, &of_example, opts)
    };
    let v2 = AnswerOptions { version_2_with_negative: true, ..AnswerOptions::default() };
    let at = AnswerOptions { null_score_diff_threshold: reference["threshold"].as_f64().unwrap(), ..v2 };
    for (key, opts) in [("answers_v1", AnswerOptions::default()), ("answers_v2", v2), ("answers_v2_at_threshold", at)] {
        for (index, e) in examples.iter().take(16).enumerate() {
            let a = answer(index, &opts);
            assert_eq!(a.text, reference[key][&e.id].as_str().unwrap(), "{key}: {}", e.id);
            if key == "answers_v2" {
                close(f64::from(a.null_score_diff.unwrap()), &reference["null_score_diffs"][&e.id], "null score diff");
            }
        }
    }

    // The metrics on those answers and on edited gold answers.
    let golds: Vec<Vec<String>> = examples.iter().map(|e| e.answers.iter().map(|a| a.0.clone()).collect()).collect();
    let scored = |answers: &Value, only_answerable: bool| -> Vec<(usize, String)> {
        examples
            .iter()
            .take(16)
            .enumerate()
            .filter(|(i, _)| !only_answerable || !golds[*i].is_empty())
            .map(|(i, e)| (i, answers[&e.id].as_str().unwrap().to_string()))
            .collect()
    };
    let check = |metrics: accel::train::metrics::Metrics, expected: &Value, what: &str| {
        let keys: Vec<&String> = expected.as_object().unwrap().keys().collect();
        assert_eq!(
            metrics.keys().collect::<Vec<_>>(),
            {
                let mut k = keys.clone();
                k.sort();
                k
            },
            "{what}: keys"
        );
        for (k, v) in &metrics {
            close(*v, &expected[k], &format!("{what}: {k}"));
        }
    };
    for (answers, expected) in [
        (&reference["answers_v2"], &reference["squad_v2"]["answers_v2"]),
        (&reference["answers_v2_at_threshold"], &reference["squad_v2"]["answers_v2_at_threshold"]),
        (&reference["edited"], &reference["squad_v2"]["edited"]),
    ] {
        let predictions = scored(answers, false);
        let questions: Vec<Scored> =
            predictions.iter().map(|(i, p)| Scored { gold: &golds[*i], predicted: p }).collect();
        check(squad_v2(&questions), expected, "squad_v2");
    }
    let predictions = scored(&reference["edited"], true);
    let questions: Vec<Scored> = predictions.iter().map(|(i, p)| Scored { gold: &golds[*i], predicted: p }).collect();
    check(squad_v1(&questions), &reference["squad"]["edited"], "squad");
}
