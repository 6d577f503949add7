//! Hugging Face model folders: `from_pretrained` (config.json + safetensors, with a load report) and `save_pretrained`.

use std::path::Path;

use candle_core::Device;

use super::classifier::BertForSequenceClassification;
use super::config::BertConfig;
use super::weights::{LoadReport, WeightFiles};
use crate::{Error, Result};

impl BertForSequenceClassification {
    /// Loads `dir/config.json` and the folder's safetensors weights, as transformers'
    /// `BertForSequenceClassification.from_pretrained(dir, num_labels=..)` does.
    ///
    /// Keys may carry the `bert.` prefix (task checkpoints) or not (base-model checkpoints such as
    /// sentence-transformers' MiniLM). Parameters the checkpoint lacks (the classifier, and the
    /// pooler when absent) are initialized N(0, initializer_range) with zero biases from `seed`. The
    /// report lists them as missing, and checkpoint keys the model does not use as unused.
    pub fn from_pretrained(
        dir: impl AsRef<Path>,
        num_labels: usize,
        seed: u64,
        device: &Device,
    ) -> Result<(Self, LoadReport)> {
        let dir = dir.as_ref();
        let config = BertConfig::from_file(dir.join("config.json"))?;
        Self::from_pretrained_with_config(dir, config, num_labels, seed, device)
    }

    /// As [`from_pretrained`](Self::from_pretrained) with a config the caller has already read and
    /// possibly changed (dropout probabilities, for instance).
    pub fn from_pretrained_with_config(
        dir: impl AsRef<Path>,
        config: BertConfig,
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
        config: BertConfig,
        num_labels: usize,
        seed: u64,
        device: &Device,
        ignore_mismatched_sizes: bool,
    ) -> Result<(Self, LoadReport)> {
        let dir = dir.as_ref();
        let checkpoint = WeightFiles::open_dir(dir)?.ignore_mismatched_sizes(ignore_mismatched_sizes);
        let (model, missing) = Self::build(config, num_labels, seed, device, Some(&checkpoint))?;
        let loaded = model.params().names().filter(|n| missing.binary_search_by(|m| m.as_str().cmp(n)).is_err());
        let report = LoadReport {
            source: dir.display().to_string(),
            loaded: loaded.map(str::to_string).collect(),
            missing,
            unused: checkpoint.unused_keys(),
            mismatched: checkpoint.mismatched(),
        };
        Ok((model, report))
    }

    /// Overwrites parameters from the safetensors file at `path` (for example a saved classifier
    /// head). See [`Params::load_safetensors`](super::Params::load_safetensors).
    pub fn load_weights(&self, path: impl AsRef<Path>) -> Result<LoadReport> {
        self.params().load_safetensors(path)
    }

    /// Writes `dir/config.json` and `dir/model.safetensors` so that transformers'
    /// `AutoModelForSequenceClassification.from_pretrained(dir)` loads this model unchanged.
    pub fn save_pretrained(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        self.params().save_safetensors(dir.join("model.safetensors"))?;
        crate::io::write_atomically(&dir.join("config.json"), self.config().to_json_for_classification()?.as_bytes())
    }
}
