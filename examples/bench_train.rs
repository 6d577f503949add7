//! Training and evaluation throughput on MRPC, measured as `../shared/bench/train_throughput.py`
//! measures PyTorch: the course's loop (shuffled batches padded to their longest row, AdamW at 5e-5
//! with weight decay 0.01 on every parameter, linear schedule, no clipping), median step time after
//! a warm-up, then evaluation at batch 64 over the 408 validation pairs. Prints one JSON line, with
//! the medians of the step's parts (forward, backward, optimizer) and the layer products' share:
//! their time and TFLOP/s inside the step, and the same products timed alone; and where the
//! time goes op by op (`step_ops` per training step, `eval_ops` per pass over the validation set).
//!
//! `MIXED_PRECISION=bf16 cargo run --release --example bench_train BATCH [WARMUP] [STEPS]`

use std::sync::Arc;
use std::time::Instant;

use accel::config::DataConfig;
use accel::data::{self, BatchSampler, DataCollatorWithPadding, DataLoader, DatasetCache, PairTokenizer, Sources};
use accel::distributed::SingleProcess;
use accel::kernels::cpu::profile;
use accel::kernels::{Autocast, MixedPrecision};
use accel::model::Model;
use accel::optim::{AdamW, AdamWConfig, LrSchedule, ScheduleKind, Warmup};
use accel::train::{eval, optimizer_step, Gradients};
use candle_core::Device;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// Each op pass's milliseconds per step (or per evaluation pass), its share of the measured time
/// and the products' part of it, largest first; what no op covers (candle's own ops, autograd's
/// bookkeeping, allocation, the loss) as "other".
fn ops_json(
    ops: std::collections::BTreeMap<profile::OpPass, profile::OpTime>,
    per: f64,
    total_s: f64,
) -> serde_json::Value {
    let mut rows: Vec<(String, f64, f64)> = ops
        .into_iter()
        .map(|((name, pass), t)| (format!("{name} {pass}"), t.total.as_secs_f64(), t.products.as_secs_f64()))
        .collect();
    let covered: f64 = rows.iter().map(|r| r.1).sum();
    rows.push(("other".into(), total_s - covered, 0.0));
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    let ms = |s: f64| (1e5 * s / per).round() / 100.0;
    rows.into_iter()
        .map(|(name, s, products)| {
            serde_json::json!({"op": name, "ms": ms(s), "share": (1e3 * s / total_s).round() / 1e3, "products_ms": ms(products)})
        })
        .collect()
}

#[global_allocator]
static GLOBAL: accel::runtime::Allocator = accel::runtime::Allocator;

fn main() -> anyhow::Result<()> {
    accel::runtime::tune_allocator();
    accel::runtime::tune_thread_pools();
    let arg = |i: usize, default: usize| -> anyhow::Result<usize> {
        Ok(std::env::args().nth(i).map(|a| a.parse()).transpose()?.unwrap_or(default))
    };
    let (batch_size, warmup, steps) = (arg(1, 8)?, arg(2, 10)?, arg(3, 100)?);
    let sources = Sources::from_env();
    let t0 = Instant::now();
    let task = data::load_task(&DataConfig { dataset: Some("glue/mrpc".into()), ..Default::default() }, &sources)?;
    let model_dir =
        sources.resolve_model("all-MiniLM-L6-v2", &["config.json", "tokenizer.json", "model.safetensors"])?;
    let tokenizer = PairTokenizer::from_dir(&model_dir)?;
    let (splits, _) = task.tokenize(&tokenizer, Some(&DatasetCache::from_env()))?;
    let load_tokenize_s = t0.elapsed().as_secs_f64();
    let train = Arc::new(splits.split("train")?.clone());
    let validation = Arc::new(splits.split("validation")?.clone());
    let collator = DataCollatorWithPadding::new(&tokenizer)?;
    let loader =
        DataLoader::new(train.clone(), collator.clone(), BatchSampler::new(train.num_rows(), batch_size, true, 42));
    let (model, _) = Model::from_pretrained(&model_dir, 2, 42, &Device::Cpu)?;
    let params = model.params().clone();
    let mut optimizer = AdamW::new(&params, AdamWConfig { lr: 5e-5, decay_all: true, ..AdamWConfig::default() })?;
    let schedule = LrSchedule::new(ScheduleKind::Linear, 5e-5, Warmup::Steps(0), 3 * loader.len())?;
    let mut grads = Gradients::new();
    let precision: MixedPrecision = match std::env::var("MIXED_PRECISION") {
        Ok(v) => v.parse().map_err(anyhow::Error::msg)?,
        Err(_) => MixedPrecision::No,
    };
    let autocast = Autocast::new(precision, params.tracked())?;
    let (mut forward_s, mut backward_s, mut optimizer_s) = (Vec::new(), Vec::new(), Vec::new());

    let (mut times, mut real, mut padded, mut samples) = (Vec::new(), 0usize, 0usize, 0usize);
    let mut batches = loader.iter();
    for step in 0..warmup + steps {
        let t = Instant::now();
        let batch = match batches.next() {
            Some(b) => b?,
            None => anyhow::bail!("the epoch has fewer than {} batches", warmup + steps),
        };
        profile::enable(step >= warmup);
        let (forward, backward) = autocast.run(|| -> anyhow::Result<(f64, f64)> {
            let t = Instant::now();
            let out = model.forward_train(&batch)?;
            let forward = t.elapsed().as_secs_f64();
            let t = Instant::now();
            grads.backward(out.loss()?, &params)?;
            Ok((forward, t.elapsed().as_secs_f64()))
        })?;
        let t_opt = Instant::now();
        // No clipping: the PyTorch loop it is compared with has none.
        optimizer_step(&mut grads, &mut optimizer, schedule.lr_at(step), None, &SingleProcess)?;
        profile::enable(false);
        let dt = t.elapsed().as_secs_f64();
        if step >= warmup {
            forward_s.push(forward);
            backward_s.push(backward);
            optimizer_s.push(t_opt.elapsed().as_secs_f64());
            times.push(dt);
            let (b, l) = batch.dims()?;
            real += batch.attention_mask.sum_all()?.to_scalar::<u32>()? as usize;
            padded += b * l;
            samples += b;
        }
    }
    let total: f64 = times.iter().sum();
    // The layer products inside the measured steps, then each shape again alone.
    let (mut flops, mut inside_s, mut alone_s) = (0f64, 0f64, 0f64);
    for (shape, (calls, took)) in profile::take() {
        let ((m, n, k), _, _) = shape;
        flops += 2.0 * (m * n * k) as f64 * calls as f64;
        inside_s += took.as_secs_f64();
        alone_s += accel::kernels::cpu::time_alone(shape, 3) * calls as f64;
    }
    let step_ops = ops_json(profile::take_ops(), steps as f64, total);
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));

    let mut eval_times = Vec::new();
    for pass in 0..4 {
        profile::enable(pass > 0);
        let t = Instant::now();
        autocast.run(|| eval::predict(&model, validation.clone(), &collator, 64, &SingleProcess))?;
        if pass > 0 {
            eval_times.push(t.elapsed().as_secs_f64());
        }
    }
    profile::enable(false);
    profile::take();
    let eval_ops = ops_json(profile::take_ops(), eval_times.len() as f64, eval_times.iter().sum());
    let eval_s = median(eval_times);
    println!(
        "{}",
        serde_json::json!({
            "batch": batch_size,
            "mixed_precision": precision.as_str(),
            "threads": candle_core::utils::get_num_threads(),
            "steps": steps,
            "warmup": warmup,
            "total_s": total,
            "samples_per_s": samples as f64 / total,
            "real_tokens_per_s": real as f64 / total,
            "padded_tokens_per_s": padded as f64 / total,
            "ms_step_median": 1000.0 * median(times),
            "ms_step_p10": 1000.0 * sorted[sorted.len() / 10],
            "ms_step_p90": 1000.0 * sorted[9 * sorted.len() / 10],
            "mean_padded_len": padded as f64 / samples as f64,
            "ms_forward_median": 1000.0 * median(forward_s),
            "ms_backward_median": 1000.0 * median(backward_s),
            "ms_optimizer_median": 1000.0 * median(optimizer_s),
            "gemm_share_of_step": inside_s / total,
            "gemm_tflops_in_step": flops / inside_s / 1e12,
            "gemm_tflops_alone": flops / alone_s / 1e12,
            "load_tokenize_s": load_tokenize_s,
            "eval_samples": validation.num_rows(),
            "eval_s_median": eval_s,
            "eval_samples_per_s": validation.num_rows() as f64 / eval_s,
            "peak_rss_mib": accel::runtime::peak_rss_mib(),
            "step_ops": step_ops,
            "eval_ops": eval_ops,
        })
    );
    Ok(())
}
