//! Shared test fixtures: the real data and model from `ACCEL_DATA_DIR` / `ACCEL_MODEL_DIR`
//! (default `../shared/...` beside the repository), and small files written on the fly.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use accel::data::Sources;

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
