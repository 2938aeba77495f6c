//! The relaunch request: every CreateTrainingJob field DescribeTrainingJob returns is carried
//! over, and exactly the plan's changes are applied (pure; no network).

use std::collections::HashMap;

use aws_sdk_sagemaker::operation::describe_training_job::DescribeTrainingJobOutput;
use aws_sdk_sagemaker::types::*;
use spotcheck_aws::relaunch_request;
use spotcheck_control::{RelaunchCause, RelaunchPlan, Tags};

use crate::fakes::top_level_fields;

fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A DescribeTrainingJob output with every field CreateTrainingJob also takes populated.
fn fully_populated() -> DescribeTrainingJobOutput {
    DescribeTrainingJobOutput::builder()
        .training_job_name("train")
        .training_job_arn("arn:aws:sagemaker:us-east-1:123456789012:training-job/train")
        .training_job_status(TrainingJobStatus::Stopped)
        .secondary_status(SecondaryStatus::MaxWaitTimeExceeded)
        .set_hyper_parameters(Some(map(&[("epochs", "90"), ("lr", "0.1")])))
        .algorithm_specification(
            AlgorithmSpecification::builder()
                .training_image("123456789012.dkr.ecr.us-east-1.amazonaws.com/t:1")
                .training_input_mode(TrainingInputMode::File)
                .enable_sage_maker_metrics_time_series(true)
                .build(),
        )
        .role_arn("arn:aws:iam::123456789012:role/Train")
        .input_data_config(
            Channel::builder()
                .channel_name("train")
                .data_source(
                    DataSource::builder()
                        .s3_data_source(
                            S3DataSource::builder()
                                .s3_data_type(S3DataType::S3Prefix)
                                .s3_uri("s3://data/train")
                                .build(),
                        )
                        .build(),
                )
                .build(),
        )
        .output_data_config(
            OutputDataConfig::builder()
                .s3_output_path("s3://models/out")
                .kms_key_id("key")
                .build(),
        )
        .resource_config(
            ResourceConfig::builder()
                .instance_type(TrainingInstanceType::from("ml.p3.2xlarge"))
                .instance_count(2)
                .volume_size_in_gb(100)
                .volume_kms_key_id("vol-key")
                .keep_alive_period_in_seconds(60)
                .selected_instance_type(TrainingInstanceType::from("ml.p3.2xlarge"))
                .selected_instance_count(2)
                .build(),
        )
        .vpc_config(
            VpcConfig::builder()
                .security_group_ids("sg-1")
                .subnets("subnet-1")
                .build(),
        )
        .stopping_condition(
            StoppingCondition::builder()
                .max_runtime_in_seconds(3600)
                .max_wait_time_in_seconds(7200)
                .max_pending_time_in_seconds(7200)
                .build(),
        )
        .enable_network_isolation(true)
        .enable_inter_container_traffic_encryption(true)
        .enable_managed_spot_training(true)
        .checkpoint_config(
            CheckpointConfig::builder()
                .s3_uri("s3://ckpt/train")
                .local_path("/opt/ml/checkpoints")
                .build(),
        )
        .debug_hook_config(
            DebugHookConfig::builder()
                .s3_output_path("s3://debug/hook")
                .local_path("/opt/ml/output/tensors")
                .build(),
        )
        .debug_rule_configurations(
            DebugRuleConfiguration::builder()
                .rule_configuration_name("loss")
                .rule_evaluator_image("img")
                .build(),
        )
        .tensor_board_output_config(
            TensorBoardOutputConfig::builder()
                .s3_output_path("s3://tb/out")
                .build(),
        )
        .experiment_config(
            ExperimentConfig::builder()
                .experiment_name("exp")
                .trial_name("trial")
                .run_name("run")
                .build(),
        )
        .profiler_config(
            ProfilerConfig::builder()
                .s3_output_path("s3://prof/out")
                .profiling_interval_in_milliseconds(500)
                .build(),
        )
        .profiler_rule_configurations(
            ProfilerRuleConfiguration::builder()
                .rule_configuration_name("cpu")
                .rule_evaluator_image("img")
                .build(),
        )
        .set_environment(Some(map(&[("SPOTCHECK_CHECKPOINT_EVERY", "200")])))
        .retry_strategy(RetryStrategy::builder().maximum_retry_attempts(2).build())
        .remote_debug_config(
            RemoteDebugConfig::builder()
                .enable_remote_debug(true)
                .build(),
        )
        .infra_check_config(InfraCheckConfig::builder().enable_infra_check(true).build())
        .serverless_job_config(
            ServerlessJobConfig::builder()
                .base_model_arn("arn:base")
                .job_type(ServerlessJobType::from("FineTuning"))
                .build()
                .unwrap(),
        )
        .mlflow_config(
            MlflowConfig::builder()
                .mlflow_resource_arn("arn:mlflow")
                .build()
                .unwrap(),
        )
        .model_package_config(
            ModelPackageConfig::builder()
                .model_package_group_arn("arn:group")
                .build()
                .unwrap(),
        )
        .build()
}

fn plan(spot: bool, instance_type: Option<&str>) -> RelaunchPlan {
    let tags: Tags = [
        ("spotcheck:enabled", "true"),
        ("spotcheck:root", "train"),
        ("spotcheck:attempt", "2"),
        ("spotcheck:parent", "train"),
        ("team", "vision"),
    ]
    .into_iter()
    .collect();
    RelaunchPlan {
        job_name: "train-r2-0123abcd".into(),
        instance_type: instance_type.map(str::to_owned),
        spot,
        from_checkpoint: Some(1200),
        max_wait_seconds: spot.then_some(10_800),
        max_runtime_seconds: Some(5400),
        parent: "train".into(),
        root: "train".into(),
        attempt: 2,
        cause: RelaunchCause::SpotWaitExceeded,
        tags,
    }
}

#[test]
fn every_field_is_carried_over_and_the_plan_applied() {
    let parent = fully_populated();
    let request = relaunch_request(&parent, &plan(true, Some("ml.g5.2xlarge")));

    // Carried over verbatim.
    assert_eq!(
        request.get_hyper_parameters().as_ref(),
        parent.hyper_parameters()
    );
    assert_eq!(
        request.get_algorithm_specification().as_ref(),
        parent.algorithm_specification()
    );
    assert_eq!(request.get_role_arn().as_deref(), parent.role_arn());
    assert_eq!(
        request.get_input_data_config().as_deref(),
        Some(parent.input_data_config())
    );
    assert_eq!(
        request.get_output_data_config().as_ref(),
        parent.output_data_config()
    );
    assert_eq!(request.get_vpc_config().as_ref(), parent.vpc_config());
    assert_eq!(request.get_enable_network_isolation(), &Some(true));
    assert_eq!(
        request.get_enable_inter_container_traffic_encryption(),
        &Some(true)
    );
    assert_eq!(
        request.get_checkpoint_config().as_ref(),
        parent.checkpoint_config()
    );
    assert_eq!(
        request.get_debug_hook_config().as_ref(),
        parent.debug_hook_config()
    );
    assert_eq!(
        request.get_debug_rule_configurations().as_deref(),
        Some(parent.debug_rule_configurations())
    );
    assert_eq!(
        request.get_tensor_board_output_config().as_ref(),
        parent.tensor_board_output_config()
    );
    assert_eq!(
        request.get_experiment_config().as_ref(),
        parent.experiment_config()
    );
    assert_eq!(
        request.get_profiler_config().as_ref(),
        parent.profiler_config()
    );
    assert_eq!(
        request.get_profiler_rule_configurations().as_deref(),
        Some(parent.profiler_rule_configurations())
    );
    assert_eq!(request.get_environment().as_ref(), parent.environment());
    assert_eq!(
        request.get_retry_strategy().as_ref(),
        parent.retry_strategy()
    );
    assert_eq!(
        request.get_remote_debug_config().as_ref(),
        parent.remote_debug_config()
    );
    assert_eq!(
        request.get_infra_check_config().as_ref(),
        parent.infra_check_config()
    );
    assert_eq!(
        request.get_serverless_job_config().as_ref(),
        parent.serverless_job_config()
    );
    assert_eq!(request.get_mlflow_config().as_ref(), parent.mlflow_config());
    assert_eq!(
        request.get_model_package_config().as_ref(),
        parent.model_package_config()
    );
    // Not returned by DescribeTrainingJob, so nothing to carry.
    assert_eq!(request.get_session_chaining_config(), &None);

    // The plan's changes.
    assert_eq!(
        request.get_training_job_name().as_deref(),
        Some("train-r2-0123abcd")
    );
    assert_eq!(request.get_enable_managed_spot_training(), &Some(true));
    let rc = request.get_resource_config().clone().unwrap();
    assert_eq!(
        rc.instance_type,
        Some(TrainingInstanceType::from("ml.g5.2xlarge"))
    );
    assert_eq!(rc.instance_count, Some(2));
    assert_eq!(rc.volume_size_in_gb, Some(100));
    assert_eq!(
        rc.volume_kms_key_id, None,
        "ml.g5 has local NVMe storage: SageMaker refuses a VolumeKmsKeyId there"
    );
    assert_eq!(rc.keep_alive_period_in_seconds, Some(60));
    assert_eq!(rc.selected_instance_type, None, "SageMaker picks again");
    let sc = request.get_stopping_condition().clone().unwrap();
    assert_eq!(sc.max_runtime_in_seconds, Some(5400));
    assert_eq!(sc.max_wait_time_in_seconds, Some(10_800));
    assert_eq!(sc.max_pending_time_in_seconds, Some(7200));
    // Exactly the plan's tag set, nothing of the parent's beyond it.
    let tags: Tags = request
        .get_tags()
        .clone()
        .unwrap()
        .into_iter()
        .map(|t| (t.key.unwrap(), t.value.unwrap()))
        .collect();
    assert_eq!(tags, plan(true, None).tags);
    // Every required member is present: the request builds.
    request.build().unwrap();
}

/// CreateTrainingJob fields DescribeTrainingJob does not return (SDK 1.248): the plan supplies
/// the tags; SessionChainingConfig cannot be carried (docs/lambdas.md).
const NOT_RETURNED_BY_DESCRIBE: [&str; 2] = ["tags", "session_chaining_config"];

/// Guards the list above against SDK upgrades: every CreateTrainingJob field that
/// DescribeTrainingJob also returns must be populated in [`fully_populated`] and carried into
/// the request, so a new shared field fails here until `relaunch_request` copies it.
#[test]
fn no_field_describe_returns_is_left_behind() {
    let parent = fully_populated();
    let described = top_level_fields(&format!("{parent:#?}"));
    let request = relaunch_request(&parent, &plan(true, None))
        .build()
        .unwrap();
    let requested = top_level_fields(&format!("{request:#?}"));
    assert!(
        requested.len() >= 28,
        "the Debug parser sees the fields: {requested:?}"
    );
    for (name, carried) in &requested {
        match described.iter().find(|(n, _)| n == name) {
            Some((_, populated)) => {
                assert!(populated, "fully_populated() leaves {name} unset");
                assert!(carried, "{name} is not carried over to the relaunch");
            }
            None => assert!(
                NOT_RETURNED_BY_DESCRIBE.contains(&name.as_str()),
                "{name}: a CreateTrainingJob field DescribeTrainingJob does not return; \
                 decide how a relaunch sets it"
            ),
        }
    }
    assert!(requested.iter().any(|(n, set)| n == "tags" && *set));
    assert!(requested
        .iter()
        .any(|(n, set)| n == "session_chaining_config" && !*set));
}

#[test]
fn a_plan_that_changes_nothing_keeps_the_parents_values() {
    let parent = fully_populated();
    let mut unchanged = plan(true, None);
    unchanged.max_wait_seconds = None;
    unchanged.max_runtime_seconds = None;
    let request = relaunch_request(&parent, &unchanged);
    let sc = request.get_stopping_condition().clone().unwrap();
    assert_eq!(sc, parent.stopping_condition().unwrap().clone());
    let rc = request.get_resource_config().clone().unwrap();
    assert_eq!(
        rc.instance_type,
        Some(TrainingInstanceType::from("ml.p3.2xlarge"))
    );
    // Only SageMaker's record of what it selected is cleared.
    assert_eq!(rc.selected_instance_type, None);
    assert_eq!(rc.selected_instance_count, None);
    let mut expected = parent.resource_config().unwrap().clone();
    expected.selected_instance_type = None;
    expected.selected_instance_count = None;
    assert_eq!(rc, expected);
}

#[test]
fn on_demand_relaunch_drops_max_wait_and_keeps_the_rest() {
    let parent = fully_populated();
    let request = relaunch_request(&parent, &plan(false, None));
    assert_eq!(request.get_enable_managed_spot_training(), &Some(false));
    let sc = request.get_stopping_condition().clone().unwrap();
    assert_eq!(sc.max_wait_time_in_seconds, None);
    assert_eq!(sc.max_runtime_in_seconds, Some(5400));
    let rc = request.get_resource_config().clone().unwrap();
    assert_eq!(
        rc.instance_type,
        Some(TrainingInstanceType::from("ml.p3.2xlarge"))
    );
}

#[test]
fn sparse_parent_gives_a_sparse_request() {
    let parent = DescribeTrainingJobOutput::builder()
        .training_job_name("t")
        .role_arn("arn:aws:iam::1:role/r")
        .build();
    let request = relaunch_request(&parent, &plan(true, Some("ml.g5.2xlarge")));
    assert_eq!(request.get_input_data_config(), &None);
    assert_eq!(request.get_debug_rule_configurations(), &None);
    assert_eq!(request.get_resource_config(), &None);
    assert_eq!(request.get_vpc_config(), &None);
}

/// Regression: a relaunch down the ladder from an EBS type to one with local NVMe storage
/// copied the parent's VolumeKmsKeyId, which CreateTrainingJob refuses there.
#[test]
fn the_volume_key_stays_on_ebs_types_and_goes_on_local_storage() {
    let parent = fully_populated();
    for (target, kept) in [
        (None, true),
        (Some("ml.p3.8xlarge"), true),
        (Some("ml.g5.2xlarge"), false),
        (Some("ml.p4d.24xlarge"), false),
        (Some("ml.trn1.32xlarge"), false),
    ] {
        let request = relaunch_request(&parent, &plan(true, target));
        let rc = request.get_resource_config().clone().unwrap();
        assert_eq!(
            rc.volume_kms_key_id.as_deref(),
            kept.then_some("vol-key"),
            "{target:?}"
        );
        request.build().unwrap();
    }
}

/// Regression: fields DescribeTrainingJob fills in and CreateTrainingJob refuses were copied:
/// a built-in algorithm's MetricDefinitions, and TrainingImage next to AlgorithmName.
#[test]
fn service_filled_algorithm_fields_are_left_out() {
    let metrics = MetricDefinition::builder()
        .name("validation:rmse")
        .regex(".*validation-rmse:([0-9.]+).*")
        .build();
    let builtin = DescribeTrainingJobOutput::builder()
        .training_job_name("xgb")
        .algorithm_specification(
            AlgorithmSpecification::builder()
                .training_image(
                    "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1",
                )
                .training_input_mode(TrainingInputMode::File)
                .metric_definitions(metrics.clone())
                .build(),
        )
        .build();
    let spec = relaunch_request(&builtin, &plan(true, None))
        .get_algorithm_specification()
        .clone()
        .unwrap();
    assert_eq!(spec.metric_definitions, None);
    assert_eq!(
        spec.training_image.as_deref(),
        builtin
            .algorithm_specification()
            .unwrap()
            .training_image
            .as_deref()
    );

    // The same image in script mode is a framework container: its metrics are the user's.
    let script = DescribeTrainingJobOutput::builder()
        .training_job_name("xgb")
        .set_hyper_parameters(Some(map(&[("sagemaker_program", "train.py")])))
        .set_algorithm_specification(builtin.algorithm_specification().cloned())
        .build();
    let spec = relaunch_request(&script, &plan(true, None))
        .get_algorithm_specification()
        .clone()
        .unwrap();
    assert_eq!(
        spec.metric_definitions.as_deref(),
        Some(&[metrics.clone()][..])
    );

    // A custom image keeps its metric definitions (fully_populated has none; add some).
    let custom = DescribeTrainingJobOutput::builder()
        .training_job_name("t")
        .algorithm_specification(
            AlgorithmSpecification::builder()
                .training_image("123456789012.dkr.ecr.us-east-1.amazonaws.com/t:1")
                .metric_definitions(metrics.clone())
                .build(),
        )
        .build();
    let spec = relaunch_request(&custom, &plan(true, None))
        .get_algorithm_specification()
        .clone()
        .unwrap();
    assert_eq!(spec.metric_definitions.as_deref(), Some(&[metrics][..]));

    // AlgorithmName: Describe adds the algorithm's image; Create takes one or the other.
    let by_name = DescribeTrainingJobOutput::builder()
        .training_job_name("algo")
        .algorithm_specification(
            AlgorithmSpecification::builder()
                .algorithm_name("arn:aws:sagemaker:us-east-1:123456789012:algorithm/my-algo")
                .training_image("382416733822.dkr.ecr.us-east-1.amazonaws.com/my-algo:1")
                .training_input_mode(TrainingInputMode::File)
                .build(),
        )
        .build();
    let spec = relaunch_request(&by_name, &plan(true, None))
        .get_algorithm_specification()
        .clone()
        .unwrap();
    assert_eq!(spec.training_image, None);
    assert_eq!(
        spec.algorithm_name.as_deref(),
        Some("arn:aws:sagemaker:us-east-1:123456789012:algorithm/my-algo")
    );
}
