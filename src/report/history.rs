//! A run's log history as series over optimizer steps, read from the records the trainer logs
//! (`metrics.jsonl` in a run folder, or `log_history` in a checkpoint's `trainer_state.json`, which
//! is also where transformers' Trainer keeps it).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::{Error, Result};

/// The file a run appends every logged record to, one JSON object per line.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// Keys of a record that are bookkeeping or end-of-run summaries, not curves; and endings of keys
/// that time things (`eval_runtime`, `eval_samples_per_second`, `eval_model_preparation_time`).
const NOT_CURVES: &[&str] = &["step", "epoch", "train_loss", "total_flos"];
const TIMING_SUFFIXES: &[&str] = &["runtime", "per_second", "preparation_time"];

/// Points `(step, value)` of one logged quantity, in step order.
pub type Series = Vec<(f64, f64)>;

/// One run's curves.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// What the run is called in legends: its folder's name.
    pub name: String,
    /// Each logged quantity by its record key (`loss`, `learning_rate`, `grad_norm`, `eval_loss`,
    /// `eval_accuracy`, ...).
    pub series: BTreeMap<String, Series>,
    /// `(step, epoch)` as logged, for marking where epochs end.
    pub epochs: Series,
    /// Lines of metrics.jsonl that were not JSON records (a run killed while writing), left out.
    pub skipped_lines: Vec<usize>,
}

impl History {
    /// Builds the curves from records in the order they were logged. A resumed run logs again from
    /// its checkpoint's step: a record at a step at or before the last one of its series replaces
    /// what had been logged from that step on.
    pub fn from_records<'a>(name: &str, records: impl IntoIterator<Item = &'a Value>) -> Self {
        let mut history = Self { name: name.to_string(), ..Self::default() };
        for record in records {
            let Some(map) = record.as_object() else { continue };
            let Some(step) = map.get("step").and_then(Value::as_f64) else { continue };
            if let Some(epoch) = map.get("epoch").and_then(Value::as_f64) {
                push(&mut history.epochs, step, epoch);
            }
            for (key, value) in map {
                if NOT_CURVES.contains(&key.as_str()) || TIMING_SUFFIXES.iter().any(|s| key.ends_with(s)) {
                    continue;
                }
                if let Some(v) = value.as_f64().filter(|v| v.is_finite()) {
                    push(history.series.entry(key.clone()).or_default(), step, v);
                }
            }
        }
        history
    }

    /// Reads a run folder's `metrics.jsonl`, or a checkpoint folder's `trainer_state.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| dir.display().to_string());
        let jsonl = dir.join(METRICS_FILE);
        if jsonl.is_file() {
            let text = std::fs::read_to_string(&jsonl).map_err(|e| Error::io(&jsonl, e))?;
            // A run killed while writing leaves a partial line, which a resumed run may have
            // continued: such lines are left out and reported, the rest is still good.
            let mut records = Vec::new();
            let mut skipped = Vec::new();
            for (i, line) in text.lines().enumerate() {
                match serde_json::from_str::<Value>(line) {
                    Ok(v) => records.push(v),
                    Err(_) if line.trim().is_empty() => {}
                    Err(_) => skipped.push(i + 1),
                }
            }
            return Ok(Self { skipped_lines: skipped, ..Self::from_records(&name, &records) });
        }
        let state = dir.join("trainer_state.json");
        if state.is_file() {
            let text = std::fs::read_to_string(&state).map_err(|e| Error::io(&state, e))?;
            let value: Value =
                serde_json::from_str(&text).map_err(|e| Error::data(&state, Some(e.line()), e.to_string()))?;
            let Some(records) = value.get("log_history").and_then(Value::as_array) else {
                return Err(Error::data(&state, None, "no log_history"));
            };
            return Ok(Self::from_records(&name, records));
        }
        Err(Error::NotFound {
            what: format!("a training log in {}", dir.display()),
            looked: vec![jsonl.display().to_string(), state.display().to_string()],
        })
    }

    /// The steps at which each whole epoch ended (epoch 1, 2, ...), from the logged epoch values.
    pub fn epoch_ends(&self) -> Vec<(usize, f64)> {
        let mut ends = Vec::new();
        let mut prev: (f64, f64) = (0.0, 0.0);
        for &(step, epoch) in &self.epochs {
            let mut k = prev.1.floor() + 1.0;
            while k <= epoch + 1e-9 {
                // Linear between the two records that straddle the boundary.
                let at = if epoch > prev.1 { prev.0 + (step - prev.0) * (k - prev.1) / (epoch - prev.1) } else { step };
                ends.push((k as usize, at.round()));
                k += 1.0;
            }
            prev = (step, epoch);
        }
        ends
    }

    /// Whether the run logged anything to draw.
    pub fn is_empty(&self) -> bool {
        self.series.values().all(Vec::is_empty)
    }
}

fn push(series: &mut Series, step: f64, value: f64) {
    if let Some(cut) = series.iter().position(|&(s, _)| s >= step) {
        series.truncate(cut);
    }
    series.push((step, value));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_become_series_and_a_resume_replaces_the_repeated_steps() {
        let records = [
            json!({"loss": 0.7, "learning_rate": 5e-5, "grad_norm": 2.0, "epoch": 0.5, "step": 10}),
            json!({"loss": 0.6, "learning_rate": 4e-5, "grad_norm": 1.5, "epoch": 1.0, "step": 20}),
            json!({"eval_loss": 0.55, "eval_accuracy": 0.7, "eval_runtime": 3.0, "epoch": 1.0, "step": 20}),
            json!({"loss": 0.5, "learning_rate": 3e-5, "grad_norm": 1.0, "epoch": 1.5, "step": 30}),
            // Resumed from the checkpoint at step 20.
            json!({"loss": 0.45, "learning_rate": 3e-5, "grad_norm": 1.1, "epoch": 1.5, "step": 30}),
            json!({"loss": 0.4, "learning_rate": 2e-5, "grad_norm": 0.9, "epoch": 2.0, "step": 40}),
            json!({"train_runtime": 9.0, "train_loss": 0.5, "epoch": 2.0, "step": 40}),
        ];
        let h = History::from_records("run", &records);
        assert_eq!(
            h.series.keys().collect::<Vec<_>>(),
            ["eval_accuracy", "eval_loss", "grad_norm", "learning_rate", "loss"]
        );
        assert_eq!(h.series["loss"], [(10.0, 0.7), (20.0, 0.6), (30.0, 0.45), (40.0, 0.4)]);
        assert_eq!(h.series["eval_accuracy"], [(20.0, 0.7)]);
        assert_eq!(h.epoch_ends(), [(1, 20.0), (2, 40.0)]);
    }

    #[test]
    fn epoch_ends_between_logs_are_interpolated() {
        let records = [json!({"loss": 1.0, "epoch": 0.8, "step": 8}), json!({"loss": 1.0, "epoch": 2.4, "step": 24})];
        assert_eq!(History::from_records("r", &records).epoch_ends(), [(1, 10.0), (2, 20.0)]);
    }

    #[test]
    fn reads_metrics_jsonl_or_trainer_state_and_names_what_is_missing() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("bf16");
        std::fs::create_dir(&run).unwrap();
        std::fs::write(run.join(METRICS_FILE), "{\"loss\":1.0,\"epoch\":0.1,\"step\":1}\n{\"loss\":0.").unwrap();
        let h = History::read(&run).unwrap();
        assert_eq!((h.name.as_str(), h.series["loss"].len(), h.skipped_lines.as_slice()), ("bf16", 1, [2].as_slice()));

        let ckpt = d.path().join("checkpoint-5");
        std::fs::create_dir(&ckpt).unwrap();
        std::fs::write(ckpt.join("trainer_state.json"), r#"{"log_history": [{"loss": 2.0, "step": 5}]}"#).unwrap();
        assert_eq!(History::read(&ckpt).unwrap().series["loss"], [(5.0, 2.0)]);

        let err = History::read(d.path()).unwrap_err().to_string();
        assert!(err.contains(METRICS_FILE) && err.contains("trainer_state.json"), "{err}");
        // A half-written record continued by a resumed run: left out and reported.
        std::fs::write(
            run.join(METRICS_FILE),
            "{\"loss\":1.0,\"step\":1}\n{\"loss\":0.{\"loss\":0.5,\"step\":2}\n{\"loss\":0.4,\"step\":3}\n",
        )
        .unwrap();
        let h = History::read(&run).unwrap();
        assert_eq!((h.series["loss"].len(), h.skipped_lines.as_slice()), (2, [2].as_slice()));
    }
}
