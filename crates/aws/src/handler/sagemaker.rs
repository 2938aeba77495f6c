//! The SageMaker path: one "SageMaker Training Job State Change" event in, one decision carried
//! out.
//!
//! Flow (see `docs/lambdas.md`):
//!
//! 1. Parse. Malformed or irrelevant → acknowledged.
//! 2. ListTags of the job (the event's `Tags` may be partial, and a relaunch copies them all).
//!    Not tagged `spotcheck:enabled=true` → the engine ignores it (outcome `not_opted_in`);
//!    DescribeTrainingJob is not even called (IAM would deny it).
//! 3. DescribeTrainingJob: the authoritative state (events are duplicated, late, out of order).
//!    AccessDenied → not opted in as far as IAM is concerned: acknowledged.
//! 4. For a Stopped or Failed job with a `CheckpointConfig`, unless the event is stale: validate
//!    its checkpoint prefix. One that cannot be validated (AccessDenied, not `s3://`…) is
//!    recorded and the decision goes on without a summary, as in the EC2 handler.
//! 5. `decide`.
//! 6. Act: CreateTrainingJob (relaunch; on `ResourceInUse` the existing job's
//!    `spotcheck:parent`/`root` decide between "already relaunched" and a name collision, which
//!    is recorded and announced as a give-up), ledger records (savings per job and per lineage,
//!    interruptions, user stops, give-ups, corrupt or unavailable checkpoints), then events and
//!    EMF lines.
//!
//! A lineage summary needs every attempt's times: it describes the root (attempt 1, named by
//! `spotcheck:root`) and each deterministic relaunch name `relaunch_name(root, a)` for
//! `a = 2..attempt`, and lists each one's tags (its attempt number and resume step, for the
//! summary's attempt facts); an attempt that cannot be described is listed as skipped.

use serde::Serialize;
use spotcheck_control::decision::staleness;
use spotcheck_control::events::Signal;
use spotcheck_control::naming::relaunch_name;
use spotcheck_control::outputs::{job_savings_metrics, lineage_savings_metrics, OutputEvent};
use spotcheck_control::savings::{
    attempt_facts, job_savings, lineage_savings, AttemptFacts, SkippedJob,
};
use spotcheck_control::status::TrainingJobStatus;
use spotcheck_control::{
    decide, Action, CheckpointSummary, Decision, DecisionInput, GiveUp, GiveUpCause, JobFacts,
    Record, Tags, Timestamp,
};

use super::{
    existing_job_tags, parse_relevant, publish, record_validation, validate_for_decision,
    write_record, Handled, HandlerConfig, HandlerError, Journal, LedgerEntry, LineageRef, LogSink,
    Outcome,
};
use crate::checkpoints::CheckpointStore;
use crate::error::ErrorKind;
use crate::events::EventSink;
use crate::ledger::{keys, Ledger, Written};
use crate::sagemaker::{relaunch_request, Created, TrainingJobs};

/// A give-up record: the decision's payload and the facts of the job that gave up.
#[derive(Serialize)]
struct GaveUpRecord<'a> {
    #[serde(flatten)]
    give_up: &'a spotcheck_control::GiveUp,
    job: AttemptFacts,
}

/// The handler of the `sagemaker-events` function, generic over its four adapters.
#[derive(Clone, Debug)]
pub struct SageMakerHandler<J, C, L, E> {
    /// DescribeTrainingJob, ListTags, CreateTrainingJob.
    pub jobs: J,
    /// Checkpoint prefixes in S3.
    pub checkpoints: C,
    /// The ledger.
    pub ledger: L,
    /// spotcheck's events.
    pub events: E,
    /// Policy, prices, validation options.
    pub config: HandlerConfig,
}

/// Whether the decision can depend on the checkpoints: only the recovery rows (Stopped,
/// Failed) look at them, so other states skip the S3 calls.
fn needs_checkpoints(job: &JobFacts) -> bool {
    matches!(
        job.status,
        Some(TrainingJobStatus::Stopped | TrainingJobStatus::Failed)
    )
}

impl<J, C, L, E> SageMakerHandler<J, C, L, E>
where
    J: TrainingJobs + Sync,
    C: CheckpointStore + Sync,
    L: Ledger + Sync,
    E: EventSink + Sync,
{
    /// Handles one event (the raw EventBridge JSON). `now` is the decision time. Prints exactly
    /// one decision line to `log` (and EMF lines for new savings records).
    pub async fn handle(
        &self,
        event: &[u8],
        now: Timestamp,
        log: &impl LogSink,
    ) -> Result<Handled, HandlerError> {
        let mut journal = Journal::new("sagemaker-events");
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
        let Signal::TrainingJobStateChange { job: event_job } = &event.signal else {
            j.reason = Some("an EC2 signal reached the SageMaker function; acknowledged".into());
            return Ok(Outcome::Irrelevant);
        };
        let name = event_job.name.clone();
        j.subject = Some(name.clone());

        // 2. Tags: ListTags is authoritative and complete; the event's may be partial.
        let mut tags = Tags::new();
        if let Some(arn) = event_job.arn.as_deref() {
            match self.jobs.list_tags(arn).await {
                Ok(found) => tags = found,
                Err(e) if e.kind == ErrorKind::NotFound => {
                    j.reason = Some(format!("{name}: no such training job ({e}); acknowledged"));
                    return Ok(Outcome::JobNotFound);
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut all_tags = event_job.tags.clone();
        all_tags.merge(&tags);
        let policy = self.config.policy.clone();
        if !all_tags.is_enabled() {
            let input = match DecisionInput::new(
                event,
                None,
                &tags,
                CheckpointSummary::default(),
                &[],
                policy,
                now,
            ) {
                Ok(input) => input,
                Err(e) => {
                    j.reason = Some(format!("{name}: {e}; acknowledged"));
                    return Ok(Outcome::InvalidInput);
                }
            };
            // The engine's decision (ignore) is logged; the outcome says why.
            j.decided(&decide(&input));
            return Ok(Outcome::NotOptedIn);
        }

        // 3. The authoritative state.
        let described = match self.jobs.describe(&name).await {
            Ok(described) => described,
            Err(e) if e.kind == ErrorKind::AccessDenied => {
                j.reason = Some(format!(
                    "{name}: DescribeTrainingJob was denied ({e}): the grant is conditioned on \
                     spotcheck:enabled=true, so IAM says the job is not opted in; acknowledged"
                ));
                return Ok(Outcome::NotOptedIn);
            }
            Err(e) if e.kind == ErrorKind::NotFound => {
                j.reason = Some(format!("{name}: no such training job ({e}); acknowledged"));
                return Ok(Outcome::JobNotFound);
            }
            Err(e) => return Err(e.into()),
        };
        let facts = described.facts.clone().with_tags(&tags);

        // 4. Checkpoints, when the decision can depend on them (not for a stale event, which
        //    the engine ignores whatever they hold).
        let mut summary = CheckpointSummary::default();
        let mut validated_uri = None;
        if needs_checkpoints(&facts) && staleness(event_job, &facts).is_none() {
            if let Some(uri) = facts.checkpoint_uri() {
                summary = validate_for_decision(&self.checkpoints, uri, self.config.validation, j)
                    .await?;
                validated_uri = Some(uri.to_owned());
            }
        }

        // 5. Decide.
        let input = match DecisionInput::new(
            event,
            Some(facts.clone()),
            &tags,
            summary,
            &[],
            policy,
            now,
        ) {
            Ok(input) => input,
            Err(e) => {
                j.reason = Some(format!("{name}: {e}; acknowledged"));
                return Ok(Outcome::InvalidInput);
            }
        };
        let decision = decide(&input);
        j.decided(&decision);
        j.lineage = Some(LineageRef {
            root: input.lineage.root.clone(),
            attempt: Some(input.lineage.attempt),
        });

        // 6. Act; then records; then events.
        let mut events = Vec::new();
        let outcome = match &decision.action {
            Action::Ignore => Outcome::Ignored,
            Action::Relaunch(plan) => {
                let request = relaunch_request(&described.output, plan);
                match self.jobs.create(request).await? {
                    Created::New { arn } => {
                        j.effect(format!("created {} ({arn})", plan.job_name));
                        events.extend(OutputEvent::from_decision(&decision).map(|e| e.entry()));
                        Outcome::Relaunched
                    }
                    Created::AlreadyExists => {
                        let existing = existing_job_tags(&self.jobs, &plan.job_name).await?;
                        match plan.check_existing(&existing) {
                            Ok(()) => {
                                j.effect(format!(
                                    "{} already exists: an earlier delivery created it",
                                    plan.job_name
                                ));
                                events.extend(
                                    OutputEvent::from_decision(&decision).map(|e| e.entry()),
                                );
                                Outcome::AlreadyRelaunched
                            }
                            Err(collision) => {
                                let gave_up = Decision {
                                    action: Action::GiveUp(GiveUp {
                                        job_name: plan.parent.clone(),
                                        root: plan.root.clone(),
                                        attempt: plan.attempt.saturating_sub(1),
                                        cause: GiveUpCause::NameCollision,
                                    }),
                                    reason: format!(
                                        "{}; not relaunched: {collision}",
                                        decision.reason
                                    ),
                                    event_key: decision.event_key.clone(),
                                };
                                j.effect(collision);
                                self.give_up(&gave_up, &facts, now, j, &mut events).await?;
                                Outcome::GaveUp
                            }
                        }
                    }
                }
            }
            Action::GiveUp(_) => {
                self.give_up(&decision, &facts, now, j, &mut events).await?;
                Outcome::GaveUp
            }
            Action::Record(record) => {
                self.record(record, &facts, now, j, log, &mut events)
                    .await?
            }
        };
        let mut events: Vec<_> = events.into_iter().collect::<Result<_, _>>()?;
        record_validation(
            &self.ledger,
            j,
            &name,
            validated_uri.as_deref(),
            now,
            &mut events,
        )
        .await?;
        publish(&self.events, j, events).await?;
        Ok(outcome)
    }

    /// Records a give-up decision (`give-ups/<root>/<job>.json`, its reason the decision's) and
    /// queues its "Recovery Gave Up".
    async fn give_up(
        &self,
        decision: &Decision,
        facts: &JobFacts,
        now: Timestamp,
        j: &mut Journal,
        events: &mut Vec<Result<spotcheck_control::outputs::EventEntry, serde_json::Error>>,
    ) -> Result<(), HandlerError> {
        let Action::GiveUp(give_up) = &decision.action else {
            return Ok(());
        };
        // The job's own facts: what the attempt that ends the lineage ran and cost.
        let record = GaveUpRecord {
            give_up,
            job: attempt_facts(facts, &self.config.prices),
        };
        let body = serde_json::to_vec(&LedgerEntry {
            reason: &decision.reason,
            ..LedgerEntry::new("recovery_gave_up", now, j, record)
        })?;
        let key = keys::give_up(&give_up.root, &give_up.job_name);
        write_record(&self.ledger, j, &key, body).await?;
        events.extend(OutputEvent::from_decision(decision).map(|e| e.entry()));
        Ok(())
    }

    async fn record(
        &self,
        record: &Record,
        facts: &JobFacts,
        now: Timestamp,
        j: &mut Journal,
        log: &impl LogSink,
        events: &mut Vec<Result<spotcheck_control::outputs::EventEntry, serde_json::Error>>,
    ) -> Result<Outcome, HandlerError> {
        match record {
            Record::Savings {
                root,
                attempt,
                ends_lineage,
                ..
            } => {
                let prices = &self.config.prices;
                let saved = match job_savings(facts, prices) {
                    Ok(saved) => saved,
                    Err(e) => {
                        j.effect(format!("no savings record: {e}"));
                        return Ok(Outcome::NothingRecorded);
                    }
                };
                let body = serde_json::to_vec(&saved)?;
                if write_record(&self.ledger, j, &saved.s3_key(), body).await? == Written::New {
                    log.line(&job_savings_metrics(&saved, now));
                }
                events.push(OutputEvent::job_savings(&saved).entry());
                if *ends_lineage {
                    let (jobs, skipped) = self.lineage_jobs(root, *attempt, facts).await?;
                    match lineage_savings(root, &jobs, prices) {
                        Ok(mut summary) => {
                            summary.skipped.extend(skipped);
                            let body = serde_json::to_vec(&summary)?;
                            let key = summary.s3_key();
                            if write_record(&self.ledger, j, &key, body).await? == Written::New {
                                log.line(&lineage_savings_metrics(&summary, now));
                            }
                            events.push(OutputEvent::lineage_savings(&summary).entry());
                        }
                        Err(e) => j.effect(format!("no lineage savings record: {e}")),
                    }
                }
                Ok(Outcome::Recorded)
            }
            Record::Interruption {
                job_name,
                interruptions,
                ..
            } => {
                let body =
                    serde_json::to_vec(&LedgerEntry::new("job_interruption", now, j, record))?;
                let key = keys::job_interruption(job_name, *interruptions);
                write_record(&self.ledger, j, &key, body).await?;
                Ok(Outcome::Recorded)
            }
            Record::UserStopped { job_name } => {
                let body = serde_json::to_vec(&LedgerEntry::new("user_stopped", now, j, record))?;
                write_record(&self.ledger, j, &keys::user_stop(job_name), body).await?;
                Ok(Outcome::Recorded)
            }
            // The engine only records instance interruptions for EC2 signals.
            Record::InstanceInterruption(_) => Ok(Outcome::Ignored),
        }
    }

    /// `facts` with the job's tags (DescribeTrainingJob returns none): its attempt number and
    /// resume step, for the lineage summary's attempt facts. A job whose tags cannot be read
    /// (gone, or not opted in) keeps its facts without them.
    async fn with_tags(&self, facts: JobFacts) -> Result<JobFacts, HandlerError> {
        let Some(arn) = facts.arn.clone() else {
            return Ok(facts);
        };
        match self.jobs.list_tags(&arn).await {
            Ok(tags) => Ok(facts.with_tags(&tags)),
            Err(e) if matches!(e.kind, ErrorKind::NotFound | ErrorKind::AccessDenied) => Ok(facts),
            Err(e) => Err(e.into()),
        }
    }

    /// The facts of every attempt of a lineage, from the deterministic names (see the module
    /// doc); attempts that cannot be described are returned as skipped.
    async fn lineage_jobs(
        &self,
        root: &str,
        attempts: u32,
        current: &JobFacts,
    ) -> Result<(Vec<JobFacts>, Vec<SkippedJob>), HandlerError> {
        let mut jobs = Vec::new();
        let mut skipped = Vec::new();
        for attempt in 1..=attempts {
            let name = match attempt {
                1 => root.to_owned(),
                n => relaunch_name(root, n),
            };
            if name == current.name {
                jobs.push(current.clone());
                continue;
            }
            match self.jobs.describe(&name).await {
                Ok(described) => jobs.push(self.with_tags(described.facts).await?),
                Err(e) if matches!(e.kind, ErrorKind::NotFound | ErrorKind::AccessDenied) => {
                    skipped.push(SkippedJob {
                        job_name: name,
                        reason: format!("attempt {attempt} could not be described: {e}"),
                    })
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok((jobs, skipped))
    }
}
