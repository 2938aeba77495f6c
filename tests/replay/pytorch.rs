//! A checkpoint written by the `spotcheck` Python package (the PyTorch example script, real
//! torch from `.venv-torch`), uploaded to LocalStack S3 as SageMaker's sync would (data files,
//! then manifests), is judged valid by the control plane's S3 validation from its manifest and
//! HeadObject checksums alone: the only GET is the ranged manifest GET, counted on the wire.
//!
//! The interpreter is `.venv-torch/bin/python` with the package installed
//! (`scripts/python-tests.sh install`, which `scripts/test-all.sh` runs before this suite);
//! `SPOTCHECK_TORCH_PYTHON` names another one.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use spotcheck_protocol::Status;
use spotcheck_tests::checkpoints::upload_tree;
use spotcheck_tests::emulators::{self, Emulators};

use crate::checkpoints::{assert_no_data_download, validate};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn torch_python() -> PathBuf {
    if let Some(p) = std::env::var_os("SPOTCHECK_TORCH_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let python = repo().join(".venv-torch/bin/python");
    assert!(
        python.exists(),
        "{} is missing: `bash scripts/python-tests.sh install` creates it with the spotcheck \
         package (scripts/test-all.sh runs it); SPOTCHECK_TORCH_PYTHON may name another",
        python.display()
    );
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pytorch_written_checkpoint_in_s3_is_judged_valid_without_downloading_data() {
    let e = Emulators::from_env();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let root = dir.path().join("checkpoints");
    let out = tokio::process::Command::new(torch_python())
        .arg(repo().join("examples/pytorch/train.py"))
        .args([
            "--synthetic",
            "200",
            "--model",
            "tiny",
            "--batch-size",
            "16",
        ])
        .args([
            "--max-steps",
            "6",
            "--every-steps",
            "2",
            "--no-adaptive",
            "--threads",
            "1",
        ])
        .arg("--checkpoint-dir")
        .arg(&root)
        .arg("--model-dir")
        .arg(dir.path().join("model"))
        .env("SPOTCHECK_IMDS", "off")
        .env("SPOTCHECK_OPT_ML", dir.path().join("opt-ml"))
        .env_remove("SM_CURRENT_HOST")
        .env_remove("SPOTCHECK_NOTICE_FILE")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(300), out)
        .await
        .expect("the PyTorch example finished within 300 s")
        .expect("running the PyTorch example");
    assert!(
        out.status.success(),
        "the PyTorch example failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Locally: what the package wrote is valid by the protocol crate's full verification.
    let local = spotcheck_protocol::validate_root(&root).expect("validating locally");
    let newest = local.latest_valid.clone().expect("a valid checkpoint");
    assert_eq!(newest, "algo-1/step-000000000006");
    let files: Vec<String> = spotcheck_tests::checkpoints::files_under(&root.join(&newest))
        .into_iter()
        .filter(|f| f != "manifest.json")
        .collect();
    assert_eq!(
        files,
        [
            "loader.safetensors",
            "model.safetensors",
            "optimizer.safetensors",
            "rng-states.safetensors",
            "state.json"
        ]
    );

    let s3 = emulators::s3(&e.s3).await;
    let bucket = emulators::bucket(&s3, "replay-pytorch").await;
    upload_tree(&s3, &root, &bucket, "run").await;
    let (v, cost) = validate(&e, &bucket, "run").await;
    assert_eq!(v.latest_valid.as_deref(), Some(newest.as_str()), "{v:?}");
    assert_eq!(v.checkpoints.len(), 1, "only the newest is judged: {v:?}");
    assert_eq!(v.checkpoints[0].status, Status::Valid);
    assert!(v.size_only.is_empty(), "every file carries a CRC-64/NVME");
    assert_eq!(cost.gets, vec![format!("run/{newest}/manifest.json")]);
    assert_eq!(cost.heads, files.len(), "one HEAD per file: {cost:?}");
    assert_no_data_download("pytorch", &cost);
}
