//! Routing: the EventBridge rule patterns of `infra/template.yaml`, on LocalStack's
//! EventBridge, send every fixture event to the right function or to none.
//!
//! Two independent checks of the same expected routing table:
//!
//! 1. **TestEventPattern** (LocalStack's pattern engine) of each rule against each event, the
//!    template's `!Ref AWS::AccountId` resolved to the fixtures' account `123456789012`. An
//!    event EventBridge refuses as an event (not JSON, or missing a mandatory envelope field
//!    such as `account` or `detail-type`) is [`Route::Rejected`].
//! 2. **PutEvents** of each event's source, detail-type and detail onto a fresh bus whose rules
//!    are the template's patterns (account resolved to LocalStack's own, which the bus stamps
//!    on every event), each rule targeting an SQS queue: what arrives in which queue, polled
//!    with a deadline. A catch-all rule proves every accepted event was delivered somewhere, so
//!    "routed nowhere" is a real negative. Entries the bus refuses are [`Route::Rejected`].
//!
//! The two columns differ only where the bus fills in the envelope (`sagemaker-minimal` and
//! `sagemaker-not-enabled` have no `account`; the bus assigns one) or where the account is
//! foreign (a bus cannot be told another account). Held-out events, written here rather than
//! taken from the corpus, show the patterns generalise to the other shapes of
//! `../shared/notes/aws-facts.md`: times as numbers, `Tags` as a list, extra fields, secondary
//! statuses the corpus lacks.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{json, Value};
use spotcheck_tests::emulators::{self, Emulators, LOCAL_ACCOUNT};
use spotcheck_tests::fixtures;
use spotcheck_tests::sqs::{Sqs, Tap};
use spotcheck_tests::template::{self, TemplateRule, EC2_FUNCTION, SAGEMAKER_FUNCTION};

/// The fixtures' account.
const FIXTURE_ACCOUNT: &str = "123456789012";

/// Where an event goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Route {
    /// The sagemaker-events function's rule.
    SageMaker,
    /// The ec2-spot-events function's rule.
    Ec2,
    /// No rule of the template matches.
    Nowhere,
    /// EventBridge refuses it as an event.
    Rejected,
}
use Route::*;

/// Every fixture: (file stem, TestEventPattern route, PutEvents route).
const EXPECTED: &[(&str, Route, Route)] = &[
    ("ec2-rebalance-recommendation", Ec2, Ec2),
    ("ec2-spot-interruption-hibernate", Ec2, Ec2),
    ("ec2-spot-interruption-stop", Ec2, Ec2),
    ("ec2-spot-interruption-terminate", Ec2, Ec2),
    // The pattern cannot see a malformed detail; the handler acknowledges it.
    ("malformed-detail-not-an-object", Nowhere, Rejected),
    ("malformed-ec2-missing-instance-id", Ec2, Ec2),
    ("malformed-missing-detail-type", Rejected, Rejected),
    ("malformed-status-not-a-string", Nowhere, Nowhere),
    ("malformed-truncated", Rejected, Rejected),
    ("sagemaker-completed-lineage", SageMaker, SageMaker),
    ("sagemaker-completed", SageMaker, SageMaker),
    ("sagemaker-failed-algorithm", SageMaker, SageMaker),
    ("sagemaker-failed-capacity", SageMaker, SageMaker),
    ("sagemaker-failed-client", SageMaker, SageMaker),
    ("sagemaker-failed-internal", SageMaker, SageMaker),
    ("sagemaker-inprogress-interrupted", SageMaker, SageMaker),
    ("sagemaker-inprogress-training", Nowhere, Nowhere),
    // No `account`: not an event for TestEventPattern; the bus stamps one on.
    ("sagemaker-minimal", Rejected, SageMaker),
    ("sagemaker-no-status", Nowhere, Nowhere),
    // The rule does not filter on the opt-in tag (see the template); the handler does.
    ("sagemaker-not-enabled", Rejected, SageMaker),
    ("sagemaker-stopped-maxruntime", SageMaker, SageMaker),
    ("sagemaker-stopped-maxwait-duplicate", SageMaker, SageMaker),
    (
        "sagemaker-stopped-maxwait-never-started",
        SageMaker,
        SageMaker,
    ),
    ("sagemaker-stopped-maxwait", SageMaker, SageMaker),
    ("sagemaker-stopped-unknown-secondary", Nowhere, Nowhere),
    ("sagemaker-stopped-user", SageMaker, SageMaker),
    ("sagemaker-stopping", Nowhere, Nowhere),
    ("sagemaker-unknown-status", Nowhere, Nowhere),
    ("unrelated-ec2-state-change", Nowhere, Nowhere),
    ("unrelated-sagemaker-tuning-job", Nowhere, Rejected),
    ("unrelated-scheduled-event", Nowhere, Nowhere),
];

fn sagemaker_event(account: &str, detail: Value) -> Value {
    json!({
        "version": "0",
        "id": "0b7c7a3e-7f1c-4f53-9a55-3d0e8f1e2a61",
        "detail-type": "SageMaker Training Job State Change",
        "source": "aws.sagemaker",
        "account": account,
        "time": "2025-03-02T10:11:12Z",
        "region": "eu-west-1",
        "resources": [format!("arn:aws:sagemaker:eu-west-1:{account}:training-job/{}",
                              detail["TrainingJobName"].as_str().unwrap_or("x"))],
        "detail": detail,
    })
}

/// Events written for this test, in shapes the corpus does not have: (name, event,
/// TestEventPattern route, PutEvents route).
fn held_out() -> Vec<(&'static str, Value, Route, Route)> {
    vec![
        (
            "held-out: Stopped/MaxWaitTimeExceeded, times as numbers, Tags as a list",
            sagemaker_event(
                FIXTURE_ACCOUNT,
                json!({
                    "TrainingJobName": "vit-b16-spot",
                    "TrainingJobArn": "arn:aws:sagemaker:eu-west-1:123456789012:training-job/vit-b16-spot",
                    "TrainingJobStatus": "Stopped",
                    "SecondaryStatus": "MaxWaitTimeExceeded",
                    "CreationTime": 1740900000000u64,
                    "LastModifiedTime": 1740910000123u64,
                    "TrainingStartTime": 1740900060000u64,
                    "TrainingEndTime": 1740910000123u64,
                    "ResourceConfig": {"InstanceType": "ml.g5.12xlarge", "InstanceCount": 2, "VolumeSizeInGB": 200},
                    "Tags": [{"Key": "spotcheck:enabled", "Value": "true"}, {"Key": "project", "Value": "vit"}],
                    "SomeFieldAddedLater": {"nested": [1, 2, 3]}
                }),
            ),
            SageMaker,
            SageMaker,
        ),
        (
            "held-out: InProgress/Interrupted, times as epoch-ms strings, no Tags",
            sagemaker_event(
                FIXTURE_ACCOUNT,
                json!({
                    "TrainingJobName": "whisper-ft",
                    "TrainingJobStatus": "InProgress",
                    "SecondaryStatus": "Interrupted",
                    "CreationTime": "1740900000000",
                    "SecondaryStatusTransitions": [
                        {"Status": "Training", "StartTime": 1740900060000u64, "EndTime": 1740901060000u64},
                        {"Status": "Interrupted", "StartTime": 1740901060000u64}
                    ]
                }),
            ),
            SageMaker,
            SageMaker,
        ),
        (
            "held-out: Failed with a capacity reason and no SecondaryStatus",
            sagemaker_event(
                FIXTURE_ACCOUNT,
                json!({"TrainingJobName": "t5-large", "TrainingJobStatus": "Failed",
                       "FailureReason": "CapacityError: Unable to provision requested ML compute capacity."}),
            ),
            SageMaker,
            SageMaker,
        ),
        (
            "held-out: InProgress/Restarting (a secondary status the corpus lacks)",
            sagemaker_event(
                FIXTURE_ACCOUNT,
                json!({"TrainingJobName": "t5-large", "TrainingJobStatus": "InProgress", "SecondaryStatus": "Restarting"}),
            ),
            Nowhere,
            Nowhere,
        ),
        (
            "held-out: Completed in another account",
            sagemaker_event(
                "210987654321",
                json!({"TrainingJobName": "t5-large", "TrainingJobStatus": "Completed", "SecondaryStatus": "Completed"}),
            ),
            Nowhere,
            // The bus stamps its own account on whatever is put.
            SageMaker,
        ),
        (
            "held-out: EC2 spot warning, another region, empty resources, extra detail",
            json!({
                "version": "0", "id": "c1f7e0e4-65a3-4f1b-9d0e-2b4b7f0f3a11",
                "detail-type": "EC2 Spot Instance Interruption Warning", "source": "aws.ec2",
                "account": FIXTURE_ACCOUNT, "time": "2025-03-02T10:11:12Z", "region": "ap-southeast-2",
                "resources": [],
                "detail": {"instance-id": "i-0fedcba9876543210", "instance-action": "terminate", "extra": true}
            }),
            Ec2,
            Ec2,
        ),
        (
            "held-out: EC2 rebalance recommendation with the resources ARN only",
            json!({
                "version": "0", "id": "d2a8f1f5-76b4-4a2c-8e1f-3c5c8a1b4b22",
                "detail-type": "EC2 Instance Rebalance Recommendation", "source": "aws.ec2",
                "account": FIXTURE_ACCOUNT, "time": "2025-03-02T10:11:12Z", "region": "us-west-2",
                "resources": ["arn:aws:ec2:us-west-2:123456789012:instance/i-0123456789abcdef0"],
                "detail": {"instance-id": "i-0123456789abcdef0"}
            }),
            Ec2,
            Ec2,
        ),
        (
            "held-out: EC2 instance state change (not a spot signal)",
            json!({
                "version": "0", "id": "e3b9f2a6-87c5-4b3d-9f20-4d6d9b2c5c33",
                "detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2",
                "account": FIXTURE_ACCOUNT, "time": "2025-03-02T10:11:12Z", "region": "us-west-2",
                "resources": [], "detail": {"instance-id": "i-0123456789abcdef0", "state": "stopping"}
            }),
            Nowhere,
            Nowhere,
        ),
    ]
}

/// A case: its name, its bytes, and the two expected routes.
struct Case {
    name: String,
    bytes: Vec<u8>,
    test_pattern: Route,
    bus: Route,
}

fn cases() -> Vec<Case> {
    let expected: BTreeMap<&str, (Route, Route)> =
        EXPECTED.iter().map(|(n, a, b)| (*n, (*a, *b))).collect();
    let corpus = fixtures::events();
    let missing: Vec<&str> = corpus
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| !expected.contains_key(n))
        .collect();
    assert!(
        missing.is_empty(),
        "fixtures without an expected route (add them to EXPECTED): {missing:?}"
    );
    let stale: Vec<&&str> = expected
        .keys()
        .filter(|n| !corpus.iter().any(|(c, _)| c == *n))
        .collect();
    assert!(
        stale.is_empty(),
        "EXPECTED names missing fixtures: {stale:?}"
    );
    let mut out: Vec<Case> = corpus
        .into_iter()
        .map(|(name, bytes)| {
            let (test_pattern, bus) = expected[name.as_str()];
            Case {
                name,
                bytes,
                test_pattern,
                bus,
            }
        })
        .collect();
    out.extend(held_out().into_iter().map(|(name, event, t, b)| Case {
        name: name.to_owned(),
        bytes: serde_json::to_vec(&event).expect("JSON"),
        test_pattern: t,
        bus: b,
    }));
    out
}

/// The two function rules of the template, checked to be what the table assumes.
fn function_rules(account: &str) -> Vec<(Route, TemplateRule)> {
    let all = template::rules(account);
    assert_eq!(
        all.len(),
        2,
        "infra/template.yaml has exactly the two function rules: {all:?}"
    );
    vec![
        (SageMaker, template::rule_for(account, SAGEMAKER_FUNCTION)),
        (Ec2, template::rule_for(account, EC2_FUNCTION)),
    ]
}

fn route_of(matched: &[Route], case: &str) -> Route {
    match matched {
        [] => Nowhere,
        [one] => *one,
        many => panic!("{case} matched several rules: {many:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_patterns_route_every_fixture_test_event_pattern() {
    let e = Emulators::from_env();
    let eb = emulators::eventbridge(&e.eventbridge).await;
    let rules = function_rules(FIXTURE_ACCOUNT);
    let mut wrong = Vec::new();
    for case in cases() {
        let event = String::from_utf8_lossy(&case.bytes).into_owned();
        let mut matched = Vec::new();
        let mut rejected = None;
        for (route, rule) in &rules {
            match eb
                .test_event_pattern()
                .event_pattern(rule.pattern.to_string())
                .event(&event)
                .send()
                .await
            {
                Ok(out) => {
                    if out.result() {
                        matched.push(*route);
                    }
                }
                Err(err) => {
                    let text = aws_sdk_eventbridge::error::DisplayErrorContext(&err).to_string();
                    assert!(
                        text.contains("ValidationException")
                            || text.contains("InvalidEventPattern"),
                        "TestEventPattern failed for {} other than by refusing the event: {text}",
                        case.name
                    );
                    rejected = Some(text);
                }
            }
        }
        let got = if rejected.is_some() {
            assert!(
                matched.is_empty(),
                "{}: rejected by one rule, matched by another",
                case.name
            );
            Rejected
        } else {
            route_of(&matched, &case.name)
        };
        if got != case.test_pattern {
            wrong.push(format!(
                "{}: expected {:?}, LocalStack says {got:?} ({rejected:?})",
                case.name, case.test_pattern
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "TestEventPattern routing differs:\n{}",
        wrong.join("\n")
    );
}

/// PutEvents entry fields of an event, or `None` when it is not a JSON object.
fn entry_of(bytes: &[u8], bus: &str) -> Option<aws_sdk_eventbridge::types::PutEventsRequestEntry> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    let obj = v.as_object()?;
    let mut b = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder().event_bus_name(bus);
    if let Some(s) = obj.get("source").and_then(Value::as_str) {
        b = b.source(s);
    }
    if let Some(t) = obj.get("detail-type").and_then(Value::as_str) {
        b = b.detail_type(t);
    }
    if let Some(d) = obj.get("detail") {
        b = b.detail(d.to_string());
    }
    for r in obj
        .get("resources")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(r) = r.as_str() {
            b = b.resources(r);
        }
    }
    Some(b.build())
}

fn ids(messages: &[Value]) -> BTreeSet<String> {
    messages
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_patterns_route_every_fixture_put_events_to_sqs_taps() {
    let e = Emulators::from_env();
    let eb = emulators::eventbridge(&e.eventbridge).await;
    let sqs = Sqs::new(&e.sqs);
    let bus = emulators::unique("spotcheck-routing");
    eb.create_event_bus()
        .name(&bus)
        .send()
        .await
        .unwrap_or_else(|err| {
            panic!(
                "CreateEventBus: {}",
                aws_sdk_eventbridge::error::DisplayErrorContext(&err)
            )
        });

    // One tap per function rule (the template's pattern, the bus's account), and a catch-all.
    let mut taps: Vec<(Route, Tap)> = Vec::new();
    for (route, rule) in function_rules(LOCAL_ACCOUNT) {
        let name = emulators::unique(&format!("tap-{}", rule.logical_id.to_ascii_lowercase()));
        taps.push((
            route,
            Tap::create(&eb, &sqs, &bus, &name, &rule.pattern).await,
        ));
    }
    let all = Tap::create(
        &eb,
        &sqs,
        &bus,
        &emulators::unique("tap-all"),
        &json!({"account": [LOCAL_ACCOUNT]}),
    )
    .await;

    // Put every case; remember which event id is which case.
    let cases = cases();
    let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
    let mut got: Vec<Route> = vec![Nowhere; cases.len()];
    for (i, case) in cases.iter().enumerate() {
        let Some(entry) = entry_of(&case.bytes, &bus) else {
            got[i] = Rejected;
            continue;
        };
        let out = eb
            .put_events()
            .entries(entry)
            .send()
            .await
            .unwrap_or_else(|err| {
                panic!(
                    "PutEvents {}: {}",
                    case.name,
                    aws_sdk_eventbridge::error::DisplayErrorContext(&err)
                )
            });
        let result = &out.entries()[0];
        match (result.event_id(), result.error_code()) {
            (Some(id), None) => {
                by_id.insert(id.to_owned(), i);
            }
            _ => got[i] = Rejected,
        }
    }

    // Everything accepted reaches the catch-all tap...
    let accepted: BTreeSet<String> = by_id.keys().cloned().collect();
    let seen_all = sqs
        .collect_until(&all.queue, Duration::from_secs(30), |m| {
            ids(m).is_superset(&accepted)
        })
        .await;
    assert_eq!(
        ids(&seen_all),
        accepted,
        "the catch-all tap got every accepted event"
    );

    // ...and each function's tap exactly what its rule routes.
    let mut wrong = Vec::new();
    for (route, tap) in &taps {
        let expected: BTreeSet<String> = by_id
            .iter()
            .filter(|(_, i)| cases[**i].bus == *route)
            .map(|(id, _)| id.clone())
            .collect();
        let mut seen = sqs
            .collect_until(&tap.queue, Duration::from_secs(30), |m| {
                ids(m).is_superset(&expected)
            })
            .await;
        // One more long poll: anything routed here that should not be has arrived by now
        // (the catch-all has everything, and delivery to each target is independent).
        for m in sqs.receive(&tap.queue, 1).await {
            seen.push(serde_json::from_str(&m.body).unwrap_or(Value::Null));
        }
        for m in &seen {
            let id = m["id"].as_str().unwrap_or_default();
            let Some(&i) = by_id.get(id) else {
                wrong.push(format!(
                    "{route:?} tap got an event this test did not put: {m}"
                ));
                continue;
            };
            got[i] = *route;
            // The delivered event is the put one, enveloped by the bus.
            let put: Value = serde_json::from_slice(&cases[i].bytes).unwrap_or(Value::Null);
            assert_eq!(
                m["detail"], put["detail"],
                "{}: detail delivered intact",
                cases[i].name
            );
            assert_eq!(m["detail-type"], put["detail-type"], "{}", cases[i].name);
            assert_eq!(
                m["account"], LOCAL_ACCOUNT,
                "{}: the bus's account",
                cases[i].name
            );
        }
        let extra = ids(&seen).difference(&expected).count();
        let seen_twice = seen.len() - ids(&seen).len();
        if extra > 0 || seen_twice > 0 {
            wrong.push(format!(
                "{route:?} tap: {extra} unexpected, {seen_twice} duplicated"
            ));
        }
    }
    for (i, case) in cases.iter().enumerate() {
        if got[i] != case.bus {
            wrong.push(format!(
                "{}: expected {:?}, delivered {:?}",
                case.name, case.bus, got[i]
            ));
        }
    }

    for (_, tap) in &taps {
        tap.remove(&eb, &sqs).await;
    }
    all.remove(&eb, &sqs).await;
    let _ = eb.delete_event_bus().name(&bus).send().await;
    assert!(
        wrong.is_empty(),
        "PutEvents routing differs:\n{}",
        wrong.join("\n")
    );
}

/// The held-out events are also events the engine parses as what their route says: relevant
/// SageMaker/EC2 signals for routed ones.
#[test]
fn held_out_events_parse_as_the_signals_they_are_routed_as() {
    use spotcheck_control::events::{parse_event, Parsed, Signal};
    for (name, event, route, _) in held_out() {
        let parsed = parse_event(&serde_json::to_vec(&event).expect("JSON"));
        let kind = match &parsed {
            Ok(Parsed::Relevant(e)) => match e.signal {
                Signal::TrainingJobStateChange { .. } => SageMaker,
                _ => Ec2,
            },
            Ok(Parsed::Irrelevant(_)) => Nowhere,
            Err(_) => Rejected,
        };
        match route {
            SageMaker | Ec2 => assert_eq!(kind, route, "{name}: {parsed:?}"),
            // Routed nowhere: the engine may still parse it (a state it ignores).
            _ => {}
        }
    }
}
