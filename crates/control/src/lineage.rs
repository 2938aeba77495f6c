//! A training run's lineage: the chain of jobs spotcheck relaunched from one root job.
//!
//! Owns [`Lineage`], read from the `spotcheck:*` bookkeeping tags every relaunch carries
//! (`root`, `attempt`, `parent`, `interruptions`, `error-retries`, `resume-step`, `stalled`,
//! `runtime-used`) and,
//! when the shell has one, a history of earlier attempts ([`AttemptRecord`]). A job without
//! these tags is attempt 1 and its own root. It does not decide anything and it does not read
//! AWS: the tags and history are handed in.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::tags::{keys, Tags};

/// What an earlier attempt achieved, from the shell's ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The attempt number (1 = the root job).
    pub attempt: u32,
    /// Latest valid checkpoint step when that attempt ended (`None`: no checkpoint yet).
    pub step_reached: Option<u64>,
}

/// Where a job stands in its lineage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Lineage {
    /// Name of the lineage's first job.
    pub root: String,
    /// This job's attempt number (1 = the root job).
    pub attempt: u32,
    /// The job this one was relaunched from.
    pub parent: Option<String>,
    /// Spot interruptions seen by earlier attempts (this job's own come from its transitions),
    /// an attempt whose spot capacity never arrived counting as one.
    pub interruptions: u32,
    /// Relaunches already spent on the user's own errors.
    pub error_retries: u32,
    /// Checkpoint step this attempt resumed from (`None`: from scratch).
    pub resume_step: Option<u64>,
    /// Consecutive earlier attempts that trained without checkpoint progress.
    pub stalled_attempts: u32,
    /// Seconds of the runtime budget earlier attempts used (`spotcheck:runtime-used`).
    pub runtime_used: u64,
    /// Step reached by each earlier attempt, when a history was supplied.
    pub steps_by_attempt: BTreeMap<u32, Option<u64>>,
}

/// A lineage tag with a value spotcheck could not have written.
#[derive(Debug, thiserror::Error)]
pub enum LineageError {
    /// The tag's value does not parse.
    #[error("tag {key} = {value:?} is invalid: expected {expected}")]
    InvalidTag {
        /// The tag key.
        key: &'static str,
        /// The offending value.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
}

impl Lineage {
    /// The lineage of a job that spotcheck has not relaunched yet.
    pub fn first(job_name: &str) -> Self {
        Lineage {
            root: job_name.to_owned(),
            attempt: 1,
            parent: None,
            interruptions: 0,
            error_retries: 0,
            resume_step: None,
            stalled_attempts: 0,
            runtime_used: 0,
            steps_by_attempt: BTreeMap::new(),
        }
    }

    /// Reads the lineage of `job_name` from its tags and an optional history of earlier attempts.
    ///
    /// When `history` has entries for attempts before this one, it is the better record and
    /// replaces the `resume-step` and `stalled` tags: the step this attempt resumed from is the
    /// last earlier attempt's step, and the stall count is the run of trailing earlier attempts
    /// that did not raise the step.
    pub fn from_tags(
        job_name: &str,
        tags: &Tags,
        history: &[AttemptRecord],
    ) -> Result<Self, LineageError> {
        let mut lineage = Lineage::first(job_name);
        if let Some(root) = tags.get(keys::ROOT).filter(|r| !r.trim().is_empty()) {
            lineage.root = root.trim().to_owned();
        }
        lineage.parent = tags
            .get(keys::PARENT)
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned);
        if let Some(attempt) = number::<u32>(tags, keys::ATTEMPT)? {
            if attempt == 0 {
                return Err(LineageError::InvalidTag {
                    key: keys::ATTEMPT,
                    value: "0".into(),
                    expected: "an integer ≥ 1",
                });
            }
            lineage.attempt = attempt;
        }
        lineage.interruptions = number(tags, keys::INTERRUPTIONS)?.unwrap_or(0);
        lineage.error_retries = number(tags, keys::ERROR_RETRIES)?.unwrap_or(0);
        lineage.stalled_attempts = number(tags, keys::STALLED)?.unwrap_or(0);
        lineage.runtime_used = number(tags, keys::RUNTIME_USED)?.unwrap_or(0);
        lineage.resume_step = match tags.get(keys::RESUME_STEP).map(str::trim) {
            None | Some("") | Some("none") => None,
            Some(_) => number(tags, keys::RESUME_STEP)?,
        };

        let earlier: BTreeMap<u32, Option<u64>> = history
            .iter()
            .filter(|r| r.attempt < lineage.attempt)
            .map(|r| (r.attempt, r.step_reached))
            .collect();
        if !earlier.is_empty() {
            let mut best: Option<u64> = None;
            let mut stalled = 0;
            for step in earlier.values() {
                if *step > best {
                    best = *step;
                    stalled = 0;
                } else {
                    stalled += 1;
                }
            }
            lineage.resume_step = best;
            lineage.stalled_attempts = stalled;
            lineage.steps_by_attempt = earlier;
        }
        Ok(lineage)
    }
}

fn number<T: std::str::FromStr>(tags: &Tags, key: &'static str) -> Result<Option<T>, LineageError> {
    match tags.get(key).map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|_| LineageError::InvalidTag {
                key,
                value: text.to_owned(),
                expected: "a non-negative integer",
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untagged_job_is_its_own_root() {
        let lineage = Lineage::from_tags("job", &Tags::new(), &[]).unwrap();
        assert_eq!(lineage, Lineage::first("job"));
    }

    #[test]
    fn tags_are_read_and_validated() {
        let tags: Tags = [
            (keys::ROOT, "root-job"),
            (keys::ATTEMPT, "3"),
            (keys::PARENT, "root-job-r2-abc"),
            (keys::INTERRUPTIONS, "4"),
            (keys::ERROR_RETRIES, "1"),
            (keys::RESUME_STEP, "1200"),
            (keys::STALLED, "1"),
            (keys::RUNTIME_USED, "7200"),
        ]
        .into_iter()
        .collect();
        let lineage = Lineage::from_tags("root-job-r3-def", &tags, &[]).unwrap();
        assert_eq!(lineage.runtime_used, 7200);
        assert_eq!(lineage.root, "root-job");
        assert_eq!(lineage.attempt, 3);
        assert_eq!(lineage.parent.as_deref(), Some("root-job-r2-abc"));
        assert_eq!(
            (
                lineage.interruptions,
                lineage.error_retries,
                lineage.stalled_attempts
            ),
            (4, 1, 1)
        );
        assert_eq!(lineage.resume_step, Some(1200));

        for (key, value) in [
            (keys::ATTEMPT, "0"),
            (keys::ATTEMPT, "two"),
            (keys::RESUME_STEP, "-5"),
            (keys::INTERRUPTIONS, "1.0"),
            (keys::RUNTIME_USED, "-1"),
        ] {
            let tags: Tags = [(key, value)].into_iter().collect();
            assert!(
                Lineage::from_tags("j", &tags, &[]).is_err(),
                "{key}={value}"
            );
        }
    }

    #[test]
    fn history_replaces_the_progress_tags() {
        let tags: Tags = [(keys::ATTEMPT, "4"), (keys::STALLED, "0")]
            .into_iter()
            .collect();
        let history = [
            AttemptRecord {
                attempt: 1,
                step_reached: Some(500),
            },
            AttemptRecord {
                attempt: 2,
                step_reached: Some(500),
            },
            AttemptRecord {
                attempt: 3,
                step_reached: Some(400),
            },
            // Attempts at or after the current one are not history.
            AttemptRecord {
                attempt: 4,
                step_reached: Some(900),
            },
        ];
        let lineage = Lineage::from_tags("j", &tags, &history).unwrap();
        assert_eq!(lineage.resume_step, Some(500));
        assert_eq!(lineage.stalled_attempts, 2);
        assert_eq!(lineage.steps_by_attempt.len(), 3);
    }
}
