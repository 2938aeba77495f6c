//! The training loop: forward, backward, update, and checkpoint at step boundaries.
//!
//! The loop owns the model and optimizer and never waits on disk except for the snapshot into
//! host memory and, at the very end or on a stop, for the final checkpoint to be durable.

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use sha2::{Digest, Sha256};

use crate::backend::{self, Compute};
use crate::data::{self, Dataset, Split};
use crate::hyper::Hyperparameters;
use crate::interval::{self, Interference, Planner, Triggers, Why};
use crate::model::{Net, NetConfig};
use crate::optim::{self, Optimizer, OptimizerConfig};
use crate::persist::{Destination, PersistEvent, Persister};
use crate::report::Reporter;
use crate::s3sync::{Mirror, S3Sync};
use crate::sagemaker::Paths;
use crate::schedule::Schedule;
use crate::snapshot::{self, Handover};
use crate::state::{RngState, TrainerState, STATE_VERSION};
use crate::{params, resume, sampler};
use spotcheck_notices::{StopFlags, StopReason};
use spotcheck_protocol::ValidCheckpoint;

/// Everything a run needs besides the backend.
pub struct Run {
    /// Typed hyperparameters.
    pub hp: Hyperparameters,
    /// Their canonical text, digested into the checkpoint.
    pub hp_text: String,
    /// Resolved paths.
    pub paths: Paths,
    /// Stop and rebalance flags.
    pub flags: StopFlags,
    /// Where to mirror checkpoints when SageMaker does not sync them (`--checkpoint-s3-uri`).
    pub checkpoint_s3_uri: Option<String>,
    /// What computes this run, recorded in every checkpoint.
    pub compute: Compute,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Training finished and the model was written.
    Completed,
    /// Stopped early with a durable checkpoint of the last step.
    Interrupted(StopReason),
}

/// Statistics of the checkpoints this process took.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CheckpointStats {
    /// Checkpoints made durable.
    pub count: u64,
    /// Total time the loop was blocked taking snapshots.
    pub stall_seconds: f64,
    /// Longest single stall.
    pub max_stall_seconds: f64,
    /// Total persist time (background).
    pub persist_seconds: f64,
    /// Bytes written.
    pub bytes: u64,
    /// Persists that failed.
    pub failures: u64,
}

fn fresh_state(
    hp: &Hyperparameters,
    cfg: NetConfig,
    total: u64,
    digest: String,
    compute: Compute,
) -> TrainerState {
    let schedule = Schedule {
        kind: hp.lr_schedule,
        peak: hp.learning_rate,
        warmup: hp.warmup_steps,
        total,
        step_every: hp.lr_step_every,
        gamma: hp.lr_step_gamma,
    };
    TrainerState {
        version: STATE_VERSION,
        step: 0,
        epoch: 0,
        position: 0,
        total_steps: total,
        rng: RngState {
            algorithm: "chacha8".into(),
            seed: hp.seed,
            stream: 1,
        },
        next_learning_rate: schedule.rate(0),
        schedule,
        optimizer: OptimizerConfig::from_hyper(hp),
        model: cfg,
        restarts: 0,
        train_seconds: 0.0,
        last_loss: None,
        hyperparameters_sha256: digest,
        compute: Some(compute),
    }
}

fn batch_tensors<AB: AutodiffBackend>(
    ds: &Dataset,
    idx: &[usize],
    device: &AB::Device,
) -> (Tensor<AB, 4>, Tensor<AB, 1, Int>) {
    let (pixels, labels) = ds.gather(idx);
    let n = idx.len();
    let x = Tensor::<AB, 4>::from_data(
        TensorData::new(pixels, [n, ds.channels, ds.height, ds.width]),
        device,
    );
    let y = Tensor::<AB, 1, Int>::from_data(TensorData::new(labels, [n]), device);
    (x, y)
}

fn scalar<B: burn::tensor::backend::Backend>(t: Tensor<B, 1>) -> Option<f64> {
    t.into_data().iter::<f64>().next()
}

/// Accuracy of the model on a dataset.
fn evaluate<AB: AutodiffBackend>(
    model: &Net<AB>,
    ds: &Dataset,
    batch: usize,
    device: &AB::Device,
) -> f64 {
    let net = model.valid();
    let mut correct = 0usize;
    let order: Vec<usize> = (0..ds.len()).collect();
    for chunk in order.chunks(batch) {
        let (pixels, labels) = ds.gather(chunk);
        let x = Tensor::<AB::InnerBackend, 4>::from_data(
            TensorData::new(pixels, [chunk.len(), ds.channels, ds.height, ds.width]),
            device,
        );
        let pred = net.forward(x).argmax(1).into_data();
        correct += pred
            .iter::<i64>()
            .zip(labels)
            .filter(|(p, l)| p == l)
            .count();
    }
    correct as f64 / ds.len().max(1) as f64
}

/// Hands the model, optimizer and trainer state over for a checkpoint: the only part of a
/// checkpoint the loop waits for. `copy_now` copies the tensors to host memory here (on a GPU);
/// otherwise the persister copies them (see [`snapshot::Handover`]).
pub fn snapshot_now<AB: AutodiffBackend>(
    model: &Net<AB>,
    optim: &Optimizer<AB::InnerBackend>,
    state: &TrainerState,
    copy_now: bool,
) -> Handover {
    Handover {
        model: params::hand_over(model, copy_now),
        optimizer: optim.hand_over(copy_now),
        state: state.clone(),
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp.sagemaker-ignore");
    {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// How long SageMaker waits between SIGTERM and SIGKILL (documented for StopTrainingJob and
/// the stopping conditions; assumed for a spot reclaim), less a margin for exiting.
pub const STOP_GRACE: Duration = Duration::from_secs(110);
/// How long the final upload may take when training simply ended.
pub const COMPLETION_UPLOAD_LIMIT: Duration = Duration::from_secs(3600);

/// When the final checkpoint's upload must be done: before the announced interruption (less a
/// margin), within SageMaker's grace period after a signal, or an hour after completion.
fn upload_deadline(stop: Option<(StopReason, Instant)>, spot_deadline_ms: Option<i64>) -> Instant {
    let now = Instant::now();
    match stop {
        Some((StopReason::SpotNotice, _)) => {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let left_ms =
                spot_deadline_ms.map_or(STOP_GRACE.as_millis() as i64, |t| t - now_ms - 5_000);
            now + Duration::from_millis(left_ms.max(0) as u64)
        }
        Some((StopReason::Signal, at)) => at + STOP_GRACE,
        None => now + COMPLETION_UPLOAD_LIMIT,
    }
}

/// Connects to the S3 mirror location, fetches a newer valid checkpoint than the newest valid
/// local one, and starts the mirror thread.
fn connect_mirror(uri: &str, root: &Path, ns: &str, keep: usize) -> Result<Mirror> {
    let s3 = S3Sync::connect(uri).map_err(anyhow::Error::msg)?;
    let local_valid = match spotcheck_protocol::open_latest_valid(root, ns) {
        Ok(found) => found.map(|c| c.step()),
        Err(e) => {
            tracing::warn!(event = "local_scan_failed", error = %e, "could not judge the local checkpoints; treating them as absent");
            None
        }
    };
    match s3.download_latest(root, ns, local_valid) {
        Ok(Some(name)) => tracing::info!(event = "s3_downloaded", checkpoint = %name, uri = %uri),
        Ok(None) => {
            tracing::info!(event = "s3_nothing_newer", uri = %uri, local_valid, "no checkpoint in S3 newer than the newest valid local one")
        }
        Err(e) => {
            tracing::warn!(event = "s3_download_failed", error = %e, "could not fetch checkpoints from S3; using local ones")
        }
    }
    Mirror::start(s3, root.to_path_buf(), ns.to_string(), keep)
        .context("starting the S3 mirror thread")
}

/// What the loop knows about its checkpoints.
struct Book {
    stats: CheckpointStats,
    /// The newest step known durable.
    last_durable: u64,
    /// The newest checkpoint this process committed.
    last_committed: Option<ValidCheckpoint>,
    /// What the loop paid for the last hand-over.
    last_stall: Duration,
    /// How much slower steps run while a persist is in flight.
    interference: Interference,
}

impl Book {
    fn stalled(&mut self, stall: Duration) {
        self.last_stall = stall;
        self.stats.stall_seconds += stall.as_secs_f64();
        self.stats.max_stall_seconds = self.stats.max_stall_seconds.max(stall.as_secs_f64());
    }

    fn record(&mut self, event: PersistEvent, planner: &mut Planner, mtbf: Option<Duration>) {
        match event {
            PersistEvent::Persisted(p) => match p.result {
                Ok(ckpt) => {
                    self.stats.count += 1;
                    self.stats.persist_seconds += p.duration.as_secs_f64();
                    self.stats.bytes += p.bytes;
                    self.last_durable = self.last_durable.max(p.step);
                    if self
                        .last_committed
                        .as_ref()
                        .is_none_or(|c| c.step() <= p.step)
                    {
                        self.last_committed = Some(ckpt);
                    }
                    planner.persisted(self.last_stall, p.duration, mtbf);
                    self.interference.persist_ended();
                    tracing::info!(event = "checkpoint_saved", step = p.step, why = ?p.why, dir = %p.dir.display(), bytes = p.bytes, persist_seconds = p.duration.as_secs_f64(), stall_seconds = self.last_stall.as_secs_f64(),
                        adaptive_interval_seconds = planner.adaptive_interval().map(|t| t.as_secs_f64()), mtbf_seconds = mtbf.map(|m| m.as_secs_f64()));
                }
                Err(e) => {
                    self.stats.failures += 1;
                    self.interference.persist_ended();
                    planner.failed();
                    tracing::error!(event = "checkpoint_failed", step = p.step, why = ?p.why, error = %e, retry_in_seconds = interval::retry_backoff(planner.failures()).as_secs_f64(), "checkpoint failed; the previous checkpoint stays the newest valid one; retrying after a backoff");
                }
            },
            PersistEvent::UploadPace(took) => {
                planner.upload_pace(took);
                tracing::debug!(
                    event = "upload_pace",
                    seconds = took.as_secs_f64(),
                    adaptive_interval_seconds =
                        planner.adaptive_interval().map(|t| t.as_secs_f64())
                );
            }
        }
    }
}

/// Trains to the end or until a stop; see the module docs.
pub fn run<AB: AutodiffBackend>(run: &Run, device: AB::Device) -> Result<Outcome> {
    let hp = &run.hp;
    let tty = std::io::stdout().is_terminal();
    let train = data::load(&run.paths.data, Split::Train, hp).context("loading training data")?;
    let test = match &run.paths.test_data {
        Some(dir) => Some(data::load(dir, Split::Test, hp).context("loading evaluation data")?),
        None if data::has_test_split(&run.paths.data) => {
            Some(data::load(&run.paths.data, Split::Test, hp)?)
        }
        None if hp.dataset == crate::hyper::DatasetKind::Synthetic => {
            Some(data::load(&run.paths.data, Split::Test, hp)?)
        }
        None => None,
    };
    tracing::info!(
        event = "data",
        images = train.len(),
        classes = train.classes,
        channels = train.channels,
        height = train.height,
        width = train.width,
        eval_images = test.as_ref().map(|t| t.len())
    );

    let cfg = NetConfig {
        channels: train.channels,
        height: train.height,
        width: train.width,
        depth: hp.model_depth,
        base_width: hp.model_width,
        hidden: hp.model_hidden,
        classes: train.classes,
    };
    let spe = sampler::steps_per_epoch(train.len(), hp.batch_size);
    let mut total = spe * hp.epochs as u64;
    if hp.max_steps > 0 {
        total = total.min(hp.max_steps);
    }
    let digest = hex::encode(Sha256::digest(run.hp_text.as_bytes()));
    let ckpt_root = &run.paths.checkpoint_dir;
    let ns = &run.paths.host;

    let mirror = match &run.checkpoint_s3_uri {
        Some(uri) => Some(connect_mirror(uri, ckpt_root, ns, hp.keep_checkpoints)?),
        None => None,
    };
    let model = cfg.init::<AB>(&device);
    let shapes = params::shapes::<AB, _>(&model);
    let (mut model, mut optim, mut state) = match resume::latest(ckpt_root, ns)? {
        Some(found) => {
            let mut st = found.state;
            if st.model != cfg {
                bail!("checkpoint {} holds a model of shape {:?}, this run builds {:?}: refusing to resume into a different architecture (use a new checkpoint location)", found.name, st.model, cfg);
            }
            if st.optimizer.kind != hp.optimizer {
                bail!(
                    "checkpoint {} was trained with {:?}, this run asks for {:?}",
                    found.name,
                    st.optimizer.kind,
                    hp.optimizer
                );
            }
            if st.hyperparameters_sha256 != digest {
                tracing::warn!(event = "hyperparameters_changed", checkpoint = %found.name, "hyperparameters differ from the run that wrote this checkpoint; continuing with the new ones (the result will not match an uninterrupted run)");
            }
            let changes = backend::compute_changes(st.compute.as_ref(), &run.compute);
            if !changes.is_empty() {
                tracing::warn!(event = "compute_changed", checkpoint = %found.name, changes = %changes.join("; "), "this run computes differently from the one that wrote the checkpoint: training continues, but not bit-identically to an uninterrupted run");
            }
            st.compute = Some(run.compute.clone());
            let model = params::assign::<AB, _>(model, found.model, &device)
                .context("restoring model weights")?;
            let optim =
                Optimizer::restore(st.optimizer, st.step, &shapes, found.optimizer, &device)
                    .context("restoring optimizer state")?;
            st.restarts += 1;
            st.total_steps = total;
            st.schedule.total = total;
            tracing::info!(event = "resumed", checkpoint = %found.name, step = st.step, epoch = st.epoch, position = st.position, skipped = ?found.skipped, "resuming from the newest valid checkpoint");
            (model, optim, st)
        }
        None => {
            let model =
                params::assign::<AB, _>(model, params::initial_values(&shapes, hp.seed), &device)?;
            let optim = Optimizer::new(OptimizerConfig::from_hyper(hp), &shapes, &device);
            tracing::info!(event = "fresh_start", checkpoint_dir = %ckpt_root.display(), "no valid checkpoint found: starting from step 0");
            (
                model,
                optim,
                fresh_state(hp, cfg, total, digest, run.compute.clone()),
            )
        }
    };

    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let reporter = Reporter::new(tty, state.step, total, hp.log_every_steps);
    let dest = Destination {
        root: ckpt_root.clone(),
        namespace: ns.clone(),
        keep: hp.keep_checkpoints,
        synced: run.paths.checkpoint_synced || mirror.is_some(),
    };
    let mut persister =
        Persister::start(dest.clone(), mirror).context("starting the persister thread")?;
    let mut planner = Planner::new(
        Triggers {
            every_steps: hp.checkpoint_every_steps,
            every: (hp.checkpoint_every_seconds > 0.0)
                .then(|| Duration::from_secs_f64(hp.checkpoint_every_seconds)),
        },
        hp.checkpoint_adaptive,
    );
    let mut book = Book {
        stats: CheckpointStats::default(),
        last_durable: state.step,
        last_committed: None,
        last_stall: Duration::ZERO,
        interference: Interference::default(),
    };
    let copy_now = !run.compute.host_memory();
    let mut last_ckpt_at = Instant::now();
    let started = Instant::now();
    let base_seconds = state.train_seconds;
    let mut order = sampler::epoch_order(hp.seed, state.epoch, train.len());
    let mtbf = |st: &TrainerState| {
        interval::mtbf(hp.interruptions_per_hour, st.restarts, st.train_seconds)
    };

    let mut stop = None;
    while state.step < total {
        if let Some(reason) = run.flags.stop_reason() {
            stop = Some((reason, Instant::now()));
            break;
        }
        let (began, busy) = (Instant::now(), persister.busy());
        if state.position >= train.len() {
            state.epoch += 1;
            state.position = 0;
            state.rng.stream = state.epoch as u64 + 1;
            order = sampler::epoch_order(hp.seed, state.epoch, train.len());
        }
        let idx = sampler::batch(&order, state.position, hp.batch_size);
        let (x, y) = batch_tensors::<AB>(&train, idx, &device);
        let loss = loss_fn.forward(model.forward(x), y);
        let mut grads = loss.backward();
        let lr = state.schedule.rate(state.step);
        model = optim::step(model, &mut grads, &mut optim, lr);
        state.step += 1;
        state.position += idx.len();
        state.next_learning_rate = state.schedule.rate(state.step);
        let loss_value = reporter
            .wants_loss(state.step)
            .then(|| scalar(loss.inner()))
            .flatten();
        if loss_value.is_some() {
            state.last_loss = loss_value;
        }
        reporter.step(state.step, total, state.epoch, loss_value, hp.batch_size);
        state.train_seconds = base_seconds + started.elapsed().as_secs_f64();

        book.interference.step(began.elapsed(), busy);
        for event in persister.poll() {
            book.record(event, &mut planner, mtbf(&state));
        }
        if let Some(extra) = book.interference.take_extra() {
            planner.interfered(extra);
            tracing::info!(
                event = "checkpoint_interference",
                step = state.step,
                extra_seconds = extra.as_secs_f64(),
                adaptive_interval_seconds = planner.adaptive_interval().map(|t| t.as_secs_f64()),
                "steps under the last persist ran this much longer in all"
            );
        }
        if run.flags.take_rebalance() {
            reporter.note("rebalance recommendation: extra checkpoint");
            planner.note_rebalance();
        }
        if state.step >= total {
            break;
        }
        if let Some(why) = planner.due(state.step, last_ckpt_at.elapsed(), persister.busy()) {
            let t0 = Instant::now();
            let snap = snapshot_now(&model, &optim, &state, copy_now);
            book.stalled(t0.elapsed());
            persister.submit(snap, why).map_err(anyhow::Error::msg)?;
            last_ckpt_at = Instant::now();
        }
    }

    // Throughput counts the loop only (periodic checkpoint stalls and background persists
    // included), not the final checkpoint or the evaluation.
    let images_per_second = reporter.throughput(state.step, hp.batch_size);

    // Final checkpoint: at the end, or on a stop. Wait for the one in flight first; commit
    // this step locally; then, when mirroring to S3, upload it before the deadline.
    for event in persister.wait() {
        book.record(event, &mut planner, mtbf(&state));
    }
    if book.last_durable < state.step {
        let t0 = Instant::now();
        let snap = snapshot_now(&model, &optim, &state, copy_now);
        book.stalled(t0.elapsed());
        persister
            .submit(snap, Why::Final)
            .map_err(anyhow::Error::msg)?;
        for event in persister.wait() {
            if let PersistEvent::Persisted(p) = &event {
                if let Err(e) = &p.result {
                    bail!("final checkpoint at step {} failed: {e}", state.step);
                }
            }
            book.record(event, &mut planner, mtbf(&state));
        }
    }
    if let Some(ckpt) = book.last_committed.clone() {
        let deadline = upload_deadline(stop, run.flags.spot_deadline_ms());
        let left = deadline.saturating_duration_since(Instant::now());
        match persister.finish_upload(&dest, ckpt, deadline, stop.is_some()) {
            None => {}
            Some(Ok(bytes)) => {
                tracing::info!(event = "s3_final_uploaded", step = state.step, bytes)
            }
            Some(Err(e)) => {
                tracing::error!(event = "s3_final_upload_failed", step = state.step, error = %e, seconds_allowed = left.as_secs_f64(), "the final checkpoint is durable on local disk but not in S3")
            }
        }
    }
    drop(persister);
    reporter.finish(started.elapsed());

    if let Some((reason, _)) = stop {
        tracing::warn!(event = "stopped", step = state.step, reason = ?reason, "stopped early; the checkpoint of this step is durable");
        return Ok(Outcome::Interrupted(reason));
    }

    let accuracy = test
        .as_ref()
        .map(|t| evaluate(&model, t, hp.eval_batch_size, &device));
    std::fs::create_dir_all(&run.paths.model_dir)
        .with_context(|| format!("creating {}", run.paths.model_dir.display()))?;
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let mut buf = Vec::new();
    snapshot::write(&mut buf, &params::collect(&model), Some(meta.clone()))?;
    write_atomically(&run.paths.model_dir.join("model.safetensors"), &buf)?;
    buf.clear();
    snapshot::write(&mut buf, &optim.snapshot(), Some(meta))?;
    write_atomically(&run.paths.model_dir.join("optimizer.safetensors"), &buf)?;
    let metrics = serde_json::json!({
        "steps": state.step,
        "epochs": hp.epochs,
        "final_loss": state.last_loss,
        "test_accuracy": accuracy,
        "restarts": state.restarts,
        "train_seconds": state.train_seconds,
        "images_per_second_this_attempt": images_per_second,
        "checkpoints_this_attempt": book.stats,
        "model": cfg,
    });
    write_atomically(
        &run.paths.model_dir.join("metrics.json"),
        &serde_json::to_vec_pretty(&metrics)?,
    )?;
    tracing::info!(event = "completed", steps = state.step, test_accuracy = accuracy, model_dir = %run.paths.model_dir.display(), "training complete");
    Ok(Outcome::Completed)
}
