//! The "container": a SageMaker-like `/opt/ml` tree under the work directory, and the training
//! image run as a local process in it.
//!
//! Owns the instance layout (`<workdir>/jobs/<job>/instance-<n>/opt/ml/…`: `input/config/
//! {hyperparameters,resourceconfig,inputdataconfig,checkpointconfig}.json`,
//! `input/data/<channel>`, `model`, `output`, `checkpoints`), the mapping of container paths
//! (`/opt/ml/…` in the job's CheckpointConfig.LocalPath) into it, the resolution of a training
//! image to a program ([`Images`]), and starting, signalling and reaping the process. It
//! decides nothing about the job's lifecycle: the state machine does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{json, Value};

use crate::api::TrainingJobRequest;
use crate::sync::{get_to_file, list_keys, split_s3_uri, SyncError};

/// The training images this service can run: image name → program; every other image runs
/// [`Images::default`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Images {
    /// The program an unmapped image runs (the `train` binary).
    pub default: PathBuf,
    /// Explicit mappings.
    pub mapped: BTreeMap<String, PathBuf>,
}

impl Images {
    /// The program for `image`.
    pub fn resolve(&self, image: &str) -> PathBuf {
        self.mapped
            .get(image)
            .cloned()
            .unwrap_or_else(|| self.default.clone())
    }
}

/// Where an instance's `/opt/ml` lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The instance directory.
    pub instance: PathBuf,
    /// `<instance>/opt/ml`.
    pub opt_ml: PathBuf,
}

impl Layout {
    /// The layout of instance `n` of `job`.
    pub fn new(workdir: &Path, job: &str, n: u32) -> Layout {
        let instance = workdir.join("jobs").join(job).join(format!("instance-{n}"));
        Layout {
            opt_ml: instance.join("opt/ml"),
            instance,
        }
    }

    /// A container path (`/opt/ml/…`) inside this instance; other absolute paths are taken
    /// below the instance directory too, so nothing escapes it.
    pub fn container_path(&self, path: &str) -> PathBuf {
        match path.strip_prefix("/opt/ml") {
            Some(rest) => self.opt_ml.join(rest.trim_start_matches('/')),
            None => self.instance.join(path.trim_start_matches('/')),
        }
    }

    /// The model directory.
    pub fn model_dir(&self) -> PathBuf {
        self.opt_ml.join("model")
    }

    /// The failure file.
    pub fn failure_file(&self) -> PathBuf {
        self.opt_ml.join("output/failure")
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SyncError + '_ {
    move |source| SyncError::Io {
        path: path.to_owned(),
        source,
    }
}

fn write_json(path: &Path, v: &Value) -> Result<(), SyncError> {
    std::fs::write(path, serde_json::to_vec_pretty(v).unwrap_or_default()).map_err(io(path))
}

/// Lays out a fresh `/opt/ml` (removing any previous instance's tree) and copies the input
/// channels in: `s3://` prefixes from S3, `file://` directories linked (read-only data).
pub async fn prepare(
    layout: &Layout,
    req: &TrainingJobRequest,
    instance_type: &str,
    s3: &aws_sdk_s3::Client,
) -> Result<(), SyncError> {
    if layout.instance.exists() {
        std::fs::remove_dir_all(&layout.instance).map_err(io(&layout.instance))?;
    }
    let config = layout.opt_ml.join("input/config");
    for dir in [
        config.clone(),
        layout.opt_ml.join("input/data"),
        layout.model_dir(),
        layout.opt_ml.join("output/data"),
    ] {
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    }
    write_json(
        &config.join("hyperparameters.json"),
        &Value::Object(req.hyperparameters.clone()),
    )?;
    write_json(
        &config.join("resourceconfig.json"),
        &json!({"current_host": "algo-1", "current_instance_type": instance_type, "hosts": ["algo-1"],
                "network_interface_name": "lo"}),
    )?;
    write_json(
        &config.join("inputdataconfig.json"),
        &Value::Object(
            req.channels
                .iter()
                .map(|c| (c.name.clone(), json!({"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"})))
                .collect(),
        ),
    )?;
    if let Some(uri) = &req.checkpoint_s3_uri {
        let local = layout.container_path(&req.checkpoint_local_path);
        std::fs::create_dir_all(&local).map_err(io(&local))?;
        write_json(
            &config.join("checkpointconfig.json"),
            &json!({"LocalPath": local, "S3Uri": uri}),
        )?;
    }
    for c in &req.channels {
        let dest = layout.opt_ml.join("input/data").join(&c.name);
        if let Some(path) = c.uri.strip_prefix("file://") {
            // A relative link target would resolve against the link's own directory.
            let src = &crate::absolute(Path::new(path));
            if !src.exists() {
                return Err(SyncError::Io {
                    path: src.to_owned(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("channel {}: no such directory", c.name),
                    ),
                });
            }
            std::os::unix::fs::symlink(src, &dest).map_err(io(&dest))?;
        } else {
            std::fs::create_dir_all(&dest).map_err(io(&dest))?;
            let (bucket, prefix) = split_s3_uri(&c.uri)?;
            let keys = list_keys(s3, &bucket, &prefix).await?;
            if keys.is_empty() {
                return Err(SyncError::S3 {
                    operation: "ListObjectsV2",
                    key: c.uri.clone(),
                    message: format!("channel {}: no objects under the prefix", c.name),
                });
            }
            for (key, _) in keys {
                let rel = &key[prefix.len()..];
                if rel.is_empty() || rel.ends_with('/') || rel.split('/').any(|p| p == "..") {
                    continue;
                }
                get_to_file(s3, &bucket, &key, &dest.join(rel)).await?;
            }
        }
    }
    Ok(())
}

/// Starts the training program in the layout, stdout and stderr appended to `log`.
pub fn spawn(
    program: &Path,
    layout: &Layout,
    req: &TrainingJobRequest,
    instance_type: &str,
    log: &Path,
) -> std::io::Result<tokio::process::Child> {
    if let Some(parent) = log.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.current_dir(&layout.instance)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .env("SPOTCHECK_OPT_ML", &layout.opt_ml)
        .env("SPOTCHECK_IMDS", "off")
        .env("SM_CURRENT_HOST", "algo-1")
        .env("SM_HOSTS", "[\"algo-1\"]")
        .env("SM_CURRENT_INSTANCE_TYPE", instance_type)
        .env("SM_MODEL_DIR", layout.model_dir())
        .env("SM_OUTPUT_DATA_DIR", layout.opt_ml.join("output/data"))
        .env("TRAINING_JOB_NAME", &req.name)
        .kill_on_drop(true);
    for c in &req.channels {
        cmd.env(
            format!(
                "SM_CHANNEL_{}",
                c.name.to_ascii_uppercase().replace('-', "_")
            ),
            layout.opt_ml.join("input/data").join(&c.name),
        );
    }
    for (k, v) in &req.environment {
        if let Some(v) = v.as_str() {
            cmd.env(k, v);
        }
    }
    cmd.spawn()
}

/// Sends `signal` to a process (no-op when it is gone).
pub fn signal(pid: Option<u32>, signal: i32) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) with a pid we spawned and a valid signal number has no memory effects.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Packs a directory as `model.tar.gz` bytes.
pub fn tar_gz(dir: &Path) -> std::io::Result<Vec<u8>> {
    let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(enc);
    tar.append_dir_all(".", dir)?;
    tar.into_inner()?.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_paths_stay_inside() {
        let l = Layout::new(Path::new("/w"), "j", 2);
        assert_eq!(l.opt_ml, PathBuf::from("/w/jobs/j/instance-2/opt/ml"));
        assert_eq!(
            l.container_path("/opt/ml/checkpoints"),
            PathBuf::from("/w/jobs/j/instance-2/opt/ml/checkpoints")
        );
        assert_eq!(
            l.container_path("/ckpt"),
            PathBuf::from("/w/jobs/j/instance-2/ckpt")
        );
        let images = Images {
            default: "/bin/train".into(),
            mapped: [("other".to_string(), PathBuf::from("/bin/other"))]
                .into_iter()
                .collect(),
        };
        assert_eq!(images.resolve("x:latest"), PathBuf::from("/bin/train"));
        assert_eq!(images.resolve("other"), PathBuf::from("/bin/other"));
    }
}
