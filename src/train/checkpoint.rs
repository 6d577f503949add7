//! Checkpointer: `output_dir/checkpoint-STEP/` folders written to a temporary folder and renamed
//! into place, rotated to `save_total_limit` (never deleting the best one), and found again for
//! resuming. Only the main process has one.

use std::path::{Path, PathBuf};

use crate::model::Model;
use crate::optim::OptimizerState;
use crate::{Error, Result};

use super::state::TrainState;

/// The optimizer state file inside a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Tokenizer files copied next to the weights when the model folder has them.
const TOKENIZER_FILES: [&str; 5] =
    ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "added_tokens.json"];

/// Writes the model, tokenizer files, optimizer and trainer state.
#[derive(Debug, Clone)]
pub struct Checkpointer {
    output_dir: PathBuf,
    save_total_limit: Option<usize>,
    tokenizer_dir: PathBuf,
}

impl Checkpointer {
    pub fn new(output_dir: &Path, save_total_limit: Option<usize>, tokenizer_dir: &Path) -> Self {
        Self { output_dir: output_dir.to_path_buf(), save_total_limit, tokenizer_dir: tokenizer_dir.to_path_buf() }
    }

    /// Writes `checkpoint-STEP` and rotates old ones; returns its path.
    pub fn save(&self, model: &Model, optimizer: &OptimizerState, state: &TrainState) -> Result<PathBuf> {
        let dir = self.output_dir.join(format!("checkpoint-{}", state.global_step));
        let tmp = self.write_to_temporary(|tmp| {
            model.save_pretrained(tmp)?;
            optimizer.write(&tmp.join(OPTIMIZER_FILE))?;
            state.save(tmp)
        })?;
        replace_dir(&tmp, &dir)?;
        self.rotate(state.best_model_checkpoint.as_deref())?;
        Ok(dir)
    }

    /// Writes the final model (weights, config, tokenizer files) into `output_dir` itself.
    pub fn save_final(&self, model: &Model) -> Result<()> {
        std::fs::create_dir_all(&self.output_dir).map_err(|e| Error::io(&self.output_dir, e))?;
        model.save_pretrained(&self.output_dir)?;
        copy_tokenizer(&self.tokenizer_dir, &self.output_dir)
    }

    /// Runs `write` on a fresh temporary folder inside `output_dir`, adds the tokenizer files, and
    /// returns the folder (kept on success, removed on failure).
    fn write_to_temporary(&self, write: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
        std::fs::create_dir_all(&self.output_dir).map_err(|e| Error::io(&self.output_dir, e))?;
        let tmp = tempfile::Builder::new()
            .prefix(".checkpoint-tmp-")
            .tempdir_in(&self.output_dir)
            .map_err(|e| Error::io(&self.output_dir, e))?;
        write(tmp.path())?;
        copy_tokenizer(&self.tokenizer_dir, tmp.path())?;
        Ok(tmp.keep())
    }

    /// Deletes the oldest checkpoints beyond `save_total_limit`, keeping `best` whatever its age
    /// (transformers' rule, including keeping two when the limit is 1 and the best is not the latest).
    pub fn rotate(&self, best: Option<&Path>) -> Result<Vec<PathBuf>> {
        let Some(limit) = self.save_total_limit else { return Ok(Vec::new()) };
        let mut all = list_checkpoints(&self.output_dir)?;
        let newest = all.last().cloned();
        let mut limit = limit.max(1);
        if let Some(pos) = best.and_then(|b| all.iter().position(|p| p == b)) {
            if limit == 1 && newest.as_ref() != Some(&all[pos]) {
                limit = 2;
            }
            let b = all.remove(pos);
            all.push(b);
        }
        let excess = all.len().saturating_sub(limit);
        let doomed: Vec<PathBuf> = all.into_iter().take(excess).collect();
        for dir in &doomed {
            std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        Ok(doomed)
    }
}

/// The `checkpoint-STEP` folders of `output_dir`, oldest (lowest step) first.
pub fn list_checkpoints(output_dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(output_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(output_dir, e)),
    };
    let mut found: Vec<(usize, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
            e.path().is_dir().then(|| (step, e.path()))
        })
        .collect();
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// Cleans up after a run that was killed while saving, before a new run uses `output_dir`: a
/// `checkpoint-N.old` whose `checkpoint-N` is missing (killed between the two renames of a
/// replacement) is put back, then every `.checkpoint-tmp-*` folder (an unfinished write) and every
/// `checkpoint-N.old` that was already replaced is removed. Returns what was removed. Only the main
/// process calls it.
pub fn clear_stale(output_dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(output_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(output_dir, e)),
    };
    let names: Vec<(String, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .collect();
    let mut removed = Vec::new();
    for (name, path) in &names {
        if let Some(base) = name.strip_suffix(".old").filter(|b| b.starts_with("checkpoint-")) {
            let current = output_dir.join(base);
            if current.exists() {
                std::fs::remove_dir_all(path).map_err(|e| Error::io(path, e))?;
                removed.push(path.clone());
            } else {
                std::fs::rename(path, &current).map_err(|e| Error::io(path, e))?;
            }
        }
    }
    for (name, path) in &names {
        if name.starts_with(".checkpoint-tmp-") {
            std::fs::remove_dir_all(path).map_err(|e| Error::io(path, e))?;
            removed.push(path.clone());
        }
    }
    Ok(removed)
}

/// The newest checkpoint of `output_dir`, if any.
pub fn latest_checkpoint(output_dir: &Path) -> Result<Option<PathBuf>> {
    Ok(list_checkpoints(output_dir)?.pop())
}

fn copy_tokenizer(from: &Path, to: &Path) -> Result<()> {
    for name in TOKENIZER_FILES {
        let src = from.join(name);
        if src.is_file() {
            crate::io::copy_atomically(&src, &to.join(name))?;
        }
    }
    Ok(())
}

/// Moves `tmp` to `dir`, replacing an older `dir` only once the new one is complete.
fn replace_dir(tmp: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        let old = dir.with_extension("old");
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
        std::fs::rename(tmp, dir).map_err(|e| Error::io(dir, e))?;
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    } else {
        std::fs::rename(tmp, dir).map_err(|e| Error::io(dir, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(dir: &Path, steps: &[usize]) -> Checkpointer {
        for s in steps {
            std::fs::create_dir_all(dir.join(format!("checkpoint-{s}"))).unwrap();
        }
        std::fs::create_dir_all(dir.join("other")).unwrap();
        Checkpointer::new(dir, Some(2), dir)
    }

    fn names(dir: &Path) -> Vec<String> {
        list_checkpoints(dir).unwrap().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn stale_temporary_folders_go_and_an_interrupted_replacement_is_undone() {
        let d = tempfile::tempdir().unwrap();
        for dir in [".checkpoint-tmp-abc", "checkpoint-4", "checkpoint-4.old", "checkpoint-8.old", "keep"] {
            std::fs::create_dir_all(d.path().join(dir)).unwrap();
        }
        std::fs::write(d.path().join("checkpoint-8.old/trainer_state.json"), "{}").unwrap();
        let mut removed = clear_stale(d.path()).unwrap();
        removed.sort();
        assert_eq!(removed, [d.path().join(".checkpoint-tmp-abc"), d.path().join("checkpoint-4.old")]);
        assert!(d.path().join("checkpoint-8/trainer_state.json").is_file(), "the only copy of step 8 is back");
        assert_eq!(names(d.path()), ["checkpoint-4", "checkpoint-8"]);
        assert!(d.path().join("keep").is_dir());
        assert!(clear_stale(&d.path().join("missing")).unwrap().is_empty());
    }

    #[test]
    fn rotation_keeps_the_newest_and_the_best() {
        let d = tempfile::tempdir().unwrap();
        let c = make(d.path(), &[10, 100, 20, 30]);
        assert_eq!(names(d.path()), ["checkpoint-10", "checkpoint-20", "checkpoint-30", "checkpoint-100"]);
        c.rotate(None).unwrap();
        assert_eq!(names(d.path()), ["checkpoint-30", "checkpoint-100"]);
        let c = make(d.path(), &[10, 20]);
        c.rotate(Some(&d.path().join("checkpoint-10"))).unwrap();
        assert_eq!(names(d.path()), ["checkpoint-10", "checkpoint-100"]);
        let c = Checkpointer::new(d.path(), Some(1), d.path());
        c.rotate(Some(&d.path().join("checkpoint-10"))).unwrap();
        assert_eq!(names(d.path()), ["checkpoint-10", "checkpoint-100"], "limit 1 keeps the best and the latest");
        c.rotate(Some(&d.path().join("checkpoint-100"))).unwrap();
        assert_eq!(names(d.path()), ["checkpoint-100"], "limit 1 and the best is the latest");
        assert!(d.path().join("other").is_dir());
        assert_eq!(latest_checkpoint(d.path()).unwrap().unwrap(), d.path().join("checkpoint-100"));
    }
}
