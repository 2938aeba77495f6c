//! Hyperparameters: the typed view of SageMaker's `hyperparameters.json`.
//!
//! SageMaker passes every value as a string; local runs may pass JSON numbers and booleans.
//! Unknown names and malformed values are errors at start — a typo must never silently fall
//! back to a default and train the wrong thing for hours. The table in [`SPEC`] is the single
//! source for names, types, defaults and meanings; `trainer/README.md` documents the same table
//! (a test keeps them in step).

use std::collections::BTreeMap;

use serde_json::Value;

/// Why a hyperparameter set was refused.
#[derive(Debug, thiserror::Error)]
pub enum HyperError {
    /// A name that the trainer does not know (most often a typo).
    #[error("unknown hyperparameter(s) {names:?}; known: {known}")]
    Unknown {
        /// The unknown names.
        names: Vec<String>,
        /// The known names, comma separated.
        known: String,
    },
    /// A value that does not parse as the hyperparameter's type or is out of range.
    #[error("hyperparameter `{name}` = {value}: {why}")]
    Invalid {
        /// The hyperparameter.
        name: String,
        /// The value as given.
        value: String,
        /// What was expected.
        why: String,
    },
    /// The file is not a JSON object.
    #[error("hyperparameters must be a JSON object of name → value: {0}")]
    NotAnObject(String),
}

/// One row of the hyperparameter table.
pub struct Spec {
    /// Name as written in `hyperparameters.json`.
    pub name: &'static str,
    /// Type, for documentation.
    pub kind: &'static str,
    /// Default, for documentation.
    pub default: &'static str,
    /// What it means.
    pub meaning: &'static str,
}

macro_rules! spec {
    ($($name:literal, $kind:literal, $default:literal, $meaning:literal;)*) => {
        /// Every hyperparameter the trainer accepts.
        pub const SPEC: &[Spec] = &[$(Spec { name: $name, kind: $kind, default: $default, meaning: $meaning }),*];
    };
}

spec! {
    "epochs", "u32", "1", "Passes over the training set.";
    "max_steps", "u64", "0", "Stop after this many optimizer steps in total (0: run all epochs).";
    "batch_size", "usize", "64", "Images per optimizer step.";
    "optimizer", "adamw|sgd", "adamw", "AdamW (decoupled weight decay) or SGD with momentum.";
    "learning_rate", "f64", "0.001", "Peak learning rate.";
    "weight_decay", "f64", "0.01", "Decoupled weight decay (AdamW) or L2 weight decay (SGD).";
    "momentum", "f64", "0.9", "SGD momentum.";
    "beta1", "f64", "0.9", "AdamW first-moment decay.";
    "beta2", "f64", "0.999", "AdamW second-moment decay.";
    "eps", "f64", "1e-8", "AdamW denominator epsilon.";
    "lr_schedule", "constant|cosine|step", "cosine", "Learning-rate schedule after warm-up.";
    "warmup_steps", "u64", "0", "Linear warm-up steps from 0 to the peak rate.";
    "lr_step_every", "u64", "1000", "Steps between decays for the `step` schedule.";
    "lr_step_gamma", "f64", "0.5", "Decay factor for the `step` schedule.";
    "seed", "u64", "42", "Seed for initialisation and data order; a run is a pure function of it.";
    "model_depth", "usize", "2", "Convolution blocks (3x3 conv, ReLU, 2x2 max-pool).";
    "model_width", "usize", "32", "Channels of the first block; each block doubles them.";
    "model_hidden", "usize", "128", "Width of the hidden dense layer before the classifier (0: none).";
    "dataset", "auto|idx|folder|synthetic", "auto", "Training data format; auto detects IDX files or class folders.";
    "num_classes", "usize", "0", "Classes; 0 takes them from the data (required for synthetic data).";
    "image_size", "usize", "0", "Resize folder images to this square size; size of synthetic images (0: 28).";
    "synthetic_samples", "usize", "4096", "Number of generated images for the synthetic dataset.";
    "synthetic_channels", "usize", "1", "Channels of generated images.";
    "train_channel", "string", "train", "SageMaker input channel holding the training data.";
    "test_channel", "string", "test", "Channel holding evaluation data (optional; IDX t10k files in the train channel also work).";
    "checkpoint_every_steps", "u64", "0", "Checkpoint every N steps (0: off).";
    "checkpoint_every_seconds", "f64", "0", "Checkpoint every T seconds of training (0: off).";
    "checkpoint_adaptive", "bool", "true", "Also checkpoint at the Young/Daly interval from the measured checkpoint cost (stall plus slowdown of the steps under a persist).";
    "interruptions_per_hour", "f64", "0.5", "Expected interruption rate, for the adaptive interval (observed restarts raise it).";
    "keep_checkpoints", "usize", "3", "Valid checkpoints kept per host (the newest is never deleted).";
    "backend", "auto|cpu|cuda|torch", "auto", "Compute backend; auto uses libtorch in a tch build, else CUDA when a driver and the cuda build are present, else the pure-Rust CPU backend.";
    "log_every_steps", "u64", "50", "Steps between log lines when not at a terminal.";
    "eval_batch_size", "usize", "512", "Images per batch when evaluating.";
}

/// Optimizer choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// AdamW with decoupled weight decay.
    AdamW,
    /// SGD with (heavy-ball) momentum.
    Sgd,
}

/// Learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Peak rate throughout.
    Constant,
    /// Cosine decay to zero at the last step.
    Cosine,
    /// Multiply by `lr_step_gamma` every `lr_step_every` steps.
    Step,
}

/// Training-data format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetKind {
    /// Detect from the channel's files.
    Auto,
    /// MNIST-family IDX files.
    Idx,
    /// One sub-folder of PNG/JPEG images per class.
    Folder,
    /// Generated images, for benchmarks.
    Synthetic,
}

/// Compute backend request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// libtorch in a `tch` build, else CUDA when available, else CPU.
    Auto,
    /// The pure-Rust CPU backend (deterministic).
    Cpu,
    /// burn's CUDA backend; an error when unavailable.
    Cuda,
    /// libtorch (PyTorch's kernels) on GPU 0 when CUDA is usable, else on the CPU; an error in a
    /// build without the `tch` feature.
    Torch,
}

/// The typed hyperparameters.
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub struct Hyperparameters {
    pub epochs: u32,
    pub max_steps: u64,
    pub batch_size: usize,
    pub optimizer: OptimizerKind,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub momentum: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub lr_schedule: ScheduleKind,
    pub warmup_steps: u64,
    pub lr_step_every: u64,
    pub lr_step_gamma: f64,
    pub seed: u64,
    pub model_depth: usize,
    pub model_width: usize,
    pub model_hidden: usize,
    pub dataset: DatasetKind,
    pub num_classes: usize,
    pub image_size: usize,
    pub synthetic_samples: usize,
    pub synthetic_channels: usize,
    pub train_channel: String,
    pub test_channel: String,
    pub checkpoint_every_steps: u64,
    pub checkpoint_every_seconds: f64,
    pub checkpoint_adaptive: bool,
    pub interruptions_per_hour: f64,
    pub keep_checkpoints: usize,
    pub backend: BackendKind,
    pub log_every_steps: u64,
    pub eval_batch_size: usize,
}

impl Default for Hyperparameters {
    fn default() -> Self {
        // Parsing the empty set applies exactly the documented defaults.
        Self::from_map(&BTreeMap::new()).expect("documented defaults parse")
    }
}

/// Reads a value as the text SageMaker would have sent.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.trim().to_string(),
        other => other.to_string(),
    }
}

struct Reader<'a> {
    map: &'a BTreeMap<String, Value>,
}

impl Reader<'_> {
    fn raw(&self, name: &str) -> String {
        match self.map.get(name) {
            Some(v) => text(v),
            None => SPEC
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.default.to_string())
                .unwrap_or_default(),
        }
    }

    fn invalid(&self, name: &str, why: impl Into<String>) -> HyperError {
        HyperError::Invalid {
            name: name.to_string(),
            value: self.raw(name),
            why: why.into(),
        }
    }

    fn parse<T: std::str::FromStr>(&self, name: &str, what: &str) -> Result<T, HyperError> {
        self.raw(name)
            .parse::<T>()
            .map_err(|_| self.invalid(name, format!("expected {what}")))
    }

    fn float(&self, name: &str, min: f64, max: f64) -> Result<f64, HyperError> {
        let v: f64 = self.parse(name, "a number")?;
        if !v.is_finite() || v < min || v > max {
            return Err(self.invalid(name, format!("expected a number in [{min}, {max}]")));
        }
        Ok(v)
    }

    fn positive(&self, name: &str) -> Result<usize, HyperError> {
        let v: usize = self.parse(name, "a positive integer")?;
        if v == 0 {
            return Err(self.invalid(name, "must be at least 1"));
        }
        Ok(v)
    }

    fn boolean(&self, name: &str) -> Result<bool, HyperError> {
        match self.raw(name).to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(self.invalid(name, "expected true or false")),
        }
    }

    fn choice<T: Copy>(&self, name: &str, options: &[(&str, T)]) -> Result<T, HyperError> {
        let raw = self.raw(name).to_ascii_lowercase();
        options
            .iter()
            .find(|(k, _)| *k == raw)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                let names: Vec<&str> = options.iter().map(|(k, _)| *k).collect();
                self.invalid(name, format!("expected one of {}", names.join(", ")))
            })
    }
}

impl Hyperparameters {
    /// Parses a JSON document (`hyperparameters.json`).
    pub fn from_json(bytes: &[u8]) -> Result<Self, HyperError> {
        let map: BTreeMap<String, Value> =
            serde_json::from_slice(bytes).map_err(|e| HyperError::NotAnObject(e.to_string()))?;
        Self::from_map(&map)
    }

    /// Parses a name → value map, refusing unknown names and malformed values.
    pub fn from_map(map: &BTreeMap<String, Value>) -> Result<Self, HyperError> {
        // SageMaker adds its own `sagemaker_*` entries for framework containers; they are not ours.
        let unknown: Vec<String> = map
            .keys()
            .filter(|k| !k.starts_with("sagemaker_") && !SPEC.iter().any(|s| s.name == k.as_str()))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            let known: Vec<&str> = SPEC.iter().map(|s| s.name).collect();
            return Err(HyperError::Unknown {
                names: unknown,
                known: known.join(", "),
            });
        }
        let r = Reader { map };
        let hp = Self {
            epochs: r.parse("epochs", "an integer")?,
            max_steps: r.parse("max_steps", "an integer")?,
            batch_size: r.positive("batch_size")?,
            optimizer: r.choice(
                "optimizer",
                &[("adamw", OptimizerKind::AdamW), ("sgd", OptimizerKind::Sgd)],
            )?,
            learning_rate: r.float("learning_rate", 0.0, 10.0)?,
            weight_decay: r.float("weight_decay", 0.0, 1.0)?,
            momentum: r.float("momentum", 0.0, 0.999_999)?,
            beta1: r.float("beta1", 0.0, 0.999_999)?,
            beta2: r.float("beta2", 0.0, 0.999_999_999)?,
            eps: r.float("eps", 1e-30, 1.0)?,
            lr_schedule: r.choice(
                "lr_schedule",
                &[
                    ("constant", ScheduleKind::Constant),
                    ("cosine", ScheduleKind::Cosine),
                    ("step", ScheduleKind::Step),
                ],
            )?,
            warmup_steps: r.parse("warmup_steps", "an integer")?,
            lr_step_every: r.positive("lr_step_every")? as u64,
            lr_step_gamma: r.float("lr_step_gamma", 0.0, 1.0)?,
            seed: r.parse("seed", "an unsigned integer")?,
            model_depth: r.parse("model_depth", "an integer")?,
            model_width: r.positive("model_width")?,
            model_hidden: r.parse("model_hidden", "an integer")?,
            dataset: r.choice(
                "dataset",
                &[
                    ("auto", DatasetKind::Auto),
                    ("idx", DatasetKind::Idx),
                    ("folder", DatasetKind::Folder),
                    ("synthetic", DatasetKind::Synthetic),
                ],
            )?,
            num_classes: r.parse("num_classes", "an integer")?,
            image_size: r.parse("image_size", "an integer")?,
            synthetic_samples: r.positive("synthetic_samples")?,
            synthetic_channels: r.positive("synthetic_channels")?,
            train_channel: r.raw("train_channel"),
            test_channel: r.raw("test_channel"),
            checkpoint_every_steps: r.parse("checkpoint_every_steps", "an integer")?,
            checkpoint_every_seconds: r.float("checkpoint_every_seconds", 0.0, 1e9)?,
            checkpoint_adaptive: r.boolean("checkpoint_adaptive")?,
            interruptions_per_hour: r.float("interruptions_per_hour", 0.0, 1e6)?,
            keep_checkpoints: r.positive("keep_checkpoints")?,
            backend: r.choice(
                "backend",
                &[
                    ("auto", BackendKind::Auto),
                    ("cpu", BackendKind::Cpu),
                    ("cuda", BackendKind::Cuda),
                    ("torch", BackendKind::Torch),
                ],
            )?,
            log_every_steps: r.positive("log_every_steps")? as u64,
            eval_batch_size: r.positive("eval_batch_size")?,
        };
        for channel in [&hp.train_channel, &hp.test_channel] {
            if channel.is_empty()
                || !channel
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(HyperError::Invalid {
                    name: "train_channel/test_channel".into(),
                    value: channel.clone(),
                    why: "channel names are letters, digits, '-' and '_'".into(),
                });
            }
        }
        if hp.model_depth > 8 {
            return Err(r.invalid("model_depth", "at most 8 blocks"));
        }
        Ok(hp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Hyperparameters, HyperError> {
        Hyperparameters::from_json(json.as_bytes())
    }

    #[test]
    fn sagemaker_strings_parse_as_typed_values() {
        let hp = parse(r#"{"epochs":"3","learning_rate":"0.01","optimizer":"SGD","checkpoint_adaptive":"false"}"#).unwrap();
        assert_eq!(hp.epochs, 3);
        assert_eq!(hp.learning_rate, 0.01);
        assert_eq!(hp.optimizer, OptimizerKind::Sgd);
        assert!(!hp.checkpoint_adaptive);
    }

    #[test]
    fn json_numbers_and_booleans_are_accepted() {
        let hp = parse(r#"{"epochs":2,"checkpoint_adaptive":true,"seed":7}"#).unwrap();
        assert_eq!((hp.epochs, hp.seed), (2, 7));
    }

    #[test]
    fn defaults_match_the_table() {
        let hp = Hyperparameters::default();
        assert_eq!(hp.batch_size, 64);
        assert_eq!(hp.optimizer, OptimizerKind::AdamW);
        assert_eq!(hp.lr_schedule, ScheduleKind::Cosine);
    }

    #[test]
    fn a_typo_is_an_error_not_a_default() {
        let err = parse(r#"{"learnig_rate":"0.1"}"#).unwrap_err();
        assert!(matches!(err, HyperError::Unknown { ref names, .. } if names == &["learnig_rate"]));
    }

    #[test]
    fn malformed_values_are_errors() {
        for bad in [
            r#"{"epochs":"three"}"#,
            r#"{"batch_size":"0"}"#,
            r#"{"learning_rate":"NaN"}"#,
            r#"{"learning_rate":"-1"}"#,
            r#"{"optimizer":"lion"}"#,
            r#"{"checkpoint_adaptive":"maybe"}"#,
            r#"{"train_channel":"../etc"}"#,
            r#"[1,2]"#,
        ] {
            assert!(parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn sagemaker_framework_entries_are_tolerated() {
        assert!(parse(r#"{"sagemaker_program":"x"}"#).is_ok());
    }

    #[test]
    fn readme_documents_every_hyperparameter() {
        let readme = include_str!("../README.md");
        for s in SPEC {
            assert!(
                readme.contains(&format!("`{}`", s.name)),
                "{} missing from trainer/README.md",
                s.name
            );
        }
    }
}
