//! The decision table: one row per branch of `decide` (see the `decision` module doc), over the
//! fixture corpus. Each row names the event, the Describe output, the checkpoint summary, extra
//! tags and the policy, and the action it must produce, with a phrase the reason must contain.

use spotcheck_control::decision::Record;
use spotcheck_control::naming::{continuation_name, is_valid_job_name, relaunch_name};
use spotcheck_control::{
    Action, CheckpointSummary, Decision, GiveUpCause, Policy, RelaunchCause, Timestamp, Validation,
    WithoutCheckpoint,
};

use crate::util::{decide_case, input_case, json, now, step, R2, R3, ROOT};

#[derive(Debug)]
enum Expect {
    Ignore,
    Record(&'static str),
    GiveUp(GiveUpCause),
    Relaunch {
        name: &'static str,
        attempt: u32,
        instance_type: &'static str,
        spot: bool,
        from: Option<u64>,
        cause: RelaunchCause,
    },
}

struct Row {
    case: &'static str,
    event: &'static str,
    job: Option<&'static str>,
    checkpoints: CheckpointSummary,
    tags: &'static [(&'static str, &'static str)],
    policy: Policy,
    expect: Expect,
    reason_has: &'static str,
}

fn row(case: &'static str, event: &'static str, job: Option<&'static str>) -> Row {
    Row {
        case,
        event,
        job,
        checkpoints: CheckpointSummary::default(),
        tags: &[],
        policy: Policy::default(),
        expect: Expect::Ignore,
        reason_has: "",
    }
}

impl Row {
    fn step(mut self, s: u64) -> Self {
        self.checkpoints.latest_valid_step = Some(s);
        self
    }
    fn checkpoints(mut self, c: CheckpointSummary) -> Self {
        self.checkpoints = c;
        self
    }
    fn tags(mut self, tags: &'static [(&'static str, &'static str)]) -> Self {
        self.tags = tags;
        self
    }
    fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }
    fn expect(mut self, expect: Expect, reason_has: &'static str) -> Self {
        self.expect = expect;
        self.reason_has = reason_has;
        self
    }
}

const SCRATCH_NAME: &str = "(computed)";

fn rows() -> Vec<Row> {
    use Expect::*;
    vec![
        // 1–4: filters before any status logic.
        row("1 not opted in", "sagemaker-not-enabled", None)
            .expect(Ignore, "not tagged spotcheck:enabled=true"),
        row("2 describe of another job", "sagemaker-stopped-maxwait", Some("describe-completed"))
            .expect(Ignore, "DescribeTrainingJob given is for xgboost-churn-spot"),
        row("3a stale: status moved on", "sagemaker-inprogress-interrupted", Some("describe-stopped-maxwait"))
            .expect(Ignore, "stale event: it says InProgress/Interrupted but DescribeTrainingJob says Stopped/MaxWaitTimeExceeded"),
        // Regression: a finished job's LastModifiedTime moves without a state change (warm
        // pools, rule statuses); the late event for the same state was dropped as stale.
        row("3b late event, same final state, LastModifiedTime moved on", "sagemaker-stopped-maxwait", Some("describe-stopped-maxwait-modified-later"))
            .step(1200)
            .expect(Relaunch { name: R2, attempt: 2, instance_type: "ml.p3.2xlarge", spot: true, from: Some(1200), cause: RelaunchCause::SpotWaitExceeded },
                    "relaunching as resnet50-spot-r2-"),
        row("3c stale: restarted since the interruption", "sagemaker-inprogress-interrupted", Some("describe-inprogress-restarted"))
            .expect(Ignore, "stale event"),
        // 5–8: states that are recorded or waited on.
        row("5 interrupted", "sagemaker-inprogress-interrupted", None)
            .expect(Record("interruption"), "SageMaker restarts it itself"),
        row("6a running", "sagemaker-inprogress-training", None)
            .expect(Ignore, "running; nothing to do"),
        row("6b stopping", "sagemaker-stopping", None)
            .expect(Ignore, "the final Stopped event decides"),
        row("7a completed alone", "sagemaker-completed", Some("describe-completed"))
            .expect(Record("savings"), "record savings for the job"),
        row("7b completed, ends a lineage", "sagemaker-completed-lineage", Some("describe-completed-lineage"))
            .expect(Record("savings"), "for lineage resnet50-spot (3 attempts), which it ends"),
        row("8 user stop", "sagemaker-stopped-user", Some("describe-stopped-user"))
            .step(300)
            .expect(Record("user_stopped"), "never relaunched"),
        // 9–13: recoverable ends.
        row("9a spot lost", "sagemaker-stopped-maxwait", Some("describe-stopped-maxwait"))
            .step(1200)
            .expect(Relaunch { name: R2, attempt: 2, instance_type: "ml.p3.2xlarge", spot: true, from: Some(1200), cause: RelaunchCause::SpotWaitExceeded },
                    "same type, ladder rung 1 of 2"),
        row("9b spot never arrived: next rung", "sagemaker-stopped-maxwait-never-started", Some("describe-stopped-maxwait-never-started"))
            .expect(Relaunch { name: SCRATCH_NAME, attempt: 2, instance_type: "ml.g4dn.12xlarge", spot: true, from: None, cause: RelaunchCause::SpotCapacityNeverArrived },
                    "restarting from scratch (policy without_checkpoint = restart-from-scratch)"),
        row("10a runtime cap, relaunching past it opted in", "sagemaker-stopped-maxruntime", Some("describe-stopped-maxruntime"))
            .step(5000)
            .policy(past_runtime_cap())
            .expect(Relaunch { name: SCRATCH_NAME, attempt: 2, instance_type: "ml.p4d.24xlarge", spot: true, from: Some(5000), cause: RelaunchCause::RuntimeCapReached },
                    "with a fresh runtime budget of 86400 s"),
        // Regression: MaxRuntimeExceeded was relaunched whatever the policy.
        row("10b runtime cap: the budget is spent", "sagemaker-stopped-maxruntime", Some("describe-stopped-maxruntime"))
            .step(5000)
            .expect(GiveUp(GiveUpCause::RuntimeBudgetSpent), "relaunching past it is opt-in"),
        row("10c runtime cap opted in by tag", "sagemaker-stopped-maxruntime", Some("describe-stopped-maxruntime"))
            .step(5000)
            .tags(&[("spotcheck:relaunch-after-max-runtime", "true")])
            .expect(Relaunch { name: SCRATCH_NAME, attempt: 2, instance_type: "ml.p4d.24xlarge", spot: true, from: Some(5000), cause: RelaunchCause::RuntimeCapReached },
                    "fresh runtime budget"),
        row("11 stopped, unknown secondary", "sagemaker-stopped-unknown-secondary", None)
            .expect(Ignore, "not a stop spotcheck recovers from"),
        row("12a capacity: next rung", "sagemaker-failed-capacity", Some("describe-failed-capacity"))
            .step(1200)
            .expect(Relaunch { name: R3, attempt: 3, instance_type: "ml.g5.2xlarge", spot: true, from: Some(1200), cause: RelaunchCause::CapacityFailure },
                    "capacity shortage: ladder rung 2 of 2"),
        row("12b internal error, event only", "sagemaker-failed-internal", None)
            .expect(Relaunch { name: SCRATCH_NAME, attempt: 2, instance_type: "ml.g5.2xlarge", spot: false, from: None, cause: RelaunchCause::InternalError },
                    "the job has no CheckpointConfig"),
        row("13a user error, no retries", "sagemaker-failed-algorithm", Some("describe-failed-algorithm"))
            .step(100)
            .expect(GiveUp(GiveUpCause::UserError), "0 of 0 retries on user errors used"),
        row("13b user error, one retry allowed", "sagemaker-failed-algorithm", Some("describe-failed-algorithm"))
            .step(100)
            .policy(Policy { retries_on_user_error: 1, ..Policy::default() })
            .expect(Relaunch { name: SCRATCH_NAME, attempt: 2, instance_type: "ml.g5.xlarge", spot: true, from: Some(100), cause: RelaunchCause::UserError },
                    "user-error retry 1 of 1"),
        row("13c client error, event only", "sagemaker-failed-client", None)
            .expect(GiveUp(GiveUpCause::UserError), "the job's own error"),
        row("13d user-error budget spent", "sagemaker-failed-algorithm", Some("describe-failed-algorithm"))
            .step(100)
            .tags(&[("spotcheck:error-retries", "1"), ("spotcheck:retries-on-error", "1")])
            .expect(GiveUp(GiveUpCause::UserError), "1 of 1 retries"),
        row("14 unknown status", "sagemaker-unknown-status", None)
            .expect(Ignore, "unknown TrainingJobStatus \"Paused\""),
        // R1–R7: recovery refused.
        row("R1 invalid policy tag", "sagemaker-stopped-maxwait", Some("describe-stopped-maxwait"))
            .step(1200)
            .tags(&[("spotcheck:max-attempts", "lots")])
            .expect(GiveUp(GiveUpCause::InvalidPolicy), "tag spotcheck:max-attempts = \"lots\" is invalid"),
        // Regression: tags overrode the operator's policy whatever they asked for.
        row("R1b a tag beyond the operator's ceiling", "sagemaker-stopped-maxwait", Some("describe-stopped-maxwait"))
            .step(1200)
            .tags(&[("spotcheck:max-attempts", "50")])
            .expect(GiveUp(GiveUpCause::InvalidPolicy), "exceeds the operator's limit: at most 10 attempts"),
        row("R1c a ladder rung the operator does not allow", "sagemaker-failed-capacity", Some("describe-failed-capacity"))
            .step(1200)
            .tags(&[("spotcheck:instance-ladder", "ml.p3.2xlarge,ml.p4d.24xlarge")])
            .policy(Policy { allowed_instance_types: vec!["ml.p3.2xlarge".into(), "ml.g5.2xlarge".into()], ..Policy::default() })
            .expect(GiveUp(GiveUpCause::InvalidPolicy), "ml.p4d.24xlarge is not among the allowed instance types"),
        row("R2a crash loop after a spot loss", "sagemaker-stopped-maxwait", Some("describe-stopped-maxwait"))
            .tags(&[("spotcheck:stalled", "2")])
            .expect(GiveUp(GiveUpCause::CrashLoop), "crash loop: 3 consecutive attempt(s)"),
        row("R2b crash loop beats a user-error retry", "sagemaker-failed-algorithm", Some("describe-failed-algorithm"))
            .step(100)
            .tags(&[("spotcheck:stalled", "1"), ("spotcheck:resume-step", "100"), ("spotcheck:crash-loop-attempts", "2")])
            .policy(Policy { retries_on_user_error: 5, ..Policy::default() })
            .expect(GiveUp(GiveUpCause::CrashLoop), "policy crash_loop_attempts = 2"),
        row("R2c attempts that never trained do not count", "sagemaker-stopped-maxwait-never-started", Some("describe-stopped-maxwait-never-started"))
            .tags(&[("spotcheck:stalled", "2")])
            .expect(Relaunch { name: SCRATCH_NAME, attempt: 2, instance_type: "ml.g4dn.12xlarge", spot: true, from: None, cause: RelaunchCause::SpotCapacityNeverArrived },
                    "relaunching"),
        row("R4 runtime cap, training finished", "sagemaker-stopped-maxruntime", Some("describe-stopped-maxruntime"))
            .checkpoints(CheckpointSummary { latest_valid_step: Some(9000), finished: true, ..CheckpointSummary::default() })
            .policy(past_runtime_cap())
            .expect(Ignore, "marks training finished"),
        row("R5a runtime cap without any checkpoint", "sagemaker-stopped-maxruntime", Some("describe-stopped-maxruntime"))
            .policy(past_runtime_cap())
            .expect(GiveUp(GiveUpCause::NoProgressPastRuntimeCap), "would repeat the same work"),
        row("R5b runtime cap, no progress since resume", "sagemaker-stopped-maxruntime", Some("describe-stopped-maxruntime"))
            .step(5000)
            .tags(&[("spotcheck:resume-step", "5000"), ("spotcheck:attempt", "2")])
            .policy(past_runtime_cap())
            .expect(GiveUp(GiveUpCause::NoProgressPastRuntimeCap), "this attempt resumed from 5000"),
        row("R5c runtime cap, checkpoints not judged: relaunched", "sagemaker-stopped-maxruntime", Some("describe-stopped-maxruntime"))
            .checkpoints(CheckpointSummary::not_judged(Validation::UnknownFormat))
            .tags(&[("spotcheck:resume-step", "5000"), ("spotcheck:attempt", "2")])
            .policy(past_runtime_cap())
            .expect(Relaunch { name: SCRATCH_NAME, attempt: 3, instance_type: "ml.p4d.24xlarge", spot: true, from: None, cause: RelaunchCause::RuntimeCapReached },
                    "format spotcheck does not know"),
        row("R6a attempts exhausted", "sagemaker-stopped-maxwait", Some("describe-stopped-maxwait"))
            .step(1200)
            .tags(&[("spotcheck:attempt", "10")])
            .expect(GiveUp(GiveUpCause::AttemptsExhausted), "attempt 10 was the last allowed (policy max_attempts = 10)"),
        row("R6b attempts exhausted by env policy", "sagemaker-stopped-maxwait", Some("describe-stopped-maxwait"))
            .step(1200)
            .policy(Policy { max_attempts: 1, ..Policy::default() })
            .expect(GiveUp(GiveUpCause::AttemptsExhausted), "max_attempts = 1"),
        row("R7 no checkpoint, policy gives up", "sagemaker-stopped-maxwait", Some("describe-stopped-maxwait"))
            .policy(Policy { without_checkpoint: WithoutCheckpoint::GiveUp, ..Policy::default() })
            .expect(GiveUp(GiveUpCause::NoCheckpoint), "no valid checkpoint and policy without_checkpoint = give-up"),
        row("R7b corrupt only, policy gives up (by tag)", "sagemaker-stopped-maxwait", Some("describe-stopped-maxwait"))
            .checkpoints(CheckpointSummary { any_corrupt: true, ..CheckpointSummary::default() })
            .tags(&[("spotcheck:without-checkpoint", "give-up")])
            .expect(GiveUp(GiveUpCause::NoCheckpoint), "corrupt checkpoints were found"),
        // R8: relaunch placement and market.
        row("R8a on-demand after interruptions", "sagemaker-stopped-maxwait", Some("describe-stopped-maxwait"))
            .step(1200)
            .tags(&[("spotcheck:on-demand-after", "2")])
            .expect(Relaunch { name: R2, attempt: 2, instance_type: "ml.p3.2xlarge", spot: false, from: Some(1200), cause: RelaunchCause::SpotWaitExceeded },
                    "on-demand because the lineage saw 2 spot interruption(s)"),
        row("R8b on-demand near the deadline", "sagemaker-stopped-maxwait", Some("describe-stopped-maxwait"))
            .step(1200)
            .tags(&[("spotcheck:deadline", "2024-06-10T01:00:00Z")])
            .policy(Policy { on_demand_when_deadline_within_seconds: Some(7200), ..Policy::default() })
            .expect(Relaunch { name: R2, attempt: 2, instance_type: "ml.p3.2xlarge", spot: false, from: Some(1200), cause: RelaunchCause::SpotWaitExceeded },
                    "deadline 2024-06-10T01:00:00.000Z is 3600 s away"),
        row("R8c deadline far away: stays on spot", "sagemaker-stopped-maxwait", Some("describe-stopped-maxwait"))
            .step(1200)
            .tags(&[("spotcheck:deadline", "2024-07-01T00:00:00Z"), ("spotcheck:on-demand-within", "7200")])
            .expect(Relaunch { name: R2, attempt: 2, instance_type: "ml.p3.2xlarge", spot: true, from: Some(1200), cause: RelaunchCause::SpotWaitExceeded },
                    "on spot"),
        row("R8d capacity on the last rung stays there", "sagemaker-failed-capacity", Some("describe-failed-capacity"))
            .step(1200)
            .tags(&[("spotcheck:instance-ladder", "ml.g5.2xlarge,ml.p3.2xlarge")])
            .expect(Relaunch { name: R3, attempt: 3, instance_type: "ml.p3.2xlarge", spot: true, from: Some(1200), cause: RelaunchCause::CapacityFailure },
                    "already on the last ladder rung"),
        row("R8e type not on the ladder", "sagemaker-stopped-maxwait-never-started", Some("describe-stopped-maxwait-never-started"))
            .tags(&[("spotcheck:instance-ladder", "ml.p3.2xlarge,ml.p3.8xlarge")])
            .expect(Relaunch { name: SCRATCH_NAME, attempt: 2, instance_type: "ml.g5.12xlarge", spot: true, from: None, cause: RelaunchCause::SpotCapacityNeverArrived },
                    "not on the instance ladder"),
        row("R8f corrupt newest checkpoints are skipped", "sagemaker-stopped-maxwait", Some("describe-stopped-maxwait"))
            .checkpoints(CheckpointSummary { latest_valid_step: Some(800), any_corrupt: true, ..CheckpointSummary::default() })
            .expect(Relaunch { name: R2, attempt: 2, instance_type: "ml.p3.2xlarge", spot: true, from: Some(800), cause: RelaunchCause::SpotWaitExceeded },
                    "resuming from checkpoint step 800 (corrupt checkpoints were found and are skipped)"),
        // Regression: an attempt whose spot capacity never arrived did not count towards the
        // on-demand switch.
        row("R8g spot that never arrived counts towards on-demand", "sagemaker-stopped-maxwait-never-started", Some("describe-stopped-maxwait-never-started"))
            .tags(&[("spotcheck:on-demand-after", "1")])
            .expect(Relaunch { name: SCRATCH_NAME, attempt: 2, instance_type: "ml.g4dn.12xlarge", spot: false, from: None, cause: RelaunchCause::SpotCapacityNeverArrived },
                    "on-demand because the lineage saw 1 spot interruption(s)"),
        // Regression: checkpoints another library wrote were "no valid checkpoint".
        row("R9a unknown format: relaunched whatever without_checkpoint says", "sagemaker-stopped-maxwait", Some("describe-stopped-maxwait"))
            .checkpoints(CheckpointSummary::not_judged(Validation::UnknownFormat))
            .policy(Policy { without_checkpoint: WithoutCheckpoint::GiveUp, ..Policy::default() })
            .expect(Relaunch { name: R2, attempt: 2, instance_type: "ml.p3.2xlarge", spot: true, from: None, cause: RelaunchCause::SpotWaitExceeded },
                    "format spotcheck does not know (no spotcheck manifest)"),
        row("R9b checkpoints that could not be validated: relaunched", "sagemaker-stopped-maxwait", Some("describe-stopped-maxwait"))
            .checkpoints(CheckpointSummary::not_judged(Validation::Unavailable))
            .policy(Policy { without_checkpoint: WithoutCheckpoint::GiveUp, ..Policy::default() })
            .expect(Relaunch { name: R2, attempt: 2, instance_type: "ml.p3.2xlarge", spot: true, from: None, cause: RelaunchCause::SpotWaitExceeded },
                    "could not be validated"),
        row("R9c unknown format never completes a crash loop", "sagemaker-stopped-maxwait", Some("describe-stopped-maxwait"))
            .checkpoints(CheckpointSummary::not_judged(Validation::UnknownFormat))
            .tags(&[("spotcheck:stalled", "2")])
            .expect(Relaunch { name: R2, attempt: 2, instance_type: "ml.p3.2xlarge", spot: true, from: None, cause: RelaunchCause::SpotWaitExceeded },
                    "relaunching"),
        row("R10a an instance type the operator does not allow", "sagemaker-stopped-maxwait-never-started", Some("describe-stopped-maxwait-never-started"))
            .tags(&[("spotcheck:instance-ladder", "ml.p3.2xlarge,ml.p3.8xlarge")])
            .policy(Policy { allowed_instance_types: vec!["ml.p3.2xlarge".into(), "ml.p3.8xlarge".into()], ..Policy::default() })
            .expect(GiveUp(GiveUpCause::NotPermitted), "not relaunching on ml.g5.12xlarge: the operator allows only ml.p3.2xlarge,ml.p3.8xlarge"),
        row("R10b on-demand when the operator does not allow it", "sagemaker-failed-internal", None)
            .policy(Policy { allow_on_demand: false, ..Policy::default() })
            .expect(GiveUp(GiveUpCause::NotPermitted), "does not allow on-demand relaunches"),
    ]
}

fn past_runtime_cap() -> Policy {
    Policy {
        relaunch_after_max_runtime: true,
        ..Policy::default()
    }
}

fn check(row: &Row, decision: &Decision) {
    let case = row.case;
    assert!(
        decision.reason.contains(row.reason_has),
        "{case}: reason {:?} lacks {:?}",
        decision.reason,
        row.reason_has
    );
    assert!(decision.event_key.is_some(), "{case}");
    let value = json(decision);
    assert_eq!(value["action"], decision.action_name(), "{case}");
    assert_eq!(value["reason"], decision.reason.as_str(), "{case}");
    match (&row.expect, &decision.action) {
        (Expect::Ignore, Action::Ignore) => {}
        (Expect::Record(kind), Action::Record(_)) => assert_eq!(value["record"], *kind, "{case}"),
        (Expect::GiveUp(cause), Action::GiveUp(g)) => assert_eq!(g.cause, *cause, "{case}"),
        (
            Expect::Relaunch {
                name,
                attempt,
                instance_type,
                spot,
                from,
                cause,
            },
            Action::Relaunch(plan),
        ) => {
            if *name != SCRATCH_NAME {
                assert_eq!(plan.job_name, *name, "{case}");
            }
            assert_eq!(
                plan.job_name,
                relaunch_name(&plan.root, plan.attempt),
                "{case}"
            );
            assert!(is_valid_job_name(&plan.job_name), "{case}");
            assert_eq!(plan.attempt, *attempt, "{case}");
            assert_eq!(
                plan.instance_type.as_deref(),
                Some(*instance_type),
                "{case}"
            );
            assert_eq!(plan.spot, *spot, "{case}");
            assert_eq!(plan.from_checkpoint, *from, "{case}");
            assert_eq!(plan.cause, *cause, "{case}");
            assert_eq!(
                plan.tags.get("spotcheck:attempt"),
                Some(attempt.to_string().as_str())
            );
            assert_eq!(plan.tags.get("spotcheck:enabled"), Some("true"));
            assert!(plan.tags.iter().all(|(k, _)| !k.starts_with("aws:")));
            if !plan.spot {
                assert_eq!(
                    plan.max_wait_seconds, None,
                    "{case}: on-demand has no MaxWait"
                );
            }
            // The CLI shape.
            assert_eq!(value["job_name"], plan.job_name.as_str());
            assert_eq!(value["instance_type"], *instance_type);
            assert_eq!(value["spot"], *spot);
        }
        (expected, got) => panic!(
            "{case}: expected {expected:?}, got {got:?} ({})",
            decision.reason
        ),
    }
}

/// Every row of the table, in order.
#[test]
fn decision_table() {
    let rows = rows();
    assert!(rows.len() >= 35);
    for row in &rows {
        let decision = decide_case(
            row.event,
            row.job,
            row.checkpoints.clone(),
            row.tags,
            row.policy.clone(),
        );
        check(row, &decision);
        // Pure: deciding again gives the same decision.
        let again = decide_case(
            row.event,
            row.job,
            row.checkpoints.clone(),
            row.tags,
            row.policy.clone(),
        );
        assert_eq!(decision, again, "{}", row.case);
    }
}

#[test]
fn relaunch_plan_details_for_a_spot_loss() {
    let decision = decide_case(
        "sagemaker-stopped-maxwait",
        Some("describe-stopped-maxwait"),
        step(Some(1200)),
        &[("aws:cloudformation:stack-name", "ml")],
        Policy::default(),
    );
    let Action::Relaunch(plan) = &decision.action else {
        panic!("{decision:?}")
    };
    assert_eq!(plan.parent, ROOT);
    assert_eq!(plan.root, ROOT);
    assert_eq!(plan.max_wait_seconds, Some(10800));
    // MaxRuntimeInSeconds 7200 is the lineage's budget; the job used 5400 s of it.
    assert_eq!(plan.max_runtime_seconds, Some(1800));
    let expected: Vec<(&str, &str)> = vec![
        ("spotcheck:attempt", "2"),
        ("spotcheck:enabled", "true"),
        ("spotcheck:error-retries", "0"),
        ("spotcheck:instance-ladder", "ml.p3.2xlarge,ml.g5.2xlarge"),
        ("spotcheck:interruptions", "2"),
        ("spotcheck:parent", ROOT),
        ("spotcheck:resume-step", "1200"),
        ("spotcheck:root", ROOT),
        ("spotcheck:runtime-used", "5400"),
        ("spotcheck:stalled", "0"),
        ("team", "vision"),
    ];
    assert_eq!(plan.tags.iter().collect::<Vec<_>>(), expected);
}

#[test]
fn max_wait_is_raised_to_the_runtime_cap_and_dropped_on_demand() {
    let policy = Policy {
        max_wait_seconds: Some(1000),
        relaunch_after_max_runtime: true,
        ..Policy::default()
    };
    let decision = decide_case(
        "sagemaker-stopped-maxwait",
        Some("describe-stopped-maxwait"),
        step(Some(1200)),
        &[],
        policy.clone(),
    );
    let Action::Relaunch(plan) = &decision.action else {
        panic!("{decision:?}")
    };
    assert_eq!(plan.max_runtime_seconds, Some(1800), "what is left of 7200");
    assert_eq!(
        plan.max_wait_seconds,
        Some(1800),
        "MaxWait must be ≥ MaxRuntime"
    );

    let mut input = input_case(
        "sagemaker-stopped-maxruntime",
        Some("describe-stopped-maxruntime"),
        step(Some(5000)),
        &[],
        policy,
    );
    if let Some(job) = input.job.as_mut() {
        job.managed_spot = Some(false);
    }
    let decision = spotcheck_control::decide(&input);
    let Action::Relaunch(plan) = &decision.action else {
        panic!("{decision:?}")
    };
    assert!(!plan.spot);
    assert_eq!(plan.max_wait_seconds, None);
    assert!(
        decision.reason.contains("on-demand as before"),
        "{}",
        decision.reason
    );
}

#[test]
fn duplicate_events_ask_for_the_same_name() {
    let a = decide_case(
        "sagemaker-stopped-maxwait",
        Some("describe-stopped-maxwait"),
        step(Some(1200)),
        &[],
        Policy::default(),
    );
    let b = decide_case(
        "sagemaker-stopped-maxwait-duplicate",
        Some("describe-stopped-maxwait"),
        step(Some(1200)),
        &[],
        Policy::default(),
    );
    assert_eq!(a.action, b.action);
    assert_eq!(a.reason, b.reason);
    assert_ne!(a.event_key, b.event_key);
    let Action::Relaunch(plan) = &a.action else {
        panic!("{a:?}")
    };
    assert_eq!(plan.job_name, R2);
}

/// Every order of delivery of the root job's five events, decided against the final Describe:
/// only the two Stopped/MaxWaitTimeExceeded events act, and both ask for the same name.
#[test]
fn out_of_order_delivery_against_the_final_state() {
    let names = [
        "sagemaker-inprogress-training",
        "sagemaker-inprogress-interrupted",
        "sagemaker-stopping",
        "sagemaker-stopped-maxwait",
        "sagemaker-stopped-maxwait-duplicate",
    ];
    let mut order: Vec<usize> = (0..names.len()).collect();
    let mut permutations = 0;
    loop {
        let decisions: Vec<Decision> = order
            .iter()
            .map(|&i| {
                decide_case(
                    names[i],
                    Some("describe-stopped-maxwait"),
                    step(Some(1200)),
                    &[],
                    Policy::default(),
                )
            })
            .collect();
        let relaunched: Vec<&str> = decisions
            .iter()
            .filter_map(|d| match &d.action {
                Action::Relaunch(plan) => Some(plan.job_name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(relaunched, [R2, R2]);
        for d in &decisions {
            if !matches!(d.action, Action::Relaunch(_)) {
                assert!(
                    matches!(d.action, Action::Ignore) && d.reason.contains("stale"),
                    "{}",
                    d.reason
                );
            }
        }
        permutations += 1;
        if !next_permutation(&mut order) {
            break;
        }
    }
    assert_eq!(permutations, 120);
}

fn next_permutation(v: &mut [usize]) -> bool {
    let Some(i) = (1..v.len()).rev().find(|&i| v[i - 1] < v[i]) else {
        return false;
    };
    let j = (i..v.len()).rev().find(|&j| v[j] > v[i - 1]).unwrap();
    v.swap(i - 1, j);
    v[i..].reverse();
    true
}

#[test]
fn without_describe_the_event_detail_stands_in() {
    // Spot-ness is inferred from MaxWaitTimeExceeded; no CheckpointConfig → from scratch.
    let decision = decide_case(
        "sagemaker-stopped-maxwait",
        None,
        step(Some(1200)),
        &[],
        Policy::default(),
    );
    let Action::Relaunch(plan) = &decision.action else {
        panic!("{decision:?}")
    };
    assert!(plan.spot);
    assert_eq!(plan.from_checkpoint, None);
    assert_eq!(plan.max_wait_seconds, None);
    assert!(
        decision.reason.contains("no CheckpointConfig"),
        "{}",
        decision.reason
    );
}

#[test]
fn ec2_table() {
    let run_tags: &[(&str, &str)] = &[
        ("spotcheck:run", "llama-pretrain"),
        ("spotcheck:checkpoint-uri", "s3://ckpt/llama-pretrain"),
        ("spotcheck:continue-on", "on-demand"),
    ];
    let instance = "i-0b1c2d3e4f5a6b7c8";
    // (event, instance tags, action, continuation planned (None: not recorded), reason phrase)
    type Case<'a> = (
        &'a str,
        &'a [(&'a str, &'a str)],
        &'a str,
        Option<bool>,
        &'a str,
    );
    let cases: [Case; 7] = [
        (
            "ec2-spot-interruption-terminate",
            run_tags,
            "record",
            Some(true),
            "continuing run llama-pretrain as",
        ),
        (
            "ec2-spot-interruption-terminate",
            &run_tags[..2],
            "record",
            Some(false),
            "names no spotcheck:continue-on",
        ),
        (
            "ec2-spot-interruption-stop",
            run_tags,
            "record",
            Some(false),
            "no continuation for action stop",
        ),
        (
            "ec2-spot-interruption-hibernate",
            run_tags,
            "record",
            Some(false),
            "no continuation for action hibernate",
        ),
        (
            "ec2-rebalance-recommendation",
            run_tags,
            "record",
            Some(false),
            "advisory only",
        ),
        (
            "ec2-spot-interruption-terminate",
            &[],
            "ignore",
            None,
            "not a spotcheck-managed run",
        ),
        (
            "ec2-rebalance-recommendation",
            &[("spotcheck:run", " ")],
            "ignore",
            None,
            "not a spotcheck-managed run",
        ),
    ];
    for (event, tags, action, continued, reason_has) in cases {
        let decision = decide_case(
            event,
            None,
            CheckpointSummary::default(),
            tags,
            Policy::default(),
        );
        assert_eq!(decision.action_name(), action, "{event}");
        assert!(
            decision.reason.contains(reason_has),
            "{event}: {}",
            decision.reason
        );
        if let Action::Record(Record::InstanceInterruption(record)) = &decision.action {
            assert_eq!(record.instance_id, instance);
            assert_eq!(record.advisory, event == "ec2-rebalance-recommendation");
            assert_eq!(record.continuation.is_some(), continued.unwrap(), "{event}");
            if let Some(plan) = &record.continuation {
                assert_eq!(plan.name, continuation_name("llama-pretrain", 1));
                assert_eq!(plan.generation, 1);
                assert_eq!(plan.continue_on, "on-demand");
                assert_eq!(
                    plan.checkpoint_uri.as_deref(),
                    Some("s3://ckpt/llama-pretrain")
                );
                assert!(is_valid_job_name(&plan.name));
            }
            assert_eq!(json(&decision)["record"], "instance_interruption");
        } else {
            assert!(continued.is_none(), "{event}: {decision:?}");
        }
    }
}

#[test]
fn interruption_counts_add_up_across_the_lineage() {
    let decision = decide_case(
        "sagemaker-inprogress-interrupted",
        None,
        CheckpointSummary::default(),
        &[
            ("spotcheck:interruptions", "3"),
            ("spotcheck:root", ROOT),
            ("spotcheck:attempt", "2"),
        ],
        Policy::default(),
    );
    assert_eq!(
        decision.action,
        Action::Record(Record::Interruption {
            job_name: ROOT.into(),
            interruptions: 1,
            lineage_interruptions: 4
        })
    );
}

#[test]
fn now_only_matters_for_the_deadline() {
    let policy = Policy {
        on_demand_when_deadline_within_seconds: Some(3600),
        deadline: Some(Timestamp::parse("2024-06-10T02:00:00Z").unwrap()),
        ..Policy::default()
    };
    let mut input = input_case(
        "sagemaker-stopped-maxwait",
        Some("describe-stopped-maxwait"),
        step(Some(1200)),
        &[],
        policy,
    );
    let spot_at =
        |input: &spotcheck_control::DecisionInput| match spotcheck_control::decide(input).action {
            Action::Relaunch(plan) => plan.spot,
            other => panic!("{other:?}"),
        };
    assert!(spot_at(&input), "two hours before the deadline");
    input.now = now().plus_seconds(3600);
    assert!(!spot_at(&input), "exactly one hour before");
    input.now = now().plus_seconds(86400);
    assert!(!spot_at(&input), "past the deadline");
}

/// Row 4: an event without a status is malformed (see `parsing`), so only a Describe without
/// one reaches the engine's row.
#[test]
fn a_describe_without_status_decides_nothing() {
    let mut input = input_case(
        "sagemaker-stopped-maxwait",
        Some("describe-stopped-maxwait"),
        step(Some(1200)),
        &[],
        Policy::default(),
    );
    if let (Some(job), spotcheck_control::Signal::TrainingJobStateChange { job: event_job }) =
        (input.job.as_mut(), &mut input.event.signal)
    {
        job.status = None;
        event_job.status = None;
    }
    let decision = spotcheck_control::decide(&input);
    assert_eq!(decision.action, Action::Ignore);
    assert!(
        decision.reason.contains("no TrainingJobStatus"),
        "{}",
        decision.reason
    );
}

/// Regression: a late delivery of a finished job's event (a DLQ redrive a day later) was
/// dropped because SageMaker had touched the job since. Staleness is about status.
#[test]
fn late_events_for_a_finished_job_are_acted_on() {
    let a_day_later = |name: &str| {
        let mut job = crate::util::job(name);
        job.last_modified_time = job.last_modified_time.map(|t| t.plus_seconds(86_400));
        job
    };
    let decide_with = |event: &str, job: spotcheck_control::JobFacts, checkpoints| {
        let mut input = input_case(event, None, checkpoints, &[], Policy::default());
        input.job = Some(job);
        spotcheck_control::decide(&input)
    };
    // Stopped/MaxWaitTimeExceeded: relaunched as if on time.
    let d = decide_with(
        "sagemaker-stopped-maxwait",
        a_day_later("describe-stopped-maxwait"),
        step(Some(1200)),
    );
    assert!(
        matches!(&d.action, Action::Relaunch(p) if p.job_name == R2),
        "{}",
        d.reason
    );
    // Completed: savings recorded.
    let d = decide_with(
        "sagemaker-completed",
        a_day_later("describe-completed"),
        CheckpointSummary::default(),
    );
    assert!(
        matches!(d.action, Action::Record(Record::Savings { .. })),
        "{}",
        d.reason
    );
    // Failed: recovered (or given up) per the failure, not ignored as stale.
    let d = decide_with(
        "sagemaker-failed-capacity",
        a_day_later("describe-failed-capacity"),
        step(Some(1200)),
    );
    assert!(
        matches!(&d.action, Action::Relaunch(p) if p.job_name == R3),
        "{}",
        d.reason
    );
    // The same final status with another secondary status is another state: stale.
    let mut user_stop = crate::util::job("describe-stopped-maxwait");
    user_stop.secondary_status = Some(spotcheck_control::status::SecondaryStatus::Stopped);
    let d = decide_with("sagemaker-stopped-maxwait", user_stop, step(Some(1200)));
    assert_eq!(d.action, Action::Ignore);
    assert!(d.reason.contains("stale event"), "{}", d.reason);
    // A running job that moved on since the event is still stale by its LastModifiedTime.
    let mut running = crate::util::job("describe-stopped-maxwait");
    running.status = Some(spotcheck_control::status::TrainingJobStatus::InProgress);
    running.secondary_status = Some(spotcheck_control::status::SecondaryStatus::Interrupted);
    running.last_modified_time = Some(now());
    let d = decide_with(
        "sagemaker-inprogress-interrupted",
        running,
        CheckpointSummary::default(),
    );
    assert_eq!(d.action, Action::Ignore);
    assert!(
        d.reason.contains("is older than DescribeTrainingJob's"),
        "{}",
        d.reason
    );
}

/// The lineage's runtime budget: each relaunch gets what is left, the used seconds are carried
/// in spotcheck:runtime-used, and a spent budget ends the lineage.
#[test]
fn the_runtime_budget_shrinks_and_runs_out() {
    // Attempt 2 of a lineage that used 1000 s before it; this attempt trained 5400 s of the
    // 7200 s it was given.
    let d = decide_case(
        "sagemaker-stopped-maxwait",
        Some("describe-stopped-maxwait"),
        step(Some(1200)),
        &[
            ("spotcheck:attempt", "2"),
            ("spotcheck:runtime-used", "1000"),
        ],
        Policy::default(),
    );
    let Action::Relaunch(plan) = &d.action else {
        panic!("{d:?}")
    };
    assert_eq!(plan.max_runtime_seconds, Some(1800));
    assert_eq!(plan.tags.get("spotcheck:runtime-used"), Some("6400"));
    assert!(
        d.reason
            .contains("the lineage used 6400 s of its 8200 s runtime budget"),
        "{}",
        d.reason
    );

    // An attempt that used all it was given: nothing left.
    let mut input = input_case(
        "sagemaker-stopped-maxwait",
        Some("describe-stopped-maxwait"),
        step(Some(1200)),
        &[],
        Policy::default(),
    );
    if let Some(job) = input.job.as_mut() {
        job.training_time_seconds = Some(7200);
    }
    let d = spotcheck_control::decide(&input);
    assert!(
        matches!(&d.action, Action::GiveUp(g) if g.cause == GiveUpCause::RuntimeBudgetSpent),
        "{d:?}"
    );
    assert!(
        d.reason.contains("nothing is left for a relaunch"),
        "{}",
        d.reason
    );

    // Opted in past the cap: a fresh budget, the used seconds back to 0.
    let d = decide_case(
        "sagemaker-stopped-maxruntime",
        Some("describe-stopped-maxruntime"),
        step(Some(5000)),
        &[],
        past_runtime_cap(),
    );
    let Action::Relaunch(plan) = &d.action else {
        panic!("{d:?}")
    };
    assert_eq!(plan.max_runtime_seconds, Some(86_400));
    assert_eq!(plan.tags.get("spotcheck:runtime-used"), Some("0"));
}

/// Checkpoints spotcheck cannot judge neither count towards a crash loop nor reset it.
#[test]
fn unjudged_checkpoints_leave_the_stall_count_alone() {
    for validation in [Validation::UnknownFormat, Validation::Unavailable] {
        let d = decide_case(
            "sagemaker-stopped-maxwait",
            Some("describe-stopped-maxwait"),
            CheckpointSummary::not_judged(validation),
            &[
                ("spotcheck:stalled", "2"),
                ("spotcheck:resume-step", "1200"),
            ],
            Policy::default(),
        );
        let Action::Relaunch(plan) = &d.action else {
            panic!("{validation:?}: {d:?}")
        };
        assert_eq!(
            plan.tags.get("spotcheck:stalled"),
            Some("2"),
            "{validation:?}"
        );
        assert_eq!(plan.from_checkpoint, None);
    }
    // The same attempt judged without progress completes the crash loop.
    let d = decide_case(
        "sagemaker-stopped-maxwait",
        Some("describe-stopped-maxwait"),
        step(Some(1200)),
        &[
            ("spotcheck:stalled", "2"),
            ("spotcheck:resume-step", "1200"),
        ],
        Policy::default(),
    );
    assert!(
        matches!(&d.action, Action::GiveUp(g) if g.cause == GiveUpCause::CrashLoop),
        "{d:?}"
    );
}
