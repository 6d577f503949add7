//! MLflow tracking through MLflow's REST API (`/api/2.0/mlflow/...`), as its own client talks to a
//! tracking server: the run is created in the experiment `MLFLOW_EXPERIMENT_NAME` (default
//! `Default`) of the server at `MLFLOW_TRACKING_URI`, or continued when `MLFLOW_RUN_ID` names one;
//! `MLFLOW_TRACKING_TOKEN` (a bearer token) or `MLFLOW_TRACKING_USERNAME` / `_PASSWORD` (basic)
//! authenticate, as for MLflow's client.
//!
//! Logging never stops training: records go through a queue to a thread that sends them in
//! batches. A request that fails is retried (transport errors, 429 and 5xx) with backoff; when the
//! tries are spent, one warning line says so and the rest of the run is not sent (metrics.jsonl
//! keeps every record). A request the server refuses (a 4xx: a parameter whose value a continued
//! run changed, a metric name it does not accept) is left out with one warning for its kind, and
//! the rest goes on.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// MLflow's limits per `log-batch` request.
const MAX_METRICS_PER_BATCH: usize = 1000;
const MAX_PARAMS_PER_BATCH: usize = 100;
/// MLflow's longest parameter value (longer ones are cut).
const MAX_PARAM_LENGTH: usize = 6000;
/// How long the end of a run waits for the sending thread while it makes no progress (no request
/// answered, no byte of an upload read).
const FLUSH_WAIT: Duration = Duration::from_secs(60);

/// Where and how to reach the tracking server, and which run to log to.
#[derive(Debug, Clone, PartialEq)]
pub struct MlflowSettings {
    /// The server's base URL (`http://127.0.0.1:5000`).
    pub tracking_uri: String,
    pub experiment_name: String,
    /// An existing run to continue (`MLFLOW_RUN_ID`) instead of a new one.
    pub run_id: Option<String>,
    pub run_name: String,
    /// `Authorization` header value, if any.
    pub authorization: Option<String>,
    /// Retries after a failed request, and the first wait (doubled each time).
    pub retries: u32,
    pub backoff: Duration,
}

impl MlflowSettings {
    /// The settings the environment gives, as MLflow's client reads it; None without
    /// `MLFLOW_TRACKING_URI`, an error for a URI the REST API cannot serve.
    pub fn from_env(var: impl Fn(&str) -> Option<String>, run_name: &str) -> Result<Option<Self>, String> {
        let Some(uri) = var("MLFLOW_TRACKING_URI").filter(|u| !u.trim().is_empty()) else { return Ok(None) };
        let uri = uri.trim().trim_end_matches('/').to_string();
        if !(uri.starts_with("http://") || uri.starts_with("https://")) {
            return Err(format!(
                "MLFLOW_TRACKING_URI={uri}: accel logs through MLflow's REST API, so it needs a tracking server's \
                 http(s) URL (start one with `mlflow server --host 127.0.0.1 --port 5000`), not a local store"
            ));
        }
        let authorization = match (var("MLFLOW_TRACKING_TOKEN"), var("MLFLOW_TRACKING_USERNAME")) {
            (Some(token), _) => Some(format!("Bearer {token}")),
            (None, Some(user)) => {
                let password = var("MLFLOW_TRACKING_PASSWORD").unwrap_or_default();
                Some(format!("Basic {}", base64(format!("{user}:{password}").as_bytes())))
            }
            (None, None) => None,
        };
        Ok(Some(Self {
            tracking_uri: uri,
            experiment_name: var("MLFLOW_EXPERIMENT_NAME")
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "Default".into()),
            run_id: var("MLFLOW_RUN_ID").filter(|r| !r.is_empty()),
            run_name: run_name.to_string(),
            authorization,
            retries: 3,
            backoff: Duration::from_millis(500),
        }))
    }
}

/// Standard base64 (for basic authentication).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Why a request failed: `retryable` for the server's trouble (no answer, 429, 5xx), which
/// another try may get past, else the server refused this request.
struct Failure {
    message: String,
    retryable: bool,
}

/// One server: an agent for calls and one with longer timeouts for uploads.
struct Client {
    base: String,
    agent: ureq::Agent,
    uploads: ureq::Agent,
    authorization: Option<String>,
    retries: u32,
    backoff: Duration,
    /// Requests answered and upload bytes read: what the end of a run waits on.
    progress: Arc<AtomicU64>,
}

impl Client {
    fn new(settings: &MlflowSettings) -> Self {
        let agent = |read_s| {
            ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(5))
                .timeout_read(Duration::from_secs(read_s))
                .timeout_write(Duration::from_secs(120))
                .build()
        };
        Self {
            base: settings.tracking_uri.clone(),
            agent: agent(30),
            uploads: agent(600),
            authorization: settings.authorization.clone(),
            retries: settings.retries,
            backoff: settings.backoff,
            progress: Arc::new(AtomicU64::new(0)),
        }
    }

    fn request(&self, method: &str, url: &str) -> ureq::Request {
        let agent = if method == "PUT" { &self.uploads } else { &self.agent };
        let request = agent.request(method, url);
        match &self.authorization {
            Some(a) => request.set("Authorization", a),
            None => request,
        }
    }

    /// One try of a JSON call: POST with `body`, or GET with `query`.
    fn try_call(
        &self,
        method: &str,
        endpoint: &str,
        body: Option<&Value>,
        query: &[(&str, &str)],
    ) -> Result<Value, Failure> {
        let url = format!("{}/api/2.0/mlflow/{endpoint}", self.base);
        let mut request = self.request(method, &url);
        for (k, v) in query {
            request = request.query(k, v);
        }
        let sent = match body {
            Some(b) => request.set("Content-Type", "application/json").send_string(&b.to_string()),
            None => request.call(),
        };
        read_json(sent)
    }

    /// A call, retried with doubling waits while the failure may pass.
    fn call(
        &self,
        method: &str,
        endpoint: &str,
        body: Option<&Value>,
        query: &[(&str, &str)],
    ) -> Result<Value, Failure> {
        self.retrying(|| self.try_call(method, endpoint, body, query))
            .map_err(|f| Failure { message: format!("{endpoint}: {}", f.message), ..f })
    }

    /// `attempt` until it succeeds, the server refuses it, or the retries are spent (then the
    /// failure is still `retryable`: the server's trouble, not the request's).
    fn retrying<T>(&self, mut attempt: impl FnMut() -> Result<T, Failure>) -> Result<T, Failure> {
        let mut wait = self.backoff;
        let mut tries = 0;
        loop {
            let outcome = attempt();
            self.progress.fetch_add(1, Ordering::Relaxed);
            match outcome {
                Ok(v) => return Ok(v),
                Err(f) if f.retryable && tries < self.retries => {
                    tries += 1;
                    std::thread::sleep(wait);
                    wait *= 2;
                }
                Err(f) => {
                    let after = if tries > 0 { format!(" (after {} tries)", tries + 1) } else { String::new() };
                    return Err(Failure { message: format!("{}{after}", f.message), ..f });
                }
            }
        }
    }

    /// Uploads `file` as `artifact_path` of a run whose artifacts the server proxies
    /// (`mlflow-artifacts:/...`), or copies it where a local artifact root says.
    fn upload(&self, artifact_uri: &str, artifact_path: &str, file: &Path) -> Result<(), String> {
        if let Some(rest) = artifact_uri.strip_prefix("mlflow-artifacts:") {
            let rest = rest.trim_start_matches('/');
            // mlflow-artifacts://host:port/path names the server; the path follows the host.
            let rest = if artifact_uri.starts_with("mlflow-artifacts://") {
                rest.split_once('/').map(|(_, p)| p).unwrap_or("")
            } else {
                rest
            };
            let url = format!("{}/api/2.0/mlflow-artifacts/artifacts/{rest}/{artifact_path}", self.base);
            let length = std::fs::metadata(file).map_err(|e| format!("{}: {e}", file.display()))?.len();
            // Streamed from the file, each byte read counted as progress.
            let attempt = || {
                let reader = std::fs::File::open(file)
                    .map_err(|e| Failure { message: format!("{}: {e}", file.display()), retryable: false })?;
                let reader = Counting { inner: reader, progress: self.progress.clone() };
                read_json(self.request("PUT", &url).set("Content-Length", &length.to_string()).send(reader)).map(|_| ())
            };
            return self.retrying(attempt).map_err(|f| format!("uploading {}: {}", file.display(), f.message));
        }
        let root = artifact_uri.strip_prefix("file://").unwrap_or(artifact_uri);
        if !root.starts_with('/') {
            return Err(format!(
                "the run's artifact store {artifact_uri} is not one accel can write (it writes through the server's \
                 proxied artifacts, mlflow-artifacts:, or into a local folder)"
            ));
        }
        let target = Path::new(root).join(artifact_path);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::copy(file, &target).map(|_| ()).map_err(|e| format!("{}: {e}", target.display()))
    }
}

/// A reader that counts the bytes read from it into `progress`.
struct Counting<R> {
    inner: R,
    progress: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// A response's JSON body, or why there is none.
fn read_json(sent: Result<ureq::Response, ureq::Error>) -> Result<Value, Failure> {
    match sent {
        Ok(response) => {
            let text = response.into_string().map_err(|e| Failure { message: e.to_string(), retryable: true })?;
            Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
        }
        Err(ureq::Error::Status(code, response)) => {
            let text = response.into_string().unwrap_or_default();
            let detail = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(String::from))
                .unwrap_or_else(|| text.chars().take(200).collect());
            Err(Failure { message: format!("HTTP {code}: {detail}"), retryable: code == 429 || code >= 500 })
        }
        Err(ureq::Error::Transport(t)) => Err(Failure { message: t.to_string(), retryable: true }),
    }
}

/// What the sending thread is asked to do, in order.
enum Message {
    Metrics(Vec<Value>),
    Params(Vec<(String, String)>),
    /// The files of a folder (not its subfolders) as artifacts under a path.
    Artifacts(PathBuf, String),
    Finish(&'static str),
}

/// Sends to the run from a queue; what [`MlflowRun`] hands records to.
#[derive(Debug, Clone)]
pub struct MlflowLogger {
    tx: Sender<Message>,
}

impl MlflowLogger {
    /// A logged record's numbers as metrics at its `step` (every numeric key but `step` itself).
    pub fn log_record(&self, record: &Value) {
        let Some(fields) = record.as_object() else { return };
        let step = fields.get("step").and_then(Value::as_i64).unwrap_or(0);
        let metrics: Vec<(String, f64)> =
            fields.iter().filter(|(k, _)| *k != "step").filter_map(|(k, v)| Some((k.clone(), v.as_f64()?))).collect();
        self.log_metrics(&metrics, step);
    }

    /// Metrics at `step` (non-finite values are left out: MLflow stores them as NaN or refuses them).
    pub fn log_metrics(&self, metrics: &[(String, f64)], step: i64) {
        let timestamp = now_ms();
        let metrics: Vec<Value> = metrics
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(key, value)| json!({"key": key, "value": value, "timestamp": timestamp, "step": step}))
            .collect();
        if !metrics.is_empty() {
            let _ = self.tx.send(Message::Metrics(metrics));
        }
    }
}

/// A run on an MLflow server, from creation to its final status: FAILED unless
/// [`set_outcome`](MlflowRun::set_outcome) says otherwise before it is finished or dropped.
pub struct MlflowRun {
    logger: MlflowLogger,
    /// The status the run ends with when dropped.
    outcome: &'static str,
    worker: Option<JoinHandle<()>>,
    done: Receiver<()>,
    progress: Arc<AtomicU64>,
    /// The run's page on the server.
    pub url: String,
    pub run_id: String,
}

impl MlflowRun {
    /// Creates (or continues) the run and logs `params` first; Err is a one-line reason.
    pub fn start(settings: &MlflowSettings, params: Vec<(String, String)>) -> Result<Self, String> {
        let mut client = Client::new(settings);
        // Before the first step: one retry, so that an absent server delays training by seconds.
        client.retries = settings.retries.min(1);
        let at = |e: Failure| format!("MLflow at {}: {}", settings.tracking_uri, e.message);
        let (run_id, experiment_id, artifact_uri) = match &settings.run_id {
            Some(id) => {
                let run = client.call("GET", "runs/get", None, &[("run_id", id)]).map_err(at)?;
                let info = &run["run"]["info"];
                (id.clone(), text(&info["experiment_id"]), text(&info["artifact_uri"]))
            }
            None => {
                let experiment_id = experiment(&client, &settings.experiment_name).map_err(at)?;
                let body = json!({
                    "experiment_id": experiment_id,
                    "start_time": now_ms(),
                    "run_name": settings.run_name,
                    "tags": [
                        {"key": "mlflow.runName", "value": settings.run_name},
                        {"key": "mlflow.source.name", "value": "accel"},
                        {"key": "mlflow.source.type", "value": "LOCAL"},
                        {"key": "mlflow.user", "value": std::env::var("USER").unwrap_or_else(|_| "accel".into())},
                    ],
                });
                let run = client.call("POST", "runs/create", Some(&body), &[]).map_err(at)?;
                let info = &run["run"]["info"];
                (text(&info["run_id"]), experiment_id, text(&info["artifact_uri"]))
            }
        };
        if run_id.is_empty() {
            return Err(at(Failure { message: "the server answered without a run id".into(), retryable: false }));
        }
        client.retries = settings.retries;
        let progress = client.progress.clone();
        let url = format!("{}/#/experiments/{experiment_id}/runs/{run_id}", settings.tracking_uri);
        let (tx, rx) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let worker = {
            let (run_id, uri) = (run_id.clone(), settings.tracking_uri.clone());
            std::thread::Builder::new()
                .name("mlflow".into())
                .spawn(move || {
                    send_all(&client, &run_id, &artifact_uri, &uri, rx);
                    let _ = done_tx.send(());
                })
                .map_err(|e| at(Failure { message: format!("starting its thread: {e}"), retryable: false }))?
        };
        let run =
            Self { logger: MlflowLogger { tx }, outcome: "FAILED", worker: Some(worker), done, progress, url, run_id };
        let _ = run.logger.tx.send(Message::Params(params));
        Ok(run)
    }

    /// The queue that records go into.
    pub fn logger(&self) -> MlflowLogger {
        self.logger.clone()
    }

    /// Uploads the files of `dir` (not its subfolders) as artifacts under `artifact_path`.
    pub fn log_artifacts(&self, dir: &Path, artifact_path: &str) {
        let _ = self.logger.tx.send(Message::Artifacts(dir.to_path_buf(), artifact_path.to_string()));
    }

    /// The status the run ends with (`FINISHED`, `FAILED`, `KILLED`; FAILED unless set).
    pub fn set_outcome(&mut self, status: &'static str) {
        self.outcome = status;
    }

    /// Sends what is queued and ends the run with its outcome, waiting at most a minute for an
    /// unresponsive server.
    pub fn finish(mut self) {
        self.end();
    }

    fn end(&mut self) {
        let Some(worker) = self.worker.take() else { return };
        let _ = self.logger.tx.send(Message::Finish(self.outcome));
        let (mut seen, mut since) = (self.progress.load(Ordering::Relaxed), Instant::now());
        loop {
            match self.done.recv_timeout(Duration::from_secs(1)) {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                    let _ = worker.join();
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    let now = self.progress.load(Ordering::Relaxed);
                    if now != seen {
                        (seen, since) = (now, Instant::now());
                    } else if since.elapsed() >= FLUSH_WAIT {
                        crate::io::eprint_line(&format!(
                            "warning: MLflow: the server made no progress with the run's last records in {} s; not waiting longer",
                            FLUSH_WAIT.as_secs()
                        ));
                        return;
                    }
                }
            }
        }
    }
}

impl Drop for MlflowRun {
    fn drop(&mut self) {
        self.end();
    }
}

fn text(v: &Value) -> String {
    v.as_str().map(String::from).unwrap_or_default()
}

/// The id of the experiment named `name`, created when missing.
fn experiment(client: &Client, name: &str) -> Result<String, Failure> {
    match client.call("GET", "experiments/get-by-name", None, &[("experiment_name", name)]) {
        Ok(found) => Ok(text(&found["experiment"]["experiment_id"])),
        Err(f) if f.message.contains("HTTP 404") || f.message.contains("RESOURCE_DOES_NOT_EXIST") => {
            let created = client.call("POST", "experiments/create", Some(&json!({"name": name})), &[])?;
            Ok(text(&created["experiment_id"]))
        }
        Err(f) => Err(f),
    }
}

/// The warnings of the sending thread: once when the server stops answering (then nothing more is
/// sent), once per kind of request it refuses.
struct Trouble<'a> {
    uri: &'a str,
    /// The server stopped answering: nothing more is sent.
    broken: bool,
    refused: BTreeSet<&'static str>,
}

impl Trouble<'_> {
    fn failed(&mut self, what: &'static str, f: Failure) {
        if f.retryable {
            if !self.broken {
                crate::io::eprint_line(&format!(
                    "warning: MLflow at {} stopped taking the run's records ({}); training goes on, and \
                     metrics.jsonl keeps every record",
                    self.uri, f.message
                ));
            }
            self.broken = true;
        } else if self.refused.insert(what) {
            crate::io::eprint_line(&format!(
                "warning: MLflow at {} refused the run's {what} ({}); those are left out, the rest goes on",
                self.uri, f.message
            ));
        }
    }
}

/// The sending thread: batches what is queued and sends it, until the run's end is sent.
fn send_all(client: &Client, run_id: &str, artifact_uri: &str, uri: &str, rx: Receiver<Message>) {
    let mut trouble = Trouble { uri, broken: false, refused: BTreeSet::new() };
    while let Ok(first) = rx.recv() {
        let mut pending = vec![first];
        // Whatever else is queued goes in the same requests.
        let deadline = Instant::now() + Duration::from_millis(50);
        while let Ok(m) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            pending.push(m);
        }
        let mut metrics = Vec::new();
        let mut finish = None;
        for message in pending {
            match message {
                Message::Metrics(m) => metrics.extend(m),
                Message::Params(params) if !trouble.broken => {
                    for chunk in params.chunks(MAX_PARAMS_PER_BATCH) {
                        let params: Vec<Value> = chunk
                            .iter()
                            .map(|(k, v)| json!({"key": k, "value": v.chars().take(MAX_PARAM_LENGTH).collect::<String>()}))
                            .collect();
                        let body = json!({"run_id": run_id, "params": params});
                        if let Err(f) = client.call("POST", "runs/log-batch", Some(&body), &[]) {
                            trouble.failed("parameters", f);
                        }
                    }
                }
                Message::Artifacts(dir, path) if !trouble.broken => {
                    send_metrics(client, run_id, &mut metrics, &mut trouble);
                    if let Err(e) = upload_folder(client, artifact_uri, &dir, &path) {
                        crate::io::eprint_line(&format!("warning: MLflow at {uri}: the model was not logged: {e}"));
                    }
                }
                Message::Finish(status) => finish = Some(status),
                _ => {}
            }
        }
        send_metrics(client, run_id, &mut metrics, &mut trouble);
        if let Some(status) = finish {
            if !trouble.broken {
                let body = json!({"run_id": run_id, "status": status, "end_time": now_ms()});
                if let Err(f) = client.call("POST", "runs/update", Some(&body), &[]) {
                    trouble.failed("end status", f);
                }
            }
            return;
        }
    }
}

/// Sends the queued metrics in MLflow-sized batches (nothing once the server stopped answering).
fn send_metrics(client: &Client, run_id: &str, metrics: &mut Vec<Value>, trouble: &mut Trouble) {
    for chunk in std::mem::take(metrics).chunks(MAX_METRICS_PER_BATCH) {
        if trouble.broken {
            return;
        }
        let body = json!({"run_id": run_id, "metrics": chunk});
        if let Err(f) = client.call("POST", "runs/log-batch", Some(&body), &[]) {
            trouble.failed("metrics", f);
        }
    }
}

fn upload_folder(client: &Client, artifact_uri: &str, dir: &Path, path: &str) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
    files.sort();
    for file in files {
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        client.upload(artifact_uri, &format!("{path}/{name}"), &file)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_come_from_mlflows_variables() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        assert_eq!(MlflowSettings::from_env(vars(&[]), "run").unwrap(), None);
        let s = MlflowSettings::from_env(vars(&[("MLFLOW_TRACKING_URI", "http://h:5000/")]), "run").unwrap().unwrap();
        assert_eq!((s.tracking_uri.as_str(), s.experiment_name.as_str()), ("http://h:5000", "Default"));
        assert_eq!(s.authorization, None);
        let s = MlflowSettings::from_env(
            vars(&[
                ("MLFLOW_TRACKING_URI", "https://h"),
                ("MLFLOW_EXPERIMENT_NAME", "mrpc"),
                ("MLFLOW_TRACKING_USERNAME", "Aladdin"),
                ("MLFLOW_TRACKING_PASSWORD", "open sesame"),
            ]),
            "run",
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.experiment_name, "mrpc");
        assert_eq!(s.authorization.as_deref(), Some("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="));
        let err = MlflowSettings::from_env(vars(&[("MLFLOW_TRACKING_URI", "./mlruns")]), "run").unwrap_err();
        assert!(err.contains("MLFLOW_TRACKING_URI=./mlruns") && err.contains("mlflow server"), "{err}");
    }
}
