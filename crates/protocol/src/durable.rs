//! Filesystem steps whose order is the crash-safety argument: directory fsync and
//! manifest-first removal.
//!
//! Owns nothing but these two primitives, shared by the writer and the retention executor, so
//! the ordering rules live in one place.

use std::fs::{self, File};
use std::io;
use std::path::Path;

use crate::layout::MANIFEST_FILE;

/// Makes `dir`'s entries (creations, renames, removals) durable. A rename is only crash-safe
/// once the directory holding it has been synced.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes a step directory so that no crash can leave a half-deleted directory that still
/// looks valid: the manifest goes first (and that removal is made durable), then the rest.
/// Links inside are removed, never followed. Removing a directory that is already gone is
/// not an error.
pub(crate) fn remove_checkpoint_dir(dir: &Path) -> io::Result<()> {
    match fs::remove_file(dir.join(MANIFEST_FILE)) {
        Ok(()) => sync_dir(dir)?,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    match fs::remove_dir_all(dir) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
