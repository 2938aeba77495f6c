//! `spotcheck report`: what spotcheck did for a team, read from the stack's ledger.
//!
//! Parses and checks every argument before any AWS call (bad input exits 2 without touching
//! S3), loads the ordinary AWS configuration (environment, profile, role, instance or container
//! credentials; `AWS_ENDPOINT_URL_S3` for emulators, with path-style addressing), reads the
//! ledger with `spotcheck_report::read_ledger`, prints the text report, and writes the HTML and
//! JSON reports when asked. Needs only `s3:ListBucket` on the prefix and `s3:GetObject` on its
//! records.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use spotcheck_control::Timestamp;
use spotcheck_report::store::parse_location;
use spotcheck_report::{read_ledger, render, Filter, ReadOptions, S3LedgerStore};

/// `spotcheck report` arguments.
#[derive(clap::Args)]
pub struct Report {
    /// The ledger, s3://BUCKET/PREFIX: the stack's LedgerBucketName output and its LedgerPrefix
    /// parameter (default `spotcheck/`).
    #[arg(long, value_name = "s3://BUCKET/PREFIX")]
    ledger: String,
    /// Only records written at or after this time: YYYY-MM-DD (UTC midnight) or RFC 3339.
    #[arg(long, value_name = "DATE")]
    since: Option<String>,
    /// Only records written before this time: YYYY-MM-DD (UTC midnight) or RFC 3339.
    #[arg(long, value_name = "DATE")]
    until: Option<String>,
    /// Only the lineage whose root job (or EC2 run) is ROOT.
    #[arg(long, value_name = "ROOT")]
    lineage: Option<String>,
    /// Also write the report as a self-contained HTML page with charts.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Also write the report as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// GetObject calls in flight at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
}

/// `YYYY-MM-DD` (UTC midnight) or an RFC 3339 instant.
fn parse_date(flag: &str, text: &str) -> Result<Timestamp> {
    let t = text.trim();
    let full = if t.len() == 10 && t.as_bytes().get(4) == Some(&b'-') {
        format!("{t}T00:00:00Z")
    } else {
        t.to_owned()
    };
    Timestamp::parse(&full)
        .with_context(|| format!("{flag} {text:?}: expected YYYY-MM-DD or an RFC 3339 time"))
}

/// The checked arguments.
struct Plan {
    ledger: String,
    filter: Filter,
    html: Option<PathBuf>,
    json: Option<PathBuf>,
    concurrency: usize,
}

fn plan(args: Report) -> Result<Plan> {
    parse_location(&args.ledger).context("--ledger")?;
    let since = args
        .since
        .as_deref()
        .map(|s| parse_date("--since", s))
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(|u| parse_date("--until", u))
        .transpose()?;
    if let (Some(s), Some(u)) = (since, until) {
        if s >= u {
            bail!("--since must be before --until");
        }
    }
    if args.lineage.as_deref().is_some_and(|l| l.trim().is_empty()) {
        bail!("--lineage must name a root job or EC2 run");
    }
    Ok(Plan {
        ledger: args.ledger,
        filter: Filter {
            since,
            until,
            lineage: args.lineage,
        },
        html: args.html,
        json: args.json,
        concurrency: usize::from(args.concurrency),
    })
}

/// Runs `spotcheck report` (exit 0; errors are reported by `main` with exit 2).
pub fn run(args: Report) -> Result<()> {
    let plan = plan(args)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let report = runtime.block_on(async {
        let config = spotcheck_aws::sdk::load_sdk_config().await;
        if config.region().is_none() {
            bail!("no AWS region configured: set AWS_REGION to the ledger bucket's region");
        }
        let path_style = spotcheck_aws::sdk::custom_s3_endpoint(std::env::vars());
        let client = spotcheck_aws::sdk::s3_client(&config, path_style);
        let store = S3LedgerStore::new(client, &plan.ledger)?;
        let options = ReadOptions {
            concurrency: plan.concurrency,
            ..ReadOptions::default()
        };
        let agg = read_ledger(&store, &plan.filter, options)
            .await
            .with_context(|| format!("reading {}", plan.ledger))?;
        Ok::<_, anyhow::Error>(agg.finish(&plan.filter))
    })?;
    print!("{}", render::text(&report, &plan.ledger));
    if let Some(path) = &plan.html {
        std::fs::write(path, render::html(&report, &plan.ledger))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("HTML report: {}", path.display());
    }
    if let Some(path) = &plan.json {
        let bytes = serde_json::to_vec_pretty(&report).context("encoding the JSON report")?;
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
        println!("JSON report: {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(ledger: &str) -> Report {
        Report {
            ledger: ledger.into(),
            since: None,
            until: None,
            lineage: None,
            html: None,
            json: None,
            concurrency: 16,
        }
    }

    #[test]
    fn arguments_are_checked_before_any_call() {
        assert!(plan(args("s3://ledger/spotcheck/")).is_ok());
        assert!(plan(args("ledger/spotcheck")).is_err());
        let mut a = args("s3://l/p");
        a.since = Some("2026-11-01".into());
        a.until = Some("2026-12-01T00:00:00Z".into());
        let p = plan(a).unwrap();
        assert_eq!(
            p.filter.since.map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-11-01T00:00:00.000Z")
        );
        let mut a = args("s3://l/p");
        a.since = Some("2026-12-01".into());
        a.until = Some("2026-11-01".into());
        assert!(plan(a).is_err(), "since after until");
        let mut a = args("s3://l/p");
        a.since = Some("yesterday".into());
        assert!(plan(a).is_err());
        let mut a = args("s3://l/p");
        a.lineage = Some(" ".into());
        assert!(plan(a).is_err());
    }
}
