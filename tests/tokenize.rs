//! Tokenization with the course's semantics, the map cache, dynamic padding, the data loader and
//! the `accel data` commands, held to transformers' outputs in ../shared/golden.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use accel::config::DataConfig;
use accel::data::{
    self, BatchSampler, CacheStatus, DataCollatorWithPadding, DataLoader, DatasetCache, PairTokenizer, TaskData,
};
use common::{golden_dir, local_sources, minilm_dir, read_json};

fn mrpc_task(scratch: &Path) -> TaskData {
    let cfg = DataConfig { dataset: Some("glue/mrpc".into()), ..DataConfig::default() };
    data::load_task(&cfg, &local_sources(scratch)).unwrap()
}

fn json_matrix(v: &serde_json::Value) -> Vec<Vec<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect())
        .collect()
}

#[test]
fn a_pair_encodes_as_bert_does() {
    let tok = PairTokenizer::from_dir(&minilm_dir()).unwrap();
    let enc =
        tok.tokenizer().unwrap().encode(("This is the first sentence.", "This is the second one."), true).unwrap();
    assert_eq!(enc.get_ids(), [101, 2023, 2003, 1996, 2034, 6251, 1012, 102, 2023, 2003, 1996, 2117, 2028, 1012, 102]);
    assert_eq!(
        enc.get_tokens(),
        [
            "[CLS]", "this", "is", "the", "first", "sentence", ".", "[SEP]", "this", "is", "the", "second", "one", ".",
            "[SEP]"
        ]
    );
    let types: Vec<u32> = [vec![0; 8], vec![1; 7]].concat();
    assert_eq!(enc.get_type_ids(), types);
}

#[test]
fn the_baked_in_truncation_and_padding_are_overridden() {
    // tokenizer.json says truncate to 128 and pad to 128; the course truncates to the model's
    // maximum (512 from tokenizer_config.json) and pads per batch.
    let tok = PairTokenizer::from_dir(&minilm_dir()).unwrap();
    assert_eq!(tok.max_length(), 512);
    let long = vec!["word ".repeat(300)];
    let short = vec!["short".to_string()];
    let out = tok.encode(&long, Some(&short)).unwrap();
    assert_eq!(out[0].0.len(), 304, "[CLS] 300 words [SEP] short [SEP]: no truncation at 128");
    let out = tok.encode(&short, None).unwrap();
    assert_eq!(out[0].0.len(), 3, "no padding at encode time");
    let tok = tok.with_max_length(16);
    assert_eq!(tok.encode(&long, Some(&short)).unwrap()[0].0.len(), 16);
}

#[test]
fn the_first_train_batch_matches_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let task = mrpc_task(tmp.path());
    let tok = PairTokenizer::from_dir(&minilm_dir()).unwrap();
    let (splits, _) = task.tokenize(&tok, None).unwrap();
    let train = splits.split("train").unwrap();
    let ids = train.int_lists("input_ids").unwrap();
    let lengths: Vec<usize> = (0..8).map(|i| ids.row(i).len()).collect();
    assert_eq!(lengths, [50, 59, 47, 67, 59, 50, 62, 32]);
    assert_eq!(
        train.column_names(),
        ["sentence1", "sentence2", "label", "idx", "input_ids", "token_type_ids", "attention_mask"]
    );

    let golden = read_json(&golden_dir().join("tokenization_train8.json"));
    let collator = DataCollatorWithPadding::new(&tok).unwrap();
    let batch = collator.collate(train, &(0..8).collect::<Vec<_>>()).unwrap();
    assert_eq!(batch.input_ids.dims(), [8, 67]);
    assert_eq!(batch.token_type_ids.dims(), [8, 67]);
    assert_eq!(batch.attention_mask.dims(), [8, 67]);
    let labels = batch.labels.as_ref().unwrap();
    assert_eq!(labels.dims(), [8]);
    assert_eq!(batch.input_ids.to_vec2::<u32>().unwrap(), json_matrix(&golden["input_ids"]));
    assert_eq!(batch.token_type_ids.to_vec2::<u32>().unwrap(), json_matrix(&golden["token_type_ids"]));
    assert_eq!(batch.attention_mask.to_vec2::<u32>().unwrap(), json_matrix(&golden["attention_mask"]));
    let golden_labels: Vec<u32> =
        golden["labels"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    assert_eq!(labels.to_vec1::<u32>().unwrap(), golden_labels);
}

#[test]
fn validation_batches_match_the_golden_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let task = mrpc_task(tmp.path());
    let tok = PairTokenizer::from_dir(&minilm_dir()).unwrap();
    let (splits, _) = task.tokenize(&tok, None).unwrap();
    let val = splits.split("validation").unwrap();
    let golden = read_json(&golden_dir().join("val16_logits.json"));
    let collator = DataCollatorWithPadding::new(&tok).unwrap();
    for (b, batch_golden) in golden["batches"].as_array().unwrap().iter().enumerate() {
        let rows: Vec<usize> = (8 * b..8 * b + 8).collect();
        let batch = collator.collate(val, &rows).unwrap();
        assert_eq!(batch.input_ids.to_vec2::<u32>().unwrap(), json_matrix(&batch_golden["input_ids"]));
        assert_eq!(batch.attention_mask.to_vec2::<u32>().unwrap(), json_matrix(&batch_golden["attention_mask"]));
        let idx: Vec<i64> = rows.iter().map(|&r| val.ints("idx").unwrap()[r]).collect();
        let golden_idx: Vec<i64> =
            batch_golden["idx"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
        assert_eq!(idx, golden_idx);
    }
}

fn copy_tokenizer(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json", "config.json"] {
        std::fs::copy(minilm_dir().join(f), to.join(f)).unwrap();
    }
}

#[test]
fn the_cache_hits_only_for_the_same_data_tokenizer_and_parameters() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = DatasetCache::new(tmp.path().join("cache"));
    let task = mrpc_task(tmp.path());
    let model = tmp.path().join("model");
    copy_tokenizer(&model);
    let tok = PairTokenizer::from_dir(&model).unwrap();
    let all_hit = |st: &[(String, CacheStatus)]| st.iter().all(|(_, s)| s.is_hit());
    let none_hit = |st: &[(String, CacheStatus)]| st.iter().all(|(_, s)| matches!(s, CacheStatus::Miss(_)));

    let (first, st) = task.tokenize(&tok, Some(&cache)).unwrap();
    assert!(none_hit(&st), "{st:?}");
    let (second, st) = task.tokenize(&tok, Some(&cache)).unwrap();
    assert!(all_hit(&st), "{st:?}");
    assert_eq!(first, second);
    let leftovers: Vec<_> = std::fs::read_dir(cache.dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 3, "one file per split, no temporary files left: {leftovers:?}");

    // Another parameter misses.
    let (_, st) = task.tokenize(&PairTokenizer::from_dir(&model).unwrap().with_max_length(128), Some(&cache)).unwrap();
    assert!(none_hit(&st), "{st:?}");
    // Other data misses for the changed split only.
    let mut changed = task.clone();
    let train = changed.splits.split("train").unwrap().slice(0, 100).unwrap();
    changed.splits.insert("train", train);
    let (_, st) = changed.tokenize(&tok, Some(&cache)).unwrap();
    assert!(matches!(st[0].1, CacheStatus::Miss(_)) && st[1].1.is_hit(), "{st:?}");
    // Another tokenizer file misses, even with the same parameters (here: one more byte).
    let json = std::fs::read_to_string(model.join("tokenizer.json")).unwrap();
    std::fs::write(model.join("tokenizer.json"), json + "\n").unwrap();
    let (_, st) = task.tokenize(&PairTokenizer::from_dir(&model).unwrap(), Some(&cache)).unwrap();
    assert!(none_hit(&st), "{st:?}");
}

#[test]
fn the_loader_shuffles_by_seed_and_pads_each_batch_to_its_longest() {
    let tmp = tempfile::tempdir().unwrap();
    let task = mrpc_task(tmp.path());
    let tok = PairTokenizer::from_dir(&minilm_dir()).unwrap();
    let (splits, _) = task.tokenize(&tok, None).unwrap();
    let train = Arc::new(splits.split("train").unwrap().clone());
    let collator = DataCollatorWithPadding::new(&tok).unwrap();
    let sampler = BatchSampler::new(train.num_rows(), 32, true, 42);
    let mut loader = DataLoader::new(train.clone(), collator.clone(), sampler.clone());
    assert_eq!(loader.len(), 115, "3668 / 32 rounded up");
    let first: Vec<Vec<usize>> = loader.iter().take(3).map(|b| b.unwrap().rows).collect();
    let again = DataLoader::new(train.clone(), collator.clone(), sampler.clone());
    assert_eq!(first, again.iter().take(3).map(|b| b.unwrap().rows).collect::<Vec<_>>());
    loader.set_epoch(1);
    assert_ne!(first[0], loader.iter().next().unwrap().unwrap().rows);
    let ids = train.int_lists("input_ids").unwrap();
    for batch in loader.iter().take(10) {
        let batch = batch.unwrap();
        let longest = batch.rows.iter().map(|&r| ids.row(r).len()).max().unwrap();
        assert_eq!(batch.dims().unwrap(), (32, longest));
    }
    let last = loader.iter().last().unwrap().unwrap();
    assert_eq!(last.dims().unwrap().0, 3668 % 32, "one process: the last batch is short, as in PyTorch");
    let dropped = DataLoader::new(train, collator, sampler.drop_last(true).even_batches(false));
    assert_eq!(dropped.len(), 114);
    assert_eq!(dropped.iter_from(113).count(), 1);
}

fn accel(args: &[&str], cache: &Path) -> (String, String, bool) {
    let out = Command::new(env!("CARGO_BIN_EXE_accel"))
        .args(args)
        .env("ACCEL_DATA_DIR", common::data_dir())
        .env("ACCEL_MODEL_DIR", common::models_dir())
        .env("ACCEL_CACHE_DIR", cache)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    (String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into(), out.status.success())
}

#[test]
fn the_data_commands_show_and_tokenize_through_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, err, ok) = accel(&["data", "show", "glue/mrpc", "--split", "validation", "--index", "0"], tmp.path());
    assert!(ok, "{err}");
    assert!(out.starts_with("DatasetDict({\n    train: Dataset({"), "{out}");
    assert!(out.contains("ClassLabel(names=['not_equivalent', 'equivalent'])"), "{out}");
    assert!(out.contains("validation[0] = {'sentence1': \"He said the foodservice pie business doesn 't fit"), "{out}");
    assert!(out.contains("'idx': 9}"), "{out}");

    let args = ["data", "tokenize", "glue/mrpc", "--model", "all-MiniLM-L6-v2"];
    let (out, err, ok) = accel(&args, tmp.path());
    assert!(ok, "{err}");
    assert_eq!(out.matches(" miss ").count(), 3, "{out}");
    assert!(out.contains("train           3668   103"), "{out}");
    let (out, _, _) = accel(&args, tmp.path());
    assert_eq!(out.matches(" hit ").count(), 3, "{out}");

    let (_, err, ok) = accel(&["data", "show", "glue/mrpc", "--set", "data.max_lenght=3"], tmp.path());
    assert!(!ok && err.contains("did you mean `data.max_length`"), "{err}");
    let (_, err, ok) = accel(&["data", "tokenize", "glue/mrpc", "--model", "nobody/nothing"], tmp.path());
    assert!(!ok && err.contains("model \"nobody/nothing\" not found") && err.lines().count() == 1, "{err}");
}
