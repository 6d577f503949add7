//! `accel verify`: does this config's result depend on the number of processes? It trains the
//! config for a few steps three ways, dropout on and the same seed: one process at the global batch,
//! N ranks (`accel launch --nproc N`), and one process with N times the accumulation. Each step's
//! rows and dropout masks are the same in the three, so their losses, gradient norms and weights
//! must agree to rounding. Prints the largest differences per step and of the final weights, and
//! fails above a tolerance. Parameters whose exact gradient is zero (attention's key biases: softmax
//! ignores a shift shared by a row's scores) are left out of the weights' comparison and named:
//! their gradients are rounding noise, which Adam scales to updates of about the learning rate, so
//! runs that add in another order move them differently.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};

use crate::train::TrainConfig;
use crate::{Error, Result};

/// One way of running the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Way {
    pub name: String,
    pub nproc: usize,
    pub batch: usize,
    pub accumulation: usize,
}

/// The three ways for `nproc` ranks of a config at per-device batch `batch` and accumulation
/// `accumulation`: the global batch on one process first (the reference).
pub fn ways(nproc: usize, batch: usize, accumulation: usize) -> [Way; 3] {
    let way = |nproc: usize, batch: usize, accumulation: usize| Way {
        name: format!("{nproc}x{batch}x{accumulation}"),
        nproc,
        batch,
        accumulation,
    };
    [way(1, batch * nproc, accumulation), way(nproc, batch, accumulation), way(1, batch, accumulation * nproc)]
}

/// (step, loss, grad_norm) of each logged training record of a run folder.
pub fn logged_steps(dir: &Path) -> Result<Vec<(u64, f64, f64)>> {
    let path = dir.join(crate::report::METRICS_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let r: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::data(&path, Some(n + 1), format!("not a JSON record: {e}")))?;
        if let (Some(step), Some(loss), Some(norm)) = (r["step"].as_u64(), r["loss"].as_f64(), r["grad_norm"].as_f64())
        {
            out.push((step, loss, norm));
        }
    }
    Ok(out)
}

/// The largest |a - b| over the weights of two model files, leaving out those named in `skip`.
pub fn max_weight_difference(a: &Path, b: &Path, skip: &[String]) -> Result<f64> {
    let load = |p: &Path| -> Result<HashMap<String, Vec<f32>>> {
        candle_core::safetensors::load(p, &Device::Cpu)?
            .into_iter()
            .map(|(k, t): (String, Tensor)| Ok((k, t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?)))
            .collect()
    };
    let (a_w, b_w) = (load(a)?, load(b)?);
    let mut worst = 0f64;
    for (name, x) in a_w.iter().filter(|(name, _)| !skip.contains(name)) {
        let y = b_w.get(name).ok_or_else(|| Error::Msg(format!("{} has no {name}", b.display())))?;
        for (p, q) in x.iter().zip(y) {
            worst = worst.max(f64::from((p - q).abs()));
        }
    }
    Ok(worst)
}

/// One step compared: the reference's loss, and each other way's |loss difference| and
/// |grad-norm difference|.
pub type StepDifferences = (u64, f64, Vec<(f64, f64)>);

/// What the comparison found.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub steps: Vec<StepDifferences>,
    /// Each other way's largest weight difference.
    pub weights: Vec<f64>,
    /// The parameters left out of the weights' comparison (their exact gradient is zero).
    pub skipped: Vec<String>,
}

impl Comparison {
    /// The largest difference of all.
    pub fn worst(&self) -> f64 {
        let steps = self.steps.iter().flat_map(|(_, _, d)| d.iter().flat_map(|(l, g)| [*l, *g]));
        steps.chain(self.weights.iter().copied()).fold(0.0, f64::max)
    }
}

/// Compares the runs in `dirs` (the reference first).
pub fn compare(dirs: &[PathBuf]) -> Result<Comparison> {
    let runs = dirs.iter().map(|d| logged_steps(d)).collect::<Result<Vec<_>>>()?;
    let reference = &runs[0];
    for (run, dir) in runs.iter().zip(dirs).skip(1) {
        if run.len() != reference.len() {
            return Err(Error::Msg(format!(
                "{} logged {} steps and {} {}: the runs did not take the same steps",
                dirs[0].display(),
                reference.len(),
                dir.display(),
                run.len()
            )));
        }
    }
    let steps = reference
        .iter()
        .enumerate()
        .map(|(i, &(step, loss, norm))| {
            let diffs = runs[1..].iter().map(|r| ((r[i].1 - loss).abs(), (r[i].2 - norm).abs())).collect();
            (step, loss, diffs)
        })
        .collect();
    let config = crate::model::ModelConfig::from_file(dirs[0].join("config.json"))?;
    let skipped = crate::model::Model::zero_gradient_parameters_for(config.task().unwrap_or_default(), &config)?;
    let model = |d: &PathBuf| d.join("model.safetensors");
    let weights = dirs[1..]
        .iter()
        .map(|d| max_weight_difference(&model(&dirs[0]), &model(d), &skipped))
        .collect::<Result<Vec<_>>>()?;
    Ok(Comparison { steps, weights, skipped })
}

/// What `accel verify` is asked.
pub struct Request<'a> {
    pub config: &'a Path,
    /// `--set` overrides for the run, passed on.
    pub overrides: &'a [String],
    pub cfg: &'a TrainConfig,
    pub nproc: usize,
    pub steps: usize,
    pub tolerance: f64,
    /// Where the three runs go.
    pub work: &'a Path,
}

/// Runs the three ways and compares them; prints the table; Ok(true) when within the tolerance.
pub fn run(req: &Request) -> Result<bool> {
    let exe = std::env::current_exe().map_err(|e| Error::Msg(format!("locating the accel executable: {e}")))?;
    let args = &req.cfg.args;
    let ways = ways(req.nproc, args.per_device_train_batch_size, args.gradient_accumulation_steps);
    let global = ways[0].batch * ways[0].accumulation;
    eprintln!(
        "accel verify: {} for {} steps three ways at a global batch of {global} (processes x rows x accumulation: {})",
        req.config.display(),
        req.steps,
        ways.iter().map(|w| w.name.as_str()).collect::<Vec<_>>().join(", ")
    );
    let mut dirs = Vec::new();
    for way in &ways {
        let dir = req.work.join(&way.name);
        let mut cmd = Command::new(&exe);
        if way.nproc > 1 {
            let cores = accel_launch::cores::cores_available();
            cmd.args(["launch", "--nproc", &way.nproc.to_string()]);
            if way.nproc > cores {
                cmd.arg("--oversubscribe");
            }
        }
        cmd.args(["train", "--config"]).arg(req.config);
        for o in req.overrides {
            cmd.args(["--set", o]);
        }
        for o in [
            format!("max_steps={}", req.steps),
            "eval_strategy=\"no\"".into(),
            "save_strategy=\"no\"".into(),
            "logging_steps=1".into(),
            "load_best_model_at_end=false".into(),
            "report_to=\"none\"".into(),
        ] {
            cmd.args(["--set", &o]);
        }
        cmd.args(["--output-dir"]).arg(&dir);
        cmd.args(["--per-device-train-batch-size", &way.batch.to_string()]);
        cmd.args(["--gradient-accumulation-steps", &way.accumulation.to_string()]);
        let _ = std::fs::remove_dir_all(&dir);
        eprintln!(
            "accel verify: running {} ({} process{})",
            way.name,
            way.nproc,
            if way.nproc == 1 { "" } else { "es" }
        );
        let out = cmd.output().map_err(|e| Error::Msg(format!("running {}: {e}", exe.display())))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
            return Err(Error::Msg(format!("the {} run failed ({}):\n{}", way.name, out.status, tail.join("\n"))));
        }
        dirs.push(dir);
    }
    let cmp = compare(&dirs)?;
    let others: Vec<&str> = ways[1..].iter().map(|w| w.name.as_str()).collect();
    let mut head = format!("{:>5} {:>12}", "step", format!("loss {}", ways[0].name));
    for o in &others {
        head.push_str(&format!(" {:>16} {:>16}", format!("|dloss| {o}"), format!("|dnorm| {o}")));
    }
    println!("{head}");
    for (step, loss, diffs) in &cmp.steps {
        let mut line = format!("{step:>5} {loss:>12.6}");
        for (l, g) in diffs {
            line.push_str(&format!(" {l:>16.2e} {g:>16.2e}"));
        }
        println!("{line}");
    }
    let weights: Vec<String> = others.iter().zip(&cmp.weights).map(|(o, w)| format!("{o} {w:.2e}")).collect();
    println!("largest weight difference from {}: {}", ways[0].name, weights.join(", "));
    if let Some(first) = cmp.skipped.first() {
        println!(
            "not compared: {} parameters whose exact gradient is zero ({first}, ...: softmax ignores a shift shared by \
             a row's scores, so their updates are rounding noise scaled by Adam)",
            cmp.skipped.len()
        );
    }
    let worst = cmp.worst();
    let ok = worst <= req.tolerance;
    println!(
        "verify: {} (largest difference {worst:.2e}, tolerance {:.0e})",
        if ok { "passed" } else { "FAILED" },
        req.tolerance
    );
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_ways_keep_the_global_batch() {
        let [one, many, accumulated] = ways(2, 4, 1);
        assert_eq!((one.nproc, one.batch, one.accumulation), (1, 8, 1));
        assert_eq!((many.nproc, many.batch, many.accumulation), (2, 4, 1));
        assert_eq!((accumulated.nproc, accumulated.batch, accumulated.accumulation), (1, 4, 2));
        assert_eq!(many.name, "2x4x1");
    }
}
