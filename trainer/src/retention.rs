//! Pruning old checkpoints of this host after each save, through the protocol crate's pure
//! planner.
//!
//! Only this host's namespace is considered: all hosts of a SageMaker job share one checkpoint
//! prefix, and a host must never delete another's checkpoints. The scan checks sizes only (the
//! files were just written and fsynced by this process). Where an uploader ships the root to
//! S3 (`synced`), deleting a local checkpoint deletes it in S3 too, so only fully uploaded
//! checkpoints count as kept and the newest of them is never deleted
//! (`spotcheck_protocol::Uploads::Synced`).

use std::path::Path;

use spotcheck_protocol::{
    execute_retention, plan_retention, uploaded_checkpoints, validate_root_with, Uploads,
    Verification,
};

/// Applies retention to `namespace` under `root`, keeping `keep`; returns how many
/// checkpoints were deleted.
pub fn apply(root: &Path, namespace: &str, keep: usize, synced: bool) -> Result<usize, String> {
    let report = validate_root_with(root, Verification::SizesOnly).map_err(|e| e.to_string())?;
    let mine: Vec<_> = report
        .checkpoints
        .into_iter()
        .filter(|c| c.namespace.as_deref() == Some(namespace))
        .collect();
    let uploaded = synced.then(|| uploaded_checkpoints(root, &mine));
    let uploads = match &uploaded {
        Some(set) => Uploads::Synced(set),
        None => Uploads::Unsynced,
    };
    let actions = plan_retention(&mine, keep, &[], uploads);
    execute_retention(root, &actions).map_err(|e| e.to_string())?;
    Ok(actions.len())
}
