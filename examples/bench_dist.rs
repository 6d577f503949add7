//! Data-parallel throughput and all-reduce cost on MRPC with MiniLM, as one rank of a job (under
//! mpirun) or as one process: the course's loop with sharded batches, per-step time split into
//! compute and optimizer step, then an all-reduce probe at the gradient's size: MPI's own
//! all-reduce of one flat buffer against accel's bucketed gradient averaging (flatten, reduce,
//! scale, views). Rank 0 prints one JSON line.
//!
//! `mpirun -np 2 --bind-to core -x RAYON_NUM_THREADS=1 target/release/examples/bench_dist BATCH [WARMUP] [STEPS]`

use std::sync::Arc;
use std::time::Instant;

use accel::config::DataConfig;
use accel::data::{self, BatchSampler, DataCollatorWithPadding, DataLoader, DatasetCache, PairTokenizer, Sources};
use accel::distributed::{self, collectives, DistOptions, RankEnv};
use accel::model::Model;
use accel::optim::{AdamW, AdamWConfig, LrSchedule, ScheduleKind, Warmup};
use accel::train::{optimizer_step, Gradients};
use candle_core::backprop::GradStore;
use candle_core::Device;

#[global_allocator]
static GLOBAL: accel::runtime::Allocator = accel::runtime::Allocator;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn main() -> anyhow::Result<()> {
    accel::runtime::tune_allocator();
    accel::runtime::tune_thread_pools();
    let arg = |i: usize, default: usize| -> anyhow::Result<usize> {
        Ok(std::env::args().nth(i).map(|a| a.parse()).transpose()?.unwrap_or(default))
    };
    let (batch_size, warmup, steps) = (arg(1, 8)?, arg(2, 5)?, arg(3, 40)?);
    let pg = distributed::init(&RankEnv::from_env()?, DistOptions::default(), &candle_core::Device::Cpu)?;
    let pg = pg.as_ref();
    let sources = Sources::from_env();
    let task = data::load_task(&DataConfig { dataset: Some("glue/mrpc".into()), ..Default::default() }, &sources)?;
    let model_dir = sources.resolve_model("all-MiniLM-L6-v2", &["config.json", "tokenizer.json"])?;
    let tokenizer = PairTokenizer::from_dir(&model_dir)?;
    let (splits, _) =
        collectives::main_process_first(pg, || task.tokenize(&tokenizer, Some(&DatasetCache::from_env())))?;
    let train = Arc::new(splits.split("train")?.clone());
    let collator = DataCollatorWithPadding::new(&tokenizer)?;
    let sampler = BatchSampler::new(train.num_rows(), batch_size, true, 42).shard(pg.rank(), pg.world_size());
    let loader = DataLoader::new(train.clone(), collator, sampler);
    let (model, _) = Model::from_pretrained(&model_dir, 2, 42, &Device::Cpu)?;
    let params = model.params().clone();
    collectives::broadcast_params(pg, &params, distributed::buckets::DEFAULT_BUCKET_BYTES)?;
    let mut optimizer = AdamW::new(&params, AdamWConfig { lr: 5e-5, decay_all: true, ..AdamWConfig::default() })?;
    let schedule = LrSchedule::new(ScheduleKind::Linear, 5e-5, Warmup::Steps(0), 3 * loader.len())?;
    let mut grads = Gradients::new();

    let (mut steps_ms, mut optimizer_ms, mut samples, mut padded) = (Vec::new(), Vec::new(), 0usize, 0usize);
    let mut batches = loader.iter();
    pg.barrier()?;
    let mut started = Instant::now();
    for step in 0..warmup + steps {
        if step == warmup {
            pg.barrier()?;
            started = Instant::now();
        }
        let t = Instant::now();
        let batch = match batches.next() {
            Some(b) => b?,
            None => anyhow::bail!("the epoch has fewer than {} batches per rank", warmup + steps),
        };
        let out = model.forward_train(&batch)?;
        grads.backward(out.loss()?, &params)?;
        // The gradient all-reduce and AdamW's update (no clipping, as the PyTorch loop).
        let r = Instant::now();
        optimizer_step(&mut grads, &mut optimizer, schedule.lr_at(step), None, pg)?;
        let optimizer_s = r.elapsed().as_secs_f64();
        if step >= warmup {
            steps_ms.push(1000.0 * t.elapsed().as_secs_f64());
            optimizer_ms.push(1000.0 * optimizer_s);
            let (b, l) = batch.dims()?;
            samples += b;
            padded += b * l;
        }
    }
    pg.barrier()?;
    let total_s = started.elapsed().as_secs_f64();
    let totals = collectives::sum_f64(pg, &[samples as f64, padded as f64])?;

    // The probe: the gradient's size as one buffer through MPI, then through accel's buckets.
    let n = params.num_elements();
    let send = vec![1f32; n];
    let mut recv = vec![0f32; n];
    let (mut raw_ms, mut bucketed_ms) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        pg.barrier()?;
        let t = Instant::now();
        pg.all_reduce_sum_f32(&send, &mut recv)?;
        raw_ms.push(1000.0 * t.elapsed().as_secs_f64());
    }
    let mut reducer = distributed::reducer::GradientReducer::new();
    for _ in 0..15 {
        let mut store = GradStore::default();
        for (_, var) in params.iter() {
            store.insert(var.as_tensor(), var.as_tensor().ones_like()?);
        }
        pg.barrier()?;
        let t = Instant::now();
        reducer.all_reduce_mean(&mut store, &params, pg, distributed::buckets::DEFAULT_BUCKET_BYTES)?;
        bucketed_ms.push(1000.0 * t.elapsed().as_secs_f64());
    }
    if pg.is_main() {
        let bytes = (n * 4) as f64;
        let (raw, bucketed) = (median(raw_ms), median(bucketed_ms));
        println!(
            "{}",
            serde_json::json!({
                "ranks": pg.world_size(),
                "threads_per_rank": candle_core::utils::get_num_threads(),
                "batch_per_rank": batch_size,
                "steps": steps,
                "samples_per_s": totals[0] / total_s,
                "padded_tokens_per_s": totals[1] / total_s,
                "ms_step_median": median(steps_ms),
                "ms_optimizer_step_median": median(optimizer_ms),
                "gradient_mb": bytes / 1e6,
                "probe_mpi_allreduce_ms": raw,
                "probe_mpi_gb_per_s": bytes / raw / 1e6,
                "probe_accel_bucketed_ms": bucketed,
                "probe_accel_gb_per_s": bytes / bucketed / 1e6,
            })
        );
    }
    Ok(())
}
