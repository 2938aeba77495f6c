//! The `sagemaker-events` Lambda: "SageMaker Training Job State Change" → validate checkpoints,
//! relaunch, record savings, publish spotcheck events.
//!
//! Only wiring: configuration and clients are built once at cold start, then each event's payload
//! goes to [`SageMakerHandler`] through `spotcheck_aws::invoke` (crates/aws). `Err` is returned only
//! for the handler's errors (transient failures and refusals, see `docs/lambdas.md`), so Lambda
//! retries them and finally dead-letters them; everything else is acknowledged.

use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use serde_json::Value;
use spotcheck_aws::config::{load_prices, Settings};
use spotcheck_aws::sdk::{custom_s3_endpoint, load_sdk_config, s3_client};
use spotcheck_aws::{
    invoke, EventBridgeSink, HandlerConfig, S3Checkpoints, S3Ledger, SageMakerHandler,
    SdkTrainingJobs, StdoutLog, ValidationOptions,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let settings = Settings::from_env(std::env::vars())?;
    let sdk = load_sdk_config().await;
    let s3 = s3_client(&sdk, custom_s3_endpoint(std::env::vars()));
    let checkpoints = S3Checkpoints::new(s3.clone());
    let prices = load_prices(&checkpoints, settings.price_table_uri.as_deref()).await?;
    let handler = SageMakerHandler {
        jobs: SdkTrainingJobs::new(&sdk),
        checkpoints,
        ledger: S3Ledger::new(s3, settings.ledger_bucket, &settings.ledger_prefix),
        events: EventBridgeSink::new(&sdk),
        config: HandlerConfig {
            policy: settings.policy,
            prices,
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
