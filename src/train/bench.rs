//! `accel bench`: training throughput on this machine's device, measured as
//! `../shared/bench/gpu_bench.py` measures PyTorch, so the two print side by side: a random-init
//! classifier of a named family and size, AdamW steps on the given batches in turn (MRPC's rows in file
//! order padded per batch, as the reference takes them, or random tokens of one length), the time
//! of each step after a warm-up (the device is synchronised around each step), and model FLOP
//! utilisation counted as 6 x non-embedding parameters x the tokens computed (padded ones on a
//! GPU, real ones on the CPU, which skips padding) against a peak. Also the gradient all-reduce of
//! the job's process group at the model's gradient size, when there are several ranks.

use std::time::Instant;

use candle_core::Device;
use serde::Serialize;

use crate::data::Batch;
use crate::distributed::{ProcessGroup, ZeroStage};
use crate::kernels::{Autocast, MixedPrecision};
use crate::model::config::Arch;
use crate::model::{BertConfig, DebertaV2Config, DistilBertConfig, Family, Model, ModelConfig, ModernBertConfig};
use crate::optim::AdamWConfig;
use crate::{Error, Result};

pub use super::memory::random_batch;
use super::run_figures::{self, Counts};
use super::{Gradients, Optimizer};
use crate::report::RunReport;
use crate::spans;

/// The models `--model` names, each the shape of a checkpoint users fine-tune (a family's name
/// alone means its base size): all-MiniLM-L6-v2 (`minilm`), `bert-base`, `bert-large`,
/// `roberta-base`, `xlm-roberta-base`, `distilbert-base`, `electra-small` and `electra-base`
/// (discriminators), `deberta-v3-base` and `modernbert-base`.
pub fn named_config(name: &str) -> Option<ModelConfig> {
    let bert = |hidden, layers, heads, intermediate| BertConfig {
        hidden_size: hidden,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        intermediate_size: intermediate,
        ..BertConfig::default()
    };
    // RoBERTa's checkpoints: one token type, positions after the padding id 1.
    let roberta = |vocab| BertConfig {
        vocab_size: vocab,
        max_position_embeddings: 514,
        type_vocab_size: 1,
        pad_token_id: Some(1),
        layer_norm_eps: 1e-5,
        ..BertConfig::default()
    };
    let (family, arch) = match name {
        "minilm" => (Family::Bert, bert(384, 6, 12, 1536)),
        "bert-base" | "bert" => (Family::Bert, BertConfig::default()),
        "bert-large" => (Family::Bert, bert(1024, 24, 16, 4096)),
        "roberta-base" | "roberta" => (Family::Roberta, roberta(50265)),
        "xlm-roberta-base" | "xlm-roberta" => (Family::XlmRoberta, roberta(250002)),
        "electra-small" => (Family::Electra, BertConfig { embedding_size: Some(128), ..bert(256, 12, 4, 1024) }),
        "electra-base" | "electra" => {
            (Family::Electra, BertConfig { embedding_size: Some(768), ..BertConfig::default() })
        }
        "distilbert-base" | "distilbert" => {
            return ModelConfig::new(Family::DistilBert, Arch::DistilBert(DistilBertConfig::default())).ok()
        }
        "deberta-v3-base" | "deberta-v3" | "deberta-v2" | "deberta" => {
            let v3 = DebertaV2Config {
                vocab_size: 128100,
                hidden_size: 768,
                num_hidden_layers: 12,
                num_attention_heads: 12,
                intermediate_size: 3072,
                relative_attention: true,
                position_buckets: 256,
                pos_att_type: vec!["p2c".into(), "c2p".into()],
                share_att_key: true,
                norm_rel_ebd: "layer_norm".into(),
                position_biased_input: false,
                ..DebertaV2Config::default()
            };
            return ModelConfig::new(Family::DebertaV2, Arch::DebertaV2(v3)).ok();
        }
        "modernbert-base" | "modernbert" => {
            let base = ModernBertConfig { classifier_pooling: "mean".into(), ..ModernBertConfig::default() };
            return ModelConfig::new(Family::ModernBert, Arch::ModernBert(base)).ok();
        }
        _ => return None,
    };
    ModelConfig::new(family, Arch::Bert(arch)).ok()
}

/// What one benchmark measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub size: String,
    pub device: String,
    pub mixed_precision: String,
    pub batch: usize,
    /// Mean padded length of the measured batches.
    pub mean_seq_len: f64,
    pub steps: usize,
    pub samples_per_s: f64,
    /// Padded tokens per second.
    pub tokens_per_s: f64,
    pub ms_step_median: f64,
    pub nonembedding_params: u64,
    /// 6 x non-embedding parameters x computed tokens per second over `peak_tflops`.
    pub mfu_vs_peak: f64,
    pub peak_tflops: f64,
    /// Median time of one all-reduce of the gradients' size over the process group (several ranks).
    pub allreduce_ms_median: Option<f64>,
    /// The all-reduce's bus bandwidth, 2 (n - 1) / n x bytes / time, as nccl-tests reports it.
    pub allreduce_bus_gb_per_s: Option<f64>,
    /// The ZeRO stage the steps ran at.
    pub zero_stage: u8,
    /// This rank's peak resident memory from the model's creation to the last step, in bytes.
    pub peak_resident_bytes: Option<u64>,
    /// What training added at that peak to the process before the model was built: the weights,
    /// gradients, AdamW's state, the activations and the reductions' buffers.
    pub training_added_bytes: Option<u64>,
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchSpec {
    pub size: String,
    pub config: ModelConfig,
    pub warmup: usize,
    pub steps: usize,
    pub precision: MixedPrecision,
    pub peak_tflops: f64,
    /// What is sharded over the ranks (ZeRO's stage; one process ignores it).
    pub zero_stage: ZeroStage,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs `spec` on `device` over `batches` in turn (on that device already; every rank of `pg`
/// runs it, and gradients are averaged as in training).
/// Returns the figures and the run report of the measured steps (the table `accel train` prints).
pub fn run(
    spec: &BenchSpec,
    batches: &[Batch],
    device: &Device,
    pg: &dyn ProcessGroup,
) -> Result<(BenchResult, RunReport)> {
    if spec.steps == 0 || batches.is_empty() {
        return Err(Error::config("bench", "--steps must be at least 1, and there must be a batch"));
    }
    let positions = spec.config.dims().max_sequence;
    let mut shapes = Vec::with_capacity(batches.len());
    for b in batches {
        let (rows, len) = b.dims()?;
        if len > positions {
            return Err(Error::config("seq_len", format!("{len} is longer than the model's {positions} positions")));
        }
        shapes.push((rows, len));
    }
    let before_model = super::memory::resident_bytes("VmRSS").ok();
    let model = Model::new(spec.config.clone(), 2, 0, device)?;
    // The peak from here on is training's: the initialisation's own temporaries do not count.
    super::memory::reset_peak();
    let autocast = Autocast::on(spec.precision, device, model.params().tracked())?;
    let params = model.params().clone();
    let bucket_bytes = crate::distributed::buckets::DEFAULT_BUCKET_BYTES;
    let mut optimizer = Optimizer::new(&params, AdamWConfig::default(), spec.zero_stage, bucket_bytes, pg)?;
    let mut grads = Gradients::new();
    let (mut total_s, mut rows, mut tokens) = (0.0, 0usize, 0usize);
    let mut times = Vec::with_capacity(spec.steps);
    let mut counts = Counts::default();
    for step in 0..spec.warmup + spec.steps {
        if step == spec.warmup {
            // The report covers the measured steps.
            spans::reset();
        }
        let (batch, (b, l)) = (&batches[step % batches.len()], shapes[step % batches.len()]);
        device.synchronize()?;
        let started = Instant::now();
        spans::set_step(step + 1);
        let step_span = spans::enter(spans::STEP);
        model.set_dropout_position(step as u64, (pg.rank() * b) as u64);
        autocast.run(|| -> Result<()> {
            let out = {
                let _forward = spans::enter(spans::FORWARD);
                model.forward_train(batch)?
            };
            let _backward = spans::enter(spans::BACKWARD);
            optimizer.backward(&mut grads, out.loss()?, &params, true, pg)
        })?;
        optimizer.step(&mut grads, AdamWConfig::default().lr, Some(1.0), pg)?;
        device.synchronize()?;
        counts.sample_device_memory(device);
        drop(step_span);
        if step >= spec.warmup {
            counts.add(batch, device)?;
            let s = started.elapsed().as_secs_f64();
            times.push(s);
            total_s += s;
            rows += b;
            tokens += b * l;
        }
    }
    let report = run_figures::build(
        &run_figures::Inputs {
            model: &model,
            config: &spec.config,
            num_labels: 2,
            device,
            precision: spec.precision,
            products: autocast.products(),
            counts: &counts,
            runtime_s: total_s,
            steps: spec.steps,
            zero_stage: optimizer.stage(),
        },
        pg,
    )?;
    let nonemb = model.nonembedding_parameters();
    // The training steps' peak, before the probe below adds its own buffers.
    let peak_resident_bytes = crate::runtime::status_bytes("VmHWM");
    let training_added_bytes = before_model.zip(peak_resident_bytes).map(|(b, p)| p.saturating_sub(b));
    // The probe times DDP's all-reduce; sharded steps report theirs in the run report's phases.
    let (allreduce_ms_median, allreduce_bus_gb_per_s) = match (pg.world_size(), optimizer.stage()) {
        (1, _) | (_, ZeroStage::Optimizer | ZeroStage::Gradients) => (None, None),
        (n, ZeroStage::Replicated) => {
            let s = time_all_reduce(&params, device, pg, 10)?;
            let bytes = 4.0 * params.num_elements() as f64;
            (Some(1000.0 * s), Some(2.0 * (n - 1) as f64 / n as f64 * bytes / s / 1e9))
        }
    };
    let result = BenchResult {
        size: spec.size.clone(),
        device: crate::device::name(device),
        mixed_precision: spec.precision.to_string(),
        batch: shapes[0].0,
        mean_seq_len: tokens as f64 / rows as f64,
        steps: spec.steps,
        samples_per_s: rows as f64 / total_s,
        tokens_per_s: tokens as f64 / total_s,
        ms_step_median: 1000.0 * median(times),
        nonembedding_params: nonemb,
        mfu_vs_peak: 6.0 * nonemb as f64 * counts.computed_tokens as f64 / total_s / (spec.peak_tflops * 1e12),
        peak_tflops: spec.peak_tflops,
        allreduce_ms_median,
        allreduce_bus_gb_per_s,
        zero_stage: optimizer.stage().number(),
        peak_resident_bytes,
        training_added_bytes,
    };
    Ok((result, report))
}

/// Median seconds of one gradient all-reduce of every parameter's size (as training reduces it).
fn time_all_reduce(
    params: &crate::model::Params,
    device: &Device,
    pg: &dyn ProcessGroup,
    rounds: usize,
) -> Result<f64> {
    let mut store = candle_core::backprop::GradStore::default();
    for (_, var) in params.iter() {
        store.insert(var.as_tensor(), var.as_tensor().ones_like()?);
    }
    let mut reducer = crate::distributed::reducer::GradientReducer::new();
    let mut times = Vec::with_capacity(rounds);
    for round in 0..rounds + 2 {
        pg.barrier()?;
        device.synchronize()?;
        let started = Instant::now();
        reducer.all_reduce_mean(&mut store, params, pg, crate::distributed::buckets::DEFAULT_BUCKET_BYTES)?;
        device.synchronize()?;
        if round >= 2 {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    Ok(median(times))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributed::SingleProcess;

    #[test]
    fn named_sizes_have_the_reference_shapes() {
        let minilm = named_config("minilm").unwrap().dims();
        assert_eq!((minilm.hidden_size, minilm.num_layers, minilm.intermediate_size), (384, 6, 1536));
        let base = named_config("bert-base").unwrap().dims();
        assert_eq!((base.hidden_size, base.num_layers, base.vocab_size), (768, 12, 30522));
        let roberta = named_config("roberta").unwrap();
        assert_eq!(
            (roberta.family(), roberta.dims().vocab_size, roberta.dims().max_sequence),
            (Family::Roberta, 50265, 512)
        );
        let electra = named_config("electra-small").unwrap();
        assert_eq!((electra.family(), electra.dims().hidden_size), (Family::Electra, 256));
        assert_eq!(named_config("distilbert").unwrap().dims().num_layers, 6);
        let deberta = named_config("deberta-v3-base").unwrap();
        let count = crate::train::memory::parameter_count(&deberta, 2).unwrap();
        assert_eq!((deberta.family(), count / 1_000_000), (Family::DebertaV2, 184), "deberta-v3-base: 184M");
        let modern = named_config("modernbert").unwrap();
        let count = crate::train::memory::parameter_count(&modern, 2).unwrap();
        assert_eq!((modern.family(), count / 1_000_000), (Family::ModernBert, 149), "ModernBERT-base: 149M");
        assert!(named_config("gpt").is_none());
    }

    #[test]
    fn a_tiny_bench_reports_consistent_figures() {
        let spec = BenchSpec {
            size: "tiny".into(),
            config: ModelConfig::bert(BertConfig::tiny()),
            warmup: 1,
            steps: 4,
            precision: MixedPrecision::No,
            peak_tflops: 1.0,
            zero_stage: ZeroStage::Gradients,
        };
        let cfg = &spec.config;
        let batches =
            [random_batch(cfg, 2, 4, 8, &Device::Cpu).unwrap(), random_batch(cfg, 2, 4, 16, &Device::Cpu).unwrap()];
        let (r, report) = run(&spec, &batches, &Device::Cpu, &SingleProcess).unwrap();
        assert_eq!((r.device.as_str(), r.batch, r.steps), ("cpu", 4, 4));
        // The run report of the same steps: the table `accel train` prints.
        assert_eq!((report.steps, report.world_size), (4, 1));
        assert!((report.padded_tokens_per_s / report.samples_per_s - 12.0).abs() < 1e-9);
        assert!(report.table().contains("forward"), "{}", report.table());
        // Steps 1-4 after one warm-up: lengths 16, 8, 16, 8.
        assert_eq!(r.mean_seq_len, 12.0);
        assert!(r.samples_per_s > 0.0 && (r.tokens_per_s / r.samples_per_s - 12.0).abs() < 1e-9);
        assert!(r.ms_step_median > 0.0);
        // 2 layers of 4 (16x16 + 16) + 2 x 16 + 16 x 32 + 32 + 32 x 16 + 16 + 2 x 16, a pooler of
        // 16 x 16 + 16 and a head of 16 x 2 + 2.
        assert_eq!(r.nonembedding_params, 2 * (4 * 272 + 32 + 544 + 528 + 32) + 272 + 34);
        assert!(r.allreduce_ms_median.is_none());
        assert_eq!(r.zero_stage, 0, "one process shards nothing");
        let long = [random_batch(cfg, 2, 2, 64, &Device::Cpu).unwrap()];
        let err = run(&spec, &long, &Device::Cpu, &SingleProcess).unwrap_err();
        assert!(err.to_string().contains("longer than the model's 32 positions"), "{err}");
    }
}
