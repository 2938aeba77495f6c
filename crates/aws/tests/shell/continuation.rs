//! The continuation request template (pure): parsing, refusals, and the CreateTrainingJob request
//! built from it.

use serde_json::{json, Value};
use spotcheck_aws::continuation::{TemplateError, MAX_TEMPLATE_BYTES};
use spotcheck_aws::{continuation_request, parse_template, Template};
use spotcheck_control::naming::continuation_name;
use spotcheck_control::{ContinuationPlan, Tags};

use crate::fakes::top_level_fields;

pub const TEMPLATE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/continuation-template.json"
);

/// The example template, every supported field set.
pub fn template_bytes() -> Vec<u8> {
    std::fs::read(TEMPLATE).unwrap()
}

fn template_json() -> Value {
    serde_json::from_slice(&template_bytes()).unwrap()
}

fn parse(value: &Value) -> Result<Template, TemplateError> {
    parse_template(&serde_json::to_vec(value).unwrap())
}

fn invalid(value: &Value) -> String {
    match parse(value) {
        Err(TemplateError::Invalid(reason)) => reason,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

pub fn plan(checkpoint_uri: Option<&str>) -> ContinuationPlan {
    ContinuationPlan {
        name: continuation_name("llm-sft", 1),
        run: "llm-sft".into(),
        generation: 1,
        instance_id: "i-0b1c2d3e4f5a6b7c8".into(),
        continue_on: "s3://templates/llm-sft.json".into(),
        checkpoint_uri: checkpoint_uri.map(str::to_owned),
    }
}

fn tags_of(
    request: &aws_sdk_sagemaker::operation::create_training_job::CreateTrainingJobInput,
) -> Tags {
    request
        .tags()
        .iter()
        .map(|t| (t.key.clone().unwrap(), t.value.clone().unwrap()))
        .collect()
}

#[test]
fn every_template_field_reaches_the_request_with_the_plan_applied() {
    let template = parse_template(&template_bytes()).unwrap();
    let plan = plan(Some("s3://ckpt-bucket/runs/train"));
    let request = continuation_request(&template, &plan, Some(1200))
        .build()
        .unwrap();

    // The plan: deterministic name, managed spot, the run's checkpoints, lineage tags.
    assert_eq!(request.training_job_name(), Some(plan.name.as_str()));
    assert_eq!(request.enable_managed_spot_training(), Some(true));
    let checkpoint = request.checkpoint_config().unwrap();
    assert_eq!(
        checkpoint.s3_uri.as_deref(),
        Some("s3://ckpt-bucket/runs/train")
    );
    assert_eq!(
        checkpoint.local_path.as_deref(),
        Some("/opt/ml/checkpoints")
    );
    let expected: Tags = [
        ("team", "nlp"),
        ("spotcheck:max-attempts", "5"),
        ("spotcheck:enabled", "true"),
        ("spotcheck:root", plan.name.as_str()),
        ("spotcheck:attempt", "1"),
        ("spotcheck:run", "llm-sft"),
        ("spotcheck:generation", "1"),
        ("spotcheck:parent", "i-0b1c2d3e4f5a6b7c8"),
        ("spotcheck:resume-step", "1200"),
    ]
    .into_iter()
    .collect();
    assert_eq!(tags_of(&request), expected);
    assert_eq!(request.tags().len(), 9, "no key twice");

    // The template, as written.
    let algo = request.algorithm_specification().unwrap();
    assert_eq!(
        algo.training_image.as_deref(),
        Some("123456789012.dkr.ecr.us-east-1.amazonaws.com/spotcheck-trainer:1.4.0")
    );
    assert_eq!(algo.training_input_mode.as_ref().unwrap().as_str(), "File");
    assert_eq!(
        algo.metric_definitions()[0].regex.as_deref(),
        Some("loss=([0-9.]+)")
    );
    assert_eq!(algo.enable_sage_maker_metrics_time_series, Some(true));
    assert_eq!(algo.container_entrypoint(), ["train"]);
    assert_eq!(algo.container_arguments(), ["--checkpoint-every", "200"]);
    assert_eq!(
        request.role_arn(),
        Some("arn:aws:iam::123456789012:role/SageMakerTrainingRole")
    );
    assert_eq!(request.hyper_parameters().unwrap()["lr"], "2e-5");
    assert_eq!(request.environment().unwrap()["SPOTCHECK_LOG"], "info");
    let channels = request.input_data_config();
    assert_eq!(channels.len(), 2);
    let s3 = channels[0]
        .data_source
        .as_ref()
        .unwrap()
        .s3_data_source
        .as_ref()
        .unwrap();
    assert_eq!(
        s3.s3_uri.as_deref(),
        Some("s3://ml-data-123456789012/sft/train")
    );
    assert_eq!(s3.s3_data_type.as_ref().unwrap().as_str(), "S3Prefix");
    assert_eq!(
        s3.s3_data_distribution_type.as_ref().unwrap().as_str(),
        "FullyReplicated"
    );
    assert_eq!(
        channels[0].content_type.as_deref(),
        Some("application/jsonlines")
    );
    assert_eq!(channels[0].input_mode.as_ref().unwrap().as_str(), "File");
    assert_eq!(channels[0].shuffle_config.as_ref().unwrap().seed, Some(7));
    let fs = channels[1]
        .data_source
        .as_ref()
        .unwrap()
        .file_system_data_source
        .as_ref()
        .unwrap();
    assert_eq!(fs.file_system_id.as_deref(), Some("fs-0abc"));
    assert_eq!(fs.file_system_type.as_ref().unwrap().as_str(), "EFS");
    let out = request.output_data_config().unwrap();
    assert_eq!(
        out.s3_output_path.as_deref(),
        Some("s3://ml-models-123456789012/llm-sft")
    );
    assert_eq!(out.kms_key_id.as_deref(), Some("alias/models"));
    assert_eq!(out.compression_type.as_ref().unwrap().as_str(), "GZIP");
    let rc = request.resource_config().unwrap();
    assert_eq!(rc.instance_type.as_ref().unwrap().as_str(), "ml.g5.2xlarge");
    assert_eq!(
        (
            rc.instance_count,
            rc.volume_size_in_gb,
            rc.keep_alive_period_in_seconds
        ),
        (Some(1), Some(200), Some(0))
    );
    assert_eq!(rc.volume_kms_key_id.as_deref(), Some("alias/volumes"));
    let vpc = request.vpc_config().unwrap();
    assert_eq!(vpc.subnets(), ["subnet-0abc", "subnet-0def"]);
    assert_eq!(vpc.security_group_ids(), ["sg-0abc"]);
    let sc = request.stopping_condition().unwrap();
    assert_eq!(
        (
            sc.max_runtime_in_seconds,
            sc.max_wait_time_in_seconds,
            sc.max_pending_time_in_seconds
        ),
        (Some(86_400), Some(172_800), Some(7200))
    );
    assert_eq!(request.enable_network_isolation(), Some(false));
    assert_eq!(
        request.enable_inter_container_traffic_encryption(),
        Some(true)
    );
    assert_eq!(
        request.retry_strategy().unwrap().maximum_retry_attempts,
        Some(2)
    );
    let experiment = request.experiment_config().unwrap();
    assert_eq!(experiment.run_name.as_deref(), Some("r1"));
    assert_eq!(
        experiment.trial_component_display_name.as_deref(),
        Some("c1")
    );
    assert_eq!(
        request
            .tensor_board_output_config()
            .unwrap()
            .local_path
            .as_deref(),
        Some("/opt/ml/output/tensorboard")
    );

    // Exactly these CreateTrainingJob fields are settable by a template; the rest are refused
    // at parse time (see `unsupported_fields_are_refused_by_name`).
    let set: Vec<String> = top_level_fields(&format!("{request:#?}"))
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        set,
        [
            "training_job_name",
            "hyper_parameters",
            "algorithm_specification",
            "role_arn",
            "input_data_config",
            "output_data_config",
            "resource_config",
            "vpc_config",
            "stopping_condition",
            "tags",
            "enable_network_isolation",
            "enable_inter_container_traffic_encryption",
            "enable_managed_spot_training",
            "checkpoint_config",
            "tensor_board_output_config",
            "experiment_config",
            "environment",
            "retry_strategy",
        ]
    );
}

#[test]
fn without_a_checkpoint_uri_the_templates_checkpoint_config_stays() {
    let template = parse_template(&template_bytes()).unwrap();
    let request = continuation_request(&template, &plan(None), None)
        .build()
        .unwrap();
    assert_eq!(
        request.checkpoint_config().unwrap().s3_uri.as_deref(),
        Some("s3://somewhere-else/llm-sft")
    );
    let tags = tags_of(&request);
    assert_eq!(
        tags.get("spotcheck:resume-step"),
        None,
        "unknown, so not claimed"
    );
    assert_eq!(tags.get("spotcheck:enabled"), Some("true"));

    // Nor a checkpoint config at all: none in the request either.
    let mut bare = template_json();
    bare.as_object_mut().unwrap().remove("CheckpointConfig");
    let request = continuation_request(&parse(&bare).unwrap(), &plan(None), None)
        .build()
        .unwrap();
    assert_eq!(request.checkpoint_config(), None);
}

#[test]
fn a_minimal_template_is_enough() {
    let minimal = json!({
        "AlgorithmSpecification": {"TrainingImage": "img", "TrainingInputMode": "File"},
        "RoleArn": "arn:aws:iam::123456789012:role/SageMakerTrainingRole",
        "OutputDataConfig": {"S3OutputPath": "s3://out/"},
        "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
        "StoppingCondition": {"MaxWaitTimeInSeconds": 3600},
        "VpcConfig": null
    });
    let template = parse(&minimal).unwrap();
    let request = continuation_request(&template, &plan(Some("s3://c/p")), Some(5))
        .build()
        .unwrap();
    assert_eq!(request.input_data_config(), []);
    assert_eq!(request.vpc_config(), None);
    assert_eq!(request.tags().len(), 7, "the lineage tags alone");
}

#[test]
fn unsupported_fields_are_refused_by_name() {
    for (path, value) in [
        (&["DebugHookConfig"][..], json!({"S3OutputPath": "s3://d/"})),
        (&["ProfilerConfig"][..], json!({})),
        (&["SessionChainingConfig"][..], json!({})),
        (&["SomeFutureField"][..], json!(1)),
        (&["ResourceConfig", "InstanceGroups"][..], json!([])),
        (
            &["AlgorithmSpecification", "TrainingImageConfig"][..],
            json!({}),
        ),
        (&["StoppingCondition", "MaxPendingTime"][..], json!(1)),
    ] {
        let mut template = template_json();
        let mut target = &mut template;
        for part in &path[..path.len() - 1] {
            target = &mut target[*part];
        }
        target[path[path.len() - 1]] = value;
        let reason = invalid(&template);
        assert!(
            reason.contains(&format!("unknown field `{}`", path[path.len() - 1])),
            "{path:?}: {reason}"
        );
    }
}

#[test]
fn missing_wrong_and_contradictory_fields_are_refused_clearly() {
    let mut template = template_json();
    template.as_object_mut().unwrap().remove("RoleArn");
    assert!(invalid(&template).contains("missing field `RoleArn`"));

    let mut template = template_json();
    template["ResourceConfig"]["InstanceCount"] = json!("1");
    assert!(invalid(&template).contains("invalid type"));

    let mut template = template_json();
    template["StoppingCondition"]
        .as_object_mut()
        .unwrap()
        .remove("MaxWaitTimeInSeconds");
    assert!(invalid(&template).contains("MaxWaitTimeInSeconds is required"));

    let mut template = template_json();
    template["StoppingCondition"]["MaxWaitTimeInSeconds"] = json!(3600);
    assert!(invalid(&template).contains("less than MaxRuntimeInSeconds"));

    let mut template = template_json();
    template["Tags"] = json!([{"Key": "aws:cloudformation:stack-name", "Value": "x"}]);
    assert!(invalid(&template).contains("reserved"));

    for bytes in [&b""[..], b"[]", b"{\"RoleArn\": ", b"null"] {
        assert!(
            matches!(parse_template(bytes), Err(TemplateError::Invalid(_))),
            "{bytes:?}"
        );
    }
    let mut huge = template_bytes();
    huge.resize(MAX_TEMPLATE_BYTES as usize + 1, b' ');
    assert_eq!(parse_template(&huge), Err(TemplateError::TooLarge));
    // Exactly at the limit is still read.
    huge.truncate(MAX_TEMPLATE_BYTES as usize);
    assert!(parse_template(&huge).is_ok());
}
