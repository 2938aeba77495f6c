//! The `sagemaker-events` Lambda: "SageMaker Training Job State Change" → validate checkpoints,
//! relaunch, record savings, publish spotcheck events.
//!
//! Only wiring: configuration and clients are built once at cold start, then each event's
//! bytes go to [`SageMakerHandler::handle`] (crates/aws). `Err` is returned only for the
//! handler's errors (transient failures and refusals, see `docs/lambdas.md`), so Lambda retries
//! them and finally dead-letters them; everything else is acknowledged.

use std::time::{SystemTime, UNIX_EPOCH};

use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use serde_json::{json, Value};
use spotcheck_aws::config::{load_prices, Settings};
use spotcheck_aws::sdk::{custom_s3_endpoint, load_sdk_config, s3_client};
use spotcheck_aws::{
    EventBridgeSink, HandlerConfig, HandlerError, S3Checkpoints, S3Ledger, SageMakerHandler,
    SdkTrainingJobs, StdoutLog, ValidationOptions,
};
use spotcheck_control::Timestamp;

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
        },
    };
    let handler = &handler;
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| async move {
        let bytes = serde_json::to_vec(&event.payload).map_err(|e| diagnostic("Encode", &e))?;
        match handler.handle(&bytes, now()?, &StdoutLog).await {
            Ok(handled) => Ok(json!({ "outcome": handled.outcome })),
            Err(e) => Err(error_diagnostic(&e)),
        }
    }))
    .await
}

/// The invocation's decision time.
fn now() -> Result<Timestamp, Diagnostic> {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| diagnostic("Clock", &e))?
        .as_millis();
    let ms = i64::try_from(ms).map_err(|e| diagnostic("Clock", &e))?;
    Timestamp::from_epoch_ms(ms).map_err(|e| diagnostic("Clock", &e))
}

fn diagnostic(error_type: &str, error: &dyn std::fmt::Display) -> Diagnostic {
    Diagnostic {
        error_type: error_type.to_owned(),
        error_message: error.to_string(),
    }
}

/// `Transient` (Lambda's retries may help), `Refused` or `InvalidTemplate` (fix, then redrive
/// from the DLQ), see [`HandlerError::error_type`].
fn error_diagnostic(error: &HandlerError) -> Diagnostic {
    diagnostic(error.error_type(), error)
}
