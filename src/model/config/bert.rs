//! BertConfig: the fields of a BERT-shaped `config.json` (BERT, RoBERTa, XLM-RoBERTa, ELECTRA) that
//! shape the model, with transformers' BERT defaults.

use serde::{Deserialize, Serialize};

use super::super::layers::Activation;
use super::Labels;
use crate::{Error, Result};

/// A BERT configuration as transformers' `BertConfig` reads it from `config.json`; RoBERTa's,
/// XLM-RoBERTa's and ELECTRA's have the same keys (ELECTRA adds `embedding_size`).
///
/// Missing keys take transformers' BERT defaults (bert-base sizes); [`super::ModelConfig`] lays the
/// other families' defaults under the file first. Keys this crate does not use are kept in `extra`
/// so that saving writes them back. `id2label`/`label2id` define the number of labels, as in
/// transformers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "defaults::hidden_size")]
    pub hidden_size: usize,
    /// ELECTRA's embedding width, projected to `hidden_size` when it differs (`embeddings_project`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_size: Option<usize>,
    #[serde(default = "defaults::num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "defaults::num_attention_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "defaults::intermediate_size")]
    pub intermediate_size: usize,
    /// `"gelu"` (exact, erf-based) or `"relu"`; [`BertConfig::validate`] rejects the others.
    #[serde(default = "defaults::hidden_act")]
    pub hidden_act: String,
    #[serde(default = "defaults::dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "defaults::dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Dropout before the classification head; `None` means `hidden_dropout_prob`, as in transformers.
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
    #[serde(default = "defaults::max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "defaults::type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "defaults::initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "defaults::layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// The word-embedding row that never receives a gradient (`nn.Embedding(padding_idx=..)`).
    #[serde(default = "defaults::pad_token_id")]
    pub pad_token_id: Option<u32>,
    /// Only `"absolute"` is supported. Always written out: transformers adds no position
    /// embeddings at all when it reads `null` here.
    #[serde(default = "defaults::position_embedding_type")]
    pub position_embedding_type: String,
    #[serde(flatten)]
    pub labels: Labels,
    /// Every other key of `config.json` (model_type, architectures, transformers_version, ...).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// transformers' `BertConfig.__init__` defaults.
mod defaults {
    pub fn vocab_size() -> usize {
        30522
    }
    pub fn hidden_size() -> usize {
        768
    }
    pub fn num_hidden_layers() -> usize {
        12
    }
    pub fn num_attention_heads() -> usize {
        12
    }
    pub fn intermediate_size() -> usize {
        3072
    }
    pub fn hidden_act() -> String {
        "gelu".into()
    }
    pub fn dropout() -> f64 {
        0.1
    }
    pub fn max_position_embeddings() -> usize {
        512
    }
    pub fn type_vocab_size() -> usize {
        2
    }
    pub fn initializer_range() -> f64 {
        0.02
    }
    pub fn layer_norm_eps() -> f64 {
        1e-12
    }
    pub fn pad_token_id() -> Option<u32> {
        Some(0)
    }
    pub fn position_embedding_type() -> String {
        "absolute".into()
    }
}

impl Default for BertConfig {
    /// bert-base-uncased's shape, as `BertConfig()` in transformers.
    fn default() -> Self {
        serde_json::from_str("{}").expect("an empty object deserializes into the defaults")
    }
}

impl BertConfig {
    /// A very small model for fast tests: vocab 64, hidden 16, 2 layers of 2 heads, intermediate 32, 32 positions.
    pub fn tiny() -> Self {
        Self {
            vocab_size: 64,
            hidden_size: 16,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            intermediate_size: 32,
            max_position_embeddings: 32,
            ..Self::default()
        }
    }

    /// Checks that this crate can build the model the config describes.
    pub fn validate(&self) -> Result<()> {
        Activation::parse("hidden_act", &self.hidden_act)?;
        // A decoder attends causally (and across to an encoder): not what a classifier fine-tunes.
        for key in ["is_decoder", "add_cross_attention"] {
            if self.extra.get(key).and_then(|v| v.as_bool()) == Some(true) {
                return Err(Error::config(key, "true: decoders (causal attention) are not implemented"));
            }
        }
        if self.position_embedding_type != "absolute" {
            return Err(Error::config(
                "position_embedding_type",
                format!("{:?} is not supported; only \"absolute\" is implemented", self.position_embedding_type),
            ));
        }
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(Error::config(
                "num_attention_heads",
                format!(
                    "hidden_size {} must be a multiple of num_attention_heads {}",
                    self.hidden_size, self.num_attention_heads
                ),
            ));
        }
        for (key, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            ("attention_probs_dropout_prob", self.attention_probs_dropout_prob),
            ("classifier_dropout", self.classifier_dropout_prob()),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(Error::config(key, format!("{p} is not a probability in [0, 1)")));
            }
        }
        if let Some(pad) = self.pad_token_id {
            if pad as usize >= self.vocab_size {
                return Err(Error::config(
                    "pad_token_id",
                    format!("{pad} is outside the vocabulary of {}", self.vocab_size),
                ));
            }
        }
        Ok(())
    }

    /// The dropout probability before the classification head.
    pub fn classifier_dropout_prob(&self) -> f64 {
        self.classifier_dropout.unwrap_or(self.hidden_dropout_prob)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Sets every dropout probability to `p` (hidden, attention and classifier).
    pub fn set_all_dropout(&mut self, p: f64) {
        self.hidden_dropout_prob = p;
        self.attention_probs_dropout_prob = p;
        self.classifier_dropout = Some(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_minilm_style_config_and_keeps_unknown_keys() {
        let text = r#"{
            "_name_or_path": "nreimers/MiniLM-L6-H384-uncased",
            "architectures": ["BertModel"],
            "attention_probs_dropout_prob": 0.1,
            "gradient_checkpointing": false,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "hidden_size": 384,
            "initializer_range": 0.02,
            "intermediate_size": 1536,
            "layer_norm_eps": 1e-12,
            "max_position_embeddings": 512,
            "model_type": "bert",
            "num_attention_heads": 12,
            "num_hidden_layers": 6,
            "pad_token_id": 0,
            "position_embedding_type": "absolute",
            "transformers_version": "4.8.2",
            "type_vocab_size": 2,
            "use_cache": true,
            "vocab_size": 30522
        }"#;
        let cfg: BertConfig = serde_json::from_str(text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.hidden_size, 384);
        assert_eq!(cfg.head_dim(), 32);
        assert_eq!(cfg.classifier_dropout_prob(), 0.1);
        assert_eq!(cfg.extra["model_type"], "bert");
        assert_eq!(cfg.extra["use_cache"], true);
        assert_eq!(cfg.labels.num_labels(), None);
    }

    #[test]
    fn classifier_dropout_falls_back_to_hidden_dropout() {
        let cfg: BertConfig =
            serde_json::from_str(r#"{"hidden_dropout_prob": 0.2, "classifier_dropout": null}"#).unwrap();
        assert_eq!(cfg.classifier_dropout_prob(), 0.2);
        let cfg: BertConfig =
            serde_json::from_str(r#"{"hidden_dropout_prob": 0.2, "classifier_dropout": 0.3}"#).unwrap();
        assert_eq!(cfg.classifier_dropout_prob(), 0.3);
    }

    #[test]
    fn rejects_unsupported_activation_naming_the_key() {
        let cfg: BertConfig = serde_json::from_str(r#"{"hidden_act": "gelu_new"}"#).unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("hidden_act") && err.contains("gelu_new"), "{err}");
        let cfg: BertConfig = serde_json::from_str(r#"{"position_embedding_type": "relative_key"}"#).unwrap();
        assert!(cfg.validate().is_err());
    }
}
