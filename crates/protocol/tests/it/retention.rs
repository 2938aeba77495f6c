//! Retention carried out on a real tree.

use std::fs;
use std::os::unix::fs::symlink;

use spotcheck_protocol::{
    execute_retention, is_fully_uploaded, mark_uploaded, plan_retention, uploaded_checkpoints,
    validate_root, RetentionAction, RetentionError, Status, Uploads, MANIFEST_FILE,
    UPLOADED_SUFFIX,
};

use crate::util::{flip_byte, write_checkpoint};

#[test]
fn plan_then_execute_keeps_the_newest_and_in_flight_checkpoints() {
    let root = tempfile::tempdir().unwrap();
    for step in [100, 200, 300, 400] {
        write_checkpoint(root.path(), "algo-1", step);
    }
    let corrupt = write_checkpoint(root.path(), "algo-1", 250);
    flip_byte(&corrupt.dir.join("model.safetensors"));
    // A newer write in flight: no manifest yet.
    let in_flight = write_checkpoint(root.path(), "algo-1", 500);
    fs::remove_file(in_flight.dir.join(MANIFEST_FILE)).unwrap();

    let report = validate_root(root.path()).unwrap();
    let actions = plan_retention(
        &report.checkpoints,
        2,
        &["algo-1/step-000000000100"],
        Uploads::Unsynced,
    );
    assert_eq!(
        actions,
        [
            RetentionAction::Delete {
                name: "algo-1/step-000000000200".into()
            },
            RetentionAction::Delete {
                name: "algo-1/step-000000000250".into()
            },
        ]
    );
    execute_retention(root.path(), &actions).unwrap();
    // Idempotent: running the same plan again finds nothing to do.
    execute_retention(root.path(), &actions).unwrap();

    let after = validate_root(root.path()).unwrap();
    let left: Vec<_> = after
        .checkpoints
        .iter()
        .map(|c| (c.step, c.status))
        .collect();
    assert_eq!(
        left,
        [
            (100, Status::Valid),
            (300, Status::Valid),
            (400, Status::Valid),
            (500, Status::Incomplete)
        ]
    );
}

#[test]
fn executor_refuses_names_and_paths_that_are_not_checkpoints() {
    let root = tempfile::tempdir().unwrap();
    let victim = root.path().join("precious");
    fs::create_dir(&victim).unwrap();
    fs::write(victim.join("data"), b"keep me").unwrap();

    for name in ["../precious", "precious", "algo-1/step-000000000001/..", ""] {
        let err = execute_retention(
            root.path().join("ckpt"),
            &[RetentionAction::Delete { name: name.into() }],
        )
        .unwrap_err();
        assert!(
            matches!(err, RetentionError::BadName { .. }),
            "{name}: {err}"
        );
    }
    fs::create_dir(root.path().join("algo-1")).unwrap();
    symlink(&victim, root.path().join("algo-1/step-000000000001")).unwrap();
    let err = execute_retention(
        root.path(),
        &[RetentionAction::Delete {
            name: "algo-1/step-000000000001".into(),
        }],
    )
    .unwrap_err();
    assert!(matches!(err, RetentionError::NotADirectory { .. }), "{err}");
    assert_eq!(fs::read(victim.join("data")).unwrap(), b"keep me");
}

#[test]
fn synced_retention_never_deletes_the_newest_uploaded_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let c100 = write_checkpoint(root.path(), "algo-1", 100);
    let c200 = write_checkpoint(root.path(), "algo-1", 200);
    let c300 = write_checkpoint(root.path(), "algo-1", 300);
    let c400 = write_checkpoint(root.path(), "algo-1", 400);
    // The uploader shipped 100 and 200 completely; of 300 only the data files made it (the
    // manifest is still uploading); 400 has not been touched.
    mark_uploaded(&c100.dir, &c100.manifest).unwrap();
    mark_uploaded(&c200.dir, &c200.manifest).unwrap();
    for f in &c300.manifest.files {
        fs::write(c300.dir.join(format!("{}{UPLOADED_SUFFIX}", f.path)), b"").unwrap();
    }
    assert!(is_fully_uploaded(&c200.dir, &c200.manifest));
    assert!(!is_fully_uploaded(&c300.dir, &c300.manifest));
    assert!(!is_fully_uploaded(&c400.dir, &c400.manifest));

    let report = validate_root(root.path()).unwrap();
    let uploaded = uploaded_checkpoints(root.path(), &report.checkpoints);
    assert_eq!(
        uploaded.iter().map(String::as_str).collect::<Vec<_>>(),
        ["algo-1/step-000000000100", "algo-1/step-000000000200"]
    );
    // Judged by the local disk alone, keep=1 would delete 100, 200 and 300 — and SageMaker
    // would then delete 200, the only complete checkpoint in S3.
    let local_only = plan_retention(&report.checkpoints, 1, &[], Uploads::Unsynced);
    assert_eq!(local_only.len(), 3);
    let actions = plan_retention(&report.checkpoints, 1, &[], Uploads::Synced(&uploaded));
    assert_eq!(
        actions,
        [RetentionAction::Delete {
            name: "algo-1/step-000000000100".into()
        }]
    );
    execute_retention(root.path(), &actions).unwrap();
    let after = validate_root(root.path()).unwrap();
    let left: Vec<u64> = after.checkpoints.iter().map(|c| c.step).collect();
    assert_eq!(left, [200, 300, 400]);
    // A manifest without markers, or an unreadable one, is not uploaded.
    fs::write(c200.dir.join(MANIFEST_FILE), b"{not json").unwrap();
    let report = validate_root(root.path()).unwrap();
    assert!(uploaded_checkpoints(root.path(), &report.checkpoints).is_empty());
}
