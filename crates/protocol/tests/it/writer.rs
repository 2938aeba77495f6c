//! The write protocol: round trips, refusing to overwrite, reusing leftovers, failed writes.

use std::fs;
use std::io::{self, Write};

use spotcheck_protocol::{
    open_latest_valid, validate_root, CheckpointWriter, FileDigest, Manifest, PathProblem, Status,
    WriteError, MANIFEST_FILE,
};

use crate::util::{files_below, flip_byte, path_in, pseudo_random, write_checkpoint};

#[test]
fn round_trip_streamed_multi_chunk_files() {
    let root = tempfile::tempdir().unwrap();
    // Larger than two 8 MiB chunks and not a multiple of anything, written in odd pieces so
    // chunk boundaries fall inside caller writes.
    let model = pseudo_random(17 * 1024 * 1024 + 12_345, 7);
    let state = br#"{"step": 1200, "epoch": 3}"#;
    let shard = pseudo_random(1000, 9);

    let mut pending = CheckpointWriter::begin(root.path(), "algo-1", 1200).unwrap();
    assert_eq!(pending.name(), "algo-1/step-000000001200");
    pending
        .write_file("model.safetensors", |w: &mut dyn Write| {
            for piece in model.chunks(1_000_003) {
                w.write_all(piece)?;
            }
            w.flush()
        })
        .unwrap();
    pending.write_bytes("trainer_state.json", state).unwrap();
    pending
        .write_bytes("shards/rank-0/extra.bin", &shard)
        .unwrap();
    let committed = pending
        .commit(1_760_000_000_123, Some(serde_json::json!({"epoch": 3})))
        .unwrap();

    let digest = FileDigest::of(&model);
    let entry = committed.manifest.file("model.safetensors").unwrap();
    assert_eq!(entry.size, model.len() as u64);
    assert_eq!(entry.sha256, digest.sha256_hex());
    assert_eq!(entry.crc64nvme, digest.crc64nvme_base64());

    // What is on disk is exactly the data plus the manifest: no temporaries left behind.
    assert_eq!(
        files_below(&committed.dir),
        [
            "manifest.json",
            "model.safetensors",
            "shards/rank-0/extra.bin",
            "trainer_state.json"
        ]
    );
    let on_disk = Manifest::parse(&fs::read(committed.dir.join(MANIFEST_FILE)).unwrap()).unwrap();
    assert_eq!(on_disk, committed.manifest);
    assert_eq!(on_disk.created_at_ms, 1_760_000_000_123);
    assert_eq!(on_disk.meta, Some(serde_json::json!({"epoch": 3})));

    let opened = open_latest_valid(root.path(), "algo-1").unwrap().unwrap();
    assert_eq!(opened, committed);
    assert_eq!(opened.read_verified("model.safetensors").unwrap(), model);
    assert_eq!(opened.read_verified("trainer_state.json").unwrap(), state);
    assert_eq!(
        opened.read_verified("shards/rank-0/extra.bin").unwrap(),
        shard
    );
    assert_eq!(
        opened.file_path("trainer_state.json"),
        Some(
            root.path()
                .join("algo-1/step-000000001200/trainer_state.json")
        )
    );
    assert_eq!(opened.file_path("nope.bin"), None);
}

#[test]
fn begin_refuses_to_overwrite_a_valid_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let first = write_checkpoint(root.path(), "algo-1", 500);
    let before = fs::read(first.dir.join("model.safetensors")).unwrap();

    let err = CheckpointWriter::begin(root.path(), "algo-1", 500).unwrap_err();
    assert!(
        matches!(&err, WriteError::AlreadyCommitted { name } if name == "algo-1/step-000000000500"),
        "{err}"
    );
    assert_eq!(
        fs::read(first.dir.join("model.safetensors")).unwrap(),
        before
    );
    assert_eq!(
        status_line(root.path(), "algo-1/step-000000000500"),
        Status::Valid
    );
}

#[test]
fn begin_reuses_a_leftover_incomplete_directory() {
    let root = tempfile::tempdir().unwrap();
    let mut crashed = CheckpointWriter::begin(root.path(), "algo-1", 700).unwrap();
    crashed
        .write_bytes("model.safetensors", b"half a model")
        .unwrap();
    let dir = crashed.dir().to_path_buf();
    drop(crashed); // "crash": never committed
    fs::write(dir.join("optimizer.safetensors.sagemaker-ignore"), b"torn").unwrap();
    assert_eq!(
        status_line(root.path(), "algo-1/step-000000000700"),
        Status::Incomplete
    );

    let mut retry = CheckpointWriter::begin(root.path(), "algo-1", 700).unwrap();
    assert!(
        files_below(retry.dir()).is_empty(),
        "leftovers must be cleaned"
    );
    retry
        .write_bytes("model.safetensors", b"whole model")
        .unwrap();
    retry.commit(1, None).unwrap();
    assert_eq!(
        status_line(root.path(), "algo-1/step-000000000700"),
        Status::Valid
    );
}

#[test]
fn begin_replaces_a_corrupt_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let bad = write_checkpoint(root.path(), "algo-1", 800);
    flip_byte(&bad.dir.join("optimizer.safetensors"));
    let mut again = CheckpointWriter::begin(root.path(), "algo-1", 800).unwrap();
    again
        .write_bytes("model.safetensors", b"rewritten")
        .unwrap();
    again.commit(2, None).unwrap();
    let opened = open_latest_valid(root.path(), "algo-1").unwrap().unwrap();
    assert_eq!(opened.manifest.files.len(), 1);
}

#[test]
fn failed_body_leaves_no_trace_and_the_checkpoint_can_continue() {
    let root = tempfile::tempdir().unwrap();
    let mut pending = CheckpointWriter::begin(root.path(), "algo-1", 900).unwrap();
    let err = pending
        .write_file("model.safetensors", |w| {
            w.write_all(&[1u8; 4096])?;
            Err(io::Error::other("serialiser ran out of tensors"))
        })
        .unwrap_err();
    assert!(
        err.to_string().contains("serialiser ran out of tensors"),
        "{err}"
    );
    assert!(files_below(pending.dir()).is_empty());
    assert!(pending.files().is_empty());

    pending
        .write_bytes("model.safetensors", b"second try")
        .unwrap();
    let committed = pending.commit(3, None).unwrap();
    assert_eq!(committed.manifest.files.len(), 1);
}

#[test]
fn files_written_at_once_are_recorded_in_order_and_fail_together() {
    let root = tempfile::tempdir().unwrap();
    let big = pseudo_random(9 * 1024 * 1024 + 7, 3);
    let small = pseudo_random(4321, 4);
    let mut pending = CheckpointWriter::begin(root.path(), "algo-1", 5).unwrap();

    // One body fails: neither file is recorded or left behind, and the checkpoint goes on.
    let err = pending
        .write_files(vec![
            (
                "model.safetensors",
                Box::new(|w: &mut dyn Write| w.write_all(&big)),
            ),
            (
                "optimizer.safetensors",
                Box::new(|w: &mut dyn Write| {
                    w.write_all(&small)?;
                    Err(io::Error::other("optimizer state went away"))
                }),
            ),
        ])
        .unwrap_err();
    assert!(
        err.to_string().contains("optimizer state went away"),
        "{err}"
    );
    assert!(files_below(pending.dir()).is_empty());
    assert!(pending.files().is_empty());

    // The same name twice in one call is refused before anything is written.
    assert!(matches!(
        pending.write_files(vec![
            ("a.bin", Box::new(|w: &mut dyn Write| w.write_all(b"1"))),
            ("a.bin", Box::new(|w: &mut dyn Write| w.write_all(b"2"))),
        ]),
        Err(WriteError::DuplicateName { .. })
    ));

    pending
        .write_files(vec![
            (
                "model.safetensors",
                Box::new(|w: &mut dyn Write| w.write_all(&big)),
            ),
            (
                "nested/optimizer.safetensors",
                Box::new(|w: &mut dyn Write| w.write_all(&small)),
            ),
        ])
        .unwrap();
    let committed = pending.commit(7, None).unwrap();
    let names: Vec<&str> = committed
        .manifest
        .files
        .iter()
        .map(|f| f.path.as_str())
        .collect();
    assert_eq!(names, ["model.safetensors", "nested/optimizer.safetensors"]);
    for (name, bytes) in [
        ("model.safetensors", &big),
        ("nested/optimizer.safetensors", &small),
    ] {
        let entry = committed.manifest.file(name).unwrap();
        assert_eq!(entry.sha256, FileDigest::of(bytes).sha256_hex());
        assert_eq!(committed.read_verified(name).unwrap(), *bytes);
    }
}

#[test]
fn bad_names_and_duplicates_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let mut pending = CheckpointWriter::begin(root.path(), "algo-1", 1).unwrap();
    for (name, problem) in [
        ("../escape.bin", PathProblem::ParentDir),
        ("/abs.bin", PathProblem::Absolute),
        ("manifest.json", PathProblem::Reserved),
        ("model.safetensors.sagemaker-ignore", PathProblem::Reserved),
        (
            "model.safetensors.sagemaker-uploaded",
            PathProblem::Reserved,
        ),
        ("a//b", PathProblem::EmptyComponent),
    ] {
        let err = pending.write_bytes(name, b"x").unwrap_err();
        assert!(
            matches!(&err, WriteError::BadName { problem: p, .. } if *p == problem),
            "{name}: {err}"
        );
    }
    assert!(!root.path().join("escape.bin").exists());
    pending.write_bytes("model.safetensors", b"x").unwrap();
    assert!(matches!(
        pending.write_bytes("model.safetensors", b"y"),
        Err(WriteError::DuplicateName { .. })
    ));

    for ns in ["", "..", "a/b", "step-000000000001"] {
        assert!(
            matches!(
                CheckpointWriter::begin(root.path(), ns, 1),
                Err(WriteError::BadNamespace { .. })
            ),
            "{ns:?}"
        );
    }
}

#[test]
fn crash_before_manifest_rename_is_incomplete() {
    let root = tempfile::tempdir().unwrap();
    let good = write_checkpoint(root.path(), "algo-1", 100);
    let torn = write_checkpoint(root.path(), "algo-1", 200);
    // Simulate a crash between writing the manifest's temp file and renaming it.
    fs::rename(
        torn.dir.join(MANIFEST_FILE),
        torn.dir.join("manifest.json.sagemaker-ignore"),
    )
    .unwrap();
    assert_eq!(
        status_line(root.path(), "algo-1/step-000000000200"),
        Status::Incomplete
    );
    let opened = open_latest_valid(root.path(), "algo-1").unwrap().unwrap();
    assert_eq!(opened.name, good.name);
}

#[test]
fn abort_removes_the_directory() {
    let root = tempfile::tempdir().unwrap();
    let mut pending = CheckpointWriter::begin(root.path(), "algo-1", 42).unwrap();
    pending.write_bytes("model.safetensors", b"x").unwrap();
    let dir = pending.dir().to_path_buf();
    pending.abort().unwrap();
    assert!(!dir.exists());
    assert!(path_in(root.path(), "algo-1", "").exists());
}

fn status_line(root: &std::path::Path, name: &str) -> Status {
    let report = validate_root(root).unwrap();
    crate::util::status_of(&report, name).0
}
