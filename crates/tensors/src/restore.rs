//! Finding the checkpoint to resume from and reading it, every byte checked.
//!
//! Owns the reading side for the Python package: [`candidates`] lists a namespace's
//! checkpoints newest first with the protocol crate's verdict (from a sizes-only scan: cheap),
//! and [`OpenCheckpoint::read_into`] reads a listed file into memory the caller provides,
//! checking its size and CRC-64/NVME (and SHA-256 with [`Verify::Full`]) on the very bytes
//! returned. A checkpoint that fails any check is refused with the protocol's [`Reason`], and
//! the caller moves on to the next candidate. Links are never followed.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use spotcheck_protocol::{
    check_namespace, crc64nvme_from_base64, crc64nvme_to_base64, step_dir_name, validate_root_with,
    ChecksumKind, FileEntry, Manifest, PathProblem, Reason, Status, Verification, MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
};

/// Read size: large enough for sequential throughput, small enough to overlap hashing.
const CHUNK: usize = 8 << 20;

/// How much of each byte a read checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Size and CRC-64/NVME: catches truncation, torn writes and flipped bits at memory speed.
    Crc,
    /// Size, CRC-64/NVME and SHA-256 (hashed on a second thread while reading).
    Full,
}

/// One checkpoint of the namespace, as the sizes-only scan judged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Relative name, e.g. `algo-1/step-000000000100`.
    pub name: String,
    /// Its step.
    pub step: u64,
    /// The scan's verdict (a valid one is re-checked byte by byte when read).
    pub status: Status,
    /// Why it is not valid.
    pub reason: Option<String>,
}

/// Why a checkpoint could not be listed, opened or read.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The namespace is not a legal namespace directory name.
    #[error("namespace {namespace:?} {problem}")]
    BadNamespace {
        /// The namespace given.
        namespace: String,
        /// What is wrong with it.
        problem: PathProblem,
    },
    /// Listing or reading failed at the operating-system level.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The checkpoint is not (or no longer) valid.
    #[error("{checkpoint}: {reason}")]
    Invalid {
        /// Its name.
        checkpoint: String,
        /// The protocol's reason.
        reason: Reason,
    },
    /// A file the manifest does not list was asked for.
    #[error("{checkpoint}: {path:?} is not listed in its manifest")]
    NotListed {
        /// The checkpoint.
        checkpoint: String,
        /// The path asked for.
        path: String,
    },
    /// The destination's size differs from the listed file's.
    #[error("{checkpoint}: {path:?} is {size} bytes, the buffer {buffer}")]
    BufferSize {
        /// The checkpoint.
        checkpoint: String,
        /// The file.
        path: String,
        /// Its listed size.
        size: u64,
        /// The buffer's length.
        buffer: usize,
    },
}

/// The checkpoints of `namespace` under `root`, newest first. A missing root is a first start:
/// no candidates.
pub fn candidates(root: &Path, namespace: &str) -> Result<Vec<Candidate>, RestoreError> {
    check_namespace(namespace).map_err(|problem| RestoreError::BadNamespace {
        namespace: namespace.to_owned(),
        problem,
    })?;
    if !root.join(namespace).is_dir() {
        return Ok(Vec::new());
    }
    let report = validate_root_with(root, Verification::SizesOnly).map_err(|e| match e {
        spotcheck_protocol::ReadError::Io { path, source } => RestoreError::Io { path, source },
        other => RestoreError::Io {
            path: root.to_path_buf(),
            source: io::Error::other(other.to_string()),
        },
    })?;
    let mut found: Vec<Candidate> = report
        .checkpoints
        .into_iter()
        .filter(|c| c.namespace.as_deref() == Some(namespace))
        .map(|c| Candidate {
            name: c.name,
            step: c.step,
            status: c.status,
            reason: c.reason.map(|r| r.to_string()),
        })
        .collect();
    found.sort_by_key(|b| std::cmp::Reverse(b.step));
    Ok(found)
}

/// A checkpoint whose manifest has been read and checked against its location.
#[derive(Debug, Clone)]
pub struct OpenCheckpoint {
    name: String,
    dir: PathBuf,
    manifest: Manifest,
}

impl OpenCheckpoint {
    /// Opens step `step` of `namespace` under `root`: reads its manifest (at most 1 MiB),
    /// parses it and checks it describes this very directory.
    pub fn open(root: &Path, namespace: &str, step: u64) -> Result<OpenCheckpoint, RestoreError> {
        check_namespace(namespace).map_err(|problem| RestoreError::BadNamespace {
            namespace: namespace.to_owned(),
            problem,
        })?;
        let name = format!("{namespace}/{}", step_dir_name(step));
        let dir = root.join(namespace).join(step_dir_name(step));
        let invalid = |reason| RestoreError::Invalid {
            checkpoint: name.clone(),
            reason,
        };
        let path = dir.join(MANIFEST_FILE);
        let mut bytes = Vec::new();
        match open_regular(&path, MANIFEST_FILE) {
            Ok(Some(file)) => file
                .take(MAX_MANIFEST_BYTES as u64 + 1)
                .read_to_end(&mut bytes)
                .map_err(|source| RestoreError::Io {
                    path: path.clone(),
                    source,
                })?,
            Ok(None) => return Err(invalid(Reason::NoManifest)),
            Err(reason) => return Err(invalid(reason)),
        };
        let manifest = Manifest::parse(&bytes).map_err(|e| invalid(Reason::BadManifest(e)))?;
        if manifest.step != step || manifest.namespace != namespace {
            return Err(invalid(Reason::WrongLocation {
                expected: name.clone(),
                found: format!("{}/{}", manifest.namespace, step_dir_name(manifest.step)),
            }));
        }
        Ok(OpenCheckpoint {
            name,
            dir,
            manifest,
        })
    }

    /// Its relative name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The files it lists, in write order.
    pub fn files(&self) -> &[FileEntry] {
        &self.manifest.files
    }

    /// Reads listed file `path` into `dst` (exactly its listed size) and checks it.
    pub fn read_into(
        &self,
        path: &str,
        dst: &mut [u8],
        verify: Verify,
    ) -> Result<(), RestoreError> {
        let entry = self
            .manifest
            .file(path)
            .ok_or_else(|| RestoreError::NotListed {
                checkpoint: self.name.clone(),
                path: path.to_owned(),
            })?;
        if dst.len() as u64 != entry.size {
            return Err(RestoreError::BufferSize {
                checkpoint: self.name.clone(),
                path: path.to_owned(),
                size: entry.size,
                buffer: dst.len(),
            });
        }
        let invalid = |reason| RestoreError::Invalid {
            checkpoint: self.name.clone(),
            reason,
        };
        let full = join_checked(&self.dir, &entry.path).map_err(invalid)?;
        let mut file = match open_regular(&full, &entry.path) {
            Ok(Some(file)) => file,
            Ok(None) => {
                return Err(invalid(Reason::MissingFile {
                    path: entry.path.clone(),
                }))
            }
            Err(reason) => return Err(invalid(reason)),
        };
        let io_err = |source| RestoreError::Io {
            path: full.clone(),
            source,
        };
        let found = file.metadata().map_err(io_err)?.len();
        if found != entry.size {
            return Err(invalid(Reason::SizeMismatch {
                path: entry.path.clone(),
                expected: entry.size,
                found,
            }));
        }
        let (crc, sha) = read_hashed(&mut file, dst, verify).map_err(|e| match e {
            ReadFailure::Io(source) => io_err(source),
            ReadFailure::Short(got) => invalid(Reason::SizeMismatch {
                path: entry.path.clone(),
                expected: entry.size,
                found: got,
            }),
        })?;
        if crc64nvme_from_base64(&entry.crc64nvme) != Some(crc) {
            return Err(invalid(Reason::ChecksumMismatch {
                path: entry.path.clone(),
                kind: ChecksumKind::Crc64Nvme,
                expected: entry.crc64nvme.clone(),
                found: crc64nvme_to_base64(crc),
            }));
        }
        if let Some(sha) = sha {
            if sha != entry.sha256 {
                return Err(invalid(Reason::ChecksumMismatch {
                    path: entry.path.clone(),
                    kind: ChecksumKind::Sha256,
                    expected: entry.sha256.clone(),
                    found: sha,
                }));
            }
        }
        Ok(())
    }
}

enum ReadFailure {
    Io(io::Error),
    /// The file ended early or grew: its real length.
    Short(u64),
}

/// Fills `dst` from `file` in chunks, folding each into the CRC; with [`Verify::Full`] a
/// second thread hashes the filled chunks while the next ones are read. The file must end
/// exactly at `dst.len()`.
fn read_hashed(
    file: &mut File,
    dst: &mut [u8],
    verify: Verify,
) -> Result<(u64, Option<String>), ReadFailure> {
    let mut crc = crc64fast_nvme::Digest::new();
    let total = dst.len() as u64;
    let outcome = std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<&[u8]>(4);
        let hasher = (verify == Verify::Full).then(|| {
            scope.spawn(move || {
                let mut sha = Sha256::new();
                for chunk in rx {
                    sha.update(chunk);
                }
                hex::encode(sha.finalize())
            })
        });
        let mut tx = hasher.as_ref().map(|_| tx);
        let mut filled = 0u64;
        for chunk in dst.chunks_mut(CHUNK) {
            let mut at = 0;
            while at < chunk.len() {
                match file.read(&mut chunk[at..]) {
                    Ok(0) => return Err(ReadFailure::Short(filled + at as u64)),
                    Ok(n) => at += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(ReadFailure::Io(e)),
                }
            }
            filled += chunk.len() as u64;
            let chunk: &[u8] = chunk;
            crc.write(chunk);
            if let Some(sender) = &tx {
                if sender.send(chunk).is_err() {
                    tx = None;
                }
            }
        }
        drop(tx);
        let mut probe = [0u8; 1];
        loop {
            match file.read(&mut probe) {
                Ok(0) => break,
                Ok(_) => return Err(ReadFailure::Short(total + 1)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadFailure::Io(e)),
            }
        }
        let sha = match hasher {
            Some(h) => Some(
                h.join()
                    .map_err(|_| ReadFailure::Io(io::Error::other("SHA-256 thread panicked")))?,
            ),
            None => None,
        };
        Ok(sha)
    })?;
    Ok((crc.sum64(), outcome))
}

/// `dir` joined with a manifest path, every intermediate component a real directory (no
/// links followed). Manifest paths were checked by `Manifest::parse` (no `..`, not absolute).
fn join_checked(dir: &Path, rel: &str) -> Result<PathBuf, Reason> {
    let mut path = dir.to_path_buf();
    let mut parts = rel.split('/').peekable();
    while let Some(part) = parts.next() {
        path.push(part);
        if parts.peek().is_some() {
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(Reason::PathEscapes {
                        path: rel.to_owned(),
                    })
                }
                Ok(meta) if meta.is_dir() => {}
                Ok(_) | Err(_) => {
                    return Err(Reason::MissingFile {
                        path: rel.to_owned(),
                    })
                }
            }
        }
    }
    Ok(path)
}

/// Opens a regular file without following a link; `Ok(None)` when absent.
fn open_regular(path: &Path, shown: &str) -> Result<Option<File>, Reason> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Reason::Unreadable {
            path: shown.to_owned(),
            error: e.to_string(),
        }),
        Ok(meta) if meta.file_type().is_symlink() => Err(Reason::PathEscapes {
            path: shown.to_owned(),
        }),
        Ok(meta) if !meta.is_file() => Err(Reason::NotAFile {
            path: shown.to_owned(),
        }),
        Ok(_) => match File::open(path) {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Reason::Unreadable {
                path: shown.to_owned(),
                error: e.to_string(),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::HostRegion;
    use crate::save::{write_job, FileSource, SaveJob};

    fn save(root: &Path, step: u64, data: &[u8]) {
        write_job(&SaveJob {
            root: root.to_path_buf(),
            namespace: "algo-1".into(),
            step,
            files: vec![
                (
                    "model.safetensors".into(),
                    FileSource::Tensors {
                        header: b"\x00\x00\x00\x00\x00\x00\x00\x00".to_vec(),
                        // SAFETY: `data` outlives the synchronous write.
                        data: unsafe { HostRegion::new(data.as_ptr(), data.len()) }.unwrap(),
                    },
                ),
                (
                    "state.json".into(),
                    FileSource::Bytes(b"{\"a\":1}".to_vec()),
                ),
            ],
            created_at_ms: 0,
            meta: None,
            keep: 10,
            synced: false,
            pause_before_manifest: None,
            gate_before_manifest: None,
        })
        .unwrap();
    }

    fn read_all(open: &OpenCheckpoint, verify: Verify) -> Result<Vec<Vec<u8>>, RestoreError> {
        open.files()
            .iter()
            .map(|f| {
                let mut buf = vec![0u8; f.size as usize];
                open.read_into(&f.path, &mut buf, verify).map(|()| buf)
            })
            .collect()
    }

    #[test]
    fn a_missing_root_has_no_candidates() {
        let dir = tempfile::tempdir().unwrap();
        assert!(candidates(&dir.path().join("nope"), "algo-1")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn reads_back_what_was_written_with_either_verification() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..20_000_000u32).map(|i| (i % 251) as u8).collect();
        save(dir.path(), 3, &data);
        let found = candidates(dir.path(), "algo-1").unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].status, Status::Valid);
        let open = OpenCheckpoint::open(dir.path(), "algo-1", 3).unwrap();
        for verify in [Verify::Crc, Verify::Full] {
            let files = read_all(&open, verify).unwrap();
            assert_eq!(&files[0][8..], &data[..]);
            assert_eq!(files[1], b"{\"a\":1}");
        }
    }

    #[test]
    fn newest_first_with_the_reason_each_broken_one_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        for step in [1, 2, 3] {
            save(dir.path(), step, &[step as u8; 64]);
        }
        let ns = dir.path().join("algo-1");
        fs::remove_file(ns.join("step-000000000003/manifest.json")).unwrap();
        let model2 = ns.join("step-000000000002/model.safetensors");
        let len = fs::metadata(&model2).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(&model2)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        let found = candidates(dir.path(), "algo-1").unwrap();
        let summary: Vec<_> = found.iter().map(|c| (c.step, c.status)).collect();
        assert_eq!(
            summary,
            [
                (3, Status::Incomplete),
                (2, Status::Corrupt),
                (1, Status::Valid)
            ]
        );
        assert_eq!(found[0].reason.as_deref(), Some("no manifest"));
        assert!(found[1].reason.as_deref().unwrap().contains("bytes"));
    }

    #[test]
    fn a_flipped_byte_is_caught_by_the_crc_and_by_sha256() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), 1, &[7u8; 4096]);
        let model = dir
            .path()
            .join("algo-1/step-000000000001/model.safetensors");
        let mut bytes = fs::read(&model).unwrap();
        bytes[100] ^= 1;
        fs::write(&model, bytes).unwrap();
        let open = OpenCheckpoint::open(dir.path(), "algo-1", 1).unwrap();
        for verify in [Verify::Crc, Verify::Full] {
            let err = read_all(&open, verify).unwrap_err().to_string();
            assert!(err.contains("crc64nvme"), "{err}");
        }
    }

    #[test]
    fn a_moved_checkpoint_or_a_linked_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), 1, &[7u8; 16]);
        let ns = dir.path().join("algo-1");
        fs::rename(ns.join("step-000000000001"), ns.join("step-000000000009")).unwrap();
        let err = OpenCheckpoint::open(dir.path(), "algo-1", 9)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sits in"), "{err}");

        save(dir.path(), 2, &[7u8; 16]);
        let step = ns.join("step-000000000002");
        fs::rename(step.join("state.json"), dir.path().join("elsewhere.json")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere.json"), step.join("state.json"))
            .unwrap();
        let open = OpenCheckpoint::open(dir.path(), "algo-1", 2).unwrap();
        let err = read_all(&open, Verify::Crc).unwrap_err().to_string();
        assert!(err.contains("escapes"), "{err}");
    }

    #[test]
    fn a_wrong_sized_buffer_or_unlisted_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), 1, &[7u8; 16]);
        let open = OpenCheckpoint::open(dir.path(), "algo-1", 1).unwrap();
        let mut small = [0u8; 3];
        assert!(matches!(
            open.read_into("state.json", &mut small, Verify::Crc),
            Err(RestoreError::BufferSize { .. })
        ));
        assert!(matches!(
            open.read_into("other.json", &mut small, Verify::Crc),
            Err(RestoreError::NotListed { .. })
        ));
    }
}
