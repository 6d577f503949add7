//! The model card: the `README.md` of a saved model, laid out as the Trainer's
//! `generated_from_trainer` card so that the Hub renders it as it renders theirs: YAML metadata
//! (library, tags, datasets, metrics, base model, a `model-index` of the results), the evaluation
//! results, the training hyperparameters, a table of every evaluation, and the versions and
//! hardware that trained it. Numbers are written as Python writes them (`5e-05`, `3.0`), rounded
//! to 4 decimals in the text as the Trainer rounds them.

use std::fmt::Write;

use std::path::Path;

use candle_core::Device;
use serde_json::Value;

use super::args::TrainConfig;
use super::metrics::Metrics;
use crate::config::Task;
use crate::kernels::MixedPrecision;
use crate::Result;

/// The file a model card is saved as.
pub const MODEL_CARD_FILE: &str = "README.md";

/// The metric names the Hub knows as metric types (transformers' `METRIC_TAGS`).
const METRIC_TAGS: [&str; 11] = [
    "accuracy",
    "bleu",
    "f1",
    "matthews_correlation",
    "pearsonr",
    "precision",
    "recall",
    "rouge",
    "sacrebleu",
    "spearmanr",
    "wer",
];

/// A dataset the Hub knows: `glue`, configuration `mrpc`, evaluated on `validation`.
#[derive(Debug, Clone, PartialEq)]
pub struct HubDataset {
    pub name: String,
    pub config: String,
    pub split: String,
}

/// What the card says.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCard {
    /// The card's title: the output folder's name.
    pub model_name: String,
    /// The model fine-tuned, as the config named it.
    pub base_model: String,
    /// Whether `base_model` is a Hub id (only then is it the `base_model` metadata and a link).
    pub base_model_on_hub: bool,
    /// None for the user's own files (the Trainer leaves csv/json/parquet builders out too).
    pub dataset: Option<HubDataset>,
    pub task: Task,
    /// The final evaluation (metric names without `eval_`).
    pub eval_results: Option<Metrics>,
    /// The run's logged records, in order (training logs and evaluations).
    pub log_history: Vec<Value>,
    /// Name and value, as the Trainer lists them.
    pub hyperparameters: Vec<(String, String)>,
    /// `accel 0.1.0`, `candle 0.11.1`, ..., and the hardware.
    pub framework_versions: Vec<String>,
}

/// The Hub's task type and name for a task.
fn task_tag(task: Task) -> (&'static str, &'static str) {
    match task {
        Task::SequenceClassification => ("text-classification", "Text Classification"),
        Task::TokenClassification => ("token-classification", "Token Classification"),
        Task::QuestionAnswering => ("question-answering", "Question Answering"),
    }
}

/// `eval_matthews_correlation` -> `Matthews Correlation`, as the Trainer names a metric (each part
/// capitalized as Python's `str.capitalize` does, the rest of it lowered).
pub fn metric_title(key: &str) -> String {
    key.split('_')
        .filter(|p| !p.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars.flat_map(char::to_lowercase)).collect(),
                None => String::new(),
            }
        })
        .collect::<Vec<String>>()
        .join(" ")
}

/// A float as Python's `repr` writes it: `3.0`, `0.8186274509803921`, `5e-05`, `1e+16`.
pub fn python_float(v: f64) -> String {
    if !v.is_finite() {
        return if v.is_nan() {
            "nan".into()
        } else if v > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    let magnitude = v.abs();
    if v == 0.0 || (1e-4..1e16).contains(&magnitude) {
        let s = format!("{v}");
        return if s.contains('.') { s } else { format!("{s}.0") };
    }
    let s = format!("{v:e}");
    let (mantissa, exponent) = s.split_once('e').expect("{:e} writes an exponent");
    let exponent: i32 = exponent.parse().expect("{:e} writes an integer exponent");
    let sign = if exponent < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exponent.abs())
}

/// A logged value as the Trainer's card shows it (`_maybe_round`): a float with more than 4
/// decimals rounded to 4, anything else as Python prints it.
pub fn shown(value: &Value) -> String {
    match value {
        Value::Number(n) if n.is_f64() => {
            let v = n.as_f64().unwrap_or(f64::NAN);
            let text = python_float(v);
            match text.split_once('.') {
                Some((_, decimals)) if decimals.len() > 4 && !text.contains('e') => format!("{v:.4}"),
                _ => text,
            }
        }
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Null => "None".into(),
        other => other.to_string(),
    }
}

/// A YAML scalar: plain where YAML reads it back as the same string, else double-quoted (YAML's
/// double quotes take JSON's escapes).
fn yaml_str(s: &str) -> String {
    let plain = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || " _./-".contains(c))
        && !s.ends_with(' ')
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n"
        );
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).expect("a string serializes")
    }
}

/// A metric value for YAML: a number, or `.nan` / `.inf` (YAML's spellings).
fn yaml_number(v: f64) -> String {
    if v.is_nan() {
        ".nan".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            ".inf".into()
        } else {
            "-.inf".into()
        }
    } else {
        python_float(v)
    }
}

impl ModelCard {
    /// The metrics the Hub knows among the results: (type, title), in the results' order.
    fn metric_tags(&self) -> Vec<(String, String)> {
        let Some(results) = &self.eval_results else { return Vec::new() };
        results
            .keys()
            .filter_map(|key| {
                let title = metric_title(key);
                let tag = title.to_lowercase().replace(' ', "_");
                METRIC_TAGS.contains(&tag.as_str()).then_some((tag, title))
            })
            .collect()
    }

    /// The YAML metadata block (between the `---` lines).
    pub fn metadata(&self) -> String {
        let mut y = String::from("library_name: transformers\nlicense: apache-2.0\n");
        if self.base_model_on_hub {
            let _ = writeln!(y, "base_model: {}", yaml_str(&self.base_model));
        }
        y.push_str("tags:\n- generated_from_trainer\n- accel\n");
        if let Some(d) = &self.dataset {
            let _ = writeln!(y, "datasets:\n- {}", yaml_str(&d.name));
        }
        let tags = self.metric_tags();
        if !tags.is_empty() {
            y.push_str("metrics:\n");
            for (tag, _) in &tags {
                let _ = writeln!(y, "- {tag}");
            }
        }
        let _ = writeln!(y, "model-index:\n- name: {}", yaml_str(&self.model_name));
        // A result needs its task, dataset and metrics, or the Hub rejects the card (the Trainer
        // drops partial ones too).
        match (&self.dataset, &self.eval_results) {
            (Some(d), Some(results)) if !tags.is_empty() => {
                let (task_type, task_name) = task_tag(self.task);
                y.push_str("  results:\n  - task:\n");
                let _ = writeln!(y, "      name: {}\n      type: {task_type}", yaml_str(task_name));
                let _ = writeln!(
                    y,
                    "    dataset:\n      name: {name}\n      type: {name}\n      config: {config}\n      split: {split}\n      args: {config}",
                    name = yaml_str(&d.name),
                    config = yaml_str(&d.config),
                    split = yaml_str(&d.split)
                );
                y.push_str("    metrics:\n");
                for (key, value) in results {
                    let title = metric_title(key);
                    if let Some((tag, _)) = tags.iter().find(|(_, t)| *t == title) {
                        let _ = writeln!(
                            y,
                            "    - name: {}\n      type: {tag}\n      value: {}",
                            yaml_str(&title),
                            yaml_number(*value)
                        );
                    }
                }
            }
            _ => y.push_str("  results: []\n"),
        }
        y
    }

    /// The evaluation table: one row per logged evaluation, with the training loss logged last
    /// before it (`No log` when none was).
    fn results_table(&self) -> String {
        let mut rows: Vec<Vec<(String, String)>> = Vec::new();
        let mut training_loss = "No log".to_string();
        for record in &self.log_history {
            let Some(fields) = record.as_object() else { continue };
            if let Some(loss) = fields.get("loss") {
                training_loss = shown(loss);
            }
            let Some(eval_loss) = fields.get("eval_loss") else { continue };
            let mut row = vec![
                ("Training Loss".to_string(), training_loss.clone()),
                ("Epoch".to_string(), fields.get("epoch").map(shown).unwrap_or_default()),
                ("Step".to_string(), fields.get("step").map(shown).unwrap_or_default()),
                ("Validation Loss".to_string(), shown(eval_loss)),
            ];
            for (key, value) in fields {
                let skip = ["eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"];
                if let Some(name) = key.strip_prefix("eval_").filter(|_| !skip.contains(&key.as_str())) {
                    row.push((metric_title(name), shown(value)));
                }
            }
            rows.push(row);
        }
        let Some(first) = rows.first() else { return String::new() };
        let columns: Vec<String> = first.iter().map(|(k, _)| k.clone()).collect();
        let cell = |row: &[(String, String)], column: &str| {
            row.iter().find(|(k, _)| k == column).map(|(_, v)| v.clone()).unwrap_or_default()
        };
        let widths: Vec<usize> = columns
            .iter()
            .map(|c| rows.iter().map(|r| cell(r, c).chars().count()).max().unwrap_or(0).max(c.chars().count()))
            .collect();
        let line = |cells: Vec<String>| {
            let mut s: String = cells.iter().zip(&widths).map(|(v, w)| format!("| {v:<w$} ")).collect();
            s.push_str("|\n");
            s
        };
        let mut table = line(columns.clone());
        table.push_str(&widths.iter().map(|w| format!("|:{}:", "-".repeat(*w))).collect::<String>());
        table.push_str("|\n");
        for row in &rows {
            table.push_str(&line(columns.iter().map(|c| cell(row, c)).collect()));
        }
        table
    }

    /// The whole `README.md`.
    pub fn render(&self) -> String {
        let mut md = format!("---\n{}---\n\n", self.metadata());
        md.push_str(
            "<!-- This model card was written by accel from what the run knew. Proofread and complete it,\n\
             then remove this comment. -->\n",
        );
        let _ = write!(md, "\n# {}\n\n", self.model_name);
        if self.base_model_on_hub {
            let _ = write!(
                md,
                "This model is a fine-tuned version of [{0}](https://huggingface.co/{0}) on ",
                self.base_model
            );
        } else {
            let _ = write!(md, "This model is a fine-tuned version of `{}` on ", self.base_model);
        }
        match &self.dataset {
            Some(d) => {
                let _ = write!(md, "the {} dataset ({}).", d.name, d.config);
            }
            None => md.push_str("the user's own data."),
        }
        if let Some(results) = &self.eval_results {
            md.push_str("\nIt achieves the following results on the evaluation set:\n");
            // The loss first, as the Trainer lists it.
            let ordered = results.get_key_value("loss").into_iter().chain(results.iter().filter(|(k, _)| *k != "loss"));
            let lines: Vec<String> =
                ordered.map(|(k, v)| format!("- {}: {}", metric_title(k), shown(&Value::from(*v)))).collect();
            md.push_str(&lines.join("\n"));
        }
        md.push('\n');
        md.push_str("\n## Model description\n\nMore information needed\n");
        md.push_str("\n## Intended uses & limitations\n\nMore information needed\n");
        md.push_str("\n## Training and evaluation data\n\nMore information needed\n");
        md.push_str("\n## Training procedure\n\n### Training hyperparameters\n");
        md.push_str("\nThe following hyperparameters were used during training:\n");
        let lines: Vec<String> = self.hyperparameters.iter().map(|(k, v)| format!("- {k}: {v}")).collect();
        md.push_str(&lines.join("\n"));
        md.push('\n');
        let table = self.results_table();
        if !table.is_empty() {
            md.push_str("\n### Training results\n\n");
            md.push_str(&table);
            md.push('\n');
        }
        md.push_str("\n### Framework versions\n\n");
        for line in &self.framework_versions {
            let _ = writeln!(md, "- {line}");
        }
        md
    }
}

/// What a finished run knows that its card says.
pub struct RunFacts<'a> {
    pub cfg: &'a TrainConfig,
    /// `glue/mrpc`, or the train file's name.
    pub data_name: &'a str,
    pub validation_split: &'a str,
    pub world_size: usize,
    pub device: &'a Device,
    pub log_history: &'a [Value],
    pub eval_results: Option<&'a Metrics>,
}

/// Whether a model name is a Hub id (`owner/name`) rather than a folder or a local name.
fn is_hub_id(name: &str) -> bool {
    let mut parts = name.split('/');
    let (Some(owner), Some(repo), None) = (parts.next(), parts.next(), parts.next()) else { return false };
    let ok = |p: &str| {
        !p.is_empty() && !p.starts_with('.') && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    ok(owner) && ok(repo) && !Path::new(name).exists()
}

/// The training hyperparameters under the Trainer's names, in its order.
fn hyperparameters(cfg: &TrainConfig, world_size: usize, device: &Device) -> Vec<(String, String)> {
    let a = &cfg.args;
    let mut h: Vec<(String, String)> = vec![
        ("learning_rate".into(), python_float(a.learning_rate)),
        ("train_batch_size".into(), a.per_device_train_batch_size.to_string()),
        ("eval_batch_size".into(), a.per_device_eval_batch_size.to_string()),
        ("seed".into(), a.seed.to_string()),
    ];
    if world_size > 1 {
        let kind = if device.is_cpu() { "multi-CPU" } else { "multi-GPU" };
        h.push(("distributed_type".into(), kind.into()));
        h.push(("num_devices".into(), world_size.to_string()));
    }
    if a.gradient_accumulation_steps > 1 {
        h.push(("gradient_accumulation_steps".into(), a.gradient_accumulation_steps.to_string()));
    }
    let total_train = a.per_device_train_batch_size * world_size * a.gradient_accumulation_steps;
    if total_train != a.per_device_train_batch_size {
        h.push(("total_train_batch_size".into(), total_train.to_string()));
    }
    if world_size > 1 {
        h.push(("total_eval_batch_size".into(), (a.per_device_eval_batch_size * world_size).to_string()));
    }
    h.push((
        "optimizer".into(),
        format!(
            "Use adamw with betas=({},{}) and epsilon={} and optimizer_args=weight_decay={}",
            python_float(a.adam_beta1),
            python_float(a.adam_beta2),
            python_float(a.adam_epsilon),
            python_float(a.weight_decay)
        ),
    ));
    let scheduler = serde_json::to_value(a.lr_scheduler_type).ok().and_then(|v| v.as_str().map(String::from));
    h.push(("lr_scheduler_type".into(), scheduler.unwrap_or_default()));
    if a.warmup_steps > 0 {
        h.push(("lr_scheduler_warmup_steps".into(), a.warmup_steps.to_string()));
    } else if a.warmup_ratio > 0.0 {
        h.push(("lr_scheduler_warmup_ratio".into(), python_float(a.warmup_ratio)));
    }
    if a.max_steps > 0 {
        h.push(("training_steps".into(), a.max_steps.to_string()));
    } else {
        h.push(("num_epochs".into(), python_float(a.num_train_epochs)));
    }
    if a.mixed_precision == MixedPrecision::Bf16 {
        h.push(("mixed_precision_training".into(), "bf16 (matrix products; fp32 weights and optimizer)".into()));
    }
    if a.zero_stage.number() > 0 {
        h.push(("zero_stage".into(), a.zero_stage.number().to_string()));
    }
    h
}

/// accel's and its libraries' versions, and the hardware of the run.
fn framework_versions(world_size: usize, device: &Device) -> Vec<String> {
    let ranks = if world_size > 1 { format!(", {world_size} ranks") } else { String::new() };
    let hardware = match crate::device::gpu_name(device) {
        Some(gpu) => format!("Hardware: GPU {gpu}{ranks}"),
        None => format!("Hardware: CPU {}{ranks}", crate::sysinfo::cpu_description()),
    };
    vec![
        format!("accel {}", env!("CARGO_PKG_VERSION")),
        format!("candle {}", env!("ACCEL_CANDLE_VERSION")),
        format!("tokenizers {}", env!("ACCEL_TOKENIZERS_VERSION")),
        hardware,
    ]
}

impl ModelCard {
    /// The card of a finished run.
    pub fn for_run(facts: &RunFacts) -> Self {
        let cfg = facts.cfg;
        let dataset = crate::data::glue::parse_name(facts.data_name).map(|task| HubDataset {
            name: "glue".into(),
            config: task.name.into(),
            split: facts.validation_split.into(),
        });
        let model_name = cfg
            .args
            .output_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| cfg.model.name_or_path.clone());
        Self {
            model_name,
            base_model: cfg.model.name_or_path.clone(),
            base_model_on_hub: is_hub_id(&cfg.model.name_or_path),
            dataset,
            task: cfg.task,
            eval_results: facts.eval_results.cloned(),
            log_history: facts.log_history.to_vec(),
            hyperparameters: hyperparameters(cfg, facts.world_size, facts.device),
            framework_versions: framework_versions(facts.world_size, facts.device),
        }
    }

    /// Writes the card into `dir` as README.md (through a temporary file, so a reader never sees
    /// half of it).
    pub fn write(&self, dir: &Path) -> Result<()> {
        crate::io::write_atomically(&dir.join(MODEL_CARD_FILE), self.render().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_are_written_as_python_writes_them() {
        for (v, text) in [
            (5e-5, "5e-05"),
            (3.0, "3.0"),
            (0.8186274509803921, "0.8186274509803921"),
            (1e-8, "1e-08"),
            (0.0001, "0.0001"),
            (1.5e17, "1.5e+17"),
            (0.0, "0.0"),
            (-2.5e-7, "-2.5e-07"),
        ] {
            assert_eq!(python_float(v), text, "{v}");
        }
        assert_eq!(shown(&json!(0.8186274509803921)), "0.8186");
        assert_eq!(shown(&json!(0.5)), "0.5");
        assert_eq!(shown(&json!(459)), "459");
        assert_eq!(shown(&json!(1.0)), "1.0");
        assert_eq!(metric_title("matthews_correlation"), "Matthews Correlation");
        assert_eq!(metric_title("HasAns_exact"), "Hasans Exact");
    }

    fn card() -> ModelCard {
        ModelCard {
            model_name: "mrpc".into(),
            base_model: "sentence-transformers/all-MiniLM-L6-v2".into(),
            base_model_on_hub: true,
            dataset: Some(HubDataset { name: "glue".into(), config: "mrpc".into(), split: "validation".into() }),
            task: Task::SequenceClassification,
            eval_results: Some(Metrics::from([
                ("accuracy".into(), 0.8186274509803921),
                ("f1".into(), 0.8758),
                ("loss".into(), 0.65),
            ])),
            log_history: vec![
                json!({"eval_loss": 0.5, "eval_accuracy": 0.75, "eval_runtime": 2.0, "epoch": 1.0, "step": 10}),
                json!({"loss": 0.61234567, "learning_rate": 1e-5, "epoch": 1.5, "step": 15}),
                json!({"eval_loss": 0.4, "eval_accuracy": 0.8, "eval_runtime": 2.0, "epoch": 2.0, "step": 20}),
            ],
            hyperparameters: vec![("learning_rate".into(), python_float(5e-5))],
            framework_versions: vec!["accel 0.1.0".into()],
        }
    }

    #[test]
    fn the_card_has_the_trainers_sections_and_metadata() {
        let text = card().render();
        let meta = text.split("---\n").nth(1).unwrap();
        assert!(meta.contains("base_model: sentence-transformers/all-MiniLM-L6-v2\n"), "{meta}");
        assert!(meta.contains("datasets:\n- glue\nmetrics:\n- accuracy\n- f1\n"), "{meta}");
        assert!(
            meta.contains("    - name: Accuracy\n      type: accuracy\n      value: 0.8186274509803921\n"),
            "{meta}"
        );
        assert!(meta.contains("      config: mrpc\n      split: validation\n"), "{meta}");
        assert!(text.contains("- Loss: 0.65\n- Accuracy: 0.8186\n- F1: 0.8758\n"), "{text}");
        assert!(text.contains("- learning_rate: 5e-05\n"), "{text}");
        assert!(text.contains("| Training Loss | Epoch | Step | Validation Loss | Accuracy |\n"), "{text}");
        assert!(text.contains("| No log        | 1.0   | 10   | 0.5             | 0.75     |\n"), "{text}");
        assert!(text.contains("| 0.6123        | 2.0   | 20   | 0.4             | 0.8      |\n"), "{text}");
        for section in ["## Training procedure", "### Training results", "### Framework versions\n\n- accel 0.1.0"] {
            assert!(text.contains(section), "{section} missing:\n{text}");
        }
    }

    #[test]
    fn own_data_and_a_local_model_leave_the_hub_fields_out() {
        let mut c = card();
        c.dataset = None;
        c.base_model = "models/my model: v2".into();
        c.base_model_on_hub = false;
        c.model_name = "yes".into();
        let meta = c.metadata();
        assert!(!meta.contains("base_model") && !meta.contains("datasets"), "{meta}");
        assert!(meta.contains("- name: \"yes\"\n  results: []\n"), "a name YAML reads as a boolean is quoted: {meta}");
        assert!(c.render().contains("fine-tuned version of `models/my model: v2` on the user's own data."));
    }
}
