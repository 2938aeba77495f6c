//! The Lambda runtime path: the real `sagemaker-events` function — its `main`, compiled from
//! `functions/sagemaker-events/src/main.rs` as this package's `replay-sagemaker-events`
//! binary — runs in the `lambda_runtime` loop against cargo-lambda's runtime API emulator
//! (`cargo lambda watch --only-lambda-apis`), and events are sent with
//! `cargo lambda invoke --data-file`, as `infra/README.md` describes for local runs.
//!
//! This exercises what the handler tests cannot: configuration from the environment at cold
//! start (`SPOTCHECK_LEDGER_*`, `AWS_ENDPOINT_URL_*`), the SDK setup of `load_sdk_config`, the
//! runtime's polling of `/runtime/invocation/next`, the response (`{"outcome": …}`), and the
//! error report with its `errorType` (`Transient`) when the handler fails — after which the
//! same process goes on serving. SageMaker is the local service behind a fault proxy; S3 and
//! EventBridge are LocalStack's.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use spotcheck_control::naming::relaunch_name;
use spotcheck_tests::emulators::{self, Emulators};
use spotcheck_tests::fixtures;
use spotcheck_tests::lambda::{Invoked, RuntimeApi};
use spotcheck_tests::local::{JobRequest, LocalSageMaker, Options};
use spotcheck_tests::proxy::{Fault, FaultProxy, FaultRule};

const FUNCTION: &str = env!("CARGO_BIN_EXE_replay-sagemaker-events");
const P3: &str = "ml.p3.2xlarge";

fn response(invoked: &Invoked, what: &str) -> Value {
    assert!(
        invoked.success,
        "{what}: cargo lambda invoke failed\nstdout: {}\nstderr: {}",
        invoked.stdout, invoked.stderr
    );
    serde_json::from_str(invoked.stdout.trim())
        .unwrap_or_else(|e| panic!("{what}: the response is not JSON ({e}): {}", invoked.stdout))
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("writing an event file");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sagemaker_events_binary_serves_invocations_through_the_lambda_runtime_api() {
    let e = Emulators::from_env();
    let s3 = emulators::s3(&e.s3).await;
    let bucket = emulators::bucket(&s3, "replay-ml").await;
    let ledger = emulators::bucket(&s3, "replay-ledger").await;
    let local = LocalSageMaker::start(
        &e.s3,
        Options {
            outages: vec![(P3.into(), 0.0, 1.0e7)],
            ..Options::default()
        },
    )
    .await;
    let sagemaker = FaultProxy::start(&local.endpoint()).await;
    let name = emulators::unique("lrt");
    local.create(&JobRequest::spot(&name, P3, &bucket).body());
    let stopped = local
        .event_for(
            &name,
            "Stopped",
            "MaxWaitTimeExceeded",
            Duration::from_secs(60),
        )
        .await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let stopped_file = write(dir.path(), "stopped.json", stopped.to_string().as_bytes());
    let malformed_file = write(
        dir.path(),
        "malformed.json",
        &fixtures::event("malformed-detail-not-an-object"),
    );

    let api = RuntimeApi::start().await;
    let env: Vec<(String, String)> = [
        ("SPOTCHECK_LEDGER_BUCKET", ledger.as_str()),
        ("SPOTCHECK_LEDGER_PREFIX", "spotcheck/"),
        ("AWS_ENDPOINT_URL_S3", e.s3.as_str()),
        ("AWS_ENDPOINT_URL_EVENTBRIDGE", e.eventbridge.as_str()),
        ("AWS_ENDPOINT_URL_SAGEMAKER", &sagemaker.endpoint()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let mut function =
        api.start_function(Path::new(FUNCTION), &env, &dir.path().join("function.log"));

    // A relaunch, then the same event again, then a malformed one: all answered.
    let first = response(&api.invoke(&stopped_file).await, "the Stopped event");
    assert_eq!(first["outcome"], "relaunched", "{first}");
    let mut jobs: Vec<String> = local.service.jobs().into_iter().map(|j| j.name).collect();
    jobs.sort();
    assert_eq!(jobs, vec![name.clone(), relaunch_name(&name, 2)]);
    let again = response(&api.invoke(&stopped_file).await, "the Stopped event again");
    assert_eq!(again["outcome"], "already_relaunched", "{again}");
    let malformed = response(&api.invoke(&malformed_file).await, "a malformed event");
    assert_eq!(malformed["outcome"], "malformed", "{malformed}");

    // SageMaker keeps failing: the SDK retries, the handler fails transiently, and the
    // runtime reports the error with its type; the process lives on for the next event.
    sagemaker.inject(FaultRule::operation(
        "ListTags",
        Fault::json_error(500, "InternalFailure"),
    ));
    let failed = api.invoke(&stopped_file).await;
    assert!(!failed.success, "the invocation fails: {failed:?}");
    let report = format!("{}{}", failed.stdout, failed.stderr);
    // cargo-lambda prints the runtime's error report: `Error: <errorType>`, then the
    // errorMessage.
    assert!(
        report.contains("Error: Transient") && report.contains("ListTags failed"),
        "the error report names its type and the failing call: {report}"
    );
    assert_eq!(
        sagemaker.count("ListTags"),
        3 + spotcheck_aws::sdk::MAX_ATTEMPTS as usize,
        "the two Stopped invocations (the second also reads the existing relaunch's tags after \
         ResourceInUse; the malformed event calls nothing), then the SDK's attempts"
    );
    sagemaker.clear();
    let recovered = response(&api.invoke(&stopped_file).await, "after the fault");
    assert_eq!(recovered["outcome"], "already_relaunched", "{recovered}");
    assert!(function.running(), "one process served every invocation");

    // Its log: one decision line per invocation, from the real main.
    let log = function.log_text();
    let outcomes: Vec<String> = log
        .lines()
        .filter_map(|l| l.find('{').map(|i| &l[i..]))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["spotcheck"] == "decision")
        .map(|l| l["outcome"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        outcomes,
        vec![
            "relaunched",
            "already_relaunched",
            "malformed",
            "failed",
            "already_relaunched"
        ],
        "{log}"
    );
}

/// A configuration error fails the cold start loudly, naming the variable, before any
/// invocation is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_ledger_bucket_fails_the_cold_start() {
    let _ = Emulators::from_env();
    let api = RuntimeApi::start().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let log = dir.path().join("function.log");
    let mut function = api.start_function(Path::new(FUNCTION), &[], &log);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = function.exited() {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the function kept running without SPOTCHECK_LEDGER_BUCKET: {}",
            function.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success(), "{status}");
    assert!(
        function.log_text().contains("SPOTCHECK_LEDGER_BUCKET"),
        "the cold-start error names the variable: {}",
        function.log_text()
    );
}
