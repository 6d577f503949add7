//! Token classification runs as users start them: training the shipped MiniLM on the NER sample
//! (`tests/fixtures/ner`), 2 ranks against 1 process, exact resume, bf16, the run report, and the
//! saved model through `accel eval` and `accel predict`. The tiny BERT of `tests/fixtures/models`
//! keeps the runs that compare layouts to a few seconds.

mod common;

use std::path::{Path, PathBuf};

use accel::model::{Model, ModelConfig};
use common::cli::{accel, assert_ok, assert_resumed_as_whole, assert_same_run, last_evaluation, launch, number, steps};

fn ner_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ner").join(name)
}

/// A config of a token classification run into `dir` on `model` with the sample's files.
fn write_config(dir: &Path, name: &str, model: &Path, body: &str) -> PathBuf {
    let data = format!(
        "train_file = {}\nvalidation_file = {}\ntag_column = 3",
        common::toml_path(&ner_file("train.conll")),
        common::toml_path(&ner_file("validation.conll")),
    );
    let header = format!("seed = 7\nlogging_steps = 1\nper_device_eval_batch_size = 7\n{body}");
    common::write_task_config(dir, name, "token-classification", &header, &data, model)
}

fn tiny_bert() -> PathBuf {
    common::fixture_model("bert")
}

#[test]
fn minilm_learns_the_sample_and_its_model_tags_sentences() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(
        tmp.path(),
        "ner",
        &common::minilm_dir(),
        "num_train_epochs = 3\nper_device_train_batch_size = 8\nlearning_rate = 5e-5\neval_strategy = \"epoch\"\n\
         save_strategy = \"no\"",
    );
    let run = accel(&["train", "--config", cfg.to_str().unwrap()], &[]);
    assert_ok(&run);
    let out = tmp.path().join("ner");
    let losses: Vec<f64> = steps(&out).iter().map(|s| s.1).collect();
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(last < first / 4.0, "the training loss falls: {first} -> {last}");
    let eval = last_evaluation(&out);
    // The trivial baseline tags every word O: entity F1 0, and token accuracy the share of O
    // tokens among the labelled ones (0.768 on this sample). Training must beat both by far.
    let validation = std::fs::read_to_string(ner_file("validation.conll")).unwrap();
    let tags: Vec<&str> = validation.lines().filter_map(|l| l.split_whitespace().nth(3)).collect();
    let all_o = tags.iter().filter(|t| **t == "O").count() as f64 / tags.len() as f64;
    let (f1, accuracy) = (number(&eval, "eval_f1"), number(&eval, "eval_accuracy"));
    assert!(f1 > 0.6, "entity F1 {f1} (tagging every word O gives 0)");
    assert!(accuracy > all_o + 0.1, "token accuracy {accuracy} vs {all_o} for tagging every word O");
    for kind in ["LOC", "MISC", "ORG", "PER"] {
        assert!(eval.get(format!("eval_{kind}_f1")).is_some(), "per type figures: {eval}");
    }
    let config = common::read_json(&out.join("config.json"));
    assert_eq!(config["architectures"][0], "BertForTokenClassification");
    assert_eq!(config["id2label"]["8"], "O");

    // accel eval gives the run's figures, per type too; accel predict tags words.
    let eval_run = accel(&["eval", "--model", out.to_str().unwrap(), "--config", cfg.to_str().unwrap()], &[]);
    assert_ok(&eval_run);
    assert!(eval_run.stdout.contains(&format!("f1 {f1:.4}")), "{}", eval_run.stdout);
    assert!(eval_run.stdout.contains("PER      precision"), "{}", eval_run.stdout);
    let predict = accel(
        &["predict", "--model", out.to_str().unwrap(), "--input", ner_file("validation.conll").to_str().unwrap()],
        &[],
    );
    assert_ok(&predict);
    let rows: Vec<serde_json::Value> = predict.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 60);
    for row in &rows {
        assert_eq!(row["tokens"].as_array().unwrap().len(), row["tags"].as_array().unwrap().len(), "{row}");
    }
    let conll = accel(&["predict", "--model", out.to_str().unwrap(), "--text", "Maria visited Berlin", "--conll"], &[]);
    assert_ok(&conll);
    let lines: Vec<&str> = conll.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "three words and a blank line: {lines:?}");
    assert!(lines[0].starts_with("Maria ") && lines[3].is_empty(), "{lines:?}");
}

#[test]
fn two_ranks_equal_one_process_and_a_resumed_run_the_whole_one() {
    let tmp = tempfile::tempdir().unwrap();
    let common = "max_steps = 6\nlearning_rate = 1e-3\neval_strategy = \"steps\"\neval_steps = 6\n\
                  save_strategy = \"steps\"\nsave_steps = 3";
    let one = write_config(tmp.path(), "one", &tiny_bert(), &format!("{common}\nper_device_train_batch_size = 8"));
    let two = write_config(tmp.path(), "two", &tiny_bert(), &format!("{common}\nper_device_train_batch_size = 4"));
    let accum = write_config(
        tmp.path(),
        "accum",
        &tiny_bert(),
        &format!("{common}\nper_device_train_batch_size = 2\ngradient_accumulation_steps = 2"),
    );
    assert_ok(&accel(&["train", "--config", one.to_str().unwrap()], &[]));
    assert_ok(&launch(2, &["train", "--config", two.to_str().unwrap()], &[]));
    assert_ok(&launch(2, &["train", "--config", accum.to_str().unwrap()], &[]));
    let dir = |name: &str| tmp.path().join(name);
    // Attention's key biases, whose exact gradient is zero, hold Adam-scaled rounding noise.
    let noise =
        Model::zero_gradient_parameters(&ModelConfig::from_file(tiny_bert().join("config.json")).unwrap()).unwrap();
    // Sentences hold different numbers of labelled tokens: each token weighs the same in a step
    // however its rows are split, so the losses, gradients and weights are one process's.
    for other in ["two", "accum"] {
        assert_same_run(
            &dir("one"),
            &dir(other),
            &noise,
            &["eval_f1", "eval_precision", "eval_recall", "eval_accuracy"],
        );
    }

    // Resumed from step 3 on 2 ranks, the run ends where the whole one did.
    let checkpoint = dir("one").join("checkpoint-3");
    let resumed = write_config(
        tmp.path(),
        "resumed",
        &tiny_bert(),
        &format!(
            "{common}\nper_device_train_batch_size = 4\nresume_from_checkpoint = {}",
            common::toml_path(&checkpoint)
        ),
    );
    assert_ok(&launch(2, &["train", "--config", resumed.to_str().unwrap()], &[]));
    assert_resumed_as_whole(&dir("one"), &dir("resumed"), 3, &noise);
}

#[test]
fn bf16_trains_and_the_run_report_counts_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(
        tmp.path(),
        "bf16",
        &tiny_bert(),
        "max_steps = 8\nper_device_train_batch_size = 8\nlearning_rate = 1e-3\nmixed_precision = \"bf16\"\n\
         eval_strategy = \"steps\"\neval_steps = 8\nsave_strategy = \"no\"",
    );
    let run = accel(&["train", "--config", cfg.to_str().unwrap()], &[]);
    assert_ok(&run);
    let out = tmp.path().join("bf16");
    let losses: Vec<f64> = steps(&out).iter().map(|s| s.1).collect();
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(losses[7] < losses[0], "bf16 training lowers the loss: {losses:?}");
    let eval = last_evaluation(&out);
    assert!(number(&eval, "eval_loss").is_finite() && number(&eval, "eval_accuracy") > 0.0, "{eval}");
    let report = common::read_json(&out.join("run_report.json"));
    assert_eq!(report["steps"], 8, "{report}");
    assert!(report["tokens_per_s"].as_f64().unwrap() > 0.0, "{report}");
    let printed = format!("{}{}", run.stdout, run.stderr);
    assert!(printed.contains("run report: 8 steps"), "{printed}");
}
