//! The GLUE task registry and its readers: GLUE's local files (Microsoft's raw MRPC files, GLUE's
//! TSVs) and the hub's parquet copy (`nyu-mll/glue`), both built into the splits Hugging Face builds.
//!
//! Adding a GLUE task whose TSVs have a header row is one [`GlueTask`] entry in [`TASKS`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use hf_hub::RepoType;

use super::dataset::DatasetDict;
use super::mapping::{ColumnMapping, Labels};
use super::source::Sources;
use super::table::{Format, RawRow, RawTable, RawValue};
use crate::{Error, Result};

/// The hub repository holding GLUE as parquet files, `<task>/<split>-00000-of-00001.parquet`.
pub const HUB_REPO: &str = "nyu-mll/glue";

/// How a task's local files are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Microsoft's `msr_paraphrase_{train,test}.txt` plus GLUE's `dev_ids.tsv`: validation is the
    /// train-file rows whose ID pair is listed in `dev_ids.tsv`, train is the others, in file order.
    MsrParaphrase,
    /// GLUE's `train.tsv`, `dev.tsv`, `test.tsv`, each with a header row; test has no labels.
    Tsv,
}

/// One GLUE task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlueTask {
    /// The Hugging Face config name (`load_dataset("glue", name)`).
    pub name: &'static str,
    /// The folder GLUE's download script creates.
    pub folder: &'static str,
    /// `(dataset column, local file column)` for each text.
    pub text: &'static [(&'static str, &'static str)],
    /// The local file column holding the label.
    pub label_column: &'static str,
    pub label_names: &'static [&'static str],
    pub layout: Layout,
}

/// Every GLUE task accel can read.
pub const TASKS: &[GlueTask] = &[
    GlueTask {
        name: "mrpc",
        folder: "MRPC",
        text: &[("sentence1", "#1 String"), ("sentence2", "#2 String")],
        label_column: "Quality",
        label_names: &["not_equivalent", "equivalent"],
        layout: Layout::MsrParaphrase,
    },
    GlueTask {
        name: "sst2",
        folder: "SST-2",
        text: &[("sentence", "sentence")],
        label_column: "label",
        label_names: &["negative", "positive"],
        layout: Layout::Tsv,
    },
    GlueTask {
        name: "rte",
        folder: "RTE",
        text: &[("sentence1", "sentence1"), ("sentence2", "sentence2")],
        label_column: "label",
        label_names: &["entailment", "not_entailment"],
        layout: Layout::Tsv,
    },
    GlueTask {
        name: "qnli",
        folder: "QNLI",
        text: &[("question", "question"), ("sentence", "sentence")],
        label_column: "label",
        label_names: &["entailment", "not_entailment"],
        layout: Layout::Tsv,
    },
    GlueTask {
        name: "wnli",
        folder: "WNLI",
        text: &[("sentence1", "sentence1"), ("sentence2", "sentence2")],
        label_column: "label",
        label_names: &["not_entailment", "entailment"],
        layout: Layout::Tsv,
    },
];

/// The split names and the files each is read from.
const MSR_FILES: [&str; 3] = ["msr_paraphrase_train.txt", "msr_paraphrase_test.txt", "dev_ids.tsv"];
const TSV_SPLITS: [(&str, &str); 3] = [("train", "train.tsv"), ("validation", "dev.tsv"), ("test", "test.tsv")];
const SPLITS: [&str; 3] = ["train", "validation", "test"];

/// The task named `name` (`"mrpc"`, `"sst2"`, ...; `"sst-2"` and upper case are accepted).
pub fn task(name: &str) -> Result<&'static GlueTask> {
    let wanted = name.to_ascii_lowercase().replace('-', "");
    TASKS.iter().find(|t| t.name == wanted).ok_or_else(|| {
        let names: Vec<&str> = TASKS.iter().map(|t| t.name).collect();
        Error::Msg(format!("unknown GLUE task {name:?}; known tasks: {}", names.join(", ")))
    })
}

impl GlueTask {
    /// The dataset columns holding the texts.
    pub fn text_columns(&self) -> Vec<String> {
        self.text.iter().map(|(name, _)| name.to_string()).collect()
    }

    pub fn label_names(&self) -> Vec<String> {
        self.label_names.iter().map(|s| s.to_string()).collect()
    }

    fn local_files(&self) -> Vec<&'static str> {
        match self.layout {
            Layout::MsrParaphrase => MSR_FILES.to_vec(),
            Layout::Tsv => TSV_SPLITS.iter().map(|(_, f)| *f).collect(),
        }
    }

    /// Loads the task's splits: from the data directory, else the hub cache, else a download.
    pub fn load(&self, sources: &Sources) -> Result<DatasetDict> {
        let mut looked = Vec::new();
        if let Some(root) = &sources.data_dir {
            for dir in [root.join("glue").join(self.folder), root.join(self.folder), root.clone()] {
                let missing: Vec<&str> = self.local_files().into_iter().filter(|f| !dir.join(f).is_file()).collect();
                if missing.is_empty() {
                    return self.load_local(&dir);
                }
                looked.push(format!("{} (lacks {})", dir.display(), missing.join(", ")));
            }
        } else {
            looked.push("no data directory (set ACCEL_DATA_DIR or data_dir)".into());
        }
        let files: Vec<String> = SPLITS.iter().map(|s| format!("{}/{s}-00000-of-00001.parquet", self.name)).collect();
        let names: Vec<&str> = files.iter().map(String::as_str).collect();
        if let Some(paths) = sources.hub_files(HUB_REPO, RepoType::Dataset, &names, &mut looked) {
            return self.load_parquet(&paths);
        }
        Err(Error::NotFound { what: format!("dataset glue/{}", self.name), looked })
    }

    /// Reads GLUE's local files from `dir`.
    pub fn load_local(&self, dir: &Path) -> Result<DatasetDict> {
        let mapping = ColumnMapping {
            text: self.text.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
            label: self.label_column.to_string(),
            label_names: self.label_names(),
        };
        let mut dict = DatasetDict::new();
        match self.layout {
            Layout::MsrParaphrase => {
                let dev_ids = read_dev_ids(&dir.join(MSR_FILES[2]))?;
                let train = RawTable::read(&dir.join(MSR_FILES[0]), Format::GlueTsv)?;
                let (id1, id2) = (train.column("#1 ID")?, train.column("#2 ID")?);
                let in_dev = |r: &&RawRow| {
                    let key = (r.values[id1].as_str().unwrap_or_default(), r.values[id2].as_str().unwrap_or_default());
                    dev_ids.contains(&(key.0.to_string(), key.1.to_string()))
                };
                dict.insert(
                    "train",
                    mapping.to_dataset(&train, train.rows.iter().filter(|r| !in_dev(r)), Labels::Required)?,
                );
                dict.insert(
                    "validation",
                    mapping.to_dataset(&train, train.rows.iter().filter(in_dev), Labels::Required)?,
                );
                let test = RawTable::read(&dir.join(MSR_FILES[1]), Format::GlueTsv)?;
                dict.insert("test", mapping.to_dataset(&test, &test.rows, Labels::Required)?);
            }
            Layout::Tsv => {
                for (split, file) in TSV_SPLITS {
                    let table = RawTable::read(&dir.join(file), Format::GlueTsv)?;
                    let labels = if split == "test" { Labels::Optional } else { Labels::Required };
                    dict.insert(split, mapping.to_dataset(&table, &table.rows, labels)?);
                }
            }
        }
        Ok(dict)
    }

    /// Reads the hub's parquet files, given in [`SPLITS`] order.
    pub fn load_parquet(&self, paths: &[PathBuf]) -> Result<DatasetDict> {
        let mapping = ColumnMapping {
            text: self.text.iter().map(|(a, _)| (a.to_string(), a.to_string())).collect(),
            label: "label".into(),
            label_names: self.label_names(),
        };
        let mut dict = DatasetDict::new();
        for (split, path) in SPLITS.iter().zip(paths) {
            let table = RawTable::read(path, Format::Parquet)?;
            let idx = table.column("idx")?;
            let mut rows = table.rows.clone();
            // The hub's files carry the original row numbers in `idx`: keep them.
            for row in &mut rows {
                row.index = match &row.values[idx] {
                    RawValue::Int(i) if *i >= 0 => *i as usize,
                    other => {
                        return Err(table.error_at(
                            row,
                            format!("column \"idx\": expected a row number, found {}", other.describe()),
                        ))
                    }
                };
            }
            dict.insert(*split, mapping.to_dataset(&table, &rows, Labels::Optional)?);
        }
        Ok(dict)
    }
}

/// GLUE's `dev_ids.tsv`: one `#1 ID<TAB>#2 ID` pair per line, no header.
fn read_dev_ids(path: &Path) -> Result<HashSet<(String, String)>> {
    let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(text).map_err(|e| {
        let line = e.as_bytes()[..e.utf8_error().valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
        Error::data(path, Some(line), "invalid UTF-8")
    })?;
    let mut ids = HashSet::new();
    for (i, line) in text.trim_start_matches('\u{feff}').lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != 2 {
            return Err(Error::data(
                path,
                Some(i + 1),
                format!("expected 2 tab-separated IDs, found {} fields", fields.len()),
            ));
        }
        ids.insert((fields[0].to_string(), fields[1].to_string()));
    }
    Ok(ids)
}

/// Splits `"glue/mrpc"` (or `"nyu-mll/glue/mrpc"`) into the GLUE task.
pub fn parse_name(name: &str) -> Option<&'static GlueTask> {
    let rest = name.strip_prefix("nyu-mll/").unwrap_or(name);
    let task_name = rest.strip_prefix("glue/").or_else(|| rest.strip_prefix("glue:"))?;
    task(task_name).ok()
}

/// `load_dataset("glue", "mrpc")`: the splits Hugging Face builds for a GLUE task.
pub fn load_dataset(path: &str, name: &str, sources: &Sources) -> Result<DatasetDict> {
    if path != "glue" && path != HUB_REPO {
        return Err(Error::Msg(format!(
            "unknown dataset {path:?}: only \"glue\" is built in; use data files for others"
        )));
    }
    task(name)?.load(sources)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_names_are_forgiving() {
        assert_eq!(task("SST-2").unwrap().name, "sst2");
        assert_eq!(parse_name("glue/mrpc").unwrap().name, "mrpc");
        assert!(parse_name("mrpc").is_none());
        let err = task("nope").unwrap_err().to_string();
        assert!(err.contains("mrpc") && err.contains("sst2"), "{err}");
    }

    #[test]
    fn tsv_tasks_read_header_files_and_unlabelled_test() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("glue/RTE");
        std::fs::create_dir_all(&dir).unwrap();
        let header = "index\tsentence1\tsentence2\tlabel\n";
        std::fs::write(dir.join("train.tsv"), format!("{header}0\ta\tb\tnot_entailment\n1\tc\td\tentailment\n"))
            .unwrap();
        std::fs::write(dir.join("dev.tsv"), format!("{header}0\te\tf\tentailment\n")).unwrap();
        std::fs::write(dir.join("test.tsv"), "index\tsentence1\tsentence2\n0\tg\th\n").unwrap();
        let sources = Sources { data_dir: Some(d.path().into()), ..Sources::isolated(d.path().join("hub")) };
        let dd = load_dataset("glue", "rte", &sources).unwrap();
        assert_eq!(dd.split("train").unwrap().ints("label").unwrap(), [1, 0]);
        assert_eq!(dd.split("test").unwrap().ints("label").unwrap(), [-1]);
        assert_eq!(dd.split("validation").unwrap().strings("sentence2").unwrap(), ["f"]);
    }

    #[test]
    fn missing_task_names_every_place_looked() {
        let d = tempfile::tempdir().unwrap();
        let sources = Sources { data_dir: Some(d.path().into()), ..Sources::isolated(d.path().join("hub")) };
        let err = load_dataset("glue", "wnli", &sources).unwrap_err().to_string();
        assert!(err.contains("glue/WNLI") && err.contains("datasets--nyu-mll--glue"), "{err}");
        assert!(err.contains("HF_HUB_OFFLINE") && !err.contains('\n'), "{err}");
    }
}
