//! ModelConfig: a model folder's `config.json` read as its `model_type` says (transformers'
//! `AutoConfig`), each family's keys with that family's defaults, and written back with the task
//! head's architecture for `AutoModelFor...` to load.

mod bert;
mod deberta;
mod distilbert;
mod modernbert;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use bert::BertConfig;
pub use deberta::DebertaV2Config;
pub use distilbert::DistilBertConfig;
pub use modernbert::{ModernBertConfig, Pooling};

use super::family::Family;
use crate::{Error, Result};

/// `id2label` / `label2id`: they define the number of labels, as in transformers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Labels {
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "ids_as_text")]
    pub id2label: Option<BTreeMap<usize, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label2id: Option<BTreeMap<String, usize>>,
}

/// `id2label`'s keys, which JSON writes as text ("0"). serde reads a flattened struct's maps with
/// text keys only, so they are parsed here.
fn ids_as_text<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<BTreeMap<usize, String>>, D::Error> {
    let Some(map) = Option::<BTreeMap<String, String>>::deserialize(d)? else { return Ok(None) };
    let parsed = map.into_iter().map(|(id, name)| match id.trim().parse::<usize>() {
        Ok(id) => Ok((id, name)),
        Err(_) => Err(serde::de::Error::custom(format!("id2label: {id:?} is not a label id"))),
    });
    parsed.collect::<std::result::Result<BTreeMap<_, _>, _>>().map(Some)
}

impl Labels {
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

    /// Names the labels (`id2label`), by id.
    pub fn set_names(&mut self, names: &[String]) {
        self.id2label = Some(names.iter().cloned().enumerate().collect());
        self.label2id = None;
    }
}

/// The family-specific part of a [`ModelConfig`].
#[derive(Debug, Clone, PartialEq)]
pub enum Arch {
    /// BERT, RoBERTa, XLM-RoBERTa and ELECTRA: BERT's keys.
    Bert(BertConfig),
    DistilBert(DistilBertConfig),
    DebertaV2(DebertaV2Config),
    ModernBert(ModernBertConfig),
}

/// The sizes every family has, in BERT's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    /// The feed-forward block's inner width (ModernBERT's gated block reads twice as many columns).
    pub intermediate_size: usize,
    /// The longest sequence the model takes, in tokens.
    pub max_sequence: usize,
}

/// A model's configuration: its family and that family's keys.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    family: Family,
    arch: Arch,
}

impl ModelConfig {
    /// Reads and validates `path` (a `config.json`): `model_type` picks the family (a file without
    /// one is taken as BERT, as the oldest BERT checkpoints have none), and keys the file does not
    /// set take that family's transformers defaults.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text).map_err(|e| match e {
            Error::Config { key, message } => Error::Config { key: format!("{}: {key}", path.display()), message },
            Error::Msg(message) => Error::data(path, None, message),
            other => other,
        })
    }

    /// Parses and validates a `config.json` text.
    pub fn from_json(text: &str) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::Msg(format!("not a config.json (line {}): {e}", e.line())))?;
        let serde_json::Value::Object(map) = value else {
            return Err(Error::Msg("not a config.json: the top level is not an object".into()));
        };
        let family = match map.get("model_type") {
            None => Family::Bert,
            Some(serde_json::Value::String(t)) => Family::from_model_type(t)?,
            Some(other) => return Err(Error::config("model_type", format!("{other} is not a string"))),
        };
        let mut merged = family_defaults(family);
        merged.extend(map);
        let value = serde_json::Value::Object(merged);
        let parse_error = |e: serde_json::Error| Error::Msg(format!("not a {family} config.json: {e}"));
        let arch = match family {
            Family::Bert | Family::Roberta | Family::XlmRoberta | Family::Electra => {
                Arch::Bert(serde_json::from_value(value).map_err(parse_error)?)
            }
            Family::DistilBert => Arch::DistilBert(serde_json::from_value(value).map_err(parse_error)?),
            Family::DebertaV2 => Arch::DebertaV2(serde_json::from_value(value).map_err(parse_error)?),
            Family::ModernBert => Arch::ModernBert(serde_json::from_value(value).map_err(parse_error)?),
        };
        let config = Self { family, arch };
        config.validate()?;
        Ok(config)
    }

    /// A config of `family` from its typed keys (tests, benchmarks).
    pub fn new(family: Family, arch: Arch) -> Result<Self> {
        let fits = matches!(
            (&arch, family),
            (Arch::Bert(_), Family::Bert | Family::Roberta | Family::XlmRoberta | Family::Electra)
                | (Arch::DistilBert(_), Family::DistilBert)
                | (Arch::DebertaV2(_), Family::DebertaV2)
                | (Arch::ModernBert(_), Family::ModernBert)
        );
        if !fits {
            return Err(Error::Msg(format!("a {family} model cannot be configured by {arch:?}")));
        }
        let config = Self { family, arch };
        config.validate()?;
        Ok(config)
    }

    /// BERT with `config`'s keys.
    pub fn bert(config: BertConfig) -> Self {
        Self { family: Family::Bert, arch: Arch::Bert(config) }
    }

    pub fn family(&self) -> Family {
        self.family
    }

    pub fn arch(&self) -> &Arch {
        &self.arch
    }

    /// Checks that accel can build the model the config describes; an option it does not implement
    /// is refused by its key.
    pub fn validate(&self) -> Result<()> {
        match &self.arch {
            Arch::Bert(c) => {
                c.validate()?;
                if self.family == Family::Electra {
                    if let Some(e) = c.embedding_size.filter(|&e| e == 0) {
                        return Err(Error::config("embedding_size", format!("{e} is not a width")));
                    }
                } else if c.embedding_size.is_some_and(|e| e != c.hidden_size) {
                    return Err(Error::config(
                        "embedding_size",
                        format!("{} differs from hidden_size; only ELECTRA projects its embeddings", self.family),
                    ));
                }
                if matches!(self.family, Family::Roberta | Family::XlmRoberta) {
                    let pad = c.pad_token_id.ok_or_else(|| {
                        Error::config("pad_token_id", "RoBERTa counts positions from the padding id; none is set")
                    })?;
                    if pad as usize + 2 > c.max_position_embeddings {
                        return Err(Error::config(
                            "max_position_embeddings",
                            format!("{} leaves no position after the padding id {pad}", c.max_position_embeddings),
                        ));
                    }
                }
                Ok(())
            }
            Arch::DistilBert(c) => c.validate(),
            Arch::DebertaV2(c) => c.validate(),
            Arch::ModernBert(c) => c.validate(),
        }
    }

    /// The sizes every family has.
    pub fn dims(&self) -> Dims {
        match &self.arch {
            Arch::Bert(c) => Dims {
                vocab_size: c.vocab_size,
                hidden_size: c.hidden_size,
                num_layers: c.num_hidden_layers,
                num_heads: c.num_attention_heads,
                intermediate_size: c.intermediate_size,
                // RoBERTa's positions start after the padding id.
                max_sequence: match self.family {
                    Family::Roberta | Family::XlmRoberta => {
                        c.max_position_embeddings - c.pad_token_id.unwrap_or(0) as usize - 1
                    }
                    _ => c.max_position_embeddings,
                },
            },
            Arch::DistilBert(c) => Dims {
                vocab_size: c.vocab_size,
                hidden_size: c.dim,
                num_layers: c.n_layers,
                num_heads: c.n_heads,
                intermediate_size: c.hidden_dim,
                max_sequence: c.max_position_embeddings,
            },
            Arch::DebertaV2(c) => Dims {
                vocab_size: c.vocab_size,
                hidden_size: c.hidden_size,
                num_layers: c.num_hidden_layers,
                num_heads: c.num_attention_heads,
                intermediate_size: c.intermediate_size,
                max_sequence: c.max_position_embeddings,
            },
            Arch::ModernBert(c) => Dims {
                vocab_size: c.vocab_size,
                hidden_size: c.hidden_size,
                num_layers: c.num_hidden_layers,
                num_heads: c.num_attention_heads,
                intermediate_size: c.intermediate_size,
                max_sequence: c.max_position_embeddings,
            },
        }
    }

    pub fn labels(&self) -> &Labels {
        match &self.arch {
            Arch::Bert(c) => &c.labels,
            Arch::DistilBert(c) => &c.labels,
            Arch::DebertaV2(c) => &c.labels,
            Arch::ModernBert(c) => &c.labels,
        }
    }

    pub fn labels_mut(&mut self) -> &mut Labels {
        match &mut self.arch {
            Arch::Bert(c) => &mut c.labels,
            Arch::DistilBert(c) => &mut c.labels,
            Arch::DebertaV2(c) => &mut c.labels,
            Arch::ModernBert(c) => &mut c.labels,
        }
    }

    /// The number of labels `id2label` defines, if it is set.
    pub fn num_labels(&self) -> Option<usize> {
        self.labels().num_labels()
    }

    /// Keys of `config.json` the typed fields do not hold.
    pub fn extra(&self) -> &serde_json::Map<String, serde_json::Value> {
        match &self.arch {
            Arch::Bert(c) => &c.extra,
            Arch::DistilBert(c) => &c.extra,
            Arch::DebertaV2(c) => &c.extra,
            Arch::ModernBert(c) => &c.extra,
        }
    }

    pub fn extra_mut(&mut self) -> &mut serde_json::Map<String, serde_json::Value> {
        match &mut self.arch {
            Arch::Bert(c) => &mut c.extra,
            Arch::DistilBert(c) => &mut c.extra,
            Arch::DebertaV2(c) => &mut c.extra,
            Arch::ModernBert(c) => &mut c.extra,
        }
    }

    /// Sets every dropout probability of the encoder and its head to `p`.
    pub fn set_all_dropout(&mut self, p: f64) {
        match &mut self.arch {
            Arch::Bert(c) => c.set_all_dropout(p),
            Arch::DistilBert(c) => c.set_all_dropout(p),
            Arch::DebertaV2(c) => c.set_all_dropout(p),
            Arch::ModernBert(c) => c.set_all_dropout(p),
        }
    }

    /// The same model with `layers` encoder layers (for counting parameters at any depth).
    pub fn with_num_layers(&self, layers: usize) -> Self {
        let mut config = self.clone();
        match &mut config.arch {
            Arch::Bert(c) => c.num_hidden_layers = layers,
            Arch::DistilBert(c) => c.n_layers = layers,
            Arch::DebertaV2(c) => c.num_hidden_layers = layers,
            Arch::ModernBert(c) => {
                c.num_hidden_layers = layers;
                if let Some(types) = &mut c.layer_types {
                    let last = types.last().cloned().unwrap_or_else(|| "full_attention".into());
                    types.resize(layers, last);
                }
            }
        }
        config
    }

    /// The standard deviation of fresh weights (`initializer_range`).
    pub fn initializer_range(&self) -> f64 {
        match &self.arch {
            Arch::Bert(c) => c.initializer_range,
            Arch::DistilBert(c) => c.initializer_range,
            Arch::DebertaV2(c) => c.initializer_range,
            Arch::ModernBert(c) => c.initializer_range,
        }
    }

    /// The task whose head `architectures` names (`BertForTokenClassification`: token
    /// classification), if it names one.
    pub fn task(&self) -> Option<crate::config::Task> {
        let first = self.extra().get("architectures")?.get(0)?.as_str()?;
        crate::config::Task::of_architecture(first)
    }

    /// The `config.json` transformers' `AutoModelFor<task>` loads: keys sorted, `model_type` and
    /// `architectures` set (`task` as in `"ForSequenceClassification"`), no stale `num_labels`.
    pub fn to_json(&self, task: &str) -> Result<String> {
        let serialized = match &self.arch {
            Arch::Bert(c) => serde_json::to_value(c),
            Arch::DistilBert(c) => serde_json::to_value(c),
            Arch::DebertaV2(c) => serde_json::to_value(c),
            Arch::ModernBert(c) => serde_json::to_value(c),
        };
        let mut value = serialized.map_err(|e| Error::Msg(format!("serializing the {} config: {e}", self.family)))?;
        let map = value.as_object_mut().expect("a struct serializes to an object");
        map.insert("model_type".into(), self.family.model_type().into());
        map.insert("architectures".into(), serde_json::json!([self.family.class_name(task)]));
        // transformers derives num_labels from id2label; a leftover key could disagree with it.
        map.remove("num_labels");
        // Sorted like transformers' `sort_keys=True`, whatever map type serde_json was built with.
        let sorted: BTreeMap<String, serde_json::Value> = std::mem::take(map).into_iter().collect();
        let mut text = serde_json::to_string_pretty(&sorted)
            .map_err(|e| Error::Msg(format!("serializing the {} config: {e}", self.family)))?;
        text.push('\n');
        Ok(text)
    }
}

/// The keys where a family's transformers config class has defaults other than BERT's, for the
/// families read with [`BertConfig`]; the others' structs carry their own defaults.
fn family_defaults(family: Family) -> serde_json::Map<String, serde_json::Value> {
    let value = match family {
        Family::Roberta => {
            serde_json::json!({"vocab_size": 50265, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2})
        }
        Family::XlmRoberta => serde_json::json!({"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}),
        Family::Electra => serde_json::json!({
            "embedding_size": 128, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024
        }),
        _ => serde_json::json!({}),
    };
    match value {
        serde_json::Value::Object(map) => map,
        _ => unreachable!("the defaults are objects"),
    }
}

/// `p` as a dropout probability of `key`.
pub(crate) fn check_probability(key: &str, p: f64) -> Result<()> {
    match (0.0..1.0).contains(&p) {
        true => Ok(()),
        false => Err(Error::config(key, format!("{p} is not a probability in [0, 1)"))),
    }
}

/// Heads that split the hidden width evenly.
pub(crate) fn check_heads(hidden: usize, heads: usize, key: &str) -> Result<()> {
    match heads > 0 && hidden.is_multiple_of(heads) {
        true => Ok(()),
        false => Err(Error::config(key, format!("{heads} heads do not split the hidden width {hidden} evenly"))),
    }
}

/// A padding id inside the vocabulary.
pub(crate) fn check_pad(pad: Option<u32>, vocab: usize) -> Result<()> {
    match pad {
        Some(pad) if pad as usize >= vocab => {
            Err(Error::config("pad_token_id", format!("{pad} is outside the vocabulary of {vocab}")))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_type_picks_the_family_and_its_defaults() {
        let roberta =
            ModelConfig::from_json(r#"{"model_type": "roberta", "hidden_size": 64, "num_attention_heads": 4}"#)
                .unwrap();
        assert_eq!(roberta.family(), Family::Roberta);
        let Arch::Bert(c) = roberta.arch() else { panic!() };
        assert_eq!((c.vocab_size, c.pad_token_id), (50265, Some(1)));
        assert_eq!(roberta.dims().max_sequence, 510);
        let electra = ModelConfig::from_json(r#"{"model_type": "electra"}"#).unwrap();
        let Arch::Bert(c) = electra.arch() else { panic!() };
        assert_eq!((c.embedding_size, c.hidden_size), (Some(128), 256));
        assert_eq!(ModelConfig::from_json("{}").unwrap().family(), Family::Bert);
        let err = ModelConfig::from_json(r#"{"model_type": "t5"}"#).unwrap_err().to_string();
        assert!(err.contains("\"t5\" is not supported") && err.contains("modernbert"), "{err}");
        let err = ModelConfig::from_json(r#"{"model_type": "bert", "embedding_size": 128}"#).unwrap_err().to_string();
        assert!(err.contains("embedding_size"), "{err}");
        let err = ModelConfig::from_json(r#"{"model_type": "roberta", "is_decoder": true}"#).unwrap_err().to_string();
        assert!(err.contains("is_decoder") && err.contains("causal"), "{err}");
        // transformers' other names for DistilBERT's keys, and DeBERTa's terms in any case.
        let distil =
            ModelConfig::from_json(r#"{"model_type": "distilbert", "hidden_size": 64, "num_attention_heads": 4}"#)
                .unwrap();
        assert_eq!((distil.dims().hidden_size, distil.dims().num_heads), (64, 4));
        let deberta = ModelConfig::from_json(
            r#"{"model_type": "deberta-v2", "relative_attention": true, "pos_att_type": "C2P|p2p", "norm_rel_ebd": "Layer_Norm"}"#,
        )
        .unwrap();
        let Arch::DebertaV2(c) = deberta.arch() else { panic!() };
        assert!(c.c2p() && !c.p2c() && c.norm_rel_embeddings());
    }

    #[test]
    fn num_labels_keeps_matching_names_and_regenerates_others() {
        let mut labels: Labels = serde_json::from_str(
            r#"{"id2label": {"0": "not_equivalent", "1": "equivalent"}, "label2id": {"equivalent": 1, "not_equivalent": 0}}"#,
        )
        .unwrap();
        labels.set_num_labels(2);
        assert_eq!(labels.id2label.as_ref().unwrap()[&1], "equivalent");
        labels.set_num_labels(3);
        assert_eq!(labels.id2label.as_ref().unwrap()[&2], "LABEL_2");
        assert_eq!(labels.label2id.as_ref().unwrap()["LABEL_0"], 0);
        assert_eq!(labels.num_labels(), Some(3));
    }

    #[test]
    fn written_json_names_the_family_and_round_trips_with_sorted_keys() {
        let text = r#"{"model_type": "distilbert", "dim": 32, "n_heads": 4, "zzz_custom": "kept", "num_labels": 7}"#;
        let mut config = ModelConfig::from_json(text).unwrap();
        config.labels_mut().set_num_labels(2);
        let written = config.to_json("ForSequenceClassification").unwrap();
        let value: serde_json::Value = serde_json::from_str(&written).unwrap();
        assert_eq!(value["architectures"][0], "DistilBertForSequenceClassification");
        assert_eq!(value["model_type"], "distilbert");
        assert_eq!(value["id2label"]["1"], "LABEL_1");
        assert_eq!(value["label2id"]["LABEL_1"], 1);
        assert!(value.get("num_labels").is_none());
        let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        let back = ModelConfig::from_json(&written).unwrap();
        assert_eq!(back.dims().hidden_size, 32);
        assert_eq!(back.extra()["zzz_custom"], "kept");
        assert_eq!(back.num_labels(), Some(2));

        let bert = ModelConfig::bert(BertConfig::tiny()).to_json("ForSequenceClassification").unwrap();
        let value: serde_json::Value = serde_json::from_str(&bert).unwrap();
        assert_eq!(value["architectures"][0], "BertForSequenceClassification");
        assert_eq!(value["position_embedding_type"], "absolute");
    }
}
