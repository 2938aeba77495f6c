//! The EC2 handler over fakes: instance tags → run, record, validate, continuation event.

use spotcheck_aws::{Ec2Handler, ErrorKind, HandlerConfig, HandlerError, Outcome};
use spotcheck_control::naming::continuation_name;
use spotcheck_control::{Policy, Tags};

use crate::checkpoints::{put_checkpoint, URI};
use crate::fakes::*;

const INSTANCE: &str = "i-0b1c2d3e4f5a6b7c8";

fn handler(tags: &[(&str, &str)]) -> Ec2Handler<FakeInstances, FakeStore, FakeLedger, FakeEvents> {
    let h = Ec2Handler {
        instances: FakeInstances::default(),
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

const RUN: &[(&str, &str)] = &[
    ("spotcheck:run", "llm-sft"),
    ("spotcheck:checkpoint-uri", URI),
    ("spotcheck:continue-on", "s3://templates/llm-sft.json"),
];

#[tokio::test]
async fn warning_is_recorded_validated_and_continued() {
    let h = handler(RUN);
    put_checkpoint(&h.checkpoints, "algo-1", 1200, false);
    let log = MemoryLog::default();
    let bytes = event("ec2-spot-interruption-terminate.json");
    let handled = h.handle(&bytes, now(), &log).await.unwrap();
    assert_eq!(handled.outcome, Outcome::Recorded);
    let keys = h.ledger.keys();
    assert_eq!(
        keys,
        ["interruptions/runs/llm-sft/i-0b1c2d3e4f5a6b7c8/spot-itn-7de15f09-82c4-4fcc-a493-c1af089e97a2.json"]
    );
    let record = h.ledger.json(&keys[0]);
    assert_eq!(record["kind"], "spot_interruption_warning");
    assert_eq!(record["latest_valid_step"], 1200);
    assert_eq!(
        h.events.detail_types(),
        ["Training Run Continuation Planned"]
    );
    let detail: serde_json::Value =
        serde_json::from_str(&h.events.published.lock().unwrap()[0].detail).unwrap();
    assert_eq!(detail["name"], continuation_name("llm-sft", INSTANCE));
    assert_eq!(detail["latest_valid_step"], 1200);
    assert_eq!(detail["continue_on"], "s3://templates/llm-sft.json");

    // A redelivery writes nothing new and announces again (at least once).
    h.handle(&bytes, now(), &log).await.unwrap();
    assert_eq!(h.ledger.keys().len(), 1);
    assert_eq!(h.events.detail_types().len(), 2);
    assert_eq!(log.decisions().len(), 2);
}

#[tokio::test]
async fn denied_checkpoint_reads_are_recorded_not_fatal() {
    let h = handler(RUN);
    h.checkpoints
        .fail
        .inject("ListObjectsV2", ErrorKind::AccessDenied);
    let handled = h
        .handle(
            &event("ec2-spot-interruption-terminate.json"),
            now(),
            &MemoryLog::default(),
        )
        .await
        .unwrap();
    assert_eq!(handled.outcome, Outcome::Recorded);
    let record = h.ledger.json(&h.ledger.keys()[0]);
    assert!(record["checkpoint_error"]
        .as_str()
        .unwrap()
        .contains("AccessDenied"));
    assert_eq!(
        h.events.detail_types(),
        ["Training Run Continuation Planned"]
    );
}

#[tokio::test]
async fn rebalance_is_advisory_and_skips_validation() {
    let h = handler(RUN);
    let handled = h
        .handle(
            &event("ec2-rebalance-recommendation.json"),
            now(),
            &MemoryLog::default(),
        )
        .await
        .unwrap();
    assert_eq!(handled.outcome, Outcome::Recorded);
    assert_eq!(h.checkpoints.calls.get("ListObjectsV2"), 0);
    let record = h.ledger.json(&h.ledger.keys()[0]);
    assert_eq!(record["kind"], "rebalance_recommendation");
    assert!(h.events.detail_types().is_empty());
}

#[tokio::test]
async fn stop_action_is_recorded_without_continuation() {
    let h = handler(RUN);
    put_checkpoint(&h.checkpoints, "algo-1", 1200, false);
    h.handle(
        &event("ec2-spot-interruption-stop.json"),
        now(),
        &MemoryLog::default(),
    )
    .await
    .unwrap();
    assert_eq!(h.ledger.keys().len(), 1);
    assert!(h.events.detail_types().is_empty());
}

#[tokio::test]
async fn untagged_instance_is_ignored_and_transient_tag_reads_retried() {
    let h = handler(&[]);
    let log = MemoryLog::default();
    let bytes = event("ec2-spot-interruption-terminate.json");
    let handled = h.handle(&bytes, now(), &log).await.unwrap();
    assert_eq!(handled.outcome, Outcome::Ignored);
    assert!(h.ledger.keys().is_empty());

    h.instances
        .fail
        .inject("DescribeTags", ErrorKind::Transient);
    let err = h.handle(&bytes, now(), &log).await.unwrap_err();
    assert!(matches!(err, HandlerError::Transient(_)));
    assert_eq!(log.decisions().len(), 2);
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
        let handled = h.handle(&event(fixture), now(), &log).await.unwrap();
        assert_eq!(handled.outcome, *outcome, "{fixture}");
        assert_eq!(handled.decision, None);
        log.decision(i + 1);
    }
    assert_eq!(h.instances.calls.total(), 0);
    assert_eq!(h.checkpoints.calls.total(), 0);
    assert_eq!(h.ledger.calls.total(), 0);
    assert_eq!(h.events.calls.total(), 0);
}

#[tokio::test]
async fn hibernate_is_recorded_without_continuation() {
    let h = handler(RUN);
    put_checkpoint(&h.checkpoints, "algo-1", 1200, false);
    let log = MemoryLog::default();
    let handled = h
        .handle(&event("ec2-spot-interruption-hibernate.json"), now(), &log)
        .await
        .unwrap();
    assert_eq!(handled.outcome, Outcome::Recorded);
    let record = h.ledger.json(&h.ledger.keys()[0]);
    assert_eq!(record["kind"], "spot_interruption_warning");
    assert_eq!(record["interruption"]["action"], "hibernate");
    assert_eq!(
        record["interruption"]["continuation"],
        serde_json::Value::Null
    );
    assert!(h.events.detail_types().is_empty());
    let line = log.decision(1);
    assert!(line["reason"].as_str().unwrap().contains("would run twice"));
}

#[tokio::test]
async fn a_corrupt_checkpoint_on_a_warning_is_recorded_and_announced() {
    let h = handler(RUN);
    put_checkpoint(&h.checkpoints, "algo-1", 1200, false);
    put_checkpoint(&h.checkpoints, "algo-1", 1300, false);
    h.checkpoints.put(
        crate::checkpoints::BUCKET,
        "runs/train/algo-1/step-000000001300/model.safetensors",
        b"model@9999",
    );
    let log = MemoryLog::default();
    let bytes = event("ec2-spot-interruption-terminate.json");
    h.handle(&bytes, now(), &log).await.unwrap();
    let validation_key =
        "checkpoint-validations/llm-sft/spot-itn-7de15f09-82c4-4fcc-a493-c1af089e97a2.json";
    assert!(h.ledger.keys().contains(&validation_key.to_owned()));
    let record = h.ledger.json(validation_key);
    assert_eq!(record["kind"], "checkpoint_validation_failed");
    assert_eq!(record["checkpoints"][0]["status"], "corrupt");
    assert_eq!(record["summary"]["latest_valid_step"], 1200);
    let types = h.events.detail_types();
    assert!(types.contains(&"Checkpoint Validation Failed"), "{types:?}");
    let i = types
        .iter()
        .position(|t| *t == "Checkpoint Validation Failed")
        .unwrap();
    assert_eq!(h.events.detail(i)["job_name"], "llm-sft");
    assert_eq!(h.events.detail(i)["latest_valid_step"], 1200);
    log.decision(1);
}

#[tokio::test]
async fn transient_failures_are_retried_and_refusals_dead_lettered() {
    let bytes = event("ec2-spot-interruption-terminate.json");
    for operation in ["ListObjectsV2", "HeadObject", "PutObject", "PutEvents"] {
        let h = handler(RUN);
        put_checkpoint(&h.checkpoints, "algo-1", 1200, false);
        match operation {
            "PutObject" => h.ledger.fail.inject(operation, ErrorKind::Transient),
            "PutEvents" => h.events.fail.inject(operation, ErrorKind::Transient),
            _ => h.checkpoints.fail.inject(operation, ErrorKind::Transient),
        }
        let log = MemoryLog::default();
        let err = h.handle(&bytes, now(), &log).await.unwrap_err();
        assert!(err.is_transient(), "{operation}: {err}");
        assert!(h.events.detail_types().is_empty(), "{operation}");
        assert_eq!(log.decision(1)["retryable"], true);
        h.handle(&bytes, now(), &log).await.unwrap();
        assert_eq!(h.ledger.keys().len(), 1, "{operation}: recorded once");
        assert_eq!(h.events.detail_types().len(), 1, "{operation}");
        log.decision(2);
    }
    let h = handler(RUN);
    h.ledger.fail.inject("PutObject", ErrorKind::AccessDenied);
    let log = MemoryLog::default();
    let err = h.handle(&bytes, now(), &log).await.unwrap_err();
    assert!(matches!(err, HandlerError::Refused(_)));
    assert_eq!(log.decision(1)["retryable"], false);
}
