//! Property tests: the parsers and the engine never panic on arbitrary or mutated input, and
//! what they produce keeps its invariants.
//!
//! Case counts per property (proptest, default seed handling; failures are persisted by
//! proptest's regression files):
//!
//! | property | cases |
//! |---|---|
//! | `event_parser_survives_arbitrary_bytes` | 1024 |
//! | `event_parser_survives_arbitrary_json` | 512 |
//! | `event_parser_survives_envelopes_with_arbitrary_detail` | 512 |
//! | `mutated_event_fixtures_parse_or_fail_cleanly_and_decide_sanely` | 1024 |
//! | `byte_mutated_fixtures_never_panic` | 512 |
//! | `describe_parser_survives_mutated_describe_fixtures` | 512 |
//! | `describe_parser_survives_arbitrary_json` | 512 |
//! | `relaunch_names_always_match_the_pattern` | 1024 |
//! | `continuation_names_always_match_the_pattern` | 512 |
//! | `timestamps_round_trip_through_rfc3339` | 512 |
//! | `decisions_are_deterministic_and_respect_the_policy` | 512 |

use proptest::prelude::*;
use serde_json::{Map, Value};
use spotcheck_control::events::{parse_event, parse_event_value, Parsed};
use spotcheck_control::job::FactsOrigin;
use spotcheck_control::naming::{
    continuation_name, is_valid_job_name, relaunch_name, MAX_NAME_LEN,
};
use spotcheck_control::{
    decide, Action, CheckpointSummary, DecisionInput, JobFacts, Policy, Tags, Timestamp,
    WithoutCheckpoint,
};

use crate::util::{event_text, job_text, now, EVENTS, JOBS};

const FIELD_NAMES: &[&str] = &[
    "id",
    "version",
    "source",
    "detail-type",
    "detail",
    "time",
    "account",
    "region",
    "resources",
    "TrainingJobName",
    "TrainingJobArn",
    "TrainingJobStatus",
    "SecondaryStatus",
    "FailureReason",
    "Tags",
    "Key",
    "Value",
    "ResourceConfig",
    "InstanceType",
    "InstanceCount",
    "StoppingCondition",
    "MaxRuntimeInSeconds",
    "MaxWaitTimeInSeconds",
    "LastModifiedTime",
    "CreationTime",
    "TrainingStartTime",
    "SecondaryStatusTransitions",
    "Status",
    "StartTime",
    "CheckpointConfig",
    "S3Uri",
    "EnableManagedSpotTraining",
    "TrainingTimeInSeconds",
    "BillableTimeInSeconds",
    "instance-id",
    "instance-action",
    "spotcheck:enabled",
    "spotcheck:attempt",
    "spotcheck:root",
];

const INTERESTING: &[&str] = &[
    "InProgress",
    "Completed",
    "Failed",
    "Stopping",
    "Stopped",
    "Interrupted",
    "Training",
    "MaxWaitTimeExceeded",
    "MaxRuntimeExceeded",
    "aws.sagemaker",
    "aws.ec2",
    "SageMaker Training Job State Change",
    "EC2 Spot Instance Interruption Warning",
    "EC2 Instance Rebalance Recommendation",
    "true",
    "1583831889050",
    "1583831889.05",
    "2024-06-01T12:00:00Z",
    "terminate",
    "ml.p3.2xlarge",
    "CapacityError: no capacity",
    "AlgorithmError: boom",
    "4294967295",
    "-1",
    "",
    "arn:aws:sagemaker:us-east-1:1:training-job/x",
];

fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(FIELD_NAMES).prop_map(str::to_owned),
        1 => "[a-zA-Z:-]{0,12}",
    ]
}

fn arb_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        1 => ".{0,24}".prop_map(Value::String),
        3 => prop::sample::select(INTERESTING).prop_map(|s| Value::String(s.to_owned())),
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    arb_leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((arb_key(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// One edit at a path chosen by `path` (indices taken modulo each container's size).
#[derive(Clone, Debug)]
enum Edit {
    Replace(Value),
    Remove,
    Insert(String, Value),
}

fn arb_edit() -> impl Strategy<Value = (Vec<usize>, Edit)> {
    (
        prop::collection::vec(any::<usize>(), 1..6),
        prop_oneof![
            arb_json().prop_map(Edit::Replace),
            Just(Edit::Remove),
            (arb_key(), arb_json()).prop_map(|(k, v)| Edit::Insert(k, v)),
        ],
    )
}

fn apply(value: &mut Value, path: &[usize], edit: &Edit) {
    let (first, rest) = match path.split_first() {
        Some(split) => split,
        None => return,
    };
    match value {
        Value::Object(map) if !map.is_empty() => {
            let key = map.keys().nth(first % map.len()).cloned().unwrap();
            if rest.is_empty() || !matches!(map[&key], Value::Object(_) | Value::Array(_)) {
                match edit {
                    Edit::Replace(v) => {
                        map.insert(key, v.clone());
                    }
                    Edit::Remove => {
                        map.remove(&key);
                    }
                    Edit::Insert(k, v) => {
                        map.insert(k.clone(), v.clone());
                    }
                }
            } else {
                apply(map.get_mut(&key).unwrap(), rest, edit);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let i = first % items.len();
            if rest.is_empty() || !matches!(items[i], Value::Object(_) | Value::Array(_)) {
                match edit {
                    Edit::Replace(v) | Edit::Insert(_, v) => items[i] = v.clone(),
                    Edit::Remove => {
                        items.remove(i);
                    }
                }
            } else {
                apply(&mut items[i], rest, edit);
            }
        }
        other => {
            if let Edit::Replace(v) = edit {
                *other = v.clone();
            }
        }
    }
}

fn fixture_values(table: &[(&str, &str)]) -> Vec<Value> {
    table
        .iter()
        .filter_map(|(_, text)| serde_json::from_str(text).ok())
        .collect()
}

fn arb_summary() -> impl Strategy<Value = CheckpointSummary> {
    (prop::option::of(0u64..10_000), any::<bool>(), any::<bool>()).prop_map(
        |(step, corrupt, finished)| CheckpointSummary {
            latest_valid_step: step,
            any_corrupt: corrupt,
            finished,
            ..CheckpointSummary::default()
        },
    )
}

/// Decides on whatever parsed and checks the invariants every decision must keep.
fn decide_and_check(
    value: &Value,
    job: Option<JobFacts>,
    summary: CheckpointSummary,
    policy: Policy,
) -> Result<(), TestCaseError> {
    let Ok(Parsed::Relevant(event)) = parse_event_value(value) else {
        return Ok(());
    };
    let Ok(input) = DecisionInput::new(
        event,
        job,
        &Tags::new(),
        summary,
        &[],
        policy.clone(),
        now(),
    ) else {
        return Ok(());
    };
    let decision = decide(&input);
    prop_assert!(!decision.reason.is_empty());
    prop_assert_eq!(&decision, &decide(&input));
    let json = serde_json::to_value(&decision).unwrap();
    prop_assert_eq!(json["action"].as_str(), Some(decision.action_name()));
    if let Action::Relaunch(plan) = &decision.action {
        prop_assert!(input.tags.is_enabled());
        prop_assert!(is_valid_job_name(&plan.job_name), "{}", plan.job_name);
        let effective = policy.with_tag_overrides(&input.tags).unwrap();
        prop_assert!(plan.attempt <= effective.max_attempts);
        if !plan.spot {
            prop_assert_eq!(plan.max_wait_seconds, None);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn event_parser_survives_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_event(&bytes);
    }

    #[test]
    fn mutated_event_fixtures_parse_or_fail_cleanly_and_decide_sanely(
        index in any::<usize>(),
        edits in prop::collection::vec(arb_edit(), 1..4),
        summary in arb_summary(),
    ) {
        let fixtures = fixture_values(EVENTS);
        let mut value = fixtures[index % fixtures.len()].clone();
        for (path, edit) in &edits {
            apply(&mut value, path, edit);
        }
        decide_and_check(&value, None, summary, Policy::default())?;
    }

    #[test]
    fn relaunch_names_always_match_the_pattern(root in "\\PC{0,120}", attempt in any::<u32>()) {
        let name = relaunch_name(&root, attempt);
        prop_assert!(is_valid_job_name(&name), "{:?} -> {:?}", root, name);
        prop_assert!(name.len() <= MAX_NAME_LEN);
        let suffix = format!("-r{}-", attempt);
        prop_assert!(name.contains(&suffix));
        prop_assert_eq!(&name, &relaunch_name(&root, attempt));
        if attempt < u32::MAX {
            prop_assert_ne!(&name, &relaunch_name(&root, attempt + 1));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn event_parser_survives_arbitrary_json(value in arb_json()) {
        let _ = parse_event_value(&value);
        let _ = parse_event(value.to_string().as_bytes());
    }

    #[test]
    fn event_parser_survives_envelopes_with_arbitrary_detail(
        kind in 0usize..4,
        detail in arb_json(),
        id in prop::option::of("[a-f0-9-]{0,36}"),
        summary in arb_summary(),
    ) {
        let (source, detail_type) = [
            ("aws.sagemaker", "SageMaker Training Job State Change"),
            ("aws.ec2", "EC2 Spot Instance Interruption Warning"),
            ("aws.ec2", "EC2 Instance Rebalance Recommendation"),
            ("aws.events", "Scheduled Event"),
        ][kind];
        let mut envelope = serde_json::json!({
            "version": "0", "source": source, "detail-type": detail_type,
            "time": "2024-06-01T00:00:00Z", "region": "us-east-1", "resources": [], "detail": detail,
        });
        if let Some(id) = id {
            envelope["id"] = Value::String(id);
        }
        match parse_event_value(&envelope) {
            Err(e) => prop_assert_eq!(e.event_id(), envelope["id"].as_str()),
            Ok(_) => decide_and_check(&envelope, None, summary, Policy::default())?,
        }
    }

    #[test]
    fn byte_mutated_fixtures_never_panic(
        index in any::<usize>(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let (_, text) = EVENTS[index % EVENTS.len()];
        let mut bytes = text.as_bytes().to_vec();
        for (at, byte, op) in edits {
            if bytes.is_empty() {
                break;
            }
            let at = at % bytes.len();
            match op {
                0 => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ => {
                    bytes.remove(at);
                }
            }
        }
        let _ = parse_event(&bytes);
        let _ = JobFacts::from_describe_json(&bytes);
    }

    #[test]
    fn describe_parser_survives_mutated_describe_fixtures(
        index in any::<usize>(),
        edits in prop::collection::vec(arb_edit(), 1..4),
        summary in arb_summary(),
    ) {
        let describes: Vec<Value> = JOBS
            .iter()
            .filter(|(name, _)| name.starts_with("describe-"))
            .map(|(_, text)| serde_json::from_str(text).unwrap())
            .collect();
        let mut value = describes[index % describes.len()].clone();
        for (path, edit) in &edits {
            apply(&mut value, path, edit);
        }
        if let Ok(job) = JobFacts::from_value(&value, FactsOrigin::DescribeTrainingJob, None) {
            prop_assert_eq!(job.origin, FactsOrigin::DescribeTrainingJob);
            // Decide with it against the fixture event of the same name, if any.
            let event: Value = serde_json::from_str(event_text("sagemaker-stopped-maxwait")).unwrap();
            decide_and_check(&event, Some(job), summary, Policy::default())?;
        }
        let _ = JobFacts::from_describe_json(value.to_string().as_bytes());
    }

    #[test]
    fn describe_parser_survives_arbitrary_json(value in arb_json()) {
        let _ = JobFacts::from_value(&value, FactsOrigin::EventDetail, None);
        let _ = Tags::from_value(&value);
    }

    #[test]
    fn continuation_names_always_match_the_pattern(run in "\\PC{0,100}", generation in any::<u32>()) {
        let name = continuation_name(&run, generation);
        prop_assert!(is_valid_job_name(&name), "{:?} -> {:?}", run, name);
        prop_assert_eq!(&name, &continuation_name(&run, generation));
    }

    #[test]
    fn timestamps_round_trip_through_rfc3339(ms in -62_135_596_800_000i64..=253_402_300_799_999) {
        let t = Timestamp::from_epoch_ms(ms).unwrap();
        prop_assert_eq!(Timestamp::parse(&t.to_rfc3339()), Ok(t));
        // A bare number below 1e11 in magnitude is read as seconds, which may fall outside the
        // supported years even when the same number of milliseconds does not.
        let expected = if ms.unsigned_abs() < 100_000_000_000 {
            Timestamp::from_epoch_ms(ms * 1000).ok()
        } else {
            Some(t)
        };
        prop_assert_eq!(Timestamp::parse(&ms.to_string()).ok(), expected);
    }

    #[test]
    fn decisions_are_deterministic_and_respect_the_policy(
        event_index in 0usize..4,
        max_attempts in 1u32..6,
        attempt in 1u32..8,
        stalled in 0u32..4,
        crash_loop_attempts in 1u32..4,
        retries in 0u32..3,
        on_demand_after in prop::option::of(0u32..4),
        give_up_without in any::<bool>(),
        summary in arb_summary(),
    ) {
        let (event, job) = [
            ("sagemaker-stopped-maxwait", "describe-stopped-maxwait"),
            ("sagemaker-failed-capacity", "describe-failed-capacity"),
            ("sagemaker-stopped-maxruntime", "describe-stopped-maxruntime"),
            ("sagemaker-failed-algorithm", "describe-failed-algorithm"),
        ][event_index];
        let policy = Policy {
            max_attempts,
            crash_loop_attempts,
            retries_on_user_error: retries,
            on_demand_after_interruptions: on_demand_after,
            without_checkpoint: if give_up_without { WithoutCheckpoint::GiveUp } else { WithoutCheckpoint::RestartFromScratch },
            ..Policy::default()
        };
        let extra: Tags = [
            ("spotcheck:attempt", attempt.to_string()),
            ("spotcheck:stalled", stalled.to_string()),
        ]
        .into_iter()
        .collect();
        let job = JobFacts::from_describe_json(job_text(job).as_bytes()).unwrap();
        let Ok(Parsed::Relevant(parsed)) = parse_event(event_text(event).as_bytes()) else {
            panic!("fixture parses")
        };
        let input = DecisionInput::new(parsed, Some(job), &extra, summary, &[], policy.clone(), now()).unwrap();
        let decision = decide(&input);
        prop_assert_eq!(&decision, &decide(&input));
        if let Action::Relaunch(plan) = &decision.action {
            prop_assert!(attempt < max_attempts, "relaunched past max_attempts: {}", decision.reason);
            prop_assert_eq!(plan.attempt, attempt + 1);
            let stalled_now: u32 = plan.tags.get("spotcheck:stalled").unwrap().parse().unwrap();
            prop_assert!(stalled_now < crash_loop_attempts, "relaunched a crash loop: {}", decision.reason);
            prop_assert!(!give_up_without || plan.from_checkpoint.is_some());
            if let (Some(wait), Some(runtime)) = (plan.max_wait_seconds, plan.max_runtime_seconds) {
                prop_assert!(wait >= runtime);
            }
            prop_assert_eq!(plan.job_name.clone(), relaunch_name(&plan.root, plan.attempt));
        }
    }
}
