//! The changes a decision asks for, as plain data for the AWS adapter to apply.
//!
//! Owns [`RelaunchPlan`] (a SageMaker relaunch) and [`ContinuationPlan`] (an EC2 run continued
//! elsewhere), and how to tell whether an existing job with a plan's name is that plan carried
//! out ([`RelaunchPlan::check_existing`], [`ContinuationPlan::check_existing`]): a deterministic
//! name makes a duplicate delivery ask for a name that is taken, but a taken name alone does not
//! prove the job is ours. The adapter starts from the parent's DescribeTrainingJob request
//! fields and overrides exactly what a plan names; nothing here depends on AWS SDK types, and
//! nothing here calls AWS.

use serde::Serialize;

use crate::tags::{keys, Tags};

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
    /// The new job's name: deterministic, so a duplicate delivery asks for the same one
    /// (`ResourceInUse`, then [`RelaunchPlan::check_existing`]).
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

/// `Err` naming the first tag of `expected` that `existing` does not carry with that value.
fn check_tags(name: &str, existing: &Tags, expected: &[(&str, &str)]) -> Result<(), String> {
    for (key, want) in expected {
        let found = existing.get(key).map(str::trim);
        if found != Some(*want) {
            return Err(format!(
                "{name} exists but is not this plan's job: its {key} is {}, expected {want:?}",
                found.map_or_else(|| "absent".to_owned(), |f| format!("{f:?}"))
            ));
        }
    }
    Ok(())
}

impl RelaunchPlan {
    /// Whether a job that already has [`RelaunchPlan::job_name`] (CreateTrainingJob said
    /// `ResourceInUse`) is this relaunch, created by an earlier delivery: its tags must name the
    /// same parent and root. Anything else is a collision with someone else's job.
    pub fn check_existing(&self, existing: &Tags) -> Result<(), String> {
        check_tags(
            &self.job_name,
            existing,
            &[
                (keys::PARENT, self.parent.as_str()),
                (keys::ROOT, self.root.as_str()),
            ],
        )
    }
}

impl ContinuationPlan {
    /// Whether a job that already has [`ContinuationPlan::name`] is this continuation: the same
    /// run and generation. (Its `spotcheck:parent` is whichever of the run's reclaimed instances
    /// got there first, so it is not compared.)
    pub fn check_existing(&self, existing: &Tags) -> Result<(), String> {
        let generation = self.generation.to_string();
        check_tags(
            &self.name,
            existing,
            &[
                (keys::RUN, self.run.as_str()),
                (keys::GENERATION, generation.as_str()),
            ],
        )
    }
}

/// A continuation of an EC2 training run whose instance is being reclaimed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContinuationPlan {
    /// Deterministic name of the continued run (from the run and the generation).
    pub name: String,
    /// The run being continued (`spotcheck:run`).
    pub run: String,
    /// The continuation's generation: the reclaimed instance's `spotcheck:generation` + 1. A
    /// subscriber that launches the continuation itself tags its instances with it, so that
    /// their reclaim continues the run once more.
    pub generation: u32,
    /// The reclaimed instance.
    pub instance_id: String,
    /// Where to continue, verbatim from `spotcheck:continue-on` (e.g. `on-demand`, a launch
    /// template or an instance type): the shell interprets it.
    pub continue_on: String,
    /// Where the run's checkpoints live (`spotcheck:checkpoint-uri`), if tagged.
    pub checkpoint_uri: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_job_is_ours_only_with_our_lineage_tags() {
        let plan = RelaunchPlan {
            job_name: "train-r2-abcd0123".into(),
            instance_type: None,
            spot: true,
            from_checkpoint: None,
            max_wait_seconds: None,
            max_runtime_seconds: None,
            parent: "train".into(),
            root: "train".into(),
            attempt: 2,
            cause: RelaunchCause::SpotWaitExceeded,
            tags: Tags::new(),
        };
        let ours: Tags = [
            (keys::PARENT, "train"),
            (keys::ROOT, "train"),
            ("team", "x"),
        ]
        .into_iter()
        .collect();
        assert_eq!(plan.check_existing(&ours), Ok(()));
        for theirs in [
            Tags::new(),
            [(keys::PARENT, "other"), (keys::ROOT, "train")]
                .into_iter()
                .collect(),
            [(keys::PARENT, "train")].into_iter().collect(),
        ] {
            let err = plan.check_existing(&theirs).unwrap_err();
            assert!(err.contains("is not this plan's job"), "{err}");
        }

        let cont = ContinuationPlan {
            name: "run-c2-abcd0123".into(),
            run: "run".into(),
            generation: 2,
            instance_id: "i-2".into(),
            continue_on: "s3://t/k".into(),
            checkpoint_uri: None,
        };
        // Another instance of the run got there first: same run and generation, other parent.
        let sibling: Tags = [
            (keys::RUN, "run"),
            (keys::GENERATION, "2"),
            (keys::PARENT, "i-1"),
        ]
        .into_iter()
        .collect();
        assert_eq!(cont.check_existing(&sibling), Ok(()));
        let earlier: Tags = [(keys::RUN, "run"), (keys::GENERATION, "1")]
            .into_iter()
            .collect();
        assert!(cont
            .check_existing(&earlier)
            .unwrap_err()
            .contains("spotcheck:generation"));
    }
}
