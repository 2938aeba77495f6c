//! The redrive (`spotcheck redrive`, the `spotcheck-redrive` crate) against emulators:
//! dead-letter messages in LocalStack's SQS, in the shapes EventBridge and Lambda write them,
//! handed by Lambda Invoke to the real `sagemaker-events` function — its `main`, compiled as
//! this package's `replay-sagemaker-events` binary, in cargo-lambda's runtime loop, against the
//! local SageMaker service behind a fault proxy, LocalStack's S3 and EventBridge.
//!
//! The redrive's SDK clients talk to cargo-lambda's Invoke endpoint through a proxy that
//! rewrites one wire difference (see [`as_lambda_answers`]): cargo-lambda answers a function
//! error with HTTP 500, Lambda with 200 and `X-Amz-Function-Error`. The proxy also counts the
//! invocations.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use aws_sdk_sqs::types::MessageAttributeValue;
use serde_json::{json, Value};
use spotcheck_control::naming::relaunch_name;
use spotcheck_redrive::message::Shape;
use spotcheck_redrive::{
    redrive, LambdaFunction, MessageReport, Options, Outcome, SqsQueue, Summary,
};
use spotcheck_tests::emulators::{self, Emulators, Tuning};
use spotcheck_tests::fixtures;
use spotcheck_tests::lambda::{as_lambda_answers, RuntimeApi};
use spotcheck_tests::local::{JobRequest, LocalSageMaker, Options as LocalOptions};
use spotcheck_tests::proxy::{Fault, FaultProxy, FaultRule};

const FUNCTION_EXE: &str = env!("CARGO_BIN_EXE_replay-sagemaker-events");
const FUNCTION: &str = "sagemaker-events";
const INVOKE: &str = "POST /2015-03-31/functions/sagemaker-events/invocations";
const P3: &str = "ml.p3.2xlarge";

/// Message attributes: name, SQS data type, value.
type Attributes = Vec<(&'static str, &'static str, String)>;

/// Message attributes as Lambda's asynchronous-invocation DLQ writes them.
fn lambda_dlq(request: &str, message: &str) -> Attributes {
    vec![
        ("RequestID", "String", request.to_owned()),
        ("ErrorCode", "Number", "200".to_owned()),
        ("ErrorMessage", "String", message.to_owned()),
    ]
}

/// Message attributes as an EventBridge rule target's DLQ writes them.
fn eventbridge_dlq(code: &str) -> Attributes {
    vec![
        (
            "RULE_ARN",
            "String",
            "arn:aws:events:us-east-1:000000000000:rule/spotcheck-SageMakerStateChangeRule".into(),
        ),
        (
            "TARGET_ARN",
            "String",
            "arn:aws:lambda:us-east-1:000000000000:function:sagemaker-events".into(),
        ),
        ("ERROR_CODE", "String", code.to_owned()),
        (
            "ERROR_MESSAGE",
            "String",
            "the target did not answer".into(),
        ),
        (
            "EXHAUSTED_RETRY_CONDITION",
            "String",
            "MaximumRetryAttempts".into(),
        ),
        ("RETRY_ATTEMPTS", "Number", "20".into()),
    ]
}

/// A Lambda on-failure destination record around `event`.
fn invocation_record(event: &Value) -> String {
    json!({
        "version": "1.0",
        "timestamp": "2026-01-01T00:00:10.000Z",
        "requestContext": {
            "requestId": "7a6c1e2d-0000-4000-8000-000000000001",
            "functionArn": "arn:aws:lambda:us-east-1:000000000000:function:sagemaker-events:$LATEST",
            "condition": "RetriesExhausted",
            "approximateInvokeCount": 3
        },
        "requestPayload": event,
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "responsePayload": {"errorType": "Transient", "errorMessage": "DescribeTrainingJob failed"}
    })
    .to_string()
}

async fn send(sqs: &aws_sdk_sqs::Client, url: &str, body: &str, attributes: &Attributes) -> String {
    let mut req = sqs.send_message().queue_url(url).message_body(body);
    for (name, kind, value) in attributes {
        let value = MessageAttributeValue::builder()
            .data_type(*kind)
            .string_value(value)
            .build()
            .expect("a message attribute");
        req = req.message_attributes(*name, value);
    }
    let sent = req.send().await.expect("SendMessage to LocalStack");
    sent.message_id().expect("a message id").to_owned()
}

/// The ids of every message in the queue, visible or not; each is made visible again after.
async fn queued(sqs: &aws_sdk_sqs::Client, url: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut handles = Vec::new();
    loop {
        let got = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .visibility_timeout(30)
            .send()
            .await
            .expect("ReceiveMessage");
        let messages = got.messages.unwrap_or_default();
        if messages.is_empty() {
            break;
        }
        for m in messages {
            ids.insert(m.message_id.expect("an id"));
            handles.push(m.receipt_handle.expect("a receipt handle"));
        }
    }
    for h in handles {
        sqs.change_message_visibility()
            .queue_url(url)
            .receipt_handle(h)
            .visibility_timeout(0)
            .send()
            .await
            .expect("ChangeMessageVisibility");
    }
    ids
}

async fn run(
    queue: &SqsQueue,
    function: &LambdaFunction,
    dry_run: bool,
) -> (Summary, BTreeMap<String, MessageReport>) {
    let options = Options {
        dry_run,
        visibility_timeout: Duration::from_secs(120),
        ..Options::default()
    };
    let mut reports = BTreeMap::new();
    let summary = redrive(queue, function, &options, |r| {
        let again = reports.insert(r.message_id.clone(), r.clone());
        assert!(again.is_none(), "one report per message and run: {r:?}");
    })
    .await;
    (summary, reports)
}

/// What happened to each message, by name: `redriven <outcome>`, `failed <type>`, `would`.
fn results(
    reports: &BTreeMap<String, MessageReport>,
    names: &BTreeMap<String, &'static str>,
) -> BTreeMap<&'static str, String> {
    reports
        .iter()
        .map(|(id, r)| {
            let what = match &r.outcome {
                Outcome::Redriven { outcome } => format!("redriven {outcome}"),
                Outcome::Failed { error_type, .. } => format!("failed {error_type}"),
                Outcome::WouldRedrive => "would".to_owned(),
            };
            (names[id], what)
        })
        .collect()
}

fn expect(pairs: &[(&'static str, &str)]) -> BTreeMap<&'static str, String> {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redrive_invokes_the_function_with_each_dead_letter_and_deletes_only_what_it_handled() {
    let e = Emulators::from_env();
    let s3 = emulators::s3(&e.s3).await;
    let bucket = emulators::bucket(&s3, "redrive-ml").await;
    let ledger = emulators::bucket(&s3, "redrive-ledger").await;
    let local = LocalSageMaker::start(
        &e.s3,
        LocalOptions {
            outages: vec![(P3.into(), 0.0, 1.0e7)],
            ..LocalOptions::default()
        },
    )
    .await;
    let sagemaker = FaultProxy::start(&local.endpoint()).await;

    // Four jobs whose spot capacity never came back: each ends Stopped/MaxWaitTimeExceeded,
    // which the function answers with a relaunch.
    let mut jobs: BTreeMap<&str, (String, Value)> = BTreeMap::new();
    for who in ["plain", "refused", "transient", "record"] {
        let name = emulators::unique(&format!("rdr-{who}"));
        local.create(&JobRequest::spot(&name, P3, &bucket).body());
        let stopped = local
            .event_for(
                &name,
                "Stopped",
                "MaxWaitTimeExceeded",
                Duration::from_secs(60),
            )
            .await;
        jobs.insert(who, (name, stopped));
    }
    let name = |who: &str| jobs[who].0.clone();
    let event = |who: &str| jobs[who].1.to_string();

    // The dead-letter queue, holding what the stack's DLQs hold (and two things they should
    // not): events from Lambda's and from EventBridge's dead-lettering, an on-failure record,
    // a malformed event, the other function's event, and a body that is not JSON.
    let tuning = Tuning::lambda_fast_backoff().await;
    let sqs = aws_sdk_sqs::Client::new(&emulators::sdk_config(&e.sqs, &tuning));
    let url = sqs
        .create_queue()
        .queue_name(emulators::unique("redrive-dlq"))
        .send()
        .await
        .expect("CreateQueue")
        .queue_url
        .expect("a queue URL");
    let ec2 = String::from_utf8(fixtures::event("ec2-spot-interruption-terminate")).unwrap();
    let malformed = String::from_utf8(fixtures::event("malformed-detail-not-an-object")).unwrap();
    let record_event = jobs["record"].1.clone();
    let messages: Vec<(&'static str, String, Attributes)> = vec![
        (
            "plain",
            event("plain"),
            lambda_dlq("req-1", "transient AWS failure"),
        ),
        (
            "refused",
            event("refused"),
            eventbridge_dlq("SDK_CLIENT_ERROR"),
        ),
        (
            "transient",
            event("transient"),
            lambda_dlq("req-2", "transient AWS failure"),
        ),
        ("record", invocation_record(&record_event), vec![]),
        ("malformed", malformed, lambda_dlq("req-3", "?")),
        ("ec2", ec2, eventbridge_dlq("NO_PERMISSIONS")),
        ("garbage", "this is not an event".to_owned(), vec![]),
    ];
    let mut names: BTreeMap<String, &'static str> = BTreeMap::new();
    for (who, body, attributes) in &messages {
        names.insert(send(&sqs, &url, body, attributes).await, who);
    }
    let id = |who: &str| {
        names
            .iter()
            .find(|(_, w)| **w == who)
            .map(|(id, _)| id.clone())
            .unwrap()
    };

    // The function, in cargo-lambda's runtime loop under its deployed name, and the Invoke
    // endpoint behind the proxy that gives it Lambda's wire format.
    let api = RuntimeApi::start().await;
    let env: Vec<(String, String)> = [
        ("SPOTCHECK_LEDGER_BUCKET", ledger.as_str()),
        ("SPOTCHECK_LEDGER_PREFIX", "spotcheck/"),
        ("AWS_ENDPOINT_URL_S3", e.s3.as_str()),
        ("AWS_ENDPOINT_URL_EVENTBRIDGE", e.eventbridge.as_str()),
        ("AWS_ENDPOINT_URL_SAGEMAKER", &sagemaker.endpoint()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut process = api.start_named_function(
        FUNCTION,
        Path::new(FUNCTION_EXE),
        &env,
        &dir.path().join("function.log"),
    );
    let invoke = FaultProxy::start(&api.invoke_endpoint()).await;
    invoke.rewrite_replies(as_lambda_answers);
    let queue = SqsQueue::new(&emulators::sdk_config(&e.sqs, &tuning), &url);
    let function = LambdaFunction::new(
        &emulators::sdk_config(&invoke.endpoint(), &tuning),
        FUNCTION,
    );

    // A dry run: every message reported with its shape and origin, nothing invoked or deleted.
    let (dry, reports) = run(&queue, &function, true).await;
    assert_eq!(
        results(&reports, &names),
        expect(&[
            ("plain", "would"),
            ("refused", "would"),
            ("transient", "would"),
            ("record", "would"),
            ("malformed", "would"),
            ("ec2", "would"),
            ("garbage", "failed Unreadable"),
        ])
    );
    assert_eq!((dry.would_redrive, dry.failed, dry.left), (6, 1, Some(7)));
    let record_report = &reports[&id("record")];
    assert_eq!(record_report.shape, Some(Shape::InvocationRecord));
    let record_event_id = record_event["id"].as_str().map(str::to_owned);
    assert_eq!(record_report.event.as_ref().unwrap().id, record_event_id);
    let by = |who: &str| reports[&id(who)].dead_lettered.as_ref().map(|d| d.by);
    assert_eq!(by("plain"), Some("lambda"));
    assert_eq!(by("refused"), Some("eventbridge"));
    assert_eq!(by("record"), Some("lambda_destination"));
    assert_eq!(invoke.count(INVOKE), 0, "a dry run invokes nothing");
    assert_eq!(queued(&sqs, &url).await.len(), 7);

    // The redrive, with SageMaker refusing one relaunch and failing to describe another job.
    sagemaker.inject(
        FaultRule::operation(
            "CreateTrainingJob",
            Fault::json_error(400, "ResourceLimitExceeded"),
        )
        .with_body_containing(&name("refused")),
    );
    sagemaker.inject(
        FaultRule::operation(
            "DescribeTrainingJob",
            Fault::json_error(500, "InternalFailure"),
        )
        .with_body_containing(&name("transient")),
    );
    let (first, reports) = run(&queue, &function, false).await;
    assert_eq!(
        results(&reports, &names),
        expect(&[
            ("plain", "redriven relaunched"),
            ("refused", "failed Refused"),
            ("transient", "failed Transient"),
            ("record", "redriven relaunched"),
            ("malformed", "redriven malformed"),
            ("ec2", "failed NotForThisFunction"),
            ("garbage", "failed Unreadable"),
        ])
    );
    let Outcome::Failed { message, .. } = &reports[&id("refused")].outcome else {
        unreachable!()
    };
    assert!(
        message.contains("CreateTrainingJob") && message.contains("ResourceLimitExceeded"),
        "the function's error message is reported: {message}"
    );
    assert_eq!(
        (
            first.redriven,
            first.failed,
            first.left,
            first.stopped.clone()
        ),
        (3, 4, Some(4), None)
    );
    assert!(first.warnings.is_empty(), "{:?}", first.warnings);
    let left: BTreeSet<String> = ["refused", "transient", "ec2", "garbage"]
        .iter()
        .map(|w| id(w))
        .collect();
    assert_eq!(
        queued(&sqs, &url).await,
        left,
        "only what the function handled is gone"
    );
    assert_eq!(invoke.count(INVOKE), 6, "one Invoke per readable message");
    let relaunched = |who: &str| {
        local
            .service
            .jobs()
            .iter()
            .filter(|j| j.name == relaunch_name(&name(who), 2))
            .count()
    };
    assert_eq!(
        ["plain", "refused", "transient", "record"].map(relaunched),
        [1, 0, 0, 1]
    );

    // The causes fixed, the same command again: the two failures are completed, the two
    // messages that are not this function's events stay, nothing is done twice.
    sagemaker.clear();
    let (second, reports) = run(&queue, &function, false).await;
    assert_eq!(
        results(&reports, &names),
        expect(&[
            ("refused", "redriven relaunched"),
            ("transient", "redriven relaunched"),
            ("ec2", "failed NotForThisFunction"),
            ("garbage", "failed Unreadable"),
        ])
    );
    assert_eq!(
        (second.redriven, second.failed, second.left),
        (2, 2, Some(2))
    );
    let left: BTreeSet<String> = ["ec2", "garbage"].iter().map(|w| id(w)).collect();
    assert_eq!(queued(&sqs, &url).await, left);
    assert_eq!(invoke.count(INVOKE), 6 + 3);
    assert_eq!(
        ["plain", "refused", "transient", "record"].map(relaunched),
        [1, 1, 1, 1],
        "every relaunch exists exactly once"
    );
    assert_eq!(
        sagemaker.forwarded("CreateTrainingJob"),
        4,
        "one CreateTrainingJob per relaunch reached SageMaker, none repeated"
    );
    assert!(
        process.running(),
        "one function process served every invocation"
    );
    let _ = sqs.delete_queue().queue_url(&url).send().await;
}
