//! EC2 runs continued as SageMaker managed-spot jobs: the request template a run names in
//! `spotcheck:continue-on`, and the request built from it.
//!
//! Owns the template format — CreateTrainingJob's request JSON, PascalCase, exactly as
//! `aws sagemaker create-training-job --cli-input-json` takes it, restricted to the fields in
//! [`Template`] — its parsing ([`parse_template`]) and the pure [`continuation_request`]
//! (template + plan + resume step → CreateTrainingJob input). It does no I/O: the EC2 handler
//! reads the object and creates the job.
//!
//! Why a closed set of fields: every field the template sets must reach the job, or the job runs
//! differently from what its author wrote (outside the VPC, unencrypted…). Parsing rejects any
//! field it does not know (`deny_unknown_fields`, at every level) with serde's message naming
//! it, instead of dropping it. The set covers what a training job usually needs; the debugger,
//! profiler, remote-debug, infra-check, serverless, MLflow and model-package configurations,
//! `AlgorithmSpecification.TrainingImageConfig`, `ResourceConfig.InstanceGroups` and the other
//! newer members are refused until someone needs them.

use std::collections::HashMap;

use aws_sdk_sagemaker::operation::create_training_job::builders::CreateTrainingJobInputBuilder;
use aws_sdk_sagemaker::operation::create_training_job::CreateTrainingJobInput;
use aws_sdk_sagemaker::types as sdk;
use serde::Deserialize;
use spotcheck_control::tags::keys;
use spotcheck_control::ContinuationPlan;

/// Largest template read: a CreateTrainingJob request is a few KiB; 1 MiB bounds a mistake.
pub const MAX_TEMPLATE_BYTES: u64 = 1 << 20;

/// Why a continuation template cannot be used. Retrying cannot help: fix the template (or the
/// tag), then redrive the event.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `spotcheck:continue-on` starts with `s3://` but names no object.
    #[error("not s3://bucket/key of one object")]
    BadUri,
    /// No object at the URI.
    #[error("no such object")]
    Missing,
    /// Larger than [`MAX_TEMPLATE_BYTES`].
    #[error("larger than {MAX_TEMPLATE_BYTES} bytes")]
    TooLarge,
    /// Not JSON, a field of the wrong type, a missing required field, or one not supported.
    #[error("not a supported CreateTrainingJob request: {0}")]
    Invalid(String),
}

/// The object named by `spotcheck:continue-on`, when it names one: `Some((bucket, key))` for
/// `s3://bucket/key`, `Some(Err)` for an `s3://` URI without a key (or ending in `/`), `None`
/// for anything else (no template: the plan is published for the user's own automation).
pub fn template_location(continue_on: &str) -> Option<Result<(String, String), TemplateError>> {
    let rest = continue_on.strip_prefix("s3://")?;
    let located = match rest.split_once('/') {
        Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() && !key.ends_with('/') => {
            Ok((bucket.to_owned(), key.to_owned()))
        }
        _ => Err(TemplateError::BadUri),
    };
    Some(located)
}

/// A CreateTrainingJob request template: the supported subset of the request, PascalCase.
/// Required as by CreateTrainingJob: `AlgorithmSpecification`, `RoleArn`, `OutputDataConfig`,
/// `ResourceConfig`, `StoppingCondition` (with `MaxWaitTimeInSeconds`: the job runs as managed
/// spot). `TrainingJobName` is accepted and replaced by the plan's deterministic name.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Template {
    /// Ignored: the continuation's name is the plan's.
    pub training_job_name: Option<String>,
    /// `AlgorithmSpecification`.
    pub algorithm_specification: AlgorithmSpecification,
    /// `RoleArn`.
    pub role_arn: String,
    /// `HyperParameters`.
    pub hyper_parameters: Option<HashMap<String, String>>,
    /// `Environment`.
    pub environment: Option<HashMap<String, String>>,
    /// `InputDataConfig`.
    pub input_data_config: Option<Vec<Channel>>,
    /// `OutputDataConfig`.
    pub output_data_config: OutputDataConfig,
    /// `ResourceConfig`.
    pub resource_config: ResourceConfig,
    /// `VpcConfig`.
    pub vpc_config: Option<VpcConfig>,
    /// `StoppingCondition`.
    pub stopping_condition: StoppingCondition,
    /// `Tags` (`spotcheck:` lineage keys are replaced; `aws:` keys are refused).
    pub tags: Option<Vec<Tag>>,
    /// `EnableNetworkIsolation`.
    pub enable_network_isolation: Option<bool>,
    /// `EnableInterContainerTrafficEncryption`.
    pub enable_inter_container_traffic_encryption: Option<bool>,
    /// Accepted for templates shared with other tools, but always `true` in the request.
    pub enable_managed_spot_training: Option<bool>,
    /// `CheckpointConfig`; its `S3Uri` is replaced by the run's `spotcheck:checkpoint-uri`.
    pub checkpoint_config: Option<CheckpointConfig>,
    /// `RetryStrategy`.
    pub retry_strategy: Option<RetryStrategy>,
    /// `ExperimentConfig`.
    pub experiment_config: Option<ExperimentConfig>,
    /// `TensorBoardOutputConfig`.
    pub tensor_board_output_config: Option<TensorBoardOutputConfig>,
}

/// `AlgorithmSpecification`.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct AlgorithmSpecification {
    pub training_image: Option<String>,
    pub algorithm_name: Option<String>,
    pub training_input_mode: Option<String>,
    pub metric_definitions: Option<Vec<MetricDefinition>>,
    pub enable_sage_maker_metrics_time_series: Option<bool>,
    pub container_entrypoint: Option<Vec<String>>,
    pub container_arguments: Option<Vec<String>>,
}

/// `MetricDefinition`.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct MetricDefinition {
    pub name: String,
    pub regex: String,
}

/// `Channel` of `InputDataConfig`.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Channel {
    pub channel_name: String,
    pub data_source: DataSource,
    pub content_type: Option<String>,
    pub compression_type: Option<String>,
    pub record_wrapper_type: Option<String>,
    pub input_mode: Option<String>,
    pub shuffle_config: Option<ShuffleConfig>,
}

/// `DataSource` (S3 or a file system).
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DataSource {
    pub s3_data_source: Option<S3DataSource>,
    pub file_system_data_source: Option<FileSystemDataSource>,
}

/// `S3DataSource`.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct S3DataSource {
    pub s3_data_type: String,
    pub s3_uri: String,
    pub s3_data_distribution_type: Option<String>,
    pub attribute_names: Option<Vec<String>>,
    pub instance_group_names: Option<Vec<String>>,
}

/// `FileSystemDataSource`.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct FileSystemDataSource {
    pub file_system_id: String,
    pub file_system_access_mode: String,
    pub file_system_type: String,
    pub directory_path: String,
}

/// `ShuffleConfig`.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ShuffleConfig {
    pub seed: i64,
}

/// `OutputDataConfig`.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct OutputDataConfig {
    pub s3_output_path: String,
    pub kms_key_id: Option<String>,
    pub compression_type: Option<String>,
}

/// `ResourceConfig`.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ResourceConfig {
    pub instance_type: String,
    pub instance_count: i32,
    #[serde(rename = "VolumeSizeInGB")]
    pub volume_size_in_gb: i32,
    pub volume_kms_key_id: Option<String>,
    pub keep_alive_period_in_seconds: Option<i32>,
}

/// `VpcConfig`.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct VpcConfig {
    pub security_group_ids: Vec<String>,
    pub subnets: Vec<String>,
}

/// `StoppingCondition`.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct StoppingCondition {
    pub max_runtime_in_seconds: Option<i32>,
    pub max_wait_time_in_seconds: Option<i32>,
    pub max_pending_time_in_seconds: Option<i32>,
}

/// `Tag`.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

/// `CheckpointConfig`.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CheckpointConfig {
    pub s3_uri: String,
    pub local_path: Option<String>,
}

/// `RetryStrategy`.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct RetryStrategy {
    pub maximum_retry_attempts: i32,
}

/// `ExperimentConfig`.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ExperimentConfig {
    pub experiment_name: Option<String>,
    pub trial_name: Option<String>,
    pub trial_component_display_name: Option<String>,
    pub run_name: Option<String>,
}

/// `TensorBoardOutputConfig`.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct TensorBoardOutputConfig {
    pub s3_output_path: String,
    pub local_path: Option<String>,
}

/// Parses and checks a template (pure). Beyond the shape, it checks what would otherwise only
/// fail at CreateTrainingJob, later and less clearly: managed spot needs
/// `MaxWaitTimeInSeconds` ≥ `MaxRuntimeInSeconds`, and `aws:` tag keys are reserved.
pub fn parse_template(bytes: &[u8]) -> Result<Template, TemplateError> {
    if bytes.len() as u64 > MAX_TEMPLATE_BYTES {
        return Err(TemplateError::TooLarge);
    }
    let template: Template =
        serde_json::from_slice(bytes).map_err(|e| TemplateError::Invalid(e.to_string()))?;
    let stopping = &template.stopping_condition;
    match (
        stopping.max_wait_time_in_seconds,
        stopping.max_runtime_in_seconds,
    ) {
        (None, _) => {
            return Err(TemplateError::Invalid(
                "StoppingCondition.MaxWaitTimeInSeconds is required: the continuation runs as \
                 managed spot"
                    .into(),
            ))
        }
        (Some(wait), Some(runtime)) if wait < runtime => {
            return Err(TemplateError::Invalid(format!(
                "StoppingCondition.MaxWaitTimeInSeconds ({wait}) is less than \
                 MaxRuntimeInSeconds ({runtime})"
            )))
        }
        _ => {}
    }
    if let Some(tag) = template
        .tags
        .iter()
        .flatten()
        .find(|t| t.key.starts_with("aws:"))
    {
        return Err(TemplateError::Invalid(format!(
            "tag key {:?} is reserved by AWS",
            tag.key
        )));
    }
    Ok(template)
}

/// The CreateTrainingJob request continuing `plan`'s run from `template` (pure; no network).
///
/// The template as written, then: `TrainingJobName` = the plan's deterministic name (from the
/// run and the generation, so every warning for the run's instances asks for the same name);
/// `EnableManagedSpotTraining` = `true`; `CheckpointConfig.S3Uri` = the run's checkpoint URI
/// when the instance is tagged with one (the template's `LocalPath` kept); tags = the template's
/// minus the `spotcheck:` lineage keys, plus `spotcheck:enabled=true` (the job is managed from
/// then on, and IAM requires it), `spotcheck:root` = the job itself (attempt 1 of a SageMaker
/// lineage), `spotcheck:attempt=1`, `spotcheck:run`, `spotcheck:generation` = the plan's,
/// `spotcheck:parent` = the reclaimed instance, and `spotcheck:resume-step` when the newest
/// valid checkpoint is known.
pub fn continuation_request(
    template: &Template,
    plan: &ContinuationPlan,
    resume_step: Option<u64>,
) -> CreateTrainingJobInputBuilder {
    let t = template;
    let checkpoint = match (&plan.checkpoint_uri, &t.checkpoint_config) {
        (Some(uri), config) => Some(
            sdk::CheckpointConfig::builder()
                .s3_uri(uri)
                .set_local_path(config.as_ref().and_then(|c| c.local_path.clone()))
                .build(),
        ),
        (None, Some(config)) => Some(config.to_sdk()),
        (None, None) => None,
    };
    let mut tags: Vec<(String, String)> = t
        .tags
        .iter()
        .flatten()
        .filter(|tag| !keys::LINEAGE.contains(&tag.key.as_str()))
        .filter(|tag| ![keys::ENABLED, keys::RUN, keys::GENERATION].contains(&tag.key.as_str()))
        .map(|tag| (tag.key.clone(), tag.value.clone()))
        .collect();
    tags.extend(
        [
            (keys::ENABLED, "true".to_owned()),
            (keys::ROOT, plan.name.clone()),
            (keys::ATTEMPT, "1".to_owned()),
            (keys::RUN, plan.run.clone()),
            (keys::GENERATION, plan.generation.to_string()),
            (keys::PARENT, plan.instance_id.clone()),
        ]
        .into_iter()
        .chain(resume_step.map(|step| (keys::RESUME_STEP, step.to_string())))
        .map(|(k, v)| (k.to_owned(), v)),
    );
    CreateTrainingJobInput::builder()
        .training_job_name(&plan.name)
        .algorithm_specification(t.algorithm_specification.to_sdk())
        .role_arn(&t.role_arn)
        .set_hyper_parameters(t.hyper_parameters.clone())
        .set_environment(t.environment.clone())
        .set_input_data_config(
            t.input_data_config
                .as_ref()
                .map(|cs| cs.iter().map(Channel::to_sdk).collect()),
        )
        .output_data_config(t.output_data_config.to_sdk())
        .resource_config(t.resource_config.to_sdk())
        .set_vpc_config(t.vpc_config.as_ref().map(VpcConfig::to_sdk))
        .stopping_condition(t.stopping_condition.to_sdk())
        .set_tags(Some(
            tags.into_iter()
                .map(|(k, v)| sdk::Tag::builder().key(k).value(v).build())
                .collect(),
        ))
        .set_enable_network_isolation(t.enable_network_isolation)
        .set_enable_inter_container_traffic_encryption(t.enable_inter_container_traffic_encryption)
        .enable_managed_spot_training(true)
        .set_checkpoint_config(checkpoint)
        .set_retry_strategy(t.retry_strategy.as_ref().map(|r| {
            sdk::RetryStrategy::builder()
                .maximum_retry_attempts(r.maximum_retry_attempts)
                .build()
        }))
        .set_experiment_config(t.experiment_config.as_ref().map(|e| {
            sdk::ExperimentConfig::builder()
                .set_experiment_name(e.experiment_name.clone())
                .set_trial_name(e.trial_name.clone())
                .set_trial_component_display_name(e.trial_component_display_name.clone())
                .set_run_name(e.run_name.clone())
                .build()
        }))
        .set_tensor_board_output_config(t.tensor_board_output_config.as_ref().map(|c| {
            sdk::TensorBoardOutputConfig::builder()
                .s3_output_path(&c.s3_output_path)
                .set_local_path(c.local_path.clone())
                .build()
        }))
}

impl AlgorithmSpecification {
    fn to_sdk(&self) -> sdk::AlgorithmSpecification {
        sdk::AlgorithmSpecification::builder()
            .set_training_image(self.training_image.clone())
            .set_algorithm_name(self.algorithm_name.clone())
            .set_training_input_mode(
                self.training_input_mode
                    .as_deref()
                    .map(sdk::TrainingInputMode::from),
            )
            .set_metric_definitions(self.metric_definitions.as_ref().map(|ms| {
                ms.iter()
                    .map(|m| {
                        sdk::MetricDefinition::builder()
                            .name(&m.name)
                            .regex(&m.regex)
                            .build()
                    })
                    .collect()
            }))
            .set_enable_sage_maker_metrics_time_series(self.enable_sage_maker_metrics_time_series)
            .set_container_entrypoint(self.container_entrypoint.clone())
            .set_container_arguments(self.container_arguments.clone())
            .build()
    }
}

impl Channel {
    fn to_sdk(&self) -> sdk::Channel {
        let source = &self.data_source;
        sdk::Channel::builder()
            .channel_name(&self.channel_name)
            .data_source(
                sdk::DataSource::builder()
                    .set_s3_data_source(source.s3_data_source.as_ref().map(|s| {
                        sdk::S3DataSource::builder()
                            .s3_data_type(sdk::S3DataType::from(s.s3_data_type.as_str()))
                            .s3_uri(&s.s3_uri)
                            .set_s3_data_distribution_type(
                                s.s3_data_distribution_type
                                    .as_deref()
                                    .map(sdk::S3DataDistribution::from),
                            )
                            .set_attribute_names(s.attribute_names.clone())
                            .set_instance_group_names(s.instance_group_names.clone())
                            .build()
                    }))
                    .set_file_system_data_source(source.file_system_data_source.as_ref().map(|f| {
                        sdk::FileSystemDataSource::builder()
                            .file_system_id(&f.file_system_id)
                            .file_system_access_mode(sdk::FileSystemAccessMode::from(
                                f.file_system_access_mode.as_str(),
                            ))
                            .file_system_type(sdk::FileSystemType::from(
                                f.file_system_type.as_str(),
                            ))
                            .directory_path(&f.directory_path)
                            .build()
                    }))
                    .build(),
            )
            .set_content_type(self.content_type.clone())
            .set_compression_type(
                self.compression_type
                    .as_deref()
                    .map(sdk::CompressionType::from),
            )
            .set_record_wrapper_type(
                self.record_wrapper_type
                    .as_deref()
                    .map(sdk::RecordWrapper::from),
            )
            .set_input_mode(self.input_mode.as_deref().map(sdk::TrainingInputMode::from))
            .set_shuffle_config(
                self.shuffle_config
                    .as_ref()
                    .map(|s| sdk::ShuffleConfig::builder().seed(s.seed).build()),
            )
            .build()
    }
}

impl OutputDataConfig {
    fn to_sdk(&self) -> sdk::OutputDataConfig {
        sdk::OutputDataConfig::builder()
            .s3_output_path(&self.s3_output_path)
            .set_kms_key_id(self.kms_key_id.clone())
            .set_compression_type(
                self.compression_type
                    .as_deref()
                    .map(sdk::OutputCompressionType::from),
            )
            .build()
    }
}

impl ResourceConfig {
    fn to_sdk(&self) -> sdk::ResourceConfig {
        sdk::ResourceConfig::builder()
            .instance_type(sdk::TrainingInstanceType::from(self.instance_type.as_str()))
            .instance_count(self.instance_count)
            .volume_size_in_gb(self.volume_size_in_gb)
            .set_volume_kms_key_id(self.volume_kms_key_id.clone())
            .set_keep_alive_period_in_seconds(self.keep_alive_period_in_seconds)
            .build()
    }
}

impl VpcConfig {
    fn to_sdk(&self) -> sdk::VpcConfig {
        sdk::VpcConfig::builder()
            .set_security_group_ids(Some(self.security_group_ids.clone()))
            .set_subnets(Some(self.subnets.clone()))
            .build()
    }
}

impl StoppingCondition {
    fn to_sdk(&self) -> sdk::StoppingCondition {
        sdk::StoppingCondition::builder()
            .set_max_runtime_in_seconds(self.max_runtime_in_seconds)
            .set_max_wait_time_in_seconds(self.max_wait_time_in_seconds)
            .set_max_pending_time_in_seconds(self.max_pending_time_in_seconds)
            .build()
    }
}

impl CheckpointConfig {
    fn to_sdk(&self) -> sdk::CheckpointConfig {
        sdk::CheckpointConfig::builder()
            .s3_uri(&self.s3_uri)
            .set_local_path(self.local_path.clone())
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(
            template_location("s3://t/runs/llm.json"),
            Some(Ok(("t".into(), "runs/llm.json".into())))
        );
        for bad in ["s3://t", "s3://t/", "s3:///k", "s3://t/dir/"] {
            assert_eq!(
                template_location(bad),
                Some(Err(TemplateError::BadUri)),
                "{bad}"
            );
        }
        for not_a_template in ["on-demand", "ml.g5.2xlarge", "lt-0abc", "https://t/k", ""] {
            assert_eq!(template_location(not_a_template), None, "{not_a_template}");
        }
    }
}
