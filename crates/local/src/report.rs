//! The demo's report: what happened to a lineage, what it cost, and whether it trained the
//! same model — as data, as text, and as JSON.
//!
//! Owns [`Report`] and its pure construction from job views, control-plane decisions and
//! trainer log summaries ([`build`]), plus [`render_text`]. It reads no files and starts
//! nothing: `demo` gathers the inputs, `html` draws the charts.
//!
//! Definitions:
//!
//! - **Lost steps** at a restart = the last step the previous instance reached (its `stopped`
//!   step, or the last step it logged when it was killed — then a lower bound) minus the step
//!   the next instance resumed from.
//! - **Savings** are the control plane's formulas (`spotcheck_control::savings`): per job from
//!   `TrainingTimeInSeconds` and `BillableTimeInSeconds`, per lineage summed; dollars at the
//!   price table's on-demand rate.
//! - **Checkpoint overhead** = time the training loop stalled for checkpoints (the trainer's
//!   `stall_seconds`) over the processes' wall time.
//! - **Counterfactual**: `spotcheck_report::counterfactual` over the jobs as attempts (attempt
//!   and resume step from the relaunch's `spotcheck:*` tags, else creation order and the step
//!   its first trainer process resumed from) — what the lineage would have ended with without
//!   spotcheck, and fully on-demand.

use serde::Serialize;
use spotcheck_control::savings::{
    attempt_facts, job_savings, lineage_savings, LineageSummary, SavingsRecord,
};
use spotcheck_control::tags::keys;
use spotcheck_control::{JobFacts, PriceTable, Tags};
use spotcheck_report::counterfactual::{counterfactual, Counterfactual};

use crate::clock::EpochMs;
use crate::market::Outage;
use crate::service::{JobView, Note};

/// What one trainer process's log says.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ProcessLog {
    /// Job.
    pub job: String,
    /// Instance number.
    pub instance: u32,
    /// Whether the process reached its restore decision (a `resumed` or `fresh_start` line).
    /// One the reclaim caught earlier, still starting up, trained nothing and lost nothing.
    pub started: bool,
    /// Step resumed from (`None`: a fresh start, or no decision reached).
    pub resumed_from: Option<u64>,
    /// Last step reached.
    pub last_step: u64,
    /// Whether `last_step` is exact (a `stopped` or `completed` line) or a lower bound.
    pub exact: bool,
    /// Checkpoints saved.
    pub checkpoints: u64,
    /// Seconds the loop stalled for them.
    pub stall_seconds: f64,
}

/// Reads a trainer's JSON log lines (pure over the text).
pub fn parse_log(job: &str, instance: u32, text: &str) -> ProcessLog {
    let mut p = ProcessLog {
        job: job.to_owned(),
        instance,
        ..Default::default()
    };
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let step = v.get("step").and_then(|s| s.as_u64());
        match v.get("event").and_then(|e| e.as_str()) {
            Some("resumed") => {
                p.resumed_from = step;
                p.started = true;
            }
            Some("fresh_start") => p.started = true,
            Some("step") => p.last_step = p.last_step.max(step.unwrap_or(0)),
            Some("checkpoint_saved") => {
                p.checkpoints += 1;
                p.stall_seconds += v
                    .get("stall_seconds")
                    .and_then(|s| s.as_f64())
                    .unwrap_or(0.0);
                p.last_step = p.last_step.max(step.unwrap_or(0));
            }
            Some("stopped") => {
                p.last_step = step.unwrap_or(p.last_step);
                p.exact = true;
            }
            Some("completed") => {
                p.last_step = v
                    .get("steps")
                    .and_then(|s| s.as_u64())
                    .unwrap_or(p.last_step);
                p.exact = true;
            }
            _ => {}
        }
    }
    if let Some(r) = p.resumed_from {
        p.last_step = p.last_step.max(r);
    }
    p
}

/// The steps each process of the lineage redid: how far the previous process that started got,
/// less the step this one resumed from (with whether that previous count is exact). Processes
/// that never reached their restore decision are skipped: they redid nothing, and the next
/// one resumes from what the last one that trained left.
fn lost_steps(processes: &[ProcessLog]) -> Vec<(String, u64, bool)> {
    let mut lost = Vec::new();
    let mut prev: Option<&ProcessLog> = None;
    for next in processes.iter().filter(|p| p.started) {
        if let Some(prev) = prev {
            lost.push((
                format!("{} #{}", next.job, next.instance),
                prev.last_step
                    .saturating_sub(next.resumed_from.unwrap_or(0)),
                prev.exact,
            ));
        }
        prev = Some(next);
    }
    lost
}

/// One row of the timeline.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimelineEntry {
    /// Simulated seconds since the lineage began.
    pub t: f64,
    /// Job.
    pub job: String,
    /// What happened.
    pub what: String,
}

/// A relaunch the control plane made.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Relaunch {
    /// The job that ended.
    pub from: String,
    /// The new job.
    pub to: String,
    /// Its instance type.
    pub instance_type: Option<String>,
    /// Spot or on-demand.
    pub spot: bool,
    /// The engine's reason.
    pub reason: String,
}

/// One job's line in the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobRow {
    /// Name.
    pub name: String,
    /// Instance type.
    pub instance_type: String,
    /// Managed spot.
    pub spot: bool,
    /// Final TrainingJobStatus/SecondaryStatus.
    pub outcome: String,
    /// Spot interruptions.
    pub interruptions: u32,
    /// Instances launched (1 + SageMaker-internal restarts, when it trained).
    pub instances: u32,
    /// Hosts per instance launch (`InstanceCount`).
    pub hosts: u64,
    /// Checkpoint steps that reached S3 (from every host).
    pub checkpoints_uploaded: usize,
    /// Simulated seconds from the lineage start: creation, end.
    pub span: (f64, f64),
    /// Savings, when the job has times.
    pub savings: Option<SavingsRecord>,
    /// Phases: (start s, end s, secondary status).
    pub phases: Vec<(f64, f64, String)>,
    /// Checkpoints reaching S3: (s, step).
    pub checkpoints: Vec<(f64, u64)>,
}

/// The whole report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// Jobs in creation order.
    pub jobs: Vec<JobRow>,
    /// The lineage's savings.
    pub lineage: Option<LineageSummary>,
    /// Relaunches.
    pub relaunches: Vec<Relaunch>,
    /// SageMaker-internal restarts (interruptions followed by a new instance of the same job).
    pub internal_restarts: u32,
    /// Relaunches after Stopped/MaxWaitTimeExceeded.
    pub relaunches_after_max_wait: u32,
    /// Relaunches onto another instance type (down the fallback ladder).
    pub ladder_moves: u32,
    /// Every restart's lost steps: (job of the next instance, lost, exact).
    pub lost_steps: Vec<(String, u64, bool)>,
    /// Trainer logs.
    pub processes: Vec<ProcessLog>,
    /// Σ stall / Σ process wall time, percent.
    pub checkpoint_overhead_percent: Option<f64>,
    /// Σ checkpoints saved.
    pub checkpoints_saved: u64,
    /// The timeline.
    pub timeline: Vec<TimelineEntry>,
    /// Outages by instance type, simulated seconds from the lineage start.
    pub outages: Vec<(String, f64, f64)>,
    /// Whether the final model equals the uninterrupted run's (None: not compared).
    pub weights_match: Option<bool>,
    /// What was compared, file by file.
    pub weights_detail: Vec<(String, bool)>,
    /// How the lineage ended.
    pub outcome: String,
    /// Wall seconds of the reference run.
    pub reference_wall_seconds: f64,
    /// Wall seconds of the managed lineage.
    pub lineage_wall_seconds: f64,
    /// The time scale (simulated s per wall s).
    pub time_scale: f64,
    /// Price table date.
    pub prices_as_of: Option<String>,
    /// Without spotcheck (SageMaker's own restarts only), with it, fully on-demand.
    pub counterfactual: Option<Counterfactual>,
}

/// The inputs [`build`] needs besides the jobs.
pub struct Inputs<'a> {
    /// Relaunches, in order.
    pub relaunches: Vec<Relaunch>,
    /// Trainer logs.
    pub processes: Vec<ProcessLog>,
    /// Outages by type (absolute times).
    pub outages: Vec<(String, Outage)>,
    /// Prices.
    pub prices: &'a PriceTable,
    /// File comparisons.
    pub weights: Vec<(String, bool)>,
    /// Reference run wall seconds.
    pub reference_wall_seconds: f64,
    /// Lineage wall seconds.
    pub lineage_wall_seconds: f64,
    /// Scale.
    pub time_scale: f64,
}

/// The host whose process speaks for a job: the ranks of a multi-instance job train in
/// lockstep, so rank 0's (`algo-1`, as the local service and SageMaker name it) progress,
/// resumes and wall time are the job's.
pub const LEAD_HOST: &str = "algo-1";

/// A job's `ResourceConfig.InstanceCount` (1 when absent).
fn hosts_of(j: &JobView) -> u64 {
    j.describe["ResourceConfig"]["InstanceCount"]
        .as_u64()
        .unwrap_or(1)
        .max(1)
}

fn secs(t: EpochMs, origin: EpochMs) -> f64 {
    (t - origin) as f64 / 1000.0
}

/// Builds the report (pure).
pub fn build(jobs: &[JobView], inputs: Inputs<'_>) -> Report {
    let mut jobs: Vec<&JobView> = jobs.iter().collect();
    jobs.sort_by_key(|j| (j.state.created, j.name.clone()));
    let origin = jobs.first().map_or(0, |j| j.state.created);
    let end = jobs
        .iter()
        .map(|j| j.state.training_end.unwrap_or(j.state.last_modified))
        .max()
        .unwrap_or(origin);
    let mut timeline = Vec::new();
    let mut rows = Vec::new();
    let mut facts = Vec::new();
    let mut internal_restarts = 0;
    let mut attempts = Vec::new();
    for (index, j) in jobs.iter().enumerate() {
        let mut phases = Vec::new();
        for t in &j.state.transitions {
            let stop = t.end.unwrap_or(end);
            phases.push((secs(t.start, origin), secs(stop, origin), t.status.clone()));
        }
        let mut checkpoints = Vec::new();
        // Each host's sync reports its own namespace: a step is in S3 once every host's is.
        let hosts = hosts_of(j);
        let mut uploaded_by: std::collections::BTreeMap<u64, u64> = Default::default();
        for n in &j.notes {
            let t = secs(n.at, origin);
            match &n.note {
                Note::Status {
                    status,
                    secondary,
                    message,
                } => timeline.push(TimelineEntry {
                    t,
                    job: j.name.clone(),
                    what: format!("{status}/{secondary}: {message}"),
                }),
                Note::CheckpointUploaded { step } => {
                    let count = uploaded_by.entry(*step).or_default();
                    *count += 1;
                    if *count != hosts {
                        continue;
                    }
                    checkpoints.push((t, *step));
                    timeline.push(TimelineEntry {
                        t,
                        job: j.name.clone(),
                        what: if hosts > 1 {
                            format!("checkpoint step {step} in S3 from all {hosts} hosts")
                        } else {
                            format!("checkpoint step {step} in S3")
                        },
                    });
                }
                Note::ProcessExited { instance, code, .. } => timeline.push(TimelineEntry {
                    t,
                    job: j.name.clone(),
                    what: format!(
                        "instance {instance}: trainer exited ({})",
                        code.map_or("killed".to_owned(), |c| format!("code {c}"))
                    ),
                }),
                Note::SyncFailed { error } => timeline.push(TimelineEntry {
                    t,
                    job: j.name.clone(),
                    what: format!("checkpoint sync failed: {error}"),
                }),
                Note::ProcessStarted { .. } => {}
            }
        }
        internal_restarts += j.state.instances.saturating_sub(1);
        let job_facts = serde_json::to_vec(&j.describe)
            .ok()
            .and_then(|b| JobFacts::from_describe_json(&b).ok());
        let savings = job_facts
            .as_ref()
            .and_then(|f| job_savings(f, inputs.prices).ok());
        if let Some(f) = job_facts {
            // The relaunch's tags say its attempt and the step it resumes from, as in AWS.
            let mut tags = Tags::new();
            for (k, v) in &j.tags {
                tags.insert(k.clone(), v.clone());
            }
            let mut attempt = attempt_facts(&f.clone().with_tags(&tags), inputs.prices);
            if tags.get(keys::ATTEMPT).is_none() {
                attempt.attempt = u32::try_from(index + 1).unwrap_or(u32::MAX);
            }
            attempt.resume_step = attempt.resume_step.or_else(|| {
                inputs
                    .processes
                    .iter()
                    .find(|p| p.job == j.name)
                    .and_then(|p| p.resumed_from)
            });
            attempts.push(attempt);
            facts.push(f);
        }
        rows.push(JobRow {
            name: j.name.clone(),
            instance_type: j.instance_type.clone(),
            spot: j.spot,
            outcome: format!("{}/{}", j.state.status, j.state.secondary),
            interruptions: j.state.interruptions,
            instances: j.state.instances,
            hosts,
            checkpoints_uploaded: checkpoints.len(),
            span: (
                secs(j.state.created, origin),
                secs(j.state.training_end.unwrap_or(end), origin),
            ),
            savings,
            phases,
            checkpoints,
        });
    }
    for r in &inputs.relaunches {
        if let Some(j) = jobs.iter().find(|j| j.name == r.to) {
            timeline.push(TimelineEntry {
                t: secs(j.state.created, origin),
                job: r.from.clone(),
                what: format!(
                    "control plane relaunched as {} on {} ({}): {}",
                    r.to,
                    r.instance_type.as_deref().unwrap_or("the same type"),
                    if r.spot { "spot" } else { "on-demand" },
                    r.reason
                ),
            });
        }
    }
    timeline.sort_by(|a, b| a.t.total_cmp(&b.t));
    let relaunches_after_max_wait = inputs
        .relaunches
        .iter()
        .filter(|r| {
            jobs.iter()
                .any(|j| j.name == r.from && j.state.secondary == "MaxWaitTimeExceeded")
        })
        .count() as u32;
    let ladder_moves = inputs
        .relaunches
        .iter()
        .filter(|r| {
            let parent = jobs.iter().find(|j| j.name == r.from);
            matches!((parent, &r.instance_type), (Some(p), Some(t)) if &p.instance_type != t)
        })
        .count() as u32;
    let lost_steps = lost_steps(&inputs.processes);
    let stall: f64 = inputs.processes.iter().map(|p| p.stall_seconds).sum();
    let process_wall: f64 = jobs
        .iter()
        .map(|j| {
            let mut total = 0i64;
            let mut started: Option<EpochMs> = None;
            for n in &j.notes {
                match &n.note {
                    Note::ProcessStarted { host, .. } if host == LEAD_HOST => started = Some(n.at),
                    Note::ProcessExited { host, .. } if host == LEAD_HOST => {
                        if let Some(s) = started.take() {
                            total += n.at - s;
                        }
                    }
                    _ => {}
                }
            }
            total as f64 / 1000.0 / inputs.time_scale
        })
        .sum();
    let root = jobs.first().map(|j| j.name.clone()).unwrap_or_default();
    let lineage = lineage_savings(&root, &facts, inputs.prices).ok();
    let last = jobs.last();
    let outcome = match last {
        Some(j) if j.state.status == "Completed" => format!("completed by {}", j.name),
        Some(j) => format!(
            "ended with {} {}/{}",
            j.name, j.state.status, j.state.secondary
        ),
        None => "no job ran".into(),
    };
    let weights_match = if inputs.weights.is_empty() {
        None
    } else {
        Some(inputs.weights.iter().all(|(_, same)| *same))
    };
    Report {
        jobs: rows,
        lineage,
        relaunches: inputs.relaunches,
        internal_restarts,
        relaunches_after_max_wait,
        ladder_moves,
        lost_steps,
        checkpoints_saved: inputs.processes.iter().map(|p| p.checkpoints).sum(),
        processes: inputs.processes,
        checkpoint_overhead_percent: (process_wall > 0.0).then(|| stall / process_wall * 100.0),
        timeline,
        outages: inputs
            .outages
            .iter()
            .filter(|(_, o)| o.start < end)
            .map(|(t, o)| {
                (
                    t.clone(),
                    secs(o.start.max(origin), origin),
                    secs(o.end.min(end), origin),
                )
            })
            .filter(|(_, s, e)| e > s)
            .collect(),
        weights_match,
        weights_detail: inputs.weights,
        outcome,
        reference_wall_seconds: inputs.reference_wall_seconds,
        lineage_wall_seconds: inputs.lineage_wall_seconds,
        time_scale: inputs.time_scale,
        prices_as_of: inputs.prices.as_of().map(str::to_owned),
        counterfactual: counterfactual(&attempts),
    }
}

fn hms(s: f64) -> String {
    let s = s.max(0.0) as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn usd(x: Option<f64>) -> String {
    x.map_or("n/a".into(), |x| format!("${x:.4}"))
}

/// The report as text.
pub fn render_text(r: &Report) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "\n=== spotcheck demo report ===\n");
    let _ = writeln!(
        o,
        "Timeline (simulated h:mm:ss since the first job was created):"
    );
    for e in &r.timeline {
        let _ = writeln!(o, "  {:>9}  {:<36} {}", hms(e.t), e.job, e.what);
    }
    let _ = writeln!(o, "\nJobs:");
    for j in &r.jobs {
        let _ = writeln!(
            o,
            "  {:<36} {:<15} {:<9} {:<32} interruptions {}  instances {}{}  checkpoints in S3 {}",
            j.name,
            if j.hosts > 1 {
                format!("{} ×{}", j.instance_type, j.hosts)
            } else {
                j.instance_type.clone()
            },
            if j.spot { "spot" } else { "on-demand" },
            j.outcome,
            j.interruptions,
            j.instances,
            if j.hosts > 1 {
                format!(" (of {} hosts each)", j.hosts)
            } else {
                String::new()
            },
            j.checkpoints_uploaded
        );
    }
    let _ = writeln!(
        o,
        "\nRecovery: {} SageMaker-internal restart(s), {} relaunch(es) by the control plane ({} after MaxWaitTimeExceeded, {} down the instance ladder).",
        r.internal_restarts,
        r.relaunches.len(),
        r.relaunches_after_max_wait,
        r.ladder_moves
    );
    for rl in &r.relaunches {
        let _ = writeln!(
            o,
            "  {} -> {} on {} ({}): {}",
            rl.from,
            rl.to,
            rl.instance_type.as_deref().unwrap_or("same type"),
            if rl.spot { "spot" } else { "on-demand" },
            rl.reason
        );
    }
    let lost: u64 = r.lost_steps.iter().map(|l| l.1).sum();
    let _ = writeln!(o, "Lost steps (redone after restarts): {lost} in total");
    for (job, n, exact) in &r.lost_steps {
        let _ = writeln!(o, "  before {job}: {}{n}", if *exact { "" } else { "≥" });
    }
    let _ = writeln!(
        o,
        "\nSavings (spot vs on-demand, prices as of {}):",
        r.prices_as_of.as_deref().unwrap_or("?")
    );
    let _ = writeln!(
        o,
        "  {:<36} {:>9} {:>9} {:>8} {:>11} {:>11} {:>11}",
        "job", "train s", "bill s", "saved %", "on-demand", "spot", "saved"
    );
    for j in &r.jobs {
        if let Some(s) = &j.savings {
            let _ = writeln!(
                o,
                "  {:<36} {:>9} {:>9} {:>7.1}% {:>11} {:>11} {:>11}",
                j.name,
                s.training_seconds,
                s.billable_seconds,
                s.savings_percent,
                usd(s.on_demand_cost_usd),
                usd(s.spot_cost_usd),
                usd(s.dollars_saved)
            );
        } else {
            let _ = writeln!(o, "  {:<36} (no training time: nothing billed)", j.name);
        }
    }
    if let Some(l) = &r.lineage {
        let _ = writeln!(
            o,
            "  {:<36} {:>9} {:>9} {:>7.1}% {:>11} {:>11} {:>11}",
            format!("lineage {}", l.root),
            l.training_seconds,
            l.billable_seconds,
            l.savings_percent,
            usd(l.on_demand_cost_usd),
            usd(l.spot_cost_usd),
            usd(l.dollars_saved)
        );
    }
    if let Some(c) = &r.counterfactual {
        let _ = writeln!(o, "\nThe value, in one line: {}.", c.line());
    }
    let _ = writeln!(
        o,
        "\nCheckpoint overhead: {} checkpoints, {} of the trainers' wall time stalled for them.",
        r.checkpoints_saved,
        r.checkpoint_overhead_percent
            .map_or("n/a".into(), |p| format!("{p:.2}%"))
    );
    let _ = writeln!(
        o,
        "Time: reference run {:.1} s wall; managed lineage {:.1} s wall (time scale {:.0}x, idle waits fast-forwarded).",
        r.reference_wall_seconds, r.lineage_wall_seconds, r.time_scale
    );
    let _ = writeln!(o, "Outcome: {}", r.outcome);
    let verdict = match r.weights_match {
        Some(true) => "YES — bit-identical to the uninterrupted run",
        Some(false) => "NO — the final model differs from the uninterrupted run",
        None => "not compared (no final model)",
    };
    let _ = writeln!(
        o,
        "Final weights equal the uninterrupted run with the same seed: {verdict}"
    );
    for (f, same) in &r.weights_detail {
        let _ = writeln!(
            o,
            "  {f}: {}",
            if *same { "identical" } else { "DIFFERENT" }
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_summarised() {
        let text = r#"{"event":"resumed","step":40}
{"event":"step","step":50}
{"event":"checkpoint_saved","step":60,"stall_seconds":0.01}
not json
{"event":"step","step":70}"#;
        let p = parse_log("j", 2, text);
        assert_eq!(
            (p.resumed_from, p.last_step, p.exact, p.checkpoints),
            (Some(40), 70, false, 1)
        );
        assert!(p.started);
        let p = parse_log("j", 1, r#"{"event":"stopped","step":65}"#);
        assert_eq!((p.last_step, p.exact), (65, true));
        let p = parse_log("j", 1, r#"{"event":"completed","steps":300}"#);
        assert_eq!(p.last_step, 300);
    }

    #[test]
    fn a_process_that_never_started_neither_loses_steps_nor_hides_them() {
        let log = |instance, text| parse_log("j", instance, text);
        let first = log(
            1,
            "{\"event\":\"fresh_start\",\"step\":0}\n{\"event\":\"step\",\"step\":120}",
        );
        let killed_starting_up = log(2, "not json: importing\n");
        let third = log(3, r#"{"event":"resumed","step":100}"#);
        let fresh_again = log(4, r#"{"event":"fresh_start","step":0}"#);
        assert!(first.started && !killed_starting_up.started && third.started);
        assert_eq!(
            lost_steps(&[first, killed_starting_up, third, fresh_again]),
            [
                ("j #3".to_owned(), 20, false),
                ("j #4".to_owned(), 100, false)
            ]
        );
    }
}
