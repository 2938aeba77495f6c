//! In-memory fakes of the adapter traits, with failure injection and call counting, plus
//! builders of SDK-shaped DescribeTrainingJob outputs from the repository's JSON fixtures.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use aws_sdk_sagemaker::operation::create_training_job::CreateTrainingJobInput;
use aws_sdk_sagemaker::operation::describe_training_job::DescribeTrainingJobOutput;
use aws_sdk_sagemaker::primitives::DateTime;
use aws_sdk_sagemaker::types::{
    CheckpointConfig, ResourceConfig, SecondaryStatus, SecondaryStatusTransition,
    StoppingCondition, TrainingInstanceType, TrainingJobStatus,
};
use serde_json::Value;
use spotcheck_aws::{
    job_facts, relaunch_request, AwsError, CheckpointStore, Created, Described, ErrorKind,
    EventSink, HeadResult, InstanceTags, Ledger, ListedObject, LogSink, TrainingJobs, Written,
};
use spotcheck_control::outputs::EventEntry;
use spotcheck_control::{RelaunchPlan, Tags, Timestamp};
use spotcheck_protocol::FileDigest;

pub const EVENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/events/");

/// An event fixture's bytes.
pub fn event(name: &str) -> Vec<u8> {
    std::fs::read(format!("{EVENTS}{name}")).expect("fixture exists")
}

/// Failures to inject, by operation name; each is returned once.
#[derive(Default)]
pub struct Failures(Mutex<HashMap<&'static str, Vec<AwsError>>>);

impl Failures {
    pub fn inject(&self, operation: &'static str, kind: ErrorKind) {
        self.0
            .lock()
            .unwrap()
            .entry(operation)
            .or_default()
            .push(AwsError::new(operation, kind, format!("injected {kind:?}")));
    }

    fn take(&self, operation: &'static str) -> Result<(), AwsError> {
        match self.0.lock().unwrap().get_mut(operation).and_then(Vec::pop) {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

/// Counts calls by operation.
#[derive(Default)]
pub struct Calls(Mutex<BTreeMap<&'static str, usize>>);

impl Calls {
    fn add(&self, operation: &'static str) {
        *self.0.lock().unwrap().entry(operation).or_default() += 1;
    }

    pub fn get(&self, operation: &str) -> usize {
        self.0.lock().unwrap().get(operation).copied().unwrap_or(0)
    }
}

#[derive(Default)]
pub struct FakeJobs {
    pub jobs: Mutex<HashMap<String, DescribeTrainingJobOutput>>,
    pub tags: Mutex<HashMap<String, Tags>>,
    pub created: Mutex<Vec<CreateTrainingJobInput>>,
    pub fail: Failures,
    pub calls: Calls,
}

pub fn arn(name: &str) -> String {
    format!("arn:aws:sagemaker:us-east-1:123456789012:training-job/{name}")
}

impl FakeJobs {
    pub fn add(&self, output: DescribeTrainingJobOutput, tags: &[(&str, &str)]) {
        let name = output.training_job_name().unwrap().to_owned();
        self.tags
            .lock()
            .unwrap()
            .insert(arn(&name), tags.iter().copied().collect());
        self.jobs.lock().unwrap().insert(name, output);
    }
}

impl TrainingJobs for FakeJobs {
    async fn describe(&self, name: &str) -> Result<Described, AwsError> {
        self.calls.add("DescribeTrainingJob");
        self.fail.take("DescribeTrainingJob")?;
        let output = self
            .jobs
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .ok_or_else(|| {
                AwsError::new(
                    "DescribeTrainingJob",
                    ErrorKind::NotFound,
                    "Requested resource not found",
                )
            })?;
        Ok(Described {
            facts: job_facts(&output)?,
            output,
        })
    }

    async fn list_tags(&self, arn: &str) -> Result<Tags, AwsError> {
        self.calls.add("ListTags");
        self.fail.take("ListTags")?;
        Ok(self
            .tags
            .lock()
            .unwrap()
            .get(arn)
            .cloned()
            .unwrap_or_default())
    }

    async fn create_relaunch(
        &self,
        parent: &DescribeTrainingJobOutput,
        plan: &RelaunchPlan,
    ) -> Result<Created, AwsError> {
        self.calls.add("CreateTrainingJob");
        self.fail.take("CreateTrainingJob")?;
        let input = relaunch_request(parent, plan)
            .build()
            .expect("valid request");
        let mut jobs = self.jobs.lock().unwrap();
        if jobs.contains_key(&plan.job_name) {
            return Ok(Created::AlreadyExists);
        }
        let created = DescribeTrainingJobOutput::builder()
            .training_job_name(&plan.job_name)
            .training_job_arn(arn(&plan.job_name))
            .training_job_status(TrainingJobStatus::InProgress)
            .build();
        jobs.insert(plan.job_name.clone(), created);
        self.created.lock().unwrap().push(input);
        Ok(Created::New {
            arn: arn(&plan.job_name),
        })
    }
}

#[derive(Clone)]
pub struct FakeObject {
    pub bytes: Vec<u8>,
    /// What HeadObject reports as ChecksumCRC64NVME (`None`: uploaded with another algorithm).
    pub crc64nvme: Option<String>,
}

#[derive(Default)]
pub struct FakeStore {
    pub objects: Mutex<BTreeMap<(String, String), FakeObject>>,
    pub fail: Failures,
    pub calls: Calls,
    /// The largest range asked of a GET.
    pub max_range: Mutex<u64>,
}

impl FakeStore {
    /// Puts an object with S3's own full-object CRC-64/NVME.
    pub fn put(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let crc = FileDigest::of(bytes).crc64nvme_base64();
        self.put_with(bucket, key, bytes, Some(crc));
    }

    pub fn put_with(&self, bucket: &str, key: &str, bytes: &[u8], crc64nvme: Option<String>) {
        self.objects.lock().unwrap().insert(
            (bucket.into(), key.into()),
            FakeObject {
                bytes: bytes.to_vec(),
                crc64nvme,
            },
        );
    }

    fn get(&self, bucket: &str, key: &str) -> Option<FakeObject> {
        self.objects
            .lock()
            .unwrap()
            .get(&(bucket.to_owned(), key.to_owned()))
            .cloned()
    }
}

impl CheckpointStore for FakeStore {
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ListedObject>, AwsError> {
        self.calls.add("ListObjectsV2");
        self.fail.take("ListObjectsV2")?;
        Ok(self
            .objects
            .lock()
            .unwrap()
            .iter()
            .filter(|((b, k), _)| b == bucket && k.starts_with(prefix))
            .map(|((_, k), o)| ListedObject {
                key: k.clone(),
                size: o.bytes.len() as u64,
            })
            .collect())
    }

    async fn get_head_bytes(
        &self,
        bucket: &str,
        key: &str,
        max_bytes: u64,
    ) -> Result<Option<Vec<u8>>, AwsError> {
        self.calls.add("GetObject");
        self.fail.take("GetObject")?;
        let mut max = self.max_range.lock().unwrap();
        *max = (*max).max(max_bytes);
        Ok(self.get(bucket, key).map(|o| {
            let n = o.bytes.len().min(max_bytes as usize);
            o.bytes[..n].to_vec()
        }))
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<Option<HeadResult>, AwsError> {
        self.calls.add("HeadObject");
        self.fail.take("HeadObject")?;
        Ok(self.get(bucket, key).map(|o| HeadResult {
            size: o.bytes.len() as u64,
            crc64nvme: o.crc64nvme,
        }))
    }

    async fn stream_crc64nvme(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<HeadResult>, AwsError> {
        self.calls.add("GetObject(stream)");
        self.fail.take("GetObject")?;
        Ok(self.get(bucket, key).map(|o| HeadResult {
            size: o.bytes.len() as u64,
            crc64nvme: Some(FileDigest::of(&o.bytes).crc64nvme_base64()),
        }))
    }
}

#[derive(Default)]
pub struct FakeLedger {
    pub records: Mutex<BTreeMap<String, Vec<u8>>>,
    pub fail: Failures,
}

impl FakeLedger {
    pub fn keys(&self) -> Vec<String> {
        self.records.lock().unwrap().keys().cloned().collect()
    }

    pub fn json(&self, key: &str) -> Value {
        serde_json::from_slice(&self.records.lock().unwrap()[key]).unwrap()
    }
}

impl Ledger for FakeLedger {
    async fn write_once(&self, key: &str, body: Vec<u8>) -> Result<Written, AwsError> {
        self.fail.take("PutObject")?;
        let mut records = self.records.lock().unwrap();
        if records.contains_key(key) {
            return Ok(Written::AlreadyPresent);
        }
        records.insert(key.to_owned(), body);
        Ok(Written::New)
    }
}

#[derive(Default)]
pub struct FakeEvents {
    pub published: Mutex<Vec<EventEntry>>,
    pub fail: Failures,
}

impl FakeEvents {
    pub fn detail_types(&self) -> Vec<&'static str> {
        self.published
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.detail_type)
            .collect()
    }
}

impl EventSink for FakeEvents {
    async fn publish(&self, entries: &[EventEntry]) -> Result<(), AwsError> {
        self.fail.take("PutEvents")?;
        self.published.lock().unwrap().extend_from_slice(entries);
        Ok(())
    }
}

#[derive(Default)]
pub struct FakeInstances {
    pub tags: Mutex<HashMap<String, Tags>>,
    pub fail: Failures,
}

impl InstanceTags for FakeInstances {
    async fn instance_tags(&self, instance_id: &str) -> Result<Option<Tags>, AwsError> {
        self.fail.take("DescribeTags")?;
        Ok(self.tags.lock().unwrap().get(instance_id).cloned())
    }
}

#[derive(Default)]
pub struct MemoryLog(pub Mutex<Vec<String>>);

impl LogSink for MemoryLog {
    fn line(&self, line: &str) {
        self.0.lock().unwrap().push(line.to_owned());
    }
}

impl MemoryLog {
    pub fn lines(&self) -> Vec<Value> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).expect("every line is JSON"))
            .collect()
    }

    pub fn decisions(&self) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|l| l["spotcheck"] == "decision")
            .collect()
    }

    pub fn metrics(&self) -> usize {
        self.lines()
            .iter()
            .filter(|l| l.get("_aws").is_some())
            .count()
    }
}

pub fn now() -> Timestamp {
    Timestamp::parse("2024-06-01T12:05:00Z").unwrap()
}

fn time(value: &Value) -> Option<DateTime> {
    let ms = match value {
        Value::String(s) => s.parse::<i64>().ok(),
        // describe-training-job prints epoch seconds as floats; events carry epoch ms.
        Value::Number(n) if n.is_f64() => n.as_f64().map(|f| (f * 1000.0) as i64),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }?;
    Some(DateTime::from_millis(ms))
}

/// A DescribeTrainingJob output with the fields of a PascalCase job JSON (an event's detail or
/// a describe-training-job fixture) that the engine reads.
pub fn describe_from_json(job: &Value) -> DescribeTrainingJobOutput {
    let s = |k: &str| job[k].as_str().map(str::to_owned);
    let n = |v: &Value| v.as_i64().map(|n| n as i32);
    let rc = &job["ResourceConfig"];
    let sc = &job["StoppingCondition"];
    let transitions = job["SecondaryStatusTransitions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            SecondaryStatusTransition::builder()
                .status(SecondaryStatus::from(t["Status"].as_str().unwrap()))
                .set_start_time(time(&t["StartTime"]))
                .set_end_time(time(&t["EndTime"]))
                .set_status_message(t["StatusMessage"].as_str().map(str::to_owned))
                .build()
        })
        .collect();
    DescribeTrainingJobOutput::builder()
        .set_training_job_name(s("TrainingJobName"))
        .set_training_job_arn(s("TrainingJobArn"))
        .set_training_job_status(
            s("TrainingJobStatus").map(|v| TrainingJobStatus::from(v.as_str())),
        )
        .set_secondary_status(s("SecondaryStatus").map(|v| SecondaryStatus::from(v.as_str())))
        .set_failure_reason(s("FailureReason"))
        .set_role_arn(s("RoleArn"))
        .resource_config(
            ResourceConfig::builder()
                .set_instance_type(rc["InstanceType"].as_str().map(TrainingInstanceType::from))
                .set_instance_count(n(&rc["InstanceCount"]))
                .set_volume_size_in_gb(n(&rc["VolumeSizeInGB"]))
                .build(),
        )
        .stopping_condition(
            StoppingCondition::builder()
                .set_max_runtime_in_seconds(n(&sc["MaxRuntimeInSeconds"]))
                .set_max_wait_time_in_seconds(n(&sc["MaxWaitTimeInSeconds"]))
                .build(),
        )
        .set_enable_managed_spot_training(job["EnableManagedSpotTraining"].as_bool())
        .set_checkpoint_config(
            job["CheckpointConfig"]["S3Uri"]
                .as_str()
                .map(|uri| CheckpointConfig::builder().s3_uri(uri).build()),
        )
        .set_training_time_in_seconds(n(&job["TrainingTimeInSeconds"]))
        .set_billable_time_in_seconds(n(&job["BillableTimeInSeconds"]))
        .set_creation_time(time(&job["CreationTime"]))
        .set_training_start_time(time(&job["TrainingStartTime"]))
        .set_training_end_time(time(&job["TrainingEndTime"]))
        .set_last_modified_time(time(&job["LastModifiedTime"]))
        .set_secondary_status_transitions(Some(transitions))
        .build()
}

/// The detail of an event fixture, as JSON.
pub fn detail(fixture: &str) -> Value {
    let event: Value = serde_json::from_slice(&event(fixture)).unwrap();
    event["detail"].clone()
}
