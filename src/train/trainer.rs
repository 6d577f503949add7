//! Trainer: the config-driven loop of transformers' `Trainer` on top of the custom-loop pieces
//! (data loader, model, AdamW, schedule, [`Gradients`]), with evaluation, logging, checkpoints and
//! resume. Everything that differs between one process and many goes through the process group.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde_json::json;

use crate::data::{
    Batch, BatchShape, DataCollatorWithPadding, Dataset, DatasetDict, MicroBatch, PairTokenizer, Sources, StepSampler,
};
use crate::distributed::{collectives, ProcessGroup, RankEnv};
use crate::kernels::Autocast;
use crate::model::{DropoutRng, LoadReport, Model, ModelConfig};
use crate::report;
use crate::spans;
use crate::{Error, Result};

use super::answering::{predict_spans, SpanPredictions};
use super::args::{IntervalStrategy, TrainConfig, TrainingArguments};
use super::best_metric;
use super::checkpoint::{clear_stale, Checkpointer};
use super::eval::{predict, Predictions};
use super::fault::Fault;
use super::gradients::Gradients;
use super::log::Progress;
use super::metrics::{ComputeMetrics, Metrics};
use super::optimizer::Optimizer;
use super::precision::same_products_on_every_rank;
use super::prepare::{Evaluation, Prepared};
use super::resume::{checkpoint_to_resume, Resumed};
use super::run_figures::{self, Counts};
use super::state::TrainState;
use super::tagging::{labelled_tokens, predict_tags, TagPredictions};
use crate::report::mlflow::{MlflowRun, MlflowSettings};

/// What a finished run reports.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutput {
    pub global_step: usize,
    /// Mean training loss over the run's steps.
    pub training_loss: f64,
    pub train_runtime_s: f64,
    pub train_samples_per_second: f64,
    /// The evaluation of the validation split at the final step, if one ran there.
    pub eval_metrics: Option<Metrics>,
    /// Every record logged (training logs and evaluations), a resumed run's earlier ones included.
    pub log_history: Vec<serde_json::Value>,
}

/// Running figures of a training run between logs, and for its summary.
#[derive(Debug, Default)]
struct RunStats {
    /// Sum of the rows' losses since the last log, on the device that computed them: it is
    /// read back once per log, so no step waits for the device to finish.
    window_loss: Option<Tensor>,
    window_weight: usize,
    /// Optimizer steps since the last log: the same on every rank (a rank may have had no rows in
    /// a step at an epoch's end), so it decides whether to log, which is a collective.
    window_steps: usize,
    /// The mean loss of the last log (for the progress bar).
    logged_loss: Option<f64>,
    /// Sum of the losses of the windows already read.
    total_loss: f64,
    total_weight: usize,
    samples: usize,
    samples_per_s: f64,
    grad_norm: f64,
    lr: f64,
    last_eval: Option<Metrics>,
    last_eval_step: usize,
    /// The step of the last checkpoint this run wrote.
    last_save_step: Option<usize>,
    /// Early stopping asked the run to end.
    stop: bool,
}

impl RunStats {
    /// Adds the mean loss of a micro-batch of `rows` rows to the window, without reading it. The
    /// window is a sum over rows, so the logged mean is the same however a step's rows are split
    /// between processes and micro-batches. It is kept in f64, as a host sum of the read values
    /// would be.
    fn add_loss(&mut self, loss: &Tensor, weight: usize) -> Result<()> {
        let loss = (loss.detach().to_dtype(candle_core::DType::F64)? * weight as f64)?;
        self.window_loss = Some(match self.window_loss.take() {
            Some(sum) => (sum + loss)?,
            None => loss,
        });
        self.window_weight += weight;
        self.total_weight += weight;
        Ok(())
    }

    /// Reads the window's loss sum (one wait for the device) into the run's total and empties it.
    fn read_window(&mut self) -> Result<f64> {
        let sum = match self.window_loss.take() {
            Some(sum) => sum.to_scalar::<f64>()?,
            None => 0.0,
        };
        self.total_loss += sum;
        Ok(sum)
    }
}

/// A run in progress: where it stands, its optimizer, its running figures, and where it logs and
/// saves (the checkpointer exists on the main process only).
struct Run {
    state: TrainState,
    optimizer: Optimizer,
    stats: RunStats,
    progress: Progress,
    checkpointer: Option<Checkpointer>,
    /// Which rows each step takes on this rank.
    sampler: StepSampler,
    num_epochs: usize,
    /// Rows and tokens trained on, for the run report.
    counts: Counts,
}

/// Fine-tunes a sequence classifier as transformers' Trainer does, driven by a [`TrainConfig`].
pub struct Trainer<'pg> {
    cfg: TrainConfig,
    pg: &'pg dyn ProcessGroup,
    model: Model,
    model_dir: PathBuf,
    /// `glue/mrpc`, or the train file's name.
    data_name: String,
    splits: DatasetDict,
    /// The splits evaluated at each evaluation, with their metric suffixes; the first picks the best.
    eval_splits: Vec<(String, String)>,
    collator: DataCollatorWithPadding,
    evaluation: Evaluation,
    load_report: LoadReport,
    faults: Vec<Fault>,
    /// Print a step marker for `accel launch` after every optimizer step.
    step_markers: bool,
    /// The mixed-precision policy every forward and backward pass runs under.
    autocast: Autocast,
    /// Where the model, the batches and the optimizer state live (`device`).
    device: Device,
    /// Show no progress (records are still written to output_dir).
    silent: bool,
    /// The MLflow run the records go to (main process, `report_to` with MLflow).
    mlflow: Option<MlflowRun>,
}

impl<'pg> Trainer<'pg> {
    /// Loads data and model: the main process tokenizes first (filling the cache), the others then
    /// read the cache.
    pub fn new(cfg: TrainConfig, pg: &'pg dyn ProcessGroup) -> Result<Self> {
        let sources = Sources::from_env().with_data_dir(cfg.data.data_dir.clone());
        // Weights are not required here: loading names a pickle-only folder and how to convert it.
        let model_dir = sources.resolve_model(&cfg.model.name_or_path, &["config.json", "tokenizer.json"])?;
        let mut tokenizer = PairTokenizer::from_dir(&model_dir)?;
        if let Some(n) = cfg.data.max_length {
            tokenizer = tokenizer.with_max_length(n);
        }
        let mut config = ModelConfig::from_file(model_dir.join("config.json"))?;
        let model_labels = config.labels().id2label.as_ref().map(|m| m.values().cloned().collect::<Vec<_>>());
        let task = Prepared::load(&cfg, &sources, &tokenizer, model_labels.as_deref(), pg)?;
        check_evaluation_data(&cfg.args, &task.splits, task.validation_split())?;
        let splits = task.splits.clone();
        // The one place the run's device is chosen: the model, the collator's batches and the
        // optimizer state (created beside the weights) all follow it.
        let local_rank = RankEnv::from_env().map(|e| e.local_rank).unwrap_or_else(|_| pg.rank());
        let device = cfg.args.device.resolve(local_rank)?;
        let mut collator = DataCollatorWithPadding::new(&tokenizer)?.on(device.clone());
        collator.pad_to_multiple_of = cfg.data.pad_to_multiple_of;
        collator.pad_to_length = task.pad_to_length;

        if !task.is_regression() {
            config.labels_mut().set_names(&task.label_names);
        }
        if super::preflight::enabled() {
            // Before any weight is allocated: refuse a run that cannot fit, in milliseconds.
            if let Some(available) = super::preflight::available(&device, pg.world_size()) {
                let ids = splits.split("train")?.int_lists("input_ids")?;
                let longest = (0..ids.len()).map(|i| ids.row(i).len()).max().unwrap_or(1);
                let seq_len = match cfg.data.pad_to_multiple_of {
                    Some(m) if m > 1 => longest.div_ceil(m) * m,
                    _ => longest,
                };
                let run = super::preflight::Run {
                    config: &config,
                    num_labels: task.num_labels(),
                    batch: cfg.args.per_device_train_batch_size,
                    accumulation: cfg.args.gradient_accumulation_steps,
                    seq_len,
                    precision: cfg.args.mixed_precision,
                };
                super::preflight::check(&run, &available)?;
            }
        }
        let (model, load_report) = Model::from_pretrained_for(
            cfg.task,
            &model_dir,
            config,
            task.num_labels(),
            (cfg.args.seed, cfg.model.ignore_mismatched_sizes),
            &device,
        )?;
        // Ranks that loaded or initialised differently still start equal, as under DDP.
        collectives::broadcast_params(pg, model.params(), cfg.args.bucket_bytes())?;
        // One seed for every rank: each forward pass tells the generator where its rows sit in the
        // step's global batch, so ranks draw disjoint parts of the masks one process would draw.
        model.set_dropout_rng(DropoutRng::new(cfg.args.seed));
        let faults = Fault::from_env()?;
        let step_markers = std::env::var_os(accel_launch::STEP_MARKER_VAR).is_some();
        super::preempt::install(step_markers);
        if step_markers {
            // The launcher learns where this rank is, for its report when the job fails.
            spans::heartbeat::start();
        }
        let autocast = same_products_on_every_rank(
            pg,
            Autocast::on(cfg.args.mixed_precision, &device, model.params().tracked())?,
        )?;
        Ok(Self {
            cfg,
            pg,
            model,
            model_dir,
            data_name: task.name.clone(),
            splits,
            eval_splits: task.eval_splits.clone(),
            collator,
            evaluation: task.evaluation,
            load_report,
            faults,
            step_markers,
            autocast,
            device,
            silent: false,
            mlflow: None,
        })
    }

    /// Shows no progress bar or log lines; metrics.jsonl and checkpoints are still written.
    pub fn silent(mut self) -> Self {
        self.silent = true;
        self
    }

    /// Replaces the metric function (`compute_metrics=` in transformers).
    pub fn with_compute_metrics(mut self, f: ComputeMetrics) -> Self {
        self.evaluation = Evaluation::Classes(f);
        self
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The device this process trains on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Which weights came from the checkpoint and which were newly initialized.
    pub fn load_report(&self) -> &LoadReport {
        &self.load_report
    }

    /// The split that picks the best model (`validation`; MNLI's `validation_matched`).
    pub fn validation_split(&self) -> &str {
        self.eval_splits.first().map(|(s, _)| s.as_str()).unwrap_or("validation")
    }

    /// The run's config.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The data's name: `glue/mrpc`, or the train file's name.
    pub fn data_name(&self) -> &str {
        &self.data_name
    }

    /// `accel train`'s whole job: trains, evaluates the final model on the validation split (the
    /// last evaluation when it ran at the final step and the best model was not loaded back; none
    /// when the data has no validation split), and writes the model card with those results.
    pub fn train_and_evaluate(&mut self) -> Result<(TrainOutput, Option<Metrics>)> {
        let out = self.train()?;
        let metrics = match out.eval_metrics.clone() {
            Some(m) if !self.cfg.args.load_best_model_at_end => Some(m),
            _ if self.has_validation() => match self.evaluate(self.validation_split()) {
                Ok(m) => Some(m),
                Err(e) => {
                    if let Some(mlflow) = &mut self.mlflow {
                        mlflow.set_outcome("FAILED");
                    }
                    return Err(e);
                }
            },
            _ => None,
        };
        // The model is saved: a card that cannot be written is worth a warning, not the run.
        if let Err(e) = self.write_model_card(&out, metrics.as_ref()) {
            crate::io::eprint_line(&format!("warning: the model card was not written: {e}"));
        }
        if let Some(mlflow) = self.mlflow.take() {
            if self.cfg.args.mlflow_log_model {
                mlflow.log_artifacts(&self.cfg.args.output_dir, "model");
            }
            mlflow.finish();
        }
        Ok((out, metrics))
    }

    /// Writes the model card (README.md) of the final model into output_dir (main process), with
    /// `final_metrics` as its results.
    pub fn write_model_card(&self, out: &TrainOutput, final_metrics: Option<&Metrics>) -> Result<()> {
        if !self.pg.is_main() {
            return Ok(());
        }
        let facts = super::model_card::RunFacts {
            cfg: &self.cfg,
            data_name: &self.data_name,
            validation_split: self.validation_split(),
            world_size: self.pg.world_size(),
            device: &self.device,
            log_history: &out.log_history,
            eval_results: final_metrics,
        };
        super::model_card::ModelCard::for_run(&facts).write(&self.cfg.args.output_dir)
    }

    /// Whether the data has the split that evaluation reads (a run on a train file alone has not).
    pub fn has_validation(&self) -> bool {
        self.splits.get(self.validation_split()).is_some()
    }

    fn split(&self, name: &str) -> Result<Arc<Dataset>> {
        Ok(Arc::new(self.splits.split(name)?.clone()))
    }

    /// Predictions for a split, gathered over all ranks (one per row: sequence classification).
    pub fn predict(&self, split: &str) -> Result<Predictions> {
        let (model, batch_size) = (&self.model, self.cfg.args.per_device_eval_batch_size);
        self.autocast.run(|| predict(model, self.split(split)?, &self.collator, batch_size, self.pg))
    }

    /// Each sentence's tag per token for a split, gathered over all ranks (token classification).
    pub fn predict_tags(&self, split: &str) -> Result<TagPredictions> {
        let (model, batch_size) = (&self.model, self.cfg.args.per_device_eval_batch_size);
        self.autocast.run(|| predict_tags(model, self.split(split)?, &self.collator, batch_size, self.pg))
    }

    /// Each window's start and end scores for a split, gathered over all ranks (question answering).
    pub fn predict_spans(&self, split: &str) -> Result<SpanPredictions> {
        let (model, batch_size) = (&self.model, self.cfg.args.per_device_eval_batch_size);
        self.autocast.run(|| predict_spans(model, self.split(split)?, &self.collator, batch_size, self.pg))
    }

    /// Loss and metrics on a split.
    pub fn evaluate(&self, split: &str) -> Result<Metrics> {
        match &self.evaluation {
            Evaluation::Classes(f) => Ok(self.predict(split)?.metrics(*f)),
            Evaluation::Tags(names) => self.predict_tags(split)?.metrics(self.splits.split(split)?, names),
            Evaluation::Answers(examples, opts) => {
                let examples = examples.get(split).ok_or_else(|| {
                    Error::Msg(format!("split {split:?} keeps no questions to answer (the train split's are not kept)"))
                })?;
                self.predict_spans(split)?.metrics(self.splits.split(split)?, examples, opts)
            }
        }
    }

    /// Runs training to the end; returns the summary. The loop is the course's: for each batch,
    /// the loss of `model(**batch)` over the accumulation steps goes backward; after the last
    /// micro-batch of a step, the optimizer step; then the logging, evaluation and saving that the
    /// strategies ask for.
    pub fn train(&mut self) -> Result<TrainOutput> {
        self.start_mlflow()?;
        let result = self.train_steps();
        if let Some(mlflow) = &mut self.mlflow {
            mlflow.set_outcome(match &result {
                Ok(_) => "FINISHED",
                Err(Error::Preempted { .. }) => "KILLED",
                Err(_) => "FAILED",
            });
        }
        result
    }

    /// Creates the MLflow run when `report_to` asks for one (main process, once per trainer). A
    /// server that cannot be reached is a warning: the run goes on, metrics.jsonl keeps the records.
    fn start_mlflow(&mut self) -> Result<()> {
        let args = &self.cfg.args;
        let var = |k: &str| std::env::var(k).ok();
        let uri_set = var("MLFLOW_TRACKING_URI").is_some_and(|u| !u.trim().is_empty());
        if !self.pg.is_main() || self.mlflow.is_some() || !args.report_to_mlflow(uri_set) {
            return Ok(());
        }
        let settings = MlflowSettings::from_env(var, &args.run_name())
            .map_err(|why| Error::config("report_to", why))?
            .ok_or_else(|| {
                Error::config(
                    "report_to",
                    "\"mlflow\" needs MLFLOW_TRACKING_URI, the tracking server's URL (as MLflow's client reads it), \
                     e.g. http://127.0.0.1:5000",
                )
            })?;
        match MlflowRun::start(&settings, super::resolved::parameters(&self.cfg)?) {
            Ok(run) => self.mlflow = Some(run),
            Err(why) => crate::io::eprint_line(&format!(
                "warning: {why}; training goes on without MLflow (metrics.jsonl keeps every record)"
            )),
        }
        Ok(())
    }

    fn train_steps(&mut self) -> Result<TrainOutput> {
        let args = self.cfg.args.clone();
        let pg = self.pg;
        let train = self.split("train")?;
        spans::reset();
        spans::profile_steps(args.profile_range()?);
        spans::synchronize_with(args.profile.then(|| self.device.clone()));
        let mut run = self.start()?;
        let (max_steps, num_epochs) = (run.state.max_steps, run.num_epochs);
        let schedule = args.lr_schedule(max_steps)?;
        let mut grads = Gradients::new().with_bucket_bytes(args.bucket_bytes());
        let (started, start_step) = (Instant::now(), run.state.global_step);
        run.stats.lr = schedule.lr_at(run.state.global_step);
        while run.state.global_step < max_steps && run.state.epoch < num_epochs && !run.stats.stop {
            let steps = run.sampler.epoch(run.state.epoch as u64);
            let done = run.sampler.steps_done(run.state.batches_in_epoch);
            for (index, micro_batches) in steps.iter().enumerate().skip(done) {
                spans::set_step(run.state.global_step + 1);
                let step_span = spans::enter(spans::STEP);
                for fault in &self.faults {
                    fault.fire_if_due(pg.rank(), run.state.global_step)?;
                }
                let step_tokens = self.step_tokens(&train, micro_batches)?;
                for (m, micro) in micro_batches.iter().enumerate() {
                    let batch = {
                        let _data = spans::enter(spans::DATA);
                        self.collator.collate(&train, &micro.rows)?
                    };
                    run.counts.add(&batch, self.model.device())?;
                    let last = m + 1 == micro_batches.len();
                    self.backward(&batch, micro, step_tokens, last, &mut grads, &mut run)?;
                }
                if self.faults.iter().any(|f| f.perturbs(pg.rank(), run.state.global_step)) {
                    grads.scale(self.model.params(), 1.01)?;
                }
                run.state.batches_in_epoch = run.sampler.batches_done(index + 1);
                run.stats.lr = schedule.lr_at(run.state.global_step);
                let clip = Some(args.max_grad_norm);
                run.stats.grad_norm = run.optimizer.step(&mut grads, run.stats.lr, clip, pg)?.unwrap_or(0.0);
                self.count_step(&mut run.state)?;
                run.counts.sample_device_memory(&self.device);
                drop(step_span);
                run.stats.window_steps += 1;
                run.stats.samples_per_s = run.stats.samples as f64 / started.elapsed().as_secs_f64();
                run.progress.step(run.state.global_step, run.stats.logged_loss, run.stats.lr, run.stats.samples_per_s);
                self.at_boundary(IntervalStrategy::Steps, &mut run)?;
                self.stop_if_preempted(&mut run)?;
                if run.stats.stop || run.state.global_step >= max_steps {
                    // The epoch-end evaluation and save below still run, as in transformers.
                    break;
                }
            }
            if run.stats.stop {
                break;
            }
            // A run stopped by max_steps mid-epoch stays at its fractional epoch.
            if run.state.batches_in_epoch == run.state.batches_per_epoch {
                run.state.epoch += 1;
                run.state.batches_in_epoch = 0;
            }
            self.at_boundary(IntervalStrategy::Epoch, &mut run)?;
        }
        self.finish(run, started.elapsed().as_secs_f64(), start_step)
    }

    /// This run's shape: processes x per-device batch x accumulation.
    fn shape(&self) -> BatchShape {
        let args = &self.cfg.args;
        BatchShape {
            processes: self.pg.world_size(),
            batch_size: args.per_device_train_batch_size,
            accumulation: args.gradient_accumulation_steps,
        }
    }

    /// Sets up the run: a fresh optimizer and state, or the checkpoint's when resuming, with the
    /// steps laid out as the run that began them (its shape, or this one); the checkpointer (main
    /// process); the progress display and log; and the line that says what the run will do.
    fn start(&self) -> Result<Run> {
        let (args, pg) = (&self.cfg.args, self.pg);
        if pg.is_main() {
            // A run killed while saving leaves temporary folders (hundreds of MB each) behind. The
            // other ranks never read output_dir (rank 0 resolves and sends checkpoints).
            for dir in clear_stale(&args.output_dir)? {
                crate::io::eprint_line(&format!("removed {} (left by an interrupted save)", dir.display()));
            }
        }
        let train_rows = self.splits.split("train")?.num_rows();
        let resumed = checkpoint_to_resume(args, pg)?.map(|dir| Resumed::load(pg, &dir)).transpose()?;
        let shape = self.shape();
        let layout = match &resumed {
            Some(r) => r.layout_for(shape, train_rows)?,
            None => shape,
        };
        let sampler = StepSampler::new(train_rows, args.seed, args.dataloader_drop_last, layout, shape, pg.rank());
        if sampler.layout_batches_per_epoch() == 0 {
            return Err(Error::config("per_device_train_batch_size", "leaves no batch for this process"));
        }
        let (max_steps, num_epochs) = args.steps_and_epochs(sampler.steps_per_epoch());
        let mut optimizer =
            Optimizer::new(self.model.params(), args.adamw_config(), args.zero_stage, args.bucket_bytes(), pg)?;
        let mut state = TrainState {
            global_step: 0,
            max_steps,
            epoch: 0,
            batches_in_epoch: 0,
            batches_per_epoch: sampler.layout_batches_per_epoch(),
            best_metric: None,
            best_model_checkpoint: None,
            log_history: Vec::new(),
            dropout_rng: self.model.dropout_rng_state(),
            world_size: pg.world_size(),
            seed: args.seed,
            train_batch_size: args.per_device_train_batch_size,
            train_rows,
            early_stopping_patience_counter: 0,
            layout: Some(layout),
        };
        let mut extended = None;
        if let Some(resumed) = resumed {
            if resumed.state.batches_per_epoch != state.batches_per_epoch {
                return Err(Error::config(
                    "resume_from_checkpoint",
                    format!(
                        "{} was written by a run with {} batches per epoch; this run has {}: batch size, data and \
                         dataloader_drop_last must match",
                        resumed.dir.display(),
                        resumed.state.batches_per_epoch,
                        state.batches_per_epoch
                    ),
                ));
            }
            resumed.restore(&self.model, &mut optimizer)?;
            let fresh = state;
            state = TrainState {
                world_size: fresh.world_size,
                train_batch_size: fresh.train_batch_size,
                layout: fresh.layout,
                ..resumed.state
            };
            if state.max_steps != max_steps {
                // As transformers does: the run continues to the new length, on a schedule for it.
                extended = Some(state.max_steps);
                state.max_steps = max_steps;
            }
        }
        let checkpointer =
            pg.is_main().then(|| Checkpointer::new(&args.output_dir, args.save_total_limit, &self.model_dir));
        let mut progress = Progress::new(&args.output_dir, max_steps, state.global_step, pg.is_main())?;
        if self.silent {
            progress.silence();
        }
        if args.report_to_tensorboard() {
            let dir =
                args.logging_dir.clone().unwrap_or_else(|| report::tensorboard::default_logging_dir(&args.output_dir));
            let config = serde_json::to_string_pretty(args).unwrap_or_default();
            if let Some(file) = progress.report_to_tensorboard(&dir, &config)? {
                progress.print(&format!(
                    "TensorBoard events: {} (tensorboard --logdir {})",
                    file.display(),
                    dir.display()
                ));
            }
        }
        if let Some(mlflow) = &self.mlflow {
            progress.report_to_mlflow(mlflow.logger());
            progress.print(&format!("MLflow run: {}", mlflow.url));
        }
        if let Some(before) = extended {
            progress.print(&format!(
                "resuming a run of {before} optimizer steps as one of {max_steps}: the learning-rate schedule is recomputed for {max_steps} steps"
            ));
        }
        if layout != shape {
            progress.print(&format!(
                "resuming steps laid out by {layout} on {shape}: the same rows in each step, with the same dropout masks"
            ));
        }
        progress.print(&format!(
            "processes: {} ({}); compute threads per process: {}",
            pg.world_size(),
            accel_launch::env::rank_origin(|k| std::env::var(k).ok()),
            crate::runtime::threads_origin()
        ));
        let stage = optimizer.stage();
        if pg.world_size() > 1 {
            progress.print(&format!(
                "sharding: {}; AdamW's moments on this rank: {:.1} MB",
                stage.describe(),
                optimizer.moment_bytes() as f64 / 1e6
            ));
        } else if args.zero_stage != stage {
            progress.print(&format!(
                "zero_stage = {}: one process has nothing to shard; training as stage 0",
                args.zero_stage.number()
            ));
        }
        progress.print(&format!(
            "training on {} rows: {} epochs of {} optimizer steps, {} in all; batch {} x {} processes x {} accumulation; {}; {}",
            state.train_rows,
            num_epochs,
            sampler.steps_per_epoch(),
            max_steps,
            args.per_device_train_batch_size,
            pg.world_size(),
            args.gradient_accumulation_steps,
            crate::device::name(&self.device),
            self.autocast.describe()
        ));
        let stats = RunStats { last_eval_step: usize::MAX, ..RunStats::default() };
        Ok(Run { state, optimizer, stats, progress, checkpointer, sampler, num_epochs, counts: Counts::default() })
    }

    /// Token classification's labelled tokens in a step, over every rank: each token weighs the
    /// same in the step's loss, however the step's rows are split between processes and
    /// micro-batches. `None` for the tasks whose rows weigh the same.
    fn step_tokens(&self, train: &Dataset, micro_batches: &[MicroBatch]) -> Result<Option<usize>> {
        if !matches!(self.evaluation, Evaluation::Tags(_)) {
            return Ok(None);
        }
        let local = micro_batches.iter().map(|m| labelled_tokens(train, &m.rows)).sum::<Result<usize>>()?;
        let all = match self.pg.world_size() {
            1 => local,
            _ => collectives::sum_f64(self.pg, &[local as f64])?[0] as usize,
        };
        Ok(Some(all))
    }

    /// One micro-batch: its dropout masks placed at its rows in the step's global batch (rank r's
    /// micro-batch m holds the rows from (m * world + r) * batch), the forward pass, and the
    /// backward pass of its loss scaled to its rows' weight in the step (divided by the
    /// accumulation steps on the run's own layout), or for token classification to its share of
    /// the step's `step_tokens` labelled tokens.
    fn backward(
        &self,
        batch: &Batch,
        micro: &MicroBatch,
        step_tokens: Option<usize>,
        last: bool,
        grads: &mut Gradients,
        run: &mut Run,
    ) -> Result<()> {
        let pg = self.pg;
        let tokens = batch.token_labels.as_ref().map_or(0, |l| l.count);
        let (scale, weight) = match step_tokens {
            // The all-reduce averages the ranks' gradients: a rank's share counts `world` times.
            Some(all) => ((tokens * pg.world_size()) as f64 / all.max(1) as f64, tokens),
            None => (micro.loss_scale, batch.rows.len()),
        };
        self.model.set_dropout_position(run.state.global_step as u64, micro.first_row as u64);
        let loss = self.autocast.run(|| -> Result<Tensor> {
            let loss = {
                let _forward = spans::enter(spans::FORWARD);
                self.model.forward_train(batch)?.loss()?.clone()
            };
            let _backward = spans::enter(spans::BACKWARD);
            // The step's last micro-batch may hand its gradients straight to ZeRO-2's buckets.
            let scaled = (&loss * scale)?;
            run.optimizer.backward(grads, &scaled, self.model.params(), last, pg)?;
            Ok(loss)
        })?;
        run.stats.add_loss(&loss, weight)?;
        run.stats.samples += batch.rows.len() * pg.world_size();
        Ok(())
    }

    /// At a step's end: when a signal asked any rank to stop (`preempt`), every rank learns it here
    /// (one collective), rank 0 writes a checkpoint of this step unless it just did, and training
    /// ends with [`Error::Preempted`].
    fn stop_if_preempted(&self, run: &mut Run) -> Result<()> {
        let asked = f64::from(u8::from(super::preempt::requested()));
        let anyone =
            if self.pg.world_size() > 1 { collectives::sum_f64(self.pg, &[asked])?[0] > 0.0 } else { asked > 0.0 };
        if !anyone {
            return Ok(());
        }
        let step = run.state.global_step;
        let checkpoint = self.cfg.args.output_dir.join(format!("checkpoint-{step}"));
        if run.stats.last_save_step != Some(step) {
            self.save(run)?;
        }
        run.progress.print(&format!("preempted: stopping after step {step}"));
        Err(Error::Preempted { step, checkpoint })
    }

    /// Counts an optimizer step: the process group and the launcher learn of it, and every
    /// `ddp_check_weights_steps` the ranks compare their weights.
    fn count_step(&self, state: &mut TrainState) -> Result<()> {
        state.global_step += 1;
        self.pg.set_step(state.global_step);
        if self.step_markers {
            crate::io::eprint_line(&format!("{}{}", accel_launch::STEP_MARKER, state.global_step));
        }
        let every = self.cfg.args.ddp_check_weights_steps;
        if every > 0 && state.global_step.is_multiple_of(every) {
            collectives::check_weights_in_sync(self.pg, self.model.params(), state.global_step)?;
        }
        Ok(())
    }

    /// Ends a run that took `runtime` seconds from step `start_step`: the best model loaded back if
    /// asked, the final model saved, the summary logged and the curves drawn.
    fn finish(&mut self, mut run: Run, runtime: f64, start_step: usize) -> Result<TrainOutput> {
        // The losses since the last log count towards the run's mean.
        run.stats.read_window()?;
        run.progress.finish();
        let (pg, state) = (self.pg, &run.state);
        if self.cfg.args.load_best_model_at_end {
            if let Some(best) = state.best_model_checkpoint.clone() {
                // Only rank 0 wrote it: the others receive the weights.
                let (local, _guard) = collectives::share_files(pg, &best, &["model.safetensors"])?;
                self.model.load_weights(local.join("model.safetensors"))?;
                run.progress.print(&format!("loaded the best model from {} ({:?})", best.display(), state.best_metric));
            }
        }
        if let Some(c) = &run.checkpointer {
            c.save_final(&self.model)?;
        }
        pg.barrier()?;
        let stats = &run.stats;
        let summary = TrainOutput {
            global_step: state.global_step,
            training_loss: stats.total_loss / stats.total_weight.max(1) as f64,
            train_runtime_s: runtime,
            train_samples_per_second: stats.samples as f64 / runtime.max(1e-9),
            eval_metrics: stats.last_eval.clone().filter(|_| stats.last_eval_step == state.global_step),
            log_history: state.log_history.clone(),
        };
        run.progress.log(&json!({
            "train_runtime": summary.train_runtime_s,
            "train_samples_per_second": summary.train_samples_per_second,
            "train_steps_per_second": (state.global_step - start_step) as f64 / runtime.max(1e-9),
            "train_loss": summary.training_loss,
            "epoch": state.epoch_progress(),
            "step": state.global_step,
        }))?;
        self.draw_curves(state, &run.progress);
        self.report(&run, runtime, state.global_step - start_step)?;
        Ok(summary)
    }

    /// Prints the end-of-run report and writes it to `output_dir/run_report.json` (main process),
    /// and with `profile`, every rank's timeline to `output_dir/trace/`.
    fn report(&self, run: &Run, runtime_s: f64, steps: usize) -> Result<()> {
        let inputs = run_figures::Inputs {
            model: &self.model,
            config: self.model.config(),
            num_labels: self.model.num_labels(),
            device: &self.device,
            precision: self.autocast.precision(),
            products: self.autocast.products(),
            counts: &run.counts,
            runtime_s,
            steps,
            zero_stage: run.optimizer.stage(),
        };
        let report = run_figures::build(&inputs, self.pg)?;
        let dir = &self.cfg.args.output_dir;
        if self.pg.is_main() {
            for line in report.table().lines() {
                run.progress.print(line);
            }
            let path = dir.join(report::RUN_REPORT_FILE);
            let value = serde_json::to_value(&report)
                .map_err(|e| Error::Msg(format!("serializing {}: {e}", path.display())))?;
            if let Some(mlflow) = &self.mlflow {
                let mut figures = Vec::new();
                report::run_report::numbers("run_report", &value, &mut figures);
                mlflow.logger().log_metrics(&figures, run.state.global_step as i64);
            }
            let text = serde_json::to_string_pretty(&value)
                .map_err(|e| Error::Msg(format!("serializing {}: {e}", path.display())))?;
            crate::io::write_atomically(&path, text.as_bytes())?;
        }
        if self.cfg.args.profile {
            let files = run_figures::write_traces(self.pg, dir, &spans::take_kept())?;
            if let Some(first) = files.first() {
                run.progress.print(&format!(
                    "timeline: {} file(s) in {} (open them in Perfetto or chrome://tracing)",
                    files.len(),
                    first.parent().unwrap_or(dir).display()
                ));
            }
        }
        Ok(())
    }

    /// Logs, evaluates and saves as the strategies say at a step (`Steps`) or epoch (`Epoch`) end.
    fn at_boundary(&self, trigger: IntervalStrategy, run: &mut Run) -> Result<()> {
        let args = &self.cfg.args;
        let step = run.state.global_step;
        let due = |strategy: IntervalStrategy, every: usize| {
            strategy == trigger && (trigger == IntervalStrategy::Epoch || step.is_multiple_of(every))
        };
        if due(args.logging_strategy, args.logging_steps) && run.stats.window_steps > 0 {
            self.log_training(run)?;
        }
        if due(args.eval_strategy, args.eval_steps()) {
            let metrics = {
                let _evaluation = spans::enter(spans::EVALUATION);
                self.log_evaluation(&mut run.state, &mut run.progress)?
            };
            run.stats.stop = self.early_stopping(&mut run.state, &metrics, &mut run.progress)?;
            run.stats.last_eval = Some(metrics);
            run.stats.last_eval_step = step;
        }
        if due(args.save_strategy, args.save_steps) {
            self.save(run)?;
        }
        Ok(())
    }

    /// Logs the mean loss since the last log (over all ranks), the gradient norm and learning rate.
    fn log_training(&self, run: &mut Run) -> Result<()> {
        let (stats, state) = (&mut run.stats, &mut run.state);
        let local = stats.read_window()?;
        let totals = collectives::sum_f64(self.pg, &[local, stats.window_weight as f64])?;
        let (sum, count) = (totals[0], totals[1]);
        let loss = sum / count.max(1.0);
        stats.logged_loss = Some(loss);
        let record = json!({
            "loss": loss,
            "grad_norm": stats.grad_norm,
            "learning_rate": stats.lr,
            "samples_per_second": stats.samples_per_s,
            "epoch": state.epoch_progress(),
            "step": state.global_step,
        });
        run.progress.log(&record)?;
        state.log_history.push(record);
        stats.window_weight = 0;
        stats.window_steps = 0;
        Ok(())
    }

    fn log_evaluation(&self, state: &mut TrainState, progress: &mut Progress) -> Result<Metrics> {
        let started = Instant::now();
        let mut record = serde_json::Map::new();
        let mut first = None;
        for (split, suffix) in &self.eval_splits {
            let metrics = self.evaluate(split)?;
            for (k, v) in &metrics {
                record.insert(format!("eval_{k}{suffix}"), json!(v));
            }
            first.get_or_insert(metrics);
        }
        let metrics = first.unwrap_or_default();
        record.insert("eval_runtime".into(), json!(started.elapsed().as_secs_f64()));
        record.insert("epoch".into(), json!(state.epoch_progress()));
        record.insert("step".into(), json!(state.global_step));
        let record = serde_json::Value::Object(record);
        progress.log(&record)?;
        state.log_history.push(record);
        self.draw_curves(state, progress);
        Ok(metrics)
    }

    /// Draws the curves logged so far into `output_dir/curves.png` (main process). A picture that
    /// cannot be drawn is worth a warning, not the run.
    fn draw_curves(&self, state: &TrainState, progress: &Progress) {
        if !self.pg.is_main() {
            return;
        }
        let dir = &self.cfg.args.output_dir;
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into());
        let history = report::History::from_records(&name, &state.log_history);
        if history.is_empty() {
            return;
        }
        if let Err(e) = report::write_curves(&[history], &dir.join(report::CURVES_FILE)) {
            progress.print(&format!("warning: the curves were not drawn: {e}"));
        }
    }

    /// transformers' `EarlyStoppingCallback`: counts evaluations whose metric did not beat the best
    /// so far by more than `early_stopping_threshold`; true once there are `early_stopping_patience`
    /// in a row. Runs before the save that may record this evaluation as the best.
    fn early_stopping(&self, state: &mut TrainState, metrics: &Metrics, progress: &mut Progress) -> Result<bool> {
        let args = &self.cfg.args;
        let Some(patience) = args.early_stopping_patience else { return Ok(false) };
        let (name, greater) = args.best_metric();
        let value = best_metric::metric_value(metrics, &name)?;
        let threshold = args.early_stopping_threshold;
        let improved = best_metric::improves(value, state.best_metric, greater, threshold);
        state.early_stopping_patience_counter = if improved { 0 } else { state.early_stopping_patience_counter + 1 };
        let stop = state.early_stopping_patience_counter >= patience;
        if stop {
            progress.print(&format!(
                "early stopping at step {}: {name} has not improved on {:?} by more than {threshold} in {patience} evaluations",
                state.global_step, state.best_metric
            ));
        }
        Ok(stop)
    }

    /// Records the latest evaluation as the best checkpoint if it is, and writes a checkpoint (main
    /// only; the others wait for it).
    fn save(&self, run: &mut Run) -> Result<()> {
        let _checkpoint = spans::enter(spans::CHECKPOINT);
        let (args, state) = (&self.cfg.args, &mut run.state);
        let dir = args.output_dir.join(format!("checkpoint-{}", state.global_step));
        let tracks_best = args.load_best_model_at_end || args.metric_for_best_model.is_some();
        if let Some(metrics) = run.stats.last_eval.as_ref().filter(|_| tracks_best) {
            let (name, greater) = args.best_metric();
            let value = best_metric::metric_value(metrics, &name)?;
            if best_metric::improves(value, state.best_metric, greater, 0.0) {
                state.best_metric = Some(value);
                state.best_model_checkpoint = Some(dir);
            }
        }
        state.dropout_rng = self.model.dropout_rng_state();
        // Sharded moments are gathered to rank 0 first (every rank takes part).
        let optimizer = run.optimizer.state_for_checkpoint(self.pg)?;
        if let (Some(c), Some(optimizer)) = (&run.checkpointer, &optimizer) {
            let written = c.save(&self.model, optimizer, state)?;
            run.progress.print(&format!("saved {}", written.display()));
        }
        run.stats.last_save_step = Some(state.global_step);
        self.pg.barrier()
    }
}

/// No evaluation asked for needs no evaluation data (as in transformers); asked for, by
/// `eval_strategy` or `load_best_model_at_end`, it must be there before training starts.
fn check_evaluation_data(args: &TrainingArguments, splits: &DatasetDict, validation: &str) -> Result<()> {
    if args.eval_strategy == IntervalStrategy::No || splits.get(validation).is_some() {
        return Ok(());
    }
    let names: Vec<&str> = splits.iter().map(|(name, _)| name).collect();
    let also = if args.load_best_model_at_end { ", and load_best_model_at_end = false" } else { "" };
    Err(Error::config(
        "eval_strategy",
        format!(
            "\"{}\" evaluates on the {validation:?} split, and the data has only {names:?}: give one with \
             data.validation_file, or set eval_strategy = \"no\"{also}",
            args.eval_strategy.as_str()
        ),
    ))
}
