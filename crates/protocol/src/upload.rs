//! What an uploader has shipped to S3: SageMaker's `<file>.sagemaker-uploaded` markers.
//!
//! SageMaker's checkpoint sync leaves `<file>.sagemaker-uploaded` beside each file it has
//! uploaded (and `.sagemaker-uploading` while it works); the local service's sync does the same,
//! and so does the trainer's own S3 mirror, so that one rule decides everywhere whether a
//! checkpoint would survive the instance: it is **fully uploaded** when every file its
//! manifest lists, and `manifest.json` itself, carries the marker. Retention
//! ([`crate::Uploads::Synced`]) reads this; nothing here deletes anything.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::layout::{Location, MANIFEST_FILE, UPLOADED_SUFFIX, UPLOADING_SUFFIX};
use crate::manifest::{Manifest, MAX_MANIFEST_BYTES};
use crate::scan::{dir_of, CheckpointReport};
use crate::verify::Status;

/// The marker path for `file`.
fn marker(file: &Path) -> PathBuf {
    let mut name = OsString::from(file.as_os_str());
    name.push(UPLOADED_SUFFIX);
    PathBuf::from(name)
}

/// The files whose markers make `manifest`'s checkpoint fully uploaded, below `dir`.
fn shipped_files<'a>(dir: &'a Path, manifest: &'a Manifest) -> impl Iterator<Item = PathBuf> + 'a {
    manifest
        .files
        .iter()
        .map(move |f| {
            let mut p = dir.to_path_buf();
            p.extend(f.path.split('/'));
            p
        })
        .chain(std::iter::once(dir.join(MANIFEST_FILE)))
}

/// Whether every file of the checkpoint in `dir` (described by `manifest`) and its manifest
/// carry the uploaded marker.
pub fn is_fully_uploaded(dir: &Path, manifest: &Manifest) -> bool {
    shipped_files(dir, manifest).all(|f| marker(&f).is_file())
}

/// Marks every file of a checkpoint as uploaded, manifest last: for an uploader of our own
/// (the trainer's S3 mirror) after the manifest object landed in S3.
pub fn mark_uploaded(dir: &Path, manifest: &Manifest) -> io::Result<()> {
    for file in shipped_files(dir, manifest) {
        fs::write(marker(&file), b"")?;
    }
    Ok(())
}

/// Whether the checkpoint in `dir` is fully uploaded, judged by its own manifest (false when
/// the manifest cannot be read): for writers that watch their checkpoints reach S3.
pub fn dir_is_fully_uploaded(dir: &Path) -> bool {
    read_manifest(dir).is_some_and(|m| is_fully_uploaded(dir, &m))
}

/// Whether any file in `dir` carries an uploading or uploaded marker: the uploader has reached
/// this checkpoint (SageMaker ships files in no documented order, so a backlog can show
/// markers long before any one checkpoint is complete).
pub fn dir_has_upload_markers(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.ends_with(UPLOADED_SUFFIX) || name.ends_with(UPLOADING_SUFFIX)
        })
    })
}

/// The valid checkpoints among `checkpoints` (found under `root`) that are fully uploaded.
/// A manifest that cannot be read counts as not uploaded.
pub fn uploaded_checkpoints(root: &Path, checkpoints: &[CheckpointReport]) -> BTreeSet<String> {
    checkpoints
        .iter()
        .filter(|c| c.status == Status::Valid)
        .filter(|c| {
            let location = Location {
                namespace: c.namespace.clone(),
                step: c.step,
            };
            dir_is_fully_uploaded(&dir_of(root, &location))
        })
        .map(|c| c.name.clone())
        .collect()
}

fn read_manifest(dir: &Path) -> Option<Manifest> {
    use std::io::Read;
    let mut bytes = Vec::new();
    fs::File::open(dir.join(MANIFEST_FILE))
        .and_then(|f| {
            f.take(MAX_MANIFEST_BYTES as u64 + 1)
                .read_to_end(&mut bytes)
        })
        .ok()?;
    Manifest::parse(&bytes).ok()
}
