//! The local SageMaker service through the real `aws-sdk-sagemaker` client over HTTP: the JSON
//! 1.1 protocol, SageMaker's error codes, duplicate names, a spot interruption restarted inside
//! MaxWait, a user's stop, checkpoint sync with the uploader's markers, and billing fields.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_sagemaker::error::ProvideErrorMetadata;
use aws_sdk_sagemaker::types::{
    AlgorithmSpecification, CheckpointConfig, OutputDataConfig, ResourceConfig, StoppingCondition,
    Tag, TrainingInputMode, TrainingInstanceType,
};
use spotcheck_local::market::{MarketConfig, Trace};
use spotcheck_local::service::ServiceConfig;
use spotcheck_local::stack::{Stack, StackConfig};

const BUCKET: &str = "service-test";

/// `train`, built into the same target directory by `cargo test --workspace`.
fn trainer() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let t = exe.parent().unwrap().parent().unwrap().join("train");
    assert!(
        t.is_file(),
        "{} is missing: run the suite with scripts/test-all.sh (cargo test --workspace builds it)",
        t.display()
    );
    t
}

async fn stack(dir: &Path, trace: Option<&str>, time_scale: f64) -> Stack {
    let mut service = ServiceConfig::new(dir.join("service"), trainer());
    service.time_scale = time_scale;
    service.fast_forward = true;
    service.grace_seconds = 30.0 * time_scale;
    service.market = MarketConfig {
        trace: trace.map(|t| Trace::from_json(t.as_bytes()).unwrap()),
        ..MarketConfig::default()
    };
    let mut config = StackConfig::new(service);
    config.buckets = vec![BUCKET.into()];
    Stack::start(config, |_| {}).await.unwrap()
}

/// A stack whose training image is the shell script `body` (written into `dir`), with
/// fast-forward on: for tests of container semantics that need no trainer.
async fn script_stack(dir: &Path, body: &str) -> Stack {
    let script = dir.join("image.sh");
    std::fs::write(&script, body).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut service = ServiceConfig::new(dir.join("service"), script);
    service.fast_forward = true;
    let mut config = StackConfig::new(service);
    config.buckets = vec![BUCKET.into()];
    Stack::start(config, |_| {}).await.unwrap()
}

/// A small synthetic-data job: `steps` optimizer steps, a checkpoint every 20.
fn create(
    client: &aws_sdk_sagemaker::Client,
    name: &str,
    steps: u32,
    spot: bool,
) -> aws_sdk_sagemaker::operation::create_training_job::builders::CreateTrainingJobFluentBuilder {
    let hp = [
        ("dataset", "synthetic"),
        ("epochs", "100000"),
        ("num_classes", "4"),
        ("synthetic_samples", "512"),
        ("image_size", "12"),
        ("model_width", "4"),
        ("model_hidden", "16"),
        ("batch_size", "32"),
        ("checkpoint_every_steps", "20"),
        ("checkpoint_adaptive", "false"),
        ("backend", "cpu"),
    ];
    let mut b = client
        .create_training_job()
        .training_job_name(name)
        .algorithm_specification(
            AlgorithmSpecification::builder()
                .training_image("spotcheck-trainer:latest")
                .training_input_mode(TrainingInputMode::File)
                .build(),
        )
        .role_arn("arn:aws:iam::000000000000:role/test")
        .hyper_parameters("max_steps", steps.to_string())
        .output_data_config(
            OutputDataConfig::builder()
                .s3_output_path(format!("s3://{BUCKET}/models"))
                .build(),
        )
        .resource_config(
            ResourceConfig::builder()
                .instance_type(TrainingInstanceType::MlG4DnXlarge)
                .instance_count(1)
                .volume_size_in_gb(10)
                .build(),
        )
        .stopping_condition(
            StoppingCondition::builder()
                .max_runtime_in_seconds(86_400)
                .set_max_wait_time_in_seconds(spot.then_some(172_800))
                .build(),
        )
        .enable_managed_spot_training(spot)
        .checkpoint_config(
            CheckpointConfig::builder()
                .s3_uri(format!("s3://{BUCKET}/checkpoints/{name}"))
                .build(),
        )
        .tags(Tag::builder().key("team").value("ml").build());
    for (k, v) in hp {
        b = b.hyper_parameters(k, v);
    }
    b
}

async fn wait_status(stack: &Stack, name: &str, done: &[&str]) -> String {
    let ok = stack
        .service
        .wait_until(Duration::from_secs(120), |jobs| {
            jobs.iter()
                .any(|j| j.name == name && done.contains(&j.state.status))
        })
        .await;
    let d = stack
        .sagemaker_client()
        .describe_training_job()
        .training_job_name(name)
        .send()
        .await
        .unwrap();
    assert!(ok, "{name} did not reach {done:?}: {d:?}");
    d.training_job_status().unwrap().as_str().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_client_runs_a_spot_job_through_an_interruption_to_completion() {
    let dir = tempfile::tempdir().unwrap();
    // Real time: the outage at 1.5 s hits the trainer while it trains (its capacity wait is
    // fast-forwarded).
    let stack = stack(
        dir.path(),
        Some(r#"{"outages": [{"at_seconds": 1.5, "duration_seconds": 600}]}"#),
        1.0,
    )
    .await;
    let sm = stack.sagemaker_client();
    let created = create(&sm, "svc-spot", 3000, true).send().await.unwrap();
    assert!(created
        .training_job_arn()
        .unwrap()
        .ends_with(":training-job/svc-spot"));

    // The same name again: SageMaker's ResourceInUse, which the control plane reads as "done".
    let dup = create(&sm, "svc-spot", 3000, true)
        .send()
        .await
        .unwrap_err();
    let dup = dup.into_service_error();
    assert!(dup.is_resource_in_use(), "{dup:?}");

    assert_eq!(
        wait_status(&stack, "svc-spot", &["Completed", "Failed", "Stopped"]).await,
        "Completed"
    );
    let d = sm
        .describe_training_job()
        .training_job_name("svc-spot")
        .send()
        .await
        .unwrap();
    let secondary: Vec<&str> = d
        .secondary_status_transitions()
        .iter()
        .map(|t| t.status().unwrap().as_str())
        .collect();
    let interrupted = secondary.iter().position(|s| *s == "Interrupted");
    assert!(
        interrupted.is_some_and(|i| secondary[i + 1..].contains(&"Training")),
        "expected Training → Interrupted → … → Training: {secondary:?}"
    );
    assert_eq!(secondary.last(), Some(&"Completed"));
    let training = d.training_time_in_seconds().unwrap();
    let billable = d.billable_time_in_seconds().unwrap();
    assert!(
        training > 0 && billable > 0 && billable < training,
        "spot bills less than it runs: {training} {billable}"
    );
    assert_eq!(d.enable_managed_spot_training(), Some(true));
    let model = d.model_artifacts().unwrap().s3_model_artifacts().unwrap();
    assert!(model.starts_with(&format!("s3://{BUCKET}/models/svc-spot/")));

    // Checkpoints reached S3 with their full-object CRC-64/NVME, and no uploader markers.
    let s3 = stack.s3_client();
    let listed = s3
        .list_objects_v2()
        .bucket(BUCKET)
        .prefix("checkpoints/svc-spot/")
        .send()
        .await
        .unwrap();
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert!(
        keys.iter().any(|k| k.ends_with("/manifest.json")),
        "{keys:?}"
    );
    assert!(!keys.iter().any(|k| k.contains(".sagemaker-")), "{keys:?}");
    let manifest = keys.iter().find(|k| k.ends_with("/manifest.json")).unwrap();
    let head = s3
        .head_object()
        .bucket(BUCKET)
        .key(*manifest)
        .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert!(head.checksum_crc64_nvme().is_some());

    let listed = sm.list_training_jobs().send().await.unwrap();
    assert!(listed
        .training_job_summaries()
        .iter()
        .any(|s| s.training_job_name() == Some("svc-spot")));
    let tags = sm
        .list_tags()
        .resource_arn(created.training_job_arn().unwrap())
        .send()
        .await
        .unwrap();
    assert!(tags
        .tags()
        .iter()
        .any(|t| t.key() == Some("team") && t.value() == Some("ml")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_stop_ends_stopped_and_bad_requests_get_sagemaker_errors() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(dir.path(), None, 1.0).await;
    let sm = stack.sagemaker_client();

    let bad = create(&sm, "bad_name!", 10, false)
        .send()
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Some("ValidationException"), "{bad:?}");
    let missing = sm
        .describe_training_job()
        .training_job_name("no-such-job")
        .send()
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Some("ValidationException"), "{missing:?}");
    // Managed spot without MaxWaitTimeInSeconds is refused, as SageMaker does.
    let no_wait = create(&sm, "spot-without-wait", 10, false)
        .enable_managed_spot_training(true)
        .send()
        .await
        .unwrap_err();
    assert_eq!(no_wait.code(), Some("ValidationException"), "{no_wait:?}");

    create(&sm, "svc-stop", 1_000_000, false)
        .send()
        .await
        .unwrap();
    let training = stack
        .service
        .wait_until(Duration::from_secs(60), |jobs| {
            jobs.iter()
                .any(|j| j.name == "svc-stop" && j.state.secondary == "Training")
        })
        .await;
    assert!(training);
    sm.stop_training_job()
        .training_job_name("svc-stop")
        .send()
        .await
        .unwrap();
    assert_eq!(
        wait_status(&stack, "svc-stop", &["Completed", "Failed", "Stopped"]).await,
        "Stopped"
    );
    let d = sm
        .describe_training_job()
        .training_job_name("svc-stop")
        .send()
        .await
        .unwrap();
    assert_eq!(d.secondary_status().unwrap().as_str(), "Stopped");
    assert!(d.failure_reason().is_none());
    // The stop began while training: `/opt/ml/model` was uploaded before Stopped.
    let artifacts = d
        .model_artifacts()
        .and_then(|m| m.s3_model_artifacts())
        .expect("a stopped job's ModelArtifacts");
    let key = "models/svc-stop/output/model.tar.gz";
    assert_eq!(artifacts, format!("s3://{BUCKET}/{key}"));
    stack
        .s3_client()
        .head_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .expect("the model object exists");
}

/// A job with the trainer's default checkpoint settings (adaptive interval, keep 3).
fn create_with_defaults(
    client: &aws_sdk_sagemaker::Client,
    name: &str,
    hp: &[(&str, &str)],
) -> aws_sdk_sagemaker::operation::create_training_job::builders::CreateTrainingJobFluentBuilder {
    let mut b = create(client, name, 0, true).set_hyper_parameters(None);
    for (k, v) in hp {
        b = b.hyper_parameters(*k, *v);
    }
    b
}

/// How many checkpoints reached S3 since the job's newest process started, and how many
/// processes it has started.
fn uploads_since_start(job: &spotcheck_local::service::JobView) -> (usize, usize) {
    use spotcheck_local::service::Note;
    let started = job
        .notes
        .iter()
        .filter(|n| matches!(n.note, Note::ProcessStarted { .. }))
        .count();
    let since = job
        .notes
        .iter()
        .rev()
        .take_while(|n| !matches!(n.note, Note::ProcessStarted { .. }))
        .filter(|n| matches!(n.note, Note::CheckpointUploaded { .. }))
        .count();
    (since, started)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwarned_reclaims_and_a_slow_uploader_lose_no_work_with_default_settings() {
    // As harsh as AWS may be: two reclaims without SIGTERM, and a checkpoint uploader that
    // takes a second or more per checkpoint. Judged by the local disk alone, retention deleted
    // checkpoints S3 had and kept ones it did not, so a reclaim could leave nothing valid in S3.
    // The reclaims are injected once the running process has had two checkpoints uploaded.
    // With default settings this model's adaptive interval is ~8 s (Young's optimum for a
    // ~5 ms persist at 0.5 interruptions an hour), so a process needs ~10 s for two uploads:
    // the run is 30000 steps (~35 s on 2 cores) so that the second restarted process still has
    // work left when it gets there. (At 6000 steps the run sometimes ended first.)
    let dir = tempfile::tempdir().unwrap();
    let mut service = ServiceConfig::new(dir.path().join("service"), trainer());
    service.fast_forward = true;
    service.upload = spotcheck_local::sync::UploadLimits {
        lag: Duration::from_millis(500),
        bandwidth: Some(24 << 10),
    };
    let mut config = StackConfig::new(service);
    config.buckets = vec![BUCKET.into()];
    let stack = Stack::start(config, |_| {}).await.unwrap();
    let hp = [
        ("dataset", "synthetic"),
        ("num_classes", "4"),
        ("synthetic_samples", "512"),
        ("image_size", "12"),
        ("model_width", "4"),
        ("model_hidden", "16"),
        ("batch_size", "32"),
        ("epochs", "100000"),
        ("max_steps", "30000"),
        ("backend", "cpu"),
    ];
    let sm = stack.sagemaker_client();
    create_with_defaults(&sm, "svc-harsh", &hp)
        .send()
        .await
        .unwrap();
    for instance in 1..=2 {
        let ready = stack
            .service
            .wait_until(Duration::from_secs(300), |jobs| {
                jobs.iter().any(|j| {
                    let (uploads, started) = uploads_since_start(j);
                    j.name == "svc-harsh"
                        && ((started == instance && uploads >= 2) || j.state.is_terminal())
                })
            })
            .await;
        assert!(
            ready,
            "instance {instance} never had two checkpoints uploaded"
        );
        stack.service.reclaim_now("svc-harsh", false, 0).unwrap();
    }
    let ok = stack
        .service
        .wait_until(Duration::from_secs(600), |jobs| {
            jobs.iter()
                .any(|j| j.name == "svc-harsh" && j.state.is_terminal())
        })
        .await;
    assert!(ok, "the job did not end");
    let job = stack
        .service
        .jobs()
        .into_iter()
        .find(|j| j.name == "svc-harsh")
        .unwrap();
    assert_eq!(
        job.state.status, "Completed",
        "{:?}",
        job.state.failure_reason
    );
    assert_eq!(
        job.state.interruptions, 2,
        "both reclaims must hit the running trainer (it finished too soon otherwise)"
    );
    // Every instance after the first resumed from a checkpoint that was in S3 — none started
    // over — and from newer work each time.
    let mut resumed = Vec::new();
    for n in &job.notes {
        if let spotcheck_local::service::Note::ProcessStarted { instance, log, .. } = &n.note {
            let text = std::fs::read_to_string(log).unwrap();
            let p = spotcheck_local::report::parse_log("svc-harsh", *instance, &text);
            resumed.push(p.resumed_from);
        }
    }
    assert_eq!(resumed.len(), 3, "{resumed:?}");
    assert_eq!(resumed[0], None);
    assert!(
        resumed[1].is_some_and(|s| s > 0) && resumed[2] > resumed[1],
        "each restart resumes from newer uploaded work: {resumed:?}"
    );

    // The final model equals an uninterrupted run's, byte for byte.
    let reference = dir.path().join("reference");
    let mut cmd = std::process::Command::new(trainer());
    cmd.arg("--data")
        .arg("/nonexistent")
        .arg("--checkpoint-dir")
        .arg(reference.join("ckpt"))
        .arg("--model-dir")
        .arg(reference.join("model"))
        .env("SPOTCHECK_IMDS", "off")
        .env("SPOTCHECK_OPT_ML", reference.join("opt-ml"))
        .env_remove("SM_MODEL_DIR")
        .env_remove("SM_CURRENT_HOST")
        .stdout(std::process::Stdio::null());
    for (k, v) in hp {
        cmd.arg("--hp").arg(format!("{k}={v}"));
    }
    assert!(cmd.status().unwrap().success());
    let s3 = stack.s3_client();
    let got = s3
        .get_object()
        .bucket(BUCKET)
        .key("models/svc-harsh/output/model.tar.gz")
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    let unpacked = dir.path().join("final");
    tar::Archive::new(flate2::read::GzDecoder::new(&got[..]))
        .unpack(&unpacked)
        .unwrap();
    for file in ["model.safetensors", "optimizer.safetensors"] {
        assert!(
            std::fs::read(unpacked.join(file)).unwrap()
                == std::fs::read(reference.join("model").join(file)).unwrap(),
            "{file} differs from the uninterrupted run"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_instance_job_loses_one_host_and_restarts_both() {
    // SageMaker's multi-instance semantics: two hosts run together, each with its own
    // resourceconfig.json and checkpoint namespace; a reclaim of one host (without warning)
    // interrupts the whole job, and both restart and resume from their own checkpoints.
    let dir = tempfile::tempdir().unwrap();
    let mut service = ServiceConfig::new(dir.path().join("service"), trainer());
    service.fast_forward = true;
    let mut config = StackConfig::new(service);
    config.buckets = vec![BUCKET.into()];
    let stack = Stack::start(config, |_| {}).await.unwrap();
    let hp = [
        ("dataset", "synthetic"),
        ("num_classes", "4"),
        ("synthetic_samples", "512"),
        ("image_size", "12"),
        ("model_width", "4"),
        ("model_hidden", "16"),
        ("batch_size", "32"),
        ("epochs", "100000"),
        ("max_steps", "4000"),
        // Each host checkpoints every 100 steps (not the adaptive interval, ~8 s for this
        // model: a run of a few seconds could end before both hosts had two uploaded).
        ("checkpoint_every_steps", "100"),
        ("backend", "cpu"),
    ];
    let sm = stack.sagemaker_client();
    create_with_defaults(&sm, "svc-two", &hp)
        .resource_config(
            ResourceConfig::builder()
                .instance_type(TrainingInstanceType::MlG4DnXlarge)
                .instance_count(2)
                .volume_size_in_gb(10)
                .build(),
        )
        .send()
        .await
        .unwrap();
    use spotcheck_local::service::Note;
    let both_uploaded = |j: &spotcheck_local::service::JobView| {
        let started = j
            .notes
            .iter()
            .filter(|n| matches!(n.note, Note::ProcessStarted { .. }))
            .count();
        let uploads = j
            .notes
            .iter()
            .filter(|n| matches!(n.note, Note::CheckpointUploaded { .. }))
            .count();
        started == 2 && uploads >= 4
    };
    let ready = stack
        .service
        .wait_until(Duration::from_secs(300), |jobs| {
            jobs.iter()
                .any(|j| j.name == "svc-two" && (both_uploaded(j) || j.state.is_terminal()))
        })
        .await;
    assert!(ready, "both hosts never checkpointed");
    stack.service.reclaim_now("svc-two", false, 1).unwrap();
    let ok = stack
        .service
        .wait_until(Duration::from_secs(600), |jobs| {
            jobs.iter()
                .any(|j| j.name == "svc-two" && j.state.is_terminal())
        })
        .await;
    assert!(ok, "the job did not end");
    let job = stack
        .service
        .jobs()
        .into_iter()
        .find(|j| j.name == "svc-two")
        .unwrap();
    assert_eq!(
        job.state.status, "Completed",
        "{:?}",
        job.state.failure_reason
    );
    assert_eq!(job.state.interruptions, 1);
    assert_eq!(job.describe["ResourceConfig"]["InstanceCount"], 2);
    let mut started: Vec<(u32, String, Option<u64>)> = Vec::new();
    for n in &job.notes {
        if let Note::ProcessStarted {
            instance,
            host,
            log,
        } = &n.note
        {
            let text = std::fs::read_to_string(log).unwrap();
            let p = spotcheck_local::report::parse_log("svc-two", *instance, &text);
            started.push((*instance, host.clone(), p.resumed_from));
        }
    }
    started.sort();
    assert_eq!(
        started
            .iter()
            .map(|(i, h, _)| (*i, h.as_str()))
            .collect::<Vec<_>>(),
        [(1, "algo-1"), (1, "algo-2"), (2, "algo-1"), (2, "algo-2")],
        "both hosts ran in both instance groups"
    );
    assert!(
        started[2].2.is_some_and(|s| s > 0) && started[3].2.is_some_and(|s| s > 0),
        "both hosts resumed from their own checkpoints: {started:?}"
    );
    // Each host namespaces its checkpoints; both are in the job's one S3 prefix.
    let keys: Vec<String> = stack
        .s3_client()
        .list_objects_v2()
        .bucket(BUCKET)
        .prefix("checkpoints/svc-two/")
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect();
    for host in ["algo-1", "algo-2"] {
        assert!(
            keys.iter()
                .any(|k| k.starts_with(&format!("checkpoints/svc-two/{host}/"))),
            "{host}: {keys:?}"
        );
    }
    // What each host was told about the cluster.
    let config = std::fs::read_to_string(
        dir.path()
            .join("service/jobs/svc-two/instance-2/algo-2/opt/ml/input/config/resourceconfig.json"),
    )
    .unwrap();
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["current_host"], "algo-2");
    assert_eq!(config["hosts"], serde_json::json!(["algo-1", "algo-2"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_fails_alone_fails_the_job() {
    let dir = tempfile::tempdir().unwrap();
    // A training image whose second host fails at once while the first trains on.
    let stack = script_stack(
        dir.path(),
        "#!/bin/sh\n\
         if [ \"$SM_CURRENT_HOST\" = algo-2 ]; then\n\
           echo \"host algo-2: out of memory\" > \"$SPOTCHECK_OPT_ML/output/failure\"\n\
           exit 3\n\
         fi\n\
         trap 'exit 143' TERM\n\
         while :; do sleep 0.05; done\n",
    )
    .await;
    let sm = stack.sagemaker_client();
    create(&sm, "svc-fail", 10, false)
        .resource_config(
            ResourceConfig::builder()
                .instance_type(TrainingInstanceType::MlG4DnXlarge)
                .instance_count(2)
                .volume_size_in_gb(10)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        wait_status(&stack, "svc-fail", &["Completed", "Failed", "Stopped"]).await,
        "Failed"
    );
    let d = sm
        .describe_training_job()
        .training_job_name("svc-fail")
        .send()
        .await
        .unwrap();
    assert_eq!(
        d.failure_reason(),
        Some("AlgorithmError: host algo-2: out of memory")
    );
    // The first host did not outlive the job.
    let job = stack
        .service
        .jobs()
        .into_iter()
        .find(|j| j.name == "svc-fail")
        .unwrap();
    let exited: Vec<&str> = job
        .notes
        .iter()
        .filter_map(|n| match &n.note {
            spotcheck_local::service::Note::ProcessExited { host, .. } => Some(host.as_str()),
            _ => None,
        })
        .collect();
    let ok = stack
        .service
        .wait_until(Duration::from_secs(30), |jobs| {
            jobs.iter().any(|j| {
                j.name == "svc-fail"
                    && j.notes
                        .iter()
                        .filter(|n| {
                            matches!(n.note, spotcheck_local::service::Note::ProcessExited { .. })
                        })
                        .count()
                        == 2
            })
        })
        .await;
    assert!(ok, "the other host was not stopped: {exited:?}");
}

/// Whether process `pid` still runs (a zombie waiting for its reaper does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim().to_owned()))
        .is_some_and(|rest| !rest.starts_with('Z'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_ends_with_everything_it_started() {
    let dir = tempfile::tempdir().unwrap();
    // A training image like `spotcheck run`: the real work runs in a process group of its
    // own, and here the first process ends without waiting for it.
    let stack = script_stack(
        dir.path(),
        "#!/bin/sh\n\
         set -m\n\
         sleep 600 &\n\
         echo $! > \"$SPOTCHECK_OPT_ML/output/child.pid\"\n\
         exit 0\n",
    )
    .await;
    create(&stack.sagemaker_client(), "svc-orphan", 10, false)
        .send()
        .await
        .unwrap();
    assert_eq!(
        wait_status(&stack, "svc-orphan", &["Completed", "Failed", "Stopped"]).await,
        "Completed"
    );
    let pid_file = dir
        .path()
        .join("service/jobs/svc-orphan/instance-1/algo-1/opt/ml/output/child.pid");
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SIGKILL is delivered before the job is marked done; allow the kernel to finish it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while running(pid) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !running(pid),
        "the container's child {pid} outlived the container"
    );
}
