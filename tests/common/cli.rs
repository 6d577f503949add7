//! Running the `accel` binary as a user does, and reading what its runs wrote: logs, metrics and
//! weights, with the comparisons the multi-process and family tests make.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};

pub struct Run {
    pub stdout: String,
    pub stderr: String,
    pub code: Option<i32>,
    pub elapsed: Duration,
}

/// The binary under test: this build's, or ACCEL_BIN's (scripts/gpu-check.sh runs these tests
/// from a bundle, on a machine where the build's path does not exist).
pub fn accel_bin() -> PathBuf {
    std::env::var_os("ACCEL_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_accel")), PathBuf::from)
}

pub fn accel(args: &[&str], env: &[(&str, &str)]) -> Run {
    let started = Instant::now();
    let mut cmd = Command::new(accel_bin());
    cmd.args(args).env("HF_HUB_OFFLINE", "1").env("RAYON_NUM_THREADS", "1").env_remove("ACCEL_FAULT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    Run {
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
        code: out.status.code(),
        elapsed: started.elapsed(),
    }
}

/// `accel launch --nproc N [--oversubscribe] COMMAND...` (more ranks than this machine's cores
/// need oversubscription).
pub fn launch(nproc: usize, command: &[&str], env: &[(&str, &str)]) -> Run {
    let n = nproc.to_string();
    let mut args = vec!["launch", "--nproc", &n];
    let cores = accel_launch::cores::cores_available();
    if nproc > cores {
        args.push("--oversubscribe");
    }
    args.extend(command);
    accel(&args, env)
}

pub fn records(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// (step, loss, grad_norm) of every training log record.
pub fn steps(dir: &Path) -> Vec<(u64, f64, f64)> {
    records(dir)
        .iter()
        .filter(|r| r.get("loss").is_some())
        .map(|r| (r["step"].as_u64().unwrap(), r["loss"].as_f64().unwrap(), r["grad_norm"].as_f64().unwrap()))
        .collect()
}

pub fn eval_record(dir: &Path) -> serde_json::Value {
    records(dir).into_iter().rev().find(|r| r.get("eval_accuracy").is_some()).expect("an evaluation record")
}

pub fn weights(path: &Path) -> HashMap<String, Vec<f32>> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t): (String, Tensor)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

/// The largest |a - b| / max(|b|, 1e-3) over all weights.
pub fn max_rel_weight_diff(a: &Path, b: &Path) -> f64 {
    let (a, b) = (weights(a), weights(b));
    assert_eq!(a.len(), b.len());
    let mut worst = 0f64;
    for (name, x) in &a {
        let y = &b[name];
        for (&p, &q) in x.iter().zip(y) {
            worst = worst.max(f64::from((p - q).abs()) / f64::from(q.abs()).max(1e-3));
        }
    }
    worst
}

/// The largest ||a - b|| / max(||b||, 1e-3) over the weight tensors. The floor is for the attention
/// key biases: softmax ignores a shift shared by a row's scores, so their exact gradient is zero
/// and they hold only rounding noise (norms near 1e-9).
pub fn max_tensor_rel_diff(a: &Path, b: &Path) -> f64 {
    worst_tensor(a, b).1
}

/// The tensor of [`max_tensor_rel_diff`] and its difference.
pub fn worst_tensor(a: &Path, b: &Path) -> (String, f64) {
    worst_tensor_except(a, b, &[])
}

/// [`worst_tensor`] leaving out the tensors named in `skip`.
pub fn worst_tensor_except(a: &Path, b: &Path, skip: &[String]) -> (String, f64) {
    let (a, b) = (weights(a), weights(b));
    let mut worst = (String::new(), 0f64);
    for (name, x) in a.iter().filter(|(name, _)| !skip.contains(name)) {
        let y = &b[name];
        let diff: f64 = x.iter().zip(y).map(|(&p, &q)| f64::from(p - q).powi(2)).sum::<f64>().sqrt();
        let norm: f64 = y.iter().map(|&q| f64::from(q).powi(2)).sum::<f64>().sqrt();
        if diff / norm.max(1e-3) > worst.1 {
            worst = (name.clone(), diff / norm.max(1e-3));
        }
    }
    worst
}

pub fn assert_same_trace(one: &Path, two: &Path, tol: f64) {
    assert_same_steps(&steps(one), &steps(two), tol);
}

/// The last record of each step: a job restarted from a checkpoint logs again the steps it lost.
pub fn last_of_each_step(mut trace: Vec<(u64, f64, f64)>) -> Vec<(u64, f64, f64)> {
    trace.reverse();
    let mut seen = std::collections::HashSet::new();
    trace.retain(|s| seen.insert(s.0));
    trace.reverse();
    trace
}

/// Two traces of (step, loss, grad_norm) with the same steps, losses and norms within `tol` (relative).
pub fn assert_same_steps(a: &[(u64, f64, f64)], b: &[(u64, f64, f64)], tol: f64) {
    assert_eq!(a.len(), b.len(), "{a:?}\n{b:?}");
    for ((s1, l1, g1), (s2, l2, g2)) in a.iter().zip(b) {
        assert_eq!(s1, s2);
        assert!(super::rel_diff(*l2, *l1) < tol, "step {s1}: loss {l1} vs {l2}");
        assert!(super::rel_diff(*g2, *g1) < tol, "step {s1}: grad norm {g1} vs {g2}");
    }
}

pub fn assert_ok(run: &Run) {
    assert_eq!(run.code, Some(0), "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
}

/// The largest |a - b| over all weights.
pub fn max_abs_weight_diff(a: &Path, b: &Path) -> f64 {
    let (a, b) = (weights(a), weights(b));
    assert_eq!(a.len(), b.len());
    a.iter().flat_map(|(name, x)| x.iter().zip(&b[name]).map(|(&p, &q)| f64::from((p - q).abs()))).fold(0.0, f64::max)
}

/// The last record of a run that has `key` (`eval_f1`: its last evaluation).
pub fn last_record_with(dir: &Path, key: &str) -> serde_json::Value {
    records(dir).into_iter().rev().find(|r| r.get(key).is_some()).unwrap_or_else(|| panic!("no record with {key}"))
}

/// A record's number at `key`.
pub fn number(record: &serde_json::Value, key: &str) -> f64 {
    record[key].as_f64().unwrap_or_else(|| panic!("{key} missing from {record}"))
}

/// Two runs of the same global batches (other processes, batch sizes or accumulation): the same
/// losses and gradient norms, weights within 1e-5 per tensor (but `noise`, the parameters whose
/// exact gradient is zero), the same `keys` in their last evaluation and its loss within 1e-5.
pub fn assert_same_run(one: &Path, other: &Path, noise: &[String], keys: &[&str]) {
    assert_same_trace(one, other, 1e-5);
    let (name, diff) = worst_tensor_except(&one.join("model.safetensors"), &other.join("model.safetensors"), noise);
    assert!(diff < 1e-5, "{}: {name} differs by {diff:e} (relative norm)", other.display());
    let (a, b) = (last_record_with(one, "eval_loss"), last_record_with(other, "eval_loss"));
    for key in keys {
        assert_eq!(a[key], b[key], "{}: {key}", other.display());
    }
    assert!(super::rel_diff(number(&b, "eval_loss"), number(&a, "eval_loss")) < 1e-5);
}

/// A run resumed from `whole`'s checkpoint of step `from` ends where `whole` did: the same steps
/// after `from`, and the same weights (but `noise`).
pub fn assert_resumed_as_whole(whole: &Path, resumed: &Path, from: u64, noise: &[String]) {
    let after: Vec<_> = steps(whole).into_iter().filter(|s| s.0 > from).collect();
    assert_same_steps(&after, &steps(resumed), 1e-5);
    let (name, diff) = worst_tensor_except(&whole.join("model.safetensors"), &resumed.join("model.safetensors"), noise);
    assert!(diff < 1e-5, "resumed: {name} differs by {diff:e}");
}

/// The last evaluation record of a run (one with `eval_f1`).
pub fn last_evaluation(dir: &Path) -> serde_json::Value {
    last_record_with(dir, "eval_f1")
}
