//! The report charts, as inline SVG text drawn by plotters: shared by the demo's report
//! (`spotcheck-local`) and `spotcheck report`.
//!
//! Owns three pure drawing functions over plain data, so that either report maps its own model
//! onto them: [`timeline_svg`] (rows of coloured status segments over hours, with tick marks,
//! e.g. a lineage's jobs and their `SecondaryStatus` phases), [`cost_svg`] (on-demand vs spot
//! bars) and [`line_svg`] (one series over x, e.g. the newest checkpoint step over time or
//! cumulative savings by day). No fonts are embedded and nothing is rasterised: the browser
//! draws the text. A chart that cannot be laid out (plotters refuses an empty range) is an
//! empty string, never a panic.

use plotters::prelude::*;

/// A status's colour (unknown statuses grey).
fn color(status: &str) -> RGBColor {
    match status {
        "Starting" | "Pending" | "LaunchingMLInstances" | "PreparingTrainingStack" => {
            RGBColor(190, 190, 190)
        }
        "Downloading" | "DownloadingTrainingImage" => RGBColor(120, 170, 230),
        "Training" => RGBColor(60, 170, 90),
        "Interrupted" => RGBColor(220, 60, 50),
        "Uploading" => RGBColor(40, 90, 200),
        "Stopping" => RGBColor(240, 150, 40),
        "Completed" => RGBColor(20, 120, 50),
        "MaxWaitTimeExceeded" | "MaxRuntimeExceeded" | "Failed" | "Stopped" => {
            RGBColor(150, 30, 30)
        }
        OUTAGE => RGBColor(240, 170, 160),
        _ => RGBColor(160, 160, 160),
    }
}

/// The status of a segment showing spot capacity missing (the demo's market outages).
pub const OUTAGE: &str = "Outage";

/// One coloured span of a timeline row, in hours from the chart's origin.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    /// Start, hours.
    pub start: f64,
    /// End, hours.
    pub end: f64,
    /// The status, which picks the colour.
    pub status: String,
}

/// One row of a timeline.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The label on the left.
    pub label: String,
    /// Its segments.
    pub segments: Vec<Segment>,
    /// Tick marks (e.g. checkpoints reaching S3), hours.
    pub marks: Vec<f64>,
}

/// Statuses listed in the timeline legend.
const LEGEND: [&str; 6] = [
    "Starting",
    "Downloading",
    "Training",
    "Interrupted",
    "Uploading",
    "Stopping",
];

/// A Gantt-style timeline: one row per [`Row`], top to bottom, x in hours.
pub fn timeline_svg(caption: &str, rows: &[Row]) -> String {
    let mut svg = String::new();
    let n = rows.len().max(1);
    // Room for the legend (upper right) even with one row.
    let height = (120 + 40 * n as u32).max(280);
    let end = rows
        .iter()
        .flat_map(|r| {
            r.segments
                .iter()
                .map(|s| s.end)
                .chain(r.marks.iter().copied())
        })
        .filter(|x| x.is_finite())
        .fold(1.0 / 3600.0, f64::max);
    {
        let root = SVGBackend::with_string(&mut svg, (1000, height)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(250)
            // The right quarter stays free for the legend.
            .build_cartesian_2d(0f64..end * 1.3, 0f64..n as f64);
        let Ok(mut chart) = chart else {
            return String::new();
        };
        let labels: Vec<&str> = rows.iter().map(|r| r.label.as_str()).collect();
        let _ = chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n * 2 + 1)
            .y_label_formatter(&|y| {
                let i = *y - 0.5;
                if (i - i.round()).abs() < 1e-6 && i >= 0.0 {
                    (n - 1)
                        .checked_sub(i.round() as usize)
                        .and_then(|k| labels.get(k))
                        .map(|l| (*l).to_owned())
                        .unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .x_desc("hours")
            .draw();
        let row_y = |i: usize| (n - 1 - i) as f64;
        for (i, row) in rows.iter().enumerate() {
            let y = row_y(i);
            let _ = chart.draw_series(row.segments.iter().map(|s| {
                let e = if s.end <= s.start {
                    s.start + end * 0.002
                } else {
                    s.end
                };
                Rectangle::new(
                    [(s.start, y + 0.2), (e, y + 0.8)],
                    color(&s.status).filled(),
                )
            }));
            let _ = chart.draw_series(row.marks.iter().map(|t| {
                PathElement::new(vec![(*t, y + 0.8), (*t, y + 0.95)], BLACK.stroke_width(1))
            }));
        }
        for status in LEGEND {
            let _ = chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(0.0, -1.0), (0.0, -1.0)],
                    color(status).filled(),
                )))
                .map(|s| {
                    s.label(status).legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 12, y + 5)], color(status).filled())
                    })
                });
        }
        let _ = chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw();
        let _ = root.present();
    }
    svg
}

/// One pair of bars.
#[derive(Clone, Debug, PartialEq)]
pub struct CostBar {
    /// The label under it.
    pub label: String,
    /// On-demand USD.
    pub on_demand: f64,
    /// Spot USD.
    pub spot: f64,
}

/// On-demand vs spot cost bars, one pair per [`CostBar`].
pub fn cost_svg(caption: &str, bars: &[CostBar]) -> String {
    let mut svg = String::new();
    let max = bars
        .iter()
        .map(|b| b.on_demand.max(b.spot))
        .filter(|x| x.is_finite())
        .fold(1e-6, f64::max);
    let n = bars.len().max(1);
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 360)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..n as f64, 0f64..max * 1.15);
        let Ok(mut chart) = chart else {
            return String::new();
        };
        let names: Vec<&str> = bars.iter().map(|b| b.label.as_str()).collect();
        let _ = chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n * 2 + 1)
            .x_label_formatter(&|x| {
                let i = *x - 0.5;
                if (i - i.round()).abs() < 1e-6 && i >= 0.0 {
                    names
                        .get(i.round() as usize)
                        .map(|l| (*l).to_owned())
                        .unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc("USD")
            .draw();
        let od = RGBColor(120, 120, 200);
        let sp = RGBColor(60, 170, 90);
        let _ = chart
            .draw_series(bars.iter().enumerate().map(|(i, b)| {
                Rectangle::new(
                    [(i as f64 + 0.15, 0.0), (i as f64 + 0.48, b.on_demand)],
                    od.filled(),
                )
            }))
            .map(|s| {
                s.label("on-demand").legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], od.filled())
                })
            });
        let _ = chart
            .draw_series(bars.iter().enumerate().map(|(i, b)| {
                Rectangle::new(
                    [(i as f64 + 0.52, 0.0), (i as f64 + 0.85, b.spot)],
                    sp.filled(),
                )
            }))
            .map(|s| {
                s.label("spot").legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], sp.filled())
                })
            });
        let _ = chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw();
        let _ = root.present();
    }
    svg
}

/// One series of points joined by a line, with a dot at each point.
pub fn line_svg(caption: &str, x_desc: &str, y_desc: &str, points: &[(f64, f64)]) -> String {
    let mut svg = String::new();
    let mut points: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let min_x = points.iter().map(|p| p.0).fold(0.0, f64::min);
    let max_x = points.iter().map(|p| p.0).fold(0.01, f64::max);
    let max_y = points.iter().map(|p| p.1).fold(1e-6, f64::max);
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 320)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(min_x..max_x * 1.02, 0f64..max_y * 1.05);
        let Ok(mut chart) = chart else {
            return String::new();
        };
        let _ = chart.configure_mesh().x_desc(x_desc).y_desc(y_desc).draw();
        let _ = chart.draw_series(LineSeries::new(
            points.iter().copied(),
            RGBColor(60, 170, 90).stroke_width(2),
        ));
        let _ = chart.draw_series(
            points
                .iter()
                .map(|p| Circle::new(*p, 3, RGBColor(20, 120, 50).filled())),
        );
        let _ = root.present();
    }
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(svg: &str, needle: &str) -> usize {
        svg.matches(needle).count()
    }

    #[test]
    fn charts_draw_their_data_and_survive_empty_input() {
        let rows = [Row {
            label: "job-1 (ml.p3.2xlarge)".into(),
            segments: vec![
                Segment {
                    start: 0.0,
                    end: 1.0,
                    status: "Training".into(),
                },
                Segment {
                    start: 1.0,
                    end: 1.0,
                    status: "Interrupted".into(),
                },
            ],
            marks: vec![0.5],
        }];
        let svg = timeline_svg("Lineage", &rows);
        assert!(svg.starts_with("<svg"), "{svg:.80}");
        assert!(svg.contains("job-1 (ml.p3.2xlarge)"));
        // Training's and Interrupted's colours, as SVG fills.
        assert!(svg.contains("#3CAA5A") && svg.contains("#DC3C32"), "{svg}");
        let bars = cost_svg(
            "Cost",
            &[CostBar {
                label: "total".into(),
                on_demand: 3.0,
                spot: 1.0,
            }],
        );
        assert!(bars.contains("total") && bars.contains("on-demand"));
        let line = line_svg("Saved", "days", "USD", &[(0.0, 1.0), (1.0, 2.5)]);
        assert_eq!(count(&line, "<circle"), 2);
        for svg in [
            timeline_svg("empty", &[]),
            cost_svg("empty", &[]),
            line_svg("empty", "x", "y", &[]),
        ] {
            assert!(svg.starts_with("<svg"), "{svg:.80}");
        }
    }
}
