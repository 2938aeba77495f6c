//! The EC2 path: a spot interruption warning or rebalance recommendation for one of your own
//! instances.
//!
//! Flow (see `docs/lambdas.md`):
//!
//! 1. Parse. Malformed or irrelevant → acknowledged.
//! 2. The instance's tags (`spotcheck:run`, `spotcheck:checkpoint-uri`,
//!    `spotcheck:continue-on`) map it to its run; an untagged or vanished instance is not
//!    managed and the engine ignores it.
//! 3. `decide` (the control crate's `ec2` table).
//! 4. For an interruption warning (not a rebalance recommendation: advisory and noisy) of a run
//!    with a checkpoint URI, validate the run's checkpoints. A validation the role may not do
//!    (AccessDenied: the shipped template grants this function no checkpoint reads) or a
//!    non-S3 URI is recorded as `checkpoint_error`, not a failure: the interruption record
//!    matters more, and the warning's value expires in two minutes.
//! 5. Record the interruption in the ledger, then publish "Checkpoint Validation Failed" (corrupt
//!    checkpoints) and, when the run names a continuation, "Training Run Continuation Planned"
//!    with the plan (deterministic name from the run and the instance) and the newest valid
//!    checkpoint.
//!
//! It creates no job: the function's role has no launch permissions (see `docs/lambdas.md`
//! for what a creating variant would need); whatever starts the replacement subscribes to the
//! continuation event.

use serde::Serialize;
use spotcheck_control::events::{parse_event, Parsed, Signal};
use spotcheck_control::{decide, Action, CheckpointSummary, DecisionInput, Record, Timestamp};

use super::{
    publish, record_corrupt, write_record, Handled, HandlerConfig, HandlerError, Journal,
    LedgerEntry, LogSink, Outcome,
};
use crate::checkpoints::{validate_checkpoints, CheckpointStore, ValidationError};
use crate::error::ErrorKind;
use crate::events::{continuation_entry, EventSink};
use crate::instances::InstanceTags;
use crate::ledger::{keys, Ledger};

/// The handler of the `ec2-spot-events` function, generic over its four adapters.
#[derive(Clone, Debug)]
pub struct Ec2Handler<I, C, L, E> {
    /// Instance tags.
    pub instances: I,
    /// Checkpoint prefixes in S3.
    pub checkpoints: C,
    /// The ledger.
    pub ledger: L,
    /// spotcheck's events.
    pub events: E,
    /// Policy and validation options (prices are unused here).
    pub config: HandlerConfig,
}

#[derive(Serialize)]
struct InterruptionFacts<'a> {
    interruption: &'a spotcheck_control::ec2::InstanceInterruption,
    latest_valid_step: Option<u64>,
    latest_valid: Option<&'a str>,
    checkpoint_error: Option<&'a str>,
}

impl<I, C, L, E> Ec2Handler<I, C, L, E>
where
    I: InstanceTags + Sync,
    C: CheckpointStore + Sync,
    L: Ledger + Sync,
    E: EventSink + Sync,
{
    /// Handles one event (the raw EventBridge JSON); prints exactly one decision line to `log`.
    pub async fn handle(
        &self,
        event: &[u8],
        now: Timestamp,
        log: &impl LogSink,
    ) -> Result<Handled, HandlerError> {
        let mut journal = Journal::new("ec2-spot-events");
        let result = self.run(event, now, &mut journal).await;
        journal.finish(result, log)
    }

    async fn run(
        &self,
        bytes: &[u8],
        now: Timestamp,
        j: &mut Journal,
    ) -> Result<Outcome, HandlerError> {
        let event = match parse_event(bytes) {
            Err(e) => {
                j.event_key = e.event_id().map(str::to_owned);
                j.reason = Some(format!("malformed event, acknowledged: {e}"));
                return Ok(Outcome::Malformed);
            }
            Ok(Parsed::Irrelevant(other)) => {
                j.event_key = Some(other.key.to_string());
                j.reason = Some(format!(
                    "irrelevant event (source {:?}, detail-type {:?}), acknowledged",
                    other.envelope.source, other.envelope.detail_type
                ));
                return Ok(Outcome::Irrelevant);
            }
            Ok(Parsed::Relevant(event)) => event,
        };
        let event_key = event.key.to_string();
        j.event_key = Some(event_key.clone());
        let instance_id = match &event.signal {
            Signal::SpotInterruption { instance_id, .. }
            | Signal::RebalanceRecommendation { instance_id } => instance_id.clone(),
            Signal::TrainingJobStateChange { .. } => {
                j.reason = Some("a SageMaker event reached the EC2 function; acknowledged".into());
                return Ok(Outcome::Irrelevant);
            }
        };
        j.subject = Some(instance_id.clone());

        let tags = self
            .instances
            .instance_tags(&instance_id)
            .await?
            .unwrap_or_default();
        let input = match DecisionInput::new(
            event,
            None,
            &tags,
            CheckpointSummary::default(),
            &[],
            self.config.policy.clone(),
            now,
        ) {
            Ok(input) => input,
            Err(e) => {
                j.reason = Some(format!("{instance_id}: {e}; acknowledged"));
                return Ok(Outcome::InvalidInput);
            }
        };
        let decision = decide(&input);
        j.decided(&decision);
        let Action::Record(Record::InstanceInterruption(interruption)) = &decision.action else {
            return Ok(Outcome::Ignored);
        };

        if !interruption.advisory {
            if let Some(uri) = &interruption.checkpoint_uri {
                match validate_checkpoints(&self.checkpoints, uri, self.config.validation).await {
                    Ok(validation) => j.checkpoints = Some(validation),
                    Err(ValidationError::Aws(e)) if e.kind == ErrorKind::Transient => {
                        return Err(e.into())
                    }
                    Err(e) => j.checkpoint_error = Some(e.to_string()),
                }
            }
        }

        let validation = j.checkpoints.clone();
        let checkpoint_error = j.checkpoint_error.clone();
        let facts = InterruptionFacts {
            interruption,
            latest_valid_step: validation
                .as_ref()
                .and_then(|v| v.summary.latest_valid_step),
            latest_valid: validation.as_ref().and_then(|v| v.latest_valid.as_deref()),
            checkpoint_error: checkpoint_error.as_deref(),
        };
        let kind = if interruption.advisory {
            "rebalance_recommendation"
        } else {
            "spot_interruption_warning"
        };
        let body = serde_json::to_vec(&LedgerEntry::new(kind, now, j, facts))?;
        let key = keys::instance_interruption(&interruption.run, &instance_id, &event_key);
        write_record(&self.ledger, j, &key, body).await?;

        let mut events = Vec::new();
        record_corrupt(&self.ledger, j, &interruption.run, now, &mut events).await?;
        if let Some(plan) = &interruption.continuation {
            events.push(continuation_entry(
                plan,
                validation.as_ref(),
                checkpoint_error.as_deref(),
            )?);
        }
        publish(&self.events, j, events).await?;
        Ok(Outcome::Recorded)
    }
}
