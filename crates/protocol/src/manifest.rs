//! The manifest: the schema of `manifest.json` and the rules a parsed manifest must satisfy.
//!
//! Owns parsing untrusted bytes into a [`Manifest`] and serialising one back. Parsing is the
//! trust boundary for bytes read from S3 or a disk someone else wrote: it bounds every size
//! before allocating, rejects every path that could leave the step directory, and never
//! panics. It does no I/O and never resolves a path.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::digest::{crc64nvme_from_base64, is_canonical_sha256_hex};
use crate::layout::{check_namespace, check_rel_path, excerpt, PathProblem};

/// The manifest format this crate writes and the only one it reads.
pub const FORMAT_VERSION: u32 = 1;

/// Largest `manifest.json` accepted, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;

/// Most file entries a manifest may list.
pub const MAX_FILES: usize = 10_000;

/// Largest size a file entry may claim (1 TiB): above any real checkpoint shard, and small
/// enough that sums over entries cannot overflow.
pub const MAX_FILE_SIZE: u64 = 1 << 40;

/// The contents of `manifest.json`: which files make up a checkpoint and what they hash to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT_VERSION`] for manifests this crate accepts.
    pub format_version: u32,
    /// The training step the checkpoint captures; matches its `step-…` directory.
    pub step: u64,
    /// The host/rank that wrote it; matches its namespace directory.
    pub namespace: String,
    /// When it was committed, in Unix milliseconds, as supplied by the writer's caller.
    pub created_at_ms: u64,
    /// Free-form caller data (epoch, loss, data-loader position…); not interpreted here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Value>,
    /// The files, in the order they were written.
    pub files: Vec<FileEntry>,
}

/// One file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Path relative to the step directory, '/'-separated (see [`check_rel_path`]).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the bytes, 64 lowercase hex digits: the end-to-end check on local disk.
    pub sha256: String,
    /// CRC-64/NVME of the bytes, as base64 of the 8 big-endian bytes: the same string S3's
    /// HeadObject returns in `ChecksumCRC64NVME`, so S3 validation needs no download.
    pub crc64nvme: String,
}

/// Why bytes are not an acceptable manifest. Paths in variants are shortened excerpts of the
/// untrusted input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Over [`MAX_MANIFEST_BYTES`]; refused before parsing.
    #[error("manifest is {size} bytes, over the {MAX_MANIFEST_BYTES}-byte limit")]
    TooLarge {
        /// Size seen (at least).
        size: usize,
    },
    /// Not JSON of the manifest's shape (syntax, types, missing or unknown fields).
    #[error("manifest is not valid JSON of the expected shape: {message}")]
    Json {
        /// The JSON parser's message.
        message: String,
    },
    /// Written by a format this reader does not know. Kept apart from [`ManifestError::Json`]
    /// so operators can tell "newer writer" from "garbage".
    #[error("unsupported manifest format_version {found} (this reader knows {FORMAT_VERSION})")]
    UnsupportedVersion {
        /// The version the manifest claims.
        found: u32,
    },
    /// More than [`MAX_FILES`] entries.
    #[error("manifest lists {count} files, over the {MAX_FILES}-file limit")]
    TooManyFiles {
        /// Entries listed.
        count: usize,
    },
    /// The namespace is not a legal namespace directory name.
    #[error("manifest namespace {namespace:?} {problem}")]
    BadNamespace {
        /// Excerpt of the namespace.
        namespace: String,
        /// What is wrong with it.
        problem: PathProblem,
    },
    /// A file path breaks the path rules.
    #[error("file path {path:?} {problem}")]
    BadPath {
        /// Excerpt of the path.
        path: String,
        /// What is wrong with it.
        problem: PathProblem,
    },
    /// The same path listed twice.
    #[error("file path {path:?} is listed twice")]
    DuplicatePath {
        /// Excerpt of the path.
        path: String,
    },
    /// A size over [`MAX_FILE_SIZE`].
    #[error("file {path:?} claims {size} bytes, over the {MAX_FILE_SIZE}-byte limit")]
    FileTooLarge {
        /// Excerpt of the path.
        path: String,
        /// The size claimed.
        size: u64,
    },
    /// `sha256` is not 64 lowercase hex digits.
    #[error("file {path:?} has a malformed sha256 (want 64 lowercase hex digits)")]
    BadSha256 {
        /// Excerpt of the path.
        path: String,
    },
    /// `crc64nvme` is not canonical base64 of 8 bytes.
    #[error("file {path:?} has a malformed crc64nvme (want base64 of 8 bytes)")]
    BadCrc64 {
        /// Excerpt of the path.
        path: String,
    },
}

/// Reads only the version, so an unknown version is reported as such even when the rest of the
/// document has a shape this reader does not know.
#[derive(Deserialize)]
struct VersionProbe {
    format_version: u32,
}

impl Manifest {
    /// Parses and checks untrusted bytes. Never panics, never allocates more than a small
    /// multiple of [`MAX_MANIFEST_BYTES`].
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge { size: bytes.len() });
        }
        let probe: VersionProbe = serde_json::from_slice(bytes).map_err(json_error)?;
        if probe.format_version != FORMAT_VERSION {
            return Err(ManifestError::UnsupportedVersion {
                found: probe.format_version,
            });
        }
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(json_error)?;
        manifest.check()?;
        Ok(manifest)
    }

    /// Serialises for `manifest.json` (pretty-printed: people read these), refusing anything
    /// [`Manifest::parse`] would refuse, so a writer can never commit an unreadable checkpoint.
    pub fn to_json_bytes(&self) -> Result<Vec<u8>, ManifestError> {
        if self.format_version != FORMAT_VERSION {
            return Err(ManifestError::UnsupportedVersion {
                found: self.format_version,
            });
        }
        self.check()?;
        let mut bytes = serde_json::to_vec_pretty(self).map_err(json_error)?;
        bytes.push(b'\n');
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge { size: bytes.len() });
        }
        Ok(bytes)
    }

    /// The entry for `path`, if listed.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|entry| entry.path == path)
    }

    /// Checks everything serde's shape check cannot: counts, names, sizes, digest spellings.
    fn check(&self) -> Result<(), ManifestError> {
        if self.files.len() > MAX_FILES {
            return Err(ManifestError::TooManyFiles {
                count: self.files.len(),
            });
        }
        check_namespace(&self.namespace).map_err(|problem| ManifestError::BadNamespace {
            namespace: excerpt(&self.namespace),
            problem,
        })?;
        let mut seen = HashSet::with_capacity(self.files.len());
        for entry in &self.files {
            let path = || excerpt(&entry.path);
            check_rel_path(&entry.path).map_err(|problem| ManifestError::BadPath {
                path: path(),
                problem,
            })?;
            if !seen.insert(entry.path.as_str()) {
                return Err(ManifestError::DuplicatePath { path: path() });
            }
            if entry.size > MAX_FILE_SIZE {
                return Err(ManifestError::FileTooLarge {
                    path: path(),
                    size: entry.size,
                });
            }
            if !is_canonical_sha256_hex(&entry.sha256) {
                return Err(ManifestError::BadSha256 { path: path() });
            }
            if crc64nvme_from_base64(&entry.crc64nvme).is_none() {
                return Err(ManifestError::BadCrc64 { path: path() });
            }
        }
        Ok(())
    }
}

fn json_error(err: serde_json::Error) -> ManifestError {
    ManifestError::Json {
        message: err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str =
        include_str!("../tests/fixtures/checkpoints/algo-1/step-000000001200/manifest.json");

    fn with(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut doc: serde_json::Value = serde_json::from_str(VALID).unwrap();
        edit(&mut doc);
        serde_json::to_vec(&doc).unwrap()
    }

    #[test]
    fn fixture_parses_and_round_trips() {
        let m = Manifest::parse(VALID.as_bytes()).unwrap();
        assert_eq!(m.step, 1200);
        assert_eq!(m.namespace, "algo-1");
        assert_eq!(m.files.len(), 3);
        assert_eq!(m.meta.as_ref().and_then(|v| v["epoch"].as_u64()), Some(3));
        assert_eq!(m.file("trainer_state.json").map(|f| f.size), Some(144));
        let again = Manifest::parse(&m.to_json_bytes().unwrap()).unwrap();
        assert_eq!(again, m);
    }

    #[test]
    fn hostile_manifests_are_refused_with_the_right_error() {
        let set_path = |p: &'static str| with(move |d| d["files"][0]["path"] = p.into());
        let cases: Vec<(&str, Vec<u8>, ManifestError)> = vec![
            (
                "absolute path",
                set_path("/etc/passwd"),
                ManifestError::BadPath {
                    path: "/etc/passwd".into(),
                    problem: PathProblem::Absolute,
                },
            ),
            (
                "parent dir",
                set_path("../../x"),
                ManifestError::BadPath {
                    path: "../../x".into(),
                    problem: PathProblem::ParentDir,
                },
            ),
            (
                "manifest listing itself",
                set_path("manifest.json"),
                ManifestError::BadPath {
                    path: "manifest.json".into(),
                    problem: PathProblem::Reserved,
                },
            ),
            (
                "duplicate",
                with(|d| d["files"][1]["path"] = d["files"][0]["path"].clone()),
                ManifestError::DuplicatePath {
                    path: "model.safetensors".into(),
                },
            ),
            (
                "huge size",
                with(|d| d["files"][0]["size"] = (MAX_FILE_SIZE + 1).into()),
                ManifestError::FileTooLarge {
                    path: "model.safetensors".into(),
                    size: MAX_FILE_SIZE + 1,
                },
            ),
            (
                "upper-case sha",
                with(|d| {
                    let s = d["files"][0]["sha256"].as_str().unwrap().to_uppercase();
                    d["files"][0]["sha256"] = s.into();
                }),
                ManifestError::BadSha256 {
                    path: "model.safetensors".into(),
                },
            ),
            (
                "crc as hex",
                with(|d| d["files"][0]["crc64nvme"] = "ae8b14860a799888".into()),
                ManifestError::BadCrc64 {
                    path: "model.safetensors".into(),
                },
            ),
            (
                "unknown version",
                with(|d| d["format_version"] = 2.into()),
                ManifestError::UnsupportedVersion { found: 2 },
            ),
            (
                "bad namespace",
                with(|d| d["namespace"] = "../algo-2".into()),
                ManifestError::BadNamespace {
                    namespace: "../algo-2".into(),
                    problem: PathProblem::BadNamespace,
                },
            ),
        ];
        for (what, bytes, want) in cases {
            assert_eq!(Manifest::parse(&bytes), Err(want), "{what}");
        }
    }

    #[test]
    fn unknown_version_wins_over_unknown_shape() {
        let future = br#"{"format_version": 7, "chunks": [{"id": 1}]}"#;
        assert_eq!(
            Manifest::parse(future),
            Err(ManifestError::UnsupportedVersion { found: 7 })
        );
    }

    #[test]
    fn shape_errors_are_json_errors() {
        for bytes in [
            &b""[..],
            b"[]",
            b"{\"format_version\": 1}",
            b"{\"format_version\": -1}",
            b"{\"format_version\": \"1\"}",
        ] {
            assert!(
                matches!(Manifest::parse(bytes), Err(ManifestError::Json { .. })),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        let negative = with(|d| d["files"][0]["size"] = (-1).into());
        assert!(matches!(
            Manifest::parse(&negative),
            Err(ManifestError::Json { .. })
        ));
        let unknown_field = with(|d| d["files"][0]["mode"] = 0o644.into());
        assert!(matches!(
            Manifest::parse(&unknown_field),
            Err(ManifestError::Json { .. })
        ));
    }

    #[test]
    fn size_and_count_limits() {
        let big = vec![b' '; MAX_MANIFEST_BYTES + 1];
        assert_eq!(
            Manifest::parse(&big),
            Err(ManifestError::TooLarge {
                size: MAX_MANIFEST_BYTES + 1
            })
        );
        let mut m = Manifest::parse(VALID.as_bytes()).unwrap();
        let template = m.files[0].clone();
        m.files = (0..=MAX_FILES)
            .map(|i| FileEntry {
                path: format!("f{i}"),
                ..template.clone()
            })
            .collect();
        assert_eq!(
            m.to_json_bytes(),
            Err(ManifestError::TooManyFiles {
                count: MAX_FILES + 1
            })
        );
    }

    #[test]
    fn hostile_paths_are_excerpted_in_errors() {
        let long = format!("/{}", "a".repeat(5000));
        let bytes = with(|d| d["files"][0]["path"] = long.into());
        let err = Manifest::parse(&bytes).unwrap_err();
        assert!(err.to_string().len() < 300, "{err}");
    }
}
