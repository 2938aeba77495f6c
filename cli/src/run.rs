//! `spotcheck run -- CMD ARGS…`: the training container's PID 1 (crates/launcher).
//!
//! Parses the flags and reads the environment (IMDS endpoint, SageMaker's failure file), then
//! hands over to the launcher; its exit code is the training command's.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use spotcheck_launcher::imds::{imds_endpoint, poll_interval_from_env};

/// Flags of `spotcheck run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Seconds from the first stop request (SIGTERM, SIGINT or a spot notice) until the
    /// command's whole process group gets SIGKILL. SageMaker allows 120 s after its SIGTERM.
    #[arg(long, default_value_t = 110)]
    grace_seconds: u64,
    /// Where to write notices for the command (its SPOTCHECK_NOTICE_FILE); default: a file in
    /// the temporary directory.
    #[arg(long)]
    notice_file: Option<PathBuf>,
    /// Seconds between IMDS polls (default: SPOTCHECK_IMDS_POLL_SECONDS, else AWS's
    /// recommended 5). IMDS is polled when AWS_EC2_METADATA_SERVICE_ENDPOINT is set or on EC2
    /// hardware; SPOTCHECK_IMDS=on|off overrides.
    #[arg(long)]
    imds_poll_seconds: Option<f64>,
    /// The training command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// Runs the launcher; returns the command's exit code.
pub fn run(args: RunArgs) -> Result<u8> {
    let var = |name: &str| std::env::var(name).ok();
    let imds = imds_endpoint(
        var("AWS_EC2_METADATA_SERVICE_ENDPOINT"),
        std::fs::read_to_string("/sys/devices/virtual/dmi/id/sys_vendor").ok(),
        var("SPOTCHECK_IMDS"),
    )
    .map(|endpoint| {
        let every = args
            .imds_poll_seconds
            .filter(|s| s.is_finite() && *s > 0.0)
            .map_or_else(poll_interval_from_env, Duration::from_secs_f64);
        (endpoint, every)
    });
    let notice_file = args.notice_file.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("spotcheck-notices-{}.json", std::process::id()))
    });
    let config = spotcheck_launcher::Config {
        command: args.command,
        grace: Duration::from_secs(args.grace_seconds),
        notice_file,
        failure_file: spotcheck_launcher::failure_file(var),
        imds,
    };
    Ok(spotcheck_launcher::run(config)?)
}
