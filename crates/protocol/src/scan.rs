//! The filesystem shell of validation: find checkpoints under a root, observe their files on
//! local disk, and hand the observations to the pure judgement in `verify`.
//!
//! Owns directory listing, reading manifests and recomputing digests, the [`Report`] the CLI
//! prints, and opening the newest valid checkpoint for a trainer to resume from. It decides
//! nothing itself; every verdict comes from `verify`.
//!
//! Symbolic links: the root and namespace the caller names are used as given; entries found by
//! listing and every path read from a manifest are never followed through a link (a link
//! inside a checkpoint makes it corrupt).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};

use crate::digest::{digest_parallel, hash_reader};
use crate::job::{
    commit_file_name, judge_step, manifest_digest, read_commits, CommitError, JobCommit,
    ParticipantCheck, StepVerdict,
};
use crate::layout::{check_namespace, parse_step_dir_name, Location, PathProblem, MANIFEST_FILE};
use crate::manifest::{FileEntry, Manifest, MAX_MANIFEST_BYTES};
use crate::verify::{
    check_file, judge_files, parse_for, FileCheck, ObservedFile, Reason, Status, Verdict,
};

/// How much of each file a local scan checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Recompute SHA-256 and CRC-64/NVME of every listed file: catches any changed byte. Reads
    /// every byte (about 1 s per GiB).
    Full,
    /// Check presence and sizes only: catches truncation and missing files, not flipped bytes.
    /// For frequent housekeeping (retention after each save) where the trainer wrote the
    /// files itself.
    SizesOnly,
}

/// Result of scanning a checkpoint root; serialises to exactly the JSON the CLI prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Name of the valid checkpoint with the highest step (ties: the greatest name); in a
    /// multi-host job root (one with job commits), the commit file of the newest complete step.
    pub latest_valid: Option<String>,
    /// Every checkpoint directory found, ordered by namespace (root-level first), then step.
    pub checkpoints: Vec<CheckpointReport>,
    /// The job-level view, present only in a job root (see `crate::JobCommit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<JobReport>,
}

/// The job-level view of a multi-host root: which steps every participant holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobReport {
    /// The newest complete step.
    pub latest_complete_step: Option<u64>,
    /// Every commit found, by step, with its verdict and, for an incomplete step, which host
    /// is missing, torn, corrupt or different.
    pub steps: Vec<JobStepReport>,
}

/// One commit and its verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobStepReport {
    /// The step.
    pub step: u64,
    /// The commit's file name.
    pub commit: String,
    /// Complete, or incomplete with the problems.
    #[serde(flatten)]
    pub verdict: StepVerdict,
}

/// One checkpoint directory and its verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointReport {
    /// Relative name, e.g. `algo-1/step-000000001200`.
    pub name: String,
    /// The namespace directory; `None` for step directories directly in the root.
    pub namespace: Option<String>,
    /// The step, from the directory name.
    pub step: u64,
    /// valid, incomplete or corrupt.
    pub status: Status,
    /// Why it is not valid; `None` (JSON `null`) when valid. Serialised as its message.
    #[serde(serialize_with = "message_or_null")]
    pub reason: Option<Reason>,
}

impl CheckpointReport {
    /// The report line for a checkpoint at `location` judged `verdict` (for adapters that judge
    /// elsewhere, e.g. in S3, and then plan retention).
    pub fn new(location: &Location, verdict: Verdict) -> CheckpointReport {
        CheckpointReport {
            name: location.name(),
            namespace: location.namespace.clone(),
            step: location.step,
            status: verdict.status(),
            reason: verdict.into_reason(),
        }
    }
}

fn message_or_null<S: Serializer>(reason: &Option<Reason>, s: S) -> Result<S::Ok, S::Error> {
    match reason {
        Some(reason) => s.collect_str(reason),
        None => s.serialize_none(),
    }
}

/// A checkpoint that passed full verification: where it is and what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidCheckpoint {
    /// Relative name, e.g. `algo-1/step-000000001200`.
    pub name: String,
    /// The step directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

/// Failures of the filesystem shell. An invalid checkpoint is not an error (it is a verdict);
/// these are the cases where no verdict could be reached or a read was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A directory could not be listed or a file read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// What was being read.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The namespace is not a legal namespace directory name.
    #[error("namespace {namespace:?} {problem}")]
    BadNamespace {
        /// The namespace given.
        namespace: String,
        /// What is wrong with it.
        problem: PathProblem,
    },
    /// The file asked for is not part of the checkpoint.
    #[error("{path:?} is not listed in the manifest of {checkpoint}")]
    NotListed {
        /// The checkpoint's name.
        checkpoint: String,
        /// The path asked for.
        path: String,
    },
    /// The file no longer matches the manifest (changed since the checkpoint was opened).
    #[error("{checkpoint} is no longer valid: {reason}")]
    NoLongerValid {
        /// The checkpoint's name.
        checkpoint: String,
        /// What failed.
        reason: Reason,
    },
}

impl ValidCheckpoint {
    /// The step it captures.
    pub fn step(&self) -> u64 {
        self.manifest.step
    }

    /// Where a listed file lives on disk, for readers that open it themselves (e.g. a
    /// safetensors mmap); `None` for paths the manifest does not list.
    pub fn file_path(&self, path: &str) -> Option<PathBuf> {
        self.manifest
            .file(path)
            .map(|entry| join_rel(&self.dir, &entry.path))
    }

    /// Reads a listed file into memory and checks size, SHA-256 and CRC-64/NVME against the
    /// manifest on the very bytes returned, so nothing that changed after validation slips
    /// through.
    pub fn read_verified(&self, path: &str) -> Result<Vec<u8>, ReadError> {
        let entry = self
            .manifest
            .file(path)
            .ok_or_else(|| ReadError::NotListed {
                checkpoint: self.name.clone(),
                path: path.to_owned(),
            })?;
        let invalid = |reason| ReadError::NoLongerValid {
            checkpoint: self.name.clone(),
            reason,
        };
        let found = match locate(&self.dir, entry) {
            Ok(Some(found)) => found,
            Ok(None) => {
                return Err(invalid(Reason::MissingFile {
                    path: entry.path.clone(),
                }))
            }
            Err(reason) => return Err(invalid(reason)),
        };
        if found.size != entry.size {
            return Err(invalid(Reason::SizeMismatch {
                path: entry.path.clone(),
                expected: entry.size,
                found: found.size,
            }));
        }
        let io_err = |source| ReadError::Io {
            path: found.path.clone(),
            source,
        };
        let mut bytes = Vec::new();
        let capacity = usize::try_from(entry.size)
            .map_err(io::Error::other)
            .map_err(io_err)?;
        bytes
            .try_reserve_exact(capacity)
            .map_err(io::Error::other)
            .map_err(io_err)?;
        File::open(&found.path)
            .and_then(|file| file.take(entry.size + 1).read_to_end(&mut bytes))
            .map_err(io_err)?;
        let digest = digest_parallel(&bytes).map_err(io_err)?;
        let seen = ObservedFile {
            path: entry.path.clone(),
            size: digest.size,
            crc64nvme: Some(digest.crc64nvme_base64()),
            sha256: Some(digest.sha256_hex()),
        };
        match check_file(entry, Some(&seen)) {
            FileCheck::Ok => Ok(bytes),
            FileCheck::Missing(reason) | FileCheck::Corrupt(reason) => Err(invalid(reason)),
        }
    }
}

/// Scans `root` with full verification. `root` may hold namespace directories
/// (`<root>/<ns>/step-…`), step directories (`<root>/step-…`, when the root is itself a
/// namespace directory), or both. Other entries are ignored.
pub fn validate_root(root: impl AsRef<Path>) -> Result<Report, ReadError> {
    validate_root_with(root, Verification::Full)
}

/// [`validate_root`] with a chosen depth.
pub fn validate_root_with(
    root: impl AsRef<Path>,
    verification: Verification,
) -> Result<Report, ReadError> {
    let root = root.as_ref();
    let mut locations = Vec::new();
    for name in real_dirs(root)? {
        if let Some(step) = parse_step_dir_name(&name) {
            locations.push(Location {
                namespace: None,
                step,
            });
        } else if check_namespace(&name).is_ok() {
            let steps = step_dirs(&root.join(&name))?;
            locations.extend(steps.into_iter().map(|step| Location {
                namespace: Some(name.clone()),
                step,
            }));
        }
    }
    locations.sort();
    let checkpoints: Vec<CheckpointReport> = locations
        .iter()
        .map(|location| {
            let (verdict, _) = verify_checkpoint(&dir_of(root, location), location, verification);
            CheckpointReport::new(location, verdict)
        })
        .collect();
    let job = job_report(root, &checkpoints)?;
    let latest_valid = match &job {
        Some(job) => job.latest_complete_step.map(commit_file_name),
        None => checkpoints
            .iter()
            .filter(|c| c.status == Status::Valid)
            .max_by(|a, b| (a.step, &a.name).cmp(&(b.step, &b.name)))
            .map(|c| c.name.clone()),
    };
    Ok(Report {
        latest_valid,
        checkpoints,
        job,
    })
}

/// [`read_commits`] with its I/O error as a [`ReadError`] naming `root`.
fn commits_in(root: &Path) -> Result<BTreeMap<u64, Result<JobCommit, CommitError>>, ReadError> {
    read_commits(root).map_err(|source| ReadError::Io {
        path: root.to_path_buf(),
        source,
    })
}

/// The job-level view of `root` from the verdicts already reached, or `None` without commits.
fn job_report(
    root: &Path,
    checkpoints: &[CheckpointReport],
) -> Result<Option<JobReport>, ReadError> {
    let commits = commits_in(root)?;
    if commits.is_empty() {
        return Ok(None);
    }
    let mut steps = Vec::new();
    for (step, commit) in commits {
        let verdict = match commit {
            Err(e) => StepVerdict::Incomplete {
                problems: vec![format!("the commit is unreadable: {e}")],
            },
            Ok(commit) => {
                let found = checkpoints
                    .iter()
                    .filter(|c| c.step == step)
                    .filter_map(|c| {
                        let ns = c.namespace.clone()?;
                        let verdict = c
                            .reason
                            .clone()
                            .map_or(Verdict::Valid, |reason| verdict_of(c.status, reason));
                        let manifest_sha256 = (c.status == Status::Valid)
                            .then(|| manifest_sha256_at(root, &ns, step))
                            .flatten();
                        Some((
                            ns,
                            ParticipantCheck {
                                verdict,
                                manifest_sha256,
                            },
                        ))
                    })
                    .collect();
                judge_step(&commit, &found)
            }
        };
        steps.push(JobStepReport {
            step,
            commit: commit_file_name(step),
            verdict,
        });
    }
    let latest_complete_step = steps
        .iter()
        .filter(|s| s.verdict.is_complete())
        .map(|s| s.step)
        .max();
    Ok(Some(JobReport {
        latest_complete_step,
        steps,
    }))
}

/// A verdict rebuilt from a report line (status and reason).
fn verdict_of(status: Status, reason: Reason) -> Verdict {
    match status {
        Status::Valid => Verdict::Valid,
        Status::Incomplete => Verdict::Incomplete { reason },
        Status::Corrupt => Verdict::Corrupt { reason },
    }
}

/// SHA-256 of `<root>/<ns>/step-…/manifest.json`, if it can be read.
fn manifest_sha256_at(root: &Path, namespace: &str, step: u64) -> Option<String> {
    let dir = dir_of(
        root,
        &Location {
            namespace: Some(namespace.to_owned()),
            step,
        },
    );
    read_manifest(&dir)
        .ok()
        .flatten()
        .map(|b| manifest_digest(&b))
}

/// The checkpoint of `namespace` to resume from: in a single-host root, the newest valid one
/// ([`open_latest_valid`]); in a job root, this namespace's checkpoint of the newest
/// **complete** step — every participant's checkpoint present, valid (this namespace's fully
/// verified, the others' by size: their bytes are theirs to load) and the one the commit names.
/// A job root never falls back to a step that is not complete, so every rank resumes from the
/// same step. Participants must be visible under `root` (SageMaker copies the whole prefix into
/// every host's checkpoint directory at start).
pub fn open_latest_complete(
    root: impl AsRef<Path>,
    namespace: &str,
) -> Result<Option<ValidCheckpoint>, ReadError> {
    let root = root.as_ref();
    let commits = commits_in(root)?;
    if commits.is_empty() {
        return open_latest_valid(root, namespace);
    }
    for commit in commits.into_values().rev().filter_map(Result::ok) {
        if let Some(found) = complete_for(root, namespace, &commit, Verification::Full) {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// In a job root, the steps whose commit names `namespace` and is complete under `root`,
/// newest first, judged by sizes only (a writer that loads one of them checks its own bytes
/// as it reads them, and its process group agrees on the step); `None` for a root without
/// commit files.
pub fn complete_steps(
    root: impl AsRef<Path>,
    namespace: &str,
) -> Result<Option<Vec<u64>>, ReadError> {
    let root = root.as_ref();
    check_namespace(namespace).map_err(|problem| ReadError::BadNamespace {
        namespace: namespace.to_owned(),
        problem,
    })?;
    let commits = commits_in(root)?;
    if commits.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        commits
            .into_values()
            .rev()
            .filter_map(Result::ok)
            .filter(|c| complete_for(root, namespace, c, Verification::SizesOnly).is_some())
            .map(|c| c.step)
            .collect(),
    ))
}

/// This namespace's checkpoint of `commit`'s step, if the step is complete under `root`; this
/// namespace's own checkpoint verified to `own_depth`, the others' by size.
fn complete_for(
    root: &Path,
    namespace: &str,
    commit: &JobCommit,
    own_depth: Verification,
) -> Option<ValidCheckpoint> {
    commit
        .participants
        .iter()
        .any(|p| p.namespace == namespace)
        .then_some(())?;
    let mut found = std::collections::BTreeMap::new();
    let mut mine = None;
    for p in &commit.participants {
        let location = Location {
            namespace: Some(p.namespace.clone()),
            step: commit.step,
        };
        let dir = dir_of(root, &location);
        let depth = if p.namespace == namespace {
            own_depth
        } else {
            Verification::SizesOnly
        };
        let (verdict, manifest) = verify_checkpoint(&dir, &location, depth);
        let manifest_sha256 = read_manifest(&dir)
            .ok()
            .flatten()
            .map(|b| manifest_digest(&b));
        if p.namespace == namespace {
            mine = manifest.map(|manifest| ValidCheckpoint {
                name: location.name(),
                dir: dir.clone(),
                manifest,
            });
        }
        found.insert(
            p.namespace.clone(),
            ParticipantCheck {
                verdict,
                manifest_sha256,
            },
        );
    }
    judge_step(commit, &found)
        .is_complete()
        .then_some(mine)
        .flatten()
}

/// The newest checkpoint of `namespace` under `root` that passes full verification, falling
/// back past incomplete and corrupt ones; `None` when there is none (including when the root
/// or namespace directory does not exist yet: a first start). Only the checkpoints down to the
/// first valid one are read.
pub fn open_latest_valid(
    root: impl AsRef<Path>,
    namespace: &str,
) -> Result<Option<ValidCheckpoint>, ReadError> {
    check_namespace(namespace).map_err(|problem| ReadError::BadNamespace {
        namespace: namespace.to_owned(),
        problem,
    })?;
    let root = root.as_ref();
    let steps = match step_dirs(&root.join(namespace)) {
        Ok(steps) => steps,
        Err(ReadError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(None)
        }
        Err(err) => return Err(err),
    };
    for step in steps.into_iter().rev() {
        let location = Location {
            namespace: Some(namespace.to_owned()),
            step,
        };
        let dir = dir_of(root, &location);
        if let (Verdict::Valid, Some(manifest)) =
            verify_checkpoint(&dir, &location, Verification::Full)
        {
            return Ok(Some(ValidCheckpoint {
                name: location.name(),
                dir,
                manifest,
            }));
        }
    }
    Ok(None)
}

/// Judges the step directory `dir`, which sits at `location`; returns the manifest too when
/// valid.
pub(crate) fn verify_checkpoint(
    dir: &Path,
    location: &Location,
    verification: Verification,
) -> (Verdict, Option<Manifest>) {
    let bytes = match read_manifest(dir) {
        Ok(bytes) => bytes,
        Err(reason) => return (Verdict::Corrupt { reason }, None),
    };
    let manifest = match parse_for(Some(location), bytes.as_deref()) {
        Ok(manifest) => manifest,
        Err(verdict) => return (verdict, None),
    };
    let verdict = judge_files(&manifest, |entry| match observe(dir, entry, verification) {
        Ok(seen) => check_file(entry, seen.as_ref()),
        Err(reason) => FileCheck::Corrupt(reason),
    });
    match verdict {
        Verdict::Valid => (verdict, Some(manifest)),
        _ => (verdict, None),
    }
}

/// The step directory for `location` below `root`.
pub(crate) fn dir_of(root: &Path, location: &Location) -> PathBuf {
    join_rel(root, &location.name())
}

/// Joins a '/'-separated relative path component by component.
fn join_rel(base: &Path, rel: &str) -> PathBuf {
    let mut path = base.to_path_buf();
    path.extend(rel.split('/'));
    path
}

/// `manifest.json`'s bytes (`None` when absent), read with a bound so a huge file costs at
/// most the limit plus one byte.
fn read_manifest(dir: &Path) -> Result<Option<Vec<u8>>, Reason> {
    let path = dir.join(MANIFEST_FILE);
    let unreadable = |err: io::Error| Reason::Unreadable {
        path: MANIFEST_FILE.to_owned(),
        error: err.to_string(),
    };
    match fs::symlink_metadata(&path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(unreadable(err)),
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(Reason::PathEscapes {
                path: MANIFEST_FILE.to_owned(),
            })
        }
        Ok(meta) if !meta.is_file() => {
            return Err(Reason::NotAFile {
                path: MANIFEST_FILE.to_owned(),
            })
        }
        Ok(_) => {}
    }
    let mut bytes = Vec::new();
    match File::open(&path).and_then(|file| {
        file.take(MAX_MANIFEST_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
    }) {
        Ok(_) => Ok(Some(bytes)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(unreadable(err)),
    }
}

/// A listed file found on disk.
struct Located {
    path: PathBuf,
    size: u64,
}

/// Finds a listed file without following links: every intermediate component must be a real
/// directory and the last a regular file. `Ok(None)` when it does not exist.
fn locate(dir: &Path, entry: &FileEntry) -> Result<Option<Located>, Reason> {
    let mut path = dir.to_path_buf();
    let mut components = entry.path.split('/').peekable();
    while let Some(component) = components.next() {
        path.push(component);
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(None)
            }
            Err(err) => {
                return Err(Reason::Unreadable {
                    path: entry.path.clone(),
                    error: err.to_string(),
                })
            }
        };
        let last = components.peek().is_none();
        if meta.file_type().is_symlink() {
            return Err(Reason::PathEscapes {
                path: entry.path.clone(),
            });
        }
        if last && !meta.is_file() {
            return Err(Reason::NotAFile {
                path: entry.path.clone(),
            });
        }
        if !last && !meta.is_dir() {
            // A file where a directory should be: the listed file cannot exist.
            return Ok(None);
        }
        if last {
            return Ok(Some(Located {
                path,
                size: meta.len(),
            }));
        }
    }
    Ok(None)
}

/// Observes a listed file the way `verification` asks. Digests are only computed when the
/// size already matches (a size mismatch is conclusive and cheap).
fn observe(
    dir: &Path,
    entry: &FileEntry,
    verification: Verification,
) -> Result<Option<ObservedFile>, Reason> {
    let Some(found) = locate(dir, entry)? else {
        return Ok(None);
    };
    let size_only = ObservedFile {
        path: entry.path.clone(),
        size: found.size,
        crc64nvme: None,
        sha256: None,
    };
    if verification == Verification::SizesOnly || found.size != entry.size {
        return Ok(Some(size_only));
    }
    let digest = match File::open(&found.path).and_then(|mut file| hash_reader(&mut file)) {
        Ok(digest) => digest,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(Reason::Unreadable {
                path: entry.path.clone(),
                error: err.to_string(),
            })
        }
    };
    Ok(Some(ObservedFile {
        size: digest.size,
        crc64nvme: Some(digest.crc64nvme_base64()),
        sha256: Some(digest.sha256_hex()),
        ..size_only
    }))
}

/// Canonical step directories directly in `dir`, ascending.
fn step_dirs(dir: &Path) -> Result<Vec<u64>, ReadError> {
    let mut steps: Vec<u64> = real_dirs(dir)?
        .into_iter()
        .filter_map(|name| parse_step_dir_name(&name))
        .collect();
    steps.sort_unstable();
    Ok(steps)
}

/// Subdirectories of `dir` that are real directories (not links) with UTF-8 names.
fn real_dirs(dir: &Path) -> Result<Vec<String>, ReadError> {
    let io_err = |source| ReadError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        // `DirEntry::file_type` does not follow links. An entry removed since the listing (a
        // writer sharing the root renamed or deleted it) is skipped.
        let is_dir = match entry.file_type() {
            Ok(t) => t.is_dir(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(e)),
        };
        if let (true, Ok(name)) = (is_dir, entry.file_name().into_string()) {
            found.push(name);
        }
    }
    Ok(found)
}
