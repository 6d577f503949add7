//! BERT for sequence classification with transformers' parameter names: config, parameters, layers, loading and saving.

pub mod bert;
mod builder;
pub mod checkpoint;
pub mod classifier;
pub mod config;
pub mod dropout;
pub mod layers;
pub mod params;
mod pretrained;

pub use bert::{BertModel, BertOutput};
pub use checkpoint::{Checkpoint, LoadReport};
pub use classifier::{cross_entropy_loss, BertForSequenceClassification};
pub use config::BertConfig;
pub use dropout::{Dropout, DropoutRng, DropoutRngState, MaskLayout};
pub use params::Params;
