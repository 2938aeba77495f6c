//! The `spotcheck` command line, driven as a user would: fixture events replayed through
//! `spotcheck decide`, and checkpoint roots through `spotcheck validate`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use spotcheck_protocol::CheckpointWriter;

const BIN: &str = env!("CARGO_BIN_EXE_spotcheck");
const NOW: &str = "2026-06-01T00:00:00Z";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn spotcheck(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("spotcheck runs")
}

fn decide(event: &str, job: Option<&str>, extra: &[&str]) -> (i32, Value) {
    let event = fixtures().join("events").join(format!("{event}.json"));
    let mut args = vec!["decide", "--event", event.to_str().unwrap(), "--now", NOW];
    let job_path;
    if let Some(j) = job {
        job_path = fixtures().join("jobs").join(format!("{j}.json"));
        args.extend(["--job", job_path.to_str().unwrap()]);
    }
    args.extend(extra);
    let out = spotcheck(&args);
    let code = out.status.code().unwrap_or(-1);
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (code, v)
}

/// Every fixture event, replayed with the event as the only source of facts. The expected
/// action per fixture was reviewed against the decision rules in crates/control.
#[test]
fn every_fixture_event_replays_to_its_decision() {
    let expected = [
        ("ec2-rebalance-recommendation", "ignore"),
        ("ec2-spot-interruption-hibernate", "ignore"),
        ("ec2-spot-interruption-stop", "ignore"),
        ("ec2-spot-interruption-terminate", "ignore"),
        ("sagemaker-completed-lineage", "record"),
        ("sagemaker-completed", "record"),
        ("sagemaker-failed-algorithm", "give_up"),
        ("sagemaker-failed-capacity", "relaunch"),
        ("sagemaker-failed-client", "give_up"),
        ("sagemaker-failed-internal", "relaunch"),
        ("sagemaker-inprogress-interrupted", "record"),
        ("sagemaker-inprogress-training", "ignore"),
        ("sagemaker-minimal", "ignore"),
        ("sagemaker-not-enabled", "ignore"),
        ("sagemaker-stopped-maxruntime", "give_up"),
        ("sagemaker-stopped-maxwait-duplicate", "relaunch"),
        ("sagemaker-stopped-maxwait-never-started", "relaunch"),
        ("sagemaker-stopped-maxwait", "relaunch"),
        ("sagemaker-stopped-unknown-secondary", "ignore"),
        ("sagemaker-stopped-user", "record"),
        ("sagemaker-stopping", "ignore"),
        ("sagemaker-unknown-status", "ignore"),
        ("unrelated-ec2-state-change", "ignore"),
        ("unrelated-sagemaker-tuning-job", "ignore"),
        ("unrelated-scheduled-event", "ignore"),
    ];
    let on_disk = std::fs::read_dir(fixtures().join("events"))
        .unwrap()
        .count();
    let malformed = [
        "malformed-detail-not-an-object",
        "malformed-ec2-missing-instance-id",
        "malformed-missing-detail-type",
        "malformed-status-not-a-string",
        "malformed-truncated",
        // A state change without its TrainingJobStatus.
        "sagemaker-no-status",
    ];
    assert_eq!(
        expected.len() + malformed.len(),
        on_disk,
        "a fixture has no expectation here"
    );
    for (event, action) in expected {
        let (code, v) = decide(event, None, &[]);
        assert_eq!(code, 0, "{event}");
        assert_eq!(v["action"], action, "{event}: {v}");
        assert!(
            v["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{event}: no reason"
        );
    }
    for event in malformed {
        let out = spotcheck(&[
            "decide",
            "--event",
            fixtures()
                .join("events")
                .join(format!("{event}.json"))
                .to_str()
                .unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(2), "{event}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("error:"),
            "{event}: no clear error"
        );
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn a_duplicate_event_asks_for_the_same_job_name() {
    let (_, a) = decide(
        "sagemaker-stopped-maxwait",
        Some("describe-stopped-maxwait"),
        &[],
    );
    let (_, b) = decide(
        "sagemaker-stopped-maxwait-duplicate",
        Some("describe-stopped-maxwait"),
        &[],
    );
    assert_eq!(a["action"], "relaunch");
    assert_eq!(a["job_name"], b["job_name"]);
    let name = a["job_name"].as_str().unwrap();
    assert!(name.len() <= 63 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
}

#[test]
fn a_stale_event_is_ignored_when_describe_shows_a_newer_state() {
    let (_, v) = decide(
        "sagemaker-inprogress-interrupted",
        Some("describe-stopped-maxwait"),
        &[],
    );
    assert_eq!(v["action"], "ignore", "{v}");
    // The same final state touched later (LastModifiedTime moved) is not a newer state.
    let (_, v) = decide(
        "sagemaker-stopped-maxwait",
        Some("describe-stopped-maxwait-modified-later"),
        &[],
    );
    assert_eq!(v["action"], "relaunch", "{v}");
}

#[test]
fn a_users_stop_is_never_relaunched_whatever_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"max_attempts": 30, "retries_on_user_error": 5}"#,
    )
    .unwrap();
    let (code, v) = decide(
        "sagemaker-stopped-user",
        Some("describe-stopped-user"),
        &["--policy", policy.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{v}");
    assert_ne!(v["action"], "relaunch", "{v}");
}

#[test]
fn a_bad_policy_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, r#"{"max_attempts": "many"}"#).unwrap();
    let event = fixtures().join("events/sagemaker-completed.json");
    let out = spotcheck(&[
        "decide",
        "--event",
        event.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("error:"));
}

fn write_checkpoint(root: &Path, step: u64, finished: bool) {
    let mut p = CheckpointWriter::begin(root, "algo-1", step).unwrap();
    p.write_bytes("model.safetensors", &vec![step as u8; 4096])
        .unwrap();
    p.write_bytes(
        "trainer_state.json",
        format!("{{\"step\":{step}}}").as_bytes(),
    )
    .unwrap();
    p.commit(1, Some(serde_json::json!({ "finished": finished })))
        .unwrap();
}

#[test]
fn validate_reports_each_checkpoint_and_the_newest_valid_one() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), 100, false);
    write_checkpoint(dir.path(), 200, false);
    // Flip a byte in the newest: it is corrupt, and the older one is the latest valid.
    let f = dir
        .path()
        .join("algo-1/step-000000000200/model.safetensors");
    let mut b = std::fs::read(&f).unwrap();
    b[10] ^= 1;
    std::fs::write(&f, b).unwrap();
    std::fs::write(
        dir.path()
            .join("algo-1/step-000000000200/model.safetensors.sagemaker-uploading"),
        b"",
    )
    .unwrap();
    let out = spotcheck(&["validate", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["latest_valid"], "algo-1/step-000000000100");
    let cps = v["checkpoints"].as_array().unwrap();
    assert_eq!(cps.len(), 2);
    assert_eq!(cps[1]["name"], "algo-1/step-000000000200");
    assert_eq!(cps[1]["status"], "corrupt");
    assert_eq!(cps[1]["step"], 200);
    assert!(
        cps[1]["reason"].as_str().unwrap().contains("manifest says"),
        "{}",
        cps[1]
    );
    assert_eq!(cps[0]["reason"], Value::Null);
}

#[test]
fn validate_exits_1_without_a_valid_checkpoint_and_2_on_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), 5, false);
    std::fs::remove_file(dir.path().join("algo-1/step-000000000005/manifest.json")).unwrap();
    let out = spotcheck(&["validate", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["latest_valid"], Value::Null);
    assert_eq!(v["checkpoints"][0]["status"], "incomplete");
    assert_eq!(spotcheck(&["validate"]).status.code(), Some(2));
    assert_eq!(
        spotcheck(&["validate", "/definitely/not/here"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn validate_rejects_a_hostile_manifest_without_following_it() {
    let dir = tempfile::tempdir().unwrap();
    let step = dir.path().join("algo-1/step-000000000001");
    std::fs::create_dir_all(&step).unwrap();
    let manifest = r#"{"format_version":1,"step":1,"namespace":"algo-1","created_at_ms":0,
      "files":[{"path":"../../../etc/passwd","size":1,"sha256":"00","crc64nvme":"AAAAAAAAAAA="}]}"#;
    std::fs::write(step.join("manifest.json"), manifest).unwrap();
    let out = spotcheck(&["validate", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["checkpoints"][0]["status"], "corrupt");
}

#[test]
fn decide_reads_training_finished_from_the_checkpoint_manifest() {
    // Relaunching past MaxRuntimeExceeded is opt-in.
    let policy_dir = tempfile::tempdir().unwrap();
    let policy = policy_dir.path().join("policy.json");
    std::fs::write(&policy, br#"{"relaunch_after_max_runtime": true}"#).unwrap();
    let policy = policy.to_str().unwrap();
    // MaxRuntimeExceeded with a checkpoint that says training finished: nothing to continue.
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), 500, true);
    let (code, v) = decide(
        "sagemaker-stopped-maxruntime",
        Some("describe-stopped-maxruntime"),
        &[
            "--checkpoints",
            dir.path().to_str().unwrap(),
            "--policy",
            policy,
        ],
    );
    assert_eq!(code, 0);
    assert_ne!(v["action"], "relaunch", "{v}");
    // Unfinished with progress: continue past the runtime cap.
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), 500, false);
    let (_, v) = decide(
        "sagemaker-stopped-maxruntime",
        Some("describe-stopped-maxruntime"),
        &[
            "--checkpoints",
            dir.path().to_str().unwrap(),
            "--policy",
            policy,
        ],
    );
    assert_eq!(v["action"], "relaunch", "{v}");
}
