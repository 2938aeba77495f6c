//! Checkpoints written by the real trainer, mirrored to LocalStack S3 with
//! `--checkpoint-s3-uri`, judged by the control plane's S3 validator
//! (`spotcheck_aws::validate_checkpoints` over `S3Checkpoints`, what the handler runs): valid
//! as written; torn (manifest or a data file missing) and corrupted (same-size overwrite,
//! truncation, garbage manifest) variants as such — and never by downloading data: the only
//! GET is the ranged GET of each judged manifest, the data files are judged by the listing's
//! sizes and HeadObject's full-object CRC-64/NVME. Requests are counted twice: by a counting
//! `CheckpointStore` around the adapter, and on the wire by a pass-through proxy in front of
//! LocalStack.
//!
//! The trainer is the `train` binary of `spotcheck-trainer`, which `cargo test --workspace`
//! builds into the same target directory (its own integration tests need it); `SPOTCHECK_TRAIN`
//! names another one.

use std::path::PathBuf;
use std::process::Stdio;

use spotcheck_aws::{validate_checkpoints, CheckpointValidation, S3Checkpoints, ValidationOptions};
use spotcheck_protocol::{Reason, Status};
use spotcheck_tests::checkpoints::{copy_prefix, delete, get, put, CountingStore};
use spotcheck_tests::emulators::{self, sdk_config, Emulators, Tuning};
use spotcheck_tests::proxy::FaultProxy;

/// The `train` binary (see the module doc).
pub(crate) fn train_exe() -> PathBuf {
    if let Some(p) = std::env::var_os("SPOTCHECK_TRAIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    // target/debug/deps/replay-… → target/debug/train
    let exe = std::env::current_exe().expect("the test binary's path");
    let train = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("train"))
        .expect("a target directory");
    assert!(
        train.exists(),
        "the trainer binary {} is missing: `cargo test --workspace` (scripts/test-all.sh) \
         builds it, or `cargo build -p spotcheck-trainer --bin train`; SPOTCHECK_TRAIN may name \
         another",
        train.display()
    );
    train
}

/// A short synthetic run checkpointing every 2 steps (the trainer's own S3 test settings).
const HP: &[&str] = &[
    "dataset=synthetic",
    "num_classes=4",
    "image_size=8",
    "synthetic_samples=96",
    "batch_size=16",
    "epochs=1",
    "model_depth=1",
    "model_width=4",
    "model_hidden=16",
    "checkpoint_adaptive=false",
    "checkpoint_every_steps=2",
    "backend=cpu",
];

/// Runs the trainer to completion with `--checkpoint-s3-uri s3://bucket/prefix`.
async fn train_to_s3(e: &Emulators, bucket: &str, prefix: &str) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut cmd = tokio::process::Command::new(train_exe());
    cmd.arg("--data")
        .arg("/nonexistent")
        .arg("--checkpoint-dir")
        .arg(dir.path().join("checkpoints"))
        .arg("--model-dir")
        .arg(dir.path().join("model"))
        .arg("--checkpoint-s3-uri")
        .arg(format!("s3://{bucket}/{prefix}"))
        .env("SPOTCHECK_IMDS", "off")
        .env("SPOTCHECK_OPT_ML", dir.path().join("opt-ml"))
        .env_remove("SM_MODEL_DIR")
        .env_remove("SM_CURRENT_HOST")
        .env("AWS_ENDPOINT_URL_S3", &e.s3)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", emulators::REGION)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for hp in HP {
        cmd.arg("--hp").arg(hp);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(300), cmd.output())
        .await
        .expect("the trainer finished within 300 s")
        .expect("running the trainer");
    assert!(
        out.status.success(),
        "train failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Steps of the checkpoints under `prefix/algo-1/` that have a manifest, ascending.
async fn steps(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<String> {
    let mut dirs: Vec<String> = emulators::objects(s3, bucket, &format!("{prefix}/algo-1/"))
        .await
        .into_iter()
        .filter_map(|(k, _)| k.strip_suffix("/manifest.json").map(str::to_owned))
        .collect();
    dirs.sort();
    dirs
}

/// What one validation cost.
#[derive(Debug)]
pub(crate) struct Cost {
    /// Keys fetched with GetObject, on the wire.
    pub(crate) gets: Vec<String>,
    /// HeadObject requests on the wire.
    pub(crate) heads: usize,
    /// ListObjectsV2 requests on the wire.
    pub(crate) lists: usize,
    /// Whole-object stream hashes (the fallback).
    pub(crate) streamed: usize,
}

/// Validates `s3://bucket/prefix` through a counting store over a counting proxy.
pub(crate) async fn validate(
    e: &Emulators,
    bucket: &str,
    prefix: &str,
) -> (CheckpointValidation, Cost) {
    let proxy = FaultProxy::start(&e.s3).await;
    let s3 = spotcheck_aws::sdk::s3_client(
        &sdk_config(&proxy.endpoint(), &Tuning::lambda().await),
        true,
    );
    let store = CountingStore::new(S3Checkpoints::new(s3));
    let validation = validate_checkpoints(
        &store,
        &format!("s3://{bucket}/{prefix}"),
        ValidationOptions::default(),
    )
    .await
    .expect("validation ran");
    let gets = proxy
        .seen()
        .iter()
        .filter(|s| s.info.operation() == "GetObject")
        .filter_map(|s| s.info.s3_key())
        .collect();
    let cost = Cost {
        gets,
        heads: proxy.count("HeadObject"),
        lists: proxy.count("ListObjectsV2"),
        streamed: store
            .counts
            .streamed
            .load(std::sync::atomic::Ordering::SeqCst),
    };
    assert_eq!(
        store.counts.ranged_get_keys().len(),
        cost.gets.len(),
        "every GET on the wire is the validator's ranged manifest GET"
    );
    (validation, cost)
}

pub(crate) fn assert_no_data_download(what: &str, cost: &Cost) {
    assert!(
        cost.gets.iter().all(|k| k.ends_with("/manifest.json")),
        "{what}: only manifests are fetched, never data: {cost:?}"
    );
    assert_eq!(
        cost.streamed, 0,
        "{what}: no stream-hash fallback: {cost:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trainer_checkpoints_in_s3_are_judged_valid_torn_and_corrupt_without_downloads() {
    let e = Emulators::from_env();
    let s3 = emulators::s3(&e.s3).await;
    let bucket = emulators::bucket(&s3, "replay-ckpt").await;
    train_to_s3(&e, &bucket, "run").await;
    let written = steps(&s3, &bucket, "run").await;
    // Every 2 steps while no upload is in flight (the trainer skips a periodic checkpoint
    // that comes due during one), and the final one: at least step 2 and the last.
    assert!(
        written.len() >= 2,
        "the run left at least two checkpoints in S3: {written:?}"
    );
    let name = |dir: &str| dir.trim_start_matches("run/").to_owned();
    let newest = written.last().cloned().unwrap_or_default();
    let previous = written[written.len() - 2].clone();
    let files: Vec<String> = emulators::objects(&s3, &bucket, &format!("{newest}/"))
        .await
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| !k.ends_with("/manifest.json"))
        .collect();
    assert!(
        files.len() >= 2,
        "a checkpoint holds several files: {files:?}"
    );

    // As written: the newest is valid, judged from one manifest GET and one HEAD per file.
    let (v, cost) = validate(&e, &bucket, "run").await;
    assert_eq!(
        v.latest_valid.as_deref(),
        Some(name(&newest).as_str()),
        "{v:?}"
    );
    assert_eq!(v.checkpoints.len(), 1, "only the newest is judged: {v:?}");
    assert_eq!(v.not_judged, written.len() - 1);
    assert!(
        v.size_only.is_empty(),
        "S3 holds a CRC-64/NVME for every file the trainer uploaded"
    );
    assert!(!v.summary.any_corrupt);
    assert_eq!(
        cost.gets,
        vec![format!("{newest}/manifest.json")],
        "{cost:?}"
    );
    assert_eq!(cost.heads, files.len(), "one HEAD per file: {cost:?}");
    assert_eq!(cost.lists, 1);
    assert_no_data_download("valid", &cost);

    // Variants, each a copy of the run under its own prefix with the newest checkpoint broken.
    let file = |f: &str| {
        files
            .iter()
            .find(|k| k.ends_with(f))
            .cloned()
            .unwrap_or_else(|| panic!("the checkpoint has {f}: {files:?}"))
    };
    let model = file("model.safetensors");
    let optimizer = file("optimizer.safetensors");
    struct Variant {
        name: &'static str,
        status: Status,
        reason: fn(&Reason) -> bool,
        judged_by_head: bool,
    }
    let variants = [
        Variant {
            name: "torn-no-manifest",
            status: Status::Incomplete,
            reason: |r| matches!(r, Reason::NoManifest),
            judged_by_head: false,
        },
        Variant {
            name: "torn-missing-file",
            status: Status::Incomplete,
            reason: |r| matches!(r, Reason::MissingFile { .. }),
            judged_by_head: false,
        },
        Variant {
            name: "corrupt-same-size",
            status: Status::Corrupt,
            reason: |r| matches!(r, Reason::ChecksumMismatch { .. }),
            judged_by_head: true,
        },
        Variant {
            name: "corrupt-truncated",
            status: Status::Corrupt,
            reason: |r| matches!(r, Reason::SizeMismatch { .. }),
            judged_by_head: false,
        },
        Variant {
            name: "corrupt-manifest",
            status: Status::Corrupt,
            reason: |r| matches!(r, Reason::BadManifest(_)),
            judged_by_head: false,
        },
    ];
    for variant in &variants {
        let prefix = variant.name;
        copy_prefix(&s3, &bucket, "run", prefix).await;
        let moved = |key: &str| key.replacen("run/", &format!("{prefix}/"), 1);
        match variant.name {
            "torn-no-manifest" => {
                delete(&s3, &bucket, &moved(&format!("{newest}/manifest.json"))).await
            }
            "torn-missing-file" => delete(&s3, &bucket, &moved(&model)).await,
            "corrupt-same-size" => {
                let mut bytes = get(&s3, &bucket, &moved(&optimizer)).await;
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x5a;
                put(&s3, &bucket, &moved(&optimizer), bytes).await;
            }
            "corrupt-truncated" => {
                let mut bytes = get(&s3, &bucket, &moved(&model)).await;
                bytes.truncate(bytes.len() / 2);
                put(&s3, &bucket, &moved(&model), bytes).await;
            }
            "corrupt-manifest" => {
                put(
                    &s3,
                    &bucket,
                    &moved(&format!("{newest}/manifest.json")),
                    b"{\"format_version\": 1, \"files\": [".to_vec(),
                )
                .await
            }
            other => unreachable!("{other}"),
        }
        let (v, cost) = validate(&e, &bucket, prefix).await;
        let what = variant.name;
        assert_eq!(
            v.checkpoints.len(),
            2,
            "{what}: the newest and the previous are judged: {v:?}"
        );
        let broken = &v.checkpoints[0];
        assert_eq!(broken.name, name(&newest), "{what}");
        assert_eq!(broken.status, variant.status, "{what}: {broken:?}");
        assert!(
            broken.reason.as_ref().is_some_and(variant.reason),
            "{what}: {:?}",
            broken.reason
        );
        assert_eq!(
            v.latest_valid.as_deref(),
            Some(name(&previous).as_str()),
            "{what}: falls back one"
        );
        assert_eq!(
            v.summary.any_corrupt,
            variant.status == Status::Corrupt,
            "{what}"
        );
        assert_no_data_download(what, &cost);
        // The broken one costs a HEAD per file only when the listing could not already tell.
        let heads_for_previous = files.len();
        let heads_for_broken = if variant.judged_by_head {
            files.len()
        } else {
            0
        };
        assert_eq!(
            cost.heads,
            heads_for_previous + heads_for_broken,
            "{what}: {cost:?}"
        );
    }

    // Every checkpoint corrupt: nothing to resume from, each judged, still no data GET.
    let prefix = "corrupt-all";
    copy_prefix(&s3, &bucket, "run", prefix).await;
    for dir in &written {
        let key = format!(
            "{}/model.safetensors",
            dir.replacen("run/", &format!("{prefix}/"), 1)
        );
        let mut bytes = get(&s3, &bucket, &key).await;
        bytes[0] ^= 0xff;
        put(&s3, &bucket, &key, bytes).await;
    }
    let (v, cost) = validate(&e, &bucket, prefix).await;
    assert_eq!(v.latest_valid, None, "{v:?}");
    assert_eq!(v.checkpoints.len(), written.len());
    assert!(
        v.checkpoints.iter().all(|c| c.status == Status::Corrupt),
        "{v:?}"
    );
    assert!(v.summary.any_corrupt);
    assert_eq!(v.summary.latest_valid_step, None);
    assert_no_data_download("corrupt-all", &cost);
    assert_eq!(
        cost.gets.len(),
        written.len(),
        "one manifest GET per checkpoint: {cost:?}"
    );
}
