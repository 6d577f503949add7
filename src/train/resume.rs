//! Resuming: which checkpoint `resume_from_checkpoint` names, its state on every rank, whether this
//! run's shape (processes x per-device batch x accumulation) can continue its steps, and the
//! weights, optimizer and dropout seed restored from it. Rank 0 reads the files and sends them to
//! the others, so hosts need not share a filesystem.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use crate::data::steps::{process_counts_for, shapes_for};
use crate::data::BatchShape;
use crate::distributed::{collectives, ProcessGroup};
use crate::model::{DropoutRng, Model};
use crate::{Error, Result};

use super::args::TrainingArguments;
use super::checkpoint::{latest_checkpoint, OPTIMIZER_FILE};
use super::optimizer::Optimizer;
use super::state::{TrainState, STATE_FILE};

/// A checkpoint being resumed: where it is, this rank's copy of its files, and its state.
pub struct Resumed {
    pub dir: PathBuf,
    local: PathBuf,
    /// Keeps a rank's received copy alive.
    _copy: Option<tempfile::TempDir>,
    pub state: TrainState,
}

/// The checkpoint to resume from: `resume_from_checkpoint`, or the newest one in `output_dir` for
/// `"latest"` (an error when there is none) and `"latest-if-any"` (a fresh start then).
pub fn checkpoint_to_resume(args: &TrainingArguments, pg: &dyn ProcessGroup) -> Result<Option<PathBuf>> {
    let Some(dir) = &args.resume_from_checkpoint else { return Ok(None) };
    // "latest-if-any" starts afresh where there is none: for a job a scheduler requeues.
    let if_any = dir.as_os_str() == "latest-if-any";
    if dir.as_os_str() != "latest" && !if_any {
        return Ok(Some(dir.clone()));
    }
    // Rank 0's output_dir decides: other hosts need not see it.
    let mut found = Vec::new();
    if pg.is_main() {
        if let Some(d) = latest_checkpoint(&args.output_dir)? {
            found = d.into_os_string().into_vec();
        }
    }
    collectives::broadcast_vec(pg, &mut found, 0)?;
    match (!found.is_empty()).then(|| PathBuf::from(OsString::from_vec(found))) {
        Some(d) => Ok(Some(d)),
        None if if_any => Ok(None),
        None => Err(Error::config(
            "resume_from_checkpoint",
            format!("no checkpoint-* folder in {}", args.output_dir.display()),
        )),
    }
}

impl Resumed {
    /// Brings the checkpoint's files to every rank and reads its state.
    pub fn load(pg: &dyn ProcessGroup, dir: &Path) -> Result<Self> {
        let files = [STATE_FILE, "model.safetensors", OPTIMIZER_FILE];
        let (local, copy) = collectives::share_files(pg, dir, &files)?;
        let state = TrainState::load(&local)?;
        Ok(Self { dir: dir.to_path_buf(), local, _copy: copy, state })
    }

    fn refuse(&self, what: String) -> Error {
        Error::config("resume_from_checkpoint", format!("{} was written by a run with {what}", self.dir.display()))
    }

    /// The layout this run of `shape` continues on, over `train_rows` rows: the checkpoint's, when
    /// `shape` keeps its global batch. What would change the steps' rows is refused, naming it and
    /// the shapes that would do.
    pub fn layout_for(&self, shape: BatchShape, train_rows: usize) -> Result<BatchShape> {
        let state = &self.state;
        if state.train_rows != 0 && state.train_rows != train_rows {
            return Err(self.refuse(format!(
                "{} training rows; this run has {train_rows}: the data must match to resume exactly",
                state.train_rows
            )));
        }
        let Some(layout) = state.layout else {
            // Older checkpoints do not say how their epochs were laid out: their own shape only.
            if state.world_size != 0 && state.world_size != shape.processes {
                return Err(self.refuse(format!(
                    "{} processes; this run has {}: the number of processes must match",
                    state.world_size, shape.processes
                )));
            }
            if state.train_batch_size != 0 && state.train_batch_size != shape.batch_size {
                return Err(self.refuse(format!(
                    "per_device_train_batch_size {}; this run has {}: it must match to resume exactly",
                    state.train_batch_size, shape.batch_size
                )));
            }
            return Ok(shape);
        };
        if layout.global() == shape.global() {
            return Ok(layout);
        }
        let global = layout.global();
        let hint = match shapes_for(global, shape.processes).as_slice() {
            [] => {
                let counts: Vec<String> = process_counts_for(global).iter().map(|p| p.to_string()).collect();
                format!(
                    "{global} rows cannot be split evenly over {} processes; resume on {} processes",
                    shape.processes,
                    counts.join(", ")
                )
            }
            usable => {
                let pairs: Vec<String> = usable.iter().map(|(b, a)| format!("{b} x {a}")).collect();
                format!(
                    "on {} {}, per_device_train_batch_size x gradient_accumulation_steps must make {}: {}",
                    shape.processes,
                    if shape.processes == 1 { "process" } else { "processes" },
                    global / shape.processes,
                    pairs.join(", ")
                )
            }
        };
        Err(self.refuse(format!(
            "a global batch of {global} rows ({layout}); this run's is {} ({shape}), and resuming keeps the global \
             batch: {hint}",
            shape.global()
        )))
    }

    /// Loads the weights, the optimizer state and the dropout seed.
    pub fn restore(&self, model: &Model, optimizer: &mut Optimizer) -> Result<()> {
        model.load_weights(self.local.join("model.safetensors"))?;
        optimizer.load(&self.local.join(OPTIMIZER_FILE))?;
        // Dropout masks are keyed by step and row: the seed is all there is to restore.
        model.set_dropout_rng(DropoutRng::from_state(self.state.dropout_rng));
        Ok(())
    }
}
