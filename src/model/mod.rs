//! The models accel trains, with transformers' parameter names: each family's config and encoder,
//! the classification head, parameters, loading and saving.

mod builder;
pub mod config;
pub mod dropout;
mod encoder;
pub mod family;
mod fine_tuned;
mod head;
pub mod layers;
#[allow(clippy::module_inception)]
mod model;
mod packing;
pub mod params;
mod pretrained;
mod token_head;
pub mod weights;

pub use config::{BertConfig, DebertaV2Config, DistilBertConfig, ModelConfig, ModernBertConfig, Pooling};
pub use dropout::{Dropout, DropoutRng, DropoutRngState, MaskLayout};
pub use family::Family;
pub use fine_tuned::FineTunedClassifier;
pub use model::{cross_entropy_loss, span_loss, token_loss, Model, ModelOutput};
pub use packing::tokens_computed;
pub use params::Params;
pub use weights::{LoadReport, WeightFiles};
