//! What the checkpoint validator found in a job's checkpoint prefix, as the engine needs it.
//!
//! Owns [`CheckpointSummary`] and [`Validation`] only. Producing them (listing S3, verifying
//! checksums and manifests) is the validator's job elsewhere; this crate never reads
//! checkpoints.

use serde::{Deserialize, Serialize};

/// How far the validator could judge a checkpoint prefix. Only a [`Validation::Judged`]
/// summary says anything about progress: the other two say "checkpoints may exist, spotcheck
/// cannot tell which step they reach", so the engine neither counts the attempt towards a
/// crash loop nor applies the no-checkpoint policy to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Validation {
    /// spotcheck checkpoints were judged (or the prefix holds nothing at all).
    #[default]
    Judged,
    /// The prefix holds objects, none of them in a spotcheck checkpoint directory: checkpoints
    /// another library wrote (Hugging Face Trainer, plain `torch.save`), which the job's own code
    /// resumes from.
    UnknownFormat,
    /// The prefix could not be read (access denied, not an `s3://` URI…).
    Unavailable,
}

/// The validator's verdict on a checkpoint prefix. Missing fields deserialise as "nothing known":
/// no valid step, nothing corrupt, training not finished, judged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CheckpointSummary {
    /// Step of the newest checkpoint that validated; `None` when none did (or none exist).
    pub latest_valid_step: Option<u64>,
    /// Whether any checkpoint failed validation (it is skipped, and reported).
    pub any_corrupt: bool,
    /// Whether the newest valid checkpoint marks training as finished (nothing left to continue).
    pub finished: bool,
    /// Whether the prefix could be judged at all.
    pub validation: Validation,
}

impl CheckpointSummary {
    /// A summary for a prefix that could not be judged (`validation` is not
    /// [`Validation::Judged`]): no step, nothing corrupt, not finished.
    pub fn not_judged(validation: Validation) -> Self {
        CheckpointSummary {
            validation,
            ..CheckpointSummary::default()
        }
    }

    /// Whether the summary says anything about progress.
    pub fn is_judged(&self) -> bool {
        self.validation == Validation::Judged
    }
}
