//! One checkpoint written from host buffers, then this namespace's retention.
//!
//! Owns the order of a save: every file through the protocol crate's writer (temporary name,
//! SHA-256 and CRC-64/NVME, fsync, rename), the manifest last, then the protocol crate's
//! retention planner over this namespace only, upload-aware where an uploader mirrors the root
//! (only fully uploaded checkpoints count as kept, the newest uploaded is never deleted) and
//! commit-aware in a multi-host job root (only checkpoints of committed steps count, so the
//! newest complete step is never deleted; commits of steps this namespace no longer has are
//! pruned).
//! Retention failing never fails the save: the new checkpoint is already durable, and keeping
//! an old one too is the safe side.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use spotcheck_protocol::{
    committed_checkpoints, execute_retention, plan_retention_counting, prune_commits,
    uploaded_checkpoints, validate_root_with, CheckpointWriter, RetentionAction, Status,
    Verification, WriteError,
};

use crate::region::HostRegion;

/// Where a file's bytes come from.
#[derive(Debug)]
pub enum FileSource {
    /// Small files built by the caller (the JSON state).
    Bytes(Vec<u8>),
    /// A safetensors file: its planned header, then the data section straight from host memory.
    Tensors {
        /// `FileLayout::header`.
        header: Vec<u8>,
        /// The data section (`FileLayout::data_len` bytes).
        data: HostRegion,
    },
}

/// Everything one save needs; built by the caller, carried out by [`write_job`].
#[derive(Debug)]
pub struct SaveJob {
    /// The checkpoint root (e.g. `/opt/ml/checkpoints`).
    pub root: PathBuf,
    /// This host's or rank's namespace.
    pub namespace: String,
    /// The training step the checkpoint holds.
    pub step: u64,
    /// Files in write order; names are '/'-separated relative paths.
    pub files: Vec<(String, FileSource)>,
    /// Commit time from the caller's clock (Unix milliseconds).
    pub created_at_ms: u64,
    /// The manifest's free-form `meta`.
    pub meta: Option<serde_json::Value>,
    /// Valid checkpoints of this namespace to keep (at least 1).
    pub keep: usize,
    /// Whether an uploader mirrors the root to S3 and deletes there what is deleted here
    /// (SageMaker's checkpoint sync): then retention counts only fully uploaded checkpoints.
    pub synced: bool,
    /// Testing hook: sleep this long between the data files and the manifest, so tests can
    /// kill the process while a save is in flight.
    pub pause_before_manifest: Option<Duration>,
    /// Testing hook: before the manifest, wait until this file exists (at most
    /// [`GATE_LIMIT`]), so tests can hold a save in flight without timing.
    pub gate_before_manifest: Option<PathBuf>,
}

/// The longest a save waits for its test gate before going on.
pub const GATE_LIMIT: Duration = Duration::from_secs(60);

/// A committed checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Saved {
    /// The step.
    pub step: u64,
    /// Its relative name, e.g. `algo-1/step-000000000100`.
    pub name: String,
    /// Its directory.
    pub dir: PathBuf,
    /// Bytes written (all files, manifest excluded).
    pub bytes: u64,
    /// Checkpoints retention deleted afterwards.
    pub deleted: Vec<String>,
    /// Why retention could not run or finish, if it could not; the save itself stands.
    pub retention_error: Option<String>,
}

/// Why a save failed; the previous checkpoint stays the newest valid one.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// The protocol writer refused or an I/O step failed.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Writes `job` as one checkpoint, then applies retention to its namespace.
pub fn write_job(job: &SaveJob) -> Result<Saved, SaveError> {
    let mut pending = CheckpointWriter::begin(&job.root, &job.namespace, job.step)?;
    let mut bytes = 0u64;
    for (name, source) in &job.files {
        let entry = match source {
            FileSource::Bytes(data) => pending.write_bytes(name, data)?,
            FileSource::Tensors { header, data } => pending.write_file(name, |w| {
                w.write_all(header)?;
                w.write_all(data.as_slice())
            })?,
        };
        bytes += entry.size;
    }
    if let Some(pause) = job.pause_before_manifest {
        std::thread::sleep(pause);
    }
    if let Some(gate) = &job.gate_before_manifest {
        let opened = std::time::Instant::now();
        while !gate.exists() && opened.elapsed() < GATE_LIMIT {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let committed = pending.commit(job.created_at_ms, job.meta.clone())?;
    let (deleted, retention_error) = match retain(job) {
        Ok(deleted) => (deleted, None),
        Err(err) => (Vec::new(), Some(err)),
    };
    Ok(Saved {
        step: job.step,
        name: committed.name,
        dir: committed.dir,
        bytes,
        deleted,
        retention_error,
    })
}

/// Plans and carries out retention for the job's namespace (sizes-only scan: these are files
/// this process wrote; restore checks every byte anyway).
fn retain(job: &SaveJob) -> Result<Vec<String>, String> {
    let report =
        validate_root_with(&job.root, Verification::SizesOnly).map_err(|e| e.to_string())?;
    let ours: Vec<_> = report
        .checkpoints
        .into_iter()
        .filter(|c| c.namespace.as_deref() == Some(job.namespace.as_str()))
        .collect();
    let uploaded = job.synced.then(|| uploaded_checkpoints(&job.root, &ours));
    let committed =
        committed_checkpoints(&job.root, &job.namespace, &ours).map_err(|e| e.to_string())?;
    // Only checkpoints up to the one just written count: a newer one is from a timeline this
    // run did not resume from (it was skipped as unreadable), never a reason to delete.
    let current: BTreeSet<String> = ours
        .iter()
        .filter(|c| c.step <= job.step && c.status == Status::Valid)
        .map(|c| c.name.clone())
        .collect();
    let counted = [uploaded, committed]
        .into_iter()
        .flatten()
        .fold(current, |acc, set| {
            acc.intersection(&set).cloned().collect()
        });
    let actions = plan_retention_counting(&ours, job.keep, &[], Some(&counted));
    execute_retention(&job.root, &actions).map_err(|e| e.to_string())?;
    if !actions.is_empty() {
        prune_commits(&job.root, &job.namespace).map_err(|e| e.to_string())?;
    }
    Ok(actions
        .into_iter()
        .map(|RetentionAction::Delete { name }| name)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{parse_header, plan, TensorSpec};
    use spotcheck_protocol::{validate_root, Status};

    fn job(root: &std::path::Path, step: u64, data: &[u8], keep: usize) -> SaveJob {
        let layout = plan(
            &[TensorSpec {
                name: "w".into(),
                dtype: "U8".into(),
                shape: vec![data.len()],
            }],
            None,
        )
        .unwrap();
        SaveJob {
            root: root.to_path_buf(),
            namespace: "algo-1".into(),
            step,
            files: vec![
                (
                    "model.safetensors".into(),
                    FileSource::Tensors {
                        header: layout.header,
                        // SAFETY: `data` outlives the job, which is used within this test.
                        data: unsafe { HostRegion::new(data.as_ptr(), data.len()) }.unwrap(),
                    },
                ),
                ("state.json".into(), FileSource::Bytes(b"{}".to_vec())),
            ],
            created_at_ms: 1,
            meta: Some(serde_json::json!({"framework": "pytorch"})),
            keep,
            synced: false,
            pause_before_manifest: None,
            gate_before_manifest: None,
        }
    }

    #[test]
    fn a_saved_checkpoint_validates_and_its_tensor_file_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..=255).collect();
        let saved = write_job(&job(dir.path(), 7, &data, 3)).unwrap();
        assert_eq!(saved.name, "algo-1/step-000000000007");
        let report = validate_root(dir.path()).unwrap();
        assert_eq!(
            report.latest_valid.as_deref(),
            Some("algo-1/step-000000000007")
        );
        let file = std::fs::read(saved.dir.join("model.safetensors")).unwrap();
        let entries = parse_header(&file).unwrap();
        assert_eq!(&file[entries[0].start..entries[0].end], &data[..]);
        assert_eq!(saved.bytes, file.len() as u64 + 2);
    }

    #[test]
    fn retention_keeps_the_newest_of_this_namespace_and_leaves_others_alone() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![1u8; 16];
        let mut other = job(dir.path(), 1, &data, 1);
        other.namespace = "algo-2".into();
        write_job(&other).unwrap();
        for step in 1..=4 {
            let saved = write_job(&job(dir.path(), step, &data, 2)).unwrap();
            assert_eq!(saved.retention_error, None);
        }
        let report = validate_root(dir.path()).unwrap();
        let names: Vec<_> = report
            .checkpoints
            .iter()
            .filter(|c| c.status == Status::Valid)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "algo-1/step-000000000003",
                "algo-1/step-000000000004",
                "algo-2/step-000000000001"
            ]
        );
    }

    fn valid_names(root: &std::path::Path) -> Vec<String> {
        validate_root(root)
            .unwrap()
            .checkpoints
            .into_iter()
            .filter(|c| c.status == Status::Valid)
            .map(|c| c.name)
            .collect()
    }

    #[test]
    fn in_a_job_root_only_committed_steps_count_so_the_newest_complete_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![1u8; 16];
        write_job(&job(dir.path(), 1, &data, 1)).unwrap();
        let manifest = std::fs::read(dir.path().join("algo-1/step-000000000001/manifest.json"));
        spotcheck_protocol::write_commit(
            dir.path(),
            &spotcheck_protocol::JobCommit {
                format_version: spotcheck_protocol::COMMIT_FORMAT_VERSION,
                step: 1,
                world_size: 1,
                created_at_ms: 1,
                meta: None,
                participants: vec![spotcheck_protocol::Participant {
                    rank: 0,
                    namespace: "algo-1".into(),
                    manifest_sha256: spotcheck_protocol::manifest_digest(&manifest.unwrap()),
                }],
            },
        )
        .unwrap();
        // Steps 2 and 3 never get a commit (another rank never finished them): keep = 1 must
        // not delete step 1, the only complete step.
        for step in 2..=3 {
            write_job(&job(dir.path(), step, &data, 1)).unwrap();
        }
        assert_eq!(
            valid_names(dir.path()),
            [
                "algo-1/step-000000000001",
                "algo-1/step-000000000002",
                "algo-1/step-000000000003"
            ]
        );
    }

    #[test]
    fn a_checkpoint_newer_than_the_one_written_never_makes_retention_delete_it() {
        // A run resumed from step 2 past an unreadable step 9 (sizes intact, bytes not): with
        // keep = 1, counting step 9 would delete the checkpoint just written.
        let dir = tempfile::tempdir().unwrap();
        let data = vec![1u8; 16];
        write_job(&job(dir.path(), 9, &data, 1)).unwrap();
        for step in 2..=4 {
            write_job(&job(dir.path(), step, &data, 1)).unwrap();
        }
        assert_eq!(
            valid_names(dir.path()),
            ["algo-1/step-000000000004", "algo-1/step-000000000009"]
        );
    }

    #[test]
    fn with_an_uploader_only_uploaded_checkpoints_count_and_pending_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![1u8; 16];
        let mut saved = Vec::new();
        for step in 1..=2 {
            let mut j = job(dir.path(), step, &data, 1);
            j.synced = true;
            saved.push(write_job(&j).unwrap());
        }
        assert!(
            saved[1].deleted.is_empty(),
            "nothing uploaded yet: nothing may go"
        );
        let first = spotcheck_protocol::Manifest::parse(
            &std::fs::read(saved[0].dir.join("manifest.json")).unwrap(),
        )
        .unwrap();
        spotcheck_protocol::mark_uploaded(&saved[0].dir, &first).unwrap();
        let mut j = job(dir.path(), 3, &data, 1);
        j.synced = true;
        let third = write_job(&j).unwrap();
        assert!(
            third.deleted.is_empty(),
            "step 1 is the newest uploaded: kept; 2 and 3 may still be uploading: kept"
        );
        let mut j = job(dir.path(), 4, &data, 1);
        j.synced = false;
        assert_eq!(
            write_job(&j).unwrap().deleted,
            [
                "algo-1/step-000000000001",
                "algo-1/step-000000000002",
                "algo-1/step-000000000003"
            ],
            "without an uploader, keep 1 keeps only the newest"
        );
    }

    #[test]
    fn a_committed_step_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![1u8; 16];
        write_job(&job(dir.path(), 5, &data, 3)).unwrap();
        let other = vec![2u8; 16];
        let err = write_job(&job(dir.path(), 5, &other, 3)).unwrap_err();
        assert!(
            err.to_string().contains("already holds a valid checkpoint"),
            "{err}"
        );
    }
}
