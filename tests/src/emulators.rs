//! The emulators' endpoints and SDK configurations pointed at them.
//!
//! Owns reading the endpoints `scripts/emulators.sh env` exports (failing the test with a clear
//! message when one is missing or not answering: these tests never skip), building
//! [`SdkConfig`]s for one endpoint with the Lambdas' own retry and timeout settings
//! ([`spotcheck_aws::sdk::load_sdk_config`]), and unique resource names (the emulators keep
//! state between tests and runs).
//!
//! An `SdkConfig` here never carries the environment's per-service endpoint variables: the SDK
//! gives `AWS_ENDPOINT_URL_<SERVICE>` precedence over a config's `endpoint_url`, which would
//! silently bypass a fault proxy. The configuration is built field by field instead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::config::{Credentials, SharedAsyncSleep, SharedCredentialsProvider};

/// Region of every emulator call.
pub const REGION: &str = "us-east-1";

/// The account LocalStack and the local SageMaker service use with the `test` credentials.
pub const LOCAL_ACCOUNT: &str = "000000000000";

/// How to run these tests, for failure messages.
pub const HOW_TO_RUN: &str = "run the suite through scripts/test-all.sh (it starts the \
    emulators and exports their endpoints), or by hand: `bash scripts/emulators.sh start && \
    eval \"$(bash scripts/emulators.sh env)\" && cargo test -p spotcheck-tests`";

/// Where the emulators answer.
#[derive(Clone, Debug)]
pub struct Emulators {
    /// LocalStack's S3 (`AWS_ENDPOINT_URL_S3`).
    pub s3: String,
    /// LocalStack's EventBridge (`AWS_ENDPOINT_URL_EVENTBRIDGE`).
    pub eventbridge: String,
    /// LocalStack's SQS (`AWS_ENDPOINT_URL_SQS`).
    pub sqs: String,
    /// LocalStack's EC2 (`AWS_ENDPOINT_URL_EC2`): instances and their tags.
    pub ec2: String,
    /// moto server's SageMaker (`AWS_ENDPOINT_URL_SAGEMAKER`).
    pub moto: String,
}

fn required(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => v.trim().trim_end_matches('/').to_owned(),
        _ => panic!(
            "{var} is not set: this test needs the AWS emulators (LocalStack, moto server); \
             {HOW_TO_RUN}"
        ),
    }
}

/// `host:port` of an `http://host:port[/…]` endpoint.
pub fn authority(endpoint: &str) -> &str {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .unwrap_or(endpoint);
    rest.split('/').next().unwrap_or(rest)
}

fn check_listening(var: &str, endpoint: &str) {
    let addr = authority(endpoint);
    let up = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(3)).is_ok());
    assert!(
        up,
        "{var}={endpoint} does not answer: the emulators are not running; {HOW_TO_RUN}"
    );
}

impl Emulators {
    /// The endpoints from the environment; panics (fails the test) when one is missing or
    /// nothing listens there.
    pub fn from_env() -> Emulators {
        let e = Emulators {
            s3: required("AWS_ENDPOINT_URL_S3"),
            eventbridge: required("AWS_ENDPOINT_URL_EVENTBRIDGE"),
            sqs: required("AWS_ENDPOINT_URL_SQS"),
            ec2: required("AWS_ENDPOINT_URL_EC2"),
            moto: required("AWS_ENDPOINT_URL_SAGEMAKER"),
        };
        check_listening("AWS_ENDPOINT_URL_S3", &e.s3);
        check_listening("AWS_ENDPOINT_URL_EVENTBRIDGE", &e.eventbridge);
        check_listening("AWS_ENDPOINT_URL_SQS", &e.sqs);
        check_listening("AWS_ENDPOINT_URL_EC2", &e.ec2);
        check_listening("AWS_ENDPOINT_URL_SAGEMAKER", &e.moto);
        e
    }
}

/// Static `test`/`test` credentials (every emulator accepts them).
pub fn credentials() -> SharedCredentialsProvider {
    SharedCredentialsProvider::new(Credentials::new(
        "test",
        "test",
        None,
        None,
        "spotcheck-tests",
    ))
}

/// Retry and timeout settings of an [`SdkConfig`].
#[derive(Clone, Debug)]
pub struct Tuning {
    /// The retry configuration.
    pub retry: RetryConfig,
    /// The timeouts.
    pub timeouts: TimeoutConfig,
    /// The sleep implementation for backoff and timeouts (the loaded configuration's).
    pub sleep: Option<SharedAsyncSleep>,
}

impl Tuning {
    /// Exactly what the Lambdas use (`spotcheck_aws::sdk::load_sdk_config`): standard retries,
    /// 4 attempts, 3 s connect, 10 s per attempt, 40 s per operation.
    pub async fn lambda() -> Tuning {
        let base = spotcheck_aws::sdk::load_sdk_config().await;
        Tuning {
            retry: base
                .retry_config()
                .cloned()
                .expect("load_sdk_config sets a retry configuration"),
            timeouts: base
                .timeout_config()
                .cloned()
                .expect("load_sdk_config sets timeouts"),
            sleep: base.sleep_impl(),
        }
    }

    /// The Lambdas' settings with the backoff between attempts shortened to a few
    /// milliseconds: the same number of attempts and the same retry classification, so fault
    /// tests count the same requests without waiting seconds for jittered backoff.
    pub async fn lambda_fast_backoff() -> Tuning {
        let mut t = Tuning::lambda().await;
        t.retry = t
            .retry
            .with_initial_backoff(Duration::from_millis(5))
            .with_max_backoff(Duration::from_millis(20));
        t
    }

    /// Like [`Tuning::lambda_fast_backoff`] with the per-attempt and per-operation timeouts
    /// scaled down (for hung connections: the Lambda's 10 s / 40 s become `attempt` /
    /// 4 × `attempt`, the same ratio).
    pub async fn short_timeouts(attempt: Duration) -> Tuning {
        let mut t = Tuning::lambda_fast_backoff().await;
        t.timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(attempt)
            .operation_timeout(attempt * 4 + Duration::from_millis(500))
            .build();
        t
    }
}

/// An [`SdkConfig`] sending every service's calls to `endpoint`, with `tuning`.
pub fn sdk_config(endpoint: &str, tuning: &Tuning) -> SdkConfig {
    let mut b = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(credentials())
        .endpoint_url(endpoint)
        .retry_config(tuning.retry.clone())
        .timeout_config(tuning.timeouts.clone());
    b.set_sleep_impl(tuning.sleep.clone());
    b.build()
}

/// Path-style S3 client for `endpoint` with the Lambdas' settings.
pub async fn s3(endpoint: &str) -> aws_sdk_s3::Client {
    spotcheck_aws::sdk::s3_client(&sdk_config(endpoint, &Tuning::lambda().await), true)
}

/// EventBridge client for `endpoint`.
pub async fn eventbridge(endpoint: &str) -> aws_sdk_eventbridge::Client {
    aws_sdk_eventbridge::Client::new(&sdk_config(endpoint, &Tuning::lambda().await))
}

/// SageMaker client for `endpoint`.
pub async fn sagemaker(endpoint: &str) -> aws_sdk_sagemaker::Client {
    aws_sdk_sagemaker::Client::new(&sdk_config(endpoint, &Tuning::lambda().await))
}

/// A name unique to this process and call: `<prefix>-<10 hex digits>`, lower case, valid for
/// buckets, queues, rules and training jobs.
pub fn unique(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{prefix}-{:010x}", h.finish() & 0xff_ffff_ffff)
}

/// Creates a bucket (in LocalStack) and returns its name.
pub async fn bucket(s3: &aws_sdk_s3::Client, prefix: &str) -> String {
    let name = unique(prefix);
    s3.create_bucket()
        .bucket(&name)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "CreateBucket {name}: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            )
        });
    name
}

/// Every key under `prefix` with its body (sorted by key).
pub async fn objects(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> Vec<(String, Vec<u8>)> {
    let listed = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "ListObjectsV2 s3://{bucket}/{prefix}: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            )
        });
    let mut out = Vec::new();
    for o in listed.contents() {
        let key = o.key().unwrap_or_default().to_owned();
        let body = s3
            .get_object()
            .bucket(bucket)
            .key(&key)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "GetObject {key}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                )
            })
            .body
            .collect()
            .await
            .expect("object body")
            .into_bytes()
            .to_vec();
        out.push((key, body));
    }
    out.sort();
    out
}
