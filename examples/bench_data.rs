//! Times the data pipeline on MRPC: reading the raw files, cold tokenization of every split (no
//! cache), and the warm path (a cache hit). Prints one JSON line of medians.
//!
//! `cargo run --release --example bench_data [REPEATS]`, with ACCEL_DATA_DIR / ACCEL_MODEL_DIR set.

use std::time::Instant;

use accel::config::DataConfig;
use accel::data::{self, DatasetCache, PairTokenizer, Sources};

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

#[global_allocator]
static GLOBAL: accel::runtime::Allocator = accel::runtime::Allocator;

fn main() -> anyhow::Result<()> {
    accel::runtime::tune_allocator();
    let repeats: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(5);
    let sources = Sources::from_env();
    let cfg = DataConfig { dataset: Some("glue/mrpc".into()), ..DataConfig::default() };
    let model = sources.resolve_model("all-MiniLM-L6-v2", &["tokenizer.json"])?;
    let cache_root = tempfile::tempdir()?;
    let cache = DatasetCache::new(cache_root.path());

    let (mut read, mut tok_load, mut map_cold, mut warm_hit, mut warm_load) = (vec![], vec![], vec![], vec![], vec![]);
    let mut pairs = 0;
    for _ in 0..repeats {
        let t = Instant::now();
        let task = data::load_task(&cfg, &sources)?;
        read.push(t.elapsed().as_secs_f64());
        pairs = task.splits.iter().map(|(_, d)| d.num_rows()).sum::<usize>();

        let t = Instant::now();
        let tokenizer = PairTokenizer::from_dir(&model)?;
        tokenizer.tokenizer()?;
        tok_load.push(t.elapsed().as_secs_f64());

        let t = Instant::now();
        let (_, _) = task.tokenize(&tokenizer, None)?;
        map_cold.push(t.elapsed().as_secs_f64());
    }
    let task = data::load_task(&cfg, &sources)?;
    let (_, statuses) = task.tokenize(&PairTokenizer::from_dir(&model)?, Some(&cache))?;
    let files: Vec<std::path::PathBuf> = statuses
        .into_iter()
        .filter_map(|(_, s)| match s {
            data::CacheStatus::Miss(p) | data::CacheStatus::Hit(p) => Some(p),
            data::CacheStatus::Disabled => None,
        })
        .collect();
    for _ in 0..repeats * 4 {
        // What a second run does: read the raw files, fingerprint, load the cached splits.
        let t = Instant::now();
        let task = data::load_task(&cfg, &sources)?;
        let (_, statuses) = task.tokenize(&PairTokenizer::from_dir(&model)?, Some(&cache))?;
        assert!(statuses.iter().all(|(_, s)| s.is_hit()));
        warm_hit.push(t.elapsed().as_secs_f64());
        // The cache files alone, as `load_from_disk` reads its arrow files.
        let t = Instant::now();
        let rows: usize =
            files.iter().map(|f| data::map::read_cache_file(f).map(|d| d.num_rows())).sum::<accel::Result<usize>>()?;
        assert_eq!(rows, pairs);
        warm_load.push(t.elapsed().as_secs_f64());
    }
    let (read, tok_load, map_cold) = (median(read), median(tok_load), median(map_cold));
    println!(
        "{}",
        serde_json::json!({
            "pairs": pairs,
            "repeats": repeats,
            "read_s": read,
            "tokenizer_load_s": tok_load,
            "tokenize_map_cold_s": map_cold,
            "read_plus_tokenize_s": read + map_cold,
            "warm_second_run_s": median(warm_hit),
            "warm_load_from_cache_s": median(warm_load),
        })
    );
    Ok(())
}
