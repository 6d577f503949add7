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
