//! The `accel` binary: parses the command line, runs it, prints the error chain on failure.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;

use accel::cli::{Cli, Command, DataCommand, DataSource, ShowArgs, TokenizeArgs};
use accel::config::{self, DataConfig};
use accel::data::{self, DatasetCache, PairTokenizer, Sources, TaskData};

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            if err.chain().any(|e| {
                e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Data(DataCommand::Show(args)) => show(args),
        Command::Data(DataCommand::Tokenize(args)) => tokenize(args),
    }
}

/// The `[data]` config a data command describes: file, then the dataset argument, then `--set`.
fn data_config(source: &DataSource) -> anyhow::Result<DataConfig> {
    let (mut table, origin) = match &source.config {
        Some(path) => (config::read_toml(path)?, path.display().to_string()),
        None => (toml::Table::new(), "command line".to_string()),
    };
    if let Some(name) = &source.dataset {
        config::apply_override(&mut table, &format!("data.dataset={}", toml::Value::String(name.clone())))?;
    }
    for assignment in &source.overrides {
        config::apply_override(&mut table, assignment)?;
    }
    let mut cfg: DataConfig = config::section(&table, "data", &origin)?;
    if source.data_dir.is_some() {
        cfg.data_dir = source.data_dir.clone();
    }
    Ok(cfg)
}

fn load(source: &DataSource) -> anyhow::Result<TaskData> {
    let cfg = data_config(source)?;
    Ok(data::load_task(&cfg, &Sources::from_env())?)
}

fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let task = load(&args.source)?;
    println!("{}", task.splits);
    let split = task.splits.split(&args.split)?;
    println!("\nfeatures: {}", split.format_features());
    println!("\n{}[{}] = {}", args.split, args.index, split.format_row(args.index)?);
    Ok(ExitCode::SUCCESS)
}

fn tokenize(args: TokenizeArgs) -> anyhow::Result<ExitCode> {
    let cfg = data_config(&args.source)?;
    let sources = Sources::from_env();
    let started = Instant::now();
    let task = data::load_task(&cfg, &sources)?;
    let model_dir = sources.resolve_model(&args.model, &["tokenizer.json"])?;
    let mut tokenizer = PairTokenizer::from_dir(&model_dir)
        .with_context(|| format!("loading the tokenizer of {}", model_dir.display()))?;
    if let Some(n) = cfg.max_length {
        tokenizer = tokenizer.with_max_length(n);
    }
    let cache = (!args.no_cache).then(DatasetCache::from_env);
    let (splits, statuses) = task.tokenize(&tokenizer, cache.as_ref())?;
    let elapsed = started.elapsed();
    println!("{} tokenized with {} (max_length {})", task.name, model_dir.display(), tokenizer.max_length());
    println!("{:<12} {:>7} {:>5} {:>7} {:>5}  cache", "split", "rows", "max", "mean", "p95");
    for (name, ds) in splits.iter() {
        let lists = ds.int_lists("input_ids")?;
        let mut lengths: Vec<usize> = (0..lists.len()).map(|i| lists.row(i).len()).collect();
        lengths.sort_unstable();
        let mean = lengths.iter().sum::<usize>() as f64 / lengths.len().max(1) as f64;
        let p95 = lengths.get(((lengths.len() as f64 * 0.95).ceil() as usize).saturating_sub(1)).copied().unwrap_or(0);
        let status = match statuses.iter().find(|(s, _)| s == name).map(|(_, st)| st) {
            Some(data::CacheStatus::Hit(p)) => format!("hit  {}", p.display()),
            Some(data::CacheStatus::Miss(p)) => format!("miss {} (written)", p.display()),
            _ => "off".to_string(),
        };
        println!(
            "{:<12} {:>7} {:>5} {:>7.1} {:>5}  {}",
            name,
            ds.num_rows(),
            lengths.last().copied().unwrap_or(0),
            mean,
            p95,
            status
        );
    }
    println!("took {:.3} s", elapsed.as_secs_f64());
    Ok(ExitCode::SUCCESS)
}
