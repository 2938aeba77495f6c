//! The local SageMaker training service: the job registry, one driver task per job, and the
//! API operations the protocol layer exposes.
//!
//! Owns [`TrainingService`]: CreateTrainingJob/Describe/List/Stop/ListTags/AddTags on plain
//! JSON, and for each job a driver that feeds the pure state machine ([`crate::job::step`])
//! with what the world says (the market's capacity, the download, the process's exit, the
//! clock's deadlines) and carries out its effects (lay out `/opt/ml`, run the trainer, signal
//! it, sync checkpoints, upload the model, emit events). State changes are published as
//! EventBridge-shaped events to every subscriber ([`TrainingService::subscribe`]).
//!
//! Fast-forward: with [`ServiceConfig::fast_forward`], when no instance is running, no event is
//! in flight to a tracked subscriber and every live job is asleep until a known time (capacity
//! returning, MaxWait), the clock jumps to the earliest such time. Idle waiting costs no wall
//! time; running time is never skipped, so billing stays scaled wall time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use spotcheck_control::PriceTable;
use spotcheck_protocol::parse_step_dir_name;
use tokio::sync::{mpsc, oneshot, watch};

use crate::api::{self, ApiError, TrainingJobRequest};
use crate::clock::{EpochMs, SimClock};
use crate::events::state_change_event;
use crate::job::{self, Effect, Input, JobSpec, JobState, Phase};
use crate::market::{Market, MarketConfig};
use crate::runner::{self, Images, Layout};
use crate::sync::{split_s3_uri, CheckpointSync, SyncRecord, UploadLimits};

/// How the service runs.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Region in ARNs and events.
    pub region: String,
    /// Account in ARNs and events.
    pub account: String,
    /// Where job trees and logs go.
    pub workdir: PathBuf,
    /// Training image → program.
    pub images: Images,
    /// Simulated seconds per wall second.
    pub time_scale: f64,
    /// Skip idle stretches (see the module doc).
    pub fast_forward: bool,
    /// Simulated seconds between SIGTERM and SIGKILL (SageMaker: 120).
    pub grace_seconds: f64,
    /// Wall time between checkpoint sync passes.
    pub sync_interval: Duration,
    /// How fast the checkpoint sync uploads (simulated time): its lag and bandwidth.
    pub upload: UploadLimits,
    /// The spot market.
    pub market: MarketConfig,
    /// On-demand prices (the ledger's table).
    pub on_demand_prices: PriceTable,
    /// Spot prices replacing on-demand × (1 − discount) for the types they name.
    pub spot_prices: Option<PriceTable>,
}

impl ServiceConfig {
    /// Defaults: us-east-1, account 000000000000, real time, SageMaker's 120 s grace period,
    /// no interruptions (half of any reclaims unwarned, when a rate is set), and a checkpoint
    /// uploader that picks files up after a second and ships 100 MB/s.
    pub fn new(workdir: PathBuf, trainer: PathBuf) -> Self {
        ServiceConfig {
            region: "us-east-1".into(),
            account: "000000000000".into(),
            workdir,
            images: Images {
                default: trainer,
                mapped: BTreeMap::new(),
            },
            time_scale: 1.0,
            fast_forward: false,
            grace_seconds: 120.0,
            sync_interval: Duration::from_millis(250),
            upload: UploadLimits {
                lag: Duration::from_secs(1),
                bandwidth: Some(100_000_000),
            },
            market: MarketConfig::default(),
            on_demand_prices: PriceTable::builtin(),
            spot_prices: None,
        }
    }
}

/// Something that happened to a job, for timelines and reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Note {
    /// The status changed.
    Status {
        /// TrainingJobStatus.
        status: String,
        /// SecondaryStatus.
        secondary: String,
        /// The transition's message.
        message: String,
    },
    /// Every file of a checkpoint, and its manifest, reached S3 (it is complete there).
    CheckpointUploaded {
        /// Training step.
        step: u64,
    },
    /// Host `host` of instance group `n` started its training process.
    ProcessStarted {
        /// Instance group number (1-based: 1 + restarts).
        instance: u32,
        /// The host (`algo-1` …).
        host: String,
        /// Its log file.
        log: PathBuf,
    },
    /// A host's process exited.
    ProcessExited {
        /// Instance group number.
        instance: u32,
        /// The host.
        host: String,
        /// Exit code (`None`: signal).
        code: Option<i32>,
    },
    /// A checkpoint sync or upload step failed (the job goes on).
    SyncFailed {
        /// What failed.
        error: String,
    },
}

/// A timestamped [`Note`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Noted {
    /// Simulated time.
    pub at: EpochMs,
    /// What happened.
    #[serde(flatten)]
    pub note: Note,
}

/// A snapshot of one job for observers.
#[derive(Clone, Debug, Serialize)]
pub struct JobView {
    /// Name.
    pub name: String,
    /// Instance type.
    pub instance_type: String,
    /// Managed spot.
    pub spot: bool,
    /// The state.
    pub state: JobState,
    /// Tags.
    pub tags: Vec<(String, String)>,
    /// Its notes, in order.
    pub notes: Vec<Noted>,
    /// DescribeTrainingJob output.
    pub describe: Value,
}

enum Msg {
    Input(u32, Input),
    /// Instance group `n` is laid out: one checkpoint sync per host (when the job has a
    /// checkpoint location).
    Ready(u32, Result<Vec<Option<CheckpointSync>>, String>),
    /// One host's process of instance group `n` exited.
    HostExited(u32, usize, Option<i32>, Option<String>),
}

struct JobEntry {
    req: TrainingJobRequest,
    spec: JobSpec,
    state: JobState,
    arn: String,
    tags: Vec<(String, String)>,
    tx: mpsc::UnboundedSender<Msg>,
    model_artifacts: Option<String>,
    /// Asleep until this time (None: busy or not yet settled).
    wake_at: Option<EpochMs>,
    notes: Vec<Noted>,
}

struct Inner {
    config: ServiceConfig,
    clock: Arc<SimClock>,
    s3: aws_sdk_s3::Client,
    market: Mutex<Market>,
    jobs: Mutex<BTreeMap<String, JobEntry>>,
    sinks: Mutex<Vec<(mpsc::UnboundedSender<Value>, bool)>>,
    in_flight: AtomicI64,
    event_seq: AtomicU64,
    changes: watch::Sender<u64>,
}

/// The service (cheap to clone).
#[derive(Clone)]
pub struct TrainingService {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl TrainingService {
    /// A service using `s3` for checkpoints, channels and models. Must be called inside a Tokio
    /// runtime (it spawns the fast-forward task when enabled).
    pub fn new(config: ServiceConfig, clock: Arc<SimClock>, s3: aws_sdk_s3::Client) -> Self {
        let mut config = config;
        // Paths reach training processes that run in their instance directories.
        config.workdir = crate::absolute(&config.workdir);
        config.images.default = crate::absolute(&config.images.default);
        for program in config.images.mapped.values_mut() {
            *program = crate::absolute(program);
        }
        let market = Market::new(
            config.market.clone(),
            clock.now_ms(),
            config.on_demand_prices.clone(),
            config.spot_prices.clone(),
        );
        let fast_forward = config.fast_forward;
        let service = TrainingService {
            inner: Arc::new(Inner {
                config,
                clock,
                s3,
                market: Mutex::new(market),
                jobs: Mutex::new(BTreeMap::new()),
                sinks: Mutex::new(Vec::new()),
                in_flight: AtomicI64::new(0),
                event_seq: AtomicU64::new(0),
                changes: watch::channel(0).0,
            }),
        };
        if fast_forward {
            let weak = Arc::downgrade(&service.inner);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let Some(inner) = weak.upgrade() else { break };
                    fast_forward_once(&inner);
                }
            });
        }
        service
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<SimClock> {
        &self.inner.clock
    }

    /// The configuration.
    pub fn config(&self) -> &ServiceConfig {
        &self.inner.config
    }

    /// Spot and on-demand USD/hour of an instance type, from the market.
    pub fn prices(&self, instance_type: &str) -> (Option<f64>, Option<f64>) {
        let m = lock(&self.inner.market);
        (
            m.spot_usd_per_hour(instance_type),
            m.on_demand_usd_per_hour(instance_type),
        )
    }

    /// Every outage of a type up to `until` (for reports).
    pub fn outages(&self, instance_type: &str, until: EpochMs) -> Vec<crate::market::Outage> {
        lock(&self.inner.market).outages(instance_type, until)
    }

    /// Every future state-change event. A `tracked` subscriber must call [`Self::ack`] once per
    /// event when it has handled it (fast-forward waits for that).
    pub fn subscribe(&self, tracked: bool) -> mpsc::UnboundedReceiver<Value> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.inner.sinks).push((tx, tracked));
        rx
    }

    /// A tracked subscriber finished one event.
    pub fn ack(&self) {
        self.inner.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.inner.changes.send_modify(|n| *n += 1);
    }

    /// Whether no event is in flight to a tracked subscriber.
    pub fn is_idle(&self) -> bool {
        self.inner.in_flight.load(Ordering::SeqCst) <= 0
    }

    /// Waits until no event is in flight (or `timeout`); returns whether it is idle.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let mut changes = self.changes();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.is_idle() {
                return true;
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return self.is_idle(),
            }
        }
    }

    /// A receiver that changes on every job change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Every job, by name.
    pub fn jobs(&self) -> Vec<JobView> {
        let now = self.inner.clock.now_ms();
        lock(&self.inner.jobs)
            .iter()
            .map(|(name, e)| JobView {
                name: name.clone(),
                instance_type: e.req.instance_type.clone(),
                spot: e.req.spot,
                state: e.state.clone(),
                tags: e.tags.clone(),
                notes: e.notes.clone(),
                describe: describe_entry(e, now),
            })
            .collect()
    }

    /// Waits until `done` holds for the jobs, or `timeout` (wall) passes; returns whether it
    /// held.
    pub async fn wait_until(&self, timeout: Duration, done: impl Fn(&[JobView]) -> bool) -> bool {
        let mut changes = self.changes();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if done(&self.jobs()) {
                return true;
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return done(&self.jobs()),
            }
        }
    }

    /// Dispatches one JSON 1.1 operation (`SageMaker.<Op>` without the prefix).
    pub fn call(&self, operation: &str, body: &Value) -> Result<Value, ApiError> {
        match operation {
            "CreateTrainingJob" => self.create(body),
            "DescribeTrainingJob" => self.describe(body),
            "StopTrainingJob" => self.stop(body),
            "ListTrainingJobs" => self.list(body),
            "ListTags" => self.list_tags(body),
            "AddTags" => self.add_tags(body),
            other => Err(ApiError::unknown_operation(other)),
        }
    }

    /// CreateTrainingJob.
    pub fn create(&self, body: &Value) -> Result<Value, ApiError> {
        let req = TrainingJobRequest::parse(body)?;
        let inner = &self.inner;
        let now = inner.clock.now_ms();
        let grace_ms = (inner.config.grace_seconds * 1000.0) as i64;
        let ratio = lock(&inner.market).billable_ratio(&req.instance_type, req.spot);
        let spec = req.spec(ratio, grace_ms);
        let arn = api::job_arn(&inner.config.region, &inner.config.account, &req.name);
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut jobs = lock(&inner.jobs);
            if jobs.contains_key(&req.name) {
                return Err(ApiError::in_use(&req.name));
            }
            let state = JobState::new(&spec, now);
            let notes = vec![Noted {
                at: now,
                note: Note::Status {
                    status: state.status.into(),
                    secondary: state.secondary.into(),
                    message: state.transitions[0].message.clone(),
                },
            }];
            jobs.insert(
                req.name.clone(),
                JobEntry {
                    tags: req.tags.clone(),
                    req: req.clone(),
                    spec,
                    state,
                    arn: arn.clone(),
                    tx,
                    model_artifacts: None,
                    wake_at: None,
                    notes,
                },
            );
        }
        self.emit(&req.name);
        tokio::spawn(drive(self.inner.clone(), req.name.clone(), rx));
        Ok(json!({"TrainingJobArn": arn}))
    }

    fn name_of(body: &Value) -> Result<String, ApiError> {
        body.get("TrainingJobName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| ApiError::validation("1 validation error detected: Value null at 'trainingJobName' failed to satisfy constraint: Member must not be null"))
    }

    /// DescribeTrainingJob.
    pub fn describe(&self, body: &Value) -> Result<Value, ApiError> {
        let name = Self::name_of(body)?;
        let now = self.inner.clock.now_ms();
        let jobs = lock(&self.inner.jobs);
        let e = jobs.get(&name).ok_or_else(|| ApiError::not_found(&name))?;
        Ok(describe_entry(e, now))
    }

    /// Reclaims a spot job's instance now, as the market would (with or without a warning to
    /// the process): fault injection for tests and experiments, independent of how fast the
    /// machine trains. A job that is not a spot job, or not downloading or training, is not
    /// affected (as by a market outage).
    pub fn reclaim_now(&self, name: &str, warning: bool, host: u32) -> Result<(), ApiError> {
        let jobs = lock(&self.inner.jobs);
        let e = jobs.get(name).ok_or_else(|| ApiError::not_found(name))?;
        let _ = e.tx.send(Msg::Input(0, Input::Reclaimed { warning, host }));
        Ok(())
    }

    /// StopTrainingJob.
    pub fn stop(&self, body: &Value) -> Result<Value, ApiError> {
        let name = Self::name_of(body)?;
        let jobs = lock(&self.inner.jobs);
        let e = jobs.get(&name).ok_or_else(|| ApiError::not_found(&name))?;
        if e.state.status != job::status::IN_PROGRESS {
            return Err(ApiError::validation(format!(
                "The request was rejected because the training job is in status {}.",
                e.state.status
            )));
        }
        let _ = e.tx.send(Msg::Input(0, Input::StopRequested));
        Ok(json!({}))
    }

    /// ListTrainingJobs (NameContains, StatusEquals, CreationTimeAfter/Before, SortBy,
    /// SortOrder, MaxResults, NextToken).
    pub fn list(&self, body: &Value) -> Result<Value, ApiError> {
        let max = match body.get("MaxResults") {
            None | Some(Value::Null) => 10,
            Some(v) => match v.as_u64() {
                Some(n @ 1..=100) => n as usize,
                _ => return Err(ApiError::validation("MaxResults must be between 1 and 100")),
            },
        };
        let start = match body.get("NextToken").and_then(Value::as_str) {
            None => 0,
            Some(t) => t
                .parse::<usize>()
                .map_err(|_| ApiError::validation("invalid NextToken"))?,
        };
        let contains = body
            .get("NameContains")
            .and_then(Value::as_str)
            .unwrap_or("");
        let status = body.get("StatusEquals").and_then(Value::as_str);
        let after = body.get("CreationTimeAfter").and_then(Value::as_f64);
        let before = body.get("CreationTimeBefore").and_then(Value::as_f64);
        let sort_by = body
            .get("SortBy")
            .and_then(Value::as_str)
            .unwrap_or("CreationTime");
        if !matches!(sort_by, "Name" | "CreationTime" | "Status") {
            return Err(ApiError::validation(format!(
                "SortBy {sort_by:?} must be Name, CreationTime or Status"
            )));
        }
        let descending = match body.get("SortOrder").and_then(Value::as_str) {
            None | Some("Ascending") => false,
            Some("Descending") => true,
            Some(o) => {
                return Err(ApiError::validation(format!(
                    "SortOrder {o:?} must be Ascending or Descending"
                )))
            }
        };
        let jobs = lock(&self.inner.jobs);
        let mut rows: Vec<(&String, &JobEntry)> = jobs
            .iter()
            .filter(|(n, e)| {
                n.to_ascii_lowercase()
                    .contains(&contains.to_ascii_lowercase())
                    && status.is_none_or(|s| s == e.state.status)
                    && after.is_none_or(|a| e.state.created as f64 / 1000.0 > a)
                    && before.is_none_or(|b| (e.state.created as f64 / 1000.0) < b)
            })
            .collect();
        rows.sort_by(|a, b| match sort_by {
            "Name" => a.0.cmp(b.0),
            "Status" => a.1.state.status.cmp(b.1.state.status).then(a.0.cmp(b.0)),
            _ => a.1.state.created.cmp(&b.1.state.created).then(a.0.cmp(b.0)),
        });
        if descending {
            rows.reverse();
        }
        let page: Vec<Value> = rows
            .iter()
            .skip(start)
            .take(max)
            .map(|(n, e)| api::summary(n, &e.arn, &e.state))
            .collect();
        let mut out = json!({"TrainingJobSummaries": page});
        if start + max < rows.len() {
            out["NextToken"] = json!((start + max).to_string());
        }
        Ok(out)
    }

    fn by_arn<'a>(
        jobs: &'a mut BTreeMap<String, JobEntry>,
        body: &Value,
    ) -> Result<&'a mut JobEntry, ApiError> {
        let arn = body
            .get("ResourceArn")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::validation("1 validation error detected: Value null at 'resourceArn' failed to satisfy constraint: Member must not be null"))?;
        jobs.values_mut()
            .find(|e| e.arn == arn)
            .ok_or_else(|| ApiError::not_found(arn))
    }

    /// ListTags.
    pub fn list_tags(&self, body: &Value) -> Result<Value, ApiError> {
        let mut jobs = lock(&self.inner.jobs);
        let e = Self::by_arn(&mut jobs, body)?;
        let max = body
            .get("MaxResults")
            .and_then(Value::as_u64)
            .unwrap_or(50)
            .clamp(1, 100) as usize;
        let start = match body.get("NextToken").and_then(Value::as_str) {
            None => 0,
            Some(t) => t
                .parse::<usize>()
                .map_err(|_| ApiError::validation("invalid NextToken"))?,
        };
        let tags: Vec<Value> = e
            .tags
            .iter()
            .skip(start)
            .take(max)
            .map(|(k, v)| json!({"Key": k, "Value": v}))
            .collect();
        let mut out = json!({"Tags": tags});
        if start + max < e.tags.len() {
            out["NextToken"] = json!((start + max).to_string());
        }
        Ok(out)
    }

    /// AddTags (a key given again replaces its value).
    pub fn add_tags(&self, body: &Value) -> Result<Value, ApiError> {
        let new = api::parse_tags(body.get("Tags"))?;
        let mut jobs = lock(&self.inner.jobs);
        let e = Self::by_arn(&mut jobs, body)?;
        for (k, v) in &new {
            match e.tags.iter_mut().find(|(key, _)| key == k) {
                Some(slot) => slot.1 = v.clone(),
                None => e.tags.push((k.clone(), v.clone())),
            }
        }
        let tags: Vec<Value> = new
            .iter()
            .map(|(k, v)| json!({"Key": k, "Value": v}))
            .collect();
        Ok(json!({"Tags": tags}))
    }

    /// Publishes the current state of a job to every subscriber.
    fn emit(&self, name: &str) {
        emit(&self.inner, name);
    }
}

fn describe_entry(e: &JobEntry, now: EpochMs) -> Value {
    api::describe(
        &e.req,
        &e.spec,
        &e.state,
        &e.arn,
        e.model_artifacts.as_deref(),
        now,
    )
}

fn emit(inner: &Inner, name: &str) {
    let now = inner.clock.now_ms();
    let event = {
        let jobs = lock(&inner.jobs);
        let Some(e) = jobs.get(name) else { return };
        let seq = inner.event_seq.fetch_add(1, Ordering::SeqCst);
        let id = event_id(inner.config.market.seed, name, seq);
        state_change_event(
            &describe_entry(e, now),
            &e.tags,
            &id,
            now,
            &inner.config.region,
            &inner.config.account,
        )
    };
    let mut sinks = lock(&inner.sinks);
    sinks.retain(|(tx, tracked)| {
        if *tracked {
            inner.in_flight.fetch_add(1, Ordering::SeqCst);
        }
        let ok = tx.send(event.clone()).is_ok();
        if !ok && *tracked {
            inner.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
        ok
    });
}

/// A deterministic UUID-shaped event id.
fn event_id(seed: u64, name: &str, seq: u64) -> String {
    let d = Sha256::new()
        .chain_update(seed.to_le_bytes())
        .chain_update(name.as_bytes())
        .chain_update(seq.to_le_bytes())
        .finalize();
    let h = hex::encode(&d[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn fast_forward_once(inner: &Inner) {
    if inner.in_flight.load(Ordering::SeqCst) > 0 {
        return;
    }
    let now = inner.clock.now_ms();
    let target = {
        let jobs = lock(&inner.jobs);
        let mut target: Option<EpochMs> = None;
        for e in jobs.values() {
            if e.state.is_terminal() {
                continue;
            }
            if e.state.phase != Phase::Waiting {
                return;
            }
            match e.wake_at {
                Some(t) => target = Some(target.map_or(t, |x| x.min(t))),
                None => return,
            }
        }
        target
    };
    if let Some(t) = target {
        inner.clock.advance(t - now);
    }
}

fn note(inner: &Inner, name: &str, note: Note) {
    let at = inner.clock.now_ms();
    if let Some(e) = lock(&inner.jobs).get_mut(name) {
        e.notes.push(Noted { at, note });
    }
    inner.changes.send_modify(|n| *n += 1);
}

/// One host's process and checkpoint sync.
struct Host {
    pid: Option<u32>,
    exited: watch::Receiver<bool>,
    /// Stops the sync; `Some(limit)`: after a last pass of at most `limit` (wall time).
    sync_stop: Option<oneshot::Sender<Option<Duration>>>,
    sync_done: Option<tokio::task::JoinHandle<()>>,
}

impl Host {
    /// Stops the sync and waits for it; `flush`: after a last pass of at most that long (the
    /// instance's remaining life), else at once, abandoning an upload in flight.
    async fn stop_sync(&mut self, flush: Option<Duration>) {
        if let Some(stop) = self.sync_stop.take() {
            let _ = stop.send(flush);
        }
        if let Some(done) = self.sync_done.take() {
            let limit = flush.unwrap_or_default() + Duration::from_secs(10);
            let _ = tokio::time::timeout(limit, done).await;
        }
    }

    /// SIGKILLs the container's processes (if its first is alive) and waits for it to be gone.
    async fn kill(&mut self) {
        if !*self.exited.borrow() {
            runner::kill_container(self.pid);
            let mut exited = self.exited.clone();
            let _ = tokio::time::timeout(Duration::from_secs(30), exited.wait_for(|e| *e)).await;
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // A service shut down mid-run must not leave trainers behind.
        if !*self.exited.borrow() {
            runner::kill_container(self.pid);
        }
    }
}

/// How one host's process ended: its exit code (`None`: a signal) and failure file.
type HostExit = (Option<i32>, Option<String>);

/// The instance group's processes: one per host.
struct Running {
    hosts: Vec<Host>,
    /// How each host's process ended, once it has.
    exits: Vec<Option<HostExit>>,
}

impl Running {
    async fn stop_syncs(&mut self, flush: Option<Duration>) {
        for host in &mut self.hosts {
            host.stop_sync(flush).await;
        }
    }
}

/// What the instance group's exits mean for the job (pure): `Exited` once every host's process
/// has ended (the first failure's code, else 0), or at once when a host fails on its own while
/// the group trains — SageMaker fails the job then, whatever the other hosts do.
fn group_exit(exits: &[Option<HostExit>], phase: Phase) -> Option<Input> {
    let failed = exits
        .iter()
        .flatten()
        .find(|(code, _)| *code != Some(0))
        .cloned();
    let all = exits.iter().all(Option::is_some);
    match (failed, phase) {
        (Some((code, failure)), Phase::Training) => Some(Input::Exited { code, failure }),
        (failed, _) if all => {
            let (code, failure) = failed.unwrap_or((Some(0), None));
            Some(Input::Exited { code, failure })
        }
        _ => None,
    }
}

/// The host a market outage takes away (deterministic; the whole job is interrupted anyway).
fn reclaimed_host(outage: &crate::market::Outage, count: u32) -> u32 {
    ((outage.start / 1000).unsigned_abs() % u64::from(count.max(1))) as u32
}

/// A free port on loopback for the hosts' rendezvous.
fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map_or(29_500, |a| a.port())
}

async fn drive(inner: Arc<Inner>, name: String, mut rx: mpsc::UnboundedReceiver<Msg>) {
    let mut running: Option<Running> = None;
    let mut ready_syncs: Vec<Option<CheckpointSync>> = Vec::new();
    let mut next_reclaim: Option<crate::market::Outage> = None;
    loop {
        let now = inner.clock.now_ms();
        let Some((req, spec, state)) = lock(&inner.jobs)
            .get(&name)
            .map(|e| (e.req.clone(), e.spec.clone(), e.state.clone()))
        else {
            return;
        };
        if state.is_terminal() {
            return;
        }
        let itype = req.instance_type.clone();
        let mut world = None;
        let mut wake = job::next_deadline(&spec, &state, now);
        let earliest = |w: Option<EpochMs>, t: EpochMs| Some(w.map_or(t, |w| w.min(t)));
        match state.phase {
            Phase::Waiting if state.stop_cause.is_none() => {
                let outage = if spec.spot {
                    lock(&inner.market).outage_at(&itype, now)
                } else {
                    None
                };
                match outage {
                    None => world = Some(Input::Capacity),
                    Some(o) => wake = earliest(wake, o.end),
                }
            }
            Phase::Downloading | Phase::Training if spec.spot => match next_reclaim {
                Some(o) if o.start <= now => {
                    world = Some(Input::Reclaimed {
                        warning: o.warning,
                        host: reclaimed_host(&o, spec.instance_count),
                    })
                }
                Some(o) => wake = earliest(wake, o.start),
                None => {}
            },
            _ => {}
        }
        let input = match world {
            Some(i) => i,
            None => {
                if let Some(e) = lock(&inner.jobs).get_mut(&name) {
                    e.wake_at = wake;
                }
                let sleep = async {
                    match wake {
                        Some(t) => inner.clock.sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                };
                let got = tokio::select! {
                    msg = rx.recv() => msg,
                    _ = sleep => Some(Msg::Input(0, Input::Tick)),
                };
                if let Some(e) = lock(&inner.jobs).get_mut(&name) {
                    e.wake_at = None;
                }
                match got {
                    None => return,
                    Some(Msg::Input(n, input)) => {
                        if n != 0 && n != state.instances {
                            continue;
                        }
                        input
                    }
                    Some(Msg::Ready(n, result)) => {
                        if n != state.instances {
                            continue;
                        }
                        match result {
                            Ok(syncs) => {
                                ready_syncs = syncs;
                                Input::Downloaded(Ok(()))
                            }
                            Err(e) => Input::Downloaded(Err(e)),
                        }
                    }
                    Some(Msg::HostExited(n, host, code, failure)) => {
                        let Some(r) = running.as_mut().filter(|_| n == state.instances) else {
                            continue;
                        };
                        if let Some(slot) = r.exits.get_mut(host) {
                            *slot = Some((code, failure));
                        }
                        match group_exit(&r.exits, state.phase) {
                            Some(input) => input,
                            None => continue,
                        }
                    }
                }
            }
        };
        let now = inner.clock.now_ms();
        let (next, effects) = job::step(&spec, &state, input, now);
        let instance = next.instances;
        let status_changed =
            next.transitions.len() != state.transitions.len() || next.status != state.status;
        // Observers must never see the new state with its event not yet in flight (a terminal
        // job and an idle bus would read as "the lineage has ended" before the control plane
        // saw the event): hold one in-flight slot from the state change until it is emitted.
        let emits = effects.contains(&Effect::Emit);
        if emits {
            inner.in_flight.fetch_add(1, Ordering::SeqCst);
        }
        {
            let mut jobs = lock(&inner.jobs);
            let Some(e) = jobs.get_mut(&name) else {
                if emits {
                    inner.in_flight.fetch_sub(1, Ordering::SeqCst);
                }
                return;
            };
            for t in &next.transitions[state.transitions.len().min(next.transitions.len())..] {
                e.notes.push(Noted {
                    at: t.start,
                    note: Note::Status {
                        status: next.status.into(),
                        secondary: t.status.clone(),
                        message: t.message.clone(),
                    },
                });
            }
            e.state = next;
        }
        if status_changed {
            inner.changes.send_modify(|n| *n += 1);
        }
        for effect in effects {
            match effect {
                Effect::Download => {
                    next_reclaim = if spec.spot {
                        lock(&inner.market).next_outage_after(&itype, now)
                    } else {
                        None
                    };
                    let inner2 = inner.clone();
                    let req2 = req.clone();
                    let tx = lock(&inner.jobs).get(&name).map(|e| e.tx.clone());
                    tokio::spawn(async move {
                        let result = download(&inner2, &req2, instance).await;
                        if let Some(tx) = tx {
                            let _ = tx.send(Msg::Ready(instance, result));
                        }
                    });
                }
                Effect::Launch => {
                    running = Some(
                        launch(
                            &inner,
                            &name,
                            &req,
                            instance,
                            std::mem::take(&mut ready_syncs),
                        )
                        .await,
                    );
                }
                Effect::Terminate => {
                    for host in running.iter().flat_map(|r| &r.hosts) {
                        if !*host.exited.borrow() {
                            runner::signal(host.pid, libc::SIGTERM);
                        }
                    }
                }
                Effect::Kill => {
                    for host in running.iter_mut().flat_map(|r| &mut r.hosts) {
                        host.kill().await;
                    }
                }
                Effect::KillHost(h) => {
                    // That instance is gone: no last sync pass, uploads in flight abandoned.
                    if let Some(host) = running.as_mut().and_then(|r| r.hosts.get_mut(h as usize)) {
                        host.kill().await;
                        host.stop_sync(None).await;
                    }
                }
                Effect::Release { flush } => {
                    // A last pass may use what is left of the instance's life: the grace
                    // period after SIGTERM (simulated time, scaled to wall time).
                    let left_ms = state.kill_at.map_or(spec.grace_ms, |k| (k - now).max(0));
                    let wall = Duration::from_secs_f64(
                        left_ms as f64 / 1000.0 / inner.config.time_scale.max(1e-9),
                    );
                    if let Some(mut r) = running.take() {
                        // Hosts still running (another host failed the job) go with it.
                        for host in &mut r.hosts {
                            host.kill().await;
                        }
                        r.stop_syncs(flush.then_some(wall)).await;
                    }
                    ready_syncs.clear();
                    next_reclaim = None;
                }
                Effect::Upload => {
                    let mut r = running.take();
                    let inner2 = inner.clone();
                    let req2 = req.clone();
                    let name2 = name.clone();
                    let tx = lock(&inner.jobs).get(&name).map(|e| e.tx.clone());
                    tokio::spawn(async move {
                        if let Some(r) = &mut r {
                            r.stop_syncs(Some(FINAL_SYNC_LIMIT)).await;
                        }
                        let result = upload_model(&inner2, &name2, &req2, instance).await;
                        if let Some(tx) = tx {
                            let _ = tx.send(Msg::Input(instance, Input::Uploaded(result)));
                        }
                    });
                }
                Effect::Emit => emit(&inner, &name),
            }
        }
        if emits {
            inner.in_flight.fetch_sub(1, Ordering::SeqCst);
            inner.changes.send_modify(|n| *n += 1);
        }
    }
}

/// How long the last checkpoint pass before a model upload may take (wall time).
const FINAL_SYNC_LIMIT: Duration = Duration::from_secs(600);

/// The hosts of instance group `instance`, with a fresh rendezvous port.
fn host_envs(req: &TrainingJobRequest) -> Vec<runner::HostEnv> {
    let hosts = runner::host_names(req.instance_count);
    let master_port = free_port();
    (0..hosts.len())
        .map(|rank| runner::HostEnv {
            hosts: hosts.clone(),
            rank,
            master_port,
        })
        .collect()
}

/// Lays out every host of the instance group and copies inputs and checkpoints in (each host
/// gets the whole checkpoint prefix, as SageMaker copies it into every instance).
async fn download(
    inner: &Inner,
    req: &TrainingJobRequest,
    instance: u32,
) -> Result<Vec<Option<CheckpointSync>>, String> {
    let mut syncs = Vec::new();
    for host in host_envs(req) {
        let layout = Layout::new(&inner.config.workdir, &req.name, instance, host.name());
        runner::prepare(&layout, req, &host, &inner.s3)
            .await
            .map_err(|e| e.to_string())?;
        let Some(uri) = &req.checkpoint_s3_uri else {
            syncs.push(None);
            continue;
        };
        let seed = Sha256::new()
            .chain_update(inner.config.market.seed.to_le_bytes())
            .chain_update(req.name.as_bytes())
            .chain_update(instance.to_le_bytes())
            .chain_update(host.name().as_bytes())
            .finalize();
        let mut seed32 = [0u8; 32];
        seed32.copy_from_slice(&seed);
        let mut sync = CheckpointSync::new(
            inner.s3.clone(),
            uri,
            layout.container_path(&req.checkpoint_local_path),
            ChaCha8Rng::from_seed(seed32),
            inner.config.upload.in_wall_time(inner.config.time_scale),
        )
        .map_err(|e| e.to_string())?;
        sync.download()
            .await
            .map_err(|e| format!("checkpoint download ({}): {e}", host.name()))?;
        syncs.push(Some(sync));
    }
    Ok(syncs)
}

/// The checkpoint directory (relative to the synced root) and step that a synced file's
/// relative path lies in, if any.
fn checkpoint_of(rel: &str) -> Option<(String, u64)> {
    let parts: Vec<&str> = rel.split('/').collect();
    let (_, dirs) = parts.split_last()?;
    dirs.iter()
        .enumerate()
        .find_map(|(i, d)| parse_step_dir_name(d).map(|step| (parts[..=i].join("/"), step)))
}

/// Starts every host's process and checkpoint sync. A host whose program cannot start exits
/// with 127 and its reason, as a container whose entrypoint is missing.
async fn launch(
    inner: &Arc<Inner>,
    name: &str,
    req: &TrainingJobRequest,
    instance: u32,
    syncs: Vec<Option<CheckpointSync>>,
) -> Running {
    let command = inner.config.images.command(req);
    let envs = host_envs(req);
    let mut syncs = syncs.into_iter();
    let mut hosts = Vec::new();
    for (index, host) in envs.iter().enumerate() {
        let sync = syncs.next().flatten();
        hosts.push(launch_host(inner, name, req, instance, index, host, &command, sync).await);
    }
    Running {
        exits: vec![None; hosts.len()],
        hosts,
    }
}

#[allow(clippy::too_many_arguments)]
async fn launch_host(
    inner: &Arc<Inner>,
    name: &str,
    req: &TrainingJobRequest,
    instance: u32,
    index: usize,
    host: &runner::HostEnv,
    command: &runner::ContainerCommand,
    sync: Option<CheckpointSync>,
) -> Host {
    let layout = Layout::new(&inner.config.workdir, name, instance, host.name());
    let log = inner
        .config
        .workdir
        .join("jobs")
        .join(name)
        .join("logs")
        .join(format!("instance-{instance}-{}.log", host.name()));
    let (exited_tx, exited) = watch::channel(false);
    let tx = lock(&inner.jobs).get(name).map(|e| e.tx.clone());
    let mut child = match runner::spawn(command, &layout, req, host, &log) {
        Ok(c) => c,
        Err(e) => {
            let _ = exited_tx.send(true);
            if let Some(tx) = tx {
                let _ = tx.send(Msg::HostExited(
                    instance,
                    index,
                    Some(127),
                    Some(format!(
                        "cannot start training image {} ({}): {e}",
                        req.image,
                        command.program.display()
                    )),
                ));
            }
            return Host {
                pid: None,
                exited,
                sync_stop: None,
                sync_done: None,
            };
        }
    };
    note(
        inner,
        name,
        Note::ProcessStarted {
            instance,
            host: host.name().to_owned(),
            log,
        },
    );
    let pid = child.id();
    let failure_file = layout.failure_file();
    let inner2 = inner.clone();
    let name2 = name.to_owned();
    let host_name = host.name().to_owned();
    tokio::spawn(async move {
        let code = child.wait().await.ok().and_then(|s| s.code());
        // The container ends with its first process, and everything left in it with it.
        if let Some(pid) = pid {
            runner::kill_session(pid);
        }
        let _ = exited_tx.send(true);
        note(
            &inner2,
            &name2,
            Note::ProcessExited {
                instance,
                host: host_name,
                code,
            },
        );
        let failure = std::fs::read_to_string(&failure_file).ok();
        if let Some(tx) = tx {
            let _ = tx.send(Msg::HostExited(instance, index, code, failure));
        }
    });
    let (sync_stop, sync_done) = match sync {
        None => (None, None),
        Some(sync) => {
            let (stop, done) = run_sync(inner.clone(), name.to_owned(), sync);
            (Some(stop), Some(done))
        }
    };
    Host {
        pid,
        exited,
        sync_stop,
        sync_done,
    }
}

/// Runs one host's checkpoint sync until told to stop (see [`Host::stop_sync`]).
fn run_sync(
    inner: Arc<Inner>,
    name: String,
    mut sync: CheckpointSync,
) -> (
    oneshot::Sender<Option<Duration>>,
    tokio::task::JoinHandle<()>,
) {
    let (stop_tx, mut stop_rx) = oneshot::channel::<Option<Duration>>();
    let interval = inner.config.sync_interval;
    let done = tokio::spawn(async move {
        // A checkpoint is in S3 once every file its manifest lists, and the manifest, is: the
        // markers rule (`dir_is_fully_uploaded`) that retention and the writers' pace use.
        let mut noted = std::collections::BTreeSet::new();
        let mut record = |sync: &mut CheckpointSync| {
            for r in sync.take_records() {
                let SyncRecord::Uploaded { rel, .. } = r else {
                    continue;
                };
                let Some((dir, step)) = checkpoint_of(&rel) else {
                    continue;
                };
                if !noted.contains(&dir)
                    && spotcheck_protocol::dir_is_fully_uploaded(&sync.local().join(&dir))
                {
                    noted.insert(dir);
                    note(&inner, &name, Note::CheckpointUploaded { step });
                }
            }
        };
        // A stop interrupts a pass in flight: an instance that goes takes its unfinished
        // uploads with it.
        let flush = loop {
            tokio::select! {
                biased;
                f = &mut stop_rx => break f.unwrap_or(None),
                result = async {
                    tokio::time::sleep(interval).await;
                    sync.pass().await
                } => if let Err(e) = result {
                    note(&inner, &name, Note::SyncFailed { error: e.to_string() });
                },
            }
            record(&mut sync);
        };
        record(&mut sync);
        if let Some(limit) = flush {
            let result = tokio::time::timeout(limit, sync.pass()).await;
            record(&mut sync);
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => note(
                    &inner,
                    &name,
                    Note::SyncFailed {
                        error: e.to_string(),
                    },
                ),
                Err(_) => note(
                    &inner,
                    &name,
                    Note::SyncFailed {
                        error: format!(
                            "the last checkpoint upload did not finish within the instance's last {:.1} s",
                            limit.as_secs_f64()
                        ),
                    },
                ),
            }
        }
    });
    (stop_tx, done)
}

/// Packs the first host's `/opt/ml/model` as `<S3OutputPath>/<job>/output/model.tar.gz`.
async fn upload_model(
    inner: &Inner,
    name: &str,
    req: &TrainingJobRequest,
    instance: u32,
) -> Result<(), String> {
    let layout = Layout::new(&inner.config.workdir, name, instance, "algo-1");
    let bytes =
        runner::tar_gz(&layout.model_dir()).map_err(|e| format!("packing the model: {e}"))?;
    let (bucket, prefix) = split_s3_uri(&req.output_path).map_err(|e| e.to_string())?;
    let key = format!("{prefix}{name}/output/model.tar.gz");
    inner
        .s3
        .put_object()
        .bucket(&bucket)
        .key(&key)
        .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc64Nvme)
        .body(aws_sdk_s3::primitives::ByteStream::from(bytes))
        .send()
        .await
        .map_err(|e| {
            format!(
                "PutObject s3://{bucket}/{key}: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            )
        })?;
    if let Some(e) = lock(&inner.jobs).get_mut(name) {
        e.model_artifacts = Some(format!("s3://{bucket}/{key}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synced_files_name_their_checkpoint() {
        let at = |rel: &str| checkpoint_of(rel);
        assert_eq!(
            at("algo-1/step-000000000120/manifest.json"),
            Some(("algo-1/step-000000000120".into(), 120))
        );
        assert_eq!(
            at("step-000000000120/sub/model.safetensors"),
            Some(("step-000000000120".into(), 120))
        );
        assert_eq!(at("algo-1/step-000000000120"), None, "a file, not a dir");
        assert_eq!(at("manifest.json"), None);
        assert_eq!(at("algo-1/notes.txt"), None);
    }

    #[test]
    fn a_host_group_ends_when_every_host_has_or_when_one_fails_while_training() {
        let ok = Some((Some(0), None));
        let failed = Some((Some(1), Some("boom".to_string())));
        let killed = Some((None, None));
        // One host done, the other still training: wait.
        assert_eq!(group_exit(&[ok.clone(), None], Phase::Training), None);
        assert_eq!(
            group_exit(&[ok.clone(), ok.clone()], Phase::Training),
            Some(Input::Exited {
                code: Some(0),
                failure: None
            })
        );
        // A host failing on its own fails the job at once.
        assert_eq!(
            group_exit(&[None, failed.clone()], Phase::Training),
            Some(Input::Exited {
                code: Some(1),
                failure: Some("boom".into())
            })
        );
        // While interrupted, a killed host is expected: wait for the others.
        assert_eq!(
            group_exit(&[killed.clone(), None], Phase::Interrupted),
            None
        );
        assert_eq!(
            group_exit(&[killed, Some((Some(143), None))], Phase::Interrupted),
            Some(Input::Exited {
                code: None,
                failure: None
            })
        );
    }

    #[test]
    fn event_ids_are_uuid_shaped_and_deterministic() {
        let a = event_id(1, "j", 0);
        assert_eq!(a.len(), 36);
        assert_eq!(a, event_id(1, "j", 0));
        assert_ne!(a, event_id(1, "j", 1));
    }
}
