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
//!    with a checkpoint URI inside the stack's checkpoint location, validate the run's
//!    checkpoints. A validation the role may not do (AccessDenied) or a non-S3 URI is recorded
//!    as `checkpoint_error` (and in `checkpoint-validations/<run>/unavailable.json`), not a
//!    failure, as in the SageMaker handler: the interruption record matters more, and the
//!    warning's value expires in two minutes. A URI outside the location is not read at all.
//! 5. Record the interruption in the ledger (and corrupt or unavailable checkpoints).
//! 6. Gate a planned continuation on the policy and on what validation found
//!    (`gate_continuation`: a checkpoint URI outside the stack's location → refused; training
//!    finished → nothing to continue; no valid checkpoint → the `without_checkpoint` policy,
//!    which may give up). A refusal or give-up is recorded at `give-ups/<run>/<continuation>.json`
//!    and announced as "Recovery Gave Up".
//!    When it goes ahead and `spotcheck:continue-on` is the `s3://` URI of
//!    a CreateTrainingJob request template: read it (bounded), refuse an instance type the
//!    operator does not allow, build the request ([`continuation_request`]: managed spot, the
//!    run's checkpoint URI, lineage tags) and create the job under the plan's deterministic
//!    name (run + generation), so that the several instances of one run continue it once. On
//!    `ResourceInUse` the existing job's `spotcheck:run` and `spotcheck:generation` decide
//!    between "already done" and a name collision (a give-up). Any other `continue-on` value is
//!    left to the user's automation.
//! 7. Publish "Checkpoint Validation Failed" (corrupt checkpoints) and "Training Run Continued"
//!    (created) or "Training Run Continuation Planned" (left to a subscriber).
//!
//! An unusable template is [`HandlerError::Template`] — after the interruption was recorded —
//! so the event lands in the DLQ with its alarm and a redrive after the fix creates the job.

use serde::Serialize;
use spotcheck_control::ec2::{gate_continuation, refuse_instance_type, ContinuationVerdict};
use spotcheck_control::events::Signal;
use spotcheck_control::outputs::{EventEntry, OutputEvent};
use spotcheck_control::{
    decide, Action, CheckpointSummary, Decision, DecisionInput, GiveUp, GiveUpCause, Record,
    Timestamp,
};

use super::{
    existing_job_tags, parse_relevant, publish, record_validation, validate_for_decision,
    write_record, Handled, HandlerConfig, HandlerError, Journal, LedgerEntry, LineageRef, LogSink,
    Outcome,
};
use crate::checkpoints::CheckpointStore;
use crate::continuation::{
    continuation_request, parse_template, template_location, Template, TemplateError,
    MAX_TEMPLATE_BYTES,
};
use crate::events::{continuation_entry, continued_entry, EventSink};
use crate::instances::InstanceTags;
use crate::ledger::{keys, Ledger};
use crate::sagemaker::{Created, TrainingJobs};

/// The handler of the `ec2-spot-events` function, generic over its five adapters.
#[derive(Clone, Debug)]
pub struct Ec2Handler<I, J, C, L, E> {
    /// Instance tags.
    pub instances: I,
    /// CreateTrainingJob, for continuations.
    pub jobs: J,
    /// Checkpoint prefixes and continuation templates in S3.
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

impl<I, J, C, L, E> Ec2Handler<I, J, C, L, E>
where
    I: InstanceTags + Sync,
    J: TrainingJobs + Sync,
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
        let result = self.run(event, now, &mut journal, log).await;
        journal.finish(result, log)
    }

    async fn run(
        &self,
        bytes: &[u8],
        now: Timestamp,
        j: &mut Journal,
        log: &impl LogSink,
    ) -> Result<Outcome, HandlerError> {
        let event = match parse_relevant(bytes, j, now, log) {
            Ok(event) => event,
            Err(acknowledged) => return Ok(acknowledged),
        };
        let event_key = event.key.to_string();
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
        j.lineage = Some(LineageRef {
            root: interruption.run.clone(),
            attempt: None,
        });

        let mut summary = None;
        if !interruption.advisory {
            if let Some(uri) = &interruption.checkpoint_uri {
                match &self.config.checkpoint_scope {
                    Some(scope) if !scope.contains(uri) => {
                        j.checkpoint_error = Some(format!(
                            "{uri} lies outside the stack's checkpoint location {scope}; not read"
                        ));
                    }
                    _ => {
                        summary = Some(
                            validate_for_decision(
                                &self.checkpoints,
                                uri,
                                self.config.validation,
                                j,
                            )
                            .await?,
                        );
                    }
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
        record_validation(
            &self.ledger,
            j,
            &interruption.run,
            interruption.checkpoint_uri.as_deref(),
            now,
            &mut events,
        )
        .await?;
        let mut outcome = Outcome::Recorded;
        if let Some(plan) = &interruption.continuation {
            let checkpoint_error = checkpoint_error.as_deref();
            let verdict = gate_continuation(
                plan,
                summary.as_ref(),
                &self.config.policy,
                &tags,
                self.config.checkpoint_scope.as_ref(),
            );
            let from_step = match verdict {
                // The decision's reason already says where the run continues.
                ContinuationVerdict::Continue { from_step, .. } => from_step,
                ContinuationVerdict::Finished { reason } => {
                    j.effect(reason);
                    publish(&self.events, j, events).await?;
                    return Ok(outcome);
                }
                ContinuationVerdict::GiveUp { give_up, reason } => {
                    self.give_up(give_up, reason, &decision, now, j, &mut events)
                        .await?;
                    publish(&self.events, j, events).await?;
                    return Ok(Outcome::GaveUp);
                }
            };
            match template_location(&plan.continue_on) {
                None => {
                    j.effect(format!(
                        "{} is not an s3:// request template: the plan is published for a \
                         subscriber to act on",
                        plan.continue_on
                    ));
                    events.push(continuation_entry(
                        plan,
                        validation.as_ref(),
                        checkpoint_error,
                    )?);
                }
                Some(location) => {
                    let template = self.template(&plan.continue_on, location).await?;
                    let instance_type = &template.resource_config.instance_type;
                    if let Some(ContinuationVerdict::GiveUp { give_up, reason }) =
                        refuse_instance_type(plan, instance_type, &self.config.policy)
                    {
                        self.give_up(give_up, reason, &decision, now, j, &mut events)
                            .await?;
                        publish(&self.events, j, events).await?;
                        return Ok(Outcome::GaveUp);
                    }
                    let request = continuation_request(&template, plan, from_step);
                    let arn = match self.jobs.create(request).await? {
                        Created::New { arn } => {
                            j.effect(format!("created {} ({arn})", plan.name));
                            outcome = Outcome::Relaunched;
                            Some(arn)
                        }
                        Created::AlreadyExists => {
                            let existing = existing_job_tags(&self.jobs, &plan.name).await?;
                            if let Err(collision) = plan.check_existing(&existing) {
                                let give_up = GiveUp {
                                    job_name: plan.name.clone(),
                                    root: plan.run.clone(),
                                    attempt: 1,
                                    cause: GiveUpCause::NameCollision,
                                };
                                let reason =
                                    format!("run {}: not continued: {collision}", plan.run);
                                self.give_up(give_up, reason, &decision, now, j, &mut events)
                                    .await?;
                                publish(&self.events, j, events).await?;
                                return Ok(Outcome::GaveUp);
                            }
                            j.effect(format!(
                                "{} already exists: an earlier delivery created it",
                                plan.name
                            ));
                            outcome = Outcome::AlreadyRelaunched;
                            None
                        }
                    };
                    events.push(continued_entry(
                        plan,
                        validation.as_ref(),
                        checkpoint_error,
                        arn.as_deref(),
                    )?);
                }
            }
        }
        publish(&self.events, j, events).await?;
        Ok(outcome)
    }

    /// Records a refused or given-up continuation (`give-ups/<run>/<continuation>.json`, its
    /// reason the gate's, not the interruption decision's) and queues "Recovery Gave Up".
    async fn give_up(
        &self,
        give_up: GiveUp,
        reason: String,
        decision: &Decision,
        now: Timestamp,
        j: &mut Journal,
        events: &mut Vec<EventEntry>,
    ) -> Result<(), HandlerError> {
        j.effect(reason.clone());
        let gave_up = Decision {
            action: Action::GiveUp(give_up.clone()),
            reason,
            event_key: decision.event_key.clone(),
        };
        let body = serde_json::to_vec(&LedgerEntry {
            reason: &gave_up.reason,
            ..LedgerEntry::new("recovery_gave_up", now, j, &give_up)
        })?;
        let key = keys::give_up(&give_up.root, &give_up.job_name);
        write_record(&self.ledger, j, &key, body).await?;
        events.extend(
            OutputEvent::from_decision(&gave_up)
                .map(|e| e.entry())
                .transpose()?,
        );
        Ok(())
    }

    /// Reads and parses the request template at `uri` (already split into `location`).
    async fn template(
        &self,
        uri: &str,
        location: Result<(String, String), TemplateError>,
    ) -> Result<Template, HandlerError> {
        let unusable = |problem| HandlerError::Template {
            uri: uri.to_owned(),
            problem,
        };
        let (bucket, key) = location.map_err(unusable)?;
        // One byte over the limit tells "too large" from "exactly the limit".
        let bytes = self
            .checkpoints
            .get_head_bytes(&bucket, &key, MAX_TEMPLATE_BYTES + 1)
            .await?
            .ok_or_else(|| unusable(TemplateError::Missing))?;
        parse_template(&bytes).map_err(unusable)
    }
}
