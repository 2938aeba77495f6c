//! The `ec2-spot-events` Lambda: EC2 spot interruption warnings and rebalance recommendations →
//! map the instance to its run, validate checkpoints, record, continue the run as a SageMaker
//! managed-spot job when it names a request template, publish spotcheck events.
//!
//! Only wiring: configuration and clients are built once at cold start, then each event's payload
//! goes to [`Ec2Handler`] through `spotcheck_aws::invoke` (crates/aws). `Err` is returned only for
//! the handler's errors (transient failures, refusals, unusable templates, see `docs/lambdas.md`),
//! so Lambda retries them and finally dead-letters them; everything else is acknowledged.

use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use serde_json::Value;
use spotcheck_aws::config::Settings;
use spotcheck_aws::sdk::{custom_s3_endpoint, load_sdk_config, s3_client};
use spotcheck_aws::{
    invoke, Ec2Handler, Ec2InstanceTags, EventBridgeSink, HandlerConfig, S3Checkpoints, S3Ledger,
    SdkTrainingJobs, StdoutLog, ValidationOptions,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let settings = Settings::from_env(std::env::vars())?;
    let sdk = load_sdk_config().await;
    let s3 = s3_client(&sdk, custom_s3_endpoint(std::env::vars()));
    let handler = Ec2Handler {
        instances: Ec2InstanceTags::new(&sdk),
        jobs: SdkTrainingJobs::new(&sdk),
        checkpoints: S3Checkpoints::new(s3.clone()),
        ledger: S3Ledger::new(s3, settings.ledger_bucket, &settings.ledger_prefix),
        events: EventBridgeSink::new(&sdk),
        config: HandlerConfig {
            policy: settings.policy,
            // Savings are the SageMaker function's; the EC2 path prices nothing.
            prices: spotcheck_control::PriceTable::builtin(),
            validation: ValidationOptions::default(),
            checkpoint_scope: settings.checkpoint_scope,
        },
    };
    let handler = &handler;
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| async move {
        invoke(&event.payload, |bytes, now| async move {
            handler.handle(&bytes, now, &StdoutLog).await
        })
        .await
        .map_err(|f| Diagnostic {
            error_type: f.error_type,
            error_message: f.message,
        })
    }))
    .await
}
