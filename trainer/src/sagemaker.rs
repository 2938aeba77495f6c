//! The SageMaker training-container contract: where inputs, checkpoints and outputs live.
//!
//! Resolution is pure: it takes the command-line overrides, the environment and a file reader,
//! and never touches the disk itself, so it is tested without a `/opt/ml` tree.

use std::path::{Path, PathBuf};

/// The root SageMaker mounts into every training container.
pub const OPT_ML: &str = "/opt/ml";

/// Paths given on the command line (local runs); each wins over SageMaker's.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// Training data folder.
    pub data: Option<PathBuf>,
    /// Evaluation data folder.
    pub test_data: Option<PathBuf>,
    /// Checkpoint root.
    pub checkpoint_dir: Option<PathBuf>,
    /// Final model folder.
    pub model_dir: Option<PathBuf>,
    /// Hyperparameters file.
    pub hyperparameters: Option<PathBuf>,
    /// Host name used to namespace checkpoints.
    pub host: Option<String>,
}

/// Where everything is, once resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Paths {
    /// Training data folder.
    pub data: PathBuf,
    /// Evaluation data folder, when one exists.
    pub test_data: Option<PathBuf>,
    /// Checkpoint root (synced to S3 by SageMaker).
    pub checkpoint_dir: PathBuf,
    /// Whether SageMaker syncs the checkpoint root to S3 (`checkpointconfig.json` names an
    /// `S3Uri`): its uploader then deletes in S3 what is deleted locally.
    pub checkpoint_synced: bool,
    /// Final model folder (uploaded as model.tar.gz by SageMaker).
    pub model_dir: PathBuf,
    /// Hyperparameters file, when one exists.
    pub hyperparameters: Option<PathBuf>,
    /// Where SageMaker reads a failure reason from.
    pub failure_file: PathBuf,
    /// This host's name: checkpoints are namespaced by it.
    pub host: String,
}

/// What resolution reads from the outside world.
pub trait Environment {
    /// An environment variable.
    fn var(&self, name: &str) -> Option<String>;
    /// A small file's contents, if it exists.
    fn read(&self, path: &Path) -> Option<Vec<u8>>;
    /// Whether a path exists.
    fn exists(&self, path: &Path) -> bool;
}

/// The real process environment and disk.
pub struct RealEnvironment;

impl Environment for RealEnvironment {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
    fn read(&self, path: &Path) -> Option<Vec<u8>> {
        std::fs::read(path).ok()
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}

/// Resolves every path: flag, then `SM_*` variable, then SageMaker's config files, then the
/// `/opt/ml` default.
pub fn resolve(
    o: &Overrides,
    env: &dyn Environment,
    train_channel: &str,
    test_channel: &str,
) -> Paths {
    let opt = PathBuf::from(
        env.var("SPOTCHECK_OPT_ML")
            .unwrap_or_else(|| OPT_ML.to_string()),
    );
    let channel_var = |c: &str| format!("SM_CHANNEL_{}", c.to_ascii_uppercase().replace('-', "_"));
    let data = o
        .data
        .clone()
        .or_else(|| env.var(&channel_var(train_channel)).map(PathBuf::from))
        .unwrap_or_else(|| opt.join("input/data").join(train_channel));
    let test_data = o
        .test_data
        .clone()
        .or_else(|| env.var(&channel_var(test_channel)).map(PathBuf::from))
        .or_else(|| {
            let p = opt.join("input/data").join(test_channel);
            env.exists(&p).then_some(p)
        });
    let checkpoint_config = env
        .read(&opt.join("input/config/checkpointconfig.json"))
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let config_str = |key: &str| {
        checkpoint_config
            .as_ref()
            .and_then(|v| v.get(key))
            .and_then(|p| p.as_str())
            .filter(|p| !p.is_empty())
    };
    let config_dir = config_str("LocalPath").map(PathBuf::from);
    let checkpoint_dir = o
        .checkpoint_dir
        .clone()
        .or_else(|| config_dir.clone())
        .unwrap_or_else(|| opt.join("checkpoints"));
    // SageMaker syncs its LocalPath (default /opt/ml/checkpoints), not a directory a flag
    // chose elsewhere.
    let synced_dir = config_dir.unwrap_or_else(|| opt.join("checkpoints"));
    let checkpoint_synced = config_str("S3Uri").is_some() && checkpoint_dir == synced_dir;
    let model_dir = o
        .model_dir
        .clone()
        .or_else(|| env.var("SM_MODEL_DIR").map(PathBuf::from))
        .unwrap_or_else(|| opt.join("model"));
    let hyperparameters = o.hyperparameters.clone().or_else(|| {
        let p = opt.join("input/config/hyperparameters.json");
        env.exists(&p).then_some(p)
    });
    let host = o
        .host
        .clone()
        .or_else(|| env.var("SM_CURRENT_HOST"))
        .or_else(|| {
            env.read(&opt.join("input/config/resourceconfig.json"))
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| {
                    v.get("current_host")
                        .and_then(|h| h.as_str())
                        .map(String::from)
                })
        })
        .unwrap_or_else(|| "algo-1".to_string());
    let failure_file = env
        .var("SM_OUTPUT_FAILURE")
        .map(PathBuf::from)
        .unwrap_or_else(|| opt.join("output/failure"));
    Paths {
        data,
        test_data,
        checkpoint_dir,
        checkpoint_synced,
        model_dir,
        hyperparameters,
        failure_file,
        host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Fake {
        vars: HashMap<String, String>,
        files: HashMap<PathBuf, Vec<u8>>,
    }

    impl Environment for Fake {
        fn var(&self, name: &str) -> Option<String> {
            self.vars.get(name).cloned()
        }
        fn read(&self, path: &Path) -> Option<Vec<u8>> {
            self.files.get(path).cloned()
        }
        fn exists(&self, path: &Path) -> bool {
            self.files.contains_key(path)
        }
    }

    #[test]
    fn bare_container_uses_opt_ml_defaults() {
        let p = resolve(&Overrides::default(), &Fake::default(), "train", "test");
        assert_eq!(p.data, PathBuf::from("/opt/ml/input/data/train"));
        assert_eq!(p.checkpoint_dir, PathBuf::from("/opt/ml/checkpoints"));
        assert!(!p.checkpoint_synced, "no CheckpointConfig: nothing uploads");
        assert_eq!(p.model_dir, PathBuf::from("/opt/ml/model"));
        assert_eq!(p.test_data, None);
        assert_eq!(p.hyperparameters, None);
        assert_eq!(p.host, "algo-1");
    }

    #[test]
    fn sagemaker_env_and_config_files_are_honoured() {
        let mut env = Fake::default();
        env.vars
            .insert("SM_CHANNEL_TRAINING".into(), "/data/tr".into());
        env.vars.insert("SM_MODEL_DIR".into(), "/m".into());
        env.vars.insert("SM_CURRENT_HOST".into(), "algo-2".into());
        env.files.insert(
            "/opt/ml/input/config/checkpointconfig.json".into(),
            br#"{"LocalPath":"/ckpt","S3Uri":"s3://b/p"}"#.to_vec(),
        );
        env.files.insert(
            "/opt/ml/input/config/hyperparameters.json".into(),
            b"{}".to_vec(),
        );
        env.files.insert("/opt/ml/input/data/test".into(), vec![]);
        let p = resolve(&Overrides::default(), &env, "training", "test");
        assert_eq!(p.data, PathBuf::from("/data/tr"));
        assert_eq!(p.model_dir, PathBuf::from("/m"));
        assert_eq!(p.checkpoint_dir, PathBuf::from("/ckpt"));
        assert!(p.checkpoint_synced);
        assert_eq!(p.host, "algo-2");
        assert_eq!(p.test_data, Some(PathBuf::from("/opt/ml/input/data/test")));
        assert!(p.hyperparameters.is_some());
    }

    #[test]
    fn flags_win_over_everything() {
        let mut env = Fake::default();
        env.vars.insert("SM_MODEL_DIR".into(), "/m".into());
        let o = Overrides {
            model_dir: Some("/flag".into()),
            host: Some("h".into()),
            ..Default::default()
        };
        let p = resolve(&o, &env, "train", "test");
        assert_eq!(p.model_dir, PathBuf::from("/flag"));
        assert_eq!(p.host, "h");
    }

    #[test]
    fn the_sync_applies_to_its_own_local_path_only() {
        let mut env = Fake::default();
        env.files.insert(
            "/opt/ml/input/config/checkpointconfig.json".into(),
            br#"{"S3Uri":"s3://b/p"}"#.to_vec(),
        );
        let p = resolve(&Overrides::default(), &env, "train", "test");
        assert_eq!(p.checkpoint_dir, PathBuf::from("/opt/ml/checkpoints"));
        assert!(p.checkpoint_synced, "the default LocalPath is synced");
        let o = Overrides {
            checkpoint_dir: Some("/elsewhere".into()),
            ..Default::default()
        };
        assert!(!resolve(&o, &env, "train", "test").checkpoint_synced);
    }

    #[test]
    fn resource_config_names_the_host() {
        let mut env = Fake::default();
        env.files.insert(
            "/opt/ml/input/config/resourceconfig.json".into(),
            br#"{"current_host":"algo-3","hosts":["algo-1","algo-2","algo-3"]}"#.to_vec(),
        );
        assert_eq!(
            resolve(&Overrides::default(), &env, "train", "test").host,
            "algo-3"
        );
    }
}
