//! BERT for sequence classification with transformers' parameter names: config, parameters, layers, loading and saving.

pub mod bert;
mod builder;
pub mod classifier;
pub mod config;
pub mod dropout;
mod fine_tuned;
pub mod layers;
mod packing;
pub mod params;
mod pretrained;
pub mod weights;

pub use bert::{BertModel, BertOutput};
pub use classifier::{cross_entropy_loss, BertForSequenceClassification, ModelOutput};
pub use config::BertConfig;
pub use dropout::{Dropout, DropoutRng, DropoutRngState, MaskLayout};
pub use fine_tuned::FineTunedClassifier;
pub use packing::tokens_computed;
pub use params::Params;
pub use weights::{LoadReport, WeightFiles};
