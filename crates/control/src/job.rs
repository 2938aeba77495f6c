//! What the engine knows about one SageMaker training job: [`JobFacts`].
//!
//! Owns the tolerant reader for the PascalCase DescribeTrainingJob shape, exactly as the AWS CLI
//! prints it (times as ISO 8601 strings or epoch floats), and for the detail of a "SageMaker
//! Training Job State Change" event, which carries most of the same fields (times as epoch-ms
//! strings or numbers) and is the fallback when no Describe is available. Every field is
//! optional except the job's name; unknown fields are ignored. It does not call AWS and it does
//! not decide anything.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

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
    /// A known field has a type no AWS API produces.
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
        if !value.is_object() {
            return Err(JobError::NotAnObject);
        }
        let raw = RawJob::deserialize(value).map_err(|e| JobError::Malformed(e.to_string()))?;
        let arn = raw.training_job_arn.clone();
        let name = raw
            .training_job_name
            .filter(|n| !n.is_empty())
            .or_else(|| arn.as_deref().and_then(name_from_arn))
            .or_else(|| fallback_arn.and_then(name_from_arn))
            .ok_or(JobError::MissingName)?;
        let resources = raw.resource_config.unwrap_or_default();
        let instance_count = match resources.instance_count {
            None => None,
            Some(FlexU64(n)) => Some(u32::try_from(n).map_err(|_| {
                JobError::Malformed(format!("ResourceConfig.InstanceCount {n} is too large"))
            })?),
        };
        let stopping = raw.stopping_condition.unwrap_or_default();
        Ok(JobFacts {
            name,
            arn: arn.or_else(|| fallback_arn.map(str::to_owned)),
            status: raw.training_job_status,
            secondary_status: raw.secondary_status,
            failure_reason: raw.failure_reason,
            transitions: raw
                .secondary_status_transitions
                .unwrap_or_default()
                .into_iter()
                .filter_map(|t| {
                    Some(StatusTransition {
                        status: t.status?,
                        start_time: t.start_time,
                        end_time: t.end_time,
                        message: t.status_message,
                    })
                })
                .collect(),
            instance_type: resources.instance_type,
            instance_count,
            managed_spot: raw.enable_managed_spot_training.map(|b| b.0),
            max_runtime_seconds: stopping.max_runtime_in_seconds.map(|n| n.0),
            max_wait_seconds: stopping.max_wait_time_in_seconds.map(|n| n.0),
            checkpoint: raw.checkpoint_config.map(|c| CheckpointConfig {
                s3_uri: c.s3_uri,
                local_path: c.local_path,
            }),
            training_time_seconds: raw.training_time_in_seconds.map(|n| n.0),
            billable_time_seconds: raw.billable_time_in_seconds.map(|n| n.0),
            creation_time: raw.creation_time,
            training_start_time: raw.training_start_time,
            training_end_time: raw.training_end_time,
            last_modified_time: raw.last_modified_time,
            tags: raw.tags.unwrap_or_default(),
            origin,
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

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct RawJob {
    training_job_name: Option<String>,
    training_job_arn: Option<String>,
    training_job_status: Option<TrainingJobStatus>,
    secondary_status: Option<SecondaryStatus>,
    failure_reason: Option<String>,
    secondary_status_transitions: Option<Vec<RawTransition>>,
    resource_config: Option<RawResourceConfig>,
    enable_managed_spot_training: Option<FlexBool>,
    stopping_condition: Option<RawStoppingCondition>,
    checkpoint_config: Option<RawCheckpointConfig>,
    training_time_in_seconds: Option<FlexU64>,
    billable_time_in_seconds: Option<FlexU64>,
    creation_time: Option<Timestamp>,
    training_start_time: Option<Timestamp>,
    training_end_time: Option<Timestamp>,
    last_modified_time: Option<Timestamp>,
    tags: Option<Tags>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct RawTransition {
    status: Option<SecondaryStatus>,
    start_time: Option<Timestamp>,
    end_time: Option<Timestamp>,
    status_message: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct RawResourceConfig {
    instance_type: Option<String>,
    instance_count: Option<FlexU64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct RawStoppingCondition {
    max_runtime_in_seconds: Option<FlexU64>,
    max_wait_time_in_seconds: Option<FlexU64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct RawCheckpointConfig {
    s3_uri: Option<String>,
    local_path: Option<String>,
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
        for bad in [
            json!({"TrainingJobName": "a", "TrainingTimeInSeconds": -1}),
            json!({"TrainingJobName": "a", "BillableTimeInSeconds": 1.5}),
            json!({"TrainingJobName": "a", "ResourceConfig": {"InstanceCount": 5_000_000_000_u64}}),
            json!({"TrainingJobName": "a", "EnableManagedSpotTraining": 1}),
        ] {
            assert!(
                matches!(
                    JobFacts::from_value(&bad, FactsOrigin::DescribeTrainingJob, None),
                    Err(JobError::Malformed(_))
                ),
                "{bad}"
            );
        }
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
