//! Reliability under faults: a fault-injecting proxy between the handler and the emulators
//! (one in front of the local SageMaker service, one in front of LocalStack's S3 and
//! EventBridge) answers chosen requests with throttling (`400 ThrottlingException`,
//! `503 SlowDown`), 5xx, a lost response (the request carried out, the answer replaced by a
//! 500) or no answer at all, and counts every request.
//!
//! What must hold (docs/lambdas.md, "Retries and idempotency"):
//!
//! - the SDK retries transient failures itself: `MAX_ATTEMPTS` attempts per call, counted at
//!   the proxy;
//! - a failure that outlasts those retries makes the handler return a transient `Err`, which
//!   Lambda retries (`MaximumRetryAttempts` of the template's `EventInvokeConfig`) and then
//!   dead-letters; a redrive once the fault has cleared completes the work;
//! - nothing is ever done twice: one relaunched job, one ledger record, whatever was retried,
//!   lost or redelivered.
//!
//! The handler uses the Lambdas' retry configuration with the backoff between attempts cut to
//! milliseconds (same attempts, same classification), and for hangs the per-attempt and
//! per-operation timeouts scaled down in the same 1:4 ratio, so the suite stays fast.

use std::time::{Duration, Instant};

use serde_json::Value;
use spotcheck_aws::sdk::MAX_ATTEMPTS;
use spotcheck_aws::{HandlerError, Outcome};
use spotcheck_control::naming::relaunch_name;
use spotcheck_tests::emulators::{self, Emulators, Tuning};
use spotcheck_tests::local::{JobRequest, LocalSageMaker, Options};
use spotcheck_tests::proxy::{Fault, FaultProxy, FaultRule};
use spotcheck_tests::template::TEMPLATE;

use crate::handlers::{handler, seed_checkpoints, Lines, SdkHandler};

const P3: &str = "ml.p3.2xlarge";
const G5: &str = "ml.g5.2xlarge";

/// Attempts per SDK call, as an index count.
const ATTEMPTS: usize = MAX_ATTEMPTS as usize;

struct Rig {
    s3: aws_sdk_s3::Client,
    ledger: String,
    local: LocalSageMaker,
    /// In front of the local SageMaker service.
    sagemaker: FaultProxy,
    /// In front of LocalStack (S3 and EventBridge).
    localstack: FaultProxy,
    handler: SdkHandler,
    lines: Lines,
    prefix: String,
    bucket: String,
}

impl Rig {
    async fn start(tuning: Tuning) -> Rig {
        let e = Emulators::from_env();
        let s3 = emulators::s3(&e.s3).await;
        let bucket = emulators::bucket(&s3, "replay-ml").await;
        let ledger = emulators::bucket(&s3, "replay-ledger").await;
        // ml.p3.2xlarge spot capacity never comes; ml.g5.2xlarge is always there.
        let local = LocalSageMaker::start(
            &e.s3,
            Options {
                outages: vec![(P3.into(), 0.0, 1.0e7)],
                ..Options::default()
            },
        )
        .await;
        let sagemaker = FaultProxy::start(&local.endpoint()).await;
        let localstack = FaultProxy::start(&e.s3).await;
        let handler = handler(
            &sagemaker.endpoint(),
            &localstack.endpoint(),
            &localstack.endpoint(),
            &ledger,
            &tuning,
        );
        Rig {
            s3,
            ledger,
            local,
            sagemaker,
            localstack,
            handler,
            lines: Lines::default(),
            prefix: emulators::unique("flt"),
            bucket,
        }
    }

    /// A spot job whose capacity never arrives, with checkpoints: its
    /// Stopped/MaxWaitTimeExceeded event (a relaunch is due).
    async fn stopped_job(&self) -> (String, Vec<u8>) {
        let name = format!("{}-wait", self.prefix);
        let ckpt = format!("{name}/checkpoints");
        seed_checkpoints(&self.s3, &self.bucket, &ckpt, &[50]).await;
        let mut request = JobRequest::spot(&name, P3, &self.bucket);
        request.checkpoint_uri = Some(format!("s3://{}/{ckpt}", self.bucket));
        self.local.create(&request.body());
        let event = self
            .local
            .event_for(
                &name,
                "Stopped",
                "MaxWaitTimeExceeded",
                Duration::from_secs(60),
            )
            .await;
        (name, serde_json::to_vec(&event).expect("JSON"))
    }

    /// A spot job that completes: its Completed event (a savings record is due).
    async fn completed_job(&self) -> (String, Vec<u8>) {
        let name = format!("{}-done", self.prefix);
        self.local
            .create(&JobRequest::spot(&name, G5, &self.bucket).body());
        let event = self
            .local
            .event_for(&name, "Completed", "Completed", Duration::from_secs(60))
            .await;
        (name, serde_json::to_vec(&event).expect("JSON"))
    }

    async fn handle(&self, event: &[u8]) -> Result<spotcheck_aws::Handled, HandlerError> {
        self.handler
            .handle(event, self.local.now(), &self.lines)
            .await
    }

    /// Jobs of this test whose name starts with `name`.
    fn jobs_named(&self, name: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .local
            .service
            .jobs()
            .into_iter()
            .map(|j| j.name)
            .filter(|n| n.starts_with(name))
            .collect();
        v.sort();
        v
    }

    async fn ledger_keys(&self) -> Vec<String> {
        emulators::objects(&self.s3, &self.ledger, "")
            .await
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }
}

fn transient(result: Result<spotcheck_aws::Handled, HandlerError>, what: &str) -> HandlerError {
    match result {
        Err(e) if e.is_transient() => e,
        other => panic!("{what}: expected a transient error, got {other:?}"),
    }
}

/// Lambda's own retries of a failed asynchronous invocation, from the template.
fn lambda_retries() -> usize {
    let doc: serde_yaml::Value = serde_yaml::from_str(TEMPLATE).expect("template YAML");
    doc["Globals"]["Function"]["EventInvokeConfig"]["MaximumRetryAttempts"]
        .as_u64()
        .expect("Globals.Function.EventInvokeConfig.MaximumRetryAttempts") as usize
}

/// Transient faults on every kind of call, fewer than the SDK's attempts: the SDK absorbs
/// them all and the relaunch happens once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_5xx_are_retried_by_the_sdk_and_the_relaunch_happens_once() {
    let rig = Rig::start(Tuning::lambda_fast_backoff().await).await;
    let (name, event) = rig.stopped_job().await;
    let r2 = relaunch_name(&name, 2);
    rig.sagemaker.inject(
        FaultRule::operation("ListTags", Fault::json_error(400, "ThrottlingException")).times(2),
    );
    rig.sagemaker.inject(
        FaultRule::operation(
            "DescribeTrainingJob",
            Fault::json_error(500, "InternalFailure"),
        )
        .times(1),
    );
    rig.sagemaker.inject(
        FaultRule::operation(
            "CreateTrainingJob",
            Fault::json_error(503, "ServiceUnavailable"),
        )
        .times(ATTEMPTS - 1),
    );
    rig.localstack
        .inject(FaultRule::operation("ListObjectsV2", Fault::s3_error(503, "SlowDown")).times(1));
    rig.localstack
        .inject(FaultRule::operation("GetObject", Fault::s3_error(500, "InternalError")).times(2));
    rig.localstack
        .inject(FaultRule::operation("HeadObject", Fault::s3_error(503, "SlowDown")).times(3));
    rig.localstack.inject(
        FaultRule::operation("PutEvents", Fault::json_error(400, "ThrottlingException")).times(1),
    );

    let out = rig
        .handle(&event)
        .await
        .expect("the SDK's retries absorb the faults");
    assert_eq!(out.outcome, Outcome::Relaunched, "{:?}", out.effects);
    let files = 2; // seed_checkpoints writes two data files per checkpoint
    for (proxy, op, faulted) in [
        (&rig.sagemaker, "ListTags", 2),
        (&rig.sagemaker, "DescribeTrainingJob", 1),
        (&rig.sagemaker, "CreateTrainingJob", ATTEMPTS - 1),
        (&rig.localstack, "ListObjectsV2", 1),
        (&rig.localstack, "GetObject", 2),
        (&rig.localstack, "HeadObject", 3),
        (&rig.localstack, "PutEvents", 1),
    ] {
        assert_eq!(
            proxy.forwarded(op),
            if op == "HeadObject" { files } else { 1 },
            "{op} reached the emulator"
        );
        assert_eq!(
            proxy.count(op),
            proxy.forwarded(op) + faulted,
            "{op}: every fault was retried"
        );
    }
    assert_eq!(
        rig.jobs_named(&name),
        vec![name.clone(), r2],
        "one relaunch"
    );
}

/// Throttling that outlasts the SDK's attempts: a transient error on every Lambda attempt
/// (first invocation and Lambda's retries), nothing created; the redrive after the fault clears
/// relaunches once, a second redrive finds it done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_throttling_fails_transiently_until_the_dlq_and_the_redrive_relaunches_once() {
    let rig = Rig::start(Tuning::lambda_fast_backoff().await).await;
    let (name, event) = rig.stopped_job().await;
    let r2 = relaunch_name(&name, 2);
    rig.sagemaker.inject(FaultRule::operation(
        "CreateTrainingJob",
        Fault::json_error(400, "ThrottlingException"),
    ));
    let deliveries = 1 + lambda_retries();
    for delivery in 1..=deliveries {
        let err = transient(rig.handle(&event).await, &format!("delivery {delivery}"));
        assert!(err.to_string().contains("CreateTrainingJob"), "{err}");
    }
    assert_eq!(
        rig.sagemaker.count("CreateTrainingJob"),
        deliveries * ATTEMPTS,
        "each delivery: {ATTEMPTS} attempts"
    );
    assert_eq!(rig.sagemaker.forwarded("CreateTrainingJob"), 0);
    assert_eq!(
        rig.jobs_named(&name),
        vec![name.clone()],
        "nothing created while failing"
    );
    let failed_lines: Vec<Value> = rig
        .lines
        .all()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["outcome"] == "failed")
        .collect();
    assert_eq!(
        failed_lines.len(),
        deliveries,
        "one decision line per failed delivery"
    );
    assert!(
        failed_lines.iter().all(|l| l["retryable"] == true),
        "{failed_lines:?}"
    );

    // The event now sits in the DLQ (its body is the event). The fault clears; redrive.
    rig.sagemaker.clear();
    let out = rig.handle(&event).await.expect("redrive");
    assert_eq!(out.outcome, Outcome::Relaunched);
    let out = rig.handle(&event).await.expect("second redrive");
    assert_eq!(out.outcome, Outcome::AlreadyRelaunched);
    assert_eq!(rig.jobs_named(&name), vec![name.clone(), r2]);
    assert_eq!(
        rig.sagemaker.forwarded("CreateTrainingJob"),
        2,
        "created, then ResourceInUse"
    );
}

/// The worst case for retries: CreateTrainingJob reaches SageMaker, but its answer is lost.
/// The SDK retries, SageMaker answers ResourceInUse, the handler counts it done: one job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_create_response_is_retried_into_resource_in_use_never_a_second_job() {
    let rig = Rig::start(Tuning::lambda_fast_backoff().await).await;
    let (name, event) = rig.stopped_job().await;
    let r2 = relaunch_name(&name, 2);
    rig.sagemaker
        .inject(FaultRule::operation("CreateTrainingJob", Fault::ForwardThenFail(500)).times(1));
    let out = rig.handle(&event).await.expect("handled");
    assert_eq!(out.outcome, Outcome::AlreadyRelaunched, "{:?}", out.effects);
    assert_eq!(rig.sagemaker.count("CreateTrainingJob"), 2);
    assert_eq!(
        rig.jobs_named(&name),
        vec![name.clone(), r2],
        "exactly one relaunch"
    );
}

/// A ledger write that keeps failing (503 SlowDown): transient error, no record; the redrive
/// writes it once (and prints its metric once); another redrive finds it present. A lost
/// PutObject response is retried into 412 from its own write: exactly one record, still
/// counted as new (its metric printed once), and a redelivery finds it present.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_writes_survive_slowdown_and_lost_responses_with_one_record() {
    let rig = Rig::start(Tuning::lambda_fast_backoff().await).await;
    let (name, event) = rig.completed_job().await;
    let key = format!("spotcheck/savings/jobs/{name}.json");
    rig.localstack.inject(FaultRule::operation(
        "PutObject",
        Fault::s3_error(503, "SlowDown"),
    ));
    transient(rig.handle(&event).await, "PutObject failing");
    assert_eq!(rig.localstack.count("PutObject"), ATTEMPTS);
    assert_eq!(rig.localstack.forwarded("PutObject"), 0);
    assert!(
        rig.ledger_keys().await.is_empty(),
        "no record while failing"
    );
    assert_eq!(
        rig.localstack.count("PutEvents"),
        0,
        "nothing announced before the record"
    );

    rig.localstack.clear();
    let out = rig.handle(&event).await.expect("redrive");
    assert_eq!(out.outcome, Outcome::Recorded);
    assert!(
        out.effects
            .iter()
            .any(|e| e == &format!("ledger savings/jobs/{name}.json: new")),
        "{:?}",
        out.effects
    );
    assert_eq!(rig.lines.emf(), 1, "the savings metric, once");
    let out = rig.handle(&event).await.expect("second redrive");
    assert!(
        out.effects.iter().any(|e| e.ends_with("already present")),
        "{:?}",
        out.effects
    );
    assert_eq!(rig.lines.emf(), 1, "not counted twice");
    assert_eq!(rig.ledger_keys().await, vec![key.clone()]);

    // A second job: its record's PutObject is carried out but the answer is lost.
    let other = format!("{}-lost", rig.prefix);
    rig.local
        .create(&JobRequest::spot(&other, G5, &rig.bucket).body());
    let event = rig
        .local
        .event_for(&other, "Completed", "Completed", Duration::from_secs(60))
        .await;
    rig.localstack.reset_seen();
    rig.localstack
        .inject(FaultRule::operation("PutObject", Fault::ForwardThenFail(500)).times(1));
    let out = rig
        .handle(&serde_json::to_vec(&event).expect("JSON"))
        .await
        .expect("the retry meets 412 from its own write");
    assert_eq!(out.outcome, Outcome::Recorded, "{:?}", out.effects);
    assert_eq!(
        rig.localstack.count("PutObject"),
        2,
        "the write and its retry"
    );
    assert_eq!(
        rig.localstack.count("HeadObject"),
        1,
        "the 412 checked once"
    );
    assert!(
        out.effects
            .iter()
            .any(|e| e == &format!("ledger savings/jobs/{other}.json: new")),
        "the write id in its metadata shows the record is this write's: {:?}",
        out.effects
    );
    assert_eq!(rig.lines.emf(), 2, "its metric is printed, once");
    let out = rig
        .handle(&serde_json::to_vec(&event).expect("JSON"))
        .await
        .expect("redelivery");
    assert!(
        out.effects.iter().any(|e| e.ends_with("already present")),
        "another invocation's write id: {:?}",
        out.effects
    );
    assert_eq!(rig.lines.emf(), 2, "not counted twice");
    let mut keys = vec![key, format!("spotcheck/savings/jobs/{other}.json")];
    keys.sort();
    assert_eq!(rig.ledger_keys().await, keys, "one record each");
}

/// A hung call (no answer at all) is cut by the per-attempt timeout and retried, then the
/// handler fails transiently within the operation timeout; once the hang clears, the redrive
/// relaunches. With the Lambdas' own settings (10 s × 4 attempts within 40 s) a hung call ends
/// well inside the function's timeout from the template.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_call_times_out_per_attempt_is_retried_then_fails_transiently() {
    let lambda = Tuning::lambda().await;
    assert_eq!(lambda.retry.max_attempts(), MAX_ATTEMPTS);
    let attempt = lambda
        .timeouts
        .operation_attempt_timeout()
        .expect("an attempt timeout");
    let operation = lambda
        .timeouts
        .operation_timeout()
        .expect("an operation timeout");
    assert!(
        attempt * MAX_ATTEMPTS <= operation,
        "{attempt:?} × {MAX_ATTEMPTS} fit in {operation:?}"
    );
    let doc: serde_yaml::Value = serde_yaml::from_str(TEMPLATE).expect("template YAML");
    let function_timeout = doc["Globals"]["Function"]["Timeout"]
        .as_u64()
        .expect("Timeout");
    assert!(
        operation.as_secs() * 2 < function_timeout,
        "a hung call cannot eat the function's {function_timeout} s"
    );

    let attempt = Duration::from_millis(400);
    let rig = Rig::start(Tuning::short_timeouts(attempt).await).await;
    let (name, event) = rig.stopped_job().await;
    rig.localstack
        .inject(FaultRule::operation("ListObjectsV2", Fault::Hang));
    let started = Instant::now();
    let err = transient(rig.handle(&event).await, "ListObjectsV2 hanging");
    let took = started.elapsed();
    assert!(err.to_string().contains("ListObjectsV2"), "{err}");
    assert_eq!(
        rig.localstack.count("ListObjectsV2"),
        ATTEMPTS,
        "every attempt was cut and retried"
    );
    assert!(
        took >= attempt * (ATTEMPTS as u32) && took < attempt * 4 + Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(rig.jobs_named(&name), vec![name.clone()]);

    rig.localstack.clear();
    let out = rig.handle(&event).await.expect("redrive");
    assert_eq!(out.outcome, Outcome::Relaunched);
}

/// The relaunch happened but PutEvents keeps failing: the invocation fails transiently (the
/// announcement must not be lost), and the redrive announces it without relaunching again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_announcement_is_retried_without_relaunching_twice() {
    let rig = Rig::start(Tuning::lambda_fast_backoff().await).await;
    let (name, event) = rig.stopped_job().await;
    let r2 = relaunch_name(&name, 2);
    rig.localstack.inject(FaultRule::operation(
        "PutEvents",
        Fault::json_error(500, "InternalException"),
    ));
    transient(rig.handle(&event).await, "PutEvents failing");
    assert_eq!(rig.localstack.count("PutEvents"), ATTEMPTS);
    assert_eq!(
        rig.jobs_named(&name),
        vec![name.clone(), r2.clone()],
        "the relaunch was done"
    );
    rig.localstack.clear();
    let out = rig.handle(&event).await.expect("redrive");
    assert_eq!(out.outcome, Outcome::AlreadyRelaunched);
    assert!(
        out.effects
            .iter()
            .any(|e| e == "published Training Job Relaunched"),
        "{:?}",
        out.effects
    );
    assert_eq!(rig.localstack.forwarded("PutEvents"), 1);
    assert_eq!(rig.jobs_named(&name), vec![name, r2]);
}
