//! Retention carried out on a real tree.

use std::fs;
use std::os::unix::fs::symlink;

use spotcheck_protocol::{
    execute_retention, plan_retention, validate_root, RetentionAction, RetentionError, Status,
    MANIFEST_FILE,
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
    let actions = plan_retention(&report.checkpoints, 2, &["algo-1/step-000000000100"]);
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
