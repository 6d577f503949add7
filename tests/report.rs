//! What a run reports besides metrics.jsonl: the curves image (after each evaluation and at the
//! end, and `accel plot` over several runs) and TensorBoard event files, read back by accel and by
//! TensorBoard's own reader when `ACCEL_TENSORBOARD_PYTHON` names a Python that has it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use accel::config;
use accel::distributed::SingleProcess;
use accel::report::tensorboard::read_events;
use accel::train::{TrainConfig, Trainer};

/// Trains the tiny model for two epochs with an evaluation after each; returns the output folder.
fn train(root: &Path, out: &str, extra: &[&str]) -> PathBuf {
    let model = common::tiny_model_dir(&root.join("tiny"), 3);
    let (train, validation) = common::tiny_pair_task(root, 64, 32);
    let q = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    let mut table: toml::Table = format!(
        "output_dir = {}\nper_device_train_batch_size = 8\nnum_train_epochs = 2\nlogging_steps = 2\nlearning_rate = 1e-3\nsave_strategy = \"no\"\neval_strategy = \"epoch\"\n\
         [data]\ntrain_file = {}\nvalidation_file = {}\ntext_columns = [\"sentence1\", \"sentence2\"]\n\
         [model]\nname_or_path = {}\n",
        q(&root.join(out)),
        q(&train),
        q(&validation),
        q(&model)
    )
    .parse()
    .unwrap();
    for e in extra {
        config::apply_override(&mut table, e).unwrap();
    }
    Trainer::new(TrainConfig::from_table(table, "test").unwrap(), &SingleProcess).unwrap().train().unwrap();
    root.join(out)
}

/// Width, height and RGB pixels of a PNG.
fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    assert_eq!(info.color_type, png::ColorType::Rgb);
    (info.width, info.height, buf)
}

/// The share of pixels that are not near-white.
fn inked(pixels: &[u8]) -> f64 {
    pixels.chunks(3).filter(|p| p.iter().any(|&c| c < 200)).count() as f64 / (pixels.len() / 3) as f64
}

fn accel(args: &[&str]) -> (String, bool) {
    let out = Command::new(env!("CARGO_BIN_EXE_accel")).args(args).output().unwrap();
    (String::from_utf8_lossy(&out.stderr).into(), out.status.success())
}

#[test]
fn a_run_draws_its_curves_and_accel_plot_compares_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let a = train(tmp.path(), "fast", &[]);
    // Panels: loss (with eval loss), eval accuracy, learning rate, grad norm: two rows.
    let (w, h, pixels) = decode(&a.join("curves.png"));
    assert_eq!((w, h), accel::report::plot::image_size(4));
    let share = inked(&pixels);
    assert!((0.01..0.5).contains(&share), "inked share {share}: blank or filled");

    let b = train(tmp.path(), "slow", &["learning_rate=1e-4"]);
    let both = tmp.path().join("both.png");
    let (err, ok) = accel(&["plot", a.to_str().unwrap(), b.to_str().unwrap(), "-o", both.to_str().unwrap()]);
    assert!(ok, "{err}");
    let (w2, h2, pixels2) = decode(&both);
    assert_eq!((w2, h2), (w, h));
    // The second run has its own colour (tab10's orange) and the first run's blue is still there.
    for colour in [[31u8, 119, 180], [255, 127, 14]] {
        assert!(pixels2.chunks(3).any(|p| p == colour), "colour {colour:?} missing");
    }
    assert!(!pixels.chunks(3).any(|p| p == [255, 127, 14]), "one run draws in one colour");

    // One run: the image goes into its folder; a folder without a log is named in the error.
    std::fs::remove_file(a.join("curves.png")).unwrap();
    let (err, ok) = accel(&["plot", a.to_str().unwrap()]);
    assert!(ok && a.join("curves.png").is_file(), "{err}");
    let (err, ok) = accel(&["plot", tmp.path().to_str().unwrap()]);
    assert!(!ok && err.contains("metrics.jsonl") && err.contains("trainer_state.json"), "{err}");
}

#[test]
fn tensorboard_events_carry_every_logged_number_under_the_trainer_names() {
    let tmp = tempfile::tempdir().unwrap();
    let out = train(tmp.path(), "tb", &["report_to=\"tensorboard\""]);
    let runs: Vec<PathBuf> = std::fs::read_dir(out.join("runs")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let files: Vec<PathBuf> = std::fs::read_dir(&runs[0]).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1);
    assert!(files[0].file_name().unwrap().to_string_lossy().starts_with("events.out.tfevents."));

    let events = read_events(&files[0]).unwrap();
    let scalar = |tag: &str| -> Vec<(i64, f32)> {
        events
            .iter()
            .filter_map(|e| Some((e.step, e.summary.as_ref()?.value.first()?.clone())))
            .filter(|(_, v)| v.tag == tag)
            .map(|(step, v)| (step, v.simple_value.unwrap()))
            .collect()
    };
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let logged: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let losses: Vec<(i64, f32)> =
        logged.iter().filter_map(|r| Some((r["step"].as_i64()?, r.get("loss")?.as_f64()? as f32))).collect();
    assert_eq!(losses.len(), 8, "16 steps logged every 2");
    assert_eq!(scalar("train/loss"), losses);
    for tag in ["train/learning_rate", "train/grad_norm", "train/epoch", "train/train_runtime"] {
        assert!(!scalar(tag).is_empty(), "{tag} missing");
    }
    assert_eq!(scalar("eval/accuracy").iter().map(|s| s.0).collect::<Vec<_>>(), [8, 16]);

    match std::env::var_os("ACCEL_TENSORBOARD_PYTHON") {
        Some(python) => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_tensorboard.py");
            let out = Command::new(python).arg(script).arg(&runs[0]).arg(out.join("metrics.jsonl")).output().unwrap();
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success(), "TensorBoard's reader: {text}");
            eprintln!("{}", text.trim());
        }
        None => eprintln!(
            "skipped: reading the events with TensorBoard itself (set ACCEL_TENSORBOARD_PYTHON to a Python with tensorboard; scripts/test.sh does)"
        ),
    }
}

/// A request a [`TrackingServer`] received.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    body: Vec<u8>,
}

impl Received {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A loopback server that answers MLflow's REST calls as a tracking server with proxied artifacts
/// does, and records them; after `fail_after` log-batch calls it answers 503 to everything, and
/// with `refuse_params` it refuses parameters as MLflow refuses a changed value (400).
struct TrackingServer {
    uri: String,
    received: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
}

impl TrackingServer {
    fn start(fail_after: Option<usize>, refuse_params: bool) -> Self {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let uri = format!("http://{}", listener.local_addr().unwrap());
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Received>::new()));
        let log = received.clone();
        std::thread::spawn(move || {
            let mut batches = 0;
            let mut experiment = false;
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
                let mut length = 0;
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    if header.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = header.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            length = v.trim().parse().unwrap();
                        }
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let endpoint = path.split('?').next().unwrap_or("").to_string();
                let failing = fail_after.is_some_and(|n| batches >= n);
                if endpoint.ends_with("runs/log-batch") {
                    batches += 1;
                }
                let params = String::from_utf8_lossy(&body).contains("\"params\"");
                let (status, answer) = match endpoint.as_str() {
                    _ if failing => ("503 Service Unavailable", r#"{"message": "down"}"#.to_string()),
                    "/api/2.0/mlflow/runs/log-batch" if refuse_params && params => (
                        "400 Bad Request",
                        r#"{"error_code": "INVALID_PARAMETER_VALUE", "message": "Changing param values is not allowed"}"#
                            .to_string(),
                    ),
                    "/api/2.0/mlflow/experiments/get-by-name" if !experiment => (
                        "404 Not Found",
                        r#"{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such experiment"}"#.to_string(),
                    ),
                    "/api/2.0/mlflow/experiments/get-by-name" => {
                        ("200 OK", r#"{"experiment": {"experiment_id": "7"}}"#.to_string())
                    }
                    "/api/2.0/mlflow/experiments/create" => {
                        experiment = true;
                        ("200 OK", r#"{"experiment_id": "7"}"#.to_string())
                    }
                    "/api/2.0/mlflow/runs/create" => (
                        "200 OK",
                        r#"{"run": {"info": {"run_id": "r1", "experiment_id": "7", "artifact_uri": "mlflow-artifacts:/7/r1/artifacts"}}}"#
                            .to_string(),
                    ),
                    _ => ("200 OK", "{}".to_string()),
                };
                if !failing {
                    log.lock().unwrap().push(Received { method, path: endpoint, body });
                }
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        Self { uri, received }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// `accel train` on the tiny task, reporting to MLflow at `uri` (None: no MLFLOW_TRACKING_URI).
fn train_reporting_to_mlflow(root: &Path, uri: Option<&str>, extra: &[&str]) -> std::process::Output {
    let model = common::tiny_model_dir(&root.join("tiny"), 3);
    let (train, validation) = common::tiny_pair_task(root, 64, 32);
    let config = root.join("run.toml");
    std::fs::write(
        &config,
        format!(
            "output_dir = {}\nnum_train_epochs = 2\nlogging_steps = 2\nlearning_rate = 1e-3\nsave_strategy = \"no\"\n\
             eval_strategy = \"epoch\"\nreport_to = [\"mlflow\"]\n[data]\ntrain_file = {}\nvalidation_file = {}\n\
             text_columns = [\"sentence1\", \"sentence2\"]\n[model]\nname_or_path = {}\n",
            common::toml_path(&root.join("out")),
            common::toml_path(&train),
            common::toml_path(&validation),
            common::toml_path(&model)
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_accel"));
    cmd.args(["train", "--config", config.to_str().unwrap()]).args(extra);
    for var in ["MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "MLFLOW_TRACKING_TOKEN"] {
        cmd.env_remove(var);
    }
    if let Some(uri) = uri {
        cmd.env("MLFLOW_TRACKING_URI", uri).env("MLFLOW_EXPERIMENT_NAME", "accel-tests");
    }
    cmd.output().unwrap()
}

#[test]
fn mlflow_receives_the_config_every_logged_number_the_run_report_and_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TrackingServer::start(None, false);
    let out = train_reporting_to_mlflow(tmp.path(), Some(&server.uri), &["--set", "mlflow_log_model=true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    assert!(stderr.contains(&format!("MLflow run: {}/#/experiments/7/runs/r1", server.uri)), "{stderr}");
    let calls = server.received();
    let endpoints: Vec<&str> = calls.iter().map(|c| c.path.rsplit("/mlflow/").next().unwrap()).collect();
    assert_eq!(&endpoints[..3], ["experiments/get-by-name", "experiments/create", "runs/create"], "{endpoints:?}");
    assert_eq!(calls[1].json()["name"], "accel-tests");
    assert_eq!(calls[2].json()["run_name"], "out", "the run is named after output_dir");
    let last = calls.last().unwrap();
    assert!(last.path.ends_with("runs/update") && last.json()["status"] == "FINISHED", "{last:?}");

    let batches: Vec<serde_json::Value> =
        calls.iter().filter(|c| c.path.ends_with("runs/log-batch")).map(Received::json).collect();
    assert!(batches.iter().all(|b| b["run_id"] == "r1"));
    let params: Vec<(String, String)> = batches
        .iter()
        .flat_map(|b| b["params"].as_array().cloned().unwrap_or_default())
        .map(|p| (p["key"].as_str().unwrap().to_string(), p["value"].as_str().unwrap().to_string()))
        .collect();
    for (key, value) in [
        ("learning_rate", "0.001"),
        ("num_train_epochs", "2.0"),
        ("data.text_columns", "[\"sentence1\", \"sentence2\"]"),
    ] {
        assert!(params.contains(&(key.to_string(), value.to_string())), "{key} = {value} not in {params:?}");
    }
    let mut sent: Vec<(String, i64, f64)> = batches
        .iter()
        .flat_map(|b| b["metrics"].as_array().cloned().unwrap_or_default())
        .map(|m| (m["key"].as_str().unwrap().to_string(), m["step"].as_i64().unwrap(), m["value"].as_f64().unwrap()))
        .collect();
    let report: Vec<_> = sent.iter().filter(|(k, _, _)| k.starts_with("run_report/")).cloned().collect();
    assert!(report.iter().any(|(k, s, _)| k == "run_report/samples_per_s" && *s == 16), "{report:?}");
    sent.retain(|(k, _, _)| !k.starts_with("run_report/"));
    // Every number of metrics.jsonl, at its step, and nothing else.
    let text = std::fs::read_to_string(tmp.path().join("out/metrics.jsonl")).unwrap();
    let mut logged: Vec<(String, i64, f64)> = Vec::new();
    for record in text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()) {
        let step = record["step"].as_i64().unwrap();
        for (k, v) in record.as_object().unwrap() {
            if let (true, Some(v)) = (k != "step", v.as_f64()) {
                logged.push((k.clone(), step, v));
            }
        }
    }
    let key = |t: &(String, i64, f64)| (t.0.clone(), t.1, t.2.to_bits());
    sent.sort_by_key(key);
    logged.sort_by_key(key);
    assert_eq!(sent, logged);
    assert!(logged.iter().any(|(k, _, _)| k == "eval_accuracy") && logged.iter().any(|(k, _, _)| k == "loss"));

    let uploads: Vec<&str> = calls.iter().filter(|c| c.method == "PUT").map(|c| c.path.as_str()).collect();
    for file in ["model.safetensors", "config.json", "README.md", "tokenizer.json"] {
        let path = format!("/api/2.0/mlflow-artifacts/artifacts/7/r1/artifacts/model/{file}");
        assert!(uploads.contains(&path.as_str()), "{path} not in {uploads:?}");
    }
    let weights = calls.iter().find(|c| c.path.ends_with("model/model.safetensors")).unwrap();
    assert_eq!(weights.body, std::fs::read(tmp.path().join("out/model.safetensors")).unwrap());
}

#[test]
fn a_tracking_server_that_fails_mid_run_leaves_one_warning_and_a_finished_run() {
    let tmp = tempfile::tempdir().unwrap();
    // The parameters and the first metrics go through; then every call fails.
    let server = TrackingServer::start(Some(2), false);
    let out = train_reporting_to_mlflow(tmp.path(), Some(&server.uri), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("warning: MLflow")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("HTTP 503") && warnings[0].contains("training goes on"), "{}", warnings[0]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("trained 16 steps"));
    let records = std::fs::read_to_string(tmp.path().join("out/metrics.jsonl")).unwrap();
    assert_eq!(records.lines().filter(|l| l.contains("\"loss\"")).count(), 8, "metrics.jsonl keeps every record");
}

#[test]
fn refused_parameters_are_left_out_and_the_rest_is_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TrackingServer::start(None, true);
    let out = train_reporting_to_mlflow(tmp.path(), Some(&server.uri), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("warning: MLflow")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("refused the run's parameters") && warnings[0].contains("Changing param values"));
    let calls = server.received();
    let metrics = calls
        .iter()
        .filter(|c| c.path.ends_with("log-batch"))
        .map(|c| c.json()["metrics"].as_array().map_or(0, Vec::len))
        .sum::<usize>();
    assert!(metrics > 30, "the metrics were logged: {metrics}");
    assert!(
        calls.last().unwrap().path.ends_with("runs/update") && calls.last().unwrap().json()["status"] == "FINISHED"
    );
}

#[test]
fn mlflow_without_a_server_is_refused_or_warned_about_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = train_reporting_to_mlflow(tmp.path(), None, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("config report_to") && stderr.contains("MLFLOW_TRACKING_URI"),
        "{stderr}"
    );
    // A server that is not there at the start: the run goes on without it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let out = train_reporting_to_mlflow(tmp.path(), Some(&format!("http://{closed}")), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.lines().filter(|l| l.contains("warning: MLflow at")).count(), 1, "{stderr}");
}
