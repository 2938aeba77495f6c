//! Checkpoints mirrored to S3 (`--checkpoint-s3-uri`, for training on your own EC2 spot
//! instances), against LocalStack's S3: uploaded with full-object CRC-64/NVME checksums, judged
//! in S3 without downloading, and restored on a fresh instance to give the uninterrupted result.
//!
//! Needs an S3 endpoint in `AWS_ENDPOINT_URL_S3` (`scripts/test-all.sh` starts LocalStack and
//! sets it); without one these tests fail and say so.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumMode;
use spotcheck_protocol::Manifest;

const TRAIN: &str = env!("CARGO_BIN_EXE_train");
const HP: &[&str] = &[
    "dataset=synthetic",
    "num_classes=4",
    "image_size=8",
    "synthetic_samples=96",
    "batch_size=16",
    "epochs=40",
    "model_depth=1",
    "model_width=4",
    "model_hidden=16",
    "checkpoint_adaptive=false",
    "checkpoint_every_steps=2",
    "log_every_steps=1",
    "backend=cpu",
];

fn endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL_S3").expect(
        "AWS_ENDPOINT_URL_S3 is not set: these tests need an S3 emulator; run scripts/test-all.sh, \
         or `scripts/emulators.sh start` and `eval \"$(scripts/emulators.sh env)\"`",
    )
}

struct Env {
    rt: tokio::runtime::Runtime,
    s3: aws_sdk_s3::Client,
    bucket: String,
}

fn s3_env(name: &str) -> Env {
    let _ = endpoint();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = rt.block_on(aws_config::load_defaults(
        aws_config::BehaviorVersion::latest(),
    ));
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    );
    let bucket = format!("spotcheck-{name}-{}", std::process::id());
    rt.block_on(s3.create_bucket().bucket(&bucket).send())
        .unwrap();
    Env { rt, s3, bucket }
}

fn train(ckpt: &Path, model: &Path, uri: Option<&str>) -> Command {
    let mut c = Command::new(TRAIN);
    c.arg("--data")
        .arg("/nonexistent")
        .arg("--checkpoint-dir")
        .arg(ckpt)
        .arg("--model-dir")
        .arg(model)
        .env("SPOTCHECK_IMDS", "off")
        .env_remove("SM_MODEL_DIR")
        .env_remove("SM_CURRENT_HOST")
        .env("SPOTCHECK_OPT_ML", ckpt.with_extension("opt-ml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(u) = uri {
        c.arg("--checkpoint-s3-uri").arg(u);
    }
    for hp in HP {
        c.arg("--hp").arg(hp);
    }
    c
}

fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn finals(model: &Path) -> (Vec<u8>, Vec<u8>) {
    (
        std::fs::read(model.join("model.safetensors")).unwrap(),
        std::fs::read(model.join("optimizer.safetensors")).unwrap(),
    )
}

/// Trains until step `at` or later, then SIGTERM: the trainer checkpoints (and uploads) and
/// exits 143. The signal waits until a checkpoint older than the one the stop writes is in S3:
/// the mirror lags the steps on a busy machine, and the stop abandons uploads in flight.
fn stop_at(ckpt: &Path, model: &Path, uri: &str, at: u64) {
    stop_at_with(ckpt, model, uri, at, &[]);
}

/// [`stop_at`] with extra arguments; returns the run's S3 and checkpoint events (for failure
/// messages).
fn stop_at_with(ckpt: &Path, model: &Path, uri: &str, at: u64, extra: &[&str]) -> Vec<String> {
    let mut child = train(ckpt, model, Some(uri)).args(extra).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut mirrored: Option<u64> = None;
    let mut events = Vec::new();
    let mut keep_event = |line: String| {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        let event = v["event"].as_str().unwrap_or("");
        if event.starts_with("s3_") || event.starts_with("checkpoint") || event == "resumed" {
            events.push(line);
        }
        v
    };
    for line in lines.by_ref() {
        let v = keep_event(line.unwrap());
        if v["event"] == "s3_uploaded" {
            mirrored = mirrored.max(v["step"].as_u64());
        }
        let step = v["step"].as_u64().unwrap_or(0);
        if v["event"] == "step" && step >= at && mirrored.is_some_and(|m| step > m + 1) {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            break;
        }
    }
    for line in lines {
        keep_event(line.unwrap());
    }
    assert_eq!(child.wait().unwrap().code(), Some(143), "{events:#?}");
    events
}

fn reference(tmp: &Path) -> (Vec<u8>, Vec<u8>) {
    let model = tmp.join("ref-model");
    ok(train(&tmp.join("ref-ck"), &model, None).output().unwrap());
    finals(&model)
}

fn remote_steps(env: &Env, prefix: &str) -> Vec<String> {
    let out = env
        .rt
        .block_on(
            env.s3
                .list_objects_v2()
                .bucket(&env.bucket)
                .prefix(prefix)
                .send(),
        )
        .unwrap();
    let mut dirs: Vec<String> = out
        .contents()
        .iter()
        .filter_map(|o| o.key())
        .filter(|k| k.ends_with("/manifest.json"))
        .map(|k| k.trim_end_matches("/manifest.json").to_string())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn a_fresh_instance_resumes_from_s3_and_matches_the_uninterrupted_run() {
    let env = s3_env("resume");
    let tmp = tempfile::tempdir().unwrap();
    let want = reference(tmp.path());
    let uri = format!("s3://{}/runs/a", env.bucket);
    let (ck1, m1) = (tmp.path().join("i1-ck"), tmp.path().join("i1-model"));
    stop_at(&ck1, &m1, &uri, 11);

    // Every uploaded file carries the manifest's CRC-64/NVME as S3's full-object checksum, so
    // validation in S3 needs HeadObject only.
    let steps = remote_steps(&env, "runs/a/algo-1/");
    assert!(!steps.is_empty());
    let newest = steps.last().unwrap();
    let manifest_obj = env
        .rt
        .block_on(
            env.s3
                .get_object()
                .bucket(&env.bucket)
                .key(format!("{newest}/manifest.json"))
                .send(),
        )
        .unwrap();
    let manifest = Manifest::parse(
        &env.rt
            .block_on(manifest_obj.body.collect())
            .unwrap()
            .into_bytes(),
    )
    .unwrap();
    assert!(manifest.step >= 11);
    for f in &manifest.files {
        let h = env
            .rt
            .block_on(
                env.s3
                    .head_object()
                    .bucket(&env.bucket)
                    .key(format!("{newest}/{}", f.path))
                    .checksum_mode(ChecksumMode::Enabled)
                    .send(),
            )
            .unwrap();
        assert_eq!(
            h.checksum_crc64_nvme(),
            Some(f.crc64nvme.as_str()),
            "{}",
            f.path
        );
        assert_eq!(h.content_length(), Some(f.size as i64));
    }

    // A new instance: empty local disk, same S3 location.
    let (ck2, m2) = (tmp.path().join("i2-ck"), tmp.path().join("i2-model"));
    let log = ok(train(&ck2, &m2, Some(&uri)).output().unwrap());
    assert!(log.contains("\"s3_downloaded\""), "{log}");
    assert!(log.contains("\"resumed\""));
    assert!(finals(&m2) == want, "resumed-from-S3 run diverged");
}

#[test]
fn a_corrupt_remote_checkpoint_is_skipped_without_downloading_it() {
    let env = s3_env("corrupt");
    let tmp = tempfile::tempdir().unwrap();
    let want = reference(tmp.path());
    let uri = format!("s3://{}/r", env.bucket);
    stop_at(&tmp.path().join("i1-ck"), &tmp.path().join("i1-m"), &uri, 9);
    let steps = remote_steps(&env, "r/algo-1/");
    assert!(steps.len() >= 2, "{steps:?}");
    // Overwrite the newest checkpoint's weights with other bytes: S3's checksum no longer
    // matches the manifest.
    let newest = steps.last().unwrap().clone();
    env.rt
        .block_on(
            env.s3
                .put_object()
                .bucket(&env.bucket)
                .key(format!("{newest}/model.safetensors"))
                .body(ByteStream::from(vec![7u8; 100]))
                .send(),
        )
        .unwrap();
    let (ck2, m2): (PathBuf, PathBuf) = (tmp.path().join("i2-ck"), tmp.path().join("i2-m"));
    let log = ok(train(&ck2, &m2, Some(&uri)).output().unwrap());
    assert!(log.contains("\"s3_checkpoint_skipped\""), "{log}");
    let older = &steps[steps.len() - 2];
    let older_name = older.trim_start_matches("r/");
    assert!(
        log.contains(&format!("\"checkpoint\":\"{older_name}\"")),
        "should resume from {older_name}: {log}"
    );
    // The corrupt checkpoint was never fetched.
    assert!(!ck2.join(newest.trim_start_matches("r/")).exists());
    assert!(finals(&m2) == want);
}

#[test]
fn retention_prunes_s3_too_but_only_this_hosts_checkpoints() {
    let env = s3_env("prune");
    let tmp = tempfile::tempdir().unwrap();
    let uri = format!("s3://{}/p", env.bucket);
    // Another host's checkpoint under the same prefix (all hosts of a job share it).
    let other = "p/algo-2/step-000000000001/manifest.json";
    env.rt
        .block_on(
            env.s3
                .put_object()
                .bucket(&env.bucket)
                .key(other)
                .body(ByteStream::from_static(b"{}"))
                .send(),
        )
        .unwrap();
    // Three runs on the same instance, each stopped by SIGTERM at a later step, then one to
    // the end. A stopped run uploads its last checkpoint before it exits (pruning waits for a
    // later upload: the deadline is for the checkpoint); periodic uploads and the completion
    // prune S3.
    let ck = tmp.path().join("ck");
    // 720 steps, so that each SIGTERM lands long before the end (a stop overshoots its step by
    // the mirror's lag: one aimed at 60 stopped at 147 in CI, and the next run, aimed at 120,
    // reached a 240-step run's end before its first upload).
    let keep = ["--hp", "keep_checkpoints=2", "--hp", "epochs=120"];
    for at in [5, 60, 120] {
        let events = stop_at_with(&ck, &tmp.path().join("m"), &uri, at, &keep);
        let remote = remote_steps(&env, "p/algo-1/");
        let newest: u64 = remote
            .last()
            .unwrap()
            .trim_start_matches("p/algo-1/step-")
            .parse()
            .unwrap();
        assert!(
            newest >= at,
            "the stop's checkpoint is in S3: {remote:?}; {events:#?}"
        );
        // An upload the stop abandoned for the final one may have finished its manifest
        // before it was dropped: complete in S3, pruned by a later run's next upload.
        let abandoned = events
            .iter()
            .filter(|e| e.contains("\"s3_upload_abandoned\""))
            .count();
        assert!(
            remote.len() <= 3 + abandoned,
            "at most keep + the unpruned last (+ an abandoned upload): {remote:?}; {events:#?}"
        );
    }
    ok(train(&ck, &tmp.path().join("m"), Some(&uri))
        .args(keep)
        .output()
        .unwrap());
    let remote = remote_steps(&env, "p/algo-1/");
    let mut local: Vec<String> = std::fs::read_dir(ck.join("algo-1"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("manifest.json").exists())
        .map(|e| format!("p/algo-1/{}", e.file_name().to_string_lossy()))
        .collect();
    local.sort();
    assert_eq!(remote.len(), 2, "{remote:?}");
    assert_eq!(
        remote.last().map(String::as_str),
        Some("p/algo-1/step-000000000720"),
        "the completed run's checkpoint is kept"
    );
    assert_eq!(remote, local, "S3 keeps what the local root keeps");
    // No file of a pruned checkpoint is left behind, and the other host's is untouched.
    let keys: Vec<String> = env
        .rt
        .block_on(
            env.s3
                .list_objects_v2()
                .bucket(&env.bucket)
                .prefix("p/")
                .send(),
        )
        .unwrap()
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
    assert!(keys.contains(&other.to_string()));
    for key in keys.iter().filter(|k| k.starts_with("p/algo-1/")) {
        assert!(
            remote.iter().any(|dir| key.starts_with(&format!("{dir}/"))),
            "{key} belongs to a pruned checkpoint"
        );
    }
}
