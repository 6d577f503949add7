//! TensorBoard event files: TensorFlow's record format (length, masked CRC-32C, payload, masked
//! CRC-32C) holding `Event` protobufs, with scalars named as transformers' `TensorBoardCallback`
//! names them (`train/loss`, `train/learning_rate`, `eval/accuracy`, ...).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;
use serde_json::Value;

use crate::{Error, Result};

// The subset of tensorflow/core/util/event.proto and framework/summary.proto that scalars and text
// need, with the upstream field numbers.

/// `tensorflow.Event`.
#[derive(Clone, PartialEq, Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(string, optional, tag = "3")]
    pub file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value`: a scalar (`simple_value`) or a tensor with plugin metadata (text).
#[derive(Clone, PartialEq, Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
    #[prost(message, optional, tag = "8")]
    pub tensor: Option<TensorProto>,
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
}

/// `tensorflow.SummaryMetadata`.
#[derive(Clone, PartialEq, Message)]
pub struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
}

/// `tensorflow.SummaryMetadata.PluginData`.
#[derive(Clone, PartialEq, Message)]
pub struct PluginData {
    #[prost(string, tag = "1")]
    pub plugin_name: String,
    #[prost(bytes = "vec", tag = "2")]
    pub content: Vec<u8>,
}

/// `tensorflow.TensorProto`, strings only.
#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShape>,
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub string_val: Vec<Vec<u8>>,
}

/// `tensorflow.TensorShapeProto`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorShape {
    #[prost(message, repeated, tag = "2")]
    pub dim: Vec<TensorDim>,
}

/// `tensorflow.TensorShapeProto.Dim`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorDim {
    #[prost(int64, tag = "1")]
    pub size: i64,
}

/// `tensorflow.DataType.DT_STRING`.
const DT_STRING: i32 = 7;

/// Writes one event file, as PyTorch's `SummaryWriter(log_dir)` does.
#[derive(Debug)]
pub struct SummaryWriter {
    path: PathBuf,
    file: File,
}

impl SummaryWriter {
    /// Creates `log_dir` and a new event file in it, named as TensorFlow names them.
    pub fn create(log_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(log_dir).map_err(|e| Error::io(log_dir, e))?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let name = format!("events.out.tfevents.{}.{}.{}.0", now.as_secs(), hostname(), std::process::id());
        let path = log_dir.join(name);
        let file = File::create_new(&path).map_err(|e| Error::io(&path, e))?;
        let mut writer = Self { path, file };
        writer.write_event(Event { file_version: Some("brain.Event:2".into()), ..event(0) })?;
        Ok(writer)
    }

    /// The event file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A scalar `tag` at `step`.
    pub fn add_scalar(&mut self, tag: &str, value: f64, step: i64) -> Result<()> {
        let value = SummaryValue { tag: tag.into(), simple_value: Some(value as f32), ..Default::default() };
        self.write_event(Event { summary: Some(Summary { value: vec![value] }), ..event(step) })
    }

    /// A text `tag` at `step`, shown in TensorBoard's Text tab (as `SummaryWriter.add_text`).
    pub fn add_text(&mut self, tag: &str, text: &str, step: i64) -> Result<()> {
        let value = SummaryValue {
            tag: format!("{tag}/text_summary"),
            tensor: Some(TensorProto {
                dtype: DT_STRING,
                tensor_shape: Some(TensorShape { dim: vec![TensorDim { size: 1 }] }),
                string_val: vec![text.as_bytes().to_vec()],
            }),
            metadata: Some(SummaryMetadata {
                plugin_data: Some(PluginData { plugin_name: "text".into(), content: Vec::new() }),
            }),
            ..Default::default()
        };
        self.write_event(Event { summary: Some(Summary { value: vec![value] }), ..event(step) })
    }

    /// Writes every number of a logged record as a scalar under the Trainer's names: `eval_x` as
    /// `eval/x`, `test_x` as `test/x`, anything else as `train/x`; `step` is the x axis.
    pub fn add_record(&mut self, record: &Value) -> Result<()> {
        let Some(map) = record.as_object() else { return Ok(()) };
        let step = map.get("step").and_then(Value::as_i64).unwrap_or(0);
        for (key, value) in map {
            let Some(v) = value.as_f64() else { continue };
            if key == "step" {
                continue;
            }
            self.add_scalar(&trainer_tag(key), v, step)?;
        }
        self.file.flush().map_err(|e| Error::io(&self.path, e))
    }

    fn write_event(&mut self, event: Event) -> Result<()> {
        let bytes = record(&event.encode_to_vec());
        self.file.write_all(&bytes).map_err(|e| Error::io(&self.path, e))
    }
}

/// transformers' `rewrite_logs`: the tag TensorBoard shows for a logged key.
pub fn trainer_tag(key: &str) -> String {
    if let Some(rest) = key.strip_prefix("eval_") {
        format!("eval/{rest}")
    } else if let Some(rest) = key.strip_prefix("test_") {
        format!("test/{rest}")
    } else {
        format!("train/{key}")
    }
}

/// `output_dir/runs/<Mon><DD>_<HH-MM-SS>_<host>`: transformers' default `logging_dir` (UTC).
pub fn default_logging_dir(output_dir: &Path) -> PathBuf {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    output_dir.join("runs").join(format!("{}_{}", timestamp(secs), hostname()))
}

fn event(step: i64) -> Event {
    let wall_time = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    Event { wall_time, step, file_version: None, summary: None }
}

/// One record of TensorFlow's record format around `data`.
fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// The record format's masked CRC-32C.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Reads back the events of a file this module wrote, checking every checksum.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut events = Vec::new();
    let mut at = 0;
    let bad = |at: usize, what: &str| Error::data(path, None, format!("{what} at byte {at}"));
    while at < bytes.len() {
        let header = bytes.get(at..at + 12).ok_or_else(|| bad(at, "truncated record header"))?;
        let len = u64::from_le_bytes(header[..8].try_into().expect("8 bytes")) as usize;
        if masked_crc(&header[..8]) != u32::from_le_bytes(header[8..12].try_into().expect("4 bytes")) {
            return Err(bad(at, "length checksum mismatch"));
        }
        let end =
            (at + 12).checked_add(len).filter(|&e| e <= bytes.len()).ok_or_else(|| bad(at, "truncated record"))?;
        let data = &bytes[at + 12..end];
        let crc = bytes.get(end..end + 4).ok_or_else(|| bad(at, "truncated record checksum"))?;
        if masked_crc(data) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(bad(at, "data checksum mismatch"));
        }
        events.push(Event::decode(data).map_err(|e| bad(at, &format!("not an Event ({e})")))?);
        at += 16 + len;
    }
    Ok(events)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// `%b%d_%H-%M-%S` of a Unix time, in UTC.
fn timestamp(secs: u64) -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's days-to-civil conversion.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    format!("{}{day:02}_{:02}-{:02}-{:02}", MONTHS[(month - 1) as usize], rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masked_crc_matches_tensorflow() {
        // TensorFlow's crc32c test vector: crc32c("123456789") = 0xe3069283.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        // Masked: ((crc >> 15) | (crc << 17)) + 0xa282ead8, worked out by hand.
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
    }

    #[test]
    fn records_are_written_under_trainer_names_and_read_back() {
        let d = tempfile::tempdir().unwrap();
        let mut w = SummaryWriter::create(d.path()).unwrap();
        w.add_record(&json!({"loss": 0.5, "learning_rate": 2e-5, "epoch": 0.5, "step": 10})).unwrap();
        w.add_record(&json!({"eval_accuracy": 0.75, "eval_loss": 0.4, "step": 20})).unwrap();
        w.add_text("args", "{\"seed\": 42}", 0).unwrap();
        let events = read_events(w.path()).unwrap();
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
        let scalars: Vec<(String, f32, i64)> = events
            .iter()
            .filter_map(|e| e.summary.as_ref().map(|s| (&s.value[0], e.step)))
            .filter_map(|(v, step)| v.simple_value.map(|x| (v.tag.clone(), x, step)))
            .collect();
        assert_eq!(
            scalars,
            [
                ("train/loss".to_string(), 0.5, 10),
                ("train/learning_rate".to_string(), 2e-5, 10),
                ("train/epoch".to_string(), 0.5, 10),
                ("eval/accuracy".to_string(), 0.75, 20),
                ("eval/loss".to_string(), 0.4, 20),
            ]
        );
        let text = events.last().unwrap().summary.as_ref().unwrap().value[0].clone();
        assert_eq!(text.tag, "args/text_summary");
        assert_eq!(text.tensor.unwrap().string_val, [b"{\"seed\": 42}".to_vec()]);
        let name = w.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("events.out.tfevents."), "{name}");

        // A flipped byte is caught.
        let mut bytes = std::fs::read(w.path()).unwrap();
        bytes[30] ^= 1;
        std::fs::write(w.path(), bytes).unwrap();
        assert!(read_events(w.path()).unwrap_err().to_string().contains("checksum"));
    }

    #[test]
    fn default_logging_dir_is_transformers_layout() {
        assert_eq!(timestamp(0), "Jan01_00-00-00");
        // 2024-02-29 13:05:09 UTC.
        assert_eq!(timestamp(1_709_211_909), "Feb29_13-05-09");
        let dir = default_logging_dir(Path::new("out"));
        assert_eq!(dir.parent().unwrap(), Path::new("out/runs"));
    }
}
