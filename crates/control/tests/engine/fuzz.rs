//! Property tests: the parsers and the engine never panic on arbitrary or mutated input, and
//! what they produce keeps its invariants.
//!
//! Cases per property in `cargo test` (proptest; failures are persisted by proptest's
//! regression files): the count below, or `PROPTEST_CASES` when set (`spotcheck_fuzz::cases`).
//!
//! | property | cases |
//! |---|---|
//! | `event_parser_survives_arbitrary_bytes` | 1024 |
//! | `event_parser_survives_arbitrary_json` | 512 |
//! | `event_parser_survives_envelopes_with_arbitrary_detail` | 512 |
//! | `mutated_event_fixtures_parse_or_fail_cleanly_and_decide_sanely` | 1024 |
//! | `byte_mutated_fixtures_never_panic` (events and DescribeTrainingJob) | 512 |
//! | `describe_parser_survives_mutated_describe_fixtures` | 512 |
//! | `describe_parser_survives_arbitrary_json` | 512 |
//! | `ledger_records_parse_or_fail_cleanly_and_round_trip` | 512 |
//! | `price_tables_accept_only_finite_non_negative_prices` | 512 |
//! | `relaunch_names_always_match_the_pattern` | 1024 |
//! | `continuation_names_always_match_the_pattern` | 512 |
//! | `timestamps_round_trip_through_rfc3339` | 512 |
//! | `decisions_are_deterministic_and_respect_the_policy` | 512 |
//!
//! The same properties, soaked (`scripts/fuzz-soak.sh`, `#[ignore]`d here): `soak_events`,
//! `soak_describe_training_job`, `soak_ledger_records`, `soak_price_tables`.

use std::sync::LazyLock;

use proptest::prelude::*;
use serde_json::Value;
use spotcheck_control::events::{parse_event, parse_event_value, Parsed};
use spotcheck_control::job::FactsOrigin;
use spotcheck_control::naming::{
    continuation_name, is_valid_job_name, relaunch_name, MAX_NAME_LEN,
};
use spotcheck_control::savings::{job_savings, lineage_savings, LineageSummary, SavingsRecord};
use spotcheck_control::{
    decide, Action, CheckpointSummary, DecisionInput, JobFacts, Policy, PriceTable, Tags,
    Timestamp, WithoutCheckpoint,
};
use spotcheck_fuzz::cases;
use spotcheck_fuzz::json::bytes::{arb_mutations, mutated, Mutation};
use spotcheck_fuzz::json::{arb_edits, arb_json, edited, Edit, Vocabulary};
use spotcheck_fuzz::soak::Soak;

use crate::util::{event_text, job_text, now, EVENTS, JOBS, ROOT};

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
    // Ledger records and price tables.
    "job_name",
    "instance_type",
    "instance_count",
    "training_seconds",
    "billable_seconds",
    "seconds_saved",
    "savings_percent",
    "billed_compute_seconds",
    "on_demand_usd_per_hour",
    "dollars_saved",
    "lineage_root",
    "ended_at",
    "prices_as_of",
    "root",
    "jobs",
    "skipped",
    "reason",
    "unpriced_instance_types",
    "usd_per_hour",
    "currency",
    "as_of",
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
    "USD",
    "EUR",
    "2024-06-01T12:00:00.123Z",
    "NaN",
    "1e999",
];

const VOCABULARY: Vocabulary = Vocabulary {
    keys: FIELD_NAMES,
    strings: INTERESTING,
};

fn fixture_values(table: &[(&str, &str)]) -> Vec<Value> {
    table
        .iter()
        .filter_map(|(_, text)| serde_json::from_str(text).ok())
        .collect()
}

/// The event fixtures that are JSON, parsed once.
static EVENT_VALUES: LazyLock<Vec<Value>> = LazyLock::new(|| fixture_values(EVENTS));

/// The DescribeTrainingJob fixtures.
static DESCRIBES: LazyLock<Vec<(&str, &str)>> = LazyLock::new(|| {
    JOBS.iter()
        .copied()
        .filter(|(name, _)| name.starts_with("describe-"))
        .collect()
});

static DESCRIBE_VALUES: LazyLock<Vec<Value>> = LazyLock::new(|| fixture_values(&DESCRIBES));

/// Real ledger records, as the handlers write them: the savings record of every describe
/// fixture that has the times for one, and the fixture lineage's summary.
static RECORDS: LazyLock<Vec<Value>> = LazyLock::new(|| {
    let prices = PriceTable::builtin();
    let jobs: Vec<JobFacts> = DESCRIBES
        .iter()
        .filter_map(|(_, text)| JobFacts::from_describe_json(text.as_bytes()).ok())
        .collect();
    let mut records: Vec<Value> = jobs
        .iter()
        .filter_map(|job| job_savings(job, &prices).ok())
        .map(|r| serde_json::to_value(r).unwrap())
        .collect();
    let summary = lineage_savings(ROOT, &jobs, &prices).unwrap();
    records.push(serde_json::to_value(summary).unwrap());
    assert!(records.len() >= 2, "the fixtures yield savings records");
    records
});

/// Price files: the built-in table and a small one with every optional field.
static PRICE_FILES: LazyLock<Vec<Value>> = LazyLock::new(|| {
    vec![
        serde_json::from_str(include_str!("../../prices/on-demand-us-east-1.json")).unwrap(),
        serde_json::json!({"currency": "USD", "region": "us-east-1", "as_of": "2026-01-01",
            "comment": "test", "usd_per_hour": {"ml.p3.2xlarge": 3.825, "ml.g5.xlarge": 1.408}}),
    ]
});

type Edits = Vec<(Vec<usize>, Edit)>;

fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..512)
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

/// A fixture (by index), edits to it, and a checkpoint summary to decide with.
fn arb_edited() -> impl Strategy<Value = (usize, Edits, CheckpointSummary)> {
    (any::<usize>(), arb_edits(VOCABULARY), arb_summary())
}

/// A fixture (by index) and byte mutations of its text.
fn arb_mutated() -> impl Strategy<Value = (usize, Vec<Mutation>)> {
    (any::<usize>(), arb_mutations())
}

type Envelope = (usize, Value, Option<String>, CheckpointSummary);

fn arb_envelope() -> impl Strategy<Value = Envelope> {
    (
        0usize..4,
        arb_json(VOCABULARY),
        prop::option::of("[a-f0-9-]{0,36}"),
        arb_summary(),
    )
}

fn arb_epoch_ms() -> impl Strategy<Value = i64> {
    -62_135_596_800_000i64..=253_402_300_799_999
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

// ---- Properties: each a function of one generated input, run by proptest below and by the
// ---- soak tests at the end.

fn event_bytes(bytes: &[u8]) -> Result<(), TestCaseError> {
    let _ = parse_event(bytes);
    Ok(())
}

fn event_json(value: &Value) -> Result<(), TestCaseError> {
    let _ = parse_event_value(value);
    let _ = parse_event(value.to_string().as_bytes());
    Ok(())
}

fn event_envelope((kind, detail, id, summary): &Envelope) -> Result<(), TestCaseError> {
    let (source, detail_type) = [
        ("aws.sagemaker", "SageMaker Training Job State Change"),
        ("aws.ec2", "EC2 Spot Instance Interruption Warning"),
        ("aws.ec2", "EC2 Instance Rebalance Recommendation"),
        ("aws.events", "Scheduled Event"),
    ][*kind];
    let mut envelope = serde_json::json!({
        "version": "0", "source": source, "detail-type": detail_type,
        "time": "2024-06-01T00:00:00Z", "region": "us-east-1", "resources": [], "detail": detail,
    });
    if let Some(id) = id {
        envelope["id"] = Value::String(id.clone());
    }
    match parse_event_value(&envelope) {
        Err(e) => prop_assert_eq!(e.event_id(), envelope["id"].as_str()),
        Ok(_) => decide_and_check(&envelope, None, summary.clone(), Policy::default())?,
    }
    Ok(())
}

fn event_fixture_edited(
    (index, edits, summary): &(usize, Edits, CheckpointSummary),
) -> Result<(), TestCaseError> {
    let value = edited(&EVENT_VALUES, *index, edits);
    decide_and_check(&value, None, summary.clone(), Policy::default())
}

fn event_fixture_mutated((index, mutations): &(usize, Vec<Mutation>)) -> Result<(), TestCaseError> {
    let (_, text) = EVENTS[index % EVENTS.len()];
    let bytes = mutated(text.as_bytes(), mutations);
    let _ = parse_event(&bytes);
    let _ = JobFacts::from_describe_json(&bytes);
    Ok(())
}

fn timestamp_round_trip(ms: &i64) -> Result<(), TestCaseError> {
    let ms = *ms;
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
    Ok(())
}

fn describe_edited(
    (index, edits, summary): &(usize, Edits, CheckpointSummary),
) -> Result<(), TestCaseError> {
    let value = edited(&DESCRIBE_VALUES, *index, edits);
    if let Ok(job) = JobFacts::from_value(&value, FactsOrigin::DescribeTrainingJob, None) {
        prop_assert_eq!(job.origin, FactsOrigin::DescribeTrainingJob);
        // Decide with it against the matching fixture event.
        let event: Value = serde_json::from_str(event_text("sagemaker-stopped-maxwait")).unwrap();
        decide_and_check(&event, Some(job), summary.clone(), Policy::default())?;
    }
    let _ = JobFacts::from_describe_json(value.to_string().as_bytes());
    Ok(())
}

fn describe_mutated((index, mutations): &(usize, Vec<Mutation>)) -> Result<(), TestCaseError> {
    let (_, text) = DESCRIBES[index % DESCRIBES.len()];
    let _ = JobFacts::from_describe_json(&mutated(text.as_bytes(), mutations));
    Ok(())
}

fn describe_json(value: &Value) -> Result<(), TestCaseError> {
    let _ = JobFacts::from_value(value, FactsOrigin::EventDetail, None);
    let _ = JobFacts::from_value(value, FactsOrigin::DescribeTrainingJob, None);
    let _ = Tags::from_value(value);
    Ok(())
}

/// Whether two JSON documents are equal, numbers within one part in 10¹⁵: serde_json, built
/// without its `float_roundtrip` feature, may read a float one ULP off, so a record written and
/// read back can differ in the last bit of a float (the soak found `16382021358372218607` read
/// as 1.638202135837222e19, written so, and read back as 1.6382021358372219e19).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x != y => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-15 * x.abs().max(y.abs()),
            _ => false,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// Whatever a reader accepts as a `T` is accepted again once written back, unchanged (floats
/// to their last bit, see [`same_json`]).
fn round_trips<T: serde::Serialize + serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<(), TestCaseError> {
    let Ok(record) = serde_json::from_slice::<T>(bytes) else {
        return Ok(());
    };
    let written = serde_json::to_vec(&record).unwrap();
    let again: T = serde_json::from_slice(&written).map_err(|e| {
        TestCaseError::fail(format!("an accepted record, written back, is refused: {e}"))
    })?;
    let (a, b) = (
        serde_json::to_value(&record).unwrap(),
        serde_json::to_value(&again).unwrap(),
    );
    prop_assert!(same_json(&a, &b), "{} became {}", a, b);
    Ok(())
}

/// What a ledger reader gets from `bytes`: a record of either kind or an error, never a panic;
/// and what it accepts survives writing it back and reading it again.
fn ledger_record(bytes: &[u8]) -> Result<(), TestCaseError> {
    round_trips::<SavingsRecord>(bytes)?;
    round_trips::<LineageSummary>(bytes)
}

fn ledger_record_edited((index, edits): &(usize, Edits)) -> Result<(), TestCaseError> {
    ledger_record(edited(&RECORDS, *index, edits).to_string().as_bytes())
}

fn ledger_record_mutated((index, mutations): &(usize, Vec<Mutation>)) -> Result<(), TestCaseError> {
    let doc = RECORDS[index % RECORDS.len()].to_string();
    ledger_record(&mutated(doc.as_bytes(), mutations))
}

/// A price table is accepted only with finite, non-negative prices for exactly the listed
/// types.
fn price_table(bytes: &[u8]) -> Result<(), TestCaseError> {
    /// The listed types, read in every shape the parser's `PriceFile` accepts and at least as
    /// leniently: it skips unknown fields without validating them (e.g. a lone surrogate
    /// `"\ud800"` in a comment, which a `Value` would refuse), and, being a serde struct, it
    /// also takes its four fields as a JSON array in declaration order (found by the soak).
    #[derive(serde::Deserialize)]
    struct Listed {
        #[serde(rename = "currency")]
        _currency: Option<serde::de::IgnoredAny>,
        #[serde(rename = "region")]
        _region: Option<serde::de::IgnoredAny>,
        #[serde(rename = "as_of")]
        _as_of: Option<serde::de::IgnoredAny>,
        usd_per_hour: std::collections::BTreeMap<String, serde::de::IgnoredAny>,
    }
    let Ok(table) = PriceTable::from_json(bytes) else {
        return Ok(());
    };
    let listed: Listed = serde_json::from_slice(bytes).unwrap();
    for instance_type in listed.usd_per_hour.keys() {
        let price = table.usd_per_hour(instance_type);
        prop_assert!(
            price.is_some_and(|p| p.is_finite() && p >= 0.0),
            "{instance_type}: {price:?}"
        );
    }
    prop_assert_eq!(table.usd_per_hour("not-listed-\u{0}"), None);
    Ok(())
}

fn price_table_edited((index, edits): &(usize, Edits)) -> Result<(), TestCaseError> {
    price_table(edited(&PRICE_FILES, *index, edits).to_string().as_bytes())
}

fn price_table_mutated((index, mutations): &(usize, Vec<Mutation>)) -> Result<(), TestCaseError> {
    let doc = PRICE_FILES[index % PRICE_FILES.len()].to_string();
    price_table(&mutated(doc.as_bytes(), mutations))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(1024)))]

    #[test]
    fn event_parser_survives_arbitrary_bytes(bytes in arb_bytes()) {
        event_bytes(&bytes)?;
    }

    #[test]
    fn mutated_event_fixtures_parse_or_fail_cleanly_and_decide_sanely(input in arb_edited()) {
        event_fixture_edited(&input)?;
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
    #![proptest_config(ProptestConfig::with_cases(cases(512)))]

    #[test]
    fn event_parser_survives_arbitrary_json(value in arb_json(VOCABULARY)) {
        event_json(&value)?;
    }

    #[test]
    fn event_parser_survives_envelopes_with_arbitrary_detail(input in arb_envelope()) {
        event_envelope(&input)?;
    }

    #[test]
    fn byte_mutated_fixtures_never_panic(input in arb_mutated()) {
        event_fixture_mutated(&input)?;
        describe_mutated(&input)?;
    }

    #[test]
    fn describe_parser_survives_mutated_describe_fixtures(input in arb_edited()) {
        describe_edited(&input)?;
    }

    #[test]
    fn describe_parser_survives_arbitrary_json(value in arb_json(VOCABULARY)) {
        describe_json(&value)?;
    }

    #[test]
    fn ledger_records_parse_or_fail_cleanly_and_round_trip(
        edits in (any::<usize>(), arb_edits(VOCABULARY)),
        mutations in arb_mutated(),
    ) {
        ledger_record_edited(&edits)?;
        ledger_record_mutated(&mutations)?;
    }

    #[test]
    fn price_tables_accept_only_finite_non_negative_prices(
        edits in (any::<usize>(), arb_edits(VOCABULARY)),
        mutations in arb_mutated(),
    ) {
        price_table_edited(&edits)?;
        price_table_mutated(&mutations)?;
    }

    #[test]
    fn continuation_names_always_match_the_pattern(run in "\\PC{0,100}", generation in any::<u32>()) {
        let name = continuation_name(&run, generation);
        prop_assert!(is_valid_job_name(&name), "{:?} -> {:?}", run, name);
        prop_assert_eq!(&name, &continuation_name(&run, generation));
    }

    #[test]
    fn timestamps_round_trip_through_rfc3339(ms in arb_epoch_ms()) {
        timestamp_round_trip(&ms)?;
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

/// Regression (found by the soak): a price the reader parses one ULP off must not count as a
/// record that changes when written back.
#[test]
fn a_ledger_float_read_one_ulp_off_still_round_trips() {
    let mut record = RECORDS[0].clone();
    record["on_demand_usd_per_hour"] = serde_json::json!(16382021358372218607u64);
    ledger_record(record.to_string().as_bytes()).unwrap();
    let mut summary = RECORDS.last().unwrap().clone();
    summary["savings_percent"] = serde_json::json!(4.396528544155802e-17);
    ledger_record(summary.to_string().as_bytes()).unwrap();
}

/// Regression (found by the soak): a price file given as a JSON array is read positionally
/// (serde's struct-from-sequence), so the property must read the listed types that way too.
#[test]
fn a_price_file_as_a_json_array_is_read_positionally() {
    let bytes = br#"["USD", null, "2026-01-01", {"ml.p3.2xlarge": 3.825}]"#;
    let table = PriceTable::from_json(bytes).unwrap();
    assert_eq!(table.usd_per_hour("ml.p3.2xlarge"), Some(3.825));
    price_table(bytes).unwrap();
    price_table(br#"[null, "x", "y", {}]"#).unwrap();
}

// ---- Soaks: `scripts/fuzz-soak.sh` runs these (a million cases per parser by default).

#[test]
#[ignore = "soak: run by scripts/fuzz-soak.sh"]
fn soak_events() {
    Soak::new("events")
        .property("arbitrary bytes", arb_bytes(), |b| event_bytes(b))
        .property("arbitrary JSON", arb_json(VOCABULARY), event_json)
        .property(
            "envelopes, arbitrary detail",
            arb_envelope(),
            event_envelope,
        )
        .property(
            "edited fixtures, decided",
            arb_edited(),
            event_fixture_edited,
        )
        .property(
            "byte-mutated fixtures",
            arb_mutated(),
            event_fixture_mutated,
        )
        .property("timestamps", arb_epoch_ms(), timestamp_round_trip)
        .run_and_check();
}

#[test]
#[ignore = "soak: run by scripts/fuzz-soak.sh"]
fn soak_describe_training_job() {
    Soak::new("DescribeTrainingJob")
        .property("edited fixtures, decided", arb_edited(), describe_edited)
        .property("byte-mutated fixtures", arb_mutated(), describe_mutated)
        .property("arbitrary JSON", arb_json(VOCABULARY), describe_json)
        .run_and_check();
}

#[test]
#[ignore = "soak: run by scripts/fuzz-soak.sh"]
fn soak_ledger_records() {
    Soak::new("ledger records")
        .property(
            "edited records",
            (any::<usize>(), arb_edits(VOCABULARY)),
            ledger_record_edited,
        )
        .property("byte-mutated records", arb_mutated(), ledger_record_mutated)
        .property("arbitrary JSON", arb_json(VOCABULARY), |v| {
            ledger_record(v.to_string().as_bytes())
        })
        .run_and_check();
}

#[test]
#[ignore = "soak: run by scripts/fuzz-soak.sh"]
fn soak_price_tables() {
    Soak::new("price tables")
        .property(
            "edited files",
            (any::<usize>(), arb_edits(VOCABULARY)),
            price_table_edited,
        )
        .property("byte-mutated files", arb_mutated(), price_table_mutated)
        .property("arbitrary JSON", arb_json(VOCABULARY), |v| {
            price_table(v.to_string().as_bytes())
        })
        .run_and_check();
}
