//! The course's custom training loop, step by step: data loader, model, AdamW and a linear schedule
//! built by hand, then `forward_train`, `backward`, `clip`, `step`, the schedule and `zero` as
//! separate calls, and an evaluation at the end.
//!
//! `cargo run --release --example custom_loop [STEPS]` with ACCEL_DATA_DIR / ACCEL_MODEL_DIR set
//! (the scripts default them to ../shared). Without STEPS it trains one full epoch of MRPC.

use std::sync::Arc;

use accel::config::DataConfig;
use accel::data::{self, BatchSampler, DataCollatorWithPadding, DataLoader, DatasetCache, PairTokenizer, Sources};
use accel::dist::SingleProcess;
use accel::model::BertForSequenceClassification;
use accel::optim::{AdamW, AdamWConfig, LrSchedule, ScheduleKind, Warmup};
use accel::train::{eval, metrics, Gradients};
use candle_core::Device;

fn main() -> anyhow::Result<()> {
    let max_steps: Option<usize> = std::env::args().nth(1).map(|a| a.parse()).transpose()?;
    let sources = Sources::from_env();

    // load_dataset("glue", "mrpc") and the tokenizer of the checkpoint.
    let task = data::load_task(&DataConfig { dataset: Some("glue/mrpc".into()), ..Default::default() }, &sources)?;
    let model_dir =
        sources.resolve_model("all-MiniLM-L6-v2", &["config.json", "tokenizer.json", "model.safetensors"])?;
    let tokenizer = PairTokenizer::from_dir(&model_dir)?;

    // tokenized = raw.map(tokenize_function, batched=True)
    let (splits, _) = task.tokenize(&tokenizer, Some(&DatasetCache::from_env()))?;
    let train = Arc::new(splits.split("train")?.clone());
    let validation = Arc::new(splits.split("validation")?.clone());

    // DataLoader(train, shuffle=True, batch_size=8, collate_fn=DataCollatorWithPadding(tokenizer))
    let collator = DataCollatorWithPadding::new(&tokenizer)?;
    let train_loader =
        DataLoader::new(train.clone(), collator.clone(), BatchSampler::new(train.num_rows(), 8, true, 42));

    // AutoModelForSequenceClassification.from_pretrained(checkpoint, num_labels=2)
    let (model, report) = BertForSequenceClassification::from_pretrained(&model_dir, 2, 42, &Device::Cpu)?;
    println!("newly initialized: {:?}", report.missing);

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
        grads.backward(loss, model.params())?; // loss.backward()
        let norm = grads.clip(model.params(), 1.0)?; // clip_grad_norm_(model.parameters(), 1.0)
        optimizer.set_lr(schedule.lr_at(step)); // the schedule's rate for this step
        optimizer.step(grads.store())?; // optimizer.step()
        grads.zero(); // optimizer.zero_grad()
        if step % 50 == 0 {
            println!("step {step}: loss {:.4}, grad norm {norm:.3}", loss.to_scalar::<f32>()?);
        }
    }

    let predictions = eval::predict(&model, validation, &collator, 64, &SingleProcess)?;
    println!("validation: {:?}", predictions.metrics(metrics::accuracy_and_f1));
    Ok(())
}
