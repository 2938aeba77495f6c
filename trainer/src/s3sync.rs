//! Checkpoints in S3 when SageMaker's checkpoint sync is not there (training on your own EC2
//! spot instances): a background mirror uploads each finished checkpoint, and the newest valid
//! one is downloaded on start.
//!
//! Layout and validity are the protocol's: `<prefix>/<namespace>/step-…/<file>`, data files
//! first and `manifest.json` last, so a reader never sees a manifest before its files. Every
//! upload carries the file's CRC-64/NVME from the manifest, which S3 checks on arrival and
//! stores as the object's full-object checksum; files over the part size go up as multipart
//! uploads with a full-object CRC-64/NVME. Files and parts go up concurrently, and every SDK
//! call has a timeout, so one stalled connection cannot hold a checkpoint back.
//!
//! The [`Mirror`] thread uploads the newest committed checkpoint (a newer one that arrives
//! meanwhile waits; intermediate ones are skipped), marks its files uploaded
//! (`spotcheck_protocol::mark_uploaded`, the marker SageMaker's own sync leaves, so local
//! retention never deletes the newest checkpoint that is in S3), then prunes S3 with the same
//! retention rules (this host's namespace only). On a stop, [`Mirror::finish`] abandons an
//! upload in flight and sends the final checkpoint — already durable on local disk — before
//! the notice's deadline; pruning waits for a later run.
//!
//! On start, remote checkpoints are judged from the manifest and HeadObject checksums alone
//! (no download), and only the newest valid one newer than the newest *valid* local one is
//! fetched: streamed into a staging directory, checked against the manifest, then renamed into
//! place, so a half-finished download never looks like a checkpoint. S3 errors are reported,
//! never fatal to training: the local checkpoint stays.

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::thread;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, ChecksumType, CompletedMultipartUpload, CompletedPart,
};
use aws_sdk_s3::Client;
use futures::{StreamExt, TryStreamExt};
use spotcheck_protocol::{
    crc64nvme_to_base64, is_transport_name, judge_at, mark_uploaded, parse_step_dir_name,
    plan_retention, step_dir_name, CheckpointReport, Location, Manifest, ObservedFile,
    RetentionAction, Uploads, ValidCheckpoint, Verdict, MANIFEST_FILE, MAX_MANIFEST_BYTES,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Files above this size are uploaded in parts of this size.
pub const DEFAULT_PART_SIZE: u64 = 64 << 20;
/// Files (or parts) in flight at once.
pub const CONCURRENCY: usize = 4;
/// How long one SDK call attempt may take (a 64 MiB part needs ~7 s at 10 MB/s).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
/// Where downloads are staged under the checkpoint root (a leading '.' is never a namespace,
/// so scans and retention ignore it).
pub const STAGING_DIR: &str = ".spotcheck-staging";

/// An `s3://bucket/prefix` location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Uri {
    /// Bucket.
    pub bucket: String,
    /// Key prefix without leading or trailing slashes (may be empty).
    pub prefix: String,
}

impl S3Uri {
    /// Parses `s3://bucket[/prefix]`.
    pub fn parse(uri: &str) -> Result<Self, String> {
        let rest = uri
            .strip_prefix("s3://")
            .ok_or_else(|| format!("{uri}: expected s3://bucket/prefix"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !valid_bucket {
            return Err(format!("{uri}: `{bucket}` is not a valid bucket name"));
        }
        let prefix = prefix.trim_matches('/').to_string();
        if prefix.split('/').any(|p| p == ".." || p == ".") {
            return Err(format!(
                "{uri}: prefix may not contain `.` or `..` segments"
            ));
        }
        Ok(Self {
            bucket: bucket.to_string(),
            prefix,
        })
    }

    /// The key of `rel` under the prefix.
    pub fn key(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }
}

/// A connected S3 checkpoint location. Owns a small runtime: the trainer is not async.
pub struct S3Sync {
    rt: tokio::runtime::Runtime,
    store: Store,
}

/// The async S3 operations (cheap to clone: the client is shared).
#[derive(Clone)]
struct Store {
    client: Client,
    uri: S3Uri,
    part_size: u64,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn sdk_err<E: std::error::Error + Send + Sync + 'static>(
    what: &str,
    e: aws_sdk_s3::error::SdkError<E>,
) -> String {
    format!("{what}: {}", aws_sdk_s3::error::DisplayErrorContext(e))
}

impl S3Sync {
    /// Connects with the default AWS configuration chain. `AWS_ENDPOINT_URL(_S3)` points it at
    /// another endpoint (an emulator), which then gets path-style addressing.
    pub fn connect(uri: &str) -> Result<Self, String> {
        let uri = S3Uri::parse(uri)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(err)?;
        let config = rt.block_on(aws_config::load_defaults(
            aws_config::BehaviorVersion::latest(),
        ));
        let custom_endpoint = std::env::var_os("AWS_ENDPOINT_URL_S3")
            .or_else(|| std::env::var_os("AWS_ENDPOINT_URL"))
            .is_some();
        let s3_config = aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(custom_endpoint)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .read_timeout(Duration::from_secs(30))
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            )
            .build();
        let part_size = std::env::var("SPOTCHECK_S3_PART_SIZE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_PART_SIZE)
            .max(5 << 20);
        Ok(Self {
            rt,
            store: Store {
                client: Client::from_conf(s3_config),
                uri,
                part_size,
            },
        })
    }

    /// Downloads the newest remote checkpoint of `namespace` that is valid in S3 and newer than
    /// `local_newest_valid`; returns its name, or `None` when there is nothing newer. The
    /// checkpoint arrives complete or not at all (see the module doc) and is marked uploaded.
    pub fn download_latest(
        &self,
        root: &Path,
        namespace: &str,
        local_newest_valid: Option<u64>,
    ) -> Result<Option<String>, String> {
        self.rt.block_on(async {
            for step in self.store.remote_steps(namespace).await? {
                if local_newest_valid.is_some_and(|l| l >= step) {
                    return Ok(None);
                }
                let name = format!("{namespace}/{}", step_dir_name(step));
                match self.store.judge_remote(namespace, step).await? {
                    (Verdict::Valid, Some(manifest)) => {
                        match self.store.fetch(root, &name, &manifest).await {
                            Ok(()) => return Ok(Some(name)),
                            Err(e) => {
                                tracing::warn!(event = "s3_download_failed", checkpoint = %name, error = %e, "could not download this checkpoint; trying an older one");
                            }
                        }
                    }
                    (verdict, _) => {
                        tracing::warn!(event = "s3_checkpoint_skipped", checkpoint = %name, verdict = ?verdict, "remote checkpoint not valid; trying an older one");
                    }
                }
            }
            Ok(None)
        })
    }
}

impl Store {
    async fn upload(&self, root: &Path, ckpt: &ValidCheckpoint) -> Result<u64, String> {
        let rel_dir = ckpt
            .dir
            .strip_prefix(root)
            .map_err(err)?
            .to_string_lossy()
            .into_owned();
        let files = ckpt.manifest.files.iter().map(|f| {
            let key = self.uri.key(&format!("{rel_dir}/{}", f.path));
            let path = ckpt.dir.join(&f.path);
            async move {
                self.put_file(&path, &key, f.size, Some(&f.crc64nvme))
                    .await
                    .map(|()| f.size)
            }
        });
        let sizes: Vec<u64> = futures::stream::iter(files)
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        let manifest = ckpt.dir.join(MANIFEST_FILE);
        let size = tokio::fs::metadata(&manifest).await.map_err(err)?.len();
        self.put_file(
            &manifest,
            &self.uri.key(&format!("{rel_dir}/{MANIFEST_FILE}")),
            size,
            None,
        )
        .await?;
        Ok(sizes.iter().sum::<u64>() + size)
    }

    async fn body(path: &Path, offset: u64, len: u64) -> Result<ByteStream, String> {
        ByteStream::read_from()
            .path(path)
            .offset(offset)
            .length(Length::Exact(len))
            .build()
            .await
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    async fn put_file(
        &self,
        path: &Path,
        key: &str,
        size: u64,
        crc: Option<&str>,
    ) -> Result<(), String> {
        if size > self.part_size {
            return self.put_multipart(path, key, size, crc).await;
        }
        let mut req = self
            .client
            .put_object()
            .bucket(&self.uri.bucket)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
            .body(Self::body(path, 0, size).await?);
        if let Some(crc) = crc {
            // S3 recomputes it on arrival and refuses the object if the bytes differ.
            req = req.checksum_crc64_nvme(crc);
        }
        req.send()
            .await
            .map_err(|e| sdk_err(&format!("PutObject {key}"), e))?;
        Ok(())
    }

    async fn put_multipart(
        &self,
        path: &Path,
        key: &str,
        size: u64,
        crc: Option<&str>,
    ) -> Result<(), String> {
        let c = &self.client;
        let created = c
            .create_multipart_upload()
            .bucket(&self.uri.bucket)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
            .checksum_type(ChecksumType::FullObject)
            .send()
            .await
            .map_err(|e| sdk_err(&format!("CreateMultipartUpload {key}"), e))?;
        let upload_id = created
            .upload_id()
            .ok_or("CreateMultipartUpload returned no upload id")?
            .to_string();
        let result = async {
            let count = size.div_ceil(self.part_size);
            let parts = (0..count).map(|i| {
                let offset = i * self.part_size;
                let len = self.part_size.min(size - offset);
                let number = i as i32 + 1;
                let upload_id = &upload_id;
                async move {
                    let out = c
                        .upload_part()
                        .bucket(&self.uri.bucket)
                        .key(key)
                        .upload_id(upload_id)
                        .part_number(number)
                        .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
                        .body(Self::body(path, offset, len).await?)
                        .send()
                        .await
                        .map_err(|e| sdk_err(&format!("UploadPart {key} #{number}"), e))?;
                    Ok::<_, String>(
                        CompletedPart::builder()
                            .part_number(number)
                            .set_e_tag(out.e_tag().map(str::to_string))
                            .set_checksum_crc64_nvme(out.checksum_crc64_nvme().map(str::to_string))
                            .build(),
                    )
                }
            });
            let mut parts: Vec<CompletedPart> = futures::stream::iter(parts)
                .buffer_unordered(CONCURRENCY)
                .try_collect()
                .await?;
            parts.sort_by_key(|p| p.part_number());
            let mut complete = c
                .complete_multipart_upload()
                .bucket(&self.uri.bucket)
                .key(key)
                .upload_id(&upload_id)
                .checksum_type(ChecksumType::FullObject)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                );
            if let Some(crc) = crc {
                complete = complete.checksum_crc64_nvme(crc);
            }
            complete
                .send()
                .await
                .map_err(|e| sdk_err(&format!("CompleteMultipartUpload {key}"), e))?;
            Ok::<(), String>(())
        }
        .await;
        if result.is_err() {
            let _ = c
                .abort_multipart_upload()
                .bucket(&self.uri.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    /// Every key under `prefix` (a full key prefix).
    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, String> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.uri.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_err("ListObjectsV2", e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key())
                    .map(str::to_string),
            );
        }
        Ok(keys)
    }

    /// Step directories of `namespace` in S3, newest first.
    async fn remote_steps(&self, namespace: &str) -> Result<Vec<u64>, String> {
        let prefix = self.uri.key(&format!("{namespace}/"));
        let steps: std::collections::BTreeSet<u64> = self
            .list_keys(&prefix)
            .await?
            .iter()
            .filter_map(|k| k.strip_prefix(&prefix)?.split('/').next())
            .filter_map(parse_step_dir_name)
            .collect();
        Ok(steps.into_iter().rev().collect())
    }

    /// Judges one remote checkpoint from its manifest and HeadObject checksums (no download).
    async fn judge_remote(
        &self,
        namespace: &str,
        step: u64,
    ) -> Result<(Verdict, Option<Manifest>), String> {
        let dir = self
            .uri
            .key(&format!("{namespace}/{}", step_dir_name(step)));
        let location = Location {
            namespace: Some(namespace.to_string()),
            step,
        };
        let got = self
            .client
            .get_object()
            .bucket(&self.uri.bucket)
            .key(format!("{dir}/{MANIFEST_FILE}"))
            .range(format!("bytes=0-{}", MAX_MANIFEST_BYTES))
            .send()
            .await;
        let manifest_bytes = match got {
            Ok(o) => Some(o.body.collect().await.map_err(err)?.into_bytes().to_vec()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => None,
            Err(e) => return Err(sdk_err("GetObject manifest", e)),
        };
        let manifest = manifest_bytes
            .as_deref()
            .and_then(|b| Manifest::parse(b).ok());
        let heads = manifest.iter().flat_map(|m| &m.files).map(|f| {
            let key = format!("{dir}/{}", f.path);
            async move {
                let head = self
                    .client
                    .head_object()
                    .bucket(&self.uri.bucket)
                    .key(key)
                    .checksum_mode(ChecksumMode::Enabled)
                    .send()
                    .await;
                match head {
                    Ok(h) => Ok(Some(ObservedFile {
                        path: f.path.clone(),
                        size: h.content_length().unwrap_or(-1).max(0) as u64,
                        crc64nvme: h.checksum_crc64_nvme().map(str::to_string),
                        sha256: None,
                    })),
                    Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
                    Err(e) => Err(sdk_err("HeadObject", e)),
                }
            }
        });
        let observed: Vec<Option<ObservedFile>> = futures::stream::iter(heads)
            .buffered(CONCURRENCY * 4)
            .try_collect()
            .await?;
        let observed: Vec<ObservedFile> = observed.into_iter().flatten().collect();
        Ok((
            judge_at(&location, manifest_bytes.as_deref(), &observed),
            manifest,
        ))
    }

    async fn prune(&self, namespace: &str, keep: usize) -> Result<usize, String> {
        let mut reports = Vec::new();
        for step in self.remote_steps(namespace).await? {
            let (verdict, _) = self.judge_remote(namespace, step).await?;
            let location = Location {
                namespace: Some(namespace.to_string()),
                step,
            };
            reports.push(CheckpointReport::new(&location, verdict));
        }
        // S3 is the durable store itself: nothing mirrors it further.
        let actions = plan_retention(&reports, keep, &[], Uploads::Unsynced);
        for RetentionAction::Delete { name } in &actions {
            self.delete_remote(name).await?;
        }
        Ok(actions.len())
    }

    /// Deletes every object of the checkpoint `name`, its manifest first, so that an
    /// interrupted deletion leaves an incomplete checkpoint, never a valid-looking one with
    /// files missing.
    async fn delete_remote(&self, name: &str) -> Result<(), String> {
        let prefix = self.uri.key(&format!("{name}/"));
        let manifest = format!("{prefix}{MANIFEST_FILE}");
        let mut keys = vec![manifest.clone()];
        keys.extend(
            self.list_keys(&prefix)
                .await?
                .into_iter()
                .filter(|k| *k != manifest),
        );
        for key in keys {
            // Deleting a missing key succeeds in S3, so a repeated prune is harmless.
            self.client
                .delete_object()
                .bucket(&self.uri.bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| sdk_err(&format!("DeleteObject {key}"), e))?;
        }
        Ok(())
    }

    /// Streams one object to `target`, checking its size and CRC-64/NVME against `want`.
    async fn fetch_file(
        &self,
        key: &str,
        target: &Path,
        want: Option<(u64, &str)>,
    ) -> Result<(), String> {
        let obj = self
            .client
            .get_object()
            .bucket(&self.uri.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| sdk_err(&format!("GetObject {key}"), e))?;
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(err)?;
        }
        let mut file = tokio::fs::File::create(target)
            .await
            .map_err(|e| format!("{}: {e}", target.display()))?;
        let mut body = obj.body;
        let mut crc = crc64fast_nvme::Digest::new();
        let mut size = 0u64;
        while let Some(chunk) = body.try_next().await.map_err(err)? {
            crc.write(&chunk);
            size += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(err)?;
        }
        file.sync_all().await.map_err(err)?;
        if let Some((want_size, want_crc)) = want {
            if size != want_size || crc64nvme_to_base64(crc.sum64()) != want_crc {
                return Err(format!(
                    "{key}: downloaded {size} bytes that do not match the manifest"
                ));
            }
        }
        Ok(())
    }

    /// Downloads checkpoint `name` into the staging area, then renames it into place.
    async fn fetch(&self, root: &Path, name: &str, manifest: &Manifest) -> Result<(), String> {
        let staging_root = root.join(STAGING_DIR);
        let staged: PathBuf = staging_root.join(name);
        if staged.exists() {
            tokio::fs::remove_dir_all(&staged).await.map_err(err)?;
        }
        let files = manifest
            .files
            .iter()
            .filter(|f| !is_transport_name(&f.path))
            .map(|f| {
                let key = self.uri.key(&format!("{name}/{}", f.path));
                let target = staged.join(&f.path);
                async move {
                    self.fetch_file(&key, &target, Some((f.size, &f.crc64nvme)))
                        .await
                }
            });
        futures::stream::iter(files)
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        // The manifest last, as in S3.
        let key = self.uri.key(&format!("{name}/{MANIFEST_FILE}"));
        self.fetch_file(&key, &staged.join(MANIFEST_FILE), None)
            .await?;
        let target = root.join(name);
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(err)?;
        }
        if target.exists() {
            // Not valid (the caller only downloads steps newer than the newest valid local one):
            // set it aside rather than merge into it.
            let aside = staging_root.join(format!("{name}.replaced"));
            let _ = tokio::fs::remove_dir_all(&aside).await;
            if let Some(parent) = aside.parent() {
                tokio::fs::create_dir_all(parent).await.map_err(err)?;
            }
            tokio::fs::rename(&target, &aside).await.map_err(err)?;
            let _ = tokio::fs::remove_dir_all(&aside).await;
        }
        tokio::fs::rename(&staged, &target)
            .await
            .map_err(|e| format!("moving {} into place: {e}", staged.display()))?;
        if let Some(parent) = target.parent() {
            std::fs::File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(err)?;
        }
        // It is in S3 already: local retention may count it.
        mark_uploaded(&target, manifest).map_err(err)?;
        let _ = std::fs::remove_dir_all(&staging_root);
        Ok(())
    }
}

enum Command {
    /// Upload this committed checkpoint (the newest wins).
    Upload(ValidCheckpoint),
    /// Abandon what is in flight, upload this one before the deadline (then prune S3 when
    /// asked), answer, and end.
    Final(Final),
}

struct Final {
    ckpt: ValidCheckpoint,
    deadline: Instant,
    prune: bool,
    reply: std_mpsc::Sender<Result<u64, String>>,
}

/// Queues committed checkpoints for the [`Mirror`] (cheap to clone).
#[derive(Clone)]
pub struct MirrorSender(Option<mpsc::UnboundedSender<Command>>);

impl MirrorSender {
    /// Queues a committed checkpoint for upload (the newest queued wins).
    pub fn submit(&self, ckpt: ValidCheckpoint) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(Command::Upload(ckpt));
        }
    }
}

/// The background uploader (see the module doc).
pub struct Mirror {
    tx: Option<mpsc::UnboundedSender<Command>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Mirror {
    /// Starts the uploader for checkpoints under `root/namespace`, keeping `keep` in S3.
    pub fn start(
        s3: S3Sync,
        root: PathBuf,
        namespace: String,
        keep: usize,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let thread = thread::Builder::new()
            .name("s3-mirror".into())
            .spawn(move || {
                let S3Sync { rt, store } = s3;
                rt.block_on(mirror_loop(store, root, namespace, keep, rx));
            })?;
        Ok(Mirror {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// A handle that queues committed checkpoints for upload (for the persister thread).
    pub fn sender(&self) -> MirrorSender {
        MirrorSender(self.tx.clone())
    }

    /// Uploads the final checkpoint before `deadline`, abandoning any upload in flight, prunes
    /// S3 after it when `prune` (not on a stop: the deadline is for the checkpoint), and stops
    /// the mirror. Returns the bytes sent.
    pub fn finish(
        &mut self,
        ckpt: ValidCheckpoint,
        deadline: Instant,
        prune: bool,
    ) -> Result<u64, String> {
        let (reply, answer) = std_mpsc::channel();
        let tx = self.tx.take().ok_or("the S3 mirror has stopped")?;
        tx.send(Command::Final(Final {
            ckpt,
            deadline,
            prune,
            reply,
        }))
        .map_err(|_| "the S3 mirror has stopped".to_string())?;
        let result = answer
            .recv()
            .unwrap_or_else(|_| Err("the S3 mirror ended without an answer".into()));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        result
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn final_upload(store: &Store, root: &Path, namespace: &str, keep: usize, last: Final) {
    let result = final_upload_inner(store, root, &last.ckpt, last.deadline).await;
    if result.is_ok() && last.prune {
        prune_logged(store, namespace, keep, last.ckpt.manifest.step).await;
    }
    let _ = last.reply.send(result);
}

async fn prune_logged(store: &Store, namespace: &str, keep: usize, step: u64) {
    match store.prune(namespace, keep).await {
        Ok(0) => {}
        Ok(deleted) => tracing::info!(event = "s3_pruned", step, deleted),
        Err(e) => {
            tracing::warn!(event = "s3_prune_failed", error = %e, "could not prune old checkpoints in S3; the next upload retries")
        }
    }
}

async fn final_upload_inner(
    store: &Store,
    root: &Path,
    ckpt: &ValidCheckpoint,
    deadline: Instant,
) -> Result<u64, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    let started = Instant::now();
    let bytes = tokio::time::timeout(left, store.upload(root, ckpt))
        .await
        .map_err(|_| {
            format!(
                "not finished within the {:.0} s left before the interruption",
                left.as_secs_f64()
            )
        })??;
    tracing::info!(
        event = "s3_uploaded",
        step = ckpt.manifest.step,
        bytes,
        seconds = started.elapsed().as_secs_f64(),
        last = true
    );
    mark_uploaded(&ckpt.dir, &ckpt.manifest).map_err(err)?;
    Ok(bytes)
}

async fn mirror_loop(
    store: Store,
    root: PathBuf,
    namespace: String,
    keep: usize,
    mut rx: mpsc::UnboundedReceiver<Command>,
) {
    let mut queued: Option<ValidCheckpoint> = None;
    loop {
        let ckpt = match queued.take() {
            Some(c) => c,
            None => match rx.recv().await {
                Some(Command::Upload(c)) => c,
                Some(Command::Final(last)) => {
                    final_upload(&store, &root, &namespace, keep, last).await;
                    return;
                }
                None => return,
            },
        };
        let step = ckpt.manifest.step;
        let started = Instant::now();
        let upload = store.upload(&root, &ckpt);
        tokio::pin!(upload);
        let outcome = loop {
            tokio::select! {
                result = &mut upload => break Some(result),
                cmd = rx.recv() => match cmd {
                    // A newer checkpoint waits for this upload (abandoning it for the newest
                    // would starve a slow link of ever finishing one).
                    Some(Command::Upload(newer)) => queued = Some(newer),
                    Some(Command::Final(last)) => {
                        if last.ckpt.manifest.step != step {
                            tracing::info!(event = "s3_upload_abandoned", step, final_step = last.ckpt.manifest.step, "abandoning this upload for the final checkpoint");
                        }
                        final_upload(&store, &root, &namespace, keep, last).await;
                        return;
                    }
                    None => break None,
                },
            }
        };
        match outcome {
            None => return,
            Some(Ok(bytes)) => {
                tracing::info!(
                    event = "s3_uploaded",
                    step,
                    bytes,
                    seconds = started.elapsed().as_secs_f64()
                );
                if let Err(e) = mark_uploaded(&ckpt.dir, &ckpt.manifest) {
                    // Retention may have removed an older checkpoint meanwhile.
                    tracing::debug!(event = "s3_mark_skipped", step, error = %e);
                }
                prune_logged(&store, &namespace, keep, step).await;
            }
            Some(Err(e)) => {
                tracing::error!(event = "s3_upload_failed", step, error = %e, "checkpoint is durable locally but not in S3; the next checkpoint retries");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_uris_parse_and_refuse_nonsense() {
        let u = S3Uri::parse("s3://my-bucket/runs/a/").unwrap();
        assert_eq!(
            (u.bucket.as_str(), u.prefix.as_str()),
            ("my-bucket", "runs/a")
        );
        assert_eq!(
            u.key("algo-1/step-000000000001/manifest.json"),
            "runs/a/algo-1/step-000000000001/manifest.json"
        );
        assert_eq!(S3Uri::parse("s3://bkt").unwrap().key("x"), "x");
        for bad in ["https://b/p", "s3://", "s3://B/p", "s3://b/../p", "s3://ab"] {
            assert!(S3Uri::parse(bad).is_err(), "{bad}");
        }
    }
}
