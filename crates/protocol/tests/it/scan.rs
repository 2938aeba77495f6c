//! Validation on local disk: the fixture checkpoint, torn and hostile variants, fallback, and
//! the report the CLI prints.

use std::fs;
use std::os::unix::fs::symlink;

use serde_json::json;
use spotcheck_protocol::{
    open_latest_valid, validate_root, validate_root_with, ChecksumKind, ManifestError, ReadError,
    Reason, Status, Verification, MANIFEST_FILE, MAX_MANIFEST_BYTES,
};

use crate::util::{
    copy_tree, fixture_root, flip_byte, path_in, status_of, write_checkpoint, FIXTURE,
};

/// The fixture's manifest as JSON, edited and written back in place.
fn edit_manifest(root: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = path_in(root, FIXTURE, MANIFEST_FILE);
    let mut doc: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    edit(&mut doc);
    fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
}

fn verdict(root: &std::path::Path) -> (Status, Option<Reason>) {
    let report = validate_root(root).unwrap();
    let (status, reason) = status_of(&report, FIXTURE);
    (status, reason.cloned())
}

#[test]
fn fixture_written_by_an_independent_implementation_is_valid() {
    let root = fixture_root();
    let report = validate_root(root.path()).unwrap();
    assert_eq!(report.latest_valid.as_deref(), Some(FIXTURE));
    assert_eq!(report.checkpoints.len(), 1);
    let opened = open_latest_valid(root.path(), "algo-1").unwrap().unwrap();
    let state = opened.read_verified("trainer_state.json").unwrap();
    let state: serde_json::Value = serde_json::from_slice(&state).unwrap();
    assert_eq!(state["step"], 1200);
}

#[test]
fn report_serialises_to_the_cli_json() {
    let root = fixture_root();
    let torn = path_in(root.path(), "algo-1/step-000000001300", "");
    fs::create_dir_all(&torn).unwrap();
    fs::write(torn.join("model.safetensors"), b"partial").unwrap();
    let report = validate_root(root.path()).unwrap();
    assert_eq!(
        serde_json::to_value(&report).unwrap(),
        json!({
            "latest_valid": "algo-1/step-000000001200",
            "checkpoints": [
                {"name": "algo-1/step-000000001200", "namespace": "algo-1", "step": 1200,
                 "status": "valid", "reason": null},
                {"name": "algo-1/step-000000001300", "namespace": "algo-1", "step": 1300,
                 "status": "incomplete", "reason": "no manifest"},
            ]
        })
    );
}

#[test]
fn truncated_file_is_corrupt() {
    let root = fixture_root();
    let model = path_in(root.path(), FIXTURE, "model.safetensors");
    let bytes = fs::read(&model).unwrap();
    fs::write(&model, &bytes[..bytes.len() - 8]).unwrap();
    assert_eq!(
        verdict(root.path()),
        (
            Status::Corrupt,
            Some(Reason::SizeMismatch {
                path: "model.safetensors".into(),
                expected: 248,
                found: 240
            })
        )
    );
}

#[test]
fn flipped_byte_is_corrupt_under_full_verification_only() {
    let root = fixture_root();
    flip_byte(&path_in(root.path(), FIXTURE, "optimizer.safetensors"));
    let (status, reason) = verdict(root.path());
    assert_eq!(status, Status::Corrupt);
    assert!(
        matches!(&reason, Some(Reason::ChecksumMismatch { path, kind: ChecksumKind::Crc64Nvme, .. }) if path == "optimizer.safetensors"),
        "{reason:?}"
    );
    // The cheap scan cannot see a same-size change; that is its documented limit.
    let quick = validate_root_with(root.path(), Verification::SizesOnly).unwrap();
    assert_eq!(status_of(&quick, FIXTURE).0, Status::Valid);
    assert_eq!(open_latest_valid(root.path(), "algo-1").unwrap(), None);
}

#[test]
fn missing_file_is_incomplete() {
    let root = fixture_root();
    fs::remove_file(path_in(root.path(), FIXTURE, "trainer_state.json")).unwrap();
    assert_eq!(
        verdict(root.path()),
        (
            Status::Incomplete,
            Some(Reason::MissingFile {
                path: "trainer_state.json".into()
            })
        )
    );
}

#[test]
fn missing_manifest_is_incomplete() {
    let root = fixture_root();
    fs::remove_file(path_in(root.path(), FIXTURE, MANIFEST_FILE)).unwrap();
    assert_eq!(
        verdict(root.path()),
        (Status::Incomplete, Some(Reason::NoManifest))
    );
}

#[test]
fn manifest_synced_before_a_data_file_is_incomplete() {
    // S3 sync order is undocumented: the manifest may arrive while a file is still being
    // uploaded, leaving only its marker.
    let root = fixture_root();
    let model = path_in(root.path(), FIXTURE, "model.safetensors");
    fs::rename(
        &model,
        path_in(
            root.path(),
            FIXTURE,
            "model.safetensors.sagemaker-uploading",
        ),
    )
    .unwrap();
    assert_eq!(
        verdict(root.path()),
        (
            Status::Incomplete,
            Some(Reason::MissingFile {
                path: "model.safetensors".into()
            })
        )
    );
}

#[test]
fn uploader_markers_temp_files_and_extras_are_ignored() {
    let root = fixture_root();
    let dir = path_in(root.path(), FIXTURE, "");
    for name in [
        "model.safetensors.sagemaker-uploading",
        "model.safetensors.sagemaker-uploaded",
        "manifest.json.sagemaker-uploaded",
        "optimizer.safetensors.sagemaker-ignore",
        "manifest.json.sagemaker-ignore",
        "notes.txt",
    ] {
        fs::write(dir.join(name), b"{not json").unwrap();
    }
    // Markers and temporaries next to step and namespace directories are not checkpoints.
    fs::write(
        root.path()
            .join("algo-1/step-000000001300.sagemaker-uploading"),
        b"",
    )
    .unwrap();
    fs::create_dir(
        root.path()
            .join("algo-1/step-000000001400.sagemaker-ignore"),
    )
    .unwrap();
    fs::write(root.path().join("algo-1.sagemaker-uploaded"), b"").unwrap();
    let report = validate_root(root.path()).unwrap();
    assert_eq!(report.checkpoints.len(), 1, "{report:#?}");
    assert_eq!(status_of(&report, FIXTURE), (Status::Valid, None));
}

#[test]
fn hostile_manifests_are_corrupt_and_nothing_outside_is_read() {
    let root = fixture_root();
    // A file outside the checkpoint that would match, were the path followed.
    fs::copy(
        path_in(root.path(), FIXTURE, "model.safetensors"),
        root.path().join("algo-1/model.safetensors"),
    )
    .unwrap();
    edit_manifest(root.path(), |d| {
        d["files"][0]["path"] = "../model.safetensors".into()
    });
    assert_eq!(
        verdict(root.path()),
        (
            Status::Corrupt,
            Some(Reason::PathEscapes {
                path: "../model.safetensors".into()
            })
        )
    );

    let root = fixture_root();
    edit_manifest(root.path(), |d| {
        d["files"][0]["path"] = "/etc/hostname".into()
    });
    assert_eq!(
        verdict(root.path()),
        (
            Status::Corrupt,
            Some(Reason::PathEscapes {
                path: "/etc/hostname".into()
            })
        )
    );

    let root = fixture_root();
    edit_manifest(root.path(), |d| d["files"][0]["size"] = json!(1u64 << 50));
    assert!(matches!(
        verdict(root.path()),
        (
            Status::Corrupt,
            Some(Reason::BadManifest(ManifestError::FileTooLarge { .. }))
        )
    ));

    let root = fixture_root();
    edit_manifest(root.path(), |d| d["format_version"] = 2.into());
    assert_eq!(
        verdict(root.path()),
        (
            Status::Corrupt,
            Some(Reason::UnsupportedVersion { found: 2 })
        )
    );

    let root = fixture_root();
    edit_manifest(root.path(), |d| {
        d["meta"] = json!({ "padding": "x".repeat(MAX_MANIFEST_BYTES) })
    });
    assert!(matches!(
        verdict(root.path()),
        (
            Status::Corrupt,
            Some(Reason::BadManifest(ManifestError::TooLarge { .. }))
        )
    ));
}

#[test]
fn links_inside_a_checkpoint_are_never_followed() {
    let root = fixture_root();
    let outside = root.path().join("elsewhere.safetensors");
    let model = path_in(root.path(), FIXTURE, "model.safetensors");
    fs::rename(&model, &outside).unwrap();
    symlink(&outside, &model).unwrap();
    assert_eq!(
        verdict(root.path()),
        (
            Status::Corrupt,
            Some(Reason::PathEscapes {
                path: "model.safetensors".into()
            })
        )
    );

    // A linked step directory is not a checkpoint at all.
    let root = fixture_root();
    symlink(
        path_in(root.path(), FIXTURE, ""),
        root.path().join("algo-1/step-000000009999"),
    )
    .unwrap();
    let report = validate_root(root.path()).unwrap();
    assert_eq!(report.checkpoints.len(), 1);
}

#[test]
fn a_copied_step_directory_is_in_the_wrong_place() {
    let root = fixture_root();
    copy_tree(
        &path_in(root.path(), FIXTURE, ""),
        &path_in(root.path(), "algo-1/step-000000001300", ""),
    );
    let report = validate_root(root.path()).unwrap();
    assert_eq!(
        status_of(&report, "algo-1/step-000000001300"),
        (
            Status::Corrupt,
            Some(&Reason::WrongLocation {
                expected: "algo-1/step-000000001300".into(),
                found: "algo-1/step-000000001200".into()
            })
        )
    );
    assert_eq!(report.latest_valid.as_deref(), Some(FIXTURE));
}

#[test]
fn falls_back_past_corrupt_and_incomplete_newer_checkpoints() {
    let root = tempfile::tempdir().unwrap();
    write_checkpoint(root.path(), "algo-1", 100);
    let older_good = write_checkpoint(root.path(), "algo-1", 200);
    let corrupt = write_checkpoint(root.path(), "algo-1", 300);
    let incomplete = write_checkpoint(root.path(), "algo-1", 400);
    flip_byte(&corrupt.dir.join("model.safetensors"));
    fs::remove_file(incomplete.dir.join("optimizer.safetensors")).unwrap();
    write_checkpoint(root.path(), "algo-2", 900);

    let opened = open_latest_valid(root.path(), "algo-1").unwrap().unwrap();
    assert_eq!(opened.name, older_good.name);
    assert_eq!(opened.step(), 200);
    assert_eq!(opened.manifest, older_good.manifest);

    let report = validate_root(root.path()).unwrap();
    let statuses: Vec<_> = report
        .checkpoints
        .iter()
        .map(|c| (c.name.as_str(), c.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("algo-1/step-000000000100", Status::Valid),
            ("algo-1/step-000000000200", Status::Valid),
            ("algo-1/step-000000000300", Status::Corrupt),
            ("algo-1/step-000000000400", Status::Incomplete),
            ("algo-2/step-000000000900", Status::Valid),
        ]
    );
    assert_eq!(
        report.latest_valid.as_deref(),
        Some("algo-2/step-000000000900")
    );
}

#[test]
fn root_may_be_a_namespace_directory() {
    let root = fixture_root();
    let report = validate_root(root.path().join("algo-1")).unwrap();
    assert_eq!(report.latest_valid.as_deref(), Some("step-000000001200"));
    assert_eq!(report.checkpoints[0].namespace, None);
    assert_eq!(report.checkpoints[0].status, Status::Valid);
}

#[test]
fn missing_roots() {
    let root = tempfile::tempdir().unwrap();
    let absent = root.path().join("not-yet");
    // First start: nothing to resume from, not an error.
    assert_eq!(open_latest_valid(&absent, "algo-1").unwrap(), None);
    assert_eq!(open_latest_valid(root.path(), "algo-1").unwrap(), None);
    // Scanning a root that is not there is a mistake worth reporting.
    assert!(matches!(validate_root(&absent), Err(ReadError::Io { .. })));
    assert!(matches!(
        open_latest_valid(root.path(), "../etc"),
        Err(ReadError::BadNamespace { .. })
    ));
}

#[test]
fn read_verified_checks_the_bytes_it_returns() {
    let root = fixture_root();
    let opened = open_latest_valid(root.path(), "algo-1").unwrap().unwrap();
    flip_byte(&path_in(root.path(), FIXTURE, "model.safetensors"));
    assert!(matches!(
        opened.read_verified("model.safetensors"),
        Err(ReadError::NoLongerValid {
            reason: Reason::ChecksumMismatch { .. },
            ..
        })
    ));
    assert!(matches!(
        opened.read_verified("optimizer.safetensors"),
        Ok(bytes) if bytes.len() == 320
    ));
    assert!(matches!(
        opened.read_verified("../../etc/passwd"),
        Err(ReadError::NotListed { .. })
    ));
    fs::write(path_in(root.path(), FIXTURE, "trainer_state.json"), b"{}").unwrap();
    assert!(matches!(
        opened.read_verified("trainer_state.json"),
        Err(ReadError::NoLongerValid {
            reason: Reason::SizeMismatch { found: 2, .. },
            ..
        })
    ));
}
