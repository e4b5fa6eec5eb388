//! The day as a picture: dma-buf bytes charged to each app after each step, with the app
//! budget as a dashed line, written as SVG.

use std::path::Path;

use plotters::prelude::*;

use super::chart;

/// One line of the plot.
pub struct Series {
    pub label: String,
    /// One value per step, in bytes.
    pub bytes: Vec<u64>,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Draws `series` over `steps` (x: step number, y: MiB) into `path`, with a horizontal line at
/// `budget` bytes when given.
pub fn write(path: &Path, steps: &[&str], series: &[Series], budget: Option<(String, u64)>) -> Result<(), String> {
    draw(path, steps, series, budget).map_err(|e| format!("{}: {e}", path.display()))
}

fn draw(
    path: &Path,
    steps: &[&str],
    series: &[Series],
    budget: Option<(String, u64)>,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let top =
        series.iter().flat_map(|s| s.bytes.iter().copied()).chain(budget.as_ref().map(|b| b.1)).max().unwrap_or(0);
    let y_max = (mib(top) * 1.15).max(16.0);
    let last = steps.len() as i32;
    let mut chart = ChartBuilder::on(&root)
        .caption("dma-buf charges per app over the demo day", ("sans-serif", 24))
        .margin(18)
        .x_label_area_size(56)
        .y_label_area_size(80)
        .build_cartesian_2d(0..last + 1, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_labels(steps.len() + 2)
        .x_label_formatter(&|x| match usize::try_from(*x).ok().filter(|i| (1..=steps.len()).contains(i)) {
            Some(i) => format!("{i} {}", steps[i - 1]),
            None => String::new(),
        })
        .x_desc("step")
        .y_desc("charged to the app's cgroup (MiB)")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .disable_x_mesh()
        .draw()?;

    if let Some((label, bytes)) = &budget {
        let y = mib(*bytes);
        let style = ShapeStyle::from(&BLACK.mix(0.5)).stroke_width(1);
        chart::line(&mut chart, vec![(0, y), (last + 1, y)], label, style, true)?;
    }
    for (s, color) in series.iter().zip(chart::PALETTE.iter().cycle()) {
        let points: Vec<(i32, f64)> = s.bytes.iter().enumerate().map(|(step, b)| (step as i32 + 1, mib(*b))).collect();
        chart::line(&mut chart, points, &s.label, color.stroke_width(3), false)?;
    }
    chart::legend(&mut chart, SeriesLabelPosition::MiddleLeft)?;
    root.present()?;
    Ok(())
}
