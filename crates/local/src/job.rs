//! The training-job state machine: a pure function of (spec, state, input, now).
//!
//! Owns [`step`], which turns one [`Input`] (capacity came, the download finished, the process
//! exited, spot capacity was reclaimed, the user asked to stop, a deadline passed) into the
//! next [`JobState`] and the [`Effect`]s for the shell to carry out (download, launch, signal,
//! release the instance, upload, emit an event). It never touches a process, a file, S3 or the
//! clock, so every SageMaker lifecycle below is a table test.
//!
//! Lifecycles (TrainingJobStatus/SecondaryStatus):
//!
//! - Uninterrupted: InProgress/Starting → Downloading → Training → Uploading → Completed/Completed.
//! - Spot interruption inside MaxWait: … Training → Interrupted (SIGTERM, grace, SIGKILL; or,
//!   for a reclaim without warning, SIGKILL at once) → Starting (waiting for capacity again) →
//!   Downloading → Training → … → Completed.
//! - Wait exhausted: … Interrupted → Starting → Stopping → Stopped/MaxWaitTimeExceeded (also
//!   when capacity never came at all). MaxWait covers waiting plus running, from creation.
//! - MaxRuntime (running time): Stopping → Stopped/MaxRuntimeExceeded.
//! - StopTrainingJob: Stopping/Stopping (SIGTERM, grace, SIGKILL) → Stopped/Stopped.
//! - A stop that begins while training (user, MaxWait, MaxRuntime) uploads `/opt/ml/model`
//!   once the process is gone, as SageMaker does, before Stopped; one that begins on an instance
//!   being reclaimed cannot.
//! - Non-zero exit not caused by us: Failed/Failed with `AlgorithmError: …`.
//!
//! Billing: the instance runs from capacity acquisition (Downloading) to the end of the
//! process (or of Uploading); `TrainingTimeInSeconds` is the sum over all instances of the job,
//! `BillableTimeInSeconds` that × [`JobSpec::billable_ratio`] (spot/on-demand), rounded up.

use serde::Serialize;

use crate::clock::EpochMs;

/// TrainingJobStatus values.
pub mod status {
    /// Running (waiting, downloading, training, interrupted, uploading).
    pub const IN_PROGRESS: &str = "InProgress";
    /// Finished successfully.
    pub const COMPLETED: &str = "Completed";
    /// The algorithm or the platform failed.
    pub const FAILED: &str = "Failed";
    /// Stop requested or a limit reached; the process is being stopped.
    pub const STOPPING: &str = "Stopping";
    /// Stopped (by the user or a limit).
    pub const STOPPED: &str = "Stopped";
}

/// SecondaryStatus values this service produces.
pub mod secondary {
    /// Waiting for (spot) capacity and launching the instance.
    pub const STARTING: &str = "Starting";
    /// Copying input data and checkpoints in.
    pub const DOWNLOADING: &str = "Downloading";
    /// The training process runs.
    pub const TRAINING: &str = "Training";
    /// Spot capacity was reclaimed.
    pub const INTERRUPTED: &str = "Interrupted";
    /// Uploading the model.
    pub const UPLOADING: &str = "Uploading";
    /// Stopping.
    pub const STOPPING: &str = "Stopping";
    /// Stopped by the user.
    pub const STOPPED: &str = "Stopped";
    /// Completed.
    pub const COMPLETED: &str = "Completed";
    /// Failed.
    pub const FAILED: &str = "Failed";
    /// MaxWaitTimeInSeconds ran out.
    pub const MAX_WAIT_TIME_EXCEEDED: &str = "MaxWaitTimeExceeded";
    /// MaxRuntimeInSeconds ran out.
    pub const MAX_RUNTIME_EXCEEDED: &str = "MaxRuntimeExceeded";
}

/// What the state machine needs to know about a job (from CreateTrainingJob).
#[derive(Clone, Debug, PartialEq)]
pub struct JobSpec {
    /// Managed spot training.
    pub spot: bool,
    /// `MaxRuntimeInSeconds`.
    pub max_runtime_seconds: u64,
    /// `MaxWaitTimeInSeconds` (spot only).
    pub max_wait_seconds: Option<u64>,
    /// Billable seconds per running second (spot price / on-demand price; 1 on-demand).
    pub billable_ratio: f64,
    /// Simulated milliseconds between SIGTERM and SIGKILL.
    pub grace_ms: i64,
    /// `ResourceConfig.InstanceCount`: hosts acquired, run, interrupted and restarted together.
    pub instance_count: u32,
}

/// Where the instance is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// No instance: waiting for capacity.
    Waiting,
    /// Instance up, copying inputs.
    Downloading,
    /// The process runs.
    Training,
    /// SIGTERM sent after a spot interruption; the instance goes when the process exits or the
    /// grace period ends.
    Interrupted,
    /// SIGTERM sent for a stop (user, MaxWait, MaxRuntime).
    Stopping,
    /// Uploading the model after a successful exit.
    Uploading,
    /// Terminal.
    Ended,
}

/// Why a job is being stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum StopCause {
    /// StopTrainingJob.
    User,
    /// MaxWaitTimeInSeconds.
    MaxWait,
    /// MaxRuntimeInSeconds.
    MaxRuntime,
}

impl StopCause {
    fn secondary(self) -> &'static str {
        match self {
            StopCause::User => secondary::STOPPED,
            StopCause::MaxWait => secondary::MAX_WAIT_TIME_EXCEEDED,
            StopCause::MaxRuntime => secondary::MAX_RUNTIME_EXCEEDED,
        }
    }
}

/// One entry of `SecondaryStatusTransitions`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Transition {
    /// The secondary status.
    pub status: String,
    /// When it began.
    pub start: EpochMs,
    /// When it ended (the next one began), if it has.
    pub end: Option<EpochMs>,
    /// `StatusMessage`.
    pub message: String,
}

/// Everything that changes during a job's life.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobState {
    /// `TrainingJobStatus`.
    pub status: &'static str,
    /// `SecondaryStatus`.
    pub secondary: &'static str,
    /// The instance's phase.
    pub phase: Phase,
    /// `SecondaryStatusTransitions`.
    pub transitions: Vec<Transition>,
    /// `CreationTime`.
    pub created: EpochMs,
    /// `LastModifiedTime`.
    pub last_modified: EpochMs,
    /// `TrainingStartTime`: the first instance's start.
    pub training_start: Option<EpochMs>,
    /// `TrainingEndTime`.
    pub training_end: Option<EpochMs>,
    /// When the current instance started (it is billed from then).
    pub instance_since: Option<EpochMs>,
    /// Milliseconds of finished instances.
    pub run_ms: i64,
    /// Instances launched so far (1 + restarts).
    pub instances: u32,
    /// Spot interruptions so far.
    pub interruptions: u32,
    /// When SIGKILL follows the SIGTERM already sent.
    pub kill_at: Option<EpochMs>,
    /// Why the job is being stopped.
    pub stop_cause: Option<StopCause>,
    /// Whether the stop began on a training instance that stays (not one being reclaimed):
    /// SageMaker then uploads `/opt/ml/model` before the job is Stopped, so the work of a
    /// stopped job is not lost.
    pub upload_after_stop: bool,
    /// `FailureReason`.
    pub failure_reason: Option<String>,
}

/// What happened.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// Nothing but the passing of time (deadlines are checked on every input).
    Tick,
    /// Capacity for the job's instance type is available now.
    Capacity,
    /// Spot capacity was reclaimed. With `warning`, the process gets SIGTERM and the grace
    /// period (SageMaker's documented stop behaviour, assumed for spot); without, it is killed
    /// at once (AWS does not document a signal for a spot reclaim, and the toolkit has been seen
    /// not to forward one).
    Reclaimed {
        /// Whether the process is told (SIGTERM) before it is killed.
        warning: bool,
        /// The host whose capacity went (0-based); the whole job is interrupted either way.
        host: u32,
    },
    /// Inputs (data, checkpoints) are in place, or could not be fetched.
    Downloaded(Result<(), String>),
    /// The training process exited with this code (`None`: killed by a signal); `failure` is
    /// `/opt/ml/output/failure`, if written.
    Exited {
        /// Exit code.
        code: Option<i32>,
        /// The failure file's text.
        failure: Option<String>,
    },
    /// The model upload finished.
    Uploaded(Result<(), String>),
    /// StopTrainingJob.
    StopRequested,
}

/// What the shell must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Lay out `/opt/ml`, fetch channels and checkpoints; answer [`Input::Downloaded`].
    Download,
    /// Start the training process and the checkpoint sync; answer [`Input::Exited`].
    Launch,
    /// SIGTERM the process.
    Terminate,
    /// SIGKILL the process and wait for it.
    Kill,
    /// One host's instance is gone without warning: SIGKILL its process, stop its checkpoint
    /// sync without a last pass.
    KillHost(u32),
    /// The instance goes away: stop the sync (after a last pass when `flush`), drop the tree.
    Release {
        /// Whether the instance lived long enough for a last checkpoint upload.
        flush: bool,
    },
    /// Final checkpoint pass and model upload; answer [`Input::Uploaded`].
    Upload,
    /// Publish a state-change event for the new state.
    Emit,
}

impl JobState {
    /// A job just created at `now`.
    pub fn new(spec: &JobSpec, now: EpochMs) -> JobState {
        let message = if spec.spot {
            "Launching requested ML instances: waiting for spot capacity"
        } else {
            "Launching requested ML instances"
        };
        JobState {
            status: status::IN_PROGRESS,
            secondary: secondary::STARTING,
            phase: Phase::Waiting,
            transitions: vec![Transition {
                status: secondary::STARTING.into(),
                start: now,
                end: None,
                message: message.into(),
            }],
            created: now,
            last_modified: now,
            training_start: None,
            training_end: None,
            instance_since: None,
            run_ms: 0,
            instances: 0,
            interruptions: 0,
            kill_at: None,
            stop_cause: None,
            upload_after_stop: false,
            failure_reason: None,
        }
    }

    /// Whether the job has ended.
    pub fn is_terminal(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// Instance milliseconds so far, the current instance included.
    pub fn running_ms(&self, now: EpochMs) -> i64 {
        self.run_ms + self.instance_since.map_or(0, |s| (now - s).max(0))
    }

    /// `TrainingTimeInSeconds` (rounded up).
    pub fn training_seconds(&self, now: EpochMs) -> u64 {
        ceil_seconds(self.running_ms(now) as f64)
    }

    /// `BillableTimeInSeconds` (rounded up).
    pub fn billable_seconds(&self, spec: &JobSpec, now: EpochMs) -> u64 {
        ceil_seconds(self.running_ms(now) as f64 * spec.billable_ratio)
    }

    /// Whether the training process may be running.
    pub fn process_alive(&self) -> bool {
        matches!(
            self.phase,
            Phase::Training | Phase::Interrupted | Phase::Stopping
        )
    }

    fn enter(&mut self, status: &'static str, sec: &'static str, message: &str, now: EpochMs) {
        self.status = status;
        if self.secondary != sec || self.transitions.is_empty() {
            if let Some(last) = self.transitions.last_mut() {
                last.end.get_or_insert(now);
            }
            self.transitions.push(Transition {
                status: sec.into(),
                start: now,
                end: None,
                message: message.into(),
            });
        }
        self.secondary = sec;
        self.last_modified = now;
    }

    fn instance_gone(&mut self, now: EpochMs) {
        if let Some(since) = self.instance_since.take() {
            self.run_ms += (now - since).max(0);
        }
        self.kill_at = None;
    }

    fn end(&mut self, status: &'static str, sec: &'static str, message: &str, now: EpochMs) {
        self.instance_gone(now);
        self.enter(status, sec, message, now);
        if let Some(last) = self.transitions.last_mut() {
            last.end = Some(now);
        }
        self.phase = Phase::Ended;
        self.training_end = Some(now);
    }
}

fn ceil_seconds(ms: f64) -> u64 {
    if ms <= 0.0 {
        0
    } else {
        (ms / 1000.0).ceil() as u64
    }
}

/// The next simulated time at which [`step`] must be called with [`Input::Tick`] even if
/// nothing else happens: the SIGKILL deadline, MaxWait, MaxRuntime.
pub fn next_deadline(spec: &JobSpec, s: &JobState, now: EpochMs) -> Option<EpochMs> {
    if s.is_terminal() {
        return None;
    }
    let mut at: Vec<EpochMs> = Vec::new();
    // The SIGKILL deadline matters only while the process may live; a passed one would wake
    // the shell again at once, for ever.
    at.extend(s.kill_at.filter(|_| s.process_alive()));
    // The same deadlines `check_deadlines` acts on: none while the model uploads (one that
    // passes meanwhile would wake the shell at once, for ever).
    if s.stop_cause.is_none() && s.phase != Phase::Uploading {
        if let (true, Some(wait)) = (spec.spot, spec.max_wait_seconds) {
            at.push(s.created + wait as i64 * 1000);
        }
        if s.instance_since.is_some() {
            let left = spec.max_runtime_seconds as i64 * 1000 - s.running_ms(now);
            at.push(now + left.max(0));
        }
    }
    at.into_iter().min()
}

/// One transition (see the module doc). Inputs that do not apply in the current phase (a late
/// capacity notice, a duplicate stop) change nothing.
pub fn step(
    spec: &JobSpec,
    state: &JobState,
    input: Input,
    now: EpochMs,
) -> (JobState, Vec<Effect>) {
    let mut s = state.clone();
    let mut fx = Vec::new();
    if s.is_terminal() {
        return (s, fx);
    }
    check_deadlines(spec, &mut s, now, &mut fx);
    match input {
        Input::Tick => {}
        Input::Capacity if s.phase == Phase::Waiting && s.stop_cause.is_none() => {
            s.phase = Phase::Downloading;
            s.instances += 1;
            s.instance_since = Some(now);
            s.training_start.get_or_insert(now);
            let message = if s.instances > 1 {
                "Restarting after a spot interruption: downloading input data and checkpoints"
            } else {
                "Starting the training job: downloading input data"
            };
            s.enter(status::IN_PROGRESS, secondary::DOWNLOADING, message, now);
            fx.extend([Effect::Download, Effect::Emit]);
        }
        Input::Downloaded(result) if s.phase == Phase::Downloading => match result {
            Ok(()) => {
                s.phase = Phase::Training;
                s.enter(
                    status::IN_PROGRESS,
                    secondary::TRAINING,
                    "Training image download completed. Training in progress.",
                    now,
                );
                fx.extend([Effect::Launch, Effect::Emit]);
            }
            Err(e) => {
                fx.push(Effect::Release { flush: false });
                s.failure_reason = Some(format!("ClientError: {e}"));
                s.end(
                    status::FAILED,
                    secondary::FAILED,
                    &format!("ClientError: {e}"),
                    now,
                );
                fx.push(Effect::Emit);
            }
        },
        Input::Reclaimed { warning, host }
            if spec.spot && matches!(s.phase, Phase::Downloading | Phase::Training) =>
        {
            s.interruptions += 1;
            s.enter(
                status::IN_PROGRESS,
                secondary::INTERRUPTED,
                "Spot capacity was reclaimed: the training job will restart when capacity is available",
                now,
            );
            if s.phase == Phase::Training && warning {
                s.phase = Phase::Interrupted;
                s.kill_at = Some(now + spec.grace_ms);
                fx.extend([Effect::Terminate, Effect::Emit]);
            } else if s.phase == Phase::Training && spec.instance_count > 1 {
                // One host vanished; SageMaker stops the others (SIGTERM, grace) and restarts
                // them all. The job continues when every remaining process has exited.
                s.phase = Phase::Interrupted;
                s.kill_at = Some(now + spec.grace_ms);
                fx.extend([Effect::KillHost(host), Effect::Terminate, Effect::Emit]);
            } else if s.phase == Phase::Training {
                // No warning reached the process: the instance is simply gone, with whatever
                // the checkpoint sync had not uploaded yet.
                fx.extend([Effect::Kill, Effect::Release { flush: false }]);
                s.instance_gone(now);
                s.phase = Phase::Waiting;
                fx.push(Effect::Emit);
                to_waiting(&mut s, now, &mut fx);
            } else {
                fx.push(Effect::Release { flush: false });
                s.instance_gone(now);
                s.phase = Phase::Waiting;
                fx.push(Effect::Emit);
                to_waiting(&mut s, now, &mut fx);
            }
        }
        Input::Exited { code, failure } => match s.phase {
            Phase::Training => match code {
                Some(0) => {
                    s.phase = Phase::Uploading;
                    s.enter(
                        status::IN_PROGRESS,
                        secondary::UPLOADING,
                        "Uploading generated training model",
                        now,
                    );
                    fx.extend([Effect::Upload, Effect::Emit]);
                }
                _ => {
                    fx.push(Effect::Release { flush: true });
                    let detail = failure
                        .map(|f| f.trim().to_owned())
                        .filter(|f| !f.is_empty())
                        .unwrap_or_else(|| match code {
                            Some(c) => format!("the training process exited with code {c}"),
                            None => "the training process was killed by a signal".into(),
                        });
                    let reason = format!("AlgorithmError: {detail}");
                    s.failure_reason = Some(reason.clone());
                    s.end(status::FAILED, secondary::FAILED, &reason, now);
                    fx.push(Effect::Emit);
                }
            },
            Phase::Interrupted => {
                fx.push(Effect::Release { flush: true });
                s.instance_gone(now);
                s.phase = Phase::Waiting;
                to_waiting(&mut s, now, &mut fx);
            }
            Phase::Stopping if s.upload_after_stop => {
                s.phase = Phase::Uploading;
                s.kill_at = None;
                fx.push(Effect::Upload);
            }
            Phase::Stopping => {
                fx.push(Effect::Release { flush: true });
                finish_stop(&mut s, now, &mut fx);
            }
            _ => {}
        },
        // A stopped job's model upload: Stopped whatever it gave (the artifacts are described
        // only when it succeeded).
        Input::Uploaded(_) if s.phase == Phase::Uploading && s.stop_cause.is_some() => {
            fx.push(Effect::Release { flush: false });
            finish_stop(&mut s, now, &mut fx);
        }
        Input::Uploaded(result) if s.phase == Phase::Uploading => {
            fx.push(Effect::Release { flush: false });
            match result {
                Ok(()) => s.end(
                    status::COMPLETED,
                    secondary::COMPLETED,
                    "Training job completed",
                    now,
                ),
                Err(e) => {
                    let reason = format!("InternalServerError: uploading the model failed: {e}");
                    s.failure_reason = Some(reason.clone());
                    s.end(status::FAILED, secondary::FAILED, &reason, now);
                }
            }
            fx.push(Effect::Emit);
        }
        Input::StopRequested if s.stop_cause.is_none() && s.phase != Phase::Uploading => {
            begin_stop(&mut s, StopCause::User, spec, now, &mut fx);
        }
        _ => {}
    }
    // A SIGKILL deadline that passed (checked after the input, which may have set it).
    if let Some(kill_at) = s.kill_at {
        if now >= kill_at && s.process_alive() {
            fx.push(Effect::Kill);
            if s.phase == Phase::Stopping && s.upload_after_stop {
                s.phase = Phase::Uploading;
                s.kill_at = None;
                fx.push(Effect::Upload);
            } else {
                fx.push(Effect::Release { flush: false });
            }
            match s.phase {
                Phase::Interrupted => {
                    s.instance_gone(now);
                    s.phase = Phase::Waiting;
                    to_waiting(&mut s, now, &mut fx);
                }
                Phase::Stopping => finish_stop(&mut s, now, &mut fx),
                _ => {}
            }
        }
    }
    dedup_emits(&mut fx);
    (s, fx)
}

/// After an interruption: back to Starting, unless MaxWait already ran out.
fn to_waiting(s: &mut JobState, now: EpochMs, fx: &mut Vec<Effect>) {
    if s.stop_cause == Some(StopCause::MaxWait) {
        finish_stop(s, now, fx);
        return;
    }
    s.enter(
        status::IN_PROGRESS,
        secondary::STARTING,
        "Restarting: waiting for spot capacity",
        now,
    );
    fx.push(Effect::Emit);
}

fn begin_stop(
    s: &mut JobState,
    cause: StopCause,
    spec: &JobSpec,
    now: EpochMs,
    fx: &mut Vec<Effect>,
) {
    s.stop_cause = Some(cause);
    let message = match cause {
        StopCause::User => "Stopping the training job (StopTrainingJob)",
        StopCause::MaxWait => "MaxWaitTimeInSeconds reached: stopping the training job",
        StopCause::MaxRuntime => "MaxRuntimeInSeconds reached: stopping the training job",
    };
    match s.phase {
        Phase::Training => {
            s.phase = Phase::Stopping;
            s.upload_after_stop = true;
            s.kill_at = Some(now + spec.grace_ms);
            s.enter(status::STOPPING, secondary::STOPPING, message, now);
            fx.extend([Effect::Terminate, Effect::Emit]);
        }
        Phase::Interrupted => {
            // SIGTERM already sent; the grace period runs on.
            s.phase = Phase::Stopping;
            s.enter(status::STOPPING, secondary::STOPPING, message, now);
            fx.push(Effect::Emit);
        }
        Phase::Waiting | Phase::Downloading => {
            if s.phase == Phase::Downloading {
                fx.push(Effect::Release { flush: false });
            }
            s.enter(status::STOPPING, secondary::STOPPING, message, now);
            finish_stop(s, now, fx);
        }
        Phase::Stopping | Phase::Uploading | Phase::Ended => {}
    }
}

fn finish_stop(s: &mut JobState, now: EpochMs, fx: &mut Vec<Effect>) {
    let cause = s.stop_cause.unwrap_or(StopCause::User);
    let message = match cause {
        StopCause::User => "Training job stopped",
        StopCause::MaxWait => "Training job stopped: MaxWaitTimeInSeconds exceeded",
        StopCause::MaxRuntime => "Training job stopped: MaxRuntimeInSeconds exceeded",
    };
    s.end(status::STOPPED, cause.secondary(), message, now);
    fx.push(Effect::Emit);
}

fn check_deadlines(spec: &JobSpec, s: &mut JobState, now: EpochMs, fx: &mut Vec<Effect>) {
    if s.stop_cause.is_some() || s.phase == Phase::Uploading {
        return;
    }
    if let (true, Some(wait)) = (spec.spot, spec.max_wait_seconds) {
        if now >= s.created + wait as i64 * 1000 {
            begin_stop(s, StopCause::MaxWait, spec, now, fx);
            return;
        }
    }
    if s.instance_since.is_some() && s.running_ms(now) >= spec.max_runtime_seconds as i64 * 1000 {
        begin_stop(s, StopCause::MaxRuntime, spec, now, fx);
    }
}

/// One event per step is enough: it carries the final state.
fn dedup_emits(fx: &mut Vec<Effect>) {
    let emit = fx.contains(&Effect::Emit);
    fx.retain(|e| *e != Effect::Emit);
    if emit {
        fx.push(Effect::Emit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Effect::*;
    use Input::*;

    fn spot() -> JobSpec {
        JobSpec {
            spot: true,
            max_runtime_seconds: 3600,
            max_wait_seconds: Some(7200),
            billable_ratio: 0.3,
            grace_ms: 120_000,
            instance_count: 1,
        }
    }

    /// A reclaim of host `host`, warned or not.
    fn reclaimed(warning: bool, host: u32) -> Input {
        Reclaimed { warning, host }
    }

    fn exited(code: i32) -> Input {
        Exited {
            code: Some(code),
            failure: None,
        }
    }

    /// Runs `inputs` (time in seconds, input) and returns the final state, every effect list,
    /// and the secondary statuses in order.
    fn run(spec: &JobSpec, inputs: Vec<(i64, Input)>) -> (JobState, Vec<Vec<Effect>>, Vec<String>) {
        let mut s = JobState::new(spec, 0);
        let mut all = Vec::new();
        for (t, input) in inputs {
            let (next, fx) = step(spec, &s, input, t * 1000);
            s = next;
            all.push(fx);
        }
        let seq = s.transitions.iter().map(|t| t.status.clone()).collect();
        (s, all, seq)
    }

    #[test]
    fn uninterrupted_job_completes_and_bills() {
        let (s, fx, seq) = run(
            &spot(),
            vec![
                (10, Capacity),
                (12, Downloaded(Ok(()))),
                (100, exited(0)),
                (110, Uploaded(Ok(()))),
            ],
        );
        assert_eq!(
            seq,
            [
                "Starting",
                "Downloading",
                "Training",
                "Uploading",
                "Completed"
            ]
        );
        assert_eq!(
            fx,
            vec![
                vec![Download, Emit],
                vec![Launch, Emit],
                vec![Upload, Emit],
                vec![Release { flush: false }, Emit],
            ]
        );
        assert_eq!((s.status, s.secondary), ("Completed", "Completed"));
        assert_eq!(s.training_seconds(110_000), 100);
        assert_eq!(s.billable_seconds(&spot(), 110_000), 30);
        assert_eq!(s.training_start, Some(10_000));
        assert_eq!(s.training_end, Some(110_000));
        assert!(s.transitions.iter().all(|t| t.end.is_some()));
    }

    #[test]
    fn interruption_inside_max_wait_restarts() {
        let (s, fx, seq) = run(
            &spot(),
            vec![
                (0, Capacity),
                (1, Downloaded(Ok(()))),
                (50, reclaimed(true, 0)),
                (52, exited(143)),
                (60, Capacity),
                (61, Downloaded(Ok(()))),
                (90, exited(0)),
                (91, Uploaded(Ok(()))),
            ],
        );
        assert_eq!(
            seq,
            [
                "Starting",
                "Downloading",
                "Training",
                "Interrupted",
                "Starting",
                "Downloading",
                "Training",
                "Uploading",
                "Completed"
            ]
        );
        assert_eq!(fx[2], vec![Terminate, Emit]);
        assert_eq!(fx[3], vec![Release { flush: true }, Emit]);
        assert_eq!(s.interruptions, 1);
        assert_eq!(s.instances, 2);
        assert_eq!(s.status, "Completed");
        // 52 s on the first instance, 31 s on the second.
        assert_eq!(s.training_seconds(91_000), 83);
    }

    #[test]
    fn grace_period_ends_in_sigkill_without_flush() {
        let (s, fx, _) = run(
            &spot(),
            vec![
                (0, Capacity),
                (1, Downloaded(Ok(()))),
                (10, reclaimed(true, 0)),
                (130, Tick),
            ],
        );
        assert_eq!(fx[3], vec![Kill, Release { flush: false }, Emit]);
        assert_eq!((s.phase, s.secondary), (Phase::Waiting, "Starting"));
        // A late exit of the killed process changes nothing.
        let (after, fx) = step(&spot(), &s, exited(137), 131_000);
        assert_eq!(after, s);
        assert!(fx.is_empty());
    }

    #[test]
    fn max_wait_while_waiting_stops_the_job() {
        let (s, fx, seq) = run(
            &spot(),
            vec![
                (0, Capacity),
                (1, Downloaded(Ok(()))),
                (100, reclaimed(true, 0)),
                (101, exited(143)),
                (7200, Tick),
            ],
        );
        assert_eq!(
            seq,
            [
                "Starting",
                "Downloading",
                "Training",
                "Interrupted",
                "Starting",
                "Stopping",
                "MaxWaitTimeExceeded"
            ]
        );
        assert_eq!(fx[4], vec![Emit]);
        assert_eq!((s.status, s.secondary), ("Stopped", "MaxWaitTimeExceeded"));
        assert_eq!(s.training_seconds(7_200_000), 101);
    }

    #[test]
    fn capacity_that_never_comes() {
        let (s, _, seq) = run(&spot(), vec![(7199, Tick), (7200, Tick)]);
        assert_eq!(seq, ["Starting", "Stopping", "MaxWaitTimeExceeded"]);
        assert_eq!(s.training_start, None);
        assert_eq!(s.training_seconds(7_200_000), 0);
    }

    #[test]
    fn max_wait_while_training_terminates_then_stops() {
        let spec = JobSpec {
            max_wait_seconds: Some(3600),
            ..spot()
        };
        let (s, fx, seq) = run(
            &spec,
            vec![
                (0, Capacity),
                (1, Downloaded(Ok(()))),
                (3600, Tick),
                (3601, exited(143)),
            ],
        );
        assert_eq!(fx[2], vec![Terminate, Emit]);
        // The instance stays: the model is uploaded, then the job is Stopped.
        assert_eq!(fx[3], vec![Upload]);
        assert_eq!(s.status, "Stopping");
        let (s, fx) = step(&spec, &s, Uploaded(Ok(())), 3_602_000);
        assert_eq!(fx, vec![Release { flush: false }, Emit]);
        assert_eq!(
            seq[2..],
            ["Training", "Stopping"],
            "no status of its own while the model uploads"
        );
        assert_eq!(s.secondary, "MaxWaitTimeExceeded");
        assert_eq!(s.status, "Stopped");
    }

    #[test]
    fn no_deadline_wakes_the_shell_while_a_finished_job_uploads() {
        let spec = spot();
        let (s, _, _) = run(
            &spec,
            vec![(10, Capacity), (12, Downloaded(Ok(()))), (100, exited(0))],
        );
        assert_eq!(s.phase, Phase::Uploading);
        // A slow final checkpoint sync outlasts both MaxRuntime and MaxWait.
        assert_eq!(next_deadline(&spec, &s, 10_000_000), None);
        let (after, fx) = step(&spec, &s, Tick, 10_000_000);
        assert!(fx.is_empty() && after.phase == Phase::Uploading);
    }

    #[test]
    fn max_runtime_counts_running_time_only() {
        let spec = JobSpec {
            spot: false,
            max_wait_seconds: None,
            max_runtime_seconds: 100,
            billable_ratio: 1.0,
            grace_ms: 5_000,
            instance_count: 1,
        };
        let mut s = JobState::new(&spec, 0);
        s = step(&spec, &s, Capacity, 50_000).0;
        assert_eq!(next_deadline(&spec, &s, 50_000), Some(150_000));
        s = step(&spec, &s, Downloaded(Ok(())), 51_000).0;
        let (s, fx) = step(&spec, &s, Tick, 150_000);
        assert_eq!(fx, vec![Terminate, Emit]);
        assert_eq!(s.status, "Stopping");
        assert_eq!(next_deadline(&spec, &s, 150_000), Some(155_000));
        let (s, fx) = step(&spec, &s, Tick, 155_000);
        assert_eq!(fx, vec![Kill, Upload]);
        assert_eq!(s.status, "Stopping");
        // Nothing to wait for while the model uploads (a stale SIGKILL deadline would wake
        // the shell in a loop).
        assert_eq!(next_deadline(&spec, &s, 160_000), None);
        // A failed upload does not change how the job ends.
        let (s, fx) = step(&spec, &s, Uploaded(Err("S3 said no".into())), 156_000);
        assert_eq!(fx, vec![Release { flush: false }, Emit]);
        assert_eq!((s.status, s.secondary), ("Stopped", "MaxRuntimeExceeded"));
        assert_eq!(s.failure_reason, None);
        assert_eq!(s.billable_seconds(&spec, 156_000), 106);
    }

    #[test]
    fn user_stop_in_each_phase() {
        // While training: SIGTERM, then Stopped/Stopped on exit.
        let (s, fx, seq) = run(
            &spot(),
            vec![
                (0, Capacity),
                (1, Downloaded(Ok(()))),
                (5, StopRequested),
                (6, exited(143)),
                (7, Uploaded(Ok(()))),
            ],
        );
        assert_eq!(fx[2], vec![Terminate, Emit]);
        assert_eq!(fx[3], vec![Upload], "the model is uploaded");
        assert_eq!(s.kill_at, None);
        assert_eq!(fx[4], vec![Release { flush: false }, Emit]);
        assert_eq!(seq[3..], ["Stopping", "Stopped"]);
        assert_eq!((s.status, s.secondary), ("Stopped", "Stopped"));
        // While waiting: at once.
        let (s, fx, _) = run(&spot(), vec![(5, StopRequested)]);
        assert_eq!(fx[0], vec![Emit]);
        assert_eq!((s.status, s.secondary), ("Stopped", "Stopped"));
        // While downloading: the instance goes.
        let (s, fx, _) = run(&spot(), vec![(0, Capacity), (1, StopRequested)]);
        assert_eq!(fx[1], vec![Release { flush: false }, Emit]);
        assert_eq!(s.status, "Stopped");
        // A second stop and anything after the end change nothing.
        let (again, fx) = step(&spot(), &s, StopRequested, 2_000);
        assert_eq!((again, fx), (s, vec![]));
    }

    #[test]
    fn failures() {
        let (s, _, _) = run(
            &spot(),
            vec![
                (0, Capacity),
                (1, Downloaded(Ok(()))),
                (
                    5,
                    Exited {
                        code: Some(1),
                        failure: Some("bad hyperparameter\n".into()),
                    },
                ),
            ],
        );
        assert_eq!((s.status, s.secondary), ("Failed", "Failed"));
        assert_eq!(
            s.failure_reason.as_deref(),
            Some("AlgorithmError: bad hyperparameter")
        );
        let (s, _, _) = run(
            &spot(),
            vec![(0, Capacity), (1, Downloaded(Err("no such bucket".into())))],
        );
        assert_eq!(
            s.failure_reason.as_deref(),
            Some("ClientError: no such bucket")
        );
        let (s, _, _) = run(
            &spot(),
            vec![
                (0, Capacity),
                (1, Downloaded(Ok(()))),
                (
                    2,
                    Exited {
                        code: None,
                        failure: None,
                    },
                ),
            ],
        );
        assert!(s.failure_reason.unwrap().contains("killed by a signal"));
    }

    #[test]
    fn on_demand_jobs_ignore_reclaims_and_max_wait() {
        let spec = JobSpec {
            spot: false,
            max_wait_seconds: Some(10),
            ..spot()
        };
        let (s, fx, _) = run(
            &spec,
            vec![
                (0, Capacity),
                (1, Downloaded(Ok(()))),
                (20, reclaimed(true, 0)),
            ],
        );
        assert!(fx[2].is_empty());
        assert_eq!(s.phase, Phase::Training);
    }

    #[test]
    fn a_reclaim_without_warning_kills_at_once() {
        let (s, fx, seq) = run(
            &spot(),
            vec![
                (0, Capacity),
                (1, Downloaded(Ok(()))),
                (50, reclaimed(false, 0)),
            ],
        );
        assert_eq!(fx[2], vec![Kill, Release { flush: false }, Emit]);
        assert_eq!(seq[2..], ["Training", "Interrupted", "Starting"]);
        assert_eq!((s.phase, s.kill_at), (Phase::Waiting, None));
        assert_eq!(s.interruptions, 1);
        assert_eq!(s.training_seconds(50_000), 50);
        // The killed process's exit, reported late, changes nothing.
        let (after, fx) = step(&spot(), &s, exited(137), 51_000);
        assert_eq!((after, fx), (s, vec![]));
    }

    #[test]
    fn a_multi_host_job_loses_one_host_and_stops_the_others_then_restarts_them_all() {
        let spec = JobSpec {
            instance_count: 2,
            ..spot()
        };
        let (s, fx, seq) = run(
            &spec,
            vec![
                (0, Capacity),
                (1, Downloaded(Ok(()))),
                (50, reclaimed(false, 1)),
                (52, exited(143)),
                (60, Capacity),
            ],
        );
        assert_eq!(fx[2], vec![KillHost(1), Terminate, Emit]);
        assert_eq!(fx[3], vec![Release { flush: true }, Emit]);
        assert_eq!(fx[4], vec![Download, Emit]);
        assert_eq!(
            seq[2..],
            ["Training", "Interrupted", "Starting", "Downloading"]
        );
        assert_eq!((s.instances, s.interruptions), (2, 1));
        // The others never exit: SIGKILL at the end of the grace period, as for one host.
        let (s, _, _) = run(
            &spec,
            vec![
                (0, Capacity),
                (1, Downloaded(Ok(()))),
                (50, reclaimed(false, 0)),
            ],
        );
        let (s, fx) = step(&spec, &s, Tick, 170_000);
        assert_eq!(fx, vec![Kill, Release { flush: false }, Emit]);
        assert_eq!(s.phase, Phase::Waiting);
    }

    #[test]
    fn reclaim_while_downloading_goes_back_to_waiting() {
        let (s, fx, seq) = run(&spot(), vec![(0, Capacity), (1, reclaimed(true, 0))]);
        assert_eq!(fx[1], vec![Release { flush: false }, Emit]);
        assert_eq!(seq, ["Starting", "Downloading", "Interrupted", "Starting"]);
        assert_eq!(s.phase, Phase::Waiting);
    }
}
