//! Which checkpoints to delete, as data, and the small executor that deletes them.
//!
//! Owns the retention rules. [`plan_retention`] is pure: a report in, a list of
//! [`RetentionAction`]s out, tested as a table. [`execute_retention`] only carries actions
//! out. On SageMaker, deleting a local checkpoint file deletes it in S3 too, so the rules err
//! on the side of keeping: where an uploader ships the root to S3 ([`Uploads::Synced`]), only
//! checkpoints that reached S3 count as kept, and the newest of them is never deleted.

use std::collections::{BTreeMap, BTreeSet};
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

/// Whether something ships the checkpoint root to S3, and what it has shipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uploads<'a> {
    /// Nothing mirrors the root (local training, or a store that is itself durable): the
    /// valid checkpoints on disk are what there is.
    Unsynced,
    /// An uploader mirrors the root to S3 and deletes there what is deleted here (SageMaker's
    /// checkpoint sync, the local service's, the trainer's own `--checkpoint-s3-uri` mirror):
    /// these checkpoint names are fully uploaded (see [`crate::uploaded_checkpoints`]). A
    /// checkpoint not yet uploaded would be lost with the instance, so it does not count as
    /// kept; one newer than the newest uploaded may still be on its way, so it is not deleted.
    Synced(&'a BTreeSet<String>),
}

/// Plans deletions, per namespace:
///
/// - keep the newest `keep_last` valid checkpoints (at least one: the newest valid checkpoint
///   is never deleted, even with `keep_last == 0`); delete older valid ones;
/// - with [`Uploads::Synced`], "valid" above means "valid and fully uploaded": the newest
///   uploaded checkpoint is never deleted, every valid checkpoint newer than it is kept (an
///   upload may be in flight), and an older one that never reached S3 is deleted; with nothing
///   uploaded yet, no valid checkpoint is deleted;
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
    uploads: Uploads<'_>,
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
        // The valid checkpoints that count as kept: all of them, or those in S3.
        let counted: Vec<u64> = match uploads {
            Uploads::Unsynced => valid_steps.clone(),
            Uploads::Synced(uploaded) => {
                let mut steps: Vec<u64> = group
                    .iter()
                    .filter(|c| c.status == Status::Valid && uploaded.contains(&c.name))
                    .map(|c| c.step)
                    .collect();
                steps.sort_unstable_by(|a, b| b.cmp(a));
                steps.dedup();
                steps
            }
        };
        // Kept: the newest `keep_last` counted ones, and anything newer than the newest counted
        // one (only possible when synced: written, not yet uploaded).
        let kept = &counted[..counted.len().min(keep_last)];
        for checkpoint in group {
            let doomed = match checkpoint.status {
                Status::Valid => {
                    counted
                        .first()
                        .is_some_and(|&newest| checkpoint.step < newest)
                        && !kept.contains(&checkpoint.step)
                }
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
        /// `Some`: synced, with these fully uploaded.
        uploaded: Option<&'static [&'static str]>,
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
            uploaded: None,
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
            uploaded: None,
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
            uploaded: None,
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
            uploaded: None,
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
            uploaded: None,
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
            uploaded: None,
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
            uploaded: None,
            deletes: &[],
        },
        Case {
            what: "empty report",
            checkpoints: &[],
            keep_last: 2,
            in_use: &[],
            uploaded: None,
            deletes: &[],
        },
        Case {
            what: "synced: nothing uploaded yet, no valid checkpoint may go",
            checkpoints: &[
                ("algo-1/step-000000000100", V),
                ("algo-1/step-000000000200", V),
                ("algo-1/step-000000000300", V),
                ("algo-1/step-000000000050", C),
            ],
            keep_last: 1,
            in_use: &[],
            uploaded: Some(&[]),
            deletes: &["algo-1/step-000000000050"],
        },
        Case {
            what:
                "synced: the newest uploaded is kept, newer pending ones too, older un-uploaded go",
            checkpoints: &[
                ("algo-1/step-000000000100", V),
                ("algo-1/step-000000000200", V),
                ("algo-1/step-000000000300", V),
                ("algo-1/step-000000000400", V),
                ("algo-1/step-000000000500", V),
            ],
            keep_last: 1,
            in_use: &[],
            uploaded: Some(&["algo-1/step-000000000100", "algo-1/step-000000000300"]),
            deletes: &["algo-1/step-000000000100", "algo-1/step-000000000200"],
        },
        Case {
            what: "synced: only uploaded checkpoints count toward keep_last",
            checkpoints: &[
                ("algo-1/step-000000000100", V),
                ("algo-1/step-000000000200", V),
                ("algo-1/step-000000000300", V),
                ("algo-1/step-000000000400", V),
            ],
            keep_last: 2,
            in_use: &[],
            uploaded: Some(&["algo-1/step-000000000100", "algo-1/step-000000000200"]),
            deletes: &[],
        },
        Case {
            what: "synced: an uploaded name that is not valid here does not count",
            checkpoints: &[
                ("algo-1/step-000000000100", V),
                ("algo-1/step-000000000200", C),
                ("algo-1/step-000000000300", V),
            ],
            keep_last: 1,
            in_use: &[],
            uploaded: Some(&["algo-1/step-000000000100", "algo-1/step-000000000200"]),
            deletes: &["algo-1/step-000000000200"],
        },
    ];

    #[test]
    fn retention_table() {
        for case in CASES {
            let reports: Vec<_> = case.checkpoints.iter().map(|(n, s)| at(n, *s)).collect();
            let uploaded: Option<BTreeSet<String>> = case
                .uploaded
                .map(|names| names.iter().map(|n| n.to_string()).collect());
            let uploads = match &uploaded {
                Some(set) => Uploads::Synced(set),
                None => Uploads::Unsynced,
            };
            let got = deleted(plan_retention(
                &reports,
                case.keep_last,
                case.in_use,
                uploads,
            ));
            assert_eq!(got, case.deletes, "{}", case.what);
        }
    }

    #[test]
    fn plan_ignores_report_order() {
        let case = &CASES[2];
        let mut reports: Vec<_> = case.checkpoints.iter().map(|(n, s)| at(n, *s)).collect();
        reports.reverse();
        assert_eq!(
            deleted(plan_retention(
                &reports,
                case.keep_last,
                &[],
                Uploads::Unsynced
            )),
            case.deletes
        );
    }
}
