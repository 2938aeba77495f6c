//! Checkpoint judging from S3 observations: HeadObject results through the protocol crate.

use spotcheck_aws::{validate_checkpoints, ErrorKind, ValidationOptions};
use spotcheck_protocol::{FileDigest, FileEntry, Manifest, Status, MAX_MANIFEST_BYTES};

use crate::fakes::FakeStore;

pub const BUCKET: &str = "ckpt-bucket";
pub const URI: &str = "s3://ckpt-bucket/runs/train";

/// Writes a checkpoint into the fake store as SageMaker's uploader would leave it, manifest
/// included; returns the manifest key.
pub fn put_checkpoint(store: &FakeStore, ns: &str, step: u64, finished: bool) -> String {
    put_checkpoint_at(store, URI, ns, step, finished)
}

/// `s3://bucket/prefix` → (bucket, `prefix/`).
fn split(uri: &str) -> (String, String) {
    let (bucket, prefix) = uri.strip_prefix("s3://").unwrap().split_once('/').unwrap();
    (
        bucket.to_owned(),
        format!("{}/", prefix.trim_end_matches('/')),
    )
}

/// Puts one object at `path` relative to the checkpoint URI `uri`.
pub fn put_file_at(store: &FakeStore, uri: &str, path: &str, bytes: &[u8]) {
    let (bucket, prefix) = split(uri);
    store.put(&bucket, &format!("{prefix}{path}"), bytes);
}

/// [`put_checkpoint`] under any checkpoint URI.
pub fn put_checkpoint_at(
    store: &FakeStore,
    uri: &str,
    ns: &str,
    step: u64,
    finished: bool,
) -> String {
    let (bucket, prefix) = split(uri);
    let files: [(&str, Vec<u8>); 2] = [
        ("model.safetensors", format!("model@{step}").into_bytes()),
        (
            "optimizer.safetensors",
            format!("optimizer state @{step}").into_bytes(),
        ),
    ];
    let dir = format!("{prefix}{ns}/step-{step:012}");
    let mut entries = Vec::new();
    for (path, bytes) in &files {
        store.put(&bucket, &format!("{dir}/{path}"), bytes);
        let digest = FileDigest::of(bytes);
        entries.push(FileEntry {
            path: (*path).into(),
            size: digest.size,
            sha256: digest.sha256_hex(),
            crc64nvme: digest.crc64nvme_base64(),
        });
    }
    let manifest = Manifest {
        format_version: 1,
        step,
        namespace: ns.into(),
        created_at_ms: 1_717_000_000_000 + step,
        meta: Some(serde_json::json!({ "finished": finished })),
        files: entries,
    };
    let key = format!("{dir}/manifest.json");
    store.put(&bucket, &key, &manifest.to_json_bytes().unwrap());
    key
}

fn key(step: u64, path: &str) -> String {
    format!("runs/train/algo-1/step-{step:012}/{path}")
}

async fn validate(store: &FakeStore) -> spotcheck_aws::CheckpointValidation {
    validate_checkpoints(store, URI, ValidationOptions::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn newest_valid_checkpoint_is_found_with_one_head_per_file() {
    let store = FakeStore::default();
    put_checkpoint(&store, "algo-1", 1100, false);
    put_checkpoint(&store, "algo-1", 1200, true);
    let v = validate(&store).await;
    assert_eq!(v.summary.latest_valid_step, Some(1200));
    assert!(v.summary.finished);
    assert!(!v.summary.any_corrupt);
    assert_eq!(v.latest_valid.as_deref(), Some("algo-1/step-000000001200"));
    assert_eq!(v.not_judged, 1, "older checkpoints are not judged");
    assert_eq!(store.calls.get("ListObjectsV2"), 1);
    assert_eq!(store.calls.get("GetObject"), 1);
    assert_eq!(store.calls.get("HeadObject"), 2);
    assert_eq!(
        *store.max_range.lock().unwrap(),
        MAX_MANIFEST_BYTES as u64 + 1
    );
}

#[tokio::test]
async fn missing_file_is_incomplete_and_the_older_one_is_used() {
    let store = FakeStore::default();
    put_checkpoint(&store, "algo-1", 1100, false);
    put_checkpoint(&store, "algo-1", 1200, false);
    store
        .objects
        .lock()
        .unwrap()
        .remove(&(BUCKET.into(), key(1200, "optimizer.safetensors")));
    let v = validate(&store).await;
    assert_eq!(v.summary.latest_valid_step, Some(1100));
    assert!(!v.summary.any_corrupt);
    assert_eq!(v.checkpoints[0].status, Status::Incomplete);
    assert!(!v.summary.finished);
}

#[tokio::test]
async fn size_mismatch_is_corrupt_without_a_head() {
    let store = FakeStore::default();
    put_checkpoint(&store, "algo-1", 1100, false);
    put_checkpoint(&store, "algo-1", 1200, false);
    store.put(BUCKET, &key(1200, "model.safetensors"), b"trunc");
    let v = validate(&store).await;
    assert_eq!(v.checkpoints[0].status, Status::Corrupt);
    assert!(v.summary.any_corrupt);
    assert_eq!(v.summary.latest_valid_step, Some(1100));
    assert_eq!(v.corrupt().count(), 1);
    // Only the valid older checkpoint's two files were HEADed.
    assert_eq!(store.calls.get("HeadObject"), 2);
}

#[tokio::test]
async fn crc_mismatch_is_corrupt() {
    let store = FakeStore::default();
    put_checkpoint(&store, "algo-1", 1200, false);
    let same_size = b"model@9999".to_vec();
    assert_eq!(same_size.len(), "model@1200".len());
    // Same size, different bytes: S3's CRC differs from the manifest's.
    store.put(BUCKET, &key(1200, "model.safetensors"), &same_size);
    let v = validate(&store).await;
    assert_eq!(v.checkpoints[0].status, Status::Corrupt);
    assert!(v.checkpoints[0]
        .reason
        .as_ref()
        .unwrap()
        .to_string()
        .contains("crc64nvme"));
    assert_eq!(v.summary.latest_valid_step, None);
}

#[tokio::test]
async fn upload_markers_are_ignored_and_do_not_stand_for_files() {
    let store = FakeStore::default();
    put_checkpoint(&store, "algo-1", 1200, false);
    for marker in [
        "model.safetensors.sagemaker-uploaded",
        "optimizer.safetensors.sagemaker-uploading",
    ] {
        store.put(BUCKET, &key(1200, marker), b"");
    }
    store.put(
        BUCKET,
        "runs/train/algo-1/step-000000001300/manifest.json.sagemaker-uploading",
        b"",
    );
    let v = validate(&store).await;
    assert_eq!(v.summary.latest_valid_step, Some(1200));
    assert_eq!(v.checkpoints.len(), 1, "a marker alone is no checkpoint");

    // A file present only as its marker is missing.
    store
        .objects
        .lock()
        .unwrap()
        .remove(&(BUCKET.into(), key(1200, "optimizer.safetensors")));
    let v = validate(&store).await;
    assert_eq!(v.checkpoints[0].status, Status::Incomplete);
}

#[tokio::test]
async fn oversized_manifest_is_corrupt_and_costs_one_ranged_get() {
    let store = FakeStore::default();
    let manifest_key = put_checkpoint(&store, "algo-1", 1200, false);
    store.put(
        BUCKET,
        &manifest_key,
        &vec![b' '; MAX_MANIFEST_BYTES + 4096],
    );
    let v = validate(&store).await;
    assert_eq!(v.checkpoints[0].status, Status::Corrupt);
    assert!(v.checkpoints[0]
        .reason
        .as_ref()
        .unwrap()
        .to_string()
        .contains("limit"));
    assert_eq!(store.calls.get("HeadObject"), 0);
}

#[tokio::test]
async fn objects_without_crc64nvme_are_stream_hashed_or_checked_by_size() {
    let store = FakeStore::default();
    put_checkpoint(&store, "algo-1", 1200, false);
    let model = b"model@1200".to_vec();
    store.put_with(BUCKET, &key(1200, "model.safetensors"), &model, None);
    let v = validate(&store).await;
    assert_eq!(v.summary.latest_valid_step, Some(1200));
    assert_eq!(store.calls.get("GetObject(stream)"), 1);
    assert!(v.size_only.is_empty());

    let options = ValidationOptions {
        stream_hash_limit_bytes: 4,
        ..ValidationOptions::default()
    };
    let v = validate_checkpoints(&store, URI, options).await.unwrap();
    assert_eq!(v.summary.latest_valid_step, Some(1200));
    assert_eq!(v.size_only, ["algo-1/step-000000001200/model.safetensors"]);
}

#[tokio::test]
async fn highest_step_across_namespaces_and_no_manifest_is_incomplete() {
    let store = FakeStore::default();
    put_checkpoint(&store, "algo-1", 1200, false);
    put_checkpoint(&store, "algo-2", 1300, false);
    store.put(
        BUCKET,
        "runs/train/algo-1/step-000000001400/model.safetensors",
        b"x",
    );
    let v = validate(&store).await;
    assert_eq!(v.latest_valid.as_deref(), Some("algo-2/step-000000001300"));
    assert_eq!(v.checkpoints[0].status, Status::Incomplete);
    assert_eq!(v.checkpoints[0].name, "algo-1/step-000000001400");
}

#[tokio::test]
async fn empty_prefix_and_transient_failures() {
    let store = FakeStore::default();
    let v = validate(&store).await;
    assert_eq!(v.summary, Default::default());
    store.fail.inject("HeadObject", ErrorKind::Transient);
    put_checkpoint(&store, "algo-1", 1200, false);
    let err = validate_checkpoints(&store, URI, ValidationOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, spotcheck_aws::checkpoints::ValidationError::Aws(e) if e.is_transient()));
    assert!(
        validate_checkpoints(&store, "https://x/y", ValidationOptions::default())
            .await
            .is_err()
    );
}
