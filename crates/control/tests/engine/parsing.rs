//! Parsing the fixture corpus: every shape of time and tags, every kind of event, every kind of
//! malformed input.

use spotcheck_control::events::{parse_event, EventError, Parsed};
use spotcheck_control::job::{FactsOrigin, JobError};
use spotcheck_control::status::{SecondaryStatus, SpotAction, TrainingJobStatus};
use spotcheck_control::{JobFacts, Signal, Tags, Timestamp};

use crate::util::{event, event_text, job, job_text, EVENTS, JOBS, R2, ROOT};

fn facts(name: &str) -> JobFacts {
    match event(name).signal {
        Signal::TrainingJobStateChange { job } => *job,
        other => panic!("{name}: not a training-job event: {other:?}"),
    }
}

fn t(text: &str) -> Timestamp {
    Timestamp::parse(text).unwrap()
}

#[test]
fn fixture_table_lists_every_file_in_the_corpus() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");
    for (dir, table) in [("events", EVENTS), ("jobs", JOBS)] {
        let mut on_disk: Vec<String> = std::fs::read_dir(format!("{root}/{dir}"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = table.iter().map(|(n, _)| format!("{n}.json")).collect();
        listed.sort();
        assert_eq!(on_disk, listed, "tests/fixtures/{dir} and util.rs disagree");
    }
}

#[test]
fn every_sagemaker_fixture_parses_with_its_status() {
    let table = [
        ("sagemaker-inprogress-training", "InProgress", "Training"),
        (
            "sagemaker-inprogress-interrupted",
            "InProgress",
            "Interrupted",
        ),
        ("sagemaker-stopping", "Stopping", "Stopping"),
        (
            "sagemaker-stopped-maxwait",
            "Stopped",
            "MaxWaitTimeExceeded",
        ),
        (
            "sagemaker-stopped-maxwait-duplicate",
            "Stopped",
            "MaxWaitTimeExceeded",
        ),
        (
            "sagemaker-stopped-maxwait-never-started",
            "Stopped",
            "MaxWaitTimeExceeded",
        ),
        (
            "sagemaker-stopped-maxruntime",
            "Stopped",
            "MaxRuntimeExceeded",
        ),
        ("sagemaker-stopped-user", "Stopped", "Stopped"),
        (
            "sagemaker-stopped-unknown-secondary",
            "Stopped",
            "Preempted",
        ),
        ("sagemaker-failed-capacity", "Failed", "Failed"),
        ("sagemaker-failed-internal", "Failed", "Failed"),
        ("sagemaker-failed-algorithm", "Failed", "Failed"),
        ("sagemaker-failed-client", "Failed", "Failed"),
        ("sagemaker-completed", "Completed", "Completed"),
        ("sagemaker-completed-lineage", "Completed", "Completed"),
        ("sagemaker-unknown-status", "Paused", "Hibernating"),
        ("sagemaker-not-enabled", "Stopped", "MaxWaitTimeExceeded"),
        ("sagemaker-minimal", "Completed", "Completed"),
    ];
    for (name, status, secondary) in table {
        let job = facts(name);
        assert_eq!(job.origin, FactsOrigin::EventDetail);
        assert_eq!(
            job.status.as_ref().map(|s| s.as_str()),
            Some(status),
            "{name}"
        );
        assert_eq!(
            job.secondary_status.as_ref().map(|s| s.as_str()),
            Some(secondary),
            "{name}"
        );
    }
    assert_eq!(
        facts("sagemaker-unknown-status").status,
        Some(TrainingJobStatus::Unknown("Paused".into()))
    );
    assert_eq!(
        facts("sagemaker-unknown-status").secondary_status,
        Some(SecondaryStatus::Unknown("Hibernating".into()))
    );
    // The status is what a state change is about: without it the event is malformed.
    let err = parse_event(event_text("sagemaker-no-status").as_bytes()).unwrap_err();
    assert!(
        matches!(
            err,
            EventError::MissingField {
                field: "detail.TrainingJobStatus",
                ..
            }
        ),
        "{err}"
    );
}

/// Regression: a detail field of an unexpected shape turned a real event into a malformed one.
#[test]
fn a_real_event_with_odd_fields_is_still_the_event_it_is() {
    let mut value: serde_json::Value =
        serde_json::from_str(event_text("sagemaker-stopped-maxwait")).unwrap();
    let detail = &mut value["detail"];
    detail["ResourceConfig"] = serde_json::json!("ml.p3.2xlarge");
    detail["SecondaryStatusTransitions"] = serde_json::json!({"Status": "Training"});
    detail["Tags"] = serde_json::json!(5);
    detail["TrainingStartTime"] = serde_json::json!(true);
    detail["StoppingCondition"]["MaxRuntimeInSeconds"] = serde_json::json!(-7);
    let Ok(Parsed::Relevant(event)) = spotcheck_control::events::parse_event_value(&value) else {
        panic!("still a relevant event")
    };
    let Signal::TrainingJobStateChange { job } = &event.signal else {
        panic!("{:?}", event.signal)
    };
    assert_eq!(job.name, "resnet50-spot");
    assert_eq!(job.status, Some(TrainingJobStatus::Stopped));
    assert_eq!(
        job.secondary_status,
        Some(SecondaryStatus::MaxWaitTimeExceeded)
    );
    assert_eq!(
        job.unreadable,
        [
            "ResourceConfig",
            "SecondaryStatusTransitions",
            "StoppingCondition.MaxRuntimeInSeconds",
            "TrainingStartTime",
            "Tags"
        ]
    );
    // And it is decided on as before: Describe is the authority for the rest.
    let input = spotcheck_control::DecisionInput::new(
        event,
        Some(crate::util::job("describe-stopped-maxwait")),
        &crate::util::tags(&[("spotcheck:enabled", "true")]),
        crate::util::step(Some(1200)),
        &[],
        spotcheck_control::Policy::default(),
        crate::util::now(),
    )
    .unwrap();
    let decision = spotcheck_control::decide(&input);
    assert_eq!(decision.action_name(), "relaunch", "{}", decision.reason);
}

#[test]
fn tags_as_map_and_as_list_read_the_same() {
    let map = facts("sagemaker-inprogress-training").tags; // {"k": "v"}
    let list = facts("sagemaker-inprogress-interrupted").tags; // [{"Key", "Value"}]
    assert_eq!(map, list);
    assert!(map.is_enabled());
    assert_eq!(map.get("team"), Some("vision"));
    // ListTags output as a separate input reads the same too.
    let listed = Tags::from_json(job_text("list-tags-resnet50-spot").as_bytes()).unwrap();
    assert_eq!(listed, map);
    // A Describe with a Tags list field keeps it.
    assert_eq!(
        job("describe-failed-capacity")
            .tags
            .get("spotcheck:attempt"),
        Some("2")
    );
}

#[test]
fn times_as_ms_strings_ms_numbers_float_seconds_and_rfc3339_agree() {
    // Epoch-ms strings (the documented event shape).
    assert_eq!(
        facts("sagemaker-stopped-maxwait").last_modified_time,
        Some(t("2024-06-01T12:00:00.512Z"))
    );
    // Epoch-ms numbers.
    assert_eq!(
        facts("sagemaker-inprogress-interrupted").last_modified_time,
        Some(t("2024-06-01T10:00:00.250Z"))
    );
    // Float epoch seconds.
    assert_eq!(
        facts("sagemaker-failed-capacity").last_modified_time,
        Some(t("2024-06-01T12:10:00Z"))
    );
    // RFC 3339.
    assert_eq!(
        facts("sagemaker-stopped-maxruntime").training_end_time,
        Some(t("2024-06-04T00:00:05Z"))
    );
    // The event (ms strings) and Describe (ISO 8601 with +00:00) of the same state agree on
    // every time, transitions included.
    let from_event = facts("sagemaker-stopped-maxwait");
    let from_describe = job("describe-stopped-maxwait");
    assert_eq!(
        from_event.last_modified_time,
        from_describe.last_modified_time
    );
    assert_eq!(from_event.creation_time, from_describe.creation_time);
    assert_eq!(from_event.transitions, from_describe.transitions);
    // Float-seconds Describe.
    assert_eq!(
        job("describe-completed").training_end_time,
        Some(t("2024-06-07T11:03:00Z"))
    );
}

#[test]
fn describe_carries_what_events_do_not() {
    let event_facts = facts("sagemaker-stopped-maxwait");
    assert_eq!(event_facts.billable_time_seconds, None);
    assert_eq!(event_facts.managed_spot, None);
    assert_eq!(event_facts.checkpoint, None);

    let d = job("describe-stopped-maxwait");
    assert_eq!(d.origin, FactsOrigin::DescribeTrainingJob);
    assert_eq!(d.name, ROOT);
    assert_eq!(d.instance_type.as_deref(), Some("ml.p3.2xlarge"));
    assert_eq!(d.instance_count, Some(1));
    assert_eq!(d.managed_spot, Some(true));
    assert_eq!(d.max_runtime_seconds, Some(7200));
    assert_eq!(d.max_wait_seconds, Some(10800));
    assert_eq!(
        d.checkpoint_uri(),
        Some("s3://ml-checkpoints-123456789012/resnet50-spot/checkpoints")
    );
    assert_eq!(
        d.checkpoint.as_ref().and_then(|c| c.local_path.as_deref()),
        Some("/opt/ml/checkpoints")
    );
    assert_eq!(d.training_time_seconds, Some(5400));
    assert_eq!(d.billable_time_seconds, Some(1620));
    assert_eq!(d.interruptions(), 2);
    assert!(d.reached_training());
    assert!(!job("describe-stopped-maxwait-never-started").reached_training());
    assert!(job("describe-failed-algorithm")
        .failure_reason
        .unwrap()
        .starts_with("AlgorithmError"));
    assert_eq!(job("describe-failed-capacity").name, R2);
    // Describe has no Tags field unless merged in: the ListTags input adds them.
    let merged =
        d.with_tags(&Tags::from_json(job_text("list-tags-resnet50-spot").as_bytes()).unwrap());
    assert!(merged.tags.is_enabled());
}

#[test]
fn minimal_event_takes_its_name_from_resources_and_ignores_unknown_fields() {
    let job = facts("sagemaker-minimal");
    assert_eq!(job.name, "minimal-job");
    assert!(job.tags.is_empty());
    assert!(job.transitions.is_empty());
}

#[test]
fn envelope_and_keys() {
    let e = event("sagemaker-stopped-maxwait");
    assert_eq!(e.envelope.account.as_deref(), Some("123456789012"));
    assert_eq!(e.envelope.region.as_deref(), Some("us-east-1"));
    assert_eq!(e.envelope.time, Some(t("2024-06-01T12:00:01Z")));
    assert_eq!(
        e.key.as_str(),
        "sagemaker-3fad1b5b-4e80-4b88-a03f-8d4b6b4a5d04"
    );
    assert_eq!(event("sagemaker-not-enabled").envelope.account, None);
    assert!(event("ec2-spot-interruption-terminate")
        .key
        .as_str()
        .starts_with("spot-itn-"));
    assert!(event("ec2-rebalance-recommendation")
        .key
        .as_str()
        .starts_with("rebalance-"));
    // Redelivery of the same bytes gives the same key; SageMaker's duplicate has its own id.
    assert_eq!(
        event("sagemaker-stopped-maxwait").key,
        event("sagemaker-stopped-maxwait").key
    );
    assert_ne!(
        event("sagemaker-stopped-maxwait").key,
        event("sagemaker-stopped-maxwait-duplicate").key
    );
}

#[test]
fn ec2_warnings_and_rebalance() {
    for (name, action) in [
        ("ec2-spot-interruption-terminate", SpotAction::Terminate),
        ("ec2-spot-interruption-stop", SpotAction::Stop),
        ("ec2-spot-interruption-hibernate", SpotAction::Hibernate),
    ] {
        assert_eq!(
            event(name).signal,
            Signal::SpotInterruption {
                instance_id: "i-0b1c2d3e4f5a6b7c8".into(),
                action: Some(action)
            },
            "{name}"
        );
    }
    assert_eq!(
        event("ec2-rebalance-recommendation").signal,
        Signal::RebalanceRecommendation {
            instance_id: "i-0b1c2d3e4f5a6b7c8".into()
        }
    );
}

#[test]
fn unrelated_events_are_irrelevant_not_errors() {
    for name in [
        "unrelated-ec2-state-change",
        "unrelated-scheduled-event",
        // Its detail is a string: irrelevant events are not inspected.
        "unrelated-sagemaker-tuning-job",
    ] {
        match parse_event(event_text(name).as_bytes()) {
            Ok(Parsed::Irrelevant(other)) => {
                assert!(other.key.as_str().starts_with("other-"), "{name}")
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn malformed_events_are_typed_errors_with_the_id() {
    let err = |name| parse_event(event_text(name).as_bytes()).unwrap_err();
    assert!(matches!(err("malformed-truncated"), EventError::Json(_)));
    assert_eq!(err("malformed-truncated").event_id(), None);

    let e = err("malformed-missing-detail-type");
    assert!(
        matches!(
            e,
            EventError::MissingField {
                field: "detail-type",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.event_id(), Some("39ad1bc5-4e80-4b88-a05f-8d6bc45a536e"));

    let e = err("malformed-status-not-a-string");
    assert!(
        matches!(
            e,
            EventError::Malformed {
                field: "detail.TrainingJobStatus",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.event_id(), Some("4abe2cd6-5f91-4c99-b160-9e7cd56b647f"));
    assert!(e.to_string().contains("4abe2cd6"), "{e}");

    let e = err("malformed-detail-not-an-object");
    assert!(
        matches!(
            e,
            EventError::Malformed {
                field: "detail",
                ..
            }
        ),
        "{e}"
    );

    let e = err("malformed-ec2-missing-instance-id");
    assert!(
        matches!(
            e,
            EventError::MissingField {
                field: "detail.instance-id",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.event_id(), Some("6cd04ef8-71b3-4ebb-9382-b09ef78d8691"));
}

#[test]
fn malformed_describe_outputs_are_typed_errors() {
    assert!(matches!(
        JobFacts::from_describe_json(b"{\"TrainingJobName\": "),
        Err(JobError::Json(_))
    ));
    assert!(matches!(
        JobFacts::from_describe_json(b"[1]"),
        Err(JobError::NotAnObject)
    ));
    assert!(matches!(
        JobFacts::from_describe_json(b"{\"TrainingJobStatus\": \"Completed\"}"),
        Err(JobError::MissingName)
    ));
    // Other fields are read leniently: left out and named.
    let facts =
        JobFacts::from_describe_json(b"{\"TrainingJobName\": \"a\", \"CreationTime\": \"soon\"}")
            .unwrap();
    assert_eq!(facts.creation_time, None);
    assert_eq!(facts.unreadable, ["CreationTime"]);
}
