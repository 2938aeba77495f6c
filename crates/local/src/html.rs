//! The demo's HTML report: one self-contained file with the timeline and cost charts drawn
//! by plotters' SVG backend and inlined, plus the text report.
//!
//! Owns [`render`] (pure: a [`Report`] in, HTML text out). Charts: a Gantt-style timeline of
//! each job's secondary statuses with capacity outages and checkpoint arrivals, the durable
//! (checkpointed) step over simulated time, and spot vs on-demand cost per job and for the
//! lineage.

use plotters::prelude::*;

use crate::report::{render_text, Report};

fn color(status: &str) -> RGBColor {
    match status {
        "Starting" => RGBColor(190, 190, 190),
        "Downloading" => RGBColor(120, 170, 230),
        "Training" => RGBColor(60, 170, 90),
        "Interrupted" => RGBColor(220, 60, 50),
        "Uploading" => RGBColor(40, 90, 200),
        "Stopping" => RGBColor(240, 150, 40),
        "Completed" => RGBColor(20, 120, 50),
        "MaxWaitTimeExceeded" | "MaxRuntimeExceeded" | "Failed" | "Stopped" => {
            RGBColor(150, 30, 30)
        }
        _ => RGBColor(160, 160, 160),
    }
}

fn hours(s: f64) -> f64 {
    s / 3600.0
}

/// The timeline chart (SVG text).
pub fn timeline_svg(r: &Report) -> String {
    let mut svg = String::new();
    let rows = r.jobs.len() + 1;
    let height = 120 + 40 * rows as u32;
    let end = r
        .jobs
        .iter()
        .map(|j| j.span.1)
        .chain(r.outages.iter().map(|o| o.2))
        .fold(1.0f64, f64::max);
    {
        let root = SVGBackend::with_string(&mut svg, (1000, height)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let chart = ChartBuilder::on(&root)
            .caption("Lineage timeline (simulated hours)", ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(250)
            .build_cartesian_2d(0f64..hours(end) * 1.02, 0f64..rows as f64);
        let Ok(mut chart) = chart else {
            return String::new();
        };
        let labels: Vec<String> = std::iter::once("spot capacity outages".to_owned())
            .chain(
                r.jobs
                    .iter()
                    .map(|j| format!("{} ({})", j.name, j.instance_type)),
            )
            .collect();
        let _ = chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(rows * 2 + 1)
            .y_label_formatter(&|y| {
                let i = *y - 0.5;
                if (i - i.round()).abs() < 1e-6 && i >= 0.0 {
                    labels
                        .get(rows - 1 - i.round() as usize)
                        .cloned()
                        .unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .x_desc("simulated hours")
            .draw();
        let row_y = |i: usize| (rows - 1 - i) as f64;
        // Outages (row 0).
        let _ = chart.draw_series(r.outages.iter().map(|(_, s, e)| {
            Rectangle::new(
                [(hours(*s), row_y(0) + 0.2), (hours(*e), row_y(0) + 0.8)],
                RGBColor(230, 120, 110).mix(0.6).filled(),
            )
        }));
        for (i, j) in r.jobs.iter().enumerate() {
            let y = row_y(i + 1);
            let _ = chart.draw_series(j.phases.iter().map(|(s, e, status)| {
                let e = if e <= s { s + end * 0.002 } else { *e };
                Rectangle::new(
                    [(hours(*s), y + 0.2), (hours(e), y + 0.8)],
                    color(status).filled(),
                )
            }));
            let _ = chart.draw_series(j.checkpoints.iter().map(|(t, _)| {
                PathElement::new(
                    vec![(hours(*t), y + 0.8), (hours(*t), y + 0.95)],
                    BLACK.stroke_width(1),
                )
            }));
        }
        let legend = [
            "Starting",
            "Downloading",
            "Training",
            "Interrupted",
            "Uploading",
            "Stopping",
        ];
        for (k, status) in legend.iter().enumerate() {
            let _ = chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(0.0, -1.0), (0.0, -1.0)],
                    color(status).filled(),
                )))
                .map(|s| {
                    s.label(*status).legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 12, y + 5)], color(legend[k]).filled())
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
    svg_text(svg)
}

/// The checkpointed-step chart (SVG text).
pub fn steps_svg(r: &Report) -> String {
    let mut svg = String::new();
    let points: Vec<(f64, f64)> = {
        let mut p: Vec<(f64, f64)> = r
            .jobs
            .iter()
            .flat_map(|j| j.checkpoints.iter().map(|(t, s)| (hours(*t), *s as f64)))
            .collect();
        p.sort_by(|a, b| a.0.total_cmp(&b.0));
        p
    };
    let max_t = points.iter().map(|p| p.0).fold(0.01, f64::max);
    let max_s = points.iter().map(|p| p.1).fold(1.0, f64::max);
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 320)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let chart = ChartBuilder::on(&root)
            .caption(
                "Newest checkpoint in S3 (training step) over simulated time",
                ("sans-serif", 20),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..max_t * 1.02, 0f64..max_s * 1.05);
        let Ok(mut chart) = chart else {
            return String::new();
        };
        let _ = chart
            .configure_mesh()
            .x_desc("simulated hours")
            .y_desc("step")
            .draw();
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
    svg_text(svg)
}

/// The cost chart (SVG text).
pub fn cost_svg(r: &Report) -> String {
    let mut svg = String::new();
    let mut bars: Vec<(String, f64, f64)> = r
        .jobs
        .iter()
        .filter_map(|j| {
            let s = j.savings.as_ref()?;
            Some((j.name.clone(), s.on_demand_cost_usd?, s.spot_cost_usd?))
        })
        .collect();
    if let Some(l) = &r.lineage {
        if let (Some(o), Some(s)) = (l.on_demand_cost_usd, l.spot_cost_usd) {
            bars.push(("lineage total".into(), o, s));
        }
    }
    let max = bars.iter().map(|b| b.1.max(b.2)).fold(1e-6, f64::max);
    let n = bars.len().max(1);
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 360)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let chart = ChartBuilder::on(&root)
            .caption("Cost: on-demand vs spot (USD)", ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..n as f64, 0f64..max * 1.15);
        let Ok(mut chart) = chart else {
            return String::new();
        };
        let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
        let _ = chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n * 2 + 1)
            .x_label_formatter(&|x| {
                let i = *x - 0.5;
                if (i - i.round()).abs() < 1e-6 && i >= 0.0 {
                    names.get(i.round() as usize).cloned().unwrap_or_default()
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
                    [(i as f64 + 0.15, 0.0), (i as f64 + 0.48, b.1)],
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
                    [(i as f64 + 0.52, 0.0), (i as f64 + 0.85, b.2)],
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
    svg_text(svg)
}

fn svg_text(s: String) -> String {
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The whole HTML page (self-contained: inline SVG, inline CSS, no scripts).
pub fn render(r: &Report) -> String {
    let verdict = match r.weights_match {
        Some(true) => {
            "<p class=yes>Final weights equal the uninterrupted run: YES (bit-identical)</p>"
        }
        Some(false) => "<p class=no>Final weights equal the uninterrupted run: NO</p>",
        None => "<p class=no>Final weights not compared</p>",
    };
    let savings = r.lineage.as_ref().map_or(String::new(), |l| {
        format!(
            "<p>Lineage savings: <b>{:.1}%</b> ({} training s, {} billable s); on-demand {}, spot {}, saved {}</p>",
            l.savings_percent,
            l.training_seconds,
            l.billable_seconds,
            l.on_demand_cost_usd.map_or("n/a".into(), |x| format!("${x:.4}")),
            l.spot_cost_usd.map_or("n/a".into(), |x| format!("${x:.4}")),
            l.dollars_saved.map_or("n/a".into(), |x| format!("${x:.4}")),
        )
    });
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>spotcheck demo report</title>\n<style>body{{font-family:sans-serif;max-width:1040px;margin:2em auto}}.yes{{color:#186a30;font-weight:bold;font-size:1.2em}}.no{{color:#a01010;font-weight:bold;font-size:1.2em}}pre{{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}}</style></head><body>\n<h1>spotcheck demo report</h1>\n{verdict}\n<p>{} SageMaker-internal restart(s), {} relaunch(es) by the control plane ({} after MaxWaitTimeExceeded). Outcome: {}.</p>\n{savings}\n<h2>Timeline</h2>\n{}\n{}\n<h2>Cost</h2>\n{}\n<h2>Full report</h2>\n<pre>{}</pre>\n</body></html>\n",
        r.internal_restarts,
        r.relaunches.len(),
        r.relaunches_after_max_wait,
        escape(&r.outcome),
        timeline_svg(r),
        steps_svg(r),
        cost_svg(r),
        escape(&render_text(r)),
    )
}
