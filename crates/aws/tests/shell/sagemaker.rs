//! The SageMaker handler over fakes: every outcome, the requests it makes, idempotency under
//! duplicate deliveries and retries, and one decision line per invocation.
//!
//! Jobs come from the repository's describe-training-job fixtures (a lineage of `resnet50-spot`:
//! the root stopped on MaxWait, attempt 2 failed for capacity, attempt 3 completed) and events
//! from its EventBridge fixtures.

use serde_json::{json, Value};
use spotcheck_aws::{
    relaunch_request, ErrorKind, Handled, HandlerConfig, HandlerError, Outcome, SageMakerHandler,
};
use spotcheck_control::naming::relaunch_name;
use spotcheck_control::{Action, Policy, RelaunchPlan, Tags};

use crate::checkpoints::{put_checkpoint_at, put_file_at};
use crate::fakes::*;

pub type Handler = SageMakerHandler<FakeJobs, FakeStore, FakeLedger, FakeEvents>;

const ROOT: &str = "resnet50-spot";
const R2: &str = "resnet50-spot-r2-90d9a5df";
const R3: &str = "resnet50-spot-r3-c078143a";
/// `CheckpointConfig.S3Uri` of every resnet50-spot fixture.
const RESNET_CKPT: &str = "s3://ml-checkpoints-123456789012/resnet50-spot/checkpoints";

pub fn handler() -> Handler {
    SageMakerHandler {
        jobs: FakeJobs::default(),
        checkpoints: FakeStore::default(),
        ledger: FakeLedger::default(),
        events: FakeEvents::default(),
        config: HandlerConfig::new(Policy::default()),
    }
}

/// The tags of an event fixture's detail (map or list form), as ListTags would return them.
fn event_tags(fixture: &str) -> Tags {
    let bytes = serde_json::to_vec(&detail(fixture)["Tags"]).unwrap();
    Tags::from_json(&bytes).unwrap()
}

/// resnet50-spot, Stopped/MaxWaitTimeExceeded after two interruptions, with a valid checkpoint at
/// step 1200 under its CheckpointConfig.
fn spot_lost() -> Handler {
    let h = handler();
    h.jobs.add_tags(
        describe_fixture("describe-stopped-maxwait.json"),
        list_tags_fixture("list-tags-resnet50-spot.json"),
    );
    put_checkpoint_at(&h.checkpoints, RESNET_CKPT, "algo-1", 1200, false);
    h
}

/// [`spot_lost`] plus a newer, corrupt checkpoint (step 1300, one file truncated).
fn spot_lost_with_corrupt_checkpoint() -> Handler {
    let h = spot_lost();
    put_checkpoint_at(&h.checkpoints, RESNET_CKPT, "algo-1", 1300, false);
    put_file_at(
        &h.checkpoints,
        RESNET_CKPT,
        "algo-1/step-000000001300/model.safetensors",
        b"trunc",
    );
    h
}

/// The whole resnet50-spot lineage: root, attempt 2 (failed for capacity), attempt 3 (completed).
fn lineage() -> Handler {
    let h = handler();
    h.jobs.add_tags(
        describe_fixture("describe-stopped-maxwait.json"),
        list_tags_fixture("list-tags-resnet50-spot.json"),
    );
    h.jobs.add_tags(
        describe_fixture("describe-failed-capacity.json"),
        event_tags("sagemaker-failed-capacity.json"),
    );
    h.jobs.add_tags(
        describe_fixture("describe-completed-lineage.json"),
        event_tags("sagemaker-completed-lineage.json"),
    );
    h
}

async fn handle(h: &Handler, fixture: &str, log: &MemoryLog) -> Result<Handled, HandlerError> {
    h.handle(&event(fixture), now(), log).await
}

fn plan_of(handled: &Handled) -> RelaunchPlan {
    match &handled.decision.as_ref().unwrap().action {
        Action::Relaunch(plan) => plan.clone(),
        other => panic!("not a relaunch: {other:?}"),
    }
}

fn tag_pairs(tags: &[aws_sdk_sagemaker::types::Tag]) -> Tags {
    tags.iter()
        .map(|t| (t.key.clone().unwrap(), t.value.clone().unwrap()))
        .collect()
}

/// Nothing reached any adapter.
fn untouched(h: &Handler) {
    assert_eq!(h.jobs.calls.total(), 0, "SageMaker calls");
    assert_eq!(h.checkpoints.calls.total(), 0, "S3 calls");
    assert_eq!(h.ledger.calls.total(), 0, "ledger writes");
    assert_eq!(h.events.calls.total(), 0, "PutEvents calls");
}

#[tokio::test]
async fn malformed_and_irrelevant_events_are_acknowledged_without_a_call() {
    let h = handler();
    let log = MemoryLog::default();
    let cases = [
        ("malformed-truncated.json", Outcome::Malformed, "malformed"),
        (
            "malformed-missing-detail-type.json",
            Outcome::Malformed,
            "malformed",
        ),
        (
            "malformed-detail-not-an-object.json",
            Outcome::Malformed,
            "malformed",
        ),
        (
            "malformed-status-not-a-string.json",
            Outcome::Malformed,
            "malformed",
        ),
        ("sagemaker-no-status.json", Outcome::Malformed, "malformed"),
        (
            "unrelated-scheduled-event.json",
            Outcome::Irrelevant,
            "irrelevant",
        ),
        (
            "unrelated-ec2-state-change.json",
            Outcome::Irrelevant,
            "irrelevant",
        ),
        (
            "unrelated-sagemaker-tuning-job.json",
            Outcome::Irrelevant,
            "irrelevant",
        ),
        (
            "ec2-spot-interruption-terminate.json",
            Outcome::Irrelevant,
            "irrelevant",
        ),
        (
            "ec2-rebalance-recommendation.json",
            Outcome::Irrelevant,
            "irrelevant",
        ),
    ];
    for (i, (fixture, outcome, text)) in cases.iter().enumerate() {
        let handled = handle(&h, fixture, &log).await.unwrap();
        assert_eq!(handled.outcome, *outcome, "{fixture}");
        assert_eq!(handled.decision, None, "{fixture}");
        let line = log.decision(i + 1);
        assert_eq!(line["outcome"], *text, "{fixture}");
        assert!(
            line["reason"].as_str().unwrap().contains("acknowledged"),
            "{fixture}: {line}"
        );
    }
    // A malformed event is logged under its id when it has one.
    let lines = log.decisions();
    assert_eq!(
        lines[0]["event_key"],
        Value::Null,
        "truncated: no id to read"
    );
    assert_eq!(
        lines[3]["event_key"],
        "4abe2cd6-5f91-4c99-b160-9e7cd56b647f"
    );
    // Each malformed event is counted once, as an EMF metric of this function.
    let metrics = log.metric_lines();
    assert_eq!(
        metrics.len(),
        5,
        "one per malformed event, none for irrelevant ones"
    );
    for m in &metrics {
        assert_eq!(m["Function"], "sagemaker-events");
        assert_eq!(m["MalformedEvents"], 1);
        let cw = &m["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(cw["Namespace"], "Spotcheck");
        assert_eq!(cw["Metrics"][0]["Name"], "MalformedEvents");
        assert_eq!(cw["Dimensions"], json!([["Function"]]));
    }
    untouched(&h);
}

/// Regression: a detail field of an unexpected shape turned a real event into "malformed".
#[tokio::test]
async fn an_odd_detail_field_does_not_make_a_real_event_malformed() {
    let h = spot_lost();
    let mut value: Value =
        serde_json::from_slice(&event("sagemaker-stopped-maxwait.json")).unwrap();
    value["detail"]["ResourceConfig"] = json!(["ml.p3.2xlarge"]);
    value["detail"]["Tags"] = json!("spotcheck:enabled=true");
    value["detail"]["SecondaryStatusTransitions"] = json!(null);
    value["detail"]["CreationTime"] = json!({"unexpected": true});
    let log = MemoryLog::default();
    let handled = h
        .handle(&serde_json::to_vec(&value).unwrap(), now(), &log)
        .await
        .unwrap();
    assert_eq!(handled.outcome, Outcome::Relaunched);
    assert_eq!(h.jobs.created_names(), [relaunch_name(ROOT, 2)]);
    assert_eq!(log.metrics(), 0, "not counted as malformed");
}

#[tokio::test]
async fn job_without_the_opt_in_tag_is_not_opted_in_and_never_described() {
    let h = handler();
    h.jobs.add(
        describe_from_json(&detail("sagemaker-not-enabled.json")),
        &[("team", "x"), ("spotcheck:enabled", "false")],
    );
    let log = MemoryLog::default();
    let handled = handle(&h, "sagemaker-not-enabled.json", &log)
        .await
        .unwrap();
    assert_eq!(handled.outcome, Outcome::NotOptedIn);
    assert_eq!(handled.decision.unwrap().action, Action::Ignore);
    assert_eq!(h.jobs.calls.get("ListTags"), 1);
    assert_eq!(
        h.jobs.calls.get("DescribeTrainingJob"),
        0,
        "IAM would deny it"
    );
    assert_eq!(h.checkpoints.calls.total(), 0);
    assert!(h.ledger.keys().is_empty());
    assert_eq!(h.events.calls.total(), 0);
    let line = log.decision(1);
    assert_eq!(line["outcome"], "not_opted_in");
    assert_eq!(line["action"], "ignore");
    assert_eq!(line["subject"], "someone-elses-job");
}

#[tokio::test]
async fn access_denied_on_describe_is_not_opted_in() {
    let h = spot_lost();
    h.jobs
        .fail
        .inject("DescribeTrainingJob", ErrorKind::AccessDenied);
    let log = MemoryLog::default();
    let handled = handle(&h, "sagemaker-stopped-maxwait.json", &log)
        .await
        .unwrap();
    assert_eq!(handled.outcome, Outcome::NotOptedIn);
    assert_eq!(handled.decision, None);
    assert_eq!(h.jobs.calls.get("CreateTrainingJob"), 0);
    assert_eq!(h.checkpoints.calls.total(), 0);
    assert!(h.ledger.keys().is_empty());
    assert_eq!(h.events.calls.total(), 0);
    let line = log.decision(1);
    assert_eq!(line["outcome"], "not_opted_in");
    assert_eq!(line["error"], Value::Null, "acknowledged, not an error");
}

#[tokio::test]
async fn a_vanished_job_is_acknowledged() {
    let log = MemoryLog::default();
    // ListTags already says so.
    let h = spot_lost();
    h.jobs.fail.inject("ListTags", ErrorKind::NotFound);
    let handled = handle(&h, "sagemaker-stopped-maxwait.json", &log)
        .await
        .unwrap();
    assert_eq!(handled.outcome, Outcome::JobNotFound);
    assert_eq!(h.jobs.calls.get("DescribeTrainingJob"), 0);
    assert_eq!(log.decision(1)["outcome"], "job_not_found");

    // Deleted between ListTags and DescribeTrainingJob.
    let h = handler();
    h.jobs
        .tags
        .lock()
        .unwrap()
        .insert(arn(ROOT), list_tags_fixture("list-tags-resnet50-spot.json"));
    let handled = handle(&h, "sagemaker-stopped-maxwait.json", &log)
        .await
        .unwrap();
    assert_eq!(handled.outcome, Outcome::JobNotFound);
    assert_eq!(h.jobs.calls.get("DescribeTrainingJob"), 1);
    assert_eq!(h.jobs.calls.get("CreateTrainingJob"), 0);
    assert!(h.ledger.keys().is_empty());
    assert_eq!(h.events.calls.total(), 0);
    assert_eq!(log.decision(2)["outcome"], "job_not_found");
}

#[tokio::test]
async fn an_invalid_lineage_tag_is_acknowledged() {
    let h = handler();
    let mut tags = list_tags_fixture("list-tags-resnet50-spot.json");
    tags.insert("spotcheck:attempt", "two");
    h.jobs
        .add_tags(describe_fixture("describe-stopped-maxwait.json"), tags);
    let log = MemoryLog::default();
    let handled = handle(&h, "sagemaker-stopped-maxwait.json", &log)
        .await
        .unwrap();
    assert_eq!(handled.outcome, Outcome::InvalidInput);
    assert_eq!(h.jobs.calls.get("CreateTrainingJob"), 0);
    assert!(h.ledger.keys().is_empty());
    let line = log.decision(1);
    assert_eq!(line["outcome"], "invalid_input");
    assert!(line["reason"]
        .as_str()
        .unwrap()
        .contains("spotcheck:attempt"));
}

#[tokio::test]
async fn relaunch_carries_the_parent_over_and_applies_the_plan() {
    let h = spot_lost();
    let log = MemoryLog::default();
    let handled = handle(&h, "sagemaker-stopped-maxwait.json", &log)
        .await
        .unwrap();
    assert_eq!(handled.outcome, Outcome::Relaunched);
    let plan = plan_of(&handled);
    let name = relaunch_name(ROOT, 2);
    assert_eq!(plan.job_name, name);
    assert!(plan.spot);
    assert_eq!(plan.from_checkpoint, Some(1200));

    // Exactly the pure request, built from the Describe output the fake returned.
    let parent = describe_fixture("describe-stopped-maxwait.json");
    let request = h.jobs.only_created();
    assert_eq!(
        request,
        relaunch_request(&parent, &plan).build().unwrap(),
        "the handler sends relaunch_request(describe, plan)"
    );
    // Spot-checked against the fixture, so a wrong parent would show too.
    assert_eq!(request.training_job_name(), Some(name.as_str()));
    assert_eq!(
        request.role_arn(),
        Some("arn:aws:iam::123456789012:role/SageMakerTrainingRole")
    );
    assert_eq!(
        request
            .algorithm_specification()
            .unwrap()
            .training_image
            .as_deref(),
        Some("123456789012.dkr.ecr.us-east-1.amazonaws.com/spotcheck-trainer:1.4.0")
    );
    let channel = &request.input_data_config()[0];
    assert_eq!(channel.channel_name.as_deref(), Some("train"));
    assert_eq!(
        channel
            .data_source
            .as_ref()
            .unwrap()
            .s3_data_source
            .as_ref()
            .unwrap()
            .s3_uri
            .as_deref(),
        Some("s3://ml-data-123456789012/imagenet/train")
    );
    assert_eq!(
        request
            .output_data_config()
            .unwrap()
            .s3_output_path
            .as_deref(),
        Some("s3://ml-models-123456789012/resnet50")
    );
    assert_eq!(
        request.hyper_parameters().unwrap()["epochs"],
        "90",
        "hyperparameters carried"
    );
    let rc = request.resource_config().unwrap();
    assert_eq!(rc.instance_type.as_ref().unwrap().as_str(), "ml.p3.2xlarge");
    assert_eq!(rc.instance_count, Some(1));
    let sc = request.stopping_condition().unwrap();
    // MaxRuntimeInSeconds 7200 is the lineage's budget, of which the parent used 5400 s.
    assert_eq!(sc.max_runtime_in_seconds, Some(1800));
    assert_eq!(sc.max_wait_time_in_seconds, Some(10_800));
    assert_eq!(request.enable_managed_spot_training(), Some(true));
    assert_eq!(
        request.checkpoint_config().unwrap().s3_uri.as_deref(),
        Some(RESNET_CKPT)
    );
    let expected: Tags = [
        ("spotcheck:enabled", "true"),
        ("team", "vision"),
        ("spotcheck:instance-ladder", "ml.p3.2xlarge,ml.g5.2xlarge"),
        ("spotcheck:root", ROOT),
        ("spotcheck:attempt", "2"),
        ("spotcheck:parent", ROOT),
        ("spotcheck:interruptions", "2"),
        ("spotcheck:error-retries", "0"),
        ("spotcheck:resume-step", "1200"),
        ("spotcheck:stalled", "0"),
        ("spotcheck:runtime-used", "5400"),
    ]
    .into_iter()
    .collect();
    assert_eq!(tag_pairs(request.tags()), expected);

    // The calls: tags, state, one checkpoint judged (1 LIST, 1 GET, a HEAD per file), create,
    // announce. No ledger record: a relaunch is its own record.
    assert_eq!(h.jobs.calls.get("ListTags"), 1);
    assert_eq!(h.jobs.calls.get("DescribeTrainingJob"), 1);
    assert_eq!(h.checkpoints.calls.get("ListObjectsV2"), 1);
    assert_eq!(h.checkpoints.calls.get("GetObject"), 1);
    assert_eq!(h.checkpoints.calls.get("HeadObject"), 2);
    assert_eq!(h.ledger.calls.total(), 0);
    assert_eq!(h.events.detail_types(), ["Training Job Relaunched"]);
    let announced = h.events.detail(0);
    assert_eq!(announced["previous_job"], ROOT);
    assert_eq!(announced["job_name"], name.as_str());
    assert_eq!(announced["from_checkpoint"], 1200);

    let line = log.decision(1);
    assert_eq!(line["outcome"], "relaunched");
    assert_eq!(line["action"], "relaunch");
    assert_eq!(line["subject"], ROOT);
    assert_eq!(
        line["event_key"],
        "sagemaker-3fad1b5b-4e80-4b88-a03f-8d4b6b4a5d04"
    );
    assert_eq!(line["checkpoints"]["summary"]["latest_valid_step"], 1200);
    assert_eq!(
        line["effects"],
        json!([
            format!("created {name} ({})", arn(&name)),
            "published Training Job Relaunched"
        ])
    );
}

#[tokio::test]
async fn capacity_failure_relaunches_down_the_ladder() {
    let h = lineage();
    // Before attempt 3 exists.
    h.jobs.jobs.lock().unwrap().remove(R3);
    put_checkpoint_at(&h.checkpoints, RESNET_CKPT, "algo-1", 1200, false);
    let log = MemoryLog::default();
    let handled = handle(&h, "sagemaker-failed-capacity.json", &log)
        .await
        .unwrap();
    assert_eq!(handled.outcome, Outcome::Relaunched);
    let request = h.jobs.only_created();
    assert_eq!(
        request.training_job_name(),
        Some(relaunch_name(ROOT, 3).as_str())
    );
    let rc = request.resource_config().unwrap();
    assert_eq!(rc.instance_type.as_ref().unwrap().as_str(), "ml.g5.2xlarge");
    assert_eq!(rc.selected_instance_type, None);
    let tags = tag_pairs(request.tags());
    assert_eq!(tags.get("spotcheck:attempt"), Some("3"));
    assert_eq!(tags.get("spotcheck:parent"), Some(R2));
    assert_eq!(tags.get("spotcheck:root"), Some(ROOT));
    log.decision(1);
}

#[tokio::test]
async fn duplicate_deliveries_relaunch_once() {
    let h = spot_lost();
    let log = MemoryLog::default();
    let first = handle(&h, "sagemaker-stopped-maxwait.json", &log)
        .await
        .unwrap();
    assert_eq!(first.outcome, Outcome::Relaunched);
    // The same delivery again (Lambda or EventBridge retry), then SageMaker's own second event
    // for the same state change (another id).
    for fixture in [
        "sagemaker-stopped-maxwait.json",
        "sagemaker-stopped-maxwait-duplicate.json",
    ] {
        let again = handle(&h, fixture, &log).await.unwrap();
        assert_eq!(again.outcome, Outcome::AlreadyRelaunched, "{fixture}");
        assert_eq!(
            plan_of(&again),
            plan_of(&first),
            "{fixture}: same plan, same name"
        );
    }
    assert_eq!(
        h.jobs.calls.get("CreateTrainingJob"),
        3,
        "asked three times"
    );
    assert_eq!(
        h.jobs.created_names(),
        [relaunch_name(ROOT, 2)],
        "created once"
    );
    // Events: at least once.
    assert_eq!(h.events.detail_types(), ["Training Job Relaunched"; 3]);
    let lines = log.decisions();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1]["outcome"], "already_relaunched");
    assert_eq!(
        lines[1]["effects"][0],
        format!(
            "{} already exists: an earlier delivery created it",
            relaunch_name(ROOT, 2)
        )
    );
    assert_ne!(lines[1]["event_key"], lines[2]["event_key"]);
}

#[tokio::test]
async fn stale_and_uneventful_states_do_nothing() {
    let log = MemoryLog::default();
    // An InProgress/Interrupted event delivered after the job stopped.
    let h = spot_lost();
    let handled = handle(&h, "sagemaker-inprogress-interrupted.json", &log)
        .await
        .unwrap();
    assert_eq!(handled.outcome, Outcome::Ignored);
    assert!(handled.decision.unwrap().reason.contains("stale"));
    assert_eq!(h.jobs.calls.get("CreateTrainingJob"), 0);
    assert_eq!(
        h.checkpoints.calls.total(),
        0,
        "no validation for a stale event"
    );
    assert!(handled.checkpoints.is_none());
    assert!(h.ledger.keys().is_empty());
    assert_eq!(h.events.calls.total(), 0);
    assert_eq!(log.decision(1)["outcome"], "ignored");

    // A job that is simply training.
    let h = handler();
    h.jobs.add_tags(
        describe_from_json(&detail("sagemaker-inprogress-training.json")),
        list_tags_fixture("list-tags-resnet50-spot.json"),
    );
    let handled = handle(&h, "sagemaker-inprogress-training.json", &log)
        .await
        .unwrap();
    assert_eq!(handled.outcome, Outcome::Ignored);
    assert_eq!(h.ledger.calls.total(), 0);
    assert_eq!(h.events.calls.total(), 0);
    assert_eq!(log.decision(2)["action"], "ignore");
}

#[tokio::test]
async fn interruption_is_recorded_once() {
    let h = handler();
    h.jobs.add_tags(
        describe_from_json(&detail("sagemaker-inprogress-interrupted.json")),
        list_tags_fixture("list-tags-resnet50-spot.json"),
    );
    let log = MemoryLog::default();
    for i in 1..=2 {
        let handled = handle(&h, "sagemaker-inprogress-interrupted.json", &log)
            .await
            .unwrap();
        assert_eq!(handled.outcome, Outcome::Recorded);
        log.decision(i);
    }
    let key = "interruptions/jobs/resnet50-spot/1.json";
    assert_eq!(h.ledger.keys(), [key]);
    let record = h.ledger.json(key);
    assert_eq!(record["kind"], "job_interruption");
    assert_eq!(record["job_name"], ROOT);
    assert_eq!(record["interruptions"], 1);
    assert_eq!(
        record["event_key"],
        "sagemaker-1d8b9f3f-2c6e-4f66-8e1d-6b2f4f2e3b02"
    );
    assert_eq!(record["recorded_at"], "2024-06-01T12:05:00.000Z");
    assert!(!record["reason"].as_str().unwrap().is_empty());
    // SageMaker restarts the job itself: no checkpoints read, nothing created or announced.
    assert_eq!(h.checkpoints.calls.total(), 0);
    assert_eq!(h.jobs.calls.get("CreateTrainingJob"), 0);
    assert_eq!(h.events.calls.total(), 0);
    let lines = log.decisions();
    assert_eq!(lines[0]["effects"], json!([format!("ledger {key}: new")]));
    assert_eq!(
        lines[1]["effects"],
        json!([format!("ledger {key}: already present")])
    );
}

#[tokio::test]
async fn a_users_stop_is_recorded_and_never_relaunched() {
    let h = handler();
    h.jobs.add_tags(
        describe_fixture("describe-stopped-user.json"),
        list_tags_fixture("list-tags-resnet50-spot.json"),
    );
    // A valid checkpoint and a generous policy: still no relaunch.
    put_checkpoint_at(&h.checkpoints, RESNET_CKPT, "algo-1", 1200, false);
    let log = MemoryLog::default();
    for i in 1..=2 {
        let handled = handle(&h, "sagemaker-stopped-user.json", &log)
            .await
            .unwrap();
        assert_eq!(handled.outcome, Outcome::Recorded);
        assert_eq!(log.decision(i)["action"], "record");
    }
    assert_eq!(h.jobs.calls.get("CreateTrainingJob"), 0);
    assert!(h.jobs.created.lock().unwrap().is_empty());
    assert_eq!(h.ledger.keys(), ["stops/jobs/resnet50-spot.json"]);
    let record = h.ledger.json("stops/jobs/resnet50-spot.json");
    assert_eq!(record["kind"], "user_stopped");
    assert_eq!(record["job_name"], ROOT);
    assert_eq!(h.events.calls.total(), 0);
}

#[tokio::test]
async fn completed_job_records_savings_once_with_one_metric_line() {
    let h = handler();
    h.jobs.add(
        describe_fixture("describe-completed.json"),
        &[("spotcheck:enabled", "true")],
    );
    let log = MemoryLog::default();
    for i in 1..=2 {
        let handled = handle(&h, "sagemaker-completed.json", &log).await.unwrap();
        assert_eq!(handled.outcome, Outcome::Recorded);
        log.decision(i);
    }
    let key = "savings/jobs/xgboost-churn-spot.json";
    assert_eq!(h.ledger.keys(), [key]);
    let record = h.ledger.json(key);
    assert_eq!(record["job_name"], "xgboost-churn-spot");
    assert_eq!(record["instance_type"], "ml.m5.xlarge");
    assert_eq!(record["training_seconds"], 3660);
    assert_eq!(record["billable_seconds"], 1098);
    assert_eq!(record["seconds_saved"], 2562);
    assert_eq!(record["savings_percent"], 70.0);
    assert!(record["on_demand_usd_per_hour"].as_f64().unwrap() > 0.0);

    let metrics = log.metric_lines();
    assert_eq!(
        metrics.len(),
        1,
        "the duplicate does not count the savings twice"
    );
    assert_eq!(
        metrics[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"],
        "Spotcheck"
    );
    assert_eq!(
        h.events.detail_types(),
        ["Spot Savings Recorded", "Spot Savings Recorded"]
    );
    assert_eq!(h.events.detail(0)["scope"], "job");
    assert_eq!(h.events.detail(0)["s3_key"], key);
    assert_eq!(h.checkpoints.calls.total(), 0, "no validation needed");
    let lines = log.decisions();
    assert_eq!(
        lines[1]["effects"],
        json!([
            format!("ledger {key}: already present"),
            "published Spot Savings Recorded"
        ])
    );
}

#[tokio::test]
async fn lineage_savings_are_recorded_for_the_job_and_the_lineage_once() {
    let h = lineage();
    let log = MemoryLog::default();
    let handled = handle(&h, "sagemaker-completed-lineage.json", &log)
        .await
        .unwrap();
    assert_eq!(handled.outcome, Outcome::Recorded);
    let job_key = format!("savings/jobs/{R3}.json");
    let lineage_key = "savings/lineages/resnet50-spot.json".to_owned();
    assert_eq!(h.ledger.keys(), [job_key.clone(), lineage_key.clone()]);
    // Attempt 3 itself, then the root and attempt 2 by their deterministic names.
    assert_eq!(h.jobs.calls.get("DescribeTrainingJob"), 3);
    let summary = h.ledger.json(&lineage_key);
    assert_eq!(summary["jobs"], json!([ROOT, R2, R3]));
    assert_eq!(summary["training_seconds"], 5400 + 7260);
    assert_eq!(summary["billable_seconds"], 1620 + 2178);
    assert_eq!(summary["skipped"], json!([]));
    assert_eq!(h.ledger.json(&job_key)["lineage_root"], ROOT);
    assert_eq!(log.metrics(), 2, "one EMF line per new record");
    assert_eq!(
        h.events.detail_types(),
        ["Spot Savings Recorded", "Spot Savings Recorded"]
    );
    assert_eq!(h.events.detail(1)["scope"], "lineage");

    // Redelivered: both records already there, untouched; no new metric; announced again.
    let before = h.ledger.records.lock().unwrap().clone();
    let again = handle(&h, "sagemaker-completed-lineage.json", &log)
        .await
        .unwrap();
    assert_eq!(again.outcome, Outcome::Recorded);
    assert_eq!(*h.ledger.records.lock().unwrap(), before);
    assert_eq!(log.metrics(), 2);
    assert_eq!(h.events.detail_types().len(), 4);
    let line = log.decision(2);
    assert_eq!(
        line["effects"],
        json!([
            format!("ledger {job_key}: already present"),
            format!("ledger {lineage_key}: already present"),
            "published Spot Savings Recorded",
            "published Spot Savings Recorded"
        ])
    );
}

#[tokio::test]
async fn an_attempt_that_cannot_be_described_is_listed_as_skipped() {
    let h = lineage();
    h.jobs.jobs.lock().unwrap().remove(R2);
    let log = MemoryLog::default();
    handle(&h, "sagemaker-completed-lineage.json", &log)
        .await
        .unwrap();
    let summary = h.ledger.json("savings/lineages/resnet50-spot.json");
    assert_eq!(summary["jobs"], json!([ROOT, R3]));
    assert_eq!(summary["skipped"][0]["job_name"], R2);
    assert!(summary["skipped"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("attempt 2"));
    log.decision(1);
}

#[tokio::test]
async fn nothing_is_recorded_without_training_times() {
    let h = handler();
    let mut job = job_json("describe-completed.json");
    job["TrainingTimeInSeconds"] = Value::Null;
    job["BillableTimeInSeconds"] = Value::Null;
    h.jobs
        .add(describe_from_json(&job), &[("spotcheck:enabled", "true")]);
    let log = MemoryLog::default();
    let handled = handle(&h, "sagemaker-completed.json", &log).await.unwrap();
    assert_eq!(handled.outcome, Outcome::NothingRecorded);
    assert!(h.ledger.keys().is_empty());
    assert_eq!(log.metrics(), 0);
    assert_eq!(h.events.calls.total(), 0);
    let line = log.decision(1);
    assert_eq!(line["outcome"], "nothing_recorded");
    assert!(line["effects"][0]
        .as_str()
        .unwrap()
        .starts_with("no savings record: "));
}

#[tokio::test]
async fn give_up_is_recorded_and_announced() {
    let h = handler();
    h.jobs.add(
        describe_fixture("describe-failed-algorithm.json"),
        &[("spotcheck:enabled", "true")],
    );
    let log = MemoryLog::default();
    let handled = handle(&h, "sagemaker-failed-algorithm.json", &log)
        .await
        .unwrap();
    assert_eq!(handled.outcome, Outcome::GaveUp);
    assert_eq!(h.jobs.calls.get("CreateTrainingJob"), 0);
    let key = "give-ups/gpt2-small-spot/gpt2-small-spot.json";
    assert_eq!(h.ledger.keys(), [key]);
    let record = h.ledger.json(key);
    assert_eq!(record["kind"], "recovery_gave_up");
    assert_eq!(record["job_name"], "gpt2-small-spot");
    assert_eq!(record["cause"], "user_error");
    assert_eq!(h.events.detail_types(), ["Recovery Gave Up"]);
    assert_eq!(h.events.detail(0)["job_name"], "gpt2-small-spot");
    let line = log.decision(1);
    assert_eq!(line["outcome"], "gave_up");
    assert_eq!(line["action"], "give_up");
}

#[tokio::test]
async fn a_corrupt_checkpoint_is_recorded_announced_and_skipped() {
    let h = spot_lost_with_corrupt_checkpoint();
    let log = MemoryLog::default();
    let handled = handle(&h, "sagemaker-stopped-maxwait.json", &log)
        .await
        .unwrap();
    assert_eq!(handled.outcome, Outcome::Relaunched);
    // The relaunch resumes from the older, valid checkpoint.
    assert_eq!(plan_of(&handled).from_checkpoint, Some(1200));
    let validation = handled.checkpoints.unwrap();
    assert_eq!(validation.summary.latest_valid_step, Some(1200));
    assert!(validation.summary.any_corrupt);

    let key = "checkpoint-validations/resnet50-spot/algo-1_step-000000001300.json";
    assert_eq!(h.ledger.keys(), [key]);
    let record = h.ledger.json(key);
    assert_eq!(record["kind"], "checkpoint_validation_failed");
    assert_eq!(record["uri"], RESNET_CKPT);
    let judged: Vec<(String, String)> = record["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        judged,
        [
            ("algo-1/step-000000001300".to_owned(), "corrupt".to_owned()),
            ("algo-1/step-000000001200".to_owned(), "valid".to_owned())
        ]
    );
    assert_eq!(
        record["checkpoints"][0]["reason"],
        "file \"model.safetensors\" is 5 bytes, manifest says 10"
    );
    assert_eq!(record["checkpoints"][1]["reason"], Value::Null);
    assert_eq!(
        h.events.detail_types(),
        ["Training Job Relaunched", "Checkpoint Validation Failed"]
    );
    let announced = h.events.detail(1);
    assert_eq!(announced["job_name"], ROOT);
    assert_eq!(announced["checkpoint_uri"], RESNET_CKPT);
    assert_eq!(announced["latest_valid_step"], 1200);

    // Redelivered: nothing new is created or written.
    let again = handle(&h, "sagemaker-stopped-maxwait.json", &log)
        .await
        .unwrap();
    assert_eq!(again.outcome, Outcome::AlreadyRelaunched);
    assert_eq!(h.jobs.created_names().len(), 1);
    assert_eq!(h.ledger.keys(), [key]);
    log.decision(2);

    // SageMaker's second event for the same state change (another id): still one record.
    let mut other: Value =
        serde_json::from_slice(&event("sagemaker-stopped-maxwait.json")).unwrap();
    other["id"] = Value::from("a-second-event-for-the-same-change");
    let bytes = serde_json::to_vec(&other).unwrap();
    let third = h.handle(&bytes, now(), &log).await.unwrap();
    assert_eq!(third.outcome, Outcome::AlreadyRelaunched);
    assert_eq!(h.ledger.keys(), [key]);
}

#[tokio::test]
async fn transient_failures_are_retried_without_duplicate_effects() {
    // Every call of the relaunch path in turn, from the first to the last; the ledger write and
    // PutEvents fail after the job was created.
    let cases: [(&str, Outcome); 8] = [
        ("ListTags", Outcome::Relaunched),
        ("DescribeTrainingJob", Outcome::Relaunched),
        ("ListObjectsV2", Outcome::Relaunched),
        ("GetObject", Outcome::Relaunched),
        ("HeadObject", Outcome::Relaunched),
        ("CreateTrainingJob", Outcome::Relaunched),
        ("PutObject", Outcome::AlreadyRelaunched),
        ("PutEvents", Outcome::AlreadyRelaunched),
    ];
    for (operation, retried) in cases {
        let h = spot_lost_with_corrupt_checkpoint();
        match operation {
            "ListTags" | "DescribeTrainingJob" | "CreateTrainingJob" => {
                h.jobs.fail.inject(operation, ErrorKind::Transient)
            }
            "PutObject" => h.ledger.fail.inject(operation, ErrorKind::Transient),
            "PutEvents" => h.events.fail.inject(operation, ErrorKind::Transient),
            _ => h.checkpoints.fail.inject(operation, ErrorKind::Transient),
        }
        let log = MemoryLog::default();
        let err = handle(&h, "sagemaker-stopped-maxwait.json", &log)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, HandlerError::Transient(e) if e.operation == operation),
            "{operation}: {err}"
        );
        assert!(
            h.events.detail_types().is_empty(),
            "{operation}: nothing announced"
        );
        let line = log.decision(1);
        assert_eq!(line["outcome"], "failed", "{operation}");
        assert_eq!(line["retryable"], true, "{operation}");
        assert!(line["error"].as_str().unwrap().contains(operation));

        // Lambda's retry gets through and completes the rest, once.
        let handled = handle(&h, "sagemaker-stopped-maxwait.json", &log)
            .await
            .unwrap();
        assert_eq!(handled.outcome, retried, "{operation}");
        assert_eq!(
            h.jobs.created_names(),
            [relaunch_name(ROOT, 2)],
            "{operation}"
        );
        assert_eq!(h.ledger.keys().len(), 1, "{operation}");
        assert_eq!(
            h.events.detail_types(),
            ["Training Job Relaunched", "Checkpoint Validation Failed"],
            "{operation}"
        );
        log.decision(2);
    }
}

#[tokio::test]
async fn a_failure_between_two_savings_records_counts_each_saving_once() {
    let h = lineage();
    // The job's record goes through, the lineage's fails.
    h.ledger
        .fail
        .inject_after("PutObject", 1, ErrorKind::Transient);
    let log = MemoryLog::default();
    let err = handle(&h, "sagemaker-completed-lineage.json", &log)
        .await
        .unwrap_err();
    assert!(err.is_transient());
    assert_eq!(h.ledger.keys().len(), 1);
    assert_eq!(log.metrics(), 1, "the job's savings, once");
    assert!(h.events.detail_types().is_empty());

    // Then PutEvents fails once.
    h.events.fail.inject("PutEvents", ErrorKind::Transient);
    assert!(handle(&h, "sagemaker-completed-lineage.json", &log)
        .await
        .unwrap_err()
        .is_transient());
    assert_eq!(h.ledger.keys().len(), 2);
    assert_eq!(log.metrics(), 2, "the lineage's savings, once");

    let handled = handle(&h, "sagemaker-completed-lineage.json", &log)
        .await
        .unwrap();
    assert_eq!(handled.outcome, Outcome::Recorded);
    assert_eq!(log.metrics(), 2, "no saving counted twice");
    assert_eq!(
        h.events.detail_types(),
        ["Spot Savings Recorded", "Spot Savings Recorded"]
    );
    log.decision(3);
    let scopes: Vec<String> = log
        .metric_lines()
        .iter()
        .map(|m| m["_aws"]["CloudWatchMetrics"][0]["Dimensions"].to_string())
        .collect();
    assert_ne!(scopes[0], scopes[1], "one job metric, one lineage metric");
}

#[tokio::test]
async fn refusals_are_errors_for_the_dead_letter_queue() {
    let cases = [
        ("CreateTrainingJob", ErrorKind::Rejected),
        ("CreateTrainingJob", ErrorKind::AccessDenied),
        ("ListTags", ErrorKind::AccessDenied),
        ("PutObject", ErrorKind::AccessDenied),
        ("PutEvents", ErrorKind::Rejected),
    ];
    for (operation, kind) in cases {
        let h = spot_lost_with_corrupt_checkpoint();
        match operation {
            "ListTags" | "CreateTrainingJob" => h.jobs.fail.inject(operation, kind),
            "PutObject" => h.ledger.fail.inject(operation, kind),
            _ => h.events.fail.inject(operation, kind),
        }
        let log = MemoryLog::default();
        let err = handle(&h, "sagemaker-stopped-maxwait.json", &log)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, HandlerError::Refused(e) if e.operation == operation && e.kind == kind),
            "{operation} {kind:?}: {err}"
        );
        assert!(!err.is_transient());
        assert!(err.to_string().contains("redrive"));
        let line = log.decision(1);
        assert_eq!(line["outcome"], "failed");
        assert_eq!(line["retryable"], false);
        assert!(h.events.detail_types().is_empty(), "{operation}");
        // A redrive once the cause is fixed completes the work without doing anything twice.
        handle(&h, "sagemaker-stopped-maxwait.json", &log)
            .await
            .unwrap();
        assert_eq!(h.jobs.created_names().len(), 1, "{operation}");
        assert_eq!(h.ledger.keys().len(), 1, "{operation}");
    }
}

/// Regression: AccessDenied while validating failed the SageMaker handler (a refusal for the
/// DLQ) while the EC2 handler recorded it and went on. Both now record it and decide without a
/// summary.
#[tokio::test]
async fn denied_checkpoint_reads_are_recorded_and_the_decision_goes_on() {
    for kind in [ErrorKind::AccessDenied, ErrorKind::Rejected] {
        let h = spot_lost();
        // Even a policy that gives up without a valid checkpoint: nothing says there is none.
        h.jobs
            .tags
            .lock()
            .unwrap()
            .get_mut(&arn(ROOT))
            .unwrap()
            .insert("spotcheck:without-checkpoint", "give-up");
        h.checkpoints.fail.inject("ListObjectsV2", kind);
        let log = MemoryLog::default();
        let handled = handle(&h, "sagemaker-stopped-maxwait.json", &log)
            .await
            .unwrap();
        assert_eq!(handled.outcome, Outcome::Relaunched, "{kind:?}");
        let plan = plan_of(&handled);
        assert_eq!(plan.from_checkpoint, None);
        assert!(
            handled
                .decision
                .as_ref()
                .unwrap()
                .reason
                .contains("could not be validated"),
            "{kind:?}"
        );
        // The relaunch keeps the CheckpointConfig: the job resumes from what is there.
        assert_eq!(
            h.jobs
                .only_created()
                .checkpoint_config()
                .unwrap()
                .s3_uri
                .as_deref(),
            Some(RESNET_CKPT)
        );
        let key = "checkpoint-validations/resnet50-spot/unavailable.json";
        assert_eq!(h.ledger.keys(), [key], "{kind:?}");
        let record = h.ledger.json(key);
        assert_eq!(record["kind"], "checkpoint_validation_unavailable");
        assert_eq!(record["uri"], RESNET_CKPT);
        assert!(
            record["error"].as_str().unwrap().contains("ListObjectsV2"),
            "{record}"
        );
        let line = log.decision(1);
        assert!(
            line["checkpoint_error"]
                .as_str()
                .unwrap()
                .contains("injected"),
            "{line}"
        );
    }
}

/// Regression: checkpoints another library wrote (no spotcheck manifest) were "no valid
/// checkpoint", and each such attempt counted towards the crash loop.
#[tokio::test]
async fn checkpoints_in_an_unknown_format_are_relaunched_and_never_a_crash_loop() {
    let h = handler();
    let mut tags = list_tags_fixture("list-tags-resnet50-spot.json");
    tags.insert("spotcheck:stalled", "2");
    tags.insert("spotcheck:without-checkpoint", "give-up");
    h.jobs
        .add_tags(describe_fixture("describe-stopped-maxwait.json"), tags);
    // A Hugging Face Trainer layout.
    let (bucket, prefix) = RESNET_CKPT
        .strip_prefix("s3://")
        .unwrap()
        .split_once('/')
        .unwrap();
    for file in [
        "checkpoint-500/model.safetensors",
        "checkpoint-500/trainer_state.json",
        "checkpoint-1000/model.safetensors",
    ] {
        h.checkpoints
            .put(bucket, &format!("{prefix}/{file}"), b"weights");
    }
    let log = MemoryLog::default();
    let handled = handle(&h, "sagemaker-stopped-maxwait.json", &log)
        .await
        .unwrap();
    assert_eq!(handled.outcome, Outcome::Relaunched);
    let validation = handled.checkpoints.clone().unwrap();
    assert_eq!(
        validation.summary.validation,
        spotcheck_control::Validation::UnknownFormat
    );
    assert!(validation.checkpoints.is_empty(), "nothing judged");
    let plan = plan_of(&handled);
    assert_eq!(plan.from_checkpoint, None);
    assert_eq!(plan.tags.get("spotcheck:stalled"), Some("2"), "not counted");
    assert!(handled
        .decision
        .unwrap()
        .reason
        .contains("format spotcheck does not know"),);
    // Only the listing: no manifest to GET, nothing to HEAD.
    assert_eq!(h.checkpoints.calls.get("GetObject"), 0);
    assert_eq!(h.checkpoints.calls.get("HeadObject"), 0);
    assert_eq!(
        log.decision(1)["checkpoints"]["summary"]["validation"],
        "unknown_format"
    );
}

/// Regression (item: late events): Describe shows the same final state but a newer
/// LastModifiedTime (SageMaker touched the finished job); the event was ignored as stale.
#[tokio::test]
async fn a_late_event_for_the_same_final_state_is_acted_on() {
    let h = handler();
    h.jobs.add_tags(
        describe_fixture("describe-stopped-maxwait-modified-later.json"),
        list_tags_fixture("list-tags-resnet50-spot.json"),
    );
    put_checkpoint_at(&h.checkpoints, RESNET_CKPT, "algo-1", 1200, false);
    let log = MemoryLog::default();
    let handled = handle(&h, "sagemaker-stopped-maxwait.json", &log)
        .await
        .unwrap();
    assert_eq!(
        handled.outcome,
        Outcome::Relaunched,
        "{:?}",
        handled.decision
    );
    assert_eq!(plan_of(&handled).from_checkpoint, Some(1200));
    assert_eq!(
        h.checkpoints.calls.get("ListObjectsV2"),
        1,
        "validated, not skipped as stale"
    );
    assert_eq!(h.jobs.created_names(), [relaunch_name(ROOT, 2)]);
}

/// Regression: ResourceInUse was taken as "already relaunched" whatever job held the name.
#[tokio::test]
async fn a_name_taken_by_another_job_is_a_collision_not_a_relaunch() {
    // Someone else's job holds the deterministic name: opted in, but not this lineage's.
    let h = spot_lost();
    let squatter =
        aws_sdk_sagemaker::operation::describe_training_job::DescribeTrainingJobOutput::builder()
            .training_job_name(R2)
            .training_job_arn(arn(R2))
            .build();
    h.jobs.add(
        squatter,
        &[
            ("spotcheck:enabled", "true"),
            ("spotcheck:parent", "someone-else"),
        ],
    );
    let log = MemoryLog::default();
    let handled = handle(&h, "sagemaker-stopped-maxwait.json", &log)
        .await
        .unwrap();
    assert_eq!(handled.outcome, Outcome::GaveUp);
    assert!(h.jobs.created_names().is_empty());
    let key = "give-ups/resnet50-spot/resnet50-spot.json";
    assert_eq!(h.ledger.keys(), [key]);
    let record = h.ledger.json(key);
    assert_eq!(record["cause"], "name_collision");
    assert_eq!(record["job_name"], ROOT);
    assert!(
        record["reason"].as_str().unwrap().contains(&format!(
            "{R2} exists but is not this plan's job: its spotcheck:parent is \"someone-else\""
        )),
        "{record}"
    );
    assert_eq!(h.events.detail_types(), ["Recovery Gave Up"]);
    assert_eq!(h.events.detail(0)["cause"], "name_collision");
    assert_eq!(log.decision(1)["outcome"], "gave_up");

    // A job spotcheck may not even describe (not opted in) is not ours either.
    let h = spot_lost();
    let other =
        aws_sdk_sagemaker::operation::describe_training_job::DescribeTrainingJobOutput::builder()
            .training_job_name(R2)
            .training_job_arn(arn(R2))
            .build();
    h.jobs.add(other, &[]);
    // The parent's Describe goes through; the existing job's is denied.
    h.jobs
        .fail
        .inject_after("DescribeTrainingJob", 1, ErrorKind::AccessDenied);
    let handled = handle(&h, "sagemaker-stopped-maxwait.json", &MemoryLog::default())
        .await
        .unwrap();
    assert_eq!(handled.outcome, Outcome::GaveUp);
    assert_eq!(
        h.ledger.json("give-ups/resnet50-spot/resnet50-spot.json")["cause"],
        "name_collision"
    );
}
