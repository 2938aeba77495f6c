//! `spotcheck`: the command line users and tests drive.
//!
//! - `spotcheck validate DIR` — the checkpoint validator over a local checkpoint root.
//! - `spotcheck decide --event EVENT.json …` — what the control plane would do with an event,
//!   without calling AWS.
//! - `spotcheck local serve` — the local SageMaker-compatible training service (see
//!   `docs/local-service.md`).
//! - `spotcheck demo` — the whole system end to end on this machine, with a report.
//! - `spotcheck redrive --queue URL --function NAME` — a dead-letter queue's events handed back
//!   to their function (see `docs/lambdas.md`, "Redrive").
//! - `spotcheck report --ledger s3://BUCKET/PREFIX` — what spotcheck did for a deployed stack,
//!   from its ledger (see `docs/report.md`).
//! - `spotcheck run -- CMD ARGS…` — a training container's PID 1: forwards stop signals, passes
//!   spot notices on, reaps zombies (crates/launcher, docs/pytorch.md).
//!
//! Exit codes: `validate` 0 when a valid checkpoint exists, 1 when none; `demo` 0 when the final
//! weights equal the uninterrupted run's, 1 when not; `redrive` 0 when every message was
//! redriven, 1 when any failed or the run stopped; `run` the training command's own code
//! (128 + signal when a signal ended it; 127 when it cannot be started); 2 on usage errors and
//! unreadable or malformed input, for every command.

mod local;
mod redrive;
mod report;
mod run;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use spotcheck_control::{CheckpointSummary, Timestamp};
use spotcheck_protocol::{validate_root, Status};

#[derive(Parser)]
#[command(
    name = "spotcheck",
    version,
    about = "Cheap and safe ML training on spot capacity"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate every checkpoint under DIR (full SHA-256 and CRC-64/NVME check) and print JSON.
    Validate {
        /// A checkpoint root (`<root>/<host>/step-…`) or one host's directory.
        dir: PathBuf,
    },
    /// Print, as JSON, what the control plane would decide for an EventBridge event.
    Decide {
        /// The EventBridge event (JSON file).
        #[arg(long)]
        event: PathBuf,
        /// DescribeTrainingJob output as the AWS CLI prints it (may carry a `Tags` field).
        #[arg(long)]
        job: Option<PathBuf>,
        /// A local checkpoint root standing in for the job's checkpoint S3 prefix.
        #[arg(long)]
        checkpoints: Option<PathBuf>,
        /// A policy JSON file (defaults otherwise).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// The decision time, RFC 3339 (default: now).
        #[arg(long)]
        now: Option<String>,
    },
    /// The local SageMaker-compatible training service.
    #[command(subcommand)]
    Local(local::Local),
    /// Train Fashion-MNIST as a managed-spot job on the local service while spot capacity is
    /// taken away, let the control plane recover it, and report.
    Demo(local::Demo),
    /// Hand each event in a dead-letter queue back to its function (Lambda Invoke), deleting
    /// the message only when the function handled it.
    Redrive(redrive::Redrive),
    /// Report what spotcheck did, per lineage and in total, from a deployed stack's ledger
    /// (text; optionally HTML with charts, and JSON).
    Report(report::Report),
    /// Run a training command as a container's PID 1: forward SIGTERM/SIGINT, pass spot notices
    /// on (notice file + signal), reap zombies, SIGKILL after the grace time, exit with its code.
    Run(run::RunArgs),
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// What the engine needs from a local checkpoint root.
fn summarise(dir: &Path) -> Result<CheckpointSummary> {
    let report = validate_root(dir).with_context(|| format!("validating {}", dir.display()))?;
    let latest = report
        .checkpoints
        .iter()
        .filter(|c| c.status == Status::Valid)
        .max_by_key(|c| c.step);
    let finished = latest
        .and_then(|c| std::fs::read(dir.join(&c.name).join(spotcheck_protocol::MANIFEST_FILE)).ok())
        .and_then(|b| spotcheck_protocol::Manifest::parse(&b).ok())
        .and_then(|m| m.meta)
        .and_then(|meta| meta.get("finished").and_then(|f| f.as_bool()))
        .unwrap_or(false);
    Ok(CheckpointSummary {
        latest_valid_step: latest.map(|c| c.step),
        any_corrupt: report
            .checkpoints
            .iter()
            .any(|c| c.status == Status::Corrupt),
        finished,
        ..CheckpointSummary::default()
    })
}

fn now_utc() -> Result<Timestamp> {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    Ok(Timestamp::from_epoch_ms(ms as i64)?)
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Validate { dir } => {
            if !dir.is_dir() {
                anyhow::bail!("{} is not a directory", dir.display());
            }
            let report =
                validate_root(&dir).with_context(|| format!("validating {}", dir.display()))?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(if report.latest_valid.is_some() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Decide {
            event,
            job,
            checkpoints,
            policy,
            now,
        } => {
            let event = read(&event)?;
            let job = job.as_deref().map(read).transpose()?;
            let policy = policy.as_deref().map(read).transpose()?;
            let checkpoints = checkpoints.as_deref().map(summarise).transpose()?;
            let now = match now {
                Some(t) => Timestamp::parse(&t).with_context(|| format!("--now {t}"))?,
                None => now_utc()?,
            };
            let decision = spotcheck_control::decide_from_json(
                &event,
                job.as_deref(),
                checkpoints,
                policy.as_deref(),
                now,
            )?;
            println!("{}", serde_json::to_string_pretty(&decision)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Local(local::Local::Serve(args)) => local::serve(args),
        Command::Demo(args) => local::run_demo(args),
        Command::Redrive(args) => redrive::run(args),
        Command::Report(args) => report::run(args).map(|()| ExitCode::SUCCESS),
        Command::Run(args) => Ok(ExitCode::from(run::run(args)?)),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
