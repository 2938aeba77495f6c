//! SageMaker training jobs: the [`TrainingJobs`] trait, its SDK implementation, and the two pure
//! conversions between SDK types and the decision engine's.
//!
//! Owns DescribeTrainingJob → [`JobFacts`] ([`job_facts`]), the relaunch request
//! ([`relaunch_request`]: DescribeTrainingJob output + [`RelaunchPlan`] → a
//! CreateTrainingJob input builder, every field carried over), and the mapping of
//! CreateTrainingJob's `ResourceInUse` to [`Created::AlreadyExists`] (for the handler to
//! check against the existing job's tags). The adapter sends
//! whatever request it is given; building one is always a pure function. It decides nothing: the
//! plan says what changes, this module only applies it.
//!
//! The raw SDK output is kept next to the facts ([`Described::output`]) because a relaunch must
//! copy fields the engine never looks at (channels, VPC, debugger and profiler configuration…).

use std::future::Future;

use aws_sdk_sagemaker::operation::create_training_job::builders::CreateTrainingJobInputBuilder;
use aws_sdk_sagemaker::operation::describe_training_job::DescribeTrainingJobOutput;
use aws_sdk_sagemaker::types::{Tag, TrainingInstanceType};
use spotcheck_control::job::{CheckpointConfig, FactsOrigin, StatusTransition};
use spotcheck_control::{JobFacts, RelaunchPlan, Tags, Timestamp};

use crate::create_rules::{has_instance_storage, is_builtin_algorithm};
use crate::error::{AwsError, ErrorKind};

/// One DescribeTrainingJob answer: the engine's view and the SDK's, side by side.
#[derive(Clone, Debug)]
pub struct Described {
    /// What the decision engine reads (tags not included: ListTags supplies them).
    pub facts: JobFacts,
    /// The SDK output, kept whole for [`relaunch_request`].
    pub output: DescribeTrainingJobOutput,
}

/// What CreateTrainingJob did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    /// The job was created now; its ARN.
    New {
        /// `TrainingJobArn`.
        arn: String,
    },
    /// A job with this (deterministic) name already exists: an earlier delivery of the same
    /// event created it — or someone else's job holds the name, which the handler tells apart
    /// by the existing job's lineage tags.
    AlreadyExists,
}

/// The SageMaker calls the handlers make. Errors carry an [`ErrorKind`]; the SDK's retry
/// configuration has already retried transient failures.
pub trait TrainingJobs {
    /// DescribeTrainingJob. `AccessDenied` means the job is not opted in (the IAM grant is
    /// conditioned on `spotcheck:enabled=true`); `NotFound` that it does not exist.
    fn describe(&self, name: &str) -> impl Future<Output = Result<Described, AwsError>> + Send;

    /// ListTags of a training-job ARN (all pages).
    fn list_tags(&self, arn: &str) -> impl Future<Output = Result<Tags, AwsError>> + Send;

    /// CreateTrainingJob with a request built by a pure function ([`relaunch_request`], or
    /// [`continuation_request`](crate::continuation::continuation_request)). `ResourceInUse`
    /// is [`Created::AlreadyExists`]: the names are deterministic, so it usually means "already
    /// done", which the handler confirms from the existing job's tags.
    fn create(
        &self,
        request: CreateTrainingJobInputBuilder,
    ) -> impl Future<Output = Result<Created, AwsError>> + Send;
}

/// DescribeTrainingJob output as the decision engine's [`JobFacts`] (pure).
///
/// A timestamp the engine cannot represent is dropped rather than failing the whole job: the
/// facts it feeds (staleness, transitions) then fall back as for a partial event.
pub fn job_facts(output: &DescribeTrainingJobOutput) -> Result<JobFacts, AwsError> {
    let name = output
        .training_job_name()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            AwsError::new(
                "DescribeTrainingJob",
                ErrorKind::Rejected,
                "the answer has no TrainingJobName",
            )
        })?;
    let time = |t: Option<&aws_sdk_sagemaker::primitives::DateTime>| {
        t.and_then(|t| t.to_millis().ok())
            .and_then(|ms| Timestamp::from_epoch_ms(ms).ok())
    };
    let seconds = |n: Option<i32>| n.and_then(|n| u64::try_from(n).ok());
    let resources = output.resource_config();
    let stopping = output.stopping_condition();
    Ok(JobFacts {
        name: name.to_owned(),
        arn: output.training_job_arn().map(str::to_owned),
        status: output.training_job_status().map(|s| s.as_str().into()),
        secondary_status: output.secondary_status().map(|s| s.as_str().into()),
        failure_reason: output.failure_reason().map(str::to_owned),
        transitions: output
            .secondary_status_transitions()
            .iter()
            .filter_map(|t| {
                Some(StatusTransition {
                    status: t.status.as_ref()?.as_str().into(),
                    start_time: time(t.start_time.as_ref()),
                    end_time: time(t.end_time.as_ref()),
                    message: t.status_message.clone(),
                })
            })
            .collect(),
        instance_type: resources
            .and_then(|r| r.instance_type.as_ref())
            .map(|t| t.as_str().to_owned()),
        instance_count: resources
            .and_then(|r| r.instance_count)
            .and_then(|n| u32::try_from(n).ok()),
        managed_spot: output.enable_managed_spot_training(),
        max_runtime_seconds: seconds(stopping.and_then(|s| s.max_runtime_in_seconds)),
        max_wait_seconds: seconds(stopping.and_then(|s| s.max_wait_time_in_seconds)),
        checkpoint: output.checkpoint_config().map(|c| CheckpointConfig {
            s3_uri: c.s3_uri.clone().filter(|u| !u.is_empty()),
            local_path: c.local_path.clone(),
        }),
        training_time_seconds: seconds(output.training_time_in_seconds()),
        billable_time_seconds: seconds(output.billable_time_in_seconds()),
        creation_time: time(output.creation_time()),
        training_start_time: time(output.training_start_time()),
        training_end_time: time(output.training_end_time()),
        last_modified_time: time(output.last_modified_time()),
        tags: Tags::new(),
        origin: FactsOrigin::DescribeTrainingJob,
        unreadable: Vec::new(),
    })
}

/// A list member as the request wants it: absent rather than empty (Describe returns `[]` for
/// members it never had).
fn non_empty<T: Clone>(items: &[T]) -> Option<Vec<T>> {
    (!items.is_empty()).then(|| items.to_vec())
}

/// SageMaker's limit on `MaxRuntimeInSeconds`/`MaxWaitTimeInSeconds` fits an `i32`; a plan
/// value beyond it is clamped rather than wrapped.
fn seconds_i32(seconds: u64) -> i32 {
    i32::try_from(seconds).unwrap_or(i32::MAX)
}

/// The CreateTrainingJob request of a relaunch (pure; no network).
///
/// Every field DescribeTrainingJob returns that CreateTrainingJob accepts is carried over as
/// is — HyperParameters, AlgorithmSpecification, RoleArn, InputDataConfig, OutputDataConfig,
/// ResourceConfig, VpcConfig, StoppingCondition, EnableNetworkIsolation,
/// EnableInterContainerTrafficEncryption, EnableManagedSpotTraining, CheckpointConfig,
/// DebugHookConfig, DebugRuleConfigurations, TensorBoardOutputConfig, ExperimentConfig,
/// ProfilerConfig, ProfilerRuleConfigurations, Environment, RetryStrategy, RemoteDebugConfig,
/// InfraCheckConfig, ServerlessJobConfig, MlflowConfig, ModelPackageConfig — and then the plan
/// applies its changes:
///
/// - `TrainingJobName` = the plan's deterministic name;
/// - `Tags` = the plan's complete tag set (the parent's ListTags minus `aws:` keys, plus the
///   lineage bookkeeping);
/// - `ResourceConfig.InstanceType` = the plan's type when it names one (and the parent's
///   `SelectedInstanceType/Count`, SageMaker's record of what it picked for the parent, are
///   cleared so it picks again);
/// - `EnableManagedSpotTraining` = the plan's `spot`; on-demand also drops
///   `MaxWaitTimeInSeconds`, which CreateTrainingJob only accepts with managed spot;
/// - `MaxWaitTimeInSeconds` / `MaxRuntimeInSeconds` = the plan's values when set (the runtime
///   is what is left of the lineage's budget).
///
/// What DescribeTrainingJob filled in but CreateTrainingJob refuses is left out
/// ([`crate::create_rules`]):
///
/// - `ResourceConfig.VolumeKmsKeyId` when the relaunch's instance type has local NVMe storage;
/// - `AlgorithmSpecification.TrainingImage` when it names an `AlgorithmName` (Describe fills
///   in the algorithm's image; Create takes one or the other);
/// - `AlgorithmSpecification.MetricDefinitions` of a built-in algorithm (Describe lists the
///   algorithm's own).
///
/// `SessionChainingConfig` is the one CreateTrainingJob field DescribeTrainingJob does not
/// return (SDK 1.248), so it cannot be carried over.
pub fn relaunch_request(
    parent: &DescribeTrainingJobOutput,
    plan: &RelaunchPlan,
) -> CreateTrainingJobInputBuilder {
    let mut resource_config = parent.resource_config().cloned();
    if let Some(rc) = resource_config.as_mut() {
        if let Some(instance_type) = &plan.instance_type {
            rc.instance_type = Some(TrainingInstanceType::from(instance_type.as_str()));
        }
        rc.selected_instance_type = None;
        rc.selected_instance_count = None;
        if rc
            .instance_type
            .as_ref()
            .is_some_and(|t| has_instance_storage(t.as_str()))
        {
            rc.volume_kms_key_id = None;
        }
    }
    let mut algorithm = parent.algorithm_specification().cloned();
    if let Some(spec) = algorithm.as_mut() {
        if spec
            .algorithm_name
            .as_deref()
            .is_some_and(|n| !n.is_empty())
        {
            spec.training_image = None;
        } else if spec
            .training_image
            .as_deref()
            .is_some_and(|image| is_builtin_algorithm(image, parent.hyper_parameters()))
        {
            spec.metric_definitions = None;
        }
    }
    let mut stopping = parent.stopping_condition().cloned();
    if let Some(sc) = stopping.as_mut() {
        if let Some(runtime) = plan.max_runtime_seconds {
            sc.max_runtime_in_seconds = Some(seconds_i32(runtime));
        }
        if !plan.spot {
            sc.max_wait_time_in_seconds = None;
        } else if let Some(wait) = plan.max_wait_seconds {
            sc.max_wait_time_in_seconds = Some(seconds_i32(wait));
        }
    }
    let tags: Vec<Tag> = plan
        .tags
        .iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect();
    aws_sdk_sagemaker::operation::create_training_job::CreateTrainingJobInput::builder()
        .training_job_name(&plan.job_name)
        .set_hyper_parameters(parent.hyper_parameters().cloned())
        .set_algorithm_specification(algorithm)
        .set_role_arn(parent.role_arn().map(str::to_owned))
        .set_input_data_config(non_empty(parent.input_data_config()))
        .set_output_data_config(parent.output_data_config().cloned())
        .set_resource_config(resource_config)
        .set_vpc_config(parent.vpc_config().cloned())
        .set_stopping_condition(stopping)
        .set_tags(Some(tags))
        .set_enable_network_isolation(parent.enable_network_isolation())
        .set_enable_inter_container_traffic_encryption(
            parent.enable_inter_container_traffic_encryption(),
        )
        .enable_managed_spot_training(plan.spot)
        .set_checkpoint_config(parent.checkpoint_config().cloned())
        .set_debug_hook_config(parent.debug_hook_config().cloned())
        .set_debug_rule_configurations(non_empty(parent.debug_rule_configurations()))
        .set_tensor_board_output_config(parent.tensor_board_output_config().cloned())
        .set_experiment_config(parent.experiment_config().cloned())
        .set_profiler_config(parent.profiler_config().cloned())
        .set_profiler_rule_configurations(non_empty(parent.profiler_rule_configurations()))
        .set_environment(parent.environment().cloned())
        .set_retry_strategy(parent.retry_strategy().cloned())
        .set_remote_debug_config(parent.remote_debug_config().cloned())
        .set_infra_check_config(parent.infra_check_config().cloned())
        .set_serverless_job_config(parent.serverless_job_config().cloned())
        .set_mlflow_config(parent.mlflow_config().cloned())
        .set_model_package_config(parent.model_package_config().cloned())
}

/// [`TrainingJobs`] over the AWS SDK.
#[derive(Clone, Debug)]
pub struct SdkTrainingJobs {
    client: aws_sdk_sagemaker::Client,
}

impl SdkTrainingJobs {
    /// From a shared SDK configuration (region, credentials, retry and timeout settings, and
    /// `AWS_ENDPOINT_URL[_SAGEMAKER]` for emulators).
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        SdkTrainingJobs {
            client: aws_sdk_sagemaker::Client::new(config),
        }
    }

    /// From a ready client (tests against an emulator with a custom configuration).
    pub fn from_client(client: aws_sdk_sagemaker::Client) -> Self {
        SdkTrainingJobs { client }
    }
}

impl TrainingJobs for SdkTrainingJobs {
    async fn describe(&self, name: &str) -> Result<Described, AwsError> {
        let output = self
            .client
            .describe_training_job()
            .training_job_name(name)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("DescribeTrainingJob", e))?;
        Ok(Described {
            facts: job_facts(&output)?,
            output,
        })
    }

    async fn list_tags(&self, arn: &str) -> Result<Tags, AwsError> {
        let mut tags = Tags::new();
        let mut pages = self
            .client
            .list_tags()
            .resource_arn(arn)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| AwsError::from_sdk("ListTags", e))?;
            for tag in page.tags() {
                if let Some(key) = &tag.key {
                    tags.insert(key.clone(), tag.value.clone().unwrap_or_default());
                }
            }
        }
        Ok(tags)
    }

    async fn create(&self, request: CreateTrainingJobInputBuilder) -> Result<Created, AwsError> {
        match request.send_with(&self.client).await {
            Ok(out) => Ok(Created::New {
                arn: out.training_job_arn().unwrap_or_default().to_owned(),
            }),
            Err(e) => {
                let err = AwsError::from_sdk("CreateTrainingJob", e);
                match err.kind {
                    ErrorKind::AlreadyExists => Ok(Created::AlreadyExists),
                    _ => Err(err),
                }
            }
        }
    }
}
