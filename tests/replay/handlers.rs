//! `SageMakerHandler` — the code the `sagemaker-events` Lambda runs — with its SDK clients
//! pointed at emulators, on job lifecycles the emulators really went through.
//!
//! Which emulator serves which assertion:
//!
//! - **Local SageMaker service** (`spotcheck-local`, SageMaker's JSON protocol on loopback):
//!   the jobs themselves. moto cannot serve them: it completes every job at once, accepts
//!   duplicate names and reports no `TrainingTimeInSeconds`/`BillableTimeInSeconds`. The local
//!   service runs each job's state machine with a spot market given as a trace of outages:
//!   Interrupted, Stopped/MaxWaitTimeExceeded (after training, or with capacity never
//!   arriving), Stopped/Stopped, Failed, Completed with billable seconds, `ResourceInUse` on a
//!   duplicate name. The relaunched jobs' configuration and tags are read back from it.
//! - **LocalStack S3**: the checkpoints (uploaded beforehand with CRC-64/NVME, then synced by
//!   the service like SageMaker does), the models, and the ledger (conditional writes).
//! - **LocalStack EventBridge + SQS**: in the lineage test, each state-change event is put on a
//!   bus whose rule is the template's sagemaker-events pattern and reaches the handler only
//!   through that rule's SQS target (TestEventPattern says which events to wait for); and
//!   spotcheck's own events (PutEvents on the default bus) are read from an SQS tap.
//! - **moto server**: the tag gate and DescribeTrainingJob against a second SageMaker
//!   implementation, and a record of what moto lacks.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_eventbridge::primitives::{DateTime, DateTimeFormat};
use serde_json::{json, Value};
use spotcheck_aws::{
    EventBridgeSink, HandlerConfig, LogSink, Outcome, S3Checkpoints, S3Ledger, SageMakerHandler,
    SdkTrainingJobs,
};
use spotcheck_control::naming::relaunch_name;
use spotcheck_control::Policy;
use spotcheck_tests::checkpoints::{upload_tree, write_checkpoint};
use spotcheck_tests::emulators::{self, sdk_config, Emulators, Tuning, LOCAL_ACCOUNT};
use spotcheck_tests::local::{JobRequest, LocalSageMaker, Options};
use spotcheck_tests::proxy::FaultProxy;
use spotcheck_tests::sqs::{Sqs, Tap};
use spotcheck_tests::template::{self, SAGEMAKER_FUNCTION};

const P3: &str = "ml.p3.2xlarge";
const G5: &str = "ml.g5.2xlarge";
const LEDGER_PREFIX: &str = "spotcheck/";

/// A job without `spotcheck:enabled=true` is acknowledged as ignored (`not_opted_in` since the
/// outcome names why; `ignored` before).
fn not_opted_in(outcome: Outcome) -> bool {
    matches!(outcome, Outcome::NotOptedIn | Outcome::Ignored)
}

/// The handler's log lines (decision lines and EMF lines), kept.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    pub fn all(&self) -> Vec<String> {
        self.0.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// CloudWatch EMF lines (savings metrics).
    pub fn emf(&self) -> usize {
        self.all().iter().filter(|l| l.contains("\"_aws\"")).count()
    }
}

impl LogSink for Lines {
    fn line(&self, line: &str) {
        if let Ok(mut l) = self.0.lock() {
            l.push(line.to_owned());
        }
    }
}

pub type SdkHandler = SageMakerHandler<SdkTrainingJobs, S3Checkpoints, S3Ledger, EventBridgeSink>;

/// The handler with SageMaker at `sagemaker`, S3 at `s3`, EventBridge at `eventbridge`.
pub fn handler(
    sagemaker: &str,
    s3: &str,
    eventbridge: &str,
    ledger_bucket: &str,
    tuning: &Tuning,
) -> SdkHandler {
    let s3_client = spotcheck_aws::sdk::s3_client(&sdk_config(s3, tuning), true);
    SageMakerHandler {
        jobs: SdkTrainingJobs::new(&sdk_config(sagemaker, tuning)),
        checkpoints: S3Checkpoints::new(s3_client.clone()),
        ledger: S3Ledger::new(s3_client, ledger_bucket, LEDGER_PREFIX),
        events: EventBridgeSink::new(&sdk_config(eventbridge, tuning)),
        config: HandlerConfig::new(Policy::default()),
    }
}

/// Uploads valid checkpoints at `steps` under `s3://bucket/prefix/algo-1/`.
pub async fn seed_checkpoints(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str, steps: &[u64]) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for step in steps {
        write_checkpoint(dir.path(), "algo-1", *step);
    }
    upload_tree(s3, dir.path(), bucket, prefix).await;
}

/// An SQS tap on the default bus for spotcheck's own events about jobs named `prefix…`.
pub async fn spotcheck_tap(eb: &aws_sdk_eventbridge::Client, sqs: &Sqs, prefix: &str) -> Tap {
    Tap::create(
        eb,
        sqs,
        "default",
        &emulators::unique("tap-spotcheck"),
        &json!({"source": ["spotcheck"], "detail": {"$or": [
            {"job_name": [{"prefix": prefix}]}, {"name": [{"prefix": prefix}]}]}}),
    )
    .await
}

/// (detail-type, job_name or name) of spotcheck events.
pub fn announced(messages: &[Value]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = messages
        .iter()
        .map(|m| {
            let d = &m["detail"];
            let name = d["job_name"]
                .as_str()
                .or(d["name"].as_str())
                .unwrap_or_default();
            (
                m["detail-type"].as_str().unwrap_or_default().to_owned(),
                name.to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

/// The path a SageMaker state-change event takes to the function: PutEvents onto a bus whose
/// rule is the template's sagemaker-events pattern, targeting an SQS queue in place of the
/// function.
struct Delivery {
    eb: aws_sdk_eventbridge::Client,
    sqs: Sqs,
    bus: String,
    pattern: Value,
    tap: Tap,
    /// Messages received while waiting for another one.
    early: Vec<Value>,
}

impl Delivery {
    async fn start(e: &Emulators) -> Delivery {
        let eb = emulators::eventbridge(&e.eventbridge).await;
        let sqs = Sqs::new(&e.sqs);
        let bus = emulators::unique("spotcheck-replay");
        eb.create_event_bus()
            .name(&bus)
            .send()
            .await
            .expect("CreateEventBus");
        let pattern = template::rule_for(LOCAL_ACCOUNT, SAGEMAKER_FUNCTION).pattern;
        let tap = Tap::create(
            &eb,
            &sqs,
            &bus,
            &emulators::unique("fn-sagemaker-events"),
            &pattern,
        )
        .await;
        Delivery {
            eb,
            sqs,
            bus,
            pattern,
            tap,
            early: Vec::new(),
        }
    }

    /// Puts `event` on the bus; when the rule routes it, waits for it at the function's queue
    /// and returns the delivered bytes.
    async fn deliver(&mut self, event: &Value) -> Option<Vec<u8>> {
        let mut entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
            .event_bus_name(&self.bus)
            .source(event["source"].as_str().unwrap_or_default())
            .detail_type(event["detail-type"].as_str().unwrap_or_default())
            .detail(event["detail"].to_string());
        for r in event["resources"].as_array().into_iter().flatten() {
            entry = entry.resources(r.as_str().unwrap_or_default());
        }
        if let Some(t) = event["time"]
            .as_str()
            .and_then(|t| DateTime::from_str(t, DateTimeFormat::DateTime).ok())
        {
            entry = entry.time(t);
        }
        let put = self
            .eb
            .put_events()
            .entries(entry.build())
            .send()
            .await
            .expect("PutEvents");
        let id = put.entries()[0]
            .event_id()
            .unwrap_or_else(|| panic!("PutEvents refused {event}: {put:?}"))
            .to_owned();
        let routed = self
            .eb
            .test_event_pattern()
            .event_pattern(self.pattern.to_string())
            .event(event.to_string())
            .send()
            .await
            .expect("TestEventPattern")
            .result();
        if !routed {
            return None;
        }
        let has = |ms: &[Value]| ms.iter().any(|m| m["id"] == id.as_str());
        if !has(&self.early) {
            let got = self
                .sqs
                .collect_until(&self.tap.queue, Duration::from_secs(20), has)
                .await;
            self.early.extend(got);
        }
        let at = self
            .early
            .iter()
            .position(|m| m["id"] == id.as_str())
            .unwrap_or_else(|| {
                panic!(
                    "the template's rule routes {event} but nothing reached its target within 20 s"
                )
            });
        let m = self.early.remove(at);
        Some(serde_json::to_vec(&m).expect("JSON"))
    }

    async fn remove(&self) {
        self.tap.remove(&self.eb, &self.sqs).await;
        let _ = self.eb.delete_event_bus().name(&self.bus).send().await;
    }
}

pub fn tags_of(
    described: &aws_sdk_sagemaker::operation::list_tags::ListTagsOutput,
) -> BTreeMap<String, String> {
    described
        .tags()
        .iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_owned(),
                t.value().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The "spot loss, then capacity, then success" walk-through of the decision engine, for real:
///
/// 1. `<root>` (spot, ml.p3.2xlarge, ladder p3 → g5, checkpoints at steps 100 and 200) trains
///    until p3 spot capacity goes (a trace outage at 400 simulated seconds: 4 s of wall time,
///    ample for it to reach Training) → InProgress/Interrupted: the interruption is recorded.
///    Capacity stays away → Stopped/MaxWaitTimeExceeded after training → relaunch
///    `<root>-r2-…` on the same type, spot, from step 200.
/// 2. `-r2-` never gets p3 capacity → Stopped/MaxWaitTimeExceeded without training → relaunch
///    `-r3-…` one rung down the ladder, on ml.g5.2xlarge.
/// 3. `-r3-` completes → savings for it and for the lineage (three attempts, summed).
///
/// Every event travels SageMaker → EventBridge (the template's rule) → SQS → handler. Then
/// every delivered event is replayed (and the Stopped one once more in another shape): no job,
/// ledger record or metric line is created twice; the events are announced again (at least
/// once, as documented).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_lineage_is_relaunched_recorded_and_replayed_without_duplicates() {
    let e = Emulators::from_env();
    let s3 = emulators::s3(&e.s3).await;
    let bucket = emulators::bucket(&s3, "replay-ml").await;
    let ledger = emulators::bucket(&s3, "replay-ledger").await;
    let root = emulators::unique("lin");
    let checkpoint_uri = format!("s3://{bucket}/{root}/checkpoints");
    seed_checkpoints(&s3, &bucket, &format!("{root}/checkpoints"), &[100, 200]).await;

    let local = LocalSageMaker::start(
        &e.s3,
        Options {
            time_scale: 100.0,
            outages: vec![(P3.into(), 400.0, 1.0e7)],
            tracked_events: true,
            // The interrupted parent stays InProgress/Interrupted for 4 s of wall time: its
            // event is handled (through EventBridge and SQS) while it is still current.
            grace_seconds: 400.0,
            warned_reclaims: true,
        },
    )
    .await;
    let lines = Lines::default();
    let h = handler(
        &local.endpoint(),
        &e.s3,
        &e.eventbridge,
        &ledger,
        &Tuning::lambda().await,
    );
    let eb = emulators::eventbridge(&e.eventbridge).await;
    let sqs = Sqs::new(&e.sqs);
    let announcements = spotcheck_tap(&eb, &sqs, &root).await;
    let mut delivery = Delivery::start(&e).await;

    let mut request = JobRequest::spot(&root, P3, &bucket);
    request.checkpoint_uri = Some(checkpoint_uri.clone());
    request.complete_on = G5.into();
    request.tags = vec![
        ("team".into(), "vision".into()),
        ("spotcheck:instance-ladder".into(), format!("{P3},{G5}")),
    ];
    local.create(&request.body());
    let r2 = relaunch_name(&root, 2);
    let r3 = relaunch_name(&root, 3);

    // The bus: every state change, in order, through EventBridge to the handler.
    let mut handled: Vec<(String, Vec<u8>, Outcome)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = local.next_event(left).await.unwrap_or_else(|| {
            panic!(
                "the lineage did not finish in time; jobs: {}; handled: {:?}",
                local.summary(),
                handled.iter().map(|h| (&h.0, h.2)).collect::<Vec<_>>()
            )
        });
        let d = &event["detail"];
        let label = format!(
            "{} {}/{}",
            d["TrainingJobName"].as_str().unwrap_or_default(),
            d["TrainingJobStatus"].as_str().unwrap_or_default(),
            d["SecondaryStatus"].as_str().unwrap_or_default()
        );
        if let Some(bytes) = delivery.deliver(&event).await {
            let out = h
                .handle(&bytes, local.now(), &lines)
                .await
                .unwrap_or_else(|err| panic!("{label}: {err}"));
            handled.push((label.clone(), bytes, out.outcome));
        }
        local.ack();
        if label == format!("{r3} Completed/Completed") {
            break;
        }
    }
    let got: Vec<(String, Outcome)> = handled.iter().map(|(l, _, o)| (l.clone(), *o)).collect();
    assert_eq!(
        got,
        vec![
            (format!("{root} InProgress/Interrupted"), Outcome::Recorded),
            (
                format!("{root} Stopped/MaxWaitTimeExceeded"),
                Outcome::Relaunched
            ),
            (
                format!("{r2} Stopped/MaxWaitTimeExceeded"),
                Outcome::Relaunched
            ),
            (format!("{r3} Completed/Completed"), Outcome::Recorded),
        ],
        "the events the template routes, and what the handler made of them"
    );

    // The relaunches, as the SageMaker service has them.
    let sm = emulators::sagemaker(&local.endpoint()).await;
    let mut names: Vec<String> = local.service.jobs().into_iter().map(|j| j.name).collect();
    names.sort();
    let mut expected_names = vec![root.clone(), r2.clone(), r3.clone()];
    expected_names.sort();
    assert_eq!(
        names, expected_names,
        "exactly the parent and two relaunches exist"
    );
    for (name, instance_type, parent, attempt) in [(&r2, P3, &root, "2"), (&r3, G5, &r2, "3")] {
        let job = sm
            .describe_training_job()
            .training_job_name(name)
            .send()
            .await
            .expect("Describe");
        let rc = job.resource_config().expect("ResourceConfig");
        assert_eq!(
            rc.instance_type().map(|t| t.as_str()),
            Some(instance_type),
            "{name}"
        );
        assert_eq!(rc.instance_count(), Some(1));
        assert_eq!(
            job.enable_managed_spot_training(),
            Some(true),
            "{name} stays on spot"
        );
        assert_eq!(
            job.checkpoint_config().and_then(|c| c.s3_uri()),
            Some(checkpoint_uri.as_str()),
            "{name} resumes from the parent's checkpoint prefix"
        );
        let sc = job.stopping_condition().expect("StoppingCondition");
        assert_eq!(sc.max_runtime_in_seconds(), Some(3600));
        assert_eq!(sc.max_wait_time_in_seconds(), Some(7200));
        assert_eq!(
            job.role_arn(),
            Some("arn:aws:iam::000000000000:role/SageMakerTrainingRole")
        );
        assert_eq!(
            job.algorithm_specification()
                .and_then(|a| a.training_image()),
            Some("123456789012.dkr.ecr.us-east-1.amazonaws.com/spotcheck-trainer:replay")
        );
        assert_eq!(
            job.output_data_config().and_then(|o| o.s3_output_path()),
            Some(format!("s3://{bucket}/models").as_str())
        );
        assert_eq!(
            job.hyper_parameters()
                .and_then(|h| h.get("epochs"))
                .map(String::as_str),
            Some("3")
        );
        let tags = tags_of(
            &sm.list_tags()
                .resource_arn(job.training_job_arn().unwrap_or_default())
                .send()
                .await
                .expect("ListTags"),
        );
        for (k, v) in [
            ("spotcheck:enabled", "true"),
            ("team", "vision"),
            ("spotcheck:instance-ladder", &format!("{P3},{G5}")),
            ("spotcheck:root", &root),
            ("spotcheck:parent", parent),
            ("spotcheck:attempt", attempt),
            ("spotcheck:resume-step", "200"),
            ("spotcheck:interruptions", "1"),
        ] {
            assert_eq!(
                tags.get(k).map(String::as_str),
                Some(v),
                "{name} tag {k}: {tags:?}"
            );
        }
    }

    // The ledger.
    let records = emulators::objects(&s3, &ledger, LEDGER_PREFIX).await;
    let keys: Vec<&str> = records.iter().map(|(k, _)| k.as_str()).collect();
    let mut expected_keys = vec![
        format!("{LEDGER_PREFIX}interruptions/jobs/{root}/1.json"),
        format!("{LEDGER_PREFIX}savings/jobs/{r3}.json"),
        format!("{LEDGER_PREFIX}savings/lineages/{root}.json"),
    ];
    expected_keys.sort();
    assert_eq!(keys, expected_keys, "ledger records");
    let record = |suffix: &str| -> Value {
        let (_, body) = records
            .iter()
            .find(|(k, _)| k.ends_with(suffix))
            .expect("record");
        serde_json::from_slice(body).expect("a JSON record")
    };
    let job = record(&format!("savings/jobs/{r3}.json"));
    assert_eq!(job["job_name"], r3.as_str());
    assert_eq!(job["instance_type"], G5);
    let (training, billable) = (
        job["training_seconds"].as_u64().unwrap_or(0),
        job["billable_seconds"].as_u64().unwrap_or(0),
    );
    assert!(
        training > 0 && billable > 0 && billable < training,
        "spot billing from the service: {job}"
    );
    let lineage = record(&format!("savings/lineages/{root}.json"));
    assert_eq!(lineage["root"], root.as_str());
    assert_eq!(lineage["jobs"], json!([root, r2, r3]), "{lineage}");
    assert_eq!(lineage["skipped"], json!([]), "{lineage}");
    let (lt, lb) = (
        lineage["training_seconds"].as_u64().unwrap_or(0),
        lineage["billable_seconds"].as_u64().unwrap_or(0),
    );
    assert!(
        lt > training && lb > billable && lb < lt,
        "the lineage sums its attempts: {lineage}"
    );
    let interruption = record(&format!("interruptions/jobs/{root}/1.json"));
    assert_eq!(interruption["kind"], "job_interruption", "{interruption}");

    // spotcheck's own events, through EventBridge to the tap.
    let expected_announcements = {
        let mut v = vec![
            ("Spot Savings Recorded".to_owned(), r3.clone()),
            ("Spot Savings Recorded".to_owned(), root.clone()),
            ("Training Job Relaunched".to_owned(), r2.clone()),
            ("Training Job Relaunched".to_owned(), r3.clone()),
        ];
        v.sort();
        v
    };
    let mut messages = sqs
        .collect_until(&announcements.queue, Duration::from_secs(30), |m| {
            m.len() >= expected_announcements.len()
        })
        .await;
    assert_eq!(announced(&messages), expected_announcements);
    let relaunched = messages
        .iter()
        .find(|m| m["detail"]["job_name"] == r3.as_str())
        .expect("r3 announced");
    assert_eq!(relaunched["detail"]["instance_type"], G5);
    assert_eq!(relaunched["detail"]["previous_job"], r2.as_str());
    assert_eq!(relaunched["detail"]["from_checkpoint"], 200);

    // Replay everything that was delivered, plus the parent's Stopped event in the schema
    // registry's shape (Tags as a list, times as epoch-ms strings): nothing happens twice.
    let emf_before = lines.emf();
    let mut replay: Vec<(String, Vec<u8>)> = handled
        .iter()
        .map(|(l, b, _)| (l.clone(), b.clone()))
        .collect();
    let mut reshaped: Value = serde_json::from_slice(&handled[1].1).expect("JSON");
    let tags = reshaped["detail"]["Tags"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    reshaped["detail"]["Tags"] = tags
        .iter()
        .map(|(k, v)| json!({"Key": k, "Value": v}))
        .collect();
    for k in [
        "CreationTime",
        "LastModifiedTime",
        "TrainingStartTime",
        "TrainingEndTime",
    ] {
        if let Some(n) = reshaped["detail"][k].as_i64() {
            reshaped["detail"][k] = json!(n.to_string());
        }
    }
    reshaped["id"] = json!("5d1c3f7a-0000-4000-8000-replayreshape");
    replay.push((
        format!("{root} Stopped/MaxWaitTimeExceeded (reshaped)"),
        serde_json::to_vec(&reshaped).expect("JSON"),
    ));
    let mut again = Vec::new();
    for (label, bytes) in &replay {
        let out = h
            .handle(bytes, local.now(), &lines)
            .await
            .unwrap_or_else(|err| panic!("replaying {label}: {err}"));
        if out.outcome == Outcome::Recorded {
            assert!(
                out.effects
                    .iter()
                    .filter(|e| e.starts_with("ledger "))
                    .all(|e| e.ends_with("already present")),
                "{label}: {:?}",
                out.effects
            );
        }
        again.push((label.clone(), out.outcome));
    }
    assert_eq!(
        again,
        vec![
            // Describe now says Stopped: the late Interrupted event is stale.
            (format!("{root} InProgress/Interrupted"), Outcome::Ignored),
            (
                format!("{root} Stopped/MaxWaitTimeExceeded"),
                Outcome::AlreadyRelaunched
            ),
            (
                format!("{r2} Stopped/MaxWaitTimeExceeded"),
                Outcome::AlreadyRelaunched
            ),
            (format!("{r3} Completed/Completed"), Outcome::Recorded),
            (
                format!("{root} Stopped/MaxWaitTimeExceeded (reshaped)"),
                Outcome::AlreadyRelaunched
            ),
        ]
    );
    let mut names_after: Vec<String> = local.service.jobs().into_iter().map(|j| j.name).collect();
    names_after.sort();
    assert_eq!(names_after, expected_names, "no job created on replay");
    assert_eq!(
        emulators::objects(&s3, &ledger, LEDGER_PREFIX).await,
        records,
        "the ledger is unchanged"
    );
    assert_eq!(lines.emf(), emf_before, "no savings metric counted twice");
    // At least once: the relaunch and savings announcements are published again.
    let mut expected_twice = expected_announcements.clone();
    expected_twice.extend(expected_announcements.iter().cloned());
    expected_twice.extend([("Training Job Relaunched".to_owned(), r2.clone())]);
    expected_twice.sort();
    messages.extend(
        sqs.collect_until(&announcements.queue, Duration::from_secs(30), |m| {
            m.len() > expected_announcements.len()
        })
        .await,
    );
    assert_eq!(announced(&messages), expected_twice);

    delivery.remove().await;
    announcements.remove(&eb, &sqs).await;
}

/// A user's stop is recorded and never relaunched; an algorithm error with no user-error
/// retries gives up (recorded and announced); a job that did not opt in is ignored without
/// DescribeTrainingJob. SageMaker is the local service behind a pass-through proxy that
/// counts the handler's calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_stops_and_user_errors_are_recorded_never_relaunched() {
    let e = Emulators::from_env();
    let s3 = emulators::s3(&e.s3).await;
    let bucket = emulators::bucket(&s3, "replay-ml").await;
    let ledger = emulators::bucket(&s3, "replay-ledger").await;
    let prefix = emulators::unique("usr");
    let local = LocalSageMaker::start(&e.s3, Options::default()).await;
    let counted = FaultProxy::start(&local.endpoint()).await;
    let lines = Lines::default();
    let h = handler(
        &counted.endpoint(),
        &e.s3,
        &e.eventbridge,
        &ledger,
        &Tuning::lambda().await,
    );
    let eb = emulators::eventbridge(&e.eventbridge).await;
    let sqs = Sqs::new(&e.sqs);
    let announcements = spotcheck_tap(&eb, &sqs, &prefix).await;
    let sm = emulators::sagemaker(&local.endpoint()).await;

    // Stopped/Stopped: StopTrainingJob on a training on-demand job.
    let stopped = format!("{prefix}-stopped");
    let mut request = JobRequest::spot(&stopped, G5, &bucket);
    request.spot = false;
    request.complete_on = "none".into();
    request.checkpoint_uri = Some(format!("s3://{bucket}/{stopped}/checkpoints"));
    seed_checkpoints(&s3, &bucket, &format!("{stopped}/checkpoints"), &[10]).await;
    local.create(&request.body());
    local
        .event_for(&stopped, "InProgress", "Training", Duration::from_secs(30))
        .await;
    sm.stop_training_job()
        .training_job_name(&stopped)
        .send()
        .await
        .expect("StopTrainingJob");
    let event = local
        .event_for(&stopped, "Stopped", "Stopped", Duration::from_secs(60))
        .await;
    let out = h
        .handle(
            &serde_json::to_vec(&event).expect("JSON"),
            local.now(),
            &lines,
        )
        .await
        .expect("handled");
    assert_eq!(out.outcome, Outcome::Recorded, "{:?}", out.effects);

    // Failed/Failed with an algorithm error: give up (retries_on_user_error is 0).
    let failed = format!("{prefix}-failed");
    let mut request = JobRequest::spot(&failed, G5, &bucket);
    request.exit_with = Some(3);
    local.create(&request.body());
    let event = local
        .event_for(&failed, "Failed", "Failed", Duration::from_secs(60))
        .await;
    assert!(
        event["detail"]["FailureReason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("AlgorithmError:"),
        "{event}"
    );
    let out = h
        .handle(
            &serde_json::to_vec(&event).expect("JSON"),
            local.now(),
            &lines,
        )
        .await
        .expect("handled");
    assert_eq!(out.outcome, Outcome::GaveUp, "{:?}", out.effects);

    // Not opted in: Completed, ignored after ListTags alone.
    let other = format!("{prefix}-other");
    let mut request = JobRequest::spot(&other, G5, &bucket);
    request.opted_in = false;
    local.create(&request.body());
    let event = local
        .event_for(&other, "Completed", "Completed", Duration::from_secs(60))
        .await;
    counted.reset_seen();
    let out = h
        .handle(
            &serde_json::to_vec(&event).expect("JSON"),
            local.now(),
            &lines,
        )
        .await
        .expect("handled");
    assert!(not_opted_in(out.outcome), "{:?}", out.outcome);
    assert_eq!(counted.count("ListTags"), 1);
    assert_eq!(
        counted.count("DescribeTrainingJob"),
        0,
        "a job that did not opt in is not described"
    );
    assert_eq!(counted.count("CreateTrainingJob"), 0);

    let mut names: Vec<String> = local.service.jobs().into_iter().map(|j| j.name).collect();
    names.sort();
    assert_eq!(
        names,
        vec![failed.clone(), other.clone(), stopped.clone()],
        "nothing relaunched"
    );
    let keys: Vec<String> = emulators::objects(&s3, &ledger, LEDGER_PREFIX)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        keys,
        vec![
            format!("{LEDGER_PREFIX}give-ups/{failed}/{failed}.json"),
            format!("{LEDGER_PREFIX}stops/jobs/{stopped}.json"),
        ]
    );
    let messages = sqs
        .collect_until(&announcements.queue, Duration::from_secs(30), |m| {
            !m.is_empty()
        })
        .await;
    assert_eq!(
        announced(&messages),
        vec![("Recovery Gave Up".to_owned(), failed.clone())]
    );
    assert_eq!(
        messages[0]["detail"]["cause"], "user_error",
        "{}",
        messages[0]
    );
    announcements.remove(&eb, &sqs).await;
}

/// moto's SageMaker serves the tag gate (ListTags) and DescribeTrainingJob over HTTP, but not
/// what recovery needs: its jobs complete at once without billable seconds, and it accepts a
/// duplicate name. This pins those gaps (moto 5.2.5): the assertions that need them are made
/// against the local service instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_serves_tags_and_describe_but_not_billing_or_duplicate_names() {
    let e = Emulators::from_env();
    let s3 = emulators::s3(&e.s3).await;
    let bucket = emulators::bucket(&s3, "replay-ml").await;
    let ledger = emulators::bucket(&s3, "replay-ledger").await;
    let sm = emulators::sagemaker(&e.moto).await;
    let name = emulators::unique("moto");
    let untagged = format!("{name}-untagged");
    let create = |job: &str, opted_in: bool| {
        let mut r = JobRequest::spot(job, G5, &bucket);
        r.opted_in = opted_in;
        r.checkpoint_uri = Some(format!("s3://{bucket}/{job}/checkpoints"));
        r.body()
    };
    let arn_of = |body: Value| {
        let sm = sm.clone();
        async move {
            let b = &body;
            let tags: Vec<aws_sdk_sagemaker::types::Tag> = b["Tags"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    aws_sdk_sagemaker::types::Tag::builder()
                        .key(t["Key"].as_str().unwrap_or_default())
                        .value(t["Value"].as_str().unwrap_or_default())
                        .build()
                })
                .collect();
            sm.create_training_job()
                .training_job_name(b["TrainingJobName"].as_str().unwrap_or_default())
                .algorithm_specification(
                    aws_sdk_sagemaker::types::AlgorithmSpecification::builder()
                        .training_image(
                            b["AlgorithmSpecification"]["TrainingImage"]
                                .as_str()
                                .unwrap_or_default(),
                        )
                        .training_input_mode(aws_sdk_sagemaker::types::TrainingInputMode::File)
                        .build(),
                )
                .role_arn(b["RoleArn"].as_str().unwrap_or_default())
                .output_data_config(
                    aws_sdk_sagemaker::types::OutputDataConfig::builder()
                        .s3_output_path(
                            b["OutputDataConfig"]["S3OutputPath"]
                                .as_str()
                                .unwrap_or_default(),
                        )
                        .build(),
                )
                .resource_config(
                    aws_sdk_sagemaker::types::ResourceConfig::builder()
                        .instance_type(aws_sdk_sagemaker::types::TrainingInstanceType::MlG52Xlarge)
                        .instance_count(1)
                        .volume_size_in_gb(30)
                        .build(),
                )
                .stopping_condition(
                    aws_sdk_sagemaker::types::StoppingCondition::builder()
                        .max_runtime_in_seconds(3600)
                        .max_wait_time_in_seconds(7200)
                        .build(),
                )
                .enable_managed_spot_training(true)
                .checkpoint_config(
                    aws_sdk_sagemaker::types::CheckpointConfig::builder()
                        .s3_uri(b["CheckpointConfig"]["S3Uri"].as_str().unwrap_or_default())
                        .build(),
                )
                .set_tags(Some(tags))
                .send()
                .await
        }
    };
    let arn = arn_of(create(&name, true))
        .await
        .expect("moto CreateTrainingJob")
        .training_job_arn()
        .unwrap_or_default()
        .to_owned();
    let untagged_arn = arn_of(create(&untagged, false))
        .await
        .expect("moto CreateTrainingJob")
        .training_job_arn()
        .unwrap_or_default()
        .to_owned();

    let described = sm
        .describe_training_job()
        .training_job_name(&name)
        .send()
        .await
        .expect("Describe");
    assert_eq!(
        described.training_job_status().map(|s| s.as_str()),
        Some("Completed"),
        "moto completes jobs at once"
    );
    assert_eq!(
        described.billable_time_in_seconds(),
        None,
        "moto reports no billable seconds"
    );

    let event = |job: &str, arn: &str, tags: Value| {
        json!({
            "version": "0", "id": emulators::unique("ev"), "detail-type": "SageMaker Training Job State Change",
            "source": "aws.sagemaker", "account": "123456789012", "time": "2025-03-02T10:11:12Z",
            "region": "us-east-1", "resources": [arn],
            "detail": {"TrainingJobName": job, "TrainingJobArn": arn, "TrainingJobStatus": "Completed",
                       "SecondaryStatus": "Completed", "Tags": tags}
        })
    };
    let lines = Lines::default();
    let h = handler(
        &e.moto,
        &e.s3,
        &e.eventbridge,
        &ledger,
        &Tuning::lambda().await,
    );
    let out = h
        .handle(
            &serde_json::to_vec(&event(&name, &arn, json!({}))).expect("JSON"),
            spotcheck_control::Timestamp::from_epoch_ms(1_740_910_000_000).expect("time"),
            &lines,
        )
        .await
        .expect("handled");
    assert_eq!(
        out.outcome,
        Outcome::NothingRecorded,
        "opted in via ListTags (the event had no tags), described, but no billable seconds to record: {:?}",
        out.effects
    );
    let out = h
        .handle(
            &serde_json::to_vec(&event(&untagged, &untagged_arn, json!({}))).expect("JSON"),
            spotcheck_control::Timestamp::from_epoch_ms(1_740_910_000_000).expect("time"),
            &lines,
        )
        .await
        .expect("handled");
    assert!(not_opted_in(out.outcome), "not opted in: {:?}", out.outcome);
    assert!(
        emulators::objects(&s3, &ledger, LEDGER_PREFIX)
            .await
            .is_empty(),
        "nothing recorded"
    );

    // Real SageMaker answers ResourceInUse here; moto accepts (and overwrites).
    let duplicate = arn_of(create(&name, true)).await;
    assert!(
        duplicate.is_ok(),
        "moto accepts a duplicate training-job name: {duplicate:?}"
    );
}
