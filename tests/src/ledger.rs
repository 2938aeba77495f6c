//! Ledger records written the way the `sagemaker-events` Lambda writes them, in bulk: the real
//! `SageMakerHandler` with a real `S3Ledger` (any S3 endpoint), over an in-memory SageMaker
//! whose jobs the test scripts ([`MemoryJobs`]) — for reports over many records, where
//! running every job on the local service would take hours.
//!
//! Owns [`MemoryJobs`] (a [`TrainingJobs`] whose DescribeTrainingJob answers what the test last
//! set, built with the SDK's own types), [`JobState`] (one moment of a job's life, with its
//! `SecondaryStatusTransitions`), [`state_change`] (the EventBridge event SageMaker sends for
//! it), and [`spot_lineage`], the life of a one-attempt spot lineage as (state, event) steps.

use std::collections::HashMap;
use std::sync::Mutex;

use aws_sdk_sagemaker::operation::create_training_job::builders::CreateTrainingJobInputBuilder;
use aws_sdk_sagemaker::operation::describe_training_job::DescribeTrainingJobOutput;
use aws_sdk_sagemaker::primitives::DateTime;
use aws_sdk_sagemaker::types::{
    CheckpointConfig, ResourceConfig, SecondaryStatus, SecondaryStatusTransition,
    StoppingCondition, TrainingInstanceType, TrainingJobStatus,
};
use serde_json::{json, Value};
use spotcheck_aws::{
    job_facts, AwsError, CheckpointStore, Created, Described, ErrorKind, EventSink, HeadResult,
    ListedObject, LogSink, TrainingJobs,
};
use spotcheck_control::outputs::EventEntry;
use spotcheck_control::Tags;

/// The account of the jobs' ARNs.
pub const ACCOUNT: &str = "123456789012";

/// A training job's ARN.
pub fn arn(name: &str) -> String {
    format!("arn:aws:sagemaker:us-east-1:{ACCOUNT}:training-job/{name}")
}

/// One moment of a job's life, as DescribeTrainingJob would report it.
#[derive(Clone, Debug)]
pub struct JobState {
    /// The job.
    pub name: String,
    /// `TrainingJobStatus`.
    pub status: String,
    /// `SecondaryStatus`.
    pub secondary: String,
    /// `ResourceConfig.InstanceType`.
    pub instance_type: String,
    /// `EnableManagedSpotTraining`.
    pub spot: bool,
    /// `SecondaryStatusTransitions`: (status, start epoch-ms, end epoch-ms).
    pub transitions: Vec<(String, i64, Option<i64>)>,
    /// `TrainingTimeInSeconds` / `BillableTimeInSeconds`, when SageMaker reports them.
    pub times: Option<(i32, i32)>,
    /// `CreationTime`, epoch-ms.
    pub created_ms: i64,
    /// The job's tags (ListTags).
    pub tags: Vec<(String, String)>,
    /// `CheckpointConfig.S3Uri`.
    pub checkpoint_uri: Option<String>,
}

/// `SecondaryStatusTransitions` from (status, start epoch-ms) steps: each ends when the next
/// starts; the last is still current.
pub fn transitions(steps: &[(&str, i64)]) -> Vec<(String, i64, Option<i64>)> {
    steps
        .iter()
        .enumerate()
        .map(|(i, (status, start))| {
            (
                (*status).to_owned(),
                *start,
                steps.get(i + 1).map(|next| next.1),
            )
        })
        .collect()
}

fn time(ms: i64) -> DateTime {
    DateTime::from_millis(ms)
}

impl JobState {
    /// The DescribeTrainingJob answer, with the SDK's types.
    pub fn describe(&self) -> DescribeTrainingJobOutput {
        let transitions = self
            .transitions
            .iter()
            .map(|(status, start, end)| {
                SecondaryStatusTransition::builder()
                    .status(SecondaryStatus::from(status.as_str()))
                    .start_time(time(*start))
                    .set_end_time(end.map(time))
                    .build()
            })
            .collect();
        let last = self
            .transitions
            .last()
            .map_or(self.created_ms, |(_, start, end)| end.unwrap_or(*start));
        let mut out = DescribeTrainingJobOutput::builder()
            .training_job_name(&self.name)
            .training_job_arn(arn(&self.name))
            .training_job_status(TrainingJobStatus::from(self.status.as_str()))
            .secondary_status(SecondaryStatus::from(self.secondary.as_str()))
            .set_secondary_status_transitions(Some(transitions))
            .resource_config(
                ResourceConfig::builder()
                    .instance_type(TrainingInstanceType::from(self.instance_type.as_str()))
                    .instance_count(1)
                    .volume_size_in_gb(10)
                    .build(),
            )
            .stopping_condition(
                StoppingCondition::builder()
                    .max_runtime_in_seconds(86_400)
                    .set_max_wait_time_in_seconds(self.spot.then_some(172_800))
                    .build(),
            )
            .enable_managed_spot_training(self.spot)
            .set_checkpoint_config(self.checkpoint_uri.as_ref().map(|uri| {
                CheckpointConfig::builder()
                    .s3_uri(uri)
                    .local_path("/opt/ml/checkpoints")
                    .build()
            }))
            .creation_time(time(self.created_ms))
            .last_modified_time(time(last));
        if let Some((training, billable)) = self.times {
            out = out
                .training_time_in_seconds(training)
                .billable_time_in_seconds(billable)
                .training_end_time(time(last));
        }
        out.build()
    }
}

/// The "SageMaker Training Job State Change" event for `state` (the documented shape; `id`
/// must be unique per event).
pub fn state_change(state: &JobState, id: &str) -> Vec<u8> {
    let tags: serde_json::Map<String, Value> = state
        .tags
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    serde_json::to_vec(&json!({
        "version": "0", "id": id, "detail-type": "SageMaker Training Job State Change",
        "source": "aws.sagemaker", "account": ACCOUNT, "time": "2026-11-02T10:00:00Z",
        "region": "us-east-1", "resources": [arn(&state.name)],
        "detail": {
            "TrainingJobName": state.name, "TrainingJobArn": arn(&state.name),
            "TrainingJobStatus": state.status, "SecondaryStatus": state.secondary,
            "Tags": tags,
        }
    }))
    .unwrap_or_default()
}

/// DescribeTrainingJob and ListTags from memory; CreateTrainingJob adds a job that is
/// `InProgress/Starting` with the request's name, type, spot flag and tags (`ResourceInUse`,
/// i.e. [`Created::AlreadyExists`], for a name that exists).
#[derive(Default)]
pub struct MemoryJobs {
    jobs: Mutex<HashMap<String, JobState>>,
}

impl MemoryJobs {
    /// Sets what DescribeTrainingJob and ListTags answer for the job.
    pub fn set(&self, state: JobState) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.insert(state.name.clone(), state);
        }
    }

    /// What the job is now (e.g. a relaunch the handler created, to script its life on).
    pub fn get(&self, name: &str) -> Option<JobState> {
        self.jobs.lock().ok()?.get(name).cloned()
    }
}

impl TrainingJobs for MemoryJobs {
    async fn describe(&self, name: &str) -> Result<Described, AwsError> {
        let state = self.get(name).ok_or_else(|| {
            AwsError::new("DescribeTrainingJob", ErrorKind::NotFound, "no such job")
        })?;
        let output = state.describe();
        Ok(Described {
            facts: job_facts(&output)?,
            output,
        })
    }

    async fn list_tags(&self, arn: &str) -> Result<Tags, AwsError> {
        let name = arn.rsplit('/').next().unwrap_or_default();
        let state = self
            .get(name)
            .ok_or_else(|| AwsError::new("ListTags", ErrorKind::NotFound, "no such job"))?;
        let mut tags = Tags::new();
        for (k, v) in state.tags {
            tags.insert(k, v);
        }
        Ok(tags)
    }

    async fn create(&self, request: CreateTrainingJobInputBuilder) -> Result<Created, AwsError> {
        let input = request
            .build()
            .map_err(|e| AwsError::new("CreateTrainingJob", ErrorKind::Rejected, e.to_string()))?;
        let name = input.training_job_name().unwrap_or_default().to_owned();
        if self.get(&name).is_some() {
            return Ok(Created::AlreadyExists);
        }
        let created_ms = self
            .jobs
            .lock()
            .ok()
            .and_then(|jobs| {
                jobs.values()
                    .filter_map(|j| j.transitions.last().map(|t| t.2.unwrap_or(t.1)))
                    .max()
            })
            .unwrap_or(0);
        self.set(JobState {
            name: name.clone(),
            status: "InProgress".into(),
            secondary: "Starting".into(),
            instance_type: input
                .resource_config()
                .and_then(|r| r.instance_type())
                .map_or_else(String::new, |t| t.as_str().to_owned()),
            spot: input.enable_managed_spot_training() == Some(true),
            transitions: vec![("Starting".into(), created_ms, None)],
            times: None,
            created_ms,
            tags: input
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
                .collect(),
            checkpoint_uri: input
                .checkpoint_config()
                .and_then(|c| c.s3_uri())
                .map(str::to_owned),
        });
        Ok(Created::New { arn: arn(&name) })
    }
}

/// A checkpoint store with nothing in it (the scenarios' jobs have no `CheckpointConfig`).
pub struct NoCheckpoints;

impl CheckpointStore for NoCheckpoints {
    async fn list(&self, _bucket: &str, _prefix: &str) -> Result<Vec<ListedObject>, AwsError> {
        Ok(Vec::new())
    }

    async fn get_head_bytes(
        &self,
        _bucket: &str,
        _key: &str,
        _max_bytes: u64,
    ) -> Result<Option<Vec<u8>>, AwsError> {
        Ok(None)
    }

    async fn head(&self, _bucket: &str, _key: &str) -> Result<Option<HeadResult>, AwsError> {
        Ok(None)
    }

    async fn stream_crc64nvme(
        &self,
        _bucket: &str,
        _key: &str,
    ) -> Result<Option<HeadResult>, AwsError> {
        Ok(None)
    }
}

/// spotcheck's events and log lines, dropped.
pub struct Discard;

impl EventSink for Discard {
    async fn publish(&self, _entries: &[EventEntry]) -> Result<(), AwsError> {
        Ok(())
    }
}

impl LogSink for Discard {
    fn line(&self, _line: &str) {}
}

/// The life of a one-attempt spot lineage `name` on `instance_type`, created at `created_ms`:
/// interrupted `interruptions` times (SageMaker restarts it each time), then completed after
/// `training` seconds billed `billable`. Each step is the state DescribeTrainingJob reports and
/// the event SageMaker sends for it: one InProgress/Interrupted per interruption, then
/// Completed/Completed. Tagged as its own lineage root, so completion writes a lineage summary.
pub fn spot_lineage(
    name: &str,
    instance_type: &str,
    created_ms: i64,
    interruptions: u32,
    (training, billable): (i32, i32),
) -> Vec<JobState> {
    let mut steps = Vec::new();
    let mut transitions: Vec<(String, i64, Option<i64>)> = Vec::new();
    let mut t = created_ms;
    let enter = |transitions: &mut Vec<(String, i64, Option<i64>)>, status: &str, at: i64| {
        if let Some(last) = transitions.last_mut() {
            last.2 = Some(at);
        }
        transitions.push((status.to_owned(), at, None));
    };
    let state = |transitions: &Vec<(String, i64, Option<i64>)>,
                 status: &str,
                 secondary: &str,
                 times: Option<(i32, i32)>| JobState {
        name: name.to_owned(),
        status: status.to_owned(),
        secondary: secondary.to_owned(),
        instance_type: instance_type.to_owned(),
        spot: true,
        transitions: transitions.clone(),
        times,
        created_ms,
        tags: vec![
            ("spotcheck:enabled".into(), "true".into()),
            ("spotcheck:root".into(), name.to_owned()),
            ("team".into(), "report-tests".into()),
        ],
        checkpoint_uri: None,
    };
    for status in ["Starting", "Downloading", "Training"] {
        enter(&mut transitions, status, t);
        t += 60_000;
    }
    for _ in 0..interruptions {
        t += 600_000;
        enter(&mut transitions, "Interrupted", t);
        steps.push(state(&transitions, "InProgress", "Interrupted", None));
        for status in ["Starting", "Downloading", "Training"] {
            t += 60_000;
            enter(&mut transitions, status, t);
        }
    }
    t += 600_000;
    enter(&mut transitions, "Uploading", t);
    t += 30_000;
    enter(&mut transitions, "Completed", t);
    if let Some(last) = transitions.last_mut() {
        last.2 = Some(t);
    }
    steps.push(state(
        &transitions,
        "Completed",
        "Completed",
        Some((training, billable)),
    ));
    steps
}
