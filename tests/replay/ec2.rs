//! `Ec2Handler` — the code the `ec2-spot-events` Lambda runs — with every SDK client pointed at
//! an emulator, for runs on instances the emulator really launched.
//!
//! Which emulator serves which assertion:
//!
//! - **LocalStack EC2**: the instances, launched with the run's tags (`spotcheck:run`,
//!   `spotcheck:checkpoint-uri`, `spotcheck:continue-on`, policy tags); the handler maps an
//!   instance to its run through DescribeTags, as in AWS.
//! - **LocalStack S3**: the run's checkpoints (written by the protocol's writer, uploaded with
//!   CRC-64/NVME), the continuation's request template, and the ledger.
//! - **Local SageMaker service**: the continuation job (CreateTrainingJob, `ResourceInUse` on
//!   the duplicate), read back with DescribeTrainingJob and ListTags.
//! - **LocalStack EventBridge + SQS**: the warnings are routed by the template's ec2-spot-events
//!   rule (TestEventPattern), and spotcheck's own events are read from an SQS tap.

use std::time::Duration;

use serde_json::Value;
use spotcheck_aws::{Ec2Handler, Ec2InstanceTags};
use spotcheck_aws::{
    EventBridgeSink, HandlerConfig, Outcome, S3Checkpoints, S3Ledger, SdkTrainingJobs,
};
use spotcheck_control::ec2::CheckpointScope;
use spotcheck_control::naming::continuation_name;
use spotcheck_control::Policy;
use spotcheck_tests::emulators::{self, sdk_config, Emulators, Tuning, LOCAL_ACCOUNT};
use spotcheck_tests::fixtures;
use spotcheck_tests::local::{JobRequest, LocalSageMaker, Options};
use spotcheck_tests::sqs::Sqs;
use spotcheck_tests::template::{self, EC2_FUNCTION};

use crate::handlers::{announced, seed_checkpoints, spotcheck_tap, tags_of, Lines};

const G5: &str = "ml.g5.2xlarge";
const LEDGER_PREFIX: &str = "spotcheck/";

type SdkEc2Handler =
    Ec2Handler<Ec2InstanceTags, SdkTrainingJobs, S3Checkpoints, S3Ledger, EventBridgeSink>;

/// An EC2 client for LocalStack.
async fn ec2(endpoint: &str) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(&sdk_config(endpoint, &Tuning::lambda().await))
}

/// Launches one instance (any image LocalStack offers) with `tags`; returns its id.
async fn launch(ec2: &aws_sdk_ec2::Client, tags: &[(&str, &str)]) -> String {
    use aws_sdk_ec2::types::{InstanceType, ResourceType, Tag, TagSpecification};
    let image = ec2
        .describe_images()
        .send()
        .await
        .expect("DescribeImages")
        .images()
        .first()
        .and_then(|i| i.image_id())
        .expect("LocalStack offers an image")
        .to_owned();
    let mut run = ec2
        .run_instances()
        .image_id(image)
        .instance_type(InstanceType::G5Xlarge)
        .min_count(1)
        .max_count(1);
    if !tags.is_empty() {
        let mut spec = TagSpecification::builder().resource_type(ResourceType::Instance);
        for (k, v) in tags {
            spec = spec.tags(Tag::builder().key(*k).value(*v).build());
        }
        run = run.tag_specifications(spec.build());
    }
    run.send()
        .await
        .expect("RunInstances")
        .instances()
        .first()
        .and_then(|i| i.instance_id())
        .expect("an instance id")
        .to_owned()
}

/// The fixture `stem` about `instance_id`, with a fresh event id.
fn event_for(stem: &str, instance_id: &str) -> Value {
    let mut event: Value = serde_json::from_slice(&fixtures::event(stem)).expect("fixture JSON");
    event["id"] = Value::from(emulators::unique("evt"));
    event["account"] = Value::from(LOCAL_ACCOUNT);
    event["detail"]["instance-id"] = Value::from(instance_id);
    event["resources"] = serde_json::json!([format!(
        "arn:aws:ec2:us-east-1:{LOCAL_ACCOUNT}:instance/{instance_id}"
    )]);
    event
}

/// Whether the template's ec2-spot-events rule routes `event` (LocalStack's TestEventPattern).
async fn routed(eb: &aws_sdk_eventbridge::Client, event: &Value) -> bool {
    let pattern = template::rule_for(LOCAL_ACCOUNT, EC2_FUNCTION).pattern;
    eb.test_event_pattern()
        .event_pattern(pattern.to_string())
        .event(event.to_string())
        .send()
        .await
        .expect("TestEventPattern")
        .result()
}

/// Hands `event` to the handler at the service's simulated now.
async fn handle(
    h: &SdkEc2Handler,
    local: &LocalSageMaker,
    lines: &Lines,
    event: &Value,
) -> spotcheck_aws::Handled {
    let bytes = serde_json::to_vec(event).expect("JSON");
    h.handle(&bytes, local.now(), lines).await.expect("handled")
}

/// A reclaimed instance of a run that names a request template is continued as exactly one
/// SageMaker managed-spot job from the run's newest valid checkpoint; the warning is recorded,
/// the continuation announced; a redelivered warning, and the warning for the run's second
/// instance, create nothing more (`ResourceInUse` from the service, then the existing job's
/// `spotcheck:run`/`generation` checked); a rebalance recommendation is only recorded; an
/// untagged instance is left alone; a run whose policy says give up without a checkpoint (it
/// has none) is given up, not continued; and a run whose checkpoint URI lies outside the
/// stack's checkpoint location is refused without a read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reclaimed_instance_is_continued_once_as_a_managed_spot_job() {
    let e = Emulators::from_env();
    let tuning = Tuning::lambda().await;
    let s3 = emulators::s3(&e.s3).await;
    let ec2 = ec2(&e.ec2).await;
    let eb = emulators::eventbridge(&e.eventbridge).await;
    let sqs = Sqs::new(&e.sqs);
    let bucket = emulators::bucket(&s3, "replay-ec2").await;
    let ledger = emulators::bucket(&s3, "replay-ledger").await;
    let run = emulators::unique("ec2run");
    let checkpoint_uri = format!("s3://{bucket}/{run}/checkpoints");
    seed_checkpoints(&s3, &bucket, &format!("{run}/checkpoints"), &[100, 200]).await;
    let template_key = format!("{run}/continue.json");
    let template_uri = format!("s3://{bucket}/{template_key}");
    let template = JobRequest::spot(&run, G5, &bucket).body();
    s3.put_object()
        .bucket(&bucket)
        .key(&template_key)
        .body(serde_json::to_vec(&template).expect("JSON").into())
        .send()
        .await
        .expect("PutObject template");

    let local = LocalSageMaker::start(&e.s3, Options::default()).await;
    let sm = emulators::sagemaker(&local.endpoint()).await;
    let s3_client = spotcheck_aws::sdk::s3_client(&sdk_config(&e.s3, &tuning), true);
    let h: SdkEc2Handler = Ec2Handler {
        instances: Ec2InstanceTags::new(&sdk_config(&e.ec2, &tuning)),
        jobs: SdkTrainingJobs::new(&sdk_config(&local.endpoint(), &tuning)),
        checkpoints: S3Checkpoints::new(s3_client.clone()),
        ledger: S3Ledger::new(s3_client, &ledger, LEDGER_PREFIX),
        events: EventBridgeSink::new(&sdk_config(&e.eventbridge, &tuning)),
        config: HandlerConfig {
            checkpoint_scope: Some(CheckpointScope {
                bucket: bucket.clone(),
                prefix: String::new(),
            }),
            ..HandlerConfig::new(Policy::default())
        },
    };
    let announcements = spotcheck_tap(&eb, &sqs, &run).await;
    let lines = Lines::default();

    let instance = launch(
        &ec2,
        &[
            ("spotcheck:run", run.as_str()),
            ("spotcheck:checkpoint-uri", checkpoint_uri.as_str()),
            ("spotcheck:continue-on", template_uri.as_str()),
            ("Name", "trainer"),
        ],
    )
    .await;
    let name = continuation_name(&run, 1);

    // The warning: routed to the function, recorded, continued.
    let warning = event_for("ec2-spot-interruption-terminate", &instance);
    assert!(routed(&eb, &warning).await, "the template's rule routes it");
    let handled = handle(&h, &local, &lines, &warning).await;
    assert_eq!(
        handled.outcome,
        Outcome::Relaunched,
        "{:?}",
        handled.effects
    );
    let validation = handled
        .checkpoints
        .expect("the run's checkpoints validated");
    assert_eq!(validation.summary.latest_valid_step, Some(200));

    let job = sm
        .describe_training_job()
        .training_job_name(&name)
        .send()
        .await
        .expect("the continuation exists in the SageMaker service");
    assert_eq!(job.enable_managed_spot_training(), Some(true));
    assert_eq!(
        job.checkpoint_config().and_then(|c| c.s3_uri()),
        Some(checkpoint_uri.as_str()),
        "it resumes from the run's own checkpoints"
    );
    assert_eq!(
        job.resource_config()
            .and_then(|r| r.instance_type())
            .map(|t| t.as_str()),
        Some(G5),
        "the template's resources"
    );
    let arn = job.training_job_arn().expect("an ARN").to_owned();
    let tags = tags_of(
        &sm.list_tags()
            .resource_arn(&arn)
            .send()
            .await
            .expect("ListTags"),
    );
    assert_eq!(
        tags.get("spotcheck:enabled").map(String::as_str),
        Some("true")
    );
    assert_eq!(tags.get("spotcheck:run"), Some(&run));
    assert_eq!(
        tags.get("spotcheck:generation").map(String::as_str),
        Some("1")
    );
    assert_eq!(tags.get("spotcheck:parent"), Some(&instance));
    assert_eq!(
        tags.get("spotcheck:resume-step").map(String::as_str),
        Some("200")
    );

    let record_prefix = format!("{LEDGER_PREFIX}interruptions/runs/{run}/{instance}/");
    let records = emulators::objects(&s3, &ledger, &record_prefix).await;
    assert_eq!(records.len(), 1, "one interruption record");
    let record: Value = serde_json::from_slice(&records[0].1).expect("record JSON");
    assert_eq!(record["kind"], "spot_interruption_warning");
    assert_eq!(record["latest_valid_step"], 200);

    // Redelivered: the same name is asked for, nothing new is created or recorded.
    let again = handle(&h, &local, &lines, &warning).await;
    assert_eq!(
        again.outcome,
        Outcome::AlreadyRelaunched,
        "{:?}",
        again.effects
    );
    let listed = sm
        .list_training_jobs()
        .name_contains(&run)
        .send()
        .await
        .expect("ListTrainingJobs");
    assert_eq!(listed.training_job_summaries().len(), 1, "one continuation");
    assert_eq!(
        emulators::objects(&s3, &ledger, &record_prefix).await.len(),
        1
    );

    // The run's second instance, reclaimed with the first: the same continuation.
    let sibling = launch(
        &ec2,
        &[
            ("spotcheck:run", run.as_str()),
            ("spotcheck:checkpoint-uri", checkpoint_uri.as_str()),
            ("spotcheck:continue-on", template_uri.as_str()),
        ],
    )
    .await;
    let second = handle(
        &h,
        &local,
        &lines,
        &event_for("ec2-spot-interruption-terminate", &sibling),
    )
    .await;
    assert_eq!(
        second.outcome,
        Outcome::AlreadyRelaunched,
        "{:?}",
        second.effects
    );
    let listed = sm
        .list_training_jobs()
        .name_contains(&run)
        .send()
        .await
        .expect("ListTrainingJobs");
    assert_eq!(
        listed.training_job_summaries().len(),
        1,
        "one continuation for the run, not one per instance"
    );

    // A rebalance recommendation: recorded as advisory, no validation, no continuation.
    let advice = event_for("ec2-rebalance-recommendation", &instance);
    assert!(routed(&eb, &advice).await);
    let advised = handle(&h, &local, &lines, &advice).await;
    assert_eq!(advised.outcome, Outcome::Recorded);
    assert!(advised.checkpoints.is_none());
    let records = emulators::objects(&s3, &ledger, &record_prefix).await;
    assert_eq!(records.len(), 2);
    assert!(records.iter().any(|(_, body)| {
        serde_json::from_slice::<Value>(body).expect("JSON")["kind"] == "rebalance_recommendation"
    }));

    // An instance without spotcheck:run: not managed.
    let stranger = launch(&ec2, &[("Name", "someone-else")]).await;
    let ignored = handle(
        &h,
        &local,
        &lines,
        &event_for("ec2-spot-interruption-terminate", &stranger),
    )
    .await;
    assert_eq!(ignored.outcome, Outcome::Ignored);

    // A run with no checkpoint whose instance says give up without one.
    let strict_run = format!("{run}-strict");
    let strict = launch(
        &ec2,
        &[
            ("spotcheck:run", strict_run.as_str()),
            (
                "spotcheck:checkpoint-uri",
                &format!("s3://{bucket}/{strict_run}/checkpoints"),
            ),
            ("spotcheck:continue-on", template_uri.as_str()),
            ("spotcheck:without-checkpoint", "give-up"),
        ],
    )
    .await;
    let strict_name = continuation_name(&strict_run, 1);
    let gave_up = handle(
        &h,
        &local,
        &lines,
        &event_for("ec2-spot-interruption-terminate", &strict),
    )
    .await;
    assert_eq!(gave_up.outcome, Outcome::GaveUp, "{:?}", gave_up.effects);
    assert!(
        local.job(&strict_name).is_none(),
        "no continuation was created"
    );
    let give_up = emulators::objects(
        &s3,
        &ledger,
        &format!("{LEDGER_PREFIX}give-ups/{strict_run}/"),
    )
    .await;
    assert_eq!(give_up.len(), 1);
    let record: Value = serde_json::from_slice(&give_up[0].1).expect("JSON");
    assert_eq!(record["cause"], "no_checkpoint");
    assert_eq!(record["job_name"], strict_name.as_str());

    // A run whose checkpoint URI lies in another bucket than the stack's: refused, unread.
    let outside_run = format!("{run}-outside");
    let outside = launch(
        &ec2,
        &[
            ("spotcheck:run", outside_run.as_str()),
            (
                "spotcheck:checkpoint-uri",
                &format!("s3://{ledger}/{outside_run}"),
            ),
            ("spotcheck:continue-on", template_uri.as_str()),
        ],
    )
    .await;
    let refused = handle(
        &h,
        &local,
        &lines,
        &event_for("ec2-spot-interruption-terminate", &outside),
    )
    .await;
    assert_eq!(refused.outcome, Outcome::GaveUp, "{:?}", refused.effects);
    assert!(refused.checkpoints.is_none(), "not validated");
    let outside_name = continuation_name(&outside_run, 1);
    assert!(local.job(&outside_name).is_none(), "not created");
    let give_up = emulators::objects(
        &s3,
        &ledger,
        &format!("{LEDGER_PREFIX}give-ups/{outside_run}/"),
    )
    .await;
    assert_eq!(give_up.len(), 1);
    let record: Value = serde_json::from_slice(&give_up[0].1).expect("JSON");
    assert_eq!(record["cause"], "not_permitted", "{record}");

    // Announced: the continuation three times (at least once per delivery), each give-up once.
    let messages = sqs
        .collect_until(&announcements.queue, Duration::from_secs(30), |m| {
            m.len() >= 5
        })
        .await;
    let mut expected = vec![
        ("Recovery Gave Up".to_owned(), outside_name.clone()),
        ("Recovery Gave Up".to_owned(), strict_name.clone()),
        ("Training Run Continued".to_owned(), name.clone()),
        ("Training Run Continued".to_owned(), name.clone()),
        ("Training Run Continued".to_owned(), name.clone()),
    ];
    expected.sort();
    assert_eq!(announced(&messages), expected);
    let first = messages
        .iter()
        .find(|m| m["detail"]["job_arn"] == arn.as_str())
        .expect("the first announcement carries the new job's ARN");
    assert_eq!(first["detail"]["latest_valid_step"], 200);
    assert_eq!(first["detail"]["instance_id"], instance.as_str());

    announcements.remove(&eb, &sqs).await;
}
