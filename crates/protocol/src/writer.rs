//! Writing a checkpoint atomically and crash-safely.
//!
//! Owns the write protocol: every file is streamed to `<name>.sagemaker-ignore` (skipped by
//! SageMaker's uploader) while SHA-256 and CRC-64/NVME are computed on a second thread, fsynced,
//! then renamed into place; the manifest is written the same way, last, after the directory
//! holding the data renames has been synced. A crash at any point leaves either no manifest
//! (an incomplete checkpoint, cleaned up by retention or reused by the next `begin`) or a
//! complete one. It never overwrites a valid checkpoint and never reads a clock.

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread;

use crate::digest::{hashed, FileDigest, HashFeed, CHUNK_BYTES};
use crate::durable::{remove_checkpoint_dir, sync_dir};
use crate::layout::{
    check_namespace, check_rel_path, Location, PathProblem, MANIFEST_FILE, TEMP_SUFFIX,
};
use crate::manifest::{FileEntry, Manifest, ManifestError, FORMAT_VERSION, MAX_FILE_SIZE};
use crate::scan::{dir_of, verify_checkpoint, ValidCheckpoint, Verification};

/// What streams one file's bytes, for [`PendingCheckpoint::write_files`].
pub type FileBody<'a> = Box<dyn FnOnce(&mut dyn Write) -> io::Result<()> + Send + 'a>;

/// A freshly committed checkpoint: valid by construction.
pub type CommittedCheckpoint = ValidCheckpoint;

/// Entry point for writing checkpoints. Holds no state: see [`CheckpointWriter::begin`].
#[derive(Debug)]
pub struct CheckpointWriter {
    _no_state: (),
}

impl CheckpointWriter {
    /// Starts checkpoint `step` of `namespace` under `root` (creating directories as needed).
    ///
    /// Refuses with [`WriteError::AlreadyCommitted`] when that step already holds a checkpoint
    /// that passes full verification: good data is never overwritten. A leftover incomplete or
    /// corrupt directory of the same step (a crash mid-write) is removed, manifest first, and
    /// reused. One writer per namespace at a time.
    pub fn begin(
        root: impl AsRef<Path>,
        namespace: &str,
        step: u64,
    ) -> Result<PendingCheckpoint, WriteError> {
        let root = root.as_ref();
        check_namespace(namespace).map_err(|problem| WriteError::BadNamespace {
            namespace: namespace.to_owned(),
            problem,
        })?;
        let location = Location {
            namespace: Some(namespace.to_owned()),
            step,
        };
        let ns_dir = root.join(namespace);
        fs::create_dir_all(&ns_dir).map_err(io_error("create", &ns_dir))?;
        sync_dir(root).map_err(io_error("fsync", root))?;

        let dir = dir_of(root, &location);
        match fs::symlink_metadata(&dir) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_error("inspect", &dir)(err)),
            Ok(meta) if meta.is_dir() => {
                let (verdict, _) = verify_checkpoint(&dir, &location, Verification::Full);
                if verdict.is_valid() {
                    return Err(WriteError::AlreadyCommitted {
                        name: location.name(),
                    });
                }
                remove_checkpoint_dir(&dir).map_err(io_error("remove leftover", &dir))?;
            }
            Ok(_) => return Err(WriteError::NotADirectory { path: dir }),
        }
        fs::create_dir(&dir).map_err(io_error("create", &dir))?;
        sync_dir(&ns_dir).map_err(io_error("fsync", &ns_dir))?;
        Ok(PendingCheckpoint {
            location,
            dir,
            files: Vec::new(),
            names: HashSet::new(),
            subdirs: BTreeSet::new(),
        })
    }
}

/// A checkpoint being written: files go in one by one, then [`commit`](Self::commit) writes
/// the manifest. Dropping it without committing leaves an incomplete directory, which no
/// reader will use.
#[derive(Debug)]
pub struct PendingCheckpoint {
    location: Location,
    dir: PathBuf,
    files: Vec<FileEntry>,
    names: HashSet<String>,
    /// Subdirectories created for nested paths; synced before the manifest is written.
    subdirs: BTreeSet<PathBuf>,
}

impl PendingCheckpoint {
    /// The checkpoint's relative name, e.g. `algo-1/step-000000001200`.
    pub fn name(&self) -> String {
        self.location.name()
    }

    /// The step directory being written.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The step being written.
    pub fn step(&self) -> u64 {
        self.location.step
    }

    /// Files written so far, in order.
    pub fn files(&self) -> &[FileEntry] {
        &self.files
    }

    /// Writes one file by letting `body` stream into it. Bytes are buffered into 8 MiB
    /// chunks, written, and hashed on another thread meanwhile; the file is fsynced and renamed
    /// into place only if `body` succeeds. `name` is a '/'-separated relative path.
    pub fn write_file<F>(&mut self, name: &str, body: F) -> Result<&FileEntry, WriteError>
    where
        F: FnOnce(&mut dyn Write) -> io::Result<()>,
    {
        let target = self.target(name, &[])?;
        let written = write_synced(&with_suffix(&target, TEMP_SUFFIX), body);
        self.place(name, &target, written)?;
        Ok(&self.files[self.files.len() - 1])
    }

    /// Writes several files at once, each as [`write_file`](Self::write_file) does, on one
    /// thread per file: SHA-256 runs at one core's speed per stream, so a large state split
    /// over files is hashed that many times faster. Entries are recorded in the order given;
    /// on an error no file of this call is recorded or left on disk.
    pub fn write_files(&mut self, files: Vec<(&str, FileBody<'_>)>) -> Result<(), WriteError> {
        let mut targets = Vec::with_capacity(files.len());
        for (i, (name, _)) in files.iter().enumerate() {
            let earlier: Vec<&str> = files[..i].iter().map(|(n, _)| *n).collect();
            targets.push(self.target(name, &earlier)?);
        }
        let names: Vec<String> = files.iter().map(|(n, _)| n.to_string()).collect();
        let results: Vec<Result<FileDigest, WriteError>> = thread::scope(|scope| {
            let running: Vec<_> = files
                .into_iter()
                .zip(&targets)
                .map(|((_, body), target)| {
                    let temp = with_suffix(target, TEMP_SUFFIX);
                    scope.spawn(move || write_synced(&temp, body))
                })
                .collect();
            running
                .into_iter()
                .zip(&targets)
                .map(|(h, target)| h.join().unwrap_or_else(|_| Err(writer_panicked(target))))
                .collect()
        });
        let recorded = self.files.len();
        let mut failure = None;
        for ((name, target), written) in names.iter().zip(&targets).zip(results) {
            if failure.is_some() {
                let _ = fs::remove_file(with_suffix(target, TEMP_SUFFIX));
            } else if let Err(e) = self.place(name, target, written) {
                failure = Some(e);
            }
        }
        match failure {
            None => Ok(()),
            Some(e) => {
                // As with a failed `write_file`: nothing of this call stays behind.
                for entry in self.files.drain(recorded..) {
                    self.names.remove(&entry.path);
                    let _ = fs::remove_file(self.dir.join(&entry.path));
                }
                Err(e)
            }
        }
    }

    /// Checks `name` (also against `pending` names of the same call) and returns its path,
    /// creating the subdirectories it needs.
    fn target(&mut self, name: &str, pending: &[&str]) -> Result<PathBuf, WriteError> {
        check_rel_path(name).map_err(|problem| WriteError::BadName {
            name: name.to_owned(),
            problem,
        })?;
        if self.names.contains(name) || pending.contains(&name) {
            return Err(WriteError::DuplicateName {
                name: name.to_owned(),
            });
        }
        self.nested_target(name)
    }

    /// Renames a written temporary file into place and records it; removes it on failure.
    fn place(
        &mut self,
        name: &str,
        target: &Path,
        written: Result<FileDigest, WriteError>,
    ) -> Result<(), WriteError> {
        let temp = with_suffix(target, TEMP_SUFFIX);
        let digest = match written {
            Ok(digest) if digest.size <= MAX_FILE_SIZE => digest,
            outcome => {
                // The temporary file is ignored by every reader and removed with its directory,
                // so failing to delete it here must not mask the error being reported.
                let _ = fs::remove_file(&temp);
                return Err(match outcome {
                    Ok(digest) => WriteError::FileTooLarge {
                        name: name.to_owned(),
                        size: digest.size,
                    },
                    Err(err) => err,
                });
            }
        };
        fs::rename(&temp, target).map_err(io_error("rename", &temp))?;
        self.names.insert(name.to_owned());
        self.files.push(FileEntry {
            path: name.to_owned(),
            size: digest.size,
            sha256: digest.sha256_hex(),
            crc64nvme: digest.crc64nvme_base64(),
        });
        Ok(())
    }

    /// Writes one file from memory (small state such as `trainer_state.json`).
    pub fn write_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<&FileEntry, WriteError> {
        self.write_file(name, |w| w.write_all(bytes))
    }

    /// Writes the manifest, making the checkpoint exist. Order: sync the directories holding
    /// the data renames, write `manifest.json.sagemaker-ignore`, fsync it, rename it to
    /// `manifest.json`, sync the step directory. `created_at_ms` comes from the caller's clock;
    /// `meta` is stored verbatim.
    pub fn commit(
        self,
        created_at_ms: u64,
        meta: Option<serde_json::Value>,
    ) -> Result<CommittedCheckpoint, WriteError> {
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            step: self.location.step,
            namespace: self.location.namespace.clone().unwrap_or_default(),
            created_at_ms,
            meta,
            files: self.files,
        };
        let bytes = manifest.to_json_bytes()?;
        // Deepest first, so each directory's own entry is durable in its parent.
        for subdir in self.subdirs.iter().rev() {
            sync_dir(subdir).map_err(io_error("fsync", subdir))?;
        }
        sync_dir(&self.dir).map_err(io_error("fsync", &self.dir))?;

        let target = self.dir.join(MANIFEST_FILE);
        let temp = with_suffix(&target, TEMP_SUFFIX);
        File::create(&temp)
            .and_then(|mut file| {
                file.write_all(&bytes)?;
                file.sync_all()
            })
            .map_err(io_error("write", &temp))?;
        fs::rename(&temp, &target).map_err(io_error("rename", &temp))?;
        sync_dir(&self.dir).map_err(io_error("fsync", &self.dir))?;
        Ok(ValidCheckpoint {
            name: self.location.name(),
            dir: self.dir,
            manifest,
        })
    }

    /// Gives up on this checkpoint and removes its directory.
    pub fn abort(self) -> Result<(), WriteError> {
        remove_checkpoint_dir(&self.dir).map_err(io_error("remove", &self.dir))
    }

    /// The final path of `name`, creating (and remembering) parent directories of nested
    /// names. Components were validated, so nothing here can leave the step directory.
    fn nested_target(&mut self, name: &str) -> Result<PathBuf, WriteError> {
        let mut path = self.dir.clone();
        let mut components = name.split('/').peekable();
        while let Some(component) = components.next() {
            path.push(component);
            if components.peek().is_some() && !self.subdirs.contains(&path) {
                match fs::create_dir(&path) {
                    Err(err) if err.kind() != io::ErrorKind::AlreadyExists => {
                        return Err(io_error("create", &path)(err))
                    }
                    _ => {}
                }
                self.subdirs.insert(path.clone());
            }
        }
        Ok(path)
    }
}

/// Why a checkpoint could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The namespace is not a legal namespace directory name.
    #[error("namespace {namespace:?} {problem}")]
    BadNamespace {
        /// The namespace given.
        namespace: String,
        /// What is wrong with it.
        problem: PathProblem,
    },
    /// A file name breaks the path rules (absolute, `..`, reserved, …).
    #[error("file name {name:?} {problem}")]
    BadName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        problem: PathProblem,
    },
    /// The same file written twice into one checkpoint.
    #[error("file {name:?} was already written to this checkpoint")]
    DuplicateName {
        /// The name given.
        name: String,
    },
    /// The step already holds a valid checkpoint; it is left untouched.
    #[error("{name} already holds a valid checkpoint; refusing to overwrite it")]
    AlreadyCommitted {
        /// The checkpoint's name.
        name: String,
    },
    /// Something other than a directory occupies the step directory's path.
    #[error("{} exists and is not a directory", path.display())]
    NotADirectory {
        /// The step directory's path.
        path: PathBuf,
    },
    /// A file larger than a manifest may describe.
    #[error("file {name:?} is {size} bytes, over the {MAX_FILE_SIZE}-byte limit")]
    FileTooLarge {
        /// The name given.
        name: String,
        /// Bytes written.
        size: u64,
    },
    /// The manifest would not be readable (too many files, too large).
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A filesystem operation failed, or the caller's writer returned an error.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WriteError + 'a {
    move |source| WriteError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn writer_panicked(path: &Path) -> WriteError {
    WriteError::Io {
        action: "write",
        path: path.to_path_buf(),
        source: io::Error::other("the writing thread panicked"),
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

/// Streams `body` into a new file at `path` through the hashing pipeline, then fsyncs it.
fn write_synced<F>(path: &Path, body: F) -> Result<FileDigest, WriteError>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_error("create", path))?;
    let ((), digest) = hashed(|feed| {
        let buf = feed.buffer()?;
        let mut sink = ChunkSink {
            file: &mut file,
            feed,
            buf,
        };
        body(&mut sink)?;
        sink.push()
    })
    .map_err(io_error("write", path))?;
    file.sync_all().map_err(io_error("fsync", path))?;
    Ok(digest)
}

/// The `Write` handed to callers: fills a chunk, then writes it to the file and passes it to
/// the hashing thread.
struct ChunkSink<'a> {
    file: &'a mut File,
    feed: &'a mut HashFeed,
    buf: Vec<u8>,
}

impl ChunkSink<'_> {
    /// Writes the current chunk (if any) and hands it to the hasher.
    fn push(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.buf)?;
        let next = self.feed.buffer()?;
        let full = std::mem::replace(&mut self.buf, next);
        self.feed.submit(full)
    }
}

impl Write for ChunkSink<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK_BYTES - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK_BYTES {
            self.push()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.push()
    }
}
