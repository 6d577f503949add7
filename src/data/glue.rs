//! The GLUE task registry and its readers: GLUE's local files (Microsoft's raw MRPC files, GLUE's
//! TSVs) and the hub's parquet copy (`nyu-mll/glue`), both built into the splits Hugging Face builds.
//!
//! Adding a GLUE task whose TSVs have a header row is one [`GlueTask`] entry in [`TASKS`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use hf_hub::RepoType;

use super::columns::{ColumnMapping, Labels};
use super::dataset::DatasetDict;
use super::source::Sources;
use super::table::{RawRow, RawTable, RawValue};
use crate::config::FileFormat;
use crate::{Error, Result};

/// The hub repository holding GLUE as parquet files, `<task>/<split>-00000-of-00001.parquet`.
pub const HUB_REPO: &str = "nyu-mll/glue";

/// How a task's local files are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Microsoft's `msr_paraphrase_{train,test}.txt` plus GLUE's `dev_ids.tsv`: validation is the
    /// train-file rows whose ID pair is listed in `dev_ids.tsv`, train is the others, in file order.
    MsrParaphrase,
    /// GLUE's TSVs, one per split (`(split, file)`), each with a header row; test splits have no
    /// labels.
    Tsv(&'static [(&'static str, &'static str)]),
    /// CoLA: `train.tsv` and `dev.tsv` without a header row (these columns), `test.tsv` with one.
    HeaderlessTsv(&'static [&'static str]),
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
    /// The class names; empty for a regression task (STS-B's similarity score).
    pub label_names: &'static [&'static str],
    pub layout: Layout,
}

/// GLUE's usual three files.
const TSV_SPLITS: &[(&str, &str)] = &[("train", "train.tsv"), ("validation", "dev.tsv"), ("test", "test.tsv")];

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
        layout: Layout::Tsv(TSV_SPLITS),
    },
    GlueTask {
        name: "cola",
        folder: "CoLA",
        text: &[("sentence", "sentence")],
        label_column: "label",
        label_names: &["unacceptable", "acceptable"],
        layout: Layout::HeaderlessTsv(&["source", "label", "original_label", "sentence"]),
    },
    GlueTask {
        name: "qqp",
        folder: "QQP",
        text: &[("question1", "question1"), ("question2", "question2")],
        label_column: "is_duplicate",
        label_names: &["not_duplicate", "duplicate"],
        layout: Layout::Tsv(TSV_SPLITS),
    },
    GlueTask {
        name: "stsb",
        folder: "STS-B",
        text: &[("sentence1", "sentence1"), ("sentence2", "sentence2")],
        label_column: "score",
        label_names: &[],
        layout: Layout::Tsv(TSV_SPLITS),
    },
    GlueTask {
        name: "mnli",
        folder: "MNLI",
        text: &[("premise", "sentence1"), ("hypothesis", "sentence2")],
        label_column: "gold_label",
        label_names: &["entailment", "neutral", "contradiction"],
        layout: Layout::Tsv(&[
            ("train", "train.tsv"),
            ("validation_matched", "dev_matched.tsv"),
            ("validation_mismatched", "dev_mismatched.tsv"),
            ("test_matched", "test_matched.tsv"),
            ("test_mismatched", "test_mismatched.tsv"),
        ]),
    },
    GlueTask {
        name: "qnli",
        folder: "QNLI",
        text: &[("question", "question"), ("sentence", "sentence")],
        label_column: "label",
        label_names: &["entailment", "not_entailment"],
        layout: Layout::Tsv(TSV_SPLITS),
    },
    GlueTask {
        name: "rte",
        folder: "RTE",
        text: &[("sentence1", "sentence1"), ("sentence2", "sentence2")],
        label_column: "label",
        label_names: &["entailment", "not_entailment"],
        layout: Layout::Tsv(TSV_SPLITS),
    },
    GlueTask {
        name: "wnli",
        folder: "WNLI",
        text: &[("sentence1", "sentence1"), ("sentence2", "sentence2")],
        label_column: "label",
        label_names: &["not_entailment", "entailment"],
        layout: Layout::Tsv(TSV_SPLITS),
    },
];

/// The files of Microsoft's MRPC layout.
const MSR_FILES: [&str; 3] = ["msr_paraphrase_train.txt", "msr_paraphrase_test.txt", "dev_ids.tsv"];

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

    /// Whether the label is a number to predict rather than a class.
    pub fn is_regression(&self) -> bool {
        self.label_names.is_empty()
    }

    /// The split names Hugging Face gives this task, in order.
    pub fn splits(&self) -> Vec<&'static str> {
        self.split_files().iter().map(|(s, _)| *s).collect()
    }

    /// `(split, file)` of each split; for MRPC, whose splits come from other files, the names only.
    fn split_files(&self) -> &'static [(&'static str, &'static str)] {
        match self.layout {
            Layout::Tsv(splits) => splits,
            Layout::MsrParaphrase | Layout::HeaderlessTsv(_) => TSV_SPLITS,
        }
    }

    /// The validation splits, the first being the one that picks the best model; each other's
    /// metrics are logged with a suffix (`run_glue`'s `_mm` for MNLI's mismatched split).
    pub fn eval_splits(&self) -> Vec<(String, String)> {
        self.splits()
            .into_iter()
            .filter(|s| s.starts_with("validation"))
            .enumerate()
            .map(|(i, s)| {
                let suffix = match (i, s) {
                    (0, _) => String::new(),
                    (_, "validation_mismatched") => "_mm".to_string(),
                    (_, other) => format!("_{}", other.trim_start_matches("validation_")),
                };
                (s.to_string(), suffix)
            })
            .collect()
    }

    fn local_files(&self) -> Vec<&'static str> {
        match self.layout {
            Layout::MsrParaphrase => MSR_FILES.to_vec(),
            Layout::Tsv(_) | Layout::HeaderlessTsv(_) => self.split_files().iter().map(|(_, f)| *f).collect(),
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
        let files: Vec<String> =
            self.splits().iter().map(|s| format!("{}/{s}-00000-of-00001.parquet", self.name)).collect();
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
            regression: self.is_regression(),
        };
        let mut dict = DatasetDict::new();
        match self.layout {
            Layout::MsrParaphrase => {
                let dev_ids = read_dev_ids(&dir.join(MSR_FILES[2]))?;
                let train = RawTable::read(&dir.join(MSR_FILES[0]), FileFormat::GlueTsv)?;
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
                let test = RawTable::read(&dir.join(MSR_FILES[1]), FileFormat::GlueTsv)?;
                dict.insert("test", mapping.to_dataset(&test, &test.rows, Labels::Required)?);
            }
            Layout::Tsv(_) | Layout::HeaderlessTsv(_) => {
                for (split, file) in self.split_files() {
                    let test = split.starts_with("test");
                    // CoLA's test file has a header row, its train and dev files do not.
                    let columns = match self.layout {
                        Layout::HeaderlessTsv(columns) if !test => Some(columns),
                        _ => None,
                    };
                    let table = RawTable::read_glue_task_tsv(&dir.join(file), columns)?;
                    let labels = if test { Labels::Optional } else { Labels::Required };
                    dict.insert(*split, mapping.to_dataset(&table, whole_rows(&table, &mapping), labels)?);
                }
            }
        }
        Ok(dict)
    }

    /// Reads the hub's parquet files, given in [`GlueTask::splits`] order.
    pub fn load_parquet(&self, paths: &[PathBuf]) -> Result<DatasetDict> {
        let mapping = ColumnMapping {
            text: self.text.iter().map(|(a, _)| (a.to_string(), a.to_string())).collect(),
            label: "label".into(),
            label_names: self.label_names(),
            regression: self.is_regression(),
        };
        // The hub's test splits carry -1 for "no label", which a regression would read as a score
        // (a class id of -1 already reads as unlabelled).
        let unlabelled = ColumnMapping { label: String::new(), ..mapping.clone() };
        let mut dict = DatasetDict::new();
        for (split, path) in self.splits().into_iter().zip(paths) {
            let mapping = if self.is_regression() && split.starts_with("test") { &unlabelled } else { &mapping };
            let table = RawTable::read(path, FileFormat::Parquet)?;
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
            dict.insert(split, mapping.to_dataset(&table, &rows, Labels::Optional)?);
        }
        Ok(dict)
    }
}

/// The rows of a GLUE TSV that have every column the task reads: Hugging Face's GLUE builder drops
/// the others ("corrupted rows", a few in QQP's train file), keeping the numbering of the rest.
fn whole_rows<'a>(table: &'a RawTable, mapping: &ColumnMapping) -> impl Iterator<Item = &'a RawRow> {
    let used: Vec<usize> = mapping
        .text
        .iter()
        .map(|(_, file_column)| file_column.as_str())
        .chain(std::iter::once(mapping.label.as_str()))
        .filter_map(|c| table.column(c).ok())
        .collect();
    table.rows.iter().filter(move |r| used.iter().all(|&c| !matches!(r.values[c], RawValue::Null)))
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

    fn write(dir: &std::path::Path, files: &[(&str, &str)]) {
        std::fs::create_dir_all(dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }

    fn local(d: &tempfile::TempDir, task: &str) -> DatasetDict {
        let sources = Sources { data_dir: Some(d.path().into()), ..Sources::isolated(d.path().join("hub")) };
        load_dataset("glue", task, &sources).unwrap()
    }

    #[test]
    fn cola_reads_headerless_train_and_dev() {
        let d = tempfile::tempdir().unwrap();
        write(
            &d.path().join("glue/CoLA"),
            &[
                ("train.tsv", "gj04\t1\t\tOur friends won't buy this analysis.\nclc95\t0\t*\tThey drank the pub.\n"),
                ("dev.tsv", "gj04\t0\t*\tThe more we study verbs.\n"),
                ("test.tsv", "index\tsentence\n0\tBill whistled past the house.\n"),
            ],
        );
        let dd = local(&d, "cola");
        let train = dd.split("train").unwrap();
        assert_eq!(train.ints("label").unwrap(), [1, 0]);
        assert_eq!(train.strings("sentence").unwrap()[1], "They drank the pub.");
        assert_eq!(dd.split("test").unwrap().ints("label").unwrap(), [-1]);
        assert_eq!(task("cola").unwrap().eval_splits(), [("validation".to_string(), String::new())]);
    }

    #[test]
    fn stsb_is_a_regression_and_qqp_reads_its_columns() {
        let d = tempfile::tempdir().unwrap();
        let header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n";
        write(
            &d.path().join("glue/STS-B"),
            &[
                ("train.tsv", &format!("{header}0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\tAn air plane is taking off.\t5.000\n")),
                ("dev.tsv", &format!("{header}0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man with a hard hat.\tA man wearing a hard hat.\t3.8\n")),
                ("test.tsv", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\n0\tm\tf\ty\t0\tn\tn\ta\tb\n"),
            ],
        );
        let stsb = task("stsb").unwrap();
        assert!(stsb.is_regression());
        let dd = local(&d, "stsb");
        assert_eq!(dd.split("train").unwrap().floats("label").unwrap(), [5.0]);
        assert_eq!(dd.split("validation").unwrap().floats("label").unwrap(), [3.8]);
        assert!(dd.split("test").unwrap().floats("label").unwrap()[0].is_nan());

        let header = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n";
        write(
            &d.path().join("glue/QQP"),
            &[
                // The second row lacks its fields: dropped, as Hugging Face drops it; idx keeps counting.
                (
                    "train.tsv",
                    &format!("{header}1\t3\t4\tHow old?\tWhat age?\t1\n2\t5\t6\tWhy\n3\t7\t8\tWho?\tWhom?\t0\textra\n"),
                ),
                ("dev.tsv", &format!("{header}2\t5\t6\tWhy?\tHow?\t0\n")),
                ("test.tsv", "id\tquestion1\tquestion2\n0\ta?\tb?\n"),
            ],
        );
        let dd = local(&d, "qqp");
        assert_eq!(dd.split("train").unwrap().ints("label").unwrap(), [1, 0]);
        assert_eq!(dd.split("train").unwrap().ints("idx").unwrap(), [0, 2]);
        assert_eq!(dd.split("validation").unwrap().strings("question2").unwrap(), ["How?"]);
    }

    #[test]
    fn mnli_has_matched_and_mismatched_validation() {
        let d = tempfile::tempdir().unwrap();
        let labelled = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label\n";
        let unlabelled = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\n0\t1\t1n\tfiction\tp\th\n";
        write(
            &d.path().join("glue/MNLI"),
            &[
                ("train.tsv", &format!("{labelled}0\t1\t1n\tgov\tThe sky is blue.\tThe sky has a colour.\tentailment\tentailment\n1\t2\t2c\tgov\tIt rains.\tIt is dry.\tcontradiction\tcontradiction\n")),
                ("dev_matched.tsv", &format!("{labelled}0\t1\t1n\tgov\ta\tb\tneutral\tneutral\n")),
                ("dev_mismatched.tsv", &format!("{labelled}0\t1\t1n\tfiction\tc\td\tcontradiction\tcontradiction\n")),
                ("test_matched.tsv", unlabelled),
                ("test_mismatched.tsv", unlabelled),
            ],
        );
        let dd = local(&d, "mnli");
        assert_eq!(dd.split("train").unwrap().ints("label").unwrap(), [0, 2]);
        assert_eq!(dd.split("train").unwrap().strings("premise").unwrap()[0], "The sky is blue.");
        assert_eq!(dd.split("validation_matched").unwrap().ints("label").unwrap(), [1]);
        assert_eq!(dd.split("validation_mismatched").unwrap().ints("label").unwrap(), [2]);
        assert_eq!(dd.split("test_mismatched").unwrap().ints("label").unwrap(), [-1]);
        let eval: Vec<(String, String)> = task("mnli").unwrap().eval_splits();
        assert_eq!(
            eval,
            [("validation_matched".into(), String::new()), ("validation_mismatched".into(), "_mm".into())]
        );
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
