//! `spotcheck demo`: the whole system on one machine, end to end.
//!
//! Owns the demo's orchestration (the imperative shell around [`crate::report`]):
//!
//! 1. Train the uninterrupted reference: a plain `train` run with the same seed and
//!    hyperparameters. Its wall time also calibrates the time scale, so that the reference's
//!    length maps to [`DemoConfig::simulated_hours`] of simulated time whatever the machine.
//! 2. Start a [`Stack`] (embedded S3, local SageMaker, spot market, control plane with the
//!    demo's policy behind the bus that applies the infra template's rules) and create the
//!    managed-spot job with the real `aws-sdk-sagemaker` client.
//! 3. Let the market interrupt it; SageMaker (the local service) restarts it inside
//!    MaxWaitTimeInSeconds; the control plane relaunches it after MaxWaitTimeExceeded, down the
//!    instance ladder when capacity never arrives; until the lineage completes or gives up.
//! 4. Download the final `model.tar.gz`, compare `model.safetensors` and
//!    `optimizer.safetensors` with the reference byte for byte, and write `report.txt`,
//!    `report.json` and the self-contained `report.html`.
//!
//! Progress goes to a callback; nothing here prints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spotcheck_aws::Outcome;
use spotcheck_control::{Action, Policy, PriceTable};

use crate::control::Delivery;
use crate::market::{MarketConfig, Trace};
use crate::report::{self, parse_log, Inputs, Relaunch, Report};
use crate::service::{Note, ServiceConfig};
use crate::stack::{Stack, StackConfig};
use crate::sync::UploadLimits;

/// Where Debian's `dataset-fashion-mnist` package puts the data.
pub const FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// The bucket the demo's job uses.
pub const DEMO_BUCKET: &str = "spotcheck-demo";

/// What the demo's job trains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Framework {
    /// The Rust trainer ([`DemoConfig::trainer`]): the default image's program.
    Rust,
    /// A PyTorch script using the `spotcheck` package, started as the PyTorch image starts
    /// it: the job's `ContainerEntrypoint` is `<launcher> run --` (the image's ENTRYPOINT)
    /// and its `ContainerArguments` are `<python> <script>`.
    PyTorch(PyTorchJob),
}

/// The programs a PyTorch demo job runs (absolute paths: the service starts them in the
/// instance directory).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PyTorchJob {
    /// A Python with torch, torchdata, safetensors and the `spotcheck` package.
    pub python: PathBuf,
    /// The training script (`examples/pytorch/train.py`).
    pub script: PathBuf,
    /// The `spotcheck` binary, whose `run` is the container's PID 1.
    pub launcher: PathBuf,
}

/// How the demo runs.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// Work directory (job trees, logs, S3 files, reports).
    pub workdir: PathBuf,
    /// The `train` binary.
    pub trainer: PathBuf,
    /// What the job trains.
    pub framework: Framework,
    /// Fashion-MNIST (IDX files).
    pub data: PathBuf,
    /// Seed of the market and of training.
    pub seed: u64,
    /// Spot interruptions per simulated hour and instance type.
    pub interruptions_per_hour: f64,
    /// A trace replacing the random market.
    pub trace: Option<Trace>,
    /// Optimizer steps (the run's length).
    pub max_steps: u64,
    /// Hyperparameters added to or replacing the demo's.
    pub hyperparameters: BTreeMap<String, String>,
    /// The control plane's base policy (the ladder's first rung is the job's type).
    pub policy: Policy,
    /// The first job's instance type.
    pub instance_type: String,
    /// Instances per job (SageMaker's `InstanceCount`): more than one trains data-parallel
    /// (the PyTorch example over gloo; the Rust trainer is single-host).
    pub instances: u32,
    /// Simulated hours the reference run's wall time maps to.
    pub simulated_hours: f64,
    /// Probability that an outage outlasts MaxWaitTimeInSeconds.
    pub long_outage_probability: f64,
    /// Probability that a reclaim warns the trainer (SIGTERM) rather than killing it.
    pub reclaim_warning_probability: f64,
    /// The checkpoint uploader's lag and bandwidth (simulated time).
    pub upload: UploadLimits,
    /// Wall seconds the trainer gets between SIGTERM and SIGKILL (at least SageMaker's 120
    /// simulated seconds).
    pub grace_wall_seconds: f64,
    /// Give up waiting for the lineage after this much wall time.
    pub timeout: Duration,
}

impl DemoConfig {
    /// The defaults: about two minutes of CPU training, ~1.5 interruptions per simulated hour,
    /// half of them without a warning, and a checkpoint uploader that lags a second and ships
    /// 256 KiB/s (a few seconds per checkpoint of the demo's model).
    pub fn new(workdir: PathBuf, trainer: PathBuf) -> Self {
        DemoConfig {
            workdir,
            trainer,
            framework: Framework::Rust,
            data: PathBuf::from(FASHION_MNIST),
            seed: 6,
            interruptions_per_hour: 1.5,
            trace: None,
            max_steps: 600,
            hyperparameters: BTreeMap::new(),
            policy: Policy {
                instance_ladder: vec!["ml.g4dn.xlarge".into(), "ml.g5.xlarge".into()],
                on_demand_after_interruptions: Some(6),
                ..Policy::default()
            },
            instance_type: "ml.g4dn.xlarge".into(),
            instances: 1,
            simulated_hours: 4.0,
            long_outage_probability: 0.2,
            reclaim_warning_probability: 0.5,
            upload: UploadLimits {
                lag: Duration::from_secs(60),
                bandwidth: Some(256 << 10),
            },
            grace_wall_seconds: 3.0,
            timeout: Duration::from_secs(900),
        }
    }

    /// The hyperparameters both runs use. Checkpointing is left at the trainer's defaults
    /// (the adaptive interval), as a user would leave it. The PyTorch script trains its small
    /// dense network (the convnet is `--hp model=convnet`: several times slower on CPU) and logs
    /// JSON events, which the report reads.
    pub fn effective_hyperparameters(&self) -> BTreeMap<String, String> {
        let framework: &[(&str, &str)] = match self.framework {
            Framework::Rust => &[
                ("model_width", "8"),
                ("model_hidden", "64"),
                ("backend", "cpu"),
            ],
            Framework::PyTorch(_) => &[("model", "tiny"), ("log_format", "json")],
        };
        let mut hp: BTreeMap<String, String> = [
            ("seed", self.seed.to_string()),
            // Enough passes over Fashion-MNIST's 60,000 images (937 full batches of 64) for
            // `max_steps`, which ends the run.
            ("epochs", self.max_steps.div_ceil(937).to_string()),
            ("max_steps", self.max_steps.to_string()),
            ("batch_size", "64".into()),
            ("log_every_steps", "10".into()),
        ]
        .into_iter()
        .chain(framework.iter().map(|&(k, v)| (k, v.to_owned())))
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        hp.extend(self.hyperparameters.clone());
        hp
    }
}

/// The managed job's hyperparameters: the reference's, plus the interruption rate the
/// process should plan its adaptive checkpoint interval for, in *its* time. The process
/// measures wall seconds while the market runs `scale` times faster, so a rate per simulated
/// hour is `scale` times that per wall hour; without this the process would checkpoint as if
/// interruptions came `scale` times less often than they do. A rate the user set is kept.
fn managed_hyperparameters(
    hp: &BTreeMap<String, String>,
    interruptions_per_simulated_hour: f64,
    scale: f64,
) -> BTreeMap<String, String> {
    let mut hp = hp.clone();
    hp.entry("interruptions_per_hour".into())
        .or_insert_with(|| format!("{:.3}", interruptions_per_simulated_hour.max(0.0) * scale));
    hp
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A prerequisite is missing.
    #[error("{0}")]
    Missing(String),
    /// The settings do not make a demo (e.g. several instances of the single-host trainer).
    #[error("{0}")]
    Config(String),
    /// The reference run failed.
    #[error("the reference run failed: {0}")]
    Reference(String),
    /// The stack could not start.
    #[error(transparent)]
    Stack(#[from] crate::stack::StackError),
    /// A SageMaker call failed.
    #[error("CreateTrainingJob failed: {0}")]
    Create(String),
    /// The lineage did not end in time.
    #[error("the lineage did not end within {0:?}")]
    Timeout(Duration),
    /// Files could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DemoError + '_ {
    move |source| DemoError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What the demo produced.
#[derive(Debug)]
pub struct DemoOutcome {
    /// The report.
    pub report: Report,
    /// Its text.
    pub text: String,
    /// `report.html`.
    pub html: PathBuf,
    /// `report.json`.
    pub json: PathBuf,
}

/// The dataset, or exactly what to do to get it.
pub fn check_data(data: &Path) -> Result<(), DemoError> {
    if data.join("train-images-idx3-ubyte.gz").exists()
        || data.join("train-images-idx3-ubyte").exists()
    {
        return Ok(());
    }
    Err(DemoError::Missing(format!(
        "Fashion-MNIST is not in {}. Install Debian's package: `sudo apt-get install dataset-fashion-mnist` \
         (it puts the IDX files in {FASHION_MNIST}), or pass --data DIR with train-images-idx3-ubyte.gz, \
         train-labels-idx1-ubyte.gz and the t10k-* files.",
        data.display()
    )))
}

/// Most instances a demo job may have (the local service's limit).
pub const MAX_INSTANCES: u32 = 8;

/// The programs the demo starts exist, or exactly what to do.
fn check_programs(config: &DemoConfig) -> Result<(), DemoError> {
    let missing = |what: &str, path: &Path, how: &str| {
        Err(DemoError::Missing(format!(
            "{what} {} does not exist: {how}",
            path.display()
        )))
    };
    if !(1..=MAX_INSTANCES).contains(&config.instances) {
        return Err(DemoError::Config(format!(
            "instances must be 1 to {MAX_INSTANCES}, not {}",
            config.instances
        )));
    }
    if config.instances > 1 && matches!(config.framework, Framework::Rust) {
        return Err(DemoError::Config(
            "the Rust trainer is single-host: run more than one instance with --framework pytorch"
                .into(),
        ));
    }
    match &config.framework {
        Framework::Rust if !config.trainer.is_file() => missing(
            "the trainer",
            &config.trainer,
            "build it with `cargo build -p spotcheck-trainer --bin train` (or pass --trainer PATH)",
        ),
        Framework::Rust => Ok(()),
        Framework::PyTorch(job) if !job.python.is_file() => missing(
            "the Python",
            &job.python,
            "`bash scripts/python-tests.sh install` creates .venv-torch with PyTorch and the \
             spotcheck package (or pass --python PATH)",
        ),
        Framework::PyTorch(job) if !job.script.is_file() => missing(
            "the training script",
            &job.script,
            "pass --script PATH (examples/pytorch/train.py in this repository)",
        ),
        Framework::PyTorch(job) if !job.launcher.is_file() => missing(
            "the launcher",
            &job.launcher,
            "build it with `cargo build --bin spotcheck`",
        ),
        Framework::PyTorch(_) => Ok(()),
    }
}

fn last_step(log: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    let p = parse_log("", 0, &text);
    Some(p.last_step)
}

/// Runs the trainer outside the service (the uninterrupted reference); returns its wall time.
/// With several instances, one process per rank on loopback (as `torchrun` on one machine
/// would start them), sharing the checkpoint and model folders; rank 0 logs to `train.log`.
async fn reference_run(
    config: &DemoConfig,
    hp: &BTreeMap<String, String>,
    dir: &Path,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<f64, DemoError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::create_dir_all(dir.join("opt/ml/output")).map_err(io(dir))?;
    let program = match &config.framework {
        Framework::Rust => &config.trainer,
        Framework::PyTorch(job) => {
            // The script reads its hyperparameters where SageMaker puts them.
            let file = dir.join("opt/ml/input/config/hyperparameters.json");
            std::fs::create_dir_all(dir.join("opt/ml/input/config")).map_err(io(dir))?;
            std::fs::write(&file, serde_json::to_vec(hp).unwrap_or_default()).map_err(io(&file))?;
            &job.python
        }
    };
    let port = free_port().map_err(io(dir))?;
    let log = dir.join("train.log");
    let started = Instant::now();
    let mut children = Vec::new();
    for rank in 0..config.instances {
        let log = if rank == 0 {
            log.clone()
        } else {
            dir.join(format!("train-{rank}.log"))
        };
        let out = std::fs::File::create(&log).map_err(io(&log))?;
        let err = out.try_clone().map_err(io(&log))?;
        let mut cmd = tokio::process::Command::new(program);
        match &config.framework {
            Framework::Rust => {
                for (k, v) in hp {
                    cmd.arg("--hp").arg(format!("{k}={v}"));
                }
            }
            Framework::PyTorch(job) => {
                cmd.arg(&job.script);
            }
        }
        if config.instances > 1 {
            cmd.env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", config.instances.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string());
        }
        cmd.arg("--data")
            .arg(&config.data)
            .arg("--checkpoint-dir")
            .arg(dir.join("checkpoints"))
            .arg("--model-dir")
            .arg(dir.join("model"))
            .env("SPOTCHECK_OPT_ML", dir.join("opt/ml"))
            .env("SPOTCHECK_IMDS", "off")
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| {
            DemoError::Reference(format!("cannot start {}: {e}", program.display()))
        })?;
        children.push((child, log));
    }
    for (rank, (mut child, rank_log)) in children.into_iter().enumerate() {
        let status = loop {
            tokio::select! {
                s = child.wait() => break s,
                _ = tokio::time::sleep(Duration::from_secs(3)) => {
                    if let Some(step) = last_step(&log) {
                        progress(&format!("  reference run: step {step}/{}", config.max_steps));
                    }
                }
            }
        };
        let status = status.map_err(|e| DemoError::Reference(e.to_string()))?;
        if !status.success() {
            let tail = std::fs::read_to_string(&rank_log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            return Err(DemoError::Reference(format!(
                "rank {rank}: exit {status}; last log lines: {}",
                tail.join(" | ")
            )));
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

/// A TCP port free on loopback now (for the reference ranks' rendezvous).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

fn describe_delivery(d: &Delivery, origin: i64) -> Option<String> {
    let detail = &d.event["detail"];
    let name = detail["TrainingJobName"].as_str()?;
    let t = spotcheck_control::Timestamp::parse(d.event["time"].as_str()?).ok()?;
    let s = ((t.epoch_ms() - origin).max(0) / 1000) as u64;
    let mut line = format!(
        "  [{}:{:02}:{:02} sim] {name}: {}/{}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        detail["TrainingJobStatus"].as_str().unwrap_or("?"),
        detail["SecondaryStatus"].as_str().unwrap_or("?")
    );
    if let Some(Ok(h)) = &d.handled {
        if let Some(decision) = &h.decision {
            line.push_str(&format!(
                "  → control plane: {} ({})",
                decision.action_name(),
                decision.reason
            ));
        }
    }
    Some(line)
}

/// Extracts `model.tar.gz` bytes into `dest`.
fn extract(bytes: &[u8], dest: &Path) -> Result<(), DemoError> {
    if dest.exists() {
        std::fs::remove_dir_all(dest).map_err(io(dest))?;
    }
    std::fs::create_dir_all(dest).map_err(io(dest))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    archive.unpack(dest).map_err(io(dest))
}

/// Runs the demo (see the module doc); `progress` receives human-readable lines.
pub async fn run(
    config: DemoConfig,
    progress: Arc<dyn Fn(&str) + Send + Sync>,
) -> Result<DemoOutcome, DemoError> {
    // Every path handed to a child process must be absolute: the service starts the trainer
    // in its instance directory.
    let mut config = config;
    for path in [&mut config.workdir, &mut config.trainer, &mut config.data] {
        *path = crate::absolute(path);
    }
    if let Framework::PyTorch(job) = &mut config.framework {
        for path in [&mut job.python, &mut job.script, &mut job.launcher] {
            *path = crate::absolute(path);
        }
    }
    check_data(&config.data)?;
    check_programs(&config)?;
    std::fs::create_dir_all(&config.workdir).map_err(io(&config.workdir))?;
    let hp = config.effective_hyperparameters();

    progress(&format!(
        "1/4 Uninterrupted reference run ({} steps, seed {}) — also calibrates simulated time",
        config.max_steps, config.seed
    ));
    let reference_dir = config.workdir.join("reference");
    let reference_wall = reference_run(&config, &hp, &reference_dir, progress.as_ref()).await?;
    let target = config.simulated_hours * 3600.0;
    let scale = (target / reference_wall.max(1.0)).max(1.0);
    progress(&format!(
        "  reference done in {reference_wall:.1} s wall; time scale {scale:.0}x (the run ≈ {:.1} simulated hours)",
        config.simulated_hours
    ));

    // Stopping conditions in simulated seconds.
    let max_runtime = (target * 4.0).ceil() as u64;
    let max_wait = max_runtime + 3600;
    let mut service = ServiceConfig::new(config.workdir.join("service"), config.trainer.clone());
    if service.workdir.exists() {
        std::fs::remove_dir_all(&service.workdir).map_err(io(&service.workdir))?;
    }
    service.time_scale = scale;
    service.fast_forward = true;
    service.grace_seconds = (config.grace_wall_seconds * scale).max(120.0);
    service.market = MarketConfig {
        seed: config.seed,
        interruptions_per_hour: config.interruptions_per_hour,
        short_outage_mean_seconds: 600.0,
        long_outage_probability: config.long_outage_probability,
        long_outage_seconds: (max_wait as f64 * 1.2, max_wait as f64 * 3.0),
        spot_discount: 0.7,
        reclaim_warning_probability: config.reclaim_warning_probability,
        trace: config.trace.clone(),
    };
    service.upload = config.upload;
    let mut stack_config = StackConfig::new(service);
    stack_config.control_plane = Some(config.policy.clone());
    stack_config.buckets = vec![DEMO_BUCKET.into()];
    let origin = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let origin2 = origin.clone();
    let progress2 = progress.clone();
    let stack = Stack::start(stack_config, move |d| {
        if let Some(line) = describe_delivery(d, origin2.load(std::sync::atomic::Ordering::SeqCst))
        {
            progress2(&line);
        }
    })
    .await?;
    origin.store(
        stack.service.clock().now_ms(),
        std::sync::atomic::Ordering::SeqCst,
    );

    progress(&format!(
        "2/4 Managed spot training on the local SageMaker ({}), S3 ({}); market: {} interruptions/h, seed {}; ladder {}",
        stack.sagemaker.endpoint(),
        stack.s3_endpoint,
        config.interruptions_per_hour,
        config.seed,
        config.policy.instance_ladder.join(" → ")
    ));
    let sm = stack.sagemaker_client();
    use aws_sdk_sagemaker::types::{
        AlgorithmSpecification, Channel, CheckpointConfig, DataSource, OutputDataConfig,
        ResourceConfig, S3DataSource, S3DataType, StoppingCondition, Tag, TrainingInputMode,
        TrainingInstanceType,
    };
    let (name, algorithm) = match &config.framework {
        Framework::Rust => (
            format!("fmnist-demo-{}", config.seed),
            AlgorithmSpecification::builder().training_image("spotcheck-trainer:latest"),
        ),
        Framework::PyTorch(job) => {
            let text = |p: &Path| p.to_string_lossy().into_owned();
            (
                format!("fmnist-pytorch-demo-{}", config.seed),
                AlgorithmSpecification::builder()
                    .training_image("spotcheck-pytorch:latest")
                    .set_container_entrypoint(Some(vec![
                        text(&job.launcher),
                        "run".into(),
                        "--".into(),
                    ]))
                    .set_container_arguments(Some(vec![text(&job.python), text(&job.script)])),
            )
        }
    };
    let channel = Channel::builder()
        .channel_name("train")
        .data_source(
            DataSource::builder()
                .s3_data_source(
                    S3DataSource::builder()
                        .s3_data_type(S3DataType::S3Prefix)
                        .s3_uri(format!("file://{}", config.data.display()))
                        .build(),
                )
                .build(),
        )
        .build();
    let started = Instant::now();
    sm.create_training_job()
        .training_job_name(&name)
        .algorithm_specification(
            algorithm
                .training_input_mode(TrainingInputMode::File)
                .build(),
        )
        .role_arn("arn:aws:iam::000000000000:role/spotcheck-demo")
        .set_hyper_parameters(Some(
            managed_hyperparameters(&hp, config.interruptions_per_hour, scale)
                .into_iter()
                .collect(),
        ))
        .input_data_config(channel)
        .output_data_config(
            OutputDataConfig::builder()
                .s3_output_path(format!("s3://{DEMO_BUCKET}/models"))
                .build(),
        )
        .resource_config(
            ResourceConfig::builder()
                .instance_type(TrainingInstanceType::from(config.instance_type.as_str()))
                .instance_count(config.instances as i32)
                .volume_size_in_gb(10)
                .build(),
        )
        .stopping_condition(
            StoppingCondition::builder()
                .max_runtime_in_seconds(max_runtime as i32)
                .max_wait_time_in_seconds(max_wait as i32)
                .build(),
        )
        .enable_managed_spot_training(true)
        .checkpoint_config(
            CheckpointConfig::builder()
                .s3_uri(format!("s3://{DEMO_BUCKET}/checkpoints/{name}"))
                .build(),
        )
        .tags(
            Tag::builder()
                .key("spotcheck:enabled")
                .value("true")
                .build(),
        )
        .send()
        .await
        .map_err(|e| {
            DemoError::Create(aws_sdk_sagemaker::error::DisplayErrorContext(&e).to_string())
        })?;

    // Training progress while the lineage runs.
    let watcher = {
        let service = stack.service.clone();
        let progress = progress.clone();
        let max_steps = config.max_steps;
        tokio::spawn(async move {
            let mut last = None;
            loop {
                tokio::time::sleep(Duration::from_secs(4)).await;
                let running = service
                    .jobs()
                    .into_iter()
                    .filter(|j| j.state.process_alive())
                    .find_map(|j| {
                        j.notes.iter().rev().find_map(|n| match &n.note {
                            Note::ProcessStarted { instance, log, .. } => {
                                Some((j.name.clone(), *instance, log.clone()))
                            }
                            _ => None,
                        })
                    });
                if let Some((job, instance, log)) = running {
                    if let Some(step) = last_step(&log) {
                        if last != Some((instance, step)) {
                            progress(&format!(
                                "  … {job} instance {instance}: step {step}/{max_steps}"
                            ));
                            last = Some((instance, step));
                        }
                    }
                }
            }
        })
    };
    // The lineage has ended when every job is terminal and no event is still being handled
    // (the control plane creates a relaunch before it acknowledges the event).
    let deadline = Instant::now() + config.timeout;
    let ended = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let terminal = stack
            .service
            .wait_until(left, |jobs| jobs.iter().all(|j| j.state.is_terminal()))
            .await;
        let idle = stack
            .service
            .wait_idle(deadline.saturating_duration_since(Instant::now()))
            .await;
        if terminal && idle && stack.service.jobs().iter().all(|j| j.state.is_terminal()) {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
    };
    watcher.abort();
    if !ended {
        return Err(DemoError::Timeout(config.timeout));
    }
    let lineage_wall = started.elapsed().as_secs_f64();

    progress("3/4 Comparing the final model with the reference");
    let jobs = stack.service.jobs();
    let deliveries = stack
        .deliveries
        .lock()
        .map(|d| d.clone())
        .unwrap_or_default();
    let relaunches: Vec<Relaunch> = deliveries
        .iter()
        .filter_map(|d| {
            let h = d.handled.as_ref()?.as_ref().ok()?;
            if !matches!(h.outcome, Outcome::Relaunched) {
                return None;
            }
            let decision = h.decision.as_ref()?;
            let Action::Relaunch(plan) = &decision.action else {
                return None;
            };
            Some(Relaunch {
                from: plan.parent.clone(),
                to: plan.job_name.clone(),
                instance_type: plan.instance_type.clone(),
                spot: plan.spot,
                reason: decision.reason.clone(),
            })
        })
        .collect();
    let mut ordered = jobs.clone();
    ordered.sort_by_key(|j| j.state.created);
    let mut processes = Vec::new();
    for j in &ordered {
        for n in &j.notes {
            if let Note::ProcessStarted {
                instance,
                log,
                host,
            } = &n.note
            {
                if host != crate::report::LEAD_HOST {
                    continue; // the ranks train in lockstep: rank 0's log is the job's
                }
                let text = std::fs::read_to_string(log).unwrap_or_default();
                processes.push(parse_log(&j.name, *instance, &text));
            }
        }
    }
    let end = stack.service.clock().now_ms();
    let mut types: Vec<String> = ordered.iter().map(|j| j.instance_type.clone()).collect();
    types.dedup();
    let outages = types
        .iter()
        .flat_map(|t| {
            stack
                .service
                .outages(t, end)
                .into_iter()
                .map(move |o| (t.clone(), o))
        })
        .collect();
    let mut weights = Vec::new();
    if let Some(last) = ordered.last().filter(|j| j.state.status == "Completed") {
        if let Some(uri) = last.describe["ModelArtifacts"]["S3ModelArtifacts"].as_str() {
            let (bucket, key) = crate::sync::split_s3_uri(uri)
                .map(|(b, k)| (b, k.trim_end_matches('/').to_owned()))
                .map_err(|e| DemoError::Missing(e.to_string()))?;
            let dest = config.workdir.join("final-model");
            let tar = dest.with_extension("tar.gz");
            crate::sync::get_to_file(&stack.s3_client(), &bucket, &key, &tar)
                .await
                .map_err(|e| DemoError::Missing(format!("downloading {uri}: {e}")))?;
            let bytes = std::fs::read(&tar).map_err(io(&tar))?;
            extract(&bytes, &dest)?;
            for file in ["model.safetensors", "optimizer.safetensors"] {
                let a = std::fs::read(reference_dir.join("model").join(file)).ok();
                let b = std::fs::read(dest.join(file)).ok();
                weights.push((file.to_owned(), a.is_some() && a == b));
            }
        }
    }
    let prices = PriceTable::builtin();
    let report = report::build(
        &jobs,
        Inputs {
            relaunches,
            processes,
            outages,
            prices: &prices,
            weights,
            reference_wall_seconds: reference_wall,
            lineage_wall_seconds: lineage_wall,
            time_scale: scale,
        },
    );

    progress("4/4 Writing the report");
    let text = report::render_text(&report);
    let html = config.workdir.join("report.html");
    let json = config.workdir.join("report.json");
    std::fs::write(&html, crate::html::render(&report)).map_err(io(&html))?;
    std::fs::write(
        &json,
        serde_json::to_vec_pretty(&report).unwrap_or_default(),
    )
    .map_err(io(&json))?;
    let txt = config.workdir.join("report.txt");
    std::fs::write(&txt, &text).map_err(io(&txt))?;
    let decisions = config.workdir.join("decisions.jsonl");
    if let Some(cp) = &stack.control {
        std::fs::write(&decisions, cp.log.lines().join("\n")).map_err(io(&decisions))?;
    }
    Ok(DemoOutcome {
        report,
        text,
        html,
        json,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_managed_job_plans_for_the_interruption_rate_in_wall_time() {
        let hp: BTreeMap<String, String> = [("seed".to_owned(), "6".to_owned())].into();
        let managed = managed_hyperparameters(&hp, 1.5, 400.0);
        assert_eq!(managed["interruptions_per_hour"], "600.000");
        assert_eq!(managed["seed"], "6");
        let mut own = hp.clone();
        own.insert("interruptions_per_hour".into(), "2".into());
        assert_eq!(
            managed_hyperparameters(&own, 1.5, 400.0)["interruptions_per_hour"],
            "2"
        );
    }
}
