//! Fixture table and small helpers shared by the test modules.

use spotcheck_control::events::{parse_event, Parsed};
use spotcheck_control::{
    decide, CheckpointSummary, Decision, DecisionInput, Event, JobFacts, Policy, Tags, Timestamp,
};

macro_rules! fixtures {
    ($dir:literal: $($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/", $dir, "/", $name, ".json"
        )))),*]
    };
}

/// Every event fixture, by file stem.
pub const EVENTS: &[(&str, &str)] = fixtures!("events":
    "ec2-rebalance-recommendation",
    "ec2-spot-interruption-hibernate",
    "ec2-spot-interruption-stop",
    "ec2-spot-interruption-terminate",
    "malformed-detail-not-an-object",
    "malformed-ec2-missing-instance-id",
    "malformed-missing-detail-type",
    "malformed-status-not-a-string",
    "malformed-truncated",
    "sagemaker-completed-lineage",
    "sagemaker-completed",
    "sagemaker-failed-algorithm",
    "sagemaker-failed-capacity",
    "sagemaker-failed-client",
    "sagemaker-failed-internal",
    "sagemaker-inprogress-interrupted",
    "sagemaker-inprogress-training",
    "sagemaker-minimal",
    "sagemaker-no-status",
    "sagemaker-not-enabled",
    "sagemaker-stopped-maxruntime",
    "sagemaker-stopped-maxwait-duplicate",
    "sagemaker-stopped-maxwait-never-started",
    "sagemaker-stopped-maxwait",
    "sagemaker-stopped-unknown-secondary",
    "sagemaker-stopped-user",
    "sagemaker-stopping",
    "sagemaker-unknown-status",
    "unrelated-ec2-state-change",
    "unrelated-sagemaker-tuning-job",
    "unrelated-scheduled-event",
);

/// Every DescribeTrainingJob / ListTags fixture, by file stem.
pub const JOBS: &[(&str, &str)] = fixtures!("jobs":
    "describe-completed-lineage",
    "describe-completed",
    "describe-failed-algorithm",
    "describe-failed-capacity",
    "describe-inprogress-restarted",
    "describe-stopped-maxruntime",
    "describe-stopped-maxwait-modified-later",
    "describe-stopped-maxwait-never-started",
    "describe-stopped-maxwait",
    "describe-stopped-user",
    "list-tags-resnet50-spot",
);

/// The root job of the main fixture lineage and its relaunch names.
pub const ROOT: &str = "resnet50-spot";
pub const R2: &str = "resnet50-spot-r2-90d9a5df";
pub const R3: &str = "resnet50-spot-r3-c078143a";

fn lookup(table: &[(&str, &'static str)], name: &str) -> &'static str {
    table
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
        .unwrap_or_else(|| panic!("no fixture named {name}"))
}

pub fn event_text(name: &str) -> &'static str {
    lookup(EVENTS, name)
}

pub fn job_text(name: &str) -> &'static str {
    lookup(JOBS, name)
}

/// A fixture that must parse as a relevant event.
pub fn event(name: &str) -> Event {
    match parse_event(event_text(name).as_bytes()) {
        Ok(Parsed::Relevant(event)) => event,
        other => panic!("{name}: expected a relevant event, got {other:?}"),
    }
}

/// A DescribeTrainingJob fixture.
pub fn job(name: &str) -> JobFacts {
    JobFacts::from_describe_json(job_text(name).as_bytes())
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The fixed "now" of every test: 2024-06-10T00:00:00Z.
pub fn now() -> Timestamp {
    Timestamp::parse("2024-06-10T00:00:00Z").unwrap()
}

pub fn step(step: Option<u64>) -> CheckpointSummary {
    CheckpointSummary {
        latest_valid_step: step,
        ..CheckpointSummary::default()
    }
}

pub fn tags(pairs: &[(&str, &str)]) -> Tags {
    pairs.iter().copied().collect()
}

/// Builds the input the way the Lambda does and decides.
pub fn decide_case(
    event_name: &str,
    job_name: Option<&str>,
    checkpoints: CheckpointSummary,
    extra_tags: &[(&str, &str)],
    policy: Policy,
) -> Decision {
    let input = input_case(event_name, job_name, checkpoints, extra_tags, policy);
    decide(&input)
}

pub fn input_case(
    event_name: &str,
    job_name: Option<&str>,
    checkpoints: CheckpointSummary,
    extra_tags: &[(&str, &str)],
    policy: Policy,
) -> DecisionInput {
    DecisionInput::new(
        event(event_name),
        job_name.map(job),
        &tags(extra_tags),
        checkpoints,
        &[],
        policy,
        now(),
    )
    .unwrap_or_else(|e| panic!("{event_name}: {e}"))
}

/// The decision as the CLI prints it.
pub fn json(decision: &Decision) -> serde_json::Value {
    serde_json::to_value(decision).unwrap()
}
