//! Hugging Face model folders: `from_pretrained` (config.json + safetensors, with a load report) and `save_pretrained`.

use std::path::Path;

use candle_core::Device;

use super::config::ModelConfig;
use super::model::{Built, Model};
use super::weights::{LoadReport, WeightFiles};
use crate::config::Task;
use crate::{Error, Result};

impl Model {
    /// Loads `dir/config.json` and the folder's safetensors weights, as transformers'
    /// `AutoModelForSequenceClassification.from_pretrained(dir, num_labels=..)` does: the family
    /// comes from the config's `model_type`.
    ///
    /// Keys may carry the family's prefix (`roberta.`: task checkpoints) or not (base-model
    /// checkpoints such as sentence-transformers' MiniLM). Head parameters the checkpoint lacks are
    /// initialized N(0, initializer_range) with zero biases from `seed`; the report lists them as
    /// missing, and checkpoint keys the model does not use as unused. An encoder parameter the
    /// checkpoint lacks is an error: the encoder would train from random weights.
    pub fn from_pretrained(
        dir: impl AsRef<Path>,
        num_labels: usize,
        seed: u64,
        device: &Device,
    ) -> Result<(Self, LoadReport)> {
        let dir = dir.as_ref();
        let config = ModelConfig::from_file(dir.join("config.json"))?;
        Self::from_pretrained_with_config(dir, config, num_labels, seed, device)
    }

    /// As [`from_pretrained`](Self::from_pretrained) with a config the caller has already read and
    /// possibly changed (dropout probabilities, for instance).
    pub fn from_pretrained_with_config(
        dir: impl AsRef<Path>,
        config: ModelConfig,
        num_labels: usize,
        seed: u64,
        device: &Device,
    ) -> Result<(Self, LoadReport)> {
        Self::from_pretrained_with_options(dir, config, num_labels, seed, device, false)
    }

    /// As [`from_pretrained_with_config`](Self::from_pretrained_with_config); with
    /// `ignore_mismatched_sizes`, parameters whose checkpoint shape differs (a head for another
    /// number of labels) are initialized afresh and reported instead of failing the load.
    pub fn from_pretrained_with_options(
        dir: impl AsRef<Path>,
        config: ModelConfig,
        num_labels: usize,
        seed: u64,
        device: &Device,
        ignore_mismatched_sizes: bool,
    ) -> Result<(Self, LoadReport)> {
        let options = (seed, ignore_mismatched_sizes);
        Self::from_pretrained_for(Task::SequenceClassification, dir, config, num_labels, options, device)
    }

    /// As [`from_pretrained_with_options`](Self::from_pretrained_with_options) for `task`'s head
    /// (transformers' `AutoModelFor<Task>.from_pretrained`), with `(seed, ignore_mismatched_sizes)`.
    pub fn from_pretrained_for(
        task: Task,
        dir: impl AsRef<Path>,
        config: ModelConfig,
        num_labels: usize,
        (seed, ignore_mismatched_sizes): (u64, bool),
        device: &Device,
    ) -> Result<(Self, LoadReport)> {
        let dir = dir.as_ref();
        let checkpoint = WeightFiles::open_dir(dir)?.ignore_mismatched_sizes(ignore_mismatched_sizes);
        let Built { model, missing, missing_in_encoder } =
            Self::build(config, task, num_labels, seed, device, Some(&checkpoint))?;
        let unused = checkpoint.unused_keys();
        if !missing_in_encoder.is_empty() {
            return Err(encoder_missing(dir, &model, &missing_in_encoder, &unused));
        }
        let loaded = model.params().names().filter(|n| missing.binary_search_by(|m| m.as_str().cmp(n)).is_err());
        let report = LoadReport {
            class: model.class_name(),
            source: dir.display().to_string(),
            loaded: loaded.map(str::to_string).collect(),
            missing,
            unused,
            mismatched: checkpoint.mismatched(),
        };
        Ok((model, report))
    }

    /// Overwrites parameters from the safetensors file at `path` (for example a saved classifier
    /// head). See [`Params::load_safetensors`](super::Params::load_safetensors).
    pub fn load_weights(&self, path: impl AsRef<Path>) -> Result<LoadReport> {
        let mut report = self.params().load_safetensors(path)?;
        report.class = self.class_name();
        Ok(report)
    }

    /// Writes `dir/config.json` and `dir/model.safetensors` so that transformers'
    /// `AutoModelFor<Task>.from_pretrained(dir)` loads this model unchanged: the config names the
    /// family (`model_type`) and the class (`architectures`).
    pub fn save_pretrained(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        self.params().save_safetensors(dir.join("model.safetensors"))?;
        let config = self.config().to_json(self.task().class_suffix())?;
        crate::io::write_atomically(&dir.join("config.json"), config.as_bytes())
    }
}

/// The error for a checkpoint that leaves encoder weights uninitialized: which, how many, and what
/// the checkpoint holds instead.
fn encoder_missing(dir: &Path, model: &Model, missing: &[String], unused: &[String]) -> Error {
    let family = model.config().family();
    let total = model.params().len() - model.head_names().len();
    let shown: Vec<&str> = missing.iter().take(3).map(String::as_str).collect();
    let instead = match unused.first() {
        Some(key) => format!(
            "; the weights hold {} keys the model does not use, such as {key}: does config.json's model_type ({family}) match them?",
            unused.len()
        ),
        None => String::new(),
    };
    Error::data(
        dir,
        None,
        format!(
            "the weights leave {} of the {total} {family} encoder parameters uninitialized ({}{}){instead}",
            missing.len(),
            shown.join(", "),
            if missing.len() > shown.len() { ", ..." } else { "" }
        ),
    )
}
