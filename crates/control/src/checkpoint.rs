//! What the checkpoint validator found in a job's checkpoint prefix, as the engine needs it.
//!
//! Owns [`CheckpointSummary`] only. Producing it (listing S3, verifying checksums and manifests)
//! is the validator's job elsewhere; this crate never reads checkpoints.

use serde::{Deserialize, Serialize};

/// The validator's verdict on a checkpoint prefix. Missing fields deserialise as "nothing known":
/// no valid step, nothing corrupt, training not finished.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CheckpointSummary {
    /// Step of the newest checkpoint that validated; `None` when none did (or none exist).
    pub latest_valid_step: Option<u64>,
    /// Whether any checkpoint failed validation (it is skipped, and reported).
    pub any_corrupt: bool,
    /// Whether the newest valid checkpoint marks training as finished (nothing left to continue).
    pub finished: bool,
}
