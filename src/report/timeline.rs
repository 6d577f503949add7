//! One step's timeline as a PNG, drawn from a run's traces (`output_dir/trace/rank-N.json`): for
//! each rank a lane for the step and a lane for its phases (data, forward, backward, the
//! all-reduce's wait and buckets, clip, optimizer), coloured by phase, against milliseconds from
//! that rank's own step start (ranks' clocks are their own processes').

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::plot::{encode_png, register_font, COLOURS, FONT};
use crate::{Error, Result};

/// One span read back from a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    pub step: u64,
    pub bucket: Option<u64>,
    /// Microseconds.
    pub ts: f64,
    pub dur: f64,
}

/// The complete events of every `rank-N.json` in `dir`, by rank.
pub fn read_traces(dir: &Path) -> Result<Vec<(usize, Vec<Event>)>> {
    let mut files: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let rank = p.file_name()?.to_str()?.strip_prefix("rank-")?.strip_suffix(".json")?.parse().ok()?;
            Some((rank, p))
        })
        .collect();
    if files.is_empty() {
        return Err(Error::Msg(format!("{}: no rank-N.json traces (train with profile = true)", dir.display())));
    }
    files.sort();
    files
        .into_iter()
        .map(|(rank, path)| {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::data(&path, Some(e.line()), format!("not a trace: {e}")))?;
            let events = json["traceEvents"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["ph"] == "X")
                .map(|e| Event {
                    name: e["name"].as_str().unwrap_or("?").to_string(),
                    step: e["args"]["step"].as_u64().unwrap_or(0),
                    bucket: e["args"]["bucket"].as_u64(),
                    ts: e["ts"].as_f64().unwrap_or(0.0),
                    dur: e["dur"].as_f64().unwrap_or(0.0),
                })
                .collect();
            Ok((rank, events))
        })
        .collect()
}

/// The step drawn when none is asked for: rank 0's step of median duration.
pub fn typical_step(traces: &[(usize, Vec<Event>)]) -> Option<u64> {
    let mut steps: Vec<(f64, u64)> =
        traces.first()?.1.iter().filter(|e| e.name == "step").map(|e| (e.dur, e.step)).collect();
    steps.sort_by(|a, b| a.0.total_cmp(&b.0));
    steps.get(steps.len() / 2).map(|s| s.1)
}

fn colour(name: &str) -> RGBColor {
    let at = crate::spans::STEP_PHASES.iter().position(|p| *p == name);
    at.map_or(RGBColor(127, 127, 127), |i| COLOURS[i % COLOURS.len()])
}

/// Step `step` of every rank in `traces` as PNG bytes.
pub fn render(traces: &[(usize, Vec<Event>)], step: u64) -> std::result::Result<Vec<u8>, String> {
    register_font()?;
    let lanes: Vec<(usize, f64, Vec<&Event>)> = traces
        .iter()
        .filter_map(|(rank, events)| {
            let outer = events.iter().find(|e| e.name == "step" && e.step == step)?;
            let inner: Vec<&Event> = events.iter().filter(|e| e.step == step && e.name != "step").collect();
            Some((*rank, outer.ts, std::iter::once(outer).chain(inner).collect()))
        })
        .collect();
    if lanes.is_empty() {
        return Err(format!("no rank's trace holds step {step}"));
    }
    let end_ms = lanes
        .iter()
        .flat_map(|(_, zero, events)| events.iter().map(move |e| (e.ts + e.dur - zero) / 1e3))
        .fold(0.0, f64::max);
    let rows = 2 * lanes.len();
    let (w, h) = (1400u32, 170 + 70 * rows as u32);
    let mut rgb = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (body, legend_area) = root.split_vertically(h - 50);
        let mut chart = ChartBuilder::on(&body)
            .caption(format!("step {step}: where the time goes, rank by rank"), (FONT, 26))
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(150)
            .build_cartesian_2d(0.0..end_ms * 1.02, 0.0..rows as f64)
            .map_err(|e| e.to_string())?;
        let names: Vec<String> = lanes
            .iter()
            .flat_map(|(rank, _, _)| [format!("rank {rank} step"), format!("rank {rank} phases")])
            .collect();
        let y_fmt = |v: &f64| {
            let i = v.floor() as usize;
            if (v - v.floor() - 0.5).abs() < 1e-6 && i < names.len() {
                names[rows - 1 - i].clone()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .x_desc("ms from the rank's step start")
            .y_labels(2 * rows + 1)
            .y_label_formatter(&y_fmt)
            .label_style((FONT, 16))
            .axis_desc_style((FONT, 16))
            .disable_y_mesh()
            .max_light_lines(0)
            .bold_line_style(RGBColor(225, 225, 225))
            .draw()
            .map_err(|e| e.to_string())?;
        for (lane, (_, zero, events)) in lanes.iter().enumerate() {
            for e in events {
                let row = 2 * lane + usize::from(e.name != "step");
                let y = (rows - 1 - row) as f64;
                let (x0, x1) = ((e.ts - zero) / 1e3, (e.ts + e.dur - zero) / 1e3);
                let fill = if e.name == "step" { RGBColor(200, 200, 200) } else { colour(&e.name) };
                let corners = [(x0, y + 0.15), (x1, y + 0.85)];
                // Filled, with a white edge that tells adjacent spans (the buckets) apart.
                chart
                    .draw_series([
                        Rectangle::new(corners, fill.filled()),
                        Rectangle::new(corners, WHITE.stroke_width(1)),
                    ])
                    .map_err(|e| e.to_string())?;
                let label = match e.bucket {
                    Some(b) => format!("{} {b}", e.name),
                    None => e.name.clone(),
                };
                // Labels where they fit (about 8 pixels a character at this size).
                let px = (x1 - x0) / (end_ms * 1.02) * (w as f64 - 190.0);
                if px > 8.0 * label.len() as f64 {
                    chart
                        .draw_series(std::iter::once(Text::new(label, (x0, y + 0.62), (FONT, 15).into_font())))
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        // The phases this step has (ZeRO's all-gather only under sharding).
        let present = crate::spans::STEP_PHASES
            .iter()
            .filter(|p| lanes.iter().any(|(_, _, events)| events.iter().any(|e| e.name == **p)));
        for (i, phase) in present.enumerate() {
            let x = 150 + 150 * i as i32;
            legend_area
                .draw(&Rectangle::new([(x, 14), (x + 16, 30)], colour(phase).filled()))
                .map_err(|e| e.to_string())?;
            legend_area
                .draw(&Text::new(phase.to_string(), (x + 22, 13), (FONT, 16).into_font()))
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    encode_png(&rgb, w, h)
}

/// Draws step `step` (default: the typical one) of the traces in `trace_dir` into `path`; returns
/// the step drawn.
pub fn write_timeline(trace_dir: &Path, step: Option<u64>, path: &Path) -> Result<u64> {
    let traces = read_traces(trace_dir)?;
    let step = step.or_else(|| typical_step(&traces)).ok_or_else(|| Error::Msg("the traces hold no step".into()))?;
    let png = render(&traces, step).map_err(|e| Error::Msg(format!("drawing {}: {e}", path.display())))?;
    crate::io::write_atomically(path, &png)?;
    Ok(step)
}
