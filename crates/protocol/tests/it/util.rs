//! Helpers: a fixture checkpoint tree in a temporary directory, and quick ways to make,
//! damage and inspect checkpoints.

use std::fs;
use std::path::{Path, PathBuf};

use spotcheck_protocol::{CheckpointWriter, Reason, Report, Status, ValidCheckpoint};
use tempfile::TempDir;

/// Name of the fixture checkpoint (written by `tests/fixtures/make_fixture.py`).
pub const FIXTURE: &str = "algo-1/step-000000001200";

/// A temporary checkpoint root holding a copy of `tests/fixtures/checkpoints`.
pub fn fixture_root() -> TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/checkpoints");
    copy_tree(&src, tmp.path());
    tmp
}

pub fn copy_tree(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for entry in fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &to);
        } else {
            fs::copy(entry.path(), &to).unwrap();
        }
    }
}

/// Path of `file` inside checkpoint `name` under `root`.
pub fn path_in(root: &Path, name: &str, file: &str) -> PathBuf {
    root.join(name).join(file)
}

/// Deterministic, incompressible-looking bytes.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Writes and commits a small checkpoint shaped like the trainer's.
pub fn write_checkpoint(root: &Path, namespace: &str, step: u64) -> ValidCheckpoint {
    let mut pending = CheckpointWriter::begin(root, namespace, step).unwrap();
    pending
        .write_bytes("model.safetensors", &pseudo_random(4096, step))
        .unwrap();
    pending
        .write_bytes("optimizer.safetensors", &pseudo_random(8192, step + 1))
        .unwrap();
    pending
        .write_bytes(
            "trainer_state.json",
            format!("{{\"step\": {step}}}\n").as_bytes(),
        )
        .unwrap();
    pending
        .commit(
            1_760_000_000_000 + step,
            Some(serde_json::json!({ "epoch": step / 100 })),
        )
        .unwrap()
}

/// Status and reason of checkpoint `name` in `report`; panics if it is not listed.
pub fn status_of<'a>(report: &'a Report, name: &str) -> (Status, Option<&'a Reason>) {
    let line = report
        .checkpoints
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("{name} not in report {report:#?}"));
    (line.status, line.reason.as_ref())
}

/// Flips one bit in the middle of a file, keeping its size.
pub fn flip_byte(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(path, bytes).unwrap();
}

/// Every file below `dir`, relative, sorted.
pub fn files_below(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                walk(base, &entry.path(), out);
            } else {
                let rel = entry.path().strip_prefix(base).unwrap().to_path_buf();
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
