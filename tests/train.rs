//! The Trainer on a tiny random-init model: it learns, logs, checkpoints, resumes exactly, and
//! its output loads for eval and predict.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use accel::config;
use accel::distributed::SingleProcess;
use accel::train::{TrainConfig, Trainer};

use common::Fixture;

/// A tiny model with dropout and a 64-row train / 32-row validation task.
fn fixture() -> Fixture {
    Fixture::new(32)
}

fn config(f: &Fixture, out: &str, extra: &[&str]) -> TrainConfig {
    try_config(f, out, extra).unwrap()
}

fn try_config(f: &Fixture, out: &str, extra: &[&str]) -> accel::Result<TrainConfig> {
    let mut table: toml::Table = format!(
        "output_dir = {}\nper_device_train_batch_size = 8\nper_device_eval_batch_size = 16\nlearning_rate = 1e-3\nlogging_steps = 1\nseed = 7\nsave_strategy = \"no\"\n{}",
        common::toml_path(&f.root.join(out)),
        f.data_and_model_toml()
    )
    .parse()
    .unwrap();
    for e in extra {
        config::apply_override(&mut table, e).unwrap();
    }
    TrainConfig::from_table(table, "test")
}

fn logged(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn step_losses(dir: &Path) -> Vec<(u64, f64)> {
    logged(dir)
        .iter()
        .filter(|r| r.get("loss").is_some())
        .map(|r| (r["step"].as_u64().unwrap(), r["loss"].as_f64().unwrap()))
        .collect()
}

/// The pre-flight memory check: a model of ten million layers (as a mistyped config.json has it) is
/// refused before anything is allocated, in well under a second, naming both figures; the tiny
/// model's run (every other test) starts.
#[test]
fn a_run_that_cannot_fit_in_memory_is_refused_before_it_allocates() {
    let f = fixture();
    let path = f.model.join("config.json");
    let mut model_config = common::read_json(&path);
    model_config["num_hidden_layers"] = serde_json::json!(10_000_000);
    std::fs::write(&path, serde_json::to_string_pretty(&model_config).unwrap()).unwrap();
    let started = std::time::Instant::now();
    let err = match Trainer::new(config(&f, "huge", &["max_steps=1"]), &SingleProcess) {
        Ok(_) => panic!("a model of ten million layers was built"),
        Err(e) => e.to_string(),
    };
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(1), "refused after {took:?}");
    assert!(
        err.contains("config per_device_train_batch_size: this run needs about") && err.contains("TiB per process"),
        "{err}"
    );
    assert!(err.contains("is available per process (MemAvailable") || err.contains("cgroup"), "{err}");
    assert!(err.contains("even a batch of 1 needs") && err.contains("10000000 layers"), "{err}");
}

/// The end-of-run report: its keys and units in run_report.json, and a step's phases that add up to
/// the step (each step's phases within 5% of its time, at the median over the steps).
#[test]
fn the_run_report_splits_each_step_into_its_phases() {
    let f = fixture();
    let cfg = config(
        &f,
        "report",
        &["max_steps=12", "eval_strategy=\"steps\"", "eval_steps=6", "save_strategy=\"steps\"", "save_steps=6"],
    );
    let mut trainer = Trainer::new(cfg, &SingleProcess).unwrap();
    trainer.train().unwrap();
    let report = common::read_json(&f.root.join("report/run_report.json"));
    assert_eq!(report["steps"], 12);
    assert_eq!(report["world_size"], 1);
    assert_eq!(report["device"], "cpu");
    for key in ["train_runtime_s", "samples_per_s", "tokens_per_s", "padded_tokens_per_s", "model_tflops_per_s", "mfu"]
    {
        assert!(report[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {}", report[key]);
    }
    assert!(report["tokens_per_s"].as_f64() <= report["padded_tokens_per_s"].as_f64());
    assert!(
        report["peak"]["source"].as_str().unwrap().starts_with("measured: f32 of 512x16x32 on "),
        "{}",
        report["peak"]
    );
    assert!(report["launch_to_first_step_s"].as_f64().unwrap() > 0.0);
    let phases: Vec<&str> = report["phases"].as_array().unwrap().iter().map(|p| p[0].as_str().unwrap()).collect();
    assert_eq!(phases, ["data", "forward", "backward", "clip", "optimizer"], "one process has no all-reduce");
    for p in report["phases"].as_array().unwrap() {
        assert!(p[1]["median_ms"].as_f64().unwrap() >= 0.0 && p[1]["p90_ms"].as_f64() >= p[1]["median_ms"].as_f64());
    }
    assert!(report["step"]["median_ms"].as_f64().unwrap() > 0.0);
    assert_eq!((report["evaluations"].as_u64(), report["checkpoints"].as_u64()), (Some(2), Some(2)));
    let rank = &report["ranks"][0];
    assert!(rank["peak_memory_mib"].as_f64().unwrap() > 1.0 && rank["estimated_memory_mib"].as_f64().unwrap() > 0.0);
    assert_eq!(report["all_reduce_bytes_per_step"], 0);
    // The phases cover the step: what is left (bookkeeping between them) is under 5%.
    let mut gaps: Vec<f64> =
        accel::spans::steps().iter().map(|s| (s.seconds - s.phases.values().sum::<f64>()).abs() / s.seconds).collect();
    assert_eq!(gaps.len(), 12);
    gaps.sort_by(f64::total_cmp);
    assert!(gaps[gaps.len() / 2] < 0.05, "the phases leave out {:.1}% of a step", 100.0 * gaps[gaps.len() / 2]);
}

#[test]
fn training_lowers_the_loss_and_writes_a_loadable_model() {
    let f = fixture();
    let cfg = config(&f, "out", &["num_train_epochs=8", "eval_strategy=\"epoch\""]);
    let mut trainer = Trainer::new(cfg, &SingleProcess).unwrap();
    let before = trainer.evaluate("validation").unwrap()["loss"];
    let out = trainer.train().unwrap();
    assert_eq!(out.global_step, 64, "8 batches of 8 per epoch, 8 epochs");
    let after = trainer.evaluate("validation").unwrap()["loss"];
    assert!(after < before, "validation loss {before} -> {after}");
    let records = logged(&f.root.join("out"));
    assert_eq!(records.iter().filter(|r| r.get("eval_accuracy").is_some()).count(), 8, "one evaluation per epoch");
    let first: f64 = records[0]["learning_rate"].as_f64().unwrap();
    assert!((first - 1e-3).abs() < 1e-12, "the first step uses the full rate (linear, no warmup)");

    for file in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt"] {
        assert!(f.root.join("out").join(file).is_file(), "{file} missing from the output");
    }
    let config: serde_json::Value = common::read_json(&f.root.join("out/config.json"));
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
    assert_eq!(config["id2label"]["1"], "same");
    assert_eq!(config["label2id"]["different"], 0);
}

#[test]
fn resuming_from_a_checkpoint_continues_with_the_same_losses() {
    let f = fixture();
    let whole = config(&f, "whole", &["max_steps=12", "save_strategy=\"steps\"", "save_steps=5"]);
    Trainer::new(whole, &SingleProcess).unwrap().train().unwrap();
    let ckpt = f.root.join("whole/checkpoint-5");
    for file in ["model.safetensors", "optimizer.safetensors", "trainer_state.json", "config.json", "tokenizer.json"] {
        assert!(ckpt.join(file).is_file(), "{file} missing from {}", ckpt.display());
    }
    let resumed = config(
        &f,
        "resumed",
        &[
            "max_steps=12",
            "save_strategy=\"no\"",
            &format!("resume_from_checkpoint={}", toml::Value::String(ckpt.display().to_string())),
        ],
    );
    Trainer::new(resumed, &SingleProcess).unwrap().train().unwrap();
    let whole: Vec<(u64, f64)> = step_losses(&f.root.join("whole")).into_iter().filter(|(s, _)| *s > 5).collect();
    let resumed = step_losses(&f.root.join("resumed"));
    assert_eq!(whole.len(), 7);
    assert_eq!(resumed.len(), 7, "the resumed run starts at step 6: {resumed:?}");
    for ((s1, a), (s2, b)) in whole.iter().zip(&resumed) {
        assert_eq!(s1, s2);
        assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "step {s1}: {a} vs {b}");
    }
    // A longer run may resume from it (the schedule is recomputed for 16 steps); a different batch
    // size that changes the global batch is refused, naming the shapes that keep it.
    let resume_at = format!("resume_from_checkpoint={}", toml::Value::String(ckpt.display().to_string()));
    let longer = config(&f, "longer", &["max_steps=16", "save_strategy=\"no\"", &resume_at]);
    Trainer::new(longer, &SingleProcess).unwrap().train().unwrap();
    let longer = logged(&f.root.join("longer"));
    let steps: Vec<u64> = longer.iter().filter_map(|r| r.get("loss").and(r["step"].as_u64())).collect();
    assert_eq!(steps, (6..=16).collect::<Vec<_>>());
    let lr6 = longer.iter().find(|r| r["step"] == 6 && r.get("learning_rate").is_some()).unwrap()["learning_rate"]
        .as_f64()
        .unwrap();
    assert!((lr6 - 1e-3 * 11.0 / 16.0).abs() < 1e-12, "step 6 uses the 16-step schedule: {lr6}");
    let wider = config(&f, "wider", &["max_steps=12", "per_device_train_batch_size=4", &resume_at]);
    let err = Trainer::new(wider, &SingleProcess).unwrap().train().unwrap_err().to_string();
    assert!(
        err.contains("a global batch of 8 rows") && err.contains("must make 8: 8 x 1, 4 x 2, 2 x 4, 1 x 8"),
        "{err}"
    );
    // "latest" needs a checkpoint; "latest-if-any" starts afresh without one, and resumes with one.
    let err = Trainer::new(config(&f, "fresh", &["max_steps=2", "resume_from_checkpoint=\"latest\""]), &SingleProcess)
        .unwrap()
        .train()
        .unwrap_err()
        .to_string();
    assert!(err.contains("resume_from_checkpoint") && err.contains("no checkpoint-* folder"), "{err}");
    let if_any = |out: &str| config(&f, out, &["max_steps=12", "resume_from_checkpoint=\"latest-if-any\""]);
    Trainer::new(if_any("fresh"), &SingleProcess).unwrap().train().unwrap();
    assert_eq!(step_losses(&f.root.join("fresh")).len(), 12);
    let again = if_any("whole");
    assert_eq!(Trainer::new(again, &SingleProcess).unwrap().train().unwrap().global_step, 12);
    // A different seed gives different dropout, hence other losses: the comparison above can fail.
    let other = config(&f, "other", &["max_steps=12", "seed=8"]);
    Trainer::new(other, &SingleProcess).unwrap().train().unwrap();
    let other: Vec<(u64, f64)> = step_losses(&f.root.join("other")).into_iter().filter(|(s, _)| *s > 5).collect();
    assert!(other.iter().zip(&whole).any(|(a, b)| (a.1 - b.1).abs() > 1e-4));
}

#[test]
fn checkpoints_rotate_and_the_best_model_is_loaded_at_the_end() {
    let f = fixture();
    let cfg = config(
        &f,
        "best",
        &[
            "num_train_epochs=3",
            "eval_strategy=\"epoch\"",
            "save_strategy=\"epoch\"",
            "save_total_limit=1",
            "load_best_model_at_end=true",
            "metric_for_best_model=\"accuracy\"",
        ],
    );
    Trainer::new(cfg, &SingleProcess).unwrap().train().unwrap();
    let out = f.root.join("best");
    let kept = accel::train::checkpoint::list_checkpoints(&out).unwrap();
    assert!(!kept.is_empty() && kept.len() <= 2, "{kept:?}");
    let state = accel::train::state::TrainState::load(kept.last().unwrap()).unwrap();
    let best = state.best_model_checkpoint.unwrap();
    assert!(kept.contains(&best), "the best checkpoint {best:?} survives rotation: {kept:?}");
    let best_weights = std::fs::read(best.join("model.safetensors")).unwrap();
    assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), best_weights, "final model = best checkpoint");
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".checkpoint-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "no temporary folders remain");
}

/// A config file for the command-line tests: `head` (top-level keys), no saving, the fixture's data and model.
fn run_toml(f: &Fixture, head: &str) -> PathBuf {
    let q = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    let path = f.root.join("run.toml");
    let (train, validation, model) = (q(&f.train), q(&f.validation), q(&f.model));
    std::fs::write(
        &path,
        format!(
            "{head}save_strategy = \"no\"\n[data]\ntrain_file = {train}\nvalidation_file = {validation}\n\
             text_columns = [\"sentence1\", \"sentence2\"]\n[model]\nname_or_path = {model}\n"
        ),
    )
    .unwrap();
    path
}

fn accel(args: &[&str]) -> (String, String, bool) {
    let out = Command::new(env!("CARGO_BIN_EXE_accel")).args(args).env("HF_HUB_OFFLINE", "1").output().unwrap();
    (String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into(), out.status.success())
}

/// `accel eval` of `model` on a pair task's train and validation files, with `extra` arguments.
fn eval_on_files(model: &Path, train: &Path, validation: &Path, extra: &[&str]) -> (String, String, bool) {
    let q = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    let (set_train, set_val) =
        (format!("data.train_file={}", q(train)), format!("data.validation_file={}", q(validation)));
    let mut args = vec!["eval", "--model", model.to_str().unwrap(), "--set", &set_train, "--set", &set_val];
    args.extend(["--set", "data.text_columns=[\"sentence1\",\"sentence2\"]"]);
    args.extend(extra);
    accel(&args)
}

#[test]
fn the_commands_train_evaluate_and_predict() {
    let f = fixture();
    let q = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    let cfg_path = run_toml(&f, "num_train_epochs = 2\nlearning_rate = 1e-3\n");
    let out_dir = f.root.join("cli");
    let (out, err, ok) = accel(&[
        "train",
        "--config",
        cfg_path.to_str().unwrap(),
        "--output-dir",
        out_dir.to_str().unwrap(),
        "--seed",
        "3",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("trained 16 steps") && out.contains("validation: accuracy"), "{out}");
    // The model card gives the final evaluation printed, and no Hub dataset for the user's files.
    let card = std::fs::read_to_string(out_dir.join("README.md")).unwrap();
    let printed = out.lines().find_map(|l| l.strip_prefix("validation: ")).unwrap();
    for figure in printed.split(", ") {
        let (name, value) = figure.split_once(' ').unwrap();
        let title = if name == "f1" { "F1".to_string() } else { name[..1].to_uppercase() + &name[1..] };
        let line = format!("- {title}: ");
        let shown =
            card.lines().find_map(|l| l.strip_prefix(line.as_str())).unwrap_or_else(|| panic!("{line}\n{card}"));
        let (shown, value): (f64, f64) = (shown.parse().unwrap(), value.parse().unwrap());
        assert!((shown - value).abs() <= 1e-4, "{name}: card {shown}, printed {value}");
    }
    assert!(card.contains("tags:\n- generated_from_trainer\n") && card.contains("  results: []\n"), "{card}");
    assert!(card.contains("- seed: 3\n") && card.contains("- num_epochs: 2.0\n"), "{card}");

    let set_train = format!("data.train_file={}", q(&f.train));
    let (out, err, ok) = eval_on_files(&out_dir, &f.train, &f.validation, &[]);
    assert!(ok, "{err}");
    assert!(out.contains("validation (32 rows): accuracy"), "{out}");
    let (json, err, ok) = eval_on_files(&out_dir, &f.train, &f.validation, &["--json"]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!((json["split"].as_str(), json["rows"].as_u64()), (Some("validation"), Some(32)));
    let accuracy = out.split("accuracy ").nth(1).and_then(|r| r.split(',').next()).unwrap();
    assert_eq!(format!("{:.4}", json["metrics"]["accuracy"].as_f64().unwrap()), accuracy, "{out}");

    let (out, err, ok) = accel(&[
        "predict",
        "--model",
        out_dir.to_str().unwrap(),
        "--text",
        "the cat sits",
        "--text-pair",
        "the dog runs",
    ]);
    assert!(ok, "{err}");
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let p0 = line["probabilities"]["0"].as_f64().unwrap();
    let p1 = line["probabilities"]["1"].as_f64().unwrap();
    assert!((p0 + p1 - 1.0).abs() < 1e-5, "{line}");
    let (out, err, ok) =
        accel(&["predict", "--model", out_dir.to_str().unwrap(), "--input", f.validation.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 32);

    let (_, err, ok) = accel(&["train", "--config", cfg_path.to_str().unwrap(), "--set", "learning_rat=1"]);
    assert!(!ok && err.contains("did you mean `learning_rate`"), "{err}");
    let (_, err, ok) = accel(&["eval", "--model", f.root.to_str().unwrap(), "--set", &set_train]);
    assert!(!ok && err.contains("not found"), "{err}");
    // Each problem said once: the OS error of a missing config, the folders a missing model was looked in.
    let missing = f.root.join("missing.toml");
    let (_, err, ok) = accel(&["train", "--config", missing.to_str().unwrap()]);
    assert!(!ok && err.matches("No such file").count() == 1, "{err}");
    let (_, err, ok) = accel(&["train", "--config", cfg_path.to_str().unwrap(), "--set", "learning_rate=abc"]);
    assert!(!ok && err.contains("config learning_rate: invalid type"), "{err}");
}

#[test]
fn accumulated_half_batches_give_the_full_batch_gradient() {
    use accel::data::{DataCollatorWithPadding, PairTokenizer};
    use accel::model::Model;
    use accel::train::Gradients;

    let f = fixture();
    let cfg = config(&f, "unused", &[]);
    let task = accel::data::load_task(&cfg.data, &accel::data::Sources::isolated(f.root.join("hub"))).unwrap();
    let tokenizer = PairTokenizer::from_dir(&f.model).unwrap();
    let (splits, _) = task.tokenize(&tokenizer, None).unwrap();
    let train = splits.split("train").unwrap();
    let collator = DataCollatorWithPadding::new(&tokenizer).unwrap();
    let (model, _) = Model::from_pretrained(&f.model, 2, 0, &candle_core::Device::Cpu).unwrap();
    let params = model.params();
    let loss_of = |rows: &[usize]| {
        let b = collator.collate(train, rows).unwrap();
        let logits = model.forward(&b.input_ids, &b.token_type_ids, &b.attention_mask, false).unwrap();
        model.loss(&logits, b.labels.as_ref().unwrap()).unwrap()
    };
    let mut whole = Gradients::new();
    whole.backward(&loss_of(&[0, 1, 2, 3, 4, 5, 6, 7]), params).unwrap();
    let mut halves = Gradients::new();
    halves.backward(&(loss_of(&[0, 1, 2, 3]) / 2.0).unwrap(), params).unwrap();
    halves.backward(&(loss_of(&[4, 5, 6, 7]) / 2.0).unwrap(), params).unwrap();
    assert_eq!(halves.micro_batches(), 2);
    for (name, var) in params.iter() {
        let a = whole.store().get(var.as_tensor()).unwrap();
        let b = halves.store().get(var.as_tensor()).unwrap();
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let scale = a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-6);
        assert!(diff <= 1e-4 * scale, "{name}: {diff} vs scale {scale}");
    }
    let norm_whole = whole.clip(params, 0.0).unwrap();
    let norm_halves = halves.clip(params, 0.0).unwrap();
    assert!((norm_whole - norm_halves).abs() < 1e-5 * norm_whole);
    halves.zero();
    assert_eq!(halves.micro_batches(), 0);
    assert!(halves.store().get(params.iter().next().unwrap().1.as_tensor()).is_none());
}

#[test]
fn gradient_accumulation_divides_the_optimizer_steps() {
    let f = fixture();
    let cfg = config(&f, "accum", &["num_train_epochs=2", "gradient_accumulation_steps=3"]);
    let out = Trainer::new(cfg, &SingleProcess).unwrap().train().unwrap();
    // 8 batches per epoch make windows of 3, 3 and 2 (the epoch's end closes a window).
    assert_eq!(out.global_step, 6);
    let steps: Vec<u64> = step_losses(&f.root.join("accum")).iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6]);
}

/// bf16 training follows f32 training step by step (the bf16 weights are refreshed after every
/// optimizer step: stale ones would leave the losses behind), and differs from it (bf16 ran). On a
/// CPU without bf16 instructions, or whose bf16 products measured too slow, the products stay f32:
/// the losses are f32's, bit for bit.
#[test]
fn bf16_training_tracks_f32_training() {
    use accel::kernels::cpu::bf16_library::Unavailable;
    let kept_f32 = match accel::kernels::cpu::bf16_products() {
        Ok(_) => false,
        Err(Unavailable::NoInstructions(_) | Unavailable::Slower(_)) => true,
        Err(why) => {
            eprintln!("skipped bf16_training_tracks_f32_training: {why}");
            return;
        }
    };
    let f = fixture();
    let run = |out: &str, extra: &[&str]| {
        let mut trainer = Trainer::new(config(&f, out, extra), &SingleProcess).unwrap();
        trainer.train().unwrap();
        (step_losses(&f.root.join(out)), trainer.evaluate("validation").unwrap()["loss"])
    };
    let (f32_losses, f32_eval) = run("f32", &["num_train_epochs=3"]);
    let (bf16_losses, bf16_eval) = run("bf16", &["num_train_epochs=3", "mixed_precision=\"bf16\""]);
    assert_eq!(f32_losses.len(), 24);
    if kept_f32 {
        assert_eq!(bf16_losses, f32_losses, "products kept in f32 must give f32's losses");
        assert_eq!(bf16_eval, f32_eval);
        return;
    }
    let mut largest = 0f64;
    for ((step, a), (_, b)) in f32_losses.iter().zip(&bf16_losses) {
        let rel = (a - b).abs() / a.abs();
        assert!(rel < 2e-3, "step {step}: f32 loss {a}, bf16 {b}");
        largest = largest.max(rel);
    }
    println!("largest relative loss difference {largest:.2e}; eval loss f32 {f32_eval}, bf16 {bf16_eval}");
    assert!(largest > 0.0, "bf16 losses equal the f32 ones: the bf16 path did not run");
    assert!((f32_eval - bf16_eval).abs() < 2e-3 * f32_eval, "eval loss f32 {f32_eval}, bf16 {bf16_eval}");
}

/// bf16 through a library that cannot be found is refused, naming the key, the library's variable
/// and where it was looked for; an unknown library name is refused naming the variable; fp16 is
/// refused by the flag's parser. On a CPU without bf16 instructions, bf16 with no library asked
/// for trains with f32 products and the log says so.
#[test]
fn bf16_without_the_library_is_refused_clearly() {
    let f = fixture();
    let cfg_path = run_toml(&f, "max_steps = 1\nmixed_precision = \"bf16\"\n");
    let train = |vars: &[(&str, String)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_accel"));
        cmd.args(["train", "--config", cfg_path.to_str().unwrap(), "--output-dir", f.root.join("o").to_str().unwrap()]);
        cmd.env("HF_HUB_OFFLINE", "1").env_remove("ACCEL_BF16_LIBRARY");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
            out.status.success(),
        )
    };
    let nowhere = f.root.join("no-library-here").display().to_string();
    for (library, variable) in [("onednn", "ACCEL_ONEDNN"), ("mkl", "ACCEL_MKL")] {
        let (err, ok) = train(&[("ACCEL_BF16_LIBRARY", library.into()), (variable, nowhere.clone())]);
        assert!(!ok, "{err}");
        assert!(err.contains("mixed_precision") && err.contains(&format!("{variable}={nowhere} holds no")), "{err}");
    }
    let (err, ok) = train(&[("ACCEL_BF16_LIBRARY", "openblas".into())]);
    assert!(!ok && err.contains("ACCEL_BF16_LIBRARY=\"openblas\" names no bf16 library"), "{err}");
    if accel::kernels::cpu::bf16_library::Instructions::here() == accel::kernels::cpu::bf16_library::Instructions::None
    {
        let (log, ok) = train(&[("ACCEL_ONEDNN", nowhere.clone()), ("ACCEL_MKL", nowhere.clone())]);
        assert!(ok, "{log}");
        assert_eq!(log.matches("keeps f32 here, as this CPU has no AVX512-BF16 or AMX").count(), 1, "{log}");
    }
    let (_, err, ok) = accel(&["train", "--config", cfg_path.to_str().unwrap(), "--mixed-precision", "fp16"]);
    assert!(!ok && err.contains("fp16 is not supported"), "{err}");
}

/// Early stopping (transformers' `EarlyStoppingCallback`): with a learning rate of 0 the metric
/// never improves, so patience 2 ends the run at the third evaluation, and the best (first)
/// checkpoint is loaded. Without `load_best_model_at_end` the key is refused.
#[test]
fn early_stopping_ends_a_run_that_stopped_improving() {
    let f = fixture();
    let keys = [
        "num_train_epochs=8",
        "learning_rate=0.0",
        "eval_strategy=\"epoch\"",
        "save_strategy=\"epoch\"",
        "load_best_model_at_end=true",
        "early_stopping_patience=2",
    ];
    let mut trainer = Trainer::new(config(&f, "early", &keys), &SingleProcess).unwrap();
    let out = trainer.train().unwrap();
    assert_eq!(out.global_step, 24, "three epochs of 8 steps, then two evaluations without improvement");
    let evals = logged(&f.root.join("early")).iter().filter(|r| r.get("eval_loss").is_some()).count();
    assert_eq!(evals, 3);
    let state: serde_json::Value = common::read_json(&f.root.join("early/checkpoint-24/trainer_state.json"));
    assert_eq!(state["early_stopping_patience_counter"], 2);
    assert!(state["best_model_checkpoint"].as_str().unwrap().ends_with("checkpoint-8"), "{state}");

    let mut table: toml::Table = "early_stopping_patience = 2\neval_strategy = \"epoch\"\n".parse().unwrap();
    config::apply_override(&mut table, "data.train_file=\"x.csv\"").unwrap();
    let err = TrainConfig::from_table(table, "test").unwrap_err().to_string();
    assert!(err.contains("early_stopping_patience") && err.contains("load_best_model_at_end"), "{err}");
}

/// `accel config` writes a config that loads as the defaults, and never overwrites a file.
#[test]
fn accel_config_writes_a_loadable_config_once() {
    let f = fixture();
    let path = f.root.join("written.toml");
    let (_, err, ok) = accel(&["config", "--dataset", "glue/sst2", "--output", path.to_str().unwrap()]);
    assert!(ok, "{err}");
    let cfg = TrainConfig::load(Some(&path), &[]).unwrap();
    assert_eq!(cfg.args, accel::train::TrainingArguments::default());
    assert_eq!(cfg.data.dataset.as_deref(), Some("glue/sst2"));
    std::fs::write(&path, "kept").unwrap();
    let (_, err, ok) = accel(&["config", "--output", path.to_str().unwrap()]);
    assert!(!ok && err.contains("not overwriting"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "kept");
    let (out, _, ok) = accel(&["config"]);
    assert!(ok && out.contains("mixed_precision = \"no\"") && out.contains("[launch]"), "{out}");
    let (_, err, ok) = accel(&["config", "--seed", "3"]);
    assert!(!ok && err.contains("add --print"), "train's flags without --print are an error: {err}");
}

/// With ACCEL_EVENTS set, `accel train` prints its progress as JSON events on standard output (what
/// the Python module reads): the start, every step, every logged record, and the final results.
#[test]
fn events_stream_a_runs_progress_and_results() {
    let f = fixture();
    let cfg_path =
        run_toml(&f, "num_train_epochs = 2\nlearning_rate = 1e-3\nlogging_steps = 4\neval_strategy = \"epoch\"\n");
    let out_dir = f.root.join("events");
    let out = Command::new(env!("CARGO_BIN_EXE_accel"))
        .args(["train", "--config", cfg_path.to_str().unwrap(), "--output-dir", out_dir.to_str().unwrap()])
        .env("HF_HUB_OFFLINE", "1")
        .env("ACCEL_EVENTS", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("@accel-event "))
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let of = |kind: &str| events.iter().filter(|e| e["event"] == kind).cloned().collect::<Vec<_>>();
    assert_eq!(of("start").len(), 1);
    assert_eq!((of("start")[0]["total"].as_u64(), of("start")[0]["done"].as_u64()), (Some(16), Some(0)));
    let steps: Vec<u64> = of("step").iter().map(|e| e["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=16).collect::<Vec<u64>>());
    let logged: Vec<serde_json::Value> = of("log").iter().map(|e| e["record"].clone()).collect();
    assert_eq!(logged, self::logged(&out_dir));
    let results = &of("results")[0]["metrics"];
    assert_eq!(results["global_step"], 16);
    let last_eval = logged.iter().rev().find(|r| r.get("eval_accuracy").is_some()).unwrap();
    assert_eq!(results["eval_accuracy"], last_eval["eval_accuracy"]);
    assert!(stdout.contains("validation: accuracy"), "the human lines stay: {stdout}");
}

/// `accel config --print` on the main job's config: the value of `key` and its source, with
/// `args` after the config and `env` set for the command.
fn printed(key: &str, args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/mrpc.toml");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_accel"));
    cmd.args(["config", "--print", "--config", config.to_str().unwrap()]).args(args);
    for var in
        ["ACCEL_DATA_DIR", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_STEP_ID", "SLURM_CPUS_PER_TASK", "RAYON_NUM_THREADS"]
    {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The print is a config that loads as the run it describes.
    toml::from_str::<toml::Table>(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let (section, name) = key.rsplit_once('.').unwrap_or(("", key));
    let mut current = "";
    for line in text.lines() {
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = s;
        } else if current == section {
            let (setting, source) = line.split_once(" # ").unwrap_or((line, ""));
            let setting = setting.trim().trim_start_matches("# ");
            let left = setting.split([' ', '=']).next().unwrap_or("");
            if left == name {
                let value = setting.split_once(" = ").map_or("(unset)", |(_, v)| v).trim();
                return (value.to_string(), source.trim().to_string());
            }
        }
    }
    panic!("{key} is not in the print:\n{text}")
}

#[test]
fn config_print_marks_defaults() {
    assert_eq!(printed("adam_beta2", &[], &[]), ("0.999".into(), "default".into()));
    assert_eq!(printed("data.max_length", &[], &[]), ("(unset)".into(), "default".into()));
}

#[test]
fn config_print_marks_the_file_and_line() {
    let (value, source) = printed("learning_rate", &[], &[]);
    assert_eq!(value, "0.00005");
    assert!(source.ends_with("configs/mrpc.toml:8"), "{source}");
    let (value, source) = printed("model.name_or_path", &[], &[]);
    assert_eq!(value, "\"all-MiniLM-L6-v2\"");
    assert!(source.ends_with("configs/mrpc.toml:23"), "{source}");
}

#[test]
fn config_print_marks_set_overrides_the_last_one_winning() {
    let args = ["--set", "data.max_length=64", "--set", "data.max_length=96"];
    assert_eq!(printed("data.max_length", &args, &[]), ("96".into(), "--set data.max_length=96".into()));
}

#[test]
fn config_print_marks_flags_over_set_and_file() {
    let args = ["--set", "seed=1", "--seed", "7", "--mixed-precision", "bf16"];
    assert_eq!(printed("seed", &args, &[]), ("7".into(), "--seed".into()));
    assert_eq!(printed("mixed_precision", &args, &[]), ("\"bf16\"".into(), "--mixed-precision".into()));
    // accel train --print-config prints the same and trains nothing.
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/mrpc.toml");
    let (out, err, ok) = accel(&["train", "--config", config.to_str().unwrap(), "--seed", "7", "--print-config"]);
    assert!(ok && out.contains("seed = 7") && out.contains("# --seed"), "{out}{err}");
}

#[test]
fn config_print_marks_the_environment() {
    let env = [("ACCEL_DATA_DIR", "/data/glue-here")];
    assert_eq!(
        printed("data.data_dir", &[], &env),
        ("\"/data/glue-here\"".into(), "environment ACCEL_DATA_DIR".into())
    );
    // A value the file or the command line sets wins over the environment's.
    let args = ["--set", "data.data_dir=\"/mine\""];
    assert_eq!(printed("data.data_dir", &args, &env), ("\"/mine\"".into(), "--set data.data_dir=\"/mine\"".into()));
}

#[test]
fn config_print_marks_what_slurm_supplies() {
    let env = [("SLURM_NTASKS", "4")];
    assert_eq!(printed("launch.nproc", &[], &env), ("4".into(), "Slurm SLURM_NTASKS".into()));
    // A hostfile's slots are the ranks: the allocation's count does not apply.
    let args = ["--set", "launch.hostfile=\"hosts\""];
    assert_eq!(printed("launch.nproc", &args, &env), ("(unset)".into(), "default".into()));
}

/// A float label column makes a regression (as in run_glue): one output, mean squared error,
/// Pearson and Spearman; the saved config says `problem_type = "regression"`, and eval and predict
/// read it back as a regression.
#[test]
fn float_labels_train_a_regression_head() {
    let f = fixture();
    // The tiny task's 0/1 labels become similarity scores around 0.5 and 4.5.
    let to_scores = |path: &Path| {
        let text = std::fs::read_to_string(path).unwrap();
        let mut lines = text.lines();
        let mut out = String::from("sentence1,sentence2,score\n");
        lines.next();
        for (i, line) in lines.enumerate() {
            let (pair, label) = line.rsplit_once(',').unwrap();
            let score = if label == "1" { 4.5 } else { 0.5 } + (i % 5) as f64 * 0.1;
            out.push_str(&format!("{pair},{score:.1}\n"));
        }
        let scored = path.with_extension("scores.csv");
        std::fs::write(&scored, out).unwrap();
        scored
    };
    let (train, validation) = (to_scores(&f.train), to_scores(&f.validation));
    let q = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    let cfg_path = f.root.join("regression.toml");
    let out_dir = f.root.join("regression");
    std::fs::write(
        &cfg_path,
        format!(
            "output_dir = {}\nnum_train_epochs = 3\nlearning_rate = 1e-2\nlogging_steps = 4\nsave_strategy = \"no\"\neval_strategy = \"epoch\"\n\
             [data]\ntrain_file = {}\nvalidation_file = {}\ntext_columns = [\"sentence1\", \"sentence2\"]\nlabel_column = \"score\"\n\
             [model]\nname_or_path = {}\n",
            q(&out_dir),
            q(&train),
            q(&validation),
            q(&f.model)
        ),
    )
    .unwrap();
    // The tiny model carries a two-label head: refused with the key that allows it, then allowed.
    let (_, err, ok) = accel(&["train", "--config", cfg_path.to_str().unwrap()]);
    assert!(!ok && err.contains("classifier.weight") && err.contains("ignore_mismatched_sizes"), "{err}");
    let (out, err, ok) =
        accel(&["train", "--config", cfg_path.to_str().unwrap(), "--set", "model.ignore_mismatched_sizes=true"]);
    assert!(ok, "{err}");
    assert!(
        err.contains("initialized afresh") && err.contains("classifier.weight: checkpoint [2, 16], model [1, 16]"),
        "{err}"
    );
    assert!(out.contains("validation: loss") && out.contains("pearson") && out.contains("spearmanr"), "{out}");
    let losses = step_losses(&out_dir);
    assert!(losses.last().unwrap().1 < losses[0].1 / 2.0, "the squared error falls: {losses:?}");
    let evals: Vec<serde_json::Value> =
        logged(&out_dir).into_iter().filter(|r| r.get("eval_pearson").is_some()).collect();
    assert_eq!(evals.len(), 3);
    let saved = common::read_json(&out_dir.join("config.json"));
    assert_eq!(saved["problem_type"], "regression");
    assert_eq!(saved["id2label"], serde_json::json!({"0": "LABEL_0"}));

    let (out, err, ok) = eval_on_files(&out_dir, &train, &validation, &["--set", "data.label_column=\"score\""]);
    assert!(ok, "{err}");
    assert!(out.contains("validation (32 rows): loss") && out.contains("pearson"), "{out}");
    let (out, err, ok) =
        accel(&["predict", "--model", out_dir.to_str().unwrap(), "--text", "the cat sits", "--text-pair", "the dog"]);
    assert!(ok, "{err}");
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(line["score"].as_f64().is_some_and(f64::is_finite), "{line}");

    // Classes named for a regression, and an unknown problem type, are refused naming the key (and
    // for the problem type, the values it may take).
    let err = Trainer::new(
        config(
            &f,
            "bad",
            &[
                &format!("data.train_file={}", q(&train)),
                "data.label_column=\"score\"",
                "data.problem_type=\"regression\"",
            ],
        ),
        &SingleProcess,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("data.label_names") && err.contains("regression"), "{err}");
    let err = try_config(&f, "bad", &["data.problem_type=\"ranking\""]).unwrap_err().to_string();
    assert!(err.contains("data.problem_type") && err.contains("ranking") && err.contains("`regression`"), "{err}");
}

/// `accel test` runs every check on this machine and says which passed; without mpirun on PATH the
/// rank check is skipped with the reason, and the run still succeeds.
#[test]
fn accel_test_reports_each_check() {
    let (out, err, ok) = accel(&["test"]);
    assert!(ok, "{out}\n{err}");
    for name in ["one process", "resume", "saved model", "curves and TensorBoard", "bf16", "2 ranks"] {
        assert!(out.contains(&format!("{name}: ")), "{name} missing: {out}");
    }
    assert!(out.contains(" 0 failed") && !out.contains("FAIL"), "{out}");
    assert!(out.contains("ok    one process") && out.contains("ok    resume"), "{out}");

    let out = Command::new(env!("CARGO_BIN_EXE_accel"))
        .args(["test", "--nproc", "2"])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("skip  2 ranks: no mpirun on PATH"), "{text}");
}

/// The devices a test can run on here: the CPU, and the first GPU where there is one.
fn devices() -> Vec<(&'static str, candle_core::Device)> {
    let mut out = vec![("cpu", candle_core::Device::Cpu)];
    match accel::device::gpu_unavailable() {
        None => out.push(("cuda:0", accel::device::DeviceSpec::Cuda(Some(0)).resolve(0).unwrap())),
        Some(why) => eprintln!("not on a GPU: {why}"),
    }
    out
}

/// The configured device is the one place tensors live: the trainer's model, and in a step built
/// from the same pieces the batch, logits, loss, every gradient, the optimizer state and the
/// updated weights.
#[test]
fn every_tensor_of_a_step_lives_on_the_configured_device() {
    use accel::data::{DataCollatorWithPadding, PairTokenizer};
    use accel::model::Model;
    use accel::optim::{AdamW, AdamWConfig};
    use accel::train::{optimizer_step, Gradients};
    use candle_core::Tensor;

    let f = fixture();
    for (name, device) in devices() {
        let on = |what: &str, t: &Tensor| {
            assert!(t.device().same_device(&device), "{what} is on {:?}, not {name}", t.device().location())
        };
        let device_key = format!("device=\"{name}\"");
        let mut trainer = Trainer::new(config(&f, name, &[&device_key, "max_steps=2"]), &SingleProcess).unwrap();
        assert!(trainer.device().same_device(&device), "the trainer chose {:?}", trainer.device().location());
        trainer.train().unwrap();
        for (p, var) in trainer.model().params().iter() {
            on(p, var.as_tensor());
        }

        let cfg = config(&f, "unused", &[]);
        let task = accel::data::load_task(&cfg.data, &accel::data::Sources::isolated(f.root.join("hub"))).unwrap();
        let tokenizer = PairTokenizer::from_dir(&f.model).unwrap();
        let (splits, _) = task.tokenize(&tokenizer, None).unwrap();
        let collator = DataCollatorWithPadding::new(&tokenizer).unwrap().on(device.clone());
        let batch = collator.collate(splits.split("train").unwrap(), &[0, 1, 2, 3]).unwrap();
        for (what, t) in [("input_ids", &batch.input_ids), ("token_type_ids", &batch.token_type_ids)] {
            on(what, t);
        }
        on("attention_mask", &batch.attention_mask);
        on("labels", batch.labels.as_ref().unwrap());
        let (model, _) = Model::from_pretrained(&f.model, 2, 0, &device).unwrap();
        let params = model.params();
        let out = model.forward_train(&batch).unwrap();
        on("logits", &out.logits);
        on("loss", out.loss().unwrap());
        let mut grads = Gradients::new();
        grads.backward(out.loss().unwrap(), params).unwrap();
        for (p, var) in params.iter() {
            on(&format!("gradient of {p}"), grads.store().get(var.as_tensor()).unwrap());
        }
        let mut optimizer = AdamW::new(params, AdamWConfig::default()).unwrap();
        optimizer_step(&mut grads, &mut optimizer, 1e-3, Some(1.0), &SingleProcess).unwrap();
        for (p, var) in params.iter() {
            on(p, var.as_tensor());
        }
        for (p, location) in optimizer.state_locations() {
            assert_eq!(location, device.location(), "AdamW state of {p}");
        }
    }
}

/// On a GPU, where there is one: training with dropout gives the CPU's losses step by step (the
/// masks are drawn on the GPU from the same generator, so only rounding differs).
#[test]
fn training_on_the_gpu_follows_the_cpu_with_dropout() {
    let devices = devices();
    if devices.len() == 1 {
        eprintln!("training_on_the_gpu_follows_the_cpu_with_dropout did not run: no GPU");
        return;
    }
    let f = fixture();
    let run = |name: &str| {
        let device = format!("device=\"{name}\"");
        let out = format!("losses-{}", name.replace(':', "-"));
        Trainer::new(config(&f, &out, &[&device, "max_steps=6"]), &SingleProcess).unwrap().silent().train().unwrap();
        step_losses(&f.root.join(out))
    };
    let cpu = run("cpu");
    for (name, _) in &devices[1..] {
        let gpu = run(name);
        assert_eq!(gpu.len(), cpu.len());
        for ((step, a), (_, b)) in cpu.iter().zip(&gpu) {
            assert!((a - b).abs() <= 1e-3 * a.abs().max(1e-3), "step {step}: cpu {a}, {name} {b}");
        }
        eprintln!("{name}: losses {gpu:?}, cpu {cpu:?}");
    }
}

/// An unusable device is refused before anything trains, naming the key and the reason.
#[test]
fn a_gpu_device_without_a_gpu_is_refused_by_name() {
    let Some(why) = accel::device::gpu_unavailable() else {
        eprintln!("skipped: this machine has a GPU");
        return;
    };
    let f = fixture();
    let err = Trainer::new(config(&f, "cuda", &["device=\"cuda\""]), &SingleProcess).err().unwrap().to_string();
    assert!(err.contains("device") && err.contains(&why), "{err}");
    let err = "tpu".parse::<accel::device::DeviceSpec>().unwrap_err();
    assert!(err.contains("\"tpu\""), "{err}");
}

/// A train file alone and no evaluation asked for: the run trains, saves and exits 0 without an
/// evaluation (as transformers needs no eval dataset then). Asking for evaluation without the data
/// is refused before training starts, naming the keys, and writes nothing.
#[test]
fn a_train_file_alone_trains_without_evaluation() {
    let f = fixture();
    let write = |name: &str, head: &str| {
        let path = f.root.join(format!("{name}.toml"));
        let out = common::toml_path(&f.root.join(name));
        let body = format!(
            "output_dir = {out}\nmax_steps = 2\nper_device_train_batch_size = 8\nlogging_steps = 1\n{head}\
             [data]\ntrain_file = {}\ntext_columns = [\"sentence1\", \"sentence2\"]\n[model]\nname_or_path = {}\n",
            common::toml_path(&f.train),
            common::toml_path(&f.model)
        );
        std::fs::write(&path, body).unwrap();
        path
    };
    let path = write("train-only", "eval_strategy = \"no\"\nsave_strategy = \"no\"\n");
    let (out, err, ok) = accel(&["train", "--config", path.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("no validation split: not evaluated"), "{out}");
    assert!(f.root.join("train-only/model.safetensors").is_file());

    for (name, head) in [
        ("eval-epoch", "eval_strategy = \"epoch\"\n"),
        ("best", "eval_strategy = \"steps\"\neval_steps = 1\nsave_steps = 1\nload_best_model_at_end = true\n"),
    ] {
        let path = write(name, head);
        let (_, err, ok) = accel(&["train", "--config", path.to_str().unwrap()]);
        assert!(!ok, "{name}: trained without the data its evaluation needs");
        assert!(err.contains("config eval_strategy") && err.contains("data.validation_file"), "{name}: {err}");
        assert!(err.contains("[\"train\"]"), "{name}: the error names the splits there are: {err}");
        if name == "best" {
            assert!(err.contains("load_best_model_at_end"), "{err}");
        }
        assert!(!f.root.join(name).exists(), "{name}: refused after writing {}", f.root.join(name).display());
    }
}
