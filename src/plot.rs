//! PNG plots of experiments: learning curves, and accuracy and time against batch size (or a
//! heat map over batch size × learning rate). Text is drawn with the DejaVu Sans font embedded
//! in the binary (`assets/fonts`), so plots look the same on every machine.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::report::RunResult;
use wgnorm::{Error, Result};

pub const WIDTH: u32 = 1200;
pub const HEIGHT: u32 = 800;
const FONT: &str = "sans-serif";

fn plot_error(path: &Path, error: impl std::fmt::Display) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        message: format!("could not draw the plot: {error}"),
    }
}

fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            include_bytes!("../assets/fonts/DejaVuSans.ttf"),
        )
        .is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(
            "the embedded plot font could not be loaded".to_string(),
        ))
    }
}

const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
];

/// One line: a label and its (x, y) points.
pub struct Line {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// A panel of lines with its axis labels.
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub lines: Vec<Line>,
    /// Draw x on a log2 scale (batch sizes).
    pub log2_x: bool,
    /// Draw y on a log10 scale (times that span orders of magnitude).
    pub log10_y: bool,
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(1e-3);
    (lo - pad, hi + pad)
}

/// Draws `panels` side by side in rows of `columns`, into a PNG at `path`.
pub fn panels(path: &Path, title: &str, panels: &[Panel], columns: usize) -> Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let root = root
        .titled(title, (FONT, 28))
        .map_err(|e| plot_error(path, e))?;
    let rows = panels.len().div_ceil(columns.max(1));
    let areas = root.split_evenly((rows, columns.max(1)));
    for (panel, area) in panels.iter().zip(areas) {
        let transform = |x: f64| if panel.log2_x { x.log2() } else { x };
        let transform_y = |y: f64| if panel.log10_y { y.log10() } else { y };
        let (x0, x1) = bounds(
            panel
                .lines
                .iter()
                .flat_map(|l| l.points.iter().map(|p| transform(p.0))),
        );
        let (y0, y1) = bounds(
            panel
                .lines
                .iter()
                .flat_map(|l| l.points.iter().map(|p| transform_y(p.1))),
        );
        let mut chart = ChartBuilder::on(&area)
            .caption(&panel.title, (FONT, 22))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| plot_error(path, e))?;
        let (log2, log10) = (panel.log2_x, panel.log10_y);
        chart
            .configure_mesh()
            .x_desc(panel.x_label.as_str())
            .y_desc(panel.y_label.as_str())
            .light_line_style(WHITE)
            .x_label_formatter(&|x| {
                // Only whole epochs (or whole powers of two) get a label.
                if (x - x.round()).abs() > 1e-6 {
                    String::new()
                } else if log2 {
                    format!("{:.0}", x.exp2())
                } else {
                    format!("{x:.0}")
                }
            })
            .y_label_formatter(&|y| {
                let y = if log10 { 10f64.powf(*y) } else { *y };
                if y.abs() >= 100.0 {
                    format!("{y:.0}")
                } else if y != 0.0 && y.abs() < 0.01 {
                    // A log scale over orders of magnitude (gradient norms) reaches far below
                    // what three decimals show.
                    format!("{y:.1e}")
                } else {
                    format!("{y:.3}")
                }
            })
            .label_style((FONT, 15))
            .draw()
            .map_err(|e| plot_error(path, e))?;
        for (i, line) in panel.lines.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let points: Vec<(f64, f64)> = line
                .points
                .iter()
                .filter(|p| p.1.is_finite())
                .map(|&(x, y)| (transform(x), transform_y(y)))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(|e| plot_error(path, e))?
                .label(line.label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
                });
            chart
                .draw_series(
                    points
                        .into_iter()
                        .map(|p| Circle::new(p, 4, color.filled())),
                )
                .map_err(|e| plot_error(path, e))?;
        }
        chart
            .configure_series_labels()
            .label_font((FONT, 16))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| plot_error(path, e))?;
    }
    root.present().map_err(|e| plot_error(path, e))
}

/// A grid of cells coloured by value from red (lowest) to green (highest), with the values
/// written in: one panel per model, batch sizes across, learning rates down.
pub fn heat_map(path: &Path, title: &str, runs: &[RunResult], models: &[String]) -> Result<()> {
    register_font()?;
    let mut batch_sizes: Vec<usize> = runs.iter().map(|r| r.batch_size).collect();
    batch_sizes.sort_unstable();
    batch_sizes.dedup();
    let mut lrs: Vec<f64> = runs.iter().map(|r| r.lr).collect();
    lrs.sort_by(f64::total_cmp);
    lrs.dedup();
    let accuracies: Vec<f64> = runs.iter().filter_map(|r| r.test_acc).collect();
    let (lo, hi) = bounds(accuracies.iter().copied());
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let root = root
        .titled(title, (FONT, 28))
        .map_err(|e| plot_error(path, e))?;
    let areas = root.split_evenly((1, models.len().max(1)));
    for (model, area) in models.iter().zip(areas) {
        let mut chart = ChartBuilder::on(&area)
            .caption(format!("{model}: test accuracy"), (FONT, 22))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(80)
            // Cell (i, j) spans [i, i + 1] × [j, j + 1]; its label sits at the centre. (A
            // segmented axis maps a single value to no width at all, so one batch size or one
            // learning rate drew no cell.)
            .build_cartesian_2d(0.0..batch_sizes.len() as f64, 0.0..lrs.len() as f64)
            .map_err(|e| plot_error(path, e))?;
        let centre = |v: f64| {
            let cell = v.floor();
            ((v - cell - 0.5).abs() < 1e-9).then_some(cell as usize)
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("batch size")
            .y_desc("learning rate")
            .x_labels(2 * batch_sizes.len() + 1)
            .y_labels(2 * lrs.len() + 1)
            .x_label_formatter(&|&v| {
                centre(v)
                    .and_then(|i| batch_sizes.get(i))
                    .map(|b| b.to_string())
                    .unwrap_or_default()
            })
            .y_label_formatter(&|&v| {
                centre(v)
                    .and_then(|i| lrs.get(i))
                    .map(|l| format!("{l}"))
                    .unwrap_or_default()
            })
            .label_style((FONT, 15))
            .draw()
            .map_err(|e| plot_error(path, e))?;
        for run in runs.iter().filter(|r| &r.model == model) {
            let (Some(x), Some(y)) = (
                batch_sizes.iter().position(|&b| b == run.batch_size),
                lrs.iter().position(|&l| l == run.lr),
            ) else {
                continue;
            };
            let (color, text) = match run.test_acc {
                Some(acc) => {
                    let t = ((acc - lo) / (hi - lo)).clamp(0.0, 1.0);
                    let color = RGBColor((230.0 * (1.0 - t)) as u8, (200.0 * t + 30.0) as u8, 60);
                    (color, format!("{:.2}%", acc * 100.0))
                }
                None => (RGBColor(120, 120, 120), "diverged".to_string()),
            };
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x as f64, y as f64), (x as f64 + 1.0, y as f64 + 1.0)],
                    color.filled(),
                )))
                .map_err(|e| plot_error(path, e))?;
            let label = EmptyElement::at((x as f64, y as f64 + 1.0))
                + Text::new(text, (10, 10), (FONT, 18).into_font().color(&WHITE));
            chart
                .draw_series(std::iter::once(label))
                .map_err(|e| plot_error(path, e))?;
        }
    }
    root.present().map_err(|e| plot_error(path, e))
}
