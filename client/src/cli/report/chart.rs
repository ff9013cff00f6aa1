//! The report's chart: calls per hour, one stacked bar per hour with a band per
//! outcome, drawn by plotters into an SVG string that the HTML embeds inline. Axis
//! labels are plotters' own `<text>` elements (sized by its built-in estimate: no font
//! files are read), drawn by the browser in its default sans-serif font.

use std::collections::BTreeMap;

use plotters::prelude::*;

use super::figures::{busiest_hour, hour_label};
use crate::cli::tally::Counts;

/// Band colours, in `OUTCOMES` order (ok, denied, invalid, failed, throttled); the
/// HTML legend uses the same ones.
pub const COLORS: [(u8, u8, u8); 5] = [
    (46, 139, 87),
    (200, 30, 45),
    (230, 160, 20),
    (120, 40, 140),
    (40, 110, 200),
];

/// The colour as CSS (`#rrggbb`), for the legend.
pub fn css_color(i: usize) -> String {
    let (r, g, b) = COLORS[i];
    format!("#{r:02x}{g:02x}{b:02x}")
}

const SIZE: (u32, u32) = (1100, 340);

/// Draws `hours` (hour number -> counts) over the hours `first..=last` as SVG.
pub fn hourly_svg(hours: &BTreeMap<i64, Counts>, first: i64, last: i64) -> Result<String, String> {
    let mut svg = String::new();
    draw(&mut svg, hours, first, last.max(first)).map_err(|e| format!("drawing the chart: {e}"))?;
    Ok(svg)
}

fn draw(
    svg: &mut String,
    hours: &BTreeMap<i64, Counts>,
    first: i64,
    last: i64,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::with_string(svg, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let top = busiest_hour(hours).max(1);
    let mut chart = ChartBuilder::on(&root)
        .margin(12)
        .margin_right(48)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(first..last + 1, 0..top + top / 10 + 1)?;
    let span = last + 1 - first;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(usize::try_from(span.clamp(2, 8)).unwrap_or(8))
        .x_label_formatter(&|h| short_hour(*h))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 14))
        .y_desc("calls per hour")
        .x_desc("hour starting (UTC)")
        .draw()?;
    for (&hour, counts) in hours.range(first..=last) {
        let mut base = 0;
        for (i, &n) in counts.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let (r, g, b) = COLORS[i];
            let mut bar = Rectangle::new(
                [(hour, base), (hour + 1, base + n)],
                RGBColor(r, g, b).filled(),
            );
            if span <= 200 {
                bar.set_margin(0, 0, 1, 1);
            }
            chart.draw_series(std::iter::once(bar))?;
            base += n;
        }
    }
    root.present()?;
    Ok(())
}

/// `2025-01-31T12:00:00Z` -> `01-31 12h`.
fn short_hour(hour: i64) -> String {
    let label = hour_label(hour);
    match (label.get(5..10), label.get(11..13)) {
        (Some(day), Some(h)) => format!("{day} {h}h"),
        _ => label,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_an_svg_with_one_bar_per_band() {
        let h = 1_700_000_000 / 3600;
        let hours = BTreeMap::from([(h, [3, 1, 0, 0, 2]), (h + 2, [1, 0, 0, 0, 0])]);
        let svg = hourly_svg(&hours, h, h + 3).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        let ok_band = format!("fill=\"{}\"", css_color(0).to_ascii_uppercase());
        assert_eq!(svg.matches(&ok_band).count(), 2, "{svg}");
        let throttled_band = format!("fill=\"{}\"", css_color(4).to_ascii_uppercase());
        assert_eq!(svg.matches(&throttled_band).count(), 1, "{svg}");
        assert!(svg.contains("11-14 22h"), "{svg}");
        assert!(!svg.contains("<script"));
    }

    #[test]
    fn colors_as_css() {
        assert_eq!(css_color(0), "#2e8b57");
    }
}
