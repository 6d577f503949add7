//! Every model family against transformers: tiny random models of each family in
//! `tests/fixtures/models/<family>/` (made by `scripts/make_model_fixtures.py` with PyTorch and
//! transformers, versions in `VERSIONS.json`), and what transformers computed with them
//! (`reference.json`): the ids of 16 MRPC validation pairs, their eval logits, and a 4-step AdamW
//! trace with dropout off.
//!
//! Run in release mode: `cargo test --release --test families`.

mod common;

use std::path::{Path, PathBuf};

use accel::data::{DataCollatorWithPadding, DatasetDict, PairTokenizer};
use accel::kernels::cpu::with_reference_ops;
use accel::model::{Model, ModelConfig, WeightFiles};
use accel::optim::{clip_grad_norm, AdamW, AdamWConfig, LrSchedule, ScheduleKind, Warmup};
use candle_core::{Device, Tensor};
use serde_json::Value;

use common::{f32_matrix, local_sources, max_abs_diff, read_json};

/// The fixtures, by folder: one per family, and DeBERTa-v2 again with its other options.
const FAMILIES: [&str; 8] =
    ["bert", "roberta", "xlm-roberta", "distilbert", "electra", "deberta-v2", "deberta-v2-options", "modernbert"];

/// The fixtures' folder: the repository's, or ACCEL_FIXTURES_DIR's (scripts/gpu-check.sh runs these
/// tests from a bundle, on a machine where the build's path does not exist).
fn fixture(family: &str) -> PathBuf {
    std::env::var_os("ACCEL_FIXTURES_DIR")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models"), PathBuf::from)
        .join(family)
}

fn reference(family: &str) -> Value {
    read_json(&fixture(family).join("reference.json"))
}

/// MRPC tokenized by `family`'s tokenizer through accel's pipeline.
fn mrpc(tokenizer: &PairTokenizer) -> DatasetDict {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = accel::config::DataConfig { dataset: Some("glue/mrpc".into()), ..Default::default() };
    let task = accel::data::load_task(&cfg, &local_sources(tmp.path())).unwrap();
    task.tokenize(tokenizer, None).unwrap().0
}

/// Rows `rows` of `split`, collated as `DataCollatorWithPadding` does.
fn batch(
    tokenizer: &PairTokenizer,
    splits: &DatasetDict,
    split: &str,
    rows: std::ops::Range<usize>,
) -> accel::data::Batch {
    batch_on(tokenizer, splits, split, rows, &Device::Cpu)
}

/// [`batch`] on `device`.
fn batch_on(
    tokenizer: &PairTokenizer,
    splits: &DatasetDict,
    split: &str,
    rows: std::ops::Range<usize>,
    device: &Device,
) -> accel::data::Batch {
    let collator = DataCollatorWithPadding::new(tokenizer).unwrap().on(device.clone());
    collator.collate(splits.split(split).unwrap(), &rows.collect::<Vec<_>>()).unwrap()
}

fn logits(model: &Model, b: &accel::data::Batch) -> Vec<Vec<f32>> {
    model.forward(&b.input_ids, &b.token_type_ids, &b.attention_mask, false).unwrap().to_vec2::<f32>().unwrap()
}

/// Per row, the sum and the sum of |h| of the last hidden states over the row's tokens.
fn hidden_sums(model: &Model, b: &accel::data::Batch) -> Vec<[f64; 2]> {
    let hidden = model.last_hidden_state(&b.input_ids, &b.token_type_ids, &b.attention_mask).unwrap();
    let mask = b.attention_mask.to_dtype(candle_core::DType::F32).unwrap().unsqueeze(2).unwrap();
    let hidden = hidden.broadcast_mul(&mask).unwrap().to_vec3::<f32>().unwrap();
    hidden
        .iter()
        .map(|row| {
            let values = row.iter().flatten().map(|&v| f64::from(v));
            [values.clone().sum(), values.map(f64::abs).sum()]
        })
        .collect()
}

#[test]
fn token_ids_equal_transformers() {
    for family in FAMILIES {
        let tokenizer = PairTokenizer::from_dir(&fixture(family)).unwrap();
        let splits = mrpc(&tokenizer);
        let validation = splits.split("validation").unwrap();
        let (ids, types) =
            (validation.int_lists("input_ids").unwrap(), validation.int_lists("token_type_ids").unwrap());
        let reference = reference(family);
        for (row, pair) in reference["pairs"].as_array().unwrap().iter().enumerate() {
            let expected: Vec<i64> = serde_json::from_value(pair["input_ids"].clone()).unwrap();
            assert_eq!(ids.row(row), expected.as_slice(), "{family}: the ids of validation pair {row}");
            if let Some(expected) = pair.get("token_type_ids") {
                let expected: Vec<i64> = serde_json::from_value(expected.clone()).unwrap();
                assert_eq!(types.row(row), expected.as_slice(), "{family}: the token types of validation pair {row}");
            }
        }
        println!("{family}: the ids of 16 validation pairs equal transformers'");
    }
}

/// `family`'s eval logits of validation pairs 0-15 and the sums of their last hidden states on
/// `device` (composed from candle's ops with `reference_ops`) against transformers'; returns the
/// largest logit difference and the largest relative difference of a sum of |h|.
fn logits_against_transformers(family: &str, device: &Device, reference_ops: bool) -> (f32, f64) {
    let dir = fixture(family);
    let tokenizer = PairTokenizer::from_dir(&dir).unwrap();
    let splits = mrpc(&tokenizer);
    let (model, report) = Model::from_pretrained(&dir, 2, 0, device).unwrap();
    assert!(report.is_exact(), "{family}: {report}");
    let reference = reference(family);
    let (mut ours, mut sums) = (Vec::new(), Vec::new());
    for start in [0, 8] {
        let b = batch_on(&tokenizer, &splits, "validation", start..start + 8, device);
        let run = || (logits(&model, &b), hidden_sums(&model, &b));
        let (l, h) = if reference_ops { with_reference_ops(run) } else { run() };
        ours.extend(l);
        sums.extend(h);
    }
    let diff = max_abs_diff(&ours, &f32_matrix(&reference["logits"]));
    let expected_sums: Vec<[f64; 2]> = serde_json::from_value(reference["hidden_sums"].clone()).unwrap();
    for (row, (a, b)) in sums.iter().zip(&expected_sums).enumerate() {
        assert!((a[0] - b[0]).abs() < 1e-3 && (a[1] - b[1]).abs() < 1e-5 * b[1], "{family} pair {row}: {a:?} {b:?}");
    }
    assert!(diff < 1e-4, "{family}: logits differ by {diff}");
    (diff, sums.iter().zip(&expected_sums).map(|(a, b)| (a[1] - b[1]).abs() / b[1]).fold(0.0, f64::max))
}

#[test]
fn logits_equal_transformers_on_the_fused_and_composed_paths() {
    for family in FAMILIES {
        let (fused, worst) = logits_against_transformers(family, &Device::Cpu, false);
        let (composed, _) = logits_against_transformers(family, &Device::Cpu, true);
        println!(
            "{family}: max |logit - transformers'| {fused:.2e} (fused), {composed:.2e} (composed); \
             last hidden states' sum |h| within {worst:.1e} (relative)"
        );
    }
}

/// Batches padded on the left (a tokenizer with `padding_side = "left"`) give transformers' logits
/// in every family, on the fused and composed paths: the positions of BERT's and ModernBERT's count
/// the padding, RoBERTa's skip it, and DeBERTa's padding queries see no key.
#[test]
fn left_padded_batches_give_transformers_logits() {
    use accel::data::tokenize::PaddingSide;
    for family in FAMILIES {
        let dir = fixture(family);
        let tokenizer = PairTokenizer::from_dir(&dir).unwrap();
        let splits = mrpc(&tokenizer);
        let (model, _) = Model::from_pretrained(&dir, 2, 0, &Device::Cpu).unwrap();
        let mut collator = DataCollatorWithPadding::new(&tokenizer).unwrap();
        collator.pad.side = PaddingSide::Left;
        let b = collator.collate(splits.split("validation").unwrap(), &(0..8).collect::<Vec<_>>()).unwrap();
        let expected = f32_matrix(&reference(family)["logits_left"]);
        let (fused, composed) = (logits(&model, &b), with_reference_ops(|| logits(&model, &b)));
        let (a, c) = (max_abs_diff(&fused, &expected), max_abs_diff(&composed, &expected));
        println!("{family}, left padding: max |logit - transformers'| {a:.2e} (fused), {c:.2e} (composed)");
        assert!(a < 1e-4 && c < 1e-4, "{family}: {a} / {c}");
    }
}

/// `family`'s 4 AdamW steps with dropout off on `device` against transformers' trace: each step's
/// loss within 1e-5, gradient norm within 1e-4 (relative above 1) and sum of |p| after it within
/// 1e-5 (relative).
fn trace_against_transformers(family: &str, device: &Device) {
    let dir = fixture(family);
    let tokenizer = PairTokenizer::from_dir(&dir).unwrap();
    let splits = mrpc(&tokenizer);
    let mut config = ModelConfig::from_file(dir.join("config.json")).unwrap();
    config.set_all_dropout(0.0);
    let (model, _) = Model::from_pretrained_with_config(&dir, config, 2, 0, device).unwrap();
    let trace = &reference(family)["trace"];
    let steps = trace["steps"].as_array().unwrap();
    let lr = trace["lr"].as_f64().unwrap();
    let schedule = LrSchedule::new(ScheduleKind::Linear, lr, Warmup::Steps(0), steps.len()).unwrap();
    let weight_decay = trace["weight_decay"].as_f64().unwrap();
    let adamw = AdamWConfig { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay, decay_all: true };
    let mut opt = AdamW::new(model.params(), adamw).unwrap();
    for (i, golden) in steps.iter().enumerate() {
        let b = batch_on(&tokenizer, &splits, "train", 8 * i..8 * i + 8, device);
        opt.set_lr(schedule.lr_at(i));
        let out = model.forward_train(&b).unwrap();
        let loss = out.loss().unwrap();
        let mut grads = loss.backward().unwrap();
        let norm = clip_grad_norm(&mut grads, model.params(), trace["max_grad_norm"].as_f64().unwrap()).unwrap();
        opt.step(&grads).unwrap();
        let loss = f64::from(loss.to_scalar::<f32>().unwrap());
        let abs_sum: f64 = model
            .params()
            .iter()
            .map(|(_, v)| {
                v.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| f64::from(x.abs())).sum::<f64>()
            })
            .sum();
        let (g_loss, g_norm, g_sum) = (
            golden["loss"].as_f64().unwrap(),
            golden["grad_norm_preclip"].as_f64().unwrap(),
            golden["param_abs_sum"].as_f64().unwrap(),
        );
        println!(
            "{family} step {} on {:?}: loss {loss:.7} ({:+.1e}), grad norm {norm:.6} ({:+.1e}), sum |p| {abs_sum:.4} ({:+.1e})",
            i + 1,
            device.location(),
            loss - g_loss,
            norm - g_norm,
            abs_sum - g_sum
        );
        assert!((loss - g_loss).abs() < 1e-5, "{family} step {}: loss {loss} against {g_loss}", i + 1);
        assert!(
            (norm - g_norm).abs() < 1e-4 * g_norm.max(1.0),
            "{family} step {}: norm {norm} against {g_norm}",
            i + 1
        );
        assert!((abs_sum - g_sum).abs() < 1e-5 * g_sum, "{family} step {}: sum |p| {abs_sum} against {g_sum}", i + 1);
    }
}

#[test]
fn training_traces_equal_transformers() {
    for family in FAMILIES {
        trace_against_transformers(family, &Device::Cpu);
    }
}

/// On a GPU, where there is one: every family's logits and training trace against transformers',
/// as on the CPU (scripts/gpu-check.sh runs it).
#[test]
fn every_family_on_the_gpu_matches_transformers() {
    if let Some(why) = accel::device::gpu_unavailable() {
        eprintln!("every_family_on_the_gpu_matches_transformers did not run: not on a GPU: {why}");
        return;
    }
    let device = accel::device::DeviceSpec::Cuda(Some(0)).resolve(0).unwrap();
    for family in FAMILIES {
        let (diff, worst) = logits_against_transformers(family, &device, false);
        println!("GPU {family}: max |logit - transformers'| {diff:.2e}, sum |h| within {worst:.1e}");
        trace_against_transformers(family, &device);
    }
}

/// The names and shapes in a safetensors file.
fn keys(path: &Path) -> Vec<(String, Vec<usize>)> {
    let files = WeightFiles::open(path).unwrap();
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let mut keys: Vec<_> = files.keys().map(|k| (k.to_string(), tensors[k].dims().to_vec())).collect();
    keys.sort();
    keys
}

#[test]
fn saved_models_have_transformers_names_and_their_family() {
    for family in FAMILIES {
        let dir = fixture(family);
        let (model, _) = Model::from_pretrained(&dir, 2, 0, &Device::Cpu).unwrap();
        let out = tempfile::tempdir().unwrap();
        model.save_pretrained(out.path()).unwrap();
        // transformers wrote the fixture: the same keys and shapes load with nothing missing or unexpected.
        assert_eq!(keys(&out.path().join("model.safetensors")), keys(&dir.join("model.safetensors")), "{family}");
        let (saved, theirs) = (read_json(&out.path().join("config.json")), read_json(&dir.join("config.json")));
        for key in ["model_type", "architectures", "id2label", "vocab_size", "pad_token_id"] {
            assert_eq!(saved[key], theirs[key], "{family}: config.json's {key}");
        }
        let (again, report) = Model::from_pretrained(out.path(), 2, 0, &Device::Cpu).unwrap();
        assert!(report.is_exact(), "{family}: {report}");
        let tokenizer = PairTokenizer::from_dir(&dir).unwrap();
        let b = batch(&tokenizer, &mrpc(&tokenizer), "validation", 0..8);
        assert_eq!(logits(&model, &b), logits(&again, &b), "{family}");
    }
}

/// A base model's checkpoint (the encoder alone, with or without the family's prefix) gets a fresh
/// head and loads; a checkpoint that leaves encoder weights out is refused, naming them.
#[test]
fn base_checkpoints_load_and_missing_encoders_are_refused() {
    for family in FAMILIES {
        let dir = fixture(family);
        let (model, _) = Model::from_pretrained(&dir, 2, 0, &Device::Cpu).unwrap();
        let config = ModelConfig::from_file(dir.join("config.json")).unwrap();
        let prefix = format!("{}.", config.family().base_prefix());
        let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
        let base = tempfile::tempdir().unwrap();
        std::fs::copy(dir.join("config.json"), base.path().join("config.json")).unwrap();
        let encoder: Vec<(String, Tensor)> = tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|k| (k.to_string(), v.clone())))
            .filter(|(k, _)| !k.starts_with("pooler."))
            .collect();
        candle_core::safetensors::save(&encoder.iter().cloned().collect(), base.path().join("model.safetensors"))
            .unwrap();
        let (_, report) = Model::from_pretrained(base.path(), 2, 0, &Device::Cpu).unwrap();
        let mut head: Vec<&str> =
            model.params().names().filter(|n| !n.starts_with(&prefix) || n.contains(".pooler.")).collect();
        head.sort();
        assert_eq!(report.missing, head, "{family}: only the head is new");
        assert!(report.unused.is_empty(), "{family}: {report}");

        // Half the encoder gone: an error that says how much, and which.
        let half: std::collections::HashMap<String, Tensor> = encoder.iter().skip(encoder.len() / 2).cloned().collect();
        candle_core::safetensors::save(&half, base.path().join("model.safetensors")).unwrap();
        let err = Model::from_pretrained(base.path(), 2, 0, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("encoder parameters uninitialized") && err.contains(&prefix), "{family}: {err}");
    }
}

/// The case users meet: a RoBERTa config beside BERT weights is refused, naming the family; an
/// unknown model_type is refused in one line naming the supported list, and an option accel does
/// not implement by its key.
#[test]
fn weights_of_another_family_and_unknown_types_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("bert").join("model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    std::fs::copy(fixture("roberta").join("config.json"), dir.path().join("config.json")).unwrap();
    let err = Model::from_pretrained(dir.path(), 2, 0, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("roberta encoder parameters uninitialized"), "{err}");
    assert!(err.contains("such as bert.") && err.contains("model_type (roberta)"), "{err}");

    let mut config = read_json(&fixture("roberta").join("config.json"));
    config["model_type"] = "gpt2".into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let err = Model::from_pretrained(dir.path(), 2, 0, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("model_type") && err.contains("\"gpt2\" is not supported"), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");

    // An option of the family that accel does not implement is refused by its key.
    let mut config = read_json(&fixture("deberta-v2").join("config.json"));
    config["conv_kernel_size"] = 3.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let err = Model::from_pretrained(dir.path(), 2, 0, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("conv_kernel_size") && err.contains("not implemented"), "{err}");
}

/// The parameters named as having no gradient (attention's key biases where softmax ignores them)
/// get only rounding noise, and every other parameter a real gradient.
#[test]
fn zero_gradient_parameters_are_exactly_those_without_a_gradient() {
    for family in FAMILIES {
        let dir = fixture(family);
        let tokenizer = PairTokenizer::from_dir(&dir).unwrap();
        let splits = mrpc(&tokenizer);
        let config = ModelConfig::from_file(dir.join("config.json")).unwrap();
        let (model, _) = Model::from_pretrained(&dir, 2, 0, &Device::Cpu).unwrap();
        let zero = Model::zero_gradient_parameters(&config).unwrap();
        let b = batch(&tokenizer, &splits, "train", 0..8);
        let grads = model.forward_train(&b).unwrap().loss().unwrap().backward().unwrap();
        let norm = |name: &str| {
            let g = grads.get(model.params().get(name).unwrap().as_tensor()).unwrap();
            f64::from(g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()).sqrt()
        };
        let largest = model.params().names().map(norm).fold(0.0, f64::max);
        for name in model.params().names() {
            let relative = norm(name) / largest;
            match zero.iter().any(|z| z == name) {
                true => assert!(relative < 1e-5, "{family}: {name} has a gradient {relative:e} of the largest"),
                false => assert!(relative > 1e-5, "{family}: {name}'s gradient is only {relative:e} of the largest"),
            }
        }
        println!("{family}: {} parameters without a gradient: {zero:?}", zero.len());
    }
}

/// Under bf16 every family's logits stay within bf16's precision of the f32 ones (and differ from
/// them: the bf16 products ran), and training's gradients are finite. Skipped, saying why, where
/// the products stay f32 (see tests/mixed_precision.rs).
#[test]
fn every_family_runs_in_bf16() {
    use accel::kernels::{Autocast, MixedPrecision};
    if let Err(why) = accel::kernels::cpu::bf16_products() {
        eprintln!("skipped every_family_runs_in_bf16: {why}");
        return;
    }
    for family in FAMILIES {
        let dir = fixture(family);
        let tokenizer = PairTokenizer::from_dir(&dir).unwrap();
        let splits = mrpc(&tokenizer);
        let (model, _) = Model::from_pretrained(&dir, 2, 0, &Device::Cpu).unwrap();
        let autocast = Autocast::new(MixedPrecision::Bf16, model.params().tracked()).unwrap();
        let b = batch(&tokenizer, &splits, "validation", 0..8);
        let (f32_logits, bf16_logits) = (logits(&model, &b), autocast.run(|| logits(&model, &b)));
        let diff = max_abs_diff(&bf16_logits, &f32_logits);
        let scale = f32_logits.iter().flatten().fold(1f32, |m, v| m.max(v.abs()));
        println!("{family}: bf16 logits within {diff:.2e} of f32's (largest |logit| {scale:.2})");
        assert!(diff > 0.0 && diff < 5e-2 * scale, "{family}: {diff}");
        let grads = autocast.run(|| model.forward_train(&b).unwrap().loss().unwrap().backward().unwrap());
        for (name, var) in model.params().iter() {
            let g = grads.get(var.as_tensor()).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(g.is_finite(), "{family}: {name}");
        }
    }
}

/// Token classification and question answering heads of every family against transformers': the
/// parameter names (transformers' `named_parameters`), and with transformers' heads loaded, the
/// scores on validation pairs 0-7, their best tags (start and end) and the loss against fixed labels.
#[test]
fn task_heads_equal_transformers() {
    use accel::config::Task;
    use accel::data::collate::{Spans, TokenLabels};
    for family in FAMILIES {
        let dir = fixture(family);
        let tokenizer = PairTokenizer::from_dir(&dir).unwrap();
        let splits = mrpc(&tokenizer);
        let b = batch(&tokenizer, &splits, "validation", 0..8);
        let (rows, len) = b.dims().unwrap();
        let mask = b.attention_mask.to_vec2::<u32>().unwrap();
        for (task, key, outputs, file) in [
            (Task::TokenClassification, "token_classification", 5, "token_head.safetensors"),
            (Task::QuestionAnswering, "question_answering", 2, "qa_head.safetensors"),
        ] {
            let golden = &reference(family)[key];
            let config = ModelConfig::from_file(dir.join("config.json")).unwrap();
            let (model, _) = Model::from_pretrained_for(task, &dir, config, outputs, (0, true), &Device::Cpu).unwrap();
            let report = model.load_weights(dir.join(file)).unwrap();
            assert!(report.unused.is_empty(), "{family} {key}: {report}");
            let names: Vec<String> = model.params().names().map(str::to_string).collect();
            let expected: Vec<String> = serde_json::from_value(golden["parameters"].clone()).unwrap();
            assert_eq!(names, expected, "{family} {key}: the parameters transformers' model has");

            let mut b = batch(&tokenizer, &splits, "validation", 0..8);
            let scores = model.forward(&b.input_ids, &b.token_type_ids, &b.attention_mask, false).unwrap();
            let scores = scores.to_vec3::<f32>().unwrap();
            let (mut sums, mut best) = (Vec::new(), Vec::new());
            for (r, row) in scores.iter().enumerate() {
                let counted = |p: usize| task == Task::QuestionAnswering || mask[r][p] == 1;
                sums.push(
                    (0..len).filter(|&p| counted(p)).flat_map(|p| &row[p]).map(|v| f64::from(v.abs())).sum::<f64>(),
                );
                let argmax = |values: Vec<f32>| values.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).unwrap().0;
                best.push(match task {
                    Task::QuestionAnswering => (0..2).map(|k| argmax(row.iter().map(|s| s[k]).collect())).collect(),
                    _ => (0..len).filter(|&p| mask[r][p] == 1).map(|p| argmax(row[p].clone())).collect::<Vec<_>>(),
                });
            }
            let expected_sums: Vec<f64> = serde_json::from_value(golden["abs_sums"].clone()).unwrap();
            let worst = sums.iter().zip(&expected_sums).map(|(a, e)| (a - e).abs() / e).fold(0.0, f64::max);
            assert!(worst < 1e-5, "{family} {key}: a row's sum of |score| differs by {worst:e} (relative)");
            let expected_best: Vec<Vec<usize>> = serde_json::from_value(golden["best"].clone()).unwrap();
            assert_eq!(best, expected_best, "{family} {key}");

            // The loss against the fixed labels of the reference.
            let ids = b.input_ids.to_vec2::<u32>().unwrap();
            match task {
                Task::TokenClassification => {
                    let tag = |r: usize, p: usize| (p > 0 && mask[r][p] == 1).then_some(ids[r][p] % 5);
                    let tags: Vec<Option<u32>> = (0..rows * len).map(|i| tag(i / len, i % len)).collect();
                    let t = |v: Vec<f32>| Tensor::from_vec(v, (rows, len), &Device::Cpu).unwrap();
                    b.token_labels = Some(TokenLabels {
                        ids: Tensor::from_vec(
                            tags.iter().map(|t| t.unwrap_or(0)).collect::<Vec<u32>>(),
                            (rows, len),
                            &Device::Cpu,
                        )
                        .unwrap(),
                        weights: t(tags.iter().map(|t| f32::from(u8::from(t.is_some()))).collect()),
                        count: tags.iter().flatten().count(),
                        max: tags.iter().flatten().copied().max().unwrap_or(0),
                    });
                }
                _ => {
                    let mut starts: Vec<u32> = (0..rows as u32).map(|r| 1 + r % 3).collect();
                    let ends: Vec<u32> = starts.iter().map(|s| s + 2).collect();
                    starts[0] = 1000;
                    let t = |v: Vec<u32>| Tensor::from_vec(v, rows, &Device::Cpu).unwrap();
                    b.spans = Some(Spans { start: t(starts), end: t(ends) });
                }
            }
            let logits = model.forward(&b.input_ids, &b.token_type_ids, &b.attention_mask, false).unwrap();
            let loss = f64::from(model.batch_loss(&logits, &b).unwrap().unwrap().to_scalar::<f32>().unwrap());
            let expected_loss = golden["loss"].as_f64().unwrap();
            println!(
                "{family} {key}: sums of |score| within {worst:.1e}, loss {loss:.6} ({:+.1e})",
                loss - expected_loss
            );
            assert!((loss - expected_loss).abs() < 1e-5, "{family} {key}: loss {loss} against {expected_loss}");
        }
    }
}
