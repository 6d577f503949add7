//! DistilBertConfig: the keys of a DistilBERT `config.json` (`dim`, `n_layers`, ...), with
//! transformers' defaults.

use serde::{Deserialize, Serialize};

use super::super::layers::Activation;
use super::{check_heads, check_pad, check_probability, Labels};
use crate::{Error, Result};

/// transformers' `DistilBertConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistilBertConfig {
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "defaults::max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// Position embeddings initialised as sines and cosines rather than at random (they are then
    /// trained like any weight, as in transformers).
    #[serde(default)]
    pub sinusoidal_pos_embds: bool,
    /// transformers' attribute map reads the generic names too (`num_hidden_layers`, ...).
    #[serde(default = "defaults::n_layers", alias = "num_hidden_layers")]
    pub n_layers: usize,
    #[serde(default = "defaults::n_heads", alias = "num_attention_heads")]
    pub n_heads: usize,
    #[serde(default = "defaults::dim", alias = "hidden_size")]
    pub dim: usize,
    #[serde(default = "defaults::hidden_dim")]
    pub hidden_dim: usize,
    #[serde(default = "defaults::dropout")]
    pub dropout: f64,
    #[serde(default = "defaults::dropout")]
    pub attention_dropout: f64,
    /// The feed-forward activation: `"gelu"` or `"relu"`.
    #[serde(default = "defaults::activation")]
    pub activation: String,
    #[serde(default = "defaults::initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "defaults::seq_classif_dropout")]
    pub seq_classif_dropout: f64,
    /// The dropout before question answering's output layer.
    #[serde(default = "defaults::dropout")]
    pub qa_dropout: f64,
    #[serde(default = "defaults::pad_token_id")]
    pub pad_token_id: Option<u32>,
    #[serde(flatten)]
    pub labels: Labels,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

mod defaults {
    pub fn vocab_size() -> usize {
        30522
    }
    pub fn max_position_embeddings() -> usize {
        512
    }
    pub fn n_layers() -> usize {
        6
    }
    pub fn n_heads() -> usize {
        12
    }
    pub fn dim() -> usize {
        768
    }
    pub fn hidden_dim() -> usize {
        3072
    }
    pub fn dropout() -> f64 {
        0.1
    }
    pub fn activation() -> String {
        "gelu".into()
    }
    pub fn initializer_range() -> f64 {
        0.02
    }
    pub fn seq_classif_dropout() -> f64 {
        0.2
    }
    pub fn pad_token_id() -> Option<u32> {
        Some(0)
    }
}

impl Default for DistilBertConfig {
    /// distilbert-base-uncased's shape, as `DistilBertConfig()` in transformers.
    fn default() -> Self {
        serde_json::from_str("{}").expect("an empty object deserializes into the defaults")
    }
}

impl DistilBertConfig {
    pub fn validate(&self) -> Result<()> {
        Activation::parse("activation", &self.activation)?;
        check_heads(self.dim, self.n_heads, "n_heads")?;
        check_pad(self.pad_token_id, self.vocab_size)?;
        for (key, p) in [
            ("dropout", self.dropout),
            ("attention_dropout", self.attention_dropout),
            ("seq_classif_dropout", self.seq_classif_dropout),
            ("qa_dropout", self.qa_dropout),
        ] {
            check_probability(key, p)?;
        }
        if self.max_position_embeddings == 0 {
            return Err(Error::config("max_position_embeddings", "0 positions"));
        }
        Ok(())
    }

    pub fn set_all_dropout(&mut self, p: f64) {
        self.dropout = p;
        self.attention_dropout = p;
        self.seq_classif_dropout = p;
        self.qa_dropout = p;
    }
}
