//! Checkpoint validation over S3: list a checkpoint prefix, observe the files S3 holds, and let
//! the shared protocol crate judge them.
//!
//! Owns the [`CheckpointStore`] trait (four S3 reads), its SDK implementation
//! [`S3Checkpoints`], and [`validate_checkpoints`], the procedure of
//! `docs/checkpoint-format.md` ("Validating in S3"):
//!
//! 1. ListObjectsV2 the prefix; group keys into checkpoints (`[<ns>/]step-<12 digits>/…`),
//!    ignoring SageMaker's upload markers and `.sagemaker-ignore` temporaries.
//! 2. Newest step first: no `manifest.json` → incomplete. Otherwise GET it with
//!    `Range: bytes=0-1048576` (at most 1 MiB + 1 byte, so an oversized manifest is seen as such
//!    and costs no more).
//! 3. Compare the listing's sizes with the manifest; only when every file is present with the
//!    right size, HeadObject each listed file with `ChecksumMode=ENABLED` (at most
//!    [`ValidationOptions::concurrency`] at once) and compare S3's full-object CRC-64/NVME.
//!    An object without one (uploaded with another checksum algorithm) is stream-hashed, up to
//!    [`ValidationOptions::stream_hash_limit_bytes`]; above that it is checked by size only and
//!    listed in [`CheckpointValidation::size_only`].
//! 4. `judge_at` decides; the walk stops at the first valid checkpoint.
//!
//! **Multi-host jobs**: when the prefix holds job commits (`commit-<step>.json` beside the host
//! namespaces), a step counts only when it is complete — every participant's checkpoint valid
//! and exactly the one the commit names (its `manifest.json`'s SHA-256) — by the protocol
//! crate's `judge_step`. Commits are walked newest first; the first complete step is the
//! newest valid one, and for each newer one [`CheckpointValidation::incomplete_steps`] says
//! which host is missing, torn or different. Without commits, each checkpoint stands alone.
//!
//! A prefix that holds objects but none in a spotcheck checkpoint directory holds another
//! library's checkpoints (Hugging Face Trainer's `checkpoint-500/`, a plain `torch.save`): its
//! summary says [`Validation::UnknownFormat`] instead of "no valid checkpoint", so the engine
//! relaunches without judging progress it cannot see.
//!
//! Cost: one LIST page per 1000 keys, then per checkpoint judged one GET of at most 1 MiB and one
//! HEAD per file — it grows with the number of files, not their bytes (except the stream-hash
//! fallback). Checkpoints older than the newest valid one are not judged: nothing resumes from
//! them. All decisions are the protocol crate's; this module only observes.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use spotcheck_control::{CheckpointSummary, Validation};
use spotcheck_protocol::{
    check_namespace, commit_file_name, crc64nvme_to_base64, is_transport_name, judge_at,
    judge_step, manifest_digest, parse_commit_file_name, parse_step_dir_name, CheckpointReport,
    JobCommit, JobStepReport, Location, Manifest, ObservedFile, ParticipantCheck, Status,
    StepVerdict, Verdict, MANIFEST_FILE, MAX_COMMIT_BYTES, MAX_MANIFEST_BYTES,
};

use crate::error::{AwsError, ErrorKind};

/// One object of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedObject {
    /// Full key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
}

/// What HeadObject (ChecksumMode=ENABLED) reports about one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadResult {
    /// `ContentLength`.
    pub size: u64,
    /// `ChecksumCRC64NVME`, when the object has a full-object CRC-64/NVME.
    pub crc64nvme: Option<String>,
}

/// The S3 reads checkpoint validation needs. `Ok(None)` means "no such object".
pub trait CheckpointStore {
    /// Every object under `prefix` (all pages).
    fn list(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<ListedObject>, AwsError>> + Send;

    /// The first `max_bytes` bytes of an object (a ranged GET).
    fn get_head_bytes(
        &self,
        bucket: &str,
        key: &str,
        max_bytes: u64,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, AwsError>> + Send;

    /// HeadObject with `ChecksumMode=ENABLED`.
    fn head(
        &self,
        bucket: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<HeadResult>, AwsError>> + Send;

    /// Streams the whole object and returns its size and CRC-64/NVME (S3's base64 form): the
    /// fallback for objects S3 holds no CRC-64/NVME for.
    fn stream_crc64nvme(
        &self,
        bucket: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<HeadResult>, AwsError>> + Send;
}

/// Knobs of [`validate_checkpoints`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValidationOptions {
    /// HeadObject (or stream-hash) requests in flight at once.
    pub concurrency: usize,
    /// Largest object stream-hashed when S3 has no CRC-64/NVME for it; larger ones are checked
    /// by size only (and reported).
    pub stream_hash_limit_bytes: u64,
}

impl Default for ValidationOptions {
    fn default() -> Self {
        ValidationOptions {
            concurrency: 16,
            stream_hash_limit_bytes: 512 << 20,
        }
    }
}

/// Why a checkpoint prefix could not be validated.
#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    /// The checkpoint URI is not `s3://bucket[/prefix]`.
    #[error("checkpoint URI {0:?} is not s3://bucket[/prefix]")]
    BadUri(String),
    /// An S3 call failed.
    #[error(transparent)]
    Aws(#[from] AwsError),
}

/// The verdicts on one checkpoint prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckpointValidation {
    /// The prefix validated.
    pub uri: String,
    /// What the decision engine needs.
    pub summary: CheckpointSummary,
    /// Name of the newest valid checkpoint, e.g. `algo-1/step-000000001200`.
    pub latest_valid: Option<String>,
    /// Every checkpoint judged, newest first (those newer than the newest valid one, and it).
    pub checkpoints: Vec<CheckpointReport>,
    /// Older checkpoints found but not judged, because a newer one is valid.
    pub not_judged: usize,
    /// `<checkpoint>/<path>` of files checked by size only (no CRC-64/NVME in S3, too large to
    /// stream-hash).
    pub size_only: Vec<String>,
    /// In a multi-host job prefix: the steps newer than the newest complete one, each with
    /// which host is missing, torn, corrupt or different (empty otherwise).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub incomplete_steps: Vec<JobStepReport>,
}

impl CheckpointValidation {
    /// The corrupt checkpoints among those judged.
    pub fn corrupt(&self) -> impl Iterator<Item = &CheckpointReport> {
        self.checkpoints
            .iter()
            .filter(|c| c.status == Status::Corrupt)
    }
}

/// `s3://bucket/prefix` → (`bucket`, `prefix/`); the prefix is empty or ends with `/`.
pub fn parse_s3_uri(uri: &str) -> Option<(String, String)> {
    let rest = uri.strip_prefix("s3://")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return None;
    }
    let prefix = prefix.trim_end_matches('/');
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    Some((bucket.to_owned(), prefix))
}

/// The keys of one checkpoint directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Candidate {
    manifest: Option<String>,
    /// Relative path → (full key, listed size).
    files: HashMap<String, (String, u64)>,
}

/// Groups a listing into checkpoint directories (pure). Keys that are not inside a
/// `[<ns>/]step-<N>/` directory, and transport names anywhere, are ignored.
fn group(prefix: &str, listing: &[ListedObject]) -> BTreeMap<Location, Candidate> {
    let mut out: BTreeMap<Location, Candidate> = BTreeMap::new();
    for object in listing {
        let Some(rel) = object.key.strip_prefix(prefix) else {
            continue;
        };
        let mut parts = rel.splitn(3, '/');
        let (first, second, third) = (parts.next(), parts.next(), parts.next());
        let (location, path) = match (first.and_then(parse_step_dir_name), second) {
            (Some(step), Some(rest)) => {
                let rest = match third {
                    Some(third) => format!("{rest}/{third}"),
                    None => rest.to_owned(),
                };
                (
                    Location {
                        namespace: None,
                        step,
                    },
                    rest,
                )
            }
            _ => {
                let (Some(ns), Some(step_dir), Some(path)) = (first, second, third) else {
                    continue;
                };
                let Some(step) = parse_step_dir_name(step_dir) else {
                    continue;
                };
                if check_namespace(ns).is_err() {
                    continue;
                }
                (
                    Location {
                        namespace: Some(ns.to_owned()),
                        step,
                    },
                    path.to_owned(),
                )
            }
        };
        if path.is_empty() || path.split('/').any(is_transport_name) {
            continue;
        }
        let candidate = out.entry(location).or_default();
        if path == MANIFEST_FILE {
            candidate.manifest = Some(object.key.clone());
        } else {
            candidate
                .files
                .insert(path, (object.key.clone(), object.size));
        }
    }
    out
}

/// Whether a manifest's free-form `meta` marks training as finished.
fn marks_finished(manifest: &Manifest) -> bool {
    manifest
        .meta
        .as_ref()
        .and_then(|m| m.get("finished"))
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false)
}

/// Validates every checkpoint under `uri`, newest first, until one is valid (see the module
/// doc). Transient S3 failures come back as [`ValidationError::Aws`] with
/// [`ErrorKind::Transient`].
pub async fn validate_checkpoints<S: CheckpointStore + Sync>(
    store: &S,
    uri: &str,
    options: ValidationOptions,
) -> Result<CheckpointValidation, ValidationError> {
    let (bucket, prefix) =
        parse_s3_uri(uri).ok_or_else(|| ValidationError::BadUri(uri.to_owned()))?;
    let listing = store.list(&bucket, &prefix).await?;
    let groups = group(&prefix, &listing);
    let foreign = listing.iter().any(|object| {
        object
            .key
            .strip_prefix(&prefix)
            .is_some_and(|rel| !rel.is_empty() && !rel.split('/').any(is_transport_name))
    });
    let commits: BTreeMap<u64, String> = listing
        .iter()
        .filter_map(|o| {
            let rel = o.key.strip_prefix(&prefix)?;
            Some((parse_commit_file_name(rel)?, o.key.clone()))
        })
        .collect();
    let mut result = CheckpointValidation {
        uri: uri.to_owned(),
        summary: CheckpointSummary::default(),
        latest_valid: None,
        checkpoints: Vec::new(),
        not_judged: 0,
        size_only: Vec::new(),
        incomplete_steps: Vec::new(),
    };
    if groups.is_empty() && foreign {
        result.summary.validation = Validation::UnknownFormat;
        return Ok(result);
    }
    if !commits.is_empty() {
        validate_job(store, &bucket, &commits, &groups, options, &mut result).await?;
        return Ok(result);
    }
    let mut newest_first: Vec<_> = groups.into_iter().collect();
    newest_first.sort_by_key(|(location, _)| std::cmp::Reverse((location.step, location.name())));
    let total = newest_first.len();
    for (index, (location, candidate)) in newest_first.into_iter().enumerate() {
        let Judged {
            verdict, manifest, ..
        } = judge_one(store, &bucket, &location, &candidate, options, &mut result).await?;
        let valid = verdict.is_valid();
        result.summary.any_corrupt |= verdict.status() == Status::Corrupt;
        result
            .checkpoints
            .push(CheckpointReport::new(&location, verdict));
        if valid {
            result.summary.latest_valid_step = Some(location.step);
            result.summary.finished = manifest.as_ref().is_some_and(marks_finished);
            result.latest_valid = Some(location.name());
            result.not_judged = total - index - 1;
            break;
        }
    }
    Ok(result)
}

/// Walks a job prefix's commits newest first until one is complete (see the module doc).
async fn validate_job<S: CheckpointStore + Sync>(
    store: &S,
    bucket: &str,
    commits: &BTreeMap<u64, String>,
    groups: &BTreeMap<Location, Candidate>,
    options: ValidationOptions,
    result: &mut CheckpointValidation,
) -> Result<(), AwsError> {
    let total = commits.len();
    for (index, (&step, key)) in commits.iter().rev().enumerate() {
        let bytes = store
            .get_head_bytes(bucket, key, MAX_COMMIT_BYTES as u64 + 1)
            .await?;
        let commit = match bytes
            .as_deref()
            .map(|b| JobCommit::parse_at(&commit_file_name(step), b))
        {
            Some(Ok(commit)) => commit,
            Some(Err(e)) => {
                result.incomplete_steps.push(JobStepReport {
                    step,
                    commit: commit_file_name(step),
                    verdict: StepVerdict::Incomplete {
                        problems: vec![format!("the commit is unreadable: {e}")],
                    },
                });
                continue;
            }
            // Deleted between the listing and the GET.
            None => continue,
        };
        let mut found = BTreeMap::new();
        let mut finished = commit.finished();
        for p in &commit.participants {
            let location = Location {
                namespace: Some(p.namespace.clone()),
                step,
            };
            let Some(candidate) = groups.get(&location) else {
                continue;
            };
            let judged = judge_one(store, bucket, &location, candidate, options, result).await?;
            finished |= judged.manifest.as_ref().is_some_and(marks_finished);
            result.summary.any_corrupt |= judged.verdict.status() == Status::Corrupt;
            result
                .checkpoints
                .push(CheckpointReport::new(&location, judged.verdict.clone()));
            found.insert(
                p.namespace.clone(),
                ParticipantCheck {
                    verdict: judged.verdict,
                    manifest_sha256: judged.manifest_sha256,
                },
            );
        }
        match judge_step(&commit, &found) {
            StepVerdict::Complete => {
                result.summary.latest_valid_step = Some(step);
                result.summary.finished = finished;
                result.latest_valid = Some(commit_file_name(step));
                result.not_judged = total - index - 1;
                return Ok(());
            }
            verdict => result.incomplete_steps.push(JobStepReport {
                step,
                commit: commit_file_name(step),
                verdict,
            }),
        }
    }
    Ok(())
}

/// One checkpoint's verdict, its manifest when it parsed, and the SHA-256 of the manifest's
/// bytes (what a job commit names).
struct Judged {
    verdict: Verdict,
    manifest: Option<Manifest>,
    manifest_sha256: Option<String>,
}

async fn judge_one<S: CheckpointStore + Sync>(
    store: &S,
    bucket: &str,
    location: &Location,
    candidate: &Candidate,
    options: ValidationOptions,
    result: &mut CheckpointValidation,
) -> Result<Judged, AwsError> {
    let absent = || Judged {
        verdict: judge_at(location, None, &[]),
        manifest: None,
        manifest_sha256: None,
    };
    let Some(manifest_key) = &candidate.manifest else {
        return Ok(absent());
    };
    let limit = MAX_MANIFEST_BYTES as u64 + 1;
    let Some(bytes) = store.get_head_bytes(bucket, manifest_key, limit).await? else {
        // Deleted between the listing and the GET.
        return Ok(absent());
    };
    let manifest_sha256 = Some(manifest_digest(&bytes));
    let manifest = match Manifest::parse(&bytes) {
        Ok(manifest) => manifest,
        Err(_) => {
            return Ok(Judged {
                verdict: judge_at(location, Some(&bytes), &[]),
                manifest: None,
                manifest_sha256,
            })
        }
    };
    // First the listing's sizes: a missing or truncated file needs no HEAD to be judged.
    let listed: Vec<ObservedFile> = manifest
        .files
        .iter()
        .filter_map(|entry| {
            let (_, size) = candidate.files.get(&entry.path)?;
            Some(ObservedFile {
                path: entry.path.clone(),
                size: *size,
                crc64nvme: None,
                sha256: None,
            })
        })
        .collect();
    let by_size = judge_at(location, Some(&bytes), &listed);
    if !by_size.is_valid() {
        return Ok(Judged {
            verdict: by_size,
            manifest: Some(manifest),
            manifest_sha256,
        });
    }
    // Then S3's checksums, a bounded number of requests at a time.
    let observed: Vec<(ObservedFile, bool)> = futures::stream::iter(manifest.files.iter())
        .filter_map(|entry| async move {
            candidate
                .files
                .get(&entry.path)
                .map(|(key, _)| (entry.path.clone(), key.clone()))
        })
        .map(|(path, key)| async move {
            let Some(head) = store.head(bucket, &key).await? else {
                return Ok::<_, AwsError>(None);
            };
            let (head, size_only) = match head.crc64nvme {
                Some(_) => (Some(head), false),
                None if head.size <= options.stream_hash_limit_bytes => {
                    (store.stream_crc64nvme(bucket, &key).await?, false)
                }
                None => (Some(head), true),
            };
            Ok(head.map(|h| {
                (
                    ObservedFile {
                        path,
                        size: h.size,
                        crc64nvme: h.crc64nvme,
                        sha256: None,
                    },
                    size_only,
                )
            }))
        })
        .buffer_unordered(options.concurrency.max(1))
        .try_filter_map(|found| async move { Ok(found) })
        .try_collect()
        .await?;
    let name = location.name();
    result.size_only.extend(
        observed
            .iter()
            .filter(|(_, size_only)| *size_only)
            .map(|(f, _)| format!("{name}/{}", f.path)),
    );
    let observed: Vec<ObservedFile> = observed.into_iter().map(|(f, _)| f).collect();
    Ok(Judged {
        verdict: judge_at(location, Some(&bytes), &observed),
        manifest: Some(manifest),
        manifest_sha256,
    })
}

/// [`CheckpointStore`] over the AWS SDK's S3 client.
#[derive(Clone, Debug)]
pub struct S3Checkpoints {
    client: aws_sdk_s3::Client,
}

impl S3Checkpoints {
    /// From a ready S3 client (see [`crate::sdk::s3_client`] for path-style emulator setups).
    pub fn new(client: aws_sdk_s3::Client) -> Self {
        S3Checkpoints { client }
    }
}

fn not_found_is_none<T>(result: Result<T, AwsError>) -> Result<Option<T>, AwsError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn size_of(length: Option<i64>) -> u64 {
    length.and_then(|n| u64::try_from(n).ok()).unwrap_or(0)
}

impl CheckpointStore for S3Checkpoints {
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ListedObject>, AwsError> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| AwsError::from_sdk("ListObjectsV2", e))?;
            out.extend(page.contents().iter().filter_map(|o| {
                Some(ListedObject {
                    key: o.key.clone()?,
                    size: size_of(o.size),
                })
            }));
        }
        Ok(out)
    }

    async fn get_head_bytes(
        &self,
        bucket: &str,
        key: &str,
        max_bytes: u64,
    ) -> Result<Option<Vec<u8>>, AwsError> {
        let last = max_bytes.saturating_sub(1);
        let sent = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .range(format!("bytes=0-{last}"))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("GetObject", e));
        let output = match sent {
            Ok(output) => output,
            // S3 answers a range over an empty object with 416: the object is empty.
            Err(e) if e.message.starts_with("InvalidRange") => return Ok(Some(Vec::new())),
            Err(e) if e.kind == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut body = output.body;
        let mut bytes = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                AwsError::new(
                    "GetObject",
                    ErrorKind::Transient,
                    format!("reading body: {e}"),
                )
            })?;
            // Never trust the server to honour the range.
            let room = usize::try_from(max_bytes).unwrap_or(usize::MAX) - bytes.len();
            bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if bytes.len() as u64 >= max_bytes {
                break;
            }
        }
        Ok(Some(bytes))
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<Option<HeadResult>, AwsError> {
        not_found_is_none(
            self.client
                .head_object()
                .bucket(bucket)
                .key(key)
                .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("HeadObject", e)),
        )
        .map(|found| {
            found.map(|out| HeadResult {
                size: size_of(out.content_length()),
                crc64nvme: out.checksum_crc64_nvme().map(str::to_owned),
            })
        })
    }

    async fn stream_crc64nvme(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<HeadResult>, AwsError> {
        let sent = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("GetObject", e));
        let Some(output) = not_found_is_none(sent)? else {
            return Ok(None);
        };
        let mut body = output.body;
        let mut crc = crc64fast_nvme::Digest::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                AwsError::new(
                    "GetObject",
                    ErrorKind::Transient,
                    format!("reading body: {e}"),
                )
            })?;
            crc.write(&chunk);
            size += chunk.len() as u64;
        }
        Ok(Some(HeadResult {
            size,
            crc64nvme: Some(crc64nvme_to_base64(crc.sum64())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str, size: u64) -> ListedObject {
        ListedObject {
            key: key.into(),
            size,
        }
    }

    #[test]
    fn uris() {
        assert_eq!(
            parse_s3_uri("s3://b/ckpt/run-1"),
            Some(("b".into(), "ckpt/run-1/".into()))
        );
        assert_eq!(
            parse_s3_uri("s3://b/ckpt/"),
            Some(("b".into(), "ckpt/".into()))
        );
        assert_eq!(parse_s3_uri("s3://b"), Some(("b".into(), String::new())));
        assert_eq!(parse_s3_uri("s3:///x"), None);
        assert_eq!(parse_s3_uri("https://b/x"), None);
    }

    #[test]
    fn grouping_ignores_markers_and_strays() {
        let listing = [
            obj("p/algo-1/step-000000001200/manifest.json", 900),
            obj("p/algo-1/step-000000001200/model.safetensors", 248),
            obj(
                "p/algo-1/step-000000001200/model.safetensors.sagemaker-uploaded",
                0,
            ),
            obj("p/algo-1/step-000000001200/tmp.sagemaker-ignore/x", 1),
            obj("p/algo-1/step-000000001300/sub/dir/file.bin", 5),
            obj("p/step-000000000100/manifest.json", 10),
            obj("p/step-100/manifest.json", 10),
            obj("p/README.md", 10),
            obj("p/algo-1/notes.txt", 10),
            obj("other/step-000000000100/manifest.json", 10),
        ];
        let groups = group("p/", &listing);
        let names: Vec<String> = groups.keys().map(Location::name).collect();
        assert_eq!(
            names,
            [
                "step-000000000100",
                "algo-1/step-000000001200",
                "algo-1/step-000000001300"
            ]
        );
        let ckpt = &groups[&Location::parse("algo-1/step-000000001200").unwrap()];
        assert!(ckpt.manifest.is_some());
        assert_eq!(ckpt.files.len(), 1);
        let nested = &groups[&Location::parse("algo-1/step-000000001300").unwrap()];
        assert!(nested.files.contains_key("sub/dir/file.bin"));
    }
}
