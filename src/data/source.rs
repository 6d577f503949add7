//! Sources: where datasets and models are looked for, in order: a local directory, the Hugging Face
//! hub cache, then a hub download (unless offline).
//!
//! Environment: `ACCEL_DATA_DIR` (a folder laid out like `glue/MRPC/...`), `ACCEL_MODEL_DIR` (a folder of
//! model folders), `HF_HUB_CACHE` / `HF_HOME` (the hub cache), `HF_HUB_OFFLINE` (no downloads),
//! `HF_ENDPOINT` (another hub). hf-hub reads neither `HF_HUB_CACHE` nor `HF_HUB_OFFLINE`: they are
//! honoured here.

use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo, RepoType};

use crate::{Error, Result};

/// Where to look for datasets and models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    /// A folder laid out like `glue/MRPC/...` (`ACCEL_DATA_DIR`).
    pub data_dir: Option<PathBuf>,
    /// A folder of model folders (`ACCEL_MODEL_DIR`).
    pub model_dir: Option<PathBuf>,
    /// The Hugging Face hub cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub hub_cache: PathBuf,
    /// No downloads (`HF_HUB_OFFLINE` set to 1/true/yes/on).
    pub offline: bool,
    /// Another hub endpoint (`HF_ENDPOINT`).
    pub endpoint: Option<String>,
}

impl Sources {
    /// Reads the environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// Reads through `lookup`, so that tests need not change the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let home = lookup("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
        let hub_cache = lookup("HF_HUB_CACHE")
            .map(PathBuf::from)
            .or_else(|| lookup("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
            .or_else(|| lookup("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("huggingface/hub")))
            .unwrap_or_else(|| home.join(".cache/huggingface/hub"));
        let offline = lookup("HF_HUB_OFFLINE")
            .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);
        Self {
            data_dir: lookup("ACCEL_DATA_DIR").map(PathBuf::from),
            model_dir: lookup("ACCEL_MODEL_DIR").map(PathBuf::from),
            hub_cache,
            offline,
            endpoint: lookup("HF_ENDPOINT"),
        }
    }

    /// Sources with no local folders, a given hub cache and no downloads: for tests.
    pub fn isolated(hub_cache: impl Into<PathBuf>) -> Self {
        Self { data_dir: None, model_dir: None, hub_cache: hub_cache.into(), offline: true, endpoint: None }
    }

    /// Replaces the data directory (a `--data-dir` flag or a config's `data_dir`).
    pub fn with_data_dir(mut self, dir: Option<PathBuf>) -> Self {
        if dir.is_some() {
            self.data_dir = dir;
        }
        self
    }

    /// Replaces the model directory.
    pub fn with_model_dir(mut self, dir: Option<PathBuf>) -> Self {
        if dir.is_some() {
            self.model_dir = dir;
        }
        self
    }

    /// Files of a hub repository, from the cache, else downloaded. `None` if the repository is
    /// neither cached nor downloadable; what was tried is added to `looked`.
    pub fn hub_files(
        &self,
        repo_id: &str,
        kind: RepoType,
        files: &[&str],
        looked: &mut Vec<String>,
    ) -> Option<Vec<PathBuf>> {
        let repo = Repo::new(repo_id.to_string(), kind);
        let cache = Cache::new(self.hub_cache.clone());
        let cached: Option<Vec<PathBuf>> = files.iter().map(|f| cache.repo(repo.clone()).get(f)).collect();
        if cached.is_some() {
            return cached;
        }
        looked.push(format!("hub cache {}", self.hub_cache.join(repo.folder_name()).display()));
        if self.offline {
            looked.push(format!("no download of {repo_id} (HF_HUB_OFFLINE is set)"));
            return None;
        }
        match self.download(&repo, files) {
            Ok(paths) => Some(paths),
            Err(e) => {
                looked.push(format!("download of {repo_id} failed: {e}"));
                None
            }
        }
    }

    fn download(&self, repo: &Repo, files: &[&str]) -> std::result::Result<Vec<PathBuf>, String> {
        let mut builder =
            hf_hub::api::sync::ApiBuilder::from_cache(Cache::new(self.hub_cache.clone())).with_progress(false);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        let api = builder.build().map_err(|e| e.to_string())?;
        let api_repo = api.repo(repo.clone());
        files.iter().map(|f| api_repo.get(f).map_err(|e| format!("{f}: {e}"))).collect()
    }

    /// A model folder holding `files`: a path, `ACCEL_MODEL_DIR/<name>` (or its last component),
    /// the hub cache, then a download.
    pub fn resolve_model(&self, name: &str, files: &[&str]) -> Result<PathBuf> {
        let mut looked = Vec::new();
        let has_files = |dir: &Path| files.iter().all(|f| dir.join(f).is_file());
        let mut candidates = vec![PathBuf::from(name)];
        if let Some(models) = &self.model_dir {
            candidates.push(models.join(name));
            if let Some(base) = Path::new(name).file_name() {
                candidates.push(models.join(base));
            }
        }
        // A bare name gives the same folder twice (name, and its last component); look once.
        let mut seen = Vec::new();
        candidates.retain(|c| {
            if seen.contains(c) {
                false
            } else {
                seen.push(c.clone());
                true
            }
        });
        for dir in candidates {
            if has_files(&dir) {
                return Ok(dir);
            }
            if dir.is_dir() {
                let missing: Vec<&str> = files.iter().copied().filter(|f| !dir.join(f).is_file()).collect();
                looked.push(format!("{} (lacks {})", dir.display(), missing.join(", ")));
            } else {
                looked.push(dir.display().to_string());
            }
        }
        if name.split('/').count() == 2 && !name.starts_with('.') && !name.starts_with('/') {
            if let Some(paths) = self.hub_files(name, RepoType::Model, files, &mut looked) {
                if let Some(dir) = paths.first().and_then(|p| p.parent()) {
                    return Ok(dir.to_path_buf());
                }
            }
        } else {
            looked.push(format!("the hub ({name:?} is not an owner/name id)"));
        }
        Err(Error::NotFound { what: format!("model {name:?}"), looked })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> Sources {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Sources::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn hub_cache_follows_hugging_face_precedence() {
        assert_eq!(from(&[("HOME", "/h")]).hub_cache, PathBuf::from("/h/.cache/huggingface/hub"));
        assert_eq!(from(&[("HOME", "/h"), ("HF_HOME", "/hf")]).hub_cache, PathBuf::from("/hf/hub"));
        let s = from(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/c")]);
        assert_eq!(s.hub_cache, PathBuf::from("/c"));
    }

    #[test]
    fn offline_accepts_the_usual_truthy_values() {
        for v in ["1", "true", "YES", "on"] {
            assert!(from(&[("HF_HUB_OFFLINE", v)]).offline, "{v}");
        }
        for v in ["0", "false", "no"] {
            assert!(!from(&[("HF_HUB_OFFLINE", v)]).offline, "{v}");
        }
    }

    #[test]
    fn missing_model_names_every_place_looked() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = Sources::isolated(tmp.path().join("hub"));
        s.model_dir = Some(tmp.path().join("models"));
        let err = s.resolve_model("someone/missing-model", &["config.json"]).unwrap_err().to_string();
        assert!(err.contains("models/someone/missing-model"), "{err}");
        assert!(err.contains("models--someone--missing-model"), "{err}");
        assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
        let err = s.resolve_model("missing", &["config.json"]).unwrap_err().to_string();
        assert_eq!(err.matches("models/missing").count(), 1, "each folder once: {err}");
    }
}
