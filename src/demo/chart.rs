//! What the project's SVG plots share (the demo's day, the benchmark's latency panels): the
//! palette, a line with its legend entry, and the legend box, so the pictures look alike.

use plotters::coord::CoordTranslate;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

/// Line colours, in order (matplotlib's tab10).
pub const PALETTE: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// Draws `points` as one labelled line: solid with a dot at each point, or dashed (a limit, a
/// tail percentile). The legend shows the same stroke.
pub fn line<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    points: Vec<CT::From>,
    label: &str,
    style: ShapeStyle,
    dashed: bool,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    DB: DrawingBackend + 'a,
    CT: CoordTranslate,
    CT::From: Clone + 'static,
{
    if dashed {
        chart
            .draw_series(DashedLineSeries::new(points, 6, 4, style))?
            .label(label)
            .legend(move |(x, y)| DashedPathElement::new([(x, y), (x + 24, y)], 6, 4, style));
    } else {
        chart
            .draw_series(LineSeries::new(points, style).point_size(style.stroke_width + 1))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], style));
    }
    Ok(())
}

/// The legend box at `position`.
pub fn legend<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    DB: DrawingBackend + 'a,
    CT: CoordTranslate,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .draw()
}
