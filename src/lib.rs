//! accel: fine-tune pretrained transformers on sentence(-pair) classification, on one CPU, many
//! processes or many GPUs, with the semantics of Hugging Face's Trainer and Accelerate.
//!
//! The data flow is the module order: [`config`] -> [`data`] -> model -> process group -> trainer ->
//! checkpoint.

pub mod cli;
pub mod config;
pub mod data;
pub mod error;
pub mod train;

pub use error::{Error, Result};
