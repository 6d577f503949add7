//! The course's custom training loop, step by step, as its Accelerate version runs it: a process
//! group (`Accelerator()`), data loader, model, AdamW and a linear schedule built by hand, then
//! `forward_train`, `backward`, and `optimizer_step` (the gradient all-reduce, clipping, AdamW at
//! the schedule's rate, zeroing), and an evaluation at the end gathered over every rank.
//!
//! `cargo run --release --example custom_loop [STEPS]` with ACCEL_DATA_DIR / ACCEL_MODEL_DIR set
//! (the scripts default them to ../shared), or as 2 ranks:
//! `mpirun -np 2 -x RAYON_NUM_THREADS=1 target/release/examples/custom_loop [STEPS]`.
//! Without STEPS it trains one full epoch of MRPC.

use std::sync::Arc;

use accel::config::DataConfig;
use accel::data::{self, BatchSampler, DataCollatorWithPadding, DataLoader, DatasetCache, PairTokenizer, Sources};
use accel::device::DeviceSpec;
use accel::distributed::{self, collectives, DistOptions, RankEnv};
use accel::model::Model;
use accel::optim::{AdamW, AdamWConfig, LrSchedule, ScheduleKind, Warmup};
use accel::train::{eval, metrics, optimizer_step, Gradients};

fn main() -> anyhow::Result<()> {
    let max_steps: Option<usize> = std::env::args().nth(1).map(|a| a.parse()).transpose()?;
    // accelerator = Accelerator(): one process, or this rank of a job mpirun started, on
    // accelerator.device (the GPU of the local rank where there is one, else the CPU).
    let env = RankEnv::from_env()?;
    let device = DeviceSpec::Auto.resolve(env.local_rank)?;
    let pg = distributed::init(&env, DistOptions::default(), &device)?;
    let pg = pg.as_ref();
    let sources = Sources::from_env();

    // load_dataset("glue", "mrpc") and the tokenizer of the checkpoint.
    let task = data::load_task(&DataConfig { dataset: Some("glue/mrpc".into()), ..Default::default() }, &sources)?;
    let model_dir =
        sources.resolve_model("all-MiniLM-L6-v2", &["config.json", "tokenizer.json", "model.safetensors"])?;
    let tokenizer = PairTokenizer::from_dir(&model_dir)?;

    // tokenized = raw.map(tokenize_function, batched=True), under main_process_first(): rank 0
    // fills the cache, the others read it.
    let (splits, _) =
        collectives::main_process_first(pg, || task.tokenize(&tokenizer, Some(&DatasetCache::from_env())))?;
    let train = Arc::new(splits.split("train")?.clone());
    let validation = Arc::new(splits.split("validation")?.clone());

    // DataLoader(train, shuffle=True, batch_size=8, collate_fn=DataCollatorWithPadding(tokenizer)),
    // sharded as accelerator.prepare(train_dataloader) does: rank r takes every world-th batch.
    let collator = DataCollatorWithPadding::new(&tokenizer)?.on(device.clone());
    let sampler = BatchSampler::new(train.num_rows(), 8, true, 42).shard(pg.rank(), pg.world_size());
    let train_loader = DataLoader::new(train.clone(), collator.clone(), sampler);

    // AutoModelForSequenceClassification.from_pretrained(checkpoint, num_labels=2)
    // accelerator.prepare(model): every rank starts from rank 0's weights.
    let (model, report) = Model::from_pretrained(&model_dir, 2, 42, &device)?;
    collectives::broadcast_params(pg, model.params(), distributed::buckets::DEFAULT_BUCKET_BYTES)?;
    if pg.is_main() {
        println!("newly initialized: {:?}", report.missing);
    }

    // AdamW(model.parameters(), lr=5e-5): one group, PyTorch's default weight decay 0.01 on every
    // parameter; and get_scheduler("linear", ...).
    let mut optimizer =
        AdamW::new(model.params(), AdamWConfig { lr: 5e-5, decay_all: true, ..AdamWConfig::default() })?;
    let num_training_steps = max_steps.unwrap_or(train_loader.len());
    let schedule = LrSchedule::new(ScheduleKind::Linear, 5e-5, Warmup::Steps(0), num_training_steps)?;

    let mut grads = Gradients::new();
    for (step, batch) in train_loader.iter().take(num_training_steps).enumerate() {
        let batch = batch?;
        let outputs = model.forward_train(&batch)?; // outputs = model(**batch)
        let loss = outputs.loss()?;
        grads.backward(loss, model.params())?; // accelerator.backward(loss)
                                               // The gradients averaged over the ranks (DDP), clip_grad_norm_(model.parameters(), 1.0),
                                               // optimizer.step() at the schedule's rate for this step, lr_scheduler.step(),
                                               // optimizer.zero_grad(): one call, the same the Trainer makes.
        let norm = optimizer_step(&mut grads, &mut optimizer, schedule.lr_at(step), Some(1.0), pg)?;
        if pg.is_main() && step % 50 == 0 {
            println!("step {step}: loss {:.4}, grad norm {:.3}", loss.to_scalar::<f32>()?, norm.unwrap_or_default());
        }
    }

    // accelerator.gather_for_metrics(...): every validation row exactly once.
    let predictions = eval::predict(&model, validation, &collator, 64, pg)?;
    if pg.is_main() {
        println!("validation: {:?}", predictions.metrics(metrics::accuracy_and_f1));
    }
    Ok(())
}
