//! The ledger, aggregated per lineage and in total.
//!
//! Owns the streaming [`Aggregator`] (pure: [`Aggregator::add`] takes one parsed record at a
//! time; [`Aggregator::finish`] returns the [`LedgerReport`]) and every figure's definition
//! (also in `docs/report.md`). Memory: one small entry per job and per lineage, one per EC2 run,
//! and the attempts' status phases of at most [`TIMELINES`] lineages (the most recent) — never
//! the records themselves, so tens of thousands of records cost what their jobs cost.
//!
//! Records are attributed to a lineage by the `lineage` the handler wrote into them, else by
//! the `lineage_root` of a savings record or the jobs of a lineage summary naming the job, else
//! the job is its own root (attempt 1 is named like its lineage). EC2 runs are lineages named
//! after the run.
//!
//! Per lineage:
//!
//! - **jobs**: SageMaker jobs seen in any record (EC2 runs: instances);
//! - **interruptions**: per job, the larger of its interruption records and the interruptions
//!   its facts count; plus EC2 interruption warnings (rebalance recommendations apart);
//! - **SageMaker restarts**: per job, from its facts (interruptions after which it ran again);
//! - **relaunches**: the highest attempt number seen minus 1 (at least jobs − 1); EC2 runs:
//!   continuations planned;
//! - **give-ups**, **user stops**, **checkpoint validation failures**: records of each kind;
//! - **lost steps**: checkpointed steps that validations found unusable (newest unusable step
//!   minus newest valid step), each unusable checkpoint counted once;
//! - **seconds and dollars**: per job, from its savings record, else the attempt facts of its
//!   lineage summary or give-up record; summed. Dollars cover the priced jobs; `unpriced_jobs`
//!   counts the others. Savings % = (1 − Σ billable / Σ training) × 100, SageMaker's formula.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use spotcheck_control::savings::AttemptFacts;
use spotcheck_control::Timestamp;

use crate::counterfactual::{counterfactual, Counterfactual};
use crate::record::{LedgerRecord, LineageRef, Parsed, Skip, Skipped};

/// Lineages whose attempt phases are kept for timeline charts (the most recently ended).
pub const TIMELINES: usize = 8;

/// Which records a report covers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Filter {
    /// Records written at or after this instant.
    pub since: Option<Timestamp>,
    /// Records written before this instant.
    pub until: Option<Timestamp>,
    /// Only this lineage (its root job, or an EC2 run).
    pub lineage: Option<String>,
}

impl Filter {
    /// Whether a record written at `at` is in the time range (unknown times are).
    pub fn admits_time(&self, at: Option<Timestamp>) -> bool {
        let Some(at) = at else { return true };
        self.since.is_none_or(|s| at >= s) && self.until.is_none_or(|u| at < u)
    }

    /// Whether the lineage `root` is reported.
    pub fn admits_lineage(&self, root: &str) -> bool {
        self.lineage.as_deref().is_none_or(|l| l == root)
    }
}

/// How many objects the report looked at, and what became of them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RecordCounts {
    /// Objects listed under the prefix.
    pub listed: u64,
    /// Left unread: written outside `--since`/`--until`, or keyed to another lineage.
    pub filtered_out: u64,
    /// Read as records.
    pub read: u64,
    /// Of those, records of an older shape (written before fields the report uses existed).
    pub older_shape: u64,
    /// Not read as records, by reason.
    pub skipped: BTreeMap<Skip, u64>,
    /// Bytes read.
    pub bytes_read: u64,
}

impl RecordCounts {
    /// All skipped objects.
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }
}

/// The figures of a lineage, or of all of them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Figures {
    /// SageMaker jobs (EC2 runs: instances).
    pub jobs: u64,
    /// Spot interruptions.
    pub interruptions: u64,
    /// EC2 rebalance recommendations (advice, not interruptions).
    pub rebalance_recommendations: u64,
    /// Interruptions after which SageMaker got the job an instance again.
    pub sagemaker_restarts: u64,
    /// Jobs whose restarts are unknown (no attempt facts: older records, or still running).
    pub jobs_without_facts: u64,
    /// New jobs the control plane created (relaunches, EC2 continuations).
    pub relaunches: u64,
    /// Lineages recovery gave up on.
    pub give_ups: u64,
    /// Jobs the user stopped.
    pub user_stops: u64,
    /// Checkpointed steps found unusable.
    pub lost_steps: u64,
    /// Checkpoint validations that found corrupt checkpoints.
    pub validation_failures: u64,
    /// Σ `TrainingTimeInSeconds`.
    pub training_seconds: u64,
    /// Σ `BillableTimeInSeconds`.
    pub billable_seconds: u64,
    /// (1 − billable / training) × 100.
    pub savings_percent: Option<f64>,
    /// Σ on-demand cost of the priced jobs.
    pub on_demand_usd: f64,
    /// Σ spot bill of the priced jobs.
    pub spot_usd: f64,
    /// On-demand − spot.
    pub saved_usd: f64,
    /// Jobs with times but no price (left out of the dollars).
    pub unpriced_jobs: u64,
}

impl Figures {
    fn add(&mut self, other: &Figures) {
        self.jobs += other.jobs;
        self.interruptions += other.interruptions;
        self.rebalance_recommendations += other.rebalance_recommendations;
        self.sagemaker_restarts += other.sagemaker_restarts;
        self.jobs_without_facts += other.jobs_without_facts;
        self.relaunches += other.relaunches;
        self.give_ups += other.give_ups;
        self.user_stops += other.user_stops;
        self.lost_steps += other.lost_steps;
        self.validation_failures += other.validation_failures;
        self.training_seconds += other.training_seconds;
        self.billable_seconds += other.billable_seconds;
        self.on_demand_usd += other.on_demand_usd;
        self.spot_usd += other.spot_usd;
        self.saved_usd += other.saved_usd;
        self.unpriced_jobs += other.unpriced_jobs;
        self.set_percent();
    }

    fn set_percent(&mut self) {
        self.savings_percent = (self.training_seconds > 0)
            .then(|| (1.0 - self.billable_seconds as f64 / self.training_seconds as f64) * 100.0);
    }
}

/// How a lineage stands, as far as the ledger knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// A job of it completed.
    Completed,
    /// Recovery gave up.
    GaveUp,
    /// The user stopped it.
    StoppedByUser,
    /// None of the above recorded yet (running, waiting, or an EC2 run).
    Open,
}

impl Status {
    /// For text output.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Completed => "completed",
            Status::GaveUp => "gave up",
            Status::StoppedByUser => "stopped by user",
            Status::Open => "open",
        }
    }
}

/// One lineage's line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LineageRow {
    /// Its root job (or EC2 run).
    pub root: String,
    /// An EC2 run rather than a SageMaker lineage.
    pub ec2_run: bool,
    /// How it stands.
    pub status: Status,
    /// Why recovery gave up, when it did.
    pub give_up_cause: Option<String>,
    /// Instance types its jobs ran on.
    pub instance_types: Vec<String>,
    /// Its earliest and latest record or job time.
    pub first_at: Option<Timestamp>,
    /// See `first_at`.
    pub last_at: Option<Timestamp>,
    /// Its figures.
    pub figures: Figures,
    /// Without spotcheck, with it, fully on-demand (needs attempt 1's facts).
    pub counterfactual: Option<Counterfactual>,
}

/// The counterfactuals summed over the lineages that have one.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CounterfactualTotals {
    /// Lineages with a counterfactual (attempt 1's facts known).
    pub lineages: u64,
    /// Of those, lineages that would not have completed without spotcheck but did with it.
    pub rescued: u64,
    /// Σ cost without spotcheck (priced lineages only).
    pub without_spotcheck_usd: f64,
    /// Σ cost with spotcheck.
    pub with_spotcheck_usd: f64,
    /// Σ cost fully on-demand.
    pub on_demand_usd: f64,
    /// Lineages left out of the sums for a missing price or time.
    pub unpriced: u64,
}

/// Dollars saved on one day (UTC), by the day the job or lineage ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DaySavings {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// Days since 1970-01-01.
    pub epoch_day: i64,
    /// Dollars saved that day.
    pub saved_usd: f64,
    /// Spot bill that day.
    pub spot_usd: f64,
}

/// A lineage's attempts with their status phases, for a timeline chart.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Timeline {
    /// The lineage.
    pub root: String,
    /// Its attempts, by attempt number.
    pub attempts: Vec<AttemptFacts>,
}

/// The whole report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LedgerReport {
    /// What was read.
    pub records: RecordCounts,
    /// The filter applied.
    pub filter: Filter,
    /// Lineages, most recent first.
    pub lineages: Vec<LineageRow>,
    /// Every lineage's figures summed.
    pub total: Figures,
    /// Lineages by status.
    pub lineages_by_status: BTreeMap<String, u64>,
    /// The counterfactuals summed.
    pub counterfactual: CounterfactualTotals,
    /// Savings by day, oldest first.
    pub savings_by_day: Vec<DaySavings>,
    /// Timelines of the most recently ended lineages (at most [`TIMELINES`]).
    pub timelines: Vec<Timeline>,
    /// Dates of the price tables the records were priced with.
    pub prices_as_of: Vec<String>,
}

/// A job's money: times and dollars (`None` dollars: unpriced).
#[derive(Clone, Debug, Default)]
struct Money {
    training: u64,
    billable: u64,
    on_demand: Option<f64>,
    spot: Option<f64>,
    ended_at: Option<Timestamp>,
}

/// The span of times seen for a job or run.
#[derive(Clone, Copy, Debug, Default)]
struct Span {
    first: Option<Timestamp>,
    last: Option<Timestamp>,
}

impl Span {
    fn see(&mut self, at: Option<Timestamp>) {
        if let Some(at) = at {
            self.first = Some(self.first.map_or(at, |f| f.min(at)));
            self.last = Some(self.last.map_or(at, |l| l.max(at)));
        }
    }

    fn merge(&mut self, other: Span) {
        self.see(other.first);
        self.see(other.last);
    }
}

/// A validation's dedupe key (prefix, newest unusable checkpoint) and its lost steps.
type Lost = (String, Option<String>, u64);

#[derive(Default)]
struct JobEntry {
    root: Option<String>,
    attempt: Option<u32>,
    interruption_records: u64,
    /// Facts of the job at its end (lineage summary, give-up), without phases.
    facts: Option<AttemptFacts>,
    /// From its savings record (it completed).
    savings: Option<Money>,
    interruptions_counted: Option<u32>,
    restarts: Option<u32>,
    instance_type: Option<String>,
    user_stopped: bool,
    give_up: Option<String>,
    validations: Vec<Lost>,
    span: Span,
}

#[derive(Default)]
struct RunEntry {
    instances: BTreeSet<String>,
    warnings: u64,
    rebalances: u64,
    continuations: BTreeSet<String>,
    give_up: Option<String>,
    give_ups: u64,
    validations: Vec<Lost>,
    span: Span,
}

/// A give-up or validation whose subject (SageMaker job or EC2 run) is settled at the end:
/// the listing returns `give-ups/` and `checkpoint-validations/` before `interruptions/runs/`.
enum Pending {
    GiveUp {
        job_name: String,
        root: String,
        attempt: u32,
        cause: String,
        at: Option<Timestamp>,
    },
    Validation {
        subject: String,
        lineage: Option<(String, Option<u32>)>,
        lost: Lost,
        at: Option<Timestamp>,
    },
}

/// What a lineage summary adds to its jobs' own records.
#[derive(Default)]
struct SummaryEntry {
    ended_at: Option<Timestamp>,
    /// A summary of an older shape (no attempt facts): its totals, for the jobs it names.
    legacy: Option<(Money, BTreeSet<String>)>,
}

fn money_of(facts: &AttemptFacts) -> Option<Money> {
    Some(Money {
        training: facts.training_seconds?,
        billable: facts.billable_seconds?,
        on_demand: facts.on_demand_usd(),
        spot: facts.billed_usd(),
        ended_at: facts.ended_at,
    })
}

/// Streams records into per-job and per-lineage entries (see the module doc).
#[derive(Default)]
pub struct Aggregator {
    counts: RecordCounts,
    jobs: BTreeMap<String, JobEntry>,
    runs: BTreeMap<String, RunEntry>,
    pending: Vec<Pending>,
    /// Lineages with a summary.
    summaries: BTreeMap<String, SummaryEntry>,
    timelines: BTreeMap<(Option<Timestamp>, String), Vec<AttemptFacts>>,
    prices_as_of: BTreeSet<String>,
}

impl Aggregator {
    /// An empty aggregator.
    pub fn new() -> Self {
        Aggregator::default()
    }

    /// Counts an object listed under the prefix.
    pub fn listed(&mut self) {
        self.counts.listed += 1;
    }

    /// Counts an object left unread by the filter.
    pub fn filtered_out(&mut self) {
        self.counts.filtered_out += 1;
    }

    /// Counts an object not read as a record.
    pub fn skip(&mut self, skipped: &Skipped) {
        *self.counts.skipped.entry(skipped.reason).or_default() += 1;
    }

    /// Entries held: jobs, EC2 runs, pending give-ups and validations, lineage summaries and
    /// kept timelines. Grows with those, not with the number of records.
    pub fn entries(&self) -> usize {
        self.jobs.len()
            + self.runs.len()
            + self.pending.len()
            + self.summaries.len()
            + self.timelines.len()
    }

    /// The job `name`, attributed to `root`/`attempt` unless already attributed.
    fn job(&mut self, name: &str, root: Option<&str>, attempt: Option<u32>) -> &mut JobEntry {
        let job = self.jobs.entry(name.to_owned()).or_default();
        if job.root.is_none() {
            job.root = root.map(str::to_owned);
        }
        if job.attempt.is_none() {
            job.attempt = attempt;
        }
        job
    }

    fn keep_timeline(
        &mut self,
        root: &str,
        ended_at: Option<Timestamp>,
        attempts: Vec<AttemptFacts>,
    ) {
        self.timelines.retain(|(_, r), _| r.as_str() != root);
        self.timelines.insert((ended_at, root.to_owned()), attempts);
        while self.timelines.len() > TIMELINES {
            self.timelines.pop_first();
        }
    }

    /// Adds one record of `bytes` bytes.
    pub fn add(&mut self, parsed: Parsed, bytes: u64) {
        self.counts.read += 1;
        self.counts.bytes_read += bytes;
        if parsed.older_shape {
            self.counts.older_shape += 1;
        }
        match parsed.record {
            LedgerRecord::JobSavings(r) => {
                if let Some(p) = &r.prices_as_of {
                    self.prices_as_of.insert(p.clone());
                }
                let job = self.job(&r.job_name, r.lineage_root.as_deref(), r.attempt);
                job.savings = Some(Money {
                    training: r.training_seconds,
                    billable: r.billable_seconds,
                    on_demand: r.on_demand_cost_usd,
                    spot: r.spot_cost_usd,
                    ended_at: r.ended_at,
                });
                job.interruptions_counted = r.interruptions;
                job.restarts = r.sagemaker_restarts;
                job.instance_type = r.instance_type.clone();
                job.span.see(r.created_at);
                job.span.see(r.ended_at);
            }
            LedgerRecord::LineageSavings(summary) => {
                if let Some(p) = &summary.prices_as_of {
                    self.prices_as_of.insert(p.clone());
                }
                let root = summary.root.clone();
                let named = summary.jobs.iter();
                for name in named.chain(summary.skipped.iter().map(|s| &s.job_name)) {
                    self.job(name, Some(root.as_str()), None);
                }
                let ended_at = summary.attempts.iter().filter_map(|a| a.ended_at).max();
                for a in &summary.attempts {
                    let job = self.job(&a.job_name, Some(root.as_str()), Some(a.attempt));
                    job.span.see(a.created_at);
                    job.span.see(a.ended_at);
                    if job.instance_type.is_none() {
                        job.instance_type = a.instance_type.clone();
                    }
                    job.facts = Some(AttemptFacts {
                        phases: Vec::new(),
                        ..a.clone()
                    });
                }
                let legacy = summary.attempts.is_empty().then(|| {
                    let money = Money {
                        training: summary.training_seconds,
                        billable: summary.billable_seconds,
                        on_demand: summary.on_demand_cost_usd,
                        spot: summary.spot_cost_usd,
                        ended_at: None,
                    };
                    (money, summary.jobs.iter().cloned().collect())
                });
                if !summary.attempts.is_empty() {
                    self.keep_timeline(&root, ended_at, summary.attempts);
                }
                self.summaries
                    .insert(root, SummaryEntry { ended_at, legacy });
            }
            LedgerRecord::JobInterruption(r) => {
                let (root, attempt) = lineage_of(r.lineage.as_ref());
                let job = self.job(&r.job_name, root, attempt);
                job.interruption_records += 1;
                job.span.see(r.recorded_at);
            }
            LedgerRecord::InstanceInterruption(r) => {
                let run = self.runs.entry(r.run.clone()).or_default();
                run.instances.insert(r.instance_id);
                if r.advisory {
                    run.rebalances += 1;
                } else {
                    run.warnings += 1;
                }
                if let Some(c) = r.continuation {
                    run.continuations.insert(c);
                }
                run.span.see(r.recorded_at);
            }
            LedgerRecord::UserStop(r) => {
                let (root, attempt) = lineage_of(r.lineage.as_ref());
                let job = self.job(&r.job_name, root, attempt);
                job.user_stopped = true;
                job.span.see(r.recorded_at);
            }
            LedgerRecord::GiveUp(g) => match g.job.clone() {
                // The facts say it is a SageMaker job.
                Some(facts) => {
                    let ended_at = facts.ended_at;
                    let job = self.job(&g.job_name, Some(g.root.as_str()), Some(g.attempt));
                    job.give_up = Some(g.cause.clone());
                    job.span.see(g.recorded_at);
                    job.span.see(facts.created_at);
                    if job.instance_type.is_none() {
                        job.instance_type = facts.instance_type.clone();
                    }
                    if job.facts.is_none() {
                        job.facts = Some(AttemptFacts {
                            phases: Vec::new(),
                            ..facts.clone()
                        });
                    }
                    if !self.summaries.contains_key(&g.root) {
                        self.keep_timeline(&g.root, ended_at, vec![facts]);
                    }
                }
                None => self.pending.push(Pending::GiveUp {
                    job_name: g.job_name,
                    root: g.root,
                    attempt: g.attempt,
                    cause: g.cause,
                    at: g.recorded_at,
                }),
            },
            LedgerRecord::CheckpointValidation(v) => {
                let lost = (
                    v.uri.clone(),
                    v.newest_unusable.as_ref().map(|n| n.0.clone()),
                    v.lost_steps(),
                );
                self.pending.push(Pending::Validation {
                    subject: v.subject,
                    lineage: v.lineage.map(|l| (l.root, l.attempt)),
                    lost,
                    at: v.recorded_at,
                });
            }
        }
    }

    /// Settles pending give-ups and validations on their EC2 run or SageMaker job.
    fn settle(&mut self) {
        for pending in std::mem::take(&mut self.pending) {
            match pending {
                Pending::GiveUp {
                    job_name,
                    root,
                    attempt,
                    cause,
                    at,
                } => {
                    if let Some(run) = self.runs.get_mut(&root) {
                        run.give_ups += 1;
                        run.give_up = Some(cause);
                        run.span.see(at);
                    } else {
                        let job = self.job(&job_name, Some(root.as_str()), Some(attempt));
                        job.give_up = Some(cause);
                        job.span.see(at);
                    }
                }
                Pending::Validation {
                    subject,
                    lineage,
                    lost,
                    at,
                } => {
                    let run_name = match &lineage {
                        Some((root, None)) => root.clone(),
                        _ => subject.clone(),
                    };
                    if let Some(run) = self.runs.get_mut(&run_name) {
                        run.validations.push(lost);
                        run.span.see(at);
                    } else {
                        let (root, attempt) = match &lineage {
                            Some((root, attempt)) => (Some(root.as_str()), *attempt),
                            None => (None, None),
                        };
                        let job = self.job(&subject, root, attempt);
                        job.validations.push(lost);
                        job.span.see(at);
                    }
                }
            }
        }
    }

    /// The report over everything added, for the lineages `filter` admits.
    pub fn finish(mut self, filter: &Filter) -> LedgerReport {
        self.settle();
        let Aggregator {
            counts,
            jobs,
            runs,
            summaries,
            timelines,
            prices_as_of,
            ..
        } = self;

        let mut by_root: BTreeMap<String, Vec<(String, JobEntry)>> = BTreeMap::new();
        for (name, job) in jobs {
            let root = job.root.clone().unwrap_or_else(|| name.clone());
            by_root.entry(root).or_default().push((name, job));
        }

        let mut rows = Vec::new();
        let mut day_points: Vec<DayPoint> = Vec::new();
        for (root, members) in by_root {
            if !filter.admits_lineage(&root) {
                continue;
            }
            let (row, points) = lineage_row(&root, &members, summaries.get(&root));
            rows.push(row);
            day_points.extend(points);
        }
        for (name, run) in runs {
            if filter.admits_lineage(&name) {
                rows.push(run_row(&name, run));
            }
        }
        rows.sort_by(|a, b| b.last_at.cmp(&a.last_at).then_with(|| a.root.cmp(&b.root)));

        let mut total = Figures::default();
        let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
        let mut cf = CounterfactualTotals::default();
        for row in &rows {
            total.add(&row.figures);
            *by_status.entry(row.status.as_str().to_owned()).or_default() += 1;
            if let Some(c) = &row.counterfactual {
                cf.lineages += 1;
                if !c.without_spotcheck.completed && c.with_spotcheck.completed {
                    cf.rescued += 1;
                }
                match (
                    c.without_spotcheck.cost_usd,
                    c.with_spotcheck.cost_usd,
                    c.on_demand.cost_usd,
                ) {
                    (Some(w), Some(s), Some(o)) => {
                        cf.without_spotcheck_usd += w;
                        cf.with_spotcheck_usd += s;
                        cf.on_demand_usd += o;
                    }
                    _ => cf.unpriced += 1,
                }
            }
        }

        let mut days: BTreeMap<i64, (f64, f64)> = BTreeMap::new();
        for (at, saved, spot) in day_points {
            if let Some(at) = at {
                let e = days
                    .entry(at.epoch_ms().div_euclid(86_400_000))
                    .or_default();
                e.0 += saved;
                e.1 += spot;
            }
        }
        let savings_by_day = days
            .into_iter()
            .map(|(day, (saved_usd, spot_usd))| DaySavings {
                day: date_of(day),
                epoch_day: day,
                saved_usd,
                spot_usd,
            })
            .collect();

        let timelines: Vec<Timeline> = timelines
            .into_iter()
            .rev()
            .filter(|((_, root), _)| filter.admits_lineage(root))
            .map(|((_, root), mut attempts)| {
                attempts.sort_by_key(|a| a.attempt);
                Timeline { root, attempts }
            })
            .collect();

        LedgerReport {
            records: counts,
            filter: filter.clone(),
            lineages: rows,
            total,
            lineages_by_status: by_status,
            counterfactual: cf,
            savings_by_day,
            timelines,
            prices_as_of: prices_as_of.into_iter().collect(),
        }
    }
}

fn lineage_of(lineage: Option<&LineageRef>) -> (Option<&str>, Option<u32>) {
    (
        lineage.map(|l| l.root.as_str()),
        lineage.and_then(|l| l.attempt),
    )
}

/// `YYYY-MM-DD` of a day count since 1970-01-01 (civil-from-days, proleptic Gregorian).
fn date_of(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Lost steps of validations, each unusable checkpoint (prefix and name) counted once.
fn lost_steps<'a>(validations: impl Iterator<Item = &'a Lost>) -> u64 {
    let mut seen = BTreeSet::new();
    validations
        .filter(|(uri, newest, _)| seen.insert((uri.clone(), newest.clone())))
        .map(|(_, _, lost)| *lost)
        .sum()
}

fn add_money(f: &mut Figures, m: &Money) {
    f.training_seconds += m.training;
    f.billable_seconds += m.billable;
    match (m.on_demand, m.spot) {
        (Some(o), Some(s)) => {
            f.on_demand_usd += o;
            f.spot_usd += s;
        }
        _ => f.unpriced_jobs += 1,
    }
}

/// A dated amount for the savings-by-day series: (when, saved, spot bill).
type DayPoint = (Option<Timestamp>, f64, f64);

fn day_point(m: &Money, fallback: Option<Timestamp>) -> Option<DayPoint> {
    Some((m.ended_at.or(fallback), m.on_demand? - m.spot?, m.spot?))
}

/// A lineage's row and its contributions to savings by day.
fn lineage_row(
    root: &str,
    members: &[(String, JobEntry)],
    summary: Option<&SummaryEntry>,
) -> (LineageRow, Vec<DayPoint>) {
    let mut points = Vec::new();
    let mut f = Figures {
        jobs: members.len() as u64,
        ..Figures::default()
    };
    let mut span = Span::default();
    span.see(summary.and_then(|s| s.ended_at));
    let legacy = summary.and_then(|s| s.legacy.as_ref());
    if let Some((money, _)) = legacy {
        add_money(&mut f, money);
    }
    let mut max_attempt = 1u32;
    let mut types = BTreeSet::new();
    let mut attempts = Vec::new();
    let mut completed = false;
    let mut give_up_cause = None;
    for (name, job) in members {
        span.merge(job.span);
        let facts = job.facts.as_ref();
        let attempt = job.attempt.or(facts.map(|a| a.attempt));
        max_attempt = max_attempt.max(attempt.unwrap_or(1));
        if let Some(t) = &job.instance_type {
            types.insert(t.clone());
        }
        let counted = facts
            .map(|a| a.interruptions)
            .or(job.interruptions_counted)
            .unwrap_or(0);
        f.interruptions += job.interruption_records.max(u64::from(counted));
        match facts.map(|a| a.sagemaker_restarts).or(job.restarts) {
            Some(r) => f.sagemaker_restarts += u64::from(r),
            None => f.jobs_without_facts += 1,
        }
        if job.user_stopped {
            f.user_stops += 1;
        }
        if let Some(cause) = &job.give_up {
            f.give_ups += 1;
            give_up_cause = Some(cause.clone());
        }
        f.validation_failures += job.validations.len() as u64;
        if job.savings.is_some() || facts.is_some_and(|a| a.status.as_deref() == Some("Completed"))
        {
            completed = true;
        }
        let in_legacy_summary = legacy.is_some_and(|(_, jobs)| jobs.contains(name));
        if let Some(m) = job.savings.clone().or_else(|| facts.and_then(money_of)) {
            if !in_legacy_summary {
                add_money(&mut f, &m);
                points.extend(day_point(&m, job.span.last));
            }
        }
        if let Some(a) = facts {
            attempts.push(a.clone());
        }
    }
    if let Some((money, _)) = legacy {
        points.extend(day_point(money, span.last));
    }
    f.lost_steps = lost_steps(members.iter().flat_map(|(_, j)| j.validations.iter()));
    f.relaunches = u64::from(max_attempt - 1).max(f.jobs.saturating_sub(1));
    f.saved_usd = f.on_demand_usd - f.spot_usd;
    f.set_percent();
    let status = if completed {
        Status::Completed
    } else if f.give_ups > 0 {
        Status::GaveUp
    } else if f.user_stops > 0 {
        Status::StoppedByUser
    } else {
        Status::Open
    };
    let row = LineageRow {
        root: root.to_owned(),
        ec2_run: false,
        status,
        give_up_cause,
        instance_types: types.into_iter().collect(),
        first_at: span.first,
        last_at: span.last,
        counterfactual: counterfactual(&attempts),
        figures: f,
    };
    (row, points)
}

fn run_row(name: &str, run: RunEntry) -> LineageRow {
    let mut f = Figures {
        jobs: run.instances.len() as u64,
        interruptions: run.warnings,
        rebalance_recommendations: run.rebalances,
        relaunches: run.continuations.len() as u64,
        give_ups: run.give_ups,
        validation_failures: run.validations.len() as u64,
        lost_steps: lost_steps(run.validations.iter()),
        ..Figures::default()
    };
    f.set_percent();
    LineageRow {
        root: name.to_owned(),
        ec2_run: true,
        status: if run.give_ups > 0 {
            Status::GaveUp
        } else {
            Status::Open
        },
        give_up_cause: run.give_up,
        instance_types: Vec::new(),
        first_at: run.span.first,
        last_at: run.span.last,
        figures: f,
        counterfactual: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::parse;
    use serde_json::{json, Value};
    use spotcheck_control::savings::Phase;

    const P3: f64 = 3.825;

    fn at(s: &str) -> Option<Timestamp> {
        Some(Timestamp::parse(s).unwrap())
    }

    fn feed(records: &[(&str, Value)]) -> Aggregator {
        let mut agg = Aggregator::new();
        for (key, body) in records {
            let bytes = serde_json::to_vec(body).unwrap();
            agg.listed();
            match parse(key, &bytes) {
                Ok(p) => agg.add(p, bytes.len() as u64),
                Err(s) => agg.skip(&s),
            }
        }
        agg
    }

    fn attempt(
        name: &str,
        n: u32,
        (status, secondary): (&str, &str),
        (training, billable): (u64, u64),
        (interruptions, restarts): (u32, u32),
        resume: Option<u64>,
        ended: &str,
    ) -> AttemptFacts {
        AttemptFacts {
            job_name: name.into(),
            attempt: n,
            instance_type: Some("ml.p3.2xlarge".into()),
            instance_count: Some(1),
            spot: Some(true),
            status: Some(status.into()),
            secondary_status: Some(secondary.into()),
            training_seconds: Some(training),
            billable_seconds: Some(billable),
            on_demand_usd_per_hour: Some(P3),
            interruptions,
            sagemaker_restarts: restarts,
            resume_step: resume,
            max_wait_seconds: Some(7200),
            created_at: at("2026-11-01T00:00:00Z"),
            ended_at: at(ended),
            phases: vec![Phase {
                status: "Training".into(),
                start: at("2026-11-01T00:05:00Z"),
                end: at(ended),
            }],
        }
    }

    /// The entry the handler writes (`LedgerEntry`), with its `lineage`.
    fn entry(kind: &str, lineage: Option<(&str, Option<u32>)>, fact: Value) -> Value {
        let mut v = json!({"kind": kind, "recorded_at": "2026-11-01T01:00:00.000Z",
                           "event_key": "sagemaker-e", "reason": "r"});
        if let Some((root, attempt)) = lineage {
            v["lineage"] = json!({"root": root, "attempt": attempt});
        }
        for (k, x) in fact.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    fn validation(lineage: Option<(&str, Option<u32>)>) -> Value {
        entry(
            "checkpoint_validation_failed",
            lineage,
            json!({"uri": "s3://ml/train/checkpoints",
                   "summary": {"latest_valid_step": 200, "any_corrupt": true, "finished": false},
                   "latest_valid": "algo-1/step-000000000200",
                   "checkpoints": [
                       {"name": "algo-1/step-000000000300", "namespace": "algo-1", "step": 300, "status": "corrupt", "reason": "x"},
                       {"name": "algo-1/step-000000000200", "namespace": "algo-1", "step": 200, "status": "valid", "reason": null}],
                   "not_judged": 1, "size_only": []}),
        )
    }

    fn summary(root: &str, attempts: Vec<AttemptFacts>) -> Value {
        let training: u64 = attempts.iter().filter_map(|a| a.training_seconds).sum();
        let billable: u64 = attempts.iter().filter_map(|a| a.billable_seconds).sum();
        json!({"root": root, "jobs": attempts.iter().map(|a| a.job_name.clone()).collect::<Vec<_>>(),
               "training_seconds": training, "billable_seconds": billable,
               "seconds_saved": training as i64 - billable as i64, "savings_percent": 0.0,
               "billed_compute_seconds": billable, "on_demand_cost_usd": null, "spot_cost_usd": null,
               "dollars_saved": null, "unpriced_instance_types": [], "skipped": [],
               "prices_as_of": "2025-05-01", "attempts": attempts})
    }

    fn job_savings(
        name: &str,
        root: Option<&str>,
        attempt: Option<u32>,
        (t, b): (u64, u64),
    ) -> Value {
        let mut v = json!({"job_name": name, "instance_type": "ml.p3.2xlarge", "instance_count": 1,
               "training_seconds": t, "billable_seconds": b, "seconds_saved": t as i64 - b as i64,
               "savings_percent": (1.0 - b as f64 / t as f64) * 100.0, "billed_compute_seconds": b,
               "on_demand_usd_per_hour": P3, "on_demand_cost_usd": t as f64 * P3 / 3600.0,
               "spot_cost_usd": b as f64 * P3 / 3600.0, "dollars_saved": (t - b) as f64 * P3 / 3600.0,
               "lineage_root": root, "ended_at": "2026-11-02T03:00:00.000Z", "prices_as_of": "2025-05-01"});
        if let Some(a) = attempt {
            v["attempt"] = json!(a);
            v["interruptions"] = json!(0);
            v["sagemaker_restarts"] = json!(0);
            v["resume_step"] = json!(200);
        }
        v
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn a_relaunched_lineage_is_attributed_counted_and_priced_once() {
        let r2 = "train-r2-aaaaaaaa";
        let r3 = "train-r3-bbbbbbbb";
        let attempts = vec![
            attempt(
                "train",
                1,
                ("Stopped", "MaxWaitTimeExceeded"),
                (1800, 600),
                (2, 1),
                None,
                "2026-11-01T02:00:00Z",
            ),
            attempt(
                r2,
                2,
                ("Stopped", "MaxWaitTimeExceeded"),
                (0, 0),
                (0, 0),
                Some(200),
                "2026-11-01T04:00:00Z",
            ),
            attempt(
                r3,
                3,
                ("Completed", "Completed"),
                (3600, 1200),
                (0, 0),
                Some(200),
                "2026-11-02T03:00:00Z",
            ),
        ];
        let interruption = |n: u32| {
            entry(
                "job_interruption",
                Some(("train", Some(1))),
                json!({"record": "interruption", "job_name": "train", "interruptions": n, "lineage_interruptions": n}),
            )
        };
        let records = [
            (
                "checkpoint-validations/train/algo-1_step-000000000300.json",
                validation(Some(("train", Some(1)))),
            ),
            (
                "checkpoint-validations/train-r2-aaaaaaaa/algo-1_step-000000000300.json",
                validation(Some(("train", Some(2)))),
            ),
            ("interruptions/jobs/train/1.json", interruption(1)),
            ("interruptions/jobs/train/2.json", interruption(2)),
            (
                "savings/jobs/train-r3-bbbbbbbb.json",
                job_savings(r3, Some("train"), Some(3), (3600, 1200)),
            ),
            ("savings/lineages/train.json", summary("train", attempts)),
        ];
        let report = feed(&records).finish(&Filter::default());
        assert_eq!(report.records.read, 6);
        assert_eq!(report.records.older_shape, 0);
        assert_eq!(report.lineages.len(), 1);
        let l = &report.lineages[0];
        assert_eq!((l.root.as_str(), l.status), ("train", Status::Completed));
        let f = &l.figures;
        assert_eq!(
            (
                f.jobs,
                f.interruptions,
                f.sagemaker_restarts,
                f.relaunches,
                f.give_ups
            ),
            (3, 2, 1, 2, 0)
        );
        assert_eq!(
            (f.validation_failures, f.lost_steps),
            (2, 100),
            "one corrupt checkpoint seen twice"
        );
        assert_eq!((f.training_seconds, f.billable_seconds), (5400, 1800));
        assert!(close(f.on_demand_usd, 5400.0 * P3 / 3600.0), "{f:?}");
        assert!(close(f.saved_usd, 3600.0 * P3 / 3600.0), "{f:?}");
        assert!(close(
            f.savings_percent.unwrap(),
            100.0 * (1.0 - 1800.0 / 5400.0)
        ));
        let c = l.counterfactual.as_ref().unwrap();
        assert_eq!(c.without_spotcheck.step_reached, Some(200));
        assert!(!c.without_spotcheck.completed && c.with_spotcheck.completed);
        assert!(close(
            c.without_spotcheck.cost_usd.unwrap(),
            600.0 * P3 / 3600.0
        ));
        assert_eq!(report.total, l.figures);
        assert_eq!(
            (
                report.counterfactual.lineages,
                report.counterfactual.rescued
            ),
            (1, 1)
        );
        assert_eq!(report.timelines.len(), 1);
        assert_eq!(report.timelines[0].attempts.len(), 3);
        assert_eq!(
            report.timelines[0].attempts[0].phases.len(),
            1,
            "phases kept for timelines"
        );
        // Savings by the day each job ended: r3 on Nov 2 (the others saved nothing).
        let days: Vec<&str> = report
            .savings_by_day
            .iter()
            .map(|d| d.day.as_str())
            .collect();
        assert_eq!(days, ["2026-11-01", "2026-11-02"]);
        assert!(close(
            report.savings_by_day.iter().map(|d| d.saved_usd).sum(),
            f.saved_usd
        ));
    }

    #[test]
    fn older_records_are_read_attributed_by_name_and_never_counted_twice() {
        let old_interruption = json!({"kind": "job_interruption", "recorded_at": "2026-10-01T00:00:00.000Z",
            "event_key": "sagemaker-x", "reason": "r", "record": "interruption", "job_name": "solo",
            "interruptions": 1, "lineage_interruptions": 1});
        let mut old_summary = summary("old", Vec::new());
        old_summary.as_object_mut().unwrap().remove("attempts");
        old_summary["jobs"] = json!(["old", "old-r2-cccccccc"]);
        old_summary["training_seconds"] = json!(1000);
        old_summary["billable_seconds"] = json!(400);
        old_summary["on_demand_cost_usd"] = json!(10.0);
        old_summary["spot_cost_usd"] = json!(4.0);
        let records = [
            ("interruptions/jobs/solo/1.json", old_interruption),
            (
                "savings/jobs/solo.json",
                job_savings("solo", None, None, (100, 40)),
            ),
            (
                "savings/jobs/old-r2-cccccccc.json",
                job_savings("old-r2-cccccccc", Some("old"), None, (700, 300)),
            ),
            ("savings/lineages/old.json", old_summary),
            // An event-keyed validation (the key layout before it was keyed by checkpoint).
            (
                "checkpoint-validations/solo/sagemaker-5d1c.json",
                validation(None),
            ),
        ];
        let report = feed(&records).finish(&Filter::default());
        assert_eq!((report.records.read, report.records.older_shape), (5, 5));
        let row = |root: &str| report.lineages.iter().find(|l| l.root == root).unwrap();
        let solo = &row("solo").figures;
        assert_eq!(
            (solo.jobs, solo.interruptions, solo.validation_failures),
            (1, 1, 1)
        );
        assert_eq!(
            solo.jobs_without_facts, 1,
            "restarts unknown before the field existed"
        );
        assert_eq!(row("solo").status, Status::Completed);
        let old = &row("old").figures;
        assert_eq!((old.jobs, old.relaunches), (2, 1));
        assert_eq!(
            (old.training_seconds, old.billable_seconds),
            (1000, 400),
            "the summary's totals, not the completed job's again"
        );
        assert!(close(old.saved_usd, 6.0));
        assert!(row("old").counterfactual.is_none(), "no attempt facts");
        assert!(close(report.total.saved_usd, 6.0 + 60.0 * P3 / 3600.0));
    }

    #[test]
    fn ec2_runs_are_lineages_of_their_own() {
        let warning = |instance: &str, continuation: Option<&str>, kind: &str| {
            entry(
                kind,
                Some(("run-7", None)),
                json!({
                "interruption": {"instance_id": instance, "run": "run-7", "action": "terminate",
                                 "advisory": kind == "rebalance_recommendation",
                                 "checkpoint_uri": "s3://ml/run-7",
                                 "continuation": continuation.map(|c| json!({"name": c, "run": "run-7",
                                     "instance_id": instance, "continue_on": "s3://t/x.json", "checkpoint_uri": null}))},
                "latest_valid_step": 200, "latest_valid": null, "checkpoint_error": null}),
            )
        };
        let give_up = entry(
            "recovery_gave_up",
            Some(("run-7", None)),
            json!({"job_name": "run-7-c-12345678", "root": "run-7", "attempt": 2, "cause": "no_checkpoint"}),
        );
        let records = [
            (
                "checkpoint-validations/run-7/algo-1_step-000000000300.json",
                validation(Some(("run-7", None))),
            ),
            ("give-ups/run-7/run-7-c-12345678.json", give_up),
            (
                "interruptions/runs/run-7/i-1/ec2-a.json",
                warning("i-1", None, "rebalance_recommendation"),
            ),
            (
                "interruptions/runs/run-7/i-1/ec2-b.json",
                warning("i-1", Some("run-7-c-12345678"), "spot_interruption_warning"),
            ),
            (
                "interruptions/runs/run-7/i-2/ec2-c.json",
                warning("i-2", Some("run-7-c-87654321"), "spot_interruption_warning"),
            ),
        ];
        let report = feed(&records).finish(&Filter::default());
        assert_eq!(report.lineages.len(), 1, "{:?}", report.lineages);
        let run = &report.lineages[0];
        assert!(run.ec2_run);
        assert_eq!(run.status, Status::GaveUp);
        assert_eq!(run.give_up_cause.as_deref(), Some("no_checkpoint"));
        let f = &run.figures;
        assert_eq!(
            (
                f.jobs,
                f.interruptions,
                f.rebalance_recommendations,
                f.relaunches,
                f.give_ups,
                f.validation_failures,
                f.lost_steps
            ),
            (2, 2, 1, 2, 1, 1, 100)
        );
    }

    #[test]
    fn filters_timelines_and_bad_objects() {
        let mut records: Vec<(String, Value)> = Vec::new();
        for i in 0..(TIMELINES + 3) {
            let name = format!("job-{i:02}");
            let ended = format!("2026-11-{:02}T00:00:00Z", i + 1);
            records.push((
                format!("savings/lineages/{name}.json"),
                summary(
                    &name,
                    vec![attempt(
                        &name,
                        1,
                        ("Completed", "Completed"),
                        (100, 30),
                        (0, 0),
                        None,
                        &ended,
                    )],
                ),
            ));
        }
        records.push(("notes.txt".into(), json!({})));
        records.push(("stops/jobs/x.json".into(), json!({"kind": "user_stopped"})));
        let refs: Vec<(&str, Value)> = records
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let agg = feed(&refs);
        assert_eq!(
            agg.entries(),
            2 * (TIMELINES + 3) + TIMELINES,
            "jobs, summaries, kept timelines"
        );
        let report = agg.finish(&Filter::default());
        assert_eq!(report.lineages.len(), TIMELINES + 3);
        assert_eq!(report.lineages[0].root, "job-10", "most recent first");
        let kept: Vec<&str> = report.timelines.iter().map(|t| t.root.as_str()).collect();
        assert_eq!(kept.len(), TIMELINES);
        assert_eq!(
            (kept[0], kept[TIMELINES - 1]),
            ("job-10", "job-03"),
            "the most recent, newest first"
        );
        assert_eq!(report.records.skipped_total(), 2);
        assert_eq!(report.records.skipped.get(&Skip::UnknownKey), Some(&1));
        assert_eq!(report.records.skipped.get(&Skip::UnknownShape), Some(&1));

        let one = feed(&refs).finish(&Filter {
            lineage: Some("job-04".into()),
            ..Filter::default()
        });
        assert_eq!(one.lineages.len(), 1);
        assert_eq!(one.total.jobs, 1);
        assert_eq!(one.timelines.len(), 1);
        let f = Filter {
            since: at("2026-11-02T00:00:00Z"),
            until: at("2026-11-03T00:00:00Z"),
            lineage: None,
        };
        assert!(
            f.admits_time(at("2026-11-02T00:00:00Z")) && !f.admits_time(at("2026-11-03T00:00:00Z"))
        );
        assert!(f.admits_time(None));
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(date_of(0), "1970-01-01");
        assert_eq!(date_of(20_759), "2026-11-02");
        assert_eq!(date_of(-1), "1969-12-31");
        assert_eq!(date_of(11_016), "2000-02-29");
    }
}
