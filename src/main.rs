//! The `accel` binary: parses the command line, runs it, prints the error chain on failure.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;

use accel::cli::{
    BenchArgs, Cli, Command, ConfigArgs, DataCommand, DataSource, EstimateMemoryArgs, EvalArgs, LaunchArgs, PlotArgs,
    PredictArgs, ShowArgs, TestArgs, TokenizeArgs, TrainArgs, VerifyArgs,
};
use accel::config::{self, DataConfig, Task};
use accel::data::{self, Dataset, DatasetCache, PairTokenizer, Sources, TaskData, Tokenize};
use accel::distributed::{self, ProcessGroup, RankEnv, SingleProcess};
use accel::kernels::Autocast;
use accel::model::FineTunedClassifier;
use accel::train::{answering, eval, metrics, tagging, TrainConfig, Trainer};

#[global_allocator]
static GLOBAL: accel::runtime::Allocator = accel::runtime::Allocator;

fn main() -> ExitCode {
    accel::spans::start_clock();
    accel::runtime::tune_allocator();
    accel::runtime::threads_from_slurm();
    accel::runtime::tune_thread_pools();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            if err.chain().any(|e| {
                e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {err:#}");
            ExitCode::from(exit_code(&err) as u8)
        }
    }
}

/// The exit code for an error: [`accel_launch::NOT_RETRYABLE_EXIT_CODE`] when a config, the data
/// or a model is at fault (another try would fail the same way, so `accel launch --max-restarts`
/// does not make one), else 1.
fn exit_code(err: &anyhow::Error) -> i32 {
    let not_retryable = err.chain().any(|e| {
        matches!(
            e.downcast_ref::<accel::Error>(),
            Some(accel::Error::Config { .. } | accel::Error::Data { .. } | accel::Error::NotFound { .. })
        )
    });
    if not_retryable {
        accel_launch::NOT_RETRYABLE_EXIT_CODE
    } else {
        1
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Data(DataCommand::Show(args)) => show(args),
        Command::Data(DataCommand::Tokenize(args)) => tokenize(args),
        Command::Train(args) => train(args),
        Command::Eval(args) => evaluate(args),
        Command::Predict(args) => predict(args),
        Command::Launch(args) => launch(args),
        Command::Config(args) => write_config(args),
        Command::Plot(args) => plot(args),
        Command::Test(args) => self_test(args),
        Command::EstimateMemory(args) => estimate_memory(args),
        Command::Bench(args) => bench(args),
        Command::Verify(args) => verify(args),
        Command::Env(args) => {
            let stage = match &args.config {
                Some(path) => Some(TrainConfig::load_with(Some(path), &args.overrides, &[])?.args.zero_stage),
                None => None,
            };
            print!("{}", accel::sysinfo::report(stage));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `accel config`: the commented default config, on standard output or into a new file.
fn write_config(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    if args.print {
        return print_config(&args.run);
    }
    let run = &args.run;
    if run.config.is_some() || !run.overrides.is_empty() || run.print_config || !run.flag_values()?.is_empty() {
        anyhow::bail!(
            "--config, --set and train's flags describe a run to print: add --print (accel config --print ...)"
        );
    }
    let text = accel::train::template::default_config(args.dataset.as_deref(), args.model.as_deref())?;
    match &args.output {
        None => print!("{text}"),
        Some(path) => {
            let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(path).with_context(|| {
                format!("{}: not overwriting an existing file; choose another name", path.display())
            })?;
            std::io::Write::write_all(&mut file, text.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `accel estimate-memory`: the estimate by part for fp32 and bf16, and with `--measure` each
/// precision measured in a child process of its own (a fresh peak, nothing else allocating).
fn estimate_memory(args: EstimateMemoryArgs) -> anyhow::Result<ExitCode> {
    use accel::kernels::MixedPrecision;
    use accel::train::memory;
    let dir = Sources::from_env().resolve_model(&args.model, &["config.json"])?;
    anyhow::ensure!(args.batch > 0 && args.seq_len > 0, "--batch and --seq-len must be at least 1");
    anyhow::ensure!(args.num_labels > 0, "--num-labels must be at least 1");
    let config = accel::model::ModelConfig::from_file(dir.join("config.json"))?;
    anyhow::ensure!(
        args.seq_len <= config.dims().max_sequence,
        "--seq-len {} exceeds the {} positions of {}",
        args.seq_len,
        config.dims().max_sequence,
        dir.join("config.json").display()
    );
    if let Some(which) = &args.measure_one {
        let precision: MixedPrecision = which.parse().map_err(anyhow::Error::msg)?;
        let m = memory::measure(&dir, args.num_labels, args.batch, args.seq_len, precision, 3)?;
        println!("{} {}", m.before, m.peak);
        return Ok(ExitCode::SUCCESS);
    }
    anyhow::ensure!(args.nproc > 0, "--nproc must be at least 1");
    let stage = accel::distributed::ZeroStage::try_from(args.zero_stage).map_err(anyhow::Error::msg)?;
    let sharding = memory::Sharding { stage, ranks: args.nproc };
    anyhow::ensure!(
        !args.measure || args.nproc == 1,
        "--measure runs one process; measure ranks with `accel launch --nproc {} bench --zero-stage {}` (its report gives each rank's peak)",
        args.nproc,
        args.zero_stage
    );
    let mib = |b: u64| format!("{:.0} MiB", b as f64 / (1024.0 * 1024.0));
    let params = memory::parameter_count(&config, args.num_labels)?;
    let who = match args.nproc {
        1 => "one process".to_string(),
        n => format!("per rank of {n}, ZeRO stage {}", args.zero_stage),
    };
    println!(
        "Fine-tuning {} ({:.1}M parameters) with AdamW at batch {} x {} tokens, {who}:",
        args.model,
        params as f64 / 1e6,
        args.batch,
        args.seq_len
    );
    println!("| precision | parameters | gradients | AdamW state | activations | backward work | allocator | total | measured |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for precision in [MixedPrecision::No, MixedPrecision::Bf16] {
        let e = memory::estimate_per_rank(&config, args.num_labels, args.batch, args.seq_len, precision, sharding)?;
        let measured = match args.measure {
            false => "-".to_string(),
            true => match measure_in_child(&args, precision)? {
                Ok(added) => {
                    let ratio = e.total() as f64 / added as f64;
                    format!("{} (estimate/measured {ratio:.2})", mib(added))
                }
                Err(why) => format!("not measured: {why}"),
            },
        };
        let name = if precision == MixedPrecision::No { "fp32" } else { "bf16" };
        let parts = [e.parameters, e.gradients, e.optimizer, e.activations, e.backward_work, e.allocator, e.total()];
        let parts: Vec<String> = parts.into_iter().map(mib).collect();
        println!("| {name} | {} | {measured} |", parts.join(" | "));
    }
    println!("Activations grow with batch x tokens, and with tokens squared in attention; bf16 adds bf16 copies of");
    println!("the inputs and weights the products read. The process adds its runtime, tokenizer and data on top.");
    if args.nproc > 1 {
        println!(
            "Gradients: stages 0 and 1 backward's and the all-reduce's averaged buckets, whole; stage 2 this rank's"
        );
        println!("slices and the buckets filling during backward. AdamW state: whole at stage 0, this rank's slices at 1 and 2.");
    }
    if args.measure {
        println!("Measured: the peak resident memory that 3 AdamW steps on random tokens add to a fresh process.");
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `--measure-one` in a child process; returns the bytes added at the peak, or why not.
fn measure_in_child(
    args: &EstimateMemoryArgs,
    precision: accel::kernels::MixedPrecision,
) -> anyhow::Result<Result<u64, String>> {
    use accel::train::memory;
    let exe = std::env::current_exe().context("locating the accel executable")?;
    let out = std::process::Command::new(exe)
        .args(["estimate-memory", "--model", &args.model, "--batch", &args.batch.to_string()])
        .args(["--seq-len", &args.seq_len.to_string(), "--num-labels", &args.num_labels.to_string()])
        .args(["--measure-one", precision.as_str()])
        .output()
        .context("running the measurement")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Ok(Err(err.trim().trim_start_matches("error: ").to_string()));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let numbers: Vec<u64> = text.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    match numbers.as_slice() {
        &[before, peak] => Ok(Ok(memory::Measured { before, peak }.added())),
        _ => Ok(Err(format!("unexpected output {text:?}"))),
    }
}

/// `accel bench`: one rank or every rank of a launched job measures; rank 0 prints the JSON line.
fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    use accel::train::bench::{self, BenchSpec};
    let (size, config) = match bench::named_config(&args.model) {
        Some(config) => (args.model.clone(), config),
        None => {
            let dir = Sources::from_env().resolve_model(&args.model, &["config.json"])?;
            (args.model.clone(), accel::model::ModelConfig::from_file(dir.join("config.json"))?)
        }
    };
    let env = RankEnv::from_env()?;
    let device = args.device.resolve(env.local_rank)?;
    let pg = distributed::init(&env, accel::distributed::DistOptions::default(), &device)?;
    if args.batch == 0 || args.seq_len == 0 {
        anyhow::bail!("--batch and --seq-len must be at least 1");
    }
    let wanted = args.warmup + args.steps;
    let batches = match args.data.as_str() {
        "random" => vec![bench::random_batch(&config, 2, args.batch, args.seq_len, &device)?],
        "mrpc" => {
            let sources = Sources::from_env();
            let task =
                data::load_task(&DataConfig { dataset: Some("glue/mrpc".into()), ..Default::default() }, &sources)?;
            let tokenizer = PairTokenizer::from_dir(&sources.resolve_model(&args.tokenizer, &["tokenizer.json"])?)?;
            let (splits, _) = task.tokenize(&tokenizer, Some(&DatasetCache::from_env()))?;
            let train = splits.split("train")?;
            let collator = data::DataCollatorWithPadding::new(&tokenizer)?.on(device.clone());
            // Whole batches in file order, rank r taking every world-th one.
            let starts = (0..(train.num_rows() + 1).saturating_sub(args.batch)).step_by(args.batch);
            let mine = starts.skip(pg.rank()).step_by(pg.world_size()).take(wanted);
            mine.map(|s| collator.collate(train, &(s..s + args.batch).collect::<Vec<_>>()))
                .collect::<accel::Result<Vec<_>>>()?
        }
        other => anyhow::bail!("--data {other:?}: expected \"mrpc\" or \"random\""),
    };
    let spec = BenchSpec {
        size,
        config,
        warmup: args.warmup,
        steps: args.steps,
        precision: args.mixed_precision,
        peak_tflops: args.peak_tflops,
        zero_stage: accel::distributed::ZeroStage::try_from(args.zero_stage).map_err(anyhow::Error::msg)?,
    };
    let (result, report) = bench::run(&spec, &batches, &device, pg.as_ref())?;
    if pg.is_main() {
        eprint!("{}", report.table());
        println!("{}", serde_json::to_string(&result)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// `accel test`: each check on a line as it ends, then the totals; fails when a check failed.
fn self_test(args: TestArgs) -> anyhow::Result<ExitCode> {
    use accel::selftest::{self, Outcome};
    let where_ = args.dir.as_ref().map(|d| d.display().to_string()).unwrap_or_else(|| "a temporary folder".into());
    println!("accel test: a tiny BERT (2 layers, hidden 16) on a generated sentence-pair task, in {where_}");
    let options = selftest::Options { nproc: args.nproc, dir: args.dir.clone() };
    let checks = selftest::run(&options, |check| {
        let (mark, text) = match &check.outcome {
            Outcome::Passed(t) => ("ok  ", t),
            Outcome::Skipped(t) => ("skip", t),
            Outcome::Failed(t) => ("FAIL", t),
        };
        println!("  {mark}  {}: {text}", check.name);
    })?;
    let count = |f: fn(&Outcome) -> bool| checks.iter().filter(|c| f(&c.outcome)).count();
    let failed = count(|o| matches!(o, Outcome::Failed(_)));
    println!(
        "accel test: {} passed, {} skipped, {failed} failed",
        count(|o| matches!(o, Outcome::Passed(_))),
        count(|o| matches!(o, Outcome::Skipped(_)))
    );
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `accel plot`: the curves of one or several runs in one image.
fn plot(args: PlotArgs) -> anyhow::Result<ExitCode> {
    if args.timeline {
        let [run] = args.runs.as_slice() else { anyhow::bail!("--timeline draws one run: give one RUN_DIR") };
        let output = args.output.clone().unwrap_or_else(|| run.join("timeline.png"));
        let step = accel::report::timeline::write_timeline(&run.join("trace"), args.step, &output)?;
        eprintln!("wrote {} (step {step})", output.display());
        return Ok(ExitCode::SUCCESS);
    }
    let mut histories = Vec::new();
    for dir in &args.runs {
        let history = accel::report::History::read(dir)?;
        for line in &history.skipped_lines {
            eprintln!(
                "warning: {}:{line}: not a JSON record, left out",
                dir.join(accel::report::METRICS_FILE).display()
            );
        }
        anyhow::ensure!(!history.is_empty(), "{}: the run has logged no values yet", dir.display());
        histories.push(history);
    }
    // Runs in folders of the same name are told apart by the paths as given.
    let names: Vec<String> = histories.iter().map(|h| h.name.clone()).collect();
    for (i, history) in histories.iter_mut().enumerate() {
        if names.iter().filter(|n| **n == names[i]).count() > 1 {
            history.name = args.runs[i].display().to_string();
        }
    }
    let output = match (&args.output, args.runs.as_slice()) {
        (Some(path), _) => path.clone(),
        (None, [one]) => one.join(accel::report::CURVES_FILE),
        (None, _) => PathBuf::from(accel::report::CURVES_FILE),
    };
    accel::report::write_curves(&histories, &output)?;
    eprintln!("wrote {}", output.display());
    Ok(ExitCode::SUCCESS)
}

/// `accel launch`: plans the mpirun command line from the flags over the config's `[launch]`,
/// then prints it (`--dry-run`) or runs it to the end and reports a failed rank; with
/// `--max-restarts N`, a failed `train` job is started again from its newest checkpoint.
fn launch(args: LaunchArgs) -> anyhow::Result<ExitCode> {
    let file = match args.command_config() {
        Some(path) => config::section(&config::read_toml(&path)?, "launch", &path.display().to_string())?,
        None => accel_launch::LaunchConfig::default(),
    };
    let mut input = accel_launch::PlanInput {
        config: args.flags().over(file),
        program: std::env::current_exe().context("locating the accel executable")?,
        args: args.command.clone(),
        // SAFETY: geteuid has no preconditions.
        as_root: unsafe { libc::geteuid() } == 0,
        env_names: Vec::new(),
    };
    // Inside a Slurm allocation, its tasks are the ranks unless told otherwise.
    if input.config.nproc.is_none() && input.config.hostfile.is_none() {
        if let Some(n) = std::env::var("SLURM_NTASKS").ok().and_then(|v| v.trim().parse::<usize>().ok()) {
            eprintln!("accel launch: {n} ranks, from SLURM_NTASKS (this allocation's tasks)");
            input.config.nproc = Some(n);
        }
    }
    // mpirun's own refusal is 25 lines, twice; a job on this machine alone is checked here.
    let in_allocation = std::env::var_os("SLURM_JOB_ID").is_some();
    if input.config.hostfile.is_none() && input.config.oversubscribe != Some(true) && !in_allocation {
        if let Some(n) = input.config.nproc {
            let threads = input.config.threads_per_rank.unwrap_or(1);
            if let Some(why) = accel_launch::cores::too_few_cores(n, threads, accel_launch::cores::cores_available()) {
                anyhow::bail!("{why}");
            }
        }
    }
    // Set before the plan, so that mpirun passes it on to every rank.
    std::env::set_var(accel_launch::RESTART_COUNT_VAR, "0");
    set_launch_time();
    input.env_names = std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()).collect();
    let plan = accel_launch::plan(&input)?;
    let train = check_launch_devices(&args.command, &plan, input.config.hostfile.is_some())?;
    if args.dry_run {
        println!("{}", plan.shell_line());
        return Ok(ExitCode::SUCCESS);
    }
    let max_restarts = input.config.max_restarts.unwrap_or(0);
    let mut shrink = Shrink::new(&input.config, &plan, train.as_ref())?;
    let output_dir = train.map(|cfg| cfg.args.output_dir);
    let (mut plan, mut previous, mut restarts, mut resumed_from) = (plan, None, 0, None);
    let mut command = args.command.clone();
    loop {
        let outcome = accel_launch::supervise(&plan)?;
        match (&outcome.report, outcome.first_step_s) {
            (Some(report), _) => eprintln!("accel launch: {report}"),
            (None, Some(first)) => {
                eprintln!(
                    "accel launch: done in {:.1} s; the first optimizer step ended {first:.2} s after launch",
                    outcome.total_s
                )
            }
            (None, None) => {}
        }
        if outcome.code == accel_launch::PREEMPTED_EXIT_CODE {
            let after = outcome.last_step.map(|s| format!(" after step {s}")).unwrap_or_default();
            eprintln!(
                "accel launch: preempted: the ranks stopped{after} with a checkpoint of it (exit code {}); \
                 resume_from_checkpoint = \"latest\" goes on from there",
                outcome.code
            );
        }
        let code = ExitCode::from(outcome.code.clamp(0, 255) as u8);
        let Some(output_dir) = output_dir.as_deref().filter(|_| outcome.code != 0 && max_restarts > 0) else {
            return Ok(code);
        };
        let failed = accel_launch::FailedTry {
            code: outcome.code,
            interrupted: outcome.interrupted,
            last_step: outcome.last_step,
            resumed_from,
        };
        if let accel_launch::Verdict::Stop(why) =
            accel_launch::restart::verdict(&failed, previous.as_ref(), restarts, max_restarts)
        {
            eprintln!("accel launch: not restarting: {why}");
            return Ok(code);
        }
        if let Some(shrink) = shrink.as_mut() {
            match shrink.without_failed_host(outcome.failed_rank, &mut input.config, &command)? {
                Ok(Some(shrunk)) => command = shrunk,
                Ok(None) => {}
                Err(why) => {
                    eprintln!("accel launch: not restarting: {why}");
                    return Ok(code);
                }
            }
        }
        restarts += 1;
        let latest = accel::train::checkpoint::latest_checkpoint(output_dir)?;
        let from = match &latest {
            Some(dir) => Some((dir.clone(), accel::train::state::TrainState::load(dir)?.global_step)),
            None => None,
        };
        let reached = outcome.last_step.unwrap_or(0);
        let (whence, lost) = match &from {
            Some((dir, step)) => (format!("from {} (step {step})", dir.display()), reached.saturating_sub(*step)),
            None => ("from the start (no checkpoint yet)".to_string(), reached),
        };
        let lost = if lost == 1 { "1 step".to_string() } else { format!("{lost} steps") };
        eprintln!("accel launch: restart {restarts} of {max_restarts}: resuming {whence}; {lost} lost");
        resumed_from = from.as_ref().map(|(_, step)| *step);
        input.args = match &from {
            Some((dir, _)) => accel_launch::restart::with_resume(&command, dir),
            None => command.clone(),
        };
        std::env::set_var(accel_launch::RESTART_COUNT_VAR, restarts.to_string());
        set_launch_time();
        plan = accel_launch::plan(&input)?;
        previous = Some(failed);
    }
}

/// `accel verify`: the config three ways, compared; exit 1 above the tolerance.
fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.nproc >= 2, "--nproc must be at least 2: verify compares one process with several");
    anyhow::ensure!(args.steps >= 1, "--steps must be at least 1");
    let cfg = TrainConfig::load_with(Some(&args.config), &args.overrides, &[])?;
    let tmp;
    let work = match &args.output_dir {
        Some(dir) => dir.clone(),
        None => {
            tmp = tempfile::Builder::new().prefix("accel-verify-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let request = accel::verify::Request {
        config: &args.config,
        overrides: &args.overrides,
        cfg: &cfg,
        nproc: args.nproc,
        steps: args.steps,
        tolerance: args.tolerance,
        work: &work,
    };
    Ok(if accel::verify::run(&request)? { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Tells the ranks when they were launched (mpirun passes `ACCEL_*` variables on), so that their
/// run report counts the time to the first step from the launch.
fn set_launch_time() {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    std::env::set_var(accel::train::run_figures::LAUNCHED_AT_VAR, format!("{now:.6}"));
}

/// `--min-nproc`: the hosts a restarted job may still use, and its shape on them.
struct Shrink {
    min: usize,
    hosts: accel_launch::shrink::Hostfile,
    shape: accel_launch::shrink::Shape,
    /// The hostfiles written for restarts, kept until the launcher ends.
    written: Vec<tempfile::NamedTempFile>,
}

impl Shrink {
    /// For a `train` job over a hostfile with `min_nproc` set; None otherwise (a job on one host
    /// restarts on the ranks it had: the host is there).
    fn new(
        cfg: &accel_launch::LaunchConfig,
        plan: &accel_launch::Plan,
        train: Option<&TrainConfig>,
    ) -> anyhow::Result<Option<Self>> {
        let Some(min) = cfg.min_nproc else { return Ok(None) };
        let Some(path) = cfg.hostfile.as_deref() else {
            eprintln!("accel launch: --min-nproc leaves out failed hosts of a hostfile; without one, restarts use the same ranks");
            return Ok(None);
        };
        let Some(train) = train else { return Ok(None) };
        let hosts = accel_launch::shrink::Hostfile::read(path)?;
        let nproc = if plan.nproc > 0 { plan.nproc } else { hosts.slots() };
        anyhow::ensure!(
            (1..=nproc).contains(&min),
            "--min-nproc (launch.min_nproc) must be from 1 to the job's {nproc} ranks, not {min}"
        );
        let shape = accel_launch::shrink::Shape {
            nproc,
            batch: train.args.per_device_train_batch_size,
            accumulation: train.args.gradient_accumulation_steps,
        };
        Ok(Some(Self { min, hosts, shape, written: Vec::new() }))
    }

    /// Before a restart: leaves out the host where `failed_rank` ran, pointing `cfg` at a hostfile
    /// without it, and returns `command` with the per-device batch and accumulation that keep the
    /// global batch. Ok(None): the failed rank's host is not known, and the job restarts as it was;
    /// Err(why): too few ranks would remain.
    fn without_failed_host(
        &mut self,
        failed_rank: Option<usize>,
        cfg: &mut accel_launch::LaunchConfig,
        command: &[String],
    ) -> anyhow::Result<Result<Option<Vec<String>>, String>> {
        let Some((rank, host)) = failed_rank.and_then(|r| Some((r, self.hosts.host_of_rank(r)?.to_string()))) else {
            return Ok(Ok(None));
        };
        let rest = self.hosts.without(&host);
        let global = self.shape.nproc * self.shape.batch * self.shape.accumulation;
        let Some(shape) = accel_launch::shrink::smaller_shape(self.shape, rest.slots(), self.min) else {
            return Ok(Err(format!(
                "without {host}, where rank {rank} failed, {} slots are left, and no number of ranks from \
                 --min-nproc {} up to that divides the global batch of {global} rows",
                rest.slots(),
                self.min
            )));
        };
        let mut file = tempfile::Builder::new().prefix("accel-hosts-").tempfile()?;
        std::io::Write::write_all(&mut file, rest.text().as_bytes())?;
        cfg.hostfile = Some(file.path().to_path_buf());
        cfg.nproc = Some(shape.nproc);
        self.written.push(file);
        let ranks = if shape.nproc == 1 { "1 rank".to_string() } else { format!("{} ranks", shape.nproc) };
        let keep = if shape.nproc == 1 { "keeps" } else { "keep" };
        eprintln!(
            "accel launch: leaving out {host}, where rank {rank} failed: {ranks} of batch {} x accumulation {} on the \
             other hosts {keep} the global batch of {global} rows",
            shape.batch, shape.accumulation
        );
        let command =
            accel_launch::restart::with_flag(command, "--per-device-train-batch-size", &shape.batch.to_string());
        let command = accel_launch::restart::with_flag(
            &command,
            "--gradient-accumulation-steps",
            &shape.accumulation.to_string(),
        );
        (self.hosts, self.shape) = (rest, shape);
        Ok(Ok(Some(command)))
    }
}

/// Before any rank of a `train` command starts: its config must load, and the ranks this host
/// runs must each find their device (a GPU apiece under `device = "cuda"`). Hosts of a hostfile
/// are checked by their own ranks when they start. Returns the config of a `train` command.
fn check_launch_devices(
    command: &[String],
    plan: &accel_launch::Plan,
    hostfile: bool,
) -> anyhow::Result<Option<TrainConfig>> {
    let Ok(Cli { command: Command::Train(train), .. }) =
        Cli::try_parse_from(std::iter::once("accel").chain(command.iter().map(String::as_str)))
    else {
        return Ok(None);
    };
    let cfg = train_config(&train)?;
    if !hostfile {
        cfg.args.device.check_host(plan.nproc)?;
    }
    Ok(Some(cfg))
}

/// The run config of `accel train`: the file, then `--set`, then the flags.
fn train_config(flags: &TrainArgs) -> accel::Result<TrainConfig> {
    TrainConfig::load_with(flags.config.as_deref(), &flags.overrides, &flags.flag_values()?)
}

/// `accel config --print` and `accel train --print-config`: the resolved config with each value's
/// source, on standard output.
fn print_config(flags: &TrainArgs) -> anyhow::Result<ExitCode> {
    let var = |name: &str| std::env::var(name).ok();
    let around = accel::train::resolved::Surroundings { var: &var };
    let (_, entries) =
        accel::train::resolved::resolve(flags.config.as_deref(), &flags.overrides, &flags.flag_values()?, &around)?;
    print!("{}", accel::train::resolved::render(&entries));
    Ok(ExitCode::SUCCESS)
}

/// `accel train`, as a single process or as one rank of a launched job. An error on one rank of
/// many ends the whole job, so that no other rank waits for it in a collective, with the error's
/// exit code.
fn train(args: TrainArgs) -> anyhow::Result<ExitCode> {
    if args.print_config {
        return print_config(&args);
    }
    let cfg = train_config(&args)?;
    let env = RankEnv::from_env()?;
    // The device first: under NCCL the process group is built on it (the trainer gets the same one).
    let device = cfg.args.device.resolve(env.local_rank)?;
    let pg = distributed::init(&env, cfg.args.dist_options(), &device)?;
    match train_on(cfg, pg.as_ref()) {
        Ok(code) => Ok(code),
        // Every rank stops after the same step (they agreed on it): no abort, the documented code.
        Err(err) if matches!(err.downcast_ref::<accel::Error>(), Some(accel::Error::Preempted { .. })) => {
            if pg.is_main() {
                accel::io::eprint_line(&format!("{err}"));
            }
            Ok(ExitCode::from(accel_launch::PREEMPTED_EXIT_CODE as u8))
        }
        Err(err) if pg.world_size() > 1 => {
            accel::io::eprint_line(&accel_launch::RankFailure::Error(format!("{err:#}")).line(pg.rank()));
            pg.abort_job(exit_code(&err));
            Err(err)
        }
        Err(err) => Err(err),
    }
}

fn train_on(cfg: TrainConfig, pg: &dyn ProcessGroup) -> anyhow::Result<ExitCode> {
    let mut trainer = Trainer::new(cfg.clone(), pg)?;
    let report = trainer.load_report();
    if pg.is_main() && !report.missing.is_empty() {
        eprintln!("newly initialized (train them before use): {}", report.missing.join(", "));
    }
    if pg.is_main() && !report.mismatched.is_empty() {
        eprintln!("initialized afresh, their shapes differ from the checkpoint's: {}", report.mismatched.join("; "));
    }
    if pg.is_main() && !report.unused.is_empty() {
        eprintln!("unused weights in {}: {}", report.source, report.unused.join(", "));
    }
    let (out, metrics) = trainer.train_and_evaluate()?;
    if pg.is_main() {
        println!(
            "trained {} steps in {:.1} s ({:.1} samples/s), mean training loss {:.4}",
            out.global_step, out.train_runtime_s, out.train_samples_per_second, out.training_loss
        );
    }
    if !pg.is_main() {
        return Ok(ExitCode::SUCCESS);
    }
    let mut results = serde_json::json!({
        "global_step": out.global_step,
        "train_loss": out.training_loss,
        "train_runtime": out.train_runtime_s,
        "train_samples_per_second": out.train_samples_per_second,
    });
    match &metrics {
        Some(metrics) => {
            let shown: Vec<String> = metrics.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
            println!("validation: {}", shown.join(", "));
            for (k, v) in metrics {
                results[format!("eval_{k}")] = serde_json::json!(v);
            }
        }
        None => println!("no validation split: not evaluated"),
    }
    println!("model saved to {}", cfg.args.output_dir.display());
    accel::train::log::emit_event(&serde_json::json!({"event": "results", "metrics": results}));
    Ok(ExitCode::SUCCESS)
}

fn evaluate(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let device = args.device.resolve(0)?;
    let finetuned = FineTunedClassifier::load(&args.model, &Sources::from_env(), &device)?;
    match finetuned.model.task() {
        Task::TokenClassification => return evaluate_tags(&args, finetuned, &device),
        Task::QuestionAnswering => return evaluate_answers(&args, finetuned, &device),
        Task::SequenceClassification => {}
    }
    let FineTunedClassifier { model, tokenizer } = finetuned;
    let task = load(&args.source)?;
    if task.num_labels() != model.num_labels() {
        let describe = |n: usize| if n == 1 { "1 output (regression)".to_string() } else { format!("{n} labels") };
        anyhow::bail!(
            "{} has {}, the model {} has {}",
            task.name,
            describe(task.num_labels()),
            args.model,
            describe(model.num_labels())
        );
    }
    let split_name = args.split.clone().unwrap_or_else(|| task.validation_split().to_string());
    let (splits, _) = task.tokenize(&tokenizer, Some(&DatasetCache::from_env()))?;
    let split = Arc::new(splits.split(&split_name)?.clone());
    let collator = data::DataCollatorWithPadding::new(&tokenizer)?.on(device.clone());
    let started = Instant::now();
    let autocast = inference_autocast(args.mixed_precision, &device, &model)?;
    let preds = autocast.run(|| eval::predict(&model, split.clone(), &collator, args.batch_size, &SingleProcess))?;
    let metrics = preds.metrics(metrics::for_task_kind(&task.name, task.is_regression()));
    if metrics.is_empty() {
        anyhow::bail!("split {split_name:?} of {} has no labels to evaluate against", task.name);
    }
    let secs = started.elapsed().as_secs_f64();
    if args.json {
        return print_eval_json(&split_name, split.num_rows(), &metrics, secs);
    }
    let shown: Vec<String> = metrics.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
    println!("{} {split_name} ({} rows): {}", task.name, split.num_rows(), shown.join(", "));
    println!("took {secs:.2} s ({:.1} samples/s)", split.num_rows() as f64 / secs);
    Ok(ExitCode::SUCCESS)
}

fn predict(args: PredictArgs) -> anyhow::Result<ExitCode> {
    let device = args.device.resolve(0)?;
    let finetuned = FineTunedClassifier::load(&args.model, &Sources::from_env(), &device)?;
    match finetuned.model.task() {
        Task::TokenClassification => return predict_tags(&args, finetuned, &device),
        Task::QuestionAnswering => return predict_answers(&args, finetuned, &device),
        Task::SequenceClassification => {}
    }
    if args.conll {
        anyhow::bail!("--conll writes a token classifier's tags; {} is a {}", args.model, finetuned.model.class_name());
    }
    let (dataset, text_columns) = match (&args.input, &args.text) {
        (Some(path), _) => data::files::read_texts(path, &args.text_columns)?,
        (None, Some(text)) => {
            let mut columns = vec![("text".to_string(), vec![text.clone()])];
            if let Some(pair) = &args.text_pair {
                columns.push(("text_pair".to_string(), vec![pair.clone()]));
            }
            let names = columns.iter().map(|c| c.0.clone()).collect();
            (Dataset::from_texts(columns)?, names)
        }
        (None, None) => anyhow::bail!("give --input FILE or --text (and --text-pair)"),
    };
    let tokenizer = &finetuned.tokenizer;
    let (encoded, _) = dataset.map(&Tokenize { tokenizer, text_columns }, 10_000, None)?;
    let collator = data::DataCollatorWithPadding::new(tokenizer)?.on(device.clone());
    let autocast = inference_autocast(args.mixed_precision, &device, &finetuned.model)?;
    let encoded = Arc::new(encoded);
    let preds =
        autocast.run(|| eval::predict(&finetuned.model, encoded, &collator, args.batch_size, &SingleProcess))?;
    let names = finetuned.label_names();
    // Written, not printed: a reader that stops early (`| head`) ends the output quietly.
    let mut out = std::io::stdout().lock();
    for (row, (outputs, label)) in preds.rows.iter().zip(preds.outputs.iter().zip(preds.predicted())) {
        if preds.regression {
            writeln!(out, "{}", serde_json::json!({"row": row, "score": outputs[0]}))?;
            continue;
        }
        let probabilities: serde_json::Map<String, serde_json::Value> =
            names.iter().zip(outputs).map(|(n, p)| (n.clone(), serde_json::json!(p))).collect();
        writeln!(out, "{}", serde_json::json!({"row": row, "label": names[label], "probabilities": probabilities}))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The `[data]` config a data command describes: file, then the dataset argument, then `--set`.
fn data_config(source: &DataSource) -> anyhow::Result<DataConfig> {
    let (mut table, origin) = match &source.config {
        Some(path) => (config::read_toml(path)?, path.display().to_string()),
        None => (toml::Table::new(), "command line".to_string()),
    };
    if let Some(name) = &source.dataset {
        config::apply_override(&mut table, &format!("data.dataset={}", toml::Value::String(name.clone())))?;
    }
    for assignment in &source.overrides {
        config::apply_override(&mut table, assignment)?;
    }
    let mut cfg: DataConfig = config::section(&table, "data", &origin)?;
    if source.data_dir.is_some() {
        cfg.data_dir = source.data_dir.clone();
    }
    Ok(cfg)
}

fn load(source: &DataSource) -> anyhow::Result<TaskData> {
    let cfg = data_config(source)?;
    Ok(data::load_task(&cfg, &Sources::from_env())?)
}

fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let task = load(&args.source)?;
    println!("{}", task.splits);
    let split = task.splits.split(&args.split)?;
    println!("\nfeatures: {}", split.format_features());
    println!("\n{}[{}] = {}", args.split, args.index, split.format_row(args.index)?);
    Ok(ExitCode::SUCCESS)
}

fn tokenize(args: TokenizeArgs) -> anyhow::Result<ExitCode> {
    let cfg = data_config(&args.source)?;
    let sources = Sources::from_env();
    let started = Instant::now();
    let task = data::load_task(&cfg, &sources)?;
    let model_dir = sources.resolve_model(&args.model, &["tokenizer.json"])?;
    let mut tokenizer = PairTokenizer::from_dir(&model_dir)
        .with_context(|| format!("loading the tokenizer of {}", model_dir.display()))?;
    if let Some(n) = cfg.max_length {
        tokenizer = tokenizer.with_max_length(n);
    }
    let cache = (!args.no_cache).then(DatasetCache::from_env);
    let (splits, statuses) = task.tokenize(&tokenizer, cache.as_ref())?;
    let elapsed = started.elapsed();
    println!("{} tokenized with {} (max_length {})", task.name, model_dir.display(), tokenizer.max_length());
    println!("{:<12} {:>7} {:>5} {:>7} {:>5}  cache", "split", "rows", "max", "mean", "p95");
    for (name, ds) in splits.iter() {
        let lists = ds.int_lists("input_ids")?;
        let mut lengths: Vec<usize> = (0..lists.len()).map(|i| lists.row(i).len()).collect();
        lengths.sort_unstable();
        let mean = lengths.iter().sum::<usize>() as f64 / lengths.len().max(1) as f64;
        let p95 = lengths.get(((lengths.len() as f64 * 0.95).ceil() as usize).saturating_sub(1)).copied().unwrap_or(0);
        let status = match statuses.iter().find(|(s, _)| s == name).map(|(_, st)| st) {
            Some(data::CacheStatus::Hit(p)) => format!("hit  {}", p.display()),
            Some(data::CacheStatus::Miss(p)) => format!("miss {} (written)", p.display()),
            _ => "off".to_string(),
        };
        println!(
            "{:<12} {:>7} {:>5} {:>7.1} {:>5}  {}",
            name,
            ds.num_rows(),
            lengths.last().copied().unwrap_or(0),
            mean,
            p95,
            status
        );
    }
    println!("took {:.3} s", elapsed.as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

/// `accel eval` of a token classifier: seqeval's scores, overall and per entity type, on a split of
/// the tagged files that `--config` / `--set data.*` name, with the model's tags.
/// `accel eval --json`: the split, its rows (sentences, questions), the metrics and the time, as
/// one JSON object.
fn print_eval_json(split: &str, rows: usize, metrics: &metrics::Metrics, seconds: f64) -> anyhow::Result<ExitCode> {
    let line = serde_json::json!({"split": split, "rows": rows, "metrics": metrics, "seconds": seconds});
    writeln!(std::io::stdout(), "{line}")?;
    Ok(ExitCode::SUCCESS)
}

fn evaluate_tags(
    args: &EvalArgs,
    finetuned: FineTunedClassifier,
    device: &candle_core::Device,
) -> anyhow::Result<ExitCode> {
    let names = finetuned.label_names();
    let cfg = data_config(&args.source)?;
    let tagged = data::load_tagged(&cfg, Some(&names))?;
    if tagged.label_names != names {
        anyhow::bail!("the data's tags {:?} are not the model's {:?} ({})", tagged.label_names, names, args.model);
    }
    let split_name = args.split.clone().unwrap_or_else(|| "validation".to_string());
    let f =
        data::TokenizeWords { tokenizer: &finetuned.tokenizer, label_names: names.clone(), label_all_tokens: false };
    let (splits, _) = tagged.splits.map(&f, 10_000, Some(&DatasetCache::from_env()))?;
    let split = Arc::new(splits.split(&split_name)?.clone());
    let started = Instant::now();
    let tags = tag_split(&finetuned, split.clone(), args.batch_size, args.mixed_precision, device)?;
    if tags.labelled == 0 {
        anyhow::bail!("split {split_name:?} has no tags to evaluate against");
    }
    let report = tags.report(&split, &names)?;
    let metrics = tags.metrics_of(&report);
    let secs = started.elapsed().as_secs_f64();
    if args.json {
        return print_eval_json(&split_name, split.num_rows(), &metrics, secs);
    }
    let overall: Vec<String> =
        ["precision", "recall", "f1", "accuracy", "loss"].iter().map(|k| format!("{k} {:.4}", metrics[*k])).collect();
    println!("{split_name} ({} sentences): {}", split.num_rows(), overall.join(", "));
    for (kind, s) in &report.per_type {
        println!(
            "  {kind:<8} precision {:.4}, recall {:.4}, f1 {:.4}, entities {}",
            s.precision, s.recall, s.f1, s.number
        );
    }
    println!("took {secs:.2} s ({:.1} sentences/s)", split.num_rows() as f64 / secs);
    Ok(ExitCode::SUCCESS)
}

/// A token classifier's tags for a tokenized split of sentences, in one process.
fn tag_split(
    finetuned: &FineTunedClassifier,
    split: Arc<Dataset>,
    batch_size: usize,
    precision: accel::kernels::MixedPrecision,
    device: &candle_core::Device,
) -> anyhow::Result<tagging::TagPredictions> {
    let collator = data::DataCollatorWithPadding::new(&finetuned.tokenizer)?.on(device.clone());
    let autocast = inference_autocast(precision, device, &finetuned.model)?;
    Ok(autocast.run(|| tagging::predict_tags(&finetuned.model, split, &collator, batch_size, &SingleProcess))?)
}

/// `accel predict` of a token classifier: each sentence's words with their tags (a word's first
/// piece's prediction), as JSON lines or CoNLL. Words that truncation left out are tagged `O`, with
/// a warning.
fn predict_tags(
    args: &PredictArgs,
    finetuned: FineTunedClassifier,
    device: &candle_core::Device,
) -> anyhow::Result<ExitCode> {
    let sentences = match (&args.input, &args.text) {
        (Some(path), _) => data::read_words(path)?,
        (None, Some(text)) => data::words_dataset(vec![text.split_whitespace().map(str::to_string).collect()])?,
        (None, None) => anyhow::bail!("give --input FILE or --text \"the words of a sentence\""),
    };
    let names = finetuned.label_names();
    let f =
        data::TokenizeWords { tokenizer: &finetuned.tokenizer, label_names: names.clone(), label_all_tokens: false };
    let (encoded, _) = sentences.map(&f, 10_000, None)?;
    let encoded = Arc::new(encoded);
    let tags = tag_split(&finetuned, encoded.clone(), args.batch_size, args.mixed_precision, device)?;
    let words = encoded.str_lists("tokens")?;
    let outside = names.iter().position(|n| n == "O");
    let mut out = std::io::stdout().lock();
    for (row, per_word) in tags.rows.iter().zip(tags.word_tags(&encoded)?) {
        let cut = per_word.iter().filter(|t| t.is_none()).count();
        if cut > 0 {
            eprintln!(
                "sentence {row}: its last {cut} words are past the model's {} tokens; they are tagged O",
                finetuned.tokenizer.max_length()
            );
        }
        let tag = |t: Option<u32>| match t.or(outside.map(|o| o as u32)) {
            Some(t) => names[t as usize].as_str(),
            None => "O",
        };
        let sentence = words.row(*row);
        if args.conll {
            for (word, t) in sentence.iter().zip(&per_word) {
                writeln!(out, "{word} {}", tag(*t))?;
            }
            writeln!(out)?;
        } else {
            let tags: Vec<&str> = per_word.iter().map(|t| tag(*t)).collect();
            writeln!(out, "{}", serde_json::json!({"row": row, "tokens": sentence, "tags": tags}))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The windows of questions, and each window's scores, from a question answering model in one process.
fn answer_windows(
    finetuned: &FineTunedClassifier,
    examples: &[data::Example],
    (max_length, stride, pad_to_max_length): (usize, usize, bool),
    batch_size: usize,
    precision: accel::kernels::MixedPrecision,
    device: &candle_core::Device,
) -> anyhow::Result<(Arc<Dataset>, answering::SpanPredictions)> {
    let f = data::QaWindows {
        tokenizer: &finetuned.tokenizer,
        max_length: max_length.min(finetuned.tokenizer.max_length()),
        stride,
    };
    let (windows, _) = data::squad::to_dataset(examples)?.map(&f, 1_000, None)?;
    let windows = Arc::new(windows);
    let mut collator = data::DataCollatorWithPadding::new(&finetuned.tokenizer)?.on(device.clone());
    collator.pad_to_length = pad_to_max_length.then_some(f.max_length);
    let autocast = inference_autocast(precision, device, &finetuned.model)?;
    let spans = autocast
        .run(|| answering::predict_spans(&finetuned.model, windows.clone(), &collator, batch_size, &SingleProcess))?;
    Ok((windows, spans))
}

/// `accel eval` of a question answering model: SQuAD's exact match and F1 (v2's figures when
/// questions may have no answer) on a split of the files that `--config` / `--set data.*` name.
fn evaluate_answers(
    args: &EvalArgs,
    finetuned: FineTunedClassifier,
    device: &candle_core::Device,
) -> anyhow::Result<ExitCode> {
    let cfg = data_config(&args.source)?;
    let qa = data::load_squad(&cfg)?;
    let split_name = args.split.clone().unwrap_or_else(|| "validation".to_string());
    let examples = data::squad::examples_of(qa.splits.split(&split_name)?)?;
    let started = Instant::now();
    let shape = (cfg.max_length.unwrap_or(384), cfg.doc_stride.unwrap_or(128), cfg.pad_to_max_length.unwrap_or(true));
    let (windows, spans) = answer_windows(&finetuned, &examples, shape, args.batch_size, args.mixed_precision, device)?;
    let opts = accel::train::prepare::answer_options(&cfg, qa.has_unanswerable);
    let metrics = spans.metrics(&windows, &examples, &opts)?;
    let secs = started.elapsed().as_secs_f64();
    if args.json {
        return print_eval_json(&split_name, examples.len(), &metrics, secs);
    }
    let shown: Vec<String> = metrics.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
    let version = if opts.version_2_with_negative { "SQuAD v2" } else { "SQuAD v1.1" };
    println!(
        "{split_name} ({} questions, {} windows; {version}): {}",
        examples.len(),
        windows.num_rows(),
        shown.join(", ")
    );
    println!("took {secs:.2} s ({:.1} questions/s)", examples.len() as f64 / secs);
    Ok(ExitCode::SUCCESS)
}

/// `accel predict` of a question answering model: `{id: answer}` as JSON, the form the official
/// SQuAD evaluation script reads.
fn predict_answers(
    args: &PredictArgs,
    finetuned: FineTunedClassifier,
    device: &candle_core::Device,
) -> anyhow::Result<ExitCode> {
    let examples = match (&args.input, &args.text, &args.text_pair) {
        (Some(path), _, _) => data::squad::read_examples(path, false)?,
        (None, Some(question), Some(context)) => vec![data::Example {
            id: "0".into(),
            title: String::new(),
            context: context.clone(),
            question: question.clone(),
            answers: Vec::new(),
        }],
        _ => anyhow::bail!("give --input FILE (SQuAD JSON or JSON lines), or --text QUESTION --text-pair CONTEXT"),
    };
    let (windows, spans) = answer_windows(
        &finetuned,
        &examples,
        (args.max_length, args.doc_stride, false),
        args.batch_size,
        args.mixed_precision,
        device,
    )?;
    let opts = accel::train::answers::AnswerOptions {
        version_2_with_negative: args.version_2_with_negative,
        null_score_diff_threshold: args.null_score_diff_threshold,
        ..Default::default()
    };
    let answers = spans.answers(&windows, &examples, &opts)?;
    let out: serde_json::Map<String, serde_json::Value> =
        examples.iter().zip(answers).map(|(e, a)| (e.id.clone(), serde_json::Value::String(a.text))).collect();
    writeln!(std::io::stdout().lock(), "{}", serde_json::to_string_pretty(&out)?)?;
    Ok(ExitCode::SUCCESS)
}

/// The bf16 policy of a one-process evaluation or prediction, said on stderr when it keeps f32.
fn inference_autocast(
    precision: accel::kernels::MixedPrecision,
    device: &candle_core::Device,
    model: &accel::model::Model,
) -> anyhow::Result<Autocast> {
    let autocast = Autocast::on(precision, device, model.params().tracked())?;
    if autocast.kept_f32().is_some() {
        eprintln!("{}", autocast.describe());
    }
    Ok(autocast)
}
