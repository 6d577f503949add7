//! Datasets: GLUE splits exactly as Hugging Face builds them, every source, and bad input.

mod common;

use std::path::Path;

use accel::config::{DataConfig, Quoting};
use accel::data::{self, glue, Cell, Feature, Sources};
use common::{data_dir, local_sources, write_parquet, PqColumn};

fn mrpc() -> accel::data::DatasetDict {
    let tmp = tempfile::tempdir().unwrap();
    data::load_dataset("glue", "mrpc", &local_sources(tmp.path())).unwrap()
}

#[test]
fn mrpc_splits_match_hugging_face() {
    let dd = mrpc();
    assert_eq!(dd.split_names(), ["train", "validation", "test"]);
    let sizes: Vec<usize> = dd.iter().map(|(_, d)| d.num_rows()).collect();
    assert_eq!(sizes, [3668, 408, 1725]);
    let train = dd.split("train").unwrap();
    assert_eq!(train.column_names(), ["sentence1", "sentence2", "label", "idx"]);
    assert_eq!(
        train.feature("label").unwrap(),
        &Feature::ClassLabel { names: vec!["not_equivalent".into(), "equivalent".into()] }
    );
    let row = train.row(0).unwrap();
    assert_eq!(
        row[0].1,
        Cell::Str(
            "Amrozi accused his brother , whom he called \" the witness \" , of deliberately distorting his evidence ."
        )
    );
    assert_eq!(row[2].1, Cell::Int(1));
    assert_eq!(row[3].1, Cell::Int(0));
    assert_eq!(&train.ints("idx").unwrap()[..10], [0, 1, 2, 3, 4, 5, 6, 7, 8, 10]);
    let validation = dd.split("validation").unwrap();
    assert_eq!(&validation.ints("idx").unwrap()[..5], [9, 18, 25, 32, 33]);
    let test = dd.split("test").unwrap();
    assert_eq!(&test.ints("idx").unwrap()[..3], [0, 1, 2]);
    assert!(test.ints("label").unwrap().iter().all(|&l| l == 0 || l == 1), "MRPC's test file is labelled");
    // Label balance is a fact of the corpus: 2474 of 3668 train pairs are paraphrases.
    assert_eq!(train.ints("label").unwrap().iter().filter(|&&l| l == 1).count(), 2474);
}

#[test]
fn mrpc_prints_like_the_course() {
    let text = mrpc().to_string();
    let expected = "DatasetDict({
    train: Dataset({
        features: ['sentence1', 'sentence2', 'label', 'idx'],
        num_rows: 3668
    })
    validation: Dataset({
        features: ['sentence1', 'sentence2', 'label', 'idx'],
        num_rows: 408
    })
    test: Dataset({
        features: ['sentence1', 'sentence2', 'label', 'idx'],
        num_rows: 1725
    })
})";
    assert_eq!(text, expected);
    assert_eq!(
        mrpc().split("train").unwrap().format_features(),
        "{'sentence1': Value('string'), 'sentence2': Value('string'), 'label': ClassLabel(names=['not_equivalent', 'equivalent']), 'idx': Value('int32')}"
    );
}

#[test]
fn sst2_reads_glue_tsvs_with_an_unlabelled_test_split() {
    let tmp = tempfile::tempdir().unwrap();
    let dd = data::load_dataset("glue", "sst2", &local_sources(tmp.path())).unwrap();
    let sizes: Vec<usize> = dd.iter().map(|(_, d)| d.num_rows()).collect();
    assert_eq!(sizes, [67349, 872, 1821]);
    let train = dd.split("train").unwrap();
    assert_eq!(train.column_names(), ["sentence", "label", "idx"]);
    assert_eq!(train.strings("sentence").unwrap()[0], "hide new secretions from the parental units ");
    assert_eq!(train.ints("label").unwrap()[0], 0);
    assert!(dd.split("test").unwrap().ints("label").unwrap().iter().all(|&l| l == -1));
}

/// Writes the hub's layout of `nyu-mll/glue` for MRPC, from the local files.
fn fake_hub_cache(root: &Path) {
    let tmp = tempfile::tempdir().unwrap();
    let local = data::load_dataset("glue", "mrpc", &local_sources(tmp.path())).unwrap();
    let repo = root.join("datasets--nyu-mll--glue");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for (split, ds) in local.iter() {
        let path = repo.join("snapshots").join(commit).join(format!("mrpc/{split}-00000-of-00001.parquet"));
        write_parquet(
            &path,
            &[
                ("sentence1", PqColumn::Utf8(ds.strings("sentence1").unwrap().to_vec())),
                ("sentence2", PqColumn::Utf8(ds.strings("sentence2").unwrap().to_vec())),
                ("label", PqColumn::Int64(ds.ints("label").unwrap().to_vec())),
                ("idx", PqColumn::Int32(ds.ints("idx").unwrap().iter().map(|&i| i as i32).collect())),
            ],
        );
    }
}

#[test]
fn the_hub_cache_gives_the_same_splits_as_the_raw_files() {
    let hub = tempfile::tempdir().unwrap();
    fake_hub_cache(hub.path());
    let from_hub = data::load_dataset("glue", "mrpc", &Sources::isolated(hub.path())).unwrap();
    assert_eq!(from_hub, mrpc());
}

#[test]
fn offline_and_missing_is_one_line_naming_every_place() {
    let tmp = tempfile::tempdir().unwrap();
    let sources = Sources { data_dir: Some(tmp.path().join("nodata")), ..Sources::isolated(tmp.path().join("hub")) };
    let err = data::load_dataset("glue", "mrpc", &sources).unwrap_err().to_string();
    assert!(!err.contains('\n'), "{err}");
    for place in ["nodata/glue/MRPC", "datasets--nyu-mll--glue", "HF_HUB_OFFLINE"] {
        assert!(err.contains(place), "{place} missing from: {err}");
    }
}

fn copy_mrpc(to: &Path) -> std::path::PathBuf {
    let dir = to.join("glue/MRPC");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["msr_paraphrase_train.txt", "msr_paraphrase_test.txt", "dev_ids.tsv"] {
        std::fs::copy(data_dir().join("glue/MRPC").join(f), dir.join(f)).unwrap();
    }
    dir
}

fn corrupt_line(path: &Path, line: usize, replace: impl Fn(&str) -> String) {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<String> =
        text.split('\n').enumerate().map(|(i, l)| if i + 1 == line { replace(l) } else { l.to_string() }).collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

#[test]
fn bad_raw_mrpc_rows_name_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_mrpc(tmp.path());
    let train = dir.join("msr_paraphrase_train.txt");
    let sources = || Sources { data_dir: Some(tmp.path().into()), ..Sources::isolated(tmp.path().join("hub")) };

    corrupt_line(&train, 5, |l| l.rsplit_once('\t').unwrap().0.to_string());
    let err = data::load_dataset("glue", "mrpc", &sources()).unwrap_err().to_string();
    assert!(err.contains("msr_paraphrase_train.txt:5") && err.contains("expected 5"), "{err}");

    copy_mrpc(tmp.path());
    corrupt_line(&train, 7, |l| format!("7{}", &l[1..]));
    let err = data::load_dataset("glue", "mrpc", &sources()).unwrap_err().to_string();
    assert!(err.contains("msr_paraphrase_train.txt:7") && err.contains("outside the label set"), "{err}");

    copy_mrpc(tmp.path());
    let mut bytes = std::fs::read(&train).unwrap();
    let at = bytes.iter().enumerate().filter(|(_, &b)| b == b'\n').nth(2).unwrap().0 + 3;
    bytes[at] = 0xff;
    std::fs::write(&train, bytes).unwrap();
    let err = data::load_dataset("glue", "mrpc", &sources()).unwrap_err().to_string();
    assert!(err.contains("msr_paraphrase_train.txt:4") && err.contains("UTF-8"), "{err}");

    copy_mrpc(tmp.path());
    std::fs::write(dir.join("msr_paraphrase_test.txt"), "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n").unwrap();
    let err = data::load_dataset("glue", "mrpc", &sources()).unwrap_err().to_string();
    assert!(err.contains("msr_paraphrase_test.txt") && err.contains("empty"), "{err}");
}

fn files_config(dir: &Path, train: &str, ext: &str) -> DataConfig {
    let train_path = dir.join(format!("train.{ext}"));
    std::fs::write(&train_path, train).unwrap();
    DataConfig {
        train_file: Some(train_path),
        text_columns: Some(vec!["premise".into(), "hypothesis".into()]),
        label_names: Some(vec!["no".into(), "yes".into()]),
        ..DataConfig::default()
    }
}

#[test]
fn a_users_pair_task_needs_no_code() {
    let tmp = tempfile::tempdir().unwrap();
    let none = Sources::isolated(tmp.path());
    let cfg = files_config(tmp.path(), "premise,hypothesis,label\n\"A, b\",c,yes\nd,e,0\n", "csv");
    let task = data::load_task(&cfg, &none).unwrap();
    let train = task.splits.split("train").unwrap();
    assert_eq!(task.text_columns, ["premise", "hypothesis"]);
    assert_eq!(train.strings("premise").unwrap(), ["A, b", "d"]);
    assert_eq!(train.ints("label").unwrap(), [1, 0]);

    let mut cfg =
        files_config(tmp.path(), "{\"premise\": \"x\", \"hypothesis\": \"y\", \"label\": \"yes\"}\n", "jsonl");
    cfg.validation_file = Some(tmp.path().join("dev.parquet"));
    write_parquet(
        cfg.validation_file.as_ref().unwrap(),
        &[
            ("premise", PqColumn::Utf8(vec!["p".into()])),
            ("hypothesis", PqColumn::Utf8(vec!["h".into()])),
            ("label", PqColumn::Int64(vec![0])),
        ],
    );
    let task = data::load_task(&cfg, &none).unwrap();
    assert_eq!(task.splits.split("train").unwrap().ints("label").unwrap(), [1]);
    assert_eq!(task.splits.split("validation").unwrap().strings("hypothesis").unwrap(), ["h"]);

    // Without label names, the sorted distinct train labels are the classes (as run_glue does).
    let mut cfg = files_config(tmp.path(), "premise\thypothesis\tlabel\na\tb\tpos\nc\td\tneg\n", "tsv");
    cfg.label_names = None;
    let task = data::load_task(&cfg, &none).unwrap();
    assert_eq!(task.label_names, ["neg", "pos"]);
    assert_eq!(task.splits.split("train").unwrap().ints("label").unwrap(), [1, 0]);
}

#[test]
fn bad_user_files_name_file_line_and_expectation() {
    let tmp = tempfile::tempdir().unwrap();
    let none = Sources::isolated(tmp.path());
    let load =
        |body: &str, ext: &str| data::load_task(&files_config(tmp.path(), body, ext), &none).unwrap_err().to_string();

    let err = load("premise,hypothesis,label\na,b,yes\nc,d\n", "csv");
    assert!(err.contains("train.csv:3") && err.contains("expected 3 fields, found 2"), "{err}");
    let err = load("premise,hypothesis,label\na,b,yes\nc,d,maybe\n", "csv");
    assert!(err.contains("train.csv:3") && err.contains("\"maybe\"") && err.contains("[\"no\", \"yes\"]"), "{err}");
    let err = load("premise,hypothesis,label\n", "csv");
    assert!(err.contains("train.csv") && err.contains("empty"), "{err}");
    let err = load("premise,label\na,yes\n", "csv");
    assert!(err.contains("train.csv") && err.contains("missing column \"hypothesis\""), "{err}");
    let err = load("premise,hypothesis,label\na,b,yes\n\u{0}", "csv");
    assert!(err.contains("train.csv:3"), "{err}");
    let err = load(
        "{\"premise\": \"a\", \"hypothesis\": \"b\", \"label\": \"yes\"}\n{\"premise\": \"a\", \"label\": \"yes\"}\n",
        "jsonl",
    );
    assert!(err.contains("train.jsonl:2") && err.contains("\"hypothesis\"") && err.contains("null"), "{err}");
    let path = tmp.path().join("bytes.csv");
    std::fs::write(&path, b"premise,hypothesis,label\na,b,yes\n\xff,b,no\n").unwrap();
    let cfg = DataConfig { train_file: Some(path), ..files_config(tmp.path(), "", "csv") };
    let err = data::load_task(&cfg, &none).unwrap_err().to_string();
    assert!(err.contains("bytes.csv:3") && err.contains("UTF-8"), "{err}");

    // A GLUE-style TSV with an unbalanced quote reads as GLUE's reader reads it; forcing CSV
    // quoting names the line the runaway field began on; an unknown quoting names the key.
    let tsv = "premise\thypothesis\tlabel\n\"quoted start\tb\tyes\nc\td\tno\n";
    let cfg = files_config(tmp.path(), tsv, "tsv");
    let task = data::load_task(&cfg, &none).unwrap();
    assert_eq!(task.splits.split("train").unwrap().strings("premise").unwrap(), ["\"quoted start", "c"]);
    let err = data::load_task(&DataConfig { quoting: Some(Quoting::Csv), ..cfg }, &none).unwrap_err().to_string();
    assert!(err.contains("train.tsv:2") && err.contains("begins on line 2"), "{err}");
    let table: toml::Table = "[data]\nquoting = \"excel\"\n".parse().unwrap();
    let err = accel::config::section::<DataConfig>(&table, "data", "t.toml").unwrap_err().to_string();
    assert!(err.contains("data.quoting") && err.contains("`none`"), "{err}");

    let cfg = DataConfig { dataset: Some("glue/nope".into()), ..DataConfig::default() };
    let err = data::load_task(&cfg, &none).unwrap_err().to_string();
    assert!(err.contains("data.dataset") && err.contains("glue/mrpc"), "{err}");
    assert!(glue::task("sst-2").is_ok());
}

#[test]
fn models_resolve_from_a_folder_a_models_dir_or_the_hub_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = tmp.path().join("hub");
    let snapshot = hub.join("models--someone--tiny-bert/snapshots/abc");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(hub.join("models--someone--tiny-bert/refs")).unwrap();
    std::fs::write(hub.join("models--someone--tiny-bert/refs/main"), "abc").unwrap();
    std::fs::write(snapshot.join("tokenizer.json"), "{}").unwrap();
    let mut sources = Sources::isolated(&hub);
    assert_eq!(sources.resolve_model("someone/tiny-bert", &["tokenizer.json"]).unwrap(), snapshot);
    let err = sources.resolve_model("someone/tiny-bert", &["tokenizer.json", "model.safetensors"]).unwrap_err();
    assert!(err.to_string().contains("models--someone--tiny-bert"), "{err}");

    sources.model_dir = Some(common::models_dir());
    let local = sources.resolve_model("sentence-transformers/all-MiniLM-L6-v2", &["tokenizer.json"]).unwrap();
    assert_eq!(local, common::models_dir().join("all-MiniLM-L6-v2"), "a models folder wins over the hub");
    let direct = common::minilm_dir();
    assert_eq!(sources.resolve_model(direct.to_str().unwrap(), &["config.json"]).unwrap(), direct);
}

#[test]
fn sentences_to_classify_are_read_with_default_or_named_columns() {
    let tmp = tempfile::tempdir().unwrap();
    let jsonl = tmp.path().join("in.jsonl");
    std::fs::write(&jsonl, "{\"text\": \"a b\", \"id\": 1}\n{\"text\": \"c\", \"id\": 2}\n").unwrap();
    let (ds, cols) = data::files::read_texts(&jsonl, &[]).unwrap();
    assert_eq!(cols, ["text"]);
    assert_eq!(ds.strings("text").unwrap(), ["a b", "c"]);
    let csv = tmp.path().join("in.csv");
    std::fs::write(&csv, "premise,hypothesis\nx,y\n").unwrap();
    let err = data::files::read_texts(&csv, &[]).unwrap_err().to_string();
    assert!(err.contains("in.csv") && err.contains("premise"), "{err}");
    let (ds, _) = data::files::read_texts(&csv, &["premise".into(), "hypothesis".into()]).unwrap();
    assert_eq!(ds.strings("hypothesis").unwrap(), ["y"]);
    let err = data::files::read_texts(&jsonl, &["id".into()]).unwrap_err().to_string();
    assert!(err.contains("in.jsonl:1") && err.contains("expected text"), "{err}");
}
