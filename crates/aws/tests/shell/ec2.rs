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
