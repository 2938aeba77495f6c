//! What spotcheck tells the world, as data: custom EventBridge events and EMF metric lines.
//!
//! Owns the four `spotcheck` events ("Training Job Relaunched", "Spot Savings Recorded",
//! "Checkpoint Validation Failed", "Recovery Gave Up") with their detail types, and the
//! CloudWatch Embedded Metric Format lines: savings (namespace `Spotcheck`; metrics
//! `SecondsSaved`, `DollarsSaved`, `SavingsPercent`; dimension sets `[Scope]` and
//! `[Scope, InstanceType]`) and malformed events (`MalformedEvents`, dimension `[Function]`,
//! so an alarm can watch for a producer that changed its shape). The shell calls PutEvents and
//! prints the lines; nothing here does I/O or reads the clock.

use serde::Serialize;
use serde_json::{json, Value};

use crate::checkpoint::CheckpointSummary;
use crate::decision::{Action, Decision, GiveUpCause};
use crate::plan::RelaunchCause;
use crate::savings::{LineageSummary, SavingsRecord};
use crate::timestamp::Timestamp;

/// `source` of every spotcheck event.
pub const EVENT_SOURCE: &str = "spotcheck";
/// CloudWatch namespace of spotcheck metrics.
pub const METRIC_NAMESPACE: &str = "Spotcheck";

/// Detail of "Training Job Relaunched".
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JobRelaunched {
    /// The job that ended.
    pub previous_job: String,
    /// The new job.
    pub job_name: String,
    /// The lineage's first job.
    pub root: String,
    /// The new job's attempt number.
    pub attempt: u32,
    /// Its instance type (`None`: unchanged).
    pub instance_type: Option<String>,
    /// Whether it runs on spot.
    pub spot: bool,
    /// The checkpoint step it resumes from.
    pub from_checkpoint: Option<u64>,
    /// Why it was relaunched.
    pub cause: RelaunchCause,
    /// The decision's reason.
    pub reason: String,
}

/// Detail of "Spot Savings Recorded".
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SavingsRecorded {
    /// `job` or `lineage`.
    pub scope: &'static str,
    /// The job, or the lineage's root.
    pub name: String,
    /// Where the full record is stored.
    pub s3_key: String,
    /// Seconds saved.
    pub seconds_saved: i64,
    /// Savings percentage.
    pub savings_percent: f64,
    /// Dollars saved, when priced.
    pub dollars_saved: Option<f64>,
}

/// Detail of "Checkpoint Validation Failed".
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckpointValidationFailed {
    /// The job whose checkpoints were validated.
    pub job_name: String,
    /// The checkpoint prefix.
    pub checkpoint_uri: Option<String>,
    /// The newest step that did validate.
    pub latest_valid_step: Option<u64>,
}

/// Detail of "Recovery Gave Up".
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RecoveryGaveUp {
    /// The job whose recovery stopped.
    pub job_name: String,
    /// The lineage's first job.
    pub root: String,
    /// Its attempt number.
    pub attempt: u32,
    /// Why.
    pub cause: GiveUpCause,
    /// The decision's reason.
    pub reason: String,
}

/// One spotcheck event to publish.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum OutputEvent {
    /// "Training Job Relaunched".
    JobRelaunched(JobRelaunched),
    /// "Spot Savings Recorded".
    SavingsRecorded(SavingsRecorded),
    /// "Checkpoint Validation Failed".
    CheckpointValidationFailed(CheckpointValidationFailed),
    /// "Recovery Gave Up".
    RecoveryGaveUp(RecoveryGaveUp),
}

/// A PutEvents entry, SDK-independent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventEntry {
    /// Always [`EVENT_SOURCE`].
    pub source: &'static str,
    /// The detail type.
    pub detail_type: &'static str,
    /// The detail, as the JSON text PutEvents takes.
    pub detail: String,
    /// ARNs or names the event is about.
    pub resources: Vec<String>,
}

impl OutputEvent {
    /// The event a decision announces: relaunches and give-ups; `None` for the rest.
    pub fn from_decision(decision: &Decision) -> Option<OutputEvent> {
        match &decision.action {
            Action::Relaunch(plan) => Some(OutputEvent::JobRelaunched(JobRelaunched {
                previous_job: plan.parent.clone(),
                job_name: plan.job_name.clone(),
                root: plan.root.clone(),
                attempt: plan.attempt,
                instance_type: plan.instance_type.clone(),
                spot: plan.spot,
                from_checkpoint: plan.from_checkpoint,
                cause: plan.cause,
                reason: decision.reason.clone(),
            })),
            Action::GiveUp(give_up) => Some(OutputEvent::RecoveryGaveUp(RecoveryGaveUp {
                job_name: give_up.job_name.clone(),
                root: give_up.root.clone(),
                attempt: give_up.attempt,
                cause: give_up.cause,
                reason: decision.reason.clone(),
            })),
            Action::Record(_) | Action::Ignore => None,
        }
    }

    /// "Spot Savings Recorded" for one job.
    pub fn job_savings(record: &SavingsRecord) -> OutputEvent {
        OutputEvent::SavingsRecorded(SavingsRecorded {
            scope: "job",
            name: record.job_name.clone(),
            s3_key: record.s3_key(),
            seconds_saved: record.seconds_saved,
            savings_percent: record.savings_percent,
            dollars_saved: record.dollars_saved,
        })
    }

    /// "Spot Savings Recorded" for a lineage.
    pub fn lineage_savings(summary: &LineageSummary) -> OutputEvent {
        OutputEvent::SavingsRecorded(SavingsRecorded {
            scope: "lineage",
            name: summary.root.clone(),
            s3_key: summary.s3_key(),
            seconds_saved: summary.seconds_saved,
            savings_percent: summary.savings_percent,
            dollars_saved: summary.dollars_saved,
        })
    }

    /// "Checkpoint Validation Failed", when the summary found corrupt checkpoints.
    pub fn checkpoint_validation_failed(
        job_name: &str,
        checkpoint_uri: Option<&str>,
        summary: &CheckpointSummary,
    ) -> Option<OutputEvent> {
        summary.any_corrupt.then(|| {
            OutputEvent::CheckpointValidationFailed(CheckpointValidationFailed {
                job_name: job_name.to_owned(),
                checkpoint_uri: checkpoint_uri.map(str::to_owned),
                latest_valid_step: summary.latest_valid_step,
            })
        })
    }

    /// The EventBridge `detail-type`.
    pub fn detail_type(&self) -> &'static str {
        match self {
            OutputEvent::JobRelaunched(_) => "Training Job Relaunched",
            OutputEvent::SavingsRecorded(_) => "Spot Savings Recorded",
            OutputEvent::CheckpointValidationFailed(_) => "Checkpoint Validation Failed",
            OutputEvent::RecoveryGaveUp(_) => "Recovery Gave Up",
        }
    }

    /// The PutEvents entry. `resources` lists the jobs concerned.
    pub fn entry(&self) -> Result<EventEntry, serde_json::Error> {
        let resources = match self {
            OutputEvent::JobRelaunched(d) => vec![d.previous_job.clone(), d.job_name.clone()],
            OutputEvent::SavingsRecorded(d) => vec![d.name.clone()],
            OutputEvent::CheckpointValidationFailed(d) => vec![d.job_name.clone()],
            OutputEvent::RecoveryGaveUp(d) => vec![d.job_name.clone()],
        };
        Ok(EventEntry {
            source: EVENT_SOURCE,
            detail_type: self.detail_type(),
            detail: serde_json::to_string(self)?,
            resources,
        })
    }
}

/// The EMF log line for one job's savings, stamped `at`.
pub fn job_savings_metrics(record: &SavingsRecord, at: Timestamp) -> String {
    savings_line(
        "job",
        ("JobName", &record.job_name),
        record.instance_type.as_deref(),
        (
            record.seconds_saved,
            record.savings_percent,
            record.dollars_saved,
        ),
        at,
    )
}

/// The EMF log line for a lineage's savings, stamped `at`.
pub fn lineage_savings_metrics(summary: &LineageSummary, at: Timestamp) -> String {
    savings_line(
        "lineage",
        ("Root", &summary.root),
        None,
        (
            summary.seconds_saved,
            summary.savings_percent,
            summary.dollars_saved,
        ),
        at,
    )
}

/// The EMF log line counting one malformed event received by `function`, stamped `at`.
pub fn malformed_event_metrics(function: &str, at: Timestamp) -> String {
    json!({
        "Function": function,
        "MalformedEvents": 1,
        "_aws": {
            "Timestamp": at.epoch_ms(),
            "CloudWatchMetrics": [{
                "Namespace": METRIC_NAMESPACE,
                "Dimensions": [["Function"]],
                "Metrics": [{"Name": "MalformedEvents", "Unit": "Count"}],
            }],
        },
    })
    .to_string()
}

fn savings_line(
    scope: &str,
    (id_key, id): (&str, &str),
    instance_type: Option<&str>,
    (seconds_saved, percent, dollars): (i64, f64, Option<f64>),
    at: Timestamp,
) -> String {
    let mut metrics = vec![
        json!({"Name": "SecondsSaved", "Unit": "Seconds"}),
        json!({"Name": "SavingsPercent", "Unit": "Percent"}),
    ];
    let mut dimensions = vec![json!(["Scope"])];
    let mut line = json!({
        "Scope": scope,
        id_key: id,
        "SecondsSaved": seconds_saved,
        "SavingsPercent": percent,
    });
    if let Some(dollars) = dollars {
        metrics.push(json!({"Name": "DollarsSaved", "Unit": "None"}));
        line["DollarsSaved"] = json!(dollars);
    }
    if let Some(instance_type) = instance_type {
        dimensions.push(json!(["Scope", "InstanceType"]));
        line["InstanceType"] = json!(instance_type);
    }
    line["_aws"] = json!({
        "Timestamp": at.epoch_ms(),
        "CloudWatchMetrics": [{
            "Namespace": METRIC_NAMESPACE,
            "Dimensions": Value::Array(dimensions),
            "Metrics": Value::Array(metrics),
        }],
    });
    line.to_string()
}
