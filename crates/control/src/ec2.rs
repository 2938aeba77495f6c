//! Decisions for training on your own EC2 spot instances (the pure part).
//!
//! Owns what to do about an "EC2 Spot Instance Interruption Warning" or an "EC2 Instance
//! Rebalance Recommendation", given the instance's tags:
//!
//! | Instance tags / signal | Decision |
//! |---|---|
//! | no `spotcheck:run` | Ignore: not a spotcheck-managed run |
//! | rebalance recommendation | Record, advisory: it is early and noisy, so nothing else |
//! | interruption, `terminate`, `spotcheck:continue-on` set | Record + a [`ContinuationPlan`] named from the run and the next generation |
//! | … but `spotcheck:generation` is not a whole number | Record; no continuation (the reason says why) |
//! | interruption, `terminate`, no `continue-on` | Record |
//! | interruption, `stop` / `hibernate` / absent / unknown action | Record; no continuation, because a stopped or hibernated instance comes back with its volumes and would run twice |
//!
//! A planned continuation is then gated by what the shell's validation of the run's checkpoints
//! found ([`gate_continuation`]), with the same `without_checkpoint` policy as a SageMaker
//! relaunch:
//!
//! | Checkpoints | Verdict |
//! |---|---|
//! | an invalid `spotcheck:*` policy tag, or one beyond the operator's ceilings | give up (as for a SageMaker job) |
//! | `spotcheck:checkpoint-uri` outside the stack's checkpoint location ([`CheckpointScope`]) | give up, not permitted: the tag would point a job run with the training role at any bucket |
//! | newest valid checkpoint marks training finished | [`ContinuationVerdict::Finished`]: nothing left to continue |
//! | a valid checkpoint | continue from its step |
//! | could not be validated (denied, not `s3://`) | continue; the trainer resumes from the newest valid one it finds |
//! | checkpoints in an unknown format (no spotcheck manifest) | continue; the trainer resumes from them |
//! | none valid, or no `spotcheck:checkpoint-uri` | policy: restart from scratch, or give up |
//!
//! Then, once the request template is read, [`refuse_instance_type`]: a template whose
//! instance type the operator does not allow is a give-up too.
//!
//! **Generations.** Every instance of a run carries the same `spotcheck:generation` (absent =
//! 0), so when several are reclaimed together, or an Auto Scaling group's replacement is
//! reclaimed later, every warning plans the same continuation, named from the run and
//! generation + 1: the first creates it, the others find it (CreateTrainingJob's
//! `ResourceInUse`, then [`ContinuationPlan::check_existing`]). The continuation job is tagged
//! with its generation, and a subscriber that launches instances for a planned continuation tags
//! them with the plan's, so a later reclaim of the continued run plans the next generation. The
//! alternatives were rejected: the newest checkpoint step races with the instances' own final
//! checkpoints (two warnings seconds apart can see different steps, and so name two jobs), and a
//! time bucket splits a reclaim that straddles a bucket boundary.
//!
//! The checkpoint on the instance itself is the trainer's job (it polls IMDS); this module only
//! plans. It never calls AWS.

use serde::Serialize;

use crate::checkpoint::{CheckpointSummary, Validation};
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

/// Where the stack lets spotcheck read checkpoints (`CheckpointBucket`/`CheckpointPrefix`):
/// an EC2 run's `spotcheck:checkpoint-uri` must lie under it, because the continuation job
/// syncs checkpoints there with the training role's access.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckpointScope {
    /// The bucket.
    pub bucket: String,
    /// The key prefix (empty: the whole bucket). Compared as a plain string prefix, as the IAM
    /// grant's `CheckpointPrefix*` is.
    pub prefix: String,
}

impl CheckpointScope {
    /// Whether `uri` (`s3://bucket/key…`) lies under this scope. Anything not `s3://` does not.
    pub fn contains(&self, uri: &str) -> bool {
        let Some(rest) = uri.strip_prefix("s3://") else {
            return false;
        };
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        bucket == self.bucket
            && key.starts_with(&self.prefix)
            && !key.split('/').any(|segment| segment == "..")
    }
}

impl std::fmt::Display for CheckpointScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
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
    let generation = match tag_text(tags, keys::GENERATION) {
        None => Ok(0),
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|g| *g < u32::MAX)
            .ok_or(text),
    };
    let (continuation, plan_text) = match (action, continue_on, generation) {
        (Some(SpotAction::Terminate), Some(_), Err(bad)) => (
            None,
            format!(
                "; not continued: {} = {bad:?} is not a whole number, so the continuation \
                 cannot be named",
                keys::GENERATION
            ),
        ),
        (Some(SpotAction::Terminate), Some(continue_on), Ok(generation)) => {
            let generation = generation + 1;
            let name = naming::continuation_name(run, generation);
            let text = format!(
                "; continuing run {run} as {name} (generation {generation}) on {continue_on} \
                 (from {})",
                checkpoint_uri
                    .as_deref()
                    .unwrap_or("scratch: no spotcheck:checkpoint-uri tag")
            );
            let plan = ContinuationPlan {
                name,
                run: run.to_owned(),
                generation,
                instance_id: instance_id.to_owned(),
                continue_on,
                checkpoint_uri: checkpoint_uri.clone(),
            };
            (Some(plan), text)
        }
        (Some(SpotAction::Terminate), None, _) => {
            (None, format!("; the run names no {}", keys::CONTINUE_ON))
        }
        (_, Some(_), _) => (
            None,
            format!(
                "; no continuation for action {action_text}: only a terminated instance is gone \
                 for good, a stopped or hibernated one comes back and would run twice"
            ),
        ),
        (_, None, _) => (None, String::new()),
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

fn refused(plan: &ContinuationPlan, cause: GiveUpCause, reason: String) -> ContinuationVerdict {
    ContinuationVerdict::GiveUp {
        give_up: GiveUp {
            job_name: plan.name.clone(),
            root: plan.run.clone(),
            attempt: 1,
            cause,
        },
        reason,
    }
}

/// Gates `plan` on the operator's policy and the validation of the run's checkpoints
/// (`checkpoints` is `None` when the run has no checkpoint URI or it was not validated).
/// `tags` are the instance's (they may tighten the policy, as a job's tags do); `scope` is the
/// stack's checkpoint location, when configured.
pub fn gate_continuation(
    plan: &ContinuationPlan,
    checkpoints: Option<&CheckpointSummary>,
    policy: &Policy,
    tags: &Tags,
    scope: Option<&CheckpointScope>,
) -> ContinuationVerdict {
    let run = &plan.run;
    let give_up = |cause, reason: String| refused(plan, cause, reason);
    let policy = match policy.with_tag_overrides(tags) {
        Ok(policy) => policy,
        Err(e) => {
            return give_up(
                GiveUpCause::InvalidPolicy,
                format!("run {run}: not continued: {e}"),
            )
        }
    };
    if let (Some(uri), Some(scope)) = (&plan.checkpoint_uri, scope) {
        if !scope.contains(uri) {
            return give_up(
                GiveUpCause::NotPermitted,
                format!(
                    "run {run}: not continued: its {} {uri} lies outside the stack's checkpoint \
                     location {scope}",
                    keys::CHECKPOINT_URI
                ),
            );
        }
    }
    let not_judged = checkpoints
        .map(|c| c.validation)
        .filter(|v| *v != Validation::Judged);
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
        (Some(uri), Some(_)) if not_judged.is_some() => {
            let what = match not_judged {
                Some(Validation::UnknownFormat) => {
                    "holds checkpoints in a format spotcheck does not know (no spotcheck manifest)"
                }
                _ => "could not be validated",
            };
            return ContinuationVerdict::Continue {
                from_step: None,
                reason: format!(
                    "run {run}: continuing as {}; {uri} {what}, so the trainer resumes from \
                     whatever it finds there",
                    plan.name
                ),
            };
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

/// The give-up for a continuation whose request template runs on an instance type the
/// operator does not allow (`None`: allowed). Checked before CreateTrainingJob, which IAM
/// would refuse anyway (the grant is conditioned on `sagemaker:InstanceTypes`).
pub fn refuse_instance_type(
    plan: &ContinuationPlan,
    instance_type: &str,
    policy: &Policy,
) -> Option<ContinuationVerdict> {
    (!policy.permits_instance_type(instance_type)).then(|| {
        refused(
            plan,
            GiveUpCause::NotPermitted,
            format!(
                "run {}: not continued on {instance_type}: the operator allows only {} \
                 (allowed_instance_types)",
                plan.run,
                policy.allowed_instance_types.join(",")
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(uri: Option<&str>) -> ContinuationPlan {
        ContinuationPlan {
            name: naming::continuation_name("run", 1),
            run: "run".into(),
            generation: 1,
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
            validation: Validation::Judged,
        }
    }

    fn gate(
        plan: &ContinuationPlan,
        checkpoints: Option<&CheckpointSummary>,
        policy: &Policy,
        tags: &Tags,
    ) -> ContinuationVerdict {
        gate_continuation(plan, checkpoints, policy, tags, None)
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
            let (step, reason) = cont(gate(&plan(uri), Some(&valid), policy, &none));
            assert_eq!(step, Some(1200));
            assert!(reason.contains("from checkpoint step 1200"), "{reason}");
            // Not validated: continue either way; the trainer looks for itself.
            let (step, reason) = cont(gate(&plan(uri), None, policy, &none));
            assert_eq!(step, None);
            assert!(reason.contains("could not be validated"), "{reason}");
            // Finished: nothing to continue.
            let done = summary(Some(5000), false, true);
            let verdict = gate(&plan(uri), Some(&done), policy, &none);
            assert!(
                matches!(&verdict, ContinuationVerdict::Finished { reason } if reason.contains("step 5000")),
                "{verdict:?}"
            );
        }

        let empty = summary(None, false, false);
        let corrupt = summary(None, true, false);
        let (step, reason) = cont(gate(&plan(uri), Some(&empty), &scratch, &none));
        assert_eq!(step, None);
        assert!(
            reason.contains("from scratch: no checkpoint is valid"),
            "{reason}"
        );
        let (_, reason) = cont(gate(&plan(None), None, &scratch, &none));
        assert!(
            reason.contains("no spotcheck:checkpoint-uri tag"),
            "{reason}"
        );

        let (c, reason) = cause(gate(&plan(uri), Some(&corrupt), &strict, &none));
        assert_eq!(c, GiveUpCause::NoCheckpoint);
        assert!(reason.contains("corrupt ones were found"), "{reason}");
        assert!(reason.contains("without_checkpoint = give-up"), "{reason}");
        let (c, _) = cause(gate(&plan(None), None, &strict, &none));
        assert_eq!(c, GiveUpCause::NoCheckpoint);

        // The instance's tags set the policy within the operator's ceilings, both ways.
        let tagged: Tags = [("spotcheck:without-checkpoint", "give-up")]
            .into_iter()
            .collect();
        let (c, _) = cause(gate(&plan(uri), Some(&empty), &scratch, &tagged));
        assert_eq!(c, GiveUpCause::NoCheckpoint);
        let lenient: Tags = [("spotcheck:without-checkpoint", "restart-from-scratch")]
            .into_iter()
            .collect();
        let (step, _) = cont(gate(&plan(uri), Some(&empty), &strict, &lenient));
        assert_eq!(step, None);
        let bad: Tags = [("spotcheck:without-checkpoint", "maybe")]
            .into_iter()
            .collect();
        let (c, reason) = cause(gate(&plan(uri), Some(&valid), &scratch, &bad));
        assert_eq!(c, GiveUpCause::InvalidPolicy);
        assert!(reason.contains("maybe"), "{reason}");
    }

    /// Regression: an instance's spotcheck:checkpoint-uri could point the continuation at any
    /// bucket the training role can reach.
    #[test]
    fn a_checkpoint_uri_outside_the_stacks_location_is_refused() {
        let scope = CheckpointScope {
            bucket: "ckpt".into(),
            prefix: "runs/".into(),
        };
        assert!(scope.contains("s3://ckpt/runs/llm"));
        assert!(scope.contains("s3://ckpt/runs/"));
        for outside in [
            "s3://ckpt/other/llm",
            "s3://ckpt/run",
            "s3://ckpt-other/runs/llm",
            "s3://ckpt/runs/../other",
            "https://ckpt/runs/llm",
            "ckpt/runs/llm",
        ] {
            assert!(!scope.contains(outside), "{outside}");
        }
        let valid = summary(Some(1200), false, false);
        let inside = gate_continuation(
            &plan(Some("s3://ckpt/runs/llm")),
            Some(&valid),
            &Policy::default(),
            &Tags::new(),
            Some(&scope),
        );
        assert!(matches!(
            inside,
            ContinuationVerdict::Continue {
                from_step: Some(1200),
                ..
            }
        ));
        // Refused whatever the checkpoints say, before anything else.
        for checkpoints in [Some(&valid), None] {
            let verdict = gate_continuation(
                &plan(Some("s3://elsewhere/llm")),
                checkpoints,
                &Policy::default(),
                &Tags::new(),
                Some(&scope),
            );
            match verdict {
                ContinuationVerdict::GiveUp { give_up, reason } => {
                    assert_eq!(give_up.cause, GiveUpCause::NotPermitted);
                    assert!(
                        reason.contains("outside the stack's checkpoint location s3://ckpt/runs/"),
                        "{reason}"
                    );
                }
                other => panic!("not refused: {other:?}"),
            }
        }
    }

    #[test]
    fn checkpoints_spotcheck_cannot_judge_continue_whatever_the_policy() {
        for validation in [Validation::UnknownFormat, Validation::Unavailable] {
            let summary = CheckpointSummary::not_judged(validation);
            let verdict = gate(
                &plan(Some("s3://b/p")),
                Some(&summary),
                &give_up_policy(),
                &Tags::new(),
            );
            assert!(
                matches!(
                    &verdict,
                    ContinuationVerdict::Continue {
                        from_step: None,
                        ..
                    }
                ),
                "{validation:?}: {verdict:?}"
            );
        }
    }

    #[test]
    fn a_generation_names_the_continuation_and_every_instance_of_it_agrees() {
        let tags = |instance_gen: Option<&str>| -> Tags {
            let mut t: Tags = [(keys::RUN, "llm"), (keys::CONTINUE_ON, "s3://t/llm.json")]
                .into_iter()
                .collect();
            if let Some(g) = instance_gen {
                t.insert(keys::GENERATION, g);
            }
            t
        };
        let plan_of = |instance: &str, t: &Tags| match interruption(
            instance,
            Some(&SpotAction::Terminate),
            t,
        )
        .action
        {
            crate::decision::Action::Record(Record::InstanceInterruption(i)) => i.continuation,
            other => panic!("{other:?}"),
        };
        // Two instances of generation 0 (untagged) → one continuation, generation 1.
        let a = plan_of("i-a", &tags(None)).unwrap();
        let b = plan_of("i-b", &tags(Some("0"))).unwrap();
        assert_eq!(a.name, b.name);
        assert_eq!(
            (a.generation, a.name.clone()),
            (1, naming::continuation_name("llm", 1))
        );
        // The continued run's instances (generation 1) → the next one.
        let next = plan_of("i-c", &tags(Some("1"))).unwrap();
        assert_eq!(next.generation, 2);
        assert_ne!(next.name, a.name);
        // A generation that is not a number plans nothing, and says so.
        let bad = interruption("i-d", Some(&SpotAction::Terminate), &tags(Some("two")));
        assert!(
            bad.reason
                .contains("spotcheck:generation = \"two\" is not a whole number"),
            "{}",
            bad.reason
        );
        assert_eq!(plan_of("i-d", &tags(Some("two"))), None);
    }

    #[test]
    fn a_template_on_a_type_the_operator_does_not_allow_is_refused() {
        let policy = Policy {
            allowed_instance_types: vec!["ml.g5.xlarge".into()],
            ..Policy::default()
        };
        assert_eq!(
            refuse_instance_type(&plan(None), "ml.g5.xlarge", &policy),
            None
        );
        assert!(matches!(
            refuse_instance_type(&plan(None), "ml.p5.48xlarge", &policy),
            Some(ContinuationVerdict::GiveUp {
                give_up: GiveUp {
                    cause: GiveUpCause::NotPermitted,
                    ..
                },
                ..
            })
        ));
        assert_eq!(
            refuse_instance_type(&plan(None), "ml.p5.48xlarge", &Policy::default()),
            None
        );
    }
}
