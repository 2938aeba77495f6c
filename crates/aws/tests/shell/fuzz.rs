//! Property tests of the continuation-template parser: whatever `spotcheck:continue-on` points
//! at, `parse_template` answers without panicking, and what it accepts is a template the
//! request can be built from, managed spot, named by the plan, with the checks it promises.
//!
//! Cases per property in `cargo test`: 512 (or `PROPTEST_CASES`, `spotcheck_fuzz::cases`).
//! `soak_continuation_templates` (`#[ignore]`d; `scripts/fuzz-soak.sh`) soaks them.

use std::sync::LazyLock;

use proptest::prelude::*;
use serde_json::Value;
use spotcheck_aws::{continuation_request, parse_template};
use spotcheck_fuzz::cases;
use spotcheck_fuzz::json::bytes::{arb_mutations, mutated, Mutation};
use spotcheck_fuzz::json::{arb_edits, arb_json, edited, Edit, Vocabulary};
use spotcheck_fuzz::soak::Soak;

use crate::continuation::{plan, template_bytes};

const KEYS: &[&str] = &[
    "TrainingJobName",
    "AlgorithmSpecification",
    "TrainingImage",
    "AlgorithmName",
    "TrainingInputMode",
    "MetricDefinitions",
    "Name",
    "Regex",
    "EnableSageMakerMetricsTimeSeries",
    "ContainerEntrypoint",
    "ContainerArguments",
    "RoleArn",
    "HyperParameters",
    "Environment",
    "InputDataConfig",
    "ChannelName",
    "DataSource",
    "S3DataSource",
    "S3DataType",
    "S3Uri",
    "S3DataDistributionType",
    "FileSystemDataSource",
    "FileSystemId",
    "ContentType",
    "CompressionType",
    "RecordWrapperType",
    "InputMode",
    "ShuffleConfig",
    "Seed",
    "OutputDataConfig",
    "S3OutputPath",
    "KmsKeyId",
    "ResourceConfig",
    "InstanceType",
    "InstanceCount",
    "VolumeSizeInGB",
    "VolumeKmsKeyId",
    "KeepAlivePeriodInSeconds",
    "VpcConfig",
    "SecurityGroupIds",
    "Subnets",
    "StoppingCondition",
    "MaxRuntimeInSeconds",
    "MaxWaitTimeInSeconds",
    "MaxPendingTimeInSeconds",
    "Tags",
    "Key",
    "Value",
    "EnableNetworkIsolation",
    "EnableInterContainerTrafficEncryption",
    "EnableManagedSpotTraining",
    "CheckpointConfig",
    "LocalPath",
    "RetryStrategy",
    "MaximumRetryAttempts",
    "ExperimentConfig",
    "TensorBoardOutputConfig",
    "DebugHookConfig",
];

const STRINGS: &[&str] = &[
    "aws:cloudformation:stack-name",
    "spotcheck:enabled",
    "spotcheck:root",
    "spotcheck:run",
    "spotcheck:attempt",
    "team",
    "true",
    "false",
    "File",
    "Pipe",
    "FastFile",
    "S3Prefix",
    "ml.g5.2xlarge",
    "s3://bucket/key",
    "arn:aws:iam::123456789012:role/R",
    "",
    "86400",
];

const VOCABULARY: Vocabulary = Vocabulary {
    keys: KEYS,
    strings: STRINGS,
};

/// The example template, parsed once.
static TEMPLATE: LazyLock<Vec<Value>> =
    LazyLock::new(|| vec![serde_json::from_slice(&template_bytes()).unwrap()]);

/// What the parser promises for whatever it accepts.
fn template(bytes: &[u8]) -> Result<(), TestCaseError> {
    let Ok(template) = parse_template(bytes) else {
        return Ok(());
    };
    let stopping = &template.stopping_condition;
    let wait = stopping.max_wait_time_in_seconds;
    prop_assert!(wait.is_some(), "accepted without MaxWaitTimeInSeconds");
    if let (Some(wait), Some(runtime)) = (wait, stopping.max_runtime_in_seconds) {
        prop_assert!(wait >= runtime, "wait {} < runtime {}", wait, runtime);
    }
    prop_assert!(!template
        .tags
        .iter()
        .flatten()
        .any(|t| t.key.starts_with("aws:")));
    let plan = plan(Some("s3://ckpt/run"));
    let request = continuation_request(&template, &plan, Some(7))
        .build()
        .map_err(|e| TestCaseError::fail(format!("the request does not build: {e}")))?;
    prop_assert_eq!(request.training_job_name(), Some(plan.name.as_str()));
    prop_assert_eq!(request.enable_managed_spot_training(), Some(true));
    let enabled: Vec<_> = request
        .tags()
        .iter()
        .filter(|t| t.key() == Some("spotcheck:enabled"))
        .collect();
    prop_assert_eq!(enabled.len(), 1);
    prop_assert_eq!(enabled[0].value(), Some("true"));
    Ok(())
}

fn template_edited((index, edits): &(usize, Vec<(Vec<usize>, Edit)>)) -> Result<(), TestCaseError> {
    template(edited(&TEMPLATE, *index, edits).to_string().as_bytes())
}

fn template_mutated(mutations: &[Mutation]) -> Result<(), TestCaseError> {
    template(&mutated(template_bytes_cached(), mutations))
}

fn template_bytes_cached() -> &'static [u8] {
    static BYTES: LazyLock<Vec<u8>> = LazyLock::new(template_bytes);
    &BYTES
}

fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..1024)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(512)))]

    #[test]
    fn template_parser_survives_arbitrary_bytes(bytes in arb_bytes()) {
        template(&bytes)?;
    }

    #[test]
    fn template_parser_survives_arbitrary_json(value in arb_json(VOCABULARY)) {
        template(value.to_string().as_bytes())?;
    }

    #[test]
    fn edited_templates_parse_or_fail_cleanly_and_build_a_managed_spot_request(
        input in (any::<usize>(), arb_edits(VOCABULARY)),
    ) {
        template_edited(&input)?;
    }

    #[test]
    fn byte_mutated_templates_never_panic(mutations in arb_mutations()) {
        template_mutated(&mutations)?;
    }
}

/// The unedited example is accepted, so the edited cases start from a template that builds.
#[test]
fn the_example_template_is_accepted_by_the_property() {
    assert!(parse_template(&template_bytes()).is_ok());
    template(&template_bytes()).unwrap();
}

#[test]
#[ignore = "soak: run by scripts/fuzz-soak.sh"]
fn soak_continuation_templates() {
    Soak::new("continuation templates")
        .property("arbitrary bytes", arb_bytes(), |b| template(b))
        .property("arbitrary JSON", arb_json(VOCABULARY), |v| {
            template(v.to_string().as_bytes())
        })
        .property(
            "edited example",
            (any::<usize>(), arb_edits(VOCABULARY)),
            template_edited,
        )
        .property("byte-mutated example", arb_mutations(), |m| {
            template_mutated(m)
        })
        .run_and_check();
}
