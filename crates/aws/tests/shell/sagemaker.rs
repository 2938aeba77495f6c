//! The SageMaker handler over fakes: relaunch once, stale, not opted in, retries, savings,
//! lineages, ledger keys, one decision line per invocation.

use serde_json::{json, Value};
use spotcheck_aws::{ErrorKind, HandlerConfig, HandlerError, Outcome, SageMakerHandler};
use spotcheck_control::naming::relaunch_name;
use spotcheck_control::Policy;

use crate::checkpoints::{put_checkpoint, URI};
use crate::fakes::*;

type Handler = SageMakerHandler<FakeJobs, FakeStore, FakeLedger, FakeEvents>;

fn handler() -> Handler {
    SageMakerHandler {
        jobs: FakeJobs::default(),
        checkpoints: FakeStore::default(),
        ledger: FakeLedger::default(),
        events: FakeEvents::default(),
        config: HandlerConfig::new(Policy::default()),
    }
}

const ENABLED: &[(&str, &str)] = &[("spotcheck:enabled", "true"), ("team", "vision")];

/// resnet50-spot, Stopped/MaxWaitTimeExceeded after training: the event's detail plus what only
/// Describe has (spot, MaxWait, CheckpointConfig), and a valid checkpoint at step 1200.
fn spot_lost() -> Handler {
    let h = handler();
    let mut job = detail("sagemaker-stopped-maxwait.json");
    job["EnableManagedSpotTraining"] = json!(true);
    job["StoppingCondition"]["MaxWaitTimeInSeconds"] = json!(10_800);
    job["CheckpointConfig"] = json!({ "S3Uri": URI });
    h.jobs.add(describe_from_json(&job), ENABLED);
    put_checkpoint(&h.checkpoints, "algo-1", 1200, false);
    h
}

#[tokio::test]
async fn duplicate_event_relaunches_once() {
    let h = spot_lost();
    let log = MemoryLog::default();
    let bytes = event("sagemaker-stopped-maxwait.json");
    let first = h.handle(&bytes, now(), &log).await.unwrap();
    assert_eq!(first.outcome, Outcome::Relaunched);
    let second = h.handle(&bytes, now(), &log).await.unwrap();
    assert_eq!(second.outcome, Outcome::AlreadyRelaunched);
    assert_eq!(first.decision, second.decision, "same decision, same name");

    let created = h.jobs.created.lock().unwrap();
    assert_eq!(created.len(), 1);
    let request = &created[0];
    assert_eq!(
        request.training_job_name(),
        Some(relaunch_name("resnet50-spot", 2).as_str())
    );
    assert_eq!(
        request
            .checkpoint_config()
            .and_then(|c| c.s3_uri.as_deref()),
        Some(URI)
    );
    let tags: Vec<_> = request
        .tags()
        .iter()
        .map(|t| (t.key.clone().unwrap(), t.value.clone().unwrap()))
        .collect();
    for expected in [
        ("spotcheck:root", "resnet50-spot"),
        ("spotcheck:attempt", "2"),
        ("spotcheck:parent", "resnet50-spot"),
        ("spotcheck:resume-step", "1200"),
        ("team", "vision"),
    ] {
        assert!(
            tags.contains(&(expected.0.into(), expected.1.into())),
            "{expected:?} in {tags:?}"
        );
    }
    // Events: at least once (the second delivery announces again).
    assert_eq!(
        h.events.detail_types(),
        ["Training Job Relaunched", "Training Job Relaunched"]
    );
    let lines = log.decisions();
    assert_eq!(lines.len(), 2, "one line per invocation");
    assert_eq!(lines[0]["action"], "relaunch");
    assert_eq!(lines[0]["outcome"], "relaunched");
    assert_eq!(lines[1]["outcome"], "already_relaunched");
    assert_eq!(
        lines[0]["checkpoints"]["summary"]["latest_valid_step"],
        1200
    );
}

#[tokio::test]
async fn stale_event_does_nothing() {
    let h = spot_lost();
    let log = MemoryLog::default();
    // An InProgress/Interrupted event delivered after the job stopped.
    let handled = h
        .handle(&event("sagemaker-inprogress-interrupted.json"), now(), &log)
        .await
        .unwrap();
    assert_eq!(handled.outcome, Outcome::Ignored);
    assert!(handled.decision.unwrap().reason.contains("stale"));
    assert_eq!(h.jobs.calls.get("CreateTrainingJob"), 0);
    assert!(h.ledger.keys().is_empty());
    assert!(h.events.detail_types().is_empty());
    assert_eq!(log.decisions().len(), 1);
}

#[tokio::test]
async fn access_denied_on_describe_is_an_acknowledged_no_op() {
    let h = spot_lost();
    h.jobs
        .fail
        .inject("DescribeTrainingJob", ErrorKind::AccessDenied);
    let log = MemoryLog::default();
    let handled = h
        .handle(&event("sagemaker-stopped-maxwait.json"), now(), &log)
        .await
        .unwrap();
    assert_eq!(handled.outcome, Outcome::NotOptedIn);
    assert_eq!(h.jobs.calls.get("CreateTrainingJob"), 0);
    assert!(h.ledger.keys().is_empty());
    assert_eq!(log.decisions()[0]["outcome"], "not_opted_in");
}

#[tokio::test]
async fn job_without_the_opt_in_tag_is_never_described() {
    let h = handler();
    let job = detail("sagemaker-not-enabled.json");
    h.jobs.add(describe_from_json(&job), &[("team", "x")]);
    let log = MemoryLog::default();
    let handled = h
        .handle(&event("sagemaker-not-enabled.json"), now(), &log)
        .await
        .unwrap();
    assert_eq!(handled.outcome, Outcome::Ignored);
    assert_eq!(h.jobs.calls.get("DescribeTrainingJob"), 0);
}

#[tokio::test]
async fn transient_failure_is_retryable_and_records_nothing() {
    let h = spot_lost();
    let log = MemoryLog::default();
    let bytes = event("sagemaker-stopped-maxwait.json");
    for operation in [
        "ListTags",
        "DescribeTrainingJob",
        "HeadObject",
        "CreateTrainingJob",
    ] {
        let store_op = operation == "HeadObject";
        if store_op {
            h.checkpoints.fail.inject(operation, ErrorKind::Transient);
        } else {
            h.jobs.fail.inject(operation, ErrorKind::Transient);
        }
        let err = h.handle(&bytes, now(), &log).await.unwrap_err();
        assert!(
            matches!(err, HandlerError::Transient(_)),
            "{operation}: {err}"
        );
        assert!(h.jobs.created.lock().unwrap().is_empty(), "{operation}");
        assert!(h.ledger.keys().is_empty(), "{operation}");
        assert!(h.events.detail_types().is_empty(), "{operation}");
    }
    let lines = log.decisions();
    assert_eq!(lines.len(), 4);
    assert!(lines
        .iter()
        .all(|l| l["outcome"] == "failed" && l["retryable"] == true));
    // The retry that finally gets through relaunches.
    let handled = h.handle(&bytes, now(), &log).await.unwrap();
    assert_eq!(handled.outcome, Outcome::Relaunched);
}

#[tokio::test]
async fn refused_create_is_an_error_for_the_dead_letter_queue() {
    let h = spot_lost();
    h.jobs.fail.inject("CreateTrainingJob", ErrorKind::Rejected);
    let err = h
        .handle(
            &event("sagemaker-stopped-maxwait.json"),
            now(),
            &MemoryLog::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, HandlerError::Refused(_)));
    assert!(!err.is_transient());
    assert!(h.events.detail_types().is_empty());
}

#[tokio::test]
async fn publish_failure_after_the_relaunch_is_retried_without_a_second_job() {
    let h = spot_lost();
    h.events.fail.inject("PutEvents", ErrorKind::Transient);
    let bytes = event("sagemaker-stopped-maxwait.json");
    let log = MemoryLog::default();
    assert!(h.handle(&bytes, now(), &log).await.is_err());
    let handled = h.handle(&bytes, now(), &log).await.unwrap();
    assert_eq!(handled.outcome, Outcome::AlreadyRelaunched);
    assert_eq!(h.jobs.created.lock().unwrap().len(), 1);
    assert_eq!(h.events.detail_types(), ["Training Job Relaunched"]);
}

fn completed(h: &Handler, fixture: &str, tags: &[(&str, &str)]) {
    let mut job = detail(fixture);
    job["EnableManagedSpotTraining"] = json!(true);
    job["TrainingTimeInSeconds"] = json!(3600);
    job["BillableTimeInSeconds"] = json!(1200);
    h.jobs.add(describe_from_json(&job), tags);
}

#[tokio::test]
async fn completed_job_records_savings_once_with_one_metric_line() {
    let h = handler();
    completed(
        &h,
        "sagemaker-completed.json",
        &[("spotcheck:enabled", "true")],
    );
    let log = MemoryLog::default();
    let bytes = event("sagemaker-completed.json");
    for _ in 0..2 {
        let handled = h.handle(&bytes, now(), &log).await.unwrap();
        assert_eq!(handled.outcome, Outcome::Recorded);
    }
    assert_eq!(h.ledger.keys(), ["savings/jobs/xgboost-churn-spot.json"]);
    let record = h.ledger.json("savings/jobs/xgboost-churn-spot.json");
    assert_eq!(record["seconds_saved"], 2400);
    assert_eq!(
        log.metrics(),
        1,
        "the duplicate does not count the savings twice"
    );
    assert_eq!(
        h.events.detail_types(),
        ["Spot Savings Recorded", "Spot Savings Recorded"]
    );
    assert_eq!(
        h.checkpoints.calls.get("ListObjectsV2"),
        0,
        "no validation needed"
    );
}

#[tokio::test]
async fn transient_ledger_failure_records_and_announces_nothing() {
    let h = handler();
    completed(
        &h,
        "sagemaker-completed.json",
        &[("spotcheck:enabled", "true")],
    );
    h.ledger.fail.inject("PutObject", ErrorKind::Transient);
    let log = MemoryLog::default();
    let err = h
        .handle(&event("sagemaker-completed.json"), now(), &log)
        .await
        .unwrap_err();
    assert!(err.is_transient());
    assert!(h.ledger.keys().is_empty());
    assert!(h.events.detail_types().is_empty());
    assert_eq!(log.metrics(), 0);
}

#[tokio::test]
async fn lineage_summary_describes_the_deterministic_names() {
    let h = handler();
    let root = "bert-pretrain";
    let r2 = relaunch_name(root, 2);
    let r3 = relaunch_name(root, 3);
    for (name, training, billable) in [(root.to_owned(), 1000, 300), (r2.clone(), 2000, 600)] {
        let job = json!({
            "TrainingJobName": name,
            "TrainingJobStatus": "Stopped",
            "ResourceConfig": {"InstanceType": "ml.p3.2xlarge", "InstanceCount": 1},
            "TrainingTimeInSeconds": training,
            "BillableTimeInSeconds": billable,
        });
        h.jobs.add(describe_from_json(&job), &[]);
    }
    let mut event_json: Value = serde_json::from_slice(&event("sagemaker-completed.json")).unwrap();
    event_json["detail"]["TrainingJobName"] = json!(r3);
    event_json["detail"]["TrainingJobArn"] = json!(arn(&r3));
    event_json["resources"] = json!([arn(&r3)]);
    let mut job = event_json["detail"].clone();
    job["TrainingTimeInSeconds"] = json!(3000);
    job["BillableTimeInSeconds"] = json!(900);
    h.jobs.add(
        describe_from_json(&job),
        &[
            ("spotcheck:enabled", "true"),
            ("spotcheck:root", root),
            ("spotcheck:attempt", "3"),
        ],
    );
    let log = MemoryLog::default();
    let handled = h
        .handle(&serde_json::to_vec(&event_json).unwrap(), now(), &log)
        .await
        .unwrap();
    assert_eq!(handled.outcome, Outcome::Recorded);
    let summary = h.ledger.json("savings/lineages/bert-pretrain.json");
    assert_eq!(summary["jobs"], json!([root, r2, r3]));
    assert_eq!(summary["training_seconds"], 6000);
    assert_eq!(summary["billable_seconds"], 1800);
    assert_eq!(log.metrics(), 2);
    assert_eq!(
        h.events.detail_types(),
        ["Spot Savings Recorded", "Spot Savings Recorded"]
    );
}

#[tokio::test]
async fn ledger_keys_are_deterministic() {
    use spotcheck_aws::ledger::keys;
    assert_eq!(
        keys::job_interruption("j", 2),
        "interruptions/jobs/j/2.json"
    );
    assert_eq!(
        keys::instance_interruption("run/1", "i-0abc", "spot-itn-7de1"),
        "interruptions/runs/run_1/i-0abc/spot-itn-7de1.json"
    );
    assert_eq!(
        keys::checkpoint_validation("j", "sagemaker-x"),
        "checkpoint-validations/j/sagemaker-x.json"
    );

    // The same interruption, delivered twice, lands on the same key once.
    let h = handler();
    let job = detail("sagemaker-inprogress-interrupted.json");
    h.jobs.add(describe_from_json(&job), ENABLED);
    let bytes = event("sagemaker-inprogress-interrupted.json");
    let log = MemoryLog::default();
    h.handle(&bytes, now(), &log).await.unwrap();
    h.handle(&bytes, now(), &log).await.unwrap();
    assert_eq!(h.ledger.keys(), ["interruptions/jobs/resnet50-spot/1.json"]);
    let effects: Vec<Value> = log
        .decisions()
        .iter()
        .map(|l| l["effects"].clone())
        .collect();
    assert_eq!(
        effects[0],
        json!(["ledger interruptions/jobs/resnet50-spot/1.json: new"])
    );
    assert_eq!(
        effects[1],
        json!(["ledger interruptions/jobs/resnet50-spot/1.json: already present"])
    );
}

#[tokio::test]
async fn corrupt_checkpoint_is_recorded_and_announced_and_skipped() {
    let h = spot_lost();
    put_checkpoint(&h.checkpoints, "algo-1", 1300, false);
    h.checkpoints.put(
        crate::checkpoints::BUCKET,
        "runs/train/algo-1/step-000000001300/model.safetensors",
        b"model@13",
    );
    let log = MemoryLog::default();
    let handled = h
        .handle(&event("sagemaker-stopped-maxwait.json"), now(), &log)
        .await
        .unwrap();
    assert_eq!(handled.outcome, Outcome::Relaunched);
    let validation = handled.checkpoints.unwrap();
    assert_eq!(validation.summary.latest_valid_step, Some(1200));
    assert!(validation.summary.any_corrupt);
    let keys = h.ledger.keys();
    assert_eq!(keys.len(), 1);
    assert!(keys[0].starts_with("checkpoint-validations/resnet50-spot/sagemaker-"));
    assert_eq!(
        h.events.detail_types(),
        ["Training Job Relaunched", "Checkpoint Validation Failed"]
    );
}

#[tokio::test]
async fn give_up_is_recorded_and_announced() {
    let h = handler();
    let job = detail("sagemaker-failed-algorithm.json");
    h.jobs.add(describe_from_json(&job), ENABLED);
    let handled = h
        .handle(
            &event("sagemaker-failed-algorithm.json"),
            now(),
            &MemoryLog::default(),
        )
        .await
        .unwrap();
    assert_eq!(handled.outcome, Outcome::GaveUp);
    let keys = h.ledger.keys();
    assert_eq!(keys.len(), 1);
    assert!(keys[0].starts_with("give-ups/"));
    assert_eq!(h.events.detail_types(), ["Recovery Gave Up"]);
}

#[tokio::test]
async fn malformed_and_irrelevant_events_are_acknowledged() {
    let h = handler();
    let log = MemoryLog::default();
    for (fixture, outcome) in [
        ("malformed-truncated.json", Outcome::Malformed),
        ("malformed-missing-detail-type.json", Outcome::Malformed),
        ("unrelated-scheduled-event.json", Outcome::Irrelevant),
        ("ec2-spot-interruption-terminate.json", Outcome::Irrelevant),
    ] {
        let handled = h.handle(&event(fixture), now(), &log).await.unwrap();
        assert_eq!(handled.outcome, outcome, "{fixture}");
    }
    assert_eq!(log.decisions().len(), 4);
    assert_eq!(h.jobs.calls.get("ListTags"), 0);
}
