//! Incoming EventBridge events, normalised into one internal [`Signal`].
//!
//! Owns the EventBridge envelope, the recognition of the three event kinds spotcheck reacts to
//! ("SageMaker Training Job State Change" from `aws.sagemaker`; "EC2 Spot Instance Interruption
//! Warning" and "EC2 Instance Rebalance Recommendation" from `aws.ec2`), and the deterministic
//! [`EventKey`] used for logging and idempotency. A malformed event is an [`EventError`] that
//! carries the event id when there is one; an unrelated event is [`Parsed::Irrelevant`]. Parsing
//! never panics, never calls AWS and never decides anything.
//!
//! What makes an event malformed is kept to what identifies it: the envelope's `source` and
//! `detail-type`, a `detail` object, and for a SageMaker state change the job's name (or ARN)
//! and its `TrainingJobStatus`; for an EC2 signal the `instance-id`. Any other detail field of
//! an unexpected shape is left out of the facts and noted, never a reason to drop the event.
//!
//! The envelope is our own rather than `aws_lambda_events::eventbridge::EventBridgeEvent`: that
//! type parses `time` strictly as RFC 3339 through chrono, so a test or replayed event with an
//! epoch time fails as a whole and its `id` is lost for the error report; reading the envelope
//! field by field keeps the id, names the bad field, and keeps chrono out of the pure core.

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::job::{FactsOrigin, JobFacts};
use crate::status::SpotAction;
use crate::timestamp::Timestamp;

/// `source` of SageMaker events.
pub const SOURCE_SAGEMAKER: &str = "aws.sagemaker";
/// `source` of EC2 events.
pub const SOURCE_EC2: &str = "aws.ec2";
/// `detail-type` of a SageMaker training-job state change.
pub const TRAINING_JOB_STATE_CHANGE: &str = "SageMaker Training Job State Change";
/// `detail-type` of the two-minute spot interruption warning.
pub const SPOT_INTERRUPTION_WARNING: &str = "EC2 Spot Instance Interruption Warning";
/// `detail-type` of the (earlier, noisier) rebalance recommendation.
pub const REBALANCE_RECOMMENDATION: &str = "EC2 Instance Rebalance Recommendation";

/// The EventBridge envelope, every field as delivered (`account` may be absent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Envelope {
    /// `version`.
    pub version: Option<String>,
    /// `id`: unique per event, repeated when EventBridge redelivers the same event.
    pub id: Option<String>,
    /// `detail-type`.
    pub detail_type: String,
    /// `source`.
    pub source: String,
    /// `account`.
    pub account: Option<String>,
    /// `time` the event was emitted.
    pub time: Option<Timestamp>,
    /// `region`.
    pub region: Option<String>,
    /// `resources` (ARNs).
    pub resources: Vec<String>,
}

/// A deterministic key for one delivered event, for logs and idempotency stores.
///
/// `<kind>-<EventBridge id>` (e.g. `spot-itn-<id>`, as AWS Node Termination Handler does), or
/// `<kind>-sha256-<16 hex>` over the canonical JSON of source, detail-type and detail when the
/// event has no id. Note that SageMaker may emit the same state change twice under different ids:
/// the relaunch name, not this key, is what makes those duplicates harmless.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct EventKey(String);

impl EventKey {
    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for EventKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What happened, whatever the source: the one input type of the decision engine.
#[derive(Clone, Debug, PartialEq)]
pub enum Signal {
    /// A SageMaker training job changed state; the detail, read as job facts.
    TrainingJobStateChange {
        /// The event's snapshot of the job (not authoritative: see [`crate::decision`]).
        job: Box<JobFacts>,
    },
    /// An EC2 spot instance will be reclaimed in about two minutes.
    SpotInterruption {
        /// `detail.instance-id`.
        instance_id: String,
        /// `detail.instance-action`; `None` when absent.
        action: Option<SpotAction>,
    },
    /// EC2 advises that a spot instance is at elevated risk (advisory, noisy).
    RebalanceRecommendation {
        /// `detail.instance-id`.
        instance_id: String,
    },
}

/// A recognised event: envelope, key and normalised signal.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Deterministic key of this delivery.
    pub key: EventKey,
    /// The envelope as delivered.
    pub envelope: Envelope,
    /// What happened.
    pub signal: Signal,
}

/// An event spotcheck does not handle (other source or detail-type): acknowledged, not an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Irrelevant {
    /// Deterministic key of this delivery.
    pub key: EventKey,
    /// The envelope as delivered.
    pub envelope: Envelope,
}

/// The outcome of parsing a well-formed event.
#[derive(Clone, Debug, PartialEq)]
pub enum Parsed {
    /// One of the three kinds spotcheck reacts to.
    Relevant(Event),
    /// Anything else.
    Irrelevant(Irrelevant),
}

/// Why an event is malformed. Never retryable: the same bytes fail the same way.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The bytes are not JSON (so there is no id to report).
    #[error("event is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// The JSON is not an object.
    #[error("event is not a JSON object")]
    NotAnObject,
    /// A field the event kind requires is absent.
    #[error("event {}: required field `{field}` is missing", id_text(.id))]
    MissingField {
        /// The event's `id`, when it has one.
        id: Option<String>,
        /// The missing field (dotted path).
        field: &'static str,
    },
    /// A field is present with a shape no AWS producer sends.
    #[error("event {}: field `{field}` is malformed: {message}", id_text(.id))]
    Malformed {
        /// The event's `id`, when it has one.
        id: Option<String>,
        /// The malformed field (dotted path).
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

fn id_text(id: &Option<String>) -> String {
    id.as_deref()
        .map_or_else(|| "(no id)".to_owned(), |id| format!("{id:?}"))
}

impl EventError {
    /// The EventBridge id of the failing event, when it had one.
    pub fn event_id(&self) -> Option<&str> {
        match self {
            EventError::MissingField { id, .. } | EventError::Malformed { id, .. } => id.as_deref(),
            EventError::Json(_) | EventError::NotAnObject => None,
        }
    }
}

/// Parses one EventBridge event (the Lambda payload or a replayed file).
pub fn parse_event(bytes: &[u8]) -> Result<Parsed, EventError> {
    let value: Value = serde_json::from_slice(bytes).map_err(EventError::Json)?;
    parse_event_value(&value)
}

/// Parses an already-decoded event.
pub fn parse_event_value(value: &Value) -> Result<Parsed, EventError> {
    let Value::Object(obj) = value else {
        return Err(EventError::NotAnObject);
    };
    let id = match obj.get("id") {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    let envelope = read_envelope(obj, &id)?;
    // Only the kinds we handle need a well-formed detail; others are irrelevant whatever it is.
    let detail = || match obj.get("detail") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(d)) => Ok(Some(d)),
        Some(_) => Err(malformed(&id, "detail", "must be an object")),
    };
    let source = envelope.source.as_str();
    let detail_type = envelope.detail_type.as_str();
    let (kind, signal) = match (source, detail_type) {
        (SOURCE_SAGEMAKER, TRAINING_JOB_STATE_CHANGE) => {
            let empty = Value::Object(Map::new());
            let detail_value = detail()?.map_or(empty, |d| Value::Object(d.clone()));
            let job = JobFacts::from_value(
                &detail_value,
                FactsOrigin::EventDetail,
                envelope.resources.first().map(String::as_str),
            )
            .map_err(|e| match e {
                crate::job::JobError::MissingName => EventError::MissingField {
                    id: id.clone(),
                    field: "detail.TrainingJobName",
                },
                other => malformed(&id, "detail.TrainingJobStatus", &other.to_string()),
            })?;
            // A state change without the state is no state change; every other detail field
            // is read leniently (see `JobFacts::unreadable`).
            if job.status.is_none() {
                return Err(EventError::MissingField {
                    id: id.clone(),
                    field: "detail.TrainingJobStatus",
                });
            }
            let signal = Signal::TrainingJobStateChange { job: Box::new(job) };
            ("sagemaker", signal)
        }
        (SOURCE_EC2, SPOT_INTERRUPTION_WARNING) => {
            let detail = detail()?;
            let instance_id = instance_id(detail, &id)?;
            let action = match detail.and_then(|d| d.get("instance-action")) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(SpotAction::from(s.as_str())),
                Some(_) => {
                    return Err(malformed(&id, "detail.instance-action", "must be a string"))
                }
            };
            let signal = Signal::SpotInterruption {
                instance_id,
                action,
            };
            ("spot-itn", signal)
        }
        (SOURCE_EC2, REBALANCE_RECOMMENDATION) => {
            let instance_id = instance_id(detail()?, &id)?;
            ("rebalance", Signal::RebalanceRecommendation { instance_id })
        }
        _ => {
            let key = event_key("other", &id, obj);
            return Ok(Parsed::Irrelevant(Irrelevant { key, envelope }));
        }
    };
    Ok(Parsed::Relevant(Event {
        key: event_key(kind, &id, obj),
        envelope,
        signal,
    }))
}

fn malformed(id: &Option<String>, field: &'static str, message: &str) -> EventError {
    EventError::Malformed {
        id: id.clone(),
        field,
        message: message.to_owned(),
    }
}

fn read_envelope(obj: &Map<String, Value>, id: &Option<String>) -> Result<Envelope, EventError> {
    let text = |field: &'static str| -> Result<Option<String>, EventError> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            // `version` is "0" in practice, but a number is harmless.
            Some(Value::Number(n)) if field == "version" => Ok(Some(n.to_string())),
            Some(_) => Err(malformed(id, field, "must be a string")),
        }
    };
    let required = |field: &'static str| -> Result<String, EventError> {
        text(field)?.ok_or(EventError::MissingField {
            id: id.clone(),
            field,
        })
    };
    let time = match obj.get("time") {
        None | Some(Value::Null) => None,
        Some(v) => {
            Some(Timestamp::from_json(v).map_err(|e| malformed(id, "time", &e.to_string()))?)
        }
    };
    let resources = match obj.get("resources") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                _ => Err(malformed(id, "resources", "must be a list of strings")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(malformed(id, "resources", "must be a list of strings")),
    };
    Ok(Envelope {
        version: text("version")?,
        id: text("id")?,
        detail_type: required("detail-type")?,
        source: required("source")?,
        account: text("account")?,
        time,
        region: text("region")?,
        resources,
    })
}

fn instance_id(
    detail: Option<&Map<String, Value>>,
    id: &Option<String>,
) -> Result<String, EventError> {
    match detail.and_then(|d| d.get("instance-id")) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        None | Some(Value::Null) => Err(EventError::MissingField {
            id: id.clone(),
            field: "detail.instance-id",
        }),
        Some(_) => Err(malformed(
            id,
            "detail.instance-id",
            "must be a non-empty string",
        )),
    }
}

fn event_key(kind: &str, id: &Option<String>, obj: &Map<String, Value>) -> EventKey {
    match id.as_deref().filter(|id| !id.is_empty()) {
        Some(id) => EventKey(format!("{kind}-{id}")),
        None => {
            let mut canonical = String::new();
            for field in ["source", "detail-type", "detail"] {
                write_canonical(obj.get(field).unwrap_or(&Value::Null), &mut canonical);
                canonical.push('\n');
            }
            let digest = Sha256::digest(canonical.as_bytes());
            EventKey(format!("{kind}-sha256-{}", &hex::encode(digest)[..16]))
        }
    }
}

/// JSON with object keys sorted, whatever map order serde_json was built with.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_without_id_ignores_key_order_and_envelope_noise() {
        let a = json!({"source": "aws.ec2", "detail-type": REBALANCE_RECOMMENDATION,
                       "time": "2024-01-01T00:00:00Z", "detail": {"instance-id": "i-1", "x": [1, {"b": 1, "a": 2}]}});
        let b = json!({"detail": {"x": [1, {"a": 2, "b": 1}], "instance-id": "i-1"},
                       "detail-type": REBALANCE_RECOMMENDATION, "source": "aws.ec2"});
        let (Parsed::Relevant(a), Parsed::Relevant(b)) = (
            parse_event_value(&a).unwrap(),
            parse_event_value(&b).unwrap(),
        ) else {
            panic!("both are rebalance recommendations");
        };
        assert_eq!(a.key, b.key);
        assert!(a.key.as_str().starts_with("rebalance-sha256-"));
    }

    #[test]
    fn errors_carry_the_id() {
        let err = parse_event_value(&json!({"id": "abc", "source": "aws.ec2"})).unwrap_err();
        assert_eq!(err.event_id(), Some("abc"));
        assert!(err.to_string().contains("detail-type"), "{err}");
        let err = parse_event_value(&json!({"id": "abc", "source": "aws.ec2",
            "detail-type": "x", "time": "soon"}))
        .unwrap_err();
        assert!(
            matches!(err, EventError::Malformed { field: "time", .. }),
            "{err}"
        );
        assert!(parse_event(b"[]").is_err());
    }
}
