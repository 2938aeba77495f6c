//! The `ec2-spot-events` Lambda: EC2 spot interruption warnings and rebalance recommendations →
//! map the instance to its run, validate checkpoints, record, continue the run as a SageMaker
//! managed-spot job when it names a request template, publish spotcheck events.
//!
//! Only wiring: configuration and clients are built once at cold start, then each event's
//! bytes go to [`Ec2Handler::handle`] (crates/aws). `Err` is returned only for the
//! handler's errors (transient failures, refusals, unusable templates, see `docs/lambdas.md`),
//! so Lambda retries them and finally dead-letters them; everything else is acknowledged.

use std::time::{SystemTime, UNIX_EPOCH};

use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use serde_json::{json, Value};
use spotcheck_aws::config::Settings;
use spotcheck_aws::sdk::{custom_s3_endpoint, load_sdk_config, s3_client};
use spotcheck_aws::{
    Ec2Handler, Ec2InstanceTags, EventBridgeSink, HandlerConfig, HandlerError, S3Checkpoints,
    S3Ledger, SdkTrainingJobs, StdoutLog, ValidationOptions,
};
use spotcheck_control::Timestamp;

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
