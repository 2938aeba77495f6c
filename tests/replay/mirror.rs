//! The trainer's own S3 mirror (`--checkpoint-s3-uri`) against an S3 that misbehaves: a fault
//! proxy in front of LocalStack hangs or fails chosen requests.
//!
//! - A stop (SIGTERM) while the upload of an older checkpoint hangs: the final checkpoint is
//!   committed on local disk first, the hung upload is abandoned, and the final one reaches S3
//!   complete before the trainer exits 143.
//! - A start whose download of the newest remote checkpoint fails part-way: nothing of it is
//!   left in the checkpoint directory (it was staged), the trainer falls back to the next one
//!   in S3, and the next start — S3 healthy again — downloads the newest one and resumes from
//!   it, because "newer than local" is judged against valid local checkpoints only.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use spotcheck_tests::emulators::{self, Emulators};
use spotcheck_tests::proxy::{Fault, FaultProxy, FaultRule};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::checkpoints::train_exe;

/// A synthetic run checkpointing every 2 steps, long enough to stop in the middle.
const HP: &[&str] = &[
    "dataset=synthetic",
    "num_classes=4",
    "image_size=8",
    "synthetic_samples=96",
    "batch_size=16",
    "epochs=200",
    "model_depth=1",
    "model_width=4",
    "model_hidden=16",
    "checkpoint_adaptive=false",
    "checkpoint_every_steps=2",
    "log_every_steps=1",
    "backend=cpu",
];

fn train(dir: &Path, uri: &str, s3_endpoint: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(train_exe());
    cmd.arg("--data")
        .arg("/nonexistent")
        .arg("--checkpoint-dir")
        .arg(dir.join("checkpoints"))
        .arg("--model-dir")
        .arg(dir.join("model"))
        .arg("--checkpoint-s3-uri")
        .arg(uri)
        .env("SPOTCHECK_IMDS", "off")
        .env("SPOTCHECK_OPT_ML", dir.join("opt-ml"))
        .env_remove("SM_MODEL_DIR")
        .env_remove("SM_CURRENT_HOST")
        .env("AWS_ENDPOINT_URL_S3", s3_endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", emulators::REGION)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    for hp in HP {
        cmd.arg("--hp").arg(hp);
    }
    cmd
}

/// Runs the trainer, calling `on_line` for each JSON log line until it returns `true`, then
/// sends `signal`; returns the exit code and every line.
async fn run_until(
    mut cmd: tokio::process::Command,
    signal: i32,
    mut on_line: impl FnMut(&serde_json::Value) -> bool,
) -> (Option<i32>, Vec<serde_json::Value>) {
    let mut child = cmd.spawn().expect("starting the trainer");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    let mut signalled = false;
    let read = async {
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if !signalled && on_line(&v) {
                signalled = true;
                // SAFETY: signalling our own child by pid.
                unsafe { libc::kill(child.id().expect("a running child") as i32, signal) };
            }
            seen.push(v);
        }
    };
    tokio::time::timeout(Duration::from_secs(240), read)
        .await
        .expect("the trainer ended within 240 s");
    let code = child.wait().await.expect("waiting for the trainer").code();
    (code, seen)
}

fn events<'a>(lines: &'a [serde_json::Value], name: &str) -> Vec<&'a serde_json::Value> {
    lines.iter().filter(|v| v["event"] == name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_upload_does_not_hold_the_final_checkpoint_back() {
    let e = Emulators::from_env();
    let s3 = emulators::s3(&e.s3).await;
    let bucket = emulators::bucket(&s3, "mirror-hang").await;
    let proxy = FaultProxy::start(&e.s3).await;
    // Every request for the step-2 checkpoint hangs: its upload never finishes.
    proxy.inject(FaultRule::when(
        "step 2 hangs",
        |r| r.path.contains("/step-000000000002/"),
        Fault::Hang,
    ));
    let dir = tempfile::tempdir().expect("a temporary directory");
    let uri = format!("s3://{bucket}/run");
    // Stop once later checkpoints have been committed behind the hung upload.
    let (code, lines) = run_until(
        train(dir.path(), &uri, &proxy.endpoint()),
        libc::SIGTERM,
        |v| v["event"] == "checkpoint_saved" && v["step"].as_u64() >= Some(8),
    )
    .await;
    assert_eq!(code, Some(143), "stopped with a durable checkpoint");
    let stopped = events(&lines, "stopped")[0]["step"]
        .as_u64()
        .expect("the stopped step");
    let abandoned = events(&lines, "s3_upload_abandoned");
    assert_eq!(abandoned.len(), 1, "the hung upload was abandoned");
    assert_eq!(abandoned[0]["step"], 2);
    assert_eq!(abandoned[0]["final_step"], stopped);
    assert_eq!(events(&lines, "s3_final_uploaded").len(), 1);
    // The final checkpoint was durable on local disk before its upload began…
    let manifest = dir.path().join(format!(
        "checkpoints/algo-1/step-{stopped:012}/manifest.json"
    ));
    assert!(manifest.exists());
    // …and is complete in S3: its manifest and every file it lists, with matching checksums.
    let key = format!("run/algo-1/step-{stopped:012}");
    let body = s3
        .get_object()
        .bucket(&bucket)
        .key(format!("{key}/manifest.json"))
        .send()
        .await
        .expect("the final manifest is in S3")
        .body
        .collect()
        .await
        .expect("reading it")
        .into_bytes();
    let m = spotcheck_protocol::Manifest::parse(&body).expect("a valid manifest");
    for f in &m.files {
        let head = s3
            .head_object()
            .bucket(&bucket)
            .key(format!("{key}/{}", f.path))
            .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
            .send()
            .await
            .expect("each listed file is in S3");
        assert_eq!(head.checksum_crc64_nvme(), Some(f.crc64nvme.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_download_leaves_nothing_and_the_next_start_resumes_from_the_newest() {
    let e = Emulators::from_env();
    let s3 = emulators::s3(&e.s3).await;
    let bucket = emulators::bucket(&s3, "mirror-dl").await;
    let uri = format!("s3://{bucket}/run");
    // A first instance trains, mirrors, and is stopped once a checkpoint older than the one
    // the stop writes is in S3 (on a busy machine the mirror lags the steps).
    let first = tempfile::tempdir().expect("a temporary directory");
    let mut mirrored = None;
    let (code, lines) = run_until(train(first.path(), &uri, &e.s3), libc::SIGTERM, |v| {
        if v["event"] == "s3_uploaded" {
            mirrored = mirrored.max(v["step"].as_u64());
        }
        v["event"] == "step" && mirrored.is_some_and(|m| v["step"].as_u64() > Some(m + 1))
    })
    .await;
    assert_eq!(code, Some(143));
    let newest = events(&lines, "stopped")[0]["step"]
        .as_u64()
        .expect("the stopped step");
    let newest_dir = format!("step-{newest:012}");

    // A second instance starts while S3 fails every read of the newest checkpoint's
    // optimizer state: that download fails after other files arrived.
    let proxy = FaultProxy::start(&e.s3).await;
    let newest_path = format!("/{newest_dir}/optimizer.safetensors");
    proxy.inject(FaultRule::when(
        "newest optimizer GET fails",
        move |r| r.method == "GET" && r.path.ends_with(&newest_path),
        Fault::s3_error(500, "InternalError"),
    ));
    let second = tempfile::tempdir().expect("a temporary directory");
    let (_, lines) = run_until(
        train(second.path(), &uri, &proxy.endpoint()),
        libc::SIGKILL,
        |v| v["event"] == "resumed",
    )
    .await;
    let resumed = events(&lines, "resumed");
    assert_eq!(resumed.len(), 1, "it resumed from an older S3 checkpoint");
    let older = resumed[0]["step"].as_u64().expect("a step");
    assert!(older < newest, "{older} < {newest}");
    assert!(
        !second
            .path()
            .join(format!("checkpoints/algo-1/{newest_dir}"))
            .exists(),
        "a failed download leaves no checkpoint directory behind"
    );
    drop(proxy);

    // The same instance starts again with S3 healthy: the newest remote checkpoint is newer
    // than every valid local one, so it is downloaded and resumed from.
    let (code, lines) = run_until(train(second.path(), &uri, &e.s3), libc::SIGKILL, |v| {
        v["event"] == "resumed"
    })
    .await;
    assert_ne!(code, Some(0));
    assert_eq!(events(&lines, "s3_downloaded").len(), 1);
    assert_eq!(events(&lines, "resumed")[0]["step"].as_u64(), Some(newest));
}
