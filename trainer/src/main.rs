//! `train`: the entry point SageMaker runs in a training image (`docker run IMAGE train`).
//!
//! Exit codes: 0 training complete; 143 stopped by SIGTERM/SIGINT or a spot notice after the
//! checkpoint of the last step became durable (resume by running again); 1 error (the reason is
//! also written to SageMaker's failure file); 2 usage error.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use spotcheck_notices::{self as notices, StopFlags};
use spotcheck_trainer::backend::{self, Chosen, Compute};
use spotcheck_trainer::hostmem;
use spotcheck_trainer::hyper::Hyperparameters;
use spotcheck_trainer::sagemaker::{self, Overrides, RealEnvironment};
use spotcheck_trainer::train::{self, Outcome, Run};

/// Large tensor buffers on transparent huge pages (see `hostmem`).
#[global_allocator]
static ALLOCATOR: hostmem::HugePages = hostmem::HugePages;

/// Exit code after a stop with a durable checkpoint.
const EXIT_INTERRUPTED: u8 = 143;

/// Trains an image classifier the spot-safe way. Every path defaults to SageMaker's contract
/// (`/opt/ml/...`, `SM_*` variables); flags override them for local runs.
#[derive(Parser, Debug)]
#[command(name = "train", version)]
struct Args {
    /// Training data folder (IDX files or class sub-folders).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Evaluation data folder.
    #[arg(long)]
    test_data: Option<PathBuf>,
    /// Checkpoint root (SageMaker syncs it to S3).
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Where the final model goes.
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Hyperparameters JSON file.
    #[arg(long)]
    hyperparameters: Option<PathBuf>,
    /// Extra hyperparameters as NAME=VALUE (win over the file).
    #[arg(long = "hp", value_name = "NAME=VALUE")]
    hp: Vec<String>,
    /// Host name that namespaces checkpoints (default: SM_CURRENT_HOST or algo-1).
    #[arg(long)]
    host: Option<String>,
    /// Mirror checkpoints to this S3 location (s3://bucket/prefix) and resume from it: for
    /// training on your own instances, where SageMaker's checkpoint sync is absent.
    #[arg(long, env = "SPOTCHECK_CHECKPOINT_S3_URI")]
    checkpoint_s3_uri: Option<String>,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SPOTCHECK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if std::io::stdout().is_terminal() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_target(false)
            .compact()
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    }
}

fn hyperparameters(args: &Args, file: Option<&PathBuf>) -> Result<(Hyperparameters, String)> {
    let mut map: BTreeMap<String, serde_json::Value> = match file {
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a JSON object", p.display()))?
        }
        None => BTreeMap::new(),
    };
    for kv in &args.hp {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--hp {kv}: expected NAME=VALUE"))?;
        map.insert(k.to_string(), serde_json::Value::String(v.to_string()));
    }
    let text = serde_json::to_string(&map)?;
    Ok((Hyperparameters::from_map(&map)?, text))
}

fn run(args: Args) -> Result<Outcome> {
    let overrides = Overrides {
        data: args.data.clone(),
        test_data: args.test_data.clone(),
        checkpoint_dir: args.checkpoint_dir.clone(),
        model_dir: args.model_dir.clone(),
        hyperparameters: args.hyperparameters.clone(),
        host: args.host.clone(),
    };
    // The channel names are hyperparameters themselves, so resolve the file first.
    let pre = sagemaker::resolve(&overrides, &RealEnvironment, "train", "test");
    let (hp, hp_text) = hyperparameters(&args, pre.hyperparameters.as_ref())?;
    let paths = sagemaker::resolve(
        &overrides,
        &RealEnvironment,
        &hp.train_channel,
        &hp.test_channel,
    );
    let flags = StopFlags::default();
    flags
        .install_signal_handlers()
        .context("installing signal handlers")?;
    if let Some(endpoint) = notices::imds_endpoint_from_env() {
        let every = notices::poll_interval_from_env();
        tracing::info!(event = "imds_polling", endpoint = %endpoint, every_seconds = every.as_secs_f64(), "polling for spot notices");
        notices::spawn_imds_poller(endpoint, flags.clone(), every)
            .context("starting the spot-notice poller")?;
    }
    let driver = backend::BUILT.cuda && backend::cuda_driver_present();
    let chosen = backend::choose(hp.backend, backend::BUILT, driver).map_err(anyhow::Error::msg)?;
    let with_compute = |compute| {
        let run = Run {
            hp,
            hp_text,
            paths,
            flags,
            checkpoint_s3_uri: args.checkpoint_s3_uri.clone(),
            compute,
        };
        start(&run);
        run
    };
    match chosen {
        Chosen::Cpu => {
            let run = with_compute(Compute::on("cpu", "cpu", backend::rayon_threads()));
            train::run::<burn::backend::Autodiff<burn::backend::Flex>>(&run, Default::default())
        }
        #[cfg(feature = "cuda")]
        Chosen::Cuda => {
            let run = with_compute(Compute::on("cuda", "cuda:0", 1));
            train::run::<burn::backend::Autodiff<burn::backend::Cuda>>(&run, Default::default())
        }
        #[cfg(not(feature = "cuda"))]
        Chosen::Cuda => anyhow::bail!("CUDA backend not built"),
        #[cfg(feature = "tch")]
        Chosen::Torch => {
            use burn::backend::libtorch::{LibTorch, LibTorchDevice};
            let cuda = tch::Cuda::is_available();
            let device = if cuda {
                LibTorchDevice::Cuda(0)
            } else {
                LibTorchDevice::Cpu
            };
            let threads = usize::try_from(tch::get_num_threads()).unwrap_or(0);
            let run = with_compute(Compute::on(
                "torch",
                if cuda { "cuda:0" } else { "cpu" },
                threads,
            ));
            train::run::<burn::backend::Autodiff<LibTorch>>(&run, device)
        }
        #[cfg(not(feature = "tch"))]
        Chosen::Torch => anyhow::bail!("libtorch backend not built"),
    }
}

fn start(run: &Run) {
    let (c, p) = (&run.compute, &run.paths);
    tracing::info!(event = "start", backend = %c.backend, device = %c.device, threads = c.threads, cpu_features = %c.cpu_features.join(" "), host = %p.host, data = %p.data.display(), checkpoint_dir = %p.checkpoint_dir.display(), model_dir = %p.model_dir.display());
}

fn main() -> ExitCode {
    hostmem::keep_freed_memory();
    let args = Args::parse();
    init_logging();
    let failure_file =
        sagemaker::resolve(&Overrides::default(), &RealEnvironment, "train", "test").failure_file;
    match run(args) {
        Ok(Outcome::Completed) => ExitCode::SUCCESS,
        Ok(Outcome::Interrupted(_)) => ExitCode::from(EXIT_INTERRUPTED),
        Err(e) => {
            tracing::error!(event = "failed", error = format!("{e:#}"));
            eprintln!("error: {e:#}");
            if failure_file.parent().is_some_and(|p| p.is_dir()) {
                let _ = std::fs::write(&failure_file, format!("{e:#}"));
            }
            ExitCode::from(1)
        }
    }
}
