//! Training curves as a PNG: one panel per quantity (loss with the evaluation loss, each evaluation
//! metric, learning rate, gradient norm) against the optimizer step, with epoch ends marked, and one
//! colour per run so that several runs can be compared at a glance.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::history::{History, Series};
use crate::{Error, Result};

/// The file the trainer writes into `output_dir`.
pub const CURVES_FILE: &str = "curves.png";

/// Image width and the height of each row of panels, in pixels.
const WIDTH: u32 = 1400;
const ROW_HEIGHT: u32 = 420;
const TITLE_HEIGHT: u32 = 50;
pub(super) const FONT: &str = "sans-serif";

/// One colour per run (matplotlib's tab10, readable on white).
pub(super) const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// A panel: its title and the record keys drawn in it (a training key, then evaluation keys).
#[derive(Debug, Clone, PartialEq)]
struct Panel {
    title: String,
    keys: Vec<String>,
}

/// The panels for these runs, in reading order: loss first, then the evaluation metrics, then the
/// optimizer's curves and anything else that was logged.
fn panels(histories: &[History]) -> Vec<Panel> {
    let mut keys: Vec<&String> = histories.iter().flat_map(|h| h.series.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut out = vec![Panel { title: "loss".into(), keys: vec!["loss".into(), "eval_loss".into()] }];
    for key in keys.iter().filter(|k| k.starts_with("eval_") && k.as_str() != "eval_loss") {
        out.push(Panel { title: format!("eval {}", &key[5..]), keys: vec![key.to_string()] });
    }
    for key in ["learning_rate", "grad_norm"] {
        out.push(Panel { title: key.replace('_', " "), keys: vec![key.into()] });
    }
    for key in
        keys.iter().filter(|k| !k.starts_with("eval_") && !["loss", "learning_rate", "grad_norm"].contains(&k.as_str()))
    {
        out.push(Panel { title: key.replace('_', " "), keys: vec![key.to_string()] });
    }
    out.retain(|p| histories.iter().any(|h| p.keys.iter().any(|k| h.series.get(k).is_some_and(|s| !s.is_empty()))));
    out
}

/// The image size for `n` panels in two columns.
pub fn image_size(n_panels: usize) -> (u32, u32) {
    (WIDTH, TITLE_HEIGHT + ROW_HEIGHT * n_panels.div_ceil(2).max(1) as u32)
}

/// Draws the curves of `histories` into a PNG at `path` (written whole or not at all).
pub fn write_curves(histories: &[History], path: &Path) -> Result<()> {
    let png = render(histories).map_err(|e| Error::Msg(format!("drawing {}: {e}", path.display())))?;
    crate::io::write_atomically(path, &png)
}

/// The curves as PNG bytes.
pub fn render(histories: &[History]) -> std::result::Result<Vec<u8>, String> {
    register_font()?;
    if histories.iter().all(History::is_empty) {
        return Err("no logged values to draw (was anything logged yet?)".into());
    }
    let panels = panels(histories);
    let (w, h) = image_size(panels.len());
    let mut rgb = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let names: Vec<&str> = histories.iter().map(|h| h.name.as_str()).collect();
        let title = format!("training curves: {}", names.join(" vs "));
        let (top, body) = root.split_vertically(TITLE_HEIGHT);
        top.draw(&Text::new(title, (20, 12), (FONT, 26).into_font())).map_err(|e| e.to_string())?;
        let rows = panels.len().div_ceil(2).max(1);
        for (panel, area) in panels.iter().zip(body.split_evenly((rows, 2))) {
            draw_panel(&area, panel, histories).map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    encode_png(&rgb, w, h)
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type DrawResult = std::result::Result<(), DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>>;

fn draw_panel(area: &Area<'_>, panel: &Panel, histories: &[History]) -> DrawResult {
    let drawn: Vec<(usize, &str, &Series)> = histories
        .iter()
        .enumerate()
        .flat_map(|(i, h)| {
            panel.keys.iter().filter_map(move |k| h.series.get(k).filter(|s| !s.is_empty()).map(|s| (i, k.as_str(), s)))
        })
        .collect();
    let points = drawn.iter().flat_map(|(_, _, s)| s.iter());
    let x_max = points.clone().map(|p| p.0).fold(1.0, f64::max);
    let (y_min, y_max) = y_range(points.map(|p| p.1));

    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..x_max * 1.02, y_min..y_max)?;
    let y_fmt = |v: &f64| tick_label(*v, y_max - y_min);
    let x_fmt = |v: &f64| format!("{}", v.round() as i64);
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(panel.title.as_str())
        .x_labels(8)
        .y_labels(6)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 16))
        .max_light_lines(0)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()?;

    // Epoch ends: dashed grey lines, labelled once at the top.
    let mut marked = Vec::new();
    for h in histories {
        for (epoch, step) in h.epoch_ends() {
            if marked.iter().any(|&(e, s): &(usize, f64)| e == epoch && (s - step).abs() < 1e-6) {
                continue;
            }
            marked.push((epoch, step));
            let grey = RGBColor(150, 150, 150);
            chart.draw_series(std::iter::once(plotters::element::DashedPathElement::new(
                vec![(step, y_min), (step, y_max)],
                6,
                4,
                grey.stroke_width(1),
            )))?;
            let label = Text::new(format!("epoch {epoch}"), (-50, 4), (FONT, 13).into_font().color(&grey));
            chart.plotting_area().draw(&(EmptyElement::at((step, y_max)) + label))?;
        }
    }

    let several_runs = histories.len() > 1;
    for (run, key, series) in &drawn {
        let colour = COLOURS[run % COLOURS.len()];
        let eval = key.starts_with("eval_");
        let mut label = if several_runs { histories[*run].name.clone() } else { String::new() };
        if panel.keys.len() > 1 {
            label = format!("{label} {}", if eval { "eval" } else { "train" }).trim().to_string();
        }
        let style = colour.stroke_width(2);
        let anno = if eval && series.len() > 1 {
            chart.draw_series(DashedLineSeries::new(series.iter().copied(), 8, 5, style))?
        } else {
            chart.draw_series(LineSeries::new(series.iter().copied(), style))?
        };
        if !label.is_empty() {
            anno.label(label).legend(move |(x, y)| {
                if eval {
                    plotters::element::DashedPathElement::new(vec![(x, y), (x + 26, y)], 7, 4, colour.stroke_width(2))
                        .into_dyn()
                } else {
                    PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(2)).into_dyn()
                }
            });
        }
        if eval || series.len() == 1 {
            chart.draw_series(series.iter().map(|&p| Circle::new(p, 4, colour.filled())))?;
        }
    }
    if several_runs || panel.keys.len() > 1 {
        // Epoch labels sit at the top; of the bottom corners, the one a falling curve leaves empty
        // is the left, a rising one's the right.
        let (_, _, first) = drawn[0];
        let falling = first.last().map(|p| p.1) < first.first().map(|p| p.1);
        let corner = if falling { SeriesLabelPosition::LowerLeft } else { SeriesLabelPosition::LowerRight };
        chart
            .configure_series_labels()
            .position(corner)
            .label_font((FONT, 15))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .draw()?;
    }
    Ok(())
}

/// The y range with a margin, never empty.
fn y_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let span = if hi > lo { hi - lo } else { lo.abs().max(1e-12) * 0.1 };
    let lo = if lo >= 0.0 { (lo - 0.08 * span).max(0.0) } else { lo - 0.08 * span };
    (lo, hi + 0.08 * span)
}

/// A tick label precise enough for ticks `span` apart in total: scientific for tiny values (learning
/// rates), fixed otherwise.
fn tick_label(v: f64, span: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let magnitude = v.abs().max(span);
    if magnitude < 1e-2 {
        return format!("{v:.1e}");
    }
    let decimals = (-(span / 5.0).log10().floor()).clamp(0.0, 6.0) as usize;
    format!("{v:.decimals$}")
}

pub(super) fn register_font() -> std::result::Result<(), String> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok());
    ok.then_some(()).ok_or_else(|| "the embedded DejaVu Sans font could not be read".to_string())
}

pub(super) fn encode_png(rgb: &[u8], w: u32, h: u32) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(rgb).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(name: &str, scale: f64) -> History {
        let mut records = Vec::new();
        for step in (10..=60).step_by(10) {
            let s = step as f64;
            records.push(json!({"loss": scale / s, "learning_rate": 5e-5 * (1.0 - s / 60.0), "grad_norm": 2.0 - s / 60.0, "epoch": s / 30.0, "step": step}));
            if step % 30 == 0 {
                records.push(json!({"eval_loss": scale / s + 0.1, "eval_accuracy": 0.6 + s / 300.0, "eval_f1": 0.7, "epoch": s / 30.0, "step": step}));
            }
        }
        History::from_records(name, &records)
    }

    #[test]
    fn panels_put_loss_first_then_metrics_then_the_optimizer() {
        let titles: Vec<String> = panels(&[run("a", 1.0)]).into_iter().map(|p| p.title).collect();
        assert_eq!(titles, ["loss", "eval accuracy", "eval f1", "learning rate", "grad norm"]);
    }

    #[test]
    fn tick_labels_suit_their_scale() {
        assert_eq!(tick_label(4.5e-5, 5e-5), "4.5e-5");
        assert_eq!(tick_label(0.8125, 0.2), "0.81");
        assert_eq!(tick_label(1200.0, 1400.0), "1200");
        assert_eq!(tick_label(0.0, 1.0), "0");
    }

    #[test]
    fn the_image_has_its_size_and_is_drawn() {
        let png = render(&[run("fp32", 1.0), run("bf16", 1.1)]).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(png));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), image_size(5));
        let pixels = &buf[..info.buffer_size()];
        let inked = pixels.chunks(3).filter(|p| p.iter().any(|&c| c < 200)).count();
        let share = inked as f64 / (info.width * info.height) as f64;
        // Text, axes and curves: a few percent of the pixels, not none and not everything.
        assert!((0.01..0.5).contains(&share), "inked share {share}");
        // Both runs' colours are there.
        for c in &COLOURS[..2] {
            assert!(pixels.chunks(3).any(|p| p == [c.0, c.1, c.2]), "colour {c:?} missing");
        }
    }

    #[test]
    fn nothing_logged_is_an_error_not_a_blank_image() {
        let err = render(&[History::from_records("empty", &[])]).unwrap_err();
        assert!(err.contains("no logged values"), "{err}");
    }
}
