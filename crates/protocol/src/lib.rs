//! The on-disk checkpoint protocol shared by the trainer and the control plane.
//!
//! A checkpoint is a directory `<root>/<namespace>/step-<12 digits>/` holding arbitrary files
//! and a `manifest.json`, written last, that lists every file's size, SHA-256 and
//! CRC-64/NVME. A checkpoint without a complete, matching manifest does not exist. The format
//! is specified in `docs/checkpoint-format.md`.
//!
//! # API at a glance
//!
//! Writing (trainer):
//! - [`CheckpointWriter::begin`]`(root, namespace, step) -> Result<`[`PendingCheckpoint`]`>`
//! - [`PendingCheckpoint::write_file`]`(name, |w: &mut dyn Write| …)` /
//!   [`write_bytes`](PendingCheckpoint::write_bytes)`(name, &[u8])`
//! - [`PendingCheckpoint::commit`]`(created_at_ms, meta) -> Result<`[`CommittedCheckpoint`]`>`
//!
//! Reading (trainer, CLI):
//! - [`open_latest_valid`]`(root, namespace) -> Result<Option<`[`ValidCheckpoint`]`>>`, then
//!   [`ValidCheckpoint::read_verified`] or [`ValidCheckpoint::file_path`]
//! - [`validate_root`]`(root) -> Result<`[`Report`]`>` (serialises to the CLI's JSON)
//!
//! Judging without a filesystem (S3 adapter):
//! - [`Manifest::parse`]`(bytes)`, [`judge`]`(manifest_bytes, observed) -> `[`Verdict`],
//!   [`judge_at`] to also check the location, [`CheckpointReport::new`]
//!
//! Multi-host jobs (a step is complete only when every host has it; see `docs/checkpoint-format.md`):
//! - [`write_commit`]`(root, &`[`JobCommit`]`)` after every participant committed its step
//! - [`open_latest_complete`]`(root, namespace)` to resume, or [`complete_steps`] for writers
//!   whose ranks agree on the step themselves; [`Report::job`] from [`validate_root`]
//! - [`judge_step`] (pure), [`committed_checkpoints`] and [`prune_commits`] for retention
//!
//! Retention:
//! - [`plan_retention`]`(checkpoints, keep_last, in_use, uploads) -> Vec<`[`RetentionAction`]`>`
//!   (pure; [`Uploads::Synced`] with [`uploaded_checkpoints`]`(root, checkpoints)` where an
//!   uploader mirrors the root to S3)
//! - [`execute_retention`]`(root, actions)`
//!
//! # Design
//!
//! Decisions are pure functions of plain data ([`judge`], [`plan_retention`],
//! [`Manifest::parse`]); filesystem work lives in thin shells around them (`scan`, `writer`,
//! the retention executor). Nothing reads a clock.

#![warn(missing_docs)]

mod digest;
mod durable;
mod job;
mod layout;
mod manifest;
mod retention;
mod scan;
mod upload;
mod verify;
mod writer;

pub use digest::{crc64nvme_from_base64, crc64nvme_to_base64, FileDigest};
pub use job::{
    abandon_after, commit_file_name, committed_checkpoints, judge_step, manifest_digest,
    parse_commit_file_name, prune_commits, read_commits, write_commit, CommitError, JobCommit,
    Participant, ParticipantCheck, StepVerdict, COMMIT_FORMAT_VERSION, COMMIT_PREFIX,
    COMMIT_SUFFIX, MAX_COMMIT_BYTES,
};
pub use layout::{
    check_namespace, check_rel_path, is_transport_name, parse_step_dir_name, step_dir_name,
    Location, PathProblem, MANIFEST_FILE, MAX_NAMESPACE_BYTES, MAX_PATH_BYTES, STEP_DIGITS,
    STEP_PREFIX, TEMP_SUFFIX, UPLOADED_SUFFIX, UPLOADING_SUFFIX,
};
pub use manifest::{
    FileEntry, Manifest, ManifestError, FORMAT_VERSION, MAX_FILES, MAX_FILE_SIZE,
    MAX_MANIFEST_BYTES,
};
pub use retention::{
    execute_retention, plan_retention, plan_retention_counting, RetentionAction, RetentionError,
    Uploads,
};
pub use scan::{
    complete_steps, open_latest_complete, open_latest_valid, validate_root, validate_root_with,
    CheckpointReport, JobReport, JobStepReport, ReadError, Report, ValidCheckpoint, Verification,
};
pub use upload::{
    dir_has_upload_markers, dir_is_fully_uploaded, is_fully_uploaded, mark_uploaded,
    uploaded_checkpoints,
};
pub use verify::{judge, judge_at, ChecksumKind, ObservedFile, Reason, Status, Verdict};
pub use writer::{CheckpointWriter, CommittedCheckpoint, FileBody, PendingCheckpoint, WriteError};
