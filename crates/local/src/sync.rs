//! Checkpoint sync between a job's `CheckpointConfig.LocalPath` and its `S3Uri`, the way
//! SageMaker does it.
//!
//! - At instance start, [`CheckpointSync::download`] copies the S3 prefix into the local
//!   directory (objects added to S3 later are not copied in).
//! - While training, [`CheckpointSync::pass`] (run every sync interval) uploads new and changed
//!   files in a shuffled order (SageMaker documents none), leaving `<file>.sagemaker-uploading`
//!   beside a file while it is uploaded and `<file>.sagemaker-uploaded` after, and deletes from
//!   S3 what was deleted locally (including files that came from the download).
//! - Temporary `*.sagemaker-ignore` files and the markers themselves are never uploaded.
//! - Uploads are not instant: a file is picked up only once it is [`UploadLimits::lag`] old,
//!   and with a bandwidth limit each takes its size / bandwidth (its `.sagemaker-uploading`
//!   marker shows meanwhile) before the object appears in S3. An instance that goes without
//!   warning takes whatever was not uploaded with it.
//!
//! Uploads carry a CRC-64/NVME checksum, so the object has the full-object CRC-64/NVME that S3
//! gives new objects by default and the validator reads from HeadObject. The decision of what
//! to do is the pure [`plan`]; the rest is the S3 and filesystem shell.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumAlgorithm;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use spotcheck_protocol::{is_transport_name, UPLOADED_SUFFIX, UPLOADING_SUFFIX};

/// A file under the local checkpoint directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalFile {
    /// Path relative to the directory, `/`-separated.
    pub rel: String,
    /// Size and modification time (nanoseconds): a change of either means "changed".
    pub stamp: (u64, i128),
}

/// What one pass does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncAction {
    /// Upload this file.
    Upload(String),
    /// Delete this key (relative) from S3.
    Delete(String),
}

/// How fast the uploader ships files: SageMaker's is asynchronous and its bandwidth finite,
/// and tests that assume an instant upload are kinder than AWS. The service states them in
/// simulated time, as everything else of the platform (market, billing), and hands the sync
/// their wall-time equivalent ([`UploadLimits::in_wall_time`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UploadLimits {
    /// A new or changed file is picked up only once it is this old.
    pub lag: Duration,
    /// Bytes per second; `None`: as fast as the S3 endpoint takes them.
    pub bandwidth: Option<u64>,
}

impl UploadLimits {
    /// No lag, no bandwidth limit.
    pub const INSTANT: UploadLimits = UploadLimits {
        lag: Duration::ZERO,
        bandwidth: None,
    };

    /// These limits, stated in simulated time, in wall time when simulated time runs
    /// `time_scale` times faster: a shorter lag and a wider pipe. (Stated in wall time, a
    /// faster-scaled run would see its uploads take simulated hours: a 628 KB checkpoint at
    /// 256 KiB/s took 1.8 of them in the demo, and its on-demand attempt billed the wait.)
    pub fn in_wall_time(self, time_scale: f64) -> UploadLimits {
        if !(time_scale.is_finite() && time_scale > 0.0) {
            return self;
        }
        UploadLimits {
            lag: self.lag.div_f64(time_scale),
            bandwidth: self
                .bandwidth
                .map(|b| (b as f64 * time_scale).min(u64::MAX as f64) as u64),
        }
    }

    /// How long sending `bytes` takes at the bandwidth limit.
    pub fn transfer_time(&self, bytes: u64) -> Duration {
        match self.bandwidth {
            Some(bw) if bw > 0 => Duration::from_secs_f64(bytes as f64 / bw as f64),
            _ => Duration::ZERO,
        }
    }
}

/// The pure decision: upload what is new or changed since it was last synced (and last
/// modified at or before `ready_ns`: younger files wait for a later pass), delete what was
/// synced and is gone locally; transport names are ignored on both sides.
pub fn plan(
    local: &[LocalFile],
    synced: &BTreeMap<String, (u64, i128)>,
    ready_ns: i128,
) -> Vec<SyncAction> {
    let mut actions = Vec::new();
    let file_name = |rel: &str| rel.rsplit('/').next().unwrap_or(rel).to_owned();
    for f in local {
        if is_transport_name(&file_name(&f.rel)) {
            continue;
        }
        if synced.get(&f.rel) != Some(&f.stamp) && f.stamp.1 <= ready_ns {
            actions.push(SyncAction::Upload(f.rel.clone()));
        }
    }
    for rel in synced.keys() {
        if !local.iter().any(|f| &f.rel == rel) {
            actions.push(SyncAction::Delete(rel.clone()));
        }
    }
    actions
}

/// Something the sync did, for timelines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SyncRecord {
    /// A file reached S3.
    Uploaded {
        /// Relative path.
        rel: String,
        /// Bytes.
        bytes: u64,
    },
    /// A file was deleted from S3.
    Deleted {
        /// Relative path.
        rel: String,
    },
}

/// Why a sync step failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The URI is not `s3://bucket[/prefix]`.
    #[error("checkpoint URI {0:?} is not s3://bucket[/prefix]")]
    BadUri(String),
    /// An S3 call failed.
    #[error("S3 {operation} {key}: {message}")]
    S3 {
        /// The operation.
        operation: &'static str,
        /// The key.
        key: String,
        /// What S3 or the SDK said.
        message: String,
    },
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SyncError + '_ {
    move |source| SyncError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Splits `s3://bucket/prefix` into the bucket and the prefix (with a trailing `/` when not
/// empty).
pub fn split_s3_uri(uri: &str) -> Result<(String, String), SyncError> {
    let rest = uri
        .strip_prefix("s3://")
        .ok_or_else(|| SyncError::BadUri(uri.to_owned()))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(SyncError::BadUri(uri.to_owned()));
    }
    let prefix = prefix.trim_matches('/');
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    Ok((bucket.to_owned(), prefix))
}

/// Lists every object under a prefix (all pages).
pub async fn list_keys(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<(String, u64)>, SyncError> {
    let mut out = Vec::new();
    let mut pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| SyncError::S3 {
            operation: "ListObjectsV2",
            key: prefix.to_owned(),
            message: aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
        })?;
        for o in page.contents() {
            if let Some(k) = o.key() {
                out.push((k.to_owned(), o.size().unwrap_or(0).max(0) as u64));
            }
        }
    }
    Ok(out)
}

/// Downloads one object to a file (parents created).
pub async fn get_to_file(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    dest: &Path,
) -> Result<(), SyncError> {
    let out = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| SyncError::S3 {
            operation: "GetObject",
            key: key.to_owned(),
            message: aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
        })?;
    let bytes = out.body.collect().await.map_err(|e| SyncError::S3 {
        operation: "GetObject",
        key: key.to_owned(),
        message: e.to_string(),
    })?;
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(io(parent))?;
    }
    tokio::fs::write(dest, bytes.into_bytes())
        .await
        .map_err(io(dest))
}

/// Uploads a file with a CRC-64/NVME checksum.
pub async fn put_file(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    path: &Path,
) -> Result<u64, SyncError> {
    let bytes = tokio::fs::read(path).await.map_err(io(path))?;
    let n = bytes.len() as u64;
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
        .body(ByteStream::from(bytes))
        .send()
        .await
        .map_err(|e| SyncError::S3 {
            operation: "PutObject",
            key: key.to_owned(),
            message: aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
        })?;
    Ok(n)
}

/// The sync of one instance's checkpoint directory (see the module doc).
pub struct CheckpointSync {
    s3: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    local: PathBuf,
    synced: BTreeMap<String, (u64, i128)>,
    rng: ChaCha8Rng,
    limits: UploadLimits,
    /// What reached S3 (or left it) since [`CheckpointSync::take_records`] was last called:
    /// kept here, not in a pass's return value, so a pass dropped mid-way (an instance that
    /// goes) still reports the uploads it finished.
    records: Vec<SyncRecord>,
}

fn stamp(meta: &std::fs::Metadata) -> (u64, i128) {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128);
    (meta.len(), mtime)
}

/// Every regular file under `root` (relative, `/`-separated); a directory that vanishes while
/// being walked (the trainer's retention) is skipped.
pub fn scan(root: &Path) -> Vec<LocalFile> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                if let Ok(rel) = path.strip_prefix(root) {
                    let rel = rel
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join("/");
                    out.push(LocalFile {
                        rel,
                        stamp: stamp(&meta),
                    });
                }
            }
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    out
}

impl CheckpointSync {
    /// A sync of `local` with `s3_uri`; `rng` orders the uploads.
    pub fn new(
        s3: aws_sdk_s3::Client,
        s3_uri: &str,
        local: PathBuf,
        rng: ChaCha8Rng,
        limits: UploadLimits,
    ) -> Result<Self, SyncError> {
        let (bucket, prefix) = split_s3_uri(s3_uri)?;
        Ok(CheckpointSync {
            s3,
            bucket,
            prefix,
            local,
            synced: BTreeMap::new(),
            rng,
            limits,
            records: Vec::new(),
        })
    }

    /// The local directory this sync mirrors.
    pub fn local(&self) -> &Path {
        &self.local
    }

    /// The uploads and deletions done since the last call, in order.
    pub fn take_records(&mut self) -> Vec<SyncRecord> {
        std::mem::take(&mut self.records)
    }

    /// Copies the S3 prefix into the local directory (created if missing); returns the number
    /// of files.
    pub async fn download(&mut self) -> Result<usize, SyncError> {
        tokio::fs::create_dir_all(&self.local)
            .await
            .map_err(io(&self.local))?;
        let keys = list_keys(&self.s3, &self.bucket, &self.prefix).await?;
        let mut n = 0;
        for (key, _) in keys {
            let rel = key[self.prefix.len()..].to_owned();
            let name = rel.rsplit('/').next().unwrap_or(&rel);
            if rel.is_empty()
                || rel.ends_with('/')
                || is_transport_name(name)
                || rel.split('/').any(|c| c == "..")
            {
                continue;
            }
            let dest = self.local.join(&rel);
            get_to_file(&self.s3, &self.bucket, &key, &dest).await?;
            let meta = std::fs::metadata(&dest).map_err(io(&dest))?;
            self.synced.insert(rel, stamp(&meta));
            n += 1;
        }
        Ok(n)
    }

    /// One pass: upload what is new or changed, delete what is gone (see the module doc).
    /// Cancel-safe between files: dropping it mid-way leaves what was uploaded recorded, and
    /// [`CheckpointSync::take_records`] reports it.
    pub async fn pass(&mut self) -> Result<(), SyncError> {
        let local = scan(&self.local);
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let ready_ns = now_ns - self.limits.lag.as_nanos() as i128;
        let mut actions = plan(&local, &self.synced, ready_ns);
        actions.shuffle(&mut self.rng);
        for action in actions {
            match action {
                SyncAction::Upload(rel) => {
                    if let Some(r) = self.upload(&rel).await? {
                        self.records.push(r);
                    }
                }
                SyncAction::Delete(rel) => {
                    let key = format!("{}{rel}", self.prefix);
                    self.s3
                        .delete_object()
                        .bucket(&self.bucket)
                        .key(&key)
                        .send()
                        .await
                        .map_err(|e| SyncError::S3 {
                            operation: "DeleteObject",
                            key: key.clone(),
                            message: aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
                        })?;
                    self.synced.remove(&rel);
                    let path = self.local.join(&rel);
                    for suffix in [UPLOADING_SUFFIX, UPLOADED_SUFFIX] {
                        let _ = std::fs::remove_file(marker(&path, suffix));
                    }
                    self.records.push(SyncRecord::Deleted { rel });
                }
            }
        }
        Ok(())
    }

    /// Uploads one file with its markers; `None` when it vanished meanwhile.
    async fn upload(&mut self, rel: &str) -> Result<Option<SyncRecord>, SyncError> {
        let path = self.local.join(rel);
        let Ok(meta) = std::fs::metadata(&path) else {
            return Ok(None);
        };
        let uploading = marker(&path, UPLOADING_SUFFIX);
        let uploaded = marker(&path, UPLOADED_SUFFIX);
        let _ = std::fs::remove_file(&uploaded);
        // The directory may be removed by the trainer's retention at any moment: markers are
        // best effort, the upload is not.
        let _ = std::fs::write(&uploading, b"");
        // The transfer takes its time before the object exists in S3.
        tokio::time::sleep(self.limits.transfer_time(meta.len())).await;
        let key = format!("{}{rel}", self.prefix);
        let result = put_file(&self.s3, &self.bucket, &key, &path).await;
        let _ = std::fs::remove_file(&uploading);
        match result {
            Ok(bytes) => {
                let _ = std::fs::write(&uploaded, b"");
                self.synced.insert(rel.to_owned(), stamp(&meta));
                Ok(Some(SyncRecord::Uploaded {
                    rel: rel.to_owned(),
                    bytes,
                }))
            }
            Err(_) if !path.exists() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn marker(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(rel: &str, size: u64) -> LocalFile {
        LocalFile {
            rel: rel.into(),
            stamp: (size, 1),
        }
    }

    #[test]
    fn plan_table() {
        let synced: BTreeMap<String, (u64, i128)> = [
            (
                "algo-1/step-000000000010/model.safetensors".to_string(),
                (5, 1),
            ),
            ("algo-1/step-000000000010/manifest.json".to_string(), (2, 1)),
            ("algo-1/old".to_string(), (1, 1)),
        ]
        .into_iter()
        .collect();
        let local = [
            f("algo-1/step-000000000010/model.safetensors", 5),
            f("algo-1/step-000000000010/manifest.json", 3),
            f("algo-1/step-000000000020/model.safetensors", 9),
            f("algo-1/step-000000000020/x.sagemaker-ignore", 9),
            f(
                "algo-1/step-000000000020/model.safetensors.sagemaker-uploading",
                0,
            ),
            f(
                "algo-1/step-000000000010/model.safetensors.sagemaker-uploaded",
                0,
            ),
        ];
        assert_eq!(
            plan(&local, &synced, 1),
            vec![
                SyncAction::Upload("algo-1/step-000000000010/manifest.json".into()),
                SyncAction::Upload("algo-1/step-000000000020/model.safetensors".into()),
                SyncAction::Delete("algo-1/old".into()),
            ]
        );
        assert!(plan(&[], &BTreeMap::new(), 1).is_empty());
        // Files modified after `ready_ns` wait (the uploader's lag); deletions do not.
        assert_eq!(
            plan(&local, &synced, 0),
            vec![SyncAction::Delete("algo-1/old".into())]
        );
        let limits = UploadLimits {
            lag: Duration::ZERO,
            bandwidth: Some(1000),
        };
        assert_eq!(limits.transfer_time(2500), Duration::from_millis(2500));
        assert_eq!(UploadLimits::INSTANT.transfer_time(1 << 30), Duration::ZERO);
        // Simulated time 100 times faster: a hundredth of the lag, a hundred times the rate.
        let simulated = UploadLimits {
            lag: Duration::from_secs(60),
            bandwidth: Some(1000),
        };
        assert_eq!(
            simulated.in_wall_time(100.0),
            UploadLimits {
                lag: Duration::from_millis(600),
                bandwidth: Some(100_000),
            }
        );
        assert_eq!(simulated.in_wall_time(1.0), simulated);
        assert_eq!(simulated.in_wall_time(f64::NAN), simulated);
        assert_eq!(
            UploadLimits::INSTANT.in_wall_time(1e6),
            UploadLimits::INSTANT
        );
    }

    #[test]
    fn uris() {
        assert_eq!(
            split_s3_uri("s3://b/p/q/").unwrap(),
            ("b".into(), "p/q/".into())
        );
        assert_eq!(split_s3_uri("s3://b").unwrap(), ("b".into(), "".into()));
        assert!(split_s3_uri("s3:///x").is_err());
        assert!(split_s3_uri("/tmp").is_err());
    }
}
