//! Which checkpoints to delete, as data, and the small executor that deletes them.
//!
//! Owns the retention rules. [`plan_retention`] is pure: a report in, a list of
//! [`RetentionAction`]s out, tested as a table. [`execute_retention`] only carries actions
//! out. On SageMaker, deleting a local checkpoint file deletes it in S3 too, so the rules err
//! on the side of keeping.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::durable::remove_checkpoint_dir;
use crate::layout::Location;
use crate::scan::{dir_of, CheckpointReport};
use crate::verify::Status;

/// One thing retention wants done.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RetentionAction {
    /// Remove the checkpoint directory with this relative name.
    Delete {
        /// Relative name, e.g. `algo-1/step-000000001200`.
        name: String,
    },
}

/// Plans deletions, per namespace:
///
/// - keep the newest `keep_last` valid checkpoints (at least one: the newest valid checkpoint
///   is never deleted, even with `keep_last == 0`); delete older valid ones;
/// - delete an incomplete or corrupt checkpoint only when it is older than the newest valid
///   one: a newer incomplete one may be a write or an upload in flight, and with no valid
///   checkpoint at all nothing is deleted;
/// - never delete a checkpoint named in `in_use` (being read).
///
/// Actions come sorted by name.
pub fn plan_retention(
    checkpoints: &[CheckpointReport],
    keep_last: usize,
    in_use: &[&str],
) -> Vec<RetentionAction> {
    let keep_last = keep_last.max(1);
    let mut namespaces: BTreeMap<Option<&str>, Vec<&CheckpointReport>> = BTreeMap::new();
    for checkpoint in checkpoints {
        namespaces
            .entry(checkpoint.namespace.as_deref())
            .or_default()
            .push(checkpoint);
    }
    let mut actions = Vec::new();
    for group in namespaces.values() {
        let mut valid_steps: Vec<u64> = group
            .iter()
            .filter(|c| c.status == Status::Valid)
            .map(|c| c.step)
            .collect();
        valid_steps.sort_unstable_by(|a, b| b.cmp(a));
        valid_steps.dedup();
        let Some(&newest_valid) = valid_steps.first() else {
            continue;
        };
        let oldest_kept = valid_steps[valid_steps.len().min(keep_last) - 1];
        for checkpoint in group {
            let doomed = match checkpoint.status {
                Status::Valid => checkpoint.step < oldest_kept,
                Status::Incomplete | Status::Corrupt => checkpoint.step < newest_valid,
            };
            if doomed && !in_use.contains(&checkpoint.name.as_str()) {
                actions.push(RetentionAction::Delete {
                    name: checkpoint.name.clone(),
                });
            }
        }
    }
    actions.sort();
    actions.dedup();
    actions
}

/// Why an action could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// The name is not a checkpoint name (it could point outside the root); nothing was done.
    #[error("{name:?} is not a checkpoint name")]
    BadName {
        /// The name in the action.
        name: String,
    },
    /// The path is a link or a file, not a checkpoint directory; it was left alone.
    #[error("{} is not a checkpoint directory", path.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// Removal failed part-way; the manifest is removed first, so what remains is incomplete.
    #[error("cannot remove {}: {source}", path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
}

/// Carries out `actions` under `root`, in order, stopping at the first failure. Each
/// directory loses its manifest first (durably) and then the rest, so a crash mid-way leaves
/// an incomplete checkpoint, never one that looks valid with files missing. A directory that
/// is already gone counts as deleted.
pub fn execute_retention(
    root: impl AsRef<Path>,
    actions: &[RetentionAction],
) -> Result<(), RetentionError> {
    let root = root.as_ref();
    for action in actions {
        let RetentionAction::Delete { name } = action;
        let location =
            Location::parse(name).ok_or_else(|| RetentionError::BadName { name: name.clone() })?;
        let dir = dir_of(root, &location);
        match std::fs::symlink_metadata(&dir) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(RetentionError::Io { path: dir, source }),
            Ok(meta) if !meta.is_dir() => return Err(RetentionError::NotADirectory { path: dir }),
            Ok(_) => {}
        }
        remove_checkpoint_dir(&dir).map_err(|source| RetentionError::Io { path: dir, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{Reason, Verdict};

    fn at(name: &str, status: Status) -> CheckpointReport {
        let location = Location::parse(name).unwrap();
        let verdict = match status {
            Status::Valid => Verdict::Valid,
            Status::Incomplete => Verdict::Incomplete {
                reason: Reason::NoManifest,
            },
            Status::Corrupt => Verdict::Corrupt {
                reason: Reason::MissingFile {
                    path: "model.safetensors".into(),
                },
            },
        };
        CheckpointReport::new(&location, verdict)
    }

    fn deleted(actions: Vec<RetentionAction>) -> Vec<String> {
        actions
            .into_iter()
            .map(|RetentionAction::Delete { name }| name)
            .collect()
    }

    use Status::{Corrupt as C, Incomplete as I, Valid as V};

    struct Case {
        what: &'static str,
        checkpoints: &'static [(&'static str, Status)],
        keep_last: usize,
        in_use: &'static [&'static str],
        deletes: &'static [&'static str],
    }

    const CASES: &[Case] = &[
        Case {
            what: "keeps the last two valid, drops older valid",
            checkpoints: &[
                ("algo-1/step-000000000100", V),
                ("algo-1/step-000000000200", V),
                ("algo-1/step-000000000300", V),
                ("algo-1/step-000000000400", V),
            ],
            keep_last: 2,
            in_use: &[],
            deletes: &["algo-1/step-000000000100", "algo-1/step-000000000200"],
        },
        Case {
            what: "keep_last 0 still keeps the newest valid",
            checkpoints: &[
                ("algo-1/step-000000000100", V),
                ("algo-1/step-000000000200", V),
            ],
            keep_last: 0,
            in_use: &[],
            deletes: &["algo-1/step-000000000100"],
        },
        Case {
            what: "a newer incomplete one may be in flight: kept; older broken ones go",
            checkpoints: &[
                ("algo-1/step-000000000100", C),
                ("algo-1/step-000000000200", I),
                ("algo-1/step-000000000300", V),
                ("algo-1/step-000000000400", I),
                ("algo-1/step-000000000500", C),
            ],
            keep_last: 3,
            in_use: &[],
            deletes: &["algo-1/step-000000000100", "algo-1/step-000000000200"],
        },
        Case {
            what: "no valid checkpoint: nothing is deleted",
            checkpoints: &[
                ("algo-1/step-000000000100", C),
                ("algo-1/step-000000000200", I),
            ],
            keep_last: 1,
            in_use: &[],
            deletes: &[],
        },
        Case {
            what: "in-use checkpoints survive, valid or not, and do not count as kept",
            checkpoints: &[
                ("algo-1/step-000000000100", V),
                ("algo-1/step-000000000150", C),
                ("algo-1/step-000000000200", V),
                ("algo-1/step-000000000300", V),
            ],
            keep_last: 1,
            in_use: &["algo-1/step-000000000100", "algo-1/step-000000000150"],
            deletes: &["algo-1/step-000000000200"],
        },
        Case {
            what: "namespaces are independent; root-level checkpoints are their own group",
            checkpoints: &[
                ("algo-1/step-000000000100", V),
                ("algo-1/step-000000000200", V),
                ("algo-2/step-000000000100", V),
                ("algo-2/step-000000000050", I),
                ("step-000000000010", V),
                ("step-000000000020", V),
            ],
            keep_last: 1,
            in_use: &[],
            deletes: &[
                "algo-1/step-000000000100",
                "algo-2/step-000000000050",
                "step-000000000010",
            ],
        },
        Case {
            what: "fewer valid than keep_last: all kept",
            checkpoints: &[
                ("algo-1/step-000000000100", V),
                ("algo-1/step-000000000200", V),
            ],
            keep_last: 5,
            in_use: &[],
            deletes: &[],
        },
        Case {
            what: "empty report",
            checkpoints: &[],
            keep_last: 2,
            in_use: &[],
            deletes: &[],
        },
    ];

    #[test]
    fn retention_table() {
        for case in CASES {
            let reports: Vec<_> = case.checkpoints.iter().map(|(n, s)| at(n, *s)).collect();
            let got = deleted(plan_retention(&reports, case.keep_last, case.in_use));
            assert_eq!(got, case.deletes, "{}", case.what);
        }
    }

    #[test]
    fn plan_ignores_report_order() {
        let case = &CASES[2];
        let mut reports: Vec<_> = case.checkpoints.iter().map(|(n, s)| at(n, *s)).collect();
        reports.reverse();
        assert_eq!(
            deleted(plan_retention(&reports, case.keep_last, &[])),
            case.deletes
        );
    }
}
