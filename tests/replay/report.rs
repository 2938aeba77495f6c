//! `spotcheck report`'s reader (`spotcheck_report::read_ledger` over `S3LedgerStore`) against
//! ledgers the handler really wrote:
//!
//! - a spot lineage on the local SageMaker service (interrupted and restarted by SageMaker,
//!   then spot lost for good, relaunched twice, completed one rung down the ladder, with a
//!   corrupt checkpoint) and a job that gives up after its own error, recorded in LocalStack S3:
//!   every figure checked against the service's own jobs;
//! - tens of thousands of records written concurrently by the handler over an in-memory
//!   SageMaker: read page by page with a bounded number of reads in flight, every figure exact;
//! - records of older shapes and objects that are no records, in LocalStack S3 and in the local
//!   service's embedded S3: read or skipped, and counted, the same way in both.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use spotcheck_aws::{AwsError, HandlerConfig, S3Ledger, SageMakerHandler};
use spotcheck_control::naming::relaunch_name;
use spotcheck_control::{Policy, PriceTable};
use spotcheck_report::aggregate::{LedgerReport, Status};
use spotcheck_report::record::Skip;
use spotcheck_report::store::{LedgerStore, Page};
use spotcheck_report::{read_ledger, render, Filter, ReadOptions, S3LedgerStore};
use spotcheck_tests::checkpoints::{get, put};
use spotcheck_tests::emulators::{self, Emulators, Tuning};
use spotcheck_tests::ledger::{spot_lineage, state_change, Discard, MemoryJobs, NoCheckpoints};
use spotcheck_tests::local::{JobRequest, LocalSageMaker, Options};

use crate::handlers::{handler, seed_checkpoints, Lines};

const P3: &str = "ml.p3.2xlarge";
const G5: &str = "ml.g5.2xlarge";
const PREFIX: &str = "spotcheck/";

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6 * (1.0 + a.abs().max(b.abs()))
}

async fn report(s3_endpoint: &str, bucket: &str, filter: &Filter) -> LedgerReport {
    let store = S3LedgerStore::new(
        emulators::s3(s3_endpoint).await,
        &format!("s3://{bucket}/{PREFIX}"),
    )
    .expect("a ledger location");
    read_ledger(&store, filter, ReadOptions::default())
        .await
        .expect("the ledger reads")
        .finish(filter)
}

fn num(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// A real lineage and a give-up, recorded by the handler from the local service's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_of_a_real_lineage_matches_what_sagemaker_ran() {
    let e = Emulators::from_env();
    let s3 = emulators::s3(&e.s3).await;
    let bucket = emulators::bucket(&s3, "report-ml").await;
    let ledger = emulators::bucket(&s3, "report-ledger").await;
    let root = emulators::unique("rep");
    let checkpoints = format!("{root}/checkpoints");
    seed_checkpoints(&s3, &bucket, &checkpoints, &[100, 200, 300]).await;
    // Step 300 turns corrupt: 100 checkpointed steps the relaunch cannot resume from.
    let model = format!("{checkpoints}/algo-1/step-000000000300/model.safetensors");
    let mut bytes = get(&s3, &bucket, &model).await;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    put(&s3, &bucket, &model, bytes).await;

    // p3 capacity leaves at 400 s for 300 s (SageMaker restarts the job), then at 1600 s for
    // good (MaxWaitTimeExceeded, relaunched on p3 where it never starts, then on g5).
    let local = LocalSageMaker::start(
        &e.s3,
        Options {
            time_scale: 100.0,
            outages: vec![(P3.into(), 400.0, 300.0), (P3.into(), 1600.0, 1.0e7)],
            tracked_events: true,
            grace_seconds: 120.0,
            ..Options::default()
        },
    )
    .await;
    let lines = Lines::default();
    let h = handler(
        &local.endpoint(),
        &e.s3,
        &e.eventbridge,
        &ledger,
        &Tuning::lambda().await,
    );
    let mut request = JobRequest::spot(&root, P3, &bucket);
    request.checkpoint_uri = Some(format!("s3://{bucket}/{checkpoints}"));
    request.complete_on = G5.into();
    request.tags = vec![("spotcheck:instance-ladder".into(), format!("{P3},{G5}"))];
    local.create(&request.body());
    let failing = format!("{root}-bug");
    let mut request = JobRequest::spot(&failing, G5, &bucket);
    request.exit_with = Some(3);
    local.create(&request.body());
    let r2 = relaunch_name(&root, 2);
    let r3 = relaunch_name(&root, 3);

    let deadline = Instant::now() + Duration::from_secs(150);
    let (mut completed, mut gave_up) = (false, false);
    while !(completed && gave_up) {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = local
            .next_event(left)
            .await
            .unwrap_or_else(|| panic!("the jobs did not finish in time: {}", local.summary()));
        let d = &event["detail"];
        let label = format!(
            "{} {}/{}",
            d["TrainingJobName"].as_str().unwrap_or_default(),
            d["TrainingJobStatus"].as_str().unwrap_or_default(),
            d["SecondaryStatus"].as_str().unwrap_or_default()
        );
        h.handle(
            &serde_json::to_vec(&event).expect("JSON"),
            local.now(),
            &lines,
        )
        .await
        .unwrap_or_else(|err| panic!("{label}: {err}"));
        local.ack();
        completed |= label == format!("{r3} Completed/Completed");
        gave_up |= label == format!("{failing} Failed/Failed");
    }

    // What the service ran: the ground truth.
    let prices = PriceTable::builtin();
    let jobs = local.service.jobs();
    let job = |name: &str| {
        jobs.iter()
            .find(|j| j.name == name)
            .unwrap_or_else(|| panic!("{name} ran: {}", local.summary()))
    };
    let price = |j: &spotcheck_local::service::JobView| {
        prices
            .usd_per_hour(&j.instance_type)
            .expect("a priced type")
            / 3600.0
    };
    let lineage_jobs = [job(&root), job(&r2), job(&r3)];
    let training: u64 = lineage_jobs
        .iter()
        .map(|j| num(&j.describe, "TrainingTimeInSeconds"))
        .sum();
    let billable: u64 = lineage_jobs
        .iter()
        .map(|j| num(&j.describe, "BillableTimeInSeconds"))
        .sum();
    let on_demand: f64 = lineage_jobs
        .iter()
        .map(|j| num(&j.describe, "TrainingTimeInSeconds") as f64 * price(j))
        .sum();
    let spot: f64 = lineage_jobs
        .iter()
        .map(|j| num(&j.describe, "BillableTimeInSeconds") as f64 * price(j))
        .sum();
    let interruptions: u64 = lineage_jobs
        .iter()
        .map(|j| u64::from(j.state.interruptions))
        .sum();
    let restarts: u64 = lineage_jobs
        .iter()
        .map(|j| u64::from(j.state.instances.saturating_sub(1)))
        .sum();
    assert_eq!(
        (interruptions, restarts),
        (2, 1),
        "the trace: two interruptions, one restart; {}",
        local.summary()
    );
    assert_eq!(job(&root).state.secondary, "MaxWaitTimeExceeded");

    let r = report(&e.s3, &ledger, &Filter::default()).await;
    let text = render::text(&r, "ledger");
    assert!(r.records.skipped.is_empty(), "{text}");
    assert_eq!(r.records.older_shape, 0, "{text}");
    assert_eq!(r.lineages.len(), 2, "{text}");
    let row = |name: &str| {
        r.lineages
            .iter()
            .find(|l| l.root == name)
            .unwrap_or_else(|| panic!("no lineage {name}: {text}"))
    };
    let l = row(&root);
    assert_eq!(l.status, Status::Completed, "{text}");
    let f = &l.figures;
    assert_eq!(
        (
            f.jobs,
            f.interruptions,
            f.sagemaker_restarts,
            f.relaunches,
            f.give_ups
        ),
        (3, interruptions, restarts, 2, 0),
        "{text}"
    );
    assert_eq!(
        (f.validation_failures, f.lost_steps),
        (2, 100),
        "the corrupt step 300, found at both relaunches, lost once: {text}"
    );
    assert_eq!(
        (f.training_seconds, f.billable_seconds),
        (training, billable),
        "{text}"
    );
    assert!(
        close(f.on_demand_usd, on_demand) && close(f.spot_usd, spot),
        "{text}"
    );
    assert_eq!(l.instance_types, [G5, P3], "{text}");
    let c = l.counterfactual.as_ref().expect("a counterfactual");
    assert_eq!(
        c.without_spotcheck.outcome.as_deref(),
        Some("Stopped/MaxWaitTimeExceeded")
    );
    assert!(!c.without_spotcheck.completed && c.with_spotcheck.completed);
    assert_eq!(c.without_spotcheck.step_reached, Some(200), "{text}");
    let root_bill = num(&job(&root).describe, "BillableTimeInSeconds") as f64 * price(job(&root));
    assert!(
        close(c.without_spotcheck.cost_usd.unwrap_or(-1.0), root_bill),
        "{text}"
    );
    assert!(
        close(c.with_spotcheck.cost_usd.unwrap_or(-1.0), spot),
        "{text}"
    );
    assert!(
        close(c.on_demand.cost_usd.unwrap_or(-1.0), on_demand),
        "{text}"
    );

    let g = row(&failing);
    assert_eq!(g.status, Status::GaveUp, "{text}");
    assert_eq!(g.give_up_cause.as_deref(), Some("user_error"));
    assert_eq!(
        (g.figures.jobs, g.figures.give_ups, g.figures.relaunches),
        (1, 1, 0)
    );
    assert_eq!(
        g.figures.training_seconds,
        num(&job(&failing).describe, "TrainingTimeInSeconds"),
        "the give-up record carries the job's times"
    );
    assert_eq!(r.total.jobs, 4);
    assert_eq!(r.total.give_ups, 1);
    assert!(close(r.total.spot_usd, f.spot_usd + g.figures.spot_usd));
    assert_eq!(
        (r.counterfactual.lineages, r.counterfactual.rescued),
        (2, 1)
    );
    assert!(
        text.contains(&format!("{root}: without spotcheck: stopped at step 200")),
        "{text}"
    );

    // Filters: one lineage; a time range after everything reads nothing.
    let only = report(
        &e.s3,
        &ledger,
        &Filter {
            lineage: Some(failing.clone()),
            ..Filter::default()
        },
    )
    .await;
    assert_eq!(only.lineages.len(), 1);
    assert_eq!(only.total.jobs, 1);
    let later = Filter {
        since: Some(spotcheck_control::Timestamp::parse("2999-01-01T00:00:00Z").expect("a time")),
        ..Filter::default()
    };
    let none = report(&e.s3, &ledger, &later).await;
    assert_eq!(none.records.read, 0);
    assert_eq!(none.records.filtered_out, r.records.listed);
    assert!(none.lineages.is_empty());
}

/// A [`LedgerStore`] that counts what the reader asks of the real one.
struct Counting<S> {
    inner: S,
    lists: AtomicU64,
    largest_page: AtomicUsize,
    gets: AtomicU64,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

impl<S: LedgerStore + Sync> LedgerStore for Counting<S> {
    async fn list(&self, token: Option<String>) -> Result<Page, AwsError> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        let page = self.inner.list(token).await?;
        self.largest_page
            .fetch_max(page.objects.len(), Ordering::SeqCst);
        Ok(page)
    }

    async fn get(&self, key: &str, max_bytes: u64) -> Result<Vec<u8>, AwsError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        let got = self.inner.get(key, max_bytes).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        got
    }
}

/// Lineages of the bulk test: each one spot job, interrupted twice (restarted both times),
/// completed: four records each (two interruptions, the job's savings, the lineage summary).
const LINEAGES: usize = 5000;
const TRAINING: i32 = 3600;
const BILLABLE: i32 = 1260;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tens_of_thousands_of_records_are_read_page_by_page_with_bounded_reads() {
    let e = Emulators::from_env();
    let s3 = emulators::s3(&e.s3).await;
    let ledger = emulators::bucket(&s3, "report-bulk").await;
    let tag = emulators::unique("bulk");
    let h = Arc::new(SageMakerHandler {
        jobs: MemoryJobs::default(),
        checkpoints: NoCheckpoints,
        ledger: S3Ledger::new(s3.clone(), &ledger, PREFIX),
        events: Discard,
        config: HandlerConfig::new(Policy::default()),
    });
    let day_ms = 86_400_000;
    let base = 1_793_000_000_000i64; // 2026-10-26
    let written = Instant::now();
    futures::stream::iter(0..LINEAGES)
        .for_each_concurrent(48, |i| {
            let h = h.clone();
            let tag = tag.clone();
            async move {
                let name = format!("{tag}-{i:05}");
                // A week of lineages, and every type the ladder might use.
                let it = ["ml.p3.2xlarge", "ml.g5.2xlarge", "ml.g4dn.xlarge"][i % 3];
                let created = base + (i % 7) as i64 * day_ms + i as i64 * 1000;
                for (n, state) in spot_lineage(&name, it, created, 2, (TRAINING, BILLABLE))
                    .into_iter()
                    .enumerate()
                {
                    let event = state_change(&state, &format!("{name}-{n}"));
                    h.jobs.set(state);
                    let now = spotcheck_control::Timestamp::from_epoch_ms(created + 86_400_000)
                        .expect("a time");
                    h.handle(&event, now, &Discard)
                        .await
                        .unwrap_or_else(|err| panic!("{name} step {n}: {err}"));
                }
            }
        })
        .await;
    let write_seconds = written.elapsed().as_secs_f64();

    let store = Counting {
        inner: S3LedgerStore::new(
            emulators::s3(&e.s3).await,
            &format!("s3://{ledger}/{PREFIX}"),
        )
        .expect("a location"),
        lists: AtomicU64::new(0),
        largest_page: AtomicUsize::new(0),
        gets: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        most_in_flight: AtomicUsize::new(0),
    };
    let options = ReadOptions {
        concurrency: 16,
        ..ReadOptions::default()
    };
    let read = Instant::now();
    let agg = read_ledger(&store, &Filter::default(), options)
        .await
        .expect("the ledger reads");
    let read_seconds = read.elapsed().as_secs_f64();
    let records = 4 * LINEAGES;
    // Memory by design: per job and per lineage, not per record; a page and 16 bodies at most.
    assert_eq!(
        agg.entries(),
        2 * LINEAGES + spotcheck_report::aggregate::TIMELINES,
        "one entry per job and per lineage summary, plus the kept timelines"
    );
    assert_eq!(
        store.lists.load(Ordering::SeqCst),
        records.div_ceil(1000) as u64
    );
    assert!(store.largest_page.load(Ordering::SeqCst) <= 1000);
    assert_eq!(store.gets.load(Ordering::SeqCst), records as u64);
    let most = store.most_in_flight.load(Ordering::SeqCst);
    assert!(
        (2..=16).contains(&most),
        "reads in flight: {most} (bounded by the concurrency, and concurrent)"
    );
    let r = agg.finish(&Filter::default());
    eprintln!(
        "{records} records: written by the handler in {write_seconds:.1} s, read in {read_seconds:.1} s"
    );
    assert_eq!(r.records.read, records as u64);
    assert_eq!(r.records.listed, records as u64);
    let n = LINEAGES as u64;
    let t = &r.total;
    assert_eq!(r.lineages.len(), LINEAGES);
    assert_eq!(
        (
            t.jobs,
            t.interruptions,
            t.sagemaker_restarts,
            t.relaunches,
            t.give_ups
        ),
        (n, 2 * n, 2 * n, 0, 0)
    );
    assert_eq!(
        (t.training_seconds, t.billable_seconds),
        (n * TRAINING as u64, n * BILLABLE as u64)
    );
    let prices = PriceTable::builtin();
    let expected_saved: f64 = (0..LINEAGES)
        .map(|i| {
            let it = ["ml.p3.2xlarge", "ml.g5.2xlarge", "ml.g4dn.xlarge"][i % 3];
            f64::from(TRAINING - BILLABLE) * prices.usd_per_hour(it).expect("priced") / 3600.0
        })
        .sum();
    assert!(
        close(t.saved_usd, expected_saved),
        "{} vs {expected_saved}",
        t.saved_usd
    );
    assert!(close(t.savings_percent.unwrap_or(0.0), 65.0));
    assert_eq!(r.lineages_by_status.get("completed"), Some(&n));
    assert_eq!(r.savings_by_day.len(), 7, "a week of lineages");
    assert!(close(
        r.savings_by_day.iter().map(|d| d.saved_usd).sum::<f64>(),
        expected_saved
    ));
    assert_eq!(r.counterfactual.lineages, n);
    assert_eq!(r.counterfactual.rescued, 0, "every first attempt completed");
}

/// Objects of older record shapes and objects that are no records at all.
fn older_and_odd_objects() -> Vec<(&'static str, Vec<u8>)> {
    let json = |v: Value| serde_json::to_vec(&v).expect("JSON");
    vec![
        // The job-interruption entry before `lineage` existed.
        (
            "interruptions/jobs/old-a/1.json",
            json(
                json!({"kind": "job_interruption", "recorded_at": "2026-10-01T00:00:00.000Z",
                "event_key": "sagemaker-1", "reason": "old-a (InProgress/Interrupted): …",
                "record": "interruption", "job_name": "old-a", "interruptions": 1,
                "lineage_interruptions": 1}),
            ),
        ),
        // A job savings record before attempt/interruptions/restarts existed.
        (
            "savings/jobs/old-a.json",
            json(
                json!({"job_name": "old-a", "instance_type": "ml.g5.2xlarge", "instance_count": 1,
                "training_seconds": 1000, "billable_seconds": 300, "seconds_saved": 700,
                "savings_percent": 70.0, "billed_compute_seconds": 300,
                "on_demand_usd_per_hour": 1.515, "on_demand_cost_usd": 0.42083,
                "spot_cost_usd": 0.12625, "dollars_saved": 0.29458, "lineage_root": null,
                "ended_at": "2026-10-01T02:00:00.000Z", "prices_as_of": "2025-05-01"}),
            ),
        ),
        // A checkpoint validation keyed by the event (the older key layout).
        (
            "checkpoint-validations/old-a/sagemaker-2.json",
            json(
                json!({"kind": "checkpoint_validation_failed", "recorded_at": "2026-10-01T01:00:00.000Z",
                "event_key": "sagemaker-2", "reason": "r", "uri": "s3://ml/old-a",
                "summary": {"latest_valid_step": 40, "any_corrupt": true, "finished": false},
                "latest_valid": "algo-1/step-000000000040",
                "checkpoints": [{"name": "algo-1/step-000000000050", "namespace": "algo-1", "step": 50, "status": "corrupt", "reason": "x"}],
                "not_judged": 0, "size_only": []}),
            ),
        ),
        // A give-up without the job's facts.
        (
            "give-ups/old-b/old-b.json",
            json(
                json!({"kind": "recovery_gave_up", "recorded_at": "2026-10-02T00:00:00.000Z",
                "event_key": "sagemaker-3", "reason": "r", "job_name": "old-b", "root": "old-b",
                "attempt": 1, "cause": "user_error"}),
            ),
        ),
        // Not records.
        ("README.txt", b"ledger notes".to_vec()),
        ("savings/jobs/garbled.json", b"{\"job_name\": ".to_vec()),
        ("savings/jobs/empty.json", Vec::new()),
        (
            "stops/jobs/misfiled.json",
            json(json!({"kind": "job_interruption", "job_name": "x", "interruptions": 1})),
        ),
        ("savings/lineages/strange.json", json(json!({"root": 5}))),
    ]
}

fn check_older_and_odd(r: &LedgerReport, where_: &str) {
    let text = render::text(r, where_);
    assert_eq!(r.records.listed, 9, "{where_}: {text}");
    assert_eq!(
        (r.records.read, r.records.older_shape),
        (4, 4),
        "{where_}: {text}"
    );
    let skipped: Vec<(Skip, u64)> = r.records.skipped.iter().map(|(k, v)| (*k, *v)).collect();
    assert_eq!(
        skipped,
        [
            (Skip::UnknownKey, 1),
            (Skip::NotJson, 2),
            (Skip::WrongKind, 1),
            (Skip::UnknownShape, 1)
        ],
        "{where_}: {text}"
    );
    let a = r
        .lineages
        .iter()
        .find(|l| l.root == "old-a")
        .expect("old-a");
    assert_eq!(a.status, Status::Completed);
    assert_eq!(
        (
            a.figures.interruptions,
            a.figures.validation_failures,
            a.figures.lost_steps
        ),
        (1, 1, 10)
    );
    assert_eq!(
        (a.figures.training_seconds, a.figures.billable_seconds),
        (1000, 300)
    );
    let b = r
        .lineages
        .iter()
        .find(|l| l.root == "old-b")
        .expect("old-b");
    assert_eq!((b.status, b.figures.give_ups), (Status::GaveUp, 1));
    assert!(
        text.contains("4 read (4 of an older shape), 5 skipped"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_records_are_read_and_odd_objects_skipped_in_localstack_and_the_local_s3() {
    // LocalStack.
    let e = Emulators::from_env();
    let s3 = emulators::s3(&e.s3).await;
    let ledger = emulators::bucket(&s3, "report-old").await;
    for (key, body) in older_and_odd_objects() {
        put(&s3, &ledger, &format!("{PREFIX}{key}"), body).await;
    }
    let in_localstack = report(&e.s3, &ledger, &Filter::default()).await;
    check_older_and_odd(&in_localstack, "LocalStack");

    // The local service's embedded S3.
    let dir = tempfile::tempdir().expect("a directory");
    let embedded = spotcheck_local::s3::EmbeddedS3::start(
        dir.path(),
        "127.0.0.1:0".parse().expect("an address"),
    )
    .await
    .expect("the embedded S3 starts");
    let client = spotcheck_local::s3::s3_client(&embedded.endpoint(), emulators::REGION);
    spotcheck_local::s3::ensure_bucket(&client, "ledger")
        .await
        .expect("a bucket");
    for (key, body) in older_and_odd_objects() {
        put(&client, "ledger", &format!("{PREFIX}{key}"), body).await;
    }
    let store = S3LedgerStore::new(client, &format!("s3://ledger/{PREFIX}")).expect("a location");
    let local = read_ledger(&store, &Filter::default(), ReadOptions::default())
        .await
        .expect("the embedded S3 reads")
        .finish(&Filter::default());
    check_older_and_odd(&local, "embedded S3");
    assert_eq!(
        local.lineages, in_localstack.lineages,
        "the same report from both"
    );
}
