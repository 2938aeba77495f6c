//! `spotcheck local serve` and `spotcheck demo`: flags parsed into the local crate's
//! configurations (no I/O here beyond reading the files the flags name), then run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use spotcheck_control::Policy;
use spotcheck_local::demo::{self, DemoConfig};
use spotcheck_local::market::{MarketConfig, Trace};
use spotcheck_local::service::ServiceConfig;
use spotcheck_local::stack::{Stack, StackConfig};
use spotcheck_local::sync::UploadLimits;

/// `spotcheck local …`.
#[derive(Subcommand)]
pub enum Local {
    /// Run the local SageMaker-compatible training service (and an embedded S3) on loopback.
    Serve(Serve),
}

/// Flags of the spot market, shared by `serve` and `demo`.
#[derive(Args, Clone)]
pub struct MarketFlags {
    /// Spot interruptions per simulated hour and instance type.
    #[arg(long)]
    pub interruptions_per_hour: Option<f64>,
    /// Seed of the random interruption process (and, for the demo, of training).
    #[arg(long)]
    pub seed: Option<u64>,
    /// A trace file of outages replacing the random process:
    /// {"outages": [{"at_seconds": 600, "duration_seconds": 120, "instance_type": "ml.g5.xlarge", "warning": false}]}.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Probability that a reclaim sends the trainer SIGTERM and a grace period; otherwise it is
    /// killed at once, as AWS may do (default 0.5).
    #[arg(long)]
    pub reclaim_warning_probability: Option<f64>,
    /// Simulated seconds before the checkpoint uploader picks a new file up (serve: 1, demo:
    /// 60).
    #[arg(long)]
    pub upload_lag_seconds: Option<f64>,
    /// Checkpoint upload bandwidth in bytes per simulated second; 0 for unlimited (serve:
    /// 100000000, demo: 262144).
    #[arg(long)]
    pub upload_bandwidth: Option<u64>,
}

impl MarketFlags {
    /// The reclaim-warning probability, checked.
    fn warning_probability(&self, default: f64) -> Result<f64> {
        let p = self.reclaim_warning_probability.unwrap_or(default);
        if !(0.0..=1.0).contains(&p) {
            bail!("--reclaim-warning-probability must be between 0 and 1");
        }
        Ok(p)
    }

    /// The uploader's limits, from the flags over `default`.
    fn upload(&self, default: UploadLimits) -> Result<UploadLimits> {
        let lag = match self.upload_lag_seconds {
            None => default.lag,
            Some(s) if s.is_finite() && s >= 0.0 => Duration::from_secs_f64(s),
            Some(_) => bail!("--upload-lag-seconds must be a number ≥ 0"),
        };
        let bandwidth = match self.upload_bandwidth {
            None => default.bandwidth,
            Some(0) => None,
            Some(b) => Some(b),
        };
        Ok(UploadLimits { lag, bandwidth })
    }
}

/// `spotcheck local serve`.
#[derive(Args)]
pub struct Serve {
    /// Address of the SageMaker endpoint.
    #[arg(long, default_value = "127.0.0.1:8780")]
    pub listen: SocketAddr,
    /// Address of the embedded S3.
    #[arg(long, default_value = "127.0.0.1:8781")]
    pub s3_listen: SocketAddr,
    /// Use this S3 endpoint (e.g. LocalStack's http://127.0.0.1:4566) instead of the embedded one.
    #[arg(long)]
    pub s3_endpoint: Option<String>,
    /// Work directory: job trees, logs, the embedded S3's files.
    #[arg(long, default_value = "work/local")]
    pub workdir: PathBuf,
    /// The program that training images run (default: `train` beside this binary).
    #[arg(long)]
    pub trainer: Option<PathBuf>,
    /// Map one training image to a program: IMAGE=PATH (repeatable).
    #[arg(long = "image", value_name = "IMAGE=PATH")]
    pub images: Vec<String>,
    /// Simulated seconds per wall second (billing seconds = wall seconds × this).
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Jump simulated time over idle stretches (every job waiting for capacity).
    #[arg(long)]
    pub fast_forward: bool,
    /// Simulated seconds between SIGTERM and SIGKILL.
    #[arg(long, default_value_t = 120.0)]
    pub grace_seconds: f64,
    /// Buckets to create at start (repeatable).
    #[arg(long = "bucket")]
    pub buckets: Vec<String>,
    /// Run the spotcheck control plane in-process (the Lambda's handler behind the template's
    /// rules), with this policy file (`-` for the defaults).
    #[arg(long)]
    pub control_plane: Option<String>,
    /// Also send every state-change event to this EventBridge endpoint (e.g. LocalStack).
    #[arg(long)]
    pub eventbridge_endpoint: Option<String>,
    #[command(flatten)]
    pub market: MarketFlags,
}

/// `spotcheck demo`.
#[derive(Args)]
pub struct Demo {
    /// Work directory (reports, job trees, S3 files).
    #[arg(long, default_value = "work/demo")]
    pub workdir: PathBuf,
    /// The `train` binary (default: beside this binary).
    #[arg(long)]
    pub trainer: Option<PathBuf>,
    /// Fashion-MNIST IDX directory.
    #[arg(long, default_value = demo::FASHION_MNIST)]
    pub data: PathBuf,
    /// What the job trains: the Rust trainer, or the PyTorch example under `spotcheck run`.
    #[arg(long, value_enum, default_value_t = FrameworkFlag::Rust)]
    pub framework: FrameworkFlag,
    /// With --framework pytorch: a Python with torch, torchdata, safetensors and the spotcheck
    /// package (`bash scripts/python-tests.sh install` makes .venv-torch).
    #[arg(long, default_value = ".venv-torch/bin/python")]
    pub python: PathBuf,
    /// With --framework pytorch: the training script.
    #[arg(long, default_value = "examples/pytorch/train.py")]
    pub script: PathBuf,
    /// Optimizer steps, the run's length [default: 600 for rust (~0.05 s each on 2 cores),
    /// 18000 for pytorch (~1 ms each on 2 cores, 2026-12-01; the script's start-up, ~5 s of
    /// it importing torch, is part of the run the simulated hours are calibrated on: the
    /// longer the run, the smaller its share, so a reclaim rarely catches a process before its
    /// first step)].
    #[arg(long)]
    pub steps: Option<u64>,
    /// Simulated hours the uninterrupted run's wall time maps to.
    #[arg(long, default_value_t = 4.0)]
    pub simulated_hours: f64,
    /// A policy JSON file for the control plane (default: ladder ml.g4dn.xlarge → ml.g5.xlarge, on-demand after 6 interruptions).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// The first job's instance type.
    #[arg(long, default_value = "ml.g4dn.xlarge")]
    pub instance_type: String,
    /// Instances per job (InstanceCount, 1–8): with --framework pytorch, the example trains
    /// data-parallel over gloo, one process per instance; a reclaim of any instance
    /// interrupts the whole job.
    #[arg(long, default_value_t = 1)]
    pub instances: u32,
    /// Extra hyperparameters NAME=VALUE (repeatable).
    #[arg(long = "hp", value_name = "NAME=VALUE")]
    pub hp: Vec<String>,
    /// Do not try to install the dataset package when it is missing.
    #[arg(long)]
    pub no_install: bool,
    /// Give up after this many wall seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout_seconds: u64,
    #[command(flatten)]
    pub market: MarketFlags,
}

/// `spotcheck demo --framework`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FrameworkFlag {
    /// The Rust trainer.
    Rust,
    /// The PyTorch example, through the `spotcheck` package and `spotcheck run`.
    Pytorch,
}

/// `train` beside the running `spotcheck` (both are built into the same target directory).
fn default_trainer() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the spotcheck binary")?;
    Ok(exe.with_file_name("train"))
}

fn read_trace(path: &Option<PathBuf>) -> Result<Option<Trace>> {
    path.as_ref()
        .map(|p| {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            Trace::from_json(&bytes).with_context(|| format!("--trace {}", p.display()))
        })
        .transpose()
}

fn read_policy(path: &Path) -> Result<Policy> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Policy::from_json(&bytes).with_context(|| format!("--policy {}", path.display()))
}

fn key_values(items: &[String], flag: &str) -> Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("{flag} {kv}: expected NAME=VALUE"))
        })
        .collect()
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SPOTCHECK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs `spotcheck local serve` until Ctrl-C.
pub fn serve(args: Serve) -> Result<ExitCode> {
    init_logging();
    let trainer = match args.trainer {
        Some(t) => t,
        None => default_trainer()?,
    };
    if !trainer.is_file() {
        bail!(
            "the trainer {} does not exist: build it with `cargo build -p spotcheck-trainer --bin train` or pass --trainer",
            trainer.display()
        );
    }
    let mut service = ServiceConfig::new(args.workdir.clone(), trainer);
    service.images.mapped = key_values(&args.images, "--image")?
        .into_iter()
        .map(|(k, v)| (k, PathBuf::from(v)))
        .collect();
    if !(args.time_scale.is_finite() && args.time_scale > 0.0) {
        bail!("--time-scale must be a positive number");
    }
    service.time_scale = args.time_scale;
    service.fast_forward = args.fast_forward;
    service.grace_seconds = args.grace_seconds;
    service.market = MarketConfig {
        seed: args.market.seed.unwrap_or(1),
        interruptions_per_hour: args.market.interruptions_per_hour.unwrap_or(0.0),
        reclaim_warning_probability: args
            .market
            .warning_probability(MarketConfig::default().reclaim_warning_probability)?,
        trace: read_trace(&args.market.trace)?,
        ..MarketConfig::default()
    };
    service.upload = args.market.upload(service.upload)?;
    let mut config = StackConfig::new(service);
    config.sagemaker_addr = args.listen;
    config.s3_addr = args.s3_listen;
    config.s3_endpoint = args.s3_endpoint;
    config.buckets = args.buckets;
    config.eventbridge_endpoint = args.eventbridge_endpoint;
    config.echo_decisions = true;
    config.control_plane = match args.control_plane.as_deref() {
        None => None,
        Some("-") => Some(Policy::default()),
        Some(p) => Some(read_policy(Path::new(p))?),
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        // A long-running server: a closed terminal or pipe must not kill it, so its output
        // ignores write errors (println! would panic on one).
        let stack = Stack::start(config, |d| {
            let detail = &d.event["detail"];
            say_err(&format!(
                "event: {} {}/{}",
                detail["TrainingJobName"].as_str().unwrap_or("?"),
                detail["TrainingJobStatus"].as_str().unwrap_or("?"),
                detail["SecondaryStatus"].as_str().unwrap_or("?")
            ));
        })
        .await?;
        let endpoint = stack.sagemaker.endpoint();
        let region = &stack.service.config().region;
        say(&format!(
            "SageMaker endpoint: {endpoint}\n\
             S3 endpoint:        {}\n\
             credentials:        AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION={region}\n\
             example:            aws sagemaker list-training-jobs --endpoint-url {endpoint}",
            stack.s3_endpoint
        ));
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
        say_err("stopping");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Writes a line to standard output, ignoring a closed pipe or terminal.
fn say(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

/// Writes a line to standard error, ignoring a closed pipe or terminal.
fn say_err(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// Installs `dataset-fashion-mnist` with apt-get when running as root with apt available.
fn install_dataset() -> Result<()> {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    if !root || !Path::new("/usr/bin/apt-get").exists() {
        bail!("not root or no apt-get");
    }
    eprintln!("Installing Debian's dataset-fashion-mnist package (first use)…");
    let status = std::process::Command::new("apt-get")
        .args([
            "install",
            "-y",
            "--no-install-recommends",
            "dataset-fashion-mnist",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        let _ = std::process::Command::new("apt-get").arg("update").status();
        let status = std::process::Command::new("apt-get")
            .args([
                "install",
                "-y",
                "--no-install-recommends",
                "dataset-fashion-mnist",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("apt-get install dataset-fashion-mnist failed");
        }
    }
    Ok(())
}

/// Runs `spotcheck demo`.
pub fn run_demo(args: Demo) -> Result<ExitCode> {
    init_logging();
    let trainer = match args.trainer {
        Some(t) => t,
        None => default_trainer()?,
    };
    let mut config = DemoConfig::new(args.workdir, trainer);
    config.data = args.data;
    if args.framework == FrameworkFlag::Pytorch {
        config.framework = demo::Framework::PyTorch(demo::PyTorchJob {
            python: args.python,
            script: args.script,
            launcher: std::env::current_exe().context("locating the spotcheck binary")?,
        });
    }
    if demo::check_data(&config.data).is_err()
        && !args.no_install
        && config.data == Path::new(demo::FASHION_MNIST)
    {
        if let Err(e) = install_dataset() {
            eprintln!("could not install the dataset automatically ({e:#})");
        }
    }
    demo::check_data(&config.data)?;
    if let Some(seed) = args.market.seed {
        config.seed = seed;
    }
    if let Some(rate) = args.market.interruptions_per_hour {
        if !(rate.is_finite() && rate >= 0.0) {
            bail!("--interruptions-per-hour must be a number ≥ 0");
        }
        config.interruptions_per_hour = rate;
    }
    config.trace = read_trace(&args.market.trace)?;
    config.reclaim_warning_probability = args
        .market
        .warning_probability(config.reclaim_warning_probability)?;
    config.upload = args.market.upload(config.upload)?;
    let steps = args.steps.unwrap_or(match args.framework {
        FrameworkFlag::Rust => 600,
        FrameworkFlag::Pytorch => 18000,
    });
    if steps == 0 {
        bail!("--steps must be at least 1");
    }
    config.max_steps = steps;
    if !(args.simulated_hours.is_finite() && args.simulated_hours > 0.0) {
        bail!("--simulated-hours must be positive");
    }
    config.simulated_hours = args.simulated_hours;
    config.instance_type = args.instance_type;
    config.instances = args.instances;
    if let Some(p) = &args.policy {
        config.policy = read_policy(p)?;
    } else if config.policy.instance_ladder.first() != Some(&config.instance_type) {
        config.policy.instance_ladder = vec![config.instance_type.clone(), "ml.g5.xlarge".into()];
    }
    config.hyperparameters = key_values(&args.hp, "--hp")?;
    config.timeout = Duration::from_secs(args.timeout_seconds);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let progress: Arc<dyn Fn(&str) + Send + Sync> = Arc::new(|line: &str| eprintln!("{line}"));
    let outcome = runtime.block_on(demo::run(config, progress))?;
    println!("{}", outcome.text);
    println!("HTML report: {}", outcome.html.display());
    println!("JSON report: {}", outcome.json.display());
    Ok(match outcome.report.weights_match {
        Some(true) => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}
