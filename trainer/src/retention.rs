//! Pruning old checkpoints of this host after each save, through the protocol crate's pure
//! planner.
//!
//! Only this host's namespace is considered: all hosts of a SageMaker job share one checkpoint
//! prefix, and a host must never delete another's checkpoints. The scan checks sizes only (the
//! files were just written and fsynced by this process); on SageMaker, deleting a local file
//! deletes it in S3 too, which is why the newest valid checkpoint is never deleted.

use std::path::Path;

use spotcheck_protocol::{execute_retention, plan_retention, validate_root_with, Verification};

/// Keeps the newest `keep` valid checkpoints of `namespace` and drops older debris.
pub fn apply(root: &Path, namespace: &str, keep: usize) -> Result<usize, String> {
    let report = validate_root_with(root, Verification::SizesOnly).map_err(|e| e.to_string())?;
    let mine: Vec<_> = report
        .checkpoints
        .into_iter()
        .filter(|c| c.namespace.as_deref() == Some(namespace))
        .collect();
    let actions = plan_retention(&mine, keep, &[]);
    execute_retention(root, &actions).map_err(|e| e.to_string())?;
    Ok(actions.len())
}
