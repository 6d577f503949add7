//! Weight files: reading a model's safetensors files ([`WeightFiles`]) with transformers' key matching (the family's prefix, legacy LayerNorm names), f32 conversion, and the load report.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Var};

use super::family::Family;
use crate::{Error, Result};

/// Buffers some checkpoints carry that are not parameters (`register_buffer` in transformers).
const BUFFER_SUFFIXES: [&str; 2] = ["embeddings.position_ids", "embeddings.token_type_ids"];

/// One or more safetensors files opened by memory map, with a record of the keys consumed.
pub struct WeightFiles {
    files: MmapedSafetensors,
    source: PathBuf,
    keys: BTreeSet<String>,
    used: RefCell<BTreeSet<String>>,
    /// Initialize a parameter whose checkpoint tensor has another shape instead of failing
    /// (transformers' `ignore_mismatched_sizes`), recording it here.
    ignore_mismatched: bool,
    mismatched: RefCell<Vec<String>>,
}

impl WeightFiles {
    /// Opens one safetensors file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(Error::NotFound { what: "safetensors file".into(), looked: vec![path.display().to_string()] });
        }
        // SAFETY: the mapping is only read while `WeightFiles` lives; checkpoints are not rewritten
        // in place while a model loads from them.
        let files = unsafe { MmapedSafetensors::new(path) }
            .map_err(|e| Error::data(path, None, format!("not a readable safetensors file: {e}")))?;
        Ok(Self::with_files(files, path))
    }

    /// Opens the weights of a model folder: `model.safetensors`, or the shards listed in
    /// `model.safetensors.index.json`. A folder with only PyTorch pickles is refused with the
    /// conversion to run.
    pub fn open_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let single = dir.join("model.safetensors");
        if single.is_file() {
            return Self::open(&single);
        }
        let index = dir.join("model.safetensors.index.json");
        if index.is_file() {
            return Self::open_sharded(&index);
        }
        let bin = dir.join("pytorch_model.bin");
        if bin.is_file() {
            return Err(Error::data(
                &bin,
                None,
                format!(
                    "only PyTorch pickle weights found; accel reads safetensors. Convert them once with:\n  \
                     python -c \"import torch; from safetensors.torch import save_file; \
                     sd = torch.load('{bin}', map_location='cpu'); \
                     save_file({{k: v.contiguous() for k, v in sd.items()}}, '{out}', metadata={{'format': 'pt'}})\"",
                    bin = bin.display(),
                    out = single.display()
                ),
            ));
        }
        Err(Error::NotFound {
            what: "model weights".into(),
            looked: vec![single.display().to_string(), index.display().to_string()],
        })
    }

    fn open_sharded(index: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::data(index, Some(e.line()), format!("not JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::data(index, None, "no \"weight_map\" object"))?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let shards: BTreeSet<PathBuf> = map.values().filter_map(|f| f.as_str()).map(|f| dir.join(f)).collect();
        let shards: Vec<PathBuf> = shards.into_iter().collect();
        // SAFETY: as in `open`.
        let files = unsafe { MmapedSafetensors::multi(&shards) }
            .map_err(|e| Error::data(index, None, format!("reading the shards it lists: {e}")))?;
        Ok(Self::with_files(files, index))
    }

    fn with_files(files: MmapedSafetensors, source: &Path) -> Self {
        let keys = files.tensors().into_iter().map(|(k, _)| k).collect();
        Self {
            files,
            source: source.to_path_buf(),
            keys,
            used: RefCell::default(),
            ignore_mismatched: false,
            mismatched: RefCell::default(),
        }
    }

    /// With `yes`, a parameter whose checkpoint tensor has another shape (a classification head
    /// for a different number of labels) is freshly initialized instead of failing the load.
    pub fn ignore_mismatched_sizes(mut self, yes: bool) -> Self {
        self.ignore_mismatched = yes;
        self
    }

    /// The parameters skipped for their shape, as `name: checkpoint [..], model [..]`.
    pub fn mismatched(&self) -> Vec<String> {
        self.mismatched.borrow().clone()
    }

    /// The file (or shard index) this checkpoint was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Every key in the checkpoint, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(String::as_str)
    }

    /// The checkpoint key holding the model parameter `name`, if any. Tried in order: the name
    /// itself, the name without its family's prefix (`bert.`, `roberta.`, ...: base-model
    /// checkpoints), and each of those with the old TensorFlow LayerNorm names `gamma`/`beta`.
    pub fn resolve(&self, name: &str) -> Option<&str> {
        let mut candidates = vec![name.to_string()];
        let stripped = Family::ALL.iter().find_map(|f| name.strip_prefix(f.base_prefix())?.strip_prefix('.'));
        if let Some(stripped) = stripped {
            candidates.push(stripped.to_string());
        }
        let legacy: Vec<String> = candidates
            .iter()
            .filter_map(|c| {
                c.strip_suffix("LayerNorm.weight")
                    .map(|s| format!("{s}LayerNorm.gamma"))
                    .or_else(|| c.strip_suffix("LayerNorm.bias").map(|s| format!("{s}LayerNorm.beta")))
            })
            .collect();
        candidates.extend(legacy);
        candidates.iter().find_map(|c| self.keys.get(c).map(String::as_str))
    }

    /// Loads the parameter `name` as an f32 variable on `device` when the checkpoint has it, checking
    /// its shape, and marks the key used.
    pub fn load_var(&self, name: &str, shape: &Shape, device: &Device) -> Result<Option<Var>> {
        let Some(key) = self.resolve(name) else {
            return Ok(None);
        };
        let view = self.files.get(key)?;
        if view.shape() != shape.dims() {
            if self.ignore_mismatched {
                self.used.borrow_mut().insert(key.to_string());
                let (theirs, ours) = (view.shape(), shape.dims());
                self.mismatched.borrow_mut().push(format!("{name}: checkpoint {theirs:?}, model {ours:?}"));
                return Ok(None);
            }
            let hint = if name.starts_with("classifier.") {
                " (a classification head trained for a different number of labels? `ignore_mismatched_sizes = true` \
                 under [model] initializes it afresh)"
            } else {
                ""
            };
            return Err(Error::data(
                &self.source,
                None,
                format!("{key} has shape {:?} but the model's {name} needs {:?}{hint}", view.shape(), shape.dims()),
            ));
        }
        let var = if view.dtype() == safetensors::Dtype::F32 {
            // One copy, straight from the mapped bytes into the variable's storage.
            let data: Vec<f32> =
                view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            Var::from_vec(data, shape.clone(), device)?
        } else {
            let tensor = self.files.load(key, device)?;
            if !tensor.dtype().is_float() {
                return Err(Error::data(
                    &self.source,
                    None,
                    format!("{key} holds {:?} values, not floating point", tensor.dtype()),
                ));
            }
            Var::from_tensor(&tensor.to_dtype(DType::F32)?)?
        };
        self.used.borrow_mut().insert(key.to_string());
        Ok(Some(var))
    }

    /// Keys never loaded, leaving out known buffers that are not parameters.
    pub fn unused_keys(&self) -> Vec<String> {
        let used = self.used.borrow();
        self.keys
            .iter()
            .filter(|k| !used.contains(*k) && !BUFFER_SUFFIXES.iter().any(|b| k.ends_with(b)))
            .cloned()
            .collect()
    }
}

/// What loading a checkpoint did, in transformers' terms: which model parameters came from the file,
/// which were newly initialized (missing), and which file keys the model had no use for (unused).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// transformers' class name of the model loaded (`BertForSequenceClassification`).
    pub class: String,
    /// The checkpoint file or folder.
    pub source: String,
    /// Model parameters read from the checkpoint, sorted.
    pub loaded: Vec<String>,
    /// Model parameters not in the checkpoint, sorted; after `from_pretrained` they are freshly initialized.
    pub missing: Vec<String>,
    /// WeightFiles keys that match no parameter, sorted (buffers such as `position_ids` are not listed).
    pub unused: Vec<String>,
    /// Parameters whose checkpoint tensor had another shape and were initialized afresh
    /// (`ignore_mismatched_sizes`), as `name: checkpoint [..], model [..]`.
    pub mismatched: Vec<String>,
}

impl LoadReport {
    /// True when every parameter came from the checkpoint and every key was used.
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.unused.is_empty() && self.mismatched.is_empty()
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let model = &self.class;
        if !self.unused.is_empty() {
            writeln!(
                f,
                "Some weights of the model checkpoint at {} were not used when initializing {model}: {:?}",
                self.source, self.unused
            )?;
        }
        if !self.mismatched.is_empty() {
            writeln!(
                f,
                "Some weights of {model} were not initialized from the model checkpoint at {} because the shapes did not match: {:?}",
                self.source, self.mismatched
            )?;
        }
        if self.missing.is_empty() {
            write!(f, "All weights of {model} were initialized from the model checkpoint at {}.", self.source)
        } else {
            write!(
                f,
                "Some weights of {model} were not initialized from the model checkpoint at {} and are newly \
                 initialized: {:?}\nYou should probably TRAIN this model on a down-stream task to be able to \
                 use it for predictions and inference.",
                self.source, self.missing
            )
        }
    }
}
