//! Publishing spotcheck's own EventBridge events.
//!
//! Owns the [`EventSink`] trait, its EventBridge implementation [`EventBridgeSink`], and the two
//! events the control crate does not define, both about an EC2 run's [`ContinuationPlan`]:
//! "Training Run Continued" ([`continued_entry`]) when the EC2 function created the SageMaker
//! job from the run's request template, and "Training Run Continuation Planned"
//! ([`continuation_entry`]) when `spotcheck:continue-on` names no template, handing the plan to
//! whatever automation of the user's starts the replacement capacity. Delivery is at-least-once: the handlers publish only after
//! the action and the ledger write succeeded, and a retried event publishes again, so
//! subscribers must tolerate duplicates (the detail's job or run name identifies the fact).

use std::future::Future;

use serde::Serialize;
use spotcheck_control::outputs::{EventEntry, EVENT_SOURCE};
use spotcheck_control::ContinuationPlan;

use crate::checkpoints::CheckpointValidation;
use crate::error::{classify, AwsError, ErrorKind};

/// `detail-type` of a continuation left to the user's automation.
pub const CONTINUATION_PLANNED: &str = "Training Run Continuation Planned";

/// `detail-type` of a continuation the EC2 function created.
pub const CONTINUED: &str = "Training Run Continued";

/// PutEvents.
pub trait EventSink {
    /// Publishes the entries (on the default bus); an empty slice makes no call.
    fn publish(&self, entries: &[EventEntry]) -> impl Future<Output = Result<(), AwsError>> + Send;
}

/// Detail of "Training Run Continuation Planned".
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ContinuationPlanned<'a> {
    /// The plan: deterministic name, run, reclaimed instance, `continue-on`, checkpoint URI.
    #[serde(flatten)]
    pub plan: &'a ContinuationPlan,
    /// The newest valid checkpoint step under the checkpoint URI, when it could be validated.
    pub latest_valid_step: Option<u64>,
    /// Its name (`<ns>/step-…`).
    pub latest_valid: Option<&'a str>,
    /// Why the checkpoints could not be validated, when they could not.
    pub checkpoint_error: Option<&'a str>,
}

/// The PutEvents entry announcing a continuation.
pub fn continuation_entry(
    plan: &ContinuationPlan,
    validation: Option<&CheckpointValidation>,
    checkpoint_error: Option<&str>,
) -> Result<EventEntry, serde_json::Error> {
    let detail = ContinuationPlanned {
        plan,
        latest_valid_step: validation.and_then(|v| v.summary.latest_valid_step),
        latest_valid: validation.and_then(|v| v.latest_valid.as_deref()),
        checkpoint_error,
    };
    Ok(EventEntry {
        source: EVENT_SOURCE,
        detail_type: CONTINUATION_PLANNED,
        detail: serde_json::to_string(&detail)?,
        resources: vec![plan.instance_id.clone(), plan.name.clone()],
    })
}

/// Detail of "Training Run Continued": the plan's detail plus the job.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ContinuationCreated<'a> {
    /// Plan and checkpoints, as in "Training Run Continuation Planned"; the job's name is the
    /// plan's `name`.
    #[serde(flatten)]
    pub planned: ContinuationPlanned<'a>,
    /// The new job's ARN; `null` when an earlier delivery created it (`ResourceInUse`).
    pub job_arn: Option<&'a str>,
}

/// The PutEvents entry announcing a continuation job created (or found created) as planned.
pub fn continued_entry(
    plan: &ContinuationPlan,
    validation: Option<&CheckpointValidation>,
    checkpoint_error: Option<&str>,
    job_arn: Option<&str>,
) -> Result<EventEntry, serde_json::Error> {
    let detail = ContinuationCreated {
        planned: ContinuationPlanned {
            plan,
            latest_valid_step: validation.and_then(|v| v.summary.latest_valid_step),
            latest_valid: validation.and_then(|v| v.latest_valid.as_deref()),
            checkpoint_error,
        },
        job_arn,
    };
    Ok(EventEntry {
        source: EVENT_SOURCE,
        detail_type: CONTINUED,
        detail: serde_json::to_string(&detail)?,
        resources: vec![plan.instance_id.clone(), plan.name.clone()],
    })
}

/// [`EventSink`] over the AWS SDK (default event bus).
#[derive(Clone, Debug)]
pub struct EventBridgeSink {
    client: aws_sdk_eventbridge::Client,
}

impl EventBridgeSink {
    /// From a shared SDK configuration (`AWS_ENDPOINT_URL[_EVENTBRIDGE]` for emulators).
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        EventBridgeSink {
            client: aws_sdk_eventbridge::Client::new(config),
        }
    }
}

/// PutEvents takes at most 10 entries per call.
const MAX_ENTRIES_PER_CALL: usize = 10;

impl EventSink for EventBridgeSink {
    async fn publish(&self, entries: &[EventEntry]) -> Result<(), AwsError> {
        use aws_sdk_eventbridge::types::PutEventsRequestEntry;
        for chunk in entries.chunks(MAX_ENTRIES_PER_CALL) {
            let request = chunk.iter().map(|e| {
                PutEventsRequestEntry::builder()
                    .source(e.source)
                    .detail_type(e.detail_type)
                    .detail(&e.detail)
                    .set_resources(Some(e.resources.clone()))
                    .build()
            });
            let out = self
                .client
                .put_events()
                .set_entries(Some(request.collect()))
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("PutEvents", e))?;
            if out.failed_entry_count() > 0 {
                // Entries fail one by one; the worst kind decides (transient → retry all).
                let failures: Vec<_> = out
                    .entries()
                    .iter()
                    .filter_map(|r| r.error_code().map(|c| (c, r.error_message())))
                    .collect();
                let kind = if failures
                    .iter()
                    .any(|(code, msg)| classify(Some(code), *msg, None) == ErrorKind::Transient)
                {
                    ErrorKind::Transient
                } else {
                    ErrorKind::Rejected
                };
                return Err(AwsError::new(
                    "PutEvents",
                    kind,
                    format!("{} entries failed: {failures:?}", out.failed_entry_count()),
                ));
            }
        }
        Ok(())
    }
}
