//! `spotcheck_aws::invoke`, the one Lambda invocation both functions' `main`s run: the response
//! for a handled event, and the error type Lambda reports for each handler error.

use serde_json::{json, Value};
use spotcheck_aws::{invoke, ErrorKind, Failure, StdoutLog};
use spotcheck_control::Timestamp;

use crate::fakes::*;
use crate::sagemaker::handler;

/// `invoke` around the SageMaker handler `h`, as the function's `main` runs it.
async fn run(h: &crate::sagemaker::Handler, payload: &Value) -> Result<Value, Failure> {
    invoke(payload, |bytes: Vec<u8>, now: Timestamp| async move {
        h.handle(&bytes, now, &StdoutLog).await
    })
    .await
}

fn payload(fixture: &str) -> Value {
    serde_json::from_slice(&event(fixture)).unwrap()
}

#[tokio::test]
async fn handled_events_answer_their_outcome_and_errors_their_lambda_error_type() {
    let h = handler();
    // Acknowledged without a call: not an EventBridge event at all.
    let answer = run(&h, &json!({"hello": "world"})).await.unwrap();
    assert_eq!(answer, json!({"outcome": "malformed"}));
    assert_eq!(h.jobs.calls.total(), 0);
    let answer = run(&h, &payload("unrelated-scheduled-event.json"))
        .await
        .unwrap();
    assert_eq!(answer, json!({"outcome": "irrelevant"}));

    // A job that vanished: acknowledged.
    h.jobs.fail.inject("ListTags", ErrorKind::NotFound);
    let answer = run(&h, &payload("sagemaker-stopped-maxwait.json"))
        .await
        .unwrap();
    assert_eq!(answer, json!({"outcome": "job_not_found"}));

    // Still failing after the SDK's retries: Lambda retries it.
    h.jobs.fail.inject("ListTags", ErrorKind::Transient);
    let failure = run(&h, &payload("sagemaker-stopped-maxwait.json"))
        .await
        .unwrap_err();
    assert_eq!(failure.error_type, "Transient");
    assert!(failure.message.contains("ListTags"), "{}", failure.message);

    // A refusal retrying cannot fix: to the DLQ, named as such.
    h.jobs.fail.inject("ListTags", ErrorKind::Rejected);
    let failure = run(&h, &payload("sagemaker-stopped-maxwait.json"))
        .await
        .unwrap_err();
    assert_eq!(failure.error_type, "Refused");
}
