//! accel: fine-tune pretrained transformers on sentence(-pair) classification, on one CPU, many
//! processes or many GPUs, with the semantics of Hugging Face's Trainer and Accelerate.
//!
//! The data flow: [`config`] -> [`data`] -> [`model`] (with [`optim`]) on a [`device`] -> [`distributed`] (the process group) ->
//! [`train`] (loop, trainer, checkpoints) -> [`report`] (curves, TensorBoard).

pub mod cli;
pub mod config;
pub mod data;
pub mod device;
pub mod distributed;
pub mod error;
pub mod io;
pub mod kernels;
pub mod model;
pub mod optim;
pub mod report;
pub mod runtime;
pub mod selftest;
pub mod spans;
pub mod sysinfo;
pub mod train;
pub mod verify;

pub use error::{Error, Result};
