//! Multi-host jobs: a step is complete only when every participating host has a valid
//! checkpoint of it.
//!
//! Every host of a multi-instance job writes its own checkpoint under its own namespace
//! (`<root>/<host>/step-…/`), and SageMaker restarts all hosts together, each resuming from its
//! own namespace: a step one host has and another lost is no step at all. The **job commit**
//! (`<root>/commit-<12 digits>.json`, beside the namespaces) names the participants — rank,
//! namespace and the SHA-256 of each one's `manifest.json` — and is written after every
//! participant has committed its checkpoint (the writers agree on it through their process
//! group: a barrier, then an all-gather of the manifest digests).
//!
//! The commit is a claim, never trusted by itself: a step is **complete** when its commit parses
//! and every participant's checkpoint is valid and has exactly the manifest the commit names.
//! So the commit may be written by every rank (identical bytes: each host's own retention needs
//! it on its local disk, and SageMaker's uploader then puts the same object from each host), and
//! may reach S3 before the participants do — a reader then sees an incomplete step, not a wrong
//! one.
//!
//! A root without any commit file is a single-host root (or one from writers that predate job
//! commits): each namespace stands alone, as before. A root with commit files is a job root:
//! only complete steps count, for resume, validation, the control plane's progress accounting
//! and retention alike.
//!
//! Everything here is pure (bytes and verdicts in, verdicts out) except [`write_commit`].

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::digest::is_canonical_sha256_hex;
use crate::durable::{remove_checkpoint_dir, sync_dir};
use crate::layout::{check_namespace, excerpt, PathProblem, STEP_DIGITS, TEMP_SUFFIX};
use crate::verify::Verdict;

/// Prefix of a job commit's file name (`commit-000000001200.json`).
pub const COMMIT_PREFIX: &str = "commit-";

/// Suffix of a job commit's file name.
pub const COMMIT_SUFFIX: &str = ".json";

/// The job-commit format this crate writes and reads.
pub const COMMIT_FORMAT_VERSION: u32 = 1;

/// Largest commit file accepted, in bytes.
pub const MAX_COMMIT_BYTES: usize = 1 << 20;

/// Most participants a commit may list.
pub const MAX_PARTICIPANTS: usize = 4096;

/// `commit-<12 digits>.json` for `step`.
pub fn commit_file_name(step: u64) -> String {
    format!(
        "{COMMIT_PREFIX}{step:0width$}{COMMIT_SUFFIX}",
        width = STEP_DIGITS
    )
}

/// The step of a canonical commit file name, else `None`.
pub fn parse_commit_file_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(COMMIT_PREFIX)?
        .strip_suffix(COMMIT_SUFFIX)?;
    if digits.len() != STEP_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One host's part of a job step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Participant {
    /// Its rank in the job's process group (0-based).
    pub rank: u32,
    /// Its namespace directory.
    pub namespace: String,
    /// SHA-256 (64 lowercase hex digits) of its checkpoint's `manifest.json` bytes.
    pub manifest_sha256: String,
}

/// The contents of a job commit file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobCommit {
    /// Always [`COMMIT_FORMAT_VERSION`].
    pub format_version: u32,
    /// The step every participant checkpointed.
    pub step: u64,
    /// Participants in the job (ranks `0..world_size`, each listed once).
    pub world_size: u32,
    /// When it was written, in Unix milliseconds, as supplied by the writer's caller.
    pub created_at_ms: u64,
    /// Free-form caller data (e.g. `finished`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Value>,
    /// The participants, by rank.
    pub participants: Vec<Participant>,
}

/// Why bytes are not an acceptable job commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// Over [`MAX_COMMIT_BYTES`].
    #[error("job commit is {size} bytes, over the {MAX_COMMIT_BYTES}-byte limit")]
    TooLarge {
        /// Size seen.
        size: usize,
    },
    /// Not JSON of the commit's shape.
    #[error("job commit is not valid JSON of the expected shape: {message}")]
    Json {
        /// The parser's message.
        message: String,
    },
    /// A format this reader does not know.
    #[error(
        "unsupported job commit format_version {found} (this reader knows {COMMIT_FORMAT_VERSION})"
    )]
    UnsupportedVersion {
        /// The version claimed.
        found: u32,
    },
    /// The participants are not exactly ranks `0..world_size`, each on its own namespace.
    #[error("job commit participants are inconsistent: {why}")]
    Participants {
        /// What is wrong.
        why: String,
    },
    /// A participant's namespace is not a legal namespace.
    #[error("participant namespace {namespace:?} {problem}")]
    BadNamespace {
        /// Excerpt of the namespace.
        namespace: String,
        /// What is wrong with it.
        problem: PathProblem,
    },
    /// A manifest digest is not 64 lowercase hex digits.
    #[error("participant {rank} has a malformed manifest_sha256")]
    BadDigest {
        /// The rank.
        rank: u32,
    },
    /// The file name and the step inside disagree.
    #[error("{file} says step {inside}")]
    StepMismatch {
        /// The file name.
        file: String,
        /// The step in the document.
        inside: u64,
    },
}

#[derive(Deserialize)]
struct VersionProbe {
    format_version: u32,
}

impl JobCommit {
    /// Parses and checks untrusted bytes; never panics.
    pub fn parse(bytes: &[u8]) -> Result<JobCommit, CommitError> {
        if bytes.len() > MAX_COMMIT_BYTES {
            return Err(CommitError::TooLarge { size: bytes.len() });
        }
        let json = |e: serde_json::Error| CommitError::Json {
            message: e.to_string(),
        };
        let probe: VersionProbe = serde_json::from_slice(bytes).map_err(json)?;
        if probe.format_version != COMMIT_FORMAT_VERSION {
            return Err(CommitError::UnsupportedVersion {
                found: probe.format_version,
            });
        }
        let commit: JobCommit = serde_json::from_slice(bytes).map_err(json)?;
        commit.check()?;
        Ok(commit)
    }

    /// Parses the commit found at `file_name` and checks the step in the name matches.
    pub fn parse_at(file_name: &str, bytes: &[u8]) -> Result<JobCommit, CommitError> {
        let commit = JobCommit::parse(bytes)?;
        if parse_commit_file_name(file_name) != Some(commit.step) {
            return Err(CommitError::StepMismatch {
                file: excerpt(file_name),
                inside: commit.step,
            });
        }
        Ok(commit)
    }

    /// Serialises, refusing anything [`JobCommit::parse`] would refuse.
    pub fn to_json_bytes(&self) -> Result<Vec<u8>, CommitError> {
        if self.format_version != COMMIT_FORMAT_VERSION {
            return Err(CommitError::UnsupportedVersion {
                found: self.format_version,
            });
        }
        self.check()?;
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|e| CommitError::Json {
            message: e.to_string(),
        })?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    fn check(&self) -> Result<(), CommitError> {
        let bad = |why: String| CommitError::Participants { why };
        if self.participants.len() > MAX_PARTICIPANTS {
            return Err(bad(format!(
                "{} participants, over the {MAX_PARTICIPANTS} limit",
                self.participants.len()
            )));
        }
        if self.world_size == 0 || self.participants.len() != self.world_size as usize {
            return Err(bad(format!(
                "world_size {} but {} participants",
                self.world_size,
                self.participants.len()
            )));
        }
        let mut ranks = BTreeSet::new();
        let mut namespaces = BTreeSet::new();
        for p in &self.participants {
            check_namespace(&p.namespace).map_err(|problem| CommitError::BadNamespace {
                namespace: excerpt(&p.namespace),
                problem,
            })?;
            if !is_canonical_sha256_hex(&p.manifest_sha256) {
                return Err(CommitError::BadDigest { rank: p.rank });
            }
            if p.rank >= self.world_size || !ranks.insert(p.rank) {
                return Err(bad(format!(
                    "rank {} is out of range or listed twice",
                    p.rank
                )));
            }
            if !namespaces.insert(p.namespace.as_str()) {
                return Err(bad(format!(
                    "namespace {:?} is listed twice",
                    excerpt(&p.namespace)
                )));
            }
        }
        Ok(())
    }

    /// Whether the caller's meta marks training as finished.
    pub fn finished(&self) -> bool {
        self.meta
            .as_ref()
            .and_then(|m| m.get("finished"))
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
    }
}

/// SHA-256 (lowercase hex) of a manifest's bytes, as a commit names it.
pub fn manifest_digest(manifest_bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(manifest_bytes))
}

/// What a reader found for one participant of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantCheck {
    /// The checkpoint's own verdict (absent, torn, corrupt or valid).
    pub verdict: Verdict,
    /// SHA-256 of its `manifest.json` bytes, when there was one to hash.
    pub manifest_sha256: Option<String>,
}

/// A job step's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StepVerdict {
    /// Every participant has exactly the checkpoint the commit names, and each is valid.
    Complete,
    /// The commit is unreadable, or some participant is missing, torn, corrupt or different.
    Incomplete {
        /// Why, per host (or for the commit itself).
        problems: Vec<String>,
    },
}

impl StepVerdict {
    /// Whether the step counts.
    pub fn is_complete(&self) -> bool {
        matches!(self, StepVerdict::Complete)
    }
}

/// Judges a commit against what the reader found for each of its participants (keyed by
/// namespace; a participant with no entry was not found at all). Pure.
pub fn judge_step(commit: &JobCommit, found: &BTreeMap<String, ParticipantCheck>) -> StepVerdict {
    let mut problems = Vec::new();
    for p in &commit.participants {
        match found.get(&p.namespace) {
            None => problems.push(format!(
                "rank {} ({}): no checkpoint of step {}",
                p.rank, p.namespace, commit.step
            )),
            Some(check) if !check.verdict.is_valid() => problems.push(format!(
                "rank {} ({}): {}",
                p.rank,
                p.namespace,
                check
                    .verdict
                    .clone()
                    .into_reason()
                    .map_or_else(|| "not valid".to_string(), |r| r.to_string())
            )),
            Some(check) if check.manifest_sha256.as_deref() != Some(&p.manifest_sha256) => problems
                .push(format!(
                    "rank {} ({}): its manifest is not the one the commit names",
                    p.rank, p.namespace
                )),
            Some(_) => {}
        }
    }
    if problems.is_empty() {
        StepVerdict::Complete
    } else {
        StepVerdict::Incomplete { problems }
    }
}

/// Writes `commit` as `<root>/commit-<step>.json`: a temporary name, fsync, rename, fsync of the
/// root. Writing the same commit again is harmless (identical bytes), also from several
/// processes at once (each writes its own temporary file).
pub fn write_commit(root: &Path, commit: &JobCommit) -> io::Result<PathBuf> {
    let bytes = commit.to_json_bytes().map_err(io::Error::other)?;
    fs::create_dir_all(root)?;
    let target = root.join(commit_file_name(commit.step));
    let temp = root.join(format!(
        "{}.{}{TEMP_SUFFIX}",
        commit_file_name(commit.step),
        std::process::id()
    ));
    {
        let mut file = File::create(&temp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
    }
    fs::rename(&temp, &target)?;
    sync_dir(root)?;
    Ok(target)
}

/// Every commit file directly in `root`, by step (unreadable or malformed ones included, as
/// their parse error).
pub fn read_commits(root: &Path) -> io::Result<BTreeMap<u64, Result<JobCommit, CommitError>>> {
    use std::io::Read;
    let mut out = BTreeMap::new();
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(step) = parse_commit_file_name(&name) else {
            continue;
        };
        if !entry.file_type()?.is_file() {
            continue;
        }
        let mut bytes = Vec::new();
        let file = match File::open(entry.path()) {
            Ok(file) => file,
            // Pruned by another writer sharing the root since the listing: it is gone.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        file.take(MAX_COMMIT_BYTES as u64 + 1)
            .read_to_end(&mut bytes)?;
        out.insert(step, JobCommit::parse_at(&name, &bytes));
    }
    Ok(out)
}

/// In a job root (one with commit files), the names of `namespace`'s valid checkpoints whose
/// step has a commit naming this namespace with exactly its local manifest: what this host's
/// retention may count. Other participants cannot be checked from one host's disk during a
/// run (their checkpoints are on their own instances); the commit was written after every
/// participant had committed, so it is trusted for them here, and only here — readers that
/// resume or validate check every participant. `None` for a root without commits.
pub fn committed_checkpoints(
    root: &Path,
    namespace: &str,
    checkpoints: &[crate::CheckpointReport],
) -> io::Result<Option<BTreeSet<String>>> {
    let commits = read_commits(root)?;
    if commits.is_empty() {
        return Ok(None);
    }
    let mut names = BTreeSet::new();
    for c in checkpoints {
        if c.namespace.as_deref() != Some(namespace) || c.status != crate::Status::Valid {
            continue;
        }
        let Some(Ok(commit)) = commits.get(&c.step) else {
            continue;
        };
        let Some(p) = commit
            .participants
            .iter()
            .find(|p| p.namespace == namespace)
        else {
            continue;
        };
        let manifest = root
            .join(namespace)
            .join(crate::step_dir_name(c.step))
            .join(crate::MANIFEST_FILE);
        if fs::read(&manifest).is_ok_and(|bytes| manifest_digest(&bytes) == p.manifest_sha256) {
            names.insert(c.name.clone());
        }
    }
    Ok(Some(names))
}

/// Removes the commit files of steps whose checkpoint `namespace` no longer has (retention
/// removed it), except the newest commit; returns how many. Each host prunes the copies it
/// wrote; a commit whose participant is gone could only ever judge incomplete.
pub fn prune_commits(root: &Path, namespace: &str) -> io::Result<usize> {
    let commits = read_commits(root)?;
    let Some(&newest) = commits.keys().next_back() else {
        return Ok(0);
    };
    let mut removed = 0;
    for &step in commits.keys() {
        let mine = root.join(namespace).join(crate::step_dir_name(step));
        if step < newest && !mine.exists() {
            match fs::remove_file(root.join(commit_file_name(step))) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    if removed > 0 {
        sync_dir(root)?;
    }
    Ok(removed)
}

/// After every rank of a job agreed to resume from `step`: removes `namespace`'s checkpoints
/// and the commit files of later steps, a timeline the job abandoned (no rank could load it
/// whole, so it can never be resumed from); returns the names removed. Without this, the
/// resumed run would meet its own old checkpoints again: the writer refuses to overwrite a
/// valid one, and retention would count them as the newest.
pub fn abandon_after(root: &Path, namespace: &str, step: u64) -> io::Result<Vec<String>> {
    check_namespace(namespace).map_err(|p| io::Error::new(io::ErrorKind::InvalidInput, p))?;
    let mut removed = Vec::new();
    let ns_dir = root.join(namespace);
    match fs::read_dir(&ns_dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if crate::parse_step_dir_name(&name).is_some_and(|s| s > step) {
                    remove_checkpoint_dir(&entry.path())?;
                    removed.push(format!("{namespace}/{name}"));
                }
            }
            sync_dir(&ns_dir)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    for &later in read_commits(root)?.keys().filter(|&&s| s > step) {
        let name = commit_file_name(later);
        match fs::remove_file(root.join(&name)) {
            Ok(()) => removed.push(name),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if !removed.is_empty() {
        sync_dir(root)?;
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::Reason;

    fn commit(step: u64, hosts: &[&str]) -> JobCommit {
        JobCommit {
            format_version: COMMIT_FORMAT_VERSION,
            step,
            world_size: hosts.len() as u32,
            created_at_ms: 1,
            meta: None,
            participants: hosts
                .iter()
                .enumerate()
                .map(|(rank, ns)| Participant {
                    rank: rank as u32,
                    namespace: (*ns).into(),
                    manifest_sha256: manifest_digest(ns.as_bytes()),
                })
                .collect(),
        }
    }

    #[test]
    fn names_round_trip_and_refuse_lookalikes() {
        assert_eq!(commit_file_name(1200), "commit-000000001200.json");
        assert_eq!(
            parse_commit_file_name("commit-000000001200.json"),
            Some(1200)
        );
        for bad in [
            "commit-1200.json",
            "commit-000000001200.json.sagemaker-uploaded",
            "commit-00000000120x.json",
            "step-000000001200",
        ] {
            assert_eq!(parse_commit_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn commits_round_trip_and_refuse_inconsistent_participants() {
        let c = commit(10, &["algo-1", "algo-2"]);
        let bytes = c.to_json_bytes().unwrap();
        assert_eq!(
            JobCommit::parse_at("commit-000000000010.json", &bytes),
            Ok(c.clone())
        );
        assert!(matches!(
            JobCommit::parse_at("commit-000000000011.json", &bytes),
            Err(CommitError::StepMismatch { .. })
        ));
        let mut dup = c.clone();
        dup.participants[1].rank = 0;
        assert!(matches!(
            dup.to_json_bytes(),
            Err(CommitError::Participants { .. })
        ));
        let mut same_ns = c.clone();
        same_ns.participants[1].namespace = "algo-1".into();
        assert!(matches!(
            same_ns.to_json_bytes(),
            Err(CommitError::Participants { .. })
        ));
        let mut short = c.clone();
        short.world_size = 3;
        assert!(matches!(
            short.to_json_bytes(),
            Err(CommitError::Participants { .. })
        ));
        let mut hostile = c.clone();
        hostile.participants[0].namespace = "../etc".into();
        assert!(matches!(
            hostile.to_json_bytes(),
            Err(CommitError::BadNamespace { .. })
        ));
        let mut digest = c;
        digest.participants[0].manifest_sha256 = "ABC".into();
        assert!(matches!(
            digest.to_json_bytes(),
            Err(CommitError::BadDigest { rank: 0 })
        ));
        assert!(matches!(
            JobCommit::parse(br#"{"format_version": 2}"#),
            Err(CommitError::UnsupportedVersion { found: 2 })
        ));
        assert!(matches!(
            JobCommit::parse(b"[1,2"),
            Err(CommitError::Json { .. })
        ));
    }

    #[test]
    fn a_step_is_complete_only_when_every_participant_has_the_named_checkpoint() {
        let c = commit(10, &["algo-1", "algo-2"]);
        let ok = |ns: &str| ParticipantCheck {
            verdict: Verdict::Valid,
            manifest_sha256: Some(manifest_digest(ns.as_bytes())),
        };
        let both: BTreeMap<String, ParticipantCheck> = [
            ("algo-1".into(), ok("algo-1")),
            ("algo-2".into(), ok("algo-2")),
        ]
        .into();
        assert_eq!(judge_step(&c, &both), StepVerdict::Complete);

        let mut missing = both.clone();
        missing.remove("algo-2");
        let StepVerdict::Incomplete { problems } = judge_step(&c, &missing) else {
            panic!("a missing host makes the step incomplete")
        };
        assert!(problems[0].contains("algo-2"), "{problems:?}");

        let mut torn = both.clone();
        torn.insert(
            "algo-1".into(),
            ParticipantCheck {
                verdict: Verdict::Incomplete {
                    reason: Reason::NoManifest,
                },
                manifest_sha256: None,
            },
        );
        assert!(!judge_step(&c, &torn).is_complete());

        let mut other = both;
        other.insert("algo-2".into(), ok("a different manifest"));
        let StepVerdict::Incomplete { problems } = judge_step(&c, &other) else {
            panic!("a different manifest makes the step incomplete")
        };
        assert!(problems[0].contains("not the one"), "{problems:?}");
    }

    #[test]
    fn written_commits_are_read_back_and_garbage_is_reported() {
        let root = tempfile::tempdir().unwrap();
        let c = commit(20, &["algo-1", "algo-2"]);
        write_commit(root.path(), &c).unwrap();
        write_commit(root.path(), &c).unwrap();
        fs::write(root.path().join("commit-000000000030.json"), b"{oops").unwrap();
        fs::write(
            root.path()
                .join("commit-000000000040.json.sagemaker-uploaded"),
            b"",
        )
        .unwrap();
        let read = read_commits(root.path()).unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(read[&20], Ok(c));
        assert!(read[&30].is_err());
        assert!(read_commits(&root.path().join("absent"))
            .unwrap()
            .is_empty());
    }
}
