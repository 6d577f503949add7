//! BERT for sequence classification with transformers' parameter names: config, parameters, layers, loading and saving.

mod attention;
pub mod bert;
mod builder;
pub mod checkpoint;
pub mod classifier;
pub mod config;
pub mod dropout;
pub mod fused;
pub mod layers;
mod matmul;
pub(crate) mod parallel;
pub mod params;
mod pretrained;
mod residual_norm;
mod simd;

pub use bert::{BertModel, BertOutput};
pub use checkpoint::{Checkpoint, LoadReport};
pub use classifier::{cross_entropy_loss, BertForSequenceClassification};
pub use config::BertConfig;
pub use dropout::{Dropout, DropoutRng, DropoutRngState, MaskLayout};
pub use params::Params;
