//! bf16 mixed precision against PyTorch's `torch.autocast("cpu", dtype=torch.bfloat16)`: the val16
//! logits and the first four steps of the weight-decay trace (`*_bf16.json` in the golden folder).
//!
//! Where a run's products stay f32 (see `bf16_library` and `bf16_calibration`: no library is
//! installed, the CPU has no bf16 instructions, or its bf16 products measured slower than f32's),
//! each test says it was skipped and why; `ACCEL_BF16_LIBRARY` runs them anyway (`emulated` on any
//! CPU), as `scripts/test.sh` does wherever they were skipped.
//!
//! Run in release mode: `cargo test --release --test mixed_precision`.

mod common;

use accel::kernels::{Autocast, MixedPrecision};
use accel::model::Model;
use accel::optim::{clip_grad_norm, AdamW, AdamWConfig, LrSchedule, ScheduleKind, Warmup};

use common::{batch_from_json, f32_matrix, golden_dir, golden_model, max_abs_diff, read_json, rel_diff, trace_batches};

/// The bf16 policy for `model`, or `None` after saying why the test is skipped.
fn bf16(test: &str, model: &Model) -> Option<Autocast> {
    match accel::kernels::cpu::bf16_products() {
        Ok(_) => Some(Autocast::new(MixedPrecision::Bf16, model.params().tracked()).unwrap()),
        Err(why) => {
            eprintln!("skipped {test}: {why}");
            None
        }
    }
}

/// Logits of val16 under bf16 against PyTorch's autocast logits and the f32 ones.
///
/// The tolerance: the logits are about 0.05 here (a fresh classifier), and PyTorch's own bf16
/// logits sit up to 2.6e-4 from its f32 ones (about 2^-8 of the scale: bf16 keeps 8 significant
/// bits, and autocast also rounds every product's output to bf16, which accel does not). Two bf16
/// runs with different rounding points may each be that far from f32, in different directions, so
/// accel is held to twice PyTorch's own deviation from PyTorch's bf16 logits, and to the same
/// bound from the f32 logits; it must also differ from f32 (the bf16 path really ran).
#[test]
fn val16_bf16_logits_match_torch_autocast() {
    let model = golden_model(None);
    let Some(autocast) = bf16("val16_bf16_logits_match_torch_autocast", &model) else { return };
    let f32_golden = read_json(&golden_dir().join("val16_logits.json"));
    let bf16_golden = read_json(&golden_dir().join("val16_logits_bf16.json"));
    let torch_deviation = bf16_golden["max_abs_diff_vs_fp32_logits"].as_f64().unwrap() as f32;
    let tolerance = 2.0 * torch_deviation;
    for (i, (b32, b16)) in
        f32_golden["batches"].as_array().unwrap().iter().zip(bf16_golden["batches"].as_array().unwrap()).enumerate()
    {
        let batch = batch_from_json(b32);
        let logits = autocast
            .run(|| model.forward(&batch.input_ids, &batch.token_type_ids, &batch.attention_mask, false))
            .unwrap();
        let ours = logits.to_vec2::<f32>().unwrap();
        let vs_torch_bf16 = max_abs_diff(&ours, &f32_matrix(&b16["logits_bf16_autocast"]));
        let vs_f32 = max_abs_diff(&ours, &f32_matrix(&b32["logits"]));
        let loss = model.loss(&logits, &batch.labels).unwrap().to_scalar::<f32>().unwrap();
        let torch_loss = b16["loss_mean_ce"].as_f64().unwrap();
        println!(
            "batch {i}: max |logit diff| vs torch bf16 {vs_torch_bf16:.3e}, vs f32 {vs_f32:.3e} (torch bf16 vs f32 \
             {torch_deviation:.3e}); loss {loss} vs torch bf16 {torch_loss}"
        );
        assert!(vs_torch_bf16 < tolerance, "batch {i}: {vs_torch_bf16} from torch's bf16 logits");
        assert!(vs_f32 < tolerance, "batch {i}: {vs_f32} from the f32 logits");
        assert!(vs_f32 > 1e-6, "batch {i}: bf16 logits equal the f32 ones: the bf16 path did not run");
        assert!(rel_diff(f64::from(loss), torch_loss) < 1e-3, "batch {i}: loss {loss} vs {torch_loss}");
    }
}

/// Four AdamW steps of `trace_wd001.json`'s recipe under bf16 against PyTorch's autocast trace:
/// losses within 2e-4 relative and pre-clip gradient norms within 5e-3 (PyTorch's own bf16 losses
/// and norms differ from its f32 ones by up to 2.4e-4 and 0.2%), classifier abs-sums within 1e-5.
#[test]
fn trace_wd001_bf16_matches_torch_autocast() {
    let model = golden_model(Some(0.0));
    let Some(autocast) = bf16("trace_wd001_bf16_matches_torch_autocast", &model) else { return };
    let trace = read_json(&golden_dir().join("trace_wd001_bf16.json"));
    let steps = trace["steps"].as_array().unwrap();
    let batches = trace_batches();
    let schedule = LrSchedule::new(ScheduleKind::Linear, 5e-5, Warmup::Steps(0), steps.len()).unwrap();
    let config = AdamWConfig { lr: 5e-5, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, decay_all: true };
    let mut opt = AdamW::new(model.params(), config).unwrap();
    for (i, (batch, golden)) in batches.iter().zip(steps).enumerate() {
        opt.set_lr(schedule.lr_at(i));
        let (loss, mut grads) = autocast.run(|| {
            let logits = model.forward(&batch.input_ids, &batch.token_type_ids, &batch.attention_mask, true).unwrap();
            let loss = model.loss(&logits, &batch.labels).unwrap();
            let grads = loss.backward().unwrap();
            (f64::from(loss.to_scalar::<f32>().unwrap()), grads)
        });
        let norm = clip_grad_norm(&mut grads, model.params(), 1.0).unwrap();
        // The step makes the bf16 copies of the weights stale: the next forward converts afresh.
        opt.step(&grads).unwrap();
        let weight = model.params().get("classifier.weight").unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let abssum: f64 = weight.iter().map(|v| f64::from(v.abs())).sum();
        let (g_loss, g_norm) = (golden["loss"].as_f64().unwrap(), golden["grad_norm_preclip"].as_f64().unwrap());
        let g_abssum = golden["classifier_weight_abssum"].as_f64().unwrap();
        println!(
            "step {}: loss {loss:.7} vs torch bf16 {g_loss:.7} (f32 {}), grad norm {norm:.6} vs {g_norm:.6} (f32 {}), \
             classifier abs-sum {abssum:.7} vs {g_abssum:.7}",
            i + 1,
            golden["fp32_trace_loss"],
            golden["fp32_trace_grad_norm_preclip"]
        );
        assert!(rel_diff(loss, g_loss) < 2e-4, "step {}: loss {loss} vs {g_loss}", i + 1);
        assert!(rel_diff(norm, g_norm) < 5e-3, "step {}: grad norm {norm} vs {g_norm}", i + 1);
        assert!(rel_diff(abssum, g_abssum) < 1e-5, "step {}: abs-sum {abssum} vs {g_abssum}", i + 1);
    }
}
