//! Checkpoint validation over S3: real checkpoints, written by the trainer's
//! `spotcheck_protocol::CheckpointWriter` to a temporary directory and uploaded into the fake
//! store key by key (as SageMaker's uploader or the trainer's S3 mirror leaves them), then
//! damaged in the ways uploads and people damage them. Each test asserts the verdicts and what
//! the validation cost: which objects were read, how many requests, how many at once.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{json, Value};
use spotcheck_aws::checkpoints::ValidationError;
use spotcheck_aws::{validate_checkpoints, CheckpointValidation, ErrorKind, ValidationOptions};
use spotcheck_protocol::{CheckpointWriter, Status, MANIFEST_FILE, MAX_MANIFEST_BYTES};

use spotcheck_control::Validation;

use crate::fakes::FakeStore;

pub const BUCKET: &str = "ckpt-bucket";
pub const URI: &str = "s3://ckpt-bucket/runs/train";
const PREFIX: &str = "runs/train/";

/// A directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "spotcheck-aws-shell-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a leftover temporary directory must not fail a test.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every file under `dir`, as (path relative to `root` with '/', bytes).
fn files_under(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(root, &path, out);
        } else {
            let rel = path.strip_prefix(root).unwrap();
            let rel: Vec<_> = rel.iter().map(|c| c.to_str().unwrap()).collect();
            out.push((rel.join("/"), std::fs::read(&path).unwrap()));
        }
    }
}

/// Writes checkpoint `ns/step` with `files` through `CheckpointWriter` (manifest last, as the
/// trainer does) and returns every object of it, keyed relative to the checkpoint root.
fn write_checkpoint(
    ns: &str,
    step: u64,
    files: &[(&str, Vec<u8>)],
    finished: bool,
) -> Vec<(String, Vec<u8>)> {
    let root = TempDir::new();
    let mut pending = CheckpointWriter::begin(&root.0, ns, step).unwrap();
    for (path, bytes) in files {
        pending.write_bytes(path, bytes).unwrap();
    }
    pending
        .commit(
            1_717_000_000_000 + step,
            Some(json!({ "finished": finished })),
        )
        .unwrap();
    let mut out = Vec::new();
    files_under(&root.0, &root.0, &mut out);
    out.sort();
    out
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

/// Uploads `objects` (from [`write_checkpoint`]) under `uri`, with S3's CRC-64/NVME.
fn upload(store: &FakeStore, uri: &str, objects: &[(String, Vec<u8>)]) {
    for (path, bytes) in objects {
        put_file_at(store, uri, path, bytes);
    }
}

/// The two-file checkpoint most tests use (`model@<step>`, `optimizer state @<step>`), written
/// by `CheckpointWriter` and uploaded under `uri`; returns the manifest key.
pub fn put_checkpoint_at(
    store: &FakeStore,
    uri: &str,
    ns: &str,
    step: u64,
    finished: bool,
) -> String {
    let files = [
        ("model.safetensors", format!("model@{step}").into_bytes()),
        (
            "optimizer.safetensors",
            format!("optimizer state @{step}").into_bytes(),
        ),
    ];
    upload(store, uri, &write_checkpoint(ns, step, &files, finished));
    let (_, prefix) = split(uri);
    format!("{prefix}{ns}/step-{step:012}/{MANIFEST_FILE}")
}

/// [`put_checkpoint_at`] under [`URI`].
pub fn put_checkpoint(store: &FakeStore, ns: &str, step: u64, finished: bool) -> String {
    put_checkpoint_at(store, URI, ns, step, finished)
}

fn key(step: u64, path: &str) -> String {
    format!("{PREFIX}algo-1/step-{step:012}/{path}")
}

async fn validate(store: &FakeStore) -> CheckpointValidation {
    validate_checkpoints(store, URI, ValidationOptions::default())
        .await
        .unwrap()
}

fn reason(v: &CheckpointValidation, index: usize) -> String {
    v.checkpoints[index].reason.as_ref().unwrap().to_string()
}

/// `n` files of `size` bytes each, distinct contents.
fn sized_files(n: usize, size: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let mut bytes = vec![(i % 251) as u8; size];
            bytes[0] = i as u8;
            (format!("shard-{i:03}.safetensors"), bytes)
        })
        .collect()
}

fn as_refs(files: &[(String, Vec<u8>)]) -> Vec<(&str, Vec<u8>)> {
    files.iter().map(|(p, b)| (p.as_str(), b.clone())).collect()
}

#[tokio::test]
async fn a_checkpoint_written_by_the_trainer_validates_reading_only_its_manifest() {
    let store = FakeStore::default();
    let files = [
        ("model.safetensors", vec![7u8; 4096]),
        ("optimizer/adam.safetensors", vec![9u8; 8192]),
        ("trainer_state.json", br#"{"step":1200,"epoch":3}"#.to_vec()),
    ];
    let objects = write_checkpoint("algo-1", 1200, &files, true);
    let names: Vec<&str> = objects.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        names,
        [
            "algo-1/step-000000001200/manifest.json",
            "algo-1/step-000000001200/model.safetensors",
            "algo-1/step-000000001200/optimizer/adam.safetensors",
            "algo-1/step-000000001200/trainer_state.json",
        ],
        "the writer leaves exactly the files and the manifest"
    );
    upload(&store, URI, &objects);
    let v = validate(&store).await;
    assert_eq!(v.summary.latest_valid_step, Some(1200));
    assert!(v.summary.finished);
    assert!(!v.summary.any_corrupt);
    assert_eq!(v.latest_valid.as_deref(), Some("algo-1/step-000000001200"));
    assert_eq!(v.checkpoints.len(), 1);
    assert_eq!(v.checkpoints[0].status, Status::Valid);
    // Cost: one LIST, one ranged GET of the manifest, one HEAD per file; no data file is read.
    assert_eq!(store.calls.get("ListObjectsV2"), 1);
    assert_eq!(store.calls.get("HeadObject"), 3);
    assert_eq!(*store.gets.lock().unwrap(), [key(1200, MANIFEST_FILE)]);
    let manifest_len = objects[0].1.len() as u64;
    assert_eq!(*store.bytes_read.lock().unwrap(), manifest_len);
    assert_eq!(
        *store.max_range.lock().unwrap(),
        MAX_MANIFEST_BYTES as u64 + 1,
        "the GET is ranged to the manifest limit plus one byte"
    );
    assert_eq!(store.calls.get("GetObject(stream)"), 0);
}

#[tokio::test]
async fn the_newest_valid_checkpoint_ends_the_walk() {
    let store = FakeStore::default();
    for step in [100, 200, 300, 400, 500] {
        put_checkpoint(&store, "algo-1", step, false);
    }
    let v = validate(&store).await;
    assert_eq!(v.summary.latest_valid_step, Some(500));
    assert_eq!(v.not_judged, 4, "older checkpoints are not judged");
    assert_eq!(store.calls.get("GetObject"), 1);
    assert_eq!(store.calls.get("HeadObject"), 2);
}

#[tokio::test]
async fn a_torn_upload_without_its_manifest_is_incomplete_and_costs_no_read() {
    let store = FakeStore::default();
    put_checkpoint(&store, "algo-1", 1100, false);
    // Step 1200: the data files landed, the manifest is still uploading.
    let objects = write_checkpoint(
        "algo-1",
        1200,
        &[("model.safetensors", b"model@1200".to_vec())],
        false,
    );
    for (path, bytes) in &objects {
        if path.ends_with(MANIFEST_FILE) {
            put_file_at(&store, URI, &format!("{path}.sagemaker-uploading"), b"");
        } else {
            put_file_at(&store, URI, path, bytes);
        }
    }
    let v = validate(&store).await;
    assert_eq!(v.checkpoints[0].name, "algo-1/step-000000001200");
    assert_eq!(v.checkpoints[0].status, Status::Incomplete);
    assert_eq!(reason(&v, 0), "no manifest");
    assert!(!v.summary.any_corrupt, "incomplete is not corrupt");
    assert_eq!(v.summary.latest_valid_step, Some(1100));
    // Only the older checkpoint was read.
    assert_eq!(*store.gets.lock().unwrap(), [key(1100, MANIFEST_FILE)]);
    assert_eq!(store.calls.get("HeadObject"), 2);
}

#[tokio::test]
async fn a_missing_file_is_incomplete_and_the_older_checkpoint_is_used() {
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
    assert!(reason(&v, 0).contains("optimizer.safetensors"));
    // Judged from the listing alone: the HEADs were for step 1100.
    assert_eq!(store.calls.get("HeadObject"), 2);
}

#[tokio::test]
async fn a_size_mismatch_is_corrupt_without_a_head() {
    let store = FakeStore::default();
    put_checkpoint(&store, "algo-1", 1100, false);
    put_checkpoint(&store, "algo-1", 1200, false);
    store.put(BUCKET, &key(1200, "model.safetensors"), b"trunc");
    let v = validate(&store).await;
    assert_eq!(v.checkpoints[0].status, Status::Corrupt);
    assert_eq!(
        reason(&v, 0),
        "file \"model.safetensors\" is 5 bytes, manifest says 10"
    );
    assert!(v.summary.any_corrupt);
    assert_eq!(v.summary.latest_valid_step, Some(1100));
    assert_eq!(v.corrupt().count(), 1);
    assert_eq!(
        store.calls.get("HeadObject"),
        2,
        "only the valid older checkpoint's two files were HEADed"
    );
}

#[tokio::test]
async fn a_crc_mismatch_is_corrupt() {
    let store = FakeStore::default();
    put_checkpoint(&store, "algo-1", 1200, false);
    // Same size, different bytes: S3's CRC differs from the manifest's.
    store.put(BUCKET, &key(1200, "model.safetensors"), b"model@9999");
    let v = validate(&store).await;
    assert_eq!(v.checkpoints[0].status, Status::Corrupt);
    assert!(reason(&v, 0).contains("crc64nvme"), "{}", reason(&v, 0));
    assert_eq!(v.summary.latest_valid_step, None);
    assert!(v.summary.any_corrupt);
    assert_eq!(store.calls.get("HeadObject"), 2);
    assert_eq!(store.calls.get("GetObject(stream)"), 0);
}

/// Replaces the manifest of step 1200 by `manifest` (any JSON), keeping the data files.
fn put_manifest(store: &FakeStore, manifest: &Value) {
    let bytes = serde_json::to_vec_pretty(manifest).unwrap();
    store.put(BUCKET, &key(1200, MANIFEST_FILE), &bytes);
}

fn manifest_of(store: &FakeStore) -> Value {
    let objects = store.objects.lock().unwrap();
    serde_json::from_slice(&objects[&(BUCKET.to_owned(), key(1200, MANIFEST_FILE))].bytes).unwrap()
}

#[tokio::test]
async fn hostile_manifests_are_corrupt_and_cost_no_head() {
    let hostile_paths = [
        "../step-000000001100/model.safetensors",
        "/etc/passwd",
        "a/./model.safetensors",
        "a//model.safetensors",
        "a\\model.safetensors",
        "manifest.json",
        "model.safetensors.sagemaker-uploading",
        "x.sagemaker-ignore",
        "",
    ];
    for path in hostile_paths {
        let store = FakeStore::default();
        put_checkpoint(&store, "algo-1", 1200, false);
        // The object the path would reach, if it were followed.
        store.put(
            BUCKET,
            &format!("{PREFIX}algo-1/step-000000001100/model.safetensors"),
            b"x",
        );
        let mut manifest = manifest_of(&store);
        manifest["files"][0]["path"] = json!(path);
        put_manifest(&store, &manifest);
        let v = validate(&store).await;
        assert_eq!(v.checkpoints[0].status, Status::Corrupt, "{path:?}");
        assert_eq!(store.calls.get("HeadObject"), 0, "{path:?}");
        assert_eq!(
            store.calls.get("GetObject"),
            1,
            "{path:?}: the manifest only"
        );
    }

    // A valid manifest copied into another checkpoint's directory.
    let store = FakeStore::default();
    put_checkpoint(&store, "algo-1", 1200, false);
    let mut manifest = manifest_of(&store);
    manifest["step"] = json!(1100);
    put_manifest(&store, &manifest);
    let v = validate(&store).await;
    assert_eq!(v.checkpoints[0].status, Status::Corrupt);
    assert!(reason(&v, 0).contains("1100"), "{}", reason(&v, 0));

    // Not JSON, a future format, and oversized.
    for bytes in [
        b"{\"format_version\": 1, \"files\": [".to_vec(),
        serde_json::to_vec(&json!({"format_version": 2})).unwrap(),
        vec![b' '; MAX_MANIFEST_BYTES + 4096],
    ] {
        let store = FakeStore::default();
        put_checkpoint(&store, "algo-1", 1200, false);
        store.put(BUCKET, &key(1200, MANIFEST_FILE), &bytes);
        let v = validate(&store).await;
        assert_eq!(v.checkpoints[0].status, Status::Corrupt);
        assert_eq!(store.calls.get("HeadObject"), 0);
        assert!(
            *store.bytes_read.lock().unwrap() <= MAX_MANIFEST_BYTES as u64 + 1,
            "an oversized manifest costs one ranged GET"
        );
    }
}

#[tokio::test]
async fn upload_markers_and_temporaries_are_ignored() {
    let store = FakeStore::default();
    put_checkpoint(&store, "algo-1", 1200, false);
    for marker in [
        "model.safetensors.sagemaker-uploaded",
        "optimizer.safetensors.sagemaker-uploading",
        "manifest.json.sagemaker-uploaded",
        // A writer's temporary left by a crash, in a nested directory too.
        "model.safetensors.sagemaker-ignore",
        "tmp.sagemaker-ignore/part-0",
    ] {
        store.put(BUCKET, &key(1200, marker), b"");
    }
    // A checkpoint that so far is nothing but markers.
    store.put(BUCKET, &key(1300, "manifest.json.sagemaker-uploading"), b"");
    store.put(
        BUCKET,
        &key(1300, "model.safetensors.sagemaker-uploading"),
        b"",
    );
    let v = validate(&store).await;
    assert_eq!(v.summary.latest_valid_step, Some(1200));
    assert_eq!(v.checkpoints.len(), 1, "markers alone are no checkpoint");
    assert_eq!(store.calls.get("HeadObject"), 2, "markers are never HEADed");
    assert!(store
        .gets
        .lock()
        .unwrap()
        .iter()
        .all(|k| k.ends_with("/manifest.json")));

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
async fn objects_without_crc64nvme_are_stream_hashed_or_checked_by_size() {
    let store = FakeStore::default();
    put_checkpoint(&store, "algo-1", 1200, false);
    // Uploaded with another checksum algorithm: HeadObject reports no CRC-64/NVME.
    let model = b"model@1200".to_vec();
    store.put_with(BUCKET, &key(1200, "model.safetensors"), &model, None);
    let v = validate(&store).await;
    assert_eq!(v.summary.latest_valid_step, Some(1200));
    assert!(v.size_only.is_empty());
    assert_eq!(store.calls.get("HeadObject"), 2);
    assert_eq!(store.calls.get("GetObject(stream)"), 1, "only that file");
    assert_eq!(
        *store.gets.lock().unwrap(),
        [key(1200, MANIFEST_FILE), key(1200, "model.safetensors")]
    );

    // Stream-hashing catches corruption the size cannot.
    let store = FakeStore::default();
    put_checkpoint(&store, "algo-1", 1200, false);
    store.put_with(BUCKET, &key(1200, "model.safetensors"), b"model@9999", None);
    let v = validate(&store).await;
    assert_eq!(v.checkpoints[0].status, Status::Corrupt);
    assert!(reason(&v, 0).contains("crc64nvme"));

    // Above the streaming limit: checked by size only, and reported as such.
    let options = ValidationOptions {
        stream_hash_limit_bytes: 4,
        ..ValidationOptions::default()
    };
    let v = validate_checkpoints(&store, URI, options).await.unwrap();
    assert_eq!(v.summary.latest_valid_step, Some(1200), "same size passes");
    assert_eq!(v.size_only, ["algo-1/step-000000001200/model.safetensors"]);
}

#[tokio::test]
async fn cost_grows_with_the_number_of_files_not_their_bytes() {
    async fn cost(files: usize, size: usize) -> (usize, usize, usize, u64, u64) {
        let store = FakeStore::default();
        let data = sized_files(files, size);
        let objects = write_checkpoint("algo-1", 1200, &as_refs(&data), false);
        let manifest_len = objects
            .iter()
            .find(|(p, _)| p.ends_with(MANIFEST_FILE))
            .unwrap()
            .1
            .len() as u64;
        upload(&store, URI, &objects);
        let v = validate(&store).await;
        assert_eq!(v.summary.latest_valid_step, Some(1200));
        let read = *store.bytes_read.lock().unwrap();
        (
            store.calls.get("ListObjectsV2"),
            store.calls.get("GetObject"),
            store.calls.get("HeadObject"),
            read,
            manifest_len,
        )
    }
    let small = cost(3, 16).await;
    let large = cost(3, 4 << 20).await;
    assert_eq!((small.0, small.1, small.2), (1, 1, 3));
    assert_eq!(
        (large.0, large.1, large.2),
        (1, 1, 3),
        "4 MiB files cost the same requests"
    );
    assert_eq!(small.3, small.4, "only the manifest is read");
    assert_eq!(large.3, large.4, "only the manifest is read");
    let many = cost(40, 16).await;
    assert_eq!((many.0, many.1, many.2), (1, 1, 40), "one HEAD per file");
}

#[tokio::test]
async fn heads_run_concurrently_up_to_the_bound() {
    let data = sized_files(40, 8);
    let objects = write_checkpoint("algo-1", 1200, &as_refs(&data), false);
    for (concurrency, expected) in [(4, 4), (16, 16), (64, 40), (1, 1), (0, 1)] {
        let store = FakeStore::default();
        upload(&store, URI, &objects);
        let options = ValidationOptions {
            concurrency,
            ..ValidationOptions::default()
        };
        let v = validate_checkpoints(&store, URI, options).await.unwrap();
        assert_eq!(v.summary.latest_valid_step, Some(1200));
        assert_eq!(store.calls.get("HeadObject"), 40);
        assert_eq!(
            *store.max_in_flight.lock().unwrap(),
            expected,
            "concurrency {concurrency}"
        );
    }
    // The stream-hash fallback shares the bound.
    let store = FakeStore::default();
    for (path, bytes) in &objects {
        let key = format!("{PREFIX}{path}");
        if path.ends_with(MANIFEST_FILE) {
            store.put(BUCKET, &key, bytes);
        } else {
            store.put_with(BUCKET, &key, bytes, None);
        }
    }
    let options = ValidationOptions {
        concurrency: 4,
        ..ValidationOptions::default()
    };
    let v = validate_checkpoints(&store, URI, options).await.unwrap();
    assert_eq!(v.summary.latest_valid_step, Some(1200));
    assert_eq!(store.calls.get("GetObject(stream)"), 40);
    assert_eq!(*store.max_in_flight.lock().unwrap(), 4);
}

#[tokio::test]
async fn the_newest_step_wins_across_namespaces() {
    let store = FakeStore::default();
    put_checkpoint(&store, "algo-1", 1200, false);
    put_checkpoint(&store, "algo-2", 1300, false);
    store.put(BUCKET, &key(1400, "model.safetensors"), b"x");
    let v = validate(&store).await;
    assert_eq!(v.latest_valid.as_deref(), Some("algo-2/step-000000001300"));
    assert_eq!(v.checkpoints[0].status, Status::Incomplete);
    assert_eq!(v.checkpoints[0].name, "algo-1/step-000000001400");
    assert_eq!(v.not_judged, 1);
}

#[tokio::test]
async fn an_empty_prefix_a_bad_uri_and_failing_calls() {
    let store = FakeStore::default();
    let v = validate(&store).await;
    assert_eq!(v.summary, Default::default());
    assert!(v.checkpoints.is_empty());

    for uri in ["https://ckpt-bucket/runs/train", "s3:///runs", "runs/train"] {
        let err = validate_checkpoints(&store, uri, ValidationOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, ValidationError::BadUri(_)), "{uri}");
    }
    assert_eq!(
        store.calls.get("ListObjectsV2"),
        1,
        "a bad URI costs no call"
    );

    put_checkpoint(&store, "algo-1", 1200, false);
    for (operation, kind) in [
        ("ListObjectsV2", ErrorKind::Transient),
        ("GetObject", ErrorKind::Transient),
        ("HeadObject", ErrorKind::Transient),
        ("HeadObject", ErrorKind::AccessDenied),
    ] {
        store.fail.inject(operation, kind);
        let err = validate_checkpoints(&store, URI, ValidationOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ValidationError::Aws(e) if e.operation == operation && e.kind == kind),
            "{operation}: {err}"
        );
    }
    // And with the failures spent, the same prefix validates.
    assert_eq!(validate(&store).await.summary.latest_valid_step, Some(1200));
}

/// Regression: a prefix of another library's checkpoints (no spotcheck manifest anywhere) read
/// as "no valid checkpoint", as if the job had none.
#[tokio::test]
async fn checkpoints_without_any_spotcheck_directory_are_an_unknown_format() {
    let store = FakeStore::default();
    // Hugging Face Trainer, and a plain torch.save, with SageMaker's upload markers.
    for key in [
        "runs/train/checkpoint-500/pytorch_model.bin",
        "runs/train/checkpoint-500/trainer_state.json",
        "runs/train/checkpoint-500/trainer_state.json.sagemaker-uploaded",
        "runs/train/model.pt",
    ] {
        store.put(BUCKET, key, b"data");
    }
    let v = validate(&store).await;
    assert_eq!(v.summary.validation, Validation::UnknownFormat);
    assert_eq!(v.summary.latest_valid_step, None);
    assert!(v.checkpoints.is_empty());
    assert_eq!(store.calls.get("ListObjectsV2"), 1);
    assert_eq!(store.calls.total(), 1, "nothing to GET or HEAD");

    // Nothing at all, or only markers: judged, and nothing is valid.
    let empty = FakeStore::default();
    empty.put(BUCKET, "runs/train/x.bin.sagemaker-uploading", b"");
    empty.put(BUCKET, "runs/other/model.pt", b"elsewhere");
    assert_eq!(
        validate(&empty).await.summary.validation,
        Validation::Judged
    );

    // One spotcheck checkpoint directory, even a torn one, makes it spotcheck's: judged.
    store.put(BUCKET, &key(1200, "model.safetensors"), b"torn");
    let v = validate(&store).await;
    assert_eq!(v.summary.validation, Validation::Judged);
    assert_eq!(v.checkpoints.len(), 1);
}

/// A job commit for `step` naming the two hosts' uploaded manifests.
fn put_commit(store: &FakeStore, step: u64) {
    let participants: Vec<spotcheck_protocol::Participant> = ["algo-1", "algo-2"]
        .iter()
        .enumerate()
        .map(|(rank, ns)| {
            let key = format!("{PREFIX}{ns}/step-{step:012}/{MANIFEST_FILE}");
            let bytes = store.objects.lock().unwrap()[&(BUCKET.to_owned(), key)]
                .bytes
                .clone();
            spotcheck_protocol::Participant {
                rank: rank as u32,
                namespace: (*ns).into(),
                manifest_sha256: spotcheck_protocol::manifest_digest(&bytes),
            }
        })
        .collect();
    let commit = spotcheck_protocol::JobCommit {
        format_version: spotcheck_protocol::COMMIT_FORMAT_VERSION,
        step,
        world_size: 2,
        created_at_ms: 1,
        meta: None,
        participants,
    };
    put_file_at(
        store,
        URI,
        &spotcheck_protocol::commit_file_name(step),
        &commit.to_json_bytes().unwrap(),
    );
}

#[tokio::test]
async fn a_step_missing_or_torn_on_one_host_is_incomplete_in_s3_too() {
    let store = FakeStore::default();
    for step in [100, 200, 300] {
        put_checkpoint(&store, "algo-1", step, false);
        put_checkpoint(&store, "algo-2", step, false);
        put_commit(&store, step);
    }
    // algo-2's step 300 lost its optimizer state (its upload never finished), and step 200 of
    // algo-1 was overwritten after the commit (another manifest than the one it names).
    store.objects.lock().unwrap().remove(&(
        BUCKET.to_owned(),
        format!("{PREFIX}algo-2/step-000000000300/optimizer.safetensors"),
    ));
    put_checkpoint(&store, "algo-1", 200, true);
    // A newer checkpoint of one host alone, never committed, does not count either.
    put_checkpoint(&store, "algo-1", 400, false);

    let v = validate(&store).await;
    assert_eq!(v.summary.latest_valid_step, Some(100), "{v:#?}");
    assert_eq!(v.latest_valid.as_deref(), Some("commit-000000000100.json"));
    assert_eq!(v.incomplete_steps.len(), 2, "{v:#?}");
    let problems = |i: usize| match &v.incomplete_steps[i].verdict {
        spotcheck_protocol::StepVerdict::Incomplete { problems } => problems.join("; "),
        other => panic!("{other:?}"),
    };
    assert_eq!(v.incomplete_steps[0].step, 300);
    assert!(problems(0).contains("algo-2"), "{}", problems(0));
    assert_eq!(v.incomplete_steps[1].step, 200);
    assert!(
        problems(1).contains("not the one the commit names"),
        "{}",
        problems(1)
    );
    // Judged from manifests and HEADs only: no data object was read.
    let gets = store.gets.lock().unwrap().clone();
    assert!(
        gets.iter()
            .all(|k| k.ends_with(MANIFEST_FILE) || k.contains("commit-")),
        "{gets:?}"
    );
}
