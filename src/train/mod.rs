//! Training: the pieces of the course's custom loop (a forward on a batch, [`Gradients`]
//! accumulated by backward passes, and the [`optimizer_step`] that averages, clips, updates and
//! zeroes them) and the config-driven [`Trainer`] built on them, with metrics, logging and
//! checkpoints.

pub mod answering;
pub mod answers;
pub mod args;
pub mod bench;
pub mod best_metric;
pub mod checkpoint;
pub mod eval;
pub mod fault;
pub mod gradients;
pub mod log;
pub mod memory;
pub mod metrics;
pub mod model_card;
pub mod optimizer;
pub mod optimizer_step;
pub mod peak;
pub mod precision;
pub mod preempt;
pub mod preflight;
pub mod prepare;
pub mod resolved;
pub mod resume;
pub mod run_figures;
pub mod seqeval;
pub mod squad;
pub mod state;
pub mod tagging;
pub mod template;
pub mod trainer;

pub use args::{TrainConfig, TrainingArguments};
pub use eval::Predictions;
pub use gradients::Gradients;
pub use optimizer::Optimizer;
pub use optimizer_step::optimizer_step;
pub use trainer::{TrainOutput, Trainer};
