//! Cost-quality curves of an evaluation, as SVG or PNG (chosen by the file extension).
//!
//! One line per router: mean quality per item against mean cost per item, the picture
//! RouterBench draws. A router is better where its line lies above and left of another's;
//! random is the straight-ish line between all-weak and all-strong, the oracle the ceiling.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::eval::{CostUnit, EvalReport, ORACLE, RANDOM};

/// Why a plot could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("{path}: plot files must end in .svg or .png")]
    Extension { path: String },
    #[error("{path}: cannot draw the plot: {message}")]
    Draw { path: String, message: String },
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Draws the report's curves into `path` (`.svg` or `.png`).
pub fn plot_report(report: &EvalReport, path: &Path, title: &str) -> Result<(), PlotError> {
    let shown = path.display().to_string();
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let drawn = match ext.as_deref() {
        Some("svg") => draw(
            SVGBackend::new(path, (900, 600)).into_drawing_area(),
            report,
            title,
        ),
        Some("png") => draw(
            BitMapBackend::new(path, (900, 600)).into_drawing_area(),
            report,
            title,
        ),
        _ => return Err(PlotError::Extension { path: shown }),
    };
    drawn.map_err(|message| PlotError::Draw {
        path: shown,
        message,
    })
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    report: &EvalReport,
    title: &str,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    // Costs are tiny per item in USD; show them per 1,000 items.
    let (scale, x_label) = match report.cost_unit {
        CostUnit::Usd => (1000.0, "cost, USD per 1,000 items (list prices)"),
        CostUnit::StrongCalls => (100.0, "strong calls, % of items"),
    };
    let points = report
        .results
        .iter()
        .flat_map(|r| r.curve.iter().map(|p| (p.cost * scale, p.quality)));
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let pad = |a: f64, b: f64| ((b - a) * 0.05).max(1e-9);
    let (px, py) = (pad(x0, x1), pad(y0, y1));

    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((x0 - px)..(x1 + px), (y0 - py)..(y1 + py))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc("mean quality per item")
        .draw()
        .map_err(err)?;
    for (i, r) in report.results.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut pts: Vec<(f64, f64)> = r
            .curve
            .iter()
            .map(|p| (p.cost * scale, p.quality))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let width = if r.name == RANDOM || r.name == ORACLE {
            1
        } else {
            2
        };
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(width)))
            .map_err(err)?
            .label(format!("{} (APGR {:.3})", r.name, r.metrics.apgr))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
