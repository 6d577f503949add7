//! Shared test fixtures: the real data and model from `ACCEL_DATA_DIR` / `ACCEL_MODEL_DIR`
//! (default `../shared/...` beside the repository), and small files written on the fly.
#![allow(dead_code)]

pub mod cli;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use accel::data::Sources;
use accel::model::{Model, ModelConfig};
use candle_core::{Device, Tensor};
use serde_json::Value;

fn shared_dir(var: &str, sub: &str, what: &str) -> PathBuf {
    let dir = std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("shared").join(sub));
    assert!(
        dir.is_dir(),
        "{what} not found at {}: set {var} to a folder laid out like ../shared/{sub} (see README.md, 'Data and models')",
        dir.display()
    );
    dir
}

/// The folder holding `glue/MRPC/...` and `glue/SST-2/...`.
pub fn data_dir() -> PathBuf {
    shared_dir("ACCEL_DATA_DIR", "data", "the GLUE data")
}

/// The folder of model folders.
pub fn models_dir() -> PathBuf {
    shared_dir("ACCEL_MODEL_DIR", "models", "the models folder")
}

/// The shipped MiniLM.
pub fn minilm_dir() -> PathBuf {
    let dir = models_dir().join("all-MiniLM-L6-v2");
    assert!(dir.join("tokenizer.json").is_file(), "all-MiniLM-L6-v2 not found in {}", dir.display());
    dir
}

/// The PyTorch reference outputs.
pub fn golden_dir() -> PathBuf {
    shared_dir("ACCEL_GOLDEN_DIR", "golden", "the golden reference outputs")
}

/// Sources that see only the local data folder: no hub cache, no downloads.
pub fn local_sources(scratch: &Path) -> Sources {
    Sources { data_dir: Some(data_dir()), ..Sources::isolated(scratch.join("empty-hub")) }
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A typed parquet column for [`write_parquet`].
pub enum PqColumn {
    Utf8(Vec<String>),
    Int64(Vec<i64>),
    Int32(Vec<i32>),
}

/// Writes a snappy-compressed parquet file with required columns, as pyarrow would.
pub fn write_parquet(path: &Path, columns: &[(&str, PqColumn)]) {
    use parquet::basic::Compression;
    use parquet::data_type::{ByteArray, ByteArrayType, Int32Type, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    let fields: Vec<String> = columns
        .iter()
        .map(|(name, col)| match col {
            PqColumn::Utf8(_) => format!("REQUIRED BYTE_ARRAY {name} (UTF8);"),
            PqColumn::Int64(_) => format!("REQUIRED INT64 {name};"),
            PqColumn::Int32(_) => format!("REQUIRED INT32 {name};"),
        })
        .collect();
    let schema = Arc::new(parse_message_type(&format!("message schema {{ {} }}", fields.join(" "))).unwrap());
    let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(file, schema, props).unwrap();
    let mut group = writer.next_row_group().unwrap();
    let mut i = 0;
    while let Some(mut col) = group.next_column().unwrap() {
        match &columns[i].1 {
            PqColumn::Utf8(v) => {
                let values: Vec<ByteArray> = v.iter().map(|s| ByteArray::from(s.as_str())).collect();
                col.typed::<ByteArrayType>().write_batch(&values, None, None).unwrap();
            }
            PqColumn::Int64(v) => {
                col.typed::<Int64Type>().write_batch(v, None, None).unwrap();
            }
            PqColumn::Int32(v) => {
                col.typed::<Int32Type>().write_batch(v, None, None).unwrap();
            }
        }
        col.close().unwrap();
        i += 1;
    }
    group.close().unwrap();
    writer.close().unwrap();
}

/// Writes a tiny random-init BERT classifier (2 labels) with a WordPiece tokenizer over a
/// 24-word vocabulary into `dir`, in Hugging Face layout: fast to train, for logic tests.
pub fn tiny_model_dir(dir: &Path, seed: u64) -> PathBuf {
    accel::selftest::fixture::tiny_model_dir(dir, seed).unwrap()
}

/// Writes a learnable sentence-pair task as CSV files: label 1 when both sentences share their
/// first word. Returns (train, validation) paths.
pub fn tiny_pair_task(dir: &Path, train_rows: usize, validation_rows: usize) -> (PathBuf, PathBuf) {
    accel::selftest::fixture::tiny_pair_task(dir, train_rows, validation_rows).unwrap()
}

/// A tiny random-init model and a generated sentence-pair task (64 train rows) in a temporary
/// folder that lives as long as the fixture.
pub struct Fixture {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub model: PathBuf,
    pub train: PathBuf,
    pub validation: PathBuf,
}

impl Fixture {
    /// The model with the dropout of its config, and `validation_rows` validation rows.
    pub fn new(validation_rows: usize) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let model = tiny_model_dir(&root.join("tiny"), 3);
        let (train, validation) = tiny_pair_task(&root, 64, validation_rows);
        Self { _tmp: tmp, root, model, train, validation }
    }

    /// The same model with every dropout probability 0: its runs are deterministic.
    pub fn without_dropout(self) -> Self {
        let path = self.model.join("config.json");
        let mut config = read_json(&path);
        for key in ["hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"] {
            config[key] = serde_json::json!(0.0);
        }
        std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
        self
    }

    /// The `[data]` and `[model]` sections of a run on this task and model.
    pub fn data_and_model_toml(&self) -> String {
        format!(
            "[data]\ntrain_file = {}\nvalidation_file = {}\ntext_columns = [\"sentence1\", \"sentence2\"]\n\
             label_names = [\"different\", \"same\"]\n[model]\nname_or_path = {}\n",
            toml_path(&self.train),
            toml_path(&self.validation),
            toml_path(&self.model)
        )
    }
}

/// `path` as a TOML string.
pub fn toml_path(path: &Path) -> String {
    toml::Value::String(path.display().to_string()).to_string()
}

/// One collated batch, as `DataCollatorWithPadding` produces it.
pub struct Batch {
    pub input_ids: Tensor,
    pub token_type_ids: Tensor,
    pub attention_mask: Tensor,
    pub labels: Tensor,
}

fn u32_matrix(value: &Value, key: &str) -> Tensor {
    let rows: Vec<Vec<u32>> = serde_json::from_value(value[key].clone()).unwrap_or_else(|e| panic!("{key}: {e}"));
    Tensor::new(rows, &Device::Cpu).unwrap()
}

/// Reads a batch from a JSON object with `input_ids`, `token_type_ids`, `attention_mask`, `labels`.
pub fn batch_from_json(value: &Value) -> Batch {
    let labels: Vec<u32> = serde_json::from_value(value["labels"].clone()).expect("labels");
    Batch {
        input_ids: u32_matrix(value, "input_ids"),
        token_type_ids: u32_matrix(value, "token_type_ids"),
        attention_mask: u32_matrix(value, "attention_mask"),
        labels: Tensor::new(labels, &Device::Cpu).unwrap(),
    }
}

/// The golden model: MiniLM's weights as `bert.*` plus the classifier from `classifier_init.safetensors`.
/// `dropout` overrides every dropout probability when given (the traces use 0).
pub fn golden_model(dropout: Option<f64>) -> Model {
    golden_model_on(dropout, &Device::Cpu)
}

/// [`golden_model`] on `device`.
pub fn golden_model_on(dropout: Option<f64>, device: &Device) -> Model {
    let dir = minilm_dir();
    let mut config = ModelConfig::from_file(dir.join("config.json")).unwrap();
    if let Some(p) = dropout {
        config.set_all_dropout(p);
    }
    let (model, _) = Model::from_pretrained_with_config(&dir, config, 2, 0, device).expect("loading MiniLM");
    let report = model.load_weights(golden_dir().join("classifier_init.safetensors")).unwrap();
    assert_eq!(report.loaded, ["classifier.bias", "classifier.weight"]);
    assert!(report.unused.is_empty());
    model
}

pub fn f32_matrix(value: &Value) -> Vec<Vec<f32>> {
    serde_json::from_value(value.clone()).expect("a matrix of numbers")
}

/// Largest |a - b| over two equally shaped matrices.
pub fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

pub fn rel_diff(actual: f64, expected: f64) -> f64 {
    (actual - expected).abs() / expected.abs().max(f64::MIN_POSITIVE)
}

/// The collated batches of the golden traces (`trace_*.json`), in step order: train rows 0-7, 8-15, 16-23 and 24-31 through
/// accel's own pipeline (load, tokenize, pad to the longest row). Rows 0-7 are also checked
/// against the collated tensors transformers produced.
pub fn trace_batches() -> Vec<Batch> {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = accel::config::DataConfig { dataset: Some("glue/mrpc".into()), ..Default::default() };
    let task = accel::data::load_task(&cfg, &local_sources(tmp.path())).unwrap();
    let tokenizer = accel::data::PairTokenizer::from_dir(&minilm_dir()).unwrap();
    let (splits, _) = task.tokenize(&tokenizer, None).unwrap();
    let train = splits.split("train").unwrap();
    let collator = accel::data::DataCollatorWithPadding::new(&tokenizer).unwrap();
    let batches: Vec<Batch> = (0..4)
        .map(|k| {
            let b = collator.collate(train, &(8 * k..8 * k + 8).collect::<Vec<_>>()).unwrap();
            Batch {
                input_ids: b.input_ids,
                token_type_ids: b.token_type_ids,
                attention_mask: b.attention_mask,
                labels: b.labels.unwrap(),
            }
        })
        .collect();
    let golden = batch_from_json(&read_json(&golden_dir().join("tokenization_train8.json")));
    assert_eq!(batches[0].input_ids.to_vec2::<u32>().unwrap(), golden.input_ids.to_vec2::<u32>().unwrap());
    batches
}

/// A tiny model of `family` from `tests/fixtures/models` (`scripts/make_model_fixtures.py`).
pub fn fixture_model(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models").join(family)
}

/// Writes `dir/name.toml`: a run of `task` into `dir/name` with `header` (top-level keys), `data`
/// (the `[data]` keys) and `model` (ignoring a head of another shape); returns its path.
pub fn write_task_config(dir: &Path, name: &str, task: &str, header: &str, data: &str, model: &Path) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "task = \"{task}\"\noutput_dir = {}\n{header}\n[data]\n{data}\n[model]\nname_or_path = {}\nignore_mismatched_sizes = true\n",
        toml_path(&dir.join(name)),
        toml_path(model),
    );
    std::fs::write(&path, text).unwrap();
    path
}
