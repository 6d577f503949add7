//! The resolved config of a run, each value with where it came from: its default, a line of the
//! config file, a `--set`, a flag, the environment or Slurm (`accel config --print`,
//! `accel train --print-config`). Precedence, lowest first: default, environment and Slurm (only
//! for keys nothing else set: `ACCEL_DATA_DIR` for `data.data_dir`, `SLURM_NTASKS` for
//! `launch.nproc`), the file, `--set` in order, the flags.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::args::{FlagValue, TrainConfig};
use super::template::{fields, TaskKey};
use crate::{config, Error, Result};

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File {
        path: PathBuf,
        line: usize,
    },
    /// The `--set key=value` that set it, as typed.
    Set(String),
    /// The flag that set it (`--learning-rate`).
    Flag(&'static str),
    /// The variable that supplied it (`ACCEL_DATA_DIR`).
    Environment(&'static str),
    /// What the Slurm allocation said (`SLURM_NTASKS`).
    Slurm(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => write!(f, "default"),
            Self::File { path, line } => write!(f, "{}:{line}", path.display()),
            Self::Set(assignment) => write!(f, "--set {assignment}"),
            Self::Flag(flag) => write!(f, "{flag}"),
            Self::Environment(var) => write!(f, "environment {var}"),
            Self::Slurm(why) => write!(f, "Slurm {why}"),
        }
    }
}

/// One key of the resolved config.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// `""` for the top level, else `data`, `model` or `launch`.
    pub section: &'static str,
    pub key: String,
    /// None when unset.
    pub value: Option<toml::Value>,
    pub source: Source,
}

impl Entry {
    /// The dotted key (`data.max_length`).
    pub fn dotted(&self) -> String {
        if self.section.is_empty() {
            self.key.clone()
        } else {
            format!("{}.{}", self.section, self.key)
        }
    }
}

/// What the process's surroundings supply: variables by name.
pub struct Surroundings<'a> {
    pub var: &'a dyn Fn(&str) -> Option<String>,
}

/// The config that `path`, `overrides` and `flags` make (as `accel train` loads it), and each of its
/// keys with its source.
pub fn resolve(
    path: Option<&Path>,
    overrides: &[String],
    flags: &[FlagValue],
    around: &Surroundings,
) -> Result<(TrainConfig, Vec<Entry>)> {
    let cfg = TrainConfig::load_with(path, overrides, flags)?;
    let lines = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            config::key_lines(&text).unwrap_or_default()
        }
        None => HashMap::new(),
    };
    let set: Vec<(String, &String)> =
        overrides.iter().map(|a| config::parse_assignment(a).map(|(key, _)| (key, a))).collect::<Result<_>>()?;
    let source_of = |dotted: &str| -> Source {
        if let Some(flag) = flags.iter().rev().find(|f| f.key == dotted) {
            return Source::Flag(flag.flag);
        }
        let covers = |key: &str| key == dotted || dotted.strip_prefix(key).is_some_and(|rest| rest.starts_with('.'));
        if let Some((_, assignment)) = set.iter().rev().find(|(key, _)| covers(key)) {
            return Source::Set(assignment.to_string());
        }
        match lines.get(dotted) {
            Some(&line) => Source::File { path: path.expect("lines come from the file").to_path_buf(), line },
            None => Source::Default,
        }
    };
    let mut entries = values(&cfg)?;
    for entry in &mut entries {
        entry.source = source_of(&entry.dotted());
    }
    fill_from_surroundings(&mut entries, around);
    Ok((cfg, entries))
}

/// Every key of `cfg` with its value, in the print's order (sources left at `Default`).
pub fn values(cfg: &TrainConfig) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut add = |section: &'static str, values: Vec<(String, Option<toml::Value>)>| {
        entries.extend(values.into_iter().map(|(key, value)| Entry { section, key, value, source: Source::Default }));
    };
    add("", fields("", &TaskKey { task: cfg.task })?);
    add("", fields("", &cfg.args)?);
    add("data", fields("data", &cfg.data)?);
    add("model", fields("model", &cfg.model)?);
    add("launch", fields("launch", &cfg.launch)?);
    Ok(entries)
}

/// The keys that are set, as tracking parameters: `data.dataset` -> `glue/mrpc`. Strings are
/// bare, numbers and booleans spelled as the Trainer's (Python's) parameters are (`5e-05`,
/// `True`), so that runs of both compare; lists and tables as TOML writes them.
pub fn parameters(cfg: &TrainConfig) -> Result<Vec<(String, String)>> {
    use super::model_card::python_float;
    Ok(values(cfg)?
        .into_iter()
        .filter_map(|e| {
            let value = match e.value.as_ref()? {
                toml::Value::String(s) => s.clone(),
                toml::Value::Float(f) => python_float(*f),
                toml::Value::Boolean(b) => if *b { "True" } else { "False" }.to_string(),
                other => other.to_string(),
            };
            Some((e.dotted(), value))
        })
        .collect())
}

/// The values that the environment or Slurm supply where nothing else set them.
fn fill_from_surroundings(entries: &mut [Entry], around: &Surroundings) {
    let unset = |entries: &[Entry], dotted: &str| {
        entries.iter().any(|e| e.dotted() == dotted && e.value.is_none() && e.source == Source::Default)
    };
    let mut supplied: Vec<(&str, toml::Value, Source)> = Vec::new();
    if let Some(dir) = (around.var)("ACCEL_DATA_DIR").filter(|d| !d.is_empty()) {
        supplied.push(("data.data_dir", dir.into(), Source::Environment("ACCEL_DATA_DIR")));
    }
    // `accel launch` takes an allocation's tasks as its ranks when neither flag nor file says.
    if unset(entries, "launch.hostfile") {
        if let Some(n) = (around.var)("SLURM_NTASKS").and_then(|v| v.trim().parse::<i64>().ok()) {
            supplied.push(("launch.nproc", n.into(), Source::Slurm("SLURM_NTASKS")));
        }
    }
    for (dotted, value, source) in supplied {
        if unset(entries, dotted) {
            let entry = entries.iter_mut().find(|e| e.dotted() == dotted).expect("the key is one of the config's");
            entry.value = Some(value);
            entry.source = source;
        }
    }
}

/// The entries as a TOML config (it loads back as the same run), each value followed by its
/// source, unset keys commented out.
pub fn render(entries: &[Entry]) -> String {
    let mut out = String::from("# The resolved config: each value and where it came from.\n");
    let mut section = "";
    for entry in entries {
        if entry.section != section {
            section = entry.section;
            out.push_str(&format!("\n[{section}]\n"));
        }
        let line = match &entry.value {
            Some(v) => format!("{} = {v}", entry.key),
            None => format!("# {} (unset)", entry.key),
        };
        out.push_str(&format!("{line:<44} # {}\n", entry.source));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries_of(text: &str, overrides: &[&str], flags: &[FlagValue], vars: &[(&str, &str)]) -> Vec<Entry> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, text).unwrap();
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let var = |k: &str| vars.get(k).cloned();
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        let around = Surroundings { var: &var };
        resolve(Some(&path), &overrides, flags, &around).unwrap().1
    }

    fn find<'a>(entries: &'a [Entry], dotted: &str) -> &'a Entry {
        entries.iter().find(|e| e.dotted() == dotted).unwrap()
    }

    #[test]
    fn each_value_names_its_source_and_later_sources_win() {
        let text = "learning_rate = 2e-5\nseed = 1\n\n[data]\ndataset = \"glue/mrpc\"\nmax_length = 64\n";
        let flags = [FlagValue::new("learning_rate", "--learning-rate", 1e-4).unwrap()];
        let e = entries_of(text, &["seed=7", "data.max_length=32"], &flags, &[("ACCEL_DATA_DIR", "/d")]);
        let lr = find(&e, "learning_rate");
        assert_eq!((lr.value.clone(), lr.source.clone()), (Some(1e-4.into()), Source::Flag("--learning-rate")));
        assert_eq!(find(&e, "seed").source, Source::Set("seed=7".into()));
        assert_eq!(find(&e, "data.max_length").value, Some(32.into()));
        let dataset = find(&e, "data.dataset");
        assert!(matches!(&dataset.source, Source::File { line: 5, .. }), "{:?}", dataset.source);
        assert_eq!(find(&e, "weight_decay").source, Source::Default);
        assert_eq!(find(&e, "data.data_dir").source, Source::Environment("ACCEL_DATA_DIR"));
        assert_eq!(find(&e, "data.text_columns").value, None);
        // The file's data_dir wins over the environment's.
        let e = entries_of("[data]\ndata_dir = \"/mine\"\n", &[], &[], &[("ACCEL_DATA_DIR", "/d")]);
        assert_eq!(find(&e, "data.data_dir").value, Some("/mine".into()));
    }

    #[test]
    fn slurm_supplies_the_launch_where_nothing_else_does() {
        let e = entries_of("", &[], &[], &[("SLURM_NTASKS", "4"), ("RAYON_NUM_THREADS", "3")]);
        assert_eq!(find(&e, "launch.nproc").source, Source::Slurm("SLURM_NTASKS"));
        // The launcher sets its ranks' threads itself (threads_per_rank, default 1).
        assert_eq!(find(&e, "launch.threads_per_rank").value, None);
        let e = entries_of("[launch]\nnproc = 2\n", &[], &[], &[("SLURM_NTASKS", "4")]);
        assert_eq!(find(&e, "launch.nproc").value, Some(2.into()));
        let e = entries_of("[launch]\nhostfile = \"h\"\n", &[], &[], &[("SLURM_NTASKS", "4")]);
        assert_eq!(find(&e, "launch.nproc").value, None, "a hostfile's slots are the ranks");
    }

    #[test]
    fn the_print_loads_back_as_the_same_run() {
        let text = "learning_rate = 2e-5\nreport_to = [\"tensorboard\"]\n[data]\ndataset = \"glue/mrpc\"\n";
        let e = entries_of(text, &["launch.mpirun_args=[\"--mca\", \"btl\", \"self\"]"], &[], &[]);
        let printed = render(&e);
        let back = TrainConfig::from_table(printed.parse().unwrap(), "printed").unwrap();
        let original = TrainConfig::from_table(text.parse().unwrap(), "t").unwrap();
        assert_eq!((&back.args, &back.data, &back.model), (&original.args, &original.data, &original.model));
        assert_eq!(back.launch.mpirun_args, ["--mca", "btl", "self"]);
        assert!(printed.contains("# save_total_limit (unset)"), "{printed}");
        let params = parameters(&back).unwrap();
        let param = |k: &str| params.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!(param("data.dataset"), Some("glue/mrpc"));
        assert_eq!(param("learning_rate"), Some("2e-05"));
        assert_eq!(param("load_best_model_at_end"), Some("False"));
        assert_eq!(param("report_to"), Some("[\"tensorboard\"]"));
        assert_eq!(param("save_total_limit"), None, "unset keys are not parameters");
    }
}
