//! Checkpoints in S3 for the replay tests.
//!
//! Owns writing small valid checkpoints with the protocol crate's writer (the format the
//! trainer writes), uploading a local checkpoint tree the way SageMaker's sync and the trainer
//! do (each object with its CRC-64/NVME, so S3 keeps a full-object checksum; manifests last),
//! copying and mutating objects to make torn and corrupted variants, and [`CountingStore`]: a
//! [`CheckpointStore`] around the real S3 adapter that counts each kind of read.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumAlgorithm;
use spotcheck_aws::{AwsError, CheckpointStore, HeadResult, ListedObject};
use spotcheck_protocol::{CheckpointWriter, MANIFEST_FILE};

/// Writes a valid checkpoint `<root>/<namespace>/step-<step>/` with two small files.
pub fn write_checkpoint(root: &Path, namespace: &str, step: u64) {
    let mut pending = CheckpointWriter::begin(root, namespace, step).expect("begin a checkpoint");
    let weights: Vec<u8> = (0..4096u32)
        .flat_map(|i| (i ^ step as u32).to_le_bytes())
        .collect();
    pending
        .write_bytes("model.safetensors", &weights)
        .expect("write weights");
    pending
        .write_bytes(
            "trainer_state.json",
            format!("{{\"step\": {step}}}").as_bytes(),
        )
        .expect("write state");
    pending
        .commit(1_717_000_000_000 + step, None)
        .expect("commit the checkpoint");
}

/// Every regular file under `dir`, as paths relative to it, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.filter_map(Result::ok) {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else if let Ok(rel) = p.strip_prefix(base) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// PutObject with a CRC-64/NVME checksum (S3 verifies it and keeps it as the full-object
/// checksum), as the trainer and SageMaker's sync upload.
pub async fn put(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, body: Vec<u8>) {
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
        .body(ByteStream::from(body))
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PutObject s3://{bucket}/{key}: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            )
        });
}

/// Uploads the checkpoint tree `root` under `s3://bucket/prefix/`: data files first, every
/// `manifest.json` last. Files with a transport suffix (`.sagemaker-ignore`, markers) are
/// skipped, as SageMaker's sync skips them.
pub async fn upload_tree(s3: &aws_sdk_s3::Client, root: &Path, bucket: &str, prefix: &str) {
    let files: Vec<String> = files_under(root)
        .into_iter()
        .filter(|f| !f.split('/').any(spotcheck_protocol::is_transport_name))
        .collect();
    let (manifests, data): (Vec<_>, Vec<_>) = files
        .into_iter()
        .partition(|f| f.rsplit('/').next() == Some(MANIFEST_FILE));
    for rel in data.into_iter().chain(manifests) {
        let body = std::fs::read(root.join(&rel)).expect("reading a checkpoint file");
        put(
            s3,
            bucket,
            &format!("{}/{rel}", prefix.trim_end_matches('/')),
            body,
        )
        .await;
    }
}

/// Copies every object under `from/` to `to/` (re-uploaded with CRC-64/NVME, as a fresh
/// upload of the same bytes would be).
pub async fn copy_prefix(s3: &aws_sdk_s3::Client, bucket: &str, from: &str, to: &str) {
    let from = format!("{}/", from.trim_end_matches('/'));
    let to = format!("{}/", to.trim_end_matches('/'));
    for (key, body) in crate::emulators::objects(s3, bucket, &from).await {
        let rel = key.strip_prefix(&from).unwrap_or(&key);
        put(s3, bucket, &format!("{to}{rel}"), body).await;
    }
}

/// Deletes one object.
pub async fn delete(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) {
    s3.delete_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "DeleteObject {key}: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            )
        });
}

/// Reads one object.
pub async fn get(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Vec<u8> {
    s3.get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "GetObject {key}: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            )
        })
        .body
        .collect()
        .await
        .expect("body")
        .into_bytes()
        .to_vec()
}

/// Counts of each [`CheckpointStore`] read.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    /// `list` calls.
    pub list: Arc<AtomicUsize>,
    /// `get_head_bytes` calls (ranged GETs), with their keys.
    pub ranged_gets: Arc<std::sync::Mutex<Vec<String>>>,
    /// `head` calls.
    pub head: Arc<AtomicUsize>,
    /// `stream_crc64nvme` calls: whole-object downloads.
    pub streamed: Arc<AtomicUsize>,
}

impl Counts {
    /// Keys fetched with a ranged GET.
    pub fn ranged_get_keys(&self) -> Vec<String> {
        self.ranged_gets
            .lock()
            .map(|k| k.clone())
            .unwrap_or_default()
    }
}

/// A [`CheckpointStore`] that counts the reads it passes on to `inner`.
#[derive(Clone, Debug)]
pub struct CountingStore<S> {
    /// The store doing the work.
    pub inner: S,
    /// What it counted.
    pub counts: Counts,
}

impl<S> CountingStore<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        CountingStore {
            inner,
            counts: Counts::default(),
        }
    }
}

impl<S: CheckpointStore + Sync> CheckpointStore for CountingStore<S> {
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ListedObject>, AwsError> {
        self.counts.list.fetch_add(1, Ordering::SeqCst);
        self.inner.list(bucket, prefix).await
    }

    async fn get_head_bytes(
        &self,
        bucket: &str,
        key: &str,
        max_bytes: u64,
    ) -> Result<Option<Vec<u8>>, AwsError> {
        if let Ok(mut keys) = self.counts.ranged_gets.lock() {
            keys.push(key.to_owned());
        }
        self.inner.get_head_bytes(bucket, key, max_bytes).await
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<Option<HeadResult>, AwsError> {
        self.counts.head.fetch_add(1, Ordering::SeqCst);
        self.inner.head(bucket, key).await
    }

    async fn stream_crc64nvme(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<HeadResult>, AwsError> {
        self.counts.streamed.fetch_add(1, Ordering::SeqCst);
        self.inner.stream_crc64nvme(bucket, key).await
    }
}
