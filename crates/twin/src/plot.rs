//! A job's cost-quality frontier as an SVG picture, with the point the job chose marked.
//!
//! Hand-written SVG (a polyline, a marker, axes and labels): a few dozen lines, no font or
//! drawing library needed, and the file opens in any browser.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;

use crate::job::JobReport;

const W: f64 = 720.0;
const H: f64 = 480.0;
const PAD: f64 = 60.0;

/// Writes the frontier of `report` with its chosen point (cost and quality as shares of
/// all-strong) to `path`.
///
/// # Errors
/// When the file cannot be written.
pub fn write_frontier(path: &Path, title: &str, report: &JobReport) -> anyhow::Result<()> {
    let chosen = (1.0 - report.saved, report.quality_vs_all_strong);
    let target = report.plan.as_ref().map(|p| p.target);
    let svg = frontier_svg(title, &report.frontier_xy(), chosen, target);
    std::fs::write(path, svg).with_context(|| format!("cannot write {}", path.display()))
}

/// The SVG text: `points` (cost share, quality share) as a line, `chosen` as a red dot, the
/// target (if any) as a dashed line.
pub fn frontier_svg(
    title: &str,
    points: &[(f64, f64)],
    chosen: (f64, f64),
    target: Option<f64>,
) -> String {
    let qmin = points
        .iter()
        .map(|p| p.1)
        .chain([chosen.1, target.unwrap_or(1.0)])
        .fold(1.0f64, f64::min)
        .min(0.95)
        - 0.02;
    let qmax = points
        .iter()
        .map(|p| p.1)
        .chain([chosen.1])
        .fold(1.0f64, f64::max)
        + 0.01;
    let x = |c: f64| PAD + c.clamp(0.0, 1.2) / 1.2 * (W - 2.0 * PAD);
    let y = |q: f64| H - PAD - (q - qmin) / (qmax - qmin).max(1e-9) * (H - 2.0 * PAD);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" font-size="15" text-anchor="middle">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    // Axes and ticks.
    let _ = writeln!(
        s,
        r#"<line x1="{PAD}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{}" stroke="black"/>"#,
        H - PAD,
        W - PAD,
        H - PAD,
        H - PAD
    );
    for i in 0..=6 {
        let c = f64::from(i) * 0.2;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{:.0}%</text>"#,
            x(c),
            H - PAD + 18.0,
            c * 100.0
        );
    }
    for i in 0..=5 {
        let q = qmin + (qmax - qmin) * f64::from(i) / 5.0;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{:.1}%</text>"#,
            PAD - 6.0,
            y(q) + 4.0,
            q * 100.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">cost, share of all-strong</text><text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">quality, share of all-strong</text>"#,
        W / 2.0,
        H - 16.0,
        H / 2.0,
        H / 2.0
    );
    if let Some(t) = target {
        let _ = writeln!(
            s,
            r##"<line x1="{PAD}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="#888" stroke-dasharray="6 4"/><text x="{}" y="{:.1}" text-anchor="end" fill="#555">target {:.0}%</text>"##,
            y(t),
            W - PAD,
            y(t),
            W - PAD,
            y(t) - 5.0,
            t * 100.0
        );
    }
    let line: Vec<String> = points
        .iter()
        .map(|&(c, q)| format!("{:.1},{:.1}", x(c), y(q)))
        .collect();
    let _ = writeln!(
        s,
        r##"<polyline points="{}" fill="none" stroke="#1f77b4" stroke-width="2"/>"##,
        line.join(" ")
    );
    let _ = writeln!(
        s,
        r##"<circle cx="{:.1}" cy="{:.1}" r="6" fill="#d62728"/><text x="{:.1}" y="{:.1}" fill="#d62728">chosen: cost {:.1}%, quality {:.1}%</text>"##,
        x(chosen.0),
        y(chosen.1),
        x(chosen.0) + 10.0,
        y(chosen.1) + 16.0,
        chosen.0 * 100.0,
        chosen.1 * 100.0
    );
    s.push_str("</svg>\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_picture_has_the_line_the_point_and_the_target() {
        let svg = frontier_svg(
            "a <job>",
            &[(0.05, 0.85), (0.3, 0.96), (1.0, 1.0)],
            (0.28, 0.955),
            Some(0.95),
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("<polyline") && svg.contains("<circle"));
        assert!(svg.contains("target 95%"));
        assert!(svg.contains("chosen: cost 28.0%, quality 95.5%"));
        assert!(svg.contains("a &lt;job&gt;"));
    }
}
