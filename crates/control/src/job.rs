//! What the engine knows about one SageMaker training job: [`JobFacts`].
//!
//! Owns the tolerant reader for the PascalCase DescribeTrainingJob shape, exactly as the AWS CLI
//! prints it (times as ISO 8601 strings or epoch floats), and for the detail of a "SageMaker
//! Training Job State Change" event, which carries most of the same fields (times as epoch-ms
//! strings or numbers) and is the fallback when no Describe is available. It does not call AWS
//! and it does not decide anything.
//!
//! Reading is lenient: only the job's identity is required — a `TrainingJobName` or a
//! training-job ARN, and a `TrainingJobStatus` that, when present, is a string. Every other
//! field is read on its own: one of an unexpected shape (AWS's two event shapes differ, and the
//! schema is not frozen) is left out and named in [`JobFacts::unreadable`], so a real event is
//! never turned into a malformed one by a field the engine may not even need. Unknown fields are
//! ignored.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::status::{SecondaryStatus, TrainingJobStatus};
use crate::tags::Tags;
use crate::timestamp::Timestamp;

/// Where a [`JobFacts`] came from: it tells the engine how far to trust it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FactsOrigin {
    /// DescribeTrainingJob: authoritative current state.
    DescribeTrainingJob,
    /// An event's detail: a snapshot that may be duplicated, late or out of order.
    EventDetail,
}

/// One entry of `SecondaryStatusTransitions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatusTransition {
    /// The secondary status entered.
    pub status: SecondaryStatus,
    /// When it was entered.
    pub start_time: Option<Timestamp>,
    /// When it was left.
    pub end_time: Option<Timestamp>,
    /// SageMaker's message for it.
    pub message: Option<String>,
}

/// `CheckpointConfig`: where the job syncs checkpoints; a relaunch reuses the same `S3Uri`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckpointConfig {
    /// `S3Uri` (required by AWS, optional here so that a partial event still parses).
    pub s3_uri: Option<String>,
    /// `LocalPath` (AWS default `/opt/ml/checkpoints`).
    pub local_path: Option<String>,
}

/// The facts about a training job that the decision engine needs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobFacts {
    /// `TrainingJobName` (or the last segment of the ARN when the name is absent).
    pub name: String,
    /// `TrainingJobArn`.
    pub arn: Option<String>,
    /// `TrainingJobStatus`.
    pub status: Option<TrainingJobStatus>,
    /// `SecondaryStatus`.
    pub secondary_status: Option<SecondaryStatus>,
    /// `FailureReason` (only when Failed).
    pub failure_reason: Option<String>,
    /// `SecondaryStatusTransitions`, oldest first.
    pub transitions: Vec<StatusTransition>,
    /// `ResourceConfig.InstanceType`.
    pub instance_type: Option<String>,
    /// `ResourceConfig.InstanceCount`.
    pub instance_count: Option<u32>,
    /// `EnableManagedSpotTraining`.
    pub managed_spot: Option<bool>,
    /// `StoppingCondition.MaxRuntimeInSeconds`.
    pub max_runtime_seconds: Option<u64>,
    /// `StoppingCondition.MaxWaitTimeInSeconds`.
    pub max_wait_seconds: Option<u64>,
    /// `CheckpointConfig`.
    pub checkpoint: Option<CheckpointConfig>,
    /// `TrainingTimeInSeconds`.
    pub training_time_seconds: Option<u64>,
    /// `BillableTimeInSeconds`.
    pub billable_time_seconds: Option<u64>,
    /// `CreationTime`.
    pub creation_time: Option<Timestamp>,
    /// `TrainingStartTime`.
    pub training_start_time: Option<Timestamp>,
    /// `TrainingEndTime`.
    pub training_end_time: Option<Timestamp>,
    /// `LastModifiedTime`: how the engine tells a late event from the current state.
    pub last_modified_time: Option<Timestamp>,
    /// `Tags` when present in the JSON (events; a Describe merged with ListTags).
    pub tags: Tags,
    /// Where these facts came from.
    pub origin: FactsOrigin,
    /// Fields present with a shape they cannot have, left out (dotted paths, e.g.
    /// `ResourceConfig.InstanceCount`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

/// Why a DescribeTrainingJob output or event detail could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The bytes are not JSON.
    #[error("training job JSON is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// The JSON is not an object.
    #[error("training job JSON must be an object")]
    NotAnObject,
    /// Neither `TrainingJobName` nor a training-job ARN is present.
    #[error("training job JSON has neither TrainingJobName nor a training-job ARN")]
    MissingName,
    /// `TrainingJobStatus` is present but not a string.
    #[error("training job JSON has a malformed field: {0}")]
    Malformed(String),
}

impl JobFacts {
    /// Parses `aws sagemaker describe-training-job` output (a `Tags` field, if present, is kept).
    pub fn from_describe_json(bytes: &[u8]) -> Result<Self, JobError> {
        let value: Value = serde_json::from_slice(bytes).map_err(JobError::Json)?;
        Self::from_value(&value, FactsOrigin::DescribeTrainingJob, None)
    }

    /// Parses a PascalCase job object. `fallback_arn` (the event's `resources[0]`) supplies the
    /// name when the object has neither `TrainingJobName` nor `TrainingJobArn`.
    pub fn from_value(
        value: &Value,
        origin: FactsOrigin,
        fallback_arn: Option<&str>,
    ) -> Result<Self, JobError> {
        let obj = value.as_object().ok_or(JobError::NotAnObject)?;
        let status = match obj.get("TrainingJobStatus") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(TrainingJobStatus::from(text.as_str())),
            Some(other) => {
                return Err(JobError::Malformed(format!(
                    "TrainingJobStatus {other} is not a string"
                )))
            }
        };
        let mut r = Reader::default();
        let arn: Option<String> = r.field(obj, "", "TrainingJobArn");
        let name = r
            .field::<String>(obj, "", "TrainingJobName")
            .filter(|n| !n.is_empty())
            .or_else(|| arn.as_deref().and_then(name_from_arn))
            .or_else(|| fallback_arn.and_then(name_from_arn))
            .ok_or(JobError::MissingName)?;
        let resources = r.object(obj, "ResourceConfig");
        let stopping = r.object(obj, "StoppingCondition");
        let instance_count = resources.and_then(|rc| {
            let n = r
                .field::<FlexU64>(rc, "ResourceConfig.", "InstanceCount")?
                .0;
            let count = u32::try_from(n).ok();
            if count.is_none() {
                r.unreadable.push("ResourceConfig.InstanceCount".into());
            }
            count
        });
        let transitions = match obj.get("SecondaryStatusTransitions") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|item| {
                    let t = item.as_object()?;
                    let path = "SecondaryStatusTransitions[].";
                    Some(StatusTransition {
                        status: r.field(t, path, "Status")?,
                        start_time: r.field(t, path, "StartTime"),
                        end_time: r.field(t, path, "EndTime"),
                        message: r.field(t, path, "StatusMessage"),
                    })
                })
                .collect(),
            Some(_) => {
                r.unreadable.push("SecondaryStatusTransitions".into());
                Vec::new()
            }
        };
        let checkpoint = r.object(obj, "CheckpointConfig").map(|c| CheckpointConfig {
            s3_uri: r.field(c, "CheckpointConfig.", "S3Uri"),
            local_path: r.field(c, "CheckpointConfig.", "LocalPath"),
        });
        Ok(JobFacts {
            name,
            arn: arn.or_else(|| fallback_arn.map(str::to_owned)),
            status,
            secondary_status: r.field(obj, "", "SecondaryStatus"),
            failure_reason: r.field(obj, "", "FailureReason"),
            transitions,
            instance_type: resources.and_then(|rc| r.field(rc, "ResourceConfig.", "InstanceType")),
            instance_count,
            managed_spot: r
                .field::<FlexBool>(obj, "", "EnableManagedSpotTraining")
                .map(|b| b.0),
            max_runtime_seconds: stopping
                .and_then(|sc| r.field::<FlexU64>(sc, "StoppingCondition.", "MaxRuntimeInSeconds"))
                .map(|n| n.0),
            max_wait_seconds: stopping
                .and_then(|sc| r.field::<FlexU64>(sc, "StoppingCondition.", "MaxWaitTimeInSeconds"))
                .map(|n| n.0),
            checkpoint,
            training_time_seconds: r
                .field::<FlexU64>(obj, "", "TrainingTimeInSeconds")
                .map(|n| n.0),
            billable_time_seconds: r
                .field::<FlexU64>(obj, "", "BillableTimeInSeconds")
                .map(|n| n.0),
            creation_time: r.field(obj, "", "CreationTime"),
            training_start_time: r.field(obj, "", "TrainingStartTime"),
            training_end_time: r.field(obj, "", "TrainingEndTime"),
            last_modified_time: r.field(obj, "", "LastModifiedTime"),
            tags: r.field(obj, "", "Tags").unwrap_or_default(),
            origin,
            unreadable: r.unreadable,
        })
    }

    /// Adds tags from ListTags (they win over tags already in the JSON).
    pub fn with_tags(mut self, tags: &Tags) -> Self {
        self.tags.merge(tags);
        self
    }

    /// Spot interruptions of this job: `Interrupted` entries in its status transitions.
    pub fn interruptions(&self) -> u32 {
        let n = self
            .transitions
            .iter()
            .filter(|t| t.status == SecondaryStatus::Interrupted)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Whether the training code ever ran: a `Training` transition, or (when the transitions are
    /// missing, as in a partial event) a `TrainingStartTime`. An attempt that never trained
    /// cannot show checkpoint progress, so it does not count towards a crash loop.
    pub fn reached_training(&self) -> bool {
        if self.transitions.is_empty() {
            self.training_start_time.is_some()
        } else {
            self.transitions
                .iter()
                .any(|t| t.status == SecondaryStatus::Training)
        }
    }

    /// The checkpoint `S3Uri`, when the job syncs checkpoints at all.
    pub fn checkpoint_uri(&self) -> Option<&str> {
        self.checkpoint
            .as_ref()
            .and_then(|c| c.s3_uri.as_deref())
            .filter(|u| !u.is_empty())
    }
}

/// `arn:aws:sagemaker:<region>:<account>:training-job/<name>` → `<name>`.
fn name_from_arn(arn: &str) -> Option<String> {
    let (_, name) = arn.split_once(":training-job/")?;
    (!name.is_empty()).then(|| name.to_owned())
}

/// Reads fields one at a time, noting those of an unexpected shape instead of failing.
#[derive(Default)]
struct Reader {
    unreadable: Vec<String>,
}

impl Reader {
    /// `obj[key]` as a `T`; `None` when absent or `null`, and when of another shape (noted
    /// under `path` + `key`).
    fn field<T: DeserializeOwned>(
        &mut self,
        obj: &Map<String, Value>,
        path: &str,
        key: &str,
    ) -> Option<T> {
        match obj.get(key) {
            None | Some(Value::Null) => None,
            Some(value) => match T::deserialize(value) {
                Ok(v) => Some(v),
                Err(_) => {
                    self.unreadable.push(format!("{path}{key}"));
                    None
                }
            },
        }
    }

    /// `obj[key]` when it is an object (a structure such as `ResourceConfig`).
    fn object<'a>(
        &mut self,
        obj: &'a Map<String, Value>,
        key: &str,
    ) -> Option<&'a Map<String, Value>> {
        match obj.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Object(inner)) => Some(inner),
            Some(_) => {
                self.unreadable.push(key.to_owned());
                None
            }
        }
    }
}

/// A non-negative whole number given as an integer, an integral float or a numeric string.
struct FlexU64(u64);

impl<'de> Deserialize<'de> for FlexU64 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        let parsed = match &value {
            Value::Number(n) => n.as_u64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
                    .map(|f| f as u64)
            }),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        parsed
            .map(FlexU64)
            .ok_or_else(|| serde::de::Error::custom(format!("{value} is not a whole number")))
    }
}

/// A boolean given as `true`/`false` or as the strings `"true"`/`"false"`.
struct FlexBool(bool);

impl<'de> Deserialize<'de> for FlexBool {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        match &value {
            Value::Bool(b) => Ok(FlexBool(*b)),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(FlexBool(true)),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(FlexBool(false)),
            _ => Err(serde::de::Error::custom(format!(
                "{value} is not a boolean"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn name_falls_back_to_the_arn() {
        let facts = JobFacts::from_value(
            &json!({"TrainingJobArn": "arn:aws:sagemaker:us-east-1:1:training-job/abc"}),
            FactsOrigin::EventDetail,
            None,
        )
        .unwrap();
        assert_eq!(facts.name, "abc");
        let facts = JobFacts::from_value(
            &json!({}),
            FactsOrigin::EventDetail,
            Some("arn:aws:sagemaker:us-east-1:1:training-job/xyz"),
        )
        .unwrap();
        assert_eq!(facts.name, "xyz");
        assert!(matches!(
            JobFacts::from_value(&json!({}), FactsOrigin::EventDetail, None),
            Err(JobError::MissingName)
        ));
    }

    #[test]
    fn numbers_are_flexible_but_not_negative() {
        let facts = JobFacts::from_value(
            &json!({"TrainingJobName": "a", "TrainingTimeInSeconds": "120",
                    "BillableTimeInSeconds": 36.0, "EnableManagedSpotTraining": "true",
                    "ResourceConfig": {"InstanceCount": 2}}),
            FactsOrigin::DescribeTrainingJob,
            None,
        )
        .unwrap();
        assert_eq!(facts.training_time_seconds, Some(120));
        assert_eq!(facts.billable_time_seconds, Some(36));
        assert_eq!(facts.managed_spot, Some(true));
        assert_eq!(facts.instance_count, Some(2));
        // Of an unexpected shape: left out and named, never the whole job lost.
        for (bad, field) in [
            (
                json!({"TrainingJobName": "a", "TrainingTimeInSeconds": -1}),
                "TrainingTimeInSeconds",
            ),
            (
                json!({"TrainingJobName": "a", "BillableTimeInSeconds": 1.5}),
                "BillableTimeInSeconds",
            ),
            (
                json!({"TrainingJobName": "a", "ResourceConfig": {"InstanceCount": 5_000_000_000_u64}}),
                "ResourceConfig.InstanceCount",
            ),
            (
                json!({"TrainingJobName": "a", "EnableManagedSpotTraining": 1}),
                "EnableManagedSpotTraining",
            ),
        ] {
            let facts = JobFacts::from_value(&bad, FactsOrigin::DescribeTrainingJob, None).unwrap();
            assert_eq!(facts.unreadable, [field], "{bad}");
            assert_eq!(facts.name, "a");
        }
    }

    /// Regression: one detail field of an unexpected shape made a real event "malformed".
    #[test]
    fn only_name_and_status_are_required_the_rest_is_read_leniently() {
        let facts = JobFacts::from_value(
            &json!({
                "TrainingJobName": "job",
                "TrainingJobStatus": "Stopped",
                "SecondaryStatus": "MaxWaitTimeExceeded",
                "ResourceConfig": "ml.p3.2xlarge",
                "StoppingCondition": {"MaxRuntimeInSeconds": "soon", "MaxWaitTimeInSeconds": 7200},
                "SecondaryStatusTransitions": [{"Status": "Training", "StartTime": {"when": 1}}, 7, {"Status": 3}],
                "Tags": [{"Value": "no key"}],
                "LastModifiedTime": [2024],
                "CheckpointConfig": {"S3Uri": "s3://b/p", "LocalPath": false},
            }),
            FactsOrigin::EventDetail,
            None,
        )
        .unwrap();
        assert_eq!(facts.status, Some(TrainingJobStatus::Stopped));
        assert_eq!(
            facts.secondary_status,
            Some(SecondaryStatus::MaxWaitTimeExceeded)
        );
        assert_eq!(facts.max_wait_seconds, Some(7200));
        assert_eq!(facts.max_runtime_seconds, None);
        assert_eq!(facts.transitions.len(), 1, "the one readable transition");
        assert!(facts.reached_training());
        assert_eq!(facts.checkpoint_uri(), Some("s3://b/p"));
        assert_eq!(
            facts.unreadable,
            [
                "ResourceConfig",
                "SecondaryStatusTransitions[].StartTime",
                "SecondaryStatusTransitions[].Status",
                "CheckpointConfig.LocalPath",
                "StoppingCondition.MaxRuntimeInSeconds",
                "LastModifiedTime",
                "Tags",
            ]
        );
        // The identity is required: a status that is not a string, no name at all.
        assert!(matches!(
            JobFacts::from_value(
                &json!({"TrainingJobName": "a", "TrainingJobStatus": 1}),
                FactsOrigin::EventDetail,
                None
            ),
            Err(JobError::Malformed(_))
        ));
        assert!(matches!(
            JobFacts::from_value(
                &json!({"TrainingJobName": 5}),
                FactsOrigin::EventDetail,
                None
            ),
            Err(JobError::MissingName)
        ));
        // A name of the wrong type falls back to the ARN.
        let facts = JobFacts::from_value(
            &json!({"TrainingJobName": 5, "TrainingJobArn": "arn:aws:sagemaker:us-east-1:1:training-job/x"}),
            FactsOrigin::EventDetail,
            None,
        )
        .unwrap();
        assert_eq!(
            (facts.name.as_str(), facts.unreadable.as_slice()),
            ("x", &["TrainingJobName".to_owned()][..])
        );
    }

    #[test]
    fn training_reached_from_transitions_or_start_time() {
        let mut facts = JobFacts::from_value(
            &json!({"TrainingJobName": "a", "TrainingStartTime": 1_700_000_000}),
            FactsOrigin::EventDetail,
            None,
        )
        .unwrap();
        assert!(facts.reached_training());
        facts.transitions.push(StatusTransition {
            status: SecondaryStatus::Starting,
            start_time: None,
            end_time: None,
            message: None,
        });
        assert!(!facts.reached_training());
    }
}
