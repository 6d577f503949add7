//! `accel test`: a short end-to-end run of this installation on a tiny model (training, checkpoints
//! and resuming, a saved model's evaluation, curves and TensorBoard, bf16, several ranks through
//! mpirun, and the GPU where there is one) that says plainly what works and what was skipped, as
//! `accelerate test` does.

pub mod fixture;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::data::Sources;
use crate::distributed::SingleProcess;
use crate::kernels::{Autocast, MixedPrecision};
use crate::model::FineTunedClassifier;
use crate::report::tensorboard::read_events;
use crate::train::eval::predict;
use crate::train::{metrics, TrainConfig, Trainer};
use crate::{Error, Result};

/// Optimizer steps of each test run, and the rows of the tiny task.
const STEPS: usize = 8;
const TRAIN_ROWS: usize = 64;
const VALIDATION_ROWS: usize = 32;

/// How one check ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Passed(String),
    Skipped(String),
    Failed(String),
}

/// A check's name and outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub name: String,
    pub outcome: Outcome,
}

/// What `accel test` runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Ranks for the multi-process check (0 or 1: skip it).
    pub nproc: usize,
    /// Where the runs go (a fresh temporary folder when `None`, removed afterwards).
    pub dir: Option<PathBuf>,
}

/// The folder the checks share: the tiny model, its task, and the configs written for it.
struct Bench {
    root: PathBuf,
    model: PathBuf,
    train: PathBuf,
    validation: PathBuf,
}

impl Bench {
    fn new(root: &Path) -> Result<Self> {
        // A kept folder from an earlier `accel test --dir` would add its logs and event files.
        for entry in std::fs::read_dir(root).map_err(|e| Error::io(root, e))? {
            let path = entry.map_err(|e| Error::io(root, e))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let ours =
                ["single", "resumed", "bf16", "gpu", "gpu-bf16"].contains(&name.as_str()) || name.starts_with("ranks-");
            if ours && path.is_dir() {
                std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
            }
        }
        let model = fixture::tiny_model_dir(&root.join("tiny-model"), 3)?;
        let (train, validation) = fixture::tiny_pair_task(root, TRAIN_ROWS, VALIDATION_ROWS)?;
        Ok(Self { root: root.to_path_buf(), model, train, validation })
    }

    /// The run config as TOML: evaluation and a checkpoint every 4 steps, logs every step,
    /// TensorBoard on, dropout on (the default), on the CPU unless `extra` names a device.
    fn toml(&self, out: &str, extra: &str) -> String {
        let q = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
        let device = if extra.contains("device =") { "" } else { "device = \"cpu\"\n" };
        format!(
            "output_dir = {}\nmax_steps = {STEPS}\nper_device_train_batch_size = 8\nlearning_rate = 1e-3\nlogging_steps = 1\n\
             eval_strategy = \"steps\"\neval_steps = 4\nsave_steps = 4\nreport_to = [\"tensorboard\"]\n{device}{extra}\
             [data]\ntrain_file = {}\nvalidation_file = {}\ntext_columns = [\"sentence1\", \"sentence2\"]\n\
             [model]\nname_or_path = {}\n",
            q(&self.root.join(out)),
            q(&self.train),
            q(&self.validation),
            q(&self.model)
        )
    }

    fn config(&self, out: &str, extra: &str) -> Result<TrainConfig> {
        let table: toml::Table = self.toml(out, extra).parse().map_err(|e| Error::Msg(format!("test config: {e}")))?;
        TrainConfig::from_table(table, "accel test")
    }
}

/// Runs every check and returns them in order. Errors are only for what stops all checks (the
/// temporary folder or the tiny model cannot be written).
pub fn run(options: &Options, mut on_check: impl FnMut(&Check)) -> Result<Vec<Check>> {
    let tmp;
    let root = match &options.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            dir.clone()
        }
        None => {
            tmp = tempfile::Builder::new()
                .prefix("accel-test-")
                .tempdir()
                .map_err(|e| Error::io("temporary folder", e))?;
            tmp.path().to_path_buf()
        }
    };
    let bench = Bench::new(&root)?;
    let mut checks = Vec::new();
    let mut record = |name: &str, outcome: Outcome| {
        let check = Check { name: name.to_string(), outcome };
        on_check(&check);
        checks.push(check);
    };
    let single = outcome(single_process(&bench));
    let single_ok = matches!(single, Outcome::Passed(_));
    record("one process", single);
    let dependent = |f: &dyn Fn(&Bench) -> Result<Outcome>| match single_ok {
        true => outcome(f(&bench)),
        false => Outcome::Skipped("the one-process run failed".into()),
    };
    record("resume", dependent(&resume));
    record("saved model", dependent(&saved_model));
    record("curves and TensorBoard", dependent(&reports));
    record("bf16", outcome(bf16(&bench)));
    let nproc = options.nproc;
    record(&format!("{nproc} ranks"), dependent(&|b| ranks(b, nproc)));
    record("GPU", dependent(&gpu));
    Ok(checks)
}

fn outcome(result: Result<Outcome>) -> Outcome {
    result.unwrap_or_else(|e| Outcome::Failed(e.to_string()))
}

/// The training losses logged in `dir/metrics.jsonl`, by step.
fn losses(dir: &Path) -> Result<Vec<(u64, f64)>> {
    let history = crate::report::History::read(dir)?;
    Ok(history.series.get("loss").map(|s| s.iter().map(|&(step, v)| (step as u64, v)).collect()).unwrap_or_default())
}

fn single_process(bench: &Bench) -> Result<Outcome> {
    let started = Instant::now();
    let out = Trainer::new(bench.config("single", "")?, &SingleProcess)?.silent().train()?;
    let dir = bench.root.join("single");
    let losses = losses(&dir)?;
    let kept = crate::train::checkpoint::list_checkpoints(&dir)?;
    let problems = [
        (out.global_step != STEPS, format!("ran {} steps, not {STEPS}", out.global_step)),
        (!out.training_loss.is_finite(), format!("the training loss is {}", out.training_loss)),
        (losses.len() != STEPS, format!("logged {} losses, not {STEPS}", losses.len())),
        (kept.len() != 2, format!("kept {} checkpoints, not 2", kept.len())),
        (!dir.join("model.safetensors").is_file(), "no final model.safetensors".to_string()),
    ];
    if let Some((_, problem)) = problems.iter().find(|(bad, _)| *bad) {
        return Ok(Outcome::Failed(problem.clone()));
    }
    let accuracy = out.eval_metrics.as_ref().and_then(|m| m.get("accuracy").copied()).unwrap_or(f64::NAN);
    Ok(Outcome::Passed(format!(
        "{STEPS} steps of the tiny model in {:.1} s: loss {:.4} -> {:.4}, eval accuracy {accuracy:.3}, checkpoints at 4 and 8",
        started.elapsed().as_secs_f64(),
        losses[0].1,
        losses[STEPS - 1].1
    )))
}

fn resume(bench: &Bench) -> Result<Outcome> {
    let first = bench.root.join("single");
    let checkpoint = first.join("checkpoint-4");
    let q = toml::Value::String(checkpoint.display().to_string()).to_string();
    let cfg = bench.config("resumed", &format!("resume_from_checkpoint = {q}\n"))?;
    Trainer::new(cfg, &SingleProcess)?.silent().train()?;
    let (a, b) = (losses(&first)?, losses(&bench.root.join("resumed"))?);
    let (a, b): (Vec<_>, Vec<_>) = (a.into_iter().filter(|(s, _)| *s > 4).collect(), b);
    if a != b {
        return Ok(Outcome::Failed(format!("steps 5-8 from checkpoint-4 logged {b:?}, the uninterrupted run {a:?}")));
    }
    Ok(Outcome::Passed("from checkpoint-4, steps 5-8 repeat the uninterrupted run's losses bit for bit".into()))
}

fn saved_model(bench: &Bench) -> Result<Outcome> {
    let dir = bench.root.join("single");
    let finetuned =
        FineTunedClassifier::load(&dir.display().to_string(), &Sources::from_env(), &candle_core::Device::Cpu)?;
    let task = crate::data::load_task(&bench.config("single", "")?.data, &Sources::from_env())?;
    let (splits, _) = task.tokenize(&finetuned.tokenizer, None)?;
    let validation = std::sync::Arc::new(splits.split("validation")?.clone());
    let collator = crate::data::DataCollatorWithPadding::new(&finetuned.tokenizer)?;
    let loaded = predict(&finetuned.model, validation, &collator, 16, &SingleProcess)?;
    let logged = crate::report::History::read(&dir)?;
    let last_accuracy = logged.series.get("eval_accuracy").and_then(|s| s.last()).map(|p| p.1);
    let accuracy = loaded.metrics(metrics::accuracy_only)["accuracy"];
    match last_accuracy {
        Some(a) if (a - accuracy).abs() < 1e-12 => Ok(Outcome::Passed(format!(
            "the final model folder loads and evaluates to the run's last accuracy ({accuracy:.3})"
        ))),
        other => Ok(Outcome::Failed(format!("the saved model evaluates to {accuracy}, the run logged {other:?}"))),
    }
}

fn reports(bench: &Bench) -> Result<Outcome> {
    let dir = bench.root.join("single");
    let curves = dir.join(crate::report::CURVES_FILE);
    let size = std::fs::metadata(&curves).map_err(|e| Error::io(&curves, e))?.len();
    let runs = dir.join("runs");
    let mut events = Vec::new();
    for entry in std::fs::read_dir(&runs).map_err(|e| Error::io(&runs, e))? {
        let run = entry.map_err(|e| Error::io(&runs, e))?.path();
        for file in std::fs::read_dir(&run).map_err(|e| Error::io(&run, e))? {
            events.extend(read_events(&file.map_err(|e| Error::io(&run, e))?.path())?);
        }
    }
    let tagged = |tag: &str| {
        events.iter().filter(|e| e.summary.as_ref().is_some_and(|s| s.value.iter().any(|v| v.tag == tag))).count()
    };
    let (loss, accuracy) = (tagged("train/loss"), tagged("eval/accuracy"));
    if loss != STEPS || accuracy != 2 {
        return Ok(Outcome::Failed(format!(
            "the event files hold {loss} train/loss and {accuracy} eval/accuracy scalars, not {STEPS} and 2"
        )));
    }
    Ok(Outcome::Passed(format!(
        "curves.png ({} KB) drawn; the TensorBoard events read back hold train/loss x{loss} and eval/accuracy x{accuracy}",
        size / 1024
    )))
}

fn bf16(bench: &Bench) -> Result<Outcome> {
    let autocast = match Autocast::new(MixedPrecision::Bf16, &Default::default()) {
        Ok(a) => a,
        Err(e) => return Ok(Outcome::Skipped(format!("{e}"))),
    };
    if let Some(why) = autocast.kept_f32() {
        return Ok(Outcome::Skipped(format!("products stay f32: {why}")));
    }
    Trainer::new(bench.config("bf16", "mixed_precision = \"bf16\"\n")?, &SingleProcess)?.silent().train()?;
    let (f32_losses, bf16_losses) = (losses(&bench.root.join("single"))?, losses(&bench.root.join("bf16"))?);
    let worst = worst_gap(&f32_losses, &bf16_losses);
    if bf16_losses.len() != STEPS || worst >= 1e-2 {
        return Ok(Outcome::Failed(format!("bf16 losses {bf16_losses:?} stray from f32's {f32_losses:?}")));
    }
    Ok(Outcome::Passed(format!("{}: {STEPS} steps within {worst:.1e} of f32's losses", autocast.describe())))
}

/// `accel launch --nproc N` of the same run at batch 8/N per rank: dropout follows each row's place
/// in the step's batch, so the losses are one process's up to rounding.
fn ranks(bench: &Bench, nproc: usize) -> Result<Outcome> {
    if nproc < 2 {
        return Ok(Outcome::Skipped("asked for fewer than 2 ranks".into()));
    }
    if !cfg!(feature = "mpi") {
        return Ok(Outcome::Skipped("this accel was built without the mpi feature".into()));
    }
    if !on_path("mpirun") {
        return Ok(Outcome::Skipped("no mpirun on PATH (install OpenMPI: apt install openmpi-bin)".into()));
    }
    if 8 % nproc != 0 {
        return Ok(Outcome::Skipped(format!("{nproc} ranks do not divide the test's batch of 8")));
    }
    let out = format!("ranks-{nproc}");
    let path = bench.root.join(format!("{out}.toml"));
    let text = bench
        .toml(&out, "")
        .replace("per_device_train_batch_size = 8", &format!("per_device_train_batch_size = {}", 8 / nproc));
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    let exe = std::env::current_exe().map_err(|e| Error::io("the accel executable", e))?;
    let started = Instant::now();
    let n = nproc.to_string();
    let result = Command::new(&exe)
        .args(["launch", "--nproc", &n, "--oversubscribe", "train", "--config"])
        .arg(&path)
        .output()
        .map_err(|e| Error::io(&exe, e))?;
    if !result.status.success() {
        let stderr = String::from_utf8_lossy(&result.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Ok(Outcome::Failed(format!("accel launch --nproc {nproc} failed: {}", tail.join(" | "))));
    }
    let (one, many) = (losses(&bench.root.join("single"))?, losses(&bench.root.join(out))?);
    let worst = worst_gap(&one, &many);
    if many.len() != STEPS || worst >= 1e-5 {
        return Ok(Outcome::Failed(format!("{nproc} ranks logged {many:?}, one process {one:?}")));
    }
    Ok(Outcome::Passed(format!(
        "accel launch --nproc {nproc} (mpirun) in {:.1} s: the losses of one process at the same global batch, within {worst:.1e}",
        started.elapsed().as_secs_f64()
    )))
}

/// The same run on the first GPU, in f32 and in bf16: the CPU's losses within 1e-3 (dropout masks
/// are drawn on the GPU from the same generator) and 1e-2.
fn gpu(bench: &Bench) -> Result<Outcome> {
    if let Some(why) = crate::device::gpu_unavailable() {
        return Ok(Outcome::Skipped(why));
    }
    let started = Instant::now();
    let cpu = losses(&bench.root.join("single"))?;
    let mut found = Vec::new();
    for (out, extra, tolerance) in [
        ("gpu", "device = \"cuda:0\"\n", 1e-3),
        ("gpu-bf16", "device = \"cuda:0\"\nmixed_precision = \"bf16\"\n", 1e-2),
    ] {
        Trainer::new(bench.config(out, extra)?, &SingleProcess)?.silent().train()?;
        let got = losses(&bench.root.join(out))?;
        let worst = worst_gap(&cpu, &got);
        if got.len() != STEPS || worst >= tolerance {
            return Ok(Outcome::Failed(format!("{out}: losses {got:?}, the CPU's {cpu:?}")));
        }
        found.push(worst);
    }
    let name = crate::device::report().into_iter().find(|(k, _)| k == "cuda:0").map(|(_, v)| v).unwrap_or_default();
    Ok(Outcome::Passed(format!(
        "{name}: {STEPS} steps within {:.1e} of the CPU's losses in f32 and {:.1e} in bf16 ({:.1} s)",
        found[0],
        found[1],
        started.elapsed().as_secs_f64()
    )))
}

/// The largest relative difference between two loss curves; infinite when their steps differ or a
/// loss is not finite.
fn worst_gap(a: &[(u64, f64)], b: &[(u64, f64)]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| match x.0 == y.0 && x.1.is_finite() && y.1.is_finite() {
            true => ((x.1 - y.1) / x.1).abs(),
            false => f64::INFINITY,
        })
        .fold(0.0, f64::max)
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}
