//! Params: the model's trainable tensors as candle Vars in one name-sorted order, with safetensors save and load.
//!
//! Every rank builds the same names, so iterating this list gives the same order everywhere:
//! collectives, gradient clipping, the optimizer and checkpoints all walk it.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Tensor, Var};

use super::weights::{LoadReport, WeightFiles};
use crate::kernels::TrackedWeights;
use crate::{bail, Error, Result};

/// The trainable parameters, sorted by their transformers names. Clones share the list's
/// [`TrackedWeights`]: whatever writes the values through one clone (the optimizer, a load, a
/// broadcast) makes every bf16 copy of them stale.
#[derive(Debug, Clone)]
pub struct Params {
    entries: Vec<(String, Var)>,
    tracked: TrackedWeights,
}

impl Params {
    /// Sorts `entries` by name; duplicate names are an error.
    pub fn new(mut entries: Vec<(String, Var)>) -> Result<Self> {
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(pair) = entries.windows(2).find(|w| w[0].0 == w[1].0) {
            bail!("parameter {} is defined twice", pair[0].0);
        }
        let tracked = TrackedWeights::new(entries.iter().map(|(_, v)| v.as_tensor()));
        Ok(Self { entries, tracked })
    }

    /// The version of the values, for the caches of copies made from them (bf16 weights).
    pub fn tracked(&self) -> &TrackedWeights {
        &self.tracked
    }

    /// Records that values were written in place (by anything but this crate's optimizer and
    /// loaders, which record it themselves).
    pub fn mark_changed(&self) {
        self.tracked.changed();
    }

    /// The variable called `name`.
    pub fn get(&self, name: &str) -> Option<&Var> {
        self.entries.binary_search_by(|(n, _)| n.as_str().cmp(name)).ok().map(|i| &self.entries[i].1)
    }

    /// `(name, variable)` pairs in name order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Var)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// The names in order.
    pub fn names(&self) -> impl ExactSizeIterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// Number of parameter tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total number of scalar parameters (what transformers' `num_parameters()` reports).
    pub fn num_elements(&self) -> usize {
        self.entries.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Writes every parameter to `path` under its name, with `{"format": "pt"}` metadata so that
    /// transformers accepts the file. Written to a temporary file first, then renamed into place.
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let tensors: Vec<(&str, &Tensor)> = self.entries.iter().map(|(n, v)| (n.as_str(), v.as_tensor())).collect();
        write_safetensors(path, tensors, HashMap::from([("format".to_string(), "pt".to_string())]))
    }

    /// Overwrites parameters with the tensors of the safetensors file at `path`. Keys match as in
    /// `from_pretrained` (with or without `bert.`); parameters the file lacks keep their values and are
    /// reported as missing, keys that match no parameter as unused. A shape mismatch is an error and
    /// leaves every parameter unchanged.
    pub fn load_safetensors(&self, path: impl AsRef<Path>) -> Result<LoadReport> {
        let ckpt = WeightFiles::open(path.as_ref())?;
        let mut staged = Vec::new();
        let mut missing = Vec::new();
        for (name, var) in &self.entries {
            match ckpt.load_var(name, var.shape(), var.device())? {
                Some(loaded) => staged.push((name, var, loaded)),
                None => missing.push(name.clone()),
            }
        }
        let mut loaded = Vec::with_capacity(staged.len());
        for (name, var, value) in staged {
            var.set(value.as_tensor())?;
            loaded.push(name.clone());
        }
        self.mark_changed();
        Ok(LoadReport {
            class: String::new(),
            source: ckpt.source().display().to_string(),
            loaded,
            missing,
            unused: ckpt.unused_keys(),
            mismatched: Vec::new(),
        })
    }
}

/// Serializes `tensors` to `path` atomically (temporary file in the same folder, then rename).
pub(crate) fn write_safetensors<'a>(
    path: &Path,
    tensors: Vec<(&'a str, &'a Tensor)>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let bytes = safetensors::serialize(tensors, Some(metadata))
        .map_err(|e| Error::Msg(format!("writing {}: {e}", path.display())))?;
    crate::io::write_atomically(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn var(values: &[f32]) -> Var {
        Var::from_slice(values, values.len(), &Device::Cpu).unwrap()
    }

    #[test]
    fn sorted_lookup_and_counts() {
        let params = Params::new(vec![
            ("classifier.weight".into(), var(&[1., 2.])),
            ("bert.embeddings.LayerNorm.weight".into(), var(&[3.])),
            ("bert.pooler.dense.bias".into(), var(&[4., 5., 6.])),
        ])
        .unwrap();
        let names: Vec<&str> = params.names().collect();
        assert_eq!(names, ["bert.embeddings.LayerNorm.weight", "bert.pooler.dense.bias", "classifier.weight"]);
        assert_eq!(params.len(), 3);
        assert_eq!(params.num_elements(), 6);
        assert_eq!(params.get("bert.pooler.dense.bias").unwrap().to_vec1::<f32>().unwrap(), [4., 5., 6.]);
        assert!(params.get("nope").is_none());
        assert!(Params::new(vec![("a".into(), var(&[1.])), ("a".into(), var(&[2.]))]).is_err());
    }

    #[test]
    fn save_then_load_restores_values_and_reports_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.safetensors");
        let params =
            Params::new(vec![("bert.x.weight".into(), var(&[1., 2.])), ("classifier.bias".into(), var(&[3.]))])
                .unwrap();
        params.save_safetensors(&path).unwrap();
        params.get("bert.x.weight").unwrap().set(&Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap()).unwrap();
        let report = params.load_safetensors(&path).unwrap();
        assert_eq!(report.loaded, ["bert.x.weight", "classifier.bias"]);
        assert!(report.is_exact());
        assert_eq!(params.get("bert.x.weight").unwrap().to_vec1::<f32>().unwrap(), [1., 2.]);

        // A file without the `bert.` prefix still matches; a wrong shape changes nothing.
        let other = dir.path().join("o.safetensors");
        let t = Tensor::new(&[7f32, 8.], &Device::Cpu).unwrap();
        let t2 = Tensor::new(&[5f32, 6.], &Device::Cpu).unwrap();
        let bad = Tensor::new(&[9f32, 9.], &Device::Cpu).unwrap();
        write_safetensors(&other, vec![("x.weight", &t)], HashMap::new()).unwrap();
        let report = params.load_safetensors(&other).unwrap();
        assert_eq!(report.missing, ["classifier.bias"]);
        assert_eq!(params.get("bert.x.weight").unwrap().to_vec1::<f32>().unwrap(), [7., 8.]);
        write_safetensors(&other, vec![("x.weight", &t2), ("classifier.bias", &bad)], HashMap::new()).unwrap();
        assert!(params.load_safetensors(&other).is_err());
        assert_eq!(params.get("bert.x.weight").unwrap().to_vec1::<f32>().unwrap(), [7., 8.]);
    }
}
