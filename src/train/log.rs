//! Progress: a bar with loss, learning rate, samples/s and ETA on a terminal, plain log lines
//! otherwise; every logged record also goes to `output_dir/metrics.jsonl`, and to TensorBoard and
//! MLflow when `report_to` asks for them. Only the main process shows or writes anything.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use serde_json::json;

use crate::report::mlflow::MlflowLogger;
use crate::report::{SummaryWriter, METRICS_FILE};
use crate::{Error, Result};

/// Set (to anything) for a run whose main process also prints its progress as events on standard
/// output, one JSON object a line after [`EVENT_MARKER`]: what a program driving accel (the Python
/// module) reads instead of the human lines.
pub const EVENTS_VAR: &str = "ACCEL_EVENTS";
/// The prefix of an event line.
pub const EVENT_MARKER: &str = "@accel-event ";

/// Prints `event` as an event line when [`EVENTS_VAR`] asks for them.
pub fn emit_event(event: &serde_json::Value) {
    if std::env::var_os(EVENTS_VAR).is_some() {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{EVENT_MARKER}{event}").and_then(|_| out.flush());
    }
}

#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    file: Option<(PathBuf, File)>,
    tensorboard: Option<SummaryWriter>,
    mlflow: Option<MlflowLogger>,
    /// Not the main process: nothing is shown or written.
    quiet: bool,
    /// Nothing is shown, records are still written (`accel test` runs trainers in the background).
    silent: bool,
    started: Instant,
    /// The steps of the run, for the step events.
    total: usize,
}

impl Progress {
    /// Progress over `total` optimizer steps, starting at `done`. `main` is false on other ranks,
    /// which stay silent.
    pub fn new(output_dir: &Path, total: usize, done: usize, main: bool) -> Result<Self> {
        if !main {
            return Ok(Self {
                bar: None,
                file: None,
                tensorboard: None,
                mlflow: None,
                quiet: true,
                silent: true,
                started: Instant::now(),
                total,
            });
        }
        std::fs::create_dir_all(output_dir).map_err(|e| Error::io(output_dir, e))?;
        let path = output_dir.join(METRICS_FILE);
        let mut file = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        // A run killed mid-record leaves a partial last line: the next record starts on a new one.
        if !ends_with_newline(&path) {
            file.write_all(b"\n").map_err(|e| Error::io(&path, e))?;
        }
        emit_event(&json!({"event": "start", "total": total, "done": done, "output_dir": output_dir}));
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total as u64).with_position(done as u64);
            let style =
                ProgressStyle::with_template("{bar:30} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        Ok(Self {
            bar,
            file: Some((path, file)),
            tensorboard: None,
            mlflow: None,
            quiet: false,
            silent: false,
            started: Instant::now(),
            total,
        })
    }

    /// Shows nothing from now on; records are still written.
    pub fn silence(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.silent = true;
    }

    /// Sends every record from now on to a new TensorBoard event file in `log_dir` too, after the
    /// run's arguments as text (as transformers' TensorBoardCallback does). Returns the file.
    pub fn report_to_tensorboard(&mut self, log_dir: &Path, args_json: &str) -> Result<Option<PathBuf>> {
        if self.quiet {
            return Ok(None);
        }
        let mut writer = SummaryWriter::create(log_dir)?;
        writer.add_text("args", args_json, 0)?;
        let path = writer.path().to_path_buf();
        self.tensorboard = Some(writer);
        Ok(Some(path))
    }

    /// Sends every record from now on to an MLflow run too.
    pub fn report_to_mlflow(&mut self, logger: MlflowLogger) {
        if !self.quiet {
            self.mlflow = Some(logger);
        }
    }

    /// Moves the bar to `step` with the last logged loss, learning rate and throughput.
    pub fn step(&self, step: usize, loss: Option<f64>, lr: f64, samples_per_s: f64) {
        if !self.quiet {
            emit_event(&json!({
                "event": "step", "step": step, "total": self.total, "loss": loss, "learning_rate": lr,
                "samples_per_second": samples_per_s,
            }));
        }
        if let Some(bar) = &self.bar {
            bar.set_position(step as u64);
            let loss = loss.map(|l| format!("loss {l:.4} ")).unwrap_or_default();
            bar.set_message(format!("{loss}lr {lr:.3e} {samples_per_s:.1} samples/s"));
        }
    }

    /// Appends `record` to metrics.jsonl and prints it (above the bar on a terminal).
    pub fn log(&mut self, record: &serde_json::Value) -> Result<()> {
        if self.quiet {
            return Ok(());
        }
        if let Some((path, file)) = &mut self.file {
            // One write per record, so that a kill leaves at most one partial line.
            let line = format!("{record}\n");
            file.write_all(line.as_bytes()).and_then(|_| file.flush()).map_err(|e| Error::io(path.as_path(), e))?;
        }
        if let Some(tensorboard) = &mut self.tensorboard {
            tensorboard.add_record(record)?;
        }
        if let Some(mlflow) = &self.mlflow {
            mlflow.log_record(record);
        }
        emit_event(&json!({"event": "log", "record": record}));
        self.print(&record.to_string());
        Ok(())
    }

    /// Prints a line from the main process.
    pub fn print(&self, line: &str) {
        if self.quiet || self.silent {
            return;
        }
        match &self.bar {
            Some(bar) => bar.println(line),
            None => crate::io::eprint_line(&format!("[{:>7.1}s] {line}", self.started.elapsed().as_secs_f64())),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Whether `path` is empty or ends with a line break.
fn ends_with_newline(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let last = File::open(path).and_then(|mut f| {
        if f.metadata()?.len() == 0 {
            return Ok(b'\n');
        }
        f.seek(SeekFrom::End(-1))?;
        let mut byte = [0u8];
        f.read_exact(&mut byte)?;
        Ok(byte[0])
    });
    last.map_or(true, |b| b == b'\n')
}
