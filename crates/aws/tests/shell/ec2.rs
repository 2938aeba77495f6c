//! The EC2 handler over fakes: instance tags → run, validate, record, continue the run as a
//! SageMaker managed-spot job from its request template, announce; one line per invocation.

use serde_json::Value;
use spotcheck_aws::continuation::{TemplateError, MAX_TEMPLATE_BYTES};
use spotcheck_aws::{
    continuation_request, parse_template, Ec2Handler, ErrorKind, Handled, HandlerConfig,
    HandlerError, Outcome,
};
use spotcheck_control::naming::continuation_name;
use spotcheck_control::{Action, Policy, Record, Tags};

use crate::checkpoints::{put_checkpoint, BUCKET, URI};
use crate::continuation::template_bytes;
use crate::fakes::*;

const INSTANCE: &str = "i-0b1c2d3e4f5a6b7c8";
const TEMPLATE_URI: &str = "s3://templates/runs/llm-sft.json";
const TERMINATE: &str = "ec2-spot-interruption-terminate.json";
const RECORD_KEY: &str =
    "interruptions/runs/llm-sft/i-0b1c2d3e4f5a6b7c8/spot-itn-7de15f09-82c4-4fcc-a493-c1af089e97a2.json";

type Handler = Ec2Handler<FakeInstances, FakeJobs, FakeStore, FakeLedger, FakeEvents>;

fn handler(tags: &[(&str, &str)]) -> Handler {
    let h = Ec2Handler {
        instances: FakeInstances::default(),
        jobs: FakeJobs::default(),
        checkpoints: FakeStore::default(),
        ledger: FakeLedger::default(),
        events: FakeEvents::default(),
        config: HandlerConfig::new(Policy::default()),
    };
    if !tags.is_empty() {
        let tags: Tags = tags.iter().copied().collect();
        h.instances
            .tags
            .lock()
            .unwrap()
            .insert(INSTANCE.into(), tags);
    }
    h
}

/// A run that names a request template.
const RUN: &[(&str, &str)] = &[
    ("spotcheck:run", "llm-sft"),
    ("spotcheck:checkpoint-uri", URI),
    ("spotcheck:continue-on", TEMPLATE_URI),
];

/// A run whose `continue-on` is for the user's own automation.
const RUN_PLANNED: &[(&str, &str)] = &[
    ("spotcheck:run", "llm-sft"),
    ("spotcheck:checkpoint-uri", URI),
    ("spotcheck:continue-on", "on-demand"),
];

/// A run that names no continuation.
const RUN_ONLY: &[(&str, &str)] = &[
    ("spotcheck:run", "llm-sft"),
    ("spotcheck:checkpoint-uri", URI),
];

fn put_template(h: &Handler, bytes: &[u8]) {
    h.checkpoints.put("templates", "runs/llm-sft.json", bytes);
}

/// [`RUN`] with its template and a valid checkpoint at step 1200.
fn continuable() -> Handler {
    let h = handler(RUN);
    put_template(&h, &template_bytes());
    put_checkpoint(&h.checkpoints, "algo-1", 1200, false);
    h
}

async fn handle(h: &Handler, fixture: &str, log: &MemoryLog) -> Result<Handled, HandlerError> {
    h.handle(&event(fixture), now(), log).await
}

fn plan_of(handled: &Handled) -> spotcheck_control::ContinuationPlan {
    match &handled.decision.as_ref().unwrap().action {
        Action::Record(Record::InstanceInterruption(i)) => i.continuation.clone().unwrap(),
        other => panic!("no continuation: {other:?}"),
    }
}

#[tokio::test]
async fn a_warning_continues_the_run_as_a_managed_spot_job_from_its_checkpoints() {
    let h = continuable();
    let log = MemoryLog::default();
    let handled = handle(&h, TERMINATE, &log).await.unwrap();
    assert_eq!(handled.outcome, Outcome::Relaunched);
    let plan = plan_of(&handled);
    let name = continuation_name("llm-sft", 1);
    assert_eq!(plan.name, name);

    // The request: exactly the pure function's, from the template the handler read.
    let request = h.jobs.only_created();
    let template = parse_template(&template_bytes()).unwrap();
    assert_eq!(
        request,
        continuation_request(&template, &plan, Some(1200))
            .build()
            .unwrap()
    );
    assert_eq!(request.training_job_name(), Some(name.as_str()));
    assert_eq!(request.enable_managed_spot_training(), Some(true));
    assert_eq!(
        request.checkpoint_config().unwrap().s3_uri.as_deref(),
        Some(URI),
        "the same checkpoint URI as the run on EC2"
    );
    let tags: Tags = request
        .tags()
        .iter()
        .map(|t| (t.key.clone().unwrap(), t.value.clone().unwrap()))
        .collect();
    assert_eq!(tags.get("spotcheck:enabled"), Some("true"));
    assert_eq!(tags.get("spotcheck:root"), Some(name.as_str()));
    assert_eq!(tags.get("spotcheck:run"), Some("llm-sft"));
    assert_eq!(tags.get("spotcheck:generation"), Some("1"));
    assert_eq!(tags.get("spotcheck:parent"), Some(INSTANCE));
    assert_eq!(tags.get("spotcheck:resume-step"), Some("1200"));

    // The template was read once, ranged to the limit plus one byte.
    let gets = h.checkpoints.gets.lock().unwrap().clone();
    assert_eq!(gets.iter().filter(|k| *k == "runs/llm-sft.json").count(), 1);
    assert_eq!(
        *h.checkpoints.max_range.lock().unwrap(),
        MAX_TEMPLATE_BYTES + 1
    );

    // Recorded, then announced as continued.
    assert_eq!(h.ledger.keys(), [RECORD_KEY]);
    let record = h.ledger.json(RECORD_KEY);
    assert_eq!(record["kind"], "spot_interruption_warning");
    assert_eq!(record["latest_valid_step"], 1200);
    assert_eq!(h.events.detail_types(), ["Training Run Continued"]);
    let detail = h.events.detail(0);
    assert_eq!(detail["name"], name.as_str());
    assert_eq!(detail["run"], "llm-sft");
    assert_eq!(detail["instance_id"], INSTANCE);
    assert_eq!(detail["continue_on"], TEMPLATE_URI);
    assert_eq!(detail["checkpoint_uri"], URI);
    assert_eq!(detail["latest_valid_step"], 1200);
    assert_eq!(detail["job_arn"], arn(&name));

    let line = log.decision(1);
    assert_eq!(line["outcome"], "relaunched");
    assert_eq!(line["subject"], INSTANCE);
    assert_eq!(
        line["effects"],
        serde_json::json!([
            format!("ledger {RECORD_KEY}: new"),
            format!("created {name} ({})", arn(&name)),
            "published Training Run Continued"
        ])
    );
}

#[tokio::test]
async fn a_duplicate_warning_asks_for_the_same_name_and_creates_nothing_more() {
    let h = continuable();
    let log = MemoryLog::default();
    handle(&h, TERMINATE, &log).await.unwrap();
    let again = handle(&h, TERMINATE, &log).await.unwrap();
    assert_eq!(again.outcome, Outcome::AlreadyRelaunched);
    let name = continuation_name("llm-sft", 1);
    assert_eq!(
        *h.jobs.requested.lock().unwrap(),
        [name.clone(), name.clone()]
    );
    assert_eq!(h.jobs.created_names(), [name.as_str()]);
    assert_eq!(h.ledger.keys(), [RECORD_KEY]);
    // At least once: announced again, without an ARN this time.
    assert_eq!(
        h.events.detail_types(),
        ["Training Run Continued", "Training Run Continued"]
    );
    assert_eq!(h.events.detail(1)["job_arn"], Value::Null);
    let line = log.decision(2);
    assert_eq!(line["outcome"], "already_relaunched");
    assert_eq!(
        line["effects"][1],
        format!("{name} already exists: an earlier delivery created it")
    );
}

#[tokio::test]
async fn without_a_template_the_warning_is_only_recorded_or_the_plan_published() {
    // No continue-on: recorded, nothing read beyond the checkpoints, nothing created.
    let h = handler(RUN_ONLY);
    put_checkpoint(&h.checkpoints, "algo-1", 1200, false);
    let log = MemoryLog::default();
    let handled = handle(&h, TERMINATE, &log).await.unwrap();
    assert_eq!(handled.outcome, Outcome::Recorded);
    assert_eq!(h.ledger.keys(), [RECORD_KEY]);
    assert_eq!(h.jobs.calls.total(), 0);
    assert_eq!(h.events.calls.total(), 0);
    assert!(h
        .checkpoints
        .gets
        .lock()
        .unwrap()
        .iter()
        .all(|k| k.ends_with("manifest.json")));
    log.decision(1);

    // A continue-on that is no s3:// template: the plan goes to the user's automation.
    let h = handler(RUN_PLANNED);
    put_checkpoint(&h.checkpoints, "algo-1", 1200, false);
    let handled = handle(&h, TERMINATE, &log).await.unwrap();
    assert_eq!(handled.outcome, Outcome::Recorded);
    assert_eq!(h.jobs.calls.total(), 0);
    assert_eq!(
        h.events.detail_types(),
        ["Training Run Continuation Planned"]
    );
    let detail = h.events.detail(0);
    assert_eq!(detail["name"], continuation_name("llm-sft", 1));
    assert_eq!(detail["continue_on"], "on-demand");
    assert_eq!(detail["latest_valid_step"], 1200);
    assert!(detail.get("job_arn").is_none());
    let line = log.decision(2);
    assert!(line["effects"][1]
        .as_str()
        .unwrap()
        .contains("not an s3:// request template"));
}

#[tokio::test]
async fn an_unusable_template_is_a_clear_error_after_the_record() {
    let mut unknown_field: Value = serde_json::from_slice(&template_bytes()).unwrap();
    unknown_field["DebugHookConfig"] = serde_json::json!({"S3OutputPath": "s3://d/"});
    let cases: [(&str, Option<Vec<u8>>, &str); 5] = [
        ("missing", None, "no such object"),
        (
            "too large",
            Some(vec![b' '; MAX_TEMPLATE_BYTES as usize + 10]),
            "larger than",
        ),
        ("not JSON", Some(b"RoleArn: x".to_vec()), "not a supported"),
        (
            "unsupported field",
            Some(serde_json::to_vec(&unknown_field).unwrap()),
            "unknown field `DebugHookConfig`",
        ),
        (
            "no MaxWait",
            Some(br#"{"RoleArn": "r", "AlgorithmSpecification": {}, "OutputDataConfig": {"S3OutputPath": "s3://o/"}, "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30}, "StoppingCondition": {}}"#.to_vec()),
            "MaxWaitTimeInSeconds is required",
        ),
    ];
    for (case, bytes, message) in cases {
        let h = handler(RUN);
        put_checkpoint(&h.checkpoints, "algo-1", 1200, false);
        if let Some(bytes) = &bytes {
            put_template(&h, bytes);
        }
        let log = MemoryLog::default();
        let err = handle(&h, TERMINATE, &log).await.unwrap_err();
        assert!(
            matches!(&err, HandlerError::Template { uri, .. } if uri == TEMPLATE_URI),
            "{case}: {err}"
        );
        assert_eq!(err.error_type(), "InvalidTemplate");
        assert!(!err.is_transient());
        let text = err.to_string();
        assert!(
            text.contains(TEMPLATE_URI) && text.contains(message),
            "{case}: {text}"
        );
        assert!(text.contains("redrive"), "{case}");
        // The interruption is recorded first; nothing is created or announced.
        assert_eq!(h.ledger.keys(), [RECORD_KEY], "{case}");
        assert_eq!(h.jobs.calls.total(), 0, "{case}");
        assert_eq!(h.events.calls.total(), 0, "{case}");
        let line = log.decision(1);
        assert_eq!(line["outcome"], "failed");
        assert_eq!(line["retryable"], false);

        // Fixed and redriven: created, the record untouched.
        put_template(&h, &template_bytes());
        let handled = handle(&h, TERMINATE, &log).await.unwrap();
        assert_eq!(handled.outcome, Outcome::Relaunched, "{case}");
        assert_eq!(h.ledger.keys(), [RECORD_KEY]);
        assert_eq!(h.jobs.created_names().len(), 1);
    }

    // A tag naming a bucket but no object.
    let h = handler(&[
        ("spotcheck:run", "llm-sft"),
        ("spotcheck:continue-on", "s3://templates/runs/"),
    ]);
    let err = handle(&h, TERMINATE, &MemoryLog::default())
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        HandlerError::Template {
            problem: TemplateError::BadUri,
            ..
        }
    ));
    assert_eq!(h.checkpoints.calls.total(), 0);
}

#[tokio::test]
async fn template_reads_and_creation_fail_like_any_aws_call() {
    let cases = [
        ("GetObject", ErrorKind::AccessDenied, false),
        ("GetObject", ErrorKind::Transient, true),
        ("CreateTrainingJob", ErrorKind::Transient, true),
        ("CreateTrainingJob", ErrorKind::AccessDenied, false),
        ("CreateTrainingJob", ErrorKind::Rejected, false),
    ];
    for (operation, kind, transient) in cases {
        let h = continuable();
        if operation == "GetObject" {
            // The checkpoint manifest's GET goes first, the template's second.
            h.checkpoints.fail.inject_after(operation, 1, kind);
        } else {
            h.jobs.fail.inject(operation, kind);
        }
        let log = MemoryLog::default();
        let err = handle(&h, TERMINATE, &log).await.unwrap_err();
        match &err {
            HandlerError::Transient(e) | HandlerError::Refused(e) => {
                assert_eq!((e.operation, e.kind), (operation, kind), "{err}")
            }
            other => panic!("{operation} {kind:?}: {other}"),
        }
        assert_eq!(err.is_transient(), transient, "{operation} {kind:?}");
        assert_eq!(h.ledger.keys(), [RECORD_KEY]);
        assert!(h.jobs.created_names().is_empty());
        assert_eq!(h.events.calls.total(), 0);
        assert_eq!(log.decision(1)["retryable"], transient);

        let handled = handle(&h, TERMINATE, &log).await.unwrap();
        assert_eq!(handled.outcome, Outcome::Relaunched, "{operation} {kind:?}");
        assert_eq!(h.jobs.created_names().len(), 1);
        assert_eq!(h.events.detail_types(), ["Training Run Continued"]);
    }

    // PutEvents fails after the creation: the retry finds the job and announces it once.
    let h = continuable();
    h.events.fail.inject("PutEvents", ErrorKind::Transient);
    let log = MemoryLog::default();
    assert!(handle(&h, TERMINATE, &log)
        .await
        .unwrap_err()
        .is_transient());
    let handled = handle(&h, TERMINATE, &log).await.unwrap();
    assert_eq!(handled.outcome, Outcome::AlreadyRelaunched);
    assert_eq!(h.jobs.created_names().len(), 1);
    assert_eq!(h.events.detail_types(), ["Training Run Continued"]);
}

#[tokio::test]
async fn denied_checkpoint_reads_are_recorded_and_the_run_still_continues() {
    let h = continuable();
    h.checkpoints
        .fail
        .inject("ListObjectsV2", ErrorKind::AccessDenied);
    let handled = handle(&h, TERMINATE, &MemoryLog::default()).await.unwrap();
    assert_eq!(handled.outcome, Outcome::Relaunched);
    // Recorded as in the SageMaker handler, and in the interruption record.
    let unavailable = h
        .ledger
        .json("checkpoint-validations/llm-sft/unavailable.json");
    assert_eq!(unavailable["uri"], URI);
    let record = h.ledger.json(RECORD_KEY);
    assert!(record["checkpoint_error"]
        .as_str()
        .unwrap()
        .contains("AccessDenied"));
    // The step is unknown, so the job does not claim one.
    let request = h.jobs.only_created();
    assert!(request
        .tags()
        .iter()
        .all(|t| t.key.as_deref() != Some("spotcheck:resume-step")));
    let detail = h.events.detail(0);
    assert!(detail["checkpoint_error"]
        .as_str()
        .unwrap()
        .contains("AccessDenied"));
    assert_eq!(detail["latest_valid_step"], Value::Null);
}

#[tokio::test]
async fn rebalance_is_advisory_and_skips_validation_and_continuation() {
    let h = continuable();
    let log = MemoryLog::default();
    let handled = handle(&h, "ec2-rebalance-recommendation.json", &log)
        .await
        .unwrap();
    assert_eq!(handled.outcome, Outcome::Recorded);
    assert_eq!(h.checkpoints.calls.total(), 0);
    assert_eq!(h.jobs.calls.total(), 0);
    let record = h.ledger.json(&h.ledger.keys()[0]);
    assert_eq!(record["kind"], "rebalance_recommendation");
    assert!(h.events.detail_types().is_empty());
    log.decision(1);
}

#[tokio::test]
async fn stop_and_hibernate_are_recorded_without_continuation() {
    for (fixture, action) in [
        ("ec2-spot-interruption-stop.json", "stop"),
        ("ec2-spot-interruption-hibernate.json", "hibernate"),
    ] {
        let h = continuable();
        let log = MemoryLog::default();
        let handled = handle(&h, fixture, &log).await.unwrap();
        assert_eq!(handled.outcome, Outcome::Recorded);
        let record = h.ledger.json(&h.ledger.keys()[0]);
        assert_eq!(record["interruption"]["action"], action);
        assert_eq!(record["interruption"]["continuation"], Value::Null);
        assert_eq!(h.jobs.calls.total(), 0, "{fixture}");
        assert!(h.events.detail_types().is_empty());
        let line = log.decision(1);
        assert!(line["reason"].as_str().unwrap().contains("would run twice"));
    }
}

#[tokio::test]
async fn untagged_instance_is_ignored_and_transient_tag_reads_retried() {
    let h = handler(&[]);
    let log = MemoryLog::default();
    let handled = handle(&h, TERMINATE, &log).await.unwrap();
    assert_eq!(handled.outcome, Outcome::Ignored);
    assert!(h.ledger.keys().is_empty());
    assert_eq!(h.checkpoints.calls.total(), 0);

    h.instances
        .fail
        .inject("DescribeTags", ErrorKind::Transient);
    let err = handle(&h, TERMINATE, &log).await.unwrap_err();
    assert!(matches!(err, HandlerError::Transient(_)));
    assert_eq!(log.decision(2)["retryable"], true);
}

#[tokio::test]
async fn malformed_and_irrelevant_events_are_acknowledged_without_a_call() {
    let h = handler(RUN);
    let log = MemoryLog::default();
    let cases = [
        ("malformed-ec2-missing-instance-id.json", Outcome::Malformed),
        ("malformed-truncated.json", Outcome::Malformed),
        ("sagemaker-stopped-maxwait.json", Outcome::Irrelevant),
        ("unrelated-ec2-state-change.json", Outcome::Irrelevant),
        ("unrelated-scheduled-event.json", Outcome::Irrelevant),
    ];
    for (i, (fixture, outcome)) in cases.iter().enumerate() {
        let handled = handle(&h, fixture, &log).await.unwrap();
        assert_eq!(handled.outcome, *outcome, "{fixture}");
        assert_eq!(handled.decision, None);
        log.decision(i + 1);
    }
    let metrics = log.metric_lines();
    assert_eq!(metrics.len(), 2, "the two malformed events are counted");
    assert!(metrics.iter().all(|m| m["Function"] == "ec2-spot-events"));
    assert_eq!(h.instances.calls.total(), 0);
    assert_eq!(h.jobs.calls.total(), 0);
    assert_eq!(h.checkpoints.calls.total(), 0);
    assert_eq!(h.ledger.calls.total(), 0);
    assert_eq!(h.events.calls.total(), 0);
}

#[tokio::test]
async fn a_corrupt_checkpoint_on_a_warning_is_recorded_and_announced() {
    let h = continuable();
    put_checkpoint(&h.checkpoints, "algo-1", 1300, false);
    h.checkpoints.put(
        BUCKET,
        "runs/train/algo-1/step-000000001300/model.safetensors",
        b"model@9999",
    );
    let log = MemoryLog::default();
    handle(&h, TERMINATE, &log).await.unwrap();
    let validation_key = "checkpoint-validations/llm-sft/algo-1_step-000000001300.json";
    assert_eq!(h.ledger.keys(), [validation_key, RECORD_KEY]);
    let record = h.ledger.json(validation_key);
    assert_eq!(record["kind"], "checkpoint_validation_failed");
    assert_eq!(record["checkpoints"][0]["status"], "corrupt");
    assert_eq!(record["summary"]["latest_valid_step"], 1200);
    assert_eq!(
        h.events.detail_types(),
        ["Checkpoint Validation Failed", "Training Run Continued"]
    );
    assert_eq!(h.events.detail(0)["job_name"], "llm-sft");
    assert_eq!(h.events.detail(0)["latest_valid_step"], 1200);
    // The continuation resumes from the valid checkpoint, not the corrupt one.
    let request = h.jobs.only_created();
    assert!(request.tags().iter().any(|t| {
        t.key.as_deref() == Some("spotcheck:resume-step") && t.value.as_deref() == Some("1200")
    }));
    log.decision(1);
}

#[tokio::test]
async fn transient_failures_are_retried_and_refusals_dead_lettered() {
    for operation in ["ListObjectsV2", "HeadObject", "PutObject", "PutEvents"] {
        let h = handler(RUN_PLANNED);
        put_checkpoint(&h.checkpoints, "algo-1", 1200, false);
        match operation {
            "PutObject" => h.ledger.fail.inject(operation, ErrorKind::Transient),
            "PutEvents" => h.events.fail.inject(operation, ErrorKind::Transient),
            _ => h.checkpoints.fail.inject(operation, ErrorKind::Transient),
        }
        let log = MemoryLog::default();
        let err = handle(&h, TERMINATE, &log).await.unwrap_err();
        assert!(err.is_transient(), "{operation}: {err}");
        assert!(h.events.detail_types().is_empty(), "{operation}");
        assert_eq!(log.decision(1)["retryable"], true);
        handle(&h, TERMINATE, &log).await.unwrap();
        assert_eq!(h.ledger.keys(), [RECORD_KEY], "{operation}: recorded once");
        assert_eq!(h.events.detail_types().len(), 1, "{operation}");
        log.decision(2);
    }
    let h = handler(RUN_PLANNED);
    h.ledger.fail.inject("PutObject", ErrorKind::AccessDenied);
    let log = MemoryLog::default();
    let err = handle(&h, TERMINATE, &log).await.unwrap_err();
    assert!(matches!(err, HandlerError::Refused(_)));
    assert_eq!(log.decision(1)["retryable"], false);
}

#[tokio::test]
async fn without_a_valid_checkpoint_the_policy_decides_whether_the_run_continues() {
    let name = continuation_name("llm-sft", 1);
    let give_up_key = format!("give-ups/llm-sft/{name}.json");

    // Default policy (restart-from-scratch): continued, with no resume step.
    let h = handler(RUN);
    put_template(&h, &template_bytes());
    let log = MemoryLog::default();
    let handled = handle(&h, TERMINATE, &log).await.unwrap();
    assert_eq!(handled.outcome, Outcome::Relaunched);
    let request = h.jobs.only_created();
    let tags: Tags = request
        .tags()
        .iter()
        .map(|t| (t.key.clone().unwrap(), t.value.clone().unwrap()))
        .collect();
    assert_eq!(tags.get("spotcheck:resume-step"), None);

    // The instance's tag says give up: recorded and announced, nothing created.
    let strict: Vec<(&str, &str)> = RUN
        .iter()
        .copied()
        .chain([("spotcheck:without-checkpoint", "give-up")])
        .collect();
    let h = handler(&strict);
    put_template(&h, &template_bytes());
    let log = MemoryLog::default();
    let handled = handle(&h, TERMINATE, &log).await.unwrap();
    assert_eq!(handled.outcome, Outcome::GaveUp);
    assert_eq!(h.jobs.calls.get("CreateTrainingJob"), 0);
    assert!(
        h.checkpoints.gets.lock().unwrap().is_empty(),
        "template not even read"
    );
    assert_eq!(
        h.ledger.keys(),
        [give_up_key.clone(), RECORD_KEY.to_owned()]
    );
    let record = h.ledger.json(&give_up_key);
    assert_eq!(record["kind"], "recovery_gave_up");
    assert_eq!(record["cause"], "no_checkpoint");
    assert_eq!(record["root"], "llm-sft");
    assert!(
        record["reason"]
            .as_str()
            .unwrap()
            .contains("not continued: no checkpoint is valid"),
        "{record}"
    );
    assert_eq!(h.events.detail_types(), ["Recovery Gave Up"]);
    assert_eq!(h.events.detail(0)["job_name"], name.as_str());
    let line = log.decision(1);
    assert_eq!(line["outcome"], "gave_up");
    assert!(line["effects"][1]
        .as_str()
        .unwrap()
        .contains("no checkpoint is valid and policy without_checkpoint = give-up"));

    // Redelivered: the same record, still nothing created.
    let again = handle(&h, TERMINATE, &log).await.unwrap();
    assert_eq!(again.outcome, Outcome::GaveUp);
    assert_eq!(h.ledger.keys(), [give_up_key, RECORD_KEY.to_owned()]);
    assert_eq!(h.jobs.calls.get("CreateTrainingJob"), 0);
}

#[tokio::test]
async fn a_finished_run_is_not_continued() {
    let h = handler(RUN);
    put_template(&h, &template_bytes());
    put_checkpoint(&h.checkpoints, "algo-1", 5000, true);
    let log = MemoryLog::default();
    let handled = handle(&h, TERMINATE, &log).await.unwrap();
    assert_eq!(handled.outcome, Outcome::Recorded);
    assert_eq!(h.jobs.calls.get("CreateTrainingJob"), 0);
    assert_eq!(h.ledger.keys(), [RECORD_KEY]);
    assert!(h.events.detail_types().is_empty());
    let line = log.decision(1);
    assert!(line["effects"][1]
        .as_str()
        .unwrap()
        .contains("marks training finished"));
}

/// The warning for another instance of `RUN`.
fn terminate_for(instance: &str) -> Vec<u8> {
    let mut value: Value = serde_json::from_slice(&event(TERMINATE)).unwrap();
    value["detail"]["instance-id"] = Value::from(instance);
    value["id"] = Value::from(format!("warning-for-{instance}"));
    serde_json::to_vec(&value).unwrap()
}

fn tag_instance(h: &Handler, instance: &str, tags: &[(&str, &str)]) {
    h.instances
        .tags
        .lock()
        .unwrap()
        .insert(instance.into(), tags.iter().copied().collect());
}

/// Regression: the continuation was named from the instance, so a reclaimed multi-instance
/// run (or an Auto Scaling group's replacement) became one SageMaker job per instance.
#[tokio::test]
async fn the_instances_of_one_run_continue_it_once_and_the_next_generation_again() {
    let h = continuable();
    for other in ["i-0000000000000000b", "i-0000000000000000c"] {
        tag_instance(&h, other, RUN);
    }
    let log = MemoryLog::default();
    let first = handle(&h, TERMINATE, &log).await.unwrap();
    assert_eq!(first.outcome, Outcome::Relaunched);
    for other in ["i-0000000000000000b", "i-0000000000000000c"] {
        let handled = h.handle(&terminate_for(other), now(), &log).await.unwrap();
        assert_eq!(handled.outcome, Outcome::AlreadyRelaunched, "{other}");
        assert_eq!(plan_of(&handled).name, plan_of(&first).name);
    }
    let gen1 = continuation_name("llm-sft", 1);
    assert_eq!(
        h.jobs.created_names(),
        [gen1.as_str()],
        "one job for the run"
    );
    // Each instance's interruption is recorded on its own.
    assert_eq!(h.ledger.keys().len(), 3);

    // The continued run's own instances carry generation 1: their reclaim continues it again.
    let next: Vec<(&str, &str)> = RUN
        .iter()
        .copied()
        .chain([("spotcheck:generation", "1")])
        .collect();
    tag_instance(&h, "i-0000000000000000d", &next);
    let handled = h
        .handle(&terminate_for("i-0000000000000000d"), now(), &log)
        .await
        .unwrap();
    assert_eq!(handled.outcome, Outcome::Relaunched);
    let gen2 = continuation_name("llm-sft", 2);
    assert_eq!(h.jobs.created_names(), [gen1, gen2.clone()]);
    let request = h.jobs.created.lock().unwrap()[1].clone();
    assert!(request.tags().iter().any(|t| {
        t.key.as_deref() == Some("spotcheck:generation") && t.value.as_deref() == Some("2")
    }));
}

/// Regression: ResourceInUse was "already done" even when the name belonged to another job.
#[tokio::test]
async fn a_continuation_name_held_by_another_job_is_a_collision() {
    let h = continuable();
    let name = continuation_name("llm-sft", 1);
    let squatter =
        aws_sdk_sagemaker::operation::describe_training_job::DescribeTrainingJobOutput::builder()
            .training_job_name(&name)
            .training_job_arn(arn(&name))
            .build();
    // The same run but an earlier generation's job, say, renamed by hand: not this plan's.
    h.jobs.add(
        squatter,
        &[("spotcheck:enabled", "true"), ("spotcheck:run", "llm-sft")],
    );
    let log = MemoryLog::default();
    let handled = handle(&h, TERMINATE, &log).await.unwrap();
    assert_eq!(handled.outcome, Outcome::GaveUp);
    assert!(h.jobs.created_names().is_empty());
    let key = format!("give-ups/llm-sft/{name}.json");
    assert_eq!(h.ledger.keys(), [key.clone(), RECORD_KEY.to_owned()]);
    let record = h.ledger.json(&key);
    assert_eq!(record["cause"], "name_collision");
    assert!(
        record["reason"]
            .as_str()
            .unwrap()
            .contains("its spotcheck:generation is absent"),
        "{record}"
    );
    assert_eq!(h.events.detail_types(), ["Recovery Gave Up"]);
    assert_eq!(log.decision(1)["outcome"], "gave_up");
}

/// Regression: an instance's spotcheck:checkpoint-uri could name any bucket, and the
/// continuation job would sync there with the training role's access.
#[tokio::test]
async fn a_checkpoint_uri_outside_the_stacks_location_is_refused_and_recorded() {
    let h = continuable();
    let mut h = h;
    h.config.checkpoint_scope = Some(spotcheck_control::ec2::CheckpointScope {
        bucket: "somewhere-else".into(),
        prefix: "checkpoints/".into(),
    });
    let log = MemoryLog::default();
    let handled = handle(&h, TERMINATE, &log).await.unwrap();
    assert_eq!(handled.outcome, Outcome::GaveUp);
    assert_eq!(h.jobs.calls.total(), 0, "nothing created");
    assert!(
        h.checkpoints.gets.lock().unwrap().is_empty(),
        "neither checkpoints nor template read"
    );
    assert_eq!(h.checkpoints.calls.get("ListObjectsV2"), 0);
    let name = continuation_name("llm-sft", 1);
    let give_up = h.ledger.json(&format!("give-ups/llm-sft/{name}.json"));
    assert_eq!(give_up["cause"], "not_permitted");
    assert!(
        give_up["reason"]
            .as_str()
            .unwrap()
            .contains("outside the stack's checkpoint location s3://somewhere-else/checkpoints/"),
        "{give_up}"
    );
    let record = h.ledger.json(RECORD_KEY);
    assert!(record["checkpoint_error"]
        .as_str()
        .unwrap()
        .contains("not read"));
    assert_eq!(h.events.detail_types(), ["Recovery Gave Up"]);

    // Inside the location: continued as before.
    let mut h = continuable();
    let (bucket, prefix) = URI.strip_prefix("s3://").unwrap().split_once('/').unwrap();
    h.config.checkpoint_scope = Some(spotcheck_control::ec2::CheckpointScope {
        bucket: bucket.into(),
        prefix: prefix.into(),
    });
    assert_eq!(
        handle(&h, TERMINATE, &MemoryLog::default())
            .await
            .unwrap()
            .outcome,
        Outcome::Relaunched
    );
}

#[tokio::test]
async fn a_template_on_an_instance_type_the_operator_does_not_allow_is_refused() {
    let mut h = continuable();
    h.config.policy.allowed_instance_types = vec!["ml.g5.48xlarge".into()];
    let log = MemoryLog::default();
    let handled = handle(&h, TERMINATE, &log).await.unwrap();
    assert_eq!(handled.outcome, Outcome::GaveUp);
    assert_eq!(h.jobs.calls.get("CreateTrainingJob"), 0);
    let name = continuation_name("llm-sft", 1);
    let give_up = h.ledger.json(&format!("give-ups/llm-sft/{name}.json"));
    assert_eq!(give_up["cause"], "not_permitted");
    assert!(give_up["reason"]
        .as_str()
        .unwrap()
        .contains("the operator allows only ml.g5.48xlarge"));
}
