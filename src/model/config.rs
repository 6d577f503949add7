//! BertConfig: the fields of a Hugging Face BERT `config.json` that shape the model, with transformers' defaults.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A BERT configuration as transformers' `BertConfig` reads it from `config.json`.
///
/// Missing keys take transformers' defaults (bert-base sizes). Keys this crate does not use are kept
/// in `extra` so that saving writes them back. `id2label`/`label2id` define the number of labels,
/// as in transformers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "defaults::hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "defaults::num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "defaults::num_attention_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "defaults::intermediate_size")]
    pub intermediate_size: usize,
    /// Only `"gelu"` (exact, erf-based) is supported; [`BertConfig::validate`] rejects the others.
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id2label: Option<BTreeMap<usize, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label2id: Option<BTreeMap<String, usize>>,
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

    /// Reads and validates `path` (a `config.json`).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let config: Self = serde_json::from_str(&text)
            .map_err(|e| Error::data(path, Some(e.line()), format!("not a BERT config.json: {e}")))?;
        config.validate().map_err(|e| match e {
            Error::Config { key, message } => Error::Config { key: format!("{}: {key}", path.display()), message },
            other => other,
        })?;
        Ok(config)
    }

    /// Checks that this crate can build the model the config describes.
    pub fn validate(&self) -> Result<()> {
        if self.hidden_act != "gelu" {
            return Err(Error::config(
                "hidden_act",
                format!(
                    "{:?} is not supported; only \"gelu\" (the exact erf GELU of BERT checkpoints) is implemented",
                    self.hidden_act
                ),
            ));
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

    /// The number of labels `id2label` defines, if it is set.
    pub fn num_labels(&self) -> Option<usize> {
        self.id2label.as_ref().map(|m| m.len())
    }

    /// Sets the number of labels as transformers' `num_labels` setter does: label names already in
    /// the config are kept when their count matches, otherwise they become `LABEL_0..LABEL_{n-1}`.
    pub fn set_num_labels(&mut self, num_labels: usize) {
        if self.num_labels() != Some(num_labels) {
            self.id2label = Some((0..num_labels).map(|i| (i, format!("LABEL_{i}"))).collect());
        }
        let id2label = self.id2label.as_ref().expect("set above");
        self.label2id = Some(id2label.iter().map(|(i, name)| (name.clone(), *i)).collect());
    }

    /// Sets every dropout probability to `p` (hidden, attention and classifier).
    pub fn set_all_dropout(&mut self, p: f64) {
        self.hidden_dropout_prob = p;
        self.attention_probs_dropout_prob = p;
        self.classifier_dropout = Some(p);
    }

    /// The `config.json` transformers' `AutoModelForSequenceClassification` loads: keys sorted,
    /// `model_type` and `architectures` set, no stale `num_labels`.
    pub fn to_json_for_classification(&self) -> Result<String> {
        let mut value =
            serde_json::to_value(self).map_err(|e| Error::Msg(format!("serializing the BERT config: {e}")))?;
        let map = value.as_object_mut().expect("a struct serializes to an object");
        map.insert("model_type".into(), "bert".into());
        map.insert("architectures".into(), serde_json::json!(["BertForSequenceClassification"]));
        // transformers derives num_labels from id2label; a leftover key could disagree with it.
        map.remove("num_labels");
        // Sorted like transformers' `sort_keys=True`, whatever map type serde_json was built with.
        let sorted: BTreeMap<String, serde_json::Value> = std::mem::take(map).into_iter().collect();
        let mut text = serde_json::to_string_pretty(&sorted)
            .map_err(|e| Error::Msg(format!("serializing the BERT config: {e}")))?;
        text.push('\n');
        Ok(text)
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
        assert_eq!(cfg.num_labels(), None);
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

    #[test]
    fn num_labels_keeps_matching_names_and_regenerates_others() {
        let mut cfg: BertConfig = serde_json::from_str(
            r#"{"id2label": {"0": "not_equivalent", "1": "equivalent"}, "label2id": {"equivalent": 1, "not_equivalent": 0}}"#,
        )
        .unwrap();
        cfg.set_num_labels(2);
        assert_eq!(cfg.id2label.as_ref().unwrap()[&1], "equivalent");
        cfg.set_num_labels(3);
        assert_eq!(cfg.id2label.as_ref().unwrap()[&2], "LABEL_2");
        assert_eq!(cfg.label2id.as_ref().unwrap()["LABEL_0"], 0);
        assert_eq!(cfg.num_labels(), Some(3));
    }

    #[test]
    fn classification_json_round_trips_with_sorted_keys() {
        let mut cfg = BertConfig::tiny();
        cfg.extra.insert("num_labels".into(), 7.into());
        cfg.extra.insert("zzz_custom".into(), "kept".into());
        cfg.set_num_labels(2);
        let text = cfg.to_json_for_classification().unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["architectures"][0], "BertForSequenceClassification");
        assert_eq!(value["model_type"], "bert");
        assert_eq!(value["id2label"]["1"], "LABEL_1");
        assert_eq!(value["label2id"]["LABEL_1"], 1);
        assert_eq!(value["position_embedding_type"], "absolute");
        assert!(value.get("num_labels").is_none());
        let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        let back: BertConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(back.hidden_size, 16);
        assert_eq!(back.extra["zzz_custom"], "kept");
        assert_eq!(back.num_labels(), Some(2));
    }
}
