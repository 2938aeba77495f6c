//! The "container": a SageMaker-like `/opt/ml` tree under the work directory, and the training
//! image run as a local process in it.
//!
//! Owns the instance layout (`<workdir>/jobs/<job>/instance-<n>/<host>/opt/ml/…`: `input/config/
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

/// What one host runs: a program and its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerCommand {
    /// The program (a path, or a name looked up in `PATH`).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

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

    /// What a job's hosts run, as a container runtime composes it: the job's
    /// `ContainerEntrypoint` (its first item the program) in place of the image's program,
    /// followed by `ContainerArguments`.
    pub fn command(&self, req: &TrainingJobRequest) -> ContainerCommand {
        match &req.entrypoint {
            Some(entrypoint) => ContainerCommand {
                program: PathBuf::from(&entrypoint[0]),
                args: entrypoint[1..]
                    .iter()
                    .chain(&req.arguments)
                    .cloned()
                    .collect(),
            },
            None => ContainerCommand {
                program: self.resolve(&req.image),
                args: req.arguments.clone(),
            },
        }
    }
}

/// SageMaker's host names for a job of `count` instances: `algo-1` … `algo-<count>`.
pub fn host_names(count: u32) -> Vec<String> {
    (1..=count.max(1)).map(|i| format!("algo-{i}")).collect()
}

/// Who one host is among its job's hosts, and where they meet (for `torchrun` and
/// `torch.distributed`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostEnv {
    /// Every host of the job, rank order (`algo-1` is rank 0).
    pub hosts: Vec<String>,
    /// This host's rank (index into `hosts`).
    pub rank: usize,
    /// The rendezvous port on loopback, fresh for each launch of the instance group.
    pub master_port: u16,
}

impl HostEnv {
    /// This host's name.
    pub fn name(&self) -> &str {
        &self.hosts[self.rank]
    }
}

/// Where one host's `/opt/ml` lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The host's directory.
    pub instance: PathBuf,
    /// `<instance>/opt/ml`.
    pub opt_ml: PathBuf,
}

impl Layout {
    /// The layout of `host` in instance group `n` of `job`.
    pub fn new(workdir: &Path, job: &str, n: u32, host: &str) -> Layout {
        let instance = workdir
            .join("jobs")
            .join(job)
            .join(format!("instance-{n}"))
            .join(host);
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
    host: &HostEnv,
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
        &json!({"current_host": host.name(), "current_instance_type": req.instance_type,
                "current_group_name": "homogeneousCluster", "hosts": host.hosts,
                "instance_groups": [{"instance_group_name": "homogeneousCluster",
                                     "instance_type": req.instance_type, "hosts": host.hosts}],
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

/// Starts the training program of one host in its layout, stdout and stderr appended to
/// `log`. Besides SageMaker's variables it gets what `torchrun` and `torch.distributed` read
/// to meet the other hosts on loopback: `PET_NNODES`, `PET_NODE_RANK`, `PET_MASTER_ADDR`,
/// `PET_MASTER_PORT` (torchrun's own), and `MASTER_ADDR`, `MASTER_PORT`, `RANK`, `WORLD_SIZE`
/// (one process per host, `env://` initialisation).
pub fn spawn(
    command: &ContainerCommand,
    layout: &Layout,
    req: &TrainingJobRequest,
    host: &HostEnv,
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
    let mut cmd = tokio::process::Command::new(&command.program);
    cmd.args(&command.args)
        .current_dir(&layout.instance)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .env("SPOTCHECK_OPT_ML", &layout.opt_ml)
        .env("SPOTCHECK_IMDS", "off")
        .env("SM_CURRENT_HOST", host.name())
        .env(
            "SM_HOSTS",
            serde_json::to_string(&host.hosts).unwrap_or_default(),
        )
        .env("SM_CURRENT_INSTANCE_TYPE", &req.instance_type)
        .env("PET_NNODES", host.hosts.len().to_string())
        .env("PET_NODE_RANK", host.rank.to_string())
        .env("PET_MASTER_ADDR", "127.0.0.1")
        .env("PET_MASTER_PORT", host.master_port.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", host.master_port.to_string())
        .env("RANK", host.rank.to_string())
        .env("WORLD_SIZE", host.hosts.len().to_string())
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
    // The container's processes are its session: a reclaim or the end of its first process
    // kills them all, as a container's end does (see `kill_container`).
    // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// The session id in a `/proc/<pid>/stat` line (fields after the command name, which may
/// itself hold spaces and parentheses: state, ppid, pgrp, session).
fn session_of(stat: &str) -> Option<u32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(3)?.parse().ok()
}

/// SIGKILLs every process of the container whose first process was `pid`: the session it
/// leads, which holds the processes it started even when they made their own process group
/// (`spotcheck run` does) or outlived it. A container's end kills everything in it; a SIGKILL
/// to the first process alone would leave the training script running on as an orphan.
pub fn kill_container(pid: Option<u32>) {
    if let Some(leader) = pid {
        signal(Some(leader), libc::SIGKILL);
        kill_session(leader);
    }
}

/// SIGKILLs every process whose session is `leader`'s (what is left of a container whose
/// first process has exited).
pub fn kill_session(leader: u32) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let in_session = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| session_of(&s))
            == Some(leader);
        if in_session {
            signal(Some(p), libc::SIGKILL);
        }
    }
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
    fn the_session_is_read_past_a_command_name_with_parentheses() {
        assert_eq!(
            session_of("4242 (py (x) thon) S 1 4242 4200 0 -1 4194560"),
            Some(4200)
        );
        assert_eq!(session_of("garbage"), None);
        assert_eq!(session_of("1 (a) S 0"), None);
    }

    #[test]
    fn container_paths_stay_inside() {
        let l = Layout::new(Path::new("/w"), "j", 2, "algo-1");
        assert_eq!(
            l.opt_ml,
            PathBuf::from("/w/jobs/j/instance-2/algo-1/opt/ml")
        );
        assert_eq!(
            l.container_path("/opt/ml/checkpoints"),
            PathBuf::from("/w/jobs/j/instance-2/algo-1/opt/ml/checkpoints")
        );
        assert_eq!(
            l.container_path("/ckpt"),
            PathBuf::from("/w/jobs/j/instance-2/algo-1/ckpt")
        );
        assert_eq!(host_names(2), ["algo-1", "algo-2"]);
        let images = Images {
            default: "/bin/train".into(),
            mapped: [("other".to_string(), PathBuf::from("/bin/other"))]
                .into_iter()
                .collect(),
        };
        assert_eq!(images.resolve("x:latest"), PathBuf::from("/bin/train"));
        assert_eq!(images.resolve("other"), PathBuf::from("/bin/other"));
    }

    #[test]
    fn the_entrypoint_replaces_the_images_program_and_arguments_follow() {
        let images = Images {
            default: "/bin/train".into(),
            mapped: BTreeMap::new(),
        };
        let request = |spec: Value| {
            let mut algorithm = json!({"TrainingImage": "x:latest", "TrainingInputMode": "File"});
            algorithm
                .as_object_mut()
                .unwrap()
                .extend(spec.as_object().unwrap().clone());
            TrainingJobRequest::parse(&json!({
                "TrainingJobName": "j",
                "AlgorithmSpecification": algorithm,
                "RoleArn": "arn:aws:iam::000000000000:role/r",
                "OutputDataConfig": {"S3OutputPath": "s3://out/m"},
                "ResourceConfig": {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1},
            }))
            .unwrap()
        };
        let command = |spec| images.command(&request(spec));
        assert_eq!(
            command(json!({})),
            ContainerCommand {
                program: "/bin/train".into(),
                args: vec![]
            }
        );
        assert_eq!(
            command(json!({"ContainerArguments": ["--x", "1"]})).args,
            ["--x", "1"]
        );
        assert_eq!(
            command(json!({
                "ContainerEntrypoint": ["/bin/spotcheck", "run", "--"],
                "ContainerArguments": ["python", "train.py"],
            })),
            ContainerCommand {
                program: "/bin/spotcheck".into(),
                args: ["run", "--", "python", "train.py"]
                    .map(String::from)
                    .to_vec(),
            }
        );
    }
}
