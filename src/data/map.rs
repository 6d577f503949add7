//! Batched `map` with an on-disk cache: results are keyed by the input data's fingerprint and the
//! function's, stored as safetensors files and written atomically (temporary file, then rename).
//!
//! The cache folder is `ACCEL_CACHE_DIR`, else `$XDG_CACHE_HOME/accel`, else `~/.cache/accel`;
//! mapped datasets live under `datasets/` in it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype as StDtype, TensorView};
use safetensors::SafeTensors;

use super::dataset::{Column, Dataset, DatasetDict, Feature, IntLists};
use crate::{Error, Result};

/// Bumped whenever the cache file layout changes, so old files are never misread.
const CACHE_FORMAT: &str = "accel-dataset/1";

/// A function applied to batches of rows, returning columns to add (or replace).
pub trait BatchFn {
    /// Identifies the function and every parameter that changes its output.
    fn fingerprint(&self) -> String;
    /// The new columns for `batch`, one value per row (or, where [`Self::replaces_rows`], any
    /// number of rows).
    fn apply(&self, batch: &Dataset) -> Result<Vec<(String, Feature, Column)>>;
    /// The function's rows replace the input's, as `map(..., remove_columns=...)` does when it
    /// turns one example into several windows: the result has only the function's columns.
    fn replaces_rows(&self) -> bool {
        false
    }
}

/// Whether a map was served from the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheStatus {
    /// Loaded from this file.
    Hit(PathBuf),
    /// Computed and written to this file.
    Miss(PathBuf),
    /// Computed, no cache in use.
    Disabled,
}

impl CacheStatus {
    pub fn is_hit(&self) -> bool {
        matches!(self, CacheStatus::Hit(_))
    }
}

/// A folder of mapped datasets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetCache {
    dir: PathBuf,
}

impl DatasetCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The cache under `ACCEL_CACHE_DIR`, `$XDG_CACHE_HOME/accel` or `~/.cache/accel`.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty()).map(PathBuf::from);
        let root = var("ACCEL_CACHE_DIR")
            .or_else(|| var("XDG_CACHE_HOME").map(|p| p.join("accel")))
            .or_else(|| var("HOME").map(|p| p.join(".cache/accel")))
            .unwrap_or_else(|| PathBuf::from(".accel-cache"));
        Self::new(root.join("datasets"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file_for(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.safetensors"))
    }
}

/// The cache key of `f` applied to `ds`.
pub fn cache_key(ds: &Dataset, f: &dyn BatchFn) -> String {
    let text = format!("{CACHE_FORMAT}\n{}\n{}", ds.fingerprint(), f.fingerprint());
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(text.as_bytes()))
}

impl Dataset {
    /// Applies `f` to batches of `batch_size` rows and adds its columns, through `cache` when given.
    /// A cache file that cannot be read is recomputed and replaced.
    pub fn map(
        &self,
        f: &dyn BatchFn,
        batch_size: usize,
        cache: Option<&DatasetCache>,
    ) -> Result<(Dataset, CacheStatus)> {
        let Some(cache) = cache else {
            return Ok((self.map_uncached(f, batch_size)?, CacheStatus::Disabled));
        };
        let key = cache_key(self, f);
        let path = cache.file_for(&key);
        if path.is_file() {
            if let Ok(ds) = read_cache_file(&path) {
                return Ok((ds, CacheStatus::Hit(path)));
            }
        }
        let ds = self.map_uncached(f, batch_size)?;
        write_cache_file(&ds, &path)?;
        Ok((ds, CacheStatus::Miss(path)))
    }

    fn map_uncached(&self, f: &dyn BatchFn, batch_size: usize) -> Result<Dataset> {
        let batch_size = batch_size.max(1);
        let mut added: Vec<(String, Feature, Column)> = Vec::new();
        for start in (0..self.num_rows()).step_by(batch_size) {
            let batch = self.slice(start, start + batch_size)?;
            let columns = f.apply(&batch)?;
            if added.is_empty() {
                added = columns;
                continue;
            }
            if columns.len() != added.len() {
                return Err(Error::Msg("a map function returned different columns for different batches".into()));
            }
            for ((name, _, acc), (other_name, _, column)) in added.iter_mut().zip(columns) {
                if *name != other_name {
                    return Err(Error::Msg(format!(
                        "a map function returned {other_name:?} where it returned {name:?} before"
                    )));
                }
                append(acc, column)?;
            }
        }
        if f.replaces_rows() {
            return Dataset::new(added);
        }
        self.with_columns(added)
    }
}

impl DatasetDict {
    /// Maps every split; the status of each split's cache lookup is returned beside it.
    pub fn map(
        &self,
        f: &dyn BatchFn,
        batch_size: usize,
        cache: Option<&DatasetCache>,
    ) -> Result<(DatasetDict, Vec<(String, CacheStatus)>)> {
        let mut out = DatasetDict::new();
        let mut statuses = Vec::new();
        for (name, ds) in self.iter() {
            let (mapped, status) = ds.map(f, batch_size, cache)?;
            out.insert(name, mapped);
            statuses.push((name.to_string(), status));
        }
        Ok((out, statuses))
    }
}

fn append(acc: &mut Column, more: Column) -> Result<()> {
    match (acc, more) {
        (Column::Str(a), Column::Str(b)) => a.extend(b),
        (Column::Int(a), Column::Int(b)) => a.extend(b),
        (Column::Float(a), Column::Float(b)) => a.extend(b),
        (Column::IntList(a), Column::IntList(b)) => {
            for i in 0..b.len() {
                a.push(b.row(i).iter().copied());
            }
        }
        (Column::StrList(a), Column::StrList(b)) => {
            for i in 0..b.len() {
                a.push(b.row(i).iter().cloned());
            }
        }
        _ => return Err(Error::Msg("a map function returned columns of different types for different batches".into())),
    }
    Ok(())
}

fn le_bytes_i64(values: impl Iterator<Item = i64>) -> Vec<u8> {
    values.flat_map(|v| v.to_le_bytes()).collect()
}

/// Writes `ds` as a safetensors file: each column as one or two 1-D tensors, names and features in
/// the metadata. The file appears whole or not at all.
pub fn write_cache_file(ds: &Dataset, path: &Path) -> Result<()> {
    let mut buffers: Vec<(String, StDtype, Vec<u8>)> = Vec::new();
    let mut meta = HashMap::new();
    let mut names = Vec::new();
    for (i, (name, feature, column)) in ds.clone().into_columns().into_iter().enumerate() {
        names.push(serde_json::json!([name, feature.encode()]));
        match column {
            Column::Str(v) => {
                let mut offsets = vec![0i64];
                let mut bytes = Vec::new();
                for s in &v {
                    bytes.extend_from_slice(s.as_bytes());
                    offsets.push(bytes.len() as i64);
                }
                buffers.push((format!("{i}.bytes"), StDtype::U8, bytes));
                buffers.push((format!("{i}.offsets"), StDtype::I64, le_bytes_i64(offsets.into_iter())));
            }
            Column::Int(v) => buffers.push((format!("{i}"), StDtype::I64, le_bytes_i64(v.into_iter()))),
            Column::Float(v) => {
                buffers.push((format!("{i}"), StDtype::F64, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
            }
            Column::StrList(l) => {
                let mut offsets = vec![0i64];
                let mut bytes = Vec::new();
                for s in &l.values {
                    bytes.extend_from_slice(s.as_bytes());
                    offsets.push(bytes.len() as i64);
                }
                buffers.push((format!("{i}.bytes"), StDtype::U8, bytes));
                buffers.push((format!("{i}.offsets"), StDtype::I64, le_bytes_i64(offsets.into_iter())));
                buffers.push((
                    format!("{i}.rows"),
                    StDtype::I64,
                    le_bytes_i64(l.offsets.into_iter().map(|o| o as i64)),
                ));
            }
            Column::IntList(l) => {
                buffers.push((format!("{i}.values"), StDtype::I64, le_bytes_i64(l.values.into_iter())));
                buffers.push((
                    format!("{i}.offsets"),
                    StDtype::I64,
                    le_bytes_i64(l.offsets.into_iter().map(|o| o as i64)),
                ));
            }
        }
    }
    meta.insert("format".to_string(), CACHE_FORMAT.to_string());
    meta.insert("columns".to_string(), serde_json::Value::Array(names).to_string());
    meta.insert("num_rows".to_string(), ds.num_rows().to_string());
    let views: Vec<(String, TensorView)> = buffers
        .iter()
        .map(|(name, dtype, bytes)| {
            let n = bytes.len() * 8 / dtype.bitsize();
            TensorView::new(*dtype, vec![n], bytes).map(|v| (name.clone(), v))
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Msg(format!("building cache file {}: {e}", path.display())))?;
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::Msg(format!("building cache file {}: {e}", path.display())))?;
    crate::io::write_atomically(path, &bytes)
}

/// Reads a file written by [`write_cache_file`].
pub fn read_cache_file(path: &Path) -> Result<Dataset> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |m: String| Error::data(path, None, format!("not a dataset cache file: {m}"));
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(CACHE_FORMAT) {
        return Err(bad(format!("format is not {CACHE_FORMAT}")));
    }
    let columns: Vec<(String, String)> =
        meta.get("columns").and_then(|c| serde_json::from_str(c).ok()).ok_or_else(|| bad("no column list".into()))?;
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let i64s = |name: &str| -> Result<Vec<i64>> {
        let t = tensors.tensor(name).map_err(|e| bad(format!("{name}: {e}")))?;
        Ok(t.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default())).collect())
    };
    let mut out = Vec::new();
    for (i, (name, feature)) in columns.into_iter().enumerate() {
        let feature = Feature::parse(&feature).ok_or_else(|| bad(format!("unknown feature {feature:?}")))?;
        let strings = |i: usize| -> Result<Vec<String>> {
            let t = tensors.tensor(&format!("{i}.bytes")).map_err(|e| bad(e.to_string()))?;
            let text = std::str::from_utf8(t.data()).map_err(|e| bad(e.to_string()))?;
            let offsets = i64s(&format!("{i}.offsets"))?;
            offsets
                .windows(2)
                .map(|w| text.get(w[0] as usize..w[1] as usize).map(str::to_string))
                .collect::<Option<Vec<String>>>()
                .ok_or_else(|| bad("string offsets out of range".into()))
        };
        let column = match &feature {
            Feature::Value(super::dataset::Dtype::String) => Column::Str(strings(i)?),
            Feature::List(super::dataset::Dtype::String) => {
                let values = strings(i)?;
                let offsets: Vec<usize> = i64s(&format!("{i}.rows"))?.into_iter().map(|o| o as usize).collect();
                if offsets.first() != Some(&0) || offsets.last() != Some(&values.len()) {
                    return Err(bad("list offsets do not cover the values".into()));
                }
                Column::StrList(super::dataset::StrLists { values, offsets })
            }
            Feature::Value(super::dataset::Dtype::Float32 | super::dataset::Dtype::Float64) => {
                let t = tensors.tensor(&format!("{i}")).map_err(|e| bad(e.to_string()))?;
                Column::Float(
                    t.data().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default())).collect(),
                )
            }
            Feature::List(_) => {
                let values = i64s(&format!("{i}.values"))?;
                let offsets: Vec<usize> = i64s(&format!("{i}.offsets"))?.into_iter().map(|o| o as usize).collect();
                if offsets.first() != Some(&0) || offsets.last() != Some(&values.len()) {
                    return Err(bad("list offsets do not cover the values".into()));
                }
                Column::IntList(IntLists { values, offsets })
            }
            _ => Column::Int(i64s(&format!("{i}"))?),
        };
        out.push((name, feature, column));
    }
    Dataset::new(out).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::dataset::Dtype;

    struct Lengths(usize);
    impl BatchFn for Lengths {
        fn fingerprint(&self) -> String {
            format!("lengths {}", self.0)
        }
        fn apply(&self, batch: &Dataset) -> Result<Vec<(String, Feature, Column)>> {
            let mut l = IntLists::new();
            for s in batch.strings("text")? {
                l.push([s.len() as i64, self.0 as i64]);
            }
            Ok(vec![("n".into(), Feature::List(Dtype::Int32), Column::IntList(l))])
        }
    }

    fn ds(texts: &[&str]) -> Dataset {
        Dataset::new(vec![
            ("text".into(), Feature::Value(Dtype::String), Column::Str(texts.iter().map(|s| s.to_string()).collect())),
            ("score".into(), Feature::Value(Dtype::Float32), Column::Float(vec![0.5; texts.len()])),
        ])
        .unwrap()
    }

    #[test]
    fn batches_concatenate_and_round_trip_through_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DatasetCache::new(dir.path());
        let input = ds(&["a", "bb", "ccc", "dddd", "é"]);
        let (out, status) = input.map(&Lengths(7), 2, Some(&cache)).unwrap();
        assert!(matches!(status, CacheStatus::Miss(_)));
        assert_eq!(out.int_lists("n").unwrap().row(4), [2, 7]);
        let (again, status) = input.map(&Lengths(7), 2, Some(&cache)).unwrap();
        assert!(status.is_hit());
        assert_eq!(again, out);
        let (_, status) = input.map(&Lengths(8), 2, Some(&cache)).unwrap();
        assert!(!status.is_hit(), "a parameter change misses");
        let (_, status) = ds(&["a", "bb", "ccc", "dddd", "e"]).map(&Lengths(7), 2, Some(&cache)).unwrap();
        assert!(!status.is_hit(), "a data change misses");
    }

    #[test]
    fn a_corrupt_cache_file_is_recomputed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DatasetCache::new(dir.path());
        let input = ds(&["a"]);
        let (_, status) = input.map(&Lengths(1), 10, Some(&cache)).unwrap();
        let CacheStatus::Miss(path) = status else { panic!("expected a miss") };
        std::fs::write(&path, b"garbage").unwrap();
        let (out, status) = input.map(&Lengths(1), 10, Some(&cache)).unwrap();
        assert!(matches!(status, CacheStatus::Miss(_)));
        assert_eq!(read_cache_file(&path).unwrap(), out);
    }
}
