//! `spotcheck report` end to end: a ledger in LocalStack S3 written by the `sagemaker-events`
//! handler (over an in-memory SageMaker, with real checkpoints in S3), the command's text,
//! JSON and HTML, and the HTML opened in headless Chromium over the DevTools protocol: every
//! chart laid out with a size, the figures in the DOM equal to the JSON's, no error.
//!
//! `SPOTCHECK_REPORT_SCREENSHOT=PATH` also saves the page as PNG there (the README's screenshot,
//! docs/report.md says how it was made).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use spotcheck_aws::{HandlerConfig, S3Checkpoints, S3Ledger, SageMakerHandler};
use spotcheck_control::naming::relaunch_name;
use spotcheck_control::{Policy, Timestamp};
use spotcheck_tests::browser;
use spotcheck_tests::checkpoints::{upload_tree, write_checkpoint};
use spotcheck_tests::emulators::{self, Emulators};
use spotcheck_tests::ledger::{
    spot_lineage, state_change, transitions, Discard, JobState, MemoryJobs,
};

const PREFIX: &str = "spotcheck/";

fn spotcheck(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_spotcheck"))
        .arg("report")
        .args(args)
        .output()
        .expect("spotcheck runs")
}

#[test]
fn bad_arguments_exit_2_before_any_call() {
    let since_after_until = vec![
        "--ledger",
        "s3://l/p",
        "--since",
        "2026-12-01",
        "--until",
        "2026-11-01",
    ];
    for (args, says) in [
        (vec!["--ledger", "ledger/spotcheck"], "--ledger"),
        (vec!["--ledger", "s3://"], "--ledger"),
        (
            vec!["--ledger", "s3://l/p", "--since", "last week"],
            "--since",
        ),
        (since_after_until, "--since must be before --until"),
        (
            vec!["--ledger", "s3://l/p", "--concurrency", "0"],
            "--concurrency",
        ),
        (vec!["--since", "2026-12-01"], "--ledger"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_spotcheck"))
            .arg("report")
            .args(&args)
            // No AWS anywhere: a usage error must not need it.
            .env("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
            .output()
            .expect("spotcheck runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?} says why: {stderr}");
        assert!(!stderr.contains("ListObjectsV2"), "{args:?}: {stderr}");
    }
}

type Handler = SageMakerHandler<MemoryJobs, S3Checkpoints, S3Ledger, Discard>;

async fn deliver(h: &Handler, state: JobState, id: &str, now_ms: i64) {
    let event = state_change(&state, id);
    h.jobs.set(state);
    h.handle(
        &event,
        Timestamp::from_epoch_ms(now_ms).expect("a time"),
        &Discard,
    )
    .await
    .unwrap_or_else(|e| panic!("{id}: {e}"));
}

/// Three lineages: two spot jobs that completed (one interrupted and restarted twice), and one
/// whose spot capacity never came back: stopped by MaxWaitTimeExceeded at step 200, relaunched
/// by the control plane, completed.
async fn write_ledger(e: &Emulators, tag: &str) -> String {
    let s3 = emulators::s3(&e.s3).await;
    let ledger_bucket = emulators::bucket(&s3, "cli-report").await;
    let ml = emulators::bucket(&s3, "cli-report-ml").await;
    let h: Handler = SageMakerHandler {
        jobs: MemoryJobs::default(),
        checkpoints: S3Checkpoints::new(s3.clone()),
        ledger: S3Ledger::new(s3.clone(), &ledger_bucket, PREFIX),
        events: Discard,
        config: HandlerConfig::new(Policy::default()),
    };
    let day = 86_400_000;
    let t0 = 1_793_000_000_000i64;
    for (name, it, created, interruptions, times) in [
        (
            format!("{tag}-resnet"),
            "ml.p3.2xlarge",
            t0,
            2,
            (7200, 2300),
        ),
        (
            format!("{tag}-bert"),
            "ml.g5.2xlarge",
            t0 + day,
            0,
            (5400, 1700),
        ),
    ] {
        for (n, state) in spot_lineage(&name, it, created, interruptions, times)
            .into_iter()
            .enumerate()
        {
            deliver(&h, state, &format!("{name}-{n}"), created + day).await;
        }
    }

    // The relaunched lineage, with valid checkpoints at steps 100 and 200 in S3.
    let root = format!("{tag}-llama");
    let dir = tempfile::tempdir().expect("a directory");
    for step in [100, 200] {
        write_checkpoint(dir.path(), "algo-1", step);
    }
    upload_tree(&s3, dir.path(), &ml, &root).await;
    let c = t0 + 2 * day;
    let m = 60_000;
    let stopped = JobState {
        name: root.clone(),
        status: "Stopped".into(),
        secondary: "MaxWaitTimeExceeded".into(),
        instance_type: "ml.p3.2xlarge".into(),
        spot: true,
        transitions: transitions(&[
            ("Starting", c),
            ("Downloading", c + m),
            ("Training", c + 2 * m),
            ("Interrupted", c + 32 * m),
            ("Starting", c + 34 * m),
            ("Stopping", c + 120 * m),
            ("MaxWaitTimeExceeded", c + 121 * m),
        ]),
        times: Some((1800, 560)),
        created_ms: c,
        tags: vec![
            ("spotcheck:enabled".into(), "true".into()),
            ("team".into(), "nlp".into()),
        ],
        checkpoint_uri: Some(format!("s3://{ml}/{root}")),
    };
    let mut interrupted = stopped.clone();
    interrupted.status = "InProgress".into();
    interrupted.secondary = "Interrupted".into();
    interrupted.transitions.truncate(4);
    interrupted.transitions[3].2 = None;
    interrupted.times = None;
    deliver(&h, interrupted, &format!("{root}-0"), c + 33 * m).await;
    deliver(&h, stopped, &format!("{root}-1"), c + 122 * m).await;
    let r2 = relaunch_name(&root, 2);
    let mut relaunched = h.jobs.get(&r2).expect("the handler relaunched the job");
    let s = c + 123 * m;
    relaunched.created_ms = s;
    relaunched.status = "Completed".into();
    relaunched.secondary = "Completed".into();
    relaunched.transitions = transitions(&[
        ("Starting", s),
        ("Downloading", s + m),
        ("Training", s + 2 * m),
        ("Uploading", s + 62 * m),
        ("Completed", s + 63 * m),
    ]);
    relaunched.transitions[4].2 = Some(s + 63 * m);
    relaunched.times = Some((3720, 1200));
    deliver(&h, relaunched, &format!("{r2}-0"), s + 64 * m).await;
    ledger_bucket
}

#[test]
fn the_report_command_prints_writes_json_and_html_that_renders_in_chromium() {
    let e = Emulators::from_env();
    let tag = emulators::unique("cli");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let bucket = runtime.block_on(write_ledger(&e, &tag));
    let dir = tempfile::tempdir().expect("a directory");
    let html = dir.path().join("report.html");
    let json = dir.path().join("report.json");
    let location = format!("s3://{bucket}/{PREFIX}");
    let out = spotcheck(&[
        "--ledger",
        &location,
        "--html",
        html.to_str().expect("a UTF-8 path"),
        "--json",
        json.to_str().expect("a UTF-8 path"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{out:?}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON report")).expect("JSON");
    let total = &report["total"];
    assert_eq!(report["records"]["read"], 9, "{stdout}");
    assert_eq!(
        report["lineages"].as_array().map(Vec::len),
        Some(3),
        "{stdout}"
    );
    assert_eq!(total["jobs"], 4, "{stdout}");
    assert_eq!(total["interruptions"], 3, "{stdout}");
    assert_eq!(total["sagemaker_restarts"], 2, "{stdout}");
    assert_eq!(total["relaunches"], 1, "{stdout}");
    assert_eq!(
        total["training_seconds"],
        7200 + 5400 + 1800 + 3720,
        "{stdout}"
    );
    assert_eq!(total["billable_seconds"], 2300 + 1700 + 560 + 1200);
    let llama = report["lineages"]
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|r| r["root"] == format!("{tag}-llama").as_str())
        })
        .expect("the relaunched lineage");
    assert_eq!(
        llama["counterfactual"]["without_spotcheck"]["step_reached"], 200,
        "{llama}"
    );
    assert!(
        stdout.contains(&format!(
            "{tag}-llama: without spotcheck: stopped at step 200 (Stopped/MaxWaitTimeExceeded)"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("9 read (0 of an older shape), 0 skipped"),
        "{stdout}"
    );

    // The page, in a browser.
    let screenshot = std::env::var_os("SPOTCHECK_REPORT_SCREENSHOT");
    let page = browser::open(&html, screenshot.is_some(), Duration::from_secs(60));
    assert_eq!(page.title, "spotcheck report");
    assert!(
        page.errors.is_empty(),
        "the page reported errors: {:?}",
        page.errors
    );
    // Savings over time, cost, and one timeline per lineage with attempt facts.
    assert_eq!(page.svgs.len(), 5, "{:?}", page.svgs);
    for svg in &page.svgs {
        assert!(
            svg.width >= 500.0 && svg.height >= 150.0 && svg.texts > 3,
            "a chart laid out with labels: {svg:?}"
        );
    }
    assert!(page.svgs[1].rects >= 8, "cost bars: {:?}", page.svgs[1]);
    let usd = |v: &Value| format!("${:.2}", v.as_f64().unwrap_or(f64::NAN));
    for (figure, expected) in [
        ("jobs", total["jobs"].to_string()),
        ("interruptions", total["interruptions"].to_string()),
        (
            "sagemaker_restarts",
            total["sagemaker_restarts"].to_string(),
        ),
        ("relaunches", total["relaunches"].to_string()),
        ("training_seconds", total["training_seconds"].to_string()),
        ("billable_seconds", total["billable_seconds"].to_string()),
        ("on_demand_usd", usd(&total["on_demand_usd"])),
        ("spot_usd", usd(&total["spot_usd"])),
        ("saved_usd", usd(&total["saved_usd"])),
        ("headline_saved_usd", usd(&total["saved_usd"])),
    ] {
        assert_eq!(
            page.figures.get(figure),
            Some(&expected),
            "{figure} in the page: {:?}",
            page.figures
        );
    }
    assert!(
        page.figures
            .get("counterfactual")
            .is_some_and(|c| c.contains("would have stopped unfinished")),
        "{:?}",
        page.figures
    );
    if let (Some(path), Some(png)) = (screenshot, page.screenshot_png) {
        std::fs::write(Path::new(&path), png).expect("writing the screenshot");
    }
}
