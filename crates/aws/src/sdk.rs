//! Building SDK clients: one [`aws_config::SdkConfig`] per process, loaded at cold start.
//!
//! Owns the retry and timeout settings every adapter shares ([`load_sdk_config`]) and the S3
//! client's path-style switch for emulators ([`s3_client`]). Endpoint overrides come from the
//! standard variables, which the SDK honours by itself: `AWS_ENDPOINT_URL` for every service,
//! or `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL_SAGEMAKER`, `AWS_ENDPOINT_URL_EVENTBRIDGE`,
//! `AWS_ENDPOINT_URL_EC2` per service.
//!
//! Emulator-backed tests build every adapter from an `SdkConfig` of their own, e.g.
//!
//! ```no_run
//! # async fn f() {
//! use aws_config::{BehaviorVersion, Region};
//! let config = aws_config::defaults(BehaviorVersion::latest())
//!     .region(Region::new("us-east-1"))
//!     .endpoint_url("http://127.0.0.1:4566")
//!     .load()
//!     .await;
//! let s3 = spotcheck_aws::sdk::s3_client(&config, true);
//! let store = spotcheck_aws::S3Checkpoints::new(s3.clone());
//! let ledger = spotcheck_aws::S3Ledger::new(s3, "ledger", "spotcheck/");
//! let events = spotcheck_aws::EventBridgeSink::new(&config);
//! let jobs = spotcheck_aws::SdkTrainingJobs::new(&config);
//! # }
//! ```

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;

/// Attempts per call, first included (the SDK's standard mode: exponential backoff with
/// jitter, throttling and 5xx and connection errors retried).
pub const MAX_ATTEMPTS: u32 = 4;

/// Loads the process-wide configuration from the environment (region, credentials, endpoint
/// overrides) with spotcheck's retry and timeout settings. The timeouts keep one hung call from
/// eating the function's 120 s budget: 10 s per attempt, 40 s per operation with retries.
pub async fn load_sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(10))
                .operation_timeout(Duration::from_secs(40))
                .build(),
        )
        .load()
        .await
}

/// Whether the environment points S3 at a custom endpoint (an emulator).
pub fn custom_s3_endpoint<I, K, V>(vars: I) -> bool
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    vars.into_iter().any(|(k, v)| {
        matches!(k.as_ref(), "AWS_ENDPOINT_URL" | "AWS_ENDPOINT_URL_S3") && !v.as_ref().is_empty()
    })
}

/// An S3 client from `config`; `force_path_style` for emulators (a `localhost` endpoint would
/// otherwise be addressed as `bucket.localhost`).
pub fn s3_client(config: &aws_config::SdkConfig, force_path_style: bool) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::from(config)
        .force_path_style(force_path_style)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}
