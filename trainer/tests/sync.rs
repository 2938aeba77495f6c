//! Retention under SageMaker's checkpoint sync: the checkpoint directory is the one
//! `checkpointconfig.json` names with an `S3Uri`, so deleting a local checkpoint deletes it in
//! S3 too. Only fully uploaded checkpoints (SageMaker's `.sagemaker-uploaded` markers on every
//! file and the manifest) count toward `keep_checkpoints`; the newest uploaded one is never
//! deleted, and newer ones still on their way are kept.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use spotcheck_protocol::{mark_uploaded, validate_root, Status};

const TRAIN: &str = env!("CARGO_BIN_EXE_train");

/// 240 steps, a checkpoint every 2, keep 2.
const HP: &[&str] = &[
    "dataset=synthetic",
    "num_classes=4",
    "image_size=8",
    "synthetic_samples=96",
    "batch_size=16",
    "epochs=40",
    "model_depth=1",
    "model_width=4",
    "model_hidden=16",
    "checkpoint_adaptive=false",
    "checkpoint_every_steps=2",
    "keep_checkpoints=2",
    "backend=cpu",
];

/// A SageMaker-like `/opt/ml` whose checkpoint config names `ckpt` and an S3 URI; the
/// trainer is given no `--checkpoint-dir`, as on SageMaker.
fn sagemaker_run(opt_ml: &Path, ckpt: &Path) -> Command {
    let config = opt_ml.join("input/config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("checkpointconfig.json"),
        serde_json::json!({"LocalPath": ckpt, "S3Uri": "s3://bucket/checkpoints"}).to_string(),
    )
    .unwrap();
    let mut c = Command::new(TRAIN);
    c.arg("--data")
        .arg("/nonexistent")
        .arg("--model-dir")
        .arg(opt_ml.join("model"))
        .env("SPOTCHECK_OPT_ML", opt_ml)
        .env("SPOTCHECK_IMDS", "off")
        .env_remove("SM_MODEL_DIR")
        .env_remove("SM_CURRENT_HOST")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for hp in HP {
        c.arg("--hp").arg(hp);
    }
    c
}

fn valid_steps(ckpt: &Path) -> Vec<u64> {
    validate_root(ckpt)
        .unwrap()
        .checkpoints
        .iter()
        .filter(|c| c.status == Status::Valid)
        .map(|c| c.step)
        .collect()
}

fn step_dir(ckpt: &Path, step: u64) -> PathBuf {
    ckpt.join(format!("algo-1/step-{step:012}"))
}

#[test]
fn checkpoints_that_never_reached_s3_do_not_count_and_the_newest_uploaded_stays() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("checkpoints");
    // No uploader writes markers: nothing is known to be in S3, so nothing valid may go
    // (judged by the local disk alone, keep=2 deleted all but two — and the sync would have
    // deleted them in S3).
    let out = sagemaker_run(&tmp.path().join("opt-ml"), &ckpt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved = String::from_utf8_lossy(&out.stdout)
        .matches("\"checkpoint_saved\"")
        .count();
    let all = valid_steps(&ckpt);
    assert!(saved > 2, "{saved}");
    assert_eq!(all.len(), saved, "every checkpoint kept: {all:?}");

    // The uploader has shipped the second one completely, and the third partly (only its
    // data files, the manifest still on its way).
    let (shipped, partly) = (all[1], all[2]);
    mark_uploaded(&step_dir(&ckpt, shipped), &manifest(&ckpt, shipped)).unwrap();
    for f in &manifest(&ckpt, partly).files {
        std::fs::write(
            step_dir(&ckpt, partly).join(format!("{}.sagemaker-uploaded", f.path)),
            b"",
        )
        .unwrap();
    }
    // A second run (a few more steps) applies retention after each checkpoint: the uploaded
    // one stays, the older one goes, the newer ones (on their way) stay.
    let out = sagemaker_run(&tmp.path().join("opt-ml"), &ckpt)
        .args(["--hp", "epochs=41"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = valid_steps(&ckpt);
    assert_eq!(left.first(), Some(&shipped), "{left:?}");
    assert!(!left.contains(&all[0]), "{left:?}");
    assert!(
        all[1..].iter().all(|s| left.contains(s)),
        "{all:?} → {left:?}"
    );
    assert_eq!(left.last(), Some(&246), "{left:?}");
}

fn manifest(ckpt: &Path, step: u64) -> spotcheck_protocol::Manifest {
    spotcheck_protocol::Manifest::parse(
        &std::fs::read(step_dir(ckpt, step).join("manifest.json")).unwrap(),
    )
    .unwrap()
}
