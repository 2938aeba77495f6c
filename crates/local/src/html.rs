//! The demo's HTML report: one self-contained file with the timeline and cost charts inlined
//! as SVG, plus the text report.
//!
//! Owns [`render`] (pure: a [`Report`] in, HTML text out) and the mapping of the demo's report
//! onto the charts shared with `spotcheck report` (`spotcheck_report::charts`): a Gantt-style
//! timeline of each job's secondary statuses with capacity outages and checkpoint arrivals, the
//! durable (checkpointed) step over simulated time, and spot vs on-demand cost per job and for
//! the lineage.

use spotcheck_report::charts::{self, CostBar, Row, Segment, OUTAGE};

use crate::report::{render_text, Report};

fn hours(s: f64) -> f64 {
    s / 3600.0
}

/// The timeline chart (SVG text): capacity outages, then each job's secondary statuses with
/// its checkpoints reaching S3.
pub fn timeline_svg(r: &Report) -> String {
    let outages = Row {
        label: "spot capacity outages".into(),
        segments: r
            .outages
            .iter()
            .map(|(_, s, e)| Segment {
                start: hours(*s),
                end: hours(*e),
                status: OUTAGE.into(),
            })
            .collect(),
        marks: Vec::new(),
    };
    let jobs = r.jobs.iter().map(|j| Row {
        label: format!("{} ({})", j.name, j.instance_type),
        segments: j
            .phases
            .iter()
            .map(|(s, e, status)| Segment {
                start: hours(*s),
                end: hours(*e),
                status: status.clone(),
            })
            .collect(),
        marks: j.checkpoints.iter().map(|(t, _)| hours(*t)).collect(),
    });
    let rows: Vec<Row> = std::iter::once(outages).chain(jobs).collect();
    charts::timeline_svg("Lineage timeline (simulated hours)", &rows)
}

/// The checkpointed-step chart (SVG text).
pub fn steps_svg(r: &Report) -> String {
    let points: Vec<(f64, f64)> = r
        .jobs
        .iter()
        .flat_map(|j| j.checkpoints.iter().map(|(t, s)| (hours(*t), *s as f64)))
        .collect();
    charts::line_svg(
        "Newest checkpoint in S3 (training step) over simulated time",
        "simulated hours",
        "step",
        &points,
    )
}

/// The cost chart (SVG text): on-demand vs spot per job and for the lineage.
pub fn cost_svg(r: &Report) -> String {
    let mut bars: Vec<CostBar> = r
        .jobs
        .iter()
        .filter_map(|j| {
            let s = j.savings.as_ref()?;
            Some(CostBar {
                label: j.name.clone(),
                on_demand: s.on_demand_cost_usd?,
                spot: s.spot_cost_usd?,
            })
        })
        .collect();
    if let Some(l) = &r.lineage {
        if let (Some(on_demand), Some(spot)) = (l.on_demand_cost_usd, l.spot_cost_usd) {
            bars.push(CostBar {
                label: "lineage total".into(),
                on_demand,
                spot,
            });
        }
    }
    charts::cost_svg("Cost: on-demand vs spot (USD)", &bars)
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
    let value = r.counterfactual.as_ref().map_or(String::new(), |c| {
        format!("<p class=value>{}</p>\n", escape(&c.line()))
    });
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>spotcheck demo report</title>\n<style>body{{font-family:sans-serif;max-width:1040px;margin:2em auto}}.yes{{color:#186a30;font-weight:bold;font-size:1.2em}}.no{{color:#a01010;font-weight:bold;font-size:1.2em}}.value{{font-weight:bold;color:#186a30}}pre{{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}}</style></head><body>\n<h1>spotcheck demo report</h1>\n{verdict}\n{value}<p>{} SageMaker-internal restart(s), {} relaunch(es) by the control plane ({} after MaxWaitTimeExceeded). Outcome: {}.</p>\n{savings}\n<h2>Timeline</h2>\n{}\n{}\n<h2>Cost</h2>\n{}\n<h2>Full report</h2>\n<pre>{}</pre>\n</body></html>\n",
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
