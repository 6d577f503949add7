//! Every model family through the `accel` binary, on real MRPC, with nothing but
//! `model.name_or_path` changed: training with evaluation, checkpoints and the run report; exact
//! resume; `accel eval`, `accel predict` and `accel estimate-memory` on what it wrote; and two
//! ranks (DDP through `accel verify`, and ZeRO-2 with a rank killed and the job restarted) agreeing
//! with one process. The models are the tiny ones of `tests/fixtures/models/`.

mod common;

use std::path::{Path, PathBuf};

use accel::model::{Model, ModelConfig};
use common::cli::{
    accel, assert_ok, assert_same_steps, eval_record, last_of_each_step, launch, max_abs_weight_diff, steps,
    worst_tensor_except, Run,
};
use common::{data_dir, read_json, toml_path};

/// One fixture of each family.
const FAMILIES: [&str; 7] = ["bert", "roberta", "xlm-roberta", "distilbert", "electra", "deberta-v2", "modernbert"];

fn fixture(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models").join(family)
}

/// A scratch folder with the data and cache variables the runs read.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ACCEL_DATA_DIR", data_dir().display().to_string()),
            ("ACCEL_CACHE_DIR", self.path("cache").display().to_string()),
        ]
    }

    /// Writes a config training `family` on MRPC into `name/`, with `extra` keys; returns its path.
    fn config(&self, family: &str, name: &str, extra: &str) -> PathBuf {
        let path = self.path(&format!("{name}.toml"));
        let text = format!(
            "output_dir = {}\nmax_steps = 6\nlearning_rate = 1e-3\nlogging_steps = 1\nseed = 7\n\
             per_device_eval_batch_size = 64\neval_strategy = \"steps\"\neval_steps = 6\n{extra}\n\
             [data]\ndataset = \"glue/mrpc\"\n[model]\nname_or_path = {}\n",
            toml_path(&self.path(name)),
            toml_path(&fixture(family))
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    fn accel(&self, args: &[&str]) -> Run {
        let env = self.env();
        accel(args, &env.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>())
    }

    /// `accel launch --nproc N ARGS...` with the variables `extra` besides the scratch's.
    fn launch_with(&self, nproc: usize, args: &[&str], extra: &[(&str, &str)]) -> Run {
        let env = self.env();
        let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend_from_slice(extra);
        launch(nproc, args, &all)
    }
}

#[test]
fn every_family_trains_on_mrpc_resumes_and_serves_eval_and_predict() {
    for family in FAMILIES {
        let s = Scratch::new();
        let body = "per_device_train_batch_size = 8\nsave_strategy = \"steps\"\nsave_steps = 3";
        let config = s.config(family, "run", body);
        let run = s.accel(&["train", "--config", config.to_str().unwrap()]);
        assert_ok(&run);
        let out = s.path("run");
        let saved = read_json(&out.join("config.json"));
        assert_eq!(saved["model_type"], read_json(&fixture(family).join("config.json"))["model_type"], "{family}");
        let report = read_json(&out.join("run_report.json"));
        assert!(report["mfu"].as_f64().is_some_and(|m| m > 0.0), "{family}: {report}");
        let eval = eval_record(&out);
        println!("{family}: 6 steps on MRPC in {:.1?}, validation {eval}", run.elapsed);

        // Resumed from step 3 in another folder: the same weights, bit for bit.
        let resumed = s.path("resumed");
        let checkpoint = out.join("checkpoint-3");
        let args =
            ["--output-dir", resumed.to_str().unwrap(), "--resume-from-checkpoint", checkpoint.to_str().unwrap()];
        assert_ok(&s.accel(&[&["train", "--config", config.to_str().unwrap()][..], &args].concat()));
        let diff = max_abs_weight_diff(&resumed.join("model.safetensors"), &out.join("model.safetensors"));
        assert_eq!(diff, 0.0, "{family}: resuming from step 3 ends with the uninterrupted run's weights");

        // `accel eval` on the saved model gives the run's last evaluation.
        let run = s.accel(&["eval", "--model", out.to_str().unwrap(), "glue/mrpc"]);
        assert_ok(&run);
        let accuracy = format!("{:.4}", eval["eval_accuracy"].as_f64().unwrap());
        assert!(run.stdout.contains(&accuracy), "{family}: eval says {} and the run {accuracy}", run.stdout);

        let run = s.accel(&[
            "predict",
            "--model",
            out.to_str().unwrap(),
            "--text",
            "The company said profits rose.",
            "--text-pair",
            "Profits went up, the company said.",
        ]);
        assert_ok(&run);
        let prediction: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
        let p: f64 = prediction["probabilities"].as_object().unwrap().values().map(|v| v.as_f64().unwrap()).sum();
        assert!((p - 1.0).abs() < 1e-5, "{family}: {prediction}");

        let run = s.accel(&["estimate-memory", "--model", fixture(family).to_str().unwrap(), "--batch", "8"]);
        assert_ok(&run);
        assert!(run.stdout.contains("| fp32 |") && run.stdout.contains("| bf16 |"), "{family}: {}", run.stdout);
        // The estimate counts the parameters transformers saved, from config.json alone.
        let weights =
            candle_core::safetensors::load(fixture(family).join("model.safetensors"), &candle_core::Device::Cpu)
                .unwrap();
        let count: usize = weights.values().map(|t| t.elem_count()).sum();
        let config = ModelConfig::from_file(fixture(family).join("config.json")).unwrap();
        assert_eq!(accel::train::memory::parameter_count(&config, 2).unwrap(), count as u64, "{family}");
    }
}

#[test]
fn every_family_trains_on_two_ranks_as_on_one() {
    for family in FAMILIES {
        let s = Scratch::new();
        // DDP: `accel verify` runs one process at the global batch, 2 ranks, and 2-fold accumulation.
        let config = s.config(family, "verify", "per_device_train_batch_size = 8");
        let run = s.accel(&["verify", "--config", config.to_str().unwrap(), "--steps", "4"]);
        assert_ok(&run);
        println!("{family}: {}", run.stdout.lines().last().unwrap_or_default());

        // ZeRO-2 on 2 ranks against one process, dropout on; rank 1 is killed after step 4, and the
        // launcher restarts the job from the checkpoint of step 3.
        let one = s.config(family, "one", "per_device_train_batch_size = 8\nsave_strategy = \"no\"");
        let saves = "save_strategy = \"steps\"\nsave_steps = 3";
        let two = s.config(family, "two", &format!("per_device_train_batch_size = 4\nzero_stage = 2\n{saves}"));
        assert_ok(&s.accel(&["train", "--config", one.to_str().unwrap()]));
        let run = s.launch_with(
            2,
            &["--max-restarts", "1", "train", "--config", two.to_str().unwrap()],
            &[("ACCEL_FAULT", "kill:1:4")],
        );
        assert_ok(&run);
        let restart = format!("restart 1 of 1: resuming from {} (step 3)", s.path("two/checkpoint-3").display());
        assert!(run.stderr.contains(&restart), "{family}: {}", run.stderr);
        assert_same_steps(&steps(&s.path("one")), &last_of_each_step(steps(&s.path("two"))), 1e-5);
        // Attention's key biases, whose exact gradient is zero, hold Adam-scaled rounding noise.
        let noise =
            Model::zero_gradient_parameters(&ModelConfig::from_file(fixture(family).join("config.json")).unwrap())
                .unwrap();
        let (a, b) = (s.path("two/model.safetensors"), s.path("one/model.safetensors"));
        let (name, per_tensor) = worst_tensor_except(&a, &b, &noise);
        println!("{family}: ZeRO-2 on 2 ranks within {per_tensor:.1e} of one process (relative, per tensor; {name})");
        assert!(per_tensor < 1e-5, "{family}: {name} differs by {per_tensor:e}");
        let (a, b) = (eval_record(&s.path("one")), eval_record(&s.path("two")));
        assert_eq!(a["eval_accuracy"], b["eval_accuracy"], "{family}");
    }
}
