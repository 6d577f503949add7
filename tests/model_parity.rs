//! Model parity with transformers (golden logits and loss), gradients for every parameter, save/load round trips, dropout, and load reports.
//!
//! Run in release mode: `cargo test --release --test model_parity`.

mod common;

use accel::kernels::cpu::with_reference_ops;
use accel::model::config::Arch;
use accel::model::{BertConfig, DropoutRng, Model, ModelConfig};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use common::{batch_from_json, f32_matrix, golden_dir, golden_model, max_abs_diff, minilm_dir, read_json, Batch};

/// Both validation batches of `val16_logits.json` (eval mode) give transformers' logits within 1e-4
/// and its mean cross-entropy.
#[test]
fn val16_logits_and_loss_match_transformers() {
    let model = golden_model(None);
    let golden = read_json(&golden_dir().join("val16_logits.json"));
    let batches = golden["batches"].as_array().expect("batches");
    assert_eq!(batches.len(), 2);
    for (i, b) in batches.iter().enumerate() {
        let batch = batch_from_json(b);
        let logits = model.forward(&batch.input_ids, &batch.token_type_ids, &batch.attention_mask, false).unwrap();
        let ours = logits.to_vec2::<f32>().unwrap();
        let diff = max_abs_diff(&ours, &f32_matrix(&b["logits"]));
        let loss = model.loss(&logits, &batch.labels).unwrap().to_scalar::<f32>().unwrap();
        let expected_loss = b["loss_mean_ce"].as_f64().unwrap();
        println!(
            "batch {i} {:?}: max |logit diff| = {diff:.3e}, loss {loss} vs {expected_loss}",
            batch.input_ids.dims()
        );
        assert!(diff < 1e-4, "batch {i}: logits differ by {diff}");
        assert!((f64::from(loss) - expected_loss).abs() < 1e-5, "batch {i}: loss {loss} vs {expected_loss}");
    }
}

/// The composed reference ops (used off-CPU) give the same golden logits as the fused CPU kernels.
#[test]
fn reference_ops_match_transformers_too() {
    let model = golden_model(None);
    let golden = read_json(&golden_dir().join("val16_logits.json"));
    let b = &golden["batches"][0];
    let batch = batch_from_json(b);
    let logits = with_reference_ops(|| {
        model.forward(&batch.input_ids, &batch.token_type_ids, &batch.attention_mask, false).unwrap()
    });
    let diff = max_abs_diff(&logits.to_vec2::<f32>().unwrap(), &f32_matrix(&b["logits"]));
    assert!(diff < 1e-4, "reference ops: logits differ by {diff}");
}

/// Fused kernels and composed reference ops agree on logits and on every gradient (tiny model,
/// dropout on, same dropout stream).
#[test]
fn fused_and_reference_gradients_agree() {
    let model = tiny_model(11);
    let batch = tiny_batch(12);
    let run = || {
        model.set_dropout_rng(DropoutRng::new(5));
        let logits = model.forward(&batch.input_ids, &batch.token_type_ids, &batch.attention_mask, true).unwrap();
        let grads = model.loss(&logits, &batch.labels).unwrap().backward().unwrap();
        (logits.to_vec2::<f32>().unwrap(), grads)
    };
    let (fused_logits, fused_grads) = run();
    let (reference_logits, reference_grads) = with_reference_ops(run);
    assert!(max_abs_diff(&fused_logits, &reference_logits) < 1e-5);
    for (name, var) in model.params().iter() {
        let (a, b) = (fused_grads.get(var.as_tensor()).unwrap(), reference_grads.get(var.as_tensor()).unwrap());
        let scale =
            b.abs().unwrap().max_keepdim(0).unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        let diff = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(diff <= 1e-4 * scale.max(1e-3), "{name}: max |fused - reference| = {diff} (scale {scale})");
    }
}

/// A small random batch for the tiny model: 3 rows of length 7, the last row padded.
fn tiny_batch(seed: u64) -> Batch {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (b, l) = (3, 7);
    let mut ids: Vec<u32> = (0..b * l).map(|_| rng.random_range(1..64)).collect();
    let types: Vec<u32> = (0..b * l).map(|i| u32::from(i % l >= 4)).collect();
    let mut mask = vec![1u32; b * l];
    for i in (2 * l + 5)..(3 * l) {
        ids[i] = 0;
        mask[i] = 0;
    }
    // An attended padding id: its embedding row must still get no gradient (nn.Embedding padding_idx).
    ids[3] = 0;
    let t = |v: Vec<u32>| Tensor::from_vec(v, (b, l), &Device::Cpu).unwrap();
    Batch {
        input_ids: t(ids),
        token_type_ids: t(types),
        attention_mask: t(mask),
        labels: Tensor::new(&[0u32, 2, 1], &Device::Cpu).unwrap(),
    }
}

fn tiny_model(seed: u64) -> Model {
    Model::new(ModelConfig::bert(BertConfig::tiny()), 3, seed, &Device::Cpu).unwrap()
}

/// With dropout on, every trainable tensor receives a non-zero gradient (guards against fused ops
/// without a backward pass), and the padding row of the word embeddings receives none.
#[test]
fn every_parameter_gets_a_gradient() {
    let model = tiny_model(1);
    let batch = tiny_batch(2);
    let Arch::Bert(config) = model.config().arch() else { panic!("a BERT config") };
    assert!(config.hidden_dropout_prob > 0.0 && config.attention_probs_dropout_prob > 0.0);
    let logits = model.forward(&batch.input_ids, &batch.token_type_ids, &batch.attention_mask, true).unwrap();
    let grads = model.loss(&logits, &batch.labels).unwrap().backward().unwrap();
    // 5 embedding tensors, 16 per layer, 2 pooler, 2 classifier.
    assert_eq!(model.params().len(), 5 + 16 * 2 + 2 + 2);
    for (name, var) in model.params().iter() {
        let grad = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name} has no gradient"));
        assert_eq!(grad.dims(), var.dims(), "{name}");
        let norm = grad.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm > 0.0 && norm.is_finite(), "{name}: |grad| sum = {norm}");
    }
    let words = model.params().get("bert.embeddings.word_embeddings.weight").unwrap();
    let pad_row = grads.get(words.as_tensor()).unwrap().get(0).unwrap();
    assert_eq!(pad_row.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
}

/// save_pretrained then from_pretrained gives bit-identical eval logits and a clean load report,
/// and config.json carries what transformers needs.
#[test]
fn save_then_load_gives_identical_logits() {
    let model = tiny_model(3);
    let batch = tiny_batch(4);
    let before = model.forward(&batch.input_ids, &batch.token_type_ids, &batch.attention_mask, false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    model.save_pretrained(dir.path()).unwrap();

    let config = read_json(&dir.path().join("config.json"));
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
    assert_eq!(config["model_type"], "bert");
    assert_eq!(config["id2label"]["2"], "LABEL_2");
    assert_eq!(config["label2id"]["LABEL_0"], 0);

    let (loaded, report) = Model::from_pretrained(dir.path(), 3, 99, &Device::Cpu).unwrap();
    assert!(report.is_exact(), "{report}");
    assert_eq!(report.loaded.len(), model.params().len());
    let after = loaded.forward(&batch.input_ids, &batch.token_type_ids, &batch.attention_mask, false).unwrap();
    assert_eq!(before.to_vec2::<f32>().unwrap(), after.to_vec2::<f32>().unwrap());
}

/// Dropout changes training outputs, is off in eval, and is reproducible from the seed and from a
/// saved stream position.
#[test]
fn dropout_is_real_and_reproducible() {
    let batch = tiny_batch(5);
    let run = |m: &Model, train: bool| {
        m.forward(&batch.input_ids, &batch.token_type_ids, &batch.attention_mask, train)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
    };
    let a = tiny_model(7);
    let b = tiny_model(7);
    let eval = run(&a, false);
    assert_eq!(eval, run(&a, false));
    let saved = a.dropout_rng_state();
    let train_a = run(&a, true);
    assert_ne!(train_a, eval);
    assert_eq!(train_a, run(&b, true), "same seed, same masks");
    let second = run(&a, true);
    assert_ne!(second, train_a, "the stream advances");
    a.set_dropout_rng(DropoutRng::from_state(saved));
    assert_eq!(run(&a, true), train_a, "restored stream repeats the masks");
}

/// Inference builds no autograd graph and gives exactly the evaluation-mode logits.
#[test]
fn inference_equals_eval_mode_without_a_graph() {
    let batch = tiny_batch(8);
    let model = tiny_model(9);
    let eval = model.forward(&batch.input_ids, &batch.token_type_ids, &batch.attention_mask, false).unwrap();
    let inference = model.forward_inference(&batch.input_ids, &batch.token_type_ids, &batch.attention_mask).unwrap();
    assert_eq!(eval.to_vec2::<f32>().unwrap(), inference.to_vec2::<f32>().unwrap());
    assert!(eval.backward().is_ok_and(|g| g.get(model.params().iter().next().unwrap().1.as_tensor()).is_some()));
    let graphless = inference.backward().unwrap();
    assert!(model.params().iter().all(|(_, var)| graphless.get(var.as_tensor()).is_none()));
}

/// Loading the base-model MiniLM checkpoint (no `bert.` prefix) reports the new head as missing,
/// keeps the pooler, and does not call the `position_ids` buffer unused.
#[test]
fn load_report_lists_the_new_classifier() {
    let (model, report) = Model::from_pretrained(minilm_dir(), 2, 0, &Device::Cpu).unwrap();
    println!("{report}");
    assert_eq!(report.missing, ["classifier.bias", "classifier.weight"]);
    assert!(report.unused.is_empty(), "{:?}", report.unused);
    assert_eq!(report.loaded.len(), model.params().len() - 2);
    assert!(report.loaded.iter().any(|n| n == "bert.pooler.dense.weight"));
    assert_eq!(model.params().num_elements(), 22_713_216 + 384 * 2 + 2);
    let text = report.to_string();
    assert!(text.contains("newly initialized") && text.contains("classifier.weight"));

    // The fresh head is N(0, 0.02) with zero bias, and the same for the same seed.
    let w = model.params().get("classifier.weight").unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let std = (w.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
    assert!((std - 0.02).abs() < 0.003, "std {std}");
    assert_eq!(model.params().get("classifier.bias").unwrap().to_vec1::<f32>().unwrap(), [0.0, 0.0]);
    let (again, _) = Model::from_pretrained(minilm_dir(), 2, 0, &Device::Cpu).unwrap();
    let w2 = again.params().get("classifier.weight").unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(w, w2);
}

/// Folders with only pytorch_model.bin are refused with the conversion command; unsupported
/// activations are refused by name.
#[test]
fn unsupported_checkpoints_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(minilm_dir().join("config.json"), dir.path().join("config.json")).unwrap();
    std::fs::write(dir.path().join("pytorch_model.bin"), b"not really").unwrap();
    let err = Model::from_pretrained(dir.path(), 2, 0, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("safetensors") && err.contains("save_file"), "{err}");

    let mut config = read_json(&minilm_dir().join("config.json"));
    config["hidden_act"] = "gelu_new".into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let err = Model::from_pretrained(dir.path(), 2, 0, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("hidden_act") && err.contains("gelu_new"), "{err}");
}

/// A task checkpoint with the `bert.` prefix and a classifier of another width is refused with the
/// shape and the likely cause.
#[test]
fn classifier_width_mismatch_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    tiny_model(0).save_pretrained(dir.path()).unwrap();
    let err = Model::from_pretrained(dir.path(), 2, 0, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("classifier.weight") && err.contains("number of labels"), "{err}");
}
