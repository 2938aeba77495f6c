//! What CreateTrainingJob refuses that a copy of DescribeTrainingJob's answer would contain.
//!
//! DescribeTrainingJob returns the request as SageMaker completed it: defaults and
//! service-filled values included. A relaunch copies it field by field
//! ([`relaunch_request`](crate::relaunch_request)), so it must leave out what SageMaker filled
//! in but refuses to be given, and what the relaunch's changes make invalid. This module holds
//! the two tables those rules need, as data with their sources; it does no I/O.
//!
//! - **Instance storage.** `ResourceConfig.VolumeKmsKeyId` is refused for instance types with
//!   local NVMe storage, whose volumes are encrypted by a hardware module instead: "Certain
//!   Nitro-based instances include local storage, dependent on the instance type. Local storage
//!   volumes are encrypted using a hardware module on the instance. You can't request a
//!   VolumeKmsKeyId when using an instance type with local storage." (SageMaker API Reference,
//!   `ResourceConfig`,
//!   <https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_ResourceConfig.html>). A
//!   relaunch down the instance ladder from an EBS type to one of these must drop the key.
//! - **Built-in algorithms.** "If you use one of the SageMaker built-in algorithms, metrics are
//!   already defined for you" (SageMaker Developer Guide, "Define metrics and environment
//!   variables",
//!   <https://docs.aws.amazon.com/sagemaker/latest/dg/automatic-model-tuning-define-metrics-variables.html>):
//!   DescribeTrainingJob lists the algorithm's metrics in `AlgorithmSpecification.MetricDefinitions`,
//!   which CreateTrainingJob does not take for a built-in algorithm.

/// Instance families (`ml.<family>.<size>`) with local NVMe instance storage, from the EC2
/// instance-type specifications ("Instance store volumes",
/// <https://docs.aws.amazon.com/ec2/latest/instancetypes/ac.html>,
/// <https://docs.aws.amazon.com/ec2/latest/instancetypes/gp.html>,
/// <https://docs.aws.amazon.com/ec2/latest/instancetypes/co.html>,
/// <https://docs.aws.amazon.com/ec2/latest/instancetypes/mo.html>) for the SageMaker training
/// instance types of aws-sdk-sagemaker 1.248. A family missing here keeps its key, which is the
/// safe direction: SageMaker refuses the request (a visible refusal), rather than a volume
/// silently encrypted with another key.
pub const INSTANCE_STORAGE_FAMILIES: &[&str] = &[
    "c5d", "g4dn", "g5", "g6", "g6e", "m5d", "p3dn", "p4d", "p4de", "p5", "p5e", "p5en", "p6-b200",
    "r5d", "trn1", "trn1n", "trn2",
];

/// ECR repository names of the SageMaker built-in algorithms (SageMaker Developer Guide,
/// "Docker Registry Paths and Example Code",
/// <https://docs.aws.amazon.com/sagemaker/latest/dg-ecr-paths/sagemaker-algo-docker-registry-paths.html>).
pub const BUILTIN_ALGORITHM_REPOSITORIES: &[&str] = &[
    "blazingtext",
    "factorization-machines",
    "forecasting-deepar",
    "image-classification",
    "ipinsights",
    "kmeans",
    "knn",
    "lda",
    "linear-learner",
    "ntm",
    "object-detection",
    "object2vec",
    "pca",
    "randomcutforest",
    "semantic-segmentation",
    "seq2seq",
    "xgboost",
    "sagemaker-xgboost",
];

/// Whether `instance_type` (`ml.<family>.<size>`) has local instance storage.
pub fn has_instance_storage(instance_type: &str) -> bool {
    let mut parts = instance_type.split('.');
    match (parts.next(), parts.next()) {
        (Some("ml"), Some(family)) => INSTANCE_STORAGE_FAMILIES.contains(&family),
        _ => false,
    }
}

/// Whether a job runs a built-in algorithm: its `TrainingImage` is an ECR image of one of
/// [`BUILTIN_ALGORITHM_REPOSITORIES`], not used as a framework container (`sagemaker-xgboost`
/// also runs your own script, which the `sagemaker_program` hyperparameter names, and then
/// takes your metric definitions).
pub fn is_builtin_algorithm(
    training_image: &str,
    hyperparameters: Option<&std::collections::HashMap<String, String>>,
) -> bool {
    let Some((registry, path)) = training_image.split_once('/') else {
        return false;
    };
    if !registry.contains(".dkr.ecr.") {
        return false;
    }
    let repository = path.split([':', '@']).next().unwrap_or(path);
    let script_mode = hyperparameters.is_some_and(|h| h.contains_key("sagemaker_program"));
    BUILTIN_ALGORITHM_REPOSITORIES.contains(&repository) && !script_mode
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_storage_by_family() {
        for nvme in [
            "ml.g5.2xlarge",
            "ml.g4dn.xlarge",
            "ml.p4d.24xlarge",
            "ml.p3dn.24xlarge",
            "ml.trn1.32xlarge",
            "ml.p6-b200.48xlarge",
        ] {
            assert!(has_instance_storage(nvme), "{nvme}");
        }
        for ebs in [
            "ml.p3.2xlarge",
            "ml.m5.xlarge",
            "ml.c5.xlarge",
            "ml.p2.xlarge",
            "g5.2xlarge",
            "",
        ] {
            assert!(!has_instance_storage(ebs), "{ebs}");
        }
    }

    #[test]
    fn builtin_algorithms_by_repository() {
        let xgb = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1";
        assert!(is_builtin_algorithm(xgb, None));
        let script = [("sagemaker_program".to_owned(), "train.py".to_owned())]
            .into_iter()
            .collect();
        assert!(!is_builtin_algorithm(xgb, Some(&script)));
        assert!(is_builtin_algorithm(
            "382416733822.dkr.ecr.us-east-1.amazonaws.com/linear-learner:1",
            None
        ));
        assert!(is_builtin_algorithm(
            "382416733822.dkr.ecr.us-east-1.amazonaws.com/kmeans@sha256:00",
            None
        ));
        for custom in [
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/spotcheck-trainer:1.4.0",
            "kmeans:latest",
            "docker.io/library/kmeans:1",
        ] {
            assert!(!is_builtin_algorithm(custom, None), "{custom}");
        }
    }
}
