//! Classification of a failed training job's `FailureReason`.
//!
//! Owns the rule that separates failures spotcheck recovers from (capacity, AWS internal errors)
//! from the user's own errors, which are retried only when the policy allows. It reads text
//! only; what to do about each class is the decision module's.
//!
//! SageMaker prefixes `FailureReason` with a category (`AlgorithmError: …`, `ClientError: …`,
//! `CapacityError: …`, `InternalServerError: …`). The rule, first match wins, case-insensitive:
//!
//! 1. mentions `InsufficientInstanceCapacity` or `CapacityError` → [`FailureClass::Capacity`];
//! 2. starts with `AlgorithmError` or `ClientError` → [`FailureClass::UserError`];
//! 3. mentions `capacity` anywhere else → [`FailureClass::Capacity`];
//! 4. mentions `InternalServerError`, `internal server error`, `internal error` or
//!    `InternalFailure` → [`FailureClass::InternalError`];
//! 5. anything else, or no reason at all → [`FailureClass::Unclassified`], which the engine treats
//!    like a user error (bounded retries, off by default): when in doubt, do not spend money.

use serde::Serialize;

/// Why a training job failed, as far as recovery is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// No capacity for the instance type: relaunch, moving down the instance ladder.
    Capacity,
    /// An AWS-side error: relaunch on the same type.
    InternalError,
    /// The training code or its configuration failed (AlgorithmError, ClientError).
    UserError,
    /// A reason this rule does not recognise (or none).
    Unclassified,
}

/// Classifies a `FailureReason` (see the module doc for the rule).
pub fn classify_failure(reason: Option<&str>) -> FailureClass {
    let Some(reason) = reason.map(str::trim).filter(|r| !r.is_empty()) else {
        return FailureClass::Unclassified;
    };
    let lower = reason.to_ascii_lowercase();
    if lower.contains("insufficientinstancecapacity") || lower.contains("capacityerror") {
        FailureClass::Capacity
    } else if lower.starts_with("algorithmerror") || lower.starts_with("clienterror") {
        FailureClass::UserError
    } else if lower.contains("capacity") {
        FailureClass::Capacity
    } else if [
        "internalservererror",
        "internal server error",
        "internal error",
        "internalfailure",
    ]
    .iter()
    .any(|needle| lower.contains(needle))
    {
        FailureClass::InternalError
    } else {
        FailureClass::Unclassified
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        let table = [
            ("CapacityError: Unable to provision requested ML compute capacity. Please retry using a different ML instance type.", FailureClass::Capacity),
            ("InsufficientInstanceCapacity: We currently do not have sufficient ml.p3.16xlarge capacity", FailureClass::Capacity),
            ("ClientError: InsufficientInstanceCapacity for ml.p4d.24xlarge", FailureClass::Capacity),
            ("AlgorithmError: ExecuteUserScriptError: CUDA out of memory (GPU capacity 15.7 GiB)", FailureClass::UserError),
            ("ClientError: Data download failed: NoSuchKey", FailureClass::UserError),
            ("Not enough capacity in the Availability Zone", FailureClass::Capacity),
            ("InternalServerError: We encountered an internal error. Please try again.", FailureClass::InternalError),
            ("Training failed with an internal error", FailureClass::InternalError),
            ("Something odd", FailureClass::Unclassified),
            ("   ", FailureClass::Unclassified),
        ];
        for (reason, class) in table {
            assert_eq!(classify_failure(Some(reason)), class, "{reason}");
        }
        assert_eq!(classify_failure(None), FailureClass::Unclassified);
    }
}
