//! `spotcheck redrive`: hand a dead-letter queue's events back to their function.
//!
//! Flags are parsed here; the work is `spotcheck_redrive::redrive` over its SQS and Lambda
//! adapters, with the operator's own credentials. Output: one JSON line per message as it is
//! done, then one summary line (`{"summary": {…}}`). Exit 0 when every message was redriven
//! (or, with `--dry-run`, is readable), 1 when any failed or the run stopped early.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use spotcheck_redrive::{LambdaFunction, Options, SqsQueue};

/// `spotcheck redrive`.
#[derive(Args)]
pub struct Redrive {
    /// The dead-letter queue's URL (the stack's `SageMakerEventsDlqUrl` or `Ec2SpotEventsDlqUrl`
    /// output).
    #[arg(long)]
    pub queue: String,
    /// The function whose queue it is (name or ARN: the stack's `…FunctionArn` output).
    #[arg(long)]
    pub function: String,
    /// Process at most N messages.
    #[arg(long, value_name = "N")]
    pub max: Option<u64>,
    /// Print what would be sent; invoke nothing, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Seconds a received message stays hidden from others: at least one invocation of the
    /// function (1–43200).
    #[arg(long, value_name = "SECONDS", default_value_t = spotcheck_redrive::DEFAULT_VISIBILITY_TIMEOUT.as_secs())]
    pub visibility_timeout: u64,
}

/// SQS's limit on a visibility timeout (12 hours).
const MAX_VISIBILITY_TIMEOUT: u64 = 43_200;

/// Runs the redrive and prints its lines.
pub fn run(args: Redrive) -> Result<ExitCode> {
    if !(1..=MAX_VISIBILITY_TIMEOUT).contains(&args.visibility_timeout) {
        bail!(
            "--visibility-timeout {} is outside 1..={MAX_VISIBILITY_TIMEOUT} seconds",
            args.visibility_timeout
        );
    }
    if args.max == Some(0) {
        bail!("--max 0 would process nothing");
    }
    let options = Options {
        max: args.max,
        dry_run: args.dry_run,
        visibility_timeout: Duration::from_secs(args.visibility_timeout),
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let summary = runtime.block_on(async {
        let config = spotcheck_redrive::load_config().await;
        let queue = SqsQueue::new(&config, &args.queue);
        let function = LambdaFunction::new(&config, &args.function);
        spotcheck_redrive::redrive(&queue, &function, &options, |report| {
            // A report is plain data: serialising it cannot fail.
            println!("{}", serde_json::to_string(report).unwrap_or_default());
        })
        .await
    });
    println!(
        "{}",
        serde_json::to_string(&serde_json::json!({ "summary": summary }))?
    );
    Ok(if summary.all_redriven() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
