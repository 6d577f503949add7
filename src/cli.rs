//! The command line as given (clap derive structs only); turning it into configs happens in
//! `main.rs` through [`crate::config`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Fine-tune transformers on sentence(-pair) classification.
#[derive(Debug, Parser)]
#[command(name = "accel", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inspect and prepare datasets.
    #[command(subcommand)]
    Data(DataCommand),
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Print a dataset's splits, features and a row.
    Show(ShowArgs),
    /// Tokenize every split through the cache and print length statistics.
    Tokenize(TokenizeArgs),
}

/// Where the data comes from: a name, a config, overrides.
#[derive(Debug, Args)]
pub struct DataSource {
    /// A built-in dataset such as glue/mrpc (sets data.dataset).
    pub dataset: Option<String>,
    /// A TOML config whose [data] section describes the data.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A folder laid out like glue/MRPC/... (default: ACCEL_DATA_DIR).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Override a config key, e.g. --set data.max_length=128 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub source: DataSource,
    /// The split whose row to print.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// The row to print.
    #[arg(long, default_value_t = 0)]
    pub index: usize,
}

#[derive(Debug, Args)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub source: DataSource,
    /// A model folder, a name under ACCEL_MODEL_DIR, or a hub id.
    #[arg(long)]
    pub model: String,
    /// Tokenize without reading or writing the cache.
    #[arg(long)]
    pub no_cache: bool,
}
