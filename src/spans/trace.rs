//! The Chrome trace of kept spans: trace-event JSON that Perfetto and `chrome://tracing` open, one
//! process per rank and one track per thread, each span a complete event (`"ph": "X"`) with its step
//! (and bucket) in its arguments; the trainer gathers the ranks' files on rank 0, which writes one
//! per rank into `output_dir/trace/` (hosts need not share a filesystem).

use serde_json::{json, Value};

use super::Record;
use crate::Result;

/// The folder under `output_dir` the traces go to.
pub const TRACE_DIR: &str = "trace";

/// `records` of `rank` as trace events, with the names of its process and threads.
pub fn events(rank: usize, records: &[Record]) -> Vec<Value> {
    let mut events =
        vec![json!({"name": "process_name", "ph": "M", "pid": rank, "args": {"name": format!("rank {rank}")}})];
    let mut threads: Vec<usize> = records.iter().map(|r| r.thread).collect();
    threads.sort_unstable();
    threads.dedup();
    for (i, t) in threads.iter().enumerate() {
        let name = if i == 0 { "training".to_string() } else { format!("thread {t}") };
        events.push(json!({"name": "thread_name", "ph": "M", "pid": rank, "tid": t, "args": {"name": name}}));
    }
    for r in records {
        let mut args = json!({"step": r.step});
        if let Some(bucket) = r.arg {
            args["bucket"] = json!(bucket);
        }
        events.push(json!({
            "name": r.name, "cat": "accel", "ph": "X", "ts": r.start_us, "dur": r.dur_us,
            "pid": rank, "tid": r.thread, "args": args,
        }));
    }
    events
}

/// A rank's trace file: its events, as JSON bytes.
pub fn file_bytes(rank: usize, records: &[Record]) -> Result<Vec<u8>> {
    serde_json::to_vec(&json!({"traceEvents": events(rank, records), "displayTimeUnit": "ms"}))
        .map_err(|e| crate::Error::Msg(format!("serializing the trace: {e}")))
}
