//! The mixed-precision policy, Accelerate's `mixed_precision`: which matrix products may run in a
//! narrower type. Master weights, optimizer state, normalisations, softmax and the loss stay f32.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// `mixed_precision = "no" | "bf16"` (config key and `--mixed-precision`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MixedPrecision {
    /// Everything in f32.
    #[default]
    No,
    /// The large products (Q/K/V/output projections, attention scores and context, feed-forward,
    /// pooler, classifier) read bf16 inputs and accumulate and write f32; gradients stay f32.
    Bf16,
}

impl MixedPrecision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::No => "no",
            Self::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for MixedPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MixedPrecision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "no" => Ok(Self::No),
            "bf16" => Ok(Self::Bf16),
            "fp16" => Err("fp16 is not supported on the CPU; use \"bf16\" or \"no\"".into()),
            other => Err(format!("unknown mixed precision {other:?}; expected \"no\" or \"bf16\"")),
        }
    }
}
