//! The ledger report as text and as a self-contained HTML page.
//!
//! Owns [`text`] and [`html`] (pure: a [`LedgerReport`] in, a string out). The page has inline
//! CSS and inline SVG charts from [`crate::charts`] — cumulative savings by day, on-demand vs
//! spot cost per lineage, and the timelines of the most recent lineages — and no scripts, so it
//! opens anywhere, offline. Every total figure carries a `data-figure` attribute naming its
//! field, for tools and tests.

use std::fmt::Write;

use crate::aggregate::{Figures, LedgerReport, LineageRow, Timeline};
use crate::charts::{cost_svg, line_svg, timeline_svg, CostBar, Row, Segment};

/// Lineages drawn in the cost chart (the most expensive; the total is always drawn).
pub const COST_BARS: usize = 12;

fn usd(x: f64) -> String {
    format!("${x:.2}")
}

fn percent(p: Option<f64>) -> String {
    p.map_or_else(|| "n/a".to_owned(), |p| format!("{p:.1}%"))
}

fn skipped_text(r: &LedgerReport) -> String {
    if r.records.skipped.is_empty() {
        return "0 skipped".to_owned();
    }
    let parts: Vec<String> = r
        .records
        .skipped
        .iter()
        .map(|(reason, n)| format!("{n} {}", reason.describe()))
        .collect();
    format!(
        "{} skipped ({})",
        r.records.skipped_total(),
        parts.join(", ")
    )
}

fn records_line(r: &LedgerReport) -> String {
    format!(
        "{} objects listed, {} read ({} of an older shape), {}, {} left unread by the filter",
        r.records.listed,
        r.records.read,
        r.records.older_shape,
        skipped_text(r),
        r.records.filtered_out
    )
}

fn filter_line(r: &LedgerReport) -> Option<String> {
    let f = &r.filter;
    let mut parts = Vec::new();
    if let Some(s) = f.since {
        parts.push(format!("written since {}", s.to_rfc3339()));
    }
    if let Some(u) = f.until {
        parts.push(format!("written before {}", u.to_rfc3339()));
    }
    if let Some(l) = &f.lineage {
        parts.push(format!("lineage {l}"));
    }
    (!parts.is_empty()).then(|| format!("Records {}", parts.join(", ")))
}

fn totals_line(label: &str, f: &Figures) -> String {
    format!(
        "  {label:<40} {:>5} {:>6} {:>6} {:>6} {:>5} {:>9} {:>10} {:>10} {:>7} {:>11} {:>11} {:>11} {:>5}",
        f.jobs,
        f.interruptions,
        f.sagemaker_restarts,
        f.relaunches,
        f.give_ups,
        f.lost_steps,
        f.training_seconds,
        f.billable_seconds,
        percent(f.savings_percent),
        usd(f.on_demand_usd),
        usd(f.spot_usd),
        usd(f.saved_usd),
        f.validation_failures
    )
}

fn counterfactual_total(r: &LedgerReport) -> Option<String> {
    let c = &r.counterfactual;
    (c.lineages > 0).then(|| {
        format!(
            "All {} lineage(s) with attempt facts: without spotcheck {} of them would have stopped \
             unfinished, having spent {}; with spotcheck they spent {}; fully on-demand {}{}.",
            c.lineages,
            c.rescued,
            usd(c.without_spotcheck_usd),
            usd(c.with_spotcheck_usd),
            usd(c.on_demand_usd),
            if c.unpriced > 0 {
                format!(" ({} lineage(s) without a price left out of the sums)", c.unpriced)
            } else {
                String::new()
            }
        )
    })
}

/// The report as text: records read, one line per lineage, the total, the counterfactuals.
pub fn text(r: &LedgerReport, ledger: &str) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "spotcheck report: {ledger}");
    if let Some(f) = filter_line(r) {
        let _ = writeln!(o, "{f}");
    }
    let _ = writeln!(o, "{}", records_line(r));
    if !r.prices_as_of.is_empty() {
        let _ = writeln!(o, "On-demand prices as of {}", r.prices_as_of.join(", "));
    }
    let _ = writeln!(
        o,
        "\n  {:<40} {:>5} {:>6} {:>6} {:>6} {:>5} {:>9} {:>10} {:>10} {:>7} {:>11} {:>11} {:>11} {:>5}",
        "lineage (status)",
        "jobs",
        "intr",
        "restrt",
        "relnch",
        "gvup",
        "lost stp",
        "train s",
        "bill s",
        "saved",
        "on-demand",
        "spot",
        "saved $",
        "vfail"
    );
    for l in &r.lineages {
        let label = format!(
            "{}{} ({})",
            if l.ec2_run { "run " } else { "" },
            l.root,
            l.status.as_str()
        );
        let _ = writeln!(o, "{}", totals_line(&label, &l.figures));
    }
    let _ = writeln!(
        o,
        "{}",
        totals_line(&format!("total ({} lineages)", r.lineages.len()), &r.total)
    );
    let t = &r.total;
    let _ = writeln!(
        o,
        "\nIn total: {} job(s), {} spot interruption(s), {} SageMaker restart(s), {} relaunch(es) \
         and {} give-up(s) by the control plane, {} checkpointed step(s) lost, {} checkpoint \
         validation failure(s); {} training s, {} billable s; on-demand {}, spot {}, saved {} ({}).",
        t.jobs,
        t.interruptions,
        t.sagemaker_restarts,
        t.relaunches,
        t.give_ups,
        t.lost_steps,
        t.validation_failures,
        t.training_seconds,
        t.billable_seconds,
        usd(t.on_demand_usd),
        usd(t.spot_usd),
        usd(t.saved_usd),
        percent(t.savings_percent)
    );
    if t.unpriced_jobs > 0 || t.jobs_without_facts > 0 {
        let _ = writeln!(
            o,
            "Not in the figures: {} job(s) without a price (left out of the dollars), {} job(s) \
             without attempt facts (restarts unknown).",
            t.unpriced_jobs, t.jobs_without_facts
        );
    }
    let rescued: Vec<&LineageRow> = r
        .lineages
        .iter()
        .filter(|l| {
            l.counterfactual
                .as_ref()
                .is_some_and(|c| !c.without_spotcheck.completed)
        })
        .collect();
    if !rescued.is_empty() || r.counterfactual.lineages > 0 {
        let _ = writeln!(o, "\nCounterfactual (docs/report.md defines it):");
        for l in rescued {
            if let Some(c) = &l.counterfactual {
                let _ = writeln!(o, "  {}: {}", l.root, c.line());
            }
        }
        if let Some(line) = counterfactual_total(r) {
            let _ = writeln!(o, "  {line}");
        }
    }
    o
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn hours_between(from: i64, to: i64) -> f64 {
    (to - from) as f64 / 3_600_000.0
}

/// The chart rows of a lineage's timeline: one per attempt, its phases as segments.
fn timeline_rows(t: &Timeline) -> Vec<Row> {
    let origin = t
        .attempts
        .iter()
        .filter_map(|a| {
            a.created_at
                .or_else(|| a.phases.first().and_then(|p| p.start))
        })
        .map(|ts| ts.epoch_ms())
        .min()
        .unwrap_or(0);
    t.attempts
        .iter()
        .map(|a| {
            let ended = a.ended_at.map(|e| e.epoch_ms());
            let segments = a
                .phases
                .iter()
                .filter_map(|p| {
                    let start = p.start?.epoch_ms();
                    let end = p.end.map(|e| e.epoch_ms()).or(ended).unwrap_or(start);
                    Some(Segment {
                        start: hours_between(origin, start),
                        end: hours_between(origin, end.max(start)),
                        status: p.status.clone(),
                    })
                })
                .collect();
            Row {
                label: format!(
                    "{} #{} ({}{})",
                    a.job_name,
                    a.attempt,
                    a.instance_type.as_deref().unwrap_or("?"),
                    if a.spot == Some(false) {
                        ", on-demand"
                    } else {
                        ""
                    }
                ),
                segments,
                marks: Vec::new(),
            }
        })
        .collect()
}

fn figure_cells(f: &Figures, tag: bool) -> String {
    let cell = |name: &str, value: String| {
        if tag {
            format!("<td data-figure=\"{name}\">{value}</td>")
        } else {
            format!("<td>{value}</td>")
        }
    };
    [
        cell("jobs", f.jobs.to_string()),
        cell("interruptions", f.interruptions.to_string()),
        cell("sagemaker_restarts", f.sagemaker_restarts.to_string()),
        cell("relaunches", f.relaunches.to_string()),
        cell("give_ups", f.give_ups.to_string()),
        cell("lost_steps", f.lost_steps.to_string()),
        cell("training_seconds", f.training_seconds.to_string()),
        cell("billable_seconds", f.billable_seconds.to_string()),
        cell("on_demand_usd", usd(f.on_demand_usd)),
        cell("spot_usd", usd(f.spot_usd)),
        cell("saved_usd", usd(f.saved_usd)),
        cell("savings_percent", percent(f.savings_percent)),
        cell("validation_failures", f.validation_failures.to_string()),
    ]
    .concat()
}

const HEADER: &str = "<tr><th>lineage</th><th>status</th><th>jobs</th><th>interruptions</th>\
<th>SageMaker restarts</th><th>relaunches</th><th>give-ups</th><th>lost steps</th>\
<th>training s</th><th>billable s</th><th>on-demand</th><th>spot</th><th>saved</th>\
<th>saved %</th><th>validation failures</th></tr>";

/// The whole HTML page (self-contained: inline CSS and SVG, no scripts).
pub fn html(r: &LedgerReport, ledger: &str) -> String {
    let t = &r.total;
    let mut cumulative = 0.0;
    let origin_day = r.savings_by_day.first().map_or(0, |d| d.epoch_day);
    let points: Vec<(f64, f64)> = r
        .savings_by_day
        .iter()
        .map(|d| {
            cumulative += d.saved_usd;
            ((d.epoch_day - origin_day) as f64, cumulative)
        })
        .collect();
    let since = r
        .savings_by_day
        .first()
        .map_or("the first record", |d| d.day.as_str());
    let savings_chart = line_svg(
        "Dollars saved, cumulative, by the day jobs ended",
        &format!("days since {since}"),
        "USD saved",
        &points,
    );
    let mut priced: Vec<&LineageRow> = r
        .lineages
        .iter()
        .filter(|l| l.figures.on_demand_usd > 0.0)
        .collect();
    priced.sort_by(|a, b| b.figures.on_demand_usd.total_cmp(&a.figures.on_demand_usd));
    let mut bars: Vec<CostBar> = priced
        .iter()
        .take(COST_BARS)
        .map(|l| CostBar {
            label: l.root.clone(),
            on_demand: l.figures.on_demand_usd,
            spot: l.figures.spot_usd,
        })
        .collect();
    bars.push(CostBar {
        label: "total".into(),
        on_demand: t.on_demand_usd,
        spot: t.spot_usd,
    });
    let cost_chart = cost_svg("Cost: on-demand vs spot (USD)", &bars);
    let mut timelines = String::new();
    for tl in &r.timelines {
        let _ = writeln!(
            timelines,
            "<div class=chart>{}</div>",
            timeline_svg(
                &format!(
                    "Lineage {} (hours since its first job was created)",
                    tl.root
                ),
                &timeline_rows(tl),
            )
        );
    }
    if timelines.is_empty() {
        timelines.push_str("<p>No lineage in range has attempt facts yet (a lineage summary or a give-up record).</p>");
    }
    let mut rows = String::new();
    for l in &r.lineages {
        let _ = writeln!(
            rows,
            "<tr><td>{}{}</td><td>{}</td>{}</tr>",
            if l.ec2_run { "run " } else { "" },
            escape(&l.root),
            l.status.as_str(),
            figure_cells(&l.figures, false)
        );
    }
    let mut counterfactuals = String::new();
    if let Some(line) = counterfactual_total(r) {
        let _ = writeln!(
            counterfactuals,
            "<p class=value data-figure=\"counterfactual\">{}</p>",
            escape(&line)
        );
    }
    let mut items = String::new();
    for l in &r.lineages {
        if let Some(c) = l
            .counterfactual
            .as_ref()
            .filter(|c| !c.without_spotcheck.completed)
        {
            let _ = writeln!(
                items,
                "<li><b>{}</b>: {}</li>",
                escape(&l.root),
                escape(&c.line())
            );
        }
    }
    if !items.is_empty() {
        let _ = writeln!(counterfactuals, "<ul>\n{items}</ul>");
    }
    let filter = filter_line(r).map_or(String::new(), |f| format!("<p>{}</p>", escape(&f)));
    format!(
        "<!doctype html>\n<html lang=en><head><meta charset=\"utf-8\"><title>spotcheck report</title>\n\
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse;font-size:13px}}\
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}td:first-child,th:first-child{{text-align:left}}\
.value{{font-size:1.15em;font-weight:bold;color:#186a30}}.chart{{margin:1em 0}}pre{{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}}</style></head><body>\n\
<h1>spotcheck report</h1>\n<p>Ledger <code>{ledger}</code>. {records}.{prices}</p>\n{filter}\n\
<p class=value>Saved <span data-figure=\"headline_saved_usd\">{saved}</span> ({pct}) on {jobs} job(s) in {lineages} lineage(s): \
spot {spot} instead of {od} on-demand.</p>\n{counterfactuals}\
<h2>Totals</h2>\n<table>{HEADER}\n<tr><td>total</td><td>{lineages} lineages</td>{cells}</tr></table>\n\
<h2>Savings over time</h2>\n<div class=chart>{savings_chart}</div>\n\
<h2>Cost</h2>\n<div class=chart>{cost_chart}</div>\n\
<h2>Timelines (most recent lineages)</h2>\n{timelines}\
<h2>Lineages</h2>\n<table>{HEADER}\n{rows}</table>\n\
<h2>As text</h2>\n<pre>{text}</pre>\n</body></html>\n",
        ledger = escape(ledger),
        records = escape(&records_line(r)),
        prices = if r.prices_as_of.is_empty() {
            String::new()
        } else {
            format!(" On-demand prices as of {}.", escape(&r.prices_as_of.join(", ")))
        },
        saved = usd(t.saved_usd),
        pct = percent(t.savings_percent),
        jobs = t.jobs,
        lineages = r.lineages.len(),
        spot = usd(t.spot_usd),
        od = usd(t.on_demand_usd),
        cells = figure_cells(t, true),
        text = escape(&text(r, ledger)),
    )
}
