//! DebertaV2Config: the keys of a DeBERTa-v2/v3 `config.json`, with transformers' defaults (and
//! the `getattr` defaults its modeling code reads for keys the config class does not declare).

use serde::{Deserialize, Deserializer, Serialize};

use super::super::layers::Activation;
use super::{check_heads, check_pad, check_probability, Labels};
use crate::{Error, Result};

/// transformers' `DebertaV2Config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DebertaV2Config {
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
    #[serde(default = "defaults::gelu")]
    pub hidden_act: String,
    #[serde(default = "defaults::dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "defaults::dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "defaults::max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub type_vocab_size: usize,
    #[serde(default = "defaults::initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "defaults::layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Disentangled attention over relative positions (DeBERTa's own; off means plain attention).
    #[serde(default)]
    pub relative_attention: bool,
    /// -1: `max_position_embeddings`.
    #[serde(default = "defaults::minus_one")]
    pub max_relative_positions: i64,
    /// Log-bucketed relative positions (v3: 256); -1: exact positions.
    #[serde(default = "defaults::minus_one")]
    pub position_buckets: i64,
    /// Absolute position embeddings added to the input (v3: false).
    #[serde(default = "defaults::yes")]
    pub position_biased_input: bool,
    /// Which relative terms attention adds: `"c2p"` and/or `"p2c"` (a list, or `"p2c|c2p"`).
    #[serde(default, deserialize_with = "att_types")]
    pub pos_att_type: Vec<String>,
    /// The relative terms reuse the content projections (v3: true).
    #[serde(default)]
    pub share_att_key: bool,
    /// `"layer_norm"`: the relative embeddings are layer-normalised (`encoder.LayerNorm`).
    #[serde(default = "defaults::none")]
    pub norm_rel_ebd: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooler_hidden_size: Option<usize>,
    #[serde(default)]
    pub pooler_dropout: f64,
    #[serde(default = "defaults::gelu")]
    pub pooler_hidden_act: String,
    /// The dropout before the classifier; `None`: `hidden_dropout_prob`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cls_dropout: Option<f64>,
    #[serde(default)]
    pub conv_kernel_size: usize,
    #[serde(default = "defaults::pad_token_id")]
    pub pad_token_id: Option<u32>,
    #[serde(flatten)]
    pub labels: Labels,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

mod defaults {
    pub fn vocab_size() -> usize {
        128100
    }
    pub fn hidden_size() -> usize {
        1536
    }
    pub fn num_hidden_layers() -> usize {
        24
    }
    pub fn num_attention_heads() -> usize {
        24
    }
    pub fn intermediate_size() -> usize {
        6144
    }
    pub fn gelu() -> String {
        "gelu".into()
    }
    pub fn dropout() -> f64 {
        0.1
    }
    pub fn max_position_embeddings() -> usize {
        512
    }
    pub fn initializer_range() -> f64 {
        0.02
    }
    pub fn layer_norm_eps() -> f64 {
        1e-7
    }
    pub fn minus_one() -> i64 {
        -1
    }
    pub fn yes() -> bool {
        true
    }
    pub fn none() -> String {
        "none".into()
    }
    pub fn pad_token_id() -> Option<u32> {
        Some(0)
    }
}

/// `pos_att_type` as transformers reads it: a list, a `"p2c|c2p"` string, or null.
fn att_types<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        List(Vec<String>),
        Joined(String),
    }
    Ok(match Option::<Form>::deserialize(d)? {
        None => Vec::new(),
        Some(Form::List(list)) => list.into_iter().map(|t| t.trim().to_lowercase()).collect(),
        Some(Form::Joined(text)) => text.to_lowercase().split('|').map(|s| s.trim().to_string()).collect(),
    })
}

impl Default for DebertaV2Config {
    fn default() -> Self {
        serde_json::from_str("{}").expect("an empty object deserializes into the defaults")
    }
}

impl DebertaV2Config {
    pub fn validate(&self) -> Result<()> {
        Activation::parse("hidden_act", &self.hidden_act)?;
        Activation::parse("pooler_hidden_act", &self.pooler_hidden_act)?;
        check_heads(self.hidden_size, self.num_attention_heads, "num_attention_heads")?;
        check_pad(self.pad_token_id, self.vocab_size)?;
        for (key, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            ("attention_probs_dropout_prob", self.attention_probs_dropout_prob),
            ("pooler_dropout", self.pooler_dropout),
            ("cls_dropout", self.classifier_dropout_prob()),
        ] {
            check_probability(key, p)?;
        }
        if self.conv_kernel_size > 0 {
            return Err(Error::config(
                "conv_kernel_size",
                format!(
                    "{}: the convolution after the first layer (DeBERTa-v2 xlarge and larger) is not implemented",
                    self.conv_kernel_size
                ),
            ));
        }
        if let Some(size) = self.extra.get("attention_head_size").and_then(|v| v.as_u64()) {
            if size as usize * self.num_attention_heads != self.hidden_size {
                return Err(Error::config(
                    "attention_head_size",
                    format!(
                        "{size}: heads narrower or wider than hidden_size / num_attention_heads are not implemented"
                    ),
                ));
            }
        }
        if self.pooler_width() != self.hidden_size {
            return Err(Error::config(
                "pooler_hidden_size",
                format!(
                    "{} differs from hidden_size {}, which the classifier reads",
                    self.pooler_width(),
                    self.hidden_size
                ),
            ));
        }
        if self.relative_attention && self.rel_positions() == 0 {
            return Err(Error::config("max_relative_positions", "leaves no relative positions"));
        }
        Ok(())
    }

    pub fn set_all_dropout(&mut self, p: f64) {
        self.hidden_dropout_prob = p;
        self.attention_probs_dropout_prob = p;
        self.pooler_dropout = p;
        self.cls_dropout = Some(p);
    }

    /// The dropout before the classifier.
    pub fn classifier_dropout_prob(&self) -> f64 {
        self.cls_dropout.unwrap_or(self.hidden_dropout_prob)
    }

    /// The width of the word (and position, type) embeddings.
    pub fn embedding_width(&self) -> usize {
        self.embedding_size.unwrap_or(self.hidden_size)
    }

    pub fn pooler_width(&self) -> usize {
        self.pooler_hidden_size.unwrap_or(self.hidden_size)
    }

    /// `max_relative_positions`, or `max_position_embeddings` when it is below 1.
    pub fn max_relative(&self) -> usize {
        match self.max_relative_positions {
            m if m >= 1 => m as usize,
            _ => self.max_position_embeddings,
        }
    }

    /// The span of relative positions on each side (`pos_ebd_size`): the buckets when bucketed.
    pub fn rel_positions(&self) -> usize {
        match self.position_buckets {
            b if b > 0 => b as usize,
            _ => self.max_relative(),
        }
    }

    /// Whether attention adds the content-to-position term (other terms of `pos_att_type`, such
    /// as DeBERTa-v1's `p2p`, are ignored, as transformers' DeBERTa-v2 ignores them).
    pub fn c2p(&self) -> bool {
        self.pos_att_type.iter().any(|t| t == "c2p")
    }

    /// Whether attention adds the position-to-content term.
    pub fn p2c(&self) -> bool {
        self.pos_att_type.iter().any(|t| t == "p2c")
    }

    /// Whether the relative embeddings are layer-normalised: `norm_rel_ebd` read as transformers
    /// reads it, `|`-separated and in any case, other entries ignored.
    pub fn norm_rel_embeddings(&self) -> bool {
        self.norm_rel_ebd.to_lowercase().split('|').any(|part| part.trim() == "layer_norm")
    }
}
