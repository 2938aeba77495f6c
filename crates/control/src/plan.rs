//! The changes a decision asks for, as plain data for the AWS adapter to apply.
//!
//! Owns [`RelaunchPlan`] (a SageMaker relaunch) and [`ContinuationPlan`] (an EC2 run continued
//! elsewhere). The adapter starts from the parent's DescribeTrainingJob request fields and
//! overrides exactly what a plan names; nothing here depends on AWS SDK types, and nothing here
//! calls AWS.

use serde::Serialize;

use crate::tags::Tags;

/// Why a job is being relaunched; it also decides whether the ladder advances and which budget
/// the attempt is charged to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RelaunchCause {
    /// Stopped/MaxWaitTimeExceeded after training had started: spot capacity was lost.
    SpotWaitExceeded,
    /// Stopped/MaxWaitTimeExceeded before training ever started: spot capacity never came.
    SpotCapacityNeverArrived,
    /// Stopped/MaxRuntimeExceeded with checkpoint progress: continue past the runtime cap.
    RuntimeCapReached,
    /// Failed for lack of capacity.
    CapacityFailure,
    /// Failed with an AWS internal error.
    InternalError,
    /// Failed because of the user's code or configuration (or an unclassified reason).
    UserError,
}

impl RelaunchCause {
    /// Capacity shortages move the job one rung down the instance ladder.
    pub fn advances_ladder(self) -> bool {
        matches!(
            self,
            RelaunchCause::CapacityFailure | RelaunchCause::SpotCapacityNeverArrived
        )
    }

    /// User errors are charged to `retries_on_user_error`, apart from preemption recoveries.
    pub fn is_user_error(self) -> bool {
        self == RelaunchCause::UserError
    }

    /// A phrase for human-readable reasons.
    pub fn describe(self) -> &'static str {
        match self {
            RelaunchCause::SpotWaitExceeded => {
                "spot capacity was lost and MaxWaitTimeInSeconds ran out"
            }
            RelaunchCause::SpotCapacityNeverArrived => {
                "spot capacity never arrived before MaxWaitTimeInSeconds ran out"
            }
            RelaunchCause::RuntimeCapReached => "MaxRuntimeInSeconds ran out",
            RelaunchCause::CapacityFailure => "no capacity for the instance type",
            RelaunchCause::InternalError => "an AWS internal error",
            RelaunchCause::UserError => "the job's own error",
        }
    }
}

/// A relaunch of a SageMaker training job, to be applied over the parent's Describe fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RelaunchPlan {
    /// The new job's name: deterministic, so CreateTrainingJob's `ResourceInUse` means "done".
    pub job_name: String,
    /// `ResourceConfig.InstanceType`; `None` keeps the parent's resource config.
    pub instance_type: Option<String>,
    /// `EnableManagedSpotTraining`. When `false` the adapter also drops MaxWaitTimeInSeconds.
    pub spot: bool,
    /// Checkpoint step the new job should resume from (`None`: from scratch). The trainer finds
    /// it in the same `CheckpointConfig.S3Uri`; the adapter may pass it on for verification.
    pub from_checkpoint: Option<u64>,
    /// `StoppingCondition.MaxWaitTimeInSeconds` for a spot relaunch (never below the max runtime);
    /// `None` keeps the parent's value, or removes it when `spot` is `false`.
    pub max_wait_seconds: Option<u64>,
    /// `StoppingCondition.MaxRuntimeInSeconds`; `None` keeps the parent's value.
    pub max_runtime_seconds: Option<u64>,
    /// The job being relaunched.
    pub parent: String,
    /// The lineage's first job.
    pub root: String,
    /// The new job's attempt number.
    pub attempt: u32,
    /// Why it is relaunched.
    pub cause: RelaunchCause,
    /// The complete tag set of the new job: the parent's user and policy tags, plus fresh
    /// lineage bookkeeping (`spotcheck:root`, `attempt`, `parent`, …). `aws:` tags are dropped.
    pub tags: Tags,
}

/// A continuation of an EC2 training run whose instance is being reclaimed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContinuationPlan {
    /// Deterministic name of the continued run (from the run and the reclaimed instance).
    pub name: String,
    /// The run being continued (`spotcheck:run`).
    pub run: String,
    /// The reclaimed instance.
    pub instance_id: String,
    /// Where to continue, verbatim from `spotcheck:continue-on` (e.g. `on-demand`, a launch
    /// template or an instance type): the shell interprets it.
    pub continue_on: String,
    /// Where the run's checkpoints live (`spotcheck:checkpoint-uri`), if tagged.
    pub checkpoint_uri: Option<String>,
}
