//! Decisions for training on your own EC2 spot instances (the pure part).
//!
//! Owns what to do about an "EC2 Spot Instance Interruption Warning" or an "EC2 Instance
//! Rebalance Recommendation", given the instance's tags:
//!
//! | Instance tags / signal | Decision |
//! |---|---|
//! | no `spotcheck:run` | Ignore: not a spotcheck-managed run |
//! | rebalance recommendation | Record, advisory: it is early and noisy, so nothing else |
//! | interruption, `terminate`, `spotcheck:continue-on` set | Record + a [`ContinuationPlan`] named from the run and the instance |
//! | interruption, `terminate`, no `continue-on` | Record |
//! | interruption, `stop` / `hibernate` / absent / unknown action | Record; no continuation, because a stopped or hibernated instance comes back with its volumes and would run twice |
//!
//! A planned continuation is then gated by what the shell's validation of the run's checkpoints
//! found ([`gate_continuation`]), with the same `without_checkpoint` policy as a SageMaker
//! relaunch:
//!
//! | Checkpoints | Verdict |
//! |---|---|
//! | newest valid checkpoint marks training finished | [`ContinuationVerdict::Finished`]: nothing left to continue |
//! | a valid checkpoint | continue from its step |
//! | could not be validated (denied, not `s3://`) | continue; the trainer resumes from the newest valid one it finds |
//! | none valid, or no `spotcheck:checkpoint-uri` | policy: restart from scratch, or give up |
//! | an invalid `spotcheck:*` policy tag | give up (as for a SageMaker job) |
//!
//! The checkpoint on the instance itself is the trainer's job (it polls IMDS); this module only
//! plans. It never calls AWS.

use serde::Serialize;

use crate::checkpoint::CheckpointSummary;
use crate::decision::{Decision, GiveUp, GiveUpCause, Record};
use crate::naming;
use crate::plan::ContinuationPlan;
use crate::policy::{Policy, WithoutCheckpoint};
use crate::status::SpotAction;
use crate::tags::{keys, Tags};

/// The payload of [`Record::InstanceInterruption`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstanceInterruption {
    /// The instance (from the event's `detail`, not its ARN).
    pub instance_id: String,
    /// The run it belongs to (`spotcheck:run`).
    pub run: String,
    /// `instance-action` of a warning; `None` for a rebalance recommendation or when absent.
    pub action: Option<SpotAction>,
    /// `true` for a rebalance recommendation: no interruption is certain.
    pub advisory: bool,
    /// `spotcheck:checkpoint-uri`, if tagged.
    pub checkpoint_uri: Option<String>,
    /// Where and under which name to continue the run, when the run asks for it.
    pub continuation: Option<ContinuationPlan>,
}

fn run_of(tags: &Tags) -> Option<&str> {
    tags.get(keys::RUN).map(str::trim).filter(|r| !r.is_empty())
}

fn tag_text(tags: &Tags, key: &str) -> Option<String> {
    tags.get(key)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

fn not_managed(instance_id: &str) -> Decision {
    Decision::ignore(format!(
        "instance {instance_id} has no {} tag: not a spotcheck-managed run",
        keys::RUN
    ))
}

/// A two-minute interruption warning for `instance_id`.
pub(crate) fn interruption(
    instance_id: &str,
    action: Option<&SpotAction>,
    tags: &Tags,
) -> Decision {
    let Some(run) = run_of(tags) else {
        return not_managed(instance_id);
    };
    let action_text = action.map_or("(no action given)", SpotAction::as_str);
    let checkpoint_uri = tag_text(tags, keys::CHECKPOINT_URI);
    let continue_on = tag_text(tags, keys::CONTINUE_ON);
    let (continuation, plan_text) = match (action, continue_on) {
        (Some(SpotAction::Terminate), Some(continue_on)) => {
            let name = naming::continuation_name(run, instance_id);
            let text = format!(
                "; continuing run {run} as {name} on {continue_on} (from {})",
                checkpoint_uri
                    .as_deref()
                    .unwrap_or("scratch: no spotcheck:checkpoint-uri tag")
            );
            let plan = ContinuationPlan {
                name,
                run: run.to_owned(),
                instance_id: instance_id.to_owned(),
                continue_on,
                checkpoint_uri: checkpoint_uri.clone(),
            };
            (Some(plan), text)
        }
        (Some(SpotAction::Terminate), None) => {
            (None, format!("; the run names no {}", keys::CONTINUE_ON))
        }
        (_, Some(_)) => (
            None,
            format!(
                "; no continuation for action {action_text}: only a terminated instance is gone \
                 for good, a stopped or hibernated one comes back and would run twice"
            ),
        ),
        (_, None) => (None, String::new()),
    };
    Decision::record(
        Record::InstanceInterruption(InstanceInterruption {
            instance_id: instance_id.to_owned(),
            run: run.to_owned(),
            action: action.cloned(),
            advisory: false,
            checkpoint_uri,
            continuation,
        }),
        format!(
            "instance {instance_id} of run {run}: spot interruption warning ({action_text}); \
             recorded{plan_text}"
        ),
    )
}

/// A rebalance recommendation for `instance_id`.
pub(crate) fn rebalance(instance_id: &str, tags: &Tags) -> Decision {
    let Some(run) = run_of(tags) else {
        return not_managed(instance_id);
    };
    Decision::record(
        Record::InstanceInterruption(InstanceInterruption {
            instance_id: instance_id.to_owned(),
            run: run.to_owned(),
            action: None,
            advisory: true,
            checkpoint_uri: tag_text(tags, keys::CHECKPOINT_URI),
            continuation: None,
        }),
        format!(
            "instance {instance_id} of run {run}: rebalance recommendation, advisory only (often \
             hours early and often not followed by an interruption); recorded, the run keeps going"
        ),
    )
}

/// Whether a planned continuation goes ahead (see the module doc's second table).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "verdict")]
pub enum ContinuationVerdict {
    /// Create the continuation; it resumes from `from_step` (`None`: from scratch, or from
    /// whatever the trainer finds when validation was not possible).
    Continue {
        /// The newest valid checkpoint's step.
        from_step: Option<u64>,
        /// Why, for the decision line.
        reason: String,
    },
    /// The newest valid checkpoint marks training finished: a continuation would redo nothing.
    Finished {
        /// Why, for the decision line.
        reason: String,
    },
    /// Recovery of the run stops here.
    GiveUp {
        /// Recorded and announced like a SageMaker give-up (`job_name` is the continuation that
        /// is not created, `root` the run).
        give_up: GiveUp,
        /// Why, for the decision line and the "Recovery Gave Up" event.
        reason: String,
    },
}

/// Gates `plan` on the validation of the run's checkpoints: `checkpoints` is `None` when the
/// run has a checkpoint URI that could not be validated. `tags` are the instance's (they may
/// override the policy, as a job's tags do).
pub fn gate_continuation(
    plan: &ContinuationPlan,
    checkpoints: Option<&CheckpointSummary>,
    policy: &Policy,
    tags: &Tags,
) -> ContinuationVerdict {
    let run = &plan.run;
    let give_up = |cause, reason: String| ContinuationVerdict::GiveUp {
        give_up: GiveUp {
            job_name: plan.name.clone(),
            root: run.clone(),
            attempt: 1,
            cause,
        },
        reason,
    };
    let policy = match policy.with_tag_overrides(tags) {
        Ok(policy) => policy,
        Err(e) => {
            return give_up(
                GiveUpCause::InvalidPolicy,
                format!("run {run}: not continued: {e}"),
            )
        }
    };
    let why_none = match (&plan.checkpoint_uri, checkpoints) {
        (None, _) => format!("the run has no {} tag", keys::CHECKPOINT_URI),
        (Some(uri), None) => {
            return ContinuationVerdict::Continue {
                from_step: None,
                reason: format!(
                    "run {run}: continuing as {}; {uri} could not be validated, so the trainer \
                     resumes from the newest valid checkpoint it finds there",
                    plan.name
                ),
            }
        }
        (Some(_), Some(summary)) if summary.finished => {
            return ContinuationVerdict::Finished {
                reason: format!(
                    "run {run}: not continued: its newest valid checkpoint (step {}) marks \
                     training finished",
                    summary
                        .latest_valid_step
                        .map_or_else(|| "?".to_owned(), |s| s.to_string())
                ),
            }
        }
        (Some(_), Some(summary)) => match summary.latest_valid_step {
            Some(step) => {
                return ContinuationVerdict::Continue {
                    from_step: Some(step),
                    reason: format!(
                        "run {run}: continuing as {} from checkpoint step {step}",
                        plan.name
                    ),
                }
            }
            None if summary.any_corrupt => {
                "no checkpoint is valid (corrupt ones were found)".into()
            }
            None => "no checkpoint is valid".into(),
        },
    };
    match policy.without_checkpoint {
        WithoutCheckpoint::GiveUp => give_up(
            GiveUpCause::NoCheckpoint,
            format!("run {run}: not continued: {why_none} and policy without_checkpoint = give-up"),
        ),
        WithoutCheckpoint::RestartFromScratch => ContinuationVerdict::Continue {
            from_step: None,
            reason: format!(
                "run {run}: continuing as {} from scratch: {why_none} (policy \
                 without_checkpoint = restart-from-scratch)",
                plan.name
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(uri: Option<&str>) -> ContinuationPlan {
        ContinuationPlan {
            name: naming::continuation_name("run", "i-1"),
            run: "run".into(),
            instance_id: "i-1".into(),
            continue_on: "s3://t/r.json".into(),
            checkpoint_uri: uri.map(str::to_owned),
        }
    }

    fn summary(step: Option<u64>, corrupt: bool, finished: bool) -> CheckpointSummary {
        CheckpointSummary {
            latest_valid_step: step,
            any_corrupt: corrupt,
            finished,
        }
    }

    fn give_up_policy() -> Policy {
        Policy {
            without_checkpoint: WithoutCheckpoint::GiveUp,
            ..Policy::default()
        }
    }

    #[test]
    fn every_row_of_the_gate() {
        let uri = Some("s3://b/p");
        let none = Tags::new();
        let scratch = Policy::default();
        let strict = give_up_policy();
        let cont = |v: ContinuationVerdict| match v {
            ContinuationVerdict::Continue { from_step, reason } => (from_step, reason),
            other => panic!("not continued: {other:?}"),
        };
        let cause = |v: ContinuationVerdict| match v {
            ContinuationVerdict::GiveUp { give_up, reason } => {
                assert_eq!(give_up.root, "run");
                assert_eq!(give_up.job_name, plan(None).name);
                (give_up.cause, reason)
            }
            other => panic!("not a give-up: {other:?}"),
        };

        let valid = summary(Some(1200), true, false);
        for policy in [&scratch, &strict] {
            let (step, reason) = cont(gate_continuation(&plan(uri), Some(&valid), policy, &none));
            assert_eq!(step, Some(1200));
            assert!(reason.contains("from checkpoint step 1200"), "{reason}");
            // Not validated: continue either way; the trainer looks for itself.
            let (step, reason) = cont(gate_continuation(&plan(uri), None, policy, &none));
            assert_eq!(step, None);
            assert!(reason.contains("could not be validated"), "{reason}");
            // Finished: nothing to continue.
            let done = summary(Some(5000), false, true);
            let verdict = gate_continuation(&plan(uri), Some(&done), policy, &none);
            assert!(
                matches!(&verdict, ContinuationVerdict::Finished { reason } if reason.contains("step 5000")),
                "{verdict:?}"
            );
        }

        let empty = summary(None, false, false);
        let corrupt = summary(None, true, false);
        let (step, reason) = cont(gate_continuation(&plan(uri), Some(&empty), &scratch, &none));
        assert_eq!(step, None);
        assert!(
            reason.contains("from scratch: no checkpoint is valid"),
            "{reason}"
        );
        let (_, reason) = cont(gate_continuation(&plan(None), None, &scratch, &none));
        assert!(
            reason.contains("no spotcheck:checkpoint-uri tag"),
            "{reason}"
        );

        let (c, reason) = cause(gate_continuation(
            &plan(uri),
            Some(&corrupt),
            &strict,
            &none,
        ));
        assert_eq!(c, GiveUpCause::NoCheckpoint);
        assert!(reason.contains("corrupt ones were found"), "{reason}");
        assert!(reason.contains("without_checkpoint = give-up"), "{reason}");
        let (c, _) = cause(gate_continuation(&plan(None), None, &strict, &none));
        assert_eq!(c, GiveUpCause::NoCheckpoint);

        // The instance's tags override the policy, both ways.
        let tagged: Tags = [("spotcheck:without-checkpoint", "give-up")]
            .into_iter()
            .collect();
        let (c, _) = cause(gate_continuation(
            &plan(uri),
            Some(&empty),
            &scratch,
            &tagged,
        ));
        assert_eq!(c, GiveUpCause::NoCheckpoint);
        let lenient: Tags = [("spotcheck:without-checkpoint", "restart-from-scratch")]
            .into_iter()
            .collect();
        let (step, _) = cont(gate_continuation(
            &plan(uri),
            Some(&empty),
            &strict,
            &lenient,
        ));
        assert_eq!(step, None);
        let bad: Tags = [("spotcheck:without-checkpoint", "maybe")]
            .into_iter()
            .collect();
        let (c, reason) = cause(gate_continuation(&plan(uri), Some(&valid), &scratch, &bad));
        assert_eq!(c, GiveUpCause::InvalidPolicy);
        assert!(reason.contains("maybe"), "{reason}");
    }
}
