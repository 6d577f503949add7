//! Family: the architectures accel builds, chosen from `config.json`'s `model_type` as
//! transformers' Auto classes choose them, with each family's names (model type, class, the prefix
//! of its encoder's parameters).

use std::fmt;

use crate::{Error, Result};

/// An encoder architecture, as transformers' `model_type` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Bert,
    Roberta,
    XlmRoberta,
    DistilBert,
    Electra,
    DebertaV2,
    ModernBert,
}

impl Family {
    /// Every family, in the order the supported list is written.
    pub const ALL: [Family; 7] = [
        Family::Bert,
        Family::Roberta,
        Family::XlmRoberta,
        Family::DistilBert,
        Family::Electra,
        Family::DebertaV2,
        Family::ModernBert,
    ];

    /// The family of a `model_type`, or an error naming the type and the supported ones.
    pub fn from_model_type(model_type: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|f| f.model_type() == model_type).ok_or_else(|| {
            let supported: Vec<&str> = Self::ALL.iter().map(|f| f.model_type()).collect();
            Error::config(
                "model_type",
                format!("{model_type:?} is not supported; accel builds {}", supported.join(", ")),
            )
        })
    }

    /// transformers' `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Bert => "bert",
            Self::Roberta => "roberta",
            Self::XlmRoberta => "xlm-roberta",
            Self::DistilBert => "distilbert",
            Self::Electra => "electra",
            Self::DebertaV2 => "deberta-v2",
            Self::ModernBert => "modernbert",
        }
    }

    /// The class name transformers gives a model of this family with `task`'s head (`Bert` +
    /// `ForSequenceClassification`).
    pub fn class_name(self, task: &str) -> String {
        let stem = match self {
            Self::Bert => "Bert",
            Self::Roberta => "Roberta",
            Self::XlmRoberta => "XLMRoberta",
            Self::DistilBert => "DistilBert",
            Self::Electra => "Electra",
            Self::DebertaV2 => "DebertaV2",
            Self::ModernBert => "ModernBert",
        };
        format!("{stem}{task}")
    }

    /// transformers' `base_model_prefix`: the encoder's parameters sit under `<prefix>.` in a task
    /// model's checkpoint, and without it in a base model's.
    pub fn base_prefix(self) -> &'static str {
        match self {
            Self::Bert => "bert",
            Self::Roberta | Self::XlmRoberta => "roberta",
            Self::DistilBert => "distilbert",
            Self::Electra => "electra",
            Self::DebertaV2 => "deberta",
            Self::ModernBert => "model",
        }
    }

    /// Whether the encoder reads token type ids. The others take every token as type 0 (RoBERTa's
    /// single type) or have no type embeddings at all, as transformers' tokenizers for them return
    /// no `token_type_ids`.
    pub fn uses_token_types(self) -> bool {
        matches!(self, Self::Bert | Self::Electra | Self::DebertaV2)
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.model_type())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_types_round_trip_and_unknown_ones_name_the_supported_list() {
        for family in Family::ALL {
            assert_eq!(Family::from_model_type(family.model_type()).unwrap(), family);
        }
        let err = Family::from_model_type("gpt2").unwrap_err().to_string();
        assert!(err.contains("model_type") && err.contains("\"gpt2\""), "{err}");
        assert!(err.contains("bert, roberta, xlm-roberta, distilbert, electra, deberta-v2, modernbert"), "{err}");
        assert_eq!(Family::XlmRoberta.class_name("ForSequenceClassification"), "XLMRobertaForSequenceClassification");
    }
}
