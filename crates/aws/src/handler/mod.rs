//! The handler orchestration shared by both Lambdas, the tests and any future local service.
//!
//! Owns the flow "parse → gather inputs → [`decide`](spotcheck_control::decide) → act → log one
//! line", generic over the adapter traits so that fakes and SDK implementations run the same
//! code: [`SageMakerHandler`] for "SageMaker Training Job State Change" and [`Ec2Handler`] for the
//! EC2 spot signals. It decides nothing itself (the control crate does) and makes no AWS call
//! except through the traits.
//!
//! # Outcomes and retries
//!
//! | situation | result | Lambda |
//! |---|---|---|
//! | malformed event (also counted: EMF metric `MalformedEvents`), irrelevant event, not opted in (tags, or AccessDenied from Describe), job gone, invalid lineage tag | `Ok`, logged | acknowledged, never retried |
//! | checkpoints that cannot be validated for a reason retrying cannot fix (AccessDenied, no such bucket, not `s3://`) | recorded (`checkpoint-validations/<job or run>/unavailable.json`), the decision goes on without a summary | — |
//! | decision carried out (or already carried out by an earlier delivery) | `Ok` | done |
//! | an AWS call still failing after the SDK's retries with a transient kind (throttling, 5xx, timeout) | [`HandlerError::Transient`] | `Err`: Lambda retries (twice), then the DLQ |
//! | AWS refused an action for a reason retrying cannot fix (IAM, validation, quota) | [`HandlerError::Refused`] | `Err`: it lands in the DLQ with its alarm; fix, then redrive |
//! | an EC2 run's continuation template is unusable (missing, too large, unsupported) | [`HandlerError::Template`] | `Err`, the same way |
//!
//! Refusals are errors, not acknowledgements, because each one is an opted-in job left
//! unrecovered or a record lost: the DLQ and the `Errors` alarm make it visible, and a redrive
//! after the fix completes the work. Lambda's two automatic retries of a refusal are wasted but
//! harmless, because every action is idempotent:
//!
//! - a relaunch or continuation asks for the deterministic name of the plan; on `ResourceInUse`
//!   the existing job's lineage tags are checked: the same parent and root (a continuation: the
//!   same run and generation) mean done, anything else is a name collision, recorded and
//!   announced as a give-up (retrying cannot free the name);
//! - ledger records are written once at deterministic keys (`If-None-Match: *`);
//! - events are published after the action and the record succeeded, on every delivery that
//!   gets that far: **at least once**, so subscribers must tolerate duplicates;
//! - EMF metric lines are printed only when the ledger record was new, so a retried or
//!   duplicated event does not count the same savings twice.
//!
//! Every invocation prints exactly one decision line (JSON, `"spotcheck": "decision"`) through a
//! [`LogSink`], errors included.

mod ec2;
mod sagemaker;

pub use ec2::Ec2Handler;
pub use sagemaker::SageMakerHandler;

use serde::Serialize;
use spotcheck_control::ec2::CheckpointScope;
use spotcheck_control::events::{parse_event, Event, Parsed};
use spotcheck_control::outputs::{malformed_event_metrics, EventEntry, OutputEvent};
use spotcheck_control::{
    CheckpointSummary, Decision, Policy, PriceTable, Tags, Timestamp, Validation,
};

use crate::checkpoints::{
    validate_checkpoints, CheckpointStore, CheckpointValidation, ValidationError, ValidationOptions,
};
use crate::continuation::TemplateError;
use crate::error::AwsError;
use crate::events::EventSink;
use crate::ledger::{keys, Ledger, Written};
use crate::sagemaker::TrainingJobs;

/// What the handlers need besides their adapters.
#[derive(Clone, Debug, PartialEq)]
pub struct HandlerConfig {
    /// The base policy (from the environment).
    pub policy: Policy,
    /// On-demand prices for the savings records.
    pub prices: PriceTable,
    /// Checkpoint validation knobs.
    pub validation: ValidationOptions,
    /// The stack's checkpoint location (`CheckpointBucket`/`CheckpointPrefix`): an EC2 run's
    /// `spotcheck:checkpoint-uri` must lie under it. `None`: not checked.
    pub checkpoint_scope: Option<CheckpointScope>,
}

impl HandlerConfig {
    /// A configuration with the built-in prices and default validation options.
    pub fn new(policy: Policy) -> Self {
        HandlerConfig {
            policy,
            prices: PriceTable::builtin(),
            validation: ValidationOptions::default(),
            checkpoint_scope: None,
        }
    }
}

/// Where decision lines and EMF metric lines go (stdout in the Lambdas).
pub trait LogSink {
    /// Writes one line.
    fn line(&self, line: &str);
}

/// [`LogSink`] on the process's standard output, where Lambda picks up logs and EMF metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdoutLog;

impl LogSink for StdoutLog {
    fn line(&self, line: &str) {
        use std::io::Write;
        // Standard output is the log: if it fails there is nowhere left to report it.
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    }
}

/// A failure the Lambda reports as an error (see the module doc for which is which).
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Still failing after the SDK's retries, for a reason that may pass: retry the event.
    #[error("transient AWS failure; the event will be retried: {0}")]
    Transient(AwsError),
    /// AWS refused for a reason retrying cannot fix: fix it, then redrive from the DLQ.
    #[error("AWS refused; fix the cause, then redrive the event from the DLQ: {0}")]
    Refused(AwsError),
    /// The run's continuation template (`spotcheck:continue-on`) cannot be used: fix it (or
    /// the tag), then redrive the event from the DLQ.
    #[error(
        "continuation template {uri} is unusable ({problem}); fix it, then redrive the event \
         from the DLQ"
    )]
    Template {
        /// The `s3://` URI the instance's tag names.
        uri: String,
        /// What is wrong with it.
        problem: TemplateError,
    },
    /// A record or event could not be serialised (a bug, not an AWS failure).
    #[error("cannot serialise a record: {0}")]
    Encode(#[from] serde_json::Error),
}

impl HandlerError {
    /// Whether Lambda's automatic retries may help.
    pub fn is_transient(&self) -> bool {
        matches!(self, HandlerError::Transient(_))
    }

    /// The Lambda error type reported for it (what the DLQ message and the logs show).
    pub fn error_type(&self) -> &'static str {
        match self {
            HandlerError::Transient(_) => "Transient",
            HandlerError::Refused(_) => "Refused",
            HandlerError::Template { .. } => "InvalidTemplate",
            HandlerError::Encode(_) => "Encode",
        }
    }
}

impl From<AwsError> for HandlerError {
    fn from(err: AwsError) -> Self {
        if err.is_transient() {
            HandlerError::Transient(err)
        } else {
            HandlerError::Refused(err)
        }
    }
}

/// How an invocation ended, as logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The event is not valid JSON of an EventBridge shape; acknowledged.
    Malformed,
    /// Another kind of event, or one for the other function; acknowledged.
    Irrelevant,
    /// The decision was to do nothing.
    Ignored,
    /// The job is not opted in: no `spotcheck:enabled=true` tag, or DescribeTrainingJob was
    /// denied (IAM's grant is conditioned on that tag); acknowledged.
    NotOptedIn,
    /// The job no longer exists; acknowledged.
    JobNotFound,
    /// A `spotcheck:*` lineage tag is invalid; acknowledged.
    InvalidInput,
    /// A relaunch (SageMaker) or a continuation (EC2) was created.
    Relaunched,
    /// The relaunch or continuation already existed (an earlier delivery created it).
    AlreadyRelaunched,
    /// The decision's record was written (or already present).
    Recorded,
    /// A savings record was due but the job lacks the data for one (logged why).
    NothingRecorded,
    /// Recovery gave up; recorded and announced.
    GaveUp,
    /// An AWS call failed (see `error` in the line).
    Failed,
}

/// What an invocation did, for callers and tests.
#[derive(Clone, Debug, PartialEq)]
pub struct Handled {
    /// How it ended.
    pub outcome: Outcome,
    /// The engine's decision, when one was made.
    pub decision: Option<Decision>,
    /// The checkpoint validation, when one ran.
    pub checkpoints: Option<CheckpointValidation>,
    /// Side effects, in order (`created …`, `ledger … new`, `published …`).
    pub effects: Vec<String>,
}

/// The one structured line of an invocation, built up as it goes.
#[derive(Debug, Serialize)]
struct Journal {
    spotcheck: &'static str,
    function: &'static str,
    event_key: Option<String>,
    subject: Option<String>,
    outcome: Option<Outcome>,
    action: Option<&'static str>,
    reason: Option<String>,
    decision: Option<Decision>,
    checkpoints: Option<CheckpointValidation>,
    checkpoint_error: Option<String>,
    effects: Vec<String>,
    error: Option<String>,
    retryable: Option<bool>,
    /// The lineage (or EC2 run) the subject belongs to, for the ledger records; not logged.
    #[serde(skip)]
    lineage: Option<LineageRef>,
}

/// Where a ledger record's subject stands: its lineage's root (an EC2 run's name) and its
/// attempt, so that a report attributes every record without another lookup.
#[derive(Clone, Debug, Serialize)]
struct LineageRef {
    root: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempt: Option<u32>,
}

impl Journal {
    fn new(function: &'static str) -> Self {
        Journal {
            spotcheck: "decision",
            function,
            event_key: None,
            subject: None,
            outcome: None,
            action: None,
            reason: None,
            decision: None,
            checkpoints: None,
            checkpoint_error: None,
            effects: Vec::new(),
            error: None,
            retryable: None,
            lineage: None,
        }
    }

    fn decided(&mut self, decision: &Decision) {
        self.action = Some(decision.action_name());
        self.reason = Some(decision.reason.clone());
        self.decision = Some(decision.clone());
    }

    fn effect(&mut self, effect: String) {
        self.effects.push(effect);
    }

    /// Emits the line and turns the run's result into the handler's.
    fn finish(
        mut self,
        result: Result<Outcome, HandlerError>,
        log: &impl LogSink,
    ) -> Result<Handled, HandlerError> {
        match &result {
            Ok(outcome) => self.outcome = Some(*outcome),
            Err(e) => {
                self.outcome = Some(Outcome::Failed);
                self.error = Some(e.to_string());
                self.retryable = Some(e.is_transient());
            }
        }
        let line = serde_json::to_string(&self).unwrap_or_else(|e| {
            format!(r#"{{"spotcheck":"decision","error":"cannot serialise the line: {e}"}}"#)
        });
        log.line(&line);
        result.map(|outcome| Handled {
            outcome,
            decision: self.decision,
            checkpoints: self.checkpoints,
            effects: self.effects,
        })
    }
}

/// A ledger record: what happened, when it was recorded, the lineage it belongs to (when known),
/// and the fact itself.
#[derive(Serialize)]
struct LedgerEntry<'a, T: Serialize> {
    kind: &'static str,
    recorded_at: String,
    event_key: Option<&'a str>,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    lineage: Option<&'a LineageRef>,
    #[serde(flatten)]
    record: T,
}

impl<'a, T: Serialize> LedgerEntry<'a, T> {
    fn new(kind: &'static str, now: Timestamp, journal: &'a Journal, record: T) -> Self {
        LedgerEntry {
            kind,
            recorded_at: now.to_rfc3339(),
            event_key: journal.event_key.as_deref(),
            reason: journal.reason.as_deref().unwrap_or(""),
            lineage: journal.lineage.as_ref(),
            record,
        }
    }
}

/// Step 1 of both handlers: the event, or — for a malformed or irrelevant one — the outcome
/// that acknowledges it (the journal says why). Sets the journal's event key. A malformed event
/// is also counted (EMF metric `MalformedEvents`), so that a producer that changed its shape is
/// seen on a dashboard rather than only in the logs.
fn parse_relevant(
    bytes: &[u8],
    j: &mut Journal,
    now: Timestamp,
    log: &impl LogSink,
) -> Result<Event, Outcome> {
    match parse_event(bytes) {
        Err(e) => {
            j.event_key = e.event_id().map(str::to_owned);
            j.reason = Some(format!("malformed event, acknowledged: {e}"));
            log.line(&malformed_event_metrics(j.function, now));
            Err(Outcome::Malformed)
        }
        Ok(Parsed::Irrelevant(other)) => {
            j.event_key = Some(other.key.to_string());
            j.reason = Some(format!(
                "irrelevant event (source {:?}, detail-type {:?}), acknowledged",
                other.envelope.source, other.envelope.detail_type
            ));
            Err(Outcome::Irrelevant)
        }
        Ok(Parsed::Relevant(event)) => {
            j.event_key = Some(event.key.to_string());
            Ok(event)
        }
    }
}

/// Writes a record once and notes the effect; returns whether it was new.
async fn write_record<L: Ledger>(
    ledger: &L,
    journal: &mut Journal,
    key: &str,
    body: Vec<u8>,
) -> Result<Written, HandlerError> {
    let written = ledger.write_once(key, body).await?;
    let how = match written {
        Written::New => "new",
        Written::AlreadyPresent => "already present",
    };
    journal.effect(format!("ledger {key}: {how}"));
    Ok(written)
}

/// The checkpoint step of both handlers: validates `uri` for the decision and keeps the
/// validation in the journal. A failure retrying cannot fix (AccessDenied — the URI lies
/// outside what the role may read —, no such bucket, a URI that is not `s3://`) is noted in the
/// journal and yields a [`Validation::Unavailable`] summary: the decision goes on without one.
/// Transient failures are errors, so the event is retried.
async fn validate_for_decision<C: CheckpointStore + Sync>(
    store: &C,
    uri: &str,
    options: ValidationOptions,
    journal: &mut Journal,
) -> Result<CheckpointSummary, HandlerError> {
    match validate_checkpoints(store, uri, options).await {
        Ok(validation) => {
            let summary = validation.summary.clone();
            journal.checkpoints = Some(validation);
            Ok(summary)
        }
        Err(ValidationError::Aws(e)) if e.is_transient() => Err(e.into()),
        Err(e) => {
            journal.checkpoint_error = Some(e.to_string());
            Ok(CheckpointSummary::not_judged(Validation::Unavailable))
        }
    }
}

/// What `checkpoint-validations/<name>/unavailable.json` holds.
#[derive(Serialize)]
struct Unavailable<'a> {
    uri: &'a str,
    error: &'a str,
}

/// Records what the checkpoint step found that needs attention: checkpoints that could not be
/// validated (ledger, once per job or run), and corrupt ones (ledger + "Checkpoint Validation
/// Failed", whose entry is appended to `events` for publishing after the action).
async fn record_validation<L: Ledger>(
    ledger: &L,
    journal: &mut Journal,
    name: &str,
    uri: Option<&str>,
    now: Timestamp,
    events: &mut Vec<EventEntry>,
) -> Result<(), HandlerError> {
    if let (Some(error), Some(uri)) = (journal.checkpoint_error.clone(), uri) {
        let body = serde_json::to_vec(&LedgerEntry::new(
            "checkpoint_validation_unavailable",
            now,
            journal,
            Unavailable { uri, error: &error },
        ))?;
        write_record(ledger, journal, &keys::checkpoint_unavailable(name), body).await?;
    }
    let Some(validation) = journal.checkpoints.clone() else {
        return Ok(());
    };
    let Some(event) =
        OutputEvent::checkpoint_validation_failed(name, Some(&validation.uri), &validation.summary)
    else {
        return Ok(());
    };
    let Some(newest_corrupt) = validation.corrupt().next() else {
        return Ok(());
    };
    let key = keys::checkpoint_validation(name, &newest_corrupt.name);
    let body = serde_json::to_vec(&LedgerEntry::new(
        "checkpoint_validation_failed",
        now,
        journal,
        &validation,
    ))?;
    write_record(ledger, journal, &key, body).await?;
    events.push(event.entry()?);
    Ok(())
}

/// After CreateTrainingJob answered `ResourceInUse` for `name`: the existing job's tags, for
/// the plan to recognise (or not) as its own. A job spotcheck may not describe (the grant
/// requires `spotcheck:enabled=true`) is certainly not one spotcheck created: its tags are
/// empty. One that vanished since is a transient state: the retry will see.
async fn existing_job_tags<J: TrainingJobs>(jobs: &J, name: &str) -> Result<Tags, HandlerError> {
    match jobs.describe(name).await {
        Ok(described) => {
            let arn = described.facts.arn.clone().unwrap_or_default();
            Ok(jobs.list_tags(&arn).await?)
        }
        Err(e) if e.kind == crate::error::ErrorKind::AccessDenied => Ok(Tags::new()),
        Err(e) if e.kind == crate::error::ErrorKind::NotFound => Err(HandlerError::Transient(e)),
        Err(e) => Err(e.into()),
    }
}

/// Publishes the entries (if any) and notes each.
async fn publish<E: EventSink>(
    sink: &E,
    journal: &mut Journal,
    entries: Vec<EventEntry>,
) -> Result<(), HandlerError> {
    if entries.is_empty() {
        return Ok(());
    }
    sink.publish(&entries).await?;
    for entry in entries {
        journal.effect(format!("published {}", entry.detail_type));
    }
    Ok(())
}
