//! Data-parallel training with real MPI ranks started by `accel launch`: equivalence with one
//! process on the same global batches, gathering for metrics, faults that end the job, and exact
//! resume. Tiny random-init models keep each run to a few seconds.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::cli::{
    accel, accel_bin, assert_ok, assert_same_trace, eval_record, launch, max_abs_weight_diff, max_rel_weight_diff,
    max_tensor_rel_diff, steps, weights, worst_tensor,
};
use common::Fixture;

/// A tiny model (dropout off unless `dropout`) and a 64-row train / 33-row validation task.
fn fixture(dropout: bool) -> Fixture {
    let f = Fixture::new(33);
    if dropout {
        f
    } else {
        f.without_dropout()
    }
}

/// Writes a run config into the fixture and returns its path.
fn write_config(f: &Fixture, name: &str, body: &str) -> PathBuf {
    let path = f.root.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "output_dir = {}\n{}logging_steps = 1\nseed = 7\nper_device_eval_batch_size = 5\n{body}\n{}",
            common::toml_path(&f.root.join(name)),
            if body.contains("learning_rate") { "" } else { "learning_rate = 1e-3\n" },
            f.data_and_model_toml()
        ),
    )
    .unwrap();
    path
}

#[test]
fn two_ranks_equal_one_rank_on_the_same_global_batches() {
    // Dropout off as the acceptance asks, and on: masks are keyed by each row's place in the step's
    // global batch, so they are the same however the rows are split.
    let mut first_losses = Vec::new();
    for dropout in [false, true] {
        let f = fixture(dropout);
        let common = "max_steps = 6\neval_strategy = \"steps\"\neval_steps = 6\nsave_strategy = \"no\"";
        let one = write_config(&f, "one", &format!("{common}\nper_device_train_batch_size = 8"));
        let two = write_config(&f, "two", &format!("{common}\nper_device_train_batch_size = 4"));
        let accum = write_config(
            &f,
            "accum",
            &format!("{common}\nper_device_train_batch_size = 2\ngradient_accumulation_steps = 2\nddp_check_weights_steps = 1"),
        );
        assert_ok(&accel(&["train", "--config", one.to_str().unwrap()], &[]));
        let run = launch(2, &["train", "--config", two.to_str().unwrap()], &[]);
        assert_ok(&run);
        assert!(run.stdout.contains("[rank 0] trained 6 steps"), "{}", run.stdout);
        assert!(!run.stdout.contains("[rank 1] trained"), "only rank 0 reports: {}", run.stdout);
        assert_ok(&launch(2, &["train", "--config", accum.to_str().unwrap()], &[]));
        first_losses.push(steps(&f.root.join("one")));

        for other in ["two", "accum"] {
            let dir = f.root.join(other);
            assert_same_trace(&f.root.join("one"), &dir, 1e-5);
            // Per tensor within 1e-5. Element by element 1e-4: Adam divides each update by the root
            // of its second moment, so an element whose gradient is nearly zero turns the last-bit
            // differences of a differently ordered sum (padding to 4 rows instead of 8, averaging
            // over ranks) into relative differences of about 1e-5 in its weight.
            let (a, b) = (dir.join("model.safetensors"), f.root.join("one/model.safetensors"));
            let per_tensor = max_tensor_rel_diff(&a, &b);
            assert!(
                per_tensor < 1e-5,
                "{other} (dropout {dropout}): a tensor differs by {per_tensor:e} (relative norm)"
            );
            let diff = max_rel_weight_diff(&a, &b);
            assert!(
                diff < 1e-4,
                "{other} (dropout {dropout}): weights differ by {diff:e} (relative, element by element)"
            );
            let (e1, e2) = (eval_record(&f.root.join("one")), eval_record(&dir));
            assert_eq!(e1["eval_accuracy"], e2["eval_accuracy"], "{other}");
            assert!(common::rel_diff(e2["eval_loss"].as_f64().unwrap(), e1["eval_loss"].as_f64().unwrap()) < 1e-5);
        }
    }
    assert_ne!(first_losses[0], first_losses[1], "dropout changes the losses");
}

#[test]
fn three_ranks_evaluate_every_row_of_an_odd_split_once() {
    let f = fixture(false);
    // A learning rate of 0 keeps the initial weights, so the metrics must match one process's exactly.
    let body = "max_steps = 2\nlearning_rate = 0.0\neval_strategy = \"steps\"\neval_steps = 2\nsave_strategy = \"no\"\nper_device_train_batch_size = 4";
    let one = write_config(&f, "one", body);
    let three = write_config(&f, "three", body);
    assert_ok(&accel(&["train", "--config", one.to_str().unwrap()], &[]));
    assert_ok(&launch(3, &["train", "--config", three.to_str().unwrap()], &[]));
    let (e1, e3) = (eval_record(&f.root.join("one")), eval_record(&f.root.join("three")));
    assert_eq!(e1["eval_accuracy"], e3["eval_accuracy"]);
    assert!(common::rel_diff(e3["eval_loss"].as_f64().unwrap(), e1["eval_loss"].as_f64().unwrap()) < 1e-6);

    // The same in-process, row by row: 33 rows over 3 threads, batches of 5.
    let cfg = accel::train::TrainConfig::load(Some(&three), &[]).unwrap();
    let gathered = accel::distributed::ThreadGroup::run(3, |pg| {
        let trainer = accel::train::Trainer::new(cfg.clone(), pg).unwrap();
        trainer.predict("validation").unwrap()
    });
    for preds in gathered {
        assert_eq!(preds.rows, (0..33).collect::<Vec<_>>());
        assert_eq!(preds.labelled, 33);
    }
}

/// Processes whose command line mentions `needle` (a run's unique config path).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let out = Command::new("pgrep").args(["-a", "-f", needle]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect()
}

#[test]
fn every_kind_of_failure_ends_the_job_naming_the_rank() {
    let f = fixture(false);
    let body =
        "max_steps = 8\nper_device_train_batch_size = 4\nsave_strategy = \"steps\"\nsave_steps = 2\nddp_timeout = 3";
    let cases = [
        ("panic:0:3", "rank 0 panicked, after step 3"),
        ("error:1:3", "rank 1 failed: injected error on rank 1 at step 3, after step 3"),
        ("kill:1:3", "rank 1 was killed by signal 9"),
        ("stall:1:3", "rank 1 stopped responding (rank 0 timed out waiting for it in a collective), after step 3"),
    ];
    for (fault, expected) in cases {
        let name = format!("fault-{}", fault.split(':').next().unwrap());
        let cfg = write_config(&f, &name, body);
        let run = launch(2, &["train", "--config", cfg.to_str().unwrap()], &[("ACCEL_FAULT", fault)]);
        assert_ne!(run.code, Some(0), "{fault}: the job must fail");
        assert!(run.elapsed < Duration::from_secs(12), "{fault}: took {:?}", run.elapsed);
        let report =
            run.stderr.lines().find(|l| l.starts_with("accel launch: ")).unwrap_or_else(|| panic!("{}", run.stderr));
        assert!(report.contains(expected), "{fault}: {report}\n{}", run.stderr);
        if fault.starts_with("kill") {
            assert!(report.contains("after step 3"), "{report}");
        }
        std::thread::sleep(Duration::from_millis(300));
        let left = processes_mentioning(cfg.to_str().unwrap());
        assert!(left.is_empty(), "{fault}: processes left behind: {left:?}");
        // The checkpoint written before the fault is complete and is the one "latest" picks.
        let dir = f.root.join(&name);
        let latest = accel::train::checkpoint::latest_checkpoint(&dir).unwrap().unwrap();
        assert_eq!(latest, dir.join("checkpoint-2"), "{fault}");
        assert_eq!(weights(&latest.join("model.safetensors")).len(), weights(&f.model.join("model.safetensors")).len());
        assert_eq!(accel::train::state::TrainState::load(&latest).unwrap().global_step, 2);
    }
}

#[test]
fn two_ranks_resume_exactly_where_they_stopped() {
    // Dropout on: each rank's stream must resume where it was.
    let f = fixture(true);
    let body = "max_steps = 8\nper_device_train_batch_size = 4\nsave_strategy = \"steps\"\nsave_steps = 4";
    let whole = write_config(&f, "whole", body);
    let stopped = write_config(&f, "stopped", body);
    assert_ok(&launch(2, &["train", "--config", whole.to_str().unwrap()], &[]));
    let run = launch(2, &["train", "--config", stopped.to_str().unwrap()], &[("ACCEL_FAULT", "kill:1:5")]);
    assert_ne!(run.code, Some(0));
    assert!(!f.root.join("stopped/model.safetensors").exists(), "the stopped run did not finish");
    let run = launch(2, &["train", "--config", stopped.to_str().unwrap(), "--resume-from-checkpoint", "latest"], &[]);
    assert_ok(&run);
    let (a, b) = (steps(&f.root.join("whole")), steps(&f.root.join("stopped")));
    // The stopped run logged steps 1..5 before it was killed, then 5..8 again after resuming.
    let resumed = &b[b.len().saturating_sub(4)..];
    assert_eq!(resumed.iter().map(|s| s.0).collect::<Vec<_>>(), [5, 6, 7, 8], "{b:?}");
    for (x, y) in a[4..].iter().zip(resumed) {
        assert_eq!(x, y, "losses and gradient norms after resuming are the uninterrupted run's");
    }
    let diff = max_rel_weight_diff(&f.root.join("stopped/model.safetensors"), &f.root.join("whole/model.safetensors"));
    assert_eq!(diff, 0.0, "the final weights are the same bits");
}

/// The run in `resumed`, resumed from step `from` of the run in `whole`, logs its remaining
/// steps' losses and gradient norms within `tol` and ends with its weights within `tol`.
fn assert_resumed_as_uninterrupted(whole: &Path, resumed: &Path, from: u64, tol: f64, label: &str) {
    let uninterrupted: Vec<_> = steps(whole).into_iter().filter(|s| s.0 > from).collect();
    let trace = steps(resumed);
    assert_eq!(trace.len(), uninterrupted.len(), "{label}: {trace:?}");
    for ((s1, l1, g1), (s2, l2, g2)) in uninterrupted.iter().zip(&trace) {
        assert_eq!(s1, s2);
        assert!(common::rel_diff(*l2, *l1) < tol, "{label}, step {s1}: loss {l1} vs {l2}");
        assert!(common::rel_diff(*g2, *g1) < tol, "{label}, step {s1}: grad norm {g1} vs {g2}");
    }
    let diff = max_abs_weight_diff(&resumed.join("model.safetensors"), &whole.join("model.safetensors"));
    eprintln!("{label}: max abs weight difference {diff:e}");
    assert!(diff < tol, "{label}: the weights differ by {diff:e}");
}

/// A checkpoint resumes on another number of processes when the global batch is kept: 2 x 4 as
/// 1 x 8 and as 1 x 4 with accumulation 2, and 1 x 8 as 2 x 4, each going on as the uninterrupted
/// run (dropout on; 60 rows, so the epoch that ends at step 8 has a padded or a short last step).
/// 3 processes cannot keep 8 rows, and are told which counts can.
#[test]
fn a_checkpoint_resumes_on_another_number_of_processes_that_keeps_the_global_batch() {
    let f = fixture(true);
    std::fs::create_dir_all(f.root.join("sixty")).unwrap();
    let (train, _) = common::tiny_pair_task(&f.root.join("sixty"), 60, 5);
    std::fs::copy(train, &f.train).unwrap();
    let body = "max_steps = 12\nsave_strategy = \"steps\"\nsave_steps = 6";
    let two_by_four = write_config(&f, "two_by_four", &format!("{body}\nper_device_train_batch_size = 4"));
    let one_by_eight = write_config(&f, "one_by_eight", &format!("{body}\nper_device_train_batch_size = 8"));
    assert_ok(&launch(2, &["train", "--config", two_by_four.to_str().unwrap()], &[]));
    assert_ok(&accel(&["train", "--config", one_by_eight.to_str().unwrap()], &[]));
    let cases: [(&str, &Path, usize, &[&str]); 3] = [
        ("two_by_four", &two_by_four, 1, &["--per-device-train-batch-size", "8"]),
        ("two_by_four", &two_by_four, 1, &["--per-device-train-batch-size", "4", "--gradient-accumulation-steps", "2"]),
        ("one_by_eight", &one_by_eight, 2, &["--per-device-train-batch-size", "4"]),
    ];
    for (k, (whole, cfg, nproc, shape)) in cases.into_iter().enumerate() {
        let out = f.root.join(format!("resumed{k}"));
        let checkpoint = f.root.join(whole).join("checkpoint-6");
        let mut args = vec!["train", "--config", cfg.to_str().unwrap(), "--output-dir", out.to_str().unwrap()];
        args.extend(["--resume-from-checkpoint", checkpoint.to_str().unwrap()]);
        args.extend(shape);
        let run = if nproc == 1 { accel(&args, &[]) } else { launch(nproc, &args, &[]) };
        assert_ok(&run);
        let said = format!("{}{}", run.stdout, run.stderr);
        assert!(said.contains("resuming steps laid out by"), "{said}");
        let label = format!("case {k} ({whole:?} resumed on {nproc} x {shape:?})");
        assert_resumed_as_uninterrupted(&f.root.join(whole), &out, 6, 1e-5, &label);
    }
    let checkpoint = f.root.join("two_by_four/checkpoint-6");
    let out = f.root.join("three");
    let mut args = vec!["train", "--config", two_by_four.to_str().unwrap(), "--output-dir", out.to_str().unwrap()];
    args.extend(["--resume-from-checkpoint", checkpoint.to_str().unwrap()]);
    let run = launch(3, &args, &[]);
    assert_eq!(run.code, Some(2), "a configuration error: {}", run.stderr);
    assert!(
        run.stderr.contains("8 rows cannot be split evenly over 3 processes; resume on 1, 2, 4, 8 processes"),
        "{}",
        run.stderr
    );
}

/// `--profile`: a timeline per rank in output_dir/trace/, gathered by rank 0, that parses as
/// trace-event JSON; its spans nest, every rank appears, and its step and phase times are the
/// report's (within 5%). The report counts the all-reduce's bytes and bus bandwidth.
#[test]
fn the_timeline_holds_every_ranks_nested_spans_and_agrees_with_the_report() {
    let f = fixture(false);
    let cfg = write_config(&f, "profiled", "max_steps = 10\nper_device_train_batch_size = 4\nsave_strategy = \"no\"");
    let run = launch(2, &["train", "--config", cfg.to_str().unwrap(), "--profile"], &[]);
    assert_ok(&run);
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(said.contains("run report: 10 steps on 2 x cpu"), "{said}");
    let dir = f.root.join("profiled");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run_report.json")).unwrap()).unwrap();
    assert!(report["all_reduce_bytes_per_step"].as_u64().unwrap() > 0);
    assert!(report["all_reduce_bus_gb_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(report["ranks"].as_array().unwrap().len(), 2);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for rank in 0..2 {
        let trace: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(format!("trace/rank-{rank}.json"))).unwrap())
                .unwrap();
        let events: Vec<&serde_json::Value> =
            trace["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X").collect();
        assert!(events.iter().all(|e| e["pid"] == rank), "rank {rank}'s file holds its own events");
        let steps: Vec<u64> =
            events.iter().filter(|e| e["name"] == "step").map(|e| e["args"]["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, (1..=10).collect::<Vec<_>>(), "every step");
        for name in ["data", "forward", "backward", "all-reduce wait", "all-reduce", "clip", "optimizer"] {
            assert!(events.iter().any(|e| e["name"] == name), "rank {rank}: no {name} span");
        }
        // Spans on a track either nest or follow one another.
        let mut spans: Vec<(f64, f64)> =
            events.iter().map(|e| (e["ts"].as_f64().unwrap(), e["dur"].as_f64().unwrap())).collect();
        spans.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
        let mut open: Vec<f64> = Vec::new();
        for (ts, dur) in spans {
            while open.last().is_some_and(|end| *end <= ts + 0.5) {
                open.pop();
            }
            if let Some(end) = open.last() {
                assert!(ts + dur <= end + 0.5, "rank {rank}: a span at {ts} overlaps its parent's end {end}");
            }
            open.push(ts + dur);
        }
        if rank == 0 {
            let durations = |name: &str| -> Vec<f64> {
                events.iter().filter(|e| e["name"] == name).map(|e| e["dur"].as_f64().unwrap() / 1e3).collect()
            };
            let trace_step = median(durations("step"));
            let report_step = report["step"]["median_ms"].as_f64().unwrap();
            assert!(
                (trace_step - report_step).abs() <= 0.05 * report_step,
                "step: trace {trace_step} ms, report {report_step} ms"
            );
            let forward = median(durations("forward"));
            let report_forward = report["phases"].as_array().unwrap().iter().find(|p| p[0] == "forward").unwrap()[1]
                ["median_ms"]
                .as_f64()
                .unwrap();
            assert!(
                (forward - report_forward).abs() <= 0.05 * report_forward.max(forward) + 0.05,
                "forward: trace {forward} ms, report {report_forward} ms"
            );
        }
    }
    // accel draws a step of it.
    let run = accel(&["plot", "--timeline", dir.to_str().unwrap(), "--step", "4"], &[]);
    assert_ok(&run);
    let png = std::fs::read(dir.join("timeline.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} bytes", png.len());
}

/// `accel verify`: one process at the global batch, 2 ranks and 2-fold accumulation agree on the
/// tiny model with dropout on; one rank's gradients perturbed at one step (a test hook) fails it.
#[test]
fn verify_passes_on_the_tiny_model_and_fails_when_one_rank_differs() {
    let f = fixture(true);
    let cfg = write_config(&f, "verified", "per_device_train_batch_size = 4");
    let work = f.root.join("verify");
    let args = [
        "verify",
        "--config",
        cfg.to_str().unwrap(),
        "--nproc",
        "2",
        "--steps",
        "6",
        "--output-dir",
        work.to_str().unwrap(),
    ];
    let run = accel(&args, &[]);
    assert_ok(&run);
    assert!(run.stdout.contains("verify: passed"), "{}", run.stdout);
    assert_eq!(
        run.stdout
            .lines()
            .filter(|l| l.trim_start().split(' ').next().is_some_and(|w| w.parse::<u64>().is_ok()))
            .count(),
        6,
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("largest weight difference from 1x8x1: 2x4x1 "), "{}", run.stdout);
    let run = accel(&args, &[("ACCEL_FAULT", "perturb:1:3")]);
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("verify: FAILED"), "{}", run.stdout);
}

/// `--max-restarts`: a rank killed at a random step and, in the restarted job, a rank stalling at
/// a later random step (caught by ddp_timeout) cost two restarts from the newest checkpoints; the
/// job ends with the uninterrupted run's weights, bit for bit.
#[test]
fn restarts_resume_from_the_newest_checkpoint_and_end_bit_identical() {
    let f = fixture(true);
    let body =
        "max_steps = 12\nper_device_train_batch_size = 4\nsave_strategy = \"steps\"\nsave_steps = 2\nddp_timeout = 3";
    let whole = write_config(&f, "whole", body);
    let restarted = write_config(&f, "restarted", body);
    assert_ok(&launch(2, &["train", "--config", whole.to_str().unwrap()], &[]));
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as usize;
    let kill = 2 + nanos % 6;
    let stall = kill + 1 + (nanos / 6) % (11 - kill);
    eprintln!("rank 1 killed after step {kill}, rank 0 stalled after step {stall} in the restarted job");
    let faults = [("ACCEL_FAULT", format!("kill:1:{kill},stall:0:{stall}@1"))];
    let faults = [(faults[0].0, faults[0].1.as_str())];
    let run = launch(2, &["--max-restarts", "3", "train", "--config", restarted.to_str().unwrap()], &faults);
    assert_ok(&run);
    let said: Vec<&str> = run.stderr.lines().filter(|l| l.starts_with("accel launch: ")).collect();
    let restart = |n: usize, step: usize, lost: usize| {
        let dir = f.root.join(format!("restarted/checkpoint-{step}"));
        let lost = if lost == 1 { "1 step".to_string() } else { format!("{lost} steps") };
        format!("accel launch: restart {n} of 3: resuming from {} (step {step}); {lost} lost", dir.display())
    };
    assert!(said.iter().any(|l| l.contains("rank 1 was killed by signal 9")), "{said:#?}");
    // Checkpoints every 2 steps: a failure after step s resumes from the even step at or below it.
    assert!(said.contains(&restart(1, kill / 2 * 2, kill % 2).as_str()), "{said:#?}");
    assert!(said.iter().any(|l| l.contains("rank 0 stopped responding")), "{said:#?}");
    assert!(said.contains(&restart(2, stall / 2 * 2, stall % 2).as_str()), "{said:#?}");
    // The stalled rank is named with the span and step it stopped in.
    let stalled = format!("rank 0: in step at step {} for ", stall + 1);
    assert!(
        run.stderr.lines().any(|l| l.starts_with("where the ranks were: ") && l.contains(&stalled)),
        "{}",
        run.stderr
    );
    let diff =
        max_rel_weight_diff(&f.root.join("restarted/model.safetensors"), &f.root.join("whole/model.safetensors"));
    assert_eq!(diff, 0.0, "the final weights are the uninterrupted run's bits");
}

/// A failure that repeats at the same step from the same checkpoint, and a configuration error,
/// are not retried: the launcher says why and exits with the failure's code.
#[test]
fn restarts_stop_where_another_try_would_fail_the_same_way() {
    let f = fixture(false);
    let body = "max_steps = 8\nper_device_train_batch_size = 4\nsave_strategy = \"steps\"\nsave_steps = 2";
    let cfg = write_config(&f, "repeats", body);
    // The first try fails at step 3 from the start, the next two after step 3 from checkpoint-2.
    let faults = [("ACCEL_FAULT", "error:1:3,error:1:3@1,error:1:3@2")];
    let run = launch(2, &["--max-restarts", "3", "train", "--config", cfg.to_str().unwrap()], &faults);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert_eq!(run.stderr.matches("accel launch: restart ").count(), 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("accel launch: not restarting: it failed after step 3 again, from the same checkpoint"),
        "{}",
        run.stderr
    );
    // A rank whose data is at fault exits with 2, which the launcher does not retry.
    let bad = f.root.join("bad.tsv");
    std::fs::write(&bad, "sentence1\tsentence2\tlabel\na\tb\tseven\n").unwrap();
    let cfg = f.root.join("bad-data.toml");
    let (q, out) = (common::toml_path, f.root.join("bad-data"));
    std::fs::write(
        &cfg,
        format!(
            "output_dir = {}\nmax_steps = 2\n[data]\ntrain_file = {}\nvalidation_file = {}\n\
             text_columns = [\"sentence1\", \"sentence2\"]\nlabel_names = [\"different\", \"same\"]\n[model]\nname_or_path = {}\n",
            q(&out),
            q(&bad),
            q(&f.validation),
            q(&f.model)
        ),
    )
    .unwrap();
    let run = launch(2, &["--max-restarts", "3", "train", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(run.code, Some(accel_launch::NOT_RETRYABLE_EXIT_CODE), "{}", run.stderr);
    assert!(
        run.stderr.contains("accel launch: not restarting: a rank's configuration, data or model is at fault"),
        "{}",
        run.stderr
    );
}

/// The pid of rank `rank` among the processes running `needle`'s job (read from OpenMPI's variable).
fn rank_pid(needle: &str, rank: usize) -> Option<i32> {
    processes_mentioning(needle).iter().find_map(|line| {
        let pid: i32 = line.split_whitespace().next()?.parse().ok()?;
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        let wanted = format!("OMPI_COMM_WORLD_RANK={rank}");
        environ.split(|&b| b == 0).any(|v| v == wanted.as_bytes()).then_some(pid)
    })
}

/// Preemption: SIGTERM to the launcher, or SIGUSR1 to rank 1 alone, mid-run: every rank stops
/// after the same step, rank 0 writes a checkpoint of it, the job exits with the preemption code
/// and leaves no process; resuming from "latest" then ends with the uninterrupted run's weights.
#[test]
fn preemption_checkpoints_the_step_in_progress_and_resumes_bit_identical() {
    let f = fixture(true);
    let body = "max_steps = 400\nper_device_train_batch_size = 4\nsave_strategy = \"no\"";
    let whole = write_config(&f, "whole", body);
    assert_ok(&launch(2, &["train", "--config", whole.to_str().unwrap()], &[]));
    for (name, signal, target) in [("sigterm-launcher", libc::SIGTERM, None), ("sigusr1-rank1", libc::SIGUSR1, Some(1))]
    {
        let cfg = write_config(&f, name, body);
        let needle = cfg.to_str().unwrap().to_string();
        let child = Command::new(accel_bin())
            .args(["launch", "--nproc", "2", "train", "--config", &needle])
            .env("HF_HUB_OFFLINE", "1")
            .env("RAYON_NUM_THREADS", "1")
            .env_remove("ACCEL_FAULT")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Signal once the run has logged a few steps.
        let out = f.root.join(name);
        let started = Instant::now();
        let logged = || std::fs::read_to_string(out.join("metrics.jsonl")).map_or(0, |t| t.matches("\"loss\"").count());
        while logged() < 5 {
            assert!(started.elapsed() < Duration::from_secs(60), "{name}: the run logged nothing");
            std::thread::sleep(Duration::from_millis(20));
        }
        let pid = match target {
            None => child.id() as i32,
            Some(rank) => rank_pid(&needle, rank).unwrap_or_else(|| panic!("{name}: no rank {rank}")),
        };
        // SAFETY: signals a process of the job started above.
        unsafe { libc::kill(pid, signal) };
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(accel_launch::PREEMPTED_EXIT_CODE), "{name}: {stderr}");
        std::thread::sleep(Duration::from_millis(300));
        assert!(processes_mentioning(&needle).is_empty(), "{name}: left behind: {:?}", processes_mentioning(&needle));
        let latest =
            accel::train::checkpoint::latest_checkpoint(&out).unwrap().unwrap_or_else(|| panic!("{name}: {stderr}"));
        let step = accel::train::state::TrainState::load(&latest).unwrap().global_step;
        assert!(step > 0 && step < 400, "{name}: checkpoint at step {step}");
        assert!(
            stderr.contains(&format!("accel launch: preempted: the ranks stopped after step {step}")),
            "{name}: {stderr}"
        );
        let resumed = launch(2, &["train", "--config", &needle, "--resume-from-checkpoint", "latest"], &[]);
        assert_ok(&resumed);
        let diff = max_rel_weight_diff(&out.join("model.safetensors"), &f.root.join("whole/model.safetensors"));
        assert_eq!(diff, 0.0, "{name}: preempted at step {step}, then resumed: the final weights are the same bits");
    }
}

#[test]
fn ctrl_c_on_the_launcher_stops_every_rank() {
    let f = fixture(false);
    // Long enough to be interrupted: the ranks stall at step 1 until the signal.
    let cfg =
        write_config(&f, "interrupted", "max_steps = 50\nper_device_train_batch_size = 4\nsave_strategy = \"no\"");
    let mut child = Command::new(accel_bin())
        .args(["launch", "--nproc", "2", "train", "--config", cfg.to_str().unwrap()])
        .env("HF_HUB_OFFLINE", "1")
        .env("ACCEL_FAULT", "stall:1:1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let needle = cfg.to_str().unwrap();
    let started = Instant::now();
    while processes_mentioning(needle).len() < 3 && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: sends SIGINT to the launcher we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let interrupted = Instant::now();
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(interrupted.elapsed() < Duration::from_secs(10), "took {:?}", interrupted.elapsed());
    std::thread::sleep(Duration::from_millis(300));
    assert!(processes_mentioning(needle).is_empty(), "left behind: {:?}", processes_mentioning(needle));
}

/// `accel launch` checks the ranks' devices before it starts any: a GPU job on a host without the
/// GPUs fails at once, naming the key and why, and starts no rank.
#[test]
fn a_launch_whose_ranks_cannot_have_their_gpus_starts_no_rank() {
    let Some(why) = accel::device::gpu_unavailable() else {
        eprintln!("skipped: this machine has a GPU");
        return;
    };
    let f = fixture(false);
    let cfg = write_config(&f, "gpu", "max_steps = 1\ndevice = \"cuda\"");
    let run = accel(&["launch", "--nproc", "2", "train", "--config", cfg.to_str().unwrap()], &[]);
    assert_ne!(run.code, Some(0));
    assert!(run.stderr.contains("config device") && run.stderr.contains(&why), "{}", run.stderr);
    assert!(!run.stderr.contains("[rank"), "a rank started: {}", run.stderr);
    assert!(!f.root.join("gpu").exists(), "a rank wrote its output folder");
}

/// ZeRO: stages 1 and 2 on 2 and 3 ranks (3, so that slices do not divide evenly) follow DDP's
/// losses and gradient norms within 1e-6 for 30 steps with dropout and clipping on, and every
/// rank's weights are compared after every step (`ddp_check_weights_steps = 1`). A ZeRO-2
/// checkpoint resumes under DDP and a DDP checkpoint under ZeRO-2, each ending as the
/// uninterrupted run.
///
/// On the CPU by default; scripts/gpu-check.sh runs it on GPUs (NCCL) with ACCEL_TEST_DEVICE=cuda
/// and ACCEL_TEST_NPROCS set to the world sizes the machine's GPUs allow.
#[test]
fn zero_stages_follow_ddp_and_their_checkpoints_resume_across_stages() {
    let f = fixture(true);
    let device = std::env::var("ACCEL_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    let nprocs: Vec<usize> = match std::env::var("ACCEL_TEST_NPROCS") {
        Ok(list) => list.split_whitespace().map(|n| n.parse().expect("ACCEL_TEST_NPROCS: world sizes")).collect(),
        Err(_) => vec![2, 3],
    };
    let body = format!(
        "max_steps = 30\nper_device_train_batch_size = 4\nmax_grad_norm = 0.2\nddp_check_weights_steps = 1\n\
         save_strategy = \"steps\"\nsave_steps = 15\nddp_bucket_cap_mb = 0.05\ndevice = \"{device}\""
    );
    let config = |stage: u8, nproc: usize| {
        write_config(&f, &format!("zero{stage}_{nproc}"), &format!("{body}\nzero_stage = {stage}"))
    };
    for &nproc in &nprocs {
        for stage in 0..3u8 {
            let run = launch(nproc, &["train", "--config", config(stage, nproc).to_str().unwrap()], &[]);
            assert_ok(&run);
            let said = format!("{}{}", run.stdout, run.stderr);
            assert!(said.contains(&format!("sharding: ZeRO stage {stage}")), "{said}");
        }
        let ddp = f.root.join(format!("zero0_{nproc}"));
        let trace = steps(&ddp);
        assert_eq!(trace.len(), 30);
        assert!(trace.iter().filter(|s| s.2 > 0.2).count() > 10, "clipping is on: {trace:?}");
        for stage in 1..3 {
            let dir = f.root.join(format!("zero{stage}_{nproc}"));
            assert_same_trace(&ddp, &dir, 1e-6);
            let (a, b) = (dir.join("model.safetensors"), ddp.join("model.safetensors"));
            // Stage 1 and 2 ranks' sums are DDP's bit for bit; over 3 ranks MPI's reduce-scatter
            // adds in another order than its all-reduce, which leaves last-bit differences (seen:
            // 1.2e-7 at most; relative to its norm, most in an attention key bias, whose exact
            // gradient is zero).
            let (name, rel) = worst_tensor(&a, &b);
            let diff = max_abs_weight_diff(&a, &b);
            eprintln!("ZeRO-{stage} on {nproc} ranks ({device}): weights differ from DDP's by {diff:e} at most ({name}: {rel:e} of its norm)");
            assert!(diff < 1e-6, "ZeRO-{stage} on {nproc} ranks: a weight differs from DDP's by {diff:e}");
        }
    }
    for (from, to) in [(2u8, 0u8), (0, 2)] {
        let whole = f.root.join(format!("zero{from}_2"));
        let out = f.root.join(format!("resumed_{from}_as_{to}"));
        let checkpoint = whole.join("checkpoint-15");
        let cfg = config(to, 2);
        let args = ["train", "--config", cfg.to_str().unwrap(), "--output-dir", out.to_str().unwrap()];
        let run = launch(2, &[&args[..], &["--resume-from-checkpoint", checkpoint.to_str().unwrap()]].concat(), &[]);
        assert_ok(&run);
        assert_resumed_as_uninterrupted(&whole, &out, 15, 1e-6, &format!("ZeRO-{from} resumed as ZeRO-{to}"));
    }
}
