//! The pure validity judgement: manifest bytes plus what a lister saw → [`Verdict`].
//!
//! Owns the rules that decide whether a checkpoint exists. The same functions judge a local
//! directory (fed with recomputed digests) and an S3 prefix (fed with ListObjects/HeadObject
//! results), so both sides agree by construction. No I/O happens here: callers observe, this
//! module decides.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::digest::{crc64nvme_from_base64, sha256_from_hex};
use crate::layout::{excerpt, is_transport_name, Location, PathProblem, MANIFEST_FILE};
use crate::manifest::{FileEntry, Manifest, ManifestError};

/// One file as a lister reports it. Digests are optional because listers differ: a local
/// verifier recomputes both, S3's HeadObject (ChecksumMode=ENABLED) gives the CRC, a plain
/// listing gives only sizes. Whatever is present is checked.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ObservedFile {
    /// Path relative to the step directory, '/'-separated (for S3: the key minus the prefix).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// CRC-64/NVME in S3's base64 form (`ChecksumCRC64NVME`), if known.
    pub crc64nvme: Option<String>,
    /// SHA-256 as hex, if known. Must be a full-object digest: S3's multipart SHA-256 values
    /// are composites of parts and must not be passed here.
    pub sha256: Option<String>,
}

/// The three states a checkpoint can be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Manifest present and every listed file matches it.
    Valid,
    /// Not (yet) complete: no manifest, or a listed file absent. May still become valid
    /// (a write or an upload in flight).
    Incomplete,
    /// Can never become valid: contents contradict the manifest, or the manifest is unusable.
    Corrupt,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Valid => "valid",
            Status::Incomplete => "incomplete",
            Status::Corrupt => "corrupt",
        })
    }
}

/// Which digest disagreed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChecksumKind {
    /// CRC-64/NVME.
    Crc64Nvme,
    /// SHA-256.
    Sha256,
}

impl fmt::Display for ChecksumKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChecksumKind::Crc64Nvme => "crc64nvme",
            ChecksumKind::Sha256 => "sha256",
        })
    }
}

/// Why a checkpoint is not valid. Paths are excerpts of possibly hostile input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// No `manifest.json`: never committed, or its upload has not landed yet.
    #[error("no manifest")]
    NoManifest,
    /// A file the manifest lists is absent.
    #[error("missing file {path:?}")]
    MissingFile {
        /// The listed path.
        path: String,
    },
    /// A listed file has another size (truncated, or overwritten).
    #[error("file {path:?} is {found} bytes, manifest says {expected}")]
    SizeMismatch {
        /// The listed path.
        path: String,
        /// Size in the manifest.
        expected: u64,
        /// Size observed.
        found: u64,
    },
    /// A listed file's bytes differ from what the manifest recorded.
    #[error("file {path:?} {kind} is {found}, manifest says {expected}")]
    ChecksumMismatch {
        /// The listed path.
        path: String,
        /// Which digest differed.
        kind: ChecksumKind,
        /// Digest in the manifest.
        expected: String,
        /// Digest observed (excerpt).
        found: String,
    },
    /// The manifest is unreadable or breaks a rule.
    #[error("bad manifest: {0}")]
    BadManifest(ManifestError),
    /// The manifest's format version is unknown to this reader.
    #[error("unsupported manifest format_version {found}")]
    UnsupportedVersion {
        /// The version claimed.
        found: u32,
    },
    /// A path would leave the step directory: absolute, `..`, or through a symbolic link.
    #[error("path {path:?} escapes the checkpoint directory")]
    PathEscapes {
        /// The offending path (excerpt).
        path: String,
    },
    /// The manifest belongs elsewhere: its namespace/step differ from its directory's
    /// (e.g. a step directory copied or renamed by hand).
    #[error("manifest describes {found}, but sits in {expected}")]
    WrongLocation {
        /// Location of the directory.
        expected: String,
        /// Location the manifest claims.
        found: String,
    },
    /// A listed path is a directory or other non-regular file.
    #[error("{path:?} is not a regular file")]
    NotAFile {
        /// The listed path.
        path: String,
    },
    /// A listed file could not be read (permissions, I/O error).
    #[error("cannot read {path:?}: {error}")]
    Unreadable {
        /// The listed path.
        path: String,
        /// The operating system's message.
        error: String,
    },
}

/// The judgement on one checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Usable: resume from it.
    Valid,
    /// Not complete yet; see [`Status::Incomplete`].
    Incomplete {
        /// Why.
        reason: Reason,
    },
    /// Never usable; see [`Status::Corrupt`].
    Corrupt {
        /// Why.
        reason: Reason,
    },
}

impl Verdict {
    /// The verdict's status.
    pub fn status(&self) -> Status {
        match self {
            Verdict::Valid => Status::Valid,
            Verdict::Incomplete { .. } => Status::Incomplete,
            Verdict::Corrupt { .. } => Status::Corrupt,
        }
    }

    /// Why it is not valid; `None` when valid.
    pub fn reason(&self) -> Option<&Reason> {
        match self {
            Verdict::Valid => None,
            Verdict::Incomplete { reason } | Verdict::Corrupt { reason } => Some(reason),
        }
    }

    /// The reason, by value.
    pub fn into_reason(self) -> Option<Reason> {
        match self {
            Verdict::Valid => None,
            Verdict::Incomplete { reason } | Verdict::Corrupt { reason } => Some(reason),
        }
    }

    /// True for [`Verdict::Valid`].
    pub fn is_valid(&self) -> bool {
        matches!(self, Verdict::Valid)
    }
}

/// Judges a checkpoint from its manifest bytes (`None` when `manifest.json` is absent) and the
/// files a lister observed in its directory. Cost is linear in the number of files.
///
/// Files observed but not listed are ignored (extra files never make a checkpoint invalid),
/// as are transport names (upload markers, `.sagemaker-ignore` temporaries). When a path is
/// observed twice, the first observation counts. A corrupt file outranks a missing one: the
/// verdict is `Corrupt` if anything contradicts the manifest, else `Incomplete` if anything is
/// missing, else `Valid`. A file observed without digests is checked by size only.
///
/// This does not check that the manifest sits in the directory it names; use [`judge_at`]
/// when the location is known.
pub fn judge(manifest_bytes: Option<&[u8]>, observed: &[ObservedFile]) -> Verdict {
    judge_inner(None, manifest_bytes, observed)
}

/// [`judge`], plus the check that the manifest's namespace and step match `location` (the
/// namespace is only compared when the location has one).
pub fn judge_at(
    location: &Location,
    manifest_bytes: Option<&[u8]>,
    observed: &[ObservedFile],
) -> Verdict {
    judge_inner(Some(location), manifest_bytes, observed)
}

fn judge_inner(
    location: Option<&Location>,
    manifest_bytes: Option<&[u8]>,
    observed: &[ObservedFile],
) -> Verdict {
    let manifest = match parse_for(location, manifest_bytes) {
        Ok(manifest) => manifest,
        Err(verdict) => return verdict,
    };
    let mut by_path: HashMap<&str, &ObservedFile> = HashMap::with_capacity(observed.len());
    for file in observed {
        if file.path != MANIFEST_FILE && !is_transport_name(&file.path) {
            by_path.entry(file.path.as_str()).or_insert(file);
        }
    }
    judge_files(&manifest, |entry| {
        check_file(entry, by_path.get(entry.path.as_str()).copied())
    })
}

/// Folds per-file outcomes into a verdict: the first corruption ends the walk (so a local
/// verifier stops hashing), else the first missing file makes it incomplete.
pub(crate) fn judge_files(
    manifest: &Manifest,
    mut check: impl FnMut(&FileEntry) -> FileCheck,
) -> Verdict {
    let mut first_missing = None;
    for entry in &manifest.files {
        match check(entry) {
            FileCheck::Ok => {}
            FileCheck::Missing(reason) => {
                first_missing.get_or_insert(reason);
            }
            FileCheck::Corrupt(reason) => return Verdict::Corrupt { reason },
        }
    }
    match first_missing {
        Some(reason) => Verdict::Incomplete { reason },
        None => Verdict::Valid,
    }
}

/// Parses manifest bytes for a checkpoint at `location` (if known), turning every failure into
/// the verdict it implies.
pub(crate) fn parse_for(
    location: Option<&Location>,
    manifest_bytes: Option<&[u8]>,
) -> Result<Manifest, Verdict> {
    let Some(bytes) = manifest_bytes else {
        return Err(Verdict::Incomplete {
            reason: Reason::NoManifest,
        });
    };
    let manifest = Manifest::parse(bytes).map_err(|err| Verdict::Corrupt {
        reason: reason_for(err),
    })?;
    if let Some(location) = location {
        let claimed = Location {
            namespace: location
                .namespace
                .as_ref()
                .map(|_| manifest.namespace.clone()),
            step: manifest.step,
        };
        if claimed != *location {
            return Err(Verdict::Corrupt {
                reason: Reason::WrongLocation {
                    expected: location.name(),
                    found: Location {
                        namespace: Some(manifest.namespace.clone()),
                        step: manifest.step,
                    }
                    .name(),
                },
            });
        }
    }
    Ok(manifest)
}

/// Maps a manifest error to a reason, lifting the cases operators act on differently.
fn reason_for(err: ManifestError) -> Reason {
    match err {
        ManifestError::UnsupportedVersion { found } => Reason::UnsupportedVersion { found },
        ManifestError::BadPath {
            path,
            problem: PathProblem::Absolute | PathProblem::ParentDir,
        } => Reason::PathEscapes { path },
        other => Reason::BadManifest(other),
    }
}

/// The outcome for one listed file.
pub(crate) enum FileCheck {
    /// Matches everything observed.
    Ok,
    /// Not observed.
    Missing(Reason),
    /// Contradicts the manifest.
    Corrupt(Reason),
}

/// Compares one manifest entry with its observation (`None`: not observed).
pub(crate) fn check_file(entry: &FileEntry, seen: Option<&ObservedFile>) -> FileCheck {
    let Some(seen) = seen else {
        return FileCheck::Missing(Reason::MissingFile {
            path: entry.path.clone(),
        });
    };
    if seen.size != entry.size {
        return FileCheck::Corrupt(Reason::SizeMismatch {
            path: entry.path.clone(),
            expected: entry.size,
            found: seen.size,
        });
    }
    let mismatch = |kind, found: &str| {
        FileCheck::Corrupt(Reason::ChecksumMismatch {
            path: entry.path.clone(),
            kind,
            expected: match kind {
                ChecksumKind::Crc64Nvme => entry.crc64nvme.clone(),
                ChecksumKind::Sha256 => entry.sha256.clone(),
            },
            found: excerpt(found),
        })
    };
    // Compare decoded values; a malformed observation is a mismatch, never a pass.
    if let Some(crc) = &seen.crc64nvme {
        match crc64nvme_from_base64(crc) {
            Some(found) if Some(found) == crc64nvme_from_base64(&entry.crc64nvme) => {}
            _ => return mismatch(ChecksumKind::Crc64Nvme, crc),
        }
    }
    if let Some(sha) = &seen.sha256 {
        match sha256_from_hex(sha) {
            Some(found) if Some(found) == sha256_from_hex(&entry.sha256) => {}
            _ => return mismatch(ChecksumKind::Sha256, sha),
        }
    }
    FileCheck::Ok
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str =
        include_str!("../tests/fixtures/checkpoints/algo-1/step-000000001200/manifest.json");

    /// What S3 would report for the fixture's files (HeadObject with ChecksumMode=ENABLED).
    fn s3_listing() -> Vec<ObservedFile> {
        let m = Manifest::parse(MANIFEST.as_bytes()).unwrap();
        m.files
            .iter()
            .map(|f| ObservedFile {
                path: f.path.clone(),
                size: f.size,
                crc64nvme: Some(f.crc64nvme.clone()),
                sha256: None,
            })
            .collect()
    }

    fn judge_fixture(observed: &[ObservedFile]) -> Verdict {
        judge(Some(MANIFEST.as_bytes()), observed)
    }

    #[test]
    fn complete_listing_is_valid_and_extras_are_ignored() {
        let mut seen = s3_listing();
        assert_eq!(judge_fixture(&seen), Verdict::Valid);
        seen.push(ObservedFile {
            path: "notes.txt".into(),
            size: 3,
            ..Default::default()
        });
        seen.push(ObservedFile {
            path: "model.safetensors.sagemaker-uploaded".into(),
            ..Default::default()
        });
        seen.push(ObservedFile {
            path: MANIFEST_FILE.into(),
            size: 900,
            ..Default::default()
        });
        assert_eq!(judge_fixture(&seen), Verdict::Valid);
    }

    #[test]
    fn no_manifest_is_incomplete() {
        assert_eq!(
            judge(None, &s3_listing()),
            Verdict::Incomplete {
                reason: Reason::NoManifest
            }
        );
    }

    #[test]
    fn missing_file_is_incomplete_but_corruption_outranks_it() {
        let mut seen = s3_listing();
        seen.remove(0);
        assert_eq!(
            judge_fixture(&seen),
            Verdict::Incomplete {
                reason: Reason::MissingFile {
                    path: "model.safetensors".into()
                }
            }
        );
        seen[1].size += 1;
        assert_eq!(judge_fixture(&seen).status(), Status::Corrupt);
    }

    #[test]
    fn marker_is_not_the_file() {
        let mut seen = s3_listing();
        seen[0].path = "model.safetensors.sagemaker-uploading".into();
        assert_eq!(judge_fixture(&seen).status(), Status::Incomplete);
    }

    #[test]
    fn crc_mismatch_and_malformed_observation_are_corrupt() {
        let mut seen = s3_listing();
        seen[0].crc64nvme = Some("AAAAAAAAAAA=".into());
        let verdict = judge_fixture(&seen);
        assert!(
            matches!(
                verdict.reason(),
                Some(Reason::ChecksumMismatch {
                    kind: ChecksumKind::Crc64Nvme,
                    ..
                })
            ),
            "{verdict:?}"
        );
        seen[0].crc64nvme = Some("not base64".into());
        assert_eq!(judge_fixture(&seen).status(), Status::Corrupt);
    }

    #[test]
    fn sha_is_compared_case_insensitively() {
        let m = Manifest::parse(MANIFEST.as_bytes()).unwrap();
        let mut seen = s3_listing();
        seen[0].sha256 = Some(m.files[0].sha256.to_uppercase());
        assert_eq!(judge_fixture(&seen), Verdict::Valid);
        seen[0].sha256 = Some("00".repeat(32));
        assert_eq!(judge_fixture(&seen).status(), Status::Corrupt);
    }

    #[test]
    fn escaping_path_and_unknown_version_have_their_own_reasons() {
        let mut doc: serde_json::Value = serde_json::from_str(MANIFEST).unwrap();
        doc["files"][0]["path"] = "../../etc/passwd".into();
        let bytes = serde_json::to_vec(&doc).unwrap();
        assert_eq!(
            judge(Some(&bytes), &[]),
            Verdict::Corrupt {
                reason: Reason::PathEscapes {
                    path: "../../etc/passwd".into()
                }
            }
        );
        doc["format_version"] = 2.into();
        let bytes = serde_json::to_vec(&doc).unwrap();
        assert_eq!(
            judge(Some(&bytes), &[]),
            Verdict::Corrupt {
                reason: Reason::UnsupportedVersion { found: 2 }
            }
        );
    }

    #[test]
    fn judge_at_checks_the_location() {
        let here = Location {
            namespace: Some("algo-1".into()),
            step: 1200,
        };
        assert_eq!(
            judge_at(&here, Some(MANIFEST.as_bytes()), &s3_listing()),
            Verdict::Valid
        );
        let root_level = Location {
            namespace: None,
            step: 1200,
        };
        assert_eq!(
            judge_at(&root_level, Some(MANIFEST.as_bytes()), &s3_listing()),
            Verdict::Valid
        );
        let elsewhere = Location {
            namespace: Some("algo-2".into()),
            step: 1200,
        };
        assert_eq!(
            judge_at(&elsewhere, Some(MANIFEST.as_bytes()), &s3_listing()),
            Verdict::Corrupt {
                reason: Reason::WrongLocation {
                    expected: "algo-2/step-000000001200".into(),
                    found: "algo-1/step-000000001200".into(),
                }
            }
        );
        let other_step = Location {
            namespace: None,
            step: 1300,
        };
        assert_eq!(
            judge_at(&other_step, Some(MANIFEST.as_bytes()), &s3_listing()).status(),
            Status::Corrupt
        );
    }
}
