//! ModernBertConfig: the keys of a ModernBERT `config.json`, with transformers' defaults; layer
//! types and rotary bases read from both the current keys (`layer_types`, `rope_parameters`) and
//! the ones older configs carry (`global_attn_every_n_layers`, `global_rope_theta`, `local_rope_theta`).

use serde::{Deserialize, Serialize};

use super::super::layers::Activation;
use super::{check_heads, check_pad, check_probability, Labels};
use crate::{Error, Result};

/// How the classification head summarises a sequence (`classifier_pooling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The first token's hidden state.
    First,
    /// The mean over the sequence's tokens.
    Mean,
}

/// transformers' `ModernBertConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModernBertConfig {
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "defaults::hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "defaults::intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "defaults::num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "defaults::num_attention_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "defaults::gelu")]
    pub hidden_activation: String,
    #[serde(default = "defaults::max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "defaults::initializer_range")]
    pub initializer_range: f64,
    /// Fresh weights are redrawn beyond this many standard deviations.
    #[serde(default = "defaults::cutoff")]
    pub initializer_cutoff_factor: f64,
    #[serde(default = "defaults::norm_eps")]
    pub norm_eps: f64,
    #[serde(default)]
    pub norm_bias: bool,
    #[serde(default = "defaults::pad_token_id")]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub attention_dropout: f64,
    /// `"full_attention"` or `"sliding_attention"` per layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    /// Older configs: every n-th layer (from the first) attends globally, the others locally.
    #[serde(default = "defaults::global_every")]
    pub global_attn_every_n_layers: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_rope_theta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_rope_theta: Option<f64>,
    /// The local window's whole width: a token sees those at most half of it away. A
    /// `sliding_window` key (the radius) sets it to twice its value, as in transformers.
    #[serde(default = "defaults::local_attention")]
    pub local_attention: usize,
    #[serde(default)]
    pub embedding_dropout: f64,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub mlp_dropout: f64,
    #[serde(default = "defaults::pooling")]
    pub classifier_pooling: String,
    #[serde(default)]
    pub classifier_dropout: f64,
    #[serde(default)]
    pub classifier_bias: bool,
    #[serde(default = "defaults::gelu")]
    pub classifier_activation: String,
    #[serde(flatten)]
    pub labels: Labels,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

mod defaults {
    pub fn vocab_size() -> usize {
        50368
    }
    pub fn hidden_size() -> usize {
        768
    }
    pub fn intermediate_size() -> usize {
        1152
    }
    pub fn num_hidden_layers() -> usize {
        22
    }
    pub fn num_attention_heads() -> usize {
        12
    }
    pub fn gelu() -> String {
        "gelu".into()
    }
    pub fn max_position_embeddings() -> usize {
        8192
    }
    pub fn initializer_range() -> f64 {
        0.02
    }
    pub fn cutoff() -> f64 {
        2.0
    }
    pub fn norm_eps() -> f64 {
        1e-5
    }
    pub fn pad_token_id() -> Option<u32> {
        Some(50283)
    }
    pub fn global_every() -> usize {
        3
    }
    pub fn local_attention() -> usize {
        128
    }
    pub fn pooling() -> String {
        "cls".into()
    }
}

/// The rotary base of full-attention layers, and of sliding-window ones, unless a config says otherwise.
const GLOBAL_THETA: f64 = 160_000.0;
const LOCAL_THETA: f64 = 10_000.0;

impl Default for ModernBertConfig {
    /// ModernBERT-base's shape, as `ModernBertConfig()` in transformers.
    fn default() -> Self {
        serde_json::from_str("{}").expect("an empty object deserializes into the defaults")
    }
}

impl ModernBertConfig {
    pub fn validate(&self) -> Result<()> {
        Activation::parse("hidden_activation", &self.hidden_activation)?;
        Activation::parse("classifier_activation", &self.classifier_activation)?;
        check_heads(self.hidden_size, self.num_attention_heads, "num_attention_heads")?;
        if !(self.hidden_size / self.num_attention_heads).is_multiple_of(2) {
            return Err(Error::config("num_attention_heads", "rotary embeddings need an even head width"));
        }
        check_pad(self.pad_token_id, self.vocab_size)?;
        for (key, p) in [
            ("attention_dropout", self.attention_dropout),
            ("embedding_dropout", self.embedding_dropout),
            ("mlp_dropout", self.mlp_dropout),
            ("classifier_dropout", self.classifier_dropout),
        ] {
            check_probability(key, p)?;
        }
        self.pooling()?;
        let types = self.layer_types()?;
        if types.len() != self.num_hidden_layers {
            return Err(Error::config(
                "layer_types",
                format!("{} entries for {} layers", types.len(), self.num_hidden_layers),
            ));
        }
        self.rope_theta(true)?;
        self.rope_theta(false)?;
        // Older configs scale both kinds of layers' rotary embeddings with one top-level entry.
        if let Some(scaling) = self.extra.get("rope_scaling").filter(|v| !v.is_null()) {
            return Err(Error::config(
                "rope_scaling",
                format!(
                    "{scaling}: scaled rotary embeddings are not implemented; accel implements the \"default\" ones"
                ),
            ));
        }
        Ok(())
    }

    pub fn set_all_dropout(&mut self, p: f64) {
        self.attention_dropout = p;
        self.embedding_dropout = p;
        self.mlp_dropout = p;
        self.classifier_dropout = p;
    }

    pub fn pooling(&self) -> Result<Pooling> {
        match self.classifier_pooling.as_str() {
            "cls" => Ok(Pooling::First),
            "mean" => Ok(Pooling::Mean),
            other => Err(Error::config("classifier_pooling", format!("{other:?}: expected \"cls\" or \"mean\""))),
        }
    }

    /// Per layer, whether it attends globally (else within the local window).
    pub fn layer_types(&self) -> Result<Vec<bool>> {
        match &self.layer_types {
            Some(types) => types
                .iter()
                .map(|t| match t.as_str() {
                    // transformers' older name for it.
                    "full_attention" | "attention" => Ok(true),
                    "sliding_attention" => Ok(false),
                    other => Err(Error::config(
                        "layer_types",
                        format!("{other:?}: expected \"full_attention\" or \"sliding_attention\""),
                    )),
                })
                .collect(),
            None => {
                let every = self.global_attn_every_n_layers.max(1);
                Ok((0..self.num_hidden_layers).map(|i| i.is_multiple_of(every)).collect())
            }
        }
    }

    /// How far a token of a sliding-window layer sees on each side.
    pub fn window_radius(&self) -> usize {
        match self.extra.get("sliding_window").and_then(|v| v.as_u64()) {
            Some(radius) => radius as usize,
            None => self.local_attention / 2,
        }
    }

    /// The rotary base of global (`true`) or sliding-window layers.
    pub fn rope_theta(&self, global: bool) -> Result<f64> {
        let (kind, legacy, default) = match global {
            true => ("full_attention", self.global_rope_theta, GLOBAL_THETA),
            false => ("sliding_attention", self.local_rope_theta, LOCAL_THETA),
        };
        let params = self.rope_parameters.as_ref().and_then(|p| p.get(kind)).filter(|p| !p.is_null());
        // "type" is the older name of "rope_type".
        let rope_type = params.and_then(|p| p.get("rope_type").or_else(|| p.get("type"))).and_then(|t| t.as_str());
        if let Some(rope_type) = rope_type {
            if rope_type != "default" {
                return Err(Error::config(
                    "rope_parameters",
                    format!("{kind} has rope_type {rope_type:?}; accel implements \"default\" rotary embeddings"),
                ));
            }
        }
        let theta = params.and_then(|p| p.get("rope_theta")).and_then(|t| t.as_f64()).or(legacy).unwrap_or(default);
        match theta > 0.0 {
            true => Ok(theta),
            false => Err(Error::config("rope_parameters", format!("{kind} has rope_theta {theta}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_types_and_bases_come_from_new_or_old_keys() {
        let old: ModernBertConfig = serde_json::from_str(
            r#"{"num_hidden_layers": 4, "global_attn_every_n_layers": 2, "global_rope_theta": 8e4, "local_attention": 16}"#,
        )
        .unwrap();
        old.validate().unwrap();
        assert_eq!(old.layer_types().unwrap(), [true, false, true, false]);
        assert_eq!(old.rope_theta(true).unwrap(), 8e4);
        assert_eq!(old.rope_theta(false).unwrap(), 10_000.0);
        assert_eq!(old.window_radius(), 8);
        let new: ModernBertConfig = serde_json::from_str(
            r#"{"num_hidden_layers": 2, "layer_types": ["sliding_attention", "full_attention"],
                "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 5.0},
                                    "sliding_attention": {"rope_type": "default", "rope_theta": 7.0}}}"#,
        )
        .unwrap();
        assert_eq!(new.layer_types().unwrap(), [false, true]);
        assert_eq!((new.rope_theta(true).unwrap(), new.rope_theta(false).unwrap()), (5.0, 7.0));
        let scaled: ModernBertConfig =
            serde_json::from_str(r#"{"rope_parameters": {"full_attention": {"rope_type": "yarn", "factor": 2.0}}}"#)
                .unwrap();
        let err = scaled.validate().unwrap_err().to_string();
        assert!(err.contains("rope_parameters") && err.contains("yarn"), "{err}");
        let legacy: ModernBertConfig =
            serde_json::from_str(r#"{"rope_scaling": {"type": "linear", "factor": 2.0}}"#).unwrap();
        assert!(legacy.validate().unwrap_err().to_string().contains("rope_scaling"));
        let named: ModernBertConfig = serde_json::from_str(
            r#"{"sliding_window": 32, "num_hidden_layers": 2, "layer_types": ["attention", "sliding_attention"]}"#,
        )
        .unwrap();
        assert_eq!((named.window_radius(), named.layer_types().unwrap()), (32, vec![true, false]));
    }
}
