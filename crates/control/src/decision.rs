//! The decision engine: one event plus the facts around it in, one [`Decision`] out.
//!
//! Owns [`decide`], a pure function of a [`DecisionInput`]: no I/O, no clock (`now` is an input),
//! no randomness. The same input always gives the same decision, and a relaunch always asks for
//! the same deterministic name, so duplicate and redelivered events are harmless. It must not
//! call AWS or carry anything out: the shell executes the [`Action`].
//!
//! # Decision table (SageMaker), first matching row wins
//!
//! | # | Condition | Action |
//! |---|---|---|
//! | 1 | job not tagged `spotcheck:enabled=true` | Ignore |
//! | 2 | Describe is for another job than the event | Ignore |
//! | 3 | stale: event status ≠ Describe status; for a finished job (Completed, Failed, Stopped) also a different secondary status, for a running one (InProgress, Stopping) a different secondary status or a newer Describe `LastModifiedTime` | Ignore |
//! | 4 | no `TrainingJobStatus` | Ignore |
//! | 5 | InProgress/Interrupted | Record interruption (SageMaker restarts the job itself) |
//! | 6 | InProgress/anything else, Stopping/* | Ignore (not final) |
//! | 7 | Completed | Record savings (ends a lineage when attempt > 1 or `spotcheck:root` is set) |
//! | 8 | Stopped/Stopped (the user's StopTrainingJob) | Record user stop; never relaunch |
//! | 9 | Stopped/MaxWaitTimeExceeded | recover: spot lost (trained) or never arrived (did not) |
//! | 10 | Stopped/MaxRuntimeExceeded | recover: continue past the runtime cap (only with `relaunch_after_max_runtime`) |
//! | 11 | Stopped/any other secondary status | Ignore (may be a user's stop) |
//! | 12 | Failed, [`classify_failure`] = Capacity / InternalError | recover |
//! | 13 | Failed, UserError / Unclassified | recover, charged to the user-error budget |
//! | 14 | unknown `TrainingJobStatus` | Ignore |
//!
//! "recover" then applies, again first match wins:
//!
//! | # | Condition | Action |
//! |---|---|---|
//! | R1 | a policy tag is invalid, or exceeds the operator's ceilings | GiveUp (invalid policy) |
//! | R2 | K = `crash_loop_attempts` consecutive attempts trained without checkpoint progress | GiveUp (crash loop), whatever the status |
//! | R3 | runtime cap, `relaunch_after_max_runtime` off | GiveUp (runtime budget spent) |
//! | R4 | runtime cap, newest valid checkpoint marks training finished | Ignore |
//! | R5 | runtime cap, no checkpoint progress in this attempt | GiveUp (no progress) |
//! | R6 | user error, `retries_on_user_error` spent | GiveUp (user error) |
//! | R7 | attempt ≥ `max_attempts` | GiveUp (attempts exhausted) |
//! | R8 | the lineage used its whole runtime budget | GiveUp (runtime budget spent) |
//! | R9 | no valid checkpoint (or no CheckpointConfig), policy `give-up` | GiveUp (no checkpoint) |
//! | R10 | the relaunch's instance type, or on-demand, is outside the operator's ceilings | GiveUp (not permitted) |
//! | R11 | otherwise | Relaunch `<root>-r<attempt+1>-<hash>` |
//!
//! Checkpoints the validator could not judge — objects in an unknown format (another library's
//! checkpoints, no spotcheck manifest) or a prefix it could not read — say nothing about
//! progress: such an attempt neither counts towards a crash loop nor resets it (R2), the
//! no-progress row R5 and the no-checkpoint policy R9 do not apply, and the relaunch keeps the
//! same `CheckpointConfig`, so the job's own code resumes from whatever is there.
//!
//! **Runtime budget.** A job's `MaxRuntimeInSeconds` is its lineage's budget: each relaunch
//! gets `MaxRuntimeInSeconds` minus what the attempt that ended used (its
//! `TrainingTimeInSeconds`), and carries the total used so far in `spotcheck:runtime-used`.
//! MaxRuntimeExceeded therefore means the budget is spent (R3), unless the policy opts in to
//! `relaunch_after_max_runtime`: then the relaunch starts a fresh budget (the original
//! `MaxRuntimeInSeconds`, `runtime-used` back to 0).
//!
//! A relaunch stays on the job's instance type, except that a capacity shortage (Failed with a
//! capacity reason, or MaxWaitTimeExceeded before training ever started) moves one rung down
//! the policy's instance ladder (staying on the last rung at the end; the ladder applies only to
//! jobs whose type is on it). It goes on-demand when the job was on-demand, when the lineage's
//! spot interruptions reached `on_demand_after_interruptions` (an attempt whose spot capacity
//! never arrived counts as one), or when the deadline is within
//! `on_demand_when_deadline_within_seconds`; otherwise it stays on spot.
//!
//! An attempt that never reached `Training` neither counts towards a crash loop nor resets it:
//! waiting for capacity is not crashing. Interruptions are counted from the jobs'
//! `SecondaryStatusTransitions` (carried forward in `spotcheck:interruptions`), not from events,
//! so ignoring a stale event loses nothing.
//!
//! EC2 signals go to [`crate::ec2`].
//!
//! # Walk-throughs
//!
//! **Spot loss, then capacity, then success.** Ladder `ml.p3.2xlarge, ml.g5.2xlarge`.
//! 1. `train` (attempt 1, spot, ml.p3.2xlarge) runs and checkpoints step 1200;
//!    InProgress/Interrupted → Record interruption. SageMaker restarts it; interrupted again;
//!    the wait runs out → Stopped/MaxWaitTimeExceeded → Relaunch `train-r2-…` on ml.p3.2xlarge
//!    (same rung: capacity existed, it was reclaimed), spot, from step 1200.
//! 2. `train-r2-…` → Failed "CapacityError: Unable to provision…" → Relaunch `train-r3-…` on
//!    ml.g5.2xlarge (next rung), from step 1200. The failed attempt never trained, so it does not
//!    count towards a crash loop.
//! 3. `train-r3-…` → Completed → Record savings for `train-r3-…` and for lineage `train`
//!    (3 attempts): the shell sums both times across the three jobs.
//!
//! **Too many interruptions.** `spotcheck:on-demand-after=2`: attempt 1 is interrupted twice and
//! stopped by MaxWaitTimeExceeded → Relaunch `…-r2-…` on-demand (no MaxWait), from the newest
//! valid checkpoint.
//!
//! **Runtime budget.** MaxRuntimeInSeconds 86400: the job trains 30000 s and loses spot →
//! Relaunch with MaxRuntimeInSeconds 56400 (`spotcheck:runtime-used=30000`); that one ends
//! Stopped/MaxRuntimeExceeded → GiveUp (runtime budget spent).
//!
//! **Chaining past the runtime cap** (`relaunch_after_max_runtime`). MaxRuntimeInSeconds 86400
//! on a three-day run: each day ends Stopped/MaxRuntimeExceeded with a newer valid checkpoint →
//! Relaunch with a fresh 86400 s, until Completed or `max_attempts`.
//!
//! **A late event.** A DLQ redrive delivers the Stopped/MaxWaitTimeExceeded event a day later;
//! Describe still says Stopped/MaxWaitTimeExceeded, but its `LastModifiedTime` moved (SageMaker
//! touches finished jobs: warm pools, rule statuses, model upload). The status is the same, so
//! the event is not stale → Relaunch as on time.
//!
//! **Crash loop.** K = 3: three consecutive attempts reach `Training` and end (any way) with the
//! newest valid checkpoint still at the step they resumed from → GiveUp (crash loop).
//!
//! **User error.** Failed "AlgorithmError: …" with `retries_on_user_error` 0 → GiveUp. With 1:
//! Relaunch once (tagged `spotcheck:error-retries=1`), then GiveUp on the next user error,
//! however many preemptions were recovered meanwhile.
//!
//! **Out of order.** An InProgress/Interrupted event delivered after the job is already
//! Stopped: Describe says Stopped → Ignore (stale). The Stopped event decides.
//!
//! **Duplicate.** The same Stopped/MaxWaitTimeExceeded event twice → the same Relaunch with the
//! same name twice; the second CreateTrainingJob gets ResourceInUse, and the shell finds the
//! existing job tagged with this plan's `spotcheck:parent` and `root`
//! ([`RelaunchPlan::check_existing`](crate::RelaunchPlan::check_existing)): done. A job with
//! that name and other tags is a name collision, not a relaunch.

use serde::Serialize;

use crate::checkpoint::{CheckpointSummary, Validation};
use crate::ec2::{self, InstanceInterruption};
use crate::events::{Event, EventKey, Signal};
use crate::failure::{classify_failure, FailureClass};
use crate::job::JobFacts;
use crate::lineage::{AttemptRecord, Lineage, LineageError};
use crate::naming;
use crate::plan::{RelaunchCause, RelaunchPlan};
use crate::policy::{Policy, WithoutCheckpoint};
use crate::status::{SecondaryStatus, TrainingJobStatus};
use crate::tags::{keys, Tags};
use crate::timestamp::Timestamp;

/// Everything [`decide`] looks at.
#[derive(Clone, Debug, PartialEq)]
pub struct DecisionInput {
    /// The event being handled.
    pub event: Event,
    /// DescribeTrainingJob of the event's job: the authoritative current state. `None` when the
    /// shell has none (e.g. the CLI on a recorded event): the event's detail is used instead,
    /// and staleness cannot be detected.
    pub job: Option<JobFacts>,
    /// All tags known for the job (or, for EC2 signals, the instance), merged.
    pub tags: Tags,
    /// The validator's verdict on the job's checkpoint prefix.
    pub checkpoints: CheckpointSummary,
    /// Where the job stands in its lineage.
    pub lineage: Lineage,
    /// The base policy (environment or file); the job's policy tags are applied on top.
    pub policy: Policy,
    /// The time of the decision.
    pub now: Timestamp,
}

impl DecisionInput {
    /// Assembles an input: merges the tags (event detail, then Describe's `Tags`, then
    /// `extra_tags` such as ListTags, later winning) and reads the lineage from them.
    pub fn new(
        event: Event,
        job: Option<JobFacts>,
        extra_tags: &Tags,
        checkpoints: CheckpointSummary,
        history: &[AttemptRecord],
        policy: Policy,
        now: Timestamp,
    ) -> Result<Self, LineageError> {
        let mut tags = Tags::new();
        let lineage = match &event.signal {
            Signal::TrainingJobStateChange { job: event_job } => {
                tags.merge(&event_job.tags);
                if let Some(job) = &job {
                    tags.merge(&job.tags);
                }
                tags.merge(extra_tags);
                let name = job.as_ref().map_or(&event_job.name, |j| &j.name);
                Lineage::from_tags(name, &tags, history)?
            }
            Signal::SpotInterruption { instance_id, .. }
            | Signal::RebalanceRecommendation { instance_id } => {
                tags.merge(extra_tags);
                Lineage::first(instance_id)
            }
        };
        Ok(DecisionInput {
            event,
            job,
            tags,
            checkpoints,
            lineage,
            policy,
            now,
        })
    }
}

/// What to do, and why.
///
/// Serialises flat: `{"action": "relaunch", "job_name": …, "instance_type": …, "spot": …,
/// "reason": …, "event_key": …}`, `{"action": "record", "record": "savings", …}`,
/// `{"action": "ignore", …}`, `{"action": "give_up", "cause": …, …}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The action for the shell to carry out.
    #[serde(flatten)]
    pub action: Action,
    /// Why, in words: the state seen and what the policy decided.
    pub reason: String,
    /// Key of the event decided on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_key: Option<EventKey>,
}

/// The action of a [`Decision`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Create a new training job as planned.
    Relaunch(RelaunchPlan),
    /// Record a fact (savings, an interruption, a user's stop).
    Record(Record),
    /// Do nothing (the reason says why).
    Ignore,
    /// Stop recovering this lineage and report it.
    GiveUp(GiveUp),
}

/// A fact to record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    /// A job completed: compute and store its savings (and its lineage's when it ends one).
    Savings {
        /// The completed job.
        job_name: String,
        /// The lineage's first job.
        root: String,
        /// The completed job's attempt number.
        attempt: u32,
        /// Whether the job ends a lineage of relaunches (attempt > 1 or `spotcheck:root` set).
        ends_lineage: bool,
    },
    /// A managed spot job was interrupted; SageMaker restarts it itself.
    Interruption {
        /// The interrupted job.
        job_name: String,
        /// Interruptions of this job so far (at least 1).
        interruptions: u32,
        /// Interruptions across the lineage so far.
        lineage_interruptions: u32,
    },
    /// The user stopped the job: never relaunched.
    UserStopped {
        /// The stopped job.
        job_name: String,
    },
    /// An EC2 spot instance is being reclaimed, or advised to be.
    InstanceInterruption(InstanceInterruption),
}

/// Why recovery stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GiveUpCause {
    /// The lineage used `max_attempts`.
    AttemptsExhausted,
    /// `crash_loop_attempts` consecutive attempts trained without checkpoint progress.
    CrashLoop,
    /// The job's own error, with `retries_on_user_error` spent.
    UserError,
    /// No valid checkpoint and policy `without_checkpoint = give-up`.
    NoCheckpoint,
    /// The runtime cap was hit without checkpoint progress: continuing would repeat the work.
    NoProgressPastRuntimeCap,
    /// A `spotcheck:*` policy tag on the job is invalid, or exceeds the operator's ceilings.
    InvalidPolicy,
    /// The lineage used its whole runtime budget (`MaxRuntimeInSeconds`), and relaunching after
    /// MaxRuntimeExceeded is not opted in.
    RuntimeBudgetSpent,
    /// What recovery needs is outside the operator's ceilings: an instance type not allowed,
    /// on-demand capacity when it is not allowed, or (EC2) a checkpoint URI outside the stack's
    /// checkpoint location.
    NotPermitted,
    /// The relaunch's deterministic name is taken by a job that is not this lineage's.
    NameCollision,
}

/// The payload of [`Action::GiveUp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GiveUp {
    /// The job whose recovery stops.
    pub job_name: String,
    /// The lineage's first job.
    pub root: String,
    /// The job's attempt number.
    pub attempt: u32,
    /// Why.
    pub cause: GiveUpCause,
}

impl Decision {
    /// An [`Action::Ignore`] with its reason.
    pub fn ignore(reason: impl Into<String>) -> Self {
        Decision {
            action: Action::Ignore,
            reason: reason.into(),
            event_key: None,
        }
    }

    /// The action's name as serialised (`relaunch`, `record`, `ignore`, `give_up`).
    pub fn action_name(&self) -> &'static str {
        match self.action {
            Action::Relaunch(_) => "relaunch",
            Action::Record(_) => "record",
            Action::Ignore => "ignore",
            Action::GiveUp(_) => "give_up",
        }
    }

    pub(crate) fn record(record: Record, reason: String) -> Self {
        Decision {
            action: Action::Record(record),
            reason,
            event_key: None,
        }
    }
}

/// Decides what to do about one event (see the module doc for the table and walk-throughs).
pub fn decide(input: &DecisionInput) -> Decision {
    let decision = match &input.event.signal {
        Signal::TrainingJobStateChange { job } => training_job(input, job),
        Signal::SpotInterruption {
            instance_id,
            action,
        } => ec2::interruption(instance_id, action.as_ref(), &input.tags),
        Signal::RebalanceRecommendation { instance_id } => ec2::rebalance(instance_id, &input.tags),
    };
    Decision {
        event_key: Some(input.event.key.clone()),
        ..decision
    }
}

fn state_text(job: &JobFacts) -> String {
    format!(
        "{}/{}",
        job.status.as_ref().map_or("(no status)", |s| s.as_str()),
        job.secondary_status
            .as_ref()
            .map_or("(no secondary status)", |s| s.as_str())
    )
}

fn training_job(input: &DecisionInput, event_job: &JobFacts) -> Decision {
    let job = input.job.as_ref().unwrap_or(event_job);
    let name = &job.name;
    let state = state_text(job);
    if !input.tags.is_enabled() {
        return Decision::ignore(format!(
            "{name} ({state}): not tagged {}=true; spotcheck never touches jobs that did not opt in",
            keys::ENABLED
        ));
    }
    if let Some(current) = &input.job {
        if current.name != event_job.name {
            return Decision::ignore(format!(
                "the event is about {} but the DescribeTrainingJob given is for {}; nothing decided",
                event_job.name, current.name
            ));
        }
        if let Some(why) = staleness(event_job, current) {
            return Decision::ignore(format!(
                "{name}: stale event: {why}; the event for the current state decides"
            ));
        }
    }
    let Some(status) = &job.status else {
        return Decision::ignore(format!("{name}: no TrainingJobStatus; nothing to decide"));
    };
    let secondary = job.secondary_status.as_ref();
    match status {
        TrainingJobStatus::InProgress if secondary == Some(&SecondaryStatus::Interrupted) => {
            let interruptions = job.interruptions().max(1);
            let lineage_interruptions = input.lineage.interruptions.saturating_add(interruptions);
            Decision::record(
                Record::Interruption {
                    job_name: name.clone(),
                    interruptions,
                    lineage_interruptions,
                },
                format!(
                    "{name} ({state}): spot interruption {interruptions} of this job \
                     ({lineage_interruptions} in lineage {}); SageMaker restarts it itself \
                     within MaxWaitTimeInSeconds, so it is only recorded",
                    input.lineage.root
                ),
            )
        }
        TrainingJobStatus::InProgress => Decision::ignore(format!(
            "{name} ({state}): running; nothing to do until it ends"
        )),
        TrainingJobStatus::Stopping => Decision::ignore(format!(
            "{name} ({state}): stopping; the final Stopped event decides"
        )),
        TrainingJobStatus::Completed => {
            let lineage = &input.lineage;
            let ends_lineage = lineage.attempt > 1 || input.tags.get(keys::ROOT).is_some();
            let scope = if ends_lineage {
                format!(
                    " and for lineage {} ({} attempts), which it ends",
                    lineage.root, lineage.attempt
                )
            } else {
                String::new()
            };
            Decision::record(
                Record::Savings {
                    job_name: name.clone(),
                    root: lineage.root.clone(),
                    attempt: lineage.attempt,
                    ends_lineage,
                },
                format!("{name} ({state}): completed; record savings for the job{scope}"),
            )
        }
        TrainingJobStatus::Stopped => match secondary {
            Some(SecondaryStatus::Stopped) => Decision::record(
                Record::UserStopped {
                    job_name: name.clone(),
                },
                format!(
                    "{name} ({state}): stopped by the user (StopTrainingJob); a user's stop is \
                     never relaunched"
                ),
            ),
            Some(SecondaryStatus::MaxWaitTimeExceeded) if job.reached_training() => {
                recover(input, job, RelaunchCause::SpotWaitExceeded)
            }
            Some(SecondaryStatus::MaxWaitTimeExceeded) => {
                recover(input, job, RelaunchCause::SpotCapacityNeverArrived)
            }
            Some(SecondaryStatus::MaxRuntimeExceeded) => {
                recover(input, job, RelaunchCause::RuntimeCapReached)
            }
            _ => Decision::ignore(format!(
                "{name} ({state}): not a stop spotcheck recovers from (only MaxWaitTimeExceeded \
                 and MaxRuntimeExceeded are; this may be a user's stop, which is never relaunched)"
            )),
        },
        TrainingJobStatus::Failed => match classify_failure(job.failure_reason.as_deref()) {
            FailureClass::Capacity => recover(input, job, RelaunchCause::CapacityFailure),
            FailureClass::InternalError => recover(input, job, RelaunchCause::InternalError),
            FailureClass::UserError | FailureClass::Unclassified => {
                recover(input, job, RelaunchCause::UserError)
            }
        },
        TrainingJobStatus::Unknown(text) => Decision::ignore(format!(
            "{name}: unknown TrainingJobStatus {text:?} ({state}); not acting on a state this \
             version does not know"
        )),
    }
}

/// Why the event no longer describes the job, if it does not: then the engine ignores it, and
/// a shell can skip gathering inputs (checkpoint validation) for it.
///
/// Staleness is about status. A finished job (Completed, Failed, Stopped) never changes
/// status again, but SageMaker keeps touching it — warm pools, debugger and profiler rule
/// statuses, the model upload — so its `LastModifiedTime` moves long after the last state
/// change, and a late delivery (a DLQ redrive can come a day later) of the event for that state
/// is as good as a timely one. Only for a running job does a newer `LastModifiedTime` mean that
/// the state moved on (e.g. restarted after the interruption the event reports).
pub fn staleness(event: &JobFacts, current: &JobFacts) -> Option<String> {
    let moved_on = || {
        Some(format!(
            "it says {} but DescribeTrainingJob says {} now",
            state_text(event),
            state_text(current)
        ))
    };
    if let (Some(seen), Some(now)) = (&event.status, &current.status) {
        if seen != now {
            return moved_on();
        }
    }
    if let (Some(seen), Some(now)) = (&event.secondary_status, &current.secondary_status) {
        if seen != now {
            return moved_on();
        }
    }
    if current
        .status
        .as_ref()
        .is_some_and(TrainingJobStatus::is_final)
    {
        return None;
    }
    if let (Some(seen), Some(now)) = (event.last_modified_time, current.last_modified_time) {
        if now > seen {
            return Some(format!(
                "its LastModifiedTime {seen} is older than DescribeTrainingJob's {now}"
            ));
        }
    }
    None
}

fn give_up(input: &DecisionInput, job: &JobFacts, cause: GiveUpCause, reason: String) -> Decision {
    Decision {
        action: Action::GiveUp(GiveUp {
            job_name: job.name.clone(),
            root: input.lineage.root.clone(),
            attempt: input.lineage.attempt,
            cause,
        }),
        reason,
        event_key: None,
    }
}

fn step_text(step: Option<u64>) -> String {
    step.map_or_else(|| "none".to_owned(), |s| s.to_string())
}

/// Rows R1–R11 of the module doc.
fn recover(input: &DecisionInput, job: &JobFacts, cause: RelaunchCause) -> Decision {
    let lineage = &input.lineage;
    let checkpoints = &input.checkpoints;
    let what = format!("{} ({}): {}", job.name, state_text(job), cause.describe());
    let policy = match input.policy.with_tag_overrides(&input.tags) {
        Ok(policy) => policy,
        Err(e) => {
            return give_up(
                input,
                job,
                GiveUpCause::InvalidPolicy,
                format!("{what}; not relaunching because the job's policy is invalid: {e}"),
            )
        }
    };

    let judged = checkpoints.is_judged();
    let step = checkpoints.latest_valid_step;
    let progressed = step > lineage.resume_step;
    // Waiting for capacity is not crashing, and checkpoints that could not be judged say
    // nothing about progress: either way the count neither grows nor resets.
    let stalled = if !job.reached_training() || !judged {
        lineage.stalled_attempts
    } else if progressed {
        0
    } else {
        lineage.stalled_attempts.saturating_add(1)
    };
    let progress_text = format!(
        "latest valid checkpoint step {}, this attempt resumed from {}",
        step_text(step),
        step_text(lineage.resume_step)
    );
    if stalled >= policy.crash_loop_attempts {
        return give_up(
            input,
            job,
            GiveUpCause::CrashLoop,
            format!(
                "{what}; crash loop: {stalled} consecutive attempt(s) trained without checkpoint \
                 progress ({progress_text}); policy crash_loop_attempts = {}",
                policy.crash_loop_attempts
            ),
        );
    }
    if cause == RelaunchCause::RuntimeCapReached {
        if !policy.relaunch_after_max_runtime {
            return give_up(
                input,
                job,
                GiveUpCause::RuntimeBudgetSpent,
                format!(
                    "{what}; MaxRuntimeInSeconds is the lineage's runtime budget ({} s used), \
                     and relaunching past it is opt-in (policy relaunch_after_max_runtime = \
                     false)",
                    lineage
                        .runtime_used
                        .saturating_add(job.training_time_seconds.unwrap_or(0))
                ),
            );
        }
        if checkpoints.finished {
            return Decision::ignore(format!(
                "{what}; but the newest valid checkpoint marks training finished, so there is \
                 nothing to continue"
            ));
        }
        if judged && !progressed {
            return give_up(
                input,
                job,
                GiveUpCause::NoProgressPastRuntimeCap,
                format!(
                    "{what}; no checkpoint progress in this attempt ({progress_text}), so \
                     continuing past the runtime cap would repeat the same work"
                ),
            );
        }
    }
    if cause.is_user_error() && lineage.error_retries >= policy.retries_on_user_error {
        let unclassified = match classify_failure(job.failure_reason.as_deref()) {
            FailureClass::Unclassified => {
                " (unrecognised failure reason, treated as the job's own)"
            }
            _ => "",
        };
        return give_up(
            input,
            job,
            GiveUpCause::UserError,
            format!(
                "{what}{unclassified}; {} of {} retries on user errors used (policy \
                 retries_on_user_error; preemption recoveries are counted apart)",
                lineage.error_retries, policy.retries_on_user_error
            ),
        );
    }
    if lineage.attempt >= policy.max_attempts {
        return give_up(
            input,
            job,
            GiveUpCause::AttemptsExhausted,
            format!(
                "{what}; attempt {} was the last allowed (policy max_attempts = {})",
                lineage.attempt, policy.max_attempts
            ),
        );
    }
    let budget = match runtime_budget(job, lineage, cause) {
        Ok(budget) => budget,
        Err(reason) => {
            return give_up(
                input,
                job,
                GiveUpCause::RuntimeBudgetSpent,
                format!("{what}; {reason}"),
            )
        }
    };

    let corrupt = if checkpoints.any_corrupt {
        " (corrupt checkpoints were found and are skipped)"
    } else {
        ""
    };
    let from_checkpoint = job.checkpoint_uri().and(step);
    let checkpoint_text = match (job.checkpoint_uri(), step, checkpoints.validation) {
        (Some(_), Some(s), _) => format!("resuming from checkpoint step {s}{corrupt}"),
        (Some(_), None, Validation::UnknownFormat) => "its checkpoints are in a format spotcheck \
             does not know (no spotcheck manifest), so they are not judged: the relaunch keeps \
             the CheckpointConfig and the job's own code resumes from them"
            .to_owned(),
        (Some(_), None, Validation::Unavailable) => "its checkpoints could not be validated, so \
             the relaunch keeps the CheckpointConfig and the job resumes from whatever it finds \
             there"
            .to_owned(),
        (uri, _, _) => {
            let why = if uri.is_none() {
                "the job has no CheckpointConfig"
            } else {
                "no valid checkpoint"
            };
            match policy.without_checkpoint {
                WithoutCheckpoint::GiveUp => {
                    return give_up(
                        input,
                        job,
                        GiveUpCause::NoCheckpoint,
                        format!("{what}; {why}{corrupt} and policy without_checkpoint = give-up"),
                    )
                }
                WithoutCheckpoint::RestartFromScratch => format!(
                    "{why}{corrupt}, so restarting from scratch (policy without_checkpoint = \
                     restart-from-scratch)"
                ),
            }
        }
    };

    let (instance_type, placement_text) = placement(
        job.instance_type.as_deref(),
        &policy.instance_ladder,
        cause.advances_ladder(),
    );
    if let Some(t) = instance_type
        .as_deref()
        .filter(|t| !policy.permits_instance_type(t))
    {
        return give_up(
            input,
            job,
            GiveUpCause::NotPermitted,
            format!(
                "{what}; not relaunching on {t}: the operator allows only {} \
                 (allowed_instance_types)",
                policy.allowed_instance_types.join(",")
            ),
        );
    }
    // Spot capacity that never arrived is as much a strike against spot as an interruption.
    let never_arrived = u32::from(cause == RelaunchCause::SpotCapacityNeverArrived);
    let interruptions = lineage
        .interruptions
        .saturating_add(job.interruptions())
        .saturating_add(never_arrived);
    let (spot, market_text) = market(job, &policy, interruptions, input.now);
    if !spot && !policy.allow_on_demand {
        return give_up(
            input,
            job,
            GiveUpCause::NotPermitted,
            format!(
                "{what}; the relaunch would run {market_text}, but the operator does not allow \
                 on-demand relaunches (allow_on_demand = false)"
            ),
        );
    }
    let max_runtime_seconds = budget.max_runtime_seconds;
    let max_wait_seconds = if spot {
        match (
            policy.max_wait_seconds.or(job.max_wait_seconds),
            max_runtime_seconds,
        ) {
            (Some(wait), Some(runtime)) if wait < runtime => Some(runtime),
            (wait, _) => wait,
        }
    } else {
        None
    };

    let attempt = lineage.attempt + 1;
    let job_name = naming::relaunch_name(&lineage.root, attempt);
    let error_retries = lineage
        .error_retries
        .saturating_add(u32::from(cause.is_user_error()));
    let mut tags: Tags = input
        .tags
        .iter()
        .filter(|(k, _)| !k.starts_with("aws:") && !keys::LINEAGE.contains(k))
        .collect();
    tags.insert(keys::ENABLED, "true");
    tags.insert(keys::ROOT, lineage.root.as_str());
    tags.insert(keys::ATTEMPT, attempt.to_string());
    tags.insert(keys::PARENT, job.name.as_str());
    tags.insert(keys::INTERRUPTIONS, interruptions.to_string());
    tags.insert(keys::ERROR_RETRIES, error_retries.to_string());
    tags.insert(keys::RESUME_STEP, step_text(from_checkpoint));
    tags.insert(keys::STALLED, stalled.to_string());
    tags.insert(keys::RUNTIME_USED, budget.used.to_string());

    let retries = if cause.is_user_error() {
        format!(
            "; user-error retry {error_retries} of {}",
            policy.retries_on_user_error
        )
    } else {
        String::new()
    };
    let reason = format!(
        "{what}; relaunching as {job_name} (attempt {attempt} of {}{retries}) {placement_text}, \
         {market_text}, {}, {checkpoint_text}",
        policy.max_attempts, budget.text
    );
    Decision {
        action: Action::Relaunch(RelaunchPlan {
            job_name,
            instance_type,
            spot,
            from_checkpoint,
            max_wait_seconds,
            max_runtime_seconds,
            parent: job.name.clone(),
            root: lineage.root.clone(),
            attempt,
            cause,
            tags,
        }),
        reason,
        event_key: None,
    }
}

/// The relaunch's share of the lineage's runtime budget.
struct Budget {
    /// `MaxRuntimeInSeconds` of the relaunch (`None`: the parent's, unknown here).
    max_runtime_seconds: Option<u64>,
    /// `spotcheck:runtime-used` of the relaunch.
    used: u64,
    /// Why, for the reason.
    text: String,
}

/// The budget is the root's `MaxRuntimeInSeconds`; each relaunch got what was left of it, so
/// the job's own `MaxRuntimeInSeconds` is what was left when it started and what it used is
/// its `TrainingTimeInSeconds`. After MaxRuntimeExceeded (opted in) a fresh budget starts.
fn runtime_budget(
    job: &JobFacts,
    lineage: &Lineage,
    cause: RelaunchCause,
) -> Result<Budget, String> {
    let Some(cap) = job.max_runtime_seconds else {
        return Ok(Budget {
            max_runtime_seconds: None,
            used: lineage.runtime_used,
            text: "with the job's own MaxRuntimeInSeconds".to_owned(),
        });
    };
    let budget = cap.saturating_add(lineage.runtime_used);
    if cause == RelaunchCause::RuntimeCapReached {
        return Ok(Budget {
            max_runtime_seconds: Some(budget),
            used: 0,
            text: format!(
                "with a fresh runtime budget of {budget} s (policy relaunch_after_max_runtime)"
            ),
        });
    }
    let this = job.training_time_seconds.unwrap_or(0);
    let used = lineage.runtime_used.saturating_add(this);
    match cap.checked_sub(this).filter(|left| *left > 0) {
        Some(left) => Ok(Budget {
            max_runtime_seconds: Some(left),
            used,
            text: format!(
                "with MaxRuntimeInSeconds {left} (the lineage used {used} s of its {budget} s \
                 runtime budget)"
            ),
        }),
        None => Err(format!(
            "the lineage used {used} s of its {budget} s runtime budget (MaxRuntimeInSeconds), \
             nothing is left for a relaunch"
        )),
    }
}

/// The instance type of the relaunch, and why.
fn placement(current: Option<&str>, ladder: &[String], advance: bool) -> (Option<String>, String) {
    let n = ladder.len();
    let own = current.map(str::to_owned);
    let own_text = current.unwrap_or("the job's instance type");
    match current.and_then(|c| ladder.iter().position(|t| t == c)) {
        _ if ladder.is_empty() => (own, format!("on {own_text} (no instance ladder)")),
        None => (
            own,
            format!("on {own_text} (not on the instance ladder, which therefore does not apply)"),
        ),
        Some(i) if !advance => (
            own,
            format!("on {own_text} (same type, ladder rung {} of {n})", i + 1),
        ),
        Some(i) if i + 1 < n => (
            Some(ladder[i + 1].clone()),
            format!(
                "on {} (capacity shortage: ladder rung {} of {n}, after {own_text})",
                ladder[i + 1],
                i + 2
            ),
        ),
        Some(_) => (
            own,
            format!("on {own_text} (capacity shortage, but already on the last ladder rung)"),
        ),
    }
}

/// Spot or on-demand for the relaunch, and why.
fn market(job: &JobFacts, policy: &Policy, interruptions: u32, now: Timestamp) -> (bool, String) {
    // Describe always says; an event detail may not, so infer it from spot-only evidence.
    let was_spot = job.managed_spot.unwrap_or(
        job.max_wait_seconds.is_some()
            || job.interruptions() > 0
            || job.secondary_status == Some(SecondaryStatus::MaxWaitTimeExceeded),
    );
    if !was_spot {
        return (false, "on-demand as before".to_owned());
    }
    if let Some(limit) = policy.on_demand_after_interruptions {
        if interruptions >= limit {
            return (
                false,
                format!(
                    "on-demand because the lineage saw {interruptions} spot interruption(s) \
                     (policy on_demand_after_interruptions = {limit})"
                ),
            );
        }
    }
    if let (Some(within), Some(deadline)) = (
        policy.on_demand_when_deadline_within_seconds,
        policy.deadline,
    ) {
        if deadline <= now.plus_seconds(within) {
            return (
                false,
                format!(
                    "on-demand because the deadline {deadline} is {} s away (policy \
                     on_demand_when_deadline_within_seconds = {within})",
                    now.seconds_until(deadline)
                ),
            );
        }
    }
    (true, "on spot".to_owned())
}
