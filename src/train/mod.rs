//! Training: the pieces of the course's custom loop (a forward on a batch, [`Gradients`] with
//! separate backward / clip / zero calls) and the config-driven [`Trainer`] built on them, with
//! metrics, logging and checkpoints.

pub mod args;
pub mod bench;
pub mod checkpoint;
pub mod eval;
pub mod fault;
pub mod grads;
pub mod log;
pub mod memory;
pub mod metrics;
pub mod state;
pub mod step;
pub mod template;
pub mod trainer;

pub use args::{TrainConfig, TrainingArguments};
pub use eval::Predictions;
pub use grads::Gradients;
pub use step::ModelOutput;
pub use trainer::{TrainOutput, Trainer};
