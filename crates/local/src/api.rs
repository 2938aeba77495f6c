//! The SageMaker API shapes: CreateTrainingJob validation, DescribeTrainingJob and
//! ListTrainingJobs output, SageMaker's error shape.
//!
//! Owns the parts of the protocol that are pure data work: [`TrainingJobRequest::parse`]
//! checks a CreateTrainingJob body the way SageMaker does (name pattern, required members,
//! spot rules, and what SageMaker refuses although its own DescribeTrainingJob shows it:
//! `VolumeKmsKeyId` on an instance type with local storage, `MetricDefinitions` for a built-in
//! algorithm, `AlgorithmName` together with `TrainingImage`) and keeps the body;
//! [`describe`] answers DescribeTrainingJob as SageMaker does — the body completed with what the
//! service fills in (defaults, the algorithm's image and metrics, debugger and profiler
//! configuration), not an echo — merged with a [`JobState`]; [`ApiError`] is the
//! `{"__type", "message"}` body with its HTTP status. It never touches the network, processes
//! or the clock.
//!
//! The service's own tables of instance types with local storage and of built-in algorithm
//! repositories are kept apart from the control plane's (`spotcheck_aws::create_rules`) on
//! purpose: the service checks the control plane's requests, it does not agree with them by
//! construction.

use serde_json::{json, Map, Value};
use spotcheck_control::naming::is_valid_job_name;

use crate::clock::EpochMs;
use crate::job::{JobSpec, JobState, Phase};

/// An error in SageMaker's JSON 1.1 shape.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// `__type`, e.g. `ValidationException`.
    pub code: &'static str,
    /// `message`.
    pub message: String,
    /// HTTP status.
    pub status: u16,
}

impl ApiError {
    /// `ValidationException` (400).
    pub fn validation(message: impl Into<String>) -> Self {
        ApiError {
            code: "ValidationException",
            message: message.into(),
            status: 400,
        }
    }

    /// `ResourceInUse` (400): a job with this name exists.
    pub fn in_use(name: &str) -> Self {
        ApiError {
            code: "ResourceInUse",
            message: format!("Training job names must be unique within an AWS account and region, and a training job with this name already exists ({name})"),
            status: 400,
        }
    }

    /// What SageMaker answers for an unknown job: a `ValidationException` saying "not found".
    pub fn not_found(name: &str) -> Self {
        Self::validation(format!("Requested resource not found: {name}"))
    }

    /// `UnknownOperationException` (400).
    pub fn unknown_operation(target: &str) -> Self {
        ApiError {
            code: "UnknownOperationException",
            message: format!(
                "operation {target:?} is not supported by the local SageMaker service"
            ),
            status: 400,
        }
    }

    /// `SerializationException` (400): the body is not JSON.
    pub fn serialization(message: impl Into<String>) -> Self {
        ApiError {
            code: "SerializationException",
            message: message.into(),
            status: 400,
        }
    }

    /// `InternalFailure` (500).
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            code: "InternalFailure",
            message: message.into(),
            status: 500,
        }
    }

    /// The response body.
    pub fn body(&self) -> Value {
        json!({"__type": self.code, "message": self.message})
    }
}

/// A channel of `InputDataConfig`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Channel {
    /// `ChannelName`.
    pub name: String,
    /// `DataSource.S3DataSource.S3Uri` (`s3://…`, or `file://…` for local data).
    pub uri: String,
}

/// A validated CreateTrainingJob request.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainingJobRequest {
    /// `TrainingJobName`.
    pub name: String,
    /// `AlgorithmSpecification.TrainingImage` (or `AlgorithmName`).
    pub image: String,
    /// `ResourceConfig.InstanceType`.
    pub instance_type: String,
    /// `ResourceConfig.InstanceCount`: hosts `algo-1` … `algo-<n>`, run together.
    pub instance_count: u32,
    /// `EnableManagedSpotTraining`.
    pub spot: bool,
    /// `StoppingCondition.MaxRuntimeInSeconds` (default one day).
    pub max_runtime_seconds: u64,
    /// `StoppingCondition.MaxWaitTimeInSeconds`.
    pub max_wait_seconds: Option<u64>,
    /// `HyperParameters`.
    pub hyperparameters: Map<String, Value>,
    /// `InputDataConfig`.
    pub channels: Vec<Channel>,
    /// `CheckpointConfig.S3Uri`.
    pub checkpoint_s3_uri: Option<String>,
    /// `CheckpointConfig.LocalPath` (default `/opt/ml/checkpoints`).
    pub checkpoint_local_path: String,
    /// `OutputDataConfig.S3OutputPath`.
    pub output_path: String,
    /// `AlgorithmSpecification.ContainerEntrypoint`: replaces the image's program (the
    /// first item, then its arguments), as it replaces a container's ENTRYPOINT.
    pub entrypoint: Option<Vec<String>>,
    /// `AlgorithmSpecification.ContainerArguments`: the arguments after the entrypoint.
    pub arguments: Vec<String>,
    /// `Environment`.
    pub environment: Map<String, Value>,
    /// `Tags`.
    pub tags: Vec<(String, String)>,
    /// The body as sent, `Tags` removed (DescribeTrainingJob echoes it).
    pub body: Map<String, Value>,
}

/// One day, SageMaker's default `MaxRuntimeInSeconds`.
pub const DEFAULT_MAX_RUNTIME: u64 = 86_400;
/// 28 days, SageMaker's largest `MaxRuntimeInSeconds`.
pub const MAX_MAX_RUNTIME: u64 = 28 * 86_400;
/// Most instances one local job may ask for (each host is a process on this machine).
pub const MAX_INSTANCES: u64 = 8;
/// `ResourceConfig.VolumeSizeInGB` when a request leaves it out.
pub const DEFAULT_VOLUME_SIZE_GB: u64 = 30;

/// Instance families with local NVMe storage (EC2 instance-type specifications), on which
/// SageMaker refuses `VolumeKmsKeyId`.
const LOCAL_STORAGE_FAMILIES: &[&str] = &[
    "c5d", "g4dn", "g5", "g6", "g6e", "m5d", "p3dn", "p4d", "p4de", "p5", "p5e", "p5en", "r5d",
    "trn1", "trn1n", "trn2",
];

/// Built-in algorithm repositories and the metrics SageMaker defines for them (a sample of the
/// real lists: enough that a copy of them is visible).
const BUILTIN_ALGORITHMS: &[(&str, &[(&str, &str)])] = &[
    (
        "sagemaker-xgboost",
        &[
            (
                "train:rmse",
                r".*\[[0-9]+\].*#011train-rmse:([-+]?[0-9]*\.?[0-9]+).*",
            ),
            (
                "validation:rmse",
                r".*\[[0-9]+\].*#011validation-rmse:([-+]?[0-9]*\.?[0-9]+).*",
            ),
        ],
    ),
    (
        "xgboost",
        &[("train:rmse", r".*train-rmse:([-+]?[0-9]*\.?[0-9]+).*")],
    ),
    (
        "linear-learner",
        &[(
            "train:objective_loss",
            r"#quality_metric: host=\S+, epoch=\S+, train objective_loss <loss>=(\S+)",
        )],
    ),
    ("kmeans", &[("train:msd", r"#train_msd=(\S+)")]),
    (
        "blazingtext",
        &[("train:mean_rho", r"#train_mean_rho=(\S+)")],
    ),
    (
        "image-classification",
        &[("train:accuracy", r"Epoch\S* Train-accuracy=(\S+)")],
    ),
];

/// The built-in algorithm's metric definitions, when `image` is one (an ECR image of a
/// built-in repository) and is not used as a framework (`sagemaker_program` names a script).
fn builtin_metrics(image: &str, hyperparameters: &Map<String, Value>) -> Option<Value> {
    let (registry, path) = image.split_once('/')?;
    if !registry.contains(".dkr.ecr.") || hyperparameters.contains_key("sagemaker_program") {
        return None;
    }
    let repository = path.split([':', '@']).next()?;
    let (_, metrics) = BUILTIN_ALGORITHMS.iter().find(|(r, _)| *r == repository)?;
    Some(Value::Array(
        metrics
            .iter()
            .map(|(name, regex)| json!({"Name": name, "Regex": regex}))
            .collect(),
    ))
}

fn has_local_storage(instance_type: &str) -> bool {
    instance_type
        .split('.')
        .nth(1)
        .is_some_and(|family| LOCAL_STORAGE_FAMILIES.contains(&family))
}

fn member<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn string(v: &Value, path: &[&str], field: &str) -> Result<Option<String>, ApiError> {
    match member(v, path) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::validation(format!("{field} must be a string"))),
    }
}

fn required(v: &Value, path: &[&str], field: &str) -> Result<String, ApiError> {
    string(v, path, field)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApiError::validation(format!(
                "1 validation error detected: Value null at '{field}' failed to satisfy constraint: Member must not be null"
            ))
        })
}

fn seconds(v: &Value, path: &[&str], field: &str) -> Result<Option<u64>, ApiError> {
    match member(v, path) {
        None | Some(Value::Null) => Ok(None),
        Some(n) => match n.as_u64() {
            Some(s) if s >= 1 => Ok(Some(s)),
            _ => Err(ApiError::validation(format!(
                "1 validation error detected: Value {n} at '{field}' failed to satisfy constraint: Member must have value greater than or equal to 1"
            ))),
        },
    }
}

/// A list of 1 to 100 strings of at most 256 characters (`ContainerEntrypoint`,
/// `ContainerArguments`).
fn string_list(v: &Value, path: &[&str], field: &str) -> Result<Option<Vec<String>>, ApiError> {
    let items = match member(v, path) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(ApiError::validation(format!(
                "{field} must be a list of strings"
            )))
        }
    };
    if items.is_empty() || items.len() > 100 {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value at '{field}' failed to satisfy constraint: Member must have length between 1 and 100"
        )));
    }
    items
        .iter()
        .map(|item| match item.as_str() {
            Some(s) if s.chars().count() <= 256 => Ok(s.to_owned()),
            _ => Err(ApiError::validation(format!(
                "every item of {field} must be a string of at most 256 characters"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn string_map(v: &Value, key: &str) -> Result<Map<String, Value>, ApiError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => {
            if let Some((k, _)) = m.iter().find(|(_, v)| !v.is_string()) {
                return Err(ApiError::validation(format!("{key}.{k} must be a string")));
            }
            Ok(m.clone())
        }
        Some(_) => Err(ApiError::validation(format!(
            "{key} must be a map of strings"
        ))),
    }
}

/// `Tags` of a request: a list of `{Key, Value}`.
pub fn parse_tags(v: Option<&Value>) -> Result<Vec<(String, String)>, ApiError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let items = v
        .as_array()
        .ok_or_else(|| ApiError::validation("Tags must be a list of {Key, Value}"))?;
    items
        .iter()
        .map(|t| {
            let key = t
                .get("Key")
                .and_then(Value::as_str)
                .filter(|k| !k.is_empty());
            let value = t.get("Value").and_then(Value::as_str).unwrap_or("");
            match key {
                Some(k) if k.len() <= 128 && value.len() <= 256 => {
                    Ok((k.to_owned(), value.to_owned()))
                }
                _ => Err(ApiError::validation(
                    "every tag needs a Key of 1 to 128 characters and a Value of at most 256",
                )),
            }
        })
        .collect()
}

impl TrainingJobRequest {
    /// Validates a CreateTrainingJob body.
    pub fn parse(body: &Value) -> Result<TrainingJobRequest, ApiError> {
        let Some(obj) = body.as_object() else {
            return Err(ApiError::serialization(
                "the request body must be a JSON object",
            ));
        };
        let name = required(body, &["TrainingJobName"], "trainingJobName")?;
        if !is_valid_job_name(&name) {
            return Err(ApiError::validation(format!(
                "1 validation error detected: Value '{name}' at 'trainingJobName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){{0,62}}"
            )));
        }
        let training_image = string(
            body,
            &["AlgorithmSpecification", "TrainingImage"],
            "algorithmSpecification.trainingImage",
        )?
        .filter(|s| !s.is_empty());
        let algorithm_name = string(
            body,
            &["AlgorithmSpecification", "AlgorithmName"],
            "algorithmSpecification.algorithmName",
        )?
        .filter(|s| !s.is_empty());
        let image = match (training_image, algorithm_name) {
            (Some(_), Some(_)) => {
                return Err(ApiError::validation(
                    "AlgorithmSpecification: specify either an AlgorithmName or a \
                     TrainingImage, not both",
                ))
            }
            (Some(image), None) | (None, Some(image)) => image,
            (None, None) => {
                return Err(ApiError::validation(
                    "AlgorithmSpecification must name a TrainingImage or an AlgorithmName",
                ))
            }
        };
        required(
            body,
            &["AlgorithmSpecification", "TrainingInputMode"],
            "algorithmSpecification.trainingInputMode",
        )?;
        let role = required(body, &["RoleArn"], "roleArn")?;
        if role.len() < 20 || !role.starts_with("arn:") {
            return Err(ApiError::validation(format!(
                "1 validation error detected: Value '{role}' at 'roleArn' failed to satisfy constraint: Member must satisfy regular expression pattern: ^arn:aws[a-z\\-]*:iam::\\d{{12}}:role/?[a-zA-Z_0-9+=,.@\\-_/]+$"
            )));
        }
        let output_path = required(
            body,
            &["OutputDataConfig", "S3OutputPath"],
            "outputDataConfig.s3OutputPath",
        )?;
        if !output_path.starts_with("s3://") {
            return Err(ApiError::validation(
                "OutputDataConfig.S3OutputPath must be an s3:// URI",
            ));
        }
        let instance_type = required(
            body,
            &["ResourceConfig", "InstanceType"],
            "resourceConfig.instanceType",
        )?;
        if !instance_type.starts_with("ml.") {
            return Err(ApiError::validation(format!(
                "ResourceConfig.InstanceType {instance_type:?} is not an ml.* instance type"
            )));
        }
        let instance_count = match member(body, &["ResourceConfig", "InstanceCount"])
            .and_then(Value::as_u64)
        {
            Some(n @ 1..=MAX_INSTANCES) => n as u32,
            Some(n) => return Err(ApiError::validation(format!("ResourceConfig.InstanceCount {n}: the local service runs 1 to {MAX_INSTANCES} instances per job (each is a process on this machine)"))),
            None => return Err(ApiError::validation("1 validation error detected: Value null at 'resourceConfig.instanceCount' failed to satisfy constraint: Member must not be null")),
        };
        seconds(
            body,
            &["ResourceConfig", "VolumeSizeInGB"],
            "resourceConfig.volumeSizeInGB",
        )?;
        if string(
            body,
            &["ResourceConfig", "VolumeKmsKeyId"],
            "resourceConfig.volumeKmsKeyId",
        )?
        .is_some()
            && has_local_storage(&instance_type)
        {
            return Err(ApiError::validation(format!(
                "Instance type {instance_type} has local instance storage, which is encrypted \
                 by a hardware module: VolumeKmsKeyId is not supported"
            )));
        }
        let spot = match body.get("EnableManagedSpotTraining") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::validation(
                    "EnableManagedSpotTraining must be a boolean",
                ))
            }
        };
        let max_runtime = seconds(
            body,
            &["StoppingCondition", "MaxRuntimeInSeconds"],
            "stoppingCondition.maxRuntimeInSeconds",
        )?;
        if max_runtime.is_some_and(|r| r > MAX_MAX_RUNTIME) {
            return Err(ApiError::validation(format!(
                "MaxRuntimeInSeconds must be at most {MAX_MAX_RUNTIME}"
            )));
        }
        let max_runtime_seconds = max_runtime.unwrap_or(DEFAULT_MAX_RUNTIME);
        let max_wait_seconds = seconds(
            body,
            &["StoppingCondition", "MaxWaitTimeInSeconds"],
            "stoppingCondition.maxWaitTimeInSeconds",
        )?;
        match (spot, max_wait_seconds) {
            (true, None) => return Err(ApiError::validation("MaxWaitTimeInSeconds is required when EnableManagedSpotTraining is true")),
            (false, Some(_)) => return Err(ApiError::validation("MaxWaitTimeInSeconds is only valid with EnableManagedSpotTraining")),
            (true, Some(w)) if w < max_runtime_seconds => return Err(ApiError::validation(format!(
                "Invalid MaxWaitTimeInSeconds: {w} must be greater than or equal to MaxRuntimeInSeconds {max_runtime_seconds}"
            ))),
            _ => {}
        }
        let entrypoint = string_list(
            body,
            &["AlgorithmSpecification", "ContainerEntrypoint"],
            "algorithmSpecification.containerEntrypoint",
        )?;
        if entrypoint.as_ref().is_some_and(|e| e[0].is_empty()) {
            return Err(ApiError::validation(
                "AlgorithmSpecification.ContainerEntrypoint must start with a program",
            ));
        }
        let arguments = string_list(
            body,
            &["AlgorithmSpecification", "ContainerArguments"],
            "algorithmSpecification.containerArguments",
        )?
        .unwrap_or_default();
        let hyperparameters = string_map(body, "HyperParameters")?;
        let environment = string_map(body, "Environment")?;
        if member(body, &["AlgorithmSpecification", "MetricDefinitions"])
            .is_some_and(|m| !m.is_null())
            && builtin_metrics(&image, &hyperparameters).is_some()
        {
            return Err(ApiError::validation(format!(
                "MetricDefinitions are not supported for the built-in algorithm {image}: its \
                 metrics are defined by SageMaker"
            )));
        }
        let mut channels = Vec::new();
        if let Some(list) = body.get("InputDataConfig").filter(|v| !v.is_null()) {
            let list = list
                .as_array()
                .ok_or_else(|| ApiError::validation("InputDataConfig must be a list"))?;
            for c in list {
                let name = required(c, &["ChannelName"], "inputDataConfig.member.channelName")?;
                let uri = required(
                    c,
                    &["DataSource", "S3DataSource", "S3Uri"],
                    "inputDataConfig.member.dataSource.s3DataSource.s3Uri",
                )?;
                if !(uri.starts_with("s3://") || uri.starts_with("file://")) {
                    return Err(ApiError::validation(format!(
                        "channel {name}: S3Uri {uri:?} must be s3:// (or file:// for local data)"
                    )));
                }
                if channels.iter().any(|c: &Channel| c.name == name) {
                    return Err(ApiError::validation(format!(
                        "channel {name} is given twice"
                    )));
                }
                channels.push(Channel { name, uri });
            }
        }
        let checkpoint_s3_uri = string(
            body,
            &["CheckpointConfig", "S3Uri"],
            "checkpointConfig.s3Uri",
        )?;
        if body.get("CheckpointConfig").is_some_and(|c| !c.is_null()) {
            match &checkpoint_s3_uri {
                Some(u) if u.starts_with("s3://") && u.len() > 5 => {}
                _ => {
                    return Err(ApiError::validation(
                        "CheckpointConfig.S3Uri must be an s3:// URI",
                    ))
                }
            }
        }
        let checkpoint_local_path = string(
            body,
            &["CheckpointConfig", "LocalPath"],
            "checkpointConfig.localPath",
        )?
        .unwrap_or_else(|| "/opt/ml/checkpoints".into());
        let tags = parse_tags(body.get("Tags"))?;
        let mut kept = obj.clone();
        kept.remove("Tags");
        Ok(TrainingJobRequest {
            name,
            image,
            instance_type,
            instance_count,
            spot,
            max_runtime_seconds,
            max_wait_seconds,
            hyperparameters,
            channels,
            checkpoint_s3_uri,
            checkpoint_local_path,
            output_path,
            entrypoint,
            arguments,
            environment,
            tags,
            body: kept,
        })
    }

    /// The state machine's view, given the market's billable ratio and the grace period.
    pub fn spec(&self, billable_ratio: f64, grace_ms: i64) -> JobSpec {
        JobSpec {
            spot: self.spot,
            max_runtime_seconds: self.max_runtime_seconds,
            max_wait_seconds: self.max_wait_seconds,
            billable_ratio: if self.spot { billable_ratio } else { 1.0 },
            grace_ms,
            instance_count: self.instance_count,
        }
    }
}

/// A training job's ARN (SageMaker lower-cases the name in it).
pub fn job_arn(region: &str, account: &str, name: &str) -> String {
    format!(
        "arn:aws:sagemaker:{region}:{account}:training-job/{}",
        name.to_ascii_lowercase()
    )
}

/// Epoch seconds as the JSON 1.1 protocol sends timestamps.
pub fn epoch_seconds(ms: EpochMs) -> Value {
    json!(ms as f64 / 1000.0)
}

/// Applies `fill` to the member object `key` of `out` (created empty when absent).
fn with_section(
    out: &mut Map<String, Value>,
    key: &str,
    fill: impl FnOnce(&mut Map<String, Value>),
) {
    let mut section = match out.remove(key) {
        Some(Value::Object(section)) => section,
        _ => Map::new(),
    };
    fill(&mut section);
    out.insert(key.to_owned(), Value::Object(section));
}

/// What SageMaker fills into DescribeTrainingJob that the request may not have said: the
/// defaults of the members it has, the image of an `AlgorithmName`, a built-in algorithm's
/// metric definitions, and the debugger hook and profiler configuration it sets up.
fn service_filled(req: &TrainingJobRequest, out: &mut Map<String, Value>, region: &str) {
    with_section(out, "AlgorithmSpecification", |algorithm| {
        if let Some(name) = algorithm.get("AlgorithmName").and_then(Value::as_str) {
            let image = format!(
                "000000000000.dkr.ecr.{region}.amazonaws.com/{}:latest",
                name.to_ascii_lowercase()
            );
            algorithm.insert("TrainingImage".into(), json!(image));
        }
        algorithm
            .entry("EnableSageMakerMetricsTimeSeries")
            .or_insert(json!(false));
        if let Some(metrics) = builtin_metrics(&req.image, &req.hyperparameters) {
            algorithm.insert("MetricDefinitions".into(), metrics);
        }
    });
    with_section(out, "OutputDataConfig", |output| {
        output.entry("KmsKeyId").or_insert(json!(""));
    });
    with_section(out, "ResourceConfig", |resources| {
        resources
            .entry("VolumeSizeInGB")
            .or_insert(json!(DEFAULT_VOLUME_SIZE_GB));
    });
    out.entry("EnableNetworkIsolation").or_insert(json!(false));
    out.entry("EnableInterContainerTrafficEncryption")
        .or_insert(json!(false));
    out.entry("DebugHookConfig").or_insert(json!({
        "S3OutputPath": req.output_path,
        "CollectionConfigurations": [],
    }));
    out.entry("ProfilerConfig").or_insert(json!({
        "S3OutputPath": req.output_path,
        "ProfilingIntervalInMilliseconds": 500,
        "DisableProfiler": false,
    }));
}

/// DescribeTrainingJob output: the request as SageMaker completes it, plus the state.
pub fn describe(
    req: &TrainingJobRequest,
    spec: &JobSpec,
    state: &JobState,
    arn: &str,
    model_artifacts: Option<&str>,
    now: EpochMs,
) -> Value {
    let mut out = req.body.clone();
    let region = arn.split(':').nth(3).unwrap_or("us-east-1");
    service_filled(req, &mut out, region);
    let mut put = |k: &str, v: Value| {
        out.insert(k.to_owned(), v);
    };
    put("TrainingJobArn", json!(arn));
    put("TrainingJobStatus", json!(state.status));
    put("SecondaryStatus", json!(state.secondary));
    put("CreationTime", epoch_seconds(state.created));
    put("LastModifiedTime", epoch_seconds(state.last_modified));
    if let Some(t) = state.training_start {
        put("TrainingStartTime", epoch_seconds(t));
    }
    if let Some(t) = state.training_end {
        put("TrainingEndTime", epoch_seconds(t));
    }
    let mut stopping = req
        .body
        .get("StoppingCondition")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    stopping
        .entry("MaxRuntimeInSeconds")
        .or_insert(json!(req.max_runtime_seconds));
    put("StoppingCondition", Value::Object(stopping));
    put("EnableManagedSpotTraining", json!(req.spot));
    if req.checkpoint_s3_uri.is_some() {
        put(
            "CheckpointConfig",
            json!({"S3Uri": req.checkpoint_s3_uri, "LocalPath": req.checkpoint_local_path}),
        );
    }
    if let Some(reason) = &state.failure_reason {
        put("FailureReason", json!(reason));
    }
    if let Some(uri) = model_artifacts {
        put("ModelArtifacts", json!({"S3ModelArtifacts": uri}));
    }
    if state.phase == Phase::Ended {
        put("TrainingTimeInSeconds", json!(state.training_seconds(now)));
        put(
            "BillableTimeInSeconds",
            json!(state.billable_seconds(spec, now)),
        );
    }
    put(
        "SecondaryStatusTransitions",
        Value::Array(
            state
                .transitions
                .iter()
                .map(|t| {
                    let mut m = Map::new();
                    m.insert("Status".into(), json!(t.status));
                    m.insert("StartTime".into(), epoch_seconds(t.start));
                    if let Some(end) = t.end {
                        m.insert("EndTime".into(), epoch_seconds(end));
                    }
                    m.insert("StatusMessage".into(), json!(t.message));
                    Value::Object(m)
                })
                .collect(),
        ),
    );
    Value::Object(out)
}

/// One `TrainingJobSummaries` entry of ListTrainingJobs.
pub fn summary(name: &str, arn: &str, state: &JobState) -> Value {
    let mut m = Map::new();
    m.insert("TrainingJobName".into(), json!(name));
    m.insert("TrainingJobArn".into(), json!(arn));
    m.insert("CreationTime".into(), epoch_seconds(state.created));
    m.insert(
        "LastModifiedTime".into(),
        epoch_seconds(state.last_modified),
    );
    if let Some(t) = state.training_end {
        m.insert("TrainingEndTime".into(), epoch_seconds(t));
    }
    m.insert("TrainingJobStatus".into(), json!(state.status));
    m.insert("SecondaryStatus".into(), json!(state.secondary));
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Value {
        json!({
            "TrainingJobName": "fmnist-1",
            "AlgorithmSpecification": {"TrainingImage": "spotcheck-trainer:latest", "TrainingInputMode": "File"},
            "RoleArn": "arn:aws:iam::000000000000:role/SageMakerRole",
            "OutputDataConfig": {"S3OutputPath": "s3://out/models"},
            "ResourceConfig": {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 10},
            "StoppingCondition": {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200},
            "EnableManagedSpotTraining": true,
            "HyperParameters": {"epochs": "1"},
            "InputDataConfig": [{"ChannelName": "train", "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "file:///data"}}}],
            "CheckpointConfig": {"S3Uri": "s3://ckpt/fmnist"},
            "Tags": [{"Key": "spotcheck:enabled", "Value": "true"}]
        })
    }

    #[test]
    fn a_valid_request_parses() {
        let r = TrainingJobRequest::parse(&valid()).unwrap();
        assert_eq!(r.name, "fmnist-1");
        assert!(r.spot);
        assert_eq!(r.max_wait_seconds, Some(7200));
        assert_eq!(r.checkpoint_local_path, "/opt/ml/checkpoints");
        assert_eq!(r.channels[0].uri, "file:///data");
        assert_eq!(r.tags, vec![("spotcheck:enabled".into(), "true".into())]);
        assert!(!r.body.contains_key("Tags"));
    }

    #[test]
    fn invalid_requests_are_validation_errors() {
        let cases: Vec<(&str, Value, &str)> = vec![
            ("/TrainingJobName", json!("bad_name!"), "regular expression"),
            (
                "/TrainingJobName",
                json!("x".repeat(64)),
                "regular expression",
            ),
            ("/TrainingJobName", Value::Null, "must not be null"),
            ("/RoleArn", json!("role"), "roleArn"),
            (
                "/ResourceConfig/InstanceCount",
                json!(9),
                "1 to 8 instances",
            ),
            (
                "/ResourceConfig/InstanceCount",
                json!(0),
                "1 to 8 instances",
            ),
            ("/ResourceConfig/InstanceType", json!("p3.2xlarge"), "ml.*"),
            (
                "/StoppingCondition/MaxWaitTimeInSeconds",
                json!(60),
                "greater than or equal to MaxRuntimeInSeconds",
            ),
            (
                "/StoppingCondition/MaxWaitTimeInSeconds",
                Value::Null,
                "required",
            ),
            (
                "/StoppingCondition/MaxRuntimeInSeconds",
                json!(0),
                "greater than or equal to 1",
            ),
            ("/HyperParameters/epochs", json!(1), "must be a string"),
            ("/CheckpointConfig/S3Uri", json!("/tmp/x"), "s3://"),
            (
                "/InputDataConfig/0/DataSource/S3DataSource/S3Uri",
                json!("http://x"),
                "s3://",
            ),
            ("/Tags/0/Key", json!(""), "Key"),
        ];
        for (pointer, value, expected) in cases {
            let mut body = valid();
            *body.pointer_mut(pointer).unwrap() = value;
            let err = TrainingJobRequest::parse(&body).unwrap_err();
            assert_eq!(err.code, "ValidationException", "{pointer}");
            assert!(err.message.contains(expected), "{pointer}: {}", err.message);
        }
        let mut on_demand = valid();
        on_demand["EnableManagedSpotTraining"] = json!(false);
        assert!(TrainingJobRequest::parse(&on_demand)
            .unwrap_err()
            .message
            .contains("only valid"));
        assert_eq!(
            TrainingJobRequest::parse(&json!([1])).unwrap_err().code,
            "SerializationException"
        );
    }

    #[test]
    fn container_entrypoint_and_arguments_are_lists_of_strings() {
        let r = TrainingJobRequest::parse(&valid()).unwrap();
        assert_eq!((r.entrypoint, r.arguments), (None, vec![]));
        let mut body = valid();
        body["AlgorithmSpecification"]["ContainerEntrypoint"] = json!(["spotcheck", "run", "--"]);
        body["AlgorithmSpecification"]["ContainerArguments"] = json!(["python", "train.py"]);
        let r = TrainingJobRequest::parse(&body).unwrap();
        assert_eq!(
            r.entrypoint,
            Some(vec!["spotcheck".into(), "run".into(), "--".into()])
        );
        assert_eq!(
            r.arguments,
            vec!["python".to_owned(), "train.py".to_owned()]
        );
        let cases = [
            ("ContainerEntrypoint", json!([]), "between 1 and 100"),
            ("ContainerEntrypoint", json!("spotcheck"), "list of strings"),
            ("ContainerEntrypoint", json!([""]), "start with a program"),
            ("ContainerArguments", json!([1]), "at most 256"),
            (
                "ContainerArguments",
                json!(["x".repeat(257)]),
                "at most 256",
            ),
            (
                "ContainerArguments",
                json!(vec!["a"; 101]),
                "between 1 and 100",
            ),
        ];
        for (key, value, expected) in cases {
            let mut body = valid();
            body["AlgorithmSpecification"][key] = value;
            let err = TrainingJobRequest::parse(&body).unwrap_err();
            assert_eq!(err.code, "ValidationException", "{key}");
            assert!(err.message.contains(expected), "{key}: {}", err.message);
        }
    }

    /// Regression: DescribeTrainingJob echoed the Create body, so a relaunch copying
    /// service-filled fields could never be refused here.
    #[test]
    fn describe_fills_in_what_sagemaker_fills_and_create_refuses_it_back() {
        let mut body = valid();
        body["AlgorithmSpecification"]["TrainingImage"] =
            json!("683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1");
        let r = TrainingJobRequest::parse(&body).unwrap();
        let spec = r.spec(0.3, 1000);
        let d = describe(
            &r,
            &spec,
            &JobState::new(&spec, 1_000),
            "arn:aws:sagemaker:eu-west-1:1:training-job/x",
            None,
            2_000,
        );
        let algorithm = &d["AlgorithmSpecification"];
        assert_eq!(algorithm["MetricDefinitions"][0]["Name"], "train:rmse");
        assert_eq!(algorithm["EnableSageMakerMetricsTimeSeries"], false);
        assert_eq!(d["OutputDataConfig"]["KmsKeyId"], "");
        assert_eq!(d["OutputDataConfig"]["S3OutputPath"], "s3://out/models");
        assert_eq!(d["ResourceConfig"]["VolumeSizeInGB"], 10, "given: kept");
        assert_eq!(d["EnableNetworkIsolation"], false);
        assert_eq!(d["EnableInterContainerTrafficEncryption"], false);
        assert_eq!(d["ProfilerConfig"]["ProfilingIntervalInMilliseconds"], 500);
        assert_eq!(d["DebugHookConfig"]["S3OutputPath"], "s3://out/models");
        assert!(d.get("RetryStrategy").is_none());
        // Describe's own answer, sent back as a request, is refused as SageMaker refuses it.
        let mut copy = d.clone();
        copy["TrainingJobName"] = json!("fmnist-2");
        let err = TrainingJobRequest::parse(&copy).unwrap_err();
        assert!(
            err.message.contains("MetricDefinitions are not supported"),
            "{}",
            err.message
        );
        // A framework container (script mode) takes its own metric definitions.
        body["HyperParameters"]["sagemaker_program"] = json!("train.py");
        body["AlgorithmSpecification"]["MetricDefinitions"] =
            json!([{"Name": "loss", "Regex": "loss=(\\S+)"}]);
        TrainingJobRequest::parse(&body).unwrap();

        // AlgorithmName: Describe fills TrainingImage in; Create takes one or the other.
        let mut by_name = valid();
        by_name["AlgorithmSpecification"] =
            json!({"AlgorithmName": "my-algo", "TrainingInputMode": "File"});
        let r = TrainingJobRequest::parse(&by_name).unwrap();
        let d = describe(
            &r,
            &spec,
            &JobState::new(&spec, 1_000),
            "arn:aws:sagemaker:eu-west-1:1:training-job/x",
            None,
            2_000,
        );
        assert_eq!(
            d["AlgorithmSpecification"]["TrainingImage"],
            "000000000000.dkr.ecr.eu-west-1.amazonaws.com/my-algo:latest"
        );
        let mut copy = d.clone();
        copy["TrainingJobName"] = json!("fmnist-3");
        assert!(TrainingJobRequest::parse(&copy)
            .unwrap_err()
            .message
            .contains("not both"));

        // VolumeKmsKeyId on an instance type with local storage.
        let mut nvme = valid();
        nvme["ResourceConfig"]["VolumeKmsKeyId"] = json!("key");
        TrainingJobRequest::parse(&nvme).unwrap_err();
        nvme["ResourceConfig"]["InstanceType"] = json!("ml.p3.2xlarge");
        TrainingJobRequest::parse(&nvme).unwrap();
    }

    #[test]
    fn describe_echoes_the_request_and_reports_times_at_the_end() {
        let r = TrainingJobRequest::parse(&valid()).unwrap();
        let spec = r.spec(0.3, 1000);
        let mut s = JobState::new(&spec, 1_000);
        let d = describe(&r, &spec, &s, "arn:x", None, 2_000);
        assert_eq!(d["TrainingJobStatus"], "InProgress");
        assert_eq!(d["SecondaryStatus"], "Starting");
        assert_eq!(d["HyperParameters"]["epochs"], "1");
        assert_eq!(d["CreationTime"], json!(1.0));
        assert!(d.get("BillableTimeInSeconds").is_none());
        assert!(d.get("Tags").is_none());
        s = crate::job::step(&spec, &s, crate::job::Input::StopRequested, 3_000).0;
        let d = describe(&r, &spec, &s, "arn:x", Some("s3://out/m.tar.gz"), 3_000);
        assert_eq!(d["TrainingJobStatus"], "Stopped");
        assert_eq!(d["TrainingTimeInSeconds"], 0);
        assert_eq!(d["ModelArtifacts"]["S3ModelArtifacts"], "s3://out/m.tar.gz");
        assert_eq!(d["SecondaryStatusTransitions"].as_array().unwrap().len(), 3);
        assert_eq!(
            job_arn("us-east-1", "1", "Ab-C"),
            "arn:aws:sagemaker:us-east-1:1:training-job/ab-c"
        );
    }
}
