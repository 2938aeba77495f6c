//! In-memory fakes of the adapter traits, with failure injection and call recording, plus
//! builders of SDK-shaped DescribeTrainingJob outputs from the repository's JSON fixtures.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use aws_sdk_sagemaker::operation::create_training_job::builders::CreateTrainingJobInputBuilder;
use aws_sdk_sagemaker::operation::create_training_job::CreateTrainingJobInput;
use aws_sdk_sagemaker::operation::describe_training_job::DescribeTrainingJobOutput;
use aws_sdk_sagemaker::primitives::DateTime;
use aws_sdk_sagemaker::types::{
    AlgorithmSpecification, Channel, CheckpointConfig, CompressionType, DataSource,
    OutputDataConfig, RecordWrapper, ResourceConfig, S3DataDistribution, S3DataSource, S3DataType,
    SecondaryStatus, SecondaryStatusTransition, StoppingCondition, TrainingInputMode,
    TrainingInstanceType, TrainingJobStatus, VpcConfig,
};
use serde_json::Value;
use spotcheck_aws::{
    job_facts, AwsError, CheckpointStore, Created, Described, ErrorKind, EventSink, HeadResult,
    InstanceTags, Ledger, ListedObject, LogSink, TrainingJobs, Written,
};
use spotcheck_control::outputs::EventEntry;
use spotcheck_control::{Tags, Timestamp};
use spotcheck_protocol::FileDigest;

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/");

/// An event fixture's bytes.
pub fn event(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}events/{name}")).expect("fixture exists")
}

/// A job fixture (`aws sagemaker describe-training-job` output, or ListTags output) as JSON.
pub fn job_json(name: &str) -> Value {
    let bytes = std::fs::read(format!("{FIXTURES}jobs/{name}")).expect("fixture exists");
    serde_json::from_slice(&bytes).unwrap()
}

/// Failures to inject, by operation name, in call order: `None` lets a call through.
#[derive(Default)]
pub struct Failures(Mutex<HashMap<&'static str, VecDeque<Option<AwsError>>>>);

impl Failures {
    /// The next call of `operation` fails with `kind`.
    pub fn inject(&self, operation: &'static str, kind: ErrorKind) {
        self.inject_after(operation, 0, kind);
    }

    /// The next `skip` calls of `operation` succeed, the one after fails with `kind`.
    pub fn inject_after(&self, operation: &'static str, skip: usize, kind: ErrorKind) {
        let mut all = self.0.lock().unwrap();
        let queue = all.entry(operation).or_default();
        queue.extend(std::iter::repeat_n(None, skip));
        queue.push_back(Some(AwsError::new(
            operation,
            kind,
            format!("injected {kind:?}"),
        )));
    }

    fn take(&self, operation: &'static str) -> Result<(), AwsError> {
        let mut all = self.0.lock().unwrap();
        match all.get_mut(operation).and_then(VecDeque::pop_front) {
            Some(Some(err)) => Err(err),
            _ => Ok(()),
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

    pub fn total(&self) -> usize {
        self.0.lock().unwrap().values().sum()
    }
}

#[derive(Default)]
pub struct FakeJobs {
    pub jobs: Mutex<HashMap<String, DescribeTrainingJobOutput>>,
    pub tags: Mutex<HashMap<String, Tags>>,
    /// Every request that created a job, in order.
    pub created: Mutex<Vec<CreateTrainingJobInput>>,
    /// The name of every CreateTrainingJob request that got past failure injection.
    pub requested: Mutex<Vec<String>>,
    pub fail: Failures,
    pub calls: Calls,
}

pub fn arn(name: &str) -> String {
    format!("arn:aws:sagemaker:us-east-1:123456789012:training-job/{name}")
}

impl FakeJobs {
    pub fn add(&self, output: DescribeTrainingJobOutput, tags: &[(&str, &str)]) {
        self.add_tags(output, tags.iter().copied().collect());
    }

    pub fn add_tags(&self, output: DescribeTrainingJobOutput, tags: Tags) {
        let name = output.training_job_name().unwrap().to_owned();
        self.tags.lock().unwrap().insert(arn(&name), tags);
        self.jobs.lock().unwrap().insert(name, output);
    }

    pub fn created_names(&self) -> Vec<String> {
        self.created
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.training_job_name().unwrap().to_owned())
            .collect()
    }

    /// The (only) created request.
    pub fn only_created(&self) -> CreateTrainingJobInput {
        let created = self.created.lock().unwrap();
        assert_eq!(created.len(), 1, "exactly one job created");
        created[0].clone()
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

    async fn create(&self, request: CreateTrainingJobInputBuilder) -> Result<Created, AwsError> {
        self.calls.add("CreateTrainingJob");
        self.fail.take("CreateTrainingJob")?;
        let input = request.build().expect("a request that builds");
        let name = input
            .training_job_name()
            .expect("a named request")
            .to_owned();
        self.requested.lock().unwrap().push(name.clone());
        let mut jobs = self.jobs.lock().unwrap();
        if jobs.contains_key(&name) {
            // SageMaker's ResourceInUse, as the SDK adapter maps it.
            return Ok(Created::AlreadyExists);
        }
        let created = DescribeTrainingJobOutput::builder()
            .training_job_name(&name)
            .training_job_arn(arn(&name))
            .training_job_status(TrainingJobStatus::InProgress)
            .build();
        jobs.insert(name.clone(), created);
        // As SageMaker does, the job carries the request's tags from then on.
        let tags: Tags = input
            .tags()
            .iter()
            .filter_map(|t| Some((t.key.clone()?, t.value.clone().unwrap_or_default())))
            .collect();
        self.tags.lock().unwrap().insert(arn(&name), tags);
        self.created.lock().unwrap().push(input);
        Ok(Created::New { arn: arn(&name) })
    }
}

#[derive(Clone)]
pub struct FakeObject {
    pub bytes: Vec<u8>,
    /// What HeadObject reports as ChecksumCRC64NVME (`None`: uploaded with another algorithm).
    pub crc64nvme: Option<String>,
}

/// An S3 bucket in memory. Every request is recorded; HEADs and stream-hashes yield once while
/// "in flight", so the validator's concurrency shows in `max_in_flight` without any sleep.
#[derive(Default)]
pub struct FakeStore {
    pub objects: Mutex<BTreeMap<(String, String), FakeObject>>,
    pub fail: Failures,
    pub calls: Calls,
    /// The largest range asked of a GET.
    pub max_range: Mutex<u64>,
    /// Keys of every GET (ranged or streamed), in order.
    pub gets: Mutex<Vec<String>>,
    /// Bytes returned by GETs (ranged and streamed).
    pub bytes_read: Mutex<u64>,
    in_flight: Mutex<usize>,
    /// The most HEAD/stream requests that were in flight at once.
    pub max_in_flight: Mutex<usize>,
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

    fn read(&self, key: &str, n: usize) {
        self.gets.lock().unwrap().push(key.to_owned());
        *self.bytes_read.lock().unwrap() += n as u64;
    }

    /// Enters a request, lets the other requests of the batch start, leaves.
    async fn in_flight(&self) {
        {
            let mut now = self.in_flight.lock().unwrap();
            *now += 1;
            let mut max = self.max_in_flight.lock().unwrap();
            *max = (*max).max(*now);
        }
        tokio::task::yield_now().await;
        *self.in_flight.lock().unwrap() -= 1;
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
        {
            let mut max = self.max_range.lock().unwrap();
            *max = (*max).max(max_bytes);
        }
        Ok(self.get(bucket, key).map(|o| {
            let n = o.bytes.len().min(max_bytes as usize);
            self.read(key, n);
            o.bytes[..n].to_vec()
        }))
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<Option<HeadResult>, AwsError> {
        self.calls.add("HeadObject");
        self.in_flight().await;
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
        self.in_flight().await;
        self.fail.take("GetObject(stream)")?;
        Ok(self.get(bucket, key).map(|o| {
            self.read(key, o.bytes.len());
            HeadResult {
                size: o.bytes.len() as u64,
                crc64nvme: Some(FileDigest::of(&o.bytes).crc64nvme_base64()),
            }
        }))
    }
}

#[derive(Default)]
pub struct FakeLedger {
    pub records: Mutex<BTreeMap<String, Vec<u8>>>,
    pub fail: Failures,
    pub calls: Calls,
}

impl FakeLedger {
    pub fn keys(&self) -> Vec<String> {
        self.records.lock().unwrap().keys().cloned().collect()
    }

    pub fn json(&self, key: &str) -> Value {
        let records = self.records.lock().unwrap();
        let bytes = records
            .get(key)
            .unwrap_or_else(|| panic!("no record {key}"));
        serde_json::from_slice(bytes).unwrap()
    }
}

impl Ledger for FakeLedger {
    async fn write_once(&self, key: &str, body: Vec<u8>) -> Result<Written, AwsError> {
        self.calls.add("PutObject");
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
    pub calls: Calls,
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

    /// The detail of the `index`-th published entry.
    pub fn detail(&self, index: usize) -> Value {
        serde_json::from_str(&self.published.lock().unwrap()[index].detail).unwrap()
    }
}

impl EventSink for FakeEvents {
    async fn publish(&self, entries: &[EventEntry]) -> Result<(), AwsError> {
        self.calls.add("PutEvents");
        self.fail.take("PutEvents")?;
        self.published.lock().unwrap().extend_from_slice(entries);
        Ok(())
    }
}

#[derive(Default)]
pub struct FakeInstances {
    pub tags: Mutex<HashMap<String, Tags>>,
    pub fail: Failures,
    pub calls: Calls,
}

impl InstanceTags for FakeInstances {
    async fn instance_tags(&self, instance_id: &str) -> Result<Option<Tags>, AwsError> {
        self.calls.add("DescribeTags");
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

    /// The last decision line, asserting that there are `invocations` of them in all.
    pub fn decision(&self, invocations: usize) -> Value {
        let lines = self.decisions();
        assert_eq!(lines.len(), invocations, "one decision line per invocation");
        lines.last().unwrap().clone()
    }

    /// EMF metric lines (CloudWatch's `_aws` envelope).
    pub fn metric_lines(&self) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|l| l.get("_aws").is_some())
            .collect()
    }

    pub fn metrics(&self) -> usize {
        self.metric_lines().len()
    }
}

pub fn now() -> Timestamp {
    Timestamp::parse("2024-06-01T12:05:00Z").unwrap()
}

fn time(value: &Value) -> Option<DateTime> {
    if value.is_null() {
        return None;
    }
    // Events carry epoch-ms strings, describe-training-job prints RFC 3339 or epoch seconds.
    let t = Timestamp::from_json(value).expect("a fixture time");
    Some(DateTime::from_millis(t.epoch_ms()))
}

fn strings(value: &Value) -> Option<Vec<String>> {
    value.as_array().map(|items| {
        items
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    })
}

fn string_map(value: &Value) -> Option<HashMap<String, String>> {
    value.as_object().map(|m| {
        m.iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect()
    })
}

fn channel(c: &Value) -> Channel {
    let s3 = &c["DataSource"]["S3DataSource"];
    let s = |v: &Value, k: &str| v[k].as_str().map(str::to_owned);
    Channel::builder()
        .set_channel_name(s(c, "ChannelName"))
        .data_source(
            DataSource::builder()
                .s3_data_source(
                    S3DataSource::builder()
                        .set_s3_data_type(s3["S3DataType"].as_str().map(S3DataType::from))
                        .set_s3_uri(s(s3, "S3Uri"))
                        .set_s3_data_distribution_type(
                            s3["S3DataDistributionType"]
                                .as_str()
                                .map(S3DataDistribution::from),
                        )
                        .build(),
                )
                .build(),
        )
        .set_compression_type(c["CompressionType"].as_str().map(CompressionType::from))
        .set_record_wrapper_type(c["RecordWrapperType"].as_str().map(RecordWrapper::from))
        .build()
}

/// A DescribeTrainingJob output from a PascalCase job JSON (an event's detail or a
/// describe-training-job fixture): every field the fixtures use, as the SDK would parse it.
pub fn describe_from_json(job: &Value) -> DescribeTrainingJobOutput {
    let s = |k: &str| job[k].as_str().map(str::to_owned);
    let n = |v: &Value| v.as_i64().map(|n| n as i32);
    let rc = &job["ResourceConfig"];
    let sc = &job["StoppingCondition"];
    let algo = &job["AlgorithmSpecification"];
    let out = &job["OutputDataConfig"];
    let vpc = &job["VpcConfig"];
    let ckpt = &job["CheckpointConfig"];
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
        .set_hyper_parameters(string_map(&job["HyperParameters"]))
        .set_algorithm_specification(algo.is_object().then(|| {
            AlgorithmSpecification::builder()
                .set_training_image(algo["TrainingImage"].as_str().map(str::to_owned))
                .set_training_input_mode(
                    algo["TrainingInputMode"]
                        .as_str()
                        .map(TrainingInputMode::from),
                )
                .set_enable_sage_maker_metrics_time_series(
                    algo["EnableSageMakerMetricsTimeSeries"].as_bool(),
                )
                .build()
        }))
        .set_role_arn(s("RoleArn"))
        .set_input_data_config(
            job["InputDataConfig"]
                .as_array()
                .map(|cs| cs.iter().map(channel).collect()),
        )
        .set_output_data_config(out.is_object().then(|| {
            OutputDataConfig::builder()
                .set_s3_output_path(out["S3OutputPath"].as_str().map(str::to_owned))
                .set_kms_key_id(out["KmsKeyId"].as_str().map(str::to_owned))
                .build()
        }))
        .set_vpc_config(vpc.is_object().then(|| {
            VpcConfig::builder()
                .set_security_group_ids(strings(&vpc["SecurityGroupIds"]))
                .set_subnets(strings(&vpc["Subnets"]))
                .build()
        }))
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
        .set_enable_network_isolation(job["EnableNetworkIsolation"].as_bool())
        .set_enable_inter_container_traffic_encryption(
            job["EnableInterContainerTrafficEncryption"].as_bool(),
        )
        .set_enable_managed_spot_training(job["EnableManagedSpotTraining"].as_bool())
        .set_checkpoint_config(ckpt["S3Uri"].as_str().map(|uri| {
            CheckpointConfig::builder()
                .s3_uri(uri)
                .set_local_path(ckpt["LocalPath"].as_str().map(str::to_owned))
                .build()
        }))
        .set_training_time_in_seconds(n(&job["TrainingTimeInSeconds"]))
        .set_billable_time_in_seconds(n(&job["BillableTimeInSeconds"]))
        .set_creation_time(time(&job["CreationTime"]))
        .set_training_start_time(time(&job["TrainingStartTime"]))
        .set_training_end_time(time(&job["TrainingEndTime"]))
        .set_last_modified_time(time(&job["LastModifiedTime"]))
        .set_secondary_status_transitions(Some(transitions))
        .build()
}

/// A describe-training-job fixture as the SDK's output.
pub fn describe_fixture(name: &str) -> DescribeTrainingJobOutput {
    describe_from_json(&job_json(name))
}

/// `aws sagemaker list-tags` output as tags.
pub fn list_tags_fixture(name: &str) -> Tags {
    job_json(name)["Tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["Key"].as_str().unwrap().to_owned(),
                t["Value"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The detail of an event fixture, as JSON.
pub fn detail(fixture: &str) -> Value {
    let event: Value = serde_json::from_slice(&event(fixture)).unwrap();
    event["detail"].clone()
}

/// `(field, is set)` for each top-level field of a struct's pretty `Debug` rendering (derived
/// Debug: one field per line, indented four spaces; nested values are indented further).
pub fn top_level_fields(debug: &str) -> Vec<(String, bool)> {
    debug
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("    ")?;
            let (name, value) = rest.split_once(": ")?;
            let is_field = name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            (is_field && !name.is_empty()).then(|| (name.to_owned(), value != "None,"))
        })
        .collect()
}
