//! What a dead-letter message holds, and what to invoke the function with (pure).
//!
//! Owns reading a message body into the payload of the redrive's Invoke, and reading why the
//! message was dead-lettered from its attributes. It does no I/O.
//!
//! Three body shapes exist for an event that a Lambda function did not handle:
//!
//! | who dead-lettered it | body | attributes |
//! |---|---|---|
//! | an EventBridge rule target (`DeadLetterConfig` of the target: delivery failed) | the event itself | `RULE_ARN`, `TARGET_ARN`, `ERROR_CODE`, `ERROR_MESSAGE`, … |
//! | Lambda's asynchronous invocation (`DeadLetterConfig` of the function, SAM `DeadLetterQueue`: the function failed every try) | the event itself, unmodified | `RequestID`, `ErrorCode`, `ErrorMessage` |
//! | Lambda's on-failure *destination* (`DestinationConfig.OnFailure`) | an invocation record: `{"version", "timestamp", "requestContext", "requestPayload", "responseContext", "responsePayload"}` | none |
//!
//! spotcheck's stack (`infra/template.yaml`) uses the first two, so its queues hold events;
//! the third is unwrapped to its `requestPayload` so a queue wired as a destination can be
//! redriven the same way. Anything else that is JSON is passed on as it is (the function
//! decides: a malformed event is acknowledged by it); a body that is not JSON cannot be an
//! Invoke payload and is never sent.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// Which shape the body had.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// The body is the payload (EventBridge's and Lambda's dead-letter queues).
    Event,
    /// A Lambda on-failure destination record; the payload is its `requestPayload`.
    InvocationRecord,
}

/// The identifying fields of the event about to be redriven, for the report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EventSummary {
    /// EventBridge's event id.
    pub id: Option<String>,
    /// `source`, e.g. `aws.sagemaker`.
    pub source: Option<String>,
    /// `detail-type`.
    pub detail_type: Option<String>,
}

/// What to invoke the function with.
#[derive(Clone, Debug, PartialEq)]
pub struct Payload {
    /// The body's shape.
    pub shape: Shape,
    /// The Invoke payload: JSON, exactly the event the function would have received.
    pub bytes: Vec<u8>,
    /// The event's identifying fields.
    pub event: EventSummary,
}

/// Why a body cannot be redriven.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Lambda's Invoke takes JSON only; nothing that delivers events to the functions writes
    /// anything else, so this message did not come from them.
    #[error("the body is not JSON ({0}); it cannot be an Invoke payload")]
    NotJson(String),
}

/// Reads a message body into the payload to invoke the function with (see the module doc
/// for the shapes).
pub fn payload(body: &str) -> Result<Payload, BodyError> {
    let value: Value = serde_json::from_str(body).map_err(|e| BodyError::NotJson(e.to_string()))?;
    // An event goes out as the very bytes that came in; a record's inner event is
    // re-serialised (a parsed value has string keys only, so that cannot fail).
    let (shape, event, bytes) = match invocation_record_payload(&value) {
        Some(inner) => (
            Shape::InvocationRecord,
            inner,
            serde_json::to_vec(inner).unwrap_or_default(),
        ),
        None => (Shape::Event, &value, body.as_bytes().to_vec()),
    };
    let text = |key: &str| event.get(key).and_then(Value::as_str).map(str::to_owned);
    let summary = EventSummary {
        id: text("id"),
        source: text("source"),
        detail_type: text("detail-type"),
    };
    Ok(Payload {
        shape,
        bytes,
        event: summary,
    })
}

/// The `requestPayload` of a Lambda invocation record, if `value` is one: an object with a
/// `requestContext` object naming the function or the condition, and a `requestPayload`.
fn invocation_record_payload(value: &Value) -> Option<&Value> {
    let context = value.get("requestContext")?.as_object()?;
    if !(context.contains_key("functionArn") || context.contains_key("condition")) {
        return None;
    }
    value.get("requestPayload")
}

/// Why the message was dead-lettered, as its writer recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeadLettered {
    /// `eventbridge` (rule target delivery), `lambda` (asynchronous invocation) or
    /// `lambda_destination` (on-failure destination record).
    pub by: &'static str,
    /// The recorded error: code or type, then message.
    pub error: String,
}

/// Reads the dead-letter reason from the message attributes (string values by name) or, for
/// an invocation record, from the record itself; `None` when neither says.
pub fn dead_lettered(attributes: &BTreeMap<String, String>, body: &str) -> Option<DeadLettered> {
    let join = |code: Option<&String>, message: Option<&String>| {
        [code, message]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(": ")
    };
    if attributes.contains_key("ERROR_CODE") || attributes.contains_key("RULE_ARN") {
        return Some(DeadLettered {
            by: "eventbridge",
            error: join(
                attributes.get("ERROR_CODE"),
                attributes.get("ERROR_MESSAGE"),
            ),
        });
    }
    if attributes.contains_key("ErrorCode") || attributes.contains_key("RequestID") {
        return Some(DeadLettered {
            by: "lambda",
            error: join(attributes.get("ErrorCode"), attributes.get("ErrorMessage")),
        });
    }
    let value: Value = serde_json::from_str(body).ok()?;
    invocation_record_payload(&value)?;
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let response = value.get("responsePayload");
    let parts: Vec<String> = [
        text(value.pointer("/requestContext/condition")),
        text(response.and_then(|r| r.get("errorType"))),
        text(response.and_then(|r| r.get("errorMessage"))),
    ]
    .into_iter()
    .flatten()
    .collect();
    Some(DeadLettered {
        by: "lambda_destination",
        error: parts.join(": "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const EVENT: &str = r#"{"version":"0","id":"ev-1","detail-type":"SageMaker Training Job State Change","source":"aws.sagemaker","account":"1","time":"2026-01-01T00:00:00Z","region":"us-east-1","resources":[],"detail":{"TrainingJobName":"j"}}"#;

    fn record(payload: &Value) -> String {
        json!({
            "version": "1.0",
            "timestamp": "2026-01-01T00:00:10.000Z",
            "requestContext": {
                "requestId": "r-1",
                "functionArn": "arn:aws:lambda:us-east-1:1:function:sagemaker-events:$LATEST",
                "condition": "RetriesExhausted",
                "approximateInvokeCount": 3
            },
            "requestPayload": payload,
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
            "responsePayload": {"errorType": "Refused", "errorMessage": "AWS refused; fix the cause"}
        })
        .to_string()
    }

    #[test]
    fn an_event_body_is_the_payload_byte_for_byte() {
        let p = payload(EVENT).unwrap();
        assert_eq!(p.shape, Shape::Event);
        assert_eq!(p.bytes, EVENT.as_bytes());
        assert_eq!(p.event.id.as_deref(), Some("ev-1"));
        assert_eq!(p.event.source.as_deref(), Some("aws.sagemaker"));
        assert_eq!(
            p.event.detail_type.as_deref(),
            Some("SageMaker Training Job State Change")
        );
    }

    #[test]
    fn an_invocation_record_is_unwrapped_to_its_request_payload() {
        let event: Value = serde_json::from_str(EVENT).unwrap();
        let p = payload(&record(&event)).unwrap();
        assert_eq!(p.shape, Shape::InvocationRecord);
        assert_eq!(serde_json::from_slice::<Value>(&p.bytes).unwrap(), event);
        assert_eq!(p.event.id.as_deref(), Some("ev-1"));
    }

    #[test]
    fn other_json_is_passed_on_for_the_function_to_judge() {
        for body in [
            r#"{"detail-type": 7}"#,
            "[1, 2]",
            "\"text\"",
            "null",
            // A requestContext without the record's fields is not a record.
            r#"{"requestContext": {"x": 1}, "requestPayload": {"a": 1}}"#,
        ] {
            let p = payload(body).unwrap();
            assert_eq!(p.shape, Shape::Event, "{body}");
            assert_eq!(p.bytes, body.as_bytes());
            assert_eq!(p.event, EventSummary::default(), "{body}");
        }
    }

    #[test]
    fn a_body_that_is_not_json_is_refused() {
        for body in ["", "not json", "{\"truncated\": ", "\u{0}"] {
            assert!(
                matches!(payload(body), Err(BodyError::NotJson(_))),
                "{body:?}"
            );
        }
    }

    #[test]
    fn the_dead_letter_reason_comes_from_whoever_wrote_the_message() {
        let attrs = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            dead_lettered(
                &attrs(&[
                    ("RULE_ARN", "arn:aws:events:…:rule/r"),
                    ("ERROR_CODE", "SDK_CLIENT_ERROR"),
                    ("ERROR_MESSAGE", "throttled"),
                ]),
                EVENT
            ),
            Some(DeadLettered {
                by: "eventbridge",
                error: "SDK_CLIENT_ERROR: throttled".into()
            })
        );
        assert_eq!(
            dead_lettered(
                &attrs(&[
                    ("RequestID", "r-1"),
                    ("ErrorCode", "200"),
                    ("ErrorMessage", "transient AWS failure"),
                ]),
                EVENT
            ),
            Some(DeadLettered {
                by: "lambda",
                error: "200: transient AWS failure".into()
            })
        );
        let event: Value = serde_json::from_str(EVENT).unwrap();
        assert_eq!(
            dead_lettered(&BTreeMap::new(), &record(&event)),
            Some(DeadLettered {
                by: "lambda_destination",
                error: "RetriesExhausted: Refused: AWS refused; fix the cause".into()
            })
        );
        assert_eq!(dead_lettered(&BTreeMap::new(), EVENT), None);
        assert_eq!(dead_lettered(&BTreeMap::new(), "not json"), None);
    }
}
