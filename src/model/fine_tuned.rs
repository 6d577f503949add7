//! A fine-tuned classifier as `accel eval` and `accel predict` load it: the model with its
//! trained head (a sequence or token classifier, as `architectures` names it), and the tokenizer
//! saved beside it.

use candle_core::Device;

use super::config::ModelConfig;
use super::model::Model;
use crate::data::{PairTokenizer, Sources};
use crate::{Error, Result};

/// A fine-tuned classifier folder (what `accel train` writes), loaded for evaluation and
/// prediction: the model and its tokenizer.
#[derive(Debug)]
pub struct FineTunedClassifier {
    pub model: Model,
    pub tokenizer: PairTokenizer,
}

impl FineTunedClassifier {
    /// Loads a folder, a name under `ACCEL_MODEL_DIR`, or a hub id onto `device`; the classifier
    /// head must be in the weights (a base model is refused).
    pub fn load(name: &str, sources: &Sources, device: &Device) -> Result<Self> {
        let dir = sources.resolve_model(name, &["config.json", "tokenizer.json"])?;
        let config = ModelConfig::from_file(dir.join("config.json"))?;
        let num_labels = config.num_labels().ok_or_else(|| {
            Error::data(dir.join("config.json"), None, "no id2label: this is not a fine-tuned classifier")
        })?;
        // The head is the one `architectures` names (what accel and transformers save).
        let task = config.task().unwrap_or_default();
        let (model, report) = Model::from_pretrained_for(task, &dir, config, num_labels, (0, false), device)?;
        if !report.missing.is_empty() {
            return Err(Error::data(
                &dir,
                None,
                format!("not a fine-tuned classifier: the weights lack {}", report.missing.join(", ")),
            ));
        }
        Ok(Self { model, tokenizer: PairTokenizer::from_dir(&dir)? })
    }

    /// The class names, by id (`id2label`).
    pub fn label_names(&self) -> Vec<String> {
        let map = self.model.config().labels().id2label.clone().unwrap_or_default();
        (0..self.model.num_labels()).map(|i| map.get(&i).cloned().unwrap_or_else(|| format!("LABEL_{i}"))).collect()
    }
}
