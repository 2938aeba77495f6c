//! End-to-end sequences over the fixtures: the walk-through of the `decision` module doc, the
//! savings it leads to, the outputs the shell emits, and the CLI's `decide_from_json`.

use serde_json::Value;
use spotcheck_control::decision::Record;
use spotcheck_control::outputs::{job_savings_metrics, lineage_savings_metrics, OutputEvent};
use spotcheck_control::savings::{job_savings, lineage_savings, SavingsError};
use spotcheck_control::{
    decide_from_json, Action, CheckpointSummary, Decision, Error, PriceTable, Tags,
};

use crate::util::{decide_case, event_text, job, job_text, now, step, R2, R3, ROOT};

/// spot → interrupted → MaxWaitTimeExceeded → relaunch r2 on the same type → capacity failure →
/// relaunch r3 on the next rung → completed → lineage savings. The tags each plan asks for are
/// exactly the tags the next job's fixture carries.
#[test]
fn walk_through_spot_loss_capacity_then_success() {
    let policy = spotcheck_control::Policy::default();
    // The root job is interrupted: recorded only.
    let d = decide_case(
        "sagemaker-inprogress-interrupted",
        None,
        step(Some(600)),
        &[],
        policy.clone(),
    );
    assert!(
        matches!(d.action, Action::Record(Record::Interruption { .. })),
        "{d:?}"
    );

    // Its wait runs out: relaunch r2 on the same rung, from the newest valid checkpoint.
    let d = decide_case(
        "sagemaker-stopped-maxwait",
        Some("describe-stopped-maxwait"),
        step(Some(1200)),
        &[],
        policy.clone(),
    );
    let Action::Relaunch(r2) = &d.action else {
        panic!("{d:?}")
    };
    assert_eq!(
        (r2.job_name.as_str(), r2.instance_type.as_deref()),
        (R2, Some("ml.p3.2xlarge"))
    );
    assert_eq!(
        &r2.tags,
        &job("describe-failed-capacity").tags,
        "r2 plan tags = r2's tags"
    );

    // r2 finds no capacity: relaunch r3 one rung down.
    let d = decide_case(
        "sagemaker-failed-capacity",
        Some("describe-failed-capacity"),
        step(Some(1200)),
        &[],
        policy.clone(),
    );
    let Action::Relaunch(r3) = &d.action else {
        panic!("{d:?}")
    };
    assert_eq!(
        (r3.job_name.as_str(), r3.instance_type.as_deref()),
        (R3, Some("ml.g5.2xlarge"))
    );
    let r3_event_tags = match crate::util::event("sagemaker-completed-lineage").signal {
        spotcheck_control::Signal::TrainingJobStateChange { job } => job.tags,
        other => panic!("{other:?}"),
    };
    assert_eq!(r3.tags, r3_event_tags, "r3 plan tags = r3's tags");

    // r3 completes: savings for the job and for the lineage it ends.
    let d = decide_case(
        "sagemaker-completed-lineage",
        Some("describe-completed-lineage"),
        step(Some(4000)),
        &[],
        policy,
    );
    assert_eq!(
        d.action,
        Action::Record(Record::Savings {
            job_name: R3.into(),
            root: ROOT.into(),
            attempt: 3,
            ends_lineage: true
        })
    );

    let prices = PriceTable::builtin();
    let jobs = [
        job("describe-stopped-maxwait"),
        job("describe-failed-capacity"),
        job("describe-completed-lineage"),
    ];
    let summary = lineage_savings(ROOT, &jobs, &prices).unwrap();
    assert_eq!(summary.jobs, [ROOT, R2, R3]);
    assert_eq!(summary.training_seconds, 5400 + 7260);
    assert_eq!(summary.billable_seconds, 1620 + 2178);
    assert_eq!(summary.seconds_saved, 12660 - 3798);
    assert!((summary.savings_percent - 70.0).abs() < 1e-9);
    let p3 = prices.usd_per_hour("ml.p3.2xlarge").unwrap();
    let g5 = prices.usd_per_hour("ml.g5.2xlarge").unwrap();
    let expected = (5400.0 - 1620.0) * p3 / 3600.0 + (7260.0 - 2178.0) * g5 / 3600.0;
    assert!((summary.dollars_saved.unwrap() - expected).abs() < 1e-9);
    assert_eq!(summary.s3_key(), "savings/lineages/resnet50-spot.json");

    let event = OutputEvent::lineage_savings(&summary).entry().unwrap();
    assert_eq!(event.detail_type, "Spot Savings Recorded");
    let detail: Value = serde_json::from_str(&event.detail).unwrap();
    assert_eq!(detail["scope"], "lineage");
    assert_eq!(detail["s3_key"], "savings/lineages/resnet50-spot.json");

    let line: Value = serde_json::from_str(&lineage_savings_metrics(&summary, now())).unwrap();
    assert_eq!(line["Root"], ROOT);
    assert_eq!(
        line["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
        serde_json::json!([["Scope"]])
    );
}

#[test]
fn job_savings_record_and_metrics() {
    let record = job_savings(&job("describe-completed"), &PriceTable::builtin()).unwrap();
    assert_eq!(record.job_name, "xgboost-churn-spot");
    assert_eq!(record.seconds_saved, 3660 - 1098);
    assert!((record.savings_percent - 70.0).abs() < 1e-9);
    assert_eq!(record.billed_compute_seconds, 1098);
    let price = PriceTable::builtin().usd_per_hour("ml.m5.xlarge").unwrap();
    assert!((record.dollars_saved.unwrap() - 2562.0 * price / 3600.0).abs() < 1e-9);
    assert_eq!(record.s3_key(), "savings/jobs/xgboost-churn-spot.json");
    assert_eq!(
        record.prices_as_of.as_deref(),
        PriceTable::builtin().as_of()
    );
    // The record round-trips through its stored JSON.
    let stored = serde_json::to_string(&record).unwrap();
    assert_eq!(
        serde_json::from_str::<spotcheck_control::SavingsRecord>(&stored).unwrap(),
        record
    );

    let line: Value = serde_json::from_str(&job_savings_metrics(&record, now())).unwrap();
    let meta = &line["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(meta["Namespace"], "Spotcheck");
    assert_eq!(line["_aws"]["Timestamp"], now().epoch_ms());
    let metric_names: Vec<&str> = meta["Metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Name"].as_str().unwrap())
        .collect();
    assert_eq!(
        metric_names,
        ["SecondsSaved", "SavingsPercent", "DollarsSaved"]
    );
    for dimension_set in meta["Dimensions"].as_array().unwrap() {
        for dimension in dimension_set.as_array().unwrap() {
            assert!(
                line.get(dimension.as_str().unwrap()).is_some(),
                "dimension {dimension} has a value"
            );
        }
    }
    for name in metric_names {
        assert!(line[name].is_number(), "{name}");
    }
    assert_eq!(line["InstanceType"], "ml.m5.xlarge");
    assert_eq!(line["SecondsSaved"], 2562);
}

#[test]
fn no_savings_record_without_times() {
    // The event detail has no billable time: no record, and the error says so.
    let facts = match crate::util::event("sagemaker-completed").signal {
        spotcheck_control::Signal::TrainingJobStateChange { job } => *job,
        other => panic!("{other:?}"),
    };
    let err = job_savings(&facts, &PriceTable::builtin()).unwrap_err();
    assert!(
        matches!(err, SavingsError::MissingTrainingTime { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("no TrainingTimeInSeconds"));
}

#[test]
fn output_events_for_decisions() {
    let relaunch = decide_case(
        "sagemaker-stopped-maxwait",
        Some("describe-stopped-maxwait"),
        step(Some(1200)),
        &[],
        Default::default(),
    );
    let entry = OutputEvent::from_decision(&relaunch)
        .unwrap()
        .entry()
        .unwrap();
    assert_eq!(
        (entry.source, entry.detail_type),
        ("spotcheck", "Training Job Relaunched")
    );
    assert_eq!(entry.resources, [ROOT, R2]);
    let detail: Value = serde_json::from_str(&entry.detail).unwrap();
    assert_eq!(detail["job_name"], R2);
    assert_eq!(detail["cause"], "spot_wait_exceeded");
    assert_eq!(detail["from_checkpoint"], 1200);

    let gave_up = decide_case(
        "sagemaker-failed-algorithm",
        Some("describe-failed-algorithm"),
        step(Some(100)),
        &[],
        Default::default(),
    );
    let entry = OutputEvent::from_decision(&gave_up)
        .unwrap()
        .entry()
        .unwrap();
    assert_eq!(entry.detail_type, "Recovery Gave Up");
    let detail: Value = serde_json::from_str(&entry.detail).unwrap();
    assert_eq!(detail["cause"], "user_error");
    assert_eq!(detail["reason"], gave_up.reason.as_str());

    let ignored = decide_case(
        "sagemaker-stopping",
        None,
        step(None),
        &[],
        Default::default(),
    );
    assert!(OutputEvent::from_decision(&ignored).is_none());

    let corrupt = CheckpointSummary {
        latest_valid_step: Some(800),
        any_corrupt: true,
        ..CheckpointSummary::default()
    };
    let entry = OutputEvent::checkpoint_validation_failed(ROOT, Some("s3://b/p"), &corrupt)
        .unwrap()
        .entry()
        .unwrap();
    assert_eq!(entry.detail_type, "Checkpoint Validation Failed");
    assert!(OutputEvent::checkpoint_validation_failed(ROOT, None, &step(Some(1))).is_none());
}

fn cli(
    event: &str,
    job: Option<&str>,
    checkpoints: Option<CheckpointSummary>,
    policy: Option<&[u8]>,
) -> Result<Decision, Error> {
    decide_from_json(
        event_text(event).as_bytes(),
        job.map(|j| job_text(j).as_bytes()),
        checkpoints,
        policy,
        now(),
    )
}

#[test]
fn decide_from_json_shapes() {
    let d = cli(
        "sagemaker-stopped-maxwait",
        Some("describe-stopped-maxwait"),
        Some(step(Some(1200))),
        None,
    )
    .unwrap();
    let v = serde_json::to_value(&d).unwrap();
    assert_eq!(v["action"], "relaunch");
    assert_eq!(v["job_name"], R2);
    assert_eq!(v["instance_type"], "ml.p3.2xlarge");
    assert_eq!(v["spot"], true);
    assert!(v["reason"].as_str().unwrap().contains("relaunching as"));
    assert_eq!(
        v["event_key"],
        "sagemaker-3fad1b5b-4e80-4b88-a03f-8d4b6b4a5d04"
    );

    // The Describe fixture has no Tags: with the event's tags it is opted in.
    let v = serde_json::to_value(
        cli(
            "sagemaker-completed",
            Some("describe-completed"),
            None,
            None,
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (v["action"].as_str(), v["record"].as_str()),
        (Some("record"), Some("savings"))
    );

    let v =
        serde_json::to_value(cli("sagemaker-failed-client", None, None, None).unwrap()).unwrap();
    assert_eq!(
        (v["action"].as_str(), v["cause"].as_str()),
        (Some("give_up"), Some("user_error"))
    );

    let v =
        serde_json::to_value(cli("unrelated-scheduled-event", None, None, None).unwrap()).unwrap();
    assert_eq!(v["action"], "ignore");
    assert!(v["reason"]
        .as_str()
        .unwrap()
        .starts_with("irrelevant event"));

    // A policy file changes the outcome; an invalid one is an error, not a default.
    let d = cli(
        "sagemaker-failed-client",
        None,
        None,
        Some(br#"{"retries_on_user_error": 2}"#),
    )
    .unwrap();
    assert_eq!(d.action_name(), "relaunch");
    assert!(matches!(
        cli(
            "sagemaker-failed-client",
            None,
            None,
            Some(br#"{"retries": 2}"#)
        ),
        Err(Error::Policy(_))
    ));

    // Malformed inputs are typed errors carrying the event id.
    match cli("malformed-missing-detail-type", None, None, None) {
        Err(Error::Event(e)) => {
            assert_eq!(e.event_id(), Some("39ad1bc5-4e80-4b88-a05f-8d6bc45a536e"))
        }
        other => panic!("{other:?}"),
    }
    let bad_job = decide_from_json(
        event_text("sagemaker-completed").as_bytes(),
        Some(b"{"),
        None,
        None,
        now(),
    );
    assert!(matches!(bad_job, Err(Error::Job(_))));
    // A lineage tag no relaunch could have written is an error too.
    let bad_tag = event_text("sagemaker-completed").replace(
        "\"spotcheck:enabled\": \"true\"",
        "\"spotcheck:enabled\": \"true\", \"spotcheck:attempt\": \"x\"",
    );
    assert!(matches!(
        decide_from_json(bad_tag.as_bytes(), None, None, None, now()),
        Err(Error::Lineage(_))
    ));
}

#[test]
fn list_tags_as_a_separate_input_opts_a_describe_in() {
    let event = crate::util::event("sagemaker-stopped-maxwait");
    let tags = Tags::from_json(job_text("list-tags-resnet50-spot").as_bytes()).unwrap();
    let input = spotcheck_control::DecisionInput::new(
        event,
        Some(job("describe-stopped-maxwait")),
        &tags,
        step(Some(1200)),
        &[],
        Default::default(),
        now(),
    )
    .unwrap();
    assert!(input.tags.is_enabled());
    assert_eq!(spotcheck_control::decide(&input).action_name(), "relaunch");
}
