//! Question answering runs as users start them: training the shipped MiniLM on the SQuAD sample
//! (`tests/fixtures/squad`), 2 ranks against 1 process, exact resume, bf16, the run report, and
//! the saved model through `accel eval` and `accel predict`. The tiny BERT of
//! `tests/fixtures/models` keeps the runs that compare layouts to a few seconds.

mod common;

use std::path::{Path, PathBuf};

use accel::config::Task;
use accel::model::{Model, ModelConfig};
use common::cli::{accel, assert_ok, assert_resumed_as_whole, assert_same_run, last_evaluation, launch, number, steps};

fn squad_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/squad").join(name)
}

fn tiny_bert() -> PathBuf {
    common::fixture_model("bert")
}

/// Windows short enough that the tiny BERT's sample questions take several.
const SHORT_WINDOWS: &str = "max_length = 128\ndoc_stride = 32";

/// A config of a question answering run into `dir` on `model` with the sample's files and
/// `windows` in its `[data]`.
fn write_config(dir: &Path, name: &str, model: &Path, body: &str, windows: &str) -> PathBuf {
    let data = format!(
        "train_file = {}\nvalidation_file = {}\n{windows}",
        common::toml_path(&squad_file("train.json")),
        common::toml_path(&squad_file("validation.json")),
    );
    let seed = if body.contains("seed =") { "" } else { "seed = 7\n" };
    let header = format!("{seed}per_device_eval_batch_size = 7\n{body}");
    common::write_task_config(dir, name, "question-answering", &header, &data, model)
}

#[test]
fn minilm_learns_the_sample() {
    let tmp = tempfile::tempdir().unwrap();
    // 192 questions are few for a reader: the loss falls from the first steps, but answers come
    // only once the spans outscore the null answer, in the third epoch at this learning rate.
    let cfg = write_config(
        tmp.path(),
        "squad",
        &common::minilm_dir(),
        "num_train_epochs = 4\nper_device_train_batch_size = 8\nlearning_rate = 3e-4\nseed = 42\nlogging_steps = 8\n\
         eval_strategy = \"epoch\"\nsave_strategy = \"no\"",
        "max_length = 256\ndoc_stride = 64",
    );
    let run = accel(&["train", "--config", cfg.to_str().unwrap()], &[("RAYON_NUM_THREADS", "2")]);
    assert_ok(&run);
    let out = tmp.path().join("squad");
    let losses: Vec<f64> = steps(&out).iter().map(|s| s.1).collect();
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(last < first / 2.0, "the training loss falls: {first} -> {last}");
    let eval = last_evaluation(&out);
    println!("{eval}");
    // The trivial baseline answers no question: right on the 8 unanswerable ones of 32 (exact
    // match and F1 25.0) and 0 on the answerable ones. Training must find answers.
    let (exact, f1, has_f1) = (number(&eval, "eval_exact"), number(&eval, "eval_f1"), number(&eval, "eval_HasAns_f1"));
    assert!(f1 > 35.0 && exact > 30.0, "exact {exact}, F1 {f1} (answering nothing gives 25)");
    assert!(has_f1 > 15.0, "F1 on answerable questions {has_f1} (answering nothing gives 0)");
}

#[test]
fn two_ranks_equal_one_process_and_a_resumed_run_the_whole_one() {
    let tmp = tempfile::tempdir().unwrap();
    let common = "max_steps = 6\nlearning_rate = 1e-3\nlogging_steps = 1\neval_strategy = \"steps\"\neval_steps = 6\n\
                  save_strategy = \"steps\"\nsave_steps = 3";
    let one = write_config(
        tmp.path(),
        "one",
        &tiny_bert(),
        &format!("{common}\nper_device_train_batch_size = 8"),
        SHORT_WINDOWS,
    );
    let two = write_config(
        tmp.path(),
        "two",
        &tiny_bert(),
        &format!("{common}\nper_device_train_batch_size = 4"),
        SHORT_WINDOWS,
    );
    let accum = write_config(
        tmp.path(),
        "accum",
        &tiny_bert(),
        &format!("{common}\nper_device_train_batch_size = 2\ngradient_accumulation_steps = 2"),
        SHORT_WINDOWS,
    );
    assert_ok(&accel(&["train", "--config", one.to_str().unwrap()], &[]));
    assert_ok(&launch(2, &["train", "--config", two.to_str().unwrap()], &[]));
    assert_ok(&launch(2, &["train", "--config", accum.to_str().unwrap()], &[]));
    let dir = |name: &str| tmp.path().join(name);
    // The parameters whose exact gradient is zero (attention's key biases; for the span scores, a
    // softmax over positions, the output bias and the last norm's bias) hold rounding noise.
    let config = ModelConfig::from_file(tiny_bert().join("config.json")).unwrap();
    let noise = Model::zero_gradient_parameters_for(Task::QuestionAnswering, &config).unwrap();
    for other in ["two", "accum"] {
        assert_same_run(
            &dir("one"),
            &dir(other),
            &noise,
            &["eval_total", "eval_exact", "eval_f1", "eval_HasAns_f1", "eval_NoAns_exact"],
        );
    }

    let checkpoint = dir("one").join("checkpoint-3");
    let resumed = write_config(
        tmp.path(),
        "resumed",
        &tiny_bert(),
        &format!(
            "{common}\nper_device_train_batch_size = 4\nresume_from_checkpoint = {}",
            common::toml_path(&checkpoint)
        ),
        SHORT_WINDOWS,
    );
    assert_ok(&launch(2, &["train", "--config", resumed.to_str().unwrap()], &[]));
    assert_resumed_as_whole(&dir("one"), &dir("resumed"), 3, &noise);
}

#[test]
fn bf16_trains_and_the_model_answers_through_eval_and_predict() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(
        tmp.path(),
        "bf16",
        &tiny_bert(),
        "max_steps = 8\nper_device_train_batch_size = 8\nlearning_rate = 1e-3\nlogging_steps = 1\n\
         mixed_precision = \"bf16\"\neval_strategy = \"steps\"\neval_steps = 8\nsave_strategy = \"no\"",
        SHORT_WINDOWS,
    );
    let run = accel(&["train", "--config", cfg.to_str().unwrap()], &[]);
    assert_ok(&run);
    let out = tmp.path().join("bf16");
    let losses: Vec<f64> = steps(&out).iter().map(|s| s.1).collect();
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(losses[7] < losses[0], "bf16 training lowers the loss: {losses:?}");
    let eval = last_evaluation(&out);
    assert!(number(&eval, "eval_loss").is_finite(), "{eval}");
    let report = common::read_json(&out.join("run_report.json"));
    assert_eq!(report["steps"], 8, "{report}");
    assert!(report["tokens_per_s"].as_f64().unwrap() > 0.0, "{report}");
    let config = common::read_json(&out.join("config.json"));
    assert_eq!(config["architectures"][0], "BertForQuestionAnswering");

    // accel eval gives the run's figures; accel predict answers as {id: text}.
    let model = out.to_str().unwrap();
    let eval_run =
        accel(&["eval", "--model", model, "--config", cfg.to_str().unwrap(), "--mixed-precision", "bf16"], &[]);
    assert_ok(&eval_run);
    assert!(eval_run.stdout.contains("32 questions") && eval_run.stdout.contains("SQuAD v2"), "{}", eval_run.stdout);
    assert!(eval_run.stdout.contains(&format!("f1 {:.4}", number(&eval, "eval_f1"))), "{}", eval_run.stdout);
    let predict =
        accel(&["predict", "--model", model, "--input", squad_file("validation.jsonl").to_str().unwrap()], &[]);
    assert_ok(&predict);
    let answers: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&predict.stdout).unwrap();
    assert_eq!(answers.len(), 32);
    let one = accel(
        &[
            "predict",
            "--model",
            model,
            "--text",
            "Who founded Marlowe?",
            "--text-pair",
            "Marlowe was founded by Edith Crane.",
        ],
        &[],
    );
    assert_ok(&one);
    let answer: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&one.stdout).unwrap();
    let text = answer["0"].as_str().unwrap();
    assert!(!text.is_empty() && "Marlowe was founded by Edith Crane.".contains(text), "{text:?}");
}

#[test]
fn bad_answers_fail_in_one_line_naming_the_file_and_question() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bad.json");
    let text = std::fs::read_to_string(squad_file("validation.json")).unwrap();
    // The first answer moved one character: it no longer matches the context there.
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut doc = doc;
    let qa = &mut doc["data"][0]["paragraphs"][0]["qas"][0];
    let id = qa["id"].as_str().unwrap().to_string();
    let start = qa["answers"][0]["answer_start"].as_u64().unwrap();
    qa["answers"][0]["answer_start"] = serde_json::json!(start + 1);
    std::fs::write(&path, serde_json::to_string(&doc).unwrap()).unwrap();
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(
        &cfg,
        format!(
            "task = \"question-answering\"\noutput_dir = {}\nmax_steps = 1\n[data]\ntrain_file = {}\n[model]\nname_or_path = {}\n",
            common::toml_path(&tmp.path().join("out")),
            common::toml_path(&path),
            common::toml_path(&tiny_bert())
        ),
    )
    .unwrap();
    let run = accel(&["train", "--config", cfg.to_str().unwrap()], &[]);
    assert_ne!(run.code, Some(0));
    let line = run.stderr.lines().find(|l| l.contains("bad.json")).unwrap_or_else(|| panic!("{}", run.stderr));
    assert!(line.contains(&id) && line.contains(&format!("answer_start {}", start + 1)), "{line}");
}
